//! Federation load: ten c2s users on one Prosody send chat messages to ten
//! targets, either users on a second Prosody (the yardstick: Prosody's own
//! s2s) or users of a ring, logged in to the ring's edge (the message goes
//! Prosody → edge over s2s → the user's home node → the edge, the user's
//! access node → the client). Shared by the `federation` and
//! `ring_throughput` benches.
//!
//! Both servers speak STARTTLS + dialback with certificates the other side
//! does not trust (`s2s_secure_auth = false`), as in
//! the Prosody setup the README describes. Every process involved runs on this machine's
//! two cores, so the CPU of each (clients included) is reported beside each
//! rate.

use crate::support::c2s_client::{C2sClient, Login, tls_config};
use crate::support::client::XmppClient;
use crate::support::cpu::Cpu;
use crate::support::dns::DnsServer;
use crate::support::prosody::{Prosody, ProsodyOptions};
use crate::support::{prosody_with_own_ca, ring_with_edge_args};
use node::api::RecordReport;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;
use xmpp_parsers::minidom::Element;
use xmpp_ring::client::{post_json, url_encode};
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
    let ring = (ring_apps > 0).then(|| {
        let c2s = format!("{EDGE_IP}:{}", crate::support::prosody::free_port(EDGE_IP));
        let ring = ring_with_edge_args(
            dir.path(),
            &dns,
            ring_apps,
            EDGE_IP,
            &["ring.test"],
            &["--c2s-listen", &c2s],
        );
        add_ring_users(&ring);
        ring
    });
    World {
        a,
        b,
        ring,
        _dns: dns,
        _dir: dir,
    }
}

/// Creates the accounts u0..u9@ring.test (password "pw") through the
/// first node's admin interface.
fn add_ring_users(ring: &Cluster) {
    for i in 0..USERS {
        let jid = ring_c2s::account::user_jid(&format!("u{i}@ring.test")).expect("jid");
        let account = ring_c2s::Account::new(
            &jid,
            "pw",
            ring_c2s::account::DEFAULT_ITERATIONS,
            &mut rand::rng(),
        )
        .expect("account");
        let path = format!(
            "/record?op=create&name={}",
            url_encode(&ring_c2s::Account::record_name(&jid))
        );
        let r: RecordReport =
            post_json(ring.admin(0), &path, &account.encode(), crate::support::T).expect("create");
        assert!(r.replicas.is_some(), "{jid} not created: {r:?}");
    }
}

/// The edge's client address.
fn ring_c2s_addr(ring: &Cluster) -> String {
    ring.nodes
        .iter()
        .find_map(|n| n.ready.c2s.clone())
        .expect("the edge listens for clients")
}

/// Logs u0..u9@ring.test in to the edge (STARTTLS, SCRAM-SHA-256, bind,
/// available presence: a message to a bare JID goes to available sessions).
pub async fn ring_receivers(w: &World) -> Vec<C2sClient> {
    let ring = w.ring.as_ref().expect("a world with a ring");
    let addr = ring_c2s_addr(ring);
    let tls = tls_config();
    let mut out = Vec::new();
    for i in 0..USERS {
        let login = Login {
            presence: true,
            ..Login::new(&addr, &format!("u{i}@ring.test"), "pw")
        };
        out.push(
            C2sClient::login(&login, tls.clone())
                .await
                .expect("ring user logs in"),
        );
    }
    // The leases reach the home nodes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    out
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

/// A logged-in client whose stanzas arrive on a channel.
pub trait Inbox: Send + 'static {
    /// Its incoming stanzas.
    fn inbox(&mut self) -> &mut UnboundedReceiver<Element>;
}

impl Inbox for XmppClient {
    fn inbox(&mut self) -> &mut UnboundedReceiver<Element> {
        &mut self.incoming
    }
}

impl Inbox for C2sClient {
    fn inbox(&mut self) -> &mut UnboundedReceiver<Element> {
        &mut self.incoming
    }
}

/// Counts messages tagged `tag` at the receivers until `want` arrived or
/// `deadline`; returns (distinct ids, duplicates, receivers).
fn count_at<C: Inbox>(
    receivers: Vec<C>,
    tag: &str,
    want: u64,
    deadline: tokio::time::Instant,
    arrived: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<(HashSet<String>, u64, C)>> {
    receivers
        .into_iter()
        .map(|mut c| {
            let tag = format!("{tag}-");
            let arrived = arrived.clone();
            tokio::spawn(async move {
                let mut seen = HashSet::new();
                let mut dups = 0;
                while arrived.load(Relaxed) < want && tokio::time::Instant::now() < deadline {
                    let wait = tokio::time::timeout(Duration::from_millis(200), c.inbox().recv());
                    let m = match wait.await {
                        Ok(Some(m)) => m,
                        Ok(None) => break,
                        Err(_) => continue,
                    };
                    let Some(id) = m
                        .attr("id")
                        .filter(|id| m.name() == "message" && id.starts_with(&tag))
                    else {
                        continue;
                    };
                    if seen.insert(id.to_string()) {
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
        })
    }
}

/// One measured run: `total` messages from the senders to `targets`,
/// counted at `receivers`, with the CPU of `groups`.
async fn measured<C: Inbox>(
    senders: Vec<XmppClient>,
    receivers: Vec<C>,
    targets: Vec<String>,
    groups: Vec<(String, Vec<u32>)>,
    (tag, total, payload): (&str, u64, usize),
) -> (Run, Vec<XmppClient>, Vec<C>) {
    let arrived = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + RUN_LIMIT;
    // What `send_all` will send: `total` rounded up to a multiple of USERS.
    let want = (total as usize).div_ceil(USERS) as u64 * USERS as u64;
    let counters = count_at(receivers, tag, want, deadline, arrived.clone());
    let cpu = Cpu::start(groups);
    let start = Instant::now();
    let (senders, sent) = send_all(senders, Arc::new(targets), tag, total, payload).await;
    let mut receivers = Vec::new();
    let mut distinct = 0;
    let mut dups = 0;
    for c in counters {
        let (seen, d, client) = c.await.expect("receiver task");
        distinct += seen.len() as u64;
        dups += d;
        receivers.push(client);
    }
    let run = Run {
        sent,
        arrived: distinct,
        duplicates: dups,
        elapsed_s: start.elapsed().as_secs_f64(),
        cpu_us_per_msg: cpu.per(distinct),
    };
    (run, senders, receivers)
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
    let targets = (0..USERS).map(|i| format!("r{i}@b.test")).collect();
    let groups = vec![
        ("clients".into(), vec![my_pid()]),
        ("sending_prosody".into(), w.a.pid().into_iter().collect()),
        ("receiving_prosody".into(), w.b.pid().into_iter().collect()),
    ];
    measured(senders, receivers, targets, groups, (tag, total, payload)).await
}

/// Prosody → ring users: `total` messages from the senders to
/// u0..u9@ring.test, counted at the ring's receiving clients.
pub async fn prosody_to_ring(
    w: &World,
    senders: Vec<XmppClient>,
    receivers: Vec<C2sClient>,
    tag: &str,
    total: u64,
    payload: usize,
) -> (Run, Vec<XmppClient>, Vec<C2sClient>) {
    let ring = w.ring.as_ref().expect("a world with a ring");
    let targets = (0..USERS).map(|i| format!("u{i}@ring.test")).collect();
    let pids: Vec<u32> = ring
        .nodes
        .iter()
        .filter_map(|n| n.child.as_ref().map(|c| c.id()))
        .collect();
    let groups = vec![
        ("clients".into(), vec![my_pid()]),
        ("sending_prosody".into(), w.a.pid().into_iter().collect()),
        ("ring_nodes".into(), pids),
    ];
    measured(senders, receivers, targets, groups, (tag, total, payload)).await
}

/// Warms Prosody → Prosody up (TLS, dialback, s2s streams in both
/// directions) so that the measured runs see established streams, as a
/// long-running federation does.
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
    (s, rc)
}

/// Warms Prosody → ring users up the same way.
pub async fn warm_up_ring(
    w: &World,
    senders: Vec<XmppClient>,
    receivers: Vec<C2sClient>,
) -> (Vec<XmppClient>, Vec<C2sClient>) {
    let (r, s, rc) = prosody_to_ring(w, senders, receivers, "warmring", 100, 10).await;
    assert_eq!(r.arrived, r.sent, "warm-up: Prosody to ring lost messages");
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
