//! The moves of a job other modules ask for: the statements on `"OutboundJob"` that follow from
//! something the queue does not see itself (a status webhook, a number's hold ending, an
//! orchestrator answer). Beside [`super::store`] (the runner's own moves), so that every
//! statement writing `"OutboundJob"` is under `src/queue/` (`.ci/import-graph` checks it).
//!
//! The callers decide when; these statements decide how, fenced like the rest: a `running` job
//! is never moved from here.

use sqlx::PgConnection;

use super::JobId;
use crate::db::Pool;

/// The fenced half of the ledger's `prepare` (`delivery::ledger::prepare`), one statement with
/// it: `owner`, the jobs of the caller's `req` CTE (`job`, of the id's type, `locked_by`,
/// `attempts`, `composed`, any other column) whose fence holds, locked `FOR KEY SHARE` like every
/// fenced write.
///
/// Each request finds its job by the primary key (`LATERAL`): the fence conditions make every
/// plan expect one running row, so a join of the jobs with `req` became a nested loop that read
/// all of `req` once per job (quadratic in the batch).
pub const OWNED_CTE: &str = r#"owner AS (
            SELECT r.*, j.stopping
            FROM req r CROSS JOIN LATERAL (
                SELECT x."cancelRequestedAt" IS NOT NULL AS stopping
                FROM "OutboundJob" x
                WHERE x.id = r.job AND x.status = 'running' AND x."lockedBy" = r.locked_by
                  AND x.attempts = r.attempts
                FOR KEY SHARE
            ) j
        )"#;

/// After [`OWNED_CTE`], when some job of the prepare has an orchestrator answer: `save`, the
/// answer saved in `composed` when not saved yet (an answer is kept, never replaced:
/// docs/delivery.md). Left out of a prepare without answers: even when it writes no row, a
/// write in a statement opens its table and every index of it.
pub const SAVE_COMPOSED_CTE: &str = r#"save AS (
            UPDATE "OutboundJob" j SET composed = o.composed, "updatedAt" = now()
            FROM owner o
            WHERE j.id = o.job AND o.composed IS NOT NULL AND j.composed IS NULL
        )"#;

/// Makes due now the queued jobs of `phone_number_id` (`default_id`: the number a job without
/// `from` sends from) deferred with one of `codes` (a hold's codes: `number_on_hold`, Meta's
/// that holds a number). Only moves `"runAt"` of queued rows earlier, like
/// [`super::store::wake_circuit_deferred`]. Returns how many.
pub async fn wake_held(
    pool: &Pool,
    phone_number_id: &str,
    default_id: &str,
    codes: &[&str],
) -> sqlx::Result<u64> {
    let woken = sqlx::query(
        r#"
        UPDATE "OutboundJob" SET "runAt" = now(), "updatedAt" = now()
        WHERE status = 'queued' AND "lastErrorCode" = ANY($3) AND "runAt" > now()
          AND coalesce(payload->>'from', $2) = $1
        "#,
    )
    .bind(phone_number_id)
    .bind(default_id)
    .bind(codes)
    .execute(pool)
    .await?
    .rows_affected();
    if woken > 0 {
        super::store::notify(pool).await?;
    }
    Ok(woken)
}

/// Fails each job of `ids` (parallel to `codes` and `reasons`) whose message Meta reported
/// failed after accepting it (a status webhook), in the caller's transaction: a job `done`,
/// `failed` or `queued`, never a `running` one (its status waits until it is finished).
/// Returns how many. `named`: see [`settle_unknown`].
pub async fn fail_after_acceptance(
    conn: &mut PgConnection,
    ids: &[JobId],
    codes: &[String],
    reasons: &[String],
    named: bool,
) -> sqlx::Result<u64> {
    let done = sqlx::query(
        r#"
        UPDATE "OutboundJob" j
        SET status = 'failed', "lastErrorCode" = f.code, "lastError" = f.reason,
            "completedAt" = COALESCE(j."completedAt", now()), "leaseUntil" = NULL,
            "updatedAt" = now()
        FROM unnest(outbound_job_ids_cast($1), $2::text[], $3::text[]) AS f(id, code, reason)
        WHERE j.id = f.id AND j.id = ANY(outbound_job_ids_cast($1)) AND j.status IN ('done', 'failed', 'queued')
        "#,
    )
    .bind(ids)
    .bind(codes)
    .bind(reasons)
    .persistent(named)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Marks `done` each job of `ids` failed `delivery_unknown` whose every message Meta has now
/// accepted (a status webhook settled the last one in doubt), in the caller's transaction.
/// Returns how many. `named`: the statement may be prepared by name and cached (not behind a
/// transaction-mode pooler: docs/operations.md, "Poolers").
pub async fn settle_unknown(
    conn: &mut PgConnection,
    ids: &[JobId],
    named: bool,
) -> sqlx::Result<u64> {
    let done = sqlx::query(
        r#"
        UPDATE "OutboundJob" j
        SET status = 'done', "lastErrorCode" = NULL, "lastError" = NULL,
            "completedAt" = COALESCE(j."completedAt", now()), "updatedAt" = now()
        WHERE j.id = ANY(outbound_job_ids_cast($1)) AND j.status = 'failed'
          AND j."lastErrorCode" = 'delivery_unknown'
          AND NOT EXISTS (SELECT 1 FROM "OutboundMessage" x
                          WHERE x."jobId" = j.id
                            AND x.status NOT IN ('sent', 'delivered', 'read'))
        "#,
    )
    .bind(ids)
    .persistent(named)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
