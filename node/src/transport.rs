//! The libp2p stack of a ring node: TCP, the ring's pre-shared key (pnet),
//! noise, yamux; identify, ping, and a plain stream protocol for the ring
//! messages.
//!
//! pnet runs first on the raw TCP stream: a peer without the key sees
//! nothing but noise and the connection fails in its first handshake, before
//! any ring protocol is reachable. Envelopes travel on one long-lived stream
//! per neighbour and direction (libp2p-stream), not request-response, which
//! measured about sixty times slower for forwarding (measured on this project's machine; see the README's benchmarks).

use libp2p::core::Transport;
use libp2p::core::transport::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::pnet::{PnetConfig, PnetOutput, PreSharedKey};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{StreamProtocol, Swarm, SwarmBuilder, identify, noise, ping, tcp, yamux};
use std::time::Duration;

/// The ring protocol's stream name.
pub const RING_PROTOCOL: StreamProtocol = StreamProtocol::new("/xmpp-ring/ring/1.0.0");

/// identify's protocol version: nodes of other rings or versions are told apart.
pub const IDENTIFY_PROTOCOL: &str = "/xmpp-ring/1.0.0";

/// The node's network behaviour.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Tells peers our listen addresses and learns theirs.
    pub identify: identify::Behaviour,
    /// Keeps connections alive and measures round trips.
    pub ping: ping::Behaviour,
    /// Raw streams for the ring protocol.
    pub stream: libp2p_stream::Behaviour,
    /// Where peers listen (for dialling them when a stream needs it).
    pub addresses: crate::address_book::AddressBook,
}

/// Sent by both sides right after the pnet handshake, encrypted with the
/// ring key: a peer holding another key decrypts garbage and the connection
/// fails at once. (pnet alone cannot tell; the mismatch would only surface
/// inside noise, which may wait for a garbage-length message until the
/// upgrade timeout.)
const RING_MAGIC: &[u8; 8] = b"xmpprng1";

/// pnet, then the key check.
async fn ring_handshake<S>(socket: S, psk: PreSharedKey) -> Result<PnetOutput<S>, std::io::Error>
where
    S: futures::AsyncRead + futures::AsyncWrite + Send + Unpin + 'static,
{
    use futures::{AsyncReadExt, AsyncWriteExt};
    let mut s = PnetConfig::new(psk)
        .handshake(socket)
        .await
        .map_err(std::io::Error::other)?;
    s.write_all(RING_MAGIC).await?;
    s.flush().await?;
    let mut got = [0u8; 8];
    s.read_exact(&mut got).await?;
    if &got != RING_MAGIC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "peer does not hold this ring's key",
        ));
    }
    Ok(s)
}

/// Builds the swarm for `keypair` in the ring keyed by `psk`.
pub fn build_swarm(
    keypair: Keypair,
    psk: PreSharedKey,
    agent: String,
) -> Result<Swarm<Behaviour>, crate::error::NodeError> {
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(
            |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                let noise = noise::Config::new(key)?;
                let mut yamux = yamux::Config::default();
                yamux.set_max_num_streams(1024);
                Ok(
                    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                        .and_then(move |socket, _| ring_handshake(socket, psk))
                        .upgrade(Version::V1Lazy)
                        .authenticate(noise)
                        .multiplex(yamux)
                        .timeout(Duration::from_secs(10)),
                )
            },
        )
        .map_err(|e| crate::error::NodeError::Transport(e.to_string()))?
        .with_behaviour(|key| {
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                    .with_agent_version(agent)
                    .with_interval(Duration::from_secs(300)),
            );
            let ping =
                ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(15)));
            Behaviour {
                identify,
                ping,
                stream: libp2p_stream::Behaviour::new(),
                addresses: crate::address_book::AddressBook::new(
                    std::num::NonZeroUsize::new(8192).expect("non-zero"),
                ),
            }
        })
        .map_err(|e| crate::error::NodeError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    Ok(swarm)
}
