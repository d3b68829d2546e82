//! systemd integration: readiness, health-gated watchdog, STATUS lines, stop and reload
//! notifications. Every call is a no-op when `NOTIFY_SOCKET` is unset.
//!
//! What the service manager sees, in order (docs/operations.md, "What the STATUS line means"):
//!
//! ```text
//!  start     STATUS=waiting for the database · EXTEND_TIMEOUT_USEC (while waiting, migrating)
//!            READY=1 + STATUS=<line>           (database, migrations, LISTEN, workers)
//!  running   WATCHDOG=1 every WATCHDOG_USEC/2  (only while the loop ticks and the database answers)
//!            STATUS=<line>                     (every few seconds, and soon after jobs finish)
//!  SIGHUP    RELOADING=1 + MONOTONIC_USEC      (one datagram) ... READY=1 + STATUS=<outcome>
//!  SIGTERM   STOPPING=1 · EXTEND_TIMEOUT_USEC  (only while jobs in flight hold the drain up)
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;

/// systemd shows STATUS in one line of `systemctl status`; keep it readable there.
pub const STATUS_MAX_CHARS: usize = 190;
/// The STATUS line is refreshed at least this often (it says how long ago the last pass was).
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// ... and at most this often, however fast jobs finish.
const STATUS_MIN_GAP: Duration = Duration::from_secs(1);
/// While draining: how often the stop timeout is extended, and the time asked for beyond the
/// drain timeout to release unfinished claims and close the pool.
const DRAIN_EXTEND_EVERY: Duration = Duration::from_secs(5);
const DRAIN_MARGIN: Duration = Duration::from_secs(15);

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// One line (the protocol is newline-separated), at most [`STATUS_MAX_CHARS`] characters.
pub fn clip(line: &str) -> String {
    let one: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one.chars().count() <= STATUS_MAX_CHARS {
        return one;
    }
    let mut out: String = one.chars().take(STATUS_MAX_CHARS - 1).collect();
    out.push('…');
    out
}

/// READY=1 with a STATUS line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(&clip(status))]);
}

pub fn status(line: &str) {
    send(&[NotifyState::Status(&clip(line))]);
}

/// STOPPING=1: the drain begins.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: finishing the jobs in flight, then releasing claims"),
    ]);
}

/// RELOADING=1 with MONOTONIC_USEC, in one datagram (what `Type=notify-reload` expects).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading the configuration"),
        ]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Asks systemd for more time for the current start-up or stop phase: the phase must now end,
/// or this be sent again, within `by`. systemd only ever moves a deadline later, so asking for
/// less than the unit's own timeout still allows changes nothing.
pub fn extend_timeout(by: Duration) {
    send(&[NotifyState::ExtendTimeoutUsec(
        by.as_micros().min(u32::MAX as u128) as u32,
    )]);
}

/// Half the watchdog period systemd asked for, or `None` when there is no watchdog.
/// (WATCHDOG_PID, when set, must be ours: a variable inherited from a parent is not for us.)
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Pets the watchdog every `every`, but only while the dispatcher loop has ticked within
/// `max_age` and the database answered its last probe. Otherwise it stays silent, and systemd
/// restarts the service when the watchdog period runs out.
/// It ends when the drain begins: the dispatcher stops ticking then, and systemd does not watch
/// a stopping service.
pub async fn watchdog(
    health: Arc<Health>,
    every: Duration,
    max_age: Duration,
    stop: CancellationToken,
) {
    let mut healthy = true;
    // The first check one period after READY=1 (systemd arms the watchdog then): the dispatcher
    // has ticked by then, so a fresh start is not reported as unhealthy.
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if health.draining() {
            return;
        }
        let alive = health.alive(max_age);
        if alive {
            send(&[NotifyState::Watchdog]);
            if !healthy {
                tracing::info!("healthy again: watchdog pings resumed");
            }
        } else if healthy {
            tracing::error!(
                db_ok = health.db_ok(),
                since_tick = ?health.since_tick(),
                dead = health.dead().unwrap_or_default(),
                "unhealthy: withholding watchdog pings (systemd restarts the service if this lasts)"
            );
        }
        healthy = alive;
    }
}

/// One STATUS line, at most [`STATUS_MAX_CHARS`] characters:
/// `idle · queued=12 · done=3410 · failed=2 · busy=0/8 · last pass 4s ago`.
/// `done` and `failed` count since start; `queued` is the last queue gauge refresh.
pub fn status_line(health: &Health, metrics: &Metrics) -> String {
    let dead = health.dead().map(|d| format!("UNHEALTHY: {d}"));
    let state = match (&dead, health.not_ready_reason()) {
        (Some(dead), _) => dead.as_str(),
        (None, None) if metrics.workers_busy.get() > 0 => "working",
        (None, None) => "idle",
        (None, Some(reason)) => reason,
    };
    let queued = metrics.jobs.with_label_values(&["queued"]).get();
    let done = metrics.jobs_finished.with_label_values(&["done"]).get();
    let failed = metrics.jobs_finished.with_label_values(&["failed"]).get();
    let last = match health.since_pass() {
        Some(d) => format!("{}s ago", d.as_secs()),
        None => "never".into(),
    };
    let circuit = if metrics.circuit_open.get() > 0 {
        " · circuit OPEN"
    } else {
        ""
    };
    clip(&format!(
        "{state} · queued={queued} · done={done} · failed={failed} · busy={}/{} · last pass {last}{circuit}",
        metrics.workers_busy.get(),
        metrics.workers.get()
    ))
}

/// The STATUS line and what it must keep saying: a note that stays until it no longer applies
/// (a reload that failed, keys that need a restart).
pub struct StatusBoard {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    note: Mutex<Option<String>>,
}

impl StatusBoard {
    pub fn new(health: Arc<Health>, metrics: Arc<Metrics>) -> Self {
        Self {
            health,
            metrics,
            note: Mutex::new(None),
        }
    }

    pub fn line(&self) -> String {
        let line = status_line(&self.health, &self.metrics);
        match &*self.note.lock().expect("status note lock") {
            Some(note) => clip(&format!("{line} · {note}")),
            None => line,
        }
    }

    pub fn set_note(&self, note: Option<String>) {
        *self.note.lock().expect("status note lock") = note;
    }
}

/// Refreshes the STATUS line every few seconds, and soon after jobs finish (`work` counts
/// finished attempts), at most once a second. Each line sent is also logged at debug level.
pub async fn status_loop(
    board: Arc<StatusBoard>,
    mut work: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut work_open = true;
    let mut last = String::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            changed = work.changed(), if work_open => work_open = changed.is_ok(),
        }
        let line = board.line();
        if line != last {
            status(&line);
            tracing::debug!(status = %line, "STATUS");
            last = line;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(STATUS_MIN_GAP) => {}
        }
    }
}

/// While the drain waits for jobs in flight (`in_flight() > 0`), asks for the time it may still
/// take: the rest of `drain_timeout` plus a margin to release claims, refreshed every few
/// seconds (EXTEND_TIMEOUT_USEC). Since systemd only moves its deadline later, this matters only
/// when the drain can outlast `TimeoutStopSec=` (a `runner.drain_timeout` raised above it); it
/// never asks beyond the drain's own bound, so a drain that hangs is still killed.
pub async fn drain_keepalive(drain_timeout: Duration, in_flight: impl Fn() -> usize) {
    let deadline = Instant::now() + drain_timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || in_flight() == 0 {
            return;
        }
        extend_timeout(left + DRAIN_MARGIN);
        tokio::time::sleep(left.min(DRAIN_EXTEND_EVERY)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_one_short_line() {
        assert_eq!(clip("idle · queued=1"), "idle · queued=1");
        assert_eq!(clip("a\nb"), "a b");
        // Multi-byte characters around the limit must not split (String::truncate would panic).
        let long = "·".repeat(400);
        let c = clip(&long);
        assert_eq!(c.chars().count(), STATUS_MAX_CHARS);
        assert!(c.ends_with('…'));
    }

    #[test]
    fn status_line_counts_and_notes() {
        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::new());
        health.set_db_ok(true);
        health.set_listening(true);
        metrics.workers.set(8);
        metrics.jobs_finished.with_label_values(&["done"]).inc_by(3);
        metrics.jobs.with_label_values(&["queued"]).set(12);
        let board = StatusBoard::new(health.clone(), metrics.clone());
        assert_eq!(
            board.line(),
            "idle · queued=12 · done=3 · failed=0 · busy=0/8 · last pass never"
        );
        board.set_note(Some("x".repeat(300)));
        let line = board.line();
        assert!(line.starts_with("idle · queued=12"), "{line}");
        assert_eq!(line.chars().count(), STATUS_MAX_CHARS);
        health.set_db_ok(false);
        assert!(board.line().starts_with("database unreachable · "));
    }
}
