//! Node configuration: one struct, [`RawConfig`], that is both the TOML
//! schema of `--config FILE.toml` and the command-line flags of
//! `xmpp-ring node` (`psk_file` ↔ `--psk-file`), so the two cannot
//! disagree. Flags override the file ([`RawConfig::merged`]). Validation
//! ([`RawConfig::validate`], in `validate.rs`) turns the raw values into
//! typed [`NodeSettings`] and names the offending key in every error, so a
//! typo costs one glance.

mod validate;

pub use validate::{C2sSettings, EdgeSettings, NodeSettings, RecordSettings, ServiceLimits};

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A configuration problem: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {key}: {message}")]
pub struct ConfigError {
    /// The TOML key (the flag is the same with dashes).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

pub(crate) fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Configuration as written: every field optional, from the file and the
/// flags. Defaults are applied by [`RawConfig::validate`] (and shown in
/// `--help`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// libp2p listen multiaddr [default: /ip4/127.0.0.1/tcp/0].
    #[arg(long, value_name = "MULTIADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// A bootstrap peer, ending in `/p2p/<peer id>` (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<Vec<String>>,
    /// The ring's pre-shared key file.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psk_file: Option<PathBuf>,
    /// Data directory (identity, records, generated keys).
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// application, router or edge [default: application].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// An XMPP domain the ring serves (repeatable).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<Vec<String>>,
    /// Edge: s2s listen address (host:port).
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s2s_listen: Option<String>,
    /// Clients: c2s listen address (host:port; STARTTLS, usually port
    /// 5222) [default: none, no client logins on this node].
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c2s_listen: Option<String>,
    /// Clients: direct-TLS listen address (host:port; XEP-0368, TLS from
    /// the first byte, usually port 5223) [default: none].
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c2s_tls_listen: Option<String>,
    /// Clients: require STARTTLS before authentication [default: true].
    /// PLAIN is never offered without TLS.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c2s_require_tls: Option<bool>,
    /// Clients: connections at once [default: 10000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c2s_max_connections: Option<usize>,
    /// Clients: connections at once from one address (IPv6: /64)
    /// [default: 32].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c2s_max_connections_per_ip: Option<usize>,
    /// Clients: new connections per second from one address (twice as
    /// many in a burst) [default: 20].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c2s_connection_rate_per_ip: Option<u32>,
    /// Clients: failed logins per minute from one address (as many at
    /// once); past them connections from it are closed at their next
    /// failure [default: 10].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c2s_failed_logins_per_ip: Option<u32>,
    /// Clients: a connection must log in and bind within this many seconds
    /// of its first header [default: 30].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c2s_auth_timeout_s: Option<u64>,
    /// Clients: messages kept for a user with no available session
    /// [default: 100; 0 keeps none].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c2s_max_offline: Option<usize>,
    /// Clients: sessions (resources) one user may have at once [default: 10].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c2s_max_resources: Option<usize>,
    /// Clients: in-band registration (XEP-0077) of new accounts by anyone
    /// who can connect, inside TLS [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c2s_register: Option<bool>,
    /// Clients: in-band registrations and password changes per hour from
    /// one address (as many at once) [default: 5].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c2s_registrations_per_ip: Option<u32>,
    /// Admin HTTP address [default: 127.0.0.1:0, a free port]. Beyond
    /// loopback, every request needs the bearer token of `admin.token` in
    /// the data directory.
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Require the admin bearer token also on loopback [default: false;
    /// always required beyond loopback].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<bool>,
    /// Log level or filter [default: info; RUST_LOG wins when set].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Bucket size [default: 20].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    /// Bits per digit [default: 4].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits: Option<u8>,
    /// Next-hop ack timeout, ms [default: 1000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_timeout_ms: Option<u64>,
    /// Most simultaneous libp2p connections [default: 512].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Only these peers may be contacts (repeatable; default: anyone with
    /// the key).
    #[arg(long = "allow-peer", value_name = "PEER_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_peers: Option<Vec<String>>,
    /// Runtime worker threads [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Time an envelope may go without receipt or bounce before it is
    /// reported failed, ms [default: 30000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt_timeout_ms: Option<u64>,
    /// Contacts silent this long are pinged, ms [default: 600000]. Shorter
    /// keeps routing tables fresh under fast churn (see the README's
    /// simulator figures).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_interval_ms: Option<u64>,
    /// The closest contacts (this node's neighbourhood, whose records it
    /// shares) silent this long are pinged, ms [default: 5000]; a failed one
    /// starts re-replication at once.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neighbour_interval_ms: Option<u64>,
    /// Edge: PEM certificate chain for s2s TLS [default: self-signed,
    /// generated].
    #[arg(long, value_name = "FILE.pem")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// Edge: PEM private key for s2s TLS.
    #[arg(long, value_name = "FILE.pem")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Edge: PEM CA roots whose certificates authenticate peers (SASL
    /// EXTERNAL inbound, certificate checks outbound).
    #[arg(long, value_name = "FILE.pem")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Edge: also trust the web PKI's roots (Mozilla's list) [default:
    /// true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s2s_system_roots: Option<bool>,
    /// Edge: refuse remote servers whose certificate does not validate
    /// for their domain, instead of falling back to dialback (Prosody's
    /// `s2s_secure_auth`) [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s2s_secure_auth: Option<bool>,
    /// Edge: the dialback secret shared by all edges of the ring.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dialback_secret_file: Option<PathBuf>,
    /// Edge: static s2s route DOMAIN=HOST:PORT (repeatable; before DNS).
    #[arg(long, value_name = "DOMAIN=HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s2s_host: Option<Vec<String>>,
    /// Edge: DNS server for SRV lookups [default: the system's].
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// Edge: allow outbound s2s without TLS [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s2s_plaintext: Option<bool>,
    /// Edge: close s2s streams idle this long, seconds [default: 600].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s2s_idle_timeout_s: Option<u64>,
    /// Edge: an inbound stream must authenticate a domain within this
    /// many seconds of its first header [default: 60].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s2s_auth_timeout_s: Option<u64>,
    /// Edge: inbound s2s connections at once [default: 1024].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s2s_max_connections: Option<usize>,
    /// Edge: inbound s2s connections at once from one address (IPv6: /64)
    /// [default: 64].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s2s_max_connections_per_ip: Option<usize>,
    /// Edge: new inbound s2s connections per second from one address
    /// (twice as many in a burst) [default: 20].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s2s_connection_rate_per_ip: Option<u32>,
    /// Edge: remote domains whose dialback keys are verified at once
    /// [default: 64].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s2s_max_verifications: Option<usize>,
    /// Edge: a write to a peer must finish within this many seconds, or
    /// the stream closes and its stanzas bounce [default: 30].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s2s_write_timeout_s: Option<u64>,
    /// Edge: bytes queued for one inbound peer before it stops being read
    /// [default: 262144].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s2s_write_queue_bytes: Option<usize>,
    /// Edge: bytes of stanzas queued per remote domain [default: 16777216].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s2s_outbound_queue_bytes: Option<usize>,
    /// Edge: outbound s2s streams (remote domains) at once [default: 1024].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s2s_max_outbound: Option<usize>,
    /// Edge: largest stanza accepted, bytes [default: 524288].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_stanza_bytes: Option<usize>,
    /// Edge: most XML nodes (elements and text pieces) in one stanza
    /// [default: 8192].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_stanza_nodes: Option<usize>,
    /// Copies of each record, the coordinator's included [default: 3].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_replicas: Option<usize>,
    /// Largest record value, bytes [default: 65536].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_max_bytes: Option<usize>,
    /// Most bytes of records this node stores [default: 268435456].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_store_max_bytes: Option<u64>,
    /// Re-replication: a batch of records is checked every this many ms
    /// [default: 1000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_sweep_ms: Option<u64>,
    /// Most items a PubSub node keeps [default: 20].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pubsub_max_items: Option<usize>,
    /// Largest PubSub item payload, bytes [default: 16384].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pubsub_max_item_bytes: Option<usize>,
    /// Rooms one user may own on a MUC service [default: 50].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub muc_max_rooms_per_user: Option<usize>,
    /// Rooms a MUC service holds in all [default: 5000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub muc_max_rooms: Option<usize>,
    /// PubSub nodes one user may own on a service [default: 50].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pubsub_max_nodes_per_user: Option<usize>,
    /// PubSub nodes a service holds in all [default: 5000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pubsub_max_nodes: Option<usize>,
}

impl RawConfig {
    /// Parses a TOML file.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("config", format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let at = line.map(|l| format!(" line {l}:")).unwrap_or_default();
            err(
                "config",
                format!("{}:{at} {}", path.display(), e.message().trim()),
            )
        })
    }

    /// `self` with every value set in `over` replaced by it. Works on the
    /// serialised form, so a new key needs no code here.
    pub fn merged(self, over: RawConfig) -> RawConfig {
        let table = |c: &RawConfig| toml::Table::try_from(c).unwrap_or_default();
        let mut base = table(&self);
        base.extend(table(&over));
        toml::Value::Table(base).try_into().unwrap_or(over)
    }
}

#[cfg(test)]
mod tests;
