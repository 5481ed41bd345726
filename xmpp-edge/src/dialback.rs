//! Server dialback (XEP-0220) with keys generated as XEP-0185 recommends.
//!
//! A key is `HMAC-SHA256(SHA-256(secret), receiving ' ' originating ' '
//! stream-id)` in lowercase hex. Every edge of a ring holds the same secret,
//! so whichever edge a remote server asks to verify a key (with `db:verify`)
//! can confirm a key that another edge issued, without any shared state.
//!
//! The concatenation is only unambiguous when its parts cannot contain the
//! separator: the domains are [`Domain`]s (validated by the `jid` crate, no
//! spaces) and the stream id must pass [`valid_stream_id`]. Otherwise a
//! remote that chooses its stream id as `"ring.test S"` could obtain a key
//! that also reads as one for a different pair of domains.

use crate::domain::{Domain, valid_stream_id};
use crate::escape::{escape_attr, escape_text};
use crate::xml::NS_DIALBACK;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

/// The ring-wide dialback secret, kept as the HMAC key XEP-0185 derives
/// from it: the hex form of `SHA-256(secret)`.
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Derives the HMAC key from the configured secret bytes.
    pub fn new(secret: &[u8]) -> Self {
        Secret(
            Sha256::digest(secret)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }

    /// The dialback key for `originating` (us) asking `receiving` to accept
    /// the stream with id `stream_id`; `None` when the id is not a usable
    /// token.
    pub fn key(&self, receiving: &Domain, originating: &Domain, stream_id: &str) -> Option<String> {
        if !valid_stream_id(stream_id) {
            return None;
        }
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.0.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(receiving.as_str().as_bytes());
        mac.update(b" ");
        mac.update(originating.as_str().as_bytes());
        mac.update(b" ");
        mac.update(stream_id.as_bytes());
        let tag = mac.finalize().into_bytes();
        Some(tag.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Checks a key in constant time.
    pub fn verify(
        &self,
        receiving: &Domain,
        originating: &Domain,
        stream_id: &str,
        key: &str,
    ) -> bool {
        let Some(want) = self.key(receiving, originating, stream_id) else {
            return false;
        };
        want.len() == key.len()
            && want
                .bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// A dialback element as received (either `result` or `verify`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialbackElement {
    /// `true` for `db:verify`, `false` for `db:result`.
    pub verify: bool,
    /// `from`.
    pub from: String,
    /// `to`.
    pub to: String,
    /// `id` (verify only).
    pub id: Option<String>,
    /// `type` on answers (`valid`, `invalid`, `error`).
    pub kind: Option<String>,
    /// The key (requests only).
    pub key: String,
}

impl DialbackElement {
    /// Parses `<db:result>` or `<db:verify>` (any prefix form).
    pub fn parse(el: &Element) -> Option<Self> {
        if el.ns() != NS_DIALBACK {
            return None;
        }
        let verify = match el.name() {
            "result" => false,
            "verify" => true,
            _ => return None,
        };
        Some(DialbackElement {
            verify,
            from: el.attr("from")?.to_string(),
            to: el.attr("to")?.to_string(),
            id: el.attr("id").map(str::to_string),
            kind: el.attr("type").map(str::to_string),
            key: el.text().trim().to_string(),
        })
    }
}

/// `<db:result from='originating' to='receiving'>key</db:result>`
pub fn result_request(originating: &str, receiving: &str, key: &str) -> String {
    format!(
        "<db:result from='{}' to='{}'>{}</db:result>",
        escape_attr(originating),
        escape_attr(receiving),
        escape_text(key)
    )
}

/// `<db:result from='receiving' to='originating' type='valid|invalid'/>`
pub fn result_answer(receiving: &str, originating: &str, valid: bool) -> String {
    format!(
        "<db:result from='{}' to='{}' type='{}'/>",
        escape_attr(receiving),
        escape_attr(originating),
        if valid { "valid" } else { "invalid" }
    )
}

/// `<db:result from='receiving' to='originating' type='error'>` with a
/// stanza error condition (XEP-0220 §2.4): the key could not be checked.
pub fn result_error(receiving: &str, originating: &str, condition: &DefinedCondition) -> String {
    let kind = match condition {
        DefinedCondition::ResourceConstraint
        | DefinedCondition::RemoteServerTimeout
        | DefinedCondition::InternalServerError => "wait",
        _ => "cancel",
    };
    // The condition's RFC 6120 name, as xmpp-parsers writes it.
    let name = Element::from(condition.clone()).name().to_string();
    format!(
        "<db:result from='{}' to='{}' type='error'><error type='{kind}'><{name} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>",
        escape_attr(receiving),
        escape_attr(originating),
    )
}

/// `<db:verify from='receiving' to='originating' id='stream id'>key</db:verify>`
pub fn verify_request(receiving: &str, originating: &str, id: &str, key: &str) -> String {
    format!(
        "<db:verify from='{}' to='{}' id='{}'>{}</db:verify>",
        escape_attr(receiving),
        escape_attr(originating),
        escape_attr(id),
        escape_text(key)
    )
}

/// `<db:verify from='originating' to='receiving' id='…' type='valid|invalid'/>`
pub fn verify_answer(originating: &str, receiving: &str, id: &str, valid: bool) -> String {
    format!(
        "<db:verify from='{}' to='{}' id='{}' type='{}'/>",
        escape_attr(originating),
        escape_attr(receiving),
        escape_attr(id),
        if valid { "valid" } else { "invalid" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Domain {
        Domain::parse(s).unwrap()
    }

    #[test]
    fn key_vector() {
        // Computed independently with Python:
        //   k = hashlib.sha256(b's3cr3tf0rd14lb4ck').hexdigest().encode()
        //   hmac.new(k, b'example.net example.org D60000229F', hashlib.sha256).hexdigest()
        let s = Secret::new(b"s3cr3tf0rd14lb4ck");
        assert_eq!(
            s.key(&d("example.net"), &d("example.org"), "D60000229F")
                .as_deref(),
            Some("787d747fddd82406a36c193fd1437027b163c5f9f787a2b77c30d15409c34aa3")
        );
    }

    #[test]
    fn keys_bind_every_input() {
        let s = Secret::new(b"x");
        let (a, b) = (d("a.test"), d("b.test"));
        let k = s.key(&a, &b, "c").unwrap();
        assert!(s.verify(&a, &b, "c", &k));
        assert!(!s.verify(&a, &b, "d", &k));
        assert!(!s.verify(&b, &a, "c", &k));
        assert!(!Secret::new(b"y").verify(&a, &b, "c", &k));
        assert!(!s.verify(&a, &b, "c", &k[1..]));
    }

    #[test]
    fn ambiguous_stream_ids_make_no_key() {
        // The attack of the review: a stream id with a space could make
        // key(evil.com, ring.test, "ring.test S") equal to
        // key(evil.com ring.test, ring.test, "S").
        let s = Secret::new(b"x");
        let (evil, ring) = (d("evil.com"), d("ring.test"));
        assert_eq!(s.key(&evil, &ring, "ring.test S"), None);
        assert_eq!(s.key(&evil, &ring, ""), None);
        assert!(!s.verify(&evil, &ring, "ring.test S", "00"));
    }

    #[test]
    fn parses_any_prefix_form() {
        for xml in [
            "<db:result xmlns:db='jabber:server:dialback' from='a' to='b'>k</db:result>",
            "<result xmlns='jabber:server:dialback' from='a' to='b'>k</result>",
        ] {
            let el: Element = xml.parse().unwrap();
            let d = DialbackElement::parse(&el).unwrap();
            assert!(!d.verify);
            assert_eq!(
                (d.from.as_str(), d.to.as_str(), d.key.as_str()),
                ("a", "b", "k")
            );
        }
        let el: Element =
            "<verify xmlns='jabber:server:dialback' from='a' to='b' id='i' type='valid'/>"
                .parse()
                .unwrap();
        let d = DialbackElement::parse(&el).unwrap();
        assert!(d.verify);
        assert_eq!(d.kind.as_deref(), Some("valid"));
        assert_eq!(d.id.as_deref(), Some("i"));
        // Missing attributes or other namespaces are not dialback.
        let el: Element = "<result xmlns='jabber:server:dialback' from='a'>k</result>"
            .parse()
            .unwrap();
        assert!(DialbackElement::parse(&el).is_none());
        let el: Element = "<result xmlns='urn:other' from='a' to='b'/>"
            .parse()
            .unwrap();
        assert!(DialbackElement::parse(&el).is_none());
    }
}
