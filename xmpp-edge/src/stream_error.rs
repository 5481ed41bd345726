//! Stream error conditions (RFC 6120 §4.9.3) and their serialisation.
//!
//! A stream error ends the stream: the sender writes
//! `<stream:error><condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>
//! </stream:error></stream:stream>` and closes that connection only.

use crate::escape::escape_text;

/// The namespace of stream error conditions.
pub const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

/// The conditions this implementation sends (RFC 6120 names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Condition {
    /// Unparsable XML.
    NotWellFormed,
    /// Forbidden XML features (DTD, comments, PIs, entities).
    RestrictedXml,
    /// A local policy (size, depth, rate) was broken.
    PolicyViolation,
    /// Wrong stream or content namespace.
    InvalidNamespace,
    /// The header's `to` is not a domain we serve.
    HostUnknown,
    /// A stanza's `from` is not an authenticated domain.
    InvalidFrom,
    /// Something came before it was allowed (e.g. dialback before features).
    NotAuthorized,
    /// The peer did not follow the protocol.
    UnsupportedStanzaType,
    /// Idle for too long.
    ConnectionTimeout,
    /// The server is shutting down.
    SystemShutdown,
    /// Anything else.
    UndefinedCondition,
    /// The header lacks a required attribute or has a wrong version.
    UnsupportedVersion,
    /// A bad header attribute or element order.
    BadFormat,
    /// Too many connections or too much load.
    ResourceConstraint,
    /// An internal failure.
    InternalServerError,
    /// A stanza lacks a required `to` or `from`.
    ImproperAddressing,
    /// A new stream took over this one's address (c2s: a session with the
    /// same full JID replaced it).
    Conflict,
}

impl Condition {
    /// The element name of the condition.
    pub fn name(self) -> &'static str {
        match self {
            Condition::NotWellFormed => "not-well-formed",
            Condition::RestrictedXml => "restricted-xml",
            Condition::PolicyViolation => "policy-violation",
            Condition::InvalidNamespace => "invalid-namespace",
            Condition::HostUnknown => "host-unknown",
            Condition::InvalidFrom => "invalid-from",
            Condition::NotAuthorized => "not-authorized",
            Condition::UnsupportedStanzaType => "unsupported-stanza-type",
            Condition::ConnectionTimeout => "connection-timeout",
            Condition::SystemShutdown => "system-shutdown",
            Condition::UndefinedCondition => "undefined-condition",
            Condition::UnsupportedVersion => "unsupported-version",
            Condition::BadFormat => "bad-format",
            Condition::ResourceConstraint => "resource-constraint",
            Condition::InternalServerError => "internal-server-error",
            Condition::ImproperAddressing => "improper-addressing",
            Condition::Conflict => "conflict",
        }
    }

    /// The `<stream:error>` element, optionally with a human-readable text.
    pub fn to_xml(self, text: Option<&str>) -> String {
        let text = text
            .map(|t| format!("<text xmlns='{NS_STREAM_ERRORS}'>{}</text>", escape_text(t)))
            .unwrap_or_default();
        format!(
            "<stream:error><{} xmlns='{NS_STREAM_ERRORS}'/>{text}</stream:error>",
            self.name()
        )
    }

    /// Parses a received `<stream:error>` (for logs).
    pub fn from_element(el: &xmpp_parsers::minidom::Element) -> Option<String> {
        el.children()
            .find(|c| c.ns() == NS_STREAM_ERRORS && c.name() != "text")
            .map(|c| c.name().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_with_text() {
        assert_eq!(
            Condition::HostUnknown.to_xml(Some("no <such> host")),
            "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>no &lt;such&gt; host</text></stream:error>"
        );
        assert_eq!(
            Condition::NotWellFormed.to_xml(None),
            "<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
        );
    }
}
