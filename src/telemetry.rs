//! Logging setup: structured `tracing` events on stderr, as text or JSON.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Install the global subscriber. `RUST_LOG` overrides the verbosity flags.
pub fn init(format: LogFormat, verbose: u8) {
    let default = match verbose {
        0 => "pg_rekey=info,warn",
        1 => "pg_rekey=debug,info",
        _ => "pg_rekey=trace,debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}
