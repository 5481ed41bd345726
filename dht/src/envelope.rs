//! Routed envelopes: what travels hop by hop to a key's responsible node.

use crate::id::{Key, NodeId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Default hop budget of a new envelope (docs/architecture.md, "Routing": TTL 32).
pub const DEFAULT_TTL: u8 = 32;

/// What an envelope carries; decides what the responsible node does with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EnvelopeKind {
    /// An XMPP stanza for the key's responsible node.
    Stanza,
    /// A probe: the responsible node answers with a [`EnvelopeKind::ProbeReply`]
    /// carrying the path (used by `trace` and the simulator).
    Probe,
    /// The answer to a probe, routed back to the probe's origin.
    ProbeReply,
    /// A record-store request or answer.
    Record,
    /// A service-internal message (MUC, PubSub, edges), tagged by service.
    Service(u8),
    /// An envelope that could not be delivered, on its way back to its
    /// origin. Bounces are never bounced themselves.
    Bounce(BounceReason),
    /// Delivery receipts on their way back to an origin: the payload is a
    /// list of big-endian u64 envelope ids that reached their responsible
    /// node. Lets the origin account for every envelope it sent.
    Receipt,
}

impl EnvelopeKind {
    /// Whether the responsible node may receive this kind more than once
    /// without harm (replies and bounces are matched by id at the origin).
    pub fn is_reply(&self) -> bool {
        matches!(
            self,
            EnvelopeKind::ProbeReply | EnvelopeKind::Bounce(_) | EnvelopeKind::Receipt
        )
    }

    /// Whether the responsible node sends a delivery receipt back
    /// (everything the application sends; probes answer with their reply).
    pub fn wants_receipt(&self) -> bool {
        matches!(
            self,
            EnvelopeKind::Stanza | EnvelopeKind::Record | EnvelopeKind::Service(_)
        )
    }

    /// Whether the origin tracks this kind until it is settled (receipt,
    /// probe answer or bounce) and reports it failed when nothing comes back.
    pub fn is_tracked(&self) -> bool {
        self.wants_receipt() || matches!(self, EnvelopeKind::Probe)
    }
}

/// Why an envelope came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BounceReason {
    /// Next hops did not acknowledge within the retry budget
    /// (XMPP: `remote-server-timeout`).
    Timeout,
    /// No node could take it: no route, or a router with no responsible
    /// contact (XMPP: `recipient-unavailable`).
    Unreachable,
    /// The TTL ran out, which means a routing loop or a ring in turmoil
    /// (XMPP: `recipient-unavailable`).
    TtlExpired,
    /// The node had no room to queue it (XMPP: `resource-constraint`).
    Overloaded,
    /// The node was shutting down and could not hand it off
    /// (XMPP: `remote-server-timeout`).
    ShuttingDown,
    /// Neither a receipt nor a bounce reached the origin in time: the
    /// envelope vanished with a crashed node (XMPP: `remote-server-timeout`).
    NoReceipt,
}

impl BounceReason {
    /// The RFC 6120 stanza error condition a bounce maps to.
    pub fn xmpp_condition(&self) -> &'static str {
        match self {
            BounceReason::Timeout | BounceReason::ShuttingDown | BounceReason::NoReceipt => {
                "remote-server-timeout"
            }
            BounceReason::Unreachable | BounceReason::TtlExpired => "recipient-unavailable",
            BounceReason::Overloaded => "resource-constraint",
        }
    }
}

/// One hop of a traced envelope: which node held it and when it arrived
/// there, in microseconds of that node's wall clock. Nodes on one machine
/// share the clock, so differences are exact; across machines they include
/// clock skew.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceHop {
    /// The node.
    pub node: NodeId,
    /// Arrival time at that node, µs since the Unix epoch.
    pub at_us: u64,
}

/// A routed message (docs/architecture.md, "Routing").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Where it is going: the responsible node of this key takes it.
    pub key: Key,
    /// What it is.
    pub kind: EnvelopeKind,
    /// The node that first sent it (bounces and replies go back there).
    pub origin: NodeId,
    /// Unique per origin; replies and bounces carry the request's id.
    pub id: u64,
    /// Remaining hop budget.
    pub ttl: u8,
    /// Hops taken so far.
    pub hops: u8,
    /// The path so far, when tracing was asked for.
    pub trace: Option<Vec<TraceHop>>,
    /// For bounces and probe replies: the key and kind of the original
    /// envelope (the envelope's own key is then the origin's id).
    pub orig: Option<(Key, EnvelopeKind)>,
    /// Opaque payload (a stanza, a record request, ...).
    #[serde(with = "serde_bytes_bytes")]
    pub payload: Bytes,
}

/// serde glue so `Bytes` travels as one byte string (bincode copies it in
/// one go instead of element by element).
mod serde_bytes_bytes {
    use bytes::Bytes;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::serialize(b.as_ref(), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let v: std::borrow::Cow<'de, [u8]> = serde_bytes::deserialize(d)?;
        Ok(match v {
            std::borrow::Cow::Borrowed(b) => Bytes::copy_from_slice(b),
            std::borrow::Cow::Owned(v) => Bytes::from(v),
        })
    }
}
