//! Running one job: the handler, the timeout, the job's next state; and the completer, which
//! marks finished jobs `done` in batches (a group commit, [`crate::db::batch`]: one statement
//! for all the jobs that finished while the previous statement ran).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Shared;
use crate::db::batch::Intake;
use crate::db::redact_sqlx;
use crate::db::retry::{Backoff, with_backoff};
use crate::db::wait::patiently;
use crate::delivery::{Accepted, Delivered, JobContext, SentRecords, ledger};
use crate::queue::retry::{self, Next};
use crate::queue::{Fence, Job, JobError, JobId, Outcome, store};

/// A finished job waiting for its `done` write; `ack` says whether the fence held.
pub struct CompleteRequest {
    pub fence: Fence,
    /// Sandbox sends to record with the completion.
    pub records: Option<SentRecords>,
    /// The wamid of a live job's last message, recorded with the completion.
    pub wamid: Option<Accepted>,
    pub ack: oneshot::Sender<bool>,
}

/// Decrements `workers_busy` however the job ends (even if its task is aborted).
struct Busy<'a>(&'a prometheus::IntGauge);
impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Runs one attempt of a claimed job and writes where it left the job. `slot` (a dispatcher
/// worker slot) is given back when a successful job is handed to the completer (the next claim
/// then overlaps its `done` write, bounded by `Shared::completing`), or once a retry or
/// failure is written.
pub async fn execute(shared: &Shared, job: Job, slot: Option<OwnedSemaphorePermit>) -> Outcome {
    let span = tracing::info_span!(
        "job",
        job_id = %job.id,
        request_id = job.request_id.as_deref().unwrap_or(""),
        attempt = job.attempts
    );
    async move {
        let metrics = &shared.metrics;
        metrics.workers_busy.inc();
        let _busy = Busy(&metrics.workers_busy);
        let wait = (chrono::Utc::now() - job.run_at.max(job.created_at))
            .to_std()
            .unwrap_or_default();
        metrics.job_queue_wait.observe(wait.as_secs_f64());
        tracing::info!(
            "Processing job {} (requestId: {})",
            job.id,
            job.request_id.as_deref().unwrap_or("-")
        );

        let settings = shared.settings();
        let ctx = JobContext::new(
            shared.pool.clone(),
            settings.clone(),
            shared.metrics.clone(),
            shared.ledger.clone(),
        );
        let started = Instant::now();
        let result = match tokio::time::timeout(
            settings.runner.job_timeout,
            shared.handler.handle(&job, &ctx),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(JobError::retry(
                "job_timeout",
                format!(
                    "the job did not finish within runner.job_timeout ({})",
                    humantime::format_duration(settings.runner.job_timeout)
                ),
            )),
        };
        let outcome = finish(shared, &job, result, slot).await;
        let label = match outcome {
            Outcome::Done | Outcome::Retried | Outcome::Failed => Some(outcome.label()),
            Outcome::Deferred | Outcome::Lost => None,
        };
        if let Some(label) = label {
            metrics.jobs_finished.with_label_values(&[label]).inc();
            metrics
                .job_duration
                .with_label_values(&[label])
                .observe(started.elapsed().as_secs_f64());
        }
        outcome
    }
    .instrument(span)
    .await
}

/// Writes the job's next state. A delivered job's `keep` lives until its completion has run.
async fn finish(
    shared: &Shared,
    job: &Job,
    result: Result<Delivered, JobError>,
    slot: Option<OwnedSemaphorePermit>,
) -> Outcome {
    let err = match result {
        Ok(Delivered {
            records,
            accepted,
            keep: _keep,
        }) => {
            let (ack, done) = oneshot::channel();
            let request = CompleteRequest {
                fence: job.fence.clone(),
                records,
                wamid: accepted,
                ack,
            };
            // Counted before the slot is given back, so the dispatcher always sees the job as
            // one or the other; the completer uncounts it once its statement has run.
            shared.completing.fetch_add(1, Ordering::SeqCst);
            drop(slot);
            if shared.completer.send(request).await.is_err() {
                shared.completing.fetch_sub(1, Ordering::SeqCst);
                return Outcome::Lost;
            }
            return match done.await {
                Ok(true) => {
                    tracing::info!("Job {} completed successfully", job.id);
                    Outcome::Done
                }
                _ => lost(job),
            };
        }
        Err(err) => err,
    };
    // A retry or a failure is one write of its own: the slot is held until it is done.
    let _slot = slot;

    let settings = shared.settings();
    let next = retry::decide(
        &err,
        job.attempts.max(1) as u32,
        job.max_attempts.max(1) as u32,
        &settings.retry,
        settings.delivery.on_unknown,
        &mut rand::rng(),
    );
    match next {
        Next::Requeue { delay, refund } => {
            let write = || {
                store::requeue(
                    &shared.pool,
                    &job.fence,
                    delay,
                    refund,
                    &err.code,
                    &err.message,
                )
            };
            match with_retries(shared, write).await {
                Some(true) => {
                    shared.hint_due(delay);
                    if refund {
                        tracing::info!(code = %err.code, delay = ?delay, "job deferred: {}", err.message);
                        Outcome::Deferred
                    } else {
                        tracing::warn!(code = %err.code, delay = ?delay, "job will be retried: {}", err.message);
                        Outcome::Retried
                    }
                }
                Some(false) => lost(job),
                None => Outcome::Lost,
            }
        }
        Next::Fail { code, message } => {
            match with_retries(shared, || {
                store::fail(&shared.pool, &job.fence, &code, &message)
            })
            .await
            {
                Some(true) => {
                    tracing::error!(code = %code, "job failed: {message}");
                    Outcome::Failed
                }
                Some(false) => lost(job),
                None => Outcome::Lost,
            }
        }
    }
}

fn lost(job: &Job) -> Outcome {
    tracing::warn!(
        "job {} was not ours to finish: its lease expired and it was taken from this runner, \
         or its ledger shows a message not recorded as sent; result dropped (the rescuer settles it)",
        job.id
    );
    Outcome::Lost
}

/// A state write survives a short database outage: retried for a few seconds, then given up
/// (the lease expires and the rescuer takes the job back; nothing is lost). A wait for a
/// connection is no outage: it is waited out for up to a lease (which the lease keeper extends)
/// before it counts as a failure (see [`crate::db::wait`]).
async fn with_retries<T, F, Fut>(shared: &Shared, write: F) -> Option<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = sqlx::Result<T>>,
{
    // One lease in all for the waits, however many failures come between them.
    let patience_ends = tokio::time::Instant::now() + shared.settings().runner.lease;
    let backoff = Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_millis(3200),
        attempts: Some(6),
    };
    with_backoff(
        backoff,
        |attempt, e: &sqlx::Error| {
            tracing::warn!(attempt, error = %redact_sqlx(e), "writing the job's state failed");
        },
        || {
            let bound = patience_ends.saturating_duration_since(tokio::time::Instant::now());
            patiently(bound, &shared.metrics.db_waits, &write)
        },
    )
    .await
    .ok()
}

/// A completion that records the wamids of accepted messages: retried (100 ms doubling to 2 s)
/// until the database answers, for at most `runner.job_timeout` (the bound of any write after a
/// request left). Each retry is fenced: once the lease ran out and the job was rescued, it
/// matches nothing.
async fn until_answered<T, F, Fut>(shared: &Shared, write: F) -> Option<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = sqlx::Result<T>>,
{
    let bound = shared.settings().runner.job_timeout;
    let ends = tokio::time::Instant::now() + bound;
    let backoff = Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_secs(2),
        attempts: None,
    };
    let retried = with_backoff(
        backoff,
        |attempt, e: &sqlx::Error| {
            if attempt == 1 || attempt % 10 == 0 {
                tracing::warn!(
                    attempt,
                    error = %redact_sqlx(e),
                    "writing a completion with the wamids of accepted messages failed; retrying \
                     until the database answers (runner.job_timeout bounds it)"
                );
            }
        },
        || {
            patiently(
                ends.saturating_duration_since(tokio::time::Instant::now()),
                &shared.metrics.db_waits,
                &write,
            )
        },
    );
    tokio::time::timeout_at(ends, retried).await.ok()?.ok()
}

/// How long a completion that records a send (a live job's wamid) waits for others to share its
/// statement: one mark span ([`crate::whatsapp::pacing::MARK_SPAN`], a quarter second), the
/// window the marks are written in too, and never before the send it records (the request has
/// been answered). At 80/s the sends of a span are answered over a span, so their completions
/// share one statement (within 40 ms, four did: five completion statements per span were half
/// the database's work per message; docs/benchmarks.md, "Issue 27, third round"). The job's
/// worker slot is given back before this wait; a batch as big as the worker count is written at
/// once.
pub const COMPLETION_SPAN: Duration = crate::whatsapp::pacing::MARK_SPAN;

/// How many completion statements may run at once. While one runs, the jobs that finish gather
/// into the next batch, which starts as soon as it is taken rather than after the first: a drain's
/// completions were one backend's work on a server with more cores (half the drain's wall time
/// was the completer's statement with the dispatcher waiting for it; docs/benchmarks.md, "Issue
/// 27, fifth round"). The two touch different jobs (a job is handed to the completer once), so
/// they cannot wait on each other. At a rate the first statement ends before the next batch is
/// taken, and this changes nothing.
pub const COMPLETION_STATEMENTS: usize = 2;

/// How many in-flight limits' worth of jobs may wait for their completion before the dispatcher
/// stops claiming (see `Shared::completing`): two batches being written and two gathering. With
/// two, a 32-worker drain waited on its completions a third of its time.
pub const COMPLETIONS_AHEAD: usize = 4;

/// Marks finished jobs `done`, as many per statement as have finished meanwhile (and, for live
/// sends, within [`COMPLETION_SPAN`]), with up to [`COMPLETION_STATEMENTS`] statements at once.
/// Stopping, it writes what it took and waits for the statements it started.
pub async fn completer(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<CompleteRequest>,
    stop: CancellationToken,
) {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;

    const MAX_BATCH: usize = 1024;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut intake = Intake::new(MAX_BATCH, crate::db::batch::LINGER);
    // When the batch being gathered is written at the latest: set once it holds a send's
    // completion, kept while a statement that ended interrupts the gathering.
    let mut due = None;
    let mut writing = FuturesUnordered::new();
    loop {
        if writing.len() >= COMPLETION_STATEMENTS {
            writing.next().await;
            continue;
        }
        let take = take_batch(&shared, &mut intake, &mut rx, &stop, &mut batch, &mut due);
        let more = if writing.is_empty() {
            take.await
        } else {
            tokio::select! {
                // A statement ended: its connection is back; gather on (what was taken stays
                // in `batch`: the intake is cancel-safe).
                _ = writing.next() => continue,
                more = take => more,
            }
        };
        if !more {
            break;
        }
        due = None;
        let taken = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        writing.push(write_batch(&shared, taken));
    }
    while writing.next().await.is_some() {}
}

/// Takes the next batch into `batch` (see [`Intake::next`]); one that holds a send's completion
/// gathers more until `due` (set here to [`COMPLETION_SPAN`] from the first such batch). False
/// once `stop` is cancelled or the channel is closed before anything was taken.
async fn take_batch(
    shared: &Shared,
    intake: &mut Intake,
    rx: &mut mpsc::Receiver<CompleteRequest>,
    stop: &CancellationToken,
    batch: &mut Vec<CompleteRequest>,
    due: &mut Option<tokio::time::Instant>,
) -> bool {
    if !intake.next(rx, stop, batch).await {
        return false;
    }
    if batch.iter().any(|r| r.wamid.is_some()) {
        let deadline = *due.get_or_insert_with(|| tokio::time::Instant::now() + COMPLETION_SPAN);
        let enough = shared.limit.load(Ordering::SeqCst) as usize;
        // Stopping: what was gathered is written all the same.
        let _ = intake.gather_until(rx, stop, batch, deadline, enough).await;
    }
    true
}

/// Writes one batch of completions and answers each request: whether its fence held.
async fn write_batch(shared: &Shared, batch: Vec<CompleteRequest>) {
    let ids: Vec<JobId> = batch.iter().map(|r| r.fence.id.clone()).collect();
    let attempts: Vec<i32> = batch.iter().map(|r| r.fence.attempts).collect();
    let mut records = ledger::CompletionRecords::default();
    for request in &batch {
        if let Some(sent) = &request.records {
            for (seq, body) in sent.messages.iter().enumerate() {
                records.job.push(request.fence.id.clone());
                records.seq.push(seq as i32);
                records.to.push(sent.to.clone());
                records.body.push(body.clone());
            }
        }
        if let Some(accepted) = &request.wamid {
            records.accepted_job.push(request.fence.id.clone());
            records.accepted_seq.push(accepted.seq);
            records.accepted_wamid.push(accepted.wamid.clone());
        }
    }
    let write = || complete(&shared.pool, &shared.locked_by, &ids, &attempts, &records);
    let held = if records.accepted_job.is_empty() {
        with_retries(shared, write).await
    } else {
        // The batch carries wamids of messages Meta accepted: like any write after a
        // request left, retried until the database answers (docs/delivery.md, "Durability").
        until_answered(shared, write).await
    }
    .unwrap_or_default();
    let flushed = batch.len();
    for request in batch {
        let _ = request.ack.send(held.contains(&request.fence.id));
    }
    shared.completing.fetch_sub(flushed, Ordering::SeqCst);
    shared.completions_flushed.notify_waiters();
}

/// The batched completion: one statement, the store's `done` CTE (the `"OutboundJob"` half,
/// [`store::COMPLETE_DONE_CTE`]) and the ledger's `sandbox` and `accepted` CTEs (the
/// `"OutboundMessage"` half, [`ledger::SANDBOX_SENT_CTE`], [`ledger::ACCEPTED_CTE`]), joined here
/// because only the runner may import both (see docs/queue.md "Code layout"). A half with
/// nothing to write is left out (`sandbox`, `accepted`: whether the batch has such records):
/// even when it writes no row, a write in a statement opens its table and every index of it.
/// Public so a test can check its plan.
#[doc(hidden)]
pub fn complete_sql(sandbox: bool, accepted: bool) -> &'static str {
    static SQL: std::sync::LazyLock<[String; 4]> = std::sync::LazyLock::new(|| {
        [(false, false), (false, true), (true, false), (true, true)].map(|(s, a)| {
            let mut ctes = vec![store::COMPLETE_DONE_CTE];
            if s {
                ctes.push(ledger::SANDBOX_SENT_CTE);
            }
            if a {
                ctes.push(ledger::ACCEPTED_CTE);
            }
            format!("WITH {}\n        SELECT id FROM done", ctes.join(", "))
        })
    });
    &SQL[usize::from(sandbox) * 2 + usize::from(accepted)]
}

/// Marks a batch of jobs `done` in one statement, and records `records` (sandbox sends, and the
/// wamids of live jobs' last messages) for the jobs whose fence held, in the same statement. Returns the ids whose fence held. What the
/// commit makes durable, and when a job is not marked done: [`store::COMPLETE_DONE_CTE`].
async fn complete(
    pool: &crate::db::Pool,
    locked_by: &str,
    ids: &[JobId],
    attempts: &[i32],
    records: &ledger::CompletionRecords,
) -> sqlx::Result<Vec<JobId>> {
    let sql = complete_sql(!records.job.is_empty(), !records.accepted_job.is_empty());
    sqlx::query_scalar(sql)
        .bind(locked_by)
        .bind(ids)
        .bind(attempts)
        .bind(&records.job)
        .bind(&records.seq)
        .bind(&records.to)
        .bind(&records.body)
        .bind(&records.accepted_job)
        .bind(&records.accepted_seq)
        .bind(&records.accepted_wamid)
        .fetch_all(pool)
        .await
}
