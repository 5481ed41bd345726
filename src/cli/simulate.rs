//! `xmpp-ring simulate`: hop counts, table sizes and protocol behaviour of
//! a ring before it is deployed (README, "Usage").

use super::{Format, UsageError};
use clap::{Args, ValueEnum};
use dht::table::TableConfig;
use simulator::protocol::{self, ProtocolParams};
use simulator::static_ring::{self, StaticParams};
use simulator::{Progress, Report, plot, sweep};
use std::path::PathBuf;
use std::time::Duration;

/// Which simulation to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Converged tables computed directly (scales to 10^6 nodes).
    Static,
    /// The real state machines over a simulated network.
    Protocol,
}

/// Options of `xmpp-ring simulate`.
#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Number of nodes in the ring.
    #[arg(long, default_value_t = 10_000)]
    pub nodes: usize,
    /// Routed lookups (static) or messages (protocol) to measure.
    #[arg(long, default_value_t = 10_000)]
    pub lookups: usize,
    /// Bucket size; a comma-separated list with --sweep-nodes.
    #[arg(long, value_delimiter = ',', default_value = "20")]
    pub k: Vec<usize>,
    /// Bits per digit (1 = plain Kademlia); a list with --sweep-nodes.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    pub bits: Vec<u8>,
    /// Seed: the same seed gives the same numbers.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Simulation mode.
    #[arg(long, value_enum, default_value_t = Mode::Static)]
    pub mode: Mode,
    /// Write the hop histogram of the run as an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Run a series over these ring sizes (for every k and bits given).
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    pub sweep_nodes: Vec<usize>,
    /// Where a sweep writes STEM.json, STEM.csv and STEM.svg.
    #[arg(long, value_name = "STEM", default_value = "sweep")]
    pub sweep_out: PathBuf,
    /// Worker threads for static mode (results do not depend on it).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Protocol mode: median one-way link latency, ms.
    #[arg(long, default_value_t = 20.0, help_heading = "Protocol mode")]
    pub latency_ms: f64,
    /// Protocol mode: log-normal spread of link latencies.
    #[arg(long, default_value_t = 0.5, help_heading = "Protocol mode")]
    pub latency_sigma: f64,
    /// Protocol mode: probability that a message is lost.
    #[arg(long, default_value_t = 0.0, help_heading = "Protocol mode")]
    pub loss: f64,
    /// Protocol mode: joins per simulated second while the ring forms.
    #[arg(long, default_value_t = 100.0, help_heading = "Protocol mode")]
    pub join_rate: f64,
    /// Protocol mode: simulated seconds between formation and measurement.
    #[arg(long, default_value_t = 60.0, help_heading = "Protocol mode")]
    pub settle_s: f64,
    /// Protocol mode: simulated seconds of the measured phase.
    #[arg(long, default_value_t = 600.0, help_heading = "Protocol mode")]
    pub duration_s: f64,
    /// Protocol mode: churn with this median session length, s
    /// (exponential sessions; crashed nodes are replaced by new ones).
    #[arg(long, help_heading = "Protocol mode")]
    pub churn_median_session_s: Option<f64>,
    /// Protocol mode: next-hop ack timeout, ms.
    #[arg(long, help_heading = "Protocol mode")]
    pub ack_timeout_ms: Option<u64>,
    /// Protocol mode: next hops tried per node before bouncing.
    #[arg(long, help_heading = "Protocol mode")]
    pub max_attempts: Option<u8>,
    /// Protocol mode: bucket refresh interval, s.
    #[arg(long, help_heading = "Protocol mode")]
    pub refresh_interval_s: Option<f64>,
    /// Protocol mode: contacts silent this long are pinged, s.
    #[arg(long, help_heading = "Protocol mode")]
    pub liveness_interval_s: Option<f64>,
    /// Protocol mode: the closest contacts checked more often (the
    /// neighbourhood; 0: none) [default: 8].
    #[arg(long, help_heading = "Protocol mode")]
    pub neighbours: Option<usize>,
    /// Protocol mode: neighbours silent this long are pinged, s [default: 5].
    #[arg(long, help_heading = "Protocol mode")]
    pub neighbour_interval_s: Option<f64>,

    /// Records: write this many records before the measured phase and
    /// run the real record replicator on every node (0: none).
    #[arg(long, default_value_t = 0, help_heading = "Records (protocol mode)")]
    pub records: usize,
    /// Records: writes per simulated second during the measured phase.
    #[arg(long, default_value_t = 10.0, help_heading = "Records (protocol mode)")]
    pub record_writes_per_s: f64,
    /// Records: reads per simulated second during the measured phase.
    #[arg(long, default_value_t = 10.0, help_heading = "Records (protocol mode)")]
    pub record_reads_per_s: f64,
    /// Records: copies of each record (`record_replicas`).
    #[arg(long, default_value_t = 3, help_heading = "Records (protocol mode)")]
    pub record_replicas: usize,
    /// Records: the re-replication sweep runs this often, s (`record_sweep_ms`).
    #[arg(long, default_value_t = 10.0, help_heading = "Records (protocol mode)")]
    pub record_sweep_s: f64,

    /// Rooms: create this many MUC rooms before the measured phase and run
    /// the real services host on every node (0: none).
    #[arg(long, default_value_t = 0, help_heading = "Rooms (protocol mode)")]
    pub rooms: usize,
    /// Rooms: members of each room (users outside the ring).
    #[arg(long, default_value_t = 5, help_heading = "Rooms (protocol mode)")]
    pub room_members: usize,
    /// Rooms: groupchat messages per simulated second, over all rooms.
    #[arg(long, default_value_t = 10.0, help_heading = "Rooms (protocol mode)")]
    pub room_messages_per_s: f64,
}

fn secs(name: &str, v: f64) -> Result<Duration, UsageError> {
    if !v.is_finite() || v < 0.0 {
        return Err(UsageError(format!(
            "--{name} must be a non-negative number of seconds, got {v}"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

impl SimulateArgs {
    fn validate(&self) -> Result<(), UsageError> {
        let sizes: Vec<usize> = if self.sweep_nodes.is_empty() {
            vec![self.nodes]
        } else {
            self.sweep_nodes.clone()
        };
        if sizes.contains(&0) {
            return Err(UsageError("--nodes must be at least 1".into()));
        }
        if self.mode == Mode::Static && sizes.iter().any(|n| *n > 50_000_000) {
            return Err(UsageError(
                "--nodes above 50000000 does not fit static mode's memory budget".into(),
            ));
        }
        for b in &self.bits {
            TableConfig::check_bits(*b).map_err(|e| UsageError(format!("--{e}")))?;
        }
        for k in &self.k {
            TableConfig::check_k(*k).map_err(|e| UsageError(format!("--{e}")))?;
        }
        if self.sweep_nodes.is_empty() && (self.k.len() > 1 || self.bits.len() > 1) {
            return Err(UsageError(
                "lists of --k or --bits need --sweep-nodes".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.loss) {
            return Err(UsageError(format!(
                "--loss must be in [0, 1), got {}",
                self.loss
            )));
        }
        if !(self.join_rate > 0.0 && self.join_rate.is_finite()) {
            return Err(UsageError(format!(
                "--join-rate must be positive, got {}",
                self.join_rate
            )));
        }
        if !(self.latency_ms > 0.0 && self.latency_ms.is_finite()) {
            return Err(UsageError(format!(
                "--latency-ms must be positive, got {}",
                self.latency_ms
            )));
        }
        if !(self.latency_sigma >= 0.0 && self.latency_sigma <= 3.0) {
            return Err(UsageError(format!(
                "--latency-sigma must be in [0, 3], got {}",
                self.latency_sigma
            )));
        }
        if self.max_attempts == Some(0) {
            return Err(UsageError("--max-attempts must be at least 1".into()));
        }
        if self.ack_timeout_ms == Some(0) {
            return Err(UsageError("--ack-timeout-ms must be positive".into()));
        }
        if self.mode == Mode::Static && (self.churn_median_session_s.is_some() || self.loss > 0.0) {
            return Err(UsageError(
                "churn and loss flags need --mode protocol".into(),
            ));
        }
        if self.records > 0 && self.mode != Mode::Protocol {
            return Err(UsageError("--records needs --mode protocol".into()));
        }
        if self.rooms > 0 && self.mode != Mode::Protocol {
            return Err(UsageError("--rooms needs --mode protocol".into()));
        }
        if self.rooms > 1_000_000 || !(1..=1000).contains(&self.room_members) {
            return Err(UsageError(format!(
                "--rooms must be at most 1000000 and --room-members 1..=1000, got {} and {}",
                self.rooms, self.room_members
            )));
        }
        if !(self.room_messages_per_s >= 0.0 && self.room_messages_per_s.is_finite()) {
            return Err(UsageError(format!(
                "--room-messages-per-s must be a non-negative number, got {}",
                self.room_messages_per_s
            )));
        }
        if !(1..=16).contains(&self.record_replicas) {
            return Err(UsageError(format!(
                "--record-replicas must be between 1 and 16, got {}",
                self.record_replicas
            )));
        }
        for (name, v) in [
            ("record-writes-per-s", self.record_writes_per_s),
            ("record-reads-per-s", self.record_reads_per_s),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(UsageError(format!(
                    "--{name} must be a non-negative number, got {v}"
                )));
            }
        }
        if !(self.record_sweep_s > 0.0 && self.record_sweep_s.is_finite()) {
            return Err(UsageError(format!(
                "--record-sweep-s must be positive, got {}",
                self.record_sweep_s
            )));
        }
        Ok(())
    }

    fn protocol_params(
        &self,
        nodes: usize,
        k: usize,
        bits: u8,
    ) -> Result<ProtocolParams, UsageError> {
        let mut p = ProtocolParams::new(nodes, self.lookups);
        p.k = k;
        p.bits = bits;
        p.seed = self.seed;
        p.median_latency = secs("latency-ms", self.latency_ms / 1000.0)?;
        p.latency_sigma = self.latency_sigma;
        p.loss = self.loss;
        p.join_rate = self.join_rate;
        p.settle = secs("settle-s", self.settle_s)?;
        p.duration = secs("duration-s", self.duration_s)?;
        p.churn_median_session = match self.churn_median_session_s {
            Some(v) if v > 0.0 => Some(secs("churn-median-session-s", v)?),
            Some(v) => {
                return Err(UsageError(format!(
                    "--churn-median-session-s must be positive, got {v}"
                )));
            }
            None => None,
        };
        if let Some(ms) = self.ack_timeout_ms {
            p.node.ack_timeout = Duration::from_millis(ms);
        }
        if let Some(a) = self.max_attempts {
            p.node.max_attempts = a;
        }
        if let Some(v) = self.refresh_interval_s {
            p.node.refresh_interval = secs("refresh-interval-s", v)?.max(Duration::from_secs(1));
        }
        if let Some(v) = self.liveness_interval_s {
            p.node.liveness_interval = secs("liveness-interval-s", v)?.max(Duration::from_secs(1));
        }
        if let Some(n) = self.neighbours {
            p.node.neighbours = n;
        }
        if let Some(v) = self.neighbour_interval_s {
            p.node.neighbour_interval =
                secs("neighbour-interval-s", v)?.max(Duration::from_millis(100));
        }
        p.records.records = self.records;
        p.records.writes_per_s = self.record_writes_per_s;
        p.records.reads_per_s = self.record_reads_per_s;
        p.records.config.replicas = self.record_replicas;
        p.records.config.sweep_every = secs("record-sweep-s", self.record_sweep_s)?;
        p.rooms.rooms = self.rooms;
        p.rooms.members = self.room_members;
        p.rooms.messages_per_s = self.room_messages_per_s;
        Ok(p)
    }

    fn run_one(
        &self,
        nodes: usize,
        k: usize,
        bits: u8,
        progress: &Progress,
    ) -> Result<Report, UsageError> {
        Ok(match self.mode {
            Mode::Static => {
                let threads = self.threads.unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                });
                let p = StaticParams {
                    nodes,
                    lookups: self.lookups,
                    k,
                    bits,
                    seed: self.seed,
                    threads,
                };
                static_ring::run(&p, progress)
            }
            Mode::Protocol => protocol::run(&self.protocol_params(nodes, k, bits)?, progress),
        })
    }
}

/// Runs the subcommand; returns what to print on stdout.
pub fn run(args: &SimulateArgs) -> Result<String, UsageError> {
    args.validate()?;
    let progress = Progress::stderr();
    if args.sweep_nodes.is_empty() {
        let r = args.run_one(args.nodes, args.k[0], args.bits[0], &progress)?;
        if let Some(path) = &args.plot {
            plot::hop_histogram(path, &r).map_err(|e| UsageError(e.to_string()))?;
        }
        return Ok(match args.format {
            Format::Json => {
                serde_json::to_string(&r).map_err(|e| UsageError(e.to_string()))? + "\n"
            }
            Format::Text => {
                let mut s = r.to_text();
                if let Some(path) = &args.plot {
                    s.push_str(&format!("\nhistogram written to {}\n", path.display()));
                }
                s
            }
        });
    }
    let mut reports = Vec::new();
    for &k in &args.k {
        for &bits in &args.bits {
            for &n in &args.sweep_nodes {
                reports.push(args.run_one(n, k, bits, &progress)?);
            }
        }
    }
    let files = sweep::write_outputs(&args.sweep_out, &reports).map_err(UsageError)?;
    Ok(match args.format {
        Format::Json => {
            let v = serde_json::json!({ "runs": reports, "files": files });
            serde_json::to_string(&v).map_err(|e| UsageError(e.to_string()))? + "\n"
        }
        Format::Text => {
            let mut s = sweep::to_table(&reports);
            s.push('\n');
            for f in files {
                s.push_str(&format!("wrote {}\n", f.display()));
            }
            s
        }
    })
}
