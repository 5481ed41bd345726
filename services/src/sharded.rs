//! Big sets stored as many small records: a PubSub node's subscribers, a
//! room's occupants.
//!
//! A record holds at most `record_max_bytes` (64 KiB by default), and a
//! replicated write costs the whole record, so a set that can grow to
//! 100,000 members cannot live in one. [`Sharded`] spreads its entries over
//! `2^depth` shards by a keyed hash of the entry's key, writes only the
//! shards a change touched (once per turn, however many changes), and
//! doubles the number of shards when one grows past its budget.
//!
//! # Layout
//!
//! Shard `i` at depth `d` is the record `<base>#<d>.<i>`; it holds the
//! entries whose hash's top `d` bits are `i`, as a JSON object. The depth
//! and the hash's salt live in the owner's main record ([`ShardHeader`]).
//! Doubling writes every shard of the new depth and leaves the old depth's
//! records in place: a successor that finds a shard of the new depth
//! missing (the host died before it arrived) reads the same entries from
//! the parent shard, one depth up ([`ShardLoad`]). Nothing that was
//! answered with success is lost that way; the old depths are deleted with
//! the set ([`Sharded::all_names`]).
//!
//! # Why a salt
//!
//! The keys are chosen by users (JIDs). With a public hash an attacker
//! could pick many JIDs that share a prefix and force the set to its
//! deepest split, rewriting everything each time. The salt is drawn when
//! the set is created and never leaves the ring.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The deepest split: `2^16` shards.
pub const MAX_DEPTH: u8 = 16;

/// What the owner's main record says about its shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardHeader {
    /// There are `2^depth` shards.
    pub depth: u8,
    /// The hash's key.
    pub salt: u64,
}

pub use crate::error::ShardError;

/// The shard budget for a record limit: an eighth of it (8 KiB for the
/// default 64 KiB), so a change rewrites little, but at least 256 bytes.
pub fn budget_for(limit: usize) -> usize {
    (limit / 8).clamp(256, 8 * 1024).min(limit)
}

/// The shard of `key` at `depth` under `salt`: the top `depth` bits of
/// `SHA-256(salt ‖ key)`.
pub fn shard_of(key: &str, header: ShardHeader) -> u32 {
    if header.depth == 0 {
        return 0;
    }
    let mut h = Sha256::new();
    h.update(header.salt.to_be_bytes());
    h.update(key.as_bytes());
    let d = h.finalize();
    let top = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
    top >> (32 - u32::from(header.depth))
}

/// The record name of shard `index` at `depth`.
pub fn shard_name(base: &str, depth: u8, index: u32) -> String {
    format!("{base}#{depth}.{index}")
}

/// Bytes an entry adds to its shard's JSON: `"key":value,`.
fn entry_bytes<V: Serialize>(key: &str, value: &V) -> usize {
    let k = serde_json::to_string(key).map_or(key.len() + 2, |s| s.len());
    let v = serde_json::to_vec(value).map_or(0, |b| b.len());
    k + v + 2
}

/// A map from string keys to `V` kept in shards.
#[derive(Clone, Debug)]
pub struct Sharded<V> {
    base: String,
    header: ShardHeader,
    shards: Vec<BTreeMap<String, V>>,
    /// Estimated JSON size of each shard.
    bytes: Vec<usize>,
    dirty: BTreeSet<u32>,
    len: usize,
    /// A shard is split past this many bytes.
    budget: usize,
    /// No shard may be larger (the record limit).
    limit: usize,
}

impl<V: Serialize + DeserializeOwned + Clone> Sharded<V> {
    /// An empty set whose records are named after `base`. Shards split
    /// past `budget` bytes and never exceed `limit`.
    pub fn new(base: String, salt: u64, budget: usize, limit: usize) -> Sharded<V> {
        Sharded {
            base,
            header: ShardHeader { depth: 0, salt },
            shards: vec![BTreeMap::new()],
            bytes: vec![2],
            // A new set writes its (empty) first shard, so that a missing
            // shard always means one that never arrived.
            dirty: BTreeSet::from([0]),
            len: 0,
            budget: budget.min(limit).max(64),
            limit,
        }
    }

    /// What the owner's main record must say.
    pub fn header(&self) -> ShardHeader {
        self.header
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many shards there are.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.shards[shard_of(key, self.header) as usize].get(key)
    }

    /// Whether `key` is there.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Every entry, shard by shard.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Every key.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.iter().map(|(k, _)| k)
    }

    /// Every value.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Sets `key` to `value`; the previous value, if any. When the shard
    /// would be over the record limit even at the deepest split, nothing
    /// changes and the entry is refused.
    pub fn insert(&mut self, key: String, value: V) -> Result<Option<V>, ShardError> {
        let cost = entry_bytes(&key, &value);
        if cost + 2 > self.limit {
            return Err(ShardError::Full { limit: self.limit });
        }
        let mut i = shard_of(&key, self.header) as usize;
        let old = self.take(i, &key);
        self.bytes[i] += cost;
        self.shards[i].insert(key.clone(), value);
        self.len += 1;
        self.dirty.insert(i as u32);
        while self.bytes[i] > self.budget && self.shards[i].len() > 1 {
            if self.header.depth >= MAX_DEPTH {
                break;
            }
            self.split();
            i = shard_of(&key, self.header) as usize;
        }
        if self.bytes[i] > self.limit {
            // Undo: the entry goes, the old value comes back.
            self.take(i, &key);
            if let Some(v) = old {
                let c = entry_bytes(&key, &v);
                self.bytes[i] += c;
                self.shards[i].insert(key, v);
                self.len += 1;
            }
            return Err(ShardError::Full { limit: self.limit });
        }
        Ok(old)
    }

    /// Removes `key`; its value, if it was there.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let i = shard_of(key, self.header) as usize;
        let v = self.take(i, key)?;
        self.dirty.insert(i as u32);
        Some(v)
    }

    /// Changes the value of `key` in place (the shard is written). A
    /// change that would make the shard too large is undone.
    pub fn update<R>(&mut self, key: &str, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let old = self.get(key)?.clone();
        let mut v = old.clone();
        let r = f(&mut v);
        // On refusal `insert` has put the old value back.
        self.insert(key.to_string(), v).ok().map(|_| r)
    }

    /// Removes every entry (each shard is written, empty).
    pub fn clear(&mut self) {
        for i in 0..self.shards.len() {
            if !self.shards[i].is_empty() {
                self.shards[i].clear();
                self.bytes[i] = 2;
                self.dirty.insert(i as u32);
            }
        }
        self.len = 0;
    }

    fn take(&mut self, i: usize, key: &str) -> Option<V> {
        let v = self.shards[i].remove(key)?;
        self.bytes[i] = self.bytes[i].saturating_sub(entry_bytes(key, &v));
        self.len -= 1;
        Some(v)
    }

    /// Doubles the shards: shard `i` becomes `2i` and `2i + 1`, and every
    /// shard of the new depth is written.
    fn split(&mut self) {
        let header = ShardHeader {
            depth: self.header.depth + 1,
            salt: self.header.salt,
        };
        let n = self.shards.len() * 2;
        let mut shards = vec![BTreeMap::new(); n];
        let mut bytes = vec![2; n];
        for shard in std::mem::take(&mut self.shards) {
            for (k, v) in shard {
                let j = shard_of(&k, header) as usize;
                bytes[j] += entry_bytes(&k, &v);
                shards[j].insert(k, v);
            }
        }
        self.header = header;
        self.shards = shards;
        self.bytes = bytes;
        self.dirty = (0..n as u32).collect();
    }

    /// The shards changed since the last call, as records to write.
    pub fn take_writes(&mut self) -> Vec<(String, Vec<u8>)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|i| {
                let value = serde_json::to_vec(&self.shards[i as usize]).ok()?;
                Some((shard_name(&self.base, self.header.depth, i), value))
            })
            .collect()
    }

    /// Whether a change waits to be written.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Every record this set may have written (all depths up to the
    /// current one), to delete with it.
    pub fn all_names(&self) -> Vec<String> {
        (0..=self.header.depth)
            .flat_map(|d| (0..1u32 << d).map(move |i| (d, i)))
            .map(|(d, i)| shard_name(&self.base, d, i))
            .collect()
    }
}

/// Reading a stored set back: the shards of the header's depth, then, for
/// any that is missing, its parent one depth up, and so on.
#[derive(Debug)]
pub struct ShardLoad<V> {
    base: String,
    header: ShardHeader,
    /// Shards read so far, by index at the header's depth.
    found: BTreeMap<u32, BTreeMap<String, V>>,
    /// Shards still to read: (index at the header's depth, depth to read
    /// it from).
    wanted: Vec<(u32, u8)>,
    /// Shards not found at their own name, to write there.
    repaired: BTreeSet<u32>,
    budget: usize,
    limit: usize,
}

impl<V: Serialize + DeserializeOwned + Clone> ShardLoad<V> {
    /// Starts reading the set `header` describes.
    pub fn new(base: String, header: ShardHeader, budget: usize, limit: usize) -> ShardLoad<V> {
        let depth = header.depth.min(MAX_DEPTH);
        let header = ShardHeader {
            depth,
            salt: header.salt,
        };
        ShardLoad {
            base,
            header,
            found: BTreeMap::new(),
            wanted: (0..1u32 << depth).map(|i| (i, depth)).collect(),
            repaired: BTreeSet::new(),
            budget,
            limit,
        }
    }

    /// The records to read next (empty when done).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .wanted
            .iter()
            .map(|(i, d)| shard_name(&self.base, *d, i >> (self.header.depth - d)))
            .collect();
        names.dedup();
        names
    }

    /// Takes the values read (`None`: no such record, or deleted).
    pub fn offer(&mut self, values: &HashMap<String, Option<Vec<u8>>>) -> Result<(), ShardError> {
        let mut still = Vec::new();
        for (i, d) in std::mem::take(&mut self.wanted) {
            let name = shard_name(&self.base, d, i >> (self.header.depth - d));
            match values.get(&name).and_then(|v| v.as_deref()) {
                Some(bytes) => {
                    let all: BTreeMap<String, V> =
                        serde_json::from_slice(bytes).map_err(|e| ShardError::Unreadable {
                            name: name.clone(),
                            why: e.to_string(),
                        })?;
                    // A parent holds the entries of several shards: keep
                    // this one's.
                    let mine = all
                        .into_iter()
                        .filter(|(k, _)| shard_of(k, self.header) == i)
                        .collect();
                    self.found.insert(i, mine);
                    if d < self.header.depth {
                        self.repaired.insert(i);
                    }
                }
                // Not there: read the parent, or start empty at the top.
                None if d > 0 => still.push((i, d - 1)),
                None => {
                    self.found.insert(i, BTreeMap::new());
                    self.repaired.insert(i);
                }
            }
        }
        self.wanted = still;
        Ok(())
    }

    /// Whether every shard is read.
    pub fn is_done(&self) -> bool {
        self.wanted.is_empty()
    }

    /// The set, once every shard is read. Shards that came from a parent
    /// are written again at their own name.
    pub fn finish(self) -> Sharded<V> {
        let n = 1usize << self.header.depth;
        let mut set = Sharded {
            base: self.base,
            header: self.header,
            shards: vec![BTreeMap::new(); n],
            bytes: vec![2; n],
            dirty: self.repaired,
            len: 0,
            budget: self.budget.min(self.limit).max(64),
            limit: self.limit,
        };
        for (i, entries) in self.found {
            let i = i as usize;
            set.bytes[i] += entries
                .iter()
                .map(|(k, v)| entry_bytes(k, v))
                .sum::<usize>();
            set.len += entries.len();
            set.shards[i] = entries;
        }
        set
    }
}

impl<V: Serialize + DeserializeOwned + Clone> crate::load::LoadRounds for ShardLoad<V> {
    fn names(&self) -> Vec<String> {
        ShardLoad::names(self)
    }

    fn offer(
        &mut self,
        values: &HashMap<String, Option<Vec<u8>>>,
    ) -> Result<(), crate::error::StateError> {
        Ok(ShardLoad::offer(self, values)?)
    }

    fn is_done(&self) -> bool {
        ShardLoad::is_done(self)
    }
}

#[cfg(test)]
mod tests;
