//! What the edge's connections share and report: the events for the
//! owner, the counters, and the count of running tasks that shutdown
//! waits for. A leaf below the connection drivers (inbound, outbound,
//! verify), which the edge's start-up wires together.

use crate::config::EdgeConfig;
use crate::domain::Served;
use crate::negotiation::inbound::InboundConfig;
use crate::negotiation::outbound::OutboundConfig;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, watch};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

/// What the edge tells its owner.
#[derive(Debug)]
pub enum EdgeEvent {
    /// An authenticated stanza from the federation for one of our domains.
    Inbound(Element),
    /// A stanza given to [`EdgeHandle::send`](crate::EdgeHandle::send) could not be delivered.
    Undeliverable(Undeliverable),
}

/// A stanza that could not be delivered, and the RFC 6120 stanza error
/// condition to bounce it to its sender with.
#[derive(Debug, Clone, PartialEq)]
pub struct Undeliverable {
    /// The stanza as it was given.
    pub stanza: Element,
    /// The condition.
    pub condition: DefinedCondition,
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
    /// Connections (in and out) running; [`EdgeHandle::shutdown`](crate::EdgeHandle::shutdown) waits
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

    pub(crate) async fn wait_idle(&self) {
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
