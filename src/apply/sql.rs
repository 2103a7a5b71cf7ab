//! Statement text for applying changes to a shadow table (pure).
//!
//! Values arrive from pgoutput in their text form (protocol 1). Each is bound
//! as a `text` parameter and cast with the column's own input function
//! (`$n::text::<type>`), which accepts exactly what the type's output function
//! printed — the walsender's session settings are pinned so that output is
//! unambiguous. Reference columns are bound as `uuid` values after
//! translation — on the way back ([`TableSpec::reversed`]) as `int8` keys
//! cast to the old table's integer type (a key too wide for it fails the
//! statement rather than wrap). Identifiers are always quoted.

use crate::pg::quote_ident;
use crate::plan::model::TableSpec;

/// Which statement a change needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StatementShape {
    /// Insert every data column; on a key conflict overwrite (idempotent).
    Insert,
    /// Update the columns in `set` (positions in `TableSpec::columns`),
    /// finding the row by the columns in `key`.
    Update {
        /// Columns to assign.
        set: Vec<usize>,
        /// Columns that identify the row.
        key: Vec<usize>,
    },
    /// Delete the row found by `key`.
    Delete {
        /// Columns that identify the row.
        key: Vec<usize>,
    },
}

/// The parameter expression for column `pos` bound as `$n`.
fn param(spec: &TableSpec, pos: usize, n: usize) -> String {
    match spec.columns.get(pos) {
        Some(c) if c.reads_uuid() => format!("${n}::int8::{}", c.shadow_type_sql()),
        Some(c) if c.reference.is_some() => format!("${n}::uuid"),
        Some(c) => format!("${n}::text::{}", c.type_sql),
        None => format!("${n}"),
    }
}

fn col(spec: &TableSpec, pos: usize) -> String {
    spec.columns
        .get(pos)
        .map(|c| quote_ident(&c.name))
        .unwrap_or_default()
}

/// SQL for a shape. Parameters are numbered in this order: for `Insert` the
/// data columns in table order; for `Update` the `set` columns then the `key`
/// columns; for `Delete` the `key` columns.
pub fn statement(spec: &TableSpec, shape: &StatementShape) -> String {
    let table = spec.shadow.quoted();
    match shape {
        StatementShape::Insert => {
            let cols: Vec<usize> = spec.data_columns().map(|(i, _)| i).collect();
            let names: Vec<String> = cols.iter().map(|&i| col(spec, i)).collect();
            let values: Vec<String> = cols
                .iter()
                .enumerate()
                .map(|(n, &i)| param(spec, i, n + 1))
                .collect();
            let overriding = if spec.columns.iter().any(|c| c.identity == Some('a')) {
                " OVERRIDING SYSTEM VALUE"
            } else {
                ""
            };
            let conflict = on_conflict(spec, &cols);
            format!(
                "INSERT INTO {table} ({}){overriding} VALUES ({}) {conflict}",
                names.join(", "),
                values.join(", ")
            )
        }
        StatementShape::Update { set, key } => {
            let sets: Vec<String> = set
                .iter()
                .enumerate()
                .map(|(n, &i)| format!("{} = {}", col(spec, i), param(spec, i, n + 1)))
                .collect();
            let wheres = where_clause(spec, key, set.len());
            format!("UPDATE {table} SET {} WHERE {wheres}", sets.join(", "))
        }
        StatementShape::Delete { key } => {
            format!("DELETE FROM {table} WHERE {}", where_clause(spec, key, 0))
        }
    }
}

/// The `ON CONFLICT` clause of an insert of the data columns `cols`: the
/// row is overwritten when its key exists (idempotent where copy and stream
/// overlap).
pub fn on_conflict(spec: &TableSpec, cols: &[usize]) -> String {
    let key: Vec<String> = spec.key.iter().map(|&i| col(spec, i)).collect();
    let updates: Vec<String> = cols
        .iter()
        .filter(|i| !spec.key.contains(i))
        .map(|&i| format!("{0} = EXCLUDED.{0}", col(spec, i)))
        .collect();
    if updates.is_empty() {
        format!("ON CONFLICT ({}) DO NOTHING", key.join(", "))
    } else {
        format!(
            "ON CONFLICT ({}) DO UPDATE SET {}",
            key.join(", "),
            updates.join(", ")
        )
    }
}

/// Re-point every reference in the shadow's column `pos` from one uuid (`$2`)
/// to another (`$1`): what a change of a parent row's uuid means for rows
/// written before it (see [`crate::apply`], "Parent uuid changes").
pub fn follow_uuid_change(spec: &TableSpec, pos: usize) -> String {
    let c = col(spec, pos);
    format!(
        "UPDATE {} SET {c} = $1::uuid WHERE {c} = $2::uuid",
        spec.shadow.quoted()
    )
}

/// The way back: re-point every reference in the old table's column `pos`
/// from one parent key (`$2`) to another (`$1`): what a change of a parent
/// row's key means for rows written before it (see [`crate::apply`], "The
/// way back").
pub fn follow_key_change(spec: &TableSpec, pos: usize) -> String {
    let c = col(spec, pos);
    format!(
        "UPDATE {} SET {c} = $1::int8 WHERE {c} = $2::int8",
        spec.shadow.quoted()
    )
}

/// The way back: whether any row of the old table's column `pos` holds
/// parent key `$1` (the commit-time orphan check).
pub fn references_key(spec: &TableSpec, pos: usize) -> String {
    format!(
        "SELECT EXISTS (SELECT FROM {} WHERE {} = $1::int8)",
        spec.shadow.quoted(),
        col(spec, pos)
    )
}

/// Whether any row of the shadow's column `pos` holds uuid `$1`: the
/// commit-time check for references to a parent the transaction deleted.
pub fn references_uuid(spec: &TableSpec, pos: usize) -> String {
    format!(
        "SELECT EXISTS (SELECT FROM {} WHERE {} = $1::uuid)",
        spec.shadow.quoted(),
        col(spec, pos)
    )
}

fn where_clause(spec: &TableSpec, key: &[usize], offset: usize) -> String {
    key.iter()
        .enumerate()
        .map(|(n, &i)| format!("{} = {}", col(spec, i), param(spec, i, offset + n + 1)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::QualifiedName;
    use crate::plan::model::{ColumnSpec, IntKind};

    fn c(name: &str, ty: &str, reference: Option<IntKind>) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            attnum: 0,
            type_sql: ty.into(),
            type_oid: 0,
            reference,
            not_null: false,
            generated: false,
            identity: None,
        }
    }

    fn spec() -> TableSpec {
        let mut gen = c("g", "integer", None);
        gen.generated = true;
        let mut id = c("id", "bigint", None);
        id.identity = Some('a');
        TableSpec {
            source: QualifiedName::new("public", "My \"T\""),
            oid: 1,
            shadow: QualifiedName::new("public", "My \"T\"__rekey"),
            columns: vec![
                id,
                c("user_id", "bigint", Some(IntKind::Int8)),
                gen,
                c("body", "text", None),
            ],
            key: vec![0],
        }
    }

    #[test]
    fn insert_skips_generated_and_overrides_identity() {
        let sql = statement(&spec(), &StatementShape::Insert);
        assert_eq!(
            sql,
            "INSERT INTO \"public\".\"My \"\"T\"\"__rekey\" (\"id\", \"user_id\", \"body\") OVERRIDING SYSTEM VALUE \
             VALUES ($1::text::bigint, $2::uuid, $3::text::text) \
             ON CONFLICT (\"id\") DO UPDATE SET \"user_id\" = EXCLUDED.\"user_id\", \"body\" = EXCLUDED.\"body\""
        );
    }

    #[test]
    fn update_numbers_set_then_key() {
        let sql = statement(
            &spec(),
            &StatementShape::Update {
                set: vec![1, 3],
                key: vec![0],
            },
        );
        assert_eq!(
            sql,
            "UPDATE \"public\".\"My \"\"T\"\"__rekey\" SET \"user_id\" = $1::uuid, \"body\" = $2::text::text WHERE \"id\" = $3::text::bigint"
        );
    }

    #[test]
    fn uuid_change_repoints_one_column() {
        assert_eq!(
            follow_uuid_change(&spec(), 1),
            "UPDATE \"public\".\"My \"\"T\"\"__rekey\" SET \"user_id\" = $1::uuid WHERE \"user_id\" = $2::uuid"
        );
    }

    /// The way back: the old table's integer references bound as int8 and
    /// cast to the column's own type, everything else as forward.
    #[test]
    fn the_way_back_writes_integer_keys() {
        let mut fwd = spec();
        fwd.columns[1] = c("user_id", "integer", Some(IntKind::Int4));
        let rev = fwd.reversed(9, QualifiedName::new("public", "_rekey_old_t"));
        assert_eq!(
            statement(&rev, &StatementShape::Insert),
            "INSERT INTO \"public\".\"_rekey_old_t\" (\"id\", \"user_id\", \"body\") OVERRIDING SYSTEM VALUE \
             VALUES ($1::text::bigint, $2::int8::integer, $3::text::text) \
             ON CONFLICT (\"id\") DO UPDATE SET \"user_id\" = EXCLUDED.\"user_id\", \"body\" = EXCLUDED.\"body\""
        );
        assert_eq!(
            statement(&rev, &StatementShape::Delete { key: vec![0, 1] }),
            "DELETE FROM \"public\".\"_rekey_old_t\" WHERE \"id\" = $1::text::bigint AND \"user_id\" = $2::int8::integer"
        );
        assert_eq!(
            follow_key_change(&rev, 1),
            "UPDATE \"public\".\"_rekey_old_t\" SET \"user_id\" = $1::int8 WHERE \"user_id\" = $2::int8"
        );
        assert_eq!(
            references_key(&rev, 1),
            "SELECT EXISTS (SELECT FROM \"public\".\"_rekey_old_t\" WHERE \"user_id\" = $1::int8)"
        );
    }

    #[test]
    fn delete_by_key_and_key_only_insert() {
        let mut s = spec();
        assert_eq!(
            statement(&s, &StatementShape::Delete { key: vec![0, 1] }),
            "DELETE FROM \"public\".\"My \"\"T\"\"__rekey\" WHERE \"id\" = $1::text::bigint AND \"user_id\" = $2::uuid"
        );
        s.columns.truncate(2);
        s.columns[0].identity = None;
        s.key = vec![0, 1];
        assert!(statement(&s, &StatementShape::Insert)
            .ends_with("ON CONFLICT (\"id\", \"user_id\") DO NOTHING"));
    }
}
