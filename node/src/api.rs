//! The admin interface's JSON documents, shared by the server (the node)
//! and its clients (`xmpp-ring status`, `xmpp-ring trace`, `xmpp-ring local`,
//! tests and benches).

use serde::{Deserialize, Serialize};

/// `GET /status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// Ring id (hex).
    pub node_id: String,
    /// libp2p peer id.
    pub peer_id: String,
    /// Listen addresses, each ending in `/p2p/<peer id>`.
    pub addresses: Vec<String>,
    /// Role.
    pub role: String,
    /// Served XMPP domains.
    pub domains: Vec<String>,
    /// Edge s2s address, if any.
    pub s2s_listen: Option<String>,
    /// Whether the join lookup completed.
    pub joined: bool,
    /// Contacts in the routing table.
    pub table_size: usize,
    /// Non-empty buckets.
    pub buckets: Vec<BucketReport>,
    /// Peers with an open connection.
    pub connected_peers: usize,
    /// Envelopes queued in this node.
    pub pending: usize,
    /// Envelopes originated here awaiting their outcome.
    pub outstanding: usize,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Counters.
    pub counters: Counters,
    /// s2s figures, on edges.
    pub edge: Option<EdgeReport>,
    /// Edges this node knows (it can send to remote domains through them).
    pub edges_known: usize,
    /// The record store on this node.
    #[serde(default)]
    pub records: RecordsReport,
    /// The MUC rooms and PubSub nodes this node hosts.
    #[serde(default)]
    pub services: ServicesReport,
}

/// Rooms and PubSub nodes hosted by one node.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServicesReport {
    /// Rooms in memory (their bare JIDs; at most 100 listed).
    pub rooms: Vec<String>,
    /// Rooms in memory.
    pub room_count: usize,
    /// Occupants of those rooms.
    pub occupants: usize,
    /// PubSub nodes in memory (`service/node`; at most 100 listed).
    pub pubsub_nodes: Vec<String>,
    /// PubSub nodes in memory.
    pub pubsub_node_count: usize,
    /// Subscriptions of those nodes.
    pub subscriptions: usize,
    /// Rooms taken over from a host that died.
    pub takeovers: u64,
    /// Fan-out envelopes sent (one per remote domain and batch).
    pub fanout_envelopes: u64,
    /// Stanzas those envelopes carried.
    pub fanout_stanzas: u64,
}

/// The record store on one node.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordsReport {
    /// Records held (tombstones of deleted ones included).
    pub count: usize,
    /// Bytes held (names and values).
    pub bytes: u64,
    /// The node's limit.
    pub max_bytes: u64,
    /// Copies kept of each record.
    pub replicas: usize,
    /// Client requests started here.
    pub requests: u64,
    /// Requests this node answered as coordinator.
    pub coordinated: u64,
    /// Replica copies received.
    pub replicas_in: u64,
    /// Replica copies pushed.
    pub replicas_out: u64,
    /// Writes refused (limits, storage).
    pub refused: u64,
}

/// The answer to `GET /records?prefix=P`: one page of names.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordList {
    /// Live records of this node with the prefix, in name order.
    pub names: Vec<String>,
    /// Where the next page starts (`after=`); `None`: this was the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Why the store could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to `GET /record?op=get` and `POST /record?op=put|delete`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordReport {
    /// `put`, `get` or `delete`.
    pub op: String,
    /// The record's name.
    pub name: String,
    /// Whether the ring answered (a missing record is still `ok`).
    pub ok: bool,
    /// Whether the record exists (after a put: true).
    pub found: bool,
    /// Its version.
    pub version: Option<u64>,
    /// Its value (get), as UTF-8 (invalid sequences replaced).
    pub value: Option<String>,
    /// Copies pushed besides the coordinator's (put, delete).
    pub replicas: Option<usize>,
    /// Why it failed.
    pub error: Option<String>,
    /// Hops the (answered) request took to the record's coordinator.
    #[serde(default)]
    pub hops: Option<u8>,
    /// Times the request was sent (retries after a lost answer).
    #[serde(default)]
    pub attempts: u32,
}

/// The s2s side of an edge node.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EdgeReport {
    /// The s2s listen address.
    pub listen: String,
    /// Inbound connections accepted.
    pub inbound_connections: u64,
    /// Inbound connections open now.
    #[serde(default)]
    pub inbound_open: u64,
    /// Inbound connections refused over the global limit.
    pub inbound_refused: u64,
    /// Inbound connections refused over the per-address limit.
    #[serde(default)]
    pub inbound_refused_per_ip: u64,
    /// Inbound connections refused over the per-address rate.
    #[serde(default)]
    pub inbound_refused_rate: u64,
    /// Inbound streams closed for not authenticating in time.
    #[serde(default)]
    pub auth_timeouts: u64,
    /// Stanzas received from the federation.
    pub stanzas_in: u64,
    /// Stanzas sent to the federation.
    pub stanzas_out: u64,
    /// Stanzas that could not be delivered out.
    pub stanzas_bounced: u64,
    /// Peers authenticated by dialback (either direction).
    pub dialback_ok: u64,
    /// Failed dialback attempts.
    pub dialback_failed: u64,
    /// Dialback checks refused at once (too many verifications running).
    #[serde(default)]
    pub verifications_refused: u64,
    /// Verification connections open now.
    #[serde(default)]
    pub verifications_open: u64,
    /// Peers authenticated by SASL EXTERNAL (either direction).
    pub sasl_external_ok: u64,
    /// Outbound streams established.
    pub outbound_streams: u64,
    /// Outbound streams open now.
    #[serde(default)]
    pub outbound_open: u64,
    /// Remote certificates refused (`s2s_secure_auth`).
    #[serde(default)]
    pub certificates_refused: u64,
    /// Writes that did not finish within the write timeout.
    #[serde(default)]
    pub write_timeouts: u64,
    /// Dialback keys of this ring confirmed to remote servers.
    pub verify_valid: u64,
    /// Dialback keys refused to remote servers.
    pub verify_invalid: u64,
    /// Stream errors sent, by condition.
    pub stream_errors: std::collections::BTreeMap<String, u64>,
}

/// One routing-table bucket.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BucketReport {
    /// Row (shared digits with this node).
    pub row: usize,
    /// Column (next digit).
    pub col: u32,
    /// Contacts.
    pub size: usize,
}

/// Counters in `/status` (the same as in `/metrics`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    /// Envelopes created here.
    pub routed: u64,
    /// Envelopes delivered here.
    pub delivered: u64,
    /// Envelopes passed to a next hop.
    pub forwarded: u64,
    /// Bounces generated here.
    pub bounced: u64,
    /// Sends to a second or later next hop.
    pub rerouted: u64,
    /// Duplicates suppressed.
    pub duplicates: u64,
    /// Next-hop ack timeouts.
    pub ack_timeouts: u64,
    /// Lookups started.
    pub lookups: u64,
    /// Delivery receipts received for our envelopes.
    pub receipts: u64,
    /// Our envelopes reported failed for lack of a receipt.
    pub receipt_timeouts: u64,
    /// Inbound connections refused (handshake failures: wrong ring key,
    /// not an xmpp-ring node, ...).
    pub refused_incoming: u64,
    /// Outbound connections that failed.
    pub failed_outgoing: u64,
    /// Ring streams closed for bad input.
    pub bad_streams: u64,
    /// Stanzas for ring JIDs handled here as their responsible node.
    #[serde(default)]
    pub stanzas_handled: u64,
}

/// `GET /trace?jid=...`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TraceReport {
    /// The JID as asked.
    pub jid: String,
    /// Its key (hex).
    pub key: String,
    /// The node that took responsibility (hex id), when the trace succeeded.
    pub responsible: Option<String>,
    /// Hops from the entry node.
    pub hops: usize,
    /// Every node on the path, entry first.
    pub path: Vec<TraceHopReport>,
    /// Whether the probe reached a responsible node.
    pub ok: bool,
    /// Why not, when it did not.
    pub error: Option<String>,
    /// Round trip of the whole probe, µs.
    pub rtt_us: u64,
}

/// One node of a trace.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TraceHopReport {
    /// Node id (hex).
    pub node: String,
    /// Time since the previous node of the path had it, µs (0 for the entry).
    pub latency_us: u64,
}

/// `POST /load?...`: a load run's outcome (used by tests and benchmarks).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct LoadReport {
    /// Envelopes sent.
    pub sent: u64,
    /// Confirmed delivered (receipt or probe answer).
    pub delivered: u64,
    /// Reported failed, by reason.
    pub bounced: std::collections::BTreeMap<String, u64>,
    /// Refused at once by the local node (overload).
    pub refused: u64,
    /// Seconds from the first send to the last outcome.
    pub elapsed_s: f64,
    /// Delivered envelopes per second.
    pub rate: f64,
    /// Mean hops of answered probes.
    pub mean_hops: f64,
}

impl LoadReport {
    /// Envelopes with an outcome (delivered or bounced).
    pub fn settled(&self) -> u64 {
        self.delivered + self.bounced.values().sum::<u64>()
    }
}
