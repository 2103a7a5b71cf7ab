//! Set-based apply: consecutive row changes of a shadow table sent as one
//! statement per run instead of one statement per change (pure: planning
//! and statement text; the applier sends them, see [`crate::apply`]).
//!
//! # Why reordering is safe here
//!
//! The applier collects changes in a [`Window`] and, at a barrier (see
//! below) or when it is full, sends them as *runs*: one multi-row
//! `INSERT … SELECT … FROM unnest(…)`, `UPDATE … FROM unnest(…)` or
//! `DELETE … USING unnest(…)` per run. That changes the order in which the
//! server executes the window's changes, which is safe because:
//!
//! - **Changes of different rows commute** on a table whose only unique
//!   index is its row key ([`TableBatching::for_table`] refuses any other
//!   unique or exclusion index: a row freed by one change and taken by
//!   another would depend on order). The shadow has no triggers or rules
//!   that fire (`session_replication_role = replica`) and its foreign keys
//!   are not checked, so a change touches exactly the row its key names.
//!   Shadows of different tables are independent.
//! - **Changes of one row keep their order.** Each change gets a *level*:
//!   one more than the last level of a change to the same key in the
//!   window, else 0. Levels are sent in order, so two changes of a key are
//!   never in one statement and run in stream order. Inside a level every
//!   key is distinct, which is also what the set statements need (an
//!   `ON CONFLICT DO UPDATE` may not touch a row twice; an `UPDATE … FROM`
//!   with two matches for a row applies only one).
//! - **Keys compare by their bytes only where that is value equality**:
//!   integer and uuid key columns and translated references. A table with
//!   any other key type is applied change by change.
//! - **What needs order is a barrier**: an update that changes its row's key
//!   (it touches two keys) goes alone, after the window is sent; so do
//!   everything that reads or writes across rows — re-pointing references
//!   to a parent's changed uuid, the orphan check at commit, the shadow
//!   transaction's commit with its recorded applied position. The applier
//!   sends the window before each of them.
//!
//! Updates with different column sets (unchanged TOAST values left out)
//! are different statements of the same level: still distinct keys.
//! A run of one change is sent as the single statement it was before.

use std::collections::HashMap;

use crate::pg::{quote_ident, Lsn};
use crate::plan::model::TableSpec;

use super::sql::StatementShape;
use super::translate::Param;

/// Changes held in a window, at most, before it is sent.
pub const MAX_WINDOW: usize = 2_000;

/// Key types whose text form is one-to-one with the value (integers,
/// uuid): two changes name the same row exactly when their key bytes match.
const EXACT_KEY_TYPES: [u32; 4] = [20, 21, 23, 2950];

/// One row change, translated: the statement it would run alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The single statement's shape.
    pub shape: StatementShape,
    /// Its parameters (see [`super::sql::statement`] for the order).
    pub params: Vec<Param>,
    /// Where in the stream (for errors).
    pub lsn: Lsn,
}

/// How one table's changes are batched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableBatching {
    /// Positions (in the insert's parameters, i.e. among the data columns)
    /// of the key columns, in `TableSpec::key` order.
    insert_key: Vec<usize>,
}

impl TableBatching {
    /// Whether and how `spec` can be applied set-wise. `unique_indexes`
    /// lists the column names of each unique or exclusion index of the
    /// source table and of the shadow (`None` for one with expressions or a
    /// predicate).
    pub fn for_table(spec: &TableSpec, unique_indexes: &[Option<Vec<String>>]) -> Option<Self> {
        if spec.key.is_empty() {
            return None;
        }
        let mut key_names: Vec<&str> = Vec::new();
        for &k in &spec.key {
            let c = spec.columns.get(k)?;
            if c.generated || !(c.reference.is_some() || EXACT_KEY_TYPES.contains(&c.type_oid)) {
                return None;
            }
            key_names.push(&c.name);
        }
        key_names.sort_unstable();
        for idx in unique_indexes {
            let mut cols: Vec<&str> = idx.as_ref()?.iter().map(String::as_str).collect();
            cols.sort_unstable();
            if cols != key_names {
                return None;
            }
        }
        let data: Vec<usize> = spec.data_columns().map(|(i, _)| i).collect();
        let insert_key = spec
            .key
            .iter()
            .map(|k| data.iter().position(|d| d == k))
            .collect::<Option<Vec<_>>>()?;
        Some(TableBatching { insert_key })
    }

    /// The bytes of the row key a change names, or `None` when the change
    /// must go alone (an update that changes the key).
    pub fn row_key(&self, shape: &StatementShape, params: &[Param]) -> Option<Vec<u8>> {
        let key_params: Vec<&Param> = match shape {
            StatementShape::Insert => self
                .insert_key
                .iter()
                .map(|&i| params.get(i))
                .collect::<Option<_>>()?,
            StatementShape::Update { set, key } => {
                let keys = params.get(set.len()..)?;
                for (j, k) in key.iter().enumerate() {
                    if let Some(i) = set.iter().position(|s| s == k) {
                        if params.get(i) != keys.get(j) {
                            return None; // a key change
                        }
                    }
                }
                keys.iter().collect()
            }
            StatementShape::Delete { .. } => params.iter().collect(),
        };
        let mut out = Vec::with_capacity(key_params.len() * 17);
        for p in key_params {
            match p {
                Param::Null => return None,
                Param::Text(b) => {
                    out.push(b'T');
                    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                    out.extend_from_slice(b);
                }
                Param::Uuid(u) => {
                    out.push(b'U');
                    out.extend_from_slice(u.as_bytes());
                }
                Param::Int(k) => {
                    out.push(b'I');
                    out.extend_from_slice(&k.to_be_bytes());
                }
            }
        }
        Some(out)
    }
}

/// The changes of one table waiting to be sent, by level.
#[derive(Debug, Default)]
struct TableWindow {
    /// Per level, the runs by shape, in first-seen order.
    levels: Vec<Vec<(StatementShape, Vec<Change>)>>,
    level_of: HashMap<Vec<u8>, usize>,
}

/// A statement to send: one change alone, or a set of changes of one shape
/// on distinct rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The table (relation oid).
    pub oid: u32,
    /// The shape every change of the run has.
    pub shape: StatementShape,
    /// The changes, in stream order.
    pub changes: Vec<Change>,
}

/// Changes held until the next barrier, per table.
#[derive(Debug, Default)]
pub struct Window {
    tables: Vec<(u32, TableWindow)>,
    len: usize,
}

impl Window {
    /// Changes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hold a change of table `oid` to the row named by `key` (from
    /// [`TableBatching::row_key`]).
    pub fn push(&mut self, oid: u32, key: Vec<u8>, change: Change) {
        let t = match self.tables.iter().position(|(o, _)| *o == oid) {
            Some(i) => &mut self.tables[i].1,
            None => {
                self.tables.push((oid, TableWindow::default()));
                &mut self.tables.last_mut().expect("just pushed").1
            }
        };
        let level = match t.level_of.get_mut(&key) {
            Some(l) => {
                *l += 1;
                *l
            }
            None => {
                t.level_of.insert(key, 0);
                0
            }
        };
        if t.levels.len() <= level {
            t.levels.resize_with(level + 1, Vec::new);
        }
        let runs = &mut t.levels[level];
        match runs.iter_mut().find(|(s, _)| *s == change.shape) {
            Some((_, v)) => v.push(change),
            None => runs.push((change.shape.clone(), vec![change])),
        }
        self.len += 1;
    }

    /// Everything held, as runs in the order to send them (table by table,
    /// level by level; in a level deletes, then updates, then inserts —
    /// any order would do, keys being distinct).
    pub fn drain(&mut self) -> Vec<Run> {
        let mut out = Vec::new();
        for (oid, t) in self.tables.drain(..) {
            for level in t.levels {
                let mut runs = level;
                runs.sort_by_key(|(s, _)| match s {
                    StatementShape::Delete { .. } => 0,
                    StatementShape::Update { .. } => 1,
                    StatementShape::Insert => 2,
                });
                out.extend(runs.into_iter().map(|(shape, changes)| Run {
                    oid,
                    shape,
                    changes,
                }));
            }
        }
        self.len = 0;
        out
    }

    /// Drop everything held (after an error; the shadow transaction is rolled back).
    pub fn clear(&mut self) {
        self.tables.clear();
        self.len = 0;
    }
}

/// A run's parameters as arrays: one per parameter of the single
/// statement, element `i` from change `i`.
pub fn columns(run: &Run) -> Vec<Vec<Param>> {
    let width = run.changes.first().map_or(0, |c| c.params.len());
    let mut cols: Vec<Vec<Param>> = (0..width)
        .map(|_| Vec::with_capacity(run.changes.len()))
        .collect();
    for c in &run.changes {
        for (col, p) in cols.iter_mut().zip(&c.params) {
            col.push(p.clone());
        }
    }
    cols
}

/// The array parameter `$n` for column `pos` and the expression that reads
/// element `a{n}` of the unnested row as the column's type.
fn array_param(spec: &TableSpec, pos: usize, n: usize) -> (String, String) {
    match spec.columns.get(pos) {
        Some(c) if c.reads_uuid() => (
            format!("${n}::int8[]"),
            format!("v.a{n}::{}", c.shadow_type_sql()),
        ),
        Some(c) if c.reference.is_some() => (format!("${n}::uuid[]"), format!("v.a{n}")),
        Some(c) => (format!("${n}::text[]"), format!("v.a{n}::{}", c.type_sql)),
        None => (format!("${n}::text[]"), format!("v.a{n}")),
    }
}

fn col(spec: &TableSpec, pos: usize) -> String {
    spec.columns
        .get(pos)
        .map(|c| quote_ident(&c.name))
        .unwrap_or_default()
}

/// The set statement of a shape: the same parameters as
/// [`super::sql::statement`], each bound as an array of the run's values.
/// The statement's row count is the number of rows it touched (each change
/// of an update or delete run must touch one).
pub fn set_statement(spec: &TableSpec, shape: &StatementShape) -> String {
    let table = spec.shadow.quoted();
    let unnest = |cols: &[usize]| -> (String, Vec<String>) {
        let (arrays, exprs): (Vec<String>, Vec<String>) = cols
            .iter()
            .enumerate()
            .map(|(n, &pos)| array_param(spec, pos, n + 1))
            .unzip();
        let names: Vec<String> = (1..=cols.len()).map(|n| format!("a{n}")).collect();
        (
            format!("unnest({}) AS v({})", arrays.join(", "), names.join(", ")),
            exprs,
        )
    };
    match shape {
        StatementShape::Insert => {
            let cols: Vec<usize> = spec.data_columns().map(|(i, _)| i).collect();
            let names: Vec<String> = cols.iter().map(|&i| col(spec, i)).collect();
            let (from, exprs) = unnest(&cols);
            let overriding = if spec.columns.iter().any(|c| c.identity == Some('a')) {
                " OVERRIDING SYSTEM VALUE"
            } else {
                ""
            };
            format!(
                "INSERT INTO {table} ({}){overriding} SELECT {} FROM {from} {}",
                names.join(", "),
                exprs.join(", "),
                super::sql::on_conflict(spec, &cols)
            )
        }
        StatementShape::Update { set, key } => {
            let all: Vec<usize> = set.iter().chain(key).copied().collect();
            let (from, exprs) = unnest(&all);
            let sets: Vec<String> = set
                .iter()
                .zip(&exprs)
                .map(|(&pos, e)| format!("{} = {e}", col(spec, pos)))
                .collect();
            let wheres: Vec<String> = key
                .iter()
                .zip(&exprs[set.len()..])
                .map(|(&pos, e)| format!("t.{} = {e}", col(spec, pos)))
                .collect();
            format!(
                "UPDATE {table} AS t SET {} FROM {from} WHERE {}",
                sets.join(", "),
                wheres.join(" AND ")
            )
        }
        StatementShape::Delete { key } => {
            let (from, exprs) = unnest(key);
            let wheres: Vec<String> = key
                .iter()
                .zip(&exprs)
                .map(|(&pos, e)| format!("t.{} = {e}", col(spec, pos)))
                .collect();
            format!(
                "DELETE FROM {table} AS t USING {from} WHERE {}",
                wheres.join(" AND ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::QualifiedName;
    use crate::plan::model::{ColumnSpec, IntKind};
    use bytes::Bytes;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn c(name: &str, attnum: i16, ty: &str, oid: u32, reference: Option<IntKind>) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            attnum,
            type_sql: ty.into(),
            type_oid: oid,
            reference,
            not_null: false,
            generated: false,
            identity: None,
        }
    }

    /// `id bigint` key, `user_id` reference, `n int`, `body text`.
    fn spec() -> TableSpec {
        TableSpec {
            source: QualifiedName::new("public", "ev"),
            oid: 7,
            shadow: QualifiedName::new("public", "ev__rekey"),
            columns: vec![
                c("id", 1, "bigint", 20, None),
                c("user_id", 2, "bigint", 20, Some(IntKind::Int8)),
                c("n", 3, "integer", 23, None),
                c("body", 4, "text", 25, None),
            ],
            key: vec![0],
        }
    }

    fn text(s: impl ToString) -> Param {
        Param::Text(Bytes::from(s.to_string()))
    }

    #[test]
    fn set_statements_bind_arrays_and_cast_like_the_single_ones() {
        let s = spec();
        assert_eq!(
            set_statement(&s, &StatementShape::Insert),
            "INSERT INTO \"public\".\"ev__rekey\" (\"id\", \"user_id\", \"n\", \"body\") SELECT v.a1::bigint, v.a2, v.a3::integer, v.a4::text \
             FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[]) AS v(a1, a2, a3, a4) \
             ON CONFLICT (\"id\") DO UPDATE SET \"user_id\" = EXCLUDED.\"user_id\", \"n\" = EXCLUDED.\"n\", \"body\" = EXCLUDED.\"body\""
        );
        assert_eq!(
            set_statement(
                &s,
                &StatementShape::Update {
                    set: vec![1, 2],
                    key: vec![0]
                }
            ),
            "UPDATE \"public\".\"ev__rekey\" AS t SET \"user_id\" = v.a1, \"n\" = v.a2::integer \
             FROM unnest($1::uuid[], $2::text[], $3::text[]) AS v(a1, a2, a3) WHERE t.\"id\" = v.a3::bigint"
        );
        assert_eq!(
            set_statement(&s, &StatementShape::Delete { key: vec![0] }),
            "DELETE FROM \"public\".\"ev__rekey\" AS t USING unnest($1::text[]) AS v(a1) WHERE t.\"id\" = v.a1::bigint"
        );
        let mut id = s.clone();
        id.columns[0].identity = Some('a');
        assert!(set_statement(&id, &StatementShape::Insert).contains(
            "(\"id\", \"user_id\", \"n\", \"body\") OVERRIDING SYSTEM VALUE SELECT v.a1::bigint"
        ));
    }

    #[test]
    fn the_way_back_binds_keys_as_int8_arrays() {
        let rev = spec().reversed(8, QualifiedName::new("public", "_rekey_old_ev"));
        assert_eq!(
            set_statement(
                &rev,
                &StatementShape::Update {
                    set: vec![1],
                    key: vec![0]
                }
            ),
            "UPDATE \"public\".\"_rekey_old_ev\" AS t SET \"user_id\" = v.a1::bigint \
             FROM unnest($1::int8[], $2::text[]) AS v(a1, a2) WHERE t.\"id\" = v.a2::bigint"
        );
        // A translated key in the row key: the same row, the same bytes.
        let mut keyed = rev.clone();
        keyed.key = vec![1, 0];
        let b = TableBatching::for_table(&keyed, &[]).unwrap();
        let del = StatementShape::Delete { key: vec![1, 0] };
        assert_eq!(
            b.row_key(&del, &[Param::Int(5), text(1)]),
            b.row_key(&del, &[Param::Int(5), text(1)])
        );
        assert_ne!(
            b.row_key(&del, &[Param::Int(5), text(1)]),
            b.row_key(&del, &[Param::Int(6), text(1)])
        );
    }

    #[test]
    fn only_tables_keyed_by_exact_types_with_no_other_unique_index_batch() {
        let s = spec();
        let n = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(TableBatching::for_table(&s, &[n(&["id"]), n(&["id"])]).is_some());
        assert!(TableBatching::for_table(&s, &[]).is_some());
        assert!(
            TableBatching::for_table(&s, &[n(&["id"]), n(&["body"])]).is_none(),
            "a second unique index makes order matter"
        );
        assert!(
            TableBatching::for_table(&s, &[None]).is_none(),
            "an expression index"
        );
        let mut t = s.clone();
        t.key = vec![3];
        assert!(
            TableBatching::for_table(&t, &[n(&["body"])]).is_none(),
            "a text key"
        );
        t.key = vec![];
        assert!(TableBatching::for_table(&t, &[]).is_none());
        let mut r = s.clone();
        r.key = vec![1, 0];
        assert!(TableBatching::for_table(&r, &[n(&["id", "user_id"])]).is_some());
        assert!(TableBatching::for_table(&r, &[n(&["id"])]).is_none());
    }

    #[test]
    fn a_key_change_goes_alone() {
        let b = TableBatching::for_table(&spec(), &[]).unwrap();
        let upd = StatementShape::Update {
            set: vec![0, 2],
            key: vec![0],
        };
        assert!(b.row_key(&upd, &[text(1), text(5), text(1)]).is_some());
        assert!(b.row_key(&upd, &[text(2), text(5), text(1)]).is_none());
        let ins = StatementShape::Insert;
        assert_eq!(
            b.row_key(&ins, &[text(1), Param::Null, text(5), text("x")]),
            b.row_key(&StatementShape::Delete { key: vec![0] }, &[text(1)])
        );
    }

    // ---- The planner against one-by-one application, on a model table. ----

    /// A change on the model: key, and for writes the values of columns 1..=3
    /// (`None` in an update: unchanged TOAST, left out of the SET list).
    #[derive(Debug, Clone)]
    enum Op {
        Insert(i64, [i64; 3]),
        Update(i64, [Option<i64>; 3]),
        KeyChange(i64, i64, [i64; 3]),
        Delete(i64),
    }

    type Table = BTreeMap<i64, [i64; 3]>;

    fn to_change(op: &Op, lsn: u64) -> Change {
        let (shape, params) = match op {
            Op::Insert(k, v) => (
                StatementShape::Insert,
                std::iter::once(text(k)).chain(v.iter().map(text)).collect(),
            ),
            Op::Update(k, v) => {
                let mut set = vec![0];
                let mut params = vec![text(k)];
                for (i, x) in v.iter().enumerate() {
                    if let Some(x) = x {
                        set.push(i + 1);
                        params.push(text(x));
                    }
                }
                params.push(text(k));
                (StatementShape::Update { set, key: vec![0] }, params)
            }
            Op::KeyChange(old, new, v) => (
                StatementShape::Update {
                    set: vec![0, 1, 2, 3],
                    key: vec![0],
                },
                std::iter::once(text(new))
                    .chain(v.iter().map(text))
                    .chain(std::iter::once(text(old)))
                    .collect(),
            ),
            Op::Delete(k) => (StatementShape::Delete { key: vec![0] }, vec![text(k)]),
        };
        Change {
            shape,
            params,
            lsn: Lsn(lsn),
        }
    }

    fn int(p: &Param) -> i64 {
        match p {
            Param::Text(b) => std::str::from_utf8(b).unwrap().parse().unwrap(),
            _ => panic!("not a text int"),
        }
    }

    /// Run a statement on the model with set semantics: every row matched
    /// against the table as it was before the statement; an error where the
    /// server would raise one. Returns rows touched.
    fn run_set(t: &mut Table, shape: &StatementShape, changes: &[Change]) -> Result<u64, String> {
        let before = t.clone();
        let mut seen = std::collections::HashSet::new();
        let mut touched = 0;
        for c in changes {
            let p = &c.params;
            match shape {
                StatementShape::Insert => {
                    if !seen.insert(int(&p[0])) {
                        return Err("ON CONFLICT DO UPDATE cannot affect row a second time".into());
                    }
                    t.insert(int(&p[0]), [int(&p[1]), int(&p[2]), int(&p[3])]);
                    touched += 1;
                }
                StatementShape::Update { set, .. } => {
                    let old = int(&p[set.len()]);
                    if !seen.insert(old) {
                        return Err("a row matched twice: one update lost".into());
                    }
                    let Some(mut row) = before.get(&old).copied() else {
                        continue;
                    };
                    let mut new_key = old;
                    for (i, &pos) in set.iter().enumerate() {
                        if pos == 0 {
                            new_key = int(&p[i]);
                        } else {
                            row[pos - 1] = int(&p[i]);
                        }
                    }
                    t.remove(&old);
                    if t.insert(new_key, row).is_some() {
                        return Err("duplicate key".into());
                    }
                    touched += 1;
                }
                StatementShape::Delete { .. } => {
                    let k = int(&p[0]);
                    if !seen.insert(k) {
                        return Err("a row deleted twice".into());
                    }
                    if before.contains_key(&k) {
                        t.remove(&k);
                        touched += 1;
                    }
                }
            }
        }
        Ok(touched)
    }

    /// Apply one change at a time, as the applier did before; `Err` at the
    /// first update or delete that finds no row.
    fn one_by_one(t: &mut Table, ops: &[Op]) -> Result<(), String> {
        for (i, op) in ops.iter().enumerate() {
            let c = to_change(op, i as u64);
            let n = run_set(t, &c.shape, std::slice::from_ref(&c))?;
            if n == 0 && c.shape != StatementShape::Insert {
                return Err(format!("no row at {i}"));
            }
        }
        Ok(())
    }

    /// The planner: a window sent when full and before every change that
    /// goes alone; each run's row count checked as the applier checks it.
    fn planned(t: &mut Table, ops: &[Op], cap: usize) -> Result<(), String> {
        let b = TableBatching::for_table(&spec_model(), &[]).unwrap();
        let mut w = Window::default();
        let send = |t: &mut Table, w: &mut Window| -> Result<(), String> {
            for run in w.drain() {
                let n = run_set(t, &run.shape, &run.changes)?;
                if run.shape != StatementShape::Insert && n != run.changes.len() as u64 {
                    return Err("no row".into());
                }
            }
            Ok(())
        };
        for (i, op) in ops.iter().enumerate() {
            let c = to_change(op, i as u64);
            match b.row_key(&c.shape, &c.params) {
                Some(k) => {
                    w.push(7, k, c);
                    if w.len() >= cap {
                        send(t, &mut w)?;
                    }
                }
                None => {
                    send(t, &mut w)?;
                    let n = run_set(t, &c.shape.clone(), &[c])?;
                    if n == 0 {
                        return Err("no row".into());
                    }
                }
            }
        }
        send(t, &mut w)
    }

    fn spec_model() -> TableSpec {
        let mut s = spec();
        s.columns[1] = c("a", 2, "bigint", 20, None);
        s
    }

    fn op() -> impl Strategy<Value = Op> {
        let k = 0i64..8;
        let v = [0i64..5, 0i64..5, 0i64..5];
        let ov = [
            proptest::option::of(0i64..5),
            proptest::option::of(0i64..5),
            proptest::option::of(0i64..5),
        ];
        prop_oneof![
            3 => (k.clone(), v.clone()).prop_map(|(k, v)| Op::Insert(k, v)),
            3 => (k.clone(), ov).prop_map(|(k, v)| Op::Update(k, v)),
            1 => (k.clone(), k.clone(), v).prop_map(|(a, b, v)| Op::KeyChange(a, b, v)),
            2 => k.prop_map(Op::Delete),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Whatever the changes, sending them as planned runs leaves the table
        /// exactly as one-by-one application does, and fails (a change that
        /// finds no row, a duplicate key) exactly when it fails.
        #[test]
        fn planned_runs_equal_one_by_one(
            start in proptest::collection::btree_map(0i64..8, [0i64..5, 0i64..5, 0i64..5], 0..8),
            ops in proptest::collection::vec(op(), 0..40),
            cap in 1usize..50,
        ) {
            let mut a = start.clone();
            let mut b = start;
            let ra = one_by_one(&mut a, &ops);
            let rb = planned(&mut b, &ops, cap);
            prop_assert_eq!(ra.is_ok(), rb.is_ok(), "{:?} vs {:?}", ra, rb);
            if ra.is_ok() {
                prop_assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn levels_keep_each_keys_order_and_group_the_rest() {
        let b = TableBatching::for_table(&spec_model(), &[]).unwrap();
        let mut w = Window::default();
        let ops = [
            Op::Insert(1, [0; 3]),
            Op::Update(2, [Some(1), None, None]),
            Op::Delete(1),
            Op::Insert(3, [0; 3]),
            Op::Update(4, [Some(1), None, None]),
        ];
        for (i, op) in ops.iter().enumerate() {
            let c = to_change(op, i as u64);
            w.push(7, b.row_key(&c.shape, &c.params).unwrap(), c);
        }
        assert_eq!(w.len(), 5);
        let runs: Vec<(u8, Vec<u64>)> = w
            .drain()
            .iter()
            .map(|r| {
                let kind = match r.shape {
                    StatementShape::Delete { .. } => b'D',
                    StatementShape::Update { .. } => b'U',
                    StatementShape::Insert => b'I',
                };
                (kind, r.changes.iter().map(|c| c.lsn.0).collect())
            })
            .collect();
        assert_eq!(
            runs,
            vec![(b'U', vec![1, 4]), (b'I', vec![0, 3]), (b'D', vec![2])]
        );
        assert!(w.is_empty());
    }
}
