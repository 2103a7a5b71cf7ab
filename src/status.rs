//! `status`: one entry per table being rewritten, read from the state schema
//! and the server, so it works from any machine; and per parent, the whole
//! journey with the next command to run ([`journey`]).

pub mod journey;

use tokio_postgres::Client;

use crate::error::Error;
use crate::state;

/// One table's status: its job row and what `status` reads beside it (the
/// slot, the live lag, whether the old table and the owner are still
/// there). Serialized as one flat object, the `status --json` contract.
#[derive(Debug, Clone)]
pub struct TableStatus {
    /// The job row.
    pub job: state::JobRow,
    /// The phase shown: the job's (`copying`, `streaming`, `cutting_over`,
    /// `cut_over`, `failed`, `aborted`, or a newer version's), and
    /// `reverse_streaming` for a table cut over with a way back (stored as
    /// `cut_over`: the job keeps its old table current).
    pub phase: String,
    /// Whether the old table still exists (`None` before cutover). A job
    /// whose old table was dropped by hand is finished: `status --prune`
    /// clears its row.
    pub old_table_exists: Option<bool>,
    /// WAL bytes the job is behind the server: measured now while the job
    /// runs, else the figure the job row recorded.
    pub lag_bytes: Option<i64>,
    /// How far behind in time, seconds (see [`crate::lag::JobLag::seconds`]).
    pub lag_seconds: Option<f64>,
    /// WAL retained by the job's slot, bytes.
    pub wal_retained_bytes: Option<i64>,
    /// Whether a process is streaming from the slot now.
    pub slot_active: Option<bool>,
    /// Whether the job's owner (and a cutover) is alive, and what to run
    /// when it is not (see [`crate::resume`]); `None` for a finished job.
    pub liveness: Option<crate::resume::Liveness>,
}

impl TableStatus {
    /// The job id's first characters, as the lines under the table show it.
    fn short_job_id(&self) -> String {
        self.job.job_id.to_string().chars().take(8).collect()
    }
}

/// The `status --json` object of one table: these keys in this order, the
/// liveness fields last (absent for a finished job).
impl serde::Serialize for TableStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let j = &self.job;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("table", &j.table)?;
        m.serialize_entry("phase", &self.phase)?;
        m.serialize_entry("way_back", &j.way_back)?;
        m.serialize_entry("shadow_table", &j.shadow_table)?;
        m.serialize_entry("old_table", &j.old_table)?;
        m.serialize_entry("old_table_exists", &self.old_table_exists)?;
        m.serialize_entry("rows_copied", &j.rows_copied)?;
        m.serialize_entry("rows_estimate", &j.rows_estimate)?;
        m.serialize_entry("lag_bytes", &self.lag_bytes)?;
        m.serialize_entry("lag_seconds", &self.lag_seconds)?;
        m.serialize_entry("wal_retained_bytes", &self.wal_retained_bytes)?;
        m.serialize_entry("slot_active", &self.slot_active)?;
        m.serialize_entry("error", &j.error)?;
        m.serialize_entry("job_id", &j.job_id.to_string())?;
        m.serialize_entry("slot_name", &j.slot_name)?;
        m.serialize_entry("applied_lsn", &j.applied_lsn.map(|l| l.to_string()))?;
        m.serialize_entry("updated_at", &j.updated_at)?;
        m.serialize_entry("id_map_users", &j.id_map_users)?;
        m.serialize_entry("id_map_bytes", &j.id_map_bytes)?;
        if let Some(crate::resume::Liveness {
            owner_alive,
            owner_gone_since,
            stuck_cutover,
            next_command,
        }) = &self.liveness
        {
            m.serialize_entry("owner_alive", owner_alive)?;
            m.serialize_entry("owner_gone_since", owner_gone_since)?;
            m.serialize_entry("stuck_cutover", stuck_cutover)?;
            m.serialize_entry("next_command", next_command)?;
        }
        m.end()
    }
}

/// Read every job and its slot.
pub async fn load(client: &Client) -> Result<Vec<TableStatus>, Error> {
    let jobs = state::list_jobs(client).await?;
    let in_recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(Error::db("ask whether the server is a standby"))?
        .get(0);
    // The same figure the rewrite process shows and the cutover gates on
    // (see `crate::lag::stands_at`).
    // No job rows (or no state schema yet): nothing to measure.
    let lags = if in_recovery || jobs.is_empty() {
        Vec::new()
    } else {
        crate::lag::job_lags(client, None).await?
    };
    let liveness = crate::resume::liveness(client, &jobs).await?;
    let mut out = Vec::with_capacity(jobs.len());
    for j in jobs {
        let alive = liveness.get(&j.source).cloned();
        let (retained, active) = match &j.slot_name {
            Some(slot) => {
                let row = client
                    .query_opt(
                        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, active
                           FROM pg_replication_slots WHERE slot_name = $1",
                        &[slot],
                    )
                    .await
                    .map_err(Error::db("read pg_replication_slots"))?;
                match row {
                    Some(r) => (r.get::<_, Option<i64>>(0), Some(r.get::<_, bool>(1))),
                    None => (None, None),
                }
            }
            None => (None, None),
        };
        let old_table_exists = match &j.old_table {
            Some(old) => Some(
                client
                    .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[old])
                    .await
                    .map_err(Error::db("look for the old table"))?
                    .get::<_, bool>(0),
            ),
            None => None,
        };
        let live = lags.iter().find(|l| l.job_id == j.job_id);
        let phase = if j.way_back && j.phase == state::Phase::CutOver {
            "reverse_streaming".to_string()
        } else {
            j.phase.to_string()
        };
        let (lag, lag_seconds) = match (phase.as_str(), live) {
            ("copying" | "streaming" | "cutting_over" | "reverse_streaming", Some(l)) => {
                (Some(i64::try_from(l.bytes).unwrap_or(i64::MAX)), l.seconds)
            }
            _ => (j.lag_bytes, None),
        };
        out.push(TableStatus {
            job: j,
            phase,
            old_table_exists,
            lag_bytes: lag,
            lag_seconds,
            wal_retained_bytes: retained,
            slot_active: active,
            liveness: alive,
        });
    }
    Ok(out)
}

fn human_bytes(b: i64) -> String {
    crate::units::format_bytes(u64::try_from(b).unwrap_or(0))
}

/// The lag as the progress bar shows it: bytes, and time when known.
fn lag_cell(bytes: Option<i64>, seconds: Option<f64>) -> String {
    match (bytes, seconds) {
        (None, _) => "-".into(),
        (Some(b), None) => human_bytes(b),
        (Some(b), Some(s)) => format!(
            "{} / {}",
            human_bytes(b),
            crate::units::format_duration(
                std::time::Duration::try_from_secs_f64(s).unwrap_or_default()
            )
        ),
    }
}

/// `copied/estimate` while the estimate means something; the count alone
/// when the planner's estimate is missing (a table never analyzed reads 0 or
/// -1) or already passed, instead of a confusing `50000/0`.
fn rows_cell(copied: i64, estimate: i64) -> String {
    use crate::progress::thousands;
    let n = |v: i64| thousands(u64::try_from(v).unwrap_or(0));
    if estimate > 0 && estimate >= copied {
        format!("{}/{}", n(copied), n(estimate))
    } else {
        n(copied)
    }
}

/// A table for terminals.
pub fn render(rows: &[TableStatus]) -> String {
    if rows.is_empty() {
        return "no pg-rekey jobs\n".to_string();
    }
    let mut lines = vec![[
        "TABLE".to_string(),
        "PHASE".to_string(),
        "ROWS".to_string(),
        "LAG".to_string(),
        "WAL RETAINED".to_string(),
        "OLD TABLE".to_string(),
        "ERROR".to_string(),
    ]];
    for r in rows {
        lines.push([
            r.job.table.clone(),
            match &r.liveness {
                Some(l) if !l.owner_alive => format!("{} (owner gone)", r.phase),
                Some(l) if l.stuck_cutover => format!("{} (stuck)", r.phase),
                _ => r.phase.clone(),
            },
            rows_cell(r.job.rows_copied, r.job.rows_estimate),
            lag_cell(r.lag_bytes, r.lag_seconds),
            r.wal_retained_bytes
                .map(human_bytes)
                .unwrap_or_else(|| "-".into()),
            match (&r.job.old_table, r.old_table_exists) {
                (Some(o), Some(false)) => format!("{o} (dropped)"),
                (Some(o), _) => o.clone(),
                (None, _) => "-".into(),
            },
            r.job.error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in lines {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 6 {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&id_map_lines(rows));
    out.push_str(&render_liveness(rows));
    let finished = rows
        .iter()
        .filter(|r| matches!(r.phase.as_str(), "cut_over" | "aborted") && !r.job.way_back)
        .count();
    if finished > 0 {
        out.push_str(&format!(
            "{finished} finished job row{} (kept for the record); `pg-rekey status --prune` clears {}\n",
            if finished == 1 { "" } else { "s" },
            if finished == 1 { "it" } else { "them" }
        ));
    }
    out
}

/// One line per job whose id map size was recorded: rows, memory and bytes
/// per user (the map is held by the job's `rewrite` process).
fn id_map_lines(rows: &[TableStatus]) -> String {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = String::new();
    for r in rows {
        if let (Some(users), Some(bytes)) = (r.job.id_map_users, r.job.id_map_bytes) {
            if seen.insert(r.job.job_id) {
                let per = if users > 0 {
                    bytes as f64 / users as f64
                } else {
                    0.0
                };
                out.push_str(&format!(
                    "id map of job {}: {users} users, {} ({per:.1} B/user) at load\n",
                    r.short_job_id(),
                    human_bytes(bytes)
                ));
            }
        }
    }
    out
}

/// `status --watch`: redraw every `every` until Ctrl-C. On a terminal the
/// screen is cleared between draws; otherwise (and with `--json`, one
/// object per line) each draw is appended.
pub async fn watch(
    client: &Client,
    every: std::time::Duration,
    json: bool,
    named: Option<(crate::pg::QualifiedName, Option<String>)>,
) -> Result<u8, Error> {
    use std::io::IsTerminal;
    let terminal = std::io::stdout().is_terminal();
    let mut stop = crate::console::shutdown_signal();
    loop {
        let rows = load(client).await?;
        let journeys = journey::load_for_status(client, &rows, named.clone()).await?;
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let text = if json {
            let v =
                serde_json::json!({ "at": now.to_string(), "tables": rows, "journeys": journeys });
            format!("{v}\n")
        } else if terminal {
            format!(
                "\x1b[H\x1b[2J{now}  (every {}; Ctrl-C to stop)\n{}{}",
                humantime::format_duration(every),
                render(&rows),
                journey::render(&journeys)
            )
        } else {
            format!("{now}\n{}{}\n", render(&rows), journey::render(&journeys))
        };
        crate::console::print(&text)?;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return Ok(0),
        }
    }
}

/// Lines under the `status` table for jobs whose owner or cutover is gone.
pub fn render_liveness(rows: &[TableStatus]) -> String {
    let mut out = String::new();
    let mut seen = std::collections::BTreeSet::new();
    for r in rows {
        let Some(l) = &r.liveness else { continue };
        if !l.owner_alive && seen.insert(r.job.job_id) {
            let tables: Vec<&str> = rows
                .iter()
                .filter(|o| o.job.job_id == r.job.job_id)
                .map(|o| o.job.table.as_str())
                .collect();
            out.push_str(&format!(
                "job {} ({}): OWNER GONE since {} (last update); its slot {} retains {} of WAL\n  next: {}\n",
                r.short_job_id(),
                tables.join(", "),
                l.owner_gone_since.as_deref().unwrap_or("?"),
                r.job.slot_name.as_deref().unwrap_or("-"),
                r.wal_retained_bytes
                    .map(|b| crate::progress::format_bytes(u64::try_from(b).unwrap_or(0)))
                    .unwrap_or_else(|| "no WAL (slot missing)".into()),
                l.next_command.as_deref().unwrap_or("-"),
            ));
        }
        if l.stuck_cutover {
            out.push_str(&format!(
                "{}: STUCK in cutting_over — no cutover is running (killed?); the swap did not commit\n  next: {}\n",
                r.job.table,
                if l.owner_alive {
                    l.next_command.clone().unwrap_or_default()
                } else {
                    format!("resume the rewrite first, then pg-rekey cutover --table {}", r.job.table)
                },
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::QualifiedName;

    #[test]
    fn renders_aligned_rows() {
        let mut job = state::JobRow::example(QualifiedName::new("public", "sessions"), "streaming");
        job.rows_copied = 10;
        job.rows_estimate = 12;
        job.slot_name = Some("s".into());
        job.applied_lsn = Some(crate::pg::Lsn(1));
        job.updated_at = "now".into();
        let row = TableStatus {
            job,
            phase: "streaming".into(),
            old_table_exists: None,
            lag_bytes: Some(2048),
            lag_seconds: Some(0.25),
            wal_retained_bytes: Some(5 * 1024 * 1024),
            slot_active: Some(true),
            liveness: None,
        };
        let text = render(std::slice::from_ref(&row));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let mut with_map = row.clone();
        with_map.job.id_map_users = Some(1000);
        with_map.job.id_map_bytes = Some(16_400);
        let text = render(&[with_map.clone(), with_map]);
        assert!(
            text.ends_with("id map of job 00000000: 1000 users, 16.0 KiB (16.4 B/user) at load\n"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("public.sessions  streaming  10/12  2.00 KiB / 250ms  5.00 MiB"),
            "{text}"
        );
        assert_eq!(render(&[]), "no pg-rekey jobs\n");
    }

    /// The `status --json` object: every key in the order the contract
    /// has, the liveness fields last and only when known.
    #[test]
    fn json_keys_and_order_are_the_contract() {
        let mut job = state::JobRow::example(QualifiedName::new("public", "sessions"), "cut_over");
        job.job_id = uuid::Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0);
        job.old_table = Some("public._rekey_old_sessions".into());
        job.error = Some("x \"y\"".into());
        job.applied_lsn = Some(crate::pg::Lsn(0x1_0000_0010));
        job.way_back = true;
        job.id_map_users = Some(3);
        let mut r = TableStatus {
            job,
            phase: "reverse_streaming".into(),
            old_table_exists: Some(true),
            lag_bytes: Some(5),
            lag_seconds: Some(0.125),
            wal_retained_bytes: None,
            slot_active: Some(false),
            liveness: None,
        };
        let head = r#"{"table":"public.sessions","phase":"reverse_streaming","way_back":true,"shadow_table":"public._rekey_new_sessions","old_table":"public._rekey_old_sessions","old_table_exists":true,"rows_copied":0,"rows_estimate":0,"lag_bytes":5,"lag_seconds":0.125,"wal_retained_bytes":null,"slot_active":false,"error":"x \"y\"","job_id":"12345678-9abc-def0-1234-56789abcdef0","slot_name":null,"applied_lsn":"1/10","updated_at":"","id_map_users":3,"id_map_bytes":null"#;
        assert_eq!(serde_json::to_string(&r).unwrap(), format!("{head}}}"));
        r.liveness = Some(crate::resume::Liveness {
            owner_alive: false,
            owner_gone_since: Some("t".into()),
            stuck_cutover: true,
            next_command: None,
        });
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            format!(
                r#"{head},"owner_alive":false,"owner_gone_since":"t","stuck_cutover":true,"next_command":null}}"#
            )
        );
    }

    #[test]
    fn rows_show_the_estimate_only_while_it_means_something() {
        assert_eq!(rows_cell(10, 12), "10/12");
        assert_eq!(rows_cell(12, 12), "12/12");
        assert_eq!(rows_cell(50_000, 0), "50,000");
        assert_eq!(rows_cell(1_234_567, 2_000_000), "1,234,567/2,000,000");
        assert_eq!(rows_cell(0, -1), "0");
        assert_eq!(rows_cell(13, 12), "13");
    }
}
