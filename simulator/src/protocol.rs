//! Protocol mode: the real [`dht::RingNode`] state machines over a simulated
//! network.
//!
//! A discrete-event loop holds every message in flight and every node's
//! next timer in one priority queue ordered by simulated time (ties broken by
//! insertion order, so runs are exactly reproducible). Links have a fixed
//! one-way latency per pair, drawn from a log-normal distribution with the
//! given median, which also keeps each link FIFO like the TCP streams of a
//! real ring; each message may be lost with a given probability.
//!
//! A run has three phases:
//! 1. formation: node 0 starts alone, the others join through it at
//!    `join_rate` per second;
//! 2. settling, so joins and refreshes finish;
//! 3. the measured phase: `lookups` messages from random live nodes to
//!    random keys at uniformly random times, while (optionally) nodes crash
//!    after exponentially distributed sessions with the given median and
//!    fresh nodes join through node 0 to replace them.
//!
//! Every message ends delivered (at whichever node took responsibility),
//! bounced to its origin, or with no outcome. A message with no outcome
//! whose origin is still alive is *lost*; the routing design requires that
//! number to be zero.
//!
//! With a record workload ([`RecordParams`]), every node also runs the real
//! record replicator, records are written before the measured phase, and
//! the measured phase writes and reads them while churn goes on (see
//! [`crate::records_load`]).
//!
//! With a MUC workload ([`RoomParams`]), every node also runs the real
//! services host over its replicator; rooms are created before the
//! measured phase and their members talk while churn goes on (see
//! [`crate::rooms_load`] and the `services` submodule).

use crate::progress::Progress;
use crate::records_load::{RecordParams, Workload};
use crate::report::{HopCounts, ProtocolFigures, Report};
use crate::rooms_load::{Intent, RoomParams, Rooms};
use dht::id::{KEY_BITS, KEY_BYTES, Key};
use dht::node::{Event, NodeConfig, RingNode, Stats};
use dht::table::TableConfig;
use dht::wire::Message;
use dht::{Contact, EnvelopeKind, Role};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use ring_records::{MemBackend, Output, RecordMsg, Replicator, StoreLimits};
use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::{Duration, Instant};

/// Parameters of a protocol run.
#[derive(Clone, Debug)]
pub struct ProtocolParams {
    /// Ring size (kept constant under churn).
    pub nodes: usize,
    /// Routed messages in the measured phase.
    pub lookups: usize,
    /// Bucket size.
    pub k: usize,
    /// Bits per digit.
    pub bits: u8,
    /// Seed of everything random.
    pub seed: u64,
    /// Median one-way link latency.
    pub median_latency: Duration,
    /// Log-normal spread (sigma) of link latencies.
    pub latency_sigma: f64,
    /// Probability that any one message is lost.
    pub loss: f64,
    /// Joins per simulated second while the ring forms.
    pub join_rate: f64,
    /// Quiet time between formation and measurement.
    pub settle: Duration,
    /// Length of the measured phase.
    pub duration: Duration,
    /// Median session length under churn (`None`: no churn).
    pub churn_median_session: Option<Duration>,
    /// Per-node protocol parameters (k and bits are taken from above).
    pub node: NodeConfig,
    /// The record workload (none when `records.records == 0`).
    pub records: RecordParams,
    /// The MUC workload (none when `rooms.rooms == 0`).
    pub rooms: RoomParams,
}

impl ProtocolParams {
    /// Defaults for a ring of `nodes` with `lookups` messages.
    pub fn new(nodes: usize, lookups: usize) -> Self {
        ProtocolParams {
            nodes,
            lookups,
            k: TableConfig::default().k,
            bits: TableConfig::default().bits,
            seed: 1,
            median_latency: Duration::from_millis(20),
            latency_sigma: 0.5,
            loss: 0.0,
            join_rate: 100.0,
            settle: Duration::from_secs(60),
            duration: Duration::from_secs(600),
            churn_median_session: None,
            node: NodeConfig::default(),
            records: RecordParams::default(),
            rooms: RoomParams::default(),
        }
    }
}

type Time = u64; // simulated microseconds

fn us(d: Duration) -> Time {
    d.as_micros() as Time
}

// Messages dominate the queue, so the large variant is the common one;
// boxing it would cost an allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum SimEvent {
    Deliver {
        to: u32,
        from: Contact<u32>,
        msg: Message<u32>,
    },
    Wake {
        slot: u32,
    },
    Arrive,
    Crash {
        slot: u32,
    },
    Send {
        msg: u32,
    },
    RecordWrite {
        record: u32,
    },
    RecordRead {
        record: u32,
    },
    Sample,
    /// A user of the MUC workload sends something.
    Room {
        intent: Intent,
    },
    /// A random member of a random room talks.
    RoomTalk,
}

/// A heap entry: the event itself waits in a slab, so heap operations move
/// 24 bytes instead of a whole message.
struct Queued {
    at: Time,
    seq: u64,
    slot: u32,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> Ordering {
        // BinaryHeap is a max-heap: invert so the earliest pops first.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

struct SimNode {
    node: RingNode<u32>,
    /// The record replicator (with a record or MUC workload).
    rep: Option<Replicator<MemBackend>>,
    /// The services host (with a MUC workload).
    host: Option<ring_services::host::ServiceHost>,
    wake: Option<Time>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Pending,
    Delivered,
    Bounced,
}

struct MsgInfo {
    key: Key,
    origin: u32,
    sent_at: Time,
    outcome: Outcome,
}

/// The running simulation.
struct Sim {
    p: ProtocolParams,
    rng: Xoshiro256PlusPlus,
    base: Instant,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Queued>,
    slab: Vec<Option<SimEvent>>,
    free: Vec<u32>,
    slots: Vec<Option<SimNode>>,
    live: Vec<u32>,
    live_pos: Vec<usize>,
    live_ids: BTreeSet<Key>,
    id_slot: std::collections::BTreeMap<Key, u32>,
    dead_stats: Stats,
    msgs: Vec<MsgInfo>,
    hops: HopCounts,
    latencies_ms: Vec<f64>,
    delivered: u64,
    delivered_to_closest: u64,
    bounced: u64,
    duplicate_outcomes: u64,
    vanished: u64,
    measuring: bool,
    churn_until: Time,
    joins: u64,
    departures: u64,
    events: u64,
    /// The record workload's clients, when there is one.
    workload: Option<Workload>,
    /// Sweep bytes of replicators that crashed.
    dead_sweep_bytes: u64,
    /// The MUC workload's users, when there is one.
    rooms: Option<Rooms>,
    /// The ring's domain, for the services.
    served: xmpp_addr::Served,
}

/// splitmix64-style mixing of a few integers.
fn mix(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x243f_6a88_85a3_08d3;
    for p in parts {
        let mut z = h ^ p.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h = z ^ (z >> 31);
    }
    h
}

impl Sim {
    fn new(p: ProtocolParams) -> Self {
        let rng = Xoshiro256PlusPlus::seed_from_u64(mix(&[p.seed, 7]));
        Sim {
            rng,
            base: Instant::now(),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            slots: Vec::new(),
            live: Vec::new(),
            live_pos: Vec::new(),
            live_ids: BTreeSet::new(),
            id_slot: Default::default(),
            dead_stats: Stats::default(),
            msgs: Vec::new(),
            hops: HopCounts::default(),
            latencies_ms: Vec::new(),
            delivered: 0,
            delivered_to_closest: 0,
            bounced: 0,
            duplicate_outcomes: 0,
            vanished: 0,
            measuring: false,
            churn_until: 0,
            joins: 0,
            departures: 0,
            events: 0,
            workload: None,
            dead_sweep_bytes: 0,
            rooms: None,
            served: services::served(),
            p,
        }
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_micros(self.now)
    }

    fn schedule(&mut self, at: Time, ev: SimEvent) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = Some(ev);
                i
            }
            None => {
                self.slab.push(Some(ev));
                (self.slab.len() - 1) as u32
            }
        };
        self.queue.push(Queued {
            at,
            seq: self.seq,
            slot,
        });
    }

    /// One-way latency of the link between two slots (symmetric, fixed).
    fn latency(&self, a: u32, b: u32) -> Time {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let h1 = mix(&[self.p.seed, 3, lo as u64, hi as u64]);
        let h2 = mix(&[h1, 4]);
        // Box–Muller from two uniforms in (0, 1].
        let u1 = ((h1 >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (h2 >> 11) as f64 / (1u64 << 53) as f64;
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let median = self.p.median_latency.as_micros() as f64;
        (median * (self.p.latency_sigma * z).exp()).max(50.0) as Time
    }

    fn node_config(&self) -> NodeConfig {
        NodeConfig {
            table: TableConfig {
                k: self.p.k,
                bits: self.p.bits,
                ..self.p.node.table.clone()
            },
            role: Role::Application,
            ..self.p.node.clone()
        }
    }

    /// Creates a node in a new slot and returns the slot.
    fn spawn(&mut self) -> u32 {
        let slot = self.slots.len() as u32;
        let mut id = [0u8; KEY_BYTES];
        self.rng.fill(&mut id);
        let id = Key(id);
        let seed = mix(&[self.p.seed, 5, slot as u64]);
        let now = self.instant();
        let node = RingNode::new(
            self.node_config(),
            Contact::new(id, slot, Role::Application),
            seed,
            now,
            self.now,
        );
        let host = (self.p.rooms.rooms > 0).then(|| services::host(id, seed, &self.p, now));
        let rep = (self.p.records.records > 0 || self.p.rooms.rooms > 0).then(|| {
            Replicator::new(
                self.p.records.config.clone(),
                id,
                MemBackend::new(),
                StoreLimits::default(),
                now,
            )
            .expect("a memory store opens")
        });
        self.slots.push(Some(SimNode {
            node,
            rep,
            host,
            wake: None,
        }));
        self.live_pos.push(self.live.len());
        self.live.push(slot);
        self.live_ids.insert(id);
        self.id_slot.insert(id, slot);
        slot
    }

    fn kill(&mut self, slot: u32) {
        let Some(n) = self.slots[slot as usize].take() else {
            return;
        };
        self.dead_stats.merge(n.node.stats());
        if let Some(rep) = &n.rep {
            self.dead_sweep_bytes += rep.counters().sweep_bytes;
        }
        let id = n.node.id();
        self.live_ids.remove(&id);
        let pos = self.live_pos[slot as usize];
        let last = *self.live.last().expect("live node");
        self.live.swap_remove(pos);
        if last != slot {
            self.live_pos[last as usize] = pos;
        }
        self.live_pos[slot as usize] = usize::MAX;
    }

    fn contact_of(&self, slot: u32) -> Option<Contact<u32>> {
        self.slots[slot as usize]
            .as_ref()
            .map(|n| n.node.contact().clone())
    }

    /// The live node closest to `key`, by descending the id trie.
    fn closest_live(&self, key: &Key) -> Option<Key> {
        let mut prefix = Key::ZERO;
        for bit in 0..KEY_BITS {
            let want = key.bit(bit);
            let try_prefix = prefix.with_bits(bit, 1, want as u32);
            let lo = try_prefix.with_suffix_from(bit + 1, &Key::ZERO);
            let hi = try_prefix.with_suffix_from(bit + 1, &Key([0xff; KEY_BYTES]));
            let mut range = self.live_ids.range(lo..=hi);
            let first = range.next();
            match first {
                Some(f) => {
                    if range.next_back().is_none() {
                        return Some(*f);
                    }
                    prefix = try_prefix;
                }
                None => prefix = prefix.with_bits(bit, 1, (!want) as u32),
            }
        }
        self.live_ids.iter().next().copied()
    }

    /// Moves a node's outputs (and its replicator's) into the event queue
    /// and reschedules its timer.
    fn flush(&mut self, slot: u32) {
        let now = self.now;
        let instant = self.instant();
        loop {
            let Some(sn) = self.slots[slot as usize].as_mut() else {
                return;
            };
            // The replicator's messages become envelopes first.
            let mut answers = Vec::new();
            if let Some(rep) = sn.rep.as_mut() {
                while let Some(o) = rep.poll_output() {
                    match o {
                        Output::Route { to, msg } => {
                            let payload = bytes::Bytes::from(msg.encode());
                            if sn
                                .node
                                .route(instant, to, EnvelopeKind::Record, payload, false)
                                .is_err()
                            {
                                rep.handle_bounce(&msg, "resource-constraint");
                            }
                        }
                        Output::Answer { client, answer } => answers.push((client, answer)),
                        Output::Confirmed { token } => {
                            if let Some(h) = sn.host.as_mut() {
                                h.handle_confirmed(token);
                            }
                        }
                        Output::Loaded { token } => {
                            if let Some(h) = sn.host.as_mut() {
                                h.handle_loaded(instant, unix(now), token, rep, &sn.node);
                            }
                        }
                    }
                }
            }
            // The host's turn: its writes, then the stanzas it released.
            let to_users = services::drain_host(sn, &self.served, instant, unix(now));
            if let Some(w) = self.workload.as_mut() {
                for (client, a) in &answers {
                    w.answered(*client, a, now);
                }
            }
            let Some(sn) = self.slots[slot as usize].as_mut() else {
                return;
            };
            let from = sn.node.contact().clone();
            let mut out = Vec::new();
            while let Some(t) = sn.node.poll_transmit(instant) {
                out.push(t);
            }
            let mut events = Vec::new();
            while let Some(e) = sn.node.poll_event() {
                events.push(e);
            }
            let next = [
                sn.node.poll_timeout(),
                sn.rep.as_ref().and_then(|r| r.poll_timeout()),
                sn.host.as_ref().and_then(|h| h.poll_timeout()),
            ]
            .into_iter()
            .flatten()
            .min()
            .map(|t| us(t.saturating_duration_since(self.base)));
            let reschedule = match (next, sn.wake) {
                (Some(n), Some(w)) => n < w,
                (Some(_), None) => true,
                _ => false,
            };
            if reschedule {
                sn.wake = next;
            }
            if let (true, Some(n)) = (reschedule, next) {
                self.schedule(n.max(now), SimEvent::Wake { slot });
            }
            for t in out {
                if self.p.loss > 0.0 && self.rng.random_bool(self.p.loss) {
                    continue;
                }
                let at = now + self.latency(slot, t.to.addr);
                self.schedule(
                    at,
                    SimEvent::Deliver {
                        to: t.to.addr,
                        from: from.clone(),
                        msg: t.msg,
                    },
                );
            }
            let quiet = events.is_empty() && answers.is_empty() && to_users.is_empty();
            self.deliver_to_users(to_users);
            for e in events {
                self.on_node_event(slot, e);
            }
            let more = self.slots[slot as usize]
                .as_ref()
                .and_then(|sn| sn.rep.as_ref())
                .is_some_and(|r| r.has_output());
            if quiet && !more {
                return;
            }
        }
    }

    fn on_node_event(&mut self, slot: u32, e: Event<u32>) {
        let instant = self.instant();
        match e {
            Event::Delivered(env) if env.kind == services::STANZA => {
                self.stanza_delivered(slot, &env.payload)
            }
            Event::Bounced { envelope, .. } if envelope.kind == services::STANZA => {
                self.stanza_bounced(&envelope.payload)
            }
            Event::Delivered(env) if env.kind == EnvelopeKind::Record => {
                if let Some(sn) = self.slots[slot as usize].as_mut()
                    && let Some(rep) = sn.rep.as_mut()
                    && let Some(msg) = RecordMsg::decode(&env.payload)
                {
                    rep.handle_message(instant, &sn.node, env.key, env.hops, msg);
                }
            }
            Event::Bounced { envelope, reason } if envelope.kind == EnvelopeKind::Record => {
                if let Some(sn) = self.slots[slot as usize].as_mut()
                    && let Some(rep) = sn.rep.as_mut()
                    && let Some(msg) = RecordMsg::decode(&envelope.payload)
                {
                    rep.handle_bounce(&msg, reason.xmpp_condition());
                }
            }
            Event::ContactFailed(_) => {
                if let Some(rep) = self.slots[slot as usize]
                    .as_mut()
                    .and_then(|sn| sn.rep.as_mut())
                {
                    rep.handle_membership(instant);
                }
            }
            Event::Delivered(env) => {
                let Some(idx) = msg_index(&env.payload) else {
                    return;
                };
                let Some(m) = self.msgs.get_mut(idx) else {
                    return;
                };
                if m.outcome != Outcome::Pending {
                    self.duplicate_outcomes += 1;
                    return;
                }
                m.outcome = Outcome::Delivered;
                let key = m.key;
                let latency = (self.now - m.sent_at) as f64 / 1000.0;
                self.delivered += 1;
                self.hops.record(env.hops as u32);
                self.latencies_ms.push(latency);
                let here = self.slots[slot as usize].as_ref().map(|n| n.node.id());
                if here.is_some() && here == self.closest_live(&key) {
                    self.delivered_to_closest += 1;
                }
            }
            Event::Bounced { envelope, reason } => {
                let Some(idx) = msg_index(&envelope.payload) else {
                    return;
                };
                let Some(m) = self.msgs.get_mut(idx) else {
                    return;
                };
                if m.outcome != Outcome::Pending {
                    // Delivered, but its receipt was lost on the way back.
                    self.duplicate_outcomes += 1;
                    return;
                }
                m.outcome = Outcome::Bounced;
                self.bounced += 1;
                if reason == dht::BounceReason::NoReceipt {
                    self.vanished += 1;
                }
            }
            _ => {}
        }
    }

    fn session(&mut self) -> Time {
        let median = self.p.churn_median_session.map(us).unwrap_or(0) as f64;
        // Exponential with the given median: mean = median / ln 2.
        let u: f64 = 1.0 - self.rng.random::<f64>();
        (-u.ln() * median / std::f64::consts::LN_2) as Time
    }

    fn handle(&mut self, ev: SimEvent) {
        self.events += 1;
        match ev {
            SimEvent::Deliver { to, from, msg } => {
                let now = self.instant();
                if let Some(sn) = self.slots[to as usize].as_mut() {
                    sn.node.handle_message(now, from, msg);
                    self.flush(to);
                }
            }
            SimEvent::Wake { slot } => {
                let now_t = self.now;
                let now = self.instant();
                let Some(sn) = self.slots[slot as usize].as_mut() else {
                    return;
                };
                if sn.wake != Some(now_t) {
                    return; // superseded by an earlier wake
                }
                sn.wake = None;
                if sn.node.poll_timeout().is_some_and(|t| t <= now) {
                    sn.node.handle_timeout(now);
                }
                if let Some(rep) = sn.rep.as_mut()
                    && rep.poll_timeout().is_some_and(|t| t <= now)
                {
                    rep.handle_timeout(now, &sn.node);
                }
                if let (Some(host), Some(rep)) = (sn.host.as_mut(), sn.rep.as_mut())
                    && host.poll_timeout().is_some_and(|t| t <= now)
                {
                    host.handle_timeout(now, unix(now_t), rep, &sn.node);
                }
                self.flush(slot);
            }
            SimEvent::Arrive => {
                let slot = self.spawn();
                let boot = self.contact_of(0).into_iter().collect();
                let now = self.instant();
                if let Some(sn) = self.slots[slot as usize].as_mut() {
                    sn.node.join(now, boot);
                }
                self.flush(slot);
                if self.measuring {
                    self.joins += 1;
                    self.schedule_crash(slot);
                }
            }
            SimEvent::Crash { slot } => {
                if self.now >= self.churn_until {
                    return;
                }
                self.kill(slot);
                self.departures += 1;
                self.schedule(self.now, SimEvent::Arrive);
            }
            SimEvent::Send { msg } => self.send(msg),
            SimEvent::RecordWrite { record } => self.record_op(record, true),
            SimEvent::RecordRead { record } => self.record_op(record, false),
            SimEvent::Sample => {
                let copies = self.live_copies();
                if let Some(w) = self.workload.as_mut() {
                    w.sample(&copies);
                }
            }
            SimEvent::Room { intent } => self.room_send(intent),
            SimEvent::RoomTalk => self.room_talk(),
        }
    }

    /// A client at a random live node writes or reads `record`.
    fn record_op(&mut self, record: u32, write: bool) {
        if self.live.is_empty() {
            return;
        }
        let origin = self.live[self.rng.random_range(0..self.live.len())];
        let now_us = self.now;
        let instant = self.instant();
        let Some(w) = self.workload.as_mut() else {
            return;
        };
        let (tag, op) = if write {
            w.write(record, now_us)
        } else {
            w.read(record, now_us)
        };
        let Some(rep) = self.slots[origin as usize]
            .as_mut()
            .and_then(|sn| sn.rep.as_mut())
        else {
            return;
        };
        if let Err(a) = rep.request(instant, op, tag)
            && let Some(w) = self.workload.as_mut()
        {
            w.answered(tag, &a, now_us);
        }
        self.flush(origin);
    }

    /// Every live node's record copies: (name, version).
    fn live_copies(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for sn in self.slots.iter().flatten() {
            let Some(rep) = &sn.rep else { continue };
            let s = rep.store();
            for name in s.names_after(None, usize::MAX) {
                if let Ok(Some(r)) = s.get(&name)
                    && !r.deleted
                {
                    out.push((name, r.version));
                }
            }
        }
        out
    }

    /// Sweep bytes of every replicator so far, dead ones included.
    fn sweep_bytes(&self) -> u64 {
        self.dead_sweep_bytes
            + self
                .slots
                .iter()
                .flatten()
                .filter_map(|sn| sn.rep.as_ref())
                .map(|r| r.counters().sweep_bytes)
                .sum::<u64>()
    }

    /// Record requests still waiting for an answer at live nodes.
    fn records_pending(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter_map(|sn| sn.rep.as_ref())
            .map(|r| r.pending_requests())
            .sum()
    }

    fn schedule_crash(&mut self, slot: u32) {
        if self.p.churn_median_session.is_some() && slot != 0 {
            let at = self.now + self.session();
            if at < self.churn_until {
                self.schedule(at, SimEvent::Crash { slot });
            }
        }
    }

    fn send(&mut self, idx: u32) {
        if self.live.is_empty() {
            return;
        }
        let origin = self.live[self.rng.random_range(0..self.live.len())];
        let mut key = [0u8; KEY_BYTES];
        self.rng.fill(&mut key);
        let key = Key(key);
        let now = self.instant();
        let sent_at = self.now;
        self.msgs[idx as usize] = MsgInfo {
            key,
            origin,
            sent_at,
            outcome: Outcome::Pending,
        };
        let payload = bytes::Bytes::copy_from_slice(&(idx as u64).to_be_bytes());
        let Some(sn) = self.slots[origin as usize].as_mut() else {
            return;
        };
        if sn
            .node
            .route(now, key, EnvelopeKind::Stanza, payload, false)
            .is_err()
        {
            self.msgs[idx as usize].outcome = Outcome::Bounced;
            self.bounced += 1;
        }
        self.flush(origin);
    }

    /// Runs events up to and including time `until`.
    fn run_until(&mut self, until: Time, progress: &Progress, total: Time) {
        while let Some(top) = self.queue.peek() {
            if top.at > until {
                break;
            }
            let Some(q) = self.queue.pop() else { break };
            self.now = q.at;
            let ev = self.slab[q.slot as usize].take();
            self.free.push(q.slot);
            if let Some(ev) = ev {
                self.handle(ev);
            }
            if self.events.is_multiple_of(65_536) {
                progress.set(self.now.min(total));
            }
        }
        self.now = self.now.max(until);
    }

    fn total_stats(&self) -> Stats {
        let mut s = self.dead_stats.clone();
        for n in self.slots.iter().flatten() {
            s.merge(n.node.stats());
        }
        s
    }

    fn all_outcomes_known(&self) -> bool {
        self.msgs.iter().all(|m| {
            m.outcome != Outcome::Pending
                || self
                    .slots
                    .get(m.origin as usize)
                    .is_none_or(|s| s.is_none())
        })
    }
}

/// Unix seconds at simulated time `t` (what the services stamp).
fn unix(t: Time) -> u64 {
    1_700_000_000 + t / 1_000_000
}

fn msg_index(payload: &[u8]) -> Option<usize> {
    let b: [u8; 8] = payload.try_into().ok()?;
    Some(u64::from_be_bytes(b) as usize)
}

/// Runs a protocol-mode simulation and reports it.
pub fn run(p: &ProtocolParams, progress: &Progress) -> Report {
    let started = Instant::now();
    let mut sim = Sim::new(p.clone());
    let n = p.nodes.max(1);
    let formation = us(Duration::from_secs_f64(
        (n - 1) as f64 / p.join_rate.max(0.001),
    ));
    let records = p.records.records;
    // With a record workload, the records are written after the settling
    // and the measured phase starts half a minute after the last write.
    let t_records = formation + us(p.settle);
    let mut t0 = if records > 0 {
        t_records + us(p.records.create_window) + us(Duration::from_secs(30))
    } else {
        t_records
    };
    // With rooms, their creation runs beside the records' and the measured
    // phase starts half a minute after the last member joined.
    let rooms_ready = (p.rooms.rooms > 0).then(|| {
        let ready = t_records
            + p.rooms.rooms as u64 * us(Duration::from_millis(50))
            + us(Duration::from_secs(15));
        t0 = t0.max(ready + us(Duration::from_secs(30)));
        ready
    });
    let t_end = t0 + us(p.duration);
    // Long enough for every receipt deadline to pass.
    let drain = us(p.node.receipt_timeout + Duration::from_secs(90));
    let total = t_end + drain;
    progress.start("simulating", total);

    // Formation: node 0 alone, then joins through it.
    let boot = sim.spawn();
    let now = sim.instant();
    if let Some(sn) = sim.slots[boot as usize].as_mut() {
        sn.node.join(now, Vec::new());
    }
    sim.flush(boot);
    for i in 1..n {
        let at = us(Duration::from_secs_f64(i as f64 / p.join_rate.max(0.001)));
        sim.schedule(at, SimEvent::Arrive);
    }
    sim.run_until(t_records, progress, total);
    if records > 0 {
        sim.workload = Some(Workload::new(&p.records));
        let window = us(p.records.create_window).max(1);
        for i in 0..records {
            let at = t_records + sim.rng.random_range(0..window);
            sim.schedule(at, SimEvent::RecordWrite { record: i as u32 });
        }
    }
    if rooms_ready.is_some() {
        services::schedule_rooms(&mut sim, &p.rooms, t_records);
    }
    sim.run_until(t0, progress, total);

    // Measured phase.
    if p.rooms.rooms > 0 {
        services::schedule_talk(&mut sim, &p.rooms, t0, us(p.duration));
    }
    let before = sim.total_stats();
    let sweep_before = sim.sweep_bytes();
    if records > 0 {
        let secs = p.duration.as_secs_f64();
        let span = us(p.duration).max(1);
        for (count, write) in [
            ((p.records.writes_per_s * secs) as u64, true),
            ((p.records.reads_per_s * secs) as u64, false),
        ] {
            for _ in 0..count {
                let at = t0 + sim.rng.random_range(0..span);
                let record = sim.rng.random_range(0..records) as u32;
                let ev = if write {
                    SimEvent::RecordWrite { record }
                } else {
                    SimEvent::RecordRead { record }
                };
                sim.schedule(at, ev);
            }
        }
        let mut t = t0;
        while t < t_end {
            t += us(Duration::from_secs(60));
            sim.schedule(t.min(t_end), SimEvent::Sample);
        }
    }
    sim.measuring = true;
    sim.churn_until = t_end;
    let live_now: Vec<u32> = sim.live.clone();
    for slot in live_now {
        sim.schedule_crash(slot);
    }
    sim.msgs = (0..p.lookups)
        .map(|_| MsgInfo {
            key: Key::ZERO,
            origin: u32::MAX,
            sent_at: 0,
            outcome: Outcome::Pending,
        })
        .collect();
    for i in 0..p.lookups {
        let at = t0 + sim.rng.random_range(0..us(p.duration).max(1));
        sim.schedule(at, SimEvent::Send { msg: i as u32 });
    }
    let mut live_samples = 0f64;
    let mut sample_count = 0u64;
    let step = us(Duration::from_secs(10));
    let mut t = t0;
    while t < t_end {
        t = (t + step).min(t_end);
        sim.run_until(t, progress, total);
        live_samples += sim.live.len() as f64;
        sample_count += 1;
    }
    let after = sim.total_stats();
    let sweep_after = sim.sweep_bytes();
    // Drain: let in-flight messages finish (timeouts, reroutes, bounces).
    let mut t = t_end;
    let rooms_pending = |sim: &Sim| sim.rooms.as_ref().map_or(0, |r| r.pending());
    while t < t_end + drain
        && (!sim.all_outcomes_known() || sim.records_pending() > 0 || rooms_pending(&sim) > 0)
    {
        t += us(Duration::from_secs(1));
        sim.run_until(t, progress, total);
    }
    progress.finish();

    let mut lost = 0;
    let mut origin_departed = 0;
    for m in &sim.msgs {
        if m.outcome == Outcome::Pending {
            if sim
                .slots
                .get(m.origin as usize)
                .is_some_and(|s| s.is_some())
            {
                lost += 1;
            } else {
                origin_departed += 1;
            }
        }
    }
    let messages = p.lookups.max(1) as f64;
    let measured_s = p.duration.as_secs_f64();
    let mean_live = if sample_count > 0 {
        live_samples / sample_count as f64
    } else {
        n as f64
    };
    let maint = (after.maintenance_msgs_sent - before.maintenance_msgs_sent) as f64;
    let mut lat = sim.latencies_ms.clone();
    lat.sort_by(|a, b| a.total_cmp(b));
    let p99 = lat
        .get(((lat.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0.0);
    let mean_lat = if lat.is_empty() {
        0.0
    } else {
        lat.iter().sum::<f64>() / lat.len() as f64
    };
    let tables: Vec<usize> = sim
        .slots
        .iter()
        .flatten()
        .map(|s| s.node.table().len())
        .collect();
    let mean_table = tables.iter().sum::<usize>() as f64 / tables.len().max(1) as f64;

    let figures = ProtocolFigures {
        delivered: sim.delivered,
        delivered_to_closest: sim.delivered_to_closest,
        bounced: sim.bounced,
        bounced_no_receipt: sim.vanished,
        false_bounces: sim.duplicate_outcomes,
        lost,
        origin_departed,
        duplicates: after.duplicates - before.duplicates,
        timeouts_per_lookup: (after.ack_timeouts - before.ack_timeouts) as f64 / messages,
        reroutes_per_lookup: (after.rerouted - before.rerouted) as f64 / messages,
        maintenance_msgs_per_node_per_s: maint / (mean_live.max(1.0) * measured_s.max(1e-9)),
        mean_latency_ms: mean_lat,
        p99_latency_ms: p99,
        churn_joins: sim.joins,
        churn_departures: sim.departures,
        measured_s,
        median_session_s: p
            .churn_median_session
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        median_latency_ms: p.median_latency.as_secs_f64() * 1000.0,
        loss_rate: p.loss,
        events: sim.events,
        rooms: sim.rooms.take().map(|r| {
            let slots = &sim.slots;
            r.finish(|slot| slots.get(slot as usize).is_some_and(|s| s.is_some()))
        }),
        records: sim.workload.take().map(|w| {
            let copies = sim.live_copies();
            let per_node_s =
                (sweep_after - sweep_before) as f64 / (mean_live.max(1.0) * measured_s.max(1e-9));
            w.finish(&copies, per_node_s)
        }),
    };
    let mut r = Report::new("protocol", n as u64, p.lookups as u64, p.k, p.bits, p.seed)
        .with_hops(&sim.hops);
    r.success_rate = sim.delivered as f64 / messages;
    r.mean_table_size = mean_table;
    r.elapsed_s = started.elapsed().as_secs_f64();
    r.protocol = Some(figures);
    r
}

mod services;

#[cfg(test)]
mod tests {
    use super::*;

    fn small(nodes: usize, lookups: usize) -> ProtocolParams {
        ProtocolParams {
            k: 8,
            bits: 2,
            join_rate: 50.0,
            settle: Duration::from_secs(30),
            duration: Duration::from_secs(60),
            ..ProtocolParams::new(nodes, lookups)
        }
    }

    #[test]
    fn every_message_delivered_without_churn() {
        let r = run(&small(300, 2000), &Progress::hidden());
        let p = r.protocol.as_ref().unwrap();
        assert_eq!(p.delivered, 2000);
        assert_eq!(p.lost, 0);
        assert_eq!(p.bounced, 0);
        assert_eq!(
            p.delivered_to_closest, 2000,
            "converged ring routes to the closest node"
        );
        assert_eq!(r.hop_histogram.iter().sum::<u64>(), 2000);
    }

    #[test]
    fn churn_loses_nothing() {
        // Heavy churn for a small ring: a third of the nodes replaced in
        // five minutes, with liveness scaled to match.
        let mut p = ProtocolParams {
            churn_median_session: Some(Duration::from_secs(600)),
            duration: Duration::from_secs(300),
            ..small(300, 3000)
        };
        p.node.liveness_interval = Duration::from_secs(60);
        p.node.refresh_interval = Duration::from_secs(120);
        let r = run(&p, &Progress::hidden());
        let f = r.protocol.as_ref().unwrap();
        assert!(
            f.churn_departures > 50,
            "churn happened: {}",
            f.churn_departures
        );
        assert_eq!(f.lost, 0, "{f:?}");
        assert_eq!(
            f.delivered + f.bounced + f.origin_departed,
            3000,
            "every message accounted for: {f:?}"
        );
        assert!(f.delivered as f64 >= 0.97 * 3000.0, "{f:?}");
    }

    #[test]
    fn loss_is_survived_by_reroutes() {
        let p = ProtocolParams {
            loss: 0.01,
            ..small(200, 1000)
        };
        let r = run(&p, &Progress::hidden());
        let f = r.protocol.as_ref().unwrap();
        assert_eq!(f.lost, 0, "{f:?}");
        assert!(f.timeouts_per_lookup > 0.0, "losses caused timeouts");
        assert_eq!(f.delivered + f.bounced, 1000);
    }

    #[test]
    fn same_seed_same_numbers() {
        let a = run(&small(150, 500), &Progress::hidden());
        let b = run(&small(150, 500), &Progress::hidden());
        assert_eq!(a.hop_histogram, b.hop_histogram);
        assert_eq!(
            a.protocol.as_ref().unwrap().events,
            b.protocol.as_ref().unwrap().events
        );
    }

    fn with_records(p: ProtocolParams, records: usize) -> ProtocolParams {
        ProtocolParams {
            records: RecordParams {
                records,
                writes_per_s: 5.0,
                reads_per_s: 5.0,
                create_window: Duration::from_secs(20),
                ..RecordParams::default()
            },
            ..p
        }
    }

    #[test]
    fn records_are_stored_read_and_kept_without_churn() {
        let r = run(&with_records(small(60, 0), 300), &Progress::hidden());
        let f = r.protocol.as_ref().unwrap().records.clone().unwrap();
        assert_eq!(f.records, 300);
        assert_eq!(f.records_lost, 0, "{f:?}");
        assert_eq!(f.stale_reads, 0, "{f:?}");
        assert_eq!(f.write_failures + f.read_failures, 0, "{f:?}");
        // 300 initial writes, then 5/s over 60 s, all answered.
        assert_eq!(f.writes, 600, "{f:?}");
        assert_eq!(f.reads, 300, "{f:?}");
        assert_eq!(f.records_under_replicated_max, 0, "{f:?}");
        assert!(f.write_latency_ms_p50 > 0.0);
    }

    #[test]
    fn records_survive_churn_with_fast_neighbour_checks() {
        let mut p = ProtocolParams {
            churn_median_session: Some(Duration::from_secs(600)),
            duration: Duration::from_secs(300),
            ..with_records(small(120, 0), 500)
        };
        p.node.liveness_interval = Duration::from_secs(60);
        let r = run(&p, &Progress::hidden());
        let f = r.protocol.as_ref().unwrap().clone();
        let rec = f.records.clone().unwrap();
        assert!(f.churn_departures > 20, "churn happened: {f:?}");
        assert_eq!(rec.records_lost, 0, "{rec:?}");
        assert!(rec.writes >= 500 + 1400, "{rec:?}");
        assert!(rec.rereplication_bytes_per_node_per_s > 0.0, "{rec:?}");
    }

    #[test]
    fn without_neighbour_checks_churn_loses_records() {
        // The same churn with the neighbourhood checks off and slow
        // liveness: dead replicas linger in the tables and copies are lost.
        let mut p = ProtocolParams {
            churn_median_session: Some(Duration::from_secs(120)),
            duration: Duration::from_secs(600),
            ..with_records(small(60, 0), 300)
        };
        p.node.neighbours = 0;
        p.node.liveness_interval = Duration::from_secs(600);
        let r = run(&p, &Progress::hidden());
        let rec = r.protocol.as_ref().unwrap().records.clone().unwrap();
        assert!(rec.records_lost > 0, "{rec:?}");
    }

    fn with_rooms(p: ProtocolParams, rooms: usize) -> ProtocolParams {
        ProtocolParams {
            rooms: RoomParams {
                rooms,
                members: 4,
                messages_per_s: 5.0,
            },
            ..p
        }
    }

    #[test]
    fn rooms_without_churn_answer_and_deliver_every_message() {
        let r = run(&with_rooms(small(60, 0), 20), &Progress::hidden());
        let f = r.protocol.as_ref().unwrap().rooms.clone().unwrap();
        assert!(f.messages > 200, "{f:?}");
        assert_eq!(f.echoed, f.messages, "{f:?}");
        assert_eq!(
            (f.errors, f.unanswered, f.takeover_notices),
            (0, 0, 0),
            "{f:?}"
        );
        assert_eq!(f.delivery_ratio, 1.0, "{f:?}");
        assert_eq!(f.members_in_room_at_end, 1.0, "{f:?}");
    }

    #[test]
    fn rooms_are_taken_over_under_churn_and_nothing_vanishes() {
        let p = ProtocolParams {
            churn_median_session: Some(Duration::from_secs(300)),
            duration: Duration::from_secs(300),
            ..with_rooms(small(100, 0), 30)
        };
        let r = run(&p, &Progress::hidden());
        let pf = r.protocol.as_ref().unwrap().clone();
        let f = pf.rooms.clone().unwrap();
        assert!(pf.churn_departures > 20, "churn happened: {pf:?}");
        assert!(f.takeover_notices > 0, "hosts died with occupants: {f:?}");
        // Every message is answered, unless a crash took it.
        assert_eq!(f.unanswered, f.entry_departed + f.host_departed, "{f:?}");
        assert!(f.echoed as f64 > 0.9 * f.messages as f64, "{f:?}");
        // Those told to leave came back.
        assert!(f.members_in_room_at_end > 0.95, "{f:?}");
    }

    #[test]
    fn closest_live_matches_brute_force() {
        let mut sim = Sim::new(small(10, 0));
        for _ in 0..300 {
            sim.spawn();
        }
        for s in (0..300).step_by(3) {
            sim.kill(s);
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(4);
        for _ in 0..200 {
            let mut k = [0u8; 32];
            rng.fill(&mut k);
            let key = Key(k);
            let brute = sim
                .live_ids
                .iter()
                .min_by_key(|id| id.distance(&key))
                .copied();
            assert_eq!(sim.closest_live(&key), brute);
        }
    }
}
