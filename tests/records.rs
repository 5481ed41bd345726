//! The replicated record store across real node processes: replication,
//! survival of the kill of two of a record's three replicas, persistence
//! across a restart of the whole ring, limits and bad requests.

use node::api::{RecordReport, StatusReport};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use xmpp_ring::client::{get_json, post_json, url_encode};
use xmpp_ring::cluster::Cluster;

const EXE: &str = env!("CARGO_BIN_EXE_xmpp-ring");
const T: Duration = Duration::from_secs(20);
const NODES: usize = 8;
const RECORDS: usize = 30;

fn common() -> Vec<String> {
    [
        "--log-level",
        "info,node::runtime::core::records=debug",
        "--record-replicas",
        "3",
        "--record-max-bytes",
        "1024",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn wait_joined(c: &Cluster, running: &[usize]) {
    let start = Instant::now();
    while !running
        .iter()
        .all(|&i| get_json::<StatusReport>(c.admin(i), "/status", T).is_ok_and(|s| s.joined))
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ring does not form"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let the joins' bucket refreshes fill the tables.
    std::thread::sleep(Duration::from_secs(2));
}

/// Prints every node's log when the test fails (the cluster's directory
/// goes away with it).
struct LogsOnFailure(Vec<std::path::PathBuf>);

impl LogsOnFailure {
    fn of(c: &Cluster) -> LogsOnFailure {
        LogsOnFailure(c.nodes.iter().map(|n| n.dir.clone()).collect())
    }
}

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, dir) in self.0.iter().enumerate() {
                let log = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
                eprintln!("--- node {i}:\n{log}");
            }
        }
    }
}

fn put(c: &Cluster, i: usize, name: &str, value: &str) -> RecordReport {
    post_json(
        c.admin(i),
        &format!("/record?op=put&name={}", url_encode(name)),
        value.as_bytes(),
        T,
    )
    .expect("put")
}

fn get(c: &Cluster, i: usize, name: &str) -> RecordReport {
    get_json(
        c.admin(i),
        &format!("/record?op=get&name={}", url_encode(name)),
        T,
    )
    .expect("get")
}

/// Nodes among `nodes` holding their own copy of record `r`.
fn copies(c: &Cluster, nodes: &[usize], r: usize) -> usize {
    nodes
        .iter()
        .filter(|&&i| {
            get_json::<RecordReport>(
                c.admin(i),
                &format!("/record?op=get&local=true&name={}", url_encode(&name(r))),
                T,
            )
            .expect("local get")
            .found
        })
        .count()
}

/// Waits until every record has at least three copies among `nodes`.
fn wait_replicated(c: &Cluster, nodes: &[usize], limit: Duration) {
    let start = Instant::now();
    loop {
        let short: Vec<(usize, usize)> = (0..RECORDS)
            .map(|r| (r, copies(c, nodes, r)))
            .filter(|&(_, n)| n < 3)
            .collect();
        if short.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "records with fewer than 3 copies (record, copies): {short:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Copies held across `nodes`.
fn held(c: &Cluster, nodes: &[usize]) -> usize {
    nodes
        .iter()
        .map(|&i| {
            get_json::<StatusReport>(c.admin(i), "/status", T)
                .expect("status")
                .records
                .count
        })
        .sum()
}

fn name(i: usize) -> String {
    format!("rec-{i}")
}

/// Waits until every record reads back with its expected value through
/// the running nodes (rotating the entry node); panics with what is
/// missing after `limit`.
fn all_readable(c: &Cluster, running: &[usize], expect: &dyn Fn(usize) -> String, limit: Duration) {
    let start = Instant::now();
    loop {
        let missing: Vec<String> = (0..RECORDS)
            .filter(|&r| {
                let via = running[r % running.len()];
                get(c, via, &name(r)).value != Some(expect(r))
            })
            .map(name)
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "records not readable after {limit:?}: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn records_survive_two_replica_kills_and_a_whole_ring_restart() {
    let mut c = Cluster::new(Path::new(EXE)).expect("cluster");
    c.spawn(&common()).expect("bootstrap");
    let boot = c.addr(0);
    for _ in 1..NODES {
        let mut a = common();
        a.extend(["--bootstrap".to_string(), boot.clone()]);
        c.spawn(&a).expect("node");
    }
    let all: Vec<usize> = (0..NODES).collect();
    let _logs = LogsOnFailure::of(&c);
    wait_joined(&c, &all);

    for r in 0..RECORDS {
        let rep = put(&c, r % NODES, &name(r), &format!("value-{r}"));
        assert!(rep.ok && rep.error.is_none(), "{rep:?}");
        assert_eq!(rep.version, Some(1));
        assert_eq!(
            rep.replicas,
            Some(2),
            "two copies besides the coordinator's"
        );
    }
    all_readable(&c, &all, &|r| format!("value-{r}"), Duration::from_secs(5));
    // At least three copies of each record exist across the ring.
    wait_replicated(&c, &all, Duration::from_secs(5));

    // Kill -9 the two nodes closest to rec-0's key: its coordinator and
    // its first replica.
    let key = dht::keys::record_key(&name(0));
    let mut by_distance: Vec<usize> = all.clone();
    by_distance.sort_by_key(|&i| {
        dht::Key::from_hex(&c.nodes[i].ready.node_id)
            .expect("node id")
            .distance(&key)
    });
    let killed = [by_distance[0], by_distance[1]];
    for &k in &killed {
        c.signal(k, nix::sys::signal::Signal::SIGKILL);
    }
    let alive: Vec<usize> = all
        .iter()
        .copied()
        .filter(|i| !killed.contains(i))
        .collect();
    all_readable(
        &c,
        &alive,
        &|r| format!("value-{r}"),
        Duration::from_secs(15),
    );

    // Re-replication: every record has three copies on the survivors
    // again (the killed nodes held some of them).
    wait_replicated(&c, &alive, Duration::from_secs(15));

    // A write after the kills goes to the new replica set.
    let rep = put(&c, alive[0], &name(1), "value-1-again");
    assert!(rep.ok, "{rep:?}");
    assert_eq!(rep.version, Some(2));
    let expect = |r: usize| {
        if r == 1 {
            "value-1-again".to_string()
        } else {
            format!("value-{r}")
        }
    };
    all_readable(&c, &alive, &expect, Duration::from_secs(10));

    // Stop everything: no copy survives in any process. Then start every
    // node again from its data directory (node 0 bootstraps again, on a new
    // port) and read everything back.
    c.stop_all();
    c.start(0).expect("restart node 0");
    let boot = c.addr(0);
    for i in 1..NODES {
        let mut a = common();
        a.extend(["--bootstrap".to_string(), boot.clone()]);
        c.nodes[i].args = a;
        c.start(i).expect("restart");
    }
    wait_joined(&c, &all);
    let held = held(&c, &all);
    assert!(
        held >= 3 * RECORDS,
        "stored copies are back after the restart: {held}"
    );
    all_readable(&c, &all, &expect, Duration::from_secs(15));
}

#[test]
fn record_limits_and_bad_requests_get_clear_errors() {
    let mut c = Cluster::new(Path::new(EXE)).expect("cluster");
    c.spawn(&common()).expect("bootstrap");
    let boot = c.addr(0);
    for _ in 1..3 {
        let mut a = common();
        a.extend(["--bootstrap".to_string(), boot.clone()]);
        c.spawn(&a).expect("node");
    }
    let _logs = LogsOnFailure::of(&c);
    wait_joined(&c, &[0, 1, 2]);

    // Over the per-record limit.
    let rep = put(&c, 1, "big", &"x".repeat(2000));
    assert!(!rep.ok);
    let e = rep.error.expect("an error");
    assert!(e.contains("over the limit of 1024 bytes"), "{e}");
    assert!(!get(&c, 2, "big").found, "nothing was stored");

    // Deletes: a tombstone, then the record reads as missing.
    assert!(put(&c, 0, "gone", "soon").ok);
    let del: RecordReport =
        post_json(c.admin(2), "/record?op=delete&name=gone", b"", T).expect("delete");
    assert!(del.ok && del.found, "{del:?}");
    assert_eq!(del.version, Some(2));
    let g = get(&c, 1, "gone");
    assert!(g.ok && !g.found, "{g:?}");

    // The records of rooms and PubSub nodes are their services' alone.
    let forged: RecordReport = post_json(
        c.admin(1),
        "/record?op=put&name=muc%3Aroom%40conference.ring.test",
        b"{}",
        T,
    )
    .expect("answer");
    assert!(
        forged
            .error
            .as_deref()
            .is_some_and(|e| e.contains("service only")),
        "{forged:?}"
    );
    // Bad requests to the admin API: 400 with a message; and nothing
    // changes state through a GET (405).
    for q in [
        "/record?op=frobnicate&name=a",
        "/record?op=put&name=a&value=b",
        "/record?op=get&name=a",
    ] {
        let e = post_json::<RecordReport>(c.admin(0), q, b"", T).expect_err(q);
        assert!(
            matches!(e, xmpp_ring::client::ClientError::BadRequest(_)),
            "{q}: {e}"
        );
    }
    for q in [
        "/record?op=put&name=a&value=b",
        "/record?op=delete&name=gone",
        "/send?from=a@ring.test&to=b@ring.test&body=x",
        "/load?count=1",
    ] {
        let e = get_json::<RecordReport>(c.admin(0), q, T).expect_err(q);
        assert!(e.to_string().contains("405"), "{q}: {e}");
    }
    let e = get_json::<RecordReport>(c.admin(0), "/record?op=get&name=", T).expect("answer");
    assert!(
        e.error.is_some_and(|m| m.contains("names")),
        "empty name refused"
    );

    // The command line: put, get, a missing record (exit 1), bad usage (exit 2).
    let run = |args: &[&str]| {
        Command::new(EXE)
            .arg("record")
            .args(args)
            .output()
            .expect("run")
    };
    let admin = c.admin(1).to_string();
    let out = run(&["put", "--admin", &admin, "cli-rec", "hello world"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["get", "--admin", &admin, "cli-rec"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hello world (version 1)"));
    let out = run(&["get", "--admin", &admin, "no-such-record"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such record"));
    let out = run(&["put", "--admin", &admin, "only-a-name"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a put without a value is a usage error"
    );

    // Counters in /status and /metrics.
    let s: StatusReport = get_json(c.admin(1), "/status", T).expect("status");
    assert_eq!(s.records.replicas, 3);
    assert!(s.records.requests >= 3);
    let m = xmpp_ring::client::get_text(c.admin(0), "/metrics", T).expect("metrics");
    assert!(m.contains("xmpp_ring_records "), "{m}");
}

#[test]
fn a_node_that_becomes_responsible_fetches_before_it_answers() {
    // Re-replication sweeps every ten minutes here, so only the fetch can
    // give the newcomer the record in time.
    let common = || {
        let mut a = common();
        a.extend(["--record-sweep-ms".to_string(), "600000".to_string()]);
        a
    };
    let mut c = Cluster::new(Path::new(EXE)).expect("cluster");
    c.spawn(&common()).expect("bootstrap");
    let boot = c.addr(0);
    for _ in 1..4 {
        let mut a = common();
        a.extend(["--bootstrap".to_string(), boot.clone()]);
        c.spawn(&a).expect("node");
    }
    let _logs = LogsOnFailure::of(&c);
    wait_joined(&c, &[0, 1, 2, 3]);
    assert_eq!(put(&c, 1, "moving", "v1").version, Some(1));
    assert_eq!(put(&c, 2, "moving", "v2").version, Some(2));

    // A newcomer whose id is closer to the record's key than every node's:
    // from its join on, it is the record's coordinator, and it holds no copy.
    let key = dht::keys::record_key("moving");
    let closest_now = (0..4)
        .map(|i| {
            dht::Key::from_hex(&c.nodes[i].ready.node_id)
                .expect("id")
                .distance(&key)
        })
        .min()
        .expect("nodes");
    let kp = loop {
        let kp = libp2p::identity::Keypair::generate_ed25519();
        if node::addr::node_id(&kp.public().to_peer_id()).distance(&key) < closest_now {
            break kp;
        }
    };
    let mut a = common();
    a.extend(["--bootstrap".to_string(), boot.clone()]);
    let newcomer = c.add(&a).expect("add");
    node::identity::write_key(&c.nodes[newcomer].dir.join(node::identity::KEY_FILE), &kp)
        .expect("key");
    c.start(newcomer).expect("start");
    let _logs2 = LogsOnFailure::of(&c);
    let start = Instant::now();
    while !get_json::<StatusReport>(c.admin(newcomer), "/status", T).is_ok_and(|s| s.joined) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "newcomer does not join"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Every node knows every other (so reads anywhere route to the newcomer
    // from now on: a node that has not heard of it yet still takes itself
    // for the coordinator, which is routing convergence, not this test).
    let all = c.nodes.len();
    let start = Instant::now();
    while !(0..all).all(|i| {
        get_json::<StatusReport>(c.admin(i), "/status", T).is_ok_and(|s| s.table_size == all - 1)
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "tables do not converge"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A write through the newcomer (which coordinates it itself) gets the
    // next version, not a fresh version 1 that the replicas' version 2
    // would silently beat; reads anywhere see it.
    let rep = put(&c, newcomer, "moving", "v3");
    assert!(rep.ok, "{rep:?}");
    assert_eq!(rep.hops, Some(0), "the newcomer is the coordinator");
    assert_eq!(rep.version, Some(3), "{rep:?}");
    let g = get(&c, 3, "moving");
    assert_eq!(g.value.as_deref(), Some("v3"), "{g:?}");
    assert_eq!(g.version, Some(3));
    let local: RecordReport = get_json(
        c.admin(newcomer),
        "/record?op=get&local=true&name=moving",
        T,
    )
    .expect("local get");
    assert_eq!(local.version, Some(3), "the newcomer coordinated the write");
}
