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
//!
//! Every server on the internet can reach an edge, so every resource a
//! peer can make it spend is bounded here (see [`EdgeConfig`]): inbound
//! connections in all and per source address, the time to authenticate,
//! the bytes and nodes of what is parsed (smaller before authentication),
//! the bytes queued for a peer that does not read, the time a write may
//! take, the dialback verifications it can make us run, and the outbound
//! streams and queued stanzas of the other direction.

pub use crate::config::EdgeConfig;
use crate::domain::Served;
pub use crate::error::StartError;
use crate::ip_limit::{IpLimiter, Refused, SourceLimits};
use crate::negotiation::inbound::InboundConfig;
use crate::negotiation::outbound::OutboundConfig;
use crate::outbound::OutboundPool;
pub use crate::shared::{EdgeEvent, EdgeStats, Undeliverable};
use crate::shared::{Gauge, Shared, TaskCounter};
use crate::verify::Verifier;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use xmpp_parsers::minidom::Element;

/// Sends stanzas to the federation.
#[derive(Clone)]
pub struct EdgeHandle {
    pool: Arc<OutboundPool>,
    stats: Arc<EdgeStats>,
    local: SocketAddr,
    stop: Arc<watch::Sender<bool>>,
    shared: Arc<Shared>,
}

impl EdgeHandle {
    /// Queues `stanza` (namespace `jabber:client`, `from` one of our
    /// domains, `to` a remote one) on the stream to its domain, opening the
    /// stream if needed. A stanza refused at once (bad addresses, full
    /// queues) comes back as the error; one that fails later comes back as
    /// [`EdgeEvent::Undeliverable`].
    pub fn send(&self, stanza: Element) -> Result<(), Box<Undeliverable>> {
        self.pool.send(stanza)
    }

    /// The counters.
    pub fn stats(&self) -> &EdgeStats {
        &self.stats
    }

    /// The address the s2s listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops listening and closes every stream (`system-shutdown` inbound;
    /// queued outbound stanzas bounce), without waiting.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// [`EdgeHandle::stop`], then waits up to `grace` for every connection
    /// to end.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(grace, self.shared.tasks.wait_idle()).await;
    }
}

/// Starts the edge: binds the listener and serves until
/// [`EdgeHandle::shutdown`].
pub async fn start(
    cfg: EdgeConfig,
    events: mpsc::Sender<EdgeEvent>,
) -> Result<EdgeHandle, StartError> {
    let served = Served::new(&cfg.domains)?;
    let server_tls = crate::tls::server_config(&cfg.identity)?;
    let client_tls = crate::tls::client_config(&cfg.identity)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|why| StartError::Listen {
            addr: cfg.listen,
            why,
        })?;
    let local = listener.local_addr().map_err(|why| StartError::Listen {
        addr: cfg.listen,
        why,
    })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let roots = cfg.roots.clone().map(Arc::new);
    let inbound = Arc::new(InboundConfig {
        served: served.clone(),
        secret: cfg.secret.clone(),
        roots: roots.clone(),
        header_timeout: cfg.handshake_timeout.min(cfg.idle_timeout),
        auth_timeout: cfg.auth_timeout,
        idle_timeout: cfg.idle_timeout,
        max_pending_dialback: cfg.max_pending_dialback,
    });
    let outbound = Arc::new(OutboundConfig {
        served: served.clone(),
        secret: cfg.secret.clone(),
        roots,
        require_tls: cfg.require_tls,
        secure_auth: cfg.secure_auth,
    });
    let max_inbound = cfg.max_inbound;
    let ip_limiter = IpLimiter::new(SourceLimits {
        max_open: cfg.max_inbound_per_ip,
        rate: cfg.inbound_rate_per_ip,
        burst: (cfg.inbound_rate_per_ip * 2.0).max(10.0),
    });
    let verifier = Arc::new(Verifier::new(cfg.max_verifications));
    let shared = Arc::new(Shared {
        cfg,
        served,
        inbound,
        outbound,
        server_tls,
        client_tls,
        events,
        stats: Arc::new(EdgeStats::default()),
        shutdown: stop_rx.clone(),
        tasks: Arc::new(TaskCounter::default()),
    });
    let pool = Arc::new(OutboundPool::new(shared.clone()));
    let handle = EdgeHandle {
        pool,
        stats: shared.stats.clone(),
        local,
        stop: Arc::new(stop_tx),
        shared: shared.clone(),
    };
    tokio::spawn(accept_loop(
        listener,
        shared,
        verifier,
        Arc::new(Semaphore::new(max_inbound)),
        ip_limiter,
        stop_rx,
    ));
    Ok(handle)
}

/// Accepts inbound s2s connections: at most `limit` at once, and from one
/// source at most the per-address number at once and the per-address rate
/// (one permit of each per connection, released when it ends). A refused
/// connection is closed at once, before anything is read from it.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    verifier: Arc<Verifier>,
    limit: Arc<Semaphore>,
    per_ip: Arc<IpLimiter>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, typically: back off.
                    tracing::warn!("s2s accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let ip_permit = match per_ip.acquire(peer.ip(), std::time::Instant::now()) {
            Ok(p) => p,
            Err(why) => {
                EdgeStats::bump(match why {
                    Refused::Open => &shared.stats.inbound_refused_per_ip,
                    Refused::Rate => &shared.stats.inbound_refused_rate,
                });
                tracing::debug!(%peer, ?why, "s2s connection over this address's limits; refusing");
                drop(tcp);
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            EdgeStats::bump(&shared.stats.inbound_refused);
            tracing::warn!(%peer, "too many s2s connections; refusing");
            drop(tcp);
            continue;
        };
        EdgeStats::bump(&shared.stats.inbound_connections);
        let shared = shared.clone();
        let verifier = verifier.clone();
        let running = shared.tasks.enter();
        tokio::spawn(async move {
            let _running = running;
            let _open = Gauge::up(&shared.stats.inbound_open);
            let _ = tcp.set_nodelay(true);
            crate::inbound::serve(Box::new(tcp), peer, shared.clone(), verifier).await;
            drop(permit);
            drop(ip_permit);
        });
    }
}
