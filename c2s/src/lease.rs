//! What an access node tells a user's home node about one of its sessions
//! (a `Service` envelope routed to the key of the user's bare JID): the
//! session's full JID, its availability and priority, renewed every
//! [`LEASE_RENEW`]; the home node forgets it [`LEASE_TTL`] after the last
//! renewal, or at once when `end` says the session ended.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How often an access node renews its sessions' leases.
pub const LEASE_RENEW: Duration = Duration::from_secs(3);
/// How long a lease lasts without renewal: a dead access node's sessions
/// are gone from their home nodes this long after its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(8);
/// Largest lease message read.
const MAX_LEASE_BYTES: usize = 2048;

/// One session's lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The session's full JID.
    pub jid: String,
    /// It sent available presence.
    pub available: bool,
    /// Its presence priority.
    pub priority: i8,
    /// The session ended: forget it now.
    pub end: bool,
}

impl Lease {
    /// The envelope payload.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a payload (`None`: not a lease).
    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        if bytes.len() > MAX_LEASE_BYTES {
            return None;
        }
        serde_json::from_slice(bytes).ok()
    }
}

/// A presence a session sends that its user's home node processes first
/// (a `Service` envelope routed to the key of the user's bare JID):
/// broadcast presence (no `to`) and subscription requests and answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbound {
    /// The presence, `from` stamped.
    pub xml: String,
    /// The session's first available presence (its initial presence:
    /// probes go out, waiting requests come in).
    pub initial: bool,
}

impl Outbound {
    /// The envelope payload.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a payload.
    pub fn decode(bytes: &[u8]) -> Option<Outbound> {
        if bytes.len() > ring_services::stanza::MAX_STANZA_BYTES + 64 {
            return None;
        }
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_round_trip_and_junk_is_refused() {
        let l = Lease {
            jid: "alice@ring.test/phone".into(),
            available: true,
            priority: -3,
            end: false,
        };
        assert_eq!(Lease::decode(&l.encode()), Some(l.clone()));
        let bytes = l.encode();
        for cut in 0..bytes.len() {
            assert_eq!(Lease::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(Lease::decode(&vec![b' '; MAX_LEASE_BYTES + 1]), None);
        assert_eq!(Lease::decode(b"{\"jid\":1}"), None);
    }
}
