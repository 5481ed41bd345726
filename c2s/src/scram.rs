//! SCRAM (RFC 5802, RFC 7677) on the server side, as a sans-IO exchange.
//!
//! The server never stores or sees a SCRAM user's password: an account
//! keeps, per hash, the salt, the iteration count and two derived keys
//! ([`StoredKeys`]): `StoredKey = H(HMAC(SaltedPassword, "Client Key"))`
//! proves the client, `ServerKey = HMAC(SaltedPassword, "Server Key")` lets
//! the server prove itself back. Neither lets a thief of the record log in
//! (that needs `ClientKey`, which only a client that knows the password
//! computes). The expensive PBKDF2 step runs when a password is set, not
//! at each login, so logins cost a few HMACs.
//!
//! One exchange: [`ClientFirst::parse`] reads the client's first message
//! (the driver then looks the user up), [`ScramExchange::new`] answers it
//! with the server-first message, [`ScramExchange::finish`] checks the
//! client's proof and returns the server-final message. Channel binding
//! (`-PLUS`) is not offered, so a client asking for it (`p=`) is refused.

#[cfg(test)]
mod tests;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The hash of a SCRAM mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ScramHash {
    /// `SCRAM-SHA-1` (RFC 5802).
    Sha1,
    /// `SCRAM-SHA-256` (RFC 7677).
    Sha256,
}

impl ScramHash {
    /// The SASL mechanism name.
    pub fn mechanism(self) -> &'static str {
        match self {
            ScramHash::Sha1 => "SCRAM-SHA-1",
            ScramHash::Sha256 => "SCRAM-SHA-256",
        }
    }

    /// `H(data)`.
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => Sha1::digest(data).to_vec(),
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    /// `HMAC(key, data)`.
    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => {
                // HMAC accepts keys of any length: this cannot fail.
                let mut m = <Hmac<Sha1> as KeyInit>::new_from_slice(key)
                    .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            ScramHash::Sha256 => {
                let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
                    .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    /// `Hi(password, salt, i)`: PBKDF2 with this hash's HMAC and one
    /// output block, as RFC 5802 §2.2 defines it.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut first = salt.to_vec();
        first.extend_from_slice(&1u32.to_be_bytes());
        let mut u = self.hmac(password, &first);
        let mut out = u.clone();
        for _ in 1..iterations {
            u = self.hmac(password, &u);
            for (o, x) in out.iter_mut().zip(&u) {
                *o ^= x;
            }
        }
        out
    }
}

/// What an account keeps for one SCRAM hash (never the password).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKeys {
    /// The salt.
    #[serde(with = "serde_bytes")]
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// `H(ClientKey)`.
    #[serde(with = "serde_bytes")]
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    #[serde(with = "serde_bytes")]
    pub server_key: Vec<u8>,
}

impl StoredKeys {
    /// Derives the keys of `password` (already SASLprep'd by the caller,
    /// see [`crate::account`]).
    pub fn derive(hash: ScramHash, password: &[u8], salt: &[u8], iterations: u32) -> StoredKeys {
        let salted = hash.salted_password(password, salt, iterations);
        StoredKeys::from_salted(hash, &salted, salt, iterations)
    }

    fn from_salted(hash: ScramHash, salted: &[u8], salt: &[u8], iterations: u32) -> StoredKeys {
        let client_key = hash.hmac(salted, b"Client Key");
        StoredKeys {
            salt: salt.to_vec(),
            iterations,
            stored_key: hash.hash(&client_key),
            server_key: hash.hmac(salted, b"Server Key"),
        }
    }

    /// Whether `password` is the one these keys were derived from (PLAIN).
    pub fn matches(&self, hash: ScramHash, password: &[u8]) -> bool {
        let other = StoredKeys::derive(hash, password, &self.salt, self.iterations);
        constant_time_eq(&other.stored_key, &self.stored_key)
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a SCRAM message was refused. Each maps to a SASL failure condition
/// (RFC 6120 §6.5).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The message does not follow the grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client's proof is wrong (or the user does not exist).
    #[error("authentication failed")]
    NotAuthorized,
}

/// The label of the `tls-exporter` channel binding (RFC 9266 §2).
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// The one channel binding type offered.
pub const TLS_EXPORTER: &str = "tls-exporter";

/// A connection's channel binding data (for `tls-exporter`, 32 bytes the
/// TLS layer exported; see `server::tls_exporter`).
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelBinding(pub Vec<u8>);

impl std::fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material: never in logs.
        f.write_str("ChannelBinding(..)")
    }
}

/// The GS2 channel binding flag of a client's first message (RFC 5802 §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gs2Flag {
    /// `n`: the client does not support channel binding.
    No,
    /// `y`: the client supports it but thinks the server does not; if the
    /// server did offer it, someone removed the `-PLUS` mechanisms on the
    /// way (a downgrade), and the exchange must fail.
    ClientSupports,
    /// `p=NAME`: the client binds to the channel with this type.
    Uses(String),
}

/// The client's first message, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFirst {
    /// The GS2 header as sent (`n,,`, `y,,` or `p=tls-exporter,,`, with any
    /// authzid).
    pub gs2_header: String,
    /// Its channel binding flag.
    pub flag: Gs2Flag,
    /// The authorization identity, if the client sent one.
    pub authzid: Option<String>,
    /// The user name, with `=2C` and `=3D` decoded.
    pub username: String,
    /// The client's nonce.
    pub client_nonce: String,
    /// `client-first-message-bare`.
    pub bare: String,
}

/// Longest SCRAM message accepted (the driver's element limit is larger;
/// nothing honest comes near this).
pub const MAX_MESSAGE: usize = 4096;

impl ClientFirst {
    /// Reads `client-first-message`.
    pub fn parse(msg: &[u8]) -> Result<ClientFirst, ScramError> {
        if msg.len() > MAX_MESSAGE {
            return Err(ScramError::Malformed("message too long"));
        }
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut parts = msg.splitn(3, ',');
        let flag = parts.next().unwrap_or_default();
        let authz = parts.next().ok_or(ScramError::Malformed("no GS2 header"))?;
        let bare = parts.next().ok_or(ScramError::Malformed("no GS2 header"))?;
        let gs2_flag = match flag {
            "n" => Gs2Flag::No,
            "y" => Gs2Flag::ClientSupports,
            f => match f.strip_prefix("p=") {
                // cb-name = 1*(ALPHA / DIGIT / "." / "-")
                Some(name)
                    if !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') =>
                {
                    Gs2Flag::Uses(name.to_string())
                }
                _ => return Err(ScramError::Malformed("bad channel binding flag")),
            },
        };
        let authzid = match authz {
            "" => None,
            a => Some(decode_saslname(
                a.strip_prefix("a=")
                    .ok_or(ScramError::Malformed("bad authzid"))?,
            )?),
        };
        let mut attrs = bare.split(',');
        let first = attrs.next().unwrap_or_default();
        if first.starts_with("m=") {
            return Err(ScramError::Malformed("mandatory extension not supported"));
        }
        let username = decode_saslname(
            first
                .strip_prefix("n=")
                .ok_or(ScramError::Malformed("no user name"))?,
        )?;
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if username.is_empty() || !valid_nonce(nonce) {
            return Err(ScramError::Malformed("empty user name or bad nonce"));
        }
        Ok(ClientFirst {
            gs2_header: format!("{flag},{authz},"),
            flag: gs2_flag,
            authzid,
            username,
            client_nonce: nonce.to_string(),
            bare: bare.to_string(),
        })
    }
}

/// A nonce is printable ASCII other than `,`.
fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// `saslname`: `=2C` is `,`, `=3D` is `=`, any other `=` is an error.
fn decode_saslname(s: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3);
        match esc {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One SCRAM exchange after the client's first message.
#[derive(Debug)]
pub struct ScramExchange {
    hash: ScramHash,
    keys: StoredKeys,
    first: ClientFirst,
    server_first: String,
    nonce: String,
    /// The channel binding data the client must echo after its GS2
    /// header (empty without binding).
    cb_data: Vec<u8>,
}

impl ScramExchange {
    /// Answers `first` for an account with `keys`; `server_nonce` must be
    /// fresh and unpredictable (printable, no `,`); `cb_data`: the
    /// connection's channel binding data when `first` binds to it (the
    /// caller checked the type), else empty. Returns the exchange and the
    /// server-first message.
    pub fn new(
        hash: ScramHash,
        keys: StoredKeys,
        first: ClientFirst,
        server_nonce: &str,
        cb_data: &[u8],
    ) -> (ScramExchange, String) {
        let nonce = format!("{}{}", first.client_nonce, server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&keys.salt),
            keys.iterations
        );
        let sf = server_first.clone();
        (
            ScramExchange {
                hash,
                keys,
                first,
                server_first,
                nonce,
                cb_data: cb_data.to_vec(),
            },
            sf,
        )
    }

    /// The user this exchange authenticates.
    pub fn first(&self) -> &ClientFirst {
        &self.first
    }

    /// Checks `client-final-message`; on success returns the server-final
    /// message (`v=` and the server's signature).
    pub fn finish(&self, msg: &[u8]) -> Result<String, ScramError> {
        if msg.len() > MAX_MESSAGE {
            return Err(ScramError::Malformed("message too long"));
        }
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding"))?;
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        let cbind = B64
            .decode(cbind)
            .map_err(|_| ScramError::Malformed("channel binding not base64"))?;
        // c= is the GS2 header followed by the channel binding data: a
        // proof made on another TLS connection (a man in the middle's)
        // carries other data and fails here.
        let header = self.first.gs2_header.as_bytes();
        if cbind.len() != header.len() + self.cb_data.len()
            || &cbind[..header.len()] != header
            || !constant_time_eq(&cbind[header.len()..], &self.cb_data)
        {
            return Err(ScramError::NotAuthorized);
        }
        if nonce != self.nonce {
            return Err(ScramError::NotAuthorized);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof not base64"))?;
        let auth_message = format!(
            "{},{},{}",
            self.first.bare, self.server_first, without_proof
        );
        let signature = self
            .hash
            .hmac(&self.keys.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(ScramError::NotAuthorized);
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        if !constant_time_eq(&self.hash.hash(&client_key), &self.keys.stored_key) {
            return Err(ScramError::NotAuthorized);
        }
        let server_sig = self
            .hash
            .hmac(&self.keys.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_sig)))
    }
}

/// Keys for a user that does not exist: derived from a server secret and
/// the name, so a probe sees the same salt each time and cannot tell an
/// unknown user from a wrong password; no proof can match them (that
/// would need a preimage of the stored key).
pub fn decoy_keys(hash: ScramHash, secret: &[u8], username: &str, iterations: u32) -> StoredKeys {
    let salt = hash.hmac(secret, format!("salt\0{username}").as_bytes());
    StoredKeys {
        salt: salt[..16].to_vec(),
        iterations,
        stored_key: hash.hmac(secret, format!("stored\0{username}").as_bytes()),
        server_key: hash.hmac(secret, format!("server\0{username}").as_bytes()),
    }
}
