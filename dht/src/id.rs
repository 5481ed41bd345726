//! 256-bit identifiers, the XOR metric and digit helpers.
//!
//! Node ids and stanza keys live in one space: a node is responsible for the
//! keys it is closest to. "Closest" is XOR distance interpreted as a 256-bit
//! big-endian unsigned number, which makes it a metric (d(a,a) = 0, symmetric,
//! triangle inequality) and, crucially for routing, *unidirectional*: for any
//! key and distance there is exactly one id at that distance, so greedy routes
//! towards a key converge on the same node from everywhere.
//!
//! Routing tables split the id space into `b`-bit digits (b = 1 is plain
//! Kademlia). [`Key::digit`] and [`Key::shared_digits`] are the helpers the
//! table and the simulator use to find a contact's bucket.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Number of bits in a key.
pub const KEY_BITS: usize = 256;
/// Number of bytes in a key.
pub const KEY_BYTES: usize = KEY_BITS / 8;

/// A point in the 256-bit id space: a node id or the key of a stanza target.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; KEY_BYTES]);

// Keys travel as one 32-byte string rather than serde's default 32-element
// tuple: one length byte more on the wire, but decoding copies 32 bytes at
// once instead of visiting each, which matters on the forwarding path.
impl Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("32 bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Key, E> {
                let arr: [u8; KEY_BYTES] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(Key(arr))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Key, E> {
                self.visit_bytes(&v)
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(self, mut seq: S) -> Result<Key, S::Error> {
                // Self-describing formats (JSON) may present bytes as a list.
                let mut out = [0u8; KEY_BYTES];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                if seq.next_element::<u8>()?.is_some() {
                    return Err(serde::de::Error::invalid_length(KEY_BYTES + 1, &self));
                }
                Ok(Key(out))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// A node's id. Ids and keys share one space, so this is an alias that
/// documents intent at use sites.
pub type NodeId = Key;

/// XOR distance between two keys, ordered as a big-endian unsigned integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Distance(pub [u8; KEY_BYTES]);

/// Compares two 256-bit big-endian numbers as four 64-bit words: ordering
/// keys and distances is the inner loop of routing and of the simulator, and
/// this is several times faster than a byte-wise `memcmp` call.
#[inline]
fn cmp_be(a: &[u8; KEY_BYTES], b: &[u8; KEY_BYTES]) -> std::cmp::Ordering {
    for i in 0..4 {
        let x = u64::from_be_bytes(a[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let y = u64::from_be_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        if x != y {
            return x.cmp(&y);
        }
    }
    std::cmp::Ordering::Equal
}

impl Ord for Key {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        cmp_be(&self.0, &other.0)
    }
}

impl PartialOrd for Key {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Distance {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        cmp_be(&self.0, &other.0)
    }
}

impl PartialOrd for Distance {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Key {
    /// The all-zero key.
    pub const ZERO: Key = Key([0; KEY_BYTES]);

    /// Builds a key from its big-endian bytes.
    pub const fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Key(bytes)
    }

    /// The key's big-endian bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// XOR distance to `other`.
    #[inline]
    pub fn distance(&self, other: &Key) -> Distance {
        let mut out = [0u8; KEY_BYTES];
        for (o, (a, b)) in out.iter_mut().zip(self.0.iter().zip(other.0.iter())) {
            *o = a ^ b;
        }
        Distance(out)
    }

    /// Bit `i` (0 = most significant).
    #[inline]
    pub fn bit(&self, i: usize) -> bool {
        debug_assert!(i < KEY_BITS);
        (self.0[i / 8] >> (7 - (i % 8))) & 1 == 1
    }

    /// Number of leading bits `self` and `other` have in common (256 if equal).
    #[inline]
    pub fn common_prefix_len(&self, other: &Key) -> usize {
        self.distance(other).leading_zeros()
    }

    /// The value of digit `index` when the key is read as `bits`-bit digits
    /// from the most significant end. The last digit may be shorter when
    /// `bits` does not divide 256; its value is then right-aligned.
    #[inline]
    pub fn digit(&self, index: usize, bits: u8) -> u32 {
        let bits = bits as usize;
        let start = index * bits;
        debug_assert!(start < KEY_BITS);
        let width = bits.min(KEY_BITS - start);
        self.bits_at(start, width)
    }

    /// `width` (≤ 32) bits starting at bit `start`, as an integer.
    #[inline]
    pub fn bits_at(&self, start: usize, width: usize) -> u32 {
        debug_assert!(width <= 32 && start + width <= KEY_BITS);
        // Read 8 bytes around `start` as a big-endian window; a 32-bit field
        // starting anywhere inside the first byte fits in 40 bits.
        let first = start / 8;
        let mut window = [0u8; 8];
        let end = (first + 8).min(KEY_BYTES);
        window[..end - first].copy_from_slice(&self.0[first..end]);
        let w = u64::from_be_bytes(window);
        let shift = 64 - (start % 8) - width;
        if width == 0 {
            0
        } else {
            ((w >> shift) & ((1u64 << width) - 1)) as u32
        }
    }

    /// Number of whole `bits`-bit digits `self` and `other` share.
    #[inline]
    pub fn shared_digits(&self, other: &Key, bits: u8) -> usize {
        self.common_prefix_len(other) / bits as usize
    }

    /// A copy of `self` whose bits from `start` on (inclusive) are replaced by
    /// the same bits of `fill`. Used to pick a random key inside a bucket.
    pub fn with_suffix_from(&self, start: usize, fill: &Key) -> Key {
        let mut out = self.0;
        for (i, byte) in out.iter_mut().enumerate() {
            let lo = i * 8;
            if lo + 8 <= start {
                continue;
            }
            let keep_bits = start.saturating_sub(lo); // high bits of this byte to keep
            let keep_mask: u8 = if keep_bits == 0 {
                0
            } else {
                0xffu8 << (8 - keep_bits)
            };
            *byte = (*byte & keep_mask) | (fill.0[i] & !keep_mask);
        }
        Key(out)
    }

    /// A copy of `self` with the `width` bits starting at `start` set to `value`.
    pub fn with_bits(&self, start: usize, width: usize, value: u32) -> Key {
        let mut out = *self;
        for j in 0..width {
            let bit = (value >> (width - 1 - j)) & 1 == 1;
            let i = start + j;
            let mask = 1u8 << (7 - (i % 8));
            if bit {
                out.0[i / 8] |= mask;
            } else {
                out.0[i / 8] &= !mask;
            }
        }
        out
    }

    /// The first 8 bytes as an integer: a cheap, well-mixed hash of a key that
    /// is itself a SHA-256 output.
    #[inline]
    pub fn prefix_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(b)
    }

    /// Short hex form (first 8 hex digits), for logs and tables.
    pub fn short(&self) -> String {
        hex(&self.0[..4])
    }

    /// Full lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses a 64-character hex string.
    pub fn from_hex(s: &str) -> Option<Key> {
        if s.len() != KEY_BYTES * 2 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; KEY_BYTES];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Key(out))
    }
}

impl Distance {
    /// The zero distance (a key's distance to itself).
    pub const ZERO: Distance = Distance([0; KEY_BYTES]);
    /// The largest possible distance.
    pub const MAX: Distance = Distance([0xff; KEY_BYTES]);

    /// Number of leading zero bits (256 for the zero distance).
    #[inline]
    pub fn leading_zeros(&self) -> usize {
        for (i, b) in self.0.iter().enumerate() {
            if *b != 0 {
                return i * 8 + b.leading_zeros() as usize;
            }
        }
        KEY_BITS
    }

    /// log2 of the distance as a float (−∞ for zero); handy for plots.
    pub fn log2(&self) -> f64 {
        let lz = self.leading_zeros();
        if lz == KEY_BITS {
            return f64::NEG_INFINITY;
        }
        (KEY_BITS - 1 - lz) as f64
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.short())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Distance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Distance(2^{})", self.log2())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key_from(v: u8) -> Key {
        let mut k = [0u8; 32];
        k[0] = v;
        Key(k)
    }

    fn arb_key() -> impl Strategy<Value = Key> {
        any::<[u8; 32]>().prop_map(Key)
    }

    #[test]
    fn distance_and_prefix() {
        let a = key_from(0b1010_0000);
        let b = key_from(0b1011_0000);
        assert_eq!(a.common_prefix_len(&b), 3);
        assert_eq!(a.distance(&a), Distance::ZERO);
        assert_eq!(a.common_prefix_len(&a), 256);
        assert!(a.distance(&b) > Distance::ZERO);
    }

    #[test]
    fn digits_of_various_widths() {
        let k = key_from(0b1011_0110);
        assert_eq!(k.digit(0, 1), 1);
        assert_eq!(k.digit(1, 1), 0);
        assert_eq!(k.digit(0, 4), 0b1011);
        assert_eq!(k.digit(1, 4), 0b0110);
        assert_eq!(k.digit(0, 3), 0b101);
        assert_eq!(k.digit(1, 3), 0b101);
        assert_eq!(k.digit(2, 3), 0b100); // last bits of byte 0 and first of byte 1
        assert_eq!(k.digit(0, 8), 0b1011_0110);
        // The last 3-bit digit of a 256-bit key has only one bit.
        let mut all = Key([0xff; 32]);
        assert_eq!(all.digit(85, 3), 1);
        all.0[31] = 0xfe;
        assert_eq!(all.digit(85, 3), 0);
    }

    proptest! {
        #[test]
        fn ordering_is_big_endian_bytewise(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            prop_assert_eq!(Key(a).cmp(&Key(b)), a.cmp(&b));
            prop_assert_eq!(Distance(a).cmp(&Distance(b)), a.cmp(&b));
        }
    }

    #[test]
    fn hex_round_trip() {
        let k = Key([0xab; 32]);
        assert_eq!(Key::from_hex(&k.to_hex()), Some(k));
        assert_eq!(Key::from_hex("zz"), None);
        assert_eq!(Key::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn suffix_replacement_keeps_prefix() {
        let a = Key([0x00; 32]);
        let f = Key([0xff; 32]);
        let k = a.with_suffix_from(12, &f);
        assert_eq!(k.0[0], 0x00);
        assert_eq!(k.0[1], 0x0f);
        assert_eq!(k.0[2], 0xff);
        assert_eq!(a.with_suffix_from(0, &f), f);
        assert_eq!(a.with_suffix_from(256, &f), a);
    }

    proptest! {
        #[test]
        fn xor_is_a_metric(a in arb_key(), b in arb_key(), c in arb_key()) {
            // identity and symmetry
            prop_assert_eq!(a.distance(&a), Distance::ZERO);
            prop_assert_eq!(a.distance(&b), b.distance(&a));
            prop_assert_eq!(a.distance(&b) == Distance::ZERO, a == b);
            // triangle inequality: d(a,c) <= d(a,b) + d(b,c); XOR satisfies the
            // stronger d(a,c) <= d(a,b) XOR d(b,c) bound, which we check as integers.
            let ab = a.distance(&b).0;
            let bc = b.distance(&c).0;
            let ac = a.distance(&c).0;
            // add ab + bc as 257-bit big-endian numbers and compare with ac
            let mut sum = [0u16; 33];
            let mut carry = 0u16;
            for i in (0..32).rev() {
                let s = ab[i] as u16 + bc[i] as u16 + carry;
                sum[i + 1] = s & 0xff;
                carry = s >> 8;
            }
            sum[0] = carry;
            let mut ac_wide = [0u16; 33];
            for i in 0..32 { ac_wide[i + 1] = ac[i] as u16; }
            prop_assert!(ac_wide <= sum);
        }

        #[test]
        fn unidirectional(a in arb_key(), b in arb_key(), c in arb_key()) {
            // d(a,b) == d(a,c) implies b == c
            prop_assert_eq!(a.distance(&b) == a.distance(&c), b == c);
        }

        #[test]
        fn digits_reassemble_the_key(k in arb_key(), bits in 1u8..=8) {
            let mut rebuilt = Key::ZERO;
            let n = 256usize.div_ceil(bits as usize);
            for i in 0..n {
                let start = i * bits as usize;
                let width = (bits as usize).min(256 - start);
                rebuilt = rebuilt.with_bits(start, width, k.digit(i, bits));
            }
            prop_assert_eq!(rebuilt, k);
        }

        #[test]
        fn shared_digits_agree_with_digit(a in arb_key(), b in arb_key(), bits in 1u8..=8) {
            let s = a.shared_digits(&b, bits);
            for i in 0..s { prop_assert_eq!(a.digit(i, bits), b.digit(i, bits)); }
            if a != b {
                prop_assert_ne!(a.digit(s, bits), b.digit(s, bits));
            }
        }
    }
}
