//! The edge against real Prosody servers, real TLS and real XMPP clients:
//! the federation sees the ring as one ordinary XMPP server.
//!
//! Addresses: Prosody a.test on 127.0.0.2, edges on 127.0.0.4 and up, all
//! names resolved by the tests' own DNS server (Prosody through libunbound's
//! forwarder, the edges through `--dns`).

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use support::certs::Ca;
use support::client::XmppClient;
use support::dns::DnsServer;
use support::prosody::{Prosody, ProsodyOptions, free_port};
use support::raw::{Raw, cond, header};
use support::{EdgeArgs, args, require_prosody, ring, ring_send, status};
use xmpp_parsers::minidom::Element;
use xmpp_ring::cluster::Cluster;

const PROSODY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const W: Duration = Duration::from_secs(20);

struct World {
    _dir: tempfile::TempDir,
    _dns: DnsServer,
    ca: Ca,
    prosody: Prosody,
    ring: Cluster,
    /// Index of the (first) edge in `ring`.
    edge: usize,
    edge_addr: (Ipv4Addr, u16),
}

/// Prosody a.test with users alice and bob, and a ring serving ring.test
/// with three application nodes and one edge. `secure`: certificates from a
/// CA both sides trust (SASL EXTERNAL); otherwise Prosody's certificate is
/// from a CA the edge does not know and the edge's is self-signed
/// (dialback over TLS).
fn world(secure: bool, edge_extra: &[&str]) -> World {
    require_prosody();
    let dir = tempfile::tempdir().expect("tmp");
    let dns = DnsServer::start();
    let ca = Ca::new(dir.path(), "testca");
    let prosody_cert = if secure {
        ca.issue(dir.path(), "a.test")
    } else {
        Ca::new(dir.path(), "otherca").issue(dir.path(), "a.test")
    };
    let opts = ProsodyOptions {
        secure_auth: secure,
        cafile: secure.then(|| ca.pem.clone()),
        ..ProsodyOptions::default()
    };
    let prosody = Prosody::start(
        dir.path(),
        "a.test",
        PROSODY_IP,
        dns.addr,
        &prosody_cert,
        &[("alice", "pw"), ("bob", "pw")],
        opts,
    );
    dns.add_a("a.test", PROSODY_IP);
    dns.add_s2s_srv("a.test", "a.test", prosody.s2s_port);
    let edge_ip = Ipv4Addr::new(127, 0, 0, 4);
    let port = free_port(edge_ip);
    dns.add_a("edge1.ring.test", edge_ip);
    dns.add_s2s_srv("ring.test", "edge1.ring.test", port);
    let mut extra = args(edge_extra);
    if secure {
        let (c, k) = ca.issue(dir.path(), "ring.test");
        extra.extend([
            "--tls-cert".into(),
            c.display().to_string(),
            "--tls-key".into(),
            k.display().to_string(),
        ]);
        extra.extend(["--tls-ca".into(), ca.pem.display().to_string()]);
    }
    let ring = ring(
        dir.path(),
        &["ring.test"],
        3,
        &[EdgeArgs {
            ip: edge_ip,
            port,
            extra,
        }],
        dns.addr,
    );
    World {
        _dir: dir,
        _dns: dns,
        ca,
        prosody,
        ring,
        edge: 3,
        edge_addr: (edge_ip, port),
    }
}

/// Every node's log (for failure messages).
fn edge_log(w: &World) -> String {
    (0..w.ring.nodes.len())
        .map(|i| {
            let log =
                std::fs::read_to_string(w.ring.nodes[i].dir.join("node.log")).unwrap_or_default();
            format!("--- node {i} ({}):\n{log}", w.ring.nodes[i].ready.role)
        })
        .collect()
}

fn el(s: &str) -> Element {
    s.parse().expect("xml")
}

fn stanza_error(e: &Element) -> Option<String> {
    e.get_child("error", "jabber:client")
        .and_then(|err| {
            err.children()
                .find(|c| c.ns() == NS_STANZAS && c.name() != "text")
        })
        .map(|c| c.name().to_string())
}

/// The three scenarios every authentication mode must pass.
async fn scenarios(w: &World, alice: &mut XmppClient) {
    // 1. Ping the ring's domain.
    alice
        .send(el("<iq xmlns='jabber:client' type='get' id='ping1' to='ring.test'><ping xmlns='urn:xmpp:ping'/></iq>"))
        .await;
    let r = alice
        .recv(W, |e| e.attr("id") == Some("ping1"))
        .await
        .unwrap_or_else(|| {
            panic!(
                "no ping answer\nedge log:\n{}\nprosody:\n{}",
                edge_log(w),
                w.prosody.log()
            )
        });
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    assert_eq!(r.attr("from"), Some("ring.test"));
    // 2. disco#info of the domain.
    alice
        .send(el("<iq xmlns='jabber:client' type='get' id='disco1' to='ring.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"))
        .await;
    let r = alice
        .recv(W, |e| e.attr("id") == Some("disco1"))
        .await
        .expect("disco answer");
    assert_eq!(r.attr("type"), Some("result"));
    let q = r
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .expect("query");
    let features: Vec<&str> = q
        .children()
        .filter(|c| c.name() == "feature")
        .filter_map(|c| c.attr("var"))
        .collect();
    assert!(features.contains(&"urn:xmpp:ping"), "{features:?}");
    assert!(
        q.children()
            .any(|c| c.name() == "identity" && c.attr("category") == Some("server"))
    );
    // 3. A JID with no service: service-unavailable.
    alice
        .send(el("<message xmlns='jabber:client' to='nobody@ring.test' id='m1' type='chat'><body>anyone?</body></message>"))
        .await;
    let r = alice
        .recv(W, |e| e.attr("id") == Some("m1"))
        .await
        .unwrap_or_else(|| {
            panic!(
                "no error answer\nedge log:\n{}\nprosody:\n{}",
                edge_log(w),
                w.prosody.log()
            )
        });
    assert_eq!(r.attr("type"), Some("error"));
    assert_eq!(stanza_error(&r).as_deref(), Some("service-unavailable"));
    // 4. The ring sends to a Prosody user (out through the edge), from a
    // node that is not the edge.
    ring_send(
        &w.ring,
        1,
        "bot@ring.test",
        "alice@a.test",
        "hello from the ring",
    );
    let m = alice
        .recv(W, |e| e.name() == "message" && e.attr("from") == Some("bot@ring.test"))
        .await
                .unwrap_or_else(|| {
            let s = status(&w.ring, 1);
            let e = status(&w.ring, w.edge);
                        let n1 = std::fs::read_to_string(w.ring.nodes[1].dir.join("node.log")).unwrap_or_default();
            panic!(
                "ring message not delivered; node 1 knows {} edges; edge: {:?}\nedge log:\n{}\nnode 1 log:\n{n1}\n{}",
                s.edges_known,
                e.edge,
                edge_log(w),
                w.prosody.log()
            )
        });
    assert_eq!(
        m.get_child("body", "jabber:client").map(|b| b.text()),
        Some("hello from the ring".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_dialback_with_untrusted_certificates() {
    let w = world(false, &[]);
    let mut alice = XmppClient::connect("alice@a.test", "pw", &w.prosody.c2s()).await;
    scenarios(&w, &mut alice).await;
    let e = status(&w.ring, w.edge).edge.expect("edge report");
    assert!(
        e.dialback_ok >= 1,
        "Prosody's inbound stream was verified by dialback: {e:?}"
    );
    assert!(
        e.verify_valid >= 1,
        "Prosody verified our key with us: {e:?}"
    );
    assert_eq!(e.sasl_external_ok, 0, "{e:?}");
    alice.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_sasl_external_with_a_shared_ca() {
    let w = world(true, &[]);
    let mut alice = XmppClient::connect("alice@a.test", "pw", &w.prosody.c2s()).await;
    scenarios(&w, &mut alice).await;
    let e = status(&w.ring, w.edge).edge.expect("edge report");
    assert!(
        e.sasl_external_ok >= 2,
        "both directions by EXTERNAL: {e:?}\n{}",
        w.prosody.log()
    );
    assert_eq!(e.dialback_ok, 0, "{e:?}");
    alice.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_verify_each_others_dialback_keys() {
    require_prosody();
    let dir = tempfile::tempdir().expect("tmp");
    let dns = DnsServer::start();
    let prosody_cert = Ca::new(dir.path(), "otherca").issue(dir.path(), "a.test");
    let prosody = Prosody::start(
        dir.path(),
        "a.test",
        PROSODY_IP,
        dns.addr,
        &prosody_cert,
        &[("alice", "pw")],
        ProsodyOptions::default(),
    );
    dns.add_a("a.test", PROSODY_IP);
    dns.add_s2s_srv("a.test", "a.test", prosody.s2s_port);
    // One ring, two domains; each domain's SRV names a different edge.
    let (ip1, ip2) = (Ipv4Addr::new(127, 0, 0, 4), Ipv4Addr::new(127, 0, 0, 5));
    let (p1, p2) = (free_port(ip1), free_port(ip2));
    dns.add_a("edge1.ring.test", ip1);
    dns.add_a("edge2.ring.test", ip2);
    dns.add_s2s_srv("ring.test", "edge1.ring.test", p1);
    dns.add_s2s_srv("ring2.test", "edge2.ring.test", p2);
    let edges = [
        EdgeArgs {
            ip: ip1,
            port: p1,
            extra: vec![],
        },
        EdgeArgs {
            ip: ip2,
            port: p2,
            extra: vec![],
        },
    ];
    let ring = ring(
        dir.path(),
        &["ring.test", "ring2.test"],
        2,
        &edges,
        dns.addr,
    );
    let mut alice = XmppClient::connect("alice@a.test", "pw", &prosody.c2s()).await;
    // Prosody reaches the ring through either edge.
    for (i, domain) in ["ring.test", "ring2.test"].iter().enumerate() {
        alice
            .send(el(&format!("<iq xmlns='jabber:client' type='get' id='p{i}' to='{domain}'><ping xmlns='urn:xmpp:ping'/></iq>")))
            .await;
        let r = alice
            .recv(W, |e| e.attr("id") == Some(&format!("p{i}")))
            .await
            .expect("ping answer");
        assert_eq!(r.attr("type"), Some("result"), "via {domain}");
    }
    // Messages from both domains go out through the one edge rendezvous
    // hashing picks for a.test; Prosody verifies the key for the other
    // domain with the other edge, which must confirm a key it did not issue.
    ring_send(&ring, 0, "bot@ring.test", "alice@a.test", "one");
    ring_send(&ring, 0, "bot@ring2.test", "alice@a.test", "two");
    // The two travel over different s2s streams, so either may come first:
    // wait for both in one pass (a second `recv` would discard the other).
    let mut waiting = vec!["one", "two"];
    while !waiting.is_empty() {
        let m = alice
            .recv(W, |e| {
                e.name() == "message"
                    && e.get_child("body", "jabber:client")
                        .is_some_and(|b| waiting.contains(&b.text().as_str()))
            })
            .await
            .unwrap_or_else(|| {
                let edges: String = (2..4)
                    .map(|i| {
                        let log = std::fs::read_to_string(ring.nodes[i].dir.join("node.log"))
                            .unwrap_or_default();
                        format!("--- edge node {i}:\n{log}")
                    })
                    .collect();
                panic!(
                    "messages {waiting:?} not delivered\n{}\n{edges}",
                    prosody.log()
                )
            });
        assert_eq!(
            m.attr("to").map(|t| t.starts_with("alice@a.test")),
            Some(true)
        );
        let body = m
            .get_child("body", "jabber:client")
            .map(|b| b.text())
            .unwrap_or_default();
        waiting.retain(|w| *w != body);
    }
    let (e1, e2) = (
        status(&ring, 2).edge.expect("edge 1"),
        status(&ring, 3).edge.expect("edge 2"),
    );
    let (sender, other) = if e1.stanzas_out > 0 {
        (&e1, &e2)
    } else {
        (&e2, &e1)
    };
    assert!(sender.stanzas_out >= 2, "{sender:?}");
    assert_eq!(
        other.stanzas_out, 0,
        "one edge per remote domain: {other:?}"
    );
    assert!(
        other.verify_valid >= 1,
        "the other edge confirmed the sender's key: {other:?}"
    );
    alice.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rings_federate_through_their_edges() {
    let dir = tempfile::tempdir().expect("tmp");
    let dns = DnsServer::start();
    let (ipa, ipb) = (Ipv4Addr::new(127, 0, 0, 6), Ipv4Addr::new(127, 0, 0, 7));
    let (pa, pb) = (free_port(ipa), free_port(ipb));
    dns.add_a("edge.ringa.test", ipa);
    dns.add_a("edge.ringb.test", ipb);
    dns.add_s2s_srv("ringa.test", "edge.ringa.test", pa);
    dns.add_s2s_srv("ringb.test", "edge.ringb.test", pb);
    let ring_a = ring(
        dir.path(),
        &["ringa.test"],
        2,
        &[EdgeArgs {
            ip: ipa,
            port: pa,
            extra: vec![],
        }],
        dns.addr,
    );
    let ring_b = ring(
        dir.path(),
        &["ringb.test"],
        2,
        &[EdgeArgs {
            ip: ipb,
            port: pb,
            extra: vec![],
        }],
        dns.addr,
    );
    // A message from ring A to a JID of ring B without a service: ring B's
    // responsible node answers service-unavailable, which travels back.
    ring_send(
        &ring_a,
        0,
        "bot@ringa.test",
        "nobody@ringb.test",
        "hello ring b",
    );
    let start = Instant::now();
    loop {
        let (ea, eb) = (
            status(&ring_a, 2).edge.expect("edge a"),
            status(&ring_b, 2).edge.expect("edge b"),
        );
        if ea.stanzas_out >= 1 && eb.stanzas_in >= 1 && eb.stanzas_out >= 1 && ea.stanzas_in >= 1 {
            assert!(ea.dialback_ok >= 1 && eb.dialback_ok >= 1, "{ea:?} {eb:?}");
            break;
        }
        assert!(
            start.elapsed() < W,
            "no round trip between the rings: {ea:?} {eb:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ------------------------------------------------------------- bad input

async fn expect_stream_error(addr: (Ipv4Addr, u16), input: &str, condition: &str) {
    let mut r = Raw::connect(addr).await;
    r.write(input).await;
    assert!(
        r.read_until(&cond(condition), Duration::from_secs(10))
            .await,
        "{condition}: got {:?}",
        r.got
    );
    assert!(
        r.closed(Duration::from_secs(10)).await,
        "{condition}: connection left open"
    );
}

/// Upgrades a raw stream to TLS and authenticates as `domain` with SASL
/// EXTERNAL using a certificate from `ca`.
async fn raw_authenticated(w: &World, domain: &str) -> Raw {
    let dir = tempfile::tempdir().expect("tmp");
    let (c, k) = w.ca.issue(dir.path(), domain);
    let id = xmpp_edge::tls::load_identity(&c, &k).expect("identity");
    let mut r = Raw::connect(w.edge_addr).await;
    r.write(&header("ring.test", domain, "jabber:server")).await;
    assert!(r.read_until("</stream:features>", W).await, "{}", r.got);
    r.write("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    assert!(r.read_until("<proceed", W).await, "{}", r.got);
    let cfg = xmpp_edge::tls::client_config(&id).expect("tls config");
    let Raw { stream, .. } = r;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls::pki_types::ServerName::try_from("ring.test").expect("name"),
            stream,
        )
        .await
        .expect("tls");
    let mut r = Raw {
        stream: Box::new(tls),
        got: String::new(),
    };
    r.write(&header("ring.test", domain, "jabber:server")).await;
    assert!(r.read_until("</stream:features>", W).await, "{}", r.got);
    assert!(r.got.contains("EXTERNAL"), "EXTERNAL offered: {}", r.got);
    r.write("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
        .await;
    assert!(r.read_until("<success", W).await, "{}", r.got);
    r.got.clear();
    r.write(&header("ring.test", domain, "jabber:server")).await;
    assert!(
        r.read_until("</stream:features>", W).await || r.got.contains("<stream:features/>"),
        "{}",
        r.got
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_rfc_stream_error_and_closes_only_that_stream() {
    let w = world(
        true,
        &["--s2s-idle-timeout-s", "3", "--max-stanza-bytes", "4096"],
    );
    let mut alice = XmppClient::connect("alice@a.test", "pw", &w.prosody.c2s()).await;
    let mut n = 0;
    let mut ping_ok = async |alice: &mut XmppClient| {
        n += 1;
        let id = format!("alive{n}");
        alice
            .send(el(&format!("<iq xmlns='jabber:client' type='get' id='{id}' to='ring.test'><ping xmlns='urn:xmpp:ping'/></iq>")))
            .await;
        let r = alice
            .recv(W, |e| e.attr("id") == Some(id.as_str()))
            .await
            .expect("ping answer");
        assert_eq!(
            r.attr("type"),
            Some("result"),
            "the federation's stream is unaffected"
        );
    };
    ping_ok(&mut alice).await;
    let h = header("ring.test", "x.test", "jabber:server");
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{h}<message><body>unclosed</message>"),
            "not-well-formed",
        ),
        ("this is not XML at all".into(), "not-well-formed"),
        (format!("{h}<!-- a comment -->"), "restricted-xml"),
        (format!("{h}<?pi instruction?>"), "restricted-xml"),
        (
            "<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY x 'y'>]><stream:stream/>".into(),
            "restricted-xml",
        ),
        (
            format!("{h}<message><body>&custom;</body></message>"),
            "restricted-xml",
        ),
        (
            header("ring.test", "x.test", "jabber:client"),
            "invalid-namespace",
        ),
        (
            header("nowhere.test", "x.test", "jabber:server"),
            "host-unknown",
        ),
        (
            format!("{h}<db:result from='x.test' to='ring.test'>key</db:result>"),
            "not-authorized",
        ),
        (
            format!("{h}<message from='a@x.test' to='b@ring.test'/>"),
            "not-authorized",
        ),
    ];
    for (input, condition) in &cases {
        expect_stream_error(w.edge_addr, input, condition).await;
    }
    ping_ok(&mut alice).await;
    // Oversized stanza and spoofed from, on an authenticated TLS stream.
    let mut r = raw_authenticated(&w, "spoofer.test").await;
    r.write(&format!(
        "<message from='a@spoofer.test' to='b@ring.test'><body>{}</body></message>",
        "x".repeat(8000)
    ))
    .await;
    assert!(
        r.read_until(&cond("policy-violation"), W).await,
        "{}",
        r.got
    );
    assert!(r.closed(W).await);
    let mut r = raw_authenticated(&w, "spoofer.test").await;
    r.write("<message from='alice@a.test' to='b@ring.test'><body>spoofed</body></message>")
        .await;
    assert!(r.read_until(&cond("invalid-from"), W).await, "{}", r.got);
    assert!(r.closed(W).await);
    // Garbage instead of a TLS handshake: that connection fails, alone.
    let mut r = Raw::connect(w.edge_addr).await;
    r.write(&h).await;
    assert!(r.read_until("</stream:features>", W).await);
    r.write("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    assert!(r.read_until("<proceed", W).await);
    r.write(&"\u{1}garbage, not a ClientHello ".repeat(20))
        .await;
    assert!(r.closed(W).await, "TLS failure closes the connection");
    // A peer that goes silent gets connection-timeout (idle timeout 3 s).
    let mut r = Raw::connect(w.edge_addr).await;
    let t = Instant::now();
    assert!(
        r.read_until(&cond("connection-timeout"), Duration::from_secs(10))
            .await,
        "{}",
        r.got
    );
    assert!(t.elapsed() >= Duration::from_secs(2));
    assert!(r.closed(W).await);
    ping_ok(&mut alice).await;
    let e = status(&w.ring, w.edge).edge.expect("edge report");
    for c in [
        "not-well-formed",
        "restricted-xml",
        "invalid-namespace",
        "host-unknown",
        "not-authorized",
        "policy-violation",
        "invalid-from",
        "connection-timeout",
    ] {
        assert!(
            e.stream_errors.get(c).copied().unwrap_or(0) >= 1,
            "{c} not counted: {:?}",
            e.stream_errors
        );
    }
    alice.disconnect().await;
}
