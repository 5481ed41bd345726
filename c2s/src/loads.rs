//! Which users' records a home node holds, and what waits for the others.
//!
//! A node that has just become a user's home node (it joined, or the node
//! before it died) may hold stale copies of the user's records, or none.
//! Before it reads them for the first time it asks the record store to
//! load them from the replicas, as the services host does for a room, and
//! keeps meanwhile whatever needs them (a stanza to serve, a presence to
//! fan out, offline messages to flush). This machine does that book
//! keeping; the node runs the loads and, when one is done, the work that
//! waited, in the order it came.
//!
//! Bounds: at most [`MAX_LOADED_USERS`] users remembered as held (past
//! that the set starts over, and a user's next stanza loads again), and at
//! most [`MAX_WAITING_PER_USER`] items waiting for one user (more are
//! given back to the caller to refuse).

use jid::BareJid;
use std::collections::{HashMap, HashSet};

/// Users remembered as held.
pub const MAX_LOADED_USERS: usize = 100_000;
/// Items waiting for one user's records.
pub const MAX_WAITING_PER_USER: usize = 256;

/// The records of a user to load: their names, and the token the load's
/// completion comes back with.
#[derive(Debug, PartialEq, Eq)]
pub struct LoadRequest {
    /// The load's token.
    pub token: u64,
    /// The user's records.
    pub names: Vec<String>,
}

/// What [`UserLoads::wait`] did with an item.
#[derive(Debug, PartialEq, Eq)]
pub enum Waiting<P> {
    /// Kept; start this load (the user's first item).
    Load(LoadRequest),
    /// Kept behind the load already running.
    Queued,
    /// Not kept: the user already has [`MAX_WAITING_PER_USER`] waiting.
    Full(P),
}

/// The home node's loads of its users' records (see the module docs). `P`
/// is what waits.
#[derive(Debug)]
pub struct UserLoads<P> {
    loaded: HashSet<BareJid>,
    waiting: HashMap<u64, (BareJid, Vec<P>)>,
    by_user: HashMap<BareJid, u64>,
    next: u64,
    first: u64,
}

impl<P> UserLoads<P> {
    /// Nothing held yet; load tokens count up from `first_token` (they
    /// must not collide with other users of the record store's loads).
    pub fn new(first_token: u64) -> UserLoads<P> {
        UserLoads {
            loaded: HashSet::new(),
            waiting: HashMap::new(),
            by_user: HashMap::new(),
            next: first_token,
            first: first_token,
        }
    }

    /// Whether `user`'s records are held (their work can run now).
    pub fn is_ready(&self, user: &BareJid) -> bool {
        self.loaded.contains(user)
    }

    /// Keeps `item` until `user`'s records are held.
    pub fn wait(&mut self, user: &BareJid, item: P) -> Waiting<P> {
        if let Some(token) = self.by_user.get(user) {
            return match self.waiting.get_mut(token) {
                Some((_, list)) if list.len() < MAX_WAITING_PER_USER => {
                    list.push(item);
                    Waiting::Queued
                }
                _ => Waiting::Full(item),
            };
        }
        let token = self.next;
        self.next = self.next.wrapping_add(1).max(self.first);
        self.waiting.insert(token, (user.clone(), vec![item]));
        self.by_user.insert(user.clone(), token);
        Waiting::Load(LoadRequest {
            token,
            names: records_of(user),
        })
    }

    /// Load `token` finished (or had nothing to fetch): the user is held
    /// from now on; the work that waited, in order. `None` when the token
    /// is not one of these loads.
    pub fn done(&mut self, token: u64) -> Option<(BareJid, Vec<P>)> {
        let (user, items) = self.waiting.remove(&token)?;
        self.by_user.remove(&user);
        if self.loaded.len() >= MAX_LOADED_USERS {
            self.loaded.clear();
        }
        self.loaded.insert(user.clone());
        Some((user, items))
    }

    /// Whether `token` is one of these loads' (possibly finished).
    pub fn owns(&self, token: u64) -> bool {
        token >= self.first
    }

    /// Users whose loads are running.
    pub fn loading(&self) -> usize {
        self.waiting.len()
    }
}

/// The records a home node reads for `user`.
pub fn records_of(user: &BareJid) -> Vec<String> {
    vec![
        crate::Account::record_name(user),
        crate::roster::Roster::record_name(user.as_str()),
        crate::offline::OfflineQueue::record_name(user.as_str()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> BareJid {
        BareJid::new(s).expect("jid")
    }

    #[test]
    fn the_first_item_starts_a_load_and_the_rest_wait_behind_it_in_order() {
        let mut l = UserLoads::new(1 << 63);
        let alice = jid("alice@ring.test");
        assert!(!l.is_ready(&alice));
        let Waiting::Load(req) = l.wait(&alice, "first") else {
            panic!("the first item starts a load");
        };
        assert_eq!(req.token, 1 << 63);
        assert_eq!(
            req.names,
            [
                "account:alice@ring.test",
                "roster:alice@ring.test",
                "offline:alice@ring.test"
            ]
        );
        assert_eq!(l.wait(&alice, "second"), Waiting::Queued);
        // Another user: another load.
        let Waiting::Load(bob) = l.wait(&jid("bob@ring.test"), "b") else {
            panic!("bob's load");
        };
        assert_ne!(bob.token, req.token);
        assert_eq!(l.loading(), 2);
        assert_eq!(
            l.done(req.token),
            Some((alice.clone(), vec!["first", "second"]))
        );
        assert!(l.is_ready(&alice));
        // Finished once: a repeat or a foreign token changes nothing.
        assert_eq!(l.done(req.token), None);
        assert_eq!(l.done(7), None);
        assert!(l.owns(req.token) && !l.owns(7));
    }

    #[test]
    fn waiting_is_bounded_per_user() {
        let mut l = UserLoads::new(100);
        let alice = jid("alice@ring.test");
        assert!(matches!(l.wait(&alice, 0usize), Waiting::Load(_)));
        for i in 1..MAX_WAITING_PER_USER {
            assert_eq!(l.wait(&alice, i), Waiting::Queued);
        }
        assert_eq!(l.wait(&alice, 9999), Waiting::Full(9999));
    }

    #[test]
    fn the_set_of_held_users_is_bounded() {
        let mut l = UserLoads::new(0);
        for i in 0..MAX_LOADED_USERS + 1 {
            let u = jid(&format!("u{i}@ring.test"));
            let Waiting::Load(r) = l.wait(&u, ()) else {
                panic!("load");
            };
            l.done(r.token);
        }
        // It started over: only the last one is remembered.
        assert!(l.is_ready(&jid(&format!("u{MAX_LOADED_USERS}@ring.test"))));
        assert!(!l.is_ready(&jid("u0@ring.test")));
    }
}
