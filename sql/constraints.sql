-- Constraints of one table (not NOT NULL, which is per column). $1 table oid.
-- Column lists are returned as names in constraint order.
SELECT k.oid,
       k.conname::text AS name,
       k.contype::text AS contype,
       pg_catalog.pg_get_constraintdef(k.oid) AS definition,
       k.convalidated,
       k.condeferrable,
       k.condeferred,
       k.confupdtype::text AS on_update,
       k.confdeltype::text AS on_delete,
       k.confmatchtype::text AS match_type,
       k.confrelid AS ref_oid,
       rn.nspname::text AS ref_schema,
       rc.relname::text AS ref_table,
       coalesce(k.conkey, '{}') AS conkey,
       ARRAY(SELECT a.attname::text
             FROM pg_catalog.unnest(k.conkey) WITH ORDINALITY u(n, o)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n
             ORDER BY u.o) AS columns,
       coalesce(k.confkey, '{}') AS confkey,
       ARRAY(SELECT a.attname::text
             FROM pg_catalog.unnest(k.confkey) WITH ORDINALITY u(n, o)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n
             ORDER BY u.o) AS ref_columns,
       ic.relname::text AS index_name
FROM pg_catalog.pg_constraint k
LEFT JOIN pg_catalog.pg_class rc ON rc.oid = k.confrelid
LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
LEFT JOIN pg_catalog.pg_class ic ON ic.oid = k.conindid AND k.contype IN ('p', 'u', 'x')
WHERE k.conrelid = $1 AND k.contype IN ('c', 'f', 'p', 'u', 'x')
ORDER BY k.contype, k.conname
