//! Adoption: making an `"OutboundJob"` table that our migrations did not create (the app's,
//! made by Prisma Migrate) ours, without touching the app's data or its columns' types
//! (docs/adoption.md).
//!
//! [`plan`] reads the catalog and lists the statements that make the database what our
//! migrations would have made, *with the app's types*: the id may be `TEXT` (cuids, UUIDs),
//! `uuid`, `integer` (SERIAL) or `bigint`; the status `text` or a PostgreSQL enum; timestamps
//! `timestamp(3)` (UTC) or `timestamptz`. What it never does: drop, rename or retype an app
//! column, change an app column's default, write a row. Columns the app has and we do not know
//! are left alone (and listed); a column we need that exists with a type we cannot use refuses
//! the adoption, naming it.
//!
//! [`apply`] runs a plan safely on a big, busy table (the app keeps inserting):
//!
//! 1. the enum values we need, each committed on its own (a new value cannot be used in the
//!    transaction that adds it);
//! 2. one transaction, every lock taken under a short `lock_timeout` and the whole transaction
//!    retried when one is not granted at once (an `ADD COLUMN` waiting behind a long query would
//!    otherwise hold every insert behind it): the functions, the columns (constant defaults:
//!    no rewrite), `NOT VALID` checks, the NOTIFY trigger, our other tables;
//! 3. the indexes on the app's table with `CREATE INDEX CONCURRENTLY` (writes go on; an invalid
//!    index a killed run left behind is dropped and rebuilt), progress shown;
//! 4. the bookkeeping: `_sqlx_migrations` as sqlx makes it, every compiled-in migration recorded
//!    as applied, so `migrate` and `run` then behave as on a fresh database and later
//!    migrations apply on top. Last: a run killed before it leaves the table un-adopted (and
//!    `migrate`/`run` refusing), and the next `adopt` finishes the work.
//!
//! All of it under the migrations' advisory lock (sqlx's, so a `migrate` elsewhere waits).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use sqlx::migrate::Migrate;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Connection, Row};

use super::MIGRATOR;

/// The statements that make the database ours (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// What the operator should know: unknown app columns left alone, enum values added (to
    /// add to the Prisma enum), what the app's inserts need.
    pub notes: Vec<String>,
}

/// One statement of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What it does and why, one line.
    pub what: String,
    pub sql: String,
    /// Runs outside the transaction (`CREATE INDEX CONCURRENTLY`, `ALTER TYPE … ADD VALUE`).
    pub outside_transaction: bool,
}

impl Plan {
    /// Whether nothing is to be done.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The steps that change the schema, without the bookkeeping (`_sqlx_migrations`): what a
    /// database whose DDL another tool applied (`database.migrate = false`) still lacks.
    pub fn schema_steps(&self) -> impl Iterator<Item = &Step> {
        self.steps
            .iter()
            .filter(|s| !s.what.starts_with(BOOKKEEPING))
    }

    /// The plan as the dry run prints it: numbered, each with what and why.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut in_tx = false;
        for (i, s) in self.steps.iter().enumerate() {
            if !s.outside_transaction && !in_tx {
                out.push_str("-- BEGIN (one transaction; lock_timeout 200 ms, retried)\n");
                in_tx = true;
            }
            if s.outside_transaction && in_tx {
                out.push_str("-- COMMIT\n");
                in_tx = false;
            }
            let _ = writeln!(
                out,
                "-- {}. {}{}",
                i + 1,
                s.what,
                if s.outside_transaction {
                    " (outside the transaction)"
                } else {
                    ""
                }
            );
            let _ = writeln!(out, "{};", s.sql.trim_end());
        }
        if in_tx {
            out.push_str("-- COMMIT\n");
        }
        for n in &self.notes {
            let _ = writeln!(out, "-- note: {n}");
        }
        out
    }
}

/// Why a plan or an adoption stopped.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("there is no \"OutboundJob\" table to adopt (`outbound-runner migrate` creates ours)")]
    NoTable,
    /// Columns we need exist with types we cannot use: adoption refused (exit 78).
    #[error(
        "\"OutboundJob\" cannot be adopted as it is; nothing was changed:\n  {}",
        .0.join("\n  ")
    )]
    Incompatible(Vec<String>),
    #[error(
        "adopt needs a session of its own (a lock and CREATE INDEX CONCURRENTLY): set \
         database.direct_url to a direct connection"
    )]
    NeedsSession,
    #[error("{0}")]
    Step(String),
    #[error("database error: {}", super::redact_sqlx(.0))]
    Database(#[from] sqlx::Error),
}

impl AdoptError {
    /// The process exit code: 78 (EX_CONFIG) for a table we cannot adopt, 69 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AdoptError::Incompatible(_) | AdoptError::NoTable | AdoptError::NeedsSession => {
                crate::exit::CONFIG
            }
            _ => crate::exit::UNAVAILABLE,
        }
    }
}

/// Who made `"OutboundJob"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// No such table: `migrate` creates ours.
    Absent,
    /// Our migrations made it (or `adopt` did).
    Ours,
    /// It exists, and our migrations did not make it: `adopt` first.
    Foreign,
}

/// The first migration's version: a database where it is recorded is ours.
fn first_version() -> i64 {
    MIGRATOR
        .iter()
        .map(|m| m.version)
        .min()
        .expect("at least one migration")
}

/// Who made `"OutboundJob"`. Reads only; creates nothing (not even `_sqlx_migrations`).
pub async fn ownership(conn: &mut PgConnection) -> sqlx::Result<Ownership> {
    let (table, book): (bool, bool) = sqlx::query_as(
        r#"SELECT to_regclass('"OutboundJob"') IS NOT NULL,
                  to_regclass('_sqlx_migrations') IS NOT NULL"#,
    )
    .fetch_one(&mut *conn)
    .await?;
    if !table {
        return Ok(Ownership::Absent);
    }
    if !book {
        return Ok(Ownership::Foreign);
    }
    let ours: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1 AND success)",
    )
    .bind(first_version())
    .fetch_one(&mut *conn)
    .await?;
    Ok(if ours {
        Ownership::Ours
    } else {
        Ownership::Foreign
    })
}

/// The sentence `migrate` and `run` refuse with on a table our migrations did not make.
pub const NOT_ADOPTED: &str = "\"OutboundJob\" exists but our migrations did not create it (the \
     app's table, e.g. made by Prisma Migrate); nothing was changed. See what adoption would do \
     with `outbound-runner adopt --dry-run`, then run `outbound-runner adopt` (docs/adoption.md)";

const BOOKKEEPING: &str = "bookkeeping:";
const LOCK_TIMEOUT_MS: u64 = 200;

/// What the catalog says about `"OutboundJob"`.
#[derive(Debug, Default)]
struct Table {
    columns: Vec<Column>,
    indexes: Vec<(String, bool)>,
    /// Single-column unique indexes, by column.
    unique_columns: Vec<String>,
    constraints: Vec<String>,
    triggers: Vec<String>,
    reloptions: Vec<String>,
    /// The primary key's columns.
    primary_key: Vec<String>,
}

#[derive(Debug, Clone)]
struct Column {
    name: String,
    /// `format_type`: `text`, `timestamp(3) without time zone`, `"OutboundJobStatus"`, ...
    ty: String,
    not_null: bool,
    has_default: bool,
    identity: bool,
    /// An enum's labels, in order (empty for other types).
    labels: Vec<String>,
}

async fn inspect(conn: &mut PgConnection) -> sqlx::Result<Option<Table>> {
    let exists: bool = sqlx::query_scalar(r#"SELECT to_regclass('"OutboundJob"') IS NOT NULL"#)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(None);
    }
    let mut t = Table::default();
    let rows = sqlx::query(
        r#"SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  a.atthasdef, a.attidentity <> '', ty.typtype = 'e',
                  ARRAY(SELECT e.enumlabel::text FROM pg_enum e
                        WHERE e.enumtypid = a.atttypid ORDER BY e.enumsortorder)
           FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
           WHERE a.attrelid = '"OutboundJob"'::regclass AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attnum"#,
    )
    .fetch_all(&mut *conn)
    .await?;
    for r in rows {
        let is_enum: bool = r.get(5);
        t.columns.push(Column {
            name: r.get(0),
            ty: r.get(1),
            not_null: r.get(2),
            has_default: r.get(3),
            identity: r.get(4),
            labels: if is_enum { r.get(6) } else { Vec::new() },
        });
    }
    let rows = sqlx::query(
        r#"SELECT c.relname::text, i.indisvalid, i.indisunique, i.indisprimary,
                  ARRAY(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(n, o)
                        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
                        ORDER BY k.o),
                  i.indpred IS NULL AND i.indexprs IS NULL
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
           WHERE i.indrelid = '"OutboundJob"'::regclass"#,
    )
    .fetch_all(&mut *conn)
    .await?;
    for r in rows {
        let (name, valid, unique, primary): (String, bool, bool, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let cols: Vec<String> = r.get(4);
        let plain: bool = r.get(5);
        if primary {
            t.primary_key = cols.clone();
        }
        if unique && valid && plain && cols.len() == 1 {
            t.unique_columns.push(cols[0].clone());
        }
        t.indexes.push((name, valid));
    }
    t.constraints = sqlx::query_scalar(
        r#"SELECT conname::text FROM pg_constraint WHERE conrelid = '"OutboundJob"'::regclass"#,
    )
    .fetch_all(&mut *conn)
    .await?;
    t.triggers = sqlx::query_scalar(
        r#"SELECT tgname::text FROM pg_trigger
           WHERE tgrelid = '"OutboundJob"'::regclass AND NOT tgisinternal"#,
    )
    .fetch_all(&mut *conn)
    .await?;
    t.reloptions = sqlx::query_scalar(
        r#"SELECT COALESCE(reloptions, '{}')::text[] FROM pg_class
           WHERE oid = '"OutboundJob"'::regclass"#,
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(Some(t))
}

impl Table {
    fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
    fn has_index(&self, name: &str) -> Option<bool> {
        self.indexes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// What kind of value a column of ours holds, and so which of the app's types can hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Jsonb,
    Time,
    Int4,
    /// `priority`: smallint or integer.
    Small,
}

impl Kind {
    fn accepts(self, ty: &str) -> bool {
        match self {
            Kind::Text => is_text(ty),
            Kind::Jsonb => ty == "jsonb",
            Kind::Time => ty.starts_with("timestamp"),
            Kind::Int4 => ty == "integer",
            Kind::Small => ty == "smallint" || ty == "integer",
        }
    }
    fn wanted(self) -> &'static str {
        match self {
            Kind::Text => "text or varchar",
            Kind::Jsonb => "jsonb",
            Kind::Time => "timestamptz or timestamp",
            Kind::Int4 => "integer",
            Kind::Small => "smallint or integer",
        }
    }
}

fn is_text(ty: &str) -> bool {
    ty == "text" || ty.starts_with("character varying")
}

/// Our columns on `"OutboundJob"` (besides `id` and `status`): name, kind, what `ADD COLUMN`
/// adds when the app lacks it (constant defaults or none: never a rewrite), and whether we
/// write NULL into it (so an app column that is `NOT NULL` cannot serve).
const COLUMNS: &[(&str, Kind, &str, bool)] = &[
    ("payload", Kind::Jsonb, "jsonb", false),
    ("requestId", Kind::Text, "text", false),
    ("idempotencyKey", Kind::Text, "text", false),
    (
        "priority",
        Kind::Small,
        "smallint NOT NULL DEFAULT 0",
        false,
    ),
    (
        "runAt",
        Kind::Time,
        "timestamptz NOT NULL DEFAULT now()",
        false,
    ),
    ("attempts", Kind::Int4, "integer NOT NULL DEFAULT 0", false),
    ("maxAttempts", Kind::Int4, "integer", false),
    ("lockedBy", Kind::Text, "text", true),
    ("lockedAt", Kind::Time, "timestamptz", true),
    ("leaseUntil", Kind::Time, "timestamptz", true),
    ("composed", Kind::Jsonb, "jsonb", false),
    ("lastError", Kind::Text, "text", true),
    ("lastErrorCode", Kind::Text, "text", true),
    (
        "createdAt",
        Kind::Time,
        "timestamptz NOT NULL DEFAULT now()",
        false,
    ),
    (
        "updatedAt",
        Kind::Time,
        "timestamptz NOT NULL DEFAULT now()",
        false,
    ),
    ("startedAt", Kind::Time, "timestamptz", false),
    ("completedAt", Kind::Time, "timestamptz", true),
    ("history", Kind::Jsonb, "jsonb NOT NULL DEFAULT '[]'", false),
    ("cancelRequestedAt", Kind::Time, "timestamptz", true),
];

/// The statuses we write.
const STATUSES: [&str; 5] = ["queued", "running", "done", "failed", "cancelled"];

/// Our indexes on `"OutboundJob"` (as the migrations leave them), built concurrently.
const INDEXES: &[(&str, &str)] = &[
    (
        "OutboundJob_runnable_idx",
        r#"(priority, "runAt", id) WHERE status = 'queued'"#,
    ),
    (
        "OutboundJob_queued_runAt_idx",
        r#"("runAt") WHERE status = 'queued'"#,
    ),
    (
        "OutboundJob_lease_idx",
        r#"("leaseUntil") WHERE "leaseUntil" IS NOT NULL"#,
    ),
    (
        "OutboundJob_completedAt_idx",
        r#"("completedAt", status) WHERE "completedAt" IS NOT NULL"#,
    ),
    (
        "OutboundJob_running_no_lease_idx",
        r#"(id) WHERE status = 'running' AND "leaseUntil" IS NULL"#,
    ),
    ("OutboundJob_createdAt_id_idx", r#"("createdAt", id)"#),
    // The console's filters (migrations/20261206120000_console.sql).
    (
        "OutboundJob_console_ended_idx",
        r#"(status, "createdAt", id) WHERE status IN ('failed', 'cancelled')"#,
    ),
    (
        "OutboundJob_console_code_idx",
        r#"("lastErrorCode", "createdAt", id) WHERE "lastErrorCode" IS NOT NULL"#,
    ),
    (
        "OutboundJob_console_requestId_idx",
        r#"("requestId", "createdAt", id) WHERE "requestId" IS NOT NULL"#,
    ),
    (
        "OutboundJob_console_to_idx",
        r#"((payload->>'to'), "createdAt", id)"#,
    ),
];

/// CHECK constraints of ours, added `NOT VALID` (no scan; new and updated rows are checked).
const CHECKS: &[(&str, &str)] = &[
    ("OutboundJob_attempts_check", "attempts >= 0"),
    (
        "OutboundJob_maxAttempts_check",
        r#""maxAttempts" IS NULL OR "maxAttempts" >= 1"#,
    ),
    ("OutboundJob_attempts_bound", "attempts < 2147483647"),
];

/// The storage parameters of our own table (a churning queue: room for HOT updates).
const RELOPTIONS: &str = "fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01, \
     autovacuum_vacuum_threshold = 1000, autovacuum_analyze_scale_factor = 0.02, \
     autovacuum_vacuum_cost_delay = 0";

/// The functions that convert ids and statuses bound as text (see `queue::id`).
fn functions(id_ty: &str, status_ty: Option<&str>) -> Vec<(&'static str, String, String)> {
    // Nested CASEs: an arm whose condition folds to false is never evaluated, so a literal
    // that is not an id gives NULL at planning time too, never a cast error.
    let int = |ty: &str, digits: u32, min: &str, max: &str| {
        format!(
            "CASE WHEN $1 ~ '^-?[0-9]{{1,{digits}}}$' THEN CASE WHEN $1::numeric BETWEEN {min} \
             AND {max} THEN $1::{ty} END END"
        )
    };
    let (ret, conv, new_id) = match id_ty {
        "bigint" => (
            "bigint",
            int("bigint", 19, "-9223372036854775808", "9223372036854775807"),
            "SELECT nextval(pg_get_serial_sequence('\"OutboundJob\"', 'id'))".to_string(),
        ),
        "integer" => (
            "integer",
            int("integer", 10, "-2147483648", "2147483647"),
            "SELECT nextval(pg_get_serial_sequence('\"OutboundJob\"', 'id'))::integer".into(),
        ),
        "smallint" => (
            "smallint",
            int("smallint", 5, "-32768", "32767"),
            "SELECT nextval(pg_get_serial_sequence('\"OutboundJob\"', 'id'))::smallint".into(),
        ),
        "uuid" => (
            "uuid",
            "CASE WHEN $1 ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-\
             [0-9a-fA-F]{12}$' THEN $1::uuid END"
                .to_string(),
            "SELECT gen_random_uuid()".to_string(),
        ),
        // text, varchar: the text itself; new ids cuid-shaped ('c' and 24 base-36 characters).
        _ => (
            "text",
            "$1".to_string(),
            "SELECT 'c' || string_agg(substr('0123456789abcdefghijklmnopqrstuvwxyz', \
             floor(random() * 36)::int + 1, 1), '') FROM generate_series(1, 24)"
                .to_string(),
        ),
    };
    let (status_ret, status_conv, status_vol) = match status_ty {
        Some(e) => (e.to_string(), format!("$1::{e}"), "STABLE"),
        None => ("text".to_string(), "$1".to_string(), "IMMUTABLE"),
    };
    vec![
        (
            "outbound_job_id(text)",
            ret.to_string(),
            format!(
                "CREATE OR REPLACE FUNCTION outbound_job_id(text) RETURNS {ret}\n    \
                 LANGUAGE sql IMMUTABLE PARALLEL SAFE\n    AS $$ SELECT {conv} $$"
            ),
        ),
        (
            "outbound_job_ids(text[])",
            format!("{ret}[]"),
            format!(
                "CREATE OR REPLACE FUNCTION outbound_job_ids(text[]) RETURNS {ret}[]\n    \
                 LANGUAGE sql IMMUTABLE PARALLEL SAFE\n    AS $$ SELECT array_remove(ARRAY(\
                 SELECT outbound_job_id(x) FROM unnest($1) AS x), NULL) $$"
            ),
        ),
        (
            "outbound_job_ids_cast(text[])",
            format!("{ret}[]"),
            format!(
                "CREATE OR REPLACE FUNCTION outbound_job_ids_cast(text[]) RETURNS {ret}[]\n    \
                 LANGUAGE sql STABLE PARALLEL SAFE\n    AS $$ SELECT $1::{ret}[] $$"
            ),
        ),
        (
            "outbound_job_status(text)",
            status_ret.clone(),
            format!(
                "CREATE OR REPLACE FUNCTION outbound_job_status(text) RETURNS {status_ret}\n    \
                 LANGUAGE sql {status_vol} PARALLEL SAFE\n    AS $$ SELECT {status_conv} $$"
            ),
        ),
        (
            "outbound_job_new_id()",
            ret.to_string(),
            format!(
                "CREATE OR REPLACE FUNCTION outbound_job_new_id() RETURNS {ret}\n    \
                 LANGUAGE sql VOLATILE\n    AS $$ {new_id} $$"
            ),
        ),
    ]
}

const NOTIFY_FUNCTION: &str = r#"CREATE OR REPLACE FUNCTION outbound_job_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE status = 'queued') THEN
        PERFORM pg_notify('outbound_jobs', '');
    END IF;
    RETURN NULL;
END
$$"#;

const NOTIFY_TRIGGER: &str = r#"CREATE TRIGGER outbound_job_notify
    AFTER INSERT ON "OutboundJob"
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION outbound_job_notify()"#;

/// Our other tables as the migrations leave them, `"jobId"` of the app's id type.
fn tables(job_id_ty: &str) -> Vec<(&'static str, Vec<String>)> {
    vec![
        (
            "OutboundMessage",
            vec![
                format!(
                    r#"CREATE TABLE "OutboundMessage" (
    id               bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    "jobId"          {job_id_ty} NOT NULL REFERENCES "OutboundJob" (id) ON DELETE CASCADE,
    seq              integer     NOT NULL CHECK (seq >= 0),
    status           text        NOT NULL DEFAULT 'pending'
                     CONSTRAINT "OutboundMessage_status_check"
                     CHECK (status IN ('pending', 'sending', 'sent', 'delivered', 'read', 'failed', 'unknown')),
    "to"             text        NOT NULL,
    body             jsonb       NOT NULL,
    wamid            text        CONSTRAINT "OutboundMessage_wamid_key" UNIQUE,
    "lastErrorCode"  text,
    "createdAt"      timestamptz NOT NULL DEFAULT now(),
    "updatedAt"      timestamptz NOT NULL DEFAULT now(),
    "sentAt"         timestamptz,
    "deliveredAt"    timestamptz,
    "readAt"         timestamptz,
    "lastError"      text,
    "phoneNumberId"  text,
    CONSTRAINT "OutboundMessage_jobId_seq_key" UNIQUE ("jobId", seq)
) WITH (fillfactor = 70)"#
                ),
                r#"CREATE INDEX "OutboundMessage_template_sentAt_idx" ON "OutboundMessage" ("sentAt")
    INCLUDE ("phoneNumberId", "to")
    WHERE "sentAt" IS NOT NULL AND body->>'type' = 'template'"#
                    .into(),
                r#"CREATE INDEX "OutboundMessage_template_to_idx" ON "OutboundMessage" ("to", "sentAt")
    INCLUDE ("phoneNumberId")
    WHERE "sentAt" IS NOT NULL AND body->>'type' = 'template'"#
                    .into(),
                r#"CREATE INDEX "OutboundMessage_unknown_idx" ON "OutboundMessage" ("jobId")
    WHERE status = 'unknown'"#
                    .into(),
            ],
        ),
        (
            "OutboundEarlyStatus",
            vec![
                format!(
                    r#"CREATE TABLE "OutboundEarlyStatus" (
    id               bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    "jobId"          {job_id_ty},
    seq              integer,
    wamid            text        NOT NULL,
    status           text        NOT NULL
                     CONSTRAINT "OutboundEarlyStatus_status_check"
                     CHECK (status IN ('sent', 'delivered', 'read', 'failed')),
    "at"             timestamptz NOT NULL,
    "errorCode"      text,
    "errorTitle"     text,
    "receivedAt"     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT "OutboundEarlyStatus_wamid_status_key" UNIQUE (wamid, status)
)"#
                ),
                r#"CREATE INDEX "OutboundEarlyStatus_job_idx" ON "OutboundEarlyStatus" ("jobId", seq)
    WHERE "jobId" IS NOT NULL"#
                    .into(),
                r#"CREATE INDEX "OutboundEarlyStatus_receivedAt_idx" ON "OutboundEarlyStatus" ("receivedAt")"#
                    .into(),
            ],
        ),
        (
            "OutboundNumberHold",
            vec![r#"CREATE TABLE "OutboundNumberHold" (
    "phoneNumberId" text        PRIMARY KEY,
    "pausedUntil"   timestamptz,
    reason          text        NOT NULL,
    "pausedBy"      text        NOT NULL,
    "pausedAt"      timestamptz NOT NULL DEFAULT now()
)"#
            .into()],
        ),
        (
            "OutboundNumberCircuit",
            vec![r#"CREATE TABLE "OutboundNumberCircuit" (
    runner          text        NOT NULL,
    "phoneNumberId" text        NOT NULL,
    state           text        NOT NULL
                    CONSTRAINT "OutboundNumberCircuit_state_check"
                    CHECK (state IN ('circuit_open', 'rate_paused')),
    "until"         timestamptz NOT NULL,
    reason          text        NOT NULL,
    "updatedAt"     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (runner, "phoneNumberId")
)"#
            .into()],
        ),
    ]
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The plan for the database `pool` points at (see the module docs). Reads only.
pub async fn plan(pool: &PgPool) -> Result<Plan, AdoptError> {
    // In a transaction (read only, rolled back): one server connection behind a pooler too.
    let mut tx = pool.begin().await?;
    let plan = plan_on(&mut tx).await;
    tx.rollback().await.ok();
    plan
}

/// [`plan`] on one connection.
pub async fn plan_on(conn: &mut PgConnection) -> Result<Plan, AdoptError> {
    let Some(t) = inspect(conn).await? else {
        return Err(AdoptError::NoTable);
    };
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let mut enum_steps = Vec::new();
    let mut tx_steps = Vec::new();
    let mut index_steps = Vec::new();

    // The id: the app's, as it is.
    let id = t.column("id");
    let id_ty = match id {
        None => {
            problems.push("column id: missing (the primary key we name jobs by)".to_string());
            String::new()
        }
        Some(c) => {
            let ok = is_text(&c.ty) || ["uuid", "integer", "bigint", "smallint"].contains(&&*c.ty);
            if !ok {
                problems.push(format!(
                    "column id is {}: ids must be text, varchar, uuid, integer or bigint",
                    c.ty
                ));
            }
            if t.primary_key != ["id"] {
                problems.push("column id: not the primary key".to_string());
            }
            c.ty.clone()
        }
    };
    let id_kind = if is_text(&id_ty) { "text" } else { &id_ty };
    if let Some(c) = id
        && ["integer", "bigint", "smallint"].contains(&&*c.ty)
        && !c.has_default
        && !c.identity
    {
        notes.push(format!(
            "id is {} with no default: `enqueue` takes ids from the column's sequence, and \
             there is none (the app's own inserts are not affected)",
            c.ty
        ));
    }

    // The status: text, or the app's enum (values we need added).
    let mut status_enum = None;
    let mut add_columns: Vec<String> = Vec::new();
    let mut added_names: Vec<&str> = Vec::new();
    match t.column("status") {
        None => {
            add_columns.push("ADD COLUMN status text NOT NULL DEFAULT 'queued'".into());
            added_names.push("status");
        }
        Some(c) if !c.labels.is_empty() => {
            status_enum = Some(c.ty.clone());
            // `QUEUED` where we read `queued`: the app's jobs would never be claimed.
            for l in &c.labels {
                let lower = l.to_lowercase();
                if *l != lower && STATUSES.contains(&lower.as_str()) {
                    problems.push(format!(
                        "column status: the enum {} has {l:?} where the runner reads and writes                          {lower:?} (the guide's statuses are lowercase)",
                        c.ty
                    ));
                }
            }
            for s in STATUSES {
                if !c.labels.iter().any(|l| l == s) {
                    enum_steps.push(Step {
                        what: format!(
                            "the status enum {} lacks '{s}': add the value (a Prisma enum then \
                             lists it too)",
                            c.ty
                        ),
                        sql: format!("ALTER TYPE {} ADD VALUE IF NOT EXISTS '{s}'", c.ty),
                        outside_transaction: true,
                    });
                    notes.push(format!(
                        "the enum {} gains the value {s}: add it to the Prisma enum \
                         (`enum {} {{ … {s} }}`)",
                        c.ty,
                        c.ty.trim_matches('"')
                    ));
                }
            }
        }
        Some(c) if is_text(&c.ty) => {}
        Some(c) => problems.push(format!(
            "column status is {}: it must be text, varchar or an enum",
            c.ty
        )),
    }

    // Our columns: added when missing, checked when present.
    for (name, kind, add, written_null) in COLUMNS {
        match t.column(name) {
            None => {
                add_columns.push(format!("ADD COLUMN \"{name}\" {add}"));
                added_names.push(name);
            }
            Some(c) if !kind.accepts(&c.ty) => problems.push(format!(
                "column \"{name}\" is {}: it must be {} (it is left as it is)",
                c.ty,
                kind.wanted()
            )),
            Some(c) if *written_null && c.not_null => problems.push(format!(
                "column \"{name}\" is NOT NULL: the runner writes NULL into it (it is left as it is)"
            )),
            Some(_) => {}
        }
    }
    if added_names.contains(&"payload") {
        notes.push(
            "payload is added as a nullable jsonb: rows without one are failed `bad_payload`"
                .into(),
        );
    }
    let ours: Vec<&str> = COLUMNS
        .iter()
        .map(|c| c.0)
        .chain(["id", "status"])
        .collect();
    let unknown: Vec<&str> = t
        .columns
        .iter()
        .filter(|c| !ours.contains(&c.name.as_str()))
        .map(|c| c.name.as_str())
        .collect();
    if !unknown.is_empty() {
        notes.push(format!(
            "the app's columns {} are not ours: left alone",
            unknown
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let must_fill: Vec<&str> = t
        .columns
        .iter()
        .filter(|c| c.not_null && !c.has_default && !c.identity && !ours.contains(&c.name.as_str()))
        .map(|c| c.name.as_str())
        .collect();
    if !must_fill.is_empty() {
        notes.push(format!(
            "the app's columns {} are NOT NULL without a default: `outbound-runner enqueue` \
             cannot insert jobs (the app's own inserts and the runner are not affected)",
            must_fill.join(", ")
        ));
    }
    if !problems.is_empty() {
        return Err(AdoptError::Incompatible(problems));
    }

    // The functions, with the app's types.
    for (signature, ret, sql) in functions(&id_ty, status_enum.as_deref()) {
        let current: Option<String> =
            sqlx::query_scalar("SELECT pg_get_function_result(to_regprocedure($1))")
                .bind(signature)
                .fetch_one(&mut *conn)
                .await?;
        if current.as_deref() != Some(ret.as_str()) {
            if current.is_some() {
                return Err(AdoptError::Incompatible(vec![format!(
                    "function {signature} returns {}, not {ret}: drop it first",
                    current.unwrap_or_default()
                )]));
            }
            tx_steps.push(Step {
                what: format!(
                    "function {signature}: ids and statuses are bound as text and converted \
                     by the database ({id_kind} ids)"
                ),
                sql,
                outside_transaction: false,
            });
        }
    }
    if !add_columns.is_empty() {
        tx_steps.push(Step {
            what: format!(
                "add our columns {} (constant defaults or none: no table rewrite; the app's \
                 inserts that do not name them keep working)",
                added_names.join(", ")
            ),
            sql: format!(
                "ALTER TABLE \"OutboundJob\"\n    {}",
                add_columns.join(",\n    ")
            ),
            outside_transaction: false,
        });
    }
    if status_enum.is_none()
        && !t
            .constraints
            .iter()
            .any(|c| c == "OutboundJob_status_check")
    {
        tx_steps.push(Step {
            what: "check the statuses (NOT VALID: existing rows are not scanned)".into(),
            sql: format!(
                "ALTER TABLE \"OutboundJob\" ADD CONSTRAINT \"OutboundJob_status_check\" \
                 CHECK (status IN ({})) NOT VALID",
                STATUSES.map(quote_literal).join(", ")
            ),
            outside_transaction: false,
        });
    }
    for (name, check) in CHECKS {
        if !t.constraints.iter().any(|c| c == name) {
            tx_steps.push(Step {
                what: format!("check {name} (NOT VALID: existing rows are not scanned)"),
                sql: format!(
                    "ALTER TABLE \"OutboundJob\" ADD CONSTRAINT \"{name}\" CHECK ({check}) NOT VALID"
                ),
                outside_transaction: false,
            });
        }
    }
    if !t.reloptions.iter().any(|o| o == "fillfactor=70") {
        tx_steps.push(Step {
            what: "storage parameters of a churning queue (room for HOT updates, early \
                   vacuum); existing pages are not rewritten"
                .into(),
            sql: format!("ALTER TABLE \"OutboundJob\" SET ({RELOPTIONS})"),
            outside_transaction: false,
        });
    }
    let notify_fn: bool =
        sqlx::query_scalar("SELECT to_regprocedure('outbound_job_notify()') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    if !notify_fn {
        tx_steps.push(Step {
            what: "function outbound_job_notify(): wakes the runners when jobs are inserted".into(),
            sql: NOTIFY_FUNCTION.into(),
            outside_transaction: false,
        });
    }
    if !t.triggers.iter().any(|n| n == "outbound_job_notify") {
        tx_steps.push(Step {
            what: "trigger outbound_job_notify: one NOTIFY per INSERT statement that queues jobs"
                .into(),
            sql: NOTIFY_TRIGGER.into(),
            outside_transaction: false,
        });
    }
    for (table, ddl) in tables(&id_ty) {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("\"{table}\""))
            .fetch_one(&mut *conn)
            .await?;
        if !exists {
            for (i, sql) in ddl.into_iter().enumerate() {
                tx_steps.push(Step {
                    what: if i == 0 {
                        format!("table \"{table}\" (ours)")
                    } else {
                        format!("an index of \"{table}\"")
                    },
                    sql,
                    outside_transaction: false,
                });
            }
        }
    }

    // Indexes on the app's table: concurrently, writes go on.
    let mut index = |name: &str, sql: String, t: &Table| match t.has_index(name) {
        Some(true) => {}
        Some(false) => {
            index_steps.push(Step {
                what: format!("index \"{name}\" is invalid (a build was cut short): drop it"),
                sql: format!("DROP INDEX CONCURRENTLY IF EXISTS \"{name}\""),
                outside_transaction: true,
            });
            index_steps.push(Step {
                what: format!("rebuild index \"{name}\" without blocking writes"),
                sql,
                outside_transaction: true,
            });
        }
        None => index_steps.push(Step {
            what: format!("index \"{name}\", built without blocking writes"),
            sql,
            outside_transaction: true,
        }),
    };
    let key_unique = t.unique_columns.iter().any(|c| c == "idempotencyKey");
    if !key_unique {
        index(
            "OutboundJob_idempotencyKey_key",
            r#"CREATE UNIQUE INDEX CONCURRENTLY "OutboundJob_idempotencyKey_key" ON "OutboundJob" ("idempotencyKey")"#
                .to_string(),
            &t,
        );
    }
    for (name, def) in INDEXES {
        index(
            name,
            format!(r#"CREATE INDEX CONCURRENTLY "{name}" ON "OutboundJob" {def}"#),
            &t,
        );
    }

    let mut steps = enum_steps;
    steps.extend(tx_steps);
    steps.extend(index_steps);
    // The bookkeeping, last.
    if ownership(conn).await? != Ownership::Ours {
        steps.push(Step {
            what: format!(
                "{BOOKKEEPING} sqlx's migrations table, as sqlx makes it (`migrate` then \
                 behaves as on a fresh database)"
            ),
            sql: "CREATE TABLE IF NOT EXISTS _sqlx_migrations (\n    version BIGINT PRIMARY KEY,\n    \
                  description TEXT NOT NULL,\n    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),\n    \
                  success BOOLEAN NOT NULL,\n    checksum BYTEA NOT NULL,\n    \
                  execution_time BIGINT NOT NULL\n)"
                .into(),
            outside_transaction: false,
        });
        let values: Vec<String> = MIGRATOR
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| {
                let hex: String = m.checksum.iter().map(|b| format!("{b:02x}")).collect();
                format!(
                    "({}, {}, TRUE, '\\x{hex}', 0)",
                    m.version,
                    quote_literal(&m.description)
                )
            })
            .collect();
        steps.push(Step {
            what: format!(
                "{BOOKKEEPING} record our {} migrations as applied (what they make is there \
                 now; later ones apply on top)",
                values.len()
            ),
            sql: format!(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
                 execution_time) VALUES\n    {}\nON CONFLICT (version) DO NOTHING",
                values.join(",\n    ")
            ),
            outside_transaction: false,
        });
    }
    Ok(Plan { steps, notes })
}

/// The index steps of a plan: builds (and the drops of invalid indexes a killed build left).
fn is_index_step(step: &Step) -> bool {
    step.outside_transaction && step.sql.contains(" INDEX ")
}

/// After `migrate` on a table that is ours: builds the indexes of ours on `"OutboundJob"` that
/// are missing or invalid, with `CREATE INDEX CONCURRENTLY` under the migrations' lock, so the
/// app's inserts go on while a big table is indexed. Our migrations leave every index added to
/// `"OutboundJob"` after the adoption baseline to this step (`INDEXES`): a plain `CREATE INDEX`
/// in a migration would hold the app's inserts for as long as the build takes. Returns how many
/// steps ran (0 when every index is there).
pub async fn build_indexes(
    conn: &mut PgConnection,
    progress: &mut dyn Progress,
) -> Result<usize, AdoptError> {
    conn.lock()
        .await
        .map_err(|e| AdoptError::Step(format!("taking the migrations' lock: {e}")))?;
    let result = build_indexes_locked(conn, progress).await;
    let unlocked = conn.unlock().await;
    let n = result?;
    unlocked.map_err(|e| AdoptError::Step(format!("releasing the migrations' lock: {e}")))?;
    Ok(n)
}

async fn build_indexes_locked(
    conn: &mut PgConnection,
    progress: &mut dyn Progress,
) -> Result<usize, AdoptError> {
    let mut n = 0;
    for (name, def) in INDEXES {
        // None: no such index; Some(false): a build was cut short and left it invalid.
        let valid: Option<bool> = sqlx::query_scalar(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relname = $1 AND c.relnamespace = to_regnamespace(current_schema())",
        )
        .bind(*name)
        .fetch_optional(&mut *conn)
        .await?;
        if valid == Some(true) {
            continue;
        }
        let started = Instant::now();
        progress.line(&format!(
            "index \"{name}\", built without blocking writes …"
        ));
        if valid == Some(false) {
            let drop = format!("DROP INDEX CONCURRENTLY IF EXISTS \"{name}\"");
            sqlx::Executor::execute(&mut *conn, drop.as_str()).await?;
        }
        let create = format!(r#"CREATE INDEX CONCURRENTLY "{name}" ON "OutboundJob" {def}"#);
        sqlx::Executor::execute(&mut *conn, create.as_str())
            .await
            .map_err(|e| {
                AdoptError::Step(format!(
                    "index \"{name}\" failed: {}; the index left behind is invalid and the next \
                 `migrate` rebuilds it",
                    super::redact_sqlx(&e)
                ))
            })?;
        progress.line(&format!(
            "index \"{name}\" — done ({} ms)",
            started.elapsed().as_millis()
        ));
        n += 1;
    }
    Ok(n)
}

/// [`build_indexes`] inside a transaction that already holds the migrations' lock (through a
/// transaction-mode pooler, with no direct URL): the same indexes, built without
/// `CONCURRENTLY`, which a transaction cannot run. They hold the table's writes while they
/// build; set `database.direct_url` to avoid that on a big table.
pub async fn build_indexes_in_transaction(conn: &mut PgConnection) -> Result<usize, AdoptError> {
    let plan = plan_on(conn).await?;
    let mut n = 0;
    for step in plan.steps.iter().filter(|s| is_index_step(s)) {
        sqlx::raw_sql(&step.sql.replace(" CONCURRENTLY", ""))
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                AdoptError::Step(format!("{} failed: {}", step.what, super::redact_sqlx(&e)))
            })?;
        n += 1;
    }
    Ok(n)
}

/// Progress lines into the log (`migrate`'s index builds).
pub struct LogProgress;

impl Progress for LogProgress {
    fn line(&mut self, line: &str) {
        tracing::info!("migrate: {line}");
    }
}

/// How an adoption reports what it does (the CLI prints; tests collect).
pub trait Progress: Send {
    fn line(&mut self, line: &str);
}

impl<F: FnMut(&str) + Send> Progress for F {
    fn line(&mut self, line: &str) {
        self(line)
    }
}

/// Applies `plan` on `conn` (a direct session, not through a transaction-mode pooler) under
/// the migrations' lock; see the module docs for the order. The plan is made anew under the
/// lock: what another `adopt` did meanwhile is not done twice. Returns the plan applied.
pub async fn apply(
    conn: &mut PgConnection,
    progress: &mut dyn Progress,
) -> Result<Plan, AdoptError> {
    apply_watched(conn, None, progress).await
}

/// [`apply`], with `watch` (another connection's pool) to say how far each index build got
/// (`pg_stat_progress_create_index`).
pub async fn apply_watched(
    conn: &mut PgConnection,
    watch: Option<&PgPool>,
    progress: &mut dyn Progress,
) -> Result<Plan, AdoptError> {
    conn.lock()
        .await
        .map_err(|e| AdoptError::Step(format!("taking the migrations' lock: {e}")))?;
    let result = apply_locked(conn, watch, progress).await;
    let unlocked = conn.unlock().await;
    let plan = result?;
    unlocked.map_err(|e| AdoptError::Step(format!("releasing the migrations' lock: {e}")))?;
    Ok(plan)
}

async fn apply_locked(
    conn: &mut PgConnection,
    watch: Option<&PgPool>,
    progress: &mut dyn Progress,
) -> Result<Plan, AdoptError> {
    let plan = plan_on(conn).await?;
    let mut i = 0;
    while i < plan.steps.len() {
        if plan.steps[i].outside_transaction {
            run_outside(conn, &plan.steps[i], i + 1, watch, progress).await?;
            i += 1;
            continue;
        }
        let end = plan.steps[i..]
            .iter()
            .position(|s| s.outside_transaction)
            .map_or(plan.steps.len(), |n| i + n);
        run_transaction(conn, &plan.steps[i..end], i + 1, progress).await?;
        i = end;
    }
    Ok(plan)
}

fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03"))
}

/// How many times a step that could not get its lock at once is tried.
const LOCK_TRIES: u32 = 100;

async fn backoff(attempt: u32) {
    let ms = 50 + u64::from(attempt.min(10)) * 50 + rand::random::<u64>() % 50;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

async fn run_transaction(
    conn: &mut PgConnection,
    steps: &[Step],
    first: usize,
    progress: &mut dyn Progress,
) -> Result<(), AdoptError> {
    let started = Instant::now();
    for attempt in 1..=LOCK_TRIES {
        let mut tx = conn.begin().await?;
        sqlx::query(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'"))
            .execute(&mut *tx)
            .await?;
        let mut failed = None;
        for (n, step) in steps.iter().enumerate() {
            if let Err(e) = sqlx::raw_sql(&step.sql).execute(&mut *tx).await {
                failed = Some((n, e));
                break;
            }
        }
        match failed {
            None => {
                tx.commit().await?;
                progress.line(&format!(
                    "steps {}–{} committed in one transaction ({} ms{})",
                    first,
                    first + steps.len() - 1,
                    started.elapsed().as_millis(),
                    if attempt > 1 {
                        format!(", {attempt} tries: the table was busy")
                    } else {
                        String::new()
                    }
                ));
                return Ok(());
            }
            Some((_, e)) if is_lock_timeout(&e) => {
                tx.rollback().await.ok();
                backoff(attempt).await;
            }
            Some((n, e)) => {
                tx.rollback().await.ok();
                return Err(AdoptError::Step(format!(
                    "step {} ({}) failed: {}; the transaction was rolled back, nothing of it \
                     was changed",
                    first + n,
                    steps[n].what,
                    super::redact_sqlx(&e)
                )));
            }
        }
    }
    Err(AdoptError::Step(format!(
        "steps {first}–{}: the table stayed busy ({LOCK_TRIES} tries of {LOCK_TIMEOUT_MS} ms); \
         nothing of them was changed: run adopt again when the app is quieter",
        first + steps.len() - 1
    )))
}

async fn run_outside(
    conn: &mut PgConnection,
    step: &Step,
    n: usize,
    watch: Option<&PgPool>,
    progress: &mut dyn Progress,
) -> Result<(), AdoptError> {
    let started = Instant::now();
    let building = step.sql.contains("CONCURRENTLY") && step.sql.starts_with("CREATE");
    // An index build waits for older transactions (never blocking writes): no lock_timeout.
    // Anything else takes its lock at once or tries again.
    let timeout = if building {
        "0".to_string()
    } else {
        format!("{LOCK_TIMEOUT_MS}ms")
    };
    sqlx::query(&format!("SET lock_timeout = '{timeout}'"))
        .execute(&mut *conn)
        .await?;
    if building {
        progress.line(&format!("step {n}: {} …", step.what));
    }
    let mut attempt = 0;
    let result = loop {
        attempt += 1;
        let run = sqlx::raw_sql(&step.sql).execute(&mut *conn);
        let r = if building {
            with_progress(run, watch, progress).await
        } else {
            run.await.map(|_| ())
        };
        match r {
            Err(e) if is_lock_timeout(&e) && attempt < LOCK_TRIES => backoff(attempt).await,
            other => break other,
        }
    };
    sqlx::query("RESET lock_timeout")
        .execute(&mut *conn)
        .await?;
    result.map_err(|e| {
        AdoptError::Step(format!(
            "step {n} ({}) failed: {}{}",
            step.what,
            super::redact_sqlx(&e),
            if building {
                "; the index left behind is invalid: the next `adopt` rebuilds it"
            } else {
                ""
            }
        ))
    })?;
    progress.line(&format!(
        "step {n}: {} — done ({} ms)",
        step.what,
        started.elapsed().as_millis()
    ));
    Ok(())
}

/// Runs an index build, saying every few seconds how far it got: its phase and share of the
/// table from `pg_stat_progress_create_index` when `watch` is given, and the time so far.
async fn with_progress<F>(
    build: F,
    watch: Option<&PgPool>,
    progress: &mut dyn Progress,
) -> sqlx::Result<()>
where
    F: std::future::Future<Output = sqlx::Result<sqlx::postgres::PgQueryResult>>,
{
    let started = Instant::now();
    tokio::pin!(build);
    loop {
        tokio::select! {
            r = &mut build => return r.map(|_| ()),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                let mut line = format!("  … still building ({} s)", started.elapsed().as_secs());
                if let Some(pool) = watch {
                    let row: Option<(String, i64, i64)> = sqlx::query_as(
                        r#"SELECT phase, blocks_done, blocks_total
                           FROM pg_stat_progress_create_index
                           WHERE relid = to_regclass('"OutboundJob"')"#,
                    )
                    .fetch_optional(pool)
                    .await
                    .ok()
                    .flatten();
                    if let Some((phase, done, total)) = row {
                        let pct = if total > 0 { done * 100 / total } else { 0 };
                        let _ = write!(line, ": {phase}, {pct} % of the table's blocks");
                    }
                }
                progress.line(&line);
            }
        }
    }
}
