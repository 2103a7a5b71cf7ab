//! The shape of a table to rewrite, as every phase sees it.
//!
//! Built from the catalogs by planning; used by the DDL generator, the copy,
//! the apply engine and verification, so all of them agree on column order,
//! which columns are references, and which columns identify a row.

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

impl ColumnSpec {
    /// The column's type in the shadow table.
    pub fn shadow_type_sql(&self) -> &str {
        if self.reference.is_some() {
            "uuid"
        } else {
            &self.type_sql
        }
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
