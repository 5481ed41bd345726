//! Publish-subscribe (XEP-0060) at `pubsub.<ring domain>`.
//!
//! Each node lives at the ring node responsible for
//! `SHA-256("pubsub\0" || service || "\0" || node)` (DESIGN.md): the driver
//! routes every request that names a node there ([`target_node`]). This
//! module is the host's state machine, stanzas in, [`Action`]s out. A
//! node's state is two records: its configuration, affiliations and
//! subscriptions (`pubsub:` name, written when they change) and its items
//! (`pubsub-items:`, written on publish and retract), so a subscription does
//! not rewrite the items and a publish does not rewrite the subscriber
//! list. Notifications leave as one [`Action::Broadcast`], which the driver
//! fans out per subscriber domain.

// Items named after XEP-0045/0060/0004 terms (roles, affiliations, form
// fields, namespaces) are documented by those XEPs.
#![allow(missing_docs)]

pub mod node;

use super::Action;
use super::stanza::{self, bare, error_reply_with, iq_result};
use crate::records::{PUBSUB_ITEMS_PREFIX, PUBSUB_PREFIX};
use node::{Affiliation, Node, NodeConfig, NodeMeta, StoredItem};
use std::collections::{BTreeSet, HashMap, VecDeque};
use xmpp_edge::xml::NS_CLIENT;
use xmpp_parsers::disco::{DiscoInfoResult, DiscoItemsResult, Identity};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::pubsub::PubSub as Request;

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

/// The node a request for a PubSub service names: the `node` attribute of
/// the first child of the `pubsub`/`pubsub#owner` element, or of a disco
/// query.
pub fn target_node(st: &Element) -> Option<String> {
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

fn fail(st: &Element, condition: &str, text: &str, app_cond: Option<&str>, out: &mut Vec<Action>) {
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

/// Which records changed.
#[derive(Default)]
struct Dirty {
    meta: BTreeSet<String>,
    items: BTreeSet<String>,
}

/// The PubSub nodes this ring node hosts, by meta record name.
pub struct PubSub {
    nodes: HashMap<String, Node>,
    dirty: Dirty,
    limits: Limits,
    /// For item and subscription ids (seeded by the driver).
    next_id: u64,
}

impl PubSub {
    pub fn new(limits: Limits, seed: u64) -> PubSub {
        PubSub {
            nodes: HashMap::new(),
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

    pub fn is_loaded(&self, meta_name: &str) -> bool {
        self.nodes.contains_key(meta_name)
    }

    pub fn loaded(&self) -> impl Iterator<Item = &String> {
        self.nodes.keys()
    }

    pub fn subscriptions(&self) -> usize {
        self.nodes
            .values()
            .map(|n| n.meta.subscriptions.len())
            .sum()
    }

    pub fn unload(&mut self, meta_name: &str) {
        self.nodes.remove(meta_name);
        self.dirty.meta.remove(meta_name);
        self.dirty.items.remove(meta_name);
    }

    /// Puts a node's stored records in memory (`meta` `None`: no node).
    pub fn install(
        &mut self,
        service: &str,
        name: &str,
        meta: Option<&[u8]>,
        items: Option<&[u8]>,
    ) -> Result<(), String> {
        let (meta_name, _) = record_names(service, name);
        let Some(meta) = meta.filter(|_| !self.nodes.contains_key(&meta_name)) else {
            return Ok(());
        };
        let meta: NodeMeta = serde_json::from_slice(meta)
            .map_err(|e| format!("stored node {meta_name} is unreadable: {e}"))?;
        let items: VecDeque<StoredItem> = match items {
            Some(b) => serde_json::from_slice(b)
                .map_err(|e| format!("stored items of {meta_name} are unreadable: {e}"))?,
            None => VecDeque::new(),
        };
        self.nodes.insert(
            meta_name,
            Node {
                service: service.to_string(),
                name: name.to_string(),
                meta,
                items,
            },
        );
        Ok(())
    }

    /// The records to write: `(name, Some(value))`, or `None` to delete.
    pub fn take_writes(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let dirty = std::mem::take(&mut self.dirty);
        for meta_name in dirty.meta.iter().chain(dirty.items.iter()) {
            let is_meta =
                dirty.meta.contains(meta_name) && !out.iter().any(|(n, _)| n == meta_name);
            let suffix = &meta_name[PUBSUB_PREFIX.len()..];
            let items_name = format!("{PUBSUB_ITEMS_PREFIX}{suffix}");
            let node = self.nodes.get(meta_name);
            if is_meta {
                out.push((
                    meta_name.clone(),
                    node.and_then(|n| serde_json::to_vec(&n.meta).ok()),
                ));
            }
            if dirty.items.contains(meta_name) && !out.iter().any(|(n, _)| *n == items_name) {
                out.push((
                    items_name,
                    node.and_then(|n| serde_json::to_vec(&n.items).ok()),
                ));
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
            let info = DiscoInfoResult {
                node: None,
                identities: vec![Identity::new(
                    "pubsub",
                    "service",
                    "en",
                    "Publish-Subscribe",
                )],
                features: [
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
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
                extensions: vec![],
            };
            return out.push(Action::Send(iq_result(st, Some(info.into()))));
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
                "bad-request",
                "the request names no node",
                Some("nodeid-required"),
                out,
            );
        }
        if st.name() == "message" {
            fail(st, "service-unavailable", "not a user", None, out);
        }
    }

    /// A request naming `node` on `service`, whose records are loaded (or
    /// which does not exist).
    pub fn handle(&mut self, service: &str, name: &str, st: &Element, out: &mut Vec<Action>) {
        if st.name() != "iq" || stanza::is_error_or_result(st) {
            if st.name() == "message" && st.attr("type") != Some("error") {
                fail(st, "service-unavailable", "not a user", None, out);
            }
            return;
        }
        let (meta_name, _) = record_names(service, name);
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return fail(
                st,
                "not-acceptable",
                "invalid node name",
                Some("nodeid-required"),
                out,
            );
        }
        let Some(payload) = st.children().next().cloned() else {
            return fail(st, "bad-request", "empty IQ", None, out);
        };
        let from = st.attr("from").unwrap_or_default().to_string();
        if payload.is("query", NS_DISCO_INFO) || payload.is("query", NS_DISCO_ITEMS) {
            return self.disco(&meta_name, st, &payload, out);
        }
        if payload.is("pubsub", NS_PUBSUB_OWNER) {
            return self.owner(&meta_name, st, &payload, &from, out);
        }
        if !payload.is("pubsub", NS_PUBSUB) {
            return fail(st, "service-unavailable", "not a PubSub request", None, out);
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
                    "bad-request",
                    &format!("malformed request: {e}"),
                    None,
                    out,
                );
            }
        };
        match request {
            Request::Create { configure, .. } if set => {
                if self.nodes.contains_key(&meta_name) {
                    return fail(st, "conflict", "the node exists", None, out);
                }
                let mut config = NodeConfig::new(self.limits.max_items);
                if let Some(form) = configure.and_then(|c| c.form) {
                    let values: Vec<(String, Vec<String>)> = form
                        .fields
                        .into_iter()
                        .filter_map(|f| f.var.map(|v| (v, f.values)))
                        .collect();
                    match node::apply_form(&config, &values, self.limits.max_items) {
                        Ok(c) => config = c,
                        Err(e) => {
                            return fail(
                                st,
                                "not-acceptable",
                                &e,
                                Some("unsupported-access-model"),
                                out,
                            );
                        }
                    }
                }
                let mut affiliations = std::collections::BTreeMap::new();
                affiliations.insert(bare(&from), Affiliation::Owner);
                self.nodes.insert(
                    meta_name.clone(),
                    Node {
                        service: service.to_string(),
                        name: name.to_string(),
                        meta: NodeMeta {
                            config,
                            affiliations,
                            subscriptions: Default::default(),
                        },
                        items: VecDeque::new(),
                    },
                );
                self.dirty.meta.insert(meta_name.clone());
                self.dirty.items.insert(meta_name);
                let create = with_attrs("create", NS_PUBSUB, &[("node", name)]);
                out.push(Action::Send(iq_result(
                    st,
                    Some(pubsub_el(NS_PUBSUB, create)),
                )));
            }
            Request::Publish { publish, .. } if set => {
                self.publish(&meta_name, st, publish, &from, out)
            }
            Request::Retract(retract) if set => {
                let Some(n) = self.nodes.get_mut(&meta_name) else {
                    return fail(st, "item-not-found", "no such node", None, out);
                };
                if !n.may_publish(&from) {
                    return fail(st, "forbidden", "not a publisher", None, out);
                }
                let ids: Vec<String> = retract
                    .items
                    .iter()
                    .filter_map(|i| i.id.as_ref().map(|id| id.0.clone()))
                    .collect();
                if ids.is_empty() {
                    return fail(st, "bad-request", "no item id", Some("item-required"), out);
                }
                if ids.iter().any(|id| !n.items.iter().any(|i| i.id == *id)) {
                    return fail(st, "item-not-found", "no such item", None, out);
                }
                n.items.retain(|i| !ids.contains(&i.id));
                self.dirty.items.insert(meta_name.clone());
                out.push(Action::Send(iq_result(st, None)));
                if retract.notify && n.meta.config.notify_retract {
                    let mut items = with_attrs("items", NS_PUBSUB_EVENT, &[("node", name)]);
                    for id in &ids {
                        items.append_child(with_attrs("retract", NS_PUBSUB_EVENT, &[("id", id)]));
                    }
                    notify(n, items, out);
                }
            }
            Request::Subscribe { subscribe, .. } if set => {
                let Some(sub) = subscribe else {
                    return fail(st, "bad-request", "no subscribe element", None, out);
                };
                let jid = sub.jid.to_string();
                let Some(n) = self.nodes.get(&meta_name) else {
                    return fail(st, "item-not-found", "no such node", None, out);
                };
                if bare(&jid) != bare(&from) {
                    return fail(
                        st,
                        "bad-request",
                        "you may only subscribe yourself",
                        Some("invalid-jid"),
                        out,
                    );
                }
                if n.affiliation(&from) == Affiliation::Outcast {
                    return fail(st, "forbidden", "you are banned from this node", None, out);
                }
                if !n.may_read(&from) {
                    return fail(
                        st,
                        "not-allowed",
                        "the node is whitelisted",
                        Some("closed-node"),
                        out,
                    );
                }
                let subid = match n.meta.subscriptions.get(&jid) {
                    Some(s) => s.clone(),
                    None => {
                        let s = self.fresh_id();
                        let max = self.limits.max_record_bytes;
                        if let Some(n) = self.nodes.get_mut(&meta_name) {
                            n.meta.subscriptions.insert(jid.clone(), s.clone());
                            // The subscriptions are stored in one record:
                            // past its limit, no more subscribers.
                            if serde_json::to_vec(&n.meta).map_or(usize::MAX, |v| v.len()) > max {
                                n.meta.subscriptions.remove(&jid);
                                return fail(
                                    st,
                                    "resource-constraint",
                                    "the node has reached its storage limit for subscriptions (record_max_bytes)",
                                    None,
                                    out,
                                );
                            }
                        }
                        self.dirty.meta.insert(meta_name.clone());
                        s
                    }
                };
                let s = with_attrs(
                    "subscription",
                    NS_PUBSUB,
                    &[
                        ("node", name),
                        ("jid", &jid),
                        ("subid", &subid),
                        ("subscription", "subscribed"),
                    ],
                );
                out.push(Action::Send(iq_result(st, Some(pubsub_el(NS_PUBSUB, s)))));
            }
            Request::Items(req) if !set => {
                let Some(n) = self.nodes.get(&meta_name) else {
                    return fail(st, "item-not-found", "no such node", None, out);
                };
                if !n.may_read(&from) {
                    return fail(
                        st,
                        "not-authorized",
                        "the node is whitelisted",
                        Some("not-in-roster-group"),
                        out,
                    );
                }
                let wanted: Vec<String> = req
                    .items
                    .iter()
                    .filter_map(|i| i.id.as_ref().map(|id| id.0.clone()))
                    .collect();
                let mut chosen: Vec<&StoredItem> = n
                    .items
                    .iter()
                    .filter(|i| wanted.is_empty() || wanted.contains(&i.id))
                    .collect();
                if let Some(max) = req.max_items {
                    let skip = chosen.len().saturating_sub(max as usize);
                    chosen.drain(..skip);
                }
                let mut items = with_attrs("items", NS_PUBSUB, &[("node", name)]);
                for i in chosen {
                    items.append_child(item_element(NS_PUBSUB, i, true));
                }
                out.push(Action::Send(iq_result(
                    st,
                    Some(pubsub_el(NS_PUBSUB, items)),
                )));
            }
            Request::Subscriptions(_) | Request::Affiliations(_) if !set => {
                // The requester's own entries for this node.
                let Some(n) = self.nodes.get(&meta_name) else {
                    return fail(st, "item-not-found", "no such node", None, out);
                };
                let list = if matches!(request, Request::Subscriptions(_)) {
                    let mut l = Element::bare("subscriptions", NS_PUBSUB);
                    for (jid, subid) in n
                        .meta
                        .subscriptions
                        .iter()
                        .filter(|(j, _)| bare(j) == bare(&from))
                    {
                        l.append_child(with_attrs(
                            "subscription",
                            NS_PUBSUB,
                            &[
                                ("node", name),
                                ("jid", jid),
                                ("subid", subid),
                                ("subscription", "subscribed"),
                            ],
                        ));
                    }
                    l
                } else {
                    let mut l = Element::bare("affiliations", NS_PUBSUB);
                    let a = n.affiliation(&from);
                    if a != Affiliation::None {
                        l.append_child(with_attrs(
                            "affiliation",
                            NS_PUBSUB,
                            &[("node", name), ("affiliation", a.as_str())],
                        ));
                    }
                    l
                };
                out.push(Action::Send(iq_result(
                    st,
                    Some(pubsub_el(NS_PUBSUB, list)),
                )));
            }
            _ => fail(
                st,
                "feature-not-implemented",
                "unsupported request",
                None,
                out,
            ),
        }
    }

    fn unsubscribe(
        &mut self,
        meta_name: &str,
        st: &Element,
        jid: &str,
        from: &str,
        out: &mut Vec<Action>,
    ) {
        let Some(n) = self.nodes.get_mut(meta_name) else {
            return fail(st, "item-not-found", "no such node", None, out);
        };
        if jid::Jid::new(jid).is_err()
            || (bare(jid) != bare(from) && n.affiliation(from) != Affiliation::Owner)
        {
            return fail(
                st,
                "bad-request",
                "you may only unsubscribe yourself",
                Some("invalid-jid"),
                out,
            );
        }
        if n.meta.subscriptions.remove(jid).is_none() {
            return fail(
                st,
                "unexpected-request",
                "not subscribed",
                Some("not-subscribed"),
                out,
            );
        }
        self.dirty.meta.insert(meta_name.to_string());
        out.push(Action::Send(iq_result(st, None)));
    }

    fn publish(
        &mut self,
        meta_name: &str,
        st: &Element,
        publish: xmpp_parsers::pubsub::pubsub::Publish,
        from: &str,
        out: &mut Vec<Action>,
    ) {
        let limits = self.limits;
        let generated = self.fresh_id();
        let Some(n) = self.nodes.get_mut(meta_name) else {
            return fail(st, "item-not-found", "no such node", None, out);
        };
        if !n.may_publish(from) {
            return fail(st, "forbidden", "not a publisher of this node", None, out);
        }
        let mut items = publish.items.into_iter();
        let (Some(item), None) = (items.next(), items.next()) else {
            return fail(
                st,
                "bad-request",
                "publish exactly one item",
                Some("item-required"),
                out,
            );
        };
        let Some(payload) = item.payload else {
            return fail(
                st,
                "bad-request",
                "the item has no payload",
                Some("payload-required"),
                out,
            );
        };
        let payload = xmpp_edge::xml_write::element_to_string(&payload);
        if payload.len() > limits.max_item_bytes {
            return fail(
                st,
                "not-acceptable",
                &format!(
                    "the item is {} bytes; the limit is {}",
                    payload.len(),
                    limits.max_item_bytes
                ),
                Some("payload-too-big"),
                out,
            );
        }
        let id = item.id.map(|i| i.0).unwrap_or(generated);
        if id.len() > MAX_NAME_BYTES {
            return fail(st, "bad-request", "item id too long", None, out);
        }
        let stored = StoredItem {
            id: id.clone(),
            publisher: from.to_string(),
            payload,
        };
        n.items.retain(|i| i.id != id);
        n.items.push_back(stored.clone());
        while n.items.len() > n.meta.config.max_items.max(1) {
            n.items.pop_front();
        }
        // Keep the items record under the record store's limit: the oldest
        // items go first.
        while n.items.len() > 1
            && serde_json::to_vec(&n.items).map_or(0, |b| b.len()) > limits.max_record_bytes
        {
            n.items.pop_front();
        }
        self.dirty.items.insert(meta_name.to_string());
        let name = n.name.clone();
        let p = with_attrs("publish", NS_PUBSUB, &[("node", &name)]);
        let mut p = p;
        p.append_child(with_attrs("item", NS_PUBSUB, &[("id", &id)]));
        out.push(Action::Send(iq_result(st, Some(pubsub_el(NS_PUBSUB, p)))));
        let mut items = with_attrs("items", NS_PUBSUB_EVENT, &[("node", &name)]);
        items.append_child(item_element(
            NS_PUBSUB_EVENT,
            &stored,
            n.meta.config.deliver_payloads,
        ));
        notify(n, items, out);
    }

    fn disco(&self, meta_name: &str, st: &Element, q: &Element, out: &mut Vec<Action>) {
        let Some(n) = self.nodes.get(meta_name) else {
            return fail(st, "item-not-found", "no such node", None, out);
        };
        if st.attr("type") != Some("get") {
            return fail(st, "bad-request", "disco is a get", None, out);
        }
        let reply: Element = if q.is("query", NS_DISCO_INFO) {
            DiscoInfoResult {
                node: Some(n.name.clone()),
                identities: vec![Identity::new(
                    "pubsub",
                    "leaf",
                    "en",
                    n.meta.config.title.clone(),
                )],
                features: [NS_PUBSUB, NS_DISCO_INFO, NS_DISCO_ITEMS]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                extensions: vec![],
            }
            .into()
        } else {
            let jid = jid::Jid::new(&n.service).ok();
            DiscoItemsResult {
                node: Some(n.name.clone()),
                items: n
                    .items
                    .iter()
                    .filter_map(|i| {
                        Some(xmpp_parsers::disco::Item {
                            jid: jid.clone()?,
                            node: None,
                            name: Some(i.id.clone()),
                        })
                    })
                    .collect(),
                rsm: None,
            }
            .into()
        };
        out.push(Action::Send(iq_result(st, Some(reply))));
    }

    /// `pubsub#owner` requests: configure, default, delete, purge,
    /// subscriptions and affiliations management.
    fn owner(
        &mut self,
        meta_name: &str,
        st: &Element,
        payload: &Element,
        from: &str,
        out: &mut Vec<Action>,
    ) {
        let Some(op) = payload.children().next() else {
            return fail(st, "bad-request", "empty owner request", None, out);
        };
        let set = st.attr("type") == Some("set");
        let max_items = self.limits.max_items;
        let Some(n) = self.nodes.get_mut(meta_name) else {
            return fail(st, "item-not-found", "no such node", None, out);
        };
        if n.affiliation(from) != Affiliation::Owner {
            return fail(st, "forbidden", "only owners may do this", None, out);
        }
        let name = n.name.clone();
        match (op.name(), set) {
            ("configure", false) => {
                let mut c = with_attrs("configure", NS_PUBSUB_OWNER, &[("node", &name)]);
                c.append_child(node::config_form(&n.meta.config));
                out.push(Action::Send(iq_result(
                    st,
                    Some(pubsub_el(NS_PUBSUB_OWNER, c)),
                )));
            }
            ("configure", true) => {
                let submitted = match super::forms::submitted(op) {
                    Ok(Some(s)) if !s.cancel => s,
                    Ok(Some(_)) => return out.push(Action::Send(iq_result(st, None))),
                    Ok(None) => return fail(st, "bad-request", "no form", None, out),
                    Err(e) => return fail(st, "bad-request", &e, None, out),
                };
                match node::apply_form(&n.meta.config, &submitted.values, max_items) {
                    Ok(c) => {
                        n.meta.config = c;
                        while n.items.len() > n.meta.config.max_items.max(1) {
                            n.items.pop_front();
                        }
                        self.dirty.meta.insert(meta_name.to_string());
                        self.dirty.items.insert(meta_name.to_string());
                        out.push(Action::Send(iq_result(st, None)));
                    }
                    Err(e) => fail(
                        st,
                        "not-acceptable",
                        &e,
                        Some("unsupported-access-model"),
                        out,
                    ),
                }
            }
            ("delete", true) => {
                if n.meta.config.notify_delete {
                    notify(
                        n,
                        with_attrs("delete", NS_PUBSUB_EVENT, &[("node", &name)]),
                        out,
                    );
                }
                self.nodes.remove(meta_name);
                self.dirty.meta.insert(meta_name.to_string());
                self.dirty.items.insert(meta_name.to_string());
                out.push(Action::Send(iq_result(st, None)));
            }
            ("purge", true) => {
                n.items.clear();
                self.dirty.items.insert(meta_name.to_string());
                notify(
                    n,
                    with_attrs("purge", NS_PUBSUB_EVENT, &[("node", &name)]),
                    out,
                );
                out.push(Action::Send(iq_result(st, None)));
            }
            ("subscriptions", false) => {
                let mut l = with_attrs("subscriptions", NS_PUBSUB_OWNER, &[("node", &name)]);
                for (jid, subid) in &n.meta.subscriptions {
                    l.append_child(with_attrs(
                        "subscription",
                        NS_PUBSUB_OWNER,
                        &[
                            ("jid", jid),
                            ("subid", subid),
                            ("subscription", "subscribed"),
                        ],
                    ));
                }
                out.push(Action::Send(iq_result(
                    st,
                    Some(pubsub_el(NS_PUBSUB_OWNER, l)),
                )));
            }
            ("subscriptions", true) => {
                let mut changes = Vec::new();
                for s in op.children().filter(|c| c.name() == "subscription") {
                    let (Some(jid), Some(state)) = (s.attr("jid"), s.attr("subscription")) else {
                        return fail(
                            st,
                            "bad-request",
                            "subscription needs jid and subscription",
                            None,
                            out,
                        );
                    };
                    if jid::Jid::new(jid).is_err() || !matches!(state, "subscribed" | "none") {
                        return fail(
                            st,
                            "bad-request",
                            "invalid subscription",
                            Some("invalid-jid"),
                            out,
                        );
                    }
                    changes.push((jid.to_string(), state == "subscribed"));
                }
                for (jid, on) in changes {
                    if on {
                        if !n.meta.subscriptions.contains_key(&jid) {
                            let subid = format!(
                                "{:016x}",
                                self.next_id ^ jid.len() as u64 ^ n.meta.subscriptions.len() as u64
                            );
                            n.meta.subscriptions.insert(jid, subid);
                        }
                    } else {
                        n.meta.subscriptions.remove(&jid);
                    }
                }
                self.dirty.meta.insert(meta_name.to_string());
                out.push(Action::Send(iq_result(st, None)));
            }
            ("affiliations", false) => {
                let mut l = with_attrs("affiliations", NS_PUBSUB_OWNER, &[("node", &name)]);
                for (jid, a) in &n.meta.affiliations {
                    l.append_child(with_attrs(
                        "affiliation",
                        NS_PUBSUB_OWNER,
                        &[("jid", jid), ("affiliation", a.as_str())],
                    ));
                }
                out.push(Action::Send(iq_result(
                    st,
                    Some(pubsub_el(NS_PUBSUB_OWNER, l)),
                )));
            }
            ("affiliations", true) => {
                let mut after = n.meta.affiliations.clone();
                for a in op.children().filter(|c| c.name() == "affiliation") {
                    let (Some(jid), Some(aff)) = (
                        a.attr("jid"),
                        a.attr("affiliation").and_then(Affiliation::parse),
                    ) else {
                        return fail(
                            st,
                            "bad-request",
                            "affiliation needs jid and a known affiliation",
                            None,
                            out,
                        );
                    };
                    if jid::Jid::new(jid).is_err() {
                        return fail(st, "bad-request", "invalid jid", Some("invalid-jid"), out);
                    }
                    if aff == Affiliation::None {
                        after.remove(&bare(jid));
                    } else {
                        after.insert(bare(jid), aff);
                    }
                }
                if !after.values().any(|a| *a == Affiliation::Owner) {
                    return fail(
                        st,
                        "not-acceptable",
                        "the node would have no owner",
                        None,
                        out,
                    );
                }
                // Outcasts lose their subscriptions.
                let banned: Vec<String> = after
                    .iter()
                    .filter(|(_, a)| **a == Affiliation::Outcast)
                    .map(|(j, _)| j.clone())
                    .collect();
                n.meta
                    .subscriptions
                    .retain(|j, _| !banned.contains(&bare(j)));
                n.meta.affiliations = after;
                self.dirty.meta.insert(meta_name.to_string());
                out.push(Action::Send(iq_result(st, None)));
            }
            _ => fail(
                st,
                "feature-not-implemented",
                "unsupported owner request",
                None,
                out,
            ),
        }
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
    if n.meta.subscriptions.is_empty() {
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
        to: n.meta.subscriptions.keys().cloned().collect(),
    });
}

#[cfg(test)]
mod tests;
