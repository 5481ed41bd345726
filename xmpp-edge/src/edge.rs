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

use crate::dialback::Secret;
use crate::domain::Served;
use crate::ip_limit::{IpLimiter, Refused, SourceLimits};
use crate::negotiation::inbound::InboundConfig;
use crate::negotiation::outbound::OutboundConfig;
use crate::outbound::OutboundPool;
use crate::resolve::Resolver;
use crate::tls::Identity;
use crate::verify::Verifier;
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
    /// Domains the ring serves; subdomains are served too.
    pub domains: Vec<String>,
    /// Where to listen for s2s.
    pub listen: SocketAddr,
    /// Our certificate and key.
    pub identity: Identity,
    /// CA roots that authenticate a peer's certificate: inbound, a peer
    /// whose certificate validates may use SASL EXTERNAL; outbound, see
    /// `secure_auth`. `None`: certificates authenticate nobody.
    pub roots: Option<RootCertStore>,
    /// Outbound: refuse remotes whose certificate does not validate
    /// against `roots` (Prosody's `s2s_secure_auth`); otherwise dialback
    /// carries on over TLS, as Prosody does by default.
    pub secure_auth: bool,
    /// The ring-wide dialback secret.
    pub secret: Secret,
    /// How remote domains are found.
    pub resolver: Resolver,
    /// Parser bounds for authenticated streams; before authentication
    /// [`Limits::unauthenticated`] applies.
    pub limits: Limits,
    /// Refuse to send stanzas over a stream without TLS.
    pub require_tls: bool,
    /// A stream silent this long is closed (`connection-timeout` inbound).
    pub idle_timeout: Duration,
    /// Connecting, TLS and authentication of a stream we open must finish
    /// within this; so must the peer's first header.
    pub handshake_timeout: Duration,
    /// An inbound stream must authenticate a domain within this after its
    /// first header (whitespace keepalives do not extend it).
    pub auth_timeout: Duration,
    /// Inbound connections at once.
    pub max_inbound: usize,
    /// Inbound connections at once from one source address (IPv6: /64).
    pub max_inbound_per_ip: usize,
    /// New inbound connections per second from one source address
    /// (sustained; twice as many in a burst).
    pub inbound_rate_per_ip: f64,
    /// Dialback checks one inbound stream may have in flight.
    pub max_pending_dialback: usize,
    /// Remote domains whose dialback keys are being verified at once (one
    /// verification connection per pair of domains, shared by requests).
    pub max_verifications: usize,
    /// Bytes queued for one inbound peer before we stop reading from it.
    pub inbound_write_queue: usize,
    /// A write that does not finish in this closes its stream (its
    /// stanzas bounce).
    pub write_timeout: Duration,
    /// Stanzas queued per remote domain, while its stream connects or while
    /// the peer reads slower than the ring sends. Past it (or past
    /// `outbound_queue_bytes`) a stanza bounces with `resource-constraint`.
    pub outbound_queue: usize,
    /// Bytes queued per remote domain.
    pub outbound_queue_bytes: usize,
    /// Outbound streams (remote domains) at once.
    pub max_outbound: usize,
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
            secure_auth: false,
            secret,
            resolver,
            limits: Limits::default(),
            require_tls: true,
            idle_timeout: Duration::from_secs(600),
            handshake_timeout: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(60),
            max_inbound: 1024,
            max_inbound_per_ip: 64,
            inbound_rate_per_ip: 20.0,
            max_pending_dialback: 8,
            max_verifications: 64,
            inbound_write_queue: 256 * 1024,
            write_timeout: Duration::from_secs(30),
            outbound_queue: 16_384,
            outbound_queue_bytes: 16 * 1024 * 1024,
            max_outbound: 1024,
        }
    }
}

/// What the edge tells its owner.
#[derive(Debug)]
pub enum EdgeEvent {
    /// An authenticated stanza from the federation for one of our domains.
    Inbound(Element),
    /// A stanza given to [`EdgeHandle::send`] could not be delivered.
    Undeliverable(Undeliverable),
}

/// A stanza that could not be delivered, and the RFC 6120 stanza error
/// condition to bounce it to its sender with.
#[derive(Debug, Clone, PartialEq)]
pub struct Undeliverable {
    /// The stanza as it was given.
    pub stanza: Element,
    /// The condition.
    pub condition: &'static str,
}

/// Counters of the edge (for `/status` and `/metrics`).
#[derive(Default, Debug)]
pub struct EdgeStats {
    /// Inbound connections accepted.
    pub inbound_connections: AtomicU64,
    /// Inbound connections open now.
    pub inbound_open: AtomicU64,
    /// Inbound connections refused: over the global limit.
    pub inbound_refused: AtomicU64,
    /// Inbound connections refused: over the per-address limit.
    pub inbound_refused_per_ip: AtomicU64,
    /// Inbound connections refused: over the per-address rate.
    pub inbound_refused_rate: AtomicU64,
    /// Inbound streams closed for not authenticating in time.
    pub auth_timeouts: AtomicU64,
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
    /// Dialback checks refused because too many were running.
    pub verifications_refused: AtomicU64,
    /// Verification connections open now.
    pub verifications_open: AtomicU64,
    /// Peers authenticated by SASL EXTERNAL.
    pub sasl_external_ok: AtomicU64,
    /// Outbound streams established.
    pub outbound_streams: AtomicU64,
    /// Outbound streams open now (connecting or established).
    pub outbound_open: AtomicU64,
    /// Remote certificates refused (`secure_auth`).
    pub certificates_refused: AtomicU64,
    /// Writes that did not finish within the write timeout.
    pub write_timeouts: AtomicU64,
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

    pub(crate) fn drop_one(c: &AtomicU64) {
        c.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn stream_error(&self, name: &'static str) {
        if let Ok(mut m) = self.stream_errors.lock() {
            *m.entry(name).or_default() += 1;
        }
    }
}

/// Counts a gauge up for as long as it lives.
pub(crate) struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    pub(crate) fn up(c: &'a AtomicU64) -> Gauge<'a> {
        EdgeStats::bump(c);
        Gauge(c)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        EdgeStats::drop_one(self.0);
    }
}

/// State shared by every connection of an edge.
pub(crate) struct Shared {
    pub(crate) cfg: EdgeConfig,
    pub(crate) served: Served,
    pub(crate) inbound: Arc<InboundConfig>,
    pub(crate) outbound: Arc<OutboundConfig>,
    pub(crate) server_tls: Arc<rustls::ServerConfig>,
    pub(crate) client_tls: Arc<rustls::ClientConfig>,
    pub(crate) events: mpsc::Sender<EdgeEvent>,
    pub(crate) stats: Arc<EdgeStats>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) verifier: Verifier,
    /// Connections (in and out) running; [`EdgeHandle::shutdown`] waits
    /// until there are none.
    pub(crate) tasks: Arc<TaskCounter>,
}

/// Counts running connection tasks, so that shutdown can wait for them.
#[derive(Default)]
pub(crate) struct TaskCounter {
    running: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One running task; uncounted when dropped.
pub(crate) struct TaskGuard(Arc<TaskCounter>);

impl TaskCounter {
    /// Counts a task from now (call before spawning it).
    pub(crate) fn enter(self: &Arc<Self>) -> TaskGuard {
        self.running.fetch_add(1, Ordering::AcqRel);
        TaskGuard(self.clone())
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.running.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

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
pub async fn start(cfg: EdgeConfig, events: mpsc::Sender<EdgeEvent>) -> Result<EdgeHandle, String> {
    let served = Served::new(&cfg.domains).map_err(|e| format!("the edge's domains: {e}"))?;
    let server_tls = crate::tls::server_config(&cfg.identity)?;
    let client_tls = crate::tls::client_config(&cfg.identity)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen for s2s on {}: {e}", cfg.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
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
    let verifier = Verifier::new(cfg.max_verifications);
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
        verifier,
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
        let running = shared.tasks.enter();
        tokio::spawn(async move {
            let _running = running;
            let _open = Gauge::up(&shared.stats.inbound_open);
            let _ = tcp.set_nodelay(true);
            crate::inbound::serve(Box::new(tcp), peer, shared.clone()).await;
            drop(permit);
            drop(ip_permit);
        });
    }
}
