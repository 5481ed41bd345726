//! The `xmpp-ring` command line: one binary, one module per subcommand.

pub mod simulate;

use clap::{Parser, Subcommand, ValueEnum};

/// Report format of every report-producing subcommand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable text.
    Text,
    /// One JSON object on stdout, nothing else.
    Json,
}

/// A user error: printed as one line, exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
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
    Simulate(simulate::SimulateArgs),
}

/// Runs the parsed command; the output for stdout or a usage error.
pub fn run(cli: Cli) -> Result<String, UsageError> {
    match cli.command {
        Command::Simulate(a) => simulate::run(&a),
    }
}
