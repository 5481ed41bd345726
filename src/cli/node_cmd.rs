//! `xmpp-ring node`: runs one ring node until SIGTERM or Ctrl-C.

use super::CliError;
use clap::Args;
use node::config::RawConfig;
use std::path::PathBuf;

/// Options of `xmpp-ring node`: the config file, and every key of it as a
/// flag (one struct, [`RawConfig`], is both).
#[derive(Args, Debug, Default)]
pub struct NodeArgs {
    /// TOML configuration file (flags override its keys).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Every configuration key.
    #[command(flatten)]
    pub keys: RawConfig,
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Runs the node.
pub fn run(args: &NodeArgs) -> Result<String, CliError> {
    let file = match &args.config {
        Some(p) => RawConfig::from_file(p).map_err(|e| CliError::Usage(e.to_string()))?,
        None => RawConfig::default(),
    };
    let settings = file
        .merged(args.keys.clone())
        .validate()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    super::init_logging(&settings.log_level);
    let rt = if settings.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.threads)
            .enable_all()
            .build()
    }
    .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    rt.block_on(node::runtime::run(settings, shutdown_signal(), |ready| {
        println!(
            "xmpp-ring node {} ({}) listening on {} admin http://{}",
            &ready.node_id[..16],
            ready.role,
            ready.listen.join(" "),
            ready.admin
        );
    }))
    .map_err(|e| CliError::Failed(e.to_string()))?;
    Ok(String::new())
}
