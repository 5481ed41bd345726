//! Stanzas as the ring handles them: parsing envelope payloads, addresses,
//! and RFC 6120 error replies.

use xmpp_parsers::minidom::Element;
pub use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

/// The namespace of stanzas inside the ring (the edge converts from and to
/// `jabber:server` on the wire).
pub const NS_CLIENT: &str = xmpp_parsers::ns::JABBER_CLIENT;

/// The stanza error namespace.
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// Largest stanza the ring carries (the edge's default limit).
pub const MAX_STANZA_BYTES: usize = 512 * 1024;

/// Parses an envelope payload into a stanza.
pub fn parse(payload: &[u8]) -> Option<Element> {
    if payload.len() > MAX_STANZA_BYTES {
        return None;
    }
    let text = std::str::from_utf8(payload).ok()?;
    let el: Element = text.parse().ok()?;
    (el.ns() == NS_CLIENT && matches!(el.name(), "message" | "presence" | "iq")).then_some(el)
}

/// Serialises an element (minidom's writer; empty if it cannot be).
pub fn to_string(el: &Element) -> String {
    let mut out = Vec::with_capacity(256);
    if el.write_to(&mut out).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Serialises a stanza for an envelope.
pub fn to_bytes(el: &Element) -> bytes::Bytes {
    bytes::Bytes::from(to_string(el).into_bytes())
}

/// The stanza's `to`, if any.
pub fn to(el: &Element) -> Option<&str> {
    el.attr("to")
}

/// Whether a stanza must never be answered with an error (RFC 6120 §8.3.1:
/// errors are not answered; neither are results).
pub fn is_error_or_result(el: &Element) -> bool {
    match el.attr("type") {
        Some("error") => true,
        Some("result") => el.name() == "iq",
        _ => false,
    }
}

/// The error type RFC 6120 §8.3.3 gives each condition.
pub fn error_type(condition: &DefinedCondition) -> ErrorType {
    use DefinedCondition as C;
    match condition {
        C::ServiceUnavailable
        | C::FeatureNotImplemented
        | C::NotAllowed
        | C::ItemNotFound
        | C::JidMalformed => ErrorType::Cancel,
        C::RemoteServerTimeout
        | C::ResourceConstraint
        | C::RecipientUnavailable
        | C::UnexpectedRequest => ErrorType::Wait,
        C::BadRequest | C::NotAcceptable | C::PolicyViolation => ErrorType::Modify,
        C::Forbidden | C::NotAuthorized | C::RegistrationRequired => ErrorType::Auth,
        _ => ErrorType::Cancel,
    }
}

/// The condition RFC 6120 calls `name` (the dht's bounce reasons name
/// theirs); `undefined-condition` for a name it does not define.
pub fn condition(name: &str) -> DefinedCondition {
    DefinedCondition::try_from(Element::bare(name, NS_STANZAS))
        .unwrap_or(DefinedCondition::UndefinedCondition)
}

/// The stanza without its children (name and attributes): enough to answer
/// it with an error later without keeping its payload.
pub fn shell(stanza: &Element) -> Element {
    let mut s = Element::bare(stanza.name(), stanza.ns());
    for ((ns, name), value) in stanza.attrs().iter() {
        s.set_attr(ns.clone(), name.clone(), value.clone());
    }
    s
}

/// The error reply to `stanza` with `condition`, or `None` when the stanza
/// must not be answered (it is an error or an IQ result itself).
pub fn error_reply(
    stanza: &Element,
    condition: DefinedCondition,
    text: Option<&str>,
) -> Option<Element> {
    error_reply_with(stanza, condition, text, None)
}

/// [`error_reply`] with an application-specific condition element (XEP-0060
/// names one for most of its errors) beside the RFC 6120 one.
pub fn error_reply_with(
    stanza: &Element,
    condition: DefinedCondition,
    text: Option<&str>,
    app: Option<Element>,
) -> Option<Element> {
    if is_error_or_result(stanza) {
        return None;
    }
    let mut reply = Element::bare(stanza.name(), NS_CLIENT);
    copy_attr(stanza, &mut reply, "id", "id");
    copy_attr(stanza, &mut reply, "to", "from");
    copy_attr(stanza, &mut reply, "from", "to");
    reply.set_attr(
        xmpp_parsers::minidom::rxml::Namespace::NONE,
        ncname("type"),
        "error".to_string(),
    );
    // RFC 6120 §8.3.1 allows including the original payload. Like Prosody
    // we leave it out: the id matches the error to what was sent, and an
    // error never costs the return path more than the stanza it answers.
    let error = StanzaError {
        type_: error_type(&condition),
        by: None,
        defined_condition: condition,
        texts: text
            .map(|t| (String::new(), t.to_string()))
            .into_iter()
            .collect(),
        other: app,
    };
    reply.append_child(error.into());
    Some(reply)
}

/// The `result` answer to an IQ, with an optional payload.
pub fn iq_result(iq: &Element, payload: Option<Element>) -> Element {
    let mut r = Element::bare("iq", NS_CLIENT);
    set(&mut r, "type", "result");
    if let Some(id) = iq.attr("id") {
        set(&mut r, "id", id);
    }
    if let Some(to) = iq.attr("to") {
        set(&mut r, "from", to);
    }
    if let Some(from) = iq.attr("from") {
        set(&mut r, "to", from);
    }
    if let Some(p) = payload {
        r.append_child(p);
    }
    r
}

/// A disco#info result payload (XEP-0030): one identity and `features`.
pub fn disco_info(
    node: Option<String>,
    category: &str,
    kind: &str,
    name: &str,
    features: &[&str],
) -> Element {
    xmpp_parsers::disco::DiscoInfoResult {
        node,
        identities: vec![xmpp_parsers::disco::Identity::new(
            category, kind, "en", name,
        )],
        features: features.iter().map(|s| s.to_string()).collect(),
        extensions: vec![],
    }
    .into()
}

/// Removes an attribute.
pub fn unset(el: &mut Element, name: &str) {
    el.attrs_mut()
        .remove(&xmpp_parsers::minidom::rxml::Namespace::NONE, name);
}

/// `jid` without its resource, normalised as keys are (lowercased domain,
/// stringprep'd); the plain prefix if it does not parse.
pub fn bare(jid: &str) -> String {
    dht::keys::normalise_bare_jid(jid)
        .unwrap_or_else(|_| jid.split('/').next().unwrap_or(jid).to_string())
}

fn ncname(s: &str) -> xmpp_parsers::minidom::rxml::NcName {
    xmpp_parsers::minidom::rxml::NcName::try_from(s).expect("static attribute names are valid")
}

fn copy_attr(from: &Element, to: &mut Element, name: &str, as_name: &str) {
    if let Some(v) = from.attr(name) {
        to.set_attr(
            xmpp_parsers::minidom::rxml::Namespace::NONE,
            ncname(as_name),
            v.to_string(),
        );
    }
}

/// Sets (or replaces) an attribute.
pub fn set(el: &mut Element, name: &str, value: &str) {
    el.set_attr(
        xmpp_parsers::minidom::rxml::Namespace::NONE,
        ncname(name),
        value.to_string(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(s: &str) -> Element {
        s.parse().unwrap()
    }

    #[test]
    fn error_replies_swap_addresses_and_name_the_condition() {
        let m = el(
            "<message xmlns='jabber:client' from='a@x/r' to='b@y' id='7'><body>hi</body></message>",
        );
        let e = error_reply(
            &m,
            DefinedCondition::ServiceUnavailable,
            Some("no such user"),
        )
        .unwrap();
        assert_eq!(e.attr("from"), Some("b@y"));
        assert_eq!(e.attr("to"), Some("a@x/r"));
        assert_eq!(e.attr("id"), Some("7"));
        assert_eq!(e.attr("type"), Some("error"));
        assert!(
            e.get_child("body", NS_CLIENT).is_none(),
            "no original payload"
        );
        assert_eq!(e.children().count(), 1);
        let err = e.get_child("error", NS_CLIENT).unwrap();
        assert_eq!(err.attr("type"), Some("cancel"));
        assert!(err.get_child("service-unavailable", NS_STANZAS).is_some());
        assert_eq!(
            err.get_child("text", NS_STANZAS).map(|t| t.text()),
            Some("no such user".into())
        );
    }

    #[test]
    fn errors_and_results_are_never_answered() {
        assert!(
            error_reply(
                &el("<message xmlns='jabber:client' type='error'/>"),
                DefinedCondition::BadRequest,
                None
            )
            .is_none()
        );
        assert!(
            error_reply(
                &el("<iq xmlns='jabber:client' type='result' id='1'/>"),
                DefinedCondition::BadRequest,
                None
            )
            .is_none()
        );
        assert!(
            error_reply(
                &el("<iq xmlns='jabber:client' type='get' id='1'/>"),
                DefinedCondition::BadRequest,
                None
            )
            .is_some()
        );
    }

    #[test]
    fn conditions_by_name_and_their_types() {
        for (name, ty) in [
            ("item-not-found", ErrorType::Cancel),
            ("resource-constraint", ErrorType::Wait),
            ("policy-violation", ErrorType::Modify),
            ("not-authorized", ErrorType::Auth),
            ("remote-server-not-found", ErrorType::Cancel),
        ] {
            let c = condition(name);
            assert_ne!(c, DefinedCondition::UndefinedCondition, "{name}");
            assert_eq!(error_type(&c), ty, "{name}");
            let e = error_reply(
                &el("<iq xmlns='jabber:client' type='get' id='1'/>"),
                c,
                None,
            )
            .unwrap();
            let err = e.get_child("error", NS_CLIENT).unwrap();
            assert!(err.get_child(name, NS_STANZAS).is_some(), "{name}");
            assert!(err.get_child("text", NS_STANZAS).is_none());
        }
        assert_eq!(
            condition("no-such-thing"),
            DefinedCondition::UndefinedCondition
        );
    }

    #[test]
    fn payload_parsing_is_strict() {
        assert!(parse(b"<message xmlns='jabber:client'/>").is_some());
        assert!(parse(b"<message xmlns='jabber:server'/>").is_none());
        assert!(parse(b"<foo xmlns='jabber:client'/>").is_none());
        assert!(parse(b"not xml").is_none());
        assert!(parse(&[0xff, 0xfe]).is_none());
    }
}
