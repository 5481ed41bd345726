//! Multi-user chat (XEP-0045) at `conference.<ring domain>`.
//!
//! Each room lives at the node responsible for its bare JID's key: every
//! stanza for `room@conference.example` or `room@conference.example/nick`
//! is routed there, so the host sees all of the room's traffic and needs no
//! coordination with other nodes. This module is the host's state machine:
//! stanzas in, [`Action`]s out, no I/O. The driver loads a room's
//! [`room::RoomState`] from the record store before the first stanza (see
//! [`crate::xmpp::services`]) and writes back what [`Muc::take_writes`]
//! returns.

// Items named after XEP-0045/0060/0004 terms (roles, affiliations, form
// fields, namespaces) are documented by those XEPs.
#![allow(missing_docs)]

pub mod admin;
mod relay;
pub mod room;

use super::Action;
use super::stanza::{self, error_reply, iq_result};
use crate::records::MUC_PREFIX;
use room::{Affiliation, NS_MUC, Room, RoomState};
use std::collections::{BTreeSet, HashMap};
use xmpp_parsers::disco::{DiscoInfoResult, DiscoItemsResult, Identity};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::muc::Muc as MucJoin;
use xmpp_parsers::muc::user::Status;

pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";

/// The rooms this node hosts.
pub struct Muc {
    rooms: HashMap<String, Room>,
    /// Rooms whose state changed since the last [`Muc::take_writes`].
    dirty: BTreeSet<String>,
    /// This node's id (hex), written into the rooms it hosts.
    host: String,
    /// A room's stored state must stay under this (the record store's
    /// per-record limit): joins past it are refused.
    max_state_bytes: usize,
}

/// The record holding `room`'s state.
pub fn record_name(room: &str) -> String {
    format!("{MUC_PREFIX}{room}")
}

fn reply_error(st: &Element, condition: &str, text: &str, out: &mut Vec<Action>) {
    out.extend(error_reply(st, condition, Some(text)).map(Action::Send));
}

/// A disco#info query in `st`, if that is what it is.
fn disco_query<'a>(st: &'a Element, ns: &str) -> Option<&'a Element> {
    (st.attr("type") == Some("get"))
        .then(|| st.get_child("query", ns))
        .flatten()
}

impl Muc {
    pub fn new(host: String, max_state_bytes: usize) -> Muc {
        Muc {
            rooms: HashMap::new(),
            dirty: BTreeSet::new(),
            host,
            max_state_bytes,
        }
    }

    pub fn is_loaded(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Rooms in memory.
    pub fn rooms(&self) -> impl Iterator<Item = &String> {
        self.rooms.keys()
    }

    /// Occupants of `room` (0 if it is not loaded).
    pub fn occupants_of(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |r| r.state.occupants.len())
    }

    pub fn occupants(&self) -> usize {
        self.rooms.values().map(|r| r.state.occupants.len()).sum()
    }

    /// Puts a room's stored state in memory (`None`: there is no room).
    pub fn install(&mut self, room: &str, value: Option<&[u8]>) -> Result<(), String> {
        let Some(bytes) = value.filter(|_| !self.rooms.contains_key(room)) else {
            return Ok(());
        };
        let mut state: RoomState = serde_json::from_slice(bytes)
            .map_err(|e| format!("stored state of {room} is unreadable: {e}"))?;
        if state.host != self.host {
            state.host = self.host.clone();
            self.dirty.insert(room.to_string());
        }
        self.rooms
            .insert(room.to_string(), Room::new(room.to_string(), state));
        Ok(())
    }

    /// Takes over a room whose host died: its occupants are told the room
    /// went away (status 332) so that they join again; configuration,
    /// affiliations and subject stay.
    pub fn take_over(
        &mut self,
        room: &str,
        value: &[u8],
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        self.install(room, Some(value))?;
        if let Some(r) = self.rooms.get_mut(room)
            && !r.state.occupants.is_empty()
        {
            r.evict_all(None, out);
            self.dirty.insert(room.to_string());
        }
        Ok(())
    }

    /// Forgets a room this node no longer hosts (its state is stored).
    pub fn unload(&mut self, room: &str) {
        self.rooms.remove(room);
        self.dirty.remove(room);
    }

    /// The records to write: `(name, Some(value))`, or `None` to delete.
    pub fn take_writes(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|room| {
                let value = self
                    .rooms
                    .get(&room)
                    .and_then(|r| serde_json::to_vec(&r.state).ok());
                (record_name(&room), value)
            })
            .collect()
    }

    /// How `room` appears in the service's directory: its name when it is
    /// public and open, else `None`.
    pub fn listing(&self, room: &str) -> Option<String> {
        let r = self.rooms.get(room)?;
        (r.state.config.public && !r.state.locked && !r.destroyed).then(|| r.display_name())
    }

    /// A stanza for the service itself (`conference.<domain>`); `listed`:
    /// the directory's public rooms (JID, name).
    pub fn handle_service(&self, st: &Element, listed: &[(String, String)], out: &mut Vec<Action>) {
        if let Some(q) = disco_query(st, NS_DISCO_INFO) {
            if q.attr("node").is_some() {
                return reply_error(st, "item-not-found", "no such disco node", out);
            }
            let info = stanza::disco_info(
                None,
                "conference",
                "text",
                "Chatrooms",
                &[NS_DISCO_INFO, NS_DISCO_ITEMS, NS_MUC],
            );
            return out.push(Action::Send(iq_result(st, Some(info))));
        }
        if disco_query(st, NS_DISCO_ITEMS).is_some() {
            let items = DiscoItemsResult {
                node: None,
                items: listed
                    .iter()
                    .filter_map(|(room, name)| {
                        Some(xmpp_parsers::disco::Item {
                            jid: jid::Jid::new(room).ok()?,
                            node: None,
                            name: Some(name.clone()),
                        })
                    })
                    .collect(),
                rsm: None,
            };
            return out.push(Action::Send(iq_result(st, Some(items.into()))));
        }
        if st.name() != "presence" {
            reply_error(st, "service-unavailable", "not a room", out);
        }
    }

    /// A stanza for `room` (bare JID) or `room/nick`. The room's state has
    /// been loaded (or it does not exist).
    pub fn handle(
        &mut self,
        room: &str,
        nick: Option<&str>,
        st: &Element,
        now_unix: u64,
        out: &mut Vec<Action>,
    ) {
        let Some(from) = st.attr("from").map(str::to_string) else {
            return;
        };
        let changed = match st.name() {
            "presence" => self.on_presence(room, nick, &from, st, out),
            "message" => self.on_message(room, nick, &from, st, now_unix, out),
            _ => self.on_iq(room, nick, st, out),
        };
        if let Some(r) = self.rooms.get(room)
            && (r.destroyed || (r.state.occupants.is_empty() && !r.state.config.persistent))
        {
            self.rooms.remove(room);
            self.dirty.insert(room.to_string());
        } else if changed {
            self.dirty.insert(room.to_string());
        }
    }

    fn on_presence(
        &mut self,
        room_jid: &str,
        nick: Option<&str>,
        from: &str,
        st: &Element,
        out: &mut Vec<Action>,
    ) -> bool {
        let room = self.rooms.get_mut(room_jid);
        match st.attr("type") {
            None => {}
            Some("unavailable") => {
                let Some(r) = room else { return false };
                let Some(i) = r.by_jid(from) else {
                    return false;
                };
                r.remove_occupant(i, &[], out);
                return true;
            }
            Some("error") => {
                let Some(r) = room else { return false };
                let Some(i) = r.by_jid(from) else {
                    return false;
                };
                r.remove_occupant(i, &[Status::ServiceErrorKick], out);
                return true;
            }
            // Probes and subscriptions to rooms are not answered.
            Some(_) => return false,
        }
        let Some(nick) = nick.filter(|n| !n.is_empty() && n.len() <= room::MAX_NICK_BYTES) else {
            reply_error(st, "jid-malformed", "a room nickname is required", out);
            return false;
        };
        let join = st
            .get_child("x", NS_MUC)
            .cloned()
            .and_then(|x| MucJoin::try_from(x).ok());
        let history = join
            .as_ref()
            .and_then(|j| j.history.as_ref())
            .and_then(|h| h.maxstanzas)
            .map(|n| n as usize);
        let Some(r) = room else {
            // A presence to a room that does not exist creates it, locked
            // until its owner configures it (status 201).
            let mut state = RoomState {
                config: Default::default(),
                locked: true,
                affiliations: Default::default(),
                subject: None,
                occupants: vec![],
                host: self.host.clone(),
            };
            state
                .affiliations
                .insert(stanza::bare(from), Affiliation::Owner);
            let mut r = Room::new(room_jid.to_string(), state);
            r.enter(from, nick, st, true, history, out);
            self.rooms.insert(room_jid.to_string(), r);
            return true;
        };
        if let Some(i) = r.by_jid(from) {
            if r.state.occupants[i].nick == nick {
                // A presence update (show, status).
                r.state.occupants[i].presence = room::presence_children(st);
                let o = r.state.occupants[i].clone();
                r.broadcast_presence(&o, false, &[], &[], None, out);
                return true;
            }
            if r.by_nick(nick).is_some() {
                reply_error(st, "conflict", "that nickname is taken", out);
                return false;
            }
            // A nick change: unavailable with 303 from the old nick, then
            // available from the new one.
            let old = r.state.occupants[i].clone();
            r.broadcast_presence(&old, true, &[Status::NewNick], &[], Some(nick), out);
            r.state.occupants[i].nick = nick.to_string();
            r.state.occupants[i].presence = room::presence_children(st);
            let new = r.state.occupants[i].clone();
            r.broadcast_presence(&new, false, &[], &[], None, out);
            return true;
        }
        let aff = r.affiliation(from);
        let refusal = if r.state.locked && aff != Affiliation::Owner {
            Some((
                "item-not-found",
                "the room is locked until its owner configures it",
            ))
        } else if aff == Affiliation::Outcast {
            Some(("forbidden", "you are banned from this room"))
        } else if r.state.config.members_only && aff < Affiliation::Member {
            Some(("registration-required", "this room is for members only"))
        } else if r.by_nick(nick).is_some() {
            Some(("conflict", "that nickname is taken"))
        } else if r.state.config.password.is_some()
            && join.as_ref().and_then(|j| j.password.as_ref()) != r.state.config.password.as_ref()
        {
            Some(("not-authorized", "a password is required"))
        } else if r.state.occupants.len() >= r.state.config.max_users && aff < Affiliation::Admin {
            Some(("service-unavailable", "the room is full"))
        } else if serde_json::to_vec(&r.state).map_or(usize::MAX, |v| v.len())
            + from.len()
            + nick.len()
            + room::presence_children(st)
                .iter()
                .map(String::len)
                .sum::<usize>()
            + 128
            > self.max_state_bytes
        {
            Some((
                "service-unavailable",
                "the room has reached its storage limit (record_max_bytes)",
            ))
        } else {
            None
        };
        if let Some((condition, text)) = refusal {
            reply_error(st, condition, text, out);
            return false;
        }
        r.enter(from, nick, st, false, history, out);
        true
    }

    fn on_message(
        &mut self,
        room_jid: &str,
        nick: Option<&str>,
        from: &str,
        st: &Element,
        now_unix: u64,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(r) = self.rooms.get_mut(room_jid) else {
            reply_error(st, "item-not-found", "no such room", out);
            return false;
        };
        let occupant = r.by_jid(from);
        if st.attr("type") == Some("error") {
            // The occupant's server cannot deliver to it: it is gone.
            if let Some(i) = occupant {
                r.remove_occupant(i, &[Status::ServiceErrorKick], out);
                return true;
            }
            return false;
        }
        let x = st
            .get_child("x", room::NS_MUC_USER)
            .filter(|_| nick.is_none() && st.attr("type") != Some("groupchat"));
        if let Some(x) = x.filter(|x| x.get_child("decline", room::NS_MUC_USER).is_some()) {
            r.decline(from, x, out);
            return false;
        }
        let Some(i) = occupant else {
            reply_error(
                st,
                "not-acceptable",
                "only occupants may send messages to the room",
                out,
            );
            return false;
        };
        if let Some(x) = x.filter(|x| x.get_child("invite", room::NS_MUC_USER).is_some()) {
            return r.invite(i, st, x, out);
        }
        match nick {
            Some(n) => {
                r.private_message(i, n, st, out);
                false
            }
            None if st.attr("type") == Some("groupchat") => {
                let before = r.state.subject.clone();
                r.groupchat(i, st, now_unix, out);
                r.state.subject != before
            }
            None => {
                reply_error(
                    st,
                    "bad-request",
                    "messages to the room must be of type groupchat",
                    out,
                );
                false
            }
        }
    }

    fn on_iq(
        &mut self,
        room_jid: &str,
        nick: Option<&str>,
        st: &Element,
        out: &mut Vec<Action>,
    ) -> bool {
        if let Some(n) = nick {
            if let Some(r) = self.rooms.get(room_jid) {
                r.relay_iq(n, st, out);
            } else {
                reply_error(st, "item-not-found", "no such room", out);
            }
            return false;
        }
        if stanza::is_error_or_result(st) {
            return false;
        }
        let from = st.attr("from").unwrap_or_default();
        let Some(r) = self
            .rooms
            .get_mut(room_jid)
            .filter(|r| !r.state.locked || r.affiliation(from) == Affiliation::Owner)
        else {
            reply_error(st, "item-not-found", "no such room", out);
            return false;
        };
        if disco_query(st, NS_DISCO_INFO).is_some() {
            let info = room_info(r);
            out.push(Action::Send(iq_result(st, Some(info.into()))));
            return false;
        }
        if disco_query(st, NS_DISCO_ITEMS).is_some() {
            let items = DiscoItemsResult {
                node: None,
                items: vec![],
                rsm: None,
            };
            out.push(Action::Send(iq_result(st, Some(items.into()))));
            return false;
        }
        let Some(query) = st.children().next() else {
            reply_error(st, "bad-request", "empty IQ", out);
            return false;
        };
        if query.is("query", admin::NS_MUC_OWNER) {
            let q = query.clone();
            return r.owner_iq(st, &q, out);
        }
        if query.is("query", admin::NS_MUC_ADMIN) {
            let q = query.clone();
            return r.admin_iq(st, &q, out);
        }
        reply_error(st, "service-unavailable", "not supported by rooms", out);
        false
    }
}

/// disco#info of a room: its identity and the `muc_*` features of its
/// configuration.
fn room_info(r: &Room) -> DiscoInfoResult {
    let c = &r.state.config;
    let pick = |cond: bool, yes: &str, no: &str| if cond { yes } else { no }.to_string();
    let name = r.display_name();
    DiscoInfoResult {
        node: None,
        identities: vec![Identity::new("conference", "text", "en", name)],
        features: vec![
            NS_MUC.to_string(),
            NS_DISCO_INFO.to_string(),
            pick(c.public, "muc_public", "muc_hidden"),
            pick(c.persistent, "muc_persistent", "muc_temporary"),
            pick(c.members_only, "muc_membersonly", "muc_open"),
            pick(c.moderated, "muc_moderated", "muc_unmoderated"),
            pick(c.whois_anyone, "muc_nonanonymous", "muc_semianonymous"),
            pick(
                c.password.is_some(),
                "muc_passwordprotected",
                "muc_unsecured",
            ),
        ]
        .into_iter()
        .collect(),
        extensions: vec![],
    }
}

#[cfg(test)]
mod tests;
