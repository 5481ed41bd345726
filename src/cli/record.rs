//! `xmpp-ring record put|get|delete`: the record store through a node's
//! admin HTTP. Any node will do: the request is routed to the record's
//! responsible node, which answers.

use super::{CliError, Format};
use clap::{Args, Subcommand};
use node::api::RecordReport;
use node::client::{self, url_encode};
use std::time::Duration;

/// Options shared by every record operation.
#[derive(Args, Debug)]
pub struct RecordTarget {
    /// The node's admin address (host:port or http://host:port).
    #[arg(long)]
    pub admin: String,
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
    let (t, query) = match cmd {
        RecordCommand::Put { target, value } => {
            let q = format!("/record?op=put&name={}", url_encode(&target.name));
            let r: RecordReport = client::post_json(&target.admin, &q, value.as_bytes(), timeout)?;
            return finish(target, r);
        }
        RecordCommand::Get { target } => (
            target,
            format!("/record?op=get&name={}", url_encode(&target.name)),
        ),
        RecordCommand::Delete { target } => (
            target,
            format!("/record?op=delete&name={}", url_encode(&target.name)),
        ),
    };
    let r: RecordReport = client::get_json(&t.admin, &query, timeout)?;
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
