//! Running node processes on this machine: used by `xmpp-ring local`, by the
//! process-level tests and by the benchmarks, so all three start, find and
//! stop nodes the same way.
//!
//! A [`Cluster`] owns a temporary directory (the ring key and one data
//! directory per node) and the child processes it started. It stops exactly
//! those, by PID: SIGTERM, then SIGKILL for any still running after five
//! seconds; also when it is dropped, so a failing test or an interrupted run
//! leaves nothing behind.

pub use nix::sys::signal::Signal;
use nix::unistd::Pid;
use node::runtime::{READY_FILE, Ready};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a node process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The cluster's files (temporary directory, logs).
    #[error("{what}: {why}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's complaint.
        why: std::io::Error,
    },
    /// The ring key.
    #[error(transparent)]
    Key(#[from] node::error::NodeError),
    /// `start` of a node that runs.
    #[error("node {0} is running")]
    Running(usize),
    /// The process exited before it was ready.
    #[error("node in {dir} exited with {status}:\n{log}")]
    Exited {
        /// Its data directory.
        dir: PathBuf,
        /// How it ended.
        status: std::process::ExitStatus,
        /// Its log.
        log: String,
    },
    /// It did not say it was ready in time.
    #[error("node in {dir} not ready after {timeout:?}")]
    NotReady {
        /// Its data directory.
        dir: PathBuf,
        /// How long it was given.
        timeout: Duration,
    },
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.to_string();
    move |why| ClusterError::Io { what, why }
}

/// One node process.
pub struct NodeProcess {
    /// The process (None once stopped).
    pub child: Option<Child>,
    /// Its data directory.
    pub dir: PathBuf,
    /// What it reported at start.
    pub ready: Ready,
    /// The extra arguments it was started with (for restarts).
    pub args: Vec<String>,
}

/// A set of node processes sharing one ring key.
pub struct Cluster {
    dir: tempfile::TempDir,
    exe: PathBuf,
    /// The nodes, in start order.
    pub nodes: Vec<NodeProcess>,
}

/// How long a node may take to write its `ready.json`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Cluster {
    /// A new cluster of `exe node` processes with a fresh ring key.
    pub fn new(exe: &Path) -> Result<Cluster, ClusterError> {
        let dir = tempfile::Builder::new()
            .prefix("xmpp-ring-")
            .tempdir()
            .map_err(io("cannot create a temporary directory"))?;
        node::psk::generate_file(&dir.path().join("ring.psk"))?;
        Ok(Cluster {
            dir,
            exe: exe.to_path_buf(),
            nodes: Vec::new(),
        })
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The ring key file.
    pub fn psk(&self) -> PathBuf {
        self.dir.path().join("ring.psk")
    }

    /// The first listen address of node `i` (a bootstrap address).
    pub fn addr(&self, i: usize) -> String {
        self.nodes[i]
            .ready
            .listen
            .first()
            .cloned()
            .unwrap_or_default()
    }

    /// Admin address of node `i`.
    pub fn admin(&self, i: usize) -> &str {
        &self.nodes[i].ready.admin
    }

    /// Starts a node with its own data directory and `args` (anything but
    /// the ring key, data directory, listen and admin addresses, which are
    /// filled in) and waits until it is ready. Returns its index.
    pub fn spawn(&mut self, args: &[String]) -> Result<usize, ClusterError> {
        let i = self.add(args)?;
        self.start(i)?;
        Ok(i)
    }

    /// Prepares node `i`'s data directory without starting it (so a caller
    /// can put a chosen identity there first); start it with [`Self::start`].
    pub fn add(&mut self, args: &[String]) -> Result<usize, ClusterError> {
        let i = self.nodes.len();
        let dir = self.dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
        self.nodes.push(NodeProcess {
            child: None,
            dir,
            ready: placeholder(),
            args: args.to_vec(),
        });
        Ok(i)
    }

    /// Starts node `i` again from its data directory (same identity).
    pub fn start(&mut self, i: usize) -> Result<(), ClusterError> {
        let psk = self.psk();
        let n = &mut self.nodes[i];
        if n.child.is_some() {
            return Err(ClusterError::Running(i));
        }
        let _ = std::fs::remove_file(n.dir.join(READY_FILE));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.dir.join("node.log"))
            .map_err(io("cannot open the node's log"))?;
        let log2 = log.try_clone().map_err(io("cannot open the node's log"))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("node")
            .arg("--psk-file")
            .arg(&psk)
            .arg("--data-dir")
            .arg(&n.dir)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--admin", "127.0.0.1:0"])
            .args(&n.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let mut child = cmd
            .spawn()
            .map_err(io(format!("cannot start {}", self.exe.display())))?;
        match wait_ready(&n.dir, &mut child, START_TIMEOUT) {
            Ok(r) => {
                n.ready = r;
                n.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Sends `signal` to node `i` (e.g. `Signal::SIGKILL`) and reaps it.
    pub fn signal(&mut self, i: usize, signal: Signal) {
        if let Some(mut c) = self.nodes[i].child.take() {
            send_signal(&c, signal);
            if signal == Signal::SIGKILL {
                let _ = c.wait();
            } else {
                reap(&mut c, Duration::from_secs(5));
            }
        }
    }

    /// Whether node `i` is running.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Stops every node: SIGTERM, then SIGKILL after five seconds.
    pub fn stop_all(&mut self) {
        let mut children: Vec<Child> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.child.take())
            .collect();
        for c in &children {
            send_signal(c, Signal::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(5);
        for c in children.iter_mut() {
            reap(c, end.saturating_duration_since(Instant::now()));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Sends `signal` to a child we spawned and have not reaped yet, so its PID
/// still names that process.
fn send_signal(c: &Child, signal: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(c.id() as i32), signal);
}

fn reap(c: &mut Child, grace: Duration) {
    let end = Instant::now() + grace;
    loop {
        match c.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = c.kill();
                let _ = c.wait();
                return;
            }
        }
    }
}

fn placeholder() -> Ready {
    Ready {
        node_id: String::new(),
        peer_id: String::new(),
        listen: Vec::new(),
        admin: String::new(),
        c2s: None,
        c2s_tls: None,
        pid: 0,
        role: String::new(),
    }
}

/// Waits for `dir/ready.json` written by `child`.
pub fn wait_ready(dir: &Path, child: &mut Child, timeout: Duration) -> Result<Ready, ClusterError> {
    let end = Instant::now() + timeout;
    let path = dir.join(READY_FILE);
    loop {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(r) = serde_json::from_str::<Ready>(&text)
            && r.pid == child.id()
        {
            return Ok(r);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
            return Err(ClusterError::Exited {
                dir: dir.to_path_buf(),
                status,
                log: log.trim_end().to_string(),
            });
        }
        if Instant::now() > end {
            return Err(ClusterError::NotReady {
                dir: dir.to_path_buf(),
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// User and system CPU a process has used so far, in µs (from
/// `/proc/PID/stat`; 0 when it cannot be read). Benchmarks report it beside
/// their rates.
pub fn cpu_us(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name is parenthesised and may hold spaces; utime and
    // stime are the 14th and 15th fields of the line, in clock ticks
    // (100 per second on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    ticks * 10_000
}
