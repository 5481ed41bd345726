//! A PubSub node's state (XEP-0060): configuration, affiliations,
//! subscriptions and items, as they are stored, and the configuration form.

// Items named after XEP-0045/0060/0004 terms (roles, affiliations, form
// fields, namespaces) are documented by those XEPs.
#![allow(missing_docs)]

use crate::error::FormError;
use crate::forms;
use crate::sharded::{ShardHeader, Sharded};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use xmpp_parsers::minidom::Element;

pub const FORM_TYPE: &str = "http://jabber.org/protocol/pubsub#node_config";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Publisher,
    Owner,
}

impl Affiliation {
    pub fn parse(s: &str) -> Option<Affiliation> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "publisher" => Affiliation::Publisher,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Publisher => "publisher",
            Affiliation::Owner => "owner",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub title: String,
    pub max_items: usize,
    /// `open`: anyone may subscribe and retrieve; else `whitelist`: only
    /// affiliated users.
    pub access_open: bool,
    /// `open`: anyone may publish; else `publishers` (owners, publishers).
    pub publish_open: bool,
    pub deliver_payloads: bool,
    pub notify_retract: bool,
    pub notify_delete: bool,
}

impl NodeConfig {
    pub fn new(max_items: usize) -> NodeConfig {
        NodeConfig {
            title: String::new(),
            max_items,
            access_open: true,
            publish_open: false,
            deliver_payloads: true,
            notify_retract: true,
            notify_delete: true,
        }
    }
}

/// A node's configuration and affiliations, and where its subscriptions
/// are: one record, written when they change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub config: NodeConfig,
    /// By bare JID (absent: `none`).
    pub affiliations: BTreeMap<String, Affiliation>,
    /// Where the subscriptions are stored (absent in older records).
    #[serde(default)]
    pub subscription_shards: Option<ShardHeader>,
    /// The subscriptions of a record written before they were sharded
    /// (moved to shards when the node loads).
    #[serde(
        default,
        rename = "subscriptions",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub legacy_subscriptions: BTreeMap<String, String>,
}

/// One published item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredItem {
    pub id: String,
    pub publisher: String,
    /// The payload element, serialised.
    pub payload: String,
}

/// A node in memory: its meta record, its subscriptions (subscribed JID
/// -> subscription id, in shards) and its items record (oldest first).
pub struct Node {
    pub service: String,
    pub name: String,
    pub meta: NodeMeta,
    pub subscriptions: Sharded<String>,
    pub items: VecDeque<StoredItem>,
}

impl Node {
    pub fn affiliation(&self, jid: &str) -> Affiliation {
        self.meta
            .affiliations
            .get(&crate::stanza::bare(jid))
            .copied()
            .unwrap_or(Affiliation::None)
    }

    /// Whether `jid` may subscribe to and read the node.
    pub fn may_read(&self, jid: &str) -> bool {
        let a = self.affiliation(jid);
        a != Affiliation::Outcast && (self.meta.config.access_open || a >= Affiliation::Member)
    }

    pub fn may_publish(&self, jid: &str) -> bool {
        let a = self.affiliation(jid);
        a >= Affiliation::Publisher || (self.meta.config.publish_open && a != Affiliation::Outcast)
    }
}

pub fn config_form(c: &NodeConfig) -> Element {
    let f = |s: &str| format!("pubsub#{s}");
    forms::form(
        FORM_TYPE,
        "Node configuration",
        vec![
            forms::text(&f("title"), "Title", &c.title),
            forms::text(&f("max_items"), "Items kept", &c.max_items.to_string()),
            forms::list(
                &f("access_model"),
                "Who may subscribe",
                if c.access_open { "open" } else { "whitelist" },
                &["open", "whitelist"],
            ),
            forms::list(
                &f("publish_model"),
                "Who may publish",
                if c.publish_open { "open" } else { "publishers" },
                &["publishers", "open"],
            ),
            forms::boolean(
                &f("deliver_payloads"),
                "Deliver payloads",
                c.deliver_payloads,
            ),
            forms::boolean(&f("notify_retract"), "Notify retractions", c.notify_retract),
            forms::boolean(&f("notify_delete"), "Notify deletion", c.notify_delete),
            forms::boolean(&f("persist_items"), "Persist items", true),
        ],
    )
}

/// Applies submitted values to a copy of `c`; `max_items_limit` is the
/// service's bound.
pub fn apply_form(
    c: &NodeConfig,
    values: &[(String, Vec<String>)],
    max_items_limit: usize,
) -> Result<NodeConfig, FormError> {
    let mut c = c.clone();
    for (var, v) in values {
        match var.as_str() {
            "pubsub#title" => c.title = forms::first(v),
            "pubsub#max_items" => {
                c.max_items = match forms::first(v).as_str() {
                    "max" => max_items_limit,
                    _ => forms::parse_number(var, v, max_items_limit)?,
                }
            }
            "pubsub#access_model" => {
                c.access_open = match forms::first(v).as_str() {
                    "open" => true,
                    "whitelist" => false,
                    other => {
                        return Err(FormError::Unsupported {
                            var: var.clone(),
                            value: other.to_string(),
                        });
                    }
                }
            }
            "pubsub#publish_model" => {
                c.publish_open = match forms::first(v).as_str() {
                    "open" => true,
                    "publishers" => false,
                    other => {
                        return Err(FormError::Unsupported {
                            var: var.clone(),
                            value: other.to_string(),
                        });
                    }
                }
            }
            "pubsub#deliver_payloads" => c.deliver_payloads = forms::parse_bool(var, v)?,
            "pubsub#notify_retract" => c.notify_retract = forms::parse_bool(var, v)?,
            "pubsub#notify_delete" => c.notify_delete = forms::parse_bool(var, v)?,
            "pubsub#persist_items" if !forms::parse_bool(var, v)? => {
                return Err(FormError::Inconsistent("items are always persisted"));
            }
            _ => {}
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_apply_and_refuse() {
        let v = |k: &str, x: &str| (k.to_string(), vec![x.to_string()]);
        let c = apply_form(
            &NodeConfig::new(10),
            &[
                v("pubsub#max_items", "5"),
                v("pubsub#access_model", "whitelist"),
                v("pubsub#publish_model", "open"),
            ],
            20,
        )
        .unwrap();
        assert_eq!(c.max_items, 5);
        assert!(!c.access_open && c.publish_open);
        assert_eq!(
            apply_form(&c, &[v("pubsub#max_items", "max")], 20)
                .unwrap()
                .max_items,
            20
        );
        for bad in [
            v("pubsub#max_items", "21"),
            v("pubsub#access_model", "roster"),
            v("pubsub#notify_retract", "perhaps"),
            v("pubsub#persist_items", "0"),
        ] {
            assert!(
                apply_form(&c, std::slice::from_ref(&bad), 20).is_err(),
                "{bad:?}"
            );
        }
        let df = xmpp_parsers::data_forms::DataForm::try_from(config_form(&c)).unwrap();
        assert_eq!(df.form_type(), Some(FORM_TYPE));
    }
}
