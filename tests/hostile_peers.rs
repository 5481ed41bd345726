//! Hostile peers against a real ring edge process, with a real Prosody
//! federating beside them: what one attacking host can do to the edge
//! must not shut the honest federation out or grow the edge without bound.
//! Both tests failed against the edge before the hostile-peers work: 1,023
//! idle connections from one address made Prosody's stream fail
//! (`remote-server-not-found`), and a `db:verify` flood from a peer that
//! never reads grew the edge from 32 MB to 805 MB in 4.5 s.

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use support::client::XmppClient;
use support::dns::DnsServer;
use support::prosody::ProsodyOptions;
use support::raw::{Raw, header, rss_bytes};
use support::{prosody_with_own_ca, require_prosody, ring_with_edge_args, status};
use xmpp_parsers::minidom::Element;

const PROSODY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The attacker's host.
const ATTACKER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const EDGE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const W: Duration = Duration::from_secs(20);

fn el(s: &str) -> Element {
    s.parse().expect("xml")
}

async fn ping_ring(alice: &mut XmppClient, id: &str) -> Element {
    alice
        .send(el(&format!("<iq xmlns='jabber:client' type='get' id='{id}' to='ring.test'><ping xmlns='urn:xmpp:ping'/></iq>")))
        .await;
    alice
        .recv(W, |e| e.attr("id") == Some(id))
        .await
        .unwrap_or_else(|| panic!("no answer to {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_do_not_stop_a_real_prosody_from_federating() {
    require_prosody();
    let dir = tempfile::tempdir().expect("tmp");
    let dns = DnsServer::start();
    let prosody = prosody_with_own_ca(
        dir.path(),
        &dns,
        "a.test",
        PROSODY_IP,
        &[("alice", "pw")],
        ProsodyOptions::default(),
    );
    let ring = ring_with_edge_args(
        dir.path(),
        &dns,
        2,
        EDGE_IP,
        &["ring.test"],
        &["--s2s-auth-timeout-s", "4"],
    );
    let edge = ring.nodes.len() - 1;
    let port = ring.nodes[edge]
        .args
        .windows(2)
        .find(|w| w[0] == "--s2s-listen")
        .and_then(|w| w[1].rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .expect("s2s port");
    // One host opens 1,100 connections, says hello on each and goes quiet.
    let mut held = Vec::new();
    for _ in 0..1100 {
        match Raw::connect_from(ATTACKER_IP, (EDGE_IP, port)).await {
            Ok(mut r) => {
                r.write(&header("ring.test", "idle.test", "jabber:server"))
                    .await;
                held.push(r);
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let e = status(&ring, edge).edge.expect("edge report");
    assert!(
        e.inbound_refused_per_ip + e.inbound_refused_rate >= 1000,
        "one address holds at most 64, opened at 20 per second: {e:?}"
    );
    // Meanwhile the real federation gets through.
    let mut alice = XmppClient::connect("alice@a.test", "pw", &prosody.c2s()).await;
    let r = ping_ring(&mut alice, "p1").await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}\n{}", prosody.log());
    // The idle streams never authenticate: closed at the deadline (4 s).
    let start = Instant::now();
    let mut closed = 0;
    for r in held.iter_mut() {
        if r.closed(Duration::from_millis(50)).await {
            closed += 1;
        }
    }
    let mut waited = 0;
    while closed < held.len() && start.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        waited += 1;
        closed = 0;
        for r in held.iter_mut() {
            if r.closed(Duration::from_millis(5)).await {
                closed += 1;
            }
        }
    }
    assert_eq!(closed, held.len(), "after {waited} checks");
    let e = status(&ring, edge).edge.expect("edge report");
    assert!(e.auth_timeouts >= 30, "{e:?}");
    let m = xmpp_ring::client::get_text(ring.admin(edge), "/metrics", W).expect("metrics");
    assert!(
        m.contains("xmpp_ring_s2s_inbound_refused_total{limit=\"rate\"}"),
        "the limit is in /metrics"
    );
    // And Prosody still federates.
    let r = ping_ring(&mut alice, "p2").await;
    assert_eq!(r.attr("type"), Some("result"));
    alice.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_cannot_grow_the_edge_past_64_mb() {
    let dir = tempfile::tempdir().expect("tmp");
    let dns = DnsServer::start();
    let ring = ring_with_edge_args(
        dir.path(),
        &dns,
        1,
        EDGE_IP,
        &["ring.test"],
        &["--s2s-write-timeout-s", "3"],
    );
    let edge = ring.nodes.len() - 1;
    let pid = ring.nodes[edge].ready.pid;
    let port = ring.nodes[edge]
        .args
        .windows(2)
        .find(|w| w[0] == "--s2s-listen")
        .and_then(|w| w[1].rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .expect("s2s port");
    let before = rss_bytes(pid);
    // A peer asks the edge to verify keys as fast as it can and never
    // reads the answers.
    let mut flood = Raw::open_tls((EDGE_IP, port), "ring.test", "flood.test").await;
    let one = "<db:verify from='flood.test' to='ring.test' id='0123456789abcdef'>0000000000000000000000000000000000000000000000000000000000000000</db:verify>";
    let chunk = one.repeat(256);
    let mut peak = before;
    let start = Instant::now();
    let mut written = 0usize;
    while start.elapsed() < Duration::from_secs(8) {
        use tokio::io::AsyncWriteExt;
        match tokio::time::timeout(
            Duration::from_millis(200),
            flood.stream.write_all(chunk.as_bytes()),
        )
        .await
        {
            Ok(Ok(())) => written += chunk.len(),
            Ok(Err(_)) => break, // closed by the edge
            Err(_) => {}         // the edge stopped reading: backpressure
        }
        peak = peak.max(rss_bytes(pid));
    }
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 64 * 1024 * 1024,
        "the edge grew by {} MB (from {} MB) after {} MB written",
        grown >> 20,
        before >> 20,
        written >> 20
    );
    // The edge ends the flood (a stream may ask for a burst of 64
    // verifications, then 20 a second: `policy-violation`); had it gone on
    // slowly, the edge would have stopped reading a peer that does not
    // read and closed it when a write timed out.
    assert!(
        flood.closed(Duration::from_secs(10)).await,
        "the flooding stream was closed"
    );
    let e = status(&ring, edge).edge.expect("edge report");
    assert!(
        e.stream_errors
            .get("policy-violation")
            .copied()
            .unwrap_or(0)
            >= 1
            || e.write_timeouts >= 1,
        "{e:?}"
    );
    assert!(ring.nodes.iter().all(|n| n.child.is_some()));
}
