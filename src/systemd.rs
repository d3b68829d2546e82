//! systemd integration: readiness, health-gated watchdog, STATUS lines, stop and reload
//! notifications. Every call is a no-op when `NOTIFY_SOCKET` is unset.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// READY=1 with a STATUS line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// STOPPING=1: the drain begins.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// RELOADING=1 with MONOTONIC_USEC, in one datagram (what `Type=notify-reload` expects).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading"),
        ]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Asks systemd for more time for the current start-up or stop phase.
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
pub async fn watchdog(
    health: Arc<Health>,
    every: Duration,
    max_age: Duration,
    stop: CancellationToken,
) {
    let mut healthy = true;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let alive = health.alive(max_age);
        if alive {
            send(&[NotifyState::Watchdog]);
        } else if healthy {
            tracing::error!(
                db_ok = health.db_ok(),
                since_tick = ?health.since_tick(),
                "unhealthy: withholding watchdog pings (systemd restarts the service if this lasts)"
            );
        }
        if alive && !healthy {
            tracing::info!("healthy again: watchdog pings resumed");
        }
        healthy = alive;
    }
}

/// One STATUS line, at most ~190 characters.
pub fn status_line(health: &Health, metrics: &Metrics) -> String {
    let state = match health.not_ready_reason() {
        None if metrics.workers_busy.get() > 0 => "working",
        None => "idle",
        Some(reason) => reason,
    };
    let queued = metrics.jobs.with_label_values(&["queued"]).get();
    let done = health.done.load(std::sync::atomic::Ordering::Relaxed);
    let failed = health.failed.load(std::sync::atomic::Ordering::Relaxed);
    let last = match health.since_pass() {
        Some(d) => format!("{}s ago", d.as_secs()),
        None => "never".into(),
    };
    let circuit = if metrics.circuit_open.get() > 0 {
        " · circuit OPEN"
    } else {
        ""
    };
    let mut line = format!(
        "{state} · queued={queued} · done={done} · failed={failed} · busy={}/{} · last pass {last}{circuit}",
        metrics.workers_busy.get(),
        metrics.workers.get()
    );
    line.truncate(190);
    line
}

/// Refreshes the STATUS line every few seconds.
pub async fn status_loop(health: Arc<Health>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => status(&status_line(&health, &metrics)),
        }
    }
}
