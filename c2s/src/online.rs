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
}
