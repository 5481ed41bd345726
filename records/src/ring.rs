//! What the replicator needs to know of the ring: which nodes should hold a
//! key's copies, as this node sees it. The dht's ring-node state machine
//! answers from its routing table; tests answer from a list of nodes.

use dht::{Key, NodeId, RingNode};

/// A node's view of the ring.
pub trait Ring {
    /// This node's id.
    fn me(&self) -> NodeId;
    /// Whether this node holds copies (routers do not).
    fn takes_responsibility(&self) -> bool;
    /// The `n` live contacts closest to `key` that hold copies, closest
    /// first (this node not included).
    fn closest_holders(&self, key: &Key, n: usize) -> Vec<NodeId>;
    /// Whether the node has joined the ring (before that its view is
    /// empty and sweeps would push nothing useful).
    fn is_joined(&self) -> bool;
    /// Whether `id` is a live contact of this node (or this node).
    fn is_live(&self, id: &NodeId) -> bool;

    /// The nodes that should hold `key`'s record as this node sees the
    /// ring: the `r` closest live holders, itself included when it is one
    /// of them, closest first.
    fn replica_set(&self, key: &Key, r: usize) -> Vec<NodeId> {
        let mut ids = self.closest_holders(key, r);
        if self.takes_responsibility() {
            ids.push(self.me());
        }
        ids.sort_by_key(|id| id.distance(key));
        ids.dedup();
        ids.truncate(r);
        ids
    }
}

/// A view of the ring from a list of the live holders (this node
/// included or not): what deterministic tests, benches and small
/// harnesses give the machines instead of a routing table.
#[derive(Clone, Copy, Debug)]
pub struct ListRing<'a> {
    /// This node.
    pub me: NodeId,
    /// The nodes it believes alive.
    pub live: &'a [NodeId],
}

impl Ring for ListRing<'_> {
    fn me(&self) -> NodeId {
        self.me
    }

    fn takes_responsibility(&self) -> bool {
        true
    }

    fn closest_holders(&self, key: &Key, n: usize) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .live
            .iter()
            .copied()
            .filter(|id| *id != self.me)
            .collect();
        v.sort_by_key(|id| id.distance(key));
        v.truncate(n);
        v
    }

    fn is_joined(&self) -> bool {
        true
    }

    fn is_live(&self, id: &NodeId) -> bool {
        *id == self.me || self.live.contains(id)
    }
}

impl<A: Clone + PartialEq + std::fmt::Debug> Ring for RingNode<A> {
    fn me(&self) -> NodeId {
        self.id()
    }

    fn takes_responsibility(&self) -> bool {
        self.contact().role.takes_responsibility()
    }

    fn closest_holders(&self, key: &Key, n: usize) -> Vec<NodeId> {
        self.table()
            .closest(key, n, |e| {
                e.failures == 0 && e.contact.role.takes_responsibility()
            })
            .into_iter()
            .map(|c| c.id)
            .collect()
    }

    fn is_joined(&self) -> bool {
        RingNode::is_joined(self)
    }

    fn is_live(&self, id: &NodeId) -> bool {
        *id == self.id()
            || self
                .table()
                .iter()
                .any(|e| e.contact.id == *id && e.failures == 0)
    }
}
