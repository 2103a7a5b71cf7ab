//! The harness itself: a real server with logical decoding, per-test databases.

use crate::support::TestDb;

#[tokio::test]
async fn server_has_logical_wal_and_fresh_databases() {
    let a = TestDb::new().await;
    let b = TestDb::new().await;
    assert_ne!(a.name, b.name);
    let c = a.client().await;
    let wal: String = c.query_one("SHOW wal_level", &[]).await.unwrap().get(0);
    assert_eq!(wal, "logical");
    let db: String = c
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(db, a.name);
    let tables: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "a fresh database is empty");
}
