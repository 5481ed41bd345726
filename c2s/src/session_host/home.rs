//! The home node's side of its users: before it reads a user's records
//! (account, roster, offline queue) for the first time it makes sure it
//! holds the ring's latest copies (a load from the replicas, as the
//! services host does for rooms), keeping meanwhile what waits for them;
//! then it serves stanzas for the user, and keeps and hands out offline
//! messages.

use super::{HomeRecords, Pending, SessionHost};
use crate::Account;
use crate::loads::Waiting;
use crate::offline::{self, OfflineQueue};
use jid::{BareJid, FullJid, Jid};
use ring_records::RecordOp;
use std::time::Instant;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

impl SessionHost {
    /// Whether `user`'s records are held here, so that what this node
    /// reads of them is the ring's latest. When not, the work `pending`
    /// makes waits for them (it runs when they are here, at once when
    /// there was nothing to fetch) and false is returned.
    pub(super) fn user_ready(
        &mut self,
        now: Instant,
        user: &BareJid,
        pending: impl FnOnce() -> Pending,
        records: &mut impl HomeRecords,
    ) -> bool {
        if self.loads.is_ready(user) {
            return true;
        }
        match self.loads.wait(user, pending()) {
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
                if !records.load(now, &req.names, req.token) {
                    // Nothing to fetch: held now.
                    self.handle_load_done(now, req.token, records);
                }
            }
        }
        false
    }

    /// The record store finished load `token`; false when it was not one
    /// of this host's.
    pub fn handle_load_done(
        &mut self,
        now: Instant,
        token: u64,
        records: &mut impl HomeRecords,
    ) -> bool {
        if !self.loads.owns(token) {
            return false;
        }
        let Some((_, pending)) = self.loads.done(token) else {
            return true;
        };
        for p in pending {
            match p {
                Pending::Serve(st) => self.serve_user_stanza(now, st, records),
                Pending::Outbound(payload) => self.handle_outbound(now, &payload, records),
                Pending::Flush(full) => self.flush_offline(now, &full, records),
            }
        }
        true
    }

    /// A stanza for a ring JID this node is responsible for: a user's
    /// (once their records are here) or, as [`super::HostOutput::Services`],
    /// the services'.
    pub fn handle_stanza(&mut self, now: Instant, st: Element, records: &mut impl HomeRecords) {
        let user = st
            .attr("to")
            .and_then(|t| Jid::new(t).ok())
            .filter(|j| self.is_user(j))
            .map(|j| j.to_bare());
        if let Some(user) = user
            && !self.user_ready(now, &user, || Pending::Serve(st.clone()), records)
        {
            return;
        }
        self.serve_user_stanza(now, st, records);
    }

    fn serve_user_stanza(&mut self, now: Instant, st: Element, records: &mut impl HomeRecords) {
        tracing::debug!(
            to = st.attr("to"),
            kind = st.name(),
            "serving a stanza for a user"
        );
        if self.home_handles(now, &st, records) {
            // Roster IQs, subscriptions, probes, account disco.
        } else if self.is_for_online_user(&st) {
            self.deliver_home(now, st, records);
        } else if self.try_keep_offline(now, &st, records) {
            // Kept for the user's next session.
        } else {
            self.out.push_back(super::HostOutput::Services(st));
        }
    }

    /// At the home node: keeps a message for a user with no available
    /// session, when it is worth keeping, the account exists and the queue
    /// has room. False: the caller answers the sender.
    pub(super) fn try_keep_offline(
        &mut self,
        now: Instant,
        st: &Element,
        records: &mut impl HomeRecords,
    ) -> bool {
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
        if records.local(&Account::record_name(&bare)).is_none() {
            return false;
        }
        let name = OfflineQueue::record_name(bare.as_str());
        let mut queue = OfflineQueue::decode(records.local(&name).as_deref());
        if !queue.push(st, records.unix_now(), self.max_offline) {
            return false;
        }
        let op = RecordOp::Put {
            name,
            value: queue.encode(),
        };
        match records.write(now, op) {
            Ok(()) => true,
            Err(why) => {
                tracing::debug!(%bare, "offline message not kept: {why}");
                false
            }
        }
    }

    /// A session of a user whose home this is became available: the
    /// messages kept for the user go to it, with their delay stamps.
    pub(super) fn flush_offline(
        &mut self,
        now: Instant,
        full: &FullJid,
        records: &mut impl HomeRecords,
    ) {
        let name = OfflineQueue::record_name(full.to_bare().as_str());
        let queue = OfflineQueue::decode(records.local(&name).as_deref());
        if queue.is_empty() {
            return;
        }
        if let Err(why) = records.write(now, RecordOp::Delete { name }) {
            tracing::warn!("cannot clear an offline queue: {why}");
            return;
        }
        for st in queue.deliver(full.as_str(), full.domain().as_str()) {
            self.deliver_home(now, st, records);
        }
    }
}
