//! The answers every route shares: the `{"ok":false,"error":…}` body of a refusal, and the access
//! log that also turns the refusals made below the handlers into that shape. Apart from
//! `routes` so that the routes and their submodules (`admin`, `auth`, `webhooks`, `server`)
//! import it without importing each other.

use std::time::Instant;

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// `{"ok":false,"error":…}`: every refusal and failure, `ok` first like the guide's answers (docs/http.md).
#[derive(Serialize)]
pub(crate) struct ErrorBody<'a> {
    ok: bool,
    error: &'a str,
}

/// [`ErrorBody`] with `status`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(ErrorBody {
            ok: false,
            error: message,
        }),
    )
        .into_response()
}

/// One debug line per request: method, path (never the query string: it may carry the token),
/// status and time.
pub(crate) async fn access_log(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let mut path = request.uri().path().to_string();
    if path.len() > 128 {
        let mut cut = 128;
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        path.truncate(cut);
        path.push('…');
    }
    let started = Instant::now();
    let response = json_errors(next.run(request).await);
    tracing::debug!(
        %method,
        path,
        status = response.status().as_u16(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "http request"
    );
    response
}

/// A refusal made below the handlers (the body limit's 413, axum's 405 and rejections) in
/// the same `{"ok":false,"error":…}` shape as the rest; the status and headers are kept.
fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request body too large".to_string(),
        s => s
            .canonical_reason()
            .unwrap_or("request refused")
            .to_ascii_lowercase(),
    };
    let fresh = error(status, &message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, fresh.into_body())
}
