//! Counters a ring node keeps about itself. The real node exports them as
//! Prometheus metrics; the simulator sums them over all nodes.

/// A histogram with power-of-two buckets: bucket `i` counts values in
/// `[2^(i-1), 2^i)` (bucket 0 counts zeros). Cheap enough for the hot path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    /// Counts per bucket.
    pub buckets: [u64; 64],
    /// Number of values recorded.
    pub count: u64,
    /// Sum of values recorded.
    pub sum: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: [0; 64],
            count: 0,
            sum: 0,
        }
    }
}

impl Histogram {
    /// Records one value.
    #[inline]
    pub fn record(&mut self, v: u64) {
        let i = (64 - v.leading_zeros()) as usize;
        self.buckets[i.min(63)] += 1;
        self.count += 1;
        self.sum = self.sum.saturating_add(v);
    }

    /// Upper bound of bucket `i` (exclusive).
    pub fn upper_bound(i: usize) -> u64 {
        if i >= 63 { u64::MAX } else { 1u64 << i }
    }

    /// The value below which a fraction `q` of recorded values fall,
    /// rounded up to a bucket bound.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let target = (q * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Self::upper_bound(i);
            }
        }
        u64::MAX
    }

    /// Adds another histogram into this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
    }
}

/// Counters since the node started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Envelopes this node created with `route`/`probe`.
    pub originated: u64,
    /// Envelopes put on a link to a next hop (first tries and reroutes).
    pub forwarded: u64,
    /// Of those, sends to a second or later next hop.
    pub rerouted: u64,
    /// Envelopes acknowledged by next hops.
    pub acked: u64,
    /// Envelopes delivered here as their responsible node (probes included).
    pub delivered: u64,
    /// Sum of hop counts of delivered envelopes.
    pub delivered_hops: u64,
    /// Duplicates suppressed at delivery.
    pub duplicates: u64,
    /// Bounces generated here.
    pub bounced: u64,
    /// Bounces that reached this node as the origin.
    pub bounces_received: u64,
    /// Bounces and probe answers whose origin is no longer in the ring.
    pub orphaned_replies: u64,
    /// Bounces and probe answers that could not be routed at all.
    pub dropped_replies: u64,
    /// Receipt envelopes sent (each acknowledges one or more deliveries).
    pub receipts_sent: u64,
    /// Envelopes of ours confirmed delivered by a receipt.
    pub receipts_received: u64,
    /// Envelopes of ours reported undelivered because no receipt came.
    pub receipt_timeouts: u64,
    /// Bounces for envelopes already settled (receipted or timed out).
    pub late_bounces: u64,
    /// Envelopes bounced because their TTL ran out.
    pub ttl_expired: u64,
    /// Envelopes bounced because the node was full.
    pub overloaded: u64,
    /// Links declared failed because an ack did not come in time.
    pub ack_timeouts: u64,
    /// Links the driver reported down.
    pub link_failures: u64,
    /// Lookups started.
    pub lookups_started: u64,
    /// Lookups finished.
    pub lookups_completed: u64,
    /// Find-node queries sent.
    pub lookup_queries: u64,
    /// Find-node queries that timed out.
    pub query_timeouts: u64,
    /// Pings sent.
    pub pings_sent: u64,
    /// Pings that timed out.
    pub ping_timeouts: u64,
    /// Goodbyes received from leaving neighbours.
    pub goodbyes_received: u64,
    /// Routed envelopes and acks sent.
    pub data_msgs_sent: u64,
    /// Everything else sent (lookups, pings, goodbyes).
    pub maintenance_msgs_sent: u64,
    /// Time from forwarding an envelope to its ack, µs.
    pub hop_rtt_us: Histogram,
    /// Delivered envelopes (probes included) by hop count; the last entry
    /// counts 31 hops or more.
    pub delivered_by_hops: [u64; 32],
}

impl Stats {
    /// Adds another node's counters into these.
    pub fn merge(&mut self, o: &Stats) {
        self.originated += o.originated;
        self.forwarded += o.forwarded;
        self.rerouted += o.rerouted;
        self.acked += o.acked;
        self.delivered += o.delivered;
        self.delivered_hops += o.delivered_hops;
        self.duplicates += o.duplicates;
        self.bounced += o.bounced;
        self.bounces_received += o.bounces_received;
        self.orphaned_replies += o.orphaned_replies;
        self.dropped_replies += o.dropped_replies;
        self.receipts_sent += o.receipts_sent;
        self.receipts_received += o.receipts_received;
        self.receipt_timeouts += o.receipt_timeouts;
        self.late_bounces += o.late_bounces;
        self.ttl_expired += o.ttl_expired;
        self.overloaded += o.overloaded;
        self.ack_timeouts += o.ack_timeouts;
        self.link_failures += o.link_failures;
        self.lookups_started += o.lookups_started;
        self.lookups_completed += o.lookups_completed;
        self.lookup_queries += o.lookup_queries;
        self.query_timeouts += o.query_timeouts;
        self.pings_sent += o.pings_sent;
        self.ping_timeouts += o.ping_timeouts;
        self.goodbyes_received += o.goodbyes_received;
        self.data_msgs_sent += o.data_msgs_sent;
        self.maintenance_msgs_sent += o.maintenance_msgs_sent;
        self.hop_rtt_us.merge(&o.hop_rtt_us);
        for (a, b) in self
            .delivered_by_hops
            .iter_mut()
            .zip(o.delivered_by_hops.iter())
        {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::default();
        for v in [0, 1, 2, 3, 100, 1000] {
            h.record(v);
        }
        assert_eq!(h.count, 6);
        assert_eq!(h.sum, 1106);
        assert_eq!(h.quantile(0.0), 1); // zero lives in bucket 0 (< 1)
        assert_eq!(h.quantile(0.5), 4); // 2 and 3 are in [2, 4)
        assert_eq!(h.quantile(1.0), 1024);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }
}
