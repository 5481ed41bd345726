//! Clients logging in to a ring domain, tested with a client library
//! nobody here wrote (slixmpp, from PyPI, in a virtualenv the tests create)
//! against real `xmpp-ring node` processes with real TLS; accounts made
//! with the real `xmpp-ring user` command.

mod support;

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::raw::Raw;
use support::slixmpp::Client;
use support::{EXE, args};
use xmpp_ring::cluster::Cluster;

/// The multi-node tests start five nodes (one with Prosody beside): on a
/// 2-core machine two of them at once starve every node of CPU. They take
/// turns.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits for a client's "online" line; shows what it said otherwise.
fn ready(c: &mut Client) {
    let v = c.next();
    assert_eq!(v["ready"], true, "the client did not get online: {v}");
}

/// A one-node ring serving ring.test with clients on `--c2s-listen`: an
/// ordinary XMPP server. Returns it and its c2s address.
fn server(extra: &[&str]) -> (Cluster, String) {
    let ip = Ipv4Addr::LOCALHOST;
    let port = support::prosody::free_port(ip);
    let mut c = Cluster::new(std::path::Path::new(EXE)).expect("cluster");
    let listen = format!("{ip}:{port}");
    let mut a = args(&[
        "--log-level",
        "warn",
        "--domain",
        "ring.test",
        "--c2s-listen",
        &listen,
    ]);
    a.extend(args(extra));
    c.spawn(&a).expect("node");
    let c2s = c.nodes[0]
        .ready
        .c2s
        .clone()
        .expect("the node reports its c2s address");
    assert_eq!(c2s, listen);
    (c, c2s)
}

/// `xmpp-ring user OP --admin A JID` with the password on stdin; exit
/// status and output.
fn user(c: &Cluster, op: &str, jid: &str, password: &str) -> (bool, String) {
    let mut child = Command::new(EXE)
        .args(["user", op, "--admin", c.admin(0), jid])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xmpp-ring user");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = writeln!(stdin, "{password}");
    }
    let out = child.wait_with_output().expect("user command output");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_real_client_logs_in_and_wrong_or_unknown_credentials_are_not_authorized() {
    let (c, c2s) = server(&[]);
    let (ok, out) = user(&c, "add", "alice@ring.test", "correct horse");
    assert!(ok, "{out}");
    // Adding twice is refused; a JID that is not a user's is a usage error.
    let (ok, out) = user(&c, "add", "alice@ring.test", "x");
    assert!(!ok && out.contains("already exists"), "{out}");
    let (ok, out) = user(&c, "add", "ring.test", "x");
    assert!(!ok && out.contains("not a user"), "{out}");

    let v = Client::run("login", "alice@ring.test", "correct horse", &c2s, &[]);
    assert_eq!(v["ok"], true, "{v}");
    let bound = v["jid"].as_str().unwrap_or_default();
    assert!(bound.starts_with("alice@ring.test/"), "{v}");

    let v = Client::run("login", "alice@ring.test", "wrong", &c2s, &[]);
    assert_eq!(v["error"], "not-authorized", "{v}");
    let v = Client::run("login", "nobody@ring.test", "wrong", &c2s, &[]);
    assert_eq!(v["error"], "not-authorized", "{v}");

    // A new password replaces the old one; a deleted user cannot log in.
    let (ok, out) = user(&c, "passwd", "alice@ring.test", "battery staple");
    assert!(ok, "{out}");
    let v = Client::run("login", "alice@ring.test", "correct horse", &c2s, &[]);
    assert_eq!(v["error"], "not-authorized", "{v}");
    let v = Client::run("login", "alice@ring.test", "battery staple", &c2s, &[]);
    assert_eq!(v["ok"], true, "{v}");
    let (ok, out) = user(&c, "add", "bob@ring.test", "pw-b");
    assert!(ok, "{out}");
    assert_eq!(
        list(&c, &[]),
        (true, "alice@ring.test\nbob@ring.test\n".into())
    );
    // alice's roster goes with her account.
    let roster = "/record?op=put&name=roster%3Aalice%40ring.test";
    let r: node::api::RecordReport =
        xmpp_ring::client::post_json(c.admin(0), roster, b"{}", support::T).expect("put");
    assert!(r.ok, "{r:?}");
    let (ok, out) = user(&c, "delete", "alice@ring.test", "");
    assert!(ok, "{out}");
    let v = Client::run("login", "alice@ring.test", "battery staple", &c2s, &[]);
    assert_eq!(v["error"], "not-authorized", "{v}");
    let r: node::api::RecordReport = xmpp_ring::client::get_json(
        c.admin(0),
        "/record?op=get&name=roster%3Aalice%40ring.test",
        support::T,
    )
    .expect("get");
    assert!(!r.found, "{r:?}");
    // The deleted account is no longer listed; a domain filters; a domain
    // that is not one is a usage error.
    assert_eq!(list(&c, &[]), (true, "bob@ring.test\n".into()));
    assert_eq!(list(&c, &["other.test"]), (true, String::new()));
    let (ok, out) = list(&c, &["not a domain"]);
    assert!(!ok && out.contains("is not a domain"), "{out}");
}

/// `xmpp-ring user list --admin A ARGS...`: exit status and output.
fn list(c: &Cluster, extra: &[&str]) -> (bool, String) {
    let out = Command::new(EXE)
        .args(["user", "list", "--admin", c.admin(0)])
        .args(extra)
        .output()
        .expect("xmpp-ring user list");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test]
async fn direct_tls_and_channel_binding_log_in_and_a_foreign_alpn_is_refused() {
    let tls_listen = format!(
        "127.0.0.1:{}",
        support::prosody::free_port(Ipv4Addr::LOCALHOST)
    );
    let (c, c2s) = server(&["--c2s-tls-listen", &tls_listen]);
    assert_eq!(
        c.nodes[0].ready.c2s_tls.as_deref(),
        Some(tls_listen.as_str())
    );
    let (ok, out) = user(&c, "add", "alice@ring.test", "pw-a");
    assert!(ok, "{out}");

    // slixmpp with TLS from the first byte (XEP-0368), STARTTLS disabled.
    let tls_port = tls_listen.clone();
    let v = tokio::task::spawn_blocking(move || {
        Client::run(
            "login",
            "alice@ring.test",
            "pw-a",
            &tls_port,
            &["direct-tls"],
        )
    })
    .await
    .expect("client");
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        v["jid"]
            .as_str()
            .unwrap_or_default()
            .starts_with("alice@ring.test/"),
        "{v}"
    );
    // slixmpp sees -PLUS offered but has no tls-exporter under TLS 1.3
    // (Python's ssl lacks it): it falls back to plain SCRAM, which a server
    // offering -PLUS must still accept from a client that sent `n`.
    assert_eq!(v["mech"], "SCRAM-SHA-256", "{v}");

    // SCRAM-SHA-256-PLUS bound to the connection with tls-exporter (the
    // `sasl` crate's client), on both ports.
    let tls = support::c2s_client::tls_config();
    for (addr, direct_tls) in [(&c2s, false), (&tls_listen, true)] {
        let login = support::c2s_client::Login {
            direct_tls,
            channel_binding: true,
            ..support::c2s_client::Login::new(addr, "alice@ring.test", "pw-a")
        };
        let s = support::c2s_client::C2sClient::login(&login, tls.clone())
            .await
            .unwrap_or_else(|e| panic!("direct TLS {direct_tls}: {e}"));
        assert_eq!(s.mechanism, "SCRAM-SHA-256-PLUS");
        assert!(s.full_jid.starts_with("alice@ring.test/"), "{}", s.full_jid);
        s.close().await;
    }

    // A client that speaks another protocol over TLS (ALPN h2) is refused
    // in the handshake (RFC 7301), before any XMPP.
    let mut h2 = (*tls).clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&tls_listen)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("ring.test").expect("name");
    let r = tokio_rustls::TlsConnector::from(std::sync::Arc::new(h2))
        .connect(name, tcp)
        .await;
    let Err(e) = r else {
        panic!("a foreign ALPN must not get a TLS session");
    };
    assert!(
        e.to_string().contains("NoApplicationProtocol")
            || e.to_string().contains("no_application_protocol"),
        "{e}"
    );
}

#[tokio::test]
async fn in_band_registration_is_off_by_default() {
    let (c, c2s) = server(&[]);
    let port: u16 = c2s
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("port");
    let mut raw = raw_tls((Ipv4Addr::LOCALHOST, port)).await;
    assert!(!raw.got.contains("iq-register"), "{}", raw.got);
    raw.write("<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>carol</username><password>pw</password></query></iq>").await;
    assert!(
        raw.read_until("<service-unavailable", support::T).await,
        "{}",
        raw.got
    );
    let out = Command::new(EXE)
        .args(["user", "list", "--admin", c.admin(0)])
        .output()
        .expect("user list");
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
}

#[test]
fn in_band_registration_when_switched_on_and_users_manage_their_own_account() {
    let (c, c2s) = server(&["--c2s-register", "--c2s-registrations-per-ip", "3"]);
    // slixmpp registers (the server announces it), then logs in.
    let v = Client::run("register", "carol@ring.test", "pw-c", &c2s, &[]);
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        v["jid"]
            .as_str()
            .unwrap_or_default()
            .starts_with("carol@ring.test/"),
        "{v}"
    );
    assert_eq!(list(&c, &[]), (true, "carol@ring.test\n".into()));
    // The name is taken now.
    let v = Client::run("register", "carol@ring.test", "other", &c2s, &[]);
    assert_eq!(v["error"], "conflict", "{v}");

    // carol changes her password in-band: the old one stops working.
    let v = Client::run("passwd", "carol@ring.test", "pw-c", &c2s, &["pw-new"]);
    assert_eq!(v["ok"], true, "{v}");
    let v = Client::run("login", "carol@ring.test", "pw-c", &c2s, &[]);
    assert_eq!(v["error"], "not-authorized", "{v}");
    let v = Client::run("login", "carol@ring.test", "pw-new", &c2s, &[]);
    assert_eq!(v["ok"], true, "{v}");
    // Three per hour from this address (the conflict and the password
    // change counted): the next registration and the next password change
    // are refused.
    let v = Client::run("register", "dave@ring.test", "pw-d", &c2s, &[]);
    assert_eq!(v["error"], "resource-constraint", "{v}");
    let v = Client::run("passwd", "carol@ring.test", "pw-new", &c2s, &["pw-newer"]);
    assert_eq!(v["error"], "resource-constraint", "{v}");
    // ... and removes her account: answered, then the stream ends.
    let mut gone = Client::start("unregister", "carol@ring.test", "pw-new", &c2s, &[]);
    assert_eq!(gone.next()["ok"], true);
    assert_eq!(gone.next()["stream_error"], "not-authorized");
    let v = Client::run("login", "carol@ring.test", "pw-new", &c2s, &[]);
    assert_eq!(v["error"], "not-authorized", "{v}");
    assert_eq!(list(&c, &[]), (true, String::new()));
}

#[tokio::test]
async fn the_direct_tls_port_shares_the_per_address_cap_and_drops_silent_handshakes() {
    let ip = Ipv4Addr::LOCALHOST;
    let tls_port = support::prosody::free_port(ip);
    let tls_listen = format!("{ip}:{tls_port}");
    let (_c, c2s) = server(&[
        "--c2s-tls-listen",
        &tls_listen,
        "--c2s-max-connections-per-ip",
        "2",
    ]);
    let port: u16 = c2s
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("port");
    // Two idle connections on the STARTTLS port use this address's two.
    let _a = Raw::connect((ip, port)).await;
    let _b = Raw::connect((ip, port)).await;
    // (Accepted before the next one arrives: the listener takes from both
    // ports in no fixed order.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The direct-TLS port is not a second allowance: closed at once.
    let mut third = Raw::connect((ip, tls_port)).await;
    assert!(third.closed(Duration::from_secs(3)).await, "{}", third.got);
    drop((_a, _b));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A connection that never sends its ClientHello is dropped when the
    // handshake deadline (10 s) passes.
    let mut silent = Raw::connect((ip, tls_port)).await;
    let start = std::time::Instant::now();
    assert!(silent.closed(Duration::from_secs(20)).await);
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(8), "closed after {took:?}");
}

#[test]
fn clients_chat_to_bare_and_full_jids_by_priority() {
    let (c, c2s) = server(&[]);
    for (u, p) in [("alice", "pw-a"), ("bob", "pw-b")] {
        let (ok, out) = user(&c, "add", &format!("{u}@ring.test"), p);
        assert!(ok, "{out}");
    }
    // bob online twice: the phone with priority 5, the laptop with 1.
    let mut phone = Client::start(
        "recv",
        "bob@ring.test",
        "pw-b",
        &c2s,
        &["1", "15", "5", "phone"],
    );
    ready(&mut phone);
    let mut laptop = Client::start(
        "recv",
        "bob@ring.test",
        "pw-b",
        &c2s,
        &["1", "15", "1", "laptop"],
    );
    ready(&mut laptop);

    let send =
        |to: &str, body: &str| Client::run("send", "alice@ring.test", "pw-a", &c2s, &[to, body]);
    assert_eq!(send("bob@ring.test", "to the bare JID")["ok"], true);
    assert_eq!(send("bob@ring.test/laptop", "to the laptop")["ok"], true);
    // Nobody online as carol: the sender is told.
    assert_eq!(
        send("carol@ring.test", "to nobody")["error"],
        "service-unavailable"
    );

    let got = |c: &mut Client| {
        let v = c.next();
        v["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|x| x["body"].as_str().unwrap_or_default().to_string())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    // The bare JID reached the highest priority only; the full JID its
    // resource.
    assert_eq!(got(&mut phone), vec!["to the bare JID".to_string()]);
    assert_eq!(got(&mut laptop), vec!["to the laptop".to_string()]);
}

#[test]
fn a_second_login_with_the_same_resource_replaces_the_first() {
    let (c, c2s) = server(&[]);
    let (ok, out) = user(&c, "add", "bob@ring.test", "pw-b");
    assert!(ok, "{out}");
    let mut first = Client::start(
        "recv",
        "bob@ring.test",
        "pw-b",
        &c2s,
        &["1", "20", "0", "desk"],
    );
    ready(&mut first);
    let mut second = Client::start(
        "recv",
        "bob@ring.test",
        "pw-b",
        &c2s,
        &["1", "5", "0", "desk"],
    );
    ready(&mut second);
    let v = first.next();
    assert_eq!(v["stream_error"], "conflict", "{v}");
    assert!(first.wait(Duration::from_secs(5)));
}

#[tokio::test]
async fn nothing_but_starttls_before_tls_and_no_login_without_a_header_in_time() {
    let (_c, c2s) = server(&[]);
    let port: u16 = c2s
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("port");
    let addr = (Ipv4Addr::LOCALHOST, port);
    let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='ring.test' version='1.0'>";

    // SASL PLAIN in cleartext: refused with a stream error, the password
    // never looked at.
    let mut raw = Raw::connect(addr).await;
    raw.write(header).await;
    assert!(
        raw.read_until("<required/>", support::T).await,
        "{}",
        raw.got
    );
    raw.write(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>",
    )
    .await;
    assert!(
        raw.read_until("policy-violation", support::T).await,
        "{}",
        raw.got
    );

    // A header for a domain this server does not serve.
    let mut raw = Raw::connect(addr).await;
    raw.write(&header.replace("ring.test", "elsewhere.test"))
        .await;
    assert!(
        raw.read_until("host-unknown", support::T).await,
        "{}",
        raw.got
    );

    // Silence: the connection is closed after the header timeout (10 s).
    let mut raw = Raw::connect(addr).await;
    assert!(
        raw.read_until("connection-timeout", Duration::from_secs(20))
            .await,
        "{}",
        raw.got
    );
}

/// A ring of `apps` nodes without clients and `access` nodes with c2s
/// listeners (the last ones); all serve ring.test. Returns it and the
/// access nodes' c2s addresses.
fn ring_with_access_nodes(apps: usize, access: usize) -> (Cluster, Vec<String>) {
    let ip = Ipv4Addr::LOCALHOST;
    let mut c = Cluster::new(std::path::Path::new(EXE)).expect("cluster");
    let common = args(&["--log-level", "warn", "--domain", "ring.test"]);
    c.spawn(&common).expect("bootstrap node");
    let boot = c.addr(0);
    let mut c2s = Vec::new();
    for i in 1..apps + access {
        let mut a = common.clone();
        a.extend(args(&["--bootstrap", &boot]));
        if i >= apps {
            let listen = format!("{ip}:{}", support::prosody::free_port(ip));
            a.extend(args(&["--c2s-listen", &listen]));
            c2s.push(listen);
        }
        c.spawn(&a).expect("node");
    }
    let start = std::time::Instant::now();
    while !(0..c.nodes.len()).all(|i| support::status(&c, i).joined) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ring does not form"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (c, c2s)
}

/// The hex id of the node responsible for `jid` (its home node).
fn home_of(c: &Cluster, jid: &str) -> String {
    let t: node::api::TraceReport = xmpp_ring::client::get_json(
        c.admin(0),
        &format!("/trace?jid={}", xmpp_ring::client::url_encode(jid)),
        support::T,
    )
    .expect("trace");
    t.responsible.expect("a responsible node")
}

fn bodies(v: &serde_json::Value) -> Vec<String> {
    v["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|x| x["body"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn users_on_different_access_nodes_chat_and_survive_the_death_of_a_home_node() {
    let _turn = heavy();
    let (mut c, c2s) = ring_with_access_nodes(3, 2);
    let id_of = |c: &Cluster, i: usize| c.nodes[i].ready.node_id.clone();
    let access: Vec<String> = (3..5).map(|i| id_of(&c, i)).collect();
    // alice's home must be neither access node, so that killing it leaves
    // her session up: pick a name whose key lands on an app node.
    let alice = (0..200)
        .map(|i| format!("alice{i}@ring.test"))
        .find(|j| !access.contains(&home_of(&c, j)))
        .expect("a name homed on an application node");
    let home = home_of(&c, &alice);
    let home_index = (0..3).find(|i| id_of(&c, *i) == home).expect("home node");
    for (u, p) in [(alice.as_str(), "pw-a"), ("bob@ring.test", "pw-b")] {
        let (ok, out) = user(&c, "add", u, p);
        assert!(ok, "{out}");
    }
    // Listed once each when every node is asked (each account is held by
    // its three replicas).
    let mut every = Command::new(EXE);
    every.args(["user", "list", "--format", "json"]);
    for i in 0..c.nodes.len() {
        every.args(["--admin", c.admin(i)]);
    }
    let out = every.output().expect("user list");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let mut want = vec![alice.clone(), "bob@ring.test".to_string()];
    want.sort();
    assert_eq!(v["users"], serde_json::json!(want), "{v}");
    // alice on the first access node, bob on the second.
    let mut a = Client::start("recv", &alice, "pw-a", &c2s[0], &["2", "40", "0", "pc"]);
    ready(&mut a);
    let mut b = Client::start(
        "recv",
        "bob@ring.test",
        "pw-b",
        &c2s[1],
        &["1", "40", "0", "phone"],
    );
    ready(&mut b);
    // The leases reach the home nodes with the presence.
    std::thread::sleep(Duration::from_secs(1));

    let v = Client::run(
        "send",
        "bob@ring.test",
        "pw-b",
        &c2s[1],
        &[&alice, "bob to alice's bare JID"],
    );
    assert_eq!(v["ok"], true, "{v}");
    let v = Client::run(
        "send",
        &alice,
        "pw-a",
        &c2s[0],
        &["bob@ring.test/phone", "alice to bob's phone"],
    );
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(bodies(&b.next()), vec!["alice to bob's phone".to_string()]);

    // kill -9 alice's home node: her session lives on at its access node
    // and is leased to the next node in line; a message reaches her again
    // within 10 s.
    c.signal(home_index, xmpp_ring::cluster::Signal::SIGKILL);
    let killed = std::time::Instant::now();
    let mut delivered = false;
    while killed.elapsed() < Duration::from_secs(10) {
        let v = Client::run(
            "send",
            "bob@ring.test",
            "pw-b",
            &c2s[1],
            &[&alice, "after the home node died"],
        );
        if v["ok"] == true {
            delivered = true;
            break;
        }
    }
    assert!(
        delivered,
        "no message reached alice within 10 s of her home node's death"
    );
    // The client stops at two messages: the one before and one after.
    let got = bodies(&a.next());
    assert_eq!(
        got,
        vec![
            "bob to alice's bare JID".to_string(),
            "after the home node died".to_string()
        ]
    );

    // kill -9 bob's access node: within 10 s his home node has let his
    // session go (its lease expired), so a message to him is kept for his
    // next login instead of chasing the dead node; he logs in at the other
    // access node and gets it.
    drop(b);
    c.signal(4, xmpp_ring::cluster::Signal::SIGKILL);
    let killed = std::time::Instant::now();
    let mut kept = false;
    while killed.elapsed() < Duration::from_secs(10) {
        let v = Client::run(
            "send",
            &alice,
            "pw-a",
            &c2s[0],
            &["bob@ring.test", "for bob, later"],
        );
        if v["ok"] == true {
            kept = true;
            break;
        }
        assert_eq!(v["error"], "recipient-unavailable", "{v}");
    }
    assert!(
        kept,
        "bob's dead session was still a target 10 s after his access node died"
    );
    let mut b = Client::start(
        "recv",
        "bob@ring.test",
        "pw-b",
        &c2s[0],
        &["1", "20", "0", "laptop"],
    );
    ready(&mut b);
    assert_eq!(bodies(&b.next()), vec!["for bob, later".to_string()]);
}

/// `xmpp-ring local` stopped by SIGTERM (so it stops its nodes) when a
/// test ends early.
struct Local(std::process::Child);

impl Drop for Local {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

#[test]
fn local_prints_demo_users_who_can_log_in_with_a_client() {
    let _turn = heavy();
    use std::io::BufRead;
    let child = Command::new(EXE)
        .args([
            "local",
            "--nodes",
            "2",
            "--duration-s",
            "60",
            "--format",
            "json",
        ])
        .args(["--c2s-port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("xmpp-ring local");
    let mut local = Local(child);
    let out = local.0.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufReader::new(out)
        .read_line(&mut line)
        .expect("summary");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON summary");
    let c2s = v["c2s"].as_str().expect("a c2s address").to_string();
    let users = v["users"].as_array().expect("demo users");
    assert_eq!(users.len(), 2, "{v}");
    for u in users {
        let (jid, pw) = (
            u["jid"].as_str().unwrap_or_default(),
            u["password"].as_str().unwrap_or_default(),
        );
        let r = Client::run("login", jid, pw, &c2s, &[]);
        assert_eq!(r["ok"], true, "{jid}: {r}");
    }
}

#[test]
fn a_message_to_an_offline_user_arrives_at_the_next_login_with_a_delay_stamp() {
    let (c, c2s) = server(&[]);
    for (u, p) in [("alice", "pw-a"), ("bob", "pw-b")] {
        let (ok, out) = user(&c, "add", &format!("{u}@ring.test"), p);
        assert!(ok, "{out}");
    }
    // alice is not online: the messages are kept, not refused.
    for body in ["while you were out", "and again"] {
        let v = Client::run(
            "send",
            "bob@ring.test",
            "pw-b",
            &c2s,
            &["alice@ring.test", body],
        );
        assert_eq!(v["ok"], true, "{v}");
    }
    let mut alice = Client::start(
        "recv",
        "alice@ring.test",
        "pw-a",
        &c2s,
        &["2", "15", "0", "pc"],
    );
    ready(&mut alice);
    let v = alice.next();
    let msgs = v["messages"].as_array().expect("messages");
    let got: Vec<&str> = msgs
        .iter()
        .map(|m| m["body"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(got, ["while you were out", "and again"], "{v}");
    for m in msgs {
        let stamp = m["delay"].as_str().unwrap_or_default();
        // XEP-0082 UTC: 2026-12-07T12:00:00Z
        assert!(stamp.len() == 20 && stamp.ends_with('Z'), "{m}");
        assert_eq!(
            m["from"].as_str().map(|f| f.starts_with("bob@ring.test/")),
            Some(true)
        );
    }
    // Delivered once: the next login finds nothing kept.
    drop(alice);
    let mut again = Client::start(
        "recv",
        "alice@ring.test",
        "pw-a",
        &c2s,
        &["1", "3", "0", "pc2"],
    );
    ready(&mut again);
    assert_eq!(again.next()["messages"], serde_json::json!([]));
}

#[test]
fn sessions_end_with_their_connections() {
    let (c, c2s) = server(&["--c2s-max-resources", "2"]);
    let (ok, out) = user(&c, "add", "alice@ring.test", "pw-a");
    assert!(ok, "{out}");
    // Five logins one after the other with a limit of two sessions: each
    // ends before the next, so none is refused.
    for _ in 0..5 {
        let v = Client::run("login", "alice@ring.test", "pw-a", &c2s, &[]);
        assert_eq!(v["ok"], true, "{v}");
    }
    // And the node holds none of them now (metrics refresh every second).
    let start = std::time::Instant::now();
    loop {
        let m = xmpp_ring::client::get_text(c.admin(0), "/metrics", support::T).expect("metrics");
        if m.contains("xmpp_ring_c2s_binds_total 5") && m.contains("xmpp_ring_c2s_sessions 0") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_users_become_contacts_and_see_each_others_presence() {
    let (c, c2s) = server(&[]);
    for (u, p) in [("alice", "pw-a"), ("bob", "pw-b")] {
        let (ok, out) = user(&c, "add", &format!("{u}@ring.test"), p);
        assert!(ok, "{out}");
    }
    // bob accepts requests and subscribes back; alice asks.
    let mut bob = Client::start(
        "friend",
        "bob@ring.test",
        "pw-b",
        &c2s,
        &["alice@ring.test", "20"],
    );
    ready(&mut bob);
    let mut alice = Client::start(
        "friend",
        "alice@ring.test",
        "pw-a",
        &c2s,
        &["bob@ring.test", "20"],
    );
    ready(&mut alice);
    let a = alice.next();
    let b = bob.next();
    assert_eq!(a["saw"], true, "alice never saw bob online: {a}");
    assert_eq!(a["roster"]["bob@ring.test"], "both", "{a}");
    assert_eq!(b["saw"], true, "bob never saw alice online: {b}");
    assert_eq!(b["roster"]["alice@ring.test"], "both", "{b}");
    // The roster is stored: a new session of alice's finds bob in it.
    drop((alice, bob));
    let mut again = Client::start("friend", "alice@ring.test", "pw-a", &c2s, &["-", "3"]);
    ready(&mut again);
    assert_eq!(again.next()["roster"]["bob@ring.test"], "both");
}

#[test]
fn a_ring_user_and_a_prosody_user_become_contacts_and_chat_both_ways() {
    let _turn = heavy();
    support::require_prosody();
    let dir = tempfile::tempdir().expect("tmp");
    let dns = support::dns::DnsServer::start();
    let (prosody_ip, edge_ip) = (Ipv4Addr::new(127, 0, 0, 20), Ipv4Addr::new(127, 0, 0, 21));
    let prosody = support::prosody_with_own_ca(
        dir.path(),
        &dns,
        "a.test",
        prosody_ip,
        &[("carol", "pw-c")],
        support::prosody::ProsodyOptions::default(),
    );
    let c2s_port = support::prosody::free_port(edge_ip);
    let c2s = format!("{edge_ip}:{c2s_port}");
    let ring = support::ring_with_edge_args(
        dir.path(),
        &dns,
        3,
        edge_ip,
        &["ring.test"],
        &["--c2s-listen", &c2s],
    );
    let (ok, out) = {
        let mut child = Command::new(EXE)
            .args(["user", "add", "--admin", ring.admin(0), "alice@ring.test"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("user add");
        if let Some(mut s) = child.stdin.take() {
            let _ = writeln!(s, "pw-a");
        }
        let o = child.wait_with_output().expect("output");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    assert!(ok, "{out}");
    let carol_c2s = format!("{prosody_ip}:{}", prosody.c2s_port);

    let mut alice = Client::start(
        "friend",
        "alice@ring.test",
        "pw-a",
        &c2s,
        &["carol@a.test", "30"],
    );
    ready(&mut alice);
    let mut carol = Client::start(
        "friend",
        "carol@a.test",
        "pw-c",
        &carol_c2s,
        &["alice@ring.test", "30"],
    );
    ready(&mut carol);
    let a = alice.next();
    let c = carol.next();
    assert_eq!(a["roster"]["carol@a.test"], "both", "{a}");
    assert_eq!(a["saw"], true, "alice never saw carol online: {a}");
    assert_eq!(c["roster"]["alice@ring.test"], "both", "{c}");
    assert_eq!(c["saw"], true, "carol never saw alice online: {c}");
    drop((alice, carol));

    // Chat both ways through the edge.
    let mut carol = Client::start(
        "recv",
        "carol@a.test",
        "pw-c",
        &carol_c2s,
        &["1", "20", "0", "phone"],
    );
    ready(&mut carol);
    let v = Client::run(
        "send",
        "alice@ring.test",
        "pw-a",
        &c2s,
        &["carol@a.test", "hello from the ring"],
    );
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        bodies(&carol.next()),
        vec!["hello from the ring".to_string()]
    );
    let mut alice = Client::start(
        "recv",
        "alice@ring.test",
        "pw-a",
        &c2s,
        &["1", "20", "0", "pc"],
    );
    ready(&mut alice);
    let v = Client::run(
        "send",
        "carol@a.test",
        "pw-c",
        &carol_c2s,
        &["alice@ring.test", "hello from prosody"],
    );
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        bodies(&alice.next()),
        vec!["hello from prosody".to_string()]
    );
}

#[test]
fn clients_ask_the_server_disco_version_and_ping() {
    let (c, c2s) = server(&[]);
    for (u, p) in [("alice", "pw-a"), ("bob", "pw-b")] {
        let (ok, out) = user(&c, "add", &format!("{u}@ring.test"), p);
        assert!(ok, "{out}");
    }
    let v = Client::run("query", "alice@ring.test", "pw-a", &c2s, &["bob@ring.test"]);
    assert_eq!(v["domain"]["identity"][0], "server/im", "{v}");
    let features = v["domain"]["features"].as_array().expect("features");
    assert!(features.iter().any(|f| f == "urn:xmpp:ping"), "{v}");
    assert!(features.iter().any(|f| f == "jabber:iq:version"), "{v}");
    assert_eq!(v["account"]["identity"][0], "account/registered", "{v}");
    assert_eq!(v["version"], "xmpp-ring", "{v}");
    assert_eq!(v["ping"], true, "{v}");
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let (_c, c2s) = server(&["--c2s-max-connections-per-ip", "3"]);
    let port: u16 = c2s
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("port");
    let addr = (Ipv4Addr::LOCALHOST, port);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut r = Raw::connect(addr).await;
        assert!(!r.closed(Duration::from_millis(300)).await, "{}", r.got);
        held.push(r);
    }
    // The fourth is closed before anything is read from it.
    let mut fourth = Raw::connect(addr).await;
    assert!(fourth.closed(support::T).await);
    assert_eq!(fourth.got, "");
    // Another address is not affected.
    let mut other = Raw::connect_from(Ipv4Addr::new(127, 0, 0, 22), addr)
        .await
        .expect("connect from another address");
    assert!(!other.closed(Duration::from_millis(300)).await);
    // When one ends, the address may connect again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = Raw::connect(addr).await;
    assert!(
        !again.closed(Duration::from_millis(300)).await,
        "{}",
        again.got
    );
}

/// alice watches her contact bob, whose access node is killed; `same`:
/// bob's home node is that access node too (it dies with it).
fn contact_goes_offline(same: bool, bound: Duration) {
    let _turn = heavy();
    let (mut c, c2s) = ring_with_access_nodes(2, 2);
    let access = c.nodes[3].ready.node_id.clone();
    let bob = (0..400)
        .map(|i| format!("bob{i}@ring.test"))
        .find(|j| (home_of(&c, j) == access) == same)
        .expect("a name homed where asked");
    for (u, p) in [("alice@ring.test", "pw-a"), (bob.as_str(), "pw-b")] {
        let (ok, out) = user(&c, "add", u, p);
        assert!(ok, "{out}");
    }
    // Contacts first (on different access nodes), then bob stays online
    // at node 3 while alice watches from node 2.
    let mut a = Client::start("friend", "alice@ring.test", "pw-a", &c2s[0], &[&bob, "30"]);
    ready(&mut a);
    let mut b = Client::start("friend", &bob, "pw-b", &c2s[1], &["-", "30"]);
    ready(&mut b);
    assert_eq!(a.next()["roster"][&bob], "both");
    drop(a);
    let mut bob_phone = Client::start("recv", &bob, "pw-b", &c2s[1], &["1", "60", "0", "phone"]);
    ready(&mut bob_phone);
    let mut watch = Client::start("watch", "alice@ring.test", "pw-a", &c2s[0], &[&bob, "40"]);
    ready(&mut watch);
    assert_eq!(watch.next()["online"], true, "alice never saw bob online");
    // kill -9 bob's access node: his lease expires at his home node, which
    // tells his contacts.
    c.signal(3, xmpp_ring::cluster::Signal::SIGKILL);
    let killed = std::time::Instant::now();
    let v = watch.next();
    let took = killed.elapsed();
    assert_eq!(v["offline"], true, "{v}");
    eprintln!("same node: {same}: alice saw bob go offline after {took:?}");
    assert!(took < bound, "alice saw bob go offline only after {took:?}");
}

#[test]
fn a_contact_sees_a_user_go_offline_within_10_s_of_a_kill_9_of_the_access_node() {
    contact_goes_offline(false, Duration::from_secs(10));
}

#[test]
fn a_contact_sees_a_user_go_offline_when_access_and_home_node_die_together() {
    // The successor finds bob's stored sessions without a lease: failure
    // detection, then two renewal periods.
    contact_goes_offline(true, Duration::from_secs(20));
}

/// A raw client through STARTTLS up to the SASL features.
async fn raw_tls(addr: (Ipv4Addr, u16)) -> Raw {
    let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='ring.test' version='1.0'>";
    let mut raw = Raw::connect(addr).await;
    raw.write(header).await;
    assert!(
        raw.read_until("</stream:features>", support::T).await,
        "{}",
        raw.got
    );
    raw.write("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    assert!(raw.read_until("<proceed", support::T).await, "{}", raw.got);
    let name = rustls::pki_types::ServerName::try_from("ring.test").expect("name");
    let tls = tokio_rustls::TlsConnector::from(support::c2s_client::tls_config())
        .connect(name, raw.stream)
        .await
        .expect("TLS");
    let mut raw = Raw {
        stream: Box::new(tls),
        got: String::new(),
    };
    raw.write(header).await;
    assert!(
        raw.read_until("</stream:features>", support::T).await,
        "{}",
        raw.got
    );
    raw
}

#[tokio::test]
async fn failed_logins_are_limited_per_address_across_connections() {
    let (c, c2s) = server(&["--c2s-failed-logins-per-ip", "4"]);
    let port: u16 = c2s
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("port");
    let addr = (Ipv4Addr::LOCALHOST, port);
    let bad = "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='GUESS'/>";
    // Three failures end a stream (per stream), using three of the four.
    let mut first = raw_tls(addr).await;
    for _ in 0..3 {
        first.write(bad).await;
    }
    assert!(
        first
            .read_until("too many failed authentication attempts", support::T)
            .await,
        "{}",
        first.got
    );
    // A new connection: its first failure takes the last one, its second
    // closes it, for the address.
    let mut second = raw_tls(addr).await;
    second.write(bad).await;
    assert!(
        second.read_until("<invalid-mechanism/>", support::T).await,
        "{}",
        second.got
    );
    second.write(bad).await;
    assert!(
        second
            .read_until("too many failed logins from this address", support::T)
            .await,
        "{}",
        second.got
    );
    assert!(second.got.contains("policy-violation"), "{}", second.got);
    drop(c);
}

#[test]
fn ring_users_talk_in_a_ring_room_and_a_dropped_client_leaves_it() {
    let (c, c2s) = server(&[]);
    for (u, p) in [("alice", "pw-a"), ("bob", "pw-b")] {
        let (ok, out) = user(&c, "add", &format!("{u}@ring.test"), p);
        assert!(ok, "{out}");
    }
    let room = "lobby@conference.ring.test";
    let mut alice = Client::start(
        "muc",
        "alice@ring.test",
        "pw-a",
        &c2s,
        &[room, "alice", "20", "-", "bob"],
    );
    assert_eq!(alice.next()["joined"], true);
    let mut bob = Client::start(
        "muc",
        "bob@ring.test",
        "pw-b",
        &c2s,
        &[room, "bob", "20", "hello room", "-"],
    );
    assert_eq!(bob.next()["joined"], true);
    // bob's client dies without a word (SIGKILL): his connection ends,
    // and the room hears he is gone from the server.
    std::thread::sleep(Duration::from_millis(500));
    drop(bob);
    let v = alice.next();
    assert_eq!(v["messages"][0]["body"], "hello room", "{v}");
    assert_eq!(v["messages"][0]["from"], "bob", "{v}");
    assert!(
        v["left"]
            .as_array()
            .is_some_and(|l| l.iter().any(|n| n == "bob")),
        "bob is still an occupant: {v}"
    );
}

#[test]
fn ring_users_publish_and_subscribe_on_a_ring_pubsub_node() {
    let (c, c2s) = server(&[]);
    for (u, p) in [("alice", "pw-a"), ("bob", "pw-b")] {
        let (ok, out) = user(&c, "add", &format!("{u}@ring.test"), p);
        assert!(ok, "{out}");
    }
    let v = Client::run(
        "ps",
        "alice@ring.test",
        "pw-a",
        &c2s,
        &["create", "news", "10"],
    );
    assert_eq!(v["ok"], true, "{v}");
    let mut bob = Client::start("ps", "bob@ring.test", "pw-b", &c2s, &["sub", "news", "15"]);
    assert_eq!(bob.next()["subscribed"], true);
    let v = Client::run(
        "ps",
        "alice@ring.test",
        "pw-a",
        &c2s,
        &["pub", "news", "10"],
    );
    assert_eq!(v["ok"], true, "{v}");
    let v = bob.next();
    assert_eq!(v["items"], serde_json::json!(["hello subscribers"]), "{v}");
}
