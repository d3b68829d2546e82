//! Delivery: what running a job means. The queue calls a [`JobHandler`]; this module holds the
//! payload contract ([`payload`]) and the handlers.
//!
//! - [`sandbox::SandboxHandler`]: logs the message and records it in `"OutboundMessage"` with a
//!   fake wamid. Nothing leaves the machine (`delivery.mode = "sandbox"`).
//! - [`live::LiveHandler`]: the pipeline of `delivery.mode = "live"`: payload → compose
//!   ([`orchestrator`]) → record ([`ledger`]) → pace and send (`crate::whatsapp`), acting on
//!   the class `crate::whatsapp::codes` gives each answer.
//! - [`statuses`]: what Meta's status webhooks (parsed by `crate::whatsapp::statuses`) change:
//!   the messages through the [`ledger`], the jobs through the queue (`crate::queue::moves`);
//!   and the settling of sends in doubt.
//!
//! docs/delivery.md describes the semantics for operators.

pub mod ledger;
pub mod live;
pub mod orchestrator;
pub mod payload;
pub mod sandbox;
pub mod statuses;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::Settings;
use crate::db::Pool;
use crate::metrics::Metrics;
use crate::queue::{Job, JobError};
use crate::whatsapp::pacing;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs one attempt of one job. `Ok` means every message of the job was sent (the worker then
/// marks the job done, with what [`Delivered`] carries); an error says what should happen next
/// (see [`crate::queue::Action`]).
///
/// A handler must only write about the job through fenced statements (`job.fence`): the job may
/// be taken from it at any time if its lease expires.
pub trait JobHandler: Send + Sync + 'static {
    fn handle<'a>(
        &'a self,
        job: &'a Job,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<Delivered, JobError>>;

    /// The handler's upkeep, called by each runner every few seconds (its prober) while the
    /// database answers; `runner` is the runner's `lockedBy` name. Live delivery publishes its
    /// circuits and refreshes the tier gauges. Nothing by default.
    fn maintain<'a>(&'a self, _ctx: &'a JobContext, _runner: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// How many jobs the dispatcher may claim now: a job claimed beyond what the handler can
    /// start soon would only go back to the queue and be claimed again. Live delivery answers
    /// with its pacing's room (`pacing::Pacer::room`); no limit by default.
    fn room(&self, _settings: &Settings) -> pacing::Room {
        pacing::Room::Any
    }

    /// The dispatcher claimed `jobs` on [`JobHandler::room`]'s word.
    fn claimed(&self, _jobs: usize) {}
}

/// What a handler works with. `settings` is the configuration in force when the attempt started
/// (a reload replaces it for later attempts, never under a running one).
#[derive(Clone)]
pub struct JobContext {
    pub pool: Pool,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    /// The batched writes on `"OutboundMessage"` (live delivery's prepare, marks and wamids;
    /// Meta's statuses), shared by the runner's jobs. The runner owns and stops them, like the
    /// pool: they must outlive its drain (a job in flight may still send), and a handler may
    /// serve several runners, so it cannot hold writers bound to one runner's connections.
    pub ledger: ledger::Writers,
}

/// A message Meta accepted whose wamid is written with the job's completion.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub seq: i32,
    pub wamid: String,
}

/// Messages a handler reports as sent, recorded atomically with the job's completion.
#[derive(Debug, Clone, Default)]
pub struct SentRecords {
    pub to: String,
    pub messages: Vec<serde_json::Value>,
}

impl JobContext {
    pub(crate) fn new(
        pool: Pool,
        settings: Arc<Settings>,
        metrics: Arc<Metrics>,
        ledger: ledger::Writers,
    ) -> Self {
        Self {
            pool,
            settings,
            metrics,
            ledger,
        }
    }
}

/// What a successful attempt hands to the statement that marks the job `done` (fenced by it,
/// written only if it is). Nothing by default.
#[derive(Default)]
pub struct Delivered {
    /// Messages to record as sent with the completion: sandbox sends, which need no write of
    /// their own before the job completes.
    pub records: Option<SentRecords>,
    /// The wamid of the job's last message (live sends: docs/delivery.md, "Durability").
    pub accepted: Option<Accepted>,
    /// Whatever must live until the job's outcome is written (the worker drops it after the
    /// completion statement): the tier ticket of a last message, whose send is written by the
    /// completion, not before it (docs/numbers.md, "Tier limit").
    pub keep: Option<Box<dyn std::any::Any + Send>>,
}

impl Delivered {
    /// Records `messages` to `to` as sent (with fake wamids) when, and only when, the job's
    /// completion lands.
    pub fn records(to: &str, messages: Vec<serde_json::Value>) -> Self {
        Self {
            records: Some(SentRecords {
                to: to.to_string(),
                messages,
            }),
            ..Self::default()
        }
    }
}
