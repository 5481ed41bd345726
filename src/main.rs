//! The `xmpp-ring` binary: parses the command line and hands over to the
//! library crates. Exit codes: 0 success, 1 runtime failure, 2 bad usage or
//! configuration.

mod cli;

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap's own errors (unknown flag, bad value) exit with 2 too;
            // --help and --version print and succeed.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli::run(cli) {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xmpp-ring: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
