//! One multi-user chat room (XEP-0045): who is in it and what they may
//! do, and what the room sends when someone joins, talks, changes nick or
//! leaves.
//!
//! What survives the host is stored in three kinds of record (see
//! [`super::Muc::take_writes`]), so that the node next in line holds a
//! fresh copy when the host dies:
//!
//! * [`RoomState`] (`muc:<room>`): configuration, affiliations, subject,
//!   the host and where the occupants are; written when one of them
//!   changes;
//! * the occupants ([`super::occupants::Occupants`], `muc-occ:<room>#..`),
//!   sharded, each join or presence change rewriting one small shard;
//! * the discussion history (`muc-hist:<room>`), bounded by the room's
//!   configuration and the record limit, written at most once a second
//!   whatever the message rate. Messages are sent without waiting for
//!   it: a failover loses at most the last second of history, never a
//!   message.

// Items named after XEP-0045/0060/0004 terms (roles, affiliations, form
// fields, namespaces) are documented by those XEPs.
#![allow(missing_docs)]

pub use super::occupants::Occupant;
use super::occupants::Occupants;
pub use super::roles::{Affiliation, Role};
use crate::Action;
use crate::sharded::{ShardError, ShardHeader};
use crate::stanza::NS_CLIENT;
use crate::stanza::{self, bare, error_reply};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::muc::user::{Item, MucUser, Role as XRole, Status};
use xmpp_parsers::stanza_error::DefinedCondition;

pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";

/// Longest nickname accepted (bytes).
pub const MAX_NICK_BYTES: usize = 256;
/// Most messages kept for history, whatever the configuration says.
pub const MAX_HISTORY: usize = 100;
/// Longest subject (bytes).
pub const MAX_SUBJECT_BYTES: usize = 4096;
/// Most bytes of an occupant's presence (show, status, caps) the room keeps
/// and repeats.
pub const MAX_PRESENCE_BYTES: usize = 4096;
/// Most invitations in one message.
pub const MAX_INVITES: usize = 16;

/// The owner-settable configuration (`muc#roomconfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    pub persistent: bool,
    pub public: bool,
    pub members_only: bool,
    pub moderated: bool,
    pub password: Option<String>,
    pub max_users: usize,
    pub history: usize,
    /// Real JIDs visible to every occupant (non-anonymous) instead of to
    /// moderators only (semi-anonymous).
    pub whois_anyone: bool,
    /// Participants, not only moderators, may change the subject.
    pub change_subject: bool,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password: None,
            max_users: 1000,
            history: 20,
            whois_anyone: false,
            change_subject: false,
        }
    }
}

/// What the record store keeps of a room.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoomState {
    pub config: RoomConfig,
    /// A new room stays locked until its owner configures it (XEP-0045
    /// §10.1): nobody else can enter.
    pub locked: bool,
    /// Affiliations by bare JID (absent means `none`).
    pub affiliations: BTreeMap<String, Affiliation>,
    /// The subject and the nick that set it.
    pub subject: Option<(String, String)>,
    /// The occupants of a record written before they were sharded (moved
    /// to shards when the room loads).
    #[serde(default, rename = "occupants", skip_serializing_if = "Vec::is_empty")]
    pub legacy_occupants: Vec<Occupant>,
    /// Where the occupants are stored (absent in older records).
    #[serde(default)]
    pub occupant_shards: Option<ShardHeader>,
    /// Whether the room had occupants when this was written: a successor
    /// knows it must take the room over without reading the shards.
    #[serde(default)]
    pub occupied: bool,
    /// The id (hex) of the node that last hosted the room.
    pub host: String,
}

impl RoomState {
    /// Whether the stored room had occupants.
    pub fn has_occupants(&self) -> bool {
        self.occupied || !self.legacy_occupants.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct HistoryEntry {
    pub message: Element,
    pub stamp_unix: u64,
}

/// One stored history message: (Unix time, serialised stanza).
pub type StoredMessage = (u64, String);

#[derive(Clone)]
pub struct Room {
    /// The room's bare JID (normalised).
    pub jid: String,
    pub state: RoomState,
    pub occupants: Occupants,
    pub history: VecDeque<HistoryEntry>,
    /// The history changed since it was last written.
    pub history_dirty: bool,
    /// When the history was last written (Unix seconds).
    pub history_written_unix: u64,
    /// Destroyed: the record is to be deleted and the room forgotten.
    pub destroyed: bool,
    /// The host the stored state named when this node loaded it, if it
    /// was another (see [`super::Muc::take_previous_host`]).
    pub previous_host: Option<String>,
}

/// Builds an element in the client namespace with attributes.
pub fn el(name: &str, attrs: &[(&str, &str)]) -> Element {
    let mut e = Element::bare(name, NS_CLIENT);
    for (k, v) in attrs {
        stanza::set(&mut e, k, v);
    }
    e
}

impl Room {
    pub fn new(jid: String, state: RoomState, occupants: Occupants) -> Room {
        Room {
            jid,
            state,
            occupants,
            history: VecDeque::new(),
            history_dirty: false,
            history_written_unix: 0,
            destroyed: false,
            previous_host: None,
        }
    }

    /// The history as stored: the newest messages that fit `max_bytes`.
    pub fn stored_history(&self, max_bytes: usize) -> Vec<StoredMessage> {
        let mut out: Vec<StoredMessage> = Vec::new();
        // `[`, `]` and per entry `[stamp,"..."],`.
        let mut bytes: usize = 2;
        for h in self.history.iter().rev() {
            let text = crate::stanza::to_string(&h.message);
            let cost = serde_json::to_string(&text).map_or(usize::MAX, |t| t.len()) + 24;
            if bytes.saturating_add(cost) > max_bytes {
                break;
            }
            bytes += cost;
            out.push((h.stamp_unix, text));
        }
        out.reverse();
        out
    }

    /// Puts stored history back (unreadable messages are skipped).
    pub fn restore_history(&mut self, stored: Vec<StoredMessage>) {
        let cap = self.state.config.history.min(MAX_HISTORY);
        self.history = stored
            .into_iter()
            .filter_map(|(stamp_unix, text)| {
                Some(HistoryEntry {
                    message: text.parse().ok()?,
                    stamp_unix,
                })
            })
            .collect();
        while self.history.len() > cap {
            self.history.pop_front();
        }
    }

    /// The configured name, or the room's local part.
    pub fn display_name(&self) -> String {
        if self.state.config.name.is_empty() {
            self.jid.split('@').next().unwrap_or_default().to_string()
        } else {
            self.state.config.name.clone()
        }
    }

    pub fn occupant_jid(&self, nick: &str) -> String {
        format!("{}/{}", self.jid, nick)
    }

    pub fn affiliation(&self, jid: &str) -> Affiliation {
        self.state
            .affiliations
            .get(&bare(jid))
            .copied()
            .unwrap_or(Affiliation::None)
    }

    /// The occupant whose real JID is `jid`.
    pub fn by_jid(&self, jid: &str) -> Option<&Occupant> {
        self.occupants.get(jid)
    }

    /// The occupant called `nick`.
    pub fn by_nick(&self, nick: &str) -> Option<&Occupant> {
        self.occupants.by_nick(nick)
    }

    /// The role a user of `affiliation` gets on entering.
    pub fn default_role(&self, affiliation: Affiliation) -> Role {
        match affiliation {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            _ if self.state.config.moderated => Role::Visitor,
            _ => Role::Participant,
        }
    }

    /// The presence the room sends about `occ` (from `room/nick`).
    /// `with_jid`: the receiver may see the occupant's real JID.
    pub fn presence_of(
        &self,
        occ: &Occupant,
        unavailable: bool,
        with_jid: bool,
        statuses: Vec<Status>,
        new_nick: Option<&str>,
    ) -> Element {
        let mut p = el("presence", &[("from", &self.occupant_jid(&occ.nick))]);
        if unavailable {
            stanza::set(&mut p, "type", "unavailable");
        } else {
            for child in &occ.presence {
                if let Ok(c) = child.parse::<Element>() {
                    p.append_child(c);
                }
            }
        }
        // Built directly (not through xmpp-parsers' `MucUser`): a join to a
        // big room builds one of these per occupant, and this is the
        // join's main cost. The occupant's JID was checked on entry.
        let aff = self.affiliation(&occ.jid);
        let role = if unavailable { Role::None } else { occ.role };
        let mut item = Element::bare("item", NS_MUC_USER);
        stanza::set(&mut item, "affiliation", aff.as_str());
        stanza::set(&mut item, "role", role.as_str());
        if with_jid {
            stanza::set(&mut item, "jid", &occ.jid);
        }
        if let Some(n) = new_nick {
            stanza::set(&mut item, "nick", n);
        }
        let mut x = Element::bare("x", NS_MUC_USER);
        x.append_child(item);
        for s in statuses {
            x.append_child(s.into());
        }
        p.append_child(x);
        p
    }

    /// Tells every occupant about `occ` (itself included, with status 110
    /// and `self_statuses`). `others_statuses` go to everyone.
    pub fn broadcast_presence(
        &self,
        occ: &Occupant,
        unavailable: bool,
        others_statuses: &[Status],
        self_statuses: &[Status],
        new_nick: Option<&str>,
        out: &mut Vec<Action>,
    ) {
        let mut with_jid = Vec::new();
        let mut without_jid = Vec::new();
        for o in self.occupants.iter() {
            if o.jid == occ.jid {
                continue;
            }
            if self.state.config.whois_anyone || o.role == Role::Moderator {
                with_jid.push(o.jid.clone());
            } else {
                without_jid.push(o.jid.clone());
            }
        }
        for (to, jid) in [(with_jid, true), (without_jid, false)] {
            if !to.is_empty() {
                let stanza =
                    self.presence_of(occ, unavailable, jid, others_statuses.to_vec(), new_nick);
                out.push(Action::Broadcast { stanza, to });
            }
        }
        let mut statuses = others_statuses.to_vec();
        statuses.push(Status::SelfPresence);
        statuses.extend_from_slice(self_statuses);
        let mut p = self.presence_of(occ, unavailable, true, statuses, new_nick);
        stanza::set(&mut p, "to", &occ.jid);
        out.push(Action::Send(p));
    }

    /// Takes the occupant `jid` out of the room, telling everyone
    /// (`statuses` say why: 301 banned, 307 kicked, 321/322 affiliation,
    /// 333 error).
    pub fn remove_occupant(&mut self, jid: &str, statuses: &[Status], out: &mut Vec<Action>) {
        let Some(occ) = self.occupants.get(jid).cloned() else {
            return;
        };
        self.broadcast_presence(&occ, true, statuses, &[], None, out);
        self.occupants.remove(jid);
    }

    /// Enters `from` as `nick` (the checks are done). `created`: the join
    /// created the room. `history_max`: the stanzas the user asked for.
    /// Refused, with nothing sent, when the occupant cannot be stored.
    pub fn enter(
        &mut self,
        from: &str,
        nick: &str,
        presence: &Element,
        created: bool,
        history_max: Option<usize>,
        out: &mut Vec<Action>,
    ) -> Result<(), ShardError> {
        let aff = self.affiliation(from);
        let occ = Occupant {
            nick: nick.to_string(),
            jid: from.to_string(),
            role: self.default_role(aff),
            presence: presence_children(presence),
        };
        let sees_jids = self.state.config.whois_anyone || occ.role == Role::Moderator;
        self.occupants.insert(occ.clone())?;
        // 1. The occupants already there, to the newcomer.
        for o in self.occupants.iter().filter(|o| o.jid != from) {
            let mut p = self.presence_of(o, false, sees_jids, vec![], None);
            stanza::set(&mut p, "to", from);
            out.push(Action::Send(p));
        }
        // 2. The newcomer to everyone, itself last (with 110).
        let mut own = Vec::new();
        if self.state.config.whois_anyone {
            own.push(Status::NonAnonymousRoom);
        }
        if created {
            own.push(Status::RoomHasBeenCreated);
        }
        self.broadcast_presence(&occ, false, &[], &own, None, out);
        // 3. History, then the subject (always, possibly empty).
        let max = history_max
            .unwrap_or(self.state.config.history)
            .min(self.state.config.history);
        let skip = self.history.len().saturating_sub(max);
        for h in self.history.iter().skip(skip) {
            let mut m = h.message.clone();
            stanza::set(&mut m, "to", from);
            let mut delay = Element::bare("delay", "urn:xmpp:delay");
            stanza::set(&mut delay, "from", &self.jid);
            stanza::set(&mut delay, "stamp", &utc_stamp(h.stamp_unix));
            m.append_child(delay);
            out.push(Action::Send(m));
        }
        let (snick, text) = self.state.subject.clone().unwrap_or_default();
        let from_subject = if snick.is_empty() {
            self.jid.clone()
        } else {
            self.occupant_jid(&snick)
        };
        let mut m = el(
            "message",
            &[("from", &from_subject), ("to", from), ("type", "groupchat")],
        );
        let mut s = Element::bare("subject", NS_CLIENT);
        s.append_text(&text);
        m.append_child(s);
        out.push(Action::Send(m));
        Ok(())
    }

    /// A groupchat message from the occupant `jid`: a subject change or a
    /// message for everyone.
    pub fn groupchat(&mut self, jid: &str, msg: &Element, now_unix: u64, out: &mut Vec<Action>) {
        let Some(occ) = self.occupants.get(jid).cloned() else {
            return;
        };
        if occ.role < Role::Participant {
            return out.extend(
                error_reply(
                    msg,
                    DefinedCondition::Forbidden,
                    Some("visitors may not speak"),
                )
                .map(Action::Send),
            );
        }
        let subject = msg.get_child("subject", NS_CLIENT);
        let has_body = msg.get_child("body", NS_CLIENT).is_some();
        if let Some(s) = subject.filter(|_| !has_body) {
            if s.text().len() > MAX_SUBJECT_BYTES {
                return out.extend(
                    error_reply(
                        msg,
                        DefinedCondition::NotAcceptable,
                        Some(&format!("a subject has at most {MAX_SUBJECT_BYTES} bytes")),
                    )
                    .map(Action::Send),
                );
            }
            if occ.role != Role::Moderator && !self.state.config.change_subject {
                return out.extend(
                    error_reply(
                        msg,
                        DefinedCondition::Forbidden,
                        Some("only moderators may change the subject"),
                    )
                    .map(Action::Send),
                );
            }
            self.state.subject = Some((occ.nick.clone(), s.text()));
        }
        let mut m = msg.clone();
        stanza::unset(&mut m, "to");
        stanza::set(&mut m, "from", &self.occupant_jid(&occ.nick));
        if has_body {
            self.history.push_back(HistoryEntry {
                message: m.clone(),
                stamp_unix: now_unix,
            });
            let cap = self.state.config.history.min(MAX_HISTORY);
            while self.history.len() > cap {
                self.history.pop_front();
            }
            self.history_dirty = true;
        }
        let to = self.occupants.jids();
        out.push(Action::Broadcast { stanza: m, to });
    }

    /// Tells every occupant that the room is gone (`destroy`: the XEP's
    /// `<destroy/>` element, or `None` for a service shutdown, status 332)
    /// and empties it.
    pub fn evict_all(&mut self, destroy: Option<Element>, out: &mut Vec<Action>) {
        for occ in self.occupants.drain() {
            let mut p = el(
                "presence",
                &[
                    ("from", &self.occupant_jid(&occ.nick)),
                    ("to", &occ.jid),
                    ("type", "unavailable"),
                ],
            );
            let aff = self.affiliation(&occ.jid);
            let mut x = MucUser::new()
                .with_items(vec![Item::new(aff.to_x(), XRole::None)])
                .with_statuses(vec![Status::SelfPresence]);
            if destroy.is_none() {
                x.status.push(Status::ServiceShutdown);
            }
            let mut x: Element = x.into();
            if let Some(d) = &destroy {
                x.append_child(d.clone());
            }
            p.append_child(x);
            out.push(Action::Send(p));
        }
    }
}

/// The presence children the room repeats (not the MUC join element).
pub fn presence_children(p: &Element) -> Vec<String> {
    p.children()
        .filter(|c| !c.is("x", NS_MUC) && !c.is("x", NS_MUC_USER))
        .map(crate::stanza::to_string)
        .collect()
}

/// `YYYY-MM-DDThh:mm:ssZ` (XEP-0082) for a Unix time.
pub fn utc_stamp(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps() {
        assert_eq!(utc_stamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_stamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_stamp(1_795_651_199), "2026-11-25T23:59:59Z");
    }

    #[test]
    fn ranks_order_as_the_xep_says() {
        assert!(Affiliation::Owner > Affiliation::Admin);
        assert!(Affiliation::Member > Affiliation::None);
        assert!(Affiliation::None > Affiliation::Outcast);
        assert!(Role::Moderator > Role::Participant);
        for a in ["owner", "admin", "member", "none", "outcast"] {
            assert_eq!(Affiliation::parse(a).unwrap().as_str(), a);
        }
        assert_eq!(Affiliation::parse("god"), None);
    }
}
