//! `xmpp-ring local --nodes N`: a whole ring on this machine, for trying
//! the product out and for demos.
//!
//! It creates a temporary directory with a fresh ring key and one data
//! directory per node, starts N `xmpp-ring node` processes on 127.0.0.1
//! (the first is everyone's bootstrap, one is an edge), waits until the
//! ring has converged (every node traces a set of sample JIDs to the same,
//! globally closest node), prints the nodes and a table of sample traces,
//! and keeps running until Ctrl-C or SIGTERM. Then it stops exactly the
//! processes it started, by PID, and removes the directory. The same happens
//! when anything fails on the way.

use super::{CliError, Format};
use crate::client::{get_json, url_encode};
use crate::cluster::Cluster;
use clap::Args;
use dht::Key;
use node::api::{StatusReport, TraceReport};
use node::runtime::Ready;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set once SIGINT or SIGTERM arrives; every wait loop checks it, so the
/// nodes are stopped even when the user gives up during start-up.
static STOP: AtomicBool = AtomicBool::new(false);

fn watch_signals() {
    std::thread::spawn(|| {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(super::node_cmd::shutdown_signal());
            STOP.store(true, Ordering::SeqCst);
        }
    });
}

fn interrupted() -> Result<(), CliError> {
    if STOP.load(Ordering::SeqCst) {
        return Err(CliError::Failed("interrupted".into()));
    }
    Ok(())
}

/// Options of `xmpp-ring local`.
#[derive(Args, Debug)]
pub struct LocalArgs {
    /// Number of node processes.
    #[arg(long, default_value_t = 8)]
    pub nodes: usize,
    /// XMPP domain the ring serves.
    #[arg(long, default_value = "ring.test")]
    pub domain: String,
    /// Sample JIDs in the trace table.
    #[arg(long, default_value_t = 8)]
    pub samples: usize,
    /// Bucket size of every node.
    #[arg(long)]
    pub k: Option<usize>,
    /// Bits per digit of every node.
    #[arg(long)]
    pub bits: Option<u8>,
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Port for XMPP clients on 127.0.0.1 (the edge node listens; a free
    /// port is taken when this one is busy).
    #[arg(long, default_value_t = 5222)]
    pub c2s_port: u16,
    /// Port for XMPP clients with direct TLS (XEP-0368) on 127.0.0.1 (a
    /// free port is taken when this one is busy).
    #[arg(long, default_value_t = 5223)]
    pub c2s_tls_port: u16,
    /// Output format of the summary printed once the ring has converged.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

fn start_node(
    cluster: &mut Cluster,
    args: &LocalArgs,
    bootstrap: Option<&str>,
    edge: bool,
) -> Result<Ready, CliError> {
    let mut a: Vec<String> = vec![
        "--log-level".into(),
        "warn".into(),
        "--domain".into(),
        args.domain.clone(),
    ];
    if let Some(b) = bootstrap {
        a.extend(["--bootstrap".into(), b.to_string()]);
    }
    if edge {
        let port = free_port(0)?;
        a.extend([
            "--role".into(),
            "edge".into(),
            "--s2s-listen".into(),
            format!("127.0.0.1:{port}"),
            "--c2s-listen".into(),
            format!("127.0.0.1:{}", free_port(args.c2s_port)?),
            "--c2s-tls-listen".into(),
            format!("127.0.0.1:{}", free_port(args.c2s_tls_port)?),
        ]);
    }
    if let Some(k) = args.k {
        a.extend(["--k".into(), k.to_string()]);
    }
    if let Some(b) = args.bits {
        a.extend(["--bits".into(), b.to_string()]);
    }
    let i = cluster.spawn(&a)?;
    interrupted()?;
    Ok(cluster.nodes[i].ready.clone())
}

/// `preferred` when it is free on 127.0.0.1, else any free port.
fn free_port(preferred: u16) -> Result<u16, CliError> {
    std::net::TcpListener::bind(("127.0.0.1", preferred))
        .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| CliError::Failed(format!("no free port: {e}")))
}

/// Creates the demo users (random passwords) through `admin`; returns
/// them with their passwords.
fn demo_users(admin: &str, domain: &str) -> Result<Vec<(String, String)>, CliError> {
    use rand::RngExt;
    let mut out = Vec::new();
    for name in ["alice", "bob"] {
        let jid = ring_c2s::account::user_jid(&format!("{name}@{domain}"))
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let mut rng = rand::rng();
        let password: String = (0..12)
            .map(|_| {
                let c = b"abcdefghjkmnpqrstuvwxyz23456789";
                char::from(c[rng.random_range(0..c.len())])
            })
            .collect();
        let account = ring_c2s::Account::new(
            &jid,
            &password,
            ring_c2s::account::DEFAULT_ITERATIONS,
            &mut rng,
        )
        .map_err(|e| CliError::Failed(e.to_string()))?;
        let path = format!(
            "/record?op=put&name={}",
            url_encode(&ring_c2s::Account::record_name(&jid))
        );
        let r: node::api::RecordReport =
            crate::client::post_json(admin, &path, &account.encode(), Duration::from_secs(15))?;
        if let Some(e) = r.error {
            return Err(CliError::Failed(format!("cannot create {jid}: {e}")));
        }
        out.push((jid.to_string(), password));
    }
    Ok(out)
}

/// Converged when every node reaches the globally closest node for every
/// sample JID.
fn traces_agree(
    readies: &[Ready],
    samples: &[String],
) -> Result<Option<Vec<TraceReport>>, CliError> {
    let ids: Vec<Key> = readies
        .iter()
        .filter_map(|r| Key::from_hex(&r.node_id))
        .collect();
    let mut table = Vec::new();
    for (si, jid) in samples.iter().enumerate() {
        let key = dht::keys::jid_key(jid).map_err(|e| CliError::Failed(e.to_string()))?;
        let want = ids
            .iter()
            .min_by_key(|id| id.distance(&key))
            .map(|k| k.to_hex());
        for (ni, r) in readies.iter().enumerate() {
            let t: TraceReport = get_json(
                &r.admin,
                &format!("/trace?jid={}", url_encode(jid)),
                Duration::from_secs(15),
            )
            .map_err(|e| CliError::Failed(e.to_string()))?;
            if !t.ok || t.responsible != want {
                return Ok(None);
            }
            if ni == si % readies.len() {
                table.push(t);
            }
        }
    }
    Ok(Some(table))
}

fn summary_text(
    readies: &[Ready],
    traces: &[TraceReport],
    dir: &Path,
    domain: &str,
    users: &[(String, String)],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "ring of {} nodes is up (files in {})\n",
        readies.len(),
        dir.display()
    );
    let _ = writeln!(
        s,
        "  #  node id           role         pid  admin                   listen"
    );
    for (i, r) in readies.iter().enumerate() {
        let _ = writeln!(
            s,
            "{i:>3}  {}  {:<11} {:>6}  http://{:<16} {}",
            &r.node_id[..16],
            r.role,
            r.pid,
            r.admin,
            r.listen.first().map(String::as_str).unwrap_or("-")
        );
    }
    let _ = writeln!(s, "\nsample traces (JID -> responsible node):");
    let _ = writeln!(
        s,
        "  {:<28} {:<8} {:<18} {:>4} {:>10}",
        "jid", "from", "responsible", "hops", "rtt µs"
    );
    for t in traces {
        let from = t.path.first().map(|h| &h.node[..16]).unwrap_or("-");
        let from_idx = readies
            .iter()
            .position(|r| r.node_id.starts_with(from))
            .map(|i| format!("#{i}"))
            .unwrap_or_default();
        let resp = t.responsible.as_deref().unwrap_or("-");
        let resp_idx = readies
            .iter()
            .position(|r| r.node_id == resp)
            .map(|i| format!("#{i}"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {:<28} {:<8} {} {:<3} {:>4} {:>10}",
            t.jid,
            from_idx,
            &resp[..16.min(resp.len())],
            resp_idx,
            t.hops,
            t.rtt_us
        );
    }
    if let Some(c2s) = readies.iter().find_map(|r| r.c2s.as_deref()) {
        let _ = writeln!(
            s,
            "\nlog in with any XMPP client (server {c2s}, STARTTLS with a self-signed certificate):"
        );
        if let Some(tls) = readies.iter().find_map(|r| r.c2s_tls.as_deref()) {
            let _ = writeln!(s, "  (or direct TLS, XEP-0368, at {tls})");
        }
        for (jid, password) in users {
            let _ = writeln!(s, "  {jid:<24} password {password}");
        }
    }
    let _ = writeln!(
        s,
        "\ntry: xmpp-ring status --admin {}",
        readies.first().map(|r| r.admin.as_str()).unwrap_or("-")
    );
    let _ = writeln!(
        s,
        "     xmpp-ring trace --admin {} alice@{domain}",
        readies.first().map(|r| r.admin.as_str()).unwrap_or("-"),
    );
    s
}

/// Runs `xmpp-ring local`.
pub fn run(args: &LocalArgs) -> Result<String, CliError> {
    if args.nodes == 0 || args.nodes > 512 {
        return Err(CliError::Usage("--nodes must be between 1 and 512".into()));
    }
    if args.samples == 0 || args.samples > 1000 {
        return Err(CliError::Usage(
            "--samples must be between 1 and 1000".into(),
        ));
    }
    if let Some(d) = args.duration_s
        && !(d >= 0.0 && d.is_finite())
    {
        return Err(CliError::Usage(
            "--duration-s must be a non-negative number".into(),
        ));
    }
    if dht::keys::jid_key(&format!("x@{}", args.domain)).is_err() {
        return Err(CliError::Usage(format!(
            "--domain {:?} is not a domain name",
            args.domain
        )));
    }
    watch_signals();
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Failed(format!("cannot find my own executable: {e}")))?;
    let mut cluster = Cluster::new(&exe)?;
    eprintln!(
        "starting {} nodes in {}",
        args.nodes,
        cluster.dir().display()
    );
    let mut readies = vec![start_node(&mut cluster, args, None, args.nodes == 1)?];
    let boot = cluster.addr(0);
    for i in 1..args.nodes {
        readies.push(start_node(
            &mut cluster,
            args,
            Some(&boot),
            i == args.nodes - 1,
        )?);
    }
    let samples: Vec<String> = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
    ]
    .iter()
    .cycle()
    .take(args.samples)
    .enumerate()
    .map(|(i, n)| {
        if i < 10 {
            format!("{n}@{}", args.domain)
        } else {
            format!("{n}{i}@{}", args.domain)
        }
    })
    .collect();
    eprintln!("waiting for the ring to converge");
    let end = Instant::now() + Duration::from_secs(120);
    let traces = loop {
        let joined = readies.iter().all(|r| {
            get_json::<StatusReport>(&r.admin, "/status", Duration::from_secs(5))
                .is_ok_and(|s| s.joined || readies.len() == 1)
        });
        if joined && let Some(t) = traces_agree(&readies, &samples)? {
            break t;
        }
        if Instant::now() > end {
            return Err(CliError::Failed(
                "the ring did not converge within 120 s".into(),
            ));
        }
        interrupted()?;
        std::thread::sleep(Duration::from_millis(500));
    };
    let users = demo_users(&readies[0].admin, &args.domain)?;
    let summary = match args.format {
        Format::Text => summary_text(&readies, &traces, cluster.dir(), &args.domain, &users),
        Format::Json => {
            let users: Vec<_> = users
                .iter()
                .map(|(j, p)| serde_json::json!({"jid": j, "password": p}))
                .collect();
            let c2s = readies.iter().find_map(|r| r.c2s.clone());
            let c2s_tls = readies.iter().find_map(|r| r.c2s_tls.clone());
            serde_json::to_string(&serde_json::json!({
                "nodes": readies, "traces": traces, "dir": cluster.dir(),
                "c2s": c2s, "c2s_tls": c2s_tls, "users": users,
            }))
            .map_err(|e| CliError::Failed(e.to_string()))?
                + "\n"
        }
    };
    print!("{summary}");
    eprintln!(
        "running; Ctrl-C stops every node and removes {}",
        cluster.dir().display()
    );
    let end = args
        .duration_s
        .map(|d| Instant::now() + Duration::from_secs_f64(d));
    while !STOP.load(Ordering::SeqCst) && end.is_none_or(|e| Instant::now() < e) {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("stopping {} nodes", cluster.nodes.len());
    drop(cluster);
    Ok(String::new())
}
