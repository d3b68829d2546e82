//! The overview's numbers, shared by every open tab: one aggregate statement at most once per
//! [`PERIOD`] per process, however many tabs watch, pushed to them over Server-Sent Events.
//!
//! A single task per process (started by the first subscriber, gone with the last) watches what
//! the daemon already knows in memory, at no database cost: its LISTEN/NOTIFY wake-ups, its
//! claims, finishes, sends and Meta's statuses (the metrics' counters). When one of them moved,
//! it refreshes the snapshot (not more often than [`PERIOD`], nor than ten times the last
//! statement's own time); with nothing moving, once per [`HEARTBEAT`] (the other runners' work
//! and the clock). A slow tab only misses intermediate snapshots (a `watch` keeps the latest);
//! an idle one costs nothing. The statement is the queue's ([`crate::queue::admin::overview`],
//! through the [`HttpState`]'s operator API); it reads only indexes of "OutboundJob"
//! (docs/console.md).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::watch;

use crate::http::HttpState;

/// The shortest time between two aggregate statements.
pub const PERIOD: Duration = Duration::from_secs(2);
/// How late a completion may commit after the time it records and still be counted by the
/// next refresh (see [`Buckets`]).
const LATE: Duration = Duration::from_secs(10);
/// How often the per-minute counts are read again whole (see [`Buckets`]).
const FULL_REBUILD: Duration = Duration::from_secs(3600);
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
    /// The last snapshot and the per-minute counts; the lock makes concurrent refreshes one.
    cache: tokio::sync::Mutex<Cache>,
    /// Aggregate statements run so far (tests and the bench read it).
    queries: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            tx: watch::channel(Frame::default()).0,
            running: std::sync::Mutex::new(false),
            cache: tokio::sync::Mutex::new(Cache::default()),
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
    pub fn subscribe(self: &Arc<Self>, state: &HttpState) -> watch::Receiver<Frame> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        if !*running {
            *running = true;
            tokio::spawn(self.clone().run(state.clone()));
        }
        rx
    }

    /// The snapshot, taken now unless the cached one is younger than the refresh period.
    pub async fn snapshot(&self, state: &HttpState) -> anyhow::Result<Arc<str>> {
        let mut cache = self.cache.lock().await;
        if let Some((at, data, took)) = cache.last.as_ref()
            && at.elapsed() < PERIOD.max(*took * 10)
        {
            return Ok(data.clone());
        }
        let started = Instant::now();
        self.queries.fetch_add(1, Ordering::SeqCst);
        let full = cache
            .buckets
            .full_at
            .is_none_or(|at| at.elapsed() >= FULL_REBUILD);
        let from = if full { None } else { cache.buckets.from };
        let mut value = overview(state, from).await?;
        cache.buckets.merge(&mut value["db"], from);
        if full {
            cache.buckets.full_at = Some(Instant::now());
        }
        let took = started.elapsed();
        value["queryMs"] = json!(took.as_secs_f64() * 1000.0);
        // How many aggregate statements this process ran so far (1 per refresh, whatever the
        // number of tabs): the tests and the bench read it.
        value["statements"] = json!(self.queries());
        let data: Arc<str> = value.to_string().into();
        cache.last = Some((Instant::now(), data.clone(), took));
        Ok(data)
    }

    async fn run(self: Arc<Self>, state: HttpState) {
        let runner = state.runner();
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
            if runner.draining() {
                self.tx.send_modify(|f| f.closing = true);
                let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
                *running = false;
                return;
            }
            let signal = runner.activity();
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
                match self.snapshot(&state).await {
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

#[derive(Default)]
struct Cache {
    last: Option<(Instant, Arc<str>, Duration)>,
    buckets: Buckets,
}

/// Done and failed jobs per minute over the last 24 h, kept between refreshes so that a refresh
/// reads only the latest minutes: a finished job's `"completedAt"` is when it finished, so the
/// older minutes do not change. Each refresh reads again from the start of the minute that was
/// current [`LATE`] before the last one (a completion that committed late still lands: its
/// `"completedAt"` is its transaction's start), and everything once per
/// [`FULL_REBUILD`] (a retry or the pruner takes rows out of the past). What the statement
/// reads is bounded by the time since the last refresh, not by the day's volume.
#[derive(Default)]
struct Buckets {
    /// Unix minute → (done, failed).
    minutes: BTreeMap<i64, (i64, i64)>,
    /// Where the next refresh reads from; `None`: the whole 24 h.
    from: Option<DateTime<Utc>>,
    full_at: Option<Instant>,
}

impl Buckets {
    /// Takes the statement's `minutes` (read from `from` on) into the counts, and replaces them
    /// in `db` with the totals and the two charts.
    fn merge(&mut self, db: &mut serde_json::Value, from: Option<DateTime<Utc>>) {
        let now: DateTime<Utc> = db
            .get("now")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_else(Utc::now);
        let now_min = now.timestamp().div_euclid(60);
        match from {
            None => self.minutes.clear(),
            Some(f) => {
                let first = f.timestamp().div_euclid(60);
                self.minutes.retain(|m, _| *m < first);
            }
        }
        if let Some(rows) = db.get("minutes").and_then(|v| v.as_array()) {
            for r in rows {
                let at: Option<DateTime<Utc>> = r
                    .get("at")
                    .and_then(|v| serde_json::from_value(v.clone()).ok());
                let n = |k: &str| r.get(k).and_then(|v| v.as_i64()).unwrap_or(0);
                if let Some(at) = at {
                    self.minutes
                        .insert(at.timestamp().div_euclid(60), (n("done"), n("failed")));
                }
            }
        }
        self.minutes.retain(|m, _| *m > now_min - 24 * 60);
        self.from = DateTime::from_timestamp(
            (now.timestamp() - LATE.as_secs() as i64).div_euclid(60) * 60,
            0,
        );

        let at = |m: i64| DateTime::from_timestamp(m * 60, 0).unwrap_or_default();
        let (done, failed) = self
            .minutes
            .values()
            .fold((0, 0), |(d, f), (a, b)| (d + a, f + b));
        let per_minute: Vec<serde_json::Value> = self
            .minutes
            .range(now_min - 59..)
            .map(|(m, (d, f))| json!({ "at": at(*m), "done": d, "failed": f }))
            .collect();
        let mut hours: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for (m, (d, f)) in &self.minutes {
            let h = hours.entry(m.div_euclid(60)).or_default();
            h.0 += d;
            h.1 += f;
        }
        let per_hour: Vec<serde_json::Value> = hours
            .iter()
            .map(|(h, (d, f))| json!({ "at": at(h * 60), "done": d, "failed": f }))
            .collect();
        if let Some(o) = db.as_object_mut() {
            o.remove("minutes");
            o.insert("done24h".into(), json!(done));
            o.insert("failed24h".into(), json!(failed));
            o.insert("perMinute".into(), json!(per_minute));
            o.insert("perHour".into(), json!(per_hour));
        }
    }
}

/// The one aggregate statement, and this process's own figures.
async fn overview(
    state: &HttpState,
    from: Option<DateTime<Utc>>,
) -> anyhow::Result<serde_json::Value> {
    let db = state.admin().overview(from).await?;
    let me = state.runner().figures();
    let ms = |s: Option<f64>| s.map(|s| (s * 1000.0 * 10.0).round() / 10.0);
    Ok(json!({
        "generatedAt": chrono::Utc::now(),
        "db": db,
        "thisRunner": {
            "name": me.name,
            "inFlight": me.in_flight,
            "inFlightLimit": me.in_flight_limit,
            "sendP95Ms": ms(me.send_p95),
            "orchestratorP95Ms": ms(me.orchestrator_p95),
            "connectionWaits": me.connection_waits,
            "listening": me.listening,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_merge_the_latest_minutes_into_the_day() {
        let mut b = Buckets::default();
        let mut db = json!({
            "now": "2026-12-06T12:30:30Z",
            "minutes": [
                {"at": "2026-12-05T13:00:00Z", "done": 7, "failed": 0},
                {"at": "2026-12-06T12:29:00Z", "done": 2, "failed": 1},
                {"at": "2026-12-06T12:30:00Z", "done": 3, "failed": 0},
            ],
        });
        b.merge(&mut db, None);
        assert_eq!(db["done24h"], 12);
        assert_eq!(db["failed24h"], 1);
        assert_eq!(db["perMinute"].as_array().unwrap().len(), 2);
        assert_eq!(db["perHour"].as_array().unwrap().len(), 2);
        assert!(db.get("minutes").is_none());
        // The next read starts at the minute current 10 s before, and replaces those minutes.
        let from = b.from.unwrap();
        assert_eq!(from.to_rfc3339(), "2026-12-06T12:30:00+00:00");
        let mut db = json!({
            "now": "2026-12-06T12:31:05Z",
            "minutes": [
                {"at": "2026-12-06T12:30:00Z", "done": 5, "failed": 0},
                {"at": "2026-12-06T12:31:00Z", "done": 1, "failed": 0},
            ],
        });
        b.merge(&mut db, Some(from));
        // 12:29 is kept; 12:30 is replaced.
        assert_eq!(db["done24h"], 7 + 2 + 5 + 1);
        assert_eq!(db["failed24h"], 1);
        assert_eq!(b.from.unwrap().to_rfc3339(), "2026-12-06T12:30:00+00:00");
        // A minute read again with no row any more (a retry took its jobs out) is gone.
        let mut db = json!({ "now": "2026-12-06T12:31:20Z", "minutes": [
            {"at": "2026-12-06T12:31:00Z", "done": 1, "failed": 0},
        ]});
        b.merge(&mut db, b.from);
        assert_eq!(db["done24h"], 7 + 2 + 1);
        // A day later the old minutes leave.
        let mut db = json!({ "now": "2026-12-07T12:31:00Z", "minutes": [] });
        b.merge(&mut db, b.from);
        assert_eq!(db["done24h"], 0);
    }
}
