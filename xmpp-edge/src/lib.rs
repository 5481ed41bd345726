//! # xmpp-edge: standard XMPP server-to-server for ring edges
//!
//! Knows nothing of libp2p or the ring: it speaks RFC 6120 s2s (with
//! XEP-0220 dialback, XEP-0185 keys and XEP-0178 SASL EXTERNAL) to the
//! federation and exchanges stanzas with its owner through a channel and a
//! handle (see [`edge`]).
//!
//! * [`xml`], [`xml_write`]: the stream codec with restricted XML and limits.
//! * [`domain`]: addresses from the wire, validated with the `jid` crate.
//! * [`stream_error`]: RFC 6120 stream error conditions.
//! * [`negotiation`]: inbound and outbound stream negotiation as sans-IO
//!   state machines (all protocol decisions and security rules).
//! * [`tls`]: rustls configs and certificate checks.
//! * [`dialback`]: keys and elements.
//! * [`resolve`]: overrides, SRV, A/AAAA.
//! * [`edge`]: configuration, bounds and start-up; the tokio drivers of
//!   inbound streams, outbound streams and dialback verification sit
//!   behind it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod conn;
pub mod dialback;
pub mod domain;
pub mod edge;
pub mod error;
mod escape;
mod inbound;
pub mod ip_limit;
pub mod negotiation;
pub mod ns;
mod outbound;
pub mod resolve;
mod shared;
pub mod stream_error;
pub mod tls;
mod verify;
pub mod writer;
pub mod xml;
pub mod xml_write;

pub use edge::{EdgeConfig, EdgeEvent, EdgeHandle, EdgeStats, StartError, Undeliverable, start};
