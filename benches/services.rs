//! MUC and PubSub fan-out: the ring's services against Prosody's own, side
//! by side in one run, with the same users on the same two Prosody servers.
//!
//! * MUC: `--occupants` users (half on a.test, half on b.test) in one room;
//!   ten of them (five per server) send `--messages` groupchat messages in
//!   a burst. Delivered messages per second (every occupant gets every
//!   message, its own included) and the send-to-delivery latency. The room
//!   is either `bench@conference.ring.test` (hosted by a ring node, fanned
//!   out per domain through the edge) or `bench@conference.a.test` (Prosody
//!   0.12's mod_muc on a.test).
//! * PubSub: `--subscribers` users (half on each server) subscribed to one
//!   node; a user of a.test publishes `--publishes` items in a burst.
//!   Notifications delivered per second and publish-to-notification
//!   latency. The node is on `pubsub.ring.test` or on Prosody's mod_pubsub
//!   at `pubsub.a.test`.
//!
//! Each comparison also has paced runs (`--pace-ms`, default 500: MUC 20
//! messages/s, PubSub 2 publishes/s, about a third of what the machine can
//! deliver) whose latency is the service's, not a queue's.
//!
//! Runs alternate ring / Prosody, `--rounds` times each; the JSON reports
//! the median run by rate with every run's rate, and the CPU each process
//! group used per delivered stanza (everything shares this machine's two
//! cores: the load generator's CPU is printed beside every rate). All
//! processes listen on 127.0.0.0/8 only.

#[path = "../tests/support/mod.rs"]
mod support;

use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::client::XmppClient;
use support::cpu::Cpu;
use support::dns::DnsServer;
use support::prosody::{Prosody, ProsodyOptions};
use support::{prosody_with_own_ca, ring_with_edge};
use tokio::sync::mpsc;
use xmpp_parsers::minidom::Element;
use xmpp_ring::cluster::Cluster;

const A_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const EDGE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const RUN_LIMIT: Duration = Duration::from_secs(120);
const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const SENDERS: usize = 10;

/// Recognises a measured stanza and returns its send time (µs since the
/// run's base instant).
type Stamp = Arc<dyn Fn(&Element) -> Option<u64> + Send + Sync>;

struct Args {
    occupants: usize,
    messages: usize,
    subscribers: usize,
    publishes: usize,
    rounds: usize,
    apps: usize,
    muc: bool,
    pubsub: bool,
    /// Paced runs: one message (MUC: per sender) or publish every this long.
    pace: Duration,
}

fn args() -> Args {
    let mut a = Args {
        occupants: 100,
        messages: 200,
        subscribers: 1000,
        publishes: 20,
        rounds: 3,
        apps: 4,
        muc: true,
        pubsub: true,
        pace: Duration::from_millis(500),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let num = |j: usize| -> usize {
            argv.get(j)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{} needs a number", argv[i]))
        };
        match argv[i].as_str() {
            "--occupants" => a.occupants = num(i + 1),
            "--messages" => a.messages = num(i + 1),
            "--subscribers" => a.subscribers = num(i + 1),
            "--publishes" => a.publishes = num(i + 1),
            "--rounds" => a.rounds = num(i + 1),
            "--apps" => a.apps = num(i + 1),
            "--pace-ms" => a.pace = Duration::from_millis(num(i + 1) as u64),
            "--muc-only" => {
                a.pubsub = false;
                i -= 1;
            }
            "--pubsub-only" => {
                a.muc = false;
                i -= 1;
            }
            "--quick" => {
                a.occupants = 20;
                a.messages = 50;
                a.subscribers = 100;
                a.publishes = 10;
                a.rounds = 1;
                i -= 1;
            }
            // cargo bench passes --bench.
            _ => i -= 1,
        }
        i += 2;
    }
    a.occupants = a.occupants.max(SENDERS);
    a
}

struct World {
    a: Prosody,
    b: Prosody,
    ring: Cluster,
    _dns: DnsServer,
    _dir: tempfile::TempDir,
}

/// Users `a0..` on a.test and `b0..` on b.test, `n` in all.
fn user_jids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                format!("a{}@a.test", i / 2)
            } else {
                format!("b{}@b.test", i / 2)
            }
        })
        .collect()
}

fn world(apps: usize, users: usize) -> World {
    support::require_prosody();
    let dir = tempfile::tempdir().expect("tmp");
    let dns = DnsServer::start();
    let start = |domain: &str, ip: Ipv4Addr, components: &str| {
        let opts = ProsodyOptions {
            components: components.to_string(),
            ..ProsodyOptions::default()
        };
        prosody_with_own_ca(dir.path(), &dns, domain, ip, &[], opts)
    };
    let a = start(
        "a.test",
        A_IP,
        // Prosody lets only admins create PubSub nodes by default.
        "Component \"conference.a.test\" \"muc\"\nComponent \"pubsub.a.test\" \"pubsub\"\n    admins = { \"a0@a.test\" }\n",
    );
    for d in ["conference.a.test", "pubsub.a.test"] {
        dns.add_s2s_srv(d, "a.test", a.s2s_port);
    }
    let b = start("b.test", B_IP, "");
    let accounts = |prefix: &str| -> Vec<(String, String)> {
        (0..users.div_ceil(2))
            .map(|i| (format!("{prefix}{i}"), "pw".to_string()))
            .collect()
    };
    a.add_accounts(&accounts("a"));
    b.add_accounts(&accounts("b"));
    let ring = ring_with_edge(
        dir.path(),
        &dns,
        apps,
        EDGE_IP,
        &["ring.test", "conference.ring.test", "pubsub.ring.test"],
    );
    World {
        a,
        b,
        ring,
        _dns: dns,
        _dir: dir,
    }
}

async fn login(w: &World, n: usize) -> Vec<XmppClient> {
    let mut out = Vec::with_capacity(n);
    let jids = user_jids(n);
    for chunk in jids.chunks(50) {
        let logins = chunk.iter().map(|j| {
            let addr = if j.ends_with("@a.test") {
                w.a.c2s()
            } else {
                w.b.c2s()
            };
            let j = j.clone();
            async move { XmppClient::connect(&j, "pw", &addr).await }
        });
        out.extend(futures::future::join_all(logins).await);
    }
    out
}

/// Throws away whatever the clients received so far.
async fn drain(clients: &mut [XmppClient]) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    for c in clients.iter_mut() {
        while c.incoming.try_recv().is_ok() {}
    }
}

/// Sends an IQ from each client and waits for every answer; panics on
/// errors.
async fn iq_all(clients: &mut [XmppClient], make: impl Fn(usize, &XmppClient) -> String) {
    for (i, c) in clients.iter_mut().enumerate() {
        let xml = make(i, c);
        c.send_raw(&xml).await;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let id = format!("q{i}");
        let r = c
            .recv(Duration::from_secs(60), |e| {
                e.attr("id") == Some(id.as_str())
            })
            .await
            .unwrap_or_else(|| panic!("no answer for {}", c.jid));
        assert_eq!(r.attr("type"), Some("result"), "{}: {r:?}", c.jid);
    }
}

/// What one client saw of a run.
struct Seen {
    count: usize,
    latencies_us: Vec<u64>,
    last: Option<Instant>,
}

/// Counts, at every client, the stanzas `stamp` recognises (it returns the
/// send time in µs since `base`), until each has `expected` or the run
/// limit passes. Returns the receivers to the clients afterwards.
async fn count_at_all(
    clients: &mut [XmppClient],
    expected: usize,
    base: Instant,
    stamp: Stamp,
) -> impl std::future::Future<Output = Vec<(mpsc::UnboundedReceiver<Element>, Seen)>> + use<> {
    let deadline = tokio::time::Instant::now() + RUN_LIMIT;
    let mut tasks = Vec::new();
    for c in clients.iter_mut() {
        let (_tx, dummy) = mpsc::unbounded_channel();
        let mut rx = std::mem::replace(&mut c.incoming, dummy);
        let stamp = stamp.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen {
                count: 0,
                latencies_us: Vec::with_capacity(expected),
                last: None,
            };
            while seen.count < expected {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(e)) => {
                        if let Some(sent) = stamp(&e) {
                            let now = Instant::now();
                            seen.count += 1;
                            seen.last = Some(now);
                            let at = now.duration_since(base).as_micros() as u64;
                            seen.latencies_us.push(at.saturating_sub(sent));
                        }
                    }
                    _ => break,
                }
            }
            (rx, seen)
        }));
    }
    async move {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("counting task"));
        }
        out
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Meters the load generator, each Prosody and the ring.
fn cpu_meter(w: &World) -> Cpu {
    let ring: Vec<u32> = w
        .ring
        .nodes
        .iter()
        .filter_map(|n| n.child.as_ref().map(|c| c.id()))
        .collect();
    Cpu::start(vec![
        ("load_generator".into(), vec![std::process::id()]),
        ("prosody_a".into(), w.a.pid().into_iter().collect()),
        ("prosody_b".into(), w.b.pid().into_iter().collect()),
        ("ring".into(), ring),
    ])
}

/// One measured run.
struct Run {
    rate: f64,
    json: Value,
}

/// Gives the clients their receivers back and summarises what they saw.
fn finish(
    clients: &mut [XmppClient],
    results: Vec<(mpsc::UnboundedReceiver<Element>, Seen)>,
    expected: usize,
    started: Instant,
    cpu: &Cpu,
) -> Run {
    let mut seen = Vec::new();
    for (c, (rx, s)) in clients.iter_mut().zip(results) {
        c.incoming = rx;
        seen.push(s);
    }
    summarise(expected, started, &seen, cpu)
}

fn summarise(expected: usize, started: Instant, seen: &[Seen], cpu: &Cpu) -> Run {
    let delivered: usize = seen.iter().map(|s| s.count).sum();
    let last = seen.iter().filter_map(|s| s.last).max().unwrap_or(started);
    let secs = last.duration_since(started).as_secs_f64().max(1e-9);
    let mut lat: Vec<u64> = seen
        .iter()
        .flat_map(|s| s.latencies_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let rate = delivered as f64 / secs;
    Run {
        rate,
        json: json!({
            "expected": expected,
            "delivered": delivered,
            "lost": expected.saturating_sub(delivered),
            "seconds": secs,
            "delivered_per_s": rate,
            "latency_ms": { "p50": pct(&lat, 0.5), "p90": pct(&lat, 0.9), "p99": pct(&lat, 0.99), "max": pct(&lat, 1.0) },
            "cpu_us_per_delivery": cpu.per(delivered as u64),
        }),
    }
}

fn median(runs: Vec<Run>) -> Value {
    let mut rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
    let mut sorted: Vec<Run> = runs;
    sorted.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let mid = sorted.len() / 2;
    let mut v = sorted.swap_remove(mid).json;
    rates.sort_by(f64::total_cmp);
    v["runs_delivered_per_s"] = json!(rates);
    v
}

async fn muc_setup(clients: &mut [XmppClient], room: &str) {
    let owner = &mut clients[0];
    owner
        .send_raw(&format!(
            "<presence to='{room}/u0'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
        .await;
    let me = format!("{room}/u0");
    owner
        .recv(Duration::from_secs(30), |e| {
            e.attr("from") == Some(me.as_str())
        })
        .await
        .unwrap_or_else(|| panic!("cannot create {room}"));
    owner
        .send_raw(&format!("<iq type='set' id='cfg' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"))
        .await;
    owner
        .recv(Duration::from_secs(30), |e| e.attr("id") == Some("cfg"))
        .await
        .expect("room configured");
    for (i, c) in clients.iter_mut().enumerate().skip(1) {
        c.send_raw(&format!("<presence to='{room}/u{i}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>"))
            .await;
    }
    for (i, c) in clients.iter_mut().enumerate().skip(1) {
        let me = format!("{room}/u{i}");
        let p = c
            .recv(Duration::from_secs(60), |e| {
                e.name() == "presence" && e.attr("from") == Some(me.as_str())
            })
            .await
            .unwrap_or_else(|| panic!("{} cannot join {room}", c.jid));
        assert_ne!(p.attr("type"), Some("error"), "{p:?}");
    }
    drain(clients).await;
}

/// `pace`: `None` sends everything in one burst (throughput); `Some(p)`
/// sends one message every `p` (latency at a load well below capacity).
async fn muc_run(
    w: &World,
    clients: &mut [XmppClient],
    room: &str,
    round: usize,
    messages: usize,
    pace: Option<Duration>,
) -> Run {
    let base = Instant::now();
    let tag = format!("R{round}-");
    let room_prefix = format!("{room}/");
    let stamp: Stamp = Arc::new(move |e: &Element| {
        if e.name() != "message" || !e.attr("from").is_some_and(|f| f.starts_with(&room_prefix)) {
            return None;
        }
        let body = e.get_child("body", "jabber:client")?.text();
        body.strip_prefix(&tag)?.rsplit('-').next()?.parse().ok()
    });
    let expected_each = messages;
    let collecting = count_at_all(clients, expected_each, base, stamp).await;
    let cpu = cpu_meter(w);
    let started = Instant::now();
    // Ten senders, five per server, each its share.
    let per = messages / SENDERS;
    let msg = |s: usize, k: usize| {
        let at = base.elapsed().as_micros();
        format!(
            "<message type='groupchat' to='{room}'><body>R{round}-{s}-{k}-{at}</body></message>"
        )
    };
    match pace {
        None => {
            for (s, c) in clients.iter_mut().take(SENDERS).enumerate() {
                let batch: String = (0..per).map(|k| msg(s, k)).collect();
                c.send_raw(&batch).await;
            }
        }
        Some(p) => {
            for k in 0..per {
                for (s, c) in clients.iter_mut().take(SENDERS).enumerate() {
                    c.send_raw(&msg(s, k)).await;
                    tokio::time::sleep(p).await;
                }
            }
        }
    }
    let expected = per * SENDERS * clients.len();
    finish(clients, collecting.await, expected, started, &cpu)
}

async fn pubsub_setup(clients: &mut [XmppClient], service: &str) {
    let owner = &mut clients[0];
    owner
        .send_raw(&format!("<iq type='set' id='create' to='{service}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><create node='bench'/></pubsub></iq>"))
        .await;
    let r = owner
        .recv(Duration::from_secs(30), |e| e.attr("id") == Some("create"))
        .await
        .expect("node created");
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    iq_all(clients, |i, c| {
        format!("<iq type='set' id='q{i}' to='{service}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><subscribe node='bench' jid='{}'/></pubsub></iq>", c.jid)
    })
    .await;
    drain(clients).await;
}

/// `pace` as for [`muc_run`].
async fn pubsub_run(
    w: &World,
    clients: &mut [XmppClient],
    service: &str,
    round: usize,
    publishes: usize,
    pace: Option<Duration>,
) -> Run {
    let base = Instant::now();
    let tag = format!("R{round}-");
    let svc = service.to_string();
    let stamp: Stamp = Arc::new(move |e: &Element| {
        if e.name() != "message" || e.attr("from") != Some(svc.as_str()) {
            return None;
        }
        let entry = e
            .get_child("event", NS_EVENT)?
            .get_child("items", NS_EVENT)?
            .get_child("item", NS_EVENT)?
            .get_child("entry", "urn:bench")?
            .text();
        entry.strip_prefix(&tag)?.rsplit('-').next()?.parse().ok()
    });
    let collecting = count_at_all(clients, publishes, base, stamp).await;
    let cpu = cpu_meter(w);
    let started = Instant::now();
    let item = |k: usize| {
        let at = base.elapsed().as_micros();
        format!(
            "<iq type='set' id='p{round}-{k}' to='{service}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='bench'><item id='i{k}'><entry xmlns='urn:bench'>R{round}-{k}-{at}</entry></item></publish></pubsub></iq>"
        )
    };
    match pace {
        None => {
            let batch: String = (0..publishes).map(item).collect();
            clients[0].send_raw(&batch).await;
        }
        Some(p) => {
            for k in 0..publishes {
                clients[0].send_raw(&item(k)).await;
                tokio::time::sleep(p).await;
            }
        }
    }
    let expected = publishes * clients.len();
    finish(clients, collecting.await, expected, started, &cpu)
}

#[derive(Clone, Copy)]
enum Kind {
    Muc,
    PubSub,
}

/// Rounds of burst and paced runs, alternating the ring's service
/// (`targets[0]`) and Prosody's (`targets[1]`); the medians and the ratio.
async fn compare(
    w: &World,
    clients: &mut [XmppClient],
    kind: Kind,
    targets: [&str; 2],
    a: &Args,
) -> Value {
    let mut burst: [Vec<Run>; 2] = [vec![], vec![]];
    let mut paced: [Vec<Run>; 2] = [vec![], vec![]];
    for round in 0..a.rounds {
        for (side, target) in targets.iter().enumerate() {
            for (pace, runs) in [(None, &mut burst), (Some(a.pace), &mut paced)] {
                // Paced runs: 20 messages or 10 publishes, one per pace.
                let tag = round + if pace.is_some() { 100 } else { 0 };
                let r = match kind {
                    Kind::Muc => {
                        let count = if pace.is_some() {
                            2 * SENDERS
                        } else {
                            a.messages
                        };
                        let pace = pace.map(|p| p / SENDERS as u32);
                        muc_run(w, clients, target, tag, count, pace).await
                    }
                    Kind::PubSub => {
                        let count = if pace.is_some() { 10 } else { a.publishes };
                        pubsub_run(w, clients, target, tag, count, pace).await
                    }
                };
                eprintln!(
                    "{target} round {round} {}: {:.0} delivered/s, p99 {} ms",
                    if pace.is_some() { "paced" } else { "burst" },
                    r.rate,
                    r.json["latency_ms"]["p99"]
                );
                runs[side].push(r);
                drain(clients).await;
            }
        }
    }
    let [ring, other] = burst;
    let (ring, other) = (median(ring), median(other));
    let ratio = ring["delivered_per_s"].as_f64().unwrap_or(0.0)
        / other["delivered_per_s"].as_f64().unwrap_or(f64::NAN);
    let [ring_paced, other_paced] = paced;
    json!({
        "burst": { "ring": ring, "prosody": other, "ring_vs_prosody": ratio },
        "paced": { "ring": median(ring_paced), "prosody": median(other_paced) },
    })
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let users = a.occupants.max(if a.pubsub { a.subscribers } else { 0 });
    let w = world(a.apps, users);
    let mut report = json!({
        "bench": "services",
        "ring_nodes": a.apps + 1,
        "rounds": a.rounds,
    });
    rt.block_on(async {
        let mut clients = login(&w, users).await;
        eprintln!("{} users logged in", clients.len());
        if a.muc {
            let n = a.occupants;
            let rooms = ["bench@conference.ring.test", "bench@conference.a.test"];
            for room in rooms {
                muc_setup(&mut clients[..n], room).await;
            }
            let mut v = compare(&w, &mut clients[..n], Kind::Muc, rooms, &a).await;
            v["occupants"] = json!(n);
            v["messages_per_run"] = json!(a.messages);
            v["senders"] = json!(SENDERS);
            v["paced_messages_per_s"] = json!(1.0 / a.pace.as_secs_f64());
            report["muc"] = v;
        }
        if a.pubsub {
            let n = a.subscribers;
            let services = ["pubsub.ring.test", "pubsub.a.test"];
            for s in services {
                pubsub_setup(&mut clients[..n], s).await;
            }
            let mut v = compare(&w, &mut clients[..n], Kind::PubSub, services, &a).await;
            v["subscribers"] = json!(n);
            v["publishes_per_run"] = json!(a.publishes);
            v["paced_publishes_per_s"] = json!(1.0 / a.pace.as_secs_f64());
            report["pubsub"] = v;
        }
        let fan = (0..w.ring.nodes.len())
            .filter_map(|i| {
                xmpp_ring::client::get_json::<node::api::StatusReport>(
                    w.ring.admin(i),
                    "/status",
                    support::T,
                )
                .ok()
            })
            .map(|s| (s.services.fanout_envelopes, s.services.fanout_stanzas))
            .fold((0, 0), |acc, x| (acc.0 + x.0, acc.1 + x.1));
        report["ring_fanout"] = json!({ "envelopes": fan.0, "stanzas": fan.1 });
        for c in clients {
            c.disconnect().await;
        }
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
