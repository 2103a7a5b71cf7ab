//! From a decoded change to statement parameters (pure).
//!
//! The rules that matter for correctness live here:
//! - an unchanged TOAST value (`u`) is left out of the SET list, so the
//!   shadow keeps the value it already has (never written as NULL);
//! - the row is found by the old key when the server sent one (`K`, the key
//!   changed, or `O`, replica identity full), else by the key columns of the
//!   new row;
//! - a reference column's integer is translated through the id map; NULL stays
//!   NULL; an integer with no parent is an error naming table, column, value;
//! - on the way back ([`TableSpec::reversed`]) a reference arrives as a uuid
//!   and is translated to the parent's key the same way ([`Lookup::key_of`]);
//!   a uuid with no parent is the same error, naming the uuid.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use uuid::Uuid;

use crate::pg::Lsn;
use crate::plan::model::{IntKind, TableSpec};
use crate::replication::pgoutput::{OldRow, Relation, Tuple, TupleValue};

use super::sql::StatementShape;

/// A bound statement parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// SQL NULL.
    Null,
    /// A value in its text form, bound as `text` and cast by the statement.
    Text(Bytes),
    /// A translated reference.
    Uuid(Uuid),
    /// A reference translated back to the parent's key (bound as `int8`).
    Int(i64),
}

impl ToSql for Param {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Null => Ok(IsNull::Yes),
            Param::Text(b) => {
                out.put_slice(b);
                Ok(IsNull::No)
            }
            Param::Uuid(u) if *ty == Type::UUID => {
                out.put_slice(u.as_bytes());
                Ok(IsNull::No)
            }
            Param::Int(k) if *ty == Type::INT8 => {
                out.put_i64(*k);
                Ok(IsNull::No)
            }
            Param::Int(k) if *ty == Type::TEXT => {
                out.put_slice(k.to_string().as_bytes());
                Ok(IsNull::No)
            }
            // A wrong width or type would be read as another value: refuse.
            p => Err(format!("{p:?} bound to a parameter of type {ty}").into()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TEXT || *ty == Type::UUID || *ty == Type::INT8
    }

    to_sql_checked!();
}

/// Why a change cannot be applied. All are definite: the job stops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// A reference to a parent key that exists neither before the change
    /// nor anywhere later in its transaction.
    #[error("{table}.{column} = {value} references no row of the parent table, neither before this change nor later in its transaction (change at LSN {lsn}); at its commit the source has an orphaned reference (a foreign key dropped, disabled or bypassed) — fix or delete that row, then `pg-rekey abort` and start the rewrite again")]
    Orphan {
        /// Table.
        table: String,
        /// Reference column.
        column: String,
        /// The integer value.
        value: i64,
        /// Where in the stream.
        lsn: Lsn,
    },
    /// On the way back: a uuid that no parent row holds, neither before the
    /// change nor anywhere later in its transaction.
    #[error("{table}.{column} = {value} references no row of the parent table, neither before this change nor later in its transaction (change at LSN {lsn}); at its commit the live table has an orphaned reference (a foreign key dropped, disabled or bypassed) — nothing of that transaction was written to the old table, which stops following the live one here; fix or delete that row before relying on the way back")]
    OrphanUuid {
        /// Table (the live one).
        table: String,
        /// Reference column.
        column: String,
        /// The uuid.
        value: Uuid,
        /// Where in the stream.
        lsn: Lsn,
    },
    /// On the way back: a reference to a parent row its own transaction
    /// deleted, still held by the old table at the transaction's commit.
    #[error("{table}.{column} = {value} references a parent row that its own transaction deleted: at that transaction's commit (LSN {lsn}) the live table has an orphaned reference (a foreign key dropped, disabled or bypassed) — nothing of that transaction was written to the old table, which stops following the live one here; fix or delete that row before relying on the way back")]
    OrphanUuidAtCommit {
        /// Table (the live one).
        table: String,
        /// Reference column.
        column: String,
        /// The uuid the deleted parent had.
        value: Uuid,
        /// The transaction's commit LSN.
        lsn: Lsn,
    },
    /// A reference written by a transaction that also deleted its parent
    /// row, still present at the transaction's commit.
    #[error("{table}.{column} = {value} references a parent row that its own transaction deleted: at that transaction's commit (LSN {lsn}) the source has an orphaned reference (a foreign key dropped, disabled or bypassed) — fix or delete that row, then `pg-rekey abort` and start the rewrite again")]
    OrphanAtCommit {
        /// Table.
        table: String,
        /// Reference column.
        column: String,
        /// The integer value.
        value: i64,
        /// The transaction's commit LSN.
        lsn: Lsn,
    },
    /// The table's columns no longer match the job's plan (DDL ran).
    #[error("the columns of {table} changed while the job runs ({detail}, at LSN {lsn}); pg-rekey does not follow DDL — run `pg-rekey abort` and start the rewrite again after the change")]
    ShapeChanged {
        /// Table.
        table: String,
        /// What differs.
        detail: String,
        /// Where in the stream.
        lsn: Lsn,
    },
    /// A value that cannot be what the column's type sends.
    #[error("{table}.{column}: {detail} at LSN {lsn}")]
    BadValue {
        /// Table.
        table: String,
        /// Column.
        column: String,
        /// What is wrong.
        detail: String,
        /// Where in the stream.
        lsn: Lsn,
    },
}

/// How a relation's stream columns line up with the job's table spec.
#[derive(Debug, Clone)]
pub struct BoundRelation {
    /// Positions in `TableSpec::columns` of each stream column, in stream order.
    pub positions: Vec<usize>,
    /// Positions (in the spec) of the replica identity key columns.
    pub identity: Vec<usize>,
}

/// Check that a Relation message matches the spec's data columns (same names,
/// same types, same order) and bind it. Anything else means DDL ran.
pub fn bind_relation(
    spec: &TableSpec,
    rel: &Relation,
    lsn: Lsn,
) -> Result<BoundRelation, TranslateError> {
    let data: Vec<(usize, &crate::plan::model::ColumnSpec)> = spec.data_columns().collect();
    let changed = |detail: String| TranslateError::ShapeChanged {
        table: spec.source.to_string(),
        detail,
        lsn,
    };
    if rel.columns.len() != data.len() {
        let planned: Vec<&str> = data.iter().map(|(_, c)| c.name.as_str()).collect();
        let now: Vec<&str> = rel.columns.iter().map(|c| c.name.as_str()).collect();
        return Err(changed(format!(
            "planned columns {planned:?}, the stream now sends {now:?}"
        )));
    }
    let mut positions = Vec::with_capacity(data.len());
    let mut identity = Vec::new();
    for (rc, (pos, c)) in rel.columns.iter().zip(data) {
        if rc.name != c.name || rc.type_oid != c.type_oid {
            return Err(changed(format!(
                "column {:?} of type oid {} became {:?} of type oid {}",
                c.name, c.type_oid, rc.name, rc.type_oid
            )));
        }
        positions.push(pos);
        if rc.is_key {
            identity.push(pos);
        }
    }
    Ok(BoundRelation {
        positions,
        identity,
    })
}

/// Look up a parent key; `None` when absent.
pub trait Lookup {
    /// The uuid of parent key `key`.
    fn lookup(&self, key: i64) -> Option<Uuid>;

    /// The key of the parent row holding `uuid` (the way back). A lookup
    /// that knows keys only finds none.
    fn key_of(&self, uuid: Uuid) -> Option<i64> {
        let _ = uuid;
        None
    }
}

impl<F: Fn(i64) -> Option<Uuid>> Lookup for F {
    fn lookup(&self, key: i64) -> Option<Uuid> {
        self(key)
    }
}

/// A parent a row image references: by key (forward) or by uuid (the way back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentRef {
    /// The parent's integer key.
    Key(i64),
    /// The parent's uuid.
    Uuid(Uuid),
}

/// Translates the changes of one table.
pub struct RowTranslator<'a, L: Lookup> {
    /// The table.
    pub spec: &'a TableSpec,
    /// Its bound relation.
    pub bound: &'a BoundRelation,
    /// The id map.
    pub map: &'a L,
    /// LSN of the change, for error messages.
    pub lsn: Lsn,
}

impl<L: Lookup> RowTranslator<'_, L> {
    fn value(&self, pos: usize, v: &TupleValue) -> Result<Param, TranslateError> {
        let col = &self.spec.columns[pos];
        match v {
            TupleValue::Null => Ok(Param::Null),
            TupleValue::UnchangedToast => {
                Err(self.bad(pos, "an unchanged-TOAST marker where a value is required"))
            }
            TupleValue::Text(b) | TupleValue::Binary(b) if col.reference.is_none() => {
                if matches!(v, TupleValue::Binary(_)) {
                    return Err(self.bad(pos, "a binary value (pg-rekey streams text)"));
                }
                Ok(Param::Text(b.clone()))
            }
            TupleValue::Text(_) | TupleValue::Binary(_) if col.reads_uuid() => {
                let u = parse_uuid(v)
                    .ok_or_else(|| self.bad(pos, "a reference value that is not a uuid"))?;
                self.translate_back(pos, u)
            }
            TupleValue::Text(b) => {
                let key = parse_int(b)
                    .ok_or_else(|| self.bad(pos, "a reference value that is not an integer"))?;
                self.translate(pos, key)
            }
            TupleValue::Binary(b) => {
                let kind = col.reference.unwrap_or(IntKind::Int8);
                let key = parse_binary_int(b, kind)
                    .ok_or_else(|| self.bad(pos, "a binary reference of the wrong width"))?;
                self.translate(pos, key)
            }
        }
    }

    fn translate(&self, pos: usize, key: i64) -> Result<Param, TranslateError> {
        match self.map.lookup(key) {
            Some(u) => Ok(Param::Uuid(u)),
            None => Err(TranslateError::Orphan {
                table: self.spec.source.to_string(),
                column: self.spec.columns[pos].name.clone(),
                value: key,
                lsn: self.lsn,
            }),
        }
    }

    fn translate_back(&self, pos: usize, uuid: Uuid) -> Result<Param, TranslateError> {
        match self.map.key_of(uuid) {
            Some(k) => Ok(Param::Int(k)),
            None => Err(TranslateError::OrphanUuid {
                table: self.spec.source.to_string(),
                column: self.spec.columns[pos].name.clone(),
                value: uuid,
                lsn: self.lsn,
            }),
        }
    }

    fn bad(&self, pos: usize, detail: &str) -> TranslateError {
        TranslateError::BadValue {
            table: self.spec.source.to_string(),
            column: self
                .spec
                .columns
                .get(pos)
                .map(|c| c.name.clone())
                .unwrap_or_default(),
            detail: detail.to_string(),
            lsn: self.lsn,
        }
    }

    fn checked_len(&self, t: &Tuple) -> Result<(), TranslateError> {
        if t.len() != self.bound.positions.len() {
            return Err(TranslateError::ShapeChanged {
                table: self.spec.source.to_string(),
                detail: format!(
                    "a row of {} values for {} columns",
                    t.len(),
                    self.bound.positions.len()
                ),
                lsn: self.lsn,
            });
        }
        Ok(())
    }

    /// The parents a new row image references (what an insert or an
    /// update writes; NULL and unchanged values name none): by key, or on
    /// the way back by uuid.
    pub fn references<'t>(&'t self, new: &'t Tuple) -> impl Iterator<Item = ParentRef> + 't {
        self.bound
            .positions
            .iter()
            .zip(new)
            .filter_map(move |(&pos, v)| {
                let col = self.spec.columns.get(pos)?;
                let kind = col.reference?;
                if col.reads_uuid() {
                    return parse_uuid(v).map(ParentRef::Uuid);
                }
                match v {
                    TupleValue::Text(b) => parse_int(b),
                    TupleValue::Binary(b) => parse_binary_int(b, kind),
                    _ => None,
                }
                .map(ParentRef::Key)
            })
    }

    /// Parameters of an insert.
    pub fn insert(&self, new: &Tuple) -> Result<(StatementShape, Vec<Param>), TranslateError> {
        self.checked_len(new)?;
        let params = self
            .bound
            .positions
            .iter()
            .zip(new)
            .map(|(&pos, v)| self.value(pos, v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((StatementShape::Insert, params))
    }

    /// The key columns and values that find the row of an update or delete.
    fn key(
        &self,
        old: Option<&OldRow>,
        new: Option<&Tuple>,
    ) -> Result<(Vec<usize>, Vec<Param>), TranslateError> {
        let (cols, tuple): (&[usize], &Tuple) = match (old, new) {
            // Replica identity full: the whole old row; the table's own key finds it.
            (Some(OldRow::Full(t)), _) => (&self.spec.key, t),
            (Some(OldRow::Key(t)), _) => (&self.bound.identity, t),
            (None, Some(t)) => (&self.bound.identity, t),
            (None, None) => return Err(self.bad(0, "a change with no key")),
        };
        self.checked_len(tuple)?;
        if cols.is_empty() {
            return Err(self.bad(0, "a change for a table with no replica identity key"));
        }
        let mut params = Vec::with_capacity(cols.len());
        for &pos in cols {
            let idx = self
                .bound
                .positions
                .iter()
                .position(|&p| p == pos)
                .ok_or_else(|| self.bad(pos, "a key column that is not streamed"))?;
            let p = self.value(pos, &tuple[idx])?;
            if p == Param::Null {
                return Err(self.bad(pos, "a NULL key value"));
            }
            params.push(p);
        }
        Ok((cols.to_vec(), params))
    }

    /// Parameters of an update. Unchanged TOAST values are left out.
    pub fn update(
        &self,
        old: Option<&OldRow>,
        new: &Tuple,
    ) -> Result<(StatementShape, Vec<Param>), TranslateError> {
        self.checked_len(new)?;
        let mut set = Vec::with_capacity(new.len());
        let mut params = Vec::with_capacity(new.len() + 2);
        for (&pos, v) in self.bound.positions.iter().zip(new) {
            if matches!(v, TupleValue::UnchangedToast) {
                continue;
            }
            set.push(pos);
            params.push(self.value(pos, v)?);
        }
        let (key, key_params) = self.key(old, Some(new))?;
        params.extend(key_params);
        Ok((StatementShape::Update { set, key }, params))
    }

    /// Parameters of a delete.
    pub fn delete(&self, old: &OldRow) -> Result<(StatementShape, Vec<Param>), TranslateError> {
        let (key, params) = self.key(Some(old), None)?;
        Ok((StatementShape::Delete { key }, params))
    }
}

/// Parse an ASCII decimal integer (what int2/int4/int8 output prints).
pub fn parse_int(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// A uuid as the stream sends it (text, or 16 bytes in binary).
fn parse_uuid(v: &TupleValue) -> Option<Uuid> {
    match v {
        TupleValue::Text(b) => Uuid::try_parse_ascii(b).ok(),
        TupleValue::Binary(b) => Uuid::from_slice(b).ok(),
        _ => None,
    }
}

fn parse_binary_int(b: &[u8], kind: IntKind) -> Option<i64> {
    match (kind, b.len()) {
        (IntKind::Int2, 2) => Some(i64::from(i16::from_be_bytes([b[0], b[1]]))),
        (IntKind::Int4, 4) => Some(i64::from(i32::from_be_bytes(b.try_into().ok()?))),
        (IntKind::Int8, 8) => Some(i64::from_be_bytes(b.try_into().ok()?)),
        _ => None,
    }
}

/// Read the parent's key from a row of the parent table (an old row: a
/// delete's or a key change's). `None` when the row does not carry it (a
/// replica identity that leaves the key column out).
pub fn parent_key(tuple: &Tuple, key_idx: usize) -> Option<i64> {
    match tuple.get(key_idx) {
        Some(TupleValue::Text(b)) => parse_int(b),
        _ => None,
    }
}

/// Read the parent's key and uuid from a row of the parent table.
pub fn parent_entry(
    tuple: &Tuple,
    key_idx: usize,
    uuid_idx: usize,
) -> Result<Option<(i64, Uuid)>, &'static str> {
    let key = match tuple.get(key_idx) {
        Some(TupleValue::Text(b)) => parse_int(b).ok_or("parent key is not an integer")?,
        Some(TupleValue::Null) | None => return Err("parent key missing"),
        Some(_) => return Err("parent key not sent as text"),
    };
    match tuple.get(uuid_idx) {
        Some(TupleValue::Text(b)) => {
            let u = Uuid::try_parse_ascii(b).map_err(|_| "parent uuid is not a uuid")?;
            Ok(Some((key, u)))
        }
        // NULL uuid: the parent row has no uuid yet; it cannot be referenced by a rewrite.
        Some(TupleValue::Null) => Ok(None),
        // Unchanged (never happens for a 16-byte uuid, but harmless): keep the map's value.
        Some(TupleValue::UnchangedToast) => Ok(None),
        _ => Err("parent uuid not sent"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::QualifiedName;
    use crate::plan::model::ColumnSpec;
    use crate::replication::pgoutput::{RelationColumn, ReplicaIdentity};

    fn c(name: &str, oid: u32, reference: Option<IntKind>) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            attnum: 0,
            type_sql: "x".into(),
            type_oid: oid,
            reference,
            not_null: false,
            generated: false,
            identity: None,
        }
    }

    fn spec() -> TableSpec {
        TableSpec {
            source: QualifiedName::new("public", "sessions"),
            oid: 7,
            shadow: QualifiedName::new("public", "sessions__rekey"),
            columns: vec![
                c("id", 20, None),
                c("user_id", 20, Some(IntKind::Int8)),
                c("blob", 25, None),
            ],
            key: vec![0],
        }
    }

    fn rel(cols: &[(&str, u32, bool)]) -> Relation {
        Relation {
            oid: 7,
            namespace: "public".into(),
            name: "sessions".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: cols
                .iter()
                .map(|(n, o, k)| RelationColumn {
                    is_key: *k,
                    name: n.to_string(),
                    type_oid: *o,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    fn t(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    const U1: Uuid = Uuid::from_u128(0x1111);

    fn map(k: i64) -> Option<Uuid> {
        (k == 1).then_some(U1)
    }

    #[test]
    fn binds_and_detects_ddl() {
        let s = spec();
        let b = bind_relation(
            &s,
            &rel(&[
                ("id", 20, true),
                ("user_id", 20, false),
                ("blob", 25, false),
            ]),
            Lsn(1),
        )
        .unwrap();
        assert_eq!(b.positions, vec![0, 1, 2]);
        assert_eq!(b.identity, vec![0]);
        let added = rel(&[
            ("id", 20, true),
            ("user_id", 20, false),
            ("blob", 25, false),
            ("extra", 25, false),
        ]);
        let e = bind_relation(&s, &added, Lsn(5)).unwrap_err();
        assert!(matches!(e, TranslateError::ShapeChanged { .. }), "{e}");
        assert!(e.to_string().contains("extra"));
        let retyped = rel(&[
            ("id", 20, true),
            ("user_id", 23, false),
            ("blob", 25, false),
        ]);
        assert!(bind_relation(&s, &retyped, Lsn(5)).is_err());
    }

    #[test]
    fn insert_translates_and_keeps_null() {
        let s = spec();
        let b = bind_relation(
            &s,
            &rel(&[
                ("id", 20, true),
                ("user_id", 20, false),
                ("blob", 25, false),
            ]),
            Lsn(1),
        )
        .unwrap();
        let tr = RowTranslator {
            spec: &s,
            bound: &b,
            map: &map,
            lsn: Lsn(9),
        };
        let (_, p) = tr.insert(&vec![t("10"), t("1"), TupleValue::Null]).unwrap();
        assert_eq!(
            p,
            vec![
                Param::Text(Bytes::from_static(b"10")),
                Param::Uuid(U1),
                Param::Null
            ]
        );
        let (_, p) = tr.insert(&vec![t("10"), TupleValue::Null, t("x")]).unwrap();
        assert_eq!(p[1], Param::Null);
        let e = tr.insert(&vec![t("10"), t("2"), t("x")]).unwrap_err();
        assert_eq!(
            e,
            TranslateError::Orphan {
                table: "public.sessions".into(),
                column: "user_id".into(),
                value: 2,
                lsn: Lsn(9)
            }
        );
        assert!(e.to_string().contains("public.sessions.user_id = 2"));
    }

    #[test]
    fn update_leaves_unchanged_toast_out_and_uses_old_key() {
        let s = spec();
        let b = bind_relation(
            &s,
            &rel(&[
                ("id", 20, true),
                ("user_id", 20, false),
                ("blob", 25, false),
            ]),
            Lsn(1),
        )
        .unwrap();
        let tr = RowTranslator {
            spec: &s,
            bound: &b,
            map: &map,
            lsn: Lsn(9),
        };
        let (shape, p) = tr
            .update(None, &vec![t("10"), t("1"), TupleValue::UnchangedToast])
            .unwrap();
        assert_eq!(
            shape,
            StatementShape::Update {
                set: vec![0, 1],
                key: vec![0]
            }
        );
        assert_eq!(p.len(), 3);
        assert_eq!(p[2], Param::Text(Bytes::from_static(b"10")));
        // Key change: old key from K.
        let old = OldRow::Key(vec![t("4"), TupleValue::Null, TupleValue::Null]);
        let (shape, p) = tr
            .update(Some(&old), &vec![t("10"), t("1"), t("b")])
            .unwrap();
        assert_eq!(
            shape,
            StatementShape::Update {
                set: vec![0, 1, 2],
                key: vec![0]
            }
        );
        assert_eq!(p[3], Param::Text(Bytes::from_static(b"4")));
        // Replica identity full: the table key from the old row.
        let old = OldRow::Full(vec![t("5"), t("1"), t("a")]);
        let (_, p) = tr.delete(&old).unwrap();
        assert_eq!(p, vec![Param::Text(Bytes::from_static(b"5"))]);
        // Unchanged TOAST in a key is an error, not a silent miss.
        assert!(tr
            .delete(&OldRow::Key(vec![
                TupleValue::Null,
                TupleValue::Null,
                TupleValue::Null
            ]))
            .is_err());
    }

    #[test]
    fn references_name_what_a_row_image_writes() {
        let s = spec();
        let b = bind_relation(
            &s,
            &rel(&[
                ("id", 20, true),
                ("user_id", 20, false),
                ("blob", 25, false),
            ]),
            Lsn(1),
        )
        .unwrap();
        let tr = RowTranslator {
            spec: &s,
            bound: &b,
            map: &map,
            lsn: Lsn(9),
        };
        // Only reference columns; NULL and unchanged values name no key.
        let row = vec![t("10"), t("77"), t("5")];
        assert_eq!(
            tr.references(&row).collect::<Vec<_>>(),
            vec![ParentRef::Key(77)]
        );
        let row = vec![t("10"), TupleValue::Null, t("5")];
        assert!(tr.references(&row).next().is_none());
        let row = vec![t("10"), TupleValue::UnchangedToast, t("5")];
        assert!(tr.references(&row).next().is_none());
        let e = TranslateError::OrphanAtCommit {
            table: "public.sessions".into(),
            column: "user_id".into(),
            value: 6001,
            lsn: Lsn(0x10),
        };
        let text = e.to_string();
        for part in [
            "public.sessions.user_id = 6001",
            "its own transaction deleted",
            "LSN 0/10",
            "abort",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text}");
        }
    }

    /// The way back: uuids in, keys out; the same error for a uuid no
    /// parent holds, naming the uuid.
    #[test]
    fn the_way_back_translates_uuids_to_keys() {
        struct Back;
        impl Lookup for Back {
            fn lookup(&self, _: i64) -> Option<Uuid> {
                None
            }
            fn key_of(&self, u: Uuid) -> Option<i64> {
                (u == U1).then_some(1)
            }
        }
        let s = spec().reversed(8, QualifiedName::new("public", "_rekey_old_sessions"));
        let b = bind_relation(
            &s,
            &rel(&[
                ("id", 20, true),
                ("user_id", 2950, false),
                ("blob", 25, false),
            ]),
            Lsn(1),
        )
        .unwrap();
        // The forward relation (an integer column) no longer binds.
        assert!(bind_relation(
            &s,
            &rel(&[
                ("id", 20, true),
                ("user_id", 20, false),
                ("blob", 25, false)
            ]),
            Lsn(1)
        )
        .is_err());
        let tr = RowTranslator {
            spec: &s,
            bound: &b,
            map: &Back,
            lsn: Lsn(9),
        };
        let u1 = U1.to_string();
        let (_, p) = tr.insert(&vec![t("10"), t(&u1), TupleValue::Null]).unwrap();
        assert_eq!(
            p,
            vec![
                Param::Text(Bytes::from_static(b"10")),
                Param::Int(1),
                Param::Null
            ]
        );
        assert_eq!(
            tr.references(&vec![t("10"), t(&u1), t("x")])
                .collect::<Vec<_>>(),
            vec![ParentRef::Uuid(U1)]
        );
        // Unchanged TOAST left out; the key of a full old row translated too.
        let (shape, p) = tr
            .update(
                Some(&OldRow::Full(vec![t("10"), t(&u1), t("x")])),
                &vec![t("10"), t(&u1), TupleValue::UnchangedToast],
            )
            .unwrap();
        assert_eq!(
            shape,
            StatementShape::Update {
                set: vec![0, 1],
                key: vec![0]
            }
        );
        assert_eq!(p[1], Param::Int(1));
        let stranger = Uuid::from_u128(0xdead);
        let e = tr
            .insert(&vec![t("11"), t(&stranger.to_string()), t("x")])
            .unwrap_err();
        assert_eq!(
            e,
            TranslateError::OrphanUuid {
                table: "public.sessions".into(),
                column: "user_id".into(),
                value: stranger,
                lsn: Lsn(9)
            }
        );
        let text = e.to_string();
        for part in [
            "public.sessions.user_id = 00000000-0000-0000-0000-00000000dead",
            "LSN 0/9",
            "nothing of that transaction was written",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text}");
        }
        assert!(matches!(
            tr.insert(&vec![t("12"), t("7"), t("x")]),
            Err(TranslateError::BadValue { .. })
        ));
    }

    #[test]
    fn int_params_bind_as_int8_or_text_only() {
        let mut out = BytesMut::new();
        Param::Int(-2).to_sql(&Type::INT8, &mut out).unwrap();
        assert_eq!(&out[..], &(-2i64).to_be_bytes());
        let mut out = BytesMut::new();
        Param::Int(42).to_sql(&Type::TEXT, &mut out).unwrap();
        assert_eq!(&out[..], b"42");
        assert!(Param::Int(1)
            .to_sql(&Type::UUID, &mut BytesMut::new())
            .is_err());
        assert!(Param::Uuid(U1)
            .to_sql(&Type::INT8, &mut BytesMut::new())
            .is_err());
    }

    #[test]
    fn parent_rows() {
        let u = "6f1e0c1e-0000-4000-8000-000000000001";
        assert_eq!(
            parent_entry(&vec![t("3"), t(u)], 0, 1).unwrap(),
            Some((3, Uuid::parse_str(u).unwrap()))
        );
        assert_eq!(
            parent_entry(&vec![t("3"), TupleValue::Null], 0, 1).unwrap(),
            None
        );
        assert!(parent_entry(&vec![t("x"), t(u)], 0, 1).is_err());
        assert!(parent_entry(&vec![t("3")], 0, 1).is_err());
        // An old key tuple: the key, or nothing when the identity leaves it out.
        assert_eq!(parent_key(&vec![t("3"), TupleValue::Null], 0), Some(3));
        assert_eq!(parent_key(&vec![TupleValue::Null, t(u)], 0), None);
    }

    #[test]
    fn ints() {
        assert_eq!(parse_int(b"-42"), Some(-42));
        assert_eq!(parse_int(b"4x"), None);
        assert_eq!(parse_binary_int(&[0, 5], IntKind::Int2), Some(5));
        assert_eq!(parse_binary_int(&[0, 5], IntKind::Int4), None);
    }
}
