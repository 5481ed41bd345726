//! `cargo bench --bench hostile [-- --seconds S --rate R --hosts H]`: a
//! live edge under attack while a real Prosody keeps federating through it.
//!
//! Prosody a.test (user alice) and a ring (two application nodes and one
//! edge) serving ring.test. alice pings ring.test at a steady rate (`R`
//! per second, default 50) for `S` seconds (default 20) twice: once on a
//! quiet edge, then while `H` attacking hosts (loopback addresses
//! 127.0.1.x, default 8) hammer the edge with every kind of hostile stream
//! at once, each host running one task per kind in a loop:
//!
//! * `garbage`: random bytes instead of XML;
//! * `slowloris`: a header, then a byte of whitespace every 2 s;
//! * `idle`: a header, then nothing;
//! * `oversize`: after TLS, a stanza far past the limits;
//! * `deep`: after TLS, elements nested past the depth limit;
//! * `verify_flood`: after TLS, `db:verify` requests as fast as TCP takes
//!   them, never reading an answer;
//! * `dialback_flood`: after TLS, `db:result` claims for random domains
//!   (each one would make the edge contact a third party);
//! * `fuzz`: random valid-looking sequences of headers, dialback elements
//!   and stanzas drawn from proptest strategies (spoofed domains,
//!   look-alike addresses, stanzas before authentication).
//!
//! One JSON object on stdout: the honest pings sent, answered, lost, and
//! their latency p50/p99 in each phase; the edge's peak RSS in each phase;
//! what the attackers did; the edge's counters after the attack. Goal:
//! every ping answered in both phases, p99 under attack within 2× of the
//! quiet p99, the edge's RSS bounded by its configured limits.

#[path = "../tests/support/mod.rs"]
mod support;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use support::client::XmppClient;
use support::cpu::Cpu;
use support::dns::DnsServer;
use support::prosody::ProsodyOptions;
use support::raw::{Raw, header, rss_bytes};
use support::{prosody_with_own_ca, ring_with_edge, status};
use tokio::io::AsyncWriteExt;

const PROSODY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const EDGE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

struct Args {
    seconds: u64,
    rate: u64,
    hosts: u8,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 20,
        rate: 50,
        hosts: 8,
    };
    let argv: Vec<String> = std::env::args().collect();
    for w in argv.windows(2) {
        let n = |s: &str| {
            s.parse::<u64>()
                .unwrap_or_else(|_| panic!("{s}: not a number"))
        };
        match w[0].as_str() {
            "--seconds" => a.seconds = n(&w[1]),
            "--rate" => a.rate = n(&w[1]).max(1),
            "--hosts" => a.hosts = n(&w[1]).clamp(1, 200) as u8,
            _ => {}
        }
    }
    a
}

/// What one phase of honest traffic saw.
struct Phase {
    sent: u64,
    answered: u64,
    latencies_ms: Vec<f64>,
    peak_rss: u64,
    /// CPU seconds of each group of processes during the phase.
    cpu_s: Value,
}

impl Phase {
    fn json(&self) -> Value {
        let mut l = self.latencies_ms.clone();
        l.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if l.is_empty() {
                return 0.0;
            }
            let i = ((l.len() - 1) as f64 * p).round() as usize;
            (l[i] * 100.0).round() / 100.0
        };
        json!({
            "pings_sent": self.sent,
            "pings_answered": self.answered,
            "pings_lost": self.sent - self.answered,
            "latency_ms_p50": pct(0.5),
            "latency_ms_p99": pct(0.99),
            "latency_ms_max": pct(1.0),
            "edge_peak_rss_mb": (self.peak_rss as f64 / (1 << 20) as f64 * 10.0).round() / 10.0,
            "cpu_s": self.cpu_s,
        })
    }
}

/// Pings ring.test from alice at `rate` per second for `secs` seconds and
/// collects the answers (waiting up to 10 s for late ones), sampling the
/// edge's RSS meanwhile.
async fn honest_phase(
    alice: &mut XmppClient,
    secs: u64,
    rate: u64,
    edge_pid: u32,
    groups: &[(String, Vec<u32>)],
    tag: &str,
) -> Phase {
    let cpu = Cpu::start(groups.to_vec());
    let sent_at: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let peak = Arc::new(AtomicU64::new(rss_bytes(edge_pid)));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                peak.fetch_max(rss_bytes(edge_pid), Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let total = secs * rate;
    let gap = Duration::from_micros(1_000_000 / rate);
    let start = tokio::time::Instant::now();
    let mut latencies = Vec::new();
    let mut sent = 0;
    let mut next = start;
    let deadline = start + Duration::from_secs(secs) + Duration::from_secs(10);
    loop {
        let now = tokio::time::Instant::now();
        if sent < total && now >= next {
            let id = format!("{tag}-{sent}");
            let iq = format!(
                "<iq xmlns='jabber:client' type='get' id='{id}' to='ring.test'><ping xmlns='urn:xmpp:ping'/></iq>"
            );
            sent_at.lock().unwrap().insert(id, Instant::now());
            let _ = alice.writer.write_all(iq.as_bytes()).await;
            sent += 1;
            next += gap;
            continue;
        }
        if (sent == total && latencies.len() as u64 == total) || now >= deadline {
            break;
        }
        let wake = if sent < total { next } else { deadline };
        tokio::select! {
            m = alice.incoming.recv() => {
                let Some(m) = m else { break };
                if let Some(t) = m.attr("id").and_then(|id| sent_at.lock().unwrap().remove(id))
                    && m.attr("type") == Some("result")
                {
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    stop.store(true, Relaxed);
    let _ = sampler.await;
    // CPU µs per 10^6 units = CPU seconds.
    Phase {
        sent,
        answered: latencies.len() as u64,
        latencies_ms: latencies,
        peak_rss: peak.load(Relaxed),
        cpu_s: cpu.per(1_000_000),
    }
}

/// Per attack kind: connections made and streams the edge ended.
#[derive(Default)]
struct Tally {
    connections: AtomicU64,
    closed_by_edge: AtomicU64,
    bytes_sent: AtomicU64,
}

type Tallies = Arc<HashMap<&'static str, Tally>>;

const KINDS: [&str; 8] = [
    "garbage",
    "slowloris",
    "idle",
    "oversize",
    "deep",
    "verify_flood",
    "dialback_flood",
    "fuzz",
];

/// Valid-looking s2s sequences: headers, dialback, stanzas and
/// negotiation elements with addresses drawn from a pool of honest,
/// spoofed and malformed ones.
fn fuzz_sequence() -> impl Strategy<Value = Vec<String>> {
    let domain = prop_oneof![
        Just("ring.test".to_string()),
        Just("conference.ring.test".to_string()),
        Just("x y.ring.test".to_string()),
        Just("evil.test".to_string()),
        Just("evil.test pubsub.ring.test".to_string()),
        Just("RING.TEST.".to_string()),
        Just(String::new()),
        "[a-z]{1,8}\\.test",
    ];
    let jid = (
        prop::option::of("[a-z]{1,6}"),
        domain.clone(),
        prop::option::of("[a-z ]{0,4}"),
    )
        .prop_map(|(n, d, r)| {
            let mut j = n.map(|n| format!("{n}@")).unwrap_or_default();
            j.push_str(&d);
            if let Some(r) = r {
                j.push('/');
                j.push_str(&r);
            }
            j
        });
    let frame = prop_oneof![
        (domain.clone(), domain.clone()).prop_map(|(to, from)| header(&to, &from, "jabber:server")),
        (domain.clone(), domain.clone(), "[0-9a-f]{0,64}")
            .prop_map(|(f, t, k)| format!("<db:result from='{f}' to='{t}'>{k}</db:result>")),
        (
            domain.clone(),
            domain.clone(),
            "[ -~&&[^'<&]]{0,20}",
            "[0-9a-f]{0,64}"
        )
            .prop_map(|(f, t, id, k)| format!(
                "<db:verify from='{f}' to='{t}' id='{id}'>{k}</db:verify>"
            )),
        (jid.clone(), jid.clone(), "[a-z ]{0,40}").prop_map(|(f, t, b)| format!(
            "<message from='{f}' to='{t}' type='chat'><body>{b}</body></message>"
        )),
        (jid.clone(), jid).prop_map(|(f, t)| format!(
            "<iq from='{f}' to='{t}' type='get' id='q'><ping xmlns='urn:xmpp:ping'/></iq>"
        )),
        Just("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>".to_string()),
        Just(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>"
                .to_string()
        ),
        Just("</stream:stream>".to_string()),
        Just("   \n".to_string()),
    ];
    prop::collection::vec(frame, 1..24)
}

/// One attacking host's task of one kind, until `stop`.
async fn attack(
    kind: &'static str,
    from: Ipv4Addr,
    port: u16,
    stop: Arc<AtomicBool>,
    tally: Tallies,
    seed: u64,
) {
    let t = &tally[kind];
    let addr = (EDGE_IP, port);
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[seed as u8; 32]),
    );
    let strategy = fuzz_sequence();
    let mut n = 0u64;
    while !stop.load(Relaxed) {
        n += 1;
        let Ok(raw) = Raw::connect_from(from, addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        t.connections.fetch_add(1, Relaxed);
        let began = Instant::now();
        let hdr = header("ring.test", &format!("{kind}{n}.test"), "jabber:server");
        let closed = match kind {
            "garbage" => {
                let mut r = raw;
                let junk: Vec<u8> = (0..4096)
                    .map(|i| ((i * 7 + n as usize) % 251) as u8)
                    .collect();
                let _ = r.stream.write_all(&junk).await;
                r.closed(Duration::from_secs(5)).await
            }
            "slowloris" | "idle" => {
                let mut r = raw;
                r.write(&hdr).await;
                let mut closed = false;
                while !closed && !stop.load(Relaxed) {
                    if kind == "slowloris" {
                        let _ = r.stream.write_all(b" ").await;
                    }
                    closed = r.closed(Duration::from_secs(2)).await;
                }
                closed
            }
            _ => {
                let Some(mut r) = raw
                    .starttls(
                        "ring.test",
                        &format!("{kind}{n}.test"),
                        Duration::from_secs(5),
                    )
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let mut sent = 0u64;
                let payload: String = match kind {
                    "oversize" => format!("<message from='a@x.test' to='b@ring.test'><body>{}</body></message>", "x".repeat(700 * 1024)),
                    "deep" => "<a>".repeat(200),
                    "verify_flood" => "<db:verify from='flood.test' to='ring.test' id='0123456789abcdef'>00</db:verify>".repeat(512),
                    "dialback_flood" => (0..8)
                        .map(|i| format!("<db:result from='victim{n}x{i}.test' to='ring.test'>00</db:result>"))
                        .collect(),
                    _ => match strategy.new_tree(&mut runner) {
                        Ok(tree) => tree.current().concat(),
                        Err(_) => String::new(),
                    },
                };
                let until = Instant::now() + Duration::from_secs(10);
                let mut closed = false;
                while !closed && !stop.load(Relaxed) && Instant::now() < until {
                    match tokio::time::timeout(
                        Duration::from_millis(500),
                        r.stream.write_all(payload.as_bytes()),
                    )
                    .await
                    {
                        Ok(Ok(())) => sent += payload.len() as u64,
                        Ok(Err(_)) => closed = true,
                        Err(_) => {}
                    }
                    if kind != "verify_flood" && !closed {
                        closed = r.closed(Duration::from_millis(500)).await;
                    }
                }
                t.bytes_sent.fetch_add(sent, Relaxed);
                closed
            }
        };
        if closed {
            t.closed_by_edge.fetch_add(1, Relaxed);
            // Refused at once (over its address's limits): try again soon,
            // not in a tight loop (a packet flood is the network's job).
            if began.elapsed() < Duration::from_millis(20) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn main() {
    let a = args();
    support::require_prosody();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tmp");
    let dns = DnsServer::start();
    let prosody = prosody_with_own_ca(
        dir.path(),
        &dns,
        "a.test",
        PROSODY_IP,
        &[("alice", "pw")],
        ProsodyOptions::default(),
    );
    let ring = ring_with_edge(dir.path(), &dns, 2, EDGE_IP, &["ring.test"]);
    let edge = ring.nodes.len() - 1;
    let edge_pid = ring.nodes[edge].ready.pid;
    let port = ring.nodes[edge]
        .args
        .windows(2)
        .find(|w| w[0] == "--s2s-listen")
        .and_then(|w| w[1].rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .expect("s2s port");
    let result = rt.block_on(async {
        let mut alice = XmppClient::connect("alice@a.test", "pw", &prosody.c2s()).await;
        let groups = vec![
            ("edge".to_string(), vec![edge_pid]),
            (
                "ring_others".to_string(),
                (0..edge).map(|i| ring.nodes[i].ready.pid).collect(),
            ),
            ("prosody".to_string(), prosody.pid().into_iter().collect()),
            ("bench_process".to_string(), vec![std::process::id()]),
        ];
        // Warm up: the s2s streams both ways.
        let warm = honest_phase(&mut alice, 2, 10, edge_pid, &groups, "warm").await;
        assert_eq!(
            warm.answered, warm.sent,
            "the federation works before the test"
        );
        let idle_rss = rss_bytes(edge_pid);
        eprintln!("quiet phase: {} s at {}/s", a.seconds, a.rate);
        let quiet = honest_phase(&mut alice, a.seconds, a.rate, edge_pid, &groups, "quiet").await;
        let tallies: Tallies = Arc::new(KINDS.iter().map(|k| (*k, Tally::default())).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for h in 0..a.hosts {
            let from = Ipv4Addr::new(127, 0, 1, 10 + h);
            for (k, kind) in KINDS.iter().enumerate() {
                // Several idle and slowloris streams per host: they hold
                // slots, the others churn.
                let copies = if matches!(*kind, "idle" | "slowloris") {
                    16
                } else {
                    2
                };
                for c in 0..copies {
                    tasks.push(tokio::spawn(attack(
                        kind,
                        from,
                        port,
                        stop.clone(),
                        tallies.clone(),
                        (h as u64) << 16 | (k as u64) << 8 | c,
                    )));
                }
            }
        }
        eprintln!("attack phase: {} tasks from {} hosts", tasks.len(), a.hosts);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let attacked =
            honest_phase(&mut alice, a.seconds, a.rate, edge_pid, &groups, "attack").await;
        stop.store(true, Relaxed);
        for t in tasks {
            t.abort();
        }
        alice.disconnect().await;
        let attackers: serde_json::Map<String, Value> = KINDS
            .iter()
            .map(|k| {
                let t = &tallies[k];
                (
                    k.to_string(),
                    json!({
                        "connections": t.connections.load(Relaxed),
                        "closed_by_edge": t.closed_by_edge.load(Relaxed),
                        "bytes_sent": t.bytes_sent.load(Relaxed),
                    }),
                )
            })
            .collect();
        (idle_rss, quiet, attacked, attackers)
    });
    let (idle_rss, quiet, attacked, attackers) = result;
    let e = status(&ring, edge).edge.expect("edge report");
    let ratio = {
        let q = quiet.json()["latency_ms_p99"].as_f64().unwrap_or(0.0);
        let at = attacked.json()["latency_ms_p99"].as_f64().unwrap_or(0.0);
        if q > 0.0 {
            (at / q * 100.0).round() / 100.0
        } else {
            0.0
        }
    };
    let out = json!({
        "bench": "hostile",
        "seconds_per_phase": a.seconds,
        "pings_per_s": a.rate,
        "attacking_hosts": a.hosts,
        "edge_idle_rss_mb": (idle_rss as f64 / (1 << 20) as f64 * 10.0).round() / 10.0,
        "quiet": quiet.json(),
        "under_attack": attacked.json(),
        "p99_ratio_attack_vs_quiet": ratio,
        "attackers": attackers,
        "edge": serde_json::to_value(&e).unwrap_or_default(),
        "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    println!("{out}");
    drop(ring);
    drop(prosody);
}
