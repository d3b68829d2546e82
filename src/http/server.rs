//! The connection loop behind [`super::serve`]: hyper's HTTP/1 server with the limits a public
//! endpoint needs (docs/http.md, "Limits"):
//!
//! - [`HEADER_READ_TIMEOUT`]: a request's headers must arrive within it, and a keep-alive
//!   connection with no next request is closed after it (hyper starts the same timer whenever a
//!   connection waits for a request head): slowloris and idle sockets cost at most that long.
//! - a cap on open connections ([`connection_cap`], from the process's file limit). At the cap
//!   the oldest connection that is not serving a request is cut to make room, so a flood of
//!   idle or half-sent connections cannot lock out `/healthz` or the triggers; only when every
//!   connection is busy is a new one refused (closed at once, never left in the backlog).
//! - accept errors (out of file descriptors) are logged at most once a second, and the loop
//!   pauses briefly instead of spinning.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long a client may take to send a request's headers, and how long an idle keep-alive
/// connection stays open.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The most connections served at once, whatever the file limit.
pub const MAX_CONNECTIONS: usize = 4096;
/// The largest request head (request line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The connection cap: half the soft file limit (the rest is for the database pool, the
/// LISTEN connection, outbound HTTPS and the journal), between 32 and [`MAX_CONNECTIONS`].
pub fn connection_cap() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<usize>().ok())
        })
        .unwrap_or(1024);
    (soft / 2).clamp(32, MAX_CONNECTIONS)
}

/// A message logged at most once a second, saying how many were held back.
struct Throttled {
    last: Option<Instant>,
    held: u64,
}

impl Throttled {
    fn new() -> Self {
        Self {
            last: None,
            held: 0,
        }
    }

    /// `Some(held back since the last one)` when a line may be logged now.
    fn allow(&mut self) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            self.held += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.held))
    }
}

struct Open {
    cut: CancellationToken,
    /// Requests being served on the connection now.
    busy: Arc<AtomicUsize>,
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, lets every
/// connection finish its request in progress and returns. Dropping the future cuts them all.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with_cap(listener, router, shutdown, connection_cap()).await
}

/// [`serve`] with an explicit connection cap (tests).
pub async fn serve_with_cap(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    cap: usize,
) -> io::Result<()> {
    let cap = cap.max(1);
    let stop = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut tasks: JoinSet<u64> = JoinSet::new();
    let mut open: BTreeMap<u64, Open> = BTreeMap::new();
    let mut next_id = 0u64;
    let mut accept_errors = Throttled::new();
    let mut refusals = Throttled::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(id) = done {
                    open.remove(&id);
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if let Some(held) = accept_errors.allow() {
                    tracing::warn!(error = %e, held_back = held, "accepting an HTTP connection failed");
                }
                // Out of descriptors: give the timeouts a moment to free some.
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
                continue;
            }
        };
        if open.len() >= cap {
            // Make room: cut the oldest connection that is not serving a request (idle, or
            // still sending its headers).
            let idle = open
                .iter()
                .find(|(_, c)| c.busy.load(Ordering::SeqCst) == 0)
                .map(|(id, _)| *id);
            match idle {
                Some(id) => {
                    if let Some(c) = open.remove(&id) {
                        c.cut.cancel();
                    }
                }
                None => {
                    if let Some(held) = refusals.allow() {
                        tracing::warn!(
                            cap,
                            held_back = held,
                            "HTTP connection refused: every one of the open connections is serving a request"
                        );
                    }
                    drop(tcp);
                    continue;
                }
            }
        }
        let (tcp, peer) = tcp;
        let _ = tcp.set_nodelay(true);
        let id = next_id;
        next_id += 1;
        let cut = stop.child_token();
        let busy = Arc::new(AtomicUsize::new(0));
        open.insert(
            id,
            Open {
                cut: cut.clone(),
                busy: busy.clone(),
            },
        );
        let router = router.clone();
        let shutting_down = stop.clone();
        tasks.spawn(async move {
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    // The client's address, for the console's sign-in limit.
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    let router = router.clone();
                    let busy = busy.clone();
                    busy.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let response = router.oneshot(request).await;
                        busy.fetch_sub(1, Ordering::SeqCst);
                        response
                    }
                });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES.max(8192))
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(tcp), service);
            let mut connection = std::pin::pin!(connection);
            let stopped = tokio::select! {
                _ = connection.as_mut() => false,
                _ = cut.cancelled() => true,
            };
            // Evicted (the parent is not stopped): the connection serves no request; it ends
            // now. Shutdown: its request in progress, if any, finishes first.
            if stopped && shutting_down.is_cancelled() {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
            id
        });
    }
    drop(listener);
    // Shutdown: every connection finishes its request in progress, idle ones close now.
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}
