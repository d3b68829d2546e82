//! Sending numbers on hold, kept in `"OutboundNumberHold"` so every runner sharing the database
//! sees a pause within a second (docs/numbers.md): `outbound-runner numbers pause|resume`, and
//! the runner itself after a 131048 answer (a spam-quality signal: held until resumed by hand).
//! Also the tier counts (unique recipients of template messages over a rolling 24 h, against
//! `tier_limit`) and each runner's circuits, kept in `"OutboundNumberCircuit"` for the
//! `numbers` command.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
    let hold = super::codes::SPAM_HOLD.to_string();
    let woken = crate::queue::moves::wake_held(
        pool,
        phone_number_id,
        default_id,
        &["number_on_hold", hold.as_str()],
    )
    .await?;
    Ok((deleted > 0, woken))
}

/// Messages Meta accepted today (since midnight UTC) per number (a message that was delivered or
/// read since, or reported failed after it was accepted, was sent all the same).
pub async fn sent_today(pool: &Pool, default_id: &str) -> sqlx::Result<HashMap<String, i64>> {
    let rows = sqlx::query(
        r#"
        SELECT coalesce(m."phoneNumberId", $1) AS number, count(*) AS sent
        FROM "OutboundMessage" m
        WHERE m."sentAt" >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
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

/// How long a runner's copy of the tier counts may be.
pub const TIERS_MAX_AGE: Duration = Duration::from_secs(1);
/// The longest a job held by a tier limit waits before it looks again (a reload may have raised
/// the limit; the count may have dropped sooner than the first recipient ages out).
pub const TIER_RECHECK: Duration = Duration::from_secs(300);

/// The unique recipients of business-initiated (template) messages over the rolling 24 h of one
/// number or one business (what Meta's messaging limit counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierCount {
    pub recipients: i64,
    /// When the first of them leaves the window (the count drops).
    pub drops_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Tier counts per number id and per tier group ([`crate::config::WhatsappSettings::tier_group`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tiers {
    pub numbers: HashMap<String, TierCount>,
    pub groups: HashMap<String, TierCount>,
}

impl Tiers {
    pub fn number(&self, id: &str) -> i64 {
        self.numbers.get(id).map_or(0, |c| c.recipients)
    }

    pub fn group(&self, group: &str) -> TierCount {
        self.groups.get(group).copied().unwrap_or(TierCount {
            recipients: 0,
            drops_at: None,
        })
    }
}

/// The tier counts of every number and group, in one statement over the partial index of
/// template messages (docs/numbers.md, "Tier limit"). A message counts from the moment Meta
/// accepted it (`"sentAt"`), whatever became of it later.
pub async fn tiers(pool: &Pool, wa: &crate::config::WhatsappSettings) -> sqlx::Result<Tiers> {
    let default_id = wa.default_number_id();
    let (ids, groups): (Vec<String>, Vec<String>) = wa
        .number_ids()
        .into_iter()
        .filter_map(|id| wa.number(Some(id)))
        .map(|n| (n.phone_number_id.clone(), n.tier_group()))
        .unzip();
    let rows = sqlx::query(
        r#"
        WITH map AS (SELECT * FROM unnest($2::text[], $3::text[]) AS m(number, grp)),
        r AS (
            SELECT coalesce(m."phoneNumberId", $1) AS number, m."to", max(m."sentAt") AS last
            FROM "OutboundMessage" m
            WHERE m."sentAt" > now() - interval '24 hours' AND m."sentAt" IS NOT NULL
              AND m.body->>'type' = 'template'
            GROUP BY 1, 2
        ),
        g AS (
            SELECT coalesce(map.grp, 'number:' || r.number) AS grp, r."to", max(r.last) AS last
            FROM r LEFT JOIN map ON map.number = r.number
            GROUP BY 1, 2
        )
        SELECT false, number, count(*), min(last) + interval '24 hours' FROM r GROUP BY number
        UNION ALL
        SELECT true, grp, count(*), min(last) + interval '24 hours' FROM g GROUP BY grp
        "#,
    )
    .bind(default_id)
    .bind(&ids)
    .bind(&groups)
    .fetch_all(pool)
    .await?;
    let mut out = Tiers::default();
    for r in &rows {
        let group: bool = r.try_get(0)?;
        let key: String = r.try_get(1)?;
        let count = TierCount {
            recipients: r.try_get(2)?,
            drops_at: r.try_get(3)?,
        };
        if group {
            out.groups.insert(key, count);
        } else {
            out.numbers.insert(key, count);
        }
    }
    Ok(out)
}

/// Whether `to` got a template message from one of `numbers` in the last 24 h (then it is
/// counted already, and another one does not add to the count).
pub async fn counted(
    pool: &Pool,
    default_id: &str,
    numbers: &[String],
    to: &str,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        r#"
        SELECT EXISTS (
            SELECT 1 FROM "OutboundMessage" m
            WHERE m."to" = $1 AND m."sentAt" > now() - interval '24 hours'
              AND m."sentAt" IS NOT NULL AND m.body->>'type' = 'template'
              AND coalesce(m."phoneNumberId", $2) = ANY($3)
        )
        "#,
    )
    .bind(to)
    .bind(default_id)
    .bind(numbers)
    .fetch_one(pool)
    .await
}

/// The runner's copy of the tier counts, read at most every [`TIERS_MAX_AGE`], plus the
/// recipients this runner let through that the copy may not hold: sends still under way, and
/// sends that ended after the read began. So one runner never passes the limit; several can
/// pass it by what the others sent within a second.
#[derive(Default)]
pub struct TierCache {
    /// Shared with the tickets, which outlive a borrow of the cache (the last message's is
    /// held until its job's completion has written the send, [`Delivered::keep`]).
    ///
    /// [`Delivered::keep`]: super::Delivered::keep
    state: Arc<Mutex<TierState>>,
    reading: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct TierState {
    read_at: Option<Instant>,
    tiers: Arc<Tiers>,
    /// Recipients let through per group that the copy may not count: `None` while the send is
    /// under way, else when it ended (dropped once a read that began later lands).
    admitted: HashMap<String, HashMap<String, Option<Instant>>>,
}

/// A template send let through by [`TierCache::check`]: counted by this runner until a read of
/// the counts that began after the send ended. Drop it when the send has ended (its outcome
/// recorded).
pub struct TierTicket {
    state: Arc<Mutex<TierState>>,
    group: String,
    to: String,
}

impl Drop for TierTicket {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = s
            .admitted
            .get_mut(&self.group)
            .and_then(|g| g.get_mut(&self.to))
        {
            *e = Some(Instant::now());
        }
    }
}

/// What a tier check decided.
pub enum TierVerdict {
    /// Send; drop the ticket when the send has ended. `None`: no limit applies.
    Send(Option<TierTicket>),
    /// The limit is reached: hold the send (the count and when it drops).
    Held(TierCount),
}

impl TierCache {
    /// The counts, read when the copy is older than `max_age` (a read under way elsewhere is not
    /// waited for: the caller goes on with the copy there is, unless there is none yet). A failed
    /// read keeps the copy; with no copy at all, it is the caller's error.
    pub async fn get(
        &self,
        pool: &Pool,
        wa: &crate::config::WhatsappSettings,
        max_age: Duration,
    ) -> sqlx::Result<Arc<Tiers>> {
        let read_at = self.lock().read_at;
        if read_at.is_some_and(|t| t.elapsed() < max_age) {
            return Ok(self.lock().tiers.clone());
        }
        let reading = match read_at {
            Some(_) => self.reading.try_lock().ok(),
            // No copy yet: wait for the read under way, or make it.
            None => Some(self.reading.lock().await),
        };
        if reading.is_some() && (read_at.is_some() || self.lock().read_at.is_none()) {
            let started = Instant::now();
            match tiers(pool, wa).await {
                Ok(t) => {
                    let mut s = self.lock();
                    s.tiers = Arc::new(t);
                    s.read_at = Some(started);
                    // What ended before the read began is in it; the rest is not.
                    for g in s.admitted.values_mut() {
                        g.retain(|_, ended| ended.is_none_or(|t| t >= started));
                    }
                }
                Err(e) if read_at.is_none() => return Err(e),
                Err(e) => tracing::warn!(
                    error = %crate::db::redact_sqlx(&e),
                    "reading the tier counts failed; keeping the last copy"
                ),
            }
        }
        Ok(self.lock().tiers.clone())
    }

    /// May a template message go from the number `wa` (its own settings) to `to`? Under its
    /// `tier_limit` (or with none): yes. At it: only to a recipient counted already.
    pub async fn check(
        &self,
        pool: &Pool,
        settings: &crate::config::Settings,
        wa: &crate::config::WhatsappSettings,
        to: &str,
    ) -> sqlx::Result<TierVerdict> {
        let limit = i64::from(wa.tier_limit);
        if limit == 0 {
            return Ok(TierVerdict::Send(None));
        }
        let group = wa.tier_group();
        let tiers = self.get(pool, &settings.whatsapp, TIERS_MAX_AGE).await?;
        let count = tiers.group(&group);
        {
            let mut s = self.lock();
            let admitted = s.admitted.entry(group.clone()).or_default();
            // A recipient the copy may not hold may or may not be new: counted as new.
            let ours = admitted.len() as i64;
            if admitted.contains_key(to) || count.recipients + ours < limit {
                admitted.insert(to.to_string(), None);
                return Ok(TierVerdict::Send(Some(self.ticket(&group, to))));
            }
        }
        let all = &settings.whatsapp;
        let numbers: Vec<String> = all
            .number_ids()
            .into_iter()
            .filter_map(|id| all.number(Some(id)))
            .filter(|n| n.tier_group() == group)
            .map(|n| n.phone_number_id)
            .collect();
        if counted(pool, all.default_number_id(), &numbers, to).await? {
            return Ok(TierVerdict::Send(None));
        }
        let mut held = count;
        held.recipients = held.recipients.max(limit);
        Ok(TierVerdict::Held(held))
    }

    fn ticket(&self, group: &str, to: &str) -> TierTicket {
        TierTicket {
            state: self.state.clone(),
            group: group.to_string(),
            to: to.to_string(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TierState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One runner's view of a number's circuit or rate-limit pause, as kept in
/// `"OutboundNumberCircuit"`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerCircuit {
    pub runner: String,
    pub phone_number_id: String,
    /// `circuit_open` (halt class) or `rate_paused` (130429 and the other rate answers).
    pub state: String,
    pub until: chrono::DateTime<chrono::Utc>,
    pub reason: String,
}

/// How old a runner's row may be before it counts as gone.
pub const CIRCUIT_ROW_STALE: Duration = Duration::from_secs(30);

/// Replaces this runner's rows with `open` (number, state, time left, reason), and deletes the
/// rows no runner has refreshed for a minute.
pub async fn publish_circuits(
    pool: &Pool,
    runner: &str,
    open: &[(String, &'static str, Duration, String)],
) -> sqlx::Result<()> {
    let ids: Vec<&str> = open.iter().map(|o| o.0.as_str()).collect();
    let states: Vec<&str> = open.iter().map(|o| o.1).collect();
    let secs: Vec<f64> = open.iter().map(|o| o.2.as_secs_f64()).collect();
    let reasons: Vec<String> = open
        .iter()
        .map(|o| o.3.chars().take(500).collect())
        .collect();
    sqlx::query(
        r#"
        WITH gone AS (
            DELETE FROM "OutboundNumberCircuit"
            WHERE (runner = $1 AND NOT ("phoneNumberId" = ANY($2)))
               OR "updatedAt" < now() - interval '1 minute'
        )
        INSERT INTO "OutboundNumberCircuit" (runner, "phoneNumberId", state, "until", reason)
        SELECT $1, c.id, c.state, now() + make_interval(secs => c.secs), c.reason
        FROM unnest($2::text[], $3::text[], $4::float8[], $5::text[]) AS c(id, state, secs, reason)
        ON CONFLICT (runner, "phoneNumberId") DO UPDATE
        SET state = EXCLUDED.state, "until" = EXCLUDED."until", reason = EXCLUDED.reason,
            "updatedAt" = now()
        "#,
    )
    .bind(runner)
    .bind(&ids)
    .bind(&states)
    .bind(&secs)
    .bind(&reasons)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Every runner's open circuits and pauses (rows refreshed within [`CIRCUIT_ROW_STALE`], not
/// ended).
pub async fn circuits(pool: &Pool) -> sqlx::Result<Vec<RunnerCircuit>> {
    let rows = sqlx::query(
        r#"
        SELECT runner, "phoneNumberId", state, "until", reason
        FROM "OutboundNumberCircuit"
        WHERE "until" > now() AND "updatedAt" > now() - make_interval(secs => $1)
        ORDER BY "phoneNumberId", runner
        "#,
    )
    .bind(CIRCUIT_ROW_STALE.as_secs_f64())
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(RunnerCircuit {
                runner: r.try_get(0)?,
                phone_number_id: r.try_get(1)?,
                state: r.try_get(2)?,
                until: r.try_get(3)?,
                reason: r.try_get(4)?,
            })
        })
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

/// The operator's view and actions on the sending numbers, on one pool, as a handle: what the
/// web console is given (by the runner, [`crate::runner::Runner::number_admin`]) instead of the
/// pool. Each method is the function of the same name above; the CLI, which owns its pool,
/// calls those directly. Cheap to clone.
#[derive(Clone)]
pub struct NumberAdmin {
    pool: Pool,
}

impl NumberAdmin {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// [`holds`].
    pub async fn holds(&self) -> sqlx::Result<Vec<StoredHold>> {
        holds(&self.pool).await
    }

    /// [`pause`].
    pub async fn pause(
        &self,
        phone_number_id: &str,
        for_: Option<Duration>,
        reason: &str,
        by: &str,
    ) -> sqlx::Result<()> {
        pause(&self.pool, phone_number_id, for_, reason, by).await
    }

    /// [`resume`].
    pub async fn resume(
        &self,
        phone_number_id: &str,
        default_id: &str,
    ) -> sqlx::Result<(bool, u64)> {
        resume(&self.pool, phone_number_id, default_id).await
    }

    /// [`sent_today`].
    pub async fn sent_today(&self, default_id: &str) -> sqlx::Result<HashMap<String, i64>> {
        sent_today(&self.pool, default_id).await
    }

    /// [`tiers`].
    pub async fn tiers(&self, wa: &crate::config::WhatsappSettings) -> sqlx::Result<Tiers> {
        tiers(&self.pool, wa).await
    }

    /// [`circuits`].
    pub async fn circuits(&self) -> sqlx::Result<Vec<RunnerCircuit>> {
        circuits(&self.pool).await
    }
}
