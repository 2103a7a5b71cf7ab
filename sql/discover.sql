-- Tables with a foreign key to the parent's key column alone.
-- $1 parent oid, $2 parent key attnum, $3 pg-rekey's own name prefix (shadows, old tables).
-- Constraints cloned onto partitions (conparentid <> 0) are skipped: the
-- partitioned root is reported instead. Temporary tables are skipped.
SELECT DISTINCT n.nspname::text AS schema, c.relname::text AS name
FROM pg_catalog.pg_constraint k
JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE k.contype = 'f'
  AND k.confrelid = $1
  AND k.confkey = ARRAY[$2::int2]
  AND k.conrelid <> $1
  AND k.conparentid = 0
  AND c.relpersistence <> 't'
  AND pg_catalog.left(c.relname::text, pg_catalog.length($3::text)) <> $3::text
ORDER BY 1, 2
