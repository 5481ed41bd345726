//! Directed presence (RFC 6121 §4.6), as the access node remembers it:
//! whom each session sent available presence to directly (a MUC room,
//! typically). When the session goes unavailable or its connection ends,
//! each of them gets unavailable presence, so a client that drops does not
//! stay behind as an occupant.

use jid::FullJid;
use ring_services::stanza::set;
use std::collections::{BTreeSet, HashMap};
use xmpp_parsers::minidom::Element;

/// Targets remembered per session; directed presence past it is still
/// sent, only not remembered.
pub const MAX_DIRECTED: usize = 256;

/// The `jabber:client` namespace.
const NS_CLIENT: &str = "jabber:client";

/// The targets of every session's directed presence.
#[derive(Debug, Default)]
pub struct DirectedPresence {
    by_session: HashMap<FullJid, BTreeSet<String>>,
}

impl DirectedPresence {
    /// `from` sent `presence` to its `to` (the caller routes it): available
    /// presence adds the target, unavailable presence removes it; other
    /// types change nothing.
    pub fn handle_sent(&mut self, from: &FullJid, presence: &Element) {
        let Some(to) = presence.attr("to") else {
            return;
        };
        match presence.attr("type") {
            None => {
                let targets = self.by_session.entry(from.clone()).or_default();
                if targets.len() < MAX_DIRECTED {
                    targets.insert(to.to_string());
                }
            }
            Some("unavailable") => {
                if let Some(targets) = self.by_session.get_mut(from) {
                    targets.remove(to);
                    if targets.is_empty() {
                        self.by_session.remove(from);
                    }
                }
            }
            _ => {}
        }
    }

    /// `full` went unavailable or ended: the unavailable presence each of
    /// its targets is to get, and it is forgotten.
    pub fn take(&mut self, full: &FullJid) -> Vec<Element> {
        self.by_session
            .remove(full)
            .unwrap_or_default()
            .into_iter()
            .map(|to| {
                let mut p = Element::bare("presence", NS_CLIENT);
                set(&mut p, "type", "unavailable");
                set(&mut p, "from", full.as_str());
                set(&mut p, "to", &to);
                p
            })
            .collect()
    }

    /// Sessions with targets.
    pub fn len(&self) -> usize {
        self.by_session.len()
    }

    /// Whether none has.
    pub fn is_empty(&self) -> bool {
        self.by_session.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(to: &str, kind: Option<&str>) -> Element {
        let mut p = Element::bare("presence", NS_CLIENT);
        set(&mut p, "to", to);
        if let Some(k) = kind {
            set(&mut p, "type", k);
        }
        p
    }

    #[test]
    fn targets_are_added_removed_and_told_when_the_session_goes() {
        let me = FullJid::new("alice@ring.test/pc").expect("jid");
        let mut d = DirectedPresence::default();
        d.handle_sent(&me, &presence("room@conference.ring.test/alice", None));
        d.handle_sent(&me, &presence("bob@elsewhere.example/x", None));
        d.handle_sent(&me, &presence("carol@ring.test", Some("probe")));
        d.handle_sent(
            &me,
            &presence("bob@elsewhere.example/x", Some("unavailable")),
        );
        let told = d.take(&me);
        assert_eq!(told.len(), 1);
        assert_eq!(told[0].attr("to"), Some("room@conference.ring.test/alice"));
        assert_eq!(told[0].attr("type"), Some("unavailable"));
        assert_eq!(told[0].attr("from"), Some("alice@ring.test/pc"));
        assert!(d.take(&me).is_empty(), "told once");
        assert!(d.is_empty());
    }

    #[test]
    fn an_unavailable_presence_to_the_last_target_forgets_the_session() {
        let me = FullJid::new("alice@ring.test/pc").expect("jid");
        let mut d = DirectedPresence::default();
        d.handle_sent(&me, &presence("room@conference.ring.test/a", None));
        assert_eq!(d.len(), 1);
        d.handle_sent(
            &me,
            &presence("room@conference.ring.test/a", Some("unavailable")),
        );
        assert!(d.is_empty());
        // Unavailable to someone never told anything: nothing kept.
        d.handle_sent(&me, &presence("x@y.example", Some("unavailable")));
        assert!(d.is_empty());
    }

    #[test]
    fn targets_are_bounded_per_session() {
        let me = FullJid::new("alice@ring.test/pc").expect("jid");
        let mut d = DirectedPresence::default();
        for i in 0..MAX_DIRECTED + 10 {
            d.handle_sent(
                &me,
                &presence(&format!("r{i}@conference.ring.test/a"), None),
            );
        }
        assert_eq!(d.take(&me).len(), MAX_DIRECTED);
    }
}
