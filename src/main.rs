//! The `xmpp-ring` binary: parses the command line and hands over to the
//! library crates. Exit codes: 0 success, 1 runtime failure, 2 bad usage or
//! configuration.

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;
use xmpp_ring::cli;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help and --version print and succeed.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's own errors (unknown flag, bad value): one line, code 2.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "xmpp-ring: {} (see --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
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
