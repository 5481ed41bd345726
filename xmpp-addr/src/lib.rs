//! # xmpp-addr: validated XMPP domains
//!
//! Domains and JIDs from the wire, validated and normalised with the `jid`
//! crate before anything compares, stores or signs them. Shared by the s2s
//! edge and the ring's services, so that both decide "is this one of our
//! domains" the same way.
//!
//! Every address an edge reads (stream headers, dialback `from`/`to`,
//! stanza `from`/`to`) is attacker-controlled. Comparing raw strings lets
//! `"x y.ring.test"` pass for a ring subdomain, and a dialback key computed
//! over `receiving ' ' originating ' ' id` is only unambiguous when neither
//! domain can contain a space. So nothing here slices strings: a [`Domain`]
//! is the output of the `jid` crate's domain check (IDNA/UTS-46, nameprep,
//! length limits), and [`Served`] answers "is this one of the ring's
//! domains or a subdomain of one" on label boundaries of such values.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;

/// A validated, normalised domain (the domainpart of a JID).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

/// Why a string is not a usable domain or JID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// No value where one is required.
    #[error("missing address")]
    Missing,
    /// The `jid` crate refused it.
    #[error("invalid address {value:?}: {reason}")]
    Invalid {
        /// What was received (shortened).
        value: String,
        /// The crate's reason.
        reason: String,
    },
}

fn invalid(value: &str, reason: impl fmt::Display) -> AddressError {
    let mut v: String = value.chars().take(64).collect();
    if v.len() < value.len() {
        v.push('…');
    }
    AddressError::Invalid {
        value: v,
        reason: reason.to_string(),
    }
}

impl Domain {
    /// Parses a bare domain (a stream header's or dialback element's
    /// `to`/`from`). A trailing root dot is dropped, as RFC 6120 §11.4 says.
    pub fn parse(s: &str) -> Result<Domain, AddressError> {
        if s.is_empty() {
            return Err(AddressError::Missing);
        }
        let s = s.strip_suffix('.').unwrap_or(s);
        let d = jid::DomainPart::new(s).map_err(|e| invalid(s, e))?;
        if d.as_str().is_empty() {
            return Err(AddressError::Missing);
        }
        Ok(Domain(d.as_str().to_string()))
    }

    /// The domain of a JID (a stanza's `to`/`from`), the JID being checked
    /// whole: a bad localpart or resource fails too.
    pub fn of_jid(s: &str) -> Result<Domain, AddressError> {
        if s.is_empty() {
            return Err(AddressError::Missing);
        }
        let j = jid::Jid::new(s).map_err(|e| invalid(s, e))?;
        Ok(Domain(j.domain().as_str().to_string()))
    }

    /// The normalised text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is `parent` or a subdomain of it (label-wise).
    pub fn is_within(&self, parent: &Domain) -> bool {
        self.0 == parent.0
            || (self.0.len() > parent.0.len()
                && self.0.ends_with(parent.0.as_str())
                && self.0.as_bytes()[self.0.len() - parent.0.len() - 1] == b'.')
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The domains a ring serves; each one's subdomains (`conference.`,
/// `pubsub.`) are served too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Served(Vec<Domain>);

impl Served {
    /// From configured names; each must be a valid domain.
    pub fn new<S: AsRef<str>>(names: &[S]) -> Result<Served, AddressError> {
        names
            .iter()
            .map(|n| Domain::parse(n.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(Served)
    }

    /// Whether `d` is one of ours (or a subdomain of one).
    pub fn contains(&self, d: &Domain) -> bool {
        self.0.iter().any(|s| d.is_within(s))
    }

    /// Whether the JID or domain `s` parses and is one of ours.
    pub fn serves_jid(&self, s: &str) -> bool {
        Domain::of_jid(s).is_ok_and(|d| self.contains(&d))
    }

    /// The served domains.
    pub fn domains(&self) -> &[Domain] {
        &self.0
    }

    /// The first served domain (used in stream headers before the peer
    /// said which one it wants).
    pub fn first(&self) -> Option<&Domain> {
        self.0.first()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> Served {
        Served::new(&["ring.test"]).unwrap()
    }

    #[test]
    fn parses_and_normalises() {
        let cases: &[(&str, Result<&str, ()>)] = &[
            ("ring.test", Ok("ring.test")),
            ("RING.Test", Ok("ring.test")),
            ("ring.test.", Ok("ring.test")),
            ("127.0.0.1", Ok("127.0.0.1")),
            ("", Err(())),
            (".", Err(())),
            ("x y.ring.test", Err(())),
            ("evil.com pubsub.ring.test", Err(())),
            ("a/b", Err(())),
            ("a@b", Err(())),
            ("-bad-.test", Err(())),
            ("\u{0}.test", Err(())),
        ];
        for (input, want) in cases {
            let got = Domain::parse(input).map(|d| d.0).map_err(|_| ());
            assert_eq!(got.as_deref(), want.as_ref().map(|s| *s), "{input:?}");
        }
        let long = format!("{}.test", "a".repeat(300));
        assert!(Domain::parse(&long).is_err());
    }

    #[test]
    fn jid_domains() {
        let cases: &[(&str, Result<&str, ()>)] = &[
            ("alice@A.test/res", Ok("a.test")),
            ("a.test", Ok("a.test")),
            ("a.test/x@y", Ok("a.test")),
            (
                "room@conference.ring.test/nick with spaces",
                Ok("conference.ring.test"),
            ),
            ("", Err(())),
            ("a@b@c", Err(())),
            ("alice@x y.test", Err(())),
            ("@a.test", Err(())),
        ];
        for (input, want) in cases {
            let got = Domain::of_jid(input).map(|d| d.0).map_err(|_| ());
            assert_eq!(got.as_deref(), want.as_ref().map(|s| *s), "{input:?}");
        }
    }

    #[test]
    fn served_is_label_wise() {
        let s = served();
        for (d, want) in [
            ("ring.test", true),
            ("conference.ring.test", true),
            ("a.b.ring.test", true),
            ("evilring.test", false),
            ("ring.test.evil", false),
            ("a.test", false),
        ] {
            assert_eq!(s.contains(&Domain::parse(d).unwrap()), want, "{d}");
        }
        assert!(s.serves_jid("admin@ring.test"));
        assert!(!s.serves_jid("admin@x y.ring.test"));
        assert!(Served::new(&["not a domain"]).is_err());
    }
}
