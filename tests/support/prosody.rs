//! Real Prosody servers for the tests: one process per domain, in the
//! foreground, on its own loopback address, with its own config, data,
//! certificate and users in a temporary directory. Stopped by PID when
//! dropped (SIGTERM, then SIGKILL), also when a test fails.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct ProsodyOptions {
    /// Authenticate peers by certificate (SASL EXTERNAL) instead of dialback.
    pub secure_auth: bool,
    /// CA file Prosody trusts for s2s peers.
    pub cafile: Option<PathBuf>,
    /// Extra Lua config lines (global section).
    pub extra: String,
    /// Extra components (e.g. MUC), as Lua.
    pub components: String,
}

pub struct Prosody {
    pub domain: String,
    pub ip: Ipv4Addr,
    pub c2s_port: u16,
    pub s2s_port: u16,
    pub dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

/// A free TCP port on `ip`.
pub fn free_port(ip: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Prosody {
    /// Writes the config, creates `users` (name, password) and starts Prosody.
    pub fn start(
        base: &Path,
        domain: &str,
        ip: Ipv4Addr,
        dns: SocketAddr,
        cert: &(PathBuf, PathBuf),
        users: &[(&str, &str)],
        opts: ProsodyOptions,
    ) -> Prosody {
        let dir = base.join(format!("prosody-{domain}"));
        std::fs::create_dir_all(dir.join("data")).expect("mkdir");
        let c2s_port = free_port(ip);
        let s2s_port = free_port(ip);
        let cafile = opts
            .cafile
            .as_ref()
            .map(|c| format!("cafile = \"{}\";", c.display()))
            .unwrap_or_default();
        let config = format!(
            r#"
run_as_root = true
data_path = "{data}"
log = {{ {level} = "{log}" }}
interfaces = {{ "{ip}" }}
c2s_ports = {{ {c2s} }}
s2s_ports = {{ {s2s} }}
http_ports = {{ }}
https_ports = {{ }}
c2s_direct_tls_ports = {{ }}
s2s_direct_tls_ports = {{ }}
modules_enabled = {{ "disco"; "roster"; "saslauth"; "tls"; "dialback"; "ping"; "s2s_auth_certs" }}
modules_disabled = {{ "s2s_bidi" }}
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
s2s_require_encryption = true
s2s_secure_auth = {secure}
s2s_timeout = 30
use_ipv6 = false
unbound = {{ resolvconf = false; hoststxt = false; forward = "127.0.0.1@{dnsport}"; options = {{ ["local-zone:"] = "test. transparent" }} }}
ssl = {{ certificate = "{cert}"; key = "{key}"; {cafile} }}
{extra}
VirtualHost "{domain}"
admins = {{ "admin@{domain}" }}
{components}
"#,
            data = dir.join("data").display(),
            level = if std::env::var("PROSODY_DEBUG").is_ok() {
                "debug"
            } else {
                "info"
            },
            log = dir.join("prosody.log").display(),
            c2s = c2s_port,
            s2s = s2s_port,
            secure = opts.secure_auth,
            dnsport = dns.port(),
            cert = cert.0.display(),
            key = cert.1.display(),
            extra = opts.extra,
            components = opts.components,
        );
        let config_path = dir.join("prosody.cfg.lua");
        std::fs::write(&config_path, config).expect("write config");
        for (user, password) in users {
            let out = Command::new("prosodyctl")
                .arg("--config")
                .arg(&config_path)
                .args(["register", user, domain, password])
                .output()
                .expect("prosodyctl");
            assert!(
                out.status.success(),
                "prosodyctl register failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = std::fs::File::create(dir.join("stdout.log")).expect("log");
        let stderr = stdout.try_clone().expect("log");
        let child = Command::new("prosody")
            .arg("--config")
            .arg(&config_path)
            .arg("-F")
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("start prosody (is it installed? the test command installs it)");
        let mut p = Prosody {
            domain: domain.to_string(),
            ip,
            c2s_port,
            s2s_port,
            dir,
            config: config_path,
            child: Some(child),
        };
        p.wait_listening();
        p
    }

    fn wait_listening(&mut self) {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect((self.ip, self.c2s_port)).is_ok()
                && TcpStream::connect((self.ip, self.s2s_port)).is_ok()
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "prosody for {} exited with {status}:\n{}",
                    self.domain,
                    self.log()
                );
            }
            assert!(
                Instant::now() < end,
                "prosody for {} not listening:\n{}",
                self.domain,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates accounts by writing Prosody's account files (what
    /// `prosodyctl register` writes, without a process per user: benchmarks
    /// need a thousand users). Works while Prosody runs: `internal_plain`
    /// reads the file at each login.
    pub fn add_accounts(&self, users: &[(String, String)]) {
        let host: String = self
            .domain
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_string()
                } else {
                    format!("%{:02x}", c as u32)
                }
            })
            .collect();
        let dir = self.dir.join("data").join(host).join("accounts");
        std::fs::create_dir_all(&dir).expect("accounts dir");
        for (user, password) in users {
            std::fs::write(
                dir.join(format!("{user}.dat")),
                format!("return {{\n\t[\"password\"] = \"{password}\";\n}};\n"),
            )
            .expect("account file");
        }
    }

    pub fn c2s(&self) -> String {
        format!("{}:{}", self.ip, self.c2s_port)
    }

    pub fn log(&self) -> String {
        let a = std::fs::read_to_string(self.dir.join("prosody.log")).unwrap_or_default();
        let b = std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default();
        format!("{b}\n{a}")
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Stops the server: SIGTERM, then SIGKILL after five seconds.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let end = Instant::now() + Duration::from_secs(5);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => return,
                    Ok(None) if Instant::now() < end => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        return;
                    }
                }
            }
        }
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        self.stop();
    }
}
