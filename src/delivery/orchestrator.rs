//! The orchestrator: composes the reply for a job whose payload carries `input`.
//!
//! `POST {orchestrator.url}` with `{"jobId", "requestId", "to", "input"}` and
//! `Authorization: Bearer {orchestrator.token}` (when set), bounded by `orchestrator.timeout`.
//! The answer is `{"messages": [Cloud API message objects, one or more]}`; it is checked like a
//! payload's `message` (the envelope, not Meta's schema).
//!
//! | answer | the job |
//! |---|---|
//! | 2xx with valid messages | composed (saved before anything is sent; never asked again) |
//! | 5xx, 408, 429, timeout, connection failure | retried with backoff (`Retry-After` honoured) |
//! | other 4xx | failed (`orchestrator_rejected`) with the status and the start of the body |
//! | 2xx that is not JSON, has no `messages`, or an invalid message | failed (`orchestrator_bad_answer`) |
//! | no `orchestrator.url` configured | failed (`no_orchestrator`) |

use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::payload::parse_messages;
use crate::config::OrchestratorSettings;
use crate::queue::{Action, Job, JobError};
use crate::whatsapp::client::{describe, read_capped, retry_after};

/// The most of an answer we read.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// How much of a refusing answer's body `"lastError"` quotes.
const QUOTE_CHARS: usize = 200;

/// A composed reply: the orchestrator's answer as given (saved in `"OutboundJob".composed`) and
/// the messages in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Composed {
    pub answer: Value,
    pub messages: Vec<Value>,
}

/// The messages of a saved or fresh answer, checked.
pub fn messages_of(answer: &Value) -> Result<Vec<Value>, String> {
    let Some(obj) = answer.as_object() else {
        return Err("the answer is not a JSON object with `messages`".into());
    };
    let Some(messages) = obj.get("messages") else {
        return Err("the answer has no `messages`".into());
    };
    parse_messages(messages).map_err(|e| e.message.replace("`message`", "`messages`"))
}

/// Asks the orchestrator for the reply to `job`.
pub async fn compose(
    http: &reqwest::Client,
    settings: &OrchestratorSettings,
    job: &Job,
    to: &str,
    input: &Value,
) -> Result<Composed, JobError> {
    if settings.url.is_empty() {
        return Err(JobError::fail(
            "no_orchestrator",
            "the payload has `input` but no orchestrator is configured (orchestrator.url); \
             put the reply in `message` or configure the orchestrator",
        ));
    }
    let mut request = http
        .post(&settings.url)
        .timeout(settings.timeout)
        .json(&json!({
            "jobId": job.id,
            "requestId": job.request_id,
            "to": to,
            "input": input,
        }));
    if let Some(token) = &settings.token {
        request = request.bearer_auth(token.expose_secret());
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            let what = if e.is_timeout() {
                format!(
                    "the orchestrator did not answer within orchestrator.timeout ({})",
                    humantime::format_duration(settings.timeout)
                )
            } else {
                format!("calling the orchestrator failed: {}", describe(e))
            };
            return Err(JobError::retry("orchestrator_unavailable", what));
        }
    };
    let status = response.status().as_u16();
    let after = retry_after(response.headers());
    let body = match read_capped(response, MAX_ANSWER_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            return Err(JobError::retry(
                "orchestrator_unavailable",
                format!(
                    "reading the orchestrator's answer (HTTP {status}) failed: {}",
                    describe(e)
                ),
            ));
        }
    };
    match status {
        200..=299 => {}
        408 | 429 | 500..=599 => {
            return Err(JobError::new(
                Action::Retry { after },
                format!("orchestrator_{status}"),
                format!("the orchestrator answered HTTP {status}: {}", quote(&body)),
            ));
        }
        _ => {
            return Err(JobError::fail(
                "orchestrator_rejected",
                format!(
                    "the orchestrator refused the job with HTTP {status}: {}",
                    quote(&body)
                ),
            ));
        }
    }
    let bad = |why: String| {
        JobError::fail(
            "orchestrator_bad_answer",
            format!("the orchestrator's answer cannot be sent: {why}"),
        )
    };
    let answer: Value = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("it is not JSON ({e}): {}", quote(&body))))?;
    let messages = messages_of(&answer).map_err(bad)?;
    Ok(Composed { answer, messages })
}

/// The start of a body, on one line, for `"lastError"`.
fn quote(body: &[u8]) -> String {
    if body.is_empty() {
        return "(empty body)".into();
    }
    let text = String::from_utf8_lossy(body);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = one_line.trim();
    if trimmed.chars().count() > QUOTE_CHARS {
        format!("{}…", trimmed.chars().take(QUOTE_CHARS).collect::<String>())
    } else {
        format!("{trimmed:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked_like_payloads() {
        let ok = json!({"messages": [{"type": "text", "text": {"body": "hi"}}]});
        assert_eq!(messages_of(&ok).unwrap().len(), 1);
        assert!(
            messages_of(&json!([1]))
                .unwrap_err()
                .contains("not a JSON object")
        );
        assert!(
            messages_of(&json!({"reply": "hi"}))
                .unwrap_err()
                .contains("no `messages`")
        );
        assert!(
            messages_of(&json!({"messages": []}))
                .unwrap_err()
                .contains("`messages` is an empty list")
        );
        assert!(
            messages_of(&json!({"messages": [{"type": "template", "template": {}}]}))
                .unwrap_err()
                .contains("template.name")
        );
    }

    #[test]
    fn quotes_are_short_and_one_line() {
        assert_eq!(quote(b""), "(empty body)");
        assert_eq!(quote(b"nope\n"), "\"nope\"");
        assert!(quote(&[b'a'; 1000]).chars().count() <= QUOTE_CHARS + 1);
    }
}
