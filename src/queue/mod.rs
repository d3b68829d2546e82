//! The job queue: the `"OutboundJob"` rows and what may be done to them. A leaf: it imports
//! nothing from the runtime (`runner`), delivery, HTTP, the CLI or the app.
//!
//! - [`store`]: every SQL statement the runner moves a job with (claim, complete, retry, fail,
//!   rescue, prune, enqueue). The one place to read to know what the runner does to the table.
//! - [`moves`]: the moves other modules ask for (a status webhook fails or settles a job, a
//!   hold's end wakes its jobs, the ledger saves an orchestrator answer). With [`store`] and
//!   [`admin`], the only writers of `"OutboundJob"`.
//! - [`retry`]: the retry policy: what a failure leads to, and the backoff (exponential, capped,
//!   full jitter).
//! - [`admin`]: the operators' actions (list, show, retry, cancel, settle) behind
//!   `outbound-runner jobs` and the admin API.
//! - The job types ([`Job`], [`JobError`], [`Outcome`]).
//!
//! The runtime that claims and runs jobs (dispatcher, workers, completer, maintenance loops) is
//! `runner`.

pub mod admin;
pub mod decode;
pub mod id;
pub mod moves;
pub mod retry;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use id::JobId;

/// The statuses of `"OutboundJob".status`.
pub const STATUSES: [&str; 5] = ["queued", "running", "done", "failed", "cancelled"];

/// The NOTIFY channel the insert trigger signals.
pub const CHANNEL: &str = "outbound_jobs";

/// A job this runner has claimed.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: JobId,
    pub payload: serde_json::Value,
    pub request_id: Option<String>,
    /// This attempt's number (1 for the first run).
    pub attempts: i32,
    pub max_attempts: i32,
    /// The reply saved by an earlier attempt, if any.
    pub composed: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub run_at: DateTime<Utc>,
    /// Proof of ownership for every write about this job.
    pub fence: Fence,
}

/// The fences of a batch as three arrays (ids, `lockedBy`, attempts), to bind to one statement.
pub(crate) fn fence_arrays<'a>(
    fences: impl Iterator<Item = &'a Fence>,
) -> (Vec<JobId>, Vec<&'a str>, Vec<i32>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for f in fences {
        out.0.push(f.id.clone());
        out.1.push(&*f.locked_by);
        out.2.push(f.attempts);
    }
    out
}

/// A claim: a write about a job only lands while the row is still `running`, locked by this
/// runner, on this attempt. A write that matches no row means the job was taken from us (its
/// lease expired and it was rescued): the result is dropped.
#[derive(Debug, Clone)]
pub struct Fence {
    pub id: JobId,
    pub locked_by: Arc<str>,
    pub attempts: i32,
}

/// How a job attempt failed, and what should happen next. Built by handlers; the worker turns it
/// into the job's next state.
#[derive(Debug, Clone, PartialEq)]
pub struct JobError {
    pub action: Action,
    /// A short machine-readable code for `"lastErrorCode"` (e.g. `bad_payload`, `131026`).
    pub code: String,
    /// A readable reason for `"lastError"`.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Transient: back off and try again while attempts remain. `after` is a floor
    /// (`Retry-After`, a pair-rate delay).
    Retry { after: Option<Duration> },
    /// Permanent: the job fails now.
    Fail,
    /// Not the job's fault (a paused number, an open circuit): run it again after `delay`
    /// without spending an attempt.
    Defer { delay: Duration },
    /// A send may or may not have reached Meta. Per `delivery.on_unknown`: fail as
    /// `delivery_unknown`, or retry.
    Unknown,
}

impl JobError {
    pub fn retry(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Action::Retry { after: None }, code, message)
    }
    pub fn fail(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Action::Fail, code, message)
    }
    pub fn defer(delay: Duration, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Action::Defer { delay }, code, message)
    }
    pub fn unknown(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Action::Unknown, code, message)
    }
    pub fn new(action: Action, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            action,
            code: code.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Where one attempt left the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Back to `queued` for a later attempt.
    Retried,
    /// Back to `queued` without spending an attempt.
    Deferred,
    Failed,
    /// Our write matched no row: the job was taken from us. Nothing was changed.
    Lost,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Retried => "retry",
            Outcome::Deferred => "deferred",
            Outcome::Failed => "failed",
            Outcome::Lost => "lost",
        }
    }
}

/// What a synchronous pass (the HTTP trigger, tests) did. Retried and deferred jobs count in
/// neither list: they will run again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub processed: Vec<JobId>,
    pub failed: Vec<JobId>,
    pub retried: Vec<JobId>,
}
