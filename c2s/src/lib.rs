//! # ring-c2s: clients logging in to a ring domain
//!
//! The protocol half of client-to-server XMPP, without I/O, in the shape
//! of the dht core and the s2s negotiation machines: what a client sends
//! goes in through `handle_*` (with `now` passed in), what to write or ask
//! of the node comes out of `poll_output`. See `docs/architecture.md`,
//! "Clients (c2s)".
//!
//! * [`scram`]: SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677) on the
//!   server side, from stored keys (never passwords).
//! * [`account`]: what the home node keeps of a user's credentials.
//! * [`offline`]: messages kept for users with no available session.
//! * [`directed`]: whom a session sent directed presence to (told when it
//!   goes).
//! * [`online`]: a user's available sessions as the home node stores them.
//! * [`roster`]: rosters and presence subscriptions (RFC 6121 §2–3).
//! * [`negotiation`]: one client stream, from its header to a bound
//!   session (STARTTLS or direct TLS, SASL with `-PLUS` channel binding,
//!   resource binding, stamping `from`), and in-band registration.
//! * [`register`]: XEP-0077 requests and the registration form.
//! * [`lease`]: what an access node tells a user's home node about a
//!   session.
//! * [`loads`]: which users' records a home node holds, and what waits
//!   for the others.
//! * [`sessions`]: a node's sessions and where a stanza for a user goes
//!   (RFC 6121 §8.5).
//! * [`server`]: the tokio driver: listener, bounds, TLS, and the events
//!   a connection sends its node.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod account;
pub mod directed;
pub mod lease;
pub mod loads;
pub mod negotiation;
pub mod offline;
pub mod online;
pub mod register;
pub mod roster;
pub mod scram;
pub mod server;
pub mod session_host;
pub mod sessions;

pub use account::{Account, AccountError};
pub use negotiation::{C2sConfig, C2sOutput, C2sStream};
pub use scram::{ScramHash, StoredKeys};
