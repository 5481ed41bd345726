//! Federation throughput: ten Prosody users send chat messages to ten ring
//! users through the ring's edge, side by side with the same users sending
//! the same load to ten users on a second Prosody. Prints one JSON object.
//!
//! `cargo bench --bench federation [-- --quick]`
//!
//! * **prosody_to_ring**: the ten ring JIDs are ring users logged in to the
//!   ring's edge (its c2s listener); arrivals are counted at their clients.
//! * **prosody_to_prosody**: arrivals are counted at the receiving clients.
//!
//! Rounds alternate between the two paths; the median round by rate is
//! reported with every round's rate, and with each process group's CPU per
//! message (the clients share the two cores with the servers).

#[path = "../tests/support/mod.rs"]
mod support;

mod common {
    pub mod federation;
}

use common::federation::{
    USERS, logged_in, median, prosody_to_prosody, prosody_to_ring, ring_receivers, runtime,
    warm_up_ring, world,
};
use serde_json::json;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let total: u64 = if quick { 2_000 } else { 10_000 };
    let rounds = if quick { 1 } else { 3 };
    let w = world(3);
    let out = runtime().block_on(async {
        let (s, mut r) = logged_in(&w).await;
        let (mut s, mut rr) = warm_up_ring(&w, s, ring_receivers(&w).await).await;
        let mut results = serde_json::Map::new();
        for payload in [200usize, 2048] {
            let mut ring_runs = Vec::new();
            let mut p2p_runs = Vec::new();
            for round in 0..rounds {
                let (run, s2, rr2) = prosody_to_ring(
                    &w,
                    s,
                    rr,
                    &format!("ring{payload}r{round}"),
                    total,
                    payload,
                )
                .await;
                s = s2;
                rr = rr2;
                ring_runs.push(run);
                let (run, s2, r2) =
                    prosody_to_prosody(&w, s, r, &format!("p2p{payload}r{round}"), total, payload)
                        .await;
                s = s2;
                r = r2;
                p2p_runs.push(run);
            }
            let ring = median(&ring_runs);
            let p2p = median(&p2p_runs);
            let ratio = ring["msgs_per_s"].as_f64().unwrap_or(0.0)
                / p2p["msgs_per_s"].as_f64().unwrap_or(1.0).max(1e-9);
            results.insert(
                format!("{payload}B"),
                json!({"prosody_to_ring": ring, "prosody_to_prosody": p2p, "ring_over_prosody": ratio}),
            );
        }
        results
    });
    let mut top = serde_json::Map::new();
    top.insert(
        "machine".into(),
        json!({"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)}),
    );
    top.insert("messages_per_round".into(), json!(total));
    top.insert("rounds".into(), json!(rounds));
    top.insert("users".into(), json!(USERS));
    top.extend(out);
    println!("{}", serde_json::Value::Object(top));
}
