//! How big one room and one PubSub node can get at one host, in process:
//! the services host over a replicator in memory, driven stanza by stanza
//! exactly as the node drives it (one turn per stanza, or a batch per
//! turn as under load), with the outputs built and dropped.
//!
//! `cargo bench -p ring-services --bench scale [-- --subscribers N
//! --occupants N]` prints one JSON object: subscribe rate, state bytes
//! written per subscription, the host's memory for the subscribers, the
//! time to build one notification to all of them; join rate of a room
//! as it fills, and the bytes a join writes.

use dht::{Key, NodeId};
use ring_records::{Config, ListRing, MemBackend, Replicator, StoreLimits};
use ring_services::Action;
use ring_services::host::ServiceHost;
use ring_services::pubsub::Limits;
use ring_services::services::{Quotas, Services};
use std::time::{Duration, Instant};
use xmpp_addr::Served;
use xmpp_parsers::minidom::Element;

struct Bench {
    /// A ring of one node (replicas have nothing to confirm: this
    /// measures the host, not the network).
    me: [NodeId; 1],
    rep: Replicator<MemBackend>,
    host: ServiceHost,
    now: Instant,
    /// Stanzas the outputs held (built, counted, dropped).
    out_stanzas: u64,
    /// Of which recipients of broadcasts.
    broadcast_recipients: u64,
}

impl Bench {
    fn new() -> Bench {
        let id = Key::from_bytes([7; 32]);
        let now = Instant::now();
        let limits = StoreLimits {
            max_record_bytes: 64 * 1024,
            max_store_bytes: 4 << 30,
        };
        let rep = Replicator::new(Config::default(), id, MemBackend::new(), limits, now)
            .expect("a store in memory");
        let quotas = Quotas::default();
        let services = Services::new(
            Served::new(&["ring.test"]).expect("a valid domain"),
            id.to_hex(),
            Limits {
                max_items: 10,
                max_item_bytes: 32 * 1024,
                max_record_bytes: 64 * 1024,
            },
            quotas,
            42,
        );
        let host = ServiceHost::new(services, 0, Duration::from_secs(3600), now);
        Bench {
            me: [id],
            rep,
            host,
            now,
            out_stanzas: 0,
            broadcast_recipients: 0,
        }
    }

    fn feed(&mut self, st: Element) {
        self.host.handle_stanza(
            self.now,
            1_000_000,
            st,
            &mut self.rep,
            &ListRing {
                me: self.me[0],
                live: &self.me,
            },
        );
    }

    /// Ends the turn: writes, then the outputs (counted and dropped).
    /// Internal registry messages are fed back (this node holds the
    /// registries too).
    fn turn(&mut self) {
        loop {
            self.host.end_turn(
                self.now,
                1_000_000,
                &mut self.rep,
                &ListRing {
                    me: self.me[0],
                    live: &self.me,
                },
            );
            while self.rep.poll_output().is_some() {}
            let mut internal = Vec::new();
            while let Some(a) = self.host.poll_action() {
                match a {
                    Action::Send(st) | Action::Reroute(st) => {
                        if st.attr("to").is_some_and(|t| t.ends_with("ring.test")) {
                            internal.push(st);
                        } else {
                            self.out_stanzas += 1;
                        }
                    }
                    Action::Broadcast { to, .. } => {
                        self.out_stanzas += to.len() as u64;
                        self.broadcast_recipients += to.len() as u64;
                    }
                }
            }
            if internal.is_empty() {
                return;
            }
            for st in internal {
                self.feed(st);
            }
        }
    }
}

fn parse(xml: &str) -> Element {
    xml.parse().expect("a well-formed stanza")
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const SVC: &str = "pubsub.ring.test";
const ROOM: &str = "hall@conference.ring.test";

fn subscribe(i: usize) -> Element {
    parse(&format!(
        "<iq xmlns='jabber:client' type='set' id='s{i}' from='user{i}@remote{}.example/res' to='{SVC}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><subscribe node='news' jid='user{i}@remote{}.example/res'/></pubsub></iq>",
        i % 50,
        i % 50
    ))
}

/// `measure_memory`: only meaningful in a process that has not yet
/// allocated and freed as much (the first run).
fn pubsub(n: usize, per_turn: usize, measure_memory: bool) -> serde_json::Value {
    let mut b = Bench::new();
    b.feed(parse(&format!("<iq xmlns='jabber:client' type='set' id='c' from='owner@ring.test/x' to='{SVC}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><create node='news'/></pubsub></iq>")));
    b.turn();
    let rss_before = rss_bytes();
    let written_before = b.host.counters();
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        for _ in 0..per_turn.min(n - i) {
            b.feed(subscribe(i));
            i += 1;
        }
        b.turn();
    }
    let elapsed = start.elapsed();
    let after = b.host.counters();
    let rss_after = rss_bytes();
    let held = b.host.services().pubsub.subscriptions();
    assert_eq!(held, n, "every subscription is held");
    // One notification to everyone.
    let publish = parse(&format!(
        "<iq xmlns='jabber:client' type='set' id='p' from='owner@ring.test/x' to='{SVC}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='news'><item id='1'><entry xmlns='urn:x'>news</entry></item></publish></pubsub></iq>"
    ));
    let before_out = b.broadcast_recipients;
    let t = Instant::now();
    b.feed(publish);
    b.turn();
    let notify = t.elapsed();
    let shards = b
        .host
        .services()
        .pubsub
        .subscriptions_of(&format!("pubsub:{SVC}/news"))
        .map_or(0, |s| s.shard_count());
    let rss = rss_after.saturating_sub(rss_before);
    let memory = measure_memory.then(|| {
        serde_json::json!({
            "host_rss_delta_bytes": rss,
            "host_rss_per_subscription_bytes": rss as f64 / n as f64,
        })
    });
    serde_json::json!({
        "memory": memory,
        "subscriptions": n,
        "per_turn": per_turn,
        "subscribe_per_s": n as f64 / elapsed.as_secs_f64(),
        "bytes_written_per_subscription":
            (after.bytes_written - written_before.bytes_written) as f64 / n as f64,
        "records_written_per_subscription":
            (after.records_written - written_before.records_written) as f64 / n as f64,
        "shards": shards,
        "notification_recipients": b.broadcast_recipients - before_out,
        "notification_build_ms": notify.as_secs_f64() * 1000.0,
    })
}

fn join(i: usize) -> Element {
    parse(&format!(
        "<presence xmlns='jabber:client' from='user{i}@remote{}.example/res' to='{ROOM}/nick{i}'><x xmlns='http://jabber.org/protocol/muc'/></presence>",
        i % 50
    ))
}

fn muc(n: usize) -> serde_json::Value {
    let mut b = Bench::new();
    b.feed(join(0));
    b.turn();
    b.feed(parse(&format!("<iq xmlns='jabber:client' type='set' id='c' from='user0@remote0.example/res' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_maxusers'><value>{}</value></field></x></query></iq>", n + 10)));
    b.turn();
    let before = b.host.counters();
    let start = Instant::now();
    let mut last_tenth = Duration::ZERO;
    for i in 1..n {
        let t = Instant::now();
        b.feed(join(i));
        b.turn();
        if i >= n - n / 10 {
            last_tenth += t.elapsed();
        }
    }
    let elapsed = start.elapsed();
    let after = b.host.counters();
    let occupants = b.host.services().muc.occupants_of(ROOM);
    assert_eq!(occupants, n, "everyone is in");
    let joins = (n - 1) as f64;
    serde_json::json!({
        "occupants": n,
        "joins_per_s": joins / elapsed.as_secs_f64(),
        "joins_per_s_last_tenth": (n / 10) as f64 / last_tenth.as_secs_f64(),
        "stanzas_out_per_join": b.out_stanzas as f64 / joins,
        "bytes_written_per_join": (after.bytes_written - before.bytes_written) as f64 / joins,
        "records_written_per_join":
            (after.records_written - before.records_written) as f64 / joins,
    })
}

fn main() {
    let subscribers = arg("--subscribers", 100_000);
    let occupants = arg("--occupants", 10_000);
    let report = serde_json::json!({
        "bench": "service_scale",
        "pubsub_one_per_turn": pubsub(subscribers, 1, true),
        "pubsub_64_per_turn": pubsub(subscribers, 64, false),
        "muc": muc(occupants),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
}
