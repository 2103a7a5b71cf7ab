//! plan → rewrite → cutover as a role that is not superuser, as on managed
//! services: LOGIN REPLICATION, owner of the tables, CREATE on the database
//! (for the `pgrekey` schema) and on the tables' schema (for the shadows),
//! and on 15+ `GRANT SET ON PARAMETER session_replication_role` (plan
//! reports its absence as a blocker first). On 14 that grant does not
//! exist: plan says so, and the rewrite refuses before creating anything.

use std::time::Duration;

use pg_rekey::rewrite::{self, RewriteOutcome};
use pg_rekey::workload;
use tokio::sync::watch;

use crate::support::{self, TestDb};

const ROLE: &str = "rekey_owner";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_rewrite_cutover_as_a_non_superuser() {
    let admin_db = TestDb::new().await;
    let admin = admin_db.client().await;
    static ROLE_MADE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ROLE_MADE
        .get_or_init(|| async {
            admin
                .batch_execute(&format!(
                    "DO $$ BEGIN
                       IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
                         CREATE ROLE {ROLE} LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE;
                       END IF;
                     END $$"
                ))
                .await
                .unwrap();
        })
        .await;
    let major: i32 = admin
        .query_one(
            "SELECT current_setting('server_version_num')::int / 10000",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // Exactly what the README lists.
    let grants = format!(
        "GRANT CREATE ON DATABASE {db} TO {ROLE}; GRANT CREATE ON SCHEMA public TO {ROLE};",
        db = admin_db.name
    );
    admin.batch_execute(&grants).await.unwrap();

    let db = TestDb {
        spec: admin_db.spec.with_user(ROLE, None),
        name: admin_db.name.clone(),
    };
    let c = db.client().await;
    let is_super: bool = c
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!is_super);
    // The role creates, and so owns, the tables.
    workload::create_schema(&c).await.unwrap();
    workload::seed(&c, 50, 500).await.unwrap();
    let tables = ["sessions", "api_access_tokens"];

    let plan = || async {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pg-rekey"))
            .args(["plan", "--dsn", &db.spec.to_dsn(), "--parent", "users"])
            .args([
                "--uuid-column",
                "uuid_id",
                "--table",
                "sessions",
                "--table",
                "api_access_tokens",
            ])
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // Without the right to set session_replication_role, plan says so (a
    // rewrite would otherwise copy everything, then stop at the stream).
    let (code, text) = plan().await;
    assert_eq!(
        code,
        Some(1),
        "plan as {ROLE} without the parameter: {text}"
    );
    let fix = if major >= 15 {
        "GRANT SET ON PARAMETER session_replication_role TO \"rekey_owner\""
    } else {
        "on PostgreSQL 14 only a superuser may set it"
    };
    assert!(
        text.contains("may not set session_replication_role") && text.contains(fix),
        "{text}"
    );
    if major >= 15 {
        admin
            .batch_execute(&format!(
                "GRANT SET ON PARAMETER session_replication_role TO {ROLE};"
            ))
            .await
            .unwrap();
        let (code, text) = plan().await;
        assert_eq!(code, Some(0), "plan as {ROLE} found blockers:\n{text}");
    }

    let (stop, rx) = watch::channel(false);
    let cfg = crate::rewrite::example_config(&db, &tables);
    let job = tokio::spawn(async move {
        rewrite::run(&cfg, rx, pg_rekey::progress::JobProgress::new()).await
    });
    if major < 15 {
        // No way to grant session_replication_role: refused up front, with
        // nothing created.
        let e = tokio::time::timeout(Duration::from_secs(60), job)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, pg_rekey::Error::Blocked(_)), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("session_replication_role") && e.contains("superuser"),
            "{e}"
        );
        assert_eq!(support::slots_in_database(&c).await, 0);
        return;
    }
    crate::rewrite::wait_phase(&c, &tables, "streaming").await;
    let writes =
        "INSERT INTO sessions (user_id, token) SELECT id, 'lp-' || id FROM users WHERE id <= 5";
    c.batch_execute(writes).await.unwrap();
    crate::rewrite::catch_up(&c).await;
    let report = pg_rekey::cutover::run(&crate::cutover::cutover_cfg(&db, &tables))
        .await
        .unwrap();
    assert!(report.swapped, "{report:?}");
    let outcome = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::CutOver);
    drop(stop);
    // The swapped table is the role's, with uuid references, rows included.
    let (owner, typ, n): (String, String, i64) = {
        let r = c
            .query_one(
                "SELECT pg_get_userbyid(c.relowner), format_type(a.atttypid, a.atttypmod),
                        (SELECT count(*) FROM sessions WHERE token LIKE 'lp-%')
                   FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
                  WHERE c.oid = 'sessions'::regclass AND a.attname = 'user_id'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((owner.as_str(), typ.as_str(), n), (ROLE, "uuid", 5));
    assert_eq!(support::slots_in_database(&c).await, 0);
}
