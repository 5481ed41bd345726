//! Subscribers' and publishers' requests (XEP-0060 §6-7): create, publish,
//! retract, subscribe, unsubscribe, retrieve items, the requester's own
//! subscriptions and affiliations, and disco of a node.

use super::node::{self, Affiliation, Node, NodeConfig, NodeMeta, StoredItem};
use super::*;
use crate::stanza::{bare, iq_result};
use std::collections::VecDeque;
use xmpp_parsers::stanza_error::DefinedCondition;

/// Nodes waiting for the registry's answer at once.
const MAX_PENDING_CREATES: usize = 1024;
/// A creation the registry has not answered in this long fails.
const CREATE_TIMEOUT_SECS: u64 = 30;

/// A node asked for but not yet granted by the service's registry.
pub(super) struct PendingCreate {
    request: Element,
    config: NodeConfig,
    since_unix: u64,
}

impl PubSub {
    /// Holds a create request until the registry answers.
    fn request_create(
        &mut self,
        service: &str,
        name: &str,
        meta_name: &str,
        st: &Element,
        config: NodeConfig,
        out: &mut Vec<Action>,
    ) {
        if self.pending.contains_key(meta_name) {
            return fail(
                st,
                DefinedCondition::Conflict,
                "the node is being created",
                None,
                out,
            );
        }
        if self.pending.len() >= MAX_PENDING_CREATES {
            return fail(
                st,
                DefinedCondition::ResourceConstraint,
                "too many nodes being created",
                None,
                out,
            );
        }
        let owner = bare(st.attr("from").unwrap_or_default());
        self.pending.insert(
            meta_name.to_string(),
            PendingCreate {
                request: st.clone(),
                config,
                since_unix: self.now_unix,
            },
        );
        out.push(Action::Send(crate::directory::reserve(
            service, name, &owner,
        )));
    }

    /// The registry answered for node `name`.
    pub(super) fn on_reserved(
        &mut self,
        service: &str,
        name: &str,
        answer: Result<(), crate::error::Refused>,
        out: &mut Vec<Action>,
    ) {
        let (meta_name, _) = record_names(service, name);
        let Some(p) = self.pending.remove(&meta_name) else {
            return;
        };
        self.answered.push(stanza::shell(&p.request));
        let st = &p.request;
        if let Err(why) = answer {
            return fail(
                st,
                DefinedCondition::PolicyViolation,
                &format!("cannot create the node: {why}"),
                None,
                out,
            );
        }
        if self.nodes.contains_key(&meta_name) {
            return fail(st, DefinedCondition::Conflict, "the node exists", None, out);
        }
        let from = st.attr("from").unwrap_or_default();
        let mut affiliations = std::collections::BTreeMap::new();
        affiliations.insert(bare(from), Affiliation::Owner);
        let subscriptions = self.new_subscriptions(service, name);
        self.nodes.insert(
            meta_name.clone(),
            Node {
                service: service.to_string(),
                name: name.to_string(),
                meta: NodeMeta {
                    config: p.config,
                    affiliations,
                    subscription_shards: Some(subscriptions.header()),
                    legacy_subscriptions: Default::default(),
                },
                subscriptions,
                items: VecDeque::new(),
            },
        );
        self.dirty.meta.insert(meta_name.clone());
        self.dirty.subscriptions.insert(meta_name.clone());
        self.dirty.items.insert(meta_name);
        let create = with_attrs("create", NS_PUBSUB, &[("node", name)]);
        out.push(Action::Send(iq_result(
            st,
            Some(pubsub_el(NS_PUBSUB, create)),
        )));
    }

    /// Creations the registry did not answer in time fail.
    pub fn expire_pending(&mut self, now_unix: u64, out: &mut Vec<Action>) {
        let late: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| now_unix.saturating_sub(p.since_unix) >= CREATE_TIMEOUT_SECS)
            .map(|(n, _)| n.clone())
            .collect();
        for n in late {
            if let Some(p) = self.pending.remove(&n) {
                fail(
                    &p.request,
                    DefinedCondition::RemoteServerTimeout,
                    "the service's registry did not answer",
                    None,
                    out,
                );
            }
        }
    }

    /// A parsed `pubsub` request for node `name`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn user_request(
        &mut self,
        service: &str,
        name: &str,
        meta_name: &str,
        st: &Element,
        request: Request,
        from: &str,
        set: bool,
        out: &mut Vec<Action>,
    ) {
        let meta_name = meta_name.to_string();
        let from = from.to_string();
        match request {
            Request::Create { configure, .. } if set => {
                if self.nodes.contains_key(&meta_name) {
                    return fail(st, DefinedCondition::Conflict, "the node exists", None, out);
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
                                DefinedCondition::NotAcceptable,
                                &e.to_string(),
                                Some("unsupported-access-model"),
                                out,
                            );
                        }
                    }
                }
                // The service's registry must grant the node first (quotas).
                self.request_create(service, name, &meta_name, st, config, out);
            }
            Request::Publish { publish, .. } if set => {
                self.publish(&meta_name, st, publish, &from, out)
            }
            Request::Retract(retract) if set => {
                let Some(n) = self.nodes.get_mut(&meta_name) else {
                    return fail(
                        st,
                        DefinedCondition::ItemNotFound,
                        "no such node",
                        None,
                        out,
                    );
                };
                if !n.may_publish(&from) {
                    return fail(
                        st,
                        DefinedCondition::Forbidden,
                        "not a publisher",
                        None,
                        out,
                    );
                }
                let ids: Vec<String> = retract
                    .items
                    .iter()
                    .filter_map(|i| i.id.as_ref().map(|id| id.0.clone()))
                    .collect();
                if ids.is_empty() {
                    return fail(
                        st,
                        DefinedCondition::BadRequest,
                        "no item id",
                        Some("item-required"),
                        out,
                    );
                }
                if ids.iter().any(|id| !n.items.iter().any(|i| i.id == *id)) {
                    return fail(
                        st,
                        DefinedCondition::ItemNotFound,
                        "no such item",
                        None,
                        out,
                    );
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
                    return fail(
                        st,
                        DefinedCondition::BadRequest,
                        "no subscribe element",
                        None,
                        out,
                    );
                };
                let jid = sub.jid.to_string();
                let Some(n) = self.nodes.get(&meta_name) else {
                    return fail(
                        st,
                        DefinedCondition::ItemNotFound,
                        "no such node",
                        None,
                        out,
                    );
                };
                if bare(&jid) != bare(&from) {
                    return fail(
                        st,
                        DefinedCondition::BadRequest,
                        "you may only subscribe yourself",
                        Some("invalid-jid"),
                        out,
                    );
                }
                if n.affiliation(&from) == Affiliation::Outcast {
                    return fail(
                        st,
                        DefinedCondition::Forbidden,
                        "you are banned from this node",
                        None,
                        out,
                    );
                }
                if !n.may_read(&from) {
                    return fail(
                        st,
                        DefinedCondition::NotAllowed,
                        "the node is whitelisted",
                        Some("closed-node"),
                        out,
                    );
                }
                let subid = match n.subscriptions.get(&jid) {
                    Some(s) => s.clone(),
                    None => {
                        let s = self.fresh_id();
                        if let Some(n) = self.nodes.get_mut(&meta_name)
                            && let Err(e) = n.subscriptions.insert(jid.clone(), s.clone())
                        {
                            return fail(
                                st,
                                DefinedCondition::ResourceConstraint,
                                &e.to_string(),
                                None,
                                out,
                            );
                        }
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
                    return fail(
                        st,
                        DefinedCondition::ItemNotFound,
                        "no such node",
                        None,
                        out,
                    );
                };
                if !n.may_read(&from) {
                    return fail(
                        st,
                        DefinedCondition::NotAuthorized,
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
                    return fail(
                        st,
                        DefinedCondition::ItemNotFound,
                        "no such node",
                        None,
                        out,
                    );
                };
                let list = if matches!(request, Request::Subscriptions(_)) {
                    let mut l = Element::bare("subscriptions", NS_PUBSUB);
                    for (jid, subid) in n
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
                DefinedCondition::FeatureNotImplemented,
                "unsupported request",
                None,
                out,
            ),
        }
    }

    pub(super) fn unsubscribe(
        &mut self,
        meta_name: &str,
        st: &Element,
        jid: &str,
        from: &str,
        out: &mut Vec<Action>,
    ) {
        let Some(n) = self.nodes.get_mut(meta_name) else {
            return fail(
                st,
                DefinedCondition::ItemNotFound,
                "no such node",
                None,
                out,
            );
        };
        if jid::Jid::new(jid).is_err()
            || (bare(jid) != bare(from) && n.affiliation(from) != Affiliation::Owner)
        {
            return fail(
                st,
                DefinedCondition::BadRequest,
                "you may only unsubscribe yourself",
                Some("invalid-jid"),
                out,
            );
        }
        if n.subscriptions.remove(jid).is_none() {
            return fail(
                st,
                DefinedCondition::UnexpectedRequest,
                "not subscribed",
                Some("not-subscribed"),
                out,
            );
        }
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
            return fail(
                st,
                DefinedCondition::ItemNotFound,
                "no such node",
                None,
                out,
            );
        };
        if !n.may_publish(from) {
            return fail(
                st,
                DefinedCondition::Forbidden,
                "not a publisher of this node",
                None,
                out,
            );
        }
        let mut items = publish.items.into_iter();
        let (Some(item), None) = (items.next(), items.next()) else {
            return fail(
                st,
                DefinedCondition::BadRequest,
                "publish exactly one item",
                Some("item-required"),
                out,
            );
        };
        let Some(payload) = item.payload else {
            return fail(
                st,
                DefinedCondition::BadRequest,
                "the item has no payload",
                Some("payload-required"),
                out,
            );
        };
        let payload = crate::stanza::to_string(&payload);
        if payload.len() > limits.max_item_bytes {
            return fail(
                st,
                DefinedCondition::NotAcceptable,
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
            return fail(
                st,
                DefinedCondition::BadRequest,
                "item id too long",
                None,
                out,
            );
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

    pub(super) fn disco(&self, meta_name: &str, st: &Element, q: &Element, out: &mut Vec<Action>) {
        let Some(n) = self.nodes.get(meta_name) else {
            return fail(
                st,
                DefinedCondition::ItemNotFound,
                "no such node",
                None,
                out,
            );
        };
        if st.attr("type") != Some("get") {
            return fail(
                st,
                DefinedCondition::BadRequest,
                "disco is a get",
                None,
                out,
            );
        }
        let reply: Element = if q.is("query", NS_DISCO_INFO) {
            stanza::disco_info(
                Some(n.name.clone()),
                "pubsub",
                "leaf",
                &n.meta.config.title,
                &[NS_PUBSUB, NS_DISCO_INFO, NS_DISCO_ITEMS],
            )
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
}
