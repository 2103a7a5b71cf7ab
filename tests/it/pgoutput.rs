//! The pgoutput decoder against a real server: every message type, every
//! replica identity, unchanged TOAST, key changes, multi-statement and
//! rolled-back transactions, logical messages and value text.
//!
//! Each test publishes a few tables, opens a slot and a stream, writes, and
//! decodes the stream with [`pgoutput::decode`] the way pg-rekey's consumer
//! does: relations are remembered by OID, every change must refer to a
//! relation already announced and carry one value per column, and every
//! commit is confirmed once handled. What is decoded is compared with what was
//! written: values as the exact text the server prints (a simple query on a
//! session with the same pinned settings as the walsender is the oracle, plus
//! hard-coded literals so a settings drift cannot go unnoticed), relations
//! and types with the catalog.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use pg_rekey::pg::{quote_ident, Lsn};
use pg_rekey::replication::pgoutput::{
    self, Begin, Commit, LogicalMessage, OldRow, Origin, Relation, ReplicaIdentity, TupleValue,
    TypeMessage,
};
use pg_rekey::replication::stream::{LogicalStream, StartOptions};
use pg_rekey::replication::wire::{ReplicationClient, SnapshotAction};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::{wait_for, SlotGuard, TestDb};

const LONG: Duration = Duration::from_secs(60);

/// A column value as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum V {
    Null,
    /// Unchanged TOAST (`'u'`).
    Toast,
    T(String),
}

fn t(s: &str) -> V {
    V::T(s.to_string())
}

fn vals(tuple: &[TupleValue]) -> Vec<V> {
    tuple
        .iter()
        .map(|v| match v {
            TupleValue::Null => V::Null,
            TupleValue::UnchangedToast => V::Toast,
            TupleValue::Text(b) => {
                V::T(String::from_utf8(b.to_vec()).unwrap_or_else(|e| panic!("text value: {e}")))
            }
            TupleValue::Binary(_) => panic!("binary value without binary mode"),
        })
        .collect()
}

/// The old-row part of an update or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Old {
    Key(Vec<V>),
    Full(Vec<V>),
}

/// A change with relations resolved to names and values to [`V`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Insert(String, Vec<V>),
    Update(String, Option<Old>, Vec<V>),
    Delete(String, Old),
    /// Options, relation names sorted.
    Truncate(u8, Vec<String>),
    Message {
        transactional: bool,
        prefix: String,
        content: Bytes,
    },
}

/// One decoded transaction.
#[derive(Debug)]
struct Txn {
    begin: Begin,
    /// Everything between Begin and Commit, in stream order.
    body: Vec<LogicalMessage>,
    /// The data changes and messages of `body`, resolved.
    changes: Vec<Change>,
    commit: Commit,
}

impl Txn {
    fn relations(&self) -> Vec<&Relation> {
        self.body
            .iter()
            .filter_map(|m| match m {
                LogicalMessage::Relation(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn types(&self) -> Vec<&TypeMessage> {
        self.body
            .iter()
            .filter_map(|m| match m {
                LogicalMessage::Type(y) => Some(y),
                _ => None,
            })
            .collect()
    }

    fn origin(&self) -> Option<&Origin> {
        self.body.iter().find_map(|m| match m {
            LogicalMessage::Origin(o) => Some(o),
            _ => None,
        })
    }

    fn messages(&self) -> Vec<&pgoutput::Message> {
        self.body
            .iter()
            .filter_map(|m| match m {
                LogicalMessage::Message(m) => Some(m),
                _ => None,
            })
            .collect()
    }
}

/// A test database with published tables, a slot and a decoding consumer.
struct Fixture {
    db: TestDb,
    sql: Client,
    slot: String,
    stream: Option<LogicalStream>,
    /// Relations announced on this stream, by OID.
    relations: HashMap<u32, Relation>,
    /// End LSN of the last commit received (and confirmed).
    last_end: Lsn,
    _guard: SlotGuard,
}

impl Fixture {
    /// Runs `ddl`, creates a publication `FOR TABLE tables`, a slot and
    /// starts streaming from its consistent point.
    async fn new(ddl: &str, tables: &str) -> Fixture {
        let db = TestDb::new().await;
        let sql = db.client().await;
        let publ = db.unique("pub");
        sql.batch_execute(ddl).await.unwrap();
        sql.batch_execute(&format!(
            "CREATE PUBLICATION {} FOR TABLE {tables}",
            quote_ident(&publ)
        ))
        .await
        .unwrap();
        let slot = db.unique("slot");
        let guard = SlotGuard::new(&db.spec, &slot);
        let mut c = ReplicationClient::connect(&db.spec)
            .await
            .unwrap_or_else(|e| panic!("replication connect: {e}"));
        let info = c
            .create_slot(&slot, SnapshotAction::NoExport)
            .await
            .unwrap();
        let stream = c
            .start_replication(
                &slot,
                info.consistent_point,
                &[publ],
                StartOptions::default(),
            )
            .await
            .unwrap();
        Fixture {
            db,
            sql,
            slot,
            stream: Some(stream),
            relations: HashMap::new(),
            last_end: info.consistent_point,
            _guard: guard,
        }
    }

    fn stream(&mut self) -> &mut LogicalStream {
        self.stream.as_mut().expect("stream running")
    }

    async fn next_message(&mut self) -> LogicalMessage {
        let ev = tokio::time::timeout(LONG, self.stream().recv())
            .await
            .expect("no replication event within a minute")
            .unwrap_or_else(|e| panic!("stream: {e}"));
        pgoutput::decode(ev.payload).unwrap_or_else(|e| panic!("decode: {e}"))
    }

    fn rel_name(&self, oid: u32, width: Option<usize>) -> String {
        let rel = self
            .relations
            .get(&oid)
            .unwrap_or_else(|| panic!("change for relation {oid} before its Relation message"));
        if let Some(w) = width {
            assert_eq!(w, rel.columns.len(), "tuple width of {}", rel.name);
        }
        rel.name.clone()
    }

    /// The next transaction, checked for Begin/Commit consistency and
    /// confirmed once read, as the real consumer confirms once applied.
    /// The next transaction with something in it. PostgreSQL 14 also sends
    /// transactions that changed nothing published as an empty BEGIN/COMMIT
    /// (15 and later skip them); those are confirmed and passed over.
    async fn next_txn(&mut self) -> Txn {
        loop {
            let txn = self.next_txn_or_empty().await;
            if !txn.body.is_empty() {
                return txn;
            }
        }
    }

    async fn next_txn_or_empty(&mut self) -> Txn {
        let begin = match self.next_message().await {
            LogicalMessage::Begin(b) => b,
            other => panic!("expected Begin, got {other:?}"),
        };
        let mut body = Vec::new();
        let mut changes = Vec::new();
        let commit = loop {
            let m = self.next_message().await;
            let change = match &m {
                LogicalMessage::Commit(c) => break c.clone(),
                LogicalMessage::Begin(_) => panic!("Begin inside a transaction"),
                LogicalMessage::Relation(r) => {
                    self.relations.insert(r.oid, r.clone());
                    None
                }
                LogicalMessage::Type(_) | LogicalMessage::Origin(_) => None,
                LogicalMessage::Insert(i) => Some(Change::Insert(
                    self.rel_name(i.relation, Some(i.new.len())),
                    vals(&i.new),
                )),
                LogicalMessage::Update(u) => {
                    let name = self.rel_name(u.relation, Some(u.new.len()));
                    let old = u.old.as_ref().map(|o| {
                        self.rel_name(u.relation, Some(o.tuple().len()));
                        old(o)
                    });
                    Some(Change::Update(name, old, vals(&u.new)))
                }
                LogicalMessage::Delete(d) => {
                    let name = self.rel_name(d.relation, Some(d.old.tuple().len()));
                    Some(Change::Delete(name, old(&d.old)))
                }
                LogicalMessage::Truncate(tr) => {
                    let mut names: Vec<_> = tr
                        .relations
                        .iter()
                        .map(|&oid| self.rel_name(oid, None))
                        .collect();
                    names.sort();
                    Some(Change::Truncate(tr.options, names))
                }
                LogicalMessage::Message(msg) => Some(Change::Message {
                    transactional: msg.transactional,
                    prefix: msg.prefix.clone(),
                    content: msg.content.clone(),
                }),
            };
            changes.extend(change);
            body.push(m);
        };
        assert_eq!(begin.final_lsn, commit.commit_lsn, "Begin's final LSN");
        assert_eq!(begin.commit_time, commit.commit_time);
        assert_eq!(commit.flags, 0);
        assert!(commit.commit_lsn < commit.end_lsn, "{commit:?}");
        assert!(
            commit.commit_lsn >= self.last_end,
            "commit {} before the previous end {}",
            commit.commit_lsn,
            self.last_end
        );
        self.last_end = commit.end_lsn;
        self.stream().feedback().confirm(commit.end_lsn);
        Txn {
            begin,
            body,
            changes,
            commit,
        }
    }

    /// Waits for the slot to reach the last confirmed commit, stops the
    /// stream and drops the slot.
    async fn finish(mut self) {
        let end = self.last_end;
        wait_for("slot at the last confirmed commit", LONG, || async {
            let s: String = self
                .sql
                .query_one(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                    &[&self.slot],
                )
                .await
                .unwrap()
                .get(0);
            (s.parse::<Lsn>().unwrap() >= end).then_some(())
        })
        .await;
        let stream = self.stream.take().expect("stream running");
        let mut c = stream.stop().await.unwrap();
        c.drop_slot(&self.slot, true).await.unwrap();
        let left: i64 = self
            .sql
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0);
    }

    /// One row as the server prints it (simple query: text format, pinned settings).
    async fn row(&self, query: &str) -> Vec<V> {
        let msgs = self.sql.simple_query(query).await.unwrap();
        let rows: Vec<_> = msgs
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(rows.len(), 1, "{query}");
        let r = rows[0];
        (0..r.len())
            .map(|i| r.get(i).map_or(V::Null, |s| V::T(s.to_string())))
            .collect()
    }

    /// Runs `sql` and returns the first column of its single row as text.
    async fn scalar(&self, sql: &str) -> String {
        match self.row(sql).await.as_slice() {
            [V::T(s), ..] => s.clone(),
            other => panic!("{sql}: {other:?}"),
        }
    }
}

fn old(o: &OldRow) -> Old {
    match o {
        OldRow::Key(t) => Old::Key(vals(t)),
        OldRow::Full(t) => Old::Full(vals(t)),
    }
}

/// Keeps the values at the key positions, others null (what a `K` tuple holds).
fn key_only(row: &[V], keys: &[usize]) -> Vec<V> {
    row.iter()
        .enumerate()
        .map(|(i, v)| {
            if keys.contains(&i) {
                v.clone()
            } else {
                V::Null
            }
        })
        .collect()
}

fn key_names(rel: &Relation) -> Vec<&str> {
    rel.columns
        .iter()
        .filter(|c| c.is_key)
        .map(|c| c.name.as_str())
        .collect()
}

/// Asserts that a Relation message says what the catalog says: namespace,
/// name, replica identity, and per column (dropped and generated ones are
/// not sent) name, type OID, typmod and whether it is in the identity key.
async fn assert_relation_matches_catalog(sql: &Client, rel: &Relation) {
    let row = sql
        .query_one(
            "SELECT n.nspname::text, c.relname::text, c.relreplident::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&rel.oid],
        )
        .await
        .unwrap();
    let (ns, name, ident): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((rel.namespace.as_str(), rel.name.as_str()), (&*ns, &*name));
    let want = match ident.as_str() {
        "d" => ReplicaIdentity::Default,
        "n" => ReplicaIdentity::Nothing,
        "f" => ReplicaIdentity::Full,
        "i" => ReplicaIdentity::Index,
        other => panic!("relreplident {other}"),
    };
    assert_eq!(rel.replica_identity, want, "{name}");
    let cols = sql
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod, \
                    c.relreplident = 'f' OR a.attnum = ANY (coalesce(( \
                      SELECT i.indkey::int2[] FROM pg_index i WHERE i.indrelid = c.oid AND \
                        CASE c.relreplident WHEN 'd' THEN i.indisprimary \
                                            WHEN 'i' THEN i.indisreplident ELSE false END), '{}')) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&rel.oid],
        )
        .await
        .unwrap();
    let catalog: Vec<(String, u32, i32, bool)> = cols
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let decoded: Vec<(String, u32, i32, bool)> = rel
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.type_oid, c.type_modifier, c.is_key))
        .collect();
    assert_eq!(decoded, catalog, "columns of {name}");
}

/// The LSN the server will give the next WAL record (at or after).
async fn insert_lsn(sql: &Client) -> Lsn {
    let s: String = sql
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    s.parse().unwrap()
}

/// Microseconds since 2000-01-01 UTC, the protocol's clock, read on the server.
async fn server_clock(sql: &Client) -> i64 {
    sql.query_one(
        "SELECT ((extract(epoch FROM clock_timestamp()) - 946684800) * 1000000)::int8",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn begin_and_commit_carry_the_transactions_xid_positions_and_time() {
    let mut f = Fixture::new("CREATE TABLE t (id int PRIMARY KEY)", "t").await;
    let mut seen = Vec::new();
    for i in 0..3 {
        let lsn_before = insert_lsn(&f.sql).await;
        let clock_before = server_clock(&f.sql).await;
        f.sql.batch_execute("BEGIN").await.unwrap();
        // The 32-bit xid the WAL records (txid_current adds an epoch above).
        let xid: i64 = f
            .sql
            .query_one("SELECT txid_current() % 4294967296", &[])
            .await
            .unwrap()
            .get(0);
        f.sql
            .execute("INSERT INTO t VALUES ($1)", &[&i])
            .await
            .unwrap();
        f.sql.batch_execute("COMMIT").await.unwrap();
        let clock_after = server_clock(&f.sql).await;
        let lsn_after = insert_lsn(&f.sql).await;
        let txn = f.next_txn().await;
        assert_eq!(i64::from(txn.begin.xid), xid);
        assert_eq!(
            txn.changes,
            vec![Change::Insert("t".into(), vec![t(&i.to_string())])]
        );
        assert!(
            lsn_before < txn.begin.final_lsn,
            "{lsn_before} {:?}",
            txn.begin
        );
        assert!(
            txn.commit.end_lsn <= lsn_after,
            "{lsn_after} {:?}",
            txn.commit
        );
        assert!(
            (clock_before..=clock_after).contains(&txn.begin.commit_time),
            "commit time {} outside [{clock_before}, {clock_after}]",
            txn.begin.commit_time
        );
        seen.push(txn);
    }
    for w in seen.windows(2) {
        assert!(w[0].begin.xid < w[1].begin.xid);
        assert!(w[0].commit.end_lsn <= w[1].begin.final_lsn);
        assert!(w[0].commit.commit_time <= w[1].commit.commit_time);
    }
    // Only the first transaction announces the relation.
    assert_eq!(seen[0].relations().len(), 1);
    assert!(seen[1].relations().is_empty() && seen[2].relations().is_empty());
    f.finish().await;
}

#[tokio::test]
async fn relation_and_type_messages_match_the_catalog() {
    let ddl = r#"
        CREATE SCHEMA "Rel Schema";
        CREATE TYPE "Rel Schema".mood AS ENUM ('sad', 'ok', 'happy');
        CREATE DOMAIN "Rel Schema".posint AS int CHECK (VALUE > 0);
        CREATE TABLE "Rel Schema"."Tab" (
            id bigint PRIMARY KEY,
            gone int,
            name varchar(20) NOT NULL,
            amount numeric(10,2),
            at timestamptz(3),
            flags bit(7),
            m "Rel Schema".mood,
            p "Rel Schema".posint,
            doubled bigint GENERATED ALWAYS AS (id * 2) STORED
        );
        ALTER TABLE "Rel Schema"."Tab" DROP COLUMN gone;
    "#;
    let mut f = Fixture::new(ddl, r#""Rel Schema"."Tab""#).await;
    f.sql
        .batch_execute(
            r#"INSERT INTO "Rel Schema"."Tab" (id, name, amount, at, flags, m, p)
               VALUES (1, 'one', 3.5, '2024-05-06 07:08:09.123456+00', B'1010101', 'ok', 7)"#,
        )
        .await
        .unwrap();
    let txn = f.next_txn().await;
    let rels = txn.relations();
    assert_eq!(rels.len(), 1);
    let rel = rels[0].clone();
    assert_relation_matches_catalog(&f.sql, &rel).await;
    // The same facts written down, so the catalog query cannot hide a mistake.
    assert_eq!(
        (rel.namespace.as_str(), rel.name.as_str()),
        ("Rel Schema", "Tab")
    );
    assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
    let shape: Vec<(&str, i32, bool)> = rel
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_modifier, c.is_key))
        .collect();
    assert_eq!(
        shape,
        [
            ("id", -1, true),
            ("name", 20 + 4, false),
            ("amount", (10 << 16 | 2) + 4, false),
            ("at", 3, false),
            ("flags", 7, false),
            ("m", -1, false),
            ("p", -1, false),
        ]
    );
    assert_eq!(rel.columns[0].type_oid, 20); // int8
    assert_eq!(rel.columns[1].type_oid, 1043); // varchar
    assert_eq!(rel.columns[2].type_oid, 1700); // numeric
                                               // One Type message per user-defined column type, before the Relation.
                                               // For a domain the server sends the domain's OID with the name of its
                                               // base type (logicalrep_write_typ looks up getBaseType): `pg_catalog`
                                               // (sent as "") `int4` here.
    let types: Vec<(u32, String, String)> = txn
        .types()
        .iter()
        .map(|y| (y.oid, y.namespace.clone(), y.name.clone()))
        .collect();
    let catalog: Vec<(u32, String, String)> = f
        .sql
        .query(
            r#"SELECT t.oid, n.nspname::text, b.typname::text FROM pg_type t
               JOIN pg_type b ON b.oid = CASE t.typtype WHEN 'd' THEN t.typbasetype ELSE t.oid END
               JOIN pg_namespace n ON n.oid = b.typnamespace
               WHERE t.oid IN ('"Rel Schema".mood'::regtype, '"Rel Schema".posint'::regtype)
               ORDER BY t.typname"#,
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(types, catalog);
    let names: Vec<_> = types
        .iter()
        .map(|(_, ns, n)| (ns.as_str(), n.as_str()))
        .collect();
    assert_eq!(names, [("Rel Schema", "mood"), ("pg_catalog", "int4")]);
    assert_eq!(
        (rel.columns[5].type_oid, rel.columns[6].type_oid),
        (catalog[0].0, catalog[1].0)
    );
    let first_rel = txn
        .body
        .iter()
        .position(|m| matches!(m, LogicalMessage::Relation(_)))
        .unwrap();
    assert!(txn.body[..first_rel]
        .iter()
        .all(|m| matches!(m, LogicalMessage::Type(_))));
    assert_eq!(first_rel, 2);
    // The generated column is not sent; values in the relation's column order.
    let expected = f
        .row(r#"SELECT id, name, amount, at, flags, m, p FROM "Rel Schema"."Tab""#)
        .await;
    assert_eq!(
        expected,
        [
            t("1"),
            t("one"),
            t("3.50"),
            t("2024-05-06 07:08:09.123+00"),
            t("1010101"),
            t("ok"),
            t("7")
        ]
    );
    assert_eq!(txn.changes, vec![Change::Insert("Tab".into(), expected)]);

    // DDL: the relation is announced again, inside the next transaction.
    f.sql
        .batch_execute(
            r#"ALTER TABLE "Rel Schema"."Tab" ADD COLUMN extra text DEFAULT 'e';
               INSERT INTO "Rel Schema"."Tab" (id, name) VALUES (2, 'two')"#,
        )
        .await
        .unwrap();
    let txn = f.next_txn().await;
    let rels = txn.relations();
    assert_eq!(rels.len(), 1);
    assert_eq!(rels[0].columns.len(), 8);
    assert_eq!(rels[0].columns[7].name, "extra");
    assert_relation_matches_catalog(&f.sql, rels[0]).await;
    let expected = f
        .row(r#"SELECT id, name, amount, at, flags, m, p, extra FROM "Rel Schema"."Tab" WHERE id = 2"#)
        .await;
    assert_eq!(txn.changes, vec![Change::Insert("Tab".into(), expected)]);
    f.finish().await;
}

#[tokio::test]
async fn default_identity_update_has_no_old_tuple_and_delete_sends_the_key() {
    let mut f = Fixture::new(
        "CREATE TABLE d (a int, b text, v text, w int, PRIMARY KEY (a, b))",
        "d",
    )
    .await;
    f.sql
        .batch_execute("INSERT INTO d VALUES (1, 'k', 'x', 10)")
        .await
        .unwrap();
    let ins = f.next_txn().await;
    let rel = ins.relations()[0].clone();
    assert_relation_matches_catalog(&f.sql, &rel).await;
    assert_eq!(key_names(&rel), ["a", "b"]);
    assert_eq!(
        ins.changes,
        vec![Change::Insert(
            "d".into(),
            vec![t("1"), t("k"), t("x"), t("10")]
        )]
    );

    // Key kept: no old tuple.
    f.sql
        .batch_execute("UPDATE d SET v = 'y', w = NULL WHERE a = 1")
        .await
        .unwrap();
    let up = f.next_txn().await;
    assert_eq!(
        up.changes,
        vec![Change::Update(
            "d".into(),
            None,
            vec![t("1"), t("k"), t("y"), V::Null]
        )]
    );

    // One key column changed: `K` with the whole old key, others null.
    let before = f.row("SELECT * FROM d").await;
    f.sql
        .batch_execute("UPDATE d SET b = 'k2' WHERE a = 1")
        .await
        .unwrap();
    let after = f.row("SELECT * FROM d").await;
    let up = f.next_txn().await;
    assert_eq!(
        up.changes,
        vec![Change::Update(
            "d".into(),
            Some(Old::Key(key_only(&before, &[0, 1]))),
            after.clone()
        )]
    );
    assert_eq!(
        key_only(&before, &[0, 1]),
        [t("1"), t("k"), V::Null, V::Null]
    );

    f.sql.batch_execute("DELETE FROM d").await.unwrap();
    let del = f.next_txn().await;
    assert_eq!(
        del.changes,
        vec![Change::Delete(
            "d".into(),
            Old::Key(vec![t("1"), t("k2"), V::Null, V::Null])
        )]
    );
    f.finish().await;
}

#[tokio::test]
async fn primary_key_change_sends_the_old_key() {
    let mut f = Fixture::new("CREATE TABLE p (id int PRIMARY KEY, v text)", "p").await;
    f.sql
        .batch_execute("INSERT INTO p VALUES (1, 'a'); UPDATE p SET id = 10 WHERE id = 1")
        .await
        .unwrap();
    // One simple query with two statements is one transaction.
    let txn = f.next_txn().await;
    assert_eq!(
        txn.changes,
        vec![
            Change::Insert("p".into(), vec![t("1"), t("a")]),
            Change::Update(
                "p".into(),
                Some(Old::Key(vec![t("1"), V::Null])),
                vec![t("10"), t("a")]
            ),
        ]
    );
    f.finish().await;
}

#[tokio::test]
async fn using_index_identity_sends_the_index_columns() {
    let ddl =
        "CREATE TABLE ui (id int PRIMARY KEY, code text NOT NULL, region int NOT NULL, note text);
               CREATE UNIQUE INDEX ui_code ON ui (code, region);
               ALTER TABLE ui REPLICA IDENTITY USING INDEX ui_code;";
    let mut f = Fixture::new(ddl, "ui").await;
    f.sql
        .batch_execute("INSERT INTO ui VALUES (1, 'c1', 7, 'n')")
        .await
        .unwrap();
    let ins = f.next_txn().await;
    let rel = ins.relations()[0].clone();
    assert_relation_matches_catalog(&f.sql, &rel).await;
    assert_eq!(rel.replica_identity, ReplicaIdentity::Index);
    assert_eq!(key_names(&rel), ["code", "region"]);

    for stmt in [
        "UPDATE ui SET note = 'n2' WHERE id = 1",
        // The primary key is not the identity here: changing it sends no old key.
        "UPDATE ui SET id = 2 WHERE id = 1",
        "UPDATE ui SET code = 'c2' WHERE id = 2",
        "DELETE FROM ui",
    ] {
        let before = f.row("SELECT * FROM ui").await;
        f.sql.batch_execute(stmt).await.unwrap();
        let txn = f.next_txn().await;
        let old_key = Old::Key(key_only(&before, &[1, 2]));
        let want = if stmt.starts_with("DELETE") {
            Change::Delete("ui".into(), old_key)
        } else {
            let after = f.row("SELECT * FROM ui").await;
            let old = stmt.contains("code =").then_some(old_key);
            Change::Update("ui".into(), old, after)
        };
        assert_eq!(txn.changes, vec![want], "{stmt}");
    }
    f.finish().await;
}

#[tokio::test]
async fn full_identity_sends_the_whole_old_row() {
    let ddl = "CREATE TABLE f (id int PRIMARY KEY, v text, w int);
               ALTER TABLE f REPLICA IDENTITY FULL;";
    let mut f = Fixture::new(ddl, "f").await;
    f.sql
        .batch_execute("INSERT INTO f VALUES (1, 'a', NULL)")
        .await
        .unwrap();
    let ins = f.next_txn().await;
    let rel = ins.relations()[0].clone();
    assert_relation_matches_catalog(&f.sql, &rel).await;
    assert_eq!(rel.replica_identity, ReplicaIdentity::Full);
    assert_eq!(key_names(&rel), ["id", "v", "w"]);
    f.sql
        .batch_execute("UPDATE f SET v = 'b', w = 5")
        .await
        .unwrap();
    let up = f.next_txn().await;
    assert_eq!(
        up.changes,
        vec![Change::Update(
            "f".into(),
            Some(Old::Full(vec![t("1"), t("a"), V::Null])),
            vec![t("1"), t("b"), t("5")]
        )]
    );
    f.sql.batch_execute("DELETE FROM f").await.unwrap();
    let del = f.next_txn().await;
    assert_eq!(
        del.changes,
        vec![Change::Delete(
            "f".into(),
            Old::Full(vec![t("1"), t("b"), t("5")])
        )]
    );
    f.finish().await;
}

#[tokio::test]
async fn nothing_identity_rejects_update_and_delete_of_a_published_table() {
    let ddl = "CREATE TABLE n (id int PRIMARY KEY, v text);
               ALTER TABLE n REPLICA IDENTITY NOTHING;
               CREATE TABLE nokey (v text);
               CREATE TABLE marker (id int PRIMARY KEY);";
    let mut f = Fixture::new(ddl, "n, nokey, marker").await;
    f.sql
        .batch_execute("INSERT INTO n VALUES (1, 'a'); INSERT INTO nokey VALUES ('x')")
        .await
        .unwrap();
    let ins = f.next_txn().await;
    for rel in ins.relations() {
        assert_relation_matches_catalog(&f.sql, rel).await;
        assert!(key_names(rel).is_empty(), "{}", rel.name);
    }
    let idents: Vec<_> = ins.relations().iter().map(|r| r.replica_identity).collect();
    // A table without a primary key keeps the default identity, which is empty.
    assert_eq!(idents, [ReplicaIdentity::Nothing, ReplicaIdentity::Default]);
    assert_eq!(
        ins.changes,
        vec![
            Change::Insert("n".into(), vec![t("1"), t("a")]),
            Change::Insert("nokey".into(), vec![t("x")]),
        ]
    );
    for (stmt, table, verb) in [
        ("UPDATE n SET v = 'b'", "n", "update"),
        ("DELETE FROM n", "n", "delete from"),
        ("UPDATE nokey SET v = 'y'", "nokey", "update"),
        ("DELETE FROM nokey", "nokey", "delete from"),
    ] {
        let e = f.sql.batch_execute(stmt).await.unwrap_err();
        let db = e.as_db_error().unwrap_or_else(|| panic!("{stmt}: {e}"));
        assert_eq!(db.code().code(), "55000", "{stmt}");
        assert_eq!(
            db.message(),
            format!(
                "cannot {verb} table \"{table}\" because it does not have a replica identity and publishes {}",
                if verb == "update" { "updates" } else { "deletes" }
            )
        );
        assert!(
            db.hint().unwrap_or_default().contains("REPLICA IDENTITY"),
            "{:?}",
            db.hint()
        );
    }
    // The rejected statements delivered nothing: next is the marker.
    f.sql
        .batch_execute("INSERT INTO marker VALUES (1)")
        .await
        .unwrap();
    let next = f.next_txn().await;
    assert_eq!(
        next.changes,
        vec![Change::Insert("marker".into(), vec![t("1")])]
    );
    assert_eq!(
        f.row("SELECT count(*) FROM n WHERE v = 'a'").await,
        [t("1")]
    );
    f.finish().await;
}

/// A value well over 8 kB that pglz cannot compress, so it is stored out of line.
const BIG: &str = "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 300))";

async fn assert_out_of_line(f: &Fixture, table: &str) {
    let r = f
        .row(&format!(
            "SELECT octet_length(payload), pg_column_size(payload) >= octet_length(payload), \
                    pg_column_compression(payload) IS NULL FROM {table}"
        ))
        .await;
    assert_eq!(
        r,
        [t("9600"), t("t"), t("t")],
        "{table}.payload uncompressed"
    );
}

#[tokio::test]
async fn update_leaving_a_toasted_column_unchanged_sends_unchanged_toast() {
    let mut f = Fixture::new(
        "CREATE TABLE big (id int PRIMARY KEY, note text, payload text)",
        "big",
    )
    .await;
    f.sql
        .batch_execute(&format!("INSERT INTO big VALUES (1, 'n', {BIG})"))
        .await
        .unwrap();
    assert_out_of_line(&f, "big").await;
    let payload = f.scalar("SELECT payload FROM big").await;
    // The insert carries the whole value.
    let ins = f.next_txn().await;
    assert_eq!(
        ins.changes,
        vec![Change::Insert(
            "big".into(),
            vec![t("1"), t("n"), t(&payload)]
        )]
    );
    // Not rewritten: `u`, not the value and not NULL.
    f.sql
        .batch_execute("UPDATE big SET note = 'n2'")
        .await
        .unwrap();
    let up = f.next_txn().await;
    assert_eq!(
        up.changes,
        vec![Change::Update(
            "big".into(),
            None,
            vec![t("1"), t("n2"), V::Toast]
        )]
    );
    // A key change keeps the out-of-line value: old key, and still `u` in the new row.
    f.sql.batch_execute("UPDATE big SET id = 2").await.unwrap();
    let up = f.next_txn().await;
    assert_eq!(
        up.changes,
        vec![Change::Update(
            "big".into(),
            Some(Old::Key(vec![t("1"), V::Null, V::Null])),
            vec![t("2"), t("n2"), V::Toast]
        )]
    );
    // Rewritten: the new value in full.
    f.sql
        .batch_execute("UPDATE big SET payload = payload || 'x'")
        .await
        .unwrap();
    let up = f.next_txn().await;
    assert_eq!(
        up.changes,
        vec![Change::Update(
            "big".into(),
            None,
            vec![t("2"), t("n2"), t(&format!("{payload}x"))]
        )]
    );
    f.finish().await;
}

#[tokio::test]
async fn full_identity_sends_the_toasted_old_value_and_unchanged_toast_in_the_new_row() {
    let ddl = "CREATE TABLE bigf (id int PRIMARY KEY, note text, payload text);
               ALTER TABLE bigf REPLICA IDENTITY FULL;";
    let mut f = Fixture::new(ddl, "bigf").await;
    f.sql
        .batch_execute(&format!("INSERT INTO bigf VALUES (1, 'n', {BIG})"))
        .await
        .unwrap();
    assert_out_of_line(&f, "bigf").await;
    let payload = f.scalar("SELECT payload FROM bigf").await;
    f.next_txn().await;
    f.sql
        .batch_execute("UPDATE bigf SET note = 'n2'")
        .await
        .unwrap();
    let up = f.next_txn().await;
    // The old row is logged with out-of-line values inlined; the new row
    // still points at the same TOAST value, so it is `u`.
    assert_eq!(
        up.changes,
        vec![Change::Update(
            "bigf".into(),
            Some(Old::Full(vec![t("1"), t("n"), t(&payload)])),
            vec![t("1"), t("n2"), V::Toast]
        )]
    );
    f.sql.batch_execute("DELETE FROM bigf").await.unwrap();
    let del = f.next_txn().await;
    assert_eq!(
        del.changes,
        vec![Change::Delete(
            "bigf".into(),
            Old::Full(vec![t("1"), t("n2"), t(&payload)])
        )]
    );
    f.finish().await;
}

#[tokio::test]
async fn truncate_sends_its_relations_and_flags() {
    let ddl = "CREATE TABLE a (id serial PRIMARY KEY);
               CREATE TABLE b (id int PRIMARY KEY);
               CREATE TABLE c (id int PRIMARY KEY, a_id int REFERENCES a);
               CREATE TABLE unpub (id int);";
    let mut f = Fixture::new(ddl, "a, b, c").await;
    f.sql
        .batch_execute(
            "INSERT INTO a DEFAULT VALUES; INSERT INTO b VALUES (1); INSERT INTO c VALUES (1, 1)",
        )
        .await
        .unwrap();
    let ins = f.next_txn().await;
    assert_eq!(ins.changes.len(), 3);
    // CASCADE reaches c; both flags are set.
    f.sql
        .batch_execute("TRUNCATE a, b RESTART IDENTITY CASCADE")
        .await
        .unwrap();
    let tr = f.next_txn().await;
    assert_eq!(
        tr.changes,
        vec![Change::Truncate(
            1 | 2,
            vec!["a".into(), "b".into(), "c".into()]
        )]
    );
    let oids: Vec<u32> = f
        .sql
        .query(
            "SELECT oid FROM pg_class WHERE oid IN ('a'::regclass, 'b'::regclass, 'c'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let truncated = tr
        .body
        .iter()
        .find_map(|m| match m {
            LogicalMessage::Truncate(t) => Some(t.relations.clone()),
            _ => None,
        })
        .unwrap();
    let (mut x, mut y) = (truncated, oids);
    x.sort();
    y.sort();
    assert_eq!(x, y);
    // No flags; an unpublished table truncated alongside is left out.
    f.sql.batch_execute("TRUNCATE b, unpub").await.unwrap();
    let tr = f.next_txn().await;
    assert_eq!(tr.changes, vec![Change::Truncate(0, vec!["b".into()])]);
    f.finish().await;
}

#[tokio::test]
async fn origin_message_follows_begin_when_the_session_has_an_origin() {
    let mut f = Fixture::new("CREATE TABLE o (id int PRIMARY KEY)", "o").await;
    let origin = f.db.unique("origin");
    f.sql
        .execute("SELECT pg_replication_origin_create($1)", &[&origin])
        .await
        .unwrap();
    f.sql
        .execute("SELECT pg_replication_origin_session_setup($1)", &[&origin])
        .await
        .unwrap();
    f.sql
        .batch_execute(
            "BEGIN;
             SELECT pg_replication_origin_xact_setup('1/2345678', '2024-01-01 00:00:00+00');
             INSERT INTO o VALUES (1);
             COMMIT;",
        )
        .await
        .unwrap();
    f.sql
        .batch_execute("SELECT pg_replication_origin_session_reset()")
        .await
        .unwrap();
    // Without an origin: no Origin message.
    f.sql
        .batch_execute("INSERT INTO o VALUES (2)")
        .await
        .unwrap();
    let txn = f.next_txn().await;
    assert_eq!(
        txn.origin(),
        Some(&Origin {
            commit_lsn: "1/2345678".parse().unwrap(),
            name: origin.clone(),
        })
    );
    assert!(
        matches!(txn.body.first(), Some(LogicalMessage::Origin(_))),
        "Origin comes right after Begin"
    );
    // Decoding reports the origin's commit time, not the local one.
    let origin_time: i64 = f
        .sql
        .query_one(
            "SELECT ((extract(epoch FROM timestamptz '2024-01-01 00:00:00+00') - 946684800) * 1000000)::int8",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(txn.begin.commit_time, origin_time);
    assert_eq!(txn.changes, vec![Change::Insert("o".into(), vec![t("1")])]);
    let plain = f.next_txn().await;
    assert_eq!(plain.origin(), None);
    // Dropped only now: PostgreSQL 14 looks the origin's name up while it
    // decodes, and leaves the Origin message out when the origin is gone.
    f.sql
        .execute("SELECT pg_replication_origin_drop($1)", &[&origin])
        .await
        .unwrap();
    assert_eq!(
        plain.changes,
        vec![Change::Insert("o".into(), vec![t("2")])]
    );
    f.finish().await;
}

#[tokio::test]
async fn multi_statement_transactions_arrive_whole_in_statement_order() {
    let ddl = "CREATE TABLE m1 (id int PRIMARY KEY, v text);
               CREATE TABLE m2 (id int PRIMARY KEY, v text);";
    let mut f = Fixture::new(ddl, "m1, m2").await;
    f.sql
        .batch_execute(
            "BEGIN;
             INSERT INTO m1 VALUES (1, 'a');
             INSERT INTO m2 VALUES (1, 'x');
             UPDATE m1 SET v = 'b' WHERE id = 1;
             INSERT INTO m1 VALUES (2, 'c'), (3, 'e');
             UPDATE m1 SET v = 'd' WHERE id = 2;
             DELETE FROM m1 WHERE id = 2;
             DELETE FROM m2 WHERE id = 1;
             COMMIT;",
        )
        .await
        .unwrap();
    let txn = f.next_txn().await;
    let k = |id: &str| Old::Key(vec![t(id), V::Null]);
    assert_eq!(
        txn.changes,
        vec![
            Change::Insert("m1".into(), vec![t("1"), t("a")]),
            Change::Insert("m2".into(), vec![t("1"), t("x")]),
            Change::Update("m1".into(), None, vec![t("1"), t("b")]),
            Change::Insert("m1".into(), vec![t("2"), t("c")]),
            Change::Insert("m1".into(), vec![t("3"), t("e")]),
            Change::Update("m1".into(), None, vec![t("2"), t("d")]),
            Change::Delete("m1".into(), k("2")),
            Change::Delete("m2".into(), k("1")),
        ]
    );
    // Each relation announced once, before its first change.
    let names: Vec<_> = txn.relations().iter().map(|r| r.name.clone()).collect();
    assert_eq!(names, ["m1", "m2"]);

    // Rolled back: nothing. A rolled-back savepoint: only what survived.
    f.sql
        .batch_execute("BEGIN; INSERT INTO m1 VALUES (9, 'gone'); ROLLBACK;")
        .await
        .unwrap();
    f.sql
        .batch_execute(
            "BEGIN;
             INSERT INTO m2 VALUES (10, 'kept');
             SAVEPOINT s;
             INSERT INTO m2 VALUES (11, 'gone');
             UPDATE m2 SET v = 'gone' WHERE id = 10;
             ROLLBACK TO SAVEPOINT s;
             INSERT INTO m1 VALUES (12, 'kept');
             COMMIT;",
        )
        .await
        .unwrap();
    let txn = f.next_txn().await;
    assert_eq!(
        txn.changes,
        vec![
            Change::Insert("m2".into(), vec![t("10"), t("kept")]),
            Change::Insert("m1".into(), vec![t("12"), t("kept")]),
        ]
    );
    f.finish().await;
}

#[tokio::test]
async fn transactional_logical_messages_arrive_inside_their_transaction() {
    let mut f = Fixture::new("CREATE TABLE lm (id int PRIMARY KEY)", "lm").await;
    let before = insert_lsn(&f.sql).await;
    f.sql.batch_execute("BEGIN").await.unwrap();
    f.sql
        .execute("INSERT INTO lm VALUES (1)", &[])
        .await
        .unwrap();
    let text_end: String = f
        .sql
        .query_one(
            "SELECT pg_logical_emit_message(true, 'rekey/fence', 'héllo ✓ fence 42')::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let bin_end: String = f
        .sql
        .query_one(
            "SELECT pg_logical_emit_message(true, 'rekey/bin', '\\x00ff0a00'::bytea)::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    f.sql
        .execute("INSERT INTO lm VALUES (2)", &[])
        .await
        .unwrap();
    f.sql.batch_execute("COMMIT").await.unwrap();
    let txn = f.next_txn().await;
    assert_eq!(
        txn.changes,
        vec![
            Change::Insert("lm".into(), vec![t("1")]),
            Change::Message {
                transactional: true,
                prefix: "rekey/fence".into(),
                content: Bytes::from("héllo ✓ fence 42"),
            },
            Change::Message {
                transactional: true,
                prefix: "rekey/bin".into(),
                content: Bytes::from_static(&[0x00, 0xff, 0x0a, 0x00]),
            },
            Change::Insert("lm".into(), vec![t("2")]),
        ]
    );
    // The message's LSN is the end of its record: exactly what
    // pg_logical_emit_message returned, inside the transaction.
    let msgs = txn.messages();
    let (text_end, bin_end): (Lsn, Lsn) = (text_end.parse().unwrap(), bin_end.parse().unwrap());
    assert_eq!((msgs[0].lsn, msgs[1].lsn), (text_end, bin_end));
    assert!(before < text_end && text_end < bin_end && bin_end <= txn.begin.final_lsn);
    f.finish().await;
}

#[tokio::test]
async fn values_decode_as_the_exact_text_the_server_prints() {
    let ddl = "CREATE TABLE v (
                   id int PRIMARY KEY, tx text, vc varchar(20), n numeric(10,2), ts timestamptz,
                   d date, b bytea, ia int[], ta text[], j jsonb, bo boolean, f8 float8,
                   iv interval, u uuid
               )";
    let mut f = Fixture::new(ddl, "v").await;
    f.sql
        .batch_execute(
            r#"INSERT INTO v (id) VALUES (1);
               INSERT INTO v VALUES (2, '', '', 0, '-infinity', '2000-01-01', '\x', '{}', '{}',
                                     'null', false, '-0', '0', '00000000-0000-0000-0000-000000000000');
               INSERT INTO v VALUES (3, E'héllo wörld ✓ 🦀 "q" \\ back\nnewline\ttab ''s',
                                     'ünïcödé', 12.3, '2024-02-29 23:59:59.123456+05:30', '1999-12-31',
                                     '\x00ff27', '{1,NULL,-3}', '{"a b","c,d",NULL,"",é}',
                                     '{"b": [1, 2.50, null], "a": "x\u00e9"}', true, 0.1,
                                     '1 day 02:03:04.5', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11');"#,
        )
        .await
        .unwrap();
    let txn = f.next_txn().await;
    let mut rows = Vec::new();
    for id in 1..=3 {
        rows.push(f.row(&format!("SELECT * FROM v WHERE id = {id}")).await);
    }
    let decoded: Vec<Vec<V>> = txn
        .changes
        .iter()
        .map(|c| match c {
            Change::Insert(_, v) => v.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(decoded, rows);
    // NULL and empty are different things.
    assert_eq!(decoded[0][1..], vec![V::Null; 13][..]);
    assert_eq!(decoded[1][1..3], [t(""), t("")]);
    // Literals, so a change of session settings cannot pass unnoticed.
    assert_eq!(
        decoded[1][3..],
        [
            t("0.00"),
            t("-infinity"),
            t("2000-01-01"),
            t("\\x"),
            t("{}"),
            t("{}"),
            t("null"),
            t("f"),
            t("-0"),
            t("00:00:00"),
            t("00000000-0000-0000-0000-000000000000"),
        ]
    );
    assert_eq!(
        decoded[2][1..],
        [
            t("héllo wörld ✓ 🦀 \"q\" \\ back\nnewline\ttab 's"),
            t("ünïcödé"),
            t("12.30"),
            t("2024-02-29 18:29:59.123456+00"),
            t("1999-12-31"),
            t("\\x00ff27"),
            t("{1,NULL,-3}"),
            t("{\"a b\",\"c,d\",NULL,\"\",é}"),
            t("{\"a\": \"xé\", \"b\": [1, 2.50, null]}"),
            t("t"),
            t("0.1"),
            t("1 day 02:03:04.5"),
            t("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ]
    );
    // An update from NULL to empty and back is seen as such.
    f.sql
        .batch_execute("UPDATE v SET tx = '', vc = NULL WHERE id = 1")
        .await
        .unwrap();
    let up = f.next_txn().await;
    let mut want = vec![V::Null; 14];
    want[0] = t("1");
    want[1] = t("");
    assert_eq!(up.changes, vec![Change::Update("v".into(), None, want)]);
    f.finish().await;
}
