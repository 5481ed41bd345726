//! Federation load: ten c2s users on one Prosody send chat messages to ten
//! targets, either users on a second Prosody (the yardstick: Prosody's own
//! s2s) or JIDs served by a ring (through its edge). Shared by the
//! `federation` and `ring_throughput` benches.
//!
//! Both servers speak STARTTLS + dialback with certificates the other side
//! does not trust (`s2s_secure_auth = false`), as in
//! the Prosody setup the README describes. Every process involved runs on this machine's
//! two cores, so the CPU of each (clients included) is reported beside each
//! rate.

use crate::support::client::XmppClient;
use crate::support::cpu::Cpu;
use crate::support::dns::DnsServer;
use crate::support::prosody::{Prosody, ProsodyOptions};
use crate::support::{prosody_with_own_ca, ring_with_edge};
use node::api::StatusReport;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use xmpp_ring::client::get_json;
use xmpp_ring::cluster::Cluster;

pub const USERS: usize = 10;
const A_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const EDGE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// How long one measured run may take before the missing messages count
/// as lost.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// The servers of a run. Dropping it stops every process it started.
pub struct World {
    pub a: Prosody,
    pub b: Prosody,
    pub ring: Option<Cluster>,
    _dns: DnsServer,
    _dir: tempfile::TempDir,
}

fn users(prefix: &str) -> Vec<(String, String)> {
    (0..USERS)
        .map(|i| (format!("{prefix}{i}"), "pw".to_string()))
        .collect()
}

/// Prosody a.test (senders s0..s9) and b.test (receivers r0..r9); with
/// `ring_apps > 0` also a ring serving ring.test with that many
/// application nodes and one edge.
pub fn world(ring_apps: usize) -> World {
    crate::support::require_prosody();
    let dir = tempfile::tempdir().expect("tmp");
    let dns = DnsServer::start();
    let start = |domain: &str, ip: Ipv4Addr, prefix: &str| {
        let u = users(prefix);
        let refs: Vec<(&str, &str)> = u.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        prosody_with_own_ca(
            dir.path(),
            &dns,
            domain,
            ip,
            &refs,
            ProsodyOptions::default(),
        )
    };
    let a = start("a.test", A_IP, "s");
    let b = start("b.test", B_IP, "r");
    let ring = (ring_apps > 0)
        .then(|| ring_with_edge(dir.path(), &dns, ring_apps, EDGE_IP, &["ring.test"]));
    World {
        a,
        b,
        ring,
        _dns: dns,
        _dir: dir,
    }
}

fn my_pid() -> u32 {
    std::process::id()
}

fn message(to: &str, id: &str, body: &str) -> String {
    format!(
        "<message xmlns='jabber:client' type='chat' to='{to}' id='{id}'><body>{body}</body></message>"
    )
}

/// The benches' runtime: two workers, like the machine's two cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Logs the ten senders in to a.test and the ten receivers in to b.test,
/// then warms every path up (see [`warm_up`]).
pub async fn logged_in(w: &World) -> (Vec<XmppClient>, Vec<XmppClient>) {
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..USERS {
        senders.push(XmppClient::connect(&format!("s{i}@a.test"), "pw", &w.a.c2s()).await);
        receivers.push(XmppClient::connect(&format!("r{i}@b.test"), "pw", &w.b.c2s()).await);
    }
    warm_up(w, senders, receivers).await
}

/// Sends `total` messages of `payload` bytes (rounded up to a multiple of
/// the senders), sender `i`'s `j`-th to `targets[(i + j) % len]`, in
/// batches of 50 stanzas per write. Returns the senders and how many went.
async fn send_all(
    senders: Vec<XmppClient>,
    targets: Arc<Vec<String>>,
    tag: &str,
    total: u64,
    payload: usize,
) -> (Vec<XmppClient>, u64) {
    let per_sender = (total as usize).div_ceil(USERS);
    let body = Arc::new("x".repeat(payload));
    let tag = tag.to_string();
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let targets = targets.clone();
            let body = body.clone();
            let tag = tag.clone();
            tokio::spawn(async move {
                let mut batch = String::new();
                for j in 0..per_sender {
                    let to = &targets[(i + j) % targets.len()];
                    batch.push_str(&message(to, &format!("{tag}-{i}-{j}"), &body));
                    if j % 50 == 49 || j + 1 == per_sender {
                        c.send_raw(&batch).await;
                        batch.clear();
                    }
                }
                c
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("sender task"));
    }
    (out, (per_sender * USERS) as u64)
}

/// Counts messages tagged `tag` at the receivers until `want` arrived or
/// `deadline`; returns (distinct ids, duplicates, receivers).
fn count_at(
    receivers: Vec<XmppClient>,
    tag: &str,
    want: u64,
    deadline: tokio::time::Instant,
    arrived: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<(HashSet<String>, u64, XmppClient)>> {
    receivers
        .into_iter()
        .map(|mut c| {
            let tag = format!("{tag}-");
            let arrived = arrived.clone();
            tokio::spawn(async move {
                let mut seen = HashSet::new();
                let mut dups = 0;
                while arrived.load(Relaxed) < want {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let Some(m) = c
                        .recv(left.min(Duration::from_millis(200)), |e| {
                            e.name() == "message"
                                && e.attr("id").is_some_and(|id| id.starts_with(&tag))
                        })
                        .await
                    else {
                        if tokio::time::Instant::now() >= deadline {
                            break;
                        }
                        continue;
                    };
                    let id = m.attr("id").unwrap_or_default().to_string();
                    if seen.insert(id) {
                        arrived.fetch_add(1, Relaxed);
                    } else {
                        dups += 1;
                    }
                }
                (seen, dups, c)
            })
        })
        .collect()
}

/// The outcome of one measured run.
pub struct Run {
    pub sent: u64,
    pub arrived: u64,
    pub duplicates: u64,
    pub elapsed_s: f64,
    pub cpu_us_per_msg: Value,
    /// Error replies that came back to the senders (ring runs).
    pub errors_back: Option<u64>,
}

impl Run {
    pub fn rate(&self) -> f64 {
        self.arrived as f64 / self.elapsed_s.max(1e-9)
    }

    pub fn json(&self) -> Value {
        json!({
            "sent": self.sent,
            "arrived": self.arrived,
            "lost": self.sent - self.arrived.min(self.sent),
            "duplicates": self.duplicates,
            "elapsed_s": self.elapsed_s,
            "msgs_per_s": self.rate(),
            "cpu_us_per_msg": self.cpu_us_per_msg,
            "errors_back_to_senders": self.errors_back,
        })
    }
}

/// Prosody → Prosody: `total` messages from the senders to r0..r9@b.test,
/// counted at the receiving clients.
pub async fn prosody_to_prosody(
    w: &World,
    senders: Vec<XmppClient>,
    receivers: Vec<XmppClient>,
    tag: &str,
    total: u64,
    payload: usize,
) -> (Run, Vec<XmppClient>, Vec<XmppClient>) {
    let targets: Arc<Vec<String>> = Arc::new((0..USERS).map(|i| format!("r{i}@b.test")).collect());
    let arrived = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + RUN_LIMIT;
    // What `send_all` will send: `total` rounded up to a multiple of USERS.
    let want = (total as usize).div_ceil(USERS) as u64 * USERS as u64;
    let counters = count_at(receivers, tag, want, deadline, arrived.clone());
    let cpu = Cpu::start(vec![
        ("clients".into(), vec![my_pid()]),
        ("sending_prosody".into(), w.a.pid().into_iter().collect()),
        ("receiving_prosody".into(), w.b.pid().into_iter().collect()),
    ]);
    let start = Instant::now();
    let (senders, sent) = send_all(senders, targets, tag, total, payload).await;
    let mut receivers = Vec::new();
    let mut distinct = 0;
    let mut dups = 0;
    for c in counters {
        let (seen, d, client) = c.await.expect("receiver task");
        distinct += seen.len() as u64;
        dups += d;
        receivers.push(client);
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let run = Run {
        sent,
        arrived: distinct,
        duplicates: dups,
        elapsed_s,
        cpu_us_per_msg: cpu.per(distinct),
        errors_back: None,
    };
    (run, senders, receivers)
}

/// Sum of `stanzas_handled` over the ring's nodes.
fn ring_handled(ring: &Cluster) -> u64 {
    (0..ring.nodes.len())
        .filter_map(|i| get_json::<StatusReport>(ring.admin(i), "/status", crate::support::T).ok())
        .map(|s| s.counters.stanzas_handled)
        .sum()
}

/// Prosody → ring: `total` messages from the senders to u0..u9@ring.test,
/// counted at the responsible nodes (`stanzas_handled` in `/status`). The
/// ring answers each with `service-unavailable` (no service holds those
/// JIDs yet), so the return path is loaded as well.
pub async fn prosody_to_ring(
    w: &World,
    senders: Vec<XmppClient>,
    tag: &str,
    total: u64,
    payload: usize,
) -> (Run, Vec<XmppClient>) {
    let ring = w.ring.as_ref().expect("a world with a ring");
    let targets: Arc<Vec<String>> =
        Arc::new((0..USERS).map(|i| format!("u{i}@ring.test")).collect());
    let pids: Vec<u32> = ring
        .nodes
        .iter()
        .filter_map(|n| n.child.as_ref().map(|c| c.id()))
        .collect();
    let base = ring_handled(ring);
    let cpu = Cpu::start(vec![
        ("clients".into(), vec![my_pid()]),
        ("sending_prosody".into(), w.a.pid().into_iter().collect()),
        ("ring_nodes".into(), pids),
    ]);
    let start = Instant::now();
    let (senders, sent) = send_all(senders, targets, tag, total, payload).await;
    let mut handled = 0;
    let mut done_at = start.elapsed();
    while start.elapsed() < RUN_LIMIT {
        handled = ring_handled(ring) - base;
        done_at = start.elapsed();
        if handled >= sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_json = cpu.per(handled.min(sent));
    // Late duplicates would show up after the count was reached.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = ring_handled(ring) - base;
    let (errors_back, senders) = errors_back(senders, tag, sent / USERS as u64).await;
    let run = Run {
        sent,
        arrived: handled.min(sent),
        duplicates: after.saturating_sub(sent),
        elapsed_s: done_at.as_secs_f64(),
        cpu_us_per_msg: cpu_json,
        errors_back: Some(errors_back),
    };
    (run, senders)
}

/// Counts the error replies to messages tagged `tag` at each sender (up to
/// `per_sender` each, waiting at most 30 s).
async fn errors_back(
    senders: Vec<XmppClient>,
    tag: &str,
    per_sender: u64,
) -> (u64, Vec<XmppClient>) {
    let prefix = format!("{tag}-");
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut c| {
            let prefix = prefix.clone();
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                let mut n = 0;
                while n < per_sender {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let got = c
                        .recv(left, |e| {
                            e.attr("type") == Some("error")
                                && e.attr("id").is_some_and(|id| id.starts_with(&prefix))
                        })
                        .await;
                    if got.is_none() {
                        break;
                    }
                    n += 1;
                }
                (n, c)
            })
        })
        .collect();
    let mut total = 0;
    let mut out = Vec::new();
    for t in tasks {
        let (n, c) = t.await.expect("sender task");
        total += n;
        out.push(c);
    }
    (total, out)
}

/// Warms both paths up (TLS, dialback, s2s streams in both directions) so
/// that the measured runs see established streams, as a long-running
/// federation does.
async fn warm_up(
    w: &World,
    senders: Vec<XmppClient>,
    receivers: Vec<XmppClient>,
) -> (Vec<XmppClient>, Vec<XmppClient>) {
    let (r, s, rc) = prosody_to_prosody(w, senders, receivers, "warm", 100, 10).await;
    assert_eq!(
        r.arrived, r.sent,
        "warm-up: Prosody to Prosody lost messages"
    );
    let mut s = s;
    if w.ring.is_some() {
        let (r, s2) = prosody_to_ring(w, s, "warmring", 100, 10).await;
        assert_eq!(r.arrived, r.sent, "warm-up: Prosody to ring lost messages");
        s = s2;
    }
    (s, rc)
}

/// The median of a list of runs by rate, as JSON with every rate listed.
pub fn median(runs: &[Run]) -> Value {
    let mut idx: Vec<usize> = (0..runs.len()).collect();
    idx.sort_by(|&a, &b| runs[a].rate().total_cmp(&runs[b].rate()));
    let mid = &runs[idx[idx.len() / 2]];
    let mut v = mid.json();
    v["runs_msgs_per_s"] = json!(runs.iter().map(Run::rate).collect::<Vec<_>>());
    v["total_lost"] = json!(
        runs.iter()
            .map(|r| r.sent - r.arrived.min(r.sent))
            .sum::<u64>()
    );
    v["total_duplicates"] = json!(runs.iter().map(|r| r.duplicates).sum::<u64>());
    v
}
