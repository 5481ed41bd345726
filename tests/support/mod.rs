//! Shared support for the process-level tests: rings of real node
//! processes, real Prosody servers, a DNS server for the test domains,
//! certificates, and XMPP clients. Everything listens on 127.0.0.0/8 only
//! and is stopped by PID when its owner is dropped.

#![allow(dead_code)]

pub mod c2s_client;
pub mod certs;
pub mod client;
pub mod cpu;
pub mod dns;
pub mod prosody;
pub mod raw;
pub mod slixmpp;

use node::api::StatusReport;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};
use xmpp_ring::client::get_json;
use xmpp_ring::cluster::Cluster;

pub const EXE: &str = env!("CARGO_BIN_EXE_xmpp-ring");
pub const T: Duration = Duration::from_secs(20);

/// Fails clearly when Prosody is missing (the test command installs it).
pub fn require_prosody() {
    let ok = std::process::Command::new("which")
        .arg("prosody")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "prosody is not installed; run the README's test command (bash scripts/test-all.sh), which installs it"
    );
}

pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// An edge's command-line arguments.
pub struct EdgeArgs {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub extra: Vec<String>,
}

/// Starts a ring of `apps` application nodes and one edge per entry of
/// `edges`, all serving `domains`, with a shared dialback secret; waits
/// until every node has joined.
pub fn ring(
    dir: &Path,
    domains: &[&str],
    apps: usize,
    edges: &[EdgeArgs],
    dns: std::net::SocketAddr,
) -> Cluster {
    ring_opts(dir, domains, apps, edges, dns, &[])
}

/// [`ring`] with `common` arguments for every node.
pub fn ring_opts(
    dir: &Path,
    domains: &[&str],
    apps: usize,
    edges: &[EdgeArgs],
    dns: std::net::SocketAddr,
    common: &[&str],
) -> Cluster {
    let secret = dir.join(format!("dialback-{}.secret", domains[0]));
    std::fs::write(
        &secret,
        format!("the-ring-secret-of-{}-0123456789", domains[0]),
    )
    .expect("secret");
    let mut c = Cluster::new(Path::new(EXE)).expect("cluster");
    let mut common = [args(&["--log-level", "warn"]), args(common)].concat();
    for d in domains {
        common.extend(args(&["--domain", d]));
    }
    c.spawn(&common).expect("bootstrap node");
    let boot = c.addr(0);
    for _ in 1..apps {
        let mut a = common.clone();
        a.extend(args(&["--bootstrap", &boot]));
        c.spawn(&a).expect("node");
    }
    for e in edges {
        let mut a = common.clone();
        a.extend(args(&["--bootstrap", &boot, "--role", "edge"]));
        a.extend([
            "--s2s-listen".into(),
            format!("{}:{}", e.ip, e.port),
            "--dns".into(),
            dns.to_string(),
            "--dialback-secret-file".into(),
            secret.display().to_string(),
        ]);
        a.extend(e.extra.iter().cloned());
        c.spawn(&a).expect("edge node");
    }
    // Ready when every node has joined and knows every edge (it can only
    // send to the federation through edges it knows).
    let start = Instant::now();
    while !(0..c.nodes.len()).all(|i| {
        get_json::<StatusReport>(c.admin(i), "/status", T)
            .is_ok_and(|s| s.joined && s.edges_known == edges.len())
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ring does not form"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c
}

/// Starts Prosody for `domain` on `ip` with a certificate from its own CA
/// (nobody trusts anybody's, so s2s authenticates by dialback over TLS),
/// and registers its A and SRV records.
pub fn prosody_with_own_ca(
    dir: &Path,
    dns: &dns::DnsServer,
    domain: &str,
    ip: Ipv4Addr,
    users: &[(&str, &str)],
    opts: prosody::ProsodyOptions,
) -> prosody::Prosody {
    let cert = certs::Ca::new(dir, &format!("ca-{domain}")).issue(dir, domain);
    let p = prosody::Prosody::start(dir, domain, ip, dns.addr, &cert, users, opts);
    dns.add_a(domain, ip);
    dns.add_s2s_srv(domain, domain, p.s2s_port);
    p
}

/// A ring serving ring.test with `apps` application nodes and one edge on
/// `edge_ip` (the last node), which the SRV records of `names` point at.
pub fn ring_with_edge(
    dir: &Path,
    dns: &dns::DnsServer,
    apps: usize,
    edge_ip: Ipv4Addr,
    names: &[&str],
) -> Cluster {
    ring_with_edge_args(dir, dns, apps, edge_ip, names, &[])
}

/// [`ring_with_edge`] with extra arguments for the edge.
pub fn ring_with_edge_args(
    dir: &Path,
    dns: &dns::DnsServer,
    apps: usize,
    edge_ip: Ipv4Addr,
    names: &[&str],
    edge_extra: &[&str],
) -> Cluster {
    let port = prosody::free_port(edge_ip);
    dns.add_a("edge1.ring.test", edge_ip);
    for n in names {
        dns.add_s2s_srv(n, "edge1.ring.test", port);
    }
    ring(
        dir,
        &["ring.test"],
        apps,
        &[EdgeArgs {
            ip: edge_ip,
            port,
            extra: args(edge_extra),
        }],
        dns.addr,
    )
}

pub fn status(c: &Cluster, i: usize) -> StatusReport {
    get_json(c.admin(i), "/status", T).expect("status")
}

/// Sends a chat message from a ring JID through node `i`.
pub fn ring_send(c: &Cluster, i: usize, from: &str, to: &str, body: &str) {
    let q = format!(
        "/send?from={}&to={}&body={}",
        xmpp_ring::client::url_encode(from),
        xmpp_ring::client::url_encode(to),
        xmpp_ring::client::url_encode(body)
    );
    let v: serde_json::Value = xmpp_ring::client::post_json(c.admin(i), &q, b"", T).expect("send");
    assert_eq!(v["ok"], true);
}
