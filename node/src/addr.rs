//! How ring nodes address each other: the dht's opaque address type for a
//! real node.
//!
//! A contact carries the libp2p peer id (which authenticates the node: its
//! ring id is the SHA-256 of these bytes), the multiaddrs it listens on, and
//! for edges the public s2s address. It is reference-counted because the dht
//! clones contacts freely (every transmit names its destination).

use dht::{Contact, Key, keys::node_id_from_peer_bytes};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::Arc;

/// Most listen addresses a contact may carry (bounded for untrusted input).
pub const MAX_ADDRS: usize = 8;

#[derive(Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Inner {
    peer: Vec<u8>,
    addrs: Vec<Vec<u8>>,
    s2s: Option<String>,
}

/// A node's address: peer id, listen addresses, optional s2s address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(Arc<Inner>);

impl PeerAddr {
    /// Builds an address.
    pub fn new(peer: &PeerId, addrs: &[Multiaddr], s2s: Option<String>) -> Self {
        PeerAddr(Arc::new(Inner {
            peer: peer.to_bytes(),
            addrs: addrs.iter().take(MAX_ADDRS).map(|a| a.to_vec()).collect(),
            s2s,
        }))
    }

    /// The peer id, if the bytes are a valid one.
    pub fn peer_id(&self) -> Option<PeerId> {
        PeerId::from_bytes(&self.0.peer).ok()
    }

    /// The raw peer-id bytes.
    pub fn peer_bytes(&self) -> &[u8] {
        &self.0.peer
    }

    /// The listen addresses that parse.
    pub fn multiaddrs(&self) -> Vec<Multiaddr> {
        self.0
            .addrs
            .iter()
            .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
            .collect()
    }

    /// The edge's public s2s address, if it is an edge.
    pub fn s2s(&self) -> Option<&str> {
        self.0.s2s.as_deref()
    }
}

impl Serialize for PeerAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PeerAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(PeerAddr(Arc::new(Inner::deserialize(d)?)))
    }
}

/// The ring id of a peer.
pub fn node_id(peer: &PeerId) -> Key {
    node_id_from_peer_bytes(&peer.to_bytes())
}

/// Whether a contact received from the network is well-formed: a valid peer
/// id whose hash is the claimed node id, a bounded address list, a sane s2s
/// address. Anything else is dropped (and counted) by the driver.
pub fn is_valid_contact(c: &Contact<PeerAddr>) -> bool {
    let inner = &c.addr.0;
    inner.addrs.len() <= MAX_ADDRS
        && inner.s2s.as_ref().is_none_or(|s| s.len() <= 255)
        && PeerId::from_bytes(&inner.peer).is_ok()
        && node_id_from_peer_bytes(&inner.peer) == c.id
}

#[cfg(test)]
mod tests {
    use super::*;
    use dht::Role;

    #[test]
    fn contact_validation() {
        let kp = libp2p::identity::Keypair::generate_ed25519();
        let peer = kp.public().to_peer_id();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let a = PeerAddr::new(&peer, std::slice::from_ref(&addr), None);
        let good = Contact::new(node_id(&peer), a.clone(), Role::Application);
        assert!(is_valid_contact(&good));
        assert_eq!(a.peer_id(), Some(peer));
        assert_eq!(a.multiaddrs(), vec![addr]);
        // A contact claiming someone else's id is rejected.
        let forged = Contact::new(Key([7; 32]), a, Role::Application);
        assert!(!is_valid_contact(&forged));
        // Garbage peer bytes are rejected.
        let junk = PeerAddr(Arc::new(Inner {
            peer: vec![1, 2, 3],
            addrs: vec![],
            s2s: None,
        }));
        assert!(!is_valid_contact(&Contact::new(
            node_id_from_peer_bytes(&[1, 2, 3]),
            junk,
            Role::Router
        )));
    }

    #[test]
    fn round_trips_through_the_wire_codec() {
        let kp = libp2p::identity::Keypair::generate_ed25519();
        let peer = kp.public().to_peer_id();
        let a = PeerAddr::new(
            &peer,
            &["/ip4/127.0.0.1/tcp/1".parse().unwrap()],
            Some("127.0.0.1:5269".into()),
        );
        let frame = dht::wire::Frame::Hello(Contact::new(node_id(&peer), a, Role::Edge));
        let bytes = dht::wire::encode(&frame).unwrap();
        assert_eq!(dht::wire::decode::<PeerAddr>(&bytes).unwrap(), frame);
    }
}
