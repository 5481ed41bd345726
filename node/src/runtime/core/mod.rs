//! The core task: the only owner of the ring-node state machine.
//!
//! Each turn of its loop takes one input (or a timer), then drains whatever
//! else is already waiting in the inbox (up to a bound) before polling the
//! state machine's outputs. Draining first is what batches acks and
//! receipts: a burst of envelopes from one neighbour costs one ack, and the
//! transmits of a turn are framed into one buffer per neighbour and handed
//! to its writer as a single write.

mod c2s;
mod records;
mod services;
mod stanzas;

use super::links::{self, push_frame};
use super::load::LoadRun;
use super::{Command, Input, NetEvent, SHUTDOWN_GRACE, SwarmCmd};
use crate::addr::{PeerAddr, is_valid_contact, node_id};
use crate::api::{BucketReport, Counters, StatusReport, TraceHopReport, TraceReport};
use crate::config::NodeSettings;
use crate::metrics;
use bytes::Bytes;
use dht::node::Event;
use dht::wire::{Frame, Message};
use dht::{Contact, EnvelopeKind, Key, NodeId, RingNode};
use libp2p::{Multiaddr, PeerId};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Inputs handled per turn before outputs are flushed.
const MAX_INPUTS_PER_TURN: usize = 256;
/// After a failed stream to a peer, transmits to it fail at once for this
/// long instead of redialling on every message.
const REDIAL_BACKOFF: Duration = Duration::from_secs(2);
/// A failed join is retried after this long.
const REJOIN_AFTER: Duration = Duration::from_secs(3);
/// How long a trace waits for its probe.
const TRACE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after joining an edge announces itself to its contacts.
const ANNOUNCE_AFTER_JOIN: Duration = Duration::from_secs(1);
/// How often metrics are refreshed from the state machine's counters.
const METRICS_EVERY: Duration = Duration::from_secs(1);
/// How long shutdown waits for writers to push out their last bytes.
const WRITERS_GRACE: Duration = Duration::from_secs(2);

struct OutBuf {
    to: Contact<PeerAddr>,
    bytes: Vec<u8>,
}

struct PendingTrace {
    jid: String,
    key: Key,
    sent: Instant,
    reply: oneshot::Sender<TraceReport>,
}

pub(crate) struct Core {
    node: RingNode<PeerAddr>,
    settings: Arc<NodeSettings>,
    peer_id: PeerId,
    hello: Bytes,
    control: libp2p_stream::Control,
    inbox_tx: mpsc::Sender<Input>,
    swarm_tx: mpsc::UnboundedSender<SwarmCmd>,
    writers: HashMap<NodeId, mpsc::UnboundedSender<Bytes>>,
    backoff: HashMap<NodeId, Instant>,
    /// Frames of this turn, one buffer per destination.
    outbufs: HashMap<NodeId, OutBuf>,
    traces: HashMap<u64, PendingTrace>,
    load: Option<LoadRun>,
    started: Instant,
    listen_addrs: Vec<Multiaddr>,
    connected: HashSet<PeerId>,
    net: Counters,
    rejoin_at: Option<Instant>,
    next_metrics: Instant,
    metrics: metrics::Exporter,
    /// This node's s2s edge, when its role is `edge`.
    edge: Option<xmpp_edge::EdgeHandle>,
    /// When an edge tells its contacts about itself (after its join's
    /// bucket refreshes have filled the table).
    announce_at: Option<Instant>,
    /// This node's part of the record store.
    records: crate::records::Replicator<crate::records::RedbBackend>,
    /// Admin requests of the record store waiting for answers.
    record_clients: records::RecordClients,
    /// Cloned into every writer task; shutdown drops it and waits until
    /// every clone is gone.
    writers_running: Option<mpsc::Sender<()>>,
    writers_done: mpsc::Receiver<()>,
    /// Where stanzas go.
    path: crate::xmpp::path::StanzaPath,
    /// The rooms and PubSub nodes this node hosts.
    host: crate::xmpp::host::ServiceHost,
    fanout: services::FanoutCounters,
    /// Client sessions: this node's, and its users' sessions elsewhere.
    clients: c2s::Clients,
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        settings: Arc<NodeSettings>,
        me: Contact<PeerAddr>,
        first_addr: Multiaddr,
        control: libp2p_stream::Control,
        inbox_tx: mpsc::Sender<Input>,
        swarm_tx: mpsc::UnboundedSender<SwarmCmd>,
        edge: Option<xmpp_edge::EdgeHandle>,
        records: crate::records::Replicator<crate::records::RedbBackend>,
        c2s_stats: Option<Arc<ring_c2s::server::C2sStats>>,
        now: Instant,
    ) -> Self {
        let unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let seed = me.id.prefix_u64() ^ unix_us;
        let peer_id = me.addr.peer_id().unwrap_or(PeerId::random());
        let base = records.store().counter_base();
        let host = services::new_host(&settings, me.id.to_hex(), seed, base, now);
        let (writers_running, writers_done) = mpsc::channel(1);
        let session_host = Core::new_session_host(&settings, me.id, now);
        let path = stanzas::new_path(&settings, me.id, edge.is_some());
        let node = RingNode::new(settings.dht.clone(), me, seed, now, unix_us);
        let mut core = Core {
            node,
            settings,
            peer_id,
            hello: Bytes::new(),
            control,
            inbox_tx,
            swarm_tx,
            writers: HashMap::new(),
            backoff: HashMap::new(),
            outbufs: HashMap::new(),
            traces: HashMap::new(),
            load: None,
            started: now,
            listen_addrs: vec![first_addr],
            connected: HashSet::new(),
            net: Counters::default(),
            rejoin_at: None,
            next_metrics: now,
            metrics: metrics::Exporter::default(),
            edge,
            announce_at: None,
            records,
            record_clients: Default::default(),
            writers_running: Some(writers_running),
            writers_done,
            path,
            host,
            fanout: Default::default(),
            clients: c2s::Clients::new(session_host, c2s_stats),
        };
        core.rebuild_hello();
        core
    }

    fn rebuild_hello(&mut self) {
        let mut buf = Vec::new();
        if push_frame(&mut buf, &Frame::Hello(self.node.contact().clone())).is_ok() {
            self.hello = Bytes::from(buf);
        }
    }

    fn bootstrap_contacts(&self) -> Vec<Contact<PeerAddr>> {
        self.settings
            .bootstrap
            .iter()
            .filter(|(p, _)| *p != self.peer_id)
            .map(|(peer, addr)| {
                Contact::new(
                    node_id(peer),
                    PeerAddr::new(peer, std::slice::from_ref(addr), None),
                    dht::Role::Application,
                )
            })
            .collect()
    }

    pub(crate) async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Input>,
        mut commands: mpsc::Receiver<Command>,
        shutdown: impl Future<Output = ()>,
    ) {
        let now = Instant::now();
        let boot = self.bootstrap_contacts();
        self.node.join(now, boot);
        self.flush(now);
        tokio::pin!(shutdown);
        let far = Duration::from_secs(3600);
        loop {
            let deadline = self.next_deadline().unwrap_or(Instant::now() + far);
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                input = inbox.recv() => {
                    let Some(input) = input else { break };
                    let now = Instant::now();
                    self.handle(now, input);
                    for _ in 1..MAX_INPUTS_PER_TURN {
                        match inbox.try_recv() {
                            Ok(more) => self.handle(now, more),
                            Err(_) => break,
                        }
                    }
                }
                Some(cmd) = commands.recv() => self.on_command(Instant::now(), cmd),
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            let now = Instant::now();
            self.on_timers(now);
            self.flush(now);
        }
        self.graceful_shutdown(&mut inbox).await;
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.node.poll_timeout(),
            self.rejoin_at,
            self.announce_at,
            Some(self.next_metrics),
            self.traces.values().map(|t| t.sent + TRACE_TIMEOUT).min(),
            self.records.poll_timeout(),
            self.host.poll_timeout(),
            self.clients.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_timers(&mut self, now: Instant) {
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now);
        }
        if self.announce_at.is_some_and(|t| t <= now) {
            self.announce_at = None;
            self.node.announce(now);
        }
        if self.rejoin_at.is_some_and(|t| t <= now) {
            self.rejoin_at = None;
            let boot = self.bootstrap_contacts();
            self.node.join(now, boot);
        }
        let expired: Vec<u64> = self
            .traces
            .iter()
            .filter(|(_, t)| now >= t.sent + TRACE_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(t) = self.traces.remove(&id) {
                let _ = t.reply.send(failed_trace(
                    &t.jid,
                    &t.key,
                    "no answer within 10 s",
                    now - t.sent,
                ));
            }
        }
        self.on_record_timers(now);
        self.on_service_timers(now);
        self.on_c2s_timers(now);
        if now >= self.next_metrics {
            self.next_metrics = now + METRICS_EVERY;
            if let Some(e) = &self.edge {
                metrics::export_edge(&edge_report(e.local_addr(), e.stats()));
            }
            self.clients.export_metrics();
            self.metrics.update(
                &self.node,
                &self.records_report(),
                &self.services_report(),
                &self.net,
                self.connected.len(),
                self.inbox_tx.max_capacity() - self.inbox_tx.capacity(),
            );
        }
    }

    fn allowed(&self, peer: Option<PeerId>) -> bool {
        match (&self.settings.allow_peers, peer) {
            (None, _) => true,
            (Some(list), Some(p)) => list.contains(&p),
            (Some(_), None) => false,
        }
    }

    fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Frames { from, msgs } => {
                for msg in msgs {
                    let msg = match msg {
                        // Never let hearsay contacts in unchecked.
                        Message::Nodes { req, contacts } => Message::Nodes {
                            req,
                            contacts: contacts
                                .into_iter()
                                .filter(|c| is_valid_contact(c) && self.allowed(c.addr.peer_id()))
                                .collect(),
                        },
                        m => m,
                    };
                    self.node.handle_message(now, from.clone(), msg);
                }
            }
            Input::WriterDown { peer, node } => {
                self.writers.remove(&node);
                self.backoff.insert(node, now + REDIAL_BACKOFF);
                self.node.handle_link_down(now, node);
                tracing::debug!(%peer, "writer down");
            }
            Input::Net(ev) => self.on_net(now, ev),
            Input::Edge(ev) => self.on_edge_event(ev),
            Input::C2s(ev) => self.on_c2s_event(now, ev),
        }
    }

    fn on_net(&mut self, now: Instant, ev: NetEvent) {
        match ev {
            NetEvent::Connected(p) => {
                self.connected.insert(p);
            }
            NetEvent::Disconnected(p) => {
                self.connected.remove(&p);
                let id = node_id(&p);
                if self.writers.remove(&id).is_some() {
                    self.node.handle_link_down(now, id);
                }
            }
            NetEvent::RefusedIncoming => self.net.refused_incoming += 1,
            NetEvent::FailedOutgoing => self.net.failed_outgoing += 1,
            NetEvent::BadStream => self.net.bad_streams += 1,
            NetEvent::ListenAddr(a) => {
                if !self.listen_addrs.contains(&a) {
                    self.listen_addrs.push(a);
                    let me = self.node.contact();
                    let addr = PeerAddr::new(
                        &self.peer_id,
                        &self.listen_addrs,
                        me.addr.s2s().map(str::to_string),
                    );
                    self.node.set_address(addr);
                    self.rebuild_hello();
                }
            }
        }
    }

    fn on_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(self.status(now));
            }
            Command::Trace { jid, reply } => match dht::keys::jid_key(&jid) {
                Err(e) => {
                    let _ = reply.send(failed_trace(
                        &jid,
                        &Key::ZERO,
                        &e.to_string(),
                        Duration::ZERO,
                    ));
                }
                Ok(key) => match self.node.probe(now, key) {
                    Ok(id) => {
                        self.traces.insert(
                            id,
                            PendingTrace {
                                jid,
                                key,
                                sent: now,
                                reply,
                            },
                        );
                    }
                    Err(e) => {
                        let _ =
                            reply.send(failed_trace(&jid, &key, &e.to_string(), Duration::ZERO));
                    }
                },
            },
            Command::Load { spec, reply } => {
                if self.load.is_some() {
                    let _ = reply.send(Err("a load run is already in progress".into()));
                    return;
                }
                let mut run = LoadRun::new(&spec, reply, now);
                run.pump(&mut self.node, now);
                self.load = Some(run);
            }
            Command::Record { op, local, reply } => self.record_request(now, op, local, reply),
            Command::ListRecords {
                prefix,
                after,
                limit,
                reply,
            } => {
                let page = self.records.store().list(&prefix, after.as_deref(), limit);
                let _ = reply.send(match page {
                    Ok((names, next)) => crate::api::RecordList {
                        names,
                        next,
                        error: None,
                    },
                    Err(e) => crate::api::RecordList {
                        error: Some(e.to_string()),
                        ..Default::default()
                    },
                });
            }
            Command::Send { stanza, reply } => {
                let from_ours = stanza
                    .attr("from")
                    .is_some_and(|f| self.settings.served.serves_jid(f));
                if !from_ours {
                    let _ =
                        reply.send(Err("from must be a JID of one of the ring's domains".into()));
                    return;
                }
                self.send_stanza(stanza);
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Hands the state machine's outputs to the network and the admin side.
    fn flush(&mut self, now: Instant) {
        loop {
            while let Some(ev) = self.node.poll_event() {
                self.on_event(now, ev);
            }
            let records_asked = self.drain_records(now);
            let path_moved = self.drain_path(now);
            // The services' outputs of the turn, after their state is
            // stored (see `end_service_turn`).
            let services_sent = self.end_service_turn(now);
            if let Some(load) = self.load.as_mut() {
                load.pump(&mut self.node, now);
                if load.finish_if_done(now) {
                    self.load = None;
                }
            }
            let mut any = false;
            while let Some(t) = self.node.poll_transmit(now) {
                any = true;
                let id = t.to.id;
                let out = self.outbufs.entry(id).or_insert_with(|| OutBuf {
                    to: t.to.clone(),
                    bytes: Vec::new(),
                });
                // Cannot fail for envelopes `route` accepted (their payload
                // is bounded well below the frame limit); if it ever does,
                // the missing ack makes the state machine reroute or bounce.
                if let Err(e) = push_frame(&mut out.bytes, &Frame::Msg(t.msg)) {
                    tracing::error!("cannot encode a frame: {e}");
                }
            }
            // Events may have produced transmits and transmits events.
            if !any && !services_sent && !records_asked && !path_moved {
                break;
            }
        }
        let bufs: Vec<(NodeId, OutBuf)> = self.outbufs.drain().collect();
        for (id, out) in bufs {
            if !out.bytes.is_empty() {
                self.send_to(now, id, out.to, Bytes::from(out.bytes));
            }
        }
        // Link failures reported during sending produce more work.
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now);
        }
    }

    fn send_to(&mut self, now: Instant, id: NodeId, contact: Contact<PeerAddr>, bytes: Bytes) {
        if let Some(tx) = self.writers.get(&id) {
            if tx.send(bytes.clone()).is_ok() {
                return;
            }
            self.writers.remove(&id);
        }
        if self.backoff.get(&id).is_some_and(|t| *t > now) {
            self.node.handle_link_down(now, id);
            return;
        }
        self.backoff.remove(&id);
        let Some(peer) = contact.addr.peer_id() else {
            self.node.handle_link_down(now, id);
            return;
        };
        let _ = self
            .swarm_tx
            .send(SwarmCmd::AddAddrs(peer, contact.addr.multiaddrs()));
        let Some(running) = self.writers_running.clone() else {
            // Shutting down: no new streams.
            self.node.handle_link_down(now, id);
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(bytes);
        self.writers.insert(id, tx);
        tokio::spawn(links::write_stream(
            self.control.clone(),
            peer,
            id,
            self.hello.clone(),
            rx,
            self.inbox_tx.clone(),
            running,
        ));
    }

    fn on_event(&mut self, now: Instant, ev: Event<PeerAddr>) {
        match ev {
            Event::Delivered(env) if env.kind == EnvelopeKind::Record => {
                self.on_record_envelope(now, &env)
            }
            Event::Delivered(env) => self.on_delivered_stanza(now, &env),
            Event::Receipt { id } => {
                if let Some(l) = self.load.as_mut() {
                    l.on_delivered(id, None);
                }
            }
            Event::ProbeDone { id, key, path } => {
                if let Some(t) = self.traces.remove(&id) {
                    let _ = t
                        .reply
                        .send(trace_report(&t.jid, &key, &path, now - t.sent));
                } else if let Some(l) = self.load.as_mut() {
                    l.on_delivered(id, Some(path.len().saturating_sub(1)));
                }
            }
            Event::Bounced { reason, envelope } => {
                if let Some(t) = self.traces.remove(&envelope.id) {
                    let _ = t.reply.send(failed_trace(
                        &t.jid,
                        &t.key,
                        reason.xmpp_condition(),
                        now - t.sent,
                    ));
                    return;
                }
                let from_load = self
                    .load
                    .as_mut()
                    .is_some_and(|l| l.on_bounced(envelope.id, reason));
                if from_load {
                    return;
                }
                if envelope.kind == EnvelopeKind::Record {
                    self.on_record_bounced(reason, &envelope);
                } else {
                    self.on_bounced_stanza(reason, &envelope);
                }
            }
            Event::Joined { contacts } => {
                tracing::info!(contacts, "joined the ring");
                if self.edge.is_some() {
                    self.announce_at = Some(now + ANNOUNCE_AFTER_JOIN);
                }
            }
            Event::JoinFailed => {
                if !self.settings.bootstrap.is_empty() {
                    tracing::warn!("no bootstrap peer answered; retrying in {REJOIN_AFTER:?}");
                    self.rejoin_at = Some(now + REJOIN_AFTER);
                }
            }
            Event::ContactAdded(_) => {}
            Event::ContactFailed(_) => self.records.handle_membership(now),
        }
    }

    fn status(&self, now: Instant) -> StatusReport {
        let me = self.node.contact();
        let t = self.node.table();
        StatusReport {
            node_id: me.id.to_hex(),
            peer_id: self.peer_id.to_string(),
            addresses: self
                .listen_addrs
                .iter()
                .map(|a| format!("{a}/p2p/{}", self.peer_id))
                .collect(),
            role: me.role.to_string(),
            domains: self.settings.domains.clone(),
            s2s_listen: self.settings.s2s_listen.map(|a| a.to_string()),
            joined: self.node.is_joined(),
            table_size: t.len(),
            buckets: t
                .bucket_sizes()
                .into_iter()
                .map(|(row, col, size)| BucketReport { row, col, size })
                .collect(),
            connected_peers: self.connected.len(),
            pending: self.node.pending(),
            outstanding: self.node.outstanding(),
            uptime_s: now.saturating_duration_since(self.started).as_secs_f64(),
            counters: metrics::counters(self.node.stats(), &self.net),
            edge: self
                .edge
                .as_ref()
                .map(|e| edge_report(e.local_addr(), e.stats())),
            edges_known: self.known_edges().len(),
            records: self.records_report(),
            services: self.services_report(),
        }
    }

    /// Stops gracefully: goodbyes, a grace period for in-flight envelopes,
    /// bounces for the rest.
    async fn graceful_shutdown(&mut self, inbox: &mut mpsc::Receiver<Input>) {
        let now = Instant::now();
        // The federation first: no new stanzas in; what waits to go out
        // bounces to its senders while the ring can still carry errors.
        if let Some(edge) = &self.edge {
            edge.stop();
        }
        tracing::info!(pending = self.node.pending(), "leaving the ring");
        self.node.leave(now);
        self.flush(now);
        let end = now + SHUTDOWN_GRACE;
        while !self.node.is_drained() && Instant::now() < end {
            match tokio::time::timeout_at(end.into(), inbox.recv()).await {
                Ok(Some(input)) => {
                    // Only acks and link events matter now; admin commands
                    // are no longer read (their callers get an error).
                    let now = Instant::now();
                    self.handle(now, input);
                    self.flush(now);
                }
                _ => break,
            }
        }
        if let Some(edge) = self.edge.clone() {
            edge.shutdown(Duration::from_secs(1)).await;
        }
        let now = Instant::now();
        self.node.abandon_pending(now);
        self.flush(now);
        // Writers push out their last bytes and close their streams once
        // their queues close; wait for the last of them (bounded: a peer
        // that does not read cannot hold the shutdown).
        self.writers.clear();
        self.writers_running = None;
        let last = tokio::time::timeout(WRITERS_GRACE, self.writers_done.recv()).await;
        if last.is_err() {
            tracing::warn!("writers still busy after {WRITERS_GRACE:?}; leaving them");
        }
    }
}

fn edge_report(listen: std::net::SocketAddr, s: &xmpp_edge::EdgeStats) -> crate::api::EdgeReport {
    use std::sync::atomic::Ordering::Relaxed;
    crate::api::EdgeReport {
        listen: listen.to_string(),
        inbound_connections: s.inbound_connections.load(Relaxed),
        inbound_open: s.inbound_open.load(Relaxed),
        inbound_refused: s.inbound_refused.load(Relaxed),
        inbound_refused_per_ip: s.inbound_refused_per_ip.load(Relaxed),
        inbound_refused_rate: s.inbound_refused_rate.load(Relaxed),
        auth_timeouts: s.auth_timeouts.load(Relaxed),
        stanzas_in: s.stanzas_in.load(Relaxed),
        stanzas_out: s.stanzas_out.load(Relaxed),
        stanzas_bounced: s.stanzas_bounced.load(Relaxed),
        dialback_ok: s.dialback_ok.load(Relaxed),
        dialback_failed: s.dialback_failed.load(Relaxed),
        verifications_refused: s.verifications_refused.load(Relaxed),
        verifications_open: s.verifications_open.load(Relaxed),
        sasl_external_ok: s.sasl_external_ok.load(Relaxed),
        outbound_streams: s.outbound_streams.load(Relaxed),
        outbound_open: s.outbound_open.load(Relaxed),
        certificates_refused: s.certificates_refused.load(Relaxed),
        write_timeouts: s.write_timeouts.load(Relaxed),
        verify_valid: s.verify_valid.load(Relaxed),
        verify_invalid: s.verify_invalid.load(Relaxed),
        stream_errors: s
            .stream_errors
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.to_string(), *v)).collect())
            .unwrap_or_default(),
    }
}

fn trace_report(jid: &str, key: &Key, path: &[dht::TraceHop], rtt: Duration) -> TraceReport {
    let hops = path.len().saturating_sub(1);
    let mut prev = path.first().map(|h| h.at_us).unwrap_or(0);
    let path_report = path
        .iter()
        .map(|h| {
            let lat = h.at_us.saturating_sub(prev);
            prev = h.at_us;
            TraceHopReport {
                node: h.node.to_hex(),
                latency_us: lat,
            }
        })
        .collect();
    TraceReport {
        jid: jid.to_string(),
        key: key.to_hex(),
        responsible: path.last().map(|h| h.node.to_hex()),
        hops,
        path: path_report,
        ok: true,
        error: None,
        rtt_us: rtt.as_micros() as u64,
    }
}

fn failed_trace(jid: &str, key: &Key, why: &str, rtt: Duration) -> TraceReport {
    TraceReport {
        jid: jid.to_string(),
        key: key.to_hex(),
        responsible: None,
        hops: 0,
        path: Vec::new(),
        ok: false,
        error: Some(why.to_string()),
        rtt_us: rtt.as_micros() as u64,
    }
}
