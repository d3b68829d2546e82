//! A message's fate after Meta accepted it: the statuses of Meta's webhooks (`sent`,
//! `delivered`, `read`, `failed`), applied to `"OutboundMessage"` and, when they decide it, to
//! the job. docs/delivery.md has the operator's view; the endpoint is `src/http/webhooks.rs`.
//!
//! The rules:
//!
//! - **Matching**: by the callback id first (`biz_opaque_callback_data`, which every send
//!   carries, see [`callback_id`](crate::whatsapp::statuses::callback_id): it names the message's row, the same for every attempt), then
//!   by the wamid. When the two name different rows, or the row was accepted under another
//!   wamid, nothing is written (`conflict`).
//! - **Forward only**: `sent` → `delivered` → `read`; a duplicate or a late status (a `sent`
//!   after `delivered`) never moves a message back. `failed` is final: it records Meta's code
//!   (`"lastErrorCode"`) and title (`"lastError"`) on the message, and fails its job (`done`,
//!   `failed` or `queued`; for a `running` job the status waits until the job is finished) with
//!   that code. A `failed` after `delivered` is ignored.
//! - **Settling**: an `unknown` message (a send in doubt) with `sent`, `delivered` or `read`
//!   takes that status and the wamid, and its job, failed `delivery_unknown`, becomes `done`
//!   once every message of it was accepted.
//! - **Early statuses**: a status whose message is still `pending` or `sending` (it raced the
//!   send's answer), one that would settle or fail a job still `running` (its runner is about to
//!   complete or fail it), or one whose callback names no row, is kept in
//!   `"OutboundEarlyStatus"` and applied as soon as the message can take it; after
//!   `whatsapp.status_retention` (default [`EARLY_RETENTION`]) it is dropped and counted
//!   (`expired`). A status with neither our callback id nor a known wamid is not ours
//!   (the app's own messages): counted `unmatched`, not kept.
//! - **Nothing is ever sent** because of a status.
//!
//! The writes are a group commit like the completer's: one task takes every batch of statuses
//! waiting ([`crate::db::batch::Intake`]) and applies them in one transaction, committed
//! synchronously; each webhook request waits for its batch, so a `200` to Meta means the
//! statuses are on disk.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Row, Transaction};

use crate::db::Pool;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ledger;
use crate::metrics::Metrics;
use crate::queue::JobId;
use crate::whatsapp::statuses::{Kind, StatusUpdate};

/// How long a status nobody could apply is kept: the default of `whatsapp.status_retention`.
pub const EARLY_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// What became of one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The message moved forward (or took a timestamp it lacked).
    Applied,
    /// An `unknown` message was settled: Meta had accepted it.
    Settled,
    /// Nothing to change: a duplicate, or a status older than what the message has.
    Duplicate,
    /// Kept until the message can take it.
    Early,
    /// The callback id and the wamid disagree: nothing written.
    Conflict,
    /// Not a message of ours.
    Unmatched,
    /// The database refused it (a data error, see [`unstorable`](crate::whatsapp::statuses::unstorable)): never stored, and never
    /// retried; the rest of its batch was written without it.
    Rejected,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Applied,
        Outcome::Settled,
        Outcome::Duplicate,
        Outcome::Early,
        Outcome::Conflict,
        Outcome::Unmatched,
        Outcome::Rejected,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Settled => "settled",
            Outcome::Duplicate => "duplicate",
            Outcome::Early => "early",
            Outcome::Conflict => "conflict",
            Outcome::Unmatched => "unmatched",
            Outcome::Rejected => "rejected",
        }
    }
}

/// One message as the batch found it, and as it will be written.
#[derive(Debug, Clone)]
struct Msg {
    id: i64,
    job: JobId,
    status: String,
    wamid: Option<String>,
    sent_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
    read_at: Option<DateTime<Utc>>,
    error_code: Option<String>,
    error: Option<String>,
    /// Its job is `running`: a runner may still write about the message and the job.
    job_running: bool,
    changed: bool,
}

impl Msg {
    /// The row as the ledger writes it.
    fn tracked(&self) -> ledger::Tracked<'_> {
        ledger::Tracked {
            id: self.id,
            status: &self.status,
            wamid: self.wamid.as_deref(),
            sent_at: self.sent_at,
            delivered_at: self.delivered_at,
            read_at: self.read_at,
            error_code: self.error_code.as_deref(),
            error: self.error.as_deref(),
        }
    }
}

fn rank(status: &str) -> i32 {
    match status {
        "unknown" => 0,
        "sent" => 1,
        "delivered" => 2,
        "read" => 3,
        _ => -1,
    }
}

/// What one transaction did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Each status's kind and outcome, in the order given.
    pub kinds: Vec<Kind>,
    pub outcomes: Vec<Outcome>,
    /// Send → delivered latencies of messages delivered by this batch.
    pub delivered_after: Vec<Duration>,
    /// Jobs failed by a `failed` status, and jobs settled `done`.
    pub jobs_failed: u64,
    pub jobs_settled: u64,
}

/// Applies `updates` in one transaction (see the module docs). `early` are the ids of
/// `"OutboundEarlyStatus"` rows the updates came from (the sweep), parallel to `updates`: the
/// ones applied are deleted, the others stay. `named`: the statements may be prepared by name
/// and cached (not behind a transaction-mode pooler, where each must leave nothing named behind:
/// docs/operations.md, "Poolers").
///
/// Each table is written by its owner: the messages by the ledger, the jobs by the queue.
async fn apply_in(
    tx: &mut Transaction<'_, Postgres>,
    updates: &[StatusUpdate],
    early: Option<&[i64]>,
    named: bool,
) -> sqlx::Result<Applied> {
    let mut found = lock_messages(tx, updates, named).await?;
    let decided = decide(&mut found, updates);
    let mut out = decided.applied;

    let changed: Vec<ledger::Tracked<'_>> = found
        .rows
        .iter()
        .filter(|r| r.changed)
        .map(Msg::tracked)
        .collect();
    if !changed.is_empty() {
        ledger::write_tracked(tx, &changed, named).await?;
    }
    if !decided.fail_jobs.is_empty() {
        let (ids, (codes, reasons)): (Vec<JobId>, (Vec<String>, Vec<String>)) =
            decided.fail_jobs.into_iter().unzip();
        out.jobs_failed =
            crate::queue::moves::fail_after_acceptance(tx, &ids, &codes, &reasons, named).await?;
    }
    if !decided.settle_jobs.is_empty() {
        out.jobs_settled =
            crate::queue::moves::settle_unknown(tx, &decided.settle_jobs, named).await?;
    }

    match early {
        None => {
            if !decided.park.is_empty() {
                insert_early(tx, &decided.park, named).await?;
            }
        }
        Some(ids) => {
            // Applied (or beyond help: a conflict): no longer early.
            let gone: Vec<i64> = ids
                .iter()
                .zip(&out.outcomes)
                .filter(|(_, o)| **o != Outcome::Early)
                .map(|(id, _)| *id)
                .collect();
            if !gone.is_empty() {
                sqlx::query(r#"DELETE FROM "OutboundEarlyStatus" WHERE id = ANY($1)"#)
                    .bind(&gone)
                    .persistent(named)
                    .execute(&mut **tx)
                    .await?;
            }
        }
    }
    Ok(out)
}

/// The message rows the statuses may name, locked, and how to find them.
struct Found {
    rows: Vec<Msg>,
    by_key: HashMap<(JobId, i32), usize>,
    by_wamid: HashMap<String, usize>,
}

/// Every row a status of `updates` may name (by callback id or wamid), locked in id order (two
/// writers never deadlock on them).
async fn lock_messages(
    tx: &mut Transaction<'_, Postgres>,
    updates: &[StatusUpdate],
    named: bool,
) -> sqlx::Result<Found> {
    let wamids: Vec<&str> = updates.iter().map(|u| u.wamid.as_str()).collect();
    let (cb_jobs, cb_seqs): (Vec<JobId>, Vec<i32>) =
        updates.iter().filter_map(|u| u.callback.clone()).unzip();
    let rows = sqlx::query(
        r#"
        SELECT m.id, m."jobId", m.seq, m.status, m.wamid, m."sentAt", m."deliveredAt", m."readAt",
               m."lastErrorCode", m."lastError", j.status = 'running'
        FROM "OutboundMessage" m JOIN "OutboundJob" j ON j.id = m."jobId"
        WHERE m.id IN (
            SELECT id FROM "OutboundMessage" WHERE wamid = ANY($1)
            UNION ALL
            SELECT x.id FROM "OutboundMessage" x
            JOIN unnest($2::text[], $3::int[]) AS r(job, seq)
                 ON x."jobId" = outbound_job_id(r.job) AND x.seq = r.seq
        )
        ORDER BY m.id
        FOR UPDATE OF m
        "#,
    )
    .bind(&wamids)
    .bind(&cb_jobs)
    .bind(&cb_seqs)
    .persistent(named)
    .fetch_all(&mut **tx)
    .await?;

    let mut found = Found {
        rows: Vec::with_capacity(rows.len()),
        by_key: HashMap::new(),
        by_wamid: HashMap::new(),
    };
    for r in rows {
        let i = found.rows.len();
        let row = Msg {
            id: r.get(0),
            job: r.get(1),
            status: r.get(3),
            wamid: r.get(4),
            sent_at: r.get(5),
            delivered_at: r.get(6),
            read_at: r.get(7),
            error_code: r.get(8),
            error: r.get(9),
            job_running: r.get(10),
            changed: false,
        };
        found
            .by_key
            .insert((row.job.clone(), r.get::<i32, _>(2)), i);
        if let Some(w) = &row.wamid {
            found.by_wamid.insert(w.clone(), i);
        }
        found.rows.push(row);
    }
    Ok(found)
}

/// What the statuses of a batch decide, before anything is written.
struct Decided<'u> {
    applied: Applied,
    /// Statuses to keep until their message can take them.
    park: Vec<&'u StatusUpdate>,
    /// Jobs to fail: job → (code, readable reason).
    fail_jobs: HashMap<JobId, (String, String)>,
    /// Jobs that may be settled (`delivery_unknown` → `done`).
    settle_jobs: Vec<JobId>,
}

/// Applies each status, in order, to the rows found (in memory; [`Msg::changed`] marks what
/// is to be written), and collects what follows for the jobs.
fn decide<'u>(found: &mut Found, updates: &'u [StatusUpdate]) -> Decided<'u> {
    let mut out = Decided {
        applied: Applied {
            kinds: updates.iter().map(|u| u.kind).collect(),
            ..Applied::default()
        },
        park: Vec::new(),
        fail_jobs: HashMap::new(),
        settle_jobs: Vec::new(),
    };
    for u in updates {
        let outcome = match target(found, u) {
            Ok(i) => {
                let outcome = apply_one(&mut found.rows[i], u, &mut out);
                if found.rows[i].wamid.as_deref() == Some(u.wamid.as_str()) {
                    // A wamid learnt from this status matches the later ones of the batch too.
                    found.by_wamid.entry(u.wamid.clone()).or_insert(i);
                }
                outcome
            }
            Err(o) => o,
        };
        if outcome == Outcome::Early {
            out.park.push(u);
        }
        out.applied.outcomes.push(outcome);
    }
    out
}

/// The row `u` names: by its callback id first, then by its wamid; an outcome when it names
/// none, or two that disagree.
fn target(found: &Found, u: &StatusUpdate) -> Result<usize, Outcome> {
    let by_cb = u
        .callback
        .as_ref()
        .and_then(|k| found.by_key.get(k).copied());
    let by_w = found.by_wamid.get(&u.wamid).copied();
    let i = match (by_cb, by_w, u.callback.as_ref()) {
        (Some(a), Some(b), _) if a != b => return Err(Outcome::Conflict),
        (Some(a), _, _) => a,
        // Our callback names a row, but the wamid belongs to another one.
        (None, Some(_), Some(_)) => return Err(Outcome::Conflict),
        (None, Some(b), None) => b,
        (None, None, Some(_)) => return Err(Outcome::Early),
        (None, None, None) => return Err(Outcome::Unmatched),
    };
    if found.rows[i].wamid.as_deref().is_some_and(|w| w != u.wamid) {
        return Err(Outcome::Conflict);
    }
    Ok(i)
}

/// One status applied to its row (see the module docs' rules).
fn apply_one(row: &mut Msg, u: &StatusUpdate, out: &mut Decided<'_>) -> Outcome {
    match (row.status.as_str(), u.kind) {
        // The send's answer is not recorded yet (or the message is being sent again).
        ("pending" | "sending", _) => Outcome::Early,
        // The runner is about to fail the job `delivery_unknown`, or to complete it: the
        // job is settled or failed once it is no longer running.
        ("unknown", _) | ("sent", Kind::Failed) if row.job_running => Outcome::Early,
        ("failed", _) if row.wamid.is_none() => Outcome::Early,
        ("failed", _) => Outcome::Duplicate,
        ("unknown", Kind::Failed) | ("sent", Kind::Failed) => {
            let settled_before = row.status == "unknown";
            row.status = "failed".into();
            row.wamid = Some(u.wamid.clone());
            row.error_code = Some(u.error_code.clone().unwrap_or_else(|| "meta_failed".into()));
            row.error = u.error_title.clone();
            row.changed = true;
            let code = row.error_code.clone().unwrap_or_default();
            let reason = format!(
                "Meta reported the message failed after accepting it: {} ({code}){}",
                u.error_title.as_deref().unwrap_or("no title"),
                if settled_before {
                    "; it had been in doubt"
                } else {
                    ""
                }
            );
            out.fail_jobs.insert(row.job.clone(), (code, reason));
            Outcome::Applied
        }
        (_, Kind::Failed) => Outcome::Duplicate,
        (current, kind) => {
            let was_unknown = current == "unknown";
            let mut changed = false;
            if rank(kind.as_str()) > rank(current) {
                row.status = kind.as_str().into();
                changed = true;
            }
            if row.wamid.is_none() {
                row.wamid = Some(u.wamid.clone());
                changed = true;
            }
            match kind {
                Kind::Delivered if row.delivered_at.is_none() => {
                    row.delivered_at = Some(u.at);
                    if let Some(sent) = row.sent_at {
                        out.applied
                            .delivered_after
                            .push((u.at - sent).to_std().unwrap_or_default());
                    }
                    changed = true;
                }
                Kind::Read if row.read_at.is_none() => {
                    row.read_at = Some(u.at);
                    changed = true;
                }
                _ => {}
            }
            if was_unknown {
                row.error_code = None;
                row.sent_at = row.sent_at.or(Some(u.at));
                out.settle_jobs.push(row.job.clone());
                row.changed = true;
                Outcome::Settled
            } else if changed {
                row.changed = true;
                Outcome::Applied
            } else {
                Outcome::Duplicate
            }
        }
    }
}

async fn insert_early(
    tx: &mut Transaction<'_, Postgres>,
    park: &[&StatusUpdate],
    named: bool,
) -> sqlx::Result<()> {
    let jobs: Vec<Option<&JobId>> = park
        .iter()
        .map(|u| u.callback.as_ref().map(|c| &c.0))
        .collect();
    let seqs: Vec<Option<i32>> = park
        .iter()
        .map(|u| u.callback.as_ref().map(|c| c.1))
        .collect();
    let wamids: Vec<&str> = park.iter().map(|u| u.wamid.as_str()).collect();
    let kinds: Vec<&str> = park.iter().map(|u| u.kind.as_str()).collect();
    let ats: Vec<DateTime<Utc>> = park.iter().map(|u| u.at).collect();
    let codes: Vec<Option<&str>> = park.iter().map(|u| u.error_code.as_deref()).collect();
    let titles: Vec<Option<&str>> = park.iter().map(|u| u.error_title.as_deref()).collect();
    sqlx::query(
        r#"
        INSERT INTO "OutboundEarlyStatus" ("jobId", seq, wamid, status, "at", "errorCode", "errorTitle")
        SELECT outbound_job_id(e.job), e.seq, e.wamid, e.status, e."at", e.code, e.title
        FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::timestamptz[],
                    $6::text[], $7::text[]) AS e(job, seq, wamid, status, "at", code, title)
        ON CONFLICT (wamid, status) DO NOTHING
        "#,
    )
    .bind(&jobs)
    .bind(&seqs)
    .bind(&wamids)
    .bind(&kinds)
    .bind(&ats)
    .bind(&codes)
    .bind(&titles)
    .persistent(named)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Applies `updates` in one transaction, committed synchronously (see the module docs). Behind a
/// transaction-mode pooler the statements inside it are unnamed: the pooler keeps one server for
/// the transaction, and nothing named outlives it (docs/operations.md, "Poolers").
pub async fn apply(pool: &Pool, updates: &[StatusUpdate]) -> sqlx::Result<Applied> {
    let mut tx = pool.pg().begin().await?;
    let out = apply_in(&mut tx, updates, None, !pool.pooled()).await?;
    tx.commit().await?;
    Ok(out)
}

/// What a sweep of the early statuses did.
#[derive(Debug, Default)]
pub struct Swept {
    pub applied: Applied,
    /// Early statuses dropped after the retention.
    pub expired: u64,
    /// Early statuses still waiting.
    pub waiting: i64,
}

/// Applies the early statuses whose message can now take them, and drops the expired ones.
pub async fn sweep(pool: &Pool, retention: Duration) -> sqlx::Result<Swept> {
    let mut out = Swept::default();
    let expired = sqlx::query(
        r#"DELETE FROM "OutboundEarlyStatus" WHERE "receivedAt" < now() - make_interval(secs => $1)"#,
    )
    .bind(retention.as_secs_f64())
    // Planned for its cutoff, as `queue::store::prune` is.
    .execute(&pool.custom_plans())
    .await?;
    out.expired = expired.rows_affected();

    // Unnamed statements behind a transaction-mode pooler (see [`apply`]).
    let named = !pool.pooled();
    let mut tx = pool.pg().begin().await?;
    let rows = sqlx::query(
        r#"
        SELECT e.id, e."jobId", e.seq, e.wamid, e.status, e."at", e."errorCode", e."errorTitle"
        FROM "OutboundEarlyStatus" e
        WHERE EXISTS (
            SELECT 1 FROM "OutboundMessage" m JOIN "OutboundJob" j ON j.id = m."jobId"
            WHERE ((m."jobId" = e."jobId" AND m.seq = e.seq) OR m.wamid = e.wamid)
              AND m.status NOT IN ('pending', 'sending')
              AND (j.status <> 'running'
                   OR (m.status IN ('sent', 'delivered', 'read') AND e.status <> 'failed'))
        )
        ORDER BY e.id
        LIMIT 1000
        FOR UPDATE OF e SKIP LOCKED
        "#,
    )
    .persistent(named)
    .fetch_all(&mut *tx)
    .await?;
    if !rows.is_empty() {
        let mut ids = Vec::with_capacity(rows.len());
        let mut updates = Vec::with_capacity(rows.len());
        for r in rows {
            let job: Option<JobId> = r.get(1);
            let seq: Option<i32> = r.get(2);
            let status: String = r.get(4);
            let Some(kind) = Kind::parse(&status) else {
                continue;
            };
            ids.push(r.get::<i64, _>(0));
            updates.push(StatusUpdate {
                wamid: r.get(3),
                kind,
                callback: job.zip(seq),
                at: r.get(5),
                error_code: r.get(6),
                error_title: r.get(7),
            });
        }
        out.applied = apply_in(&mut tx, &updates, Some(&ids), named).await?;
    }
    tx.commit().await?;
    out.waiting = sqlx::query_scalar(r#"SELECT count(*) FROM "OutboundEarlyStatus""#)
        .fetch_one(pool)
        .await?;
    Ok(out)
}

type Waiting = (
    Vec<StatusUpdate>,
    oneshot::Sender<Result<Vec<Outcome>, String>>,
);

/// The status writer: batches the statuses of every webhook request waiting into one
/// transaction, and sweeps the early statuses while there are any.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Waiting>,
    /// `whatsapp.status_retention` in milliseconds (changed on reload).
    retention: Arc<AtomicU64>,
}

/// How often the early statuses are looked at while there are some.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl Writer {
    /// Starts the writer's task; it ends when `stop` is cancelled. Early statuses are kept for
    /// `retention` (`whatsapp.status_retention`; see [`Writer::set_retention`]).
    pub fn start(
        pool: &Pool,
        metrics: Arc<Metrics>,
        stop: &CancellationToken,
        retention: Duration,
    ) -> (Writer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(4096);
        let retention = Arc::new(AtomicU64::new(millis(retention)));
        let task = tokio::spawn(run(
            pool.clone(),
            metrics,
            rx,
            stop.clone(),
            retention.clone(),
        ));
        (Writer { tx, retention }, task)
    }

    /// A new `whatsapp.status_retention` (a reload): the next expiry uses it.
    pub fn set_retention(&self, retention: Duration) {
        self.retention.store(millis(retention), Ordering::Relaxed);
    }

    /// Applies `updates` with whatever other statuses are waiting; returns once they are
    /// committed. An error is the statement's (redacted): nothing of the batch was written.
    pub async fn apply(&self, updates: Vec<StatusUpdate>) -> Result<Vec<Outcome>, String> {
        let (ack, answer) = oneshot::channel();
        self.tx
            .send((updates, ack))
            .await
            .map_err(|_| "the runner is stopping".to_string())?;
        answer
            .await
            .unwrap_or_else(|_| Err("the runner is stopping".to_string()))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn record(metrics: &Metrics, applied: &Applied) {
    for (k, o) in applied.kinds.iter().zip(&applied.outcomes) {
        metrics
            .whatsapp_statuses
            .with_label_values(&[k.as_str(), o.label()])
            .inc();
    }
    for d in &applied.delivered_after {
        metrics.delivered_latency.observe(d.as_secs_f64());
    }
    if applied.jobs_failed > 0 || applied.jobs_settled > 0 {
        tracing::info!(
            failed = applied.jobs_failed,
            settled = applied.jobs_settled,
            "Meta's statuses decided jobs: failed after acceptance, or settled from unknown to done"
        );
    }
}

async fn run(
    pool: Pool,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Waiting>,
    stop: CancellationToken,
    retention: Arc<AtomicU64>,
) {
    const MAX_BATCH: usize = 256;
    let mut batch: Vec<Waiting> = Vec::with_capacity(MAX_BATCH);
    let mut intake = crate::db::batch::Intake::new(MAX_BATCH, crate::db::batch::LINGER);
    // Early statuses may be waiting from an earlier run.
    let mut early_waiting = true;
    let mut sweep_timer = tokio::time::interval(SWEEP_INTERVAL);
    sweep_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_expiry = tokio::time::Instant::now() - Duration::from_secs(3600);
    loop {
        tokio::select! {
            more = intake.next(&mut rx, &stop, &mut batch) => {
                if !more {
                    return;
                }
            }
            _ = sweep_timer.tick() => {
                let expiry_due = last_expiry.elapsed() >= Duration::from_secs(60);
                if !early_waiting && !expiry_due {
                    continue;
                }
                let retention = Duration::from_millis(retention.load(Ordering::Relaxed));
                match sweep(&pool, retention).await {
                    Ok(s) => {
                        last_expiry = tokio::time::Instant::now();
                        early_waiting = s.waiting > 0;
                        let updates_len = s.applied.outcomes.len();
                        record(&metrics, &s.applied);
                        if s.expired > 0 {
                            metrics.whatsapp_statuses_expired.inc_by(s.expired);
                            tracing::warn!(
                                dropped = s.expired,
                                "status webhooks that never matched a message were dropped after \
                                 their retention"
                            );
                        }
                        if updates_len > 0 {
                            tracing::debug!(applied = updates_len, waiting = s.waiting, "early statuses applied");
                        }
                    }
                    Err(e) => tracing::warn!(
                        error = %crate::db::redact_sqlx(&e),
                        "applying early statuses failed; retrying"
                    ),
                }
                continue;
            }
        }
        let (requests, acks): (Vec<Vec<StatusUpdate>>, Vec<_>) = batch.drain(..).unzip();
        let lens: Vec<usize> = requests.iter().map(Vec::len).collect();
        let updates: Vec<StatusUpdate> = requests.into_iter().flatten().collect();
        match apply(&pool, &updates).await {
            Ok(applied) => {
                record(&metrics, &applied);
                if applied.outcomes.contains(&Outcome::Early) {
                    early_waiting = true;
                }
                let mut outcomes = applied.outcomes.into_iter();
                for (ack, n) in acks.into_iter().zip(lens) {
                    let _ = ack.send(Ok(outcomes.by_ref().take(n).collect()));
                }
            }
            Err(e) if updates.len() > 1 && crate::queue::store::is_data_error(&e) => {
                // One status the database refuses must not fail the others: each alone.
                tracing::warn!(
                    error = %crate::db::redact_sqlx(&e),
                    statuses = updates.len(),
                    "the database refused a batch of statuses; applying them one by one"
                );
                let mut outcomes = Vec::with_capacity(updates.len());
                for u in &updates {
                    match apply(&pool, std::slice::from_ref(u)).await {
                        Ok(applied) => {
                            record(&metrics, &applied);
                            early_waiting |= applied.outcomes.contains(&Outcome::Early);
                            outcomes.push(Ok(applied.outcomes[0]));
                        }
                        Err(e) if crate::queue::store::is_data_error(&e) => {
                            tracing::warn!(
                                error = %crate::db::redact_sqlx(&e),
                                wamid = %u.wamid.escape_debug(),
                                "the database refused a status; it is dropped (counted rejected)"
                            );
                            record(
                                &metrics,
                                &Applied {
                                    kinds: vec![u.kind],
                                    outcomes: vec![Outcome::Rejected],
                                    ..Applied::default()
                                },
                            );
                            outcomes.push(Ok(Outcome::Rejected));
                        }
                        Err(e) => outcomes.push(Err(crate::db::redact_sqlx(&e))),
                    }
                }
                let mut outcomes = outcomes.into_iter();
                for (ack, n) in acks.into_iter().zip(lens) {
                    let mine: Result<Vec<Outcome>, String> = outcomes.by_ref().take(n).collect();
                    let _ = ack.send(mine);
                }
            }
            Err(e) => {
                let why = crate::db::redact_sqlx(&e);
                for ack in acks {
                    let _ = ack.send(Err(why.clone()));
                }
            }
        }
    }
}
