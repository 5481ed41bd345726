//! Deterministic multi-node tests over an in-memory network with zero
//! latency: messages are delivered in FIFO order and time only moves when a
//! test advances it, so every run is identical.

use super::*;
use crate::keys::record_key;
use bytes::Bytes;
use std::collections::VecDeque;

struct Net {
    nodes: Vec<RingNode<u32>>,
    alive: Vec<bool>,
    now: Instant,
    queue: VecDeque<(u32, Contact<u32>, Message<u32>)>,
    events: Vec<(u32, Event<u32>)>,
    /// Messages of these kinds to these nodes are silently lost (to force
    /// timeouts without killing a node).
    blackhole: Vec<u32>,
}

fn node_id(i: u32) -> NodeId {
    record_key(&format!("node-{i}"))
}

impl Net {
    fn new(n: u32, cfg: NodeConfig) -> Net {
        let now = Instant::now();
        let nodes = (0..n)
            .map(|i| {
                let c = Contact::new(node_id(i), i, cfg.role);
                RingNode::new(cfg.clone(), c, i as u64, now, 1_000_000)
            })
            .collect();
        Net {
            nodes,
            alive: vec![true; n as usize],
            now,
            queue: VecDeque::new(),
            events: Vec::new(),
            blackhole: Vec::new(),
        }
    }

    fn contact(&self, i: u32) -> Contact<u32> {
        self.nodes[i as usize].contact().clone()
    }

    /// Delivers messages until the network is quiet.
    fn pump(&mut self) {
        let mut dirty: Vec<u32> = (0..self.nodes.len() as u32).collect();
        let mut guard = 0u64;
        loop {
            for i in dirty.drain(..) {
                let node = &mut self.nodes[i as usize];
                while let Some(t) = node.poll_transmit(self.now) {
                    self.queue
                        .push_back((t.to.addr, node.contact().clone(), t.msg));
                }
                while let Some(e) = node.poll_event() {
                    self.events.push((i, e));
                }
            }
            let Some((to, from, msg)) = self.queue.pop_front() else {
                break;
            };
            guard += 1;
            assert!(guard < 50_000_000, "network does not settle");
            if self.alive[to as usize] && !self.blackhole.contains(&to) {
                self.nodes[to as usize].handle_message(self.now, from, msg);
                dirty.push(to);
            }
        }
    }

    /// Moves time forward in steps, firing timers and pumping.
    fn advance(&mut self, total: Duration) {
        let step = Duration::from_millis(100);
        let end = self.now + total;
        while self.now < end {
            self.now += step;
            for i in 0..self.nodes.len() {
                if !self.alive[i] {
                    continue;
                }
                if self.nodes[i].poll_timeout().is_some_and(|t| t <= self.now) {
                    self.nodes[i].handle_timeout(self.now);
                }
            }
            self.pump();
        }
    }

    fn join_all(&mut self) {
        let boot = self.contact(0);
        for i in 1..self.nodes.len() {
            let now = self.now;
            self.nodes[i].join(now, vec![boot.clone()]);
            self.pump();
        }
        self.advance(Duration::from_secs(5));
    }

    fn closest_live(&self, key: &Key) -> u32 {
        (0..self.nodes.len() as u32)
            .filter(|i| {
                self.alive[*i as usize]
                    && self.nodes[*i as usize].config().role.takes_responsibility()
            })
            .min_by_key(|i| node_id(*i).distance(key))
            .expect("a live node")
    }

    fn take_events(&mut self) -> Vec<(u32, Event<u32>)> {
        std::mem::take(&mut self.events)
    }
}

fn small_cfg() -> NodeConfig {
    NodeConfig {
        table: TableConfig {
            k: 8,
            bits: 2,
            ..TableConfig::default()
        },
        ..NodeConfig::default()
    }
}

#[test]
fn two_hundred_nodes_join_and_route_to_the_closest() {
    let mut net = Net::new(200, small_cfg());
    net.join_all();
    let joined = net
        .take_events()
        .iter()
        .filter(|(_, e)| matches!(e, Event::Joined { .. }))
        .count();
    assert_eq!(joined, 199, "every node but the bootstrap joined");
    // Route 1000 envelopes from varied sources to varied keys.
    let mut expected = Vec::new();
    for m in 0..1000u32 {
        let src = (m * 7919) % 200;
        let key = record_key(&format!("target-{m}"));
        let now = net.now;
        let id = net.nodes[src as usize]
            .route(
                now,
                key,
                EnvelopeKind::Stanza,
                Bytes::from(m.to_be_bytes().to_vec()),
                false,
            )
            .unwrap();
        expected.push((id, key, net.closest_live(&key)));
    }
    net.pump();
    let events = net.take_events();
    let delivered: Vec<(u32, &Envelope)> = events
        .iter()
        .filter_map(|(i, e)| match e {
            Event::Delivered(env) => Some((*i, env)),
            _ => None,
        })
        .collect();
    assert_eq!(
        delivered.len(),
        1000,
        "each envelope delivered exactly once"
    );
    for (id, key, want) in expected {
        let (at, env) = delivered
            .iter()
            .find(|(_, e)| e.id == id && e.key == key)
            .expect("delivered");
        assert_eq!(*at, want, "delivered at the globally closest node");
        assert!(env.hops <= 8, "hops {}", env.hops);
    }
    assert!(
        !events
            .iter()
            .any(|(_, e)| matches!(e, Event::Bounced { .. }))
    );
}

#[test]
fn probes_report_their_path() {
    let mut net = Net::new(50, small_cfg());
    net.join_all();
    net.take_events();
    let key = record_key("probe-me");
    let now = net.now;
    let id = net.nodes[3].probe(now, key).unwrap();
    net.pump();
    let events = net.take_events();
    let (at, path) = events
        .iter()
        .find_map(|(i, e)| match e {
            Event::ProbeDone {
                id: pid,
                path,
                key: k,
            } if *pid == id && *k == key => Some((*i, path.clone())),
            _ => None,
        })
        .expect("probe answered");
    assert_eq!(at, 3, "the answer comes back to the prober");
    assert_eq!(path.first().map(|h| h.node), Some(node_id(3)));
    assert_eq!(
        path.last().map(|h| h.node),
        Some(node_id(net.closest_live(&key)))
    );
    // Every hop on the path is strictly closer to the key than the one before.
    for w in path.windows(2) {
        assert!(w[1].node.distance(&key) < w[0].node.distance(&key));
    }
}

#[test]
fn dead_next_hop_is_rerouted_around() {
    let mut net = Net::new(60, small_cfg());
    net.join_all();
    net.take_events();
    // Kill the node responsible for a key; the envelope must reach the
    // next-closest live node after an ack timeout and a reroute.
    let key = record_key("victim-key");
    let victim = net.closest_live(&key);
    net.alive[victim as usize] = false;
    let src = (0..60)
        .find(|i| *i != victim && net.nodes[*i as usize].table().contains(&node_id(victim)))
        .unwrap();
    let now = net.now;
    let id = net.nodes[src as usize]
        .route(
            now,
            key,
            EnvelopeKind::Stanza,
            Bytes::from_static(b"x"),
            false,
        )
        .unwrap();
    net.pump();
    net.advance(Duration::from_secs(10));
    let events = net.take_events();
    let at = events
        .iter()
        .find_map(|(i, e)| matches!(e, Event::Delivered(env) if env.id == id).then_some(*i))
        .expect("delivered despite the dead node");
    assert_eq!(at, net.closest_live(&key));
    let rerouted: u64 = net
        .nodes
        .iter()
        .map(|n| n.stats().rerouted + n.stats().ack_timeouts)
        .sum();
    assert!(rerouted > 0, "a reroute happened");
}

#[test]
fn ttl_exhaustion_bounces_to_origin_with_payload() {
    let mut cfg = small_cfg();
    cfg.ttl = 1;
    let mut net = Net::new(80, cfg);
    net.join_all();
    net.take_events();
    // Find a source and key at least two hops apart.
    let mut done = false;
    for m in 0..200u32 {
        let key = record_key(&format!("far-{m}"));
        let src = m % 80;
        let now = net.now;
        let id = net.nodes[src as usize]
            .route(
                now,
                key,
                EnvelopeKind::Stanza,
                Bytes::from_static(b"payload"),
                false,
            )
            .unwrap();
        net.pump();
        let events = net.take_events();
        if let Some((at, reason, env)) = events.iter().find_map(|(i, e)| match e {
            Event::Bounced { reason, envelope } if envelope.id == id => {
                Some((*i, *reason, envelope.clone()))
            }
            _ => None,
        }) {
            assert_eq!(at, src, "bounce reaches the origin");
            assert_eq!(reason, BounceReason::TtlExpired);
            assert_eq!(env.key, key, "original key restored");
            assert_eq!(env.kind, EnvelopeKind::Stanza);
            assert_eq!(&env.payload[..], b"payload");
            done = true;
            break;
        }
        // Otherwise it was delivered within one hop; either way it is accounted for.
        assert!(
            events
                .iter()
                .any(|(_, e)| matches!(e, Event::Delivered(env) if env.id == id))
        );
    }
    assert!(done, "some envelope needed more than one hop");
}

#[test]
fn exhausted_attempts_bounce_with_timeout() {
    let mut cfg = small_cfg();
    cfg.max_attempts = 1;
    let mut net = Net::new(40, cfg);
    net.join_all();
    net.take_events();
    let key = record_key("unlucky");
    let target = net.closest_live(&key);
    // A source that would forward straight to the target.
    let src = (0..40u32)
        .find(|i| {
            *i != target
                && net.nodes[*i as usize]
                    .table()
                    .next_hop(&key, &mut |_| true)
                    .map(|c| c.id)
                    == Some(node_id(target))
        })
        .expect("some node knows the target");
    net.blackhole.push(target);
    let now = net.now;
    let id = net.nodes[src as usize]
        .route(now, key, EnvelopeKind::Stanza, Bytes::new(), false)
        .unwrap();
    net.pump();
    net.advance(Duration::from_secs(3));
    let events = net.take_events();
    let bounce = events.iter().find_map(|(i, e)| match e {
        Event::Bounced { reason, envelope } if envelope.id == id => Some((*i, *reason)),
        _ => None,
    });
    assert_eq!(bounce, Some((src, BounceReason::Timeout)));
}

#[test]
fn goodbye_drops_contact_at_once() {
    let mut net = Net::new(30, small_cfg());
    net.join_all();
    let leaver = 7u32;
    // The leaver's neighbours: the nodes in its own table.
    let knowing: Vec<usize> = (0..30)
        .filter(|i| net.nodes[*i].table().contains(&node_id(leaver)))
        .filter(|i| {
            net.nodes[leaver as usize]
                .table()
                .contains(&node_id(*i as u32))
        })
        .collect();
    assert!(!knowing.is_empty());
    let now = net.now;
    net.nodes[leaver as usize].leave(now);
    net.pump();
    for i in knowing {
        assert!(
            !net.nodes[i].table().contains(&node_id(leaver)),
            "node {i} still knows the leaver"
        );
    }
    assert_eq!(
        net.nodes[leaver as usize].route(now, Key::ZERO, EnvelopeKind::Stanza, Bytes::new(), false),
        Err(RouteError::ShuttingDown)
    );
}

#[test]
fn window_holds_back_and_acks_release() {
    let mut cfg = small_cfg();
    cfg.window = 2;
    let now = Instant::now();
    let mut a = RingNode::new(
        cfg.clone(),
        Contact::new(node_id(0), 0u32, Role::Application),
        1,
        now,
        0,
    );
    let b = Contact::new(node_id(1), 1u32, Role::Application);
    a.handle_message(now, b.clone(), Message::Pong { nonce: 0 }); // a now knows b
    // Route to b's own id: b is closer than a, so everything goes to b.
    for _ in 0..10 {
        a.route(now, b.id, EnvelopeKind::Stanza, Bytes::new(), false)
            .unwrap();
    }
    let mut seqs = Vec::new();
    while let Some(t) = a.poll_transmit(now) {
        if let Message::Route { seq, .. } = t.msg {
            seqs.push(seq);
        }
    }
    assert_eq!(seqs.len(), 2, "only the window is in flight");
    assert_eq!(a.pending(), 10);
    a.handle_message(
        now,
        b.clone(),
        Message::Ack {
            first: seqs[0],
            last: seqs[1],
        },
    );
    let mut more = 0;
    while let Some(t) = a.poll_transmit(now) {
        if matches!(t.msg, Message::Route { .. }) {
            more += 1;
        }
    }
    assert_eq!(more, 2);
    assert_eq!(a.pending(), 8);
}

#[test]
fn overload_is_refused_not_dropped() {
    let mut cfg = small_cfg();
    cfg.max_pending = 4;
    let now = Instant::now();
    let mut a = RingNode::new(
        cfg,
        Contact::new(node_id(0), 0u32, Role::Application),
        1,
        now,
        0,
    );
    let b = Contact::new(node_id(1), 1u32, Role::Application);
    a.handle_message(now, b.clone(), Message::Pong { nonce: 0 });
    for _ in 0..4 {
        a.route(now, b.id, EnvelopeKind::Stanza, Bytes::new(), false)
            .unwrap();
    }
    assert!(a.is_congested());
    assert_eq!(
        a.route(now, b.id, EnvelopeKind::Stanza, Bytes::new(), false),
        Err(RouteError::Overloaded(4))
    );
    // An envelope arriving from the network while full bounces to its origin.
    let c = Contact::new(node_id(2), 2u32, Role::Application);
    let env = Envelope {
        key: b.id,
        kind: EnvelopeKind::Stanza,
        origin: c.id,
        id: 9,
        ttl: 5,
        hops: 1,
        trace: None,
        orig: None,
        payload: Bytes::new(),
    };
    a.handle_message(now, c.clone(), Message::Route { seq: 0, env });
    assert_eq!(a.stats().overloaded, 1);
    assert_eq!(a.stats().bounced, 1);
}

#[test]
fn duplicates_are_delivered_once() {
    let now = Instant::now();
    let mut a = RingNode::new(
        small_cfg(),
        Contact::new(node_id(0), 0u32, Role::Application),
        1,
        now,
        0,
    );
    let c = Contact::new(node_id(2), 2u32, Role::Application);
    let env = Envelope {
        key: node_id(0),
        kind: EnvelopeKind::Stanza,
        origin: c.id,
        id: 1,
        ttl: 5,
        hops: 1,
        trace: None,
        orig: None,
        payload: Bytes::new(),
    };
    a.handle_message(
        now,
        c.clone(),
        Message::Route {
            seq: 0,
            env: env.clone(),
        },
    );
    a.handle_message(now, c.clone(), Message::Route { seq: 1, env });
    let delivered = std::iter::from_fn(|| a.poll_event())
        .filter(|e| matches!(e, Event::Delivered(_)))
        .count();
    assert_eq!(delivered, 1);
    assert_eq!(a.stats().duplicates, 1);
    // Both copies are acknowledged, in one range.
    let acks: Vec<_> = std::iter::from_fn(|| a.poll_transmit(now))
        .filter_map(|t| match t.msg {
            Message::Ack { first, last } => Some((first, last)),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![(0, 1)]);
}

#[test]
fn routers_never_keep_envelopes() {
    let cfg = small_cfg();
    let now = Instant::now();
    let router_cfg = NodeConfig {
        role: Role::Router,
        ..cfg.clone()
    };
    let mut r = RingNode::new(
        router_cfg,
        Contact::new(node_id(0), 0u32, Role::Router),
        1,
        now,
        0,
    );
    // Alone, a router cannot deliver: the envelope bounces (to itself as origin).
    r.route(now, node_id(0), EnvelopeKind::Stanza, Bytes::new(), false)
        .unwrap();
    let ev: Vec<_> = std::iter::from_fn(|| r.poll_event()).collect();
    assert!(
        matches!(
            ev.as_slice(),
            [Event::Bounced {
                reason: BounceReason::Unreachable,
                ..
            }]
        ),
        "{ev:?}"
    );
    // With an application contact, even a farther one, it forwards.
    let app = Contact::new(node_id(5), 5u32, Role::Application);
    r.handle_message(now, app.clone(), Message::Pong { nonce: 0 });
    r.route(now, node_id(0), EnvelopeKind::Stanza, Bytes::new(), false)
        .unwrap();
    let sent: Vec<_> = std::iter::from_fn(|| r.poll_transmit(now)).collect();
    assert!(
        sent.iter()
            .any(|t| t.to.id == app.id && matches!(t.msg, Message::Route { .. }))
    );
}

#[test]
fn same_seed_same_run() {
    let run = || {
        let mut net = Net::new(40, small_cfg());
        net.join_all();
        net.nodes
            .iter()
            .map(|n| (n.table().len(), n.stats().maintenance_msgs_sent))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn receipts_settle_every_delivered_envelope() {
    let mut net = Net::new(60, small_cfg());
    net.join_all();
    net.take_events();
    for m in 0..300u32 {
        let now = net.now;
        let key = record_key(&format!("r-{m}"));
        net.nodes[(m % 60) as usize]
            .route(now, key, EnvelopeKind::Stanza, Bytes::new(), false)
            .unwrap();
    }
    net.pump();
    assert!(
        net.nodes.iter().all(|n| n.outstanding() == 0),
        "every origin got its receipts"
    );
    let received: u64 = net.nodes.iter().map(|n| n.stats().receipts_received).sum();
    assert_eq!(received, 300);
    // Receipts are batched per origin: fewer receipt envelopes than deliveries
    // is allowed, more is not.
    let sent: u64 = net.nodes.iter().map(|n| n.stats().receipts_sent).sum();
    assert!(sent <= 300 && sent > 0);
    // Nothing times out later.
    net.advance(Duration::from_secs(40));
    assert!(
        !net.take_events()
            .iter()
            .any(|(_, e)| matches!(e, Event::Bounced { .. }))
    );
}

#[test]
fn vanished_envelope_is_reported_to_its_origin() {
    // B acknowledges the envelope and then never forwards it (it crashed
    // right after the ack): the origin must still hear about it.
    let cfg = small_cfg();
    let t0 = Instant::now();
    let mut a = RingNode::new(
        cfg.clone(),
        Contact::new(node_id(0), 0u32, Role::Application),
        1,
        t0,
        0,
    );
    let b = Contact::new(node_id(1), 1u32, Role::Application);
    a.handle_message(t0, b.clone(), Message::Pong { nonce: 0 });
    let id = a
        .route(
            t0,
            b.id,
            EnvelopeKind::Stanza,
            Bytes::from_static(b"hello"),
            false,
        )
        .unwrap();
    let seq = std::iter::from_fn(|| a.poll_transmit(t0))
        .find_map(|t| match t.msg {
            Message::Route { seq, .. } => Some(seq),
            _ => None,
        })
        .expect("sent to b");
    a.handle_message(
        t0,
        b,
        Message::Ack {
            first: seq,
            last: seq,
        },
    );
    assert_eq!(a.pending(), 0);
    assert_eq!(a.outstanding(), 1);
    let later = t0 + cfg.receipt_timeout;
    assert!(a.poll_timeout().is_some_and(|t| t <= later));
    a.handle_timeout(later);
    let ev: Vec<_> = std::iter::from_fn(|| a.poll_event()).collect();
    let bounced = ev.iter().find_map(|e| match e {
        Event::Bounced { reason, envelope } => {
            Some((*reason, envelope.id, envelope.payload.clone()))
        }
        _ => None,
    });
    assert_eq!(
        bounced,
        Some((BounceReason::NoReceipt, id, Bytes::from_static(b"hello")))
    );
    assert_eq!(a.outstanding(), 0);
    assert_eq!(a.stats().receipt_timeouts, 1);
}

#[test]
fn a_bounce_after_the_receipt_is_ignored() {
    let now = Instant::now();
    let mut a = RingNode::new(
        small_cfg(),
        Contact::new(node_id(0), 0u32, Role::Application),
        1,
        now,
        0,
    );
    // Alone: the envelope is delivered locally and receipted at once.
    let id = a
        .route(now, Key::ZERO, EnvelopeKind::Stanza, Bytes::new(), false)
        .unwrap();
    while a.poll_transmit(now).is_some() {}
    assert_eq!(a.outstanding(), 0);
    // A late bounce for it (from a duplicate copy somewhere) must not
    // produce a second, contradictory outcome.
    let c = Contact::new(node_id(3), 3u32, Role::Application);
    let bounce = Envelope {
        key: node_id(0),
        kind: EnvelopeKind::Bounce(BounceReason::Timeout),
        origin: node_id(0),
        id,
        ttl: 5,
        hops: 1,
        trace: None,
        orig: Some((Key::ZERO, EnvelopeKind::Stanza)),
        payload: Bytes::new(),
    };
    a.handle_message(
        now,
        c,
        Message::Route {
            seq: 0,
            env: bounce,
        },
    );
    assert!(!std::iter::from_fn(|| a.poll_event()).any(|e| matches!(e, Event::Bounced { .. })));
    assert_eq!(a.stats().late_bounces, 1);
}

#[test]
fn silent_contacts_are_pinged_and_dead_ones_dropped() {
    let mut cfg = small_cfg();
    cfg.liveness_interval = Duration::from_secs(60);
    cfg.liveness_tick = Duration::from_secs(5);
    let mut net = Net::new(40, cfg);
    net.join_all();
    let victim = 9u32;
    let knowing = (0..40)
        .filter(|i| net.nodes[*i].table().contains(&node_id(victim)))
        .count();
    assert!(knowing > 0);
    net.alive[victim as usize] = false;
    // Nobody routes anything: only the liveness scan can notice.
    net.advance(Duration::from_secs(4 * 60));
    let still = (0..40)
        .filter(|i| *i != victim as usize)
        .filter(|i| {
            net.nodes[*i]
                .table()
                .get(&node_id(victim))
                .is_some_and(|e| e.failures == 0)
        })
        .count();
    assert_eq!(still, 0, "every node noticed the dead contact");
    let pings: u64 = net.nodes.iter().map(|n| n.stats().pings_sent).sum();
    assert!(pings > 0);
}
