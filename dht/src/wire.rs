//! Wire messages between ring nodes, and their versioned, bounded encoding.
//!
//! A frame is one version byte followed by a bincode-2 body. Decoding is
//! bounded twice: the frame may not exceed [`MAX_FRAME_BYTES`], and bincode's
//! allocation limit stops a forged length prefix from reserving gigabytes.
//! Malformed, truncated, oversized or unknown-version input gives a
//! [`DecodeError`], never a panic.

use crate::contact::Contact;
use crate::envelope::Envelope;
use crate::id::Key;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Current wire version. Bump on any incompatible change.
pub const WIRE_VERSION: u8 = 1;

/// Largest frame accepted: a maximal stanza (512 KiB) plus envelope and
/// trace overhead, with headroom.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Cap on how many contacts a `Nodes` answer may carry.
pub const MAX_CONTACTS_PER_ANSWER: usize = 64;

/// Messages of the ring protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message<A> {
    /// Liveness check; answered with `Pong` carrying the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// Lookup step: "which nodes do you know closest to `target`?"
    FindNode {
        /// Request id, echoed in the answer.
        req: u64,
        /// The key looked up.
        target: Key,
    },
    /// Answer to `FindNode`.
    Nodes {
        /// The request's id.
        req: u64,
        /// Closest contacts known to the answering node.
        contacts: Vec<Contact<A>>,
    },
    /// A routed envelope, numbered per link so the next hop can acknowledge it.
    Route {
        /// Per-link sequence number.
        seq: u64,
        /// The envelope.
        env: Envelope,
    },
    /// Acknowledges every `Route` with `first <= seq <= last` on this link.
    Ack {
        /// First acknowledged sequence number.
        first: u64,
        /// Last acknowledged sequence number.
        last: u64,
    },
    /// The sender is leaving the ring: drop it from the table now.
    Goodbye,
}

impl<A> Message<A> {
    /// Whether this message belongs to the data path (routed envelopes and
    /// their acks) rather than maintenance.
    pub fn is_data(&self) -> bool {
        matches!(self, Message::Route { .. } | Message::Ack { .. })
    }

    /// A short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Ping { .. } => "ping",
            Message::Pong { .. } => "pong",
            Message::FindNode { .. } => "find_node",
            Message::Nodes { .. } => "nodes",
            Message::Route { .. } => "route",
            Message::Ack { .. } => "ack",
            Message::Goodbye => "goodbye",
        }
    }
}

/// What travels on a stream between two nodes: first the sender introduces
/// itself, then messages follow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Frame<A> {
    /// The sender's contact (id, addresses, role); the first frame on a stream.
    Hello(Contact<A>),
    /// A protocol message.
    Msg(Message<A>),
}

/// Why bytes could not be decoded into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty frame")]
    Empty,
    /// Frame larger than [`MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    /// A version this build does not speak.
    #[error("unsupported wire version {0} (this node speaks {WIRE_VERSION})")]
    Version(u8),
    /// The body is not a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The body decoded but bytes were left over.
    #[error("{0} trailing bytes after frame")]
    Trailing(usize),
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The frame would exceed [`MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    /// The serializer failed (should not happen for these types).
    #[error("encoding failed: {0}")]
    Failed(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES>()
}

/// Appends the encoding of `frame` to `out`.
pub fn encode_into<A: Serialize>(frame: &Frame<A>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.push(WIRE_VERSION);
    bincode::serde::encode_into_std_write(frame, out, config())
        .map_err(|e| EncodeError::Failed(e.to_string()))?;
    let len = out.len() - start;
    if len > MAX_FRAME_BYTES {
        out.truncate(start);
        return Err(EncodeError::TooLarge(len));
    }
    Ok(())
}

/// Encodes `frame` into a new buffer.
pub fn encode<A: Serialize>(frame: &Frame<A>) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(128);
    encode_into(frame, &mut out)?;
    Ok(out)
}

/// Decodes one frame that fills `bytes` exactly.
pub fn decode<A: DeserializeOwned>(bytes: &[u8]) -> Result<Frame<A>, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    if version != WIRE_VERSION {
        return Err(DecodeError::Version(version));
    }
    // The borrowing decoder hands byte strings (keys, payloads) over as
    // slices of `bytes`, so keys are copied without an allocation.
    let (frame, used): (Frame<A>, usize) = bincode::serde::borrow_decode_from_slice(body, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(DecodeError::Trailing(body.len() - used));
    }
    if let Frame::Msg(Message::Nodes { contacts, .. }) = &frame
        && contacts.len() > MAX_CONTACTS_PER_ANSWER
    {
        return Err(DecodeError::Malformed(format!(
            "{} contacts in one answer (limit {MAX_CONTACTS_PER_ANSWER})",
            contacts.len()
        )));
    }
    Ok(frame)
}

#[cfg(test)]
mod tests;
