//! When to claim: the dispatcher loop and the LISTEN connection that wakes it.
//!
//! Wake sources: a NOTIFY on `outbound_jobs` (sent by the insert trigger at commit), the
//! `runner.poll_interval` backstop (notifications can be lost), a trigger (HTTP), and the due
//! time of a job this runner put back with a backoff. After a wake the dispatcher claims batches
//! sized to its free worker slots (while the queue is busy, with a moment's wait for the slots
//! about to be freed) until a claim comes back short: the queue has no due job left.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::worker::COMPLETIONS_AHEAD;
use crate::db::redact_sqlx;
use crate::queue::{CHANNEL, store};
use crate::whatsapp::pacing::{self, Room};

/// How often the LISTEN connection is probed. A connection cut without a reset (a dead NAT
/// entry, a firewall) delivers nothing and reports nothing; a query on it finds out.
const LISTEN_PROBE: Duration = Duration::from_secs(15);

/// How long a claim waits at most for the slots of jobs about to finish (see [`dispatch`]).
const CLAIM_GATHER: Duration = crate::db::batch::LINGER;

/// How long the dispatcher pauses before a claim while statements wait for connections.
const SATURATED_PAUSE: Duration = Duration::from_millis(100);

/// The first pause before a LISTEN reconnect; it doubles on every failure up to
/// [`LISTEN_BACKOFF_MAX`].
const LISTEN_BACKOFF_FIRST: Duration = Duration::from_millis(250);

/// The longest pause between LISTEN reconnects. Short, because every second without LISTEN is
/// a second a new job may wait for `runner.poll_interval` and `/readyz` says 503: after a
/// database restart LISTEN is back within this much of the server (docs/queue.md). One attempt
/// every 2 s is a connection attempt the server barely notices.
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A LISTEN connection.
pub struct Listener(PgListener);

impl Listener {
    /// Connects and LISTENs, or logs why not (the listen loop keeps trying).
    pub async fn connect(shared: &Shared) -> Option<Listener> {
        let Some(options) = shared.listen_options.clone() else {
            // Behind a transaction-mode pooler with no direct URL: nothing to listen on (the
            // dispatcher polls instead), and nothing the readiness check should wait for.
            shared.health.set_listening(true);
            return None;
        };
        let attempt = async {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_lazy_with(options);
            let mut l = PgListener::connect_with(&pool).await?;
            l.eager_reconnect(false);
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match tokio::time::timeout(Duration::from_secs(15), attempt).await {
            Ok(Ok(l)) => {
                shared.health.set_listening(true);
                tracing::info!(channel = CHANNEL, "listening for new jobs");
                Some(Listener(l))
            }
            Ok(Err(e)) => {
                shared.health.set_listening(false);
                tracing::warn!(error = %redact_sqlx(&e), "LISTEN failed; polling every runner.poll_interval until it works");
                None
            }
            Err(_) => {
                shared.health.set_listening(false);
                tracing::warn!(
                    "LISTEN timed out; polling every runner.poll_interval until it works"
                );
                None
            }
        }
    }
}

/// Keeps a LISTEN connection up and turns notifications into wakes. Reconnects with backoff;
/// after every reconnect it wakes the dispatcher, since notifications sent meanwhile are lost.
pub async fn listen(shared: Arc<Shared>, mut listener: Option<Listener>, stop: CancellationToken) {
    if shared.listen_options.is_none() {
        return;
    }
    let mut backoff = LISTEN_BACKOFF_FIRST;
    loop {
        if let Some(Listener(mut l)) = listener.take() {
            backoff = LISTEN_BACKOFF_FIRST;
            let mut probe = tokio::time::interval_at(Instant::now() + LISTEN_PROBE, LISTEN_PROBE);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    msg = l.try_recv() => match msg {
                        Ok(Some(_)) => {
                            // Drain what is already buffered: a burst of inserts is one wake.
                            while l.next_buffered().is_some() {}
                            shared.metrics.wakeups.with_label_values(&["notify"]).inc();
                            shared.wake.notify_one();
                        }
                        Ok(None) => {
                            tracing::warn!("LISTEN connection lost; reconnecting");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %redact_sqlx(&e), "LISTEN connection failed; reconnecting");
                            break;
                        }
                    },
                    _ = probe.tick() => {
                        let alive = tokio::time::timeout(
                            Duration::from_secs(5),
                            sqlx::query("SELECT 1").execute(&mut l),
                        ).await;
                        if !matches!(alive, Ok(Ok(_))) {
                            tracing::warn!("LISTEN connection stopped answering; reconnecting");
                            break;
                        }
                    }
                }
            }
            shared.health.set_listening(false);
        }
        // Half to all of the backoff: daemons cut off together do not reconnect in step.
        let pause = backoff.mul_f64(rand::random_range(0.5..=1.0));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
        listener = Listener::connect(&shared).await;
        if listener.is_some() {
            shared.wake.notify_one();
        }
    }
}

/// The dispatcher loop. Claims only while it holds free worker slots, so a claimed job never
/// waits in memory for a worker (its lease runs only while it is being worked on).
pub async fn dispatch(shared: Arc<Shared>, stop: CancellationToken) {
    let settings = shared.settings();
    let mut poll_every = shared.poll_interval();
    let mut interval = tokio::time::interval_at(Instant::now() + poll_every, poll_every);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut beat_every = settings.runner.heartbeat;
    let mut heartbeat = tokio::time::interval(beat_every);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut error_backoff = Duration::from_millis(250);
    let mut last_waits = shared.metrics.db_waits.get();
    // Start with a pass: jobs may have been queued while no runner was up.
    let mut pending = true;
    // The last claim came back full: the queue is busy.
    let mut busy = false;

    loop {
        shared.health.tick();
        shared
            .metrics
            .last_loop_timestamp
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        let settings = shared.settings();
        if shared.poll_interval() != poll_every {
            poll_every = shared.poll_interval();
            interval = tokio::time::interval_at(Instant::now() + poll_every, poll_every);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        if settings.runner.heartbeat != beat_every {
            beat_every = settings.runner.heartbeat;
            heartbeat = tokio::time::interval(beat_every);
            heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }

        if !pending {
            let due = *shared.due_hint.lock().expect("due hint lock");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = shared.wake.notified() => {}
                _ = interval.tick() => {
                    shared.metrics.wakeups.with_label_values(&["interval"]).inc();
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    shared.metrics.wakeups.with_label_values(&["due"]).inc();
                }
                _ = heartbeat.tick() => continue,
            }
            // A hint that has come due is spent; a later one stays.
            let mut hint = shared.due_hint.lock().expect("due hint lock");
            if hint.is_some_and(|h| h <= Instant::now()) {
                *hint = None;
            }
        }

        // Completions lag (the database is slow to commit them): wait for them rather than
        // claim more jobs that would only wait behind them with their leases running. Some
        // in-flight limits' worth (`COMPLETIONS_AHEAD`): the batches being written and those
        // gathering never hold the claims up (with one, 32-worker drains were a fifth slower;
        // with two, a third of a drain waited here).
        let flushed = shared.completions_flushed.notified();
        let workers = shared.limit.load(Ordering::SeqCst) as usize;
        if shared.completing.load(Ordering::SeqCst) >= COMPLETIONS_AHEAD * workers.max(1) {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = flushed => {}
                _ = heartbeat.tick() => {}
            }
            pending = true;
            continue;
        }

        // Back-pressure: while statements wait for connections, more jobs would only wait beside
        // them. Claim a little at a time, after a pause, until the waits stop.
        let waits = shared.metrics.db_waits.get();
        let saturated = waits != last_waits;
        last_waits = waits;
        if saturated {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(SATURATED_PAUSE) => {}
            }
        }
        let batch = if saturated {
            settings.pool_size().max(1)
        } else {
            settings.runner.batch
        };

        // Claim only what can start: a job claimed while the sending numbers' throughput slots
        // are taken further ahead than it may wait for one would only be deferred back to the
        // queue and claimed again (docs/numbers.md, "Fairness"). At most a slot's span.
        let (room, span) = match shared.handler.room(&settings) {
            Room::Any => (u32::MAX, 0),
            Room::Jobs(n) => (u32::try_from(n).unwrap_or(u32::MAX), 0),
            Room::Busy { jobs, span } => (u32::try_from(jobs).unwrap_or(u32::MAX), span),
            Room::At(at) => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(at) => {}
                    _ = heartbeat.tick() => {}
                }
                pending = true;
                continue;
            }
        };
        let batch = batch.min(room).max(1);

        // Free worker slots: wait for one, then take every other free one up to a batch.
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            p = shared.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = heartbeat.tick() => { pending = true; continue }
        };
        let mut permits: Vec<OwnedSemaphorePermit> = vec![first];
        let free = |permits: &mut Vec<OwnedSemaphorePermit>| {
            while permits.len() < batch as usize {
                match shared.slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
        };
        free(&mut permits);
        // Sized by what can start soon, not only by what is free this instant: while the queue
        // is busy (the last claim came back full) and most slots are taken, the jobs about to
        // finish give theirs back within moments; a short, bounded wait lets one claim take
        // them together instead of one claim per slot. A claimed job still never waits for a
        // slot (its lease runs only while it is worked on), and an idle runner, whose slots are
        // free, never waits.
        let target = (batch as usize).min(workers.max(1));
        // The sending numbers' slots are taken ahead (`Room::Busy`): the jobs claimed now would
        // wait for their slots anyway, so the claim waits (up to a mark span) for the worker
        // slots of a whole span's sends, and they share their claim, prepare and mark
        // statements (at 80/s, one claim of 19 instead of 19 claims of one).
        let (target, gather) = if span > 1 {
            (target.min(span), pacing::MARK_SPAN)
        } else {
            (target, CLAIM_GATHER)
        };
        let wait = if span > 1 {
            permits.len() < target
        } else {
            busy && permits.len() * 2 < target
        };
        if wait {
            let deadline = Instant::now() + gather;
            while permits.len() < target {
                let more = tokio::time::timeout_at(deadline, shared.slots.clone().acquire_owned());
                let more = tokio::select! {
                    _ = stop.cancelled() => return,
                    more = more => more,
                };
                match more {
                    Ok(Ok(p)) => {
                        permits.push(p);
                        free(&mut permits);
                    }
                    _ => break,
                }
            }
        }
        let want = permits.len();
        match shared.claim(want).await {
            Ok(jobs) => {
                shared.handler.claimed(jobs.len());
                error_backoff = Duration::from_millis(250);
                pending = jobs.len() == want;
                busy = pending;
                let mut slots = permits.drain(..);
                for job in jobs {
                    // The slot is free again when the job's task ends, however it ends. A job
                    // beyond the slots taken (a claim must never return more than it asked for,
                    // but if one did) still runs rather than waiting claimed for its lease to
                    // expire.
                    shared.spawn_job(job, slots.next());
                }
                drop(slots);
                drop(permits);
                if !pending {
                    schedule_next_due(&shared).await;
                }
            }
            Err(e) if crate::db::wait::is_wait(&e) => {
                // The database is busy, not down: no job was claimed; claim less for a while.
                drop(permits);
                shared.metrics.db_waits.inc();
                tracing::debug!(error = %redact_sqlx(&e), "claiming waited for a connection");
                pending = true;
            }
            Err(e) => {
                drop(permits);
                shared.health.set_db_ok(false);
                tracing::warn!(error = %redact_sqlx(&e), retry_in = ?error_backoff, "claiming jobs failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(error_backoff) => {}
                }
                error_backoff = (error_backoff * 2).min(Duration::from_secs(10));
                pending = true;
            }
        }
    }
}

/// The queue has no due job: remember when the next scheduled or backed-off one is due, so the
/// dispatcher wakes for it rather than at the next interval.
async fn schedule_next_due(shared: &Shared) {
    if let Ok(Some(at)) = store::next_due(&shared.pool).await {
        // A job already due that the claim skipped is locked by someone else (another runner's
        // claim in flight, an app transaction): look again shortly, but do not spin on it.
        let wait = (at - chrono::Utc::now())
            .to_std()
            .unwrap_or_default()
            .max(Duration::from_millis(200));
        let when = Instant::now() + wait;
        let mut hint = shared.due_hint.lock().expect("due hint lock");
        if hint.is_none_or(|h| when < h) {
            *hint = Some(when);
        }
    }
}
