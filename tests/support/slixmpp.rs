//! A real XMPP client nobody here wrote: slixmpp (PyPI), driven by the
//! script `tests/clients/chat.py`. The virtualenv lives in
//! `target/test-venv` and is created on first use (the README's test
//! command creates it too), with a pinned slixmpp.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The slixmpp release the tests are written against.
pub const SLIXMPP: &str = "slixmpp==1.17.0";

fn venv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv")
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/chat.py")
}

/// The virtualenv's python, with slixmpp installed (created once).
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let py = venv().join("bin/python");
        let ready = Command::new(&py)
            .args(["-c", "import slixmpp"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ready {
            let ok = Command::new("python3")
                .args(["-m", "venv"])
                .arg(venv())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "cannot create a virtualenv (python3 -m venv); install python3-venv"
            );
            let ok = Command::new(venv().join("bin/pip"))
                .args(["install", "-q", SLIXMPP])
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "cannot install {SLIXMPP} from PyPI into {}",
                venv().display()
            );
        }
        py
    })
    .clone()
}

/// One run of the client script; killed by PID if still running when
/// dropped.
pub struct Client {
    child: Child,
    lines: BufReader<ChildStdout>,
}

impl Client {
    /// Starts `chat.py MODE JID PASSWORD HOST PORT ARGS...`.
    pub fn start(mode: &str, jid: &str, password: &str, c2s: &str, args: &[&str]) -> Client {
        let (host, port) = c2s.rsplit_once(':').expect("host:port");
        let mut child = Command::new(python())
            .arg(script())
            .args([mode, jid, password, host, port])
            .args(args)
            .stdout(Stdio::piped())
            // SLIXMPP_DEBUG=1 shows the clients' own errors.
            .stderr(if std::env::var_os("SLIXMPP_DEBUG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("start the slixmpp client");
        let out = child.stdout.take().expect("stdout");
        Client {
            child,
            lines: BufReader::new(out),
        }
    }

    /// The next JSON line it prints (`Null` when it exits without one).
    pub fn next(&mut self) -> serde_json::Value {
        let mut line = String::new();
        match self.lines.read_line(&mut line) {
            Ok(n) if n > 0 => serde_json::from_str(&line).unwrap_or(serde_json::Value::Null),
            _ => serde_json::Value::Null,
        }
    }

    /// Runs to the end; its last JSON line.
    pub fn run(
        mode: &str,
        jid: &str,
        password: &str,
        c2s: &str,
        args: &[&str],
    ) -> serde_json::Value {
        let mut c = Client::start(mode, jid, password, c2s, args);
        let mut last = serde_json::Value::Null;
        loop {
            let v = c.next();
            if v.is_null() {
                break;
            }
            last = v;
        }
        last
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let end = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
