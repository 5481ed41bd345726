//! The stream's side of in-band registration (XEP-0077; the requests are
//! read by [`crate::register`]): signing up before authentication, and a
//! bound user changing their password or removing their account. The
//! machine asks the driver for a lookup and a write, and answers the IQ
//! when they come back, so it stays free of I/O and of key derivation
//! (PBKDF2 is the driver's to run off the connection's task).

use super::{
    AccountChange, BoundChange, C2sOutput, C2sStream, Lookup, NS_CLIENT, Password, Phase,
    Registering, error_reply, set_attr,
};
use crate::account::prepare_password;
use crate::register::{self, Request};
use jid::{FullJid, Jid};
use ring_services::stanza::iq_result;
use xmpp_edge::stream_error::Condition;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

/// The addressing of an IQ (type, id, to, from) without its payload, to
/// answer it later without keeping the password it carried.
pub(super) fn skeleton(iq: &Element) -> Element {
    let mut s = Element::bare("iq", NS_CLIENT);
    for a in ["type", "id", "to", "from"] {
        if let Some(v) = iq.attr(a) {
            set_attr(&mut s, a, v);
        }
    }
    s
}

impl C2sStream {
    fn reply_error(&mut self, iq: &Element, cond: DefinedCondition) {
        if let Some(reply) = error_reply(iq, cond, None) {
            self.write_stanza(&reply);
        }
    }

    /// A registration IQ before authentication.
    pub(super) fn on_register(&mut self, iq: Element) {
        if !self.cfg.registration {
            return self.reply_error(&iq, DefinedCondition::ServiceUnavailable);
        }
        if !self.tls {
            // The password would cross the network in the clear.
            return self.reply_error(&iq, DefinedCondition::PolicyViolation);
        }
        match register::parse(&iq) {
            Ok(Request::Form) => {
                let reply = iq_result(&iq, Some(register::form(None)));
                self.write_stanza(&reply);
            }
            Ok(Request::Set { .. }) if self.registered => {
                self.reply_error(&iq, DefinedCondition::NotAllowed)
            }
            Ok(Request::Set { username, password }) => {
                let Some(user) = self.user_of(username.trim()) else {
                    return self.reply_error(&iq, DefinedCondition::NotAcceptable);
                };
                if prepare_password(&password).is_err() {
                    return self.reply_error(&iq, DefinedCondition::NotAcceptable);
                }
                self.out
                    .push_back(C2sOutput::RegistrationAttempt(user.clone()));
                self.phase = Phase::Register(Registering::Allowing(
                    skeleton(&iq),
                    user,
                    Password(password),
                ));
            }
            // Nothing to remove before logging in.
            Ok(Request::Remove) => self.reply_error(&iq, DefinedCondition::NotAuthorized),
            Err(cond) => self.reply_error(&iq, cond),
        }
    }

    /// The driver's answer to [`C2sOutput::RegistrationAttempt`]: whether
    /// the source is within its registration rate.
    pub fn handle_registration_allowed(&mut self, allowed: bool) {
        if let (Phase::Bound(full), Some(change)) = (&self.phase, self.account_write.as_mut())
            && let Some(password) = change.waiting.take()
        {
            let user = full.to_bare();
            if !allowed {
                let iq = change.iq.clone();
                self.account_write = None;
                return self.reply_error(&iq, DefinedCondition::ResourceConstraint);
            }
            return self.out.push_back(C2sOutput::WriteAccount {
                user,
                change: AccountChange::SetPassword {
                    password: password.0,
                },
            });
        }
        let Phase::Register(Registering::Allowing(iq, user, password)) =
            std::mem::replace(&mut self.phase, Phase::PreAuth)
        else {
            return;
        };
        if !allowed {
            return self.reply_error(&iq, DefinedCondition::ResourceConstraint);
        }
        self.out.push_back(C2sOutput::LookupAccount(user.clone()));
        self.phase = Phase::Register(Registering::Lookup(iq, user, password));
    }

    /// Whether the name asked for is free.
    pub(super) fn on_register_lookup(&mut self, lookup: Lookup) {
        let Phase::Register(Registering::Lookup(iq, user, password)) =
            std::mem::replace(&mut self.phase, Phase::PreAuth)
        else {
            return;
        };
        match lookup {
            Lookup::Found(_) => self.reply_error(&iq, DefinedCondition::Conflict),
            // Never write over what could not be read.
            Lookup::Unavailable => self.reply_error(&iq, DefinedCondition::InternalServerError),
            Lookup::NotFound => {
                self.out.push_back(C2sOutput::WriteAccount {
                    user,
                    change: AccountChange::Create {
                        password: password.0,
                    },
                });
                self.phase = Phase::Register(Registering::Writing(iq));
            }
        }
    }

    /// The driver's answer to [`C2sOutput::WriteAccount`]: stored, or the
    /// stanza error to answer with.
    pub fn handle_account_written(&mut self, result: Result<(), DefinedCondition>) {
        if let Phase::Register(Registering::Writing(_)) = &self.phase {
            let Phase::Register(Registering::Writing(iq)) =
                std::mem::replace(&mut self.phase, Phase::PreAuth)
            else {
                return;
            };
            return match result {
                Ok(()) => {
                    self.registered = true;
                    self.write_stanza(&iq_result(&iq, None));
                }
                Err(cond) => self.reply_error(&iq, cond),
            };
        }
        let Some(BoundChange {
            iq,
            remove: removed,
            waiting: None,
        }) = self.account_write.take()
        else {
            return;
        };
        if !matches!(self.phase, Phase::Bound(_)) {
            return;
        }
        match result {
            Ok(()) => {
                self.write_stanza(&iq_result(&iq, None));
                if removed {
                    // §3.2: the account is gone, and so is its session.
                    self.fail(Condition::NotAuthorized, "the account was removed");
                }
            }
            Err(cond) => self.reply_error(&iq, cond),
        }
    }

    /// A bound session's registration IQ addressed to its server or its own
    /// account (not one for a service elsewhere, which is routed).
    pub(super) fn is_own_registration(&self, el: &Element, full: &FullJid) -> bool {
        if register::query(el).is_none() {
            return false;
        }
        match el.attr("to").map(Jid::new) {
            None => true,
            Some(Ok(to)) => {
                to.resource().is_none()
                    && (to.to_bare() == full.to_bare()
                        || (to.node().is_none() && to.domain() == full.domain()))
            }
            Some(Err(_)) => false,
        }
    }

    /// A bound user's registration IQ: the form, a password change or the
    /// removal of the account.
    pub(super) fn on_bound_register(&mut self, iq: Element, full: FullJid) {
        let user = full.to_bare();
        let node = user
            .node()
            .map(|n| n.as_str().to_string())
            .unwrap_or_default();
        let request = match register::parse(&iq) {
            Ok(r) => r,
            Err(cond) => return self.reply_error(&iq, cond),
        };
        if matches!(request, Request::Form) {
            let reply = iq_result(&iq, Some(register::form(Some(&node))));
            return self.write_stanza(&reply);
        }
        if self.account_write.is_some() {
            return self.reply_error(&iq, DefinedCondition::ResourceConstraint);
        }
        match request {
            Request::Set { username, password } => {
                // Only one's own password (§3.3).
                if self.user_of(username.trim()).as_ref() != Some(&user) {
                    return self.reply_error(&iq, DefinedCondition::NotAllowed);
                }
                if prepare_password(&password).is_err() {
                    return self.reply_error(&iq, DefinedCondition::NotAcceptable);
                }
                // A new password costs a key derivation: the source's
                // rate is asked first.
                self.account_write = Some(BoundChange {
                    iq: skeleton(&iq),
                    remove: false,
                    waiting: Some(Password(password)),
                });
                self.out.push_back(C2sOutput::RegistrationAttempt(user));
            }
            Request::Remove => {
                self.account_write = Some(BoundChange {
                    iq: skeleton(&iq),
                    remove: true,
                    waiting: None,
                });
                self.out.push_back(C2sOutput::WriteAccount {
                    user,
                    change: AccountChange::Remove,
                });
            }
            Request::Form => {}
        }
    }
}

#[cfg(test)]
mod tests;
