//! The background loops that keep the table honest: the rescuer (expired leases), the lease
//! keeper (our leases), the pruner (retention) and the prober (database health, queue gauges).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::config::OnUnknown;
use crate::db::redact_sqlx;
use crate::db::wait::patiently;
use crate::queue::store::{self, Reclaim};

/// The longest time between two database probes, and between a probe and its answer.
const PROBE_EVERY: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// The queue gauges (`queued`, `running`: partial-index counts) are refreshed every this many
/// probes (15 s by default)...
const STATS_EVERY_N_PROBES: u32 = 3;
/// ...and the finished statuses, which cost a pass over the retained rows, every this many
/// refreshes (5 minutes by default).
const FINISHED_EVERY_N_STATS: u32 = 20;

/// Waits `period` (re-read from the settings each time) or until `stop`. False on stop.
async fn pause(stop: &CancellationToken, period: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(period) => true,
    }
}

/// Takes back jobs whose lease expired: their runner died or hung.
pub async fn rescuer(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let settings = shared.settings();
        if !pause(&stop, settings.runner.rescue_interval).await {
            return;
        }
        let fail_in_doubt = settings.delivery.on_unknown == OnUnknown::Fail;
        match store::reclaim(
            &shared.pool,
            Reclaim::ExpiredOrStale {
                no_lease_grace: settings.runner.foreign_running_grace,
            },
            fail_in_doubt,
            settings.retry.max_attempts as i32,
        )
        .await
        {
            Ok(r) if r.requeued + r.failed > 0 => {
                shared.metrics.rescued_jobs.inc_by(r.requeued + r.failed);
                tracing::warn!(
                    requeued = r.requeued,
                    failed = r.failed,
                    in_doubt = r.in_doubt,
                    "rescued jobs whose runner stopped answering"
                );
                if r.in_doubt > 0 && fail_in_doubt {
                    tracing::error!(
                        messages = r.in_doubt,
                        "messages were mid-send when their runner died: marked unknown, not resent (lastErrorCode delivery_unknown)"
                    );
                }
                if r.requeued > 0 {
                    shared.wake.notify_one();
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %redact_sqlx(&e), "rescue pass failed"),
        }
    }
}

/// Extends the leases of the jobs this runner is working on, a third of a lease at a time.
pub async fn lease_keeper(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let lease = shared.settings().runner.lease;
        if !pause(&stop, lease / 3).await {
            return;
        }
        let ids: Vec<crate::queue::JobId> = shared
            .inflight
            .lock()
            .expect("inflight lock")
            .keys()
            .cloned()
            .collect();
        if ids.is_empty() {
            continue;
        }
        let extend = || store::extend_leases(&shared.pool, &shared.locked_by, &ids, lease);
        if let Err(e) = patiently(lease / 3, &shared.metrics.db_waits, extend).await {
            tracing::warn!(error = %redact_sqlx(&e), "extending leases failed");
        }
    }
}

/// Re-sizes the in-flight limit every second from the latencies observed (see
/// [`super::sizing`]).
pub async fn sizer(shared: Arc<Shared>, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        shared.resize(false);
    }
}

/// Deletes finished jobs past `runner.retention`, in small batches.
pub async fn pruner(shared: Arc<Shared>, stop: CancellationToken) {
    const BATCH: i64 = 1000;
    loop {
        let settings = shared.settings();
        if !pause(&stop, settings.runner.prune_interval).await {
            return;
        }
        let retention = settings.runner.retention;
        if retention.is_zero() {
            continue;
        }
        let mut total = 0;
        // Bounded per run: a huge backlog is worked off over several runs.
        for _ in 0..100 {
            match store::prune(&shared.pool, retention, BATCH).await {
                Ok(n) => {
                    total += n;
                    if n < BATCH as u64 || stop.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %redact_sqlx(&e), "pruning finished jobs failed");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(deleted = total, "pruned finished jobs past retention");
        }
    }
}

/// How often the database is probed: five dispatcher heartbeats (5 s by default), at most
/// [`PROBE_EVERY`]. The watchdog goes silent within about one probe of the database going away.
/// Like the heartbeat itself, fixed at start.
pub fn probe_period(heartbeat: Duration) -> Duration {
    (heartbeat * 5).min(PROBE_EVERY)
}

/// Probes the database (health, watchdog), refreshes the queue gauges and runs the delivery
/// handler's upkeep ([`crate::delivery::JobHandler::maintain`]).
pub async fn prober(shared: Arc<Shared>, stop: CancellationToken) {
    let period = probe_period(shared.settings().runner.heartbeat);
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut n: u32 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let ok = matches!(
            tokio::time::timeout(
                period.min(PROBE_TIMEOUT),
                sqlx::query("SELECT 1").execute(&shared.pool)
            )
            .await,
            Ok(Ok(_))
        );
        if ok != shared.health.db_ok() {
            if ok {
                tracing::info!("database reachable");
            } else {
                tracing::warn!("database unreachable");
            }
        }
        shared.health.set_db_ok(ok);
        if ok && n % STATS_EVERY_N_PROBES == 0 {
            let all = (n / STATS_EVERY_N_PROBES) % FINISHED_EVERY_N_STATS == 0;
            refresh_gauges(&shared, all).await;
        }
        if ok {
            let ctx = crate::delivery::JobContext::new(
                shared.pool.clone(),
                shared.settings(),
                shared.metrics.clone(),
                shared.ledger.clone(),
            );
            // Bounded: the probe's own rhythm (health, watchdog) never waits on it.
            let upkeep = shared.handler.maintain(&ctx, &shared.locked_by);
            if tokio::time::timeout(period, upkeep).await.is_err() {
                tracing::debug!("the delivery handler's upkeep took longer than a probe period");
            }
        }
        n = n.wrapping_add(1);
    }
}

/// One cheap query pair on a timer, never per scrape. Without `all`, only the `queued` and
/// `running` gauges move (the others keep their last count).
pub async fn refresh_gauges(shared: &Shared, all: bool) {
    match store::queue_stats(&shared.pool, all).await {
        Ok(stats) => {
            for status in crate::queue::STATUSES {
                if !all && !matches!(status, "queued" | "running") {
                    continue;
                }
                let count = stats
                    .by_status
                    .iter()
                    .find(|(s, _)| s == status)
                    .map_or(0, |(_, c)| *c);
                shared.metrics.jobs.with_label_values(&[status]).set(count);
            }
            shared
                .metrics
                .oldest_queued_age
                .set(stats.oldest_queued_age.map_or(0.0, |d| d.as_secs_f64()));
        }
        Err(e) => tracing::debug!(error = %redact_sqlx(&e), "refreshing queue gauges failed"),
    }
}
