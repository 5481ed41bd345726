//! XMPP inside the ring: stanzas carried in envelopes, the services that
//! answer them at their responsible node, and the choice of the edge that
//! carries a stanza out to the federation.
//!
//! Inside the ring stanzas are serialised XML in the `jabber:client`
//! namespace (the edge converts from and to `jabber:server` on the wire).

pub mod edges;
pub mod services;
pub mod stanza;

/// `Service` envelope tag: a stanza for the edge whose id is the key, to be
/// sent out over s2s.
pub const SERVICE_EDGE_OUT: u8 = 1;
/// `Service` envelope tag: the same, re-addressed once by a node that
/// received it although it is not that edge (the edge left the ring).
pub const SERVICE_EDGE_OUT_RETRY: u8 = 2;
