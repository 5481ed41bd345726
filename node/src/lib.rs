//! # node: a real xmpp-ring node
//!
//! Drives the dht crate's ring-node state machine over libp2p (see
//! [`transport`]), the record replicator (`ring-records`) over redb and the
//! services, keeps the node's identity and configuration, and serves the
//! admin HTTP interface (`/status`, `/metrics`, `/trace`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
pub mod address_book;
mod admin;
pub mod api;
pub mod config;
mod control;
pub mod error;
pub mod identity;
pub mod metrics;
pub mod psk;
pub mod records;
pub mod runtime;
// The derive generates an undocumented event enum.
#[allow(missing_docs)]
pub mod transport;
pub use ring_services as xmpp;
