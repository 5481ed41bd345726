//! The data path: recursive routing of envelopes with per-hop acks.
//!
//! Each hop forwards an envelope to its closest known contact and keeps a
//! copy until that contact acknowledges it. Envelopes to one neighbour are
//! numbered on a per-link sequence and acknowledged in ranges, so a busy
//! link costs one ack per batch instead of one per envelope. A link whose
//! oldest envelope goes unacknowledged for `ack_timeout` (or whose
//! connection the driver reports down) is declared failed: the contact is
//! marked, and everything queued on the link is dispatched again, excluding
//! the contacts already tried. After `max_attempts` next hops, or with the
//! TTL spent, the envelope is bounced to its origin. Nothing is dropped
//! without a counter saying so, and only replies (bounces, probe answers)
//! are ever dropped: a bounce is never bounced.

use super::{Event, RingNode, Timer, Transmit};
use crate::contact::Contact;
use crate::envelope::{BounceReason, Envelope, EnvelopeKind, TraceHop};
use crate::hash::IdSet;
use crate::id::NodeId;
use crate::wire::Message;
use rand::RngExt;
use std::collections::VecDeque;
use std::time::Instant;

/// An envelope this node is responsible for passing on, with the next hops
/// already tried.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub(crate) env: Envelope,
    pub(crate) tried: Vec<NodeId>,
    pub(crate) attempts: u8,
}

impl Pending {
    pub(crate) fn new(env: Envelope) -> Self {
        Pending {
            env,
            tried: Vec::new(),
            attempts: 0,
        }
    }
}

#[derive(Debug)]
struct InFlight {
    seq: u64,
    sent_at: Instant,
    p: Pending,
}

/// The sending side of the data link to one neighbour.
#[derive(Debug)]
pub(crate) struct Link<A> {
    pub(crate) contact: Contact<A>,
    next_seq: u64,
    unacked: VecDeque<InFlight>,
    waiting: VecDeque<Pending>,
    timer_armed: bool,
}

impl<A> Link<A> {
    /// A new link. Its sequence numbers start at a random point so that a
    /// late ack meant for an earlier link to the same node cannot match.
    fn new(contact: Contact<A>, first_seq: u64) -> Self {
        Link {
            contact,
            next_seq: first_seq,
            unacked: VecDeque::new(),
            waiting: VecDeque::new(),
            timer_armed: false,
        }
    }

    /// Everything queued on the link, oldest first.
    pub(crate) fn take_all(&mut self) -> Vec<Pending> {
        let mut out: Vec<Pending> = self.unacked.drain(..).map(|f| f.p).collect();
        out.extend(self.waiting.drain(..));
        self.timer_armed = false;
        out
    }
}

/// What the origin remembers of an envelope until its receipt or bounce:
/// enough to hand the original back to the application if it fails.
#[derive(Clone, Debug)]
pub(crate) struct Outstanding {
    key: crate::id::Key,
    kind: EnvelopeKind,
    payload: bytes::Bytes,
    ttl: u8,
}

/// Most envelope ids carried by one receipt envelope.
const MAX_IDS_PER_RECEIPT: usize = 4096;

/// Remembers recently delivered (origin, id, kind) triples so a duplicate
/// (possible after a reroute whose first copy did arrive) is delivered once.
/// Bounded: the oldest entries are forgotten first.
pub(crate) struct Dedup {
    set: IdSet<(NodeId, u64, u8)>,
    order: VecDeque<(NodeId, u64, u8)>,
    cap: usize,
}

impl Dedup {
    pub(crate) fn new(cap: usize) -> Self {
        Dedup {
            set: IdSet::default(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Records the triple; false if it was already there.
    fn first_time(&mut self, env: &Envelope) -> bool {
        let class = match env.kind {
            EnvelopeKind::Bounce(_) => 1,
            EnvelopeKind::ProbeReply => 2,
            EnvelopeKind::Receipt => 3,
            _ => 0,
        };
        let key = (env.origin, env.id, class);
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

impl<A: Clone + PartialEq + std::fmt::Debug> RingNode<A> {
    /// Moves an envelope one step: local delivery, a forward, or a bounce.
    pub(super) fn dispatch(&mut self, now: Instant, p: Pending) {
        let key = p.env.key;
        let responsible_capable = self.me.role.takes_responsibility() && !self.leaving;
        let tried = &p.tried;
        let table = &self.table;
        let mut accept =
            |id: &NodeId| !tried.contains(id) && table.get(id).is_some_and(|e| e.failures == 0);
        let hop = if responsible_capable {
            self.table.next_hop(&key, &mut accept)
        } else {
            self.table.closest_responsible(&key, &mut accept)
        }
        .cloned();
        match hop {
            None if responsible_capable => self.deliver_local(now, p.env),
            None => self.bounce(now, p.env, BounceReason::Unreachable),
            Some(_) if p.env.ttl == 0 => {
                self.stats.ttl_expired += 1;
                self.bounce(now, p.env, BounceReason::TtlExpired)
            }
            Some(_) if p.attempts >= self.cfg.max_attempts => {
                self.bounce(now, p.env, BounceReason::Timeout)
            }
            Some(next) => {
                if p.attempts > 0 {
                    self.stats.rerouted += 1;
                }
                self.stats.forwarded += 1;
                self.enqueue(now, next, p);
            }
        }
    }

    /// Puts an envelope on the link to `next`, sending it now if the link's
    /// window allows.
    fn enqueue(&mut self, now: Instant, next: Contact<A>, mut p: Pending) {
        p.tried.push(next.id);
        p.attempts += 1;
        self.pending += 1;
        let window = self.cfg.window;
        let rng = &mut self.rng;
        let link = self
            .links
            .entry(next.id)
            .or_insert_with(|| Link::new(next.clone(), rng.random::<u64>() >> 1));
        link.contact = next;
        if link.unacked.len() < window && link.waiting.is_empty() {
            let t = send_now(link, now, p);
            if !link.timer_armed {
                link.timer_armed = true;
                self.timers
                    .push(now + self.cfg.ack_timeout, Timer::Ack(link.contact.id));
            }
            self.transmits.push_back(t);
        } else {
            link.waiting.push_back(p);
        }
    }

    /// A routed envelope arrived from `from` (already known to the table).
    pub(super) fn on_route(&mut self, now: Instant, from: Contact<A>, seq: u64, mut env: Envelope) {
        self.owe_ack(from.clone(), seq);
        if self.pending >= self.cfg.max_pending {
            self.stats.overloaded += 1;
            self.bounce(now, env, BounceReason::Overloaded);
            return;
        }
        if let Some(trace) = env.trace.as_mut()
            && trace.len() < self.cfg.max_trace
        {
            trace.push(TraceHop {
                node: self.me.id,
                at_us: self.clock.unix_us(now),
            });
        }
        let mut p = Pending::new(env);
        p.tried.push(from.id);
        self.dispatch(now, p);
    }

    fn owe_ack(&mut self, from: Contact<A>, seq: u64) {
        for (c, _, last) in self.acks_owed.iter_mut().rev() {
            if c.id == from.id {
                if *last + 1 == seq {
                    *last = seq;
                    return;
                }
                break;
            }
        }
        self.acks_owed.push((from, seq, seq));
    }

    pub(super) fn flush_acks(&mut self) {
        for (to, first, last) in self.acks_owed.drain(..) {
            self.transmits.push_back(Transmit {
                to,
                msg: Message::Ack { first, last },
            });
        }
    }

    /// `peer` acknowledged sequence numbers `first..=last`.
    pub(super) fn on_ack(&mut self, now: Instant, peer: NodeId, first: u64, last: u64) {
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        let before = link.unacked.len();
        // Acks almost always cover a prefix of the queue (it is ordered by
        // sequence number); a range in the middle only follows a loss.
        if link.unacked.front().is_some_and(|f| f.seq >= first) {
            while link.unacked.front().is_some_and(|f| f.seq <= last) {
                if let Some(f) = link.unacked.pop_front() {
                    self.stats
                        .hop_rtt_us
                        .record(now.saturating_duration_since(f.sent_at).as_micros() as u64);
                }
            }
        } else {
            let mut kept = VecDeque::with_capacity(link.unacked.len());
            for f in link.unacked.drain(..) {
                if f.seq >= first && f.seq <= last {
                    self.stats
                        .hop_rtt_us
                        .record(now.saturating_duration_since(f.sent_at).as_micros() as u64);
                } else {
                    kept.push_back(f);
                }
            }
            link.unacked = kept;
        }
        let acked = before - link.unacked.len();
        self.pending -= acked;
        self.stats.acked += acked as u64;
        // Refill the window from the waiting queue.
        let window = self.cfg.window;
        while link.unacked.len() < window {
            let Some(p) = link.waiting.pop_front() else {
                break;
            };
            let t = send_now(link, now, p);
            self.transmits.push_back(t);
        }
        if !link.unacked.is_empty() && !link.timer_armed {
            link.timer_armed = true;
            let at = link.unacked.front().map(|f| f.sent_at).unwrap_or(now) + self.cfg.ack_timeout;
            self.timers.push(at, Timer::Ack(peer));
        }
    }

    pub(super) fn on_ack_timer(&mut self, now: Instant, peer: NodeId) {
        let timeout = self.cfg.ack_timeout;
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        link.timer_armed = false;
        let Some(front) = link.unacked.front() else {
            return;
        };
        let due = front.sent_at + timeout;
        if due > now {
            link.timer_armed = true;
            self.timers.push(due, Timer::Ack(peer));
            return;
        }
        self.stats.ack_timeouts += 1;
        self.fail_link(now, peer, true);
    }

    /// Declares the link to `peer` failed and redispatches what it held.
    pub(super) fn fail_link(&mut self, now: Instant, peer: NodeId, count_failure: bool) {
        if count_failure {
            self.count_failure(peer);
        }
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        let held = link.take_all();
        self.links.remove(&peer);
        self.pending -= held.len();
        for p in held {
            self.dispatch(now, p);
        }
    }

    /// The envelope ends here: this node is the closest it knows.
    fn deliver_local(&mut self, now: Instant, env: Envelope) {
        match env.kind {
            EnvelopeKind::Bounce(reason) => {
                if env.key != self.me.id {
                    self.stats.orphaned_replies += 1;
                    return;
                }
                if !self.dedup.first_time(&env) {
                    self.stats.duplicates += 1;
                    return;
                }
                let (key, kind) = env.orig.unwrap_or((env.key, EnvelopeKind::Stanza));
                if kind.is_tracked() && self.outstanding.remove(&env.id).is_none() {
                    // Already settled: a receipt came (the envelope was
                    // delivered after all) or the origin gave up on it.
                    self.stats.late_bounces += 1;
                    return;
                }
                self.stats.bounces_received += 1;
                let envelope = Envelope {
                    key,
                    kind,
                    orig: None,
                    ..env
                };
                self.events.push_back(Event::Bounced { reason, envelope });
            }
            EnvelopeKind::ProbeReply => {
                if env.key != self.me.id {
                    self.stats.orphaned_replies += 1;
                    return;
                }
                if !self.dedup.first_time(&env) {
                    self.stats.duplicates += 1;
                    return;
                }
                if self.outstanding.remove(&env.id).is_none() {
                    // Already reported failed (it took longer than the
                    // receipt timeout): one outcome per probe.
                    self.stats.late_bounces += 1;
                    return;
                }
                self.settle_front();
                let key = env.orig.map(|o| o.0).unwrap_or(env.key);
                let path = decode_path(&env.payload);
                self.events.push_back(Event::ProbeDone {
                    id: env.id,
                    key,
                    path,
                });
            }
            EnvelopeKind::Probe => {
                if !self.dedup.first_time(&env) {
                    self.stats.duplicates += 1;
                    return;
                }
                self.stats.delivered += 1;
                self.stats.delivered_hops += env.hops as u64;
                self.stats.delivered_by_hops[(env.hops as usize).min(31)] += 1;
                let path = env.trace.unwrap_or_default();
                let reply = Envelope {
                    key: env.origin,
                    kind: EnvelopeKind::ProbeReply,
                    origin: self.me.id,
                    id: env.id,
                    ttl: self.cfg.ttl,
                    hops: 0,
                    trace: None,
                    orig: Some((env.key, EnvelopeKind::Probe)),
                    payload: encode_path(&path).into(),
                };
                self.dispatch(now, Pending::new(reply));
            }
            EnvelopeKind::Receipt => {
                if env.key != self.me.id {
                    self.stats.orphaned_replies += 1;
                    return;
                }
                for chunk in env.payload.chunks_exact(8) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(chunk);
                    let id = u64::from_be_bytes(b);
                    if self.outstanding.remove(&id).is_some() {
                        self.stats.receipts_received += 1;
                        self.events.push_back(Event::Receipt { id });
                    }
                }
                self.settle_front();
            }
            EnvelopeKind::Stanza | EnvelopeKind::Record | EnvelopeKind::Service(_) => {
                if !self.dedup.first_time(&env) {
                    self.stats.duplicates += 1;
                    return;
                }
                self.stats.delivered += 1;
                self.stats.delivered_hops += env.hops as u64;
                self.stats.delivered_by_hops[(env.hops as usize).min(31)] += 1;
                self.receipts_owed
                    .entry(env.origin)
                    .or_default()
                    .push(env.id);
                self.events.push_back(Event::Delivered(env));
            }
        }
    }

    /// Sends `env` back to its origin. Replies are never bounced: a reply
    /// that cannot be delivered is dropped and counted.
    pub(super) fn bounce(&mut self, now: Instant, env: Envelope, reason: BounceReason) {
        if env.kind.is_reply() {
            self.stats.dropped_replies += 1;
            return;
        }
        self.stats.bounced += 1;
        let b = Envelope {
            key: env.origin,
            kind: EnvelopeKind::Bounce(reason),
            origin: env.origin,
            id: env.id,
            ttl: self.cfg.ttl,
            hops: 0,
            trace: None,
            orig: Some((env.key, env.kind)),
            payload: env.payload,
        };
        if b.key == self.me.id {
            self.deliver_local(now, b);
        } else {
            self.dispatch(now, Pending::new(b));
        }
    }

    /// Starts tracking an envelope this node originated.
    pub(super) fn track(&mut self, now: Instant, env: &Envelope) {
        self.outstanding.insert(
            env.id,
            Outstanding {
                key: env.key,
                kind: env.kind,
                payload: env.payload.clone(),
                ttl: env.ttl,
            },
        );
        let deadline = now + self.cfg.receipt_timeout;
        self.receipt_deadlines.push_back((deadline, env.id));
        if !self.receipt_timer_armed {
            self.receipt_timer_armed = true;
            self.timers.push(deadline, Timer::Receipt);
        }
    }

    /// Drops settled entries from the front of the deadline queue.
    fn settle_front(&mut self) {
        while let Some((_, id)) = self.receipt_deadlines.front() {
            if self.outstanding.contains_key(id) {
                break;
            }
            self.receipt_deadlines.pop_front();
        }
    }

    /// Reports every envelope whose receipt deadline passed.
    pub(super) fn on_receipt_timer(&mut self, now: Instant) {
        self.receipt_timer_armed = false;
        while let Some(&(deadline, id)) = self.receipt_deadlines.front() {
            if deadline > now {
                break;
            }
            self.receipt_deadlines.pop_front();
            if let Some(o) = self.outstanding.remove(&id) {
                self.stats.receipt_timeouts += 1;
                self.report_failed(id, o, BounceReason::NoReceipt);
            }
        }
        self.settle_front();
        if let Some(&(deadline, _)) = self.receipt_deadlines.front() {
            self.receipt_timer_armed = true;
            self.timers.push(deadline, Timer::Receipt);
        }
    }

    /// Gives up on everything outstanding (shutdown).
    pub(super) fn expire_outstanding(&mut self, _now: Instant, reason: BounceReason) {
        let all: Vec<(u64, Outstanding)> = self.outstanding.drain().collect();
        self.receipt_deadlines.clear();
        for (id, o) in all {
            self.report_failed(id, o, reason);
        }
    }

    fn report_failed(&mut self, id: u64, o: Outstanding, reason: BounceReason) {
        let envelope = Envelope {
            key: o.key,
            kind: o.kind,
            origin: self.me.id,
            id,
            ttl: o.ttl,
            hops: 0,
            trace: None,
            orig: None,
            payload: o.payload,
        };
        self.events.push_back(Event::Bounced { reason, envelope });
    }

    /// Sends the receipts owed, one envelope per origin (split if long).
    pub(super) fn flush_receipts(&mut self, now: Instant) {
        if self.receipts_owed.is_empty() {
            return;
        }
        let owed: Vec<(NodeId, Vec<u64>)> = self.receipts_owed.drain().collect();
        for (origin, ids) in owed {
            for chunk in ids.chunks(MAX_IDS_PER_RECEIPT) {
                let mut payload = Vec::with_capacity(chunk.len() * 8);
                for id in chunk {
                    payload.extend_from_slice(&id.to_be_bytes());
                }
                let id = self.next_msg_id;
                self.next_msg_id = self.next_msg_id.wrapping_add(1);
                let env = Envelope {
                    key: origin,
                    kind: EnvelopeKind::Receipt,
                    origin: self.me.id,
                    id,
                    ttl: self.cfg.ttl,
                    hops: 0,
                    trace: None,
                    orig: None,
                    payload: payload.into(),
                };
                self.stats.receipts_sent += 1;
                self.dispatch(now, Pending::new(env));
            }
        }
    }

    /// `peer` is leaving the ring.
    pub(super) fn on_goodbye(&mut self, now: Instant, peer: NodeId) {
        self.stats.goodbyes_received += 1;
        self.table.remove(&peer);
        self.fail_link(now, peer, false);
    }
}

/// Moves `p` onto the link's in-flight queue and builds its transmit.
fn send_now<A: Clone>(link: &mut Link<A>, now: Instant, p: Pending) -> Transmit<A> {
    let seq = link.next_seq;
    link.next_seq += 1;
    let mut wire = p.env.clone();
    wire.ttl = wire.ttl.saturating_sub(1);
    wire.hops = wire.hops.saturating_add(1);
    link.unacked.push_back(InFlight {
        seq,
        sent_at: now,
        p,
    });
    Transmit {
        to: link.contact.clone(),
        msg: Message::Route { seq, env: wire },
    }
}

fn encode_path(path: &[TraceHop]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() * 40);
    for h in path {
        out.extend_from_slice(h.node.as_bytes());
        out.extend_from_slice(&h.at_us.to_be_bytes());
    }
    out
}

/// Decodes a probe answer's path; a malformed tail is ignored.
fn decode_path(bytes: &[u8]) -> Vec<TraceHop> {
    bytes
        .chunks_exact(40)
        .map(|c| {
            let mut node = [0u8; 32];
            node.copy_from_slice(&c[..32]);
            let mut at = [0u8; 8];
            at.copy_from_slice(&c[32..]);
            TraceHop {
                node: crate::id::Key(node),
                at_us: u64::from_be_bytes(at),
            }
        })
        .collect()
}
