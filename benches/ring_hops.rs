//! Hop counts of real local rings beside the simulator's prediction for the
//! same size, in one run. Prints one JSON object.
//!
//! `cargo bench --bench ring_hops [-- --sizes 32,100]`
//!
//! For each size N it starts N `xmpp-ring node` processes (default k and
//! b), waits until every node has joined, then sends probes to random keys
//! from eight entry nodes with the built-in load generator and averages the
//! hop counts the probes report. Beside it runs
//! `xmpp-ring simulate --mode protocol --nodes N` with the same parameters.

use node::api::{LoadReport, StatusReport};
use std::process::Command;
use std::time::{Duration, Instant};
use xmpp_ring::client::get_json;
use xmpp_ring::cluster::Cluster;

const EXE: &str = env!("CARGO_BIN_EXE_xmpp-ring");

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![32, 100]);
    let mut rows = Vec::new();
    for n in sizes {
        let ring = measure_ring(n);
        let sim = simulate(n);
        let diff = (ring - sim).abs();
        rows.push(serde_json::json!({
            "nodes": n,
            "ring_mean_hops": ring,
            "simulated_mean_hops": sim,
            "difference": diff,
            "within_0_3": diff <= 0.3,
        }));
    }
    println!("{}", serde_json::json!({ "hops": rows }));
}

fn measure_ring(n: usize) -> f64 {
    let mut c = Cluster::new(std::path::Path::new(EXE)).expect("cluster");
    c.spawn(&["--log-level".into(), "error".into()])
        .expect("bootstrap");
    let boot = c.addr(0);
    for _ in 1..n {
        c.spawn(&[
            "--log-level".into(),
            "error".into(),
            "--bootstrap".into(),
            boot.clone(),
        ])
        .expect("node");
    }
    let start = Instant::now();
    while !(0..n).all(|i| {
        get_json::<StatusReport>(c.admin(i), "/status", Duration::from_secs(10))
            .is_ok_and(|s| s.joined)
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "ring does not form"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Let the post-join bucket refreshes finish.
    std::thread::sleep(Duration::from_secs(5));
    let entries: Vec<usize> = (0..n).step_by((n / 8).max(1)).take(8).collect();
    let mut hops = 0.0;
    let mut count = 0.0;
    for i in entries {
        let r: LoadReport = xmpp_ring::client::post_json(
            c.admin(i),
            "/load?count=2000&kind=probe&window=16",
            b"",
            Duration::from_secs(120),
        )
        .expect("load");
        assert_eq!(r.settled(), 2000, "{r:?}");
        hops += r.mean_hops * r.delivered as f64;
        count += r.delivered as f64;
    }
    hops / count
}

fn simulate(n: usize) -> f64 {
    let out = Command::new(EXE)
        .args([
            "simulate",
            "--mode",
            "protocol",
            "--nodes",
            &n.to_string(),
            "--lookups",
            "16000",
            "--format",
            "json",
        ])
        .output()
        .expect("simulate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["mean_hops"].as_f64().expect("mean_hops")
}
