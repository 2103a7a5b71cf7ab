//! Names pg-rekey gives: the shadow table, the source after cutover, and the
//! shadow's indexes and index-backed constraints. Pure, and in one place so
//! that `ddl` (which creates them), `plan` (which records the shadow) and
//! `swap` (which renames them back) cannot disagree.
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

use crate::pg::QualifiedName;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
