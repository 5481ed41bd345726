//! The node's ed25519 identity, kept in its data directory so the node id
//! survives restarts (its place in the ring, and so the keys it is
//! responsible for, depend on it).

use crate::error::NodeError;
use libp2p::identity::Keypair;
use std::io::Write;
use std::path::Path;

/// File name of the key inside the data directory.
pub const KEY_FILE: &str = "node.key";

/// Loads the key from `data_dir`, creating the directory and a new key on
/// first start. The key file is written with mode 0600.
pub fn load_or_create(data_dir: &Path) -> Result<Keypair, NodeError> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| NodeError::invalid(&path, format!("not a valid node key: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(|e| NodeError::write(data_dir, e))?;
            let kp = Keypair::generate_ed25519();
            write_key(&path, &kp)?;
            Ok(kp)
        }
        Err(e) => Err(NodeError::read(&path, e)),
    }
}

/// Writes `kp` to `path` (mode 0600, created exclusively).
pub fn write_key(path: &Path, kp: &Keypair) -> Result<(), NodeError> {
    let bytes = kp
        .to_protobuf_encoding()
        .map_err(|e| NodeError::invalid(path, format!("cannot encode the node key: {e}")))?;
    write_private(path, &bytes)
}

/// Writes a secret file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| NodeError::write(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| NodeError::write(path, e))
}

/// The admin bearer token kept at `path`, created (32 random bytes, hex,
/// mode 0600) on first use.
pub fn load_or_create_token(path: &Path) -> Result<String, NodeError> {
    if path.is_file() {
        let t = std::fs::read_to_string(path).map_err(|e| NodeError::read(path, e))?;
        let t = t.trim().to_string();
        if t.len() < 32 {
            return Err(NodeError::invalid(
                path,
                "an admin token needs at least 32 characters",
            ));
        }
        return Ok(t);
    }
    let mut b = [0u8; 32];
    rand::RngExt::fill(&mut rand::rng(), &mut b);
    let t: String = b.iter().map(|x| format!("{x:02x}")).collect();
    write_private(path, t.as_bytes())?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_token_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("admin.token");
        let t = load_or_create_token(&p).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(load_or_create_token(&p).unwrap(), t);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&p, "short").unwrap();
        assert!(load_or_create_token(&p).is_err());
    }

    #[test]
    fn same_identity_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(&dir.path().join("data")).unwrap();
        let b = load_or_create(&dir.path().join("data")).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("data").join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn corrupt_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), b"not a key").unwrap();
        let e = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(e, NodeError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("not a valid node key"), "{e}");
    }
}
