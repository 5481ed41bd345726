//! Node configuration: a TOML file whose every key is also a command-line
//! flag (`psk_file` ↔ `--psk-file`). Flags override the file. Validation
//! turns the raw strings into typed values and names the offending key in
//! every error, so a typo costs one glance.

use dht::Role;
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {key}: {message}")]
pub struct ConfigError {
    /// The TOML key (the flag is the same with dashes).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Configuration as written: every field optional, merged from the file and
/// the flags, validated by [`RawConfig::validate`].
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// libp2p listen multiaddr.
    pub listen: Option<String>,
    /// Bootstrap multiaddrs ending in `/p2p/<peer id>`.
    pub bootstrap: Option<Vec<String>>,
    /// Path of the ring's pre-shared key file.
    pub psk_file: Option<PathBuf>,
    /// Where the node keeps its identity (and later its records).
    pub data_dir: Option<PathBuf>,
    /// `application`, `router` or `edge`.
    pub role: Option<String>,
    /// XMPP domains the ring serves.
    pub domain: Option<Vec<String>>,
    /// Edge: the s2s listen address (host:port).
    pub s2s_listen: Option<String>,
    /// Admin HTTP address (host:port; port 0 picks a free one).
    pub admin: Option<String>,
    /// Log level or filter (`info`, `node=debug`, ...).
    pub log_level: Option<String>,
    /// Bucket size.
    pub k: Option<usize>,
    /// Bits per digit.
    pub bits: Option<u8>,
    /// Next-hop ack timeout in milliseconds.
    pub ack_timeout_ms: Option<u64>,
    /// Most simultaneous libp2p connections.
    pub max_connections: Option<u32>,
    /// If set, only these peers may be contacts (static topologies, tests).
    pub allow_peers: Option<Vec<String>>,
    /// Runtime worker threads (1 runs everything on one thread).
    pub threads: Option<usize>,
    /// How long an originated envelope may go without receipt or bounce
    /// before it is reported failed, in milliseconds.
    pub receipt_timeout_ms: Option<u64>,
    /// Edge: PEM certificate chain for s2s TLS.
    pub tls_cert: Option<PathBuf>,
    /// Edge: PEM private key for s2s TLS.
    pub tls_key: Option<PathBuf>,
    /// Edge: PEM bundle of CA roots whose certificates authenticate peers
    /// (SASL EXTERNAL).
    pub tls_ca: Option<PathBuf>,
    /// Edge: file holding the dialback secret shared by all edges.
    pub dialback_secret_file: Option<PathBuf>,
    /// Edge: static `DOMAIN=HOST:PORT` s2s routes (before DNS).
    pub s2s_host: Option<Vec<String>>,
    /// Edge: DNS server for SRV lookups (`host:port`).
    pub dns: Option<String>,
    /// Edge: allow outbound s2s without TLS.
    pub s2s_plaintext: Option<bool>,
    /// Edge: close s2s streams idle this long, seconds.
    pub s2s_idle_timeout_s: Option<u64>,
    /// Edge: largest stanza accepted, bytes.
    pub max_stanza_bytes: Option<usize>,
    /// Copies of each record (the coordinator's included).
    pub record_replicas: Option<usize>,
    /// Largest record value, bytes.
    pub record_max_bytes: Option<usize>,
    /// Most bytes of records one node stores.
    pub record_store_max_bytes: Option<u64>,
    /// How often a batch of records is checked for changed replica sets,
    /// in milliseconds.
    pub record_sweep_ms: Option<u64>,
    /// Most items a PubSub node keeps.
    pub pubsub_max_items: Option<usize>,
    /// Largest PubSub item payload, bytes.
    pub pubsub_max_item_bytes: Option<usize>,
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

    /// `self` with every value set in `over` replaced by it.
    pub fn merged(self, over: RawConfig) -> RawConfig {
        RawConfig {
            listen: over.listen.or(self.listen),
            bootstrap: over.bootstrap.or(self.bootstrap),
            psk_file: over.psk_file.or(self.psk_file),
            data_dir: over.data_dir.or(self.data_dir),
            role: over.role.or(self.role),
            domain: over.domain.or(self.domain),
            s2s_listen: over.s2s_listen.or(self.s2s_listen),
            admin: over.admin.or(self.admin),
            log_level: over.log_level.or(self.log_level),
            k: over.k.or(self.k),
            bits: over.bits.or(self.bits),
            ack_timeout_ms: over.ack_timeout_ms.or(self.ack_timeout_ms),
            max_connections: over.max_connections.or(self.max_connections),
            allow_peers: over.allow_peers.or(self.allow_peers),
            threads: over.threads.or(self.threads),
            record_replicas: over.record_replicas.or(self.record_replicas),
            record_max_bytes: over.record_max_bytes.or(self.record_max_bytes),
            record_store_max_bytes: over.record_store_max_bytes.or(self.record_store_max_bytes),
            record_sweep_ms: over.record_sweep_ms.or(self.record_sweep_ms),
            pubsub_max_items: over.pubsub_max_items.or(self.pubsub_max_items),
            pubsub_max_item_bytes: over.pubsub_max_item_bytes.or(self.pubsub_max_item_bytes),
            receipt_timeout_ms: over.receipt_timeout_ms.or(self.receipt_timeout_ms),
            tls_cert: over.tls_cert.or(self.tls_cert),
            tls_key: over.tls_key.or(self.tls_key),
            tls_ca: over.tls_ca.or(self.tls_ca),
            dialback_secret_file: over.dialback_secret_file.or(self.dialback_secret_file),
            s2s_host: over.s2s_host.or(self.s2s_host),
            dns: over.dns.or(self.dns),
            s2s_plaintext: over.s2s_plaintext.or(self.s2s_plaintext),
            s2s_idle_timeout_s: over.s2s_idle_timeout_s.or(self.s2s_idle_timeout_s),
            max_stanza_bytes: over.max_stanza_bytes.or(self.max_stanza_bytes),
        }
    }

    /// Checks every value and builds the typed configuration.
    pub fn validate(self) -> Result<NodeSettings, ConfigError> {
        let listen: Multiaddr = self
            .listen
            .as_deref()
            .unwrap_or("/ip4/127.0.0.1/tcp/0")
            .parse()
            .map_err(|e| err("listen", format!("not a multiaddr: {e}")))?;
        if !listen.iter().any(|p| matches!(p, Protocol::Tcp(_))) {
            return Err(err(
                "listen",
                "must be a TCP multiaddr such as /ip4/127.0.0.1/tcp/7600",
            ));
        }
        let mut bootstrap = Vec::new();
        for b in self.bootstrap.unwrap_or_default() {
            let addr: Multiaddr = b
                .parse()
                .map_err(|e| err("bootstrap", format!("{b:?} is not a multiaddr: {e}")))?;
            let Some(Protocol::P2p(peer)) = addr.iter().last() else {
                return Err(err(
                    "bootstrap",
                    format!("{b:?} must end in /p2p/<peer id>"),
                ));
            };
            bootstrap.push((peer, addr));
        }
        let psk_file = self.psk_file.ok_or_else(|| {
            err(
                "psk_file",
                "missing (create one with `xmpp-ring psk generate FILE`)",
            )
        })?;
        let psk = crate::psk::read(&psk_file).map_err(|m| err("psk_file", m))?;
        let data_dir = self.data_dir.ok_or_else(|| err("data_dir", "missing"))?;
        let role: Role = self
            .role
            .as_deref()
            .unwrap_or("application")
            .parse()
            .map_err(|m: String| err("role", m))?;
        let mut domains = Vec::new();
        for d in self.domain.unwrap_or_default() {
            let norm = d.trim_end_matches('.').to_ascii_lowercase();
            if jid::BareJid::new(&norm)
                .map(|j| j.node().is_some())
                .unwrap_or(true)
            {
                return Err(err("domain", format!("{d:?} is not a domain name")));
            }
            domains.push(norm);
        }
        let s2s_listen = match self.s2s_listen {
            Some(s) => Some(
                s.parse::<SocketAddr>()
                    .map_err(|e| err("s2s_listen", format!("{s:?}: {e}")))?,
            ),
            None => None,
        };
        if role == Role::Edge && s2s_listen.is_none() {
            return Err(err("s2s_listen", "an edge needs its s2s listen address"));
        }
        if role == Role::Edge && domains.is_empty() {
            return Err(err("domain", "an edge needs at least one domain"));
        }
        let admin: SocketAddr = self
            .admin
            .as_deref()
            .unwrap_or("127.0.0.1:0")
            .parse()
            .map_err(|e| err("admin", format!("not host:port: {e}")))?;
        let mut dht = dht::NodeConfig {
            role,
            ..dht::NodeConfig::default()
        };
        if let Some(k) = self.k {
            if !(1..=256).contains(&k) {
                return Err(err("k", format!("must be 1..=256, got {k}")));
            }
            dht.table.k = k;
        }
        if let Some(b) = self.bits {
            if !(1..=8).contains(&b) {
                return Err(err("bits", format!("must be 1..=8, got {b}")));
            }
            dht.table.bits = b;
        }
        if let Some(ms) = self.ack_timeout_ms {
            if !(10..=60_000).contains(&ms) {
                return Err(err(
                    "ack_timeout_ms",
                    format!("must be 10..=60000, got {ms}"),
                ));
            }
            dht.ack_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = self.receipt_timeout_ms {
            if !(100..=600_000).contains(&ms) {
                return Err(err(
                    "receipt_timeout_ms",
                    format!("must be 100..=600000, got {ms}"),
                ));
            }
            if Duration::from_millis(ms) <= dht.ack_timeout {
                return Err(err(
                    "receipt_timeout_ms",
                    "must be longer than ack_timeout_ms",
                ));
            }
            dht.receipt_timeout = Duration::from_millis(ms);
        }
        let max_connections = self.max_connections.unwrap_or(512);
        if max_connections == 0 {
            return Err(err("max_connections", "must be positive"));
        }
        let allow_peers = match self.allow_peers {
            Some(list) => Some(
                list.iter()
                    .map(|p| {
                        p.parse::<PeerId>()
                            .map_err(|e| err("allow_peers", format!("{p:?}: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            let key = if self.tls_cert.is_some() {
                "tls_key"
            } else {
                "tls_cert"
            };
            return Err(err(key, "tls_cert and tls_key go together"));
        }
        for (key, path) in [
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
            ("tls_ca", &self.tls_ca),
            ("dialback_secret_file", &self.dialback_secret_file),
        ] {
            if let Some(p) = path
                && !p.is_file()
            {
                return Err(err(key, format!("{} is not a readable file", p.display())));
            }
        }
        let mut s2s_hosts = std::collections::HashMap::new();
        for h in self.s2s_host.unwrap_or_default() {
            let (d, hp) = xmpp_edge::resolve::parse_override(&h).map_err(|m| err("s2s_host", m))?;
            s2s_hosts.insert(d, hp);
        }
        let dns = match self.dns {
            Some(d) => Some(
                d.parse::<SocketAddr>()
                    .map_err(|e| err("dns", format!("{d:?} is not host:port: {e}")))?,
            ),
            None => None,
        };
        let s2s_idle_timeout = Duration::from_secs(self.s2s_idle_timeout_s.unwrap_or(600));
        if s2s_idle_timeout.is_zero() {
            return Err(err("s2s_idle_timeout_s", "must be positive"));
        }
        let max_stanza_bytes = self.max_stanza_bytes.unwrap_or(512 * 1024);
        if !(1024..=16 * 1024 * 1024).contains(&max_stanza_bytes) {
            return Err(err(
                "max_stanza_bytes",
                format!("must be 1024..=16777216, got {max_stanza_bytes}"),
            ));
        }
        let log_level = self.log_level.unwrap_or_else(|| "info".into());
        let threads = self.threads.unwrap_or(1);
        if !(1..=64).contains(&threads) {
            return Err(err("threads", format!("must be 1..=64, got {threads}")));
        }
        let record_replicas = self.record_replicas.unwrap_or(3);
        if !(1..=16).contains(&record_replicas) {
            return Err(err(
                "record_replicas",
                format!("must be 1..=16, got {record_replicas}"),
            ));
        }
        let defaults = crate::records::StoreLimits::default();
        let max_record_bytes = self.record_max_bytes.unwrap_or(defaults.max_record_bytes);
        // A record and its request must fit in one envelope.
        if !(1..=512 * 1024).contains(&max_record_bytes) {
            return Err(err(
                "record_max_bytes",
                format!("must be 1..=524288, got {max_record_bytes}"),
            ));
        }
        let max_store_bytes = self
            .record_store_max_bytes
            .unwrap_or(defaults.max_store_bytes);
        if max_store_bytes < max_record_bytes as u64 {
            return Err(err(
                "record_store_max_bytes",
                format!(
                    "must be at least record_max_bytes ({max_record_bytes}), got {max_store_bytes}"
                ),
            ));
        }
        let record_sweep_ms = self.record_sweep_ms.unwrap_or(1000);
        if !(10..=3_600_000).contains(&record_sweep_ms) {
            return Err(err(
                "record_sweep_ms",
                format!("must be 10..=3600000, got {record_sweep_ms}"),
            ));
        }
        let pubsub_max_items = self.pubsub_max_items.unwrap_or(20);
        if !(1..=1000).contains(&pubsub_max_items) {
            return Err(err(
                "pubsub_max_items",
                format!("must be 1..=1000, got {pubsub_max_items}"),
            ));
        }
        // The default follows a small record limit down.
        let pubsub_max_item_bytes = self
            .pubsub_max_item_bytes
            .unwrap_or((16 * 1024).min(max_record_bytes / 2).max(1));
        // An item must fit in a node's items record.
        if !(1..=max_record_bytes / 2).contains(&pubsub_max_item_bytes) {
            return Err(err(
                "pubsub_max_item_bytes",
                format!(
                    "must be 1..={} (half of record_max_bytes), got {pubsub_max_item_bytes}",
                    max_record_bytes / 2
                ),
            ));
        }
        Ok(NodeSettings {
            listen,
            bootstrap,
            psk,
            psk_file,
            data_dir,
            role,
            domains,
            s2s_listen,
            admin,
            log_level,
            dht,
            max_connections,
            allow_peers,
            threads,
            records: RecordSettings {
                sweep_every: Duration::from_millis(record_sweep_ms),
                replicas: record_replicas,
                pubsub_max_items,
                pubsub_max_item_bytes,
                limits: crate::records::StoreLimits {
                    max_record_bytes,
                    max_store_bytes,
                },
            },
            edge: EdgeSettings {
                tls_cert: self.tls_cert,
                tls_key: self.tls_key,
                tls_ca: self.tls_ca,
                dialback_secret_file: self.dialback_secret_file,
                s2s_hosts,
                dns,
                plaintext: self.s2s_plaintext.unwrap_or(false),
                idle_timeout: s2s_idle_timeout,
                max_stanza_bytes,
            },
        })
    }
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// libp2p listen address.
    pub listen: Multiaddr,
    /// Bootstrap peers with their addresses.
    pub bootstrap: Vec<(PeerId, Multiaddr)>,
    /// The ring key.
    pub psk: libp2p::pnet::PreSharedKey,
    /// Where the key came from.
    pub psk_file: PathBuf,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Role.
    pub role: Role,
    /// Served domains (lowercase, no trailing dot).
    pub domains: Vec<String>,
    /// Edge s2s address.
    pub s2s_listen: Option<SocketAddr>,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// Log filter.
    pub log_level: String,
    /// dht parameters.
    pub dht: dht::NodeConfig,
    /// Connection limit.
    pub max_connections: u32,
    /// Contact allow-list, if any.
    pub allow_peers: Option<Vec<PeerId>>,
    /// Runtime worker threads.
    pub threads: usize,
    /// Record-store settings.
    pub records: RecordSettings,
    /// s2s settings (used when the role is `edge`).
    pub edge: EdgeSettings,
}

/// Validated record-store settings.
#[derive(Debug, Clone, Copy)]
pub struct RecordSettings {
    /// Copies of each record.
    pub replicas: usize,
    /// How often a batch of records is checked for changed replica sets.
    pub sweep_every: Duration,
    /// Most items a PubSub node keeps.
    pub pubsub_max_items: usize,
    /// Largest PubSub item payload, bytes.
    pub pubsub_max_item_bytes: usize,
    /// Size limits of this node's store.
    pub limits: crate::records::StoreLimits,
}

/// Validated s2s settings of an edge.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// Certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Trusted CA roots (PEM).
    pub tls_ca: Option<PathBuf>,
    /// Dialback secret file.
    pub dialback_secret_file: Option<PathBuf>,
    /// Static routes.
    pub s2s_hosts: std::collections::HashMap<String, (String, u16)>,
    /// DNS server.
    pub dns: Option<SocketAddr>,
    /// Allow outbound streams without TLS.
    pub plaintext: bool,
    /// Idle timeout of s2s streams.
    pub idle_timeout: Duration,
    /// Stanza size limit.
    pub max_stanza_bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(dir: &Path) -> RawConfig {
        let psk = dir.join("ring.psk");
        if !psk.exists() {
            crate::psk::generate_file(&psk).unwrap();
        }
        RawConfig {
            psk_file: Some(psk),
            data_dir: Some(dir.join("data")),
            ..RawConfig::default()
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let s = base(dir.path()).validate().unwrap();
        assert_eq!(s.role, Role::Application);
        assert_eq!(s.admin.to_string(), "127.0.0.1:0");
        assert_eq!(s.listen.to_string(), "/ip4/127.0.0.1/tcp/0");
        assert!(s.bootstrap.is_empty());
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = RawConfig {
            role: Some("router".into()),
            k: Some(8),
            ..base(dir.path())
        };
        let flags = RawConfig {
            role: Some("application".into()),
            ..RawConfig::default()
        };
        let s = file.merged(flags).validate().unwrap();
        assert_eq!(s.role, Role::Application);
        assert_eq!(s.dht.table.k, 8);
    }

    #[test]
    fn toml_file_round_trip_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        std::fs::write(&p, "listen = \"/ip4/127.0.0.1/tcp/7600\"\nrole = \"edge\"\ndomain = [\"ring.test\"]\ns2s_listen = \"127.0.0.1:5269\"\n").unwrap();
        let raw = RawConfig::from_file(&p).unwrap();
        assert_eq!(raw.role.as_deref(), Some("edge"));
        std::fs::write(&p, "lisen = \"x\"\n").unwrap();
        let e = RawConfig::from_file(&p).unwrap_err();
        assert_eq!(e.key, "config");
        assert!(e.message.contains("lisen"), "{e}");
    }

    #[test]
    fn every_bad_value_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let b = || base(dir.path());
        let cases: Vec<(RawConfig, &str)> = vec![
            (
                RawConfig {
                    listen: Some("nonsense".into()),
                    ..b()
                },
                "listen",
            ),
            (
                RawConfig {
                    listen: Some("/ip4/127.0.0.1/udp/1".into()),
                    ..b()
                },
                "listen",
            ),
            (
                RawConfig {
                    bootstrap: Some(vec!["/ip4/127.0.0.1/tcp/1".into()]),
                    ..b()
                },
                "bootstrap",
            ),
            (
                RawConfig {
                    psk_file: None,
                    ..b()
                },
                "psk_file",
            ),
            (
                RawConfig {
                    psk_file: Some(dir.path().join("nope")),
                    ..b()
                },
                "psk_file",
            ),
            (
                RawConfig {
                    data_dir: None,
                    ..b()
                },
                "data_dir",
            ),
            (
                RawConfig {
                    role: Some("king".into()),
                    ..b()
                },
                "role",
            ),
            (
                RawConfig {
                    domain: Some(vec!["user@host".into()]),
                    ..b()
                },
                "domain",
            ),
            (
                RawConfig {
                    role: Some("edge".into()),
                    domain: Some(vec!["ring.test".into()]),
                    ..b()
                },
                "s2s_listen",
            ),
            (
                RawConfig {
                    s2s_listen: Some("nowhere".into()),
                    ..b()
                },
                "s2s_listen",
            ),
            (
                RawConfig {
                    admin: Some("localhost".into()),
                    ..b()
                },
                "admin",
            ),
            (RawConfig { k: Some(0), ..b() }, "k"),
            (
                RawConfig {
                    bits: Some(9),
                    ..b()
                },
                "bits",
            ),
            (
                RawConfig {
                    ack_timeout_ms: Some(1),
                    ..b()
                },
                "ack_timeout_ms",
            ),
            (
                RawConfig {
                    max_connections: Some(0),
                    ..b()
                },
                "max_connections",
            ),
            (
                RawConfig {
                    allow_peers: Some(vec!["nobody".into()]),
                    ..b()
                },
                "allow_peers",
            ),
            (
                RawConfig {
                    threads: Some(0),
                    ..b()
                },
                "threads",
            ),
            (
                RawConfig {
                    record_replicas: Some(0),
                    ..b()
                },
                "record_replicas",
            ),
            (
                RawConfig {
                    record_max_bytes: Some(1 << 30),
                    ..b()
                },
                "record_max_bytes",
            ),
            (
                RawConfig {
                    record_max_bytes: Some(1000),
                    record_store_max_bytes: Some(10),
                    ..b()
                },
                "record_store_max_bytes",
            ),
            (
                RawConfig {
                    pubsub_max_items: Some(0),
                    ..b()
                },
                "pubsub_max_items",
            ),
            (
                RawConfig {
                    record_max_bytes: Some(1000),
                    pubsub_max_item_bytes: Some(600),
                    ..b()
                },
                "pubsub_max_item_bytes",
            ),
            (
                RawConfig {
                    receipt_timeout_ms: Some(5),
                    ..b()
                },
                "receipt_timeout_ms",
            ),
            (
                RawConfig {
                    tls_cert: Some(dir.path().join("ring.psk")),
                    ..b()
                },
                "tls_key",
            ),
            (
                RawConfig {
                    tls_ca: Some(dir.path().join("missing.pem")),
                    ..b()
                },
                "tls_ca",
            ),
            (
                RawConfig {
                    s2s_host: Some(vec!["a.test".into()]),
                    ..b()
                },
                "s2s_host",
            ),
            (
                RawConfig {
                    dns: Some("nowhere".into()),
                    ..b()
                },
                "dns",
            ),
            (
                RawConfig {
                    max_stanza_bytes: Some(10),
                    ..b()
                },
                "max_stanza_bytes",
            ),
        ];
        for (raw, key) in cases {
            let e = raw.validate().unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
    }
}
