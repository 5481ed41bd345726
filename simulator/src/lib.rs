//! # simulator: the overlay at scale, before anyone deploys it
//!
//! Two modes drive the dht crate's code:
//!
//! * [`static_ring`]: the tables a converged ring of N nodes would hold,
//!   built lazily so a million nodes fit; measures hop counts and table
//!   sizes of the dht routing decision.
//! * [`protocol`]: the real ring-node state machines over a simulated
//!   network (latency, loss, churn), joining through one bootstrap node;
//!   measures delivery, bounces, hops, timeouts and maintenance traffic.
//!
//! [`sweep`] runs series over N and (k, b); [`plot`] draws SVG charts.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod plot;
pub mod progress;
pub mod protocol;
pub mod records_load;
pub mod report;
pub mod rooms_load;
pub mod static_ring;
pub mod sweep;

pub use progress::Progress;
pub use report::{HopCounts, ProtocolFigures, Report};
