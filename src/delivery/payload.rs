//! The job payload contract, checked before anything is sent.
//!
//! ```json
//! {"to": "15551234567", "message": {"type": "text", "text": {"body": "Hello"}}}
//! {"to": "15551234567", "message": [{...}, {...}]}
//! {"to": "15551234567", "input": {...anything the orchestrator understands...}}
//! {"to": "15551234567", "from": "109876543210", "message": {...}}
//! ```
//!
//! `from` (optional) names the sending number by its phone number id (what the inbound webhook
//! reported in `metadata.phone_number_id`); absent, the default number sends (docs/numbers.md).
//!
//! `message` holds Cloud API message objects as the app composed them: we check the envelope
//! (a known `type` and its object, a non-empty text body, a template name), not Meta's schema.
//! A payload that fails these checks fails its job at once with a readable `"lastError"`.

use serde_json::Value;

use crate::queue::JobError;

/// The message types the Cloud API accepts on `/messages`.
pub const MESSAGE_TYPES: &[&str] = &[
    "text",
    "template",
    "interactive",
    "image",
    "audio",
    "video",
    "document",
    "sticker",
    "location",
    "contacts",
    "reaction",
];

/// A payload that passed the checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    /// The recipient, E.164 digits without `+`.
    pub to: String,
    /// The sending number's phone number id; `None`: the default number.
    pub from: Option<String>,
    pub content: Content,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// Ready to send, in order.
    Messages(Vec<Value>),
    /// To be composed by the orchestrator.
    Input(Value),
}

fn bad(message: impl Into<String>) -> JobError {
    JobError::fail("bad_payload", message)
}

impl Payload {
    pub fn parse(value: &Value) -> Result<Self, JobError> {
        let obj = value.as_object().ok_or_else(|| {
            bad(format!(
                "payload must be a JSON object with `to` and `message` or `input`, got {}",
                kind(value)
            ))
        })?;
        let to = match obj.get("to") {
            Some(Value::String(s)) => normalize_to(s)?,
            Some(other) => return Err(bad(format!("`to` must be a string, got {}", kind(other)))),
            None => return Err(bad("payload has no `to` (the recipient's phone number)")),
        };
        let from = match obj.get("from") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) => {
                Some(s.clone())
            }
            Some(Value::String(s)) => {
                return Err(bad(format!(
                    "`from` must be the sending number's phone number id (digits), got {s:?}"
                )));
            }
            Some(other) => {
                return Err(bad(format!(
                    "`from` must be a string (the sending number's phone number id), got {}",
                    kind(other)
                )));
            }
        };
        let content = match (obj.get("message"), obj.get("input")) {
            (Some(_), Some(_)) => {
                return Err(bad("payload has both `message` and `input`; give one"));
            }
            (Some(m), None) => Content::Messages(parse_messages(m)?),
            (None, Some(input)) => Content::Input(input.clone()),
            (None, None) => {
                return Err(bad(
                    "payload has neither `message` (what to send) nor `input` (for the orchestrator)",
                ));
            }
        };
        Ok(Self { to, from, content })
    }
}

/// `+1 (555) 123-4567` is not accepted: the app must store what Meta gave it (digits, optional
/// leading `+`), so a malformed number is caught here rather than by Meta.
pub fn normalize_to(raw: &str) -> Result<String, JobError> {
    let digits = raw.strip_prefix('+').unwrap_or(raw);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad(format!(
            "`to` must be an E.164 phone number (digits, optional leading +), got {raw:?}"
        )));
    }
    if !(7..=15).contains(&digits.len()) {
        return Err(bad(format!(
            "`to` must have 7 to 15 digits, got {} in {raw:?}",
            digits.len()
        )));
    }
    Ok(digits.to_string())
}

/// One message object or an array of them.
pub fn parse_messages(value: &Value) -> Result<Vec<Value>, JobError> {
    let list = match value {
        Value::Array(items) if items.is_empty() => {
            return Err(bad("`message` is an empty list"));
        }
        Value::Array(items) => items.clone(),
        Value::Object(_) => vec![value.clone()],
        other => {
            return Err(bad(format!(
                "`message` must be a Cloud API message object or a list of them, got {}",
                kind(other)
            )));
        }
    };
    for (i, m) in list.iter().enumerate() {
        check_message(m).map_err(|reason| {
            if list.len() == 1 {
                bad(reason)
            } else {
                bad(format!("message {}: {reason}", i + 1))
            }
        })?;
    }
    Ok(list)
}

fn check_message(m: &Value) -> Result<(), String> {
    let obj = m
        .as_object()
        .ok_or_else(|| format!("a message must be an object, got {}", kind(m)))?;
    let ty = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(other) => {
            return Err(format!(
                "message `type` must be a string, got {}",
                kind(other)
            ));
        }
        None => {
            return Err("message has no `type` (text, template, interactive, image, ...)".into());
        }
    };
    if !MESSAGE_TYPES.contains(&ty) {
        return Err(format!(
            "unknown message type {ty:?} (expected one of {})",
            MESSAGE_TYPES.join(", ")
        ));
    }
    let body = obj
        .get(ty)
        .and_then(Value::as_object)
        .ok_or_else(|| format!("a {ty:?} message needs a `{ty}` object"))?;
    match ty {
        "text" => match body.get("body").and_then(Value::as_str) {
            Some(b) if !b.trim().is_empty() => {}
            _ => return Err("a text message needs a non-empty `text.body`".into()),
        },
        "template" => match body.get("name").and_then(Value::as_str) {
            Some(n) if !n.trim().is_empty() => {}
            _ => return Err("a template message needs `template.name`".into()),
        },
        "image" | "audio" | "video" | "document" | "sticker"
            if body.get("id").is_none() && body.get("link").is_none() =>
        {
            return Err(format!("a {ty} message needs `{ty}.id` or `{ty}.link`"));
        }
        _ => {}
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        Payload::parse(&v).unwrap_err().message
    }

    #[test]
    fn from_names_the_sending_number() {
        let m = json!({"type": "text", "text": {"body": "hi"}});
        let p =
            Payload::parse(&json!({"to": "15551234567", "from": "1098", "message": m})).unwrap();
        assert_eq!(p.from.as_deref(), Some("1098"));
        let p = Payload::parse(&json!({"to": "15551234567", "message": m})).unwrap();
        assert_eq!(p.from, None);
        assert!(err(json!({"to": "15551234567", "from": 1098, "message": m})).contains("`from`"));
        assert!(
            err(json!({"to": "15551234567", "from": "+1 555", "message": m})).contains("digits")
        );
    }

    #[test]
    fn accepts_text_and_lists_and_input() {
        let p = Payload::parse(&json!({"to": "+15551234567",
            "message": {"type": "text", "text": {"body": "hi"}}}))
        .unwrap();
        assert_eq!(p.to, "15551234567");
        let p = Payload::parse(&json!({"to": "15551234567", "message": [
            {"type": "text", "text": {"body": "a"}},
            {"type": "template", "template": {"name": "hello_world", "language": {"code": "en_US"}}}
        ]}))
        .unwrap();
        assert!(matches!(p.content, Content::Messages(ref m) if m.len() == 2));
        let p = Payload::parse(&json!({"to": "15551234567", "input": {"text": "hi"}})).unwrap();
        assert!(matches!(p.content, Content::Input(_)));
    }

    #[test]
    fn rejects_with_readable_reasons() {
        assert!(err(json!({"message": {}})).contains("no `to`"));
        assert!(err(json!("to=1555&text=hi")).contains("must be a JSON object"));
        assert!(err(json!({"to": "555-1234", "message": {}})).contains("E.164"));
        assert!(err(json!({"to": "15551234567"})).contains("neither"));
        assert!(
            err(json!({"to": "15551234567", "message": {"type": "hologram", "hologram": {}}}))
                .contains("unknown message type \"hologram\"")
        );
        assert!(
            err(json!({"to": "15551234567", "message": {"type": "text", "text": {"body": " "}}}))
                .contains("non-empty")
        );
        assert!(
            err(json!({"to": "15551234567", "message": {"type": "template", "template": {}}}))
                .contains("template.name")
        );
        assert!(err(json!({"to": "15551234567", "message": []})).contains("empty list"));
    }
}
