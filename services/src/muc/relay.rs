//! What passes through a room between its occupants and others: private
//! messages, mediated invitations and declines (XEP-0045 §7.5, §7.8), and
//! IQs between occupants.

use super::room::{Affiliation, NS_MUC_USER, Room, el};
use crate::Action;
use crate::stanza::{self, bare, error_reply};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

impl Room {
    /// A private message from the occupant `sender` (real JID) to the
    /// occupant called `nick`.
    pub fn private_message(&self, sender: &str, nick: &str, msg: &Element, out: &mut Vec<Action>) {
        if msg.attr("type") == Some("groupchat") {
            return out.extend(
                error_reply(
                    msg,
                    DefinedCondition::BadRequest,
                    Some("groupchat to an occupant"),
                )
                .map(Action::Send),
            );
        }
        let (Some(s), Some(t)) = (self.by_jid(sender), self.by_nick(nick)) else {
            return out
                .extend(error_reply(msg, DefinedCondition::ItemNotFound, None).map(Action::Send));
        };
        let mut m = msg.clone();
        stanza::set(&mut m, "from", &self.occupant_jid(&s.nick));
        stanza::set(&mut m, "to", &t.jid);
        if m.get_child("x", NS_MUC_USER).is_none() {
            m.append_child(Element::bare("x", NS_MUC_USER));
        }
        out.push(Action::Send(m));
    }

    /// Mediated invitations (XEP-0045 §7.8.2) from the occupant `inviter`
    /// (real JID): each
    /// invitee gets a message from the room. In a members-only room only
    /// admins and owners invite, and their invitees become members.
    /// Returns whether the affiliations changed.
    pub fn invite(
        &mut self,
        inviter: &str,
        msg: &Element,
        x: &Element,
        out: &mut Vec<Action>,
    ) -> bool {
        let inviter = inviter.to_string();
        let members_only = self.state.config.members_only;
        if members_only && self.affiliation(&inviter) < Affiliation::Admin {
            out.extend(
                error_reply(
                    msg,
                    DefinedCondition::Forbidden,
                    Some("only admins and owners invite to this room"),
                )
                .map(Action::Send),
            );
            return false;
        }
        let invites: Vec<&Element> = x
            .children()
            .filter(|c| c.is("invite", NS_MUC_USER))
            .collect();
        if invites.len() > super::room::MAX_INVITES {
            out.extend(
                error_reply(
                    msg,
                    DefinedCondition::PolicyViolation,
                    Some(&format!(
                        "at most {} invitations per message",
                        super::room::MAX_INVITES
                    )),
                )
                .map(Action::Send),
            );
            return false;
        }
        let mut targets = Vec::new();
        for inv in &invites {
            match inv.attr("to").filter(|t| jid::Jid::new(t).is_ok()) {
                Some(t) => targets.push((
                    t.to_string(),
                    inv.get_child("reason", NS_MUC_USER).map(|r| r.text()),
                )),
                None => {
                    out.extend(
                        error_reply(
                            msg,
                            DefinedCondition::JidMalformed,
                            Some("an invitation needs a valid 'to'"),
                        )
                        .map(Action::Send),
                    );
                    return false;
                }
            }
        }
        let mut changed = false;
        for (to, reason) in targets {
            if members_only && self.affiliation(&to) < Affiliation::Member {
                self.state
                    .affiliations
                    .insert(bare(&to), Affiliation::Member);
                changed = true;
            }
            let mut m = el("message", &[("from", &self.jid), ("to", &to)]);
            let mut x = Element::bare("x", NS_MUC_USER);
            let mut inv = Element::bare("invite", NS_MUC_USER);
            stanza::set(&mut inv, "from", &inviter);
            if let Some(r) = reason {
                let mut re = Element::bare("reason", NS_MUC_USER);
                re.append_text(&r);
                inv.append_child(re);
            }
            x.append_child(inv);
            if let Some(pw) = &self.state.config.password {
                let mut p = Element::bare("password", NS_MUC_USER);
                p.append_text(pw);
                x.append_child(p);
            }
            m.append_child(x);
            out.push(Action::Send(m));
        }
        changed
    }

    /// A declined invitation, passed on to the inviter.
    pub fn decline(&self, from: &str, x: &Element, out: &mut Vec<Action>) {
        for d in x.children().filter(|c| c.is("decline", NS_MUC_USER)) {
            let Some(to) = d.attr("to").filter(|t| jid::Jid::new(t).is_ok()) else {
                continue;
            };
            let mut m = el("message", &[("from", &self.jid), ("to", to)]);
            let mut x = Element::bare("x", NS_MUC_USER);
            let mut dec = Element::bare("decline", NS_MUC_USER);
            stanza::set(&mut dec, "from", &bare(from));
            if let Some(r) = d.get_child("reason", NS_MUC_USER) {
                let mut re = Element::bare("reason", NS_MUC_USER);
                re.append_text(r.text());
                dec.append_child(re);
            }
            x.append_child(dec);
            m.append_child(x);
            out.push(Action::Send(m));
        }
    }

    /// An IQ between occupants, relayed without revealing real JIDs: a
    /// request from occupant A to `room/B` goes to B's real JID from
    /// `room/A`; B's answer, addressed to `room/A`, goes back to A's real
    /// JID from `room/B`. Nothing is remembered in between.
    pub fn relay_iq(&self, nick: &str, iq: &Element, out: &mut Vec<Action>) {
        let from = iq.attr("from").unwrap_or_default();
        let answer = stanza::is_error_or_result(iq);
        let (Some(sender), Some(target)) = (self.by_jid(from), self.by_nick(nick)) else {
            if !answer {
                let condition = if self.by_jid(from).is_none() {
                    DefinedCondition::NotAcceptable
                } else {
                    DefinedCondition::ItemNotFound
                };
                out.extend(error_reply(iq, condition, None).map(Action::Send));
            }
            return;
        };
        let mut fwd = iq.clone();
        stanza::set(&mut fwd, "from", &self.occupant_jid(&sender.nick));
        stanza::set(&mut fwd, "to", &target.jid);
        out.push(Action::Send(fwd));
    }
}
