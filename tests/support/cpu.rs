//! CPU meters for the benches: every process shares this machine's two
//! cores, so each rate is reported with the CPU each group of processes
//! (load generator, servers, ring) spent on it.

use serde_json::{Value, json};
use xmpp_ring::cluster::cpu_us;

/// Groups of processes and their CPU time (µs) when the meter started.
pub struct Cpu(Vec<(String, Vec<u32>, u64)>);

impl Cpu {
    /// Starts metering `groups` (name, process ids).
    pub fn start(groups: Vec<(String, Vec<u32>)>) -> Cpu {
        Cpu(groups
            .into_iter()
            .map(|(name, pids)| {
                let t = pids.iter().map(|&p| cpu_us(p)).sum();
                (name, pids, t)
            })
            .collect())
    }

    /// CPU per unit of work since the start, µs, for each group.
    pub fn per(&self, units: u64) -> Value {
        let mut m = serde_json::Map::new();
        for (name, pids, t0) in &self.0 {
            let t: u64 = pids.iter().map(|&p| cpu_us(p)).sum();
            m.insert(
                name.clone(),
                json!(t.saturating_sub(*t0) as f64 / units.max(1) as f64),
            );
        }
        Value::Object(m)
    }
}
