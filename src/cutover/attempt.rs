//! One cutover attempt: build the swap before the locks (from a
//! fingerprinted catalog read), then — through [`crate::quiesce`] — take
//! every lock, drain to a fence, re-check the columns and the fingerprint,
//! run the swap and record `cut_over`, and commit. Also the statements a
//! `--dry-run` prints, built by the same functions.

use std::time::{Duration, Instant};

use tokio_postgres::types::Type;
use tokio_postgres::Client;
use tracing::{info, warn};
use uuid::Uuid;

use super::targets::{columns_changed, Target};
use super::{AttemptOutcome, AttemptReport, CutoverConfig, Direction, PhaseTime};
use crate::error::Error;
use crate::pg::QualifiedName;
use crate::plan::catalog::TableDetail;
use crate::plan::model::{ColumnSpec, IntKind, ParentSpec};
use crate::quiesce;
use crate::state::{self, Phase};
use crate::swap::{self, SwapNames, SwapSql, SwapStep};
use crate::units::millis_tenths as ms;

/// Splits the hold into [`PhaseTime`]s.
struct Phases {
    last: Instant,
    list: Vec<PhaseTime>,
}

impl Phases {
    fn new(start: Instant) -> Phases {
        Phases {
            last: start,
            list: Vec::new(),
        }
    }

    /// Close the current step under `phase`.
    fn mark(&mut self, phase: &'static str) {
        self.mark_at(phase, Instant::now());
    }

    /// Close the current step under `phase`, as of `now`.
    fn mark_at(&mut self, phase: &'static str, now: Instant) {
        self.list.push(PhaseTime {
            phase,
            ms: ms(now - self.last),
        });
        tracing::debug!(phase, ms = ms(now - self.last), "cutover step");
        self.last = now;
    }
}

/// One attempt. `Ok` carries the attempt's report (swapped or gave the locks
/// back); `Err` a failure (transient ones are retried by the caller). The
/// lock, fence, drain and the decision to give the locks back are
/// [`crate::quiesce`]'s.
#[allow(clippy::too_many_arguments)]
pub(super) async fn attempt_once(
    cfg: &CutoverConfig,
    session: &Client,
    fence_session: &Client,
    admin: &Client,
    targets: &[Target],
    parent: &ParentSpec,
    job_ids: &[Uuid],
    attempt: u32,
) -> Result<AttemptReport, (AttemptReport, Error)> {
    let started = Instant::now();
    let report = |wait: Duration,
                  hold: Option<Duration>,
                  outcome: AttemptOutcome,
                  phases: &Phases| AttemptReport {
        attempt,
        lock_wait_ms: ms(wait),
        lock_hold_ms: hold.map(ms),
        outcome,
        phases: phases.list.clone(),
        lock_holders: vec![],
    };
    let no_phases = Phases::new(started);
    // Before any lock is requested: build the swap from a fingerprinted
    // catalog read, and warm this backend's catalog caches for the
    // statements it will run under the locks (a fresh backend spends most of
    // a catalog read loading its caches). Generic plans on this session: the
    // statements prepared here are planned once, before the locks, not again
    // under them. The empty `search_path` is the one the locked part sets (a
    // cached plan is made again when `search_path` differs from the one it
    // was made under).
    let before = async {
        session
            .batch_execute("SET plan_cache_mode = force_generic_plan; SET search_path = ''")
            .await
            .map_err(Error::db("configure the cutover session"))?;
        let fingerprinter = swap::catalog::Fingerprinter::prepare(session)
            .await
            .map_err(Error::db("prepare the catalog fingerprint"))?;
        let prepared = prepare(session, &fingerprinter, targets, parent, attempt == 1, cfg).await?;
        let _ = lock_statements(session, targets, parent).await;
        let _ = current_columns(session, targets, parent).await;
        // Every lock the swap needs, in one fixed order (see `lock_statements`).
        let locks = quiesce::LockSet {
            sql: lock_statements(admin, targets, parent).await?,
            what: "lock the source tables".into(),
            gives_up_on: &[quiesce::LOCK_NOT_AVAILABLE],
        };
        Ok::<_, Error>((fingerprinter, prepared, locks))
    }
    .await;
    // A failure before the locks were granted: no hold, no phases.
    let unlocked =
        |wait: Duration, e: Error| (report(wait, None, AttemptOutcome::error(&e), &no_phases), e);
    let (fingerprinter, prepared, locks) = match before {
        Ok(p) => p,
        Err(e) => return Err(unlocked(started.elapsed(), e)),
    };
    let lock_requested = Instant::now();
    let mut quiet = match quiesce::Attempt::lock(session, &locks, cfg.lock_timeout).await {
        Ok(q) => q,
        Err(e) => return Err(unlocked(lock_requested.elapsed(), e)),
    };
    let wait = quiet.lock_wait();
    let Some(locked) = quiet.granted() else {
        return Ok(report(wait, None, AttemptOutcome::LockTimeout, &no_phases));
    };
    let mut phases = Phases::new(locked);
    let fail = |e: Error, phases: &Phases| {
        (
            report(
                wait,
                Some(locked.elapsed()),
                AttemptOutcome::error(&e),
                phases,
            ),
            e,
        )
    };

    // Drain to a fence, bounded by the hold budget; meanwhile, on the
    // locked session, re-read the sources' columns and fingerprint the
    // catalog again. Both may run before the drain ends: from the lock on,
    // no DDL can touch the sources, the objects the swap locks, or the
    // shadows (held in SHARE UPDATE EXCLUSIVE, which the job's writes do not
    // conflict with), so what they read is what the swap will find. They
    // cost the hold nothing when the drain takes longer than they do.
    let token = format!("cutover-{}-{attempt}", Uuid::new_v4().simple());
    let fence = quiesce::Fence {
        session: fence_session,
        prepared: true,
        token: &token,
    };
    let drain = quiesce::Drain {
        poll: admin,
        job_ids,
        max_pause: HELD_POLL,
    };
    let pairs = pairs(targets);
    let reads = async {
        futures_util::join!(
            current_columns(session, targets, parent),
            fingerprinter.take(session, &pairs),
        )
    };
    let quiesced = async {
        let lsn = quiet.fence(&fence).await?;
        let fenced = Instant::now();
        quiet
            .drain(&drain, lsn, cfg.max_hold)
            .await
            .map(|d| (fenced, d))
    };
    let ((columns, fingerprint), drained) = futures_util::join!(reads, quiesced);
    let drained = match drained {
        Ok((fenced, drained)) => {
            phases.mark_at("fence", fenced);
            phases.mark("drain");
            drained
        }
        Err(e) => return Err(fail(e, &phases)),
    };
    if !drained {
        return Ok(report(
            wait,
            Some(locked.elapsed()),
            AttemptOutcome::DrainTimeout,
            &phases,
        ));
    }

    // Lock the shadows (the job has applied everything up to the fence) and
    // look at what was read meanwhile.
    let checks = async {
        let shadows = targets
            .iter()
            .map(|t| t.job.shadow.quoted())
            .collect::<Vec<_>>()
            .join(", ");
        session
            .batch_execute(&format!(
                "SET LOCAL search_path = ''; LOCK TABLE {shadows} IN ACCESS EXCLUSIVE MODE"
            ))
            .await
            .map_err(Error::db("lock the shadow tables"))?;
        // The columns must still be the ones the job planned (DDL under a
        // running job is refused by the stream too, but a DDL that sent no
        // row since would only show here).
        check_columns(targets, columns?)?;
        let fingerprint = fingerprint.map_err(Error::db("fingerprint the catalog"))?;
        phases.mark("checks");
        tracing::debug!(before = %prepared.fingerprint, under_lock = %fingerprint, "catalog fingerprints");
        Ok::<bool, Error>(fingerprint == prepared.fingerprint)
    }
    .await;
    let unchanged = match checks {
        Ok(u) => u,
        Err(e) => {
            quiet.abandon().await;
            return Err(fail(e, &phases));
        }
    };
    // Unchanged fingerprint: the swap built before the locks is the one a
    // read now would build (see `swap::catalog::fingerprint`). Otherwise
    // something changed in between: the attempt gives the locks back and the
    // next one builds the swap again.
    if quiet.check(unchanged).await == quiesce::Outcome::CatalogChanged {
        warn!(
            attempt,
            "the catalog changed since the swap was built (DDL on the tables or their dependents); \
             locks given back, the next attempt builds it again"
        );
        return Ok(report(
            wait,
            Some(locked.elapsed()),
            AttemptOutcome::CatalogChanged,
            &phases,
        ));
    }
    let swap = prepared.swap;
    let old_names: Vec<QualifiedName> = targets
        .iter()
        .map(|t| QualifiedName::new(t.job.source.schema.clone(), t.names.old_table.clone()))
        .collect();
    // The state rows are written right behind the swap statements, in the
    // same pipeline: if a swap statement fails, they fail too (the
    // transaction is aborted) and the swap's error is the one reported.
    let (swapped, recorded) = futures_util::join!(swap::execute_swap(session, &swap), async {
        match cfg.direction {
            Direction::Forward => {
                let pairs: Vec<(QualifiedName, QualifiedName)> = targets
                    .iter()
                    .zip(old_names)
                    .map(|(t, old)| (t.job.source.clone(), old))
                    .collect();
                state::record_cutovers(session, &pairs, cfg.way_back).await
            }
            Direction::Back => {
                let tables: Vec<QualifiedName> =
                    targets.iter().map(|t| t.job.source.clone()).collect();
                state::record_rollbacks(session, &tables).await
            }
        }
    });
    let written = swapped
        .map_err(swap_err)
        .and_then(|()| recorded.map_err(Error::from));
    if let Err(e) = written {
        quiet.abandon().await;
        return Err(fail(e, &phases));
    }
    phases.mark("swap_and_state");
    crate::failpoint::hit("cutover.before_swap");
    // If the connection drops during COMMIT, ask the catalog before anything
    // else whether the commit happened.
    let done = match cfg.direction {
        Direction::Forward => Phase::CutOver,
        Direction::Back => Phase::Streaming,
    };
    let (outcome, error) = quiet
        .commit(|| async {
            for t in targets {
                if let Ok(Some(j)) = state::get_job(admin, &t.job.source).await {
                    if j.phase() == Some(done) {
                        return true;
                    }
                }
            }
            false
        })
        .await;
    phases.mark("commit");
    let hold = locked.elapsed();
    if outcome == quiesce::Outcome::CommitLost {
        let e = match error {
            Some(e) => Error::db("commit the swap")(e),
            None => Error::Precondition("the swap's commit was lost".into()),
        };
        return Err((
            report(wait, Some(hold), AttemptOutcome::error(&e), &phases),
            e,
        ));
    }
    if error.is_none() {
        crate::failpoint::hit("cutover.after_commit");
    }
    Ok(report(wait, Some(hold), AttemptOutcome::Swapped, &phases))
}

/// The lock statements of an attempt ([`swap::sql::lock_sql`]: every lock
/// the swap will need, in one fixed order), from the catalog as it is now.
async fn lock_statements(
    c: &Client,
    targets: &[Target],
    parent: &ParentSpec,
) -> Result<String, Error> {
    let oids: Vec<u32> = targets.iter().map(|t| t.job.source_oid).collect();
    let hanging = swap::catalog::lock_targets(c, &oids)
        .await
        .map_err(Error::db("list the tables and views the swap locks"))?;
    let sources: Vec<QualifiedName> = targets.iter().map(|t| t.job.source.clone()).collect();
    let shadows = targets
        .iter()
        .map(|t| t.job.shadow.quoted())
        .collect::<Vec<_>>()
        .join(", ");
    // Last, the shadows in SHARE UPDATE EXCLUSIVE: the job's writes to them
    // go on (ROW EXCLUSIVE does not conflict) while DDL on them waits, so
    // their catalog rows cannot change from here on and the fingerprint can
    // be taken while the job drains (see `attempt_once`). ACCESS EXCLUSIVE
    // on them follows the drain.
    Ok(format!(
        "{}; LOCK TABLE {shadows} IN SHARE UPDATE EXCLUSIVE MODE",
        swap::sql::lock_sql(&sources, &parent.table, &hanging)
    ))
}

/// The statements of the swap transaction, for `--dry-run` (catalog reads
/// only; nothing changes and no application table is locked).
pub(super) async fn dry_run_sql(
    admin: &Client,
    cfg: &CutoverConfig,
    targets: &[Target],
    parent: &ParentSpec,
) -> Result<Vec<String>, Error> {
    let mut out = vec![
        "BEGIN".to_string(),
        format!("SET LOCAL lock_timeout = '{}ms'", cfg.lock_timeout.as_millis()),
        lock_statements(admin, targets, parent).await?,
        "-- on a second session: SELECT pg_logical_emit_message(true, 'pg_rekey.fence', '<token>'); then wait until every job applied past it".into(),
        format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", targets.iter().map(|t| t.job.shadow.quoted()).collect::<Vec<_>>().join(", ")),
    ];
    // Read-only: a dry run takes no lock on an application table. The
    // statements are the ones a real attempt runs under its locks when the
    // catalog has not changed since they were built.
    let swap = read_and_build(admin, targets, parent, true, cfg).await?;
    out.extend(swap.sql());
    // The job rows: one statement for all tables, as the attempt sends it
    // (`state::record_cutovers` / `record_rollbacks`, with arrays).
    let q = crate::pg::quote_literal;
    let rows = |old: bool| {
        targets
            .iter()
            .map(|t| {
                let (s, n) = (q(&t.job.source.schema), q(&t.job.source.name));
                if old {
                    format!("({s}, {n}, {})", q(&t.names.old_table))
                } else {
                    format!("({s}, {n})")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    out.push(match cfg.direction {
        Direction::Forward => format!(
            "UPDATE pgrekey.jobs j SET phase = 'cut_over', old_table = v.old, way_back = {} FROM (VALUES {}) AS v(s, t, old) WHERE j.source_schema = v.s AND j.source_table = v.t",
            cfg.way_back,
            rows(true)
        ),
        Direction::Back => format!(
            "UPDATE pgrekey.jobs j SET phase = 'streaming', old_table = NULL FROM (VALUES {}) AS v(s, t) WHERE j.source_schema = v.s AND j.source_table = v.t",
            rows(false)
        ),
    });
    out.push("COMMIT".into());
    out.push("-- after commit, outside the lock:".into());
    for v in &swap.validate {
        out.push(format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT {}",
            v.table.quoted(),
            crate::pg::quote_ident(&v.name)
        ));
    }
    for a in &swap.analyze {
        out.push(format!("ANALYZE {}", a.quoted()));
    }
    Ok(out)
}

fn pairs(targets: &[Target]) -> Vec<(QualifiedName, QualifiedName)> {
    targets
        .iter()
        .map(|t| (t.job.source.clone(), t.job.shadow.clone()))
        .collect()
}

/// The swap built before the locks, and the catalog fingerprint taken just
/// before the read it was built from (see [`swap::catalog::fingerprint`]).
struct Prepared {
    fingerprint: String,
    swap: SwapSql,
}

/// Fingerprint the catalog, then read the dependents and build the swap —
/// in that order, so that an unchanged fingerprint later proves the read
/// current. Run before the locks; it also warms the session's catalog caches
/// for the same reads under the locks.
async fn prepare(
    c: &Client,
    fingerprinter: &swap::catalog::Fingerprinter,
    targets: &[Target],
    parent: &ParentSpec,
    report: bool,
    cfg: &CutoverConfig,
) -> Result<Prepared, Error> {
    let fingerprint = fingerprinter
        .take(c, &pairs(targets))
        .await
        .map_err(Error::db("fingerprint the catalog"))?;
    let swap = read_and_build(c, targets, parent, report, cfg).await?;
    Ok(Prepared { fingerprint, swap })
}

/// Read the dependents and build every statement of the locked part of the
/// swap ([`swap_plan`]); with `report`, warn about source indexes and
/// constraints that have no counterpart on the shadow (they stay on the old
/// table).
async fn read_and_build(
    c: &Client,
    targets: &[Target],
    parent: &ParentSpec,
    report: bool,
    cfg: &CutoverConfig,
) -> Result<SwapSql, Error> {
    let mut deps = swap::catalog::load_dependents_many(c, &pairs(targets))
        .await
        .map_err(swap_err)?;
    let way = if cfg.way_back || cfg.direction == Direction::Back {
        Some(
            crate::way_back::read(c, targets.iter().map(|t| (&t.job, &t.names)), cfg.direction)
                .await?,
        )
    } else {
        None
    };
    // Statements about the definitions `--rewrite-dependents` replaces:
    // held by a cutover with a way back, put back and forgotten by a rollback.
    let mut held_steps = Vec::new();
    if cfg.rewrite_dependents && cfg.direction == Direction::Forward {
        let before = cfg.way_back.then(|| deps.clone());
        let details: Vec<&TableDetail> = targets.iter().map(|t| &t.detail).collect();
        let ctx = crate::plan::dependents::rewrite_context(&details, parent);
        let changed = crate::plan::dependents::apply_rewrites(&mut deps, &ctx);
        if report && !changed.is_empty() {
            info!(objects = ?changed, "re-created with definitions that compare in uuid terms (--rewrite-dependents)");
        }
        for (source, h) in before
            .map(|b| crate::way_back::replaced_definitions(&b, &deps))
            .unwrap_or_default()
        {
            held_steps.push(SwapStep {
                object: format!("definitions held for {source}"),
                sql: state::hold_definition_sql(&source, &h),
            });
        }
    }
    if cfg.direction == Direction::Back {
        for (d, t) in deps.iter_mut().zip(targets) {
            let held = state::held_definitions(c, &t.job.source).await?;
            if !held.is_empty() {
                crate::way_back::restore_definitions(d, &held);
                held_steps.push(SwapStep {
                    object: format!("definitions held for {}", t.job.source),
                    sql: state::release_definitions_sql(&t.job.source),
                });
            }
        }
    }
    if report {
        for (d, t) in deps.iter().zip(targets) {
            let unmatched: Vec<&String> = d
                .unmatched
                .iter()
                .filter(|u| !t.detail.foreign_keys.iter().any(|fk| &fk.name == *u))
                .collect();
            if !unmatched.is_empty() {
                warn!(table = %t.job.source, objects = %unmatched.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(", "),
                    "source indexes/constraints without a counterpart on the shadow stay on the old table");
            }
        }
    }
    let mut sql = match cfg.direction {
        Direction::Forward => swap_plan(targets, parent, &deps),
        Direction::Back => {
            let pairs: Vec<(&swap::Dependents, &SwapNames)> =
                deps.iter().zip(targets.iter().map(|t| &t.names)).collect();
            let mut sql = swap::swap_sql_many(&pairs);
            // The restored tables keep their statistics.
            sql.analyze.clear();
            sql
        }
    };
    if let Some(way) = way {
        way.extend(&mut sql);
    }
    sql.steps.extend(held_steps);
    Ok(sql)
}

/// The statements of the locked part, in order: the swap proper
/// ([`swap::swap_sql_many`]), then the new tables' foreign keys (`NOT
/// VALID`, by the names the sources' keys have, on the new tables by their
/// final names; see [`crate::ddl::foreign_keys_on`]) with the sources' comments
/// on them. Each key is validated after commit.
fn swap_plan(targets: &[Target], parent: &ParentSpec, deps: &[swap::Dependents]) -> SwapSql {
    let pairs: Vec<(&swap::Dependents, &SwapNames)> =
        deps.iter().zip(targets.iter().map(|t| &t.names)).collect();
    let mut sql = swap::swap_sql_many(&pairs);
    for (t, d) in targets.iter().zip(deps) {
        let table = &t.job.source;
        let statements = crate::ddl::foreign_keys_on(&t.detail, parent, table);
        for (fk, statement) in t.detail.foreign_keys.iter().zip(statements) {
            let object = format!("foreign key {} on {table}", fk.name);
            sql.steps.push(swap::SwapStep {
                sql: statement,
                object: object.clone(),
            });
            if let Some((_, comment)) = d.constraint_comments.iter().find(|(n, _)| *n == fk.name) {
                sql.steps.push(swap::SwapStep {
                    sql: format!(
                        "COMMENT ON CONSTRAINT {} ON {} IS {}",
                        crate::pg::quote_ident(&fk.name),
                        table.quoted(),
                        crate::pg::quote_literal(comment)
                    ),
                    object,
                });
            }
            sql.validate.push(swap::ValidateConstraint {
                table: table.clone(),
                name: fk.name.clone(),
            });
        }
    }
    sql
}

/// The sources' columns as the catalog has them now, in one query for all
/// targets, in the shape of [`ColumnSpec`] and built the way
/// [`crate::plan::catalog::load_table`] builds them (type text from `format_type` with an
/// empty `search_path`; a column is a reference when a single-column foreign
/// key ties it to the parent's key column). Returns `(oid, columns)` per
/// target, in target order; a table that is gone has no entry.
async fn current_columns<C: tokio_postgres::GenericClient + Sync>(
    c: &C,
    targets: &[Target],
    parent: &ParentSpec,
) -> Result<Vec<(usize, u32, Vec<ColumnSpec>)>, Error> {
    let schemas: Vec<&str> = targets
        .iter()
        .map(|t| t.job.source.schema.as_str())
        .collect();
    let names: Vec<&str> = targets.iter().map(|t| t.job.source.name.as_str()).collect();
    let rows = c
        .query_typed(
            CURRENT_COLUMNS_SQL,
            &[
                (&schemas, Type::TEXT_ARRAY),
                (&names, Type::TEXT_ARRAY),
                (&parent.oid, Type::OID),
                (&parent.key_column, Type::TEXT),
            ],
        )
        .await
        .map_err(Error::db("re-read the source tables' columns"))?;
    let mut out: Vec<(usize, u32, Vec<ColumnSpec>)> = Vec::new();
    for r in rows {
        let ord: i64 = r.get(0);
        let idx = usize::try_from(ord - 1).unwrap_or(usize::MAX);
        let oid: u32 = r.get(1);
        let type_oid: u32 = r.get(4);
        let is_reference: bool = r.get(9);
        let col = ColumnSpec {
            attnum: r.get(2),
            name: r.get(3),
            type_oid,
            type_sql: r.get(5),
            not_null: r.get(6),
            generated: r.get::<_, String>(7) == "s",
            identity: r.get::<_, String>(8).chars().next(),
            reference: if is_reference {
                IntKind::from_oid(type_oid)
            } else {
                None
            },
        };
        match out.last_mut() {
            Some((i, _, cols)) if *i == idx => cols.push(col),
            _ => out.push((idx, oid, vec![col])),
        }
    }
    Ok(out)
}

/// Every target's table must be the one the job planned (same OID) with the
/// same columns.
fn check_columns(targets: &[Target], now: Vec<(usize, u32, Vec<ColumnSpec>)>) -> Result<(), Error> {
    for (i, t) in targets.iter().enumerate() {
        let same = now
            .iter()
            .find(|(idx, _, _)| *idx == i)
            .is_some_and(|(_, oid, cols)| {
                *oid == t.detail.spec.oid && *cols == t.detail.spec.columns
            });
        if !same {
            return Err(columns_changed(&t.job.source));
        }
    }
    Ok(())
}

/// The columns of the named tables (`$1` schemas, `$2` names, `$3` the
/// parent's OID, `$4` its key column), ordered by target then `attnum`. Run
/// with an empty `search_path`, as [`crate::plan::catalog::load_table`] reads them
/// (`unnest` of two arrays is `FROM`-clause syntax and cannot be qualified).
const CURRENT_COLUMNS_SQL: &str = "
SELECT t.ord, c.oid, a.attnum, a.attname::text, a.atttypid,
       pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
       a.attgenerated::text, a.attidentity::text,
       EXISTS (SELECT 1
                 FROM pg_catalog.pg_constraint k
                 JOIN pg_catalog.pg_attribute pa ON pa.attrelid = k.confrelid AND pa.attnum = k.confkey[1]
                WHERE k.conrelid = c.oid AND k.contype = 'f' AND k.confrelid = $3
                  AND pg_catalog.cardinality(k.conkey) = 1 AND k.conkey[1] = a.attnum
                  AND pg_catalog.cardinality(k.confkey) = 1 AND pa.attname::text = $4)
  FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(schema_name, table_name, ord)
  JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema_name::pg_catalog.name
  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name::pg_catalog.name
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY t.ord, a.attnum";

/// Longest pause between two polls of the jobs' applied positions while the
/// locks are held (see [`crate::fence::wait_drained_every`]).
const HELD_POLL: Duration = Duration::from_millis(1);

fn swap_err(e: swap::SwapError) -> Error {
    Error::Swap(e)
}
