//! The web console: the queue, every message's fate and every sending number, in a browser,
//! served by the daemon on its API listener under `/console/` (docs/console.md).
//!
//! ```text
//!  session   sign-in with the admin token, the signed cookie, sign-out, CSRF and rate limit
//!  assets    the embedded HTML/CSS/JS, gzipped, ETag
//!  live      the overview's shared snapshot and its Server-Sent Events
//! ```
//!
//! Enabled by `ADMIN_TOKEN` (`http.admin_token`) like the admin API: unset, everything under
//! `/console/` (and `/`) answers 404. Its JSON endpoints under `/console/api/` take the session
//! cookie instead of the bearer token; the actions are [`crate::queue::admin`]'s and
//! [`crate::whatsapp::numbers`]', through the handles of [`HttpState::admin`] and
//! [`HttpState::numbers`] (the same rules and history as the CLI and the admin API, with
//! `"by":"console"`). A job id is opaque here: it is taken as text and handed to the queue's
//! operator API through [`job_id`], the one place that knows its type.

pub mod assets;
pub mod live;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::json;

use super::HttpState;
use super::admin::ok_with;
use super::routes::error;
use crate::queue::JobId;
use crate::queue::admin::{self, Actor, AdminError, Filter, Settled};

/// Who the history and the log say did it.
pub const BY: &str = "console";
/// The longest one event stream stays open (the browser reconnects by itself).
const STREAM_LIFETIME: Duration = Duration::from_secs(600);
/// The strictest policy the pages work with: nothing inline, nothing from elsewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The console's own state, beside [`HttpState`].
#[derive(Default)]
pub struct Console {
    revoked: session::Revoked,
    limiter: session::Limiter,
    hub: Arc<live::Hub>,
    numbers: tokio::sync::Mutex<Option<(Instant, serde_json::Value)>>,
}

impl Console {
    /// The overview's hub (its statement count, for tests and the bench).
    pub fn hub(&self) -> &Arc<live::Hub> {
        &self.hub
    }
}

/// The console's routes (mounted on the API listener), with a fresh [`Console`].
pub fn routes() -> Router<HttpState> {
    routes_with(Arc::new(Console::default()))
}

/// [`routes`] around a given [`Console`] (tests read its hub).
pub fn routes_with(console: Arc<Console>) -> Router<HttpState> {
    Router::new()
        .route("/", get(root))
        .route("/console", get(root))
        .route("/console/", get(shell))
        .route("/console/jobs", get(shell))
        .route("/console/jobs/{id}", get(shell))
        .route("/console/numbers", get(shell))
        .route("/console/assets/{name}", get(asset))
        .route("/console/api/session", get(session_state))
        .route("/console/api/signin", post(sign_in))
        .route("/console/api/signout", post(sign_out))
        .route("/console/api/overview", get(overview))
        .route("/console/api/events", get(events))
        .route("/console/api/jobs", get(list))
        .route("/console/api/jobs/retry", post(retry))
        .route("/console/api/jobs/cancel", post(cancel))
        .route("/console/api/jobs/{id}", get(show))
        .route("/console/api/jobs/{id}/settle", post(settle))
        .route("/console/api/numbers", get(numbers))
        .route("/console/api/numbers/{id}/pause", post(pause))
        .route("/console/api/numbers/{id}/resume", post(resume))
        .layer(middleware::from_fn(security_headers))
        .layer(Extension(console))
}

/// Every console answer: no framing, no referrer, no sniffing, the CSP; API answers uncached.
async fn security_headers(request: Request, next: Next) -> Response {
    let api = request.uri().path().starts_with("/console/api/");
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if api {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn enabled(state: &HttpState) -> Option<secrecy::SecretString> {
    state
        .runner()
        .settings()
        .http
        .admin_token
        .clone()
        .filter(|t| !secrecy::ExposeSecret::expose_secret(t).is_empty())
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found")
}

/// A refusal: its status and message.
struct Refused(StatusCode, &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// Checks, in order: enabled (404), for a POST a same-origin request (403), a valid session
/// (401). The refusal, if any.
fn guard(
    state: &HttpState,
    console: &Console,
    headers: &HeaderMap,
    post: bool,
) -> Result<session::Session, Refused> {
    let Some(token) = enabled(state) else {
        return Err(Refused(StatusCode::NOT_FOUND, "not found"));
    };
    if post && !session::same_origin(headers) {
        tracing::warn!("console: a cross-site request was refused");
        return Err(Refused(StatusCode::FORBIDDEN, "cross-site request refused"));
    }
    session::cookie_value(headers)
        .and_then(|v| session::verify(&token, v))
        .filter(|s| !console.revoked.is_revoked(s))
        .ok_or(Refused(StatusCode::UNAUTHORIZED, "unauthorized"))
}

async fn root(State(state): State<HttpState>) -> Response {
    match enabled(&state) {
        Some(_) => Redirect::to("/console/").into_response(),
        None => not_found(),
    }
}

async fn shell(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    match enabled(&state) {
        Some(_) => assets::serve(&assets::INDEX, &headers),
        None => not_found(),
    }
}

async fn asset(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if enabled(&state).is_none() {
        return not_found();
    }
    match assets::FILES.iter().find(|a| a.name == name) {
        Some(a) => assets::serve(a, &headers),
        None => not_found(),
    }
}

async fn session_state(
    State(state): State<HttpState>,
    Extension(console): Extension<Arc<Console>>,
    headers: HeaderMap,
) -> Response {
    match guard(&state, &console, &headers, false) {
        Ok(_) => ok_with(json!({ "signedIn": true, "by": BY })),
        Err(Refused(StatusCode::UNAUTHORIZED, _)) => ok_with(json!({ "signedIn": false })),
        Err(r) => r.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

async fn sign_in(
    State(state): State<HttpState>,
    Extension(console): Extension<Arc<Console>>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip());
    let Some(token) = enabled(&state) else {
        return not_found();
    };
    if !session::same_origin(&headers) {
        return error(StatusCode::FORBIDDEN, "cross-site request refused");
    }
    if !console.limiter.allow(peer) {
        tracing::warn!("console: sign-in attempts over the limit; refused");
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many sign-in attempts; wait a minute",
        );
    }
    let body = axum::body::to_bytes(request.into_body(), 4096)
        .await
        .unwrap_or_default();
    let given: SignIn = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(_) => return error(StatusCode::BAD_REQUEST, "token: expected {\"token\":\"…\"}"),
    };
    if !session::token_matches(&token, given.token.trim()) {
        tracing::warn!("console: sign-in with a wrong token");
        return error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    tracing::info!("console: signed in");
    let cookie = session::set_cookie(&session::issue(&token), &headers);
    let mut r = ok_with(json!({ "signedIn": true }));
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("cookie is a header value"),
    );
    r
}

async fn sign_out(
    State(state): State<HttpState>,
    Extension(console): Extension<Arc<Console>>,
    headers: HeaderMap,
) -> Response {
    match guard(&state, &console, &headers, true) {
        Ok(s) => console.revoked.revoke(&s),
        Err(Refused(StatusCode::UNAUTHORIZED, _)) => {}
        Err(r) => return r.into_response(),
    }
    let mut r = ok_with(json!({ "signedIn": false }));
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&session::clear_cookie(&headers)).expect("cookie is a header value"),
    );
    r
}

async fn overview(
    State(state): State<HttpState>,
    Extension(console): Extension<Arc<Console>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&state, &console, &headers, false) {
        return r.into_response();
    }
    match console.hub.snapshot(&state).await {
        Ok(data) => (
            [(header::CONTENT_TYPE, "application/json")],
            data.to_string(),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console: overview");
            error(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
    }
}

async fn events(
    State(state): State<HttpState>,
    Extension(console): Extension<Arc<Console>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&state, &console, &headers, false) {
        return r.into_response();
    }
    let rx = console.hub.subscribe(&state);
    let end = tokio::time::Instant::now() + STREAM_LIFETIME;
    let stream = futures_util::stream::unfold((rx, true), move |(mut rx, first)| async move {
        loop {
            if !first || rx.borrow().data.is_none() {
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return None },
                    _ = tokio::time::sleep_until(end) => return None,
                }
            }
            let frame = rx.borrow_and_update().clone();
            if frame.closing {
                return None;
            }
            if let Some(data) = frame.data {
                let event = Event::default().event("overview").data(&*data);
                return Some((Ok::<_, std::convert::Infallible>(event), (rx, false)));
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

// --- jobs ------------------------------------------------------------------------------------

/// The one place that turns a job id given as text into what the queue's operator API takes.
pub fn job_id(name: &str, raw: &str) -> Result<JobId, AdminError> {
    JobId::parse(name, raw.trim()).map_err(|e| AdminError::Invalid(e.to_string()))
}

fn failure(e: AdminError) -> Response {
    super::admin::answer_for("console", e)
}

/// The list filter from the page's query string (the `jobs list` filters); unknown
/// parameters are refused, naming them.
fn filter_from_query(query: Option<&str>) -> Result<Filter, AdminError> {
    let mut f = Filter::default();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let v = v.trim().to_string();
        if v.is_empty() {
            continue;
        }
        match &*k {
            "status" => f.status.extend(v.split(',').map(|s| s.trim().to_string())),
            "code" => f.code = Some(v),
            "since" => f.since = Some(admin::parse_time(&v)?),
            "until" => f.until = Some(admin::parse_time(&v)?),
            "to" => f.to = Some(v),
            "requestId" => f.request_id = Some(v),
            "from" => f.from = Some(v),
            "id" => {
                for id in v.split(',').filter(|s| !s.trim().is_empty()) {
                    f.ids.push(job_id("id", id)?);
                }
            }
            "limit" => {
                f.limit = Some(
                    v.parse()
                        .map_err(|_| AdminError::Invalid("limit: not a number".into()))?,
                )
            }
            "cursor" => f.cursor = Some(admin::Cursor::parse(&v)?),
            other => {
                let other: String = other.chars().take(40).collect();
                return Err(AdminError::Invalid(format!(
                    "unknown parameter {other:?} (status, code, since, until, to, requestId, \
                     from, id, limit, cursor)"
                )));
            }
        }
    }
    f.validate()
}

/// Every jobs endpoint in one shape: the guard (a session; for a POST, same origin too), then
/// `work` (parse, check, the queue's operator API), answered `{"ok":true, …}` or with the failure
/// (bad input 400, no such job 404, a conflict 409, the database 503). `work` is a future: it
/// does not start before the guard let the request in.
async fn on_jobs<T: serde::Serialize>(
    state: &HttpState,
    console: &Console,
    headers: &HeaderMap,
    post: bool,
    work: impl Future<Output = Result<T, AdminError>>,
) -> Response {
    if let Err(r) = guard(state, console, headers, post) {
        return r.into_response();
    }
    match work.await {
        Ok(answer) => ok_with(answer),
        Err(e) => failure(e),
    }
}

/// Who the history and the log name for a console action.
fn actor(dry_run: bool) -> Actor<'static> {
    Actor { by: BY, dry_run }
}

async fn list(
    State(state): State<HttpState>,
    Extension(console): Extension<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    on_jobs(&state, &console, &headers, false, async {
        let filter = filter_from_query(query.as_deref())?;
        state.admin().list(&filter).await
    })
    .await
}

async fn show(
    State(state): State<HttpState>,
    Extension(console): Extension<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    on_jobs(&state, &console, &headers, false, async {
        let job = state.admin().show(&job_id("id", &id)?).await?;
        Ok(json!({ "job": job }))
    })
    .await
}

/// The body of retry and cancel: the filter (as the list's), the ids of a selection, and how.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ActionBody {
    /// The list's query string: the filter of "everything matching".
    #[serde(default)]
    filter: String,
    /// A selection: job ids, as text or numbers.
    #[serde(default)]
    ids: Vec<serde_json::Value>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    resend_sent: bool,
}

fn action_filter(body: &ActionBody) -> Result<Filter, AdminError> {
    let mut f = filter_from_query(Some(&body.filter))?;
    f.cursor = None;
    f.limit = None;
    for id in &body.ids {
        let text = match id {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        f.ids.push(job_id("ids", &text)?);
    }
    f.validate()
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|e| AdminError::Invalid(format!("the JSON body: {e}")))
}

async fn retry(
    State(state): State<HttpState>,
    Extension(console): Extension<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    on_jobs(&state, &console, &headers, true, async {
        let body: ActionBody = parse_body(&body)?;
        let max = state.runner().settings().retry.max_attempts as i32;
        let (filter, actor) = (action_filter(&body)?, actor(body.dry_run));
        let report = state
            .admin()
            .retry(&filter, &actor, body.resend_sent, max)
            .await?;
        if !report.dry_run {
            tracing::info!(by = BY, retried = report.retried, "jobs retried");
        }
        Ok(report)
    })
    .await
}

async fn cancel(
    State(state): State<HttpState>,
    Extension(console): Extension<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    on_jobs(&state, &console, &headers, true, async {
        let body: ActionBody = parse_body(&body)?;
        if body.resend_sent {
            return Err(AdminError::Invalid(
                "resendSent applies to retry only".into(),
            ));
        }
        let (filter, actor) = (action_filter(&body)?, actor(body.dry_run));
        let report = state.admin().cancel(&filter, &actor).await?;
        if !report.dry_run {
            tracing::info!(by = BY, cancelled = report.cancelled, "jobs cancelled");
        }
        Ok(report)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleBody {
    #[serde(rename = "as")]
    settled_as: String,
    seq: Option<i32>,
}

async fn settle(
    State(state): State<HttpState>,
    Extension(console): Extension<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    on_jobs(&state, &console, &headers, true, async {
        let id = job_id("id", &id)?;
        let body: SettleBody = parse_body(&body)?;
        let settled_as: Settled = body.settled_as.parse()?;
        state
            .admin()
            .settle(&id, body.seq, settled_as, None, BY)
            .await
    })
    .await
}

// --- numbers ---------------------------------------------------------------------------------

async fn numbers(
    State(state): State<HttpState>,
    Extension(console): Extension<Arc<Console>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = guard(&state, &console, &headers, false) {
        return r.into_response();
    }
    let mut cache = console.numbers.lock().await;
    if let Some((at, value)) = cache.as_ref()
        && at.elapsed() < live::PERIOD
    {
        return ok_with(value.clone());
    }
    match numbers_now(&state).await {
        Ok(value) => {
            *cache = Some((Instant::now(), value.clone()));
            ok_with(value)
        }
        Err(e) => {
            tracing::error!(error = %crate::db::redact_sqlx(&e), "console: numbers");
            error(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
    }
}

/// What `outbound-runner numbers` shows, as JSON.
async fn numbers_now(state: &HttpState) -> sqlx::Result<serde_json::Value> {
    let settings = state.runner().settings();
    let wa = &settings.whatsapp;
    let numbers = state.numbers();
    let default_id = wa.default_number_id().to_string();
    let holds = numbers.holds().await?;
    let sent = numbers.sent_today(&default_id).await?;
    let tiers = numbers.tiers(wa).await?;
    let circuits = numbers.circuits().await?;
    let mut ids: Vec<String> = wa.number_ids().iter().map(|s| s.to_string()).collect();
    for h in &holds {
        if !ids.contains(&h.phone_number_id) {
            ids.push(h.phone_number_id.clone());
        }
    }
    let rows: Vec<serde_json::Value> =
        ids.iter()
            .map(|id| {
                let cfg = wa.number(Some(id));
                let hold = holds.iter().find(|h| &h.phone_number_id == id).map(
                    |h| json!({ "until": h.until, "reason": h.reason, "by": h.by, "at": h.at }),
                );
                let tier = cfg.as_ref().map(|c| {
                    let group = tiers.group(&c.tier_group());
                    json!({
                        "recipients": tiers.number(id),
                        "counted": group.recipients,
                        "limit": c.tier_limit,
                        "dropsAt": group.drops_at,
                    })
                });
                let circuits: Vec<serde_json::Value> = circuits
                    .iter()
                    .filter(|c| &c.phone_number_id == id)
                    .map(|c| {
                        json!({ "runner": c.runner, "state": c.state, "until": c.until,
                            "reason": c.reason })
                    })
                    .collect();
                json!({
                    "id": id,
                    "default": *id == default_id,
                    "configured": cfg.is_some(),
                    "ratePerSecond": cfg.as_ref().map(|c| c.rate_per_second),
                    "pairIntervalMs": cfg.as_ref().map(|c| c.pair_interval.as_millis() as u64),
                    "sentToday": sent.get(id).copied().unwrap_or(0),
                    "tier": tier,
                    "hold": hold,
                    "circuits": circuits,
                })
            })
            .collect();
    Ok(json!({ "numbers": rows, "at": chrono::Utc::now() }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    /// A duration (`30m`, `2h`); none: until resumed.
    #[serde(rename = "for")]
    for_: Option<String>,
    reason: Option<String>,
}

fn known_number(state: &HttpState, id: &str) -> Result<(), Refused> {
    let settings = state.runner().settings();
    if settings.whatsapp.number_ids().contains(&id) {
        Ok(())
    } else {
        Err(Refused(
            StatusCode::NOT_FOUND,
            "id: that number is not configured",
        ))
    }
}

async fn pause(
    State(state): State<HttpState>,
    Extension(console): Extension<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = guard(&state, &console, &headers, true) {
        return r.into_response();
    }
    if let Err(r) = known_number(&state, &id) {
        return r.into_response();
    }
    let body: PauseBody = match parse_body(&body) {
        Ok(b) => b,
        Err(e) => return failure(e),
    };
    let for_ = match body
        .for_
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if d > Duration::ZERO && d <= Duration::from_secs(366 * 86400) => Some(d),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "for: not a duration (e.g. 30m, 2h, 1d; at most a year)",
                );
            }
        },
    };
    let reason = body
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("paused from the console");
    if reason.chars().count() > 200 {
        return error(StatusCode::BAD_REQUEST, "reason: at most 200 characters");
    }
    match state.numbers().pause(&id, for_, reason, BY).await {
        Ok(()) => {
            *console.numbers.lock().await = None;
            tracing::info!(by = BY, number = %id, "number paused");
            ok_with(json!({ "paused": id }))
        }
        Err(e) => {
            tracing::error!(error = %crate::db::redact_sqlx(&e), "console: pause");
            error(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
    }
}

async fn resume(
    State(state): State<HttpState>,
    Extension(console): Extension<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = guard(&state, &console, &headers, true) {
        return r.into_response();
    }
    if let Err(r) = known_number(&state, &id) {
        return r.into_response();
    }
    let default_id = state
        .runner()
        .settings()
        .whatsapp
        .default_number_id()
        .to_string();
    match state.numbers().resume(&id, &default_id).await {
        Ok((was, woken)) => {
            *console.numbers.lock().await = None;
            tracing::info!(by = BY, number = %id, was_paused = was, woken, "number resumed");
            ok_with(json!({ "resumed": id, "wasPaused": was, "jobsDue": woken }))
        }
        Err(e) => {
            tracing::error!(error = %crate::db::redact_sqlx(&e), "console: resume");
            error(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_from_the_page() {
        let f = filter_from_query(Some(
            "status=failed&code=bad_payload&to=%2B15550001&id=7,clx1&cursor=1700000000000000.9",
        ))
        .unwrap();
        assert_eq!(f.status, vec!["failed"]);
        assert_eq!(f.to.as_deref(), Some("15550001"));
        assert_eq!(f.ids, vec![JobId::from("7"), JobId::from("clx1")]);
        assert_eq!(
            f.cursor,
            Some(admin::Cursor::parse("1700000000000000.9").unwrap())
        );
        // Empty fields (an untouched form input) are no criterion.
        assert!(filter_from_query(Some("status=&code=")).unwrap().is_empty());
        let e = filter_from_query(Some("colour=red"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let e = filter_from_query(Some("id=a%01b")).unwrap_err().to_string();
        assert!(e.starts_with("id:"), "{e}");
    }

    #[test]
    fn action_ids_as_text_or_numbers() {
        let b: ActionBody =
            parse_body(&Bytes::from_static(br#"{"ids":["3",4],"dryRun":true}"#)).unwrap();
        assert_eq!(
            action_filter(&b).unwrap().ids,
            vec![JobId::from("3"), JobId::from("4")]
        );
        let b: ActionBody =
            parse_body(&Bytes::from_static(br#"{"filter":"status=failed"}"#)).unwrap();
        assert_eq!(action_filter(&b).unwrap().status, vec!["failed"]);
    }
}
