//! XMPP inside the ring: stanzas carried in envelopes, the services that
//! answer them at their responsible node, and the choice of the edge that
//! carries a stanza out to the federation.
//!
//! Inside the ring stanzas are serialised XML in the `jabber:client`
//! namespace (the edge converts from and to `jabber:server` on the wire).

pub mod directory;
pub mod edges;
pub mod fanout;
pub mod forms;
pub mod muc;
pub mod pubsub;
pub mod services;
pub mod stanza;

use xmpp_parsers::minidom::Element;

/// What a service asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this stanza (it has its `to`).
    Send(Element),
    /// Send this stanza, which has no `to`, to each of these JIDs (fanned
    /// out per domain, see [`fanout`]).
    Broadcast {
        /// The stanza, without `to`.
        stanza: Element,
        /// Its recipients.
        to: Vec<String>,
    },
    /// Route this stanza again by its (changed) content: a PubSub instant
    /// node whose name was just chosen.
    Reroute(Element),
}

/// `Service` envelope tag: a stanza for the edge whose id is the key, to be
/// sent out over s2s.
pub const SERVICE_EDGE_OUT: u8 = 1;
/// `Service` envelope tag: the same, re-addressed once by a node that
/// received it although it is not that edge (the edge left the ring).
pub const SERVICE_EDGE_OUT_RETRY: u8 = 2;
/// `Service` envelope tag: a [`fanout::FanoutMsg`] for the edge whose id is
/// the key: one stanza for many recipients of one remote domain.
pub const SERVICE_EDGE_FANOUT: u8 = 3;
