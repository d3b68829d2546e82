//! The connection loop behind [`super::spawn`]: hyper's HTTP/1 server with the limits a public
//! endpoint needs (docs/http.md, "Limits"):
//!
//! - `http.request_timeout` (default [`HEADER_READ_TIMEOUT`]): a request's headers must arrive
//!   within it, and a keep-alive connection with no next request is closed after it (hyper
//!   starts the same timer whenever a connection waits for a request head); then its body must
//!   arrive within it of the headers ([`Deadline`]): a handler reading it gets an error, the
//!   client `408` and the connection is closed. Slowloris, withheld bodies and idle sockets
//!   cost at most that long, whatever the route reads.
//! - a cap on open connections ([`connection_cap`], from the process's file limit). At the cap
//!   the oldest connection that is not serving a request is cut to make room (idle, still
//!   sending its headers, or still sending its body), so a flood of idle, half-sent or
//!   body-withholding connections cannot lock out `/healthz` or the triggers; only when every
//!   connection is busy is a new one refused (closed at once, never left in the backlog).
//! - accept errors (out of file descriptors) are logged at most once a second, and the loop
//!   pauses briefly instead of spinning.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The default of `http.request_timeout`: how long a client may take to send a request's
/// headers (then its body), and how long an idle keep-alive connection stays open.
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

/// A connection's state ([`Open::state`]): waiting for (or reading) a request head.
const IDLE: u8 = 0;
/// A request whose body has not all arrived yet: the client, not us, holds it up.
const RECEIVING: u8 = 1;
/// A request being served: its body is in (or was never read), the handler runs.
const SERVING: u8 = 2;

struct Open {
    cut: CancellationToken,
    /// [`IDLE`], [`RECEIVING`] or [`SERVING`]: only a serving connection is never cut for room.
    state: Arc<AtomicU8>,
}

/// The error a request body gives once `http.request_timeout` has passed since its head.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within http.request_timeout")]
pub struct BodyDeadline;

/// Whether `e` (or one of its sources) is a [`BodyDeadline`].
pub fn is_body_deadline(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<BodyDeadline>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// A request body that must all arrive by a deadline; the connection is [`RECEIVING`] until it
/// has (or the handler dropped it), then [`SERVING`].
pub struct Deadline {
    inner: Incoming,
    sleep: Pin<Box<tokio::time::Sleep>>,
    state: Arc<AtomicU8>,
    expired: Arc<std::sync::atomic::AtomicBool>,
}

impl Deadline {
    fn received(&self) {
        let _ = self
            .state
            .compare_exchange(RECEIVING, SERVING, Ordering::SeqCst, Ordering::SeqCst);
    }
}

impl Body for Deadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if !matches!(frame, Some(Ok(_))) || this.inner.is_end_stream() {
                this.received();
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::SeqCst);
            this.received();
            return Poll::Ready(Some(Err(Box::new(BodyDeadline))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.received();
    }
}

/// The answer to a request whose body missed its deadline; the connection closes after it.
fn request_timeout_answer() -> axum::response::Response {
    let mut response = super::reply::error(
        StatusCode::REQUEST_TIMEOUT,
        "the request body did not arrive within http.request_timeout",
    );
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, lets every
/// connection finish its request in progress and returns. Dropping the future cuts them all.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    request_timeout: Duration,
) -> io::Result<()> {
    serve_with(
        listener,
        router,
        shutdown,
        connection_cap(),
        request_timeout,
    )
    .await
}

/// [`serve`] with an explicit connection cap (tests).
pub async fn serve_with_cap(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    cap: usize,
) -> io::Result<()> {
    serve_with(listener, router, shutdown, cap, HEADER_READ_TIMEOUT).await
}

/// [`serve`] with an explicit connection cap and `http.request_timeout`.
pub async fn serve_with(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    cap: usize,
    request_timeout: Duration,
) -> io::Result<()> {
    let cap = cap.max(1);
    let request_timeout = request_timeout.max(Duration::from_millis(1));
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
            // Make room: cut the oldest connection that is not serving a request (idle, still
            // sending its headers, or still sending its body).
            let idle = open
                .iter()
                .find(|(_, c)| c.state.load(Ordering::SeqCst) != SERVING)
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
        let state = Arc::new(AtomicU8::new(IDLE));
        open.insert(
            id,
            Open {
                cut: cut.clone(),
                state: state.clone(),
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
                    let state = state.clone();
                    let (parts, body) = request.into_parts();
                    let expired = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let body = if body.is_end_stream() {
                        state.store(SERVING, Ordering::SeqCst);
                        axum::body::Body::new(body)
                    } else {
                        state.store(RECEIVING, Ordering::SeqCst);
                        axum::body::Body::new(Deadline {
                            inner: body,
                            sleep: Box::pin(tokio::time::sleep(request_timeout)),
                            state: state.clone(),
                            expired: expired.clone(),
                        })
                    };
                    let request = hyper::Request::from_parts(parts, body);
                    async move {
                        let response = router.oneshot(request).await;
                        state.store(IDLE, Ordering::SeqCst);
                        if expired.load(Ordering::SeqCst) {
                            // Whatever the handler made of the error: 408, and the connection
                            // closes (the rest of the body is never read).
                            return Ok(request_timeout_answer());
                        }
                        response
                    }
                });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(request_timeout)
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
