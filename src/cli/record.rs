//! `xmpp-ring record put|get|delete`: the record store through a node's
//! admin HTTP. Any node will do: the request is routed to the record's
//! responsible node, which answers.

use super::{CliError, Format};
use crate::client::{self, url_encode};
use clap::{Args, Subcommand};
use node::api::RecordReport;
use std::time::Duration;

/// Options shared by every record operation.
#[derive(Args, Debug)]
pub struct RecordTarget {
    /// The node's admin address (host:port or http://host:port).
    #[arg(long)]
    pub admin: String,
    /// The node's admin bearer token (its `admin.token`).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// The record's name.
    pub name: String,
}

/// `xmpp-ring record ...`.
#[derive(Subcommand, Debug)]
pub enum RecordCommand {
    /// Write a value (a new version).
    Put {
        /// Where and what.
        #[command(flatten)]
        target: RecordTarget,
        /// The value.
        value: String,
    },
    /// Read the current value.
    Get {
        /// Where and what.
        #[command(flatten)]
        target: RecordTarget,
    },
    /// Delete the record.
    Delete {
        /// Where and what.
        #[command(flatten)]
        target: RecordTarget,
    },
}

/// Runs a record operation. A missing record is exit code 1 for `get`
/// and `delete`.
pub fn run(cmd: &RecordCommand) -> Result<String, CliError> {
    let timeout = Duration::from_secs(15);
    let target = match cmd {
        RecordCommand::Put { target, .. }
        | RecordCommand::Get { target }
        | RecordCommand::Delete { target } => target,
    };
    super::admin_client::use_token_file(target.admin_token_file.as_deref())?;
    let q = |op: &str, t: &RecordTarget| format!("/record?op={op}&name={}", url_encode(&t.name));
    let (t, r): (&RecordTarget, RecordReport) = match cmd {
        RecordCommand::Put { target, value } => (
            target,
            client::post_json(&target.admin, &q("put", target), value.as_bytes(), timeout)?,
        ),
        RecordCommand::Get { target } => (
            target,
            client::get_json(&target.admin, &q("get", target), timeout)?,
        ),
        RecordCommand::Delete { target } => (
            target,
            client::post_json(&target.admin, &q("delete", target), b"", timeout)?,
        ),
    };
    finish(t, r)
}

fn finish(t: &RecordTarget, r: RecordReport) -> Result<String, CliError> {
    let text = if t.format == Format::Json {
        serde_json::to_string(&r).map_err(|e| CliError::Failed(e.to_string()))? + "\n"
    } else {
        render(&r)
    };
    if let Some(e) = &r.error {
        return Err(CliError::Failed(format!("{} {}: {e}", r.op, r.name)));
    }
    if !r.found {
        return Err(CliError::Failed(format!("{}: no such record", r.name)));
    }
    Ok(text)
}

fn render(r: &RecordReport) -> String {
    match r.op.as_str() {
        "get" => format!(
            "{} (version {})\n",
            r.value.as_deref().unwrap_or(""),
            r.version.unwrap_or(0)
        ),
        op => format!(
            "{op} {}: version {}, {} more copies pushed\n",
            r.name,
            r.version.unwrap_or(0),
            r.replicas.unwrap_or(0)
        ),
    }
}
