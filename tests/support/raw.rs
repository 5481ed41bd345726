//! A raw s2s peer for the tests: writes exactly what a test says (bad
//! input, hostile sequences) and reads what comes back.

use std::net::Ipv4Addr;
use std::time::Duration;

/// A raw s2s client for malformed input.
pub struct Raw {
    pub stream: Box<dyn RawIo>,
    pub got: String,
}

pub trait RawIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> RawIo for T {}

impl Raw {
    pub async fn connect(addr: (Ipv4Addr, u16)) -> Raw {
        let s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to the edge");
        Raw {
            stream: Box::new(s),
            got: String::new(),
        }
    }

    pub async fn write(&mut self, s: &str) {
        use tokio::io::AsyncWriteExt;
        let _ = self.stream.write_all(s.as_bytes()).await;
        let _ = self.stream.flush().await;
    }

    /// Reads until `needle` appears (true) or the stream ends / times out.
    pub async fn read_until(&mut self, needle: &str, timeout: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let end = tokio::time::Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if self.got.contains(needle) {
                return true;
            }
            match tokio::time::timeout_at(end, self.stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.got.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => return false,
            }
        }
    }

    /// Whether the peer closes the connection within `timeout`.
    pub async fn closed(&mut self, timeout: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let end = tokio::time::Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(end, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.got.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => return false,
            }
        }
    }
}

pub fn header(to: &str, from: &str, ns: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{ns}' xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns:db='jabber:server:dialback' to='{to}' from='{from}' version='1.0'>"
    )
}

pub fn cond(c: &str) -> String {
    format!("<{c} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>")
}

impl Raw {
    /// Connects to `addr` from the loopback address `from` (a second host).
    pub async fn connect_from(from: Ipv4Addr, addr: (Ipv4Addr, u16)) -> std::io::Result<Raw> {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind((from, 0).into())?;
        let tcp = s.connect(addr.into()).await?;
        Ok(Raw {
            stream: Box::new(tcp),
            got: String::new(),
        })
    }

    /// Opens a stream as `from` to `to`, does STARTTLS (with a self-signed
    /// certificate of `from`) and opens the stream again over TLS.
    pub async fn open_tls(addr: (Ipv4Addr, u16), to: &str, from: &str) -> Raw {
        let r = Raw::connect(addr).await;
        r.starttls(to, from, Duration::from_secs(20))
            .await
            .expect("a TLS stream")
    }

    /// On a fresh connection: the header as `from` to `to`, STARTTLS and
    /// the header again over TLS; `None` when the peer does not go along.
    pub async fn starttls(mut self, to: &str, from: &str, t: Duration) -> Option<Raw> {
        self.write(&header(to, from, "jabber:server")).await;
        if !self.read_until("</stream:features>", t).await {
            return None;
        }
        self.write("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        if !self.read_until("<proceed", t).await {
            return None;
        }
        let id = xmpp_edge::tls::self_signed(&[from.to_string()]).ok()?.0;
        let cfg = xmpp_edge::tls::client_config(&id).ok()?;
        let name = rustls::pki_types::ServerName::try_from(to.to_string()).ok()?;
        let tls = tokio::time::timeout(
            t,
            tokio_rustls::TlsConnector::from(cfg).connect(name, self.stream),
        )
        .await
        .ok()?
        .ok()?;
        let mut r = Raw {
            stream: Box::new(tls),
            got: String::new(),
        };
        r.write(&header(to, from, "jabber:server")).await;
        r.read_until("</stream:features>", t).await.then_some(r)
    }
}

/// The resident memory of process `pid`, in bytes (Linux).
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
