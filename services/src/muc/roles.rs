//! Affiliations (a user's standing in a room) and roles (an occupant's
//! part in the current visit), XEP-0045 §5, with their xmpp-parsers forms.

// Items named after XEP-0045 terms are documented by the XEP.
#![allow(missing_docs)]

use serde::{Deserialize, Serialize};
use xmpp_parsers::muc::user::Affiliation as XAffiliation;

/// A user's long-lived standing in a room, ordered by rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn parse(s: &str) -> Option<Affiliation> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }

    pub(crate) fn to_x(self) -> XAffiliation {
        match self {
            Affiliation::Outcast => XAffiliation::Outcast,
            Affiliation::None => XAffiliation::None,
            Affiliation::Member => XAffiliation::Member,
            Affiliation::Admin => XAffiliation::Admin,
            Affiliation::Owner => XAffiliation::Owner,
        }
    }
}

/// An occupant's role for the current visit, ordered by rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }
}
