-- Columns of one table in attnum order, dropped ones left out. $1 table oid.
-- Run with search_path = '' so types, collations and expressions come out qualified.
SELECT a.attnum,
       a.attname::text AS name,
       a.atttypid AS type_oid,
       pg_catalog.format_type(a.atttypid, a.atttypmod) AS type_sql,
       t.typtype::text AS typtype,
       a.attnotnull,
       a.attidentity::text AS identity,
       a.attgenerated::text AS generated,
       CASE WHEN a.attgenerated = '' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END AS default_expr,
       CASE WHEN a.attgenerated <> '' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END AS generated_expr,
       CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
            THEN pg_catalog.format('%I.%I', cn.nspname, co.collname) END AS collation,
       pg_catalog.col_description(a.attrelid, a.attnum) AS comment,
       a.attstorage::text AS storage,
       t.typstorage::text AS type_storage,
       -- Through jsonb so one text serves every version: attcompression is
       -- 14+, attstattarget is NULL for the default from 17 on and -1 before.
       NULLIF(pg_catalog.to_jsonb(a) ->> 'attcompression', '') AS compression,
       (pg_catalog.to_jsonb(a) ->> 'attstattarget')::int4 AS stattarget,
       a.attoptions AS options,
       seq.nspname AS seq_schema,
       seq.relname AS seq_name,
       s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
-- The sequence an identity ('i') or serial ('a') column owns.
LEFT JOIN LATERAL (
    SELECT sc.oid, sn.nspname::text AS nspname, sc.relname::text AS relname
    FROM pg_catalog.pg_depend dep
    JOIN pg_catalog.pg_class sc ON sc.oid = dep.objid AND sc.relkind = 'S'
    JOIN pg_catalog.pg_namespace sn ON sn.oid = sc.relnamespace
    WHERE dep.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
      AND dep.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
      AND dep.refobjid = a.attrelid AND dep.refobjsubid = a.attnum
      AND dep.deptype IN ('a', 'i')
    ORDER BY sc.oid
    LIMIT 1
) seq ON true
LEFT JOIN pg_catalog.pg_sequence s ON s.seqrelid = seq.oid
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
