//! Catalog introspection: the parent, the tables that reference it, and
//! everything the shadow DDL needs about each table.
//!
//! Invariants:
//! - Every value is bound as a parameter; the queries live in `sql/*.sql`.
//! - Definitions printed by the server (`pg_get_expr`, `pg_get_constraintdef`,
//!   `pg_get_indexdef`, `format_type`) are read with `search_path = ''`, the way
//!   pg_dump reads them, so every type, function, sequence and collation outside
//!   `pg_catalog` comes out schema-qualified. The DDL built from them then means
//!   the same thing in any session, whatever its search path. The caller's
//!   search path is restored afterwards (also on error, when the session
//!   allows; not if the future is dropped half-way, so do not race
//!   `load_table` against a timeout on a session that is used afterwards).
//! - Catalog reads are separate statements, not one snapshot: DDL racing with
//!   planning may be seen half-way. The rewrite detects DDL during the job from
//!   the stream's relation messages, which is the check that matters.
//! - A column is a *reference* when its type is `int2`, `int4` or `int8` and it
//!   is the single column of a foreign key to the parent's primary key column.
//!   Other foreign keys to the parent (to its uuid column, composite ones) are
//!   ordinary outgoing foreign keys.

use tokio_postgres::Client;

use super::model::{ColumnSpec, IntKind, ParentSpec, TableSpec};
use super::PlanError;
use crate::pg::QualifiedName;

const TABLE_SQL: &str = include_str!("../../sql/table.sql");
const COLUMNS_SQL: &str = include_str!("../../sql/columns.sql");
const CONSTRAINTS_SQL: &str = include_str!("../../sql/constraints.sql");
const INDEXES_SQL: &str = include_str!("../../sql/indexes.sql");
const DISCOVER_SQL: &str = include_str!("../../sql/discover.sql");
const PARENT_SQL: &str = include_str!("../../sql/parent.sql");

/// Prefix of every relation pg-rekey creates next to a source table (shadows,
/// renamed old tables); discovery skips tables whose name starts with it.
pub const OWN_PREFIX: &str = "_rekey_";

pub use crate::model::{
    CheckConstraint, ColumnDetail, ForeignKey, IdentitySequence, IndexDetail, KeyConstraint,
    TableDetail,
};

/// Facts about the parent, problems included, so the preflight can list all of them.
#[derive(Debug)]
pub(crate) struct ParentFacts {
    pub table: QualifiedName,
    pub oid: u32,
    pub key_attnum: Option<i16>,
    pub key_column: Option<String>,
    pub key_kind: Option<IntKind>,
    pub uuid_column: String,
    /// Problems in the order an operator would fix them.
    pub problems: Vec<PlanError>,
}

impl ParentFacts {
    /// The spec when there is no problem at all.
    fn into_spec(mut self) -> Result<ParentSpec, PlanError> {
        if !self.problems.is_empty() {
            return Err(self.problems.remove(0));
        }
        match (self.key_column, self.key_kind) {
            (Some(key_column), Some(key_kind)) => Ok(ParentSpec {
                table: self.table,
                oid: self.oid,
                key_column,
                key_kind,
                uuid_column: self.uuid_column,
            }),
            _ => Err(PlanError::ParentNoPrimaryKey { table: self.table }),
        }
    }
}

/// Read the parent: a single-column integer primary key and a uuid column that
/// is NOT NULL with a unique index on it alone. The first problem found is the
/// error; its message says how to fix it.
pub async fn load_parent(
    client: &Client,
    table: &QualifiedName,
    uuid_column: &str,
) -> Result<ParentSpec, PlanError> {
    parent_facts(client, table, uuid_column).await?.into_spec()
}

pub(crate) async fn parent_facts(
    client: &Client,
    table: &QualifiedName,
    uuid_column: &str,
) -> Result<ParentFacts, PlanError> {
    let row = client
        .query_opt(PARENT_SQL, &[&table.schema, &table.name, &uuid_column])
        .await
        .map_err(PlanError::db(format!("reading parent {table}")))?
        .ok_or_else(|| PlanError::TableNotFound {
            table: table.clone(),
        })?;
    let relkind: String = row.get("relkind");
    if relkind != "r" && relkind != "p" {
        return Err(PlanError::NotATable {
            table: table.clone(),
            relkind,
        });
    }
    let mut facts = ParentFacts {
        table: table.clone(),
        oid: row.get("oid"),
        key_attnum: None,
        key_column: None,
        key_kind: None,
        uuid_column: uuid_column.to_string(),
        problems: Vec::new(),
    };
    let pk: Option<Vec<i16>> = row.get("pk_attnums");
    let pk_columns: Vec<String> = row.get("pk_columns");
    let pk_type_oids: Vec<u32> = row.get("pk_type_oids");
    let pk_types: Vec<String> = row.get("pk_types");
    match (
        pk.as_deref(),
        pk_columns.first(),
        pk_type_oids.first(),
        pk_types.first(),
    ) {
        (None, ..) => facts.problems.push(PlanError::ParentNoPrimaryKey {
            table: table.clone(),
        }),
        (Some(attnums), ..) if attnums.len() != 1 => {
            facts.problems.push(PlanError::ParentCompositeKey {
                table: table.clone(),
                columns: pk_columns.clone(),
            })
        }
        (Some(attnums), Some(column), Some(type_oid), Some(type_sql)) => {
            facts.key_attnum = attnums.first().copied();
            facts.key_column = Some(column.clone());
            match IntKind::from_oid(*type_oid) {
                Some(kind) => facts.key_kind = Some(kind),
                None => facts.problems.push(PlanError::ParentKeyNotInteger {
                    table: table.clone(),
                    column: column.clone(),
                    type_sql: type_sql.clone(),
                }),
            }
        }
        _ => facts.problems.push(PlanError::ParentNoPrimaryKey {
            table: table.clone(),
        }),
    }
    let uuid_attnum: Option<i16> = row.get("uuid_attnum");
    let column = uuid_column.to_string();
    if uuid_attnum.is_none() {
        facts.problems.push(PlanError::UuidColumnMissing {
            table: table.clone(),
            column,
        });
        return Ok(facts);
    }
    let uuid_type_oid: Option<u32> = row.get("uuid_type_oid");
    if uuid_type_oid != Some(UUID_OID) {
        let type_sql: Option<String> = row.get("uuid_type");
        facts.problems.push(PlanError::UuidColumnNotUuid {
            table: table.clone(),
            column: column.clone(),
            type_sql: type_sql.unwrap_or_default(),
        });
    }
    let not_null: Option<bool> = row.get("uuid_not_null");
    if not_null != Some(true) {
        facts.problems.push(PlanError::UuidColumnNullable {
            table: table.clone(),
            column: column.clone(),
        });
    }
    let unique: bool = row.get("uuid_unique");
    if !unique {
        facts.problems.push(PlanError::UuidColumnNotUnique {
            table: table.clone(),
            column,
        });
    }
    Ok(facts)
}

const UUID_OID: u32 = 2950;

/// Every table with a foreign key to the parent's primary key, by name; the
/// parent itself and pg-rekey's own tables (names starting with [`OWN_PREFIX`])
/// left out.
pub async fn discover_tables(
    client: &Client,
    parent: &ParentSpec,
) -> Result<Vec<QualifiedName>, PlanError> {
    let attnum: i16 = client
        .query_opt(
            "SELECT attnum FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attname = $2 AND NOT attisdropped",
            &[&parent.oid, &parent.key_column],
        )
        .await
        .map_err(PlanError::db(format!("reading the key of {}", parent.table)))?
        .map(|r| r.get(0))
        .ok_or_else(|| PlanError::ParentNoPrimaryKey {
            table: parent.table.clone(),
        })?;
    discover_by_key(client, parent.oid, attnum).await
}

pub(crate) async fn discover_by_key(
    client: &Client,
    parent_oid: u32,
    key_attnum: i16,
) -> Result<Vec<QualifiedName>, PlanError> {
    let rows = client
        .query(DISCOVER_SQL, &[&parent_oid, &key_attnum, &OWN_PREFIX])
        .await
        .map_err(PlanError::db("discovering referencing tables"))?;
    Ok(rows
        .iter()
        .map(|r| QualifiedName::new(r.get::<_, String>("schema"), r.get::<_, String>("name")))
        .collect())
}

/// Run `f` with `search_path = ''` on the session, restoring the old value after.
async fn with_empty_search_path<T>(
    client: &Client,
    f: impl std::future::Future<Output = Result<T, PlanError>>,
) -> Result<T, PlanError> {
    let saved: String = client
        .query_one("SELECT pg_catalog.current_setting('search_path')", &[])
        .await
        .map_err(PlanError::db("reading search_path"))?
        .get(0);
    client
        .query_one(
            "SELECT pg_catalog.set_config('search_path', '', false)",
            &[],
        )
        .await
        .map_err(PlanError::db("clearing search_path for catalog reads"))?;
    let result = f.await;
    let restored = client
        .query_one(
            "SELECT pg_catalog.set_config('search_path', $1, false)",
            &[&saved],
        )
        .await;
    match (result, restored) {
        (Ok(v), Ok(_)) => Ok(v),
        (Ok(_), Err(e)) => Err(PlanError::db("restoring search_path")(e)),
        // The read error is what matters; an aborted transaction restores the setting itself.
        (Err(e), _) => Err(e),
    }
}

/// Load one table: the shared [`TableSpec`] (its shadow name from
/// [`crate::naming::shadow_name`]) and every detail the shadow DDL needs.
///
/// Fails when the table does not exist, is not a table, or has neither a primary
/// key nor a replica identity index.
pub async fn load_table(
    client: &Client,
    table: &QualifiedName,
    parent: &ParentSpec,
) -> Result<TableDetail, PlanError> {
    with_empty_search_path(client, load_table_inner(client, table, parent)).await
}

async fn load_table_inner(
    client: &Client,
    table: &QualifiedName,
    parent: &ParentSpec,
) -> Result<TableDetail, PlanError> {
    let ctx = |what: &str| format!("reading {what} of {table}");
    let t = client
        .query_opt(TABLE_SQL, &[&table.schema, &table.name])
        .await
        .map_err(PlanError::db(ctx("the table")))?
        .ok_or_else(|| PlanError::TableNotFound {
            table: table.clone(),
        })?;
    let relkind: String = t.get("relkind");
    if relkind != "r" && relkind != "p" {
        return Err(PlanError::NotATable {
            table: table.clone(),
            relkind,
        });
    }
    let oid: u32 = t.get("oid");

    let constraint_rows = client
        .query(CONSTRAINTS_SQL, &[&oid])
        .await
        .map_err(PlanError::db(ctx("the constraints")))?;
    let mut checks = Vec::new();
    let mut primary_key = None;
    let mut uniques = Vec::new();
    let mut exclusions = Vec::new();
    let mut foreign_keys = Vec::new();
    for r in &constraint_rows {
        let contype: String = r.get("contype");
        let name: String = r.get("name");
        let definition: String = r.get("definition");
        let columns: Vec<String> = r.get("columns");
        match contype.as_str() {
            "c" => checks.push(CheckConstraint {
                name,
                definition,
                validated: r.get("convalidated"),
            }),
            "p" | "u" | "x" => {
                let k = KeyConstraint {
                    name,
                    definition,
                    columns,
                    index_name: r.get("index_name"),
                };
                match contype.as_str() {
                    "p" => primary_key = Some(k),
                    "u" => uniques.push(k),
                    _ => exclusions.push(k),
                }
            }
            _ => {
                let referenced_oid: u32 = r.get("ref_oid");
                let referenced_columns: Vec<String> = r.get("ref_columns");
                let to_parent_key = referenced_oid == parent.oid
                    && columns.len() == 1
                    && referenced_columns.len() == 1
                    && referenced_columns.first() == Some(&parent.key_column);
                foreign_keys.push(ForeignKey {
                    name,
                    referenced: QualifiedName::new(
                        r.get::<_, Option<String>>("ref_schema").unwrap_or_default(),
                        r.get::<_, Option<String>>("ref_table").unwrap_or_default(),
                    ),
                    referenced_oid,
                    referenced_columns,
                    on_update: first_char(r.get("on_update")),
                    on_delete: first_char(r.get("on_delete")),
                    match_type: first_char(r.get("match_type")),
                    deferrable: r.get("condeferrable"),
                    deferred: r.get("condeferred"),
                    validated: r.get("convalidated"),
                    definition,
                    to_parent_key,
                    self_reference: referenced_oid == oid,
                    columns,
                });
            }
        }
    }

    let column_rows = client
        .query(COLUMNS_SQL, &[&oid])
        .await
        .map_err(PlanError::db(ctx("the columns")))?;
    let mut specs = Vec::with_capacity(column_rows.len());
    let mut details = Vec::with_capacity(column_rows.len());
    for r in &column_rows {
        let name: String = r.get("name");
        let type_oid: u32 = r.get("type_oid");
        let identity = first_char_opt(r.get("identity"));
        let generated = first_char_opt(r.get("generated"));
        let is_reference = foreign_keys
            .iter()
            .any(|f| f.to_parent_key && f.columns.first() == Some(&name));
        let owned_sequence = match (
            r.get::<_, Option<String>>("seq_schema"),
            r.get::<_, Option<String>>("seq_name"),
        ) {
            (Some(s), Some(n)) => Some(QualifiedName::new(s, n)),
            _ => None,
        };
        let identity_seq = match (identity, r.get::<_, Option<i64>>("seqstart")) {
            (Some(kind), Some(start)) => Some(IdentitySequence {
                kind,
                options: crate::pg::SequenceOptions {
                    start,
                    increment: r.get::<_, Option<i64>>("seqincrement").unwrap_or(1),
                    min: r.get::<_, Option<i64>>("seqmin").unwrap_or(1),
                    max: r.get::<_, Option<i64>>("seqmax").unwrap_or(i64::MAX),
                    cache: r.get::<_, Option<i64>>("seqcache").unwrap_or(1),
                    cycle: r.get::<_, Option<bool>>("seqcycle").unwrap_or(false),
                },
            }),
            _ => None,
        };
        specs.push(ColumnSpec {
            attnum: r.get("attnum"),
            type_sql: r.get("type_sql"),
            type_oid,
            reference: if is_reference {
                IntKind::from_oid(type_oid)
            } else {
                None
            },
            not_null: r.get("attnotnull"),
            generated: generated == Some('s'),
            identity,
            name: name.clone(),
        });
        details.push(ColumnDetail {
            name,
            typtype: r.get("typtype"),
            default: r.get("default_expr"),
            generated_expr: r.get("generated_expr"),
            identity: identity_seq,
            owned_sequence,
            collation: r.get("collation"),
            comment: r.get("comment"),
            storage: {
                let storage: String = r.get("storage");
                let type_storage: String = r.get("type_storage");
                (storage != type_storage)
                    .then(|| storage.chars().next())
                    .flatten()
            },
            compression: first_char_opt(r.get("compression")),
            statistics: r.get::<_, Option<i32>>("stattarget").filter(|n| *n >= 0),
            options: user_options(
                r.get::<_, Option<Vec<String>>>("options")
                    .unwrap_or_default(),
            ),
        });
    }

    let index_rows = client
        .query(INDEXES_SQL, &[&oid])
        .await
        .map_err(PlanError::db(ctx("the indexes")))?;
    let mut indexes = Vec::with_capacity(index_rows.len());
    for r in &index_rows {
        let name: String = r.get("name");
        let unique: bool = r.get("indisunique");
        let definition: String = r.get("definition");
        let quoted_name: String = r.get("quoted_name");
        let quoted_table: String = r.get("quoted_table");
        let using_clause = using_clause(&definition, unique, &quoted_name, &quoted_table)
            .ok_or_else(|| PlanError::UnexpectedDefinition {
                table: table.clone(),
                object: format!("index {name}"),
                definition: definition.clone(),
            })?
            .to_string();
        indexes.push(IndexDetail {
            name,
            unique,
            primary: r.get("indisprimary"),
            valid: r.get("indisvalid"),
            replica_identity: r.get("indisreplident"),
            clustered: r.get("indisclustered"),
            definition,
            using_clause,
            key_attnums: r.get("key_attnums"),
            expressions: r.get("has_expressions"),
            partial: r.get("partial"),
            constraint: r.get("constraint_name"),
        });
    }

    let key_index = indexes
        .iter()
        .find(|i| i.primary)
        .or_else(|| indexes.iter().find(|i| i.replica_identity))
        .ok_or_else(|| PlanError::NoRowIdentity {
            table: table.clone(),
        })?;
    let mut key = Vec::with_capacity(key_index.key_attnums.len());
    for attnum in &key_index.key_attnums {
        let pos = specs
            .iter()
            .position(|c| c.attnum == *attnum)
            .ok_or_else(|| PlanError::NoRowIdentity {
                table: table.clone(),
            })?;
        key.push(pos);
    }

    Ok(TableDetail {
        spec: TableSpec {
            source: table.clone(),
            oid,
            shadow: crate::naming::shadow_name(table),
            columns: specs,
            key,
        },
        relkind,
        persistence: t.get("relpersistence"),
        inheritance: t.get("inheritance"),
        owned: t.get("owned"),
        columns: details,
        checks,
        primary_key,
        uniques,
        exclusions,
        indexes,
        foreign_keys,
        comment: t.get("comment"),
        replica_identity: t.get("relreplident"),
        reloptions: t
            .get::<_, Option<Vec<String>>>("reloptions")
            .unwrap_or_default(),
        tablespace: t.get("tablespace"),
        row_estimate: t.get("row_estimate"),
        rows_known: t.get("rows_known"),
        table_bytes: t.get("table_bytes"),
        index_bytes: t.get("index_bytes"),
    })
}

fn first_char(s: String) -> char {
    s.chars().next().unwrap_or(' ')
}

fn first_char_opt(s: Option<String>) -> Option<char> {
    s.and_then(|s| s.chars().next())
}

/// The part of a `pg_get_indexdef` text from `USING` on.
///
/// The server prints `CREATE [UNIQUE] INDEX <name> ON <schema>.<table> USING …`
/// with the name and table quoted by its own `quote_ident` rules; the caller
/// passes exactly those spellings (read from the server), so the prefix is
/// matched literally rather than parsed (`ON ONLY`, printed for partitioned
/// tables, is accepted so that they can be planned and refused with a reason).
/// `None` when it does not match.
pub fn using_clause<'a>(
    definition: &'a str,
    unique: bool,
    quoted_name: &str,
    quoted_table: &str,
) -> Option<&'a str> {
    let unique = if unique { "UNIQUE " } else { "" };
    let plain = format!("CREATE {unique}INDEX {quoted_name} ON {quoted_table} ");
    let only = format!("CREATE {unique}INDEX {quoted_name} ON ONLY {quoted_table} ");
    let rest = definition
        .strip_prefix(&plain)
        .or_else(|| definition.strip_prefix(&only))?;
    rest.starts_with("USING ").then_some(rest)
}

/// The attribute options a user set, without the ones the server assigns
/// itself: a name in the `pg_` namespace, which PostgreSQL reserves (Debian's
/// PostgreSQL 15.20 stamps every column with `pg_attver=<n>`, a value of
/// its own per table). Carrying such an option to the new table would copy
/// the old table's stamp.
pub fn user_options(options: Vec<String>) -> Vec<String> {
    options
        .into_iter()
        .filter(|o| !o.split('=').next().unwrap_or_default().starts_with("pg_"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn using_clause_matches_the_exact_prefix() {
        assert_eq!(
            using_clause(
                "CREATE UNIQUE INDEX \"My Idx\" ON public.\"T\" USING btree (a) WHERE (a > 0)",
                true,
                "\"My Idx\"",
                "public.\"T\""
            ),
            Some("USING btree (a) WHERE (a > 0)")
        );
        // A name containing " ON " and " USING " does not confuse it.
        assert_eq!(
            using_clause(
                "CREATE INDEX \"x ON y USING z\" ON s.t USING gin (c)",
                false,
                "\"x ON y USING z\"",
                "s.t"
            ),
            Some("USING gin (c)")
        );
        assert_eq!(
            using_clause(
                "CREATE INDEX i ON ONLY s.t USING btree (a)",
                false,
                "i",
                "s.t"
            ),
            Some("USING btree (a)")
        );
        assert_eq!(
            using_clause("CREATE INDEX j ON s.t USING btree (a)", false, "i", "s.t"),
            None
        );
        assert_eq!(
            using_clause("CREATE INDEX i ON s.t USING btree (a)", true, "i", "s.t"),
            None
        );
    }

    #[test]
    fn server_assigned_column_options_are_not_carried() {
        let got = super::user_options(vec![
            "pg_attver=26520760".into(),
            "n_distinct=100".into(),
            "n_distinct_inherited=7".into(),
        ]);
        assert_eq!(got, vec!["n_distinct=100", "n_distinct_inherited=7"]);
    }
}
