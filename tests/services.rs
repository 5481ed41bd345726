//! The ring's MUC and PubSub services used by real users of two real
//! Prosody servers (alice, carol and eve on a.test, bob on b.test), through
//! a real edge: rooms and nodes, their rules and errors, and the kill -9 of
//! the node hosting them.
//!
//! Addresses: Prosody a.test on 127.0.0.2, b.test on 127.0.0.3, the edge on
//! 127.0.0.4; s2s by STARTTLS + dialback (each server's certificate from its
//! own CA).

mod support;

use node::api::StatusReport;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use support::client::XmppClient;
use support::dns::DnsServer;
use support::prosody::{Prosody, ProsodyOptions};
use support::{T, prosody_with_own_ca, require_prosody, ring_with_edge};
use xmpp_parsers::minidom::Element;
use xmpp_ring::client::get_json;
use xmpp_ring::cluster::Cluster;

const A_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const EDGE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const W: Duration = Duration::from_secs(20);
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";

struct World {
    a: Prosody,
    b: Prosody,
    ring: Cluster,
    /// Index of the edge in `ring`.
    edge: usize,
    _dns: DnsServer,
    _dir: tempfile::TempDir,
}

/// Two Prosody servers and a ring of four application nodes and one edge
/// serving ring.test (and conference./pubsub.ring.test).
fn world() -> World {
    require_prosody();
    let dir = tempfile::tempdir().expect("tmp");
    let dns = DnsServer::start();
    let start = |domain: &str, ip: Ipv4Addr, users: &[(&str, &str)]| {
        prosody_with_own_ca(
            dir.path(),
            &dns,
            domain,
            ip,
            users,
            ProsodyOptions::default(),
        )
    };
    let a = start(
        "a.test",
        A_IP,
        &[("alice", "pw"), ("carol", "pw"), ("eve", "pw")],
    );
    let b = start("b.test", B_IP, &[("bob", "pw")]);
    let ring = ring_with_edge(
        dir.path(),
        &dns,
        4,
        EDGE_IP,
        &["ring.test", "conference.ring.test", "pubsub.ring.test"],
    );
    World {
        a,
        b,
        ring,
        edge: 4,
        _dns: dns,
        _dir: dir,
    }
}

fn el(s: &str) -> Element {
    s.parse().expect("test XML")
}

fn status(c: &Cluster, i: usize) -> StatusReport {
    get_json(c.admin(i), "/status", T).expect("status")
}

/// The stanza error condition of `e`, if it is an error.
fn condition(e: &Element) -> Option<String> {
    (e.attr("type") == Some("error")).then(|| {
        e.get_child("error", "jabber:client")
            .and_then(|x| x.children().find(|c| c.ns() == NS_STANZAS))
            .map(|c| c.name().to_string())
            .unwrap_or_default()
    })
}

fn statuses(p: &Element) -> Vec<String> {
    p.get_child("x", NS_MUC_USER)
        .map(|x| {
            x.children()
                .filter_map(|c| c.attr("code").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The ring node hosting `what` (a room JID or `service/node`), if any.
fn host_of(w: &World, what: &str) -> Option<usize> {
    (0..w.ring.nodes.len())
        .filter(|i| w.ring.is_running(*i))
        .find(|i| {
            let s = status(&w.ring, *i).services;
            s.rooms
                .iter()
                .chain(s.pubsub_nodes.iter())
                .any(|r| r == what)
        })
}

fn logs(w: &World) -> String {
    let mut s = String::new();
    for (i, n) in w.ring.nodes.iter().enumerate() {
        let log = std::fs::read_to_string(n.dir.join("node.log")).unwrap_or_default();
        let tail: String = log.lines().rev().take(40).collect::<Vec<_>>().join("\n");
        s.push_str(&format!(
            "--- node {i} (last lines, newest first):\n{tail}\n"
        ));
    }
    s
}

async fn join(c: &mut XmppClient, room_nick: &str, extra: &str) -> Element {
    c.send(el(&format!(
        "<presence xmlns='jabber:client' to='{room_nick}'><x xmlns='http://jabber.org/protocol/muc'>{extra}</x></presence>"
    )))
    .await;
    let from = room_nick.to_string();
    c.recv(W, |e| {
        e.name() == "presence"
            && e.attr("from") == Some(from.as_str())
            && (statuses(e).contains(&"110".to_string()) || e.attr("type") == Some("error"))
    })
    .await
    .unwrap_or_else(|| panic!("no self-presence or error for {room_nick}"))
}

/// Sends an IQ and waits for its answer.
async fn iq(c: &mut XmppClient, xml: &str) -> Element {
    let st = el(xml);
    let id = st.attr("id").expect("id").to_string();
    c.send(st).await;
    c.recv(W, |e| e.name() == "iq" && e.attr("id") == Some(id.as_str()))
        .await
        .unwrap_or_else(|| panic!("no answer to {xml}"))
}

async fn configure(c: &mut XmppClient, room: &str, fields: &[(&str, &str)]) -> Element {
    let f: String = fields
        .iter()
        .map(|(k, v)| format!("<field var='{k}'><value>{v}</value></field>"))
        .collect();
    iq(c, &format!(
        "<iq xmlns='jabber:client' type='set' id='cfg-{room}' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>{f}</x></query></iq>"
    ))
    .await
}

/// The items of a disco#items query to `to`, as (jid, node, name),
/// once `want` holds for them (or whatever came last after 10 s).
async fn disco_items_until(
    c: &mut XmppClient,
    to: &str,
    want: impl Fn(&[(String, Option<String>, Option<String>)]) -> bool,
) -> Vec<(String, Option<String>, Option<String>)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        let r = iq(c, &format!(
            "<iq xmlns='jabber:client' type='get' id='items{n}' to='{to}'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
        ))
        .await;
        let items: Vec<_> = r
            .get_child("query", "http://jabber.org/protocol/disco#items")
            .map(|q| {
                q.children()
                    .map(|i| {
                        (
                            i.attr("jid").unwrap_or_default().to_string(),
                            i.attr("node").map(str::to_string),
                            i.attr("name").map(str::to_string),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if want(&items) || Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn groupchat_arrives(c: &mut XmppClient, from: &str, body: &str) {
    let (from, body) = (from.to_string(), body.to_string());
    let got = c
        .recv(W, |e| {
            e.name() == "message"
                && e.attr("from") == Some(from.as_str())
                && e.get_child("body", "jabber:client").map(|b| b.text()) == Some(body.clone())
        })
        .await;
    assert!(got.is_some(), "{} did not get '{body}' from {from}", c.jid);
}

/// Creates a room owned by `owner`, choosing a name whose host is not the
/// edge (killing the edge would cut the users off from the ring).
async fn room_not_on_the_edge(w: &World, owner: &mut XmppClient, base: &str) -> (String, usize) {
    for i in 0..20 {
        let room = format!("{base}{i}@conference.ring.test");
        let p = join(
            owner,
            &format!("{room}/{}", owner.jid.split('@').next().unwrap()),
            "",
        )
        .await;
        assert!(
            statuses(&p).contains(&"201".to_string()),
            "{room} created: {p:?}"
        );
        let host = host_of(w, &room).expect("the room has a host");
        if host != w.edge {
            return (room, host);
        }
        // Cancel the first configuration: the locked room goes away.
        let r = iq(owner, &format!(
            "<iq xmlns='jabber:client' type='set' id='cancel{i}' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='cancel'/></query></iq>"
        ))
        .await;
        assert_eq!(r.attr("type"), Some("result"));
    }
    panic!("every room landed on the edge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muc_across_two_prosody_servers_and_the_kill_of_its_host() {
    let mut w = world();
    let mut alice = XmppClient::connect("alice@a.test", "pw", &w.a.c2s()).await;
    let mut bob = XmppClient::connect("bob@b.test", "pw", &w.b.c2s()).await;
    let mut carol = XmppClient::connect("carol@a.test", "pw", &w.a.c2s()).await;
    let mut eve = XmppClient::connect("eve@a.test", "pw", &w.a.c2s()).await;

    let (room, host) = room_not_on_the_edge(&w, &mut alice, "room").await;
    let r = configure(
        &mut alice,
        &room,
        &[("muc#roomconfig_roomname", "The ring room")],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    // The service's directory lists it (rooms left locked are not).
    let listed = disco_items_until(&mut bob, "conference.ring.test", |items| {
        items.iter().any(|i| i.0 == room)
    })
    .await;
    let entry = listed.iter().find(|i| i.0 == room);
    assert_eq!(
        entry.and_then(|i| i.2.as_deref()),
        Some("The ring room"),
        "{listed:?}"
    );

    // bob joins from b.test: each sees the other.
    let p = join(&mut bob, &format!("{room}/bob"), "").await;
    assert_eq!(condition(&p), None, "{p:?}");
    let seen = alice
        .recv(W, |e| {
            e.attr("from") == Some(format!("{room}/bob").as_str())
        })
        .await;
    assert!(seen.is_some(), "alice sees bob arrive");

    // Groupchat, private message, subject.
    alice
        .send(el(&format!(
            "<message xmlns='jabber:client' type='groupchat' to='{room}'><body>hello room</body></message>"
        )))
        .await;
    groupchat_arrives(&mut bob, &format!("{room}/alice"), "hello room").await;
    groupchat_arrives(&mut alice, &format!("{room}/alice"), "hello room").await;
    bob.send(el(&format!(
        "<message xmlns='jabber:client' type='chat' to='{room}/alice'><body>psst</body></message>"
    )))
    .await;
    groupchat_arrives(&mut alice, &format!("{room}/bob"), "psst").await;
    alice
        .send(el(&format!(
            "<message xmlns='jabber:client' type='groupchat' to='{room}'><subject>Ring talk</subject></message>"
        )))
        .await;
    let s = bob
        .recv(W, |e| e.get_child("subject", "jabber:client").is_some())
        .await
        .expect("subject change");
    assert_eq!(
        s.get_child("subject", "jabber:client").unwrap().text(),
        "Ring talk"
    );

    // eve is banned and refused; a bad admin request gets bad-request.
    let r = iq(&mut alice, &format!(
        "<iq xmlns='jabber:client' type='set' id='ban' to='{room}'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='eve@a.test' affiliation='outcast'/></query></iq>"
    ))
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let p = join(&mut eve, &format!("{room}/eve"), "").await;
    assert_eq!(condition(&p).as_deref(), Some("forbidden"), "{p:?}");
    let r = iq(&mut alice, &format!(
        "<iq xmlns='jabber:client' type='set' id='bad' to='{room}'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='bob' role='emperor'/></query></iq>"
    ))
    .await;
    assert_eq!(condition(&r).as_deref(), Some("bad-request"), "{r:?}");

    // A members-only room refuses carol, who is no member.
    let (closed, _) = room_not_on_the_edge(&w, &mut alice, "closed").await;
    configure(&mut alice, &closed, &[("muc#roomconfig_membersonly", "1")]).await;
    let p = join(&mut carol, &format!("{closed}/carol"), "").await;
    assert_eq!(
        condition(&p).as_deref(),
        Some("registration-required"),
        "{p:?}"
    );

    // kill -9 the room's host: within 10 s another node serves the room,
    // tells the occupants (332), and they can rejoin and talk.
    w.ring.signal(host, nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    for c in [&mut alice, &mut bob] {
        let gone = c
            .recv(Duration::from_secs(15), |e| {
                e.name() == "presence" && statuses(e).contains(&"332".to_string())
            })
            .await;
        assert!(
            gone.is_some(),
            "{} was not told the room went away\n{}",
            c.jid,
            logs(&w)
        );
    }
    let told = killed.elapsed();
    assert!(told < Duration::from_secs(10), "told after {told:?}");
    let new_host = host_of(&w, &room).expect("a new host");
    assert_ne!(new_host, host);
    let p = join(&mut alice, &format!("{room}/alice"), "").await;
    let item = p
        .get_child("x", NS_MUC_USER)
        .and_then(|x| x.get_child("item", NS_MUC_USER))
        .expect("item");
    assert_eq!(item.attr("affiliation"), Some("owner"), "{p:?}");
    let subject = alice
        .recv(W, |e| e.get_child("subject", "jabber:client").is_some())
        .await
        .expect("subject on rejoin");
    assert_eq!(
        subject
            .get_child("subject", "jabber:client")
            .unwrap()
            .text(),
        "Ring talk"
    );
    let info = iq(&mut bob, &format!(
        "<iq xmlns='jabber:client' type='get' id='info' to='{room}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    ))
    .await;
    let identity = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .and_then(|q| q.get_child("identity", "http://jabber.org/protocol/disco#info"))
        .expect("identity");
    assert_eq!(identity.attr("name"), Some("The ring room"));
    let p = join(&mut eve, &format!("{room}/eve"), "").await;
    assert_eq!(condition(&p).as_deref(), Some("forbidden"), "still banned");
    let p = join(&mut bob, &format!("{room}/bob"), "").await;
    assert_eq!(condition(&p), None);
    bob.send(el(&format!(
        "<message xmlns='jabber:client' type='groupchat' to='{room}'><body>back again</body></message>"
    )))
    .await;
    groupchat_arrives(&mut alice, &format!("{room}/bob"), "back again").await;

    // The takeover is counted, and the services' figures are exported.
    let takeovers: u64 = (0..w.ring.nodes.len())
        .filter(|i| *i != host)
        .map(|i| status(&w.ring, i).services.takeovers)
        .sum();
    assert!(takeovers >= 1, "a takeover is counted");
    let m = xmpp_ring::client::get_text(w.ring.admin(new_host), "/metrics", T).expect("metrics");
    for name in [
        "xmpp_ring_muc_rooms",
        "xmpp_ring_muc_occupants",
        "xmpp_ring_service_takeovers_total",
    ] {
        assert!(m.contains(name), "{name} missing:\n{m}");
    }

    // Nothing crashed: every node but the killed one still answers.
    for i in (0..w.ring.nodes.len()).filter(|i| *i != host) {
        assert!(w.ring.is_running(i), "node {i} died");
        let _ = status(&w.ring, i);
    }
    for c in [alice, bob, carol, eve] {
        c.disconnect().await;
    }
}

async fn publish(c: &mut XmppClient, node: &str, id: &str, body: &str) -> Element {
    iq(c, &format!(
        "<iq xmlns='jabber:client' type='set' id='pub-{id}' to='pubsub.ring.test'><pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'><item id='{id}'><entry xmlns='urn:test'>{body}</entry></item></publish></pubsub></iq>"
    ))
    .await
}

async fn notified(c: &mut XmppClient, node: &str, id: &str) -> bool {
    let (node, id) = (node.to_string(), id.to_string());
    c.recv(W, |e| {
        e.get_child("event", NS_EVENT)
            .and_then(|ev| ev.get_child("items", NS_EVENT))
            .filter(|items| items.attr("node") == Some(node.as_str()))
            .and_then(|items| items.get_child("item", NS_EVENT))
            .is_some_and(|i| i.attr("id") == Some(id.as_str()))
    })
    .await
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_across_two_prosody_servers_and_the_kill_of_its_host() {
    let mut w = world();
    let mut alice = XmppClient::connect("alice@a.test", "pw", &w.a.c2s()).await;
    let mut bob = XmppClient::connect("bob@b.test", "pw", &w.b.c2s()).await;
    let mut carol = XmppClient::connect("carol@a.test", "pw", &w.a.c2s()).await;

    // A node whose host is not the edge.
    let mut chosen = None;
    for i in 0..20 {
        let node = format!("news{i}");
        let r = iq(&mut alice, &format!(
            "<iq xmlns='jabber:client' type='set' id='create{i}' to='pubsub.ring.test'><pubsub xmlns='{NS_PUBSUB}'><create node='{node}'/></pubsub></iq>"
        ))
        .await;
        assert_eq!(r.attr("type"), Some("result"), "{r:?}");
        let host = host_of(&w, &format!("pubsub.ring.test/{node}")).expect("host");
        if host != w.edge {
            chosen = Some((node, host));
            break;
        }
    }
    let (node, host) = chosen.expect("a node off the edge");
    let listed = disco_items_until(&mut bob, "pubsub.ring.test", |items| {
        items.iter().any(|i| i.1.as_deref() == Some(node.as_str()))
    })
    .await;
    assert!(
        listed.iter().any(|i| i.1.as_deref() == Some(node.as_str())),
        "{listed:?}"
    );
    let r = iq(&mut alice, &format!(
        "<iq xmlns='jabber:client' type='set' id='again' to='pubsub.ring.test'><pubsub xmlns='{NS_PUBSUB}'><create node='{node}'/></pubsub></iq>"
    ))
    .await;
    assert_eq!(condition(&r).as_deref(), Some("conflict"));

    for c in [&mut bob, &mut carol] {
        let jid = c.jid.clone();
        let r = iq(c, &format!(
            "<iq xmlns='jabber:client' type='set' id='sub' to='pubsub.ring.test'><pubsub xmlns='{NS_PUBSUB}'><subscribe node='{node}' jid='{jid}'/></pubsub></iq>"
        ))
        .await;
        assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    }
    // bob may not publish; alice (owner) may, and both servers' subscribers
    // are notified.
    let r = publish(&mut bob, &node, "x", "nope").await;
    assert_eq!(condition(&r).as_deref(), Some("forbidden"));
    let r = publish(&mut alice, &node, "first", "hello subscribers").await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    assert!(notified(&mut bob, &node, "first").await, "bob notified");
    assert!(notified(&mut carol, &node, "first").await, "carol notified");

    // Bad input: an oversize item, a subscription for someone else.
    let big = "x".repeat(20_000);
    let r = publish(&mut alice, &node, "big", &big).await;
    assert_eq!(condition(&r).as_deref(), Some("not-acceptable"), "{r:?}");
    assert!(
        r.get_child("error", "jabber:client")
            .and_then(|e| e.get_child("payload-too-big", NS_ERRORS))
            .is_some()
    );
    let r = iq(&mut bob, &format!(
        "<iq xmlns='jabber:client' type='set' id='sub2' to='pubsub.ring.test'><pubsub xmlns='{NS_PUBSUB}'><subscribe node='{node}' jid='carol@a.test'/></pubsub></iq>"
    ))
    .await;
    assert_eq!(condition(&r).as_deref(), Some("bad-request"));

    // kill -9 the host: the items are retrieved from the next node, and
    // the subscriptions still hold.
    w.ring.signal(host, nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempt = 0;
    let items = loop {
        attempt += 1;
        let st = el(&format!(
            "<iq xmlns='jabber:client' type='get' id='items{attempt}' to='pubsub.ring.test'><pubsub xmlns='{NS_PUBSUB}'><items node='{node}'/></pubsub></iq>"
        ));
        bob.send(st).await;
        let id = format!("items{attempt}");
        let r = bob
            .recv(Duration::from_secs(3), |e| {
                e.attr("id") == Some(id.as_str())
            })
            .await;
        if let Some(r) = r.filter(|r| r.attr("type") == Some("result")) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no items within 10 s\n{}",
            logs(&w)
        );
    };
    let item = items
        .get_child("pubsub", NS_PUBSUB)
        .and_then(|p| p.get_child("items", NS_PUBSUB))
        .and_then(|i| i.get_child("item", NS_PUBSUB))
        .expect("the item");
    assert_eq!(item.attr("id"), Some("first"));
    assert_eq!(
        item.get_child("entry", "urn:test").map(|e| e.text()),
        Some("hello subscribers".into())
    );
    let new_host = host_of(&w, &format!("pubsub.ring.test/{node}")).expect("new host");
    assert_ne!(new_host, host);
    let r = publish(&mut alice, &node, "second", "after the kill").await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    assert!(notified(&mut bob, &node, "second").await);
    assert!(notified(&mut carol, &node, "second").await);
    for c in [alice, bob, carol] {
        c.disconnect().await;
    }
}

/// A node whose record store is full must not answer a change with
/// success: the change is refused with `resource-constraint`, and every
/// publication that was answered with success can be read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_be_stored_is_answered_with_an_error() {
    require_prosody();
    let dir = tempfile::tempdir().expect("tmp");
    let dns = DnsServer::start();
    let a = prosody_with_own_ca(
        dir.path(),
        &dns,
        "a.test",
        A_IP,
        &[("alice", "pw")],
        ProsodyOptions::default(),
    );
    let port = support::prosody::free_port(EDGE_IP);
    dns.add_a("edge1.ring.test", EDGE_IP);
    for n in ["ring.test", "conference.ring.test", "pubsub.ring.test"] {
        dns.add_s2s_srv(n, "edge1.ring.test", port);
    }
    // Small stores: 3 nodes, every record on each of them.
    let _ring = support::ring_opts(
        dir.path(),
        &["ring.test"],
        2,
        &[support::EdgeArgs {
            ip: EDGE_IP,
            port,
            extra: vec![],
        }],
        dns.addr,
        &[
            "--record-max-bytes",
            "8192",
            "--record-store-max-bytes",
            "24000",
            "--pubsub-max-item-bytes",
            "4000",
        ],
    );
    let mut alice = XmppClient::connect("alice@a.test", "pw", &a.c2s()).await;
    let body = "x".repeat(2500);
    let mut accepted: Vec<(String, String)> = Vec::new();
    let mut refused = None;
    'fill: for n in 0..12 {
        let node = format!("big{n}");
        let r = iq(&mut alice, &format!(
            "<iq xmlns='jabber:client' type='set' id='create-{node}' to='pubsub.ring.test'><pubsub xmlns='{NS_PUBSUB}'><create node='{node}'/></pubsub></iq>"
        ))
        .await;
        if condition(&r).is_some() {
            refused = Some(r);
            break;
        }
        for i in 0..3 {
            let id = format!("{node}-{i}");
            let r = publish(&mut alice, &node, &id, &body).await;
            if condition(&r).is_some() {
                refused = Some(r);
                break 'fill;
            }
            accepted.push((node.clone(), id));
        }
    }
    let refused = refused.expect("the stores filled up and a change was refused");
    eprintln!(
        "{} publications accepted before the refusal",
        accepted.len()
    );
    assert_eq!(
        condition(&refused).as_deref(),
        Some("resource-constraint"),
        "{refused:?}"
    );
    assert!(!accepted.is_empty());
    // What was answered with success is there (the last item of each node;
    // older ones may have been pushed out by the items record's limit).
    let (node, id) = accepted.last().cloned().expect("one");
    let r = iq(&mut alice, &format!(
        "<iq xmlns='jabber:client' type='get' id='items' to='pubsub.ring.test'><pubsub xmlns='{NS_PUBSUB}'><items node='{node}'/></pubsub></iq>"
    ))
    .await;
    let items: Vec<String> = r
        .get_child("pubsub", NS_PUBSUB)
        .and_then(|p| p.get_child("items", NS_PUBSUB))
        .map(|i| {
            i.children()
                .filter_map(|c| c.attr("id").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert!(items.contains(&id), "{id} in {items:?}");
    alice.disconnect().await;
}
