//! A built-in load generator (`GET /load`): routes a number of envelopes
//! from this node, keeping a bounded number in flight, and reports how each
//! ended. Tests use it to prove that nothing goes unaccounted while nodes
//! die; benchmarks use it to measure throughput without an HTTP request per
//! envelope.

use crate::api::LoadReport;
use dht::{BounceReason, EnvelopeKind, Key};
use rand::RngExt;
use serde::Deserialize;
use std::collections::HashSet;
use std::time::Instant;
use tokio::sync::oneshot;

/// Most envelopes one run may send.
pub const MAX_COUNT: u64 = 10_000_000;
/// Most envelopes in flight.
pub const MAX_WINDOW: usize = 65_536;
/// Largest payload.
pub const MAX_SIZE: usize = 256 * 1024;

/// What to send.
#[derive(Clone, Debug, Deserialize)]
pub struct LoadSpec {
    /// Envelopes to send.
    pub count: u64,
    /// Payload bytes per envelope.
    #[serde(default = "default_size")]
    pub size: usize,
    /// Most in flight at once.
    #[serde(default = "default_window")]
    pub window: usize,
    /// `stanza` (settled by receipts) or `probe` (settled by answers,
    /// reports hops).
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Target key (hex); random keys when absent.
    pub key: Option<String>,
    /// With `key`: this many distinct keys sharing its first 24 bytes.
    #[serde(default = "default_flows")]
    pub flows: usize,
}

fn default_size() -> usize {
    200
}
fn default_window() -> usize {
    1024
}
fn default_kind() -> String {
    "stanza".into()
}
fn default_flows() -> usize {
    1
}

impl LoadSpec {
    /// Checks the request.
    pub fn validate(&self) -> Result<(), String> {
        if self.count == 0 || self.count > MAX_COUNT {
            return Err(format!("count must be 1..={MAX_COUNT}"));
        }
        if self.window == 0 || self.window > MAX_WINDOW {
            return Err(format!("window must be 1..={MAX_WINDOW}"));
        }
        if self.size > MAX_SIZE {
            return Err(format!("size must be at most {MAX_SIZE}"));
        }
        if !matches!(self.kind.as_str(), "stanza" | "probe") {
            return Err("kind must be stanza or probe".into());
        }
        if self.flows == 0 || self.flows > 10_000 {
            return Err("flows must be 1..=10000".into());
        }
        if let Some(k) = &self.key
            && Key::from_hex(k).is_none()
        {
            return Err("key must be 64 hex digits".into());
        }
        Ok(())
    }
}

/// A running load.
pub(crate) struct LoadRun {
    kind: EnvelopeKind,
    payload: bytes::Bytes,
    total: u64,
    window: usize,
    keys: Vec<Key>,
    next_key: usize,
    inflight: HashSet<u64>,
    report: LoadReport,
    hops_sum: u64,
    started: Instant,
    reply: Option<oneshot::Sender<Result<LoadReport, String>>>,
}

impl LoadRun {
    pub(crate) fn new(
        spec: &LoadSpec,
        reply: oneshot::Sender<Result<LoadReport, String>>,
        now: Instant,
    ) -> Self {
        let mut rng = rand::rng();
        let keys = match spec.key.as_deref().and_then(Key::from_hex) {
            Some(base) => (0..spec.flows)
                .map(|i| {
                    let mut k = base;
                    if i > 0 {
                        rng.fill(&mut k.0[24..]);
                    }
                    k
                })
                .collect(),
            None => Vec::new(),
        };
        LoadRun {
            kind: if spec.kind == "probe" {
                EnvelopeKind::Probe
            } else {
                EnvelopeKind::Stanza
            },
            payload: bytes::Bytes::from(vec![b'x'; spec.size]),
            total: spec.count,
            window: spec.window,
            keys,
            next_key: 0,
            inflight: HashSet::new(),
            report: LoadReport::default(),
            hops_sum: 0,
            started: now,
            reply: Some(reply),
        }
    }

    /// Sends as many envelopes as the window allows.
    pub(crate) fn pump(&mut self, node: &mut dht::RingNode<crate::addr::PeerAddr>, now: Instant) {
        let mut rng = rand::rng();
        while self.inflight.len() < self.window && self.report.sent < self.total {
            let key = if self.keys.is_empty() {
                let mut k = [0u8; 32];
                rng.fill(&mut k);
                Key(k)
            } else {
                self.next_key = (self.next_key + 1) % self.keys.len();
                self.keys[self.next_key]
            };
            let payload = if self.kind == EnvelopeKind::Probe {
                bytes::Bytes::new()
            } else {
                self.payload.clone()
            };
            self.report.sent += 1;
            // Probes carry their path, so their hop counts can be reported.
            let traced = self.kind == EnvelopeKind::Probe;
            match node.route(now, key, self.kind, payload, traced) {
                Ok(id) => {
                    self.inflight.insert(id);
                }
                Err(_) => {
                    // The node is full right now: counted, not retried.
                    self.report.refused += 1;
                    break;
                }
            }
        }
    }

    pub(crate) fn on_delivered(&mut self, id: u64, hops: Option<usize>) -> bool {
        if !self.inflight.remove(&id) {
            return false;
        }
        self.report.delivered += 1;
        if let Some(h) = hops {
            self.hops_sum += h as u64;
        }
        true
    }

    pub(crate) fn on_bounced(&mut self, id: u64, reason: BounceReason) -> bool {
        if !self.inflight.remove(&id) {
            return false;
        }
        *self
            .report
            .bounced
            .entry(format!("{reason:?}"))
            .or_default() += 1;
        true
    }

    /// If every envelope is settled, sends the report and returns true.
    pub(crate) fn finish_if_done(&mut self, now: Instant) -> bool {
        let settled = self.report.settled() + self.report.refused;
        if settled < self.total {
            return false;
        }
        let mut r = self.report.clone();
        r.elapsed_s = now.saturating_duration_since(self.started).as_secs_f64();
        r.rate = if r.elapsed_s > 0.0 {
            r.delivered as f64 / r.elapsed_s
        } else {
            0.0
        };
        if self.kind == EnvelopeKind::Probe && r.delivered > 0 {
            r.mean_hops = self.hops_sum as f64 / r.delivered as f64;
        }
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(Ok(r));
        }
        true
    }
}
