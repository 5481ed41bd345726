//! The core's side of client sessions (see docs/architecture.md, "Clients
//! (c2s)"): every decision is `ring_c2s::session_host`'s; this file feeds
//! it what arrives (the c2s listener's events, leases, presence from
//! access nodes, stanzas for users, load completions, timers), lends it the
//! record store ([`CoreRecords`]), and carries out its outputs: session
//! handles, envelopes, the stanza path, the services.
//!
//! Every node keeps a host, whether it listens for clients or not: it is
//! the home node of the users whose bare JIDs' keys it is responsible for.
//! Account lookups and writes for the listener are answered here too
//! (they are record requests with a reply).

use super::Core;
use crate::api::RecordReport;
use crate::records::{RecordOp, RedbBackend, Replicator};
use bytes::Bytes;
use dht::{EnvelopeKind, RingNode};
use ring_c2s::Account;
use ring_c2s::negotiation::Lookup;
use ring_c2s::roster;
use ring_c2s::server::{C2sEvent, C2sStats, Session};
use ring_c2s::session_host::{HomeRecords, HostOutput, SessionHost};
use ring_records::LocalWrite;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

use crate::addr::PeerAddr;
use crate::xmpp::{SERVICE_C2S_DELIVER, SERVICE_C2S_LEASE, SERVICE_C2S_OUTBOUND, stanza};

/// The node's client sessions: the host's decisions and the connections'
/// handles.
pub(crate) struct Clients {
    host: SessionHost,
    handles: HashMap<u64, Session>,
    /// The listener's counters, when this node listens for clients.
    stats: Option<Arc<C2sStats>>,
}

impl Clients {
    pub(crate) fn new(host: SessionHost, stats: Option<Arc<C2sStats>>) -> Self {
        Clients {
            host,
            handles: HashMap::new(),
            stats,
        }
    }

    /// Refreshes the c2s metrics.
    pub(crate) fn export_metrics(&self) {
        if let Some(s) = &self.stats {
            crate::metrics::export_c2s(s, self.handles.len(), self.host.sessions());
        }
    }

    /// When the host's timers are due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.host.poll_timeout()
    }
}

/// The token of the home node's own writes (offline queues, rosters,
/// presence): nothing waits for their confirmation (the services host's
/// batch tokens count up from 0).
const LOCAL_WRITE: u64 = u64::MAX - 1;

/// The record store and the ring, as the session host sees them.
struct CoreRecords<'a> {
    records: &'a mut Replicator<RedbBackend>,
    node: &'a RingNode<PeerAddr>,
    replicas: usize,
}

impl HomeRecords for CoreRecords<'_> {
    fn local(&self, name: &str) -> Option<Vec<u8>> {
        match self.records.store().get(name) {
            Ok(Some(r)) if !r.deleted => Some(r.value),
            _ => None,
        }
    }

    fn write(&mut self, now: Instant, op: RecordOp) -> Result<(), String> {
        match self.records.write_local(now, self.node, &op, LOCAL_WRITE) {
            LocalWrite::Waiting | LocalWrite::Done => Ok(()),
            LocalWrite::Refused(why) => Err(why),
        }
    }

    fn load(&mut self, now: Instant, names: &[String], token: u64) -> bool {
        self.records.load(now, self.node, names, token)
    }

    fn batch(&self, prefix: &str, cursor: &mut Option<String>, n: usize) -> Vec<String> {
        self.records.store().prefixed_batch(prefix, cursor, n)
    }

    fn is_home_of(&self, name: &str) -> bool {
        use ring_records::Ring;
        self.node
            .replica_set(&ring_records::key_of(name), self.replicas)
            .first()
            == Some(&self.node.id())
    }

    fn unix_now(&self) -> u64 {
        super::services::unix_now()
    }
}

impl Core {
    /// The session host and the record store lent to it (disjoint parts
    /// of the core).
    fn host_and_records(&mut self) -> (&mut SessionHost, CoreRecords<'_>) {
        let records = CoreRecords {
            records: &mut self.records,
            node: &self.node,
            replicas: self.settings.records.replicas,
        };
        (&mut self.clients.host, records)
    }

    /// The session host of a node with these settings.
    pub(super) fn new_session_host(
        settings: &crate::config::NodeSettings,
        me: dht::NodeId,
        now: Instant,
    ) -> SessionHost {
        SessionHost::new(
            me,
            settings.domains.clone(),
            settings.c2s.max_resources,
            settings.c2s.max_offline,
            now,
        )
    }

    /// A request or stanza from the c2s listener.
    pub(super) fn on_c2s_event(&mut self, now: Instant, ev: C2sEvent) {
        match ev {
            C2sEvent::LookupAccount { user, reply } => {
                let (tx, rx) = oneshot::channel::<RecordReport>();
                let op = RecordOp::Get {
                    name: Account::record_name(&user),
                };
                self.record_request(now, op, false, tx);
                // The record store answers with a report; the connection
                // wants an account, none, or "could not tell" (unreachable
                // or corrupt: nobody logs in with it or registers over it).
                tokio::spawn(async move {
                    let lookup = match rx.await {
                        Ok(r) if r.error.is_none() && !r.found => Lookup::NotFound,
                        Ok(r) if r.error.is_none() => r
                            .value
                            .and_then(|v| Account::decode(v.as_bytes()).ok())
                            .map_or(Lookup::Unavailable, Lookup::Found),
                        _ => Lookup::Unavailable,
                    };
                    let _ = reply.send(lookup);
                });
            }
            C2sEvent::WriteAccount {
                user,
                account,
                create,
                reply,
            } => {
                let name = Account::record_name(&user);
                let op = match account {
                    Some(a) if create => RecordOp::Create {
                        name,
                        value: a.encode(),
                    },
                    Some(a) => RecordOp::Put {
                        name,
                        value: a.encode(),
                    },
                    None => {
                        // XEP-0077 §3.2: the account's data goes with it
                        // (nobody waits for these; the account's deletion
                        // is what the client is answered about).
                        for other in [
                            roster::Roster::record_name(user.as_str()),
                            ring_c2s::offline::OfflineQueue::record_name(user.as_str()),
                        ] {
                            let (tx, _) = oneshot::channel::<RecordReport>();
                            self.record_request(now, RecordOp::Delete { name: other }, false, tx);
                        }
                        RecordOp::Delete { name }
                    }
                };
                let (tx, rx) = oneshot::channel::<RecordReport>();
                self.record_request(now, op, false, tx);
                tokio::spawn(async move {
                    let r = match rx.await {
                        // A creation that found the account: the name is
                        // taken (written ones report their replicas).
                        Ok(r) if create && r.ok && r.replicas.is_none() => {
                            Err(DefinedCondition::Conflict)
                        }
                        Ok(r) if r.ok && r.error.is_none() => Ok(()),
                        Ok(r) => {
                            tracing::warn!(%user, error = ?r.error, "account write failed");
                            Err(DefinedCondition::ResourceConstraint)
                        }
                        Err(_) => Err(DefinedCondition::InternalServerError),
                    };
                    let _ = reply.send(r);
                });
            }
            C2sEvent::Bind {
                full,
                session,
                reply,
            } => {
                match self.clients.host.handle_bind(&full, session.id) {
                    Ok(replaced) => {
                        if let Some(old) = replaced.and_then(|id| self.clients.handles.remove(&id))
                        {
                            old.replace();
                        }
                        self.clients.handles.insert(session.id, session);
                        let _ = reply.send(Ok(full));
                    }
                    Err(cond) => {
                        let _ = reply.send(Err(cond));
                    }
                }
                self.drain_clients(now);
            }
            C2sEvent::Stanza(st) => {
                self.clients.host.handle_client_stanza(st);
                self.drain_clients(now);
            }
            C2sEvent::Closed { full, id } => {
                if self.clients.host.handle_closed(&full, id) {
                    self.clients.handles.remove(&id);
                }
                self.drain_clients(now);
            }
        }
    }

    /// Renews leases, expires others', sweeps stored presence.
    pub(super) fn on_c2s_timers(&mut self, now: Instant) {
        let (host, mut records) = self.host_and_records();
        host.handle_timeout(now, &mut records);
        self.drain_clients(now);
    }

    /// A lease from access node `from`.
    pub(super) fn on_lease(&mut self, now: Instant, from: dht::NodeId, payload: &[u8]) {
        let (host, mut records) = self.host_and_records();
        host.handle_lease(now, from, payload, &mut records);
        self.drain_clients(now);
    }

    /// A presence one of this node's users sent, for the home node to
    /// process first.
    pub(super) fn on_outbound(&mut self, now: Instant, payload: &[u8]) {
        let (host, mut records) = self.host_and_records();
        host.handle_outbound(now, payload, &mut records);
        self.drain_clients(now);
    }

    /// A stanza a home node forwarded to one of this node's sessions.
    pub(super) fn on_forwarded(&mut self, now: Instant, key: dht::Key, payload: &[u8]) {
        self.clients.host.handle_forwarded(key, payload);
        self.drain_clients(now);
    }

    /// A stanza for a ring JID this node is responsible for: a user's, or
    /// (the host says so) the services'.
    pub(super) fn serve(&mut self, now: Instant, st: Element) {
        let (host, mut records) = self.host_and_records();
        host.handle_stanza(now, st, &mut records);
        self.drain_clients(now);
    }

    /// The replicator finished load `token`; false when it was not the
    /// session host's.
    pub(super) fn user_load_done(&mut self, now: Instant, token: u64) -> bool {
        let (host, mut records) = self.host_and_records();
        let ours = host.handle_load_done(now, token, &mut records);
        self.drain_clients(now);
        ours
    }

    /// The session of this node a stanza's full-JID `to` names.
    pub(super) fn local_target(&self, st: &Element) -> Option<u64> {
        self.clients.host.local_target(st)
    }

    /// A stanza from the edge for a session of this very node.
    pub(super) fn hand_to_local(&mut self, id: u64, st: Element) {
        self.hand_to_session(id, st);
        self.drain_clients(Instant::now());
    }

    /// Gives `st` to session `id`; a session gone or not reading is
    /// answered for.
    fn hand_to_session(&mut self, id: u64, st: Element) {
        let refused = match self.clients.handles.get(&id) {
            Some(h) => h.deliver(st).err(),
            None => Some(st),
        };
        if let Some(st) = refused {
            self.clients
                .host
                .handle_refused(&st, DefinedCondition::RecipientUnavailable);
        }
    }

    /// Carries out what the session host asked for.
    fn drain_clients(&mut self, now: Instant) {
        while let Some(out) = self.clients.host.poll_output() {
            match out {
                HostOutput::ToSession { id, stanza } => self.hand_to_session(id, stanza),
                HostOutput::ToAccessNode { node, stanza: st } => {
                    if let Err(e) = self.node.route(
                        now,
                        node,
                        EnvelopeKind::Service(SERVICE_C2S_DELIVER),
                        stanza::to_bytes(&st),
                        false,
                    ) {
                        tracing::debug!("cannot forward to an access node: {e}");
                        self.clients
                            .host
                            .handle_refused(&st, DefinedCondition::RecipientUnavailable);
                    }
                }
                HostOutput::Send(st) => self.send_stanza(st),
                HostOutput::Services(st) => self.run_services(now, st),
                HostOutput::Lease { key, payload } => {
                    if let Err(e) = self.node.route(
                        now,
                        key,
                        EnvelopeKind::Service(SERVICE_C2S_LEASE),
                        Bytes::from(payload),
                        false,
                    ) {
                        tracing::debug!("cannot send a session lease: {e}");
                    }
                }
                HostOutput::Outbound { key, payload } => {
                    if let Err(e) = self.node.route(
                        now,
                        key,
                        EnvelopeKind::Service(SERVICE_C2S_OUTBOUND),
                        Bytes::from(payload),
                        false,
                    ) {
                        tracing::debug!("cannot send a presence to its home node: {e}");
                    }
                }
            }
        }
    }
}
