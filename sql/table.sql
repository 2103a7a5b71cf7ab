-- One relation by schema and name, with what planning needs about the table itself.
-- $1 schema, $2 name. Run with search_path = '' so names come out qualified.
SELECT c.oid,
       c.relkind::text AS relkind,
       c.relpersistence::text AS relpersistence,
       c.relreplident::text AS relreplident,
       greatest(c.reltuples, 0)::int8 AS row_estimate,
       -- -1 (14+): never vacuumed, analyzed or indexed; the estimate means nothing.
       c.reltuples >= 0 AS rows_known,
       CASE WHEN c.relkind IN ('r', 'p') THEN pg_catalog.pg_table_size(c.oid) ELSE 0 END AS table_bytes,
       CASE WHEN c.relkind IN ('r', 'p') THEN pg_catalog.pg_indexes_size(c.oid) ELSE 0 END AS index_bytes,
       pg_catalog.obj_description(c.oid, 'pg_class') AS comment,
       c.reloptions,
       ts.spcname AS tablespace,
       c.relispartition OR c.relkind = 'p'
         OR EXISTS (SELECT FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid OR i.inhparent = c.oid)
         AS inheritance,
       pg_catalog.pg_has_role(c.relowner, 'USAGE') AS owned
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_tablespace ts ON ts.oid = c.reltablespace
WHERE n.nspname = $1 AND c.relname = $2
