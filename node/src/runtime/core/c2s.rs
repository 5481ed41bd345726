//! The core's side of client sessions (see docs/architecture.md, "Clients
//! (c2s)"): it answers the c2s listener's requests (account lookups in the
//! record store, binds), keeps the node's [`SessionTable`] and a handle per
//! session, and carries out what the table decides. Protocol decisions are
//! `ring-c2s`'s.
//!
//! Every node keeps a table, whether it listens for clients or not: it is
//! the home node of the users whose bare JIDs' keys it is responsible for,
//! and their access nodes lease their sessions to it
//! (`SERVICE_C2S_LEASE` envelopes, renewed every [`LEASE_RENEW`]). A
//! stanza for a user reaches the home node by the stanza path like any
//! stanza for a ring JID; the home node applies RFC 6121's rules and hands
//! each copy to its own session or to the session's access node
//! (`SERVICE_C2S_DELIVER` envelopes keyed to that node's id). A stanza for
//! a full JID whose session is on the node where it arrives skips the
//! trip. Users without any session are answered by the services as before
//! (unknown users: `service-unavailable`).

use super::Core;
use crate::api::RecordReport;
use crate::records::RecordOp;
pub(super) use crate::xmpp::stanza::set as set_attr;
use bytes::Bytes;
use dht::{EnvelopeKind, Key, NodeId};
use jid::{FullJid, Jid};
use ring_c2s::Account;
use ring_c2s::directed::DirectedPresence;
use ring_c2s::lease::{LEASE_RENEW, LEASE_TTL, Lease, Outbound};
use ring_c2s::loads::UserLoads;
use ring_c2s::negotiation::Lookup;
use ring_c2s::roster;
use ring_c2s::server::{C2sEvent, C2sStats, Session};
use ring_c2s::sessions::{Delivery, Place, SessionTable};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

use crate::xmpp::{SERVICE_C2S_DELIVER, SERVICE_C2S_LEASE, SERVICE_C2S_OUTBOUND, stanza};

/// The node's client sessions and the leases of its users' sessions
/// elsewhere.
pub(crate) struct Clients {
    pub(super) table: SessionTable<NodeId>,
    handles: HashMap<u64, Session>,
    /// The listener's counters, when this node listens for clients.
    stats: Option<Arc<C2sStats>>,
    next_renewal: Instant,
    /// As home node: the last available presence of each session of its
    /// users (answers to probes; its end tells the contacts).
    pub(super) last_presence: ring_c2s::online::LastPresences,
    /// As home node: users whose records (account, roster, offline queue)
    /// this node has made sure to hold, and the work waiting for the
    /// others (see [`Core::user_ready`]).
    pub(super) loads: UserLoads<Pending>,
    /// The sweep over stored `presence:` records: where it is, and since
    /// when each listed session has had no lease here.
    pub(super) presence_cursor: Option<String>,
    pub(super) orphans: ring_c2s::online::OrphanSweep,
    /// As access node: where each session sent directed presence (RFC
    /// 6121 §4.6), told when the session goes unavailable or ends (a MUC
    /// room, typically: a client that drops is not left as an occupant).
    directed: DirectedPresence,
}

/// Load tokens of the home node: far above the services host's, which
/// count up from the store's counter base.
pub(super) const LOAD_TOKEN_BASE: u64 = 1 << 63;

/// What waits for a user's records to be here.
pub(super) enum Pending {
    /// A stanza for the user, to serve.
    Serve(Element),
    /// A presence from one of the user's sessions (the envelope payload).
    Outbound(Vec<u8>),
    /// A session became available: its offline messages.
    Flush(FullJid),
}

impl Clients {
    pub(crate) fn new(max_resources: usize, stats: Option<Arc<C2sStats>>, now: Instant) -> Self {
        Clients {
            table: SessionTable::new(max_resources),
            handles: HashMap::new(),
            stats,
            next_renewal: now + LEASE_RENEW,
            last_presence: Default::default(),
            loads: UserLoads::new(LOAD_TOKEN_BASE),
            presence_cursor: None,
            orphans: Default::default(),
            directed: DirectedPresence::default(),
        }
    }

    /// Refreshes the c2s metrics.
    pub(crate) fn export_metrics(&self) {
        if let Some(s) = &self.stats {
            crate::metrics::export_c2s(s, self.handles.len(), self.table.len());
        }
    }

    /// When the next lease renewal is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        (!self.table.is_empty()).then_some(self.next_renewal)
    }
}

/// The token of the home node's own writes (offline queues, rosters):
/// nothing waits for their confirmation (the services host's batch tokens
/// count up from 0).
pub(super) const LOCAL_WRITE: u64 = u64::MAX - 1;

impl Core {
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
            } => match self.clients.table.bind(full.clone(), session.id) {
                Ok(replaced) => {
                    if let Some(old) = replaced.and_then(|id| self.clients.handles.remove(&id)) {
                        old.replace();
                    }
                    self.clients.handles.insert(session.id, session);
                    self.send_lease(now, &full, false, 0, false);
                    let _ = reply.send(Ok(full));
                }
                Err(cond) => {
                    let _ = reply.send(Err(cond));
                }
            },
            C2sEvent::Stanza(st) => self.on_client_stanza(now, st),
            C2sEvent::Closed { full, id } => {
                if self.clients.table.unbind(&full, id) {
                    self.clients.handles.remove(&id);
                    self.send_lease(now, &full, false, 0, true);
                    self.undirect(&full);
                }
            }
        }
    }

    /// Tells `full`'s home node about this node's session.
    fn send_lease(
        &mut self,
        now: Instant,
        full: &FullJid,
        available: bool,
        priority: i8,
        end: bool,
    ) {
        let lease = Lease {
            jid: full.to_string(),
            available,
            priority,
            end,
        };
        let key = dht::keys::jid_key_normalised(full.to_bare().as_str());
        if let Err(e) = self.node.route(
            now,
            key,
            EnvelopeKind::Service(SERVICE_C2S_LEASE),
            Bytes::from(lease.encode()),
            false,
        ) {
            tracing::debug!("cannot send a session lease: {e}");
        }
    }

    /// Renews this node's leases and forgets expired ones of others.
    pub(super) fn on_c2s_timers(&mut self, now: Instant) {
        if now < self.clients.next_renewal {
            return;
        }
        self.clients.next_renewal = now + LEASE_RENEW;
        for full in self.clients.table.expire(now) {
            tracing::debug!(%full, "session lease expired");
            self.session_gone(now, &full);
        }
        for (full, _, available, priority) in self.clients.table.local() {
            self.send_lease(now, &full, available, priority, false);
        }
        self.sweep_presence(now);
    }

    /// A lease from access node `from` for a session of a user whose home
    /// is (or was, when it was routed) this node.
    pub(super) fn on_lease(&mut self, now: Instant, from: NodeId, payload: &[u8]) {
        let Some(lease) = Lease::decode(payload) else {
            tracing::warn!("undecodable session lease");
            return;
        };
        let Ok(full) = FullJid::new(&lease.jid) else {
            return;
        };
        if !self.is_user(&Jid::from(full.clone())) {
            return;
        }
        if lease.end {
            self.clients.table.handle_lease_end(&from, &full);
            self.session_gone(now, &full);
            return;
        }
        match self.clients.table.handle_lease(
            from,
            full.clone(),
            lease.available,
            lease.priority,
            now + LEASE_TTL,
        ) {
            Ok(()) if lease.available => {
                if self.user_ready(now, &full.to_bare(), || Pending::Flush(full.clone())) {
                    self.flush_offline(now, &full);
                }
            }
            Ok(()) => {}
            Err(c) => tracing::debug!(?c, "session lease refused"),
        }
    }

    /// Whether `jid` is a user of one of the ring's domains (not a service
    /// on a subdomain).
    pub(super) fn is_user(&self, jid: &Jid) -> bool {
        jid.node().is_some()
            && self
                .settings
                .domains
                .iter()
                .any(|d| d == jid.domain().as_str())
    }

    /// A stanza from one of this node's sessions (`from` stamped).
    fn on_client_stanza(&mut self, now: Instant, mut st: Element) {
        let Some(from) = st.attr("from").and_then(|f| FullJid::new(f).ok()) else {
            return;
        };
        if st.attr("to").is_none() {
            if st.name() == "presence" {
                self.on_broadcast_presence(now, &from, st);
                return;
            }
            // RFC 6120 §10.3: IQs without `to` are for the server acting
            // on the account's behalf (the roster lives at the home node,
            // so roster IQs go to the bare JID); messages go to the bare
            // JID.
            let to = if st.name() == "iq" && !roster::is_roster_iq(&st) {
                from.domain().to_string()
            } else {
                from.to_bare().to_string()
            };
            set_attr(&mut st, "to", &to);
        }
        if roster::is_subscription(&st) {
            return self.send_to_home(now, &from, &st, false);
        }
        if st.name() == "presence" {
            self.clients.directed.handle_sent(&from, &st);
        }
        self.send_from_ring(st);
    }

    /// `full` went unavailable or ended: whoever got its directed presence
    /// gets unavailable presence.
    fn undirect(&mut self, full: &FullJid) {
        for p in self.clients.directed.take(full) {
            self.send_from_ring(p);
        }
    }

    /// A session's broadcast presence: its availability and priority here
    /// and (by lease) at its home node, which also sends it to the user's
    /// sessions and contacts.
    fn on_broadcast_presence(&mut self, now: Instant, from: &FullJid, st: Element) {
        let was_available = self.clients.table.available(&from.to_bare()).contains(from);
        self.clients.table.handle_presence(from, &st);
        let available = st.attr("type").is_none();
        let priority = st
            .children()
            .find(|c| c.name() == "priority")
            .and_then(|p| p.text().trim().parse::<i8>().ok())
            .unwrap_or(0);
        self.send_lease(now, from, available, priority, false);
        if st.attr("type") == Some("unavailable") {
            self.undirect(from);
        }
        self.send_to_home(now, from, &st, available && !was_available);
    }

    /// Routes a session's presence to its user's home node to be
    /// processed there first (broadcast and subscription presence).
    fn send_to_home(&mut self, now: Instant, from: &FullJid, st: &Element, initial: bool) {
        let msg = Outbound {
            xml: stanza::to_string(st),
            initial,
        };
        let key = dht::keys::jid_key_normalised(from.to_bare().as_str());
        if let Err(e) = self.node.route(
            now,
            key,
            EnvelopeKind::Service(SERVICE_C2S_OUTBOUND),
            Bytes::from(msg.encode()),
            false,
        ) {
            tracing::debug!("cannot send a presence to its home node: {e}");
        }
    }

    /// Sends a stanza: to a session of this node directly when `to` names
    /// one, otherwise along the stanza path.
    pub(super) fn send_from_ring(&mut self, st: Element) {
        if let Some(id) = self.local_target(&st) {
            return self.hand_to_session(id, st);
        }
        self.send_stanza(st);
    }

    /// The session of this node a stanza's full-JID `to` names.
    pub(super) fn local_target(&self, st: &Element) -> Option<u64> {
        let to = FullJid::new(st.attr("to")?).ok()?;
        self.clients.table.local_session(&to)
    }

    /// Whether this node (the home node) decides where `st` goes: it is
    /// for a ring user with sessions (here or leased).
    pub(super) fn is_for_online_user(&self, st: &Element) -> bool {
        let Some(Ok(to)) = st.attr("to").map(Jid::new) else {
            return false;
        };
        self.is_user(&to) && self.clients.table.knows(&to.to_bare())
    }

    /// At the home node: delivers `st` as the session table says, or
    /// answers its sender.
    pub(super) fn deliver_home(&mut self, now: Instant, st: Element) {
        let delivery = self.clients.table.deliver(&st);
        tracing::debug!(
            to = st.attr("to"),
            kind = st.name(),
            ?delivery,
            "home delivery"
        );
        match delivery {
            Delivery::Sessions(targets) => {
                for (full, place) in targets {
                    let mut copy = st.clone();
                    match place {
                        Place::Here(id) => self.hand_to_session(id, copy),
                        Place::There(node) => {
                            // The copy names its session, so the access
                            // node knows which one it is for.
                            set_attr(&mut copy, "to", full.as_str());
                            self.forward_to_access_node(now, node, copy)
                        }
                    }
                }
            }
            Delivery::Error(DefinedCondition::ServiceUnavailable)
                if self.try_keep_offline(now, &st) => {}
            Delivery::Error(cond) => self.answer_error(&st, cond),
            Delivery::Drop => {}
        }
    }

    fn forward_to_access_node(&mut self, now: Instant, node: NodeId, st: Element) {
        let key: Key = node;
        if let Err(e) = self.node.route(
            now,
            key,
            EnvelopeKind::Service(SERVICE_C2S_DELIVER),
            stanza::to_bytes(&st),
            false,
        ) {
            tracing::debug!("cannot forward to an access node: {e}");
            self.answer_error(&st, DefinedCondition::RecipientUnavailable);
        }
    }

    /// A stanza a home node forwarded to one of this node's sessions
    /// (`key`: the access node's id it was routed to).
    pub(super) fn on_forwarded(&mut self, key: Key, payload: &[u8]) {
        let Some(st) = stanza::parse(payload) else {
            tracing::warn!("undecodable forwarded stanza");
            return;
        };
        match (key == self.node.id())
            .then(|| self.local_target(&st))
            .flatten()
        {
            Some(id) => self.hand_to_session(id, st),
            // The session (or its node) is gone since the home node looked.
            None => self.answer_error(&st, DefinedCondition::RecipientUnavailable),
        }
    }

    /// Gives `st` to session `id`; a session gone or not reading is
    /// answered for.
    fn hand_to_session(&mut self, id: u64, st: Element) {
        let refused = match self.clients.handles.get(&id) {
            Some(h) => h.deliver(st).err(),
            None => Some(st),
        };
        if let Some(st) = refused {
            self.answer_error(&st, DefinedCondition::RecipientUnavailable);
        }
    }

    /// Answers `st`'s sender with `cond` (never an error or a result, and
    /// never presence other than subscription requests).
    pub(super) fn answer_error(&mut self, st: &Element, cond: DefinedCondition) {
        if st.name() == "presence" && st.attr("type") != Some("subscribe") {
            return;
        }
        if let Some(reply) = stanza::error_reply(st, cond, None) {
            self.send_from_ring(reply);
        }
    }
}
