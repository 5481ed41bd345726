//! Hostile peers against a real edge over real sockets and real TLS on
//! loopback: each test plays an attacker the way a server on the internet
//! could, and checks that the edge neither lets it in as someone else nor
//! lets it pin resources down. Each of these failed against the edge
//! before the hostile-peers work (issue 11).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use xmpp_edge::dialback::Secret;
use xmpp_edge::resolve::Resolver;
use xmpp_edge::tls::{Identity, self_signed};
use xmpp_edge::{EdgeConfig, EdgeEvent, EdgeHandle};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

const W: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(domain: &str, port: u16, routes: &[(&str, u16)]) -> EdgeConfig {
    let overrides: HashMap<String, (String, u16)> = routes
        .iter()
        .map(|(d, p)| (d.to_string(), ("127.0.0.1".to_string(), *p)))
        .collect();
    let resolver = Resolver::new(Some("127.0.0.1:9".parse().unwrap()), overrides).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cfg = EdgeConfig::new(
        vec![domain.into()],
        listen,
        self_signed(&[domain.into()]).unwrap().0,
        Secret::new(b"the ring's secret"),
        resolver,
    );
    cfg.handshake_timeout = Duration::from_secs(5);
    cfg
}

async fn start(cfg: EdgeConfig) -> (EdgeHandle, mpsc::Receiver<EdgeEvent>) {
    let (tx, rx) = mpsc::channel(1024);
    (xmpp_edge::start(cfg, tx).await.unwrap(), rx)
}

fn message(from: &str, to: &str, body: &str) -> Element {
    format!("<message xmlns='jabber:client' from='{from}' to='{to}' type='chat'><body>{body}</body></message>")
        .parse()
        .unwrap()
}

fn header(to: &str, from: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns:db='jabber:server:dialback' to='{to}' from='{from}' version='1.0'>"
    )
}

fn header_with_id(from: &str, to: &str, id: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns:db='jabber:server:dialback' from='{from}' to='{to}' id='{id}' version='1.0'>"
    )
}

trait RawIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> RawIo for T {}

/// A scripted peer: writes what the test says, reads what comes.
struct Raw {
    io: Box<dyn RawIo>,
    got: String,
}

impl Raw {
    fn new(io: impl RawIo + 'static) -> Raw {
        Raw {
            io: Box::new(io),
            got: String::new(),
        }
    }

    async fn write(&mut self, s: &str) {
        let _ = self.io.write_all(s.as_bytes()).await;
        let _ = self.io.flush().await;
    }

    async fn read_until(&mut self, needle: &str) -> bool {
        let end = tokio::time::Instant::now() + W;
        let mut buf = [0u8; 4096];
        loop {
            if self.got.contains(needle) {
                return true;
            }
            match tokio::time::timeout_at(end, self.io.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.got.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => return false,
            }
        }
    }

    async fn closed(&mut self, within: Duration) -> bool {
        let end = tokio::time::Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(end, self.io.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.got.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => return false,
            }
        }
    }

    /// STARTTLS as the initiating side, then the post-TLS header.
    async fn client_tls(mut self, to: &str, from: &str, id: &Identity) -> Raw {
        self.write("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        assert!(self.read_until("<proceed").await, "{}", self.got);
        let cfg = xmpp_edge::tls::client_config(id).unwrap();
        let name = rustls::pki_types::ServerName::try_from(to.to_string()).unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, self.io)
            .await
            .expect("TLS");
        let mut r = Raw::new(tls);
        r.write(&header(to, from)).await;
        assert!(r.read_until("</stream:features>").await, "{}", r.got);
        r
    }
}

/// The id in the first stream header of `s`.
fn stream_id(s: &str) -> String {
    let i = s.find(" id='").expect("an id") + 5;
    s[i..i + s[i..].find('\'').unwrap()].to_string()
}

/// An attacker-run s2s server for `domain`: on every connection it sends
/// its header with stream id `id`, offers STARTTLS, then dialback, and
/// records whatever it is sent.
async fn evil_server(
    domain: &'static str,
    id: Arc<tokio::sync::Mutex<String>>,
) -> (u16, Arc<tokio::sync::Mutex<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(tokio::sync::Mutex::new(String::new()));
    let identity = self_signed(&[domain.into()]).unwrap().0;
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen2.clone();
            let id = id.lock().await.clone();
            let server_tls = xmpp_edge::tls::server_config(&identity).unwrap();
            tokio::spawn(async move {
                let mut r = Raw::new(tcp);
                if !r.read_until("<stream:stream").await {
                    return;
                }
                r.write(&format!("{}<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>", header_with_id(domain, "ring.test", &id))).await;
                if !r.read_until("<starttls").await {
                    return;
                }
                r.write("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                    .await;
                let Ok(tls) = tokio_rustls::TlsAcceptor::from(server_tls)
                    .accept(r.io)
                    .await
                else {
                    return;
                };
                let mut r = Raw::new(tls);
                if !r.read_until("<stream:stream").await {
                    return;
                }
                r.write(&format!("{}<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>", header_with_id(domain, "ring.test", &id))).await;
                r.closed(Duration::from_secs(3)).await;
                seen.lock().await.push_str(&r.got);
            });
        }
    });
    (port, seen)
}

/// The review's exploit, end to end: an attacker who owns evil.test makes
/// the ring's edge open a stream to it, answers with the stream id
/// `"ring.test S"` (S: the id the edge gave the attacker's own inbound
/// stream) to obtain a key that reads as one for `ring.test`, then
/// presents it on its inbound stream as `from='ring.test'` to send as the
/// ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attackers_stream_cannot_authenticate_ring_test() {
    // The attacker's inbound stream first, to learn S.
    let port = free_port();
    let mut cfg = config("ring.test", port, &[]);
    let evil_id = Arc::new(tokio::sync::Mutex::new(String::new()));
    let (evil_port, seen) = evil_server("evil.test", evil_id.clone()).await;
    let overrides: HashMap<String, (String, u16)> = [(
        "evil.test".to_string(),
        ("127.0.0.1".to_string(), evil_port),
    )]
    .into();
    cfg.resolver = Resolver::new(Some("127.0.0.1:9".parse().unwrap()), overrides).unwrap();
    let (edge, mut events) = start(cfg).await;
    let attacker_id = self_signed(&["evil.test".into()]).unwrap().0;
    let mut r = Raw::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    r.write(&header("ring.test", "evil.test")).await;
    assert!(r.read_until("</stream:features>").await);
    let mut r = r.client_tls("ring.test", "evil.test", &attacker_id).await;
    *evil_id.lock().await = format!("ring.test {}", stream_id(&r.got));
    // The ring sends to evil.test (a reply, a bounce, anything): the edge
    // opens a stream to the attacker's server, which answers with a
    // stream id containing a space. No key may be computed over it.
    edge.send(message("bot@ring.test", "x@evil.test", "hello"))
        .unwrap();
    let bounced = tokio::time::timeout(W, events.recv()).await;
    match bounced {
        Ok(Some(EdgeEvent::Undeliverable(u))) => {
            assert_eq!(u.condition, DefinedCondition::RemoteServerTimeout);
            assert_eq!(u.stanza.attr("to"), Some("x@evil.test"));
        }
        other => panic!("expected the stanza back, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = seen.lock().await.clone();
    assert!(
        !got.contains("result"),
        "the edge sent a dialback key over an ambiguous stream id: {got}"
    );
    // Whatever key the attacker presents, claiming the ring's domain
    // (alone, or smuggled into `to`) gets it nowhere.
    for (from, to) in [
        ("ring.test", "evil.test pubsub.ring.test"),
        ("ring.test", "ring.test"),
        ("pubsub.ring.test", "ring.test"),
    ] {
        r.write(&format!(
            "<db:result from='{from}' to='{to}'>0123456789abcdef</db:result>"
        ))
        .await;
        assert!(
            r.read_until(&format!("to='{from}' type='invalid'")).await
                || r.got.contains("type='error'"),
            "{from} -> {to}: {}",
            r.got
        );
        assert!(!r.got.contains("type='valid'"), "{}", r.got);
    }
    r.write("<message from='admin@ring.test' to='x@ring.test'><body>as the ring</body></message>")
        .await;
    assert!(
        r.read_until("not-authorized").await,
        "a stanza from ring.test is refused: {}",
        r.got
    );
    assert!(r.closed(W).await);
    assert!(
        events.try_recv().is_err(),
        "nothing reached the ring from the attacker"
    );
    assert_eq!(edge.stats().dialback_ok.load(Ordering::Relaxed), 0);
    edge.shutdown(W).await;
}

/// A listener that accepts connections, counts them, and never answers
/// (a tarpit the edge is made to verify keys with).
async fn tarpit() -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (total, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (t, o) = (total.clone(), open.clone());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            t.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let o = o.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (port, total, open)
}

/// Each `db:result` makes the edge contact the claimed domain's server:
/// an attacker naming many domains must not make it open unbounded
/// connections to third parties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialback_floods_open_a_bounded_number_of_verification_connections() {
    let (pit, total, open) = tarpit().await;
    let port = free_port();
    let domains: Vec<String> = (0..200).map(|i| format!("victim{i}.test")).collect();
    let routes: Vec<(&str, u16)> = domains.iter().map(|d| (d.as_str(), pit)).collect();
    let mut cfg = config("ring.test", port, &routes);
    cfg.max_verifications = 4;
    cfg.max_inbound_per_ip = 1000;
    cfg.inbound_rate_per_ip = 10_000.0;
    let (edge, _events) = start(cfg).await;
    let id = self_signed(&["evil.test".into()]).unwrap().0;
    // 25 streams, each with 8 claims (its per-stream maximum).
    let mut streams = Vec::new();
    for s in 0..25 {
        let mut r = Raw::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        r.write(&header("ring.test", "evil.test")).await;
        assert!(r.read_until("</stream:features>").await);
        let mut r = r.client_tls("ring.test", "evil.test", &id).await;
        for k in 0..8 {
            let d = &domains[s * 8 + k];
            r.write(&format!(
                "<db:result from='{d}' to='ring.test'>key</db:result>"
            ))
            .await;
        }
        streams.push(r);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        open.load(Ordering::SeqCst) <= 4 && total.load(Ordering::SeqCst) <= 4,
        "{} connections to third parties (at most 4 allowed)",
        total.load(Ordering::SeqCst)
    );
    let refused = edge.stats().verifications_refused.load(Ordering::Relaxed);
    assert!(refused >= 190, "{refused} claims refused at once");
    // The refusals reached the attacker as dialback errors.
    let mut errors = 0;
    for r in streams.iter_mut() {
        r.read_until("resource-constraint").await;
        errors += r.got.matches("resource-constraint").count();
    }
    assert!(errors >= 190, "{errors} error answers");
    edge.shutdown(W).await;
}

/// A remote server that completes dialback and then never reads: the
/// edge's writes time out, the stanzas that could not be written come
/// back to their senders, and shutdown does not hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_that_stops_reading_gets_stanzas_bounced_not_stuck() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_port = listener.local_addr().unwrap().port();
    let identity = self_signed(&["slow.test".into()]).unwrap().0;
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut r = Raw::new(tcp);
        r.read_until("<stream:stream").await;
        r.write(&format!("{}<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>", header_with_id("slow.test", "a.test", "s1"))).await;
        r.read_until("<starttls").await;
        r.write("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let server_tls = xmpp_edge::tls::server_config(&identity).unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(server_tls)
            .accept(r.io)
            .await
            .unwrap();
        let mut r = Raw::new(tls);
        r.read_until("<stream:stream").await;
        r.write(&format!(
            "{}<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
            header_with_id("slow.test", "a.test", "s2")
        ))
        .await;
        r.read_until("</db:result>").await;
        r.write("<db:result from='slow.test' to='a.test' type='valid'/>")
            .await;
        // Never read again; hold the connection.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(r);
    });
    let mut cfg = config("a.test", free_port(), &[("slow.test", slow_port)]);
    cfg.write_timeout = Duration::from_secs(2);
    let (edge, mut events) = start(cfg).await;
    let body = "x".repeat(16 * 1024);
    let sent = 2000;
    // Past the queue's byte bound (16 MiB) stanzas are refused at once.
    let mut bounced = 0;
    for i in 0..sent {
        if let Err(u) = edge.send(message(
            "alice@a.test",
            "bob@slow.test",
            &format!("{i} {body}"),
        )) {
            assert_eq!(u.condition, DefinedCondition::ResourceConstraint);
            bounced += 1;
        }
    }
    assert!(bounced > 0, "the byte bound refused some at once");
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        let out = edge.stats().stanzas_out.load(Ordering::Relaxed) as usize;
        if out + bounced == sent {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
            Ok(Some(EdgeEvent::Undeliverable(u))) => {
                assert_eq!(u.condition, DefinedCondition::RemoteServerTimeout);
                bounced += 1;
            }
            Ok(_) => panic!("unexpected event"),
            Err(_) => {}
        }
    }
    let out = edge.stats().stanzas_out.load(Ordering::Relaxed) as usize;
    assert_eq!(out + bounced, sent, "every stanza written or bounced");
    assert!(edge.stats().write_timeouts.load(Ordering::Relaxed) >= 1);
    let t = Instant::now();
    edge.shutdown(W).await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown is not held up"
    );
}

/// One source holding many idle connections shuts nobody else out, and
/// streams that never authenticate are closed at the auth deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_are_capped_and_expire() {
    let port = free_port();
    let mut cfg = config("ring.test", port, &[]);
    cfg.max_inbound = 100;
    cfg.max_inbound_per_ip = 10;
    cfg.inbound_rate_per_ip = 10_000.0;
    cfg.auth_timeout = Duration::from_secs(2);
    let (edge, _events) = start(cfg).await;
    let mut held = Vec::new();
    for _ in 0..150 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        let mut tcp = s
            .connect(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap();
        let _ = tcp
            .write_all(header("ring.test", "idle.test").as_bytes())
            .await;
        held.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = edge.stats();
    assert_eq!(stats.inbound_refused_per_ip.load(Ordering::Relaxed), 140);
    assert_eq!(stats.inbound_open.load(Ordering::Relaxed), 10);
    // Another address still gets in.
    let mut r = Raw::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    r.write(&header("ring.test", "honest.test")).await;
    assert!(r.read_until("</stream:features>").await, "{}", r.got);
    // The idle ones never authenticated: closed at the deadline.
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    for tcp in held.iter_mut().take(10) {
        loop {
            match tokio::time::timeout(W, tcp.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue,
                Err(_) => panic!("an idle stream was not closed"),
            }
        }
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(stats.auth_timeouts.load(Ordering::Relaxed) >= 10);
    edge.shutdown(W).await;
}

/// A host that connects and disconnects in a loop (each connection costs a
/// TLS handshake) is held to its rate; a second host is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_churn_from_one_address_is_rate_limited() {
    let port = free_port();
    let mut cfg = config("ring.test", port, &[]);
    cfg.inbound_rate_per_ip = 10.0;
    let (edge, _events) = start(cfg).await;
    let mut answered = 0;
    for _ in 0..100 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.5:0".parse().unwrap()).unwrap();
        let Ok(tcp) = s
            .connect(format!("127.0.0.1:{port}").parse().unwrap())
            .await
        else {
            continue;
        };
        let mut r = Raw::new(tcp);
        r.write(&header("ring.test", "churn.test")).await;
        if r.read_until("</stream:features>").await {
            answered += 1;
        }
    }
    let refused = edge.stats().inbound_refused_rate.load(Ordering::Relaxed);
    assert!(
        answered <= 30 && refused >= 70,
        "{answered} answered, {refused} refused"
    );
    let mut r = Raw::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    r.write(&header("ring.test", "honest.test")).await;
    assert!(r.read_until("</stream:features>").await, "{}", r.got);
    edge.shutdown(W).await;
}
