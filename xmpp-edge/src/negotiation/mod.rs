//! Stream negotiation as sans-IO state machines, in the style of the dht
//! core and of quinn-proto: the machines take what the peer said
//! (`handle_*`, with `now` passed in) and queue what to do (`poll_output`),
//! and they never touch a socket, a clock or the OS's randomness. The
//! drivers in `inbound.rs` and `outbound.rs` move bytes, run TLS and
//! timers, and do nothing protocol-specific; the machines' tests drive
//! them with recorded exchanges, stanza by stanza.
//!
//! * [`inbound::InboundStream`]: a stream another server opened to us.
//! * [`outbound::OutboundStream`]: a stream we open, to carry stanzas or to
//!   verify a dialback key.
//!
//! Both answer `db:verify` the same way ([`answer_verify`]): any edge of
//! the ring can confirm a key any other edge issued.

pub mod inbound;
pub mod outbound;

#[cfg(test)]
mod tests;

use crate::dialback::{DialbackElement, Secret};
use crate::domain::{Domain, Served, valid_stream_id};
use xmpp_parsers::minidom::Element;

/// STARTTLS namespace.
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// SASL namespace.
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// The dialback stream feature.
pub const NS_DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";

/// What a peer's `<stream:features>` offer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// STARTTLS offered.
    pub starttls: bool,
    /// SASL EXTERNAL offered.
    pub external: bool,
    /// Dialback offered (as a feature).
    pub dialback: bool,
}

impl Features {
    /// Reads a features element.
    pub fn parse(el: &Element) -> Features {
        let mut f = Features::default();
        for c in el.children() {
            match (c.ns().as_str(), c.name()) {
                (NS_TLS, "starttls") => f.starttls = true,
                (NS_DIALBACK_FEATURE, "dialback") => f.dialback = true,
                (NS_SASL, "mechanisms") => {
                    f.external = c
                        .children()
                        .any(|m| m.name() == "mechanism" && m.text().trim() == "EXTERNAL");
                }
                _ => {}
            }
        }
        f
    }

    /// The `<stream:features>` element offering these.
    pub fn to_xml(&self) -> String {
        let mut out = String::from("<stream:features>");
        if self.starttls {
            out.push_str(&format!(
                "<starttls xmlns='{NS_TLS}'><required/></starttls>"
            ));
        }
        if self.external {
            out.push_str(&format!(
                "<mechanisms xmlns='{NS_SASL}'><mechanism>EXTERNAL</mechanism></mechanisms>"
            ));
        }
        if self.dialback {
            out.push_str(&format!(
                "<dialback xmlns='{NS_DIALBACK_FEATURE}'><errors/></dialback>"
            ));
        }
        out.push_str("</stream:features>");
        out
    }
}

/// Answers a `db:verify` request (a receiving server asking us, as the
/// authoritative server of `to`, whether we issued `key`). Valid only when
/// `to` is one of our domains, `from` is a valid domain that is not ours,
/// the id is a well-formed stream id and the key matches: every input of
/// the key is validated, so no two different triples share a key string.
/// Returns the answer element's text and whether it said valid.
pub fn answer_verify(served: &Served, secret: &Secret, d: &DialbackElement) -> (String, bool) {
    let id = d.id.as_deref().unwrap_or("");
    let valid = match (Domain::parse(&d.from), Domain::parse(&d.to)) {
        (Ok(receiving), Ok(originating)) => {
            served.contains(&originating)
                && !served.contains(&receiving)
                && valid_stream_id(id)
                && secret.verify(&receiving, &originating, id, &d.key)
        }
        _ => false,
    };
    (
        crate::dialback::verify_answer(&d.to, &d.from, id, valid),
        valid,
    )
}
