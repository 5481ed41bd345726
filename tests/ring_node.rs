//! The ring node as operators run it: real `xmpp-ring node` processes on
//! 127.0.0.1, started and stopped by these tests (by PID, also on failure,
//! through `xmpp_ring::cluster::Cluster`), talking libp2p with the ring key.

use dht::Key;
use node::api::{LoadReport, StatusReport, TraceReport};
use std::process::Command;
use std::time::{Duration, Instant};
use xmpp_ring::client::{get_json, get_text, post_json, url_encode};
use xmpp_ring::cluster::{Cluster, Signal};

const EXE: &str = env!("CARGO_BIN_EXE_xmpp-ring");

/// The 32-node tests start 32 processes each; on a 2-core machine two of
/// them at once starve every node of CPU (acks time out and routes bend
/// around "failed" nodes). They take turns.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}
const T: Duration = Duration::from_secs(20);

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Starts `n` nodes joining through the first; extra args for every node.
fn ring(n: usize, extra: &[&str]) -> Cluster {
    let mut c = Cluster::new(std::path::Path::new(EXE)).expect("cluster");
    c.spawn(&args(&[&["--log-level", "warn"], extra].concat()))
        .expect("bootstrap node");
    let boot = c.addr(0);
    for _ in 1..n {
        c.spawn(&args(
            &[&["--log-level", "warn", "--bootstrap", &boot], extra].concat(),
        ))
        .expect("node");
    }
    c
}

fn status(c: &Cluster, i: usize) -> StatusReport {
    get_json(c.admin(i), "/status", T).expect("status")
}

fn trace(admin: &str, jid: &str) -> TraceReport {
    get_json(admin, &format!("/trace?jid={}", url_encode(jid)), T).expect("trace")
}

fn ids(c: &Cluster, live: &[usize]) -> Vec<Key> {
    live.iter()
        .map(|i| Key::from_hex(&c.nodes[*i].ready.node_id).expect("hex id"))
        .collect()
}

fn closest(ids: &[Key], jid: &str) -> String {
    let key = dht::keys::jid_key(jid).expect("jid");
    ids.iter()
        .min_by_key(|id| id.distance(&key))
        .expect("a node")
        .to_hex()
}

/// Waits until every live node has joined and traces `jids` to the node
/// closest among `live`; returns how long it took.
fn wait_converged(
    c: &Cluster,
    live: &[usize],
    jids: &[String],
    timeout: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let ids = ids(c, live);
    loop {
        let mut problem = None;
        'check: for &i in live {
            if !status(c, i).joined {
                problem = Some(format!("node {i} not joined"));
                break;
            }
            for jid in jids {
                let t = trace(c.admin(i), jid);
                let want = closest(&ids, jid);
                if !t.ok || t.responsible.as_deref() != Some(want.as_str()) {
                    problem = Some(format!(
                        "node {i}: {jid} -> {:?} (want {}), {:?}",
                        t.responsible,
                        &want[..8],
                        t.error
                    ));
                    break 'check;
                }
            }
        }
        match problem {
            None => return Ok(start.elapsed()),
            Some(p) if start.elapsed() > timeout => return Err(p),
            Some(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn random_jids(n: usize, seed: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "user{}-{i}@ring.test",
                seed.wrapping_mul(7919).wrapping_add(i as u64 * 104_729)
            )
        })
        .collect()
}

#[test]
fn thirty_two_nodes_route_every_jid_to_the_closest_node() {
    let _turn = heavy();
    let c = ring(32, &[]);
    let live: Vec<usize> = (0..32).collect();
    wait_converged(&c, &live, &random_jids(5, 1), Duration::from_secs(60)).expect("ring converges");
    let jids = random_jids(200, 2);
    let node_ids = ids(&c, &live);
    let want: Vec<String> = jids.iter().map(|j| closest(&node_ids, j)).collect();
    // Every entry node traces all 200 JIDs; four threads, eight nodes each.
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = live
            .chunks(8)
            .map(|group| {
                let admins: Vec<(usize, String)> =
                    group.iter().map(|&i| (i, c.admin(i).to_string())).collect();
                let (jids, want) = (&jids, &want);
                s.spawn(move || {
                    let mut bad = Vec::new();
                    for (i, admin) in &admins {
                        for (jid, w) in jids.iter().zip(want) {
                            let t = trace(admin, jid);
                            if !t.ok || t.responsible.as_deref() != Some(w.as_str()) {
                                bad.push(format!(
                                    "from node {i}: {jid} -> {:?}, want {}",
                                    t.responsible,
                                    &w[..8]
                                ));
                            }
                            if t.ok {
                                assert_eq!(t.path.len(), t.hops + 1);
                                assert_eq!(
                                    t.path.last().map(|h| h.node.as_str()),
                                    t.responsible.as_deref()
                                );
                            }
                        }
                    }
                    bad
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of 6400 traces wrong: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // The metrics endpoint reports the traffic.
    let m = get_text(c.admin(0), "/metrics", T).expect("metrics");
    for name in [
        "xmpp_ring_envelopes_delivered_total",
        "xmpp_ring_envelopes_forwarded_total",
        "xmpp_ring_connections",
        "xmpp_ring_envelope_hops_bucket",
    ] {
        assert!(m.contains(name), "/metrics lacks {name}");
    }
}

#[test]
fn a_node_with_another_ring_key_is_refused() {
    let c = ring(3, &[]);
    let live: Vec<usize> = (0..3).collect();
    wait_converged(&c, &live, &random_jids(3, 3), Duration::from_secs(30)).expect("ring converges");
    // A second cluster has its own key; its node tries to join the first ring.
    let mut other = Cluster::new(std::path::Path::new(EXE)).expect("cluster");
    let boot = c.addr(0);
    other
        .spawn(&args(&["--log-level", "warn", "--bootstrap", &boot]))
        .expect("foreign node");
    std::thread::sleep(Duration::from_secs(5));
    let foreign = get_json::<StatusReport>(other.admin(0), "/status", T).expect("status");
    assert!(!foreign.joined, "the foreign node joined");
    assert_eq!(foreign.table_size, 0);
    assert!(
        foreign.counters.failed_outgoing >= 1,
        "its dials failed: {:?}",
        foreign.counters
    );
    let refused: u64 = live
        .iter()
        .map(|i| status(&c, *i).counters.refused_incoming)
        .sum();
    assert!(refused >= 1, "the ring counted the refusals");
    // Envelopes from the foreign node stay with it; the ring never routes to it.
    let t = trace(other.admin(0), "alice@ring.test");
    assert_eq!(t.responsible.as_deref(), Some(foreign.node_id.as_str()));
    for i in live {
        assert!(
            status(&c, i).table_size == 2,
            "node {i} let the foreigner in"
        );
        let t = trace(c.admin(i), "alice@ring.test");
        assert!(t.path.iter().all(|h| h.node != foreign.node_id));
    }
}

#[test]
fn probes_survive_kill_minus_nine_of_eight_nodes() {
    let _turn = heavy();
    let c_extra = ["--ack-timeout-ms", "300", "--receipt-timeout-ms", "4000"];
    let mut c = ring(32, &c_extra);
    let all: Vec<usize> = (0..32).collect();
    wait_converged(&c, &all, &random_jids(4, 5), Duration::from_secs(60)).expect("ring converges");
    let origins = [1usize, 2, 3, 4];
    let victims = [6usize, 9, 13, 17, 20, 24, 27, 31];
    let admins: Vec<String> = origins.iter().map(|i| c.admin(*i).to_string()).collect();
    // 10,000 probes from four nodes, to random keys, while eight nodes die.
    let reports: Vec<LoadReport> = std::thread::scope(|s| {
        let handles: Vec<_> = admins
            .iter()
            .map(|a| {
                s.spawn(move || {
                    post_json::<LoadReport>(
                        a,
                        "/load?count=2500&kind=probe&window=4",
                        b"",
                        Duration::from_secs(120),
                    )
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        for v in victims {
            c.signal(v, Signal::SIGKILL);
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("thread").expect("load report"))
            .collect()
    });
    let mut delivered = 0;
    let mut bounced = 0;
    for r in &reports {
        assert_eq!(r.sent, 2500);
        assert_eq!(r.refused, 0);
        assert_eq!(
            r.settled(),
            2500,
            "every probe delivered or reported bounced: {r:?}"
        );
        delivered += r.delivered;
        bounced += r.bounced.values().sum::<u64>();
    }
    assert_eq!(delivered + bounced, 10_000, "0 unaccounted");
    assert!(delivered >= 9_000, "most probes got through: {delivered}");
    // Within 10 s every surviving node routes correctly again.
    let live: Vec<usize> = all
        .iter()
        .copied()
        .filter(|i| !victims.contains(i))
        .collect();
    let took = wait_converged(&c, &live, &random_jids(10, 6), Duration::from_secs(10));
    assert!(took.is_ok(), "traces did not recover within 10 s: {took:?}");
}

#[test]
fn restarted_node_keeps_its_id_and_rejoins() {
    let mut c = ring(4, &[]);
    let all: Vec<usize> = (0..4).collect();
    wait_converged(&c, &all, &random_jids(3, 7), Duration::from_secs(30)).expect("ring converges");
    let before = c.nodes[2].ready.node_id.clone();
    c.signal(2, Signal::SIGTERM);
    // Graceful leave: the others drop it at once (it said goodbye).
    let t0 = Instant::now();
    while status(&c, 0).table_size != 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "goodbye not honoured"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.start(2).expect("restart");
    assert_eq!(
        c.nodes[2].ready.node_id, before,
        "same identity after restart"
    );
    wait_converged(&c, &all, &random_jids(5, 8), Duration::from_secs(30)).expect("rejoined");
}

fn run_cli(a: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(EXE).args(a).output().expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_and_input_exit_with_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let psk = dir.path().join("ring.psk");
    let (code, _) = run_cli(&["psk", "generate", psk.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    let (code, err) = run_cli(&["psk", "generate", psk.to_str().unwrap()]);
    assert_eq!(code, Some(2), "refuses to overwrite: {err}");
    let data = dir.path().join("data");
    let (p, d) = (psk.to_str().unwrap(), data.to_str().unwrap());
    let toml = dir.path().join("bad.toml");
    std::fs::write(&toml, "listen = \"/ip4/127.0.0.1/tcp/0\"\nbootsrap = []\n").unwrap();
    let garbage = dir.path().join("garbage.toml");
    std::fs::write(&garbage, "this is = = not toml").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["node", "--data-dir", d], "psk_file"),
        (vec!["node", "--psk-file", p], "data_dir"),
        (
            vec!["node", "--psk-file", "/nonexistent", "--data-dir", d],
            "psk_file",
        ),
        (
            vec![
                "node",
                "--psk-file",
                p,
                "--data-dir",
                d,
                "--listen",
                "garbage",
            ],
            "listen",
        ),
        (
            vec![
                "node",
                "--psk-file",
                p,
                "--data-dir",
                d,
                "--bootstrap",
                "/ip4/127.0.0.1/tcp/1",
            ],
            "bootstrap",
        ),
        (
            vec!["node", "--psk-file", p, "--data-dir", d, "--role", "king"],
            "role",
        ),
        (
            vec![
                "node",
                "--psk-file",
                p,
                "--data-dir",
                d,
                "--role",
                "edge",
                "--domain",
                "ring.test",
            ],
            "s2s_listen",
        ),
        (
            vec![
                "node",
                "--psk-file",
                p,
                "--data-dir",
                d,
                "--admin",
                "nowhere",
            ],
            "admin",
        ),
        (
            vec!["node", "--psk-file", p, "--data-dir", d, "--bits", "0"],
            "bits",
        ),
        (vec!["node", "--config", toml.to_str().unwrap()], "bootsrap"),
        (
            vec!["node", "--config", garbage.to_str().unwrap()],
            "config",
        ),
        (vec!["node", "--no-such-flag"], "--no-such-flag"),
        (vec!["local", "--nodes", "0"], "--nodes"),
    ];
    for (a, needle) in cases {
        let (code, err) = run_cli(&a);
        assert_eq!(code, Some(2), "{a:?}: {err}");
        assert!(err.contains(needle), "{a:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{a:?}: one line: {err}");
    }
    // A node that is up answers bad input with 400 → exit 2; unreachable → 1.
    let mut c = Cluster::new(std::path::Path::new(EXE)).unwrap();
    c.spawn(&args(&["--log-level", "warn"])).unwrap();
    let (code, err) = run_cli(&["trace", "--admin", c.admin(0), "not a jid@@"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _) = run_cli(&["trace", "--admin", c.admin(0), "alice@ring.test"]);
    assert_eq!(code, Some(0));
    let (code, _) = run_cli(&["status", "--admin", c.admin(0), "--format", "json"]);
    assert_eq!(code, Some(0));
    let (code, err) = run_cli(&["status", "--admin", "127.0.0.1:1"]);
    assert_eq!(code, Some(1), "{err}");
}

#[test]
fn admin_changes_are_post_only_and_the_token_guards_everything_when_required() {
    let mut c = Cluster::new(std::path::Path::new(EXE)).unwrap();
    // `--admin-token` asks for the token on loopback too (beyond loopback
    // it is always required; tests may not listen there).
    c.spawn(&args(&["--log-level", "warn", "--admin-token"]))
        .unwrap();
    let admin = c.admin(0).to_string();
    let token = std::fs::read_to_string(c.nodes[0].dir.join("admin.token")).expect("token file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.nodes[0].dir.join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the token is private");
    }
    let call = |path: &str, body: Option<&[u8]>, token: Option<&str>| {
        xmpp_ring::client::request_json::<serde_json::Value>(&admin, path, body, token, T)
    };
    for (path, body) in [
        ("/status", None),
        ("/trace?jid=a@ring.test", None),
        ("/record?op=get&name=x", None),
        ("/record?op=put&name=x", Some(b"v".as_slice())),
        (
            "/send?from=a@ring.test&to=b@ring.test&body=hi",
            Some(b"".as_slice()),
        ),
    ] {
        let e = call(path, body, None).expect_err(path);
        assert!(e.to_string().contains("401"), "{path}: {e}");
        let e = call(path, body, Some("wrong-token-wrong-token-wrong-tok")).expect_err(path);
        assert!(e.to_string().contains("401"), "{path}: {e}");
    }
    let s: serde_json::Value = call("/status", None, Some(token.trim())).expect("status");
    assert!(s["node_id"].is_string());
    let r: serde_json::Value =
        call("/record?op=put&name=x", Some(b"v"), Some(token.trim())).expect("put with the token");
    assert_eq!(r["ok"], true, "{r}");
    // A state change by GET is refused, token or not.
    let e = call("/record?op=delete&name=x", None, Some(token.trim())).expect_err("GET delete");
    assert!(e.to_string().contains("405"), "{e}");
    // The CLI reads the token from the data directory's file.
    let (code, out) = run_cli(&[
        "status",
        "--admin",
        &admin,
        "--admin-token-file",
        &c.nodes[0].dir.join("admin.token").display().to_string(),
    ]);
    assert_eq!(code, Some(0), "{out}");
    let (code, _) = run_cli(&["status", "--admin", &admin]);
    assert_eq!(code, Some(1), "without the token");
}
