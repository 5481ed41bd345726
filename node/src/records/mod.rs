//! The replicated record store in the node. The protocol (coordinators,
//! replica pushes, fetches, the re-replication sweep) is the `ring-records`
//! crate's state machine, shared with the simulator; the node keeps its
//! copies in redb ([`RedbBackend`]) and drives the machine from its core
//! task (`runtime::core::records`).

mod store;

pub use ring_records::*;
pub use store::RedbBackend;
