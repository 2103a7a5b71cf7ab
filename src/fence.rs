//! Fences: a marker written through the replication stream, and the wait until
//! every job has applied past it.
//!
//! A fence is a *transactional* logical message (`pg_logical_emit_message(true,
//! …)`) committed on its own session with `synchronous_commit = on`. Being
//! transactional, it is decoded at its commit, in commit order, by every slot
//! of the database — so once a job has applied the transaction that carries
//! it, that job has applied every transaction that committed before the fence.
//! (Non-transactional messages were not flushed before PostgreSQL 17 and are
//! not ordered with commits; they are never used.)
//!
//! Used with locks: with the source tables locked against writers, write a
//! fence and wait until every job's recorded applied LSN passes it; then each
//! shadow holds exactly what its source holds, and stays so while the locks
//! are held.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::apply::FENCE_PREFIX;
use crate::error::Error;
use crate::pg::Lsn;

/// Write a fence and return the LSN of the message (its transaction's commit
/// ends after it, so "applied ≥ this" means "fence applied").
pub async fn emit(client: &Client, token: &str) -> Result<Lsn, Error> {
    client
        .batch_execute("SET synchronous_commit = on")
        .await
        .map_err(Error::db("prepare the fence session"))?;
    let row = client
        .query_one(
            "SELECT pg_logical_emit_message(true, $1, $2)::text",
            &[&FENCE_PREFIX, &token],
        )
        .await
        .map_err(Error::db("write the fence through the replication stream"))?;
    let text: String = row.get(0);
    text.parse().map_err(|e| {
        Error::Precondition(format!(
            "the server returned an unreadable fence position: {e}"
        ))
    })
}

/// Wait until every listed job's applied LSN is past `fence`, polling.
/// Returns `Ok(true)` when drained, `Ok(false)` when `deadline` came first.
pub async fn wait_drained(
    client: &Client,
    job_ids: &[uuid::Uuid],
    fence: Lsn,
    deadline: Instant,
) -> Result<bool, Error> {
    let mut pause = Duration::from_millis(1);
    loop {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE applied_lsn IS NULL OR applied_lsn <= $2::text::pg_lsn),
                        min(format('%s.%s: %s', source_schema, source_table, last_error)) FILTER (WHERE phase = 'failed')
                   FROM pgrekey.jobs WHERE job_id = ANY($1)",
                &[&job_ids, &fence.to_string()],
            )
            .await
            .map_err(Error::db("read the jobs' applied positions"))?;
        let behind: i64 = row.get(0);
        if let Some(failed) = row.get::<_, Option<String>>(1) {
            return Err(Error::Precondition(format!(
                "a job stopped while draining to the fence: {failed}"
            )));
        }
        if behind == 0 {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}
