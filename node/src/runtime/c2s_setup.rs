//! Starting the client (c2s) listeners of a node started with
//! `c2s_listen` and/or `c2s_tls_listen`: the certificate (the edge's, or generated on first start
//! for the node's domains), the decoy secret that makes unknown users look
//! like known ones, the bounds from the configuration, and a task that
//! feeds the listener's events to the core.

use super::Input;
use crate::config::NodeSettings;
use crate::error::NodeError;
use rand::RngExt;
use ring_c2s::server::{self, C2sStats, Listeners, ServerConfig};
use ring_c2s::{C2sConfig, server::C2sEvent};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use xmpp_edge::ip_limit::SourceLimits;

const DECOY_SECRET: &str = "c2s-decoy.secret";

/// A running listener.
pub(crate) struct C2sRunning {
    /// Where it listens for STARTTLS connections.
    pub addr: Option<SocketAddr>,
    /// Where it listens for direct-TLS connections.
    pub tls_addr: Option<SocketAddr>,
    /// Ends once every connection has (after the stop signal).
    pub task: JoinHandle<()>,
    /// Its counters.
    pub stats: Arc<C2sStats>,
}

fn decoy_secret(settings: &NodeSettings) -> Result<Vec<u8>, NodeError> {
    let p = settings.data_dir.join(DECOY_SECRET);
    if p.is_file() {
        return std::fs::read(&p).map_err(|e| NodeError::read(&p, e));
    }
    let mut b = [0u8; 32];
    rand::rng().fill(&mut b);
    crate::identity::write_private(&p, &b)?;
    Ok(b.to_vec())
}

/// Binds the listener and starts serving clients until `stop` flips.
pub(crate) async fn start(
    settings: &NodeSettings,
    inbox: mpsc::Sender<Input>,
    stop: watch::Receiver<bool>,
) -> Result<C2sRunning, NodeError> {
    let c = &settings.c2s;
    let identity = super::edge_setup::identity(settings)?;
    let tls = xmpp_edge::tls::client_facing_config(&identity)?;
    let mut machine = C2sConfig::new(settings.served.clone(), decoy_secret(settings)?);
    machine.require_tls = c.require_tls;
    machine.auth_timeout = c.auth_timeout;
    machine.registration = c.register;
    let limits = xmpp_edge::xml::Limits {
        max_stanza: settings.edge.max_stanza_bytes,
        max_nodes: settings.edge.max_stanza_nodes,
        ..Default::default()
    };
    let cfg = Arc::new(ServerConfig {
        machine: Arc::new(machine),
        direct_tls: Some(server::direct_tls_config(&tls)),
        tls: Some(tls),
        limits,
        per_source: SourceLimits {
            max_open: c.max_connections_per_ip,
            rate: f64::from(c.connection_rate_per_ip),
            burst: 2.0 * f64::from(c.connection_rate_per_ip),
        },
        failed_logins: SourceLimits {
            max_open: usize::MAX,
            rate: f64::from(c.failed_logins_per_ip) / 60.0,
            burst: f64::from(c.failed_logins_per_ip),
        },
        registrations: SourceLimits {
            max_open: usize::MAX,
            rate: f64::from(c.registrations_per_ip) / 3600.0,
            burst: f64::from(c.registrations_per_ip),
        },
        max_connections: c.max_connections,
        write_queue_bytes: settings.edge.write_queue_bytes,
        write_timeout: settings.edge.write_timeout,
        handshake_timeout: Duration::from_secs(10),
    });
    let (starttls, addr) = bind(c.listen).await?;
    let (direct_tls, tls_addr) = bind(c.tls_listen).await?;
    let listeners = Listeners {
        starttls,
        direct_tls,
    };
    let (tx, mut rx) = mpsc::channel::<C2sEvent>(1024);
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if inbox.send(Input::C2s(ev)).await.is_err() {
                return;
            }
        }
    });
    let stats = Arc::new(C2sStats::default());
    let task = tokio::spawn(server::run(listeners, cfg, tx, stats.clone(), stop));
    tracing::info!(starttls = ?addr, direct_tls = ?tls_addr, "listening for clients");
    Ok(C2sRunning {
        addr,
        tls_addr,
        task,
        stats,
    })
}

/// Binds one listener, when its address is set; returns it and the
/// address it got (port 0 asks for a free one).
async fn bind(
    listen: Option<SocketAddr>,
) -> Result<(Option<tokio::net::TcpListener>, Option<SocketAddr>), NodeError> {
    let Some(listen) = listen else {
        return Ok((None, None));
    };
    let why = |e: std::io::Error| NodeError::Listen {
        addr: listen.to_string(),
        why: e.to_string(),
    };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(why)?;
    let addr = listener.local_addr().map_err(why)?;
    Ok((Some(listener), Some(addr)))
}
