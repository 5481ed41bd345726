//! The core's side of client sessions (see docs/architecture.md, "Clients
//! (c2s)"): it answers the c2s listener's requests (account lookups in the
//! record store, binds), keeps the node's [`SessionTable`] and a handle per
//! session, and carries out where the table says a stanza for one of this
//! node's users goes. Protocol decisions are `ring-c2s`'s.
//!
//! A stanza for a ring user is delivered here when this node holds
//! sessions of that user; otherwise it travels the stanza path to the
//! user's home node (the node responsible for the bare JID), which
//! delivers it when the sessions are there and answers for the user when
//! there are none. Sessions are not yet registered with a home node on
//! another access node: users of one ring reach each other when they log
//! in to the same node (a one-node ring, or one c2s node per ring).

use super::Core;
use crate::api::RecordReport;
use crate::records::RecordOp;
use ring_c2s::Account;
use ring_c2s::server::{C2sEvent, C2sStats, Session};
use ring_c2s::sessions::{Delivery, SessionTable};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

/// The node's client sessions.
pub(crate) struct Clients {
    table: SessionTable,
    handles: HashMap<u64, Session>,
    stats: Arc<C2sStats>,
}

impl Clients {
    pub(crate) fn new(max_resources: usize, stats: Arc<C2sStats>) -> Clients {
        Clients {
            table: SessionTable::new(max_resources),
            handles: HashMap::new(),
            stats,
        }
    }

    /// Refreshes the c2s metrics.
    pub(crate) fn export_metrics(&self) {
        crate::metrics::export_c2s(&self.stats, self.handles.len());
    }
}

/// Sets (or replaces) an attribute without a namespace.
fn set_attr(el: &mut Element, name: &str, value: &str) {
    if let Ok(n) = xmpp_parsers::minidom::rxml::NcName::try_from(name) {
        el.set_attr(
            xmpp_parsers::minidom::rxml::Namespace::NONE,
            n,
            value.to_string(),
        );
    }
}

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
                // wants an account (or none: unknown, corrupt, unreachable).
                tokio::spawn(async move {
                    let account = rx
                        .await
                        .ok()
                        .and_then(|r| r.value)
                        .and_then(|v| Account::decode(v.as_bytes()).ok());
                    let _ = reply.send(account);
                });
            }
            C2sEvent::Bind {
                full,
                session,
                reply,
            } => {
                let Some(c) = self.clients.as_mut() else {
                    let _ = reply.send(Err(DefinedCondition::ServiceUnavailable));
                    return;
                };
                match c.table.bind(full.clone(), session.id) {
                    Ok(replaced) => {
                        if let Some(old) = replaced.and_then(|id| c.handles.remove(&id)) {
                            old.replace();
                        }
                        c.handles.insert(session.id, session);
                        let _ = reply.send(Ok(full));
                    }
                    Err(cond) => {
                        let _ = reply.send(Err(cond));
                    }
                }
            }
            C2sEvent::Stanza(st) => self.on_client_stanza(st),
            C2sEvent::Closed { full, id } => {
                if let Some(c) = self.clients.as_mut()
                    && c.table.unbind(&full, id)
                {
                    c.handles.remove(&id);
                }
            }
        }
    }

    /// A stanza from one of this node's sessions (`from` stamped).
    fn on_client_stanza(&mut self, mut st: Element) {
        let Some(from) = st.attr("from").and_then(|f| jid::FullJid::new(f).ok()) else {
            return;
        };
        if st.attr("to").is_none() {
            if st.name() == "presence" {
                // Broadcast presence: availability and priority; the
                // user's other sessions see it (no roster yet, so no
                // contacts do).
                if let Some(c) = self.clients.as_mut() {
                    c.table.handle_presence(&from, &st);
                }
                let bare = from.to_bare();
                let others: Vec<_> = self
                    .clients
                    .as_ref()
                    .map(|c| c.table.available(&bare))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|f| *f != from)
                    .collect();
                for other in others {
                    let mut copy = st.clone();
                    set_attr(&mut copy, "to", other.as_str());
                    self.deliver_local(copy);
                }
                return;
            }
            // RFC 6120 §10.3: IQs without `to` are for the server acting
            // on the account's behalf; messages go to the bare JID.
            let to = if st.name() == "iq" {
                from.domain().to_string()
            } else {
                from.to_bare().to_string()
            };
            set_attr(&mut st, "to", &to);
        }
        if self.has_local_sessions(&st) {
            return self.deliver_local(st);
        }
        self.send_stanza(st);
    }

    /// Whether `st` is for a ring user with sessions on this node.
    pub(super) fn has_local_sessions(&self, st: &Element) -> bool {
        let Some(c) = &self.clients else {
            return false;
        };
        let Some(Ok(to)) = st.attr("to").map(jid::Jid::new) else {
            return false;
        };
        let user = to.node().is_some()
            && self
                .settings
                .domains
                .iter()
                .any(|d| d == to.domain().as_str());
        let available = !c.table.available(&to.to_bare()).is_empty();
        let exact = to
            .try_as_full()
            .ok()
            .is_some_and(|f| c.table.session(f).is_some());
        (user && available) || exact
    }

    /// Delivers `st` to this node's sessions as the session table says,
    /// or answers its sender.
    pub(super) fn deliver_local(&mut self, st: Element) {
        let Some(c) = &self.clients else {
            return;
        };
        let refused = match c.table.deliver(&st) {
            Delivery::Sessions(ids) => {
                let mut delivered = false;
                for id in &ids {
                    if let Some(h) = c.handles.get(id) {
                        delivered |= h.deliver(st.clone()).is_ok();
                    }
                }
                // A client whose inbox is full (it does not read) is
                // not waited for.
                (!delivered).then_some(DefinedCondition::ResourceConstraint)
            }
            Delivery::Error(cond) => Some(cond),
            Delivery::Drop => None,
        };
        if let Some(cond) = refused
            && let Some(reply) = ring_services::stanza::error_reply(&st, cond, None)
        {
            if self.has_local_sessions(&reply) {
                self.deliver_local(reply);
            } else {
                self.send_stanza(reply);
            }
        }
    }
}
