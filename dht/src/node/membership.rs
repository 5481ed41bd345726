//! The control path: joining, bucket refresh and liveness.
//!
//! * Join: look up the node's own id through the bootstrap contacts. Every
//!   node asked learns of the newcomer (it heard from it), and the answers
//!   fill the newcomer's deep buckets. Then every bucket the lookup did not
//!   touch is refreshed once, which fills the shallow rows.
//! * Refresh: every `refresh_interval`, buckets nobody was heard from in
//!   that time get a lookup of a random key inside them (a `FillBucket`
//!   lookup, which stops as soon as the bucket could be filled).
//! * Liveness: any message from a node proves it alive. A full bucket asks
//!   to ping its silent oldest contact before a newcomer may replace it; a
//!   timed-out ping, query or ack counts as a failure in the table.

use super::{Event, RingNode, Timer};
use crate::contact::Contact;
use crate::id::{Key, NodeId};
use crate::lookup::{Lookup, LookupGoal};
use crate::table::{FailureOutcome, InsertOutcome};
use crate::wire::{MAX_CONTACTS_PER_ANSWER, Message};
use rand::RngExt;
use std::time::Instant;

/// Why a lookup runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LookupPurpose {
    Join,
    Refresh,
}

impl<A: Clone + PartialEq + std::fmt::Debug> RingNode<A> {
    /// Joins (or re-joins) the ring through `bootstrap`. The outcome arrives
    /// as [`Event::Joined`] or [`Event::JoinFailed`].
    pub fn join(&mut self, now: Instant, bootstrap: Vec<Contact<A>>) {
        self.leaving = false;
        let mut seeds: Vec<Contact<A>> = bootstrap
            .into_iter()
            .filter(|c| c.id != self.me.id)
            .collect();
        if !seeds.is_empty() {
            self.bootstrap = seeds.clone();
        } else {
            seeds = self.bootstrap.clone();
        }
        if !self.refresh_armed {
            self.refresh_armed = true;
            self.timers
                .push(now + self.cfg.refresh_interval, Timer::Refresh);
            self.timers
                .push(now + self.cfg.liveness_tick, Timer::Liveness);
            if self.cfg.neighbours > 0 {
                self.timers
                    .push(now + self.cfg.neighbour_interval, Timer::Neighbours);
            }
        }
        if seeds.is_empty() && self.table.is_empty() {
            // Nobody to ask: this node founds a new ring.
            self.joined = true;
            self.events.push_back(Event::Joined { contacts: 0 });
            return;
        }
        let own = self.me.id;
        self.start_lookup(now, own, LookupGoal::Closest, LookupPurpose::Join, seeds);
    }

    /// Records that `from` is alive; may ask for its bucket's oldest
    /// contact to be pinged.
    pub(super) fn heard_from(&mut self, now: Instant, from: &Contact<A>) {
        if self.leaving {
            return;
        }
        match self.table.insert(from.clone(), now) {
            InsertOutcome::PingOldest(old) => self.ping(now, old),
            InsertOutcome::Inserted => self.events.push_back(Event::ContactAdded(from.clone())),
            _ => {}
        }
    }

    /// Pings every contact in the table, so each learns this node's current
    /// contact (role and addresses) now rather than when traffic happens to
    /// flow. Edges call it after joining: nodes can only send to remote
    /// domains through edges they know. Bounded by the table size.
    pub fn announce(&mut self, now: Instant) {
        let contacts: Vec<Contact<A>> = self.table.iter().map(|e| e.contact.clone()).collect();
        for c in contacts {
            self.ping(now, c);
        }
    }

    fn ping(&mut self, now: Instant, to: Contact<A>) {
        let nonce: u64 = self.rng.random();
        self.pings.insert(nonce, to.id);
        self.timers
            .push(now + self.cfg.ping_timeout, Timer::Ping(nonce));
        self.stats.pings_sent += 1;
        self.push_to(to, Message::Ping { nonce });
    }

    pub(super) fn on_ping_timeout(&mut self, _now: Instant, nonce: u64) {
        if let Some(peer) = self.pings.remove(&nonce) {
            self.stats.ping_timeouts += 1;
            self.count_failure(peer);
        }
    }

    /// Counts a failure of `peer`; when it stops counting as live (its
    /// first failure, or its removal), tells the driver.
    pub(super) fn count_failure(&mut self, peer: NodeId) {
        match self.table.record_failure(&peer) {
            FailureOutcome::Counted(1) | FailureOutcome::Removed { .. } => {
                self.events.push_back(Event::ContactFailed(peer));
            }
            _ => {}
        }
    }

    /// Pings the silent ones among the contacts closest to this node's own
    /// id (see `NodeConfig::neighbours`).
    pub(super) fn on_neighbours(&mut self, now: Instant) {
        self.timers
            .push(now + self.cfg.neighbour_interval, Timer::Neighbours);
        if self.leaving || self.table.is_empty() {
            return;
        }
        let own = self.me.id;
        let near = self
            .table
            .closest(&own, self.cfg.neighbours, |e| e.failures == 0);
        for c in near {
            let silent = self.table.get(&c.id).is_some_and(|e| {
                now.saturating_duration_since(e.last_seen) >= self.cfg.neighbour_interval
            });
            if silent && !self.pings.values().any(|id| *id == c.id) {
                self.ping(now, c);
            }
        }
    }

    /// The paced liveness scan: pings contacts that have been silent for
    /// `liveness_interval`, looking at just enough of the table per tick to
    /// cover all of it once per interval.
    pub(super) fn on_liveness(&mut self, now: Instant) {
        self.timers
            .push(now + self.cfg.liveness_tick, Timer::Liveness);
        if self.leaving || self.table.is_empty() {
            return;
        }
        let ticks = (self.cfg.liveness_interval.as_secs_f64()
            / self.cfg.liveness_tick.as_secs_f64().max(1e-3))
        .max(1.0);
        let budget = ((self.table.len() as f64 / ticks).ceil() as usize).max(1);
        let silent = self.table.scan_silent(
            &mut self.liveness_cursor,
            budget,
            now,
            self.cfg.liveness_interval,
        );
        for c in silent {
            if !self.pings.values().any(|id| *id == c.id) {
                self.ping(now, c);
            }
        }
    }

    pub(super) fn on_find_node(&mut self, from: Contact<A>, req: u64, target: Key) {
        let n = self.cfg.table.k.min(MAX_CONTACTS_PER_ANSWER);
        let contacts = self
            .table
            .closest(&target, n, |e| e.failures == 0 && e.contact.id != from.id);
        self.push_to(from, Message::Nodes { req, contacts });
    }

    pub(super) fn on_nodes(
        &mut self,
        now: Instant,
        peer: NodeId,
        req: u64,
        contacts: Vec<Contact<A>>,
    ) {
        let Some(&(lookup_id, asked)) = self.queries.get(&req) else {
            return;
        };
        if asked != peer {
            return; // an answer from someone we did not ask: ignore it
        }
        self.queries.remove(&req);
        let contacts: Vec<Contact<A>> = contacts
            .into_iter()
            .take(MAX_CONTACTS_PER_ANSWER)
            .filter(|c| c.id != self.me.id)
            .collect();
        // Learn contacts whose bucket has room; never evict for hearsay.
        for c in &contacts {
            if !self.table.contains(&c.id) && !self.table.bucket_full_for(&c.id) && !self.leaving {
                self.table.insert(c.clone(), now);
                self.events.push_back(Event::ContactAdded(c.clone()));
            }
        }
        if let Some((lookup, _)) = self.lookups.get_mut(&lookup_id) {
            lookup.handle_response(&peer, contacts);
        }
        self.drive_lookup(now, lookup_id);
    }

    pub(super) fn on_query_timeout(&mut self, now: Instant, req: u64) {
        let Some((lookup_id, peer)) = self.queries.remove(&req) else {
            return;
        };
        self.stats.query_timeouts += 1;
        self.count_failure(peer);
        if let Some((lookup, _)) = self.lookups.get_mut(&lookup_id) {
            lookup.handle_failure(&peer);
        }
        self.drive_lookup(now, lookup_id);
    }

    pub(super) fn start_lookup(
        &mut self,
        now: Instant,
        target: Key,
        goal: LookupGoal,
        purpose: LookupPurpose,
        extra_seeds: Vec<Contact<A>>,
    ) -> bool {
        if self.lookups.len() >= self.cfg.max_lookups && purpose != LookupPurpose::Join {
            return false;
        }
        let k = self.cfg.table.k;
        let mut seeds = self.table.closest(&target, k, |e| e.failures == 0);
        for s in extra_seeds {
            if !seeds.iter().any(|c| c.id == s.id) {
                seeds.push(s);
            }
        }
        let id = self.next_req;
        self.next_req += 1;
        let lookup = Lookup::new(target, self.me.id, k, self.cfg.alpha, goal, seeds);
        self.lookups.insert(id, (lookup, purpose));
        self.stats.lookups_started += 1;
        self.drive_lookup(now, id);
        true
    }

    /// Sends whatever queries the lookup wants now; finishes it when done.
    fn drive_lookup(&mut self, now: Instant, id: u64) {
        let Some((lookup, _)) = self.lookups.get_mut(&id) else {
            return;
        };
        let target = lookup.target();
        let mut out = Vec::new();
        while let Some(c) = lookup.poll_query() {
            out.push(c);
        }
        let finished = lookup.is_finished();
        for c in out {
            let req = self.next_req;
            self.next_req += 1;
            self.queries.insert(req, (id, c.id));
            self.timers
                .push(now + self.cfg.query_timeout, Timer::Query(req));
            self.stats.lookup_queries += 1;
            self.push_to(c, Message::FindNode { req, target });
        }
        if finished {
            self.finish_lookup(now, id);
        }
    }

    fn finish_lookup(&mut self, now: Instant, id: u64) {
        let Some((lookup, purpose)) = self.lookups.remove(&id) else {
            return;
        };
        self.stats.lookups_completed += 1;
        if purpose != LookupPurpose::Join {
            self.pump_refresh(now);
            return;
        }
        if lookup.any_answered() {
            self.joined = true;
            self.events.push_back(Event::Joined {
                contacts: self.table.len(),
            });
            // Fill the rows the own-id lookup did not reach.
            self.refresh_buckets(now, usize::MAX);
        } else {
            self.events.push_back(Event::JoinFailed);
        }
    }

    pub(super) fn on_refresh(&mut self, now: Instant) {
        self.timers
            .push(now + self.cfg.refresh_interval, Timer::Refresh);
        if self.leaving {
            return;
        }
        if self.table.is_empty() {
            // Lost every contact: start over from the bootstrap contacts.
            if !self.bootstrap.is_empty() {
                let own = self.me.id;
                let seeds = self.bootstrap.clone();
                self.start_lookup(now, own, LookupGoal::Closest, LookupPurpose::Join, seeds);
            }
            return;
        }
        let budget = self.cfg.max_refresh_lookups;
        self.refresh_buckets(now, budget);
    }

    /// Queues up to `budget` stale buckets for a refresh lookup.
    fn refresh_buckets(&mut self, now: Instant, budget: usize) {
        let stale = self.table.stale_buckets(now, self.cfg.refresh_interval);
        for b in stale.into_iter().take(budget) {
            if !self.refresh_queue.contains(&b) {
                self.refresh_queue.push_back(b);
            }
        }
        self.pump_refresh(now);
    }

    /// Starts queued refresh lookups while fewer than `max_lookups` run.
    pub(super) fn pump_refresh(&mut self, now: Instant) {
        let k = self.cfg.table.k;
        let bits = self.cfg.table.bits;
        while self.lookups.len() < self.cfg.max_lookups {
            let Some((row, col)) = self.refresh_queue.pop_front() else {
                break;
            };
            let target = self.table.random_key_in_bucket(row, col, &mut self.rng);
            self.table.mark_touched(row, col, now);
            let goal = LookupGoal::FillBucket {
                owner: self.me.id,
                bits,
                row,
                col,
                want: k,
            };
            self.start_lookup(now, target, goal, LookupPurpose::Refresh, Vec::new());
        }
    }
}
