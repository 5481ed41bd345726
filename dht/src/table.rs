//! The routing table: Kademlia k-buckets over `b`-bit digits.
//!
//! Row `r` holds contacts that share exactly `r` leading digits with the
//! owner; within the row, column `c` holds those whose next digit is `c`
//! (the owner's own digit has no bucket). With `b = 1` this is plain
//! Kademlia: one bucket per shared-prefix length. Larger `b` keeps
//! `2^b - 1` buckets per row, so a hop resolves `b` bits or more instead of
//! one, at the cost of a larger table (the simulator measures both).
//!
//! Each bucket keeps at most `k` live contacts, least-recently-seen first,
//! plus a small replacement cache. When a new contact arrives at a full
//! bucket the table does not decide on its own whether the oldest contact is
//! dead: it returns [`InsertOutcome::PingOldest`] and the caller pings. A
//! reply refreshes the old contact; a failure evicts it and promotes the
//! newest replacement. Old contacts are preferred because long-lived nodes
//! tend to stay (Kademlia's key observation about churn).

use crate::contact::{Contact, Role};
use crate::id::{Distance, KEY_BITS, Key, NodeId};
use crate::route::{self, BucketView};
use rand::{Rng, RngExt};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Table parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct TableConfig {
    /// Contacts per bucket.
    pub k: usize,
    /// Bits per digit (1..=8).
    pub bits: u8,
    /// Replacement-cache entries per bucket.
    pub replacements: usize,
    /// Failures after which a contact is dropped even without a replacement.
    pub max_failures: u32,
    /// A full bucket asks to ping its oldest contact only when that contact
    /// has been silent this long; a contact heard from recently is alive.
    pub ping_if_idle: Duration,
}

/// A table parameter out of its range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableConfigError {
    /// See [`TableConfig::K_RANGE`].
    #[error("k must be 1..=256, got {0}")]
    K(usize),
    /// See [`TableConfig::BITS_RANGE`].
    #[error("bits must be 1..=8, got {0}")]
    Bits(u8),
}

impl TableConfig {
    /// The bucket sizes the table supports (the node's configuration and
    /// the simulator both check against this).
    pub const K_RANGE: std::ops::RangeInclusive<usize> = 1..=256;
    /// The digit widths the table supports.
    pub const BITS_RANGE: std::ops::RangeInclusive<u8> = 1..=8;

    /// Checks a bucket size.
    pub fn check_k(k: usize) -> Result<usize, TableConfigError> {
        if Self::K_RANGE.contains(&k) {
            Ok(k)
        } else {
            Err(TableConfigError::K(k))
        }
    }

    /// Checks a digit width.
    pub fn check_bits(bits: u8) -> Result<u8, TableConfigError> {
        if Self::BITS_RANGE.contains(&bits) {
            Ok(bits)
        } else {
            Err(TableConfigError::Bits(bits))
        }
    }

    /// Checks every parameter.
    pub fn validate(&self) -> Result<(), TableConfigError> {
        Self::check_k(self.k)?;
        Self::check_bits(self.bits)?;
        Ok(())
    }
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            k: 20,
            bits: 4,
            replacements: 8,
            max_failures: 3,
            ping_if_idle: Duration::from_secs(60),
        }
    }
}

/// A contact in the table with its liveness bookkeeping.
#[derive(Clone, Debug)]
pub struct Entry<A> {
    /// The contact.
    pub contact: Contact<A>,
    /// When we last heard from it.
    pub last_seen: Instant,
    /// Consecutive failures (no ack, no reply, failed send) since last heard.
    pub failures: u32,
}

#[derive(Clone, Debug)]
struct Bucket<A> {
    /// Least-recently-seen first.
    entries: Vec<Entry<A>>,
    /// Newest last.
    replacements: VecDeque<Contact<A>>,
    /// The oldest contact we asked the caller to ping, if any.
    pinging: Option<NodeId>,
    /// Last time a contact in this bucket was heard from or a lookup aimed here.
    touched: Option<Instant>,
}

impl<A> Default for Bucket<A> {
    fn default() -> Self {
        Bucket {
            entries: Vec::new(),
            replacements: VecDeque::new(),
            pinging: None,
            touched: None,
        }
    }
}

/// What [`RoutingTable::insert`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InsertOutcome<A> {
    /// The contact is new and took a free slot.
    Inserted,
    /// The contact was known; it is now the most recently seen.
    Updated,
    /// The bucket is full; the contact waits in the replacement cache.
    Cached,
    /// The bucket is full and its oldest contact has been silent: ping it,
    /// then report the result (a reply through `insert`, a timeout through
    /// [`RoutingTable::record_failure`]). The new contact waits meanwhile.
    PingOldest(Contact<A>),
    /// The contact is the table owner.
    Ignored,
}

/// What [`RoutingTable::record_failure`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureOutcome {
    /// The contact is not in the table.
    Unknown,
    /// The failure was counted; the contact stays (no replacement yet).
    Counted(u32),
    /// The contact was removed; `promoted` took its place, if any.
    Removed {
        /// The replacement moved into the bucket.
        promoted: Option<NodeId>,
    },
}

/// A Kademlia routing table with `b`-bit digits. See the module docs.
#[derive(Clone, Debug)]
pub struct RoutingTable<A> {
    own: NodeId,
    cfg: TableConfig,
    rows: Vec<Vec<Bucket<A>>>,
    len: usize,
}

impl<A: Clone + PartialEq> RoutingTable<A> {
    /// An empty table for the node `own`.
    ///
    /// # Panics
    /// If `cfg.bits` is not in `1..=8` or `cfg.k` is zero: a programming
    /// error, configs are validated before they reach here.
    pub fn new(own: NodeId, cfg: TableConfig) -> Self {
        assert!((1..=8).contains(&cfg.bits), "bits must be 1..=8");
        assert!(cfg.k > 0, "k must be positive");
        RoutingTable {
            own,
            cfg,
            rows: Vec::new(),
            len: 0,
        }
    }

    /// The owner's id.
    pub fn own_id(&self) -> NodeId {
        self.own
    }

    /// The table's parameters.
    pub fn config(&self) -> &TableConfig {
        &self.cfg
    }

    /// Number of contacts (replacement caches not counted).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds no contact.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of rows for this digit width.
    pub fn max_rows(&self) -> usize {
        KEY_BITS.div_ceil(self.cfg.bits as usize)
    }

    /// The bucket an id belongs to, or `None` for the owner's own id.
    pub fn bucket_index(&self, id: &NodeId) -> Option<(usize, u32)> {
        if *id == self.own {
            return None;
        }
        let row = self.own.shared_digits(id, self.cfg.bits);
        Some((row, id.digit(row, self.cfg.bits)))
    }

    fn row_width(&self, row: usize) -> u32 {
        let start = row * self.cfg.bits as usize;
        1u32 << (self.cfg.bits as usize).min(KEY_BITS - start)
    }

    fn bucket_mut(&mut self, row: usize, col: u32) -> &mut Bucket<A> {
        while self.rows.len() <= row {
            let width = self.row_width(self.rows.len());
            self.rows
                .push((0..width).map(|_| Bucket::default()).collect());
        }
        &mut self.rows[row][col as usize]
    }

    fn bucket(&self, row: usize, col: u32) -> Option<&Bucket<A>> {
        self.rows.get(row).and_then(|r| r.get(col as usize))
    }

    /// Adds or refreshes a contact we just heard from.
    pub fn insert(&mut self, contact: Contact<A>, now: Instant) -> InsertOutcome<A> {
        let Some((row, col)) = self.bucket_index(&contact.id) else {
            return InsertOutcome::Ignored;
        };
        let k = self.cfg.k;
        let cache = self.cfg.replacements;
        let idle = self.cfg.ping_if_idle;
        let bucket = self.bucket_mut(row, col);
        bucket.touched = Some(now);
        if let Some(pos) = bucket
            .entries
            .iter()
            .position(|e| e.contact.id == contact.id)
        {
            let mut e = bucket.entries.remove(pos);
            e.contact = contact;
            e.last_seen = now;
            e.failures = 0;
            if bucket.pinging == Some(e.contact.id) {
                bucket.pinging = None;
            }
            bucket.entries.push(e);
            return InsertOutcome::Updated;
        }
        if bucket.entries.len() < k {
            bucket.replacements.retain(|c| c.id != contact.id);
            bucket.entries.push(Entry {
                contact,
                last_seen: now,
                failures: 0,
            });
            self.len += 1;
            return InsertOutcome::Inserted;
        }
        // Full: remember the newcomer, maybe ask for the oldest to be pinged.
        bucket.replacements.retain(|c| c.id != contact.id);
        bucket.replacements.push_back(contact);
        while bucket.replacements.len() > cache {
            bucket.replacements.pop_front();
        }
        let oldest = &bucket.entries[0];
        if bucket.pinging.is_none() && now.saturating_duration_since(oldest.last_seen) >= idle {
            bucket.pinging = Some(oldest.contact.id);
            return InsertOutcome::PingOldest(oldest.contact.clone());
        }
        InsertOutcome::Cached
    }

    /// Counts a failure to reach `id` (no ack, no reply, failed dial). The
    /// contact is removed when a replacement is waiting or after
    /// `max_failures` consecutive failures.
    pub fn record_failure(&mut self, id: &NodeId) -> FailureOutcome {
        let Some((row, col)) = self.bucket_index(id) else {
            return FailureOutcome::Unknown;
        };
        let max = self.cfg.max_failures;
        let Some(bucket) = self.rows.get_mut(row).and_then(|r| r.get_mut(col as usize)) else {
            return FailureOutcome::Unknown;
        };
        let Some(pos) = bucket.entries.iter().position(|e| e.contact.id == *id) else {
            bucket.replacements.retain(|c| c.id != *id);
            return FailureOutcome::Unknown;
        };
        bucket.entries[pos].failures += 1;
        let failures = bucket.entries[pos].failures;
        if failures < max && bucket.replacements.is_empty() {
            return FailureOutcome::Counted(failures);
        }
        let promoted = self.remove_at(row, col, pos);
        FailureOutcome::Removed { promoted }
    }

    /// Removes a contact at once (it said goodbye, or its identity changed).
    /// Returns whether it was present.
    pub fn remove(&mut self, id: &NodeId) -> bool {
        let Some((row, col)) = self.bucket_index(id) else {
            return false;
        };
        let Some(bucket) = self.rows.get_mut(row).and_then(|r| r.get_mut(col as usize)) else {
            return false;
        };
        bucket.replacements.retain(|c| c.id != *id);
        match bucket.entries.iter().position(|e| e.contact.id == *id) {
            Some(pos) => {
                self.remove_at(row, col, pos);
                true
            }
            None => false,
        }
    }

    fn remove_at(&mut self, row: usize, col: u32, pos: usize) -> Option<NodeId> {
        let bucket = &mut self.rows[row][col as usize];
        let gone = bucket.entries.remove(pos);
        if bucket.pinging == Some(gone.contact.id) {
            bucket.pinging = None;
        }
        self.len -= 1;
        let replacement = bucket.replacements.pop_back()?;
        let id = replacement.id;
        // A replacement was heard from when cached; it starts as the newest
        // entry. Its last-seen time is unknown here, so it is marked as the
        // oldest possible: the first to be pinged if the bucket fills up.
        let last_seen = bucket
            .entries
            .first()
            .map(|e| e.last_seen)
            .or(bucket.touched)
            .unwrap_or(gone.last_seen);
        bucket.entries.insert(
            0,
            Entry {
                contact: replacement,
                last_seen,
                failures: 0,
            },
        );
        self.len += 1;
        Some(id)
    }

    /// The entry for `id`, if known.
    pub fn get(&self, id: &NodeId) -> Option<&Entry<A>> {
        let (row, col) = self.bucket_index(id)?;
        self.bucket(row, col)?
            .entries
            .iter()
            .find(|e| e.contact.id == *id)
    }

    /// Whether `id` is in the table.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.get(id).is_some()
    }

    /// Every entry, bucket by bucket.
    pub fn iter(&self) -> impl Iterator<Item = &Entry<A>> {
        self.rows
            .iter()
            .flat_map(|r| r.iter())
            .flat_map(|b| b.entries.iter())
    }

    /// The `n` contacts closest to `key` that `filter` accepts, closest first.
    ///
    /// Buckets are visited in order of distance to `key` (all members of a
    /// bucket are uniformly closer or farther than all members of another,
    /// see [`crate::route`]), so only the buckets that contribute are read.
    pub fn closest(
        &self,
        key: &Key,
        n: usize,
        filter: impl Fn(&Entry<A>) -> bool,
    ) -> Vec<Contact<A>> {
        let mut out = Vec::with_capacity(n.min(self.len));
        if n == 0 {
            return out;
        }
        let mut scratch: Vec<(Distance, &Entry<A>)> = Vec::with_capacity(self.cfg.k);
        self.visit_buckets_by_distance(key, &mut |b| {
            scratch.clear();
            scratch.extend(
                b.entries
                    .iter()
                    .filter(|e| filter(e))
                    .map(|e| (e.contact.id.distance(key), e)),
            );
            scratch.sort_unstable_by_key(|a| a.0);
            for (_, e) in scratch.iter() {
                out.push(e.contact.clone());
                if out.len() >= n {
                    return false;
                }
            }
            true
        });
        out
    }

    /// Calls `f` on every existing bucket, nearest to `key` first, until it
    /// returns false.
    fn visit_buckets_by_distance<'a>(
        &'a self,
        key: &Key,
        f: &mut dyn FnMut(&'a Bucket<A>) -> bool,
    ) {
        let rows = self.rows.len();
        let bits = self.cfg.bits;
        let first = self.own.shared_digits(key, bits).min(rows);
        // Rows from `first` down hold everything closer than the rows above.
        if !self.visit_from_row(first, key, f) {
            return;
        }
        // Rows above `first`: members differ from `key` at a shallower digit
        // the shallower the row, so farther; deepest of them first.
        for row in (0..first).rev() {
            let kd = key.digit(row, bits);
            for v in 1..self.row_width(row) {
                if let Some(b) = self.bucket(row, v ^ kd)
                    && !f(b)
                {
                    return;
                }
            }
        }
    }

    /// Visits rows `row..` in distance order: in each row the columns by
    /// ascending digit distance to `key`, with the deeper rows (the owner's
    /// own subtree) slotted in at the owner's own digit distance.
    fn visit_from_row<'a>(
        &'a self,
        row: usize,
        key: &Key,
        f: &mut dyn FnMut(&'a Bucket<A>) -> bool,
    ) -> bool {
        if row >= self.rows.len() {
            return true;
        }
        let bits = self.cfg.bits;
        let kd = key.digit(row, bits);
        let own_dd = self.own.digit(row, bits) ^ kd;
        for v in 0..self.row_width(row) {
            if v == own_dd {
                if !self.visit_from_row(row + 1, key, f) {
                    return false;
                }
            } else if let Some(b) = self.bucket(row, v ^ kd)
                && !f(b)
            {
                return false;
            }
        }
        true
    }

    /// The greedy next hop towards `key`: the closest contact that is closer
    /// than the owner, responsible-capable (not a router) and accepted by
    /// `accept`. `None` means the owner is the closest node it knows.
    pub fn next_hop(
        &self,
        key: &Key,
        accept: &mut dyn FnMut(&NodeId) -> bool,
    ) -> Option<&Contact<A>> {
        let mut view = TableView { table: self };
        let (_, (row, col, idx)) = route::next_hop(&mut view, key, accept)?;
        Some(&self.rows[row][col as usize].entries[idx].contact)
    }

    /// The closest responsible-capable contact regardless of whether it is
    /// closer than the owner. Routers use this: they never keep an envelope.
    pub fn closest_responsible(
        &self,
        key: &Key,
        accept: &mut dyn FnMut(&NodeId) -> bool,
    ) -> Option<&Contact<A>> {
        self.iter()
            .filter(|e| e.contact.role.takes_responsibility() && accept(&e.contact.id))
            .min_by_key(|e| e.contact.id.distance(key))
            .map(|e| &e.contact)
    }

    /// Number of rows that currently hold at least one contact, plus one
    /// (the row after the deepest non-empty one may still have nodes).
    pub fn depth(&self) -> usize {
        let deepest = self
            .rows
            .iter()
            .rposition(|r| r.iter().any(|b| !b.entries.is_empty()));
        match deepest {
            Some(d) => (d + 2).min(self.max_rows()),
            None => 1,
        }
    }

    /// `(row, col, contacts)` for every bucket that holds any contact.
    pub fn bucket_sizes(&self) -> Vec<(usize, u32, usize)> {
        let mut out = Vec::new();
        for (r, row) in self.rows.iter().enumerate() {
            for (c, b) in row.iter().enumerate() {
                if !b.entries.is_empty() {
                    out.push((r, c as u32, b.entries.len()));
                }
            }
        }
        out
    }

    /// Buckets within [`Self::depth`] not touched for `interval`: the ones a
    /// periodic refresh should look up. Shallow rows first.
    pub fn stale_buckets(&self, now: Instant, interval: Duration) -> Vec<(usize, u32)> {
        let mut out = Vec::new();
        for row in 0..self.depth() {
            let width = self.row_width(row);
            let own_digit = self.own.digit(row, self.cfg.bits);
            for col in 0..width {
                if col == own_digit {
                    continue;
                }
                let touched = self.bucket(row, col).and_then(|b| b.touched);
                let stale = touched.is_none_or(|t| now.saturating_duration_since(t) >= interval);
                if stale {
                    out.push((row, col));
                }
            }
        }
        out
    }

    /// Marks a bucket as just refreshed (a lookup was started for it).
    pub fn mark_touched(&mut self, row: usize, col: u32, now: Instant) {
        self.bucket_mut(row, col).touched = Some(now);
    }

    /// A uniformly random key that falls into bucket `(row, col)`.
    pub fn random_key_in_bucket<R: Rng + ?Sized>(&self, row: usize, col: u32, rng: &mut R) -> Key {
        let bits = self.cfg.bits as usize;
        let start = row * bits;
        let width = bits.min(KEY_BITS - start);
        let mut fill = [0u8; 32];
        rng.fill(&mut fill);
        self.own
            .with_suffix_from(start, &Key(fill))
            .with_bits(start, width, col)
    }

    /// Liveness scan: looks at up to `budget` entries, bucket by bucket from
    /// `cursor` (which it advances, wrapping around), and returns those
    /// silent for at least `silence`.
    pub fn scan_silent(
        &self,
        cursor: &mut usize,
        budget: usize,
        now: Instant,
        silence: Duration,
    ) -> Vec<Contact<A>> {
        let width = 1usize << self.cfg.bits;
        let total = self.rows.len() * width;
        let mut out = Vec::new();
        let mut examined = 0;
        for _ in 0..total {
            if examined >= budget {
                break;
            }
            *cursor %= total;
            let (row, col) = (*cursor / width, *cursor % width);
            *cursor += 1;
            let Some(b) = self.rows[row].get(col) else {
                continue;
            };
            for e in &b.entries {
                examined += 1;
                if now.saturating_duration_since(e.last_seen) >= silence {
                    out.push(e.contact.clone());
                }
            }
        }
        out
    }

    /// Whether the bucket that would hold `id` is full.
    pub fn bucket_full_for(&self, id: &NodeId) -> bool {
        self.bucket_index(id)
            .and_then(|(r, c)| self.bucket(r, c))
            .is_some_and(|b| b.entries.len() >= self.cfg.k)
    }

    /// Roles of contacts, for reports.
    pub fn count_role(&self, role: Role) -> usize {
        self.iter().filter(|e| e.contact.role == role).count()
    }
}

struct TableView<'a, A> {
    table: &'a RoutingTable<A>,
}

impl<A: Clone + PartialEq> BucketView for TableView<'_, A> {
    type Item = (usize, u32, usize);

    fn bits(&self) -> u8 {
        self.table.cfg.bits
    }

    fn own_id(&self) -> NodeId {
        self.table.own
    }

    fn row_count(&self) -> usize {
        self.table.rows.len()
    }

    fn closest_in_bucket(
        &mut self,
        row: usize,
        col: u32,
        key: &Key,
        accept: &mut dyn FnMut(&NodeId) -> bool,
    ) -> Option<(Distance, Self::Item)> {
        let bucket = self.table.bucket(row, col)?;
        bucket
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.contact.role.takes_responsibility() && accept(&e.contact.id))
            .map(|(i, e)| (e.contact.id.distance(key), (row, col, i)))
            .min_by(|a, b| a.0.cmp(&b.0))
    }
}

#[cfg(test)]
mod tests;
