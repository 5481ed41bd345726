//! `xmpp-ring simulate` as a user runs it: the real binary, its JSON
//! contract, its files and its errors.

use serde_json::Value;
use std::process::{Command, Output};

fn xmpp_ring(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xmpp-ring"))
        .args(args)
        .output()
        .expect("run xmpp-ring")
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout.clone()).expect("utf-8 stdout");
    assert_eq!(
        text.trim_end().lines().count(),
        1,
        "one JSON object, nothing else: {text}"
    );
    serde_json::from_str(&text).expect("valid JSON")
}

#[test]
fn static_json_contract() {
    let out = xmpp_ring(&[
        "simulate",
        "--nodes",
        "5000",
        "--lookups",
        "2000",
        "--k",
        "20",
        "--bits",
        "4",
        "--seed",
        "9",
        "--format",
        "json",
    ]);
    let v = json(&out);
    for f in [
        "nodes",
        "lookups",
        "k",
        "bits",
        "mode",
        "mean_hops",
        "p50_hops",
        "p95_hops",
        "p99_hops",
        "max_hops",
        "success_rate",
        "mean_table_size",
        "elapsed_s",
    ] {
        assert!(v.get(f).is_some(), "missing {f} in {v}");
    }
    assert_eq!(v["mode"], "static");
    assert_eq!(v["nodes"], 5000);
    assert_eq!(v["success_rate"], 1.0);
    let mean = v["mean_hops"].as_f64().unwrap();
    assert!(mean > 1.0 && mean < 3.0, "{mean}");
}

#[test]
fn same_seed_same_numbers_across_processes() {
    let args = [
        "simulate",
        "--nodes",
        "3000",
        "--lookups",
        "1000",
        "--seed",
        "5",
        "--format",
        "json",
    ];
    let a = json(&xmpp_ring(&args));
    let b = json(&xmpp_ring(&args));
    assert_eq!(a["hop_histogram"], b["hop_histogram"]);
    assert_eq!(a["mean_table_size"], b["mean_table_size"]);
}

#[test]
fn protocol_json_has_delivery_fields() {
    let out = xmpp_ring(&[
        "simulate",
        "--mode",
        "protocol",
        "--nodes",
        "150",
        "--lookups",
        "300",
        "--k",
        "8",
        "--bits",
        "2",
        "--duration-s",
        "30",
        "--settle-s",
        "10",
        "--format",
        "json",
    ]);
    let v = json(&out);
    assert_eq!(v["mode"], "protocol");
    for f in ["delivered", "bounced", "lost", "timeouts_per_lookup"] {
        assert!(v.get(f).is_some(), "missing {f}");
    }
    assert_eq!(v["lost"], 0);
    assert_eq!(v["delivered"], 300);
}

#[test]
fn plot_and_sweep_files() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("hops.svg");
    let out = xmpp_ring(&[
        "simulate",
        "--nodes",
        "2000",
        "--lookups",
        "500",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hops"), "{text}");
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));

    let stem = dir.path().join("series");
    let out = xmpp_ring(&[
        "simulate",
        "--sweep-nodes",
        "1000,4000",
        "--k",
        "20",
        "--bits",
        "1,4",
        "--lookups",
        "300",
        "--sweep-out",
        stem.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let v = json(&out);
    assert_eq!(v["runs"].as_array().unwrap().len(), 4);
    let csv = std::fs::read_to_string(dir.path().join("series.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5);
    assert!(
        std::fs::read_to_string(dir.path().join("series.svg"))
            .unwrap()
            .contains("k=20 b=1 mean")
    );
    let series: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("series.json")).unwrap())
            .unwrap();
    assert_eq!(series.as_array().unwrap().len(), 4);
}

#[test]
fn bad_input_is_a_clear_error_with_exit_code_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["simulate", "--bits", "9"], "--bits"),
        (&["simulate", "--nodes", "0"], "--nodes"),
        (&["simulate", "--k", "0"], "--k"),
        (
            &["simulate", "--mode", "protocol", "--loss", "1.5"],
            "--loss",
        ),
        (
            &["simulate", "--churn-median-session-s", "60"],
            "--mode protocol",
        ),
        (&["simulate", "--k", "10,20"], "--sweep-nodes"),
        (&["simulate", "--nodes", "many"], "--nodes"),
        (&["simulate", "--mode", "sideways"], "--mode"),
        (
            &[
                "simulate",
                "--plot",
                "/nonexistent-dir/x.svg",
                "--nodes",
                "100",
                "--lookups",
                "10",
            ],
            "/nonexistent-dir/x.svg",
        ),
    ];
    for (args, needle) in cases {
        let out = xmpp_ring(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
}
