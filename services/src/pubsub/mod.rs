//! Publish-subscribe (XEP-0060) at `pubsub.<ring domain>`.
//!
//! Each node lives at the ring node responsible for
//! `SHA-256("pubsub\0" || service || "\0" || node)` (docs/architecture.md, "Keys and distance"): the driver
//! routes every request that names a node there ([`target_node`]). This
//! module is the host's state machine, stanzas in, [`Action`]s out. A
//! node's state is three kinds of record: its configuration and
//! affiliations (`pubsub:` name, written when they change), its
//! subscriptions in shards ([`crate::sharded`], `pubsub-subs:`, a
//! subscription rewriting one small shard, so a node holds 100,000
//! subscribers) and its items (`pubsub-items:`, written on publish and
//! retract). A subscription does not rewrite the items and a publish does
//! not rewrite the subscriber list. Notifications leave as one [`Action::Broadcast`], which the driver
//! fans out per subscriber domain.

// Items named after XEP-0045/0060/0004 terms (roles, affiliations, form
// fields, namespaces) are documented by those XEPs.
#![allow(missing_docs)]

pub mod node;
mod owner;
mod user;

use super::stanza::{self, bare, error_reply_with, iq_result};
use super::{Action, Write};
use crate::error::StateError;
use crate::sharded::{self, ShardHeader, ShardLoad, Sharded};
use crate::stanza::NS_CLIENT;
use node::{Node, NodeMeta, StoredItem};
use ring_records::{PUBSUB_ITEMS_PREFIX, PUBSUB_PREFIX, PUBSUB_SUBSCRIPTIONS_PREFIX};
use std::collections::{BTreeSet, HashMap, VecDeque};
use xmpp_parsers::disco::DiscoItemsResult;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::pubsub::PubSub as Request;
use xmpp_parsers::stanza_error::DefinedCondition;

pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_PUBSUB_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
use super::muc::{NS_DISCO_INFO, NS_DISCO_ITEMS};

/// Bounds of the service.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most items a node keeps (and the default).
    pub max_items: usize,
    /// Largest item payload, serialised.
    pub max_item_bytes: usize,
    /// Largest record (the record store's per-record limit): a node's items
    /// record is kept under it.
    pub max_record_bytes: usize,
}

/// The record names of node `node` on `service`: (meta, items).
pub fn record_names(service: &str, node: &str) -> (String, String) {
    (
        format!("{PUBSUB_PREFIX}{service}/{node}"),
        format!("{PUBSUB_ITEMS_PREFIX}{service}/{node}"),
    )
}

/// The base name of the subscription shards of node `node` on `service`.
pub fn subscriptions_base(service: &str, node: &str) -> String {
    format!("{PUBSUB_SUBSCRIPTIONS_PREFIX}{service}/{node}")
}

/// A node being read from the store: its meta and items records are in,
/// its subscription shards are being read.
pub struct NodeLoad {
    service: String,
    name: String,
    meta: NodeMeta,
    items: VecDeque<StoredItem>,
    subscriptions: ShardLoad<String>,
}

impl crate::load::LoadRounds for NodeLoad {
    fn names(&self) -> Vec<String> {
        self.subscriptions.names()
    }

    fn offer(&mut self, values: &HashMap<String, Option<Vec<u8>>>) -> Result<(), StateError> {
        Ok(self.subscriptions.offer(values)?)
    }

    fn is_done(&self) -> bool {
        self.subscriptions.is_done()
    }
}

/// The node a request for a PubSub service names: the `node` attribute of
/// the first child of the `pubsub`/`pubsub#owner` element, or of a disco
/// query.
pub fn target_node(st: &Element) -> Option<String> {
    if let Some(item) = super::directory::reserved_item(st) {
        // The registry's answer about a node's creation.
        return Some(item.to_string());
    }
    let payload = st.children().next()?;
    if payload.is("pubsub", NS_PUBSUB) || payload.is("pubsub", NS_PUBSUB_OWNER) {
        return payload
            .children()
            .find_map(|c| c.attr("node"))
            .map(str::to_string);
    }
    if payload.is("query", NS_DISCO_INFO) || payload.is("query", NS_DISCO_ITEMS) {
        return payload.attr("node").map(str::to_string);
    }
    None
}

/// Longest node name and item id accepted.
const MAX_NAME_BYTES: usize = 512;

fn app(condition: &str) -> Element {
    Element::bare(condition, NS_PUBSUB_ERRORS)
}

fn fail(
    st: &Element,
    condition: DefinedCondition,
    text: &str,
    app_cond: Option<&str>,
    out: &mut Vec<Action>,
) {
    out.extend(error_reply_with(st, condition, Some(text), app_cond.map(app)).map(Action::Send));
}

fn pubsub_el(ns: &str, child: Element) -> Element {
    let mut p = Element::bare("pubsub", ns);
    p.append_child(child);
    p
}

fn with_attrs(name: &str, ns: &str, attrs: &[(&str, &str)]) -> Element {
    let mut e = Element::bare(name, ns);
    for (k, v) in attrs {
        stanza::set(&mut e, k, v);
    }
    e
}

/// Which records changed, by node (meta record name).
#[derive(Default)]
struct Dirty {
    meta: BTreeSet<String>,
    items: BTreeSet<String>,
    subscriptions: BTreeSet<String>,
    /// Records of deleted nodes.
    removed: Vec<String>,
}

/// The PubSub nodes this ring node hosts, by meta record name.
pub struct PubSub {
    nodes: HashMap<String, Node>,
    /// Nodes waiting for the registry (quotas) before they exist.
    pending: HashMap<String, user::PendingCreate>,
    /// The time of the request being handled (Unix seconds).
    now_unix: u64,
    /// The requests the last registry answer served.
    answered: Vec<Element>,
    dirty: Dirty,
    limits: Limits,
    /// For item and subscription ids (seeded by the driver).
    next_id: u64,
}

impl PubSub {
    pub fn new(limits: Limits, seed: u64) -> PubSub {
        PubSub {
            nodes: HashMap::new(),
            pending: HashMap::new(),
            now_unix: 0,
            answered: Vec::new(),
            dirty: Dirty::default(),
            limits,
            next_id: seed,
        }
    }

    fn fresh_id(&mut self) -> String {
        // A 64-bit LCG step: unique per host run, unguessable enough for ids
        // that grant nothing.
        self.next_id = self
            .next_id
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        format!("{:016x}", self.next_id)
    }

    /// The users' requests a registry answer just served (see
    /// [`crate::muc::Muc::take_answered`]).
    pub fn take_answered(&mut self) -> Vec<Element> {
        std::mem::take(&mut self.answered)
    }

    pub fn is_loaded(&self, meta_name: &str) -> bool {
        self.nodes.contains_key(meta_name)
    }

    pub fn loaded(&self) -> impl Iterator<Item = &String> {
        self.nodes.keys()
    }

    pub fn subscriptions(&self) -> usize {
        self.nodes.values().map(|n| n.subscriptions.len()).sum()
    }

    /// The subscriptions of a loaded node.
    pub fn subscriptions_of(&self, meta_name: &str) -> Option<&Sharded<String>> {
        self.nodes.get(meta_name).map(|n| &n.subscriptions)
    }

    pub fn unload(&mut self, meta_name: &str) {
        self.nodes.remove(meta_name);
        self.dirty.meta.remove(meta_name);
        self.dirty.items.remove(meta_name);
        self.dirty.subscriptions.remove(meta_name);
    }

    /// An empty subscription set for a new node.
    pub(super) fn new_subscriptions(&mut self, service: &str, name: &str) -> Sharded<String> {
        let salt = self.next_salt();
        let limit = self.limits.max_record_bytes;
        Sharded::new(
            subscriptions_base(service, name),
            salt,
            sharded::budget_for(limit),
            limit,
        )
    }

    fn next_salt(&mut self) -> u64 {
        self.fresh_id();
        self.next_id
    }

    /// Deletes node `meta_name` and all its records.
    pub(super) fn remove_node(&mut self, meta_name: &str) {
        if let Some(n) = self.nodes.remove(meta_name) {
            let (meta, items) = record_names(&n.service, &n.name);
            self.dirty.removed.push(meta);
            self.dirty.removed.push(items);
            self.dirty.removed.extend(n.subscriptions.all_names());
        }
        self.dirty.meta.remove(meta_name);
        self.dirty.items.remove(meta_name);
        self.dirty.subscriptions.remove(meta_name);
    }

    /// Starts reading node `name`: `meta` and `items` are its first
    /// records ([`record_names`]). `None` when there is nothing more to
    /// read (no such node, or it is loaded already).
    pub fn start_install(
        &mut self,
        service: &str,
        name: &str,
        meta: Option<&[u8]>,
        items: Option<&[u8]>,
    ) -> Result<Option<NodeLoad>, StateError> {
        let (meta_name, _) = record_names(service, name);
        let Some(meta) = meta.filter(|_| !self.nodes.contains_key(&meta_name)) else {
            return Ok(None);
        };
        let meta: NodeMeta =
            serde_json::from_slice(meta).map_err(|e| StateError::unreadable(&meta_name, e))?;
        let items: VecDeque<StoredItem> = match items {
            Some(b) => serde_json::from_slice(b)
                .map_err(|e| StateError::unreadable(&format!("the items of {meta_name}"), e))?,
            None => VecDeque::new(),
        };
        // A record from before subscriptions were sharded: an empty set,
        // with a fresh salt, that the old list moves into.
        let header = match meta.subscription_shards {
            Some(h) => h,
            None => ShardHeader {
                depth: 0,
                salt: self.next_salt(),
            },
        };
        let limit = self.limits.max_record_bytes;
        Ok(Some(NodeLoad {
            service: service.to_string(),
            name: name.to_string(),
            meta,
            items,
            subscriptions: ShardLoad::new(
                subscriptions_base(service, name),
                header,
                sharded::budget_for(limit),
                limit,
            ),
        }))
    }

    /// Puts a node that has been read in memory.
    pub fn finish_install(&mut self, load: NodeLoad) {
        let NodeLoad {
            service,
            name,
            mut meta,
            items,
            subscriptions,
        } = load;
        let (meta_name, _) = record_names(&service, &name);
        let mut subscriptions = subscriptions.finish();
        let mut meta_changed = meta.subscription_shards != Some(subscriptions.header());
        for (jid, subid) in std::mem::take(&mut meta.legacy_subscriptions) {
            meta_changed = true;
            if let Err(e) = subscriptions.insert(jid, subid) {
                tracing::warn!(node = %meta_name, "a subscription of an old record is dropped: {e}");
            }
        }
        if meta_changed {
            meta.subscription_shards = Some(subscriptions.header());
            self.dirty.meta.insert(meta_name.clone());
        }
        if subscriptions.is_dirty() {
            self.dirty.subscriptions.insert(meta_name.clone());
        }
        self.nodes.insert(
            meta_name,
            Node {
                service,
                name,
                meta,
                subscriptions,
                items,
            },
        );
    }

    /// The records to write: `(name, Some(value))`, or `None` to delete.
    pub fn take_writes(&mut self) -> Vec<Write> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut out: Vec<Write> = dirty.removed.into_iter().map(Write::delete).collect();
        for meta_name in &dirty.subscriptions {
            if let Some(n) = self.nodes.get_mut(meta_name) {
                out.extend(
                    n.subscriptions
                        .take_writes()
                        .into_iter()
                        .map(|(name, v)| Write::put(name, v)),
                );
            }
        }
        for meta_name in &dirty.meta {
            if let Some(n) = self.nodes.get(meta_name)
                && let Ok(v) = serde_json::to_vec(&n.meta)
            {
                out.push(Write::put(meta_name.clone(), v));
            }
        }
        for meta_name in &dirty.items {
            if let Some(n) = self.nodes.get(meta_name)
                && let Ok(v) = serde_json::to_vec(&n.items)
            {
                let (_, items_name) = record_names(&n.service, &n.name);
                out.push(Write::put(items_name, v));
            }
        }
        out
    }

    /// How node `name` appears in the service's directory: its title, if
    /// the node exists.
    pub fn listing(&self, service: &str, name: &str) -> Option<String> {
        let (meta, _) = record_names(service, name);
        self.nodes.get(&meta).map(|n| n.meta.config.title.clone())
    }

    /// A request to the service that names no node; `listed`: the
    /// directory's nodes (name, title).
    pub fn handle_service(
        &mut self,
        st: &Element,
        listed: &[(String, String)],
        out: &mut Vec<Action>,
    ) {
        if stanza::is_error_or_result(st) {
            return;
        }
        if st.attr("type") == Some("get") && st.get_child("query", NS_DISCO_INFO).is_some() {
            let info = stanza::disco_info(
                None,
                "pubsub",
                "service",
                "Publish-Subscribe",
                &[
                    NS_DISCO_INFO,
                    NS_DISCO_ITEMS,
                    NS_PUBSUB,
                    "http://jabber.org/protocol/pubsub#create-nodes",
                    "http://jabber.org/protocol/pubsub#instant-nodes",
                    "http://jabber.org/protocol/pubsub#publish",
                    "http://jabber.org/protocol/pubsub#subscribe",
                    "http://jabber.org/protocol/pubsub#retrieve-items",
                    "http://jabber.org/protocol/pubsub#retract-items",
                    "http://jabber.org/protocol/pubsub#delete-nodes",
                    "http://jabber.org/protocol/pubsub#purge-nodes",
                    "http://jabber.org/protocol/pubsub#config-node",
                    "http://jabber.org/protocol/pubsub#modify-affiliations",
                    "http://jabber.org/protocol/pubsub#manage-subscriptions",
                ],
            );
            return out.push(Action::Send(iq_result(st, Some(info))));
        }
        if st.attr("type") == Some("get") && st.get_child("query", NS_DISCO_ITEMS).is_some() {
            let service = jid::Jid::new(st.attr("to").unwrap_or_default()).ok();
            let items = DiscoItemsResult {
                node: None,
                items: listed
                    .iter()
                    .filter_map(|(node, title)| {
                        Some(xmpp_parsers::disco::Item {
                            jid: service.clone()?,
                            node: Some(node.clone()),
                            name: (!title.is_empty()).then(|| title.clone()),
                        })
                    })
                    .collect(),
                rsm: None,
            };
            return out.push(Action::Send(iq_result(st, Some(items.into()))));
        }
        let create = st
            .get_child("pubsub", NS_PUBSUB)
            .and_then(|p| p.get_child("create", NS_PUBSUB));
        if st.name() == "iq" && st.attr("type") == Some("set") && create.is_some() {
            // An instant node: choose its name, then route the request to
            // the node's key like any other.
            let name = self.fresh_id();
            let mut routed = st.clone();
            if let Some(c) = routed
                .get_child_mut("pubsub", NS_PUBSUB)
                .and_then(|p| p.get_child_mut("create", NS_PUBSUB))
            {
                stanza::set(c, "node", &name);
            }
            return out.push(Action::Reroute(routed));
        }
        if st.name() == "iq" {
            return fail(
                st,
                DefinedCondition::BadRequest,
                "the request names no node",
                Some("nodeid-required"),
                out,
            );
        }
        if st.name() == "message" {
            fail(
                st,
                DefinedCondition::ServiceUnavailable,
                "not a user",
                None,
                out,
            );
        }
    }

    /// A request naming `node` on `service`, whose records are loaded (or
    /// which does not exist).
    pub fn handle(
        &mut self,
        service: &str,
        name: &str,
        st: &Element,
        now_unix: u64,
        out: &mut Vec<Action>,
    ) {
        self.now_unix = now_unix;
        if let Some((item, answer)) = super::directory::parse_reserved(st, service) {
            if item == name {
                self.on_reserved(service, name, answer, out);
            }
            return;
        }
        let (meta_name, _) = record_names(service, name);
        // Configuration, affiliations and subscriptions before the request
        // (items bound themselves when published).
        let before = (st.attr("type") == Some("set"))
            .then(|| self.nodes.get(&meta_name).map(|n| n.meta.clone()));
        let mark = out.len();
        self.dispatch(service, name, st, out);
        // A change that would not fit its record is undone: nothing that
        // cannot be stored is answered with success.
        if let Some(before) = before
            && let Some(n) = self.nodes.get_mut(&meta_name)
            && serde_json::to_vec(&n.meta).map_or(usize::MAX, |b| b.len())
                > self.limits.max_record_bytes
        {
            out.truncate(mark);
            match before {
                Some(meta) => n.meta = meta,
                None => {
                    self.nodes.remove(&meta_name);
                }
            }
            fail(
                st,
                DefinedCondition::ResourceConstraint,
                "the node's state would exceed its storage limit (record_max_bytes)",
                None,
                out,
            );
        }
        // Subscriptions changed: their shards are written, and the meta
        // record when they split.
        if let Some(n) = self.nodes.get_mut(&meta_name)
            && n.subscriptions.is_dirty()
        {
            self.dirty.subscriptions.insert(meta_name.clone());
            if n.meta.subscription_shards != Some(n.subscriptions.header()) {
                n.meta.subscription_shards = Some(n.subscriptions.header());
                self.dirty.meta.insert(meta_name.clone());
            }
        }
    }

    fn dispatch(&mut self, service: &str, name: &str, st: &Element, out: &mut Vec<Action>) {
        if st.name() != "iq" || stanza::is_error_or_result(st) {
            if st.name() == "message" && st.attr("type") != Some("error") {
                fail(
                    st,
                    DefinedCondition::ServiceUnavailable,
                    "not a user",
                    None,
                    out,
                );
            }
            return;
        }
        let (meta_name, _) = record_names(service, name);
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return fail(
                st,
                DefinedCondition::NotAcceptable,
                "invalid node name",
                Some("nodeid-required"),
                out,
            );
        }
        let Some(payload) = st.children().next().cloned() else {
            return fail(st, DefinedCondition::BadRequest, "empty IQ", None, out);
        };
        let from = st.attr("from").unwrap_or_default().to_string();
        if payload.is("query", NS_DISCO_INFO) || payload.is("query", NS_DISCO_ITEMS) {
            return self.disco(&meta_name, st, &payload, out);
        }
        if payload.is("pubsub", NS_PUBSUB_OWNER) {
            return self.owner(&meta_name, st, &payload, &from, out);
        }
        if !payload.is("pubsub", NS_PUBSUB) {
            return fail(
                st,
                DefinedCondition::ServiceUnavailable,
                "not a PubSub request",
                None,
                out,
            );
        }
        let set = st.attr("type") == Some("set");
        if let Some(u) = payload.get_child("unsubscribe", NS_PUBSUB).filter(|_| set) {
            // Read by hand: xmpp-parsers 0.23 keeps Unsubscribe's fields
            // private (and requires a subid).
            let jid = u.attr("jid").unwrap_or_default().to_string();
            return self.unsubscribe(&meta_name, st, &jid, &from, out);
        }
        let request = match Request::try_from(payload.clone()) {
            Ok(r) => r,
            Err(e) => {
                return fail(
                    st,
                    DefinedCondition::BadRequest,
                    &format!("malformed request: {e}"),
                    None,
                    out,
                );
            }
        };
        self.user_request(service, name, &meta_name, st, request, &from, set, out);
    }
}

/// An `<item>` element in `ns` for a stored item.
fn item_element(ns: &str, i: &StoredItem, with_payload: bool) -> Element {
    let mut e = with_attrs("item", ns, &[("id", &i.id)]);
    if ns == NS_PUBSUB_EVENT {
        stanza::set(&mut e, "publisher", &bare(&i.publisher));
    }
    if with_payload && let Ok(p) = i.payload.parse::<Element>() {
        e.append_child(p);
    }
    e
}

/// One notification (`event` holding `child`) to every subscriber.
fn notify(n: &Node, child: Element, out: &mut Vec<Action>) {
    if n.subscriptions.is_empty() {
        return;
    }
    let mut m = Element::bare("message", NS_CLIENT);
    stanza::set(&mut m, "from", &n.service);
    stanza::set(&mut m, "type", "headline");
    let mut event = Element::bare("event", NS_PUBSUB_EVENT);
    event.append_child(child);
    m.append_child(event);
    out.push(Action::Broadcast {
        stanza: m,
        to: n.subscriptions.keys().cloned().collect(),
    });
}

#[cfg(test)]
mod tests;
