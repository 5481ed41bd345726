//! A tiny authoritative DNS server for the test domains: A and SRV records
//! over UDP on a free loopback port. Prosody (through libunbound's
//! `forward`) and the edges (`--dns`) resolve `*.test` names here, so no
//! test touches the machine's resolver or needs port 53.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records served.
#[derive(Default, Clone)]
pub struct Zone {
    /// name → IPv4 address.
    pub a: HashMap<String, Ipv4Addr>,
    /// `_service._proto.name` → (target, port).
    pub srv: HashMap<String, (String, u16)>,
}

/// The running server; stops when dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    pub fn start() -> DnsServer {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind dns");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (z, s) = (zone.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(resp) = answer(&buf[..n], &z.lock().expect("zone").clone()) {
                    let _ = sock.send_to(&resp, peer);
                }
            }
        });
        DnsServer {
            addr,
            zone,
            stop,
            thread: Some(thread),
        }
    }

    pub fn add_a(&self, name: &str, ip: Ipv4Addr) {
        self.zone
            .lock()
            .expect("zone")
            .a
            .insert(name.to_ascii_lowercase(), ip);
    }

    /// `_xmpp-server._tcp.DOMAIN SRV 0 0 PORT TARGET`.
    pub fn add_s2s_srv(&self, domain: &str, target: &str, port: u16) {
        self.zone.lock().expect("zone").srv.insert(
            format!("_xmpp-server._tcp.{}", domain.to_ascii_lowercase()),
            (target.to_string(), port),
        );
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(pos)? as usize;
        if len == 0 {
            return Some((labels.join("."), pos + 1));
        }
        if len & 0xc0 != 0 {
            return None; // queries carry no compression
        }
        let label = msg.get(pos + 1..pos + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += 1 + len;
    }
}

fn write_name(out: &mut Vec<u8>, name: &str) {
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// Builds the response to one query (one question).
fn answer(q: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    let qdcount = u16::from_be_bytes([q[4], q[5]]);
    if qdcount != 1 {
        return None;
    }
    let (name, end) = read_name(q, 12)?;
    let qtype = u16::from_be_bytes([*q.get(end)?, *q.get(end + 1)?]);
    let question = &q[12..end + 4];
    let mut answers: Vec<Vec<u8>> = Vec::new();
    let known = zone.a.contains_key(&name) || zone.srv.contains_key(&name);
    match qtype {
        1 => {
            if let Some(ip) = zone.a.get(&name) {
                let mut rr = vec![0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4];
                rr.extend_from_slice(&ip.octets());
                answers.push(rr);
            }
        }
        33 => {
            if let Some((target, port)) = zone.srv.get(&name) {
                let mut rdata = vec![0, 0, 0, 0];
                rdata.extend_from_slice(&port.to_be_bytes());
                write_name(&mut rdata, target);
                let mut rr = vec![0xc0, 0x0c, 0, 33, 0, 1, 0, 0, 0, 30];
                rr.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                rr.extend_from_slice(&rdata);
                answers.push(rr);
            }
        }
        _ => {}
    }
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&q[0..2]); // id
    // QR=1, opcode from query, AA=1, RD copied; RA=1; rcode NXDOMAIN when
    // the name is unknown, else NOERROR (possibly with no answers).
    let rd = q[2] & 0x01;
    out.push(0x84 | rd);
    out.push(if known || name.ends_with("in-addr.arpa") {
        0x80
    } else {
        0x83
    });
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for a in answers {
        out.extend_from_slice(&a);
    }
    Some(out)
}
