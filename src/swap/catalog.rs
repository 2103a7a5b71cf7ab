//! Reading what hangs off a source table and its shadow.
//!
//! Call [`load_dependents`] (or [`load_dependents_many`] for several tables,
//! pipelined) inside the swap transaction, after the locks are taken: nothing
//! about either table can change from then on, so what is read is what the
//! swap statements act on. Or read before the locks, after a
//! [`fingerprint`], and use the read only if the fingerprint taken under the
//! locks is the same (see there why that is equivalent). Every definition is
//! rendered with `search_path = ''` (set for the duration of the load, then
//! restored), so the text is schema-qualified and means the same in any
//! session.

use std::collections::BTreeSet;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, Row};

use crate::pg::QualifiedName;

use super::sql::{constraint_key, index_key, match_objects, CatalogObject};
use super::{
    Acl, ColumnPrivileges, Dependents, Grantee, IncomingFk, ObjectKind, Policy, Privilege,
    PublicationMembership, ReplicaIdentity, SequenceCarry, SequenceOptions, Statistics, SwapError,
    Trigger, View, OWN_PUBLICATION_PREFIX,
};

const TABLE: &str = "
SELECT c.oid, pg_catalog.pg_get_userbyid(c.relowner), c.relkind::text,
       c.relrowsecurity, c.relforcerowsecurity, c.relreplident::text,
       pg_catalog.obj_description(c.oid, 'pg_class'), c.oid::pg_catalog.regclass::text
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = $2";

const TABLE_ACL: &str = "
SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
       pg_catalog.pg_get_userbyid(a.grantor), a.privilege_type, a.is_grantable,
       c.relacl IS NULL
  FROM pg_catalog.pg_class c,
       LATERAL pg_catalog.aclexplode(coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner))) a
 WHERE c.oid = $1
 ORDER BY 1 NULLS FIRST, 2, 3";

const COLUMN_ACL: &str = "
SELECT at.attname::text,
       CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
       pg_catalog.pg_get_userbyid(a.grantor), a.privilege_type, a.is_grantable
  FROM pg_catalog.pg_attribute at, LATERAL pg_catalog.aclexplode(at.attacl) a
 WHERE at.attrelid = $1 AND at.attnum > 0 AND NOT at.attisdropped AND at.attacl IS NOT NULL
 ORDER BY at.attnum, 2 NULLS FIRST, 3, 4";

const COLUMN_COMMENTS: &str = "
SELECT a.attname::text, pg_catalog.col_description(a.attrelid, a.attnum)
  FROM pg_catalog.pg_attribute a
 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum";

const POLICIES: &str = "
SELECT p.polname::text, p.polpermissive, p.polcmd::text,
       ARRAY(SELECT CASE WHEN r = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(r)::text END
               FROM unnest(p.polroles) r),
       pg_catalog.pg_get_expr(p.polqual, p.polrelid),
       pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid),
       pg_catalog.obj_description(p.oid, 'pg_policy')
  FROM pg_catalog.pg_policy p
 WHERE p.polrelid = $1
 ORDER BY p.polname";

const TRIGGERS: &str = "
SELECT t.tgname::text, pg_catalog.pg_get_triggerdef(t.oid), t.tgenabled::text,
       pg_catalog.obj_description(t.oid, 'pg_trigger')
  FROM pg_catalog.pg_trigger t
 WHERE t.tgrelid = $1 AND NOT t.tgisinternal
 ORDER BY t.tgname";

/// Views and materialized views reading the table, directly or through other
/// views; `deps` pairs each with every relation its `_RETURN` rule reads.
pub(crate) const VIEWS: &str = "
WITH RECURSIVE deps(view_oid, ref_oid) AS (
    SELECT r.ev_class, d.refobjid
      FROM pg_catalog.pg_depend d
      JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
      JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
     WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
       AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.refobjid = $1 AND r.ev_class <> d.refobjid
       AND r.rulename = '_RETURN' AND v.relkind IN ('v', 'm')
  UNION
    SELECT r.ev_class, d.refobjid
      FROM deps
      JOIN pg_catalog.pg_depend d ON d.refobjid = deps.view_oid
      JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
      JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
     WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
       AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND r.ev_class <> d.refobjid
       AND r.rulename = '_RETURN' AND v.relkind IN ('v', 'm')
)
SELECT v.oid, n.nspname::text, v.relname::text, v.relkind::text,
       pg_catalog.pg_get_viewdef(v.oid), coalesce(v.reloptions, '{}'),
       pg_catalog.pg_get_userbyid(v.relowner), pg_catalog.obj_description(v.oid, 'pg_class'),
       v.relispopulated,
       ARRAY(SELECT DISTINCT d2.ref_oid FROM deps d2 WHERE d2.view_oid = v.oid)
  FROM pg_catalog.pg_class v JOIN pg_catalog.pg_namespace n ON n.oid = v.relnamespace
 WHERE v.oid IN (SELECT view_oid FROM deps)
 ORDER BY v.oid";

const VIEW_DEFAULTS: &str = "
SELECT a.attname::text, pg_catalog.pg_get_expr(d.adbin, d.adrelid)
  FROM pg_catalog.pg_attrdef d
  JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
 WHERE d.adrelid = $1
 ORDER BY a.attnum";

const VIEW_RULES: &str = "
SELECT pg_catalog.pg_get_ruledef(r.oid)
  FROM pg_catalog.pg_rewrite r
 WHERE r.ev_class = $1 AND r.rulename <> '_RETURN'
 ORDER BY r.rulename";

const MATVIEW_INDEXES: &str = "
SELECT pg_catalog.pg_get_indexdef(x.indexrelid)
  FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
 WHERE x.indrelid = $1
 ORDER BY i.relname";

const INCOMING_FKS: &str = "
SELECT k.conname::text, pg_catalog.pg_get_constraintdef(k.oid), n.nspname::text, r.relname::text,
       k.convalidated, r.relkind::text, pg_catalog.obj_description(k.oid, 'pg_constraint')
  FROM pg_catalog.pg_constraint k
  JOIN pg_catalog.pg_class r ON r.oid = k.conrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
 WHERE k.contype = 'f' AND k.confrelid = $1 AND k.conrelid <> $1 AND k.conparentid = 0
 ORDER BY n.nspname, r.relname, k.conname";

const PUBLICATIONS_15: &str = "
SELECT p.pubname::text,
       CASE WHEN pr.prattrs IS NULL THEN NULL ELSE
         ARRAY(SELECT a.attname::text
                 FROM unnest(pr.prattrs::int2[]) WITH ORDINALITY u(n, o)
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = pr.prrelid AND a.attnum = u.n
                ORDER BY u.o) END,
       pg_catalog.pg_get_expr(pr.prqual, pr.prrelid)
  FROM pg_catalog.pg_publication_rel pr
  JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
 WHERE pr.prrelid = $1 AND NOT starts_with(p.pubname, $2)
 ORDER BY p.pubname";

const PUBLICATIONS_OLD: &str = "
SELECT p.pubname::text, NULL::text[], NULL::text
  FROM pg_catalog.pg_publication_rel pr
  JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
 WHERE pr.prrelid = $1 AND NOT starts_with(p.pubname, $2)
 ORDER BY p.pubname";

/// Extended statistics on the table (`CREATE STATISTICS`), which PostgreSQL
/// binds to the table's OID: carried by re-creating them on the new table.
const STATISTICS: &str = "
SELECT n.nspname::text, s.stxname::text, pg_catalog.pg_get_statisticsobjdef(s.oid),
       pg_catalog.obj_description(s.oid, 'pg_statistic_ext')
  FROM pg_catalog.pg_statistic_ext s JOIN pg_catalog.pg_namespace n ON n.oid = s.stxnamespace
 WHERE s.stxrelid = $1
 ORDER BY n.nspname, s.stxname";

const REPLICA_INDEX: &str = "
SELECT i.relname::text
  FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
 WHERE x.indrelid = $1 AND x.indisreplident";

/// Sequences linked to the table's columns: `deptype` `a` (owned, serial) or
/// `i` (identity), with the column's default and the sequence's options.
const SEQUENCES: &str = "
SELECT a.attname::text, sn.nspname::text, s.relname::text, d.deptype::text,
       pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), a.attidentity::text,
       ps.seqstart, ps.seqincrement, ps.seqmin, ps.seqmax, ps.seqcache, ps.seqcycle
  FROM pg_catalog.pg_depend d
  JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
  JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
  JOIN pg_catalog.pg_sequence ps ON ps.seqrelid = s.oid
  JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
  LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
 WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
   AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
   AND d.refobjid = $1 AND d.deptype IN ('a', 'i')
 ORDER BY a.attnum, s.relname";

/// Indexes that back no PRIMARY KEY / UNIQUE / EXCLUDE constraint of the table.
///
/// The fourth column is the index's shape (see [`CatalogObject::shape`]):
/// built from `pg_index` and `pg_am`, never from printed text.
const INDEXES: &str = "
SELECT i.relname::text, pg_catalog.pg_get_indexdef(x.indexrelid),
       pg_catalog.obj_description(x.indexrelid, 'pg_class'),
       pg_catalog.concat_ws('|', x.indisunique, am.amname, x.indnkeyatts,
              ARRAY(SELECT coalesce(a.attname::text, '')
                      FROM unnest(x.indkey::pg_catalog.int2[]) WITH ORDINALITY u(n, o)
                      LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = u.n
                     ORDER BY u.o)::text,
              x.indexprs IS NOT NULL, x.indpred IS NOT NULL)
  FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
  JOIN pg_catalog.pg_am am ON am.oid = i.relam
 WHERE x.indrelid = $1
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k
                    WHERE k.conindid = x.indexrelid AND k.conrelid = x.indrelid
                      AND k.contype IN ('p', 'u', 'x'))
 ORDER BY i.relname";

/// Constraints with their matching key. A foreign key is keyed by its
/// columns, its target (0 for the table itself, so a shadow's key to itself
/// matches the source's key to itself) and its actions, not by the target
/// columns: a reference column's key targets the parent's uuid column on the
/// shadow and its integer key on the source, and is still the same key.
/// `NOT NULL` constraints (`n`, catalogued from PostgreSQL 18 on, named
/// `<table>_<column>_not_null` by default) are matched by their definition
/// (`NOT NULL <column>`), so the new table's get the source's names too.
const CONSTRAINTS: &str = "
SELECT k.conname::text, k.contype::text, k.convalidated,
       pg_catalog.obj_description(k.oid, 'pg_constraint'),
       CASE WHEN k.contype = 'f' THEN pg_catalog.concat_ws('|', 'f',
              ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(n, o)
                      JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n
                     ORDER BY u.o)::text,
              CASE WHEN k.confrelid = k.conrelid THEN 0::oid ELSE k.confrelid END::text,
              k.confupdtype, k.confdeltype, k.confmatchtype, k.condeferrable, k.condeferred)
            ELSE pg_catalog.pg_get_constraintdef(k.oid) END,
       pg_catalog.concat_ws('|', k.contype,
              ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(n, o)
                      JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n
                     ORDER BY u.o)::text)
  FROM pg_catalog.pg_constraint k
 WHERE k.conrelid = $1 AND k.contype IN ('p', 'u', 'x', 'f', 'c', 'n')
 ORDER BY k.conname";

/// Objects bound to the table by OID that the swap cannot carry: functions
/// with SQL-standard bodies, rules other than a view's `_RETURN`, and other
/// tables' policies that read this table.
pub(crate) const UNSUPPORTED: &str = "
SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)
  FROM pg_catalog.pg_depend d
 WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = $1
   AND d.deptype IN ('n', 'a')
   AND (d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
        OR (d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite r
                              JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
                             WHERE r.oid = d.objid AND r.rulename = '_RETURN'
                               AND v.relkind IN ('v', 'm')))
        OR (d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass
            AND EXISTS (SELECT 1 FROM pg_catalog.pg_policy p
                         WHERE p.oid = d.objid AND p.polrelid <> $1)))
 ORDER BY 1";

/// A fingerprint of every catalog row the swap depends on, for the named
/// tables (`$1` schemas, `$2` names: the sources and the shadows); see
/// [`fingerprint`]. Each row is represented by its identity and its `xmin`:
/// any committed `INSERT`, `UPDATE` or `DELETE` of such a row changes the
/// set. Every lookup is a join from a short list of OIDs to an indexed key
/// column, so the planner uses the catalog indexes however large the
/// catalog is (measured: ~6 ms with 4,000 other tables in the database,
/// against ~25 ms for the same query written with `IN (SELECT …)` over
/// common table expressions), except `confrelid`, which has no index and is
/// scanned once, as the incoming-foreign-key read scans it.
const FINGERPRINT: &str = "
WITH RECURSIVE
base(oid) AS MATERIALIZED (
    SELECT c.oid
      FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[]) AS t(schema_name, table_name)
      JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema_name::pg_catalog.name
      JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name::pg_catalog.name),
views(oid) AS (
    SELECT r.ev_class
      FROM base b
      JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = b.oid
      JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
     WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND r.ev_class <> d.refobjid
  UNION
    SELECT r.ev_class
      FROM views v
      JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = v.oid
      JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
     WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND r.ev_class <> v.oid),
incoming(oid, conrelid, xmin) AS MATERIALIZED (
    SELECT k.oid, k.conrelid, k.xmin FROM pg_catalog.pg_constraint k WHERE k.confrelid IN (SELECT oid FROM base)),
owned(oids) AS MATERIALIZED (
    SELECT pg_catalog.array_agg(oid) FROM (SELECT oid FROM base UNION SELECT oid FROM views) x),
rel(oids) AS MATERIALIZED (
    SELECT pg_catalog.array_agg(DISTINCT x.oid) FROM (
        SELECT u.oid FROM owned, unnest(owned.oids) AS u(oid)
      UNION ALL
        SELECT x.indexrelid FROM owned, unnest(owned.oids) AS u(oid)
          JOIN pg_catalog.pg_index x ON x.indrelid = u.oid
      UNION ALL
        SELECT d.objid FROM base b
          JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = b.oid
         WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
      UNION ALL
        SELECT conrelid FROM incoming
      UNION ALL
        SELECT k.confrelid FROM base b JOIN pg_catalog.pg_constraint k ON k.conrelid = b.oid
         WHERE k.confrelid <> 0) x),
rels(oid) AS (SELECT u.oid FROM rel, unnest(rel.oids) AS u(oid)),
members(classid, oid, xmin) AS MATERIALIZED (
    SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass::pg_catalog.oid, k.oid, k.xmin
      FROM rels JOIN pg_catalog.pg_constraint k ON k.conrelid = rels.oid
  UNION
    SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass::pg_catalog.oid, oid, xmin FROM incoming
  UNION ALL
    SELECT 'pg_catalog.pg_trigger'::pg_catalog.regclass::pg_catalog.oid, t.oid, t.xmin
      FROM rels JOIN pg_catalog.pg_trigger t ON t.tgrelid = rels.oid
  UNION ALL
    SELECT 'pg_catalog.pg_policy'::pg_catalog.regclass::pg_catalog.oid, p.oid, p.xmin
      FROM rels JOIN pg_catalog.pg_policy p ON p.polrelid = rels.oid
  UNION ALL
    SELECT 'pg_catalog.pg_rewrite'::pg_catalog.regclass::pg_catalog.oid, w.oid, w.xmin
      FROM rels JOIN pg_catalog.pg_rewrite w ON w.ev_class = rels.oid
  UNION ALL
    SELECT 'pg_catalog.pg_attrdef'::pg_catalog.regclass::pg_catalog.oid, ad.oid, ad.xmin
      FROM rels JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = rels.oid
  UNION ALL
    SELECT 'pg_catalog.pg_publication_rel'::pg_catalog.regclass::pg_catalog.oid, pr.oid, pr.xmin
      FROM rels JOIN pg_catalog.pg_publication_rel pr ON pr.prrelid = rels.oid
  UNION ALL
    SELECT 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid, c.oid, c.xmin
      FROM rels JOIN pg_catalog.pg_class c ON c.oid = rels.oid),
mem(classids, oids) AS MATERIALIZED (
    SELECT pg_catalog.array_agg(classid), pg_catalog.array_agg(oid) FROM members),
refs(classid, oid, subid) AS MATERIALIZED (
    SELECT DISTINCT d.refclassid, d.refobjid, d.refobjsubid
      FROM mem, unnest(mem.classids, mem.oids) AS u(classid, oid)
      JOIN pg_catalog.pg_depend d ON d.classid = u.classid AND d.objid = u.oid),
ref(oids) AS MATERIALIZED (SELECT pg_catalog.array_agg(oid) FROM refs),
items(item) AS (
    SELECT 'o' || oid FROM base
  UNION ALL
    SELECT 'm' || m.classid || '/' || m.oid || '/' || m.xmin FROM members m
  UNION ALL
    SELECT 'a' || a.attrelid || '/' || a.attnum || '/' || a.xmin
      FROM rels JOIN pg_catalog.pg_attribute a ON a.attrelid = rels.oid
  UNION ALL
    SELECT 'x' || x.indexrelid || '/' || x.xmin
      FROM rels JOIN pg_catalog.pg_index x ON x.indrelid = rels.oid
  UNION ALL
    SELECT 's' || s.seqrelid || '/' || s.xmin
      FROM rels JOIN pg_catalog.pg_sequence s ON s.seqrelid = rels.oid
  UNION ALL
    SELECT 'd' || d.classid || '/' || d.objid || '/' || d.objsubid || '/' || d.refobjid || '/'
           || d.refobjsubid || '/' || d.deptype::pg_catalog.text || '/' || d.xmin
      FROM rels JOIN pg_catalog.pg_depend d
        ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = rels.oid
  UNION ALL
    SELECT 'c' || e.objoid || '/' || e.classoid || '/' || e.objsubid || '/' || e.xmin
      FROM mem, unnest(mem.oids) AS u(oid) JOIN pg_catalog.pg_description e ON e.objoid = u.oid
  UNION ALL
    SELECT 'p' || p.oid || '/' || p.xmin FROM pg_catalog.pg_publication p
     WHERE p.oid IN (SELECT pr.prpubid FROM rels JOIN pg_catalog.pg_publication_rel pr ON pr.prrelid = rels.oid)
  UNION ALL
    SELECT 'r' || f.oid || '/' || f.xmin
      FROM refs JOIN pg_catalog.pg_proc f ON f.oid = refs.oid
     WHERE refs.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
  UNION ALL
    SELECT 't' || y.oid || '/' || y.xmin
      FROM refs JOIN pg_catalog.pg_type y ON y.oid = refs.oid
     WHERE refs.classid = 'pg_catalog.pg_type'::pg_catalog.regclass
  UNION ALL
    SELECT 'k' || c.oid || '/' || c.xmin
      FROM refs JOIN pg_catalog.pg_class c ON c.oid = refs.oid
     WHERE refs.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND refs.subid = 0
  UNION ALL
    SELECT 'b' || a.attrelid || '/' || a.attnum || '/' || a.xmin
      FROM refs JOIN pg_catalog.pg_attribute a ON a.attrelid = refs.oid AND a.attnum = refs.subid
     WHERE refs.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND refs.subid > 0
  UNION ALL
    SELECT 'n' || n.oid || '/' || n.xmin FROM pg_catalog.pg_namespace n)
SELECT pg_catalog.md5(pg_catalog.string_agg(item, ',' ORDER BY item)), pg_catalog.count(*) FROM items";

struct TableRow {
    oid: u32,
    owner: String,
    rls_enabled: bool,
    rls_forced: bool,
    replident: String,
    comment: Option<String>,
    regclass: String,
}

/// A query parameter with its type spelled out, so a query is one
/// Parse/Bind/Execute/Sync exchange ([`GenericClient::query_typed`]) instead
/// of a prepare round trip followed by an execute round trip.
type Param<'a> = (&'a (dyn ToSql + Sync), Type);

fn oid_param(oid: &u32) -> [Param<'_>; 1] {
    [(oid as &(dyn ToSql + Sync), Type::OID)]
}

async fn rows<C: GenericClient + Sync>(
    client: &C,
    sql: &str,
    params: &[Param<'_>],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    client.query_typed(sql, params).await
}

async fn rows_by_oid<C: GenericClient + Sync>(
    client: &C,
    sql: &str,
    oid: u32,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    client.query_typed(sql, &oid_param(&oid)).await
}

/// Read everything the swap must carry from `source` to `shadow`; see the
/// module docs of [`crate::swap`]. `client` may be a `Client` or (as it
/// should be for the swap) the `Transaction` holding the locks.
///
/// Fails when either table is missing, when the shadow is in another schema,
/// when something bound to the source cannot be carried
/// ([`SwapError::Unsupported`]), or when the source's replica identity index
/// has no counterpart on the shadow.
pub async fn load_dependents<C: GenericClient + Sync>(
    client: &C,
    source: &QualifiedName,
    shadow: &QualifiedName,
) -> Result<Dependents, SwapError> {
    let mut all = load_dependents_many(client, &[(source.clone(), shadow.clone())]).await?;
    all.pop().ok_or_else(|| SwapError::NotATable {
        table: source.clone(),
        role: "source",
    })
}

/// [`load_dependents`] for several `(source, shadow)` pairs at once, in the
/// order given.
///
/// The reads are **pipelined**: every query whose inputs are known is sent
/// before the first answer is awaited (tokio-postgres writes a request when
/// its future is first polled, and `join` polls in order), and each query is
/// one exchange with explicit parameter types. A load is then four round
/// trips whatever the number of tables and objects — `search_path` and the
/// tables' rows; everything keyed by their OIDs; the dependent views'
/// details; `search_path` restored — instead of two per query. That matters
/// because the cutover runs this while it holds `ACCESS EXCLUSIVE` locks.
/// The server still runs the queries one after the other in the order they
/// were sent, so `search_path` is empty for every one of them, and on a
/// failure the first error in that order is the one returned (later
/// queries in an aborted transaction only report 25P02).
pub async fn load_dependents_many<C: GenericClient + Sync>(
    client: &C,
    pairs: &[(QualifiedName, QualifiedName)],
) -> Result<Vec<Dependents>, SwapError> {
    let Some((first, _)) = pairs.first() else {
        return Ok(Vec::new());
    };
    let err = |table: &QualifiedName| {
        let table = table.clone();
        move |source: tokio_postgres::Error| SwapError::Catalog { table, source }
    };
    for (source, shadow) in pairs {
        if shadow.schema != source.schema {
            return Err(SwapError::ShadowSchema {
                table: source.clone(),
                shadow: shadow.clone(),
            });
        }
    }
    // Stage 1: save and clear search_path, read the tables' rows and the
    // server version — one round trip, run by the server in this order.
    let previous = client.query_typed_one("SELECT pg_catalog.current_setting('search_path')", &[]);
    let cleared = client.query_typed_one(
        "SELECT pg_catalog.set_config('search_path', '', false)",
        &[],
    );
    let version = client.query_typed_one(
        "SELECT pg_catalog.current_setting('server_version_num')::int",
        &[],
    );
    let table_rows =
        futures_util::future::join_all(pairs.iter().map(|(source, shadow)| async move {
            let (s, h) = futures_util::join!(
                table_row(client, source, "source"),
                table_row(client, shadow, "shadow")
            );
            Ok::<_, SwapError>((s?, h?))
        }));
    let (previous, cleared, version, table_rows) =
        futures_util::join!(previous, cleared, version, table_rows);
    let previous: String = previous.map_err(err(first))?.get(0);
    let loaded = async {
        cleared.map_err(err(first))?;
        let version: i32 = version.map_err(err(first))?.get(0);
        let mut tables = Vec::with_capacity(pairs.len());
        for r in table_rows {
            tables.push(r?);
        }
        // Stages 2 and 3 for every table at once.
        let loads = pairs
            .iter()
            .zip(tables)
            .map(|((source, shadow), (src, shd))| load(client, source, shadow, src, shd, version));
        futures_util::future::join_all(loads)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
    }
    .await;
    // Restore even after a failed load (in an aborted transaction this fails,
    // and the rollback restores the setting anyway).
    let restored = rows(
        client,
        "SELECT pg_catalog.set_config('search_path', $1, false)",
        &[(&previous, Type::TEXT)],
    )
    .await;
    let deps = loaded?;
    restored.map_err(err(first))?;
    Ok(deps)
}

/// A fingerprint of the catalog state [`load_dependents_many`] reads for
/// these `(source, shadow)` pairs: equal fingerprints at two moments mean no
/// transaction changed any of that state in between.
///
/// # Why a fingerprint is enough
///
/// The cutover reads the dependents **before** it takes its locks (that read
/// is the slow part) and takes the fingerprint twice: just before that read,
/// and again under the locks. The fingerprint lists, with its `xmin`, every
/// catalog row the read depends on: the `pg_class` and `pg_attribute` rows
/// of the tables, of the views over them (recursively), of their indexes,
/// owned sequences, referencing and referenced tables; the constraints,
/// triggers, policies, rewrite rules, column defaults and publication
/// memberships of those relations; their comments (`pg_description`); the
/// `pg_depend` rows that point at them; the `pg_proc`, `pg_type`, `pg_class`
/// and `pg_attribute` rows that the views, triggers, policies, defaults and
/// constraints refer to (their names appear in rendered definitions); and
/// every schema. An `UPDATE` gives a row a new `xmin`, an `INSERT` or
/// `DELETE` changes the set, and the lookups are by the same keys the read
/// uses, so a new trigger, grant (`relacl` is in the `pg_class` row), policy,
/// view, index, comment or publication membership changes the fingerprint —
/// and so does a rename of a function or column that a definition names.
/// Updates the server makes in place (statistics, `relfrozenxid`) keep
/// `xmin` and change nothing the swap uses. So if the fingerprint taken
/// under the locks equals the one taken before the read, the read describes
/// the catalog as it is under the locks; if not, the cutover gives the
/// locks back and builds the swap again in its next attempt.
///
/// Not covered: role renames (privileges and policies name roles; a renamed
/// role makes the `GRANT` fail and the swap roll back) and renames of
/// operators and collations named in definitions (the re-created object then
/// fails the same way, or the name is re-bound by a same-named object created
/// in between).
pub async fn fingerprint<C: GenericClient + Sync>(
    client: &C,
    pairs: &[(QualifiedName, QualifiedName)],
) -> Result<String, tokio_postgres::Error> {
    let (schemas, names) = fingerprint_params(pairs);
    let row = client
        .query_typed_one(
            FINGERPRINT,
            &[(&schemas, Type::TEXT_ARRAY), (&names, Type::TEXT_ARRAY)],
        )
        .await?;
    Ok(fingerprint_of(&row))
}

/// Read the [`super::LockTargets`] of the sources with these OIDs, each list in
/// name order.
pub async fn lock_targets<C: GenericClient + Sync>(
    client: &C,
    source_oids: &[u32],
) -> Result<super::LockTargets, tokio_postgres::Error> {
    let name = |r: &Row| QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1));
    let views = client.query(LOCK_VIEWS, &[&source_oids]).await?;
    let referencing = client.query(LOCK_REFERENCING, &[&source_oids]).await?;
    let referenced = client.query(LOCK_REFERENCED, &[&source_oids]).await?;
    Ok(super::LockTargets {
        referenced: referenced.iter().map(name).collect(),
        referencing: referencing.iter().map(name).collect(),
        views: views.iter().map(name).collect(),
    })
}

/// The views over `$1` (source OIDs), recursively through other views.
const LOCK_VIEWS: &str = "WITH RECURSIVE deps(oid) AS (
                SELECT r.ev_class FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
                 WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
                   AND d.refobjid = ANY($1) AND r.ev_class <> d.refobjid
                UNION
                SELECT r.ev_class FROM deps JOIN pg_depend d ON d.refobjid = deps.oid
                  JOIN pg_rewrite r ON r.oid = d.objid
                 WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
                   AND r.ev_class <> deps.oid)
             SELECT n.nspname, c.relname FROM deps JOIN pg_class c ON c.oid = deps.oid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'v' ORDER BY 1, 2";

/// The tables outside `$1` with a foreign key into one of `$1`.
const LOCK_REFERENCING: &str = "SELECT DISTINCT n.nspname, c.relname FROM pg_constraint con
               JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE con.contype = 'f' AND con.confrelid = ANY($1) AND NOT con.conrelid = ANY($1)
              ORDER BY 1, 2";

/// The tables outside `$1` that a foreign key of one of `$1` points at.
const LOCK_REFERENCED: &str = "SELECT DISTINCT n.nspname, c.relname FROM pg_constraint con
               JOIN pg_class c ON c.oid = con.confrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE con.contype = 'f' AND con.conrelid = ANY($1) AND NOT con.confrelid = ANY($1)
              ORDER BY 1, 2";

/// [`fingerprint`] as a statement prepared once on a session, so that taking
/// it again costs only its execution. With `plan_cache_mode =
/// force_generic_plan` on that session, the first execution plans it and
/// later ones reuse the plan: the cutover executes it once before the locks
/// and once under them (planning is about half of its cost).
pub struct Fingerprinter(tokio_postgres::Statement);

impl Fingerprinter {
    /// Prepare the statement on `client`'s session.
    pub async fn prepare<C: GenericClient + Sync>(
        client: &C,
    ) -> Result<Fingerprinter, tokio_postgres::Error> {
        client
            .prepare_typed(FINGERPRINT, &[Type::TEXT_ARRAY, Type::TEXT_ARRAY])
            .await
            .map(Fingerprinter)
    }

    /// [`fingerprint`], on the session the statement was prepared on (or a
    /// transaction of it).
    pub async fn take<C: GenericClient + Sync>(
        &self,
        client: &C,
        pairs: &[(QualifiedName, QualifiedName)],
    ) -> Result<String, tokio_postgres::Error> {
        let (schemas, names) = fingerprint_params(pairs);
        let row = client.query_one(&self.0, &[&schemas, &names]).await?;
        Ok(fingerprint_of(&row))
    }
}

fn fingerprint_params(pairs: &[(QualifiedName, QualifiedName)]) -> (Vec<&str>, Vec<&str>) {
    pairs
        .iter()
        .flat_map(|(source, shadow)| [source, shadow])
        .map(|t| (t.schema.as_str(), t.name.as_str()))
        .unzip()
}

fn fingerprint_of(row: &Row) -> String {
    let hash: Option<String> = row.get(0);
    let count: i64 = row.get(1);
    format!("{}/{count}", hash.unwrap_or_default())
}

/// Stages 2 (everything keyed by the two OIDs) and 3 (the views' details)
/// for one table.
async fn load<C: GenericClient + Sync>(
    client: &C,
    source: &QualifiedName,
    shadow: &QualifiedName,
    src: TableRow,
    shd: TableRow,
    version: i32,
) -> Result<Dependents, SwapError> {
    let err = |e: tokio_postgres::Error| SwapError::Catalog {
        table: source.clone(),
        source: e,
    };
    let pub_sql = if version >= 150000 {
        PUBLICATIONS_15
    } else {
        PUBLICATIONS_OLD
    };
    let own_prefix = OWN_PUBLICATION_PREFIX;
    let pub_params: [Param<'_>; 2] = [(&src.oid, Type::OID), (&own_prefix, Type::TEXT)];
    let replica_index = async {
        if src.replident == "i" {
            rows_by_oid(client, REPLICA_INDEX, src.oid).await.map(Some)
        } else {
            Ok(None)
        }
    };
    let (
        unsupported,
        acl,
        shadow_acl,
        policies,
        triggers,
        views,
        incoming_fks,
        publications,
        src_objects,
        shd_objects,
        replica_index,
        src_comments,
        shd_comments,
        src_seqs,
        shd_seqs,
        statistics,
    ) = futures_util::join!(
        rows_by_oid(client, UNSUPPORTED, src.oid),
        load_acl(client, src.oid),
        load_acl(client, shd.oid),
        rows_by_oid(client, POLICIES, src.oid),
        load_triggers(client, src.oid),
        load_views(client, src.oid),
        rows_by_oid(client, INCOMING_FKS, src.oid),
        rows(client, pub_sql, &pub_params),
        load_objects(client, src.oid, &src.regclass),
        load_objects(client, shd.oid, &shd.regclass),
        replica_index,
        load_column_comments(client, src.oid),
        load_column_comments(client, shd.oid),
        seq_rows(client, src.oid),
        seq_rows(client, shd.oid),
        rows_by_oid(client, STATISTICS, src.oid),
    );

    let unsupported: Vec<String> = unsupported.map_err(err)?.iter().map(|r| r.get(0)).collect();
    if !unsupported.is_empty() {
        return Err(SwapError::Unsupported {
            table: source.clone(),
            objects: unsupported,
        });
    }

    let acl = acl.map_err(err)?;
    let shadow_acl = shadow_acl.map_err(err)?;
    let shadow_acl_default = shadow_acl.owner_default && shadow_acl.columns.is_empty();
    let mut shadow_grantees: BTreeSet<Grantee> = BTreeSet::new();
    for p in shadow_acl
        .table
        .iter()
        .chain(shadow_acl.columns.iter().flat_map(|c| c.privileges.iter()))
    {
        shadow_grantees.insert(p.grantee.clone());
    }

    let policies = policies
        .map_err(err)?
        .iter()
        .map(|r| {
            let roles: Vec<Option<String>> = r.get(3);
            Policy {
                name: r.get(0),
                permissive: r.get(1),
                command: first_char(r.get(2)),
                roles: roles.into_iter().map(Grantee::from_nullable).collect(),
                using: r.get(4),
                check: r.get(5),
                comment: r.get(6),
            }
        })
        .collect();

    let triggers = triggers.map_err(err)?;
    let views = views.map_err(err)?;

    let incoming_fks = incoming_fks
        .map_err(err)?
        .iter()
        .map(|r| {
            let kind: String = r.get(5);
            IncomingFk {
                name: r.get(0),
                definition: r.get(1),
                table: QualifiedName::new(r.get::<_, String>(2), r.get::<_, String>(3)),
                validated: r.get(4),
                partitioned: kind == "p",
                comment: r.get(6),
            }
        })
        .collect();

    let publications = publications
        .map_err(err)?
        .iter()
        .map(|r| PublicationMembership {
            publication: r.get(0),
            columns: r.get(1),
            row_filter: r.get(2),
        })
        .collect();

    // Indexes and constraints, matched by definition.
    let src_objects = src_objects.map_err(err)?;
    let shd_objects = shd_objects.map_err(err)?;
    // Unmatched objects are reported by the caller (the swap warns about
    // them; a cache-warming read before the lock must not).
    let (renames, unmatched) = match_objects(&src_objects, &shd_objects);
    let constraint_comments = src_objects
        .iter()
        .filter(|o| o.kind == ObjectKind::Constraint)
        .filter_map(|o| o.comment.clone().map(|c| (o.name.clone(), c)))
        .collect();

    let replica_identity = match src.replident.as_str() {
        "f" => ReplicaIdentity::Full,
        "n" => ReplicaIdentity::Nothing,
        "i" => {
            let index: String = replica_index
                .map_err(err)?
                .and_then(|rows| rows.first().map(|r| r.get(0)))
                .unwrap_or_default();
            if !renames.iter().any(|r| r.original == index) {
                return Err(SwapError::ReplicaIdentityIndex {
                    table: source.clone(),
                    index,
                });
            }
            ReplicaIdentity::Index(index)
        }
        _ => ReplicaIdentity::Default,
    };

    // Column comments: the source's, and NULL where only the shadow has one.
    let src_comments = src_comments.map_err(err)?;
    let shd_comments = shd_comments.map_err(err)?;
    let column_comments = src_comments
        .iter()
        .filter_map(|(col, c)| {
            let shadow_has = shd_comments.iter().any(|(sc, s)| sc == col && s.is_some());
            (c.is_some() || shadow_has).then(|| (col.clone(), c.clone()))
        })
        .collect();

    let sequences = carry_sequences(src_seqs.map_err(err)?, shd_seqs.map_err(err)?);
    let statistics = statistics
        .map_err(err)?
        .iter()
        .map(|r| Statistics {
            name: QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            definition: r.get(2),
            comment: r.get(3),
        })
        .collect();

    Ok(Dependents {
        source: source.clone(),
        source_oid: src.oid,
        shadow: shadow.clone(),
        shadow_oid: shd.oid,
        owner: src.owner,
        shadow_owner: shd.owner,
        acl,
        shadow_grantees: shadow_grantees.into_iter().collect(),
        shadow_acl_default,
        rls_enabled: src.rls_enabled,
        rls_forced: src.rls_forced,
        policies,
        triggers,
        views,
        incoming_fks,
        publications,
        replica_identity,
        comment: src.comment,
        column_comments,
        sequences,
        renames,
        unmatched,
        constraint_comments,
        statistics,
    })
}

fn first_char(s: String) -> char {
    s.chars().next().unwrap_or(' ')
}

async fn table_row<C: GenericClient + Sync>(
    client: &C,
    table: &QualifiedName,
    role: &'static str,
) -> Result<TableRow, SwapError> {
    let found = rows(
        client,
        TABLE,
        &[(&table.schema, Type::NAME), (&table.name, Type::NAME)],
    )
    .await
    .map_err(|e| SwapError::Catalog {
        table: table.clone(),
        source: e,
    })?;
    match found.first() {
        Some(r) if r.get::<_, String>(2) == "r" => Ok(TableRow {
            oid: r.get(0),
            owner: r.get(1),
            rls_enabled: r.get(3),
            rls_forced: r.get(4),
            replident: r.get(5),
            comment: r.get(6),
            regclass: r.get(7),
        }),
        _ => Err(SwapError::NotATable {
            table: table.clone(),
            role,
        }),
    }
}

async fn load_acl<C: GenericClient + Sync>(
    client: &C,
    oid: u32,
) -> Result<Acl, tokio_postgres::Error> {
    let (table_rows, column_rows) = futures_util::join!(
        rows_by_oid(client, TABLE_ACL, oid),
        rows_by_oid(client, COLUMN_ACL, oid)
    );
    let table_rows = table_rows?;
    // An empty (non-NULL) ACL explodes into no rows: not the owner's default.
    let owner_default = table_rows.first().is_some_and(|r| r.get::<_, bool>(4));
    let table = table_rows
        .iter()
        .map(|r| Privilege {
            grantee: Grantee::from_nullable(r.get(0)),
            grantor: r.get(1),
            privilege: r.get(2),
            grantable: r.get(3),
        })
        .collect();
    let mut columns: Vec<ColumnPrivileges> = Vec::new();
    for r in column_rows? {
        let column: String = r.get(0);
        let p = Privilege {
            grantee: Grantee::from_nullable(r.get(1)),
            grantor: r.get(2),
            privilege: r.get(3),
            grantable: r.get(4),
        };
        match columns.last_mut() {
            Some(c) if c.column == column => c.privileges.push(p),
            _ => columns.push(ColumnPrivileges {
                column,
                privileges: vec![p],
            }),
        }
    }
    Ok(Acl {
        owner_default,
        table,
        columns,
    })
}

async fn load_triggers<C: GenericClient + Sync>(
    client: &C,
    oid: u32,
) -> Result<Vec<Trigger>, tokio_postgres::Error> {
    Ok(rows_by_oid(client, TRIGGERS, oid)
        .await?
        .iter()
        .map(|r| Trigger {
            name: r.get(0),
            definition: r.get(1),
            enabled: first_char(r.get(2)),
            comment: r.get(3),
        })
        .collect())
}

async fn load_column_comments<C: GenericClient + Sync>(
    client: &C,
    oid: u32,
) -> Result<Vec<(String, Option<String>)>, tokio_postgres::Error> {
    Ok(rows_by_oid(client, COLUMN_COMMENTS, oid)
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// The dependent views, then every view's details at once (stage 3).
async fn load_views<C: GenericClient + Sync>(
    client: &C,
    oid: u32,
) -> Result<Vec<View>, tokio_postgres::Error> {
    let found = rows_by_oid(client, VIEWS, oid).await?;
    let details = futures_util::future::join_all(found.iter().map(|r| async move {
        let view_oid: u32 = r.get(0);
        let kind: String = r.get(3);
        let materialized = kind == "m";
        let indexes = async {
            if materialized {
                rows_by_oid(client, MATVIEW_INDEXES, view_oid).await
            } else {
                Ok(Vec::new())
            }
        };
        let (comments, defaults, rules, indexes, acl, triggers) = futures_util::join!(
            load_column_comments(client, view_oid),
            rows_by_oid(client, VIEW_DEFAULTS, view_oid),
            rows_by_oid(client, VIEW_RULES, view_oid),
            indexes,
            load_acl(client, view_oid),
            load_triggers(client, view_oid),
        );
        let options: Vec<String> = r.get(5);
        let options = options
            .iter()
            .map(|o| match o.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (o.clone(), "true".to_string()),
            })
            .collect();
        Ok::<View, tokio_postgres::Error>(View {
            oid: view_oid,
            name: QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            materialized,
            definition: r.get(4),
            options,
            owner: r.get(6),
            acl: acl?,
            comment: r.get(7),
            column_comments: comments?
                .into_iter()
                .filter_map(|(c, t)| t.map(|t| (c, t)))
                .collect(),
            column_defaults: defaults?.iter().map(|d| (d.get(0), d.get(1))).collect(),
            depends_on: r.get(9),
            triggers: triggers?,
            rules: rules?.iter().map(|d| d.get(0)).collect(),
            indexes: indexes?.iter().map(|d| d.get(0)).collect(),
            populated: r.get(8),
        })
    }))
    .await;
    details.into_iter().collect()
}

async fn load_objects<C: GenericClient + Sync>(
    client: &C,
    oid: u32,
    regclass: &str,
) -> Result<Vec<CatalogObject>, tokio_postgres::Error> {
    let (indexes, constraints) = futures_util::join!(
        rows_by_oid(client, INDEXES, oid),
        rows_by_oid(client, CONSTRAINTS, oid)
    );
    let mut out = Vec::new();
    for r in indexes? {
        let def: String = r.get(1);
        out.push(CatalogObject {
            kind: ObjectKind::Index,
            name: r.get(0),
            key: index_key(&def, regclass),
            shape: r.get(3),
            validated: true,
            comment: r.get(2),
        });
    }
    for r in constraints? {
        let contype: String = r.get(1);
        let def: String = r.get(4);
        out.push(CatalogObject {
            kind: if matches!(contype.as_str(), "p" | "u" | "x") {
                ObjectKind::IndexConstraint
            } else {
                ObjectKind::Constraint
            },
            name: r.get(0),
            key: if contype == "f" {
                def
            } else {
                constraint_key(&contype, &def)
            },
            shape: r.get(5),
            validated: r.get(2),
            comment: r.get(3),
        });
    }
    Ok(out)
}

struct SeqRow {
    column: String,
    sequence: QualifiedName,
    deptype: String,
    default: Option<String>,
    identity: String,
    options: SequenceOptions,
}

async fn seq_rows<C: GenericClient + Sync>(
    client: &C,
    oid: u32,
) -> Result<Vec<SeqRow>, tokio_postgres::Error> {
    Ok(rows_by_oid(client, SEQUENCES, oid)
        .await?
        .iter()
        .map(|r| SeqRow {
            column: r.get(0),
            sequence: QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            deptype: r.get(3),
            default: r.get(4),
            identity: r.get(5),
            options: SequenceOptions {
                start: r.get(6),
                increment: r.get(7),
                min: r.get(8),
                max: r.get(9),
                cache: r.get(10),
                cycle: r.get(11),
            },
        })
        .collect())
}

fn carry_sequences(src: Vec<SeqRow>, shd: Vec<SeqRow>) -> Vec<SequenceCarry> {
    let shadow_seq = |column: &str, deptype: &str| {
        shd.iter()
            .find(|s| s.column == column && s.deptype == deptype)
            .map(|s| s.sequence.clone())
    };
    src.into_iter()
        .map(|s| {
            if s.deptype == "i" {
                SequenceCarry::Identity {
                    kind: first_char(s.identity),
                    shadow_sequence: shadow_seq(&s.column, "i"),
                    column: s.column,
                    sequence: s.sequence,
                    options: s.options,
                }
            } else {
                SequenceCarry::Owned {
                    shadow_sequence: shadow_seq(&s.column, "a"),
                    column: s.column,
                    sequence: s.sequence,
                    default: s.default,
                }
            }
        })
        .collect()
}
