//! The edge as its owner sees it: configuration, start-up, the channel of
//! inbound stanzas and the handle for outbound ones.
//!
//! The owner (a ring node) gets [`EdgeEvent`]s: stanzas from the
//! federation addressed to ring domains (already authenticated: their
//! `from` domain proved itself by dialback or SASL EXTERNAL, their `to`
//! domain is ours), and stanzas it asked to send that could not be
//! delivered, with the RFC 6120 condition to bounce them with. Stanzas
//! travel in the `jabber:client` namespace on this side (so xmpp-parsers
//! types apply) and `jabber:server` on the wire.

use crate::dialback::Secret;
use crate::outbound::OutboundPool;
use crate::resolve::Resolver;
use crate::tls::Identity;
use crate::xml::Limits;
use rustls::RootCertStore;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use xmpp_parsers::minidom::Element;

/// Everything an edge needs.
pub struct EdgeConfig {
    /// Domains the ring serves (lowercase); subdomains are served too.
    pub domains: Vec<String>,
    /// Where to listen for s2s.
    pub listen: SocketAddr,
    /// Our certificate and key.
    pub identity: Identity,
    /// CA roots that make a peer certificate authenticate (SASL EXTERNAL);
    /// `None`: only dialback authenticates.
    pub roots: Option<RootCertStore>,
    /// The ring-wide dialback secret.
    pub secret: Secret,
    /// How remote domains are found.
    pub resolver: Resolver,
    /// Parser bounds.
    pub limits: Limits,
    /// Refuse to send stanzas over a stream without TLS.
    pub require_tls: bool,
    /// A stream silent this long is closed (`connection-timeout` inbound).
    pub idle_timeout: Duration,
    /// Connecting, TLS and authentication must finish within this.
    pub handshake_timeout: Duration,
    /// Inbound connections at once.
    pub max_inbound: usize,
    /// Stanzas queued per remote domain, while its stream connects or while
    /// the peer reads slower than the ring sends. Past it a stanza bounces
    /// with `resource-constraint` (an error stanza, which is never
    /// answered, is dropped); both count in `stanzas_bounced`.
    pub outbound_queue: usize,
}

impl EdgeConfig {
    /// Defaults for everything but the identity, secret and resolver.
    pub fn new(
        domains: Vec<String>,
        listen: SocketAddr,
        identity: Identity,
        secret: Secret,
        resolver: Resolver,
    ) -> Self {
        EdgeConfig {
            domains,
            listen,
            identity,
            roots: None,
            secret,
            resolver,
            limits: Limits::default(),
            require_tls: true,
            idle_timeout: Duration::from_secs(600),
            handshake_timeout: Duration::from_secs(30),
            max_inbound: 1024,
            outbound_queue: 16_384,
        }
    }
}

/// What the edge tells its owner.
#[derive(Debug)]
pub enum EdgeEvent {
    /// An authenticated stanza from the federation for one of our domains.
    Inbound(Element),
    /// A stanza given to [`EdgeHandle::send`] could not be delivered.
    Undeliverable {
        /// The stanza as it was given.
        stanza: Element,
        /// The RFC 6120 stanza error condition to bounce it with.
        condition: &'static str,
    },
}

/// Counters of the edge (for `/status` and `/metrics`).
#[derive(Default, Debug)]
pub struct EdgeStats {
    /// Inbound connections accepted.
    pub inbound_connections: AtomicU64,
    /// Inbound connections refused (over the limit).
    pub inbound_refused: AtomicU64,
    /// Stanzas received from the federation.
    pub stanzas_in: AtomicU64,
    /// Stanzas written to the federation.
    pub stanzas_out: AtomicU64,
    /// Stanzas bounced back to the owner as undeliverable.
    pub stanzas_bounced: AtomicU64,
    /// Peers authenticated by dialback.
    pub dialback_ok: AtomicU64,
    /// Dialback attempts that failed.
    pub dialback_failed: AtomicU64,
    /// Peers authenticated by SASL EXTERNAL.
    pub sasl_external_ok: AtomicU64,
    /// Outbound streams established.
    pub outbound_streams: AtomicU64,
    /// `db:verify` requests answered `valid` (keys this ring issued,
    /// possibly by another edge).
    pub verify_valid: AtomicU64,
    /// `db:verify` requests answered `invalid`.
    pub verify_invalid: AtomicU64,
    /// Stream errors sent, by condition.
    pub stream_errors: std::sync::Mutex<BTreeMap<&'static str, u64>>,
}

impl EdgeStats {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stream_error(&self, name: &'static str) {
        if let Ok(mut m) = self.stream_errors.lock() {
            *m.entry(name).or_default() += 1;
        }
    }
}

/// State shared by every connection of an edge.
pub(crate) struct Shared {
    pub(crate) cfg: EdgeConfig,
    pub(crate) roots: Option<Arc<RootCertStore>>,
    pub(crate) server_tls: Arc<rustls::ServerConfig>,
    pub(crate) client_tls: Arc<rustls::ClientConfig>,
    pub(crate) events: mpsc::Sender<EdgeEvent>,
    pub(crate) stats: Arc<EdgeStats>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// Sends stanzas to the federation.
#[derive(Clone)]
pub struct EdgeHandle {
    pool: Arc<OutboundPool>,
    stats: Arc<EdgeStats>,
    local: SocketAddr,
    stop: Arc<watch::Sender<bool>>,
}

impl EdgeHandle {
    /// Queues `stanza` (namespace `jabber:client`, `from` one of our
    /// domains, `to` a remote one) on the stream to its domain, opening the
    /// stream if needed. Failures come back as [`EdgeEvent::Undeliverable`].
    pub fn send(&self, stanza: Element) {
        self.pool.send(stanza);
    }

    /// The counters.
    pub fn stats(&self) -> &EdgeStats {
        &self.stats
    }

    /// The address the s2s listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Closes every stream with `system-shutdown` and stops listening.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

/// Starts the edge: binds the listener and serves until
/// [`EdgeHandle::shutdown`].
pub async fn start(cfg: EdgeConfig, events: mpsc::Sender<EdgeEvent>) -> Result<EdgeHandle, String> {
    let server_tls = crate::tls::server_config(&cfg.identity)?;
    let client_tls = crate::tls::client_config(&cfg.identity)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen for s2s on {}: {e}", cfg.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let roots = cfg.roots.clone().map(Arc::new);
    let max_inbound = cfg.max_inbound;
    let shared = Arc::new(Shared {
        cfg,
        roots,
        server_tls,
        client_tls,
        events,
        stats: Arc::new(EdgeStats::default()),
        shutdown: stop_rx.clone(),
    });
    let pool = Arc::new(OutboundPool::new(shared.clone()));
    let handle = EdgeHandle {
        pool,
        stats: shared.stats.clone(),
        local,
        stop: Arc::new(stop_tx),
    };
    tokio::spawn(accept_loop(
        listener,
        shared,
        Arc::new(Semaphore::new(max_inbound)),
        stop_rx,
    ));
    Ok(handle)
}

/// Accepts inbound s2s connections, at most `limit` at once (one permit per
/// connection, released when it ends).
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("s2s accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            EdgeStats::bump(&shared.stats.inbound_refused);
            tracing::warn!(%peer, "too many s2s connections; refusing");
            drop(tcp);
            continue;
        };
        EdgeStats::bump(&shared.stats.inbound_connections);
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            crate::inbound::serve(Box::new(tcp), peer, shared).await;
            drop(permit);
        });
    }
}
