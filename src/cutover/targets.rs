//! The job rows and catalog details a cutover acts on, read once before
//! the attempts (and again after an attempt found the catalog changed),
//! and the checks that refuse a cutover before any lock.

use tokio_postgres::Client;

use super::CutoverConfig;
use crate::error::Error;
use crate::pg::{self, QualifiedName};
use crate::plan::catalog::{self, TableDetail};
use crate::plan::model::ParentSpec;
use crate::state::{self, JobRow};
use crate::swap::SwapNames;

/// One table of the cutover: its job, the source's catalog detail, and the
/// names the swap gives.
pub(super) struct Target {
    pub(super) job: JobRow,
    pub(super) detail: TableDetail,
    pub(super) names: SwapNames,
}

pub(super) async fn load_jobs(
    admin: &Client,
    tables: &[QualifiedName],
) -> Result<Vec<JobRow>, Error> {
    let mut jobs = Vec::with_capacity(tables.len());
    for t in tables {
        match state::get_job(admin, t).await? {
            Some(j) => jobs.push(j),
            None => {
                return Err(Error::Config(format!(
                    "{t} has no pg-rekey job; start one with `pg-rekey rewrite --table {t}` and cut over once it streams"
                )))
            }
        }
    }
    Ok(jobs)
}

pub(super) async fn load_targets(admin: &Client, jobs: Vec<JobRow>) -> Result<Vec<Target>, Error> {
    let mut targets = Vec::with_capacity(jobs.len());
    for job in jobs {
        let (parent_table, uuid_column) = job.parent.clone().ok_or_else(|| {
            Error::Precondition(format!(
                "the job of {} does not record its parent table; abort and restart it",
                job.table
            ))
        })?;
        let parent = catalog::load_parent(admin, &parent_table, &uuid_column).await?;
        let detail = catalog::load_table(admin, &job.source, &parent).await?;
        let names = SwapNames::derive(&job.source);
        targets.push(Target { job, detail, names });
    }
    // Fixed lock order.
    targets.sort_by(|a, b| a.job.source.cmp(&b.job.source));
    Ok(targets)
}

/// After an attempt found the catalog changed: read each source's detail
/// again (its own foreign keys, created on the new table at the swap, may
/// have changed), keeping the check that its columns did not.
pub(super) async fn refresh_details(
    admin: &Client,
    targets: &mut [Target],
    parent: &ParentSpec,
) -> Result<(), Error> {
    for t in targets.iter_mut() {
        let fresh = catalog::load_table(admin, &t.job.source, parent).await?;
        if fresh.spec.oid != t.detail.spec.oid || fresh.spec.columns != t.detail.spec.columns {
            return Err(columns_changed(&t.job.source));
        }
        t.detail = fresh;
    }
    Ok(())
}

pub(super) fn columns_changed(table: &QualifiedName) -> Error {
    Error::Data(format!(
        "the columns of {table} changed since the job was planned; abort the job and start again"
    ))
}

pub(super) async fn load_parent_of(
    admin: &Client,
    targets: &[Target],
) -> Result<ParentSpec, Error> {
    let first = targets
        .first()
        .ok_or_else(|| Error::Config("no tables".into()))?;
    let (table, uuid) = first
        .job
        .parent
        .clone()
        .ok_or_else(|| Error::Precondition("job without a parent".into()))?;
    if targets
        .iter()
        .any(|t| t.job.parent.as_ref().map(|p| &p.0) != Some(&table))
    {
        return Err(Error::Config(
            "the named tables reference different parent tables; cut them over separately".into(),
        ));
    }
    Ok(catalog::load_parent(admin, &table, &uuid).await?)
}

pub(super) async fn confirm_swapped_in_catalog(admin: &Client, job: &JobRow) -> Result<(), Error> {
    let row = admin
        .query_opt("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2", &[
            &job.source.schema,
            &job.source.name,
        ])
        .await
        .map_err(Error::db("read the catalog"))?;
    match row {
        Some(r) if r.get::<_, u32>(0) != job.source_oid => Ok(()),
        Some(_) => Err(Error::Precondition(format!(
            "{} is recorded as cut over but still holds the original table; inspect it before doing anything else",
            job.table
        ))),
        None => Err(Error::Precondition(format!("{} is recorded as cut over but no table has its name", job.table))),
    }
}

/// Refuse up front — before verify, before any lock — what the swap would
/// fail at or would change without being asked: the same per-object trial
/// `plan` runs ([`crate::plan::dependents::check`]), on a separate session
/// in a transaction that is rolled back. Any dependent that blocks is
/// refused with its reason and fix; views and policies that need the
/// behaviour-keeping rewrite are refused unless `--rewrite-dependents`.
/// The trial runs on this cutover's tables, so a cutover never meets a
/// breaker that this check (and `plan`) did not name.
pub(super) async fn dependents_gate(
    cfg: &CutoverConfig,
    targets: &[Target],
    parent: &ParentSpec,
) -> Result<(), Error> {
    use crate::plan::dependents::{self, Verdict};
    let mut c = pg::connect(&cfg.spec, "cutover-dependents").await?;
    let details: Vec<&TableDetail> = targets.iter().map(|t| &t.detail).collect();
    let found = dependents::check(&mut c, &details, parent).await?;
    let blocking: Vec<String> = found
        .iter()
        .filter(|d| matches!(d.verdict, Verdict::Blocks { .. }))
        .map(|d| format!("{} {d}", d.kind))
        .collect();
    if !blocking.is_empty() {
        return Err(Error::Blocked(format!(
            "nothing was swapped: {} object(s) depending on the reference columns would break the swap — {}; `pg-rekey plan` lists them with the same fixes",
            blocking.len(),
            blocking.join(" | ")
        )));
    }
    let rewrites: Vec<String> = found
        .iter()
        .filter(|d| dependents::needs_rewrite(d))
        .map(|d| format!("{} {d}", d.kind))
        .collect();
    if !rewrites.is_empty() && !cfg.rewrite_dependents {
        return Err(Error::Blocked(format!(
            "nothing was swapped: {} view(s)/policy(ies) compare a reference column with an integer and would fail on uuid — {}; run cutover with --rewrite-dependents to re-create them with these definitions (same rows after the swap), or change them yourself first",
            rewrites.len(),
            rewrites.join(" | ")
        )));
    }
    Ok(())
}

/// The checks before a rollback. `Some(tables)` when there is nothing to do
/// (every table streams forward again after an earlier rollback); an error
/// names what stands in the way.
pub(super) async fn check_rollback(
    admin: &Client,
    jobs: &[JobRow],
) -> Result<Option<Vec<(String, String)>>, Error> {
    use crate::state::Phase;
    if jobs
        .iter()
        .all(|j| j.way_back && j.phase() == Some(Phase::Streaming) && j.old_table.is_none())
    {
        let mut done = Vec::new();
        for j in jobs {
            let oid = relation_oid(admin, &j.source).await?;
            if oid != Some(j.source_oid) {
                return Err(Error::Precondition(format!(
                    "{} is recorded as rolled back but does not hold the original table; inspect it before doing anything else",
                    j.table
                )));
            }
            done.push((j.table.clone(), j.shadow_table.clone()));
        }
        return Ok(Some(done));
    }
    for j in jobs {
        match j.phase() {
            Some(Phase::CutOver) if j.way_back => {}
            Some(Phase::CutOver) => {
                return Err(Error::Precondition(format!(
                    "{} was cut over without --way-back: its old table received no writes since, so there is no way back but a restore; `pg-rekey finish --table {}` ends the job",
                    j.table, j.table
                )))
            }
            _ => {
                return Err(Error::Precondition(format!(
                    "{} is {}, not cut over: there is nothing to roll back{}",
                    j.table,
                    j.phase,
                    j.error
                        .as_ref()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                )))
            }
        }
    }
    Ok(None)
}

async fn relation_oid(admin: &Client, table: &QualifiedName) -> Result<Option<u32>, Error> {
    let row = admin
        .query_one("SELECT pg_catalog.to_regclass($1)::oid", &[&table.quoted()])
        .await
        .map_err(Error::db("read the catalog"))?;
    Ok(row.get(0))
}

/// The targets of a rollback: each table's new (uuid) table leaves the name
/// for its shadow name and the old table takes it back. In the returned
/// rows `source_oid` is the new table's OID and `shadow` the old table.
pub(super) async fn load_back_targets(
    admin: &Client,
    jobs: Vec<JobRow>,
) -> Result<Vec<Target>, Error> {
    let mut targets = Vec::with_capacity(jobs.len());
    for mut job in jobs {
        let (parent_table, uuid_column) = job.parent.clone().ok_or_else(|| {
            Error::Precondition(format!(
                "the job of {} does not record its parent table",
                job.table
            ))
        })?;
        let old = QualifiedName::new(
            job.source.schema.clone(),
            SwapNames::derive(&job.source).old_table,
        );
        if relation_oid(admin, &old).await? != Some(job.source_oid) {
            return Err(Error::Precondition(format!(
                "{}'s old table {old} is gone or is not the original table; there is nothing to roll back to",
                job.table
            )));
        }
        let live = relation_oid(admin, &job.source)
            .await?
            .ok_or_else(|| Error::Precondition(format!("no table is named {}", job.table)))?;
        let parent = catalog::load_parent(admin, &parent_table, &uuid_column).await?;
        let detail = catalog::load_table(admin, &job.source, &parent).await?;
        job.source_oid = live;
        job.shadow = old;
        let names = SwapNames::back(&job.source);
        targets.push(Target { job, detail, names });
    }
    targets.sort_by(|a, b| a.job.source.cmp(&b.job.source));
    Ok(targets)
}
