//! Reading a claimed row without trusting it. The app writes `"OutboundJob"` rows; whatever it
//! can write must neither panic the runner nor stop the queue. A row that cannot be run (its
//! payload is JSON this runner cannot read) becomes a [`Rejected`] row, which the claim's caller
//! fails on its own fence (`bad_payload`, a readable `"lastError"`) while the rest of the batch
//! runs. docs/reliability.md, "Rows the runner cannot use", lists every case.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::{Fence, Job};

/// The `"lastErrorCode"` of a row whose payload (or saved reply) cannot be read.
pub const BAD_PAYLOAD: &str = "bad_payload";

/// A claimed row that cannot be run: what to write into its `"lastErrorCode"` and `"lastError"`
/// (docs/reliability.md, "Rows the runner cannot use").
#[derive(Debug, Clone)]
pub struct Rejected {
    pub fence: Fence,
    pub request_id: Option<String>,
    pub code: &'static str,
    pub reason: String,
}

/// Reads one row of the claim statement (`store::claim`'s `RETURNING` list). `Err(None)`: not
/// even the id and attempt could be read, so nothing can be written about the row.
pub fn claimed_row(row: &PgRow, locked_by: &Arc<str>) -> Result<Job, Option<Rejected>> {
    let id: super::JobId = row.try_get(0).map_err(|_| None)?;
    let attempts: i32 = row.try_get(3).map_err(|_| None)?;
    let fence = Fence {
        id: id.clone(),
        locked_by: locked_by.clone(),
        attempts,
    };
    // `requestId` is text: it always decodes; a failure here would be a schema change.
    let request_id: Option<String> = row.try_get(2).unwrap_or(None);
    let reject = |reason: String| Rejected {
        fence: fence.clone(),
        request_id: request_id.clone(),
        code: BAD_PAYLOAD,
        reason,
    };
    let payload = match row.try_get::<Option<String>, _>(1) {
        Ok(Some(text)) => json(&text).map_err(|e| Some(reject(format!("payload: {e}"))))?,
        Ok(None) => return Err(Some(reject("payload: the column is NULL".into()))),
        Err(e) => return Err(Some(reject(format!("payload: unreadable column ({e})")))),
    };
    let composed = match row.try_get::<Option<String>, _>(5) {
        Ok(Some(text)) => Some(json(&text).map_err(|e| {
            Some(reject(format!(
                "composed (the saved orchestrator reply): {e}"
            )))
        })?),
        Ok(None) => None,
        Err(e) => return Err(Some(reject(format!("composed: unreadable column ({e})")))),
    };
    let max_attempts: i32 = row.try_get(4).unwrap_or(1);
    let now = Utc::now();
    let created_at = timestamp(row.try_get(6).ok().flatten()).unwrap_or(now);
    // `-infinity` (or anything out of range) means "due long ago": the queue wait is then
    // measured from the row's creation.
    let run_at = timestamp(row.try_get(7).ok().flatten()).unwrap_or(created_at);
    Ok(Job {
        id,
        payload,
        request_id,
        attempts,
        max_attempts,
        composed,
        created_at,
        run_at,
        fence,
    })
}

/// Parses JSON the way the handlers need it, saying readably why not: a number beyond `f64`
/// (`1e400` is valid `jsonb`), nesting deeper than 128 levels.
pub fn json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| {
        let what = e.to_string();
        if what.contains("recursion limit") {
            format!("nested deeper than this runner reads (128 levels): {what}")
        } else if what.contains("number out of range") {
            format!("a number too large for a 64-bit float: {what}")
        } else {
            format!("not JSON this runner can read: {what}")
        }
    })
}

/// Epoch seconds (finite ones only: the statement gives NULL for infinite timestamps) to a time,
/// or `None` out of range.
fn timestamp(epoch: Option<f64>) -> Option<DateTime<Utc>> {
    let secs = epoch.filter(|s| s.is_finite())?;
    let micros = (secs * 1e6).round();
    if micros.abs() >= 9.0e18 {
        return None;
    }
    DateTime::from_timestamp_micros(micros as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_beyond_f64_and_deep_nesting_are_errors_not_panics() {
        let big = json(r#"{"to":"1","n":1e400}"#).unwrap_err();
        assert!(big.contains("too large"), "{big}");
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let e = json(&deep).unwrap_err();
        assert!(e.contains("128 levels"), "{e}");
        assert!(json(r#"{"to":"1"}"#).is_ok());
    }

    #[test]
    fn infinite_and_out_of_range_timestamps_are_none() {
        assert_eq!(timestamp(None), None);
        assert_eq!(timestamp(Some(f64::NEG_INFINITY)), None);
        assert_eq!(timestamp(Some(f64::NAN)), None);
        assert_eq!(timestamp(Some(1e300)), None);
        // Year 294276, PostgreSQL's largest, is beyond chrono's range.
        assert_eq!(timestamp(Some(9.2e12)), None);
        assert_eq!(
            timestamp(Some(1_700_000_000.5)).map(|t| t.timestamp_micros()),
            Some(1_700_000_000_500_000)
        );
    }
}
