//! One stanza for many recipients: how MUC broadcasts and PubSub
//! notifications leave the ring.
//!
//! A room or node with many followers must not make its host route one
//! envelope per recipient: the host would carry every delivery alone and
//! the ring would carry the same payload many times. Instead the host
//! groups recipients by domain and sends, per remote domain, one
//! `Service(SERVICE_EDGE_FANOUT)` envelope to the edge that carries that
//! domain (the same rendezvous choice as single stanzas, so per-domain order
//! holds). The envelope holds the stanza once and the list of recipients;
//! the edge writes one copy per recipient on its s2s stream. Recipients in
//! the ring's own domains are routed one by one (they live at different
//! keys).

// Items named after XEP-0045/0060/0004 terms (roles, affiliations, form
// fields, namespaces) are documented by those XEPs.
#![allow(missing_docs)]

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use xmpp_addr::Domain;
use xmpp_parsers::minidom::Element;

/// Recipients per fan-out envelope (bounds the envelope's size: a few KiB
/// of JIDs plus the stanza).
pub const MAX_RECIPIENTS_PER_ENVELOPE: usize = 256;

/// A fan-out envelope's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanoutMsg {
    /// The stanza, serialised, without a `to`.
    pub stanza: String,
    /// The recipients' JIDs.
    pub to: Vec<String>,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 2 * 1024 * 1024 }>()
}

impl FanoutMsg {
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, config()).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<FanoutMsg> {
        match bincode::serde::decode_from_slice(bytes, config()) {
            Ok((m, n)) if n == bytes.len() => Some(m),
            _ => None,
        }
    }

    /// One stanza per recipient (`None` if the stanza does not parse).
    pub fn expand(&self) -> Option<Vec<Element>> {
        let template = super::stanza::parse(self.stanza.as_bytes())?;
        Some(
            self.to
                .iter()
                .map(|jid| {
                    let mut el = template.clone();
                    super::stanza::set(&mut el, "to", jid);
                    el
                })
                .collect(),
        )
    }
}

/// Recipients grouped by their domain. Recipients come from service state,
/// where only valid JIDs are kept; one that does not parse is logged and
/// left out.
pub fn by_domain(to: Vec<String>) -> BTreeMap<Domain, Vec<String>> {
    let mut out: BTreeMap<Domain, Vec<String>> = BTreeMap::new();
    for jid in to {
        match Domain::of_jid(&jid) {
            Ok(d) => out.entry(d).or_default().push(jid),
            Err(e) => tracing::warn!("a broadcast recipient is not a JID: {e}"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_expand() {
        let m = FanoutMsg {
            stanza: "<message xmlns='jabber:client' from='r@conference.ring.test/n' type='groupchat'><body>hi</body></message>".into(),
            to: vec!["a@a.test/x".into(), "b@a.test/y".into()],
        };
        let bytes = m.encode();
        assert_eq!(FanoutMsg::decode(&bytes), Some(m.clone()));
        let els = m.expand().unwrap();
        assert_eq!(els.len(), 2);
        assert_eq!(els[1].attr("to"), Some("b@a.test/y"));
        assert_eq!(els[1].attr("from"), Some("r@conference.ring.test/n"));
        for cut in 0..bytes.len() {
            assert_eq!(FanoutMsg::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let bad = FanoutMsg {
            stanza: "<nope/>".into(),
            to: vec![],
        };
        assert!(bad.expand().is_none());
    }

    #[test]
    fn grouping_by_domain() {
        let g = by_domain(vec![
            "a@a.test/1".into(),
            "b@b.test".into(),
            "c@a.test".into(),
        ]);
        let d = |s: &str| Domain::parse(s).unwrap();
        assert_eq!(g[&d("a.test")], vec!["a@a.test/1", "c@a.test"]);
        assert_eq!(g[&d("b.test")], vec!["b@b.test"]);
    }
}
