//! The negotiation machines, driven without sockets: table-driven inputs
//! against the outputs they must produce, exchanges recorded from Prosody
//! (captures of Prosody 0.12 federating over loopback: the XML it sent,
//! byte for byte), and deterministic pairs of our own inbound and outbound machines
//! talking to each other through an in-memory wire.

use super::inbound::{
    AuthMethod, InboundConfig, InboundOutput, InboundStream, Verdict, VerifyRequest,
};
use super::outbound::{Failure, OutboundConfig, OutboundOutput, OutboundStream, Purpose};
use crate::dialback::Secret;
use crate::domain::{Domain, Served};
use crate::stream_error::Condition;
use crate::xml::{Limits, StreamEvent, StreamHeader, XmlStreamReader};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use std::time::{Duration, Instant};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

const SECRET: &[u8] = b"the ring's dialback secret";

fn d(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

/// Every complete event in `doc` (a document as received so far).
fn events(doc: &str) -> Vec<StreamEvent> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut r =
            XmlStreamReader::new(tokio::io::BufReader::new(doc.as_bytes()), Limits::default());
        let mut out = Vec::new();
        while let Ok(ev) = r.next().await {
            let end = ev == StreamEvent::End;
            out.push(ev);
            if end {
                break;
            }
        }
        out
    })
}

fn header(xml: &str) -> StreamHeader {
    match events(xml).into_iter().next() {
        Some(StreamEvent::Header(h)) => h,
        other => panic!("not a header: {other:?}"),
    }
}

fn el(xml: &str) -> Element {
    xml.parse().unwrap()
}

/// A header as a peer server sends it.
fn peer_header(to: &str, from: &str) -> StreamHeader {
    header(&format!(
        "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns:db='jabber:server:dialback' to='{to}' from='{from}' version='1.0' id=''>"
    ))
}

fn inbound_cfg(roots: Option<RootCertStore>) -> Arc<InboundConfig> {
    Arc::new(InboundConfig {
        served: Served::new(&["ring.test"]).unwrap(),
        secret: Secret::new(SECRET),
        roots: roots.map(Arc::new),
        header_timeout: Duration::from_secs(30),
        auth_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(600),
        max_pending_dialback: 8,
    })
}

fn drain_in(m: &mut InboundStream) -> Vec<InboundOutput> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

fn drain_out(m: &mut OutboundStream) -> Vec<OutboundOutput> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

fn written_in(outs: &[InboundOutput]) -> String {
    outs.iter()
        .filter_map(|o| match o {
            InboundOutput::Write(s) => Some(s.as_str()),
            _ => None,
        })
        .collect()
}

fn closed_with(outs: &[InboundOutput]) -> Option<Option<Condition>> {
    outs.iter().find_map(|o| match o {
        InboundOutput::Close { error } => Some(*error),
        _ => None,
    })
}

/// An inbound stream from `from` that has done STARTTLS and sent its
/// post-TLS header.
fn after_tls(from: &str, now: Instant) -> InboundStream {
    let mut m = InboundStream::new(inbound_cfg(None), now, 7);
    m.handle_header(now, peer_header("ring.test", from));
    m.handle_element(
        now,
        el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
    );
    let outs = drain_in(&mut m);
    assert!(outs.contains(&InboundOutput::StartTls), "{outs:?}");
    m.handle_tls(now, Vec::new());
    m.handle_header(now, peer_header("ring.test", from));
    drain_in(&mut m);
    m
}

/// The id the machine gave its current document (from its header).
fn issued_id(outs: &[InboundOutput]) -> String {
    let w = written_in(outs);
    let StreamEvent::Header(h) = &events(&w)[0] else {
        panic!("no header in {w}")
    };
    h.id.clone().unwrap()
}

fn db_result(from: &str, to: &str, key: &str) -> Element {
    el(&format!(
        "<db:result xmlns:db='jabber:server:dialback' from='{from}' to='{to}'>{key}</db:result>"
    ))
}

// ------------------------------------------------------------- inbound

#[test]
fn inbound_dialback_happy_path() {
    let t0 = Instant::now();
    let mut m = InboundStream::new(inbound_cfg(None), t0, 1);
    m.handle_header(t0, peer_header("ring.test", "a.test"));
    let outs = drain_in(&mut m);
    let w = written_in(&outs);
    assert!(w.contains("from='ring.test' to='a.test'"), "{w}");
    assert!(w.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/>"));
    assert!(w.contains("urn:xmpp:features:dialback"));
    m.handle_element(
        t0,
        el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
    );
    assert_eq!(
        drain_in(&mut m),
        vec![
            InboundOutput::Write("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>".into()),
            InboundOutput::StartTls
        ]
    );
    m.handle_tls(t0, Vec::new());
    m.handle_header(t0, peer_header("ring.test", "a.test"));
    let outs = drain_in(&mut m);
    let w = written_in(&outs);
    assert!(!w.contains("starttls") && w.contains("dialback"), "{w}");
    let id = issued_id(&outs);
    m.handle_element(t0, db_result("a.test", "ring.test", "k3y"));
    let outs = drain_in(&mut m);
    assert_eq!(
        outs,
        vec![InboundOutput::Verify(VerifyRequest {
            originating: d("a.test"),
            receiving: d("ring.test"),
            stream_id: id,
            key: "k3y".into()
        })]
    );
    // Stanzas wait for the verdict: before it, not-authorized.
    m.handle_verified(&d("a.test"), &d("ring.test"), Verdict::Valid);
    let outs = drain_in(&mut m);
    assert!(outs.contains(&InboundOutput::Authenticated {
        domain: d("a.test"),
        method: AuthMethod::Dialback
    }));
    assert!(written_in(&outs).contains("type='valid'"));
    assert!(m.is_authenticated());
    m.handle_element(
        t0,
        el("<message xmlns='jabber:server' from='alice@A.test/x' to='bob@ring.test'><body>hi</body></message>"),
    );
    match drain_in(&mut m).as_slice() {
        [InboundOutput::Stanza(s)] => {
            assert_eq!(s.ns(), "jabber:client");
            assert_eq!(
                s.get_child("body", "jabber:client").map(|b| b.text()),
                Some("hi".into())
            );
        }
        other => panic!("{other:?}"),
    }
    m.handle_end();
    let outs = drain_in(&mut m);
    assert_eq!(closed_with(&outs), Some(None));
    assert!(written_in(&outs).contains("</stream:stream>"));
}

/// (what, input steps after a header from `a.test` and TLS, expected
/// stream error). Steps are elements; `Verdict` lines authenticate a.test.
#[test]
fn inbound_bad_input_table() {
    type Step = &'static str;
    const AUTH: Step = "AUTH a.test";
    let cases: Vec<(&str, Vec<Step>, Condition)> = vec![
        (
            "stanza before authentication",
            vec!["<message xmlns='jabber:server' from='x@a.test' to='y@ring.test'/>"],
            Condition::NotAuthorized,
        ),
        (
            "spoofed from",
            vec![
                AUTH,
                "<message xmlns='jabber:server' from='x@b.test' to='y@ring.test'/>",
            ],
            Condition::InvalidFrom,
        ),
        (
            "from a ring domain",
            vec![
                AUTH,
                "<message xmlns='jabber:server' from='admin@ring.test' to='y@ring.test'/>",
            ],
            Condition::InvalidFrom,
        ),
        (
            "from with a space",
            vec![
                AUTH,
                "<message xmlns='jabber:server' from='x@a.test b' to='y@ring.test'/>",
            ],
            Condition::InvalidFrom,
        ),
        (
            "no from",
            vec![AUTH, "<message xmlns='jabber:server' to='y@ring.test'/>"],
            Condition::ImproperAddressing,
        ),
        (
            "no to",
            vec![AUTH, "<message xmlns='jabber:server' from='x@a.test'/>"],
            Condition::ImproperAddressing,
        ),
        (
            "to elsewhere",
            vec![
                AUTH,
                "<message xmlns='jabber:server' from='x@a.test' to='y@b.test'/>",
            ],
            Condition::HostUnknown,
        ),
        (
            "to a look-alike",
            vec![
                AUTH,
                "<message xmlns='jabber:server' from='x@a.test' to='y@x y.ring.test'/>",
            ],
            Condition::HostUnknown,
        ),
        (
            "unknown element",
            vec!["<hello xmlns='urn:x'/>"],
            Condition::UnsupportedStanzaType,
        ),
        (
            "client namespace stanza",
            vec![
                AUTH,
                "<message xmlns='jabber:client' from='x@a.test' to='y@ring.test'/>",
            ],
            Condition::UnsupportedStanzaType,
        ),
        (
            "a dialback answer",
            vec![
                "<db:result xmlns:db='jabber:server:dialback' from='a.test' to='ring.test' type='valid'/>",
            ],
            Condition::NotAuthorized,
        ),
        (
            "malformed dialback",
            vec!["<db:result xmlns:db='jabber:server:dialback' from='a.test'>k</db:result>"],
            Condition::NotAuthorized,
        ),
    ];
    for (what, steps, want) in cases {
        let t0 = Instant::now();
        let mut m = after_tls("a.test", t0);
        let mut outs = Vec::new();
        for s in steps {
            if s == AUTH {
                m.handle_element(t0, db_result("a.test", "ring.test", "k"));
                m.handle_verified(&d("a.test"), &d("ring.test"), Verdict::Valid);
            } else {
                m.handle_element(t0, el(s));
            }
            outs.extend(drain_in(&mut m));
        }
        assert_eq!(closed_with(&outs), Some(Some(want)), "{what}: {outs:?}");
        assert!(m.is_closed(), "{what}");
        assert!(
            !outs.iter().any(|o| matches!(o, InboundOutput::Stanza(_))),
            "{what}: nothing reaches the ring"
        );
    }
}

#[test]
fn inbound_header_table() {
    let h = |to: &str, from: &str, ns: &str, version: &str| {
        header(&format!(
            "<stream:stream xmlns='{ns}' xmlns:stream='http://etherx.jabber.org/streams' \
             to='{to}' from='{from}' {version}>"
        ))
    };
    let cases = [
        (
            "another domain",
            h("b.test", "a.test", "jabber:server", "version='1.0'"),
            Condition::HostUnknown,
        ),
        (
            "look-alike with a space",
            h("x y.ring.test", "a.test", "jabber:server", "version='1.0'"),
            Condition::HostUnknown,
        ),
        (
            "look-alike suffix",
            h("evilring.test", "a.test", "jabber:server", "version='1.0'"),
            Condition::HostUnknown,
        ),
        (
            "client namespace",
            h("ring.test", "a.test", "jabber:client", "version='1.0'"),
            Condition::InvalidNamespace,
        ),
        (
            "no version",
            h("ring.test", "a.test", "jabber:server", ""),
            Condition::UnsupportedVersion,
        ),
        (
            "from a ring domain",
            h("ring.test", "ring.test", "jabber:server", "version='1.0'"),
            Condition::InvalidFrom,
        ),
        (
            "from a ring subdomain",
            h(
                "ring.test",
                "pubsub.ring.test",
                "jabber:server",
                "version='1.0'",
            ),
            Condition::InvalidFrom,
        ),
        (
            "from two domains",
            h(
                "ring.test",
                "evil.com pubsub.ring.test",
                "jabber:server",
                "version='1.0'",
            ),
            Condition::InvalidFrom,
        ),
    ];
    for (what, header, want) in cases {
        let t0 = Instant::now();
        let mut m = InboundStream::new(inbound_cfg(None), t0, 3);
        m.handle_header(t0, header);
        let outs = drain_in(&mut m);
        assert_eq!(closed_with(&outs), Some(Some(want)), "{what}: {outs:?}");
        // Our header precedes the error, so the peer can parse it.
        let w = written_in(&outs);
        assert!(
            w.starts_with("<?xml") && w.contains(want.name()),
            "{what}: {w}"
        );
        assert!(w.ends_with("</stream:stream>"), "{what}: {w}");
    }
    // And a subdomain of ours is served.
    let t0 = Instant::now();
    let mut m = InboundStream::new(inbound_cfg(None), t0, 3);
    m.handle_header(t0, peer_header("conference.ring.test", "a.test"));
    assert_eq!(closed_with(&drain_in(&mut m)), None);
}

#[test]
fn nothing_but_starttls_before_tls() {
    for input in [
        "<db:result xmlns:db='jabber:server:dialback' from='a.test' to='ring.test'>k</db:result>",
        "<db:verify xmlns:db='jabber:server:dialback' from='a.test' to='ring.test' id='i'>k</db:verify>",
        "<message xmlns='jabber:server' from='x@a.test' to='y@ring.test'/>",
    ] {
        let t0 = Instant::now();
        let mut m = InboundStream::new(inbound_cfg(None), t0, 1);
        m.handle_header(t0, peer_header("ring.test", "a.test"));
        drain_in(&mut m);
        m.handle_element(t0, el(input));
        let outs = drain_in(&mut m);
        assert_eq!(
            closed_with(&outs),
            Some(Some(Condition::NotAuthorized)),
            "{input}"
        );
    }
}

/// The attack of the review: whatever the addresses, an inbound stream
/// never gets a ring domain authenticated, and never asks anybody to
/// verify such a claim.
#[test]
fn an_attackers_stream_cannot_authenticate_ring_test() {
    let claims = [
        ("ring.test", "evil.com pubsub.ring.test"),
        ("ring.test", "ring.test"),
        ("conference.ring.test", "ring.test"),
        ("RING.TEST.", "ring.test"),
        ("ring.test", "evil.com"),
        ("evil.com ring.test", "ring.test"),
    ];
    for (from, to) in claims {
        let t0 = Instant::now();
        let mut m = after_tls("evil.com", t0);
        m.handle_element(t0, db_result(from, to, "00"));
        let outs = drain_in(&mut m);
        assert!(
            !outs.iter().any(|o| matches!(o, InboundOutput::Verify(_))),
            "{from} -> {to}: {outs:?}"
        );
        let w = written_in(&outs);
        assert!(
            w.contains("type='invalid'") || w.contains("type='error'"),
            "{from} -> {to}: {w}"
        );
        assert!(!m.is_authenticated());
        // A stanza from the ring's domain is still refused.
        m.handle_element(
            t0,
            el("<message xmlns='jabber:server' from='admin@ring.test' to='x@ring.test'/>"),
        );
        assert!(
            !drain_in(&mut m)
                .iter()
                .any(|o| matches!(o, InboundOutput::Stanza(_))),
            "{from} -> {to}"
        );
    }
}

#[test]
fn db_verify_is_answered_only_for_keys_we_issued_to_foreign_domains() {
    let secret = Secret::new(SECRET);
    let key = secret.key(&d("a.test"), &d("ring.test"), "S1").unwrap();
    let verify = |from: &str, to: &str, id: &str, key: &str| {
        el(&format!(
            "<db:verify xmlns:db='jabber:server:dialback' from='{from}' to='{to}' id='{id}'>{key}</db:verify>"
        ))
    };
    let cases = [
        (
            "ours, right key",
            verify("a.test", "ring.test", "S1", &key),
            true,
        ),
        ("wrong id", verify("a.test", "ring.test", "S2", &key), false),
        (
            "wrong receiving domain",
            verify("b.test", "ring.test", "S1", &key),
            false,
        ),
        (
            "not our domain",
            verify("a.test", "b.test", "S1", &key),
            false,
        ),
        (
            "receiving is a ring domain",
            verify("ring.test", "ring.test", "S1", &key),
            false,
        ),
        (
            "id with a space",
            verify("a.test", "ring.test", "ring.test S1", &key),
            false,
        ),
        (
            "domain with a space",
            verify("a.test ring.test", "ring.test", "S1", &key),
            false,
        ),
    ];
    for (what, request, valid) in cases {
        let t0 = Instant::now();
        let mut m = after_tls("a.test", t0);
        m.handle_element(t0, request);
        let outs = drain_in(&mut m);
        assert!(
            outs.contains(&InboundOutput::VerifyAnswered { valid }),
            "{what}: {outs:?}"
        );
        let want = if valid {
            "type='valid'"
        } else {
            "type='invalid'"
        };
        assert!(written_in(&outs).contains(want), "{what}");
        assert!(!m.is_closed(), "{what}: answering never closes the stream");
    }
}

#[test]
fn a_db_verify_flood_ends_the_stream() {
    let t0 = Instant::now();
    let mut m = after_tls("a.test", t0);
    let verify = el(
        "<db:verify xmlns:db='jabber:server:dialback' from='a.test' to='ring.test' id='i'>k</db:verify>",
    );
    let mut answered = 0;
    for _ in 0..100 {
        m.handle_element(t0, verify.clone());
        let outs = drain_in(&mut m);
        if let Some(c) = closed_with(&outs) {
            assert_eq!(c, Some(Condition::PolicyViolation));
            break;
        }
        answered += 1;
    }
    assert_eq!(answered, 64, "a burst of 64 is answered");
    assert!(m.is_closed());
    // At an honest pace there is no end to it.
    let mut m = after_tls("a.test", t0);
    for i in 0..500u64 {
        m.handle_element(t0 + Duration::from_millis(100 * i), verify.clone());
    }
    assert!(!m.is_closed());
}

#[test]
fn pending_dialback_checks_are_bounded_per_stream() {
    let t0 = Instant::now();
    let mut m = after_tls("a.test", t0);
    let mut verifies = 0;
    let mut refused = 0;
    for i in 0..12 {
        m.handle_element(t0, db_result(&format!("d{i}.test"), "ring.test", "k"));
        for o in drain_in(&mut m) {
            match o {
                InboundOutput::Verify(_) => verifies += 1,
                InboundOutput::Write(w) if w.contains("resource-constraint") => refused += 1,
                _ => {}
            }
        }
    }
    assert_eq!((verifies, refused), (8, 4));
    // The same pair again while it is checked: no second check.
    m.handle_element(t0, db_result("d0.test", "ring.test", "k"));
    assert!(drain_in(&mut m).is_empty());
    // An answer frees a slot.
    m.handle_verified(&d("d0.test"), &d("ring.test"), Verdict::Invalid);
    drain_in(&mut m);
    m.handle_element(t0, db_result("d20.test", "ring.test", "k"));
    assert!(
        drain_in(&mut m)
            .iter()
            .any(|o| matches!(o, InboundOutput::Verify(_)))
    );
}

#[test]
fn a_stream_must_authenticate_in_time_and_whitespace_does_not_help() {
    let t0 = Instant::now();
    let mut m = InboundStream::new(inbound_cfg(None), t0, 1);
    m.handle_header(t0, peer_header("ring.test", "a.test"));
    drain_in(&mut m);
    for s in 1..60 {
        m.handle_keepalive(t0 + Duration::from_secs(s));
    }
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    m.handle_timeout(t0 + Duration::from_secs(59));
    assert!(drain_in(&mut m).is_empty());
    m.handle_timeout(t0 + Duration::from_secs(60));
    let outs = drain_in(&mut m);
    assert!(outs.contains(&InboundOutput::AuthTimedOut));
    assert_eq!(closed_with(&outs), Some(Some(Condition::ConnectionTimeout)));
    // Nothing said at all: the header timeout (30 s here).
    let mut m = InboundStream::new(inbound_cfg(None), t0, 1);
    m.handle_timeout(t0 + Duration::from_secs(30));
    let outs = drain_in(&mut m);
    assert!(!outs.contains(&InboundOutput::AuthTimedOut));
    assert_eq!(closed_with(&outs), Some(Some(Condition::ConnectionTimeout)));
    // Authenticated: only the idle timeout applies, and keepalives count.
    let mut m = after_tls("a.test", t0);
    m.handle_element(t0, db_result("a.test", "ring.test", "k"));
    m.handle_verified(&d("a.test"), &d("ring.test"), Verdict::Valid);
    drain_in(&mut m);
    m.handle_keepalive(t0 + Duration::from_secs(500));
    m.handle_timeout(t0 + Duration::from_secs(700));
    assert!(drain_in(&mut m).is_empty());
    m.handle_timeout(t0 + Duration::from_secs(1100));
    assert_eq!(
        closed_with(&drain_in(&mut m)),
        Some(Some(Condition::ConnectionTimeout))
    );
}

#[test]
fn verification_errors_are_reported_to_the_peer() {
    let t0 = Instant::now();
    let mut m = after_tls("a.test", t0);
    m.handle_element(t0, db_result("a.test", "ring.test", "k"));
    drain_in(&mut m);
    m.handle_verified(
        &d("a.test"),
        &d("ring.test"),
        Verdict::Error(DefinedCondition::RemoteServerNotFound),
    );
    let outs = drain_in(&mut m);
    let w = written_in(&outs);
    assert!(
        w.contains("type='error'") && w.contains("remote-server-not-found"),
        "{w}"
    );
    assert!(outs.contains(&InboundOutput::DialbackDone { ok: false }));
    assert!(!m.is_authenticated());
    // A verdict for something never asked changes nothing.
    m.handle_verified(&d("b.test"), &d("ring.test"), Verdict::Valid);
    assert!(drain_in(&mut m).is_empty());
    assert!(!m.is_authenticated());
}

#[test]
fn shutdown_and_read_errors_close_with_the_right_condition() {
    let t0 = Instant::now();
    let mut m = after_tls("a.test", t0);
    m.handle_shutdown();
    assert_eq!(
        closed_with(&drain_in(&mut m)),
        Some(Some(Condition::SystemShutdown))
    );
    let mut m = after_tls("a.test", t0);
    m.handle_read_error(Some(Condition::PolicyViolation), "too big");
    let outs = drain_in(&mut m);
    assert!(written_in(&outs).contains("policy-violation"));
    assert_eq!(closed_with(&outs), Some(Some(Condition::PolicyViolation)));
    let mut m = after_tls("a.test", t0);
    m.handle_read_error(None, "reset");
    let outs = drain_in(&mut m);
    assert_eq!(written_in(&outs), "", "nothing written to a dead transport");
    assert_eq!(closed_with(&outs), Some(None));
}

// ------------------------------------------------------ certificates

struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: CertificateDer<'static>,
}

fn test_ca() -> TestCa {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "negotiation test CA");
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    TestCa {
        der: cert.der().clone(),
        issuer: rcgen::Issuer::new(params, key),
    }
}

fn chain_for(ca: &TestCa, domain: &str) -> Vec<CertificateDer<'static>> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).unwrap();
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    vec![params.signed_by(&key, &ca.issuer).unwrap().der().clone()]
}

fn roots(ca: &TestCa) -> RootCertStore {
    let mut r = RootCertStore::empty();
    r.add(ca.der.clone()).unwrap();
    r
}

#[test]
fn sasl_external_only_for_the_certificates_domain() {
    let ca = test_ca();
    let cfg = inbound_cfg(Some(roots(&ca)));
    let start = |chain: Vec<CertificateDer<'static>>, from: &str| {
        let t0 = Instant::now();
        let mut m = InboundStream::new(cfg.clone(), t0, 1);
        m.handle_header(t0, peer_header("ring.test", from));
        m.handle_element(
            t0,
            el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
        );
        drain_in(&mut m);
        m.handle_tls(t0, chain);
        m.handle_header(t0, peer_header("ring.test", from));
        let outs = drain_in(&mut m);
        (m, written_in(&outs), closed_with(&outs))
    };
    let auth = |authzid: &str| {
        el(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{authzid}</auth>"
        ))
    };
    // Valid certificate for a.test: EXTERNAL offered and accepted.
    let (mut m, w, _) = start(chain_for(&ca, "a.test"), "a.test");
    assert!(w.contains("<mechanism>EXTERNAL</mechanism>"), "{w}");
    m.handle_element(Instant::now(), auth("="));
    let outs = drain_in(&mut m);
    assert!(written_in(&outs).contains("<success"));
    assert!(outs.contains(&InboundOutput::Restart));
    assert!(outs.contains(&InboundOutput::Authenticated {
        domain: d("a.test"),
        method: AuthMethod::SaslExternal
    }));
    // The authorization identity names another domain: refused.
    let (mut m, _, _) = start(chain_for(&ca, "a.test"), "a.test");
    let other = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "b.test");
    m.handle_element(Instant::now(), auth(&other));
    assert!(written_in(&drain_in(&mut m)).contains("<not-authorized/>"));
    assert!(!m.is_authenticated());
    // A certificate for another domain: no EXTERNAL, and asking for it
    // fails (three times closes the stream).
    let (mut m, w, _) = start(chain_for(&ca, "b.test"), "a.test");
    assert!(!w.contains("EXTERNAL"), "{w}");
    let mut outs = Vec::new();
    for _ in 0..3 {
        m.handle_element(Instant::now(), auth("="));
        outs.extend(drain_in(&mut m));
    }
    assert!(written_in(&outs).contains("invalid-mechanism"));
    assert_eq!(closed_with(&outs), Some(Some(Condition::PolicyViolation)));
    // A perfectly valid certificate for the ring's own domain does not
    // let anyone in as the ring: the claim ends the stream at its first
    // header, before any certificate is looked at.
    let t0 = Instant::now();
    let mut m = InboundStream::new(cfg.clone(), t0, 1);
    m.handle_header(t0, peer_header("ring.test", "ring.test"));
    assert_eq!(
        closed_with(&drain_in(&mut m)),
        Some(Some(Condition::InvalidFrom))
    );
    let (m, w, _) = start(chain_for(&ca, "ring.test"), "a.test");
    assert!(!w.contains("EXTERNAL") && !m.is_authenticated());
}

// ------------------------------------------------------------- outbound

fn outbound_cfg(roots: Option<RootCertStore>, secure_auth: bool) -> Arc<OutboundConfig> {
    Arc::new(OutboundConfig {
        served: Served::new(&["ring.test"]).unwrap(),
        secret: Secret::new(SECRET),
        roots: roots.map(Arc::new),
        require_tls: true,
        secure_auth,
    })
}

fn written_out(outs: &[OutboundOutput]) -> String {
    outs.iter()
        .filter_map(|o| match o {
            OutboundOutput::Write(s) => Some(s.as_str()),
            _ => None,
        })
        .collect()
}

fn failed(outs: &[OutboundOutput]) -> Option<&Failure> {
    outs.iter().find_map(|o| match o {
        OutboundOutput::Failed(f) => Some(f),
        _ => None,
    })
}

// What Prosody 0.12 (b.test) sent on a stream a.test opened to it, from
// `starttls-dialback_prosody-a_to_prosody-b` (plaintext part from the
// capture, TLS part from Prosody's debug log); domains renamed to
// ring.test (us) and b.test.
const PROSODY_HEADER: &str = "<?xml version='1.0'?><stream:stream to='ring.test' xmlns:db='jabber:server:dialback' xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' id='dca49828-2172-4834-a759-a2e5103ac370' from='b.test' xml:lang='en' version='1.0'>";
const PROSODY_FEATURES: &str = "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>";
const PROSODY_PROCEED: &str = "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
const PROSODY_TLS_HEADER: &str = "<?xml version='1.0'?><stream:stream to='ring.test' xmlns:db='jabber:server:dialback' xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' id='9f93ce97-11f7-4f37-a34e-09bf8aec63dc' from='b.test' xml:lang='en' version='1.0'>";
const PROSODY_TLS_FEATURES: &str =
    "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>";
const PROSODY_VALID: &str = "<result xmlns='jabber:server:dialback' from='b.test' id='9f93ce97-11f7-4f37-a34e-09bf8aec63dc' to='ring.test' xml:lang='en' type='valid'>f1f55f25</result>";

/// Feeds the events of `xml` (a document, or the rest of one after
/// `skip` events) to `m`.
fn feed(m: &mut OutboundStream, doc: &str, skip: usize) {
    for ev in events(doc).into_iter().skip(skip) {
        match ev {
            StreamEvent::Header(h) => m.handle_header(h),
            StreamEvent::Element(e) => m.handle_element(e),
            StreamEvent::End => m.handle_end(),
            StreamEvent::Keepalive => {}
        }
    }
}

#[test]
fn outbound_dialback_against_prosodys_recorded_stream() {
    let mut m = OutboundStream::new(
        outbound_cfg(None, false),
        d("ring.test"),
        d("b.test"),
        Purpose::Stanzas,
    );
    let w = written_out(&drain_out(&mut m));
    assert!(
        w.contains("from='ring.test' to='b.test'")
            && w.contains("xmlns:db='jabber:server:dialback'"),
        "{w}"
    );
    feed(&mut m, &format!("{PROSODY_HEADER}{PROSODY_FEATURES}"), 0);
    assert_eq!(
        drain_out(&mut m),
        vec![OutboundOutput::Write(
            "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>".into()
        )]
    );
    feed(
        &mut m,
        &format!("{PROSODY_HEADER}{PROSODY_FEATURES}{PROSODY_PROCEED}"),
        2,
    );
    assert_eq!(drain_out(&mut m), vec![OutboundOutput::StartTls]);
    m.handle_tls(&[]);
    let outs = drain_out(&mut m);
    assert_eq!(outs[0], OutboundOutput::Restart);
    assert!(written_out(&outs).contains("to='b.test'"));
    feed(
        &mut m,
        &format!("{PROSODY_TLS_HEADER}{PROSODY_TLS_FEATURES}"),
        0,
    );
    let outs = drain_out(&mut m);
    let key = Secret::new(SECRET)
        .key(
            &d("b.test"),
            &d("ring.test"),
            "9f93ce97-11f7-4f37-a34e-09bf8aec63dc",
        )
        .unwrap();
    assert_eq!(
        written_out(&outs),
        format!("<db:result from='ring.test' to='b.test'>{key}</db:result>")
    );
    feed(
        &mut m,
        &format!("{PROSODY_TLS_HEADER}{PROSODY_TLS_FEATURES}{PROSODY_VALID}"),
        2,
    );
    let outs = drain_out(&mut m);
    assert!(outs.contains(&OutboundOutput::Ready), "{outs:?}");
    assert!(m.is_ready() && m.is_tls());
}

#[test]
fn outbound_refuses_unusable_stream_ids() {
    for id in ["ring.test S", "", "a\u{1}b"] {
        let mut m = OutboundStream::new(
            outbound_cfg(None, false),
            d("ring.test"),
            d("evil.com"),
            Purpose::Stanzas,
        );
        drain_out(&mut m);
        m.handle_tls(&[]);
        drain_out(&mut m);
        let h = format!(
            "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' id='{id}' from='evil.com' version='1.0'>{PROSODY_TLS_FEATURES}"
        );
        feed(&mut m, &h, 0);
        let outs = drain_out(&mut m);
        assert!(
            !written_out(&outs).contains("db:result"),
            "no key for {id:?}"
        );
        assert!(failed(&outs).is_some(), "{id:?}: {outs:?}");
    }
}

#[test]
fn outbound_certificate_checks() {
    let ca = test_ca();
    let run = |chain: Vec<CertificateDer<'static>>, secure: bool| {
        let mut m = OutboundStream::new(
            outbound_cfg(Some(roots(&ca)), secure),
            d("ring.test"),
            d("b.test"),
            Purpose::Stanzas,
        );
        drain_out(&mut m);
        feed(
            &mut m,
            &format!("{PROSODY_HEADER}{PROSODY_FEATURES}{PROSODY_PROCEED}"),
            0,
        );
        drain_out(&mut m);
        m.handle_tls(&chain);
        drain_out(&mut m)
    };
    // secure_auth: only a certificate valid for b.test will do.
    assert!(failed(&run(chain_for(&ca, "b.test"), true)).is_none());
    let f = run(chain_for(&ca, "evil.test"), true);
    assert!(
        matches!(failed(&f), Some(Failure::Refused(m)) if m.contains("does not validate")),
        "{f:?}"
    );
    assert!(failed(&run(Vec::new(), true)).is_some());
    // Without it, dialback carries on over TLS (Prosody's default).
    assert!(failed(&run(chain_for(&ca, "evil.test"), false)).is_none());
}

#[test]
fn outbound_answers_db_verify_and_falls_back_from_sasl() {
    let mut m = OutboundStream::new(
        outbound_cfg(None, false),
        d("ring.test"),
        d("b.test"),
        Purpose::Stanzas,
    );
    drain_out(&mut m);
    m.handle_tls(&[]);
    drain_out(&mut m);
    let features = "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>";
    let doc = format!("{PROSODY_TLS_HEADER}{features}");
    feed(&mut m, &doc, 0);
    assert!(written_out(&drain_out(&mut m)).contains("mechanism='EXTERNAL'"));
    // Prosody asks us to verify a key on this stream before it is ours.
    let key = Secret::new(SECRET)
        .key(&d("b.test"), &d("ring.test"), "S")
        .unwrap();
    let doc = format!(
        "{doc}<db:verify xmlns:db='jabber:server:dialback' from='b.test' to='ring.test' id='S'>{key}</db:verify>\
         <failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>"
    );
    feed(&mut m, &doc, 2);
    let outs = drain_out(&mut m);
    assert!(
        outs.contains(&OutboundOutput::VerifyAnswered { valid: true }),
        "{outs:?}"
    );
    let w = written_out(&outs);
    assert!(
        w.contains("type='valid'") && w.contains("<db:result"),
        "{w}"
    );
    // The remote refuses our key: the stream fails.
    let doc = format!(
        "{doc}<db:result xmlns:db='jabber:server:dialback' from='b.test' to='ring.test' type='invalid'/>"
    );
    feed(&mut m, &doc, 4);
    assert!(failed(&drain_out(&mut m)).is_some());
}

#[test]
fn outbound_stream_errors_and_ends_fail_the_stream() {
    for tail in [
        "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
        "</stream:stream>",
        "<iq xmlns='jabber:server' type='get'/>",
    ] {
        let mut m = OutboundStream::new(
            outbound_cfg(None, false),
            d("ring.test"),
            d("b.test"),
            Purpose::Stanzas,
        );
        drain_out(&mut m);
        feed(&mut m, &format!("{PROSODY_HEADER}{tail}"), 0);
        assert!(failed(&drain_out(&mut m)).is_some(), "{tail}");
    }
    // Without STARTTLS offered and TLS required: refused.
    let mut m = OutboundStream::new(
        outbound_cfg(None, false),
        d("ring.test"),
        d("b.test"),
        Purpose::Stanzas,
    );
    drain_out(&mut m);
    feed(
        &mut m,
        &format!("{PROSODY_HEADER}{PROSODY_TLS_FEATURES}"),
        0,
    );
    assert!(failed(&drain_out(&mut m)).is_some());
}

// ------------------------------------------------ pairs of our machines

/// One direction of an in-memory connection: the current document so far
/// and how many of its events were delivered.
#[derive(Default)]
struct Wire {
    doc: String,
    seen: usize,
}

impl Wire {
    fn fresh(&mut self) -> Vec<StreamEvent> {
        let evs = events(&self.doc);
        let new = evs[self.seen.min(evs.len())..].to_vec();
        self.seen = evs.len();
        new
    }

    fn restart(&mut self) {
        self.doc.clear();
        self.seen = 0;
    }
}

struct PairResult {
    inbound: InboundStream,
    outbound: OutboundStream,
    verifies: usize,
}

/// Runs our outbound machine (for ring.test → b.test, with `out_secret`)
/// against our inbound machine (b.test's edge) until both are quiet.
/// `authoritative` answers the inbound side's dialback checks as the
/// originating domain's server would.
fn run_pair(
    mut inbound: InboundStream,
    mut outbound: OutboundStream,
    out_chain: Vec<CertificateDer<'static>>,
    authoritative: &Secret,
) -> PairResult {
    let t0 = Instant::now();
    let (mut to_in, mut to_out) = (Wire::default(), Wire::default());
    let (mut in_tls, mut out_tls) = (false, false);
    let mut verifies = 0;
    for _ in 0..50 {
        let mut quiet = true;
        while let Some(o) = outbound.poll_output() {
            quiet = false;
            match o {
                OutboundOutput::Write(s) => to_in.doc.push_str(&s),
                OutboundOutput::StartTls => out_tls = true,
                OutboundOutput::Restart => to_out.restart(),
                _ => {}
            }
        }
        for ev in to_in.fresh() {
            quiet = false;
            match ev {
                StreamEvent::Header(h) => inbound.handle_header(t0, h),
                StreamEvent::Element(e) => inbound.handle_element(t0, e),
                StreamEvent::End => inbound.handle_end(),
                StreamEvent::Keepalive => {}
            }
        }
        while let Some(o) = inbound.poll_output() {
            quiet = false;
            match o {
                InboundOutput::Write(s) => to_out.doc.push_str(&s),
                InboundOutput::StartTls => in_tls = true,
                InboundOutput::Restart => to_in.restart(),
                InboundOutput::Verify(req) => {
                    verifies += 1;
                    let ok = authoritative.verify(
                        &req.receiving,
                        &req.originating,
                        &req.stream_id,
                        &req.key,
                    );
                    inbound.handle_verified(
                        &req.originating,
                        &req.receiving,
                        if ok { Verdict::Valid } else { Verdict::Invalid },
                    );
                }
                _ => {}
            }
        }
        for ev in to_out.fresh() {
            quiet = false;
            match ev {
                StreamEvent::Header(h) => outbound.handle_header(h),
                StreamEvent::Element(e) => outbound.handle_element(e),
                StreamEvent::End => outbound.handle_end(),
                StreamEvent::Keepalive => {}
            }
        }
        if in_tls && out_tls {
            // Both sides switched to TLS: new documents both ways.
            in_tls = false;
            out_tls = false;
            to_in.restart();
            to_out.restart();
            inbound.handle_tls(t0, out_chain.clone());
            outbound.handle_tls(&[]);
            quiet = false;
        }
        if quiet {
            break;
        }
    }
    PairResult {
        inbound,
        outbound,
        verifies,
    }
}

fn b_inbound(roots: Option<RootCertStore>) -> InboundStream {
    let cfg = Arc::new(InboundConfig {
        served: Served::new(&["b.test"]).unwrap(),
        secret: Secret::new(b"b's own secret"),
        roots: roots.map(Arc::new),
        header_timeout: Duration::from_secs(30),
        auth_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(600),
        max_pending_dialback: 8,
    });
    InboundStream::new(cfg, Instant::now(), 11)
}

#[test]
fn pair_negotiates_by_dialback() {
    let out = OutboundStream::new(
        outbound_cfg(None, false),
        d("ring.test"),
        d("b.test"),
        Purpose::Stanzas,
    );
    let r = run_pair(b_inbound(None), out, Vec::new(), &Secret::new(SECRET));
    assert!(r.outbound.is_ready() && r.outbound.is_tls());
    assert!(r.inbound.is_authenticated());
    assert_eq!(r.verifies, 1);
    // With the wrong secret at the authoritative server: refused.
    let out = OutboundStream::new(
        outbound_cfg(None, false),
        d("ring.test"),
        d("b.test"),
        Purpose::Stanzas,
    );
    let r = run_pair(b_inbound(None), out, Vec::new(), &Secret::new(b"another"));
    assert!(r.outbound.is_failed());
    assert!(!r.inbound.is_authenticated());
}

#[test]
fn pair_negotiates_by_sasl_external() {
    let ca = test_ca();
    let out = OutboundStream::new(
        outbound_cfg(None, false),
        d("ring.test"),
        d("b.test"),
        Purpose::Stanzas,
    );
    let r = run_pair(
        b_inbound(Some(roots(&ca))),
        out,
        chain_for(&ca, "ring.test"),
        &Secret::new(b"unused"),
    );
    assert!(r.outbound.is_ready(), "ready after SASL and the restart");
    assert!(r.inbound.is_authenticated());
    assert_eq!(r.verifies, 0, "no dialback needed");
}
