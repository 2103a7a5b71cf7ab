//! The snapshot copy against a real server: map load, reference translation,
//! snapshot isolation, TOAST, generated columns, quoting, composite keys,
//! batching, parallel ranges and orphaned references.

use pg_rekey::copy::{
    copy_table, copy_table_parallel, copy_table_with, CopyError, CopyOptions, Progress,
};
use pg_rekey::idmap::IdMap;
use pg_rekey::pg::QualifiedName;
use pg_rekey::plan::model::{ColumnSpec, IntKind, ParentSpec, TableSpec};
use tokio_postgres::Client;

use crate::support::TestDb;

fn col(name: &str, attnum: i16, type_sql: &str, type_oid: u32) -> ColumnSpec {
    ColumnSpec {
        name: name.into(),
        attnum,
        type_sql: type_sql.into(),
        type_oid,
        reference: None,
        not_null: false,
        generated: false,
        identity: None,
    }
}

fn reference(mut c: ColumnSpec) -> ColumnSpec {
    c.reference = IntKind::from_oid(c.type_oid);
    c
}

async fn oid(c: &Client, name: &QualifiedName) -> u32 {
    c.query_one("SELECT $1::text::regclass::oid", &[&name.quoted()])
        .await
        .unwrap()
        .get(0)
}

async fn parent(c: &Client) -> ParentSpec {
    let table = QualifiedName::new("public", "users");
    ParentSpec {
        oid: oid(c, &table).await,
        table,
        key_column: "id".into(),
        key_kind: IntKind::Int8,
        uuid_column: "uuid_id".into(),
    }
}

/// A session inside a REPEATABLE READ transaction on snapshot `snap`.
async fn snapshot_session(db: &TestDb, snap: &str) -> Client {
    let c = db.client().await;
    c.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snap}'"
    ))
    .await
    .unwrap();
    c
}

async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

const SCHEMA: &str = r#"
CREATE TABLE users (id bigint PRIMARY KEY, uuid_id uuid UNIQUE NOT NULL DEFAULT gen_random_uuid(), name text);
INSERT INTO users (id, name) SELECT g, 'u' || g FROM generate_series(1, 300) g;
INSERT INTO users (id, name) VALUES (5000000000, 'big');

CREATE SCHEMA "My Schema";
CREATE TABLE "My Schema"."Weird ""T"" Name" (
  "Id" int8 PRIMARY KEY,
  "Owner Ref" int4 REFERENCES users(id),
  small_ref int2 REFERENCES users(id),
  note text
);
INSERT INTO "My Schema"."Weird ""T"" Name"
  SELECT g, (g % 300) + 1, CASE WHEN g % 3 = 0 THEN NULL ELSE (g % 7) + 1 END, 'n' || g
  FROM generate_series(1, 500) g;
CREATE TABLE "My Schema"."Weird ""T"" Name_shadow" (
  "Id" int8 PRIMARY KEY, "Owner Ref" uuid, small_ref uuid, note text);

CREATE TABLE docs (
  id bigint PRIMARY KEY,
  author_id bigint NOT NULL REFERENCES users(id),
  editor_id bigint REFERENCES users(id),
  body text,
  body_len int GENERATED ALWAYS AS (length(body)) STORED,
  created timestamptz NOT NULL DEFAULT now()
);
INSERT INTO docs (id, author_id, editor_id, body)
  SELECT g, CASE WHEN g = 1 THEN 5000000000 ELSE g END, CASE WHEN g % 2 = 0 THEN NULL ELSE g + 1 END,
         CASE WHEN g = 7 THEN NULL ELSE 'short body ' || g END
  FROM generate_series(1, 40) g;
-- Compressible values over 1 MB.
UPDATE docs SET body = repeat('abc' || id, 400000) WHERE id IN (2, 3);
-- Incompressible values over 1 MB (random hex).
UPDATE docs SET body = (SELECT string_agg(md5(random()::text || i || id), '') FROM generate_series(1, 40000) i)
  WHERE id IN (4, 5);
CREATE TABLE docs_shadow (
  id bigint PRIMARY KEY,
  author_id uuid NOT NULL,
  editor_id uuid,
  body text,
  body_len int GENERATED ALWAYS AS (length(body)) STORED,
  created timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE memberships (
  tenant int, seq int, user_id int2 REFERENCES users(id), role text,
  PRIMARY KEY (tenant, seq));
INSERT INTO memberships SELECT g / 100, g % 100, CASE WHEN g % 5 = 0 THEN NULL ELSE (g % 300) + 1 END, 'r' || g
  FROM generate_series(0, 999) g;
CREATE TABLE memberships_shadow (tenant int, seq int, user_id uuid, role text, PRIMARY KEY (tenant, seq));
"#;

fn weird_spec() -> TableSpec {
    TableSpec {
        source: QualifiedName::new("My Schema", "Weird \"T\" Name"),
        oid: 0,
        shadow: QualifiedName::new("My Schema", "Weird \"T\" Name_shadow"),
        columns: vec![
            col("Id", 1, "bigint", 20),
            reference(col("Owner Ref", 2, "integer", 23)),
            reference(col("small_ref", 3, "smallint", 21)),
            col("note", 4, "text", 25),
        ],
        key: vec![0],
    }
}

fn docs_spec() -> TableSpec {
    let mut len = col("body_len", 5, "integer", 23);
    len.generated = true;
    TableSpec {
        source: QualifiedName::new("public", "docs"),
        oid: 0,
        shadow: QualifiedName::new("public", "docs_shadow"),
        columns: vec![
            col("id", 1, "bigint", 20),
            reference(col("author_id", 2, "bigint", 20)),
            reference(col("editor_id", 3, "bigint", 20)),
            col("body", 4, "text", 25),
            len,
            col("created", 6, "timestamp with time zone", 1184),
        ],
        key: vec![0],
    }
}

fn memberships_spec() -> TableSpec {
    TableSpec {
        source: QualifiedName::new("public", "memberships"),
        oid: 0,
        shadow: QualifiedName::new("public", "memberships_shadow"),
        columns: vec![
            col("tenant", 1, "integer", 23),
            col("seq", 2, "integer", 23),
            reference(col("user_id", 3, "smallint", 21)),
            col("role", 4, "text", 25),
        ],
        key: vec![0, 1],
    }
}

/// Expected shadow contents, computed under the snapshot.
const EXPECTED: [(&str, &str, &str); 3] = [
    (
        "exp_weird",
        r#"SELECT w."Id", o.uuid_id AS owner, s.uuid_id AS small, w.note
           FROM ONLY "My Schema"."Weird ""T"" Name" w
           LEFT JOIN users o ON o.id = w."Owner Ref" LEFT JOIN users s ON s.id = w.small_ref"#,
        r#"SELECT "Id", "Owner Ref", small_ref, note FROM "My Schema"."Weird ""T"" Name_shadow""#,
    ),
    (
        "exp_docs",
        "SELECT d.id, a.uuid_id AS author, e.uuid_id AS editor, d.body, d.body_len, d.created
           FROM ONLY docs d JOIN users a ON a.id = d.author_id LEFT JOIN users e ON e.id = d.editor_id",
        "SELECT id, author_id, editor_id, body, body_len, created FROM docs_shadow",
    ),
    (
        "exp_memberships",
        "SELECT m.tenant, m.seq, u.uuid_id AS u, m.role FROM ONLY memberships m LEFT JOIN users u ON u.id = m.user_id",
        "SELECT tenant, seq, user_id, role FROM memberships_shadow",
    ),
];

#[tokio::test]
async fn copies_the_snapshot_with_references_translated() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    admin.batch_execute(SCHEMA).await.unwrap();

    // The snapshot (in production: the slot's exported snapshot).
    let exporter = db.client().await;
    exporter
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let snap: String = exporter
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .unwrap()
        .get(0);

    // Committed after the snapshot: none of it may reach the shadows.
    admin
        .batch_execute(
            r#"INSERT INTO users (id) VALUES (1000);
               INSERT INTO docs (id, author_id) VALUES (1000, 1000);
               UPDATE "My Schema"."Weird ""T"" Name" SET "Owner Ref" = 299, note = 'changed' WHERE "Id" = 1;
               DELETE FROM memberships WHERE tenant = 0;
               UPDATE users SET uuid_id = gen_random_uuid() WHERE id = 2;"#,
        )
        .await
        .unwrap();

    let source = snapshot_session(&db, &snap).await;
    let source2 = snapshot_session(&db, &snap).await;
    let target = db.client().await;
    let target2 = db.client().await;

    let map = IdMap::load(&source, &parent(&admin).await).await.unwrap();
    assert_eq!(map.len(), 301, "user 1000 came after the snapshot");
    assert!(map.get(1000).is_none());
    assert!(map.get(5_000_000_000).is_some());

    let p_docs = Progress::new();
    let n_docs = copy_table(&source, &target, &docs_spec(), &map, &p_docs)
        .await
        .unwrap();
    assert_eq!(n_docs, 40);
    assert_eq!(p_docs.rows(), 40);

    // Small batches: many shadow transactions cut at tuple boundaries.
    let p_m = Progress::new();
    let opts = CopyOptions {
        batch_rows: 37,
        batch_bytes: 0,
        order_by_key: true,
        ..CopyOptions::default()
    };
    let n_m = copy_table_with(&source, &target, &memberships_spec(), &map, &p_m, &opts)
        .await
        .unwrap();
    assert_eq!(
        n_m, 1000,
        "tenant 0 was deleted after the snapshot: still copied"
    );
    assert_eq!(p_m.rows(), 1000);

    // Two connection pairs on the same snapshot, split by key range (the
    // ranged copy reads the key from the catalog, hence the real OID; every
    // table is split, however small).
    let p_w = Progress::new();
    let weird = TableSpec {
        oid: source
            .query_one(
                "SELECT $1::text::regclass::oid",
                &[&weird_spec().source.quoted()],
            )
            .await
            .unwrap()
            .get(0),
        ..weird_spec()
    };
    let n_w = copy_table_parallel(
        &[(&source, &target), (&source2, &target2)],
        &weird,
        &map,
        &p_w,
        &CopyOptions {
            min_split_pages: 0,
            ranges_per_session: 2,
            ..CopyOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(n_w, 500);
    assert_eq!(p_w.rows(), 500);

    // Materialise the expected rows under the snapshot, then end it so the
    // same session can see the committed shadows.
    for (name, expected, _) in EXPECTED {
        source
            .batch_execute(&format!("CREATE TEMP TABLE {name} AS {expected}"))
            .await
            .unwrap();
    }
    source.batch_execute("COMMIT").await.unwrap();
    exporter.batch_execute("COMMIT").await.unwrap();

    for (name, _, shadow) in EXPECTED {
        let missing = count(
            &source,
            &format!("SELECT count(*) FROM (SELECT * FROM {name} EXCEPT ALL {shadow}) x"),
        )
        .await;
        let extra = count(
            &source,
            &format!("SELECT count(*) FROM ({shadow} EXCEPT ALL SELECT * FROM {name}) x"),
        )
        .await;
        let want = count(&source, &format!("SELECT count(*) FROM {name}")).await;
        let got = count(&source, &format!("SELECT count(*) FROM ({shadow}) x")).await;
        assert_eq!((missing, extra), (0, 0), "{name}: rows differ");
        assert_eq!(want, got, "{name}: counts differ");
    }

    // The post-snapshot changes really happened on the source, and are absent.
    assert_eq!(count(&source, "SELECT count(*) FROM docs").await, 41);
    assert_eq!(
        count(&source, "SELECT count(*) FROM docs_shadow WHERE id = 1000").await,
        0
    );
    assert_eq!(
        count(
            &source,
            r#"SELECT count(*) FROM "My Schema"."Weird ""T"" Name_shadow" WHERE note = 'changed'"#
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &source,
            "SELECT count(*) FROM memberships_shadow WHERE tenant = 0"
        )
        .await,
        100
    );
    // NULL references stayed NULL; the big key translated.
    assert_eq!(
        count(
            &source,
            "SELECT count(*) FROM docs_shadow WHERE editor_id IS NULL"
        )
        .await,
        20
    );
    assert_eq!(
        count(&source, "SELECT count(*) FROM docs_shadow d JOIN users u ON u.uuid_id = d.author_id WHERE d.id = 1 AND u.id = 5000000000").await,
        1
    );
    assert_eq!(
        count(
            &source,
            "SELECT count(*) FROM memberships_shadow WHERE user_id IS NULL"
        )
        .await,
        200
    );
    // TOAST: values over 1 MB, compressed and not, came through whole.
    let rows = source
        .query(
            "SELECT id, length(body)::int8, pg_column_size(body)::int8, md5(body) FROM docs_shadow WHERE id IN (2,3,4,5) ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    for r in &rows {
        let id: i64 = r.get(0);
        let len: i64 = r.get(1);
        let stored: i64 = r.get(2);
        assert!(len > 1_000_000, "doc {id} is {len} bytes");
        if id <= 3 {
            assert!(stored < len / 10, "doc {id} compressible: stored {stored}");
        } else {
            assert!(
                stored > 1_000_000,
                "doc {id} incompressible: stored {stored}"
            );
        }
    }
}

#[tokio::test]
async fn orphaned_reference_names_table_column_and_value() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    admin
        .batch_execute(
            r#"CREATE TABLE users (id bigint PRIMARY KEY, uuid_id uuid UNIQUE NOT NULL DEFAULT gen_random_uuid());
               INSERT INTO users (id) SELECT generate_series(1, 10);
               CREATE TABLE "Orders" (id int PRIMARY KEY, "Buyer Id" int4);
               INSERT INTO "Orders" SELECT g, CASE WHEN g = 77 THEN 424242 ELSE g % 10 + 1 END FROM generate_series(1, 100) g;
               CREATE TABLE orders_shadow (id int PRIMARY KEY, "Buyer Id" uuid);"#,
        )
        .await
        .unwrap();
    let source = db.client().await;
    source
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let target = db.client().await;
    let map = IdMap::load(&source, &parent(&admin).await).await.unwrap();
    let spec = TableSpec {
        source: QualifiedName::new("public", "Orders"),
        oid: 0,
        shadow: QualifiedName::new("public", "orders_shadow"),
        columns: vec![
            col("id", 1, "integer", 23),
            reference(col("Buyer Id", 2, "integer", 23)),
        ],
        key: vec![0],
    };
    let progress = Progress::new();
    let err = copy_table(&source, &target, &spec, &map, &progress)
        .await
        .unwrap_err();
    match &err {
        CopyError::MissingParent {
            table,
            column,
            value,
            ..
        } => {
            assert_eq!(table, "public.\"Orders\"");
            assert_eq!(column, "Buyer Id");
            assert_eq!(*value, 424242);
        }
        other => panic!("expected MissingParent, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("Orders") && text.contains("Buyer Id") && text.contains("424242"),
        "{text}"
    );
    // The failed batch was rolled back; the target session is still usable.
    assert_eq!(
        count(&target, "SELECT count(*) FROM orders_shadow").await,
        0
    );
    assert_eq!(progress.rows(), 0);
}

/// The shadow built for the copy without its row key, the key added after
/// the copy: the key (primary key, or replica identity index) ends up as
/// `create_shadow` would have made it, and the data is the source's.
#[tokio::test]
async fn shadow_keyed_after_the_copy() {
    use pg_rekey::ddl::{create_shadow_for_copy, key_after_copy, post_copy};
    use pg_rekey::plan::catalog::{load_parent, load_table};

    let db = TestDb::new().await;
    let admin = db.client().await;
    admin
        .batch_execute(
            "CREATE TABLE users (id bigint PRIMARY KEY, uuid_id uuid UNIQUE NOT NULL DEFAULT gen_random_uuid());
             INSERT INTO users (id) SELECT generate_series(1, 50);
             CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint REFERENCES users(id), note text);
             INSERT INTO orders SELECT g, CASE WHEN g % 9 = 0 THEN NULL ELSE g % 50 + 1 END, 'n' || g
               FROM generate_series(1, 1000) g;
             CREATE INDEX orders_user ON orders (user_id);
             ALTER TABLE orders CLUSTER ON orders_pkey;
             CREATE TABLE tags (code text NOT NULL, owner_id int4 REFERENCES users(id));
             CREATE UNIQUE INDEX tags_code ON tags (code);
             ALTER TABLE tags REPLICA IDENTITY USING INDEX tags_code;
             INSERT INTO tags SELECT 't' || g, g % 50 + 1 FROM generate_series(1, 300) g;",
        )
        .await
        .unwrap();
    let parent = load_parent(&admin, &QualifiedName::new("public", "users"), "uuid_id")
        .await
        .unwrap();
    let expected_key = [
        ("orders", "SELECT conname::text FROM pg_constraint WHERE contype = 'p' AND conrelid = '_rekey_new_orders'::regclass"),
        ("tags", "SELECT indexrelid::regclass::text FROM pg_index WHERE indisreplident AND indisunique AND indrelid = '_rekey_new_tags'::regclass"),
    ];
    for (name, key_query) in expected_key {
        let detail = load_table(&admin, &QualifiedName::new("public", name), &parent)
            .await
            .unwrap();
        let shadow = detail.spec.shadow.quoted();
        for stmt in create_shadow_for_copy(&detail, &parent) {
            admin.batch_execute(&stmt).await.unwrap();
        }
        let indexes = count(
            &admin,
            &format!("SELECT count(*) FROM pg_index WHERE indrelid = '{shadow}'::regclass"),
        )
        .await;
        assert_eq!(indexes, 0, "{name}: no index during the copy");

        let source = db.client().await;
        source
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .unwrap();
        let target = db.client().await;
        let map = IdMap::load(&source, &parent).await.unwrap();
        let rows = copy_table(&source, &target, &detail.spec, &map, &Progress::new())
            .await
            .unwrap();
        source.batch_execute("COMMIT").await.unwrap();
        for stmt in key_after_copy(&detail)
            .into_iter()
            .chain(post_copy(&detail))
        {
            admin.batch_execute(&stmt).await.unwrap();
        }

        let key: String = admin.query_one(key_query, &[]).await.unwrap().get(0);
        assert_eq!(
            key,
            format!(
                "_rekey_new_{}",
                if name == "orders" {
                    "orders_pkey"
                } else {
                    "tags_code"
                }
            )
        );
        let translated = if name == "orders" {
            "SELECT o.id, u.uuid_id, o.note FROM orders o LEFT JOIN users u ON u.id = o.user_id"
        } else {
            "SELECT t.code, u.uuid_id FROM tags t LEFT JOIN users u ON u.id = t.owner_id"
        };
        let diff = count(
            &admin,
            &format!(
                "SELECT count(*) FROM (({translated} EXCEPT SELECT * FROM {shadow})
                   UNION ALL (SELECT * FROM {shadow} EXCEPT {translated})) d"
            ),
        )
        .await;
        assert_eq!(diff, 0, "{name}: shadow differs from the source");
        assert_eq!(rows, if name == "orders" { 1000 } else { 300 });
    }
    // The clustered index moved with the key: CLUSTER ON needs the key built first.
    let clustered: String = admin
        .query_one(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indisclustered AND indrelid = '_rekey_new_orders'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(clustered, "_rekey_new_orders_pkey");
}
