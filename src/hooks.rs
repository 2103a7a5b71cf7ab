//! Hooks: an operator's executables run at each phase change, as gh-ost
//! offers them.
//!
//! Two ways to name them, combinable:
//! - `--hook-dir DIR`: every executable file in `DIR` whose name starts with
//!   `on-<event>` runs (`on-swapped`, `on-swapped-notify-chat`, …), in name
//!   order;
//! - `--on-event CMD`: `CMD` runs through `sh -c` for every event.
//!
//! Each gets the job's facts in environment variables (never the connection
//! string, which may hold a password): `PGREKEY_EVENT`, `PGREKEY_TABLES`
//! (comma-separated, schema-qualified), and when known `PGREKEY_JOB_ID`,
//! `PGREKEY_ATTEMPT`, `PGREKEY_OUTCOME`, `PGREKEY_OLD_TABLES`,
//! `PGREKEY_LAG_BYTES`, `PGREKEY_ERROR`. Standard output and error of a hook
//! are logged. A hook that fails (exits non-zero, cannot start, or runs
//! longer than [`HOOK_TIMEOUT`]) is logged as a warning and otherwise
//! ignored — except for `before-cutover`, where a failure **vetoes the
//! attempt** (the attempt ends as `vetoed_by_hook` and the next one asks
//! again).

use std::path::PathBuf;
use std::time::Duration;

/// The longest a hook may run.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// The events, by the name hooks see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Every table of a rewrite is copied (indexes built).
    CopyDone,
    /// The stream is applied to the shadows.
    Streaming,
    /// Streaming with a lag under the cutover's limit: a cutover may start.
    ReadyForCutover,
    /// A cutover attempt is about to take its locks (a failing hook vetoes it).
    BeforeCutover,
    /// A cutover attempt ended without swapping.
    CutoverAttemptFailed,
    /// The swap committed.
    Swapped,
    /// A cutover gave up (sources untouched, still streaming).
    CutoverGaveUp,
    /// A rewrite stopped on an error.
    Failed,
    /// A job was aborted.
    Aborted,
}

impl Event {
    /// The name in `PGREKEY_EVENT` and in hook file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::CopyDone => "copy-done",
            Event::Streaming => "streaming",
            Event::ReadyForCutover => "ready-for-cutover",
            Event::BeforeCutover => "before-cutover",
            Event::CutoverAttemptFailed => "cutover-attempt-failed",
            Event::Swapped => "swapped",
            Event::CutoverGaveUp => "cutover-gave-up",
            Event::Failed => "failed",
            Event::Aborted => "aborted",
        }
    }
}

/// Where the hooks are; empty runs nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    /// `--hook-dir`.
    pub dir: Option<PathBuf>,
    /// `--on-event`.
    pub command: Option<String>,
}

/// The facts passed to a hook.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Tables, schema-qualified.
    pub tables: Vec<String>,
    /// Job id(s), comma-separated.
    pub job_id: Option<String>,
    /// Cutover attempt number.
    pub attempt: Option<u32>,
    /// An attempt's or a job's outcome.
    pub outcome: Option<String>,
    /// The old tables after a swap.
    pub old_tables: Vec<String>,
    /// The lag, bytes.
    pub lag_bytes: Option<u64>,
    /// An error message.
    pub error: Option<String>,
}

impl Facts {
    /// Facts naming `tables`.
    pub fn tables<I: IntoIterator<Item = S>, S: ToString>(tables: I) -> Facts {
        Facts {
            tables: tables.into_iter().map(|t| t.to_string()).collect(),
            ..Facts::default()
        }
    }

    /// The environment variables (pure).
    pub fn env(&self, event: Event) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("PGREKEY_EVENT", event.as_str().to_string()),
            ("PGREKEY_TABLES", self.tables.join(",")),
        ];
        if let Some(j) = &self.job_id {
            v.push(("PGREKEY_JOB_ID", j.clone()));
        }
        if let Some(a) = self.attempt {
            v.push(("PGREKEY_ATTEMPT", a.to_string()));
        }
        if let Some(o) = &self.outcome {
            v.push(("PGREKEY_OUTCOME", o.clone()));
        }
        if !self.old_tables.is_empty() {
            v.push(("PGREKEY_OLD_TABLES", self.old_tables.join(",")));
        }
        if let Some(l) = self.lag_bytes {
            v.push(("PGREKEY_LAG_BYTES", l.to_string()));
        }
        if let Some(e) = &self.error {
            v.push(("PGREKEY_ERROR", e.clone()));
        }
        v
    }
}

/// One hook's failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookFailure {
    /// The hook (file or command).
    pub hook: String,
    /// What went wrong.
    pub reason: String,
}

impl std::fmt::Display for HookFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hook {} failed: {}", self.hook, self.reason)
    }
}

impl Hooks {
    /// Whether any hook is configured.
    pub fn any(&self) -> bool {
        self.dir.is_some() || self.command.is_some()
    }

    /// The hooks for `event`, as (display name, program, args), in order.
    fn commands(&self, event: Event) -> Vec<(String, PathBuf, Vec<String>)> {
        let mut out = Vec::new();
        if let Some(dir) = &self.dir {
            let prefix = format!("on-{}", event.as_str());
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            p.file_name()
                                .and_then(|n| n.to_str())
                                .is_some_and(|n| hook_file_matches(n, &prefix))
                                && is_executable(p)
                        })
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            for f in files {
                out.push((f.display().to_string(), f, vec![]));
            }
        }
        if let Some(cmd) = &self.command {
            out.push((
                cmd.clone(),
                PathBuf::from("sh"),
                vec!["-c".into(), cmd.clone()],
            ));
        }
        out
    }

    /// Run the hooks of `event` one after the other. Returns the failures
    /// (each already logged as a warning).
    pub async fn run(&self, event: Event, facts: &Facts) -> Vec<HookFailure> {
        let mut failures = Vec::new();
        for (name, program, args) in self.commands(event) {
            let mut cmd = tokio::process::Command::new(&program);
            cmd.args(&args)
                .envs(facts.env(event))
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            let outcome = match tokio::time::timeout(HOOK_TIMEOUT, cmd.output()).await {
                Err(_) => Err(format!(
                    "ran longer than {}",
                    crate::units::format_duration(HOOK_TIMEOUT)
                )),
                Ok(Err(e)) => Err(format!("cannot run it: {e}")),
                Ok(Ok(out)) => {
                    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
                    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
                    if out.status.success() {
                        tracing::info!(event = event.as_str(), hook = %name, output = %stdout, "hook ran");
                        Ok(())
                    } else {
                        Err(format!(
                            "{}{}",
                            match out.status.code() {
                                Some(c) => format!("exit status {c}"),
                                None => "killed by a signal".into(),
                            },
                            if stderr.is_empty() {
                                String::new()
                            } else {
                                format!(": {stderr}")
                            }
                        ))
                    }
                }
            };
            if let Err(reason) = outcome {
                let f = HookFailure { hook: name, reason };
                tracing::warn!(event = event.as_str(), "{f}");
                failures.push(f);
            }
        }
        failures
    }
}

/// `on-<event>` exactly, or followed by `-` or `.` (so `on-swapped` does
/// not also match `on-swapped2`).
fn hook_file_matches(name: &str, prefix: &str) -> bool {
    match name.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('-') || rest.starts_with('.'),
        None => false,
    }
}

fn is_executable(p: &std::path::Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_names_and_environment() {
        assert!(hook_file_matches("on-swapped", "on-swapped"));
        assert!(hook_file_matches("on-swapped-notify", "on-swapped"));
        assert!(hook_file_matches("on-swapped.sh", "on-swapped"));
        assert!(!hook_file_matches("on-swappedx", "on-swapped"));
        // No event name is another's prefix followed by `-`, so a file
        // never runs for two events.
        let names: Vec<&str> = [
            Event::CopyDone,
            Event::Streaming,
            Event::ReadyForCutover,
            Event::BeforeCutover,
            Event::CutoverAttemptFailed,
            Event::Swapped,
            Event::CutoverGaveUp,
            Event::Failed,
            Event::Aborted,
        ]
        .iter()
        .map(|e| e.as_str())
        .collect();
        for a in &names {
            for b in &names {
                if a != b {
                    assert!(
                        !hook_file_matches(&format!("on-{a}"), &format!("on-{b}")),
                        "{a} {b}"
                    );
                }
            }
        }
        let f = Facts {
            attempt: Some(2),
            old_tables: vec!["public._rekey_old_a".into()],
            ..Facts::tables(["public.a", "public.b"])
        };
        let env = f.env(Event::BeforeCutover);
        assert!(env.contains(&("PGREKEY_EVENT", "before-cutover".into())));
        assert!(env.contains(&("PGREKEY_TABLES", "public.a,public.b".into())));
        assert!(env.contains(&("PGREKEY_ATTEMPT", "2".into())));
        assert!(env.contains(&("PGREKEY_OLD_TABLES", "public._rekey_old_a".into())));
        assert!(!env.iter().any(|(k, _)| *k == "PGREKEY_JOB_ID"));
    }
}
