//! # ring-services: XMPP inside the ring
//!
//! Stanzas carried in envelopes, the services that answer them at their
//! responsible node, and the choice of the edge that carries a stanza out
//! to the federation. Everything here is sans-IO: stanzas and record
//! values in, [`Action`]s and record writes out, time passed in. The node
//! drives it over libp2p and redb; the simulator and the tests drive the
//! same code over memory.
//!
//! Inside the ring stanzas are serialised XML in the `jabber:client`
//! namespace (the edge converts from and to `jabber:server` on the wire).

#![forbid(unsafe_code)]

pub mod directory;
pub mod edges;
pub mod error;
pub mod fanout;
pub mod forms;
pub mod host;
pub mod load;
pub mod muc;
pub mod path;
pub mod pubsub;
pub mod services;
pub mod sharded;
pub mod stanza;
#[cfg(test)]
mod testing;

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

/// A record a service asks its host to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The record's name.
    pub name: String,
    /// Its new value, or `None` to delete it.
    pub value: Option<Vec<u8>>,
    /// Whether the outputs of the turn wait until the replicas hold it.
    /// State that a success answers for does; a room's history does not
    /// (a message is never held up by its own history).
    pub holds: bool,
}

impl Write {
    /// A value whose replicas the turn's outputs wait for.
    pub fn put(name: String, value: Vec<u8>) -> Write {
        Write {
            name,
            value: Some(value),
            holds: true,
        }
    }

    /// A deletion the turn's outputs wait for.
    pub fn delete(name: String) -> Write {
        Write {
            name,
            value: None,
            holds: true,
        }
    }

    /// A value written in the background (nothing waits for it).
    pub fn background(name: String, value: Vec<u8>) -> Write {
        Write {
            name,
            value: Some(value),
            holds: false,
        }
    }
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
/// `Service` envelope tag: a client session's lease (`ring_c2s::lease`),
/// routed to the key of the user's bare JID (the home node).
pub const SERVICE_C2S_LEASE: u8 = 4;
/// `Service` envelope tag: a stanza for a client session of the access
/// node whose id is the key.
pub const SERVICE_C2S_DELIVER: u8 = 5;
/// `Service` envelope tag: a presence from a client session for its user's
/// home node to process first (`ring_c2s::lease::Outbound`), routed to the
/// key of the user's bare JID.
pub const SERVICE_C2S_OUTBOUND: u8 = 6;
