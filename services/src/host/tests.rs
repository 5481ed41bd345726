//! Deterministic multi-node tests of the services host, in the style of
//! the dht's and the replicator's: a few nodes in one process, each a
//! replicator over memory and a host; a network that delivers each record
//! message and each stanza to the live node closest to its key (perfect
//! routing, FIFO, held back when a test says so); a clock the test moves.
//! Stanzas for other domains land in an inbox, as the edge would send
//! them out.

use super::*;
use crate::pubsub::Limits;
use crate::services::Quotas;
use crate::testing::statuses;
use dht::{Key, NodeId};
use ring_records::{Config, ListRing, MemBackend, Output, RecordMsg, StoreLimits};
use xmpp_addr::Served;

const ROOM: &str = "room@conference.ring.test";

struct TestNode {
    id: NodeId,
    rep: Replicator<MemBackend>,
    host: ServiceHost,
}

enum Msg {
    Record { to: Key, msg: RecordMsg },
    Stanza(Element),
}

struct Net {
    nodes: Vec<Option<TestNode>>,
    ids: Vec<NodeId>,
    queue: VecDeque<Msg>,
    now: Instant,
    unix: u64,
    /// Stanzas for users of other domains, in the order sent.
    inbox: Vec<Element>,
    /// Record messages are held back while this is set.
    hold_records: bool,
    held: VecDeque<Msg>,
    served: Served,
    limits: Limits,
}

fn node_id(n: u8) -> NodeId {
    let mut b = [0u8; 32];
    b[0] = n;
    b[31] = n;
    Key::from_bytes(b)
}

impl Net {
    fn new(ids: &[u8], max_record_bytes: usize) -> Net {
        let mut net = Net {
            nodes: Vec::new(),
            ids: Vec::new(),
            queue: VecDeque::new(),
            now: Instant::now(),
            unix: 1_000_000,
            inbox: Vec::new(),
            hold_records: false,
            held: VecDeque::new(),
            served: Served::new(&["ring.test"]).unwrap(),
            limits: Limits {
                max_items: 10,
                max_item_bytes: 1000,
                max_record_bytes,
            },
        };
        for n in ids {
            net.add(node_id(*n));
        }
        net
    }

    fn add(&mut self, id: NodeId) -> usize {
        let limits = StoreLimits {
            max_record_bytes: self.limits.max_record_bytes,
            ..StoreLimits::default()
        };
        let rep =
            Replicator::new(Config::default(), id, MemBackend::new(), limits, self.now).unwrap();
        let services = Services::new(
            self.served.clone(),
            id.to_hex(),
            self.limits,
            Quotas::default(),
            id.prefix_u64(),
        );
        let host = ServiceHost::new(services, 0, Duration::from_secs(1), self.now);
        self.nodes.push(Some(TestNode { id, rep, host }));
        self.ids.push(id);
        for n in self.nodes.iter_mut().flatten() {
            n.rep.handle_membership(self.now);
        }
        self.nodes.len() - 1
    }

    fn live(&self) -> Vec<NodeId> {
        self.nodes.iter().flatten().map(|n| n.id).collect()
    }

    /// The live node closest to `key`.
    fn responsible(&self, key: &Key) -> usize {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .min_by_key(|i| self.ids[*i].distance(key))
            .unwrap()
    }

    fn host_of_room(&self) -> usize {
        self.responsible(&dht::keys::jid_key(ROOM).unwrap())
    }

    /// Kills node `i`: it is gone with everything it held.
    fn kill(&mut self, i: usize) {
        self.nodes[i] = None;
        for n in self.nodes.iter_mut().flatten() {
            n.rep.handle_membership(self.now);
        }
    }

    fn stanza_key(&self, st: &Element) -> Option<Key> {
        let to = st.attr("to")?;
        let domain = xmpp_addr::Domain::of_jid(to).ok()?;
        if !self.served.contains(&domain) {
            return None;
        }
        crate::services::routing_key(st, &self.served).or_else(|| dht::keys::jid_key(to).ok())
    }

    fn send(&mut self, xml: &str) {
        self.queue.push_back(Msg::Stanza(xml.parse().unwrap()));
        self.settle();
    }

    /// Runs every node until nothing moves.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                moved |= self.drain(i);
            }
            if let Some(m) = self.queue.pop_front() {
                self.deliver(m);
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("the network never settled");
    }

    /// Moves node `i`'s outputs into the network; whether there were any.
    fn drain(&mut self, i: usize) -> bool {
        let live = self.live();
        let (now, unix) = (self.now, self.unix);
        let Some(n) = self.nodes[i].as_mut() else {
            return false;
        };
        let ring = ListRing {
            me: n.id,
            live: &live,
        };
        let mut moved = false;
        loop {
            let mut any = false;
            while let Some(o) = n.rep.poll_output() {
                any = true;
                match o {
                    Output::Route { to, msg } => {
                        let m = Msg::Record { to, msg };
                        if self.hold_records {
                            self.held.push_back(m);
                        } else {
                            self.queue.push_back(m);
                        }
                    }
                    Output::Confirmed { token } => n.host.handle_confirmed(token),
                    Output::Loaded { token } => {
                        n.host.handle_loaded(now, unix, token, &mut n.rep, &ring)
                    }
                    Output::Answer { .. } => {}
                }
            }
            any |= n.host.end_turn(now, unix, &mut n.rep, &ring);
            while let Some(a) = n.host.poll_action() {
                any = true;
                match a {
                    Action::Send(st) | Action::Reroute(st) => self.queue.push_back(Msg::Stanza(st)),
                    Action::Broadcast { stanza, to } => {
                        for t in to {
                            let mut st = stanza.clone();
                            crate::stanza::set(&mut st, "to", &t);
                            self.queue.push_back(Msg::Stanza(st));
                        }
                    }
                }
            }
            if !any {
                return moved;
            }
            moved = true;
        }
    }

    fn deliver(&mut self, m: Msg) {
        let live = self.live();
        let (now, unix) = (self.now, self.unix);
        match m {
            Msg::Record { to, msg } => {
                let i = self.responsible(&to);
                let n = self.nodes[i].as_mut().unwrap();
                let ring = ListRing {
                    me: n.id,
                    live: &live,
                };
                n.rep.handle_message(now, &ring, to, 1, msg);
            }
            Msg::Stanza(st) => {
                let Some(key) = self.stanza_key(&st) else {
                    self.inbox.push(st);
                    return;
                };
                let i = self.responsible(&key);
                let n = self.nodes[i].as_mut().unwrap();
                let ring = ListRing {
                    me: n.id,
                    live: &live,
                };
                n.host.handle_stanza(now, unix, st, &mut n.rep, &ring);
            }
        }
    }

    /// Moves the clock by `d`, runs every timer and settles.
    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.unix += d.as_secs();
        let live = self.live();
        let (now, unix) = (self.now, self.unix);
        for n in self.nodes.iter_mut().flatten() {
            let ring = ListRing {
                me: n.id,
                live: &live,
            };
            n.rep.handle_timeout(now, &ring);
            n.host.handle_timeout(now, unix, &mut n.rep, &ring);
        }
        self.settle();
    }

    /// Lets the held record messages go.
    fn release_records(&mut self) {
        self.hold_records = false;
        self.queue.extend(self.held.drain(..));
        self.settle();
    }

    fn take_inbox(&mut self) -> Vec<Element> {
        std::mem::take(&mut self.inbox)
    }

    fn join(&mut self, jid: &str, nick: &str) {
        self.send(&format!(
            "<presence xmlns='jabber:client' from='{jid}' to='{ROOM}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ));
    }

    fn say(&mut self, jid: &str, body: &str) {
        self.send(&format!(
            "<message xmlns='jabber:client' type='groupchat' from='{jid}' to='{ROOM}'><body>{body}</body></message>"
        ));
    }

    /// alice creates ROOM (instant configuration), bob joins.
    fn room_with_alice_and_bob(&mut self) {
        self.join("alice@a.test/x", "alice");
        self.send(&format!(
            "<iq xmlns='jabber:client' type='set' id='c' from='alice@a.test/x' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"
        ));
        self.join("bob@b.test/y", "bob");
        self.take_inbox();
    }
}

fn bodies_to(inbox: &[Element], to: &str) -> Vec<String> {
    inbox
        .iter()
        .filter(|s| s.attr("to") == Some(to))
        .filter_map(|s| {
            s.get_child("body", crate::stanza::NS_CLIENT)
                .map(|b| b.text())
        })
        .collect()
}

#[test]
fn outputs_wait_until_the_replicas_hold_the_change() {
    let mut net = Net::new(&[1, 2, 3, 4, 5], 64 * 1024);
    net.room_with_alice_and_bob();
    let host = net.host_of_room();
    // carol's join is handled, but its writes do not reach the replicas.
    net.hold_records = true;
    net.join("carol@c.test/z", "carol");
    assert!(
        net.take_inbox().is_empty(),
        "nothing is sent before the replicas confirm"
    );
    assert_eq!(net.nodes[host].as_ref().unwrap().host.held(), 1);
    // A message from alice queues behind it: order is kept.
    net.say("alice@a.test/x", "after carol");
    assert!(net.take_inbox().is_empty());
    net.release_records();
    let inbox = net.take_inbox();
    let own = inbox
        .iter()
        .position(|s| s.attr("to") == Some("carol@c.test/z") && statuses(s).contains(&"110".into()))
        .expect("carol's self-presence");
    let msg = inbox
        .iter()
        .position(|s| {
            s.attr("to") == Some("carol@c.test/z")
                && s.get_child("body", crate::stanza::NS_CLIENT).is_some()
        })
        .expect("alice's message reaches carol");
    assert!(own < msg, "the join's outputs come first");
    assert_eq!(net.nodes[host].as_ref().unwrap().host.held(), 0);
}

#[test]
fn replicas_that_never_answer_hold_outputs_up_only_for_a_while() {
    let mut net = Net::new(&[1, 2, 3, 4, 5], 64 * 1024);
    net.room_with_alice_and_bob();
    net.hold_records = true;
    net.say("alice@a.test/x", "subject-free chatter");
    // A groupchat message changes no state that holds outputs.
    assert_eq!(bodies_to(&net.take_inbox(), "bob@b.test/y").len(), 1);
    net.join("carol@c.test/z", "carol");
    assert!(net.take_inbox().is_empty());
    // The replicator stops waiting after `stored_wait`.
    net.advance(Duration::from_secs(2));
    assert!(
        net.take_inbox()
            .iter()
            .any(|s| s.attr("to") == Some("carol@c.test/z"))
    );
}

#[test]
fn a_room_whose_host_dies_is_taken_over_and_keeps_its_history() {
    let mut net = Net::new(&[1, 2, 3, 4, 5, 6], 64 * 1024);
    net.room_with_alice_and_bob();
    net.say("alice@a.test/x", "before the crash");
    // The history is written within a second.
    net.advance(Duration::from_secs(1));
    net.take_inbox();
    let host = net.host_of_room();
    net.kill(host);
    let successor = net.host_of_room();
    assert_ne!(host, successor);
    // The successor's sweep finds the orphan and tells both occupants.
    net.advance(Duration::from_secs(1));
    let inbox = net.take_inbox();
    for who in ["alice@a.test/x", "bob@b.test/y"] {
        let p = inbox
            .iter()
            .find(|s| s.attr("to") == Some(who))
            .unwrap_or_else(|| panic!("{who} is told"));
        assert_eq!(p.attr("type"), Some("unavailable"));
        assert!(statuses(p).contains(&"332".into()));
    }
    let counters = net.nodes[successor].as_ref().unwrap().host.counters();
    assert_eq!(counters.takeovers, 1);
    // bob joins again and gets the history from before the crash.
    net.join("bob@b.test/y", "bob");
    let inbox = net.take_inbox();
    assert_eq!(bodies_to(&inbox, "bob@b.test/y"), vec!["before the crash"]);
    // Nobody is taken over twice.
    net.advance(Duration::from_secs(1));
    assert_eq!(
        net.nodes[successor]
            .as_ref()
            .unwrap()
            .host
            .counters()
            .takeovers,
        1
    );
}

#[test]
fn a_newcomer_closer_to_the_room_takes_it_without_kicking_anyone() {
    let mut net = Net::new(&[1, 2, 3, 4, 5], 64 * 1024);
    net.room_with_alice_and_bob();
    let old = net.host_of_room();
    // A node whose id is the room's key itself: closer than anyone.
    let key = dht::keys::jid_key(ROOM).unwrap();
    let newcomer = net.add(key);
    assert_eq!(net.host_of_room(), newcomer);
    // The old host's sweeps hand the records over and unload the room.
    net.advance(Duration::from_secs(1));
    net.advance(Duration::from_secs(1));
    assert!(
        !net.nodes[old]
            .as_ref()
            .unwrap()
            .host
            .services()
            .muc
            .is_loaded(ROOM)
    );
    net.take_inbox();
    // alice talks: the newcomer loads the room, the old host is alive, so
    // nobody is evicted; bob hears her.
    net.say("alice@a.test/x", "hello from the new host");
    let inbox = net.take_inbox();
    assert!(inbox.iter().all(|s| !statuses(s).contains(&"332".into())));
    assert_eq!(
        bodies_to(&inbox, "bob@b.test/y"),
        vec!["hello from the new host"]
    );
    let h = &net.nodes[newcomer].as_ref().unwrap().host;
    assert_eq!(h.services().muc.occupants_of(ROOM), 2);
    assert_eq!(h.counters().takeovers, 0);
}

#[test]
fn a_pubsub_node_keeps_every_subscriber_across_its_hosts_death() {
    // Small records: the subscribers fill many shards.
    let mut net = Net::new(&[1, 2, 3, 4, 5], 2000);
    let svc = "pubsub.ring.test";
    net.send(&format!("<iq xmlns='jabber:client' type='set' id='c' from='owner@a.test/x' to='{svc}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><create node='news'/></pubsub></iq>"));
    for i in 0..200 {
        net.send(&format!("<iq xmlns='jabber:client' type='set' id='s{i}' from='u{i}@b.test/r' to='{svc}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><subscribe node='news' jid='u{i}@b.test'/></pubsub></iq>"));
    }
    let results = net
        .take_inbox()
        .iter()
        .filter(|s| s.attr("type") == Some("result"))
        .count();
    assert_eq!(results, 201, "the creation and every subscription");
    let host = net.responsible(&dht::keys::pubsub_key(svc, "news"));
    net.kill(host);
    net.send(&format!("<iq xmlns='jabber:client' type='set' id='p' from='owner@a.test/x' to='{svc}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='news'><item id='1'><entry xmlns='urn:x'/></item></publish></pubsub></iq>"));
    let notified: std::collections::BTreeSet<String> = net
        .take_inbox()
        .iter()
        .filter(|s| s.name() == "message")
        .filter_map(|s| s.attr("to").map(str::to_string))
        .collect();
    assert_eq!(notified.len(), 200, "every subscriber is notified");
}

#[test]
fn a_change_the_store_refuses_is_answered_with_an_error_not_a_success() {
    let mut net = Net::new(&[1, 2, 3], 64 * 1024);
    net.room_with_alice_and_bob();
    let host = net.host_of_room();
    // The host's store is full from now on: it keeps what it has (a
    // restart over the same backend) and takes no more bytes.
    let now = net.now;
    let n = net.nodes[host].as_mut().unwrap();
    let spare = Replicator::new(
        Config::default(),
        n.id,
        MemBackend::new(),
        StoreLimits::default(),
        now,
    )
    .unwrap();
    let store = std::mem::replace(&mut n.rep, spare).into_store();
    let full = StoreLimits {
        max_record_bytes: 64 * 1024,
        max_store_bytes: store.bytes() + 16,
    };
    let backend = store.into_backend().reopened();
    n.rep = Replicator::new(Config::default(), n.id, backend, full, now).unwrap();
    net.join("carol@c.test/z", "carol");
    let inbox = net.take_inbox();
    let err = inbox
        .iter()
        .find(|s| s.attr("to") == Some("carol@c.test/z"))
        .expect("carol hears back");
    assert_eq!(err.attr("type"), Some("error"));
    assert!(
        crate::stanza::to_string(err).contains("resource-constraint"),
        "{}",
        crate::stanza::to_string(err)
    );
    assert_eq!(
        net.nodes[host]
            .as_ref()
            .unwrap()
            .host
            .counters()
            .refused_writes,
        1
    );
}
