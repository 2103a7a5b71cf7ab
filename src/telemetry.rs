//! Logging setup: structured `tracing` events on stderr, as text or JSON.
//!
//! Invariants:
//! - **One event, one write.** Every event is formatted in full and then
//!   written to stderr at once, so a JSON log stays one object per line even
//!   with many tasks logging.
//! - **Logs never tear the progress bars.** When stderr is a terminal the
//!   writer is [`crate::progress::BarAwareStderr`], which hides the bars while
//!   a line is written and redraws them after. Off a terminal no bars are
//!   drawn (progress is logged as lines instead), and no colour codes are
//!   written either.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;
use crate::progress::BarAwareStderr;

/// Install the global subscriber. `RUST_LOG` overrides the verbosity flags.
pub fn init(format: LogFormat, verbose: u8) {
    let default = match verbose {
        0 => "pg_rekey=info,warn",
        1 => "pg_rekey=debug,info",
        _ => "pg_rekey=trace,debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal && format == LogFormat::Text);
    // `try_init` fails only if a subscriber is already installed (tests): keep it.
    let _ = match (format, terminal) {
        (LogFormat::Text, true) => builder
            .with_writer(BarAwareStderr)
            .with_target(false)
            .try_init(),
        (LogFormat::Text, false) => builder
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init(),
        (LogFormat::Json, true) => builder
            .with_writer(BarAwareStderr)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        (LogFormat::Json, false) => builder
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}
