//! Addresses in the edge: [`Domain`] and [`Served`] (from the `xmpp-addr`
//! crate, shared with the ring's services), and the rule for stream ids a
//! peer gives us before they go into a dialback key.

pub use xmpp_addr::{AddressError, Domain, Served};

/// Longest stream id accepted from a peer for use in a dialback key.
pub const MAX_STREAM_ID: usize = 128;

/// Checks a stream id a peer gave us before it goes into a dialback key or
/// a `db:verify`: 1 to [`MAX_STREAM_ID`] printable ASCII characters
/// without whitespace. RFC 6120 only asks for uniqueness; every server
/// seen (Prosody's UUIDs, ejabberd's decimal ids, our hex) fits.
pub fn valid_stream_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_STREAM_ID && id.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids() {
        assert!(valid_stream_id("dca49828-2172-4834-a759-a2e5103ac370"));
        assert!(valid_stream_id("1234567890"));
        for bad in ["", "ring.test S", "a\tb", "é", &"x".repeat(129)] {
            assert!(!valid_stream_id(bad), "{bad:?}");
        }
    }
}
