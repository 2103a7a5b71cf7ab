//! Every object that depends on a reference column, and what the swap will
//! do with it: carried as it is, rewritten (with the new definition), or
//! blocking (with the fix).
//!
//! # How objects are found
//!
//! From `pg_depend`: every row whose referenced object is a reference column
//! (`refobjid` = the table, `refobjsubid` = the column's `attnum`). PostgreSQL
//! records such a column-level dependency for every object that names the
//! column: views and materialized views (their `_RETURN` rule), other rules,
//! CHECK and other constraints, indexes (columns, expressions, predicates),
//! generated columns and defaults, triggers (`WHEN`, `UPDATE OF`),
//! policies (on this table or another), extended statistics, publication
//! column lists and row filters (15+), functions with SQL-standard bodies,
//! and other tables' foreign keys. Added to that: every view the swap
//! re-creates (directly or through other views, whatever column it reads),
//! and everything the swap refuses for the whole table
//! ([`crate::swap::catalog::UNSUPPORTED`]), so that a cutover never meets
//! something `plan` did not name.
//!
//! # How the verdict is reached: the server decides
//!
//! No SQL is parsed to decide whether an object works with `uuid`. In one
//! transaction that is **always rolled back**, a scratch schema gets a copy of
//! each table as the swap will leave it (reference columns `uuid`, every other
//! column as it is), and each object's definition — the text the swap itself
//! uses, printed with `search_path = ''`, with the table's qualified name
//! replaced by the scratch copy's ([`super::sqltext::substitute_names`]) — is
//! created on it, each in its own savepoint. The server's error, if any, is
//! the reason. So one run reports every breaker, not the first.
//!
//! Views and policies that fail are offered a rewrite
//! ([`super::sqltext::rewrite_comparisons`]: integer comparisons of a
//! reference column made in uuid terms, which returns the same rows); the
//! rewrite is tried the same way and reported as `rewritten` only if the
//! server accepts it. `cutover --rewrite-dependents` applies the same pure
//! function to the same printed text, so it runs exactly the definition
//! `plan` printed.
//!
//! # Cost and locks
//!
//! The scratch tables are empty, materialized views are created `WITH NO
//! DATA`, constraints `NOT VALID`: nothing scans user data. Creating a view
//! or a policy takes `ACCESS SHARE` on the relations it reads — what a
//! `SELECT` takes, and what `plan` takes anyway. Foreign keys (which would
//! lock the referenced table) are not created. Nothing is left behind: the
//! transaction rolls back. `lock_timeout` bounds any wait.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use tokio_postgres::{Client, Transaction};

use super::catalog::TableDetail;
use super::model::ParentSpec;
use super::sqltext::{rewrite_comparisons, substitute_names, RewriteContext};
use super::PlanError;
use crate::pg::{quote_ident, QualifiedName};

/// What kind of object depends on a reference column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DependentKind {
    /// A view.
    View,
    /// A materialized view.
    MaterializedView,
    /// A row-level security policy.
    Policy,
    /// A CHECK constraint.
    Check,
    /// A PRIMARY KEY, UNIQUE or EXCLUDE constraint.
    Constraint,
    /// A stored generated column.
    GeneratedColumn,
    /// An index (columns, expressions, predicate).
    Index,
    /// A rule other than a view's `_RETURN`.
    Rule,
    /// A trigger (`WHEN`, `UPDATE OF`).
    Trigger,
    /// The column's default.
    Default,
    /// Extended statistics (`CREATE STATISTICS`).
    Statistics,
    /// A publication's column list or row filter.
    Publication,
    /// A function with an SQL-standard body (`BEGIN ATOMIC`).
    Function,
    /// Another table's foreign key.
    ForeignKey,
    /// Anything else `pg_depend` names.
    Other,
}

impl DependentKind {
    fn label(self) -> &'static str {
        match self {
            DependentKind::View => "view",
            DependentKind::MaterializedView => "materialized view",
            DependentKind::Policy => "policy",
            DependentKind::Check => "check constraint",
            DependentKind::Constraint => "constraint",
            DependentKind::GeneratedColumn => "generated column",
            DependentKind::Index => "index",
            DependentKind::Rule => "rule",
            DependentKind::Trigger => "trigger",
            DependentKind::Default => "default",
            DependentKind::Statistics => "statistics",
            DependentKind::Publication => "publication",
            DependentKind::Function => "function",
            DependentKind::ForeignKey => "foreign key",
            DependentKind::Other => "object",
        }
    }
}

impl fmt::Display for DependentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What happens to a dependent at cutover.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Carried as it is: its definition works with uuid.
    Carried,
    /// Carried with a new definition that returns the same rows
    /// (`cutover --rewrite-dependents`), or changed as described.
    Rewritten {
        /// The new definition (or what changes).
        definition: String,
    },
    /// Breaks the shadow or the swap.
    Blocks {
        /// The server's error, or why pg-rekey cannot carry it.
        reason: String,
        /// What to do.
        fix: String,
    },
}

/// One object depending on a reference column (or on the table, where the
/// swap cannot carry it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Dependent {
    /// The rewritten table it hangs off.
    pub table: String,
    /// The reference columns it uses (empty: the table as a whole).
    pub columns: Vec<String>,
    /// Its kind.
    pub kind: DependentKind,
    /// `pg_describe_object` text or its name.
    pub object: String,
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl fmt::Display for Dependent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", self.object, self.table)?;
        if !self.columns.is_empty() {
            write!(f, ".{}", self.columns.join(", "))?;
        }
        write!(f, "): ")?;
        match &self.verdict {
            Verdict::Carried => write!(f, "carried as is"),
            Verdict::Rewritten { definition } => write!(
                f,
                "rewritten: {}",
                definition.split_whitespace().collect::<Vec<_>>().join(" ")
            ),
            Verdict::Blocks { reason, fix } => write!(f, "BLOCKS: {reason}; fix: {fix}"),
        }
    }
}

/// Whether a view or policy definition needs the rewrite, and the rewritten text.
pub fn rewrite_context(tables: &[&TableDetail], parent: &ParentSpec) -> RewriteContext {
    RewriteContext {
        tables: tables
            .iter()
            .map(|t| {
                (
                    t.spec.source.clone(),
                    t.spec.reference_columns().map(|c| c.name.clone()).collect(),
                )
            })
            .collect(),
        parent: parent.table.clone(),
        key_column: parent.key_column.clone(),
        uuid_column: parent.uuid_column.clone(),
    }
}

/// Apply the behaviour-keeping rewrites ([`rewrite_comparisons`]) to the
/// views and policies the swap re-creates — the same pure function on the
/// same printed text `plan` tried, so the cutover runs the definitions
/// `plan` printed. Returns the objects whose definition changed.
pub fn apply_rewrites(deps: &mut [crate::swap::Dependents], ctx: &RewriteContext) -> Vec<String> {
    let mut changed = Vec::new();
    for d in deps.iter_mut() {
        for v in d.views.iter_mut() {
            if let Some(new) = rewrite_comparisons(&v.definition, ctx, None) {
                v.definition = new;
                changed.push(format!("view {}", v.name));
            }
        }
        let source = d.source.clone();
        for p in d.policies.iter_mut() {
            let mut hit = false;
            for expr in [&mut p.using, &mut p.check] {
                if let Some(new) = expr
                    .as_deref()
                    .and_then(|e| rewrite_comparisons(e, ctx, Some(&source)))
                {
                    *expr = Some(new);
                    hit = true;
                }
            }
            if hit {
                changed.push(format!("policy {} on {source}", p.name));
            }
        }
    }
    changed.sort();
    changed.dedup();
    changed
}

/// Whether a dependent needs `--rewrite-dependents` (a view or policy whose
/// verdict is a rewrite).
pub fn needs_rewrite(d: &Dependent) -> bool {
    matches!(d.verdict, Verdict::Rewritten { .. })
        && matches!(
            d.kind,
            DependentKind::View | DependentKind::MaterializedView | DependentKind::Policy
        )
}

const DISCOVER: &str = "
SELECT CASE
         WHEN k.oid IS NOT NULL THEN CASE
              WHEN k.contype = 'c' AND k.conrelid = $1 THEN 'check'
              WHEN k.contype IN ('p', 'u', 'x') AND k.conrelid = $1 THEN 'key'
              WHEN k.contype = 'f' AND k.conrelid = $1 THEN 'fk_own'
              WHEN k.contype = 'f' THEN 'fk_in'
              -- NOT NULL (catalogued from 18 on; the shadow has it) and
              -- constraint triggers (tried as triggers).
              WHEN k.contype IN ('n', 't') THEN 'skip'
              ELSE 'other' END
         WHEN c.oid IS NOT NULL THEN CASE
              WHEN d.objid = $1 AND d.objsubid > 0 THEN 'generated'
              WHEN c.relkind = 'i' AND EXISTS (SELECT FROM pg_catalog.pg_constraint kk WHERE kk.conindid = c.oid AND kk.conrelid = $1) THEN 'skip'
              WHEN c.relkind = 'i' THEN 'index'
              WHEN c.relkind = 'S' THEN 'skip'
              ELSE 'other' END
         WHEN r.oid IS NOT NULL THEN CASE
              WHEN r.rulename = '_RETURN' AND v.relkind = 'v' THEN 'view'
              WHEN r.rulename = '_RETURN' AND v.relkind = 'm' THEN 'matview'
              ELSE 'rule' END
         WHEN ad.oid IS NOT NULL THEN CASE WHEN ad.adnum = d.refobjsubid THEN 'default' ELSE 'generated' END
         WHEN tg.oid IS NOT NULL THEN 'trigger'
         WHEN po.oid IS NOT NULL THEN CASE WHEN po.polrelid = $1 THEN 'policy' ELSE 'policy_other' END
         WHEN st.oid IS NOT NULL THEN 'statistics'
         WHEN pb.oid IS NOT NULL THEN 'publication'
         WHEN fn.oid IS NOT NULL THEN 'function'
         ELSE 'other' END,
       d.objid,
       coalesce(k.conname::text, ga.attname::text, c.relname::text, v.oid::pg_catalog.regclass::text,
                aa.attname::text, tg.tgname::text, po.polname::text, st.stxname::text,
                pb.pubname::text, fn.oid::pg_catalog.regprocedure::text, ''),
       pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid),
       a.attname::text
  FROM pg_catalog.pg_depend d
  JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
  LEFT JOIN pg_catalog.pg_constraint k ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND k.oid = d.objid
  LEFT JOIN pg_catalog.pg_class c ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND c.oid = d.objid
  LEFT JOIN pg_catalog.pg_attribute ga ON c.oid = $1 AND ga.attrelid = c.oid AND ga.attnum = d.objsubid AND d.objsubid > 0
  LEFT JOIN pg_catalog.pg_rewrite r ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND r.oid = d.objid
  LEFT JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
  LEFT JOIN pg_catalog.pg_attrdef ad ON d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND ad.oid = d.objid
  LEFT JOIN pg_catalog.pg_attribute aa ON aa.attrelid = ad.adrelid AND aa.attnum = ad.adnum
  LEFT JOIN pg_catalog.pg_trigger tg ON d.classid = 'pg_catalog.pg_trigger'::pg_catalog.regclass AND tg.oid = d.objid
  LEFT JOIN pg_catalog.pg_policy po ON d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass AND po.oid = d.objid
  LEFT JOIN pg_catalog.pg_statistic_ext st ON d.classid = 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass AND st.oid = d.objid
  LEFT JOIN pg_catalog.pg_publication_rel pr ON d.classid = 'pg_catalog.pg_publication_rel'::pg_catalog.regclass AND pr.oid = d.objid
  LEFT JOIN pg_catalog.pg_publication pb ON pb.oid = pr.prpubid
  LEFT JOIN pg_catalog.pg_proc fn ON d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND fn.oid = d.objid
 WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = $1
   AND d.refobjsubid = ANY ($2::pg_catalog.int2[]) AND d.deptype IN ('n', 'a')
   AND NOT (d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = $1 AND d.objsubid = d.refobjsubid)
 ORDER BY 4, 5";

const POLICIES: &str = "
SELECT p.oid, p.polname::text, p.polpermissive, p.polcmd::text,
       pg_catalog.pg_get_expr(p.polqual, p.polrelid),
       pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)
  FROM pg_catalog.pg_policy p WHERE p.polrelid = $1 ORDER BY p.polname";

const TRIGGERS: &str = "
SELECT t.oid, t.tgname::text, pg_catalog.pg_get_triggerdef(t.oid)
  FROM pg_catalog.pg_trigger t WHERE t.tgrelid = $1 AND NOT t.tgisinternal ORDER BY t.tgname";

const STATISTICS: &str = "
SELECT s.oid, n.nspname::text, s.stxname::text, pg_catalog.pg_get_statisticsobjdef(s.oid)
  FROM pg_catalog.pg_statistic_ext s JOIN pg_catalog.pg_namespace n ON n.oid = s.stxnamespace
 WHERE s.stxrelid = $1 ORDER BY s.stxname";

const PUBLICATIONS: &str = "
SELECT pr.oid, p.pubname::text,
       CASE WHEN pr.prattrs IS NULL THEN NULL ELSE
         ARRAY(SELECT a.attname::text FROM unnest(pr.prattrs::int2[]) WITH ORDINALITY u(n, o)
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = pr.prrelid AND a.attnum = u.n
                ORDER BY u.o) END,
       pg_catalog.pg_get_expr(pr.prqual, pr.prrelid)
  FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
 WHERE pr.prrelid = $1 ORDER BY p.pubname";

/// A trial object's outcome: `Ok` or the server's message.
type Outcome = Result<(), String>;

/// Runs statements in savepoints of the trial transaction.
struct Trial<'a> {
    txn: Transaction<'a>,
}

impl Trial<'_> {
    /// Run `sql` in a savepoint; keep its effect when `keep` and it worked.
    async fn attempt(&self, sql: &str, keep: bool) -> Result<Outcome, PlanError> {
        let ctx = "trying dependents against uuid";
        self.txn
            .batch_execute("SAVEPOINT rekey_trial")
            .await
            .map_err(PlanError::db(ctx))?;
        let r = self.txn.batch_execute(sql).await;
        let outcome = match r {
            Ok(()) => Ok(()),
            Err(e) => match e.as_db_error() {
                Some(db) if db.code().code() == "55P03" => {
                    return Err(PlanError::db(format!(
                        "{ctx}: a lock was not granted in time"
                    ))(e))
                }
                Some(db) => Err(db.message().to_string()),
                None => return Err(PlanError::db(ctx)(e)),
            },
        };
        let end = if outcome.is_ok() && keep {
            "RELEASE SAVEPOINT rekey_trial"
        } else {
            "ROLLBACK TO SAVEPOINT rekey_trial; RELEASE SAVEPOINT rekey_trial"
        };
        self.txn
            .batch_execute(end)
            .await
            .map_err(PlanError::db(ctx))?;
        Ok(outcome)
    }
}

/// A table's scratch copy and what was tried on it.
struct Scratch<'a> {
    detail: &'a TableDetail,
    copy: QualifiedName,
    /// `(kind, name)` → outcome of the shadow-shape objects.
    shape: HashMap<(DependentKind, String), Outcome>,
}

fn fix_for(kind: DependentKind, object: &str, table: &QualifiedName) -> String {
    match kind {
        DependentKind::Check | DependentKind::Constraint => format!(
            "drop {object} (ALTER TABLE {} DROP CONSTRAINT …) or change it so it does not compute on the reference column, before rewrite; re-add a uuid form after cutover",
            table.quoted()
        ),
        DependentKind::GeneratedColumn => "drop the generated column or make its expression stop computing on the reference column, before rewrite".into(),
        DependentKind::Index => "drop the index (DROP INDEX CONCURRENTLY) or re-create it without computing on the reference column, before rewrite".into(),
        DependentKind::View | DependentKind::MaterializedView => "make it compare the reference column with uuid values (join on the parent's uuid column), or drop it before cutover and re-create it after".into(),
        DependentKind::Policy => "ALTER POLICY … so it compares the reference column with uuid values (translate integers through the parent), or drop it before cutover and re-create it after".into(),
        DependentKind::Trigger => "re-create the trigger with a WHEN clause that works on uuid, or drop it before cutover and re-create it after".into(),
        DependentKind::Statistics => "DROP STATISTICS before cutover and CREATE STATISTICS again after".into(),
        DependentKind::Publication => format!(
            "ALTER PUBLICATION … SET TABLE {} with a row filter that works on uuid (or none) before cutover",
            table.quoted()
        ),
        DependentKind::Rule | DependentKind::Function | DependentKind::Other => "it is bound to the old table and cannot be moved: drop it before cutover and re-create it after, written for uuid references".into(),
        DependentKind::ForeignKey => "drop that foreign key, or rewrite its table first".into(),
        DependentKind::Default => "set a uuid default after cutover".into(),
    }
}

/// Find every dependent of the tables' reference columns and decide its
/// verdict by trial; see the module docs. `client` must not be in a
/// transaction. Returns dependents in table order, then by kind and name.
pub async fn check(
    client: &mut Client,
    tables: &[&TableDetail],
    parent: &ParentSpec,
) -> Result<Vec<Dependent>, PlanError> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = rewrite_context(tables, parent);
    let txn = client
        .transaction()
        .await
        .map_err(PlanError::db("starting the dependents trial"))?;
    let trial = Trial { txn };
    let result = run_trial(&trial, tables, &ctx).await;
    // Always rolled back: the trial leaves nothing behind.
    let rolled = trial.txn.rollback().await;
    let out = result?;
    rolled.map_err(PlanError::db("rolling back the dependents trial"))?;
    Ok(out)
}

async fn run_trial(
    trial: &Trial<'_>,
    tables: &[&TableDetail],
    ctx: &RewriteContext,
) -> Result<Vec<Dependent>, PlanError> {
    let txn = &trial.txn;
    static TRIALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let schema = format!(
        "_rekey_trial_{}_{}",
        std::process::id(),
        TRIALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    txn.batch_execute(&format!(
        "SET LOCAL lock_timeout = '2s'; SET LOCAL search_path = ''; CREATE SCHEMA {}",
        quote_ident(&schema)
    ))
    .await
    .map_err(PlanError::db("creating the trial schema"))?;
    // Scratch copies, named as their sources where possible.
    let mut names: HashSet<String> = HashSet::new();
    let mut subst: Vec<(QualifiedName, QualifiedName)> = Vec::new();
    let mut scratch: Vec<Scratch> = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let mut name = t.spec.source.name.clone();
        if !names.insert(name.clone()) {
            name = format!("t{i}_{name}");
            names.insert(name.clone());
        }
        let copy = QualifiedName::new(schema.clone(), name);
        subst.push((t.spec.source.clone(), copy.clone()));
        scratch.push(Scratch {
            detail: t,
            copy,
            shape: HashMap::new(),
        });
    }
    let mut out: Vec<Dependent> = Vec::new();
    let mut built = Vec::with_capacity(scratch.len());
    for mut s in scratch {
        match build_scratch(trial, &mut s).await? {
            Ok(()) => built.push(s),
            // Not expected (the copy has the source's own column types);
            // reported rather than fatal, so the other tables are still tried.
            Err(why) => out.push(Dependent {
                table: s.detail.spec.source.to_string(),
                columns: vec![],
                kind: DependentKind::Other,
                object: format!("table {}", s.detail.spec.source),
                verdict: Verdict::Blocks {
                    reason: format!("its dependents could not be tried: a copy with uuid reference columns was refused: {why}"),
                    fix: "please report this; meanwhile check the table's views, policies and constraints by hand".into(),
                },
            }),
        }
    }
    let scratch = built;

    let mut view_columns: HashMap<u32, Vec<String>> = HashMap::new();
    for s in &scratch {
        let t = s.detail;
        let source = &t.spec.source;
        let ref_attnums: Vec<i16> = t.spec.reference_columns().map(|c| c.attnum).collect();
        let found = txn
            .query(DISCOVER, &[&t.spec.oid, &ref_attnums])
            .await
            .map_err(PlanError::db(format!(
                "reading what depends on the reference columns of {source}"
            )))?;
        // (kind tag, objid) → (name, description, columns)
        let mut deps: BTreeMap<(String, u32), (String, String, Vec<String>)> = BTreeMap::new();
        for r in &found {
            let e = deps
                .entry((r.get(0), r.get(1)))
                .or_insert_with(|| (r.get(2), r.get(3), Vec::new()));
            let col: String = r.get(4);
            if !e.2.contains(&col) {
                e.2.push(col);
            }
        }
        let src = source.to_string();
        let mk = |kind: DependentKind, object: String, columns: Vec<String>, verdict: Verdict| {
            Dependent {
                table: src.clone(),
                columns,
                kind,
                object,
                verdict,
            }
        };
        let by_tag = |tag: &str| -> Vec<(u32, String, String, Vec<String>)> {
            deps.iter()
                .filter(|((k, _), _)| k == tag)
                .map(|((_, oid), (n, d, c))| (*oid, n.clone(), d.clone(), c.clone()))
                .collect()
        };
        let verdict_of = |kind: DependentKind, outcome: &Outcome, object: &str| match outcome {
            Ok(()) => Verdict::Carried,
            Err(why) => Verdict::Blocks {
                reason: why.clone(),
                fix: fix_for(kind, object, source),
            },
        };

        // Shadow shape: checks, keys, generated columns, indexes — tried on the copy.
        for (tag, kind) in [
            ("check", DependentKind::Check),
            ("key", DependentKind::Constraint),
            ("generated", DependentKind::GeneratedColumn),
            ("index", DependentKind::Index),
        ] {
            for (_, name, descr, cols) in by_tag(tag) {
                let descr = if kind == DependentKind::GeneratedColumn {
                    format!("column {name} of table {source}")
                } else {
                    descr
                };
                let outcome = s
                    .shape
                    .get(&(kind, name.clone()))
                    .cloned()
                    .unwrap_or(Ok(()));
                out.push(mk(
                    kind,
                    descr.clone(),
                    cols,
                    verdict_of(kind, &outcome, &descr),
                ));
            }
        }
        // Anything of the shape that failed without a recorded dependency.
        let mut shape: Vec<_> = s.shape.iter().collect();
        shape.sort_by(|a, b| a.0.cmp(b.0));
        for ((kind, name), outcome) in shape {
            if let Err(why) = outcome {
                let listed = out.iter().any(|d| {
                    d.kind == *kind
                        && d.table == source.to_string()
                        && d.object.contains(name.as_str())
                });
                if !listed {
                    out.push(Dependent {
                        table: source.to_string(),
                        columns: vec![],
                        kind: *kind,
                        object: format!("{} {name}", kind.label()),
                        verdict: Verdict::Blocks {
                            reason: why.clone(),
                            fix: fix_for(*kind, name, source),
                        },
                    });
                }
            }
        }
        for (oid, _, _, cols) in by_tag("view").into_iter().chain(by_tag("matview")) {
            let e = view_columns.entry(oid).or_default();
            e.extend(
                cols.into_iter()
                    .filter(|c| !e.contains(c))
                    .collect::<Vec<_>>(),
            );
        }
        // Defaults of reference columns: dropped on the shadow.
        for (_, _, descr, cols) in by_tag("default") {
            out.push(Dependent {
                table: source.to_string(),
                columns: cols,
                kind: DependentKind::Default,
                object: descr,
                verdict: Verdict::Rewritten {
                    definition: "no default on the new uuid column (an integer cannot default a uuid); set one after cutover if needed".into(),
                },
            });
        }
        // Other tables' foreign keys to a reference column.
        for (_, _, descr, cols) in by_tag("fk_in") {
            out.push(Dependent {
                table: source.to_string(),
                columns: cols,
                kind: DependentKind::ForeignKey,
                object: descr.clone(),
                verdict: Verdict::Blocks {
                    reason: "it references a column that becomes uuid".into(),
                    fix: fix_for(DependentKind::ForeignKey, &descr, source),
                },
            });
        }

        // Policies of the table: re-created by the swap from their text.
        let dep_policies: HashMap<u32, Vec<String>> = by_tag("policy")
            .into_iter()
            .map(|(o, _, _, c)| (o, c))
            .collect();
        for r in txn
            .query(POLICIES, &[&t.spec.oid])
            .await
            .map_err(PlanError::db(format!("reading the policies of {source}")))?
        {
            let (oid, name, permissive, cmd): (u32, String, bool, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let (using, check): (Option<String>, Option<String>) = (r.get(4), r.get(5));
            let create = |using: &Option<String>, check: &Option<String>| {
                policy_sql(
                    &s.copy,
                    &name,
                    permissive,
                    &cmd,
                    using.as_deref(),
                    check.as_deref(),
                    &subst,
                )
            };
            let object = format!("policy {name} on {source}");
            let columns = dep_policies.get(&oid).cloned().unwrap_or_default();
            let first = trial.attempt(&create(&using, &check), false).await?;
            let verdict = match first {
                Ok(()) if columns.is_empty() => continue,
                Ok(()) => Verdict::Carried,
                Err(why) => {
                    let ru = using
                        .as_deref()
                        .and_then(|u| rewrite_comparisons(u, ctx, Some(source)));
                    let rc = check
                        .as_deref()
                        .and_then(|c| rewrite_comparisons(c, ctx, Some(source)));
                    let (nu, nc) = (ru.clone().or(using.clone()), rc.clone().or(check.clone()));
                    if (ru.is_some() || rc.is_some())
                        && trial.attempt(&create(&nu, &nc), false).await?.is_ok()
                    {
                        let mut def = String::new();
                        if let Some(u) = &nu {
                            def.push_str(&format!("USING ({u})"));
                        }
                        if let Some(c) = &nc {
                            def.push_str(&format!(
                                "{}WITH CHECK ({c})",
                                if def.is_empty() { "" } else { " " }
                            ));
                        }
                        Verdict::Rewritten { definition: def }
                    } else {
                        Verdict::Blocks {
                            reason: why,
                            fix: fix_for(DependentKind::Policy, &object, source),
                        }
                    }
                }
            };
            out.push(mk(DependentKind::Policy, object, columns, verdict));
        }

        // Triggers: re-created by the swap from pg_get_triggerdef.
        let dep_triggers: HashMap<u32, Vec<String>> = by_tag("trigger")
            .into_iter()
            .map(|(o, _, _, c)| (o, c))
            .collect();
        for r in txn
            .query(TRIGGERS, &[&t.spec.oid])
            .await
            .map_err(PlanError::db(format!("reading the triggers of {source}")))?
        {
            let (oid, name, def): (u32, String, String) = (r.get(0), r.get(1), r.get(2));
            let columns = dep_triggers.get(&oid).cloned().unwrap_or_default();
            let outcome = trial
                .attempt(&substitute_names(&def, &subst), false)
                .await?;
            if outcome.is_ok() && columns.is_empty() {
                continue;
            }
            let object = format!("trigger {name} on {source}");
            let v = verdict_of(DependentKind::Trigger, &outcome, &object);
            out.push(mk(DependentKind::Trigger, object, columns, v));
        }

        // Extended statistics.
        let dep_stats: HashMap<u32, Vec<String>> = by_tag("statistics")
            .into_iter()
            .map(|(o, _, _, c)| (o, c))
            .collect();
        for r in txn
            .query(STATISTICS, &[&t.spec.oid])
            .await
            .map_err(PlanError::db(format!("reading the statistics of {source}")))?
        {
            let (oid, nsp, name, def): (u32, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let Some(columns) = dep_stats.get(&oid).cloned() else {
                continue;
            };
            let mut map = subst.clone();
            map.push((
                QualifiedName::new(nsp.clone(), name.clone()),
                QualifiedName::new(schema.clone(), format!("s{oid}")),
            ));
            let outcome = trial.attempt(&substitute_names(&def, &map), false).await?;
            let object = format!("statistics object {nsp}.{name}");
            let v = verdict_of(DependentKind::Statistics, &outcome, &object);
            out.push(mk(DependentKind::Statistics, object, columns, v));
        }

        // Publication column lists and row filters (15+).
        let dep_pubs: HashMap<u32, Vec<String>> = by_tag("publication")
            .into_iter()
            .map(|(o, _, _, c)| (o, c))
            .collect();
        if !dep_pubs.is_empty() {
            for r in txn
                .query(PUBLICATIONS, &[&t.spec.oid])
                .await
                .map_err(PlanError::db(format!(
                    "reading the publications of {source}"
                )))?
            {
                let (oid, pubname, cols, filter): (
                    u32,
                    String,
                    Option<Vec<String>>,
                    Option<String>,
                ) = (r.get(0), r.get(1), r.get(2), r.get(3));
                let Some(columns) = dep_pubs.get(&oid).cloned() else {
                    continue;
                };
                let cols_sql = cols
                    .as_ref()
                    .map(|c| {
                        format!(
                            " ({})",
                            c.iter()
                                .map(|c| quote_ident(c))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })
                    .unwrap_or_default();
                let filter_sql = filter
                    .as_ref()
                    .map(|f| format!(" WHERE ({})", substitute_names(f, &subst)))
                    .unwrap_or_default();
                let sql = format!(
                    "CREATE PUBLICATION {} FOR TABLE {}{cols_sql}{filter_sql}",
                    quote_ident(&format!("{schema}_pub")),
                    s.copy.quoted()
                );
                let outcome = trial.attempt(&sql, false).await?;
                let object = format!("publication {pubname} of {source}");
                let v = match (&outcome, cols.as_ref().is_some_and(|c| c.iter().any(|x| columns.contains(x)))) {
                    (Ok(()), true) => Verdict::Rewritten {
                        definition: format!("published as uuid from cutover on ({}): the subscribers' tables must have uuid columns by then", columns.join(", ")),
                    },
                    _ => verdict_of(DependentKind::Publication, &outcome, &object),
                };
                out.push(mk(DependentKind::Publication, object, columns, v));
            }
        }

        // Bound to the old table by OID: the swap refuses these.
        for (tag, kind) in [
            ("rule", DependentKind::Rule),
            ("function", DependentKind::Function),
            ("policy_other", DependentKind::Policy),
            ("other", DependentKind::Other),
        ] {
            for (_, _, descr, cols) in by_tag(tag) {
                out.push(mk(
                    kind,
                    descr.clone(),
                    cols,
                    Verdict::Blocks {
                        reason: "it depends on a reference column and is bound to the old table"
                            .into(),
                        fix: fix_for(kind, &descr, source),
                    },
                ));
            }
        }
        for r in txn
            .query(crate::swap::catalog::UNSUPPORTED, &[&t.spec.oid])
            .await
            .map_err(PlanError::db(format!("reading what is bound to {source}")))?
        {
            let descr: String = r.get(0);
            if out
                .iter()
                .any(|d| d.object == descr && d.table == source.to_string())
            {
                continue;
            }
            let kind = if descr.starts_with("function") || descr.starts_with("procedure") {
                DependentKind::Function
            } else if descr.starts_with("rule") {
                DependentKind::Rule
            } else if descr.starts_with("policy") {
                DependentKind::Policy
            } else {
                DependentKind::Other
            };
            out.push(Dependent {
                table: source.to_string(),
                columns: vec![],
                kind,
                object: descr.clone(),
                verdict: Verdict::Blocks {
                    reason: "it reads the table and is bound to the old table by OID, so the swap cannot carry it".into(),
                    fix: fix_for(kind, &descr, source),
                },
            });
        }
    }

    // Views of every table, once each, dependencies first, each created on
    // the copies (and on the copies of the views it reads).
    views(
        trial,
        &scratch,
        &mut subst,
        &mut names,
        &schema,
        ctx,
        &view_columns,
        &mut out,
    )
    .await?;
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn policy_sql(
    table: &QualifiedName,
    name: &str,
    permissive: bool,
    cmd: &str,
    using: Option<&str>,
    check: Option<&str>,
    subst: &[(QualifiedName, QualifiedName)],
) -> String {
    let cmd = match cmd {
        "r" => "SELECT",
        "a" => "INSERT",
        "w" => "UPDATE",
        "d" => "DELETE",
        _ => "ALL",
    };
    let mut sql = format!(
        "CREATE POLICY {} ON {} AS {} FOR {cmd}",
        quote_ident(name),
        table.quoted(),
        if permissive {
            "PERMISSIVE"
        } else {
            "RESTRICTIVE"
        }
    );
    if let Some(u) = using {
        sql.push_str(&format!(" USING ({})", substitute_names(u, subst)));
    }
    if let Some(c) = check {
        sql.push_str(&format!(" WITH CHECK ({})", substitute_names(c, subst)));
    }
    sql
}

/// The scratch copy of one table: columns as the swap leaves them, then each
/// shadow-shape object in its own savepoint, so every breaker is found.
async fn build_scratch(trial: &Trial<'_>, s: &mut Scratch<'_>) -> Result<Outcome, PlanError> {
    let t = s.detail;
    let copy = s.copy.quoted();
    let mut cols = Vec::new();
    for (spec, d) in t.spec.columns.iter().zip(t.columns.iter()) {
        if d.generated_expr.is_some() {
            continue;
        }
        let mut c = format!("{} {}", quote_ident(&spec.name), spec.shadow_type_sql());
        if let (Some(coll), None) = (&d.collation, spec.reference) {
            c.push_str(&format!(" COLLATE {coll}"));
        }
        if spec.not_null {
            c.push_str(" NOT NULL");
        }
        cols.push(c);
    }
    if let Err(why) = trial
        .attempt(&format!("CREATE TABLE {copy} ({})", cols.join(", ")), true)
        .await?
    {
        return Ok(Err(why));
    }
    for (spec, d) in t.spec.columns.iter().zip(t.columns.iter()) {
        let Some(expr) = &d.generated_expr else {
            continue;
        };
        let ty = spec.shadow_type_sql();
        let o = trial
            .attempt(
                &format!(
                    "ALTER TABLE {copy} ADD COLUMN {} {ty} GENERATED ALWAYS AS ({expr}) STORED",
                    quote_ident(&spec.name)
                ),
                true,
            )
            .await?;
        if o.is_err() {
            // Keep the column so that what reads it can still be tried.
            trial
                .attempt(
                    &format!(
                        "ALTER TABLE {copy} ADD COLUMN {} {ty}",
                        quote_ident(&spec.name)
                    ),
                    true,
                )
                .await?
                .ok();
        }
        s.shape
            .insert((DependentKind::GeneratedColumn, spec.name.clone()), o);
    }
    if let Some(pk) = &t.primary_key {
        let o = trial
            .attempt(
                &format!(
                    "ALTER TABLE {copy} ADD CONSTRAINT {} {}",
                    quote_ident(&pk.name),
                    pk.definition
                ),
                true,
            )
            .await?;
        s.shape
            .insert((DependentKind::Constraint, pk.name.clone()), o);
    }
    for k in &t.checks {
        let def = k
            .definition
            .strip_suffix(" NOT VALID")
            .unwrap_or(&k.definition);
        let o = trial
            .attempt(
                &format!(
                    "ALTER TABLE {copy} ADD CONSTRAINT {} {def} NOT VALID",
                    quote_ident(&k.name)
                ),
                true,
            )
            .await?;
        s.shape.insert((DependentKind::Check, k.name.clone()), o);
    }
    for k in t.uniques.iter().chain(t.exclusions.iter()) {
        let o = trial
            .attempt(
                &format!(
                    "ALTER TABLE {copy} ADD CONSTRAINT {} {}",
                    quote_ident(&k.name),
                    k.definition
                ),
                true,
            )
            .await?;
        s.shape
            .insert((DependentKind::Constraint, k.name.clone()), o);
    }
    for idx in t
        .indexes
        .iter()
        .filter(|i| i.constraint.is_none() && !i.primary && i.valid)
    {
        let o = trial
            .attempt(
                &format!(
                    "CREATE {}INDEX {} ON {copy} {}",
                    if idx.unique { "UNIQUE " } else { "" },
                    quote_ident(&idx.name),
                    idx.using_clause
                ),
                true,
            )
            .await?;
        s.shape.insert((DependentKind::Index, idx.name.clone()), o);
    }
    Ok(Ok(()))
}

/// Views over the tables, tried in dependency order on the copies. A copy
/// has its original's name where it can (in the scratch schema), so a
/// column qualified by the relation's own name (`v.col` for `FROM s.v`)
/// still resolves.
#[allow(clippy::too_many_arguments)]
async fn views(
    trial: &Trial<'_>,
    scratch: &[Scratch<'_>],
    subst: &mut Vec<(QualifiedName, QualifiedName)>,
    names: &mut HashSet<String>,
    schema: &str,
    ctx: &RewriteContext,
    view_columns: &HashMap<u32, Vec<String>>,
    out: &mut Vec<Dependent>,
) -> Result<(), PlanError> {
    struct V {
        name: QualifiedName,
        materialized: bool,
        definition: String,
        depends_on: Vec<u32>,
        tables: Vec<String>,
    }
    let mut all: BTreeMap<u32, V> = BTreeMap::new();
    for s in scratch {
        for r in trial
            .txn
            .query(crate::swap::catalog::VIEWS, &[&s.detail.spec.oid])
            .await
            .map_err(PlanError::db(format!(
                "reading the views on {}",
                s.detail.spec.source
            )))?
        {
            let oid: u32 = r.get(0);
            let v = all.entry(oid).or_insert_with(|| V {
                name: QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
                materialized: r.get::<_, String>(3) == "m",
                definition: r.get(4),
                depends_on: r.get(9),
                tables: Vec::new(),
            });
            v.tables.push(s.detail.spec.source.to_string());
        }
    }
    let mut done: HashSet<u32> = HashSet::new();
    let mut blocked: HashMap<u32, String> = HashMap::new();
    let mut pending: Vec<u32> = all.keys().copied().collect();
    while !pending.is_empty() {
        let (ready, rest): (Vec<u32>, Vec<u32>) = pending.iter().partition(|o| {
            all[*o]
                .depends_on
                .iter()
                .all(|d| done.contains(d) || !all.contains_key(d) || d == *o)
        });
        // A cycle cannot exist among views; if it seemed to, try the rest anyway.
        let (ready, rest) = if ready.is_empty() {
            (rest, Vec::new())
        } else {
            (ready, rest)
        };
        for oid in &ready {
            let v = &all[oid];
            done.insert(*oid);
            let mut copy_name = v.name.name.clone();
            if !names.insert(copy_name.clone()) {
                copy_name = format!("v{oid}_{copy_name}");
                names.insert(copy_name.clone());
            }
            let copy = QualifiedName::new(schema.to_string(), copy_name);
            let kind = if v.materialized {
                DependentKind::MaterializedView
            } else {
                DependentKind::View
            };
            let object = format!("{} {}", kind.label(), v.name);
            let create = |def: &str| {
                let body = substitute_names(def.trim_end().trim_end_matches(';'), subst);
                if v.materialized {
                    format!(
                        "CREATE MATERIALIZED VIEW {} AS {body} WITH NO DATA",
                        copy.quoted()
                    )
                } else {
                    format!("CREATE VIEW {} AS {body}", copy.quoted())
                }
            };
            let reads_blocked = v.depends_on.iter().find_map(|d| blocked.get(d).cloned());
            let verdict = if let Some(b) = reads_blocked {
                Verdict::Blocks {
                    reason: format!("it reads {b}, which blocks"),
                    fix: format!("fix {b} first"),
                }
            } else {
                match trial.attempt(&create(&v.definition), true).await? {
                    Ok(()) => Verdict::Carried,
                    Err(why) => match rewrite_comparisons(&v.definition, ctx, None) {
                        Some(new) if trial.attempt(&create(&new), true).await?.is_ok() => {
                            Verdict::Rewritten {
                                definition: new.trim().to_string(),
                            }
                        }
                        _ => Verdict::Blocks {
                            reason: why,
                            fix: fix_for(kind, &object, &v.name),
                        },
                    },
                }
            };
            if matches!(verdict, Verdict::Blocks { .. }) {
                blocked.insert(*oid, v.name.to_string());
            } else {
                subst.push((v.name.clone(), copy));
            }
            // The reference columns it reads directly.
            let columns = view_columns.get(oid).cloned().unwrap_or_default();
            out.push(Dependent {
                table: v.tables.join(", "),
                columns,
                kind,
                object,
                verdict,
            });
        }
        pending = rest;
    }
    Ok(())
}
