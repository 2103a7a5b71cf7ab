//! The commands behind the CLI: each turns validated arguments into work and
//! an exit code by one rule (0 done; 1 found something or gave up with
//! nothing harmed — blockers, differences, a cutover that gave up, a stopped
//! rewrite; 2 error). An `Err` is printed by the binary and mapped to 1 or 2
//! by [`Error::exit_code`].

use std::sync::Arc;

use tokio::sync::watch;

use crate::cli::{
    AbortArgs, Cli, Command, CutoverArgs, LogFormat, PlanArgs, RewriteArgs, StatusArgs, VerifyArgs,
};
use crate::error::Error;
use crate::pg::{self, ConnSpec, QualifiedName};
use crate::progress::{JobProgress, RenderMode, RenderOptions};

/// Process exit code.
pub type ExitCode = u8;

/// Parse the connection target from `--dsn` / `DATABASE_URL` and `PG*`.
pub fn conn_spec(dsn: Option<&str>) -> Result<ConnSpec, Error> {
    ConnSpec::parse(dsn.unwrap_or("")).map_err(|e| Error::Config(e.to_string()))
}

/// Parse `--table` values (`table` or `schema.table`, quoting allowed).
pub fn parse_tables(tables: &[String]) -> Result<Vec<QualifiedName>, Error> {
    let mut out: Vec<QualifiedName> = Vec::with_capacity(tables.len());
    for t in tables {
        let q = QualifiedName::parse(t, "public")
            .map_err(|e| Error::Config(format!("--table: {e}")))?;
        if !out.contains(&q) {
            out.push(q);
        }
    }
    Ok(out)
}

use crate::console::write_bytes;
pub use crate::console::{print, shutdown_signal};

/// Run a parsed command line.
pub async fn run(cli: Cli) -> Result<ExitCode, Error> {
    let dsn = cli.global.dsn.as_deref();
    match cli.command {
        Command::Prepare(a) => prepare(dsn, a).await,
        Command::Promote(a) => promote(dsn, a).await,
        Command::Plan(a) => plan(dsn, a).await,
        Command::Rewrite(a) => rewrite(dsn, cli.global.log_format, a).await,
        Command::Status(a) => status(dsn, a).await,
        Command::Abort(a) => abort(dsn, a).await,
        Command::Cutover(a) => cutover(dsn, a).await,
        Command::Rollback(a) => rollback(dsn, a).await,
        Command::Finish(a) => finish(dsn, a).await,
        Command::Verify(a) => verify(dsn, a).await,
        Command::Demo(a) => demo(dsn, a).await,
        Command::Soak(a) => soak(dsn, a).await,
        Command::Completions(a) => {
            write_bytes(&crate::cli::help::completions(a.shell))?;
            Ok(0)
        }
        Command::Man => {
            let page = crate::cli::help::man_page().map_err(|e| Error::Io {
                context: "render the manual page".into(),
                source: e,
            })?;
            write_bytes(&page)?;
            Ok(0)
        }
    }
}

async fn prepare(dsn: Option<&str>, a: crate::cli::PrepareArgs) -> Result<ExitCode, Error> {
    let spec = conn_spec(dsn)?;
    let parent = QualifiedName::parse(&a.parent, "public")
        .map_err(|e| Error::Config(format!("--parent: {e}")))?;
    if a.batch_rows < 1 {
        return Err(Error::Config(format!(
            "--batch-rows {}: must be at least 1",
            a.batch_rows
        )));
    }
    let cfg = crate::prepare::PrepareConfig {
        column_exists: a.column_exists,
        batch_rows: a.batch_rows,
        lock_timeout: a.lock_timeout,
        attempts: a.attempts.max(1),
        backoff: a.backoff,
        throttle: limits_of(&a.throttle),
        progress_interval: a.progress_interval,
        ..crate::prepare::PrepareConfig::new(spec, parent, a.uuid_column)
    };
    let report = crate::prepare::run(&cfg, shutdown_signal()).await?;
    if a.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Error::Config(e.to_string()))?;
        print(&format!("{text}\n"))?;
    } else {
        print(&report.to_string())?;
    }
    Ok(0)
}

async fn promote(dsn: Option<&str>, a: crate::cli::PromoteArgs) -> Result<ExitCode, Error> {
    let spec = conn_spec(dsn)?;
    let parent = QualifiedName::parse(&a.parent, "public")
        .map_err(|e| Error::Config(format!("--parent: {e}")))?;
    let mut cfg = crate::promote::PromoteConfig::new(spec, parent, a.uuid_column);
    cfg.options.drop_integer_key = a.drop_integer_key;
    cfg.options.rename = a.rename;
    cfg.options.legacy_name = a.legacy_name;
    cfg.options.integer_column = a.integer_column;
    cfg.limits = crate::locked_step::LockLimits {
        lock_timeout: a.lock_timeout,
        attempts: a.attempts.max(1),
        backoff: a.backoff,
    };
    cfg.dry_run = a.dry_run;
    let report = crate::promote::run(&cfg).await?;
    if a.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Error::Config(e.to_string()))?;
        print(&format!("{text}\n"))?;
    } else {
        print(&report.to_string())?;
    }
    Ok(0)
}

async fn plan(dsn: Option<&str>, a: PlanArgs) -> Result<ExitCode, Error> {
    let spec = conn_spec(dsn)?;
    let parent = QualifiedName::parse(&a.parent.parent, "public")
        .map_err(|e| Error::Config(format!("--parent: {e}")))?;
    let tables = parse_tables(&a.tables)?;
    let mut client = pg::connect(&spec, "plan").await?;
    let report = crate::plan::preflight::preflight_with(
        &mut client,
        &parent,
        &a.parent.uuid_column,
        (!tables.is_empty()).then_some(tables.as_slice()),
        crate::plan::preflight::PreflightOptions {
            rewrite_dependents: a.rewrite_dependents,
        },
    )
    .await?;
    if a.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Error::Config(e.to_string()))?;
        print(&format!("{text}\n"))?;
    } else {
        print(&format!("{report}\n"))?;
    }
    Ok(if report.has_blockers() { 1 } else { 0 })
}

/// The rewrite's throttle limits from its flags.
pub fn throttle_limits(a: &RewriteArgs) -> crate::throttle::ThrottleLimits {
    limits_of(&a.throttle)
}

/// How `rewrite` shows progress: bars on a terminal with text logs; log lines
/// otherwise (JSON logs stay one object per line, with no bar codes between).
pub fn render_options(log_format: LogFormat, a: &RewriteArgs) -> RenderOptions {
    RenderOptions {
        mode: match log_format {
            LogFormat::Json => RenderMode::Log,
            LogFormat::Text => RenderMode::Auto,
        },
        log_every: a.progress_interval,
        ..RenderOptions::default()
    }
}

async fn rewrite(
    dsn: Option<&str>,
    log_format: LogFormat,
    a: RewriteArgs,
) -> Result<ExitCode, Error> {
    let spec = conn_spec(dsn)?;
    let parent = QualifiedName::parse(&a.parent.parent, "public")
        .map_err(|e| Error::Config(format!("--parent: {e}")))?;
    let mut tables = parse_tables(&a.tables)?;
    if tables.is_empty() {
        tables = discover_tables(&spec, &parent, &a.parent.uuid_column).await?;
        print(&format!(
            "no --table given: rewriting the {} table(s) with a foreign key to {parent}'s key, as plan finds them: {}\n",
            tables.len(),
            tables
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))?;
    }
    let mut cfg =
        crate::rewrite::RewriteConfig::new(spec, parent, a.parent.uuid_column.clone(), tables);
    cfg.throttle = throttle_limits(&a);
    cfg.reconnect_timeout = a.reconnect_timeout;
    let progress = JobProgress::new();
    // Metrics and the renderer live as long as the rewrite; `done` ends them.
    let (done_tx, done_rx) = watch::channel(false);
    let done = move || {
        let mut rx = done_rx.clone();
        async move {
            let _ = rx.wait_for(|d| *d).await;
        }
    };
    let metrics = match a.metrics_addr {
        Some(addr) => Some(crate::metrics::serve(addr, Arc::clone(&progress), done()).await?),
        None => None,
    };
    let renderer = crate::progress::spawn_renderer_with(
        Arc::clone(&progress),
        done(),
        render_options(log_format, &a),
    );
    let shutdown = shutdown_signal();
    let auto = (a.cutover == crate::cli::CutoverMode::Auto).then(|| {
        crate::task::spawn(
            "auto-cutover",
            crate::cutover::auto(
                cutover_config(
                    cfg.spec.clone(),
                    cfg.tables.clone(),
                    &a.lock,
                    &a.hooks,
                    a.rewrite_dependents,
                ),
                shutdown.clone(),
            ),
        )
    });
    let indexes = crate::step_progress::spawn_index_watch(
        cfg.spec.clone(),
        std::time::Duration::from_secs(5),
        done(),
    );
    let events = spawn_rewrite_events(
        hooks(&a.hooks),
        Arc::clone(&progress),
        a.lock.max_lag_bytes,
        done(),
    );
    let result = crate::rewrite::run(&cfg, shutdown, Arc::clone(&progress)).await;
    rewrite_end_hook(&hooks(&a.hooks), &cfg.tables, &result).await;
    if let Some(auto) = auto {
        finish_auto_cutover(auto, &result).await;
    }
    let _ = done_tx.send(true);
    let _ = events.await;
    let _ = indexes.await;
    // The renderer draws the final state before it returns.
    let _ = renderer.await;
    if let Some(m) = metrics {
        let _ = m.handle.await;
    }
    match result? {
        crate::rewrite::RewriteOutcome::CutOver => {
            print("every table is cut over\n")?;
            let swapped: Vec<(String, String)> = cfg
                .tables
                .iter()
                .map(|t| {
                    let old = crate::swap::SwapNames::derive(t).old_table;
                    (
                        t.to_string(),
                        QualifiedName::new(t.schema.clone(), old).to_string(),
                    )
                })
                .collect();
            print(&crate::guide::next_after_swap(&swapped))?;
            Ok(0)
        }
        crate::rewrite::RewriteOutcome::Finished => {
            print("the way back was finished (`pg-rekey finish`); slot and publication dropped\n")?;
            Ok(0)
        }
        crate::rewrite::RewriteOutcome::Paused => {
            let names: Vec<String> = cfg.tables.iter().map(|t| format!("--table {t}")).collect();
            print(&format!(
                "stopped serving the way back; nothing was removed. The slot retains WAL until this runs again: pg-rekey rewrite --parent {} --uuid-column {} {}\n",
                cfg.parent,
                cfg.uuid_column,
                names.join(" ")
            ))?;
            Ok(1)
        }
        crate::rewrite::RewriteOutcome::Aborted => {
            print("stopped: the job's shadows, slot, publication and state were removed; the source tables are untouched\n")?;
            let names: Vec<String> = cfg.tables.iter().map(|t| t.to_string()).collect();
            print(&crate::guide::next_after_rewrite_stopped(&names))?;
            Ok(1)
        }
    }
}

/// The tables `plan` takes without `--table`: every table with a foreign
/// key to the parent's primary key (pg-rekey's own tables left out).
pub async fn discover_tables(
    spec: &ConnSpec,
    parent: &QualifiedName,
    uuid_column: &str,
) -> Result<Vec<QualifiedName>, Error> {
    let client = pg::connect(spec, "rewrite-discover").await?;
    // As `plan` does: only the parent's key is needed to find the tables;
    // any other problem of the parent is left to the rewrite's preflight,
    // which reports it with every other blocker.
    let mut facts = crate::plan::catalog::parent_facts(&client, parent, uuid_column).await?;
    let (Some(attnum), Some(key)) = (facts.key_attnum, facts.key_column.clone()) else {
        return Err(match facts.problems.is_empty() {
            true => crate::plan::PlanError::ParentNoPrimaryKey {
                table: parent.clone(),
            },
            false => facts.problems.remove(0),
        }
        .into());
    };
    let tables = crate::plan::catalog::discover_by_key(&client, facts.oid, attnum).await?;
    if tables.is_empty() {
        return Err(Error::Config(format!(
            "no table has a foreign key to {parent}({key}): nothing to rewrite; name tables with --table"
        )));
    }
    Ok(tables)
}

/// The hooks of the flags.
fn hooks(a: &crate::cli::HookArgs) -> crate::hooks::Hooks {
    crate::hooks::Hooks {
        dir: a.hook_dir.clone(),
        command: a.on_event.clone(),
    }
}

/// Fire the rewrite's phase-change hooks (copy-done, streaming,
/// ready-for-cutover) from its live progress, each once, until `done`.
fn spawn_rewrite_events(
    hooks: crate::hooks::Hooks,
    progress: Arc<JobProgress>,
    max_lag_bytes: u64,
    done: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    use crate::hooks::{Event, Facts};
    use crate::progress::Phase;
    crate::task::spawn("hooks", async move {
        if !hooks.any() {
            return;
        }
        tokio::pin!(done);
        let mut fired: Vec<Event> = Vec::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = &mut done => return,
                _ = tick.tick() => {}
            }
            let snaps: Vec<_> = progress.tables().iter().map(|t| t.snapshot()).collect();
            if snaps.is_empty() {
                continue;
            }
            let facts = Facts {
                lag_bytes: snaps.iter().map(|s| s.lag_bytes).max(),
                ..Facts::tables(snaps.iter().map(|s| s.table.clone()))
            };
            let streaming = snaps.iter().all(|s| s.phase == Phase::Streaming);
            let due = [
                (Event::CopyDone, snaps.iter().all(|s| s.copy_done)),
                (Event::Streaming, streaming),
                (
                    Event::ReadyForCutover,
                    streaming && snaps.iter().all(|s| s.lag_bytes <= max_lag_bytes),
                ),
            ];
            for (event, now) in due {
                if now && !fired.contains(&event) {
                    fired.push(event);
                    hooks.run(event, &facts).await;
                }
            }
        }
    })
}

/// The rewrite's end: `failed` or `aborted` hooks (a swap fires `swapped`
/// from the cutover that made it).
async fn rewrite_end_hook(
    hooks: &crate::hooks::Hooks,
    tables: &[QualifiedName],
    result: &Result<crate::rewrite::RewriteOutcome, Error>,
) {
    use crate::hooks::{Event, Facts};
    let (event, error) = match result {
        Ok(
            crate::rewrite::RewriteOutcome::CutOver
            | crate::rewrite::RewriteOutcome::Finished
            | crate::rewrite::RewriteOutcome::Paused,
        ) => return,
        Ok(crate::rewrite::RewriteOutcome::Aborted) => (Event::Aborted, None),
        Err(e) => (Event::Failed, Some(e.to_string())),
    };
    if hooks.any() {
        let facts = Facts {
            error,
            ..Facts::tables(tables)
        };
        hooks.run(event, &facts).await;
    }
}

/// The rewrite ended: a cut-over job's automatic cutover is still running
/// its post-commit steps (validation, ANALYZE), which must not be cut off by
/// the process exiting — wait for them. Any other end: stop it.
async fn finish_auto_cutover(
    auto: tokio::task::JoinHandle<()>,
    result: &Result<crate::rewrite::RewriteOutcome, Error>,
) {
    if matches!(result, Ok(crate::rewrite::RewriteOutcome::CutOver)) {
        let _ = auto.await;
    } else {
        auto.abort();
    }
}

async fn status(dsn: Option<&str>, a: StatusArgs) -> Result<ExitCode, Error> {
    let spec = conn_spec(dsn)?;
    let client = pg::connect(&spec, "status").await?;
    if a.prune {
        let pruned = crate::guide::prune(&client).await?;
        if a.json {
            let text =
                serde_json::to_string_pretty(&pruned).map_err(|e| Error::Config(e.to_string()))?;
            print(&format!("{text}\n"))?;
        } else {
            print(&crate::guide::render_pruned(&pruned))?;
        }
        return Ok(0);
    }
    let named = match &a.parent {
        Some(p) => Some((
            QualifiedName::parse(p, "public")
                .map_err(|e| Error::Config(format!("--parent: {e}")))?,
            a.uuid_column.clone(),
        )),
        None => None,
    };
    if let Some(every) = a.watch {
        return crate::status::watch(&client, every, a.json, named).await;
    }
    let report = crate::status::load(&client).await?;
    let journeys = crate::status::journey::load_for_status(&client, &report, named.clone()).await?;
    if a.json {
        // The array of tables is the contract of `status --json`; the
        // object with the journeys is asked for (--journeys, --parent).
        let text = if a.journeys || named.is_some() {
            let leftovers = crate::guide::leftovers(&client).await?;
            serde_json::to_string_pretty(
                &serde_json::json!({ "tables": report, "journeys": journeys, "leftovers": leftovers }),
            )
        } else {
            serde_json::to_string_pretty(&report)
        }
        .map_err(|e| Error::Config(e.to_string()))?;
        print(&format!("{text}\n"))?;
    } else {
        let mut text = crate::status::render(&report);
        text.push_str(&crate::status::journey::render(&journeys));
        text.push_str(&crate::guide::render_leftovers(
            &crate::guide::leftovers(&client).await?,
        ));
        print(&text)?;
    }
    Ok(0)
}

async fn abort(dsn: Option<&str>, a: AbortArgs) -> Result<ExitCode, Error> {
    let spec = conn_spec(dsn)?;
    let tables = parse_tables(&a.tables)?;
    if !a.yes && crate::guide::interactive() {
        let admin = pg::connect(&spec, "abort-confirm").await?;
        let jobs = crate::guide::jobs_of(&admin, &tables).await?;
        if jobs
            .iter()
            .any(|j| j.phase() != Some(crate::state::Phase::CutOver))
            && !crate::guide::confirm(&crate::guide::abort_plan(&jobs), false)?
        {
            print("not confirmed; nothing was done\n")?;
            return Ok(1);
        }
    }
    let results = crate::abort::abort(&spec, &tables).await?;
    let aborted: Vec<String> = results
        .iter()
        .filter(|r| r.outcome == "aborted")
        .flat_map(|r| std::iter::once(r.table.clone()).chain(r.with.iter().cloned()))
        .fold(Vec::new(), |mut v, t| {
            if !v.contains(&t) {
                v.push(t);
            }
            v
        });
    let mut text = String::new();
    for r in results {
        let line = match r.outcome.as_str() {
            "aborted" if r.with.is_empty() => format!("{}: aborted; shadow, slot, publication and state removed\n", r.table),
            "aborted" => format!(
                "{}: aborted together with {} (same job); shadows, slot, publication and state removed\n",
                r.table,
                r.with.join(", ")
            ),
            "already_cut_over" => format!("{}: already cut over; abort does not undo a cutover — `pg-rekey rollback --table {}` swaps back (after a cutover with --way-back), `pg-rekey finish --table {}` ends the job\n", r.table, r.table, r.table),
            _ => format!("{}: no job; nothing to do\n", r.table),
        };
        text.push_str(&line);
    }
    if !aborted.is_empty() && (a.hooks.hook_dir.is_some() || a.hooks.on_event.is_some()) {
        hooks(&a.hooks)
            .run(
                crate::hooks::Event::Aborted,
                &crate::hooks::Facts::tables(&aborted),
            )
            .await;
    }
    text.push_str(&crate::guide::next_after_abort(&aborted));
    print(&text)?;
    Ok(0)
}

async fn cutover(dsn: Option<&str>, a: CutoverArgs) -> Result<ExitCode, Error> {
    let cfg = crate::cutover::CutoverConfig {
        wait_for_lag: a.wait_for_lag,
        dry_run: a.dry_run,
        skip_verify: a.skip_verify,
        way_back: a.way_back,
        ..cutover_config(
            conn_spec(dsn)?,
            parse_tables(&a.tables)?,
            &a.lock,
            &a.hooks,
            a.rewrite_dependents,
        )
    };
    cfg.validate()?;
    crate::guide::require_tables(&pg::connect(&cfg.spec, "cutover-check").await?, &cfg.tables)
        .await?;
    if !cfg.dry_run && !a.yes && crate::guide::interactive() {
        let admin = pg::connect(&cfg.spec, "cutover-confirm").await?;
        let jobs = crate::guide::jobs_of(&admin, &cfg.tables).await?;
        let pending: Vec<_> = jobs
            .into_iter()
            .filter(|j| j.phase() != Some(crate::state::Phase::CutOver))
            .collect();
        if !pending.is_empty()
            && !crate::guide::confirm(
                &crate::guide::cutover_plan(&pending, !cfg.skip_verify),
                false,
            )?
        {
            print("not confirmed; nothing was done\n")?;
            return Ok(1);
        }
    }
    let shown = crate::step_progress::watch_verify(std::time::Duration::from_secs(10));
    let report = crate::cutover::run(&cfg).await;
    shown.finish().await;
    let report = report?;
    if a.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Error::Config(e.to_string()))?;
        print(&format!("{text}\n"))?;
    } else {
        print(&render_cutover(&report))?;
        let names: Vec<String> = cfg.tables.iter().map(|t| t.to_string()).collect();
        if cfg.dry_run {
            print(&format!(
                "-- next: the same command without --dry-run swaps: pg-rekey cutover {}\n",
                names
                    .iter()
                    .map(|t| format!("--table {t}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ))?;
        } else if report.swapped {
            print(&crate::guide::next_after_swap(&report.tables))?;
        } else {
            print(&crate::guide::next_after_give_up(&names))?;
        }
    }
    Ok(if report.swapped || cfg.dry_run { 0 } else { 1 })
}

async fn rollback(dsn: Option<&str>, a: crate::cli::RollbackArgs) -> Result<ExitCode, Error> {
    let cfg = crate::cutover::CutoverConfig {
        dry_run: a.dry_run,
        skip_verify: true,
        direction: crate::cutover::Direction::Back,
        ..cutover_config(
            conn_spec(dsn)?,
            parse_tables(&a.tables)?,
            &a.lock,
            &crate::cli::HookArgs::default(),
            false,
        )
    };
    cfg.validate()?;
    if !cfg.dry_run && !a.yes && crate::guide::interactive() {
        let names: Vec<String> = cfg.tables.iter().map(|t| t.to_string()).collect();
        let plan = format!(
            "rollback will lock {} (and the parent) for at most {:?} per attempt, swap the old tables back into place and carry every dependent object back; the application's statements that send uuids for these columns will fail with a type error afterwards",
            names.join(", "),
            cfg.lock_timeout + cfg.max_hold
        );
        if !crate::guide::confirm(&plan, false)? {
            print("not confirmed; nothing was done\n")?;
            return Ok(1);
        }
    }
    let report = crate::cutover::run(&cfg).await?;
    if a.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Error::Config(e.to_string()))?;
        print(&format!("{text}\n"))?;
    } else if !report.dry_run_sql.is_empty() {
        print(&render_cutover(&report))?;
    } else {
        for at in &report.attempts {
            print(&format!(
                "attempt {}: {} (lock wait {:.1} ms{})\n",
                at.attempt,
                at.outcome,
                at.lock_wait_ms,
                at.lock_hold_ms
                    .map(|h| format!(", hold {h:.1} ms"))
                    .unwrap_or_default()
            ))?;
        }
        if report.swapped {
            for (t, uuid_table) in &report.tables {
                print(&format!("{t}: rolled back; the original table holds the name again, the uuid table is {uuid_table} and is kept current from it\n"))?;
            }
            let args: Vec<String> = cfg.tables.iter().map(|t| format!("--table {t}")).collect();
            print(&format!(
                "-- next: the jobs stream forward again; cut over again when ready (no copy): pg-rekey cutover --way-back {}\n",
                args.join(" ")
            ))?;
        }
        if let Some(reason) = &report.reason {
            print(&format!("not rolled back: {reason}\n"))?;
        }
        for w in &report.warnings {
            print(&format!("warning: {w}\n"))?;
        }
    }
    Ok(if report.swapped || cfg.dry_run { 0 } else { 1 })
}

async fn finish(dsn: Option<&str>, a: crate::cli::FinishArgs) -> Result<ExitCode, Error> {
    let spec = conn_spec(dsn)?;
    let tables = parse_tables(&a.tables)?;
    if !a.yes && crate::guide::interactive() {
        let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
        let plan = format!(
            "finish will compare old and new a last time, stop the way back, drop the job's slot and publication{} for {}; there is no rollback after it",
            if a.keep_old { "" } else { " and drop the old tables" },
            names.join(", ")
        );
        if !crate::guide::confirm(&plan, false)? {
            print("not confirmed; nothing was done\n")?;
            return Ok(1);
        }
    }
    let opts = crate::way_back::FinishOptions {
        force: a.force,
        keep_old: a.keep_old,
        ..Default::default()
    };
    let report = match crate::way_back::finish(&spec, &tables, &opts).await {
        Ok(r) => r,
        Err(e @ Error::Data(_)) => {
            print(&format!("{e}\n"))?;
            return Ok(1);
        }
        Err(e) => return Err(e),
    };
    if a.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Error::Config(e.to_string()))?;
        print(&format!("{text}\n"))?;
    } else {
        match report.verified {
            Some(true) => print("old and new compared equal\n")?,
            Some(false) => print(&format!(
                "finished with --force although: {}\n",
                report.verify_detail.clone().unwrap_or_default()
            ))?,
            None => print("no way back was kept: the old tables stopped at the swap, so they were not compared\n")?,
        }
        for (t, old) in report.tables.iter().zip(&report.old_tables) {
            let what = if report.kept_old {
                "kept (detached)"
            } else {
                "dropped"
            };
            print(&format!("{t}: finished; the old table {old} was {what}, the job's slot, publication and rows removed\n"))?;
        }
    }
    Ok(0)
}

/// Human summary of a cutover.
pub fn render_cutover(r: &crate::cutover::CutoverReport) -> String {
    let mut out = String::new();
    if !r.dry_run_sql.is_empty() {
        out.push_str("-- dry run: the swap would run these statements (nothing was changed)\n");
        for s in &r.dry_run_sql {
            out.push_str(s);
            if !s.starts_with("--") {
                out.push(';');
            }
            out.push('\n');
        }
        return out;
    }
    for a in &r.attempts {
        out.push_str(&format!(
            "attempt {}: {} (lock wait {:.1} ms{})\n",
            a.attempt,
            a.outcome,
            a.lock_wait_ms,
            a.lock_hold_ms
                .map(|h| format!(", hold {h:.1} ms"))
                .unwrap_or_default()
        ));
    }
    if r.swapped {
        for (t, old) in &r.tables {
            out.push_str(&format!("{t}: cut over; the original table is now {old}\n"));
        }
    }
    if let Some(reason) = &r.reason {
        out.push_str(&format!("not cut over: {reason}\n"));
    }
    for w in &r.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}

/// Options of `verify` from its arguments (pure).
pub fn verify_options(a: &VerifyArgs) -> Result<crate::verify::RunOptions, Error> {
    if a.chunk_rows == 0 {
        return Err(Error::Config("--chunk-rows must be at least 1".into()));
    }
    let parent = match (&a.parent, &a.uuid_column) {
        (Some(p), Some(u)) => Some(crate::verify::ParentChoice {
            table: QualifiedName::parse(p, "public")
                .map_err(|e| Error::Config(format!("--parent: {e}")))?,
            uuid_column: u.clone(),
        }),
        _ => None,
    };
    Ok(crate::verify::RunOptions {
        compare: crate::verify::VerifyOptions {
            chunk_rows: a.chunk_rows,
            ..Default::default()
        },
        lock_timeout: a.lock_timeout,
        max_hold: a.max_hold,
        attempts: a.attempts.max(1),
        lock_set: usize::try_from(a.lock_set).unwrap_or(usize::MAX),
        backoff: a.backoff,
        parent,
        ..Default::default()
    })
}

/// `verify`: exit 0 when every table is equal, 1 when any differs (the
/// report names the first differing key ranges and rows), 2 on error.
pub async fn verify(dsn: Option<&str>, a: VerifyArgs) -> Result<ExitCode, Error> {
    let spec = conn_spec(dsn)?;
    let tables = parse_tables(&a.tables)?;
    let opts = verify_options(&a)?;
    crate::guide::require_tables(&pg::connect(&spec, "verify-check").await?, &tables).await?;
    let shown = crate::step_progress::watch_verify(std::time::Duration::from_secs(10));
    let report = crate::verify::run(&spec, &tables, &opts).await;
    shown.finish().await;
    let report = report?;
    if a.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Error::Config(e.to_string()))?;
        print(&format!("{text}\n"))?;
    } else {
        print(&report.to_string())?;
    }
    Ok(report.exit_code())
}

/// The one place a cutover's configuration is built from arguments (by
/// `cutover`, and by `rewrite --cutover auto` with the rewrite's tables):
/// [`crate::cutover::CutoverConfig::new`]'s defaults, the lock budget, the
/// hooks. `cutover` adds its own flags on top.
fn cutover_config(
    spec: crate::pg::ConnSpec,
    tables: Vec<crate::pg::QualifiedName>,
    lock: &crate::cli::LockArgs,
    hook_args: &crate::cli::HookArgs,
    rewrite_dependents: bool,
) -> crate::cutover::CutoverConfig {
    crate::cutover::CutoverConfig {
        lock_timeout: lock.lock_timeout,
        max_hold: lock.max_hold,
        attempts: lock.attempts,
        backoff: lock.backoff,
        max_lag_bytes: lock.max_lag_bytes,
        hooks: hooks(hook_args),
        rewrite_dependents,
        ..crate::cutover::CutoverConfig::new(spec, tables)
    }
}

/// `demo`: a throwaway cluster, or a fresh database on `--dsn`.
async fn demo(dsn: Option<&str>, a: crate::cli::DemoArgs) -> Result<ExitCode, Error> {
    let server = match dsn {
        Some(d) => Some(conn_spec(Some(d))?),
        None => None,
    };
    let cfg = crate::demo::DemoConfig {
        server,
        users: a.workload.users,
        rows: a.workload.rows,
        writers: a.workload.writers,
        readers: a.workload.readers,
        stream_for: a.stream_for,
        keep_database: a.keep,
    };
    let summary = crate::demo::run(&cfg, shutdown_signal()).await?;
    print_summary(&summary, a.json)
}

/// `soak`: needs a server.
async fn soak(dsn: Option<&str>, a: crate::cli::SoakArgs) -> Result<ExitCode, Error> {
    let server = match dsn {
        Some(d) => conn_spec(Some(d))?,
        None => {
            return Err(Error::Config(
                "soak needs a server: pass --dsn postgres://user@host/db (or set DATABASE_URL); it creates and drops its own database there".into(),
            ))
        }
    };
    let cfg = crate::demo::soak::SoakConfig {
        server,
        duration: a.duration,
        users: a.workload.users,
        rows: a.workload.rows,
        writers: a.workload.writers,
        readers: a.workload.readers,
    };
    let summary = crate::demo::soak::run(&cfg, shutdown_signal()).await?;
    print_summary(&summary, a.json)
}

/// Print a demo or soak summary; exit 0 only when it passed.
fn print_summary(summary: &crate::demo::DemoSummary, json: bool) -> Result<ExitCode, Error> {
    if json {
        let text =
            serde_json::to_string_pretty(summary).map_err(|e| Error::Config(e.to_string()))?;
        print(&format!("{text}\n"))?;
    } else {
        print(&format!("{summary}\n"))?;
    }
    Ok(if summary.passed() { 0 } else { 1 })
}

/// The throttle's limits from `--max-replica-lag` and `--max-slot-wal`.
fn limits_of(a: &crate::cli::ThrottleArgs) -> crate::throttle::ThrottleLimits {
    crate::throttle::ThrottleLimits {
        max_replica_lag: a.max_replica_lag,
        max_slot_wal_bytes: a.max_slot_wal,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    /// The command line's defaults are the ones the libraries define (the
    /// durations and sizes are written as text for `--help`).
    #[test]
    fn command_line_defaults_are_the_library_defaults() {
        let c = Cli::try_parse_from(["pg-rekey", "cutover", "--table", "t"]).unwrap();
        let Command::Cutover(a) = c.command else {
            panic!("not cutover")
        };
        let lib = crate::cutover::CutoverConfig::new(
            crate::pg::ConnSpec::parse("host=h dbname=d").unwrap(),
            vec![],
        );
        assert_eq!(a.lock.lock_timeout, lib.lock_timeout);
        assert_eq!(a.lock.max_hold, lib.max_hold);
        assert_eq!(a.lock.attempts, lib.attempts);
        assert_eq!(a.lock.backoff, lib.backoff);
        assert_eq!(a.lock.max_lag_bytes, lib.max_lag_bytes);
        let c = Cli::try_parse_from(["pg-rekey", "verify", "--table", "t"]).unwrap();
        let Command::Verify(v) = c.command else {
            panic!("not verify")
        };
        let lib = crate::verify::RunOptions::default();
        assert_eq!(v.lock_timeout, lib.lock_timeout);
        assert_eq!(v.max_hold, lib.max_hold);
        assert_eq!(v.attempts, lib.attempts);
        assert_eq!(v.backoff, lib.backoff);
        assert_eq!(v.chunk_rows, lib.compare.chunk_rows);
        assert_eq!(v.chunk_rows, crate::verify::DEFAULT_CHUNK_ROWS);
        let c = Cli::try_parse_from(["pg-rekey", "prepare", "--parent", "users"]).unwrap();
        let Command::Prepare(p) = c.command else {
            panic!("not prepare")
        };
        let lib = crate::prepare::PrepareConfig::new(
            crate::pg::ConnSpec::parse("host=h dbname=d").unwrap(),
            crate::pg::QualifiedName::new("public", "users"),
            "uuid",
        );
        assert_eq!(p.batch_rows, lib.batch_rows);
        assert_eq!(p.lock_timeout, lib.lock_timeout);
        // Rollback takes the cutover's lock budget.
        let c = Cli::try_parse_from(["pg-rekey", "rollback", "--table", "t"]).unwrap();
        let Command::Rollback(r) = c.command else {
            panic!("not rollback")
        };
        let lib = crate::cutover::CutoverConfig::new(
            crate::pg::ConnSpec::parse("host=h dbname=d").unwrap(),
            vec![],
        );
        assert_eq!(r.lock.lock_timeout, lib.lock_timeout);
        assert_eq!(r.lock.attempts, lib.attempts);
    }
}
