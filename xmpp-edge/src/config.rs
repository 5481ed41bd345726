//! What an edge is configured with: its identity and secret, and the
//! bound on every resource a peer can make it spend.

use crate::dialback::Secret;
use crate::resolve::Resolver;
use crate::tls::Identity;
use crate::xml::Limits;
use rustls::RootCertStore;
use std::net::SocketAddr;
use std::time::Duration;

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
