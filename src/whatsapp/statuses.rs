//! Meta's status webhooks as data: the callback id every send carries, and the statuses of a
//! webhook payload. `src/http/webhooks.rs` receives them (signature, verification); what they
//! change in our tables is `crate::delivery::statuses`'.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::queue::JobId;

/// The prefix of our `biz_opaque_callback_data`.
const CALLBACK_PREFIX: &str = "outbound-runner:";

/// The `biz_opaque_callback_data` of a message: its row's key (`"jobId"`, `seq`), the same on
/// every attempt, e.g. `outbound-runner:42:0` or `outbound-runner:clx0abc:0` (the app's id).
pub fn callback_id(job: &JobId, seq: i32) -> String {
    format!("{CALLBACK_PREFIX}{job}:{seq}")
}

/// The row a callback id names, if it is one of ours. The seq follows the last ':' (a text id
/// may contain ':').
pub fn parse_callback(text: &str) -> Option<(JobId, i32)> {
    let (job, seq) = text.strip_prefix(CALLBACK_PREFIX)?.rsplit_once(':')?;
    Some((JobId::parse("callback", job).ok()?, seq.parse().ok()?))
}

/// The statuses Meta reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Sent,
    Delivered,
    Read,
    Failed,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Sent, Kind::Delivered, Kind::Read, Kind::Failed];

    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "sent" => Kind::Sent,
            "delivered" => Kind::Delivered,
            "read" => Kind::Read,
            "failed" => Kind::Failed,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sent => "sent",
            Kind::Delivered => "delivered",
            Kind::Read => "read",
            Kind::Failed => "failed",
        }
    }
}

/// One status of a webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    pub wamid: String,
    pub kind: Kind,
    /// The row named by `biz_opaque_callback_data`, when it names one of ours.
    pub callback: Option<(JobId, i32)>,
    /// Meta's timestamp.
    pub at: DateTime<Utc>,
    /// On `failed`: Meta's first error, code and title.
    pub error_code: Option<String>,
    pub error_title: Option<String>,
}

/// Why `u` can never be stored, if so: a NUL (PostgreSQL's text refuses it) in a string it
/// would receive, or a timestamp before 2015 or more than a day ahead. Checked before a status
/// joins a batch, so it costs only itself (issue 25).
pub fn unstorable(u: &StatusUpdate) -> Option<&'static str> {
    let texts = [
        Some(&u.wamid),
        u.error_code.as_ref(),
        u.error_title.as_ref(),
    ];
    if texts.into_iter().flatten().any(|t| t.contains('\0')) {
        return Some("a NUL character");
    }
    let earliest = DateTime::from_timestamp(1_420_070_400, 0).expect("2015-01-01");
    if u.at < earliest || u.at > Utc::now() + chrono::Duration::days(1) {
        return Some("a timestamp before 2015 or more than a day ahead");
    }
    None
}

/// The statuses of a webhook payload for our numbers (`ours`: every configured phone number id),
/// and the kinds of those for another number. Anything that is not a status of the expected
/// shape is skipped.
pub fn statuses_of(json: &Value, ours_ids: &[&str]) -> (Vec<StatusUpdate>, Vec<Kind>) {
    let mut ours = Vec::new();
    let mut others = Vec::new();
    if json.get("object").and_then(Value::as_str) != Some("whatsapp_business_account") {
        return (ours, others);
    }
    let entries = json.get("entry").and_then(Value::as_array);
    for change in entries
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("changes").and_then(Value::as_array))
        .flatten()
    {
        if change.get("field").and_then(Value::as_str) != Some("messages") {
            continue;
        }
        let Some(value) = change.get("value") else {
            continue;
        };
        let number = value
            .pointer("/metadata/phone_number_id")
            .and_then(Value::as_str);
        let mine = number.is_some_and(|n| !n.is_empty() && ours_ids.contains(&n));
        for status in value
            .get("statuses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(update) = status_of(status) else {
                continue;
            };
            if mine {
                ours.push(update);
            } else {
                others.push(update.kind);
            }
        }
    }
    (ours, others)
}

fn status_of(status: &Value) -> Option<StatusUpdate> {
    let wamid = status.get("id")?.as_str().filter(|w| !w.is_empty())?;
    let kind = Kind::parse(status.get("status")?.as_str()?)?;
    let at = match status.get("timestamp") {
        Some(Value::String(s)) => s.parse::<i64>().ok(),
        Some(Value::Number(n)) => n.as_i64(),
        _ => None,
    }
    .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
    .unwrap_or_else(chrono::Utc::now);
    let callback = status
        .get("biz_opaque_callback_data")
        .and_then(Value::as_str)
        .and_then(parse_callback);
    let error = status.pointer("/errors/0");
    let error_code = error.and_then(|e| match e.get("code") {
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    });
    let error_title = error
        .and_then(|e| {
            e.get("title")
                .or_else(|| e.get("message"))
                .and_then(Value::as_str)
        })
        .map(|t| t.chars().take(500).collect());
    Some(StatusUpdate {
        wamid: wamid.chars().take(256).collect(),
        kind,
        callback,
        at,
        error_code: error_code.map(|c| c.chars().take(64).collect()),
        error_title,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn callback_ids_round_trip() {
        assert_eq!(callback_id(&JobId::from(42), 0), "outbound-runner:42:0");
        assert_eq!(
            parse_callback("outbound-runner:42:3"),
            Some((JobId::from(42), 3))
        );
        assert_eq!(parse_callback("42"), None);
        assert_eq!(parse_callback("outbound-runner:42"), None);
        assert_eq!(parse_callback("outbound-runner::1"), None);
        assert_eq!(parse_callback("outbound-runner:42:x"), None);
        assert_eq!(parse_callback("someone-else:42:0"), None);
        // A text id (a cuid) is an id; one with ':' splits at the last one.
        assert_eq!(
            parse_callback("outbound-runner:clx0abc:1"),
            Some((JobId::from("clx0abc"), 1))
        );
        assert_eq!(
            parse_callback(&callback_id(&JobId::from("a:b"), 2)),
            Some((JobId::from("a:b"), 2))
        );
    }

    #[test]
    fn statuses_of_our_number_only() {
        let payload = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
            {"field": "messages", "value": {"metadata": {"phone_number_id": "111"}, "statuses": [
                {"id": "wamid.A", "status": "delivered", "timestamp": "1700000000",
                 "recipient_id": "1555", "biz_opaque_callback_data": "outbound-runner:7:0"},
                {"id": "wamid.B", "status": "failed", "timestamp": "1700000001",
                 "errors": [{"code": 12345, "title": "Message undeliverable"}]},
                {"id": "wamid.C", "status": "deleted", "timestamp": "1700000001"},
                {"status": "read"}
            ]}},
            {"field": "messages", "value": {"metadata": {"phone_number_id": "222"}, "statuses": [
                {"id": "wamid.D", "status": "read", "timestamp": "1700000000"}
            ]}},
            {"field": "account_update", "value": {"statuses": [{"id": "x", "status": "sent"}]}}
        ]}]});
        let (ours, others) = statuses_of(&payload, &["111"]);
        assert_eq!(ours.len(), 2);
        assert_eq!(ours[0].kind, Kind::Delivered);
        assert_eq!(ours[0].callback, Some((crate::queue::JobId::from(7), 0)));
        assert_eq!(ours[0].at.timestamp(), 1_700_000_000);
        assert_eq!(ours[1].error_code.as_deref(), Some("12345"));
        assert_eq!(
            ours[1].error_title.as_deref(),
            Some("Message undeliverable")
        );
        assert_eq!(others, [Kind::Read]);
        assert_eq!(statuses_of(&json!({"object": "page"}), &["111"]).0.len(), 0);
        assert_eq!(statuses_of(&json!([1, 2]), &["111"]).0.len(), 0);
        // With a second sending number configured, its statuses are ours too.
        let (ours, others) = statuses_of(&payload, &["111", "222"]);
        assert_eq!((ours.len(), others.len()), (3, 0));
        // An empty id never matches a payload without one.
        assert_eq!(statuses_of(&payload, &[""]).0.len(), 0);
    }
}
