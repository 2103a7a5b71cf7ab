//! The swap: inside one transaction that already holds `ACCESS EXCLUSIVE`
//! locks on each source table and its shadow, move the source out of the way,
//! give the shadow the source's name, and carry across everything PostgreSQL
//! binds to the table's *identity* (its OID) rather than its name.
//!
//! # Parts
//!
//! - [`load_dependents`] (I/O, [`catalog`]): reads what hangs off a source
//!   table and its shadow — under the lock, or before it together with a
//!   [`catalog::fingerprint`] that proves the read still current under the
//!   lock (what the cutover does). Definitions are rendered by the
//!   server with `search_path = ''`, so every name in them is schema-qualified
//!   and means the same in any session. Definitions name the *source* table
//!   by its name; once the shadow holds that name, the same text means the new
//!   table — that is how views, triggers and foreign keys are re-pointed.
//! - [`swap_sql`] / [`swap_sql_many`] (pure, [`sql`]): the ordered statements.
//! - [`execute_swap`]: runs them in the caller's transaction;
//!   [`validate_after`]: after commit, outside the lock, validates the `NOT
//!   VALID` foreign keys and check constraints and analyzes the new tables.
//!
//! # Invariants and why they hold
//!
//! - **All or nothing.** Every statement runs in the caller's transaction; the
//!   first failure (a dependent view whose definition does not type-check with
//!   `uuid`, a name already taken, a lock timeout on a referencing table)
//!   aborts it, so the caller rolls back and the sources are untouched. The
//!   error names the object that failed ([`SwapError::Statement`]).
//! - **Nothing written to the old table.** Statements blocked on the lock
//!   re-resolve names after it is released and so reach the new table; views,
//!   triggers, policies and incoming foreign keys are re-created from text that
//!   names the table, so they bind to the new table. Objects that bind to the
//!   old table by OID and cannot be carried (SQL-standard function bodies,
//!   rules, other tables' policies that read the table) are refused up front by
//!   [`load_dependents`] ([`SwapError::Unsupported`]).
//! - **Extended statistics** are bound to the table's OID: the old table's
//!   are renamed out of the way (their names are schema-wide) and the same
//!   definitions created on the new table.
//! - **Sequences keep counting.** A serial column's sequence is one object:
//!   the new table's default keeps calling it and its ownership moves. An
//!   identity column's sequence cannot move, so the new table's identity
//!   sequence is set to the old one's `last_value`/`is_called`, read inside the
//!   swap transaction (no insert into the source can run while it is locked).
//! - **Names.** Index and constraint names are paired by construction, not
//!   by printed text (see [`sql::match_objects`]): the shadow object built
//!   from source object `n` is the one the shadow DDL named after `n`
//!   (`_rekey_new_n` for indexes and index-backed constraints, `n` itself for
//!   CHECK and FOREIGN KEY constraints), provided it has the same kind and
//!   shape (uniqueness, access method, columns, expression and predicate
//!   present; a constraint's type and columns). Only objects left over — made
//!   on the shadow by hand under other names — are matched by definition
//!   (index definitions with the index and table name cut off, constraint
//!   definitions without `NOT VALID`, foreign keys by their columns, target
//!   table and actions). The old
//!   table's indexes and index-backed constraints (their names share the
//!   schema's relation namespace) are renamed to [`old_object_name`] first,
//!   then the shadow's get the originals.
//! - **Several tables.** [`swap_sql_many`] orders the statements step by step
//!   across all tables (all drops, all renames out of the way, all renames in,
//!   then the rest), so a view over two swapped tables is dropped once and
//!   re-created once, after both renames, and a foreign key between two
//!   swapped tables stays old→old on the old side. Load every table's
//!   [`Dependents`] before running any swap statement.
//!
//! # Old names
//!
//! The source becomes `_rekey_old_<name>` in its own schema; its indexes and
//! index-backed constraints become `_rekey_old_<name>`, identity sequences
//! likewise. A name longer than 63 bytes is cut at a UTF-8 boundary and ends in
//! `_` plus 8 hex digits of the FNV-1a hash of the whole original (see
//! [`derived_name`]), the same rule the shadow DDL uses for `_rekey_new_`.
//! The rule is deterministic, so a later `status` can find the old table.
//!
//! # Locks beyond the two tables
//!
//! Dropping and re-adding an incoming foreign key takes `ACCESS EXCLUSIVE` on
//! the referencing table, dropping a view takes it on the view: the caller's
//! `lock_timeout` bounds those waits too. Validation runs after commit.

pub mod catalog;
pub mod sql;

use std::time::Instant;

use tokio_postgres::{Client, GenericClient};

use crate::pg::diag::chain;
use crate::pg::{quote_ident, QualifiedName};

pub use catalog::load_dependents;
pub use sql::{swap_sql, swap_sql_many};

pub use crate::naming::MAX_IDENT_BYTES;

pub use crate::naming::OLD_PREFIX;

/// Publications whose name starts with this are pg-rekey's own and are not
/// carried to the new table.
pub const OWN_PUBLICATION_PREFIX: &str = "pg_rekey";

/// Errors of the swap.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// A catalog query failed.
    #[error("reading the dependents of {table} failed: {}; check the connection and that the role can read the catalogs", chain(source))]
    Catalog {
        /// The source table.
        table: QualifiedName,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// The source or shadow table does not exist or is not a plain table.
    #[error("{table} ({role}) is not an ordinary table in this database; check the table name and that the shadow was created")]
    NotATable {
        /// The table looked for.
        table: QualifiedName,
        /// `source` or `shadow`.
        role: &'static str,
    },

    /// The shadow is in another schema than its source.
    #[error("shadow {shadow} is not in the schema of {table}; the shadow must be created next to its source")]
    ShadowSchema {
        /// The source table.
        table: QualifiedName,
        /// The shadow.
        shadow: QualifiedName,
    },

    /// Something depends on the table that the swap cannot carry across.
    #[error("{table} has dependents the swap cannot carry to the new table ({}); they would keep using the old table — drop or rewrite them before cutover and re-create them after", objects.join("; "))]
    Unsupported {
        /// The source table.
        table: QualifiedName,
        /// `pg_describe_object` of each.
        objects: Vec<String>,
    },

    /// The replica identity index of the source has no counterpart on the shadow.
    #[error("{table} uses index {index} as replica identity but its shadow has no index with the same definition; create it on the shadow before cutover")]
    ReplicaIdentityIndex {
        /// The source table.
        table: QualifiedName,
        /// The source's replica identity index.
        index: String,
    },

    /// A swap statement failed; the transaction must be rolled back.
    #[error("swap failed at {object}: {}; {}", chain(source), statement_advice(source.as_db_error().map(|d| d.code().code()), object))]
    Statement {
        /// The object the failing statement was about (e.g. `view public.v`).
        object: String,
        /// The statement, for the log (never contains row values).
        sql: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// Validation after commit found rows that violate a constraint.
    #[error("validating constraint {constraint} on {table} failed: {}; the swap is committed, the constraint stays NOT VALID — fix the rows and run VALIDATE CONSTRAINT again", chain(source))]
    Validate {
        /// The table the constraint is on.
        table: QualifiedName,
        /// The constraint name.
        constraint: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// `ANALYZE` of a new table failed.
    #[error(
        "ANALYZE {table} failed: {}; the swap is committed, run ANALYZE by hand",
        chain(source)
    )]
    Analyze {
        /// The new table.
        table: QualifiedName,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// What to do after a failed swap statement. A lock that was not granted in
/// time (or a deadlock, a dropped connection) says nothing about the object:
/// telling the operator to "fix" a view that merely could not be locked sends
/// them after the wrong thing. No SQLSTATE means no server error: the
/// connection broke.
fn statement_advice(sqlstate: Option<&str>, object: &str) -> String {
    if sqlstate.is_none_or(crate::pg::diag::is_transient_sqlstate) {
        format!("the transaction is rolled back and the sources are untouched; another session held a lock on {object} or the connection failed — retry the cutover")
    } else {
        format!("roll back (the sources are untouched) and fix {object} so it works with uuid references, or drop it before cutover")
    }
}

impl SwapError {
    /// The SQLSTATE of the server error behind this, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SwapError::Catalog { source, .. }
            | SwapError::Statement { source, .. }
            | SwapError::Validate { source, .. }
            | SwapError::Analyze { source, .. } => source.as_db_error().map(|d| d.code().code()),
            _ => None,
        }
    }

    /// Whether the same swap may succeed if retried (lock timeout, deadlock,
    /// dropped connection); see [`crate::pg::diag::is_transient_sqlstate`].
    pub fn is_transient(&self) -> bool {
        self.sqlstate()
            .is_some_and(crate::pg::diag::is_transient_sqlstate)
    }
}

/// Who a privilege or policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Grantee {
    /// `PUBLIC` (role OID 0 in an ACL or `polroles`).
    Public,
    /// A named role.
    Role(String),
}

impl Grantee {
    /// From a catalog value where `NULL` stands for PUBLIC.
    pub fn from_nullable(name: Option<String>) -> Grantee {
        match name {
            Some(n) => Grantee::Role(n),
            None => Grantee::Public,
        }
    }

    /// `PUBLIC` or the quoted role name.
    pub fn sql(&self) -> String {
        match self {
            Grantee::Public => "PUBLIC".to_string(),
            Grantee::Role(r) => quote_ident(r),
        }
    }
}

/// One entry of an exploded ACL (`aclexplode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privilege {
    /// Who holds it.
    pub grantee: Grantee,
    /// Who granted it.
    pub grantor: String,
    /// `SELECT`, `INSERT`, … as `aclexplode` spells it.
    pub privilege: String,
    /// `WITH GRANT OPTION`.
    pub grantable: bool,
}

/// Column-level privileges of one column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPrivileges {
    /// Column name.
    pub column: String,
    /// Its ACL entries.
    pub privileges: Vec<Privilege>,
}

/// A relation's effective privileges: the table ACL with the owner's default
/// made explicit (`acldefault` when `relacl` is NULL), plus column ACLs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    /// `relacl` is NULL: nobody ever granted or revoked anything on the
    /// table itself, and `table` is the owner's default. The swap then leaves
    /// the new table's `relacl` NULL too instead of spelling the default out.
    pub owner_default: bool,
    /// Table-level entries.
    pub table: Vec<Privilege>,
    /// Column-level entries, by column.
    pub columns: Vec<ColumnPrivileges>,
}

/// A row-level security policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Policy name (unique per table).
    pub name: String,
    /// PERMISSIVE (true) or RESTRICTIVE.
    pub permissive: bool,
    /// `polcmd`: `r` SELECT, `a` INSERT, `w` UPDATE, `d` DELETE, `*` ALL.
    pub command: char,
    /// `TO` roles.
    pub roles: Vec<Grantee>,
    /// `USING` expression.
    pub using: Option<String>,
    /// `WITH CHECK` expression.
    pub check: Option<String>,
    /// `COMMENT ON POLICY`.
    pub comment: Option<String>,
}

/// A non-internal trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// Trigger name (unique per table).
    pub name: String,
    /// `pg_get_triggerdef` text (names the table by its current name).
    pub definition: String,
    /// `tgenabled`: `O` origin/local, `D` disabled, `R` replica, `A` always.
    pub enabled: char,
    /// `COMMENT ON TRIGGER`.
    pub comment: Option<String>,
}

/// A view or materialized view that depends, directly or through other
/// views, on a swapped table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Its OID (to merge the views of several tables and order them).
    pub oid: u32,
    /// Its name.
    pub name: QualifiedName,
    /// Materialized view (`relkind = 'm'`).
    pub materialized: bool,
    /// `pg_get_viewdef` text, trailing semicolon removed.
    pub definition: String,
    /// `reloptions` as `(name, value)` (security_barrier, check_option, …).
    pub options: Vec<(String, String)>,
    /// Owner role.
    pub owner: String,
    /// Privileges.
    pub acl: Acl,
    /// `COMMENT ON VIEW`.
    pub comment: Option<String>,
    /// Column comments `(column, comment)`.
    pub column_comments: Vec<(String, String)>,
    /// Column defaults `(column, expression)` (`ALTER VIEW … SET DEFAULT`).
    pub column_defaults: Vec<(String, String)>,
    /// OIDs of the other dependent views this one reads.
    pub depends_on: Vec<u32>,
    /// Triggers (`INSTEAD OF` …) on the view.
    pub triggers: Vec<Trigger>,
    /// Rules other than `_RETURN` (`pg_get_ruledef`, semicolon removed).
    pub rules: Vec<String>,
    /// Materialized view only: `pg_get_indexdef` of its indexes.
    pub indexes: Vec<String>,
    /// Materialized view only: whether it was populated.
    pub populated: bool,
}

/// A foreign key on another table that references the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingFk {
    /// Constraint name.
    pub name: String,
    /// The referencing table.
    pub table: QualifiedName,
    /// `pg_get_constraintdef` text (names the source by its current name).
    pub definition: String,
    /// Whether it was validated (if so, it is validated again after commit).
    pub validated: bool,
    /// The referencing table is partitioned (no `NOT VALID` before PG 18).
    pub partitioned: bool,
    /// `COMMENT ON CONSTRAINT`.
    pub comment: Option<String>,
}

/// Membership of the source in a publication (not pg-rekey's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationMembership {
    /// Publication name.
    pub publication: String,
    /// Column list, if the membership has one (PG 15+).
    pub columns: Option<Vec<String>>,
    /// Row filter expression, if any (PG 15+).
    pub row_filter: Option<String>,
}

/// `relreplident`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `f`: the whole row.
    Full,
    /// `n`: none.
    Nothing,
    /// `i`: the named index (its original name, which the new table's match gets).
    Index(String),
}

/// Sequence options of an identity column (`pg_sequence`): the type plan's
/// [`crate::plan::catalog::IdentitySequence`] holds too.
pub use crate::pg::SequenceOptions;

/// How a column's sequence is carried to the new table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceCarry {
    /// A `serial`-style sequence owned by the source column: the new column's
    /// default is set to the source's, ownership moves, and a sequence the
    /// shadow column owned itself is dropped.
    Owned {
        /// Column name.
        column: String,
        /// The sequence (same schema as the table or not).
        sequence: QualifiedName,
        /// The source column's default (`nextval(…)`), if it has one.
        default: Option<String>,
        /// A different sequence owned by the shadow's column, to drop.
        shadow_sequence: Option<QualifiedName>,
    },
    /// An identity column.
    Identity {
        /// Column name.
        column: String,
        /// `a` (ALWAYS) or `d` (BY DEFAULT).
        kind: char,
        /// The source's identity sequence.
        sequence: QualifiedName,
        /// Its options.
        options: SequenceOptions,
        /// The shadow column's identity sequence, if the shadow column is identity.
        shadow_sequence: Option<QualifiedName>,
    },
}

/// What kind of object a [`ObjectRename`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// An index that backs no constraint (`ALTER INDEX … RENAME`).
    Index,
    /// A PRIMARY KEY / UNIQUE / EXCLUDE constraint (renaming it renames its
    /// index; the name is in the schema's relation namespace).
    IndexConstraint,
    /// A CHECK or FOREIGN KEY constraint (name is per table).
    Constraint,
}

/// A source object and the shadow object that matches it by definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRename {
    /// Index or constraint.
    pub kind: ObjectKind,
    /// The source's name (which the new table's object gets).
    pub original: String,
    /// The shadow's name.
    pub shadow: String,
    /// Source's comment on the object.
    pub comment: Option<String>,
    /// The source constraint was validated and the shadow's is not: validate after commit.
    pub validate: bool,
}

/// Everything that hangs off one source table and its shadow; see [`load_dependents`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependents {
    /// The source table.
    pub source: QualifiedName,
    /// Its OID.
    pub source_oid: u32,
    /// The shadow table (same schema).
    pub shadow: QualifiedName,
    /// Its OID.
    pub shadow_oid: u32,
    /// Source owner.
    pub owner: String,
    /// Shadow owner.
    pub shadow_owner: String,
    /// Source privileges.
    pub acl: Acl,
    /// Every grantee in the shadow's table and column ACLs (revoked first).
    pub shadow_grantees: Vec<Grantee>,
    /// The shadow's `relacl` is NULL and none of its columns has an ACL:
    /// nothing to revoke, and an owner-default source ACL needs no statement.
    pub shadow_acl_default: bool,
    /// `relrowsecurity`.
    pub rls_enabled: bool,
    /// `relforcerowsecurity`.
    pub rls_forced: bool,
    /// Policies.
    pub policies: Vec<Policy>,
    /// Non-internal triggers.
    pub triggers: Vec<Trigger>,
    /// Dependent views, direct and indirect.
    pub views: Vec<View>,
    /// Foreign keys of other tables that reference the source.
    pub incoming_fks: Vec<IncomingFk>,
    /// Publication memberships (pg-rekey's own excluded).
    pub publications: Vec<PublicationMembership>,
    /// Replica identity.
    pub replica_identity: ReplicaIdentity,
    /// Table comment.
    pub comment: Option<String>,
    /// Column comments `(column, comment)` for every column where the source
    /// or the shadow has one (`None`: clear the shadow's).
    pub column_comments: Vec<(String, Option<String>)>,
    /// Sequences to carry.
    pub sequences: Vec<SequenceCarry>,
    /// Matched indexes and constraints.
    pub renames: Vec<ObjectRename>,
    /// Source indexes and constraints with no counterpart on the shadow
    /// (they stay on the old table; logged).
    pub unmatched: Vec<String>,
    /// `(name, comment)` of the source's CHECK and FOREIGN KEY constraints
    /// that have a comment. The cutover creates the new table's foreign keys
    /// after the swap statements and carries their comments from here.
    pub constraint_comments: Vec<(String, String)>,
    /// Extended statistics on the source: the old ones are renamed out of
    /// the way, the same definitions created on the new table.
    pub statistics: Vec<Statistics>,
}

/// An extended statistics object (`CREATE STATISTICS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statistics {
    /// Its name (schema-wide).
    pub name: QualifiedName,
    /// `pg_get_statisticsobjdef` text (names the table by its current name).
    pub definition: String,
    /// `COMMENT ON STATISTICS`.
    pub comment: Option<String>,
}

/// Names for one swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapNames {
    /// What the source table is renamed to (in its own schema).
    pub old_table: String,
    /// The prefix its indexes, index-backed constraints, statistics and
    /// identity sequences get: [`OLD_PREFIX`] for a cutover;
    /// [`crate::naming::SHADOW_PREFIX`] for a rollback, so the uuid table
    /// leaving the name is exactly the shadow a later cutover expects.
    pub object_prefix: &'static str,
}

impl SwapNames {
    /// The documented rule: `_rekey_old_<name>`, shortened as [`derived_name`] says.
    pub fn derive(source: &QualifiedName) -> SwapNames {
        SwapNames {
            old_table: derived_name(OLD_PREFIX, &source.name),
            object_prefix: OLD_PREFIX,
        }
    }

    /// The names of a rollback of `table` (the uuid table that holds the
    /// name): it becomes the shadow again, `_rekey_new_<name>`, and its
    /// objects `_rekey_new_<object>`.
    pub fn back(table: &QualifiedName) -> SwapNames {
        SwapNames {
            old_table: crate::naming::shadow_name(table).name,
            object_prefix: crate::naming::SHADOW_PREFIX,
        }
    }

    /// Where an object named `name` of the table leaving the name goes.
    pub fn object_name(&self, name: &str) -> String {
        derived_name(self.object_prefix, name)
    }
}

/// Where an index, index-backed constraint or identity sequence of the old
/// table is moved: `_rekey_old_<name>` by the [`derived_name`] rule.
pub fn old_object_name(name: &str) -> String {
    derived_name(OLD_PREFIX, name)
}

pub use crate::naming::derived_name;

/// A constraint to validate after commit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ValidateConstraint {
    /// The table it is on, by its name after the swap.
    pub table: QualifiedName,
    /// Constraint name.
    pub name: String,
}

/// One statement of the swap and what it is about (for errors and dry runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapStep {
    /// The statement.
    pub sql: String,
    /// What it is about, e.g. `view public.v` or `table public.t`.
    pub object: String,
}

/// The generated swap.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SwapSql {
    /// Statements, in order, for the one swap transaction.
    pub steps: Vec<SwapStep>,
    /// Constraints to validate after commit.
    pub validate: Vec<ValidateConstraint>,
    /// New tables to `ANALYZE` after commit.
    pub analyze: Vec<QualifiedName>,
}

impl SwapSql {
    /// The statements alone (for `--dry-run`).
    pub fn sql(&self) -> Vec<String> {
        self.steps.iter().map(|s| s.sql.clone()).collect()
    }
}

/// What a swap of some source tables locks besides the sources and the
/// parent (see [`sql::lock_sql`] for the order and the modes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockTargets {
    /// The tables the sources' own foreign keys point at (outside the
    /// sources): the new tables' keys will point at them.
    pub referenced: Vec<QualifiedName>,
    /// The tables whose foreign keys point at a source (outside the
    /// sources): their keys are re-pointed.
    pub referencing: Vec<QualifiedName>,
    /// The views over the sources, directly or through other views: they
    /// are dropped and re-created. Materialized views are not listed (they
    /// cannot be named in `LOCK TABLE`; see [`sql::lock_sql`]).
    pub views: Vec<QualifiedName>,
}

/// Run the swap statements in the caller's transaction (which holds the locks).
///
/// `search_path` is set to `''` for the rest of the transaction so that no
/// name in the swap can resolve to something other than what the catalog
/// text says. On error the transaction is unusable and must be rolled back;
/// the error names the object of the failing statement.
///
/// The statements go to the server as **one** simple-query message, so the
/// lock is held for one round trip plus the server's work, and the server
/// does not pay a message's overhead (a `ReadyForQuery`, a command start and
/// end) per statement: for 9 and 17 tables the bench's profile measured
/// 5.8–7.8 ms and 10.8–11.3 ms as one message against 8.5–9.3 and
/// 15.3–17.0 ms for the same statements pipelined one message each. The
/// server runs them in order and stops at the first failure; every statement
/// that succeeded sent a `CommandComplete` first, so the number of those
/// before the error is the index of the failing statement
/// ([`failed_step`]) and the error still names its object. Each
/// [`SwapStep`] is one statement (checked: a count that does not match on
/// success is a bug, asserted in debug builds and logged in release).
pub async fn execute_swap<C: GenericClient + Sync>(
    txn: &C,
    swap: &SwapSql,
) -> Result<(), SwapError> {
    use futures_util::TryStreamExt;
    let started = Instant::now();
    let set_path = SwapStep {
        sql: "SET LOCAL search_path = ''".into(),
        object: "session settings".into(),
    };
    let steps: Vec<&SwapStep> = std::iter::once(&set_path)
        .chain(swap.steps.iter())
        .collect();
    let message = one_message(&steps);
    let failed = |done: usize, source: tokio_postgres::Error| {
        let step = failed_step(&steps, done);
        tracing::warn!(object = %step.object, sql = %step.sql, error = %chain(&source), "swap statement failed");
        SwapError::Statement {
            object: step.object.clone(),
            sql: step.sql.clone(),
            source,
        }
    };
    let stream = txn
        .client()
        .simple_query_raw(&message)
        .await
        .map_err(|e| failed(0, e))?;
    let mut stream = std::pin::pin!(stream);
    let mut done = 0usize;
    loop {
        match stream.try_next().await {
            Ok(Some(tokio_postgres::SimpleQueryMessage::CommandComplete(_))) => done += 1,
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => return Err(failed(done, e)),
        }
    }
    debug_assert_eq!(done, steps.len(), "every swap step is one statement");
    if done != steps.len() {
        tracing::warn!(
            statements = steps.len(),
            completed = done,
            "the swap's statements completed, but not one per step: a failing statement would be misnamed (a bug; please report it)"
        );
    }
    tracing::info!(
        statements = swap.steps.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "swap statements executed"
    );
    Ok(())
}

/// The steps as one simple-query message: each statement on its own, ended
/// by a `;` on a line of its own (a statement ending in a `--` comment must
/// not swallow the separator).
fn one_message(steps: &[&SwapStep]) -> String {
    let mut message = String::new();
    for s in steps {
        message.push_str(s.sql.trim_end().trim_end_matches(';'));
        message.push_str("\n;\n");
    }
    message
}

/// The step that failed after `done` statements completed (the last one if
/// the count ran past the end, which [`execute_swap`] reports as a bug).
fn failed_step<'a>(steps: &[&'a SwapStep], done: usize) -> &'a SwapStep {
    steps[done.min(steps.len() - 1)]
}

/// After commit, outside the lock: `VALIDATE CONSTRAINT` for each `NOT VALID`
/// constraint (a `SHARE UPDATE EXCLUSIVE` lock: reads and writes go on), then
/// `ANALYZE` each new table. Stops at the first failure.
pub async fn validate_after(
    client: &Client,
    constraints: &[ValidateConstraint],
    analyze: &[QualifiedName],
) -> Result<(), SwapError> {
    for c in constraints {
        let started = Instant::now();
        let sql = format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT {}",
            c.table.quoted(),
            quote_ident(&c.name)
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(|source| SwapError::Validate {
                table: c.table.clone(),
                constraint: c.name.clone(),
                source,
            })?;
        tracing::info!(table = %c.table, constraint = %c.name,
            elapsed_ms = started.elapsed().as_millis() as u64, "constraint validated");
    }
    for t in analyze {
        client
            .batch_execute(&format!("ANALYZE {}", t.quoted()))
            .await
            .map_err(|source| SwapError::Analyze {
                table: t.clone(),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn statement_advice_blames_the_object_only_for_a_definite_error() {
        let view = "view public.active_sessions";
        for transient in [Some("55P03"), Some("40P01"), Some("08006"), None] {
            let a = statement_advice(transient, view);
            assert!(a.contains("retry the cutover"), "{transient:?}: {a}");
            assert!(!a.contains("fix "), "{transient:?}: {a}");
        }
        let a = statement_advice(Some("42883"), view);
        assert!(
            a.contains("fix view public.active_sessions so it works with uuid"),
            "{a}"
        );
    }

    use super::*;

    fn step(sql: &str, object: &str) -> SwapStep {
        SwapStep {
            sql: sql.into(),
            object: object.into(),
        }
    }

    #[test]
    fn one_message_keeps_each_statement_apart_even_after_a_line_comment() {
        let a = step("ALTER TABLE public.t RENAME TO t_old;", "table public.t");
        let b = step("CREATE VIEW public.v AS SELECT 1 -- one", "view public.v");
        let c = step("COMMENT ON TABLE public.t IS 'a;b'  ", "table public.t");
        let m = one_message(&[&a, &b, &c]);
        assert_eq!(
            m,
            "ALTER TABLE public.t RENAME TO t_old\n;\n\
             CREATE VIEW public.v AS SELECT 1 -- one\n;\n\
             COMMENT ON TABLE public.t IS 'a;b'\n;\n"
        );
    }

    #[test]
    fn the_failing_step_is_the_one_after_those_that_completed() {
        let steps = [step("a", "first"), step("b", "second"), step("c", "third")];
        let refs: Vec<&SwapStep> = steps.iter().collect();
        assert_eq!(failed_step(&refs, 0).object, "first");
        assert_eq!(failed_step(&refs, 2).object, "third");
        // A count past the end (a step of two statements: a bug) names the last.
        assert_eq!(failed_step(&refs, 7).object, "third");
    }

    #[test]
    fn a_rollback_names_the_uuid_table_as_the_shadow_a_cutover_expects() {
        let t = QualifiedName::new("public", "docs");
        let back = SwapNames::back(&t);
        assert_eq!(back.old_table, crate::naming::shadow_name(&t).name);
        assert_eq!(
            back.object_name("docs_pkey"),
            crate::naming::shadow_object_name("docs_pkey")
        );
        let forward = SwapNames::derive(&t);
        assert_eq!(
            forward.object_name("docs_pkey"),
            old_object_name("docs_pkey")
        );
    }

    #[test]
    fn old_names_fit_and_are_stable() {
        assert_eq!(
            SwapNames::derive(&QualifiedName::new("public", "chat_messages")).old_table,
            "_rekey_old_chat_messages"
        );
        let long = "x".repeat(60);
        let a = old_object_name(&long);
        assert!(a.len() <= MAX_IDENT_BYTES, "{a}");
        assert!(a.starts_with("_rekey_old_xxx"));
        assert_eq!(a, old_object_name(&long), "deterministic");
        let other = format!("{}y", "x".repeat(59));
        assert_ne!(a, old_object_name(&other), "hash keeps long names apart");
        // Multi-byte characters are never cut in half.
        let wide = "é".repeat(40);
        let w = old_object_name(&wide);
        assert!(w.len() <= MAX_IDENT_BYTES);
        assert!(w.is_char_boundary(w.len()));
    }

    #[test]
    fn grantee_sql() {
        assert_eq!(Grantee::Public.sql(), "PUBLIC");
        assert_eq!(Grantee::Role("Ann".into()).sql(), "\"Ann\"");
    }
}
