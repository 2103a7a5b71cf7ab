//! The swap against a real server: a hand-built shadow (uuid reference
//! column, filled by INSERT … SELECT … JOIN users, as the rewrite would leave
//! it) swapped in one transaction, and everything bound to the source's
//! identity checked on the new table, by catalog and by behaviour.

use pg_rekey::pg::QualifiedName;
use pg_rekey::swap::catalog::{fingerprint, Fingerprinter};
use pg_rekey::swap::{
    execute_swap, load_dependents, swap_sql, swap_sql_many, validate_after, SwapError, SwapNames,
};
use tokio_postgres::Client;

use crate::support::TestDb;

fn src() -> QualifiedName {
    QualifiedName::new("public", "chat_messages")
}

fn shadow() -> QualifiedName {
    QualifiedName::new("public", "_rekey_new_chat_messages")
}

/// Roles are cluster-wide: name them after the test database.
struct Roles {
    owner: String,
    reader: String,
}

async fn schema(db: &TestDb, c: &Client) -> Roles {
    let roles = Roles {
        owner: format!("{}_owner", db.name),
        reader: format!("{}_reader", db.name),
    };
    let (owner, reader) = (&roles.owner, &roles.reader);
    c.batch_execute(&format!(
        r#"
        CREATE ROLE {owner};
        CREATE ROLE {reader};
        CREATE TABLE users (id serial PRIMARY KEY, uuid uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(), name text);
        CREATE TABLE chats (id serial PRIMARY KEY, title text);
        CREATE TABLE chat_messages (
            id bigint GENERATED ALWAYS AS IDENTITY,
            seq_no serial,
            chat_id integer NOT NULL REFERENCES chats(id),
            user_id integer NOT NULL REFERENCES users(id),
            body text,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT chat_messages_pkey PRIMARY KEY (id),
            CONSTRAINT chat_messages_body_check CHECK (length(body) < 1000)
        );
        CREATE INDEX chat_messages_user_idx ON chat_messages (user_id);
        CREATE UNIQUE INDEX chat_messages_chat_seq_idx ON chat_messages (chat_id, seq_no);
        ALTER TABLE chat_messages REPLICA IDENTITY USING INDEX chat_messages_chat_seq_idx;
        CREATE TABLE message_reads (
            message_id bigint NOT NULL REFERENCES chat_messages(id),
            reader text NOT NULL,
            PRIMARY KEY (message_id, reader)
        );

        INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 3) g;
        INSERT INTO chats (title) VALUES ('one'), ('two');
        INSERT INTO chat_messages (chat_id, user_id, body)
             SELECT 1 + g % 2, 1 + g % 3, 'm' || g FROM generate_series(1, 6) g;
        INSERT INTO message_reads VALUES (1, 'a'), (2, 'a'), (2, 'b');

        CREATE VIEW chat_messages_v WITH (security_barrier = true) AS
            SELECT id, chat_id, user_id, body FROM chat_messages WHERE body IS NOT NULL;
        CREATE VIEW chat_messages_v2 AS SELECT id, user_id FROM chat_messages_v;
        COMMENT ON VIEW chat_messages_v IS 'visible messages';
        COMMENT ON COLUMN chat_messages_v.body IS 'view body';

        CREATE TABLE audit (msg_id bigint, op text);
        CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS
            $$BEGIN INSERT INTO public.audit VALUES (NEW.id, TG_OP); RETURN NEW; END$$;
        CREATE FUNCTION refuse_fn() RETURNS trigger LANGUAGE plpgsql AS
            $$BEGIN RAISE EXCEPTION 'disabled trigger fired'; END$$;
        CREATE TRIGGER chat_messages_audit AFTER INSERT ON chat_messages
            FOR EACH ROW EXECUTE FUNCTION audit_fn();
        CREATE TRIGGER chat_messages_refuse BEFORE INSERT ON chat_messages
            FOR EACH ROW EXECUTE FUNCTION refuse_fn();
        ALTER TABLE chat_messages DISABLE TRIGGER chat_messages_refuse;

        ALTER TABLE chat_messages ENABLE ROW LEVEL SECURITY;
        CREATE POLICY chat_one ON chat_messages FOR SELECT TO {reader} USING (chat_id = 1);
        CREATE POLICY insert_any ON chat_messages FOR INSERT TO {reader} WITH CHECK (true);

        ALTER TABLE chat_messages OWNER TO {owner};
        ALTER VIEW chat_messages_v OWNER TO {owner};
        GRANT SELECT (id, chat_id, body) ON chat_messages TO {reader};
        GRANT INSERT ON chat_messages TO {reader};
        GRANT USAGE ON SEQUENCE chat_messages_seq_no_seq TO {reader};
        GRANT INSERT ON audit TO {reader};
        GRANT SELECT ON chat_messages_v TO {reader};

        COMMENT ON TABLE chat_messages IS 'messages';
        COMMENT ON COLUMN chat_messages.body IS 'the text';
        COMMENT ON INDEX chat_messages_user_idx IS 'by author';

        CREATE PUBLICATION app_pub FOR TABLE chat_messages;
        CREATE PUBLICATION pg_rekey_job FOR TABLE chat_messages, users;

        -- The shadow, as the rewrite leaves it: same columns, user_id uuid,
        -- its own key, indexes and NOT VALID foreign keys, shadow names.
        CREATE TABLE _rekey_new_chat_messages (
            id bigint GENERATED ALWAYS AS IDENTITY,
            seq_no integer NOT NULL DEFAULT nextval('chat_messages_seq_no_seq'::regclass),
            chat_id integer NOT NULL,
            user_id uuid NOT NULL,
            body text,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT _rekey_new_chat_messages_pkey PRIMARY KEY (id),
            CONSTRAINT chat_messages_body_check CHECK (length(body) < 1000)
        );
        COMMENT ON TABLE _rekey_new_chat_messages IS 'pg-rekey shadow';
        INSERT INTO _rekey_new_chat_messages OVERRIDING SYSTEM VALUE
             SELECT m.id, m.seq_no, m.chat_id, u.uuid, m.body, m.created_at
               FROM chat_messages m JOIN users u ON u.id = m.user_id;
        CREATE INDEX _rekey_new_chat_messages_user_idx ON _rekey_new_chat_messages (user_id);
        CREATE UNIQUE INDEX _rekey_new_chat_messages_chat_seq_idx ON _rekey_new_chat_messages (chat_id, seq_no);
        ALTER TABLE _rekey_new_chat_messages REPLICA IDENTITY USING INDEX _rekey_new_chat_messages_chat_seq_idx;
        ALTER TABLE _rekey_new_chat_messages ADD CONSTRAINT chat_messages_chat_id_fkey
            FOREIGN KEY (chat_id) REFERENCES chats(id) NOT VALID;
        ALTER TABLE _rekey_new_chat_messages ADD CONSTRAINT _rekey_new_user_fk
            FOREIGN KEY (user_id) REFERENCES users(uuid) NOT VALID;
        "#
    ))
    .await
    .expect("build schema");
    roles
}

/// Everything about whatever relation is called `name` that the swap must
/// preserve, normalised so source and new table compare equal (no OIDs, no
/// constraint definitions — a reference key targets another column now).
async fn describe(c: &Client, name: &str) -> Vec<String> {
    let q = |sql: &'static str| async move {
        c.query(sql, &[&name])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<String>>()
    };
    let mut out = Vec::new();
    for (what, sql) in [
        ("owner", "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = $1::text::regclass"),
        ("acl", "SELECT format('%s %s %s %s', pg_get_userbyid(a.grantee), pg_get_userbyid(a.grantor), a.privilege_type, a.is_grantable) FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = $1::text::regclass ORDER BY 1"),
        ("column acl", "SELECT format('%s %s %s %s', at.attname, pg_get_userbyid(a.grantee), a.privilege_type, a.is_grantable) FROM pg_attribute at, aclexplode(at.attacl) a WHERE at.attrelid = $1::text::regclass ORDER BY 1"),
        ("rls", "SELECT format('%s %s %s', relrowsecurity, relforcerowsecurity, relreplident) FROM pg_class WHERE oid = $1::text::regclass"),
        ("policies", "SELECT format('%s %s %s %s %s %s', policyname, permissive, roles, cmd, qual, with_check) FROM pg_policies WHERE schemaname = 'public' AND tablename = $1 ORDER BY 1"),
        ("triggers", "SELECT format('%s %s %s', tgname, tgenabled, pg_get_triggerdef(oid)) FROM pg_trigger WHERE tgrelid = $1::text::regclass AND NOT tgisinternal ORDER BY 1"),
        ("indexes", "SELECT format('%s replident=%s', indexrelid::regclass, indisreplident) FROM pg_index WHERE indrelid = $1::text::regclass ORDER BY 1"),
        ("constraints", "SELECT format('%s %s', conname, contype) FROM pg_constraint WHERE conrelid = $1::text::regclass ORDER BY 1"),
        ("publications", "SELECT pubname::text FROM pg_publication_tables WHERE schemaname = 'public' AND tablename = $1 AND pubname NOT LIKE 'pg\\_rekey%' ORDER BY 1"),
        ("comments", "SELECT format('%s=%s', coalesce(a.attname, '<table>'), d.description) FROM pg_description d LEFT JOIN pg_attribute a ON a.attrelid = d.objoid AND a.attnum = d.objsubid WHERE d.objoid = $1::text::regclass AND d.classoid = 'pg_class'::regclass ORDER BY 1"),
        ("index comments", "SELECT format('%s=%s', x.indexrelid::regclass, obj_description(x.indexrelid, 'pg_class')) FROM pg_index x WHERE x.indrelid = $1::text::regclass AND obj_description(x.indexrelid, 'pg_class') IS NOT NULL ORDER BY 1"),
        ("sequences", "SELECT format('%s=%s', attname, pg_get_serial_sequence($1, attname)) FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 AND pg_get_serial_sequence($1, attname) IS NOT NULL ORDER BY 1"),
        ("incoming", "SELECT format('%s %s %s', conname, conrelid::regclass, pg_get_constraintdef(oid)) FROM pg_constraint WHERE confrelid = $1::text::regclass AND conrelid <> confrelid AND contype = 'f' ORDER BY 1"),
        ("views", "SELECT DISTINCT format('%s opts=%s owner=%s acl=%s comment=%s', v.oid::regclass, v.reloptions, pg_get_userbyid(v.relowner), v.relacl, obj_description(v.oid, 'pg_class')) FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class WHERE d.refobjid = $1::text::regclass AND v.oid <> $1::text::regclass ORDER BY 1"),
    ] {
        for line in q(sql).await {
            out.push(format!("{what}: {line}"));
        }
    }
    out
}

/// What the reader role can and cannot do, as outcome codes (nothing changes data).
async fn reader_probes(c: &Client, reader: &str) -> Vec<String> {
    c.batch_execute(&format!("SET ROLE {reader}"))
        .await
        .unwrap();
    let mut out = Vec::new();
    for sql in [
        "SELECT count(*)::text FROM chat_messages",
        "SELECT string_agg(id::text || ':' || chat_id || ':' || body, ',' ORDER BY id) FROM chat_messages",
        "SELECT user_id::text FROM chat_messages LIMIT 1",
        "SELECT created_at::text FROM chat_messages LIMIT 1",
        "UPDATE chat_messages SET body = 'x' RETURNING 'updated'",
        "DELETE FROM chat_messages RETURNING 'deleted'",
        "SELECT count(*)::text FROM chat_messages_v",
        "SELECT count(*)::text FROM chat_messages_v2",
    ] {
        let outcome = match c.query(sql, &[]).await {
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
        out.push(format!("{sql} => {outcome}"));
    }
    c.batch_execute("RESET ROLE").await.unwrap();
    out
}

async fn count(c: &Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn swap_carries_every_dependent_to_the_new_table() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let roles = schema(&db, &c).await;
    let reader = roles.reader.as_str();

    let before = describe(&c, "chat_messages").await;
    let probes_before = reader_probes(&c, reader).await;
    // Sanity: the probes see what the setup says (so equality below means something).
    assert!(
        probes_before[0].ends_with("ok [Some(\"3\")]"),
        "{probes_before:?}"
    );
    assert!(probes_before[2].ends_with("err 42501"), "{probes_before:?}");
    assert!(probes_before[4].ends_with("err 42501"), "{probes_before:?}");
    assert!(
        before
            .iter()
            .any(|l| l.starts_with("triggers: chat_messages_refuse D CREATE TRIGGER")),
        "{before:#?}"
    );
    assert!(
        before.iter().any(|l| l == "publications: app_pub"),
        "{before:#?}"
    );
    let source_oid: u32 = c
        .query_one("SELECT 'chat_messages'::regclass::oid", &[])
        .await
        .unwrap()
        .get(0);
    let old_rows = count(&c, "chat_messages").await;

    // The swap, in one transaction holding both locks.
    let mut tx_client = db.client().await;
    let txn = tx_client.transaction().await.unwrap();
    txn.batch_execute(
        "LOCK TABLE public.chat_messages, public._rekey_new_chat_messages IN ACCESS EXCLUSIVE MODE",
    )
    .await
    .unwrap();
    // A writer blocked by the lock, sending a uuid as an untyped literal.
    let uuid1: String = c
        .query_one("SELECT uuid::text FROM users WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    let blocked = {
        let client = db.client().await;
        let uuid1 = uuid1.clone();
        tokio::spawn(async move {
            client
                .query_one(
                    &format!("INSERT INTO chat_messages (chat_id, user_id, body) VALUES (1, '{uuid1}', 'blocked') RETURNING id"),
                    &[],
                )
                .await
                .map(|r| r.get::<_, i64>(0))
        })
    };
    crate::support::wait_lock_queued(&c, "chat_messages").await;

    let deps = load_dependents(&txn, &src(), &shadow()).await.unwrap();
    assert_eq!(deps.views.len(), 2);
    assert_eq!(deps.incoming_fks.len(), 1);
    assert_eq!(
        deps.publications.len(),
        1,
        "pg-rekey's own publication is not carried"
    );
    assert!(deps.unmatched.is_empty(), "{:?}", deps.unmatched);
    let swap = swap_sql(&deps, &SwapNames::derive(&src()));
    let started = std::time::Instant::now();
    execute_swap(&txn, &swap).await.unwrap();
    eprintln!(
        "swap: {} statements executed in {:?}",
        swap.steps.len(),
        started.elapsed()
    );
    txn.commit().await.unwrap();
    validate_after(&c, &swap.validate, &swap.analyze)
        .await
        .unwrap();

    // The blocked writer continued on the new table.
    let blocked_id = blocked.await.unwrap().expect("blocked writer");
    assert!(blocked_id > 6);

    // Catalog: identical description, except that the uuid key is now valid
    // and targets users(uuid) — shown only in the incoming/constraint lines,
    // which carry names, not definitions, for the table's own keys.
    let after = describe(&c, "chat_messages").await;
    assert_eq!(after, before);
    let new_oid: u32 = c
        .query_one("SELECT 'chat_messages'::regclass::oid", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(new_oid, source_oid);
    let user_type: String = c
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'chat_messages'::regclass AND attname = 'user_id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(user_type, "uuid");
    // The old table is out of the way, under the documented name, with moved names.
    let old_oid: u32 = c
        .query_one("SELECT '_rekey_old_chat_messages'::regclass::oid", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(old_oid, source_oid);
    let old_indexes: Vec<String> = c
        .query(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = '_rekey_old_chat_messages'::regclass ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        old_indexes,
        vec![
            "_rekey_old_chat_messages_chat_seq_idx",
            "_rekey_old_chat_messages_pkey",
            "_rekey_old_chat_messages_user_idx"
        ]
    );
    assert!(
        !after.iter().any(|l| l.contains("_rekey_new")),
        "{after:#?}"
    );
    // pg-rekey's own publication still has the old table (it is dropped later).
    let own: Vec<String> = c
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'pg_rekey_job' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(own, vec!["_rekey_old_chat_messages", "users"]);
    // Every foreign key on and into the new table is validated.
    let not_valid: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE (conrelid = 'chat_messages'::regclass OR confrelid = 'chat_messages'::regclass) AND NOT convalidated",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(not_valid, 0);

    // Behaviour: the reader can do exactly what it could before.
    let probes_after = reader_probes(&c, reader).await;
    // The blocked insert (chat 1) is one more row the reader's policy shows.
    let mut expected = probes_before.clone();
    expected[0] = expected[0].replace("ok [Some(\"3\")]", "ok [Some(\"4\")]");
    // Through the view (owned by the table owner, who bypasses RLS): all rows.
    expected[6] = expected[6].replace("ok [Some(\"6\")]", "ok [Some(\"7\")]");
    expected[1] = expected[1].replace("\")]", &format!(",{blocked_id}:1:blocked\")]"));
    assert_eq!(probes_after, expected);

    // INSERT without an id gets a fresh one; serial keeps counting; the
    // enabled trigger fires and the disabled one does not; the reader's
    // insert passes its policy.
    c.batch_execute(&format!("SET ROLE {reader}"))
        .await
        .unwrap();
    c.execute(
        "INSERT INTO chat_messages (chat_id, user_id, body) VALUES (2, $1::text::uuid, 'by reader')",
        &[&uuid1],
    )
    .await
    .expect("reader inserts on the new table");
    c.batch_execute("RESET ROLE").await.unwrap();
    let row = c
        .query_one(
            "SELECT id, seq_no FROM chat_messages WHERE body = 'by reader'",
            &[],
        )
        .await
        .unwrap();
    let (id, seq_no): (i64, i32) = (row.get(0), row.get(1));
    let (max_old_id, max_old_seq): (i64, i32) = {
        let r = c
            .query_one(
                "SELECT max(id), max(seq_no) FROM _rekey_old_chat_messages",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(id > max_old_id && id > blocked_id, "{id} vs {max_old_id}");
    assert!(seq_no > max_old_seq);
    let audited: Vec<i64> = c
        .query("SELECT msg_id FROM audit ORDER BY msg_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(audited, vec![blocked_id, id]);

    // Nothing was written to the old table.
    assert_eq!(count(&c, "_rekey_old_chat_messages").await, old_rows);
    assert_eq!(count(&c, "chat_messages").await, old_rows + 2);

    // The incoming foreign key now guards the new table.
    let bad = c
        .execute("INSERT INTO message_reads VALUES (999999, 'x')", &[])
        .await
        .expect_err("dangling message_id must be refused");
    assert_eq!(bad.as_db_error().map(|d| d.code().code()), Some("23503"));
    c.execute("INSERT INTO message_reads VALUES ($1, 'x')", &[&id])
        .await
        .expect("a read of a new message");

    // The views return uuid references.
    let types: Vec<String> = c
        .query(
            "SELECT DISTINCT pg_typeof(user_id)::text FROM chat_messages_v2 UNION ALL SELECT DISTINCT pg_typeof(user_id)::text FROM chat_messages_v",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(types, vec!["uuid", "uuid"]);
    let view_comment: Option<String> = c
        .query_one(
            "SELECT col_description('chat_messages_v'::regclass, 4)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(view_comment.as_deref(), Some("view body"));
}

#[tokio::test]
async fn swap_rolls_back_when_a_view_cannot_be_recreated() {
    let db = TestDb::new().await;
    let c = db.client().await;
    schema(&db, &c).await;
    c.batch_execute(
        "CREATE VIEW first_user_messages AS SELECT id, body FROM chat_messages WHERE user_id = 1",
    )
    .await
    .unwrap();
    let before = describe(&c, "chat_messages").await;
    let oid_before: u32 = c
        .query_one("SELECT 'chat_messages'::regclass::oid", &[])
        .await
        .unwrap()
        .get(0);

    let mut tx_client = db.client().await;
    let txn = tx_client.transaction().await.unwrap();
    txn.batch_execute(
        "LOCK TABLE public.chat_messages, public._rekey_new_chat_messages IN ACCESS EXCLUSIVE MODE",
    )
    .await
    .unwrap();
    let deps = load_dependents(&txn, &src(), &shadow()).await.unwrap();
    let swap = swap_sql(&deps, &SwapNames::derive(&src()));
    let err = execute_swap(&txn, &swap)
        .await
        .expect_err("uuid = integer cannot type-check");
    match &err {
        SwapError::Statement { object, .. } => {
            assert_eq!(object, "view public.first_user_messages")
        }
        other => panic!("unexpected error {other}"),
    }
    let text = err.to_string();
    assert!(text.contains("view public.first_user_messages"), "{text}");
    assert!(text.contains("uuid = integer"), "{text}");
    assert_eq!(err.sqlstate(), Some("42883"));
    txn.rollback().await.unwrap();

    // The source is untouched: same relation, same everything, the shadow
    // and the view still in place.
    let oid_after: u32 = c
        .query_one("SELECT 'chat_messages'::regclass::oid", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(oid_after, oid_before);
    assert_eq!(describe(&c, "chat_messages").await, before);
    let present: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname IN ('_rekey_new_chat_messages', 'first_user_messages') AND relnamespace = 'public'::regnamespace",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(present, 2);
    let old: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname LIKE '_rekey_old%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(old, 0);
}

#[tokio::test]
async fn swap_refuses_dependents_it_cannot_carry() {
    let db = TestDb::new().await;
    let c = db.client().await;
    schema(&db, &c).await;
    c.batch_execute(
        "CREATE FUNCTION message_total() RETURNS bigint LANGUAGE sql
           BEGIN ATOMIC SELECT count(*) FROM chat_messages; END",
    )
    .await
    .unwrap();
    let err = load_dependents(&c, &src(), &shadow())
        .await
        .expect_err("a SQL-standard body binds to the old table");
    match &err {
        SwapError::Unsupported { objects, .. } => {
            assert_eq!(
                objects,
                &vec!["function public.message_total()".to_string()]
            )
        }
        other => panic!("unexpected error {other}"),
    }
    // The session's search_path is restored after the load.
    let path: String = c.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(path, "\"$user\", public");
}

#[tokio::test]
async fn two_tables_swap_together_with_a_key_and_a_view_between_them() {
    let db = TestDb::new().await;
    let c = db.client().await;
    schema(&db, &c).await;
    // message_reads gets a reference column too, a view over both tables, and
    // a shadow whose key to chat_messages points at the source (as the DDL
    // generator leaves an outgoing key to another table).
    c.batch_execute(
        r#"
        ALTER TABLE message_reads ADD COLUMN reader_id integer REFERENCES users(id);
        UPDATE message_reads SET reader_id = 2;
        CREATE VIEW reads_by_author AS
            SELECT r.message_id, m.user_id AS author, r.reader_id
              FROM message_reads r JOIN chat_messages m ON m.id = r.message_id;
        CREATE TABLE _rekey_new_message_reads (
            message_id bigint NOT NULL,
            reader text NOT NULL,
            reader_id uuid,
            CONSTRAINT _rekey_new_message_reads_pkey PRIMARY KEY (message_id, reader)
        );
        INSERT INTO _rekey_new_message_reads
             SELECT r.message_id, r.reader, u.uuid FROM message_reads r LEFT JOIN users u ON u.id = r.reader_id;
        ALTER TABLE _rekey_new_message_reads ADD CONSTRAINT message_reads_message_id_fkey
            FOREIGN KEY (message_id) REFERENCES chat_messages(id) NOT VALID;
        ALTER TABLE _rekey_new_message_reads ADD CONSTRAINT message_reads_reader_id_fkey
            FOREIGN KEY (reader_id) REFERENCES users(uuid) NOT VALID;
        "#,
    )
    .await
    .unwrap();
    let reads = QualifiedName::new("public", "message_reads");
    let reads_shadow = QualifiedName::new("public", "_rekey_new_message_reads");

    let mut tx_client = db.client().await;
    let txn = tx_client.transaction().await.unwrap();
    txn.batch_execute(
        "LOCK TABLE public.chat_messages, public._rekey_new_chat_messages, public.message_reads, public._rekey_new_message_reads IN ACCESS EXCLUSIVE MODE",
    )
    .await
    .unwrap();
    let d1 = load_dependents(&txn, &src(), &shadow()).await.unwrap();
    let d2 = load_dependents(&txn, &reads, &reads_shadow).await.unwrap();
    let (n1, n2) = (SwapNames::derive(&src()), SwapNames::derive(&reads));
    let swap = swap_sql_many(&[(&d1, &n1), (&d2, &n2)]);
    execute_swap(&txn, &swap).await.unwrap();
    txn.commit().await.unwrap();
    validate_after(&c, &swap.validate, &swap.analyze)
        .await
        .unwrap();

    // Keys: new reads → new messages, old reads → old messages, all valid.
    let keys: Vec<String> = c
        .query(
            "SELECT format('%s %s -> %s %s', conname, conrelid::regclass, confrelid::regclass, convalidated)
               FROM pg_constraint WHERE contype = 'f' AND conname LIKE 'message_reads%' ORDER BY conrelid::regclass::text DESC, conname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        keys,
        vec![
            "message_reads_message_id_fkey message_reads -> chat_messages t",
            "message_reads_reader_id_fkey message_reads -> users t",
            "message_reads_message_id_fkey _rekey_old_message_reads -> _rekey_old_chat_messages t",
            "message_reads_reader_id_fkey _rekey_old_message_reads -> users t",
        ]
    );
    // The view over both returns uuids from both new tables.
    let row = c
        .query_one(
            "SELECT pg_typeof(author)::text, pg_typeof(reader_id)::text, count(*) OVER () FROM reads_by_author LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "uuid");
    assert_eq!(row.get::<_, String>(1), "uuid");
    assert_eq!(row.get::<_, i64>(2), 3);
    let bad = c
        .execute(
            "INSERT INTO message_reads (message_id, reader) VALUES (424242, 'z')",
            &[],
        )
        .await
        .expect_err("key to the new chat_messages");
    assert_eq!(bad.as_db_error().map(|d| d.code().code()), Some("23503"));
}

/// The cutover builds the swap before it takes its locks and trusts that
/// build only when the catalog fingerprint is unchanged under the locks: the
/// fingerprint must change with everything the swap carries, and must not
/// change with what an application does all day.
#[tokio::test]
async fn fingerprint_changes_with_every_carried_dependent_and_only_then() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let roles = schema(&db, &c).await;
    let pairs = [(src(), shadow())];
    let fp = || async { fingerprint(&c, &pairs).await.unwrap() };
    let start = fp().await;
    // The prepared form (generic plan, as the cutover runs it) agrees.
    c.batch_execute("SET plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    let prepared = Fingerprinter::prepare(&c).await.unwrap();
    for _ in 0..2 {
        assert_eq!(prepared.take(&c, &pairs).await.unwrap(), start);
    }
    c.batch_execute("RESET plan_cache_mode").await.unwrap();
    // Writes, statistics, vacuum, sequence use: nothing the swap reads.
    for sql in [
        "INSERT INTO chat_messages (chat_id, user_id, body) VALUES (1, 1, 'x')",
        "UPDATE users SET name = 'renamed' WHERE id = 1",
        "INSERT INTO _rekey_new_chat_messages (id, chat_id, user_id, body) OVERRIDING SYSTEM VALUE SELECT 1000, 1, uuid, 'y' FROM users WHERE id = 1",
        "ANALYZE chat_messages",
        "ANALYZE _rekey_new_chat_messages",
        "VACUUM chat_messages",
        "VACUUM (FREEZE) users",
        "SELECT nextval('chat_messages_seq_no_seq')",
        "CREATE TABLE unrelated (id int)",
        "GRANT SELECT ON unrelated TO PUBLIC",
    ] {
        c.batch_execute(sql).await.unwrap();
        assert_eq!(fp().await, start, "{sql}");
    }
    let reader = &roles.reader;
    let mut last = start;
    for ddl in [
        format!("GRANT SELECT ON chat_messages TO {reader}"),
        format!("GRANT UPDATE (body) ON chat_messages TO {reader}"),
        format!("GRANT SELECT ON _rekey_new_chat_messages TO {reader}"),
        format!("ALTER TABLE chat_messages OWNER TO {reader}"),
        "COMMENT ON TABLE chat_messages IS 'changed'".into(),
        "COMMENT ON COLUMN chat_messages.chat_id IS 'chat'".into(),
        "COMMENT ON CONSTRAINT chat_messages_body_check ON chat_messages IS 'short'".into(),
        "COMMENT ON CONSTRAINT chat_messages_user_id_fkey ON chat_messages IS 'author'".into(),
        "COMMENT ON TRIGGER chat_messages_audit ON chat_messages IS 'audit'".into(),
        "ALTER TABLE chat_messages ENABLE TRIGGER chat_messages_refuse".into(),
        "CREATE TRIGGER chat_messages_audit2 AFTER UPDATE ON chat_messages FOR EACH ROW EXECUTE FUNCTION audit_fn()".into(),
        "ALTER FUNCTION audit_fn() RENAME TO audit_fn_renamed".into(),
        format!("CREATE POLICY late ON chat_messages FOR UPDATE TO {reader} USING (true)"),
        "ALTER POLICY chat_one ON chat_messages USING (chat_id = 2)".into(),
        "ALTER TABLE chat_messages FORCE ROW LEVEL SECURITY".into(),
        "CREATE VIEW chat_messages_v3 AS SELECT id FROM chat_messages_v2".into(),
        "COMMENT ON VIEW chat_messages_v2 IS 'second'".into(),
        format!("GRANT SELECT ON chat_messages_v2 TO {reader}"),
        "CREATE VIEW chat_authors AS SELECT m.id, u.name FROM chat_messages m JOIN users u ON u.id = m.user_id".into(),
        "ALTER TABLE users RENAME COLUMN name TO full_name".into(),
        "CREATE INDEX chat_messages_body_idx ON chat_messages (body)".into(),
        "ALTER INDEX chat_messages_user_idx RENAME TO chat_messages_user_idx2".into(),
        "CREATE INDEX _rekey_new_chat_messages_body_idx ON _rekey_new_chat_messages (body)".into(),
        "ALTER PUBLICATION app_pub DROP TABLE chat_messages".into(),
        "CREATE PUBLICATION late_pub FOR TABLE _rekey_new_chat_messages".into(),
        "ALTER TABLE message_reads DROP CONSTRAINT message_reads_message_id_fkey".into(),
        "ALTER TABLE chat_messages REPLICA IDENTITY FULL".into(),
        "ALTER SEQUENCE chat_messages_seq_no_seq INCREMENT BY 2".into(),
        "ALTER TABLE chat_messages ALTER COLUMN created_at SET DEFAULT now() - interval '1 second'".into(),
        "ALTER TABLE chat_messages ADD COLUMN late text".into(),
    ] {
        c.batch_execute(&ddl).await.unwrap();
        let now = fp().await;
        assert_ne!(now, last, "{ddl}");
        last = now;
    }
    // And stable again once the DDL stops.
    c.batch_execute("INSERT INTO chats (title) VALUES ('three'); ANALYZE chat_messages")
        .await
        .unwrap();
    assert_eq!(fp().await, last);
}
