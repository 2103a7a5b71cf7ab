//! What the operator is told and asked: what a state-changing command is
//! about to do (and the question, on a terminal), the next command to run
//! when it is done, and clearing job rows that are finished or orphaned.
//!
//! Rules:
//! - **Ask only a person.** The question is asked only when stdin and
//!   stderr are both terminals; `--yes` skips it. Off a terminal (scripts,
//!   CI, `rewrite --cutover auto`) nothing ever waits for an answer.
//! - **Every state change ends with the next step.** The texts here are
//!   pure functions of what the command did, so they are tested as text.
//! - **Never suggest acting on what is not there.** A hint names a table
//!   only when a job for it exists (or, for `rewrite`, when the table does).

use std::io::{BufRead, IsTerminal, Write};

use tokio_postgres::Client;

use crate::error::Error;
use crate::pg::QualifiedName;
use crate::state::{self, JobRow, Phase};

/// Whether a question can be asked: stdin and stderr are terminals.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Show `plan` and ask to proceed (on a terminal, without `--yes`). `Ok(true)`
/// to go on. Off a terminal it never asks and goes on.
pub fn confirm(plan: &str, yes: bool) -> Result<bool, Error> {
    if yes || !interactive() {
        return Ok(true);
    }
    let mut err = std::io::stderr().lock();
    let io = |e| Error::Io {
        context: "ask for confirmation".into(),
        source: e,
    };
    write!(err, "{plan}\nProceed? [y/N] ").map_err(io)?;
    err.flush().map_err(io)?;
    drop(err);
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).map_err(io)?;
    Ok(is_yes(&answer))
}

/// `y` or `yes`, any case, surrounding space ignored.
pub fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

fn table_args(tables: &[String]) -> String {
    tables
        .iter()
        .map(|t| format!("--table {t}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What `cutover` will do, for the question.
pub fn cutover_plan(jobs: &[JobRow], verify: bool) -> String {
    let mut out = String::from("cutover will:\n");
    if verify {
        out.push_str(
            "  - verify every shadow against its source (a brief SHARE lock per attempt)\n",
        );
    }
    out.push_str(
        "  - lock the tables (and the parent, views and referencing tables) for a short, bounded hold, then swap:\n",
    );
    for j in jobs {
        out.push_str(&format!(
            "      {} → kept as {}; {} takes its name (reference columns become uuid)\n",
            j.table,
            old_name(&j.source),
            j.shadow
        ));
    }
    out.push_str(
        "  - after that, statements that still send integer ids to these columns fail: deploy the uuid-writing application with it",
    );
    out
}

fn old_name(t: &QualifiedName) -> String {
    QualifiedName::new(
        t.schema.clone(),
        crate::swap::SwapNames::derive(t).old_table,
    )
    .to_string()
}

/// What `abort` will do, for the question.
pub fn abort_plan(jobs: &[JobRow]) -> String {
    let mut out = String::from("abort will stop and remove (the source tables are not touched):\n");
    for j in jobs {
        if j.phase() == Some(Phase::CutOver) {
            out.push_str(&format!(
                "  - {}: nothing (already cut over; the old table is kept)\n",
                j.table
            ));
            continue;
        }
        out.push_str(&format!(
            "  - {}: shadow {}{}{}\n",
            j.table,
            j.shadow,
            j.slot_name
                .as_ref()
                .map(|s| format!(", slot {s}"))
                .unwrap_or_default(),
            j.publication_name
                .as_ref()
                .map(|p| format!(", publication {p}"))
                .unwrap_or_default()
        ));
    }
    out.trim_end().to_string()
}

/// The job rows of `tables` that exist (for the plans above).
pub async fn jobs_of(client: &Client, tables: &[QualifiedName]) -> Result<Vec<JobRow>, Error> {
    let all = state::list_jobs(client).await?;
    Ok(all
        .into_iter()
        .filter(|j| tables.contains(&j.source))
        .collect())
}

/// Refuse tables that do not exist, before a command's own checks would
/// suggest acting on them (e.g. starting a rewrite of a table that is not
/// there). Lists the jobs that do exist.
pub async fn require_tables(client: &Client, tables: &[QualifiedName]) -> Result<(), Error> {
    let names: Vec<String> = tables.iter().map(|t| t.quoted()).collect();
    let rows = client
        .query(
            "SELECT x FROM unnest($1::text[]) x WHERE to_regclass(x) IS NULL",
            &[&names],
        )
        .await
        .map_err(Error::db("look up the tables"))?;
    if rows.is_empty() {
        return Ok(());
    }
    let missing: Vec<String> = tables
        .iter()
        .filter(|t| rows.iter().any(|r| r.get::<_, String>(0) == t.quoted()))
        .map(|t| t.to_string())
        .collect();
    let jobs: Vec<String> = match state::list_jobs(client).await {
        Ok(j) => j.into_iter().map(|j| j.table).collect(),
        Err(_) => vec![],
    };
    Err(Error::Config(format!(
        "no table {} in this database; {}",
        missing.join(", "),
        if jobs.is_empty() {
            "there are no pg-rekey jobs either".to_string()
        } else {
            format!("the tables with pg-rekey jobs are: {}", jobs.join(", "))
        }
    )))
}

/// Next steps after a swap: `(table, old table)` pairs.
pub fn next_after_swap(swapped: &[(String, String)]) -> String {
    let tables: Vec<String> = swapped.iter().map(|(t, _)| t.clone()).collect();
    let mut out = String::from("next:\n");
    out.push_str(
        "  1. deploy (or confirm) the application version that writes uuids to these columns\n",
    );
    out.push_str(&format!(
        "  2. pg-rekey verify {}   # old table vs new table\n",
        table_args(&tables)
    ));
    let drops: Vec<String> = swapped
        .iter()
        .map(|(_, old)| old.clone())
        .filter(|o| !o.is_empty())
        .collect();
    if !drops.is_empty() {
        out.push_str(&format!(
            "  3. when satisfied: DROP TABLE {};   then: pg-rekey status --prune\n",
            drops.join(", ")
        ));
    }
    out
}

/// Next steps after a cutover that gave up.
pub fn next_after_give_up(tables: &[String]) -> String {
    format!(
        "next: pg-rekey status   # lag and errors; then\n      pg-rekey cutover {} --wait-for-lag 5m\n",
        table_args(tables)
    )
}

/// Next steps after an abort: the tables whose jobs were removed.
pub fn next_after_abort(aborted: &[String]) -> String {
    if aborted.is_empty() {
        return "next: pg-rekey status   # the jobs that exist\n".into();
    }
    format!(
        "next: to start again, pg-rekey plan {0} then pg-rekey rewrite {0}\n",
        table_args(aborted)
    )
}

/// Next steps after `rewrite` stopped with its job removed.
pub fn next_after_rewrite_stopped(tables: &[String]) -> String {
    format!(
        "next: to start again, pg-rekey rewrite {}\n",
        table_args(tables)
    )
}

/// A job row `prune` removed, and why; or a leftover object it dropped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    /// `job row`, or the kind of a leftover ([`Leftover::kind`]).
    pub kind: String,
    /// The table (for a leftover: the object's name).
    pub table: String,
    /// Its phase.
    pub phase: String,
    /// The old table, when one is kept (prune never drops it).
    pub old_table: Option<String>,
}

/// Remove the job rows that describe nothing running: `cut_over` (finished;
/// the old table is kept, if it still exists; not one with a way back,
/// which `finish` ends), `aborted`, and `failed` jobs
/// whose slot and shadow are both gone (orphaned). A failed job that still
/// has its slot or shadow is kept: `pg-rekey abort` removes those.
pub async fn prune(client: &Client) -> Result<Vec<Pruned>, Error> {
    let rows = client
        .query(
            "DELETE FROM pgrekey.jobs j
              WHERE (j.phase IN ('cut_over', 'aborted') AND NOT j.way_back)
                 OR (j.phase = 'failed'
                     AND NOT EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.slot_name = j.slot_name)
                     AND to_regclass(format('%I.%I', j.source_schema, j.shadow_table)) IS NULL)
             RETURNING format('%I.%I', j.source_schema, j.source_table), j.phase,
                       CASE WHEN j.old_table IS NOT NULL
                             AND to_regclass(format('%I.%I', j.source_schema, j.old_table)) IS NOT NULL
                            THEN format('%I.%I', j.source_schema, j.old_table) END",
            &[],
        )
        .await
        .map_err(Error::db("remove finished job rows"))?;
    let mut out: Vec<Pruned> = rows
        .iter()
        .map(|r| Pruned {
            kind: "job row".into(),
            table: r.get(0),
            phase: r.get(1),
            old_table: r.get(2),
        })
        .collect();
    out.sort_by(|a, b| a.table.cmp(&b.table));
    // Definitions held for a rollback whose job row is gone (deleted by
    // hand: `finish` forgets them with the rows): nothing can use them.
    // (A state schema of an older version has no such table.)
    client
        .batch_execute(
            "DO $$ BEGIN
               IF pg_catalog.to_regclass('pgrekey.held_definitions') IS NOT NULL THEN
                 DELETE FROM pgrekey.held_definitions h
                  WHERE NOT EXISTS (SELECT FROM pgrekey.jobs j
                                     WHERE j.source_schema = h.table_schema AND j.source_table = h.table_name);
               END IF;
             END $$",
        )
        .await
        .map_err(Error::db("remove the definitions held for jobs that are gone"))?;
    // Then what no job row describes any more (the rows just removed
    // included): a slot no process serves is dropped, and with it the
    // publication and the durable map of the same job; one still in use is
    // left to its process, which drops it itself.
    for l in leftovers(client).await? {
        let in_use = l.active_pid.is_some()
            || (l.kind != LeftoverKind::Slot && leftover_slot_in_use(client, &l.job).await?);
        if in_use {
            continue;
        }
        match l.kind {
            LeftoverKind::Slot => crate::abort::drop_slot(client, &l.name).await,
            LeftoverKind::Publication => crate::abort::drop_publication(client, &l.name).await,
            LeftoverKind::MapTable => client
                .batch_execute(&format!("DROP TABLE IF EXISTS {}", l.name))
                .await
                .map_err(Error::db(format!("drop the leftover {}", l.name)))?,
        }
        out.push(Pruned {
            kind: l.kind.as_str().into(),
            table: l.name.clone(),
            phase: "leftover".into(),
            old_table: None,
        });
    }
    Ok(out)
}

/// What a leftover is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftoverKind {
    /// A logical replication slot `pg_rekey_<job>`: it retains WAL.
    Slot,
    /// The publication `pg_rekey_<job>`.
    Publication,
    /// The durable id map `pgrekey.idmap_<job>`.
    MapTable,
}

impl LeftoverKind {
    /// For people: `replication slot`, `publication`, `id map table`.
    pub fn as_str(self) -> &'static str {
        match self {
            LeftoverKind::Slot => "replication slot",
            LeftoverKind::Publication => "publication",
            LeftoverKind::MapTable => "id map table",
        }
    }
}

/// An object pg-rekey made for a job that no job row describes any more:
/// left when a process was cut off between removing a job's rows and
/// dropping its objects (`finish` killed after its commit while the serving
/// `rewrite` was gone too), or when the rows were deleted by hand.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Leftover {
    /// What it is.
    pub kind: LeftoverKind,
    /// Its name (the map table schema-qualified and quoted).
    pub name: String,
    /// The job's short id (the 12 hex digits every name of the job ends in).
    pub job: String,
    /// WAL the slot retains, bytes (slots only).
    pub wal_retained_bytes: Option<i64>,
    /// The process streaming from the slot now, if any.
    pub active_pid: Option<i32>,
}

/// Every [`Leftover`] in this database. Names are recognised exactly:
/// `pg_rekey_` and 12 lowercase hex digits (a job's slot and publication;
/// the temporary `_sync` slot of a resumed copy does not match and is never
/// listed), `pgrekey.idmap_` and the same digits. Job rows are registered
/// before any of a job's objects is made and removed before they are
/// dropped, so an object of this shape without a row is never one a
/// running job still needs — but a slot still in use is reported with its
/// process and never dropped.
pub async fn leftovers(client: &Client) -> Result<Vec<Leftover>, Error> {
    let have_jobs: bool = client
        .query_one("SELECT to_regclass('pgrekey.jobs') IS NOT NULL", &[])
        .await
        .map_err(Error::db("look for pgrekey.jobs"))?
        .get(0);
    let known = if have_jobs {
        "SELECT substr(slot_name, 10) FROM pgrekey.jobs WHERE slot_name IS NOT NULL
          UNION SELECT substr(publication_name, 10) FROM pgrekey.jobs WHERE publication_name IS NOT NULL"
    } else {
        "SELECT NULL::text WHERE false"
    };
    let sql = format!(
        "WITH known(job) AS ({known})
         SELECT 'slot', slot_name::text, substr(slot_name, 10),
                pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, active_pid
           FROM pg_catalog.pg_replication_slots
          WHERE slot_name ~ '^pg_rekey_[0-9a-f]{{12}}$' AND NOT temporary
            AND database = current_database()
            AND substr(slot_name, 10) NOT IN (SELECT job FROM known WHERE job IS NOT NULL)
         UNION ALL
         SELECT 'publication', pubname::text, substr(pubname, 10), NULL, NULL
           FROM pg_catalog.pg_publication
          WHERE pubname ~ '^pg_rekey_[0-9a-f]{{12}}$'
            AND substr(pubname, 10) NOT IN (SELECT job FROM known WHERE job IS NOT NULL)
         UNION ALL
         SELECT 'map', format('%I.%I', n.nspname, c.relname), substr(c.relname, 7), NULL, NULL
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'pgrekey' AND c.relkind = 'r' AND c.relname ~ '^idmap_[0-9a-f]{{12}}$'
            AND substr(c.relname, 7) NOT IN (SELECT job FROM known WHERE job IS NOT NULL)
          ORDER BY 3, 1"
    );
    let rows = client.query(&sql, &[]).await.map_err(Error::db(
        "look for leftover slots, publications and id maps",
    ))?;
    Ok(rows
        .iter()
        .map(|r| Leftover {
            kind: match r.get::<_, &str>(0) {
                "slot" => LeftoverKind::Slot,
                "publication" => LeftoverKind::Publication,
                _ => LeftoverKind::MapTable,
            },
            name: r.get(1),
            job: r.get(2),
            wal_retained_bytes: r.get(3),
            active_pid: r.get(4),
        })
        .collect())
}

/// Whether the slot of the job with short id `job` exists and is in use.
async fn leftover_slot_in_use(client: &Client, job: &str) -> Result<bool, Error> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_replication_slots
                             WHERE slot_name = 'pg_rekey_' || $1::text AND active)",
            &[&job],
        )
        .await
        .map_err(Error::db("read pg_replication_slots"))?
        .get(0))
}

/// What `status` prints about leftovers (empty when there are none).
pub fn render_leftovers(l: &[Leftover]) -> String {
    if l.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nleft over, no job describes them:\n");
    for x in l {
        out.push_str(&format!("  {} {}", x.kind.as_str(), x.name));
        if let Some(b) = x.wal_retained_bytes {
            out.push_str(&format!(
                " (retains {} of WAL)",
                crate::units::format_bytes(b.max(0) as u64)
            ));
        }
        if let Some(pid) = x.active_pid {
            out.push_str(&format!(" (in use by process {pid})"));
        }
        out.push('\n');
    }
    out.push_str("  `pg-rekey status --prune` drops them (a slot in use is left to its process)\n");
    out
}

/// What `status --prune` prints.
pub fn render_pruned(p: &[Pruned]) -> String {
    if p.is_empty() {
        return "no finished or orphaned job rows, and nothing left over, to clear\n".into();
    }
    let mut out = String::new();
    for r in p {
        if r.phase == "leftover" {
            out.push_str(&format!("dropped the leftover {} {}\n", r.kind, r.table));
            continue;
        }
        out.push_str(&format!("cleared {} ({})", r.table, r.phase));
        if let Some(old) = &r.old_table {
            out.push_str(&format!(
                "; its old table {old} is kept: DROP TABLE {old} when you no longer need it"
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        for y in ["y", "Y", "yes", " YES\n"] {
            assert!(is_yes(y), "{y:?}");
        }
        for n in ["", "\n", "n", "no", "yep", "sure"] {
            assert!(!is_yes(n), "{n:?}");
        }
    }

    #[test]
    fn next_steps_name_the_tables_and_the_old_ones() {
        let t = next_after_swap(&[(
            "public.sessions".into(),
            "public._rekey_old_sessions".into(),
        )]);
        assert!(t.contains("pg-rekey verify --table public.sessions"), "{t}");
        assert!(t.contains("DROP TABLE public._rekey_old_sessions"), "{t}");
        assert!(t.contains("uuid"), "{t}");
        let t = next_after_give_up(&["public.a".into(), "public.b".into()]);
        assert!(
            t.contains("cutover --table public.a --table public.b --wait-for-lag"),
            "{t}"
        );
        assert!(next_after_abort(&[]).contains("pg-rekey status"));
        assert!(next_after_abort(&["public.a".into()]).contains("rewrite --table public.a"));
    }

    #[test]
    fn pruned_rows_remind_of_kept_old_tables() {
        assert!(render_pruned(&[]).starts_with("no finished"));
        let t = render_pruned(&[
            Pruned {
                kind: "job row".into(),
                table: "public.a".into(),
                phase: "cut_over".into(),
                old_table: Some("public._rekey_old_a".into()),
            },
            Pruned {
                kind: "job row".into(),
                table: "public.b".into(),
                phase: "aborted".into(),
                old_table: None,
            },
            Pruned {
                kind: "replication slot".into(),
                table: "pg_rekey_0123456789ab".into(),
                phase: "leftover".into(),
                old_table: None,
            },
        ]);
        assert_eq!(
            t,
            "cleared public.a (cut_over); its old table public._rekey_old_a is kept: DROP TABLE public._rekey_old_a when you no longer need it\n\
             cleared public.b (aborted)\n\
             dropped the leftover replication slot pg_rekey_0123456789ab\n"
        );
    }

    #[test]
    fn leftovers_are_listed_with_their_wal_and_the_fix() {
        assert_eq!(render_leftovers(&[]), "");
        let t = render_leftovers(&[
            Leftover {
                kind: LeftoverKind::Slot,
                name: "pg_rekey_0123456789ab".into(),
                job: "0123456789ab".into(),
                wal_retained_bytes: Some(3 << 20),
                active_pid: None,
            },
            Leftover {
                kind: LeftoverKind::MapTable,
                name: "pgrekey.idmap_0123456789ab".into(),
                job: "0123456789ab".into(),
                wal_retained_bytes: None,
                active_pid: Some(42),
            },
        ]);
        assert!(
            t.contains("replication slot pg_rekey_0123456789ab (retains 3"),
            "{t}"
        );
        assert!(
            t.contains("id map table pgrekey.idmap_0123456789ab (in use by process 42)"),
            "{t}"
        );
        assert!(t.contains("`pg-rekey status --prune` drops them"), "{t}");
    }
}
