//! Shadow DDL executed on the real server, compared with the source in the catalogs.

use pg_rekey::ddl::{create_shadow, foreign_keys, post_copy, shadow_name, MAX_IDENT_BYTES};
use pg_rekey::pg::{quote_ident, QualifiedName};
use pg_rekey::plan::catalog::{discover_tables, load_parent, load_table};
use tokio_postgres::Client;

use crate::support::TestDb;

const POSTS: &str = r#"
CREATE TABLE users (id bigint PRIMARY KEY, uuid_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid());
INSERT INTO users (id) VALUES (1), (2);
CREATE TABLE categories (code text PRIMARY KEY);
INSERT INTO categories VALUES ('news');
CREATE TYPE mood AS ENUM ('ok', 'sad');
CREATE TABLE posts (
    id bigint GENERATED ALWAYS AS IDENTITY (START WITH 10 INCREMENT BY 5) PRIMARY KEY,
    author_id integer NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    junk int,
    editor_id bigint REFERENCES users (id) ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED,
    title text COLLATE "C" NOT NULL DEFAULT 'untitled',
    title_len int GENERATED ALWAYS AS (length(title)) STORED,
    category text REFERENCES categories (code) ON UPDATE CASCADE,
    parent_id bigint REFERENCES posts (id),
    feeling mood DEFAULT 'ok',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT title_not_blank CHECK (title <> ''),
    CONSTRAINT posts_author_title UNIQUE (author_id, title)
) WITH (fillfactor = 80);
ALTER TABLE posts DROP COLUMN junk;
ALTER TABLE posts ADD CONSTRAINT later_check CHECK (title_len < 1000) NOT VALID;
CREATE INDEX posts_by_author ON posts (author_id, created_at DESC) WHERE editor_id IS NOT NULL;
CREATE INDEX posts_lower_title ON posts (lower(title)) INCLUDE (category);
COMMENT ON TABLE posts IS 'Blog posts';
COMMENT ON COLUMN posts.author_id IS 'who wrote it';
COMMENT ON COLUMN posts.title IS 'it''s the title';
INSERT INTO posts (author_id, editor_id, title, category) VALUES (1, 2, 'hello', 'news'), (2, NULL, 'again', NULL);
"#;

/// Per column: name, type, not null, identity, generated, default, collation, comment.
type ColumnRow = (
    String,
    String,
    bool,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

async fn columns(c: &Client, table: &QualifiedName) -> Vec<ColumnRow> {
    c.query(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                a.attidentity::text, a.attgenerated::text, pg_get_expr(d.adbin, d.adrelid),
                CASE WHEN a.attcollation <> t.typcollation THEN co.collname::text END,
                col_description(a.attrelid, a.attnum)
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         LEFT JOIN pg_collation co ON co.oid = a.attcollation
         WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attnum",
        &[&table.quoted()],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
            r.get(7),
        )
    })
    .collect()
}

/// (name, definition, validated) of constraints of one kind.
async fn constraints(c: &Client, table: &QualifiedName, kind: &str) -> Vec<(String, String, bool)> {
    c.query(
        "SELECT conname::text, pg_get_constraintdef(oid), convalidated FROM pg_constraint
         WHERE conrelid = $1::text::regclass AND contype = $2::text::\"char\" ORDER BY conname",
        &[&table.quoted(), &kind],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Index definitions from USING on, sorted, and index names.
async fn indexes(c: &Client, table: &QualifiedName) -> (Vec<String>, Vec<String>) {
    let rows = c
        .query(
            "SELECT ic.relname::text, substring(pg_get_indexdef(i.indexrelid) from ' USING .*'), i.indisunique
             FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
             WHERE i.indrelid = $1::text::regclass ORDER BY 2",
            &[&table.quoted()],
        )
        .await
        .unwrap();
    (
        rows.iter()
            .map(|r| {
                format!(
                    "{}{}",
                    if r.get::<_, bool>(2) { "UNIQUE" } else { "" },
                    r.get::<_, String>(1)
                )
            })
            .collect(),
        rows.iter().map(|r| r.get(0)).collect(),
    )
}

async fn exec_all(c: &Client, statements: &[String]) {
    for s in statements {
        c.batch_execute(s)
            .await
            .unwrap_or_else(|e| panic!("{s}: {}", pg_rekey::error::chain(&e)));
    }
}

#[tokio::test]
async fn the_shadow_has_the_source_shape_with_uuid_references() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(POSTS).await.unwrap();
    let users = QualifiedName::new("public", "users");
    let posts = QualifiedName::new("public", "posts");
    let parent = load_parent(&c, &users, "uuid_id").await.unwrap();
    let detail = load_table(&c, &posts, &parent).await.unwrap();
    let shadow = detail.spec.shadow.clone();
    assert_eq!(shadow, shadow_name(&posts));

    exec_all(&c, &create_shadow(&detail, &parent)).await;

    // Columns: same names, order, defaults, NOT NULL, identity, generated,
    // collation, comments; the two references are uuid now.
    let mut expected = columns(&c, &posts).await;
    for col in expected.iter_mut() {
        if col.0 == "author_id" || col.0 == "editor_id" {
            col.1 = "uuid".into();
        }
        // GENERATED ALWAYS becomes BY DEFAULT on the shadow (the apply must
        // update it); the swap restores ALWAYS.
        if col.3 == "a" {
            col.3 = "d".into();
        }
    }
    let got = columns(&c, &shadow).await;
    assert_eq!(got, expected);
    let names: Vec<&str> = got.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "author_id",
            "editor_id",
            "title",
            "title_len",
            "category",
            "parent_id",
            "feeling",
            "created_at"
        ]
    );
    // Before post_copy: the primary key and the validated CHECK only.
    assert_eq!(indexes(&c, &shadow).await.0, ["UNIQUE USING btree (id)"]);
    assert_eq!(
        constraints(&c, &shadow, "c").await,
        [(
            "title_not_blank".into(),
            "CHECK ((title <> ''::text))".into(),
            true
        )]
    );
    let (comment, opts): (Option<String>, Option<Vec<String>>) = {
        let r = c
            .query_one(
                "SELECT obj_description($1::text::regclass, 'pg_class'), reloptions FROM pg_class WHERE oid = $1::text::regclass",
                &[&shadow.quoted()],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(comment.as_deref(), Some("Blog posts"));
    assert_eq!(opts, Some(vec!["fillfactor=80".to_string()]));

    exec_all(&c, &post_copy(&detail)).await;
    exec_all(&c, &foreign_keys(&detail, &parent)).await;

    let (src_idx, _) = indexes(&c, &posts).await;
    let (shadow_idx, shadow_idx_names) = indexes(&c, &shadow).await;
    assert_eq!(shadow_idx, src_idx, "same indexes, definitions re-targeted");
    assert!(
        shadow_idx_names
            .iter()
            .all(|n| n.starts_with("_rekey_new_")),
        "{shadow_idx_names:?}"
    );
    assert_eq!(
        constraints(&c, &shadow, "c").await,
        constraints(&c, &posts, "c").await
    );
    assert_eq!(
        constraints(&c, &shadow, "u").await,
        [(
            "_rekey_new_posts_author_title".into(),
            "UNIQUE (author_id, title)".into(),
            true
        )]
    );
    let fks = constraints(&c, &shadow, "f").await;
    assert_eq!(
        fks,
        [
            (
                "posts_author_id_fkey".into(),
                "FOREIGN KEY (author_id) REFERENCES users(uuid_id) ON DELETE CASCADE NOT VALID".into(),
                false
            ),
            (
                "posts_category_fkey".into(),
                "FOREIGN KEY (category) REFERENCES categories(code) ON UPDATE CASCADE NOT VALID".into(),
                false
            ),
            (
                "posts_editor_id_fkey".into(),
                "FOREIGN KEY (editor_id) REFERENCES users(uuid_id) ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED NOT VALID".into(),
                false
            ),
            (
                "posts_parent_id_fkey".into(),
                "FOREIGN KEY (parent_id) REFERENCES _rekey_new_posts(id) NOT VALID".into(),
                false
            ),
        ]
    );
    // The reference keys work on uuid: a known user's uuid goes in, an unknown one does not.
    let ok = c
        .execute(
            "INSERT INTO _rekey_new_posts (id, author_id, title)
             OVERRIDING SYSTEM VALUE SELECT 10, uuid_id, 'copied' FROM users WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(ok, 1);
    let bad = c
        .execute(
            "INSERT INTO _rekey_new_posts (id, author_id, title) OVERRIDING SYSTEM VALUE
             VALUES (11, gen_random_uuid(), 'orphan')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(bad.code().map(|s| s.code()), Some("23503"), "{bad}");
    let len: i32 = c
        .query_one("SELECT title_len FROM _rekey_new_posts WHERE id = 10", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(len, 6, "generated column computed on the shadow");

    // The shadow is never discovered as a referencing table.
    assert_eq!(
        discover_tables(&c, &parent).await.unwrap(),
        vec![posts.clone()]
    );
}

#[tokio::test]
async fn long_and_multibyte_names_give_valid_distinct_shadows() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, uuid uuid NOT NULL UNIQUE)")
        .await
        .unwrap();
    let names = [
        "a".repeat(MAX_IDENT_BYTES),
        format!("{}b", "a".repeat(MAX_IDENT_BYTES - 1)),
        "日本語".repeat(7),             // 63 bytes of 3-byte characters
        format!("é{}", "x".repeat(61)), // 63 bytes, a 2-byte character first
    ];
    for n in &names {
        assert_eq!(n.len(), MAX_IDENT_BYTES);
        c.batch_execute(&format!(
            "CREATE TABLE {} (id int PRIMARY KEY, user_id bigint REFERENCES users (id));
             CREATE INDEX ON {} (user_id);",
            quote_ident(n),
            quote_ident(n)
        ))
        .await
        .unwrap();
    }
    let parent = load_parent(&c, &QualifiedName::new("public", "users"), "uuid")
        .await
        .unwrap();
    let mut shadows = Vec::new();
    for n in &names {
        let t = QualifiedName::new("public", n.clone());
        let d = load_table(&c, &t, &parent).await.unwrap();
        exec_all(&c, &create_shadow(&d, &parent)).await;
        exec_all(&c, &post_copy(&d)).await;
        // The server kept the name as given (it would silently truncate a longer one).
        let stored: String = c
            .query_one(
                "SELECT relname::text FROM pg_class WHERE oid = $1::text::regclass",
                &[&d.spec.shadow.quoted()],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(stored, d.spec.shadow.name);
        assert!(stored.len() <= MAX_IDENT_BYTES);
        assert!(stored.starts_with("_rekey_new_"));
        shadows.push(stored);
    }
    let mut unique = shadows.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "{shadows:?}");
    let report_names = discover_tables(&c, &parent).await.unwrap();
    assert_eq!(
        report_names.len(),
        names.len(),
        "shadows are not discovered"
    );
}
