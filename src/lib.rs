//! # xmpp-ring: the command line and the process harness
//!
//! The binary's library side: the subcommands ([`cli`]), the client of a
//! node's admin HTTP interface ([`client`]) and the process clusters that
//! `xmpp-ring local`, the process-level tests and the benchmarks start
//! ([`cluster`]). They live here rather than in the `node` crate so that a
//! node's runtime carries none of their dependencies (an HTTP client,
//! process signals, temporary directories).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod cluster;
