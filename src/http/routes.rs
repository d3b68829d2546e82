//! The handlers and their answers. The trigger answers are the user's job-runner guide's JSON (docs/http.md), key for key:
//!
//! ```text
//! /api/jobs/run-outbound       {"ok":true,"processed":N,"failed":M,"jobIds":{"processed":[…],"failed":[…]}}
//! /api/cron/run-outbound-jobs  {"ok":true,"message":"Job runner triggered","jobRunnerResult":{"ok":true,"processed":N,"failed":M}}
//! any refusal or failure       {"ok":false,"error":"…"}   (401 unauthorized, 404 disabled, 400, 413, 429, 503, 504)
//! ```

use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tower_http::limit::RequestBodyLimitLayer;

use super::auth::{self, Endpoint};
// In `reply`, so that the routes' submodules need not import this file.
pub(super) use super::reply::{access_log, error};
use super::{BODY_LIMIT, HttpState};
use crate::db::redact_sqlx;
use crate::queue::PassReport;

/// `max` when the request gives none (the user's job-runner guide's, docs/http.md "`max`").
pub const DEFAULT_MAX: u32 = 10;

/// The API listener's routes.
pub fn api(state: HttpState) -> Router {
    let mut router = Router::new()
        .route(
            Endpoint::JobRunner.path(),
            get(run_outbound).post(run_outbound),
        )
        .route(Endpoint::Cron.path(), get(cron).post(cron))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(super::admin::routes())
        .merge(super::console::routes());
    if state.inner.metrics_on_api {
        router = router.route("/metrics", get(metrics));
    }
    // Meta's status webhooks, with their own body limit (docs/http.md).
    finish(router, state.clone()).merge(super::webhooks::routes(state))
}

/// The routes of `metrics.listen`.
pub fn metrics_only(state: HttpState) -> Router {
    finish(Router::new().route("/metrics", get(metrics)), state)
}

fn finish(router: Router<HttpState>, state: HttpState) -> Router {
    router
        .fallback(not_found)
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(middleware::from_fn(access_log))
        .with_state(state)
}

/// `/healthz` and `/readyz`: `{"ok":true}` or `{"ok":false,"reason":…}`.
#[derive(Serialize)]
struct Probe {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found")
}

#[derive(Serialize)]
struct JobRunnerAnswer {
    ok: bool,
    processed: usize,
    failed: usize,
    #[serde(rename = "jobIds")]
    job_ids: JobIds,
}

#[derive(Serialize)]
struct JobIds {
    processed: Vec<crate::queue::JobId>,
    failed: Vec<crate::queue::JobId>,
}

#[derive(Serialize)]
struct CronAnswer {
    ok: bool,
    message: &'static str,
    #[serde(rename = "jobRunnerResult")]
    job_runner_result: CronResult,
}

#[derive(Serialize)]
struct CronResult {
    ok: bool,
    processed: usize,
    failed: usize,
}

async fn run_outbound(
    State(state): State<HttpState>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if method == Method::HEAD {
        return head_refused();
    }
    match trigger(&state, Endpoint::JobRunner, &headers, query.as_deref()).await {
        Ok(report) => Json(JobRunnerAnswer {
            ok: true,
            processed: report.processed.len(),
            failed: report.failed.len(),
            job_ids: JobIds {
                processed: report.processed,
                failed: report.failed,
            },
        })
        .into_response(),
        Err(response) => response,
    }
}

async fn cron(
    State(state): State<HttpState>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if method == Method::HEAD {
        return head_refused();
    }
    match trigger(&state, Endpoint::Cron, &headers, query.as_deref()).await {
        Ok(report) => Json(CronAnswer {
            ok: true,
            message: "Job runner triggered",
            job_runner_result: CronResult {
                ok: true,
                processed: report.processed.len(),
                failed: report.failed.len(),
            },
        })
        .into_response(),
        Err(response) => response,
    }
}

/// `HEAD` on a trigger (axum routes it with `GET`): a probe must never run a pass.
fn head_refused() -> Response {
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
    response
}

/// Authorizes, validates `max`, runs one pass and waits for it (bounded by `http.pass_timeout`).
async fn trigger(
    state: &HttpState,
    endpoint: Endpoint,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<PassReport, Response> {
    // Read per request: a reload changes tokens and limits for the next request.
    let settings = state.runner().settings();
    let http = &settings.http;
    auth::authorize(endpoint, http, headers, query).map_err(IntoResponse::into_response)?;
    let max = parse_max(query, http.max_per_request)
        .map_err(|reason| error(StatusCode::BAD_REQUEST, &reason))?;

    let Some(guard) = state.admit(http.max_concurrent_passes) else {
        tracing::warn!(
            path = endpoint.path(),
            limit = http.max_concurrent_passes,
            "trigger refused: http.max_concurrent_passes passes are already running"
        );
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many passes running; try again shortly",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Err(response);
    };

    // The pass runs on its own task: a client that hangs up, or the timeout below, only stops it
    // from claiming another batch (the drop guard cancels `stop`); a claim is never cut half-way
    // and the jobs it holds run to their end.
    let stop = tokio_util::sync::CancellationToken::new();
    let stop_on_drop = stop.clone().drop_guard();
    let runner = state.runner().clone();
    let path = endpoint.path();
    let mut pass = tokio::spawn(async move {
        let _guard = guard;
        let started = Instant::now();
        let result = runner.run_pass_until(max, &stop).await;
        match &result {
            Ok(r) => {
                let ran = r.processed.len() + r.failed.len() + r.retried.len();
                // A full pass may have left due jobs behind: the dispatcher takes them now
                // rather than at its next interval. A short pass emptied what was due.
                if ran >= max as usize {
                    runner.wake("trigger");
                }
                // An empty pass (the usual cron tick) is not worth an info line.
                let level_info = ran > 0 || stop.is_cancelled();
                macro_rules! finished {
                    ($level:ident) => {
                        tracing::$level!(
                            path,
                            max,
                            processed = r.processed.len(),
                            failed = r.failed.len(),
                            retried = r.retried.len(),
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            timed_out = stop.is_cancelled(),
                            "trigger pass finished"
                        )
                    };
                }
                if level_info {
                    finished!(info);
                } else {
                    finished!(debug);
                }
            }
            Err(e) => tracing::warn!(
                path,
                error = %redact_sqlx(&format!("{e:#}")),
                "trigger pass failed"
            ),
        }
        result
    });

    let outcome = tokio::time::timeout(http.pass_timeout, &mut pass).await;
    match outcome {
        Ok(Ok(Ok(report))) => {
            stop_on_drop.disarm();
            Ok(report)
        }
        Ok(Ok(Err(e))) => {
            let refused = e
                .downcast_ref::<sqlx::Error>()
                .is_some_and(crate::queue::store::is_data_error);
            if state.runner().draining() {
                Err(error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))
            } else if refused {
                // The database answered: it refused the data (a row no claim can take).
                Err(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the pass failed: the database refused the claim (a job row it cannot \
                     update; the runner's log names it)",
                ))
            } else {
                Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the pass failed: database unavailable",
                ))
            }
        }
        Ok(Err(join)) => {
            tracing::error!(error = %join, "trigger pass task failed");
            Err(error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
        }
        Err(_) => {
            // `stop_on_drop` cancels the pass's further claims as it goes out of scope.
            tracing::warn!(
                path,
                pass_timeout = ?http.pass_timeout,
                "trigger pass exceeded http.pass_timeout: answering 504; the jobs it claimed \
                 finish in the background"
            );
            Err(error(
                StatusCode::GATEWAY_TIMEOUT,
                "pass timed out; the jobs it claimed finish in the background",
            ))
        }
    }
}

/// `max` from the query: absent → [`DEFAULT_MAX`]; a positive integer → itself, capped at
/// `cap`; anything else → the reason it is refused.
pub fn parse_max(query: Option<&str>, cap: u32) -> Result<u32, String> {
    let mut values = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "max")
        .map(|(_, v)| v.into_owned());
    let Some(value) = values.next() else {
        return Ok(DEFAULT_MAX.min(cap));
    };
    if values.next().is_some() {
        return Err("max is given more than once".into());
    }
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err("max must be a positive integer".into());
    }
    // All digits: only an overflow can fail, and an overflow is a large positive number.
    let n = value.parse::<u64>().unwrap_or(u64::MAX);
    if n == 0 {
        return Err("max must be a positive integer (at least 1)".into());
    }
    Ok(n.min(u64::from(cap)) as u32)
}

/// Liveness: the process answers and none of its tasks died (src/supervise.rs).
async fn healthz(State(state): State<HttpState>) -> Response {
    match state.runner().dead() {
        None => Json(Probe {
            ok: true,
            reason: None,
        })
        .into_response(),
        Some(dead) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Probe {
                ok: false,
                reason: Some(dead),
            }),
        )
            .into_response(),
    }
}

/// Readiness ([`crate::runner::Runner::not_ready`]): no task died, not draining, the database
/// answers `SELECT 1` now, and LISTEN is up.
async fn readyz(State(state): State<HttpState>) -> Response {
    let reason = state.runner().not_ready().await;
    let status = match reason {
        None => StatusCode::OK,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = Probe {
        ok: reason.is_none(),
        reason,
    };
    (status, Json(body)).into_response()
}

/// The Prometheus text exposition.
async fn metrics(State(state): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.runner().render_metrics(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_parsing() {
        assert_eq!(parse_max(None, 1000), Ok(10));
        assert_eq!(parse_max(Some("token=x"), 1000), Ok(10));
        assert_eq!(parse_max(Some("max=5"), 3), Ok(3));
        assert_eq!(parse_max(None, 3), Ok(3));
        assert_eq!(parse_max(Some("max=1"), 1000), Ok(1));
        assert_eq!(parse_max(Some("max=007"), 1000), Ok(7));
        assert_eq!(parse_max(Some("max=100000"), 1000), Ok(1000));
        assert_eq!(
            parse_max(Some("max=99999999999999999999999"), 1000),
            Ok(1000)
        );
        for bad in [
            "max=0",
            "max=000",
            "max=abc",
            "max=-1",
            "max=1.5",
            "max=",
            "max=+3",
            "max=%201",
            "max=1e3",
            "max=3&max=4",
        ] {
            assert!(parse_max(Some(bad), 1000).is_err(), "{bad}");
        }
    }
}
