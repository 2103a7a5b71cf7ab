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

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::apply::FENCE_PREFIX;
use crate::error::Error;
use crate::pg::Lsn;

/// Write a fence and return the LSN of the message (its transaction's commit
/// ends after it, so "applied ≥ this" means "fence applied").
///
/// Sets `synchronous_commit = on` on the session first; a caller that writes
/// fences while holding locks does that once with [`prepare`] and then calls
/// [`write()`], one round trip.
pub async fn emit(client: &Client, token: &str) -> Result<Lsn, Error> {
    prepare(client).await?;
    write(client, token).await
}

/// Make `client` a fence session: `synchronous_commit = on`, so the fence's
/// commit is flushed (and so decodable) when [`write()`] returns.
pub async fn prepare(client: &Client) -> Result<(), Error> {
    client
        .batch_execute("SET synchronous_commit = on")
        .await
        .map_err(Error::db("prepare the fence session"))
}

/// Write a fence on a session set up with [`prepare`]: one exchange with the
/// server (typed parameters, no separate prepare).
pub async fn write(client: &Client, token: &str) -> Result<Lsn, Error> {
    let row = client
        .query_typed_one(
            "SELECT pg_logical_emit_message(true, $1, $2)::text",
            &[(&FENCE_PREFIX, Type::TEXT), (&token, Type::TEXT)],
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

/// Longest pause between two polls of [`wait_drained`].
pub const POLL_MAX_PAUSE: Duration = Duration::from_millis(10);

/// Wait until every listed job's applied LSN is past `fence`, polling with a
/// backoff from 1 ms up to 10 ms.
/// Returns `Ok(true)` when drained, `Ok(false)` when `deadline` came first.
pub async fn wait_drained(
    client: &Client,
    job_ids: &[uuid::Uuid],
    fence: Lsn,
    deadline: Instant,
) -> Result<bool, Error> {
    wait_drained_every(client, job_ids, fence, deadline, POLL_MAX_PAUSE).await
}

/// [`wait_drained`] with the longest pause between two polls. A caller that
/// holds locks while it waits (cutover) passes about a millisecond: each
/// poll is one cheap exchange, and every millisecond of pause is a
/// millisecond the application stays blocked after the jobs are done.
pub async fn wait_drained_every(
    client: &Client,
    job_ids: &[uuid::Uuid],
    fence: Lsn,
    deadline: Instant,
    max_pause: Duration,
) -> Result<bool, Error> {
    let fence_text = fence.to_string();
    let mut pause = Duration::from_micros(250).min(max_pause);
    loop {
        let row = client
            .query_typed_one(
                "SELECT count(*) FILTER (WHERE applied_lsn IS NULL OR applied_lsn <= $2::text::pg_lsn),
                        min(format('%s.%s: %s', source_schema, source_table, last_error)) FILTER (WHERE phase = 'failed')
                   FROM pgrekey.jobs WHERE job_id = ANY($1)",
                &[(&job_ids, Type::UUID_ARRAY), (&fence_text, Type::TEXT)],
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
        pause = (pause * 2).min(max_pause);
    }
}
