//! The ring-node state machine: membership (join, refresh, liveness) and the
//! recursive routing of envelopes with per-hop acknowledgement.
//!
//! It is sans-IO in the quinn-proto style. Inputs arrive through `handle_*`
//! methods (with the current time passed in); outputs are pulled with
//! [`RingNode::poll_transmit`] (messages to send), [`RingNode::poll_event`]
//! (deliveries, bounces, join results) and [`RingNode::poll_timeout`] (when to
//! call [`RingNode::handle_timeout`] next). Randomness comes from a seeded
//! generator. The real node drives it from tokio and libp2p; the simulator
//! drives thousands of them from an event queue. Both run this same code.
//!
//! The data path lives in `forward.rs`, the control path in `membership.rs`.

mod forward;
mod membership;
mod stats;
mod timers;

#[cfg(test)]
mod tests;

pub use stats::{Histogram, Stats};

use crate::contact::{Contact, Role};
use crate::envelope::{BounceReason, DEFAULT_TTL, Envelope, EnvelopeKind, TraceHop};
use crate::hash::IdMap;
use crate::id::{Key, NodeId};
use crate::lookup::Lookup;
use crate::table::{RoutingTable, TableConfig};
use crate::wire::Message;
use forward::{Dedup, Link};
use membership::LookupPurpose;
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use timers::{Timer, Timers};

/// Parameters of a ring node. Every bound the node keeps is here.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// Routing-table parameters (k, digit width, ...).
    pub table: TableConfig,
    /// Parallel queries per lookup.
    pub alpha: usize,
    /// How long a lookup query may go unanswered.
    pub query_timeout: Duration,
    /// How long a forwarded envelope may go unacknowledged by the next hop.
    pub ack_timeout: Duration,
    /// How long a liveness ping may go unanswered.
    pub ping_timeout: Duration,
    /// Next hops one node tries for one envelope before bouncing it.
    pub max_attempts: u8,
    /// Hop budget of envelopes this node originates.
    pub ttl: u8,
    /// Buckets not heard from for this long are refreshed by a lookup.
    pub refresh_interval: Duration,
    /// Refresh lookups started per refresh round.
    pub max_refresh_lookups: usize,
    /// Lookups running at once.
    pub max_lookups: usize,
    /// Unacknowledged envelopes per neighbour before more wait locally.
    pub window: usize,
    /// Envelopes queued in the node (in flight plus waiting), all links
    /// together. Past it new envelopes bounce with `Overloaded`; past three
    /// quarters of it [`RingNode::is_congested`] tells the driver to stop
    /// reading from the network.
    pub max_pending: usize,
    /// Remembered (origin, id) pairs for duplicate suppression.
    pub dedup_capacity: usize,
    /// Longest trace kept on an envelope.
    pub max_trace: usize,
    /// How long the origin waits for a delivery receipt (or a bounce)
    /// before it reports an envelope undelivered with `NoReceipt`.
    pub receipt_timeout: Duration,
    /// Envelopes this node originated and still awaits a receipt for; past
    /// it [`RingNode::route`] refuses new ones.
    pub max_outstanding: usize,
    /// Contacts silent for this long are pinged (paced, see
    /// `liveness_tick`) so dead ones leave the table before routing trips
    /// over them.
    pub liveness_interval: Duration,
    /// How often the liveness scan runs; each run looks at the share of the
    /// table that spreads the pings evenly over `liveness_interval`.
    pub liveness_tick: Duration,
    /// The contacts closest to this node's own id: its neighbourhood, which
    /// also holds the other copies of what this node stores. They are
    /// pinged when silent for `neighbour_interval`, so a crashed
    /// neighbour leaves replica sets (and is replaced by re-replication)
    /// within seconds instead of one `liveness_interval`.
    pub neighbours: usize,
    /// See `neighbours`.
    pub neighbour_interval: Duration,
    /// This node's role.
    pub role: Role,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            table: TableConfig::default(),
            alpha: 3,
            query_timeout: Duration::from_secs(2),
            ack_timeout: Duration::from_secs(1),
            ping_timeout: Duration::from_secs(2),
            max_attempts: 4,
            ttl: DEFAULT_TTL,
            refresh_interval: Duration::from_secs(15 * 60),
            max_refresh_lookups: 8,
            max_lookups: 16,
            window: 4096,
            max_pending: 200_000,
            dedup_capacity: 65_536,
            max_trace: 64,
            receipt_timeout: Duration::from_secs(30),
            max_outstanding: 200_000,
            liveness_interval: Duration::from_secs(10 * 60),
            liveness_tick: Duration::from_secs(10),
            neighbours: 8,
            neighbour_interval: Duration::from_secs(5),
            role: Role::Application,
        }
    }
}

/// A message the driver must send.
#[derive(Clone, Debug, PartialEq)]
pub struct Transmit<A> {
    /// The destination.
    pub to: Contact<A>,
    /// What to send.
    pub msg: Message<A>,
}

/// Something the application above the ring must know.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<A> {
    /// An envelope (stanza, record, service message) for which this node is
    /// responsible arrived.
    Delivered(Envelope),
    /// An envelope this node originated came back undelivered. `envelope`
    /// is the original (its key, kind, id and payload restored).
    Bounced {
        /// Why.
        reason: BounceReason,
        /// The original envelope.
        envelope: Envelope,
    },
    /// A probe this node sent reached the responsible node.
    ProbeDone {
        /// The probe's id (as returned by [`RingNode::probe`]).
        id: u64,
        /// The probed key.
        key: Key,
        /// Every node on the path with its arrival time, origin first and the
        /// responsible node last.
        path: Vec<TraceHop>,
    },
    /// The join lookup finished and the node has neighbours.
    Joined {
        /// Contacts in the routing table.
        contacts: usize,
    },
    /// No bootstrap contact answered; call [`RingNode::join`] again later.
    JoinFailed,
    /// A new contact entered the routing table (the driver may want to
    /// connect to it early).
    ContactAdded(Contact<A>),
    /// A contact stopped answering (a timed-out ping, query or ack): it no
    /// longer counts as live, and replica sets that held it have changed.
    ContactFailed(NodeId),
    /// An envelope this node originated was confirmed delivered by its
    /// responsible node.
    Receipt {
        /// The envelope's id.
        id: u64,
    },
}

/// Why [`RingNode::route`] refused an envelope.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The node is full; try again after [`RingNode::is_congested`] clears.
    #[error("node overloaded: {0} envelopes queued")]
    Overloaded(usize),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// The payload exceeds [`MAX_PAYLOAD_BYTES`].
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")]
    TooLarge(usize),
}

/// Largest envelope payload: a maximal stanza (512 KiB) with room to spare,
/// well inside the wire frame limit.
pub const MAX_PAYLOAD_BYTES: usize = 768 * 1024;

/// Converts monotonic instants to wall-clock microseconds for traces.
#[derive(Clone, Copy, Debug)]
struct WallClock {
    epoch: Instant,
    epoch_unix_us: u64,
}

impl WallClock {
    fn unix_us(&self, now: Instant) -> u64 {
        self.epoch_unix_us + now.saturating_duration_since(self.epoch).as_micros() as u64
    }
}

/// One node of the ring. See the module docs.
pub struct RingNode<A> {
    cfg: NodeConfig,
    me: Contact<A>,
    table: RoutingTable<A>,
    rng: Xoshiro256PlusPlus,
    clock: WallClock,
    transmits: VecDeque<Transmit<A>>,
    events: VecDeque<Event<A>>,
    timers: Timers,
    /// Outgoing data links, one per neighbour we forwarded to.
    links: IdMap<NodeId, Link<A>>,
    /// Acks owed: (neighbour, first, last), merged while contiguous.
    acks_owed: Vec<(Contact<A>, u64, u64)>,
    lookups: IdMap<u64, (Lookup<A>, LookupPurpose)>,
    /// Outstanding lookup queries: request id → (lookup id, queried node).
    queries: IdMap<u64, (u64, NodeId)>,
    /// Outstanding pings: nonce → pinged node.
    pings: IdMap<u64, NodeId>,
    /// Envelopes originated here that await a receipt or a bounce.
    outstanding: IdMap<u64, forward::Outstanding>,
    /// Receipt deadlines in send order (entries already settled are
    /// skipped lazily).
    receipt_deadlines: VecDeque<(Instant, u64)>,
    receipt_timer_armed: bool,
    /// Receipts owed to origins, flushed as one envelope per origin.
    receipts_owed: IdMap<NodeId, Vec<u64>>,
    /// Bucket cursor of the liveness scan.
    liveness_cursor: usize,
    dedup: Dedup,
    next_msg_id: u64,
    next_req: u64,
    pending: usize,
    bootstrap: Vec<Contact<A>>,
    /// Buckets waiting for a refresh lookup (started as lookups finish).
    refresh_queue: VecDeque<(usize, u32)>,
    joined: bool,
    leaving: bool,
    refresh_armed: bool,
    stats: Stats,
}

impl<A: Clone + PartialEq + std::fmt::Debug> RingNode<A> {
    /// A node that is not yet part of any ring. `now` and `unix_us` are the
    /// same moment on the monotonic and the wall clock (traces use the
    /// latter); `seed` makes every random choice reproducible.
    pub fn new(cfg: NodeConfig, me: Contact<A>, seed: u64, now: Instant, unix_us: u64) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let me = Contact {
            role: cfg.role,
            ..me
        };
        let table = RoutingTable::new(me.id, cfg.table.clone());
        let next_msg_id = rand::RngExt::random::<u64>(&mut rng) >> 1;
        let dedup = Dedup::new(cfg.dedup_capacity);
        RingNode {
            me,
            table,
            rng,
            clock: WallClock {
                epoch: now,
                epoch_unix_us: unix_us,
            },
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            timers: Timers::default(),
            links: IdMap::default(),
            acks_owed: Vec::new(),
            lookups: IdMap::default(),
            queries: IdMap::default(),
            pings: IdMap::default(),
            outstanding: IdMap::default(),
            receipt_deadlines: VecDeque::new(),
            receipt_timer_armed: false,
            receipts_owed: IdMap::default(),
            liveness_cursor: 0,
            dedup,
            next_msg_id,
            next_req: 1,
            pending: 0,
            bootstrap: Vec::new(),
            refresh_queue: VecDeque::new(),
            joined: false,
            leaving: false,
            refresh_armed: false,
            stats: Stats::default(),
            cfg,
        }
    }

    /// This node's contact.
    pub fn contact(&self) -> &Contact<A> {
        &self.me
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me.id
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// The routing table (read-only).
    pub fn table(&self) -> &RoutingTable<A> {
        &self.table
    }

    /// Counters since start.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Whether the join lookup has completed.
    pub fn is_joined(&self) -> bool {
        self.joined
    }

    /// Envelopes queued in this node (in flight or waiting for a window).
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Whether the driver should stop reading envelopes from the network
    /// until acks drain the queues (backpressure).
    pub fn is_congested(&self) -> bool {
        self.pending >= self.cfg.max_pending / 4 * 3
    }

    /// Whether nothing is in flight any more (graceful shutdown can end).
    pub fn is_drained(&self) -> bool {
        self.pending == 0 && self.transmits.is_empty()
    }

    /// Updates this node's own advertised address (for example once the
    /// driver learns its listen addresses).
    pub fn set_address(&mut self, addr: A) {
        self.me.addr = addr;
    }

    /// Envelopes originated here still awaiting a receipt or a bounce.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// The next message to send, if any. Acks and receipts owed are
    /// batched until this is called, so a driver that handles a burst of
    /// input before polling sends one ack per link and one receipt envelope
    /// per origin for the whole burst.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit<A>> {
        self.flush_receipts(now);
        self.flush_acks();
        let t = self.transmits.pop_front()?;
        if t.msg.is_data() {
            self.stats.data_msgs_sent += 1;
        } else {
            self.stats.maintenance_msgs_sent += 1;
        }
        Some(t)
    }

    /// The next event for the application, if any.
    pub fn poll_event(&mut self) -> Option<Event<A>> {
        self.events.pop_front()
    }

    /// When [`RingNode::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(t) = self.timers.pop_due(now) {
            match t {
                Timer::Ack(peer) => self.on_ack_timer(now, peer),
                Timer::Query(req) => self.on_query_timeout(now, req),
                Timer::Ping(nonce) => self.on_ping_timeout(now, nonce),
                Timer::Refresh => self.on_refresh(now),
                Timer::Receipt => self.on_receipt_timer(now),
                Timer::Liveness => self.on_liveness(now),
                Timer::Neighbours => self.on_neighbours(now),
            }
        }
    }

    /// A message arrived from `from`. The driver vouches for `from.id` (a
    /// real node derives it from the authenticated peer id).
    pub fn handle_message(&mut self, now: Instant, from: Contact<A>, msg: Message<A>) {
        if from.id == self.me.id {
            return;
        }
        let peer = from.id;
        if matches!(msg, Message::Goodbye) {
            self.on_goodbye(now, peer);
            return;
        }
        self.heard_from(now, &from);
        match msg {
            Message::Ping { nonce } => self.push_to(from, Message::Pong { nonce }),
            Message::Pong { nonce } => {
                if self.pings.get(&nonce) == Some(&peer) {
                    self.pings.remove(&nonce);
                }
            }
            Message::FindNode { req, target } => self.on_find_node(from, req, target),
            Message::Nodes { req, contacts } => self.on_nodes(now, peer, req, contacts),
            Message::Route { seq, env } => self.on_route(now, from, seq, env),
            Message::Ack { first, last } => self.on_ack(now, peer, first, last),
            Message::Goodbye => {}
        }
    }

    /// The transport lost the connection to `peer` or could not reach it:
    /// everything in flight to it is rerouted now instead of at ack timeout.
    pub fn handle_link_down(&mut self, now: Instant, peer: NodeId) {
        self.stats.link_failures += 1;
        self.fail_link(now, peer, true);
    }

    /// Sends an envelope of `kind` towards `key`'s responsible node and
    /// returns its id. With `trace`, every hop records itself.
    pub fn route(
        &mut self,
        now: Instant,
        key: Key,
        kind: EnvelopeKind,
        payload: bytes::Bytes,
        trace: bool,
    ) -> Result<u64, RouteError> {
        if self.leaving {
            return Err(RouteError::ShuttingDown);
        }
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(RouteError::TooLarge(payload.len()));
        }
        if self.pending >= self.cfg.max_pending {
            return Err(RouteError::Overloaded(self.pending));
        }
        if kind.is_tracked() && self.outstanding.len() >= self.cfg.max_outstanding {
            return Err(RouteError::Overloaded(self.outstanding.len()));
        }
        let id = self.next_msg_id;
        self.next_msg_id = self.next_msg_id.wrapping_add(1);
        let env = Envelope {
            key,
            kind,
            origin: self.me.id,
            id,
            ttl: self.cfg.ttl,
            hops: 0,
            trace: trace.then(|| {
                vec![TraceHop {
                    node: self.me.id,
                    at_us: self.clock.unix_us(now),
                }]
            }),
            orig: None,
            payload,
        };
        self.stats.originated += 1;
        if kind.is_tracked() {
            self.track(now, &env);
        }
        self.dispatch(now, forward::Pending::new(env));
        Ok(id)
    }

    /// Routes a traced probe to `key`'s responsible node; the answer comes as
    /// [`Event::ProbeDone`] (or [`Event::Bounced`]).
    pub fn probe(&mut self, now: Instant, key: Key) -> Result<u64, RouteError> {
        self.route(now, key, EnvelopeKind::Probe, bytes::Bytes::new(), true)
    }

    /// Starts leaving the ring: neighbours are told to drop this node, new
    /// envelopes are refused, and envelopes that arrive are passed on rather
    /// than kept. The driver keeps polling until [`RingNode::is_drained`] or
    /// its grace period ends, then calls [`RingNode::abandon_pending`].
    pub fn leave(&mut self, _now: Instant) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        // Everyone in the table, and every neighbour with a data link.
        let mut contacts: Vec<Contact<A>> = self.table.iter().map(|e| e.contact.clone()).collect();
        for l in self.links.values() {
            if !self.table.contains(&l.contact.id) {
                contacts.push(l.contact.clone());
            }
        }
        for c in contacts {
            self.transmits.push_back(Transmit {
                to: c,
                msg: Message::Goodbye,
            });
        }
    }

    /// Bounces (to their origins) every envelope still queued here. Used at
    /// the end of a graceful shutdown so nothing is lost silently.
    pub fn abandon_pending(&mut self, now: Instant) {
        let mut all = Vec::new();
        for link in self.links.values_mut() {
            all.extend(link.take_all());
        }
        self.pending = 0;
        for p in all {
            self.bounce(now, p.env, BounceReason::ShuttingDown);
        }
        // What this node sent and never heard back about: tell the
        // application now, there will be no later chance.
        self.expire_outstanding(now, BounceReason::ShuttingDown);
    }

    fn push_to(&mut self, to: Contact<A>, msg: Message<A>) {
        self.transmits.push_back(Transmit { to, msg });
    }
}
