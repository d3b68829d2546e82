//! Delivery: what running a job means. The queue calls a [`JobHandler`]; this module holds the
//! payload contract ([`payload`]) and the handlers.
//!
//! - [`sandbox::SandboxHandler`]: logs the message and records it in `"OutboundMessage"` with a
//!   fake wamid. Nothing leaves the machine (`delivery.mode = "sandbox"`).

pub mod payload;
pub mod sandbox;

use std::future::Future;
use std::pin::Pin;

use sqlx::PgPool;

use crate::queue::{Job, JobError};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs one attempt of one job. `Ok(())` means every message of the job was sent (the worker then
/// marks the job done); an error says what should happen next (see [`crate::queue::Action`]).
///
/// A handler must only write about the job through fenced statements (`job.fence`): the job may
/// be taken from it at any time if its lease expires.
pub trait JobHandler: Send + Sync + 'static {
    fn handle<'a>(&'a self, job: &'a Job, pool: &'a PgPool) -> BoxFuture<'a, Result<(), JobError>>;
}
