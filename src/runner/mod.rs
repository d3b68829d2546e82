//! The [`Runner`]: one process's share of the queue. It owns the dispatcher, the listener, the
//! completer and the maintenance loops, runs synchronous passes for the HTTP trigger, and drains.
//!
//! ```text
//!  start() ─► LISTEN ─► tasks: dispatcher · listener · completer · rescuer · lease keeper ·
//!                              pruner · prober
//!  run_pass(max)  claims and runs up to `max` jobs now, beside the dispatcher (SKIP LOCKED)
//!  shutdown()     stop claiming → finish in-flight jobs within drain_timeout → abort the rest →
//!                 release our claims (attempt refunded) → stop
//! ```
//!
//! - `dispatcher`: wakes on NOTIFY, the interval, a trigger or a due backoff; claims batches
//!   sized to the free workers.
//! - `worker`: runs one job through the [`crate::delivery::JobHandler`] and turns the result
//!   into the job's next state; the completer that batches completions.
//! - [`sizing`]: how many jobs may be in flight (sized by the work; `runner.workers` pins it).
//! - `maintenance`: the rescuer (expired leases), the lease keeper, the pruner and the prober.
//!
//! The state these tasks share (`Shared`: the pool, settings, metrics, health, the writers) is
//! private to this module and its submodules, and so are its methods. Outside code goes through
//! [`Runner`]'s operations, which hand out none of those parts: the HTTP layer gets the
//! operator's handles ([`Runner::queue_admin`], [`Runner::number_admin`]), readiness and
//! liveness ([`Runner::not_ready`], [`Runner::dead`]), the rendered metrics and its counts,
//! [`Runner::apply_statuses`] and [`Runner::supervise`]. The metrics and health a runner reports
//! to are given by its caller ([`Start::metrics`], [`Start::health`]), who keeps them.

mod dispatcher;
mod maintenance;
pub mod sizing;
mod worker;
#[doc(hidden)]
pub use worker::{COMPLETION_STATEMENTS, COMPLETIONS_AHEAD, complete_sql};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::db::Pool;
use crate::delivery::{JobHandler, ledger};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::queue::store::{self, Reclaim, Rescued};
use crate::queue::{Job, JobId, Outcome, PassReport};

/// State shared by the runner's tasks.
struct Shared {
    pool: Pool,
    /// Where LISTEN connects: `database.direct_url`, or the pool's own options. `None` behind a
    /// transaction-mode pooler with no direct URL: no LISTEN, the dispatcher polls every
    /// `runner.pooler_poll_interval` instead (see [`Shared::poll_interval`]).
    listen_options: Option<PgConnectOptions>,
    settings: RwLock<Arc<Settings>>,
    handler: Arc<dyn JobHandler>,
    /// `host:pid:random`: unique per process run, so a restarted runner never mistakes an old
    /// claim for its own.
    locked_by: Arc<str>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Wakes the dispatcher. A wake while it is busy is remembered (one permit), so none is lost.
    wake: Notify,
    /// The earliest known due time of a job we requeued (a backoff), so the dispatcher wakes for
    /// it without waiting for the interval.
    due_hint: Mutex<Option<tokio::time::Instant>>,
    completer: mpsc::Sender<worker::CompleteRequest>,
    /// Jobs whose handler succeeded and whose `done` write is not acknowledged yet. A job gives
    /// its worker slot back when its handler returns, so the next claim overlaps the completion;
    /// the dispatcher stops claiming while this is at [`worker::COMPLETIONS_AHEAD`] times the
    /// in-flight limit, so claims can never outrun lagging completions (see [`worker::completer`]).
    completing: AtomicUsize,
    /// Notified after every completion statement.
    completions_flushed: Notify,
    /// Live delivery's batched ledger writes (see [`ledger::Writers`]).
    ledger: ledger::Writers,
    /// The dispatcher's worker slots: one permit per job it runs at once.
    slots: Arc<Semaphore>,
    /// The in-flight limit `slots` is being brought to (see [`sizing`]; changes with the
    /// observed latency and on reload).
    limit: AtomicU32,
    /// Every job task, the dispatcher's and the passes', for the drain.
    tracker: TaskTracker,
    inflight: Mutex<HashMap<JobId, AbortHandle>>,
    /// Set once shutdown begins: no new claims from anyone.
    closing: AtomicBool,
    /// Counts successful claim statements: something to await instead of sleeping.
    passes: watch::Sender<u64>,
    /// Counts job attempts that ended, however they ended.
    finished: watch::Sender<u64>,
    /// Rows that make the claim statement fail and that could not be failed either: claims skip
    /// them until the process restarts (see [`Shared::claim_batch`]).
    unclaimable: Mutex<Vec<JobId>>,
}

impl Shared {
    fn settings(&self) -> Arc<Settings> {
        self.settings.read().expect("settings lock").clone()
    }

    /// Brings the in-flight limit to what [`sizing::size`] says now (at once if `exact`, else
    /// only when [`sizing::worth_moving`]), and publishes it and its inputs.
    fn resize(&self, exact: bool) -> sizing::Sizing {
        let settings = self.settings();
        let sizing = sizing::size(&settings, sizing::observed_latency(&self.metrics));
        self.metrics.in_flight_rate.set(sizing.rate);
        self.metrics.in_flight_latency.set(sizing.latency);
        let current = self.limit.load(Ordering::SeqCst);
        if (exact && sizing.limit != current) || sizing::worth_moving(current, sizing) {
            self.set_limit(sizing.limit);
        }
        sizing
    }

    fn set_limit(&self, new: u32) {
        let old = self.limit.swap(new, Ordering::SeqCst);
        if new > old {
            self.slots.add_permits((new - old) as usize);
        } else if new < old {
            // Take the surplus slots as their jobs finish; nothing running is interrupted. (The
            // semaphore is fair: claims wait behind this until the limit is met.)
            let slots = self.slots.clone();
            tokio::spawn(async move {
                if let Ok(p) = slots.acquire_many_owned(old - new).await {
                    p.forget();
                }
            });
        }
        self.metrics.workers.set(new as i64);
        self.metrics.in_flight_limit.set(new as i64);
        if new != old {
            tracing::debug!(from = old, to = new, "in-flight limit changed");
        }
        self.wake.notify_one();
    }

    /// The dispatcher's backstop interval: `runner.poll_interval`, or with no LISTEN (behind a
    /// pooler with no direct URL) the shorter `runner.pooler_poll_interval`.
    fn poll_interval(&self) -> Duration {
        let settings = self.settings();
        match self.listen_options {
            Some(_) => settings.runner.poll_interval,
            None => settings
                .runner
                .pooler_poll_interval
                .min(settings.runner.poll_interval),
        }
    }

    /// Records a job's next due time so the dispatcher wakes for it.
    fn hint_due(&self, delay: Duration) {
        let at = tokio::time::Instant::now() + delay;
        let mut hint = self.due_hint.lock().expect("due hint lock");
        if hint.is_none_or(|h| at < h) {
            *hint = Some(at);
            drop(hint);
            // The dispatcher re-reads the hint when woken.
            self.wake.notify_one();
        }
    }

    /// Runs one claimed job on its own task, tracked for the drain and abortable.
    /// `slot` is a dispatcher worker slot, given back as the job is handed to the completer or its
    /// retry or failure is written (see [`worker::execute`]).
    fn spawn_job(
        self: &Arc<Self>,
        job: Job,
        slot: Option<OwnedSemaphorePermit>,
    ) -> JoinHandle<Outcome> {
        let shared = self.clone();
        let id = job.id.clone();
        let key = id.clone();
        let handle = self.tracker.spawn(async move {
            let outcome = worker::execute(&shared, job, slot).await;
            shared.inflight.lock().expect("inflight lock").remove(&key);
            shared.finished.send_modify(|n| *n += 1);
            outcome
        });
        self.inflight
            .lock()
            .expect("inflight lock")
            .insert(id, handle.abort_handle());
        handle
    }

    /// One claim statement, measured: the jobs to run. Rows that cannot be run are failed
    /// here (see [`Shared::claim_batch`]).
    async fn claim(&self, limit: usize) -> sqlx::Result<Vec<Job>> {
        Ok(self.claim_batch(limit).await?.0)
    }

    /// One claim statement, measured: the jobs to run, and the ids of the claimed rows that
    /// could not be run (a payload this runner cannot read), each already failed on its own
    /// fence with a readable reason (docs/reliability.md, "Rows the runner cannot use").
    async fn claim_batch(&self, limit: usize) -> sqlx::Result<(Vec<Job>, Vec<JobId>)> {
        let settings = self.settings();
        let (lease, max_attempts) = (settings.runner.lease, settings.retry.max_attempts as i32);
        let claim = || {
            let exclude = self.unclaimable.lock().expect("unclaimable lock").clone();
            async move {
                let timer = self.metrics.claim_duration.start_timer();
                let claimed = store::claim_except(
                    &self.pool,
                    &self.locked_by,
                    lease,
                    limit as i64,
                    max_attempts,
                    &exclude,
                )
                .await;
                timer.observe_duration();
                claimed
            }
        };
        let claimed = match claim().await {
            // The database refused the data: find the row, take it out of the way, claim again.
            Err(e) if store::is_data_error(&e) && self.set_aside_unclaimable(limit, &e).await => {
                claim().await
            }
            other => other,
        };
        let claimed = claimed?;
        self.passes.send_modify(|n| *n += 1);
        self.health.passed();
        self.health.set_db_ok(true);
        if !claimed.is_empty() {
            self.metrics.jobs_claimed.inc_by(claimed.len() as u64);
        }
        if !claimed.jobs.is_empty() {
            let n = claimed.jobs.len();
            tracing::info!(jobs = n, "Processing {n} job(s)");
        }
        let mut failed = Vec::with_capacity(claimed.rejected.len());
        for bad in &claimed.rejected {
            if self.fail_rejected(bad).await {
                failed.push(bad.fence.id.clone());
            }
        }
        Ok((claimed.jobs, failed))
    }

    /// The claim statement failed with a data error: names the row that causes it (the log,
    /// and its `"lastError"`), and fails it (`unclaimable`), or, if the database refuses that
    /// too, has this runner's claims skip it. True if a row was found.
    async fn set_aside_unclaimable(&self, limit: usize, error: &sqlx::Error) -> bool {
        let exclude = self.unclaimable.lock().expect("unclaimable lock").clone();
        let error = crate::db::redact_sqlx(error);
        match store::find_unclaimable(&self.pool, limit.max(1) as i64, &exclude).await {
            Ok(Some((id, why))) => {
                let message = format!("claiming this job fails: {why}");
                match store::fail_unclaimable(&self.pool, &id, &message).await {
                    Ok(true) => {
                        tracing::error!(
                            job_id = %id,
                            error = %why,
                            "claims failed because of job {id}: {why}; the job is failed \
                             (lastErrorCode unclaimable)"
                        );
                    }
                    _ => {
                        let mut skip = self.unclaimable.lock().expect("unclaimable lock");
                        if skip.len() < 1000 && !skip.contains(&id) {
                            skip.push(id.clone());
                        }
                        tracing::error!(
                            job_id = %id,
                            error = %why,
                            "claims failed because of job {id}: {why}; the database refuses to \
                             mark it failed too, so this runner skips it until it restarts: fix \
                             or delete the row"
                        );
                    }
                }
                true
            }
            Ok(None) => {
                tracing::error!(
                    error = %error,
                    "claims fail with a data error that no single due row explains"
                );
                false
            }
            Err(e) => {
                tracing::warn!(
                    error = %crate::db::redact_sqlx(&e),
                    claim_error = %error,
                    "claims fail with a data error; looking for the row that causes it failed"
                );
                false
            }
        }
    }

    /// Fails a claimed row that cannot be run. True if the write landed.
    async fn fail_rejected(&self, bad: &crate::queue::decode::Rejected) -> bool {
        let message = format!("the job cannot be run: {}", bad.reason);
        match store::fail(&self.pool, &bad.fence, bad.code, &message).await {
            Ok(true) => {
                self.metrics
                    .jobs_finished
                    .with_label_values(&["failed"])
                    .inc();
                self.finished.send_modify(|n| *n += 1);
                tracing::error!(
                    job_id = %bad.fence.id,
                    request_id = bad.request_id.as_deref().unwrap_or(""),
                    code = bad.code,
                    "job {} failed: {message}",
                    bad.fence.id
                );
                true
            }
            Ok(false) => false,
            Err(e) => {
                // Its lease expires and the rescuer puts it back; the next claim fails it again.
                tracing::warn!(
                    job_id = %bad.fence.id,
                    error = %crate::db::redact_sqlx(&e),
                    "failing an unreadable job failed"
                );
                false
            }
        }
    }
}

/// Whether the runner claims on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// LISTEN and the dispatcher: jobs run as they arrive.
    Daemon,
    /// No dispatcher: jobs run only through [`Runner::run_pass`] (a step function for tests and
    /// tools; the maintenance loops still run).
    Passive,
}

/// A running runner. Cheap to clone; every clone drives the same runner.
#[derive(Clone)]
pub struct Runner {
    shared: Arc<Shared>,
    /// Stops claiming and the loops that only matter while running.
    stop: CancellationToken,
    /// Stops what must outlive the drain: the completer, the ledger writers and the lease keeper.
    stop_late: CancellationToken,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// How long [`Runner::not_ready`] waits for `SELECT 1`.
pub const READY_DB_TIMEOUT: Duration = Duration::from_secs(2);

/// One runner's own figures, read from memory ([`Runner::figures`]; the console's "this runner").
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// `host:pid:random` (see [`Runner::locked_by`]).
    pub name: String,
    /// Jobs running now ([`Runner::in_flight`]) and the limit ([`Runner::in_flight_limit`]).
    pub in_flight: usize,
    pub in_flight_limit: u32,
    /// The recent p95 of a Cloud API send and of the orchestrator, in seconds (`None`: none
    /// observed lately).
    pub send_p95: Option<f64>,
    pub orchestrator_p95: Option<f64>,
    /// Statements that waited for a connection so far.
    pub connection_waits: u64,
    /// See [`Runner::listening`].
    pub listening: bool,
}

/// What the drain did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// In-flight jobs that did not finish within the drain timeout and were aborted.
    pub aborted: usize,
    pub released: Rescued,
}

impl Runner {
    /// A runner on `pool` with `settings`, running jobs with `handler`: see [`Start`] for the
    /// rest (LISTEN, metrics, health, mode), then [`Start::start`].
    pub fn builder(
        pool: impl Into<Pool>,
        settings: Arc<Settings>,
        handler: Arc<dyn JobHandler>,
    ) -> Start {
        Start {
            pool: pool.into(),
            settings,
            handler,
            listen_options: None,
            metrics: None,
            health: None,
            mode: Mode::Daemon,
        }
    }
}

/// What a runner starts with ([`Runner::builder`]): the pool, settings and handler it is built
/// with, and the options below.
pub struct Start {
    pool: Pool,
    settings: Arc<Settings>,
    handler: Arc<dyn JobHandler>,
    listen_options: Option<PgConnectOptions>,
    metrics: Option<Arc<Metrics>>,
    health: Option<Arc<Health>>,
    mode: Mode,
}

impl Start {
    /// Where to LISTEN for new jobs (none by default: the interval alone finds them).
    pub fn listen(mut self, options: Option<PgConnectOptions>) -> Self {
        self.listen_options = options;
        self
    }

    /// The metrics to report to (fresh ones by default).
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The health to report to (a fresh one by default).
    pub fn health(mut self, health: Arc<Health>) -> Self {
        self.health = Some(health);
        self
    }

    /// [`Mode::Daemon`] by default.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Establishes LISTEN (best effort: without it the interval still runs jobs) and starts the
    /// runner's tasks.
    pub async fn start(self) -> Runner {
        let Start {
            pool,
            settings,
            handler,
            listen_options,
            metrics,
            health,
            mode,
        } = self;
        let metrics = metrics.unwrap_or_else(|| Arc::new(Metrics::new()));
        let health = health.unwrap_or_default();
        let (tx, rx) = mpsc::channel(4096);
        let stop = CancellationToken::new();
        let stop_late = CancellationToken::new();
        let (writers, writer_tasks) = ledger::Writers::start(
            &pool,
            &metrics,
            &stop_late,
            settings.runner.lease,
            settings.whatsapp.status_retention,
        );
        let first = sizing::size(&settings, sizing::observed_latency(&metrics));
        let workers = first.limit;
        metrics.workers.set(workers as i64);
        metrics.in_flight_limit.set(workers as i64);
        metrics.in_flight_rate.set(first.rate);
        metrics.in_flight_latency.set(first.latency);
        let shared = Arc::new(Shared {
            listen_options: listen_options
                .or_else(|| (!pool.pooled()).then(|| (*pool.connect_options()).clone())),
            pool,
            settings: RwLock::new(settings),
            handler,
            locked_by: locked_by().into(),
            metrics,
            health,
            wake: Notify::new(),
            due_hint: Mutex::new(None),
            completer: tx,
            completing: AtomicUsize::new(0),
            completions_flushed: Notify::new(),
            ledger: writers,
            slots: Arc::new(Semaphore::new(workers as usize)),
            limit: AtomicU32::new(workers),
            tracker: TaskTracker::new(),
            inflight: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            passes: watch::channel(0).0,
            finished: watch::channel(0).0,
            unclaimable: Mutex::new(Vec::new()),
        });

        // Every task under supervision: a death is restarted where safe, otherwise it turns
        // health red (src/supervise.rs; docs/reliability.md, "No silent death").
        use crate::supervise::{self, Restart};
        let health = shared.health.clone();
        let writer_names = [
            "ledger writer (sending)",
            "ledger writer (sent)",
            "status writer",
        ];
        let mut tasks: Vec<JoinHandle<()>> = writer_names
            .into_iter()
            .zip(writer_tasks)
            .map(|(name, t)| supervise::watch(name, health.clone(), stop_late.clone(), t))
            .collect();
        // The completer owns the channel's receiver: it cannot be started again.
        let mut rx = Some(rx);
        tasks.push(supervise::spawn(
            "completer",
            health.clone(),
            stop_late.clone(),
            Restart::No,
            loop_of(&shared, &stop_late, move |s, t| {
                worker::completer(s, rx.take().expect("the completer starts once"), t)
            }),
        ));
        tasks.extend([
            supervise::spawn(
                "lease keeper",
                health.clone(),
                stop_late.clone(),
                Restart::Yes,
                loop_of(&shared, &stop_late, maintenance::lease_keeper),
            ),
            supervise::spawn(
                "rescuer",
                health.clone(),
                stop.clone(),
                Restart::Yes,
                loop_of(&shared, &stop, maintenance::rescuer),
            ),
            supervise::spawn(
                "pruner",
                health.clone(),
                stop.clone(),
                Restart::Yes,
                loop_of(&shared, &stop, maintenance::pruner),
            ),
            supervise::spawn(
                "prober",
                health.clone(),
                stop.clone(),
                Restart::Yes,
                loop_of(&shared, &stop, maintenance::prober),
            ),
            supervise::spawn(
                "sizer",
                health.clone(),
                stop.clone(),
                Restart::Yes,
                loop_of(&shared, &stop, maintenance::sizer),
            ),
        ]);
        if mode == Mode::Daemon {
            // LISTEN before the first pass: a job committed between the two is then either seen
            // by the pass or announced by a notification.
            let mut listener = Some(dispatcher::Listener::connect(&shared).await);
            tasks.push(supervise::spawn(
                "listener",
                health.clone(),
                stop.clone(),
                Restart::Yes,
                // A restarted listener connects anew (and wakes the dispatcher).
                loop_of(&shared, &stop, move |s, t| {
                    dispatcher::listen(s, listener.take().flatten(), t)
                }),
            ));
            tasks.push(supervise::spawn(
                "dispatcher",
                health,
                stop.clone(),
                Restart::Yes,
                loop_of(&shared, &stop, dispatcher::dispatch),
            ));
        }
        tracing::info!(
            locked_by = %shared.locked_by,
            in_flight_limit = workers,
            pinned = first.pinned,
            connections = shared.settings().max_connections(),
            "runner started"
        );
        Runner {
            shared,
            stop,
            stop_late,
            tasks: Arc::new(Mutex::new(tasks)),
        }
    }
}

impl Runner {
    /// The operator's actions on jobs (`queue::admin`) on this runner's pool: what the admin API
    /// and the console act through.
    pub fn queue_admin(&self) -> crate::queue::admin::QueueAdmin {
        crate::queue::admin::QueueAdmin::new(self.shared.pool.clone())
    }

    /// The operator's view and actions on the sending numbers (`whatsapp::numbers`) on this
    /// runner's pool: what the console acts through.
    pub fn number_admin(&self) -> crate::whatsapp::numbers::NumberAdmin {
        crate::whatsapp::numbers::NumberAdmin::new(self.shared.pool.clone())
    }

    /// Applies Meta's statuses (a webhook's) through the status writer, batched with whatever
    /// other statuses are waiting; returns once they are committed (see
    /// [`crate::delivery::statuses::Writer::apply`]).
    pub async fn apply_statuses(
        &self,
        updates: Vec<crate::whatsapp::statuses::StatusUpdate>,
    ) -> Result<Vec<crate::delivery::statuses::Outcome>, String> {
        self.shared.ledger.statuses.apply(updates).await
    }

    /// Counts a status webhook request by its outcome (one of
    /// [`crate::metrics::WEBHOOK_OUTCOMES`]).
    pub fn count_webhook(&self, outcome: &str) {
        self.shared
            .metrics
            .webhook_requests
            .with_label_values(&[outcome])
            .inc();
    }

    /// Counts a status of a webhook that was not handed to the status writer: `kind` one of
    /// [`crate::metrics::STATUS_KINDS`], `result` one of [`crate::metrics::STATUS_RESULTS`].
    pub fn count_status(&self, kind: &str, result: &str) {
        self.shared
            .metrics
            .whatsapp_statuses
            .with_label_values(&[kind, result])
            .inc();
    }

    /// The Prometheus text exposition of what this runner reports (`/metrics`).
    pub fn render_metrics(&self) -> String {
        self.shared.metrics.render()
    }

    /// A number that moves whenever this process saw work (see [`Metrics::activity`]).
    pub fn activity(&self) -> u64 {
        self.shared.metrics.activity()
    }

    /// This runner's own figures, from memory.
    pub fn figures(&self) -> Figures {
        let m = &self.shared.metrics;
        Figures {
            name: self.shared.locked_by.to_string(),
            in_flight: self.in_flight(),
            in_flight_limit: self.in_flight_limit(),
            send_p95: m.send_latency.p95(),
            orchestrator_p95: m.orchestrator_latency.p95(),
            connection_waits: m.db_waits.get(),
            listening: self.listening(),
        }
    }

    /// Liveness: what died, when a supervised task died for good and the process must be
    /// restarted (`/healthz`); `None` while all is well.
    pub fn dead(&self) -> Option<String> {
        self.shared.health.dead()
    }

    /// Whether the drain has begun (see [`Runner::stop_claiming`]).
    pub fn draining(&self) -> bool {
        self.shared.health.draining()
    }

    /// Whether the LISTEN connection is up (always, when the runner polls instead: it has none
    /// to keep).
    pub fn listening(&self) -> bool {
        self.shared.health.listening()
    }

    /// Readiness (`/readyz`): why this runner should not be sent work now, or `None` when it is
    /// ready. In order: a task died, draining, the database does not answer `SELECT 1` within
    /// [`READY_DB_TIMEOUT`], LISTEN is down.
    pub async fn not_ready(&self) -> Option<String> {
        let health = &self.shared.health;
        if let Some(dead) = health.dead() {
            Some(dead)
        } else if health.draining() {
            Some("draining".to_string())
        } else if !matches!(
            tokio::time::timeout(
                READY_DB_TIMEOUT,
                sqlx::query("SELECT 1").execute(&self.shared.pool)
            )
            .await,
            Ok(Ok(_))
        ) {
            Some("database unreachable".to_string())
        } else if !health.listening() {
            Some("LISTEN connection down".to_string())
        } else {
            None
        }
    }

    /// Runs a task of the caller's under this runner's supervision ([`crate::supervise::spawn`]):
    /// a death it is not restarted from turns the runner's health red, like one of its own
    /// tasks' (the HTTP servers are run this way).
    pub fn supervise<F, Fut>(
        &self,
        name: &'static str,
        stop: CancellationToken,
        restart: crate::supervise::Restart,
        make: F,
    ) -> JoinHandle<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        crate::supervise::spawn(name, self.shared.health.clone(), stop, restart, make)
    }

    /// Whether the runner LISTENs (false behind a pooler with no direct URL: it polls).
    pub fn listens(&self) -> bool {
        self.shared.listen_options.is_some()
    }

    /// The dispatcher's backstop interval: `runner.poll_interval`, or with no LISTEN (behind a
    /// pooler with no direct URL) the shorter `runner.pooler_poll_interval`.
    pub fn poll_interval(&self) -> Duration {
        self.shared.poll_interval()
    }

    /// Jobs whose task is running now (the dispatcher's and the passes').
    pub fn in_flight(&self) -> usize {
        self.shared.inflight.lock().map_or(0, |m| m.len())
    }

    /// Aborts the task of an in-flight job, as if its worker died (a test's tool: its claim is
    /// left for the rescuer). False if the job is not in flight.
    pub fn abort_job(&self, id: &JobId) -> bool {
        let handle = self
            .shared
            .inflight
            .lock()
            .expect("inflight lock")
            .get(id)
            .cloned();
        handle.map(|h| h.abort()).is_some()
    }

    pub fn locked_by(&self) -> &str {
        &self.shared.locked_by
    }

    /// The settings in force now: a snapshot of values (what is read per request, like the
    /// tokens); [`Runner::apply`] replaces them.
    pub fn settings(&self) -> Arc<Settings> {
        self.shared.settings()
    }

    /// Successful claim statements so far (dispatcher and passes).
    pub fn passes(&self) -> watch::Receiver<u64> {
        self.shared.passes.subscribe()
    }

    /// Job attempts ended so far, whatever their outcome.
    pub fn finished(&self) -> watch::Receiver<u64> {
        self.shared.finished.subscribe()
    }

    /// Wakes the dispatcher now (the HTTP trigger does this too).
    pub fn wake(&self, source: &'static str) {
        self.shared
            .metrics
            .wakeups
            .with_label_values(&[source])
            .inc();
        self.shared.wake.notify_one();
    }

    /// Applies settings that can change while running: the in-flight limit (`runner.workers`,
    /// `runner.max_in_flight`, the send rate), retry policy, intervals, tokens (read per request),
    /// pacing, the early statuses' retention. The caller reports what needs a restart.
    pub fn apply(&self, settings: Arc<Settings>) {
        self.shared
            .ledger
            .statuses
            .set_retention(settings.whatsapp.status_retention);
        *self.shared.settings.write().expect("settings lock") = settings;
        self.shared.resize(true);
        self.shared.wake.notify_one();
    }

    /// The in-flight limit now (see [`sizing`]).
    pub fn in_flight_limit(&self) -> u32 {
        self.shared.limit.load(Ordering::SeqCst)
    }

    /// Re-sizes the in-flight limit from the latencies observed so far, now (the sizing task
    /// does this every second); returns the sizing.
    pub fn resize_now(&self) -> sizing::Sizing {
        self.shared.resize(false)
    }

    /// Claims and runs up to `max` due jobs now and waits for them: the step function behind the
    /// HTTP trigger (and the tests). Runs beside the dispatcher; `SKIP LOCKED` keeps them apart.
    /// Claims in rounds of at most `min(runner.batch, in-flight limit)` jobs, each round run at
    /// once, until `max` jobs ran or a round comes back short.
    ///
    /// Do not drop this future before it ends: a claim statement cancelled after the server ran
    /// it leaves jobs `running` that no task works on. Run it on a task of its own and stop it
    /// with [`Runner::run_pass_until`] instead.
    pub async fn run_pass(&self, max: u32) -> anyhow::Result<PassReport> {
        self.run_pass_until(max, &CancellationToken::new()).await
    }

    /// [`Runner::run_pass`] that claims no further batch once `stop` is cancelled. The jobs it
    /// has already claimed still run to their end and are in the report.
    pub async fn run_pass_until(
        &self,
        max: u32,
        stop: &CancellationToken,
    ) -> anyhow::Result<PassReport> {
        let mut report = PassReport::default();
        // At most the in-flight limit at once, like the dispatcher.
        let settings = self.shared.settings();
        let batch = settings
            .runner
            .batch
            .min(self.shared.limit.load(Ordering::SeqCst))
            .max(1);
        let mut remaining = max;
        while remaining > 0 && !stop.is_cancelled() {
            if self.shared.closing.load(Ordering::SeqCst) {
                anyhow::bail!("the runner is shutting down");
            }
            let want = remaining.min(batch);
            let (jobs, rejected) = self.shared.claim_batch(want as usize).await?;
            let got = (jobs.len() + rejected.len()) as u32;
            report.failed.extend(rejected);
            let handles: Vec<(JobId, JoinHandle<Outcome>)> = jobs
                .into_iter()
                .map(|job| (job.id.clone(), self.shared.spawn_job(job, None)))
                .collect();
            for (id, handle) in handles {
                match handle.await {
                    Ok(Outcome::Done) => report.processed.push(id),
                    Ok(Outcome::Failed) => report.failed.push(id),
                    Ok(Outcome::Retried | Outcome::Deferred) => report.retried.push(id),
                    Ok(Outcome::Lost) | Err(_) => {}
                }
            }
            remaining -= got;
            if got < want {
                break;
            }
        }
        Ok(report)
    }

    /// The first step of [`Runner::shutdown`], effective at once: no claim starts after it
    /// returns (the dispatcher stops, passes refuse), and readiness reports "draining".
    pub fn stop_claiming(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.health.set_draining();
        self.stop.cancel();
    }

    /// Stops claiming, lets in-flight jobs finish within `runner.drain_timeout`, aborts the rest
    /// and releases their claims without spending an attempt.
    pub async fn shutdown(self) -> DrainReport {
        self.stop_claiming();
        let shared = &self.shared;
        let drain = shared.settings().runner.drain_timeout;
        let running = shared.inflight.lock().expect("inflight lock").len();
        tracing::info!(running, drain_timeout = ?drain, "draining");
        shared.tracker.close();
        let mut report = DrainReport::default();
        if tokio::time::timeout(drain, shared.tracker.wait())
            .await
            .is_err()
        {
            let handles: Vec<AbortHandle> = shared
                .inflight
                .lock()
                .expect("inflight lock")
                .drain()
                .map(|(_, h)| h)
                .collect();
            report.aborted = handles.len();
            tracing::warn!(
                aborted = report.aborted,
                "drain timeout reached; aborting the jobs still running"
            );
            for h in handles {
                h.abort();
            }
            shared.tracker.wait().await;
        }
        let settings = shared.settings();
        let fail_in_doubt = settings.delivery.on_unknown == crate::config::OnUnknown::Fail;
        let backoff = crate::db::retry::Backoff {
            first: Duration::from_millis(200),
            max: Duration::from_millis(1600),
            attempts: Some(5),
        };
        if let Ok(r) = crate::db::retry::with_backoff(
            backoff,
            |attempt, e: &sqlx::Error| {
                tracing::warn!(
                    attempt,
                    error = %crate::db::redact_sqlx(e),
                    "releasing claims failed; their leases will expire and another runner will rescue them"
                );
            },
            || {
                store::reclaim(
                    &shared.pool,
                    Reclaim::Ours(&shared.locked_by),
                    fail_in_doubt,
                    settings.retry.max_attempts as i32,
                )
            },
        )
        .await
        {
            report.released = r;
        }
        self.stop_late.cancel();
        let tasks: Vec<JoinHandle<()>> = self.tasks.lock().expect("tasks lock").drain(..).collect();
        for mut t in tasks {
            // A task stuck in a statement (a lock held elsewhere) must not hold the exit up: its
            // work is fenced, and the leases of anything it held expire.
            if tokio::time::timeout(Duration::from_secs(5), &mut t)
                .await
                .is_err()
            {
                tracing::warn!("a background task did not stop within 5s; abandoning it");
                t.abort();
            }
        }
        tracing::info!(
            aborted = report.aborted,
            released = report.released.requeued,
            "drained"
        );
        report
    }
}

/// A task's body for [`crate::supervise::spawn`]: `f(shared, stop)` each time it is started.
fn loop_of<F, Fut>(
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    mut f: F,
) -> impl FnMut() -> Fut + Send + 'static
where
    F: FnMut(Arc<Shared>, CancellationToken) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (shared, stop) = (shared.clone(), stop.clone());
    move || f(shared.clone(), stop.clone())
}

fn locked_by() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!(
        "{host}:{}:{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}
