//! The directory of a service's rooms or nodes: what disco#items of
//! `conference.<domain>` and `pubsub.<domain>` list.
//!
//! Rooms and nodes are spread over the ring, so nobody sees them all. The
//! directory of a service lives where every stanza for the service JID
//! goes: the node responsible for the service JID's key. Hosts tell it
//! when a listed room or node appears, changes its name or goes away, with
//! a `message` from the service JID to itself carrying an `update` in the
//! ring's private namespace. Such a message can only come from inside the
//! ring: edges refuse stanzas whose `from` is not the authenticated remote
//! domain (`invalid-from`). All updates of one service meet at one node, in
//! order, so none is lost to a concurrent write; the directory is kept in
//! the record store (`dir:<service>`, keyed on the service JID) like a
//! room's state, so the next node in line has it when that node dies.

// Items named after XEP-0030 terms are documented by it.
#![allow(missing_docs)]

use super::stanza;
use crate::records::DIRECTORY_PREFIX;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use xmpp_edge::xml::NS_CLIENT;
use xmpp_parsers::minidom::Element;

/// The private namespace of directory updates.
pub const NS_DIRECTORY: &str = "urn:xmpp-ring:directory";

/// The record holding `service`'s directory.
pub fn record_name(service: &str) -> String {
    format!("{DIRECTORY_PREFIX}{service}")
}

/// The update telling `service`'s directory about `item` (`name`: listed
/// with that name; `None`: no longer listed).
pub fn update(service: &str, item: &str, name: Option<&str>) -> Element {
    let mut m = Element::bare("message", NS_CLIENT);
    stanza::set(&mut m, "from", service);
    stanza::set(&mut m, "to", service);
    let mut u = Element::bare("update", NS_DIRECTORY);
    stanza::set(&mut u, "item", item);
    match name {
        Some(n) => stanza::set(&mut u, "name", n),
        None => stanza::set(&mut u, "remove", "true"),
    }
    m.append_child(u);
    m
}

/// The update in `st`, if it is one: (item, name or removal).
pub fn parse_update(st: &Element) -> Option<(String, Option<String>)> {
    if st.name() != "message" || st.attr("from").is_none() || st.attr("from") != st.attr("to") {
        return None;
    }
    let u = st.get_child("update", NS_DIRECTORY)?;
    let item = u.attr("item")?.to_string();
    let name =
        (u.attr("remove") != Some("true")).then(|| u.attr("name").unwrap_or_default().to_string());
    Some((item, name))
}

/// The directories this node keeps (one per service whose JID it is
/// responsible for).
pub struct Directories {
    entries: HashMap<String, BTreeMap<String, String>>,
    dirty: BTreeSet<String>,
    /// Largest stored directory (the record limit).
    max_bytes: usize,
}

impl Directories {
    pub fn new(max_bytes: usize) -> Directories {
        Directories {
            entries: HashMap::new(),
            dirty: BTreeSet::new(),
            max_bytes,
        }
    }

    pub fn is_loaded(&self, service: &str) -> bool {
        self.entries.contains_key(service)
    }

    pub fn loaded(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    pub fn unload(&mut self, service: &str) {
        self.entries.remove(service);
        self.dirty.remove(service);
    }

    /// Puts a stored directory in memory (`None`: an empty one).
    pub fn install(&mut self, service: &str, value: Option<&[u8]>) -> Result<(), String> {
        if self.entries.contains_key(service) {
            return Ok(());
        }
        let entries = match value {
            Some(v) => serde_json::from_slice(v)
                .map_err(|e| format!("stored directory of {service} is unreadable: {e}"))?,
            None => BTreeMap::new(),
        };
        self.entries.insert(service.to_string(), entries);
        Ok(())
    }

    /// Applies an update (the directory is loaded).
    pub fn apply(&mut self, service: &str, item: String, name: Option<String>) {
        let max = self.max_bytes;
        let Some(d) = self.entries.get_mut(service) else {
            return;
        };
        match name {
            Some(n) => {
                let before = d.insert(item.clone(), n);
                if serde_json::to_vec(&*d).map_or(usize::MAX, |v| v.len()) > max {
                    tracing::warn!(%service, %item, "directory full (record_max_bytes): not listed");
                    match before {
                        Some(b) => d.insert(item, b),
                        None => d.remove(&item),
                    };
                    return;
                }
            }
            None => {
                if d.remove(&item).is_none() {
                    return;
                }
            }
        }
        self.dirty.insert(service.to_string());
    }

    /// The listed items of `service`: (item, name).
    pub fn list(&self, service: &str) -> Vec<(String, String)> {
        self.entries
            .get(service)
            .map(|d| d.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    pub fn take_writes(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|s| {
                let v = self
                    .entries
                    .get(&s)
                    .and_then(|d| serde_json::to_vec(d).ok());
                (record_name(&s), v)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_round_trip_and_only_come_from_the_service_itself() {
        let u = update(
            "conference.ring.test",
            "r@conference.ring.test",
            Some("Room"),
        );
        assert_eq!(
            parse_update(&u),
            Some(("r@conference.ring.test".into(), Some("Room".into())))
        );
        let gone = update("conference.ring.test", "r@conference.ring.test", None);
        assert_eq!(
            parse_update(&gone),
            Some(("r@conference.ring.test".into(), None))
        );
        let mut forged = u.clone();
        stanza::set(&mut forged, "from", "eve@evil.test");
        assert_eq!(parse_update(&forged), None);
    }

    #[test]
    fn entries_are_bounded_and_stored() {
        let mut d = Directories::new(200);
        d.install("s", None).unwrap();
        for i in 0..20 {
            d.apply("s", format!("room{i}@s"), Some("a name".into()));
        }
        let n = d.list("s").len();
        assert!(n > 2 && n < 20, "{n}");
        d.apply("s", "room0@s".into(), None);
        assert_eq!(d.list("s").len(), n - 1);
        let w = d.take_writes();
        assert_eq!(w.len(), 1);
        let mut again = Directories::new(200);
        again.install("s", w[0].1.as_deref()).unwrap();
        assert_eq!(again.list("s").len(), n - 1);
        assert!(Directories::new(9).install("x", Some(b"[")).is_err());
    }
}
