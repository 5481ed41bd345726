//! The home node's side of its users (see docs/architecture.md, "Clients
//! (c2s)"): before it reads a user's records (account, roster, offline
//! queue) for the first time it makes sure it holds the ring's latest
//! copies (a load from the replicas, as the services host does for rooms),
//! keeping meanwhile what waits for them; then it serves stanzas for the
//! user, and keeps and hands out offline messages.

use super::Core;
use super::c2s::{LOCAL_WRITE, Pending};
use crate::records::RecordOp;
use jid::{BareJid, FullJid, Jid};
use ring_c2s::Account;
use ring_c2s::loads::Waiting;
use ring_c2s::offline::{self, OfflineQueue};
use ring_records::LocalWrite;
use std::time::Instant;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

impl Core {
    /// Whether `user`'s records (account, roster, offline queue) are held
    /// here, so that what this node reads of them is the ring's latest:
    /// a node that has just become a user's home node fetches them from
    /// the replicas first (the replicator's load, as the services host
    /// does for rooms; `ring_c2s::loads` keeps the books). When not, the
    /// work `pending` makes waits for them (it runs when they are here,
    /// at once when there was nothing to fetch) and false is returned.
    pub(super) fn user_ready(
        &mut self,
        now: Instant,
        user: &BareJid,
        pending: impl FnOnce() -> Pending,
    ) -> bool {
        if self.clients.loads.is_ready(user) {
            return true;
        }
        match self.clients.loads.wait(user, pending()) {
            Waiting::Queued => {}
            Waiting::Full(item) => {
                tracing::warn!(%user, "too much waits for a user's records");
                // A stanza is answered; a session's presence or flush
                // comes again with its next change or login.
                if let Pending::Serve(st) = item {
                    self.answer_error(&st, DefinedCondition::ResourceConstraint);
                }
            }
            Waiting::Load(req) => {
                if !self.records.load(now, &self.node, &req.names, req.token) {
                    // Nothing to fetch: held now.
                    self.user_load_done(now, req.token);
                }
            }
        }
        false
    }

    /// The replicator finished load `token`; false when it was not the
    /// home node's.
    pub(super) fn user_load_done(&mut self, now: Instant, token: u64) -> bool {
        if !self.clients.loads.owns(token) {
            return false;
        }
        let Some((_, pending)) = self.clients.loads.done(token) else {
            return true;
        };
        for p in pending {
            match p {
                Pending::Serve(st) => self.serve_user_stanza(now, st),
                Pending::Outbound(payload) => self.on_outbound(now, &payload),
                Pending::Flush(full) => self.flush_offline(now, &full),
            }
        }
        true
    }

    /// A stanza for a ring JID this node is responsible for: a user's
    /// (once their records are here) or the services'.
    pub(super) fn serve(&mut self, now: Instant, st: Element) {
        let user = st
            .attr("to")
            .and_then(|t| Jid::new(t).ok())
            .filter(|j| self.is_user(j))
            .map(|j| j.to_bare());
        if let Some(user) = user
            && !self.user_ready(now, &user, || Pending::Serve(st.clone()))
        {
            return;
        }
        self.serve_user_stanza(now, st);
    }

    fn serve_user_stanza(&mut self, now: Instant, st: Element) {
        tracing::debug!(
            to = st.attr("to"),
            kind = st.name(),
            "serving a stanza for a user"
        );
        if self.home_handles(now, &st) {
            // Roster IQs, subscriptions, probes, account disco.
        } else if self.is_for_online_user(&st) {
            self.deliver_home(now, st);
        } else if self.try_keep_offline(now, &st) {
            // Kept for the user's next session.
        } else {
            self.run_services(now, st);
        }
    }

    /// This node's copy of a record's value (`None`: absent or deleted).
    pub(super) fn local_value(&self, name: &str) -> Option<Vec<u8>> {
        match self.records.store().get(name) {
            Ok(Some(r)) if !r.deleted => Some(r.value),
            _ => None,
        }
    }

    /// At the home node: keeps a message for a user with no available
    /// session, when it is worth keeping, the account exists and the queue
    /// has room. False: the caller answers the sender.
    pub(super) fn try_keep_offline(&mut self, now: Instant, st: &Element) -> bool {
        if !offline::worth_keeping(st) {
            return false;
        }
        let Some(Ok(to)) = st.attr("to").map(Jid::new) else {
            return false;
        };
        if !self.is_user(&to) {
            return false;
        }
        let bare = to.to_bare();
        // The home node holds a copy of the account (keyed alike).
        if self.local_value(&Account::record_name(&bare)).is_none() {
            return false;
        }
        let name = OfflineQueue::record_name(bare.as_str());
        let mut queue = OfflineQueue::decode(self.local_value(&name).as_deref());
        let max = self.settings.c2s.max_offline;
        if !queue.push(st, super::services::unix_now(), max) {
            return false;
        }
        let op = RecordOp::Put {
            name,
            value: queue.encode(),
        };
        match self.records.write_local(now, &self.node, &op, LOCAL_WRITE) {
            LocalWrite::Waiting | LocalWrite::Done => true,
            LocalWrite::Refused(why) => {
                tracing::debug!(%bare, "offline message not kept: {why}");
                false
            }
        }
    }

    /// A session of a user whose home this is became available: the
    /// messages kept for the user go to it, with their delay stamps.
    pub(super) fn flush_offline(&mut self, now: Instant, full: &FullJid) {
        let name = OfflineQueue::record_name(full.to_bare().as_str());
        let queue = OfflineQueue::decode(self.local_value(&name).as_deref());
        if queue.is_empty() {
            return;
        }
        let op = RecordOp::Delete { name };
        if let LocalWrite::Refused(why) =
            self.records.write_local(now, &self.node, &op, LOCAL_WRITE)
        {
            tracing::warn!("cannot clear an offline queue: {why}");
            return;
        }
        for st in queue.deliver(full.as_str(), full.domain().as_str()) {
            self.deliver_home(now, st);
        }
    }
}
