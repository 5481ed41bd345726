//! In-band registration (XEP-0077): what a client may ask of the
//! `jabber:iq:register` namespace, read from its IQ, and the form the
//! server answers a `get` with. The element shapes are xmpp-parsers'
//! (`ibr::LegacyQuery`, `ibr::RemoveQuery`); this module only decides what
//! a request means for a ring account.
//!
//! Three requests exist:
//! * before authentication, `get` (the form) and `set` with a user name and
//!   a password (a new account), when the operator switched registration
//!   on (`c2s_register`, off by default: open sign-up invites spam);
//! * from a bound session, `set` with the user's own name and a new
//!   password (a password change, §3.3) and `set` with `<remove/>` (the
//!   account is deleted, §3.2). These are the user's own account, so they
//!   are allowed whether or not sign-up is.

use xmpp_parsers::ibr::{LegacyQuery, RemoveQuery};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

/// The namespace of registration IQs.
pub use xmpp_parsers::ns::REGISTER as NS_REGISTER;

/// The stream feature that announces registration before authentication.
pub use xmpp_parsers::ns::REGISTER_FEATURE as NS_REGISTER_FEATURE;

/// What the form says.
const INSTRUCTIONS: &str = "Choose a user name and a password for this server.";

/// A registration request.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `get`: which fields to fill.
    Form,
    /// `set` with a user name and a password: a new account (before
    /// authentication) or a new password (the user's own, bound).
    Set {
        /// The user name (the local part), as sent.
        username: String,
        /// The password, as sent (SASLprep is the account's to apply).
        password: String,
    },
    /// `set` with `<remove/>`: delete the account.
    Remove,
}

/// The `<query xmlns='jabber:iq:register'/>` of an IQ, if it has one.
pub fn query(iq: &Element) -> Option<&Element> {
    if iq.name() != "iq" {
        return None;
    }
    iq.get_child("query", NS_REGISTER)
}

/// Reads the registration request an IQ carries; the stanza error to
/// answer with when it is not a usable one.
pub fn parse(iq: &Element) -> Result<Request, DefinedCondition> {
    let q = query(iq).ok_or(DefinedCondition::BadRequest)?;
    match iq.attr("type") {
        Some("get") => Ok(Request::Form),
        Some("set") => {
            if q.has_child("remove", NS_REGISTER) {
                return RemoveQuery::try_from(q.clone())
                    .map(|_| Request::Remove)
                    .map_err(|_| DefinedCondition::BadRequest);
            }
            let legacy =
                LegacyQuery::try_from(q.clone()).map_err(|_| DefinedCondition::BadRequest)?;
            // §3.1: both fields are required; a missing one is
            // `not-acceptable`.
            match (legacy.username, legacy.password) {
                (Some(username), Some(password))
                    if !username.trim().is_empty() && !password.is_empty() =>
                {
                    Ok(Request::Set { username, password })
                }
                _ => Err(DefinedCondition::NotAcceptable),
            }
        }
        _ => Err(DefinedCondition::BadRequest),
    }
}

/// The form: instructions and the two fields; `registered`: the user name
/// of the session asking (a bound client asking about its own account).
pub fn form(registered: Option<&str>) -> Element {
    let q = LegacyQuery {
        registered: registered.is_some(),
        instructions: Some(INSTRUCTIONS.into()),
        username: Some(registered.unwrap_or_default().into()),
        password: Some(String::new()),
        ..LegacyQuery::default()
    };
    Element::from(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iq(xml: &str) -> Element {
        xml.parse().expect("test XML")
    }

    #[test]
    fn requests_table() {
        let table: &[(&str, Result<Request, DefinedCondition>)] = &[
            (
                "<iq xmlns='jabber:client' type='get' id='1'><query xmlns='jabber:iq:register'/></iq>",
                Ok(Request::Form),
            ),
            (
                "<iq xmlns='jabber:client' type='set' id='1'><query xmlns='jabber:iq:register'><username>bill</username><password>Calliope</password></query></iq>",
                Ok(Request::Set {
                    username: "bill".into(),
                    password: "Calliope".into(),
                }),
            ),
            (
                "<iq xmlns='jabber:client' type='set' id='1'><query xmlns='jabber:iq:register'><remove/></query></iq>",
                Ok(Request::Remove),
            ),
            // A field missing or empty: not-acceptable (§3.1).
            (
                "<iq xmlns='jabber:client' type='set' id='1'><query xmlns='jabber:iq:register'><username>bill</username></query></iq>",
                Err(DefinedCondition::NotAcceptable),
            ),
            (
                "<iq xmlns='jabber:client' type='set' id='1'><query xmlns='jabber:iq:register'><username> </username><password>x</password></query></iq>",
                Err(DefinedCondition::NotAcceptable),
            ),
            (
                "<iq xmlns='jabber:client' type='set' id='1'><query xmlns='jabber:iq:register'><username>bill</username><password/></query></iq>",
                Err(DefinedCondition::NotAcceptable),
            ),
            // Not a registration, or of the wrong type.
            (
                "<iq xmlns='jabber:client' type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>",
                Err(DefinedCondition::BadRequest),
            ),
            (
                "<iq xmlns='jabber:client' type='result' id='1'><query xmlns='jabber:iq:register'/></iq>",
                Err(DefinedCondition::BadRequest),
            ),
            // Fields twice: not a form anyone filled honestly.
            (
                "<iq xmlns='jabber:client' type='set' id='1'><query xmlns='jabber:iq:register'><username>a</username><username>b</username><password>x</password></query></iq>",
                Err(DefinedCondition::BadRequest),
            ),
        ];
        for (xml, want) in table {
            assert_eq!(&parse(&iq(xml)), want, "{xml}");
        }
    }

    #[test]
    fn the_form_names_its_fields_and_round_trips() {
        let f = form(None);
        assert_eq!(f.name(), "query");
        assert_eq!(f.ns(), NS_REGISTER);
        assert!(f.get_child("username", NS_REGISTER).is_some());
        assert!(f.get_child("password", NS_REGISTER).is_some());
        assert!(f.get_child("instructions", NS_REGISTER).is_some());
        assert!(f.get_child("registered", NS_REGISTER).is_none());
        let mine = form(Some("alice"));
        assert!(mine.get_child("registered", NS_REGISTER).is_some());
        assert_eq!(
            mine.get_child("username", NS_REGISTER).map(|u| u.text()),
            Some("alice".to_string())
        );
        // What we write, xmpp-parsers reads back.
        let back = LegacyQuery::try_from(mine).expect("parses");
        assert!(back.registered);
        assert_eq!(back.username.as_deref(), Some("alice"));
    }
}
