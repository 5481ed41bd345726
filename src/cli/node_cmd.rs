//! `xmpp-ring node`: runs one ring node until SIGTERM or Ctrl-C.

use super::CliError;
use clap::Args;
use node::config::RawConfig;
use std::path::PathBuf;

/// Options of `xmpp-ring node`; each is also a key of the config file.
#[derive(Args, Debug, Default)]
pub struct NodeArgs {
    /// TOML configuration file (flags override its keys).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// libp2p listen multiaddr [default: /ip4/127.0.0.1/tcp/0].
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Option<String>,
    /// A bootstrap peer, ending in `/p2p/<peer id>` (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// The ring's pre-shared key file.
    #[arg(long, value_name = "FILE")]
    pub psk_file: Option<PathBuf>,
    /// Data directory (identity; later, records).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// application, router or edge [default: application].
    #[arg(long)]
    pub role: Option<String>,
    /// An XMPP domain the ring serves (repeatable).
    #[arg(long)]
    pub domain: Vec<String>,
    /// Edge: s2s listen address (host:port).
    #[arg(long, value_name = "HOST:PORT")]
    pub s2s_listen: Option<String>,
    /// Admin HTTP address [default: 127.0.0.1:0, a free port].
    #[arg(long, value_name = "HOST:PORT")]
    pub admin: Option<String>,
    /// Log level or filter [default: info; RUST_LOG wins when set].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Bucket size [default: 20].
    #[arg(long)]
    pub k: Option<usize>,
    /// Bits per digit [default: 4].
    #[arg(long)]
    pub bits: Option<u8>,
    /// Next-hop ack timeout, ms [default: 1000].
    #[arg(long)]
    pub ack_timeout_ms: Option<u64>,
    /// Most simultaneous connections [default: 512].
    #[arg(long)]
    pub max_connections: Option<u32>,
    /// Only these peers may be contacts (repeatable; default: anyone with the key).
    #[arg(long, value_name = "PEER_ID")]
    pub allow_peer: Vec<String>,
    /// Runtime worker threads [default: 1].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Time an envelope may go without receipt or bounce before it is
    /// reported failed, ms [default: 30000].
    #[arg(long)]
    pub receipt_timeout_ms: Option<u64>,
    /// Edge: PEM certificate chain for s2s TLS [default: self-signed, generated].
    #[arg(long, value_name = "FILE.pem")]
    pub tls_cert: Option<PathBuf>,
    /// Edge: PEM private key for s2s TLS.
    #[arg(long, value_name = "FILE.pem")]
    pub tls_key: Option<PathBuf>,
    /// Edge: PEM CA roots whose certificates authenticate peers (SASL EXTERNAL).
    #[arg(long, value_name = "FILE.pem")]
    pub tls_ca: Option<PathBuf>,
    /// Edge: the dialback secret shared by all edges of the ring.
    #[arg(long, value_name = "FILE")]
    pub dialback_secret_file: Option<PathBuf>,
    /// Edge: static s2s route DOMAIN=HOST:PORT (repeatable; before DNS).
    #[arg(long, value_name = "DOMAIN=HOST:PORT")]
    pub s2s_host: Vec<String>,
    /// Edge: DNS server for SRV lookups [default: the system's].
    #[arg(long, value_name = "HOST:PORT")]
    pub dns: Option<String>,
    /// Edge: allow outbound s2s without TLS.
    #[arg(long)]
    pub s2s_plaintext: bool,
    /// Edge: close s2s streams idle this long, seconds [default: 600].
    #[arg(long)]
    pub s2s_idle_timeout_s: Option<u64>,
    /// Edge: largest stanza accepted, bytes [default: 524288].
    #[arg(long)]
    pub max_stanza_bytes: Option<usize>,
    /// Copies of each record, the coordinator's included [default: 3].
    #[arg(long)]
    pub record_replicas: Option<usize>,
    /// Largest record value, bytes [default: 65536].
    #[arg(long)]
    pub record_max_bytes: Option<usize>,
    /// Most bytes of records this node stores [default: 268435456].
    #[arg(long)]
    pub record_store_max_bytes: Option<u64>,
    /// Re-replication: a batch of records is checked every this many ms [default: 1000].
    #[arg(long)]
    pub record_sweep_ms: Option<u64>,
    /// Most items a PubSub node keeps [default: 20].
    #[arg(long)]
    pub pubsub_max_items: Option<usize>,
    /// Largest PubSub item payload, bytes [default: 16384].
    #[arg(long)]
    pub pubsub_max_item_bytes: Option<usize>,
}

impl NodeArgs {
    fn as_raw(&self) -> RawConfig {
        let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        RawConfig {
            listen: self.listen.clone(),
            bootstrap: list(&self.bootstrap),
            psk_file: self.psk_file.clone(),
            data_dir: self.data_dir.clone(),
            role: self.role.clone(),
            domain: list(&self.domain),
            s2s_listen: self.s2s_listen.clone(),
            admin: self.admin.clone(),
            log_level: self.log_level.clone(),
            k: self.k,
            bits: self.bits,
            ack_timeout_ms: self.ack_timeout_ms,
            max_connections: self.max_connections,
            allow_peers: list(&self.allow_peer),
            threads: self.threads,
            record_replicas: self.record_replicas,
            record_max_bytes: self.record_max_bytes,
            record_store_max_bytes: self.record_store_max_bytes,
            record_sweep_ms: self.record_sweep_ms,
            pubsub_max_items: self.pubsub_max_items,
            pubsub_max_item_bytes: self.pubsub_max_item_bytes,
            receipt_timeout_ms: self.receipt_timeout_ms,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_ca: self.tls_ca.clone(),
            dialback_secret_file: self.dialback_secret_file.clone(),
            s2s_host: list(&self.s2s_host),
            dns: self.dns.clone(),
            s2s_plaintext: self.s2s_plaintext.then_some(true),
            s2s_idle_timeout_s: self.s2s_idle_timeout_s,
            max_stanza_bytes: self.max_stanza_bytes,
        }
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Runs the node.
pub fn run(args: &NodeArgs) -> Result<String, CliError> {
    let file = match &args.config {
        Some(p) => RawConfig::from_file(p).map_err(|e| CliError::Usage(e.to_string()))?,
        None => RawConfig::default(),
    };
    let settings = file
        .merged(args.as_raw())
        .validate()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    super::init_logging(&settings.log_level);
    let rt = if settings.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.threads)
            .enable_all()
            .build()
    }
    .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    rt.block_on(node::runtime::run(settings, shutdown_signal(), |ready| {
        println!(
            "xmpp-ring node {} ({}) listening on {} admin http://{}",
            &ready.node_id[..16],
            ready.role,
            ready.listen.join(" "),
            ready.admin
        );
    }))
    .map_err(CliError::Failed)?;
    Ok(String::new())
}
