//! Sending numbers on hold, kept in `"OutboundNumberHold"` so every runner sharing the database
//! sees a pause within a second (docs/numbers.md): `outbound-runner numbers pause|resume`, and
//! the runner itself after a 131048 answer (a spam-quality signal: held until resumed by hand).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::Row;
use tokio::time::Instant;

use super::pacing::{Hold, Pacer};
use crate::db::Pool;

/// How old the holds a runner acts on may be.
pub const HOLDS_MAX_AGE: Duration = Duration::from_secs(1);

/// A hold as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredHold {
    pub phone_number_id: String,
    /// `None`: until resumed.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    pub reason: String,
    pub by: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// The holds in force (an expired one is not).
pub async fn holds(pool: &Pool) -> sqlx::Result<Vec<StoredHold>> {
    let rows = sqlx::query(
        r#"
        SELECT "phoneNumberId", "pausedUntil", reason, "pausedBy", "pausedAt"
        FROM "OutboundNumberHold"
        WHERE "pausedUntil" IS NULL OR "pausedUntil" > now()
        ORDER BY "phoneNumberId"
        "#,
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(StoredHold {
                phone_number_id: r.try_get(0)?,
                until: r.try_get(1)?,
                reason: r.try_get(2)?,
                by: r.try_get(3)?,
                at: r.try_get(4)?,
            })
        })
        .collect()
}

/// Puts a number on hold (replacing an earlier hold), `for_` long or until resumed.
pub async fn pause(
    pool: &Pool,
    phone_number_id: &str,
    for_: Option<Duration>,
    reason: &str,
    by: &str,
) -> sqlx::Result<()> {
    let secs = for_.map(|d| d.as_secs_f64());
    sqlx::query(
        r#"
        INSERT INTO "OutboundNumberHold" ("phoneNumberId", "pausedUntil", reason, "pausedBy")
        VALUES ($1, now() + make_interval(secs => $2), $3, $4)
        ON CONFLICT ("phoneNumberId") DO UPDATE
        SET "pausedUntil" = EXCLUDED."pausedUntil", reason = EXCLUDED.reason,
            "pausedBy" = EXCLUDED."pausedBy", "pausedAt" = now()
        "#,
    )
    .bind(phone_number_id)
    .bind(secs)
    .bind(reason)
    .bind(by)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Ends a number's hold and makes the jobs it deferred due now. `default_id` is the number a
/// job without `from` sends from. Returns (whether it was on hold, jobs made due).
pub async fn resume(
    pool: &Pool,
    phone_number_id: &str,
    default_id: &str,
) -> sqlx::Result<(bool, u64)> {
    let deleted = sqlx::query(r#"DELETE FROM "OutboundNumberHold" WHERE "phoneNumberId" = $1"#)
        .bind(phone_number_id)
        .execute(pool)
        .await?
        .rows_affected();
    // Only moves "runAt" of queued rows earlier (like the circuit's wake-up in the ledger).
    let woken = sqlx::query(
        r#"
        UPDATE "OutboundJob" SET "runAt" = now(), "updatedAt" = now()
        WHERE status = 'queued' AND "lastErrorCode" IN ('number_on_hold', '131048') AND "runAt" > now()
          AND coalesce(payload->>'from', $2) = $1
        "#,
    )
    .bind(phone_number_id)
    .bind(default_id)
    .execute(pool)
    .await?
    .rows_affected();
    if woken > 0 {
        crate::queue::store::notify(pool).await?;
    }
    Ok((deleted > 0, woken))
}

/// Messages sent today (since midnight UTC) per number.
pub async fn sent_today(pool: &Pool, default_id: &str) -> sqlx::Result<HashMap<String, i64>> {
    let rows = sqlx::query(
        r#"
        SELECT coalesce(j.payload->>'from', $1) AS number, count(*) AS sent
        FROM "OutboundMessage" m JOIN "OutboundJob" j ON j.id = m."jobId"
        WHERE m.status = 'sent' AND m."sentAt" >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
        GROUP BY 1
        "#,
    )
    .bind(default_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
        .collect()
}

/// Unique recipients of template messages (business-initiated: what Meta's messaging-limit
/// tier counts) sent in the last 24 hours, per number.
pub async fn template_recipients_24h(
    pool: &Pool,
    default_id: &str,
) -> sqlx::Result<HashMap<String, i64>> {
    let rows = sqlx::query(
        r#"
        SELECT coalesce(j.payload->>'from', $1) AS number, count(DISTINCT m."to") AS recipients
        FROM "OutboundMessage" m JOIN "OutboundJob" j ON j.id = m."jobId"
        WHERE m.status = 'sent' AND m."sentAt" > now() - interval '24 hours'
          AND m.body->>'type' = 'template'
        GROUP BY 1
        "#,
    )
    .bind(default_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
        .collect()
}

/// The runner's copy of the holds, read at most every [`HOLDS_MAX_AGE`] (by whichever job
/// notices first; the others go on with the copy they have).
#[derive(Default)]
pub struct HoldCache {
    read_at: Mutex<Option<Instant>>,
    reading: tokio::sync::Mutex<()>,
}

impl HoldCache {
    /// Reads the holds into the pacer when the copy is older than `max_age` (a read under way
    /// elsewhere is not waited for).
    pub async fn refresh(&self, pool: &Pool, pacer: &Pacer, max_age: Duration) {
        if self.age().is_some_and(|age| age < max_age) {
            return;
        }
        let Ok(_reading) = self.reading.try_lock() else {
            return;
        };
        self.read(pool, pacer).await;
    }

    /// Reads the holds into the pacer now, or waits for a read that started after this call.
    pub async fn confirm(&self, pool: &Pool, pacer: &Pacer) {
        let asked = Instant::now();
        let _reading = self.reading.lock().await;
        let read_at = *self.read_at.lock().unwrap_or_else(|p| p.into_inner());
        if read_at.is_some_and(|at| at > asked) {
            return;
        }
        self.read(pool, pacer).await;
    }

    fn age(&self) -> Option<Duration> {
        self.read_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }

    async fn read(&self, pool: &Pool, pacer: &Pacer) {
        let started = Instant::now();
        match holds(pool).await {
            Ok(rows) => {
                pacer.set_holds(to_pacer(&rows));
                // The copy is as old as the statement's start.
                *self.read_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
            }
            Err(e) => tracing::warn!(
                error = %crate::db::redact_sqlx(&e),
                "reading the numbers on hold failed; keeping the last copy"
            ),
        }
    }
}

/// Stored holds as the pacer keeps them (the end as an instant of this process's clock).
pub fn to_pacer(rows: &[StoredHold]) -> HashMap<String, Hold> {
    let now = Instant::now();
    let wall = chrono::Utc::now();
    rows.iter()
        .map(|h| {
            let until = h
                .until
                .map(|u| now + (u - wall).to_std().unwrap_or(Duration::ZERO));
            (
                h.phone_number_id.clone(),
                Hold {
                    until,
                    reason: h.reason.clone(),
                    by: h.by.clone(),
                },
            )
        })
        .collect()
}
