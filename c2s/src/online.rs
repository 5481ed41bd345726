//! The available sessions of a user and their last presence, as the home
//! node stores them (record `presence:<bare JID>`): the home node keeps
//! them in memory to answer probes; the record lets its successor, when
//! the home node dies, find sessions that died with it (no lease comes for
//! them) and tell the user's contacts they went offline.

use serde::{Deserialize, Serialize};

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
}
