//! User accounts: what the home node keeps of a ring user's credentials.
//!
//! An account record holds the user's bare JID and, for each SCRAM hash,
//! the salt, iteration count, `StoredKey` and `ServerKey` (see
//! [`crate::scram`]); never the password. It lives in the record store
//! under `account:<bare JID>`, keyed on the bare JID, so its replicas sit
//! on the user's home node and the nodes next in line.

use crate::scram::{ScramHash, StoredKeys};
use jid::BareJid;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The record name prefix of accounts.
pub use ring_records::ACCOUNT_PREFIX;

/// PBKDF2 iterations for new passwords: the cost falls on setting a
/// password (and on PLAIN logins), not on SCRAM logins. RFC 7677 asks for
/// at least 4,096.
pub const DEFAULT_ITERATIONS: u32 = 10_000;

/// Longest password accepted, in bytes after SASLprep.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Largest account record read.
const MAX_RECORD_BYTES: usize = 8192;

/// Why an account cannot be made or read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// The JID has no local part (a server, not a user) or a resource.
    #[error("{0} is not a user's bare JID (user@domain)")]
    NotAUser(String),
    /// The JID is not valid.
    #[error("invalid JID {0:?}: {1}")]
    InvalidJid(String, String),
    /// The password is empty, too long or has characters SASLprep forbids.
    #[error("unusable password: {0}")]
    BadPassword(&'static str),
    /// The stored bytes are not an account.
    #[error("corrupt account record")]
    Corrupt,
}

/// A user's credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The user's bare JID, normalised.
    pub jid: String,
    /// Keys for SCRAM-SHA-1.
    pub sha1: StoredKeys,
    /// Keys for SCRAM-SHA-256 (and PLAIN).
    pub sha256: StoredKeys,
}

/// Parses a user's bare JID (`user@domain`, no resource).
pub fn user_jid(s: &str) -> Result<BareJid, AccountError> {
    let jid = BareJid::new(s).map_err(|e| AccountError::InvalidJid(s.into(), e.to_string()))?;
    if jid.node().is_none() {
        return Err(AccountError::NotAUser(s.into()));
    }
    Ok(jid)
}

/// SASLprep (RFC 4013) of a password, as SCRAM requires, and its bounds.
pub fn prepare_password(password: &str) -> Result<String, AccountError> {
    let p = stringprep::saslprep(password)
        .map_err(|_| AccountError::BadPassword("characters SASLprep forbids"))?;
    if p.is_empty() {
        return Err(AccountError::BadPassword("empty"));
    }
    if p.len() > MAX_PASSWORD_BYTES {
        return Err(AccountError::BadPassword("longer than 1,024 bytes"));
    }
    Ok(p.into_owned())
}

impl Account {
    /// The account of `jid` with `password`, salted with fresh randomness.
    pub fn new<R: Rng>(
        jid: &BareJid,
        password: &str,
        iterations: u32,
        rng: &mut R,
    ) -> Result<Account, AccountError> {
        if jid.node().is_none() {
            return Err(AccountError::NotAUser(jid.to_string()));
        }
        let p = prepare_password(password)?;
        let mut salt1 = [0u8; 16];
        let mut salt256 = [0u8; 16];
        rng.fill_bytes(&mut salt1);
        rng.fill_bytes(&mut salt256);
        Ok(Account {
            jid: jid.to_string(),
            sha1: StoredKeys::derive(ScramHash::Sha1, p.as_bytes(), &salt1, iterations),
            sha256: StoredKeys::derive(ScramHash::Sha256, p.as_bytes(), &salt256, iterations),
        })
    }

    /// The keys for one SCRAM hash.
    pub fn keys(&self, hash: ScramHash) -> &StoredKeys {
        match hash {
            ScramHash::Sha1 => &self.sha1,
            ScramHash::Sha256 => &self.sha256,
        }
    }

    /// Whether `password` is this account's (SASL PLAIN).
    pub fn check_password(&self, password: &str) -> bool {
        match prepare_password(password) {
            Ok(p) => self.sha256.matches(ScramHash::Sha256, p.as_bytes()),
            Err(_) => false,
        }
    }

    /// The record name of `jid`'s account.
    pub fn record_name(jid: &BareJid) -> String {
        format!("{ACCOUNT_PREFIX}{jid}")
    }

    /// The record value: JSON, so that `xmpp-ring record get` shows it
    /// as text (salts and keys, nothing that logs in).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a record value.
    pub fn decode(bytes: &[u8]) -> Result<Account, AccountError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(AccountError::Corrupt);
        }
        serde_json::from_slice(bytes).map_err(|_| AccountError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::Xoshiro256PlusPlus;

    fn rng() -> Xoshiro256PlusPlus {
        Xoshiro256PlusPlus::seed_from_u64(7)
    }

    #[test]
    fn an_account_checks_its_password_and_survives_encoding() {
        let jid = user_jid("alice@ring.test").expect("jid");
        let a = Account::new(&jid, "correct horse", 4096, &mut rng()).expect("account");
        assert!(a.check_password("correct horse"));
        assert!(!a.check_password("correct horse "));
        assert!(!a.check_password(""));
        let back = Account::decode(&a.encode()).expect("decode");
        assert_eq!(back, a);
        assert_ne!(a.sha1.salt, a.sha256.salt);
        // Nothing of the password itself is kept.
        let bytes = a.encode();
        assert!(!bytes.windows(13).any(|w| w == b"correct horse"));
    }

    #[test]
    fn saslprep_maps_what_rfc_4013_maps() {
        // RFC 4013 §3: SOFT HYPHEN maps to nothing, U+00AA to "a", and a
        // non-ASCII space to a space; control characters are refused.
        assert_eq!(prepare_password("I\u{00AD}X").as_deref(), Ok("IX"));
        assert_eq!(prepare_password("\u{00AA}").as_deref(), Ok("a"));
        assert_eq!(prepare_password("a\u{00A0}b").as_deref(), Ok("a b"));
        assert!(prepare_password("\u{0007}").is_err());
        assert!(prepare_password("").is_err());
        assert!(prepare_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        let jid = user_jid("bob@ring.test").expect("jid");
        let a = Account::new(&jid, "I\u{00AD}X", 4096, &mut rng()).expect("account");
        assert!(a.check_password("IX"));
    }

    #[test]
    fn only_users_have_accounts() {
        assert!(matches!(
            user_jid("ring.test"),
            Err(AccountError::NotAUser(_))
        ));
        assert!(matches!(
            user_jid("a@b@ring.test"),
            Err(AccountError::InvalidJid(..))
        ));
        // A resource is not part of an account's name.
        assert!(user_jid("alice@ring.test/phone").is_err());
        assert_eq!(
            user_jid("Alice@Ring.Test").map(|j| j.to_string()),
            Ok("alice@ring.test".to_string())
        );
        assert_eq!(Account::decode(b"junk"), Err(AccountError::Corrupt));
    }
}
