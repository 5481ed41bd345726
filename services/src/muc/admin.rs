//! Owners and moderators at work (XEP-0045 §8-10): the configuration form
//! (`muc#owner`), destroying a room, and affiliation and role changes
//! (`muc#admin`: kick, ban, membership, voice).

// Items named after XEP-0045/0060/0004 terms (roles, affiliations, form
// fields, namespaces) are documented by those XEPs.
#![allow(missing_docs)]

use super::room::{Affiliation, NS_MUC_USER, Role, Room, RoomConfig};
use crate::error::FormError;
use crate::stanza::{self, bare, error_reply, iq_result};
use crate::{Action, forms};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::muc::user::Status;
use xmpp_parsers::stanza_error::DefinedCondition;

pub const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const NS_MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
const FORM_TYPE: &str = "http://jabber.org/protocol/muc#roomconfig";
/// Largest `max_users` an owner can configure.
const MAX_USERS_LIMIT: usize = 100_000;

fn error(iq: &Element, condition: DefinedCondition, text: &str, out: &mut Vec<Action>) -> bool {
    out.extend(error_reply(iq, condition, Some(text)).map(Action::Send));
    false
}

/// The configuration form for `config`.
pub fn config_form(config: &RoomConfig) -> Element {
    let f = |s: &str| format!("muc#roomconfig_{s}");
    forms::form(
        FORM_TYPE,
        "Room configuration",
        vec![
            forms::text(&f("roomname"), "Name", &config.name),
            forms::text(&f("roomdesc"), "Description", &config.description),
            forms::boolean(&f("persistentroom"), "Persistent", config.persistent),
            forms::boolean(&f("publicroom"), "Public", config.public),
            forms::boolean(&f("membersonly"), "Members only", config.members_only),
            forms::boolean(&f("moderatedroom"), "Moderated", config.moderated),
            forms::boolean(
                &f("passwordprotectedroom"),
                "Password protected",
                config.password.is_some(),
            ),
            forms::private(
                &f("roomsecret"),
                "Password",
                config.password.as_deref().unwrap_or(""),
            ),
            forms::text(
                &f("maxusers"),
                "Maximum occupants",
                &config.max_users.to_string(),
            ),
            forms::list(
                &f("whois"),
                "Who may see real JIDs",
                if config.whois_anyone {
                    "anyone"
                } else {
                    "moderators"
                },
                &["moderators", "anyone"],
            ),
            forms::boolean(
                &f("changesubject"),
                "Occupants may change the subject",
                config.change_subject,
            ),
            forms::text(
                "muc#maxhistoryfetch",
                "Messages of history sent on join",
                &config.history.to_string(),
            ),
        ],
    )
}

/// Applies submitted values to a copy of `config`.
/// Longest room name (bytes).
pub const MAX_NAME_BYTES: usize = 256;
/// Longest room description and password (bytes).
pub const MAX_DESCRIPTION_BYTES: usize = 2048;

fn bounded(var: &str, v: &[String], max: usize) -> Result<String, FormError> {
    let s = forms::first(v);
    if s.len() > max {
        return Err(FormError::TooLong {
            var: var.to_string(),
            max,
        });
    }
    Ok(s)
}

fn apply_form(
    config: &RoomConfig,
    values: &[(String, Vec<String>)],
) -> Result<RoomConfig, FormError> {
    let mut c = config.clone();
    let mut protect = c.password.is_some();
    let mut secret = c.password.clone().unwrap_or_default();
    for (var, v) in values {
        match var.strip_prefix("muc#roomconfig_").unwrap_or(var) {
            "roomname" => c.name = bounded(var, v, MAX_NAME_BYTES)?,
            "roomdesc" => c.description = bounded(var, v, MAX_DESCRIPTION_BYTES)?,
            "persistentroom" => c.persistent = forms::parse_bool(var, v)?,
            "publicroom" => c.public = forms::parse_bool(var, v)?,
            "membersonly" => c.members_only = forms::parse_bool(var, v)?,
            "moderatedroom" => c.moderated = forms::parse_bool(var, v)?,
            "passwordprotectedroom" => protect = forms::parse_bool(var, v)?,
            "roomsecret" => secret = bounded(var, v, MAX_DESCRIPTION_BYTES)?,
            "maxusers" => c.max_users = forms::parse_number(var, v, MAX_USERS_LIMIT)?.max(1),
            "changesubject" => c.change_subject = forms::parse_bool(var, v)?,
            "muc#maxhistoryfetch" => {
                c.history = forms::parse_number(var, v, super::room::MAX_HISTORY)?
            }
            "whois" => {
                c.whois_anyone = match forms::first(v).as_str() {
                    "anyone" => true,
                    "moderators" => false,
                    other => {
                        return Err(FormError::Unsupported {
                            var: var.clone(),
                            value: other.to_string(),
                        });
                    }
                }
            }
            // Fields of other implementations are ignored, as XEP-0004
            // allows for fields the service did not ask for.
            _ => {}
        }
    }
    if protect && secret.is_empty() {
        return Err(FormError::Inconsistent(
            "a password-protected room needs a password",
        ));
    }
    c.password = protect.then_some(secret);
    Ok(c)
}

impl Room {
    /// A `muc#owner` IQ. Returns whether the room's state changed.
    pub fn owner_iq(&mut self, iq: &Element, query: &Element, out: &mut Vec<Action>) -> bool {
        let from = iq.attr("from").unwrap_or_default();
        if self.affiliation(from) != Affiliation::Owner {
            return error(
                iq,
                DefinedCondition::Forbidden,
                "only owners may do this",
                out,
            );
        }
        match iq.attr("type") {
            Some("get") => {
                let mut q = Element::bare("query", NS_MUC_OWNER);
                q.append_child(config_form(&self.state.config));
                out.push(Action::Send(iq_result(iq, Some(q))));
                false
            }
            Some("set") => {
                if let Some(d) = query.get_child("destroy", NS_MUC_OWNER) {
                    // The same element in the muc#user namespace.
                    let mut d2 = Element::bare("destroy", NS_MUC_USER);
                    for (k, v) in d.attrs() {
                        stanza::set(&mut d2, k.1.as_str(), v);
                    }
                    for c in d.children() {
                        let mut c2 = Element::bare(c.name(), NS_MUC_USER);
                        c2.append_text(c.text());
                        d2.append_child(c2);
                    }
                    let d = d2;
                    self.evict_all(Some(d), out);
                    self.destroyed = true;
                    out.push(Action::Send(iq_result(iq, None)));
                    return true;
                }
                let submitted = match forms::submitted(query) {
                    Ok(Some(s)) => s,
                    Ok(None) => return error(iq, DefinedCondition::BadRequest, "no form", out),
                    Err(e) => return error(iq, DefinedCondition::BadRequest, &e.to_string(), out),
                };
                if submitted.cancel {
                    // Cancelling the first configuration abandons the room.
                    if self.state.locked {
                        self.evict_all(None, out);
                        self.destroyed = true;
                    }
                    out.push(Action::Send(iq_result(iq, None)));
                    return self.destroyed;
                }
                let config = match apply_form(&self.state.config, &submitted.values) {
                    Ok(c) => c,
                    Err(e) => {
                        return error(iq, DefinedCondition::NotAcceptable, &e.to_string(), out);
                    }
                };
                let became_members_only = config.members_only && !self.state.config.members_only;
                self.state.config = config;
                self.state.locked = false;
                out.push(Action::Send(iq_result(iq, None)));
                if became_members_only {
                    self.remove_non_members(Status::ConfigMembersOnly, out);
                }
                // Status 104: the configuration changed.
                let mut m =
                    super::room::el("message", &[("from", &self.jid), ("type", "groupchat")]);
                let mut x = Element::bare("x", NS_MUC_USER);
                let mut s = Element::bare("status", NS_MUC_USER);
                stanza::set(&mut s, "code", "104");
                x.append_child(s);
                m.append_child(x);
                let to = self.occupants.jids();
                out.push(Action::Broadcast { stanza: m, to });
                true
            }
            _ => error(
                iq,
                DefinedCondition::BadRequest,
                "muc#owner needs get or set",
                out,
            ),
        }
    }

    fn remove_non_members(&mut self, why: Status, out: &mut Vec<Action>) {
        let out_of_place: Vec<String> = self
            .occupants
            .iter()
            .filter(|o| self.affiliation(&o.jid) < Affiliation::Member)
            .map(|o| o.jid.clone())
            .collect();
        for jid in out_of_place {
            self.remove_occupant(&jid, std::slice::from_ref(&why), out);
        }
    }

    /// A `muc#admin` IQ. Returns whether the room's state changed.
    pub fn admin_iq(&mut self, iq: &Element, query: &Element, out: &mut Vec<Action>) -> bool {
        let from = iq.attr("from").unwrap_or_default();
        let actor_aff = self.affiliation(from);
        let actor_role = self.by_jid(from).map_or(Role::None, |o| o.role);
        let items: Vec<&Element> = query
            .children()
            .filter(|c| c.is("item", NS_MUC_ADMIN))
            .collect();
        if items.is_empty() {
            return error(iq, DefinedCondition::BadRequest, "no item", out);
        }
        match iq.attr("type") {
            Some("get") => self.admin_list(iq, items[0], actor_aff, actor_role, out),
            Some("set") => self.admin_set(iq, &items, actor_aff, actor_role, out),
            _ => error(
                iq,
                DefinedCondition::BadRequest,
                "muc#admin needs get or set",
                out,
            ),
        }
    }

    fn admin_list(
        &self,
        iq: &Element,
        item: &Element,
        actor_aff: Affiliation,
        actor_role: Role,
        out: &mut Vec<Action>,
    ) -> bool {
        let mut q = Element::bare("query", NS_MUC_ADMIN);
        if let Some(a) = item.attr("affiliation") {
            let Some(want) = Affiliation::parse(a).filter(|a| *a != Affiliation::None) else {
                return error(iq, DefinedCondition::BadRequest, "unknown affiliation", out);
            };
            if actor_aff < Affiliation::Admin {
                return error(
                    iq,
                    DefinedCondition::Forbidden,
                    "only admins and owners may list affiliations",
                    out,
                );
            }
            for (jid, _) in self.state.affiliations.iter().filter(|(_, a)| **a == want) {
                let mut i = Element::bare("item", NS_MUC_ADMIN);
                stanza::set(&mut i, "affiliation", want.as_str());
                stanza::set(&mut i, "jid", jid);
                q.append_child(i);
            }
        } else if let Some(r) = item.attr("role") {
            let Some(want) = Role::parse(r).filter(|r| *r != Role::None) else {
                return error(iq, DefinedCondition::BadRequest, "unknown role", out);
            };
            if actor_role != Role::Moderator {
                return error(
                    iq,
                    DefinedCondition::Forbidden,
                    "only moderators may list roles",
                    out,
                );
            }
            for o in self.occupants.iter().filter(|o| o.role == want) {
                let mut i = Element::bare("item", NS_MUC_ADMIN);
                stanza::set(&mut i, "role", r);
                stanza::set(&mut i, "nick", &o.nick);
                stanza::set(&mut i, "jid", &o.jid);
                stanza::set(&mut i, "affiliation", self.affiliation(&o.jid).as_str());
                q.append_child(i);
            }
        } else {
            return error(
                iq,
                DefinedCondition::BadRequest,
                "an item needs an affiliation or a role",
                out,
            );
        }
        out.push(Action::Send(iq_result(iq, Some(q))));
        false
    }

    /// Checks every item, then applies them all (or none).
    fn admin_set(
        &mut self,
        iq: &Element,
        items: &[&Element],
        actor_aff: Affiliation,
        actor_role: Role,
        out: &mut Vec<Action>,
    ) -> bool {
        enum Change {
            /// By nick: earlier changes of the same request may have
            /// removed occupants, so positions would shift.
            Role(String, Role),
            Affiliation(String, Affiliation),
        }
        let mut changes = Vec::new();
        for item in items {
            if let (Some(nick), Some(r)) = (item.attr("nick"), item.attr("role")) {
                let Some(role) = Role::parse(r) else {
                    return error(iq, DefinedCondition::BadRequest, "unknown role", out);
                };
                let Some(target) = self.by_nick(nick) else {
                    return error(iq, DefinedCondition::ItemNotFound, "no such occupant", out);
                };
                let target_aff = self.affiliation(&target.jid);
                let target_role = target.role;
                if actor_role != Role::Moderator {
                    return error(
                        iq,
                        DefinedCondition::Forbidden,
                        "only moderators may change roles",
                        out,
                    );
                }
                if (role == Role::Moderator || target_role == Role::Moderator)
                    && actor_aff < Affiliation::Admin
                {
                    return error(
                        iq,
                        DefinedCondition::NotAllowed,
                        "only admins may change moderators",
                        out,
                    );
                }
                if role < Role::Participant && target_aff >= Affiliation::Admin {
                    return error(
                        iq,
                        DefinedCondition::NotAllowed,
                        "admins and owners cannot be kicked or muted",
                        out,
                    );
                }
                changes.push(Change::Role(nick.to_string(), role));
            } else if let (Some(jid), Some(a)) = (item.attr("jid"), item.attr("affiliation")) {
                let Some(aff) = Affiliation::parse(a) else {
                    return error(iq, DefinedCondition::BadRequest, "unknown affiliation", out);
                };
                if jid::Jid::new(jid).is_err() {
                    return error(iq, DefinedCondition::JidMalformed, "invalid jid", out);
                }
                let target = bare(jid);
                let current = self.affiliation(&target);
                let needs_owner = aff >= Affiliation::Admin || current >= Affiliation::Admin;
                if actor_aff < Affiliation::Admin || (needs_owner && actor_aff < Affiliation::Owner)
                {
                    return error(
                        iq,
                        DefinedCondition::Forbidden,
                        "not allowed to change this affiliation",
                        out,
                    );
                }
                changes.push(Change::Affiliation(target, aff));
            } else {
                return error(
                    iq,
                    DefinedCondition::BadRequest,
                    "an item needs nick+role or jid+affiliation",
                    out,
                );
            }
        }
        // The room must keep an owner.
        let mut after = self.state.affiliations.clone();
        for c in &changes {
            if let Change::Affiliation(j, a) = c {
                after.insert(j.clone(), *a);
            }
        }
        if !after.values().any(|a| *a == Affiliation::Owner) {
            return error(
                iq,
                DefinedCondition::Conflict,
                "the room would have no owner",
                out,
            );
        }
        for c in changes {
            match c {
                Change::Role(nick, Role::None) => {
                    if let Some(jid) = self.by_nick(&nick).map(|o| o.jid.clone()) {
                        self.remove_occupant(&jid, &[Status::Kicked], out);
                    }
                }
                Change::Role(nick, role) => {
                    let jid = self.by_nick(&nick).map(|o| o.jid.clone());
                    if let Some(o) = jid.and_then(|j| {
                        self.occupants.update(&j, |o| {
                            o.role = role;
                            o.clone()
                        })
                    }) {
                        self.broadcast_presence(&o, false, &[], &[], None, out);
                    }
                }
                Change::Affiliation(jid, aff) => self.set_affiliation(&jid, aff, out),
            }
        }
        out.push(Action::Send(iq_result(iq, None)));
        true
    }

    fn set_affiliation(&mut self, jid: &str, aff: Affiliation, out: &mut Vec<Action>) {
        if aff == Affiliation::None {
            self.state.affiliations.remove(jid);
        } else {
            self.state.affiliations.insert(jid.to_string(), aff);
        }
        // Occupants with that bare JID: out if banned or no longer allowed,
        // else their role follows the new affiliation.
        let affected: Vec<String> = self
            .occupants
            .iter()
            .filter(|o| bare(&o.jid) == jid)
            .map(|o| o.jid.clone())
            .collect();
        let leaves = aff == Affiliation::Outcast
            || (self.state.config.members_only && aff < Affiliation::Member);
        let why = if aff == Affiliation::Outcast {
            Status::Banned
        } else {
            Status::RemovalFromRoom
        };
        let role = self.default_role(aff);
        for j in affected {
            if leaves {
                self.remove_occupant(&j, std::slice::from_ref(&why), out);
                continue;
            }
            let changed = self.occupants.update(&j, |o| {
                o.role = role;
                o.clone()
            });
            if let Some(o) = changed {
                self.broadcast_presence(&o, false, &[Status::AffiliationChange], &[], None, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_apply_and_bad_values_are_refused() {
        let base = RoomConfig::default();
        let v = |k: &str, x: &str| (k.to_string(), vec![x.to_string()]);
        let c = apply_form(
            &base,
            &[
                v("muc#roomconfig_membersonly", "1"),
                v("muc#roomconfig_passwordprotectedroom", "1"),
                v("muc#roomconfig_roomsecret", "s3cret"),
                v("muc#roomconfig_whois", "anyone"),
                v("muc#roomconfig_maxusers", "50"),
                v("unknown_field", "whatever"),
            ],
        )
        .unwrap();
        assert!(c.members_only && c.whois_anyone);
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert_eq!(c.max_users, 50);
        for bad in [
            vec![v("muc#roomconfig_membersonly", "maybe")],
            vec![v("muc#roomconfig_whois", "everyone")],
            vec![v("muc#roomconfig_maxusers", "many")],
            vec![v("muc#roomconfig_passwordprotectedroom", "1")],
        ] {
            assert!(apply_form(&base, &bad).is_err(), "{bad:?}");
        }
        // The form offered round-trips through the form parser.
        let form = config_form(&c);
        let df = xmpp_parsers::data_forms::DataForm::try_from(form).unwrap();
        assert_eq!(df.form_type(), Some(FORM_TYPE));
    }
}
