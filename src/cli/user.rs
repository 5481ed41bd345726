//! `xmpp-ring user add|passwd|delete`: ring users' accounts, through any
//! node's admin HTTP. The password is read from a file or stdin, never
//! from the command line (where `ps` would show it), and never leaves this
//! process: the salted SCRAM keys are derived here and only they are
//! stored, as the record `account:<bare JID>` at the user's home node.

use super::{CliError, Format};
use crate::client::{self, url_encode};
use clap::{Args, Subcommand};
use node::api::RecordReport;
use ring_c2s::account::{self, Account, DEFAULT_ITERATIONS};
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

/// Where and whom.
#[derive(Args, Debug)]
pub struct UserTarget {
    /// The node's admin address (host:port or http://host:port).
    #[arg(long)]
    pub admin: String,
    /// The node's admin bearer token (its `admin.token`).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// The user's bare JID (user@domain).
    pub jid: String,
}

/// `xmpp-ring user ...`.
#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create an account (refused if it exists).
    Add {
        /// Where and whom.
        #[command(flatten)]
        target: UserTarget,
        /// Read the password from this file (first line); default: stdin.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Change an existing account's password.
    Passwd {
        /// Where and whom.
        #[command(flatten)]
        target: UserTarget,
        /// Read the password from this file (first line); default: stdin.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Delete an account.
    Delete {
        /// Where and whom.
        #[command(flatten)]
        target: UserTarget,
    },
}

/// Reads the password: the first line of `file`, or of stdin.
fn read_password(file: Option<&std::path::Path>) -> Result<String, CliError> {
    let mut text = String::new();
    match file {
        Some(f) => {
            text = std::fs::read_to_string(f)
                .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", f.display())))?;
        }
        None => {
            std::io::stdin()
                .take(64 * 1024)
                .read_to_string(&mut text)
                .map_err(|e| {
                    CliError::Usage(format!("cannot read the password from stdin: {e}"))
                })?;
        }
    }
    let line = text.lines().next().unwrap_or_default().to_string();
    account::prepare_password(&line).map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(line)
}

/// Runs a user operation.
pub fn run(cmd: &UserCommand) -> Result<String, CliError> {
    let timeout = Duration::from_secs(15);
    let (target, password_file) = match cmd {
        UserCommand::Add {
            target,
            password_file,
        }
        | UserCommand::Passwd {
            target,
            password_file,
        } => (target, Some(password_file.as_deref())),
        UserCommand::Delete { target } => (target, None),
    };
    let jid = account::user_jid(&target.jid).map_err(|e| CliError::Usage(e.to_string()))?;
    super::admin_client::use_token_file(target.admin_token_file.as_deref())?;
    let name = Account::record_name(&jid);
    let path = |op: &str| format!("/record?op={op}&name={}", url_encode(&name));
    let current: RecordReport = client::get_json(&target.admin, &path("get"), timeout)?;
    if let Some(e) = current.error {
        return Err(CliError::Failed(format!(
            "cannot read {jid}'s account: {e}"
        )));
    }
    let (op, report): (&str, RecordReport) = match (cmd, current.found) {
        (UserCommand::Add { .. }, true) => {
            return Err(CliError::Failed(format!("{jid} already exists")));
        }
        (UserCommand::Passwd { .. } | UserCommand::Delete { .. }, false) => {
            return Err(CliError::Failed(format!("{jid}: no such user")));
        }
        (UserCommand::Delete { .. }, true) => (
            "deleted",
            client::post_json(&target.admin, &path("delete"), b"", timeout)?,
        ),
        (UserCommand::Add { .. } | UserCommand::Passwd { .. }, _) => {
            let password = read_password(password_file.flatten())?;
            let account = Account::new(&jid, &password, DEFAULT_ITERATIONS, &mut rand::rng())
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let verb = if current.found {
                "password changed"
            } else {
                "added"
            };
            (
                verb,
                client::post_json(&target.admin, &path("put"), &account.encode(), timeout)?,
            )
        }
    };
    if let Some(e) = &report.error {
        return Err(CliError::Failed(format!("{jid}: {e}")));
    }
    Ok(match target.format {
        Format::Json => format!(
            "{}\n",
            serde_json::json!({"jid": jid.to_string(), "result": op, "version": report.version})
        ),
        Format::Text => format!("{jid}: {op}\n"),
    })
}
