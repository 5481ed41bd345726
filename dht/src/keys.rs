//! Key derivation: how every stanza target and every node gets its place in
//! the id space (see docs/architecture.md, "Keys and distance").
//!
//! Each kind of target is hashed with its own domain-separation prefix so that
//! a user `a@b`, a record named `a@b` and a PubSub node can never collide.
//!
//! | target            | key                                                        |
//! |-------------------|------------------------------------------------------------|
//! | node              | `SHA-256(libp2p PeerId bytes)`                             |
//! | bare JID          | `SHA-256("jid\0" ‖ normalised bare JID)`                   |
//! | PubSub node       | `SHA-256("pubsub\0" ‖ service JID ‖ "\0" ‖ node name)`     |
//! | record            | `SHA-256("record\0" ‖ name)`                               |
//!
//! JIDs are normalised with the `jid` crate (nodeprep/nameprep, RFC 7622) and
//! the resource is dropped, so all of a user's or a room's traffic meets at
//! one node. A trailing dot on the domain is stripped first, as RFC 7622
//! §3.2 asks (the `jid` crate rejects it otherwise).

use crate::id::Key;
use sha2::{Digest, Sha256};

/// Why a string could not be turned into a JID key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JID {input:?}: {reason}")]
pub struct JidKeyError {
    /// The offending input (truncated to 256 characters).
    pub input: String,
    /// What the JID parser said.
    pub reason: String,
}

fn sha256_parts(parts: &[&[u8]]) -> Key {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let out: [u8; 32] = h.finalize().into();
    Key(out)
}

/// A node's id from its libp2p `PeerId` bytes (`PeerId::to_bytes()`).
pub fn node_id_from_peer_bytes(peer_id: &[u8]) -> Key {
    sha256_parts(&[peer_id])
}

/// Normalises `jid` to its bare form (stringprep'd, resource dropped,
/// trailing domain dot removed).
pub fn normalise_bare_jid(jid: &str) -> Result<String, JidKeyError> {
    let err = |reason: String| JidKeyError {
        input: jid.chars().take(256).collect(),
        reason,
    };
    let (head, _resource) = match jid.find('/') {
        Some(i) => (&jid[..i], Some(&jid[i + 1..])),
        None => (jid, None),
    };
    let (local, domain) = match head.find('@') {
        Some(i) => (Some(&head[..i]), &head[i + 1..]),
        None => (None, head),
    };
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let rebuilt = match local {
        Some(l) => format!("{l}@{domain}"),
        None => domain.to_string(),
    };
    let parsed = jid::BareJid::new(&rebuilt).map_err(|e| err(e.to_string()))?;
    Ok(parsed.as_str().to_string())
}

/// The key of a stanza addressed to `jid` (any form; the resource is dropped).
pub fn jid_key(jid: &str) -> Result<Key, JidKeyError> {
    let bare = normalise_bare_jid(jid)?;
    Ok(jid_key_normalised(&bare))
}

/// The key of an already-normalised bare JID (no parsing).
pub fn jid_key_normalised(bare: &str) -> Key {
    sha256_parts(&[b"jid\0", bare.as_bytes()])
}

/// The key of PubSub node `node` on service `service` (a normalised JID).
pub fn pubsub_key(service: &str, node: &str) -> Key {
    sha256_parts(&[b"pubsub\0", service.as_bytes(), b"\0", node.as_bytes()])
}

/// The key of the DHT record called `name`.
pub fn record_key(name: &str) -> Key {
    sha256_parts(&[b"record\0", name.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors computed independently with
    //   printf 'jid\0alice@example.com' | sha256sum
    // and likewise for the others.
    #[test]
    fn test_vectors() {
        assert_eq!(
            jid_key("alice@example.com").unwrap().to_hex(),
            "9c28be024e7f3fb7ce49e1b2656248ee55243e69f30c8dd30de98cea19d090b3"
        );
        assert_eq!(
            record_key("greeting").to_hex(),
            "b1758346d7a3c3bf9dcbdc51fe8ef79b765a112fa8f52ae4fe1f7da4264eacbf"
        );
        assert_eq!(
            pubsub_key("pubsub.example.com", "news").to_hex(),
            "79f87e35316bf887b6541f3b9ec3a949411b2b183e011d88f25006980179becf"
        );
    }

    #[test]
    fn resource_and_case_do_not_matter() {
        let a = jid_key("Alice@Example.COM/phone").unwrap();
        let b = jid_key("alice@example.com").unwrap();
        assert_eq!(a, b);
        let room = jid_key("room@conference.example/nick").unwrap();
        assert_eq!(room, jid_key("room@conference.example").unwrap());
    }

    #[test]
    fn trailing_dot_is_stripped() {
        assert_eq!(
            jid_key("alice@example.com.").unwrap(),
            jid_key("alice@example.com").unwrap()
        );
        assert_eq!(
            jid_key("example.com./res").unwrap(),
            jid_key("example.com").unwrap()
        );
    }

    #[test]
    fn invalid_jids_are_errors() {
        for bad in [
            "",
            "@example.com",
            "a@",
            "a@b@c",
            "a b@example.com",
            "a@/res",
        ] {
            assert!(jid_key(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn domain_separation() {
        // The same string under different kinds gives different keys.
        let s = "a@b";
        let j = jid_key(s).unwrap();
        assert_ne!(j, record_key(s));
        assert_ne!(j, pubsub_key(s, ""));
        assert_ne!(record_key("x"), pubsub_key("x", ""));
    }
}
