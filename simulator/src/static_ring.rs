//! Static mode: the routing tables a converged ring would hold, without
//! running the protocol, so a million nodes fit in memory.
//!
//! Every bucket `(row, col)` of node `x` holds `min(k, n)` contacts drawn at
//! random from the `n` nodes of its subtree (the ids that share `x`'s first
//! `row` digits and then have digit `col`). Tables are never stored: all ids
//! are kept sorted, a subtree is a contiguous range found by binary search,
//! and a bucket's sample is drawn on demand from a generator seeded by
//! `(seed, node, row, col)`, so the same bucket always holds the same
//! contacts. Routing uses the dht crate's own next-hop decision through the
//! [`BucketView`] trait, so this measures the product's routing logic.

use crate::progress::Progress;
use crate::report::{HopCounts, Report};
use dht::id::{Distance, KEY_BITS, KEY_BYTES, Key};
use dht::route::{self, BucketView};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, RngExt, SeedableRng};
use std::time::Instant;

/// Parameters of a static run.
#[derive(Clone, Debug)]
pub struct StaticParams {
    /// Ring size.
    pub nodes: usize,
    /// Random (source, key) routes to measure.
    pub lookups: usize,
    /// Bucket size.
    pub k: usize,
    /// Bits per digit.
    pub bits: u8,
    /// Seed for ids, samples and routes.
    pub seed: u64,
    /// Worker threads (results do not depend on it).
    pub threads: usize,
}

/// The sorted ids of a converged ring.
pub struct StaticRing {
    ids: Vec<Key>,
    /// The first 64 bits of every id: binary searches on prefixes of up to
    /// 64 bits run over this 8-byte array instead of the 32-byte ids.
    heads: Vec<u64>,
    k: usize,
    bits: u8,
    seed: u64,
}

/// Mixes a few integers into one seed (splitmix64 finaliser).
fn mix(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for p in parts {
        h ^= p
            .wrapping_add(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(h << 6)
            .wrapping_add(h >> 2);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h = z ^ (z >> 31);
    }
    h
}

fn random_key<R: Rng + ?Sized>(rng: &mut R) -> Key {
    let mut b = [0u8; KEY_BYTES];
    rng.fill(&mut b);
    Key(b)
}

impl StaticRing {
    /// A ring of `n` random ids (drawn from `seed`).
    pub fn random(n: usize, k: usize, bits: u8, seed: u64) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(&[seed, 1]));
        let mut ids: Vec<Key> = (0..n).map(|_| random_key(&mut rng)).collect();
        ids.sort_unstable();
        ids.dedup();
        let heads = ids.iter().map(|id| id.prefix_u64()).collect();
        StaticRing {
            ids,
            heads,
            k,
            bits,
            seed,
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the ring is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The id of node `i`.
    pub fn id(&self, i: usize) -> Key {
        self.ids[i]
    }

    /// Index range of the ids whose first `prefix_bits` bits equal `key`'s.
    fn prefix_range(&self, key: &Key, prefix_bits: usize) -> (usize, usize) {
        if prefix_bits <= 64 {
            let head = key.prefix_u64();
            let mask = if prefix_bits == 0 {
                0
            } else {
                u64::MAX << (64 - prefix_bits)
            };
            let lo_head = head & mask;
            let hi_head = lo_head | !mask;
            let lo = self.heads.partition_point(|h| *h < lo_head);
            let hi = lo + self.heads[lo..].partition_point(|h| *h <= hi_head);
            return (lo, hi);
        }
        let zeros = Key::ZERO;
        let ones = Key([0xff; KEY_BYTES]);
        let lo_key = key.with_suffix_from(prefix_bits, &zeros);
        let hi_key = key.with_suffix_from(prefix_bits, &ones);
        let lo = self.ids.partition_point(|id| *id < lo_key);
        let hi = lo + self.ids[lo..].partition_point(|id| *id <= hi_key);
        (lo, hi)
    }

    /// Index of the node globally closest to `key` (XOR).
    ///
    /// The closest id shares the longest prefix with `key` of all ids, and
    /// the longest shared prefix is attained by one of `key`'s two
    /// neighbours in sorted order. So: find the neighbours, take the range
    /// of ids sharing that prefix (usually a handful) and scan it.
    pub fn closest(&self, key: &Key) -> usize {
        let pos = self.ids.partition_point(|id| id < key);
        let mut cpl = 0;
        if pos > 0 {
            cpl = cpl.max(self.ids[pos - 1].common_prefix_len(key));
        }
        if pos < self.ids.len() {
            cpl = cpl.max(self.ids[pos].common_prefix_len(key));
        }
        let (lo, hi) = self.prefix_range(key, cpl);
        if hi - lo <= 64 {
            return (lo..hi)
                .min_by_key(|i| self.ids[*i].distance(key))
                .unwrap_or(lo);
        }
        self.closest_by_descent(key)
    }

    /// The same answer by descending the implicit binary trie of the
    /// sorted ids, O(log² n); the fallback for huge shared-prefix groups.
    fn closest_by_descent(&self, key: &Key) -> usize {
        let (mut lo, mut hi) = (0, self.ids.len());
        let mut bit = 0;
        while hi - lo > 1 && bit < KEY_BITS {
            // Within [lo, hi) all ids share `bit` leading bits; split by the next.
            let split = if bit < 64 {
                let m = 1u64 << (63 - bit);
                lo + self.heads[lo..hi].partition_point(|h| h & m == 0)
            } else {
                lo + self.ids[lo..hi].partition_point(|id| !id.bit(bit))
            };
            let want_one = key.bit(bit);
            if want_one && split < hi {
                lo = split;
            } else if !want_one && split > lo {
                hi = split;
            }
            bit += 1;
        }
        lo
    }

    /// Number of rows node `i`'s table can have non-empty: one more than the
    /// digits it shares with its nearest neighbour in sorted order.
    fn rows_of(&self, i: usize) -> usize {
        let me = &self.ids[i];
        let mut cpl = 0;
        if i > 0 {
            cpl = cpl.max(me.common_prefix_len(&self.ids[i - 1]));
        }
        if i + 1 < self.ids.len() {
            cpl = cpl.max(me.common_prefix_len(&self.ids[i + 1]));
        }
        (cpl / self.bits as usize + 1).min(KEY_BITS.div_ceil(self.bits as usize))
    }

    /// Routes from node `src` towards `key` greedily; returns (hops, last node).
    pub fn route(&self, src: usize, key: &Key) -> (u32, usize) {
        let mut cur = src;
        let mut hops = 0;
        loop {
            let mut view = NodeView {
                ring: self,
                node: cur,
            };
            match route::next_hop(&mut view, key, &mut |_| true) {
                Some((_, next)) => {
                    cur = next;
                    hops += 1;
                    // Greedy XOR routing strictly decreases distance, so
                    // this cannot loop; the cap only guards against bugs.
                    if hops > 2 * KEY_BITS as u32 {
                        return (hops, cur);
                    }
                }
                None => return (hops, cur),
            }
        }
    }

    /// Exact mean routing-table size over all nodes: each bucket holds
    /// `min(k, subtree size)`. Computed row by row from the common-prefix
    /// lengths of neighbouring sorted ids, in O(n · rows).
    pub fn mean_table_size(&self) -> f64 {
        let n = self.ids.len();
        if n < 2 {
            return 0.0;
        }
        let b = self.bits as usize;
        let k = self.k as u64;
        // cpl[i] = common prefix length of ids[i] and ids[i+1].
        let cpl: Vec<usize> = self
            .ids
            .windows(2)
            .map(|w| w[0].common_prefix_len(&w[1]))
            .collect();
        let max_cpl = cpl.iter().copied().max().unwrap_or(0);
        let mut total: u64 = 0;
        let rows = (max_cpl / b + 1).min(KEY_BITS.div_ceil(b));
        let mut runs: Vec<u64> = Vec::new();
        for row in 0..rows {
            let group_bits = row * b; // ids in a group share this many bits
            let digit_end = ((row + 1) * b).min(KEY_BITS); // a run also shares the digit
            let mut start = 0;
            while start < n {
                // Extent of the group starting at `start`.
                let mut end = start + 1;
                while end < n && cpl[end - 1] >= group_bits {
                    end += 1;
                }
                // Runs of equal digit inside the group.
                runs.clear();
                let mut run_start = start;
                for i in start + 1..=end {
                    if i == end || cpl[i - 1] < digit_end {
                        runs.push((i - run_start) as u64);
                        run_start = i;
                    }
                }
                let s: u64 = runs.iter().map(|c| (*c).min(k)).sum();
                for c in &runs {
                    total += c * (s - (*c).min(k));
                }
                start = end;
            }
        }
        total as f64 / n as f64
    }
}

/// Node `node`'s table as the dht routing code sees it.
struct NodeView<'a> {
    ring: &'a StaticRing,
    node: usize,
}

impl BucketView for NodeView<'_> {
    type Item = usize;

    fn bits(&self) -> u8 {
        self.ring.bits
    }

    fn own_id(&self) -> Key {
        self.ring.ids[self.node]
    }

    fn row_count(&self) -> usize {
        self.ring.rows_of(self.node)
    }

    fn closest_in_bucket(
        &mut self,
        row: usize,
        col: u32,
        key: &Key,
        accept: &mut dyn FnMut(&Key) -> bool,
    ) -> Option<(Distance, usize)> {
        let ring = self.ring;
        // Members are compared by the first 64 bits of their distance (read
        // from the compact `heads` array, which stays in cache far better
        // than the ids); the full distance only breaks ties.
        let key_head = key.prefix_u64();
        let mut best: Option<(u64, usize)> = None;
        ring.for_each_member(self.node, row, col, |i| {
            let d = ring.heads[i] ^ key_head;
            let better = match best {
                None => true,
                Some((bd, bi)) => {
                    d < bd || (d == bd && ring.ids[i].distance(key) < ring.ids[bi].distance(key))
                }
            };
            if better && accept(&ring.ids[i]) {
                best = Some((d, i));
            }
        });
        best.map(|(_, i)| (ring.ids[i].distance(key), i))
    }
}

impl StaticRing {
    /// Calls `f` with the index of every contact in bucket `(row, col)` of
    /// node `node`: the whole subtree when it has at most `k` nodes, else a
    /// fixed random sample of `k` of them (Floyd's algorithm, seeded by
    /// node and bucket, so the bucket always holds the same contacts).
    fn for_each_member(&self, node: usize, row: usize, col: u32, mut f: impl FnMut(usize)) {
        let b = self.bits as usize;
        let start = row * b;
        let width = b.min(KEY_BITS - start);
        let prefix = self.ids[node].with_bits(start, width, col);
        let (lo, hi) = self.prefix_range(&prefix, start + width);
        let size = hi - lo;
        if size <= self.k {
            (lo..hi).for_each(f);
            return;
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(&[
            self.seed,
            node as u64,
            row as u64,
            col as u64,
        ]));
        let mut chosen: Vec<usize> = Vec::with_capacity(self.k);
        for j in size - self.k..size {
            let t = rng.random_range(0..=j);
            let pick = if chosen.contains(&t) { j } else { t };
            chosen.push(pick);
            f(lo + pick);
        }
    }
}

/// Runs a static simulation and reports it.
pub fn run(p: &StaticParams, progress: &Progress) -> Report {
    let started = Instant::now();
    progress.stage("building ids");
    let ring = StaticRing::random(p.nodes, p.k, p.bits, p.seed);
    progress.stage("counting table sizes");
    let mean_table_size = ring.mean_table_size();
    progress.start("routing", p.lookups as u64);
    let threads = p.threads.max(1);
    let chunk = p.lookups.div_ceil(threads).max(1);
    let results: Vec<(HopCounts, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let ring = &ring;
                let progress = progress.clone();
                s.spawn(move || {
                    let mut hops = HopCounts::default();
                    let mut ok = 0u64;
                    let from = (t * chunk).min(p.lookups);
                    let to = ((t + 1) * chunk).min(p.lookups);
                    for m in from..to {
                        // Each lookup has its own generator: results do not
                        // depend on the thread count.
                        let mut rng =
                            Xoshiro256PlusPlus::seed_from_u64(mix(&[p.seed, 2, m as u64]));
                        let src = rng.random_range(0..ring.len());
                        let key = random_key(&mut rng);
                        let (h, last) = ring.route(src, &key);
                        hops.record(h);
                        if last == ring.closest(&key) {
                            ok += 1;
                        }
                        if m % 4096 == 0 {
                            progress.inc(4096);
                        }
                    }
                    (hops, ok)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("routing thread panicked"))
            .collect()
    });
    progress.finish();
    let mut hops = HopCounts::default();
    let mut ok = 0;
    for (h, o) in results {
        hops.merge(&h);
        ok += o;
    }
    let mut r = Report::new(
        "static",
        ring.len() as u64,
        p.lookups as u64,
        p.k,
        p.bits,
        p.seed,
    )
    .with_hops(&hops);
    r.success_rate = if p.lookups == 0 {
        1.0
    } else {
        ok as f64 / p.lookups as f64
    };
    r.mean_table_size = mean_table_size;
    r.elapsed_s = started.elapsed().as_secs_f64();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute-force bucket contents for cross-checking the lazy view.
    fn subtree_size(ring: &StaticRing, node: usize, row: usize, col: u32) -> usize {
        let b = ring.bits;
        let me = ring.id(node);
        ring.ids
            .iter()
            .filter(|id| **id != me && me.shared_digits(id, b) == row && id.digit(row, b) == col)
            .count()
    }

    #[test]
    fn closest_matches_brute_force() {
        let ring = StaticRing::random(500, 20, 4, 3);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        for _ in 0..300 {
            let key = random_key(&mut rng);
            let brute = (0..ring.len())
                .min_by_key(|i| ring.id(*i).distance(&key))
                .unwrap();
            assert_eq!(ring.closest(&key), brute);
            assert_eq!(ring.closest_by_descent(&key), brute);
            // Keys right at an id, and one bit away from it.
            let at = ring.id(brute);
            assert_eq!(ring.closest(&at), brute);
            let near = at.with_bits(255, 1, (!at.bit(255)) as u32);
            assert_eq!(ring.closest(&near), brute);
        }
    }

    #[test]
    fn mean_table_size_matches_brute_force() {
        for bits in [1u8, 2, 3, 4, 5] {
            for k in [1usize, 3, 20] {
                let ring = StaticRing::random(300, k, bits, 11);
                let mut total = 0usize;
                for node in 0..ring.len() {
                    // Subtree sizes of every bucket of this node.
                    let me = ring.id(node);
                    let mut sizes: std::collections::HashMap<(usize, u32), usize> =
                        Default::default();
                    for (j, other) in ring.ids.iter().enumerate() {
                        if j != node {
                            let row = me.shared_digits(other, bits);
                            *sizes.entry((row, other.digit(row, bits))).or_default() += 1;
                        }
                    }
                    total += sizes.values().map(|s| (*s).min(k)).sum::<usize>();
                }
                let brute = total as f64 / ring.len() as f64;
                assert!(
                    (ring.mean_table_size() - brute).abs() < 1e-9,
                    "bits={bits} k={k}"
                );
            }
        }
    }

    #[test]
    fn buckets_hold_min_k_subtree_and_are_stable() {
        let ring = StaticRing::random(2000, 5, 2, 5);
        for node in [0usize, 17, 1999] {
            for row in 0..4 {
                for col in 0..4u32 {
                    if col == ring.id(node).digit(row, 2) {
                        continue;
                    }
                    let mut seen = Vec::new();
                    ring.for_each_member(node, row, col, |i| seen.push(i));
                    assert_eq!(seen.len(), subtree_size(&ring, node, row, col).min(5));
                    let me = ring.id(node);
                    for i in &seen {
                        let id = ring.id(*i);
                        assert!(
                            me.shared_digits(&id, 2) == row && id.digit(row, 2) == col,
                            "member outside the bucket"
                        );
                    }
                    let mut sorted = seen.clone();
                    sorted.sort();
                    sorted.dedup();
                    assert_eq!(sorted.len(), seen.len(), "sample members are distinct");
                    let mut again = Vec::new();
                    ring.for_each_member(node, row, col, |i| again.push(i));
                    assert_eq!(again, seen, "the same bucket holds the same contacts");
                }
            }
        }
    }

    #[test]
    fn converged_tables_route_to_the_closest_node() {
        for (k, bits) in [(20usize, 1u8), (20, 4), (4, 3), (1, 1)] {
            let p = StaticParams {
                nodes: 5000,
                lookups: 3000,
                k,
                bits,
                seed: 1,
                threads: 2,
            };
            let r = run(&p, &Progress::hidden());
            assert_eq!(r.success_rate, 1.0, "k={k} bits={bits}");
            assert_eq!(r.hop_histogram.iter().sum::<u64>(), 3000);
        }
    }

    #[test]
    fn same_seed_same_numbers_any_thread_count() {
        let p = StaticParams {
            nodes: 3000,
            lookups: 2000,
            k: 20,
            bits: 4,
            seed: 42,
            threads: 1,
        };
        let a = run(&p, &Progress::hidden());
        let b = run(
            &StaticParams {
                threads: 3,
                ..p.clone()
            },
            &Progress::hidden(),
        );
        assert_eq!(a.hop_histogram, b.hop_histogram);
        assert_eq!(a.mean_table_size, b.mean_table_size);
        let c = run(&StaticParams { seed: 43, ..p }, &Progress::hidden());
        assert_ne!(a.hop_histogram, c.hop_histogram);
    }

    #[test]
    fn larger_digits_mean_fewer_hops_and_bigger_tables() {
        let base = StaticParams {
            nodes: 20_000,
            lookups: 4000,
            k: 20,
            bits: 1,
            seed: 3,
            threads: 2,
        };
        let b1 = run(&base, &Progress::hidden());
        let b4 = run(&StaticParams { bits: 4, ..base }, &Progress::hidden());
        assert!(
            b4.mean_hops < b1.mean_hops,
            "{} vs {}",
            b4.mean_hops,
            b1.mean_hops
        );
        assert!(b4.mean_table_size > b1.mean_table_size);
    }
}
