//! A room's occupants: kept in shards ([`crate::sharded`]) by real JID, so
//! a room of 10,000 occupants is stored in records that each stay small,
//! and a join or a presence change rewrites one of them; indexed by nick
//! in memory for the lookups a room makes on every stanza.

use super::roles::Role;
use crate::sharded::{ShardError, ShardHeader, Sharded};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// One occupant: its nick, real JID, role and last presence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Occupant {
    pub nick: String,
    /// The occupant's real (full) JID.
    pub jid: String,
    pub role: Role,
    /// The children of the occupant's last presence (show, status, caps),
    /// serialised, repeated in the presence the room broadcasts.
    pub presence: Vec<String>,
}

/// The occupants of one room.
#[derive(Clone, Debug)]
pub struct Occupants {
    by_jid: Sharded<Occupant>,
    /// Nick -> real JID.
    by_nick: HashMap<String, String>,
}

impl Occupants {
    /// The occupants stored as `set`.
    pub fn from_set(set: Sharded<Occupant>) -> Occupants {
        let by_nick = set
            .values()
            .map(|o| (o.nick.clone(), o.jid.clone()))
            .collect();
        Occupants {
            by_jid: set,
            by_nick,
        }
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.by_jid.len()
    }

    /// Whether the room is empty.
    pub fn is_empty(&self) -> bool {
        self.by_jid.is_empty()
    }

    /// The occupant whose real JID is `jid`.
    pub fn get(&self, jid: &str) -> Option<&Occupant> {
        self.by_jid.get(jid)
    }

    /// The occupant called `nick`.
    pub fn by_nick(&self, nick: &str) -> Option<&Occupant> {
        self.by_nick.get(nick).and_then(|j| self.by_jid.get(j))
    }

    /// Every occupant.
    pub fn iter(&self) -> impl Iterator<Item = &Occupant> {
        self.by_jid.values()
    }

    /// Every occupant's real JID.
    pub fn jids(&self) -> Vec<String> {
        self.by_jid.keys().cloned().collect()
    }

    /// Adds (or replaces) an occupant; refused when its shard cannot hold
    /// it.
    pub fn insert(&mut self, o: Occupant) -> Result<(), ShardError> {
        let (jid, nick) = (o.jid.clone(), o.nick.clone());
        if let Some(old) = self.by_jid.insert(jid.clone(), o)? {
            self.by_nick.remove(&old.nick);
        }
        self.by_nick.insert(nick, jid);
        Ok(())
    }

    /// Takes the occupant whose real JID is `jid` out.
    pub fn remove(&mut self, jid: &str) -> Option<Occupant> {
        let o = self.by_jid.remove(jid)?;
        self.by_nick.remove(&o.nick);
        Some(o)
    }

    /// Changes an occupant in place; `None` (and nothing changed) when it
    /// is not there or the change does not fit its shard. The real JID
    /// must stay.
    pub fn update<R>(&mut self, jid: &str, f: impl FnOnce(&mut Occupant) -> R) -> Option<R> {
        let mut o = self.get(jid)?.clone();
        let r = f(&mut o);
        debug_assert_eq!(o.jid, jid);
        self.insert(o).ok().map(|_| r)
    }

    /// Takes everyone out.
    pub fn drain(&mut self) -> Vec<Occupant> {
        let all: Vec<Occupant> = self.iter().cloned().collect();
        self.by_jid.clear();
        self.by_nick.clear();
        all
    }

    /// Where the shards are (for the room's main record).
    pub fn header(&self) -> ShardHeader {
        self.by_jid.header()
    }

    /// The shards changed since the last call.
    pub fn take_writes(&mut self) -> Vec<(String, Vec<u8>)> {
        self.by_jid.take_writes()
    }

    /// Every record the occupants may have been written to.
    pub fn all_names(&self) -> Vec<String> {
        self.by_jid.all_names()
    }
}
