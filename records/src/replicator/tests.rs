//! Deterministic multi-node tests of the replicator, in the style of the
//! dht's: a handful of replicators in one process, a network that delivers
//! each routed message to the live node closest to its key (perfect
//! routing, FIFO, optionally dropping what a test says), a clock the test
//! moves. Every scenario of the record protocol is played here message by
//! message: conflicting and retried writes, a newcomer closer to a key,
//! a coordinator dying mid-write, a restart with the same id, re-replication
//! after a crash, and local writes held until their replicas confirm.

use super::*;
use crate::ListRing;
use crate::store::MemBackend;
use std::collections::BTreeMap;

/// One simulated node.
struct TestNode {
    id: NodeId,
    rep: Option<Replicator<MemBackend>>,
    /// The nodes this node believes alive (its routing table).
    view: Vec<NodeId>,
}

/// A message on its way.
struct InFlight {
    to: Key,
    from: NodeId,
    msg: RecordMsg,
}

struct Net {
    nodes: Vec<TestNode>,
    queue: VecDeque<InFlight>,
    now: Instant,
    /// Answers to clients: (node index, client tag) -> answer.
    answers: BTreeMap<(usize, u64), Answer>,
    confirmed: Vec<(usize, u64)>,
    loaded: Vec<(usize, u64)>,
    /// Drops messages this returns true for.
    drop: Box<dyn Fn(&InFlight) -> bool>,
    dropped: usize,
}

fn id(n: u8) -> NodeId {
    let mut b = [0u8; 32];
    b[0] = n;
    b[31] = n;
    Key::from_bytes(b)
}

fn cfg() -> Config {
    Config::default()
}

impl Net {
    fn new(ids: &[u8]) -> Net {
        let now = Instant::now();
        let all: Vec<NodeId> = ids.iter().map(|n| id(*n)).collect();
        Net {
            nodes: all
                .iter()
                .map(|i| TestNode {
                    id: *i,
                    rep: Some(
                        Replicator::new(cfg(), *i, MemBackend::new(), StoreLimits::default(), now)
                            .unwrap(),
                    ),
                    view: all.clone(),
                })
                .collect(),
            queue: VecDeque::new(),
            now,
            answers: BTreeMap::new(),
            confirmed: Vec::new(),
            loaded: Vec::new(),
            drop: Box::new(|_| false),
            dropped: 0,
        }
    }

    fn live(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.rep.is_some())
            .map(|n| n.id)
            .collect()
    }

    fn index(&self, id: NodeId) -> usize {
        self.nodes.iter().position(|n| n.id == id).unwrap()
    }

    /// The live node closest to `key` (where routing delivers).
    fn responsible(&self, key: &Key) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.rep.is_some())
            .min_by_key(|(_, n)| n.id.distance(key))
            .map(|(i, _)| i)
    }

    /// Moves node `i`'s outputs into the network.
    fn collect(&mut self, i: usize) {
        let from = self.nodes[i].id;
        let Some(rep) = self.nodes[i].rep.as_mut() else {
            return;
        };
        let mut outs = Vec::new();
        while let Some(o) = rep.poll_output() {
            outs.push(o);
        }
        for o in outs {
            match o {
                Output::Route { to, msg } => self.queue.push_back(InFlight { to, from, msg }),
                Output::Answer { client, answer } => {
                    self.answers.insert((i, client), answer);
                }
                Output::Confirmed { token } => self.confirmed.push((i, token)),
                Output::Loaded { token } => self.loaded.push((i, token)),
            }
        }
    }

    /// Delivers everything in flight (and what it causes).
    fn settle(&mut self) {
        let mut steps = 0;
        while let Some(m) = self.queue.pop_front() {
            steps += 1;
            assert!(steps < 100_000, "the network does not settle");
            if (self.drop)(&m) {
                self.dropped += 1;
                continue;
            }
            let Some(i) = self.responsible(&m.to) else {
                continue;
            };
            let now = self.now;
            let node = &mut self.nodes[i];
            let view = ListRing {
                me: node.id,
                live: &node.view,
            };
            if let Some(rep) = node.rep.as_mut() {
                rep.handle_message(now, &view, m.to, 1, m.msg);
            }
            let _ = m.from;
            self.collect(i);
        }
    }

    /// Moves the clock on by `d`, firing every node's timers.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = self
                .nodes
                .iter()
                .filter_map(|n| n.rep.as_ref().and_then(|r| r.poll_timeout()))
                .filter(|t| *t <= end)
                .min();
            let Some(t) = next else { break };
            self.now = t.max(self.now);
            for i in 0..self.nodes.len() {
                let now = self.now;
                let node = &mut self.nodes[i];
                let view = ListRing {
                    me: node.id,
                    live: &node.view,
                };
                if let Some(rep) = node.rep.as_mut()
                    && rep.poll_timeout().is_some_and(|t| t <= now)
                {
                    rep.handle_timeout(now, &view);
                }
                self.collect(i);
            }
            self.settle();
        }
        self.now = end;
    }

    fn request(&mut self, i: usize, op: RecordOp, client: u64) {
        let now = self.now;
        let rep = self.nodes[i].rep.as_mut().unwrap();
        if let Err(a) = rep.request(now, op, client) {
            self.answers.insert((i, client), a);
        }
        self.collect(i);
        self.settle();
    }

    fn put(&mut self, i: usize, name: &str, value: &str, client: u64) -> Answer {
        self.request(
            i,
            RecordOp::Put {
                name: name.into(),
                value: value.as_bytes().to_vec(),
            },
            client,
        );
        self.advance(Duration::from_secs(2));
        self.answers.get(&(i, client)).cloned().expect("an answer")
    }

    fn get(&mut self, i: usize, name: &str, client: u64) -> Answer {
        self.request(i, RecordOp::Get { name: name.into() }, client);
        self.advance(Duration::from_secs(2));
        self.answers.get(&(i, client)).cloned().expect("an answer")
    }

    /// Every live node's copy of `name`.
    fn copies(&self, name: &str) -> Vec<(NodeId, Record)> {
        self.nodes
            .iter()
            .filter_map(|n| {
                let r = n.rep.as_ref()?.store().get(name).ok().flatten()?;
                Some((n.id, r))
            })
            .collect()
    }

    fn crash(&mut self, i: usize) -> MemBackend {
        let rep = self.nodes[i].rep.take().unwrap();
        let dead = self.nodes[i].id;
        for n in self.nodes.iter_mut() {
            n.view.retain(|x| *x != dead);
        }
        rep.into_store().into_backend()
    }

    fn restart(&mut self, i: usize, backend: MemBackend) {
        let now = self.now;
        let me = self.nodes[i].id;
        self.nodes[i].rep = Some(
            Replicator::new(cfg(), me, backend.reopened(), StoreLimits::default(), now).unwrap(),
        );
        let live = self.live();
        for n in self.nodes.iter_mut() {
            n.view = live.clone();
        }
    }
}

fn version(a: &Answer) -> u64 {
    match &a.outcome {
        Ok(RecordOutcome::Written { version, .. }) | Ok(RecordOutcome::Found { version, .. }) => {
            *version
        }
        other => panic!("no version in {other:?}"),
    }
}

fn value(a: &Answer) -> String {
    match &a.outcome {
        Ok(RecordOutcome::Found { value, .. }) => String::from_utf8_lossy(value).into_owned(),
        other => panic!("no value in {other:?}"),
    }
}

#[test]
fn a_write_is_stored_on_r_nodes_and_read_from_any() {
    let mut net = Net::new(&[10, 20, 30, 40, 50, 60]);
    let a = net.put(0, "color", "blue", 1);
    assert_eq!(version(&a), 1);
    assert!(matches!(
        a.outcome,
        Ok(RecordOutcome::Written { replicas: 2, .. })
    ));
    let copies = net.copies("color");
    assert_eq!(copies.len(), 3, "r = 3 copies");
    // They are the three nodes closest to the key.
    let key = key_of("color");
    let mut closest = net.live();
    closest.sort_by_key(|id| id.distance(&key));
    let mut holders: Vec<NodeId> = copies.iter().map(|(id, _)| *id).collect();
    holders.sort_by_key(|id| id.distance(&key));
    assert_eq!(holders, closest[..3].to_vec());
    for i in 0..6 {
        assert_eq!(value(&net.get(i, "color", 100 + i as u64)), "blue");
    }
}

#[test]
fn conflicting_writes_end_the_same_everywhere() {
    let mut net = Net::new(&[10, 20, 30, 40, 50]);
    // Two clients write at once through different nodes.
    net.request(
        1,
        RecordOp::Put {
            name: "x".into(),
            value: b"from one".to_vec(),
        },
        1,
    );
    net.request(
        3,
        RecordOp::Put {
            name: "x".into(),
            value: b"from three".to_vec(),
        },
        2,
    );
    net.advance(Duration::from_secs(3));
    let v1 = version(&net.answers[&(1, 1)]);
    let v2 = version(&net.answers[&(3, 2)]);
    assert_ne!(v1, v2, "one coordinator orders them");
    let copies = net.copies("x");
    assert_eq!(copies.len(), 3);
    assert!(copies.windows(2).all(|w| w[0].1 == w[1].1), "{copies:?}");
    assert_eq!(copies[0].1.version, v1.max(v2));
}

#[test]
fn of_two_creations_of_one_name_exactly_one_succeeds() {
    let mut net = Net::new(&[10, 20, 30, 40, 50]);
    let create = |value: &str| RecordOp::Create {
        name: "account:carol@ring.test".into(),
        value: value.as_bytes().to_vec(),
    };
    // Two sign-ups at once through different nodes.
    net.request(1, create("first"), 1);
    net.request(3, create("second"), 2);
    net.advance(Duration::from_secs(3));
    let a = &net.answers[&(1, 1)].outcome;
    let b = &net.answers[&(3, 2)].outcome;
    let created: Vec<&str> = [(a, "first"), (b, "second")]
        .into_iter()
        .filter(|(o, _)| matches!(o, Ok(RecordOutcome::Written { .. })))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(created.len(), 1, "{a:?} {b:?}");
    // The other was told what is there, and nothing overwrote it.
    let loser = if created[0] == "first" { b } else { a };
    match loser {
        Ok(RecordOutcome::Found { value, .. }) => assert_eq!(value, created[0].as_bytes()),
        other => panic!("{other:?}"),
    }
    let copies = net.copies("account:carol@ring.test");
    assert!(copies.iter().all(|(_, r)| r.value == created[0].as_bytes()));
    // Deleted, the name is free again.
    net.request(
        0,
        RecordOp::Delete {
            name: "account:carol@ring.test".into(),
        },
        3,
    );
    net.advance(Duration::from_secs(3));
    net.request(2, create("third"), 4);
    net.advance(Duration::from_secs(3));
    assert!(matches!(
        net.answers[&(2, 4)].outcome,
        Ok(RecordOutcome::Written { .. })
    ));
}

#[test]
fn a_retried_write_makes_no_second_version() {
    let mut net = Net::new(&[10, 20, 30, 40, 50]);
    // The first reply is lost: the client sends the request again.
    let lost = std::rc::Rc::new(std::cell::Cell::new(false));
    let l = lost.clone();
    net.drop = Box::new(move |m| {
        if matches!(m.msg, RecordMsg::Reply { .. }) && !l.get() {
            l.set(true);
            return true;
        }
        false
    });
    let a = net.put(0, "x", "once", 1);
    assert!(lost.get());
    net.advance(Duration::from_secs(5));
    let a = net.answers.get(&(0, 1)).cloned().unwrap_or(a);
    assert_eq!(a.attempts, 2, "answered on the retry: {a:?}");
    assert_eq!(version(&a), 1, "the retry found its own write");
    assert!(net.copies("x").iter().all(|(_, r)| r.version == 1));
}

#[test]
fn a_newcomer_closer_to_a_key_fetches_before_it_writes() {
    // Nodes far from the key hold it; then a node closer to it joins.
    let key = key_of("moving");
    let mut net = Net::new(&[10, 20, 30, 40, 50]);
    for v in 0..3 {
        net.put(0, "moving", &format!("v{v}"), v);
    }
    // A newcomer whose id is the key itself: closest to it of all.
    let now = net.now;
    net.nodes.push(TestNode {
        id: key,
        rep: Some(
            Replicator::new(cfg(), key, MemBackend::new(), StoreLimits::default(), now).unwrap(),
        ),
        view: Vec::new(),
    });
    let live = net.live();
    for n in net.nodes.iter_mut() {
        n.view = live.clone();
    }
    let newcomer = net.nodes.len() - 1;
    assert!(
        net.nodes[newcomer]
            .rep
            .as_ref()
            .unwrap()
            .store()
            .get("moving")
            .unwrap()
            .is_none()
    );
    // It coordinates the next write: version 4, not 1.
    let a = net.put(1, "moving", "v3", 10);
    assert_eq!(version(&a), 4, "{a:?}");
    assert_eq!(value(&net.get(2, "moving", 11)), "v3");
    assert_eq!(net.index(key), newcomer);
}

#[test]
fn the_coordinators_death_mid_write_loses_no_acknowledged_write() {
    let key = key_of("k");
    let mut net = Net::new(&[10, 20, 30, 40, 50, 60]);
    assert_eq!(version(&net.put(0, "k", "before", 1)), 1);
    let coordinator = net.responsible(&key).unwrap();
    // The coordinator stores the next write and dies before its replicas
    // get the copies: the client's retry reaches the next coordinator.
    net.drop = Box::new(|m| matches!(m.msg, RecordMsg::Replicate { .. }));
    let client = if coordinator == 0 { 1 } else { 0 };
    net.request(
        client,
        RecordOp::Put {
            name: "k".into(),
            value: b"during".to_vec(),
        },
        2,
    );
    net.crash(coordinator);
    net.drop = Box::new(|_| false);
    net.advance(Duration::from_secs(8));
    let a = net.answers.get(&(client, 2)).cloned().expect("answered");
    assert!(a.attempts >= 2, "{a:?}");
    // Answered with success: then every live replica has it at a version
    // above the one before.
    let v = version(&a);
    assert!(v >= 2, "{a:?}");
    assert_eq!(value(&net.get(client, "k", 3)), "during");
    assert!(
        net.copies("k")
            .iter()
            .filter(|(_, r)| r.version == v)
            .count()
            >= 2
    );
}

#[test]
fn a_restarted_node_never_repeats_a_write_id() {
    let mut net = Net::new(&[10, 20, 30, 40]);
    // Node 0 writes two records; their copies carry (node 0, n).
    net.put(0, "a", "a1", 1);
    net.put(0, "b", "b1", 2);
    let old_ids: Vec<WriteId> = ["a", "b"]
        .iter()
        .filter_map(|n| net.copies(n)[0].1.write)
        .collect();
    let backend = net.crash(0);
    net.restart(0, backend);
    // Its new life writes "c", then "b", with its first two requests. Were
    // its request numbers to start over, the write of "b" would carry the
    // id already stored on "b"'s copies and be taken for a retry: not
    // written, yet answered as stored.
    net.put(0, "c", "c1", 5);
    let a = net.put(0, "b", "b2", 3);
    assert_eq!(version(&a), 2, "{a:?}");
    let new_id = net.copies("b")[0].1.write.unwrap();
    assert!(!old_ids.contains(&new_id));
    assert_eq!(value(&net.get(1, "b", 4)), "b2");
}

#[test]
fn the_sweep_restores_r_copies_after_a_crash() {
    let mut net = Net::new(&[10, 20, 30, 40, 50, 60, 70]);
    for i in 0..30 {
        net.put(i % 7, &format!("r{i}"), "v", i as u64);
    }
    let holder = net.index(net.copies("r0")[0].0);
    net.crash(holder);
    net.advance(Duration::from_secs(3));
    for i in 0..30 {
        let name = format!("r{i}");
        assert_eq!(net.copies(&name).len(), 3, "{name}");
    }
    // And the sweep stops pushing once the sets are stable.
    let out: u64 = net
        .nodes
        .iter()
        .filter_map(|n| n.rep.as_ref().map(|r| r.counters().replicas_out))
        .sum();
    net.advance(Duration::from_secs(5));
    let later: u64 = net
        .nodes
        .iter()
        .filter_map(|n| n.rep.as_ref().map(|r| r.counters().replicas_out))
        .sum();
    assert_eq!(out, later);
}

#[test]
fn local_writes_are_confirmed_only_when_the_replicas_hold_them() {
    let key = key_of("muc:room@conference.ring.test");
    let mut net = Net::new(&[10, 20, 30, 40, 50]);
    let host = net.responsible(&key).unwrap();
    let op = RecordOp::Put {
        name: "muc:room@conference.ring.test".into(),
        value: b"state".to_vec(),
    };
    // Replicas slow: nothing confirmed until their commits arrive.
    net.drop = Box::new(|m| matches!(m.msg, RecordMsg::Stored { .. }));
    let now = net.now;
    let node = &mut net.nodes[host];
    let view = ListRing {
        me: node.id,
        live: &node.view,
    };
    let w = node.rep.as_mut().unwrap().write_local(now, &view, &op, 7);
    assert_eq!(w, LocalWrite::Waiting);
    net.collect(host);
    net.settle();
    assert!(
        net.confirmed.is_empty(),
        "held while the replicas are silent"
    );
    // ...then released after the stored wait, with what came.
    net.advance(Duration::from_millis(1100));
    assert_eq!(net.confirmed, vec![(host, 7)]);
    // With replicas that answer, confirmed as soon as they do.
    net.drop = Box::new(|_| false);
    net.confirmed.clear();
    let now = net.now;
    let node = &mut net.nodes[host];
    let view = ListRing {
        me: node.id,
        live: &node.view,
    };
    assert_eq!(
        node.rep.as_mut().unwrap().write_local(now, &view, &op, 8),
        LocalWrite::Waiting
    );
    net.collect(host);
    net.settle();
    assert_eq!(net.confirmed, vec![(host, 8)]);
    assert_eq!(net.copies("muc:room@conference.ring.test").len(), 3);
}

#[test]
fn a_load_fetches_what_the_new_host_lacks() {
    let mut net = Net::new(&[10, 20, 30, 40, 50]);
    net.put(0, "state", "kept", 1);
    let holders: Vec<usize> = net
        .copies("state")
        .iter()
        .map(|(id, _)| net.index(*id))
        .collect();
    let outsider = (0..5).find(|i| !holders.contains(i)).unwrap();
    let now = net.now;
    let node = &mut net.nodes[outsider];
    let view = ListRing {
        me: node.id,
        live: &node.view,
    };
    let rep = node.rep.as_mut().unwrap();
    assert!(rep.load(now, &view, &["state".to_string()], 5));
    net.collect(outsider);
    net.settle();
    assert_eq!(net.loaded, vec![(outsider, 5)]);
    let copy = net.nodes[outsider]
        .rep
        .as_ref()
        .unwrap()
        .store()
        .get("state")
        .unwrap();
    assert_eq!(copy.map(|r| r.value), Some(b"kept".to_vec()));
    // Nothing to fetch: ready at once.
    let now = net.now;
    let node = &mut net.nodes[outsider];
    let view = ListRing {
        me: node.id,
        live: &node.view,
    };
    assert!(
        !node
            .rep
            .as_mut()
            .unwrap()
            .load(now, &view, &["state".to_string()], 6)
    );
}

#[test]
fn limits_and_overload_are_refused_at_once() {
    let mut net = Net::new(&[10, 20, 30]);
    let big = "x".repeat(StoreLimits::default().max_record_bytes + 1);
    net.request(
        0,
        RecordOp::Put {
            name: "big".into(),
            value: big.into_bytes(),
        },
        1,
    );
    let a = &net.answers[&(0, 1)];
    assert!(matches!(
        a.outcome,
        Err(RequestError::Limits(StoreError::TooLarge { .. }))
    ));
    assert!(net.copies("big").is_empty());
}

#[test]
fn clients_may_read_but_not_write_service_records() {
    let mut net = Net::new(&[10, 20, 30]);
    for (i, op) in [
        RecordOp::Put {
            name: "muc:r@conference.ring.test".into(),
            value: b"forged".to_vec(),
        },
        RecordOp::Delete {
            name: "dir:pubsub.ring.test#3".into(),
        },
    ]
    .into_iter()
    .enumerate()
    {
        net.request(0, op, i as u64);
        let a = &net.answers[&(0, i as u64)];
        assert_eq!(a.outcome, Err(RequestError::ServiceRecord), "{a:?}");
    }
    // Even a request that skips the check reaches a coordinator that
    // refuses it.
    let key = key_of("muc:r@conference.ring.test");
    net.queue.push_back(InFlight {
        to: key,
        from: id(10),
        msg: RecordMsg::Request {
            req: 1,
            origin: *id(10).as_bytes(),
            op: RecordOp::Put {
                name: "muc:r@conference.ring.test".into(),
                value: b"forged".to_vec(),
            },
        },
    });
    net.settle();
    assert!(net.copies("muc:r@conference.ring.test").is_empty());
    assert_eq!(
        net.get(1, "muc:r@conference.ring.test", 9).outcome,
        Ok(RecordOutcome::NotFound)
    );
}

#[test]
fn a_bounced_request_is_answered_with_the_reason() {
    let mut net = Net::new(&[10, 20]);
    let rep = net.nodes[0].rep.as_mut().unwrap();
    let now = net.now;
    rep.request(now, RecordOp::Get { name: "n".into() }, 9)
        .unwrap();
    let Some(Output::Route { msg, .. }) = rep.poll_output() else {
        panic!("a request to route")
    };
    rep.handle_bounce(&msg, "remote-server-timeout");
    let Some(Output::Answer { client, answer }) = rep.poll_output() else {
        panic!("an answer")
    };
    assert_eq!(client, 9);
    assert_eq!(
        answer.outcome,
        Err(RequestError::Undelivered("remote-server-timeout".into()))
    );
    assert_eq!(rep.pending_requests(), 0);
}
