//! The PubSub state machine driven request by request.

use super::*;
use crate::stanza::NS_CLIENT;
use crate::stanza::NS_STANZAS;
use crate::testing::{Store, read_rounds};

const SVC: &str = "pubsub.ring.test";

fn ps() -> PubSub {
    PubSub::new(
        Limits {
            max_items: 3,
            max_item_bytes: 200,
            max_record_bytes: 2000,
        },
        1,
    )
}

/// Keeps `writes` as the record store would.
fn keep(store: &mut Store, writes: Vec<Write>) {
    for w in writes {
        store.insert(w.name, w.value);
    }
}

/// Loads node `name` from `store` into `p`, round by round as the host
/// does.
fn load(p: &mut PubSub, store: &Store, name: &str) -> Result<(), crate::error::StateError> {
    let get = |n: &str| store.get(n).cloned().flatten();
    let (meta, items) = record_names(SVC, name);
    let (meta, items) = (get(&meta), get(&items));
    let Some(mut l) = p.start_install(SVC, name, meta.as_deref(), items.as_deref())? else {
        return Ok(());
    };
    read_rounds(&mut l, store)?;
    p.finish_install(l);
    Ok(())
}

fn deliver(p: &mut PubSub, st: &Element) -> Vec<Action> {
    let mut out = Vec::new();
    match target_node(st) {
        Some(n) => p.handle(SVC, &n, st, 0, &mut out),
        None => p.handle_service(st, &[], &mut out),
    }
    out
}

/// Runs a request; the service's registry (generous quotas) answers
/// creations.
fn run(p: &mut PubSub, xml: &str) -> Vec<Action> {
    let q = crate::directory::Quotas {
        per_owner: 50,
        total: 5000,
    };
    let mut registry = crate::directory::Directories::new(65536, q, q);
    run_with(p, &mut registry, xml)
}

fn run_with(
    p: &mut PubSub,
    registry: &mut crate::directory::Directories,
    xml: &str,
) -> Vec<Action> {
    let st: Element = xml.parse().unwrap();
    let out = deliver(p, &st);
    crate::directory::play_registry(registry, crate::directory::Kind::Node, out, &mut |answer| {
        deliver(p, &answer)
    })
}

fn iq(from: &str, ty: &str, ns: &str, inner: &str) -> String {
    format!(
        "<iq xmlns='jabber:client' type='{ty}' id='i' from='{from}' to='{SVC}'><pubsub xmlns='{ns}'>{inner}</pubsub></iq>"
    )
}

fn reply(out: &[Action]) -> &Element {
    out.iter()
        .find_map(|a| match a {
            Action::Send(s) => Some(s),
            _ => None,
        })
        .expect("a reply")
}

/// The stanza error condition and the XEP-0060 one.
fn errors(out: &[Action]) -> (String, Option<String>) {
    let e = reply(out).get_child("error", NS_CLIENT).expect("an error");
    let c = e
        .children()
        .find(|c| c.ns() == NS_STANZAS)
        .unwrap()
        .name()
        .to_string();
    let a = e
        .children()
        .find(|c| c.ns() == NS_PUBSUB_ERRORS)
        .map(|c| c.name().to_string());
    (c, a)
}

/// Runs a request that must succeed; returns what it produced.
fn succeeds(p: &mut PubSub, xml: &str) -> Vec<Action> {
    let out = run(p, xml);
    assert_eq!(reply(&out).attr("type"), Some("result"), "{xml}: {out:?}");
    out
}

fn created(p: &mut PubSub) {
    let out = run(
        p,
        &iq("alice@a.test/x", "set", NS_PUBSUB, "<create node='news'/>"),
    );
    assert_eq!(reply(&out).attr("type"), Some("result"));
}

#[test]
fn create_subscribe_publish_notify_and_retrieve() {
    let mut p = ps();
    created(&mut p);
    let out = run(
        &mut p,
        &iq("alice@a.test/x", "set", NS_PUBSUB, "<create node='news'/>"),
    );
    assert_eq!(errors(&out).0, "conflict");
    for who in ["bob@b.test", "carol@a.test"] {
        let out = run(
            &mut p,
            &iq(
                &format!("{who}/r"),
                "set",
                NS_PUBSUB,
                &format!("<subscribe node='news' jid='{who}'/>"),
            ),
        );
        let sub = reply(&out)
            .get_child("pubsub", NS_PUBSUB)
            .unwrap()
            .get_child("subscription", NS_PUBSUB)
            .unwrap();
        assert_eq!(sub.attr("subscription"), Some("subscribed"));
    }
    let out = succeeds(
        &mut p,
        &iq(
            "alice@a.test/x",
            "set",
            NS_PUBSUB,
            "<publish node='news'><item id='1'><entry xmlns='urn:test'>hello</entry></item></publish>",
        ),
    );
    let Action::Broadcast { stanza, to } = &out[1] else {
        panic!("{out:?}")
    };
    assert_eq!(
        to,
        &vec!["bob@b.test".to_string(), "carol@a.test".to_string()]
    );
    let item = stanza
        .get_child("event", NS_PUBSUB_EVENT)
        .unwrap()
        .get_child("items", NS_PUBSUB_EVENT)
        .unwrap()
        .get_child("item", NS_PUBSUB_EVENT)
        .unwrap();
    assert_eq!(item.attr("id"), Some("1"));
    assert_eq!(item.get_child("entry", "urn:test").unwrap().text(), "hello");
    // Retrieval, and the bound on kept items (3): the oldest goes.
    for i in 2..=4 {
        run(
            &mut p,
            &iq(
                "alice@a.test/x",
                "set",
                NS_PUBSUB,
                &format!(
                    "<publish node='news'><item id='{i}'><e xmlns='urn:test'/></item></publish>"
                ),
            ),
        );
    }
    let out = run(
        &mut p,
        &iq("bob@b.test/r", "get", NS_PUBSUB, "<items node='news'/>"),
    );
    let ids: Vec<_> = reply(&out)
        .get_child("pubsub", NS_PUBSUB)
        .unwrap()
        .get_child("items", NS_PUBSUB)
        .unwrap()
        .children()
        .filter_map(|i| i.attr("id"))
        .map(str::to_string)
        .collect();
    assert_eq!(ids, vec!["2", "3", "4"]);
    // Meta, items and subscriptions are written; a new host reads them
    // back.
    let mut store = Store::new();
    keep(&mut store, p.take_writes());
    assert!(store.contains_key(&record_names(SVC, "news").0));
    assert!(store.contains_key(&record_names(SVC, "news").1));
    assert!(store.contains_key(&format!("{}#0.0", subscriptions_base(SVC, "news"))));
    let mut q = ps();
    load(&mut q, &store, "news").unwrap();
    assert_eq!(q.subscriptions(), 2);
    let out = run(
        &mut q,
        &iq(
            "bob@b.test/r",
            "get",
            NS_PUBSUB,
            "<items node='news' max_items='1'/>",
        ),
    );
    let items = reply(&out)
        .get_child("pubsub", NS_PUBSUB)
        .unwrap()
        .get_child("items", NS_PUBSUB)
        .unwrap();
    assert_eq!(items.children().count(), 1);
}

#[test]
fn permissions_and_the_xep_errors() {
    let mut p = ps();
    let out = run(
        &mut p,
        &iq(
            "bob@b.test/r",
            "set",
            NS_PUBSUB,
            "<publish node='none'><item><e xmlns='urn:t'/></item></publish>",
        ),
    );
    assert_eq!(errors(&out).0, "item-not-found");
    created(&mut p);
    let cases = [
        (
            iq(
                "bob@b.test/r",
                "set",
                NS_PUBSUB,
                "<publish node='news'><item><e xmlns='urn:t'/></item></publish>",
            ),
            "forbidden",
            None,
        ),
        (
            iq(
                "alice@a.test/x",
                "set",
                NS_PUBSUB,
                "<publish node='news'><item id='x'/></publish>",
            ),
            "bad-request",
            Some("payload-required"),
        ),
        (
            iq(
                "alice@a.test/x",
                "set",
                NS_PUBSUB,
                &format!(
                    "<publish node='news'><item><e xmlns='urn:t'>{}</e></item></publish>",
                    "x".repeat(300)
                ),
            ),
            "not-acceptable",
            Some("payload-too-big"),
        ),
        (
            iq(
                "bob@b.test/r",
                "set",
                NS_PUBSUB,
                "<subscribe node='news' jid='carol@a.test'/>",
            ),
            "bad-request",
            Some("invalid-jid"),
        ),
        (
            iq(
                "bob@b.test/r",
                "set",
                NS_PUBSUB,
                "<unsubscribe node='news' jid='bob@b.test'/>",
            ),
            "unexpected-request",
            Some("not-subscribed"),
        ),
        (
            iq(
                "bob@b.test/r",
                "get",
                NS_PUBSUB_OWNER,
                "<configure node='news'/>",
            ),
            "forbidden",
            None,
        ),
        (
            iq(
                "bob@b.test/r",
                "set",
                NS_PUBSUB_OWNER,
                "<delete node='news'/>",
            ),
            "forbidden",
            None,
        ),
        (
            iq(
                "alice@a.test/x",
                "set",
                NS_PUBSUB,
                "<retract node='news'><item id='nope'/></retract>",
            ),
            "item-not-found",
            None,
        ),
        (
            iq("alice@a.test/x", "set", NS_PUBSUB, "<bogus node='news'/>"),
            "bad-request",
            None,
        ),
        (
            iq("alice@a.test/x", "set", NS_PUBSUB, "<publish/>"),
            "bad-request",
            Some("nodeid-required"),
        ),
    ];
    for (xml, cond, app) in cases {
        let out = run(&mut p, &xml);
        assert_eq!(
            errors(&out),
            (cond.to_string(), app.map(str::to_string)),
            "{xml}"
        );
    }
    // Whitelisted nodes: only affiliated users subscribe; a publisher may publish.
    succeeds(
        &mut p,
        &iq(
            "alice@a.test/x",
            "set",
            NS_PUBSUB_OWNER,
            "<configure node='news'><x xmlns='jabber:x:data' type='submit'><field var='pubsub#access_model'><value>whitelist</value></field></x></configure>",
        ),
    );
    let out = run(
        &mut p,
        &iq(
            "bob@b.test/r",
            "set",
            NS_PUBSUB,
            "<subscribe node='news' jid='bob@b.test'/>",
        ),
    );
    assert_eq!(
        errors(&out),
        ("not-allowed".into(), Some("closed-node".into()))
    );
    run(
        &mut p,
        &iq(
            "alice@a.test/x",
            "set",
            NS_PUBSUB_OWNER,
            "<affiliations node='news'><affiliation jid='bob@b.test' affiliation='publisher'/></affiliations>",
        ),
    );
    succeeds(
        &mut p,
        &iq(
            "bob@b.test/r",
            "set",
            NS_PUBSUB,
            "<subscribe node='news' jid='bob@b.test'/>",
        ),
    );
    succeeds(
        &mut p,
        &iq(
            "bob@b.test/r",
            "set",
            NS_PUBSUB,
            "<publish node='news'><item><e xmlns='urn:t'/></item></publish>",
        ),
    );
    // The node cannot lose its last owner.
    let out = run(
        &mut p,
        &iq(
            "alice@a.test/x",
            "set",
            NS_PUBSUB_OWNER,
            "<affiliations node='news'><affiliation jid='alice@a.test' affiliation='none'/></affiliations>",
        ),
    );
    assert_eq!(errors(&out).0, "not-acceptable");
}

#[test]
fn delete_notifies_and_instant_nodes_are_rerouted() {
    let mut p = ps();
    created(&mut p);
    run(
        &mut p,
        &iq(
            "bob@b.test/r",
            "set",
            NS_PUBSUB,
            "<subscribe node='news' jid='bob@b.test'/>",
        ),
    );
    let out = run(
        &mut p,
        &iq(
            "alice@a.test/x",
            "set",
            NS_PUBSUB_OWNER,
            "<delete node='news'/>",
        ),
    );
    assert!(out.iter().any(|a| matches!(a, Action::Broadcast { stanza, .. } if stanza.get_child("event", NS_PUBSUB_EVENT).unwrap().get_child("delete", NS_PUBSUB_EVENT).is_some())));
    assert!(!p.is_loaded("pubsub:pubsub.ring.test/news"));
    assert!(
        p.take_writes().iter().all(|w| w.value.is_none()),
        "every record deleted"
    );
    let out = run(&mut p, &iq("alice@a.test/x", "set", NS_PUBSUB, "<create/>"));
    let Action::Reroute(st) = &out[0] else {
        panic!("{out:?}")
    };
    let name = target_node(st).expect("a chosen name");
    assert_eq!(name.len(), 16);
}

#[test]
fn subscriptions_outgrow_one_record_and_each_writes_one_shard() {
    let mut p = ps();
    created(&mut p);
    let mut store = Store::new();
    keep(&mut store, p.take_writes());
    let subscribe = |p: &mut PubSub, i: usize| {
        run(
            p,
            &iq(
                &format!("u{i}@b.test/r"),
                "set",
                NS_PUBSUB,
                &format!("<subscribe node='news' jid='u{i}@b.test'/>"),
            ),
        )
    };
    for i in 0..500 {
        let out = subscribe(&mut p, i);
        assert_eq!(reply(&out).attr("type"), Some("result"), "{i}: {out:?}");
        let w = p.take_writes();
        for x in &w {
            let len = x.value.as_ref().map_or(0, Vec::len);
            assert!(len <= 2000, "{}: {len} bytes", x.name);
        }
        keep(&mut store, w);
    }
    // 500 subscriptions are far more than one 2,000-byte record holds.
    let mut q = ps();
    load(&mut q, &store, "news").unwrap();
    assert_eq!(q.subscriptions(), 500);
    // One more writes one shard, and neither the meta nor the items.
    subscribe(&mut p, 500);
    let w = p.take_writes();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].name.starts_with(&subscriptions_base(SVC, "news")));
    // Notifications reach everyone.
    let out = run(
        &mut p,
        &iq(
            "alice@a.test/x",
            "set",
            NS_PUBSUB,
            "<publish node='news'><item id='x'><entry xmlns='urn:x'/></item></publish>",
        ),
    );
    let to = out
        .iter()
        .find_map(|a| match a {
            Action::Broadcast { to, .. } => Some(to.len()),
            _ => None,
        })
        .unwrap();
    assert_eq!(to, 501);
}

#[test]
fn an_old_record_with_its_subscriptions_inside_is_moved_to_shards() {
    let meta = serde_json::json!({
        "config": node::NodeConfig::new(3),
        "affiliations": {"alice@a.test": "Owner"},
        "subscriptions": {"bob@b.test": "0001", "carol@c.test": "0002"},
    });
    let mut store = Store::new();
    store.insert(
        record_names(SVC, "news").0,
        Some(serde_json::to_vec(&meta).unwrap()),
    );
    let mut p = ps();
    load(&mut p, &store, "news").unwrap();
    assert_eq!(p.subscriptions(), 2);
    keep(&mut store, p.take_writes());
    let stored: NodeMeta =
        serde_json::from_slice(store[&record_names(SVC, "news").0].as_ref().unwrap()).unwrap();
    assert!(stored.legacy_subscriptions.is_empty());
    assert!(stored.subscription_shards.is_some());
    let mut q = ps();
    load(&mut q, &store, "news").unwrap();
    assert_eq!(
        q.subscriptions_of(&record_names(SVC, "news").0)
            .unwrap()
            .get("bob@b.test")
            .map(String::as_str),
        Some("0001")
    );
}

#[test]
fn creating_nodes_is_bounded_per_owner_and_per_service() {
    let q = crate::directory::Quotas {
        per_owner: 1,
        total: 2,
    };
    let mut registry = crate::directory::Directories::new(65536, q, q);
    let mut p = ps();
    let create =
        |node: &str, who: &str| iq(who, "set", NS_PUBSUB, &format!("<create node='{node}'/>"));
    let out = run_with(&mut p, &mut registry, &create("one", "alice@a.test/x"));
    assert_eq!(reply(&out).attr("type"), Some("result"), "{out:?}");
    let out = run_with(&mut p, &mut registry, &create("two", "alice@a.test/x"));
    assert_eq!(errors(&out).0, "policy-violation");
    assert!(!p.is_loaded(&record_names(SVC, "two").0));
    let out = run_with(&mut p, &mut registry, &create("two", "bob@b.test/y"));
    assert_eq!(reply(&out).attr("type"), Some("result"));
    let out = run_with(&mut p, &mut registry, &create("three", "carol@c.test/z"));
    assert_eq!(errors(&out).0, "policy-violation", "the service is full");
    // Deleting a node releases it.
    let out = run_with(
        &mut p,
        &mut registry,
        &iq(
            "alice@a.test/x",
            "set",
            NS_PUBSUB_OWNER,
            "<delete node='one'/>",
        ),
    );
    assert_eq!(reply(&out).attr("type"), Some("result"));
    let out = run_with(&mut p, &mut registry, &create("three", "carol@c.test/z"));
    assert_eq!(reply(&out).attr("type"), Some("result"), "{out:?}");
}

#[test]
fn an_owner_change_that_would_not_fit_the_record_is_undone_and_refused() {
    let mut p = ps();
    created(&mut p);
    p.take_writes();
    let mut refused = false;
    for i in 0..200 {
        let out = run(
            &mut p,
            &iq(
                "alice@a.test/x",
                "set",
                NS_PUBSUB_OWNER,
                &format!(
                    "<affiliations node='news'><affiliation jid='member{i}@x.test' affiliation='publisher'/></affiliations>"
                ),
            ),
        );
        if reply(&out).attr("type") == Some("error") {
            assert_eq!(errors(&out).0, "resource-constraint");
            refused = true;
            break;
        }
    }
    assert!(refused, "the record limit was reached");
    for w in p.take_writes() {
        if let Some(v) = w.value {
            assert!(v.len() <= 2000, "{}: {} bytes", w.name, v.len());
        }
    }
}
