//! What the new table keeps from the source after a real `rewrite` and
//! `cutover`, read back from the catalogs: per-column storage, compression,
//! statistics targets and options; index names however the server prints
//! their definitions; and the ACL exactly as it was, empty included.

use std::time::Duration;

use pg_rekey::cutover;
use pg_rekey::rewrite::{self, RewriteOutcome};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::rewrite::wait_phase;
use crate::support::TestDb;

/// `users` (the parent, uuid column `uuid_id`) and `docs` referencing it,
/// with 20 users and 50 documents; then `extra` SQL on top.
async fn schema(c: &Client, extra: &str) {
    c.batch_execute(
        "CREATE TABLE users (id bigserial PRIMARY KEY,
                             uuid_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid());
         INSERT INTO users SELECT FROM generate_series(1, 20);
         CREATE TABLE docs (id bigserial PRIMARY KEY,
                            user_id bigint NOT NULL REFERENCES users(id),
                            body text,
                            status varchar(20) NOT NULL DEFAULT 'new',
                            note text);
         INSERT INTO docs (user_id, body, status)
              SELECT 1 + g % 20, repeat('x', 100),
                     CASE WHEN g % 3 = 0 THEN 'in_progress' ELSE 'done' END
                FROM generate_series(1, 50) g;",
    )
    .await
    .expect("schema");
    c.batch_execute(extra).await.expect("extra schema");
}

/// Rewrite `docs`, wait until it streams, cut it over, and wait for the
/// rewrite to end.
async fn rewrite_and_cut_over(db: &TestDb, c: &Client) {
    let (_stop, rx) = watch::channel(false);
    let cfg = crate::rewrite::example_config(db, &["docs"]);
    let job = tokio::spawn(async move {
        rewrite::run(&cfg, rx, pg_rekey::progress::JobProgress::new()).await
    });
    wait_phase(c, &["docs"], "streaming").await;
    let report = cutover::run(&crate::cutover::cutover_cfg(db, &["docs"]))
        .await
        .unwrap_or_else(|e| panic!("cutover: {}", pg_rekey::error::chain(&e)));
    assert!(report.swapped, "not swapped: {:?}", report.reason);
    let outcome = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .expect("the rewrite ends after the cutover")
        .expect("no panic")
        .expect("rewrite succeeded");
    assert_eq!(outcome, RewriteOutcome::CutOver);
}

async fn strings(c: &Client, sql: &str, rel: &str) -> Vec<String> {
    c.query(sql, &[&rel])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

const COLUMN_SETTINGS: &str = "
SELECT pg_catalog.concat_ws(' ', a.attname, a.attstorage,
         'compression=' || coalesce(pg_catalog.to_jsonb(a) ->> 'attcompression', ''),
         'statistics=' || coalesce(pg_catalog.to_jsonb(a) ->> 'attstattarget', '-1'),
         -- Options in the reserved pg_ namespace are the server's own (a
         -- build of 15.20 stamps each column with pg_attver=<n> per table).
         'options=' || coalesce((SELECT pg_catalog.array_agg(o ORDER BY n)
                                   FROM pg_catalog.unnest(a.attoptions) WITH ORDINALITY AS u(o, n)
                                  WHERE o NOT LIKE 'pg\\_%')::text, ''))
  FROM pg_catalog.pg_attribute a
 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_storage_compression_statistics_and_options_survive_the_cutover() {
    let db = TestDb::new().await;
    let c = db.client().await;
    schema(
        &c,
        "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         ALTER TABLE docs ALTER COLUMN body SET COMPRESSION pglz;
         ALTER TABLE docs ALTER COLUMN body SET STATISTICS 500;
         ALTER TABLE docs ALTER COLUMN note SET STORAGE MAIN;
         ALTER TABLE docs ALTER COLUMN user_id SET STATISTICS 250;
         ALTER TABLE docs ALTER COLUMN user_id SET (n_distinct = 100);
         ALTER TABLE docs ALTER COLUMN status SET (n_distinct = -0.5, n_distinct_inherited = 7);",
    )
    .await;
    let before = strings(&c, COLUMN_SETTINGS, "public.docs").await;
    assert!(
        before.iter().any(|s| s.starts_with("body e compression=p")),
        "{before:?}"
    );
    rewrite_and_cut_over(&db, &c).await;
    let after = strings(&c, COLUMN_SETTINGS, "public.docs").await;
    // user_id is uuid now, but bigint and uuid are both PLAIN with no
    // compression: every line must be the same.
    assert_eq!(after, before, "column settings of the new table");
    let old = strings(&c, COLUMN_SETTINGS, "public._rekey_old_docs").await;
    assert_eq!(old, before, "the old table is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_names_follow_the_index_they_were_built_from_not_its_printed_text() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // The CMS case: PostgreSQL prints this predicate differently once it is
    // re-parsed from its own text (the casts inside ANY (ARRAY[…]) move), so
    // the shadow's index never prints like the source's. Plus two indexes
    // with one definition, which only their origin tells apart.
    schema(
        &c,
        "CREATE UNIQUE INDEX unique_in_progress_workflow ON docs (user_id)
              WHERE status IN ('in_progress', 'pending');
         CREATE INDEX docs_status_a ON docs (status);
         CREATE INDEX docs_status_b ON docs (status);
         COMMENT ON INDEX docs_status_b IS 'the second one';
         CREATE INDEX docs_lower_status ON docs (lower(status::text)) WHERE status::text = ANY (ARRAY['x', 'y']);",
    )
    .await;
    let def: String = c
        .query_one(
            "SELECT pg_get_indexdef('unique_in_progress_workflow'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(def.contains("::text[]"), "{def}");
    rewrite_and_cut_over(&db, &c).await;

    const INDEXES: &str = "
SELECT i.relname::text || coalesce(' -- ' || pg_catalog.obj_description(i.oid, 'pg_class'), '')
  FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
 WHERE x.indrelid = $1::text::regclass ORDER BY 1";
    let new = strings(&c, INDEXES, "public.docs").await;
    assert_eq!(
        new,
        vec![
            "docs_lower_status",
            "docs_pkey",
            "docs_status_a",
            "docs_status_b -- the second one",
            "unique_in_progress_workflow",
        ],
        "the new table has every original index name"
    );
    let old = strings(&c, INDEXES, "public._rekey_old_docs").await;
    assert_eq!(
        old,
        vec![
            "_rekey_old_docs_lower_status",
            "_rekey_old_docs_pkey",
            "_rekey_old_docs_status_a",
            "_rekey_old_docs_status_b -- the second one",
            "_rekey_old_unique_in_progress_workflow",
        ]
    );
    // The partial unique index still does its job under its own name.
    let err = c
        .batch_execute(
            "INSERT INTO docs (user_id, status)
             SELECT user_id, 'pending' FROM docs WHERE status = 'in_progress' LIMIT 1",
        )
        .await
        .expect_err("a second in-progress row for one user is refused");
    let msg = err.as_db_error().map(|d| d.message().to_string());
    assert!(
        msg.as_deref()
            .is_some_and(|m| m.contains("unique_in_progress_workflow")),
        "{msg:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_acl_stays_empty_and_column_acls_are_carried_exactly() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let reader = format!("{}_reader", db.name);
    schema(
        &c,
        &format!(
            "CREATE ROLE {reader};
             GRANT SELECT (id, status) ON docs TO {reader};
             GRANT UPDATE (status) ON docs TO {reader} WITH GRANT OPTION;"
        ),
    )
    .await;
    const ACLS: &str = "
SELECT 'table ' || coalesce(c.relacl::text, 'NULL') FROM pg_catalog.pg_class c WHERE c.oid = $1::text::regclass
UNION ALL
(SELECT a.attname || ' ' || coalesce(a.attacl::text, 'NULL')
   FROM pg_catalog.pg_attribute a
  WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
  ORDER BY a.attnum)";
    let before = strings(&c, ACLS, "public.docs").await;
    assert_eq!(before[0], "table NULL", "{before:?}");
    rewrite_and_cut_over(&db, &c).await;
    let after = strings(&c, ACLS, "public.docs").await;
    assert_eq!(after, before, "ACLs of the new table");
    // The reader still reads what it could, and only that.
    c.batch_execute(&format!("SET ROLE {reader}"))
        .await
        .unwrap();
    let ok = c.query("SELECT id, status FROM docs LIMIT 1", &[]).await;
    let refused = c.query("SELECT body FROM docs LIMIT 1", &[]).await;
    c.batch_execute("RESET ROLE").await.unwrap();
    assert!(ok.is_ok(), "{ok:?}");
    assert!(refused.is_err());
}
