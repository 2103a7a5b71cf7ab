//! Pure SQL generation for the shadow table.
//!
//! Nothing here talks to the server: every function turns a
//! [`TableDetail`] (read by [`crate::plan::catalog`]) and the [`ParentSpec`] into
//! statements. Identifiers go through [`quote_ident`] / [`QualifiedName::quoted`];
//! the only values pasted into SQL are comments, through [`quote_literal`]
//! (DDL cannot take parameters). Expressions and definitions come from the
//! server with `search_path = ''`, so they are schema-qualified and mean the
//! same in any session.
//!
//! # Naming rule
//!
//! A derived name is `prefix + original`, in the original's schema:
//! - shadow table: `_rekey_new_<table>` ([`shadow_name`]);
//! - the source after cutover: `_rekey_old_<table>` ([`old_name`]);
//! - shadow indexes and index-backed constraints (primary key, UNIQUE,
//!   EXCLUDE): `_rekey_new_<original index or constraint name>`
//!   ([`shadow_object_name`]), because index names share the schema's relation
//!   namespace with the source's. CHECK and FOREIGN KEY constraints are
//!   per-table and keep their original names.
//!
//! When `prefix + original` exceeds PostgreSQL's 63-byte identifier limit
//! (`NAMEDATALEN - 1`), the original is cut to the longest prefix that ends on a
//! UTF-8 character boundary and leaves room for `_` and 8 hexadecimal digits of
//! the 64-bit FNV-1a hash of the whole original name (its low 32 bits):
//! `_rekey_new_<cut original>_<hash>`, at most 63 bytes. The hash keeps two
//! long names with a common beginning apart and is stable across versions and
//! machines (FNV-1a is fixed, unlike `std`'s hasher), so any process derives the
//! same name. Names that fit are never hashed, so short names stay readable.
//!
//! # Shadow shape
//!
//! [`create_shadow`]: same columns in the same order with the same types (each
//! reference column becomes `uuid` under its own name), collations, defaults,
//! NOT NULL, identity and stored generated columns, validated CHECK
//! constraints, the primary key (or, without one, the replica identity index:
//! the apply engine needs the row key from the start), reloptions, tablespace,
//! replica identity setting, table and column comments.
//!
//! A reference column loses its default (an integer expression cannot default
//! a uuid); the preflight warns about it.
//!
//! [`post_copy`]: everything that is cheaper to build once after the bulk copy:
//! secondary indexes (re-targeted `pg_get_indexdef` text, so operator classes,
//! INCLUDE, WITH, predicates and expressions are kept), UNIQUE and EXCLUDE
//! constraints, CHECK constraints that were NOT VALID on the source, CLUSTER
//! and replica identity on a secondary index, and foreign keys, all `NOT VALID`:
//! reference columns to `parent(uuid_column)`, every other outgoing key as it
//! was (a key to the table itself re-targeted to the shadow). A reference
//! column inside a composite index or constraint simply has another type: the
//! definition names columns, not types. Plain `CREATE INDEX` takes a SHARE lock
//! on the shadow only (it blocks the apply engine, not the application);
//! `ADD FOREIGN KEY … NOT VALID` takes a brief SHARE ROW EXCLUSIVE lock on the
//! referenced table, so run it with a `lock_timeout`. Foreign keys are
//! triggers: an apply session with `session_replication_role = replica` does not
//! check them, which is right because the source already did.
//!
//! # Identity columns and sequences (what cutover must do)
//!
//! The shadow's identity column gets its own sequence with the source's
//! options, so it starts where the source's started: rows copied and streamed
//! carry their values explicitly (COPY always does; an apply INSERT needs
//! `OVERRIDING SYSTEM VALUE` for `GENERATED ALWAYS`), and the shadow's sequence
//! is never used before cutover. Under the cutover lock, after the drain and
//! before the rename, run [`identity_catch_up`]: it sets each shadow sequence
//! to the source sequence's `last_value`/`is_called`, so the first insert after
//! the swap does not collide. A `serial` column's default names the source's
//! sequence, which the shadow shares; that sequence is OWNED BY the old table,
//! so cutover must move its ownership ([`sequence_ownership_moves`]) or dropping
//! the old table would drop it. [`renames`] lists the shadow object names to
//! restore to the original names after the swap.

use crate::pg::{quote_ident, quote_literal, QualifiedName};
use crate::plan::catalog::TableDetail;
use crate::plan::model::ParentSpec;

/// PostgreSQL's identifier limit in bytes (`NAMEDATALEN - 1`).
pub const MAX_IDENT_BYTES: usize = 63;
/// Prefix of shadow tables and of their indexes and index-backed constraints.
pub const SHADOW_PREFIX: &str = "_rekey_new_";
/// Prefix of a source table after cutover.
pub const OLD_PREFIX: &str = "_rekey_old_";

/// 64-bit FNV-1a: fixed, so derived names are the same on every machine and version.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `prefix + name`, shortened by the rule in the module docs to fit 63 bytes.
pub fn derived_name(prefix: &str, name: &str) -> String {
    if prefix.len() + name.len() <= MAX_IDENT_BYTES {
        return format!("{prefix}{name}");
    }
    let room = MAX_IDENT_BYTES.saturating_sub(prefix.len() + 9);
    let mut cut = room.min(name.len());
    while cut > 0 && !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = name.get(..cut).unwrap_or("");
    format!(
        "{prefix}{head}_{:08x}",
        fnv1a(name.as_bytes()) & 0xffff_ffff
    )
}

/// The shadow table of `table`: same schema, `_rekey_new_<name>`.
pub fn shadow_name(table: &QualifiedName) -> QualifiedName {
    QualifiedName::new(
        table.schema.clone(),
        derived_name(SHADOW_PREFIX, &table.name),
    )
}

/// Where cutover moves the source table: same schema, `_rekey_old_<name>`.
pub fn old_name(table: &QualifiedName) -> QualifiedName {
    QualifiedName::new(table.schema.clone(), derived_name(OLD_PREFIX, &table.name))
}

/// The name on the shadow of an index or index-backed constraint.
pub fn shadow_object_name(original: &str) -> String {
    derived_name(SHADOW_PREFIX, original)
}

/// The shadow's `CREATE TABLE` and what goes with it before the copy; see the
/// module docs. `parent` is taken for symmetry with [`post_copy`]: the table's
/// shape does not depend on it (reference columns are `uuid` whatever the key).
pub fn create_shadow(table: &TableDetail, parent: &ParentSpec) -> Vec<String> {
    let _ = parent;
    let shadow = table.spec.shadow.quoted();
    let mut elements = Vec::new();
    for (spec, detail) in table.spec.columns.iter().zip(table.columns.iter()) {
        let mut col = format!("{} {}", quote_ident(&spec.name), spec.shadow_type_sql());
        let is_ref = spec.reference.is_some();
        if let (Some(collation), false) = (&detail.collation, is_ref) {
            col.push_str(&format!(" COLLATE {collation}"));
        }
        if let Some(expr) = &detail.generated_expr {
            col.push_str(&format!(" GENERATED ALWAYS AS ({expr}) STORED"));
        } else if let (Some(id), false) = (&detail.identity, is_ref) {
            col.push_str(&format!(
                " GENERATED {} AS IDENTITY (START WITH {} INCREMENT BY {} MINVALUE {} MAXVALUE {} CACHE {} {})",
                if id.kind == 'a' { "ALWAYS" } else { "BY DEFAULT" },
                id.start,
                id.increment,
                id.min,
                id.max,
                id.cache,
                if id.cycle { "CYCLE" } else { "NO CYCLE" }
            ));
        } else if let (Some(default), false) = (&detail.default, is_ref) {
            col.push_str(&format!(" DEFAULT {default}"));
        }
        if spec.not_null {
            col.push_str(" NOT NULL");
        }
        elements.push(col);
    }
    if let Some(pk) = &table.primary_key {
        elements.push(format!(
            "CONSTRAINT {} {}",
            quote_ident(&shadow_object_name(&pk.name)),
            pk.definition
        ));
    }
    for check in table.checks.iter().filter(|c| c.validated) {
        elements.push(format!(
            "CONSTRAINT {} {}",
            quote_ident(&check.name),
            check.definition
        ));
    }
    let mut create = format!(
        "CREATE TABLE {shadow} (\n    {}\n)",
        elements.join(",\n    ")
    );
    if !table.reloptions.is_empty() {
        let opts: Vec<String> = table
            .reloptions
            .iter()
            .map(|o| match o.split_once('=') {
                Some((k, v)) => format!("{} = {}", quote_ident(k), quote_literal(v)),
                None => quote_ident(o),
            })
            .collect();
        create.push_str(&format!(" WITH ({})", opts.join(", ")));
    }
    if let Some(ts) = &table.tablespace {
        create.push_str(&format!(" TABLESPACE {}", quote_ident(ts)));
    }
    let mut out = vec![create];
    // Without a primary key the replica identity index is the row key: the apply
    // engine needs it from the first streamed change.
    if table.primary_key.is_none() {
        if let Some(idx) = table.key_index() {
            let name = shadow_object_name(&idx.name);
            out.push(format!(
                "CREATE UNIQUE INDEX {} ON {shadow} {}",
                quote_ident(&name),
                idx.using_clause
            ));
            out.push(format!(
                "ALTER TABLE {shadow} REPLICA IDENTITY USING INDEX {}",
                quote_ident(&name)
            ));
        }
    }
    match table.replica_identity.as_str() {
        "f" => out.push(format!("ALTER TABLE {shadow} REPLICA IDENTITY FULL")),
        "n" => out.push(format!("ALTER TABLE {shadow} REPLICA IDENTITY NOTHING")),
        _ => {}
    }
    if let Some(comment) = &table.comment {
        out.push(format!(
            "COMMENT ON TABLE {shadow} IS {}",
            quote_literal(comment)
        ));
    }
    for detail in &table.columns {
        if let Some(comment) = &detail.comment {
            out.push(format!(
                "COMMENT ON COLUMN {shadow}.{} IS {}",
                quote_ident(&detail.name),
                quote_literal(comment)
            ));
        }
    }
    out
}

/// Whether `create_shadow` already built this index.
fn built_with_table(table: &TableDetail, idx: &crate::plan::catalog::IndexDetail) -> bool {
    idx.primary || (table.primary_key.is_none() && idx.replica_identity)
}

/// The shadow's name of an index: the constraint's derived name when it backs one.
fn shadow_index_name(idx: &crate::plan::catalog::IndexDetail) -> String {
    shadow_object_name(idx.constraint.as_deref().unwrap_or(&idx.name))
}

/// Indexes, constraints and foreign keys to build after the copy; see the module docs.
pub fn post_copy(table: &TableDetail) -> Vec<String> {
    let shadow = table.spec.shadow.quoted();
    let mut out = Vec::new();
    for idx in &table.indexes {
        if idx.constraint.is_some() || built_with_table(table, idx) || !idx.valid {
            continue;
        }
        out.push(format!(
            "CREATE {}INDEX {} ON {shadow} {}",
            if idx.unique { "UNIQUE " } else { "" },
            quote_ident(&shadow_index_name(idx)),
            idx.using_clause
        ));
    }
    for k in table.uniques.iter().chain(table.exclusions.iter()) {
        out.push(format!(
            "ALTER TABLE {shadow} ADD CONSTRAINT {} {}",
            quote_ident(&shadow_object_name(&k.name)),
            k.definition
        ));
    }
    for check in table.checks.iter().filter(|c| !c.validated) {
        out.push(format!(
            "ALTER TABLE {shadow} ADD CONSTRAINT {} {}",
            quote_ident(&check.name),
            not_valid(&check.definition)
        ));
    }
    for idx in table.indexes.iter().filter(|i| i.valid) {
        if idx.clustered {
            out.push(format!(
                "ALTER TABLE {shadow} CLUSTER ON {}",
                quote_ident(&shadow_index_name(idx))
            ));
        }
        if idx.replica_identity && !built_with_table(table, idx) {
            out.push(format!(
                "ALTER TABLE {shadow} REPLICA IDENTITY USING INDEX {}",
                quote_ident(&shadow_index_name(idx))
            ));
        }
    }
    out
}

/// The shadow's foreign keys, all `NOT VALID`: each reference column to the
/// parent's uuid column, and every other outgoing key as the source has it.
///
/// These are created **inside the cutover transaction**, not after the copy.
/// A foreign key acts on the referencing table from the *referenced* side:
/// with it in place during streaming, the application's own `DELETE` on a
/// referenced table would cascade into (or be refused because of) shadow rows
/// that the stream has not caught up on yet — changing the shadow behind the
/// apply engine's back, or failing the application's writes. Created under
/// the swap's locks, after the final drain, the keys see exactly the source's
/// rows; they are validated after commit, outside the lock.
pub fn foreign_keys(table: &TableDetail, parent: &ParentSpec) -> Vec<String> {
    let shadow = table.spec.shadow.quoted();
    let mut out = Vec::new();
    for fk in &table.foreign_keys {
        let name = quote_ident(&fk.name);
        if fk.to_parent_key {
            let cols = quote_list(&fk.columns);
            out.push(format!(
                "ALTER TABLE {shadow} ADD CONSTRAINT {name} FOREIGN KEY ({cols}) REFERENCES {} ({}){} NOT VALID",
                parent.table.quoted(),
                quote_ident(&parent.uuid_column),
                fk_tail(fk)
            ));
        } else if fk.self_reference {
            out.push(format!(
                "ALTER TABLE {shadow} ADD CONSTRAINT {name} FOREIGN KEY ({}) REFERENCES {shadow} ({}){}{} NOT VALID",
                quote_list(&fk.columns),
                quote_list(&fk.referenced_columns),
                if fk.match_type == 'f' { " MATCH FULL" } else { "" },
                fk_tail(fk)
            ));
        } else {
            out.push(format!(
                "ALTER TABLE {shadow} ADD CONSTRAINT {name} {}",
                not_valid(&fk.definition)
            ));
        }
    }
    out
}

fn not_valid(definition: &str) -> String {
    if definition.ends_with(" NOT VALID") {
        definition.to_string()
    } else {
        format!("{definition} NOT VALID")
    }
}

fn quote_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| quote_ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

fn action(code: char) -> Option<&'static str> {
    match code {
        'r' => Some("RESTRICT"),
        'c' => Some("CASCADE"),
        'n' => Some("SET NULL"),
        'd' => Some("SET DEFAULT"),
        _ => None, // 'a' NO ACTION is the default
    }
}

/// ` ON UPDATE … ON DELETE … DEFERRABLE …` of a foreign key built from its parts.
fn fk_tail(fk: &crate::plan::catalog::ForeignKey) -> String {
    let mut s = String::new();
    if let Some(a) = action(fk.on_update) {
        s.push_str(&format!(" ON UPDATE {a}"));
    }
    if let Some(a) = action(fk.on_delete) {
        s.push_str(&format!(" ON DELETE {a}"));
    }
    if fk.deferrable {
        s.push_str(" DEFERRABLE");
        if fk.deferred {
            s.push_str(" INITIALLY DEFERRED");
        }
    }
    s
}

/// What an object on the shadow must be renamed to after the swap.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum ObjectRename {
    /// A PRIMARY KEY / UNIQUE / EXCLUDE constraint (renaming it renames its index):
    /// `ALTER TABLE t RENAME CONSTRAINT shadow_name TO original`.
    Constraint {
        /// Name on the shadow.
        shadow_name: String,
        /// The source's name.
        original: String,
    },
    /// A plain index: `ALTER INDEX schema.shadow_name RENAME TO original`.
    Index {
        /// Name on the shadow.
        shadow_name: String,
        /// The source's name.
        original: String,
    },
}

/// The shadow's derived object names and the source names they stand for.
/// Cutover renames the old table's objects away first (the names are taken),
/// then renames these to the originals.
pub fn renames(table: &TableDetail) -> Vec<ObjectRename> {
    let mut out = Vec::new();
    for k in table
        .primary_key
        .iter()
        .chain(table.uniques.iter())
        .chain(table.exclusions.iter())
    {
        out.push(ObjectRename::Constraint {
            shadow_name: shadow_object_name(&k.name),
            original: k.name.clone(),
        });
    }
    for idx in table
        .indexes
        .iter()
        .filter(|i| i.valid && i.constraint.is_none())
    {
        out.push(ObjectRename::Index {
            shadow_name: shadow_object_name(&idx.name),
            original: idx.name.clone(),
        });
    }
    out
}

/// For cutover, under the lock after the drain: set each shadow identity
/// sequence to where the source's is, so inserts after the swap do not collide.
pub fn identity_catch_up(table: &TableDetail) -> Vec<String> {
    let shadow = table.spec.shadow.quoted();
    table
        .spec
        .columns
        .iter()
        .zip(table.columns.iter())
        .filter_map(|(spec, d)| match (&d.identity, &d.owned_sequence, spec.reference) {
            (Some(_), Some(seq), None) => Some(format!(
                "SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence({}, {}), s.last_value, s.is_called) FROM {} s",
                quote_literal(&shadow),
                quote_literal(&spec.name),
                seq.quoted()
            )),
            _ => None,
        })
        .collect()
}

/// For cutover: `serial` sequences the shadow shares through its defaults are
/// owned by the source; move them to the shadow's columns before the old table
/// can be dropped.
pub fn sequence_ownership_moves(table: &TableDetail) -> Vec<String> {
    let shadow = table.spec.shadow.quoted();
    table
        .columns
        .iter()
        .filter(|d| d.identity.is_none())
        .filter_map(|d| {
            d.owned_sequence.as_ref().map(|seq| {
                format!(
                    "ALTER SEQUENCE {} OWNED BY {shadow}.{}",
                    seq.quoted(),
                    quote_ident(&d.name)
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::catalog::{
        CheckConstraint, ColumnDetail, ForeignKey, IdentitySequence, IndexDetail, KeyConstraint,
    };
    use crate::plan::model::{ColumnSpec, IntKind, TableSpec};

    fn parent() -> ParentSpec {
        ParentSpec {
            table: QualifiedName::new("public", "users"),
            oid: 1,
            key_column: "id".into(),
            key_kind: IntKind::Int8,
            uuid_column: "uuid_id".into(),
        }
    }

    fn col(
        name: &str,
        attnum: i16,
        ty: &str,
        reference: Option<IntKind>,
    ) -> (ColumnSpec, ColumnDetail) {
        (
            ColumnSpec {
                name: name.into(),
                attnum,
                type_sql: ty.into(),
                type_oid: 20,
                reference,
                not_null: false,
                generated: false,
                identity: None,
            },
            ColumnDetail {
                name: name.into(),
                typtype: "b".into(),
                default: None,
                generated_expr: None,
                identity: None,
                owned_sequence: None,
                collation: None,
                comment: None,
            },
        )
    }

    fn sessions() -> TableDetail {
        let source = QualifiedName::new("public", "sessions");
        let mut cols = vec![
            col("id", 1, "bigint", None),
            col("user_id", 2, "bigint", Some(IntKind::Int8)),
            col("token", 3, "text", None),
            col("parent_id", 4, "bigint", None),
        ];
        cols[0].0.not_null = true;
        cols[0].0.identity = Some('a');
        cols[0].1.identity = Some(IdentitySequence {
            kind: 'a',
            start: 1,
            increment: 1,
            min: 1,
            max: i64::MAX,
            cache: 1,
            cycle: false,
        });
        cols[0].1.owned_sequence = Some(QualifiedName::new("public", "sessions_id_seq"));
        cols[1].0.not_null = true;
        cols[1].1.default = Some("0".into());
        cols[2].1.collation = Some("pg_catalog.\"C\"".into());
        cols[2].1.comment = Some("it's secret".into());
        let (specs, details): (Vec<_>, Vec<_>) = cols.into_iter().unzip();
        TableDetail {
            spec: TableSpec {
                shadow: shadow_name(&source),
                source,
                oid: 2,
                columns: specs,
                key: vec![0],
            },
            relkind: "r".into(),
            persistence: "p".into(),
            inheritance: false,
            owned: true,
            columns: details,
            checks: vec![
                CheckConstraint {
                    name: "token_len".into(),
                    definition: "CHECK ((length(token) > 3))".into(),
                    validated: true,
                },
                CheckConstraint {
                    name: "later".into(),
                    definition: "CHECK ((id > 0)) NOT VALID".into(),
                    validated: false,
                },
            ],
            primary_key: Some(KeyConstraint {
                name: "sessions_pkey".into(),
                definition: "PRIMARY KEY (id)".into(),
                columns: vec!["id".into()],
                index_name: Some("sessions_pkey".into()),
            }),
            uniques: vec![KeyConstraint {
                name: "sessions_token_key".into(),
                definition: "UNIQUE (token)".into(),
                columns: vec!["token".into()],
                index_name: Some("sessions_token_key".into()),
            }],
            exclusions: vec![],
            indexes: vec![
                IndexDetail {
                    name: "sessions_pkey".into(),
                    unique: true,
                    primary: true,
                    valid: true,
                    replica_identity: false,
                    clustered: false,
                    definition: String::new(),
                    using_clause: "USING btree (id)".into(),
                    key_attnums: vec![1],
                    expressions: false,
                    partial: false,
                    constraint: Some("sessions_pkey".into()),
                },
                IndexDetail {
                    name: "sessions_token_key".into(),
                    unique: true,
                    primary: false,
                    valid: true,
                    replica_identity: false,
                    clustered: false,
                    definition: String::new(),
                    using_clause: "USING btree (token)".into(),
                    key_attnums: vec![3],
                    expressions: false,
                    partial: false,
                    constraint: Some("sessions_token_key".into()),
                },
                IndexDetail {
                    name: "by_user".into(),
                    unique: false,
                    primary: false,
                    valid: true,
                    replica_identity: false,
                    clustered: true,
                    definition: String::new(),
                    using_clause: "USING btree (user_id, token) WHERE (token IS NOT NULL)".into(),
                    key_attnums: vec![2, 3],
                    expressions: false,
                    partial: true,
                    constraint: None,
                },
                IndexDetail {
                    name: "broken".into(),
                    unique: false,
                    primary: false,
                    valid: false,
                    replica_identity: false,
                    clustered: false,
                    definition: String::new(),
                    using_clause: "USING btree (token)".into(),
                    key_attnums: vec![3],
                    expressions: false,
                    partial: false,
                    constraint: None,
                },
            ],
            foreign_keys: vec![
                ForeignKey {
                    name: "sessions_user_id_fkey".into(),
                    columns: vec!["user_id".into()],
                    referenced: QualifiedName::new("public", "users"),
                    referenced_oid: 1,
                    referenced_columns: vec!["id".into()],
                    on_update: 'a',
                    on_delete: 'c',
                    match_type: 's',
                    deferrable: true,
                    deferred: true,
                    validated: true,
                    definition: "FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED".into(),
                    to_parent_key: true,
                    self_reference: false,
                },
                ForeignKey {
                    name: "parent".into(),
                    columns: vec!["parent_id".into()],
                    referenced: QualifiedName::new("public", "sessions"),
                    referenced_oid: 2,
                    referenced_columns: vec!["id".into()],
                    on_update: 'a',
                    on_delete: 'n',
                    match_type: 's',
                    deferrable: false,
                    deferred: false,
                    validated: true,
                    definition: "FOREIGN KEY (parent_id) REFERENCES public.sessions(id) ON DELETE SET NULL".into(),
                    to_parent_key: false,
                    self_reference: true,
                },
                ForeignKey {
                    name: "other".into(),
                    columns: vec!["token".into()],
                    referenced: QualifiedName::new("public", "tokens"),
                    referenced_oid: 3,
                    referenced_columns: vec!["t".into()],
                    on_update: 'a',
                    on_delete: 'a',
                    match_type: 's',
                    deferrable: false,
                    deferred: false,
                    validated: false,
                    definition: "FOREIGN KEY (token) REFERENCES public.tokens(t) NOT VALID".into(),
                    to_parent_key: false,
                    self_reference: false,
                },
            ],
            comment: Some("sessions".into()),
            replica_identity: "d".into(),
            reloptions: vec!["fillfactor=70".into()],
            tablespace: None,
            row_estimate: 0,
            table_bytes: 0,
            index_bytes: 0,
        }
    }

    #[test]
    fn short_names_are_prefixed() {
        assert_eq!(
            shadow_name(&QualifiedName::new("app", "sessions")),
            QualifiedName::new("app", "_rekey_new_sessions")
        );
        assert_eq!(
            old_name(&QualifiedName::new("app", "s")).name,
            "_rekey_old_s"
        );
        let exact = "x".repeat(MAX_IDENT_BYTES - SHADOW_PREFIX.len());
        assert_eq!(
            derived_name(SHADOW_PREFIX, &exact),
            format!("{SHADOW_PREFIX}{exact}")
        );
    }

    #[test]
    fn long_names_are_cut_and_hashed_within_63_bytes() {
        let a = "a".repeat(63);
        let b = format!("{}b", "a".repeat(62));
        let (sa, sb) = (
            derived_name(SHADOW_PREFIX, &a),
            derived_name(SHADOW_PREFIX, &b),
        );
        assert_eq!(sa.len(), MAX_IDENT_BYTES);
        assert_eq!(sb.len(), MAX_IDENT_BYTES);
        assert_ne!(sa, sb, "a common beginning is told apart by the hash");
        assert_eq!(sa, derived_name(SHADOW_PREFIX, &a), "stable");
        assert!(sa.starts_with(SHADOW_PREFIX));
        // Pinned value: the rule must not change between versions (jobs in flight).
        assert_eq!(
            &sa[sa.len() - 9..],
            &format!("_{:08x}", fnv1a(a.as_bytes()) & 0xffff_ffff)
        );
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn multibyte_names_are_cut_on_char_boundaries() {
        // 'é' is 2 bytes, '日' 3: no cut may split them.
        for unit in ["é", "日", "a日é"] {
            let name = unit.repeat(40);
            let d = derived_name(SHADOW_PREFIX, &name);
            assert!(d.len() <= MAX_IDENT_BYTES, "{d} is {} bytes", d.len());
            assert!(d.len() >= MAX_IDENT_BYTES - 3);
            assert!(std::str::from_utf8(d.as_bytes()).is_ok());
        }
    }

    #[test]
    fn shadow_table_keeps_shape_and_turns_references_into_uuid() {
        let sql = create_shadow(&sessions(), &parent());
        let create = &sql[0];
        assert!(
            create.starts_with("CREATE TABLE \"public\".\"_rekey_new_sessions\" ("),
            "{create}"
        );
        assert!(create.contains("\"id\" bigint GENERATED ALWAYS AS IDENTITY (START WITH 1 INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 CACHE 1 NO CYCLE) NOT NULL"), "{create}");
        // The reference: uuid, its integer default dropped, NOT NULL kept.
        assert!(create.contains("\"user_id\" uuid NOT NULL,"), "{create}");
        assert!(
            create.contains("\"token\" text COLLATE pg_catalog.\"C\","),
            "{create}"
        );
        assert!(create.contains("CONSTRAINT \"_rekey_new_sessions_pkey\" PRIMARY KEY (id)"));
        assert!(create.contains("CONSTRAINT \"token_len\" CHECK ((length(token) > 3))"));
        assert!(
            !create.contains("later"),
            "NOT VALID checks wait for post_copy"
        );
        assert!(
            create.ends_with(") WITH (\"fillfactor\" = '70')"),
            "{create}"
        );
        assert!(sql.contains(
            &"COMMENT ON COLUMN \"public\".\"_rekey_new_sessions\".\"token\" IS 'it''s secret'"
                .to_string()
        ));
        assert!(sql.contains(
            &"COMMENT ON TABLE \"public\".\"_rekey_new_sessions\" IS 'sessions'".to_string()
        ));
        // Columns in source order.
        let pos = |c: &str| create.find(c).unwrap();
        assert!(
            pos("\"id\"") < pos("\"user_id\"")
                && pos("\"user_id\"") < pos("\"token\"")
                && pos("\"token\"") < pos("\"parent_id\"")
        );
    }

    #[test]
    fn post_copy_builds_indexes_and_cutover_builds_not_valid_keys() {
        let mut sql = post_copy(&sessions());
        assert!(
            !sql.iter().any(|s| s.contains("FOREIGN KEY")),
            "no key acts on the shadow while streaming"
        );
        sql.extend(foreign_keys(&sessions(), &parent()));
        let s = "\"public\".\"_rekey_new_sessions\"";
        assert_eq!(
            sql,
            vec![
                format!("CREATE INDEX \"_rekey_new_by_user\" ON {s} USING btree (user_id, token) WHERE (token IS NOT NULL)"),
                format!("ALTER TABLE {s} ADD CONSTRAINT \"_rekey_new_sessions_token_key\" UNIQUE (token)"),
                format!("ALTER TABLE {s} ADD CONSTRAINT \"later\" CHECK ((id > 0)) NOT VALID"),
                format!("ALTER TABLE {s} CLUSTER ON \"_rekey_new_by_user\""),
                format!("ALTER TABLE {s} ADD CONSTRAINT \"sessions_user_id_fkey\" FOREIGN KEY (\"user_id\") REFERENCES \"public\".\"users\" (\"uuid_id\") ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED NOT VALID"),
                format!("ALTER TABLE {s} ADD CONSTRAINT \"parent\" FOREIGN KEY (\"parent_id\") REFERENCES {s} (\"id\") ON DELETE SET NULL NOT VALID"),
                format!("ALTER TABLE {s} ADD CONSTRAINT \"other\" FOREIGN KEY (token) REFERENCES public.tokens(t) NOT VALID"),
            ]
        );
    }

    #[test]
    fn without_primary_key_the_replica_identity_index_comes_first() {
        let mut t = sessions();
        t.primary_key = None;
        t.indexes.retain(|i| !i.primary);
        if let Some(i) = t.indexes.iter_mut().find(|i| i.name == "by_user") {
            i.replica_identity = true;
        }
        let sql = create_shadow(&t, &parent());
        assert_eq!(sql[1], "CREATE UNIQUE INDEX \"_rekey_new_by_user\" ON \"public\".\"_rekey_new_sessions\" USING btree (user_id, token) WHERE (token IS NOT NULL)");
        assert_eq!(sql[2], "ALTER TABLE \"public\".\"_rekey_new_sessions\" REPLICA IDENTITY USING INDEX \"_rekey_new_by_user\"");
        let post = post_copy(&t);
        assert!(!post
            .iter()
            .any(|s| s.contains("CREATE INDEX \"_rekey_new_by_user\"")));
        assert!(!post.iter().any(|s| s.contains("REPLICA IDENTITY")));
    }

    #[test]
    fn cutover_helpers() {
        let t = sessions();
        assert_eq!(
            identity_catch_up(&t),
            vec!["SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('\"public\".\"_rekey_new_sessions\"', 'id'), s.last_value, s.is_called) FROM \"public\".\"sessions_id_seq\" s".to_string()]
        );
        assert!(
            sequence_ownership_moves(&t).is_empty(),
            "identity sequences are not shared"
        );
        let r = renames(&t);
        assert_eq!(r.len(), 3);
        assert!(r.contains(&ObjectRename::Index {
            shadow_name: "_rekey_new_by_user".into(),
            original: "by_user".into()
        }));
    }
}
