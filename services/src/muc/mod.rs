//! Multi-user chat (XEP-0045) at `conference.<ring domain>`.
//!
//! Each room lives at the node responsible for its bare JID's key: every
//! stanza for `room@conference.example` or `room@conference.example/nick`
//! is routed there, so the host sees all of the room's traffic and needs no
//! coordination with other nodes. This module is the host's state machine:
//! stanzas in, [`Action`]s out, no I/O. The driver loads a room's
//! records from the record store before the first stanza (see
//! [`crate::services`] and [`RoomLoad`]) and writes back what
//! [`Muc::take_writes`] returns.

// Items named after XEP-0045/0060/0004 terms (roles, affiliations, form
// fields, namespaces) are documented by those XEPs.
#![allow(missing_docs)]

pub mod admin;
pub mod occupants;
mod relay;
mod roles;
pub mod room;

use super::stanza::{self, error_reply, iq_result};
use super::{Action, Write};
use crate::error::{Refused, StateError};
use crate::sharded::{self, ShardHeader, ShardLoad, Sharded};
use occupants::Occupants;
use ring_records::{MUC_HISTORY_PREFIX, MUC_OCCUPANTS_PREFIX, MUC_PREFIX};
use room::{Affiliation, NS_MUC, Occupant, Room, RoomState, StoredMessage};
use std::collections::{BTreeSet, HashMap};
use xmpp_parsers::disco::{DiscoInfoResult, DiscoItemsResult, Identity};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::muc::Muc as MucJoin;
use xmpp_parsers::muc::user::Status;
use xmpp_parsers::stanza_error::DefinedCondition;

pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";

/// Rooms waiting for the registry's answer at once.
const MAX_PENDING_CREATES: usize = 1024;
/// Presences kept per room waiting to be created.
const MAX_WAITING_PRESENCES: usize = 16;
/// A creation the registry has not answered in this long fails.
const CREATE_TIMEOUT_SECS: u64 = 30;
/// A room's history is written at most this often (seconds).
pub const HISTORY_WRITE_SECS: u64 = 1;

/// A room asked for but not yet granted by the service's registry.
struct PendingCreate {
    /// The presences that want the room, the creator's first.
    presences: Vec<Element>,
    since_unix: u64,
}

/// The rooms this node hosts.
pub struct Muc {
    rooms: HashMap<String, Room>,
    /// Rooms waiting for the registry (quotas) before they exist.
    pending: HashMap<String, PendingCreate>,
    /// The stanzas the last registry answer served (see
    /// [`Muc::take_answered`]).
    answered: Vec<Element>,
    /// Rooms whose main record changed since the last
    /// [`Muc::take_writes`].
    dirty_meta: BTreeSet<String>,
    /// Rooms whose occupants or history may have changed.
    touched: BTreeSet<String>,
    /// Records of rooms that are gone, to delete.
    removed: Vec<String>,
    /// This node's id (hex), written into the rooms it hosts.
    host: String,
    /// The record store's per-record limit: a room's main record, each
    /// occupant shard and its history stay under it.
    max_state_bytes: usize,
    /// For the occupant shards' salts (seeded by the driver).
    next_salt: u64,
}

/// The record holding `room`'s main state.
pub fn record_name(room: &str) -> String {
    format!("{MUC_PREFIX}{room}")
}

/// The base name of `room`'s occupant shards.
pub fn occupants_base(room: &str) -> String {
    format!("{MUC_OCCUPANTS_PREFIX}{room}")
}

/// The record holding `room`'s discussion history.
pub fn history_name(room: &str) -> String {
    format!("{MUC_HISTORY_PREFIX}{room}")
}

/// The records a room's load starts with: its main record and its
/// history (the occupant shards follow, see [`RoomLoad`]).
pub fn load_names(room: &str) -> Vec<String> {
    vec![record_name(room), history_name(room)]
}

/// A room being read from the store: its main record and history are in,
/// its occupant shards are being read.
pub struct RoomLoad {
    room: String,
    state: RoomState,
    history: Vec<StoredMessage>,
    occupants: ShardLoad<Occupant>,
}

impl crate::load::LoadRounds for RoomLoad {
    fn names(&self) -> Vec<String> {
        self.occupants.names()
    }

    fn offer(&mut self, values: &HashMap<String, Option<Vec<u8>>>) -> Result<(), StateError> {
        Ok(self.occupants.offer(values)?)
    }

    fn is_done(&self) -> bool {
        self.occupants.is_done()
    }
}

fn reply_error(st: &Element, condition: DefinedCondition, text: &str, out: &mut Vec<Action>) {
    out.extend(error_reply(st, condition, Some(text)).map(Action::Send));
}

/// A disco#info query in `st`, if that is what it is.
fn disco_query<'a>(st: &'a Element, ns: &str) -> Option<&'a Element> {
    (st.attr("type") == Some("get"))
        .then(|| st.get_child("query", ns))
        .flatten()
}

impl Muc {
    pub fn new(host: String, max_state_bytes: usize, seed: u64) -> Muc {
        Muc {
            rooms: HashMap::new(),
            pending: HashMap::new(),
            answered: Vec::new(),
            dirty_meta: BTreeSet::new(),
            touched: BTreeSet::new(),
            removed: Vec::new(),
            host,
            max_state_bytes,
            next_salt: seed,
        }
    }

    fn fresh_salt(&mut self) -> u64 {
        // A 64-bit LCG step, as for PubSub ids.
        self.next_salt = self
            .next_salt
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.next_salt
    }

    fn new_occupants(&mut self, room: &str) -> Occupants {
        let salt = self.fresh_salt();
        let limit = self.max_state_bytes;
        Occupants::from_set(Sharded::new(
            occupants_base(room),
            salt,
            sharded::budget_for(limit),
            limit,
        ))
    }

    /// Marks everything of `room` to be written.
    fn mark(&mut self, room: &str) {
        self.dirty_meta.insert(room.to_string());
        self.touched.insert(room.to_string());
    }

    /// Forgets `room` and deletes its records.
    fn forget(&mut self, room: &str) {
        if let Some(r) = self.rooms.remove(room) {
            self.removed.push(record_name(room));
            self.removed.push(history_name(room));
            self.removed.extend(r.occupants.all_names());
        }
        self.dirty_meta.remove(room);
        self.touched.remove(room);
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
        self.rooms.get(room).map_or(0, |r| r.occupants.len())
    }

    pub fn occupants(&self) -> usize {
        self.rooms.values().map(|r| r.occupants.len()).sum()
    }

    /// Starts reading a room: `meta` and `history` are its first records
    /// ([`load_names`]). `None` when there is nothing more to read (no
    /// such room, or it is loaded already).
    pub fn start_install(
        &mut self,
        room: &str,
        meta: Option<&[u8]>,
        history: Option<&[u8]>,
    ) -> Result<Option<RoomLoad>, StateError> {
        let Some(bytes) = meta.filter(|_| !self.rooms.contains_key(room)) else {
            return Ok(None);
        };
        let state: RoomState =
            serde_json::from_slice(bytes).map_err(|e| StateError::unreadable(room, e))?;
        // History is a convenience: unreadable, it starts empty.
        let history = history
            .and_then(|h| serde_json::from_slice(h).ok())
            .unwrap_or_default();
        // A record from before occupants were sharded: an empty set, with
        // a fresh salt, that the old list moves into.
        let header = match state.occupant_shards {
            Some(h) => h,
            None => ShardHeader {
                depth: 0,
                salt: self.fresh_salt(),
            },
        };
        let limit = self.max_state_bytes;
        Ok(Some(RoomLoad {
            room: room.to_string(),
            state,
            history,
            occupants: ShardLoad::new(
                occupants_base(room),
                header,
                sharded::budget_for(limit),
                limit,
            ),
        }))
    }

    /// Puts a room that has been read in memory.
    pub fn finish_install(&mut self, load: RoomLoad) {
        let RoomLoad {
            room,
            mut state,
            history,
            occupants,
        } = load;
        let mut occupants = Occupants::from_set(occupants.finish());
        let mut meta_changed = state.occupant_shards != Some(occupants.header());
        for o in std::mem::take(&mut state.legacy_occupants) {
            meta_changed = true;
            if let Err(e) = occupants.insert(o) {
                tracing::warn!(%room, "an occupant of an old record is dropped: {e}");
            }
        }
        let previous_host = (state.host != self.host).then(|| state.host.clone());
        if previous_host.is_some() {
            state.host = self.host.clone();
            meta_changed = true;
        }
        let mut r = Room::new(room.clone(), state, occupants);
        r.restore_history(history);
        r.previous_host = previous_host;
        self.rooms.insert(room.clone(), r);
        self.touched.insert(room.clone());
        if meta_changed {
            self.dirty_meta.insert(room);
        }
    }

    /// The host `room`'s stored state named when this node loaded it, if
    /// another (asked once, by the driver, to see whether it died).
    pub fn take_previous_host(&mut self, room: &str) -> Option<String> {
        self.rooms.get_mut(room)?.previous_host.take()
    }

    /// Takes over a loaded room whose host died: its occupants are told
    /// the room went away (status 332) so that they join again;
    /// configuration, affiliations, subject and history stay.
    pub fn take_over(&mut self, room: &str, out: &mut Vec<Action>) {
        if let Some(r) = self.rooms.get_mut(room)
            && !r.occupants.is_empty()
        {
            r.evict_all(None, out);
            self.mark(room);
        }
    }

    /// Forgets a room this node no longer hosts (its state is stored).
    pub fn unload(&mut self, room: &str) {
        self.rooms.remove(room);
        self.dirty_meta.remove(room);
        self.touched.remove(room);
    }

    /// The records to write: main records that changed, the occupant
    /// shards that changed, and histories last written at least
    /// [`HISTORY_WRITE_SECS`] ago (`now_unix`); deletions of rooms that
    /// are gone. History writes hold nothing up.
    pub fn take_writes(&mut self, now_unix: u64) -> Vec<Write> {
        let mut out: Vec<Write> = std::mem::take(&mut self.removed)
            .into_iter()
            .map(Write::delete)
            .collect();
        for room in std::mem::take(&mut self.dirty_meta) {
            let Some(r) = self.rooms.get_mut(&room) else {
                continue;
            };
            r.state.occupant_shards = Some(r.occupants.header());
            r.state.occupied = !r.occupants.is_empty();
            if let Ok(v) = serde_json::to_vec(&r.state) {
                out.push(Write::put(record_name(&room), v));
            }
        }
        let mut later = BTreeSet::new();
        for room in std::mem::take(&mut self.touched) {
            let Some(r) = self.rooms.get_mut(&room) else {
                continue;
            };
            out.extend(
                r.occupants
                    .take_writes()
                    .into_iter()
                    .map(|(n, v)| Write::put(n, v)),
            );
            if r.history_dirty {
                if now_unix >= r.history_written_unix + HISTORY_WRITE_SECS {
                    r.history_dirty = false;
                    r.history_written_unix = now_unix;
                    let stored = r.stored_history(self.max_state_bytes);
                    if let Ok(v) = serde_json::to_vec(&stored) {
                        out.push(Write::background(history_name(&room), v));
                    }
                } else {
                    later.insert(room);
                }
            }
        }
        self.touched = later;
        out
    }

    /// Whether a history waits to be written (the driver calls
    /// [`Muc::take_writes`] again within [`HISTORY_WRITE_SECS`]).
    pub fn history_pending(&self) -> bool {
        !self.touched.is_empty()
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
                return reply_error(
                    st,
                    DefinedCondition::ItemNotFound,
                    "no such disco node",
                    out,
                );
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
            reply_error(st, DefinedCondition::ServiceUnavailable, "not a room", out);
        }
    }

    /// A stanza for `room` (bare JID) or `room/nick`. The room's state has
    /// been loaded (or it does not exist).
    ///
    /// A step that would leave the room's state larger than its record may
    /// hold is undone, its outputs dropped and the sender told
    /// `resource-constraint`: nothing that cannot be stored is answered
    /// with success.
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
        let service = room.split_once('@').map_or("", |(_, s)| s);
        if let Some((item, answer)) = super::directory::parse_reserved(st, service) {
            if item == room {
                self.on_reserved(room, answer, now_unix, out);
            }
            return;
        }
        // Presences change only occupants, whose shards refuse what does
        // not fit; other changes may grow the main record, and are undone
        // when it would not fit.
        let meta_may_change = match st.name() {
            "presence" => false,
            "message" => {
                st.get_child("subject", xmpp_parsers::ns::JABBER_CLIENT)
                    .is_some()
                    || st.get_child("x", room::NS_MUC_USER).is_some()
            }
            _ => st.attr("type") == Some("set"),
        };
        let before = meta_may_change.then(|| self.rooms.get(room).cloned());
        let was_empty = self.rooms.get(room).map(|r| r.occupants.is_empty());
        let mark = out.len();
        let changed = match st.name() {
            "presence" => self.on_presence(room, nick, &from, st, now_unix, out),
            "message" => self.on_message(room, nick, &from, st, now_unix, out),
            _ => self.on_iq(room, nick, st, out),
        };
        if changed
            && let Some(before) = before
            && self.rooms.get(room).is_some_and(|r| {
                !r.destroyed
                    && serde_json::to_vec(&r.state).map_or(usize::MAX, |v| v.len())
                        > self.max_state_bytes
            })
        {
            out.truncate(mark);
            match before {
                Some(r) => {
                    self.rooms.insert(room.to_string(), r);
                }
                None => {
                    self.rooms.remove(room);
                    out.push(Action::Send(super::directory::release(service, room)));
                }
            }
            return reply_error(
                st,
                DefinedCondition::ResourceConstraint,
                "the room's state would exceed its storage limit (record_max_bytes)",
                out,
            );
        }
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        if r.destroyed || (r.occupants.is_empty() && !r.state.config.persistent) {
            self.forget(room);
            out.push(Action::Send(super::directory::release(service, room)));
            return;
        }
        // A split moves the occupants to a new depth, which the main
        // record names.
        let emptied_or_filled = was_empty != Some(r.occupants.is_empty())
            || r.state.occupant_shards != Some(r.occupants.header());
        if changed || r.history_dirty {
            self.touched.insert(room.to_string());
        }
        if (changed && meta_may_change) || emptied_or_filled {
            self.dirty_meta.insert(room.to_string());
        }
    }

    /// A presence that would create `room`: the service's registry must
    /// grant it first (quotas). It waits, with any other presence for the
    /// room that arrives meanwhile.
    fn request_create(&mut self, room: &str, st: &Element, now_unix: u64, out: &mut Vec<Action>) {
        if let Some(p) = self.pending.get_mut(room) {
            if p.presences.len() >= MAX_WAITING_PRESENCES {
                return reply_error(
                    st,
                    DefinedCondition::ResourceConstraint,
                    "too many joins waiting",
                    out,
                );
            }
            return p.presences.push(st.clone());
        }
        if self.pending.len() >= MAX_PENDING_CREATES {
            return reply_error(
                st,
                DefinedCondition::ResourceConstraint,
                "too many rooms being created",
                out,
            );
        }
        let owner = stanza::bare(st.attr("from").unwrap_or_default());
        let service = room.split_once('@').map_or("", |(_, s)| s);
        self.pending.insert(
            room.to_string(),
            PendingCreate {
                presences: vec![st.clone()],
                since_unix: now_unix,
            },
        );
        out.push(Action::Send(super::directory::reserve(
            service, room, &owner,
        )));
    }

    /// The registry answered for `room`: create it for the first presence
    /// (then let the others join), or refuse them all.
    fn on_reserved(
        &mut self,
        room: &str,
        answer: Result<(), Refused>,
        now_unix: u64,
        out: &mut Vec<Action>,
    ) {
        let Some(p) = self.pending.remove(room) else {
            return;
        };
        self.answered.extend(p.presences.iter().map(stanza::shell));
        if let Err(why) = answer {
            for st in &p.presences {
                reply_error(
                    st,
                    DefinedCondition::NotAllowed,
                    &format!("cannot create the room: {why}"),
                    out,
                );
            }
            return;
        }
        let mut presences = p.presences.into_iter();
        let Some(first) = presences.next() else {
            return;
        };
        if !self.rooms.contains_key(room) {
            self.create(room, &first, out);
        } else {
            self.handle(room, nick_of(&first).as_deref(), &first, now_unix, out);
        }
        for st in presences {
            self.handle(room, nick_of(&st).as_deref(), &st, now_unix, out);
        }
    }

    /// Creates `room` for the presence `st` (its sender becomes the owner),
    /// locked until the owner configures it (status 201).
    fn create(&mut self, room: &str, st: &Element, out: &mut Vec<Action>) {
        let from = st.attr("from").unwrap_or_default();
        let Some(nick) = nick_of(st) else {
            return;
        };
        let history = join_history(st);
        let occupants = self.new_occupants(room);
        let mut state = RoomState {
            config: Default::default(),
            locked: true,
            affiliations: Default::default(),
            subject: None,
            legacy_occupants: vec![],
            occupant_shards: Some(occupants.header()),
            occupied: true,
            host: self.host.clone(),
        };
        state
            .affiliations
            .insert(stanza::bare(from), Affiliation::Owner);
        let mut r = Room::new(room.to_string(), state, occupants);
        if let Err(e) = r.enter(from, &nick, st, true, history, out) {
            let service = room.split_once('@').map_or("", |(_, s)| s);
            out.push(Action::Send(super::directory::release(service, room)));
            return reply_error(
                st,
                DefinedCondition::ResourceConstraint,
                &e.to_string(),
                out,
            );
        }
        self.rooms.insert(room.to_string(), r);
        self.mark(room);
    }

    /// The users' stanzas a registry answer just served (they waited for
    /// it): the driver answers them if what they changed cannot be stored.
    pub fn take_answered(&mut self) -> Vec<Element> {
        std::mem::take(&mut self.answered)
    }

    /// Creations the registry did not answer in time fail.
    pub fn expire_pending(&mut self, now_unix: u64, out: &mut Vec<Action>) {
        let late: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| now_unix.saturating_sub(p.since_unix) >= CREATE_TIMEOUT_SECS)
            .map(|(r, _)| r.clone())
            .collect();
        for room in late {
            if let Some(p) = self.pending.remove(&room) {
                for st in &p.presences {
                    reply_error(
                        st,
                        DefinedCondition::RemoteServerTimeout,
                        "the service's registry did not answer",
                        out,
                    );
                }
            }
        }
    }

    fn on_presence(
        &mut self,
        room_jid: &str,
        nick: Option<&str>,
        from: &str,
        st: &Element,
        now_unix: u64,
        out: &mut Vec<Action>,
    ) -> bool {
        let room = self.rooms.get_mut(room_jid);
        match st.attr("type") {
            None => {}
            Some("unavailable") => {
                let Some(r) = room.filter(|r| r.by_jid(from).is_some()) else {
                    return false;
                };
                r.remove_occupant(from, &[], out);
                return true;
            }
            Some("error") => {
                let Some(r) = room.filter(|r| r.by_jid(from).is_some()) else {
                    return false;
                };
                r.remove_occupant(from, &[Status::ServiceErrorKick], out);
                return true;
            }
            // Probes and subscriptions to rooms are not answered.
            Some(_) => return false,
        }
        if jid::FullJid::new(from).is_err() {
            reply_error(
                st,
                DefinedCondition::JidMalformed,
                "rooms are joined from a full JID",
                out,
            );
            return false;
        }
        let Some(nick) = nick.filter(|n| !n.is_empty() && n.len() <= room::MAX_NICK_BYTES) else {
            reply_error(
                st,
                DefinedCondition::JidMalformed,
                "a room nickname is required",
                out,
            );
            return false;
        };
        let kept: usize = room::presence_children(st).iter().map(String::len).sum();
        if kept > room::MAX_PRESENCE_BYTES {
            reply_error(
                st,
                DefinedCondition::NotAcceptable,
                &format!(
                    "a presence in a room carries at most {} bytes",
                    room::MAX_PRESENCE_BYTES
                ),
                out,
            );
            return false;
        }
        let join = st
            .get_child("x", NS_MUC)
            .cloned()
            .and_then(|x| MucJoin::try_from(x).ok());
        let history = join_history(st);
        let Some(r) = room else {
            // A presence to a room that does not exist creates it once the
            // service's registry agrees (see `on_reserved`).
            self.request_create(room_jid, st, now_unix, out);
            return false;
        };
        if let Some(old) = r.by_jid(from).cloned() {
            if old.nick != nick && r.by_nick(nick).is_some() {
                reply_error(
                    st,
                    DefinedCondition::Conflict,
                    "that nickname is taken",
                    out,
                );
                return false;
            }
            let presence = room::presence_children(st);
            let Some(new) = r.occupants.update(from, |o| {
                o.nick = nick.to_string();
                o.presence = presence;
                o.clone()
            }) else {
                reply_error(
                    st,
                    DefinedCondition::ResourceConstraint,
                    "the room has reached its storage limit (record_max_bytes)",
                    out,
                );
                return false;
            };
            if old.nick != nick {
                // A nick change: unavailable with 303 from the old nick,
                // then available from the new one.
                r.broadcast_presence(&old, true, &[Status::NewNick], &[], Some(nick), out);
            }
            // A presence update (show, status), or the new nick.
            r.broadcast_presence(&new, false, &[], &[], None, out);
            return true;
        }
        let aff = r.affiliation(from);
        let refusal = if r.state.locked && aff != Affiliation::Owner {
            Some((
                DefinedCondition::ItemNotFound,
                "the room is locked until its owner configures it",
            ))
        } else if aff == Affiliation::Outcast {
            Some((DefinedCondition::Forbidden, "you are banned from this room"))
        } else if r.state.config.members_only && aff < Affiliation::Member {
            Some((
                DefinedCondition::RegistrationRequired,
                "this room is for members only",
            ))
        } else if r.by_nick(nick).is_some() {
            Some((DefinedCondition::Conflict, "that nickname is taken"))
        } else if r.state.config.password.is_some()
            && join.as_ref().and_then(|j| j.password.as_ref()) != r.state.config.password.as_ref()
        {
            Some((DefinedCondition::NotAuthorized, "a password is required"))
        } else if r.occupants.len() >= r.state.config.max_users && aff < Affiliation::Admin {
            Some((DefinedCondition::ServiceUnavailable, "the room is full"))
        } else {
            None
        };
        if let Some((condition, text)) = refusal {
            reply_error(st, condition, text, out);
            return false;
        }
        if r.enter(from, nick, st, false, history, out).is_err() {
            reply_error(
                st,
                DefinedCondition::ServiceUnavailable,
                "the room has reached its storage limit (record_max_bytes)",
                out,
            );
            return false;
        }
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
            reply_error(st, DefinedCondition::ItemNotFound, "no such room", out);
            return false;
        };
        let occupant = r.by_jid(from).map(|o| o.jid.clone());
        if st.attr("type") == Some("error") {
            // The occupant's server cannot deliver to it: it is gone.
            if let Some(jid) = occupant {
                r.remove_occupant(&jid, &[Status::ServiceErrorKick], out);
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
        let Some(sender) = occupant else {
            reply_error(
                st,
                DefinedCondition::NotAcceptable,
                "only occupants may send messages to the room",
                out,
            );
            return false;
        };
        if let Some(x) = x.filter(|x| x.get_child("invite", room::NS_MUC_USER).is_some()) {
            return r.invite(&sender, st, x, out);
        }
        match nick {
            Some(n) => {
                r.private_message(&sender, n, st, out);
                false
            }
            None if st.attr("type") == Some("groupchat") => {
                let before = r.state.subject.clone();
                r.groupchat(&sender, st, now_unix, out);
                r.state.subject != before
            }
            None => {
                reply_error(
                    st,
                    DefinedCondition::BadRequest,
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
                reply_error(st, DefinedCondition::ItemNotFound, "no such room", out);
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
            reply_error(st, DefinedCondition::ItemNotFound, "no such room", out);
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
            reply_error(st, DefinedCondition::BadRequest, "empty IQ", out);
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
        reply_error(
            st,
            DefinedCondition::ServiceUnavailable,
            "not supported by rooms",
            out,
        );
        false
    }
}

/// The nickname a presence to `room/nick` names.
fn nick_of(st: &Element) -> Option<String> {
    let to = jid::Jid::new(st.attr("to")?).ok()?;
    to.resource().map(|r| r.as_str().to_string())
}

/// The number of history messages a join asks for.
fn join_history(st: &Element) -> Option<usize> {
    st.get_child("x", NS_MUC)
        .cloned()
        .and_then(|x| MucJoin::try_from(x).ok())
        .and_then(|j| j.history)
        .and_then(|h| h.maxstanzas)
        .map(|n| n as usize)
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
