//! The table model: the shape of a table to rewrite as every phase sees it
//! ([`TableSpec`], [`ParentSpec`]), and everything the catalogs say about a
//! table that the shadow DDL and the preflight need ([`TableDetail`]).
//!
//! Read from the catalogs by [`crate::plan::catalog`]; used by the DDL
//! generator, the copy, the apply engine and verification, so all of them
//! agree on column order, which columns are references, and which columns
//! identify a row. A room of its own below `plan` and `ddl`, which both use
//! it (`plan` also trial-runs `ddl`'s statements).

use crate::pg::QualifiedName;

/// Integer width of a reference column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IntKind {
    /// `smallint` (`int2`).
    Int2,
    /// `integer` (`int4`).
    Int4,
    /// `bigint` (`int8`).
    Int8,
}

impl IntKind {
    /// From a type OID (21, 23, 20).
    pub fn from_oid(oid: u32) -> Option<IntKind> {
        match oid {
            21 => Some(IntKind::Int2),
            23 => Some(IntKind::Int4),
            20 => Some(IntKind::Int8),
            _ => None,
        }
    }

    /// The SQL type name (`smallint`, `integer`, `bigint`).
    pub fn sql_name(self) -> &'static str {
        match self {
            IntKind::Int2 => "smallint",
            IntKind::Int4 => "integer",
            IntKind::Int8 => "bigint",
        }
    }

    /// Size of the binary representation in bytes.
    pub fn width(self) -> usize {
        match self {
            IntKind::Int2 => 2,
            IntKind::Int4 => 4,
            IntKind::Int8 => 8,
        }
    }
}

/// One column of a source table (dropped columns excluded), in `attnum` order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ColumnSpec {
    /// Column name, unquoted.
    pub name: String,
    /// `attnum` in the source table.
    pub attnum: i16,
    /// Source type as `format_type(atttypid, atttypmod)` prints it.
    pub type_sql: String,
    /// Source type OID.
    pub type_oid: u32,
    /// Set when this column references the parent key and becomes `uuid`.
    pub reference: Option<IntKind>,
    /// `attnotnull`.
    pub not_null: bool,
    /// Stored generated column (`attgenerated = 's'`): never copied nor streamed.
    pub generated: bool,
    /// Identity column kind: `a` (ALWAYS), `d` (BY DEFAULT), or none.
    pub identity: Option<char>,
}

/// The `uuid` type's OID.
pub const UUID_OID: u32 = 2950;

impl ColumnSpec {
    /// The column's type in the table the job writes: for a reference,
    /// `uuid` going forward, the integer type on the way back
    /// ([`TableSpec::reversed`]).
    pub fn shadow_type_sql(&self) -> &str {
        match self.reference {
            Some(kind) if self.reads_uuid() => kind.sql_name(),
            Some(_) => "uuid",
            None => &self.type_sql,
        }
    }

    /// A reference column of a spec of the way back: the stream sends a
    /// uuid, the table written holds the parent's integer key.
    pub fn reads_uuid(&self) -> bool {
        self.reference.is_some() && self.type_oid == UUID_OID
    }
}

/// A table to rewrite and its shadow.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableSpec {
    /// The source table.
    pub source: QualifiedName,
    /// Source OID (pgoutput's relation id).
    pub oid: u32,
    /// The shadow table.
    pub shadow: QualifiedName,
    /// Columns in `attnum` order, dropped columns left out.
    pub columns: Vec<ColumnSpec>,
    /// Positions in `columns` of the row identity: the primary key, else the
    /// replica identity index.
    pub key: Vec<usize>,
}

impl TableSpec {
    /// Columns that are copied and streamed (all but generated ones), with their positions.
    pub fn data_columns(&self) -> impl Iterator<Item = (usize, &ColumnSpec)> {
        self.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.generated)
    }

    /// Names of the reference columns.
    pub fn reference_columns(&self) -> impl Iterator<Item = &ColumnSpec> {
        self.columns.iter().filter(|c| c.reference.is_some())
    }

    /// The spec of the way back after cutover, for a forward spec `self`
    /// (source = the original table, shadow = `_rekey_new_<t>`): the live
    /// table now carries the source's name and is the former shadow
    /// (`live_oid`); the table written is the old one (`old`, the original
    /// table kept as `_rekey_old_<t>`). Reference columns arrive as `uuid`
    /// (`type_oid` 2950, `type_sql` `uuid`) and keep in `reference` the
    /// integer kind the old table's column has. Everything else is equal.
    pub fn reversed(&self, live_oid: u32, old: QualifiedName) -> TableSpec {
        let mut s = self.clone();
        s.oid = live_oid;
        s.shadow = old;
        for c in s.columns.iter_mut().filter(|c| c.reference.is_some()) {
            c.type_oid = UUID_OID;
            c.type_sql = "uuid".into();
        }
        s
    }

    /// Whether this is a spec of the way back ([`TableSpec::reversed`]):
    /// its reference columns arrive as uuids.
    pub fn is_reverse(&self) -> bool {
        self.columns.iter().any(ColumnSpec::reads_uuid)
    }
}

/// The parent (referenced) table: its integer key and its uuid column.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParentSpec {
    /// The parent table (e.g. `public.users`).
    pub table: QualifiedName,
    /// Parent OID.
    pub oid: u32,
    /// Its primary-key column (single integer column).
    pub key_column: String,
    /// Key type.
    pub key_kind: IntKind,
    /// The existing unique, not-null uuid column.
    pub uuid_column: String,
}

/// Everything known about one table: the shared [`TableSpec`] plus what the
/// shadow DDL and the preflight need.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableDetail {
    /// The shared model (columns, references, key, shadow name).
    pub spec: TableSpec,
    /// `relkind` (`r` ordinary, `p` partitioned).
    pub relkind: String,
    /// `relpersistence` (`p` permanent, `u` unlogged, `t` temporary).
    pub persistence: String,
    /// Partitioned, a partition, or part of an inheritance tree.
    pub inheritance: bool,
    /// The current role is (a member of) the owner: needed to publish and rename it.
    pub owned: bool,
    /// Per-column details, parallel to `spec.columns`.
    pub columns: Vec<ColumnDetail>,
    /// CHECK constraints.
    pub checks: Vec<CheckConstraint>,
    /// The primary key constraint.
    pub primary_key: Option<KeyConstraint>,
    /// UNIQUE constraints.
    pub uniques: Vec<KeyConstraint>,
    /// EXCLUDE constraints.
    pub exclusions: Vec<KeyConstraint>,
    /// Every index, constraint-backed ones included (see [`IndexDetail::constraint`]).
    pub indexes: Vec<IndexDetail>,
    /// Outgoing foreign keys.
    pub foreign_keys: Vec<ForeignKey>,
    /// Table comment.
    pub comment: Option<String>,
    /// `relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: String,
    /// `reloptions` (`fillfactor=70`, …).
    pub reloptions: Vec<String>,
    /// Tablespace, when not the database default.
    pub tablespace: Option<String>,
    /// `reltuples`, 0 when never analyzed.
    pub row_estimate: i64,
    /// `reltuples` is known (`>= 0`): the table was vacuumed, analyzed or
    /// indexed at least once. When false, `row_estimate` is 0 and means nothing.
    pub rows_known: bool,
    /// `pg_table_size` (heap, TOAST, maps).
    pub table_bytes: i64,
    /// `pg_indexes_size`.
    pub index_bytes: i64,
}

impl TableDetail {
    /// The source table.
    pub fn name(&self) -> &QualifiedName {
        &self.spec.source
    }

    /// Foreign keys whose column is a reference to the parent key.
    pub fn reference_foreign_keys(&self) -> impl Iterator<Item = &ForeignKey> {
        self.foreign_keys.iter().filter(|f| f.to_parent_key)
    }

    /// The index that identifies rows: the primary key's, else the replica identity index.
    pub fn key_index(&self) -> Option<&IndexDetail> {
        self.indexes
            .iter()
            .find(|i| i.primary)
            .or_else(|| self.indexes.iter().find(|i| i.replica_identity))
    }

    /// The column detail of a spec column by name.
    pub fn column(&self, name: &str) -> Option<(&ColumnSpec, &ColumnDetail)> {
        self.spec
            .columns
            .iter()
            .zip(self.columns.iter())
            .find(|(c, _)| c.name == name)
    }
}

/// Per-column details beyond [`ColumnSpec`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ColumnDetail {
    /// Column name (same as the spec's).
    pub name: String,
    /// `typtype` of the column's type (`b` base, `d` domain, `e` enum, …).
    pub typtype: String,
    /// Default expression (`pg_get_expr`), schema-qualified; not for generated columns.
    pub default: Option<String>,
    /// Generation expression of a stored generated column.
    pub generated_expr: Option<String>,
    /// Identity sequence options, for identity columns.
    pub identity: Option<IdentitySequence>,
    /// The sequence this column owns (identity or `serial`).
    pub owned_sequence: Option<QualifiedName>,
    /// Collation, quoted and qualified, when it differs from the type's default.
    pub collation: Option<String>,
    /// Column comment.
    pub comment: Option<String>,
    /// `attstorage` (`p`, `e`, `m`, `x`) when it differs from the type's default.
    pub storage: Option<char>,
    /// `attcompression` (`p` pglz, `l` lz4) when set (14+).
    pub compression: Option<char>,
    /// `attstattarget` when set (`ALTER COLUMN … SET STATISTICS`).
    pub statistics: Option<i32>,
    /// `attoptions` set by users (`n_distinct=100`, …; see [`user_options`]).
    pub options: Vec<String>,
}

/// Options of an identity column's sequence.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IdentitySequence {
    /// `a` ALWAYS or `d` BY DEFAULT.
    pub kind: char,
    /// The sequence's options (serialised beside `kind`, as before).
    #[serde(flatten)]
    pub options: crate::pg::SequenceOptions,
}

/// A CHECK constraint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckConstraint {
    /// Constraint name.
    pub name: String,
    /// `pg_get_constraintdef`: `CHECK ((x > 0))`, with ` NOT VALID` when not validated.
    pub definition: String,
    /// `convalidated`.
    pub validated: bool,
}

/// A PRIMARY KEY, UNIQUE or EXCLUDE constraint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyConstraint {
    /// Constraint name.
    pub name: String,
    /// `pg_get_constraintdef`: `PRIMARY KEY (a, b)`, `UNIQUE (c)`, `EXCLUDE USING gist (…)`.
    pub definition: String,
    /// Key columns.
    pub columns: Vec<String>,
    /// The backing index (usually the constraint's name).
    pub index_name: Option<String>,
}

/// An index of the table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IndexDetail {
    /// Index name.
    pub name: String,
    /// `indisunique`.
    pub unique: bool,
    /// `indisprimary`.
    pub primary: bool,
    /// `indisvalid` (false after a failed CREATE INDEX CONCURRENTLY).
    pub valid: bool,
    /// `indisreplident`.
    pub replica_identity: bool,
    /// `indisclustered`.
    pub clustered: bool,
    /// `pg_get_indexdef`, as printed.
    pub definition: String,
    /// The definition from `USING` on (method, columns, INCLUDE, WITH, TABLESPACE, WHERE),
    /// to be put after `CREATE INDEX name ON other_table`.
    pub using_clause: String,
    /// Key column attnums (0 for an expression), INCLUDE columns left out.
    pub key_attnums: Vec<i16>,
    /// Has expression columns.
    pub expressions: bool,
    /// Has a WHERE predicate.
    pub partial: bool,
    /// The PRIMARY KEY / UNIQUE / EXCLUDE constraint this index backs.
    pub constraint: Option<String>,
}

/// An outgoing foreign key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ForeignKey {
    /// Constraint name.
    pub name: String,
    /// Referencing columns, in order.
    pub columns: Vec<String>,
    /// Referenced table.
    pub referenced: QualifiedName,
    /// Referenced table OID.
    pub referenced_oid: u32,
    /// Referenced columns, in order.
    pub referenced_columns: Vec<String>,
    /// `confupdtype`: `a` no action, `r` restrict, `c` cascade, `n` set null, `d` set default.
    pub on_update: char,
    /// `confdeltype`, same letters.
    pub on_delete: char,
    /// `confmatchtype`: `f` full, `p` partial, `s` simple.
    pub match_type: char,
    /// DEFERRABLE.
    pub deferrable: bool,
    /// INITIALLY DEFERRED.
    pub deferred: bool,
    /// `convalidated`.
    pub validated: bool,
    /// `pg_get_constraintdef`.
    pub definition: String,
    /// The single column of this key references the parent's key column.
    pub to_parent_key: bool,
    /// The key references the table itself.
    pub self_reference: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, attnum: i16, ty: &str, oid: u32, r: Option<IntKind>) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            attnum,
            type_sql: ty.into(),
            type_oid: oid,
            reference: r,
            not_null: true,
            generated: false,
            identity: None,
        }
    }

    #[test]
    fn reversed_reads_uuids_and_writes_the_old_table() {
        let fwd = TableSpec {
            source: QualifiedName::new("public", "t"),
            oid: 100,
            shadow: QualifiedName::new("public", "_rekey_new_t"),
            columns: vec![
                col("id", 1, "bigint", 20, None),
                col("user_id", 2, "integer", 23, Some(IntKind::Int4)),
                col("body", 3, "text", 25, None),
            ],
            key: vec![0, 1],
        };
        assert!(!fwd.is_reverse());
        assert_eq!(fwd.columns[1].shadow_type_sql(), "uuid");
        let rev = fwd.reversed(200, QualifiedName::new("public", "_rekey_old_t"));
        assert!(rev.is_reverse());
        assert_eq!(rev.source, fwd.source, "the live table carries the name");
        assert_eq!(rev.oid, 200);
        assert_eq!(rev.shadow, QualifiedName::new("public", "_rekey_old_t"));
        let r = &rev.columns[1];
        assert_eq!((r.type_oid, r.type_sql.as_str()), (UUID_OID, "uuid"));
        assert_eq!(r.reference, Some(IntKind::Int4));
        assert_eq!(r.shadow_type_sql(), "integer", "the old table's type");
        assert_eq!(rev.columns[0], fwd.columns[0]);
        assert_eq!(rev.columns[2], fwd.columns[2]);
        assert_eq!(rev.key, fwd.key);
        assert_eq!(
            rev.columns.len(),
            fwd.columns.len(),
            "the same columns, same order"
        );
    }
}
