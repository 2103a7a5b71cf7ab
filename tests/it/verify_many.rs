//! `verify` before cutover on many tables under an ORM-like workload: every
//! transaction writes several of the tables in a random order. At the
//! defaults it must reach its consistent points and find the tables equal.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pg_rekey::pg::QualifiedName;
use pg_rekey::rewrite::{self, RewriteConfig, RewriteOutcome};
use pg_rekey::verify::{self, RunOptions};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::rewrite::wait_phase;
use crate::support::{wait_for, TestDb};

/// Tables in the schema (the ORM schema had 17).
const TABLES: usize = 17;

fn table(i: usize) -> String {
    format!("t{i:02}")
}

/// A small deterministic generator (xorshift), one per writer.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// One ORM-style transaction: 2–5 of the tables in a random order, an
/// insert and an update in each, one statement per round trip.
async fn orm_transaction(c: &Client, rng: &mut Rng) -> Result<(), tokio_postgres::Error> {
    c.batch_execute("BEGIN").await?;
    let n = 2 + rng.next(4);
    for _ in 0..n {
        let t = table(rng.next(TABLES as u64) as usize);
        let u = 1 + rng.next(100);
        c.batch_execute(&format!("INSERT INTO {t} (user_id, v) VALUES ({u}, 0)"))
            .await?;
        let id = 1 + rng.next(200);
        c.batch_execute(&format!(
            "UPDATE {t} SET v = v + 1, user_id = {u} WHERE id = {id}"
        ))
        .await?;
    }
    c.batch_execute("COMMIT").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reaches_consistent_points_on_17_tables_under_orm_writes() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut ddl = String::from(
        "CREATE TABLE users (id bigserial PRIMARY KEY, uuid_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid());
         INSERT INTO users SELECT FROM generate_series(1, 100);",
    );
    for i in 0..TABLES {
        let t = table(i);
        ddl.push_str(&format!(
            "CREATE TABLE {t} (id bigserial PRIMARY KEY, user_id bigint REFERENCES users(id), v int NOT NULL);
             INSERT INTO {t} (user_id, v) SELECT g % 100 + 1, 0 FROM generate_series(1, 300) g;"
        ));
    }
    c.batch_execute(&ddl).await.unwrap();
    let names: Vec<QualifiedName> = (0..TABLES)
        .map(|i| QualifiedName::new("public", table(i)))
        .collect();
    let cfg = RewriteConfig::new(
        db.spec.clone(),
        QualifiedName::new("public", "users"),
        "uuid_id",
        names.clone(),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let job = tokio::spawn(async move {
        rewrite::run(&cfg, stop_rx, pg_rekey::progress::JobProgress::new()).await
    });
    let all: Vec<String> = (0..TABLES).map(table).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    wait_phase(&c, &all, "streaming").await;

    // Four writers, as fast as they go (each statement one round trip).
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let s = db.client().await;
        let (stop, commits, failures) = (stop.clone(), commits.clone(), failures.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w + 1));
            while !stop.load(Ordering::Relaxed) {
                match orm_transaction(&s, &mut rng).await {
                    Ok(()) => commits.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        // Writers may deadlock among themselves; that is the workload's business.
                        let _ = s.batch_execute("ROLLBACK").await;
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    wait_for("writes", Duration::from_secs(60), || {
        let commits = commits.clone();
        async move { (commits.load(Ordering::Relaxed) > 200).then_some(()) }
    })
    .await;

    // At the defaults, under writes as fast as they go: before lock sets,
    // every attempt to lock the 17 tables at once timed out (an application
    // transaction holding one table waits for the verify's lock on another).
    for lock_set in [RunOptions::default().lock_set] {
        let before = commits.load(Ordering::Relaxed);
        let opts = RunOptions {
            lock_set,
            ..RunOptions::default()
        };
        let report = verify::run(&db.spec, &names, &opts)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "verify (lock sets of {lock_set}) under the workload: {}",
                    pg_rekey::error::chain(&e)
                )
            });
        let during = commits.load(Ordering::Relaxed) - before;
        eprintln!(
            "verify of {TABLES} tables under load, lock sets of {lock_set}: {:?}; {} ms in all; {during} writer commits during it",
            report.consistent_point, report.elapsed_ms,
        );
        assert!(report.equal, "{report}");
        assert_eq!(report.tables.len(), TABLES);
        assert!(report.tables.iter().all(|t| t.verdict.left_rows >= 300));
        let point = report.consistent_point.expect("consistent points taken");
        assert!(point.lock_sets as usize >= TABLES.div_ceil(lock_set));
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    eprintln!(
        "writers: {} commits, {} failures",
        commits.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed)
    );

    // All tables in one lock set, one of them held by an open writer: the
    // set is halved on each failure until only that table is left, and the
    // error names it alone.
    let blocker = db.client().await;
    blocker
        .batch_execute("BEGIN; UPDATE t05 SET v = v WHERE id = 1")
        .await
        .unwrap();
    let together = RunOptions {
        lock_set: TABLES,
        lock_timeout: Duration::from_millis(100),
        attempts: 2,
        backoff: Duration::from_millis(10),
        ..RunOptions::default()
    };
    let err = verify::run(&db.spec, &names, &together)
        .await
        .expect_err("the open writer blocks t05");
    let text = err.to_string();
    assert!(
        text.starts_with("cannot verify public.t05: no consistent point after 2 attempts"),
        "{text}"
    );
    blocker.batch_execute("COMMIT").await.unwrap();
    let report = verify::run(&db.spec, &names, &together).await.unwrap();
    assert!(report.equal, "{report}");
    assert_eq!(report.consistent_point.map(|p| p.lock_sets), Some(1));

    stop_tx.send(true).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::Aborted);
}
