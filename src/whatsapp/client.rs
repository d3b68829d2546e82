//! The WhatsApp Cloud API client. [`CloudApi::send`] turns every way a request can end into
//! either a wamid or a [`SendError`] carrying the class [`super::codes`] gives the answer,
//! Meta's code, and a readable reason that keeps `error.code`, `error_data.details` and
//! `fbtrace_id`.
//!
//! What a transport failure means depends on whether the request may have reached Meta:
//!
//! | failure | class |
//! |---|---|
//! | connect failed (refused, DNS, TLS handshake, connect timeout) | retry: nothing was written |
//! | timeout or reset after the request was written | unknown: Meta may have accepted it |
//! | 2xx without a readable `messages[0].id` | unknown: Meta accepted something |
//! | non-2xx with an HTML or non-JSON body, 5xx | retry |
//!
//! Neither the access token nor the request URL ever appears in an error text: reqwest errors
//! are stripped of their URL before they are described.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use super::codes::{Class, classify};
use crate::config::WhatsappSettings;

/// The most of an answer body we read (Meta's answers are a few hundred bytes).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Each field of Meta's error quoted in `"lastError"` is cut to this many characters.
const MAX_FIELD_CHARS: usize = 300;

/// Why a send did not end with a wamid.
#[derive(Debug, Clone, PartialEq)]
pub struct SendError {
    pub class: Class,
    /// For `"lastErrorCode"`: Meta's `error.code` (`"131026"`), else ours (`"http_502"`,
    /// `"connect_failed"`, `"timeout"`, ...).
    pub code: String,
    /// For `"lastError"`: readable, with Meta's message, details and fbtrace_id when given.
    pub message: String,
    /// The answer's `Retry-After`, when it had one.
    pub retry_after: Option<Duration>,
}

impl SendError {
    fn new(class: Class, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }
}

/// The Cloud API, over a shared HTTP client. The settings (token, URL, timeout) are passed per
/// call, so a reload applies to the next send.
#[derive(Clone)]
pub struct CloudApi {
    http: reqwest::Client,
}

impl CloudApi {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }

    /// `{api_base}/{api_version}/{phone_number_id}/messages`.
    pub fn messages_url(wa: &WhatsappSettings) -> String {
        format!(
            "{}/{}/{}/messages",
            wa.api_base.trim_end_matches('/'),
            wa.api_version,
            wa.phone_number_id
        )
    }

    /// The request body: the message object as the app composed it, with the envelope fields
    /// set by us (`messaging_product`, `recipient_type`, `to`, `biz_opaque_callback_data`).
    pub fn request_body(to: &str, callback: &str, message: &Value) -> Value {
        let mut body = match message {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        body.insert("messaging_product".into(), "whatsapp".into());
        body.entry("recipient_type")
            .or_insert_with(|| "individual".into());
        body.insert("to".into(), to.into());
        body.insert("biz_opaque_callback_data".into(), callback.into());
        Value::Object(body)
    }

    /// Sends one message. `callback` goes out as `biz_opaque_callback_data` (it names the
    /// message's ledger row, see [`super::statuses::callback_id`]). `Ok` is the wamid Meta gave
    /// it.
    pub async fn send(
        &self,
        wa: &WhatsappSettings,
        to: &str,
        callback: &str,
        message: &Value,
    ) -> Result<String, SendError> {
        let token = wa
            .access_token
            .as_ref()
            .map(|t| t.expose_secret())
            .unwrap_or_default();
        let request = self
            .http
            .post(Self::messages_url(wa))
            .bearer_auth(token)
            .timeout(wa.timeout)
            .json(&Self::request_body(to, callback, message));
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Err(transport_error(e, wa.timeout)),
        };
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = read_capped(response, MAX_ANSWER_BYTES).await;
        match interpret(status, &content_type, body) {
            Ok(wamid) => Ok(wamid),
            Err(mut err) => {
                err.retry_after = retry_after;
                Err(err)
            }
        }
    }
}

/// What an answer means, once its status and body are in. Split from [`CloudApi::send`] so the
/// whole table can be tested without a server.
pub fn interpret(
    status: u16,
    content_type: &str,
    body: Result<Vec<u8>, reqwest::Error>,
) -> Result<String, SendError> {
    let success = (200..300).contains(&status);
    let body = match body {
        Ok(b) => b,
        Err(e) if success => {
            return Err(SendError::new(
                Class::Unknown,
                "answer_lost",
                format!(
                    "the Cloud API answered HTTP {status} but the answer could not be read ({}); \
                     the message may have been accepted",
                    describe(e)
                ),
            ));
        }
        Err(e) => {
            return Err(SendError::new(
                Class::Retry,
                format!("http_{status}"),
                format!(
                    "the Cloud API answered HTTP {status}; reading the answer failed: {}",
                    describe(e)
                ),
            ));
        }
    };
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    if success {
        let wamid = json
            .as_ref()
            .and_then(|v| v.pointer("/messages/0/id"))
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty());
        return match wamid {
            Some(id) => Ok(id.to_string()),
            None => Err(SendError::new(
                Class::Unknown,
                "no_wamid",
                format!(
                    "the Cloud API answered HTTP {status} without a message id ({}); the message \
                     may have been accepted",
                    body_kind(content_type, &body, json.is_some())
                ),
            )),
        };
    }
    match json.as_ref().and_then(|v| v.get("error")) {
        Some(error) if error.is_object() => Err(meta_error(status, error)),
        _ => Err(SendError::new(
            Class::Retry,
            format!("http_{status}"),
            format!(
                "the Cloud API answered HTTP {status} with {} (no Meta error object); treated as \
                 transient",
                body_kind(content_type, &body, json.is_some())
            ),
        )),
    }
}

/// Meta's error envelope: `{"error":{"message","type","code","error_subcode","error_data":
/// {"details"},"fbtrace_id"}}`.
fn meta_error(status: u16, error: &Value) -> SendError {
    let code = error.get("code").and_then(|c| {
        c.as_i64()
            .or_else(|| c.as_str().and_then(|s| s.trim().parse().ok()))
    });
    let text = |v: Option<&Value>| {
        v.and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        })
        .map(|s| clip(&s))
        .filter(|s| !s.is_empty())
    };
    let message = text(error.get("message"));
    let details = text(error.pointer("/error_data/details"));
    let subcode = error.get("error_subcode").and_then(Value::as_i64);
    let trace = text(error.get("fbtrace_id"));
    let class = classify(status, code);

    let mut out = match code {
        Some(c) => format!("Cloud API error {c}"),
        None => "Cloud API error without a code".to_string(),
    };
    if let Some(s) = subcode {
        out.push_str(&format!(" (subcode {s})"));
    }
    out.push_str(&format!(" [HTTP {status}, {}]", class.label()));
    if let Some(m) = message {
        out.push_str(&format!(": {m}"));
    }
    if let Some(d) = details {
        out.push_str(&format!("; details: {d}"));
    }
    if let Some(t) = trace {
        out.push_str(&format!("; fbtrace_id: {t}"));
    }
    let code = match code {
        Some(c) => c.to_string(),
        None => format!("http_{status}"),
    };
    SendError::new(class, code, out)
}

/// A request that never produced an answer. Only a failed connect is known not to have reached
/// Meta; anything later is ambiguous.
fn transport_error(e: reqwest::Error, timeout: Duration) -> SendError {
    if e.is_connect() {
        SendError::new(
            Class::Retry,
            "connect_failed",
            format!(
                "could not connect to the Cloud API (nothing was sent): {}",
                describe(e)
            ),
        )
    } else if e.is_builder() {
        SendError::new(
            Class::Retry,
            "request_invalid",
            format!(
                "the request could not be built (nothing was sent): {}",
                describe(e)
            ),
        )
    } else if e.is_timeout() {
        SendError::new(
            Class::Unknown,
            "timeout",
            format!(
                "no answer from the Cloud API within whatsapp.timeout ({}) after the request was \
                 sent; the message may have been accepted",
                humantime::format_duration(timeout)
            ),
        )
    } else {
        SendError::new(
            Class::Unknown,
            "connection_lost",
            format!(
                "the connection to the Cloud API broke after the request was sent ({}); the \
                 message may have been accepted",
                describe(e)
            ),
        )
    }
}

/// A reqwest error as text, without the URL, with its causes.
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    clip(&out)
}

/// Reads at most `max` bytes of the answer (a longer one is cut, not an error).
pub async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = max.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= max {
            break;
        }
    }
    Ok(out)
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Meta and is ignored).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: f64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

fn body_kind(content_type: &str, body: &[u8], json: bool) -> String {
    let ct = if content_type.is_empty() {
        "no content type".to_string()
    } else {
        clip(content_type)
    };
    if body.is_empty() {
        format!("an empty body ({ct})")
    } else if json {
        format!("a JSON body of {} bytes ({ct})", body.len())
    } else {
        format!("a non-JSON body of {} bytes ({ct})", body.len())
    }
}

/// One line, at most [`MAX_FIELD_CHARS`] characters.
fn clip(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = one_line.trim();
    if trimmed.chars().count() > MAX_FIELD_CHARS {
        let cut: String = trimmed.chars().take(MAX_FIELD_CHARS).collect();
        format!("{cut}…")
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(status: u16, body: Value) -> Result<String, SendError> {
        interpret(
            status,
            "application/json",
            Ok(serde_json::to_vec(&body).unwrap()),
        )
    }

    fn envelope(code: i64) -> Value {
        json!({"error": {"message": "(#x) something", "type": "OAuthException", "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": "the details"},
            "fbtrace_id": "AbCdEf123"}})
    }

    #[test]
    fn acceptance_yields_the_wamid() {
        let ok = answer(
            200,
            json!({"messaging_product": "whatsapp",
                "contacts": [{"input": "15551234567", "wa_id": "15551234567"}],
                "messages": [{"id": "wamid.HBgL"}]}),
        );
        assert_eq!(ok.unwrap(), "wamid.HBgL");
    }

    #[test]
    fn meta_errors_keep_code_details_and_trace() {
        let e = answer(400, envelope(131026)).unwrap_err();
        assert_eq!(e.class, Class::Fail);
        assert_eq!(e.code, "131026");
        assert!(
            e.message.contains("Cloud API error 131026"),
            "{}",
            e.message
        );
        assert!(e.message.contains("details: the details"), "{}", e.message);
        assert!(e.message.contains("fbtrace_id: AbCdEf123"), "{}", e.message);
        assert!(e.message.contains("HTTP 400"), "{}", e.message);

        // The code decides, not the status.
        assert_eq!(answer(500, envelope(190)).unwrap_err().class, Class::Halt);
        assert_eq!(
            answer(400, envelope(131000)).unwrap_err().class,
            Class::Retry
        );
        assert_eq!(
            answer(403, envelope(130429)).unwrap_err().class,
            Class::SlowNumber
        );
        // A code sent as a string is still a code.
        let e = answer(400, json!({"error": {"code": "131056"}})).unwrap_err();
        assert_eq!((e.class, e.code.as_str()), (Class::SlowRecipient, "131056"));
    }

    #[test]
    fn html_and_non_json_bodies_are_transient() {
        let html = b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec();
        let e = interpret(502, "text/html", Ok(html)).unwrap_err();
        assert_eq!((e.class, e.code.as_str()), (Class::Retry, "http_502"));
        assert!(e.message.contains("non-JSON"), "{}", e.message);
        let e = interpret(400, "text/plain", Ok(b"bad".to_vec())).unwrap_err();
        assert_eq!(e.class, Class::Retry);
        let e = interpret(503, "", Ok(Vec::new())).unwrap_err();
        assert_eq!(e.class, Class::Retry);
    }

    #[test]
    fn a_success_without_a_wamid_is_ambiguous() {
        let e = interpret(200, "text/html", Ok(b"<html/>".to_vec())).unwrap_err();
        assert_eq!((e.class, e.code.as_str()), (Class::Unknown, "no_wamid"));
        let e = answer(200, json!({"messages": []})).unwrap_err();
        assert_eq!(e.class, Class::Unknown);
    }

    #[test]
    fn the_request_body_wraps_the_message() {
        let body = CloudApi::request_body(
            "15551234567",
            "42",
            &json!({"type": "text", "text": {"body": "hi"}, "to": "ignored"}),
        );
        assert_eq!(
            body,
            json!({"messaging_product": "whatsapp", "recipient_type": "individual",
                "to": "15551234567", "biz_opaque_callback_data": "42",
                "type": "text", "text": {"body": "hi"}})
        );
    }

    #[test]
    fn retry_after_in_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn long_fields_are_clipped_to_one_line() {
        let long = "x\n".repeat(1000);
        let e = answer(400, json!({"error": {"code": 100, "message": long}})).unwrap_err();
        assert!(e.message.len() < 1000, "{}", e.message.len());
        assert!(!e.message.contains('\n'));
    }
}
