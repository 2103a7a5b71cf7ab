//! `status`: one entry per table being rewritten, read from the state schema
//! and the server, so it works from any machine.

use tokio_postgres::Client;

use crate::error::Error;
use crate::state;

/// One table's status.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableStatus {
    /// Source table, schema-qualified.
    pub table: String,
    /// `copying`, `streaming`, `cutting_over`, `cut_over`, `failed`, `aborted`.
    pub phase: String,
    /// Shadow table, schema-qualified.
    pub shadow_table: String,
    /// The old table after cutover.
    pub old_table: Option<String>,
    /// Rows copied.
    pub rows_copied: i64,
    /// Estimated rows.
    pub rows_estimate: i64,
    /// WAL bytes the job is behind the server (while streaming).
    pub lag_bytes: Option<i64>,
    /// WAL retained by the job's slot, bytes.
    pub wal_retained_bytes: Option<i64>,
    /// Whether a process is streaming from the slot now.
    pub slot_active: Option<bool>,
    /// Last error.
    pub error: Option<String>,
    /// Job id (shared by tables rewritten together).
    pub job_id: String,
    /// Replication slot.
    pub slot_name: Option<String>,
    /// Applied position.
    pub applied_lsn: Option<String>,
    /// Last update of the row.
    pub updated_at: String,
    /// Parent rows in the job's id map, as recorded at its load.
    pub id_map_users: Option<i64>,
    /// Bytes of the job's id map, as recorded at its load.
    pub id_map_bytes: Option<i64>,
    /// Whether the job's owner (and a cutover) is alive, and what to run
    /// when it is not (see [`crate::resume`]); `None` for a finished job.
    #[serde(flatten)]
    pub liveness: Option<crate::resume::Liveness>,
}

/// Read every job and its slot.
pub async fn load(client: &Client) -> Result<Vec<TableStatus>, Error> {
    let jobs = state::list_jobs(client).await?;
    let current: Option<String> = client
        .query_one(
            "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END",
            &[],
        )
        .await
        .map_err(Error::db("read the current WAL position"))?
        .get(0);
    let current = current.and_then(|c| c.parse::<crate::pg::Lsn>().ok());
    let liveness = crate::resume::liveness(client, &jobs).await?;
    let mut out = Vec::with_capacity(jobs.len());
    for j in jobs {
        let live = liveness.get(&j.source).cloned();
        let (retained, active, confirmed) = match &j.slot_name {
            Some(slot) => {
                let row = client
                    .query_opt(
                        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, active, confirmed_flush_lsn::text
                           FROM pg_replication_slots WHERE slot_name = $1",
                        &[slot],
                    )
                    .await
                    .map_err(Error::db("read pg_replication_slots"))?;
                match row {
                    Some(r) => (
                        r.get::<_, Option<i64>>(0),
                        Some(r.get::<_, bool>(1)),
                        r.get::<_, Option<String>>(2)
                            .and_then(|l| l.parse::<crate::pg::Lsn>().ok()),
                    ),
                    None => (None, None, None),
                }
            }
            None => (None, None, None),
        };
        // The job stands at the furthest of its recorded applied position, the
        // slot's confirmed position (which also moves while only unpublished
        // tables change) and, before anything was applied, its consistent point.
        let stands_at = [j.applied_lsn, confirmed, j.consistent_lsn]
            .into_iter()
            .flatten()
            .max();
        let lag = match (j.phase.as_str(), current, stands_at) {
            ("streaming" | "cutting_over", Some(c), Some(a)) => Some(c.bytes_since(a) as i64),
            _ => j.lag_bytes,
        };
        out.push(TableStatus {
            table: j.table,
            phase: j.phase,
            shadow_table: j.shadow_table,
            old_table: j.old_table,
            rows_copied: j.rows_copied,
            rows_estimate: j.rows_estimate,
            lag_bytes: lag,
            wal_retained_bytes: retained,
            slot_active: active,
            error: j.error,
            job_id: j.job_id.to_string(),
            slot_name: j.slot_name,
            applied_lsn: j.applied_lsn.map(|l| l.to_string()),
            updated_at: j.updated_at,
            id_map_users: j.id_map_users,
            id_map_bytes: j.id_map_bytes,
            liveness: live,
        });
    }
    Ok(out)
}

fn human_bytes(b: i64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", b / 1024.0 / 1024.0 / 1024.0)
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// `copied/estimate` while the estimate means something; the count alone
/// when the planner's estimate is missing (a table never analyzed reads 0 or
/// -1) or already passed, instead of a confusing `50000/0`.
fn rows_cell(copied: i64, estimate: i64) -> String {
    if estimate > 0 && estimate >= copied {
        format!("{copied}/{estimate}")
    } else {
        copied.to_string()
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
            r.table.clone(),
            match &r.liveness {
                Some(l) if !l.owner_alive => format!("{} (owner gone)", r.phase),
                Some(l) if l.stuck_cutover => format!("{} (stuck)", r.phase),
                _ => r.phase.clone(),
            },
            rows_cell(r.rows_copied, r.rows_estimate),
            r.lag_bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
            r.wal_retained_bytes
                .map(human_bytes)
                .unwrap_or_else(|| "-".into()),
            r.old_table.clone().unwrap_or_else(|| "-".into()),
            r.error.clone().unwrap_or_else(|| "-".into()),
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
    out.push_str(&crate::resume::render_liveness(rows));
    out
}

/// One line per job whose id map size was recorded: rows, memory and bytes
/// per user (the map is held by the job's `rewrite` process).
fn id_map_lines(rows: &[TableStatus]) -> String {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = String::new();
    for r in rows {
        if let (Some(users), Some(bytes)) = (r.id_map_users, r.id_map_bytes) {
            if seen.insert(r.job_id.as_str()) {
                let per = if users > 0 {
                    bytes as f64 / users as f64
                } else {
                    0.0
                };
                out.push_str(&format!(
                    "id map of job {}: {users} users, {} ({per:.1} B/user) at load\n",
                    &r.job_id[..r.job_id.len().min(8)],
                    human_bytes(bytes)
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned_rows() {
        let row = TableStatus {
            table: "public.sessions".into(),
            phase: "streaming".into(),
            shadow_table: "public._rekey_new_sessions".into(),
            old_table: None,
            rows_copied: 10,
            rows_estimate: 12,
            lag_bytes: Some(2048),
            wal_retained_bytes: Some(5 * 1024 * 1024),
            slot_active: Some(true),
            error: None,
            job_id: "j".into(),
            slot_name: Some("s".into()),
            applied_lsn: Some("0/1".into()),
            updated_at: "now".into(),
            id_map_users: None,
            id_map_bytes: None,
            liveness: None,
        };
        let text = render(std::slice::from_ref(&row));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let with_map = TableStatus {
            id_map_users: Some(1000),
            id_map_bytes: Some(16_400),
            ..row.clone()
        };
        let text = render(&[with_map.clone(), with_map]);
        assert!(
            text.ends_with("id map of job j: 1000 users, 16.0 KiB (16.4 B/user) at load\n"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("public.sessions  streaming  10/12  2.0 KiB  5.0 MiB"),
            "{text}"
        );
        assert_eq!(render(&[]), "no pg-rekey jobs\n");
    }

    #[test]
    fn rows_show_the_estimate_only_while_it_means_something() {
        assert_eq!(rows_cell(10, 12), "10/12");
        assert_eq!(rows_cell(12, 12), "12/12");
        assert_eq!(rows_cell(50_000, 0), "50000");
        assert_eq!(rows_cell(0, -1), "0");
        assert_eq!(rows_cell(13, 12), "13");
    }
}
