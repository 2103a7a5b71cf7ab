//! Set-based apply ([`pg_rekey::apply::batch`]): runs of changes on the
//! same keys — inserts, updates with and without unchanged TOAST values,
//! deletes, re-inserts, key changes, reference changes, a parent's uuid
//! changing in between — applied through a window of set statements leave
//! the shadow equal to the source, row for row.

use pg_rekey::pg::QualifiedName;
use pg_rekey::rewrite::{self, RewriteConfig};
use tokio::sync::watch;

use crate::rewrite::{catch_up, wait_phase};
use crate::support::{compare_translated, TestDb};

const SCHEMA: &str = "
CREATE TABLE users (id bigserial PRIMARY KEY, uuid_id uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE, email text);
CREATE TABLE docs (
    id bigint PRIMARY KEY,
    owner_id bigint REFERENCES users (id),
    n integer NOT NULL DEFAULT 0,
    body text,
    note text
);
-- Out of line and uncompressed: an update that leaves it alone streams it as unchanged TOAST.
ALTER TABLE docs ALTER body SET STORAGE EXTERNAL;
-- The reference is part of the key: rows are found by a translated uuid.
CREATE TABLE shares (
    doc_id bigint NOT NULL,
    user_id bigint NOT NULL REFERENCES users (id),
    level integer NOT NULL,
    PRIMARY KEY (doc_id, user_id)
);
INSERT INTO users (email) SELECT 'u' || g FROM generate_series(1, 50) g;
INSERT INTO docs (id, owner_id, n, body, note)
    SELECT g, 1 + g % 50, 0, repeat(md5(g::text), 200), 'seed' FROM generate_series(1, 100) g;
INSERT INTO shares SELECT g, 1 + g % 50, 1 FROM generate_series(1, 100) g;
";

/// Many changes per key in one transaction, in an order where each step
/// depends on the one before on the same row.
const MIXED: &str = "
BEGIN;
-- Updates leaving the TOASTed body alone, several per row.
UPDATE docs SET n = n + 1 WHERE id <= 80;
UPDATE docs SET n = n * 10, note = 'twice' WHERE id % 2 = 0;
-- A new body for some: the same run now mixes column sets.
UPDATE docs SET body = repeat('new' || id, 900) WHERE id % 5 = 0;
UPDATE docs SET n = n + 3 WHERE id % 3 = 0;
-- Delete and insert the same keys again, then update them.
DELETE FROM docs WHERE id % 7 = 0;
INSERT INTO docs (id, owner_id, n, body, note)
    SELECT g, 1 + (g * 3) % 50, 100, repeat('again' || g, 600), 'reborn' FROM generate_series(7, 100, 7) g;
UPDATE docs SET n = n + 1000 WHERE id % 7 = 0;
-- Key changes: a row moves to a new key, another takes the old one.
UPDATE docs SET id = id + 1000 WHERE id BETWEEN 41 AND 45;
INSERT INTO docs (id, owner_id, n, body, note)
    SELECT g, 2, -1, repeat('x', 3000), 'took the key' FROM generate_series(41, 43) g;
UPDATE docs SET n = n + 5 WHERE id BETWEEN 1041 AND 1045 OR id BETWEEN 41 AND 43;
-- References change, shares keyed by a reference change too.
UPDATE docs SET owner_id = 1 + (id * 7) % 50 WHERE id % 4 = 1;
UPDATE shares SET level = level + 1 WHERE doc_id <= 60;
DELETE FROM shares WHERE doc_id % 6 = 0;
INSERT INTO shares SELECT g, 1 + (g + 1) % 50, 9 FROM generate_series(6, 96, 6) g;
UPDATE shares SET user_id = 1 + (user_id + 5) % 50 WHERE doc_id % 10 = 3;
UPDATE shares SET level = level * 2 WHERE doc_id % 10 = 3;
COMMIT;
BEGIN;
-- Rows written in this window, then their parent's uuid changes, then more.
UPDATE docs SET n = n + 1, owner_id = 5 WHERE id <= 30;
UPDATE users SET uuid_id = gen_random_uuid() WHERE id = 5;
UPDATE docs SET n = n + 1 WHERE owner_id = 5;
INSERT INTO shares VALUES (500, 5, 1);
UPDATE users SET uuid_id = gen_random_uuid() WHERE id = 5;
UPDATE shares SET level = 2 WHERE doc_id = 500;
COMMIT;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_changes_on_the_same_keys_leave_the_shadow_equal_to_the_source() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.unwrap();
    let tables = ["docs", "shares"];
    let cfg = RewriteConfig::new(
        db.spec.clone(),
        QualifiedName::new("public", "users"),
        "uuid_id",
        tables
            .iter()
            .map(|t| QualifiedName::new("public", *t))
            .collect(),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let job = tokio::spawn(async move {
        rewrite::run(&cfg, stop_rx, pg_rekey::progress::JobProgress::new()).await
    });
    wait_phase(&c, &tables, "streaming").await;
    catch_up(&c).await;

    c.batch_execute(MIXED).await.unwrap();
    // Many small transactions on few keys, each a run across transactions.
    for round in 0..20 {
        c.batch_execute(&format!(
            "BEGIN;
             UPDATE docs SET n = n + {round} WHERE id % 20 = {m};
             DELETE FROM docs WHERE id = {d};
             INSERT INTO docs (id, owner_id, n, body, note) VALUES ({d}, {o}, {round}, NULL, 'r{round}');
             UPDATE docs SET note = note || '+' WHERE id = {d};
             UPDATE shares SET level = level + 1 WHERE doc_id % 20 = {m};
             COMMIT;",
            m = round % 20,
            d = 200 + round % 3,
            o = 1 + round % 50,
        ))
        .await
        .unwrap();
    }
    catch_up(&c).await;
    assert!(!job.is_finished(), "the job stopped early");

    for (table, refs) in [("docs", &["owner_id"][..]), ("shares", &["user_id"][..])] {
        let shadow = format!("_rekey_new_{table}");
        let (missing, extra) =
            compare_translated(&c, table, &shadow, refs, "users", "id", "uuid_id").await;
        assert_eq!(
            (missing, extra),
            (0, 0),
            "{table}: shadow differs from source"
        );
    }
    let rows: i64 = c
        .query_one("SELECT count(*) FROM _rekey_new_docs WHERE n > 0", &[])
        .await
        .unwrap()
        .get(0);
    assert!(rows > 50, "the workload changed the rows ({rows})");
    stop_tx.send(true).unwrap();
    job.await.unwrap().unwrap();
}
