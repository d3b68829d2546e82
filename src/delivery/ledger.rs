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
//! job's requeue, failure or completion) makes them durable too. The wamid of a job's last
//! message is written by the completion itself ([`ACCEPTED_CTE`], synchronous). A crash
//! in between loses at most a `pending` row (recreated by the next attempt, nothing was sent) or
//! leaves an accepted message `sending` (the rescuer makes it `unknown`: never a second send);
//! docs/delivery.md ("Durability") has every case.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::db::Pool;
use crate::db::batch::{Gate, Intake, Patience};
use crate::queue::{Fence, JobId, fence_arrays};

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
    WHERE id = outbound_job_id($1) AND status = 'running' AND "lockedBy" = $2 AND attempts = $3
    FOR KEY SHARE OF "OutboundJob"
)"#;

/// "The message has no wamid" (Meta never accepted it), in a mark's `WHERE`, written so that
/// no index can answer it: the rows to mark are found by their keys. The unique index on
/// `wamid` holds an entry for every message still without one, and for every dead version of a
/// message that had none yet (each send leaves one until vacuum), so a plan that reads it for
/// `wamid IS NULL` (a generic plan chose it on statistics taken while the table was small)
/// visits a page per unsent message on every mark.
const NO_WAMID: &str = "(m.wamid IS NULL) IS TRUE";

/// One job's messages to create before any send (see [`prepare`]).
#[derive(Debug, Clone)]
pub struct Prepare {
    pub fence: Fence,
    pub to: String,
    /// The phone number id the messages leave from (the tier count's, docs/numbers.md).
    pub from: String,
    /// The orchestrator's answer, to save in `composed` (when not saved yet).
    pub composed: Option<Value>,
    pub messages: Vec<Value>,
    /// Mark this message `sending` in the same statement, as [`mark_sending`] would (its slot
    /// is due: the request leaves after this commit). The statement then commits with its
    /// fsync.
    pub mark: Option<Mark>,
}

/// What [`prepare`] left of one job: every message row in `seq` order, and whether the
/// requested mark landed (the row is `sending` by this attempt's hand, its request may leave).
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub messages: Vec<Message>,
    pub marked: bool,
}

/// [`prepare`]'s statement (`save`: some job has an orchestrator answer to save): the jobs'
/// fence and their `composed` are the queue's ([`crate::queue::moves::OWNED_CTE`],
/// [`crate::queue::moves::SAVE_COMPOSED_CTE`]), the message rows the ledger's. A message
/// to mark is inserted `sending` or, if it exists, marked as [`mark_sending`] marks (the update
/// sees only rows that existed before the statement, the insert only creates missing ones).
/// Public so a test can check its plan.
#[doc(hidden)]
pub fn prepare_sql(save: bool) -> &'static str {
    static SQL: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
        [false, true].map(|save| {
            let fence = if save {
                format!(
                    "{}, {}",
                    crate::queue::moves::OWNED_CTE,
                    crate::queue::moves::SAVE_COMPOSED_CTE
                )
            } else {
                crate::queue::moves::OWNED_CTE.to_string()
            };
            format!(
                r#"
        WITH req AS (
            SELECT r.job, r.locked_by, r.attempts, r.composed,
                   r.recipient, r.sender, r.mark, r.resend
            FROM unnest(outbound_job_ids_cast($1), $2::text[], $3::int[], $4::jsonb[], $5::text[], $9::text[],
                        $10::int[], $11::bool[])
                AS r(job, locked_by, attempts, composed, recipient, sender, mark, resend),
                 (SELECT set_config('synchronous_commit', CASE WHEN $12 THEN 'on' ELSE 'off' END,
                                    true)) relaxed
        ), {}, ins AS (
            INSERT INTO "OutboundMessage" ("jobId", seq, status, "to", body, "phoneNumberId")
            SELECT o.job, m.seq,
                   CASE WHEN m.seq = o.mark AND NOT o.stopping THEN 'sending' ELSE 'pending' END,
                   o.recipient, m.body, o.sender
            FROM owner o
                 JOIN unnest(outbound_job_ids_cast($6), $7::int[], $8::jsonb[]) AS m(job, seq, body)
                 ON m.job = o.job
            ON CONFLICT ("jobId", seq) DO NOTHING
            RETURNING "jobId", seq, status, "to", body, wamid, "lastErrorCode", "lastError"
        ), marks AS (
            -- The existing rows to mark, each found by its key from its own request (no join
            -- of the messages with `owner`: see `queue::moves::OWNED_CTE`). OFFSET 0 keeps the
            -- planner from turning the LATERAL back into a join (a hash join read the whole
            -- table to mark a few rows).
            SELECT x.id, o.resend
            FROM owner o CROSS JOIN LATERAL (
                SELECT m.id FROM "OutboundMessage" m WHERE m."jobId" = o.job AND m.seq = o.mark
                OFFSET 0
            ) x
            WHERE NOT o.stopping
        ), upd AS (
            -- The rows are found by `id`: no index answers the wamid test (`ledger::NO_WAMID`).
            UPDATE "OutboundMessage" m SET status = 'sending', "updatedAt" = now()
            WHERE m.id = ANY(ARRAY(SELECT id FROM marks)) AND {NO_WAMID}
              AND (m.status IN ('pending', 'failed')
                   OR (m.status = 'sending'
                       AND m.id = ANY(ARRAY(SELECT id FROM marks WHERE resend))))
            RETURNING m.id, m."jobId", m.seq, m.status, m."to", m.body, m.wamid,
                      m."lastErrorCode", m."lastError"
        )
        SELECT "jobId", seq, status, "to", body, wamid, "lastErrorCode", "lastError",
               status = 'sending' AS marked
        FROM ins
        UNION ALL
        SELECT "jobId", seq, status, "to", body, wamid, "lastErrorCode", "lastError", true
        FROM upd
        UNION ALL
        -- The rows that were there and stay as they are: each job's found by its key (LATERAL,
        -- kept apart by OFFSET 0 as in `marks`: a join, or an `= ANY` of the jobs, let plans
        -- read the whole table), the marked ones left out (NOT IN: a hashed lookup, not a loop).
        SELECT m."jobId", m.seq, m.status, m."to", m.body, m.wamid, m."lastErrorCode",
               m."lastError", false
        FROM owner o CROSS JOIN LATERAL (
            SELECT * FROM "OutboundMessage" k WHERE k."jobId" = o.job OFFSET 0
        ) m
        WHERE m.id NOT IN (SELECT id FROM upd)
        "#,
                fence
            )
        })
    });
    &SQL[usize::from(save)]
}

/// Before any send, for any number of jobs in one statement: saves each orchestrator answer in
/// `composed` (when given and not saved yet), creates each job's message rows as `pending`
/// (rows that exist are kept as they are) and marks the messages asked for `sending`
/// ([`Prepare::mark`]). Returns, per job, its rows, or `None` if its fence did not hold. No
/// fsync of its own (see the module docs) unless it marks a message.
pub async fn prepare(pool: &Pool, jobs: &[Prepare]) -> sqlx::Result<Vec<Option<Prepared>>> {
    let (ids, owners, attempts) = fence_arrays(jobs.iter().map(|p| &p.fence));
    let composed: Vec<Option<&Value>> = jobs.iter().map(|p| p.composed.as_ref()).collect();
    let to: Vec<&str> = jobs.iter().map(|p| p.to.as_str()).collect();
    let from: Vec<&str> = jobs.iter().map(|p| p.from.as_str()).collect();
    let mark: Vec<Option<i32>> = jobs
        .iter()
        .map(|p| p.mark.as_ref().map(|m| m.seq))
        .collect();
    let resend: Vec<bool> = jobs
        .iter()
        .map(|p| p.mark.as_ref().is_some_and(|m| m.resend_in_doubt))
        .collect();
    let durable = mark.iter().any(Option::is_some);
    let (mut m_job, mut m_seq, mut m_body) = (Vec::new(), Vec::new(), Vec::new());
    for p in jobs {
        for (seq, body) in p.messages.iter().enumerate() {
            m_job.push(p.fence.id.clone());
            m_seq.push(seq as i32);
            m_body.push(body);
        }
    }
    let save = composed.iter().any(Option::is_some);
    let rows = sqlx::query(prepare_sql(save))
        .bind(&ids)
        .bind(&owners)
        .bind(&attempts)
        .bind(&composed)
        .bind(&to)
        .bind(&m_job)
        .bind(&m_seq)
        .bind(&m_body)
        .bind(&from)
        .bind(&mark)
        .bind(&resend)
        .bind(durable)
        .fetch_all(pool)
        .await?;
    let mut by_job: std::collections::HashMap<JobId, Prepared> = Default::default();
    for row in rows {
        let status: String = row.get(2);
        let entry = by_job.entry(row.get(0)).or_insert_with(|| Prepared {
            messages: Vec::new(),
            marked: false,
        });
        entry.marked |= row.get::<bool, _>(8);
        entry.messages.push(Message {
            seq: row.get(1),
            status: Status::parse(&status).ok_or_else(|| {
                sqlx::Error::Protocol(format!("unexpected message status {status:?}"))
            })?,
            to: row.get(3),
            body: row.get(4),
            wamid: row.get(5),
            error_code: row.get(6),
            error: row.get(7),
        });
    }
    // A job's `messages` are never empty, so an owned job always has rows.
    Ok(jobs
        .iter()
        .map(|p| {
            by_job.remove(&p.fence.id).map(|mut prepared| {
                prepared.messages.sort_by_key(|m| m.seq);
                prepared
            })
        })
        .collect())
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
    let resend: Vec<bool> = marks.iter().map(|m| m.resend_in_doubt).collect();
    per_message(
        pool,
        mark_sending_sql(),
        marks.iter().map(|m| (&m.fence, m.seq)),
        resend,
    )
    .await
}

/// [`mark_sending`]'s statement. Public so a test can check its plan.
#[doc(hidden)]
pub fn mark_sending_sql() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        batch_owner(
            "bool",
            // An operator asked the job to stop (`jobs cancel`): nothing more is sent.
            r#"AND j."cancelRequestedAt" IS NULL"#,
            false,
            &format!(
                r#"
            UPDATE "OutboundMessage" m SET status = 'sending', "updatedAt" = now()
            WHERE m.id = ANY(ARRAY(SELECT id FROM keyed)) AND {NO_WAMID}
              AND (m.status IN ('pending', 'failed')
                   OR (m.status = 'sending' AND m.id = ANY(ARRAY(SELECT id FROM keyed WHERE arg))))
            RETURNING m.id"#
            ),
        )
    });
    &SQL
}

/// A batched statement on messages, each row fenced by its own job: `req`, one row per request
/// (`job`, `locked_by`, `attempts`, `seq`, `arg` of SQL type `arg_type`, and its ordinal `n`:
/// `$1` to `$5`, see [`per_message`]); `owner`, the requests whose job's fence holds (and
/// `also`), locked `FOR KEY SHARE`; `keyed`, their message rows' `id` (with `n` and `arg`), each
/// found by its key; then `update`, which writes rows by `id` from `keyed` and returns their
/// `id`; and the `n` of the rows it wrote. It never joins the batch with the table (a plan that
/// did read the whole table, or the batch once per row). `relaxed`: no fsync of its own (see
/// the module docs).
fn batch_owner(arg_type: &str, also: &str, relaxed: bool, update: &str) -> String {
    let relaxed = if relaxed {
        ",\n                 (SELECT set_config('synchronous_commit', 'off', true)) relaxed"
    } else {
        ""
    };
    format!(
        r#"
        WITH req AS (
            SELECT r.job, r.locked_by, r.attempts, r.seq, r.arg, r.n
            FROM unnest(outbound_job_ids_cast($1), $2::text[], $3::int[], $4::int[], $5::{arg_type}[])
                WITH ORDINALITY AS r(job, locked_by, attempts, seq, arg, n)
        ), owner AS (
            -- Each request finds its job by the primary key (see `queue::moves::OWNED_CTE`).
            SELECT r.n, r.job, r.seq, r.arg
            FROM req r CROSS JOIN LATERAL (
                SELECT 1 FROM "OutboundJob" j
                WHERE j.id = r.job AND j.status = 'running' AND j."lockedBy" = r.locked_by
                  AND j.attempts = r.attempts
                  {also}
                FOR KEY SHARE
            ) fenced{relaxed}
        ), keyed AS (
            -- OFFSET 0: found by the key, not turned back into a join (see `prepare_sql`).
            SELECT x.id, o.n, o.arg
            FROM owner o CROSS JOIN LATERAL (
                SELECT m.id FROM "OutboundMessage" m WHERE m."jobId" = o.job AND m.seq = o.seq
                OFFSET 0
            ) x
        ), upd AS ({update}
        )
        SELECT k.n FROM keyed k WHERE k.id = ANY(ARRAY(SELECT id FROM upd))
        "#
    )
}

/// Runs `sql` (made by [`batch_owner`], returning the ordinals `n` that landed) for each
/// (fence, seq) of `requests` with its `arg`. Returns, for each request, whether it landed.
async fn per_message<'a, T>(
    pool: &Pool,
    sql: &str,
    requests: impl Iterator<Item = (&'a Fence, i32)>,
    args: Vec<T>,
) -> sqlx::Result<Vec<bool>>
where
    Vec<T>: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
{
    let (fences, seqs): (Vec<&Fence>, Vec<i32>) = requests.unzip();
    let (ids, owners, attempts) = fence_arrays(fences.iter().copied());
    let landed: Vec<i64> = sqlx::query_scalar(sql)
        .bind(&ids)
        .bind(&owners)
        .bind(&attempts)
        .bind(&seqs)
        .bind(args)
        .fetch_all(pool)
        .await?;
    Ok(landed_of(seqs.len(), landed))
}

/// The ledger writes every send makes, each batched across the runner's jobs (a group commit,
/// [`crate::db::batch`]): one task per kind of write (creating the messages, the marks, the
/// wamids) takes every request waiting and writes them in one statement, so many jobs sending
/// at once cost one round trip (and, for the marks, one fsync) per batch instead of one per
/// message. Every row is still fenced by its own job, and every request waits for its own
/// statement: a mark is committed before its request leaves, as before. (A job's last wamid is
/// written by its completion: [`ACCEPTED_CTE`].)
#[derive(Clone)]
pub struct Writers {
    pub prepare: Gate<Prepare, Option<Prepared>>,
    pub sending: Gate<Mark, bool>,
    pub sent: Gate<Sent, bool>,
    /// Meta's status webhooks, applied in batches ([`super::statuses`]).
    pub statuses: super::statuses::Writer,
}

/// The most requests one ledger statement takes.
const MAX_BATCH: usize = 256;

/// How long the prepare's batch gathers at most (the other writers: [`crate::db::batch::LINGER`]).
/// The jobs of a mark span wake for their marks at one instant, but reach the writer over a few
/// milliseconds of the runtime's work (at rate 80, 20 jobs over 2–4 ms): with 1 ms, and measured
/// against the previous batch alone, 242 prepares for 164 claims, split 19 + 1, then 1 + 18. So
/// the prepare's intake also remembers four batches. A span's first send waits this much at most.
const PREPARE_LINGER: Duration = Duration::from_millis(5);

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
        let intake = || Intake::new(MAX_BATCH, crate::db::batch::LINGER);
        let (prepare, p) = Gate::start(
            pool.clone(),
            stop.clone(),
            patient.clone(),
            Intake::new(MAX_BATCH, PREPARE_LINGER).remembers(4),
            |pool, jobs| async move { prepare(&pool, &jobs).await },
        );
        let (sending, a) = Gate::start(
            pool.clone(),
            stop.clone(),
            patient.clone(),
            intake(),
            |pool, marks| async move { mark_sending(&pool, &marks).await },
        );
        let (sent, b) = Gate::start(
            pool.clone(),
            stop.clone(),
            patient,
            intake(),
            |pool, sent| async move { record_sent(&pool, &sent).await },
        );
        let (statuses, c) =
            super::statuses::Writer::start(pool, metrics.clone(), stop, status_retention);
        (
            Writers {
                prepare,
                sending,
                sent,
                statuses,
            },
            vec![p, a, b, c],
        )
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
        .bind(&fence.id)
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
    let wamids: Vec<&str> = sent.iter().map(|m| m.wamid.as_str()).collect();
    per_message(
        pool,
        record_sent_sql(),
        sent.iter().map(|m| (&m.fence, m.seq)),
        wamids,
    )
    .await
}

/// [`record_sent`]'s statement. Public so a test can check its plan.
#[doc(hidden)]
pub fn record_sent_sql() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        batch_owner(
            "text",
            "",
            true,
            r#"
            -- Each row's wamid by its position in the batch (no join of the batch with the
            -- table; see `batch_owner`).
            UPDATE "OutboundMessage" m
            SET status = 'sent', wamid = b.wamids[array_position(b.ids, m.id)], "sentAt" = now(),
                "lastErrorCode" = NULL, "updatedAt" = now()
            FROM (SELECT ARRAY(SELECT id FROM keyed ORDER BY n) AS ids,
                         ARRAY(SELECT arg FROM keyed ORDER BY n) AS wamids OFFSET 0) b
            WHERE m.id = ANY(b.ids) AND m.status = 'sending'
            RETURNING m.id"#,
        )
    });
    &SQL
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
        .bind(&fence.id)
        .bind(&*fence.locked_by)
        .bind(fence.attempts)
        .bind(seq)
        .bind(status.as_str())
        .bind(code)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Messages recorded as sent together with their job's completion (sandbox sends), as the
/// columns [`SANDBOX_SENT_CTE`] takes.
#[derive(Debug, Default)]
pub struct CompletionRecords {
    pub job: Vec<JobId>,
    pub seq: Vec<i32>,
    pub to: Vec<String>,
    pub body: Vec<serde_json::Value>,
    /// Live sends: a job's last message, `sending`, that Meta accepted (see [`ACCEPTED_CTE`]).
    pub accepted_job: Vec<JobId>,
    pub accepted_seq: Vec<i32>,
    pub accepted_wamid: Vec<String>,
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
                   'wamid.sandbox.' || r.job::text || '.' || r.seq, now()
            FROM unnest(outbound_job_ids_cast($4), $5::int[], $6::text[], $7::jsonb[])
                 AS r(job, seq, recipient, body)
            WHERE r.job IN (SELECT id FROM done)
            ON CONFLICT ("jobId", seq) DO NOTHING
        )"#;

/// The batched completion's other `"OutboundMessage"` half: a CTE named `accepted` that records
/// the wamid and `sent` of a live job's last message (`$8` jobs, `$9` seqs, `$10` wamids:
/// [`CompletionRecords`]'s `accepted_*`), still `sending`, for the jobs the store's `done` CTE
/// marked done. The `done` CTE lets exactly these `sending` messages through its "every message
/// accepted" check. So the last wamid of a job costs no statement of its own, and it becomes
/// durable with the completion's synchronous commit; docs/delivery.md ("Durability") has what
/// a crash in between leaves.
pub const ACCEPTED_CTE: &str = r#"
        accepted AS (
            UPDATE "OutboundMessage" m
            SET status = 'sent', wamid = a.wamid, "sentAt" = now(), "lastErrorCode" = NULL,
                "updatedAt" = now()
            FROM unnest(outbound_job_ids_cast($8), $9::int[], $10::text[]) AS a(job, seq, wamid)
            WHERE m."jobId" = a.job AND m.seq = a.seq AND m.status = 'sending'
              AND a.job IN (SELECT id FROM done)
        )"#;

/// A message as Meta's statuses leave it (`super::statuses`), for [`write_tracked`].
#[derive(Debug, Clone)]
pub struct Tracked<'a> {
    pub id: i64,
    pub status: &'a str,
    pub wamid: Option<&'a str>,
    pub sent_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub read_at: Option<DateTime<Utc>>,
    pub error_code: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// Writes what Meta's statuses did to `rows` (every column they may change), in the caller's
/// transaction (the status writer's, which holds the rows locked). `named`: see
/// `super::statuses`' `apply_in`.
pub async fn write_tracked(
    conn: &mut sqlx::PgConnection,
    rows: &[Tracked<'_>],
    named: bool,
) -> sqlx::Result<()> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status).collect();
    let wamids: Vec<Option<&str>> = rows.iter().map(|r| r.wamid).collect();
    let sent: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.sent_at).collect();
    let delivered: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.delivered_at).collect();
    let read: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.read_at).collect();
    let codes: Vec<Option<&str>> = rows.iter().map(|r| r.error_code).collect();
    let errors: Vec<Option<&str>> = rows.iter().map(|r| r.error).collect();
    sqlx::query(
        r#"
        UPDATE "OutboundMessage" m
        SET status = u.status, wamid = u.wamid, "sentAt" = u.sent, "deliveredAt" = u.delivered,
            "readAt" = u.read, "lastErrorCode" = u.code, "lastError" = u.error,
            "updatedAt" = now()
        FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[],
                    $5::timestamptz[], $6::timestamptz[], $7::text[], $8::text[])
             AS u(id, status, wamid, sent, delivered, read, code, error)
        WHERE m.id = u.id
        "#,
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&wamids)
    .bind(&sent)
    .bind(&delivered)
    .bind(&read)
    .bind(&codes)
    .bind(&errors)
    .persistent(named)
    .execute(conn)
    .await?;
    Ok(())
}
