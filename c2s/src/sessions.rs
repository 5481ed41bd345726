//! The sessions of a node's users and where a stanza for one of them goes
//! (RFC 6121 §8.5), without I/O: the node keeps a handle per session id
//! and does what [`SessionTable::deliver`] says.
//!
//! A session is [`Place::Here`] (a client connected to this node) or
//! [`Place::There`] (on another access node, which leases it to this node,
//! the user's home node: [`SessionTable::handle_lease`]; a lease not
//! renewed expires, so a dead access node's sessions vanish within the
//! lease time).
//!
//! Availability and priority come from each session's broadcast presence
//! ([`SessionTable::handle_presence`], or the lease): a bound session that
//! has not sent initial presence receives stanzas to its full JID only.
//!
//! Delivery rules, for a user this node holds sessions for:
//! * to a full JID whose session exists: that session;
//! * to another full JID: a `chat`/`normal` message is treated as sent to
//!   the bare JID; a `groupchat` message and an IQ get `service-unavailable`;
//!   presence and `headline` messages are dropped;
//! * to the bare JID: a `chat`/`normal` message goes to the available
//!   sessions of the highest non-negative priority (all of them if they
//!   tie); `headline` to every non-negative one; presence (also
//!   subscription presence, also to another full JID) to every available
//!   one; with none there, messages get `service-unavailable`
//!   (which the node turns into offline storage when it can); IQs are the server's to answer on the
//!   user's behalf (`service-unavailable` for now); errors are never
//!   answered.

use jid::{BareJid, FullJid, Jid};
use std::collections::HashMap;
use std::time::Instant;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

/// Where a session's client is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Place<N> {
    /// To this node: the session's id.
    Here(u64),
    /// To the access node `N`.
    There(N),
}

/// One bound session.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry<N> {
    full: FullJid,
    place: Place<N>,
    available: bool,
    priority: i8,
    /// When a leased session expires (`None`: a session of this node).
    expires: Option<Instant>,
}

/// A stanza's target: a session, and where it is.
pub type Target<N> = (FullJid, Place<N>);

/// Where a stanza goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery<N> {
    /// To these sessions.
    Sessions(Vec<Target<N>>),
    /// Answer the sender with this error.
    Error(DefinedCondition),
    /// Nowhere, silently (RFC 6121 says so for this case).
    Drop,
}

/// Every session `keep` says yes to, or nothing (silently) when none is.
fn to_all<N: Clone>(entries: &[Entry<N>], keep: impl Fn(&Entry<N>) -> bool) -> Delivery<N> {
    let ids: Vec<Target<N>> = entries
        .iter()
        .filter(|e| keep(e))
        .map(|e| (e.full.clone(), e.place.clone()))
        .collect();
    if ids.is_empty() {
        Delivery::Drop
    } else {
        Delivery::Sessions(ids)
    }
}

/// The sessions of the users this node holds.
#[derive(Debug)]
pub struct SessionTable<N> {
    users: HashMap<BareJid, Vec<Entry<N>>>,
    max_resources: usize,
}

impl<N: Clone + Eq> SessionTable<N> {
    /// An empty table allowing `max_resources` sessions per user.
    pub fn new(max_resources: usize) -> SessionTable<N> {
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
        let fresh = Entry {
            full: full.clone(),
            place: Place::Here(id),
            available: false,
            priority: 0,
            expires: None,
        };
        let list = self.users.entry(full.to_bare()).or_default();
        if let Some(e) = list.iter_mut().find(|e| e.full == full) {
            let old = match e.place {
                Place::Here(old) => Some(old),
                // Another access node's session under the same full JID:
                // this newer login wins; that node's lease stops counting.
                Place::There(_) => None,
            };
            *e = fresh;
            return Ok(old);
        }
        if list.len() >= self.max_resources {
            return Err(DefinedCondition::ResourceConstraint);
        }
        list.push(fresh);
        Ok(None)
    }

    /// A lease from access node `node` for its session `full`: created or
    /// renewed until `expires`, with its availability and priority. A
    /// session of this node's own under that full JID wins (it is
    /// newer, or the lease is stale). Refused at the resource limit.
    pub fn handle_lease(
        &mut self,
        node: N,
        full: FullJid,
        available: bool,
        priority: i8,
        expires: Instant,
    ) -> Result<(), DefinedCondition> {
        let list = self.users.entry(full.to_bare()).or_default();
        let entry = Entry {
            full: full.clone(),
            place: Place::There(node.clone()),
            available,
            priority,
            expires: Some(expires),
        };
        let count = list.len();
        match list.iter_mut().find(|e| e.full == full) {
            Some(e) if matches!(e.place, Place::Here(_)) => Ok(()),
            Some(e) => {
                *e = entry;
                Ok(())
            }
            None if count >= self.max_resources => Err(DefinedCondition::ResourceConstraint),
            None => {
                list.push(entry);
                Ok(())
            }
        }
    }

    /// Access node `node` says its session `full` ended.
    pub fn handle_lease_end(&mut self, node: &N, full: &FullJid) {
        self.remove(full, |p| matches!(p, Place::There(n) if n == node));
    }

    /// Drops the leases that were not renewed in time; returns their full
    /// JIDs.
    pub fn expire(&mut self, now: Instant) -> Vec<FullJid> {
        let mut gone = Vec::new();
        self.users.retain(|_, list| {
            list.retain(|e| {
                let keep = e.expires.is_none_or(|t| t > now);
                if !keep {
                    gone.push(e.full.clone());
                }
                keep
            });
            !list.is_empty()
        });
        gone
    }

    /// Every session of `bare` (available or not), here or leased.
    pub fn sessions(&self, bare: &BareJid) -> Vec<FullJid> {
        self.users
            .get(bare)
            .map(|l| l.iter().map(|e| e.full.clone()).collect())
            .unwrap_or_default()
    }

    /// This node's own sessions, with their availability and priority
    /// (for the leases it sends their home nodes).
    pub fn local(&self) -> Vec<(FullJid, u64, bool, i8)> {
        self.users
            .values()
            .flatten()
            .filter_map(|e| match e.place {
                Place::Here(id) => Some((e.full.clone(), id, e.available, e.priority)),
                Place::There(_) => None,
            })
            .collect()
    }

    fn remove(&mut self, full: &FullJid, which: impl Fn(&Place<N>) -> bool) -> bool {
        let bare = full.to_bare();
        let Some(list) = self.users.get_mut(&bare) else {
            return false;
        };
        let before = list.len();
        list.retain(|e| !(e.full == *full && which(&e.place)));
        let removed = list.len() != before;
        if list.is_empty() {
            self.users.remove(&bare);
        }
        removed
    }

    /// Session `id` ended; false if `full` is bound to another session now
    /// (it was replaced) or not at all.
    pub fn unbind(&mut self, full: &FullJid, id: u64) -> bool {
        self.remove(full, |p| *p == Place::Here(id))
    }

    /// A presence one of this node's sessions broadcast (no `to`):
    /// available with its priority, or unavailable.
    pub fn handle_presence(&mut self, from: &FullJid, presence: &Element) {
        let Some(e) = self
            .users
            .get_mut(&from.to_bare())
            .and_then(|l| l.iter_mut().find(|e| e.full == *from))
            .filter(|e| matches!(e.place, Place::Here(_)))
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

    /// Where the session bound to `full` is, if anywhere.
    pub fn session(&self, full: &FullJid) -> Option<Place<N>> {
        self.users
            .get(&full.to_bare())?
            .iter()
            .find(|e| e.full == *full)
            .map(|e| e.place.clone())
    }

    /// This node's own session bound to `full`, if any.
    pub fn local_session(&self, full: &FullJid) -> Option<u64> {
        match self.session(full)? {
            Place::Here(id) => Some(id),
            Place::There(_) => None,
        }
    }

    /// Whether `bare` has any session here or leased.
    pub fn knows(&self, bare: &BareJid) -> bool {
        self.users.contains_key(bare)
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
    pub fn deliver(&self, stanza: &Element) -> Delivery<N> {
        let Some(Ok(to)) = stanza.attr("to").map(Jid::new) else {
            return Delivery::Error(DefinedCondition::JidMalformed);
        };
        let kind = stanza.name();
        let ty = stanza.attr("type");
        if ty == Some("error") {
            // Errors go to the exact session or nowhere.
            return match to.try_as_full() {
                Ok(f) => match self.session(f) {
                    Some(p) => Delivery::Sessions(vec![(f.clone(), p)]),
                    None => Delivery::Drop,
                },
                Err(_) => Delivery::Drop,
            };
        }
        if let Ok(full) = to.try_as_full()
            && let Some(p) = self.session(full)
        {
            return Delivery::Sessions(vec![(full.clone(), p)]);
        }
        let bare = to.to_bare();
        let to_full = to.is_full();
        let entries = self.users.get(&bare).map(Vec::as_slice).unwrap_or(&[]);
        match kind {
            "message" => match ty.unwrap_or("normal") {
                "groupchat" => Delivery::Error(DefinedCondition::ServiceUnavailable),
                "headline" if to_full => Delivery::Drop,
                "headline" => to_all(entries, |e| e.available && e.priority >= 0),
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
                                .map(|e| (e.full.clone(), e.place.clone()))
                                .collect(),
                        ),
                        None => Delivery::Error(DefinedCondition::ServiceUnavailable),
                    }
                }
            },
            "presence" => match ty {
                // Subscription presence: every available session (the
                // roster has already been updated by the home node).
                Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed") => {
                    to_all(entries, |e| e.available)
                }
                _ if to_full => Delivery::Drop,
                None | Some("unavailable") => to_all(entries, |e| e.available),
                // Probes are the home node's to answer; others are invalid.
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
    use std::time::Duration;

    /// Access nodes are named by a number in these tests.
    type Table = SessionTable<u8>;

    fn full(s: &str) -> FullJid {
        FullJid::new(s).expect("full JID")
    }

    fn el(xml: &str) -> Element {
        xml.parse().expect("xml")
    }

    fn presence(t: &mut Table, who: &str, priority: i8) {
        t.handle_presence(
            &full(who),
            &el(&format!(
                "<presence xmlns='jabber:client'><priority>{priority}</priority></presence>"
            )),
        );
    }

    /// alice: phone (here, id 1, priority 5), laptop (here, id 2,
    /// priority 5), idle (here, id 3, no presence yet).
    fn table() -> Table {
        let mut t = Table::new(4);
        assert_eq!(t.bind(full("alice@ring.test/phone"), 1), Ok(None));
        assert_eq!(t.bind(full("alice@ring.test/laptop"), 2), Ok(None));
        assert_eq!(t.bind(full("alice@ring.test/idle"), 3), Ok(None));
        presence(&mut t, "alice@ring.test/phone", 5);
        presence(&mut t, "alice@ring.test/laptop", 5);
        t
    }

    fn here(who: &str, id: u64) -> Target<u8> {
        (full(who), Place::Here(id))
    }

    #[test]
    fn delivery_table() {
        let t = table();
        let s = |ids: &[Target<u8>]| Delivery::Sessions(ids.to_vec());
        let e = Delivery::Error;
        let phone = here("alice@ring.test/phone", 1);
        let laptop = here("alice@ring.test/laptop", 2);
        let idle = here("alice@ring.test/idle", 3);
        let cases: &[(&str, Delivery<u8>)] = &[
            // exact full JIDs, even an unavailable one
            (
                "<message xmlns='jabber:client' to='alice@ring.test/idle' type='chat'/>",
                s(&[idle]),
            ),
            (
                "<iq xmlns='jabber:client' to='alice@ring.test/laptop' type='get' id='1'/>",
                s(std::slice::from_ref(&laptop)),
            ),
            // bare JID: the highest priority, all of them when they tie
            (
                "<message xmlns='jabber:client' to='alice@ring.test' type='chat'/>",
                s(&[phone.clone(), laptop.clone()]),
            ),
            (
                "<message xmlns='jabber:client' to='alice@ring.test'/>",
                s(&[phone.clone(), laptop.clone()]),
            ),
            // headlines to the bare JID: every non-negative session
            (
                "<message xmlns='jabber:client' to='alice@ring.test' type='headline'/>",
                s(&[phone.clone(), laptop.clone()]),
            ),
            // another full JID: chat falls back to the bare JID
            (
                "<message xmlns='jabber:client' to='alice@ring.test/gone' type='chat'/>",
                s(&[phone.clone(), laptop.clone()]),
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
                s(&[phone.clone(), laptop.clone()]),
            ),
            (
                "<presence xmlns='jabber:client' to='alice@ring.test' type='subscribe'/>",
                s(&[phone.clone(), laptop.clone()]),
            ),
            (
                "<presence xmlns='jabber:client' to='alice@ring.test/gone' type='subscribed'/>",
                s(&[phone.clone(), laptop.clone()]),
            ),
            (
                "<presence xmlns='jabber:client' to='alice@ring.test' type='probe'/>",
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
        assert_eq!(
            t.deliver(&chat),
            Delivery::Sessions(vec![here("alice@ring.test/laptop", 2)])
        );
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
        assert_eq!(t.bind(full("alice@ring.test/fourth"), 4), Ok(None));
        assert_eq!(
            t.bind(full("alice@ring.test/other"), 9),
            Err(DefinedCondition::ResourceConstraint)
        );
        // The same full JID again replaces the old session.
        assert_eq!(t.bind(full("alice@ring.test/phone"), 10), Ok(Some(1)));
        assert_eq!(t.local_session(&full("alice@ring.test/phone")), Some(10));
        // The replaced session's end does not unbind its successor.
        assert!(!t.unbind(&full("alice@ring.test/phone"), 1));
        assert!(t.unbind(&full("alice@ring.test/phone"), 10));
        assert_eq!(t.len(), 3);
        for (r, id) in [("laptop", 2), ("idle", 3), ("fourth", 4)] {
            assert!(t.unbind(&full(&format!("alice@ring.test/{r}")), id));
        }
        assert!(t.is_empty());
    }

    #[test]
    fn leased_sessions_of_other_access_nodes_count_until_they_expire() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut t = table();
        // bob on access node 7, alice's tablet on node 8 with the top
        // priority.
        t.handle_lease(7, full("bob@ring.test/pc"), true, 0, t0 + ttl)
            .expect("lease");
        t.handle_lease(8, full("alice@ring.test/tablet"), true, 9, t0 + ttl)
            .expect("lease");
        let to_bob = el("<message xmlns='jabber:client' to='bob@ring.test' type='chat'/>");
        assert_eq!(
            t.deliver(&to_bob),
            Delivery::Sessions(vec![(full("bob@ring.test/pc"), Place::There(7))])
        );
        let to_alice = el("<message xmlns='jabber:client' to='alice@ring.test' type='chat'/>");
        assert_eq!(
            t.deliver(&to_alice),
            Delivery::Sessions(vec![(full("alice@ring.test/tablet"), Place::There(8))])
        );
        // Leases count against the resource limit (alice has 3 here + 1).
        assert_eq!(
            t.handle_lease(8, full("alice@ring.test/fifth"), true, 0, t0 + ttl),
            Err(DefinedCondition::ResourceConstraint)
        );
        // Renewed: still there after the first term.
        t.handle_lease(7, full("bob@ring.test/pc"), true, 0, t0 + 2 * ttl)
            .expect("renew");
        assert_eq!(t.expire(t0 + ttl), vec![full("alice@ring.test/tablet")]);
        assert!(matches!(t.deliver(&to_bob), Delivery::Sessions(_)));
        // alice's tablet expired: her own sessions here are the targets.
        assert_eq!(
            t.deliver(&to_alice),
            Delivery::Sessions(vec![
                here("alice@ring.test/phone", 1),
                here("alice@ring.test/laptop", 2)
            ])
        );
        // An ended lease is gone at once; another node cannot end it.
        t.handle_lease_end(&8, &full("bob@ring.test/pc"));
        assert!(matches!(t.deliver(&to_bob), Delivery::Sessions(_)));
        t.handle_lease_end(&7, &full("bob@ring.test/pc"));
        assert_eq!(
            t.deliver(&to_bob),
            Delivery::Error(DefinedCondition::ServiceUnavailable)
        );
        // A lease never overrides a session of this node's own, and local()
        // lists only those.
        t.handle_lease(9, full("alice@ring.test/phone"), false, -5, t0 + ttl)
            .expect("lease");
        assert_eq!(t.local_session(&full("alice@ring.test/phone")), Some(1));
        assert_eq!(t.local().len(), 3);
        // A newer local login replaces a leased one.
        t.handle_lease(9, full("carol@ring.test/x"), true, 0, t0 + ttl)
            .expect("lease");
        assert_eq!(t.bind(full("carol@ring.test/x"), 20), Ok(None));
        assert_eq!(t.local_session(&full("carol@ring.test/x")), Some(20));
        assert_eq!(t.expire(t0 + 3 * ttl), Vec::<FullJid>::new());
        assert_eq!(
            t.sessions(&BareJid::new("carol@ring.test").expect("jid"))
                .len(),
            1
        );
    }
}
