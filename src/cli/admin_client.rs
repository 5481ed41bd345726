//! `xmpp-ring status` and `xmpp-ring trace`: clients of a node's admin HTTP.

use super::{CliError, Format};
use crate::client::{self, ClientError};
use clap::Args;
use node::api::{StatusReport, TraceReport};
use std::fmt::Write as _;
use std::time::Duration;

/// Uses the bearer token in `file` for this process's admin requests (a
/// node's `admin.token`; needed when its admin interface is beyond
/// loopback). `XMPP_RING_ADMIN_TOKEN` serves when no file is given.
pub fn use_token_file(file: Option<&std::path::Path>) -> Result<(), CliError> {
    if let Some(f) = file {
        let t = std::fs::read_to_string(f)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", f.display())))?;
        client::use_token(t.trim().to_string());
    }
    Ok(())
}

/// Options of `xmpp-ring status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The node's admin address (host:port or http://host:port).
    #[arg(long)]
    pub admin: String,
    /// The node's admin bearer token (its `admin.token`).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
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
    /// The node's admin bearer token (its `admin.token`).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// The JID to trace.
    pub jid: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::BadRequest(m) => CliError::Usage(m),
            ClientError::Failed(m) => CliError::Failed(m),
        }
    }
}

/// `xmpp-ring status`.
pub fn status(args: &StatusArgs) -> Result<String, CliError> {
    use_token_file(args.admin_token_file.as_deref())?;
    let r: StatusReport = client::get_json(&args.admin, "/status", Duration::from_secs(10))?;
    if args.format == Format::Json {
        return serde_json::to_string(&r)
            .map(|s| s + "\n")
            .map_err(|e| CliError::Failed(e.to_string()));
    }
    let mut s = String::new();
    let _ = writeln!(s, "node      {}", r.node_id);
    let _ = writeln!(s, "peer      {}", r.peer_id);
    let _ = writeln!(
        s,
        "role      {}{}",
        r.role,
        r.s2s_listen
            .map(|a| format!(" (s2s {a})"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "domains   {}",
        if r.domains.is_empty() {
            "-".into()
        } else {
            r.domains.join(", ")
        }
    );
    for a in &r.addresses {
        let _ = writeln!(s, "address   {a}");
    }
    let _ = writeln!(s, "joined    {}   uptime {:.0} s", r.joined, r.uptime_s);
    let _ = writeln!(
        s,
        "table     {} contacts in {} buckets; {} peers connected",
        r.table_size,
        r.buckets.len(),
        r.connected_peers
    );
    let _ = writeln!(
        s,
        "queues    {} pending, {} awaiting an outcome",
        r.pending, r.outstanding
    );
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
    let _ = writeln!(s, "stanzas   handled here {}", c.stanzas_handled);
    let rec = &r.records;
    let _ = writeln!(
        s,
        "records   {} held, {} of {} bytes, {} copies each; {} coordinated, {} copies in, {} out, {} refused",
        rec.count,
        rec.bytes,
        rec.max_bytes,
        rec.replicas,
        rec.coordinated,
        rec.replicas_in,
        rec.replicas_out,
        rec.refused
    );
    Ok(s)
}

fn short(s: &str) -> &str {
    &s[..16.min(s.len())]
}

/// Renders a trace as text.
pub fn trace_text(r: &TraceReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{} -> key {}", r.jid, short(&r.key));
    if !r.ok {
        let _ = writeln!(s, "failed: {}", r.error.as_deref().unwrap_or("unknown"));
        return s;
    }
    for (i, h) in r.path.iter().enumerate() {
        let _ = writeln!(s, "  {i:>2}  {}  +{} µs", short(&h.node), h.latency_us);
    }
    let _ = writeln!(
        s,
        "{} hops, responsible {}, round trip {} µs",
        r.hops,
        r.responsible.as_deref().map(short).unwrap_or("-"),
        r.rtt_us
    );
    s
}

/// `xmpp-ring trace`.
pub fn trace(args: &TraceArgs) -> Result<String, CliError> {
    use_token_file(args.admin_token_file.as_deref())?;
    let q = format!("/trace?jid={}", client::url_encode(&args.jid));
    let r: TraceReport = client::get_json(&args.admin, &q, Duration::from_secs(15))?;
    match args.format {
        Format::Json => serde_json::to_string(&r)
            .map(|s| s + "\n")
            .map_err(|e| CliError::Failed(e.to_string())),
        Format::Text => {
            let text = trace_text(&r);
            if r.ok {
                Ok(text)
            } else {
                Err(CliError::Failed(text.trim_end().to_string()))
            }
        }
    }
}
