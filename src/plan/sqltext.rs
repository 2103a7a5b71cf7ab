//! Reading and editing SQL text the server printed (`pg_get_viewdef`,
//! `pg_get_expr`, `pg_get_triggerdef`, … with `search_path = ''`).
//!
//! Nothing here parses SQL in general. Two narrow jobs, each safe because the
//! input is the server's own canonical printing, not hand-written SQL:
//!
//! - [`substitute_names`]: replace schema-qualified relation names by other
//!   qualified names, outside string literals and quoted identifiers'
//!   insides, on token boundaries. Used to re-create a definition against a
//!   scratch copy of a table (the plan's trial).
//! - [`rewrite_comparisons`]: where a reference column (which becomes `uuid`)
//!   is compared with `=` or `<>` to something that is an integer *by its
//!   printed form* — the parent's integer key column, an integer literal, or
//!   an expression cast to `smallint`/`integer`/`bigint` — change the other
//!   side so the comparison is made in uuid terms and keeps its result:
//!   `u.id = s.user_id` → `u.uuid_id = s.user_id` (the parent's alias is
//!   known from the text: the server prints `schema.parent alias`), and
//!   `actor_id = <int expr>` → `actor_id = (SELECT p.uuid_id FROM parent p
//!   WHERE p.id = <int expr>)`.
//!
//! # Why the rewrites keep behaviour
//!
//! After the swap a reference column holds `uuid(p)` where it held `id(p)`,
//! for the parent row `p` the foreign key pointed at; `uuid` is unique and
//! not null on the parent, `id` is its primary key, so the map is a
//! bijection on parent rows. Hence `id(p) = id(q)` ⇔ `uuid(p) = uuid(q)`,
//! which is the join rewrite. For an integer `x`: if a parent row has `id =
//! x`, `ref = x` held before iff `ref = uuid(that row)` holds after, which is
//! what the scalar subquery returns; if none has, the old comparison was
//! false for every non-null reference (each reference names an existing
//! parent row) and the new one is `ref = NULL`, which is NULL — the same
//! filter result in `WHERE`, `ON`, `USING` and `WITH CHECK`, where only
//! `true` passes. NULL operands give NULL before and after. `<>` is the
//! negation in each case (in a filter a NULL stays a NULL).
//!
//! A comparison whose other side is not recognisably an integer is left as
//! it is: either it already works with uuid, or the trial that re-creates the
//! object against a uuid column fails and `plan` reports it as blocking. The
//! rewrite is applied only where the printed form proves an integer, so it
//! never changes a definition that works with uuid as it stands (uuid has no
//! `=` with an integer), and `plan` and `cutover` compute the same text from
//! the same printed definition.
//!
//! Scalar-subquery capture: inside `(SELECT … FROM parent p WHERE p.id =
//! <expr>)` a bare column name in `<expr>` would bind to the parent's column
//! of that name first. The rewrite is therefore only made when `<expr>`
//! names no bare column (function names, type names after `::` and the
//! constants `true`/`false`/`null` are not columns).

use std::collections::HashMap;

use crate::pg::{quote_ident, QualifiedName};

/// One lexical token of printed SQL: its kind and byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Unquoted identifier or keyword.
    Ident,
    /// `"quoted"` identifier.
    Quoted,
    /// String literal (`'…'`, `E'…'`).
    Str,
    /// Number.
    Num,
    /// Operator (`=`, `<>`, `::`, `+`, …).
    Op,
    /// `(`, `)`, `,`, `.`, `[`, `]`, `;`.
    Punct,
}

#[derive(Debug, Clone, Copy)]
struct Tok {
    kind: Kind,
    start: usize,
    end: usize,
}

fn tokenize(s: &str) -> Vec<Tok> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let ident_start = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c >= 0x80;
    let ident_cont = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let kind = if c == b'\'' || ((c == b'E' || c == b'e') && b.get(i + 1) == Some(&b'\'')) {
            let backslash = c != b'\'';
            i += if backslash { 2 } else { 1 };
            while i < b.len() {
                if backslash && b[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            Kind::Str
        } else if c == b'"' {
            i += 1;
            while i < b.len() {
                if b[i] == b'"' {
                    if b.get(i + 1) == Some(&b'"') {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            Kind::Quoted
        } else if ident_start(c) {
            while i < b.len() && ident_cont(b[i]) {
                i += 1;
            }
            Kind::Ident
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            Kind::Num
        } else if b"(),.[];".contains(&c) {
            i += 1;
            Kind::Punct
        } else {
            while i < b.len() && b"+-*/<>=~!@#%^&|`?:".contains(&b[i]) {
                i += 1;
            }
            if i == start {
                i += 1;
            }
            Kind::Op
        };
        out.push(Tok {
            kind,
            start,
            end: i.min(b.len()),
        });
    }
    out
}

/// The unquoted name an identifier token stands for.
fn ident_name(s: &str, t: &Tok) -> Option<String> {
    let text = &s[t.start..t.end];
    match t.kind {
        Kind::Ident => Some(text.to_string()),
        Kind::Quoted if text.len() >= 2 => Some(text[1..text.len() - 1].replace("\"\"", "\"")),
        _ => None,
    }
}

fn is_name(t: &Tok) -> bool {
    matches!(t.kind, Kind::Ident | Kind::Quoted)
}

fn text<'a>(s: &'a str, t: &Tok) -> &'a str {
    &s[t.start..t.end]
}

/// Replace each qualified relation name `from` (as `schema.name`, parts
/// unquoted) by `to` wherever it appears as a two-part name token sequence,
/// outside literals. A three-part `schema.name.column` keeps its column.
pub fn substitute_names(sql: &str, map: &[(QualifiedName, QualifiedName)]) -> String {
    let toks = tokenize(sql);
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut i = 0;
    while i + 2 < toks.len() {
        let (a, dot, b) = (&toks[i], &toks[i + 1], &toks[i + 2]);
        let prev_is_dot = i > 0 && text(sql, &toks[i - 1]) == "." && toks[i - 1].end == a.start;
        if is_name(a)
            && text(sql, dot) == "."
            && is_name(b)
            && a.end == dot.start
            && dot.end == b.start
            && !prev_is_dot
        {
            let (sa, sb) = (ident_name(sql, a), ident_name(sql, b));
            if let (Some(sa), Some(sb)) = (sa, sb) {
                if let Some((_, to)) = map.iter().find(|(f, _)| f.schema == sa && f.name == sb) {
                    edits.push((a.start, b.end, to.quoted()));
                    i += 3;
                    continue;
                }
            }
        }
        i += 1;
    }
    apply(sql, edits)
}

fn apply(sql: &str, mut edits: Vec<(usize, usize, String)>) -> String {
    edits.sort_by_key(|e| e.0);
    let mut out = String::with_capacity(sql.len() + 64);
    let mut at = 0;
    for (s, e, r) in edits {
        if s < at {
            continue;
        }
        out.push_str(&sql[at..s]);
        out.push_str(&r);
        at = e;
    }
    out.push_str(&sql[at..]);
    out
}

/// What [`rewrite_comparisons`] needs to know.
#[derive(Debug, Clone)]
pub struct RewriteContext {
    /// Each rewritten table with its reference column names.
    pub tables: Vec<(QualifiedName, Vec<String>)>,
    /// The parent table.
    pub parent: QualifiedName,
    /// Its integer key column.
    pub key_column: String,
    /// Its uuid column.
    pub uuid_column: String,
}

/// Keywords the server prints in upper case; an identifier after a table
/// name that is one of these is not an alias.
fn looks_like_alias(s: &str, t: &Tok) -> bool {
    match t.kind {
        Kind::Quoted => true,
        Kind::Ident => !text(s, t).bytes().any(|c| c.is_ascii_uppercase()),
        _ => false,
    }
}

/// Alias → table for every occurrence of the given tables in FROM position
/// (`schema.name alias`, or `schema.name` alone, whose refname is `name`).
fn aliases<'a>(
    s: &str,
    toks: &[Tok],
    tables: impl Iterator<Item = &'a QualifiedName>,
) -> HashMap<String, QualifiedName> {
    let tables: Vec<&QualifiedName> = tables.collect();
    let mut out = HashMap::new();
    let mut i = 0;
    while i + 2 < toks.len() {
        let (a, dot, b) = (&toks[i], &toks[i + 1], &toks[i + 2]);
        if is_name(a) && text(s, dot) == "." && is_name(b) {
            if let (Some(sa), Some(sb)) = (ident_name(s, a), ident_name(s, b)) {
                if let Some(t) = tables.iter().find(|t| t.schema == sa && t.name == sb) {
                    // Not a column reference `schema.table.column`.
                    let is_col = toks.get(i + 3).is_some_and(|d| text(s, d) == ".");
                    if !is_col {
                        let alias = toks
                            .get(i + 3)
                            .filter(|n| looks_like_alias(s, n))
                            .and_then(|n| ident_name(s, n))
                            .unwrap_or_else(|| t.name.clone());
                        out.insert(alias, (*t).clone());
                    }
                    i += 3;
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

/// A column reference spanning `toks[lo..hi]`: `(qualifier, column)`.
fn column_ref(s: &str, toks: &[Tok]) -> Option<(Option<String>, String)> {
    match toks {
        [c] if is_name(c) => Some((None, ident_name(s, c)?)),
        [a, d, c] if is_name(a) && text(s, d) == "." && is_name(c) => {
            Some((Some(ident_name(s, a)?), ident_name(s, c)?))
        }
        [_, d1, a, d2, c] if text(s, d1) == "." && text(s, d2) == "." && is_name(a) => {
            Some((Some(ident_name(s, a)?), ident_name(s, c)?))
        }
        _ => None,
    }
}

const INT_TYPES: &[&str] = &["smallint", "integer", "bigint", "int2", "int4", "int8"];

/// Whether the printed operand is an integer by its form, with no bare
/// column names in it (see the module docs).
fn provably_integer(s: &str, toks: &[Tok]) -> bool {
    let integer = match toks {
        [n] if n.kind == Kind::Num => text(s, n).bytes().all(|c| c.is_ascii_digit()),
        [.., cast, ty] if text(s, cast) == "::" && ty.kind == Kind::Ident => {
            INT_TYPES.contains(&text(s, ty))
        }
        _ => false,
    };
    if !integer {
        return false;
    }
    // No bare column: every identifier is a function name, a type name, a
    // constant, or part of a qualified name.
    toks.iter().enumerate().all(|(i, t)| {
        if !is_name(t) {
            return true;
        }
        let prev = i.checked_sub(1).map(|p| text(s, &toks[p]));
        let next = toks.get(i + 1).map(|n| text(s, n));
        let word = text(s, t);
        prev == Some("::")
            || prev == Some(".")
            || next == Some("(")
            || next == Some(".")
            || matches!(word, "true" | "false" | "NULL" | "null")
            || (t.kind == Kind::Ident && word.bytes().all(|c| !c.is_ascii_lowercase()))
    })
}

/// Index of the token closing the parenthesis opened at `open`.
fn matching(s: &str, toks: &[Tok], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, t) in toks.iter().enumerate().skip(open) {
        match text(s, t) {
            "(" | "[" => depth += 1,
            ")" | "]" => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Rewrite integer comparisons of reference columns; `None` when nothing
/// was rewritten. `own_table`: the table whose columns bare names refer to
/// (a policy's table); for a view, bare names refer to its only relation
/// when no column is written qualified (the server qualifies every column
/// as soon as a query reads more than one relation).
pub fn rewrite_comparisons(
    sql: &str,
    ctx: &RewriteContext,
    own_table: Option<&QualifiedName>,
) -> Option<String> {
    let toks = tokenize(sql);
    let table_aliases = aliases(sql, &toks, ctx.tables.iter().map(|(t, _)| t));
    let parent_aliases = aliases(sql, &toks, std::iter::once(&ctx.parent));
    let bare_table = own_table.cloned().or_else(|| {
        let qualified_cols = toks.windows(3).any(|w| {
            is_name(&w[0]) && text(sql, &w[1]) == "." && is_name(&w[2]) && {
                ident_name(sql, &w[0]).is_some_and(|a| {
                    table_aliases.contains_key(&a) || parent_aliases.contains_key(&a)
                })
            }
        });
        let distinct: std::collections::HashSet<&QualifiedName> = table_aliases.values().collect();
        (!qualified_cols && distinct.len() == 1 && parent_aliases.is_empty())
            .then(|| distinct.into_iter().next().cloned())
            .flatten()
    });
    let refs_of = |t: &QualifiedName| {
        ctx.tables
            .iter()
            .find(|(x, _)| x == t)
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    };
    let is_reference = |toks: &[Tok]| -> bool {
        match column_ref(sql, toks) {
            Some((Some(q), c)) => table_aliases
                .get(&q)
                .is_some_and(|t| refs_of(t).contains(&c)),
            Some((None, c)) => bare_table.as_ref().is_some_and(|t| refs_of(t).contains(&c)),
            None => false,
        }
    };
    let parent_key_alias = |toks: &[Tok]| -> Option<String> {
        match column_ref(sql, toks) {
            Some((Some(q), c)) if c == ctx.key_column && parent_aliases.contains_key(&q) => Some(q),
            _ => None,
        }
    };
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut covered: Vec<(usize, usize)> = Vec::new();
    for open in 0..toks.len() {
        if text(sql, &toks[open]) != "(" {
            continue;
        }
        let Some(close) = matching(sql, &toks, open) else {
            continue;
        };
        let (lo, hi) = (toks[open].start, toks[close].end);
        if covered.iter().any(|&(a, b)| a <= lo && hi <= b) {
            continue;
        }
        // Exactly one top-level operator, `=` or `<>`.
        let mut depth = 0usize;
        let mut ops = Vec::new();
        for (i, t) in toks.iter().enumerate().take(close).skip(open + 1) {
            match text(sql, t) {
                "(" | "[" => depth += 1,
                ")" | "]" => depth = depth.saturating_sub(1),
                _ if depth == 0 && t.kind == Kind::Op && text(sql, t) != "::" => ops.push(i),
                _ => {}
            }
            if depth == 0
                && t.kind == Kind::Ident
                && text(sql, t).bytes().all(|c| c.is_ascii_uppercase())
            {
                // AND, OR, IN, IS, … at top level: not a plain comparison.
                ops.push(usize::MAX);
            }
        }
        let [op] = ops[..] else { continue };
        if op == usize::MAX || !matches!(text(sql, &toks[op]), "=" | "<>") {
            continue;
        }
        let (left, right) = (&toks[open + 1..op], &toks[op + 1..close]);
        if left.is_empty() || right.is_empty() {
            continue;
        }
        let other = if is_reference(left) && !is_reference(right) {
            right
        } else if is_reference(right) && !is_reference(left) {
            left
        } else {
            continue;
        };
        let (os, oe) = (other[0].start, other[other.len() - 1].end);
        let replacement = if parent_key_alias(other).is_some() {
            // Keep the qualifier as printed; only the column changes.
            let last = other[other.len() - 1].start;
            format!("{}{}", &sql[os..last], quote_ident(&ctx.uuid_column))
        } else if provably_integer(sql, other) {
            format!(
                "(SELECT _rekey_p.{} FROM {} _rekey_p WHERE _rekey_p.{} = {})",
                quote_ident(&ctx.uuid_column),
                ctx.parent.quoted(),
                quote_ident(&ctx.key_column),
                &sql[os..oe]
            )
        } else {
            continue;
        };
        edits.push((os, oe, replacement));
        covered.push((lo, hi));
    }
    (!edits.is_empty()).then(|| apply(sql, edits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RewriteContext {
        RewriteContext {
            tables: vec![
                (
                    QualifiedName::new("public", "user_sessions"),
                    vec!["user_id".into()],
                ),
                (
                    QualifiedName::new("public", "audit events"),
                    vec!["actor_id".into(), "Owner User".into()],
                ),
            ],
            parent: QualifiedName::new("public", "users"),
            key_column: "id".into(),
            uuid_column: "uuid_id".into(),
        }
    }

    #[test]
    fn a_join_on_the_parents_integer_key_becomes_a_join_on_its_uuid() {
        let v = " SELECT s.id,\n    u.email\n   FROM (public.user_sessions s\n     JOIN public.users u ON ((u.id = s.user_id)));";
        let r = rewrite_comparisons(v, &ctx(), None).expect("rewritten");
        assert_eq!(
            r,
            " SELECT s.id,\n    u.email\n   FROM (public.user_sessions s\n     JOIN public.users u ON ((u.\"uuid_id\" = s.user_id)));"
        );
        // Without aliases the refname is the table name.
        let v = " SELECT user_sessions.id FROM public.user_sessions, public.users WHERE (user_sessions.user_id = users.id);";
        let r = rewrite_comparisons(v, &ctx(), None).expect("rewritten");
        assert!(
            r.contains("(user_sessions.user_id = users.\"uuid_id\")"),
            "{r}"
        );
    }

    #[test]
    fn an_integer_setting_is_translated_through_the_parent() {
        let own = QualifiedName::new("public", "audit events");
        let p = "(actor_id = (current_setting('app.user_id'::text, true))::bigint)";
        let r = rewrite_comparisons(p, &ctx(), Some(&own)).expect("rewritten");
        assert_eq!(
            r,
            "(actor_id = (SELECT _rekey_p.\"uuid_id\" FROM \"public\".\"users\" _rekey_p WHERE _rekey_p.\"id\" = (current_setting('app.user_id'::text, true))::bigint))"
        );
        let p = "(\"Owner User\" <> 5)";
        assert!(rewrite_comparisons(p, &ctx(), Some(&own)).is_some());
    }

    #[test]
    fn what_is_not_provably_an_integer_or_not_a_reference_is_left_alone() {
        let own = QualifiedName::new("public", "audit events");
        for p in [
            // Already uuid terms.
            "(actor_id = (current_setting('app.user_uuid'::text, true))::uuid)",
            // Another column: type unknown from the text, and a capture risk.
            "(actor_id = (tenant_id)::bigint)",
            // Not a reference column.
            "(id = 5)",
            // Not `=` or `<>`.
            "(actor_id > 5)",
            "(actor_id IN (1, 2))",
            // Inside a literal.
            "('(actor_id = 5)' IS NOT NULL)",
        ] {
            assert_eq!(rewrite_comparisons(p, &ctx(), Some(&own)), None, "{p}");
        }
        // A column of a table that is not rewritten.
        let v = " SELECT o.id FROM (public.orders o JOIN public.users u ON ((u.id = o.user_id)));";
        assert_eq!(rewrite_comparisons(v, &ctx(), None), None);
    }

    #[test]
    fn the_nested_comparison_inside_an_or_is_rewritten() {
        let own = QualifiedName::new("public", "audit events");
        let p = "((actor_id = 5) OR (id = 3))";
        assert_eq!(
            rewrite_comparisons(p, &ctx(), Some(&own)).as_deref(),
            Some("((actor_id = (SELECT _rekey_p.\"uuid_id\" FROM \"public\".\"users\" _rekey_p WHERE _rekey_p.\"id\" = 5)) OR (id = 3))")
        );
    }

    #[test]
    fn names_are_substituted_on_token_boundaries_only() {
        let map = vec![(
            QualifiedName::new("public", "user_sessions"),
            QualifiedName::new("trial", "user_sessions"),
        )];
        let v = "SELECT s.user_id, 'public.user_sessions' FROM public.user_sessions s JOIN public.user_sessions_x x ON x.a = public.user_sessions.id";
        assert_eq!(
            substitute_names(v, &map),
            "SELECT s.user_id, 'public.user_sessions' FROM \"trial\".\"user_sessions\" s JOIN public.user_sessions_x x ON x.a = \"trial\".\"user_sessions\".id"
        );
        let map = vec![(
            QualifiedName::new("public", "audit events"),
            QualifiedName::new("t", "a"),
        )];
        assert_eq!(
            substitute_names("ON public.\"audit events\" FOR", &map),
            "ON \"t\".\"a\" FOR"
        );
    }
}
