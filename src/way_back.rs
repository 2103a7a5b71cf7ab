//! The way back after cutover: the old tables kept current from the new
//! ones, `rollback` to them without losing a write, `finish` to end it.
//!
//! # What a cutover with a way back (`cutover --way-back`) adds to the swap
//!
//! In the swap's one transaction, after the renames (so by the final names):
//!
//! 1. The job's own publication **drops the old table and adds the new
//!    one**. The stream (the same slot, the same process) then carries the
//!    new table's changes from the swap's commit on, and none of the old
//!    table's.
//! 2. The old table's **foreign keys to tables outside the swap** (the
//!    parent's integer key above all) are dropped and their definitions
//!    recorded in `pgrekey.held_constraints`, in the same transaction. While
//!    they existed, the application's writes to those tables would be
//!    checked against the old table (a `RESTRICT` on a user that the old
//!    table still references because the way back lags), or cascade into it
//!    (a row the way back then finds gone). Foreign keys between two old
//!    tables stay: only the way back writes old tables, with
//!    `session_replication_role = replica`, which fires no foreign-key
//!    trigger.
//! 3. The job rows record `cut_over` with `way_back`, so the `rewrite`
//!    process keeps streaming instead of dropping its slot.
//! 4. With `--rewrite-dependents`, the views and policies it re-creates in
//!    uuid terms have their **definitions from before recorded** in
//!    `pgrekey.held_definitions` ([`replaced_definitions`]), by the job's
//!    source table, in the same transaction.
//!
//! # Why nothing falls between the swap and the way back
//!
//! pgoutput decides whether a change is published from the catalog as of
//! that change's position in the WAL (it decodes with a historic snapshot,
//! and the swap's commit invalidates its cache of each table's
//! publications). The swap holds `ACCESS EXCLUSIVE` on both tables until it
//! commits, so every write to the new table commits after the swap and is
//! decoded with the catalog in which the new table is a member: published.
//! Every write to the old table by the application committed before the
//! swap (a statement waiting on the lock resolves the name again and reaches
//! the new table), and the forward stream had applied all of them before
//! the swap could commit (the fence drained under the locks). After the
//! commit the old table is no member, so the way back's own writes to it are
//! not streamed back. Changes of both directions come through one slot in
//! commit order, so a transaction is applied in one direction or the other,
//! never both and never neither, and `applied_lsn` keeps meaning "every
//! commit before this is applied" across the switch. The parent stays a
//! member throughout: its changes keep the id map current for both
//! directions.
//!
//! # Rollback
//!
//! The same quiesced swap in the other direction ([`crate::cutover`] with
//! [`crate::cutover::Direction::Back`]): lock the new tables (and what hangs
//! off them), write a fence, wait until the way back applied past it (so each
//! old table equals its new one translated back), then rename the new table
//! to its shadow name (`_rekey_new_<t>`, its indexes and constraints to
//! `_rekey_new_<name>`) and the old one to `t`, carry every dependent object
//! back — the views and policies `--rewrite-dependents` replaced with the
//! definitions held for them ([`restore_definitions`]; the integer columns
//! would refuse the uuid terms, so without them the rollback could only fail
//! and roll back), the held rows deleted —, re-create the held foreign keys
//! (`NOT VALID`, validated after commit), drop the new table's own foreign keys (the next cutover creates
//! them again from the plan, as the first did), switch the publication
//! membership back and record `streaming` — one transaction. The argument
//! that no write is lost is the cutover's, with the directions exchanged;
//! the forward stream then keeps the uuid table current again, and a later
//! `cutover` needs no copy.

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::error::Error;
use crate::pg::{quote_ident, quote_literal, QualifiedName};
use crate::state::{self, HeldConstraint, HeldDefinition, HeldKind, JobRow};
use crate::swap::{Dependents, SwapNames, SwapSql, SwapStep, ValidateConstraint};

/// Which way a swap goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// The shadows take the tables' names (`cutover`).
    #[default]
    Forward,
    /// The old tables take their names back and the uuid tables become the
    /// shadows again (`rollback`, after a cutover with a way back).
    Back,
}

/// The fence token a swap with a way back (and a rollback) writes in its
/// own transaction: the process serving the job registers the new tables'
/// way back when it sees it, before any later transaction is applied.
pub const SWAP_TOKEN: &str = "swap";

/// A foreign key of a table leaving its name in a swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Constraint name.
    pub name: String,
    /// `pg_get_constraintdef` text (schema-qualified: read with an empty
    /// `search_path`).
    pub definition: String,
    /// Its comment.
    pub comment: Option<String>,
}

/// What one table's swap adds for the way back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableWay {
    /// The table's name (the new table after a cutover, the restored one
    /// after a rollback).
    pub table: QualifiedName,
    /// Where the table leaving the name goes.
    pub leaving: QualifiedName,
    /// The job's publication.
    pub publication: String,
    /// Forward: the foreign keys to hold; back: the foreign keys to drop.
    pub outgoing: Vec<Outgoing>,
    /// Back: the held foreign keys to re-create on `table`.
    pub held: Vec<HeldConstraint>,
    /// The leaving table's triggers: dropped, because a trigger enabled
    /// `ALWAYS` or `REPLICA` would fire on the job's own writes to it (the
    /// swap re-creates every trigger on the table taking the name).
    pub triggers: Vec<String>,
    /// The leaving table's policies, and whether it has row-level security:
    /// dropped and disabled, so that they do not filter the job's writes.
    pub policies: Vec<String>,
    /// `relrowsecurity` of the leaving table.
    pub rls: bool,
    /// Extended statistics of the table taking the name, as they are before
    /// the swap: a swap that moved it aside before renamed them out of the
    /// way, and this swap creates the other table's definitions under the
    /// original names, so these go.
    pub stale_statistics: Vec<QualifiedName>,
}

/// The way back's part of one swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WayBack {
    /// Which way the swap goes.
    pub direction: Direction,
    /// Per table, in the swap's order.
    pub tables: Vec<TableWay>,
}

/// Read what the way back adds to a swap of these tables (`job.source_oid`
/// is the relation leaving the name; `names` where it goes). Run on the
/// session that builds the swap, with `search_path = ''`.
pub async fn read<'a>(
    c: &Client,
    targets: impl Iterator<Item = (&'a JobRow, &'a SwapNames)>,
    direction: Direction,
) -> Result<WayBack, Error> {
    let targets: Vec<(&JobRow, &SwapNames)> = targets.collect();
    let oids: Vec<u32> = targets.iter().map(|(j, _)| j.source_oid).collect();
    let rows = c
        .query_typed(
            "SELECT con.conrelid, con.conname::text, pg_catalog.pg_get_constraintdef(con.oid),
                    pg_catalog.obj_description(con.oid, 'pg_constraint')
               FROM pg_catalog.pg_constraint con
              WHERE con.contype = 'f' AND con.conrelid = ANY ($1)
                AND ($2 OR NOT con.confrelid = ANY ($1))
              ORDER BY 1, 2",
            &[
                (&oids, Type::OID_ARRAY),
                (&(direction == Direction::Back), Type::BOOL),
            ],
        )
        .await
        .map_err(Error::db("read the foreign keys the way back holds aside"))?;
    let hanging = c
        .query_typed(
            "SELECT t.tgrelid, 't', t.tgname::text FROM pg_catalog.pg_trigger t
              WHERE t.tgrelid = ANY ($1) AND NOT t.tgisinternal
             UNION ALL
             SELECT p.polrelid, 'p', p.polname::text FROM pg_catalog.pg_policy p WHERE p.polrelid = ANY ($1)
             UNION ALL
             SELECT c.oid, 'r', '' FROM pg_catalog.pg_class c WHERE c.oid = ANY ($1) AND c.relrowsecurity
             ORDER BY 1, 2, 3",
            &[(&oids, Type::OID_ARRAY)],
        )
        .await
        .map_err(Error::db("read the triggers and policies of the tables leaving their names"))?;
    let taking: Vec<String> = targets.iter().map(|(j, _)| j.shadow.quoted()).collect();
    let stats = c
        .query_typed(
            "SELECT t.x, n.nspname::text, s.stxname::text
               FROM unnest($1::text[]) AS t(x)
               JOIN pg_catalog.pg_statistic_ext s ON s.stxrelid = pg_catalog.to_regclass(t.x)
               JOIN pg_catalog.pg_namespace n ON n.oid = s.stxnamespace
              ORDER BY 1, 2, 3",
            &[(&taking, Type::TEXT_ARRAY)],
        )
        .await
        .map_err(Error::db(
            "read the statistics of the tables taking the names",
        ))?;
    let mut tables = Vec::with_capacity(targets.len());
    for (job, names) in targets {
        let shadow = job.shadow.quoted();
        let stale_statistics = stats
            .iter()
            .filter(|r| r.get::<_, String>(0) == shadow)
            .map(|r| QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)))
            .collect();
        let of = |kind: &str| -> Vec<String> {
            hanging
                .iter()
                .filter(|r| r.get::<_, u32>(0) == job.source_oid && r.get::<_, &str>(1) == kind)
                .map(|r| r.get::<_, String>(2))
                .collect()
        };
        let publication = job.publication_name.clone().ok_or_else(|| {
            Error::Precondition(format!(
                "the job of {} records no publication; a way back needs the job's stream",
                job.table
            ))
        })?;
        let outgoing = rows
            .iter()
            .filter(|r| r.get::<_, u32>(0) == job.source_oid)
            .map(|r| Outgoing {
                name: r.get(1),
                definition: r.get(2),
                comment: r.get(3),
            })
            .collect();
        let held = match direction {
            Direction::Forward => Vec::new(),
            Direction::Back => state::held_constraints(c, &job.shadow).await?,
        };
        tables.push(TableWay {
            table: job.source.clone(),
            leaving: QualifiedName::new(job.source.schema.clone(), names.old_table.clone()),
            publication,
            outgoing,
            held,
            triggers: of("t"),
            policies: of("p"),
            rls: !of("r").is_empty(),
            stale_statistics,
        });
    }
    Ok(WayBack { direction, tables })
}

impl WayBack {
    /// Append the statements (after the swap's own, so by the final names)
    /// and the constraints to validate after commit.
    pub fn extend(&self, sql: &mut SwapSql) {
        let mut steps = Vec::new();
        let mut step = |object: String, sql_text: String| {
            steps.push(SwapStep {
                sql: sql_text,
                object,
            })
        };
        for t in &self.tables {
            let object = format!("triggers and policies of {}", t.leaving);
            for tr in &t.triggers {
                step(
                    object.clone(),
                    format!("DROP TRIGGER {} ON {}", quote_ident(tr), t.leaving.quoted()),
                );
            }
            for p in &t.policies {
                step(
                    object.clone(),
                    format!("DROP POLICY {} ON {}", quote_ident(p), t.leaving.quoted()),
                );
            }
            if t.rls {
                step(
                    object.clone(),
                    format!(
                        "ALTER TABLE {} DISABLE ROW LEVEL SECURITY, NO FORCE ROW LEVEL SECURITY",
                        t.leaving.quoted()
                    ),
                );
            }
            for st in &t.stale_statistics {
                step(
                    format!("statistics {st}"),
                    format!("DROP STATISTICS {}", st.quoted()),
                );
            }
            let object = format!("foreign keys of {}", t.leaving);
            for fk in &t.outgoing {
                step(
                    object.clone(),
                    format!(
                        "ALTER TABLE {} DROP CONSTRAINT {}",
                        t.leaving.quoted(),
                        quote_ident(&fk.name)
                    ),
                );
                if self.direction == Direction::Forward {
                    step(
                        object.clone(),
                        state::hold_constraint_sql(&HeldConstraint {
                            table: t.leaving.clone(),
                            name: fk.name.clone(),
                            definition: fk.definition.clone(),
                            comment: fk.comment.clone(),
                        }),
                    );
                }
            }
            for h in &t.held {
                let object = format!("foreign key {} on {}", h.name, t.table);
                step(
                    object.clone(),
                    format!(
                        "ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID",
                        t.table.quoted(),
                        quote_ident(&h.name),
                        h.definition
                    ),
                );
                if let Some(c) = &h.comment {
                    step(
                        object,
                        format!(
                            "COMMENT ON CONSTRAINT {} ON {} IS {}",
                            quote_ident(&h.name),
                            t.table.quoted(),
                            quote_literal(c)
                        ),
                    );
                }
            }
            let publication = format!("publication {}", t.publication);
            step(
                publication.clone(),
                format!(
                    "ALTER PUBLICATION {} DROP TABLE {}",
                    quote_ident(&t.publication),
                    t.leaving.quoted()
                ),
            );
            step(
                publication,
                format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    quote_ident(&t.publication),
                    t.table.quoted()
                ),
            );
        }
        step(
            "the stream".into(),
            format!(
                "SELECT pg_catalog.pg_logical_emit_message(true, {}, {})",
                quote_literal(crate::apply::FENCE_PREFIX),
                quote_literal(SWAP_TOKEN)
            ),
        );
        for t in &self.tables {
            // Held under the old table's name while it was out of the way.
            if let Some(first) = t.held.first() {
                step(
                    format!("held foreign keys of {}", t.table),
                    state::release_constraints_sql(&first.table),
                );
            }
        }
        sql.steps.extend(steps);
        for t in &self.tables {
            for h in &t.held {
                sql.validate.push(ValidateConstraint {
                    table: t.table.clone(),
                    name: h.name.clone(),
                });
            }
        }
    }
}

/// Options of [`finish`].
#[derive(Debug, Clone)]
pub struct FinishOptions {
    /// Finish even when the last comparison finds differences (or cannot run).
    pub force: bool,
    /// Keep the old tables (detached: no job follows them any more).
    pub keep_old: bool,
    /// Lock budget of the step that drops the old tables.
    pub lock_timeout: std::time::Duration,
    /// Attempts of that step.
    pub attempts: u32,
    /// How long to wait for the way back to apply what it has.
    pub drain_timeout: std::time::Duration,
}

impl Default for FinishOptions {
    fn default() -> Self {
        FinishOptions {
            force: false,
            keep_old: false,
            lock_timeout: crate::quiesce::DEFAULT_LOCK_TIMEOUT,
            attempts: 10,
            drain_timeout: std::time::Duration::from_secs(60),
        }
    }
}

/// What [`finish`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FinishReport {
    /// The tables finished.
    pub tables: Vec<String>,
    /// The old tables dropped (or kept, with `keep_old`).
    pub old_tables: Vec<String>,
    /// Whether the old tables were kept.
    pub kept_old: bool,
    /// The last comparison: `Some(true)` equal, `Some(false)` differences
    /// (only with `force`), `None` not run (no way back: the old tables
    /// stopped at the swap).
    pub verified: Option<bool>,
    /// What the comparison said when it did not say "equal".
    pub verify_detail: Option<String>,
    /// Warnings (each step is reported, none is silent).
    pub warnings: Vec<String>,
}

/// `pg-rekey finish`: end the journey of cut-over tables.
///
/// Order, and why a finish cut off anywhere can be run again:
/// 1. compare old and new at one point of the stream (`verify`); refuse on a
///    difference unless `force` — nothing changed yet;
/// 2. take the new tables out of the job's publication, then write a fence
///    and wait until the way back applied past it: every change of the new
///    tables before that commit is in the old ones, none after is streamed;
/// 3. in one transaction (short `lock_timeout`, retried): drop the old tables
///    (unless `keep_old`), forget their held foreign keys, delete the job
///    rows;
/// 4. the slot, publication and durable map go (the `rewrite` process sees
///    its rows gone and drops them itself; `finish` drops what is left).
///
/// Up to step 3 the job rows still say `cut_over`, so a second `finish`
/// starts again from step 1 (step 2 is idempotent). After step 3 nothing of
/// the job is left but, at worst, a slot or publication, which step 4 of the
/// second run does not find — `status` and `abort` list leftovers.
pub async fn finish(
    spec: &crate::pg::ConnSpec,
    tables: &[QualifiedName],
    opts: &FinishOptions,
) -> Result<FinishReport, Error> {
    use crate::state::Phase;
    let admin = crate::pg::connect(spec, "finish").await?;
    let jobs = state::list_jobs(&admin).await?;
    let mut mine: Vec<&JobRow> = Vec::new();
    for t in tables {
        let Some(j) = jobs.iter().find(|j| j.source == *t) else {
            return Err(Error::Config(format!(
                "{t} has no pg-rekey job; if its old table {} is still there, drop it by hand once you are sure",
                QualifiedName::new(t.schema.clone(), SwapNames::derive(t).old_table)
            )));
        };
        if j.phase() != Some(Phase::CutOver) {
            return Err(Error::Precondition(format!(
                "{t} is {}, not cut over: `finish` ends a journey after `cutover`; before it, `pg-rekey abort --table {t}` removes the job",
                j.phase
            )));
        }
        mine.push(j);
    }
    let mut job_ids: Vec<uuid::Uuid> = mine.iter().map(|j| j.job_id).collect();
    job_ids.sort();
    job_ids.dedup();
    let members: Vec<&JobRow> = jobs
        .iter()
        .filter(|j| job_ids.contains(&j.job_id))
        .collect();
    if let Some(other) = members.iter().find(|m| !tables.contains(&m.source)) {
        let all: Vec<String> = members
            .iter()
            .map(|m| format!("--table {}", m.table))
            .collect();
        return Err(Error::Config(format!(
            "{} shares its job (one slot, one stream) with {}; finish them together: pg-rekey finish {}",
            mine[0].table,
            other.table,
            all.join(" ")
        )));
    }
    let way_back = mine.iter().any(|j| j.way_back);
    let mut report = FinishReport {
        tables: mine.iter().map(|j| j.table.clone()).collect(),
        kept_old: opts.keep_old,
        ..Default::default()
    };

    // 1. The last comparison (only the way back keeps the old tables current).
    if way_back {
        let verify_opts = crate::verify::RunOptions {
            catch_up_timeout: opts.drain_timeout,
            ..Default::default()
        };
        match crate::verify::run(spec, tables, &verify_opts).await {
            Ok(v) if v.equal => report.verified = Some(true),
            Ok(v) => {
                if !opts.force {
                    return Err(Error::Data(format!(
                        "the old and new tables differ; nothing was changed (the way back keeps running). Inspect the differences, or finish anyway with --force:\n{v}"
                    )));
                }
                report.verified = Some(false);
                report.verify_detail = Some(v.to_string());
            }
            Err(e) => {
                if !opts.force {
                    return Err(Error::Precondition(format!(
                        "the last comparison of old and new could not run: {}; nothing was changed. Make sure the rewrite process serving the way back runs, or finish anyway with --force",
                        crate::error::chain(&e)
                    )));
                }
                report.verified = Some(false);
                report.verify_detail = Some(crate::error::chain(&e));
            }
        }
    }

    // 2. Out of the publication, then everything before applied.
    if way_back {
        for j in &mine {
            let Some(p) = &j.publication_name else {
                continue;
            };
            let member: bool = admin
                .query_one(
                    "SELECT EXISTS (SELECT FROM pg_catalog.pg_publication_tables
                      WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)",
                    &[p, &j.source.schema, &j.source.name],
                )
                .await
                .map_err(Error::db("read the publication"))?
                .get(0);
            if member {
                admin
                    .batch_execute(&format!(
                        "ALTER PUBLICATION {} DROP TABLE {}",
                        quote_ident(p),
                        j.source.quoted()
                    ))
                    .await
                    .map_err(Error::db(format!(
                        "take {} out of the job's publication",
                        j.table
                    )))?;
            }
        }
        let f = crate::fence::emit(&admin, "finish").await?;
        let deadline = std::time::Instant::now() + opts.drain_timeout;
        if !crate::fence::wait_drained(&admin, &job_ids, f, deadline).await? && !opts.force {
            return Err(Error::Precondition(format!(
                "the way back did not apply its last changes within {:?}; the new tables are out of the job's publication, nothing else changed. Make sure its rewrite process runs, then run finish again (or --force)",
                opts.drain_timeout
            )));
        }
    }

    // 3. Old tables, held keys and job rows, in one transaction.
    let olds: Vec<QualifiedName> = mine
        .iter()
        .map(|j| {
            QualifiedName::new(
                j.source.schema.clone(),
                SwapNames::derive(&j.source).old_table,
            )
        })
        .collect();
    report.old_tables = olds.iter().map(|o| o.to_string()).collect();
    let mut sql = format!(
        "BEGIN; SET LOCAL lock_timeout = '{}ms';",
        opts.lock_timeout.as_millis().max(1)
    );
    if !opts.keep_old {
        sql.push_str(&format!(
            " DROP TABLE IF EXISTS {};",
            olds.iter()
                .map(|o| o.quoted())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for (j, old) in mine.iter().zip(&olds) {
        sql.push_str(&format!(" {};", state::release_constraints_sql(old)));
        sql.push_str(&format!(" {};", state::release_definitions_sql(&j.source)));
        sql.push_str(&format!(
            " DELETE FROM pgrekey.jobs WHERE source_schema = {} AND source_table = {};",
            quote_literal(&j.source.schema),
            quote_literal(&j.source.name)
        ));
    }
    sql.push_str(" COMMIT");
    let mut attempt = 0;
    loop {
        attempt += 1;
        match admin.batch_execute(&sql).await {
            Ok(()) => break,
            Err(e) => {
                let _ = admin.batch_execute("ROLLBACK").await;
                let busy = e.code().map(|c| c.code()) == Some(crate::quiesce::LOCK_NOT_AVAILABLE);
                if !busy || attempt >= opts.attempts.max(1) {
                    return Err(Error::db("drop the old tables and end the job")(e));
                }
                tracing::warn!(attempt, "an old table is busy; retrying");
                tokio::time::sleep(crate::quiesce::backoff(
                    std::time::Duration::from_millis(100),
                    attempt,
                ))
                .await;
            }
        }
    }

    crate::failpoint::hit("finish.after_commit");
    // 4. Slot, publication, durable map. Cut off before this (and with the
    //    serving process gone, which drops them itself when it sees its
    //    rows gone), they are left with no job row: `status` lists them as
    //    leftovers and `status --prune` drops them ([`crate::guide::leftovers`]).
    let slots: Vec<(String, Option<String>, uuid::Uuid)> = mine
        .iter()
        .filter_map(|j| Some((j.slot_name.clone()?, j.publication_name.clone(), j.job_id)))
        .collect();
    for (slot, publication, job_id) in slots {
        // The rewrite process sees its rows gone within a second and drops
        // the slot itself; give it that time before taking the slot away.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            let active: Option<bool> = admin
                .query_opt(
                    "SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .map_err(Error::db("read pg_replication_slots"))?
                .map(|r| r.get(0));
            if active != Some(true) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        crate::abort::drop_slot(&admin, &slot).await;
        if let Some(p) = publication {
            crate::abort::drop_publication(&admin, &p).await;
        }
        crate::resume::drop_map_table(&admin, job_id).await;
    }
    Ok(report)
}

/// The views and policies `cutover --rewrite-dependents` re-creates in uuid
/// terms, with the definitions they have now, by the job's source table:
/// `before` and `after` are the same dependents before and after the
/// rewrite. A cutover with a way back holds them
/// ([`state::hold_definition_sql`], in its swap's transaction), because a
/// rollback carries the new tables' dependents back to the integer columns,
/// which refuse the uuid terms.
pub fn replaced_definitions(
    before: &[Dependents],
    after: &[Dependents],
) -> Vec<(QualifiedName, HeldDefinition)> {
    let mut held = Vec::new();
    for (b, a) in before.iter().zip(after) {
        for (vb, va) in b.views.iter().zip(&a.views) {
            if vb.definition != va.definition {
                held.push((
                    b.source.clone(),
                    HeldDefinition {
                        kind: HeldKind::View,
                        name: vb.name.quoted(),
                        definition: Some(vb.definition.clone()),
                        check: None,
                    },
                ));
            }
        }
        for (pb, pa) in b.policies.iter().zip(&a.policies) {
            if pb.using != pa.using || pb.check != pa.check {
                held.push((
                    b.source.clone(),
                    HeldDefinition {
                        kind: HeldKind::Policy,
                        name: pb.name.clone(),
                        definition: pb.using.clone(),
                        check: pb.check.clone(),
                    },
                ));
            }
        }
    }
    held
}

/// Give the dependents a rollback carries back (read from a new table) the
/// definitions held for its job: each view and policy by its name; the
/// ones not held keep what they have.
pub fn restore_definitions(d: &mut Dependents, held: &[HeldDefinition]) {
    for h in held {
        match h.kind {
            HeldKind::View => {
                if let (Some(v), Some(def)) = (
                    d.views.iter_mut().find(|v| v.name.quoted() == h.name),
                    &h.definition,
                ) {
                    v.definition = def.clone();
                }
            }
            HeldKind::Policy => {
                if let Some(p) = d.policies.iter_mut().find(|p| p.name == h.name) {
                    p.using = h.definition.clone();
                    p.check = h.check.clone();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewritten_definitions_are_held_and_put_back_by_name() {
        use crate::swap::sql::tests::{base, view};
        use crate::swap::Policy;
        let policy = |using: &str| Policy {
            name: "own".into(),
            permissive: true,
            command: '*',
            roles: vec![],
            using: Some(using.into()),
            check: None,
            comment: None,
        };
        let mut before = base("docs");
        before.views = vec![view(1, "first_docs", &[]), view(2, "all_docs", &[])];
        before.views[0].definition = "SELECT id FROM docs WHERE owner_id = 1".into();
        before.policies = vec![policy("owner_id = 7")];
        let mut after = before.clone();
        after.views[0].definition =
            "SELECT id FROM docs WHERE owner_id = (SELECT uuid_id FROM users WHERE id = 1)".into();
        after.policies[0].using =
            Some("owner_id = (SELECT uuid_id FROM users WHERE id = 7)".into());

        let held = replaced_definitions(&[before.clone()], &[after.clone()]);
        // Only what the rewrite changed, as it was, by the job's source.
        assert_eq!(held.len(), 2, "{held:?}");
        assert!(held.iter().all(|(t, _)| *t == before.source));
        assert_eq!(held[0].1.kind, HeldKind::View);
        assert_eq!(held[0].1.name, "\"public\".\"first_docs\"");
        assert_eq!(held[1].1.kind, HeldKind::Policy);
        assert_eq!(held[1].1.definition.as_deref(), Some("owner_id = 7"));
        assert_eq!(
            replaced_definitions(&[before.clone()], &[before.clone()]),
            vec![]
        );

        // A rollback reads the new table's dependents (uuid terms) and
        // carries back the held ones.
        let held: Vec<HeldDefinition> = held.into_iter().map(|(_, h)| h).collect();
        let mut back = after.clone();
        restore_definitions(&mut back, &held);
        assert_eq!(back.views, before.views);
        assert_eq!(back.policies, before.policies);
        // Nothing held: nothing changes.
        let mut same = after.clone();
        restore_definitions(&mut same, &[]);
        assert_eq!(same, after);
    }

    fn table(direction: Direction) -> WayBack {
        let t = QualifiedName::new("public", "docs");
        WayBack {
            direction,
            tables: vec![TableWay {
                table: t.clone(),
                leaving: QualifiedName::new(
                    "public",
                    match direction {
                        Direction::Forward => "_rekey_old_docs",
                        Direction::Back => "_rekey_new_docs",
                    },
                ),
                publication: "pg_rekey_1".into(),
                outgoing: vec![Outgoing {
                    name: "docs_owner_id_fkey".into(),
                    definition: "FOREIGN KEY (owner_id) REFERENCES public.users(id)".into(),
                    comment: None,
                }],
                held: match direction {
                    Direction::Forward => vec![],
                    Direction::Back => vec![HeldConstraint {
                        table: QualifiedName::new("public", "_rekey_old_docs"),
                        name: "docs_owner_id_fkey".into(),
                        definition: "FOREIGN KEY (owner_id) REFERENCES public.users(id)".into(),
                        comment: Some("owner".into()),
                    }],
                },
                triggers: vec!["audit".into()],
                policies: vec![],
                rls: false,
                stale_statistics: vec![],
            }],
        }
    }

    #[test]
    fn a_cutover_holds_the_old_tables_keys_and_switches_the_publication() {
        let mut sql = SwapSql::default();
        table(Direction::Forward).extend(&mut sql);
        let s = sql.sql();
        let pos = |needle: &str| {
            s.iter()
                .position(|x| x.contains(needle))
                .unwrap_or_else(|| panic!("{needle} in {s:#?}"))
        };
        assert!(
            pos("DROP TRIGGER \"audit\" ON \"public\".\"_rekey_old_docs\"")
                < pos("DROP CONSTRAINT")
        );
        assert!(
            pos("DROP CONSTRAINT \"docs_owner_id_fkey\"")
                < pos("INSERT INTO pgrekey.held_constraints")
        );
        assert!(
            pos("DROP TABLE \"public\".\"_rekey_old_docs\"") < pos("ADD TABLE \"public\".\"docs\"")
        );
        // The swap's own fence comes last but for nothing: after the switch.
        assert!(pos("ADD TABLE") < pos("pg_logical_emit_message"));
        assert!(sql.validate.is_empty());
        assert!(!s.iter().any(|x| x.contains("ADD CONSTRAINT")));
    }

    #[test]
    fn a_rollback_restores_the_held_keys_not_valid_and_validates_them_after() {
        let mut sql = SwapSql::default();
        table(Direction::Back).extend(&mut sql);
        let s = sql.sql();
        assert!(s.contains(
            &"ALTER TABLE \"public\".\"docs\" ADD CONSTRAINT \"docs_owner_id_fkey\" FOREIGN KEY (owner_id) REFERENCES public.users(id) NOT VALID".to_string()
        ));
        assert!(s.iter().any(|x| x.starts_with(
            "COMMENT ON CONSTRAINT \"docs_owner_id_fkey\" ON \"public\".\"docs\" IS 'owner'"
        )));
        // The uuid table's own key goes (the next cutover makes it again) and is not held.
        assert!(s.contains(
            &"ALTER TABLE \"public\".\"_rekey_new_docs\" DROP CONSTRAINT \"docs_owner_id_fkey\""
                .to_string()
        ));
        assert!(!s
            .iter()
            .any(|x| x.starts_with("INSERT INTO pgrekey.held_constraints")));
        assert!(s.iter().any(|x| x.starts_with("DELETE FROM pgrekey.held_constraints WHERE table_schema = 'public' AND table_name = '_rekey_old_docs'")));
        assert_eq!(
            sql.validate,
            vec![ValidateConstraint {
                table: QualifiedName::new("public", "docs"),
                name: "docs_owner_id_fkey".into()
            }]
        );
    }
}
