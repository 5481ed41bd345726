//! `pubsub#owner` requests (XEP-0060 §8): configure, default, delete,
//! purge, and the owner's management of subscriptions and affiliations.

use super::node::{self, Affiliation};
use super::{NS_PUBSUB_EVENT, NS_PUBSUB_OWNER, PubSub, fail, notify, pubsub_el, with_attrs};
use crate::Action;
use crate::stanza::{bare, iq_result};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

impl PubSub {
    /// `pubsub#owner` requests: configure, default, delete, purge,
    /// subscriptions and affiliations management.
    pub(super) fn owner(
        &mut self,
        meta_name: &str,
        st: &Element,
        payload: &Element,
        from: &str,
        out: &mut Vec<Action>,
    ) {
        let Some(op) = payload.children().next() else {
            return fail(
                st,
                DefinedCondition::BadRequest,
                "empty owner request",
                None,
                out,
            );
        };
        let set = st.attr("type") == Some("set");
        let max_items = self.limits.max_items;
        let Some(n) = self.nodes.get_mut(meta_name) else {
            return fail(
                st,
                DefinedCondition::ItemNotFound,
                "no such node",
                None,
                out,
            );
        };
        if n.affiliation(from) != Affiliation::Owner {
            return fail(
                st,
                DefinedCondition::Forbidden,
                "only owners may do this",
                None,
                out,
            );
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
                let submitted = match crate::forms::submitted(op) {
                    Ok(Some(s)) if !s.cancel => s,
                    Ok(Some(_)) => return out.push(Action::Send(iq_result(st, None))),
                    Ok(None) => {
                        return fail(st, DefinedCondition::BadRequest, "no form", None, out);
                    }
                    Err(e) => {
                        return fail(st, DefinedCondition::BadRequest, &e.to_string(), None, out);
                    }
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
                        DefinedCondition::NotAcceptable,
                        &e.to_string(),
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
                let service = n.service.clone();
                self.remove_node(meta_name);
                out.push(Action::Send(iq_result(st, None)));
                out.push(Action::Send(crate::directory::release(&service, &name)));
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
                for (jid, subid) in n.subscriptions.iter() {
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
                            DefinedCondition::BadRequest,
                            "subscription needs jid and subscription",
                            None,
                            out,
                        );
                    };
                    if jid::Jid::new(jid).is_err() || !matches!(state, "subscribed" | "none") {
                        return fail(
                            st,
                            DefinedCondition::BadRequest,
                            "invalid subscription",
                            Some("invalid-jid"),
                            out,
                        );
                    }
                    changes.push((jid.to_string(), state == "subscribed"));
                }
                // All or nothing: a subscription that cannot be stored
                // undoes the request.
                let before = n.subscriptions.clone();
                for (jid, on) in changes {
                    if !on {
                        n.subscriptions.remove(&jid);
                        continue;
                    }
                    if n.subscriptions.contains_key(&jid) {
                        continue;
                    }
                    let subid = format!(
                        "{:016x}",
                        self.next_id ^ jid.len() as u64 ^ n.subscriptions.len() as u64
                    );
                    if let Err(e) = n.subscriptions.insert(jid, subid) {
                        n.subscriptions = before;
                        return fail(
                            st,
                            DefinedCondition::ResourceConstraint,
                            &e.to_string(),
                            None,
                            out,
                        );
                    }
                }
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
                            DefinedCondition::BadRequest,
                            "affiliation needs jid and a known affiliation",
                            None,
                            out,
                        );
                    };
                    if jid::Jid::new(jid).is_err() {
                        return fail(
                            st,
                            DefinedCondition::BadRequest,
                            "invalid jid",
                            Some("invalid-jid"),
                            out,
                        );
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
                        DefinedCondition::NotAcceptable,
                        "the node would have no owner",
                        None,
                        out,
                    );
                }
                // The new affiliations must fit the node's record before
                // anything changes.
                let mut meta = n.meta.clone();
                meta.affiliations = after;
                if serde_json::to_vec(&meta).map_or(usize::MAX, |b| b.len())
                    > self.limits.max_record_bytes
                {
                    return fail(
                        st,
                        DefinedCondition::ResourceConstraint,
                        "the node's state would exceed its storage limit (record_max_bytes)",
                        None,
                        out,
                    );
                }
                // Outcasts lose their subscriptions.
                let banned: Vec<String> = n
                    .subscriptions
                    .keys()
                    .filter(|j| meta.affiliations.get(&bare(j)) == Some(&Affiliation::Outcast))
                    .cloned()
                    .collect();
                for j in banned {
                    n.subscriptions.remove(&j);
                }
                n.meta = meta;
                self.dirty.meta.insert(meta_name.to_string());
                out.push(Action::Send(iq_result(st, None)));
            }
            _ => fail(
                st,
                DefinedCondition::FeatureNotImplemented,
                "unsupported owner request",
                None,
                out,
            ),
        }
    }
}
