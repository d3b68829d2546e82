//! Handlers for tests: counting, scripted and blocking ones, all wrapping real behaviour.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use outbound_runner::delivery::sandbox::SandboxHandler;
use outbound_runner::delivery::{BoxFuture, Delivered, JobContext, JobHandler};
use outbound_runner::queue::{Job, JobError, JobId};
use tokio::sync::{Notify, Semaphore};

/// The sandbox handler, counting how often each job ran.
#[derive(Default)]
pub struct Counting {
    pub runs: Mutex<HashMap<JobId, u32>>,
    pub called: Notify,
}

impl JobHandler for Counting {
    fn handle<'a>(
        &'a self,
        job: &'a Job,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<Delivered, JobError>> {
        Box::pin(async move {
            *self.runs.lock().unwrap().entry(job.id.clone()).or_default() += 1;
            self.called.notify_one();
            SandboxHandler.handle(job, ctx).await
        })
    }
}

/// Answers from a script, one entry per call (then succeeds like the sandbox).
#[derive(Default)]
pub struct Scripted {
    pub script: Mutex<VecDeque<Result<(), JobError>>>,
}

impl Scripted {
    pub fn new(script: Vec<Result<(), JobError>>) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script.into()),
        })
    }
}

impl JobHandler for Scripted {
    fn handle<'a>(
        &'a self,
        job: &'a Job,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<Delivered, JobError>> {
        Box::pin(async move {
            let next = self.script.lock().unwrap().pop_front();
            match next {
                Some(Err(e)) => Err(e),
                _ => SandboxHandler.handle(job, ctx).await,
            }
        })
    }
}

/// Holds every job until the test releases it (one permit per job), then behaves like the
/// sandbox. `entered` gains a permit as each job starts.
pub struct Gate {
    pub open: Semaphore,
    pub entered: Semaphore,
}

impl Gate {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            open: Semaphore::new(0),
            entered: Semaphore::new(0),
        })
    }
}

impl JobHandler for Gate {
    fn handle<'a>(
        &'a self,
        job: &'a Job,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<Delivered, JobError>> {
        Box::pin(async move {
            self.entered.add_permits(1);
            self.open.acquire().await.unwrap().forget();
            SandboxHandler.handle(job, ctx).await
        })
    }
}

impl Gate {
    /// Waits until `n` more jobs have entered the handler.
    pub async fn wait_entered(&self, n: u32) {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.entered.acquire_many(n),
        )
        .await
        .unwrap_or_else(|_| panic!("{n} job(s) did not start within 10s"))
        .unwrap()
        .forget();
    }
}
