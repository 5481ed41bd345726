//! Prometheus metrics (`GET /metrics`).
//!
//! The dht state machine keeps plain counters; once a second the core copies
//! them into the `metrics` facade as absolute values, so the hot path pays
//! nothing for metrics. The state machine also keeps two histograms (hop
//! counts of delivered envelopes; per-hop latency from forward to ack, in
//! power-of-two buckets); their new samples are replayed into the exporter's
//! histograms, whose bucket bounds match.

use crate::addr::PeerAddr;
use crate::api::{Counters, RecordsReport, ServicesReport};
use dht::RingNode;
use dht::node::{Histogram, Stats};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// The process-wide exporter handle (one recorder per process).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let hop_buckets: Vec<f64> = (0..=16).map(|h| h as f64).collect();
            // 1 µs .. 8 s in powers of two, in seconds.
            let rtt_buckets: Vec<f64> = (0..24).map(|i| (1u64 << i) as f64 / 1e6).collect();
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("xmpp_ring_envelope_hops".into()),
                    &hop_buckets,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("xmpp_ring_hop_latency_seconds".into()),
                        &rtt_buckets,
                    )
                });
            match builder.map(|b| b.install_recorder()) {
                Ok(Ok(h)) => h,
                // A recorder was already installed (or buckets were refused):
                // fall back to an unattached recorder so /metrics still answers.
                _ => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// The s2s edge's counters: what it accepted, refused and bounced, and the
/// limits that protect it from hostile peers at work.
pub(crate) fn export_edge(e: &crate::api::EdgeReport) {
    gauge!("xmpp_ring_s2s_inbound_open").set(e.inbound_open as f64);
    gauge!("xmpp_ring_s2s_outbound_open").set(e.outbound_open as f64);
    gauge!("xmpp_ring_s2s_verifications_open").set(e.verifications_open as f64);
    counter!("xmpp_ring_s2s_inbound_connections_total").absolute(e.inbound_connections);
    counter!("xmpp_ring_s2s_inbound_refused_total", "limit" => "global")
        .absolute(e.inbound_refused);
    counter!("xmpp_ring_s2s_inbound_refused_total", "limit" => "per_ip")
        .absolute(e.inbound_refused_per_ip);
    counter!("xmpp_ring_s2s_inbound_refused_total", "limit" => "rate")
        .absolute(e.inbound_refused_rate);
    counter!("xmpp_ring_s2s_auth_timeouts_total").absolute(e.auth_timeouts);
    counter!("xmpp_ring_s2s_stanzas_in_total").absolute(e.stanzas_in);
    counter!("xmpp_ring_s2s_stanzas_out_total").absolute(e.stanzas_out);
    counter!("xmpp_ring_s2s_stanzas_bounced_total").absolute(e.stanzas_bounced);
    counter!("xmpp_ring_s2s_dialback_total", "result" => "ok").absolute(e.dialback_ok);
    counter!("xmpp_ring_s2s_dialback_total", "result" => "failed").absolute(e.dialback_failed);
    counter!("xmpp_ring_s2s_verifications_refused_total").absolute(e.verifications_refused);
    counter!("xmpp_ring_s2s_sasl_external_total").absolute(e.sasl_external_ok);
    counter!("xmpp_ring_s2s_outbound_streams_total").absolute(e.outbound_streams);
    counter!("xmpp_ring_s2s_certificates_refused_total").absolute(e.certificates_refused);
    counter!("xmpp_ring_s2s_write_timeouts_total").absolute(e.write_timeouts);
    counter!("xmpp_ring_s2s_verify_answers_total", "result" => "valid").absolute(e.verify_valid);
    counter!("xmpp_ring_s2s_verify_answers_total", "result" => "invalid")
        .absolute(e.verify_invalid);
    for (cond, n) in &e.stream_errors {
        counter!("xmpp_ring_s2s_stream_errors_total", "condition" => cond.clone()).absolute(*n);
    }
}

/// Copies state-machine figures into the exporter.
#[derive(Default)]
pub(crate) struct Exporter {
    last_rtt: Option<Histogram>,
    last_hops: [u64; 32],
}

impl Exporter {
    pub(crate) fn update(
        &mut self,
        node: &RingNode<PeerAddr>,
        records: &RecordsReport,
        services: &ServicesReport,
        net: &Counters,
        connections: usize,
        inbox_depth: usize,
    ) {
        let s = node.stats();
        let c = counters(s, net);
        gauge!("xmpp_ring_muc_rooms").set(services.room_count as f64);
        gauge!("xmpp_ring_muc_occupants").set(services.occupants as f64);
        gauge!("xmpp_ring_pubsub_nodes").set(services.pubsub_node_count as f64);
        gauge!("xmpp_ring_pubsub_subscriptions").set(services.subscriptions as f64);
        counter!("xmpp_ring_service_takeovers_total").absolute(services.takeovers);
        counter!("xmpp_ring_fanout_envelopes_total").absolute(services.fanout_envelopes);
        counter!("xmpp_ring_fanout_stanzas_total").absolute(services.fanout_stanzas);
        gauge!("xmpp_ring_records").set(records.count as f64);
        gauge!("xmpp_ring_record_bytes").set(records.bytes as f64);
        counter!("xmpp_ring_record_requests_total").absolute(records.requests);
        counter!("xmpp_ring_record_coordinated_total").absolute(records.coordinated);
        counter!("xmpp_ring_record_replicas_in_total").absolute(records.replicas_in);
        counter!("xmpp_ring_record_replicas_out_total").absolute(records.replicas_out);
        counter!("xmpp_ring_record_refused_total").absolute(records.refused);
        counter!("xmpp_ring_envelopes_routed_total").absolute(c.routed);
        counter!("xmpp_ring_envelopes_delivered_total").absolute(c.delivered);
        counter!("xmpp_ring_envelopes_forwarded_total").absolute(c.forwarded);
        counter!("xmpp_ring_envelopes_bounced_total").absolute(c.bounced);
        counter!("xmpp_ring_envelopes_rerouted_total").absolute(c.rerouted);
        counter!("xmpp_ring_envelope_duplicates_total").absolute(c.duplicates);
        counter!("xmpp_ring_ack_timeouts_total").absolute(c.ack_timeouts);
        counter!("xmpp_ring_receipts_total").absolute(c.receipts);
        counter!("xmpp_ring_receipt_timeouts_total").absolute(c.receipt_timeouts);
        counter!("xmpp_ring_lookups_total").absolute(c.lookups);
        counter!("xmpp_ring_lookup_queries_total").absolute(s.lookup_queries);
        counter!("xmpp_ring_pings_total").absolute(s.pings_sent);
        counter!("xmpp_ring_connections_refused_total", "direction" => "incoming")
            .absolute(c.refused_incoming);
        counter!("xmpp_ring_connections_failed_total", "direction" => "outgoing")
            .absolute(c.failed_outgoing);
        counter!("xmpp_ring_bad_streams_total").absolute(c.bad_streams);
        counter!("xmpp_ring_stanzas_handled_total").absolute(c.stanzas_handled);
        gauge!("xmpp_ring_connections").set(connections as f64);
        gauge!("xmpp_ring_routing_table_contacts").set(node.table().len() as f64);
        gauge!("xmpp_ring_queue_pending_envelopes").set(node.pending() as f64);
        gauge!("xmpp_ring_queue_outstanding_envelopes").set(node.outstanding() as f64);
        gauge!("xmpp_ring_queue_inbox_batches").set(inbox_depth as f64);
        // New per-hop latency samples since the last update.
        let h = &s.hop_rtt_us;
        let hist = histogram!("xmpp_ring_hop_latency_seconds");
        for (i, &n) in h.buckets.iter().enumerate() {
            let before = self.last_rtt.as_ref().map(|l| l.buckets[i]).unwrap_or(0);
            if n > before {
                // Bucket i holds values in [2^(i-1), 2^i) µs.
                let lower_us = if i == 0 {
                    0.0
                } else {
                    (1u64 << (i - 1)) as f64
                };
                hist.record_many(lower_us / 1e6, (n - before) as usize);
            }
        }
        self.last_rtt = Some(h.clone());
        let hops = histogram!("xmpp_ring_envelope_hops");
        for (h, (&n, last)) in s
            .delivered_by_hops
            .iter()
            .zip(self.last_hops.iter_mut())
            .enumerate()
        {
            if n > *last {
                hops.record_many(h as f64, (n - *last) as usize);
                *last = n;
            }
        }
    }
}

/// The counters of `/status`.
pub(crate) fn counters(s: &Stats, net: &Counters) -> Counters {
    Counters {
        routed: s.originated,
        delivered: s.delivered,
        forwarded: s.forwarded,
        bounced: s.bounced,
        rerouted: s.rerouted,
        duplicates: s.duplicates,
        ack_timeouts: s.ack_timeouts,
        lookups: s.lookups_started,
        receipts: s.receipts_received,
        receipt_timeouts: s.receipt_timeouts,
        refused_incoming: net.refused_incoming,
        failed_outgoing: net.failed_outgoing,
        bad_streams: net.bad_streams,
        stanzas_handled: net.stanzas_handled,
    }
}

/// The client listener's counters, the node's bound sessions, and the
/// sessions it knows as their users' home node (its own and leased).
pub fn export_c2s(s: &ring_c2s::server::C2sStats, sessions: usize, known: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    gauge!("xmpp_ring_c2s_sessions").set(sessions as f64);
    gauge!("xmpp_ring_c2s_known_sessions").set(known as f64);
    gauge!("xmpp_ring_c2s_connections_open").set(s.open.load(Relaxed) as f64);
    counter!("xmpp_ring_c2s_connections_total").absolute(s.connections.load(Relaxed));
    counter!("xmpp_ring_c2s_refused_total").absolute(s.refused.load(Relaxed));
    counter!("xmpp_ring_c2s_auth_total", "result" => "ok").absolute(s.auth_ok.load(Relaxed));
    counter!("xmpp_ring_c2s_auth_total", "result" => "failed")
        .absolute(s.auth_failed.load(Relaxed));
    counter!("xmpp_ring_c2s_auth_throttled_total").absolute(s.auth_throttled.load(Relaxed));
    counter!("xmpp_ring_c2s_registrations_total", "result" => "ok")
        .absolute(s.registered.load(Relaxed));
    counter!("xmpp_ring_c2s_registrations_total", "result" => "throttled")
        .absolute(s.registrations_throttled.load(Relaxed));
    counter!("xmpp_ring_c2s_binds_total").absolute(s.bound.load(Relaxed));
    counter!("xmpp_ring_c2s_stanzas_in_total").absolute(s.stanzas_in.load(Relaxed));
}

/// A failed commit of record writes (disk trouble).
pub fn record_commit_failed() {
    counter!("xmpp_ring_record_commit_failures_total").increment(1);
}
