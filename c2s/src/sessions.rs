//! The sessions of a node's users and where a stanza for one of them goes
//! (RFC 6121 §8.5), without I/O: the node keeps a handle per session id
//! and does what [`SessionTable::deliver`] says.
//!
//! Availability and priority come from each session's broadcast presence
//! ([`SessionTable::handle_presence`]): a bound session that has not sent
//! initial presence receives stanzas to its full JID only.
//!
//! Delivery rules, for a user this node holds sessions for:
//! * to a full JID whose session exists: that session;
//! * to another full JID: a `chat`/`normal` message is treated as sent to
//!   the bare JID; a `groupchat` message and an IQ get `service-unavailable`;
//!   presence and `headline` messages are dropped;
//! * to the bare JID: a `chat`/`normal` message goes to the available
//!   sessions of the highest non-negative priority (all of them if they
//!   tie); `headline` to every non-negative one; presence to every
//!   available one; with none there, messages get `service-unavailable`
//!   (no offline storage yet); IQs are the server's to answer on the
//!   user's behalf (`service-unavailable` for now); errors are never
//!   answered.

use jid::{BareJid, FullJid, Jid};
use std::collections::HashMap;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

/// One bound session.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    full: FullJid,
    id: u64,
    available: bool,
    priority: i8,
}

/// Where a stanza goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    /// To these sessions.
    Sessions(Vec<u64>),
    /// Answer the sender with this error.
    Error(DefinedCondition),
    /// Nowhere, silently (RFC 6121 says so for this case).
    Drop,
}

/// The sessions of the users this node holds.
#[derive(Debug)]
pub struct SessionTable {
    users: HashMap<BareJid, Vec<Entry>>,
    max_resources: usize,
}

impl SessionTable {
    /// An empty table allowing `max_resources` sessions per user.
    pub fn new(max_resources: usize) -> SessionTable {
        SessionTable {
            users: HashMap::new(),
            max_resources: max_resources.max(1),
        }
    }

    /// Sessions in all.
    pub fn len(&self) -> usize {
        self.users.values().map(Vec::len).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Registers session `id` as `full`. A session already bound to the
    /// same full JID is replaced (its id is returned: the node ends it with
    /// a `conflict` stream error, as RFC 6120 §7.7.2.2 allows); a user at
    /// the resource limit gets `resource-constraint`.
    pub fn bind(&mut self, full: FullJid, id: u64) -> Result<Option<u64>, DefinedCondition> {
        let list = self.users.entry(full.to_bare()).or_default();
        if let Some(e) = list.iter_mut().find(|e| e.full == full) {
            let old = e.id;
            *e = Entry {
                full,
                id,
                available: false,
                priority: 0,
            };
            return Ok(Some(old));
        }
        if list.len() >= self.max_resources {
            return Err(DefinedCondition::ResourceConstraint);
        }
        list.push(Entry {
            full,
            id,
            available: false,
            priority: 0,
        });
        Ok(None)
    }

    /// Session `id` ended; false if `full` is bound to another session now
    /// (it was replaced) or not at all.
    pub fn unbind(&mut self, full: &FullJid, id: u64) -> bool {
        let bare = full.to_bare();
        let Some(list) = self.users.get_mut(&bare) else {
            return false;
        };
        let before = list.len();
        list.retain(|e| !(e.full == *full && e.id == id));
        let removed = list.len() != before;
        if list.is_empty() {
            self.users.remove(&bare);
        }
        removed
    }

    /// A presence a session broadcast (no `to`): available with its
    /// priority, or unavailable.
    pub fn handle_presence(&mut self, from: &FullJid, presence: &Element) {
        let Some(e) = self
            .users
            .get_mut(&from.to_bare())
            .and_then(|l| l.iter_mut().find(|e| e.full == *from))
        else {
            return;
        };
        match presence.attr("type") {
            None => {
                e.available = true;
                e.priority = presence
                    .children()
                    .find(|c| c.name() == "priority")
                    .and_then(|p| p.text().trim().parse::<i8>().ok())
                    .unwrap_or(0);
            }
            Some("unavailable") => e.available = false,
            _ => {}
        }
    }

    /// The session bound to `full`, if any.
    pub fn session(&self, full: &FullJid) -> Option<u64> {
        self.users
            .get(&full.to_bare())?
            .iter()
            .find(|e| e.full == *full)
            .map(|e| e.id)
    }

    /// The full JIDs of `bare`'s available sessions.
    pub fn available(&self, bare: &BareJid) -> Vec<FullJid> {
        self.users
            .get(bare)
            .map(|l| {
                l.iter()
                    .filter(|e| e.available)
                    .map(|e| e.full.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Where `stanza` (addressed to one of this node's users) goes.
    pub fn deliver(&self, stanza: &Element) -> Delivery {
        let Some(Ok(to)) = stanza.attr("to").map(Jid::new) else {
            return Delivery::Error(DefinedCondition::JidMalformed);
        };
        let kind = stanza.name();
        let ty = stanza.attr("type");
        if ty == Some("error") {
            // Errors go to the exact session or nowhere.
            return match to.try_as_full().ok().and_then(|f| self.session(f)) {
                Some(id) => Delivery::Sessions(vec![id]),
                None => Delivery::Drop,
            };
        }
        if let Ok(full) = to.try_as_full()
            && let Some(id) = self.session(full)
        {
            return Delivery::Sessions(vec![id]);
        }
        let bare = to.to_bare();
        let to_full = to.is_full();
        let entries = self.users.get(&bare).map(Vec::as_slice).unwrap_or(&[]);
        match kind {
            "message" => match ty.unwrap_or("normal") {
                "groupchat" => Delivery::Error(DefinedCondition::ServiceUnavailable),
                "headline" if to_full => Delivery::Drop,
                "headline" => {
                    let ids: Vec<u64> = entries
                        .iter()
                        .filter(|e| e.available && e.priority >= 0)
                        .map(|e| e.id)
                        .collect();
                    if ids.is_empty() {
                        Delivery::Drop
                    } else {
                        Delivery::Sessions(ids)
                    }
                }
                _ => {
                    let best = entries
                        .iter()
                        .filter(|e| e.available && e.priority >= 0)
                        .map(|e| e.priority)
                        .max();
                    match best {
                        Some(p) => Delivery::Sessions(
                            entries
                                .iter()
                                .filter(|e| e.available && e.priority == p)
                                .map(|e| e.id)
                                .collect(),
                        ),
                        None => Delivery::Error(DefinedCondition::ServiceUnavailable),
                    }
                }
            },
            "presence" if to_full => Delivery::Drop,
            "presence" => match ty {
                None | Some("unavailable") | Some("probe") => {
                    let ids: Vec<u64> = entries
                        .iter()
                        .filter(|e| e.available)
                        .map(|e| e.id)
                        .collect();
                    if ids.is_empty() || ty == Some("probe") {
                        Delivery::Drop
                    } else {
                        Delivery::Sessions(ids)
                    }
                }
                // Subscription requests need the roster (not yet).
                _ => Delivery::Drop,
            },
            "iq" => match ty {
                Some("get") | Some("set") => Delivery::Error(DefinedCondition::ServiceUnavailable),
                _ => Delivery::Drop,
            },
            _ => Delivery::Drop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str) -> FullJid {
        FullJid::new(s).expect("full JID")
    }

    fn el(xml: &str) -> Element {
        xml.parse().expect("xml")
    }

    fn presence(t: &mut SessionTable, who: &str, priority: i8) {
        t.handle_presence(
            &full(who),
            &el(&format!(
                "<presence xmlns='jabber:client'><priority>{priority}</priority></presence>"
            )),
        );
    }

    fn table() -> SessionTable {
        let mut t = SessionTable::new(3);
        assert_eq!(t.bind(full("alice@ring.test/phone"), 1), Ok(None));
        assert_eq!(t.bind(full("alice@ring.test/laptop"), 2), Ok(None));
        assert_eq!(t.bind(full("alice@ring.test/idle"), 3), Ok(None));
        presence(&mut t, "alice@ring.test/phone", 5);
        presence(&mut t, "alice@ring.test/laptop", 5);
        t
    }

    #[test]
    fn delivery_table() {
        let t = table();
        let s = |ids: &[u64]| Delivery::Sessions(ids.to_vec());
        let e = Delivery::Error;
        let cases: &[(&str, Delivery)] = &[
            // exact full JIDs, even an unavailable one
            (
                "<message xmlns='jabber:client' to='alice@ring.test/idle' type='chat'/>",
                s(&[3]),
            ),
            (
                "<iq xmlns='jabber:client' to='alice@ring.test/laptop' type='get' id='1'/>",
                s(&[2]),
            ),
            // bare JID: the highest priority, all of them when they tie
            (
                "<message xmlns='jabber:client' to='alice@ring.test' type='chat'/>",
                s(&[1, 2]),
            ),
            (
                "<message xmlns='jabber:client' to='alice@ring.test'/>",
                s(&[1, 2]),
            ),
            // another full JID: chat falls back to the bare JID
            (
                "<message xmlns='jabber:client' to='alice@ring.test/gone' type='chat'/>",
                s(&[1, 2]),
            ),
            (
                "<message xmlns='jabber:client' to='alice@ring.test/gone' type='groupchat'/>",
                e(DefinedCondition::ServiceUnavailable),
            ),
            (
                "<message xmlns='jabber:client' to='alice@ring.test/gone' type='headline'/>",
                Delivery::Drop,
            ),
            (
                "<iq xmlns='jabber:client' to='alice@ring.test/gone' type='get' id='1'/>",
                e(DefinedCondition::ServiceUnavailable),
            ),
            (
                "<iq xmlns='jabber:client' to='alice@ring.test/gone' type='result' id='1'/>",
                Delivery::Drop,
            ),
            (
                "<presence xmlns='jabber:client' to='alice@ring.test/gone'/>",
                Delivery::Drop,
            ),
            // presence to the bare JID: every available session
            (
                "<presence xmlns='jabber:client' to='alice@ring.test'/>",
                s(&[1, 2]),
            ),
            (
                "<presence xmlns='jabber:client' to='alice@ring.test' type='subscribe'/>",
                Delivery::Drop,
            ),
            // IQs to the bare JID are the server's
            (
                "<iq xmlns='jabber:client' to='alice@ring.test' type='get' id='1'/>",
                e(DefinedCondition::ServiceUnavailable),
            ),
            // nobody there
            (
                "<message xmlns='jabber:client' to='bob@ring.test' type='chat'/>",
                e(DefinedCondition::ServiceUnavailable),
            ),
            (
                "<message xmlns='jabber:client' to='bob@ring.test' type='error'/>",
                Delivery::Drop,
            ),
            (
                "<presence xmlns='jabber:client' to='bob@ring.test'/>",
                Delivery::Drop,
            ),
            (
                "<message xmlns='jabber:client' to='a@b@c'/>",
                e(DefinedCondition::JidMalformed),
            ),
            (
                "<message xmlns='jabber:client'/>",
                e(DefinedCondition::JidMalformed),
            ),
        ];
        for (xml, want) in cases {
            assert_eq!(&t.deliver(&el(xml)), want, "{xml}");
        }
    }

    #[test]
    fn priorities_negative_and_unavailable_sessions() {
        let mut t = table();
        presence(&mut t, "alice@ring.test/laptop", 7);
        let chat = el("<message xmlns='jabber:client' to='alice@ring.test' type='chat'/>");
        assert_eq!(t.deliver(&chat), Delivery::Sessions(vec![2]));
        presence(&mut t, "alice@ring.test/laptop", -1);
        presence(&mut t, "alice@ring.test/phone", -1);
        // Negative priority: never a bare-JID message's target.
        assert_eq!(
            t.deliver(&chat),
            Delivery::Error(DefinedCondition::ServiceUnavailable)
        );
        presence(&mut t, "alice@ring.test/phone", 0);
        t.handle_presence(
            &full("alice@ring.test/phone"),
            &el("<presence xmlns='jabber:client' type='unavailable'/>"),
        );
        assert_eq!(
            t.deliver(&chat),
            Delivery::Error(DefinedCondition::ServiceUnavailable)
        );
        assert_eq!(
            t.available(&BareJid::new("alice@ring.test").expect("jid"))
                .len(),
            1
        );
    }

    #[test]
    fn binding_replaces_conflicts_and_bounds_resources() {
        let mut t = table();
        assert_eq!(
            t.bind(full("alice@ring.test/other"), 9),
            Err(DefinedCondition::ResourceConstraint)
        );
        // The same full JID again replaces the old session.
        assert_eq!(t.bind(full("alice@ring.test/phone"), 10), Ok(Some(1)));
        assert_eq!(t.session(&full("alice@ring.test/phone")), Some(10));
        // The replaced session's end does not unbind its successor.
        assert!(!t.unbind(&full("alice@ring.test/phone"), 1));
        assert!(t.unbind(&full("alice@ring.test/phone"), 10));
        assert_eq!(t.len(), 2);
        assert!(t.unbind(&full("alice@ring.test/laptop"), 2));
        assert!(t.unbind(&full("alice@ring.test/idle"), 3));
        assert!(t.is_empty());
    }
}
