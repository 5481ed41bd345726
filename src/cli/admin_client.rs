//! `xmpp-ring status` and `xmpp-ring trace`: clients of a node's admin HTTP.

use super::{CliError, Format};
use clap::Args;
use node::api::{StatusReport, TraceReport};
use std::fmt::Write as _;
use std::time::Duration;

/// Options of `xmpp-ring status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The node's admin address (host:port or http://host:port).
    #[arg(long)]
    pub admin: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Options of `xmpp-ring trace`.
#[derive(Args, Debug)]
pub struct TraceArgs {
    /// The node's admin address (host:port or http://host:port).
    #[arg(long)]
    pub admin: String,
    /// The JID to trace.
    pub jid: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

fn base_url(admin: &str) -> String {
    let a = admin.trim_end_matches('/');
    if a.starts_with("http://") { a.to_string() } else { format!("http://{a}") }
}

/// GETs a JSON document from a node's admin server.
pub fn get_json<T: serde::de::DeserializeOwned>(admin: &str, path_and_query: &str, timeout: Duration) -> Result<T, CliError> {
    let url = format!("{}{}", base_url(admin), path_and_query);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent.get(&url).call().map_err(|e| CliError::Failed(format!("{url}: {e}")))?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| CliError::Failed(format!("{url}: {e}")))?;
    if !status.is_success() {
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(body);
        return Err(if status.as_u16() == 400 { CliError::Usage(msg) } else { CliError::Failed(format!("{url}: {status}: {msg}")) });
    }
    serde_json::from_str(&body).map_err(|e| CliError::Failed(format!("{url}: unexpected answer: {e}")))
}

/// `xmpp-ring status`.
pub fn status(args: &StatusArgs) -> Result<String, CliError> {
    let r: StatusReport = get_json(&args.admin, "/status", Duration::from_secs(10))?;
    if args.format == Format::Json {
        return serde_json::to_string(&r).map(|s| s + "\n").map_err(|e| CliError::Failed(e.to_string()));
    }
    let mut s = String::new();
    let _ = writeln!(s, "node      {}", r.node_id);
    let _ = writeln!(s, "peer      {}", r.peer_id);
    let _ = writeln!(s, "role      {}{}", r.role, r.s2s_listen.map(|a| format!(" (s2s {a})")).unwrap_or_default());
    let _ = writeln!(s, "domains   {}", if r.domains.is_empty() { "-".into() } else { r.domains.join(", ") });
    for a in &r.addresses {
        let _ = writeln!(s, "address   {a}");
    }
    let _ = writeln!(s, "joined    {}   uptime {:.0} s", r.joined, r.uptime_s);
    let _ = writeln!(s, "table     {} contacts in {} buckets; {} peers connected", r.table_size, r.buckets.len(), r.connected_peers);
    let _ = writeln!(s, "queues    {} pending, {} awaiting an outcome", r.pending, r.outstanding);
    let c = &r.counters;
    let _ = writeln!(
        s,
        "envelopes routed {} delivered {} forwarded {} bounced {} rerouted {} duplicates {}",
        c.routed, c.delivered, c.forwarded, c.bounced, c.rerouted, c.duplicates
    );
    let _ = writeln!(
        s,
        "network   ack timeouts {} refused incoming {} failed outgoing {} bad streams {}",
        c.ack_timeouts, c.refused_incoming, c.failed_outgoing, c.bad_streams
    );
    Ok(s)
}

/// Renders a trace as text.
pub fn trace_text(r: &TraceReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{} -> key {}", r.jid, &r.key[..16.min(r.key.len())]);
    if !r.ok {
        let _ = writeln!(s, "failed: {}", r.error.as_deref().unwrap_or("unknown"));
        return s;
    }
    for (i, h) in r.path.iter().enumerate() {
        let _ = writeln!(s, "  {i:>2}  {}  +{} µs", &h.node[..16.min(h.node.len())], h.latency_us);
    }
    let _ = writeln!(s, "{} hops, responsible {}, round trip {} µs", r.hops, r.responsible.as_deref().map(|n| &n[..16.min(n.len())]).unwrap_or("-"), r.rtt_us);
    s
}

/// `xmpp-ring trace`.
pub fn trace(args: &TraceArgs) -> Result<String, CliError> {
    let q = format!("/trace?jid={}", url_encode(&args.jid));
    let r: TraceReport = get_json(&args.admin, &q, Duration::from_secs(15))?;
    match args.format {
        Format::Json => serde_json::to_string(&r).map(|s| s + "\n").map_err(|e| CliError::Failed(e.to_string())),
        Format::Text => {
            let text = trace_text(&r);
            if r.ok { Ok(text) } else { Err(CliError::Failed(text.trim_end().to_string())) }
        }
    }
}

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}
