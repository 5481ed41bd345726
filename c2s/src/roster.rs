//! A user's roster and presence subscriptions (RFC 6121 §2–3), without
//! I/O: the home node keeps one [`Roster`] per user in the record
//! `roster:<bare JID>`, feeds it the user's roster IQs and the
//! subscription presences going out from and coming in to the user, and
//! carries out the [`Effects`]: the reply, roster pushes to every session
//! of the user, stanzas to send on, stanzas for the user's sessions.
//!
//! Subscription states are RFC 6121's: `none`, `to`, `from`, `both`, with
//! `ask='subscribe'` for an outbound request not yet answered. An inbound
//! request waits in `pending_in` (not a roster item) until the user
//! approves or denies it, and is shown again at each login.

use jid::{BareJid, Jid};
use ring_services::stanza::set as set_attr;
use serde::{Deserialize, Serialize};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

/// The roster namespace.
pub const NS_ROSTER: &str = "jabber:iq:roster";
/// The record name prefix of rosters.
pub use ring_records::ROSTER_PREFIX;

/// Items one roster holds.
pub const MAX_ITEMS: usize = 1000;
/// Inbound requests waiting at once.
pub const MAX_PENDING: usize = 200;
/// Bytes of an item's name.
pub const MAX_NAME_BYTES: usize = 1024;
/// Groups of one item, and bytes of each.
pub const MAX_GROUPS: usize = 16;

/// One contact.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The contact's bare JID.
    pub jid: String,
    /// The user's name for it.
    pub name: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// The user receives the contact's presence.
    pub to: bool,
    /// The contact receives the user's presence.
    pub from: bool,
    /// A subscription request to the contact is unanswered.
    pub ask: bool,
    /// The user approved the contact's subscription before it was asked
    /// for (RFC 6121 §3.4): a request from the contact is answered at once.
    #[serde(default)]
    pub approved: bool,
}

impl Item {
    fn subscription(&self) -> &'static str {
        match (self.to, self.from) {
            (true, true) => "both",
            (true, false) => "to",
            (false, true) => "from",
            (false, false) => "none",
        }
    }

    fn to_xml(&self) -> Element {
        let mut el = Element::bare("item", NS_ROSTER);
        set_attr(&mut el, "jid", &self.jid);
        set_attr(&mut el, "subscription", self.subscription());
        if let Some(n) = &self.name {
            set_attr(&mut el, "name", n);
        }
        if self.ask {
            set_attr(&mut el, "ask", "subscribe");
        }
        if self.approved {
            set_attr(&mut el, "approved", "true");
        }
        for g in &self.groups {
            let mut group = Element::bare("group", NS_ROSTER);
            group.append_text_node(g.clone());
            el.append_child(group);
        }
        el
    }
}

/// A user's roster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    /// Contacts, in the order they were added.
    pub items: Vec<Item>,
    /// Bare JIDs whose subscription requests wait for an answer.
    pub pending_in: Vec<String>,
    /// Roster version (XEP-0237): one more with every change.
    #[serde(default)]
    pub version: u64,
}

/// What a roster operation asks the home node to do.
#[derive(Debug, Default, PartialEq)]
pub struct Effects {
    /// The answer to an IQ.
    pub reply: Option<Element>,
    /// Items changed: push each to every session of the user.
    pub pushes: Vec<Element>,
    /// Stanzas to send on (to contacts), `from` the user's bare JID.
    pub send: Vec<Element>,
    /// Deliver the stanza being handled to the user's sessions.
    pub deliver: bool,
    /// The roster changed: store it.
    pub changed: bool,
}

/// A presence of `ty` from `from` to `to` (bare JIDs).
fn presence(ty: &str, from: &str, to: &str) -> Element {
    let mut p = Element::bare("presence", ring_services::stanza::NS_CLIENT);
    set_attr(&mut p, "type", ty);
    set_attr(&mut p, "from", from);
    set_attr(&mut p, "to", to);
    p
}

/// The bare JID of a stanza's `from` or `to`.
fn bare_of(st: &Element, attr: &str) -> Option<BareJid> {
    Jid::new(st.attr(attr)?).ok().map(|j| j.to_bare())
}

impl Roster {
    /// The record name of `bare`'s roster.
    pub fn record_name(bare: &str) -> String {
        format!("{ROSTER_PREFIX}{bare}")
    }

    /// Reads a record value (absent or unreadable: empty).
    pub fn decode(bytes: Option<&[u8]>) -> Roster {
        bytes
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default()
    }

    /// The record value.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn item(&self, jid: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.jid == jid)
    }

    fn item_mut(&mut self, jid: &str) -> Option<&mut Item> {
        self.items.iter_mut().find(|i| i.jid == jid)
    }

    /// The item of `jid`, added (with no subscription) when missing;
    /// `None` when the roster is full.
    fn item_or_new(&mut self, jid: &str) -> Option<&mut Item> {
        match self.items.iter().position(|i| i.jid == jid) {
            Some(pos) => self.items.get_mut(pos),
            None if self.items.len() >= MAX_ITEMS => None,
            None => {
                self.items.push(Item {
                    jid: jid.to_string(),
                    ..Item::default()
                });
                self.items.last_mut()
            }
        }
    }

    /// Contacts that receive the user's presence (`from` or `both`).
    pub fn presence_subscribers(&self) -> Vec<String> {
        self.items
            .iter()
            .filter(|i| i.from)
            .map(|i| i.jid.clone())
            .collect()
    }

    /// Contacts whose presence the user receives (`to` or `both`).
    pub fn presence_sources(&self) -> Vec<String> {
        self.items
            .iter()
            .filter(|i| i.to)
            .map(|i| i.jid.clone())
            .collect()
    }

    /// Whether `contact` may see the user's presence.
    pub fn shares_with(&self, contact: &str) -> bool {
        self.item(contact).is_some_and(|i| i.from)
    }

    /// Whether the user receives `contact`'s presence.
    pub fn receives_from(&self, contact: &str) -> bool {
        self.item(contact).is_some_and(|i| i.to)
    }

    /// The waiting inbound requests, as presences for a new session.
    pub fn pending_requests(&self, user: &BareJid) -> Vec<Element> {
        self.pending_in
            .iter()
            .map(|c| presence("subscribe", c, user.as_str()))
            .collect()
    }

    /// A roster push of `item` (removal when `removed`).
    fn push(item: &Item, removed: bool) -> Element {
        let mut iq = Element::bare("iq", ring_services::stanza::NS_CLIENT);
        set_attr(&mut iq, "type", "set");
        set_attr(&mut iq, "id", &format!("push-{}", item.jid));
        let mut q = Element::bare("query", NS_ROSTER);
        let mut el = item.to_xml();
        if removed {
            set_attr(&mut el, "subscription", "remove");
        }
        q.append_child(el);
        iq.append_child(q);
        iq
    }

    /// A change counts: the version goes up and the pushes carry it.
    fn versioned(&mut self, mut fx: Effects) -> Effects {
        if fx.changed {
            self.version += 1;
            let ver = self.version.to_string();
            for push in &mut fx.pushes {
                if let Some(q) = push.get_child_mut("query", NS_ROSTER) {
                    set_attr(q, "ver", &ver);
                }
            }
        }
        fx
    }

    /// A roster IQ from one of `user`'s sessions. A get naming the
    /// current version (XEP-0237) is answered with an empty result.
    pub fn handle_iq(&mut self, user: &BareJid, iq: &Element) -> Effects {
        let fx = self.handle_iq_unversioned(user, iq);
        self.versioned(fx)
    }

    fn handle_iq_unversioned(&mut self, user: &BareJid, iq: &Element) -> Effects {
        let mut fx = Effects::default();
        let err = |c| ring_services::stanza::error_reply(iq, c, None);
        let Some(query) = iq.get_child("query", NS_ROSTER) else {
            fx.reply = err(DefinedCondition::BadRequest);
            return fx;
        };
        match iq.attr("type") {
            Some("get") => {
                if query.attr("ver") == Some(self.version.to_string().as_str()) {
                    fx.reply = Some(ring_services::stanza::iq_result(iq, None));
                    return fx;
                }
                let mut q = Element::bare("query", NS_ROSTER);
                set_attr(&mut q, "ver", &self.version.to_string());
                for i in &self.items {
                    q.append_child(i.to_xml());
                }
                fx.reply = Some(ring_services::stanza::iq_result(iq, Some(q)));
            }
            Some("set") => match self.set(user, query) {
                Ok(mut set) => {
                    set.reply = Some(ring_services::stanza::iq_result(iq, None));
                    fx = set;
                }
                Err(c) => fx.reply = err(c),
            },
            _ => fx.reply = err(DefinedCondition::BadRequest),
        }
        fx
    }

    fn set(&mut self, user: &BareJid, query: &Element) -> Result<Effects, DefinedCondition> {
        let mut fx = Effects::default();
        let mut items = query.children().filter(|c| c.is("item", NS_ROSTER));
        let (Some(el), None) = (items.next(), items.next()) else {
            return Err(DefinedCondition::BadRequest);
        };
        let jid = el
            .attr("jid")
            .and_then(|j| BareJid::new(j).ok())
            .ok_or(DefinedCondition::BadRequest)?;
        if jid == *user {
            return Err(DefinedCondition::NotAllowed);
        }
        let jid = jid.to_string();
        if el.attr("subscription") == Some("remove") {
            let Some(pos) = self.items.iter().position(|i| i.jid == jid) else {
                return Err(DefinedCondition::ItemNotFound);
            };
            let item = self.items.remove(pos);
            if item.to || item.ask {
                fx.send.push(presence("unsubscribe", user.as_str(), &jid));
            }
            if item.from {
                fx.send.push(presence("unsubscribed", user.as_str(), &jid));
            }
            fx.pushes.push(Roster::push(&item, true));
            fx.changed = true;
            return Ok(fx);
        }
        let name = el.attr("name").map(str::to_string);
        if name.as_ref().is_some_and(|n| n.len() > MAX_NAME_BYTES) {
            return Err(DefinedCondition::NotAcceptable);
        }
        let groups: Vec<String> = el
            .children()
            .filter(|c| c.is("group", NS_ROSTER))
            .map(|g| g.text())
            .collect();
        if groups.len() > MAX_GROUPS
            || groups
                .iter()
                .any(|g| g.is_empty() || g.len() > MAX_NAME_BYTES)
        {
            return Err(DefinedCondition::NotAcceptable);
        }
        let item = self
            .item_or_new(&jid)
            .ok_or(DefinedCondition::ResourceConstraint)?;
        item.name = name;
        item.groups = groups;
        let pushed = Roster::push(item, false);
        fx.pushes.push(pushed);
        fx.changed = true;
        Ok(fx)
    }

    /// A subscription presence `user` sends to a contact (RFC 6121 §3,
    /// the user's server's part). `send` holds it when it is to go on.
    pub fn outbound(&mut self, user: &BareJid, st: &Element) -> Effects {
        let fx = self.outbound_unversioned(user, st);
        self.versioned(fx)
    }

    fn outbound_unversioned(&mut self, user: &BareJid, st: &Element) -> Effects {
        let mut fx = Effects::default();
        let Some(contact) = bare_of(st, "to") else {
            return fx;
        };
        if contact == *user {
            return fx;
        }
        let c = contact.to_string();
        let forward = presence(st.attr("type").unwrap_or_default(), user.as_str(), &c);
        match st.attr("type") {
            Some("subscribe") => {
                let Some(i) = self.item_or_new(&c) else {
                    return fx;
                };
                if !i.to && !i.ask {
                    i.ask = true;
                    fx.pushes.push(Roster::push(i, false));
                    fx.changed = true;
                }
                fx.send.push(forward);
            }
            Some("subscribed") => {
                let Some(pos) = self.pending_in.iter().position(|p| *p == c) else {
                    // Nothing asked: a pre-approval (RFC 6121 §3.4), kept
                    // on the item, not sent.
                    if self.shares_with(&c) {
                        return fx;
                    }
                    if let Some(i) = self.item_or_new(&c)
                        && !i.approved
                    {
                        i.approved = true;
                        fx.pushes.push(Roster::push(i, false));
                        fx.changed = true;
                    }
                    return fx;
                };
                self.pending_in.remove(pos);
                fx.changed = true;
                if let Some(i) = self.item_or_new(&c) {
                    i.from = true;
                    fx.pushes.push(Roster::push(i, false));
                }
                fx.send.push(forward);
            }
            Some("unsubscribe") => {
                self.end_to(&c, &mut fx);
                fx.send.push(forward);
            }
            Some("unsubscribed") => {
                self.end_from(&c, &mut fx);
                fx.send.push(forward);
            }
            _ => {}
        }
        fx
    }

    /// A subscription presence a contact sends to `user` (RFC 6121 §3,
    /// the contact's server's part). `deliver`: the user's sessions see it.
    pub fn inbound(&mut self, user: &BareJid, st: &Element) -> Effects {
        let fx = self.inbound_unversioned(user, st);
        self.versioned(fx)
    }

    fn inbound_unversioned(&mut self, user: &BareJid, st: &Element) -> Effects {
        let mut fx = Effects::default();
        let Some(contact) = bare_of(st, "from") else {
            return fx;
        };
        let c = contact.to_string();
        match st.attr("type") {
            Some("subscribe") => {
                if self.shares_with(&c) {
                    // Already approved: answer for the user.
                    fx.send.push(presence("subscribed", user.as_str(), &c));
                } else if let Some(i) = self.item_mut(&c).filter(|i| i.approved) {
                    // Pre-approved: approved now, for the user.
                    i.approved = false;
                    i.from = true;
                    fx.pushes.push(Roster::push(i, false));
                    fx.changed = true;
                    fx.send.push(presence("subscribed", user.as_str(), &c));
                } else if !self.pending_in.contains(&c) {
                    if self.pending_in.len() >= MAX_PENDING {
                        return fx;
                    }
                    self.pending_in.push(c);
                    fx.changed = true;
                    fx.deliver = true;
                } else {
                    fx.deliver = true;
                }
            }
            Some("subscribed") => {
                if let Some(i) = self.item_mut(&c)
                    && i.ask
                {
                    i.ask = false;
                    i.to = true;
                    fx.pushes.push(Roster::push(i, false));
                    fx.changed = true;
                    fx.deliver = true;
                }
            }
            Some("unsubscribe") => fx.deliver = self.end_from(&c, &mut fx),
            Some("unsubscribed") => fx.deliver = self.end_to(&c, &mut fx),
            _ => {}
        }
        fx
    }

    /// The contact `c` no longer gets the user's presence: its waiting
    /// request and the item's `from` go. Whether the item changed.
    fn end_from(&mut self, c: &str, fx: &mut Effects) -> bool {
        if let Some(pos) = self.pending_in.iter().position(|p| p == c) {
            self.pending_in.remove(pos);
            fx.changed = true;
        }
        let Some(i) = self.item_mut(c).filter(|i| i.from) else {
            return false;
        };
        i.from = false;
        fx.pushes.push(Roster::push(i, false));
        fx.changed = true;
        true
    }

    /// The user no longer gets (or asks for) `c`'s presence: the item's
    /// `to` and `ask` go. Whether the item changed.
    fn end_to(&mut self, c: &str, fx: &mut Effects) -> bool {
        let Some(i) = self.item_mut(c).filter(|i| i.to || i.ask) else {
            return false;
        };
        i.to = false;
        i.ask = false;
        fx.pushes.push(Roster::push(i, false));
        fx.changed = true;
        true
    }
}

/// Whether a presence is a subscription presence.
pub fn is_subscription(st: &Element) -> bool {
    st.name() == "presence"
        && matches!(
            st.attr("type"),
            Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")
        )
}

/// Whether a stanza is a roster IQ.
pub fn is_roster_iq(st: &Element) -> bool {
    st.name() == "iq" && st.get_child("query", NS_ROSTER).is_some()
}

#[cfg(test)]
mod tests;
