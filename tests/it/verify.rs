//! verify: hand-built integer tables and uuid twins on the real server.
//!
//! Each test builds a `users` parent, a source with integer references and a
//! shadow filled by translating the source in SQL (what copy + apply would
//! produce), then tampers with one side behind the tool's back and checks that
//! the verdict names exactly the rows and columns tampered with.

use std::time::Instant;

use pg_rekey::pg::QualifiedName;
use pg_rekey::plan::model::{ColumnSpec, IntKind, ParentSpec, TableSpec};
use pg_rekey::verify::{verify_table, RowDiffKind, TableVerdict, VerifyError, VerifyOptions};
use tokio_postgres::Client;

use crate::support::TestDb;

const USERS: &str = "
    CREATE TABLE users (id bigint PRIMARY KEY, uuid_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(), name text);
    INSERT INTO users (id, name) SELECT g, 'user ' || g FROM generate_series(1, 50) g;";

fn parent() -> ParentSpec {
    ParentSpec {
        table: QualifiedName::new("public", "users"),
        oid: 0,
        key_column: "id".into(),
        key_kind: IntKind::Int8,
        uuid_column: "uuid_id".into(),
    }
}

/// The table model of `left` read from the catalogs (what planning builds),
/// with the named columns as references.
async fn spec_of(
    c: &Client,
    left: &QualifiedName,
    right: &QualifiedName,
    refs: &[&str],
) -> TableSpec {
    let rel = left.quoted();
    let cols = c
        .query(
            "SELECT a.attname::text, a.attnum, format_type(a.atttypid, a.atttypmod), a.atttypid::oid::int8, \
                    a.attnotnull, a.attgenerated = 's'
               FROM pg_attribute a
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&rel],
        )
        .await
        .unwrap();
    let columns: Vec<ColumnSpec> = cols
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            let oid = r.get::<_, i64>(3) as u32;
            ColumnSpec {
                reference: if refs.contains(&name.as_str()) {
                    Some(IntKind::from_oid(oid).expect("reference columns are integers"))
                } else {
                    None
                },
                name,
                attnum: r.get(1),
                type_sql: r.get(2),
                type_oid: oid,
                not_null: r.get(4),
                generated: r.get(5),
                identity: None,
            }
        })
        .collect();
    let key_attnums: Vec<i16> = c
        .query(
            "SELECT k.attnum FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
              WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY k.n",
            &[&rel],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let key = key_attnums
        .iter()
        .map(|a| columns.iter().position(|c| c.attnum == *a).unwrap())
        .collect();
    TableSpec {
        source: left.clone(),
        oid: 0,
        shadow: right.clone(),
        columns,
        key,
    }
}

/// Run verify in a REPEATABLE READ transaction, as `pg-rekey verify` does.
async fn run(c: &Client, spec: &TableSpec, opts: &VerifyOptions) -> TableVerdict {
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let v = verify_table(c, spec, &parent(), &spec.source, &spec.shadow, opts)
        .await
        .unwrap_or_else(|e| panic!("verify failed: {}", pg_rekey::error::chain(&e)));
    c.batch_execute("COMMIT").await.unwrap();
    v
}

fn key_of(v: &TableVerdict, i: usize) -> Vec<String> {
    v.rows[i]
        .key
        .iter()
        .map(|k| format!("{}={}", k.column, k.value))
        .collect()
}

fn changed(cols: &[&str]) -> RowDiffKind {
    RowDiffKind::Changed {
        columns: cols.iter().map(|c| c.to_string()).collect(),
    }
}

/// `orders` with a nullable reference, a jsonb, a numeric and a generated
/// column, and its shadow filled by translation. Row 7 has a NULL reference.
async fn orders(c: &Client, rows: i64) -> TableSpec {
    c.batch_execute(USERS).await.unwrap();
    c.batch_execute(&format!(
        "CREATE TABLE orders (id bigint PRIMARY KEY, user_id int4, note text, amount numeric, doc jsonb,
                              twice numeric GENERATED ALWAYS AS (amount * 2) STORED);
         INSERT INTO orders (id, user_id, note, amount, doc)
           SELECT g, 1 + g % 50, 'note ' || g, g / 4.0, jsonb_build_object('g', g) FROM generate_series(1, {rows}) g;
         UPDATE orders SET user_id = NULL WHERE id = 7;
         CREATE TABLE orders_new (id bigint PRIMARY KEY, user_id uuid, note text, amount numeric, doc jsonb,
                                  twice numeric GENERATED ALWAYS AS (amount * 2) STORED);
         INSERT INTO orders_new (id, user_id, note, amount, doc)
           SELECT o.id, u.uuid_id, o.note, o.amount, o.doc FROM orders o LEFT JOIN users u ON u.id = o.user_id;"
    ))
    .await
    .unwrap();
    spec_of(
        c,
        &QualifiedName::new("public", "orders"),
        &QualifiedName::new("public", "orders_new"),
        &["user_id"],
    )
    .await
}

#[tokio::test]
async fn equal_tables_are_equal_null_references_included() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let spec = orders(&c, 100).await;
    let v = run(&c, &spec, &VerifyOptions::default()).await;
    assert!(v.equal, "{v}");
    assert_eq!((v.left_rows, v.right_rows, v.chunks), (100, 100, 1));
    assert_eq!(v.differing_rows, 0);
    assert!(v.rows.is_empty() && v.ranges.is_empty());
    assert!(v.to_string().contains("equal, 100 rows"), "{v}");
}

#[tokio::test]
async fn rows_changed_behind_the_tools_back_are_named_with_their_columns() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let spec = orders(&c, 100).await;
    c.batch_execute(
        "UPDATE orders_new SET note = 'tampered' WHERE id = 3;
         UPDATE orders_new SET user_id = (SELECT uuid_id FROM users WHERE id = 40) WHERE id = 5;
         UPDATE orders_new SET user_id = (SELECT uuid_id FROM users WHERE id = 1) WHERE id = 7;
         UPDATE orders_new SET amount = 2.50 WHERE id = 10;  -- 10/4.0 = 2.5000…: equal value, other text
         UPDATE orders_new SET user_id = NULL, doc = '{\"g\": 0}' WHERE id = 12;",
    )
    .await
    .unwrap();
    let v = run(&c, &spec, &VerifyOptions::default()).await;
    assert!(!v.equal);
    assert_eq!(v.differing_rows, 5, "{v}");
    assert_eq!((v.left_rows, v.right_rows), (100, 100));
    let got: Vec<(Vec<String>, RowDiffKind)> = (0..v.rows.len())
        .map(|i| (key_of(&v, i), v.rows[i].kind.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (vec!["id=3".to_string()], changed(&["note"])),
            (vec!["id=5".to_string()], changed(&["user_id"])),
            (vec!["id=7".to_string()], changed(&["user_id"])),
            (vec!["id=10".to_string()], changed(&["amount"])),
            (vec!["id=12".to_string()], changed(&["user_id", "doc"])),
        ]
    );
    let text = v.to_string();
    assert!(text.contains("row (id=5): differs in user_id"), "{text}");
}

#[tokio::test]
async fn missing_and_extra_rows_are_named() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let spec = orders(&c, 100).await;
    c.batch_execute(
        "DELETE FROM orders_new WHERE id = 4;
         INSERT INTO orders_new (id, user_id, note) SELECT 1000, uuid_id, 'extra' FROM users WHERE id = 2;",
    )
    .await
    .unwrap();
    let v = run(&c, &spec, &VerifyOptions::default()).await;
    assert!(!v.equal);
    assert_eq!(
        (v.left_rows, v.right_rows, v.differing_rows),
        (100, 100, 2),
        "{v}"
    );
    assert_eq!(key_of(&v, 0), ["id=4"]);
    assert_eq!(v.rows[0].kind, RowDiffKind::Missing);
    assert_eq!(key_of(&v, 1), ["id=1000"]);
    assert_eq!(v.rows[1].kind, RowDiffKind::Extra);
    let text = v.to_string();
    assert!(
        text.contains("row (id=4): missing from public.orders_new"),
        "{text}"
    );
    assert!(
        text.contains("row (id=1000): only in public.orders_new"),
        "{text}"
    );
}

#[tokio::test]
async fn orphaned_reference_on_the_integer_side_is_a_difference() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let spec = orders(&c, 20).await;
    // Row 9 references no user; a translation that silently produced NULL
    // would make the shadow hold NULL there. Row 11 is an orphan the shadow
    // does not have at all.
    c.batch_execute(
        "UPDATE orders SET user_id = 999 WHERE id IN (9, 11);
         UPDATE orders_new SET user_id = NULL WHERE id = 9;
         DELETE FROM orders_new WHERE id = 11;",
    )
    .await
    .unwrap();
    let v = run(&c, &spec, &VerifyOptions::default()).await;
    assert!(!v.equal);
    assert_eq!(v.differing_rows, 2, "{v}");
    assert_eq!(key_of(&v, 0), ["id=9"]);
    assert_eq!(v.rows[0].kind, changed(&["user_id"]));
    assert_eq!(v.rows[0].orphaned, ["user_id"]);
    assert_eq!(key_of(&v, 1), ["id=11"]);
    assert_eq!(v.rows[1].kind, RowDiffKind::Missing);
    assert_eq!(v.rows[1].orphaned, ["user_id"]);
    assert!(
        v.to_string().contains("orphaned reference in user_id"),
        "{v}"
    );
}

#[tokio::test]
async fn a_difference_in_the_middle_chunk_names_only_that_range() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let spec = orders(&c, 30).await;
    c.batch_execute("UPDATE orders_new SET note = 'x' WHERE id = 15")
        .await
        .unwrap();
    let opts = VerifyOptions {
        chunk_rows: 10,
        ..VerifyOptions::default()
    };
    let v = run(&c, &spec, &opts).await;
    assert_eq!(
        (v.chunks, v.differing_chunks, v.differing_rows),
        (3, 1, 1),
        "{v}"
    );
    let r = &v.ranges[0];
    assert_eq!(r.after.as_ref().unwrap()[0].value, "10");
    assert_eq!(r.through.as_ref().unwrap()[0].value, "20");
    assert_eq!((r.left_rows, r.matched_rows, r.differing_rows), (10, 10, 1));
    assert_eq!(key_of(&v, 0), ["id=15"]);
    assert!(
        v.to_string().contains("keys after (id=10) through (id=20)"),
        "{v}"
    );

    // The same tables, equal again, in chunks of one row.
    c.batch_execute("UPDATE orders_new SET note = 'note 15' WHERE id = 15")
        .await
        .unwrap();
    let v = run(
        &c,
        &spec,
        &VerifyOptions {
            chunk_rows: 1,
            ..VerifyOptions::default()
        },
    )
    .await;
    assert!(v.equal, "{v}");
    assert_eq!(v.chunks, 30);
}

#[tokio::test]
async fn composite_primary_key() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(USERS).await.unwrap();
    c.batch_execute(
        "CREATE TABLE events (tenant int NOT NULL, seq int NOT NULL, at timestamptz, author_id int8,
                              PRIMARY KEY (tenant, seq));
         INSERT INTO events SELECT t, s, timestamptz '2024-01-01' + s * interval '1 hour', 1 + (t * s) % 50
           FROM generate_series(1, 3) t, generate_series(1, 20) s;
         CREATE TABLE events_new (tenant int NOT NULL, seq int NOT NULL, at timestamptz, author_id uuid,
                                  PRIMARY KEY (tenant, seq));
         INSERT INTO events_new SELECT e.tenant, e.seq, e.at, u.uuid_id FROM events e LEFT JOIN users u ON u.id = e.author_id;
         UPDATE events_new SET at = at + interval '1 microsecond' WHERE tenant = 2 AND seq = 7;
         DELETE FROM events_new WHERE tenant = 3 AND seq = 20;",
    )
    .await
    .unwrap();
    let spec = spec_of(
        &c,
        &QualifiedName::new("public", "events"),
        &QualifiedName::new("public", "events_new"),
        &["author_id"],
    )
    .await;
    let v = run(
        &c,
        &spec,
        &VerifyOptions {
            chunk_rows: 7,
            ..VerifyOptions::default()
        },
    )
    .await;
    assert_eq!(
        (v.left_rows, v.right_rows, v.differing_rows),
        (60, 59, 2),
        "{v}"
    );
    assert_eq!(v.chunks, 9);
    assert_eq!(key_of(&v, 0), ["tenant=2", "seq=7"]);
    assert_eq!(v.rows[0].kind, changed(&["at"]));
    assert_eq!(key_of(&v, 1), ["tenant=3", "seq=20"]);
    assert_eq!(v.rows[1].kind, RowDiffKind::Missing);
    // The chunk boundaries are composite keys.
    assert_eq!(v.ranges[0].through.as_ref().unwrap().len(), 2);
}

/// The key holds a reference: the two sides order their keys differently
/// (integer vs uuid), and the comparison must not care.
#[tokio::test]
async fn reference_column_inside_the_primary_key() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(USERS).await.unwrap();
    c.batch_execute(
        "CREATE TABLE user_roles (user_id int4 NOT NULL, role_id int4 NOT NULL, since date,
                                  PRIMARY KEY (user_id, role_id));
         INSERT INTO user_roles SELECT u, r, date '2020-01-01' + u + r FROM generate_series(1, 50) u, generate_series(1, 4) r;
         CREATE TABLE user_roles_new (user_id uuid NOT NULL, role_id int4 NOT NULL, since date,
                                      PRIMARY KEY (user_id, role_id));
         INSERT INTO user_roles_new SELECT u.uuid_id, r.role_id, r.since FROM user_roles r JOIN users u ON u.id = r.user_id;",
    )
    .await
    .unwrap();
    let spec = spec_of(
        &c,
        &QualifiedName::new("public", "user_roles"),
        &QualifiedName::new("public", "user_roles_new"),
        &["user_id"],
    )
    .await;
    let opts = VerifyOptions {
        chunk_rows: 16,
        ..VerifyOptions::default()
    };
    let v = run(&c, &spec, &opts).await;
    assert!(v.equal, "{v}");
    assert_eq!((v.left_rows, v.right_rows, v.chunks), (200, 200, 13));

    c.batch_execute(
        "UPDATE user_roles_new SET since = NULL
           WHERE user_id = (SELECT uuid_id FROM users WHERE id = 20) AND role_id = 3;
         DELETE FROM user_roles_new WHERE user_id = (SELECT uuid_id FROM users WHERE id = 33) AND role_id = 1;
         -- a role user 10 does not have on the integer side
         INSERT INTO user_roles_new SELECT uuid_id, 9, NULL FROM users WHERE id = 10;
         -- a key uuid that is no user at all
         INSERT INTO user_roles_new VALUES ('00000000-0000-0000-0000-000000000001', 1, NULL);",
    )
    .await
    .unwrap();
    let v = run(&c, &spec, &opts).await;
    assert!(!v.equal);
    assert_eq!(
        (v.left_rows, v.right_rows, v.differing_rows),
        (200, 201, 4),
        "{v}"
    );
    assert_eq!(v.differing_chunks, 2);
    assert_eq!(key_of(&v, 0), ["user_id=20", "role_id=3"]);
    assert_eq!(v.rows[0].kind, changed(&["since"]));
    assert_eq!(key_of(&v, 1), ["user_id=33", "role_id=1"]);
    assert_eq!(v.rows[1].kind, RowDiffKind::Missing);
    let mut extras: Vec<Vec<String>> = vec![key_of(&v, 2), key_of(&v, 3)];
    extras.sort();
    assert_eq!(
        extras,
        vec![
            vec![
                "user_id=00000000-0000-0000-0000-000000000001".to_string(),
                "role_id=1".to_string()
            ],
            vec!["user_id=10".to_string(), "role_id=9".to_string()],
        ]
    );
    assert!(v.rows[2..].iter().all(|r| r.kind == RowDiffKind::Extra));
}

#[tokio::test]
async fn identifiers_needing_quotes() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(USERS).await.unwrap();
    c.batch_execute(
        r#"CREATE SCHEMA "My Schema";
           CREATE TABLE "My Schema"."Order ""Items""" ("Id" bigint, "select" text, "User Id" int4,
                                                       PRIMARY KEY ("Id", "select"));
           INSERT INTO "My Schema"."Order ""Items""" SELECT g, 'v' || g, g FROM generate_series(1, 25) g;
           CREATE TABLE "My Schema"."Order ""Items"" new" ("Id" bigint, "select" text, "User Id" uuid,
                                                           PRIMARY KEY ("Id", "select"));
           INSERT INTO "My Schema"."Order ""Items"" new"
             SELECT o."Id", o."select", u.uuid_id FROM "My Schema"."Order ""Items""" o JOIN users u ON u.id = o."User Id";"#,
    )
    .await
    .unwrap();
    let left = QualifiedName::new("My Schema", "Order \"Items\"");
    let right = QualifiedName::new("My Schema", "Order \"Items\" new");
    let spec = spec_of(&c, &left, &right, &["User Id"]).await;
    let opts = VerifyOptions {
        chunk_rows: 4,
        ..VerifyOptions::default()
    };
    let v = run(&c, &spec, &opts).await;
    assert!(v.equal, "{v}");
    assert_eq!(v.left_rows, 25);

    c.batch_execute(
        r#"UPDATE "My Schema"."Order ""Items"" new" SET "User Id" = (SELECT uuid_id FROM users WHERE id = 1) WHERE "Id" = 13"#,
    )
    .await
    .unwrap();
    let v = run(&c, &spec, &opts).await;
    assert_eq!(v.differing_rows, 1, "{v}");
    assert_eq!(key_of(&v, 0), ["Id=13", "select=v13"]);
    assert_eq!(v.rows[0].kind, changed(&["User Id"]));
}

#[tokio::test]
async fn refuses_to_compare_outside_a_repeatable_read_snapshot() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let spec = orders(&c, 5).await;
    let err = verify_table(
        &c,
        &spec,
        &parent(),
        &spec.source,
        &spec.shadow,
        &VerifyOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, VerifyError::NotRepeatableRead { ref isolation, .. } if isolation == "read committed"),
        "{err}"
    );
    assert!(err.to_string().contains("REPEATABLE READ"));
}

/// Throughput on a larger table: `PGREKEY_VERIFY_BENCH_ROWS=1000000 cargo test
/// --release --test it verify::throughput -- --nocapture` prints the time.
/// By default it runs on 20 000 rows so the suite stays quick.
#[tokio::test]
async fn throughput_on_a_larger_table() {
    let rows: i64 = std::env::var("PGREKEY_VERIFY_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(&format!(
        "CREATE TABLE users (id bigint PRIMARY KEY, uuid_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid());
         INSERT INTO users (id) SELECT generate_series(1, {users});
         CREATE TABLE orders (id bigint PRIMARY KEY, user_id int4, note text, amount numeric, created timestamptz);
         INSERT INTO orders SELECT g, 1 + (g::int8 * 7919) % {users}, 'note ' || g, g / 7.0, timestamptz '2024-01-01' - g * interval '1 min'
           FROM generate_series(1, {rows}) g;
         CREATE TABLE orders_new (id bigint PRIMARY KEY, user_id uuid, note text, amount numeric, created timestamptz);
         INSERT INTO orders_new SELECT o.id, u.uuid_id, o.note, o.amount, o.created FROM orders o LEFT JOIN users u ON u.id = o.user_id;
         UPDATE orders_new SET note = 'changed' WHERE id = {mid};",
        users = (rows / 10).max(1),
        mid = rows / 2,
    ))
    .await
    .unwrap();
    // As after a copy: statistics and the visibility map are fresh.
    c.batch_execute("VACUUM ANALYZE users, orders, orders_new")
        .await
        .unwrap();
    let spec = spec_of(
        &c,
        &QualifiedName::new("public", "orders"),
        &QualifiedName::new("public", "orders_new"),
        &["user_id"],
    )
    .await;
    let start = Instant::now();
    let v = run(&c, &spec, &VerifyOptions::default()).await;
    let took = start.elapsed();
    println!(
        "verify of {rows} rows in {} chunks: {:.2} s ({:.0} rows/s)",
        v.chunks,
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64()
    );
    assert_eq!(
        (v.left_rows, v.right_rows, v.differing_rows),
        (rows as u64, rows as u64, 1)
    );
    assert_eq!(key_of(&v, 0), [format!("id={}", rows / 2)]);
}
