//! Planning: what will be rewritten, read from the catalogs.
//!
//! - [`model`]: the shared table model every phase uses.
//! - [`catalog`]: introspection (`load_parent`, `discover_tables`, `load_table`).
//! - [`dependents`]: every object that depends on a reference column, and
//!   whether the swap carries it, rewrites it or is blocked by it — decided by
//!   trying each definition against uuid in a rolled-back transaction.
//! - [`sqltext`]: substitution of names in, and behaviour-keeping rewrites of,
//!   definitions the server printed.
//! - [`preflight`]: every finding about the server, the role, the parent and the
//!   tables, collected at once into a [`preflight::PlanReport`].
//!
//! Errors ([`PlanError`]) are facts that stop planning for one object; the
//! preflight turns each into a finding so that one `plan` run lists them all.

pub mod catalog;
pub mod dependents;
pub mod model;
pub mod preflight;
pub mod sqltext;

use crate::pg::{quote_ident, QualifiedName};

/// Why a parent or a table cannot be planned. Each message names the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A catalog query failed.
    #[error("{context}: {}", crate::pg::diag::chain(source))]
    Db {
        /// What was being read.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// No relation of that name.
    #[error("table {table} does not exist; check the name and schema (write schema.table, quote mixed-case names)")]
    TableNotFound {
        /// The name looked up.
        table: QualifiedName,
    },

    /// The relation is a view, sequence, foreign table….
    #[error("{table} is not an ordinary table (relkind {relkind:?}); only ordinary tables can be rewritten")]
    NotATable {
        /// The relation.
        table: QualifiedName,
        /// Its `relkind`.
        relkind: String,
    },

    /// The parent has no primary key.
    #[error("parent {table} has no primary key; pg-rekey maps its integer primary key to the uuid column: add one (ALTER TABLE {} ADD PRIMARY KEY (id))", table.quoted())]
    ParentNoPrimaryKey {
        /// The parent.
        table: QualifiedName,
    },

    /// The parent's primary key has several columns.
    #[error("parent {table} has a composite primary key ({}); pg-rekey needs a single integer key column", columns.join(", "))]
    ParentCompositeKey {
        /// The parent.
        table: QualifiedName,
        /// Its key columns.
        columns: Vec<String>,
    },

    /// The parent's key is not int2/int4/int8.
    #[error("parent {table} key column {column} is {type_sql}, not smallint, integer or bigint; pg-rekey rewrites integer references only")]
    ParentKeyNotInteger {
        /// The parent.
        table: QualifiedName,
        /// The key column.
        column: String,
        /// Its type.
        type_sql: String,
    },

    /// The uuid column does not exist.
    #[error(
        "parent {table} has no column {column:?}; add and backfill it online first: {}",
        prepare_command(table, column, false)
    )]
    UuidColumnMissing {
        /// The parent.
        table: QualifiedName,
        /// The uuid column asked for.
        column: String,
    },

    /// The uuid column is not of type uuid.
    #[error("parent {table} column {column:?} is {type_sql}, not uuid; pass the uuid column with --uuid-column or convert it (ALTER TABLE {} ALTER COLUMN {} TYPE uuid USING {}::uuid)", table.quoted(), quote_ident(column), quote_ident(column))]
    UuidColumnNotUuid {
        /// The parent.
        table: QualifiedName,
        /// The column.
        column: String,
        /// Its type.
        type_sql: String,
    },

    /// The uuid column allows NULL.
    #[error(
        "parent {table} column {column:?} allows NULL; complete it online (rows without a uuid get one, NOT NULL without a long lock, a unique index): {}",
        prepare_command(table, column, true)
    )]
    UuidColumnNullable {
        /// The parent.
        table: QualifiedName,
        /// The column.
        column: String,
    },

    /// No unique index on the uuid column alone.
    #[error("parent {table} column {column:?} has no unique index on it alone (foreign keys need one); build it without blocking writes: {}", prepare_command(table, column, true))]
    UuidColumnNotUnique {
        /// The parent.
        table: QualifiedName,
        /// The column.
        column: String,
    },

    /// Neither a primary key nor a replica identity index.
    #[error("{table} has no primary key and no replica identity index, so its rows cannot be matched while streaming; add a primary key (ALTER TABLE {} ADD PRIMARY KEY (…)) or ALTER TABLE {} REPLICA IDENTITY USING INDEX <a unique index on NOT NULL columns>", table.quoted(), table.quoted())]
    NoRowIdentity {
        /// The table.
        table: QualifiedName,
    },

    /// A definition printed by the server did not have the expected shape.
    #[error("cannot re-target {object} of {table}: unexpected definition {definition:?}; please report this")]
    UnexpectedDefinition {
        /// The table.
        table: QualifiedName,
        /// The index or constraint.
        object: String,
        /// What the server printed.
        definition: String,
    },
}

impl PlanError {
    /// A stable, machine-readable code (the preflight finding code).
    pub fn code(&self) -> &'static str {
        match self {
            PlanError::Db { .. } => "catalog_query_failed",
            PlanError::TableNotFound { .. } => "table_not_found",
            PlanError::NotATable { .. } => "not_a_table",
            PlanError::ParentNoPrimaryKey { .. } => "parent_no_primary_key",
            PlanError::ParentCompositeKey { .. } => "parent_composite_key",
            PlanError::ParentKeyNotInteger { .. } => "parent_key_not_integer",
            PlanError::UuidColumnMissing { .. } => "uuid_column_missing",
            PlanError::UuidColumnNotUuid { .. } => "uuid_column_not_uuid",
            PlanError::UuidColumnNullable { .. } => "uuid_column_nullable",
            PlanError::UuidColumnNotUnique { .. } => "uuid_column_not_unique",
            PlanError::NoRowIdentity { .. } => "no_row_identity",
            PlanError::UnexpectedDefinition { .. } => "unexpected_definition",
        }
    }

    pub(crate) fn db(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| PlanError::Db { context, source }
    }
}

/// The `prepare` command that makes the column (`--column-exists` when it
/// is there but not complete): online, resumable, idempotent.
fn prepare_command(table: &QualifiedName, column: &str, exists: bool) -> String {
    format!(
        "pg-rekey prepare --parent {table} --uuid-column {}{}",
        quote_ident(column),
        if exists { " --column-exists" } else { "" }
    )
}
