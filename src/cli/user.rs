//! `xmpp-ring user add|passwd|delete|list`: ring users' accounts, through
//! any node's admin HTTP. The password is read from a file or stdin, never
//! from the command line (where `ps` would show it), and never leaves this
//! process: the salted SCRAM keys are derived here and only they are
//! stored, as the record `account:<bare JID>` at the user's home node.
//!
//! `list` asks each node it is given for the accounts it holds (each
//! account is held by its home node and the next `record_replicas - 1`
//! nodes), merges them and prints each once: on a one-node server, or
//! given every node of a ring, that is every account.

use super::{CliError, Format};
use crate::client::{self, url_encode};
use clap::{Args, Subcommand};
use node::api::{RecordList, RecordReport};
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
    /// List the accounts the given nodes hold (give every node of a ring
    /// to list them all).
    List(ListArgs),
}

/// `xmpp-ring user list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// A node's admin address (host:port or http://host:port); repeat for
    /// more nodes.
    #[arg(long, required = true)]
    pub admin: Vec<String>,
    /// The nodes' admin bearer token (their `admin.token`).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Only users of this domain.
    pub domain: Option<String>,
}

/// Runs `user list`.
fn list(args: &ListArgs) -> Result<String, CliError> {
    let timeout = Duration::from_secs(15);
    let domain = match &args.domain {
        Some(d) => Some(
            xmpp_addr::Domain::parse(d)
                .map_err(|e| CliError::Usage(format!("{d:?} is not a domain: {e}")))?,
        ),
        None => None,
    };
    super::admin_client::use_token_file(args.admin_token_file.as_deref())?;
    let mut users = std::collections::BTreeSet::new();
    for admin in &args.admin {
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/records?prefix={}", url_encode(account::ACCOUNT_PREFIX));
            if let Some(a) = &after {
                path.push_str(&format!("&after={}", url_encode(a)));
            }
            let page: RecordList = client::get_json(admin, &path, timeout)?;
            if let Some(e) = page.error {
                return Err(CliError::Failed(format!("{admin}: {e}")));
            }
            for name in page.names {
                // Names that are not a user's account (none are written,
                // but the store is the ring's) are skipped, not printed.
                let Some(user) = name
                    .strip_prefix(account::ACCOUNT_PREFIX)
                    .and_then(|j| account::user_jid(j).ok())
                else {
                    continue;
                };
                if domain
                    .as_ref()
                    .is_none_or(|d| user.domain().as_str() == d.as_str())
                {
                    users.insert(user.to_string());
                }
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
    }
    Ok(match args.format {
        Format::Json => format!(
            "{}\n",
            serde_json::json!({"users": users, "nodes": args.admin.len()})
        ),
        Format::Text => users.iter().map(|u| format!("{u}\n")).collect(),
    })
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
    /// What happens to the one account.
    enum Op {
        Add,
        Passwd,
        Delete,
    }
    let (target, password_file, op) = match cmd {
        UserCommand::List(args) => return list(args),
        UserCommand::Add {
            target,
            password_file,
        } => (target, password_file.as_deref(), Op::Add),
        UserCommand::Passwd {
            target,
            password_file,
        } => (target, password_file.as_deref(), Op::Passwd),
        UserCommand::Delete { target } => (target, None, Op::Delete),
    };
    let jid = account::user_jid(&target.jid).map_err(|e| CliError::Usage(e.to_string()))?;
    super::admin_client::use_token_file(target.admin_token_file.as_deref())?;
    let name = Account::record_name(&jid);
    let path = |op: &str| format!("/record?op={op}&name={}", url_encode(&name));
    if !matches!(op, Op::Add) {
        let current: RecordReport = client::get_json(&target.admin, &path("get"), timeout)?;
        if let Some(e) = current.error {
            return Err(CliError::Failed(format!(
                "cannot read {jid}'s account: {e}"
            )));
        }
        if !current.found {
            return Err(CliError::Failed(format!("{jid}: no such user")));
        }
    }
    let body = match op {
        Op::Delete => Vec::new(),
        Op::Add | Op::Passwd => {
            let password = read_password(password_file)?;
            Account::new(&jid, &password, DEFAULT_ITERATIONS, &mut rand::rng())
                .map_err(|e| CliError::Usage(e.to_string()))?
                .encode()
        }
    };
    // An account is created only if the name is free, decided by the
    // record's coordinator: two `add`s at once cannot both succeed.
    let (write, verb) = match op {
        Op::Add => ("create", "added"),
        Op::Passwd => ("put", "password changed"),
        Op::Delete => ("delete", "deleted"),
    };
    let report: RecordReport = client::post_json(&target.admin, &path(write), &body, timeout)?;
    if let Some(e) = &report.error {
        return Err(CliError::Failed(format!("{jid}: {e}")));
    }
    if matches!(op, Op::Add) && report.replicas.is_none() {
        return Err(CliError::Failed(format!("{jid} already exists")));
    }
    if matches!(op, Op::Delete) {
        // The user's roster and offline messages go with the account.
        for name in [
            ring_c2s::roster::Roster::record_name(jid.as_str()),
            ring_c2s::offline::OfflineQueue::record_name(jid.as_str()),
        ] {
            let path = format!("/record?op=delete&name={}", url_encode(&name));
            let r: RecordReport = client::post_json(&target.admin, &path, b"", timeout)?;
            if let Some(e) = r.error {
                return Err(CliError::Failed(format!(
                    "{jid}: account deleted, but not {name}: {e}"
                )));
            }
        }
    }
    Ok(done(target.format, jid.as_str(), verb, report.version))
}

/// What a done operation prints.
fn done(format: Format, jid: &str, op: &str, version: Option<u64>) -> String {
    match format {
        Format::Json => format!(
            "{}\n",
            serde_json::json!({"jid": jid, "result": op, "version": version})
        ),
        Format::Text => format!("{jid}: {op}\n"),
    }
}
