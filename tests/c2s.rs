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
    let (ok, out) = user(&c, "delete", "alice@ring.test", "");
    assert!(ok, "{out}");
    let v = Client::run("login", "alice@ring.test", "battery staple", &c2s, &[]);
    assert_eq!(v["error"], "not-authorized", "{v}");
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
    assert_eq!(phone.next()["ready"], true);
    let mut laptop = Client::start(
        "recv",
        "bob@ring.test",
        "pw-b",
        &c2s,
        &["1", "15", "1", "laptop"],
    );
    assert_eq!(laptop.next()["ready"], true);

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
    assert_eq!(first.next()["ready"], true);
    let mut second = Client::start(
        "recv",
        "bob@ring.test",
        "pw-b",
        &c2s,
        &["1", "5", "0", "desk"],
    );
    assert_eq!(second.next()["ready"], true);
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
