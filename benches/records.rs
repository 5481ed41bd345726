//! Record-store latency against hop count on a local ring. Prints one JSON
//! object.
//!
//! `cargo bench --bench records [-- --nodes 16 --ops 2000]`
//!
//! Starts N `xmpp-ring node` processes (release build), then, one request
//! at a time, puts `ops` records through rotating entry nodes and reads
//! each back through another node. Latency is measured at the client (the
//! admin HTTP round trip is included); hops are those the request took to
//! the record's coordinator, as the answer reports them. A put also writes
//! the record on the coordinator's disk (redb commit) and pushes two more
//! copies. The CPU of the load generator (this process) and of the ring is
//! reported beside the rates.

use node::api::{RecordReport, StatusReport};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use xmpp_ring::client::{get_json, post_json, url_encode};
use xmpp_ring::cluster::{Cluster, cpu_us};

const EXE: &str = env!("CARGO_BIN_EXE_xmpp-ring");
const T: Duration = Duration::from_secs(30);

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(samples: &BTreeMap<u8, Vec<f64>>) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (hops, v) in samples {
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        out.insert(
            format!("{hops}_hops"),
            json!({
                "count": s.len(),
                "mean_us": s.iter().sum::<f64>() / s.len().max(1) as f64,
                "p50_us": percentile(&s, 0.5),
                "p99_us": percentile(&s, 0.99),
            }),
        );
    }
    serde_json::Value::Object(out)
}

fn main() {
    let n = arg("--nodes", 16);
    let ops = arg("--ops", 2000);
    let mut c = Cluster::new(std::path::Path::new(EXE)).expect("cluster");
    let common = vec!["--log-level".to_string(), "error".to_string()];
    c.spawn(&common).expect("bootstrap");
    let boot = c.addr(0);
    for _ in 1..n {
        let mut a = common.clone();
        a.extend(["--bootstrap".to_string(), boot.clone()]);
        c.spawn(&a).expect("node");
    }
    let start = Instant::now();
    while !(0..n)
        .all(|i| get_json::<StatusReport>(c.admin(i), "/status", T).is_ok_and(|s| s.joined))
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "ring does not form"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let ring_pids: Vec<u32> = c.nodes.iter().map(|n| n.ready.pid).collect();
    let ring_cpu = || -> u64 { ring_pids.iter().map(|&p| cpu_us(p)).sum() };
    let me = std::process::id();

    let phase = |name: &str, put: bool| {
        let mut by_hops: BTreeMap<u8, Vec<f64>> = BTreeMap::new();
        let mut failed = 0;
        let mut retried = 0;
        let (cpu0, ring0) = (cpu_us(me), ring_cpu());
        let t0 = Instant::now();
        for i in 0..ops {
            let rec = format!("bench-{i}");
            let t = Instant::now();
            let r: Result<RecordReport, _> = if put {
                post_json(
                    c.admin(i % n),
                    &format!("/record?op=put&name={}", url_encode(&rec)),
                    format!("value of record {i}, about sixty bytes long .........").as_bytes(),
                    T,
                )
            } else {
                get_json(
                    c.admin((i + n / 2) % n),
                    &format!("/record?op=get&name={}", url_encode(&rec)),
                    T,
                )
            };
            let us = t.elapsed().as_secs_f64() * 1e6;
            match r {
                Ok(r) if r.ok && r.found => {
                    if r.attempts > 1 {
                        retried += 1;
                    }
                    by_hops.entry(r.hops.unwrap_or(0)).or_default().push(us);
                }
                _ => failed += 1,
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let done = (ops - failed) as f64;
        json!({
            "op": name,
            "ops": ops,
            "failed": failed,
            "retried": retried,
            "ops_per_s_one_in_flight": done / secs,
            "latency_by_hops": summary(&by_hops),
            "cpu_us_per_op": {
                "load_generator": (cpu_us(me) - cpu0) as f64 / done.max(1.0),
                "ring_nodes": (ring_cpu() - ring0) as f64 / done.max(1.0),
            },
        })
    };
    let puts = phase("put", true);
    let gets = phase("get", false);
    println!(
        "{}",
        json!({
            "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)},
            "nodes": n,
            "replicas": 3,
            "put": puts,
            "get": gets,
        })
    );
}
