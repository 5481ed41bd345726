//! The greedy routing decision, shared by the real routing table and the
//! simulator's lazily built tables.
//!
//! A node `x` routing towards key `t` wants its known contact closest to `t`.
//! Scanning a thousand contacts per hop is too slow for a forwarding hot path,
//! but the bucket structure orders contacts for free. With `b`-bit digits, let
//! `r` be the number of digits `x` shares with `t`:
//!
//! * buckets in rows above `r` hold nodes that differ from `t` in a digit where
//!   `x` agrees with it: all farther than `x`, never useful;
//! * in row `r` (and every deeper row `r'`), bucket `c` holds nodes whose
//!   distance to `t` at that digit is `c ^ t[r']` while `x`'s is
//!   `x[r'] ^ t[r']`: the bucket is closer than `x` as a whole exactly when
//!   `c ^ t[r'] < x[r'] ^ t[r']`, and buckets of a shallower row dominate all
//!   deeper ones.
//!
//! So visiting rows from `r` downwards, and in each row the columns by
//! ascending `c ^ t[row]` (only those beating `x`), the first bucket with an
//! acceptable member contains the closest acceptable contact overall. The
//! proof that greedy routing then always ends at the globally closest node
//! when every bucket holds `min(k, nodes in its subtree)` contacts is the same
//! observation: if any closer node exists, its whole bucket is closer and that
//! bucket is non-empty.

use crate::id::{Distance, Key, NodeId};

/// Read access to a routing table organised in rows of `2^bits` buckets.
pub trait BucketView {
    /// What a candidate next hop is (a contact reference, an index, ...).
    type Item;
    /// Bits per digit.
    fn bits(&self) -> u8;
    /// The table owner's id.
    fn own_id(&self) -> NodeId;
    /// Number of rows that may hold contacts (deeper rows are empty).
    fn row_count(&self) -> usize;
    /// The member of bucket `(row, col)` closest to `key` among those `accept`
    /// lets through, with its distance.
    fn closest_in_bucket(
        &mut self,
        row: usize,
        col: u32,
        key: &Key,
        accept: &mut dyn FnMut(&NodeId) -> bool,
    ) -> Option<(Distance, Self::Item)>;
}

/// The greedy next hop: the acceptable contact closest to `key` that is
/// strictly closer to it than the table's owner, or `None` when the owner is
/// the closest node it knows of (it is then responsible for `key`).
pub fn next_hop<V: BucketView>(
    view: &mut V,
    key: &Key,
    accept: &mut dyn FnMut(&NodeId) -> bool,
) -> Option<(Distance, V::Item)> {
    let own = view.own_id();
    if own == *key {
        return None;
    }
    let bits = view.bits();
    let first_row = own.shared_digits(key, bits);
    let rows = view.row_count();
    let mut row = first_row;
    while row < rows {
        let own_digit = own.digit(row, bits);
        let key_digit = key.digit(row, bits);
        // Columns ordered by their digit distance to the key; only those whose
        // distance beats the owner's own digit distance are closer.
        let own_dd = own_digit ^ key_digit;
        for dd in 0..own_dd {
            let col = dd ^ key_digit;
            if let Some(found) = view.closest_in_bucket(row, col, key, accept) {
                return Some(found);
            }
        }
        row += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A brute-force view over an explicit list of ids, for cross-checking.
    struct ListView {
        own: NodeId,
        bits: u8,
        ids: Vec<NodeId>,
    }

    impl BucketView for ListView {
        type Item = NodeId;
        fn bits(&self) -> u8 {
            self.bits
        }
        fn own_id(&self) -> NodeId {
            self.own
        }
        fn row_count(&self) -> usize {
            256usize.div_ceil(self.bits as usize)
        }
        fn closest_in_bucket(
            &mut self,
            row: usize,
            col: u32,
            key: &Key,
            accept: &mut dyn FnMut(&NodeId) -> bool,
        ) -> Option<(Distance, NodeId)> {
            self.ids
                .iter()
                .filter(|id| {
                    **id != self.own
                        && self.own.shared_digits(id, self.bits) == row
                        && id.digit(row, self.bits) == col
                })
                .filter(|id| accept(id))
                .map(|id| (id.distance(key), *id))
                .min()
        }
    }

    fn k(bytes: &[u8]) -> Key {
        let mut out = [0u8; 32];
        out[..bytes.len()].copy_from_slice(bytes);
        Key(out)
    }

    #[test]
    fn picks_globally_closest_known_contact() {
        for bits in 1..=8u8 {
            let own = k(&[0b0000_0000]);
            let ids: Vec<Key> = (1u8..=255).map(|b| k(&[b, b.wrapping_mul(7)])).collect();
            let mut view = ListView {
                own,
                bits,
                ids: ids.clone(),
            };
            for t in [0x13u8, 0x80, 0xff, 0x01, 0x40] {
                let key = k(&[t, 0x55]);
                let got = next_hop(&mut view, &key, &mut |_| true).map(|(_, id)| id);
                let best = ids.iter().min_by_key(|id| id.distance(&key)).copied();
                let best = best.filter(|b| b.distance(&key) < own.distance(&key));
                assert_eq!(got, best, "bits={bits} t={t:#x}");
            }
        }
    }

    #[test]
    fn exclusion_moves_to_next_closest() {
        let own = k(&[0x00]);
        let a = k(&[0xf0]);
        let b = k(&[0xf8]);
        let mut view = ListView {
            own,
            bits: 4,
            ids: vec![a, b],
        };
        let key = k(&[0xf1]);
        assert_eq!(
            next_hop(&mut view, &key, &mut |_| true).map(|x| x.1),
            Some(a)
        );
        assert_eq!(
            next_hop(&mut view, &key, &mut |id| *id != a).map(|x| x.1),
            Some(b)
        );
        assert_eq!(next_hop(&mut view, &key, &mut |_| false), None);
    }

    #[test]
    fn owner_responsible_for_its_own_id() {
        let own = k(&[0x42]);
        let mut view = ListView {
            own,
            bits: 1,
            ids: vec![k(&[0x43])],
        };
        assert!(next_hop(&mut view, &own, &mut |_| true).is_none());
    }
}
