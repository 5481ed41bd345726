//! Which edge carries a stanza out to a remote domain: rendezvous hashing,
//! the edge with the highest `SHA-256(edge id ‖ domain)` among the live
//! edges this node knows. Every node that knows the same edges picks the
//! same one for a domain, so each remote domain sees one stable sender
//! stream and stanzas to it keep their order.

use dht::NodeId;
use sha2::{Digest, Sha256};

/// The edge for `domain` among `edges`.
pub fn pick(edges: &[NodeId], domain: &str) -> Option<NodeId> {
    edges.iter().copied().max_by_key(|e| score(e, domain))
}

fn score(edge: &NodeId, domain: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(edge.as_bytes());
    h.update(domain.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dht::Key;

    #[test]
    fn stable_and_spread() {
        let edges: Vec<NodeId> = (0..4u8).map(|i| Key([i; 32])).collect();
        let a = pick(&edges, "a.test");
        assert_eq!(a, pick(&edges, "a.test"));
        // Order of the list does not matter.
        let mut rev = edges.clone();
        rev.reverse();
        assert_eq!(a, pick(&rev, "a.test"));
        // Removing another edge does not move the domain.
        let others: Vec<NodeId> = edges
            .iter()
            .copied()
            .filter(|e| Some(*e) == a || *e != edges[0])
            .collect();
        if a != Some(edges[0]) {
            assert_eq!(pick(&others, "a.test"), a);
        }
        // Domains spread over edges.
        let used: std::collections::HashSet<_> = (0..64)
            .map(|i| pick(&edges, &format!("d{i}.test")))
            .collect();
        assert!(used.len() >= 3);
        assert_eq!(pick(&[], "a.test"), None);
    }
}
