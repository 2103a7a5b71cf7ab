//! Cutover end to end with everything that hangs off a table: a real
//! `rewrite` (shadow, slot, snapshot copy, stream/apply) under a concurrent
//! workload, then `cutover`, then proof — by catalog and by behaviour — that
//! every dependent works on the new table, and that no write was lost.
//!
//! # How "nothing lost" is checked while writers keep running
//!
//! After the swap the old table is frozen and the new one keeps changing, so
//! old and new can only agree on rows nobody touched after the swap. To know
//! which rows those are, every swapped table carries a change-log trigger
//! (`zz_log_change`, installed before the rewrite) that records the key of
//! each row written and `TG_RELID`, the OID of the relation the trigger fired
//! on. The swap carries the trigger to the new table, so a log entry with the
//! new table's OID is a change made after the swap; entries made before carry
//! the source's OID. `verify_table(old, new)` then compares the two sides, and
//! every differing row must have a key logged against the new table — a
//! pre-swap write that did not reach the shadow would show as a difference
//! with no such excuse. (Ordering by xid would not work: a writer blocked on
//! the lock may have taken its xid before the swap transaction did.)

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pg_rekey::cutover::{self, CutoverConfig};
use pg_rekey::pg::{quote_ident, QualifiedName};
use pg_rekey::plan::catalog;
use pg_rekey::rewrite::{self, RewriteConfig, RewriteOutcome};
use pg_rekey::state;
use pg_rekey::verify::{verify_table, RowDiffKind, VerifyOptions};
use pg_rekey::workload::{self, Workload, WorkloadOptions, WorkloadStats, REFERENCING_TABLES};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::rewrite::wait_phase;
use crate::support::{wait_for, TestDb};

fn rewrite_cfg(db: &TestDb, tables: &[&str]) -> RewriteConfig {
    crate::rewrite::example_config(db, tables)
}

fn cutover_cfg(db: &TestDb, tables: &[&str]) -> CutoverConfig {
    // The comparison here is done after the swap, old against new.
    let mut cfg = crate::cutover::cutover_cfg(db, tables);
    cfg.attempts = 6;
    cfg
}

/// Primary-key columns of the example tables, in index order.
fn key_of(table: &str) -> &'static [&'static str] {
    match table {
        "message_reads" => &["message_id", "reader_id"],
        _ => &["id"],
    }
}

/// The change log and its trigger on each table (see the module docs).
async fn install_change_log(c: &Client, tables: &[&str]) {
    c.batch_execute(
        r#"
        CREATE TABLE change_log (
            n bigserial PRIMARY KEY,
            relid oid NOT NULL,
            tbl text NOT NULL,
            op text NOT NULL,
            old_key text,
            new_key text
        );
        -- SECURITY DEFINER: the trigger also fires for roles without rights on the log.
        CREATE FUNCTION log_change() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, public AS $$
        DECLARE o jsonb; nw jsonb; ok text; nk text;
        BEGIN
            IF TG_OP <> 'INSERT' THEN o := to_jsonb(OLD); END IF;
            IF TG_OP <> 'DELETE' THEN nw := to_jsonb(NEW); END IF;
            FOR i IN 0 .. TG_NARGS - 1 LOOP
                IF o IS NOT NULL THEN ok := concat_ws('|', ok, o ->> TG_ARGV[i]); END IF;
                IF nw IS NOT NULL THEN nk := concat_ws('|', nk, nw ->> TG_ARGV[i]); END IF;
            END LOOP;
            INSERT INTO public.change_log (relid, tbl, op, old_key, new_key)
                 VALUES (TG_RELID, TG_TABLE_NAME, TG_OP, ok, nk);
            RETURN NULL;
        END $$;
        "#,
    )
    .await
    .expect("change log");
    for t in tables {
        let args = key_of(t)
            .iter()
            .map(|k| pg_rekey::pg::quote_literal(k))
            .collect::<Vec<_>>()
            .join(", ");
        c.batch_execute(&format!(
            "CREATE TRIGGER zz_log_change AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION log_change({args})",
            quote_ident(t)
        ))
        .await
        .expect("change-log trigger");
    }
}

/// Compare the frozen old table with the new one (pg-rekey's verify, in a
/// repeatable-read snapshot) and check that every differing row is one the
/// change log shows was written on the new table after the swap. Returns
/// `(rows compared equal, differing rows excused)`.
async fn old_matches_new_except_later_changes(c: &Client, table: &str, old: &str) -> (u64, u64) {
    let parent = catalog::load_parent(c, &QualifiedName::new("public", "users"), "uuid_id")
        .await
        .expect("parent");
    let (old_schema, old_name) = old.split_once('.').expect("qualified old name");
    let old_q = QualifiedName::new(old_schema, old_name);
    let new_q = QualifiedName::new("public", table);
    let detail = catalog::load_table(c, &old_q, &parent)
        .await
        .unwrap_or_else(|e| panic!("load {old}: {e}"));

    // Keys written on the new table (after the swap), references in integer terms.
    let uuid_to_id: HashMap<String, String> = c
        .query("SELECT uuid_id::text, id::text FROM users", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let later: HashSet<String> = c
        .query(
            "SELECT k FROM change_log, LATERAL (VALUES (old_key), (new_key)) v(k)
              WHERE relid = $1::text::regclass::oid AND k IS NOT NULL",
            &[&format!("public.{table}")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            r.get::<_, String>(0)
                .split('|')
                .map(|part| uuid_to_id.get(part).cloned().unwrap_or(part.to_string()))
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();

    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let opts = VerifyOptions {
        chunk_rows: 2_000,
        max_rows: 1_000_000,
        max_ranges: 1_000_000,
    };
    let v = verify_table(c, &detail.spec, &parent, &old_q, &new_q, &opts)
        .await
        .unwrap_or_else(|e| panic!("verify {old} vs {table}: {}", pg_rekey::error::chain(&e)));
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        v.rows.len() as u64,
        v.differing_rows,
        "{table}: every differing row is named"
    );
    let mut unexplained = Vec::new();
    for row in &v.rows {
        let key = row
            .key
            .iter()
            .map(|k| k.value.clone())
            .collect::<Vec<_>>()
            .join("|");
        if !later.contains(&key) || !row.orphaned.is_empty() {
            unexplained.push(format!("{key} {:?} orphaned={:?}", row.kind, row.orphaned));
        }
    }
    assert!(
        unexplained.is_empty(),
        "{table}: rows that differ between {old} and the new table without a write after the swap: {unexplained:?}"
    );
    let extra = v
        .rows
        .iter()
        .filter(|r| matches!(r.kind, RowDiffKind::Extra))
        .count() as u64;
    let equal = v.left_rows - (v.differing_rows - extra);
    (equal, v.differing_rows)
}

/// Count and hash of a whole table, to prove it does not change.
async fn fingerprint(c: &Client, table: &str) -> (i64, String) {
    let r = c
        .query_one(
            &format!("SELECT count(*), coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM {table} t"),
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// Everything about the relation called `name` that the swap must preserve,
/// normalised so that source and new table compare equal (no OIDs, no
/// reference column types).
async fn describe(c: &Client, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (what, sql) in [
        ("owner", "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = $1::text::regclass"),
        ("acl", "SELECT format('%s %s %s %s', pg_get_userbyid(a.grantee), pg_get_userbyid(a.grantor), a.privilege_type, a.is_grantable) FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = $1::text::regclass ORDER BY 1"),
        ("column acl", "SELECT format('%s %s %s %s', at.attname, pg_get_userbyid(a.grantee), a.privilege_type, a.is_grantable) FROM pg_attribute at, aclexplode(at.attacl) a WHERE at.attrelid = $1::text::regclass ORDER BY 1"),
        ("columns", "SELECT format('%s notnull=%s identity=%s default=%s', attname, attnotnull, attidentity, pg_get_expr(d.adbin, d.adrelid)) FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"),
        ("rls", "SELECT format('enabled=%s forced=%s replident=%s', relrowsecurity, relforcerowsecurity, relreplident) FROM pg_class WHERE oid = $1::text::regclass"),
        ("policies", "SELECT format('%s %s %s %s %s %s', policyname, permissive, roles, cmd, qual, with_check) FROM pg_policies WHERE schemaname = 'public' AND tablename = $1 ORDER BY 1"),
        ("triggers", "SELECT format('%s %s %s', tgname, tgenabled, pg_get_triggerdef(oid)) FROM pg_trigger WHERE tgrelid = $1::text::regclass AND NOT tgisinternal ORDER BY 1"),
        ("indexes", "SELECT format('%s replident=%s', indexrelid::regclass, indisreplident) FROM pg_index WHERE indrelid = $1::text::regclass ORDER BY 1"),
        ("constraints", "SELECT format('%s %s valid=%s comment=%s', conname, contype, convalidated, obj_description(oid, 'pg_constraint')) FROM pg_constraint WHERE conrelid = $1::text::regclass ORDER BY 1"),
        ("publications", "SELECT pubname::text FROM pg_publication_tables WHERE schemaname = 'public' AND tablename = $1 AND pubname NOT LIKE 'pg\\_rekey%' ORDER BY 1"),
        ("comments", "SELECT format('%s=%s', coalesce(a.attname, '<table>'), d.description) FROM pg_description d LEFT JOIN pg_attribute a ON a.attrelid = d.objoid AND a.attnum = d.objsubid WHERE d.objoid = $1::text::regclass AND d.classoid = 'pg_class'::regclass ORDER BY 1"),
        ("index comments", "SELECT format('%s=%s', x.indexrelid::regclass, obj_description(x.indexrelid, 'pg_class')) FROM pg_index x WHERE x.indrelid = $1::text::regclass AND obj_description(x.indexrelid, 'pg_class') IS NOT NULL ORDER BY 1"),
        ("sequences", "SELECT format('%s=%s owner=%s acl=%s', a.attname, s.seq, pg_get_userbyid(c.relowner), c.relacl) FROM pg_attribute a CROSS JOIN LATERAL (SELECT pg_get_serial_sequence($1, a.attname) AS seq) s JOIN pg_class c ON c.oid = s.seq::regclass WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1"),
        ("incoming", "SELECT format('%s %s %s', conname, conrelid::regclass, pg_get_constraintdef(oid)) FROM pg_constraint WHERE confrelid = $1::text::regclass AND conrelid <> confrelid AND contype = 'f' ORDER BY 1"),
        ("views", "SELECT DISTINCT format('%s opts=%s owner=%s acl=%s comment=%s', v.oid::regclass, v.reloptions, pg_get_userbyid(v.relowner), v.relacl, obj_description(v.oid, 'pg_class')) FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class WHERE d.refobjid = $1::text::regclass AND v.oid <> $1::text::regclass ORDER BY 1"),
    ] {
        let rows = c
            .query(sql, &[&name])
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        for r in rows {
            out.push(format!("{what}: {}", r.get::<_, String>(0)));
        }
    }
    out
}

/// Roles are cluster-wide: named after the test database.
struct Roles {
    owner: String,
    reader: String,
}

/// What the reader (and the owner, under forced row-level security) can and
/// cannot do, as outcome codes. Each probe runs in a transaction that is
/// rolled back, so nothing changes. `user_ref` is an untyped literal for
/// user 1's reference (its id before the swap, its uuid after).
async fn probes(c: &Client, roles: &Roles, user_ref: &str) -> Vec<String> {
    let reader = quote_ident(&roles.reader);
    let owner = quote_ident(&roles.owner);
    let cases: &[(&str, &str)] = &[
        ("reader", "SELECT (count(*) > 0)::text FROM chat_messages"),
        // The policy shows the reader even ids only.
        (
            "reader",
            "SELECT count(*)::text FROM chat_messages WHERE id % 2 = 1",
        ),
        // Column grants: id and content only.
        (
            "reader",
            "SELECT sender_id::text FROM chat_messages LIMIT 1",
        ),
        ("reader", "SELECT ext_no::text FROM chat_messages LIMIT 1"),
        (
            "reader",
            "SELECT (count(content) > 0)::text FROM chat_messages",
        ),
        (
            "reader",
            "UPDATE chat_messages SET content = 'x' WHERE false",
        ),
        ("reader", "DELETE FROM chat_messages WHERE false"),
        ("reader", "TRUNCATE chat_messages"),
        // INSERT is granted; the policy's check admits only 'ok…' content;
        // the disabled trigger would refuse every insert; the serial default
        // needs USAGE on its sequence.
        (
            "reader",
            "INSERT INTO chat_messages (sender_id, content) VALUES ({ref}, 'ok probe')",
        ),
        (
            "reader",
            "INSERT INTO chat_messages (sender_id, content) VALUES ({ref}, 'bad probe')",
        ),
        // GENERATED ALWAYS: no explicit value without OVERRIDING.
        (
            "reader",
            "INSERT INTO chat_messages (ext_no, sender_id, content) VALUES (-1, {ref}, 'ok ident')",
        ),
        (
            "reader",
            "SELECT (nextval('chat_messages_id_seq') > 0)::text",
        ),
        // The view runs as its owner (a superuser here: no row filter).
        (
            "reader",
            "SELECT (count(*) > 0)::text FROM chat_messages_v WHERE id % 2 = 1",
        ),
        ("reader", "SELECT count(*)::text FROM chat_messages_v2"),
        // Forced row-level security applies to the owner, who has no policy.
        ("owner", "SELECT count(*)::text FROM chat_messages"),
    ];
    let mut out = Vec::new();
    for (who, template) in cases {
        let role = if *who == "reader" { &reader } else { &owner };
        let sql = template.replace("{ref}", user_ref);
        c.batch_execute(&format!("BEGIN; SET LOCAL ROLE {role}"))
            .await
            .unwrap();
        let outcome = match c.query(sql.as_str(), &[]).await {
            Ok(rows) => format!(
                "ok {:?}",
                rows.iter()
                    .map(|r| r.get::<_, Option<String>>(0))
                    .collect::<Vec<_>>()
            ),
            Err(e) => format!(
                "err {}",
                e.as_db_error().map(|d| d.code().code()).unwrap_or("?")
            ),
        };
        c.batch_execute("ROLLBACK").await.unwrap();
        out.push(format!("{who}: {template} => {outcome}"));
    }
    out
}

/// Dependents on the example schema's `chat_messages`, added before seeding.
async fn add_dependents(db: &TestDb, c: &Client) -> Roles {
    let roles = Roles {
        owner: format!("{}_owner", db.name),
        reader: format!("{}_reader", db.name),
    };
    let (owner, reader) = (quote_ident(&roles.owner), quote_ident(&roles.reader));
    c.batch_execute(&format!(
        r#"
        CREATE ROLE {owner};
        CREATE ROLE {reader};
        -- An identity column (chat_messages.id is already a bigserial).
        ALTER TABLE chat_messages ADD COLUMN ext_no bigint GENERATED ALWAYS AS IDENTITY;
        CREATE UNIQUE INDEX chat_messages_ext_no_key ON chat_messages (ext_no);
        ALTER TABLE chat_messages REPLICA IDENTITY USING INDEX chat_messages_ext_no_key;
        CREATE INDEX chat_messages_sender_idx ON chat_messages (sender_id);
        ALTER TABLE chat_messages ADD CONSTRAINT chat_messages_content_check CHECK (length(content) < 100000);

        CREATE VIEW chat_messages_v WITH (security_barrier = true) AS
            SELECT id, sender_id, content FROM chat_messages WHERE content <> '';
        CREATE VIEW chat_messages_v2 AS SELECT id, sender_id FROM chat_messages_v;
        COMMENT ON VIEW chat_messages_v IS 'visible messages';

        CREATE TABLE audit (msg_id bigint, op text);
        CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS
            $$BEGIN INSERT INTO public.audit VALUES (NEW.id, TG_OP); RETURN NEW; END$$;
        CREATE FUNCTION refuse_fn() RETURNS trigger LANGUAGE plpgsql AS
            $$BEGIN RAISE EXCEPTION 'disabled trigger fired'; END$$;
        CREATE TRIGGER chat_messages_audit AFTER INSERT ON chat_messages
            FOR EACH ROW EXECUTE FUNCTION audit_fn();
        CREATE TRIGGER chat_messages_refuse BEFORE INSERT OR UPDATE ON chat_messages
            FOR EACH ROW EXECUTE FUNCTION refuse_fn();
        ALTER TABLE chat_messages DISABLE TRIGGER chat_messages_refuse;

        ALTER TABLE chat_messages ENABLE ROW LEVEL SECURITY;
        ALTER TABLE chat_messages FORCE ROW LEVEL SECURITY;
        CREATE POLICY even_only ON chat_messages FOR SELECT TO {reader} USING (id % 2 = 0);
        CREATE POLICY ok_inserts ON chat_messages FOR INSERT TO {reader} WITH CHECK (content LIKE 'ok%');

        ALTER TABLE chat_messages OWNER TO {owner};
        GRANT SELECT (id, content) ON chat_messages TO {reader};
        GRANT INSERT ON chat_messages TO {reader};
        GRANT USAGE ON SEQUENCE chat_messages_id_seq TO {reader};
        GRANT INSERT ON audit TO {reader};
        GRANT SELECT ON chat_messages_v TO {reader};

        COMMENT ON TABLE chat_messages IS 'messages';
        COMMENT ON COLUMN chat_messages.content IS 'the text';
        COMMENT ON COLUMN chat_messages.sender_id IS 'who wrote it';
        COMMENT ON INDEX chat_messages_sender_idx IS 'by sender';
        COMMENT ON CONSTRAINT chat_messages_sender_id_fkey ON chat_messages IS 'the author';
        COMMENT ON CONSTRAINT chat_messages_content_check ON chat_messages IS 'bounded';

        CREATE PUBLICATION app_pub FOR TABLE chat_messages;
        "#
    ))
    .await
    .expect("dependents");
    roles
}

async fn wait_commits(stats: &Arc<WorkloadStats>, more: u64, what: &str) {
    let from = stats.commits.load(Ordering::Relaxed);
    let s = stats.clone();
    wait_for(what, Duration::from_secs(60), || {
        let s = s.clone();
        async move { (s.commits.load(Ordering::Relaxed) >= from + more).then_some(()) }
    })
    .await;
}

async fn one<T: for<'a> tokio_postgres::types::FromSql<'a>>(c: &Client, sql: &str) -> T {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Writers that touch only `chat_messages`, one statement per transaction:
/// inserts (the reference written through a join on `users`, switching to the
/// uuid when the column has become `uuid`), updates of the text and of the
/// reference, deletes (cascading to `message_reads`).
struct SingleTableWriters {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stats: Arc<WorkloadStats>,
}

impl SingleTableWriters {
    async fn start(db: &TestDb, n: u64) -> SingleTableWriters {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stats = Arc::new(WorkloadStats::default());
        let mut tasks = Vec::new();
        for w in 0..n {
            let client = db.client().await;
            let (stop, stats) = (stop.clone(), stats.clone());
            tasks.push(tokio::spawn(async move {
                let mut reference = "id";
                let mut i: u64 = w;
                while !stop.load(Ordering::Relaxed) {
                    i += 7;
                    let user = (1 + i % 150) as i64;
                    let back = (i % 30) as i64;
                    let r = match i % 4 {
                        0 | 1 => client.execute(
                            &format!("INSERT INTO chat_messages (sender_id, content) SELECT {reference}, 'w' || $2::bigint FROM users WHERE id = $1"),
                            &[&user, &(i as i64)],
                        ).await,
                        2 => client.execute(
                            &format!("UPDATE chat_messages SET sender_id = (SELECT {reference} FROM users WHERE id = $1), content = content || '.' WHERE id = (SELECT max(id) - $2 FROM chat_messages)"),
                            &[&user, &back],
                        ).await,
                        _ => client.execute(
                            "DELETE FROM chat_messages WHERE id = (SELECT max(id) - 40 - $1 FROM chat_messages)",
                            &[&back],
                        ).await,
                    };
                    match r {
                        Ok(_) => {
                            stats.commits.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            stats.failures.fetch_add(1, Ordering::Relaxed);
                            if e.as_db_error().map(|d| d.code().code()) == Some("42804") {
                                reference = "uuid_id";
                                stats.type_switches.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        SingleTableWriters { stop, tasks, stats }
    }

    async fn stop(self) -> Arc<WorkloadStats> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.stats
    }
}

/// The application load of the dependents scenario.
enum Load {
    /// [`SingleTableWriters`]: no transaction holds another table's lock
    /// while it waits for `chat_messages`.
    SingleTable(SingleTableWriters),
    /// The example [`Workload`]: multi-table transactions (a user inserted,
    /// then a message) and readers.
    Workload(Workload),
}

impl Load {
    fn stats(&self) -> &Arc<WorkloadStats> {
        match self {
            Load::SingleTable(w) => &w.stats,
            Load::Workload(w) => &w.stats,
        }
    }

    async fn stop(self) -> Arc<WorkloadStats> {
        match self {
            Load::SingleTable(w) => w.stop().await,
            Load::Workload(w) => w.stop().await,
        }
    }
}

/// Single-table writers: the swap of `chat_messages` carries every dependent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dependent_works_on_the_new_table_after_rewrite_and_cutover() {
    dependents_scenario(false).await;
}

/// The same with the example workload, whose transactions insert a user (or
/// a message read) and then a message. The swap's own statements lock
/// `users` (the shadow's new foreign key) and `message_reads` (the incoming
/// key is re-pointed); if the cutover asks for those locks only after it
/// locked `chat_messages`, such a transaction deadlocks with it on every
/// attempt. See `lock_statements` in src/cutover.rs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dependent_works_when_writers_lock_the_parent_before_the_source() {
    dependents_scenario(true).await;
}

async fn dependents_scenario(multi_table_writers: bool) {
    let db = TestDb::new().await;
    let c = db.client().await;
    workload::create_schema(&c).await.unwrap();
    let roles = add_dependents(&db, &c).await;
    install_change_log(&c, &["chat_messages"]).await;
    workload::seed(&c, 200, 10_000).await.unwrap();

    let before = describe(&c, "chat_messages").await;
    let probes_before = probes(&c, &roles, "'1'").await;
    // The probes see what the setup says, so equality below means something.
    for (i, expect) in [
        (0, "ok [Some(\"true\")]"),
        (1, "ok [Some(\"0\")]"),
        (2, "err 42501"),
        (4, "ok [Some(\"true\")]"),
        (7, "err 42501"),
        (8, "ok []"),
        (9, "err 42501"),
        (10, "err 428C9"),
        (11, "ok [Some(\"true\")]"),
        (12, "ok [Some(\"true\")]"),
        (13, "err 42501"),
        (14, "ok [Some(\"0\")]"),
    ] {
        assert!(
            probes_before[i].ends_with(expect),
            "{i}: {probes_before:#?}"
        );
    }
    for line in [
        "rls: enabled=t forced=t replident=i",
        "publications: app_pub",
        "indexes: chat_messages_ext_no_key replident=t",
    ] {
        assert!(before.iter().any(|l| l == line), "{line}: {before:#?}");
    }
    assert!(
        before
            .iter()
            .any(|l| l.starts_with("triggers: chat_messages_refuse D ")),
        "{before:#?}"
    );
    let source_oid: u32 = one(&c, "SELECT 'chat_messages'::regclass::oid").await;

    // Writers (and readers) from before the rewrite until after the swap.
    let load = if multi_table_writers {
        Load::Workload(
            Workload::start(&db.spec, WorkloadOptions::default())
                .await
                .unwrap(),
        )
    } else {
        Load::SingleTable(SingleTableWriters::start(&db, 3).await)
    };
    wait_commits(load.stats(), 20, "the workload to start").await;
    let (_stop_tx, stop_rx) = watch::channel(false);
    let rcfg = rewrite_cfg(&db, &["chat_messages"]);
    let commits_at_start = load.stats().commits.load(Ordering::Relaxed);
    let job = tokio::spawn(async move {
        rewrite::run(&rcfg, stop_rx, pg_rekey::progress::JobProgress::new()).await
    });
    wait_phase(&c, &["chat_messages"], "streaming").await;
    let commits_at_streaming = load.stats().commits.load(Ordering::Relaxed);
    assert!(
        commits_at_streaming > commits_at_start,
        "writes ran during the copy"
    );
    wait_commits(load.stats(), 200, "writes while streaming").await;

    load.stats().reset_worst();
    let report = cutover::run(&cutover_cfg(&db, &["chat_messages"]))
        .await
        .unwrap();
    assert!(report.swapped, "{report:?}");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    eprintln!("cutover attempts: {:?}", report.attempts);
    // Nothing changed the catalog during the cutover: the swap built before
    // the locks was used.
    assert!(
        report
            .attempts
            .iter()
            .all(|a| a.outcome != "catalog_changed"),
        "{:?}",
        report.attempts
    );
    let old = "public._rekey_old_chat_messages";
    assert_eq!(
        report.tables,
        vec![("public.chat_messages".to_string(), old.to_string())]
    );
    // Frozen from here on: nothing may write to the old table.
    let old_print = fingerprint(&c, old).await;
    wait_commits(load.stats(), 300, "writes on the new table").await;
    let stats = load.stop().await;
    eprintln!("workload: {}", stats.summary());
    assert!(
        stats.type_switches.load(Ordering::Relaxed) > 0,
        "the writers met the uuid column"
    );
    let outcome = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::CutOver);
    assert_eq!(fingerprint(&c, old).await, old_print, "old table unchanged");
    let post_swap_writes: i64 = one(
        &c,
        "SELECT count(*) FROM change_log WHERE relid = 'chat_messages'::regclass::oid",
    )
    .await;
    assert!(
        post_swap_writes > 0,
        "the change-log trigger fires on the new table"
    );

    // Catalog: everything preserved, under the original names.
    let new_oid: u32 = one(&c, "SELECT 'chat_messages'::regclass::oid").await;
    assert_ne!(new_oid, source_oid);
    let old_oid: u32 = one(&c, "SELECT '_rekey_old_chat_messages'::regclass::oid").await;
    assert_eq!(old_oid, source_oid);
    let after = describe(&c, "chat_messages").await;
    assert_eq!(after, before);
    let ty: String = one(&c, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'chat_messages'::regclass AND attname = 'sender_id'").await;
    assert_eq!(ty, "uuid");

    // The old table's objects moved out of the way.
    let old_names: Vec<String> = c
        .query(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = '_rekey_old_chat_messages'::regclass
             UNION ALL SELECT conname::text FROM pg_constraint WHERE conrelid = '_rekey_old_chat_messages'::regclass AND contype IN ('p', 'u', 'x')
             UNION ALL SELECT pg_get_serial_sequence('_rekey_old_chat_messages', 'ext_no')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(old_names.len(), 5, "{old_names:?}");
    assert!(
        old_names
            .iter()
            .all(|n| n.trim_start_matches("public.").starts_with("_rekey_old_")),
        "{old_names:?}"
    );
    // The application's publication holds the new table (by identity), not the old.
    let in_pub: Vec<u32> = c
        .query(
            "SELECT pr.prrelid FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = 'app_pub'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(in_pub, vec![new_oid]);
    // Every key on and into the new table is valid; the incoming key targets the new table.
    let not_valid: i64 = one(&c, "SELECT count(*) FROM pg_constraint WHERE (conrelid = 'chat_messages'::regclass OR confrelid = 'chat_messages'::regclass) AND NOT convalidated").await;
    assert_eq!(not_valid, 0);
    let incoming: i64 = one(&c, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'message_reads'::regclass AND contype = 'f' AND confrelid = 'chat_messages'::regclass").await;
    assert_eq!(incoming, 1);

    // Behaviour: the second role can do exactly what it could before.
    let uuid1: String = one(&c, "SELECT uuid_id::text FROM users WHERE id = 1").await;
    let probes_after = probes(&c, &roles, &format!("'{uuid1}'")).await;
    assert_eq!(probes_after, probes_before);

    // INSERT without an id: fresh serial and identity values above every old
    // one; the enabled trigger fires, the disabled one does not.
    let row = c
        .query_one(
            "INSERT INTO chat_messages (sender_id, content) SELECT uuid_id, 'fresh' FROM users WHERE id = 1 RETURNING id, ext_no",
            &[],
        )
        .await
        .expect("insert on the new table");
    let (fresh_id, fresh_ext): (i64, i64) = (row.get(0), row.get(1));
    let (old_max_id, old_max_ext): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT max(id), max(ext_no) FROM _rekey_old_chat_messages",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    let (new_max_id, new_max_ext): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT max(id), max(ext_no) FROM chat_messages WHERE id <> $1",
                &[&fresh_id],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        fresh_id > old_max_id && fresh_id > new_max_id,
        "{fresh_id} vs {old_max_id}/{new_max_id}"
    );
    assert!(
        fresh_ext > old_max_ext && fresh_ext > new_max_ext,
        "{fresh_ext} vs {old_max_ext}/{new_max_ext}"
    );
    let audited: Vec<String> = c
        .query("SELECT op FROM audit WHERE msg_id = $1", &[&fresh_id])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(audited, vec!["INSERT"]);
    // The reader's insert (a real one this time) passes its policy.
    c.batch_execute(&format!(
        "SET ROLE {}; INSERT INTO chat_messages (sender_id, content) VALUES ('{uuid1}', 'ok by reader'); RESET ROLE",
        quote_ident(&roles.reader)
    ))
    .await
    .expect("the reader inserts on the new table");

    // The incoming key rejects a dangling row and guards the new rows.
    let bad = c
        .execute(
            "INSERT INTO message_reads (message_id, reader_id) VALUES (-5, 1)",
            &[],
        )
        .await
        .expect_err("dangling message_id must be refused");
    assert_eq!(bad.as_db_error().map(|d| d.code().code()), Some("23503"));
    c.execute(
        "INSERT INTO message_reads (message_id, reader_id) VALUES ($1, 1)",
        &[&fresh_id],
    )
    .await
    .expect("a read of a new message");
    c.execute("DELETE FROM chat_messages WHERE id = $1", &[&fresh_id])
        .await
        .unwrap();
    let reads_left: i64 = c
        .query_one(
            "SELECT count(*) FROM message_reads WHERE message_id = $1",
            &[&fresh_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reads_left, 0, "ON DELETE CASCADE acts from the new table");

    // The views read the new table and return uuid references.
    let types: Vec<String> = c
        .query(
            "SELECT DISTINCT pg_typeof(sender_id)::text FROM chat_messages_v
             UNION ALL SELECT DISTINCT pg_typeof(sender_id)::text FROM chat_messages_v2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(types, vec!["uuid", "uuid"]);
    let (in_view, in_table): (i64, i64) = (
        one(&c, "SELECT count(*) FROM chat_messages_v2").await,
        one(&c, "SELECT count(*) FROM chat_messages WHERE content <> ''").await,
    );
    assert_eq!(in_view, in_table);

    // Old and new agree on every row not written after the swap.
    let (equal, later) = old_matches_new_except_later_changes(&c, "chat_messages", old).await;
    eprintln!("chat_messages: {equal} rows equal, {later} changed after the swap");
    assert!(equal > 1_000, "{equal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_tables_cut_over_together_under_load_and_no_committed_write_is_lost() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workload::create_schema(&c).await.unwrap();
    install_change_log(&c, REFERENCING_TABLES).await;
    workload::seed(&c, 300, 5_000).await.unwrap();
    let load = Workload::start(&db.spec, WorkloadOptions::default())
        .await
        .unwrap();

    let (_stop_tx, stop_rx) = watch::channel(false);
    let rcfg = rewrite_cfg(&db, REFERENCING_TABLES);
    let job = tokio::spawn(async move {
        rewrite::run(&rcfg, stop_rx, pg_rekey::progress::JobProgress::new()).await
    });
    wait_phase(&c, REFERENCING_TABLES, "streaming").await;
    wait_commits(&load.stats, 200, "writes while streaming").await;

    load.stats.reset_worst();
    let report = cutover::run(&cutover_cfg(&db, REFERENCING_TABLES))
        .await
        .unwrap();
    let worst_read_at_swap = load.stats.worst_read_us.load(Ordering::Relaxed);
    let worst_write_at_swap = load.stats.worst_write_us.load(Ordering::Relaxed);
    assert!(report.swapped, "{report:?}");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let last = report.attempts.last().unwrap();
    eprintln!(
        "cutover of {} tables: {} attempt(s), last: lock wait {:.1} ms, hold {:.1} ms; \
         readers' worst latency during the cutover {:.1} ms, writers' worst {:.1} ms",
        REFERENCING_TABLES.len(),
        report.attempts.len(),
        last.lock_wait_ms,
        last.lock_hold_ms.unwrap_or(f64::NAN),
        worst_read_at_swap as f64 / 1000.0,
        worst_write_at_swap as f64 / 1000.0,
    );
    let mut prints = Vec::new();
    for (_, old) in &report.tables {
        prints.push(fingerprint(&c, old).await);
    }
    wait_commits(&load.stats, 300, "writes on the new tables").await;
    let stats = load.stop().await;
    eprintln!("workload: {}", stats.summary());
    assert!(stats.reads.load(Ordering::Relaxed) > 0);
    assert_eq!(
        stats.read_failures.load(Ordering::Relaxed),
        0,
        "readers never fail"
    );
    let outcome = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::CutOver);

    for ((table, old), print) in report.tables.iter().zip(prints) {
        assert_eq!(
            fingerprint(&c, old).await,
            print,
            "{old} unchanged after the swap"
        );
        let name = table.trim_start_matches("public.");
        let (equal, later) = old_matches_new_except_later_changes(&c, name, old).await;
        eprintln!("{name}: {equal} rows equal, {later} changed after the swap");
        assert!(equal > 100, "{name}: {equal}");
        let j = state::get_job(&c, &QualifiedName::new("public", name))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(j.phase, "cut_over");
        assert_eq!(j.old_table.as_deref(), Some(old.as_str()));
    }
}
