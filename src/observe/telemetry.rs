//! Logging setup: structured `tracing` events on stderr (or `--log-file`),
//! as text or JSON.
//!
//! Invariants:
//! - **One event, one write, one line.** Every event is formatted in full
//!   and then written at once, so a JSON log stays one object per line even
//!   with many tasks logging.
//! - **Lines a person reads.** The text format is `time LEVEL message
//!   fields`, plus the job id when the event happened inside a rewrite: span
//!   names and the fields of enclosing spans are not repeated on every line
//!   (a `verify_run{tables=…}` prefix on each verify line said nothing new).
//!   JSON carries the current span's fields, not the whole list.
//! - **Logs never tear the progress bars.** When stderr is a terminal the
//!   writer is [`crate::progress::BarAwareStderr`], which hides the bars while
//!   a line is written and redraws them after. Off a terminal no bars are
//!   drawn (progress is logged as lines instead).
//! - **Colour only where it helps.** `--color auto` (the default) colours the
//!   level on a terminal unless `NO_COLOR` is set (<https://no-color.org>);
//!   `always`/`never` decide regardless. A log file never gets colour codes.

use std::fmt;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::cli::{ColorChoice, GlobalArgs, LogFormat};
use crate::progress::BarAwareStderr;

/// Whether to write colour codes: the flag, then `NO_COLOR`, then whether the
/// output is a terminal (pure: the environment is passed in).
pub fn use_color(choice: ColorChoice, no_color_env: Option<&str>, terminal: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => terminal && no_color_env.is_none_or(|v| v.is_empty()),
    }
}

/// Whether colour is on for stdout/stderr output of this process (`--color`,
/// `NO_COLOR`, terminal).
pub fn color_for(choice: ColorChoice, terminal: bool) -> bool {
    use_color(choice, std::env::var("NO_COLOR").ok().as_deref(), terminal)
}

/// Longest span field list repeated on a line; a longer one (a list of
/// every table) is said once by the event that opens the step instead.
const MAX_SPAN_FIELDS: usize = 100;

/// The text line format (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Line {
    /// Colour the level.
    pub ansi: bool,
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let level = *event.metadata().level();
        let (color, name) = match level {
            Level::ERROR => ("31", "ERROR"),
            Level::WARN => ("33", " WARN"),
            Level::INFO => ("32", " INFO"),
            Level::DEBUG => ("34", "DEBUG"),
            Level::TRACE => ("35", "TRACE"),
        };
        if self.ansi {
            write!(writer, "{now} \x1b[{color}m{name}\x1b[0m ")?;
        } else {
            write!(writer, "{now} {name} ")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        // Context, once: the innermost span's own fields when short (which
        // table a verify line is about), and the job a line belongs to.
        if let Some(scope) = ctx.event_scope() {
            let mut innermost = true;
            let mut job_written = false;
            for span in scope {
                let ext = span.extensions();
                let Some(fields) = ext.get::<FormattedFields<N>>() else {
                    continue;
                };
                let fields = fields.fields.as_str();
                if innermost && !fields.is_empty() && fields.len() <= MAX_SPAN_FIELDS {
                    write!(writer, " {fields}")?;
                    job_written = fields.split(' ').any(|t| t.starts_with("job="));
                }
                innermost = false;
                if !job_written {
                    if let Some(job) = fields.split(' ').find(|t| t.starts_with("job=")) {
                        write!(writer, " {job}")?;
                        job_written = true;
                    }
                }
                if job_written {
                    break;
                }
            }
        }
        writeln!(writer)
    }
}

/// A log file shared by every event; each event is one `write_all`.
#[derive(Clone, Debug)]
struct FileWriter(Arc<Mutex<std::fs::File>>);

/// One event's bytes, written to the file on drop.
struct FileLine {
    file: Arc<Mutex<std::fs::File>>,
    buf: Vec<u8>,
}

impl std::io::Write for FileLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for FileLine {
    fn drop(&mut self) {
        if let Ok(mut f) = self.file.lock() {
            // Nothing sensible to do if the disk is full.
            let _ = std::io::Write::write_all(&mut *f, &self.buf);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for FileWriter {
    type Writer = FileLine;
    fn make_writer(&'a self) -> FileLine {
        FileLine {
            file: Arc::clone(&self.0),
            buf: Vec::new(),
        }
    }
}

/// Install the global subscriber from the global flags. `RUST_LOG` overrides
/// the verbosity flags. Fails only when `--log-file` cannot be opened.
pub fn init_from(g: &GlobalArgs) -> std::io::Result<()> {
    let file = match &g.log_file {
        Some(p) => Some(open_log_file(p)?),
        None => None,
    };
    init_with(g.log_format, g.verbose, g.color, file);
    Ok(())
}

fn open_log_file(p: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .map_err(|e| std::io::Error::new(e.kind(), format!("--log-file {}: {e}", p.display())))
}

/// Install the global subscriber on stderr (text without colour on a
/// non-terminal).
pub fn init(format: LogFormat, verbose: u8) {
    init_with(format, verbose, ColorChoice::Auto, None);
}

fn init_with(format: LogFormat, verbose: u8, color: ColorChoice, file: Option<std::fs::File>) {
    let default = match verbose {
        0 => "pg_rekey=info,warn",
        1 => "pg_rekey=debug,info",
        _ => "pg_rekey=trace,debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let terminal = std::io::stderr().is_terminal();
    let ansi = file.is_none() && format == LogFormat::Text && color_for(color, terminal);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    // `try_init` fails only if a subscriber is already installed (tests): keep it.
    let _ = match (format, file) {
        (LogFormat::Text, Some(f)) => builder
            .event_format(Line { ansi: false })
            .with_writer(FileWriter(Arc::new(Mutex::new(f))))
            .try_init(),
        (LogFormat::Json, Some(f)) => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(FileWriter(Arc::new(Mutex::new(f))))
            .try_init(),
        (LogFormat::Text, None) if terminal => builder
            .event_format(Line { ansi })
            .with_writer(BarAwareStderr)
            .try_init(),
        (LogFormat::Text, None) => builder
            .event_format(Line { ansi })
            .with_writer(std::io::stderr)
            .try_init(),
        (LogFormat::Json, None) if terminal => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(BarAwareStderr)
            .try_init(),
        (LogFormat::Json, None) => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn color_follows_flag_then_no_color_then_terminal() {
        assert!(use_color(ColorChoice::Auto, None, true));
        assert!(!use_color(ColorChoice::Auto, Some("1"), true));
        assert!(
            use_color(ColorChoice::Auto, Some(""), true),
            "empty NO_COLOR is unset"
        );
        assert!(!use_color(ColorChoice::Auto, None, false));
        assert!(use_color(ColorChoice::Always, Some("1"), false));
        assert!(!use_color(ColorChoice::Never, None, true));
    }
}
