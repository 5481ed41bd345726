//! The home node's side of rosters and presence: the roster of each of
//! its users is the record `roster:<bare JID>`, read and written here
//! (locally, as the key's coordinator, then replicated);
//! [`crate::roster`] decides what each roster IQ and subscription presence
//! changes and what follows from it; this file carries that out and fans
//! presence out to contacts.
//!
//! * A session's broadcast presence comes here first (an outbound
//!   envelope): it goes to the user's own available sessions and to every
//!   contact with a `from` or `both` subscription; the first available
//!   presence of a session also probes the contacts the user is subscribed
//!   to and shows it the requests still waiting.
//! * The last available presence of each session is kept here to answer
//!   probes; when a session ends (its lease ends or expires) its contacts
//!   get unavailable presence.

use super::{HomeRecords, Pending, SessionHost};
use crate::Account;
use crate::lease::Outbound;
use crate::online::{Listed, Online, OnlineSessions, PRESENCE_PREFIX};
use crate::roster::{self, Effects, Roster};
use jid::{BareJid, FullJid, Jid};
use ring_records::RecordOp;
use ring_services::stanza::set as set_attr;
use std::time::Instant;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// Stored presence records looked at per lease period.
const PRESENCE_SWEEP_BATCH: usize = 256;

impl SessionHost {
    fn load_roster(&self, user: &BareJid, records: &impl HomeRecords) -> Roster {
        Roster::decode(
            records
                .local(&Roster::record_name(user.as_str()))
                .as_deref(),
        )
    }

    /// Whether `user` has an account (the home node holds a copy).
    fn has_account(&self, user: &BareJid, records: &impl HomeRecords) -> bool {
        records.local(&Account::record_name(user)).is_some()
    }

    /// Stores `roster` if `fx` changed it, then does what `fx` says;
    /// `deliver`: the stanza to show the user's sessions.
    fn apply(
        &mut self,
        now: Instant,
        user: &BareJid,
        r: &Roster,
        fx: Effects,
        deliver: Option<Element>,
        records: &mut impl HomeRecords,
    ) {
        if fx.changed {
            let op = RecordOp::Put {
                name: Roster::record_name(user.as_str()),
                value: r.encode(),
            };
            if let Err(why) = records.write(now, op) {
                tracing::warn!(%user, "roster not stored: {why}");
            }
        }
        if let Some(reply) = fx.reply {
            // To the session that asked: this node knows where it is.
            self.deliver_home(now, reply, records);
        }
        let sessions = self.table.sessions(user);
        for push in fx.pushes {
            for full in &sessions {
                let mut copy = push.clone();
                set_attr(&mut copy, "to", full.as_str());
                self.deliver_home(now, copy, records);
            }
        }
        for st in fx.send {
            self.send_from_ring(st);
        }
        if let Some(st) = deliver {
            self.deliver_home(now, st, records);
        }
    }

    /// At the home node: the stanzas for a user that the roster answers
    /// (roster IQs, subscription presence, probes). True when handled.
    pub(super) fn home_handles(
        &mut self,
        now: Instant,
        st: &Element,
        records: &mut impl HomeRecords,
    ) -> bool {
        let Some(Ok(to)) = st.attr("to").map(Jid::new) else {
            return false;
        };
        if !self.is_user(&to) {
            return false;
        }
        let user = to.to_bare();
        // A roster request is a get or set from one of the user's sessions
        // to the bare JID; results, errors and pushes (to a full JID) are
        // on their way to a session and are delivered like any stanza.
        let is_request = to.is_bare() && matches!(st.attr("type"), Some("get" | "set"));
        let is_roster = roster::is_roster_iq(st) && is_request;
        let is_probe = st.name() == "presence" && st.attr("type") == Some("probe");
        let is_disco = to.is_bare()
            && st.name() == "iq"
            && st.attr("type") == Some("get")
            && st.get_child("query", NS_DISCO_INFO).is_some();
        if !(is_roster || roster::is_subscription(st) || is_probe || is_disco) {
            return false;
        }
        if !self.has_account(&user, records) {
            // Nobody's roster: the services answer as for unknown users.
            return false;
        }
        if is_disco {
            // XEP-0030 §3.1: the server answers for the account.
            let info = ring_services::stanza::disco_info(
                None,
                "account",
                "registered",
                user.as_str(),
                &[NS_DISCO_INFO],
            );
            self.send_from_ring(ring_services::stanza::iq_result(st, Some(info)));
            return true;
        }
        let from = st.attr("from").and_then(|f| Jid::new(f).ok());
        if is_roster {
            if from.as_ref().is_none_or(|f| f.to_bare() != user) {
                self.answer_error(st, DefinedCondition::Forbidden);
                return true;
            }
            let mut r = self.load_roster(&user, records);
            let fx = r.handle_iq(&user, st);
            self.apply(now, &user, &r, fx, None, records);
            return true;
        }
        if roster::is_subscription(st) {
            let mut r = self.load_roster(&user, records);
            let fx = r.inbound(&user, st);
            let deliver = fx.deliver.then(|| st.clone());
            self.apply(now, &user, &r, fx, deliver, records);
            return true;
        }
        // A probe: the user's presence, when the prober may see it.
        let Some(prober) = from else {
            return true;
        };
        let r = self.load_roster(&user, records);
        if !r.shares_with(prober.to_bare().as_str()) {
            return true;
        }
        if !self.send_presence_to(&user, prober.to_bare().as_str()) {
            let mut p = Element::bare("presence", ring_services::stanza::NS_CLIENT);
            set_attr(&mut p, "type", "unavailable");
            set_attr(&mut p, "from", user.as_str());
            set_attr(&mut p, "to", prober.as_str());
            self.send_from_ring(p);
        }
        true
    }

    /// Sends `contact` the last available presence of each of `user`'s
    /// sessions; false when none is available.
    fn send_presence_to(&mut self, user: &BareJid, contact: &str) -> bool {
        let mine: Vec<Element> = self
            .last_presence
            .of(user)
            .map(|(_, p)| p.clone())
            .collect();
        let any = !mine.is_empty();
        for mut p in mine {
            set_attr(&mut p, "to", contact);
            self.send_from_ring(p);
        }
        any
    }

    /// A presence one of this node's users sent, for the home node to
    /// process first.
    pub fn handle_outbound(
        &mut self,
        now: Instant,
        payload: &[u8],
        records: &mut impl HomeRecords,
    ) {
        let Some(msg) = Outbound::decode(payload) else {
            tracing::warn!("undecodable outbound presence");
            return;
        };
        let Ok(st) = msg.xml.parse::<Element>() else {
            return;
        };
        let Some(from) = st.attr("from").and_then(|f| FullJid::new(f).ok()) else {
            return;
        };
        let user = from.to_bare();
        if !self.is_user(&Jid::from(user.clone())) {
            return;
        }
        if !self.user_ready(now, &user, || Pending::Outbound(payload.to_vec()), records) {
            return;
        }
        if roster::is_subscription(&st) {
            let mut r = self.load_roster(&user, records);
            let fx = r.outbound(&user, &st);
            // An approval also shows the contact the user's current
            // presence (RFC 6121 §3.1.5).
            let approved = st.attr("type") == Some("subscribed") && !fx.send.is_empty();
            self.apply(now, &user, &r, fx, None, records);
            if approved && let Some(contact) = st.attr("to").and_then(|t| Jid::new(t).ok()) {
                self.send_presence_to(&user, contact.to_bare().as_str());
            }
            return;
        }
        if st.attr("to").is_some() || st.name() != "presence" {
            return;
        }
        let available = st.attr("type").is_none();
        if available {
            self.last_presence.insert(from.clone(), st.clone());
        } else if st.attr("type") == Some("unavailable") {
            self.last_presence.remove(&from);
        } else {
            return;
        }
        self.store_online(now, &user, records);
        let r = self.load_roster(&user, records);
        // The user's own sessions (the sender's included).
        let mut own = st.clone();
        set_attr(&mut own, "to", user.as_str());
        self.deliver_home(now, own, records);
        for contact in r.presence_subscribers() {
            let mut copy = st.clone();
            set_attr(&mut copy, "to", &contact);
            self.send_from_ring(copy);
        }
        if msg.initial {
            for contact in r.presence_sources() {
                let mut probe = Element::bare("presence", ring_services::stanza::NS_CLIENT);
                set_attr(&mut probe, "type", "probe");
                set_attr(&mut probe, "from", user.as_str());
                set_attr(&mut probe, "to", &contact);
                self.send_from_ring(probe);
            }
            for mut request in r.pending_requests(&user) {
                set_attr(&mut request, "to", from.as_str());
                self.deliver_home(now, request, records);
            }
        }
    }

    /// A session of one of this node's users ended (its lease ended or
    /// expired): if it was available, its contacts see it go.
    pub(super) fn session_gone(
        &mut self,
        now: Instant,
        full: &FullJid,
        records: &mut impl HomeRecords,
    ) {
        if self.last_presence.remove(full).is_none() {
            return;
        }
        self.store_online(now, &full.to_bare(), records);
        let r = self.load_roster(&full.to_bare(), records);
        for contact in r.presence_subscribers() {
            let mut p = Element::bare("presence", ring_services::stanza::NS_CLIENT);
            set_attr(&mut p, "type", "unavailable");
            set_attr(&mut p, "from", full.as_str());
            set_attr(&mut p, "to", &contact);
            self.send_from_ring(p);
        }
    }

    /// Stores `user`'s available sessions (record `presence:<bare JID>`),
    /// so that a successor of this home node can tell the contacts about
    /// sessions that die with it.
    fn store_online(&mut self, now: Instant, user: &BareJid, records: &mut impl HomeRecords) {
        let sessions: Vec<Online> = self
            .last_presence
            .of(user)
            .map(|(f, p)| Online {
                jid: f.to_string(),
                xml: ring_services::stanza::to_string(p),
            })
            .collect();
        let name = OnlineSessions::record_name(user.as_str());
        let op = if sessions.is_empty() {
            if records.local(&name).is_none() {
                return;
            }
            RecordOp::Delete { name }
        } else {
            RecordOp::Put {
                name,
                value: OnlineSessions { sessions }.encode(),
            }
        };
        if let Err(why) = records.write(now, op) {
            tracing::warn!(%user, "available sessions not stored: {why}");
        }
    }

    /// A batch of the stored `presence:` records this node is now the
    /// home node of: a listed session this node knows nothing of (no
    /// lease, no presence) for longer than a lease lasts died with the
    /// previous home node; its contacts are told it went offline.
    pub(super) fn sweep_presence(&mut self, now: Instant, records: &mut impl HomeRecords) {
        let names = records.batch(
            PRESENCE_PREFIX,
            &mut self.presence_cursor,
            PRESENCE_SWEEP_BATCH,
        );
        let mut seen = std::collections::HashSet::new();
        for name in names {
            if !records.is_home_of(&name) {
                continue;
            }
            let Some(value) = records.local(&name) else {
                continue;
            };
            for s in OnlineSessions::decode(&value).sessions {
                let (Ok(full), Ok(presence)) = (FullJid::new(&s.jid), s.xml.parse::<Element>())
                else {
                    continue;
                };
                seen.insert(full.clone());
                let known = self.last_presence.contains(&full);
                let leased = self.table.session(&full).is_some();
                match self.orphans.listed(now, &full, presence, known, leased) {
                    Listed::Known | Listed::Waiting => {}
                    Listed::Adopt(presence) => self.last_presence.insert(full, presence),
                    Listed::Gone(presence) => {
                        self.last_presence.insert(full.clone(), presence);
                        self.session_gone(now, &full, records);
                    }
                }
            }
        }
        self.orphans.end_batch(now, &seen);
    }
}
