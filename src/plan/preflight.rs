//! Preflight: everything `plan` reports, collected in one pass.
//!
//! The preflight never stops at the first problem: each check adds
//! [`Finding`]s (a severity, a stable `code`, a message naming the cause and
//! the fix) so one run lists everything an operator must fix. Only a failure to
//! read the catalogs at all is an `Err`.
//!
//! What is refused (blockers) and why:
//! - server: older than PostgreSQL 14 (pgoutput has no `messages` option, and
//!   the fences need it); `wal_level` not `logical`; no free replication slot or WAL sender;
//!   a role without REPLICATION (or superuser, or `rds_replication`); no CREATE
//!   on the database (the state schema and the publication need it).
//! - parent: no single-column integer primary key; the uuid column missing, not
//!   `uuid`, nullable or without a unique index on it alone; REPLICA IDENTITY
//!   NOTHING (publishing it would break the application's UPDATE/DELETE).
//! - table: no primary key and no replica identity index (rows cannot be matched
//!   while streaming); REPLICA IDENTITY NOTHING; partitioned tables, partitions
//!   and inheritance trees (the shadow would need the same tree and pgoutput
//!   reports changes per leaf); UNLOGGED tables (not logically decoded); a role
//!   that does not own the table (publishing and renaming it need ownership); a
//!   reference column of a domain type or generated, or also part of another
//!   foreign key, or referenced by another table's foreign key (the type change
//!   would break that key); orphaned references; every object depending on
//!   a reference column that breaks on uuid (each tried on its own in a
//!   rolled-back transaction by [`super::dependents`]: a CHECK, an index
//!   expression or predicate, a generated column, a view, a policy, a
//!   trigger's WHEN, a publication's row filter…, all reported in one run);
//!   views and policies that need the behaviour-keeping rewrite, unless
//!   planned for `cutover --rewrite-dependents` (then warnings); a shadow
//!   whose whole DDL the server still rejects (tried last, where nothing else
//!   blocks the table).
//! - warnings: long transactions holding an xid and prepared transactions
//!   (slot creation waits for them); `FOR ALL TABLES` publications (the shadow
//!   would be published too); a default on a reference column (dropped on the
//!   shadow); invalid indexes (not rebuilt); an existing shadow; integer columns
//!   without a foreign key whose name suggests a user reference (not acted on).
//! - info: disk needed, incoming foreign keys, dependent views and publication
//!   memberships (cutover must carry them), keys to other rewritten tables.

use std::fmt;

use tokio_postgres::Client;

use super::catalog::{self, TableDetail, OWN_PREFIX};
use super::dependents::{Dependent, DependentKind, Verdict};
use super::model::{IntKind, ParentSpec};
use super::PlanError;
use crate::pg::{quote_ident, QualifiedName};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// `rewrite` would fail or corrupt: must be fixed first.
    Blocker,
    /// Works, but look at it.
    Warning,
    /// For the record.
    Info,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Blocker => "BLOCKER",
            Severity::Warning => "warning",
            Severity::Info => "info",
        })
    }
}

/// One preflight finding.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Severity.
    pub severity: Severity,
    /// Stable machine-readable code (`wal_level`, `orphaned_references`, …).
    pub code: String,
    /// The table concerned, schema-qualified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The column concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// Cause and fix, one line.
    pub message: String,
    /// A count, where the finding has one (orphaned rows, bytes…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    /// Sample values (orphaned references: up to 10).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<i64>,
}

impl Finding {
    fn new(severity: Severity, code: &str, message: impl Into<String>) -> Finding {
        Finding {
            severity,
            code: code.to_string(),
            table: None,
            column: None,
            message: message.into(),
            count: None,
            samples: Vec::new(),
        }
    }

    fn table(mut self, t: &QualifiedName) -> Finding {
        self.table = Some(t.to_string());
        self
    }

    fn column(mut self, c: &str) -> Finding {
        self.column = Some(c.to_string());
        self
    }

    fn count(mut self, n: i64) -> Finding {
        self.count = Some(n);
        self
    }

    fn from_error(e: &PlanError) -> Finding {
        let f = Finding::new(Severity::Blocker, e.code(), e.to_string());
        match e {
            PlanError::TableNotFound { table }
            | PlanError::NotATable { table, .. }
            | PlanError::ParentNoPrimaryKey { table }
            | PlanError::ParentCompositeKey { table, .. }
            | PlanError::NoRowIdentity { table }
            | PlanError::UnexpectedDefinition { table, .. } => f.table(table),
            PlanError::ParentKeyNotInteger { table, column, .. }
            | PlanError::UuidColumnMissing { table, column }
            | PlanError::UuidColumnNotUuid { table, column, .. }
            | PlanError::UuidColumnNullable { table, column }
            | PlanError::UuidColumnNotUnique { table, column } => f.table(table).column(column),
            PlanError::Db { .. } => f,
        }
    }
}

/// A reference column as `rewrite` will treat it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReferencePlan {
    /// Column name.
    pub column: String,
    /// Its integer type.
    pub from: IntKind,
    /// The foreign key(s) that make it a reference.
    pub foreign_keys: Vec<String>,
    /// Whether the column allows NULL (NULL stays NULL).
    pub nullable: bool,
}

/// One table `rewrite` would rewrite.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TablePlan {
    /// The source table, schema-qualified.
    pub table: String,
    /// The shadow table, schema-qualified.
    pub shadow_table: String,
    /// Reference columns that become `uuid`.
    pub references: Vec<ReferencePlan>,
    /// Row identity columns.
    pub key: Vec<String>,
    /// Estimated rows (`reltuples`); `None` when the table was never
    /// vacuumed or analyzed, so the server has no estimate.
    pub row_estimate: Option<i64>,
    /// Estimated bytes the shadow needs (table, indexes, wider references).
    pub bytes_needed: i64,
    /// Everything read from the catalogs (not serialized).
    #[serde(skip)]
    pub detail: TableDetail,
}

/// What `plan` prints: the parent, the tables and every finding.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanReport {
    /// The parent, as asked for.
    pub parent: String,
    /// Its key column, when it could be read.
    pub parent_key: Option<String>,
    /// The uuid column asked for.
    pub uuid_column: String,
    /// Tables that could be read.
    pub tables: Vec<TablePlan>,
    /// Every finding, blockers first.
    pub findings: Vec<Finding>,
    /// Every object that depends on a reference column (or that the swap
    /// cannot carry), with its verdict.
    pub dependents: Vec<Dependent>,
}

/// Options of a preflight.
#[derive(Debug, Clone, Copy, Default)]
pub struct PreflightOptions {
    /// The cutover will run with `--rewrite-dependents`: views and policies
    /// that need the behaviour-keeping rewrite are warnings, not blockers.
    pub rewrite_dependents: bool,
}

impl PlanReport {
    /// Whether any finding is a blocker (`plan` exits 1).
    pub fn has_blockers(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.severity == Severity::Blocker)
    }

    /// Findings with a given code (tests and callers that react to one).
    pub fn with_code<'a>(&'a self, code: &'a str) -> impl Iterator<Item = &'a Finding> + 'a {
        self.findings.iter().filter(move |f| f.code == code)
    }
}

/// Bytes in the one format every command prints ([`crate::units::format_bytes`]).
fn human_bytes(n: i64) -> String {
    crate::units::format_bytes(u64::try_from(n).unwrap_or(0))
}

impl fmt::Display for PlanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.parent_key {
            Some(k) => writeln!(
                f,
                "parent {} (key {k} -> uuid column {})",
                self.parent, self.uuid_column
            )?,
            None => writeln!(
                f,
                "parent {} (uuid column {})",
                self.parent, self.uuid_column
            )?,
        }
        writeln!(f, "rewrite would rebuild {} table(s):", self.tables.len())?;
        for t in &self.tables {
            let rows = match t.row_estimate {
                Some(n) => format!("~{n} rows"),
                None => format!(
                    "rows unknown: never analyzed, {} on disk",
                    human_bytes(t.detail.table_bytes)
                ),
            };
            writeln!(
                f,
                "  {} -> shadow {} ({rows}, ~{} needed; key {})",
                t.table,
                t.shadow_table,
                human_bytes(t.bytes_needed),
                t.key.join(", ")
            )?;
            for r in &t.references {
                writeln!(
                    f,
                    "    {} {} -> uuid{} (foreign key {})",
                    r.column,
                    r.from.sql_name(),
                    if r.nullable { ", nullable" } else { "" },
                    r.foreign_keys.join(", ")
                )?;
            }
        }
        let count = |s| self.findings.iter().filter(|x| x.severity == s).count();
        if !self.dependents.is_empty() {
            writeln!(f, "objects that depend on reference columns:")?;
            for d in &self.dependents {
                writeln!(f, "  [{}] {d}", d.kind)?;
            }
        }
        writeln!(
            f,
            "findings: {} blocker(s), {} warning(s), {} info",
            count(Severity::Blocker),
            count(Severity::Warning),
            count(Severity::Info)
        )?;
        for x in &self.findings {
            write!(f, "  {} [{}]", x.severity, x.code)?;
            match (&x.table, &x.column) {
                (Some(t), Some(c)) => write!(f, " {t}.{c}:")?,
                (Some(t), None) => write!(f, " {t}:")?,
                _ => write!(f, ":")?,
            }
            writeln!(f, " {}", x.message)?;
        }
        if self.has_blockers() {
            write!(f, "not ready: fix the blockers above, then run plan again")
        } else {
            write!(f, "ready")
        }
    }
}

/// Whether an integer column's name suggests a user reference without a foreign key.
pub fn suggests_user_reference(column: &str) -> bool {
    let c = column.to_ascii_lowercase();
    const EXACT: &[&str] = &[
        "owner_id",
        "author_id",
        "sender_id",
        "requester_id",
        "recipient_id",
        "assignee_id",
        "reviewer_id",
        "approver_id",
        "creator_id",
        "member_id",
        "uid",
    ];
    EXACT.contains(&c.as_str())
        || c.ends_with("user_id")
        || c.ends_with("_by")
        || c.ends_with("_by_id")
        || c.ends_with("userid")
        || EXACT.iter().any(|e| c.ends_with(&format!("_{e}")))
}

const SERVER_SQL: &str = "
SELECT pg_catalog.current_setting('wal_level') AS wal_level,
       pg_catalog.current_setting('server_version_num')::int4 AS version_num,
       pg_catalog.current_setting('server_version') AS version,
       pg_catalog.current_setting('max_replication_slots')::int4 AS max_slots,
       (SELECT count(*) FROM pg_catalog.pg_replication_slots)::int4 AS used_slots,
       pg_catalog.current_setting('max_wal_senders')::int4 AS max_senders,
       (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'walsender')::int4 AS used_senders,
       r.rolreplication, r.rolsuper,
       CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'rds_replication')
            THEN pg_catalog.pg_has_role('rds_replication', 'MEMBER') ELSE false END AS rds_replication,
       pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE') AS can_create,
       r.rolname::text AS role
FROM pg_catalog.pg_roles r WHERE r.rolname = current_user";

const LONG_XACT_SQL: &str = "
SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''),
       extract(epoch FROM now() - xact_start)::int8
FROM pg_catalog.pg_stat_activity
WHERE backend_xid IS NOT NULL AND pid <> pg_catalog.pg_backend_pid()
  AND xact_start < now() - interval '1 minute'
ORDER BY xact_start";

const PREPARED_SQL: &str = "
SELECT gid, extract(epoch FROM now() - prepared)::int8 FROM pg_catalog.pg_prepared_xacts
WHERE database = pg_catalog.current_database() ORDER BY prepared";

const SUGGESTIVE_SQL: &str = "
SELECT n.nspname::text, c.relname::text, a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence <> 't'
  AND a.attnum > 0 AND NOT a.attisdropped AND a.atttypid IN (20, 21, 23)
  AND n.nspname <> 'information_schema' AND pg_catalog.left(n.nspname::text, 3) <> 'pg_'
  AND n.nspname <> 'pgrekey'
  AND pg_catalog.left(c.relname::text, pg_catalog.length($1::text)) <> $1::text
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_constraint k
                  WHERE k.conrelid = c.oid AND k.contype = 'f' AND a.attnum = ANY (k.conkey))
ORDER BY 1, 2, a.attnum";

const INCOMING_SQL: &str = "
SELECT k.conname::text, n.nspname::text, c.relname::text,
       ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(k.confkey) u(x)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.x) AS cols
FROM pg_catalog.pg_constraint k
JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE k.contype = 'f' AND k.confrelid = $1 AND k.conrelid <> $1 AND k.conparentid = 0
ORDER BY 2, 3, 1";

const PUBLICATIONS_SQL: &str = "
SELECT p.pubname::text, p.puballtables
FROM pg_catalog.pg_publication p
WHERE p.puballtables
   OR EXISTS (SELECT FROM pg_catalog.pg_publication_tables t
              WHERE t.pubname = p.pubname AND t.schemaname = $1 AND t.tablename = $2)
ORDER BY 1";

const VIEWS_SQL: &str = "
SELECT DISTINCT pg_catalog.format('%I.%I', vn.nspname, v.relname)
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace
WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
  AND d.refobjid = $1 AND v.oid <> $1
ORDER BY 1";

/// Run every check and return the report. `tables`: `None` discovers every
/// table with a foreign key to the parent's key.
///
/// Takes `&mut Client` because the shadow DDL is tried in a transaction that is
/// rolled back; the session must not be inside a transaction already. The orphan
/// check scans each table once (an anti-join against the parent).
pub async fn preflight(
    client: &mut Client,
    parent_table: &QualifiedName,
    uuid_column: &str,
    tables: Option<&[QualifiedName]>,
) -> Result<PlanReport, PlanError> {
    preflight_with(
        client,
        parent_table,
        uuid_column,
        tables,
        PreflightOptions::default(),
    )
    .await
}

/// [`preflight`] with options.
pub async fn preflight_with(
    client: &mut Client,
    parent_table: &QualifiedName,
    uuid_column: &str,
    tables: Option<&[QualifiedName]>,
    options: PreflightOptions,
) -> Result<PlanReport, PlanError> {
    let mut findings = Vec::new();
    server_checks(client, &mut findings).await?;

    let mut report = PlanReport {
        parent: parent_table.to_string(),
        parent_key: None,
        uuid_column: uuid_column.to_string(),
        tables: Vec::new(),
        findings: Vec::new(),
        dependents: Vec::new(),
    };

    let facts = match catalog::parent_facts(client, parent_table, uuid_column).await {
        Ok(f) => Some(f),
        Err(e @ PlanError::Db { .. }) => return Err(e),
        Err(e) => {
            findings.push(Finding::from_error(&e));
            None
        }
    };
    let Some(facts) = facts else {
        report.findings = sorted(findings);
        return Ok(report);
    };
    findings.extend(facts.problems.iter().map(Finding::from_error));
    report.parent_key = facts.key_column.clone();
    let parent_row = client
        .query_one(
            "SELECT relreplident::text, pg_catalog.pg_has_role(relowner, 'USAGE') FROM pg_catalog.pg_class WHERE oid = $1",
            &[&facts.oid],
        )
        .await
        .map_err(PlanError::db("reading the parent's owner"))?;
    if parent_row.get::<_, String>(0) == "n" {
        findings.push(
            Finding::new(Severity::Blocker, "replica_identity_nothing", format!(
                "{parent_table} has REPLICA IDENTITY NOTHING; once published (to keep the id map current) the application's UPDATE and DELETE on it would fail: ALTER TABLE {} REPLICA IDENTITY DEFAULT",
                parent_table.quoted()
            ))
            .table(parent_table),
        );
    }
    if !parent_row.get::<_, bool>(1) {
        findings.push(not_owner(parent_table));
    }

    // A spec good enough to plan with even when the uuid column has problems
    // (those are already blockers): the table checks still run.
    let (Some(key_attnum), Some(key_column), Some(key_kind)) =
        (facts.key_attnum, facts.key_column.clone(), facts.key_kind)
    else {
        report.findings = sorted(findings);
        return Ok(report);
    };
    let parent = ParentSpec {
        table: facts.table.clone(),
        oid: facts.oid,
        key_column,
        key_kind,
        uuid_column: uuid_column.to_string(),
    };

    let names: Vec<QualifiedName> = match tables {
        Some(t) => t.to_vec(),
        None => catalog::discover_by_key(client, facts.oid, key_attnum).await?,
    };
    if names.is_empty() {
        findings.push(Finding::new(
            Severity::Info,
            "nothing_to_rewrite",
            format!(
                "no table has a foreign key to {parent_table}.{}; nothing to rewrite",
                parent.key_column
            ),
        ));
    }

    let all_tables_pubs: Vec<String> = client
        .query(
            "SELECT pubname::text FROM pg_catalog.pg_publication WHERE puballtables ORDER BY 1",
            &[],
        )
        .await
        .map_err(PlanError::db("reading publications"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for p in &all_tables_pubs {
        findings.push(Finding::new(
            Severity::Warning,
            "for_all_tables_publication",
            format!(
                "publication {p:?} is FOR ALL TABLES: every rewritten table is in it and so will be each shadow table; its subscribers must have the shadow tables or stop with an error — make the publication list its tables, or create the shadows on the subscribers first"
            ),
        ));
    }

    for name in &names {
        if name == parent_table {
            findings.push(
                Finding::new(Severity::Blocker, "table_is_parent", format!(
                    "{name} is the parent itself; its own references to its key are not rewritten: leave it out of --table"
                ))
                .table(name),
            );
            continue;
        }
        let detail = match catalog::load_table(client, name, &parent).await {
            Ok(d) => d,
            Err(e @ PlanError::Db { .. }) => return Err(e),
            Err(e) => {
                findings.push(Finding::from_error(&e));
                continue;
            }
        };
        let mut table_findings = table_findings(&detail, &parent);
        server_table_checks(client, &detail, &parent, &names, &mut table_findings).await?;
        findings.extend(table_findings);
        report.tables.push(table_plan(detail));
    }

    // Every dependent of every reference column, in one trial.
    let triable: Vec<&TableDetail> = report
        .tables
        .iter()
        .map(|t| &t.detail)
        .filter(|d| !d.inheritance && d.spec.reference_columns().next().is_some())
        .collect();
    // The trial needs a scratch schema; without CREATE on the database
    // (already a blocker) it cannot run, and says so.
    let dependents = if findings.iter().any(|f| f.code == "no_create_on_database") {
        findings.push(Finding::new(
            Severity::Warning,
            "dependents_not_checked",
            "objects depending on the reference columns were not tried against uuid (the trial needs CREATE on the database); grant it and plan again",
        ));
        Vec::new()
    } else {
        super::dependents::check(client, &triable, &parent).await?
    };
    findings.extend(dependent_findings(&dependents, options));
    // The whole shadow DDL as `rewrite` runs it, for what the per-object
    // trial cannot see; only where nothing else blocks the table (its first
    // failure would repeat a finding).
    for t in &report.tables {
        let name = t.detail.name().to_string();
        let blocked = findings
            .iter()
            .any(|f| f.severity == Severity::Blocker && f.table.as_deref() == Some(name.as_str()));
        if !blocked {
            let mut more = Vec::new();
            try_shadow_ddl(client, &t.detail, &parent, &mut more).await?;
            findings.extend(more);
        }
    }
    report.dependents = dependents;

    suggestive_names(client, &mut findings).await?;
    report.findings = sorted(findings);
    Ok(report)
}

/// Findings for the dependents: a blocker for each that blocks; for each
/// view or policy that needs the behaviour-keeping rewrite, a blocker unless
/// the cutover will rewrite it (then a warning), both with the definition.
/// Other tables' foreign keys already have their own finding.
/// A policy that translates an integer through the parent reads the parent
/// as the querying role (a view reads it as its owner, unless
/// `security_invoker`).
fn lookup_note(d: &Dependent, definition: &str) -> &'static str {
    if definition.contains("_rekey_p") {
        if d.kind == DependentKind::Policy {
            " (the roles the policy applies to need SELECT on the parent's key and uuid columns)"
        } else {
            " (a security_invoker view's readers need SELECT on the parent's key and uuid columns)"
        }
    } else {
        ""
    }
}

fn dependent_findings(deps: &[Dependent], options: PreflightOptions) -> Vec<Finding> {
    let mut out = Vec::new();
    for d in deps {
        let col = d.columns.join(", ");
        let with = |f: Finding| {
            let f = Finding {
                table: Some(d.table.clone()),
                ..f
            };
            if col.is_empty() {
                f
            } else {
                f.column(&col)
            }
        };
        let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        match (&d.verdict, d.kind) {
            (_, DependentKind::ForeignKey)
            | (Verdict::Carried, _)
            | (_, DependentKind::Default) => {}
            (Verdict::Blocks { reason, fix }, _) => out.push(with(Finding::new(
                Severity::Blocker,
                "dependent_blocks",
                format!(
                    "{} {} breaks when the reference column becomes uuid: {reason}; fix: {fix}",
                    d.kind, d.object
                ),
            ))),
            (
                Verdict::Rewritten { definition },
                DependentKind::View | DependentKind::MaterializedView | DependentKind::Policy,
            ) => {
                if options.rewrite_dependents {
                    out.push(with(Finding::new(
                        Severity::Warning,
                        "dependent_rewritten",
                        format!("{} compares a reference column with an integer; cutover --rewrite-dependents re-creates it, returning the same rows, as: {}{}", d.object, one_line(definition), lookup_note(d, definition)),
                    )))
                } else {
                    out.push(with(Finding::new(
                        Severity::Blocker,
                        "dependent_needs_rewrite",
                        format!("{} compares a reference column with an integer and fails on uuid; run cutover with --rewrite-dependents (and plan with it) to re-create it, returning the same rows, as: {}{} — or change it yourself", d.object, one_line(definition), lookup_note(d, definition)),
                    )))
                }
            }
            (Verdict::Rewritten { definition }, _) => out.push(with(Finding::new(
                Severity::Warning,
                "dependent_changes",
                format!("{}: {definition}", d.object),
            ))),
        }
    }
    out
}

fn sorted(mut findings: Vec<Finding>) -> Vec<Finding> {
    // Stable: within a severity, the order the checks ran.
    findings.sort_by_key(|f| f.severity);
    findings
}

fn not_owner(table: &QualifiedName) -> Finding {
    Finding::new(Severity::Blocker, "not_owner", format!(
        "the current role does not own {table}; adding it to a publication and renaming it at cutover need ownership: run as its owner or GRANT <owner role> TO <this role>"
    ))
    .table(table)
}

fn table_plan(detail: TableDetail) -> TablePlan {
    let references = detail
        .spec
        .reference_columns()
        .filter_map(|c| {
            c.reference.map(|from| ReferencePlan {
                column: c.name.clone(),
                from,
                foreign_keys: detail
                    .reference_foreign_keys()
                    .filter(|f| f.columns.first() == Some(&c.name))
                    .map(|f| f.name.clone())
                    .collect(),
                nullable: !c.not_null,
            })
        })
        .collect();
    TablePlan {
        table: detail.spec.source.to_string(),
        shadow_table: detail.spec.shadow.to_string(),
        key: detail
            .spec
            .key
            .iter()
            .filter_map(|&i| detail.spec.columns.get(i).map(|c| c.name.clone()))
            .collect(),
        row_estimate: detail.rows_known.then_some(detail.row_estimate),
        bytes_needed: bytes_needed(&detail),
        references,
        detail,
    }
}

/// About the table plus its indexes, plus the wider references (uuid is 16 bytes).
fn bytes_needed(detail: &TableDetail) -> i64 {
    let widening: i64 = detail
        .spec
        .reference_columns()
        .filter_map(|c| c.reference)
        .map(|k| 16 - k.width() as i64)
        .sum();
    detail
        .table_bytes
        .saturating_add(detail.index_bytes)
        .saturating_add(detail.row_estimate.saturating_mul(widening))
}

/// Checks that need nothing but the catalog detail.
pub fn table_findings(detail: &TableDetail, parent: &ParentSpec) -> Vec<Finding> {
    let t = detail.name();
    let mut out = Vec::new();
    let blocker = |code: &str, msg: String| Finding::new(Severity::Blocker, code, msg).table(t);
    if detail.inheritance {
        out.push(blocker("inheritance_unsupported", format!(
            "{t} is partitioned, a partition or part of an inheritance tree; pg-rekey rewrites plain tables only (the shadow would need the same tree): rewrite it another way"
        )));
    }
    if detail.persistence == "u" {
        out.push(blocker("unlogged_table", format!(
            "{t} is UNLOGGED, so its changes are not logically decoded and cannot be streamed: ALTER TABLE {} SET LOGGED first",
            t.quoted()
        )));
    }
    if !detail.owned {
        out.push(not_owner(t));
    }
    if detail.replica_identity == "n" {
        out.push(blocker("replica_identity_nothing", format!(
            "{t} has REPLICA IDENTITY NOTHING; once published the application's UPDATE and DELETE on it would fail: ALTER TABLE {} REPLICA IDENTITY DEFAULT",
            t.quoted()
        )));
    }
    // Foreign keys to the parent key on columns that are not plain integers.
    for fk in detail.reference_foreign_keys() {
        let Some(col) = fk.columns.first() else {
            continue;
        };
        if let Some((spec, d)) = detail.column(col) {
            if spec.reference.is_none() {
                out.push(blocker("reference_type_unsupported", format!(
                    "{t}.{col} references {}.{} but is of type {} ({}); pg-rekey converts plain smallint, integer and bigint columns only: ALTER TABLE {} ALTER COLUMN {} TYPE {} first",
                    parent.table, parent.key_column, spec.type_sql,
                    if d.typtype == "d" { "a domain" } else { "not an integer" },
                    t.quoted(), quote_ident(col), parent.key_kind.sql_name()
                )).column(col));
            }
        }
    }
    let mut has_reference = false;
    for (spec, d) in detail.spec.columns.iter().zip(detail.columns.iter()) {
        if spec.reference.is_none() {
            continue;
        }
        has_reference = true;
        let col = &spec.name;
        if spec.generated {
            out.push(blocker("reference_generated", format!(
                "{t}.{col} is a generated column that references {}; a generated reference cannot be translated: make it a plain column first",
                parent.table
            )).column(col));
        }
        if let Some(default) = &d.default {
            out.push(Finding::new(Severity::Warning, "reference_default_dropped", format!(
                "{t}.{col} has DEFAULT {default}, an integer that cannot default a uuid; the shadow column has no default: after cutover set a uuid default yourself, or make the application supply the value"
            )).table(t).column(col));
        }
        for fk in detail
            .foreign_keys
            .iter()
            .filter(|f| !f.to_parent_key && f.columns.contains(col))
        {
            out.push(blocker("reference_in_other_foreign_key", format!(
                "{t}.{col} is also part of foreign key {:?} to {}, which would break when the column becomes uuid: drop that key or rewrite it first",
                fk.name, fk.referenced
            )).column(col));
        }
    }
    if !has_reference && !out.iter().any(|f| f.code == "reference_type_unsupported") {
        out.push(blocker("no_reference_columns", format!(
            "{t} has no smallint, integer or bigint column with a foreign key to {}({}); nothing to rewrite: leave it out of --table, or add the foreign key (NOT VALID, then VALIDATE CONSTRAINT)",
            parent.table, parent.key_column
        )));
    }
    for idx in detail.indexes.iter().filter(|i| !i.valid) {
        out.push(Finding::new(Severity::Warning, "invalid_index", format!(
            "index {:?} on {t} is invalid (a failed CREATE INDEX CONCURRENTLY?) and is not rebuilt on the shadow: DROP INDEX CONCURRENTLY it or REINDEX it",
            idx.name
        )).table(t));
    }
    out.push(
        Finding::new(Severity::Info, "disk_needed", format!(
            "the shadow of {t} needs about {} (table {} + indexes {}, references widened to 16 bytes) in its tablespace, until the old table is dropped",
            human_bytes(bytes_needed(detail)), human_bytes(detail.table_bytes), human_bytes(detail.index_bytes)
        )).table(t).count(bytes_needed(detail)),
    );
    out
}

/// Oldest server the stream works with: pgoutput's `messages` option (the
/// fences of `cutover` and `verify`) came with PostgreSQL 14.
pub const MIN_SERVER_VERSION_NUM: i32 = 140000;

/// A blocker when the server is older than [`MIN_SERVER_VERSION_NUM`].
fn version_finding(version_num: i32, version: String) -> Option<Finding> {
    (version_num < MIN_SERVER_VERSION_NUM).then(|| {
        Finding::new(
            Severity::Blocker,
            "server_version",
            format!(
                "PostgreSQL {version} is too old: pg-rekey needs 14 or newer (its stream asks pgoutput for logical decoding messages, \
                 added in 14, to fence cutover and verify); upgrade the server first"
            ),
        )
    })
}

/// Whether the role may set `session_replication_role`, which the apply
/// session needs (see [`crate::apply`]): judged by trial, in a transaction
/// rolled back at once, since who may set it depends on the version and on
/// the service (superuser; `GRANT SET ON PARAMETER` on 15+; `rds_superuser`
/// on RDS). Without it a rewrite would copy every table and then stop.
async fn session_replication_role_finding(
    client: &Client,
    role: &str,
    version_num: i32,
) -> Result<Option<Finding>, PlanError> {
    let tried = client
        .batch_execute("BEGIN; SET LOCAL session_replication_role = replica")
        .await;
    client
        .batch_execute("ROLLBACK")
        .await
        .map_err(PlanError::db(
            "roll back the trial of session_replication_role",
        ))?;
    match tried {
        Ok(()) => Ok(None),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            let fix = if version_num >= 150_000 {
                format!(
                    "GRANT SET ON PARAMETER session_replication_role TO {} (as a superuser)",
                    quote_ident(role)
                )
            } else {
                "on PostgreSQL 14 only a superuser may set it (on RDS: a member of rds_superuser): run rewrite as such a role, or upgrade to 15+ and grant it".to_string()
            };
            Ok(Some(Finding::new(Severity::Blocker, "no_session_replication_role", format!(
                "role {role:?} may not set session_replication_role, which the apply session needs (so the source's triggers and foreign-key actions do not run twice on the shadow): {fix}"
            ))))
        }
        Err(e) => Err(PlanError::Db {
            context: "try setting session_replication_role".into(),
            source: e,
        }),
    }
}

async fn server_checks(client: &Client, out: &mut Vec<Finding>) -> Result<(), PlanError> {
    let r = client
        .query_one(SERVER_SQL, &[])
        .await
        .map_err(PlanError::db("reading server settings"))?;
    out.extend(version_finding(r.get("version_num"), r.get("version")));
    let wal_level: String = r.get("wal_level");
    if wal_level != "logical" {
        out.push(Finding::new(Severity::Blocker, "wal_level", format!(
            "wal_level is {wal_level:?}; logical decoding needs 'logical': ALTER SYSTEM SET wal_level = logical, then restart the server"
        )));
    }
    let (max_slots, used_slots): (i32, i32) = (r.get("max_slots"), r.get("used_slots"));
    if used_slots >= max_slots {
        out.push(Finding::new(Severity::Blocker, "no_free_slot", format!(
            "all {max_slots} replication slots are in use; drop an unused slot (pg_drop_replication_slot) or raise max_replication_slots and restart"
        )).count(i64::from(max_slots - used_slots)));
    }
    let (max_senders, used_senders): (i32, i32) = (r.get("max_senders"), r.get("used_senders"));
    if used_senders >= max_senders {
        out.push(Finding::new(Severity::Blocker, "no_free_wal_sender", format!(
            "all {max_senders} WAL senders are busy; raise max_wal_senders and restart, or stop an idle replication client"
        )).count(i64::from(max_senders - used_senders)));
    }
    let role: String = r.get("role");
    let (replication, superuser, rds): (bool, bool, bool) = (
        r.get("rolreplication"),
        r.get("rolsuper"),
        r.get("rds_replication"),
    );
    if !(replication || superuser || rds) {
        out.push(Finding::new(Severity::Blocker, "no_replication_privilege", format!(
            "role {role:?} may not open a replication connection: ALTER ROLE {} REPLICATION (on RDS: GRANT rds_replication TO {})",
            quote_ident(&role), quote_ident(&role)
        )));
    }
    if let Some(f) = session_replication_role_finding(client, &role, r.get("version_num")).await? {
        out.push(f);
    }
    if !r.get::<_, bool>("can_create") {
        out.push(Finding::new(Severity::Blocker, "no_create_on_database", format!(
            "role {role:?} may not create schemas or publications in this database: GRANT CREATE ON DATABASE <db> TO {}",
            quote_ident(&role)
        )));
    }
    for r in client
        .query(LONG_XACT_SQL, &[])
        .await
        .map_err(PlanError::db("reading long transactions"))?
    {
        let (pid, user, app, secs): (i32, String, String, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        out.push(Finding::new(Severity::Warning, "long_transaction", format!(
            "backend {pid} (user {user:?}, application {app:?}) has held a transaction id for {secs} s; creating the replication slot waits until it ends: let it finish or pg_terminate_backend({pid})"
        )).count(secs));
    }
    for r in client
        .query(PREPARED_SQL, &[])
        .await
        .map_err(PlanError::db("reading prepared transactions"))?
    {
        let (gid, secs): (String, i64) = (r.get(0), r.get(1));
        out.push(Finding::new(Severity::Warning, "prepared_transaction", format!(
            "prepared transaction {gid:?} is {secs} s old; creating the replication slot waits until it is committed or rolled back: COMMIT PREPARED or ROLLBACK PREPARED it"
        )).count(secs));
    }
    Ok(())
}

async fn server_table_checks(
    client: &Client,
    detail: &TableDetail,
    parent: &ParentSpec,
    names: &[QualifiedName],
    out: &mut Vec<Finding>,
) -> Result<(), PlanError> {
    let t = detail.name();
    // Orphaned references: values with no parent row would stop the copy.
    for spec in detail.spec.reference_columns() {
        let col = quote_ident(&spec.name);
        let sql = format!(
            "WITH o AS (SELECT s.{col}::int8 AS v FROM {} s WHERE s.{col} IS NOT NULL \
               AND NOT EXISTS (SELECT FROM {} p WHERE p.{} = s.{col})) \
             SELECT (SELECT count(*) FROM o), ARRAY(SELECT DISTINCT v FROM o ORDER BY v LIMIT 10)",
            t.quoted(),
            parent.table.quoted(),
            quote_ident(&parent.key_column)
        );
        let r = client
            .query_one(sql.as_str(), &[])
            .await
            .map_err(PlanError::db(format!(
                "counting orphaned references in {t}.{}",
                spec.name
            )))?;
        let (n, samples): (i64, Vec<i64>) = (r.get(0), r.get(1));
        if n > 0 {
            let shown: Vec<String> = samples.iter().map(|v| v.to_string()).collect();
            let mut f = Finding::new(Severity::Blocker, "orphaned_references", format!(
                "{n} row(s) of {t} have {} values with no row in {} (e.g. {}); the foreign key is not validated or was bypassed: delete or fix those rows (or set them NULL), then VALIDATE the constraint",
                spec.name, parent.table, shown.join(", ")
            )).table(t).column(&spec.name).count(n);
            f.samples = samples;
            out.push(f);
        }
    }
    // Incoming foreign keys.
    let reference_names: Vec<&str> = detail
        .spec
        .reference_columns()
        .map(|c| c.name.as_str())
        .collect();
    for r in client
        .query(INCOMING_SQL, &[&detail.spec.oid])
        .await
        .map_err(PlanError::db(format!("reading foreign keys to {t}")))?
    {
        let (name, schema, table, cols): (String, String, String, Vec<String>) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let from = QualifiedName::new(schema, table);
        if let Some(c) = cols.iter().find(|c| reference_names.contains(&c.as_str())) {
            out.push(Finding::new(Severity::Blocker, "reference_column_referenced", format!(
                "foreign key {name:?} of {from} references {t}.{c}, which becomes uuid; that key would break: drop it or rewrite {from} first"
            )).table(t).column(c));
        } else {
            out.push(Finding::new(Severity::Info, "incoming_foreign_key", format!(
                "foreign key {name:?} of {from} references {t}; cutover re-points it to the new table"
            )).table(t));
        }
    }
    for fk in detail
        .foreign_keys
        .iter()
        .filter(|f| !f.self_reference && names.contains(&f.referenced))
    {
        out.push(Finding::new(Severity::Info, "foreign_key_to_rewritten_table", format!(
            "foreign key {:?} of {t} references {}, which is rewritten too; cutover re-points the shadow's key to its new table",
            fk.name, fk.referenced
        )).table(t));
    }
    for r in client
        .query(PUBLICATIONS_SQL, &[&t.schema, &t.name])
        .await
        .map_err(PlanError::db(format!("reading publications of {t}")))?
    {
        let (pubname, all): (String, bool) = (r.get(0), r.get(1));
        if !all {
            out.push(
                Finding::new(
                    Severity::Info,
                    "in_publication",
                    format!("{t} is in publication {pubname:?}; cutover adds the new table to it"),
                )
                .table(t),
            );
        }
    }
    for r in client
        .query(VIEWS_SQL, &[&detail.spec.oid])
        .await
        .map_err(PlanError::db(format!("reading views on {t}")))?
    {
        let view: String = r.get(0);
        out.push(Finding::new(Severity::Info, "dependent_view", format!(
            "view {view} depends on {t}; cutover must re-create it on the new table (a column changes type)"
        )).table(t));
    }
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2)",
            &[&detail.spec.shadow.schema, &detail.spec.shadow.name],
        )
        .await
        .map_err(PlanError::db(format!("looking for the shadow of {t}")))?
        .get(0);
    if exists {
        out.push(Finding::new(Severity::Warning, "shadow_exists", format!(
            "{} already exists (left by an earlier run?); if `pg-rekey status` shows a job for {t} whose owner is gone, re-running the same rewrite resumes it; otherwise run `pg-rekey abort --table {t}` to remove it",
            detail.spec.shadow
        )).table(t));
    }
    Ok(())
}

/// Create the shadow and its indexes in a transaction that is rolled back, so
/// the server itself says whether the DDL works (a CHECK or index expression
/// computing on a reference column fails here). Foreign keys are left out: they
/// would lock the referenced tables, and their columns keep compatible types.
async fn try_shadow_ddl(
    client: &mut Client,
    detail: &TableDetail,
    parent: &ParentSpec,
    out: &mut Vec<Finding>,
) -> Result<(), PlanError> {
    if out.iter().any(|f| f.code == "shadow_exists") {
        return Ok(());
    }
    let t = detail.name();
    let mut statements = crate::ddl::create_shadow(detail, parent);
    statements.extend(crate::ddl::post_copy(detail));
    let txn = client
        .transaction()
        .await
        .map_err(PlanError::db("starting the shadow DDL trial"))?;
    txn.batch_execute("SET LOCAL lock_timeout = '2s'")
        .await
        .map_err(PlanError::db("starting the shadow DDL trial"))?;
    for s in &statements {
        if let Err(e) = txn.batch_execute(s).await {
            let why = match e.as_db_error() {
                Some(db) => db.message().to_string(),
                None => return Err(PlanError::db(format!("trying the shadow DDL of {t}"))(e)),
            };
            out.push(Finding::new(Severity::Blocker, "shadow_ddl_fails", format!(
                "the shadow of {t} cannot be built: {why}, in: {s}; a constraint, index or expression probably computes on a reference column that becomes uuid: drop or rewrite it first"
            )).table(t));
            break;
        }
    }
    txn.rollback()
        .await
        .map_err(PlanError::db("rolling back the shadow DDL trial"))?;
    Ok(())
}

async fn suggestive_names(client: &Client, out: &mut Vec<Finding>) -> Result<(), PlanError> {
    for r in client
        .query(SUGGESTIVE_SQL, &[&OWN_PREFIX])
        .await
        .map_err(PlanError::db("reading integer columns"))?
    {
        let (schema, table, column, ty): (String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        if suggests_user_reference(&column) {
            let t = QualifiedName::new(schema, table);
            out.push(Finding::new(Severity::Warning, "unreferenced_user_column", format!(
                "{t}.{column} ({ty}) looks like a user reference but has no foreign key, so it is not rewritten; if it holds user ids, add the foreign key (NOT VALID, then VALIDATE CONSTRAINT) and plan again"
            )).table(&t).column(&column));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_14_are_blocked_with_the_reason() {
        let f = version_finding(130023, "13.23".into()).expect("13 is refused");
        assert_eq!(f.code, "server_version");
        assert!(matches!(f.severity, Severity::Blocker));
        assert!(f.message.contains("13.23") && f.message.contains("14 or newer"));
        for ok in [140000, 150018, 180004] {
            assert!(version_finding(ok, String::new()).is_none(), "{ok}");
        }
    }

    #[test]
    fn suggestive_names() {
        for yes in [
            "user_id",
            "created_by_user_id",
            "created_by",
            "updated_by",
            "owner_id",
            "author_id",
            "sender_id",
            "requester_id",
            "approved_by_id",
            "UserId",
            "message_sender_id",
        ] {
            assert!(suggests_user_reference(yes), "{yes}");
        }
        for no in [
            "id",
            "users_count",
            "byte_size",
            "order_id",
            "standby",
            "user_idx",
        ] {
            assert!(!suggests_user_reference(no), "{no}");
        }
    }

    #[test]
    fn blockers_sort_first_and_decide() {
        let mut r = PlanReport {
            parent: "public.users".into(),
            parent_key: Some("id".into()),
            uuid_column: "uuid".into(),
            tables: vec![],
            dependents: vec![],
            findings: sorted(vec![
                Finding::new(Severity::Info, "i", "x"),
                Finding::new(Severity::Blocker, "b", "y"),
                Finding::new(Severity::Warning, "w", "z"),
            ]),
        };
        assert_eq!(r.findings.first().map(|f| f.code.as_str()), Some("b"));
        assert!(r.has_blockers());
        let text = r.to_string();
        assert!(text.contains("BLOCKER [b]: y"), "{text}");
        assert!(text.ends_with("not ready: fix the blockers above, then run plan again"));
        r.findings.retain(|f| f.severity != Severity::Blocker);
        assert!(!r.has_blockers());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["findings"][0]["severity"], "warning");
    }

    #[test]
    fn dependents_become_findings_by_verdict_and_flag() {
        let dep = |kind, verdict| Dependent {
            table: "public.t".into(),
            columns: vec!["user_id".into()],
            kind,
            object: "x".into(),
            verdict,
        };
        let rewritten = Verdict::Rewritten {
            definition: "USING ((user_id = (SELECT _rekey_p.\"uuid\" FROM \"public\".\"users\" _rekey_p WHERE _rekey_p.\"id\" = 5)))".into(),
        };
        let blocks = Verdict::Blocks {
            reason: "operator does not exist: uuid > integer".into(),
            fix: "f".into(),
        };
        let deps = vec![
            dep(DependentKind::Policy, rewritten.clone()),
            dep(DependentKind::Check, blocks.clone()),
            dep(DependentKind::View, Verdict::Carried),
            dep(DependentKind::ForeignKey, blocks),
            dep(DependentKind::Default, rewritten),
        ];
        let codes = |o: PreflightOptions| -> Vec<(Severity, String)> {
            dependent_findings(&deps, o)
                .into_iter()
                .map(|f| (f.severity, f.code))
                .collect()
        };
        assert_eq!(
            codes(PreflightOptions::default()),
            [
                (Severity::Blocker, "dependent_needs_rewrite".to_string()),
                (Severity::Blocker, "dependent_blocks".to_string())
            ]
        );
        let with = dependent_findings(
            &deps,
            PreflightOptions {
                rewrite_dependents: true,
            },
        );
        assert_eq!(with[0].severity, Severity::Warning);
        assert_eq!(with[0].code, "dependent_rewritten");
        assert!(
            with[0].message.contains("need SELECT on the parent"),
            "{}",
            with[0].message
        );
        assert_eq!(with[0].column.as_deref(), Some("user_id"));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(2048), "2.00 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.00 MiB");
        assert_eq!(human_bytes(-1), "0 B");
    }
}
