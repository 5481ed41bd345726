//! What a responsible node answers for the JIDs whose keys it holds.
//!
//! For now: XEP-0199 ping and XEP-0030 disco#info for the ring's domain
//! JIDs (and their service subdomains), and `service-unavailable` for
//! everything addressed to a JID that no service handles (RFC 6121 §8.5 for
//! unknown users). The MUC, PubSub and record services join here later.

use super::stanza::{self, error_reply};
use xmpp_edge::conn::serves;
use xmpp_edge::xml::NS_CLIENT;
use xmpp_parsers::disco::{DiscoInfoResult, Identity};
use xmpp_parsers::minidom::Element;

const NS_PING: &str = "urn:xmpp:ping";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";

/// Answers a stanza delivered to this node as the responsible node of its
/// `to`. Returns the stanzas to send in reply (possibly none).
pub fn handle(stanza: &Element, domains: &[String]) -> Vec<Element> {
    let Some(to) = stanza::to(stanza) else {
        return error_reply(stanza, "jid-malformed", Some("stanza without 'to'"))
            .into_iter()
            .collect();
    };
    let Ok(jid) = jid::Jid::new(to) else {
        return error_reply(stanza, "jid-malformed", None)
            .into_iter()
            .collect();
    };
    let domain_jid =
        jid.node().is_none() && jid.resource().is_none() && serves(domains, jid.domain().as_str());
    if stanza.name() == "iq" && stanza.attr("type") == Some("get") && domain_jid {
        let payload = stanza.children().next();
        if payload.is_some_and(|p| p.is("ping", NS_PING)) {
            return vec![result(stanza, None)];
        }
        if let Some(q) = payload.filter(|p| p.is("query", NS_DISCO_INFO))
            && q.attr("node").is_none()
        {
            let info = DiscoInfoResult {
                node: None,
                identities: vec![Identity::new("server", "im", "en", "xmpp-ring")],
                features: [NS_DISCO_INFO, NS_PING]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                extensions: vec![],
            };
            return vec![result(stanza, Some(info.into()))];
        }
        return error_reply(stanza, "service-unavailable", None)
            .into_iter()
            .collect();
    }
    if stanza.name() == "presence" && !matches!(stanza.attr("type"), None | Some("subscribe")) {
        // Unavailable presence, probes, unsubscriptions and errors to JIDs
        // without a service are ignored, as servers do for unknown users.
        return Vec::new();
    }
    error_reply(stanza, "service-unavailable", None)
        .into_iter()
        .collect()
}

fn result(iq: &Element, payload: Option<Element>) -> Element {
    let mut r = Element::bare("iq", NS_CLIENT);
    stanza::set(&mut r, "type", "result");
    if let Some(id) = iq.attr("id") {
        stanza::set(&mut r, "id", id);
    }
    if let Some(to) = iq.attr("to") {
        stanza::set(&mut r, "from", to);
    }
    if let Some(from) = iq.attr("from") {
        stanza::set(&mut r, "to", from);
    }
    if let Some(p) = payload {
        r.append_child(p);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(xml: &str) -> Vec<Element> {
        handle(&xml.parse().unwrap(), &["ring.test".to_string()])
    }

    #[test]
    fn ping_to_the_domain_is_answered() {
        let r = run(
            "<iq xmlns='jabber:client' type='get' id='p1' from='alice@a.test/x' to='ring.test'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].attr("type"), Some("result"));
        assert_eq!(r[0].attr("id"), Some("p1"));
        assert_eq!(r[0].attr("to"), Some("alice@a.test/x"));
        assert_eq!(r[0].attr("from"), Some("ring.test"));
    }

    #[test]
    fn disco_info_of_the_domain() {
        let r = run(
            "<iq xmlns='jabber:client' type='get' id='d' from='a@a.test' to='ring.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        );
        let q = r[0]
            .get_child("query", NS_DISCO_INFO)
            .expect("disco result");
        let info = DiscoInfoResult::try_from(q.clone()).unwrap();
        assert!(info.features.contains(NS_PING));
        assert_eq!(info.identities[0].category, "server");
    }

    #[test]
    fn jids_without_a_service_are_unavailable() {
        for xml in [
            "<message xmlns='jabber:client' from='a@a.test' to='nobody@ring.test' id='m'><body>x</body></message>",
            "<iq xmlns='jabber:client' type='get' id='i' from='a@a.test' to='nobody@ring.test'><ping xmlns='urn:xmpp:ping'/></iq>",
            "<iq xmlns='jabber:client' type='set' id='i' from='a@a.test' to='ring.test'><query xmlns='jabber:iq:version'/></iq>",
            "<presence xmlns='jabber:client' type='subscribe' from='a@a.test' to='nobody@ring.test'/>",
        ] {
            let r = run(xml);
            assert_eq!(r.len(), 1, "{xml}");
            assert_eq!(r[0].attr("type"), Some("error"));
            let e = r[0].get_child("error", NS_CLIENT).unwrap();
            assert!(
                e.get_child("service-unavailable", stanza::NS_STANZAS)
                    .is_some()
            );
        }
    }

    #[test]
    fn errors_results_and_unavailable_presence_get_no_answer() {
        assert!(
            run("<message xmlns='jabber:client' type='error' from='a@a.test' to='x@ring.test'/>")
                .is_empty()
        );
        assert!(
            run("<iq xmlns='jabber:client' type='result' id='1' from='a@a.test' to='ring.test'/>")
                .is_empty()
        );
        assert!(run("<presence xmlns='jabber:client' type='unavailable' from='a@a.test' to='x@ring.test'/>").is_empty());
    }
}
