//! Two edges federating with each other over real sockets and real TLS on
//! 127.0.0.1: dialback (with verification connections), SASL EXTERNAL with
//! a CA both trust, and bounces for unreachable domains.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use xmpp_edge::dialback::Secret;
use xmpp_edge::resolve::Resolver;
use xmpp_edge::tls::{Identity, self_signed};
use xmpp_edge::{EdgeConfig, EdgeEvent, EdgeHandle};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

fn ca() -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: rcgen::Issuer::new(params, key),
    }
}

fn issued(ca: &Ca, domain: &str) -> Identity {
    let mut params =
        rcgen::CertificateParams::new(vec![domain.to_string(), format!("*.{domain}")]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, domain);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    Identity {
        chain: vec![cert.der().clone()],
        key: rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    }
}

fn roots(ca: &Ca) -> rustls::RootCertStore {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ca.pem");
    std::fs::write(&p, &ca.pem).unwrap();
    xmpp_edge::tls::load_roots(&p).unwrap()
}

async fn edge(
    domain: &str,
    port: u16,
    peers: &[(&str, u16)],
    id: Identity,
    roots: Option<rustls::RootCertStore>,
) -> (EdgeHandle, mpsc::Receiver<EdgeEvent>) {
    edge_with(domain, port, peers, id, roots, false).await
}

async fn edge_with(
    domain: &str,
    port: u16,
    peers: &[(&str, u16)],
    id: Identity,
    roots: Option<rustls::RootCertStore>,
    secure_auth: bool,
) -> (EdgeHandle, mpsc::Receiver<EdgeEvent>) {
    let overrides: HashMap<String, (String, u16)> = peers
        .iter()
        .map(|(d, p)| (d.to_string(), ("127.0.0.1".to_string(), *p)))
        .collect();
    let resolver = Resolver::new(Some("127.0.0.1:9".parse().unwrap()), overrides).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cfg = EdgeConfig::new(
        vec![domain.into()],
        listen,
        id,
        Secret::new(format!("secret-of-{domain}").as_bytes()),
        resolver,
    );
    cfg.roots = roots;
    cfg.secure_auth = secure_auth;
    cfg.handshake_timeout = Duration::from_secs(10);
    let (tx, rx) = mpsc::channel(64);
    (xmpp_edge::start(cfg, tx).await.unwrap(), rx)
}

fn message(from: &str, to: &str, body: &str) -> Element {
    format!("<message xmlns='jabber:client' from='{from}' to='{to}' type='chat'><body>{body}</body></message>")
        .parse()
        .unwrap()
}

async fn expect_inbound(rx: &mut mpsc::Receiver<EdgeEvent>) -> Element {
    match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
        Ok(Some(EdgeEvent::Inbound(e))) => e,
        other => panic!("expected an inbound stanza, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialback_both_ways_with_untrusted_certificates() {
    let (pa, pb) = (free_port(), free_port());
    let (a, mut a_rx) = edge(
        "a.test",
        pa,
        &[("b.test", pb)],
        self_signed(&["a.test".into()]).unwrap().0,
        None,
    )
    .await;
    let (b, mut b_rx) = edge(
        "b.test",
        pb,
        &[("a.test", pa)],
        self_signed(&["b.test".into()]).unwrap().0,
        None,
    )
    .await;
    a.send(message("alice@a.test/phone", "bob@b.test", "hello bob"))
        .unwrap();
    let got = expect_inbound(&mut b_rx).await;
    assert_eq!(got.ns(), "jabber:client");
    assert_eq!(got.attr("from"), Some("alice@a.test/phone"));
    assert_eq!(
        got.get_child("body", "jabber:client").map(|b| b.text()),
        Some("hello bob".into())
    );
    b.send(message("bob@b.test", "alice@a.test", "hi alice"))
        .unwrap();
    let got = expect_inbound(&mut a_rx).await;
    assert_eq!(got.attr("to"), Some("alice@a.test"));
    // Both directions authenticated by dialback (verified over a separate
    // connection to the originating server), none by SASL.
    assert!(a.stats().dialback_ok.load(Ordering::Relaxed) >= 1);
    assert!(b.stats().dialback_ok.load(Ordering::Relaxed) >= 1);
    assert_eq!(a.stats().sasl_external_ok.load(Ordering::Relaxed), 0);
    // Many stanzas keep their order on the one stream.
    for i in 0..200 {
        a.send(message("alice@a.test", "bob@b.test", &i.to_string()))
            .unwrap();
    }
    for i in 0..200 {
        let m = expect_inbound(&mut b_rx).await;
        assert_eq!(
            m.get_child("body", "jabber:client").map(|b| b.text()),
            Some(i.to_string())
        );
    }
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_external_with_a_shared_ca() {
    let ca = ca();
    let (pa, pb) = (free_port(), free_port());
    let (a, _a_rx) = edge(
        "a.test",
        pa,
        &[("b.test", pb)],
        issued(&ca, "a.test"),
        Some(roots(&ca)),
    )
    .await;
    let (b, mut b_rx) = edge(
        "b.test",
        pb,
        &[("a.test", pa)],
        issued(&ca, "b.test"),
        Some(roots(&ca)),
    )
    .await;
    a.send(message("alice@a.test", "bob@b.test", "over EXTERNAL"))
        .unwrap();
    let got = expect_inbound(&mut b_rx).await;
    assert_eq!(got.attr("from"), Some("alice@a.test"));
    assert!(
        a.stats().sasl_external_ok.load(Ordering::Relaxed) >= 1,
        "outbound used EXTERNAL"
    );
    assert!(
        b.stats().sasl_external_ok.load(Ordering::Relaxed) >= 1,
        "inbound accepted EXTERNAL"
    );
    assert_eq!(b.stats().dialback_ok.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_domains_bounce_every_queued_stanza() {
    let closed = free_port();
    let (a, mut a_rx) = edge(
        "a.test",
        free_port(),
        &[("gone.test", closed)],
        self_signed(&["a.test".into()]).unwrap().0,
        None,
    )
    .await;
    for i in 0..5 {
        a.send(message("alice@a.test", "x@gone.test", &i.to_string()))
            .unwrap();
    }
    // And a stanza for a domain nobody knows about at all.
    a.send(message("alice@a.test", "x@nowhere.test", "?"))
        .unwrap();
    let mut conditions = Vec::new();
    while conditions.len() < 6 {
        match tokio::time::timeout(Duration::from_secs(15), a_rx.recv()).await {
            Ok(Some(EdgeEvent::Undeliverable(u))) => conditions.push(u.condition),
            other => panic!("expected a bounce, got {other:?}"),
        }
    }
    assert!(
        conditions
            .iter()
            .all(|c| *c == DefinedCondition::RemoteServerNotFound),
        "{conditions:?}"
    );
    // Stanzas that are not ours to send are refused at once.
    let refused = a
        .send(message("alice@elsewhere.test", "x@b.test", "spoof"))
        .unwrap_err();
    assert_eq!(refused.condition, DefinedCondition::NotAllowed);
    let refused = a
        .send(message("alice@a.test", "x@b test", "bad jid"))
        .unwrap_err();
    assert_eq!(refused.condition, DefinedCondition::JidMalformed);
}

/// With `secure_auth`, a remote whose certificate does not validate gets
/// nothing: the stanzas bounce and the refusal is counted; a remote with a
/// valid certificate is reached as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_auth_refuses_remotes_with_unverifiable_certificates() {
    let ca = ca();
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let (a, mut a_rx) = edge_with(
        "a.test",
        pa,
        &[("b.test", pb), ("c.test", pc)],
        issued(&ca, "a.test"),
        Some(roots(&ca)),
        true,
    )
    .await;
    let (_b, mut b_rx) = edge(
        "b.test",
        pb,
        &[("a.test", pa)],
        issued(&ca, "b.test"),
        Some(roots(&ca)),
    )
    .await;
    // c.test presents a self-signed certificate.
    let (_c, mut c_rx) = edge(
        "c.test",
        pc,
        &[("a.test", pa)],
        self_signed(&["c.test".into()]).unwrap().0,
        None,
    )
    .await;
    a.send(message("alice@a.test", "bob@b.test", "verified"))
        .unwrap();
    let got = expect_inbound(&mut b_rx).await;
    assert_eq!(got.attr("to"), Some("bob@b.test"));
    a.send(message(
        "alice@a.test",
        "carol@c.test",
        "not to an impostor",
    ))
    .unwrap();
    match tokio::time::timeout(Duration::from_secs(15), a_rx.recv()).await {
        Ok(Some(EdgeEvent::Undeliverable(u))) => {
            assert_eq!(u.condition, DefinedCondition::RemoteServerTimeout);
            assert_eq!(u.stanza.attr("to"), Some("carol@c.test"));
        }
        other => panic!("expected a bounce, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), c_rx.recv())
            .await
            .is_err(),
        "nothing reached c.test"
    );
    assert_eq!(a.stats().certificates_refused.load(Ordering::Relaxed), 1);
}
