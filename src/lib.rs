//! outbound-runner delivers outbound WhatsApp messages from a PostgreSQL job queue, once.
//!
//! The layout, by responsibility:
//!
//! - [`config`]: layered configuration (defaults → file → environment), secrets, validation.
//! - [`db`]: the connection pool, migrations (with the indexes they leave to a concurrent
//!   build), the adoption of the app's own table ([`db::adopt`]), the schema as Prisma sees it
//!   ([`db::prisma`], [`db::prisma_migration`]), and the embedded PostgreSQL of a first run.
//! - [`queue`]: the job queue itself, a leaf: the job types, every SQL statement that writes
//!   `"OutboundJob"` ([`queue::store`] for the runner's moves, [`queue::moves`] for those other
//!   modules ask for, [`queue::admin`] for the operator's, also as the
//!   [`queue::admin::QueueAdmin`] handle the HTTP layer is given) and the retry policy
//!   ([`queue::retry`]).
//! - [`whatsapp`]: the Cloud API contract: the client, the one table of Meta's error codes and
//!   what each leads to ([`whatsapp::codes`]), pacing, each number's state, what a status
//!   webhook says. It decides; it moves no job.
//! - [`runner`]: the runtime, one process's share of the queue: the dispatcher, workers,
//!   completer and maintenance loops, their shared state (private to it); start, synchronous
//!   passes, drain. [`runner::Runner`] offers operations, never its parts (pool, metrics, health,
//!   status writer): readiness, the rendered metrics, applying statuses, the operator's handles.
//! - [`delivery`]: what running a job means: the payload contract, the handlers (live delivery
//!   acts on [`whatsapp::codes::Class`], never on a code), the ledger (every statement on
//!   `"OutboundMessage"`) and Meta's statuses applied through the tables' owners.
//! - [`app`]: the daemon: start-up order, signals, shutdown.
//! - [`http`]: the trigger endpoints, Meta's status webhooks, the admin API, the web console
//!   ([`http::console`]), `/metrics`, `/healthz`, `/readyz`, all through the runner's operations
//!   and the operator's handles (no pool, no statement of their own: `.ci/import-graph`).
//! - [`cli`]: the subcommands.
//! - [`metrics`], [`health`], [`telemetry`], [`systemd`], [`exit`]: what an operator watches;
//!   [`supervise`]: no task dies silently.
//!
//! `main.rs` only parses arguments and maps errors to exit codes.

#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod db;
pub mod delivery;
pub mod exit;
pub mod health;
pub mod http;
pub mod metrics;
pub mod queue;
pub mod runner;
pub mod supervise;
pub mod systemd;
pub mod telemetry;
pub mod whatsapp;
