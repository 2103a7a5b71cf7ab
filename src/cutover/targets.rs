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
