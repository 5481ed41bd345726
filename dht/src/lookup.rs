//! The iterative lookup state machine (Kademlia's node lookup).
//!
//! Lookups are the control path: a joining node looks up its own id to meet
//! its neighbours, and a periodic refresh looks up a random key in every
//! bucket that has gone quiet. (Stanzas do *not* use lookups: they are routed
//! recursively, hop by hop; see [`crate::node`].)
//!
//! The machine keeps the candidates it has heard of ordered by distance to the
//! target, keeps at most `alpha` queries in flight to the closest ones not yet
//! asked, and finishes when the `k` closest candidates it knows have all
//! answered or failed. It does no I/O and keeps no clock: the owner sends the
//! queries [`Lookup::poll_query`] hands out and reports answers and timeouts.

use crate::contact::Contact;
use crate::id::{Distance, Key, NodeId};
use std::collections::BTreeMap;

/// When a lookup may stop early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupGoal {
    /// Find the `k` closest nodes to the target (join, responsibility).
    Closest,
    /// Bucket refresh: stop once `want` nodes inside the bucket `(row, col)`
    /// of `owner`'s table are known; a far bucket fills after one answer.
    FillBucket {
        /// The table owner.
        owner: NodeId,
        /// Digit width.
        bits: u8,
        /// Bucket row.
        row: usize,
        /// Bucket column.
        col: u32,
        /// How many contacts in the bucket are enough.
        want: usize,
    },
}

/// Queries a bucket-refresh lookup may send.
const FILL_BUCKET_MAX_QUERIES: usize = 6;

/// A bucket-refresh lookup that found no member yet stops only once this many
/// of the closest nodes it knows have answered without naming one: a single
/// neighbour may share the owner's blind spot.
const FILL_BUCKET_CONFIRM: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QueryState {
    NotAsked,
    InFlight,
    Answered,
    Failed,
}

#[derive(Clone, Debug)]
struct Candidate<A> {
    contact: Contact<A>,
    state: QueryState,
}

/// One iterative lookup. See the module docs.
#[derive(Clone, Debug)]
pub struct Lookup<A> {
    target: Key,
    own: NodeId,
    k: usize,
    alpha: usize,
    goal: LookupGoal,
    candidates: BTreeMap<Distance, Candidate<A>>,
    in_flight: usize,
    queries_sent: usize,
    max_queries: usize,
    in_bucket: usize,
}

impl<A: Clone> Lookup<A> {
    /// Starts a lookup of `target` by `own`, seeded with known contacts.
    /// A `FillBucket` lookup asks one node at a time: its first answer
    /// usually fills the bucket, and parallel queries would be wasted.
    pub fn new(
        target: Key,
        own: NodeId,
        k: usize,
        alpha: usize,
        goal: LookupGoal,
        seeds: Vec<Contact<A>>,
    ) -> Self {
        let alpha = match goal {
            LookupGoal::Closest => alpha.max(1),
            LookupGoal::FillBucket { .. } => 1,
        };
        let mut l = Lookup {
            target,
            own,
            k: k.max(1),
            alpha,
            goal,
            candidates: BTreeMap::new(),
            in_flight: 0,
            queries_sent: 0,
            // A lookup converges in O(log n) rounds; this only stops a
            // pathological one (a flood of made-up contacts) from running on.
            // A refresh need not be exhaustive: a few answers from inside
            // the bucket fill it.
            max_queries: match goal {
                LookupGoal::Closest => 8 * k.max(1) + 32,
                LookupGoal::FillBucket { .. } => FILL_BUCKET_MAX_QUERIES,
            },
            in_bucket: 0,
        };
        for s in seeds {
            l.add_candidate(s);
        }
        l
    }

    /// The key being looked up.
    pub fn target(&self) -> Key {
        self.target
    }

    /// The goal this lookup was started with.
    pub fn goal(&self) -> LookupGoal {
        self.goal
    }

    /// Queries sent so far.
    pub fn queries_sent(&self) -> usize {
        self.queries_sent
    }

    fn add_candidate(&mut self, c: Contact<A>) {
        if c.id == self.own {
            return;
        }
        let d = c.id.distance(&self.target);
        if self.candidates.contains_key(&d) {
            return;
        }
        if self.in_goal_bucket(&c.id) {
            self.in_bucket += 1;
        }
        self.candidates.insert(
            d,
            Candidate {
                contact: c,
                state: QueryState::NotAsked,
            },
        );
        // Keep the candidate set bounded: far candidates that were never
        // asked cannot matter once 4k closer ones are known.
        let cap = 4 * self.k;
        while self.candidates.len() > cap {
            let far = self
                .candidates
                .iter()
                .rev()
                .find(|(_, c)| c.state == QueryState::NotAsked)
                .map(|(d, _)| *d);
            match far {
                Some(d) => {
                    self.candidates.remove(&d);
                }
                None => break,
            }
        }
    }

    /// The next contact to query, if the lookup wants one now. The caller
    /// sends it a find-node request for [`Lookup::target`].
    pub fn poll_query(&mut self) -> Option<Contact<A>> {
        if self.in_flight >= self.alpha || self.is_finished() {
            return None;
        }
        if self.queries_sent >= self.max_queries {
            return None;
        }
        let k = self.k;
        let next = self
            .candidates
            .values_mut()
            .filter(|c| c.state != QueryState::Failed)
            .take(k)
            .find(|c| c.state == QueryState::NotAsked)?;
        next.state = QueryState::InFlight;
        self.in_flight += 1;
        self.queries_sent += 1;
        Some(next.contact.clone())
    }

    fn find_mut(&mut self, id: &NodeId) -> Option<&mut Candidate<A>> {
        let d = id.distance(&self.target);
        self.candidates.get_mut(&d)
    }

    /// `from` answered with `contacts`.
    pub fn handle_response(&mut self, from: &NodeId, contacts: Vec<Contact<A>>) {
        if let Some(c) = self.find_mut(from)
            && c.state == QueryState::InFlight
        {
            c.state = QueryState::Answered;
            self.in_flight -= 1;
        }
        for c in contacts {
            self.add_candidate(c);
        }
    }

    /// The query to `from` timed out or could not be sent.
    pub fn handle_failure(&mut self, from: &NodeId) {
        if let Some(c) = self.find_mut(from)
            && c.state == QueryState::InFlight
        {
            c.state = QueryState::Failed;
            self.in_flight -= 1;
        }
    }

    fn in_goal_bucket(&self, id: &NodeId) -> bool {
        match self.goal {
            LookupGoal::FillBucket {
                owner,
                bits,
                row,
                col,
                ..
            } => owner.shared_digits(id, bits) == row && id.digit(row, bits) == col,
            LookupGoal::Closest => false,
        }
    }

    /// Whether the lookup is over: nothing in flight and nothing worth asking.
    pub fn is_finished(&self) -> bool {
        if let LookupGoal::FillBucket { want, .. } = self.goal {
            // Done once the bucket could be filled; otherwise once the
            // closest nodes known have answered (they know their
            // surroundings best: if the bucket's subtree had members, they
            // would have named them) and every node known inside the bucket
            // has been asked.
            if self.in_flight > 0 {
                return false;
            }
            if self.in_bucket >= want || self.queries_sent >= self.max_queries {
                return true;
            }
            let mut closest = self
                .candidates
                .values()
                .filter(|c| c.state != QueryState::Failed)
                .take(FILL_BUCKET_CONFIRM)
                .peekable();
            if closest.peek().is_none() {
                return true;
            }
            let confirmed = closest.all(|c| c.state == QueryState::Answered);
            let unasked_inside = self
                .candidates
                .values()
                .any(|c| c.state == QueryState::NotAsked && self.in_goal_bucket(&c.contact.id));
            return confirmed && !unasked_inside;
        }
        let pending = self
            .candidates
            .values()
            .filter(|c| c.state != QueryState::Failed)
            .take(self.k)
            .any(|c| matches!(c.state, QueryState::NotAsked | QueryState::InFlight));
        let stuck = self.queries_sent >= self.max_queries;
        self.in_flight == 0 && (!pending || stuck)
    }

    /// The closest nodes that answered, closest first (at most `k`).
    pub fn result(&self) -> Vec<Contact<A>> {
        self.candidates
            .values()
            .filter(|c| c.state == QueryState::Answered)
            .take(self.k)
            .map(|c| c.contact.clone())
            .collect()
    }

    /// Whether any node answered at all.
    pub fn any_answered(&self) -> bool {
        self.candidates
            .values()
            .any(|c| c.state == QueryState::Answered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contact::Role;
    use crate::table::{RoutingTable, TableConfig};
    use std::time::Instant;

    fn id(n: u32) -> Key {
        crate::keys::record_key(&n.to_string())
    }

    fn c(n: u32) -> Contact<u32> {
        Contact::new(id(n), n, Role::Application)
    }

    /// Runs a lookup against a static network of `n` nodes whose tables
    /// contain every other node, answering queries synchronously. Answers
    /// leave out the `dead` nodes (their neighbours noticed), but the lookup
    /// is seeded with all of them: its owner has stale information.
    fn run(n: u32, k: usize, alpha: usize, target: Key, dead: &[u32]) -> (Vec<Key>, usize) {
        let now = Instant::now();
        let tables: Vec<RoutingTable<u32>> = (0..n)
            .map(|i| {
                let mut t = RoutingTable::new(
                    id(i),
                    TableConfig {
                        k,
                        ..TableConfig::default()
                    },
                );
                for j in 0..n {
                    t.insert(c(j), now);
                }
                t
            })
            .collect();
        let mut seeds = vec![c(1)];
        seeds.extend(dead.iter().map(|d| c(*d)));
        let mut l = Lookup::new(target, id(0), k, alpha, LookupGoal::Closest, seeds);
        let mut rounds = 0;
        while !l.is_finished() {
            rounds += 1;
            assert!(rounds < 1000, "lookup does not terminate");
            let mut batch = Vec::new();
            while let Some(q) = l.poll_query() {
                batch.push(q);
            }
            assert!(batch.len() <= alpha);
            for q in batch {
                if dead.contains(&q.addr) {
                    l.handle_failure(&q.id);
                } else {
                    let answer = tables[q.addr as usize]
                        .closest(&target, k, |e| !dead.contains(&e.contact.addr));
                    l.handle_response(&q.id, answer);
                }
            }
        }
        (l.result().iter().map(|c| c.id).collect(), l.queries_sent())
    }

    #[test]
    fn finds_the_k_closest() {
        let target = id(10_000);
        let (got, _) = run(200, 8, 3, target, &[]);
        let mut all: Vec<Key> = (1..200).map(id).collect();
        all.sort_by_key(|k| k.distance(&target));
        assert_eq!(got, all[..8].to_vec());
    }

    #[test]
    fn survives_dead_nodes_among_the_closest() {
        // The five nodes closest to the target are dead and the lookup starts
        // with them as its best candidates: it must time them out and still
        // return the eight closest live nodes.
        let target = id(777);
        let mut by_distance: Vec<u32> = (2..200).collect();
        by_distance.sort_by_key(|i| id(*i).distance(&target));
        let dead: Vec<u32> = by_distance[..5].to_vec();
        let (got, _) = run(200, 8, 3, target, &dead);
        let live: Vec<Key> = by_distance[5..13].iter().map(|i| id(*i)).collect();
        let mut got_sorted = got.clone();
        got_sorted.sort_by_key(|k| k.distance(&target));
        assert_eq!(got_sorted, live);
    }

    #[test]
    fn no_seed_finishes_at_once() {
        let l: Lookup<u32> = Lookup::new(id(1), id(0), 8, 3, LookupGoal::Closest, vec![]);
        assert!(l.is_finished());
        assert!(l.result().is_empty());
    }

    #[test]
    fn fill_bucket_stops_early() {
        let own = id(0);
        let t = id(5);
        // A far bucket (row 0): any answer from a node knowing many nodes
        // fills it, so the lookup ends after the first round.
        let goal = LookupGoal::FillBucket {
            owner: own,
            bits: 4,
            row: 0,
            col: t.digit(0, 4),
            want: 2,
        };
        let mut l = Lookup::new(t, own, 8, 3, goal, vec![c(1), c(2), c(3), c(4)]);
        let q = l.poll_query().unwrap();
        assert!(l.poll_query().is_none(), "one query at a time");
        let same_bucket: Vec<Contact<u32>> = (10..400)
            .map(c)
            .filter(|x| x.id.digit(0, 4) == t.digit(0, 4) && x.id != own)
            .take(3)
            .collect();
        assert!(same_bucket.len() >= 2);
        l.handle_response(&q.id, same_bucket);
        // Other queries still in flight must be answered or fail first.
        while let Some(q) = l.poll_query() {
            l.handle_failure(&q.id);
        }
        let mut guard = 0;
        while !l.is_finished() && guard < 10 {
            guard += 1;
            if let Some(q) = l.poll_query() {
                l.handle_failure(&q.id);
            }
        }
        assert!(l.is_finished());
    }
}
