//! Every SQL statement that moves a job. Each one is a single statement (one round trip, one
//! transaction), prepared and cached per connection by sqlx.
//!
//! The state machine, and who moves a row:
//!
//! ```text
//!  app INSERT ─► queued ──claim──► running ──complete──► done
//!                  ▲                │  │
//!                  │   retry/defer  │  └──fail / last attempt / delivery unknown──► failed
//!                  └────────────────┘
//!          rescue (lease expired) / release (our drain) put running rows back to queued
//!          (or to failed when a message was mid-send: nobody knows if Meta accepted it)
//!          a running job an operator asked to stop ("cancelRequestedAt", `jobs cancel`) goes
//!          to cancelled where it would have been requeued or failed
//! ```

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::db::Pool;

use super::decode::Rejected;
use super::{CHANNEL, Fence, Job, JobId};

/// Claims up to `limit` due jobs in one statement. `SKIP LOCKED` lets any number of runners
/// claim concurrently without waiting on each other or taking the same row. The claim commits
/// without waiting for its own fsync (see the comment in the statement).
///
/// The `LIMIT` is a literal, one statement text per claim size (at most
/// `min(runner.batch, runner.workers)` of them, see [`claim_sql`]): with `LIMIT $n` PostgreSQL
/// estimates a tenth of the table and re-plans the claim at every execution (about as long as
/// running it, and far longer right after a large delete, when planning walks dead index
/// entries); with a literal it settles on the cached generic plan after five executions.
pub async fn claim(
    pool: &Pool,
    locked_by: &std::sync::Arc<str>,
    lease: Duration,
    limit: i64,
    default_max_attempts: i32,
) -> sqlx::Result<Claimed> {
    claim_except(pool, locked_by, lease, limit, default_max_attempts, &[]).await
}

/// [`claim`], skipping the rows `exclude` names: rows that made the claim statement itself fail
/// (see [`find_unclaimable`]), so one row cannot stop the queue.
pub async fn claim_except(
    pool: &Pool,
    locked_by: &std::sync::Arc<str>,
    lease: Duration,
    limit: i64,
    default_max_attempts: i32,
    exclude: &[JobId],
) -> sqlx::Result<Claimed> {
    let sql = claim_sql(limit);
    let rows = sqlx::query(&sql)
        .bind(&**locked_by)
        .bind(lease.as_secs_f64())
        .bind(default_max_attempts)
        .bind(exclude)
        .fetch_all(pool)
        .await?;
    let mut out = Claimed::default();
    for row in rows {
        match super::decode::claimed_row(&row, locked_by) {
            Ok(job) => out.jobs.push(job),
            Err(Some(rejected)) => out.rejected.push(rejected),
            // Not even the id and attempt could be read: nothing can be written about this row
            // (its lease expires and the rescuer takes it back). Does not happen with the
            // schema's types; logged so it would be seen.
            Err(None) => tracing::error!("a claimed row has no readable id or attempt; skipped"),
        }
    }
    Ok(out)
}

/// What one claim statement took: the jobs to run, and the rows that cannot be run (a payload
/// this runner cannot decode). The caller fails the latter with [`fail`], each on its own fence.
#[derive(Debug, Default)]
pub struct Claimed {
    pub jobs: Vec<Job>,
    pub rejected: Vec<Rejected>,
}

impl Claimed {
    /// Rows claimed, runnable or not.
    pub fn len(&self) -> usize {
        self.jobs.len() + self.rejected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a claim writes into a row (shared by the claim and [`find_unclaimable`]'s probe).
const CLAIM_SET: &str = r#"status = 'running',
            -- Bounded: a row written with attempts at the integer's maximum would otherwise make
            -- every claim statement fail (the schema bounds it too, migration 20261130000001).
            attempts = LEAST(j.attempts, 2147483645) + 1,
            "lockedBy" = $1,
            "lockedAt" = now(),
            "leaseUntil" = now() + make_interval(secs => $2),
            "startedAt" = now(),
            "updatedAt" = now()"#;

/// Whether a failed statement is the database refusing the data (a data exception, a
/// constraint, an exception raised by a trigger), not the database being unavailable.
pub fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("P0")),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => true,
        _ => false,
    }
}

/// Finds the due row that makes the claim statement fail, without changing anything: claims
/// each of the first `limit` due rows (in claim order) alone, in a transaction rolled back at
/// the end. Returns the first row whose claim fails with a data error and the error, if the
/// claim of another row succeeds (when every row fails, no single row is the cause: `None`).
pub async fn find_unclaimable(
    pool: &Pool,
    limit: i64,
    exclude: &[JobId],
) -> sqlx::Result<Option<(JobId, String)>> {
    // Unnamed statements in the transaction: pooler-safe (docs/operations.md, "Poolers").
    let mut tx = pool.pg().begin().await?;
    let ids: Vec<JobId> = sqlx::query_scalar(
        r#"SELECT id FROM "OutboundJob"
           WHERE status = 'queued' AND "runAt" <= now()
             AND id <> ALL(outbound_job_ids_cast($2::text[]))
           ORDER BY priority, "runAt", id LIMIT $1
           FOR UPDATE SKIP LOCKED"#,
    )
    .bind(limit)
    .bind(exclude)
    .persistent(false)
    .fetch_all(&mut *tx)
    .await?;
    let probe = format!(
        r#"UPDATE "OutboundJob" j SET {CLAIM_SET} WHERE j.id = outbound_job_id($3)
           RETURNING j.id, j.payload::text, j."requestId", j.attempts"#
    );
    // The culprit is a row whose claim fails while another row's succeeds: when every row
    // fails, the database refuses claims as such (a trigger, a constraint), not one row.
    let mut found = None;
    let mut any_ok = false;
    for id in ids {
        if found.is_some() && any_ok {
            break;
        }
        sqlx::query("SAVEPOINT probe")
            .persistent(false)
            .execute(&mut *tx)
            .await?;
        let result = sqlx::query(&probe)
            .bind("unclaimable-probe")
            .bind(60.0f64)
            .bind(&id)
            .persistent(false)
            .fetch_optional(&mut *tx)
            .await;
        sqlx::query("ROLLBACK TO SAVEPOINT probe")
            .persistent(false)
            .execute(&mut *tx)
            .await?;
        match result {
            Ok(_) => any_ok = true,
            Err(e) if is_data_error(&e) => {
                if found.is_none() {
                    found = Some((id, crate::db::redact_sqlx(&e)));
                }
            }
            Err(e) => return Err(e),
        }
    }
    tx.rollback().await?;
    Ok(found.filter(|_| any_ok))
}

/// Fails a queued row that cannot be claimed (see [`find_unclaimable`]). False if the row is
/// no longer queued or the database refuses this write too.
pub async fn fail_unclaimable(pool: &Pool, id: &JobId, message: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        r#"UPDATE "OutboundJob"
           SET status = 'failed', "completedAt" = now(), "lastErrorCode" = 'unclaimable',
               "lastError" = $2, "updatedAt" = now()
           WHERE id = outbound_job_id($1) AND status = 'queued'"#,
    )
    .bind(id)
    .bind(message)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The claim statement for claims of `limit` jobs, built once per size.
fn claim_sql(limit: i64) -> std::sync::Arc<str> {
    use std::collections::HashMap;
    use std::sync::{Arc, LazyLock, Mutex};
    static TEXTS: LazyLock<Mutex<HashMap<i64, Arc<str>>>> = LazyLock::new(Default::default);
    let limit = limit.max(1);
    let mut texts = TEXTS.lock().expect("claim statement cache");
    texts
        .entry(limit)
        .or_insert_with(|| {
            format!(
                r#"
        -- MATERIALIZED: the rows to claim are picked once. As a subquery in FROM, a nested-loop
        -- plan (chosen on a table whose statistics say one row, e.g. an app's table just
        -- adopted) re-runs it for every row of the outer scan, and each run skips the rows the
        -- statement already claimed and locks the next ones: one claim of LIMIT 4 took every
        -- queued row, more jobs than the runner had slots for.
        WITH c AS MATERIALIZED (
            SELECT id FROM "OutboundJob"
            WHERE status = 'queued' AND "runAt" <= now()
              AND id <> ALL(outbound_job_ids_cast($4::text[]))
            ORDER BY priority, "runAt", id
            LIMIT {limit}
            FOR UPDATE SKIP LOCKED
        )
        UPDATE "OutboundJob" j
        SET {CLAIM_SET}
        FROM c,
        -- No fsync of its own: a claim lost in a server crash leaves the job queued, and every
        -- send is preceded by a synchronous commit that flushes the claim with it.
        (SELECT set_config('synchronous_commit', 'off', true)) relaxed
        WHERE j.id = c.id
        -- Read so that no value the app can write fails the statement or the decoding: the
        -- JSON as text (parsed by queue::decode, which turns what it cannot read into a
        -- failed job), timestamps as epoch seconds, NULL when infinite.
        RETURNING j.id, j.payload::text, j."requestId", j.attempts,
                  COALESCE(j."maxAttempts", $3) AS max_attempts,
                  j.composed::text,
                  CASE WHEN isfinite(j."createdAt")
                       THEN date_part('epoch', j."createdAt") END,
                  CASE WHEN isfinite(j."runAt") THEN date_part('epoch', j."runAt") END
        "#
            )
            .into()
        })
        .clone()
}

/// When the earliest queued job becomes due (a scheduled job, or one backing off).
/// A `"runAt"` of `-infinity` is due now; one of `infinity` never is.
pub async fn next_due(pool: &Pool) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(
        r#"SELECT CASE WHEN isfinite(m) THEN m WHEN m < now() THEN now() END
           FROM (SELECT min("runAt")::timestamptz AS m FROM "OutboundJob" WHERE status = 'queued') q"#,
    )
    .fetch_one(pool)
    .await
}

/// The batched completion's `"OutboundJob"` half: a CTE named `done` (`$1` lockedBy, `$2` ids,
/// `$3` attempts) that marks the jobs whose fence holds `done` and returns their ids.
///
/// The store owns every statement on `"OutboundJob"`, the ledger every statement on
/// `"OutboundMessage"`; the completion needs both at once (a sandbox job's messages are recorded
/// by the statement that marks it done, so a sandbox job costs no round trip of its own). So the
/// completion is one statement built from two halves, each written by its table's owner: this
/// CTE and the ledger's `SANDBOX_SENT_CTE` in src/delivery/ledger.rs (`$4`–`$7`, reading `done`). The
/// completer (`src/runner/worker.rs`), which imports both, joins them; see docs/queue.md
/// "Code layout". The store cannot name the ledger: `src/queue/` imports nothing above it.
///
/// This commit is synchronous on purpose: it makes the ledger writes before it (committed with
/// `synchronous_commit = off`) durable too.
///
/// A job is only marked done while every message of its ledger is `sent` (or already
/// `delivered`/`read`: a status webhook can overtake the completion), or `sending` and named in
/// `$8`/`$9`: accepted by Meta, its wamid recorded by this same statement (the ledger's
/// `accepted` CTE, for a live job's last message). The ledger's `sent`
/// commits without its own fsync: if PostgreSQL crashes before that reaches the disk, crash
/// recovery puts the message back to `sending` while this runner, still alive, retries the
/// completion. The job is then not marked done (it counts as taken from us) and the rescuer
/// settles it like any send cut short: the message `unknown`, the job `failed`.
pub const COMPLETE_DONE_CTE: &str = r#"
        done AS (
            UPDATE "OutboundJob" j
            SET status = 'done', "completedAt" = now(), "updatedAt" = now(), "leaseUntil" = NULL
            -- The ids converted once (OFFSET 0: a row of its own, not the conversion repeated
            -- wherever `d.ids` is named). No join with the list: the fence conditions make
            -- every plan expect one running row, so a join became a nested loop that read the
            -- whole list once per job (quadratic in the batch). The primary key finds the rows,
            -- each row's attempt is looked up by its position in the list.
            FROM (SELECT outbound_job_ids_cast($2) AS ids OFFSET 0) d
            WHERE j.id = ANY(d.ids) AND j.status = 'running' AND j."lockedBy" = $1
              AND j.attempts = ($3::int[])[array_position(d.ids, j.id)]
              AND NOT EXISTS (SELECT 1 FROM "OutboundMessage" m
                              WHERE m."jobId" = j.id
                                AND m.status NOT IN ('sent', 'delivered', 'read')
                                -- Accepted by Meta, its wamid written by this statement
                                -- (`$8` jobs, `$9` seqs: the ledger's `accepted` CTE).
                                AND NOT (m.status = 'sending'
                                         AND (m."jobId", m.seq) IN
                                             (SELECT a, b
                                              FROM unnest(outbound_job_ids_cast($8), $9::int[])
                                                   AS u(a, b))))
            RETURNING j.id
        )"#;

/// After a reload closed an open circuit: the queued jobs it deferred become due now (the one
/// write about jobs we do not hold; it only moves `"runAt"` of `queued` rows earlier, which a
/// claim's row lock keeps apart from everything else). Returns how many.
pub async fn wake_circuit_deferred(pool: &Pool) -> sqlx::Result<u64> {
    let done = sqlx::query(
        r#"
        UPDATE "OutboundJob" SET "runAt" = now(), "updatedAt" = now()
        WHERE status = 'queued' AND "lastErrorCode" = 'circuit_open' AND "runAt" > now()
        "#,
    )
    .execute(pool)
    .await?;
    if done.rows_affected() > 0 {
        notify(pool).await?;
    }
    Ok(done.rows_affected())
}

/// The fence of a statement on one running job: `$1` its id, `$2` its `lockedBy`, `$3` its
/// attempt.
const FENCED: &str = r#"WHERE id = outbound_job_id($1) AND status = 'running' AND "lockedBy" = $2
          AND attempts = $3"#;

/// `"lastError"` and `"lastErrorCode"` of an attempt that ended with `code` and `message` (SQL
/// parameters): as given, or, when an operator asked the job to stop, `cancelled` with the
/// attempt's end kept in the text.
fn cancel_aware_error(message: &str, code: &str) -> String {
    format!(
        r#""lastError" = CASE WHEN "cancelRequestedAt" IS NULL THEN {message}
                ELSE 'stopped at an operator''s request (jobs cancel); the attempt ended with '
                     || {code} || ': ' || {message} END,
            "lastErrorCode" = CASE WHEN "cancelRequestedAt" IS NULL THEN {code} ELSE 'cancelled' END"#
    )
}

/// Puts a job back to `queued`, due after `delay`. With `refund`, the attempt is not counted
/// (the job was deferred for reasons not its own). A job an operator asked to stop
/// (`"cancelRequestedAt"`, `jobs cancel`) becomes `cancelled` instead. Returns false if the
/// fence did not hold.
pub async fn requeue(
    pool: &Pool,
    fence: &Fence,
    delay: Duration,
    refund: bool,
    code: &str,
    message: &str,
) -> sqlx::Result<bool> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            r#"
        UPDATE "OutboundJob"
        SET status = outbound_job_status(
                CASE WHEN "cancelRequestedAt" IS NULL THEN 'queued' ELSE 'cancelled' END),
            "completedAt" = CASE WHEN "cancelRequestedAt" IS NULL THEN NULL ELSE now() END,
            "runAt" = now() + make_interval(secs => $4),
            attempts = attempts - $5,
            {},
            "lockedBy" = NULL, "lockedAt" = NULL, "leaseUntil" = NULL, "updatedAt" = now()
        {FENCED}
        "#,
            cancel_aware_error("$6", "$7")
        )
    });
    let done = sqlx::query(&SQL)
        .bind(&fence.id)
        .bind(&*fence.locked_by)
        .bind(fence.attempts)
        .bind(delay.as_secs_f64())
        .bind(i32::from(refund))
        .bind(message)
        .bind(code)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks a job `failed` for good (`cancelled`, code `cancelled`, when an operator asked it to
/// stop; the error is kept in `"lastError"`). Returns false if the fence did not hold.
pub async fn fail(pool: &Pool, fence: &Fence, code: &str, message: &str) -> sqlx::Result<bool> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            r#"
        UPDATE "OutboundJob"
        SET status = outbound_job_status(
                CASE WHEN "cancelRequestedAt" IS NULL THEN 'failed' ELSE 'cancelled' END),
            "completedAt" = now(),
            {},
            "leaseUntil" = NULL, "updatedAt" = now()
        {FENCED}
        "#,
            cancel_aware_error("$4", "$5")
        )
    });
    let done = sqlx::query(&SQL)
        .bind(&fence.id)
        .bind(&*fence.locked_by)
        .bind(fence.attempts)
        .bind(message)
        .bind(code)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether a fence still holds (the job is ours, on this attempt).
pub async fn holds(pool: &Pool, fence: &Fence) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        r#"SELECT EXISTS (SELECT 1 FROM "OutboundJob"
           WHERE id = outbound_job_id($1) AND status = 'running' AND "lockedBy" = $2
             AND attempts = $3)"#,
    )
    .bind(&fence.id)
    .bind(&*fence.locked_by)
    .bind(fence.attempts)
    .fetch_one(pool)
    .await
}

/// Extends the leases of the jobs this runner is working on (`ids`), in one statement. Only
/// jobs a task of ours is running are renewed: a claim nobody works on expires and is rescued.
pub async fn extend_leases(
    pool: &Pool,
    locked_by: &str,
    ids: &[JobId],
    lease: Duration,
) -> sqlx::Result<u64> {
    let done = sqlx::query(
        r#"
        UPDATE "OutboundJob" SET "leaseUntil" = now() + make_interval(secs => $3),
            "updatedAt" = now()
        WHERE id = ANY(outbound_job_ids_cast($2)) AND status = 'running' AND "lockedBy" = $1
        "#,
    )
    .bind(locked_by)
    .bind(ids)
    .bind(lease.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// What a rescue or a release did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rescued {
    pub requeued: u64,
    pub failed: u64,
    /// Messages that were mid-send and are now `unknown` (or back to `pending` when
    /// `delivery.on_unknown = "retry"`).
    pub in_doubt: u64,
}

/// Which running jobs to take back.
#[derive(Debug, Clone, Copy)]
pub enum Reclaim<'a> {
    /// Jobs whose lease expired: their runner died or hung. The attempt stays spent, so a job
    /// that kills its runner every time ends `failed` after its attempts. Running rows with no
    /// lease at all are taken back after [`NO_LEASE_GRACE`].
    Expired,
    /// [`Reclaim::Expired`], with running rows that carry no lease of ours (the app's own
    /// runner's, during the switch to us; or written by hand) taken back only once their
    /// `"updatedAt"` is older than `no_lease_grace` (`runner.foreign_running_grace`).
    ExpiredOrStale { no_lease_grace: Duration },
    /// This runner's own claims, at the end of a drain. The attempt is refunded.
    Ours(&'a str),
}

/// Takes running jobs back. A job with a message in `sending` cannot be run again safely:
/// nobody knows whether Meta accepted that message. With `fail_in_doubt` the message becomes
/// `unknown` and the job `failed` (`delivery_unknown`); without, the message goes back to
/// `pending` and the job is requeued (at-least-once).
pub async fn reclaim(
    pool: &Pool,
    which: Reclaim<'_>,
    fail_in_doubt: bool,
    default_max_attempts: i32,
) -> sqlx::Result<Rescued> {
    // Three statement texts, so each target can use its index (the lease index for expired
    // leases, the no-lease index for running rows without one; a CASE or an OR in the WHERE
    // clause would make every rescue scan the whole table).
    let mut out = match which {
        // ($1, this runner, is NULL here: every expired lease is taken back.)
        Reclaim::Expired | Reclaim::ExpiredOrStale { .. } => {
            reclaim_where(
                pool,
                r#""leaseUntil" < now() AND $1::text IS NULL"#,
                None,
                0,
                fail_in_doubt,
                default_max_attempts,
            )
            .await?
        }
        Reclaim::Ours(me) => {
            reclaim_where(
                pool,
                r#""lockedBy" = $1"#,
                Some(me),
                1,
                fail_in_doubt,
                default_max_attempts,
            )
            .await?
        }
    };
    let no_lease_grace = match which {
        Reclaim::Expired => Some(NO_LEASE_GRACE),
        Reclaim::ExpiredOrStale { no_lease_grace } => Some(no_lease_grace),
        Reclaim::Ours(_) => None,
    };
    if let Some(no_lease_grace) = no_lease_grace {
        // A running row with no lease at all (the app's own runner's, or written by hand: every
        // claim of ours sets one) would never expire: it is taken back once it has not changed
        // for the grace.
        let grace = format!(
            r#""leaseUntil" IS NULL AND "updatedAt" < now() - interval '{} seconds'
               AND $1::text IS NULL"#,
            no_lease_grace.as_secs()
        );
        let more =
            reclaim_where(pool, &grace, None, 0, fail_in_doubt, default_max_attempts).await?;
        out.requeued += more.requeued;
        out.failed += more.failed;
        out.in_doubt += more.in_doubt;
    }
    if out.requeued > 0 {
        notify(pool).await?;
    }
    Ok(out)
}

/// How long a `running` row without a lease (`"leaseUntil"` NULL) is left alone before
/// [`Reclaim::Expired`] takes it back, and before `status` flags it (docs/reliability.md). The
/// daemon's rescuer waits `runner.foreign_running_grace` instead ([`Reclaim::ExpiredOrStale`]).
pub const NO_LEASE_GRACE: Duration = Duration::from_secs(60);

/// Running rows that carry no lease of ours: another runner's (the app's own, still on during
/// the switch, docs/prisma.md) or written by hand.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ForeignRunning {
    /// All of them.
    pub total: i64,
    /// Those updated within the grace: probably still being worked on by their runner; the
    /// rescuer leaves them alone until the grace has passed.
    pub recent: i64,
}

/// Counts the running rows with no lease of ours ([`ForeignRunning`]), from the no-lease index.
pub async fn foreign_running(pool: &Pool, grace: Duration) -> sqlx::Result<ForeignRunning> {
    let (total, recent): (i64, i64) = sqlx::query_as(
        r#"SELECT count(*),
                  count(*) FILTER (WHERE "updatedAt" >= now() - make_interval(secs => $1))
           FROM "OutboundJob" WHERE status = 'running' AND "leaseUntil" IS NULL"#,
    )
    .bind(grace.as_secs_f64())
    .persistent(false)
    .fetch_one(pool)
    .await?;
    Ok(ForeignRunning { total, recent })
}

/// [`foreign_running`] on the app's table before `adopt` (no lease column yet: every running row
/// is the app's runner's). Recent by `"updatedAt"` when the table has one (Prisma's
/// `@updatedAt`), else every running row counts as recent.
pub async fn foreign_running_before_adoption(
    pool: &Pool,
    grace: Duration,
) -> sqlx::Result<ForeignRunning> {
    let has_updated_at: bool = sqlx::query_scalar(
        r#"SELECT EXISTS (SELECT 1 FROM pg_attribute
                          WHERE attrelid = to_regclass('"OutboundJob"') AND attname = 'updatedAt'
                            AND NOT attisdropped)"#,
    )
    .persistent(false)
    .fetch_one(pool)
    .await?;
    let recent = if has_updated_at {
        r#""updatedAt" >= now() - make_interval(secs => $1)"#
    } else {
        "$1::float8 IS NOT NULL"
    };
    let (total, recent): (i64, i64) = sqlx::query_as(&format!(
        r#"SELECT count(*), count(*) FILTER (WHERE {recent})
           FROM "OutboundJob" WHERE status::text = 'running'"#
    ))
    .bind(grace.as_secs_f64())
    .persistent(false)
    .fetch_one(pool)
    .await?;
    Ok(ForeignRunning { total, recent })
}

async fn reclaim_where(
    pool: &Pool,
    target: &str,
    locked_by: Option<&str>,
    refund: i32,
    fail_in_doubt: bool,
    default_max_attempts: i32,
) -> sqlx::Result<Rescued> {
    let sql = format!(
        r#"
        WITH target AS (
            SELECT id FROM "OutboundJob"
            WHERE status = 'running' AND {target}
            ORDER BY id
            LIMIT 1000
            FOR UPDATE SKIP LOCKED
        ), unknown_msgs AS (
            UPDATE "OutboundMessage" m
            SET status = 'unknown', "lastErrorCode" = 'delivery_unknown', "updatedAt" = now()
            FROM target t
            WHERE $2 AND m."jobId" = t.id AND m.status = 'sending'
            RETURNING m."jobId"
        ), retry_msgs AS (
            UPDATE "OutboundMessage" m
            SET status = 'pending', "updatedAt" = now()
            FROM target t
            WHERE NOT $2 AND m."jobId" = t.id AND m.status = 'sending'
            RETURNING m."jobId"
        ), decided AS (
            SELECT j.id,
                   CASE
                     WHEN j.id IN (SELECT "jobId" FROM unknown_msgs) THEN 'delivery_unknown'
                     WHEN j.attempts - $3 >= COALESCE(j."maxAttempts", $4) THEN 'lease_expired'
                   END AS fail_code,
                   (SELECT count(*) FROM unknown_msgs u WHERE u."jobId" = j.id)
                 + (SELECT count(*) FROM retry_msgs r WHERE r."jobId" = j.id) AS in_doubt
            FROM "OutboundJob" j JOIN target t ON t.id = j.id
        )
        UPDATE "OutboundJob" j
        SET status = outbound_job_status(
                CASE WHEN d.fail_code IS NULL THEN 'queued' ELSE 'failed' END),
            attempts = j.attempts - $3,
            "runAt" = now(),
            "completedAt" = CASE WHEN d.fail_code IS NULL THEN NULL ELSE now() END,
            "lastErrorCode" = COALESCE(d.fail_code, j."lastErrorCode"),
            "lastError" = CASE d.fail_code
                WHEN 'delivery_unknown' THEN
                    'a message was being sent when the runner stopped; Meta may or may not have '
                    || 'accepted it, so it is not sent again (see "OutboundMessage" status unknown)'
                WHEN 'lease_expired' THEN
                    'the runner holding this job stopped answering on its last attempt'
                ELSE j."lastError" END,
            "lockedBy" = CASE WHEN d.fail_code IS NULL THEN NULL ELSE j."lockedBy" END,
            "lockedAt" = CASE WHEN d.fail_code IS NULL THEN NULL ELSE j."lockedAt" END,
            "leaseUntil" = NULL,
            "updatedAt" = now()
        FROM decided d
        WHERE j.id = d.id
        RETURNING j.status::text, d.in_doubt
        "#
    );
    let rows = sqlx::query(&sql)
        .bind(locked_by)
        .bind(fail_in_doubt)
        .bind(refund)
        .bind(default_max_attempts)
        .fetch_all(pool)
        .await?;
    let mut out = Rescued::default();
    for row in rows {
        let status: &str = row.get(0);
        let in_doubt: i64 = row.get(1);
        out.in_doubt += in_doubt as u64;
        if status == "queued" {
            out.requeued += 1;
        } else {
            out.failed += 1;
        }
    }
    Ok(out)
}

/// Wakes every runner listening.
pub async fn notify(pool: &Pool) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Deletes up to `limit` finished jobs that completed before `older_than` ago (their messages go
/// with them). Small batches keep locks and WAL bursts short.
pub async fn prune(pool: &Pool, older_than: Duration, limit: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        r#"
        DELETE FROM "OutboundJob" WHERE id IN (
            SELECT id FROM "OutboundJob"
            WHERE "completedAt" < now() - make_interval(secs => $1)
              AND status IN ('done', 'failed', 'cancelled')
            LIMIT $2
        )
        "#,
    )
    .bind(older_than.as_secs_f64())
    .bind(limit)
    // Planned for its values: an old cutoff matches few rows, found by the completion index; a
    // plan for any cutoff (the daemon's default, `db::pooler::GENERIC_PLANS`) may scan it all.
    .execute(&pool.custom_plans())
    .await?;
    Ok(done.rows_affected())
}

/// A job to insert (the `enqueue` command; tests).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewJob {
    pub payload: serde_json::Value,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub priority: i16,
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub max_attempts: Option<i32>,
}

/// Inserts jobs in one statement (one NOTIFY for all of them). A job whose idempotency key
/// exists already is skipped. Returns the new ids with their keys. The id and `"updatedAt"` are
/// set here: an app's table may have no default for either (Prisma makes them in the client).
pub async fn enqueue<'e>(
    pool: impl sqlx::PgExecutor<'e>,
    jobs: &[NewJob],
) -> sqlx::Result<Vec<(JobId, Option<String>)>> {
    let payloads: Vec<serde_json::Value> = jobs.iter().map(|j| j.payload.clone()).collect();
    let request_ids: Vec<Option<String>> = jobs.iter().map(|j| j.request_id.clone()).collect();
    let keys: Vec<Option<String>> = jobs.iter().map(|j| j.idempotency_key.clone()).collect();
    let priorities: Vec<i16> = jobs.iter().map(|j| j.priority).collect();
    let run_ats: Vec<Option<DateTime<Utc>>> = jobs.iter().map(|j| j.run_at).collect();
    let max_attempts: Vec<Option<i32>> = jobs.iter().map(|j| j.max_attempts).collect();
    let rows = sqlx::query(
        r#"
        INSERT INTO "OutboundJob" (id, status, payload, "requestId", "idempotencyKey", priority,
                                   "runAt", "maxAttempts", "createdAt", "updatedAt")
        SELECT outbound_job_new_id(), outbound_job_status('queued'), p, r, k, pr,
               COALESCE(ra, now()), ma, now(), now()
        FROM unnest($1::jsonb[], $2::text[], $3::text[], $4::smallint[], $5::timestamptz[], $6::int[])
             AS t(p, r, k, pr, ra, ma)
        ON CONFLICT ("idempotencyKey") DO NOTHING
        RETURNING id, "idempotencyKey"
        "#,
    )
    .bind(payloads)
    .bind(request_ids)
    .bind(keys)
    .bind(priorities)
    .bind(run_ats)
    .bind(max_attempts)
    // Unnamed: `enqueue` also runs inside a caller's transaction, where a transaction-mode
    // pooler must be left no named statement (docs/operations.md, "Poolers").
    .persistent(false)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Jobs per status and the age of the oldest due queued job: the queue gauges.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub by_status: Vec<(String, i64)>,
    pub oldest_queued_age: Option<Duration>,
}

/// The queue gauges. `queued` and `running` are counted from their partial indexes, so they cost
/// what the queue holds, not what the table holds; the finished statuses (`all`) need a pass over
/// every row a week of retention keeps, and are counted only when asked for.
pub async fn queue_stats(pool: &Pool, all: bool) -> sqlx::Result<QueueStats> {
    let sql = if all {
        r#"SELECT status::text, count(*) FROM "OutboundJob" GROUP BY status"#
    } else {
        // A running row always has a lease (the claim sets it, every move out of 'running'
        // clears it): counted from the lease index.
        r#"SELECT 'queued', count(*) FROM "OutboundJob" WHERE status = 'queued'
           UNION ALL
           SELECT 'running', count(*) FROM "OutboundJob"
           WHERE "leaseUntil" IS NOT NULL AND status = 'running'"#
    };
    let by_status = sqlx::query_as::<_, (String, i64)>(sql)
        .fetch_all(pool)
        .await?;
    // An infinite "runAt" (`-infinity`) has no age: NULL, not an error.
    let oldest: Option<f64> = sqlx::query_scalar(
        r#"SELECT CASE WHEN isfinite(m) THEN EXTRACT(EPOCH FROM now() - m)::float8 END
           FROM (SELECT min("runAt") AS m FROM "OutboundJob"
                 WHERE status = 'queued' AND "runAt" <= now()) q"#,
    )
    .fetch_one(pool)
    .await?;
    Ok(QueueStats {
        by_status,
        oldest_queued_age: oldest
            .filter(|s| s.is_finite())
            .map(|s| Duration::from_secs_f64(s.clamp(0.0, 1e12))),
    })
}
