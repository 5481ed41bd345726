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

use super::directory::{self, DirMsg, Directories, Kind};
use super::muc::{self, Muc};
use super::pubsub::{self, PubSub};
use super::stanza::{self, error_reply, iq_result};
use super::{Action, Write};
use crate::error::StateError;
pub use crate::load::LoadRounds;
use ring_records::{DIRECTORY_PREFIX, MUC_PREFIX, PUBSUB_PREFIX};
use std::collections::HashMap;
use xmpp_addr::Served;
use xmpp_parsers::disco::DiscoItemsResult;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

const NS_PING: &str = "urn:xmpp:ping";
const NS_VERSION: &str = "jabber:iq:version";
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

fn target(st: &Element, served: &Served) -> Result<Target, &'static str> {
    let to = stanza::to(st).ok_or("stanza without 'to'")?;
    let jid = jid::Jid::new(to).map_err(|_| "invalid 'to'")?;
    let domain = jid.domain().as_str().to_string();
    // `conference.<ring domain>`: the JID is valid, so its domain is
    // normalised and this compares labels.
    let sub = |prefix: &str| {
        domain
            .strip_prefix(prefix)
            .is_some_and(|d| served.domains().iter().any(|x| x.as_str() == d))
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
    if node.is_none() && resource.is_none() && served.serves_jid(&domain) {
        return Ok(Target::Domain);
    }
    Ok(Target::Other)
}

/// The key a stanza for a ring JID is routed to, when it is not its bare
/// JID's: requests naming a PubSub node go to the node's key.
pub fn routing_key(st: &Element, served: &Served) -> Option<dht::Key> {
    match target(st, served) {
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

/// How far a load got (see [`Services::loaded`]).
#[derive(Debug, PartialEq)]
pub enum LoadStep {
    /// These records are needed too (a room's occupant shards, a node's
    /// subscription shards): load them and call [`Services::loaded`]
    /// again.
    More(Vec<String>),
    /// The entity is in memory (or does not exist): the stanzas that
    /// waited for it, to serve one by one with [`Services::handle_loaded`].
    Ready(Vec<Element>),
}

/// An entity whose first records are read and whose shards are being read.
enum Partial {
    Room(muc::RoomLoad),
    Node(pubsub::NodeLoad),
}

impl LoadRounds for Partial {
    fn names(&self) -> Vec<String> {
        match self {
            Partial::Room(l) => l.names(),
            Partial::Node(l) => l.names(),
        }
    }

    fn offer(&mut self, values: &HashMap<String, Option<Vec<u8>>>) -> Result<(), StateError> {
        match self {
            Partial::Room(l) => l.offer(values),
            Partial::Node(l) => l.offer(values),
        }
    }

    fn is_done(&self) -> bool {
        match self {
            Partial::Room(l) => l.is_done(),
            Partial::Node(l) => l.is_done(),
        }
    }
}

/// The services of one ring node.
pub struct Services {
    served: Served,
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
    /// Loads past their first records, by entity.
    partial: HashMap<String, Partial>,
}

impl Services {
    pub fn new(
        served: Served,
        host: String,
        limits: pubsub::Limits,
        quotas: Quotas,
        seed: u64,
    ) -> Services {
        Services {
            served,
            muc: Muc::new(host, limits.max_record_bytes, seed ^ 0x6d75_6300),
            pubsub: PubSub::new(limits, seed),
            directories: Directories::new(limits.max_record_bytes, quotas.muc, quotas.pubsub),
            last_used: HashMap::new(),
            waiting: HashMap::new(),
            waiting_total: 0,
            partial: HashMap::new(),
        }
    }

    /// Loads in progress.
    #[cfg(test)]
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

    /// Rooms without occupants, PubSub nodes and registries not used for
    /// `idle_secs`.
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
            .chain(self.directories.loaded().map(|s| directory::record_name(s)))
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
        let t = match target(&st, &self.served) {
            Ok(t) => t,
            Err(e) => {
                out.extend(
                    error_reply(&st, DefinedCondition::JidMalformed, Some(e)).map(Action::Send),
                );
                return None;
            }
        };
        let (entity, names) = match &t {
            Target::Room { room, .. } if !self.muc.is_loaded(room) => {
                (muc::record_name(room), muc::load_names(room))
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
                (
                    directory::record_name(service),
                    directory::shard_names(service),
                )
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
                    DefinedCondition::ResourceConstraint,
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

    /// Starts loading `room` with no stanza waiting for it: the host's
    /// sweep found it orphaned (its host died with occupants in it).
    /// `None` when it is loaded or loading already.
    pub fn load_room(&mut self, room: &str) -> Option<Load> {
        let entity = muc::record_name(room);
        if self.muc.is_loaded(room) || self.waiting.contains_key(&entity) {
            return None;
        }
        self.waiting.insert(entity.clone(), Vec::new());
        Some(Load {
            entity,
            names: muc::load_names(room),
        })
    }

    /// Records of `entity` arrived: `values` holds each record the last
    /// [`Load`] or [`LoadStep::More`] named (`None`: absent or deleted).
    /// Either more records are needed, or the entity is ready and the
    /// stanzas that waited for it are returned (or answered with an error
    /// when its state is unreadable).
    pub fn loaded(
        &mut self,
        entity: &str,
        values: &[(String, Option<Vec<u8>>)],
        out: &mut Vec<Action>,
    ) -> LoadStep {
        let map: HashMap<String, Option<Vec<u8>>> = values.iter().cloned().collect();
        let get = |n: &str| map.get(n).and_then(|v| v.as_deref());
        let progress: Result<Option<Partial>, StateError> = match self.partial.remove(entity) {
            Some(mut p) => p.offer(&map).map(|()| Some(p)),
            None => {
                if let Some(room) = entity.strip_prefix(MUC_PREFIX) {
                    self.muc
                        .start_install(room, get(entity), get(&muc::history_name(room)))
                        .map(|l| l.map(Partial::Room))
                } else if let Some(service) = entity.strip_prefix(DIRECTORY_PREFIX) {
                    let shards: Vec<Option<&[u8]>> =
                        values.iter().map(|(_, v)| v.as_deref()).collect();
                    self.directories.install(service, &shards).map(|()| None)
                } else if let Some((service, node)) = entity
                    .strip_prefix(PUBSUB_PREFIX)
                    .and_then(|n| n.split_once('/'))
                {
                    let (meta, items) = pubsub::record_names(service, node);
                    self.pubsub
                        .start_install(service, node, get(&meta), get(&items))
                        .map(|l| l.map(Partial::Node))
                } else {
                    Err(StateError::UnknownEntity(entity.to_string()))
                }
            }
        };
        let error = match progress {
            Ok(Some(p)) if !p.is_done() => {
                let names = p.names();
                self.partial.insert(entity.to_string(), p);
                return LoadStep::More(names);
            }
            Ok(Some(Partial::Room(l))) => {
                self.muc.finish_install(l);
                None
            }
            Ok(Some(Partial::Node(l))) => {
                self.pubsub.finish_install(l);
                None
            }
            Ok(None) => None,
            Err(e) => Some(e),
        };
        let waiting = self.waiting.remove(entity).unwrap_or_default();
        self.waiting_total = self.waiting_total.saturating_sub(waiting.len());
        if let Some(e) = error {
            tracing::error!("{e}");
            for st in waiting {
                out.extend(
                    error_reply(
                        &st,
                        DefinedCondition::InternalServerError,
                        Some("stored state is unreadable"),
                    )
                    .map(Action::Send),
                );
            }
            return LoadStep::Ready(Vec::new());
        }
        LoadStep::Ready(waiting)
    }

    /// Serves a stanza whose room, node or registry was just loaded (see
    /// [`Services::loaded`]): no second load, even for a room that does
    /// not exist.
    pub fn handle_loaded(&mut self, now_unix: u64, st: Element, out: &mut Vec<Action>) {
        match target(&st, &self.served) {
            Ok(t) => {
                self.dispatch(now_unix, t, &st, out);
            }
            Err(e) => out.extend(
                error_reply(&st, DefinedCondition::JidMalformed, Some(e)).map(Action::Send),
            ),
        }
    }

    /// The entity (main record name) whose state a stanza may change: its
    /// room, node or registry.
    pub fn entity_of(&self, st: &Element) -> Option<String> {
        match target(st, &self.served).ok()? {
            Target::Room { room, .. } => Some(muc::record_name(&room)),
            Target::PubSubNode { service, node } => Some(pubsub::record_names(&service, &node).0),
            Target::MucService { service } | Target::PubSubService { service } => {
                Some(directory::record_name(&service))
            }
            Target::Domain | Target::Other => None,
        }
    }

    /// Records whose services' state changed, to write or delete
    /// (`now_unix` paces the rooms' history writes).
    pub fn take_writes(&mut self, now_unix: u64) -> Vec<Write> {
        let mut w = self.muc.take_writes(now_unix);
        w.extend(self.pubsub.take_writes());
        w.extend(
            self.directories
                .take_writes()
                .into_iter()
                .map(|(name, value)| Write {
                    name,
                    value,
                    holds: true,
                }),
        );
        w
    }

    /// Whether a write waits for time to pass (a room's history, written
    /// at most once a second).
    pub fn writes_pending(&self) -> bool {
        self.muc.history_pending()
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
            Target::MucService { service } | Target::PubSubService { service } => {
                self.last_used
                    .insert(directory::record_name(service), now_unix);
            }
            _ => {}
        }
        match t {
            Target::Domain => domain_stanza(st, out),
            Target::MucService { service } if directory::parse(st).is_some() => {
                self.registry_message(&service, Kind::Room, st, out)
            }
            Target::PubSubService { service } if directory::parse(st).is_some() => {
                self.registry_message(&service, Kind::Node, st, out)
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
                self.pubsub.handle(&service, &node, st, now_unix, out);
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

impl Services {
    /// A message for `service`'s registry (from a host of one of its rooms
    /// or nodes).
    fn registry_message(&mut self, service: &str, kind: Kind, st: &Element, out: &mut Vec<Action>) {
        match directory::parse(st) {
            Some(DirMsg::Update { item, name }) => self.directories.apply(service, item, name),
            Some(DirMsg::Release { item }) => self.directories.release(service, &item),
            Some(DirMsg::Reserve { item, owner }) => {
                let answer = self.directories.reserve(service, kind, &item, &owner);
                // A room's answer goes to the room; a node's to the service,
                // routed by the node it names.
                let to = match kind {
                    Kind::Room => item.as_str(),
                    Kind::Node => service,
                };
                out.push(Action::Send(directory::reserved(
                    service, to, &item, &answer,
                )));
            }
            None => {}
        }
    }

    /// The users' stanzas the last step served on behalf of another: a
    /// registry answer serves the joins or creation requests that waited
    /// for it. Empty for an ordinary stanza (it served itself).
    pub fn take_answered(&mut self) -> Vec<Element> {
        let mut v = self.muc.take_answered();
        v.extend(self.pubsub.take_answered());
        v
    }

    /// Periodic work: creations the registry did not answer fail.
    pub fn tick(&mut self, now_unix: u64, out: &mut Vec<Action>) {
        self.muc.expire_pending(now_unix, out);
        self.pubsub.expire_pending(now_unix, out);
    }
}

/// The entity a service record belongs to (a node's items and
/// subscription shards to the node, a room's occupant shards and history
/// to the room, a registry shard to the registry).
pub fn entity_of_record(name: &str) -> String {
    use ring_records::{
        MUC_HISTORY_PREFIX, MUC_OCCUPANTS_PREFIX, PUBSUB_ITEMS_PREFIX, PUBSUB_SUBSCRIPTIONS_PREFIX,
    };
    let unshard = |rest: &str| rest.rsplit_once('#').map_or(rest, |(e, _)| e).to_string();
    if let Some(rest) = name.strip_prefix(PUBSUB_ITEMS_PREFIX) {
        return format!("{PUBSUB_PREFIX}{rest}");
    }
    if let Some(rest) = name.strip_prefix(PUBSUB_SUBSCRIPTIONS_PREFIX) {
        return format!("{PUBSUB_PREFIX}{}", unshard(rest));
    }
    if let Some(rest) = name.strip_prefix(MUC_OCCUPANTS_PREFIX) {
        return format!("{MUC_PREFIX}{}", unshard(rest));
    }
    if let Some(rest) = name.strip_prefix(MUC_HISTORY_PREFIX) {
        return format!("{MUC_PREFIX}{rest}");
    }
    if let Some(rest) = name.strip_prefix(DIRECTORY_PREFIX) {
        return directory::record_name(rest.rsplit_once('#').map_or(rest, |(s, _)| s));
    }
    name.to_string()
}

/// Quotas of the services' registries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Rooms per owner and per MUC service.
    pub muc: directory::Quotas,
    /// Nodes per owner and per PubSub service.
    pub pubsub: directory::Quotas,
}

impl Default for Quotas {
    fn default() -> Self {
        let q = directory::Quotas {
            per_owner: 50,
            total: 5000,
        };
        Quotas { muc: q, pubsub: q }
    }
}

/// Ping and disco for a ring domain.
fn domain_stanza(stanza: &Element, out: &mut Vec<Action>) {
    if stanza.name() == "iq" && stanza.attr("type") == Some("get") {
        let payload = stanza.children().next();
        if payload.is_some_and(|p| p.is("ping", NS_PING)) {
            return out.push(Action::Send(iq_result(stanza, None)));
        }
        if payload.is_some_and(|p| p.is("query", NS_VERSION)) {
            // XEP-0092: the software; no operating system (it helps
            // attackers more than users).
            let mut q = Element::bare("query", NS_VERSION);
            for (name, text) in [
                ("name", "xmpp-ring"),
                ("version", env!("CARGO_PKG_VERSION")),
            ] {
                let mut e = Element::bare(name, NS_VERSION);
                e.append_text_node(text);
                q.append_child(e);
            }
            return out.push(Action::Send(iq_result(stanza, Some(q))));
        }
        if let Some(q) = payload.filter(|p| p.is("query", NS_DISCO_INFO))
            && q.attr("node").is_none()
        {
            let info = stanza::disco_info(
                None,
                "server",
                "im",
                "xmpp-ring",
                &[NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PING, NS_VERSION],
            );
            return out.push(Action::Send(iq_result(stanza, Some(info))));
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
    out.extend(error_reply(stanza, DefinedCondition::ServiceUnavailable, None).map(Action::Send));
}

#[cfg(test)]
mod tests;
