//! What one node knows about another: its id, how to reach it, its role.
//!
//! The address type `A` is opaque to the dht core. The real node uses a
//! libp2p peer id plus multiaddrs; the simulator uses a node index. Keeping it
//! generic is what lets both drive the very same state machines.

use crate::id::NodeId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a node does for the ring (docs/architecture.md, "Roles").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Role {
    /// Routes envelopes and takes responsibility for the keys closest to it.
    #[default]
    Application,
    /// Routes and answers lookups but is never responsible for a key.
    Router,
    /// An application node that also speaks s2s to the federation.
    Edge,
}

impl Role {
    /// Whether a node of this role can be responsible for keys (and so be the
    /// final hop of an envelope).
    pub fn takes_responsibility(self) -> bool {
        !matches!(self, Role::Router)
    }

    /// The lowercase name used in configs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Application => "application",
            Role::Router => "router",
            Role::Edge => "edge",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is none of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (expected application, router or edge)")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, UnknownRole> {
        match s {
            "application" => Ok(Role::Application),
            "router" => Ok(Role::Router),
            "edge" => Ok(Role::Edge),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

/// A reachable node: id, transport address and role.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Contact<A> {
    /// The node's id (SHA-256 of its peer id in a real ring).
    pub id: NodeId,
    /// How to reach it; opaque to the dht core.
    pub addr: A,
    /// What the node does.
    pub role: Role,
}

impl<A> Contact<A> {
    /// Builds a contact.
    pub fn new(id: NodeId, addr: A, role: Role) -> Self {
        Contact { id, addr, role }
    }
}
