//! `promote`: the parent's primary key becomes its uuid column (phase 5 of
//! the seeds' journey), online.
//!
//! # The steps, and the lock each takes
//!
//! 1. Before any lock, the unique indexes the new constraints will take over
//!    are built with `CREATE UNIQUE INDEX CONCURRENTLY` (no lock that blocks
//!    writes): on the integer key, which is kept unique unless
//!    `--drop-integer-key`; and on the uuid column only when its sole unique
//!    index belongs to a `UNIQUE` constraint (such an index cannot be given to
//!    another constraint; `prepare`'s index is a plain one and is used as it
//!    is). An invalid index left by a failed build is dropped concurrently and
//!    built again.
//! 2. One locked step (see [`crate::locked_step`]: `LOCK TABLE … IN ACCESS
//!    EXCLUSIVE MODE` under `lock_timeout`, retried with back-off, each
//!    attempt's wait and hold reported). Under the lock the foreign keys that
//!    reference the integer key are read **again** (one created since the
//!    first look refuses the step and rolls it back), then
//!    `DROP CONSTRAINT <pkey>, ADD CONSTRAINT <pkey> PRIMARY KEY USING INDEX
//!    <uuid index>` (the index is renamed to the key's old name, so the key
//!    keeps its name), and `ADD CONSTRAINT … UNIQUE USING INDEX` on the
//!    integer's prebuilt index, `SET NOT NULL` on it (a no-op where the column
//!    is `NOT NULL` already, which it is: dropping a key leaves `attnotnull`),
//!    or `DROP COLUMN`, and the renames. Every statement there is a catalog
//!    change: no scan, no rewrite — the hold is milliseconds.
//!
//! # Why the integer's uniqueness comes from a new index
//!
//! The old key's index belongs to the key constraint and goes with it: there
//! is no way to detach it. So the integer's unique index is built
//! concurrently before the lock (as long as building it takes, with writes
//! going on) and turned into a `UNIQUE` constraint under the lock (catalog
//! only). A constraint rather than a bare index, so that the integer is
//! declared unique to the catalog (tools, ORMs' schema dumps) and a foreign
//! key to it could be created again if one is needed during a bake period.
//!
//! # Why `--drop-integer-key` drops in the same transaction
//!
//! `DROP COLUMN` is a catalog change (the column is marked dropped; no
//! rewrite), so it adds nothing measurable to the hold; the fresh check of
//! the references under the lock covers it; and there is no state between
//! "key moved" and "column dropped" for a second run to find. If anything
//! still depends on the column (a view, a policy), PostgreSQL refuses it, the
//! whole step rolls back, and the error lists the dependents. The column's
//! owned sequence, and every index on it, go with it. A later run, once the
//! key is the uuid, drops the integer in a locked step of its own.
//!
//! # Refusals
//!
//! Nothing is done (exit 1, [`crate::error::Error::Blocked`]) while any
//! foreign key in any schema references the integer key column (dropping the
//! key would fail or cascade), or while `pgrekey.jobs` rows for this parent
//! remain (`pg-rekey finish` ends them). A uuid column that is missing,
//! nullable or not unique names `pg-rekey prepare` (exit 2).
//!
//! # Idempotent
//!
//! What is left is decided from the catalog alone ([`remaining`], pure): a
//! key that is already the uuid column needs nothing more, except the
//! integer's drop or the renames when they are asked for in a later run.
//! The integer is found then as `--integer-column`, else the column named
//! `--legacy-name`, else `id` — an integer column that is not the key.

use std::time::Instant;

use serde::Serialize;
use tokio_postgres::Client;
use tracing::info;

use crate::error::Error;
use crate::locked_step::{locked_with, Attempt, LockLimits};
use crate::pg::{self, quote_ident, ConnSpec, QualifiedName};

/// Everything `promote` needs, validated.
#[derive(Debug, Clone)]
pub struct PromoteConfig {
    /// Where to connect.
    pub spec: ConnSpec,
    /// The parent table.
    pub parent: QualifiedName,
    /// The options of what the key swap does.
    pub options: Options,
    /// Limits of the locked step.
    pub limits: LockLimits,
    /// Print the statements instead of running them.
    pub dry_run: bool,
}

impl PromoteConfig {
    /// Defaults: the integer kept, no rename, 200 ms / 10 attempts / 500 ms.
    pub fn new(spec: ConnSpec, parent: QualifiedName, uuid_column: impl Into<String>) -> Self {
        PromoteConfig {
            spec,
            parent,
            options: Options::new(uuid_column),
            limits: LockLimits::default(),
            dry_run: false,
        }
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The uuid column that becomes the key.
    pub uuid_column: String,
    /// The former integer key, for a run after the key moved (default: the
    /// `legacy_name` column, else `id`).
    pub integer_column: Option<String>,
    /// Drop the integer column.
    pub drop_integer_key: bool,
    /// The uuid takes the integer's name; the integer becomes `legacy_name`.
    pub rename: bool,
    /// The integer's name after `rename`.
    pub legacy_name: String,
}

impl Options {
    /// Keep the integer, no rename, `legacy_id`.
    pub fn new(uuid_column: impl Into<String>) -> Self {
        Options {
            uuid_column: uuid_column.into(),
            integer_column: None,
            drop_integer_key: false,
            rename: false,
            legacy_name: "legacy_id".into(),
        }
    }
}

/// A column of the parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// `attnum`.
    pub attnum: i16,
    /// `format_type`.
    pub type_name: String,
    /// `attnotnull`.
    pub not_null: bool,
}

impl Column {
    fn is_integer(&self) -> bool {
        matches!(self.type_name.as_str(), "smallint" | "integer" | "bigint")
    }
}

/// The primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The constraint's name (`users_pkey`).
    pub constraint: String,
    /// Its columns.
    pub columns: Vec<Column>,
}

/// A unique index the swap can hand to a constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// Its name (in the parent's schema).
    pub name: String,
    /// `indisvalid`.
    pub valid: bool,
}

/// How the integer is unique, besides the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntegerUnique {
    /// A `UNIQUE` constraint on exactly the column.
    Constraint(String),
    /// A unique index belonging to no constraint (valid, or ours left invalid).
    Index(Index),
}

/// A foreign key that references the integer key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reference {
    /// The referencing table, `schema.table`.
    pub table: String,
    /// The constraint.
    pub constraint: String,
    /// Its referencing columns.
    pub columns: String,
}

/// A `pgrekey.jobs` row of a table referencing the parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    /// The table, `schema.table`.
    pub table: String,
    /// Its phase.
    pub phase: String,
}

/// What the catalog says (see [`observe`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The primary key, if any.
    pub key: Option<Key>,
    /// The column named `--uuid-column`.
    pub uuid: Option<Column>,
    /// A plain unique index on it that can become the key (or ours, invalid).
    pub uuid_index: Option<Index>,
    /// A `UNIQUE` constraint on it (its index cannot become the key).
    pub uuid_constraint: Option<String>,
    /// The integer key: the key's column, or, once the key moved, the
    /// column found as the module docs say.
    pub integer: Option<Column>,
    /// How the integer is unique besides the key.
    pub integer_unique: Option<IntegerUnique>,
    /// The column named `--legacy-name`.
    pub legacy: Option<Column>,
    /// Foreign keys referencing the integer.
    pub references: Vec<Reference>,
    /// Job rows for this parent.
    pub jobs: Vec<Job>,
}

/// Work done before the lock, without blocking writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "build")]
pub enum Build {
    /// `DROP INDEX CONCURRENTLY` an invalid index left by a failed build.
    DropInvalid {
        /// The index.
        name: String,
    },
    /// `CREATE UNIQUE INDEX CONCURRENTLY name ON parent (column)`.
    Index {
        /// The index.
        name: String,
        /// The column.
        column: String,
    },
}

/// What is left to do (see [`remaining`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Concurrent index work, in order, before the lock.
    pub builds: Vec<Build>,
    /// The statements of the locked step (empty: nothing to lock for).
    pub locked: Vec<String>,
    /// Whether the locked step reads the references again under the lock.
    pub check_references: bool,
    /// The key column after the run.
    pub key_column: String,
    /// The integer after the run (`None`: dropped, or none known).
    pub integer_column: Option<String>,
    /// Whether the key was the integer when the run began.
    pub moves_key: bool,
}

impl Plan {
    /// Nothing left.
    pub fn is_empty(&self) -> bool {
        self.builds.is_empty() && self.locked.is_empty()
    }
}

/// Why `promote` will not go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No primary key, or not one column.
    #[error("the primary key of {parent} is not one column ({detail}); promote moves a one-column integer key to the uuid column")]
    KeyShape {
        /// The parent.
        parent: String,
        /// What the key is.
        detail: String,
    },
    /// The key is one column of another type.
    #[error("the primary key of {parent} is {column} ({type_name}), neither an integer nor uuid; promote moves an integer key to the uuid column")]
    KeyType {
        /// The parent.
        parent: String,
        /// The key column.
        column: String,
        /// Its type.
        type_name: String,
    },
    /// The uuid column is missing, not uuid, nullable or not unique.
    #[error("{parent}.{column} {what}; run pg-rekey prepare --parent {parent} --uuid-column {column} first (it makes the column uuid, NOT NULL and unique, online)")]
    UuidNotReady {
        /// The parent.
        parent: String,
        /// The column.
        column: String,
        /// What is missing.
        what: String,
    },
    /// Foreign keys reference the integer key.
    #[error("{} foreign key(s) reference {parent}.{column}, so its primary key cannot move: {}; rewrite those tables to the uuid (pg-rekey rewrite, cutover, finish) or drop the keys, then run promote again", refs.len(), refs.iter().map(|r| format!("{} constraint {} ({})", r.table, r.constraint, r.columns)).collect::<Vec<_>>().join(", "))]
    Referenced {
        /// The parent.
        parent: String,
        /// The integer column.
        column: String,
        /// The keys.
        refs: Vec<Reference>,
    },
    /// Job rows of tables referencing the parent remain.
    #[error("pg-rekey jobs of tables referencing {parent} are not ended: {}; end each with {}, then run promote again", jobs.iter().map(|j| format!("{} ({})", j.table, j.phase)).collect::<Vec<_>>().join(", "), jobs.iter().map(|j| format!("pg-rekey finish --table {}", j.table)).collect::<Vec<_>>().join(" and "))]
    Jobs {
        /// The parent.
        parent: String,
        /// The rows.
        jobs: Vec<Job>,
    },
    /// `--legacy-name` names a column that exists.
    #[error("{parent}.{name} exists already, so the integer key cannot take that name; choose another --legacy-name")]
    LegacyTaken {
        /// The parent.
        parent: String,
        /// The name.
        name: String,
    },
    /// `--integer-column` does not name the integer key.
    #[error("--integer-column {given}: {why}")]
    IntegerColumn {
        /// What was given.
        given: String,
        /// What is wrong.
        why: String,
    },
}

impl Refusal {
    /// Blocked (exit 1: found something, nothing harmed) or a precondition
    /// of the setup (exit 2).
    pub fn into_error(self) -> Error {
        match self {
            Refusal::Referenced { .. } | Refusal::Jobs { .. } => Error::Blocked(self.to_string()),
            _ => Error::Precondition(self.to_string()),
        }
    }
}

/// The name of the uuid index `promote` builds when the column's only unique
/// index belongs to a `UNIQUE` constraint (renamed to the key's name when
/// it becomes the key).
pub fn uuid_index_name(table: &str, column: &str) -> String {
    crate::naming::derived_name("", &format!("{table}_{column}_promote"))
}

/// The name of the integer's unique index and constraint
/// (`<table>_<column>_key`, the column's name after the run).
pub fn integer_index_name(table: &str, column: &str) -> String {
    crate::naming::derived_name("", &format!("{table}_{column}_key"))
}

/// What is left, from what [`observe`] saw (pure).
pub fn remaining(o: &Observed, parent: &QualifiedName, opts: &Options) -> Result<Plan, Refusal> {
    let p = parent.to_string();
    let t = parent.quoted();
    let key = match &o.key {
        Some(k) if k.columns.len() == 1 => k,
        Some(k) => {
            return Err(Refusal::KeyShape {
                parent: p,
                detail: k
                    .columns
                    .iter()
                    .map(|c| format!("{} {}", c.name, c.type_name))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
        None => {
            return Err(Refusal::KeyShape {
                parent: p,
                detail: "no primary key".into(),
            })
        }
    };
    let kc = &key.columns[0];
    let mut plan = Plan::default();
    let blockers = || -> Result<(), Refusal> {
        if !o.jobs.is_empty() {
            return Err(Refusal::Jobs {
                parent: p.clone(),
                jobs: o.jobs.clone(),
            });
        }
        if !o.references.is_empty() {
            return Err(Refusal::Referenced {
                parent: p.clone(),
                column: o
                    .integer
                    .as_ref()
                    .map(|c| c.name.clone())
                    .unwrap_or_default(),
                refs: o.references.clone(),
            });
        }
        Ok(())
    };
    if kc.is_integer() {
        // The key is still the integer: the whole swap.
        if let Some(given) = &opts.integer_column {
            if *given != kc.name {
                return Err(Refusal::IntegerColumn {
                    given: given.clone(),
                    why: format!("the primary key of {p} is {} (leave the option out while the key is the integer)", kc.name),
                });
            }
        }
        let not_ready = |what: &str| Refusal::UuidNotReady {
            parent: p.clone(),
            column: opts.uuid_column.clone(),
            what: what.into(),
        };
        let u = o.uuid.as_ref().ok_or_else(|| not_ready("does not exist"))?;
        if u.type_name != "uuid" {
            return Err(not_ready(&format!("is {}, not uuid", u.type_name)));
        }
        if !u.not_null {
            return Err(not_ready("is nullable"));
        }
        let uuid_index = match &o.uuid_index {
            Some(i) if i.valid => i.name.clone(),
            Some(i) => {
                plan.builds.push(Build::DropInvalid {
                    name: i.name.clone(),
                });
                plan.builds.push(Build::Index {
                    name: i.name.clone(),
                    column: u.name.clone(),
                });
                i.name.clone()
            }
            None if o.uuid_constraint.is_some() => {
                let name = uuid_index_name(&parent.name, &u.name);
                plan.builds.push(Build::Index {
                    name: name.clone(),
                    column: u.name.clone(),
                });
                name
            }
            None => return Err(not_ready("has no unique index")),
        };
        blockers()?;
        if opts.rename && !opts.drop_integer_key && o.legacy.is_some() {
            return Err(Refusal::LegacyTaken {
                parent: p,
                name: opts.legacy_name.clone(),
            });
        }
        let pk = quote_ident(&key.constraint);
        let (k, uc) = (quote_ident(&kc.name), quote_ident(&u.name));
        plan.locked.push(format!(
            "ALTER TABLE {t} DROP CONSTRAINT {pk}, ADD CONSTRAINT {pk} PRIMARY KEY USING INDEX {}",
            quote_ident(&uuid_index)
        ));
        if opts.drop_integer_key {
            plan.locked.push(format!("ALTER TABLE {t} DROP COLUMN {k}"));
        } else {
            let final_name = if opts.rename {
                opts.legacy_name.clone()
            } else {
                kc.name.clone()
            };
            let index = match &o.integer_unique {
                Some(IntegerUnique::Constraint(_)) => None,
                Some(IntegerUnique::Index(i)) if i.valid => Some(i.name.clone()),
                Some(IntegerUnique::Index(i)) => {
                    plan.builds.push(Build::DropInvalid {
                        name: i.name.clone(),
                    });
                    plan.builds.push(Build::Index {
                        name: i.name.clone(),
                        column: kc.name.clone(),
                    });
                    Some(i.name.clone())
                }
                None => {
                    let name = integer_index_name(&parent.name, &final_name);
                    plan.builds.push(Build::Index {
                        name: name.clone(),
                        column: kc.name.clone(),
                    });
                    Some(name)
                }
            };
            if let Some(i) = index {
                let i = quote_ident(&i);
                plan.locked.push(format!(
                    "ALTER TABLE {t} ADD CONSTRAINT {i} UNIQUE USING INDEX {i}"
                ));
            }
            // A no-op while the column is NOT NULL, as dropping the key
            // leaves it; a guard should a server ever tie the two.
            plan.locked
                .push(format!("ALTER TABLE {t} ALTER COLUMN {k} SET NOT NULL"));
            if opts.rename {
                plan.locked.push(format!(
                    "ALTER TABLE {t} RENAME COLUMN {k} TO {}",
                    quote_ident(&opts.legacy_name)
                ));
            }
            plan.integer_column = Some(final_name);
        }
        if opts.rename {
            plan.locked
                .push(format!("ALTER TABLE {t} RENAME COLUMN {uc} TO {k}"));
            plan.key_column = kc.name.clone();
        } else {
            plan.key_column = u.name.clone();
        }
        plan.check_references = true;
        plan.moves_key = true;
        return Ok(plan);
    }
    if kc.type_name != "uuid" {
        return Err(Refusal::KeyType {
            parent: p,
            column: kc.name.clone(),
            type_name: kc.type_name.clone(),
        });
    }
    // The key is the uuid already: only a drop or renames can be left.
    if let (Some(given), None) = (&opts.integer_column, &o.integer) {
        if opts.drop_integer_key || opts.rename {
            return Err(Refusal::IntegerColumn {
                given: given.clone(),
                why: format!("{p} has no integer column of that name besides its key"),
            });
        }
    }
    plan.key_column = kc.name.clone();
    plan.integer_column = o.integer.as_ref().map(|c| c.name.clone());
    let renamed = kc.name != opts.uuid_column;
    if opts.drop_integer_key {
        if let Some(i) = &o.integer {
            blockers()?;
            plan.locked.push(format!(
                "ALTER TABLE {t} DROP COLUMN {}",
                quote_ident(&i.name)
            ));
            plan.check_references = true;
            plan.integer_column = None;
        }
    }
    if opts.rename && !renamed {
        let target = o
            .integer
            .as_ref()
            .map(|c| c.name.clone())
            .or_else(|| opts.integer_column.clone())
            .unwrap_or_else(|| "id".into());
        if let Some(i) = o.integer.as_ref().filter(|_| !opts.drop_integer_key) {
            if i.name != opts.legacy_name {
                if o.legacy.is_some() {
                    return Err(Refusal::LegacyTaken {
                        parent: p,
                        name: opts.legacy_name.clone(),
                    });
                }
                plan.locked.push(format!(
                    "ALTER TABLE {t} RENAME COLUMN {} TO {}",
                    quote_ident(&i.name),
                    quote_ident(&opts.legacy_name)
                ));
                plan.integer_column = Some(opts.legacy_name.clone());
            }
        }
        if target != kc.name {
            plan.locked.push(format!(
                "ALTER TABLE {t} RENAME COLUMN {} TO {}",
                quote_ident(&kc.name),
                quote_ident(&target)
            ));
            plan.key_column = target;
        }
    }
    Ok(plan)
}

const KEY_SQL: &str = "
SELECT con.conname::text,
       array_agg(a.attname::text ORDER BY k.n), array_agg(a.attnum ORDER BY k.n),
       array_agg(pg_catalog.format_type(a.atttypid, a.atttypmod) ORDER BY k.n),
       array_agg(a.attnotnull ORDER BY k.n)
  FROM pg_catalog.pg_constraint con
 CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY k(attnum, n)
  JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
 WHERE con.conrelid = $1::text::regclass AND con.contype = 'p'
 GROUP BY con.conname";

const COLUMN_SQL: &str = "
SELECT a.attname::text, a.attnum, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull
  FROM pg_catalog.pg_attribute a
 WHERE a.attrelid = $1::text::regclass AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped";

/// Unique indexes (not the key's) whose first key column is `$2`: name,
/// valid, the table constraint that owns it, and whether a constraint could
/// take it over (btree, one key column, default order, no predicate or
/// expression, not deferrable).
const INDEXES_SQL: &str = "
SELECT c.relname::text, i.indisvalid,
       (SELECT con.conname::text FROM pg_catalog.pg_constraint con
         WHERE con.conindid = i.indexrelid AND con.conrelid = i.indrelid
           AND con.contype IN ('p', 'u', 'x')),
       (i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = 1
        AND am.amname = 'btree' AND i.indoption[0] = 0 AND i.indimmediate)
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
  JOIN pg_catalog.pg_am am ON am.oid = c.relam
 WHERE i.indrelid = $1::text::regclass AND i.indisunique AND NOT i.indisprimary
   AND i.indkey[0] = $2::int2
 ORDER BY c.relname";

const REFERENCES_SQL: &str = "
SELECT n.nspname::text, c.relname::text, con.conname::text,
       (SELECT string_agg(a.attname::text, ', ' ORDER BY k.n)
          FROM unnest(con.conkey) WITH ORDINALITY k(attnum, n)
          JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum)
  FROM pg_catalog.pg_constraint con
  JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE con.contype = 'f' AND con.confrelid = $1::text::regclass
   AND $2::int2 = ANY (con.confkey) AND con.conparentid = 0
 ORDER BY 1, 2, 3";

const JOBS_SQL: &str = "
SELECT source_schema, source_table, phase FROM pgrekey.jobs
 WHERE parent_schema = $1 AND parent_table = $2
 ORDER BY 1, 2";

struct IndexRow {
    name: String,
    valid: bool,
    constraint: Option<String>,
    usable: bool,
}

async fn indexes(client: &Client, rel: &str, attnum: i16) -> Result<Vec<IndexRow>, Error> {
    Ok(client
        .query(INDEXES_SQL, &[&rel, &attnum])
        .await
        .map_err(Error::db("read the unique indexes of the parent"))?
        .iter()
        .map(|r| IndexRow {
            name: r.get(0),
            valid: r.get(1),
            constraint: r.get(2),
            usable: r.get::<_, Option<bool>>(3).unwrap_or(false),
        })
        .collect())
}

async fn column(client: &Client, rel: &str, name: &str) -> Result<Option<Column>, Error> {
    Ok(client
        .query_opt(COLUMN_SQL, &[&rel, &name])
        .await
        .map_err(Error::db(format!("read the column {name}")))?
        .map(|r| Column {
            name: r.get(0),
            attnum: r.get(1),
            type_name: r.get(2),
            not_null: r.get(3),
        }))
}

/// The foreign keys, in any schema, that reference column `attnum` of `rel`.
pub async fn references(client: &Client, rel: &str, attnum: i16) -> Result<Vec<Reference>, Error> {
    Ok(client
        .query(REFERENCES_SQL, &[&rel, &attnum])
        .await
        .map_err(Error::db(
            "read the foreign keys referencing the integer key",
        ))?
        .iter()
        .map(|r| Reference {
            table: QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)).to_string(),
            constraint: r.get(2),
            columns: r.get::<_, Option<String>>(3).unwrap_or_default(),
        })
        .collect())
}

/// Read the catalog (see [`Observed`]).
pub async fn observe(
    client: &Client,
    parent: &QualifiedName,
    opts: &Options,
) -> Result<Observed, Error> {
    let rel = parent.quoted();
    crate::prepare::require_parent(client, parent).await?;
    let key = client
        .query_opt(KEY_SQL, &[&rel])
        .await
        .map_err(Error::db(format!("read the primary key of {parent}")))?
        .map(|r| {
            let names: Vec<String> = r.get(1);
            let nums: Vec<i16> = r.get(2);
            let types: Vec<String> = r.get(3);
            let nn: Vec<bool> = r.get(4);
            Key {
                constraint: r.get(0),
                columns: names
                    .into_iter()
                    .zip(nums)
                    .zip(types)
                    .zip(nn)
                    .map(|(((name, attnum), type_name), not_null)| Column {
                        name,
                        attnum,
                        type_name,
                        not_null,
                    })
                    .collect(),
            }
        });
    let mut o = Observed {
        key,
        ..Observed::default()
    };
    let key_col = o
        .key
        .as_ref()
        .filter(|k| k.columns.len() == 1)
        .map(|k| k.columns[0].clone());
    o.uuid = column(client, &rel, &opts.uuid_column).await?;
    o.legacy = column(client, &rel, &opts.legacy_name).await?;
    o.integer = match &key_col {
        Some(k) if k.is_integer() => Some(k.clone()),
        Some(k) => {
            let mut found = None;
            let names = [
                opts.integer_column.clone(),
                Some(opts.legacy_name.clone()),
                Some("id".into()),
            ];
            let candidates = if opts.integer_column.is_some() {
                &names[..1]
            } else {
                &names[1..]
            };
            for n in candidates.iter().flatten() {
                if let Some(c) = column(client, &rel, n).await? {
                    if c.is_integer() && c.attnum != k.attnum {
                        found = Some(c);
                        break;
                    }
                }
            }
            found
        }
        None => None,
    };
    if let Some(u) = o.uuid.clone() {
        let ours = uuid_index_name(&parent.name, &u.name);
        let rows = indexes(client, &rel, u.attnum).await?;
        o.uuid_index = rows
            .iter()
            .find(|r| r.usable && r.valid && r.constraint.is_none())
            .or_else(|| {
                rows.iter()
                    .find(|r| r.name == ours && r.constraint.is_none())
            })
            .map(|r| Index {
                name: r.name.clone(),
                valid: r.valid,
            });
        o.uuid_constraint = rows
            .iter()
            .find(|r| r.valid && r.constraint.is_some())
            .and_then(|r| r.constraint.clone());
    }
    if let Some(i) = o.integer.clone() {
        let final_name = if opts.rename {
            opts.legacy_name.clone()
        } else {
            i.name.clone()
        };
        let ours = integer_index_name(&parent.name, &final_name);
        let rows = indexes(client, &rel, i.attnum).await?;
        o.integer_unique = rows
            .iter()
            .find(|r| r.usable && r.valid && r.constraint.is_some())
            .map(|r| IntegerUnique::Constraint(r.constraint.clone().unwrap_or_default()))
            .or_else(|| {
                rows.iter()
                    .find(|r| r.usable && r.valid && r.constraint.is_none())
                    .or_else(|| {
                        rows.iter()
                            .find(|r| r.name == ours && r.constraint.is_none())
                    })
                    .map(|r| {
                        IntegerUnique::Index(Index {
                            name: r.name.clone(),
                            valid: r.valid,
                        })
                    })
            });
        o.references = references(client, &rel, i.attnum).await?;
    }
    let has_jobs: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('pgrekey.jobs') IS NOT NULL",
            &[],
        )
        .await
        .map_err(Error::db("look for the pgrekey state schema"))?
        .get(0);
    if has_jobs {
        o.jobs = client
            .query(JOBS_SQL, &[&parent.schema, &parent.name])
            .await
            .map_err(Error::db("read the pgrekey job rows"))?
            .iter()
            .map(|r| Job {
                table: QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)).to_string(),
                phase: r.get(2),
            })
            .collect();
    }
    Ok(o)
}

/// One step that ran.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// What it was.
    pub label: String,
    /// Its SQL.
    pub sql: Vec<String>,
    /// Its attempts (the locked step).
    pub attempts: Vec<Attempt>,
    /// How long it took, milliseconds.
    pub ms: u64,
}

/// What `promote` did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct PromoteReport {
    /// The parent.
    pub parent: String,
    /// The key column after the run.
    pub key_column: String,
    /// The integer column after the run (`None`: dropped or unknown).
    pub integer_column: Option<String>,
    /// Whether this run moved the key from the integer.
    pub moved_key: bool,
    /// Whether nothing was left to do.
    pub already: bool,
    /// Whether the statements were only printed.
    pub dry_run: bool,
    /// The statements (dry run: to run; else: run).
    pub plan: Plan,
    /// The statements of the builds before the lock.
    pub builds_sql: Vec<String>,
    /// Steps run.
    pub steps: Vec<StepReport>,
    /// The longest time a lock that blocks writes was held, ms.
    pub longest_hold_ms: u64,
    /// Whether the columns were renamed by this run.
    pub renamed: bool,
}

impl std::fmt::Display for PromoteReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.parent;
        if self.already {
            writeln!(
                f,
                "the primary key of {p} is already its uuid column {}{}; nothing to do",
                self.key_column,
                match &self.integer_column {
                    Some(i) => format!(" (the integer key is {i})"),
                    None => String::new(),
                }
            )?;
            return Ok(());
        }
        if self.dry_run {
            writeln!(f, "promote {p} would run (dry run, nothing changed):")?;
            for b in &self.builds_sql {
                writeln!(f, "  {b};")?;
            }
            if !self.plan.locked.is_empty() {
                writeln!(
                    f,
                    "  BEGIN; SET LOCAL lock_timeout = …; LOCK TABLE {p} IN ACCESS EXCLUSIVE MODE;"
                )?;
                if self.plan.check_references {
                    writeln!(
                        f,
                        "  -- the foreign keys to the integer key read again: any refuses the step"
                    )?;
                }
                for s in &self.plan.locked {
                    writeln!(f, "  {s};")?;
                }
                writeln!(f, "  COMMIT;")?;
            }
            return Ok(());
        }
        writeln!(f, "promoted {p}:")?;
        for s in &self.steps {
            let mut line = format!("  {}: {} ms", s.label, s.ms);
            if let Some(last) = s.attempts.last() {
                line.push_str(&format!(
                    ", {} attempt(s), waits {} ms, lock held {} ms",
                    s.attempts.len(),
                    crate::locked_step::waits(&s.attempts),
                    last.held_ms
                ));
            }
            writeln!(f, "{line}")?;
        }
        writeln!(
            f,
            "primary key: {p}.{} (uuid); longest lock that blocks writes: {} ms",
            self.key_column, self.longest_hold_ms
        )?;
        match &self.integer_column {
            Some(i) if self.moved_key => writeln!(
                f,
                "the integer key {p}.{i} stays NOT NULL and UNIQUE; its default and sequence are unchanged"
            )?,
            Some(_) => {}
            None => writeln!(f, "the integer key is dropped (its sequence and its indexes with it)")?,
        }
        if self.renamed {
            writeln!(
                f,
                "renamed: {p}.{} is now the uuid{}; SQL that names {} now means the uuid (views keep what they selected: they bind columns by number)",
                self.key_column,
                self.integer_column
                    .as_ref()
                    .map(|i| format!(" and {p}.{i} the integer"))
                    .unwrap_or_default(),
                self.key_column
            )?;
        }
        if let Some(i) = &self.integer_column {
            writeln!(
                f,
                "next, once nothing uses {p}.{i}: pg-rekey promote --parent {p} --uuid-column {} --drop-integer-key",
                quote_ident(&self.key_column)
            )?;
        }
        Ok(())
    }
}

impl Build {
    /// Its statement.
    pub fn sql(&self, parent: &QualifiedName) -> String {
        match self {
            Build::DropInvalid { name } => format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
                quote_ident(&parent.schema),
                quote_ident(name)
            ),
            Build::Index { name, column } => format!(
                "CREATE UNIQUE INDEX CONCURRENTLY {} ON {} ({})",
                quote_ident(name),
                parent.quoted(),
                quote_ident(column)
            ),
        }
    }

    fn label(&self) -> String {
        match self {
            Build::DropInvalid { name } => format!("drop invalid index {name}"),
            Build::Index { name, .. } => format!("build unique index {name}"),
        }
    }
}

/// Run `promote` to the end (or, with `dry_run`, plan it).
pub async fn run(cfg: &PromoteConfig) -> Result<PromoteReport, Error> {
    let client = pg::connect(&cfg.spec, "promote").await?;
    let parent = &cfg.parent;
    let opts = &cfg.options;
    let observed = observe(&client, parent, opts).await?;
    let plan = remaining(&observed, parent, opts).map_err(Refusal::into_error)?;
    let renamed = opts.rename && plan.locked.iter().any(|s| s.contains(" RENAME COLUMN "));
    let mut report = PromoteReport {
        parent: parent.to_string(),
        key_column: plan.key_column.clone(),
        integer_column: plan.integer_column.clone(),
        moved_key: plan.moves_key,
        already: plan.is_empty(),
        dry_run: cfg.dry_run,
        plan: plan.clone(),
        builds_sql: plan.builds.iter().map(|b| b.sql(parent)).collect(),
        steps: Vec::new(),
        longest_hold_ms: 0,
        renamed,
    };
    if report.already || cfg.dry_run {
        return Ok(report);
    }
    info!(parent = %parent, builds = plan.builds.len(), statements = plan.locked.len(), "promoting");
    let t = parent.quoted();
    for b in &plan.builds {
        let started = Instant::now();
        let sql = b.sql(parent);
        client.batch_execute(&sql).await.map_err(|e| Error::Db {
            context: format!("{sql} (if it failed halfway, the next run drops the invalid index and builds it again)"),
            source: e,
        })?;
        report.steps.push(StepReport {
            label: b.label(),
            sql: vec![sql],
            attempts: Vec::new(),
            ms: started.elapsed().as_millis() as u64,
        });
    }
    if !plan.locked.is_empty() {
        let started = Instant::now();
        let attnum = observed.integer.as_ref().map(|c| c.attnum);
        let int_name = observed
            .integer
            .as_ref()
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let attempts = locked_with(&client, &cfg.limits, &t, "promote", || async {
            if let (true, Some(attnum)) = (plan.check_references, attnum) {
                let refs = references(&client, &t, attnum).await?;
                if !refs.is_empty() {
                    return Err(Refusal::Referenced {
                        parent: parent.to_string(),
                        column: int_name.clone(),
                        refs,
                    }
                    .into_error());
                }
            }
            for s in &plan.locked {
                client.batch_execute(s).await.map_err(|e| Error::Db {
                    context: format!("{s} (rolled back: {parent} is as it was)"),
                    source: e,
                })?;
            }
            Ok(())
        })
        .await?;
        report.longest_hold_ms = attempts.last().map(|a| a.held_ms).unwrap_or(0);
        report.steps.push(StepReport {
            label: if plan.moves_key {
                "move the primary key".into()
            } else {
                "drop / rename columns".into()
            },
            sql: plan.locked.clone(),
            attempts,
            ms: started.elapsed().as_millis() as u64,
        });
    }
    info!(parent = %parent, key = %report.key_column, hold_ms = report.longest_hold_ms, "promoted");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, attnum: i16, type_name: &str) -> Column {
        Column {
            name: name.into(),
            attnum,
            type_name: type_name.into(),
            not_null: true,
        }
    }

    fn users() -> QualifiedName {
        QualifiedName::new("public", "users")
    }

    /// `prepare`'s end state: integer key `id`, `uuid_id` with a plain
    /// unique index.
    fn prepared() -> Observed {
        Observed {
            key: Some(Key {
                constraint: "users_pkey".into(),
                columns: vec![col("id", 1, "bigint")],
            }),
            uuid: Some(col("uuid_id", 3, "uuid")),
            uuid_index: Some(Index {
                name: "users_uuid_id_key".into(),
                valid: true,
            }),
            integer: Some(col("id", 1, "bigint")),
            ..Observed::default()
        }
    }

    fn promoted() -> Observed {
        Observed {
            key: Some(Key {
                constraint: "users_pkey".into(),
                columns: vec![col("uuid_id", 3, "uuid")],
            }),
            uuid: Some(col("uuid_id", 3, "uuid")),
            integer: Some(col("id", 1, "bigint")),
            integer_unique: Some(IntegerUnique::Constraint("users_id_key".into())),
            ..Observed::default()
        }
    }

    #[test]
    fn the_default_keeps_the_integer_unique_through_a_prebuilt_index() {
        let plan = remaining(&prepared(), &users(), &Options::new("uuid_id")).unwrap();
        assert_eq!(
            plan.builds,
            vec![Build::Index {
                name: "users_id_key".into(),
                column: "id".into()
            }]
        );
        assert_eq!(
            plan.locked,
            vec![
                "ALTER TABLE \"public\".\"users\" DROP CONSTRAINT \"users_pkey\", ADD CONSTRAINT \"users_pkey\" PRIMARY KEY USING INDEX \"users_uuid_id_key\"",
                "ALTER TABLE \"public\".\"users\" ADD CONSTRAINT \"users_id_key\" UNIQUE USING INDEX \"users_id_key\"",
                "ALTER TABLE \"public\".\"users\" ALTER COLUMN \"id\" SET NOT NULL",
            ]
        );
        assert!(plan.check_references && plan.moves_key);
        assert_eq!(plan.key_column, "uuid_id");
        assert_eq!(plan.integer_column.as_deref(), Some("id"));
    }

    #[test]
    fn drop_and_rename_run_in_the_same_locked_step() {
        let opts = Options {
            drop_integer_key: true,
            ..Options::new("uuid_id")
        };
        let plan = remaining(&prepared(), &users(), &opts).unwrap();
        assert!(
            plan.builds.is_empty(),
            "no integer index when it is dropped"
        );
        assert_eq!(
            plan.locked[1],
            "ALTER TABLE \"public\".\"users\" DROP COLUMN \"id\""
        );
        assert_eq!(plan.integer_column, None);

        let opts = Options {
            rename: true,
            ..Options::new("uuid_id")
        };
        let plan = remaining(&prepared(), &users(), &opts).unwrap();
        assert_eq!(
            plan.builds,
            vec![Build::Index {
                name: "users_legacy_id_key".into(),
                column: "id".into()
            }]
        );
        assert_eq!(
            &plan.locked[3..],
            &[
                "ALTER TABLE \"public\".\"users\" RENAME COLUMN \"id\" TO \"legacy_id\""
                    .to_string(),
                "ALTER TABLE \"public\".\"users\" RENAME COLUMN \"uuid_id\" TO \"id\"".to_string(),
            ]
        );
        assert_eq!(plan.key_column, "id");
    }

    #[test]
    fn references_and_jobs_refuse_naming_each() {
        let mut o = prepared();
        o.references = vec![Reference {
            table: "app.sessions".into(),
            constraint: "sessions_user_id_fkey".into(),
            columns: "user_id".into(),
        }];
        let e = remaining(&o, &users(), &Options::new("uuid_id")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("app.sessions constraint sessions_user_id_fkey (user_id)"),
            "{msg}"
        );
        assert_eq!(e.into_error().exit_code(), 1);
        o.jobs = vec![Job {
            table: "public.sessions".into(),
            phase: "cut_over".into(),
        }];
        let msg = remaining(&o, &users(), &Options::new("uuid_id"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("pg-rekey finish --table public.sessions"),
            "{msg}"
        );
    }

    #[test]
    fn an_unprepared_uuid_column_names_prepare() {
        let mut o = prepared();
        o.uuid_index = None;
        let e = remaining(&o, &users(), &Options::new("uuid_id")).unwrap_err();
        assert!(e.to_string().contains("has no unique index"), "{e}");
        assert!(e.to_string().contains("pg-rekey prepare"), "{e}");
        assert_eq!(e.into_error().exit_code(), 2);
        // Unique through a constraint only: promote builds its own index.
        o.uuid_constraint = Some("users_uuid_id_key".into());
        let plan = remaining(&o, &users(), &Options::new("uuid_id")).unwrap();
        assert_eq!(
            plan.builds[0],
            Build::Index {
                name: "users_uuid_id_promote".into(),
                column: "uuid_id".into()
            }
        );
        o.uuid = Some(Column {
            not_null: false,
            ..col("uuid_id", 3, "uuid")
        });
        assert!(remaining(&o, &users(), &Options::new("uuid_id"))
            .unwrap_err()
            .to_string()
            .contains("is nullable"));
    }

    #[test]
    fn a_promoted_key_needs_nothing_unless_asked() {
        let plan = remaining(&promoted(), &users(), &Options::new("uuid_id")).unwrap();
        assert!(plan.is_empty());
        let opts = Options {
            drop_integer_key: true,
            ..Options::new("uuid_id")
        };
        let plan = remaining(&promoted(), &users(), &opts).unwrap();
        assert_eq!(
            plan.locked,
            vec!["ALTER TABLE \"public\".\"users\" DROP COLUMN \"id\""]
        );
        // Renamed already: nothing.
        let o = Observed {
            key: Some(Key {
                constraint: "users_pkey".into(),
                columns: vec![col("id", 3, "uuid")],
            }),
            integer: Some(col("legacy_id", 1, "bigint")),
            legacy: Some(col("legacy_id", 1, "bigint")),
            ..Observed::default()
        };
        let opts = Options {
            rename: true,
            ..Options::new("uuid_id")
        };
        assert!(remaining(&o, &users(), &opts).unwrap().is_empty());
        // A later rename of a promoted key.
        let plan = remaining(&promoted(), &users(), &opts).unwrap();
        assert_eq!(
            plan.locked,
            vec![
                "ALTER TABLE \"public\".\"users\" RENAME COLUMN \"id\" TO \"legacy_id\"",
                "ALTER TABLE \"public\".\"users\" RENAME COLUMN \"uuid_id\" TO \"id\""
            ]
        );
    }

    #[test]
    fn a_taken_legacy_name_refuses() {
        let mut o = prepared();
        o.legacy = Some(col("legacy_id", 4, "text"));
        let opts = Options {
            rename: true,
            ..Options::new("uuid_id")
        };
        assert!(matches!(
            remaining(&o, &users(), &opts),
            Err(Refusal::LegacyTaken { .. })
        ));
    }
}
