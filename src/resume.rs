//! Resume: who owns a job, and how a job whose owner died goes on.
//!
//! # The owner, recognised for sure
//!
//! A live `rewrite` holds a session-level advisory lock keyed from its job id
//! ([`owner_key`]) on its state session for its whole life; a running
//! `cutover` holds another ([`cutover_key`]) on its admin session. The server
//! releases a session-level lock when the session ends — a killed process, a
//! crashed host, a lost network (once the server notices), a server restart —
//! so "is the owner alive" is "can another session take that lock" (taken
//! and released at once by [`lock_free`]). A pid says nothing across hosts
//! or after pid reuse; it is only shown.
//!
//! # The id map is durable, and exactly as of the applied position
//!
//! The stream's translation and its uuid-change re-pointing need the map *as
//! of the position the stream resumes from*: the parent loaded now would be
//! ahead (a key deleted or a uuid changed after that position would break
//! the translation of the changes replayed before it). So the map also lives
//! in the database, in `pgrekey.idmap_<job>` (key, uuid):
//!
//! - it is filled at copy time by `INSERT … SELECT` from the parent in a
//!   session that imported the slot's exported snapshot — the very snapshot
//!   the copy and the in-memory map read — so it is the map at the slot's
//!   consistent point, which is where the stream starts;
//! - the apply engine writes every change it makes to the in-memory map
//!   (a parent INSERT, or an UPDATE that changed a uuid) into that table
//!   *in the same shadow transaction* that records `applied_lsn`
//!   ([`crate::apply::Applier::persist_map_to`]); a transaction whose only
//!   change is the parent's therefore opens a shadow transaction too.
//!
//! Both commit atomically, so after any crash the table is exactly the map
//! at `applied_lsn`: every parent change of a source transaction before that
//! position is in it (its shadow transaction committed), none after it is
//! (its shadow transaction rolled back with the crash). Resume loads the map
//! from the table and starts the stream at `applied_lsn`; the applier skips
//! the transactions committed before it, as after any reconnect.
//!
//! # What a resume does, by phase
//!
//! - `streaming`, `cutting_over` whose cutover is gone, or `failed` with the
//!   slot, the shadows and the map table still there: the shadows are
//!   complete up to `applied_lsn`; the new owner takes the lock, loads the
//!   map from the table and streams from the slot — exactly once, by the
//!   same argument as a reconnect (see [`crate::apply`]).
//! - `copying`, with the slot, the shadows and the durable map complete
//!   (its size recorded): the exported snapshot died with the process that
//!   exported it, so the copy cannot go on under it; it goes on
//!   *table by table*, as PostgreSQL's own table synchronisation does:
//!   - a table whose copy is complete is kept. "Complete" is recorded by
//!     `synced_lsn` (the snapshot's consistent point), written in the one
//!     transaction that also attaches the shadow's key and adds its
//!     constraints after its copy, once its indexes were built (each in a
//!     transaction of its own, at the same time) — so a shadow with
//!     `synced_lsn` holds the whole table as of that point, and one without
//!     it is only rows of committed batches, perhaps with some of those
//!     indexes;
//!   - every other shadow has those indexes dropped (the names the copy
//!     gives them, on that shadow, backing no constraint), is emptied
//!     (`TRUNCATE`: its rows are the job's own) and copied again under the snapshot of a new **temporary** slot,
//!     made on a replication connection that lives only for that copy (the
//!     server drops such a slot with its connection, however the process
//!     ends); the id map for that copy is read under the same snapshot; its
//!     `synced_lsn` is that slot's consistent point `L2`;
//!   - then the job streams from its own slot, from its consistent point
//!     `L1`, with the durable map (as of `L1`: nothing was applied yet).
//!
//!   *Why nothing is lost or applied twice.* A slot's exported snapshot sees
//!   exactly the transactions whose commit record lies before its consistent
//!   point, and the slot decodes exactly those whose commit record
//!   (`final_lsn`) lies at or after it. So a table copied at `L2` holds
//!   every transaction with `final_lsn < L2` and none after; the job's slot,
//!   created earlier at `L1 <= L2`, decodes every transaction with
//!   `final_lsn >= L1`, among them all with `final_lsn >= L2`. The applier
//!   applies a transaction's changes to that table only when `L2 <=
//!   final_lsn` ([`crate::apply::Applier::apply_from`]) — the very rule of
//!   PostgreSQL's tablesync (`statelsn <= remote_final_lsn`) — so every
//!   transaction reaches the table exactly once: through the copy or
//!   through the stream. The same rule keeps the re-pointing of a parent's
//!   uuid change and the orphan check at commit away from that table
//!   before `L2` (its copy translated every reference through the uuids at
//!   `L2`). The parent's changes are applied to the map from `L1` on for
//!   every table, so when a transaction after `L2` reaches the table, the
//!   map is as of that transaction, as for any other table.
//!   A copy interrupted again is resumed the same way (each table keeps
//!   its own `synced_lsn`). Resuming from the last committed *range* of an
//!   interrupted table instead of from an empty shadow is not done: the
//!   ranges are cut per snapshot, and the rows already in the shadow are
//!   as of the dead snapshot, not of the new one.
//! - `copying` without a complete slot, shadows and map (killed before they
//!   were made), or `failed` before streaming (a definite error removed the
//!   slot): pg-rekey removes what is left and starts the job again.
//!
//! A re-run with a different set of tables than the job's, or a different
//! parent, is refused with the command that would resume it.

use tokio_postgres::{Client, GenericClient};
use uuid::Uuid;

use crate::error::Error;
use crate::idmap::IdMap;
use crate::pg::{self, quote_ident, quote_literal, ConnSpec, QualifiedName};
use crate::plan::model::ParentSpec;
use crate::state::{JobRow, Phase};

/// The advisory lock key a live `rewrite` holds for job `job`.
pub fn owner_key(job: Uuid) -> i64 {
    let b = job.as_bytes();
    let mut k = [0u8; 8];
    k.copy_from_slice(&b[..8]);
    i64::from_be_bytes(k)
}

/// The advisory lock key a running `cutover` holds for job `job`.
pub fn cutover_key(job: Uuid) -> i64 {
    owner_key(job) ^ 0x5eed_c0de_0000_0001
}

/// Take session-level advisory lock `key` on `client` without waiting.
/// `true` when taken (held until [`unlock`] or the session ends).
pub async fn try_lock<C: GenericClient>(client: &C, key: i64) -> Result<bool, Error> {
    Ok(client
        .query_one("SELECT pg_catalog.pg_try_advisory_lock($1)", &[&key])
        .await
        .map_err(Error::db("take the job's advisory lock"))?
        .get(0))
}

/// Take session-level advisory lock `key` in shared mode on `client`
/// (several holders may share it; [`lock_free`] sees it held).
pub async fn lock_shared<C: GenericClient>(client: &C, key: i64) -> Result<(), Error> {
    client
        .query_one("SELECT pg_catalog.pg_advisory_lock_shared($1)", &[&key])
        .await
        .map_err(Error::db("take the cutover's advisory lock"))?;
    Ok(())
}

/// Release advisory lock `key` taken on `client`.
pub async fn unlock<C: GenericClient>(client: &C, key: i64) -> Result<(), Error> {
    client
        .query_one("SELECT pg_catalog.pg_advisory_unlock($1)", &[&key])
        .await
        .map_err(Error::db("release the job's advisory lock"))?;
    Ok(())
}

/// Whether nobody holds advisory lock `key` (checked by taking and
/// releasing it at once; never call it on the session that holds it).
pub async fn lock_free<C: GenericClient>(client: &C, key: i64) -> Result<bool, Error> {
    let free = try_lock(client, key).await?;
    if free {
        unlock(client, key).await?;
    }
    Ok(free)
}

/// Whether the `rewrite` owning job `job` is alive.
pub async fn owner_alive<C: GenericClient>(client: &C, job: Uuid) -> Result<bool, Error> {
    Ok(!lock_free(client, owner_key(job)).await?)
}

/// Whether a `cutover` of job `job` is running.
pub async fn cutover_alive<C: GenericClient>(client: &C, job: Uuid) -> Result<bool, Error> {
    Ok(!lock_free(client, cutover_key(job)).await?)
}

/// The durable id map table of job `job`.
pub fn map_table(job: Uuid) -> QualifiedName {
    QualifiedName::new(
        crate::state::SCHEMA,
        format!("idmap_{}", &job.simple().to_string()[..12]),
    )
}

/// The parent spec that reads the durable map table instead of the parent
/// (for [`IdMap::load`]).
fn map_as_parent(job: Uuid, parent: &ParentSpec) -> ParentSpec {
    ParentSpec {
        table: map_table(job),
        oid: 0,
        key_column: "key".into(),
        key_kind: parent.key_kind,
        uuid_column: "uuid".into(),
    }
}

/// Create job `job`'s map table and fill it from the parent under the slot's
/// exported `snapshot` (a session of its own; call it before the replication
/// connection runs anything else, like the copy sessions' imports). Analyzed,
/// so a resume's [`IdMap::load`] picks the same dense or sparse layout as
/// the load from the parent.
pub async fn fill_map_table(
    spec: &ConnSpec,
    job: Uuid,
    snapshot: &str,
    parent: &ParentSpec,
) -> Result<(), Error> {
    let s = pg::connect(spec, "idmap-durable").await?;
    let table = map_table(job).quoted();
    s.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (key int8 PRIMARY KEY, uuid uuid NOT NULL)"
    ))
    .await
    .map_err(Error::db(format!("create the durable id map {table}")))?;
    s.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT {snap};
         INSERT INTO {table} (key, uuid) SELECT {key}::int8, {uuid}::uuid FROM ONLY {parent};
         COMMIT;
         ANALYZE {table}",
        snap = quote_literal(snapshot),
        key = quote_ident(&parent.key_column),
        uuid = quote_ident(&parent.uuid_column),
        parent = parent.table.quoted(),
    ))
    .await
    .map_err(Error::db(format!(
        "fill the durable id map {table} under the slot's snapshot"
    )))?;
    Ok(())
}

/// Whether job `job`'s map table exists.
pub async fn map_table_exists<C: GenericClient>(client: &C, job: Uuid) -> Result<bool, Error> {
    Ok(client
        .query_one(
            "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
            &[&map_table(job).quoted()],
        )
        .await
        .map_err(Error::db("look for the durable id map"))?
        .get(0))
}

/// Load job `job`'s map as of its applied position (see the module docs).
pub async fn load_map(client: &Client, job: Uuid, parent: &ParentSpec) -> Result<IdMap, Error> {
    IdMap::load(client, &map_as_parent(job, parent)).await
}

/// `DROP TABLE IF EXISTS` the map table; best effort, logged.
pub async fn drop_map_table(client: &Client, job: Uuid) {
    let table = map_table(job).quoted();
    if let Err(e) = client
        .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .await
    {
        tracing::warn!(table, error = %crate::error::chain(&e), "could not drop the durable id map");
    }
}

/// What a re-run of `rewrite` finds for its tables.
#[derive(Debug)]
pub enum Found {
    /// No job holds any of the tables: start a new one.
    Nothing,
    /// A job whose owner is gone, complete up to its applied position: take
    /// it over and stream from its slot.
    Resume(Vec<JobRow>),
    /// A job whose owner is gone while it copied, with its slot, shadows
    /// and durable map complete: keep the tables whose copy is complete,
    /// copy the others again, then stream from the slot.
    ContinueCopy(Vec<JobRow>),
    /// A job whose owner is gone and which cannot go on where it stopped (it
    /// died before its slot and durable map were complete, or after a
    /// failure that removed them): remove what it created and start again.
    Restart(Vec<JobRow>),
}

/// The job rows of `tables` (and the other tables of their job).
/// Refuses a live owner, a mixed set, or a different parent.
pub async fn find(
    admin: &Client,
    tables: &[QualifiedName],
    parent: &ParentSpec,
) -> Result<Found, Error> {
    let jobs = crate::state::list_jobs(admin).await?;
    let mine: Vec<&JobRow> = jobs.iter().filter(|j| tables.contains(&j.source)).collect();
    let Some(first) = mine.first() else {
        return Ok(Found::Nothing);
    };
    let job_id = first.job_id;
    let members: Vec<JobRow> = jobs
        .iter()
        .filter(|j| j.job_id == job_id)
        .cloned()
        .collect();
    let resume_cmd = resume_command(&members);
    if let Some(other) = mine.iter().find(|j| j.job_id != job_id) {
        return Err(Error::Precondition(format!(
            "{} and {} are in different pg-rekey jobs; resume each with its own command (see pg-rekey status), or run pg-rekey abort --table {}",
            first.source, other.source, other.source
        )));
    }
    // A previous run in this very process (reconnecting after a transient
    // failure) may hold the lock on a session the server has not ended yet.
    let ours = first.owner_pid == i32::try_from(std::process::id()).ok()
        && first.owner_host.as_deref() == Some(crate::state::hostname().as_str());
    let mut alive = owner_alive(admin, job_id).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while alive && ours && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        alive = owner_alive(admin, job_id).await?;
    }
    if alive {
        let owner = format!(
            "{}@{}",
            first.owner_pid.unwrap_or_default(),
            first.owner_host.clone().unwrap_or_default()
        );
        return Err(crate::state::StateError::AlreadyRegistered {
            table: first.source.clone(),
            job_id,
            phase: first.phase.clone(),
            owner,
        }
        .into());
    }
    let same_tables =
        members.len() == tables.len() && members.iter().all(|m| tables.contains(&m.source));
    if !same_tables {
        return Err(Error::Precondition(format!(
            "job {job_id} of a process that is gone rewrites {}; resume it with exactly those tables: {resume_cmd} — or run pg-rekey abort --table {}",
            members.iter().map(|m| m.table.clone()).collect::<Vec<_>>().join(", "),
            first.source
        )));
    }
    if let Some((p, u)) = &first.parent {
        if *p != parent.table || *u != parent.uuid_column {
            return Err(Error::Precondition(format!(
                "job {job_id} rewrites references to {p} (uuid column {u}); resume it with: {resume_cmd}"
            )));
        }
    }
    // Cut over with a way back: the job serves it, and resumes like a
    // streaming one (from the table's stored spec, see `crate::way_back`).
    let served = |m: &JobRow| m.phase() == Some(Phase::CutOver) && m.way_back;
    if let Some(m) = members
        .iter()
        .find(|m| m.phase() == Some(Phase::CutOver) && !served(m))
    {
        return Err(Error::Precondition(format!(
            "{} is already cut over (job {job_id}); nothing to resume — run pg-rekey status",
            m.source
        )));
    }
    if let Some(m) = members.iter().find(|m| served(m) && m.spec.is_none()) {
        return Err(Error::Precondition(format!(
            "{} is cut over with a way back but its job records no table spec; it cannot be resumed by this version",
            m.source
        )));
    }
    let streamed = members.iter().all(|m| {
        served(m)
            || matches!(
                m.phase(),
                Some(Phase::Streaming | Phase::CuttingOver | Phase::Failed)
            )
    });
    let slot_there = match &first.slot_name {
        Some(s) => {
            admin
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                    &[s],
                )
                .await
                .map_err(Error::db("read pg_replication_slots"))?
                .get::<_, i64>(0)
                == 1
        }
        None => false,
    };
    let mut shadows_there = true;
    for m in &members {
        // After a cutover the way back writes the old table instead.
        let written = if served(m) {
            crate::naming::old_name(&m.source)
        } else {
            m.shadow.clone()
        };
        let exists: bool = admin
            .query_one(
                "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
                &[&written.quoted()],
            )
            .await
            .map_err(Error::db("look for a shadow"))?
            .get(0);
        shadows_there &= exists;
    }
    // `failed` before streaming dropped the slot; a copy never finished.
    let copied = members.iter().all(|m| m.phase() != Some(Phase::Copying));
    let intact = slot_there && shadows_there && map_table_exists(admin, job_id).await?;
    // The map's size is recorded once the durable map is complete.
    let copying = members.iter().all(|m| {
        m.phase() == Some(Phase::Copying) && m.consistent_lsn.is_some() && m.id_map_users.is_some()
    });
    if streamed && copied && intact {
        Ok(Found::Resume(members))
    } else if copying && intact {
        Ok(Found::ContinueCopy(members))
    } else {
        Ok(Found::Restart(members))
    }
}

/// The command that resumes the job of these rows.
pub fn resume_command(members: &[JobRow]) -> String {
    let mut cmd = String::from("pg-rekey rewrite");
    if let Some((p, u)) = members.first().and_then(|m| m.parent.clone()) {
        cmd.push_str(&format!(" --parent {p} --uuid-column {u}"));
    }
    for m in members {
        cmd.push_str(&format!(" --table {}", m.table));
    }
    cmd
}

/// Make this process the owner of the job's rows (pid and host, for `status`).
pub async fn record_owner<C: GenericClient>(client: &C, job: Uuid) -> Result<(), Error> {
    let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    client
        .execute(
            "UPDATE pgrekey.jobs SET owner_pid = $2, owner_host = $3, last_error = NULL, updated_at = now() WHERE job_id = $1",
            &[&job, &pid, &crate::state::hostname()],
        )
        .await
        .map_err(Error::db("record the job's new owner"))?;
    Ok(())
}

/// Whether a job's processes are alive, for `status` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Liveness {
    /// Whether the job's `rewrite` process holds its lock.
    pub owner_alive: bool,
    /// When the owner is gone: the job row's last update (the owner writes
    /// its progress every ~10 s while it lives, so this is its last sign of
    /// life), RFC 3339.
    pub owner_gone_since: Option<String>,
    /// `cutting_over` while no cutover is running: a killed cutover.
    pub stuck_cutover: bool,
    /// What to run next when something is gone.
    pub next_command: Option<String>,
}

/// The liveness of every unfinished job row, by table.
pub async fn liveness<C: GenericClient>(
    client: &C,
    jobs: &[JobRow],
) -> Result<std::collections::HashMap<QualifiedName, Liveness>, Error> {
    let mut by_job: std::collections::HashMap<Uuid, (bool, bool)> = Default::default();
    let mut out = std::collections::HashMap::new();
    // Advisory locks are per server: a standby knows nothing of the
    // primary's, so it cannot tell (no liveness rather than a wrong one).
    let standby: bool = client
        .query_one("SELECT pg_catalog.pg_is_in_recovery()", &[])
        .await
        .map_err(Error::db("ask whether the server is a standby"))?
        .get(0);
    if standby {
        return Ok(out);
    }
    for j in jobs {
        // A table cut over with a way back is served by the job's process.
        let served = j.way_back && j.phase() == Some(Phase::CutOver);
        if matches!(j.phase(), Some(Phase::CutOver | Phase::Aborted)) && !served {
            continue;
        }
        let (owner, cutover) = match by_job.get(&j.job_id) {
            Some(v) => *v,
            None => {
                let v = (
                    owner_alive(client, j.job_id).await?,
                    cutover_alive(client, j.job_id).await?,
                );
                by_job.insert(j.job_id, v);
                v
            }
        };
        let members: Vec<JobRow> = jobs
            .iter()
            .filter(|m| m.job_id == j.job_id && (m.phase() != Some(Phase::CutOver) || m.way_back))
            .cloned()
            .collect();
        let stuck_cutover = j.phase() == Some(Phase::CuttingOver) && !cutover;
        let next_command = if !owner && served {
            Some(format!(
                "{} to serve the way back again (the slot retains WAL meanwhile), or pg-rekey finish --table {} to end it",
                resume_command(&members),
                j.table
            ))
        } else if !owner {
            Some(format!(
                "{} to resume, or pg-rekey abort --table {}",
                resume_command(&members),
                j.table
            ))
        } else if stuck_cutover {
            Some(format!(
                "pg-rekey cutover --table {} to retry the swap (the job is still streaming)",
                j.table
            ))
        } else {
            None
        };
        out.insert(
            j.source.clone(),
            Liveness {
                owner_alive: owner,
                owner_gone_since: (!owner).then(|| j.updated_at.clone()),
                stuck_cutover,
                next_command,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_per_job_and_role() {
        let a = Uuid::from_u128(0x0123_4567_89ab_cdef_0000_0000_0000_0001);
        let b = Uuid::from_u128(0x1123_4567_89ab_cdef_0000_0000_0000_0001);
        assert_ne!(owner_key(a), owner_key(b));
        assert_ne!(owner_key(a), cutover_key(a));
        assert_eq!(owner_key(a), 0x0123_4567_89ab_cdef);
        assert_eq!(map_table(a).to_string(), "pgrekey.idmap_0123456789ab");
    }
}
