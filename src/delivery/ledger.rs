//! The idempotency ledger: every statement live delivery runs on `"OutboundMessage"`, and the
//! sandbox's half of the batched completion ([`SANDBOX_SENT_CTE`]).
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
//!     ▲                        │                        │
//!     │                        │        Meta's statuses ▼ (docs/delivery.md, [`super::statuses`])
//!     │                        │                  delivered ─► read, or failed (with Meta's code)
//!     └────── settle ──────────┤──► failed    (Meta refused it for good)
//!        (Meta refused it,     └──► unknown   (no answer after the request was written, or
//!         transiently)                         the runner died mid-send: never resent)
//! ```
//!
//! Every function returns `Ok(false)` (or `Ok(None)`) when the fence did not hold: the job was
//! taken from us, and nothing more may be sent for it.
//!
//! Durability: only [`mark_sending`] must be on disk before the request leaves, and it commits
//! synchronously (for all the jobs about to send at once, through [`Writers`]). The
//! other writes commit with `synchronous_commit = off` (no fsync of their own): PostgreSQL
//! flushes its WAL in order, so the next synchronous commit (the next `mark_sending`, or the
//! job's requeue, failure or completion) makes them durable too. A crash
//! in between loses at most a `pending` row (recreated by the next attempt, nothing was sent) or
//! a `sent` that stays `sending` (the rescuer makes it `unknown`: never a second send).

use std::time::Duration;

use prometheus::IntCounter;
use serde_json::Value;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::db::Pool;
use crate::queue::{Fence, fence_arrays};

/// The statuses of `"OutboundMessage".status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Sending,
    Sent,
    /// Meta's status webhook said so (see [`super::statuses`]).
    Delivered,
    Read,
    Failed,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Delivered => "delivered",
            Status::Read => "read",
            Status::Failed => "failed",
            Status::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Status::Pending,
            "sending" => Status::Sending,
            "sent" => Status::Sent,
            "delivered" => Status::Delivered,
            "read" => Status::Read,
            "failed" => Status::Failed,
            "unknown" => Status::Unknown,
            _ => return None,
        })
    }
}

impl Status {
    /// Meta accepted the message: `sent`, `delivered` or `read`.
    pub fn accepted(self) -> bool {
        matches!(self, Status::Sent | Status::Delivered | Status::Read)
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
    /// Why it failed: `"lastErrorCode"` and `"lastError"` (Meta's title, from a status).
    pub error_code: Option<String>,
    pub error: Option<String>,
}

/// The fence of one job's write as a CTE (`$1` id, `$2` lockedBy, `$3` attempts), for a write
/// that may commit without its own fsync (see the module docs): it sets
/// `synchronous_commit = off` for this statement's transaction.
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
    pool: &Pool,
    fence: &Fence,
    to: &str,
    from: &str,
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
            INSERT INTO "OutboundMessage" ("jobId", seq, status, "to", body, "phoneNumberId")
            SELECT o.id, (m.n - 1)::int, 'pending', $5, m.body, $7
            FROM owner o, unnest($6::jsonb[]) WITH ORDINALITY AS m(body, n)
            ON CONFLICT ("jobId", seq) DO NOTHING
            RETURNING seq, status, "to", body, wamid, "lastErrorCode", "lastError"
        )
        SELECT seq, status, "to", body, wamid, "lastErrorCode", "lastError" FROM ins
        UNION ALL
        SELECT m.seq, m.status, m."to", m.body, m.wamid, m."lastErrorCode", m."lastError"
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
        .bind(from)
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
            error_code: row.get(5),
            error: row.get(6),
        });
    }
    out.sort_by_key(|m| m.seq);
    Ok(Some(out))
}

/// A message to mark `sending` (see [`mark_sending`]).
#[derive(Debug, Clone)]
pub struct Mark {
    pub fence: Fence,
    pub seq: i32,
    /// `delivery.on_unknown = "retry"`: a message left `sending` by an earlier attempt may be
    /// marked (and sent) again.
    pub resend_in_doubt: bool,
}

/// Marks messages `sending` — of any number of jobs, in one statement — committed (with its
/// fsync) before their requests leave. Only a message that was not sent and is not in doubt
/// (`pending`, `failed`), or `sending` when `resend_in_doubt`, can be marked; each row is fenced
/// by its own job's claim, and none of a job an operator asked to stop (`"cancelRequestedAt"`,
/// see `queue::admin::cancel`): the job then ends its attempt as if taken from us, and its
/// requeue or failure makes it `cancelled`. A message with a wamid (Meta accepted it; a status
/// may have failed it later) is never marked. Returns, for each mark, whether it landed.
pub async fn mark_sending(pool: &Pool, marks: &[Mark]) -> sqlx::Result<Vec<bool>> {
    let (ids, owners, attempts) = fence_arrays(marks.iter().map(|m| &m.fence));
    let seqs: Vec<i32> = marks.iter().map(|m| m.seq).collect();
    let resend: Vec<bool> = marks.iter().map(|m| m.resend_in_doubt).collect();
    let landed: Vec<i64> = sqlx::query_scalar(
        r#"
        WITH req AS (
            SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::int[], $5::bool[])
                WITH ORDINALITY AS r(job, locked_by, attempts, seq, resend, n)
        ), owner AS (
            SELECT r.n, r.job, r.seq, r.resend
            FROM "OutboundJob" j JOIN req r ON j.id = r.job
            WHERE j.id = ANY($1) AND j.status = 'running' AND j."lockedBy" = r.locked_by
              AND j.attempts = r.attempts
              -- An operator asked the job to stop (`jobs cancel`): nothing more is sent.
              AND j."cancelRequestedAt" IS NULL
            FOR KEY SHARE OF j
        )
        UPDATE "OutboundMessage" m SET status = 'sending', "updatedAt" = now()
        FROM owner o
        WHERE m."jobId" = o.job AND m.seq = o.seq AND m.wamid IS NULL
          AND (m.status IN ('pending', 'failed') OR (o.resend AND m.status = 'sending'))
        RETURNING o.n
        "#,
    )
    .bind(&ids)
    .bind(&owners)
    .bind(&attempts)
    .bind(&seqs)
    .bind(&resend)
    .fetch_all(pool)
    .await?;
    Ok(landed_of(marks.len(), landed))
}

/// The ledger writes every send makes, each batched across the runner's jobs (a group commit):
/// one task per kind of write takes every request waiting and writes them in one statement,
/// so many jobs sending at once cost one round trip (and, for the marks, one fsync) per batch
/// instead of one per message. Every row is still fenced by its own job, and every request
/// waits for its own statement: a mark is committed before its request leaves, as before.
#[derive(Clone)]
pub struct Writers {
    pub sending: Gate<Mark, bool>,
    pub sent: Gate<Sent, bool>,
    /// Meta's status webhooks, applied in batches ([`super::statuses`]).
    pub statuses: super::statuses::Writer,
}

impl Writers {
    /// Starts the writers' tasks; they end when `stop` is cancelled (after the drain: a job in
    /// flight may still send).
    /// A batch that waits for a connection is retried for up to `patience` (see
    /// [`crate::db::wait`]), each wait counted in `metrics.db_waits`. Early statuses are kept
    /// for `status_retention` (`whatsapp.status_retention`).
    pub fn start(
        pool: &Pool,
        metrics: &std::sync::Arc<crate::metrics::Metrics>,
        stop: &CancellationToken,
        patience: Duration,
        status_retention: Duration,
    ) -> (Writers, Vec<JoinHandle<()>>) {
        let patient = Patience {
            waits: metrics.db_waits.clone(),
            patience,
        };
        let (sending, a) = Gate::start(
            pool.clone(),
            stop.clone(),
            patient.clone(),
            |pool, marks| async move { mark_sending(&pool, &marks).await },
        );
        let (sent, b) = Gate::start(
            pool.clone(),
            stop.clone(),
            patient,
            |pool, sent| async move { record_sent(&pool, &sent).await },
        );
        let (statuses, c) =
            super::statuses::Writer::start(pool, metrics.clone(), stop, status_retention);
        (
            Writers {
                sending,
                sent,
                statuses,
            },
            vec![a, b, c],
        )
    }
}

type Waiting<R, T> = (R, oneshot::Sender<Result<T, String>>);

#[derive(Clone)]
struct Patience {
    waits: IntCounter,
    patience: Duration,
}

/// One batched write (see [`Writers`]).
pub struct Gate<R, T> {
    tx: mpsc::Sender<Waiting<R, T>>,
}

impl<R, T> Clone for Gate<R, T> {
    fn clone(&self) -> Self {
        Gate {
            tx: self.tx.clone(),
        }
    }
}

impl<R: Clone + Send + Sync + 'static, T: Send + 'static> Gate<R, T> {
    fn start<F, Fut>(
        pool: Pool,
        stop: CancellationToken,
        patient: Patience,
        write: F,
    ) -> (Self, JoinHandle<()>)
    where
        F: Fn(Pool, Vec<R>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = sqlx::Result<Vec<T>>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(4096);
        (
            Gate { tx },
            tokio::spawn(batches(pool, rx, stop, patient, write)),
        )
    }

    /// Writes `request` with whatever other requests are waiting. An error is the statement's
    /// (redacted): the write may have landed all the same.
    pub async fn write(&self, request: R) -> Result<T, String> {
        let (ack, answer) = oneshot::channel();
        self.tx
            .send((request, ack))
            .await
            .map_err(|_| "the runner is stopping".to_string())?;
        answer
            .await
            .unwrap_or_else(|_| Err("the runner is stopping".to_string()))
    }
}

async fn batches<R: Clone, T, F, Fut>(
    pool: Pool,
    mut rx: mpsc::Receiver<Waiting<R, T>>,
    stop: CancellationToken,
    patient: Patience,
    write: F,
) where
    F: Fn(Pool, Vec<R>) -> Fut,
    Fut: std::future::Future<Output = sqlx::Result<Vec<T>>>,
{
    const MAX_BATCH: usize = 256;
    let mut batch: Vec<Waiting<R, T>> = Vec::with_capacity(MAX_BATCH);
    while crate::queue::next_batch(&mut rx, &stop, MAX_BATCH, &mut batch).await {
        // A job that stopped waiting (its attempt timed out or was aborted) is left out: it
        // will not send, and a `sending` left behind would read as a send in doubt.
        batch.retain(|(_, ack)| !ack.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (requests, acks): (Vec<R>, Vec<_>) = batch.drain(..).unzip();
        let statement = || write(pool.clone(), requests.clone());
        match crate::db::wait::patiently(patient.patience, &patient.waits, statement).await {
            Ok(results) => {
                for (ack, result) in acks.into_iter().zip(results) {
                    let _ = ack.send(Ok(result));
                }
            }
            Err(e) => {
                // Every request of the batch hears it and retries or settles on its own (an
                // error fails the whole batch: one statement, one transaction).
                let why = crate::db::redact_sqlx(&e);
                for ack in acks {
                    let _ = ack.send(Err(why.clone()));
                }
            }
        }
    }
}

/// Puts a message back from `sending` to `pending` after [`mark_sending`] reported an error:
/// the request was not sent, but the write may have landed all the same (its answer was lost
/// with the connection). Returns whether the fence held (a message that is not `sending` is left
/// as it is).
pub async fn unmark_sending(pool: &Pool, fence: &Fence, seq: i32) -> sqlx::Result<bool> {
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

/// A message Meta accepted (see [`record_sent`]).
#[derive(Debug, Clone)]
pub struct Sent {
    pub fence: Fence,
    pub seq: i32,
    pub wamid: String,
}

/// Meta accepted these messages: their wamids and `sent`, in one statement (any number of
/// jobs, each row fenced by its own job; no fsync of its own, see the module docs). Returns,
/// for each, whether it landed.
pub async fn record_sent(pool: &Pool, sent: &[Sent]) -> sqlx::Result<Vec<bool>> {
    let (ids, owners, attempts) = fence_arrays(sent.iter().map(|m| &m.fence));
    let seqs: Vec<i32> = sent.iter().map(|m| m.seq).collect();
    let wamids: Vec<&str> = sent.iter().map(|m| m.wamid.as_str()).collect();
    let landed: Vec<i64> = sqlx::query_scalar(
        r#"
        WITH req AS (
            SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::int[], $5::text[])
                WITH ORDINALITY AS r(job, locked_by, attempts, seq, wamid, n)
        ), owner AS (
            SELECT r.n, r.job, r.seq, r.wamid
            FROM "OutboundJob" j JOIN req r ON j.id = r.job,
                 (SELECT set_config('synchronous_commit', 'off', true)) relaxed
            WHERE j.id = ANY($1) AND j.status = 'running' AND j."lockedBy" = r.locked_by
              AND j.attempts = r.attempts
            FOR KEY SHARE OF j
        )
        UPDATE "OutboundMessage" m
        SET status = 'sent', wamid = o.wamid, "sentAt" = now(), "lastErrorCode" = NULL,
            "updatedAt" = now()
        FROM owner o
        WHERE m."jobId" = o.job AND m.seq = o.seq AND m.status = 'sending'
        RETURNING o.n
        "#,
    )
    .bind(&ids)
    .bind(&owners)
    .bind(&attempts)
    .bind(&seqs)
    .bind(&wamids)
    .fetch_all(pool)
    .await?;
    Ok(landed_of(sent.len(), landed))
}

/// Which of `n` requests landed, from the 1-based ordinals a statement returned.
fn landed_of(n: usize, landed: Vec<i64>) -> Vec<bool> {
    let mut out = vec![false; n];
    for ordinal in landed {
        if let Some(slot) = usize::try_from(ordinal - 1)
            .ok()
            .and_then(|i| out.get_mut(i))
        {
            *slot = true;
        }
    }
    out
}

/// A `sending` message whose send did not end in a wamid: back to `pending` (Meta refused it
/// for now), `failed` (for good) or `unknown` (in doubt), with the code.
pub async fn settle(
    pool: &Pool,
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

/// The store's write, re-exported so the call site (src/delivery/live.rs) stays as it is: it
/// writes `"OutboundJob"` only, so it lives in [`crate::queue::store`].
pub use crate::queue::store::wake_circuit_deferred;

/// Messages recorded as sent together with their job's completion (sandbox sends), as the
/// columns [`SANDBOX_SENT_CTE`] takes.
#[derive(Debug, Default)]
pub struct CompletionRecords {
    pub job: Vec<i64>,
    pub seq: Vec<i32>,
    pub to: Vec<String>,
    pub body: Vec<serde_json::Value>,
}

/// The batched completion's `"OutboundMessage"` half: a CTE named `sandbox` that records the
/// sandbox sends (`$4` jobs, `$5` seqs, `$6` recipients, `$7` bodies: [`CompletionRecords`]) as
/// `sent`, with a fake wamid (`wamid.sandbox.<job>.<seq>`), for the jobs the store's `done` CTE
/// ([`crate::queue::store::COMPLETE_DONE_CTE`]) marked done. One statement with it, so a
/// sandbox job's records cost no round trip; see docs/queue.md "Code layout".
pub const SANDBOX_SENT_CTE: &str = r#"
        sandbox AS (
            INSERT INTO "OutboundMessage" ("jobId", seq, status, "to", body, wamid, "sentAt")
            SELECT r.job, r.seq, 'sent', r.recipient, r.body,
                   'wamid.sandbox.' || r.job || '.' || r.seq, now()
            FROM unnest($4::bigint[], $5::int[], $6::text[], $7::jsonb[])
                 AS r(job, seq, recipient, body)
            WHERE r.job IN (SELECT id FROM done)
            ON CONFLICT ("jobId", seq) DO NOTHING
        )"#;
