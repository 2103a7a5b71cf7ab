//! Pure generation of the swap statements, and the matching of shadow
//! indexes and constraints to the source's.
//!
//! Statement order (step by step across all tables of one swap):
//!
//! 1. drop dependent views, dependents first (each view once, even when it
//!    reads several swapped tables);
//! 2. drop incoming foreign keys (not those on a swapped source: old→old stays);
//! 3. take the sources out of their (non-pg-rekey) publications;
//! 4. rename each source to its old name;
//! 5. rename the old tables' indexes, index-backed constraints and identity
//!    sequences out of the way (their names are schema-wide);
//! 6. rename each shadow to its source's name;
//! 7. rename the new tables' matched indexes, constraints and identity
//!    sequences to the original names;
//! 8. per new table: owner, sequences, privileges, row-level security and
//!    policies, triggers, replica identity, publications, extended
//!    statistics (the old table's renamed out of the way in step 5, their
//!    names being schema-wide), comments;
//! 9. re-add the incoming foreign keys `NOT VALID` (their text names the
//!    source, which is now the new table);
//! 10. re-create the views, dependencies first, with options, owner,
//!     privileges, comments, defaults, triggers, rules and (materialized) indexes.
//!
//! Why this order: names are only taken after they were freed (4–5 before
//! 6–7); the owner is set before `OWNED BY` (a sequence and its table must have
//! the same owner) and before privileges (changing the owner rewrites the
//! ACL); views come last because their definitions must type-check against
//! the new columns.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::pg::{quote_ident, quote_literal, QualifiedName};

use super::{
    old_object_name, Acl, Dependents, Grantee, ObjectKind, ObjectRename, Policy, SequenceCarry,
    SequenceOptions, SwapNames, SwapSql, SwapStep, Trigger, ValidateConstraint, View,
};

/// A source or shadow index or constraint, with its matching key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogObject {
    /// Index, index-backed constraint or other constraint.
    pub kind: ObjectKind,
    /// Its name.
    pub name: String,
    /// The matching key ([`index_key`], [`constraint_key`]).
    pub key: String,
    /// What the object is made of, independent of how the server prints
    /// it: for an index its uniqueness, access method, key and INCLUDE
    /// column names (empty for an expression), number of key columns and
    /// whether it is partial; for a constraint its type and column names.
    /// A shadow object paired by construction must have the same shape.
    pub shape: String,
    /// `convalidated` (always true for indexes).
    pub validated: bool,
    /// Its comment.
    pub comment: Option<String>,
}

/// Matching key of an index: `pg_get_indexdef` text with everything up to and
/// including the table name cut off (`CREATE [UNIQUE] INDEX name ON [ONLY]
/// table `), the uniqueness kept. `table` is the table as the server prints
/// it (`oid::regclass::text` under the same `search_path`). When the table
/// name is not found, the whole definition is the key (it then matches
/// nothing, which is safe: the object just keeps its name).
pub fn index_key(definition: &str, table: &str) -> String {
    let unique = definition.starts_with("CREATE UNIQUE INDEX ");
    for marker in [format!(" ON ONLY {table} "), format!(" ON {table} ")] {
        if let Some(pos) = definition.find(&marker) {
            let tail = definition.get(pos + marker.len()..).unwrap_or("");
            return format!("{}{tail}", if unique { "UNIQUE " } else { "" });
        }
    }
    definition.to_string()
}

/// Matching key of a non-foreign-key constraint: its type and
/// `pg_get_constraintdef` text without a trailing ` NOT VALID`. (Foreign
/// keys are keyed in SQL by columns, target and actions; see the catalog
/// module.)
pub fn constraint_key(contype: &str, definition: &str) -> String {
    let def = definition.strip_suffix(" NOT VALID").unwrap_or(definition);
    format!("{contype}|{def}")
}

/// Pair each source object with the shadow object built from it.
///
/// **By construction first.** The shadow DDL ([`crate::ddl`]) names the
/// shadow's index or index-backed constraint built from source object `n`
/// [`crate::naming::shadow_object_name`]`(n)`, and keeps a CHECK or FOREIGN KEY
/// constraint's own name; NOT NULL constraints (catalogued from 18 on) are
/// named by the server after the shadow table, which gives the same derived
/// name. So the shadow object with that name, of the same kind and the same
/// [`CatalogObject::shape`], is the source object's counterpart — whatever
/// text `pg_get_indexdef` prints for either (an index built from a printed
/// predicate can print differently from the one it was built from: the casts
/// inside `ANY (ARRAY[…])` move).
///
/// **Then by key**, for the objects left: equal kind and key
/// ([`index_key`], [`constraint_key`], a foreign key's columns, target and
/// actions), one to one, duplicates in name order. This only serves objects
/// pg-rekey did not build (created on the shadow by hand under another
/// name).
///
/// Returns the pairs and the names of source objects left without a partner.
pub fn match_objects(
    source: &[CatalogObject],
    shadow: &[CatalogObject],
) -> (Vec<ObjectRename>, Vec<String>) {
    let kind_no = |k: ObjectKind| match k {
        ObjectKind::Index => 0u8,
        ObjectKind::IndexConstraint => 1,
        ObjectKind::Constraint => 2,
    };
    let mut source_sorted: Vec<&CatalogObject> = source.iter().collect();
    source_sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let pair = |s: &CatalogObject, h: &CatalogObject| ObjectRename {
        kind: s.kind,
        original: s.name.clone(),
        shadow: h.name.clone(),
        comment: s.comment.clone(),
        validate: s.validated && !h.validated,
    };

    // By construction: the name the shadow DDL gave the object built from `s`.
    let mut taken: HashSet<&str> = HashSet::new();
    let mut pairs = Vec::new();
    let mut rest: Vec<&CatalogObject> = Vec::new();
    for s in source_sorted {
        // The shadow DDL's name; or, for a rollback (the old table taking
        // its name back), the name the cutover moved the object to.
        let derived = crate::naming::shadow_object_name(&s.name);
        let moved = old_object_name(&s.name);
        let candidates: Vec<&str> = match s.kind {
            ObjectKind::Constraint => vec![s.name.as_str(), derived.as_str()],
            _ => vec![derived.as_str(), moved.as_str()],
        };
        let built = candidates.iter().find_map(|name| {
            shadow.iter().find(|h| {
                h.name == *name
                    && h.kind == s.kind
                    && h.shape == s.shape
                    && !taken.contains(h.name.as_str())
            })
        });
        match built {
            Some(h) => {
                taken.insert(h.name.as_str());
                pairs.push(pair(s, h));
            }
            None => rest.push(s),
        }
    }

    // By key, among what is left.
    let mut pool: BTreeMap<(u8, &str), Vec<&CatalogObject>> = BTreeMap::new();
    let mut shadow_sorted: Vec<&CatalogObject> = shadow
        .iter()
        .filter(|h| !taken.contains(h.name.as_str()))
        .collect();
    shadow_sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for h in shadow_sorted.into_iter().rev() {
        pool.entry((kind_no(h.kind), h.key.as_str()))
            .or_default()
            .push(h);
    }
    let mut unmatched = Vec::new();
    for s in rest {
        match pool
            .get_mut(&(kind_no(s.kind), s.key.as_str()))
            .and_then(|v| v.pop())
        {
            Some(h) => pairs.push(pair(s, h)),
            None => unmatched.push(s.name.clone()),
        }
    }
    pairs.sort_by(|a, b| a.original.cmp(&b.original));
    (pairs, unmatched)
}

/// The swap of one table; see [`swap_sql_many`].
pub fn swap_sql(deps: &Dependents, names: &SwapNames) -> SwapSql {
    swap_sql_many(&[(deps, names)])
}

fn step(out: &mut Vec<SwapStep>, object: impl Into<String>, sql: impl Into<String>) {
    out.push(SwapStep {
        sql: sql.into(),
        object: object.into(),
    });
}

fn lit_or_null(v: Option<&str>) -> String {
    v.map(quote_literal).unwrap_or_else(|| "NULL".to_string())
}

fn trim_def(def: &str) -> &str {
    def.trim().trim_end_matches(';').trim_end()
}

/// The swap of several tables in one transaction, in the order the module
/// docs give. Every `Dependents` must have been loaded before any statement
/// runs (definitions name tables as they were named then).
pub fn swap_sql_many(tables: &[(&Dependents, &SwapNames)]) -> SwapSql {
    let mut out = Vec::new();
    let mut validate: Vec<ValidateConstraint> = Vec::new();
    let sources: HashSet<&QualifiedName> = tables.iter().map(|(d, _)| &d.source).collect();
    let shadow_to_source: HashMap<&QualifiedName, &Dependents> =
        tables.iter().map(|(d, _)| (&d.shadow, *d)).collect();

    // Views of all tables, once each, dependencies first.
    let views = ordered_views(tables.iter().flat_map(|(d, _)| d.views.iter()));

    // Incoming foreign keys, once each; old→old keys stay as they are.
    let mut seen_fk = HashSet::new();
    let incoming: Vec<_> = tables
        .iter()
        .flat_map(|(d, _)| d.incoming_fks.iter())
        .filter(|fk| !sources.contains(&fk.table))
        .filter(|fk| seen_fk.insert((fk.table.clone(), fk.name.clone())))
        .collect();
    // Keys on a swapped shadow are dropped and re-added: not renamed in step 7.
    let repointed: HashSet<(&QualifiedName, &str)> = incoming
        .iter()
        .filter(|fk| shadow_to_source.contains_key(&fk.table))
        .map(|fk| (&fk.table, fk.name.as_str()))
        .collect();

    // 1. Views, dependents first.
    for v in views.iter().rev() {
        let kw = if v.materialized {
            "MATERIALIZED VIEW"
        } else {
            "VIEW"
        };
        step(
            &mut out,
            format!("view {}", v.name),
            format!("DROP {kw} {}", v.name.quoted()),
        );
    }
    // 2. Incoming foreign keys.
    for fk in &incoming {
        step(
            &mut out,
            format!("foreign key {} on {}", fk.name, fk.table),
            format!(
                "ALTER TABLE {} DROP CONSTRAINT {}",
                fk.table.quoted(),
                quote_ident(&fk.name)
            ),
        );
    }
    // 3. Publications.
    for (d, _) in tables {
        for p in &d.publications {
            step(
                &mut out,
                format!("publication {}", p.publication),
                format!(
                    "ALTER PUBLICATION {} DROP TABLE {}",
                    quote_ident(&p.publication),
                    d.source.quoted()
                ),
            );
        }
    }
    // 4. Sources to their old names.
    for (d, n) in tables {
        step(
            &mut out,
            format!("table {}", d.source),
            format!(
                "ALTER TABLE {} RENAME TO {}",
                d.source.quoted(),
                quote_ident(&n.old_table)
            ),
        );
    }
    // 5. Old tables' schema-wide names out of the way.
    for (d, n) in tables {
        let old = QualifiedName::new(d.source.schema.clone(), n.old_table.clone());
        for r in &d.renames {
            match r.kind {
                ObjectKind::IndexConstraint => step(
                    &mut out,
                    format!("constraint {} on {old}", r.original),
                    format!(
                        "ALTER TABLE {} RENAME CONSTRAINT {} TO {}",
                        old.quoted(),
                        quote_ident(&r.original),
                        quote_ident(&n.object_name(&r.original))
                    ),
                ),
                ObjectKind::Index => step(
                    &mut out,
                    format!("index {}.{}", d.source.schema, r.original),
                    format!(
                        "ALTER INDEX {} RENAME TO {}",
                        QualifiedName::new(d.source.schema.clone(), r.original.clone()).quoted(),
                        quote_ident(&n.object_name(&r.original))
                    ),
                ),
                ObjectKind::Constraint => {}
            }
        }
        for st in &d.statistics {
            step(
                &mut out,
                format!("statistics {}", st.name),
                format!(
                    "ALTER STATISTICS {} RENAME TO {}",
                    st.name.quoted(),
                    quote_ident(&n.object_name(&st.name.name))
                ),
            );
        }
        for s in &d.sequences {
            if let SequenceCarry::Identity { sequence, .. } = s {
                step(
                    &mut out,
                    format!("sequence {sequence}"),
                    format!(
                        "ALTER SEQUENCE {} RENAME TO {}",
                        sequence.quoted(),
                        quote_ident(&n.object_name(&sequence.name))
                    ),
                );
            }
        }
    }
    // 6. Shadows to the sources' names.
    for (d, _) in tables {
        step(
            &mut out,
            format!("table {}", d.shadow),
            format!(
                "ALTER TABLE {} RENAME TO {}",
                d.shadow.quoted(),
                quote_ident(&d.source.name)
            ),
        );
    }
    // 7. New tables' objects to the original names.
    for (d, _) in tables {
        let new = d.source.quoted();
        for r in d.renames.iter().filter(|r| r.original != r.shadow) {
            match r.kind {
                ObjectKind::Index => step(
                    &mut out,
                    format!("index {}.{}", d.source.schema, r.shadow),
                    format!(
                        "ALTER INDEX {} RENAME TO {}",
                        QualifiedName::new(d.source.schema.clone(), r.shadow.clone()).quoted(),
                        quote_ident(&r.original)
                    ),
                ),
                ObjectKind::IndexConstraint | ObjectKind::Constraint => {
                    if repointed.contains(&(&d.shadow, r.shadow.as_str())) {
                        continue;
                    }
                    step(
                        &mut out,
                        format!("constraint {} on {}", r.shadow, d.source),
                        format!(
                            "ALTER TABLE {new} RENAME CONSTRAINT {} TO {}",
                            quote_ident(&r.shadow),
                            quote_ident(&r.original)
                        ),
                    )
                }
            }
        }
        for s in &d.sequences {
            if let SequenceCarry::Identity {
                sequence,
                shadow_sequence: Some(shadow_seq),
                ..
            } = s
            {
                if shadow_seq.name != sequence.name {
                    step(
                        &mut out,
                        format!("sequence {shadow_seq}"),
                        format!(
                            "ALTER SEQUENCE {} RENAME TO {}",
                            shadow_seq.quoted(),
                            quote_ident(&sequence.name)
                        ),
                    );
                }
            }
        }
    }
    // 8. Everything bound to the table itself.
    for (d, n) in tables {
        table_steps(&mut out, d, n);
        for r in d.renames.iter().filter(|r| r.validate) {
            validate.push(ValidateConstraint {
                table: d.source.clone(),
                name: r.original.clone(),
            });
        }
    }
    // 9. Incoming foreign keys, re-added on whatever now holds the name.
    for fk in &incoming {
        let (table, name) = match shadow_to_source.get(&fk.table) {
            Some(b) => {
                let name = b
                    .renames
                    .iter()
                    .find(|r| r.shadow == fk.name)
                    .map(|r| r.original.clone())
                    .unwrap_or_else(|| fk.name.clone());
                (b.source.clone(), name)
            }
            None => (fk.table.clone(), fk.name.clone()),
        };
        let def = fk
            .definition
            .strip_suffix(" NOT VALID")
            .unwrap_or(&fk.definition);
        let not_valid = !fk.partitioned;
        step(
            &mut out,
            format!("foreign key {name} on {table}"),
            format!(
                "ALTER TABLE {} ADD CONSTRAINT {} {def}{}",
                table.quoted(),
                quote_ident(&name),
                if not_valid { " NOT VALID" } else { "" }
            ),
        );
        if let Some(c) = &fk.comment {
            step(
                &mut out,
                format!("foreign key {name} on {table}"),
                format!(
                    "COMMENT ON CONSTRAINT {} ON {} IS {}",
                    quote_ident(&name),
                    table.quoted(),
                    quote_literal(c)
                ),
            );
        }
        if fk.validated && not_valid {
            validate.push(ValidateConstraint { table, name });
        }
    }
    // 10. Views, dependencies first.
    for v in &views {
        view_steps(&mut out, v);
    }

    let mut seen = HashSet::new();
    validate.retain(|v| seen.insert(v.clone()));
    SwapSql {
        steps: out,
        validate,
        analyze: tables.iter().map(|(d, _)| d.source.clone()).collect(),
    }
}

/// Views in dependency order (a view after every view it reads), each once;
/// ties broken by name so the output is deterministic.
fn ordered_views<'a>(views: impl Iterator<Item = &'a View>) -> Vec<&'a View> {
    let mut by_oid: BTreeMap<u32, &View> = BTreeMap::new();
    for v in views {
        by_oid.entry(v.oid).or_insert(v);
    }
    let mut done: HashSet<u32> = HashSet::new();
    let mut order = Vec::with_capacity(by_oid.len());
    let mut pending: Vec<&View> = by_oid.values().copied().collect();
    pending.sort_by(|a, b| a.name.cmp(&b.name));
    while !pending.is_empty() {
        let (ready, rest): (Vec<&View>, Vec<&View>) = pending.into_iter().partition(|v| {
            v.depends_on
                .iter()
                .all(|d| done.contains(d) || !by_oid.contains_key(d) || *d == v.oid)
        });
        if ready.is_empty() {
            // A cycle cannot exist among views; keep going rather than loop.
            order.extend(rest);
            break;
        }
        for v in &ready {
            done.insert(v.oid);
        }
        order.extend(ready);
        pending = rest;
    }
    order
}

fn table_steps(out: &mut Vec<SwapStep>, d: &Dependents, n: &SwapNames) {
    let t = d.source.quoted();
    let label = format!("table {}", d.source);
    // Statements that would change nothing are left out: every one runs
    // under the locks. The shadow is pg-rekey's own: created without row
    // level security, and a table leaving its name in a swap with a way
    // back has it disabled (see `crate::way_back`).
    if d.owner != d.shadow_owner {
        step(
            out,
            &label,
            format!("ALTER TABLE {t} OWNER TO {}", quote_ident(&d.owner)),
        );
    }
    for s in &d.sequences {
        sequence_steps(out, d, n, s);
    }
    let mut revoke: Vec<Grantee> = d.shadow_grantees.clone();
    revoke.push(Grantee::Role(d.shadow_owner.clone()));
    acl_steps(
        out,
        &label,
        &t,
        &d.owner,
        &revoke,
        d.shadow_acl_default,
        &d.acl,
    );
    if d.rls_enabled {
        step(
            out,
            &label,
            format!("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY"),
        );
    }
    if d.rls_forced {
        step(
            out,
            &label,
            format!("ALTER TABLE {t} FORCE ROW LEVEL SECURITY"),
        );
    }
    for p in &d.policies {
        policy_steps(out, &d.source, p);
    }
    for tr in &d.triggers {
        trigger_steps(out, &d.source, "TABLE", tr);
    }
    let ri = match &d.replica_identity {
        super::ReplicaIdentity::Default => "DEFAULT".to_string(),
        super::ReplicaIdentity::Full => "FULL".to_string(),
        super::ReplicaIdentity::Nothing => "NOTHING".to_string(),
        super::ReplicaIdentity::Index(i) => format!("USING INDEX {}", quote_ident(i)),
    };
    step(
        out,
        &label,
        format!("ALTER TABLE {t} REPLICA IDENTITY {ri}"),
    );
    for p in &d.publications {
        let cols = p
            .columns
            .as_ref()
            .map(|c| {
                format!(
                    " ({})",
                    c.iter()
                        .map(|c| quote_ident(c))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .unwrap_or_default();
        let filter = p
            .row_filter
            .as_ref()
            .map(|f| format!(" WHERE ({f})"))
            .unwrap_or_default();
        step(
            out,
            format!("publication {}", p.publication),
            format!(
                "ALTER PUBLICATION {} ADD TABLE {t}{cols}{filter}",
                quote_ident(&p.publication)
            ),
        );
    }
    step(
        out,
        &label,
        format!(
            "COMMENT ON TABLE {t} IS {}",
            lit_or_null(d.comment.as_deref())
        ),
    );
    for (col, c) in &d.column_comments {
        step(
            out,
            &label,
            format!(
                "COMMENT ON COLUMN {t}.{} IS {}",
                quote_ident(col),
                lit_or_null(c.as_deref())
            ),
        );
    }
    for st in &d.statistics {
        let label = format!("statistics {}", st.name);
        step(out, &label, trim_def(&st.definition).to_string());
        if let Some(c) = &st.comment {
            step(
                out,
                &label,
                format!(
                    "COMMENT ON STATISTICS {} IS {}",
                    st.name.quoted(),
                    quote_literal(c)
                ),
            );
        }
    }
    for r in &d.renames {
        let Some(c) = &r.comment else { continue };
        let sql = match r.kind {
            ObjectKind::Index => format!(
                "COMMENT ON INDEX {} IS {}",
                QualifiedName::new(d.source.schema.clone(), r.original.clone()).quoted(),
                quote_literal(c)
            ),
            ObjectKind::IndexConstraint | ObjectKind::Constraint => format!(
                "COMMENT ON CONSTRAINT {} ON {t} IS {}",
                quote_ident(&r.original),
                quote_literal(c)
            ),
        };
        step(out, &label, sql);
    }
}

fn seq_options(o: &SequenceOptions, prefix: &str, sep: &str) -> String {
    [
        format!("{prefix}INCREMENT BY {}", o.increment),
        format!("{prefix}MINVALUE {}", o.min),
        format!("{prefix}MAXVALUE {}", o.max),
        format!("{prefix}START WITH {}", o.start),
        format!("{prefix}CACHE {}", o.cache),
        format!("{prefix}{}", if o.cycle { "CYCLE" } else { "NO CYCLE" }),
    ]
    .join(sep)
}

fn sequence_steps(out: &mut Vec<SwapStep>, d: &Dependents, n: &SwapNames, s: &SequenceCarry) {
    let t = d.source.quoted();
    match s {
        SequenceCarry::Owned {
            column,
            sequence,
            default,
            shadow_sequence,
        } => {
            let label = format!("sequence {sequence}");
            if let Some(def) = default {
                step(
                    out,
                    &label,
                    format!(
                        "ALTER TABLE {t} ALTER COLUMN {} SET DEFAULT {def}",
                        quote_ident(column)
                    ),
                );
            }
            step(
                out,
                &label,
                format!(
                    "ALTER SEQUENCE {} OWNED BY {t}.{}",
                    sequence.quoted(),
                    quote_ident(column)
                ),
            );
            if let Some(own) = shadow_sequence.as_ref().filter(|s| *s != sequence) {
                step(
                    out,
                    format!("sequence {own}"),
                    format!("DROP SEQUENCE {}", own.quoted()),
                );
            }
        }
        SequenceCarry::Identity {
            column,
            kind,
            sequence,
            options,
            shadow_sequence,
        } => {
            let label = format!("identity column {}.{column}", d.source);
            let when = if *kind == 'a' { "ALWAYS" } else { "BY DEFAULT" };
            let sql = match shadow_sequence {
                Some(_) => format!(
                    "ALTER TABLE {t} ALTER COLUMN {} SET GENERATED {when} {}",
                    quote_ident(column),
                    seq_options(options, "SET ", " ")
                ),
                None => format!(
                    "ALTER TABLE {t} ALTER COLUMN {} ADD GENERATED {when} AS IDENTITY (SEQUENCE NAME {} {})",
                    quote_ident(column),
                    sequence.quoted(),
                    seq_options(options, "", " ")
                ),
            };
            step(out, &label, sql);
            let old = QualifiedName::new(sequence.schema.clone(), n.object_name(&sequence.name));
            step(
                out,
                &label,
                format!(
                    "SELECT pg_catalog.setval({}::pg_catalog.regclass, s.last_value, s.is_called) FROM {} AS s",
                    quote_literal(&sequence.quoted()),
                    old.quoted()
                ),
            );
        }
    }
}

const PRIVILEGES: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
    "MAINTAIN",
];

/// Make `target`'s privileges exactly `acl`: revoke everything from `revoke`,
/// the owner and PUBLIC, then grant each entry. A grant made by someone other
/// than the owner is replayed as that grantor (`SET LOCAL ROLE`), after the
/// grant that gave the grantor its grant option.
///
/// When `acl` is the owner's default (`relacl` NULL) and so is the target's
/// (`target_default`: NULL `relacl`, no column ACLs), the table-level ACL is
/// left alone: any `GRANT` or `REVOKE` on the table would store the default
/// explicitly, the same rights but not the same catalog. Column grants only
/// touch `attacl` and are replayed either way.
#[allow(clippy::too_many_arguments)]
fn acl_steps(
    out: &mut Vec<SwapStep>,
    label: &str,
    target: &str,
    owner: &str,
    revoke: &[Grantee],
    target_default: bool,
    acl: &Acl,
) {
    let keep_default = acl.owner_default && target_default;
    let mut from: Vec<Grantee> = revoke.to_vec();
    from.push(Grantee::Public);
    from.push(Grantee::Role(owner.to_string()));
    from.sort();
    from.dedup();
    if !keep_default {
        step(
            out,
            label,
            format!(
                "REVOKE ALL ON TABLE {target} FROM {} CASCADE",
                from.iter().map(Grantee::sql).collect::<Vec<_>>().join(", ")
            ),
        );
    }

    // Table level: (grantor, grantee, grantable) → privileges, one GRANT each.
    // Column level: (grantor, grantee, grantable, privilege) → columns.
    type GrantKey = (String, Grantee, bool);
    let mut table_grants: BTreeMap<GrantKey, Vec<String>> = BTreeMap::new();
    for p in acl
        .table
        .iter()
        .filter(|p| !keep_default && PRIVILEGES.contains(&p.privilege.as_str()))
    {
        table_grants
            .entry((p.grantor.clone(), p.grantee.clone(), p.grantable))
            .or_default()
            .push(p.privilege.clone());
    }
    let mut column_grants: BTreeMap<(GrantKey, String), Vec<String>> = BTreeMap::new();
    for c in &acl.columns {
        for p in c
            .privileges
            .iter()
            .filter(|p| PRIVILEGES.contains(&p.privilege.as_str()))
        {
            column_grants
                .entry((
                    (p.grantor.clone(), p.grantee.clone(), p.grantable),
                    p.privilege.clone(),
                ))
                .or_default()
                .push(c.column.clone());
        }
    }
    // (key, privileges, columns): column grants carry one privilege.
    let mut pending: Vec<(GrantKey, Vec<String>, Option<Vec<String>>)> = table_grants
        .into_iter()
        .map(|(k, privs)| (k, privs, None))
        .collect();
    pending.extend(
        column_grants
            .into_iter()
            .map(|((k, privilege), cols)| (k, vec![privilege], Some(cols))),
    );

    // Who holds which privilege with grant option so far.
    let mut can_grant: HashSet<(String, String)> = HashSet::new();
    while !pending.is_empty() {
        let (ready, rest): (Vec<_>, Vec<_>) =
            pending
                .into_iter()
                .partition(|((grantor, _, _), privs, _)| {
                    grantor == owner
                        || privs
                            .iter()
                            .all(|p| can_grant.contains(&(grantor.clone(), p.clone())))
                });
        let (ready, rest, as_owner) = if ready.is_empty() {
            // Grant option chain that cannot be replayed: grant as the owner.
            (rest, Vec::new(), true)
        } else {
            (ready, rest, false)
        };
        for ((grantor, grantee, grantable), privs, cols) in ready {
            let cols = cols
                .map(|c| {
                    format!(
                        " ({})",
                        c.iter()
                            .map(|c| quote_ident(c))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
                .unwrap_or_default();
            let grant = format!(
                "GRANT {}{cols} ON TABLE {target} TO {}{}",
                privs.join(", "),
                grantee.sql(),
                if grantable { " WITH GRANT OPTION" } else { "" }
            );
            let sql = if grantor == owner || as_owner {
                grant
            } else {
                format!(
                    "SET LOCAL ROLE {}; {grant}; RESET ROLE",
                    quote_ident(&grantor)
                )
            };
            step(out, label, sql);
            if grantable {
                if let Grantee::Role(r) = &grantee {
                    for p in privs {
                        can_grant.insert((r.clone(), p));
                    }
                }
            }
        }
        pending = rest;
    }
}

fn policy_steps(out: &mut Vec<SwapStep>, table: &QualifiedName, p: &Policy) {
    let cmd = match p.command {
        'r' => "SELECT",
        'a' => "INSERT",
        'w' => "UPDATE",
        'd' => "DELETE",
        _ => "ALL",
    };
    let roles = if p.roles.is_empty() {
        "PUBLIC".to_string()
    } else {
        p.roles
            .iter()
            .map(Grantee::sql)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut sql = format!(
        "CREATE POLICY {} ON {} AS {} FOR {cmd} TO {roles}",
        quote_ident(&p.name),
        table.quoted(),
        if p.permissive {
            "PERMISSIVE"
        } else {
            "RESTRICTIVE"
        }
    );
    if let Some(u) = &p.using {
        sql.push_str(&format!(" USING ({u})"));
    }
    if let Some(c) = &p.check {
        sql.push_str(&format!(" WITH CHECK ({c})"));
    }
    let label = format!("policy {} on {table}", p.name);
    step(out, &label, sql);
    if let Some(c) = &p.comment {
        step(
            out,
            &label,
            format!(
                "COMMENT ON POLICY {} ON {} IS {}",
                quote_ident(&p.name),
                table.quoted(),
                quote_literal(c)
            ),
        );
    }
}

fn trigger_steps(out: &mut Vec<SwapStep>, table: &QualifiedName, kw: &str, tr: &Trigger) {
    let label = format!("trigger {} on {table}", tr.name);
    step(out, &label, tr.definition.clone());
    let state = match tr.enabled {
        'D' => Some("DISABLE TRIGGER"),
        'R' => Some("ENABLE REPLICA TRIGGER"),
        'A' => Some("ENABLE ALWAYS TRIGGER"),
        _ => None,
    };
    if let Some(state) = state {
        step(
            out,
            &label,
            format!(
                "ALTER {kw} {} {state} {}",
                table.quoted(),
                quote_ident(&tr.name)
            ),
        );
    }
    if let Some(c) = &tr.comment {
        step(
            out,
            &label,
            format!(
                "COMMENT ON TRIGGER {} ON {} IS {}",
                quote_ident(&tr.name),
                table.quoted(),
                quote_literal(c)
            ),
        );
    }
}

fn view_steps(out: &mut Vec<SwapStep>, v: &View) {
    let label = format!("view {}", v.name);
    let name = v.name.quoted();
    let kw = if v.materialized {
        "MATERIALIZED VIEW"
    } else {
        "VIEW"
    };
    let with = if v.options.is_empty() {
        String::new()
    } else {
        format!(
            " WITH ({})",
            v.options
                .iter()
                .map(|(k, val)| format!("{} = {}", quote_ident(k), quote_literal(val)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let data = if !v.materialized {
        ""
    } else if v.populated {
        " WITH DATA"
    } else {
        " WITH NO DATA"
    };
    step(
        out,
        &label,
        format!(
            "CREATE {kw} {name}{with} AS {}{data}",
            trim_def(&v.definition)
        ),
    );
    step(
        out,
        &label,
        format!("ALTER {kw} {name} OWNER TO {}", quote_ident(&v.owner)),
    );
    for (col, expr) in &v.column_defaults {
        step(
            out,
            &label,
            format!(
                "ALTER VIEW {name} ALTER COLUMN {} SET DEFAULT {expr}",
                quote_ident(col)
            ),
        );
    }
    // A re-created view starts with a NULL ACL and no column ACLs.
    acl_steps(out, &label, &name, &v.owner, &[], true, &v.acl);
    if let Some(c) = &v.comment {
        step(
            out,
            &label,
            format!("COMMENT ON {kw} {name} IS {}", quote_literal(c)),
        );
    }
    for (col, c) in &v.column_comments {
        step(
            out,
            &label,
            format!(
                "COMMENT ON COLUMN {name}.{} IS {}",
                quote_ident(col),
                quote_literal(c)
            ),
        );
    }
    for idx in &v.indexes {
        step(out, &label, idx.clone());
    }
    for tr in &v.triggers {
        trigger_steps(out, &v.name, "TABLE", tr);
    }
    for r in &v.rules {
        step(out, &label, trim_def(r).to_string());
    }
}

/// The lock statements of a swap (pure): every lock the swap will need,
/// taken before anything else, so that no lock is requested later while the
/// sources are held — a later request is what deadlocks with the application
/// (a transaction that wrote `users` and then waits for a source; a reader
/// that holds a view and waits for its base table). Order: the tables the new
/// foreign keys point at, the parent included (`SHARE ROW EXCLUSIVE`); the
/// tables whose keys into a source are re-pointed and the dependent views
/// (`ACCESS EXCLUSIVE`); then the sources, in the order given (sorted by the
/// caller, so two cutovers cannot deadlock each other). Run together, under
/// one `lock_timeout`, so an attempt either holds everything it needs or
/// gives everything back.
pub fn lock_sql(
    sources: &[QualifiedName],
    parent: &QualifiedName,
    targets: &super::LockTargets,
) -> String {
    let sources: Vec<String> = sources.iter().map(QualifiedName::quoted).collect();
    // 1. Tables the new foreign keys will point at (the parent included): SHARE ROW EXCLUSIVE.
    let mut shared: Vec<String> = targets
        .referenced
        .iter()
        .map(QualifiedName::quoted)
        .collect();
    shared.push(parent.quoted());
    shared.retain(|t| !sources.contains(t));
    shared.sort();
    shared.dedup();
    let mut out = format!(
        "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE; ",
        shared.join(", ")
    );
    // 2. Tables whose keys are re-pointed (dropping a constraint takes ACCESS
    //    EXCLUSIVE), then 3. views that are dropped and re-created.
    //    Materialized views cannot be named in LOCK TABLE (SQLSTATE 42809,
    //    which made every cutover with one fail): their DROP in the swap
    //    takes the lock, bounded by the same lock_timeout; their readers hold
    //    no lock on the sources, and a deadlock with one rolls the attempt
    //    back to be retried.
    let mut exclusive: Vec<String> = targets
        .referencing
        .iter()
        .map(QualifiedName::quoted)
        .filter(|t| !shared.contains(t))
        .collect();
    exclusive.extend(targets.views.iter().map(QualifiedName::quoted));
    if !exclusive.is_empty() {
        out.push_str(&format!(
            "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE; ",
            exclusive.join(", ")
        ));
    }
    // 4. The sources.
    out.push_str(&format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        sources.join(", ")
    ));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::{
        ColumnPrivileges, IncomingFk, Privilege, PublicationMembership, ReplicaIdentity,
    };
    use super::*;

    fn q(s: &str, n: &str) -> QualifiedName {
        QualifiedName::new(s, n)
    }

    fn obj(kind: ObjectKind, name: &str, key: &str, validated: bool) -> CatalogObject {
        CatalogObject {
            kind,
            name: name.into(),
            key: key.into(),
            shape: key.into(),
            validated,
            comment: None,
        }
    }

    /// A view of `public.t<oid>` (also used by `way_back`'s tests).
    pub(crate) fn view(oid: u32, name: &str, deps: &[u32]) -> View {
        View {
            oid,
            name: q("public", name),
            materialized: false,
            definition: format!(" SELECT 1 AS x FROM public.t{oid};"),
            options: vec![],
            owner: "app".into(),
            acl: Acl::default(),
            comment: None,
            column_comments: vec![],
            column_defaults: vec![],
            depends_on: deps.to_vec(),
            triggers: vec![],
            rules: vec![],
            indexes: vec![],
            populated: true,
        }
    }

    /// Dependents of `public.<source>` with nothing hanging off it (also
    /// used by `way_back`'s tests).
    pub(crate) fn base(source: &str) -> Dependents {
        Dependents {
            source: q("public", source),
            source_oid: 1,
            shadow: q("public", &format!("_rekey_new_{source}")),
            shadow_oid: 2,
            owner: "app".into(),
            shadow_owner: "rekey".into(),
            acl: Acl::default(),
            shadow_grantees: vec![],
            shadow_acl_default: false,
            rls_enabled: false,
            rls_forced: false,
            policies: vec![],
            triggers: vec![],
            views: vec![],
            incoming_fks: vec![],
            publications: vec![],
            replica_identity: ReplicaIdentity::Default,
            comment: None,
            column_comments: vec![],
            sequences: vec![],
            renames: vec![],
            unmatched: vec![],
            constraint_comments: vec![],
            statistics: vec![],
        }
    }

    fn pos(sql: &SwapSql, needle: &str) -> usize {
        sql.steps
            .iter()
            .position(|s| s.sql.contains(needle))
            .unwrap_or_else(|| panic!("no statement contains {needle:?}:\n{:#?}", sql.sql()))
    }

    #[test]
    fn index_keys_ignore_names() {
        let a = index_key(
            "CREATE INDEX chat_messages_user_idx ON public.chat_messages USING btree (user_id)",
            "public.chat_messages",
        );
        let b = index_key(
            "CREATE INDEX _rekey_new_chat_messages_user_idx ON public._rekey_new_chat_messages USING btree (user_id)",
            "public._rekey_new_chat_messages",
        );
        assert_eq!(a, b);
        assert_eq!(a, "USING btree (user_id)");
        let u = index_key(
            "CREATE UNIQUE INDEX x ON public.t USING btree (a) WHERE (b > 0)",
            "public.t",
        );
        assert_eq!(u, "UNIQUE USING btree (a) WHERE (b > 0)");
        assert_ne!(
            u,
            index_key(
                "CREATE INDEX y ON public.t USING btree (a) WHERE (b > 0)",
                "public.t"
            )
        );
        // Not found: whole text, which matches nothing else.
        assert_eq!(
            index_key("CREATE INDEX z ON other USING btree (a)", "public.t"),
            "CREATE INDEX z ON other USING btree (a)"
        );
    }

    #[test]
    fn constraint_keys_ignore_not_valid() {
        assert_eq!(
            constraint_key("c", "CHECK ((n > 0)) NOT VALID"),
            constraint_key("c", "CHECK ((n > 0))")
        );
        assert_ne!(
            constraint_key("p", "PRIMARY KEY (id)"),
            constraint_key("u", "PRIMARY KEY (id)")
        );
    }

    #[test]
    fn a_rollback_pairs_each_object_with_the_one_the_cutover_moved_aside() {
        // The old table's indexes carry the cutover's `_rekey_old_` names;
        // two indexes of the same shape are paired by name, not by shape.
        let source = vec![
            obj(ObjectKind::Index, "t_a_idx", "USING btree (a)", true),
            obj(ObjectKind::Index, "t_a_idx2", "USING btree (a)", true),
        ];
        // Printed otherwise (as a uuid table's index may print): only the
        // names can pair them.
        let moved = |name: &str| CatalogObject {
            key: "USING btree (a) -- printed otherwise".into(),
            ..obj(ObjectKind::Index, name, "USING btree (a)", true)
        };
        let shadow = vec![moved("_rekey_old_t_a_idx2"), moved("_rekey_old_t_a_idx")];
        let (pairs, unmatched) = match_objects(&source, &shadow);
        assert!(unmatched.is_empty());
        let by: Vec<(&str, &str)> = pairs
            .iter()
            .map(|p| (p.original.as_str(), p.shadow.as_str()))
            .collect();
        assert_eq!(
            by,
            vec![
                ("t_a_idx", "_rekey_old_t_a_idx"),
                ("t_a_idx2", "_rekey_old_t_a_idx2")
            ]
        );
    }

    #[test]
    fn matching_is_one_to_one_and_by_definition() {
        let source = vec![
            obj(
                ObjectKind::IndexConstraint,
                "t_pkey",
                "p|PRIMARY KEY (id)",
                true,
            ),
            obj(ObjectKind::Index, "t_a_idx", "USING btree (a)", true),
            obj(ObjectKind::Index, "t_a_idx2", "USING btree (a)", true),
            obj(
                ObjectKind::Index,
                "t_expr",
                "USING btree ((user_id % 10))",
                true,
            ),
            obj(
                ObjectKind::Constraint,
                "t_user_fkey",
                "f|{user_id}|16384|a|c|s|f|f",
                true,
            ),
        ];
        let shadow = vec![
            obj(ObjectKind::Index, "n_a2", "USING btree (a)", true),
            obj(ObjectKind::Index, "n_a1", "USING btree (a)", true),
            obj(
                ObjectKind::IndexConstraint,
                "n_pkey",
                "p|PRIMARY KEY (id)",
                true,
            ),
            obj(
                ObjectKind::Constraint,
                "t_user_fkey",
                "f|{user_id}|16384|a|c|s|f|f",
                false,
            ),
            // Same key but another kind: must not match the source index.
            obj(
                ObjectKind::IndexConstraint,
                "n_u",
                "USING btree ((user_id % 10))",
                true,
            ),
        ];
        let (pairs, unmatched) = match_objects(&source, &shadow);
        let map: Vec<(&str, &str, bool)> = pairs
            .iter()
            .map(|p| (p.original.as_str(), p.shadow.as_str(), p.validate))
            .collect();
        assert_eq!(
            map,
            vec![
                ("t_a_idx", "n_a1", false),
                ("t_a_idx2", "n_a2", false),
                ("t_pkey", "n_pkey", false),
                ("t_user_fkey", "t_user_fkey", true),
            ]
        );
        assert_eq!(unmatched, vec!["t_expr".to_string()]);
    }

    #[test]
    fn objects_pair_by_the_name_they_were_built_under_whatever_their_text() {
        // The shadow's predicate prints differently (casts moved), and two
        // source indexes share one definition: only the construction tells
        // which is which.
        let shape = "t|btree|1|{user_id}|f|t";
        let mut src_idx = obj(
            ObjectKind::Index,
            "unique_wip",
            "UNIQUE USING btree (user_id) WHERE ((status)::text = ANY ((ARRAY['a'::character varying])::text[]))",
            true,
        );
        src_idx.shape = shape.into();
        let mut shd_idx = obj(
            ObjectKind::Index,
            "_rekey_new_unique_wip",
            "UNIQUE USING btree (user_id) WHERE ((status)::text = ANY (ARRAY[('a'::character varying)::text]))",
            true,
        );
        shd_idx.shape = shape.into();
        let a = obj(ObjectKind::Index, "s_a", "USING btree (s)", true);
        let b = obj(ObjectKind::Index, "s_b", "USING btree (s)", true);
        let mut b_shd = b.clone();
        b_shd.name = "_rekey_new_s_b".into();
        let mut a_shd = a.clone();
        a_shd.name = "_rekey_new_s_a".into();
        // Built under the derived name but of another shape: not its partner.
        let mut other = obj(ObjectKind::Index, "other", "USING btree (x)", true);
        other.shape = "f|btree|1|{x}|f|f".into();
        let mut other_shd = other.clone();
        other_shd.name = "_rekey_new_other".into();
        other_shd.shape = "f|btree|1|{y}|f|f".into();
        other_shd.key = "USING btree (y)".into();
        let (pairs, unmatched) =
            match_objects(&[src_idx, b, a, other], &[a_shd, shd_idx, b_shd, other_shd]);
        let map: Vec<(&str, &str)> = pairs
            .iter()
            .map(|p| (p.original.as_str(), p.shadow.as_str()))
            .collect();
        assert_eq!(
            map,
            vec![
                ("s_a", "_rekey_new_s_a"),
                ("s_b", "_rekey_new_s_b"),
                ("unique_wip", "_rekey_new_unique_wip"),
            ]
        );
        assert_eq!(unmatched, vec!["other".to_string()]);
    }

    #[test]
    fn views_are_ordered_and_merged() {
        // 30 reads 20 reads 10; 40 is independent; 20 also listed twice.
        let a = [view(30, "c", &[20]), view(20, "b", &[10, 999])];
        let b = [
            view(20, "b", &[10, 999]),
            view(10, "z", &[]),
            view(40, "a", &[]),
        ];
        let order: Vec<u32> = ordered_views(a.iter().chain(b.iter()))
            .iter()
            .map(|v| v.oid)
            .collect();
        assert_eq!(order, vec![40, 10, 20, 30]);
    }

    #[test]
    fn statement_order_frees_names_before_taking_them() {
        let mut d = base("msgs");
        d.views = vec![view(30, "v2", &[20]), view(20, "v1", &[])];
        d.renames = vec![
            ObjectRename {
                kind: ObjectKind::IndexConstraint,
                original: "msgs_pkey".into(),
                shadow: "_rekey_new_msgs_pkey".into(),
                comment: None,
                validate: false,
            },
            ObjectRename {
                kind: ObjectKind::Index,
                original: "msgs_user_idx".into(),
                shadow: "_rekey_new_msgs_user_idx".into(),
                comment: Some("by user".into()),
                validate: false,
            },
            ObjectRename {
                kind: ObjectKind::Constraint,
                original: "msgs_user_fkey".into(),
                shadow: "msgs_user_fkey".into(),
                comment: None,
                validate: true,
            },
        ];
        d.incoming_fks = vec![IncomingFk {
            name: "reads_msg_fkey".into(),
            table: q("public", "reads"),
            definition: "FOREIGN KEY (message_id) REFERENCES public.msgs(id)".into(),
            validated: true,
            partitioned: false,
            comment: None,
        }];
        d.replica_identity = ReplicaIdentity::Index("msgs_user_idx".into());
        d.publications = vec![PublicationMembership {
            publication: "app_pub".into(),
            columns: None,
            row_filter: None,
        }];
        let s = swap_sql(&d, &SwapNames::derive(&d.source));
        let sql = s.sql();
        // Views: dependents dropped first, re-created last in dependency order.
        assert!(pos(&s, "DROP VIEW \"public\".\"v2\"") < pos(&s, "DROP VIEW \"public\".\"v1\""));
        assert!(
            pos(&s, "CREATE VIEW \"public\".\"v1\"") < pos(&s, "CREATE VIEW \"public\".\"v2\"")
        );
        assert!(!sql.iter().any(|x| x.contains(";\"") || x.ends_with(';')));
        // Renames: old out of the way before the new takes the name.
        let rename_src = pos(
            &s,
            "ALTER TABLE \"public\".\"msgs\" RENAME TO \"_rekey_old_msgs\"",
        );
        let old_pk = pos(
            &s,
            "RENAME CONSTRAINT \"msgs_pkey\" TO \"_rekey_old_msgs_pkey\"",
        );
        let old_idx = pos(
            &s,
            "ALTER INDEX \"public\".\"msgs_user_idx\" RENAME TO \"_rekey_old_msgs_user_idx\"",
        );
        let shadow = pos(
            &s,
            "ALTER TABLE \"public\".\"_rekey_new_msgs\" RENAME TO \"msgs\"",
        );
        let new_pk = pos(
            &s,
            "RENAME CONSTRAINT \"_rekey_new_msgs_pkey\" TO \"msgs_pkey\"",
        );
        let new_idx = pos(
            &s,
            "ALTER INDEX \"public\".\"_rekey_new_msgs_user_idx\" RENAME TO \"msgs_user_idx\"",
        );
        assert!(pos(&s, "DROP VIEW") < rename_src);
        assert!(rename_src < old_pk && old_pk < shadow && old_idx < shadow);
        assert!(shadow < new_pk && shadow < new_idx);
        // Same-named FK is not renamed at all.
        assert!(!sql
            .iter()
            .any(|x| x.contains("RENAME CONSTRAINT \"msgs_user_fkey\"")));
        // Replica identity after the index has its name; publication moved.
        assert!(new_idx < pos(&s, "REPLICA IDENTITY USING INDEX \"msgs_user_idx\""));
        assert!(
            pos(
                &s,
                "ALTER PUBLICATION \"app_pub\" DROP TABLE \"public\".\"msgs\""
            ) < rename_src
        );
        assert!(
            shadow
                < pos(
                    &s,
                    "ALTER PUBLICATION \"app_pub\" ADD TABLE \"public\".\"msgs\""
                )
        );
        assert!(
            new_idx
                < pos(
                    &s,
                    "COMMENT ON INDEX \"public\".\"msgs_user_idx\" IS 'by user'"
                )
        );
        // Incoming FK dropped before, re-added NOT VALID after the rename.
        assert!(
            pos(
                &s,
                "ALTER TABLE \"public\".\"reads\" DROP CONSTRAINT \"reads_msg_fkey\""
            ) < rename_src
        );
        assert!(
            shadow
                < pos(
                    &s,
                    "ALTER TABLE \"public\".\"reads\" ADD CONSTRAINT \"reads_msg_fkey\" FOREIGN KEY (message_id) REFERENCES public.msgs(id) NOT VALID"
                )
        );
        assert_eq!(
            s.validate,
            vec![
                ValidateConstraint {
                    table: q("public", "msgs"),
                    name: "msgs_user_fkey".into()
                },
                ValidateConstraint {
                    table: q("public", "reads"),
                    name: "reads_msg_fkey".into()
                },
            ]
        );
        assert_eq!(s.analyze, vec![q("public", "msgs")]);
        // Every step is labelled.
        assert!(s.steps.iter().all(|x| !x.object.is_empty()));
    }

    #[test]
    fn sequences_keep_counting() {
        let mut d = base("t");
        d.sequences = vec![
            SequenceCarry::Owned {
                column: "n".into(),
                sequence: q("public", "t_n_seq"),
                default: Some("nextval('public.t_n_seq'::regclass)".into()),
                shadow_sequence: Some(q("public", "_rekey_new_t_n_seq")),
            },
            SequenceCarry::Identity {
                column: "id".into(),
                kind: 'a',
                sequence: q("public", "t_id_seq"),
                options: SequenceOptions {
                    start: 1,
                    increment: 1,
                    min: 1,
                    max: i64::MAX,
                    cache: 1,
                    cycle: false,
                },
                shadow_sequence: Some(q("public", "_rekey_new_t_id_seq")),
            },
        ];
        let s = swap_sql(&d, &SwapNames::derive(&d.source));
        let owner = pos(&s, "ALTER TABLE \"public\".\"t\" OWNER TO \"app\"");
        let owned = pos(
            &s,
            "ALTER SEQUENCE \"public\".\"t_n_seq\" OWNED BY \"public\".\"t\".\"n\"",
        );
        assert!(
            owner < owned,
            "a sequence's table must have its owner first"
        );
        assert!(
            pos(&s, "SET DEFAULT nextval('public.t_n_seq'::regclass)")
                < pos(&s, "DROP SEQUENCE \"public\".\"_rekey_new_t_n_seq\"")
        );
        let old_seq = pos(
            &s,
            "ALTER SEQUENCE \"public\".\"t_id_seq\" RENAME TO \"_rekey_old_t_id_seq\"",
        );
        let new_seq = pos(
            &s,
            "ALTER SEQUENCE \"public\".\"_rekey_new_t_id_seq\" RENAME TO \"t_id_seq\"",
        );
        let setval = pos(&s, "SELECT pg_catalog.setval('\"public\".\"t_id_seq\"'::pg_catalog.regclass, s.last_value, s.is_called) FROM \"public\".\"_rekey_old_t_id_seq\" AS s");
        assert!(old_seq < new_seq && new_seq < setval);
        assert!(pos(&s, "SET GENERATED ALWAYS SET INCREMENT BY 1 SET MINVALUE 1") < setval);

        // Shadow column without identity: added with the original name.
        d.sequences = vec![SequenceCarry::Identity {
            column: "id".into(),
            kind: 'd',
            sequence: q("public", "t_id_seq"),
            options: SequenceOptions {
                start: 5,
                increment: 2,
                min: 1,
                max: 100,
                cache: 1,
                cycle: true,
            },
            shadow_sequence: None,
        }];
        let s = swap_sql(&d, &SwapNames::derive(&d.source));
        assert!(pos(&s, "ALTER SEQUENCE \"public\".\"t_id_seq\" RENAME TO") < pos(&s,
            "ADD GENERATED BY DEFAULT AS IDENTITY (SEQUENCE NAME \"public\".\"t_id_seq\" INCREMENT BY 2 MINVALUE 1 MAXVALUE 100 START WITH 5 CACHE 1 CYCLE)"));
    }

    #[test]
    fn privileges_are_reset_then_replayed() {
        let mut d = base("t");
        let p =
            |grantee: Option<&str>, grantor: &str, privilege: &str, grantable: bool| Privilege {
                grantee: Grantee::from_nullable(grantee.map(String::from)),
                grantor: grantor.into(),
                privilege: privilege.into(),
                grantable,
            };
        d.shadow_grantees = vec![Grantee::Role("stray".into())];
        d.acl = Acl {
            owner_default: false,
            table: vec![
                p(Some("app"), "app", "SELECT", false),
                p(Some("lead"), "app", "SELECT", true),
                p(Some("reader"), "lead", "SELECT", false),
                p(None, "app", "INSERT", false),
                p(Some("x"), "app", "DROP TABLE; --", false),
            ],
            columns: vec![
                ColumnPrivileges {
                    column: "a".into(),
                    privileges: vec![p(Some("reader"), "app", "UPDATE", false)],
                },
                ColumnPrivileges {
                    column: "b".into(),
                    privileges: vec![p(Some("reader"), "app", "UPDATE", false)],
                },
            ],
        };
        let s = swap_sql(&d, &SwapNames::derive(&d.source));
        let revoke = pos(&s, "REVOKE ALL ON TABLE \"public\".\"t\" FROM PUBLIC, \"app\", \"rekey\", \"stray\" CASCADE");
        assert!(revoke < pos(&s, "GRANT SELECT ON TABLE \"public\".\"t\" TO \"app\""));
        // Same grantor, grantee and option: one statement.
        d.acl.table.push(p(Some("app"), "app", "DELETE", false));
        let s = swap_sql(&d, &SwapNames::derive(&d.source));
        let sql = s.sql();
        assert!(
            sql.contains(&"GRANT SELECT, DELETE ON TABLE \"public\".\"t\" TO \"app\"".to_string()),
            "{sql:#?}"
        );
        assert!(sql.contains(&"GRANT INSERT ON TABLE \"public\".\"t\" TO PUBLIC".to_string()));
        assert!(sql.contains(
            &"GRANT UPDATE (\"a\", \"b\") ON TABLE \"public\".\"t\" TO \"reader\"".to_string()
        ));
        let lead = pos(&s, "TO \"lead\" WITH GRANT OPTION");
        let by_lead = pos(&s, "SET LOCAL ROLE \"lead\"; GRANT SELECT ON TABLE \"public\".\"t\" TO \"reader\"; RESET ROLE");
        assert!(lead < by_lead, "grant option before its use");
        assert!(
            !sql.iter().any(|x| x.contains("DROP TABLE")),
            "unknown privilege words are never pasted"
        );

        // The owner's default (NULL relacl) on both sides: no table-level
        // statement at all, column grants still replayed.
        d.acl.owner_default = true;
        d.acl.table = vec![p(Some("app"), "app", "SELECT", false)];
        d.shadow_acl_default = true;
        let sql = swap_sql(&d, &SwapNames::derive(&d.source)).sql();
        assert!(
            !sql.iter()
                .any(|x| x.contains("REVOKE") || x.contains("GRANT SELECT")),
            "{sql:#?}"
        );
        assert!(sql.contains(
            &"GRANT UPDATE (\"a\", \"b\") ON TABLE \"public\".\"t\" TO \"reader\"".to_string()
        ));
        // The shadow got grants of its own: revoke and spell it out.
        d.shadow_acl_default = false;
        let sql = swap_sql(&d, &SwapNames::derive(&d.source)).sql();
        assert!(sql.iter().any(|x| x.starts_with("REVOKE ALL ON TABLE")));
        assert!(sql.contains(&"GRANT SELECT ON TABLE \"public\".\"t\" TO \"app\"".to_string()));
    }

    #[test]
    fn policies_triggers_and_flags() {
        let mut d = base("t");
        d.rls_enabled = true;
        d.policies = vec![Policy {
            name: "own".into(),
            permissive: false,
            command: 'r',
            roles: vec![Grantee::Role("app".into()), Grantee::Public],
            using: Some("(owner = CURRENT_USER)".into()),
            check: None,
            comment: Some("it's mine".into()),
        }];
        d.triggers = vec![Trigger {
            name: "audit".into(),
            definition: "CREATE TRIGGER audit AFTER INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION public.f()".into(),
            enabled: 'D',
            comment: None,
        }];
        d.comment = Some("main".into());
        d.column_comments = vec![("a".into(), Some("col".into())), ("b".into(), None)];
        let s = swap_sql(&d, &SwapNames::derive(&d.source));
        let sql = s.sql();
        for want in [
            "ALTER TABLE \"public\".\"t\" ENABLE ROW LEVEL SECURITY",
            "CREATE POLICY \"own\" ON \"public\".\"t\" AS RESTRICTIVE FOR SELECT TO \"app\", PUBLIC USING ((owner = CURRENT_USER))",
            "COMMENT ON POLICY \"own\" ON \"public\".\"t\" IS 'it''s mine'",
            "ALTER TABLE \"public\".\"t\" DISABLE TRIGGER \"audit\"",
            "COMMENT ON TABLE \"public\".\"t\" IS 'main'",
            "COMMENT ON COLUMN \"public\".\"t\".\"a\" IS 'col'",
            "COMMENT ON COLUMN \"public\".\"t\".\"b\" IS NULL",
            "ALTER TABLE \"public\".\"t\" REPLICA IDENTITY DEFAULT",
        ] {
            assert!(sql.contains(&want.to_string()), "missing {want}:\n{sql:#?}");
        }
        assert!(pos(&s, "CREATE TRIGGER audit") < pos(&s, "DISABLE TRIGGER"));
        // Nothing that changes nothing under the locks: the shadow has no
        // row level security to turn off or unforce.
        assert!(
            !sql.iter()
                .any(|x| x.contains("NO FORCE") || x.contains("DISABLE ROW")),
            "{sql:#?}"
        );
        d.rls_forced = true;
        let sql = swap_sql(&d, &SwapNames::derive(&d.source)).sql();
        assert!(sql.contains(&"ALTER TABLE \"public\".\"t\" FORCE ROW LEVEL SECURITY".to_string()));
    }

    #[test]
    fn several_tables_share_views_and_keys() {
        // reads.message_id → msgs.id; both swapped. The view joins both.
        let mut msgs = base("msgs");
        let mut reads = base("reads");
        let v = view(50, "joined", &[]);
        msgs.views = vec![v.clone()];
        reads.views = vec![v];
        msgs.incoming_fks = vec![
            IncomingFk {
                name: "reads_msg_fkey".into(),
                table: q("public", "reads"),
                definition: "FOREIGN KEY (message_id) REFERENCES public.msgs(id)".into(),
                validated: true,
                partitioned: false,
                comment: None,
            },
            IncomingFk {
                name: "_rekey_new_reads_msg_fkey".into(),
                table: q("public", "_rekey_new_reads"),
                definition: "FOREIGN KEY (message_id) REFERENCES public.msgs(id) NOT VALID".into(),
                validated: false,
                partitioned: false,
                comment: None,
            },
        ];
        reads.renames = vec![ObjectRename {
            kind: ObjectKind::Constraint,
            original: "reads_msg_fkey".into(),
            shadow: "_rekey_new_reads_msg_fkey".into(),
            comment: None,
            validate: true,
        }];
        let (nm, nr) = (
            SwapNames::derive(&msgs.source),
            SwapNames::derive(&reads.source),
        );
        let s = swap_sql_many(&[(&msgs, &nm), (&reads, &nr)]);
        let sql = s.sql();
        assert_eq!(sql.iter().filter(|x| x.starts_with("DROP VIEW")).count(), 1);
        assert_eq!(
            sql.iter().filter(|x| x.starts_with("CREATE VIEW")).count(),
            1
        );
        // The old reads keeps its key to the old msgs: untouched.
        assert!(!sql
            .iter()
            .any(|x| x.contains("\"public\".\"reads\" DROP CONSTRAINT")));
        // The shadow's key is dropped under its shadow name and re-added on the
        // new reads with the original name, after both renames.
        let drop = pos(&s, "ALTER TABLE \"public\".\"_rekey_new_reads\" DROP CONSTRAINT \"_rekey_new_reads_msg_fkey\"");
        let add = pos(&s, "ALTER TABLE \"public\".\"reads\" ADD CONSTRAINT \"reads_msg_fkey\" FOREIGN KEY (message_id) REFERENCES public.msgs(id) NOT VALID");
        assert!(drop < pos(&s, "RENAME TO \"_rekey_old_msgs\""));
        assert!(
            pos(
                &s,
                "ALTER TABLE \"public\".\"_rekey_new_reads\" RENAME TO \"reads\""
            ) < add
        );
        assert!(!sql
            .iter()
            .any(|x| x.contains("RENAME CONSTRAINT \"_rekey_new_reads_msg_fkey\"")));
        // All renames out of the way before any shadow takes a name.
        assert!(
            pos(&s, "RENAME TO \"_rekey_old_reads\"") < pos(&s, "\"_rekey_new_msgs\" RENAME TO")
        );
        assert_eq!(
            s.validate,
            vec![ValidateConstraint {
                table: q("public", "reads"),
                name: "reads_msg_fkey".into()
            }]
        );
    }

    #[test]
    fn lock_sql_takes_referenced_then_referencing_and_views_then_sources() {
        use super::super::LockTargets;
        let q = |n: &str| QualifiedName::new("public", n);
        let sources = [q("a"), q("b")];
        let targets = LockTargets {
            referenced: vec![q("orgs"), q("users"), q("b")],
            referencing: vec![q("likes"), q("orgs")],
            views: vec![q("v_a")],
        };
        assert_eq!(
            lock_sql(&sources, &q("users"), &targets),
            "LOCK TABLE \"public\".\"orgs\", \"public\".\"users\" IN SHARE ROW EXCLUSIVE MODE; \
             LOCK TABLE \"public\".\"likes\", \"public\".\"v_a\" IN ACCESS EXCLUSIVE MODE; \
             LOCK TABLE \"public\".\"a\", \"public\".\"b\" IN ACCESS EXCLUSIVE MODE"
        );
        // Nothing hangs off the sources: the parent, then the sources.
        assert_eq!(
            lock_sql(&sources[..1], &q("users"), &LockTargets::default()),
            "LOCK TABLE \"public\".\"users\" IN SHARE ROW EXCLUSIVE MODE; \
             LOCK TABLE \"public\".\"a\" IN ACCESS EXCLUSIVE MODE"
        );
    }
}
