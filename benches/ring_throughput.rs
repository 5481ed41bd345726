//! Routed-envelope throughput and per-hop latency of real ring nodes, beside
//! the bare libp2p transport ceiling, measured in the same run. Prints one
//! JSON object.
//!
//! `cargo bench --bench ring_throughput [-- --quick]`
//!
//! * **ring**: four `xmpp-ring node` processes on 127.0.0.1 whose contacts
//!   are restricted (`--allow-peer`) to a chain A–B–C–D, with identities
//!   chosen so that greedy routing from A to keys owned by D takes exactly
//!   three hops, and receipts from D back to A take three too. A's built-in
//!   load generator (`/load`) keeps a window of envelopes in flight; the rate
//!   counts envelopes whose delivery receipt came back. Per-hop latency comes
//!   from traced probes (`/trace`) on the idle chain.
//! * **bare**: the same four-process chain over the same transport (TCP,
//!   pnet, noise, yamux, one long-lived stream per link) with no routing at
//!   all: relays copy bytes, the sink acknowledges every 100 frames, the
//!   source keeps at most 1,000 frames unacknowledged (the method of
//!   the transport yardsticks measured on this machine).
//! * **prosody_s2s**: the federation yardstick: two Prosody servers over
//!   s2s (STARTTLS + dialback), ten users sending chat messages with the
//!   same payload sizes to ten users on the other server, counted at the
//!   receiving clients (see `common/federation.rs`; `--no-prosody` skips
//!   it).
//!
//! The same binary is also the bare chain's processes (`--chain-role`).

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use node::api::{LoadReport, TraceReport};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use xmpp_ring::client::{get_json, post_json};
use xmpp_ring::cluster::Cluster;

#[path = "../tests/support/mod.rs"]
mod support;

mod common {
    // Shared with the federation bench, whose half (the ring's users) this
    // bench does not use.
    #[allow(dead_code)]
    pub mod federation;
}

const EXE: &str = env!("CARGO_BIN_EXE_xmpp-ring");
const BARE: StreamProtocol = StreamProtocol::new("/xmpp-ring/bench-bare/1.0.0");

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--chain-role") {
        chain_process(&args[i + 1..]);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let n = if quick { 20_000 } else { 200_000 };
    let mut out = serde_json::Map::new();
    out.insert("machine".into(), serde_json::json!({"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)}));
    let bare_only = args.iter().any(|a| a == "--bare-only");
    let ring = if bare_only {
        serde_json::json!({})
    } else {
        ring_chain(n)
    };
    let bare = bare_chain(n);
    let prosody = if args.iter().any(|a| a == "--no-prosody") {
        serde_json::json!({})
    } else {
        prosody_yardstick(quick)
    };
    out.insert("ring_3hop".into(), ring.clone());
    out.insert("bare_transport_3hop".into(), bare.clone());
    out.insert("prosody_s2s".into(), prosody.clone());
    let ratio = |r: &serde_json::Value, b: &serde_json::Value, k: &str| {
        let rr = r[k].as_f64().unwrap_or(0.0);
        let bb = b[k].as_f64().unwrap_or(1.0);
        rr / bb
    };
    out.insert(
        "ring_over_bare".into(),
        serde_json::json!({
            "200B_1flow": ratio(&ring["flows_1_200B"], &bare["200B"], "msgs_per_s"),
            "2KiB_1flow": ratio(&ring["flows_1_2048B"], &bare["2048B"], "msgs_per_s"),
        }),
    );
    out.insert(
        "ring_over_prosody".into(),
        serde_json::json!({
            "200B_1flow": ratio(&ring["flows_1_200B"], &prosody["200B"], "msgs_per_s"),
            "2KiB_1flow": ratio(&ring["flows_1_2048B"], &prosody["2048B"], "msgs_per_s"),
        }),
    );
    println!("{}", serde_json::Value::Object(out));
}

/// Picks four identities for a chain: keys near D's id are owned by D and
/// routed A→B→C→D greedily, and D's receipts route D→C→B→A greedily.
fn chain_identities() -> (Vec<Keypair>, dht::Key) {
    loop {
        let kps: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
        let ids: Vec<dht::Key> = kps
            .iter()
            .map(|k| node::addr::node_id(&k.public().to_peer_id()))
            .collect();
        let t = ids[3];
        let forward =
            ids[0].distance(&t) > ids[1].distance(&t) && ids[1].distance(&t) > ids[2].distance(&t);
        let a = ids[0];
        let back =
            ids[3].distance(&a) > ids[2].distance(&a) && ids[2].distance(&a) > ids[1].distance(&a);
        if forward && back {
            return (kps, t);
        }
    }
}

fn ring_chain(n: u64) -> serde_json::Value {
    let (kps, target) = chain_identities();
    let peers: Vec<PeerId> = kps.iter().map(|k| k.public().to_peer_id()).collect();
    let mut c = Cluster::new(std::path::Path::new(EXE)).expect("cluster");
    // D founds the ring; C joins through D, B through C, A through B.
    let allow = |i: usize| -> Vec<String> {
        let mut a = Vec::new();
        for j in [i.wrapping_sub(1), i + 1] {
            if j < 4 {
                a.extend(["--allow-peer".to_string(), peers[j].to_string()]);
            }
        }
        a
    };
    let mut idx = [0usize; 4];
    for i in (0..4).rev() {
        let mut args: Vec<String> = vec!["--log-level".into(), "error".into()];
        args.extend(allow(i));
        if i < 3 {
            args.extend(["--bootstrap".into(), c.addr(idx[i + 1])]);
        }
        let k = c.add(&args).expect("add");
        node::identity::write_key(&c.nodes[k].dir.join(node::identity::KEY_FILE), &kps[i])
            .expect("key");
        c.start(k).expect("start");
        idx[i] = k;
    }
    let a = c.admin(idx[0]).to_string();
    // Wait until the chain routes: a trace to the target takes three hops.
    let jid_probe = |path: &str| {
        post_json::<LoadReport>(&a, path, b"", Duration::from_secs(300)).expect("load")
    };
    let start = Instant::now();
    loop {
        let r = jid_probe(&format!("/load?count=1&kind=probe&key={}", target.to_hex()));
        if r.delivered == 1 && (r.mean_hops - 3.0).abs() < 1e-9 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "chain does not form: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Per-hop latency on the idle chain, from traced probes. The trace API
    // takes a JID; the chain's owner is found by key, so probe with /load
    // and trace only for the latencies of arbitrary JIDs owned by D.
    let d_id = c.nodes[idx[3]].ready.node_id.clone();
    let mut per_hop = Vec::new();
    let mut tried = 0;
    while per_hop.len() < 300 && tried < 20_000 {
        tried += 1;
        let jid = format!("u{tried}@ring.test");
        let key = dht::keys::jid_key(&jid).expect("jid");
        // Only JIDs D owns give 3-hop paths in this chain.
        let ids: Vec<dht::Key> = (0..4)
            .map(|i| dht::Key::from_hex(&c.nodes[idx[i]].ready.node_id).expect("id"))
            .collect();
        if ids
            .iter()
            .min_by_key(|x| x.distance(&key))
            .map(|k| k.to_hex())
            != Some(d_id.clone())
        {
            continue;
        }
        if !(ids[0].distance(&key) > ids[1].distance(&key)
            && ids[1].distance(&key) > ids[2].distance(&key))
        {
            continue;
        }
        let t: TraceReport =
            get_json(&a, &format!("/trace?jid={jid}"), Duration::from_secs(10)).expect("trace");
        if t.ok && t.hops == 3 {
            per_hop.extend(t.path.iter().skip(1).map(|h| h.latency_us));
        }
    }
    per_hop.sort_unstable();
    let pct = |q: f64| {
        per_hop
            .get(((per_hop.len() as f64 * q) as usize).min(per_hop.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let mut res = serde_json::Map::new();
    res.insert("hops".into(), 3.into());
    res.insert(
        "per_hop_latency_us".into(),
        serde_json::json!({"samples": per_hop.len(), "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)}),
    );
    for (flows, size) in [(1usize, 200usize), (100, 200), (1, 2048), (100, 2048)] {
        let count = if size > 1000 { n / 2 } else { n };
        let cpu0 = cpu_of_cluster(&c);
        let r = jid_probe(&format!(
            "/load?count={count}&size={size}&window=8192&key={}&flows={flows}",
            target.to_hex()
        ));
        let cpu = cpu_of_cluster(&c) - cpu0;
        assert_eq!(r.settled(), count, "every envelope accounted for: {r:?}");
        res.insert(
            format!("flows_{flows}_{size}B"),
            serde_json::json!({
                "envelopes": count,
                "delivered": r.delivered,
                "bounced": r.bounced,
                "seconds": r.elapsed_s,
                "msgs_per_s": r.rate,
                "cpu_us_per_msg_all_nodes": cpu * 1e6 / r.delivered.max(1) as f64,
            }),
        );
    }
    serde_json::Value::Object(res)
}

/// Total user+system CPU seconds of the cluster's node processes.
fn cpu_of_cluster(c: &Cluster) -> f64 {
    c.nodes.iter().map(|n| cpu_seconds(n.ready.pid)).sum()
}

fn cpu_seconds(pid: u32) -> f64 {
    xmpp_ring::cluster::cpu_us(pid) as f64 / 1e6
}

// ------------------------------------------------- Prosody s2s yardstick

/// Prosody → Prosody over s2s (STARTTLS + dialback), ten users sending
/// 10,000 chat messages to ten users, median of three rounds per payload.
fn prosody_yardstick(quick: bool) -> serde_json::Value {
    use common::federation::{logged_in, median, prosody_to_prosody, runtime, world};
    let total = if quick { 2_000 } else { 10_000 };
    let rounds = if quick { 1 } else { 3 };
    let w = world(0);
    runtime().block_on(async {
        let (mut s, mut r) = logged_in(&w).await;
        let mut out = serde_json::Map::new();
        for payload in [200usize, 2048] {
            let mut runs = Vec::new();
            for round in 0..rounds {
                let (run, s2, r2) =
                    prosody_to_prosody(&w, s, r, &format!("y{payload}r{round}"), total, payload)
                        .await;
                s = s2;
                r = r2;
                runs.push(run);
            }
            out.insert(format!("{payload}B"), median(&runs));
        }
        serde_json::Value::Object(out)
    })
}

// ---------------------------------------------------------------- bare chain

struct ChainProc {
    child: Child,
    peer: String,
    addr: String,
    out: BufReader<std::process::ChildStdout>,
}

impl Drop for ChainProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_chain(
    role: &str,
    psk: &std::path::Path,
    next: Option<&ChainProc>,
    extra: &[String],
) -> ChainProc {
    let me = std::env::current_exe().expect("exe");
    let mut cmd = Command::new(me);
    cmd.args(["--chain-role", role, "--psk"]).arg(psk);
    if let Some(n) = next {
        cmd.args(["--next-peer", &n.peer, "--next-addr", &n.addr]);
    }
    cmd.args(extra);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn chain process");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    let mut out = BufReader::new(stdout);
    out.read_line(&mut line).expect("ready line");
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(parts.first(), Some(&"READY"), "unexpected: {line}");
    let peer = parts[1].to_string();
    let addr = parts[2].to_string();
    ChainProc {
        child,
        peer,
        addr,
        out,
    }
}

fn bare_chain(n: u64) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tmp");
    let psk = dir.path().join("bench.psk");
    node::psk::generate_file(&psk).expect("psk");
    let mut res = serde_json::Map::new();
    for size in [200usize, 2048] {
        let count = if size > 1000 { n / 2 } else { n };
        let sink = spawn_chain("sink", &psk, None, &[]);
        let r2 = spawn_chain("relay", &psk, Some(&sink), &[]);
        let r1 = spawn_chain("relay", &psk, Some(&r2), &[]);
        let source = spawn_chain(
            "source",
            &psk,
            Some(&r1),
            &[
                "--count".into(),
                count.to_string(),
                "--size".into(),
                size.to_string(),
            ],
        );
        let pids = [
            sink.child.id(),
            r2.child.id(),
            r1.child.id(),
            source.child.id(),
        ];
        let cpu0: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
        let mut source = source;
        let mut line = String::new();
        source.out.read_line(&mut line).expect("result line");
        let cpu: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu0;
        let secs: f64 = line
            .strip_prefix("DONE ")
            .and_then(|s| s.trim().parse().ok())
            .expect("DONE <seconds>");
        res.insert(
            format!("{size}B"),
            serde_json::json!({"frames": count, "seconds": secs, "msgs_per_s": count as f64 / secs, "cpu_us_per_msg_all_procs": cpu * 1e6 / count as f64}),
        );
        drop((sink, r2, r1));
    }
    serde_json::Value::Object(res)
}

/// Copies bytes, flushing after every read (yamux and noise hold written
/// bytes until a flush; `futures::io::copy` flushes only at the end).
async fn pump(mut from: impl futures::AsyncRead + Unpin, mut to: impl futures::AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            return;
        }
    }
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn chain_process(args: &[String]) {
    let role = args.first().cloned().unwrap_or_default();
    let psk =
        node::psk::read(std::path::Path::new(arg(args, "--psk").expect("--psk"))).expect("psk");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async move {
        let kp = Keypair::generate_ed25519();
        let me = kp.public().to_peer_id();
        let mut swarm = node::transport::build_swarm(kp, psk, "bench".into()).expect("swarm");
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
            .expect("listen");
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        let mut control = swarm.behaviour().stream.new_control();
        let mut incoming = control.accept(BARE).expect("accept");
        let next = arg(args, "--next-peer").map(|p| {
            (
                p.parse::<PeerId>().expect("peer"),
                arg(args, "--next-addr")
                    .expect("addr")
                    .parse::<Multiaddr>()
                    .expect("maddr"),
            )
        });
        if let Some((p, a)) = &next {
            swarm.add_peer_address(*p, a.clone());
        }
        tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        println!("READY {me} {addr}");
        let count: u64 = arg(args, "--count")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let size: usize = arg(args, "--size")
            .and_then(|c| c.parse().ok())
            .unwrap_or(200);
        match role.as_str() {
            "sink" => {
                let (_, mut s) = incoming.next().await.expect("stream");
                let mut buf = vec![0u8; 256 * 1024];
                let mut pending = Vec::new();
                let mut frames: u64 = 0;
                // Acks go out whenever another multiple of 100 frames has
                // arrived, carrying the running count.
                let mut next_ack: u64 = 100;
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    let mut off = 0;
                    while pending.len() - off >= 4 {
                        let len = u32::from_be_bytes([
                            pending[off],
                            pending[off + 1],
                            pending[off + 2],
                            pending[off + 3],
                        ]) as usize;
                        if pending.len() - off < 4 + len {
                            break;
                        }
                        off += 4 + len;
                        frames += 1;
                    }
                    pending.drain(..off);
                    if frames >= next_ack {
                        next_ack = (frames / 100 + 1) * 100;
                        if s.write_all(&frames.to_be_bytes()).await.is_err()
                            || s.flush().await.is_err()
                        {
                            break;
                        }
                    }
                }
            }
            "relay" => {
                let (_, inbound) = incoming.next().await.expect("stream");
                let (p, _) = next.expect("next");
                let outbound = control.open_stream(p, BARE).await.expect("open");
                let (in_r, in_w) = inbound.split();
                let (out_r, out_w) = outbound.split();
                let _ = futures::future::join(pump(in_r, out_w), pump(out_r, in_w)).await;
            }
            _ => {
                let (p, _) = next.expect("next");
                let s = control.open_stream(p, BARE).await.expect("open");
                let (mut r, mut w) = s.split();
                let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
                let notify = std::sync::Arc::new(tokio::sync::Notify::new());
                let (a2, n2) = (acked.clone(), notify.clone());
                let reader = tokio::spawn(async move {
                    let mut b = [0u8; 8];
                    while r.read_exact(&mut b).await.is_ok() {
                        a2.store(u64::from_be_bytes(b), std::sync::atomic::Ordering::Relaxed);
                        n2.notify_one();
                    }
                });
                let mut frame = (size as u32).to_be_bytes().to_vec();
                frame.extend(std::iter::repeat_n(b'x', size));
                let start = Instant::now();
                let mut sent = 0u64;

                let mut batch = Vec::with_capacity(64 * frame.len());
                while sent < count {
                    while sent - acked.load(std::sync::atomic::Ordering::Relaxed) >= 1000 {
                        notify.notified().await;
                    }
                    batch.clear();
                    while sent < count
                        && batch.len() < 64 * frame.len()
                        && sent - acked.load(std::sync::atomic::Ordering::Relaxed) < 1000
                    {
                        batch.extend_from_slice(&frame);
                        sent += 1;
                    }
                    w.write_all(&batch).await.expect("write");
                    w.flush().await.expect("flush");
                }
                let last = count / 100 * 100;
                while acked.load(std::sync::atomic::Ordering::Relaxed) < last {
                    notify.notified().await;
                }
                println!("DONE {}", start.elapsed().as_secs_f64());
                reader.abort();
            }
        }
    });
}
