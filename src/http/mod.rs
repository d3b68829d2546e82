//! The HTTP server: the user's job-runner guide's two trigger endpoints (docs/http.md), `/metrics`, `/healthz` and `/readyz`.
//!
//! ```text
//!  bind(settings)          http.listen (and metrics.listen) bound before READY=1
//!  spawn(listeners, ...)   serves until the shutdown token; in-flight requests finish
//!  routes                  the handlers and their JSON answers
//!  reply                   the refusal body and access log every route shares
//!  auth                    who may trigger: tokens, constant-time comparison, nothing else
//!  webhooks                Meta's status webhooks: signature, verification, forwarding
//!  console                 the web console under /console/ (docs/console.md)
//! ```
//!
//! A trigger runs its own synchronous pass ([`Runner::run_pass_until`]) beside the dispatcher;
//! `SKIP LOCKED` keeps concurrent passes and the dispatcher from ever taking the same job. The
//! pass runs on a task of its own, so neither a client that hangs up nor `http.pass_timeout`
//! can cancel a claim half-way: they only stop the pass from claiming another batch, and the
//! jobs already claimed run to their end (tracked by the drain like every other job).
//! docs/http.md has the operator's view.

pub mod admin;
pub mod auth;
pub mod console;
mod reply;
pub mod routes;
pub mod server;
pub mod webhooks;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::exit;
use crate::queue::admin::QueueAdmin;
use crate::runner::Runner;
use crate::whatsapp::numbers::NumberAdmin;

/// The largest request body accepted (the endpoints read none; this bounds what a client can
/// make us receive).
pub const BODY_LIMIT: usize = 64 * 1024;

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    inner: Arc<Inner>,
}

struct Inner {
    runner: Runner,
    /// The operator's actions on jobs (the admin API, the console), from the runner.
    admin: QueueAdmin,
    /// The sending numbers' view and actions (the console), from the runner.
    numbers: NumberAdmin,
    /// Trigger passes running now (a pass outlives its request when the request times out).
    passes: watch::Sender<u32>,
    /// `/metrics` is served on the API listener (no `metrics.listen` of its own).
    metrics_on_api: bool,
}

impl HttpState {
    pub fn new(runner: Runner) -> Self {
        let metrics_on_api = runner.settings().metrics_listen().is_none();
        Self::with_metrics_on_api(runner, metrics_on_api)
    }

    /// `metrics_on_api`: whether the API listener also answers `/metrics`.
    pub fn with_metrics_on_api(runner: Runner, metrics_on_api: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                admin: runner.queue_admin(),
                numbers: runner.number_admin(),
                runner,
                passes: watch::channel(0).0,
                metrics_on_api,
            }),
        }
    }

    pub fn runner(&self) -> &Runner {
        &self.inner.runner
    }

    /// The queue's operator API (`queue::admin`).
    pub fn admin(&self) -> &QueueAdmin {
        &self.inner.admin
    }

    /// The sending numbers' operator API (`whatsapp::numbers`).
    pub fn numbers(&self) -> &NumberAdmin {
        &self.inner.numbers
    }

    /// The number of trigger passes running, to watch (tests, the drain).
    pub fn passes_running(&self) -> watch::Receiver<u32> {
        self.inner.passes.subscribe()
    }

    /// Admits one more pass if fewer than `limit` run; the guard lets it go.
    fn admit(&self, limit: u32) -> Option<PassGuard> {
        self.inner
            .passes
            .send_if_modified(|n| {
                if *n < limit {
                    *n += 1;
                    true
                } else {
                    false
                }
            })
            .then(|| PassGuard(self.inner.clone()))
    }
}

/// One admitted trigger pass; dropping it frees the place.
struct PassGuard(Arc<Inner>);

impl Drop for PassGuard {
    fn drop(&mut self) {
        self.0.passes.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The bound listen sockets, before anything is served.
pub struct Listeners {
    /// `http.listen`: the triggers, health, and `/metrics` unless it has its own.
    pub api: Option<TcpListener>,
    /// `metrics.listen`: `/metrics` only.
    pub metrics: Option<TcpListener>,
}

/// A listen address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {key} = {addr}: {reason}")]
pub struct BindError {
    /// The configuration key that names the address.
    pub key: &'static str,
    pub addr: SocketAddr,
    pub reason: String,
    #[source]
    pub source: io::Error,
}

impl BindError {
    fn new(key: &'static str, addr: SocketAddr, source: io::Error) -> Self {
        let reason = match source.kind() {
            io::ErrorKind::AddrInUse => {
                format!("the address is in use by another process; stop it or change {key}")
            }
            io::ErrorKind::PermissionDenied => format!(
                "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE); use a higher \
                 port or grant the capability ({source})"
            ),
            io::ErrorKind::AddrNotAvailable => {
                format!("no interface of this machine has that address; fix {key}")
            }
            _ => source.to_string(),
        };
        Self {
            key,
            addr,
            reason,
            source,
        }
    }

    /// The sysexits code: a busy port may free up (a restart can help); a wrong address cannot.
    pub fn exit_code(&self) -> u8 {
        match self.source.kind() {
            io::ErrorKind::AddrInUse => exit::UNAVAILABLE,
            io::ErrorKind::PermissionDenied => exit::NOPERM,
            io::ErrorKind::AddrNotAvailable => exit::CONFIG,
            _ => exit::OSERR,
        }
    }
}

/// Binds `http.listen` and `metrics.listen` (each when set).
pub async fn bind(settings: &Settings) -> Result<Listeners, BindError> {
    async fn one(
        key: &'static str,
        addr: Option<SocketAddr>,
    ) -> Result<Option<TcpListener>, BindError> {
        match addr {
            None => Ok(None),
            Some(addr) => TcpListener::bind(addr)
                .await
                .map(Some)
                .map_err(|e| BindError::new(key, addr, e)),
        }
    }
    Ok(Listeners {
        api: one("http.listen", settings.http_listen()).await?,
        metrics: one("metrics.listen", settings.metrics_listen()).await?,
    })
}

/// The running servers.
pub struct Server {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts serving `listeners` on tasks of their own until `stop` is cancelled (or
/// [`Server::finish`] is called).
pub fn spawn(listeners: Listeners, state: HttpState, stop: CancellationToken) -> Server {
    let mut tasks = Vec::new();
    let settings = state.runner().settings();
    if let Some(listener) = listeners.api {
        let addr = listener.local_addr().ok();
        tracing::info!(
            addr = %addr.map(|a| a.to_string()).unwrap_or_default(),
            "HTTP listening: /api/jobs/run-outbound, /api/cron/run-outbound-jobs, /api/admin/jobs, \
             /webhooks/whatsapp, /console/, /healthz, /readyz{}",
            if listeners.metrics.is_none() { ", /metrics" } else { "" }
        );
        if settings.http.job_runner_token.is_none() {
            tracing::warn!(
                "JOB_RUNNER_TOKEN is not set: /api/jobs/run-outbound is disabled (answers 404)"
            );
        }
        if settings.whatsapp.app_secret.is_none() {
            tracing::info!(
                "WHATSAPP_APP_SECRET is not set: /webhooks/whatsapp is disabled (answers 404)"
            );
        } else if settings.whatsapp.verify_token.is_none() {
            tracing::warn!(
                "WHATSAPP_VERIFY_TOKEN is not set: Meta's webhook verification is refused (403)"
            );
        }
        if settings.http.cron_secret.is_none() {
            tracing::warn!(
                "CRON_SECRET is not set: /api/cron/run-outbound-jobs is disabled (answers 404)"
            );
        }
        tasks.push(spawn_supervised(
            "HTTP server",
            listener,
            routes::api(state.clone()),
            &state,
            &stop,
        ));
    }
    if let Some(listener) = listeners.metrics {
        let addr = listener.local_addr().ok();
        tracing::info!(
            addr = %addr.map(|a| a.to_string()).unwrap_or_default(),
            "metrics listening: /metrics"
        );
        tasks.push(spawn_supervised(
            "metrics server",
            listener,
            routes::metrics_only(state.clone()),
            &state,
            &stop,
        ));
    }
    Server { stop, tasks }
}

/// Serves `router` on `listener` until `stop`, supervised: a server that stops while not asked
/// to turns health red (the listen socket went with it, so it is not restarted).
fn spawn_supervised(
    name: &'static str,
    listener: TcpListener,
    router: axum::Router,
    state: &HttpState,
    stop: &CancellationToken,
) -> JoinHandle<()> {
    let timeout = state.runner().settings().http.request_timeout;
    let mut once = Some((listener, router, stop.clone()));
    state.runner().supervise(
        name,
        stop.clone(),
        crate::supervise::Restart::No,
        move || {
            let (listener, router, stop) = once.take().expect("the server starts once");
            async move {
                // Timeouts and a connection cap (see `server`; docs/http.md, "Limits").
                if let Err(e) =
                    server::serve(listener, router, stop.cancelled_owned(), timeout).await
                {
                    tracing::error!(error = %e, "the {name} stopped");
                }
            }
        },
    )
}

impl Server {
    /// Stops accepting connections; open requests get `grace` to finish, then are cut.
    pub async fn finish(self, grace: Duration) {
        self.stop.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        for mut task in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(grace = ?grace, "HTTP requests still open after the drain; closing them");
                task.abort();
            }
        }
    }
}
