//! The journey view of `status`: per parent, where the seeds' whole journey
//! stands — prepared, each referencing table's phase, promoted, the integer
//! key kept or dropped — and the next command to run.
//!
//! [`decide`] is pure: it maps [`Facts`] to a [`Journey`]. The facts are read
//! at the edge ([`observe`]) with the same catalog reads `prepare` and
//! `promote` decide from (`prepare::observe` + `prepare::remaining`,
//! `promote::observe`), so the view cannot disagree with what those commands
//! would do.
//!
//! Which tables: every table with a foreign key to the parent's integer key
//! or to its uuid column (other foreign keys to the parent are not part of
//! the journey), plus every job row of the parent. The shadow and old
//! tables of a job are the job's, not tables of their own. A table with a
//! job row is in the job's phase; without one it is `not_started` while any
//! of its keys references the integer key, and `finished` once every key
//! references the uuid column.

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::Error;
use crate::pg::QualifiedName;
use crate::prepare::{self, Step};
use crate::promote;
use crate::state::JobRow;

/// The uuid column `prepare` and `promote` default to.
pub const DEFAULT_UUID_COLUMN: &str = "uuid";

/// What the catalog and the job rows say about one parent (pure input of
/// [`decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The parent, `schema.table`.
    pub parent: String,
    /// The uuid column the journey makes (recorded by a job or `prepare`,
    /// named on the command line, or the default).
    pub uuid_column: String,
    /// Whether the parent exists.
    pub exists: bool,
    /// The primary key's columns, `(name, type)`.
    pub key: Vec<(String, String)>,
    /// While the key is an integer: `prepare::remaining` for the uuid
    /// column (`Err`: its refusal).
    pub prepare: Result<Vec<Step>, prepare::Refusal>,
    /// Once the key is the uuid: the former integer key, if still there
    /// (found by `promote`'s rule: `legacy_id`, else `id`).
    pub integer_kept: Option<String>,
    /// The referencing tables.
    pub tables: Vec<TableFacts>,
}

/// One referencing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFacts {
    /// `schema.table`.
    pub table: String,
    /// Its referencing columns (of the keys to the integer or the uuid).
    pub columns: Vec<String>,
    /// A foreign key references the parent's integer key.
    pub to_integer: bool,
    /// A foreign key references the parent's uuid column.
    pub to_uuid: bool,
    /// Every foreign key to the uuid column is validated.
    pub validated: bool,
    /// Its job row, if any.
    pub job: Option<JobFacts>,
}

/// A job row, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFacts {
    /// The phase `status` shows (`reverse_streaming` for a way back).
    pub phase: String,
    /// The job.
    pub job_id: String,
}

/// Where one referencing table stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableStage {
    /// References the integer key; no job.
    NotStarted,
    /// The job copies.
    Copying,
    /// The job streams into the shadow: ready for `cutover`.
    Streaming,
    /// A cutover is swapping it.
    CuttingOver,
    /// Swapped without a way back; `finish` drops the old table.
    CutOver,
    /// Swapped with a way back: `rollback` or `finish`.
    ReverseStreaming,
    /// The job stopped on an error; the same `rewrite` resumes it.
    Failed,
    /// The job was aborted; its row is left for the record.
    Aborted,
    /// No job row; every key references the uuid column.
    Finished,
}

impl TableStage {
    /// The name shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TableStage::NotStarted => "not started",
            TableStage::Copying => "copying",
            TableStage::Streaming => "streaming",
            TableStage::CuttingOver => "cutting over",
            TableStage::CutOver => "cut over",
            TableStage::ReverseStreaming => "reverse streaming",
            TableStage::Failed => "failed",
            TableStage::Aborted => "aborted",
            TableStage::Finished => "finished",
        }
    }

    fn of_phase(phase: &str) -> TableStage {
        match phase {
            "copying" => TableStage::Copying,
            "streaming" => TableStage::Streaming,
            "cutting_over" => TableStage::CuttingOver,
            "cut_over" => TableStage::CutOver,
            "reverse_streaming" => TableStage::ReverseStreaming,
            "aborted" => TableStage::Aborted,
            // `failed`, and a phase of a newer version: nothing runs it.
            _ => TableStage::Failed,
        }
    }
}

/// Where the whole journey stands: the step the next command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Cannot go on as it is (the reason is in `note`).
    Blocked,
    /// Phase 1: the uuid column is not ready.
    Prepare,
    /// A job failed: resume it.
    Resume,
    /// An aborted job's row is in the way of a new rewrite.
    Prune,
    /// Tables still reference the integer key with no job.
    Rewrite,
    /// A copy runs: nothing to do but wait.
    Copying,
    /// Tables stream: swap them.
    Cutover,
    /// A cutover runs: nothing to do but wait.
    CuttingOver,
    /// Tables are cut over: end their jobs.
    Finish,
    /// Every table references the uuid: move the key.
    Promote,
    /// The key is the uuid and nothing references the integer.
    Done,
}

/// One referencing table in the journey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableJourney {
    /// `schema.table`.
    pub table: String,
    /// Its reference columns.
    pub columns: Vec<String>,
    /// Where it stands.
    pub stage: TableStage,
    /// Its job, if any.
    pub job_id: Option<String>,
    /// Whether its keys to the uuid are validated (`None`: it has none).
    pub key_validated: Option<bool>,
}

/// How the integer key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IntegerKey {
    /// Still the primary key.
    PrimaryKey,
    /// Kept (`integer_column`) beside the uuid key.
    Kept,
    /// Gone (dropped, or renamed to a name other than `legacy_id`/`id`).
    Dropped,
    /// Neither an integer nor a uuid key.
    Unknown,
}

/// One parent's journey (the `journeys` entries of `status --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Journey {
    /// The parent, `schema.table`.
    pub parent: String,
    /// The uuid column (its name now: after `promote --rename`, the key's).
    pub uuid_column: String,
    /// Phase 1 done: the uuid column is uuid, NOT NULL, unique.
    pub prepared: bool,
    /// The `prepare` steps left (`add_column`, `backfill`, …).
    pub prepare_left: Vec<String>,
    /// The referencing tables.
    pub tables: Vec<TableJourney>,
    /// The primary key is the uuid column.
    pub promoted: bool,
    /// The primary key's column(s).
    pub key_column: Option<String>,
    /// The integer key.
    pub integer_key: IntegerKey,
    /// The integer column, while there is one.
    pub integer_column: Option<String>,
    /// Where the journey stands.
    pub stage: Stage,
    /// The command to run next (`None`: wait, or nothing left).
    pub next_command: Option<String>,
    /// Why, in a sentence.
    pub note: String,
}

fn table_args(tables: &[&TableJourney]) -> String {
    tables
        .iter()
        .map(|t| format!("--table {}", t.table))
        .collect::<Vec<_>>()
        .join(" ")
}

fn step_name(s: &Step) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.get("step").and_then(|s| s.as_str()).map(str::to_string))
        .unwrap_or_default()
}

/// The journey from the facts (pure). The next command is the one of the
/// earliest stage any table is in: prepare, then resume a failed job, clear
/// an aborted one, rewrite what has not started, wait for a copy, cut over
/// what streams, wait for a cutover, finish what is cut over, promote,
/// done.
pub fn decide(f: &Facts) -> Journey {
    let p = &f.parent;
    let single = (f.key.len() == 1).then(|| &f.key[0]);
    let promoted = single.is_some_and(|(_, t)| t == "uuid");
    let integer_pk =
        single.is_some_and(|(_, t)| matches!(t.as_str(), "smallint" | "integer" | "bigint"));
    let uuid_column = match single {
        Some((name, _)) if promoted => name.clone(),
        _ => f.uuid_column.clone(),
    };
    let (integer_key, integer_column) = if integer_pk {
        (IntegerKey::PrimaryKey, single.map(|(n, _)| n.clone()))
    } else if promoted {
        match &f.integer_kept {
            Some(i) => (IntegerKey::Kept, Some(i.clone())),
            None => (IntegerKey::Dropped, None),
        }
    } else {
        (IntegerKey::Unknown, None)
    };
    // A column that exists but was not added by `prepare` is completed
    // with --column-exists; any other refusal blocks.
    let mut column_exists = false;
    let (prepared, prepare_left, refusal) = if promoted {
        (true, Vec::new(), None)
    } else {
        match &f.prepare {
            Ok(steps) => (
                steps.is_empty(),
                steps.iter().map(step_name).collect(),
                None,
            ),
            Err(prepare::Refusal::ColumnExists { .. }) => {
                column_exists = true;
                (false, vec!["complete_existing_column".into()], None)
            }
            Err(e) => (false, Vec::new(), Some(e.to_string())),
        }
    };
    let tables: Vec<TableJourney> = f
        .tables
        .iter()
        .map(|t| TableJourney {
            table: t.table.clone(),
            columns: t.columns.clone(),
            stage: match &t.job {
                Some(j) => TableStage::of_phase(&j.phase),
                None if t.to_integer => TableStage::NotStarted,
                None => TableStage::Finished,
            },
            job_id: t.job.as_ref().map(|j| j.job_id.clone()),
            key_validated: t.to_uuid.then_some(t.validated),
        })
        .collect();
    let mut j = Journey {
        parent: p.clone(),
        uuid_column: uuid_column.clone(),
        prepared,
        prepare_left,
        promoted,
        key_column: (!f.key.is_empty()).then(|| {
            f.key
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }),
        integer_key,
        integer_column,
        stage: Stage::Blocked,
        next_command: None,
        note: String::new(),
        tables: Vec::new(),
    };
    let at =
        |s: TableStage| -> Vec<&TableJourney> { tables.iter().filter(|t| t.stage == s).collect() };
    let prepare_cmd = format!(
        "pg-rekey prepare --parent {p} --uuid-column {uuid_column}{}",
        if column_exists {
            " --column-exists"
        } else {
            ""
        }
    );
    let rewrite_cmd = |ts: &[&TableJourney]| {
        format!(
            "pg-rekey rewrite --parent {p} --uuid-column {uuid_column} {}",
            table_args(ts)
        )
    };
    let (stage, next, note) = if !f.exists {
        (Stage::Blocked, None, format!("{p} does not exist"))
    } else if let Some(why) = refusal {
        (Stage::Blocked, None, why)
    } else if !promoted && !integer_pk {
        (
            Stage::Blocked,
            None,
            format!(
                "the primary key of {p} is neither one integer column nor the uuid ({})",
                j.key_column.as_deref().unwrap_or("none")
            ),
        )
    } else if !prepared {
        (
            Stage::Prepare,
            Some(prepare_cmd),
            format!(
                "{p}.{uuid_column} is not ready (left: {}); rewrite needs it uuid, NOT NULL and unique",
                j.prepare_left.join(", ")
            ),
        )
    } else if !at(TableStage::Failed).is_empty() {
        let ts = at(TableStage::Failed);
        (
            Stage::Resume,
            Some(rewrite_cmd(&ts)),
            "a job stopped on an error (see its row above); the same rewrite resumes it".into(),
        )
    } else if !at(TableStage::Aborted).is_empty() {
        (
            Stage::Prune,
            Some("pg-rekey status --prune".into()),
            "an aborted job's row is left; clear it before a new rewrite of its table".into(),
        )
    } else if !at(TableStage::NotStarted).is_empty() {
        let ts = at(TableStage::NotStarted);
        (
            Stage::Rewrite,
            Some(rewrite_cmd(&ts)),
            format!(
                "{} table(s) still reference {p}.{}",
                ts.len(),
                j.integer_column.as_deref().unwrap_or("the integer key")
            ),
        )
    } else if !at(TableStage::Copying).is_empty() {
        (
            Stage::Copying,
            None,
            "the copy runs; cut over once every table streams".into(),
        )
    } else if !at(TableStage::Streaming).is_empty() {
        let ts = at(TableStage::Streaming);
        (
            Stage::Cutover,
            Some(format!("pg-rekey cutover {}", table_args(&ts))),
            "the shadows are current; swap them (--way-back keeps the old tables current until finish)"
                .into(),
        )
    } else if !at(TableStage::CuttingOver).is_empty() {
        (
            Stage::CuttingOver,
            None,
            "a cutover runs (if none does, the row above says stuck)".into(),
        )
    } else if !at(TableStage::CutOver).is_empty() || !at(TableStage::ReverseStreaming).is_empty() {
        let ts: Vec<&TableJourney> = tables
            .iter()
            .filter(|t| matches!(t.stage, TableStage::CutOver | TableStage::ReverseStreaming))
            .collect();
        let back = ts.iter().any(|t| t.stage == TableStage::ReverseStreaming);
        (
            Stage::Finish,
            Some(format!("pg-rekey finish {}", table_args(&ts))),
            if back {
                format!(
                    "cut over with a way back (`pg-rekey rollback {}` swaps back); finish ends it: old tables, slot and job rows dropped",
                    table_args(&ts)
                )
            } else {
                "cut over; finish drops the old tables, the slot and the job rows".into()
            },
        )
    } else if !promoted {
        (
            Stage::Promote,
            Some(format!(
                "pg-rekey promote --parent {p} --uuid-column {uuid_column}"
            )),
            format!(
                "nothing references {p}.{} any more; the uuid can become the primary key (--rename gives it the integer's name, --drop-integer-key drops the integer)",
                j.integer_column.as_deref().unwrap_or("the integer key")
            ),
        )
    } else {
        (
            Stage::Done,
            None,
            match &j.integer_column {
                Some(i) => format!(
                    "the primary key is {p}.{uuid_column}; the integer is kept as {i} (`pg-rekey promote --parent {p} --uuid-column {uuid_column} --integer-column {i} --drop-integer-key` drops it when nothing uses it)"
                ),
                None => format!("the primary key is {p}.{uuid_column}; the integer key is gone"),
            },
        )
    };
    j.stage = stage;
    j.next_command = next;
    j.note = note;
    j.tables = tables;
    j
}

/// The journey section of `status` (text).
pub fn render(journeys: &[Journey]) -> String {
    let mut out = String::new();
    for j in journeys {
        out.push_str(&format!(
            "journey of {} (uuid column {}): {}\n",
            j.parent,
            j.uuid_column,
            stage_label(j.stage)
        ));
        out.push_str(&format!(
            "  1. prepare   {}\n",
            if j.prepared {
                "done".to_string()
            } else if j.prepare_left.is_empty() {
                "-".to_string()
            } else {
                format!("left: {}", j.prepare_left.join(", "))
            }
        ));
        let width = j.tables.iter().map(|t| t.table.len()).max().unwrap_or(0);
        if j.tables.is_empty() {
            out.push_str("  2. tables    none reference it\n");
        }
        for (i, t) in j.tables.iter().enumerate() {
            out.push_str(&format!(
                "  {}{:<w$}  {}{}\n",
                if i == 0 {
                    "2. tables    "
                } else {
                    "             "
                },
                t.table,
                t.stage.as_str(),
                match t.key_validated {
                    Some(false) => " (key not validated yet)",
                    _ => "",
                },
                w = width
            ));
        }
        out.push_str(&format!(
            "  3. promote   {}\n",
            if j.promoted {
                format!(
                    "done (primary key {})",
                    j.key_column.as_deref().unwrap_or("-")
                )
            } else {
                format!(
                    "no (primary key {})",
                    j.key_column.as_deref().unwrap_or("none")
                )
            }
        ));
        out.push_str(&format!(
            "  integer key {}\n",
            match (j.integer_key, &j.integer_column) {
                (IntegerKey::PrimaryKey, Some(c)) => format!("{c}, the primary key"),
                (IntegerKey::Kept, Some(c)) => format!("kept as {c}"),
                (IntegerKey::Dropped, _) => "dropped".to_string(),
                _ => "-".to_string(),
            }
        ));
        match &j.next_command {
            Some(c) => out.push_str(&format!("  next: {c}\n        ({})\n", j.note)),
            None => out.push_str(&format!("  next: nothing to run ({})\n", j.note)),
        }
    }
    out
}

fn stage_label(s: Stage) -> &'static str {
    match s {
        Stage::Blocked => "blocked",
        Stage::Prepare => "phase 1, prepare",
        Stage::Resume => "a job to resume",
        Stage::Prune => "an aborted job to clear",
        Stage::Rewrite => "tables to rewrite",
        Stage::Copying => "copying",
        Stage::Cutover => "ready to cut over",
        Stage::CuttingOver => "cutting over",
        Stage::Finish => "cut over, to finish",
        Stage::Promote => "ready to promote",
        Stage::Done => "done",
    }
}

/// The parents to show and their uuid columns: the parents of job rows, the
/// parents recorded in `pgrekey.prepare`, and `named` (with its column, if
/// given). A column named on the command line wins, then a job's, then
/// `prepare`'s (the latest), then [`DEFAULT_UUID_COLUMN`].
pub async fn parents(
    client: &Client,
    jobs: &[JobRow],
    named: Option<(QualifiedName, Option<String>)>,
) -> Result<Vec<(QualifiedName, String)>, Error> {
    let mut out: Vec<(QualifiedName, Option<String>)> = Vec::new();
    // The first source to name a column wins (the command line is first).
    let mut add = |p: QualifiedName, c: Option<String>| match out.iter_mut().find(|(q, _)| *q == p)
    {
        Some((_, col)) => {
            if col.is_none() {
                *col = c;
            }
        }
        None => out.push((p, c)),
    };
    if let Some((p, c)) = named {
        add(p, c);
    }
    for j in jobs {
        if let Some((p, c)) = &j.parent {
            add(p.clone(), Some(c.clone()));
        }
    }
    let has_prepare: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('pgrekey.prepare') IS NOT NULL",
            &[],
        )
        .await
        .map_err(Error::db("look for the pgrekey state schema"))?
        .get(0);
    if has_prepare {
        let rows = client
            .query(
                "SELECT parent_schema, parent_table, uuid_column FROM pgrekey.prepare
                  ORDER BY updated_at DESC, uuid_column",
                &[],
            )
            .await
            .map_err(Error::db("read pgrekey.prepare"))?;
        for r in rows {
            add(
                QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                Some(r.get(2)),
            );
        }
    }
    let mut out: Vec<(QualifiedName, String)> = out
        .into_iter()
        .map(|(p, c)| (p, c.unwrap_or_else(|| DEFAULT_UUID_COLUMN.to_string())))
        .collect();
    out.sort_by_key(|a| a.0.to_string());
    Ok(out)
}

/// Foreign keys to a parent: referencing table, columns, validated, and
/// the parent's columns they reference.
const FOREIGN_KEYS_SQL: &str = "
SELECT n.nspname::text, c.relname::text, con.convalidated,
       array_agg(a.attname::text ORDER BY k.n), array_agg(pa.attname::text ORDER BY k.n)
  FROM pg_catalog.pg_constraint con
  JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 CROSS JOIN LATERAL unnest(con.conkey, con.confkey) WITH ORDINALITY k(att, patt, n)
  JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.att
  JOIN pg_catalog.pg_attribute pa ON pa.attrelid = con.confrelid AND pa.attnum = k.patt
 WHERE con.contype = 'f' AND con.confrelid = $1::text::regclass AND con.conparentid = 0
 GROUP BY con.oid, n.nspname, c.relname, con.convalidated
 ORDER BY 1, 2";

/// Read one parent's facts. `rows` are `status`'s table rows (for the
/// phases as shown), `jobs` the job rows (for parents, shadows and old
/// tables).
pub async fn observe(
    client: &Client,
    parent: &QualifiedName,
    uuid_column: &str,
    jobs: &[JobRow],
    rows: &[super::TableStatus],
) -> Result<Facts, Error> {
    let rel = parent.quoted();
    let mut f = Facts {
        parent: parent.to_string(),
        uuid_column: uuid_column.to_string(),
        exists: false,
        key: Vec::new(),
        prepare: Ok(Vec::new()),
        integer_kept: None,
        tables: Vec::new(),
    };
    f.exists = client
        .query_one("SELECT pg_catalog.to_regclass($1) IS NOT NULL", &[&rel])
        .await
        .map_err(Error::db("look for the parent"))?
        .get(0);
    if !f.exists {
        return Ok(f);
    }
    let p = promote::observe(client, parent, &promote::Options::new(uuid_column)).await?;
    f.key = p
        .key
        .as_ref()
        .map(|k| {
            k.columns
                .iter()
                .map(|c| (c.name.clone(), c.type_name.clone()))
                .collect()
        })
        .unwrap_or_default();
    let key_col = (f.key.len() == 1).then(|| f.key[0].clone());
    let promoted = key_col.as_ref().is_some_and(|(_, t)| t == "uuid");
    // The parent's columns now: (integer key, uuid column).
    let (integer, uuid) = if promoted {
        f.integer_kept = p.integer.as_ref().map(|c| c.name.clone());
        (
            f.integer_kept.clone(),
            key_col.as_ref().map(|(n, _)| n.clone()),
        )
    } else {
        let o = prepare::observe(client, parent, uuid_column).await?;
        f.prepare = prepare::remaining(&o, &parent.to_string(), uuid_column, false);
        (o.key.clone(), Some(uuid_column.to_string()))
    };
    // The job's own tables (shadows, old tables) are not tables of their own.
    let mine: Vec<&JobRow> = jobs
        .iter()
        .filter(|j| j.parent.as_ref().is_some_and(|(q, _)| q == parent))
        .collect();
    let own: Vec<String> = jobs
        .iter()
        .flat_map(|j| {
            let old = QualifiedName::new(
                j.source.schema.clone(),
                crate::swap::SwapNames::derive(&j.source).old_table,
            );
            [j.shadow.to_string(), old.to_string()]
        })
        .collect();
    let keys = client
        .query(FOREIGN_KEYS_SQL, &[&rel])
        .await
        .map_err(Error::db(format!("read the foreign keys to {parent}")))?;
    for r in keys {
        let table = QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)).to_string();
        if own.contains(&table) {
            continue;
        }
        let validated: bool = r.get(2);
        let cols: Vec<String> = r.get(3);
        let refd: Vec<String> = r.get(4);
        let to_integer = integer.as_ref().is_some_and(|i| refd.contains(i));
        let to_uuid = uuid.as_ref().is_some_and(|u| refd.contains(u));
        if !to_integer && !to_uuid {
            continue;
        }
        let t = match f.tables.iter_mut().find(|t| t.table == table) {
            Some(t) => t,
            None => {
                f.tables.push(TableFacts {
                    table: table.clone(),
                    columns: Vec::new(),
                    to_integer: false,
                    to_uuid: false,
                    validated: true,
                    job: None,
                });
                f.tables.last_mut().expect("just pushed")
            }
        };
        for c in cols {
            if !t.columns.contains(&c) {
                t.columns.push(c);
            }
        }
        t.to_integer |= to_integer;
        t.to_uuid |= to_uuid;
        if to_uuid {
            t.validated &= validated;
        }
    }
    for j in &mine {
        let table = j.source.to_string();
        if !f.tables.iter().any(|t| t.table == table) {
            f.tables.push(TableFacts {
                table: table.clone(),
                columns: Vec::new(),
                to_integer: false,
                to_uuid: false,
                validated: true,
                job: None,
            });
        }
    }
    for t in &mut f.tables {
        t.job = rows
            .iter()
            .find(|r| r.job.table == t.table)
            .map(|r| JobFacts {
                phase: r.phase.clone(),
                job_id: r.job.job_id.to_string(),
            });
    }
    f.tables.sort_by(|a, b| a.table.cmp(&b.table));
    Ok(f)
}

/// Every parent's journey (see [`parents`]).
pub async fn load(
    client: &Client,
    rows: &[super::TableStatus],
    named: Option<(QualifiedName, Option<String>)>,
) -> Result<Vec<Journey>, Error> {
    let jobs = crate::state::list_jobs(client).await?;
    let mut out = Vec::new();
    for (parent, column) in parents(client, &jobs, named).await? {
        let facts = observe(client, &parent, &column, &jobs, rows).await?;
        out.push(decide(&facts));
    }
    Ok(out)
}

/// [`load`] for `status`: the per-table rows are its contract, the
/// journeys an addition, so a journey that cannot be read (a parent dropped
/// meanwhile, a role that may not read the catalog of one) is logged and
/// left out rather than failing `status` — unless the parent was named.
pub async fn load_for_status(
    client: &Client,
    rows: &[super::TableStatus],
    named: Option<(QualifiedName, Option<String>)>,
) -> Result<Vec<Journey>, Error> {
    let asked = named.is_some();
    match load(client, rows, named).await {
        Ok(j) => Ok(j),
        Err(e) if !asked => {
            tracing::warn!(error = %crate::error::chain(&e), "the journey view could not be read; showing the tables only");
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Facts {
        Facts {
            parent: "public.users".into(),
            uuid_column: "uuid_id".into(),
            exists: true,
            key: vec![("id".into(), "bigint".into())],
            prepare: Ok(vec![]),
            integer_kept: None,
            tables: ["public.api_access_tokens", "public.sessions"]
                .iter()
                .map(|t| TableFacts {
                    table: (*t).into(),
                    columns: vec!["user_id".into()],
                    to_integer: true,
                    to_uuid: false,
                    validated: true,
                    job: None,
                })
                .collect(),
        }
    }

    fn with_jobs(phases: &[&str]) -> Facts {
        let mut f = fresh();
        for (t, p) in f.tables.iter_mut().zip(phases) {
            t.job = Some(JobFacts {
                phase: (*p).into(),
                job_id: "j".into(),
            });
            if matches!(*p, "cut_over" | "reverse_streaming") {
                t.to_integer = false;
                t.to_uuid = true;
            }
        }
        f
    }

    #[test]
    fn an_unprepared_parent_names_prepare() {
        let f = Facts {
            prepare: Ok(vec![Step::AddColumn, Step::SetDefault]),
            ..fresh()
        };
        let j = decide(&f);
        assert_eq!(j.stage, Stage::Prepare);
        assert!(!j.prepared);
        assert_eq!(j.prepare_left, vec!["add_column", "set_default"]);
        assert_eq!(
            j.next_command.as_deref(),
            Some("pg-rekey prepare --parent public.users --uuid-column uuid_id")
        );
        assert!(j.tables.iter().all(|t| t.stage == TableStage::NotStarted));
        assert_eq!(j.integer_key, IntegerKey::PrimaryKey);
    }

    #[test]
    fn prepared_with_references_names_rewrite_of_those_tables() {
        let j = decide(&fresh());
        assert_eq!(j.stage, Stage::Rewrite);
        assert!(j.prepared);
        assert_eq!(
            j.next_command.as_deref(),
            Some("pg-rekey rewrite --parent public.users --uuid-column uuid_id --table public.api_access_tokens --table public.sessions")
        );
    }

    #[test]
    fn each_phase_leads_to_its_command() {
        let j = decide(&with_jobs(&["copying", "streaming"]));
        assert_eq!((j.stage, j.next_command.as_deref()), (Stage::Copying, None));
        let j = decide(&with_jobs(&["streaming", "streaming"]));
        assert_eq!(j.stage, Stage::Cutover);
        assert_eq!(
            j.next_command.as_deref(),
            Some("pg-rekey cutover --table public.api_access_tokens --table public.sessions")
        );
        let j = decide(&with_jobs(&["cutting_over", "cutting_over"]));
        assert_eq!((j.stage, j.next_command), (Stage::CuttingOver, None));
        let j = decide(&with_jobs(&["reverse_streaming", "reverse_streaming"]));
        assert_eq!(j.stage, Stage::Finish);
        assert_eq!(
            j.next_command.as_deref(),
            Some("pg-rekey finish --table public.api_access_tokens --table public.sessions")
        );
        assert!(j.note.contains("pg-rekey rollback --table"), "{}", j.note);
        assert_eq!(
            j.tables.iter().map(|t| t.stage).collect::<Vec<_>>(),
            vec![TableStage::ReverseStreaming; 2]
        );
        let j = decide(&with_jobs(&["cut_over", "cut_over"]));
        assert_eq!(j.stage, Stage::Finish);
        assert!(!j.note.contains("rollback"));
    }

    #[test]
    fn the_earliest_stage_leads() {
        // One table not started, one streaming: rewrite the first.
        let mut f = with_jobs(&["streaming"]);
        f.tables[1].job = None;
        let j = decide(&f);
        assert_eq!(j.stage, Stage::Rewrite);
        assert!(j.next_command.unwrap().ends_with("--table public.sessions"));
        // A failed job comes first; an aborted row is cleared before a rewrite.
        let j = decide(&with_jobs(&["failed", "streaming"]));
        assert_eq!(j.stage, Stage::Resume);
        assert!(j
            .next_command
            .unwrap()
            .starts_with("pg-rekey rewrite --parent public.users --uuid-column uuid_id --table public.api_access_tokens"));
        let j = decide(&with_jobs(&["aborted", "cut_over"]));
        assert_eq!(
            (j.stage, j.next_command.as_deref()),
            (Stage::Prune, Some("pg-rekey status --prune"))
        );
    }

    #[test]
    fn finished_tables_lead_to_promote_then_done() {
        let mut f = fresh();
        for t in &mut f.tables {
            t.to_integer = false;
            t.to_uuid = true;
        }
        f.tables[0].validated = false;
        let j = decide(&f);
        assert_eq!(j.stage, Stage::Promote);
        assert!(j.tables.iter().all(|t| t.stage == TableStage::Finished));
        assert_eq!(j.tables[0].key_validated, Some(false));
        assert_eq!(
            j.next_command.as_deref(),
            Some("pg-rekey promote --parent public.users --uuid-column uuid_id")
        );
        assert!(render(&[j]).contains("(key not validated yet)"));

        // Promoted with --rename: the uuid is `id`, the integer `legacy_id`.
        f.key = vec![("id".into(), "uuid".into())];
        f.integer_kept = Some("legacy_id".into());
        f.prepare = Err(prepare::Refusal::KeyNotInteger {
            parent: "public.users".into(),
            detail: "uuid".into(),
        });
        let j = decide(&f);
        assert_eq!((j.stage, j.next_command.as_deref()), (Stage::Done, None));
        assert!(j.promoted && j.prepared);
        assert_eq!(j.uuid_column, "id");
        assert_eq!(
            (j.integer_key, j.integer_column.as_deref()),
            (IntegerKey::Kept, Some("legacy_id"))
        );
        f.integer_kept = None;
        assert_eq!(decide(&f).integer_key, IntegerKey::Dropped);
        // No table at all references the parent: promote once prepared.
        let j = decide(&Facts {
            tables: vec![],
            ..fresh()
        });
        assert_eq!(j.stage, Stage::Promote);
    }

    #[test]
    fn a_table_still_referencing_the_integer_is_not_finished() {
        // Dual keys (the seed's hand-made phase 2): promote would refuse.
        let mut f = fresh();
        f.tables[0].to_uuid = true;
        let j = decide(&f);
        assert_eq!(j.tables[0].stage, TableStage::NotStarted);
        assert_eq!(j.stage, Stage::Rewrite);
    }

    #[test]
    fn refusals_and_missing_parents_block() {
        let j = decide(&Facts {
            exists: false,
            ..fresh()
        });
        assert_eq!((j.stage, j.next_command), (Stage::Blocked, None));
        let j = decide(&Facts {
            prepare: Err(prepare::Refusal::NotUuid {
                parent: "public.users".into(),
                column: "uuid_id".into(),
                type_name: "text".into(),
            }),
            ..fresh()
        });
        assert_eq!(j.stage, Stage::Blocked);
        assert!(j.note.contains("is text"));
        // A column made by hand is completed, keeping its values.
        let j = decide(&Facts {
            prepare: Err(prepare::Refusal::ColumnExists {
                parent: "public.users".into(),
                column: "uuid_id".into(),
            }),
            ..fresh()
        });
        assert_eq!(j.stage, Stage::Prepare);
        assert!(j
            .next_command
            .unwrap()
            .ends_with("--uuid-column uuid_id --column-exists"));
        let j = decide(&Facts {
            key: vec![("email".into(), "text".into())],
            ..fresh()
        });
        assert_eq!(j.stage, Stage::Blocked);
        assert_eq!(j.integer_key, IntegerKey::Unknown);
    }

    #[test]
    fn renders_every_part() {
        let text = render(&[decide(&with_jobs(&["streaming", "streaming"]))]);
        assert_eq!(
            text,
            "journey of public.users (uuid column uuid_id): ready to cut over\n\
             \x20 1. prepare   done\n\
             \x20 2. tables    public.api_access_tokens  streaming\n\
             \x20              public.sessions           streaming\n\
             \x20 3. promote   no (primary key id)\n\
             \x20 integer key id, the primary key\n\
             \x20 next: pg-rekey cutover --table public.api_access_tokens --table public.sessions\n\
             \x20       (the shadows are current; swap them (--way-back keeps the old tables current until finish))\n"
        );
    }
}
