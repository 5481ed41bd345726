//! `xmpp-ring psk generate FILE`: a new ring key (mode 0600).

use super::CliError;
use clap::Subcommand;
use std::path::PathBuf;

/// `xmpp-ring psk` subcommands.
#[derive(Subcommand, Debug)]
pub enum PskCommand {
    /// Write a new random pre-shared key file (refuses to overwrite).
    Generate {
        /// Where to write it.
        file: PathBuf,
    },
}

/// Runs a psk subcommand.
pub fn run(cmd: &PskCommand) -> Result<String, CliError> {
    match cmd {
        PskCommand::Generate { file } => {
            let key = node::psk::generate_file(file).map_err(|e| CliError::Usage(e.to_string()))?;
            Ok(format!(
                "wrote {} (fingerprint {})\n",
                file.display(),
                key.fingerprint()
            ))
        }
    }
}
