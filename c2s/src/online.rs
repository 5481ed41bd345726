//! The available sessions of a user and their last presence, as the home
//! node stores them (record `presence:<bare JID>`): the home node keeps
//! them in memory to answer probes; the record lets its successor, when
//! the home node dies, find sessions that died with it (no lease comes for
//! them) and tell the user's contacts they went offline.

use jid::{BareJid, FullJid};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use xmpp_parsers::minidom::Element;

/// The record name prefix.
pub use ring_records::PRESENCE_PREFIX;

/// Sessions listed at most (a user's resources are bounded lower).
const MAX_SESSIONS: usize = 1000;

/// One available session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Online {
    /// Its full JID.
    pub jid: String,
    /// Its last available presence, serialised.
    pub xml: String,
}

/// A user's available sessions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnlineSessions {
    /// The sessions.
    pub sessions: Vec<Online>,
}

impl OnlineSessions {
    /// The record name of `bare`'s sessions.
    pub fn record_name(bare: &str) -> String {
        format!("{PRESENCE_PREFIX}{bare}")
    }

    /// The record value.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a record value (unreadable: none).
    pub fn decode(bytes: &[u8]) -> OnlineSessions {
        let mut s: OnlineSessions = serde_json::from_slice(bytes).unwrap_or_default();
        s.sessions.truncate(MAX_SESSIONS);
        s
    }
}

/// The last available presence of every session a home node knows,
/// grouped by user: a user's presences (to answer a probe, or to store
/// them) cost that user's sessions, not every session of the node.
#[derive(Debug, Default)]
pub struct LastPresences {
    by_user: HashMap<BareJid, HashMap<FullJid, Element>>,
}

impl LastPresences {
    /// Records `full`'s last available presence.
    pub fn insert(&mut self, full: FullJid, presence: Element) {
        self.by_user
            .entry(full.to_bare())
            .or_default()
            .insert(full, presence);
    }

    /// Forgets `full`; its presence, if it had one.
    pub fn remove(&mut self, full: &FullJid) -> Option<Element> {
        let bare = full.to_bare();
        let sessions = self.by_user.get_mut(&bare)?;
        let p = sessions.remove(full);
        if sessions.is_empty() {
            self.by_user.remove(&bare);
        }
        p
    }

    /// Whether `full` has one.
    pub fn contains(&self, full: &FullJid) -> bool {
        self.by_user
            .get(&full.to_bare())
            .is_some_and(|s| s.contains_key(full))
    }

    /// `user`'s sessions with their presences.
    pub fn of<'a>(&'a self, user: &BareJid) -> impl Iterator<Item = (&'a FullJid, &'a Element)> {
        self.by_user.get(user).into_iter().flatten()
    }

    /// Sessions in all.
    pub fn len(&self) -> usize {
        self.by_user.values().map(HashMap::len).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }
}

/// What the home node's sweep over stored `presence:` records makes of one
/// session a record lists.
#[derive(Debug, PartialEq)]
pub enum Listed {
    /// Its presence is held here already: nothing to do.
    Known,
    /// A lease names it: it lives on; keep this presence for probes.
    Adopt(Element),
    /// Neither yet: its access node's next renewal may still come.
    Waiting,
    /// No lease came within two renewal periods: it died with the previous
    /// home node, which was also its access node. Its contacts are to be
    /// told it went offline (this was its last presence).
    Gone(Element),
}

/// The sessions a new home node finds listed in its users' `presence:`
/// records but knows nothing of, and since when (see [`Listed`]).
#[derive(Debug, Default)]
pub struct OrphanSweep {
    since: HashMap<FullJid, std::time::Instant>,
}

impl OrphanSweep {
    /// A session listed at `now` with its last `presence`; `known`: its
    /// presence is held; `leased`: a lease names it.
    pub fn listed(
        &mut self,
        now: std::time::Instant,
        full: &FullJid,
        presence: Element,
        known: bool,
        leased: bool,
    ) -> Listed {
        if known {
            return Listed::Known;
        }
        if leased {
            self.since.remove(full);
            return Listed::Adopt(presence);
        }
        // A live session's next renewal reaches the new home node within a
        // renewal period of it becoming the home node.
        let since = *self.since.entry(full.clone()).or_insert(now);
        if now.duration_since(since) >= 2 * crate::lease::LEASE_RENEW {
            self.since.remove(full);
            return Listed::Gone(presence);
        }
        Listed::Waiting
    }

    /// After a batch: forgets sessions not `seen` again for long (their
    /// records changed).
    pub fn end_batch(
        &mut self,
        now: std::time::Instant,
        seen: &std::collections::HashSet<FullJid>,
    ) {
        self.since.retain(|f, t| {
            seen.contains(f) || now.duration_since(*t) < 10 * crate::lease::LEASE_TTL
        });
    }

    /// Sessions waiting.
    pub fn len(&self) -> usize {
        self.since.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_junk() {
        let s = OnlineSessions {
            sessions: vec![Online {
                jid: "alice@ring.test/pc".into(),
                xml: "<presence xmlns='jabber:client'/>".into(),
            }],
        };
        assert_eq!(OnlineSessions::decode(&s.encode()), s);
        assert_eq!(OnlineSessions::decode(b"junk"), OnlineSessions::default());
        assert_eq!(OnlineSessions::record_name("a@b"), "presence:a@b");
    }

    #[test]
    fn last_presences_are_kept_per_user() {
        let mut l = LastPresences::default();
        let p = |xml: &str| -> Element { xml.parse().expect("presence") };
        let f = |j: &str| FullJid::new(j).expect("jid");
        l.insert(f("a@r/1"), p("<presence xmlns='jabber:client'/>"));
        l.insert(
            f("a@r/2"),
            p("<presence xmlns='jabber:client'><show>away</show></presence>"),
        );
        l.insert(f("b@r/1"), p("<presence xmlns='jabber:client'/>"));
        let a = BareJid::new("a@r").expect("jid");
        let mut mine: Vec<String> = l.of(&a).map(|(j, _)| j.to_string()).collect();
        mine.sort();
        assert_eq!(mine, ["a@r/1", "a@r/2"]);
        assert_eq!(l.len(), 3);
        assert!(l.contains(&f("b@r/1")));
        assert!(l.remove(&f("a@r/1")).is_some());
        assert!(l.remove(&f("a@r/1")).is_none());
        assert!(l.remove(&f("a@r/2")).is_some());
        assert_eq!(l.of(&a).count(), 0);
        assert!(l.remove(&f("b@r/1")).is_some());
        assert!(l.is_empty());
    }

    #[test]
    fn orphans_are_declared_gone_after_two_renewal_periods_unless_a_lease_comes() {
        use crate::lease::{LEASE_RENEW, LEASE_TTL};
        let t0 = std::time::Instant::now();
        let p: Element = "<presence xmlns='jabber:client'/>"
            .parse()
            .expect("presence");
        let a = FullJid::new("a@r/1").expect("jid");
        let b = FullJid::new("b@r/1").expect("jid");
        let mut s = OrphanSweep::default();
        // Held already, or leased: no waiting.
        assert_eq!(s.listed(t0, &a, p.clone(), true, false), Listed::Known);
        assert_eq!(
            s.listed(t0, &a, p.clone(), false, true),
            Listed::Adopt(p.clone())
        );
        // Unknown: waits, then is gone two renewal periods after first seen.
        assert_eq!(s.listed(t0, &b, p.clone(), false, false), Listed::Waiting);
        assert_eq!(
            s.listed(t0 + LEASE_RENEW, &b, p.clone(), false, false),
            Listed::Waiting
        );
        assert_eq!(
            s.listed(t0 + 2 * LEASE_RENEW, &b, p.clone(), false, false),
            Listed::Gone(p.clone())
        );
        assert!(s.is_empty());
        // A lease in time saves it.
        assert_eq!(s.listed(t0, &b, p.clone(), false, false), Listed::Waiting);
        assert_eq!(
            s.listed(t0 + LEASE_RENEW, &b, p.clone(), false, true),
            Listed::Adopt(p.clone())
        );
        assert!(s.is_empty());
        // One not listed again is forgotten after a while.
        assert_eq!(s.listed(t0, &a, p.clone(), false, false), Listed::Waiting);
        let none = std::collections::HashSet::new();
        s.end_batch(t0 + LEASE_TTL, &none);
        assert_eq!(s.len(), 1);
        s.end_batch(t0 + 10 * LEASE_TTL, &none);
        assert!(s.is_empty());
    }
}
