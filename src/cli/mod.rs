//! The `xmpp-ring` command line: one binary, one module per subcommand.

pub mod admin_client;
pub mod local;
pub mod node_cmd;
pub mod psk;
pub mod record;
pub mod simulate;
pub mod user;

use clap::{Parser, Subcommand, ValueEnum};

/// Report format of every report-producing subcommand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable text.
    Text,
    /// One JSON object on stdout, nothing else.
    Json,
}

/// What went wrong, and so which exit code.
#[derive(Debug)]
pub enum CliError {
    /// Bad flags, config or input: one line, exit code 2.
    Usage(String),
    /// Something failed at run time: exit code 1.
    Failed(String),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Failed(_) => 1,
        }
    }
}

impl From<crate::cluster::ClusterError> for CliError {
    fn from(e: crate::cluster::ClusterError) -> CliError {
        CliError::Failed(e.to_string())
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Failed(m) => f.write_str(m),
        }
    }
}

/// xmpp-ring: XMPP servers forming a self-organising peer-to-peer overlay.
#[derive(Parser, Debug)]
#[command(name = "xmpp-ring", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Simulate a ring: hop counts, table sizes, churn behaviour.
    Simulate(Box<simulate::SimulateArgs>),
    /// Run a ring node.
    Node(Box<node_cmd::NodeArgs>),
    /// Start a local ring of node processes on 127.0.0.1.
    Local(local::LocalArgs),
    /// Show a node's status (from its admin interface).
    Status(admin_client::StatusArgs),
    /// Trace the route from a node to a JID's responsible node.
    Trace(admin_client::TraceArgs),
    /// Manage the ring's pre-shared key.
    #[command(subcommand)]
    Psk(psk::PskCommand),
    /// Put, get or delete a record of the ring's replicated record store.
    #[command(subcommand)]
    Record(record::RecordCommand),
    /// Add, change or delete a ring user's account (for client logins).
    #[command(subcommand)]
    User(user::UserCommand),
}

/// Runs the parsed command; the output for stdout, or an error.
pub fn run(cli: Cli) -> Result<String, CliError> {
    match cli.command {
        Command::Simulate(a) => simulate::run(&a).map_err(|e| CliError::Usage(e.0)),
        Command::Node(a) => node_cmd::run(&a),
        Command::Local(a) => local::run(&a),
        Command::Status(a) => admin_client::status(&a),
        Command::Trace(a) => admin_client::trace(&a),
        Command::Psk(c) => psk::run(&c),
        Command::Record(c) => record::run(&c),
        Command::User(c) => user::run(&c),
    }
}

/// Logs to stderr; `RUST_LOG` wins over the configured level.
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A user error of `simulate` (kept separate: it predates [`CliError`]).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
