//! Two rosters (alice's and bob's) passing the subscription presences
//! between them as their home nodes would, then the roster IQs a client
//! may get wrong.

use super::*;

fn el(xml: &str) -> Element {
    xml.parse().expect("xml")
}

fn jid(s: &str) -> BareJid {
    BareJid::new(s).expect("jid")
}

fn sub(ty: &str, from: &str, to: &str) -> Element {
    el(&format!(
        "<presence xmlns='jabber:client' type='{ty}' from='{from}' to='{to}'/>"
    ))
}

fn subscription_of(r: &Roster, contact: &str) -> (&'static str, bool) {
    let i = r.items.iter().find(|i| i.jid == contact).expect("item");
    (i.subscription(), i.ask)
}

/// Carries the stanzas `fx` sends into the other roster's `inbound`.
fn relay(fx: &Effects, to_user: &BareJid, to: &mut Roster) -> Vec<Effects> {
    fx.send.iter().map(|st| to.inbound(to_user, st)).collect()
}

#[test]
fn the_subscription_handshake_both_ways_then_removal() {
    let (alice, bob) = (jid("alice@ring.test"), jid("bob@b.test"));
    let (mut a, mut b) = (Roster::default(), Roster::default());

    // alice adds bob with a name and asks for his presence.
    let set = el(
        "<iq xmlns='jabber:client' type='set' id='s1'><query xmlns='jabber:iq:roster'><item jid='bob@b.test' name='Bob'><group>Friends</group></item></query></iq>",
    );
    let fx = a.handle_iq(&alice, &set);
    assert_eq!(
        fx.reply.as_ref().and_then(|r| r.attr("type")),
        Some("result")
    );
    assert_eq!(fx.pushes.len(), 1);
    assert!(fx.changed);
    let fx = a.outbound(
        &alice,
        &sub("subscribe", "alice@ring.test/pc", "bob@b.test"),
    );
    assert_eq!(subscription_of(&a, "bob@b.test"), ("none", true));
    assert_eq!(fx.pushes.len(), 1);
    assert_eq!(fx.send[0].attr("from"), Some("alice@ring.test"));

    // bob's server keeps the request and shows it to bob.
    let got = relay(&fx, &bob, &mut b);
    assert!(got[0].deliver && got[0].changed);
    assert_eq!(b.pending_in, vec!["alice@ring.test".to_string()]);
    assert_eq!(b.pending_requests(&bob).len(), 1);

    // bob approves: alice gets 'to', bob 'from'.
    let fx = b.outbound(
        &bob,
        &sub("subscribed", "bob@b.test/phone", "alice@ring.test"),
    );
    assert_eq!(subscription_of(&b, "alice@ring.test"), ("from", false));
    assert!(b.pending_in.is_empty());
    let got = relay(&fx, &alice, &mut a);
    assert!(got[0].deliver);
    assert_eq!(subscription_of(&a, "bob@b.test"), ("to", false));

    // And the other way round: both.
    let fx = b.outbound(
        &bob,
        &sub("subscribe", "bob@b.test/phone", "alice@ring.test"),
    );
    relay(&fx, &alice, &mut a);
    let fx = a.outbound(
        &alice,
        &sub("subscribed", "alice@ring.test/pc", "bob@b.test"),
    );
    relay(&fx, &bob, &mut b);
    assert_eq!(subscription_of(&a, "bob@b.test"), ("both", false));
    assert_eq!(subscription_of(&b, "alice@ring.test"), ("both", false));
    assert_eq!(a.presence_subscribers(), vec!["bob@b.test".to_string()]);
    assert_eq!(a.presence_sources(), vec!["bob@b.test".to_string()]);

    // A second request from someone already approved is answered for the
    // user, not shown again.
    let fx = a.inbound(&alice, &sub("subscribe", "bob@b.test", "alice@ring.test"));
    assert!(!fx.deliver);
    assert_eq!(fx.send[0].attr("type"), Some("subscribed"));

    // The roster as the client sees it.
    let get =
        el("<iq xmlns='jabber:client' type='get' id='g1'><query xmlns='jabber:iq:roster'/></iq>");
    let reply = a.handle_iq(&alice, &get).reply.expect("reply");
    let item = reply
        .get_child("query", NS_ROSTER)
        .and_then(|q| q.get_child("item", NS_ROSTER))
        .expect("item");
    assert_eq!(item.attr("subscription"), Some("both"));
    assert_eq!(item.attr("name"), Some("Bob"));
    assert_eq!(
        item.get_child("group", NS_ROSTER)
            .map(|g| g.text())
            .as_deref(),
        Some("Friends")
    );

    // alice removes bob: both directions end on both sides.
    let remove = el(
        "<iq xmlns='jabber:client' type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='bob@b.test' subscription='remove'/></query></iq>",
    );
    let fx = a.handle_iq(&alice, &remove);
    let types: Vec<_> = fx.send.iter().filter_map(|s| s.attr("type")).collect();
    assert_eq!(types, ["unsubscribe", "unsubscribed"]);
    assert!(a.items.is_empty());
    relay(&fx, &bob, &mut b);
    assert_eq!(subscription_of(&b, "alice@ring.test"), ("none", false));
}

#[test]
fn denials_and_cancellations() {
    let (alice, bob) = (jid("alice@ring.test"), jid("bob@ring.test"));
    let (mut a, mut b) = (Roster::default(), Roster::default());
    let fx = a.outbound(
        &alice,
        &sub("subscribe", "alice@ring.test/pc", "bob@ring.test"),
    );
    relay(&fx, &bob, &mut b);
    // bob says no.
    let fx = b.outbound(
        &bob,
        &sub("unsubscribed", "bob@ring.test/x", "alice@ring.test"),
    );
    assert!(b.pending_in.is_empty());
    relay(&fx, &alice, &mut a);
    assert_eq!(subscription_of(&a, "bob@ring.test"), ("none", false));
    // An approval nobody asked for is a pre-approval: kept, not sent;
    // carol's request is then answered at once, for bob.
    let fx = b.outbound(
        &bob,
        &sub("subscribed", "bob@ring.test/x", "carol@ring.test"),
    );
    assert!(fx.send.is_empty() && fx.changed);
    assert!(
        b.items
            .iter()
            .any(|i| i.jid == "carol@ring.test" && i.approved && !i.from)
    );
    let fx = b.inbound(&bob, &sub("subscribe", "carol@ring.test", "bob@ring.test"));
    assert!(!fx.deliver);
    assert_eq!(fx.send[0].attr("type"), Some("subscribed"));
    assert_eq!(subscription_of(&b, "carol@ring.test"), ("from", false));
    assert!(b.pending_in.is_empty());
    // A 'subscribed' nobody asked for changes nothing.
    let fx = a.inbound(
        &alice,
        &sub("subscribed", "mallory@evil.test", "alice@ring.test"),
    );
    assert!(!fx.deliver && !fx.changed && a.items.len() == 1);
    // Subscribing to oneself is ignored.
    let fx = a.outbound(
        &alice,
        &sub("subscribe", "alice@ring.test/pc", "alice@ring.test"),
    );
    assert_eq!(fx, Effects::default());
}

#[test]
fn roster_sets_a_client_may_get_wrong() {
    let alice = jid("alice@ring.test");
    let long = "n".repeat(MAX_NAME_BYTES + 1);
    let groups: String = (0..=MAX_GROUPS)
        .map(|i| format!("<group>g{i}</group>"))
        .collect();
    let q = |items: &str| {
        format!(
            "<iq xmlns='jabber:client' type='set' id='x'><query xmlns='jabber:iq:roster'>{items}</query></iq>"
        )
    };
    let table: &[(String, &str)] = &[
        (q(""), "bad-request"),
        (
            q("<item jid='a@b.test'/><item jid='c@d.test'/>"),
            "bad-request",
        ),
        (q("<item jid='not a jid@@'/>"), "bad-request"),
        (q("<item jid='a@b.test/res'/>"), "bad-request"),
        (q("<item jid='alice@ring.test'/>"), "not-allowed"),
        (
            q(&format!("<item jid='a@b.test' name='{long}'/>")),
            "not-acceptable",
        ),
        (
            q(&format!("<item jid='a@b.test'>{groups}</item>")),
            "not-acceptable",
        ),
        (q("<item jid='a@b.test'><group/></item>"), "not-acceptable"),
        (
            q("<item jid='gone@b.test' subscription='remove'/>"),
            "item-not-found",
        ),
        (
            "<iq xmlns='jabber:client' type='set' id='x'><other xmlns='urn:x'/></iq>".into(),
            "bad-request",
        ),
    ];
    for (xml, cond) in table {
        let mut r = Roster::default();
        let fx = r.handle_iq(&alice, &el(xml));
        let reply = fx.reply.expect("a reply");
        assert_eq!(reply.attr("type"), Some("error"), "{xml}");
        let s = ring_services::stanza::to_string(&reply);
        assert!(s.contains(&format!("<{cond}")), "{xml}: {s}");
        assert!(!fx.changed && r.items.is_empty(), "{xml}");
    }
    // The roster is bounded.
    let mut r = Roster::default();
    for i in 0..MAX_ITEMS {
        let fx = r.handle_iq(&alice, &el(&q(&format!("<item jid='c{i}@b.test'/>"))));
        assert!(fx.changed);
    }
    let fx = r.handle_iq(&alice, &el(&q("<item jid='one-more@b.test'/>")));
    assert!(
        ring_services::stanza::to_string(&fx.reply.expect("reply")).contains("resource-constraint")
    );
    assert_eq!(Roster::decode(Some(&r.encode())), r);
}

#[test]
fn versions_count_changes_and_an_unchanged_roster_is_not_sent_again() {
    let alice = jid("alice@ring.test");
    let mut r = Roster::default();
    let get = |ver: &str| {
        el(&format!(
            "<iq xmlns='jabber:client' type='get' id='g'><query xmlns='jabber:iq:roster' ver='{ver}'/></iq>"
        ))
    };
    let set = el(
        "<iq xmlns='jabber:client' type='set' id='s'><query xmlns='jabber:iq:roster'><item jid='bob@b.test'/></query></iq>",
    );
    let fx = r.handle_iq(&alice, &set);
    assert_eq!(r.version, 1);
    let push_ver = fx.pushes[0]
        .get_child("query", NS_ROSTER)
        .and_then(|q| q.attr("ver"))
        .map(str::to_string);
    assert_eq!(push_ver.as_deref(), Some("1"));
    // The client has version 1: nothing to send.
    let reply = r.handle_iq(&alice, &get("1")).reply.expect("reply");
    assert_eq!(reply.attr("type"), Some("result"));
    assert!(reply.get_child("query", NS_ROSTER).is_none());
    // An older version: the whole roster, with its version.
    let reply = r.handle_iq(&alice, &get("0")).reply.expect("reply");
    let q = reply.get_child("query", NS_ROSTER).expect("query");
    assert_eq!(q.attr("ver"), Some("1"));
    assert_eq!(q.children().count(), 1);
    // A get changes nothing.
    assert_eq!(r.version, 1);
    r.outbound(
        &alice,
        &sub("subscribe", "alice@ring.test/pc", "bob@b.test"),
    );
    assert_eq!(r.version, 2);
}
