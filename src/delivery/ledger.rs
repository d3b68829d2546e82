//! The idempotency ledger: every statement live delivery runs on `"OutboundMessage"`.
//!
//! Each write is one statement, fenced by the job's claim: it lands only while the job is
//! `running`, locked by us, on this attempt. The fence takes a `FOR KEY SHARE` lock on the job
//! row, so it cannot interleave with the rescuer (which locks the row `FOR UPDATE`): either the
//! rescuer took the job first and our write matches nothing, or our write commits first and the
//! rescuer sees its result (a `sending` message becomes `unknown`, never silently `pending`).
//!
//! A message moves:
//!
//! ```text
//!  pending ──mark_sending──► sending ──record_sent──► sent      (wamid; never sent again)
//!     ▲                        │
//!     └────── settle ──────────┤──► failed    (Meta refused it for good)
//!        (Meta refused it,     └──► unknown   (no answer after the request was written, or
//!         transiently)                         the runner died mid-send: never resent)
//! ```
//!
//! Every function returns `Ok(false)` (or `Ok(None)`) when the fence did not hold: the job was
//! taken from us, and nothing more may be sent for it.
//!
//! Durability: only [`mark_sending`] must be on disk before the request leaves, and it commits
//! synchronously. The other writes commit with `synchronous_commit = off` (no fsync of their
//! own): PostgreSQL flushes its WAL in order, so the next synchronous commit (the next
//! `mark_sending`, or the job's requeue, failure or completion) makes them durable too. A crash
//! in between loses at most a `pending` row (recreated by the next attempt, nothing was sent) or
//! a `sent` that stays `sending` (the rescuer makes it `unknown`: never a second send).

use serde_json::Value;
use sqlx::{PgPool, Row};

use crate::queue::Fence;

/// The statuses of `"OutboundMessage".status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Sending,
    Sent,
    Failed,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Failed => "failed",
            Status::Unknown => "unknown",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Status::Pending,
            "sending" => Status::Sending,
            "sent" => Status::Sent,
            "failed" => Status::Failed,
            "unknown" => Status::Unknown,
            _ => return None,
        })
    }
}

/// One message of a job, as the ledger has it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub seq: i32,
    pub status: Status,
    pub to: String,
    /// The Cloud API message object, exactly as it will be (or was) sent.
    pub body: Value,
    pub wamid: Option<String>,
}

/// The fence as a CTE: `$1` id, `$2` lockedBy, `$3` attempts.
const OWNER: &str = r#"owner AS (
    SELECT id FROM "OutboundJob"
    WHERE id = $1 AND status = 'running' AND "lockedBy" = $2 AND attempts = $3
    FOR KEY SHARE
)"#;

/// The fence of a write that may commit without its own fsync (see the module docs): the same
/// as [`OWNER`], setting `synchronous_commit = off` for this statement's transaction.
const OWNER_RELAXED: &str = r#"owner AS (
    SELECT id FROM "OutboundJob", (SELECT set_config('synchronous_commit', 'off', true)) relaxed
    WHERE id = $1 AND status = 'running' AND "lockedBy" = $2 AND attempts = $3
    FOR KEY SHARE OF "OutboundJob"
)"#;

/// Before any send: saves the orchestrator's answer in `composed` (when given and not saved
/// yet) and creates the job's message rows as `pending` (rows that exist are kept as they are),
/// in one statement. Returns every message row of the job in `seq` order, or `None` if the fence
/// did not hold.
pub async fn prepare(
    pool: &PgPool,
    fence: &Fence,
    to: &str,
    composed: Option<&Value>,
    messages: &[Value],
) -> sqlx::Result<Option<Vec<Message>>> {
    let sql = format!(
        r#"
        WITH {OWNER_RELAXED}, save AS (
            UPDATE "OutboundJob" j SET composed = $4, "updatedAt" = now()
            FROM owner o
            WHERE j.id = o.id AND $4::jsonb IS NOT NULL AND j.composed IS NULL
        ), ins AS (
            INSERT INTO "OutboundMessage" ("jobId", seq, status, "to", body)
            SELECT o.id, (m.n - 1)::int, 'pending', $5, m.body
            FROM owner o, unnest($6::jsonb[]) WITH ORDINALITY AS m(body, n)
            ON CONFLICT ("jobId", seq) DO NOTHING
            RETURNING seq, status, "to", body, wamid
        )
        SELECT seq, status, "to", body, wamid FROM ins
        UNION ALL
        SELECT m.seq, m.status, m."to", m.body, m.wamid
        FROM "OutboundMessage" m JOIN owner o ON m."jobId" = o.id
        "#
    );
    let rows = sqlx::query(&sql)
        .bind(fence.id)
        .bind(&*fence.locked_by)
        .bind(fence.attempts)
        .bind(composed)
        .bind(to)
        .bind(messages)
        .fetch_all(pool)
        .await?;
    if rows.is_empty() {
        // `messages` is never empty, so an owned job always has rows.
        return Ok(None);
    }
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let status: String = row.get(1);
        out.push(Message {
            seq: row.get(0),
            status: Status::parse(&status).ok_or_else(|| {
                sqlx::Error::Protocol(format!("unexpected message status {status:?}"))
            })?,
            to: row.get(2),
            body: row.get(3),
            wamid: row.get(4),
        });
    }
    out.sort_by_key(|m| m.seq);
    Ok(Some(out))
}

/// Marks a message `sending`, committed before its request leaves. Only a message that was
/// not sent and is not in doubt (`pending`, `failed`), or `sending` when `resend_in_doubt`
/// (`delivery.on_unknown = "retry"`), can be marked.
pub async fn mark_sending(
    pool: &PgPool,
    fence: &Fence,
    seq: i32,
    resend_in_doubt: bool,
) -> sqlx::Result<bool> {
    let sql = format!(
        r#"
        WITH {OWNER}
        UPDATE "OutboundMessage" m SET status = 'sending', "updatedAt" = now()
        FROM owner o
        WHERE m."jobId" = o.id AND m.seq = $4
          AND (m.status IN ('pending', 'failed') OR ($5 AND m.status = 'sending'))
        "#
    );
    let done = sqlx::query(&sql)
        .bind(fence.id)
        .bind(&*fence.locked_by)
        .bind(fence.attempts)
        .bind(seq)
        .bind(resend_in_doubt)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Puts a message back from `sending` to `pending` after [`mark_sending`] reported an error:
/// the request was not sent, but the write may have landed all the same (its answer was lost
/// with the connection). Returns whether the fence held (a message that is not `sending` is left
/// as it is).
pub async fn unmark_sending(pool: &PgPool, fence: &Fence, seq: i32) -> sqlx::Result<bool> {
    let sql = format!(
        r#"
        WITH {OWNER_RELAXED}, back AS (
            UPDATE "OutboundMessage" m SET status = 'pending', "updatedAt" = now()
            FROM owner o
            WHERE m."jobId" = o.id AND m.seq = $4 AND m.status = 'sending'
        )
        SELECT EXISTS (SELECT 1 FROM owner)
        "#
    );
    sqlx::query_scalar(&sql)
        .bind(fence.id)
        .bind(&*fence.locked_by)
        .bind(fence.attempts)
        .bind(seq)
        .fetch_one(pool)
        .await
}

/// Meta accepted the message: its wamid and `sent`, in one statement.
pub async fn record_sent(
    pool: &PgPool,
    fence: &Fence,
    seq: i32,
    wamid: &str,
) -> sqlx::Result<bool> {
    let sql = format!(
        r#"
        WITH {OWNER_RELAXED}
        UPDATE "OutboundMessage" m
        SET status = 'sent', wamid = $5, "sentAt" = now(), "lastErrorCode" = NULL,
            "updatedAt" = now()
        FROM owner o
        WHERE m."jobId" = o.id AND m.seq = $4 AND m.status = 'sending'
        "#
    );
    let done = sqlx::query(&sql)
        .bind(fence.id)
        .bind(&*fence.locked_by)
        .bind(fence.attempts)
        .bind(seq)
        .bind(wamid)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A `sending` message whose send did not end in a wamid: back to `pending` (Meta refused it
/// for now), `failed` (for good) or `unknown` (in doubt), with the code.
pub async fn settle(
    pool: &PgPool,
    fence: &Fence,
    seq: i32,
    status: Status,
    code: &str,
) -> sqlx::Result<bool> {
    let sql = format!(
        r#"
        WITH {OWNER_RELAXED}
        UPDATE "OutboundMessage" m SET status = $5, "lastErrorCode" = $6, "updatedAt" = now()
        FROM owner o
        WHERE m."jobId" = o.id AND m.seq = $4 AND m.status = 'sending'
        "#
    );
    let done = sqlx::query(&sql)
        .bind(fence.id)
        .bind(&*fence.locked_by)
        .bind(fence.attempts)
        .bind(seq)
        .bind(status.as_str())
        .bind(code)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// After a reload closed an open circuit: the queued jobs it deferred become due now (the one
/// write about jobs we do not hold; it only moves `"runAt"` of `queued` rows earlier, which a
/// claim's row lock keeps apart from everything else). Returns how many.
pub async fn wake_circuit_deferred(pool: &PgPool) -> sqlx::Result<u64> {
    let done = sqlx::query(
        r#"
        UPDATE "OutboundJob" SET "runAt" = now(), "updatedAt" = now()
        WHERE status = 'queued' AND "lastErrorCode" = 'circuit_open' AND "runAt" > now()
        "#,
    )
    .execute(pool)
    .await?;
    if done.rows_affected() > 0 {
        crate::queue::store::notify(pool).await?;
    }
    Ok(done.rows_affected())
}
