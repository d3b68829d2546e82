//! What the runner needs of the schema, checked at start when `database.migrate = false`.
//!
//! A team whose Prisma applies every DDL statement (`outbound-runner prisma migration DIR`,
//! docs/prisma.md) runs the daemon with `database.migrate = false`. The daemon then cannot trust
//! that the files were applied, or applied whole: it looks for every table, column, index and
//! the trigger it relies on, and names what is missing instead of failing later on a statement.

use sqlx::PgPool;

/// Each table we need and the columns we use in it.
const TABLES: &[(&str, &[&str])] = &[
    ("OutboundJob", super::prisma::OUR_JOB_COLUMNS),
    (
        "OutboundMessage",
        &[
            "id",
            "jobId",
            "seq",
            "status",
            "to",
            "body",
            "wamid",
            "lastErrorCode",
            "createdAt",
            "updatedAt",
            "sentAt",
            "deliveredAt",
            "readAt",
            "lastError",
            "phoneNumberId",
        ],
    ),
    (
        "OutboundEarlyStatus",
        &[
            "id",
            "jobId",
            "seq",
            "wamid",
            "status",
            "at",
            "errorCode",
            "errorTitle",
            "receivedAt",
        ],
    ),
    (
        "OutboundNumberHold",
        &[
            "phoneNumberId",
            "pausedUntil",
            "reason",
            "pausedBy",
            "pausedAt",
        ],
    ),
    (
        "OutboundNumberCircuit",
        &[
            "runner",
            "phoneNumberId",
            "state",
            "until",
            "reason",
            "updatedAt",
        ],
    ),
];

/// The indexes our statements rely on (each valid: a `CREATE INDEX CONCURRENTLY` that failed
/// leaves an invalid one, which counts as missing).
const INDEXES: &[&str] = &[
    "OutboundJob_idempotencyKey_key",
    "OutboundJob_runnable_idx",
    "OutboundJob_queued_runAt_idx",
    "OutboundJob_lease_idx",
    "OutboundJob_completedAt_idx",
    "OutboundJob_running_no_lease_idx",
    "OutboundMessage_jobId_seq_key",
    "OutboundMessage_wamid_key",
    "OutboundMessage_template_sentAt_idx",
    "OutboundMessage_template_to_idx",
    "OutboundEarlyStatus_wamid_status_key",
    "OutboundEarlyStatus_job_idx",
    "OutboundEarlyStatus_receivedAt_idx",
];

/// The trigger that wakes the runners on insert.
const TRIGGER: &str = "outbound_job_notify";

/// What is missing, one readable item each (empty: everything is there).
pub async fn missing(pool: &PgPool) -> sqlx::Result<Vec<String>> {
    let mut out = Vec::new();
    for (table, columns) in TABLES {
        let present: Vec<String> = sqlx::query_scalar(
            r#"SELECT a.attname::text FROM pg_attribute a
               WHERE a.attrelid = to_regclass(quote_ident($1)) AND a.attnum > 0
                 AND NOT a.attisdropped"#,
        )
        .bind(table)
        .fetch_all(pool)
        .await?;
        if present.is_empty() {
            out.push(format!("table \"{table}\""));
            continue;
        }
        for c in columns.iter().filter(|c| !present.iter().any(|p| p == *c)) {
            out.push(format!("column \"{table}\".\"{c}\""));
        }
    }
    let valid: Vec<String> = sqlx::query_scalar(
        r#"SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = current_schema() AND c.relname = ANY($1) AND i.indisvalid"#,
    )
    .bind(INDEXES)
    .fetch_all(pool)
    .await?;
    for ix in INDEXES.iter().filter(|i| !valid.iter().any(|v| v == *i)) {
        out.push(format!("index \"{ix}\" (or it is invalid)"));
    }
    let trigger: bool = sqlx::query_scalar(
        r#"SELECT EXISTS (SELECT 1 FROM pg_trigger
                          WHERE tgrelid = to_regclass('"OutboundJob"') AND tgname = $1
                            AND tgenabled <> 'D')"#,
    )
    .bind(TRIGGER)
    .fetch_one(pool)
    .await?;
    if !trigger && !out.iter().any(|m| m == "table \"OutboundJob\"") {
        out.push(format!(
            "trigger {TRIGGER} on \"OutboundJob\" (or it is disabled)"
        ));
    }
    Ok(out)
}
