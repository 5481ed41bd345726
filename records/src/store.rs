//! One node's copies of records, over a storage [`Backend`] (redb in the
//! node, memory in tests and the simulator).
//!
//! A record is a value with a version. Copies meet each other during
//! replication and re-replication, so the store never overwrites blindly:
//! [`Store::apply`] keeps whichever copy [`Record::supersedes`] the other,
//! an order every node computes the same way. A delete is a tombstone (a
//! newer version without a value) so that a stale copy cannot bring a
//! deleted record back. The store keeps an index of names and sizes in
//! memory for its limits and for the sweeps.

use crate::Record;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

/// Size limits of one node's store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    /// Largest value of one record, bytes.
    pub max_record_bytes: usize,
    /// Most bytes (names and values) this node stores.
    pub max_store_bytes: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_record_bytes: 64 * 1024,
            max_store_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Why a read or write failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum StoreError {
    /// The value is over the per-record limit.
    #[error("record of {size} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Value size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The node's store is full.
    #[error("record store full: {used} of {max} bytes used, {size} more needed")]
    Full {
        /// Bytes stored.
        used: u64,
        /// The limit.
        max: u64,
        /// Bytes the write needs.
        size: u64,
    },
    /// The name is empty or too long.
    #[error("record names must be 1 to 1024 bytes")]
    BadName,
    /// The backend failed.
    #[error("storage: {0}")]
    Storage(String),
}

/// Where copies are kept.
pub trait Backend {
    /// Every copy held, for the index (at start).
    fn scan(&self) -> Result<Vec<(String, Record)>, StoreError>;
    /// The copy of `name`, if any.
    fn get(&self, name: &str) -> Result<Option<Record>, StoreError>;
    /// Stores `rec` as the copy of `name`: readable at once, durable at the
    /// next [`Backend::commit`] (a backend may also make it durable now).
    fn put(&mut self, name: &str, rec: &Record) -> Result<(), StoreError>;
    /// Makes every put so far durable. The replicator's owner calls it
    /// before any message about those writes (copies, acknowledgements,
    /// answers) leaves the node, so that a turn's writes cost one sync.
    fn commit(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// How many times this backend has been opened, this time included.
    fn boot(&self) -> u64;
}

/// A backend in memory (tests, the simulator).
#[derive(Clone, Debug, Default)]
pub struct MemBackend {
    copies: HashMap<String, Record>,
    boot: u64,
}

impl MemBackend {
    /// An empty backend in its first life.
    pub fn new() -> MemBackend {
        MemBackend {
            copies: HashMap::new(),
            boot: 1,
        }
    }

    /// The same copies in the backend's next life (a restart).
    pub fn reopened(mut self) -> MemBackend {
        self.boot += 1;
        self
    }
}

impl Backend for MemBackend {
    fn scan(&self) -> Result<Vec<(String, Record)>, StoreError> {
        Ok(self
            .copies
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn get(&self, name: &str) -> Result<Option<Record>, StoreError> {
        Ok(self.copies.get(name).cloned())
    }

    fn put(&mut self, name: &str, rec: &Record) -> Result<(), StoreError> {
        self.copies.insert(name.to_string(), rec.clone());
        Ok(())
    }

    fn boot(&self) -> u64 {
        self.boot
    }
}

/// The records this node holds.
pub struct Store<B> {
    backend: B,
    /// Bytes charged per record (name + value), for the limit and reports.
    sizes: BTreeMap<String, u64>,
    bytes: u64,
    limits: StoreLimits,
}

fn charge(name: &str, rec: &Record) -> u64 {
    (name.len() + rec.value.len()) as u64
}

impl<B: Backend> Store<B> {
    /// A store over `backend`, indexing what it holds.
    pub fn new(backend: B, limits: StoreLimits) -> Result<Store<B>, StoreError> {
        let mut sizes = BTreeMap::new();
        let mut bytes = 0;
        for (name, rec) in backend.scan()? {
            let c = charge(&name, &rec);
            bytes += c;
            sizes.insert(name, c);
        }
        Ok(Store {
            backend,
            sizes,
            bytes,
            limits,
        })
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Makes the writes so far durable (see [`Backend::commit`]).
    pub fn commit(&mut self) -> Result<(), StoreError> {
        self.backend.commit()
    }

    /// Gives the backend back (a restart in tests and the simulator).
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// How many times the backend has been opened, this time included.
    pub fn boot(&self) -> u64 {
        self.backend.boot()
    }

    /// The first number of a counter for this life of the node: counters
    /// that must not repeat across restarts of a node with the same id
    /// (write ids, acknowledgement and fetch numbers) start at
    /// `boot << 32`.
    pub fn counter_base(&self) -> u64 {
        self.boot() << 32
    }

    /// The limits.
    pub fn limits(&self) -> StoreLimits {
        self.limits
    }

    /// Records held (tombstones included).
    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// Bytes held (names and values).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether a copy of `name` is held (tombstones included).
    pub fn contains(&self, name: &str) -> bool {
        self.sizes.contains_key(name)
    }

    /// Names held, from `after` (exclusive) on, at most `n`.
    pub fn names_after(&self, after: Option<&str>, n: usize) -> Vec<String> {
        let range = match after {
            Some(a) => self
                .sizes
                .range::<str, _>((Bound::Excluded(a), Bound::Unbounded)),
            None => self.sizes.range::<str, _>(..),
        };
        range.take(n).map(|(k, _)| k.clone()).collect()
    }

    /// The next at most `n` names starting with `prefix`, after `cursor`
    /// (a sweep over them a batch at a time): the cursor moves on, and
    /// starts over once the names are all visited.
    pub fn prefixed_batch(
        &self,
        prefix: &str,
        cursor: &mut Option<String>,
        n: usize,
    ) -> Vec<String> {
        let from = cursor.take().unwrap_or_else(|| prefix.to_string());
        let names: Vec<String> = self
            .sizes
            .range::<str, _>((Bound::Excluded(from.as_str()), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .take(n)
            .cloned()
            .collect();
        if names.len() == n {
            *cursor = names.last().cloned();
        }
        names
    }

    /// One page of this node's live records (tombstones skipped) whose
    /// names start with `prefix`: at most `n` names after `after`
    /// (exclusive), and the cursor of the next page (`None`: no more).
    /// At most `4n + 16` names are looked at, so a page costs a bounded
    /// number of reads even among many tombstones (the page is then short,
    /// and the cursor says where to go on).
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        n: usize,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        let mut names = Vec::new();
        let mut last = None;
        for (looked, name) in self
            .sizes
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .enumerate()
        {
            if names.len() == n || looked == 4 * n + 16 {
                return Ok((names, last));
            }
            last = Some(name.clone());
            if self.get(name)?.is_some_and(|r| !r.deleted) {
                names.push(name.clone());
            }
        }
        Ok((names, None))
    }

    /// This node's copy of `name`, tombstones included.
    pub fn get(&self, name: &str) -> Result<Option<Record>, StoreError> {
        if !self.sizes.contains_key(name) {
            return Ok(None);
        }
        self.backend.get(name)
    }

    /// Checks a write against the limits without storing it.
    pub fn check(&self, name: &str, rec: &Record) -> Result<(), StoreError> {
        if name.is_empty() || name.len() > 1024 {
            return Err(StoreError::BadName);
        }
        if rec.value.len() > self.limits.max_record_bytes {
            return Err(StoreError::TooLarge {
                size: rec.value.len(),
                max: self.limits.max_record_bytes,
            });
        }
        let old = self.sizes.get(name).copied().unwrap_or(0);
        let new = charge(name, rec);
        let after = self.bytes - old + new;
        if new > old && after > self.limits.max_store_bytes {
            return Err(StoreError::Full {
                used: self.bytes,
                max: self.limits.max_store_bytes,
                size: new - old,
            });
        }
        Ok(())
    }

    /// Stores `rec` if it supersedes this node's copy. Returns whether the
    /// store changed.
    pub fn apply(&mut self, name: &str, rec: &Record) -> Result<bool, StoreError> {
        self.check(name, rec)?;
        if let Some(cur) = self.get(name)?
            && !rec.supersedes(&cur)
        {
            return Ok(false);
        }
        self.backend.put(name, rec)?;
        let new = charge(name, rec);
        let old = self.sizes.insert(name.to_string(), new).unwrap_or(0);
        self.bytes = self.bytes - old + new;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(version: u64, value: &str) -> Record {
        Record {
            version,
            deleted: false,
            value: value.as_bytes().to_vec(),
            write: None,
        }
    }

    fn store(limits: StoreLimits) -> Store<MemBackend> {
        Store::new(MemBackend::new(), limits).unwrap()
    }

    #[test]
    fn newer_versions_win_and_older_ones_are_ignored() {
        let mut s = store(StoreLimits::default());
        assert!(s.apply("a", &rec(2, "two")).unwrap());
        assert!(!s.apply("a", &rec(1, "one")).unwrap());
        assert_eq!(s.get("a").unwrap(), Some(rec(2, "two")));
        assert!(s.apply("a", &rec(3, "three")).unwrap());
        assert_eq!(s.get("a").unwrap().unwrap().value, b"three");
        assert_eq!(s.len(), 1);
        assert_eq!(s.bytes(), 1 + 5);
    }

    #[test]
    fn conflicting_writes_resolve_the_same_way_in_any_order() {
        let a = rec(5, "from node a");
        let b = rec(5, "from node b");
        let mut s1 = store(StoreLimits::default());
        let mut s2 = store(StoreLimits::default());
        s1.apply("x", &a).unwrap();
        s1.apply("x", &b).unwrap();
        s2.apply("x", &b).unwrap();
        s2.apply("x", &a).unwrap();
        assert_eq!(s1.get("x").unwrap(), s2.get("x").unwrap());
        // A tombstone of the same version beats any value.
        let t = Record {
            version: 5,
            deleted: true,
            value: vec![],
            write: None,
        };
        s1.apply("x", &t).unwrap();
        assert!(s1.get("x").unwrap().unwrap().deleted);
        assert!(!s1.apply("x", &a).unwrap());
    }

    #[test]
    fn limits_are_enforced_with_clear_errors() {
        let limits = StoreLimits {
            max_record_bytes: 10,
            max_store_bytes: 20,
        };
        let mut s = store(limits);
        let e = s.apply("big", &rec(1, "01234567890")).unwrap_err();
        assert_eq!(e, StoreError::TooLarge { size: 11, max: 10 });
        assert!(e.to_string().contains("over the limit"));
        s.apply("a", &rec(1, "0123456789")).unwrap(); // 11 bytes
        let e = s.apply("b", &rec(1, "0123456789")).unwrap_err();
        assert!(matches!(e, StoreError::Full { .. }), "{e}");
        // Shrinking an existing record is always allowed.
        s.apply("a", &rec(2, "0")).unwrap();
        s.apply("b", &rec(1, "0123456789")).unwrap();
        assert_eq!(s.apply("", &rec(1, "")).unwrap_err(), StoreError::BadName);
    }

    #[test]
    fn the_index_is_rebuilt_from_the_backend_and_counters_move_on() {
        let mut s = store(StoreLimits::default());
        s.apply("k1", &rec(1, "v1")).unwrap();
        s.apply("k2", &rec(7, "v2")).unwrap();
        let base = s.counter_base();
        let s = Store::new(s.into_backend().reopened(), StoreLimits::default()).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.bytes(), 8);
        assert_eq!(s.get("k2").unwrap(), Some(rec(7, "v2")));
        assert_eq!(s.names_after(None, 10), vec!["k1", "k2"]);
        assert_eq!(s.names_after(Some("k1"), 10), vec!["k2"]);
        assert!(s.counter_base() > base, "a new life counts from further on");
    }

    #[test]
    fn lists_page_through_live_names_of_a_prefix() {
        let mut s = store(StoreLimits::default());
        for i in 0..10 {
            s.apply(&format!("account:u{i}@r"), &rec(1, "v")).unwrap();
        }
        // Deleted accounts and other prefixes are not listed.
        let tomb = Record {
            version: 2,
            deleted: true,
            value: vec![],
            write: None,
        };
        s.apply("account:u3@r", &tomb).unwrap();
        s.apply("account", &rec(1, "v")).unwrap();
        s.apply("accounts:x", &rec(1, "v")).unwrap();
        s.apply("roster:u1@r", &rec(1, "v")).unwrap();
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let (names, next) = s.list("account:", after.as_deref(), 4).unwrap();
            assert!(names.len() <= 4);
            all.extend(names);
            pages += 1;
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let want: Vec<String> = (0..10)
            .filter(|i| *i != 3)
            .map(|i| format!("account:u{i}@r"))
            .collect();
        assert_eq!(all, want);
        assert_eq!(pages, 3);
        // A cursor before the prefix starts at the prefix.
        assert_eq!(
            s.list("account:", Some("a"), 1).unwrap().0,
            ["account:u0@r"]
        );
        assert_eq!(s.list("nothing:", None, 5).unwrap(), (vec![], None));
    }

    #[test]
    fn prefixed_batches_visit_every_name_and_start_over() {
        let mut s = store(StoreLimits::default());
        for i in 0..600 {
            s.apply(&format!("muc:room{i:03}@c"), &rec(1, "v")).unwrap();
        }
        s.apply("a-before", &rec(1, "v")).unwrap();
        s.apply("z-after", &rec(1, "v")).unwrap();
        let mut cursor = None;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let b = s.prefixed_batch("muc:", &mut cursor, 256);
            assert!(b.iter().all(|n| n.starts_with("muc:")));
            seen.extend(b);
        }
        assert_eq!(seen.len(), 600, "every room in three sweeps");
        assert_eq!(cursor, None, "the last batch was short: start over");
        assert_eq!(
            s.prefixed_batch("muc:", &mut cursor, 256)[0],
            "muc:room000@c"
        );
    }
}
