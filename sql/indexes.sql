-- Indexes of one table. $1 table oid. Run with search_path = ''.
-- `quoted_name` and `quoted_table` are what pg_get_indexdef prints for the
-- index and the table, so the definition can be re-targeted exactly.
SELECT ic.relname::text AS name,
       i.indisunique,
       i.indisprimary,
       i.indisvalid,
       i.indisreplident,
       i.indisclustered,
       pg_catalog.pg_get_indexdef(i.indexrelid) AS definition,
       pg_catalog.quote_ident(ic.relname) AS quoted_name,
       pg_catalog.format('%I.%I', n.nspname, t.relname) AS quoted_table,
       ARRAY(SELECT u.k FROM pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY u(k, o)
             WHERE u.o <= i.indnkeyatts ORDER BY u.o) AS key_attnums,
       (i.indexprs IS NOT NULL) AS has_expressions,
       (i.indpred IS NOT NULL) AS partial,
       (SELECT k.conname::text FROM pg_catalog.pg_constraint k
        WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u', 'x')
        LIMIT 1) AS constraint_name
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
JOIN pg_catalog.pg_class t ON t.oid = i.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
WHERE i.indrelid = $1
ORDER BY ic.relname
