//! Clients on a ring against clients on Prosody, side by side in one run,
//! with the same load generator (this process) and the same client code
//! (STARTTLS, SCRAM, bind; `tests/support/c2s_client.rs`):
//!
//! * **Logins**: `--concurrency` tasks log in and out as fast as they can
//!   for `--seconds`: logins per second (TLS + SCRAM-SHA-256 at the ring,
//!   SCRAM-SHA-1 at Prosody, which offers no SHA-256 with `internal_plain`).
//!   The ring's clients use cached salted passwords, as real clients do;
//!   Prosody's salts are per login, so its clients run PBKDF2 each time
//!   (the load generator's CPU is reported beside each rate).
//! * **Idle sessions**: `--idle` sessions held on one access node (one
//!   Prosody): resident memory per session (RSS delta / sessions).
//! * **1:1 chat**: `--pairs` pairs of users, each pair's two users on
//!   different access nodes of a 4-node ring (on one Prosody): every
//!   sender sends `--rate` messages per second in all for `--seconds`;
//!   delivered messages per second and the send-to-receive latency
//!   (p50/p99), then a burst (`--burst` messages per sender at once).
//!
//! * **Many sessions** (phase `sessions`, ring only, not run by default):
//!   `--sessions` users (50,000) logged in at once, spread over the four
//!   access nodes: the fill rate, the nodes' memory per session, their CPU
//!   while the sessions sit idle (lease renewals), and whether messages
//!   still arrive. The sessions are held by child processes of this bench
//!   (12,500 each, so that none needs more file descriptors than an
//!   unprivileged process gets).
//!
//! `--targets ring,prosody` and `--phases logins,idle,chat[,sessions]`
//! choose what runs (all but `sessions` by default). Prints one JSON object. Everything listens on
//! 127.0.0.0/8 only.

#[path = "../tests/support/mod.rs"]
mod support;

use rand::RngExt;
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::c2s_client::{C2sClient, Login, tls_config};
use support::cpu::Cpu;
use xmpp_ring::cluster::Cluster;

const PROSODY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 30);
const RING_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 31);
const ACCESS_NODES: usize = 4;
const ITERATIONS: u32 = 4096;

/// SCRAM-SHA-256's salt, iterations and salted password of a user.
type Salted = (Vec<u8>, u32, Vec<u8>);

struct Args {
    pairs: usize,
    concurrency: usize,
    seconds: f64,
    idle: usize,
    rate: f64,
    burst: usize,
    /// Sessions held at once for the `sessions` phase (ring only).
    sessions: usize,
    /// Which servers (`ring`, `prosody`).
    targets: Vec<String>,
    /// Which measurements (`logins`, `idle`, `chat`).
    phases: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        pairs: 100,
        concurrency: 32,
        seconds: 5.0,
        idle: 2000,
        rate: 2000.0,
        burst: 50,
        sessions: 50_000,
        targets: vec!["ring".into(), "prosody".into()],
        phases: vec!["logins".into(), "idle".into(), "chat".into()],
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> f64 {
        argv.get(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{} needs a number", argv[i - 1]))
    };
    let mut i = 0;
    while i < argv.len() {
        match argv[i].as_str() {
            "--pairs" => a.pairs = num(i + 1) as usize,
            "--concurrency" => a.concurrency = num(i + 1) as usize,
            "--seconds" => a.seconds = num(i + 1),
            "--idle" => a.idle = num(i + 1) as usize,
            "--rate" => a.rate = num(i + 1),
            "--burst" => a.burst = num(i + 1) as usize,
            "--sessions" => a.sessions = num(i + 1) as usize,
            "--targets" | "--phases" => {
                let list: Vec<String> = argv
                    .get(i + 1)
                    .map(|v| v.split(',').map(str::to_string).collect())
                    .unwrap_or_default();
                if argv[i] == "--targets" {
                    a.targets = list;
                } else {
                    a.phases = list;
                }
            }
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown flag {other}"),
        }
        i += 2;
    }
    a
}

/// One server under test: where each user logs in.
struct Target {
    name: &'static str,
    /// Logins by user index.
    logins: Vec<Login>,
    /// Access address of user `i` in a pair run (different nodes for the
    /// two users of a pair on the ring).
    pids: Vec<u32>,
    /// The ring nodes' admin addresses (none for Prosody).
    admins: Vec<String>,
}

/// The ring's envelope counters summed over its nodes: (created,
/// forwarded, delivered).
fn envelopes(t: &Target) -> (u64, u64, u64) {
    t.admins
        .iter()
        .filter_map(|a| {
            xmpp_ring::client::get_json::<node::api::StatusReport>(
                a,
                "/status",
                Duration::from_secs(5),
            )
            .ok()
        })
        .map(|s| {
            (
                s.counters.routed,
                s.counters.forwarded,
                s.counters.delivered,
            )
        })
        .fold((0, 0, 0), |x, y| (x.0 + y.0, x.1 + y.1, x.2 + y.2))
}

fn self_cpu_us() -> u64 {
    xmpp_ring::cluster::cpu_us(std::process::id())
}

fn percentile(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1000.0
}

async fn logins_per_s(t: &Target, a: &Args) -> Value {
    let tls = tls_config();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(a.seconds);
    let cpu = Cpu::start(vec![(t.name.to_string(), t.pids.clone())]);
    let me0 = self_cpu_us();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..a.concurrency {
        let logins = t.logins.clone();
        let (tls, done, failed) = (tls.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = k;
            while Instant::now() < end {
                let l = &logins[i % logins.len()];
                match C2sClient::login(l, tls.clone()).await {
                    Ok(c) => {
                        c.close().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("login failed: {e}");
                        }
                    }
                }
                i += 7;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    json!({
        "logins": n,
        "failed": failed.load(Ordering::Relaxed),
        "logins_per_s": n as f64 / secs,
        "server_cpu_us_per_login": cpu.per(n)[t.name],
        "load_generator_cpu_us_per_login": (self_cpu_us() - me0) as f64 / n.max(1) as f64,
    })
}

async fn idle_sessions(t: &Target, a: &Args) -> Value {
    let tls = tls_config();
    // Every login at the first access node (Prosody has only one).
    let pid = t.pids[0];
    let before = support::raw::rss_bytes(pid) / 1024;
    let mut held = Vec::new();
    let mut failed = 0;
    for chunk in (0..a.idle).collect::<Vec<_>>().chunks(64) {
        let mut batch = Vec::new();
        for &i in chunk {
            let mut l = t.logins[i % t.logins.len()].clone();
            l.addr = t.logins[0].addr.clone();
            l.presence = true;
            let tls = tls.clone();
            batch.push(tokio::spawn(async move { C2sClient::login(&l, tls).await }));
        }
        for b in batch {
            match b.await {
                Ok(Ok(c)) => held.push(c),
                _ => failed += 1,
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = support::raw::rss_bytes(pid) / 1024;
    let n = held.len() as u64;
    for c in held {
        c.close().await;
    }
    json!({
        "sessions": n,
        "failed": failed,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_session": (after.saturating_sub(before)) as f64 / n.max(1) as f64,
    })
}

/// Sessions one holder process keeps (each needs a file descriptor, and
/// an unprivileged process may have 20,000 here).
const PER_HOLDER: usize = 12_500;

/// A holder process: `--hold-child FROM TO ADDRS PASSWORD SALT ITER SALTED`
/// logs users FROM..TO in (user `i` at `ADDRS[(i/2 + i%2) % len]`, SCRAM
/// with the cached salted password, base64), prints
/// `{"held", "failed", "fill_s"}`, then on each `sample` line from stdin
/// sends a chat message from each of its first 50 sessions to the bare JID
/// of the session half-way along and prints `{"sample", "arrived"}`; it
/// closes every session and exits when stdin ends.
fn hold_child(argv: &[String]) {
    use base64::Engine;
    use std::io::BufRead;
    let b64 = base64::engine::general_purpose::STANDARD;
    let from: usize = argv[0].parse().expect("from");
    let to: usize = argv[1].parse().expect("to");
    let addrs: Vec<&str> = argv[2].split(',').collect();
    let cached: Salted = (
        b64.decode(&argv[4]).expect("salt"),
        argv[5].parse().expect("iterations"),
        b64.decode(&argv[6]).expect("salted"),
    );
    let logins: Vec<Login> = (from..to)
        .map(|i| Login {
            salted_sha256: Some(cached.clone()),
            presence: true,
            ..Login::new(
                addrs[(i / 2 + i % 2) % addrs.len()],
                &format!("u{i}@ring.test"),
                &argv[3],
            )
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tls = tls_config();
        let n = logins.len();
        let next = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let held = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
        let start = Instant::now();
        let logins = Arc::new(logins);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (logins, tls) = (logins.clone(), tls.clone());
                let (next, failed, held) = (next.clone(), failed.clone(), held.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        if i >= n {
                            return;
                        }
                        match C2sClient::login(&logins[i], tls.clone()).await {
                            Ok(c) => {
                                if let Ok(mut h) = held.lock() {
                                    h.push((i, c));
                                }
                            }
                            Err(e) => {
                                if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                                    eprintln!("login {} failed: {e}", logins[i].jid);
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        let mut held = std::mem::take(&mut *held.lock().expect("held"));
        held.sort_by_key(|(i, _)| *i);
        println!(
            "{}",
            json!({"held": held.len(), "failed": failed.load(Ordering::Relaxed),
                   "fill_s": start.elapsed().as_secs_f64()})
        );
        // The parent's requests, as they come (stdin is read on a blocking
        // thread).
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4);
        tokio::task::spawn_blocking(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if tx.blocking_send(line).is_err() {
                    return;
                }
            }
        });
        while let Some(line) = rx.recv().await {
            if line.trim() != "sample" {
                continue;
            }
            let half = held.len() / 2;
            let sample = 50.min(half);
            for k in 0..sample {
                let to = logins[held[half + k].0].jid.clone();
                let _ = held[k]
                    .1
                    .send_raw(&format!(
                        "<message to='{to}' type='chat' id='s{k}'><body>sample</body></message>"
                    ))
                    .await;
            }
            let mut arrived = 0;
            let deadline = Instant::now() + Duration::from_secs(10);
            for k in 0..sample {
                let id = format!("s{k}");
                let rx = &mut held[half + k].1.incoming;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, rx.recv()).await {
                        Ok(Some(m)) if m.name() == "message" && m.attr("id") == Some(&id) => {
                            arrived += 1;
                            break;
                        }
                        Ok(Some(_)) => continue,
                        _ => break,
                    }
                }
            }
            println!("{}", json!({"sample": sample, "arrived": arrived}));
        }
        for (_, c) in held {
            c.close().await;
        }
    });
}

/// `a.sessions` sessions at once over the ring's access nodes, held by
/// child processes of this bench ([`hold_child`]); then 30 s of idleness,
/// a sample of messages, and out.
fn held_sessions(t: &Target, a: &Args, addrs: &[String], password: &str, cached: &Salted) -> Value {
    use base64::Engine;
    use std::io::{BufRead, Write};
    let b64 = base64::engine::general_purpose::STANDARD;
    let exe = std::env::current_exe().expect("own path");
    let rss = |pids: &[u32]| -> u64 { pids.iter().map(|&p| support::raw::rss_bytes(p)).sum() };
    let before = rss(&t.pids);
    let cpu = Cpu::start(vec![(t.name.to_string(), t.pids.clone())]);
    let start = Instant::now();
    let mut holders = Vec::new();
    for from in (0..a.sessions).step_by(PER_HOLDER) {
        let to = (from + PER_HOLDER).min(a.sessions);
        let mut child = std::process::Command::new(&exe)
            .arg("--hold-child")
            .args([
                from.to_string(),
                to.to_string(),
                addrs.join(","),
                password.to_string(),
                b64.encode(&cached.0),
                cached.1.to_string(),
                b64.encode(&cached.2),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("holder process");
        let out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        holders.push((child, out.lines()));
    }
    let mut count = 0u64;
    let mut failed = 0u64;
    for (_, lines) in holders.iter_mut() {
        let line = lines.next().and_then(Result::ok).unwrap_or_default();
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        count += v["held"].as_u64().unwrap_or(0);
        failed += v["failed"].as_u64().unwrap_or(0);
    }
    let fill_s = start.elapsed().as_secs_f64();
    let fill_cpu = cpu.per(1)[t.name].as_f64().unwrap_or(0.0);
    let holder_pids: Vec<u32> = holders.iter().map(|(c, _)| c.id()).collect();
    let holder_rss = rss(&holder_pids);
    eprintln!("{count} sessions in {fill_s:.1} s; idling");
    std::thread::sleep(Duration::from_secs(5));
    let idle = Duration::from_secs(30);
    let cpu = Cpu::start(vec![
        (t.name.to_string(), t.pids.clone()),
        ("holders".into(), holder_pids),
    ]);
    std::thread::sleep(idle);
    let idle_cpu = cpu.per(1);
    let after = rss(&t.pids);
    let (mut sample, mut arrived) = (0, 0);
    for (child, _) in holders.iter_mut() {
        if let Some(stdin) = child.stdin.as_mut() {
            let _ = writeln!(stdin, "sample");
        }
    }
    for (_, lines) in holders.iter_mut() {
        let line = lines.next().and_then(Result::ok).unwrap_or_default();
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        sample += v["sample"].as_u64().unwrap_or(0);
        arrived += v["arrived"].as_u64().unwrap_or(0);
    }
    for (mut child, _) in holders {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    let pct = |name: &str| idle_cpu[name].as_f64().unwrap_or(0.0) / idle.as_secs_f64() / 1e4;
    json!({
        "sessions": count,
        "failed": failed,
        "holder_processes": a.sessions.div_ceil(PER_HOLDER),
        "fill_seconds": fill_s,
        "logins_per_s_while_filling": count as f64 / fill_s,
        "server_cpu_us_per_login_while_filling": fill_cpu / count.max(1) as f64,
        "access_nodes": t.pids.len(),
        "server_rss_before_kib": before / 1024,
        "server_rss_after_kib": after / 1024,
        "server_kib_per_session": after.saturating_sub(before) as f64 / 1024.0 / count.max(1) as f64,
        "idle_seconds": idle.as_secs(),
        "idle_server_cpu_percent_of_one_core": pct(t.name),
        "idle_load_generator_cpu_percent_of_one_core": pct("holders"),
        "load_generator_kib_per_session": holder_rss as f64 / 1024.0 / count.max(1) as f64,
        "sample_messages": sample,
        "sample_arrived": arrived,
    })
}

/// The figures of one chat run: (sent, received, seconds), latencies in
/// µs, the servers' CPU meter and the load generator's CPU at the start.
fn chat_report(
    t: &Target,
    (sent, got, secs): (u64, u64, f64),
    mut lat: Vec<u64>,
    cpu: &Cpu,
    me0: u64,
) -> Value {
    json!({
        "sent": sent, "received": got,
        "messages_per_s": got as f64 / secs,
        "latency_ms_p50": percentile(&mut lat, 0.5),
        "latency_ms_p99": percentile(&mut lat, 0.99),
        "server_cpu_us_per_message": cpu.per(got)[t.name],
        "load_generator_cpu_us_per_message": (self_cpu_us() - me0) as f64 / got.max(1) as f64,
    })
}

/// Pairs (2i sends to 2i+1); `rate` messages per second in all for
/// `seconds`, then a burst.
async fn chat(t: &Target, a: &Args) -> Value {
    let tls = tls_config();
    let base = Instant::now();
    let mut senders = Vec::new();
    let received = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    for p in 0..a.pairs {
        let (s, r) = (&t.logins[2 * p], &t.logins[2 * p + 1]);
        let mut receiver = C2sClient::login(r, tls.clone())
            .await
            .expect("receiver login");
        let sender = C2sClient::login(s, tls.clone())
            .await
            .expect("sender login");
        let (received, latencies) = (received.clone(), latencies.clone());
        tokio::spawn(async move {
            while let Some(el) = receiver.incoming.recv().await {
                if el.name() != "message" {
                    continue;
                }
                let Some(sent) = el
                    .get_child("body", "jabber:client")
                    .and_then(|b| b.text().parse::<u64>().ok())
                else {
                    continue;
                };
                let now = base.elapsed().as_micros() as u64;
                received.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = latencies.lock() {
                    l.push(now.saturating_sub(sent));
                }
            }
        });
        senders.push((sender, r.jid.clone()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let send_round = |senders: &mut Vec<(C2sClient, String)>, per: usize| {
        let mut out = Vec::new();
        for (_, to) in senders.iter() {
            let mut xml = String::new();
            for _ in 0..per {
                let stamp = base.elapsed().as_micros();
                xml.push_str(&format!(
                    "<message to='{to}' type='chat'><body>{stamp}</body></message>"
                ));
            }
            out.push(xml);
        }
        out
    };
    // Paced.
    let env0 = envelopes(t);
    let cpu = Cpu::start(vec![(t.name.to_string(), t.pids.clone())]);
    let me0 = self_cpu_us();
    let tick = Duration::from_millis(100);
    let per_tick = (a.rate * tick.as_secs_f64() / a.pairs as f64).max(1.0) as usize;
    let ticks = (a.seconds / tick.as_secs_f64()) as usize;
    let start = Instant::now();
    let mut sent = 0u64;
    for k in 0..ticks {
        let batch = send_round(&mut senders, per_tick);
        for ((s, _), xml) in senders.iter_mut().zip(batch) {
            if s.send_raw(&xml).await.is_ok() {
                sent += per_tick as u64;
            }
        }
        tokio::time::sleep_until((start + tick * (k as u32 + 1)).into()).await;
    }
    let wait_end = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < sent && Instant::now() < wait_end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let got = received.swap(0, Ordering::Relaxed);
    let lat = std::mem::take(&mut *latencies.lock().expect("latencies"));
    let mut paced = chat_report(t, (sent, got, secs), lat, &cpu, me0);
    if !t.admins.is_empty() {
        // Everything the ring sent meanwhile, per message delivered: the
        // messages' envelopes and the sessions' lease renewals (about 3 %
        // of them at 200 sessions and 2,000 messages a second).
        let env1 = envelopes(t);
        let per = |a: u64, b: u64| (b - a) as f64 / got.max(1) as f64;
        paced["ring_envelopes_per_message"] = json!(per(env0.0, env1.0));
        paced["ring_forwards_per_message"] = json!(per(env0.1, env1.1));
        paced["ring_deliveries_per_message"] = json!(per(env0.2, env1.2));
    }
    // Burst.
    let cpu = Cpu::start(vec![(t.name.to_string(), t.pids.clone())]);
    let me0 = self_cpu_us();
    let start = Instant::now();
    let batch = send_round(&mut senders, a.burst);
    let mut sent = 0u64;
    for ((s, _), xml) in senders.iter_mut().zip(batch) {
        if s.send_raw(&xml).await.is_ok() {
            sent += a.burst as u64;
        }
    }
    let wait_end = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < sent && Instant::now() < wait_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let got = received.load(Ordering::Relaxed);
    let lat = std::mem::take(&mut *latencies.lock().expect("latencies"));
    let burst = chat_report(t, (sent, got, secs), lat, &cpu, me0);
    for (s, _) in senders {
        s.close().await;
    }
    json!({ "paced": paced, "burst": burst })
}

/// Creates the ring's accounts (every user has the bench's one password):
/// the keys are derived once and shared, as deriving them 50,000 times
/// would cost the load generator minutes and changes nothing the servers
/// do. Returns SCRAM-SHA-256's cached salted password for each.
fn ring_accounts(ring: &Cluster, users: &[(String, String)]) -> Vec<Option<Salted>> {
    let Some((first, pw)) = users.first() else {
        return Vec::new();
    };
    let bare = ring_c2s::account::user_jid(first).expect("jid");
    let model = ring_c2s::Account::new(&bare, pw, ITERATIONS, &mut rand::rng()).expect("account");
    let salted =
        ring_c2s::ScramHash::Sha256.salted_password(pw.as_bytes(), &model.sha256.salt, ITERATIONS);
    let cached: Salted = (model.sha256.salt.clone(), ITERATIONS, salted);
    let admin = ring.admin(0).to_string();
    let threads: Vec<_> = users
        .chunks(users.len().div_ceil(8).max(1))
        .map(|chunk| {
            let (admin, model) = (admin.clone(), model.clone());
            let jids: Vec<String> = chunk.iter().map(|(j, _)| j.clone()).collect();
            std::thread::spawn(move || {
                for jid in jids {
                    let bare = ring_c2s::account::user_jid(&jid).expect("jid");
                    let acct = ring_c2s::Account {
                        jid: bare.to_string(),
                        ..model.clone()
                    };
                    let path = format!(
                        "/record?op=put&name={}",
                        xmpp_ring::client::url_encode(&ring_c2s::Account::record_name(&bare))
                    );
                    let r: node::api::RecordReport = xmpp_ring::client::post_json(
                        &admin,
                        &path,
                        &acct.encode(),
                        Duration::from_secs(20),
                    )
                    .expect("put account");
                    assert!(r.error.is_none(), "{r:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("account thread");
    }
    vec![Some(cached); users.len()]
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--hold-child") {
        return hold_child(&argv[1..]);
    }
    let a = args();
    support::require_prosody();
    let dir = tempfile::tempdir().expect("tmp");
    let dns = support::dns::DnsServer::start();
    let n = 2 * a.pairs;
    let sessions = a.phases.iter().any(|p| p == "sessions");
    let ring_n = if sessions { n.max(a.sessions) } else { n };
    let pw: String = {
        let mut r = rand::rng();
        (0..12)
            .map(|_| char::from(b'a' + r.random_range(0..26u8)))
            .collect()
    };
    let names: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    let prosody = support::prosody_with_own_ca(
        dir.path(),
        &dns,
        "a.test",
        PROSODY_IP,
        &[],
        support::prosody::ProsodyOptions::default(),
    );
    prosody.add_accounts(
        &names
            .iter()
            .map(|u| (u.clone(), pw.clone()))
            .collect::<Vec<_>>(),
    );
    // The ring: four nodes, each an access node.
    let mut ring = Cluster::new(std::path::Path::new(support::EXE)).expect("cluster");
    let mut c2s = Vec::new();
    for i in 0..ACCESS_NODES {
        let addr = format!("{RING_IP}:{}", support::prosody::free_port(RING_IP));
        let mut args = support::args(&[
            "--log-level",
            "warn",
            "--domain",
            "ring.test",
            "--c2s-listen",
            &addr,
            "--c2s-max-connections",
            "100000",
            "--c2s-max-connections-per-ip",
            "100000",
            "--c2s-connection-rate-per-ip",
            "1000000",
        ]);
        if i > 0 {
            args.extend(support::args(&["--bootstrap", &ring.addr(0)]));
        }
        ring.spawn(&args).expect("node");
        c2s.push(addr);
    }
    let start = Instant::now();
    while !(0..ring.nodes.len()).all(|i| support::status(&ring, i).joined) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ring does not form"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let the first refreshes settle, so every account lands on its home.
    std::thread::sleep(Duration::from_secs(2));
    let ring_users: Vec<(String, String)> = (0..ring_n)
        .map(|i| (format!("u{i}@ring.test"), pw.clone()))
        .collect();
    let salted = ring_accounts(&ring, &ring_users);
    let cached = salted.first().cloned().flatten();
    if std::env::var("C2S_BENCH_DEBUG").is_ok() {
        for i in 0..ring.nodes.len() {
            let r: node::api::RecordReport = xmpp_ring::client::get_json(
                ring.admin(i),
                "/record?op=get&name=account%3Au0%40ring.test",
                Duration::from_secs(5),
            )
            .expect("get");
            eprintln!(
                "node {i}: found {} value {:?}",
                r.found,
                r.value.map(|v| v.len())
            );
        }
    }
    let ring_target = Target {
        name: "ring",
        logins: ring_users
            .iter()
            .zip(salted)
            .enumerate()
            .map(|(i, ((jid, pw), salted))| Login {
                salted_sha256: salted,
                presence: true,
                // The two users of a pair on different access nodes.
                ..Login::new(&c2s[(i / 2 + i % 2) % ACCESS_NODES], jid, pw)
            })
            .collect(),
        pids: ring
            .nodes
            .iter()
            .filter_map(|n| n.ready.pid.into())
            .collect(),
        admins: (0..ring.nodes.len())
            .map(|i| ring.admin(i).to_string())
            .collect(),
    };
    let prosody_target = Target {
        name: "prosody",
        logins: names
            .iter()
            .map(|u| Login {
                presence: true,
                ..Login::new(&prosody.c2s(), &format!("{u}@a.test"), &pw)
            })
            .collect(),
        pids: prosody.pid().into_iter().collect(),
        admins: Vec::new(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut out = serde_json::Map::new();
    let wanted = |list: &[String], name: &str| list.iter().any(|x| x == name);
    for t in [&ring_target, &prosody_target] {
        if !wanted(&a.targets, t.name) {
            continue;
        }
        let r = rt.block_on(async {
            let mut r = serde_json::Map::new();
            if wanted(&a.phases, "logins") {
                let logins = logins_per_s(t, &a).await;
                eprintln!("{}: logins {logins}", t.name);
                r.insert("logins".into(), logins);
            }
            if wanted(&a.phases, "idle") {
                let idle = idle_sessions(t, &a).await;
                eprintln!("{}: idle {idle}", t.name);
                r.insert("idle".into(), idle);
            }
            if wanted(&a.phases, "chat") {
                let chat = chat(t, &a).await;
                eprintln!("{}: chat {chat}", t.name);
                r.insert("chat".into(), chat);
            }
            Value::Object(r)
        });
        let mut r = r;
        if wanted(&a.phases, "sessions")
            && t.name == "ring"
            && let (Some(o), Some(cached)) = (r.as_object_mut(), cached.as_ref())
        {
            let s = held_sessions(t, &a, &c2s, &pw, cached);
            eprintln!("{}: sessions {s}", t.name);
            o.insert("sessions".into(), s);
        }
        out.insert(t.name.to_string(), r);
    }
    let ratio = |path: &[&str]| {
        let get = |name: &str| {
            out.get(name)
                .map(|o| path.iter().fold(o, |v, k| &v[*k]))
                .and_then(Value::as_f64)
        };
        match (get("ring"), get("prosody")) {
            (Some(r), Some(p)) => json!(r / p.max(1e-9)),
            _ => Value::Null,
        }
    };
    let ratios = json!({
        "logins_per_s": ratio(&["logins", "logins_per_s"]),
        "chat_paced_messages_per_s": ratio(&["chat", "paced", "messages_per_s"]),
        "chat_burst_messages_per_s": ratio(&["chat", "burst", "messages_per_s"]),
        "kib_per_idle_session": ratio(&["idle", "kib_per_session"]),
    });
    out.insert("ring_over_prosody".into(), ratios);
    out.insert(
        "config".into(),
        json!({"pairs": a.pairs, "concurrency": a.concurrency, "seconds": a.seconds,
               "idle": a.idle, "rate": a.rate, "burst": a.burst,
               "access_nodes": ACCESS_NODES, "scram_iterations": ITERATIONS}),
    );
    println!("{}", Value::Object(out));
}
