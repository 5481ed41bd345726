//! What a responsible node answers for the JIDs whose keys it holds.
//!
//! The dispatcher of the ring's services: XEP-0199 ping and XEP-0030 disco
//! for the ring's domain JIDs, multi-user chat at `conference.<domain>`
//! ([`super::muc`]), publish-subscribe at `pubsub.<domain>`
//! ([`super::pubsub`]), and `service-unavailable` for everything addressed
//! to a JID no service handles (RFC 6121 §8.5 for unknown users).
//!
//! A room or PubSub node is served from memory; before its first stanza
//! its state is loaded from the record store. [`Services::handle`] then
//! asks the driver for a [`Load`] and keeps the stanza (and any that
//! follow for the same room or node) until [`Services::loaded`].

// Items named after XEP-0045/0060/0004 terms (roles, affiliations, form
// fields, namespaces) are documented by those XEPs.
#![allow(missing_docs)]

use super::Action;
use super::directory::{self, Directories};
use super::muc::{self, Muc};
use super::pubsub::{self, PubSub};
use super::stanza::{self, error_reply, iq_result};
use crate::records::{DIRECTORY_PREFIX, MUC_PREFIX, PUBSUB_PREFIX};
use std::collections::HashMap;
use xmpp_edge::conn::serves;
use xmpp_parsers::disco::{DiscoInfoResult, DiscoItemsResult, Identity};
use xmpp_parsers::minidom::Element;

const NS_PING: &str = "urn:xmpp:ping";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";

/// Stanzas kept for one room or node while its state loads.
const MAX_WAITING_PER_ENTITY: usize = 1024;
/// Stanzas kept for all of them.
const MAX_WAITING: usize = 65_536;

/// Whom a stanza is for.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// A ring domain itself.
    Domain,
    /// `conference.<domain>`.
    MucService { service: String },
    /// A room, and the nick when addressed to an occupant.
    Room { room: String, nick: Option<String> },
    /// `pubsub.<domain>`, for a request that names no node.
    PubSubService { service: String },
    /// A PubSub node.
    PubSubNode { service: String, node: String },
    /// Anything else (a user of a ring domain).
    Other,
}

fn target(st: &Element, domains: &[String]) -> Result<Target, &'static str> {
    let to = stanza::to(st).ok_or("stanza without 'to'")?;
    let jid = jid::Jid::new(to).map_err(|_| "invalid 'to'")?;
    let domain = jid.domain().as_str().to_string();
    let sub = |prefix: &str| {
        domain
            .strip_prefix(prefix)
            .is_some_and(|d| domains.iter().any(|x| x == d))
    };
    let node = jid.node().map(|n| n.as_str().to_string());
    let resource = jid.resource().map(|r| r.as_str().to_string());
    if sub("conference.") {
        return Ok(match node {
            None => Target::MucService { service: domain },
            Some(n) => Target::Room {
                room: format!("{n}@{domain}"),
                nick: resource,
            },
        });
    }
    if sub("pubsub.") && node.is_none() {
        return Ok(match pubsub::target_node(st) {
            Some(n) => Target::PubSubNode {
                service: domain,
                node: n,
            },
            None => Target::PubSubService { service: domain },
        });
    }
    if node.is_none() && resource.is_none() && serves(domains, &domain) {
        return Ok(Target::Domain);
    }
    Ok(Target::Other)
}

/// The key a stanza for a ring JID is routed to, when it is not its bare
/// JID's: requests naming a PubSub node go to the node's key.
pub fn routing_key(st: &Element, domains: &[String]) -> Option<dht::Key> {
    match target(st, domains) {
        Ok(Target::PubSubNode { service, node }) => Some(dht::keys::pubsub_key(&service, &node)),
        _ => None,
    }
}

/// Records a room or node needs before it can be served.
#[derive(Debug, PartialEq, Eq)]
pub struct Load {
    /// The entity (its main record's name).
    pub entity: String,
    /// Every record to load.
    pub names: Vec<String>,
}

/// The services of one ring node.
pub struct Services {
    domains: Vec<String>,
    pub muc: Muc,
    pub pubsub: PubSub,
    /// The room and node directories of the service JIDs this node is
    /// responsible for.
    pub directories: Directories,
    /// When each loaded room, node or directory was last used (Unix
    /// seconds), by entity.
    last_used: HashMap<String, u64>,
    /// Stanzas waiting for their entity's state, by entity.
    waiting: HashMap<String, Vec<Element>>,
    waiting_total: usize,
}

impl Services {
    pub fn new(domains: Vec<String>, host: String, limits: pubsub::Limits, seed: u64) -> Services {
        Services {
            domains,
            muc: Muc::new(host, limits.max_record_bytes),
            pubsub: PubSub::new(limits, seed),
            directories: Directories::new(limits.max_record_bytes),
            last_used: HashMap::new(),
            waiting: HashMap::new(),
            waiting_total: 0,
        }
    }

    /// Loads in progress.
    pub fn loading(&self) -> usize {
        self.waiting.len()
    }

    /// Every room, node and directory in memory (as entity names).
    pub fn entities(&self) -> Vec<String> {
        self.muc
            .rooms()
            .map(|r| muc::record_name(r))
            .chain(self.pubsub.loaded().cloned())
            .chain(self.directories.loaded().map(|s| directory::record_name(s)))
            .collect()
    }

    /// Rooms without occupants and PubSub nodes not used for `idle_secs`.
    pub fn idle(&mut self, now_unix: u64, idle_secs: u64) -> Vec<String> {
        // Forget the use of what is gone (destroyed rooms, deleted nodes).
        let loaded: std::collections::HashSet<String> = self.entities().into_iter().collect();
        self.last_used.retain(|e, _| loaded.contains(e));
        let quiet = |e: &String| {
            self.last_used
                .get(e)
                .is_none_or(|t| now_unix.saturating_sub(*t) >= idle_secs)
        };
        self.muc
            .rooms()
            .filter(|r| self.muc.occupants_of(r) == 0)
            .map(|r| muc::record_name(r))
            .chain(self.pubsub.loaded().cloned())
            .filter(quiet)
            .collect()
    }

    /// Drops an entity from memory (its state is stored).
    pub fn unload(&mut self, entity: &str) {
        self.last_used.remove(entity);
        if let Some(room) = entity.strip_prefix(MUC_PREFIX) {
            self.muc.unload(room);
        } else if let Some(s) = entity.strip_prefix(DIRECTORY_PREFIX) {
            self.directories.unload(s);
        } else {
            self.pubsub.unload(entity);
        }
    }

    /// Answers a stanza delivered to this node as the responsible node of
    /// its `to`. Returns a [`Load`] when the stanza waits for state.
    pub fn handle(&mut self, now_unix: u64, st: Element, out: &mut Vec<Action>) -> Option<Load> {
        let t = match target(&st, &self.domains) {
            Ok(t) => t,
            Err(e) => {
                out.extend(error_reply(&st, "jid-malformed", Some(e)).map(Action::Send));
                return None;
            }
        };
        let (entity, names) = match &t {
            Target::Room { room, .. } if !self.muc.is_loaded(room) => {
                let name = muc::record_name(room);
                (name.clone(), vec![name])
            }
            Target::PubSubNode { service, node } => {
                let (meta, items) = pubsub::record_names(service, node);
                if self.pubsub.is_loaded(&meta) {
                    return self.dispatch(now_unix, t, &st, out);
                }
                (meta.clone(), vec![meta, items])
            }
            Target::MucService { service } | Target::PubSubService { service }
                if !self.directories.is_loaded(service) =>
            {
                let name = directory::record_name(service);
                (name.clone(), vec![name])
            }
            _ => return self.dispatch(now_unix, t, &st, out),
        };
        if self.waiting_total >= MAX_WAITING
            || self
                .waiting
                .get(&entity)
                .is_some_and(|w| w.len() >= MAX_WAITING_PER_ENTITY)
        {
            out.extend(
                error_reply(
                    &st,
                    "resource-constraint",
                    Some("too many requests waiting"),
                )
                .map(Action::Send),
            );
            return None;
        }
        self.waiting_total += 1;
        match self.waiting.get_mut(&entity) {
            Some(w) => {
                w.push(st);
                None
            }
            None => {
                self.waiting.insert(entity.clone(), vec![st]);
                Some(Load { entity, names })
            }
        }
    }

    /// The state of `entity` arrived: `values` holds each of the load's
    /// records (`None`: absent or deleted). Serves what waited for it.
    pub fn loaded(
        &mut self,
        entity: &str,
        values: &[(String, Option<Vec<u8>>)],
        now_unix: u64,
        out: &mut Vec<Action>,
    ) {
        let value = |i: usize| values.get(i).and_then(|(_, v)| v.as_deref());
        let installed = if let Some(room) = entity.strip_prefix(MUC_PREFIX) {
            self.muc.install(room, value(0))
        } else if let Some(service) = entity.strip_prefix(DIRECTORY_PREFIX) {
            self.directories.install(service, value(0))
        } else if let Some((service, node)) = entity
            .strip_prefix(PUBSUB_PREFIX)
            .and_then(|n| n.split_once('/'))
        {
            self.pubsub.install(service, node, value(0), value(1))
        } else {
            Err(format!("unknown service entity {entity}"))
        };
        let waiting = self.waiting.remove(entity).unwrap_or_default();
        self.waiting_total = self.waiting_total.saturating_sub(waiting.len());
        if let Err(e) = installed {
            tracing::error!("{e}");
            for st in waiting {
                out.extend(
                    error_reply(
                        &st,
                        "internal-server-error",
                        Some("stored state is unreadable"),
                    )
                    .map(Action::Send),
                );
            }
            return;
        }
        for st in waiting {
            match target(&st, &self.domains) {
                Ok(t) => {
                    self.dispatch(now_unix, t, &st, out);
                }
                Err(e) => out.extend(error_reply(&st, "jid-malformed", Some(e)).map(Action::Send)),
            }
        }
    }

    /// Records whose services' state changed: `(name, Some(value))` to
    /// write, `(name, None)` to delete.
    pub fn take_writes(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut w = self.muc.take_writes();
        w.extend(self.pubsub.take_writes());
        w.extend(self.directories.take_writes());
        w
    }

    fn dispatch(
        &mut self,
        now_unix: u64,
        t: Target,
        st: &Element,
        out: &mut Vec<Action>,
    ) -> Option<Load> {
        match &t {
            Target::Room { room, .. } => {
                self.last_used.insert(muc::record_name(room), now_unix);
            }
            Target::PubSubNode { service, node } => {
                self.last_used
                    .insert(pubsub::record_names(service, node).0, now_unix);
            }
            _ => {}
        }
        match t {
            Target::Domain => domain_stanza(st, out),
            Target::MucService { service } | Target::PubSubService { service }
                if directory::parse_update(st).is_some() =>
            {
                if let Some((item, name)) = directory::parse_update(st) {
                    self.directories.apply(&service, item, name);
                }
            }
            Target::MucService { service } => {
                let listed = self.directories.list(&service);
                self.muc.handle_service(st, &listed, out)
            }
            Target::Room { room, nick } => {
                let before = self.muc.listing(&room);
                self.muc.handle(&room, nick.as_deref(), st, now_unix, out);
                let after = self.muc.listing(&room);
                if before != after
                    && let Some((_, service)) = room.split_once('@')
                {
                    out.push(Action::Send(directory::update(
                        service,
                        &room,
                        after.as_deref(),
                    )));
                }
            }
            Target::PubSubService { service } => {
                let listed = self.directories.list(&service);
                self.pubsub.handle_service(st, &listed, out)
            }
            Target::PubSubNode { service, node } => {
                let before = self.pubsub.listing(&service, &node);
                self.pubsub.handle(&service, &node, st, out);
                let after = self.pubsub.listing(&service, &node);
                if before != after {
                    out.push(Action::Send(directory::update(
                        &service,
                        &node,
                        after.as_deref(),
                    )));
                }
            }
            Target::Other => unknown_user(st, out),
        }
        None
    }
}

/// Ping and disco for a ring domain.
fn domain_stanza(stanza: &Element, out: &mut Vec<Action>) {
    if stanza.name() == "iq" && stanza.attr("type") == Some("get") {
        let payload = stanza.children().next();
        if payload.is_some_and(|p| p.is("ping", NS_PING)) {
            return out.push(Action::Send(iq_result(stanza, None)));
        }
        if let Some(q) = payload.filter(|p| p.is("query", NS_DISCO_INFO))
            && q.attr("node").is_none()
        {
            let info = DiscoInfoResult {
                node: None,
                identities: vec![Identity::new("server", "im", "en", "xmpp-ring")],
                features: [NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PING]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                extensions: vec![],
            };
            return out.push(Action::Send(iq_result(stanza, Some(info.into()))));
        }
        if let Some(q) = payload.filter(|p| p.is("query", NS_DISCO_ITEMS))
            && q.attr("node").is_none()
        {
            let domain = stanza.attr("to").unwrap_or_default();
            let items = ["conference", "pubsub"]
                .iter()
                .filter_map(|s| {
                    Some(xmpp_parsers::disco::Item {
                        jid: jid::Jid::new(&format!("{s}.{domain}")).ok()?,
                        node: None,
                        name: None,
                    })
                })
                .collect();
            let items = DiscoItemsResult {
                node: None,
                items,
                rsm: None,
            };
            return out.push(Action::Send(iq_result(stanza, Some(items.into()))));
        }
    }
    unknown_user(stanza, out)
}

/// What a server answers for a JID it has no user or service for.
fn unknown_user(stanza: &Element, out: &mut Vec<Action>) {
    if stanza.name() == "presence" && !matches!(stanza.attr("type"), None | Some("subscribe")) {
        // Unavailable presence, probes, unsubscriptions and errors to JIDs
        // without a service are ignored, as servers do for unknown users.
        return;
    }
    out.extend(error_reply(stanza, "service-unavailable", None).map(Action::Send));
}

#[cfg(test)]
mod tests {
    use super::*;
    use xmpp_edge::xml::NS_CLIENT;

    pub(crate) fn services() -> Services {
        Services::new(
            vec!["ring.test".to_string()],
            "host".into(),
            pubsub::Limits {
                max_items: 5,
                max_item_bytes: 1000,
                max_record_bytes: 4000,
            },
            7,
        )
    }

    fn run(xml: &str) -> Vec<Element> {
        let mut out = Vec::new();
        assert_eq!(services().handle(0, xml.parse().unwrap(), &mut out), None);
        out.into_iter()
            .map(|a| match a {
                Action::Send(s) => s,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
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

#[cfg(test)]
mod routing_tests {
    use super::*;

    fn el(s: &str) -> Element {
        s.parse().unwrap()
    }

    #[test]
    fn targets_and_keys() {
        let d = vec!["ring.test".to_string()];
        let t = |s: &str| target(&el(s), &d).unwrap();
        assert_eq!(
            t("<presence xmlns='jabber:client' to='Room@conference.ring.test/Nick'/>"),
            Target::Room {
                room: "room@conference.ring.test".into(),
                nick: Some("Nick".into())
            }
        );
        assert_eq!(
            t("<iq xmlns='jabber:client' to='conference.ring.test'/>"),
            Target::MucService {
                service: "conference.ring.test".into()
            }
        );
        let publish = "<iq xmlns='jabber:client' type='set' to='pubsub.ring.test'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='news'/></pubsub></iq>";
        assert_eq!(
            t(publish),
            Target::PubSubNode {
                service: "pubsub.ring.test".into(),
                node: "news".into()
            }
        );
        assert_eq!(
            routing_key(&el(publish), &d),
            Some(dht::keys::pubsub_key("pubsub.ring.test", "news"))
        );
        assert_eq!(
            t(
                "<iq xmlns='jabber:client' type='get' to='pubsub.ring.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
            ),
            Target::PubSubService {
                service: "pubsub.ring.test".into()
            }
        );
        assert_eq!(
            t("<message xmlns='jabber:client' to='ring.test'/>"),
            Target::Domain
        );
        assert_eq!(
            t("<message xmlns='jabber:client' to='u@ring.test'/>"),
            Target::Other
        );
        // Not a ring service: an ordinary user JID.
        assert_eq!(
            t("<message xmlns='jabber:client' to='x@conference.other.test'/>"),
            Target::Other
        );
        assert!(target(&el("<message xmlns='jabber:client' to='@@'/>"), &d).is_err());
        assert!(target(&el("<message xmlns='jabber:client'/>"), &d).is_err());
    }

    #[test]
    fn stanzas_wait_for_their_room_and_are_served_in_order() {
        let mut s = tests::services();
        let mut out = Vec::new();
        let join = |nick: &str, from: &str| {
            el(&format!(
                "<presence xmlns='jabber:client' from='{from}' to='r@conference.ring.test/{nick}'/>"
            ))
        };
        let load = s
            .handle(0, join("alice", "alice@a.test/x"), &mut out)
            .unwrap();
        assert_eq!(load.names, vec!["muc:r@conference.ring.test".to_string()]);
        assert_eq!(s.handle(0, join("bob", "bob@b.test/y"), &mut out), None);
        assert!(out.is_empty());
        s.loaded(&load.entity, &[(load.names[0].clone(), None)], 0, &mut out);
        // The room was created by alice (locked): bob is refused.
        assert!(out.iter().any(|a| matches!(a, Action::Send(p) if p.attr("to") == Some("bob@b.test/y") && p.attr("type") == Some("error"))));
        assert_eq!(s.loading(), 0);
        let writes = s.take_writes();
        assert_eq!(writes.len(), 1);
        assert!(writes[0].1.is_some());
    }
}

#[cfg(test)]
mod directory_tests {
    use super::*;

    fn el(s: &str) -> Element {
        s.parse().unwrap()
    }

    /// Feeds `st` to the services, loading empty state when asked, and
    /// returns what they sent.
    fn feed(s: &mut Services, st: Element) -> Vec<Element> {
        let mut out = Vec::new();
        if let Some(load) = s.handle(0, st, &mut out) {
            let values: Vec<(String, Option<Vec<u8>>)> =
                load.names.iter().map(|n| (n.clone(), None)).collect();
            s.loaded(&load.entity, &values, 0, &mut out);
        }
        out.into_iter()
            .filter_map(|a| match a {
                Action::Send(st) => Some(st),
                _ => None,
            })
            .collect()
    }

    fn disco_items(s: &mut Services, to: &str) -> Vec<(String, Option<String>, Option<String>)> {
        let r = feed(
            s,
            el(&format!(
                "<iq xmlns='jabber:client' type='get' id='d' from='x@x.test/1' to='{to}'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
            )),
        );
        let q = r[0].get_child("query", NS_DISCO_ITEMS).expect("items");
        q.children()
            .map(|i| {
                (
                    i.attr("jid").unwrap_or_default().to_string(),
                    i.attr("node").map(str::to_string),
                    i.attr("name").map(str::to_string),
                )
            })
            .collect()
    }

    #[test]
    fn rooms_and_nodes_are_listed_while_they_exist() {
        let mut s = tests::services();
        assert!(disco_items(&mut s, "conference.ring.test").is_empty());
        feed(
            &mut s,
            el("<presence xmlns='jabber:client' from='a@a.test/x' to='r@conference.ring.test/a'/>"),
        );
        // Locked: not listed yet. The instant configuration opens it.
        let out = feed(
            &mut s,
            el(
                "<iq xmlns='jabber:client' type='set' id='c' from='a@a.test/x' to='r@conference.ring.test'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_roomname'><value>Hall</value></field></x></query></iq>",
            ),
        );
        let updates: Vec<Element> = out
            .into_iter()
            .filter(|m| directory::parse_update(m).is_some())
            .collect();
        assert_eq!(updates.len(), 1);
        // The update travels to the service JID's node (here: the same).
        for u in updates {
            assert!(feed(&mut s, u).is_empty(), "updates are not answered");
        }
        assert_eq!(
            disco_items(&mut s, "conference.ring.test"),
            vec![("r@conference.ring.test".into(), None, Some("Hall".into()))]
        );
        // The last occupant leaves a temporary room: it is unlisted.
        let out = feed(
            &mut s,
            el(
                "<presence xmlns='jabber:client' type='unavailable' from='a@a.test/x' to='r@conference.ring.test/a'/>",
            ),
        );
        for u in out
            .into_iter()
            .filter(|m| directory::parse_update(m).is_some())
        {
            feed(&mut s, u);
        }
        assert!(disco_items(&mut s, "conference.ring.test").is_empty());
        // PubSub nodes likewise.
        let out = feed(
            &mut s,
            el(
                "<iq xmlns='jabber:client' type='set' id='c' from='a@a.test/x' to='pubsub.ring.test'><pubsub xmlns='http://jabber.org/protocol/pubsub'><create node='news'/></pubsub></iq>",
            ),
        );
        for u in out
            .into_iter()
            .filter(|m| directory::parse_update(m).is_some())
        {
            feed(&mut s, u);
        }
        assert_eq!(
            disco_items(&mut s, "pubsub.ring.test"),
            vec![("pubsub.ring.test".into(), Some("news".into()), None)]
        );
        // A forged update from outside is not applied.
        feed(
            &mut s,
            el(
                "<message xmlns='jabber:client' from='eve@e.test' to='pubsub.ring.test'><update xmlns='urn:xmpp-ring:directory' item='evil'/></message>",
            ),
        );
        assert_eq!(disco_items(&mut s, "pubsub.ring.test").len(), 1);
    }
}

#[cfg(test)]
mod idle_tests {
    use super::*;

    #[test]
    fn empty_rooms_and_unused_nodes_leave_memory_and_come_back() {
        let mut s = tests::services();
        let run = |s: &mut Services, xml: &str, at: u64| {
            let mut out = Vec::new();
            if let Some(load) = s.handle(at, xml.parse().unwrap(), &mut out) {
                let stored: Vec<(String, Option<Vec<u8>>)> =
                    load.names.iter().map(|n| (n.clone(), None)).collect();
                s.loaded(&load.entity, &stored, at, &mut out);
            }
        };
        run(
            &mut s,
            "<presence xmlns='jabber:client' from='a@a.test/x' to='r@conference.ring.test/a'/>",
            0,
        );
        run(
            &mut s,
            "<iq xmlns='jabber:client' type='set' id='c' from='a@a.test/x' to='r@conference.ring.test'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_persistentroom'><value>1</value></field></x></query></iq>",
            0,
        );
        run(
            &mut s,
            "<iq xmlns='jabber:client' type='set' id='n' from='a@a.test/x' to='pubsub.ring.test'><pubsub xmlns='http://jabber.org/protocol/pubsub'><create node='news'/></pubsub></iq>",
            0,
        );
        // An occupied room is never idle; an unused node is, after a while.
        assert_eq!(
            s.idle(1000, 300),
            vec!["pubsub:pubsub.ring.test/news".to_string()]
        );
        run(
            &mut s,
            "<presence xmlns='jabber:client' type='unavailable' from='a@a.test/x' to='r@conference.ring.test/a'/>",
            1000,
        );
        assert_eq!(
            s.idle(1100, 300),
            vec!["pubsub:pubsub.ring.test/news".to_string()],
            "the room was left 100 s ago"
        );
        let idle = s.idle(1300, 300);
        assert_eq!(idle.len(), 2, "{idle:?}");
        s.take_writes();
        for e in idle {
            s.unload(&e);
        }
        assert!(s.entities().is_empty());
        // The next stanza loads the room again.
        let mut out = Vec::new();
        let load = s.handle(
            1400,
            "<presence xmlns='jabber:client' from='a@a.test/x' to='r@conference.ring.test/a'/>"
                .parse()
                .unwrap(),
            &mut out,
        );
        assert!(load.is_some());
    }
}
