//! A progress bar on stderr for long runs; silent when stderr is not a
//! terminal (CI logs, pipes, JSON consumers) or when asked.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A cloneable handle to an optional progress bar.
#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar on stderr when stderr is a terminal, otherwise nothing.
    pub fn stderr() -> Self {
        if !std::io::stderr().is_terminal() {
            return Self::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        Progress { bar: Some(bar) }
    }

    /// No output at all.
    pub fn hidden() -> Self {
        Progress { bar: None }
    }

    /// Shows a stage without a count.
    pub fn stage(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.set_message(msg.to_string());
            b.tick();
        }
    }

    /// Starts a counted stage of `total` steps.
    pub fn start(&self, msg: &str, total: u64) {
        if let Some(b) = &self.bar {
            b.set_style(
                ProgressStyle::with_template(
                    "{msg:12} [{bar:40}] {pos}/{len} {elapsed} (eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_message(msg.to_string());
            b.set_length(total);
            b.set_position(0);
        }
    }

    /// Advances by `n` steps.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Sets the position.
    pub fn set(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
