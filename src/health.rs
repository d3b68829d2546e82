//! What the runner knows about its own health: read by `/readyz`, the systemd watchdog and the
//! STATUS line. Plain atomics: written on hot paths, read rarely.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::AbortHandle;

#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    /// Milliseconds since `epoch` of the dispatcher's last heartbeat (0: never).
    last_tick: AtomicU64,
    /// Milliseconds since `epoch` of the last claim statement that succeeded (0: never).
    last_pass: AtomicU64,
    db_ok: AtomicBool,
    listening: AtomicBool,
    draining: AtomicBool,
    /// The first supervised task that died for good, and why (see `crate::supervise`).
    dead: watch::Sender<Option<String>>,
    /// Restarts of supervised tasks so far.
    restarts: watch::Sender<u64>,
    /// The supervised tasks (filled by `crate::supervise`).
    pub tasks: Registry,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last_tick: AtomicU64::new(0),
            last_pass: AtomicU64::new(0),
            db_ok: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            dead: watch::channel(None).0,
            restarts: watch::channel(0).0,
            tasks: Default::default(),
        }
    }
}

impl Health {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }
    fn age(&self, stamp: &AtomicU64) -> Option<Duration> {
        match stamp.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Duration::from_millis(self.now().saturating_sub(t))),
        }
    }

    pub fn tick(&self) {
        self.last_tick.store(self.now(), Ordering::Relaxed);
    }
    pub fn since_tick(&self) -> Option<Duration> {
        self.age(&self.last_tick)
    }
    pub fn passed(&self) {
        self.last_pass.store(self.now(), Ordering::Relaxed);
    }
    pub fn since_pass(&self) -> Option<Duration> {
        self.age(&self.last_pass)
    }
    pub fn set_db_ok(&self, ok: bool) {
        self.db_ok.store(ok, Ordering::Relaxed);
    }
    pub fn db_ok(&self) -> bool {
        self.db_ok.load(Ordering::Relaxed)
    }
    pub fn set_listening(&self, ok: bool) {
        self.listening.store(ok, Ordering::Relaxed);
    }
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// A supervised task died and could not be restarted: the process must be restarted.
    /// The first death is kept.
    pub fn task_died(&self, task: &str, why: &str) {
        self.dead.send_if_modified(|dead| {
            dead.is_none()
                .then(|| *dead = Some(format!("task {task} {why}")))
                .is_some()
        });
    }
    /// What died, when the process must be restarted.
    pub fn dead(&self) -> Option<String> {
        self.dead.borrow().clone()
    }
    /// [`Health::dead`] to await (tests).
    pub fn watch_dead(&self) -> watch::Receiver<Option<String>> {
        self.dead.subscribe()
    }
    pub fn restarted(&self) {
        self.restarts.send_modify(|n| *n += 1);
    }
    /// Restarts of supervised tasks so far.
    pub fn restarts(&self) -> u64 {
        *self.restarts.borrow()
    }
    /// [`Health::restarts`] to await (tests).
    pub fn watch_restarts(&self) -> watch::Receiver<u64> {
        self.restarts.subscribe()
    }

    /// Why the runner is not ready, or `None` when it is: the database answers and LISTEN is up.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.dead.borrow().is_some() {
            Some("UNHEALTHY: a task died")
        } else if self.draining() {
            Some("draining")
        } else if !self.db_ok() {
            Some("database unreachable")
        } else if !self.listening() {
            Some("LISTEN connection down")
        } else {
            None
        }
    }

    /// Healthy enough to pet the watchdog: no task died, the loop ticked within `max_age` and
    /// the database answered its last probe.
    pub fn alive(&self, max_age: Duration) -> bool {
        self.dead.borrow().is_none()
            && self.db_ok()
            && self.since_tick().is_some_and(|a| a <= max_age)
    }
}

/// The running supervised tasks by name, for tests and diagnostics.
#[derive(Debug, Default)]
pub struct Registry {
    tasks: Mutex<HashMap<&'static str, AbortHandle>>,
}

impl Registry {
    pub(crate) fn set(&self, name: &'static str, handle: AbortHandle) {
        self.tasks
            .lock()
            .expect("task registry lock")
            .insert(name, handle);
    }

    /// Aborts the named task as if it had died (a test hook: "kill each task"). False if no
    /// such task runs.
    #[doc(hidden)]
    pub fn kill(&self, name: &str) -> bool {
        match self.tasks.lock().expect("task registry lock").get(name) {
            Some(h) if !h.is_finished() => {
                h.abort();
                true
            }
            _ => false,
        }
    }

    /// The names of the supervised tasks started so far.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self
            .tasks
            .lock()
            .expect("task registry lock")
            .keys()
            .copied()
            .collect();
        names.sort_unstable();
        names
    }
}
