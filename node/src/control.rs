//! What the admin interface asks of a running node, and how the answers
//! come back: a leaf module shared by the admin server (which parses HTTP
//! requests into [`Command`]s) and the core task (which serves them), so
//! neither depends on the other.

use crate::api::{LoadReport, StatusReport, TraceReport};
use dht::Key;
use serde::Deserialize;
use tokio::sync::oneshot;

/// Admin requests served by the core.
pub(crate) enum Command {
    Status(oneshot::Sender<StatusReport>),
    Trace {
        jid: String,
        reply: oneshot::Sender<TraceReport>,
    },
    Load {
        spec: LoadSpec,
        reply: oneshot::Sender<Result<LoadReport, String>>,
    },
    /// A record-store request.
    Record {
        op: crate::records::RecordOp,
        /// Only this node's own copy (gets), without routing.
        local: bool,
        reply: oneshot::Sender<crate::api::RecordReport>,
    },
    /// One page of this node's own live records with a name prefix.
    ListRecords {
        prefix: String,
        after: Option<String>,
        limit: usize,
        reply: oneshot::Sender<crate::api::RecordList>,
    },
    /// Sends a stanza from the ring (operators and tests).
    Send {
        stanza: xmpp_parsers::minidom::Element,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// Most envelopes one run may send.
pub const MAX_COUNT: u64 = 10_000_000;
/// Most envelopes in flight.
pub const MAX_WINDOW: usize = 65_536;
/// Largest payload.
pub const MAX_SIZE: usize = 256 * 1024;

/// A load request with a field out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} must be {expected}")]
pub struct BadLoadSpec {
    /// The field.
    pub field: &'static str,
    /// Its range.
    pub expected: String,
}

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
    /// Checks the request: the first field out of its range.
    pub fn validate(&self) -> Result<(), BadLoadSpec> {
        let bad = |field, expected: String| Err(BadLoadSpec { field, expected });
        if self.count == 0 || self.count > MAX_COUNT {
            return bad("count", format!("1..={MAX_COUNT}"));
        }
        if self.window == 0 || self.window > MAX_WINDOW {
            return bad("window", format!("1..={MAX_WINDOW}"));
        }
        if self.size > MAX_SIZE {
            return bad("size", format!("at most {MAX_SIZE}"));
        }
        if !matches!(self.kind.as_str(), "stanza" | "probe") {
            return bad("kind", "stanza or probe".into());
        }
        if self.flows == 0 || self.flows > 10_000 {
            return bad("flows", "1..=10000".into());
        }
        if let Some(k) = &self.key
            && Key::from_hex(k).is_none()
        {
            return bad("key", "64 hex digits".into());
        }
        Ok(())
    }
}
