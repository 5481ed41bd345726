//! # dht: the sans-IO overlay core of xmpp-ring
//!
//! Everything here is pure computation: no sockets, no tokio, no clock
//! reads, no OS randomness. Time comes in as `now: Instant` arguments and
//! randomness from seeded generators, so the same state machines run inside
//! a real libp2p node and inside the simulator, and tests are deterministic.
//!
//! * [`id`]: 256-bit keys, XOR distance, `b`-bit digits.
//! * [`keys`]: key derivation for JIDs, PubSub nodes, records and node ids.
//! * [`table`]: k-buckets over `b`-bit digits with replacement caches.
//! * [`route`]: the greedy next-hop decision, shared with the simulator.
//! * [`lookup`]: the iterative lookup used to join and refresh.
//! * [`envelope`] and [`wire`]: what travels between nodes, and its encoding.
//! * [`node`]: the ring-node state machine tying it all together.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod contact;
pub mod envelope;
pub mod hash;
pub mod id;
pub mod keys;
pub mod lookup;
pub mod node;
pub mod route;
pub mod table;
pub mod wire;

pub use contact::{Contact, Role, UnknownRole};
pub use envelope::{BounceReason, Envelope, EnvelopeKind, TraceHop};
pub use id::{Distance, Key, NodeId};
pub use node::{Event, NodeConfig, RingNode, RouteError, Stats, Transmit};
pub use table::{RoutingTable, TableConfig};
