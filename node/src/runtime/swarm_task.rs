//! The swarm task: drives libp2p and reports what the core needs to know
//! (connections up and down, refused handshakes, new listen addresses).

use super::{Input, NetEvent, SwarmCmd};
use crate::transport::{Behaviour, BehaviourEvent};
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Swarm, identify};
use tokio::sync::mpsc;

/// Most addresses remembered per peer from identify.
const MAX_IDENTIFY_ADDRS: usize = 8;

pub(crate) async fn run(
    mut swarm: Swarm<Behaviour>,
    mut cmds: mpsc::UnboundedReceiver<SwarmCmd>,
    inbox: mpsc::Sender<Input>,
    max_connections: u32,
) {
    let mut open: u32 = 0;
    loop {
        tokio::select! {
            event = swarm.select_next_some() => {
                let net = match event {
                    SwarmEvent::ConnectionEstablished { peer_id, num_established, connection_id, .. } => {
                        open += 1;
                        if open > max_connections {
                            // Over the limit: this connection goes again at once.
                            tracing::warn!(%peer_id, max_connections, "connection limit reached; closing");
                            swarm.close_connection(connection_id);
                            None
                        } else {
                            (num_established.get() == 1).then_some(NetEvent::Connected(peer_id))
                        }
                    }
                    SwarmEvent::ConnectionClosed { peer_id, num_established, .. } => {
                        open = open.saturating_sub(1);
                        (num_established == 0).then_some(NetEvent::Disconnected(peer_id))
                    }
                    SwarmEvent::IncomingConnectionError { error, send_back_addr, .. } => {
                        tracing::info!(%send_back_addr, "refused incoming connection: {error}");
                        Some(NetEvent::RefusedIncoming)
                    }
                    SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                        tracing::debug!(?peer_id, "outgoing connection failed: {error}");
                        Some(NetEvent::FailedOutgoing)
                    }
                    SwarmEvent::NewListenAddr { address, .. } => Some(NetEvent::ListenAddr(address)),
                    SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                        if info.protocol_version == crate::transport::IDENTIFY_PROTOCOL {
                            for a in info.listen_addrs.into_iter().take(MAX_IDENTIFY_ADDRS) {
                                swarm.add_peer_address(peer_id, a);
                            }
                        } else {
                            tracing::warn!(%peer_id, version = %info.protocol_version, "peer speaks another protocol; disconnecting");
                            let _ = swarm.disconnect_peer_id(peer_id);
                        }
                        None
                    }
                    _ => None,
                };
                if let Some(net) = net && inbox.send(Input::Net(net)).await.is_err() {
                    return;
                }
            }
            cmd = cmds.recv() => match cmd {
                Some(SwarmCmd::AddAddrs(peer, addrs)) => {
                    for a in addrs {
                        swarm.add_peer_address(peer, a);
                    }
                }
                None => return,
            },
        }
    }
}
