//! The ring node's timer wheel: a min-heap of deadlines with lazy deletion.
//!
//! Timers are cheap to add and never removed eagerly: when one fires, the
//! handler checks whether what it guards is still pending (an ack already
//! received, a query already answered) and ignores it otherwise. This keeps
//! the hot path (sending an envelope) free of heap surgery.

use crate::id::NodeId;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// What a timer guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// The oldest unacknowledged envelope on the link to this node.
    Ack(NodeId),
    /// A lookup query, by request id.
    Query(u64),
    /// A liveness ping, by nonce.
    Ping(u64),
    /// The periodic bucket refresh.
    Refresh,
    /// The oldest receipt deadline.
    Receipt,
    /// The paced liveness scan.
    Liveness,
    /// The neighbourhood check.
    Neighbours,
}

#[derive(Default, Debug)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, Timer)>>,
    seq: u64,
}

impl Timers {
    pub(crate) fn push(&mut self, at: Instant, t: Timer) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, t)));
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Pops the next timer due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse((_, _, t))| t),
            _ => None,
        }
    }
}
