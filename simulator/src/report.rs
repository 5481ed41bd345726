//! The simulator's report: the JSON contract of `xmpp-ring simulate` (see
//! README, "Usage") and its human-readable rendering.

use serde::Serialize;
use std::fmt::Write as _;

/// Hop counts of routed messages, as a histogram indexed by hop count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HopCounts {
    counts: Vec<u64>,
}

impl HopCounts {
    /// Records one route of `hops` hops.
    pub fn record(&mut self, hops: u32) {
        let h = hops as usize;
        if self.counts.len() <= h {
            self.counts.resize(h + 1, 0);
        }
        self.counts[h] += 1;
    }

    /// Adds another histogram into this one.
    pub fn merge(&mut self, other: &HopCounts) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// Number of routes recorded.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Mean hop count (0 when empty).
    pub fn mean(&self) -> f64 {
        let n = self.total();
        if n == 0 {
            return 0.0;
        }
        let sum: u64 = self
            .counts
            .iter()
            .enumerate()
            .map(|(h, c)| h as u64 * c)
            .sum();
        sum as f64 / n as f64
    }

    /// The smallest hop count `h` with at least a fraction `q` of routes
    /// taking `h` hops or fewer.
    pub fn quantile(&self, q: f64) -> u32 {
        let n = self.total();
        if n == 0 {
            return 0;
        }
        let target = ((q * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (h, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return h as u32;
            }
        }
        self.max()
    }

    /// The largest hop count recorded.
    pub fn max(&self) -> u32 {
        self.counts.iter().rposition(|c| *c > 0).unwrap_or(0) as u32
    }

    /// Counts indexed by hop count.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
}

/// Results only protocol mode produces.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ProtocolFigures {
    /// Messages delivered to a node that took them as responsible.
    pub delivered: u64,
    /// Of those, delivered at the node that was globally the closest live
    /// one at that moment.
    pub delivered_to_closest: u64,
    /// Messages reported undelivered at their (still live) origin.
    pub bounced: u64,
    /// Of those, messages the origin gave up on because neither a receipt
    /// nor a bounce came back in time (they vanished with a crashed node).
    pub bounced_no_receipt: u64,
    /// Messages delivered whose origin nevertheless reported them failed
    /// (the receipt was lost on the way back).
    pub false_bounces: u64,
    /// Messages with no outcome although their origin stayed live: must be 0.
    pub lost: u64,
    /// Messages whose origin left the ring before an outcome could reach it
    /// (they are neither delivered nor lost; nobody is left to tell).
    pub origin_departed: u64,
    /// Deliveries suppressed as duplicates (after reroutes).
    pub duplicates: u64,
    /// Next-hop ack timeouts during the measured phase, per routed message.
    pub timeouts_per_lookup: f64,
    /// Reroutes during the measured phase, per routed message.
    pub reroutes_per_lookup: f64,
    /// Maintenance messages (lookups, pings, goodbyes) per live node per
    /// second during the measured phase.
    pub maintenance_msgs_per_node_per_s: f64,
    /// Mean end-to-end latency of delivered messages, ms.
    pub mean_latency_ms: f64,
    /// 99th percentile end-to-end latency of delivered messages, ms.
    pub p99_latency_ms: f64,
    /// Nodes that joined after the first ring formed (churn arrivals).
    pub churn_joins: u64,
    /// Nodes that crashed during the run.
    pub churn_departures: u64,
    /// Simulated seconds of the measured phase.
    pub measured_s: f64,
    /// Median session length used for churn, s (0 = no churn).
    pub median_session_s: f64,
    /// Median one-way link latency, ms.
    pub median_latency_ms: f64,
    /// Probability of losing any one message.
    pub loss_rate: f64,
    /// Events the simulator processed.
    pub events: u64,
    /// The record workload's figures, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<crate::records_load::RecordFigures>,
    /// The MUC workload's figures, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rooms: Option<crate::rooms_load::RoomFigures>,
}

/// One simulation's figures. Field names are the JSON contract.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// Ring size.
    pub nodes: u64,
    /// Routed lookups/messages measured.
    pub lookups: u64,
    /// Bucket size.
    pub k: usize,
    /// Bits per digit.
    pub bits: u8,
    /// `static` or `protocol`.
    pub mode: &'static str,
    /// RNG seed.
    pub seed: u64,
    /// Mean hops.
    pub mean_hops: f64,
    /// Median hops.
    pub p50_hops: u32,
    /// 95th percentile hops.
    pub p95_hops: u32,
    /// 99th percentile hops.
    pub p99_hops: u32,
    /// Most hops of any route.
    pub max_hops: u32,
    /// Fraction of routes ending at the right node (static: the globally
    /// closest; protocol: delivered at all).
    pub success_rate: f64,
    /// Mean routing-table size, contacts.
    pub mean_table_size: f64,
    /// Wall-clock seconds the simulation took.
    pub elapsed_s: f64,
    /// Routes per hop count, index = hops.
    pub hop_histogram: Vec<u64>,
    /// Protocol-mode figures, flattened into the object.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProtocolFigures>,
}

impl Report {
    /// Fills the hop fields from a histogram.
    pub fn with_hops(mut self, hops: &HopCounts) -> Self {
        self.mean_hops = hops.mean();
        self.p50_hops = hops.quantile(0.50);
        self.p95_hops = hops.quantile(0.95);
        self.p99_hops = hops.quantile(0.99);
        self.max_hops = hops.max();
        self.hop_histogram = hops.counts().to_vec();
        self
    }

    /// An empty report for the given parameters.
    pub fn new(
        mode: &'static str,
        nodes: u64,
        lookups: u64,
        k: usize,
        bits: u8,
        seed: u64,
    ) -> Self {
        Report {
            nodes,
            lookups,
            k,
            bits,
            mode,
            seed,
            mean_hops: 0.0,
            p50_hops: 0,
            p95_hops: 0,
            p99_hops: 0,
            max_hops: 0,
            success_rate: 0.0,
            mean_table_size: 0.0,
            elapsed_s: 0.0,
            hop_histogram: Vec::new(),
            protocol: None,
        }
    }

    /// The text rendering: a summary and the hop table.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} mode: {} nodes, k = {}, b = {}, {} lookups, seed {}",
            self.mode, self.nodes, self.k, self.bits, self.lookups, self.seed
        );
        let _ = writeln!(
            s,
            "hops: mean {:.3}  p50 {}  p95 {}  p99 {}  max {}",
            self.mean_hops, self.p50_hops, self.p95_hops, self.p99_hops, self.max_hops
        );
        let _ = writeln!(
            s,
            "success rate {:.5}   mean table size {:.1} contacts   {:.2} s",
            self.success_rate, self.mean_table_size, self.elapsed_s
        );
        if let Some(p) = &self.protocol {
            let _ = writeln!(
                s,
                "delivered {} (to the closest live node: {})  bounced {} (no receipt: {})  lost {}  origin departed {}  duplicates {}  false bounces {}",
                p.delivered,
                p.delivered_to_closest,
                p.bounced,
                p.bounced_no_receipt,
                p.lost,
                p.origin_departed,
                p.duplicates,
                p.false_bounces
            );
            let _ = writeln!(
                s,
                "timeouts/lookup {:.4}  reroutes/lookup {:.4}  maintenance {:.3} msg/node/s  latency mean {:.1} ms p99 {:.1} ms",
                p.timeouts_per_lookup,
                p.reroutes_per_lookup,
                p.maintenance_msgs_per_node_per_s,
                p.mean_latency_ms,
                p.p99_latency_ms
            );
            if p.median_session_s > 0.0 {
                let _ = writeln!(
                    s,
                    "churn: median session {:.0} s over {:.0} s: {} departures, {} joins",
                    p.median_session_s, p.measured_s, p.churn_departures, p.churn_joins
                );
            }
            if let Some(r) = &p.rooms {
                let _ = writeln!(
                    s,
                    "rooms: {} of {} members: messages {}  echoed {}  errors {}  unanswered {} (entry node died: {}, host died: {})  delivery {:.4}  takeover notices {}  joins {} (errors {})  in room at end {:.3}  echo p50/p99 {:.1}/{:.1} ms",
                    r.rooms,
                    r.members,
                    r.messages,
                    r.echoed,
                    r.errors,
                    r.unanswered,
                    r.entry_departed,
                    r.host_departed,
                    r.delivery_ratio,
                    r.takeover_notices,
                    r.joins,
                    r.join_errors,
                    r.members_in_room_at_end,
                    r.echo_latency_ms_p50,
                    r.echo_latency_ms_p99
                );
            }
            if let Some(r) = &p.records {
                let _ = writeln!(
                    s,
                    "records: {} with {} copies (sweep {:.0} s): lost {}  stale reads {} of {}  under-replicated min {} p99 {} max {}",
                    r.records,
                    r.replicas,
                    r.sweep_s,
                    r.records_lost,
                    r.stale_reads,
                    r.reads,
                    r.records_under_replicated_min,
                    r.records_under_replicated_p99,
                    r.records_under_replicated_max
                );
                let _ = writeln!(
                    s,
                    "record writes {} (failed {})  reads failed {}  write p50/p99 {:.1}/{:.1} ms  read p50/p99 {:.1}/{:.1} ms  re-replication {:.1} B/node/s",
                    r.writes,
                    r.write_failures,
                    r.read_failures,
                    r.write_latency_ms_p50,
                    r.write_latency_ms_p99,
                    r.read_latency_ms_p50,
                    r.read_latency_ms_p99,
                    r.rereplication_bytes_per_node_per_s
                );
            }
        }
        let total: u64 = self.hop_histogram.iter().sum();
        let _ = writeln!(s, "\n hops      routes   share");
        for (h, c) in self.hop_histogram.iter().enumerate() {
            if *c == 0 {
                continue;
            }
            let share = *c as f64 / total.max(1) as f64;
            let bar = "#".repeat((share * 50.0).round() as usize);
            let _ = writeln!(s, "{h:>5} {c:>11} {:>6.2}%  {bar}", share * 100.0);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_mean() {
        let mut h = HopCounts::default();
        for hops in [1, 2, 2, 3, 3, 3, 3, 4, 4, 9] {
            h.record(hops);
        }
        assert_eq!(h.total(), 10);
        assert!((h.mean() - 3.4).abs() < 1e-9);
        assert_eq!(h.quantile(0.5), 3);
        assert_eq!(h.quantile(0.9), 4);
        assert_eq!(h.quantile(0.99), 9);
        assert_eq!(h.max(), 9);
        assert_eq!(HopCounts::default().quantile(0.5), 0);
    }

    #[test]
    fn json_has_the_contract_fields() {
        let mut h = HopCounts::default();
        h.record(2);
        let r = Report::new("static", 10, 1, 20, 4, 7).with_hops(&h);
        let v = serde_json::to_value(&r).unwrap();
        for f in [
            "nodes",
            "lookups",
            "k",
            "bits",
            "mode",
            "mean_hops",
            "p50_hops",
            "p95_hops",
            "p99_hops",
            "max_hops",
            "success_rate",
            "mean_table_size",
            "elapsed_s",
        ] {
            assert!(v.get(f).is_some(), "missing {f}");
        }
        assert!(
            v.get("delivered").is_none(),
            "static mode has no protocol fields"
        );
        let r = Report {
            protocol: Some(ProtocolFigures::default()),
            ..r
        };
        let v = serde_json::to_value(&r).unwrap();
        for f in ["delivered", "bounced", "lost", "timeouts_per_lookup"] {
            assert!(v.get(f).is_some(), "missing {f}");
        }
    }
}
