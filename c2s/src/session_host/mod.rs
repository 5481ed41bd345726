//! The sessions' counterpart of the services host: everything a node does
//! for client sessions, as access node and as home node, without I/O (see
//! docs/architecture.md, "Clients (c2s)"). The node feeds it what arrives
//! (binds, client stanzas, leases, presence from access nodes, stanzas
//! for users, load completions, timers) and carries out its
//! [`HostOutput`]s; records are read and written through [`HomeRecords`].
//!
//! * As **access node** it keeps the node's own sessions in the
//!   [`SessionTable`] (`Here`), leases them to their users' home nodes
//!   (renewed every [`LEASE_RENEW`]), routes their stanzas, sends their
//!   broadcast and subscription presence to the home node first, and
//!   remembers their directed presence.
//! * As **home node** it keeps the sessions leased to it (`There`),
//!   applies RFC 6121 §8.5 to stanzas for its users, answers roster IQs,
//!   subscriptions and probes from the roster record, fans presence out to
//!   contacts, keeps and flushes offline messages, stores the available
//!   sessions (`presence:`), and finds sessions that died with its
//!   predecessor.
//!
//! The pieces it sequences are machines of their own: [`SessionTable`],
//! [`Roster`](crate::roster::Roster), [`UserLoads`], [`LastPresences`],
//! [`OrphanSweep`], [`DirectedPresence`], [`OfflineQueue`](crate::offline::OfflineQueue).

mod home;
mod presence;
#[cfg(test)]
mod tests;

use crate::directed::DirectedPresence;
use crate::lease::{LEASE_RENEW, LEASE_TTL, Lease, Outbound};
use crate::loads::UserLoads;
use crate::online::{LastPresences, OrphanSweep};
use crate::roster;
use crate::sessions::{Delivery, Place, SessionTable};
use dht::{Key, NodeId};
use jid::{FullJid, Jid};
use ring_records::RecordOp;
use ring_services::stanza::{self, set as set_attr};
use std::collections::VecDeque;
use std::time::Instant;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

/// Load tokens of the home node: far above the services host's, which
/// count up from the store's counter base.
pub const LOAD_TOKEN_BASE: u64 = 1 << 63;

/// What the host reads and writes of the record store, and of the ring.
pub trait HomeRecords {
    /// This node's live copy of a record's value.
    fn local(&self, name: &str) -> Option<Vec<u8>>;
    /// Writes a record as its coordinator (replicated, nothing waits for
    /// the confirmations); why not, when refused.
    fn write(&mut self, now: Instant, op: RecordOp) -> Result<(), String>;
    /// Starts loading `names` from the replicas; false when there is
    /// nothing to fetch (then the load is done at once).
    fn load(&mut self, now: Instant, names: &[String], token: u64) -> bool;
    /// The next at most `n` names with `prefix` after `cursor` (which moves
    /// on, and starts over at the end).
    fn batch(&self, prefix: &str, cursor: &mut Option<String>, n: usize) -> Vec<String>;
    /// Whether this node is the first of a record's replicas (its home).
    fn is_home_of(&self, name: &str) -> bool;
    /// Seconds since the Unix epoch (delay stamps).
    fn unix_now(&self) -> u64;
}

/// What the node is asked to do.
#[derive(Debug, PartialEq)]
pub enum HostOutput {
    /// Give the stanza to this node's session `id`; when that fails, tell
    /// [`SessionHost::handle_refused`].
    ToSession {
        /// The session.
        id: u64,
        /// The stanza.
        stanza: Element,
    },
    /// Route the stanza to the access node `node` (its session is named by
    /// `to`); when that fails, tell [`SessionHost::handle_refused`].
    ToAccessNode {
        /// The access node.
        node: NodeId,
        /// The stanza.
        stanza: Element,
    },
    /// Send the stanza along the stanza path (to a ring JID's node, or out
    /// through an edge).
    Send(Element),
    /// Not a user's: the services answer it.
    Services(Element),
    /// Route a lease envelope to `key` (the user's home node).
    Lease {
        /// The bare JID's key.
        key: Key,
        /// The encoded [`Lease`].
        payload: Vec<u8>,
    },
    /// Route a session's presence to `key` (its user's home node) to be
    /// processed there first.
    Outbound {
        /// The bare JID's key.
        key: Key,
        /// The encoded [`Outbound`].
        payload: Vec<u8>,
    },
}

/// What waits for a user's records to be here.
#[derive(Debug)]
enum Pending {
    /// A stanza for the user, to serve.
    Serve(Element),
    /// A presence from one of the user's sessions (the envelope payload).
    Outbound(Vec<u8>),
    /// A session became available: its offline messages.
    Flush(FullJid),
}

/// The node's sessions and its users' (see the module docs).
pub struct SessionHost {
    domains: Vec<String>,
    max_offline: usize,
    table: SessionTable<NodeId>,
    me: NodeId,
    next_renewal: Instant,
    last_presence: LastPresences,
    loads: UserLoads<Pending>,
    presence_cursor: Option<String>,
    orphans: OrphanSweep,
    directed: DirectedPresence,
    out: VecDeque<HostOutput>,
}

impl SessionHost {
    /// A host for node `me` serving users of `domains`, with at most
    /// `max_resources` sessions per user and `max_offline` messages kept
    /// per user.
    pub fn new(
        me: NodeId,
        domains: Vec<String>,
        max_resources: usize,
        max_offline: usize,
        now: Instant,
    ) -> SessionHost {
        SessionHost {
            domains,
            max_offline,
            table: SessionTable::new(max_resources),
            me,
            next_renewal: now + LEASE_RENEW,
            last_presence: LastPresences::default(),
            loads: UserLoads::new(LOAD_TOKEN_BASE),
            presence_cursor: None,
            orphans: OrphanSweep::default(),
            directed: DirectedPresence::default(),
            out: VecDeque::new(),
        }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<HostOutput> {
        self.out.pop_front()
    }

    /// When [`SessionHost::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.table.is_empty()).then_some(self.next_renewal)
    }

    /// Sessions known here (own and leased).
    pub fn sessions(&self) -> usize {
        self.table.len()
    }

    /// Whether `jid` is a user of one of the ring's domains (not a service
    /// on a subdomain).
    pub fn is_user(&self, jid: &Jid) -> bool {
        jid.node().is_some() && self.domains.iter().any(|d| d == jid.domain().as_str())
    }

    // ---- access node ----

    /// A connection bound `full` as session `id`: registered and leased;
    /// the session it replaces (same full JID), if any, or why not.
    pub fn handle_bind(
        &mut self,
        full: &FullJid,
        id: u64,
    ) -> Result<Option<u64>, DefinedCondition> {
        let replaced = self.table.bind(full.clone(), id)?;
        self.send_lease(full, false, 0, false);
        Ok(replaced)
    }

    /// Session `id` of `full` ended; false when it was not the one bound.
    pub fn handle_closed(&mut self, full: &FullJid, id: u64) -> bool {
        if !self.table.unbind(full, id) {
            return false;
        }
        self.send_lease(full, false, 0, true);
        self.undirect(full);
        true
    }

    /// A stanza from one of this node's sessions (`from` stamped).
    pub fn handle_client_stanza(&mut self, mut st: Element) {
        let Some(from) = st.attr("from").and_then(|f| FullJid::new(f).ok()) else {
            return;
        };
        if st.attr("to").is_none() {
            if st.name() == "presence" {
                return self.on_broadcast_presence(&from, st);
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
            return self.send_to_home(&from, &st, false);
        }
        if st.name() == "presence" {
            self.directed.handle_sent(&from, &st);
        }
        self.send_from_ring(st);
    }

    /// A stanza a home node forwarded to one of this node's sessions
    /// (`key`: the access node's id it was routed to).
    pub fn handle_forwarded(&mut self, key: Key, payload: &[u8]) {
        let Some(st) = stanza::parse(payload) else {
            tracing::warn!("undecodable forwarded stanza");
            return;
        };
        match (key == self.me).then(|| self.local_target(&st)).flatten() {
            Some(id) => self.out.push_back(HostOutput::ToSession { id, stanza: st }),
            // The session (or its node) is gone since the home node looked.
            None => self.answer_error(&st, DefinedCondition::RecipientUnavailable),
        }
    }

    /// A stanza the node could not hand on ([`HostOutput::ToSession`] or
    /// [`HostOutput::ToAccessNode`]): its sender is answered.
    pub fn handle_refused(&mut self, st: &Element, cond: DefinedCondition) {
        self.answer_error(st, cond);
    }

    /// Renews this node's leases, forgets expired ones of others and
    /// sweeps the stored `presence:` records.
    pub fn handle_timeout(&mut self, now: Instant, records: &mut impl HomeRecords) {
        if now < self.next_renewal {
            return;
        }
        self.next_renewal = now + LEASE_RENEW;
        for full in self.table.expire(now) {
            tracing::debug!(%full, "session lease expired");
            self.session_gone(now, &full, records);
        }
        for (full, _, available, priority) in self.table.local() {
            self.send_lease(&full, available, priority, false);
        }
        self.sweep_presence(now, records);
    }

    /// Tells `full`'s home node about this node's session.
    fn send_lease(&mut self, full: &FullJid, available: bool, priority: i8, end: bool) {
        let lease = Lease {
            jid: full.to_string(),
            available,
            priority,
            end,
        };
        self.out.push_back(HostOutput::Lease {
            key: dht::keys::jid_key_normalised(full.to_bare().as_str()),
            payload: lease.encode(),
        });
    }

    /// `full` went unavailable or ended: whoever got its directed presence
    /// gets unavailable presence.
    fn undirect(&mut self, full: &FullJid) {
        for p in self.directed.take(full) {
            self.send_from_ring(p);
        }
    }

    /// A session's broadcast presence: its availability and priority here
    /// and (by lease) at its home node, which also sends it to the user's
    /// sessions and contacts.
    fn on_broadcast_presence(&mut self, from: &FullJid, st: Element) {
        let was_available = self.table.available(&from.to_bare()).contains(from);
        self.table.handle_presence(from, &st);
        let available = st.attr("type").is_none();
        let priority = st
            .children()
            .find(|c| c.name() == "priority")
            .and_then(|p| p.text().trim().parse::<i8>().ok())
            .unwrap_or(0);
        self.send_lease(from, available, priority, false);
        if st.attr("type") == Some("unavailable") {
            self.undirect(from);
        }
        self.send_to_home(from, &st, available && !was_available);
    }

    /// Routes a session's presence to its user's home node to be
    /// processed there first (broadcast and subscription presence).
    fn send_to_home(&mut self, from: &FullJid, st: &Element, initial: bool) {
        let msg = Outbound {
            xml: stanza::to_string(st),
            initial,
        };
        self.out.push_back(HostOutput::Outbound {
            key: dht::keys::jid_key_normalised(from.to_bare().as_str()),
            payload: msg.encode(),
        });
    }

    /// Sends a stanza: to a session of this node directly when `to` names
    /// one, otherwise along the stanza path.
    fn send_from_ring(&mut self, st: Element) {
        match self.local_target(&st) {
            Some(id) => self.out.push_back(HostOutput::ToSession { id, stanza: st }),
            None => self.out.push_back(HostOutput::Send(st)),
        }
    }

    /// The session of this node a stanza's full-JID `to` names.
    pub fn local_target(&self, st: &Element) -> Option<u64> {
        let to = FullJid::new(st.attr("to")?).ok()?;
        self.table.local_session(&to)
    }

    // ---- home node: delivery ----

    /// A lease from access node `from` for a session of a user whose home
    /// is (or was, when it was routed) this node.
    pub fn handle_lease(
        &mut self,
        now: Instant,
        from: NodeId,
        payload: &[u8],
        records: &mut impl HomeRecords,
    ) {
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
            self.table.handle_lease_end(&from, &full);
            self.session_gone(now, &full, records);
            return;
        }
        match self.table.handle_lease(
            from,
            full.clone(),
            lease.available,
            lease.priority,
            now + LEASE_TTL,
        ) {
            Ok(()) if lease.available => {
                if self.user_ready(
                    now,
                    &full.to_bare(),
                    || Pending::Flush(full.clone()),
                    records,
                ) {
                    self.flush_offline(now, &full, records);
                }
            }
            Ok(()) => {}
            Err(c) => tracing::debug!(?c, "session lease refused"),
        }
    }

    /// Whether this node (the home node) decides where `st` goes: it is
    /// for a ring user with sessions (here or leased).
    fn is_for_online_user(&self, st: &Element) -> bool {
        let Some(Ok(to)) = st.attr("to").map(Jid::new) else {
            return false;
        };
        self.is_user(&to) && self.table.knows(&to.to_bare())
    }

    /// At the home node: delivers `st` as the session table says, or
    /// answers its sender.
    fn deliver_home(&mut self, now: Instant, st: Element, records: &mut impl HomeRecords) {
        let delivery = self.table.deliver(&st);
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
                        Place::Here(id) => self
                            .out
                            .push_back(HostOutput::ToSession { id, stanza: copy }),
                        Place::There(node) => {
                            // The copy names its session, so the access
                            // node knows which one it is for.
                            set_attr(&mut copy, "to", full.as_str());
                            self.out
                                .push_back(HostOutput::ToAccessNode { node, stanza: copy });
                        }
                    }
                }
            }
            Delivery::Error(DefinedCondition::ServiceUnavailable)
                if self.try_keep_offline(now, &st, records) => {}
            Delivery::Error(cond) => self.answer_error(&st, cond),
            Delivery::Drop => {}
        }
    }

    /// Answers `st`'s sender with `cond` (never an error or a result, and
    /// never presence other than subscription requests).
    fn answer_error(&mut self, st: &Element, cond: DefinedCondition) {
        if st.name() == "presence" && st.attr("type") != Some("subscribe") {
            return;
        }
        if let Some(reply) = stanza::error_reply(st, cond, None) {
            self.send_from_ring(reply);
        }
    }
}
