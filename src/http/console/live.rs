//! The overview's numbers, shared by every open tab: one aggregate statement at most once per
//! [`PERIOD`] per process, however many tabs watch, pushed to them over Server-Sent Events.
//!
//! A single task per process (started by the first subscriber, gone with the last) watches what
//! the daemon already knows in memory, at no database cost: its LISTEN/NOTIFY wake-ups, its
//! claims, finishes, sends and Meta's statuses (the metrics' counters). When one of them moved,
//! it refreshes the snapshot (not more often than [`PERIOD`], nor than ten times the last
//! statement's own time); with nothing moving, once per [`HEARTBEAT`] (the other runners' work
//! and the clock). A slow tab only misses intermediate snapshots (a `watch` keeps the latest);
//! an idle one costs nothing. The statement reads only indexes of "OutboundJob" (docs/console.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch;

use crate::metrics::{OUTCOMES, STATUS_KINDS, STATUS_RESULTS};
use crate::runner::Runner;

/// The shortest time between two aggregate statements.
pub const PERIOD: Duration = Duration::from_secs(2);
/// A refresh with nothing moving in this process.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// How often the task looks at the in-memory counters.
const TICK: Duration = Duration::from_millis(250);

/// What a tab receives.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    /// The overview as JSON.
    pub data: Option<Arc<str>>,
    /// The daemon is stopping: the stream ends.
    pub closing: bool,
}

/// The shared snapshot and its refresh task.
pub struct Hub {
    tx: watch::Sender<Frame>,
    /// Whether the task runs (changed only under this lock, with the subscriptions).
    running: std::sync::Mutex<bool>,
    /// The last snapshot and when it was taken; the lock makes concurrent refreshes one.
    cache: tokio::sync::Mutex<Option<(Instant, Arc<str>, Duration)>>,
    /// Aggregate statements run so far (tests and the bench read it).
    queries: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            tx: watch::channel(Frame::default()).0,
            running: std::sync::Mutex::new(false),
            cache: tokio::sync::Mutex::new(None),
            queries: AtomicU64::new(0),
        }
    }
}

impl Hub {
    /// Aggregate statements run so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::SeqCst)
    }

    /// Tabs watching now.
    pub fn watchers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// A subscription to the snapshots; starts the task if none runs.
    pub fn subscribe(self: &Arc<Self>, runner: &Runner) -> watch::Receiver<Frame> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        if !*running {
            *running = true;
            tokio::spawn(self.clone().run(runner.clone()));
        }
        rx
    }

    /// The snapshot, taken now unless the cached one is younger than the refresh period.
    pub async fn snapshot(&self, runner: &Runner) -> anyhow::Result<Arc<str>> {
        let mut cache = self.cache.lock().await;
        if let Some((at, data, took)) = cache.as_ref()
            && at.elapsed() < PERIOD.max(*took * 10)
        {
            return Ok(data.clone());
        }
        let started = Instant::now();
        self.queries.fetch_add(1, Ordering::SeqCst);
        let mut value = overview(runner).await?;
        let took = started.elapsed();
        value["queryMs"] = json!(took.as_secs_f64() * 1000.0);
        // How many aggregate statements this process ran so far (1 per refresh, whatever the
        // number of tabs): the tests and the bench read it.
        value["statements"] = json!(self.queries());
        let data: Arc<str> = value.to_string().into();
        *cache = Some((Instant::now(), data.clone(), took));
        Ok(data)
    }

    async fn run(self: Arc<Self>, runner: Runner) {
        let mut last_signal = None;
        let mut last_refresh: Option<Instant> = None;
        loop {
            {
                let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
                if self.tx.receiver_count() == 0 {
                    *running = false;
                    return;
                }
            }
            if runner.health().draining() {
                self.tx.send_modify(|f| f.closing = true);
                let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
                *running = false;
                return;
            }
            let signal = activity(&runner);
            let due = match last_refresh {
                None => true,
                Some(at) => {
                    (Some(signal) != last_signal && at.elapsed() >= PERIOD)
                        || at.elapsed() >= HEARTBEAT
                }
            };
            if due {
                last_signal = Some(signal);
                last_refresh = Some(Instant::now());
                match self.snapshot(&runner).await {
                    Ok(data) => {
                        self.tx.send_modify(|f| f.data = Some(data));
                    }
                    Err(e) => tracing::warn!(error = %e, "console: the overview could not be read"),
                }
            }
            tokio::time::sleep(TICK).await;
        }
    }
}

/// A number that moves whenever the daemon saw work: wake-ups (NOTIFY, triggers, due
/// backoffs), claims, finishes, sends and Meta's statuses. Read from memory only.
fn activity(runner: &Runner) -> u64 {
    let m = runner.metrics();
    let mut n = m.jobs_claimed.get() + m.messages_sent.get() + m.db_waits.get();
    for source in ["notify", "trigger", "due"] {
        n += m.wakeups.with_label_values(&[source]).get();
    }
    for outcome in OUTCOMES {
        n += m.jobs_finished.with_label_values(&[outcome]).get();
    }
    for kind in STATUS_KINDS {
        for result in STATUS_RESULTS {
            n += m.whatsapp_statuses.with_label_values(&[kind, result]).get();
        }
    }
    n
}

/// The one aggregate statement, and this process's own figures.
async fn overview(runner: &Runner) -> anyhow::Result<serde_json::Value> {
    let db: serde_json::Value = sqlx::query_scalar(OVERVIEW_SQL)
        .persistent(false)
        .fetch_one(runner.pool())
        .await?;
    let m = runner.metrics();
    let ms = |s: Option<f64>| s.map(|s| (s * 1000.0 * 10.0).round() / 10.0);
    Ok(json!({
        "generatedAt": chrono::Utc::now(),
        "db": db,
        "thisRunner": {
            "name": runner.locked_by(),
            "inFlight": runner.in_flight(),
            "inFlightLimit": runner.in_flight_limit(),
            "sendP95Ms": ms(m.send_latency.p95()),
            "orchestratorP95Ms": ms(m.orchestrator_latency.p95()),
            "connectionWaits": m.db_waits.get(),
            "listening": runner.health().listening(),
        },
    }))
}

/// Counts by status except `done`, each from a partial index (queued; running with and without a
/// lease; failed and cancelled: `migrations/20261206120000_console.sql`); `done` is counted over
/// the last 24 h from the `"completedAt"` index, all rows only as the planner's estimate; the
/// oldest due job, finishes per minute (1 h) and per hour (24 h), the fates of the messages of
/// the jobs finished in the last hour, unsettled sends, the runners holding jobs, and the
/// runners' connections.
pub const OVERVIEW_SQL: &str = r#"
SELECT json_build_object(
  'byStatus', json_build_object(
      'queued', (SELECT count(*) FROM "OutboundJob" WHERE status = 'queued'),
      'running', (SELECT count(*) FROM "OutboundJob"
                  WHERE "leaseUntil" IS NOT NULL AND status = 'running')
               + (SELECT count(*) FROM "OutboundJob"
                  WHERE status = 'running' AND "leaseUntil" IS NULL),
      'failed', (SELECT count(*) FROM "OutboundJob" WHERE status = 'failed'),
      'cancelled', (SELECT count(*) FROM "OutboundJob" WHERE status = 'cancelled')),
  'done24h', (SELECT count(*) FROM "OutboundJob"
              WHERE "completedAt" > now() - interval '24 hours' AND status = 'done'),
  'failed24h', (SELECT count(*) FROM "OutboundJob"
                WHERE "completedAt" > now() - interval '24 hours' AND status = 'failed'),
  'totalEstimate', (SELECT greatest(reltuples, 0)::bigint FROM pg_class
                    WHERE oid = '"OutboundJob"'::regclass),
  'oldestDueSeconds', (SELECT CASE WHEN isfinite(m) THEN EXTRACT(EPOCH FROM now() - m)::float8 END
                       FROM (SELECT min("runAt") AS m FROM "OutboundJob"
                             WHERE status = 'queued' AND "runAt" <= now()) q),
  'perMinute', (SELECT coalesce(json_agg(json_build_object('at', at, 'done', d, 'failed', f) ORDER BY at), '[]'::json)
                FROM (SELECT date_trunc('minute', "completedAt") AS at,
                             count(*) FILTER (WHERE status = 'done') AS d,
                             count(*) FILTER (WHERE status = 'failed') AS f
                      FROM "OutboundJob"
                      WHERE "completedAt" > now() - interval '1 hour' AND isfinite("completedAt")
                      GROUP BY 1) b),
  'perHour', (SELECT coalesce(json_agg(json_build_object('at', at, 'done', d, 'failed', f) ORDER BY at), '[]'::json)
              FROM (SELECT date_trunc('hour', "completedAt") AS at,
                           count(*) FILTER (WHERE status = 'done') AS d,
                           count(*) FILTER (WHERE status = 'failed') AS f
                    FROM "OutboundJob"
                    WHERE "completedAt" > now() - interval '24 hours' AND isfinite("completedAt")
                    GROUP BY 1) b),
  'messages', (SELECT json_build_object(
                  'sent', count(*) FILTER (WHERE m.status = 'sent'),
                  'delivered', count(*) FILTER (WHERE m.status = 'delivered'),
                  'read', count(*) FILTER (WHERE m.status = 'read'),
                  'failed', count(*) FILTER (WHERE m.status = 'failed'))
               FROM "OutboundJob" j JOIN "OutboundMessage" m ON m."jobId" = j.id
               WHERE j."completedAt" > now() - interval '1 hour'),
  'unknownUnsettled', (SELECT count(*) FROM "OutboundMessage" WHERE status = 'unknown'),
  'runners', (SELECT coalesce(json_agg(json_build_object('name', r, 'running', n) ORDER BY r), '[]'::json)
              FROM (SELECT "lockedBy" AS r, count(*) AS n FROM "OutboundJob"
                    WHERE "leaseUntil" IS NOT NULL AND status = 'running' GROUP BY 1) x),
  'connections', (SELECT coalesce(json_agg(json_build_object('host', h, 'connections', n) ORDER BY h), '[]'::json)
                  FROM (SELECT coalesce(host(client_addr), 'local') AS h, count(*) AS n
                        FROM pg_stat_activity
                        WHERE application_name = 'outbound-runner' AND datname = current_database()
                        GROUP BY 1) c)
)"#;
