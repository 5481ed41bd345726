//! The ring's pre-shared key: the private address space of the ring. Only
//! nodes holding it can complete a connection (libp2p pnet encrypts the
//! whole TCP stream with it before anything else is said).
//!
//! Files use the libp2p/IPFS swarm key format:
//! `/key/swarm/psk/1.0.0/`, `/base16/`, then 64 hex digits.

use crate::error::NodeError;
use libp2p::pnet::PreSharedKey;
use rand::RngExt;
use std::path::Path;

/// Reads and parses a key file.
pub fn read(path: &Path) -> Result<PreSharedKey, NodeError> {
    let text = std::fs::read_to_string(path).map_err(|e| NodeError::read(path, e))?;
    text.parse::<PreSharedKey>().map_err(|e| {
        NodeError::invalid(
            path,
            format!("not a swarm key file ({e}); create one with `xmpp-ring psk generate`"),
        )
    })
}

/// A fresh random key.
pub fn generate() -> PreSharedKey {
    let mut key = [0u8; 32];
    rand::rng().fill(&mut key);
    PreSharedKey::new(key)
}

/// Writes a fresh key to `path` (mode 0600; refuses to overwrite).
pub fn generate_file(path: &Path) -> Result<PreSharedKey, NodeError> {
    let key = generate();
    crate::identity::write_private(path, key.to_key_file().as_bytes())?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ring.psk");
        let k = generate_file(&p).unwrap();
        assert_eq!(
            read(&p).unwrap().fingerprint().to_string(),
            k.fingerprint().to_string()
        );
        // Never overwrites an existing key.
        assert!(generate_file(&p).is_err());
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.psk");
        std::fs::write(&p, "/key/swarm/psk/1.0.0/\n/base16/\nxyz\n").unwrap();
        let e = read(&p).unwrap_err();
        assert!(matches!(e, NodeError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("not a swarm key file"), "{e}");
        let e = read(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(e, NodeError::Read { .. }), "{e}");
    }
}
