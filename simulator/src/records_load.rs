//! The record workload of protocol mode: every simulated node runs the real
//! record replicator (`ring-records`, the same state machine as a node's)
//! over an in-memory store, and this module plays its clients and checks
//! what survives churn.
//!
//! `records` records are written once before the measured phase; during it
//! random nodes write random records and read them back at the given
//! rates. A write's version counts as *acknowledged* once its coordinator
//! answered it; from then on:
//!
//! * a read issued later that returns an older version (or nothing) is a
//!   **stale read**;
//! * every minute the live copies are counted: a record with fewer than
//!   `r` live copies of its acknowledged version is **under-replicated**
//!   (the minimum, the 99th percentile and the maximum over the samples
//!   are reported);
//! * at the end, a record whose acknowledged version no live node holds is
//!   **lost**.

use ring_records::{Answer, Config, RecordOp, RecordOutcome};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;

/// Parameters of the record workload.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordParams {
    /// Records written before the measured phase (0: no workload).
    pub records: usize,
    /// Writes per simulated second during the measured phase.
    pub writes_per_s: f64,
    /// Reads per simulated second during the measured phase.
    pub reads_per_s: f64,
    /// The replicator's parameters (replicas, sweep interval, ...).
    pub config: Config,
    /// How long the initial writes are spread over.
    pub create_window: Duration,
}

impl Default for RecordParams {
    fn default() -> Self {
        RecordParams {
            records: 0,
            writes_per_s: 10.0,
            reads_per_s: 10.0,
            config: Config {
                // A whole store per sweep costs little at simulated sizes;
                // the interval is what an operator tunes.
                sweep_every: Duration::from_secs(10),
                ..Config::default()
            },
            create_window: Duration::from_secs(120),
        }
    }
}

/// The record figures of a run (JSON contract, under `records`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RecordFigures {
    /// Records written before the measured phase.
    pub records: u64,
    /// Copies per record.
    pub replicas: usize,
    /// The sweep interval, s.
    pub sweep_s: f64,
    /// Writes answered with success (initial ones included).
    pub writes: u64,
    /// Writes that failed (no answer in time, refused, undeliverable).
    pub write_failures: u64,
    /// Reads answered.
    pub reads: u64,
    /// Reads that failed.
    pub read_failures: u64,
    /// Reads that returned an older version than one acknowledged before
    /// they were issued (or nothing).
    pub stale_reads: u64,
    /// Records whose acknowledged version no live node holds at the end.
    pub records_lost: u64,
    /// Records with fewer than `replicas` live copies of their
    /// acknowledged version, over the minute samples: minimum.
    pub records_under_replicated_min: u64,
    /// ... the 99th percentile.
    pub records_under_replicated_p99: u64,
    /// ... the maximum.
    pub records_under_replicated_max: u64,
    /// Bytes of copies pushed by re-replication sweeps, per live node per
    /// second of the measured phase.
    pub rereplication_bytes_per_node_per_s: f64,
    /// Write latency (request to answer), ms: p50.
    pub write_latency_ms_p50: f64,
    /// ... p99.
    pub write_latency_ms_p99: f64,
    /// Read latency, ms: p50.
    pub read_latency_ms_p50: f64,
    /// ... p99.
    pub read_latency_ms_p99: f64,
}

enum Op {
    Write { record: u32, sent_us: u64 },
    Read { sent_us: u64, expect: u64 },
}

/// The clients' side of the workload.
pub struct Workload {
    /// Per record, the latest acknowledged version (0: none yet).
    acked: Vec<u64>,
    ops: HashMap<u64, Op>,
    next_tag: u64,
    write_lat: Vec<f64>,
    read_lat: Vec<f64>,
    figures: RecordFigures,
    under: Vec<u64>,
}

/// The name of record `i`.
pub fn name(i: u32) -> String {
    format!("r{i}")
}

fn index(name: &str) -> Option<usize> {
    name.strip_prefix('r')?.parse().ok()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * p).ceil() as usize).saturating_sub(1);
    (v[i.min(v.len() - 1)] * 100.0).round() / 100.0
}

impl Workload {
    /// A workload over `records` records.
    pub fn new(p: &RecordParams) -> Workload {
        Workload {
            acked: vec![0; p.records],
            ops: HashMap::new(),
            next_tag: 0,
            write_lat: Vec::new(),
            read_lat: Vec::new(),
            figures: RecordFigures {
                records: p.records as u64,
                replicas: p.config.replicas,
                sweep_s: p.config.sweep_every.as_secs_f64(),
                ..RecordFigures::default()
            },
            under: Vec::new(),
        }
    }

    /// A write of record `i` at `now_us`: its client tag and operation.
    pub fn write(&mut self, i: u32, now_us: u64) -> (u64, RecordOp) {
        self.next_tag += 1;
        self.ops.insert(
            self.next_tag,
            Op::Write {
                record: i,
                sent_us: now_us,
            },
        );
        let op = RecordOp::Put {
            name: name(i),
            value: self.next_tag.to_be_bytes().to_vec(),
        };
        (self.next_tag, op)
    }

    /// A read of record `i` at `now_us`.
    pub fn read(&mut self, i: u32, now_us: u64) -> (u64, RecordOp) {
        self.next_tag += 1;
        let expect = self.acked[i as usize];
        self.ops.insert(
            self.next_tag,
            Op::Read {
                sent_us: now_us,
                expect,
            },
        );
        (self.next_tag, RecordOp::Get { name: name(i) })
    }

    /// A client's answer arrived (or the request was refused at once).
    pub fn answered(&mut self, tag: u64, a: &Answer, now_us: u64) {
        let Some(op) = self.ops.remove(&tag) else {
            return;
        };
        match op {
            Op::Write { record, sent_us } => match &a.outcome {
                Ok(RecordOutcome::Written { version, .. }) => {
                    self.figures.writes += 1;
                    self.write_lat.push((now_us - sent_us) as f64 / 1000.0);
                    let v = &mut self.acked[record as usize];
                    *v = (*v).max(*version);
                }
                _ => self.figures.write_failures += 1,
            },
            Op::Read {
                sent_us, expect, ..
            } => {
                let got = match &a.outcome {
                    Ok(RecordOutcome::Found { version, .. }) => Some(*version),
                    Ok(RecordOutcome::NotFound) => Some(0),
                    _ => None,
                };
                match got {
                    Some(v) => {
                        self.figures.reads += 1;
                        self.read_lat.push((now_us - sent_us) as f64 / 1000.0);
                        if v < expect {
                            self.figures.stale_reads += 1;
                        }
                    }
                    None => self.figures.read_failures += 1,
                }
            }
        }
    }

    /// Live copies per record that hold at least its acknowledged version.
    fn good_copies(&self, copies: &[(String, u64)]) -> Vec<u32> {
        let mut n = vec![0u32; self.acked.len()];
        for (name, version) in copies {
            if let Some(i) = index(name)
                && i < n.len()
                && self.acked[i] > 0
                && *version >= self.acked[i]
            {
                n[i] += 1;
            }
        }
        n
    }

    /// A sample of every live copy (record name, version).
    pub fn sample(&mut self, copies: &[(String, u64)]) {
        let r = self.figures.replicas as u32;
        let n = self.good_copies(copies);
        let under = n
            .iter()
            .zip(&self.acked)
            .filter(|(c, a)| **a > 0 && **c < r)
            .count() as u64;
        self.under.push(under);
    }

    /// The figures, given the live copies at the end and the sweep bytes
    /// per node per second.
    pub fn finish(
        mut self,
        copies: &[(String, u64)],
        sweep_bytes_per_node_s: f64,
    ) -> RecordFigures {
        let n = self.good_copies(copies);
        self.figures.records_lost = n
            .iter()
            .zip(&self.acked)
            .filter(|(c, a)| **a > 0 && **c == 0)
            .count() as u64;
        // Requests still open at the end never got an answer.
        for op in self.ops.values() {
            match op {
                Op::Write { .. } => self.figures.write_failures += 1,
                Op::Read { .. } => self.figures.read_failures += 1,
            }
        }
        let mut u = self.under.clone();
        u.sort_unstable();
        self.figures.records_under_replicated_min = u.first().copied().unwrap_or(0);
        self.figures.records_under_replicated_max = u.last().copied().unwrap_or(0);
        self.figures.records_under_replicated_p99 = u
            .get(((u.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0);
        self.figures.rereplication_bytes_per_node_per_s =
            (sweep_bytes_per_node_s * 10.0).round() / 10.0;
        self.figures.write_latency_ms_p50 = pct(&mut self.write_lat, 0.5);
        self.figures.write_latency_ms_p99 = pct(&mut self.write_lat, 0.99);
        self.figures.read_latency_ms_p50 = pct(&mut self.read_lat, 0.5);
        self.figures.read_latency_ms_p99 = pct(&mut self.read_lat, 0.99);
        self.figures
    }
}
