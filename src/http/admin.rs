//! The admin API: the operators' actions of `outbound-runner jobs` over HTTP, for scripts and a
//! future web console. The statements are [`crate::queue::admin`]'s, reached through the
//! [`QueueAdmin`](crate::queue::admin::QueueAdmin) handle the runner gives the HTTP state
//! ([`HttpState::admin`]); docs/http.md documents the routes and their JSON.
//!
//! ```text
//! GET  /api/admin/jobs?status=failed&code=131000&limit=50&cursor=N  {"ok":true,"jobs":[…],"nextCursor":N|null}
//! GET  /api/admin/jobs/{id}                                         {"ok":true,"job":{…,"messages":[…],"timeline":[…]}}
//! POST /api/admin/jobs/retry       {"code":"131000","dryRun":true}  {"ok":true,"dryRun":…,"matched":…,"retried":…,…}
//! POST /api/admin/jobs/cancel      {"ids":[1,2]}                    {"ok":true,"dryRun":…,"matched":…,"cancelled":…,…}
//! POST /api/admin/jobs/{id}/settle {"as":"sent"}                    {"ok":true,"jobId":…,"messages":[…],"jobStatus":…}
//! ```
//!
//! Auth: `ADMIN_TOKEN` (`http.admin_token`) as `Authorization: Bearer`, compared like the
//! trigger tokens ([`super::auth`]), before the body is read (a client without the token never
//! makes us wait for a body). Unset: every admin route answers 404. A token-like query
//! parameter (`token`, `access_token`, …) is refused with 400 whatever the header says: a URL
//! ends up in logs and histories. Errors are `{"ok":false,"error":…}` (400 bad input, 401,
//! 404 disabled or no such job, 409 not in a state the action applies to, 503 database).
//! Every action is logged with who (`admin-api`) and how many rows.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::HttpState;
use super::auth::{self, Endpoint};
use super::reply::error;
use crate::queue::JobId;
use crate::queue::admin::{self, Actor, AdminError, Cursor, Filter, Settled};

/// Who the history and the log say did it.
pub const BY: &str = "admin-api";

/// Query parameters that look like a credential: refused.
const TOKEN_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "admin_token",
    "adminToken",
    "bearer",
    "authorization",
];

/// The admin routes (mounted on the API listener).
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/admin/jobs", get(list))
        .route("/api/admin/jobs/retry", post(retry))
        .route("/api/admin/jobs/cancel", post(cancel))
        .route("/api/admin/jobs/{id}", get(show))
        .route("/api/admin/jobs/{id}/settle", post(settle))
}

/// Disabled (404), a token in the query (400), then the bearer (401): the refusal, if any.
fn refuse(state: &HttpState, headers: &HeaderMap, query: Option<&str>) -> Option<Response> {
    let settings = state.runner().settings();
    if settings.http.admin_token.is_none() {
        return Some(auth::Denied::Disabled.into_response());
    }
    if let Some(q) = query
        && url::form_urlencoded::parse(q.as_bytes())
            .any(|(k, _)| TOKEN_PARAMS.iter().any(|t| k.eq_ignore_ascii_case(t)))
    {
        tracing::warn!(
            "admin API request refused: a token was given in the query string (header only: \
             Authorization: Bearer)"
        );
        return Some(error(
            StatusCode::BAD_REQUEST,
            "the admin token is accepted in the Authorization header only, never in the URL",
        ));
    }
    auth::authorize(Endpoint::Admin, &settings.http, headers, None)
        .err()
        .map(IntoResponse::into_response)
}

fn failure(e: AdminError) -> Response {
    answer_for("admin API", e)
}

/// The answer to an operator action that failed, for the admin API and the console (`who`
/// names it in the log): bad input 400, no such job 404, a conflict 409, and 503 only when the
/// database really failed (logged at ERROR).
pub(super) fn answer_for(who: &str, e: AdminError) -> Response {
    let status = match &e {
        AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
        AdminError::NotFound(_) => StatusCode::NOT_FOUND,
        AdminError::Conflict(_) => StatusCode::CONFLICT,
        AdminError::Database(_) => {
            tracing::error!("{who}: {e}");
            return error(StatusCode::SERVICE_UNAVAILABLE, "database unavailable");
        }
    };
    error(status, &e.to_string())
}

/// `{"ok":true, …value's fields}`, `ok` first like every other answer (the admin API's and the
/// console's).
pub(super) fn ok_with(value: impl serde::Serialize) -> Response {
    #[derive(serde::Serialize)]
    struct Answer<T> {
        ok: bool,
        #[serde(flatten)]
        value: T,
    }
    axum::Json(Answer { ok: true, value }).into_response()
}

fn bad(msg: impl Into<String>) -> AdminError {
    AdminError::Invalid(msg.into())
}

/// The list filter from query parameters; unknown parameters are refused.
fn filter_from_query(query: Option<&str>) -> Result<Filter, AdminError> {
    let mut f = Filter::default();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let v = v.into_owned();
        let int = |name: &str| -> Result<i64, AdminError> {
            v.trim()
                .parse()
                .map_err(|_| bad(format!("{name}: not a number")))
        };
        match &*k {
            "status" => f.status.extend(v.split(',').map(|s| s.trim().to_string())),
            "code" => f.code = Some(v),
            "since" | "until" => {
                let t = admin::parse_time(&v).map_err(|e| bad(format!("{k}: {e}")))?;
                if k == "since" {
                    f.since = Some(t);
                } else {
                    f.until = Some(t);
                }
            }
            "to" => f.to = Some(v),
            "requestId" => f.request_id = Some(v),
            "from" => f.from = Some(v),
            "id" | "ids" => {
                for id in v.split(',') {
                    f.ids.push(job_id(id.trim())?);
                }
            }
            "limit" => f.limit = Some(int("limit")?),
            "cursor" => f.cursor = Some(Cursor::parse(&v)?),
            other => {
                let other: String = other.chars().take(40).collect();
                return Err(bad(format!(
                    "unknown parameter {other:?} (status, code, since, until, to, requestId, \
                     from, id, limit, cursor)"
                )));
            }
        }
    }
    f.validate()
}

async fn list(
    State(state): State<HttpState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if let Some(r) = refuse(&state, &headers, query.as_deref()) {
        return r;
    }
    let filter = match filter_from_query(query.as_deref()) {
        Ok(f) => f,
        Err(e) => return failure(e),
    };
    match state.admin().list(&filter).await {
        Ok(page) => ok_with(page),
        Err(e) => failure(e),
    }
}

/// A job id from a path or a parameter: the app's own id, as a string (any type's).
fn job_id(raw: &str) -> Result<JobId, AdminError> {
    JobId::parse("id", raw).map_err(|e| bad(e.to_string()))
}

async fn show(
    State(state): State<HttpState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = refuse(&state, &headers, query.as_deref()) {
        return r;
    }
    let id = match job_id(&id) {
        Ok(id) => id,
        Err(e) => return failure(e),
    };
    match state.admin().show(&id).await {
        Ok(job) => ok_with(json!({ "job": job })),
        Err(e) => failure(e),
    }
}

/// `status` as one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The body of retry and cancel: the filter, and how.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ActionBody {
    status: Option<OneOrMany>,
    code: Option<String>,
    since: Option<String>,
    until: Option<String>,
    to: Option<String>,
    request_id: Option<String>,
    from: Option<String>,
    /// Strings (the app's ids); numbers are taken as their decimal text.
    #[serde(default)]
    ids: Vec<IdIn>,
    limit: Option<i64>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    dry_run: bool,
    /// retry only.
    #[serde(default)]
    resend_sent: bool,
}

/// The body of an action, once the token was accepted (see [`read_body`]): an extractor whose
/// rejection is the refusal.
struct Authorized(Bytes);

impl axum::extract::FromRequest<HttpState> for Authorized {
    type Rejection = Response;

    async fn from_request(request: Request, state: &HttpState) -> Result<Self, Response> {
        let (parts, body) = request.into_parts();
        if let Some(r) = refuse(state, &parts.headers, parts.uri.query()) {
            return Err(r);
        }
        read_body(body).await.map(Authorized)
    }
}

/// An action's report, or why it failed.
fn answer(result: Result<impl serde::Serialize, AdminError>) -> Response {
    match result {
        Ok(report) => ok_with(report),
        Err(e) => failure(e),
    }
}

/// The body, read only once the token was accepted (a client without it never makes us wait
/// for one), within the body limit and `http.request_timeout` (src/http/server.rs).
async fn read_body(body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, super::BODY_LIMIT)
        .await
        .map_err(|e| {
            if super::server::is_body_deadline(&e) {
                error(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive within http.request_timeout",
                )
            } else {
                error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
            }
        })
}

/// An id in a JSON body.
#[derive(Deserialize)]
#[serde(untagged)]
enum IdIn {
    Text(String),
    Number(i64),
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, AdminError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| bad(format!("the JSON body: {e}")))
}

fn action_filter(body: &ActionBody) -> Result<Filter, AdminError> {
    let time = |name: &str, s: &Option<String>| {
        s.as_deref()
            .map(|v| admin::parse_time(v).map_err(|e| bad(format!("{name}: {e}"))))
            .transpose()
    };
    Filter {
        status: match &body.status {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![s.clone()],
            Some(OneOrMany::Many(v)) => v.clone(),
        },
        code: body.code.clone(),
        since: time("since", &body.since)?,
        until: time("until", &body.until)?,
        to: body.to.clone(),
        request_id: body.request_id.clone(),
        from: body.from.clone(),
        ids: body
            .ids
            .iter()
            .map(|id| match id {
                IdIn::Text(s) => job_id(s),
                IdIn::Number(n) => Ok(JobId::from(*n)),
            })
            .collect::<Result<_, _>>()?,
        limit: body.limit,
        cursor: None,
        all: body.all,
    }
    .validate()
}

async fn retry(State(state): State<HttpState>, Authorized(body): Authorized) -> Response {
    let result = async {
        let body: ActionBody = parse_body(&body)?;
        let filter = action_filter(&body)?;
        let settings = state.runner().settings();
        let actor = Actor {
            by: BY,
            dry_run: body.dry_run,
        };
        state
            .admin()
            .retry(
                &filter,
                &actor,
                body.resend_sent,
                settings.retry.max_attempts as i32,
            )
            .await
    }
    .await;
    answer(result)
}

async fn cancel(State(state): State<HttpState>, Authorized(body): Authorized) -> Response {
    let result = async {
        let body: ActionBody = parse_body(&body)?;
        if body.resend_sent {
            return Err(bad("resendSent applies to retry only"));
        }
        let filter = action_filter(&body)?;
        let actor = Actor {
            by: BY,
            dry_run: body.dry_run,
        };
        state.admin().cancel(&filter, &actor).await
    }
    .await;
    answer(result)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleBody {
    #[serde(rename = "as")]
    settled_as: String,
    seq: Option<i32>,
    wamid: Option<String>,
}

async fn settle(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    Authorized(body): Authorized,
) -> Response {
    let result = async {
        let id = job_id(&id)?;
        let body: SettleBody = parse_body(&body)?;
        let settled_as: Settled = body.settled_as.parse()?;
        state
            .admin()
            .settle(&id, body.seq, settled_as, body.wamid.as_deref(), BY)
            .await
    }
    .await;
    answer(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_filters_parse_and_unknown_parameters_are_refused() {
        let f =
            filter_from_query(Some("status=failed,cancelled&code=http_502&id=3&id=4,5")).unwrap();
        assert_eq!(f.status, vec!["cancelled", "failed"]);
        assert_eq!(f.code.as_deref(), Some("http_502"));
        assert_eq!(f.ids, vec![JobId::from(3), JobId::from(4), JobId::from(5)]);
        let f = filter_from_query(Some("id=clx0a,clx0b")).unwrap();
        assert_eq!(f.ids, vec![JobId::from("clx0a"), JobId::from("clx0b")]);
        assert!(filter_from_query(Some("id=")).is_err());
        assert!(filter_from_query(Some("cursor=7")).is_err());
        assert!(
            filter_from_query(Some("colour=red"))
                .unwrap_err()
                .to_string()
                .contains("unknown parameter")
        );
        assert!(filter_from_query(Some("status=bogus")).is_err());
        assert!(filter_from_query(Some("limit=ten")).is_err());
    }

    #[test]
    fn action_bodies_refuse_unknown_fields() {
        let b = Bytes::from_static(br#"{"status":"failed","dryRun":true}"#);
        let body: ActionBody = parse_body(&b).unwrap();
        assert!(body.dry_run);
        assert_eq!(action_filter(&body).unwrap().status, vec!["failed"]);
        let b = Bytes::from_static(br#"{"stauts":"failed"}"#);
        assert!(parse_body::<ActionBody>(&b).is_err());
    }
}
