//! The node's tokio runtime: three kinds of tasks around the dht state
//! machine.
//!
//! * the **swarm task** owns the libp2p swarm (connections, identify, ping)
//!   and reports connection events;
//! * the **core task** owns the [`dht::RingNode`] and is the only place that
//!   touches it: inputs arrive on one bounded inbox, outputs leave as framed
//!   byte batches to writer tasks, timers come from the state machine;
//! * **link tasks** (module `links`) move bytes between streams and the core.
//!
//! Start-up: listen, learn our own address, start the tasks, join through
//! the bootstrap peers, bind the admin server, write `ready.json` in the
//! data directory. Shutdown (the `shutdown` future resolves): stop
//! accepting streams, tell neighbours goodbye, give in-flight envelopes a
//! grace period to be acknowledged, bounce whatever is left to its origin.

mod c2s_setup;
mod core;
mod edge_setup;
mod links;
mod load;
mod swarm_task;

use crate::addr::{PeerAddr, node_id};
use crate::config::NodeSettings;
use crate::error::NodeError;
use crate::transport::{self, RING_PROTOCOL};
use dht::wire::Message;
use dht::{Contact, NodeId};
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub(crate) use crate::control::Command;
pub use crate::control::LoadSpec;

/// Capacity of the core's inbox (batches, not messages).
const INBOX: usize = 1024;
/// Admin requests waiting for the core.
const COMMANDS: usize = 64;
/// How long a graceful shutdown waits for in-flight envelopes.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Something for the core task.
pub(crate) enum Input {
    /// Messages read from `from`'s stream.
    Frames {
        from: Contact<PeerAddr>,
        msgs: Vec<Message<PeerAddr>>,
    },
    /// Our stream to `peer` could not be opened or broke.
    WriterDown { peer: PeerId, node: NodeId },
    /// Network events from the swarm task.
    Net(NetEvent),
    /// Something from this node's s2s edge.
    Edge(xmpp_edge::EdgeEvent),
    /// Something from this node's client listener.
    C2s(ring_c2s::server::C2sEvent),
}

/// Connection-level events the swarm task reports.
pub(crate) enum NetEvent {
    Connected(PeerId),
    Disconnected(PeerId),
    RefusedIncoming,
    FailedOutgoing,
    BadStream,
    ListenAddr(Multiaddr),
}

/// Requests for the swarm task.
pub(crate) enum SwarmCmd {
    /// Remember these addresses for `peer` (before a stream is opened to it).
    AddAddrs(PeerId, Vec<Multiaddr>),
}

/// What a started node tells its operator (also written as `ready.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Ready {
    /// Ring id (hex).
    pub node_id: String,
    /// libp2p peer id.
    pub peer_id: String,
    /// Listen addresses with `/p2p/<peer id>`.
    pub listen: Vec<String>,
    /// Admin HTTP address.
    pub admin: String,
    /// Client (c2s) address, when the node listens for clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c2s: Option<String>,
    /// Direct-TLS client address (XEP-0368), when the node has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c2s_tls: Option<String>,
    /// Process id.
    pub pid: u32,
    /// Role.
    pub role: String,
}

/// Name of the record store's database in the data directory.
pub const RECORDS_FILE: &str = "records.redb";

/// Name of the admin bearer token's file in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Name of the readiness file in the data directory.
pub const READY_FILE: &str = "ready.json";

/// Runs a node until `shutdown` resolves. `on_ready` is called once the node
/// listens and its admin server is up.
pub async fn run(
    settings: NodeSettings,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), NodeError> {
    let settings = Arc::new(settings);
    let keypair = crate::identity::load_or_create(&settings.data_dir)?;
    let peer_id = keypair.public().to_peer_id();
    let me_id = node_id(&peer_id);
    let agent = format!(
        "xmpp-ring/{} role={}",
        env!("CARGO_PKG_VERSION"),
        settings.role
    );
    let mut swarm = transport::build_swarm(keypair, settings.psk, agent)?;
    let metrics = crate::metrics::handle();

    swarm
        .listen_on(settings.listen.clone())
        .map_err(|e| NodeError::Listen {
            addr: settings.listen.to_string(),
            why: e.to_string(),
        })?;
    // Our own contact needs a concrete listen address: wait for the first.
    let first_addr = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => return Ok(address),
                SwarmEvent::ListenerError { error, .. } => {
                    return Err(error.to_string());
                }
                SwarmEvent::ListenerClosed { reason: Err(e), .. } => {
                    return Err(format!("closed: {e}"));
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("no listen address after 10 s".to_string()))
    .map_err(|why| NodeError::Listen {
        addr: settings.listen.to_string(),
        why,
    })?;

    let mut control = swarm.behaviour().stream.new_control();
    let incoming = control
        .accept(RING_PROTOCOL)
        .map_err(|e| NodeError::Protocol(e.to_string()))?;
    for (peer, addr) in &settings.bootstrap {
        swarm.add_peer_address(*peer, addr.clone());
    }

    let s2s = settings.s2s_listen.map(|a| a.to_string());
    let me = Contact::new(
        me_id,
        PeerAddr::new(&peer_id, std::slice::from_ref(&first_addr), s2s),
        settings.role,
    );
    let (inbox_tx, inbox_rx) = mpsc::channel::<Input>(INBOX);
    let (swarm_tx, swarm_rx) = mpsc::unbounded_channel::<SwarmCmd>();

    let swarm_handle = tokio::spawn(swarm_task::run(
        swarm,
        swarm_rx,
        inbox_tx.clone(),
        settings.max_connections,
    ));
    let (accept_stop_tx, accept_stop_rx) = tokio::sync::watch::channel(false);
    let accept_handle = tokio::spawn(accept_streams(
        incoming,
        inbox_tx.clone(),
        settings.clone(),
        accept_stop_rx,
    ));

    // Admin server.
    let admin_listener = tokio::net::TcpListener::bind(settings.admin)
        .await
        .map_err(|why| NodeError::Admin {
            addr: settings.admin,
            why,
        })?;
    let admin_addr: SocketAddr = admin_listener
        .local_addr()
        .map_err(|why| NodeError::Admin {
            addr: settings.admin,
            why,
        })?;
    let (admin_stop_tx, admin_stop_rx) = oneshot::channel::<()>();
    let token = if settings.admin_token {
        Some(crate::identity::load_or_create_token(
            &settings.data_dir.join(ADMIN_TOKEN_FILE),
        )?)
    } else {
        None
    };
    let (command_tx, command_rx) = mpsc::channel::<Command>(COMMANDS);
    let admin_handle = tokio::spawn(crate::admin::serve(
        admin_listener,
        command_tx,
        metrics.clone(),
        token,
        async {
            let _ = admin_stop_rx.await;
        },
    ));

    // The edge listens before the node says it is ready.
    let edge = match settings.role {
        dht::Role::Edge => Some(edge_setup::start(&settings, inbox_tx.clone()).await?),
        _ => None,
    };
    let (c2s_stop_tx, c2s_stop_rx) = tokio::sync::watch::channel(false);
    let c2s = if settings.c2s.listen.is_some() || settings.c2s.tls_listen.is_some() {
        Some(c2s_setup::start(&settings, inbox_tx.clone(), c2s_stop_rx).await?)
    } else {
        None
    };
    let ready = Ready {
        node_id: me_id.to_hex(),
        peer_id: peer_id.to_string(),
        listen: vec![format!("{first_addr}/p2p/{peer_id}")],
        admin: admin_addr.to_string(),
        c2s: c2s.as_ref().and_then(|c| c.addr).map(|a| a.to_string()),
        c2s_tls: c2s.as_ref().and_then(|c| c.tls_addr).map(|a| a.to_string()),
        pid: std::process::id(),
        role: settings.role.to_string(),
    };
    // Plain strings and numbers: serialising cannot fail.
    let ready_json = serde_json::to_string_pretty(&ready).unwrap_or_default();
    let ready_path = settings.data_dir.join(READY_FILE);
    std::fs::write(&ready_path, ready_json).map_err(|e| NodeError::write(&ready_path, e))?;
    on_ready(&ready);

    let backend = crate::records::RedbBackend::open(&settings.data_dir.join(RECORDS_FILE))?;
    let records = crate::records::Replicator::new(
        crate::records::Config {
            replicas: settings.records.replicas,
            sweep_every: settings.records.sweep_every,
            ..Default::default()
        },
        me.id,
        backend,
        settings.records.limits,
        Instant::now(),
    )?;
    let core = core::Core::new(
        settings.clone(),
        me,
        first_addr,
        control,
        inbox_tx.clone(),
        swarm_tx,
        edge,
        records,
        c2s.as_ref().map(|c| c.stats.clone()),
        Instant::now(),
    );
    drop(inbox_tx);
    core.run(inbox_rx, command_rx, shutdown).await;

    // Everything stops on its own, in order: no more inbound streams, no
    // more admin requests; the swarm task ends once the core (the last
    // holder of its command channel) is gone.
    let _ = accept_stop_tx.send(true);
    let _ = accept_handle.await;
    let _ = c2s_stop_tx.send(true);
    if let Some(c) = c2s {
        let _ = c.task.await;
    }
    let _ = admin_stop_tx.send(());
    let _ = admin_handle.await;
    if tokio::time::timeout(SHUTDOWN_GRACE, swarm_handle)
        .await
        .is_err()
    {
        tracing::warn!("the swarm task did not stop within {SHUTDOWN_GRACE:?}");
    }
    let _ = std::fs::remove_file(settings.data_dir.join(READY_FILE));
    Ok(())
}

/// Accepts inbound ring streams and starts a reader for each.
async fn accept_streams(
    mut incoming: libp2p_stream::IncomingStreams,
    inbox: mpsc::Sender<Input>,
    settings: Arc<NodeSettings>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let next = tokio::select! {
            next = incoming.next() => next,
            _ = stop.changed() => return,
        };
        let Some((peer, stream)) = next else {
            return;
        };
        let inbox = inbox.clone();
        let settings = settings.clone();
        tokio::spawn(async move {
            let allowed = |p: &PeerId| {
                settings
                    .allow_peers
                    .as_ref()
                    .is_none_or(|list| list.contains(p))
            };
            match links::read_stream(peer, stream, inbox.clone(), allowed).await {
                Ok(()) => {}
                Err(links::StreamError::Io(e)) => tracing::debug!(%peer, "ring stream ended: {e}"),
                Err(e) => {
                    tracing::warn!(%peer, "closing ring stream: {e}");
                    let _ = inbox.send(Input::Net(NetEvent::BadStream)).await;
                }
            }
        });
    }
}
