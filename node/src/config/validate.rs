//! [`RawConfig::validate`]: every value checked against its range, with
//! the key named in the error, and the typed settings it produces.

use super::{ConfigError, RawConfig, err};
use dht::Role;
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `value` (or `default`) when it is within `range`, else an error naming
/// `key`.
fn ranged<T>(
    key: &str,
    value: Option<T>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: PartialOrd + Copy + std::fmt::Display,
{
    let v = value.unwrap_or(default);
    if !range.contains(&v) {
        return Err(err(
            key,
            format!("must be {}..={}, got {v}", range.start(), range.end()),
        ));
    }
    Ok(v)
}

impl RawConfig {
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
        let psk = crate::psk::read(&psk_file).map_err(|m| err("psk_file", m.to_string()))?;
        let data_dir = self.data_dir.ok_or_else(|| err("data_dir", "missing"))?;
        let role: Role = self
            .role
            .as_deref()
            .unwrap_or("application")
            .parse()
            .map_err(|m: dht::UnknownRole| err("role", m.to_string()))?;
        let mut domains = Vec::new();
        for d in self.domain.unwrap_or_default() {
            let parsed = xmpp_addr::Domain::parse(&d)
                .map_err(|e| err("domain", format!("{d:?} is not a domain name: {e}")))?;
            domains.push(parsed.as_str().to_string());
        }
        let s2s_listen = match self.s2s_listen {
            Some(s) => Some(
                s.parse::<SocketAddr>()
                    .map_err(|e| err("s2s_listen", format!("{s:?}: {e}")))?,
            ),
            None => None,
        };
        let c2s_listen = match self.c2s_listen {
            Some(s) => Some(
                s.parse::<SocketAddr>()
                    .map_err(|e| err("c2s_listen", format!("{s:?}: {e}")))?,
            ),
            None => None,
        };
        let c2s_tls_listen = match self.c2s_tls_listen {
            Some(s) => Some(
                s.parse::<SocketAddr>()
                    .map_err(|e| err("c2s_tls_listen", format!("{s:?}: {e}")))?,
            ),
            None => None,
        };
        if (c2s_listen.is_some() || c2s_tls_listen.is_some()) && domains.is_empty() {
            return Err(err(
                "domain",
                "a node with c2s_listen or c2s_tls_listen needs a domain",
            ));
        }
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
            dht.table.k =
                dht::table::TableConfig::check_k(k).map_err(|e| err("k", e.to_string()))?;
        }
        if let Some(b) = self.bits {
            dht.table.bits =
                dht::table::TableConfig::check_bits(b).map_err(|e| err("bits", e.to_string()))?;
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
        if let Some(ms) = self.liveness_interval_ms {
            if !(1_000..=86_400_000).contains(&ms) {
                return Err(err(
                    "liveness_interval_ms",
                    format!("must be 1000..=86400000, got {ms}"),
                ));
            }
            dht.liveness_interval = Duration::from_millis(ms);
        }
        if let Some(ms) = self.neighbour_interval_ms {
            if !(100..=600_000).contains(&ms) {
                return Err(err(
                    "neighbour_interval_ms",
                    format!("must be 100..=600000, got {ms}"),
                ));
            }
            dht.neighbour_interval = Duration::from_millis(ms);
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
            let (d, hp) = xmpp_edge::resolve::parse_override(&h)
                .map_err(|m| err("s2s_host", m.to_string()))?;
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
        let max_stanza_bytes = ranged(
            "max_stanza_bytes",
            self.max_stanza_bytes,
            512 * 1024,
            1024..=16 * 1024 * 1024,
        )?;
        let max_stanza_nodes = ranged(
            "max_stanza_nodes",
            self.max_stanza_nodes,
            8192,
            16..=1_000_000,
        )?;
        let auth_timeout = ranged("s2s_auth_timeout_s", self.s2s_auth_timeout_s, 60, 1..=3600)?;
        let max_inbound = ranged(
            "s2s_max_connections",
            self.s2s_max_connections,
            1024,
            1..=1_000_000,
        )?;
        let max_inbound_per_ip = ranged(
            "s2s_max_connections_per_ip",
            self.s2s_max_connections_per_ip,
            64,
            1..=max_inbound,
        )?;
        let connection_rate = ranged(
            "s2s_connection_rate_per_ip",
            self.s2s_connection_rate_per_ip,
            20,
            1..=100_000,
        )?;
        let max_verifications = ranged(
            "s2s_max_verifications",
            self.s2s_max_verifications,
            64,
            1..=100_000,
        )?;
        let write_timeout = ranged(
            "s2s_write_timeout_s",
            self.s2s_write_timeout_s,
            30,
            1..=3600,
        )?;
        let write_queue_bytes = ranged(
            "s2s_write_queue_bytes",
            self.s2s_write_queue_bytes,
            256 * 1024,
            4096..=1 << 30,
        )?;
        let outbound_queue_bytes = ranged(
            "s2s_outbound_queue_bytes",
            self.s2s_outbound_queue_bytes,
            16 * 1024 * 1024,
            max_stanza_bytes..=1 << 34,
        )?;
        let max_outbound = ranged(
            "s2s_max_outbound",
            self.s2s_max_outbound,
            1024,
            1..=1_000_000,
        )?;
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
        let served = xmpp_addr::Served::new(&domains).map_err(|e| err("domain", e.to_string()))?;
        let c2s_max_connections = ranged(
            "c2s_max_connections",
            self.c2s_max_connections,
            10_000,
            1..=1_000_000,
        )?;
        let c2s = C2sSettings {
            listen: c2s_listen,
            tls_listen: c2s_tls_listen,
            require_tls: self.c2s_require_tls.unwrap_or(true),
            max_connections: c2s_max_connections,
            max_connections_per_ip: ranged(
                "c2s_max_connections_per_ip",
                self.c2s_max_connections_per_ip,
                32,
                1..=c2s_max_connections,
            )?,
            failed_logins_per_ip: ranged(
                "c2s_failed_logins_per_ip",
                self.c2s_failed_logins_per_ip,
                10,
                1..=1_000_000,
            )?,
            connection_rate_per_ip: ranged(
                "c2s_connection_rate_per_ip",
                self.c2s_connection_rate_per_ip,
                20,
                1..=1_000_000,
            )?,
            auth_timeout: Duration::from_secs(ranged(
                "c2s_auth_timeout_s",
                self.c2s_auth_timeout_s,
                30,
                1..=3600,
            )?),
            max_resources: ranged("c2s_max_resources", self.c2s_max_resources, 10, 1..=1000)?,
            max_offline: ranged("c2s_max_offline", self.c2s_max_offline, 100, 0..=100_000)?,
            register: self.c2s_register.unwrap_or(false),
            registrations_per_ip: ranged(
                "c2s_registrations_per_ip",
                self.c2s_registrations_per_ip,
                5,
                1..=1_000_000,
            )?,
        };
        Ok(NodeSettings {
            c2s,
            listen,
            bootstrap,
            psk,
            psk_file,
            data_dir,
            role,
            domains,
            served,
            s2s_listen,
            admin_token: self.admin_token.unwrap_or(false) || !admin.ip().is_loopback(),
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
                system_roots: self.s2s_system_roots.unwrap_or(true),
                secure_auth: self.s2s_secure_auth.unwrap_or(false),
                dialback_secret_file: self.dialback_secret_file,
                s2s_hosts,
                dns,
                plaintext: self.s2s_plaintext.unwrap_or(false),
                idle_timeout: s2s_idle_timeout,
                auth_timeout: Duration::from_secs(auth_timeout),
                write_timeout: Duration::from_secs(write_timeout),
                max_stanza_bytes,
                max_stanza_nodes,
                max_inbound,
                max_inbound_per_ip,
                connection_rate_per_ip: connection_rate,
                max_verifications,
                write_queue_bytes,
                outbound_queue_bytes,
                max_outbound,
            },
            services: ServiceLimits {
                max_rooms_per_user: ranged(
                    "muc_max_rooms_per_user",
                    self.muc_max_rooms_per_user,
                    50,
                    1..=1_000_000,
                )?,
                max_rooms: ranged("muc_max_rooms", self.muc_max_rooms, 5000, 1..=10_000_000)?,
                max_nodes_per_user: ranged(
                    "pubsub_max_nodes_per_user",
                    self.pubsub_max_nodes_per_user,
                    50,
                    1..=1_000_000,
                )?,
                max_nodes: ranged(
                    "pubsub_max_nodes",
                    self.pubsub_max_nodes,
                    5000,
                    1..=10_000_000,
                )?,
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
    /// Served domains (normalised, no trailing dot).
    pub domains: Vec<String>,
    /// The same, for membership tests (subdomains included).
    pub served: xmpp_addr::Served,
    /// Edge s2s address.
    pub s2s_listen: Option<SocketAddr>,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// Whether admin requests need the bearer token (`admin.token` in the
    /// data directory): always beyond loopback.
    pub admin_token: bool,
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
    /// Quotas of the MUC and PubSub services.
    pub services: ServiceLimits,
    /// Client logins.
    pub c2s: C2sSettings,
}

/// Validated c2s settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct C2sSettings {
    /// Where clients connect (STARTTLS); `None`: not there.
    pub listen: Option<SocketAddr>,
    /// Where clients connect with direct TLS (XEP-0368); `None`: not
    /// there. Neither address: no client logins on this node.
    pub tls_listen: Option<SocketAddr>,
    /// STARTTLS before authentication.
    pub require_tls: bool,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once per source address.
    pub max_connections_per_ip: usize,
    /// New connections per second per source address.
    pub connection_rate_per_ip: u32,
    /// Failed logins per minute per source address.
    pub failed_logins_per_ip: u32,
    /// Time to log in and bind after the first header.
    pub auth_timeout: Duration,
    /// Sessions one user may have at once (on this node).
    pub max_resources: usize,
    /// Messages kept per user with no available session.
    pub max_offline: usize,
    /// In-band registration (XEP-0077).
    pub register: bool,
    /// In-band registrations per hour per source address.
    pub registrations_per_ip: u32,
}

/// Quotas of the ring's services, enforced by each service JID's registry
/// (see `xmpp::directory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceLimits {
    /// Rooms one user may own on a MUC service.
    pub max_rooms_per_user: usize,
    /// Rooms a MUC service holds.
    pub max_rooms: usize,
    /// PubSub nodes one user may own on a service.
    pub max_nodes_per_user: usize,
    /// PubSub nodes a service holds.
    pub max_nodes: usize,
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
    /// Also trust the web PKI's roots.
    pub system_roots: bool,
    /// Refuse remotes whose certificate does not validate.
    pub secure_auth: bool,
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
    /// Time an inbound stream has to authenticate.
    pub auth_timeout: Duration,
    /// Time a write may take.
    pub write_timeout: Duration,
    /// Stanza size limit.
    pub max_stanza_bytes: usize,
    /// Stanza node limit.
    pub max_stanza_nodes: usize,
    /// Inbound connections at once.
    pub max_inbound: usize,
    /// Inbound connections at once per source address.
    pub max_inbound_per_ip: usize,
    /// New inbound connections per second per source address.
    pub connection_rate_per_ip: u32,
    /// Remote domains verified at once.
    pub max_verifications: usize,
    /// Bytes queued for one inbound peer.
    pub write_queue_bytes: usize,
    /// Bytes queued per remote domain.
    pub outbound_queue_bytes: usize,
    /// Outbound streams at once.
    pub max_outbound: usize,
}
