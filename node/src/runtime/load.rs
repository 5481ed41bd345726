//! A built-in load generator (`GET /load`): routes a number of envelopes
//! from this node, keeping a bounded number in flight, and reports how each
//! ended. Tests use it to prove that nothing goes unaccounted while nodes
//! die; benchmarks use it to measure throughput without an HTTP request per
//! envelope.

use crate::api::LoadReport;
use dht::{BounceReason, EnvelopeKind, Key};
use rand::RngExt;
use std::collections::HashSet;
use std::time::Instant;
use tokio::sync::oneshot;

pub use crate::control::LoadSpec;

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
