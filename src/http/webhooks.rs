//! `/webhooks/whatsapp`: Meta's status webhooks (docs/http.md).
//!
//! ```text
//!  GET  ?hub.mode=subscribe&hub.verify_token=T&hub.challenge=C   200 C when T is whatsapp.verify_token, else 403
//!  POST (X-Hub-Signature-256: sha256=<hex HMAC-SHA256(raw body, whatsapp.app_secret)>)
//!       no app secret configured 404 · body over 1 MB 413 · no or wrong signature 401 (nothing
//!       is read) · not JSON 400 · anything else 200 once its statuses are committed (other
//!       shapes and fields: ignored; a status the database could never store, with a NUL or a
//!       timestamp outside 2015…now+1 day, is dropped and counted `rejected`, the rest applied)
//!       · the body not arriving within http.request_timeout 408 · the status writer failing
//!       503 · the app behind
//!       whatsapp.webhook_forward_url not answering 2xx 502 (Meta retries; statuses are
//!       idempotent)
//! ```
//!
//! The signature is checked over the raw bytes, in constant time, before anything is parsed.
//! Statuses for a phone number that is not configured (`whatsapp.phone_number_id` or
//! `[[whatsapp.numbers]]`) are ignored (counted).

use std::sync::LazyLock;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::HttpState;
use super::reply::{access_log, error};
use crate::delivery::statuses::Outcome;
use crate::whatsapp::statuses::{statuses_of, unstorable};

/// The path Meta calls.
pub const PATH: &str = "/webhooks/whatsapp";
/// The largest webhook body accepted (Meta's are a few kilobytes).
pub const BODY_LIMIT: usize = 1024 * 1024;
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// The webhook's routes (their own body limit: larger than the other endpoints').
pub fn routes(state: HttpState) -> Router {
    Router::new()
        .route(PATH, get(verify).post(receive))
        .layer(middleware::from_fn(access_log))
        .with_state(state)
}

/// `GET`: Meta's verification of the callback URL.
async fn verify(State(state): State<HttpState>, RawQuery(query): RawQuery) -> Response {
    let settings = state.runner().settings();
    let wa = &settings.whatsapp;
    if wa.app_secret.is_none() {
        return error(StatusCode::NOT_FOUND, "not found");
    }
    let mut mode = None;
    let mut token = None;
    let mut challenge = None;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "hub.mode" => mode = Some(v.into_owned()),
            "hub.verify_token" => token = Some(v.into_owned()),
            "hub.challenge" => challenge = Some(v.into_owned()),
            _ => {}
        }
    }
    let token_ok = match (&wa.verify_token, &token) {
        (Some(want), Some(got)) => {
            bool::from(want.expose_secret().as_bytes().ct_eq(got.as_bytes()))
        }
        _ => false,
    };
    match challenge {
        Some(c) if mode.as_deref() == Some("subscribe") && token_ok && c.len() <= 256 => {
            tracing::info!("Meta's webhook verification succeeded");
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], c).into_response()
        }
        _ => {
            tracing::warn!("a webhook verification was refused (wrong mode or verify token)");
            error(StatusCode::FORBIDDEN, "verification refused")
        }
    }
}

/// Whether `signature` (the header's value) is `sha256=` and the HMAC of `body` with `secret`,
/// compared in constant time.
pub fn signature_ok(secret: &[u8], body: &[u8], signature: Option<&str>) -> bool {
    let Some(hex_sig) = signature.and_then(|s| s.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(given) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// `sha256=<hex>` of `body` with `secret` (tests, the mock, the benchmark).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `POST`: a webhook from Meta (or passed on by the app).
async fn receive(State(state): State<HttpState>, request: Request) -> Response {
    let runner = state.runner();
    let settings = runner.settings();
    let outcome = |o: &str| runner.count_webhook(o);
    let Some(secret) = &settings.whatsapp.app_secret else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        outcome("too_large");
        return error(StatusCode::PAYLOAD_TOO_LARGE, "the body is over 1 MB");
    }
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) if super::server::is_body_deadline(&e) => {
            // The signature needs the body: the deadline is what bounds the wait.
            outcome("timeout");
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive within http.request_timeout",
            );
        }
        Err(_) => {
            outcome("too_large");
            return error(StatusCode::PAYLOAD_TOO_LARGE, "the body is over 1 MB");
        }
    };
    let signature = parts
        .headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    if !signature_ok(secret.expose_secret().as_bytes(), &body, signature) {
        outcome("bad_signature");
        tracing::warn!(
            signed = signature.is_some(),
            bytes = body.len(),
            "a webhook without a valid X-Hub-Signature-256 was refused"
        );
        return error(StatusCode::UNAUTHORIZED, "bad signature");
    }

    // Signed: pass it on to the app (if configured) while we apply the statuses.
    let forward_url = settings.whatsapp.webhook_forward_url.clone();
    let forward = async {
        if forward_url.is_empty() {
            None
        } else {
            Some(
                forward(
                    &forward_url,
                    settings.whatsapp.webhook_forward_timeout,
                    &parts.headers,
                    body.clone(),
                )
                .await,
            )
        }
    };
    let apply = async {
        let Ok(json) = serde_json::from_slice::<Value>(&body) else {
            return Err((StatusCode::BAD_REQUEST, "the body is not JSON"));
        };
        let ours = settings.whatsapp.number_ids();
        let (mut updates, other_number) = statuses_of(&json, &ours);
        for kind in other_number {
            runner.count_status(kind.as_str(), "other_number");
        }
        // A status the database could never store costs only itself: counted, logged, and
        // answered 200 with the rest (Meta would retry it for days, failing the same way).
        let before = updates.len();
        updates.retain(|u| match unstorable(u) {
            None => true,
            Some(why) => {
                runner.count_status(u.kind.as_str(), "rejected");
                tracing::warn!(
                    wamid = %u.wamid.escape_debug(),
                    "a webhook status was refused: it holds {why}; the rest of the webhook is applied"
                );
                false
            }
        });
        let rejected = updates.len() < before;
        if updates.is_empty() {
            return Ok(rejected);
        }
        match runner.apply_statuses(updates).await {
            Ok(outcomes) => Ok(rejected || outcomes.contains(&Outcome::Rejected)),
            Err(why) => {
                tracing::warn!(error = %why, "applying a webhook's statuses failed; Meta will retry");
                Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the statuses could not be recorded; retry",
                ))
            }
        }
    };
    let (forwarded, applied) = tokio::join!(forward, apply);
    let rejected = match applied {
        Ok(rejected) => rejected,
        Err((status, why)) => {
            outcome(if status == StatusCode::BAD_REQUEST {
                "malformed"
            } else {
                "unavailable"
            });
            return error(status, why);
        }
    };
    match forwarded {
        None | Some(Ok(())) if rejected => {
            outcome("rejected");
            ok()
        }
        None => {
            outcome("ok");
            ok()
        }
        Some(Ok(())) => {
            outcome("forwarded");
            ok()
        }
        Some(Err(why)) => {
            outcome("forward_failed");
            tracing::warn!(
                reason = %why,
                "passing a webhook on to whatsapp.webhook_forward_url failed; answering 502 so Meta retries"
            );
            error(StatusCode::BAD_GATEWAY, "the app did not take the webhook")
        }
    }
}

fn ok() -> Response {
    (StatusCode::OK, axum::Json(serde_json::json!({"ok": true}))).into_response()
}

static FORWARD_CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .user_agent(concat!("outbound-runner/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("building the forwarding HTTP client")
});

/// Passes the webhook on unchanged: the same body and the same signature headers. The app has
/// `timeout` (`whatsapp.webhook_forward_timeout`) to answer.
async fn forward(
    url: &str,
    timeout: Duration,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(), String> {
    let mut request = FORWARD_CLIENT.post(url).timeout(timeout).body(body);
    for name in [
        header::CONTENT_TYPE.as_str(),
        SIGNATURE_HEADER,
        "x-hub-signature",
    ] {
        if let Some(v) = headers.get(name) {
            request = request.header(name, v.clone());
        }
    }
    match request.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("the app answered HTTP {}", r.status().as_u16())),
        Err(e) => Err(crate::whatsapp::client::describe(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_over_the_raw_bytes() {
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let sig = sign(b"app-secret", body);
        assert!(signature_ok(b"app-secret", body, Some(&sig)));
        assert!(!signature_ok(b"other-secret", body, Some(&sig)));
        assert!(!signature_ok(b"app-secret", b"{}", Some(&sig)));
        assert!(!signature_ok(b"app-secret", body, None));
        assert!(!signature_ok(b"app-secret", body, Some(&sig[7..])));
        assert!(!signature_ok(b"app-secret", body, Some("sha256=zz")));
        assert!(!signature_ok(b"app-secret", body, Some("sha256=")));
    }
}
