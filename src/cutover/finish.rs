//! The steps after a swap commits: validate the `NOT VALID` constraints the
//! swap created and `ANALYZE` the new tables.
//!
//! They run outside the lock and take minutes on a large table, so they can
//! be cut off (a process killed, a connection lost). Nothing records them as
//! done except the catalog itself, and that is what is read: a constraint
//! still `NOT VALID` in `pg_constraint` is pending, a new table never
//! analyzed (no `last_analyze` nor `last_autoanalyze`) is pending. So the
//! next `cutover` of those tables — which finds them cut over — completes
//! whatever is left, and `rewrite --cutover auto` waits for its cutover to
//! finish these steps before it exits.

use tokio_postgres::Client;

use crate::error::Error;
use crate::pg::QualifiedName;
use crate::swap::{self, ValidateConstraint};

/// What is left to do after the swap of `tables` (the new tables, by their
/// final names).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pending {
    /// `NOT VALID` foreign keys and checks on the tables or referencing them.
    pub constraints: Vec<ValidateConstraint>,
    /// Tables never analyzed.
    pub analyze: Vec<QualifiedName>,
}

impl Pending {
    /// Nothing left.
    pub fn is_empty(&self) -> bool {
        self.constraints.is_empty() && self.analyze.is_empty()
    }
}

/// Every `NOT VALID` foreign key or check on `tables` or pointing at them.
pub async fn not_valid_constraints(
    admin: &Client,
    tables: &[QualifiedName],
) -> Result<Vec<ValidateConstraint>, Error> {
    let names: Vec<String> = tables.iter().map(|t| t.quoted()).collect();
    let rows = admin
        .query(
            "SELECT n.nspname, c.relname, con.conname
               FROM pg_constraint con
               JOIN pg_class c ON c.oid = con.conrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE NOT con.convalidated AND con.contype IN ('f', 'c')
                AND (con.conrelid = ANY (SELECT to_regclass(x) FROM unnest($1::text[]) x)
                     OR con.confrelid = ANY (SELECT to_regclass(x) FROM unnest($1::text[]) x))
              ORDER BY 1, 2, 3",
            &[&names],
        )
        .await
        .map_err(Error::db("list constraints to validate"))?;
    Ok(rows
        .iter()
        .map(|r| ValidateConstraint {
            table: QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            name: r.get(2),
        })
        .collect())
}

/// What is pending for `tables`, read from the catalog.
pub async fn pending(admin: &Client, tables: &[QualifiedName]) -> Result<Pending, Error> {
    let constraints = not_valid_constraints(admin, tables).await?;
    let names: Vec<String> = tables.iter().map(|t| t.quoted()).collect();
    let rows = admin
        .query(
            "SELECT x FROM unnest($1::text[]) x
               JOIN pg_stat_all_tables s ON s.relid = to_regclass(x)
              WHERE s.last_analyze IS NULL AND s.last_autoanalyze IS NULL",
            &[&names],
        )
        .await
        .map_err(Error::db("read which new tables were analyzed"))?;
    let never: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let analyze = tables
        .iter()
        .filter(|t| never.contains(&t.quoted()))
        .cloned()
        .collect();
    Ok(Pending {
        constraints,
        analyze,
    })
}

/// Validate each constraint and analyze each table of `p`, one by one: a
/// constraint that does not validate (offending rows) is reported and the
/// rest still run. Returns one warning per failure.
pub async fn complete(admin: &Client, p: &Pending) -> Vec<String> {
    let mut warnings = Vec::new();
    for c in &p.constraints {
        if let Err(e) = swap::validate_after(admin, std::slice::from_ref(c), &[]).await {
            warnings.push(format!(
                "the swap is committed, but {} on {} did not validate: {}. Fix the offending rows, then run \
                 ALTER TABLE {} VALIDATE CONSTRAINT {} (or run `pg-rekey cutover` for the table again)",
                c.name,
                c.table,
                crate::error::chain(&e),
                c.table.quoted(),
                crate::pg::quote_ident(&c.name)
            ));
        }
    }
    for t in &p.analyze {
        let started = std::time::Instant::now();
        match admin
            .batch_execute(&format!("ANALYZE {}", t.quoted()))
            .await
        {
            Ok(()) => tracing::info!(
                table = %t,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "table analyzed"
            ),
            Err(e) => warnings.push(format!(
                "the swap is committed, but ANALYZE {t} failed: {}; run it by hand",
                crate::error::chain(&e)
            )),
        }
    }
    warnings
}
