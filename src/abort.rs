//! `abort`: stop a job and remove everything it created; the source tables
//! are never touched.
//!
//! The process that owns a job watches its rows. `abort` marks them
//! `aborted` and gives the owner a moment to stop its stream and remove its
//! slot, publication and shadows itself (a slot in use cannot be dropped).
//! If the owner is gone — crashed, killed, on another machine that lost its
//! connection — `abort` removes them itself, terminating the walsender that
//! still holds the slot if there is one. Every step is idempotent, so running
//! `abort` twice, or after a half-finished abort, is safe. A table that is
//! already cut over is not touched: its old table is kept for the operator.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::{info, warn};

use crate::error::Error;
use crate::pg::{self, quote_ident, ConnSpec, QualifiedName};
use crate::state::{self, Phase};

/// What `abort` did for one table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AbortResult {
    /// The table.
    pub table: String,
    /// `aborted`, `no_job`, or `already_cut_over`.
    pub outcome: String,
    /// Other tables of the same job that were aborted with it.
    pub with: Vec<String>,
}

/// Abort the jobs of `tables`. A job rewriting several tables is aborted
/// whole (its tables share one slot and one stream).
pub async fn abort(spec: &ConnSpec, tables: &[QualifiedName]) -> Result<Vec<AbortResult>, Error> {
    let admin = pg::connect(spec, "abort").await?;
    let jobs = state::list_jobs(&admin).await?;
    let mut results = Vec::new();
    let mut done_jobs = Vec::new();
    for t in tables {
        let Some(job) = jobs.iter().find(|j| j.source == *t) else {
            results.push(AbortResult {
                table: t.to_string(),
                outcome: "no_job".into(),
                with: vec![],
            });
            continue;
        };
        if job.phase() == Some(Phase::CutOver) {
            results.push(AbortResult {
                table: t.to_string(),
                outcome: "already_cut_over".into(),
                with: vec![],
            });
            continue;
        }
        if let Some(served) = jobs
            .iter()
            .find(|j| j.job_id == job.job_id && j.way_back && j.phase() == Some(Phase::CutOver))
        {
            return Err(Error::Precondition(format!(
                "{t} shares its job (one slot, one stream) with {}, which is cut over and whose way back the job serves; aborting would drop that stream. Roll it back first (`pg-rekey rollback --table {}`) or end it (`pg-rekey finish --table {}`)",
                served.table, served.table, served.table
            )));
        }
        let members: Vec<&state::JobRow> = jobs
            .iter()
            .filter(|j| j.job_id == job.job_id && j.phase() != Some(Phase::CutOver))
            .collect();
        let with: Vec<String> = members
            .iter()
            .filter(|j| j.source != *t)
            .map(|j| j.table.clone())
            .collect();
        if !done_jobs.contains(&job.job_id) {
            done_jobs.push(job.job_id);
            abort_job(&admin, &members).await?;
        }
        results.push(AbortResult {
            table: t.to_string(),
            outcome: "aborted".into(),
            with,
        });
    }
    Ok(results)
}

async fn abort_job(admin: &Client, members: &[&state::JobRow]) -> Result<(), Error> {
    for j in members {
        // Tell the owner; ignore a refused transition (already aborted/failed).
        let _ = state::set_phase(admin, &j.source, Phase::Aborted).await;
    }
    let slot = members.iter().find_map(|j| j.slot_name.clone());
    // Give a live owner the chance to clean up after itself.
    if let Some(slot) = &slot {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let active = slot_active(admin, slot).await?;
            let rows_left = state::list_jobs(admin)
                .await?
                .iter()
                .any(|r| members.iter().any(|m| m.job_id == r.job_id));
            if !rows_left {
                info!(slot = %slot, "the job's owner cleaned up");
                return Ok(());
            }
            if active.is_none() {
                break; // no owner streaming: do it here
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop_slot(admin, slot).await;
    }
    if let Some(publication) = members.iter().find_map(|j| j.publication_name.clone()) {
        drop_publication(admin, &publication).await;
    }
    if let Some(j) = members.first() {
        crate::resume::drop_map_table(admin, j.job_id).await;
    }
    for j in members {
        drop_shadow(admin, &j.shadow).await;
        state::delete_job(admin, &j.source).await?;
    }
    Ok(())
}

/// `Some(active_pid)` when the slot exists and is in use, `Some(None)`-like
/// absence as `None` when missing or idle.
async fn slot_active(admin: &Client, slot: &str) -> Result<Option<i32>, Error> {
    let row = admin
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(Error::db("read pg_replication_slots"))?;
    Ok(row.and_then(|r| r.get::<_, Option<i32>>(0)))
}

/// Drop a replication slot if it exists, terminating a walsender that still
/// holds it. Retries briefly: a just-stopped walsender releases its slot
/// asynchronously. Best effort, logged.
pub async fn drop_slot(admin: &Client, slot: &str) {
    for attempt in 0..50 {
        let row = admin
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await;
        match row {
            Ok(None) => return,
            Ok(Some(r)) => {
                if let Some(pid) = r.get::<_, Option<i32>>(0) {
                    if attempt >= 10 {
                        let _ = admin
                            .execute("SELECT pg_terminate_backend($1)", &[&pid])
                            .await;
                    }
                } else {
                    match admin
                        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                        .await
                    {
                        Ok(_) => {
                            tracing::debug!(slot = %slot, "replication slot dropped");
                            return;
                        }
                        Err(e) => {
                            warn!(slot, error = %crate::error::chain(&e), "dropping the slot; retrying")
                        }
                    }
                }
            }
            Err(e) => {
                warn!(slot, error = %crate::error::chain(&e), "could not read pg_replication_slots");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    warn!(slot, "the replication slot could not be dropped; drop it with SELECT pg_drop_replication_slot('{slot}') — it retains WAL");
}

/// `DROP PUBLICATION IF EXISTS`, logged on failure.
pub async fn drop_publication(admin: &Client, publication: &str) {
    if let Err(e) = admin
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote_ident(publication)
        ))
        .await
    {
        warn!(publication, error = %crate::error::chain(&e), "could not drop the publication");
    }
}

/// `DROP TABLE IF EXISTS shadow`, logged on failure.
pub async fn drop_shadow(admin: &Client, shadow: &QualifiedName) {
    if let Err(e) = admin
        .batch_execute(&format!("DROP TABLE IF EXISTS {}", shadow.quoted()))
        .await
    {
        warn!(shadow = %shadow, error = %crate::error::chain(&e), "could not drop the shadow");
    }
}
