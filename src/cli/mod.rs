//! The command-line contract: clap parses and validates the arguments before
//! any work starts; `commands` turns them into each command's configuration.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub mod help;

/// The exit-code rule of every command, shown under `--help`.
pub const EXIT_CODES_HELP: &str = "Exit codes (every command): 0 done; 1 found something or gave up with nothing harmed (plan blockers, verify differences or no consistent point, a cutover that gave up or whose swap rolled back, a rewrite refused by its preflight or stopped by its data or by Ctrl-C); 2 error.";

/// Rewrite integer references to `users.id` into UUID references, online.
#[derive(Debug, Parser)]
#[command(
    name = "pg-rekey",
    version,
    about,
    long_about = None,
    propagate_version = true,
    after_help = help::TOP
)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Connection string: a libpq URL (postgres://user@host/db) or key=value
    /// pairs. PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD and ~/.pgpass fill
    /// what it leaves out, as in psql.
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        hide_env_values = true,
        value_name = "DSN"
    )]
    pub dsn: Option<String>,
    /// Log format. With `json`, every log line is one JSON object and
    /// progress is logged as lines too (no bars, even on a terminal).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Write the log to this file (appended) instead of stderr.
    #[arg(long, value_name = "PATH", global = true)]
    pub log_file: Option<std::path::PathBuf>,
    /// Colour: `auto` colours on a terminal unless NO_COLOR is set.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    pub color: ColorChoice,
    /// More detail in logs (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// When to write colour codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make the parent's uuid column online: add it without a table
    /// rewrite, backfill it in key-ordered batches (resumable), then NOT NULL
    /// without a scan under lock and a unique index built concurrently.
    /// Idempotent. Exit 0 prepared (or already), 1 gave up on a busy table or
    /// stopped (run it again to go on), 2 error.
    #[command(after_help = help::PREPARE)]
    Prepare(PrepareArgs),
    /// Make the parent's uuid column its primary key (phase 5), in one short
    /// locked transaction; the integer key stays NOT NULL and UNIQUE unless
    /// --drop-integer-key. Refuses while foreign keys reference the integer
    /// key or pg-rekey jobs for the parent remain. Idempotent. Exit 0
    /// promoted (or already), 1 refused or gave up on a busy table (nothing
    /// changed), 2 error.
    #[command(after_help = help::PROMOTE)]
    Promote(PromoteArgs),
    /// Show what `rewrite` would do and every preflight finding.
    /// Exit 0 ready, 1 blockers found, 2 error.
    #[command(after_help = help::PLAN)]
    Plan(PlanArgs),
    /// Create the shadows, copy, then stream until the tables are cut over.
    /// Exit 0 cut over, 1 stopped with the sources untouched (refused by the
    /// preflight, stopped by the data, Ctrl-C or abort), 2 error.
    #[command(after_help = help::REWRITE)]
    Rewrite(RewriteArgs),
    /// One line per table being rewritten: phase, rows, lag, errors.
    /// Exit 0, 2 error.
    #[command(after_help = help::STATUS)]
    Status(StatusArgs),
    /// Stop the job for these tables and remove its shadows, slot, publication
    /// and state. The source tables are untouched. Idempotent. Asks first on a
    /// terminal (--yes skips). Exit 0, 1 not confirmed, 2 error.
    #[command(after_help = help::ABORT)]
    Abort(AbortArgs),
    /// Swap shadows into place in one short locked transaction.
    /// Exit 0 swapped, 1 gave up or the swap rolled back or not confirmed
    /// (sources untouched, still streaming), 2 error.
    #[command(after_help = help::CUTOVER)]
    Cutover(CutoverArgs),
    /// After `cutover --way-back`: swap the old tables (kept current from
    /// the new ones) back into place in one short locked transaction, every
    /// dependent object carried back; the job streams forward again.
    /// Exit 0 rolled back, 1 gave up (new tables untouched), 2 error.
    #[command(after_help = help::ROLLBACK)]
    Rollback(RollbackArgs),
    /// End the journey of cut-over tables: compare old and new a last time,
    /// stop the way back, drop its slot and publication, drop the old tables
    /// (--keep-old keeps them), remove the job rows.
    /// Exit 0 finished, 1 refused (differences, not confirmed), 2 error.
    #[command(after_help = help::FINISH)]
    Finish(FinishArgs),
    /// Compare source and shadow (before cutover) or old and new (after).
    /// Exit 0 equal, 1 different or no consistent point reached, 2 error.
    #[command(after_help = help::VERIFY)]
    Verify(VerifyArgs),
    /// Try the whole tool on a throwaway PostgreSQL (or, with --dsn, in a
    /// fresh database on that server): example schema, concurrent workload,
    /// rewrite, cutover, verification, summary. Removes what it started.
    /// Exit 0 verified, 1 not, 2 error.
    #[command(after_help = help::DEMO)]
    Demo(DemoArgs),
    /// Run the demo's workload, rewrite and cutover against --dsn for a
    /// duration, in a database it creates and drops. Exit 0 verified, 1 not, 2 error.
    #[command(after_help = help::SOAK)]
    Soak(SoakArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = help::COMPLETIONS)]
    Completions(CompletionsArgs),
    /// Print the manual page (roff), generated from this command line.
    #[command(after_help = help::MAN)]
    Man,
}

/// Hooks run at phase changes (see `crate::hooks`).
#[derive(Debug, Args, Clone, Default)]
pub struct HookArgs {
    /// Run every executable in DIR named on-<event>[-…] at each phase change
    /// (copy-done, streaming, ready-for-cutover, before-cutover,
    /// cutover-attempt-failed, swapped, cutover-gave-up, failed, aborted),
    /// with the job's facts in PGREKEY_* environment variables. A failing
    /// before-cutover hook vetoes the attempt.
    #[arg(long, value_name = "DIR")]
    pub hook_dir: Option<std::path::PathBuf>,
    /// Run CMD (through sh -c) at every phase change, PGREKEY_EVENT naming it.
    #[arg(long, value_name = "CMD")]
    pub on_event: Option<String>,
}

/// `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// The parent table and its uuid column.
#[derive(Debug, Args, Clone)]
pub struct ParentArgs {
    /// The referenced table (its integer primary key is what the references point at).
    #[arg(long, default_value = "users")]
    pub parent: String,
    /// The parent's existing unique, not-null uuid column.
    #[arg(long, default_value = "uuid")]
    pub uuid_column: String,
}

/// `plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Parent table.
    #[command(flatten)]
    pub parent: ParentArgs,
    /// Tables to rewrite (repeatable). Default: every table with a foreign key
    /// to the parent's primary key.
    #[arg(long = "table")]
    pub tables: Vec<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Plan for `cutover --rewrite-dependents`: views and policies that
    /// compare a reference column with an integer are reported with the
    /// definition the cutover will give them (a warning), not as blockers.
    #[arg(long)]
    pub rewrite_dependents: bool,
}

/// Holding bulk work (the copy, the backfill) back while the server's
/// other consumers fall behind (see `crate::throttle`).
#[derive(Debug, Args, Clone, Default)]
pub struct ThrottleArgs {
    /// Pause the copy (or backfill) while a physical replica's replay lag
    /// exceeds this (e.g. 30s); it slows down as the lag nears it. The stream
    /// is never held.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub max_replica_lag: Option<Duration>,
    /// Pause the copy (or backfill) while another consumer's replication slot
    /// (a replica's, or a logical one on this database; never pg-rekey's own)
    /// retains more WAL than this (e.g. 1GB, 512MB; units as in
    /// postgresql.conf, powers of 1024).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub max_slot_wal: Option<u64>,
}

/// `prepare`.
#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// The parent table (its integer primary key orders the backfill).
    #[arg(long, default_value = "users")]
    pub parent: String,
    /// The uuid column to add (or, with --column-exists, to complete).
    #[arg(long, default_value = "uuid")]
    pub uuid_column: String,
    /// The column exists already (added by hand or by a failed migration):
    /// complete it — values already in it are kept, NULLs get a uuid.
    #[arg(long)]
    pub column_exists: bool,
    /// Rows per backfill batch (one transaction each).
    #[arg(long, default_value_t = 10_000)]
    pub batch_rows: i64,
    /// How long one attempt at a step that takes ACCESS EXCLUSIVE waits
    /// for the lock (the application queues behind it meanwhile).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "200ms")]
    pub lock_timeout: Duration,
    /// Attempts per such step before giving up.
    #[arg(long, default_value_t = 10)]
    pub attempts: u32,
    /// Pause after the first failed attempt; doubles each time (capped at 10 s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
    pub backoff: Duration,
    /// Backfill throttle.
    #[command(flatten)]
    pub throttle: ThrottleArgs,
    /// How often a progress line is logged when stderr is not a terminal.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "10s")]
    pub progress_interval: Duration,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
}

/// `promote`.
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The parent table.
    #[arg(long, default_value = "users")]
    pub parent: String,
    /// The uuid column that becomes the primary key (NOT NULL, with a unique
    /// index: what `prepare` makes).
    #[arg(long, default_value = "uuid")]
    pub uuid_column: String,
    /// Drop the integer key column (and its sequence and indexes) in the
    /// same locked transaction, after a fresh check that nothing references it.
    #[arg(long)]
    pub drop_integer_key: bool,
    /// The uuid column takes the integer key's name (`id`); the integer is
    /// renamed to --legacy-name. The application's SQL that names the column
    /// then means the uuid.
    #[arg(long)]
    pub rename: bool,
    /// The integer key's name after --rename.
    #[arg(long, default_value = "legacy_id")]
    pub legacy_name: String,
    /// The former integer key, for a run after the key already moved
    /// (default: the --legacy-name column, else `id`).
    #[arg(long)]
    pub integer_column: Option<String>,
    /// How long one attempt at the locked step waits for its ACCESS
    /// EXCLUSIVE lock (the application queues behind it meanwhile).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "200ms")]
    pub lock_timeout: Duration,
    /// Attempts before giving up.
    #[arg(long, default_value_t = 10)]
    pub attempts: u32,
    /// Pause after the first failed attempt; doubles each time (capped at 10 s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
    pub backoff: Duration,
    /// Print the statements instead of running them (refusals still apply).
    #[arg(long)]
    pub dry_run: bool,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
}

/// When to cut over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CutoverMode {
    /// Wait for `pg-rekey cutover`.
    Manual,
    /// Cut over as soon as every table streams with a small lag.
    Auto,
}

/// `rewrite`.
#[derive(Debug, Args)]
pub struct RewriteArgs {
    /// Parent table.
    #[command(flatten)]
    pub parent: ParentArgs,
    /// Tables to rewrite (repeatable). Default: every table with a foreign
    /// key to the parent's primary key, as `plan` finds them (the list is
    /// printed before the work starts).
    #[arg(long = "table")]
    pub tables: Vec<String>,
    /// When to cut over.
    #[arg(long, value_enum, default_value_t = CutoverMode::Manual)]
    pub cutover: CutoverMode,
    /// With `--cutover auto`: cut over with `--rewrite-dependents` (see `cutover`).
    #[arg(long)]
    pub rewrite_dependents: bool,
    /// Lock and hold limits used by `--cutover auto`.
    #[command(flatten)]
    pub lock: LockArgs,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics while the rewrite
    /// runs (e.g. 127.0.0.1:9187).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_listen_addr)]
    pub metrics_addr: Option<SocketAddr>,
    /// Copy throttle.
    #[command(flatten)]
    pub throttle: ThrottleArgs,
    /// How often a progress line per table is logged when stderr is not a
    /// terminal (or with --log-format json). On a terminal, bars are shown.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "10s")]
    pub progress_interval: Duration,
    /// Hooks.
    #[command(flatten)]
    pub hooks: HookArgs,
    /// Once the job is registered, how long to keep reconnecting after its
    /// connections are lost (a server restart, a dropped session) before
    /// giving up; the job then stays registered, and re-running the same
    /// rewrite resumes it.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "5m")]
    pub reconnect_timeout: Duration,
}

/// Parse a listen address: `IP:PORT`, `[IPv6]:PORT` or `HOSTNAME:PORT` (the
/// first address the name resolves to).
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    use std::net::ToSocketAddrs;
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{s:?} resolves to no address")),
        Err(e) => Err(format!(
            "{s:?} is not HOST:PORT (for example 127.0.0.1:9187): {e}"
        )),
    }
}

/// Parse a byte size: a number (decimals allowed) and an optional unit,
/// case-insensitive: `B`, `kB`/`KiB`/`K`, `MB`/`MiB`/`M`, `GB`/`GiB`/`G`,
/// `TB`/`TiB`/`T`. As in `postgresql.conf` (`max_slot_wal_keep_size = 1GB`),
/// every unit is a power of 1024. A number alone is bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad =
        || format!("{s:?} is not a size: write a number and a unit, such as 1GB, 512MB or 65536");
    if num.is_empty() || num.matches('.').count() > 1 {
        return Err(bad());
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let too_large = || format!("{s:?} is too large");
    let unit_bytes = 1u128 << shift;
    let value = if let Some((int, frac)) = num.split_once('.') {
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        // Exact decimal arithmetic: 1.5GB is 1.5 × 2^30 bytes, rounded down.
        let frac_digits = frac.len().min(18);
        let frac_str = frac.get(..frac_digits).unwrap_or_default();
        let frac_val: u128 = if frac_str.is_empty() {
            0
        } else {
            frac_str.parse().map_err(|_| bad())?
        };
        let scale = 10u128.pow(u32::try_from(frac_digits).unwrap_or(18));
        int.checked_mul(unit_bytes)
            .and_then(|v| v.checked_add(frac_val * unit_bytes / scale))
            .ok_or_else(too_large)?
    } else {
        let int: u128 = num.parse().map_err(|_| too_large())?;
        int.checked_mul(unit_bytes).ok_or_else(too_large)?
    };
    u64::try_from(value).map_err(|_| too_large())
}

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Clear the rows of finished jobs (cut over, aborted) and of failed jobs
    /// whose slot and shadow are gone. Old tables are kept.
    #[arg(long)]
    pub prune: bool,
    /// Redraw every INTERVAL until interrupted (e.g. 2s).
    #[arg(long, value_name = "INTERVAL", value_parser = humantime::parse_duration, num_args = 0..=1, default_missing_value = "2s", conflicts_with = "prune")]
    pub watch: Option<Duration>,
    /// Show this parent's journey too (prepared, each referencing table,
    /// promoted, the next command), even before it has a job or a prepare
    /// row. Parents of jobs and of `prepare` are always shown.
    #[arg(long, conflicts_with = "prune")]
    pub parent: Option<String>,
    /// The uuid column of --parent (default: the one its jobs or `prepare`
    /// recorded, else `uuid`).
    #[arg(long, requires = "parent")]
    pub uuid_column: Option<String>,
    /// With --json: print {"tables": [...], "journeys": [...]} instead of
    /// the array of tables (implied by --parent). `--watch --json` lines
    /// always carry "journeys".
    #[arg(long)]
    pub journeys: bool,
}

/// `abort`.
#[derive(Debug, Args)]
pub struct AbortArgs {
    /// Tables whose jobs to abort (repeatable, at least one).
    #[arg(long = "table", required = true)]
    pub tables: Vec<String>,
    /// Do not ask for confirmation on a terminal.
    #[arg(short, long)]
    pub yes: bool,
    /// Hooks.
    #[command(flatten)]
    pub hooks: HookArgs,
}

/// Lock budget of a cutover.
#[derive(Debug, Args, Clone)]
pub struct LockArgs {
    /// How long one attempt waits for the locks (e.g. 200ms).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "200ms")]
    pub lock_timeout: Duration,
    /// Longest the locks may be held while draining before giving them back.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub max_hold: Duration,
    /// Attempts before giving up. An attempt gives the locks back on a lock
    /// timeout, on a drain longer than --max-hold, or when DDL changed the
    /// tables' dependents after it built the swap (the next one rebuilds it).
    #[arg(long, default_value_t = 10)]
    pub attempts: u32,
    /// Pause after the first failed attempt; doubles each time (capped at 10 s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
    pub backoff: Duration,
    /// Refuse to start an attempt while a job is further behind than this
    /// (e.g. 16MB, 512kB; a number alone is bytes).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16MB")]
    pub max_lag_bytes: u64,
}

/// `cutover`.
#[derive(Debug, Args)]
pub struct CutoverArgs {
    /// Tables to swap together (repeatable, at least one).
    #[arg(long = "table", required = true)]
    pub tables: Vec<String>,
    /// Lock budget.
    #[command(flatten)]
    pub lock: LockArgs,
    /// Print the SQL the swap would run, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not verify before swapping.
    #[arg(long)]
    pub skip_verify: bool,
    /// While the jobs are further behind than --max-lag-bytes, wait up to
    /// this long for the lag to fall (e.g. 5m) instead of spending attempts.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub wait_for_lag: Option<Duration>,
    /// Do not ask for confirmation on a terminal.
    #[arg(short, long)]
    pub yes: bool,
    /// Machine-readable report (every attempt, lock holders, warnings).
    #[arg(long)]
    pub json: bool,
    /// Hooks.
    #[command(flatten)]
    pub hooks: HookArgs,
    /// Re-create views and policies that compare a reference column with an
    /// integer with the definition `plan` prints (same rows after the swap:
    /// joins on the parent's uuid column, integers translated through the
    /// parent), inside the swap transaction. Without it, cutover refuses
    /// up front when such objects exist.
    #[arg(long)]
    pub rewrite_dependents: bool,
    /// Keep a way back: from the swap on, the job keeps each old table
    /// current from its new one (uuids translated back), so `pg-rekey
    /// rollback` can swap back without losing a write; `pg-rekey finish`
    /// ends it. The rewrite process keeps running to serve it.
    #[arg(long)]
    pub way_back: bool,
}

/// `rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Tables to swap back together (repeatable, at least one).
    #[arg(long = "table", required = true)]
    pub tables: Vec<String>,
    /// Lock budget.
    #[command(flatten)]
    pub lock: LockArgs,
    /// Print the SQL the swap back would run, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation on a terminal.
    #[arg(short, long)]
    pub yes: bool,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
}

/// `finish`.
#[derive(Debug, Args)]
pub struct FinishArgs {
    /// Cut-over tables to finish (repeatable; every table of their job).
    #[arg(long = "table", required = true)]
    pub tables: Vec<String>,
    /// Finish even when the last comparison finds differences or cannot run.
    #[arg(long)]
    pub force: bool,
    /// Keep the old tables (no job follows them any more).
    #[arg(long)]
    pub keep_old: bool,
    /// Do not ask for confirmation on a terminal.
    #[arg(short, long)]
    pub yes: bool,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
}

/// `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Tables to compare (repeatable, at least one).
    #[arg(long = "table", required = true)]
    pub tables: Vec<String>,
    /// Rows per compared chunk.
    #[arg(long, default_value_t = 10_000)]
    pub chunk_rows: u64,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// The parent table. Default: found from the reference columns' foreign keys.
    #[arg(long, requires = "uuid_column")]
    pub parent: Option<String>,
    /// The parent's uuid column. Default: found from the catalogs.
    #[arg(long, requires = "parent")]
    pub uuid_column: Option<String>,
    /// How long one attempt waits for the SHARE locks that hold writers of
    /// the sources back while the jobs drain (before cutover only).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "200ms")]
    pub lock_timeout: Duration,
    /// Longest the locks may be held while the jobs drain.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub max_hold: Duration,
    /// Attempts at a consistent point before giving up (per table).
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// Pause after the first failed attempt; doubles each time (capped at 10 s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
    pub backoff: Duration,
    /// Most tables locked together for one consistent point; a set that
    /// cannot be locked is halved. 1 (the default) never deadlocks with
    /// application transactions that write several tables.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub lock_set: u64,
}

/// Size of the example workload (`demo`, `soak`).
#[derive(Debug, Args, Clone)]
pub struct WorkloadArgs {
    /// Users to seed.
    #[arg(long, default_value_t = 2_000)]
    pub users: u64,
    /// Rows to seed, spread over the five referencing tables.
    #[arg(long, default_value_t = 50_000)]
    pub rows: u64,
    /// Concurrent writer sessions.
    #[arg(long, default_value_t = 3)]
    pub writers: usize,
    /// Concurrent reader sessions.
    #[arg(long, default_value_t = 2)]
    pub readers: usize,
}

/// `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Workload size.
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// How long to stream under load before cutting over.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub stream_for: Duration,
    /// With --dsn: keep the demo database for inspection instead of dropping it.
    #[arg(long)]
    pub keep: bool,
    /// Machine-readable summary.
    #[arg(long)]
    pub json: bool,
}

/// `soak`.
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Total duration (e.g. 60s, 10m): seed, copy, streaming under load, cutover, verification.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub duration: Duration,
    /// Workload size.
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Machine-readable summary.
    #[arg(long)]
    pub json: bool,
}

/// Where metrics are served (used by long-running commands).
pub type MetricsAddr = Option<SocketAddr>;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn help_and_readme_state_the_one_exit_code_rule() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains(EXIT_CODES_HELP), "{help}");
        let rule = "0 done; 1 found something or gave up with nothing harmed";
        assert!(EXIT_CODES_HELP.contains(rule));
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains("**0** done; **1** found something or gave\nup with nothing harmed"),
            "the README states the same rule"
        );
        // Each command's own line in --help names its codes.
        for (cmd, codes) in [
            ("plan", "Exit 0 ready, 1 blockers found, 2 error"),
            ("rewrite", "Exit 0 cut over, 1 stopped"),
            ("status", "Exit 0, 2 error"),
            ("abort", "Exit 0, 1 not confirmed, 2 error"),
            (
                "cutover",
                "Exit 0 swapped, 1 gave up or the swap rolled back",
            ),
            (
                "verify",
                "Exit 0 equal, 1 different or no consistent point reached, 2 error",
            ),
        ] {
            let mut c = Cli::command();
            let sub = c.find_subcommand_mut(cmd).expect(cmd);
            let text = sub.render_long_help().to_string().replace('\n', " ");
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(text.contains(codes), "{cmd}: {text}");
        }
    }

    #[test]
    fn sizes_parse_as_postgresql_writes_them() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1GB"), Ok(1 << 30));
        assert_eq!(parse_size("1gb"), Ok(1 << 30));
        assert_eq!(parse_size("512MB"), Ok(512 << 20));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("64kB"), Ok(64 << 10));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("10B"), Ok(10));
        assert_eq!(parse_size("1.5GB"), Ok(3 << 29));
        assert_eq!(parse_size(".5K"), Ok(512));
        assert_eq!(parse_size(" 3M "), Ok(3 << 20));
        for bad in [
            "", "GB", "1.2.3GB", "-1GB", "1PB", "1 G B", "abc", "1e9", "1,5GB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(parse_size("16777216TB").unwrap_err().contains("too large"));
        assert_eq!(parse_size("16777215TB"), Ok(16_777_215u64 << 40));
        assert!(parse_size("99999999999999999999999999999999999999999").is_err());
        assert!(
            parse_size("300000000000000000000000000000000000000TB").is_err(),
            "no silent wrap-around"
        );
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_addr("127.0.0.1:9187").unwrap(),
            "127.0.0.1:9187".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(parse_listen_addr("[::1]:0").unwrap().port(), 0);
        assert_eq!(parse_listen_addr("localhost:9187").unwrap().port(), 9187);
        assert!(parse_listen_addr("9187").is_err());
        assert!(parse_listen_addr("127.0.0.1").is_err());
    }

    #[test]
    fn rewrite_observability_and_throttle_flags() {
        let c = Cli::try_parse_from([
            "pg-rekey",
            "--log-format",
            "json",
            "rewrite",
            "--table",
            "a",
            "--metrics-addr",
            "127.0.0.1:9187",
            "--max-replica-lag",
            "30s",
            "--max-slot-wal",
            "1GB",
            "--progress-interval",
            "2s",
        ])
        .unwrap();
        assert_eq!(c.global.log_format, LogFormat::Json);
        match c.command {
            Command::Rewrite(r) => {
                assert_eq!(r.metrics_addr, Some("127.0.0.1:9187".parse().unwrap()));
                assert_eq!(r.throttle.max_replica_lag, Some(Duration::from_secs(30)));
                assert_eq!(r.throttle.max_slot_wal, Some(1 << 30));
                assert_eq!(r.progress_interval, Duration::from_secs(2));
                assert_eq!(r.parent.parent, "users");
            }
            _ => panic!("wrong command"),
        }
        let c = Cli::try_parse_from(["pg-rekey", "rewrite", "--table", "a"]).unwrap();
        match c.command {
            Command::Rewrite(r) => {
                assert_eq!(
                    (
                        r.metrics_addr,
                        r.throttle.max_replica_lag,
                        r.throttle.max_slot_wal
                    ),
                    (None, None, None)
                );
                assert_eq!(r.progress_interval, Duration::from_secs(10));
            }
            _ => panic!("wrong command"),
        }
        for bad in [
            ["--max-slot-wal", "lots"],
            ["--max-replica-lag", "5 parsecs"],
            ["--metrics-addr", "nowhere"],
        ] {
            let args = ["pg-rekey", "rewrite", "--table", "a", bad[0], bad[1]];
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_rewrite_and_cutover() {
        let c = Cli::try_parse_from([
            "pg-rekey",
            "rewrite",
            "--parent",
            "users",
            "--uuid-column",
            "uuid_id",
            "--table",
            "a",
            "--table",
            "b",
        ])
        .unwrap();
        match c.command {
            Command::Rewrite(r) => {
                assert_eq!(r.tables, vec!["a", "b"]);
                assert_eq!(r.parent.uuid_column, "uuid_id");
                assert_eq!(r.cutover, CutoverMode::Manual);
            }
            _ => panic!("wrong command"),
        }
        let c = Cli::try_parse_from([
            "pg-rekey",
            "cutover",
            "--table",
            "a",
            "--lock-timeout",
            "150ms",
            "--dry-run",
        ])
        .unwrap();
        match c.command {
            Command::Cutover(r) => {
                assert_eq!(r.lock.lock_timeout, Duration::from_millis(150));
                assert!(r.dry_run);
                assert!(!r.rewrite_dependents);
            }
            _ => panic!("wrong command"),
        }
        match Cli::try_parse_from(["pg-rekey", "rewrite"])
            .unwrap()
            .command
        {
            Command::Rewrite(r) => assert!(r.tables.is_empty(), "default: discovered"),
            _ => panic!("wrong command"),
        }
        for args in [
            &[
                "pg-rekey",
                "cutover",
                "--table",
                "a",
                "--rewrite-dependents",
            ][..],
            &[
                "pg-rekey",
                "plan",
                "--parent",
                "users",
                "--rewrite-dependents",
            ][..],
            &[
                "pg-rekey",
                "rewrite",
                "--parent",
                "users",
                "--table",
                "a",
                "--cutover",
                "auto",
                "--rewrite-dependents",
            ][..],
        ] {
            let flag = match Cli::try_parse_from(args).unwrap().command {
                Command::Cutover(r) => r.rewrite_dependents,
                Command::Plan(r) => r.rewrite_dependents,
                Command::Rewrite(r) => r.rewrite_dependents,
                _ => false,
            };
            assert!(flag, "{args:?}");
        }
        assert!(
            Cli::try_parse_from(["pg-rekey", "cutover"]).is_err(),
            "cutover needs --table"
        );
        assert!(Cli::try_parse_from([
            "pg-rekey",
            "cutover",
            "--table",
            "a",
            "--lock-timeout",
            "soon"
        ])
        .is_err());
    }

    #[test]
    fn parses_demo_and_soak() {
        let c = Cli::try_parse_from(["pg-rekey", "demo"]).unwrap();
        match c.command {
            Command::Demo(d) => {
                assert_eq!((d.workload.users, d.workload.rows), (2_000, 50_000));
                assert_eq!(d.stream_for, Duration::from_secs(3));
            }
            _ => panic!("wrong command"),
        }
        let c = Cli::try_parse_from([
            "pg-rekey",
            "soak",
            "--dsn",
            "postgres://u@h/db",
            "--duration",
            "2m",
            "--writers",
            "6",
            "--json",
        ])
        .unwrap();
        match c.command {
            Command::Soak(s) => {
                assert_eq!(s.duration, Duration::from_secs(120));
                assert_eq!(s.workload.writers, 6);
                assert!(s.json);
            }
            _ => panic!("wrong command"),
        }
        assert!(Cli::try_parse_from(["pg-rekey", "soak", "--duration", "soon"]).is_err());
    }
}
