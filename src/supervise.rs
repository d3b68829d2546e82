//! No silent death: every long-lived task of the runner (dispatcher, listener, completer, lease
//! keeper, rescuer, pruner, prober, ledger writers, HTTP servers) runs under [`spawn`] or
//! [`watch`]. A task that panics, or ends while its stop token is not cancelled, is noticed at
//! once: restarted when that is safe ([`Restart::Yes`], a bounded number of times), otherwise
//! the process is marked dead ([`Health::task_died`]): `/healthz` and `/readyz` answer 503, the
//! watchdog stops, the STATUS line says which task and why, so systemd restarts the service.
//! docs/reliability.md, "No silent death", lists which task gets which.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::{AbortHandle, JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// At most this many restarts of one task within [`RESTART_WINDOW`]; one more turns health red.
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);
/// The pause before a restart (a task that panics at once must not spin).
const RESTART_DELAY: Duration = Duration::from_millis(500);

/// Whether a task may be started again after it died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Its state lives in the database or in the runner's shared state (`runner::Shared`): a fresh copy carries on.
    Yes,
    /// It owned something a fresh copy cannot get back (a channel's receiver, a listen socket):
    /// its death turns health red.
    No,
}

/// The running supervised tasks by name: kept in [`Health`] (so health imports nothing of
/// this module), filled by [`spawn`] and [`watch`].
pub use crate::health::Registry;

/// Aborts the supervised task when its supervisor goes (the drain aborts supervisors that do
/// not stop in time: the task must not outlive them).
struct AbortOnDrop(AbortHandle);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `make()` on a task of its own, under supervision (see the module docs). `stop` is the
/// token that ends the task normally: an end after it is cancelled is no death.
pub fn spawn<F, Fut>(
    name: &'static str,
    health: Arc<Health>,
    stop: CancellationToken,
    restart: Restart,
    mut make: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // The first start happens here, so the task is registered when this returns.
    let mut inner = tokio::spawn(make());
    health.tasks.set(name, inner.abort_handle());
    tokio::spawn(async move {
        let mut restarts: Vec<Instant> = Vec::new();
        loop {
            let guard = AbortOnDrop(inner.abort_handle());
            let result = inner.await;
            drop(guard);
            let Some(why) = death(result, &stop) else {
                return;
            };
            restarts.retain(|t| t.elapsed() < RESTART_WINDOW);
            if restart == Restart::Yes && restarts.len() < MAX_RESTARTS {
                restarts.push(Instant::now());
                tracing::error!(
                    task = name,
                    restarts = restarts.len(),
                    "the {name} task {why}; restarting it"
                );
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RESTART_DELAY) => {}
                }
                inner = tokio::spawn(make());
                health.tasks.set(name, inner.abort_handle());
                health.restarted();
                continue;
            }
            let why = if restart == Restart::Yes {
                format!("{why} ({MAX_RESTARTS} restarts in {RESTART_WINDOW:?})")
            } else {
                why
            };
            died(&health, name, &why);
            return;
        }
    })
}

/// Watches a task that was already spawned (and cannot be restarted): its death turns health
/// red. Aborting the returned handle aborts the task too.
pub fn watch(
    name: &'static str,
    health: Arc<Health>,
    stop: CancellationToken,
    task: JoinHandle<()>,
) -> JoinHandle<()> {
    health.tasks.set(name, task.abort_handle());
    tokio::spawn(async move {
        let _guard = AbortOnDrop(task.abort_handle());
        if let Some(why) = death(task.await, &stop) {
            died(&health, name, &why);
        }
    })
}

fn died(health: &Health, name: &'static str, why: &str) {
    tracing::error!(
        task = name,
        "the {name} task {why}; health is red (/healthz 503, no watchdog pings) so the service \
         is restarted"
    );
    health.task_died(name, why);
}

/// Why a task's end is a death, or `None` for a normal end (its stop token was cancelled).
fn death(result: Result<(), JoinError>, stop: &CancellationToken) -> Option<String> {
    match result {
        Ok(()) if stop.is_cancelled() => None,
        Ok(()) => Some("ended unexpectedly".into()),
        Err(e) if e.is_panic() => Some(format!("panicked: {}", panic_message(e.into_panic()))),
        Err(_) if stop.is_cancelled() => None,
        Err(_) => Some("was aborted".into()),
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    };
    crate::telemetry::clip_field(&text, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_is_restarted_and_then_turns_health_red() {
        let health = Arc::new(Health::default());
        let stop = CancellationToken::new();
        let task = spawn(
            "flaky",
            health.clone(),
            stop.clone(),
            Restart::Yes,
            || async { panic!("boom") },
        );
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(health.restarts(), MAX_RESTARTS as u64);
        let dead = health.dead().expect("red");
        assert!(dead.contains("flaky") && dead.contains("boom"), "{dead}");
        assert!(!health.alive(Duration::from_secs(3600)));
    }

    #[tokio::test]
    async fn a_task_that_ends_without_being_stopped_turns_health_red_and_a_stopped_one_does_not() {
        let health = Arc::new(Health::default());
        let stop = CancellationToken::new();
        let stopped = spawn("stopped", health.clone(), stop.clone(), Restart::No, {
            let stop = stop.clone();
            move || {
                let stop = stop.clone();
                async move { stop.cancelled().await }
            }
        });
        stop.cancel();
        stopped.await.unwrap();
        assert_eq!(health.dead(), None);

        let quits = spawn(
            "quits",
            health.clone(),
            CancellationToken::new(),
            Restart::No,
            || async {},
        );
        quits.await.unwrap();
        assert!(health.dead().unwrap().contains("quits ended unexpectedly"));
    }
}
