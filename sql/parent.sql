-- Facts about the parent table and its uuid column. $1 schema, $2 name, $3 uuid column.
SELECT c.oid,
       c.relkind::text AS relkind,
       pk.conkey AS pk_attnums,
       ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(pk.conkey) WITH ORDINALITY u(n, o)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.n
             ORDER BY u.o) AS pk_columns,
       ARRAY(SELECT a.atttypid FROM pg_catalog.unnest(pk.conkey) WITH ORDINALITY u(n, o)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.n
             ORDER BY u.o) AS pk_type_oids,
       ARRAY(SELECT pg_catalog.format_type(a.atttypid, a.atttypmod)
             FROM pg_catalog.unnest(pk.conkey) WITH ORDINALITY u(n, o)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.n
             ORDER BY u.o) AS pk_types,
       ua.attnum AS uuid_attnum,
       pg_catalog.format_type(ua.atttypid, ua.atttypmod) AS uuid_type,
       ua.atttypid AS uuid_type_oid,
       ua.attnotnull AS uuid_not_null,
       EXISTS (SELECT FROM pg_catalog.pg_index i
               WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid AND i.indimmediate
                 AND i.indnkeyatts = 1 AND i.indkey[0] = ua.attnum
                 AND i.indpred IS NULL AND i.indexprs IS NULL) AS uuid_unique
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_constraint pk ON pk.conrelid = c.oid AND pk.contype = 'p'
LEFT JOIN pg_catalog.pg_attribute ua ON ua.attrelid = c.oid AND ua.attname = $3 AND ua.attnum > 0 AND NOT ua.attisdropped
WHERE n.nspname = $1 AND c.relname = $2
