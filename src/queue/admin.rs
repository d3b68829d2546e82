//! Operator actions on jobs: find, inspect, retry, cancel and settle. The one implementation
//! behind `outbound-runner jobs …` and the admin API (`/api/admin/jobs…`); docs/operations.md
//! shows the commands, docs/http.md the API.
//!
//! Every action is one statement, and keeps the queue's rules (docs/queue.md):
//!
//! - **Only documented transitions.** `retry`: `failed | cancelled → queued`. `cancel`:
//!   `queued → cancelled`, and a running job's request to stop. `settle`: an `unknown` message →
//!   `sent | failed`, its job (`failed` or `cancelled`) → `done` when every message is now sent.
//!   Nothing else is touched.
//! - **A running job's claim is never touched.** A runner's writes are fenced on
//!   `status = 'running'`, its `"lockedBy"` and `attempts`; no statement here changes those of a
//!   running row, so its claim, lease and fence stay exactly as the runner left them. `cancel`
//!   only asks a running job to stop: it sets `"cancelRequestedAt"`. The runner then sends
//!   nothing more (the ledger refuses to mark another message `sending`; a send already under
//!   way is never cut, it could not be recalled anyway), and when its attempt ends, the job
//!   becomes `cancelled` where it would have been requeued or failed (a job whose messages were
//!   all sent ends `done`: it was delivered). A runner that lost the job on a drain or a crash
//!   leaves it `queued` with the request; its next attempt stops before sending the same way.
//! - **Rows are locked before they are judged** (`FOR NO KEY UPDATE`, waiting rather than
//!   skipping): a claim that takes a queued job at the same moment either commits first (the
//!   cancel then sees `running` and leaves it) or waits for the cancel (and then finds it
//!   `cancelled`). Two retries of one job: the second finds it `queued` and counts it as no
//!   longer matching.
//! - **`attempts` is never reset.** It numbers the claims and is part of the fence: a runner that
//!   lost the job long ago still holds a fence with an old number, and must never match again. A
//!   retry instead gives the job a fresh allowance: `"maxAttempts" = attempts + its original
//!   limit` (the app's `"maxAttempts"`, else `retry.max_attempts`).
//! - **Never a second send by accident.** A retry skips jobs with a message already `sent`
//!   (`skippedSent`) and jobs with a message in doubt (`unknown`/`sending`: settle them first,
//!   `skippedInDoubt`). `resend_sent` retries the former too and SENDS THEIR SENT MESSAGES AGAIN:
//!   their ledger rows are removed (seq and wamid kept in the job's history), so the next
//!   attempt records and sends them as if they had never been sent.
//! - **The history.** Every action appends to the job's `history` column what the job was before
//!   (status, attempts, `"maxAttempts"`, `"lastError"`, `"lastErrorCode"`, `"completedAt"`), who
//!   did it and when. A retry clears `"lastError"`/`"lastErrorCode"` (the job reads like a fresh
//!   one); the error stays in the history.
//! - A retry wakes the runners at once: one `NOTIFY outbound_jobs` per statement, delivered at
//!   its commit.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use crate::db::Pool;

use super::{CHANNEL, JobId, STATUSES};

/// The most jobs one page of [`list`] holds.
pub const MAX_PAGE: i64 = 1000;
/// A page's size when the filter gives no `limit`.
pub const DEFAULT_PAGE: i64 = 50;
/// The most ids an action's report lists (the counts are always complete).
pub const MAX_REPORTED_IDS: usize = 1000;
/// The most ids a filter may name.
pub const MAX_IDS: usize = 10_000;

/// Why an action was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Bad input: the filter or an argument (CLI: exit 64; API: 400).
    #[error("{0}")]
    Invalid(String),
    /// The job does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The job is not in a state the action applies to (409).
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {}", crate::db::redact_sqlx(.0))]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for AdminError {
    /// A data exception (SQLSTATE class 22: a NUL, a value out of range) is the input's fault,
    /// not the database's: bad input (400, exit 64), never "database unavailable". The
    /// validation below should catch each first; this is the net under it.
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("22")) => {
                invalid(format!(
                    "the database refused a value of the request: {}",
                    crate::db::redact_sqlx(&e)
                ))
            }
            _ => AdminError::Database(e),
        }
    }
}

fn invalid(msg: impl Into<String>) -> AdminError {
    AdminError::Invalid(msg.into())
}

/// The operator's API on one pool, as a handle: what the admin API and the console are given
/// (by the runner, [`crate::runner::Runner::queue_admin`]) instead of the pool. Each method is
/// the function of the same name below; the CLI, which owns its pool, calls those directly.
/// Cheap to clone.
#[derive(Clone)]
pub struct QueueAdmin {
    pool: Pool,
}

impl QueueAdmin {
    /// On `pool`'s connections, each statement planned for its values ([`Pool::custom_plans`]:
    /// the filters are optional, `$1 IS NULL OR …`, and only such a plan uses their indexes).
    pub fn new(pool: Pool) -> Self {
        Self {
            pool: pool.custom_plans(),
        }
    }

    /// [`list`].
    pub async fn list(&self, filter: &Filter) -> Result<Page, AdminError> {
        list(&self.pool, filter).await
    }

    /// [`show`].
    pub async fn show(&self, id: &JobId) -> Result<JobDetail, AdminError> {
        show(&self.pool, id).await
    }

    /// [`retry`].
    pub async fn retry(
        &self,
        filter: &Filter,
        actor: &Actor<'_>,
        resend_sent: bool,
        default_max_attempts: i32,
    ) -> Result<RetryReport, AdminError> {
        retry(&self.pool, filter, actor, resend_sent, default_max_attempts).await
    }

    /// [`cancel`].
    pub async fn cancel(
        &self,
        filter: &Filter,
        actor: &Actor<'_>,
    ) -> Result<CancelReport, AdminError> {
        cancel(&self.pool, filter, actor).await
    }

    /// [`settle`].
    pub async fn settle(
        &self,
        id: &JobId,
        seq: Option<i32>,
        settled_as: Settled,
        wamid: Option<&str>,
        by: &str,
    ) -> Result<SettleReport, AdminError> {
        settle(&self.pool, id, seq, settled_as, wamid, by).await
    }

    /// [`overview`].
    pub async fn overview(&self, from: Option<DateTime<Utc>>) -> sqlx::Result<serde_json::Value> {
        overview(&self.pool, from).await
    }
}

/// Which jobs an action applies to. Every field narrows; an empty filter matches every job,
/// which a bulk action refuses unless `all` is set. `since`/`until` are by `"createdAt"`
/// (`since` inclusive, `until` exclusive).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Any of these statuses.
    pub status: Vec<String>,
    /// `"lastErrorCode"` (e.g. `131000`, `delivery_unknown`).
    pub code: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The recipient, `payload->>'to'` (digits; a leading `+` is ignored).
    pub to: Option<String>,
    /// `"requestId"`.
    pub request_id: Option<String>,
    /// The sending number, `payload->>'from'` (payloads that name one).
    pub from: Option<String>,
    /// Any of these ids (the app's own ids, whatever their type).
    pub ids: Vec<JobId>,
    /// `list`: the page size (default [`DEFAULT_PAGE`], at most [`MAX_PAGE`]). Actions: the most
    /// jobs to touch, in id order (default: every match).
    pub limit: Option<i64>,
    /// `list`: the page after this cursor (older jobs; `nextCursor` of the last page). Opaque.
    pub cursor: Option<Cursor>,
    /// A bulk action with no criterion applies to every job only with this.
    pub all: bool,
}

impl Filter {
    /// Whether the filter has no criterion (`limit`, `cursor` and `all` are not criteria).
    pub fn is_empty(&self) -> bool {
        self.status.is_empty()
            && self.code.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.to.is_none()
            && self.request_id.is_none()
            && self.from.is_none()
            && self.ids.is_empty()
    }

    /// Checks every field; normalizes phone numbers (`+` dropped). The error names the field.
    pub fn validate(mut self) -> Result<Filter, AdminError> {
        for s in &self.status {
            if !STATUSES.contains(&s.as_str()) {
                return Err(invalid(format!(
                    "unknown status {s:?} (one of {})",
                    STATUSES.join(", ")
                )));
            }
        }
        self.status.sort();
        self.status.dedup();
        if let Some(code) = &self.code {
            let ok = (1..=64).contains(&code.len())
                && code
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
            if !ok {
                return Err(invalid(format!(
                    "code {:?} is not an error code (letters, digits, _ . : -; at most 64)",
                    truncate(code)
                )));
            }
        }
        for (name, number) in [("to", &mut self.to), ("from", &mut self.from)] {
            if let Some(n) = number {
                let digits = n.strip_prefix('+').unwrap_or(n);
                if !(1..=20).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(invalid(format!(
                        "{name} {:?} is not a phone number (E.164 digits)",
                        truncate(n)
                    )));
                }
                *n = digits.to_string();
            }
        }
        if let Some(r) = &self.request_id
            && !(1..=200).contains(&r.len())
        {
            return Err(invalid("requestId must be 1 to 200 characters"));
        }
        if self.request_id.as_ref().is_some_and(|r| r.contains('\0')) {
            return Err(invalid("requestId must not hold a NUL character"));
        }
        if let (Some(a), Some(b)) = (self.since, self.until)
            && a >= b
        {
            return Err(invalid("since must be before until"));
        }
        if self.ids.len() > MAX_IDS {
            return Err(invalid(format!("at most {MAX_IDS} ids")));
        }
        self.ids.sort_unstable();
        self.ids.dedup();
        if let Some(l) = self.limit
            && l < 1
        {
            return Err(invalid("limit must be at least 1"));
        }
        Ok(self)
    }

    /// For a bulk action: refuses an empty filter unless `all`, and statuses the action does
    /// not apply to. Returns the statuses to look at.
    fn for_action(&self, action: &str, applies: &[&str]) -> Result<Vec<String>, AdminError> {
        if self.is_empty() && !self.all {
            return Err(invalid(format!(
                "{action} with no filter would touch every job: give a filter (status, code, \
                 since, until, to, requestId, from, id) or `all`"
            )));
        }
        if let Some(s) = self.status.iter().find(|s| !applies.contains(&s.as_str())) {
            return Err(invalid(format!(
                "{action} applies to {} jobs, not {s}",
                applies.join(" or ")
            )));
        }
        Ok(if self.status.is_empty() {
            applies.iter().map(|s| s.to_string()).collect()
        } else {
            self.status.clone()
        })
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// A point in time for `since`/`until`: RFC 3339 (`2026-11-29T08:00:00Z`), a date
/// (`2026-11-29`, midnight UTC), or a duration ago (`24h`, `7days`).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, AdminError> {
    let s = s.trim();
    let t = if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        Some(t.with_timezone(&Utc))
    } else if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        Some(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
    } else if let Ok(ago) = humantime::parse_duration(s)
        && let Ok(ago) = chrono::Duration::from_std(ago)
    {
        // Out of chrono's range is out of ours too (below).
        Some(
            Utc::now()
                .checked_sub_signed(ago)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        )
    } else {
        None
    };
    if let Some(t) = t {
        // PostgreSQL's timestamptz ends in 4713 BC; a filter before year 1 is a typo.
        use chrono::Datelike;
        return if (1..=9999).contains(&t.year()) {
            Ok(t)
        } else {
            Err(invalid(format!(
                "{:?} is out of range (years 1 to 9999)",
                truncate(s)
            )))
        };
    }
    Err(invalid(format!(
        "{:?} is not a time (RFC 3339, YYYY-MM-DD, or a duration ago like 24h)",
        truncate(s)
    )))
}

/// Where a page of [`list`] ends: the last job's `"createdAt"` and id (jobs are listed by
/// `("createdAt", id)`, newest first: ids are not in time order). Written `<micros>.<id>`;
/// opaque to callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    created_at: DateTime<Utc>,
    id: JobId,
}

impl Cursor {
    /// A cursor as a caller gives it back (`nextCursor`); the error names the parameter.
    pub fn parse(raw: &str) -> Result<Cursor, AdminError> {
        let bad = || invalid("cursor is not a cursor of this list (give nextCursor back as it is)");
        let (micros, id) = raw.split_once('.').ok_or_else(bad)?;
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        let created_at = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
        let id = JobId::parse("cursor", id).map_err(|_| bad())?;
        Ok(Cursor { created_at, id })
    }

    /// The SQL side: `[time, id]` as text (see [`FILTER_SQL`]'s `$9`).
    fn bind(&self) -> Vec<String> {
        vec![
            self.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            self.id.to_string(),
        ]
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.created_at.timestamp_micros(), self.id)
    }
}

impl Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The filter as SQL over `"OutboundJob" j`, binding `$1`…`$9` (see [`bind_filter`]). Ids and
/// statuses are bound as text and converted by the database (`outbound_job_ids`, `::text`), so
/// the statement is the same whatever the app's id and status types.
const FILTER_SQL: &str = r#"
        ($1::text[] IS NULL OR j.status::text = ANY($1))
    -- One status as an equality too: an index led by status then serves "newest first".
    AND ($1::text[] IS NULL OR cardinality($1) <> 1 OR j.status = outbound_job_status(($1)[1]))
    AND ($2::text IS NULL OR j."lastErrorCode" = $2)
    AND ($3::timestamptz IS NULL OR j."createdAt" >= $3)
    AND ($4::timestamptz IS NULL OR j."createdAt" < $4)
    AND ($5::text IS NULL OR j.payload->>'to' = $5)
    AND ($6::text IS NULL OR j."requestId" = $6)
    AND ($7::text IS NULL OR j.payload->>'from' = $7)
    AND ($8::text[] IS NULL OR j.id = ANY(outbound_job_ids($8)))
    AND ($9::text[] IS NULL
         OR (j."createdAt", j.id) < (($9)[1]::timestamptz, outbound_job_id(($9)[2])))
"#;

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds `$1`…`$9` of [`FILTER_SQL`]; `statuses` replaces the filter's own.
fn bind_filter<'q>(
    q: Query<'q>,
    f: &'q Filter,
    statuses: Option<&'q [String]>,
    cursor: bool,
) -> Query<'q> {
    let statuses = statuses.or((!f.status.is_empty()).then_some(f.status.as_slice()));
    q.bind(statuses)
        .bind(f.code.as_deref())
        .bind(f.since)
        .bind(f.until)
        .bind(f.to.as_deref())
        .bind(f.request_id.as_deref())
        .bind(f.from.as_deref())
        .bind((!f.ids.is_empty()).then_some(f.ids.as_slice()))
        .bind(f.cursor.as_ref().filter(|_| cursor).map(Cursor::bind))
}

/// A job in a list.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary {
    pub id: JobId,
    pub status: String,
    pub to: Option<String>,
    pub request_id: Option<String>,
    pub attempts: i32,
    pub max_attempts: Option<i32>,
    pub last_error_code: Option<String>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// One page of jobs, newest first.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    pub jobs: Vec<JobSummary>,
    /// The `cursor` of the next page; `None` on the last.
    pub next_cursor: Option<Cursor>,
}

/// The jobs matching `filter`, newest first (by `"createdAt"`, then id), one page at a time
/// (keyset paging on the `("createdAt", id)` index: a page costs the same at any depth).
/// Timestamps are read as `timestamptz` whatever the column's type (an app's Prisma table has
/// `timestamp(3)` holding UTC; our sessions run in UTC, see `db::connect`).
pub async fn list(pool: &Pool, filter: &Filter) -> Result<Page, AdminError> {
    let limit = filter.limit.unwrap_or(DEFAULT_PAGE);
    if limit > MAX_PAGE {
        return Err(invalid(format!(
            "limit {limit} is more than a page holds ({MAX_PAGE}); page with the cursor"
        )));
    }
    let sql = format!(
        r#"SELECT j.id, j.status::text, j.payload->>'to', j."requestId", j.attempts,
                  j."maxAttempts", j."lastErrorCode", j."lastError", j."createdAt"::timestamptz,
                  j."updatedAt"::timestamptz, j."completedAt"::timestamptz
           FROM "OutboundJob" j
           WHERE {FILTER_SQL}
           ORDER BY j."createdAt" DESC, j.id DESC
           LIMIT $10"#
    );
    let rows = bind_filter(sqlx::query(&sql), filter, None, true)
        .bind(limit + 1)
        .persistent(false)
        .fetch_all(pool)
        .await?;
    let mut jobs: Vec<JobSummary> = rows
        .iter()
        .map(|r| JobSummary {
            id: r.get(0),
            status: r.get(1),
            to: r.get(2),
            request_id: r.get(3),
            attempts: r.get(4),
            max_attempts: r.get(5),
            last_error_code: r.get(6),
            last_error: r.get(7),
            created_at: r.get(8),
            updated_at: r.get(9),
            completed_at: r.get(10),
        })
        .collect();
    let next_cursor = if jobs.len() as i64 > limit {
        jobs.truncate(limit as usize);
        jobs.last().map(|j| Cursor {
            created_at: j.created_at,
            id: j.id.clone(),
        })
    } else {
        None
    };
    Ok(Page { jobs, next_cursor })
}

/// One `"OutboundMessage"` row.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MessageRow {
    pub seq: i32,
    pub status: String,
    pub to: String,
    pub wamid: Option<String>,
    pub last_error_code: Option<String>,
    pub body: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    /// Meta's delivered and read statuses, and its error title when it reported the message
    /// failed (the console's message timeline).
    pub delivered_at: Option<DateTime<Utc>>,
    pub read_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// One line of a job's timeline.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub event: String,
}

/// Everything about one job.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobDetail {
    pub id: JobId,
    pub status: String,
    pub payload: serde_json::Value,
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub priority: i16,
    pub run_at: DateTime<Utc>,
    pub attempts: i32,
    pub max_attempts: Option<i32>,
    pub locked_by: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub composed: Option<serde_json::Value>,
    pub last_error: Option<String>,
    pub last_error_code: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The operators' actions (see the module docs).
    pub history: serde_json::Value,
    pub messages: Vec<MessageRow>,
    /// What happened, oldest first, from the timestamps the rows keep (the last attempt's start,
    /// each message's creation, send and settling, the operators' actions, the end).
    pub timeline: Vec<Event>,
}

/// The job `id`, its messages and its timeline.
pub async fn show(pool: &Pool, id: &JobId) -> Result<JobDetail, AdminError> {
    let row = sqlx::query(
        r#"SELECT id, status::text, payload, "requestId", "idempotencyKey", priority,
                  "runAt"::timestamptz, attempts, "maxAttempts", "lockedBy",
                  "leaseUntil"::timestamptz, composed, "lastError", "lastErrorCode",
                  "createdAt"::timestamptz, "updatedAt"::timestamptz, "startedAt"::timestamptz,
                  "completedAt"::timestamptz, history
           FROM "OutboundJob" WHERE id = outbound_job_id($1)"#,
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| AdminError::NotFound(format!("no job {id}")))?;
    let messages: Vec<MessageRow> = sqlx::query(
        r#"SELECT seq, status, "to", wamid, "lastErrorCode", body, "createdAt", "updatedAt", "sentAt",
                  "deliveredAt", "readAt", "lastError"
           FROM "OutboundMessage" WHERE "jobId" = outbound_job_id($1) ORDER BY seq"#,
    )
    .bind(id)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| MessageRow {
        seq: r.get(0),
        status: r.get(1),
        to: r.get(2),
        wamid: r.get(3),
        last_error_code: r.get(4),
        body: r.get(5),
        created_at: r.get(6),
        updated_at: r.get(7),
        sent_at: r.get(8),
        delivered_at: r.get(9),
        read_at: r.get(10),
        last_error: r.get(11),
    })
    .collect();
    let mut job = JobDetail {
        id: row.get(0),
        status: row.get(1),
        payload: row.get(2),
        request_id: row.get(3),
        idempotency_key: row.get(4),
        priority: row.get(5),
        run_at: row.get(6),
        attempts: row.get(7),
        max_attempts: row.get(8),
        locked_by: row.get(9),
        lease_until: row.get(10),
        composed: row.get(11),
        last_error: row.get(12),
        last_error_code: row.get(13),
        created_at: row.get(14),
        updated_at: row.get(15),
        started_at: row.get(16),
        completed_at: row.get(17),
        history: row.get(18),
        messages,
        timeline: Vec::new(),
    };
    job.timeline = timeline(&job);
    Ok(job)
}

fn timeline(job: &JobDetail) -> Vec<Event> {
    let mut out = vec![Event {
        at: job.created_at,
        event: "enqueued".into(),
    }];
    let mut push = |at: DateTime<Utc>, event: String| out.push(Event { at, event });
    if job.run_at > job.created_at && job.status == "queued" {
        push(job.run_at, "due".into());
    }
    if let Some(at) = job.started_at {
        push(at, format!("attempt {} started", job.attempts));
    }
    for m in &job.messages {
        push(m.created_at, format!("message {} prepared", m.seq));
        if let Some(at) = m.sent_at {
            let wamid = m.wamid.as_deref().unwrap_or("no wamid");
            push(at, format!("message {} sent ({wamid})", m.seq));
        }
        if matches!(m.status.as_str(), "failed" | "unknown" | "sending") {
            let code = m.last_error_code.as_deref().unwrap_or("-");
            push(
                m.updated_at,
                format!("message {} {} ({code})", m.seq, m.status),
            );
        }
    }
    for h in job.history.as_array().into_iter().flatten() {
        let Some(at) = h
            .get("at")
            .and_then(|v| v.as_str())
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        else {
            continue;
        };
        let field = |k: &str| h.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
        let mut event = format!(
            "{} by {} (was {}, {})",
            field("action"),
            field("by"),
            field("status"),
            field("lastErrorCode")
        );
        if let Some(seqs) = h.get("messages") {
            event.push_str(&format!(", messages {seqs} as {}", field("as")));
        }
        if let Some(w) = h.get("resentWamids").filter(|w| !w.is_null()) {
            event.push_str(&format!(", SENT AGAIN: {w}"));
        }
        push(at.with_timezone(&Utc), event);
    }
    if let Some(at) = job.completed_at {
        let code = job
            .last_error_code
            .as_deref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        push(at, format!("{}{code}", job.status));
    } else if job.status == "running" {
        let owner = job.locked_by.as_deref().unwrap_or("-");
        push(job.updated_at, format!("running on {owner}"));
    }
    out.sort_by_key(|e| e.at);
    out
}

/// Who did an action and how (for every action).
#[derive(Debug, Clone)]
pub struct Actor<'a> {
    /// Written to the job's history and the log: `cli`, `admin-api`.
    pub by: &'a str,
    /// Count and list what would be touched; change nothing.
    pub dry_run: bool,
}

impl Actor<'_> {
    /// The lock a bulk action takes on the jobs it will move: none for a dry run, which only
    /// counts; otherwise it waits for (never skips) a row another writer holds.
    fn row_lock(&self) -> &'static str {
        if self.dry_run {
            ""
        } else {
            "FOR NO KEY UPDATE OF j"
        }
    }
}

/// What a retry did (or, dry, would do).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RetryReport {
    pub dry_run: bool,
    /// Failed or cancelled jobs the filter matched.
    pub matched: i64,
    /// Jobs put back to `queued` (dry: that would be).
    pub retried: i64,
    /// Skipped: a message of theirs was already sent (see `resend_sent`).
    pub skipped_sent: i64,
    /// Skipped: a message of theirs is `unknown` (settle it first).
    pub skipped_in_doubt: i64,
    /// Messages that will be sent again (`resend_sent`).
    pub resent_messages: i64,
    /// The retried ids, at most [`MAX_REPORTED_IDS`].
    pub ids: Vec<JobId>,
}

/// A message Meta accepted: sent, or moved on by a status webhook (delivered, read — or failed
/// later, which keeps its wamid). Sending it again is a second message to the customer, so a
/// retry skips its job unless asked to resend (docs/operations.md, "Acting on jobs").
const ACCEPTED: &str = "(m.status IN ('sent', 'delivered', 'read') OR m.wamid IS NOT NULL)";

/// Failed or cancelled jobs back to `queued`, due now (see the module docs for the rules).
/// `default_max_attempts` is `retry.max_attempts`.
pub async fn retry(
    pool: &Pool,
    filter: &Filter,
    actor: &Actor<'_>,
    resend_sent: bool,
    default_max_attempts: i32,
) -> Result<RetryReport, AdminError> {
    let statuses = filter.for_action("retry", &["failed", "cancelled"])?;
    let lock = actor.row_lock();
    let sql = format!(
        r#"
        WITH target AS (
            SELECT j.id FROM "OutboundJob" j
            WHERE {FILTER_SQL}
            ORDER BY j.id
            LIMIT $10
            {lock}
        ), classified AS (
            SELECT t.id,
                   EXISTS (SELECT 1 FROM "OutboundMessage" m
                           WHERE m."jobId" = t.id AND {ACCEPTED}) AS has_sent,
                   EXISTS (SELECT 1 FROM "OutboundMessage" m
                           WHERE m."jobId" = t.id AND m.status IN ('unknown', 'sending')) AS in_doubt
            FROM target t
        ), eligible AS (
            SELECT c.id FROM classified c WHERE NOT c.in_doubt AND (NOT c.has_sent OR $11)
        ), sent AS (
            SELECT m."jobId" AS id, count(*) AS n,
                   jsonb_agg(jsonb_build_object('seq', m.seq, 'wamid', m.wamid) ORDER BY m.seq) AS wamids
            FROM "OutboundMessage" m JOIN eligible e ON e.id = m."jobId"
            WHERE $11 AND {ACCEPTED}
            GROUP BY m."jobId"
        ), resent AS (
            -- The ledger rows go (their wamids are kept in the history): the next attempt
            -- records them anew, live or sandbox, as for a message never sent.
            DELETE FROM "OutboundMessage" m
            USING eligible e
            WHERE NOT $12 AND $11 AND m."jobId" = e.id AND {ACCEPTED}
        ), retried AS (
            UPDATE "OutboundJob" j
            SET status = 'queued', "runAt" = now(), "completedAt" = NULL,
                "maxAttempts" = j.attempts + CASE
                    WHEN jsonb_array_length(j.history) > 0
                        THEN COALESCE((j.history->0->>'maxAttempts')::int, $14)
                    ELSE COALESCE(j."maxAttempts", $14) END,
                "lockedBy" = NULL, "lockedAt" = NULL, "leaseUntil" = NULL,
                "lastError" = NULL, "lastErrorCode" = NULL, "cancelRequestedAt" = NULL,
                "updatedAt" = now(),
                history = j.history || jsonb_build_array(jsonb_build_object(
                    'at', now(), 'action', 'retry', 'by', $13::text, 'status', j.status,
                    'attempts', j.attempts, 'maxAttempts', j."maxAttempts",
                    'lastError', j."lastError", 'lastErrorCode', j."lastErrorCode",
                    'completedAt', j."completedAt"::timestamptz, 'resentWamids', s.wamids))
            FROM eligible e LEFT JOIN sent s ON s.id = e.id
            WHERE NOT $12 AND j.id = e.id AND j.status IN ('failed', 'cancelled')
            RETURNING j.id
        ), woke AS (
            SELECT pg_notify($15, '') FROM (SELECT 1 FROM retried LIMIT 1) one
        )
        SELECT (SELECT count(*) FROM classified),
               (SELECT count(*) FROM classified WHERE has_sent AND NOT in_doubt AND NOT $11),
               (SELECT count(*) FROM classified WHERE in_doubt),
               (SELECT COALESCE(sum(n), 0)::bigint FROM sent),
               CASE WHEN $12 THEN (SELECT array_agg(id ORDER BY id) FROM eligible)
                    ELSE (SELECT array_agg(id ORDER BY id) FROM retried) END,
               (SELECT count(*) FROM woke)
        "#
    );
    let row = bind_filter(sqlx::query(&sql), filter, Some(&statuses), false)
        .bind(filter.limit)
        .bind(resend_sent)
        .bind(actor.dry_run)
        .bind(actor.by)
        .bind(default_max_attempts)
        .bind(CHANNEL)
        .persistent(false)
        .fetch_one(pool)
        .await?;
    let mut ids: Vec<JobId> = row.get::<Option<Vec<JobId>>, _>(4).unwrap_or_default();
    let retried = ids.len() as i64;
    ids.truncate(MAX_REPORTED_IDS);
    let report = RetryReport {
        dry_run: actor.dry_run,
        matched: row.get(0),
        retried,
        skipped_sent: row.get(1),
        skipped_in_doubt: row.get(2),
        resent_messages: row.get(3),
        ids,
    };
    if !actor.dry_run {
        tracing::info!(
            by = actor.by,
            matched = report.matched,
            retried = report.retried,
            skipped_sent = report.skipped_sent,
            skipped_in_doubt = report.skipped_in_doubt,
            resent_messages = report.resent_messages,
            "operator retry: {} job(s) back to queued",
            report.retried
        );
        if report.resent_messages > 0 {
            tracing::warn!(
                by = actor.by,
                "operator retry with resend_sent: {} message(s) already sent will be SENT AGAIN",
                report.resent_messages
            );
        }
    }
    Ok(report)
}

/// What a cancel did (or, dry, would do).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CancelReport {
    pub dry_run: bool,
    /// Queued or running jobs the filter matched.
    pub matched: i64,
    /// Queued jobs now `cancelled` (dry: that would be).
    pub cancelled: i64,
    /// Running jobs this cancel asked to stop before their next send (one asked already is not
    /// counted again): a runner holds them; each ends `cancelled`, or `done` if all its
    /// messages were sent.
    pub running: i64,
    /// The cancelled ids, at most [`MAX_REPORTED_IDS`].
    pub ids: Vec<JobId>,
    /// The running ids, at most [`MAX_REPORTED_IDS`].
    pub running_ids: Vec<JobId>,
}

/// Queued jobs to `cancelled` (`"completedAt"` set, so the pruner removes them after
/// `runner.retention`); running jobs asked to stop at their next safe point (see the module
/// docs).
pub async fn cancel(
    pool: &Pool,
    filter: &Filter,
    actor: &Actor<'_>,
) -> Result<CancelReport, AdminError> {
    let statuses = filter.for_action("cancel", &["queued", "running"])?;
    let lock = actor.row_lock();
    let sql = format!(
        r#"
        WITH target AS (
            SELECT j.id, j.status FROM "OutboundJob" j
            WHERE {FILTER_SQL}
            ORDER BY j.id
            LIMIT $10
            {lock}
        ), cancelled AS (
            UPDATE "OutboundJob" j
            SET status = 'cancelled', "completedAt" = now(), "updatedAt" = now(),
                "lastErrorCode" = 'cancelled', "lastError" = 'cancelled by ' || $12::text,
                history = j.history || jsonb_build_array(jsonb_build_object(
                    'at', now(), 'action', 'cancel', 'by', $12::text, 'status', j.status,
                    'attempts', j.attempts, 'maxAttempts', j."maxAttempts",
                    'lastError', j."lastError", 'lastErrorCode', j."lastErrorCode",
                    'completedAt', j."completedAt"::timestamptz))
            FROM target t
            WHERE NOT $11 AND j.id = t.id AND t.status = 'queued' AND j.status = 'queued'
            RETURNING j.id
        ), stop AS (
            -- Not a fenced column: the runner's claim, lease and attempts stay as they are.
            UPDATE "OutboundJob" j
            SET "cancelRequestedAt" = now(), "updatedAt" = now(),
                history = j.history || jsonb_build_array(jsonb_build_object(
                    'at', now(), 'action', 'cancel requested', 'by', $12::text, 'status', j.status,
                    'attempts', j.attempts, 'maxAttempts', j."maxAttempts",
                    'lastError', j."lastError", 'lastErrorCode', j."lastErrorCode",
                    'completedAt', j."completedAt"::timestamptz))
            FROM target t
            WHERE NOT $11 AND j.id = t.id AND t.status = 'running' AND j.status = 'running'
              AND j."cancelRequestedAt" IS NULL
            RETURNING j.id
        )
        -- The ids each update changed, never the rows it matched at the start: a row that
        -- finished, or was asked to stop by another cancel, meanwhile is not reported.
        SELECT (SELECT count(*) FROM target),
               CASE WHEN $11 THEN (SELECT array_agg(id ORDER BY id) FROM target WHERE status = 'queued')
                    ELSE (SELECT array_agg(id ORDER BY id) FROM cancelled) END,
               CASE WHEN $11 THEN (SELECT array_agg(id ORDER BY id) FROM target WHERE status = 'running')
                    ELSE (SELECT array_agg(id ORDER BY id) FROM stop) END
        "#
    );
    let row = bind_filter(sqlx::query(&sql), filter, Some(&statuses), false)
        .bind(filter.limit)
        .bind(actor.dry_run)
        .bind(actor.by)
        .persistent(false)
        .fetch_one(pool)
        .await?;
    let mut ids: Vec<JobId> = row.get::<Option<Vec<JobId>>, _>(1).unwrap_or_default();
    let mut running_ids: Vec<JobId> = row.get::<Option<Vec<JobId>>, _>(2).unwrap_or_default();
    let (cancelled, running) = (ids.len() as i64, running_ids.len() as i64);
    ids.truncate(MAX_REPORTED_IDS);
    running_ids.truncate(MAX_REPORTED_IDS);
    let report = CancelReport {
        dry_run: actor.dry_run,
        matched: row.get(0),
        cancelled,
        running,
        ids,
        running_ids,
    };
    if !actor.dry_run {
        tracing::info!(
            by = actor.by,
            matched = report.matched,
            cancelled = report.cancelled,
            running = report.running,
            "operator cancel: {} queued job(s) cancelled; {} running asked to stop before their next send",
            report.cancelled,
            report.running
        );
    }
    Ok(report)
}

/// What the operator learned about an `unknown` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Settled {
    /// It reached Meta (e.g. the recipient has it): `sent`, never sent again.
    Sent,
    /// It did not: `failed` (a later retry of the job sends it).
    Failed,
}

impl std::str::FromStr for Settled {
    type Err = AdminError;
    fn from_str(s: &str) -> Result<Self, AdminError> {
        match s {
            "sent" => Ok(Settled::Sent),
            "failed" => Ok(Settled::Failed),
            _ => Err(invalid(format!(
                "settle as {:?}: sent or failed",
                truncate(s)
            ))),
        }
    }
}

impl Settled {
    pub fn as_str(self) -> &'static str {
        match self {
            Settled::Sent => "sent",
            Settled::Failed => "failed",
        }
    }
}

/// What a settle did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SettleReport {
    pub job_id: JobId,
    /// The settled messages' `seq`.
    pub messages: Vec<i32>,
    #[serde(rename = "as")]
    pub settled_as: Settled,
    /// The job's status now.
    pub job_status: String,
}

/// Settles the `unknown` messages of job `id` (only `seq`, if given) as `sent` or `failed`. The
/// job must be finished as `failed` or `cancelled` (a runner never holds it); it becomes `done`
/// once every one of its messages is sent, and otherwise keeps its status (`"lastErrorCode"`
/// `settled_failed` when settled as failed, so `retry --code settled_failed` sends them).
pub async fn settle(
    pool: &Pool,
    id: &JobId,
    seq: Option<i32>,
    settled_as: Settled,
    wamid: Option<&str>,
    by: &str,
) -> Result<SettleReport, AdminError> {
    if wamid.is_some() && settled_as != Settled::Sent {
        return Err(invalid("a wamid only goes with settling as sent"));
    }
    if let Some(w) = wamid
        && !(1..=200).contains(&w.len())
    {
        return Err(invalid("wamid must be 1 to 200 characters"));
    }
    if wamid.is_some_and(|w| w.contains('\0')) {
        return Err(invalid("wamid must not hold a NUL character"));
    }
    let row = sqlx::query(
        r#"
        WITH job AS (
            SELECT j.id, j.status FROM "OutboundJob" j WHERE j.id = outbound_job_id($1)
            FOR NO KEY UPDATE
        ), msgs AS (
            UPDATE "OutboundMessage" m
            SET status = $3,
                wamid = CASE WHEN $3 = 'sent' THEN $4 END,
                "sentAt" = CASE WHEN $3 = 'sent' THEN now() END,
                "lastErrorCode" = CASE WHEN $3 = 'sent' THEN NULL ELSE 'settled_failed' END,
                "updatedAt" = now()
            FROM job
            WHERE job.status IN ('failed', 'cancelled') AND m."jobId" = job.id
              AND m.status = 'unknown' AND ($2::int IS NULL OR m.seq = $2)
            RETURNING m.seq
        ), rest AS (
            SELECT count(*) AS not_sent FROM "OutboundMessage" m JOIN job ON m."jobId" = job.id
            WHERE m.status NOT IN ('sent', 'delivered', 'read')
              AND NOT ($3 = 'sent' AND m.seq IN (SELECT seq FROM msgs))
        ), moved AS (
            UPDATE "OutboundJob" j
            SET status = CASE WHEN $3 = 'sent' AND r.not_sent = 0 THEN 'done' ELSE j.status END,
                "completedAt" = now(),
                "lastErrorCode" = CASE WHEN $3 = 'sent' AND r.not_sent = 0 THEN NULL
                                       WHEN $3 = 'failed' THEN 'settled_failed'
                                       ELSE j."lastErrorCode" END,
                "lastError" = CASE WHEN $3 = 'sent' AND r.not_sent = 0 THEN NULL
                                   WHEN $3 = 'failed' THEN
                                       'an operator (' || $5::text || ') settled message(s) '
                                       || (SELECT string_agg(seq::text, ', ' ORDER BY seq) FROM msgs)
                                       || ' as failed: not delivered; a retry sends them'
                                   ELSE j."lastError" END,
                "updatedAt" = now(),
                history = j.history || jsonb_build_array(jsonb_build_object(
                    'at', now(), 'action', 'settle', 'by', $5::text, 'status', j.status,
                    'attempts', j.attempts, 'maxAttempts', j."maxAttempts",
                    'lastError', j."lastError", 'lastErrorCode', j."lastErrorCode",
                    'completedAt', j."completedAt"::timestamptz, 'as', $3::text,
                    'messages', (SELECT jsonb_agg(seq ORDER BY seq) FROM msgs)))
            FROM job, rest r
            WHERE j.id = job.id AND EXISTS (SELECT 1 FROM msgs)
            RETURNING j.status::text
        )
        SELECT (SELECT status::text FROM job), (SELECT array_agg(seq ORDER BY seq) FROM msgs),
               (SELECT status FROM moved)
        "#,
    )
    .bind(id)
    .bind(seq)
    .bind(settled_as.as_str())
    .bind(wamid)
    .bind(by)
    .fetch_one(pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.constraint() == Some("OutboundMessage_wamid_key") => {
            AdminError::Conflict("that wamid is recorded for another message already".into())
        }
        _ => AdminError::Database(e),
    })?;
    let before: Option<String> = row.get(0);
    let Some(before) = before else {
        return Err(AdminError::NotFound(format!("no job {id}")));
    };
    let messages: Vec<i32> = row.get::<Option<Vec<i32>>, _>(1).unwrap_or_default();
    if messages.is_empty() {
        return Err(AdminError::Conflict(
            if before == "failed" || before == "cancelled" {
                match seq {
                    Some(s) => format!("job {id} has no unknown message {s}"),
                    None => format!("job {id} has no unknown message"),
                }
            } else {
                format!(
                    "job {id} is {before}: only a failed or cancelled job's messages are settled"
                )
            },
        ));
    }
    let job_status: String = row.get(2);
    tracing::info!(
        by,
        job_id = %id,
        messages = ?messages,
        settled_as = settled_as.as_str(),
        job_status = %job_status,
        "operator settle: {} message(s) of job {id} settled as {}",
        messages.len(),
        settled_as.as_str()
    );
    Ok(SettleReport {
        job_id: id.clone(),
        messages,
        settled_as,
        job_status,
    })
}

/// The web console's overview statement (see [`overview`]). Counts by status except `done`, each
/// from a partial index (queued; running with and without a lease; failed and cancelled:
/// `migrations/20261206120000_console.sql`), all rows only as the planner's estimate; the oldest
/// due job; the finishes per minute since `$1` (the minutes the console does not know yet: it
/// keeps the older ones between refreshes) from the `"completedAt"` index; the fates of the messages of the
/// latest jobs finished in the last hour, 10,000 at most (one index probe each: bounded at any
/// volume);
/// unsettled sends; the runners holding jobs; the runners' connections.
pub const OVERVIEW_SQL: &str = r#"
SELECT json_build_object(
  'byStatus', json_build_object(
      'queued', (SELECT count(*) FROM "OutboundJob" WHERE status = 'queued'),
      'running', (SELECT count(*) FROM "OutboundJob"
                  WHERE "leaseUntil" IS NOT NULL AND status = 'running')
               + (SELECT count(*) FROM "OutboundJob"
                  WHERE status = 'running' AND "leaseUntil" IS NULL),
      'failed', (SELECT count(*) FROM "OutboundJob" WHERE status = 'failed'),
      'cancelled', (SELECT count(*) FROM "OutboundJob" WHERE status = 'cancelled')),
  'totalEstimate', (SELECT greatest(reltuples, 0)::bigint FROM pg_class
                    WHERE oid = '"OutboundJob"'::regclass),
  'oldestDueSeconds', (SELECT CASE WHEN isfinite(m) THEN EXTRACT(EPOCH FROM now() - m)::float8 END
                       FROM (SELECT min("runAt") AS m FROM "OutboundJob"
                             WHERE status = 'queued' AND "runAt" <= now()) q),
  'now', now(),
  'minutes', (SELECT coalesce(json_agg(json_build_object('at', at, 'done', d, 'failed', f)), '[]'::json)
              FROM (SELECT date_trunc('minute', "completedAt") AS at,
                           count(*) FILTER (WHERE status = 'done') AS d,
                           count(*) FILTER (WHERE status = 'failed') AS f
                    FROM "OutboundJob"
                    WHERE "completedAt" >= greatest($1, now() - interval '24 hours')
                      AND "completedAt" <= now() AND status IN ('done', 'failed')
                    GROUP BY 1) b),
  'messages', (SELECT json_build_object(
                  'sent', count(*) FILTER (WHERE m.status = 'sent'),
                  'delivered', count(*) FILTER (WHERE m.status = 'delivered'),
                  'read', count(*) FILTER (WHERE m.status = 'read'),
                  'failed', count(*) FILTER (WHERE m.status = 'failed'))
               FROM (SELECT id FROM "OutboundJob"
                     WHERE "completedAt" > now() - interval '1 hour'
                     ORDER BY "completedAt" DESC LIMIT 10000) j
               CROSS JOIN LATERAL (SELECT status FROM "OutboundMessage" m
                                   WHERE m."jobId" = j.id OFFSET 0) m),
  'unknownUnsettled', (SELECT count(*) FROM "OutboundMessage" WHERE status = 'unknown'),
  'runners', (SELECT coalesce(json_agg(json_build_object('name', r, 'running', n) ORDER BY r), '[]'::json)
              FROM (SELECT "lockedBy" AS r, count(*) AS n FROM "OutboundJob"
                    WHERE "leaseUntil" IS NOT NULL AND status = 'running' GROUP BY 1) x),
  'connections', (SELECT coalesce(json_agg(json_build_object('host', h, 'connections', n) ORDER BY h), '[]'::json)
                  FROM (SELECT coalesce(host(client_addr), 'local') AS h, count(*) AS n
                        FROM pg_stat_activity
                        WHERE application_name = 'outbound-runner' AND datname = current_database()
                        GROUP BY 1) c)
)"#;

/// The web console's overview of the queue in one statement ([`OVERVIEW_SQL`]), as JSON: the
/// finishes per minute are read from `from` on (`None`: the last 24 h). It reads only indexes of
/// `"OutboundJob"` (docs/console.md).
pub async fn overview(pool: &Pool, from: Option<DateTime<Utc>>) -> sqlx::Result<serde_json::Value> {
    sqlx::query_scalar(OVERVIEW_SQL)
        .bind(from)
        .persistent(false)
        .fetch_one(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_refuses_bad_input() {
        let bad = |f: Filter| f.validate().unwrap_err().to_string();
        assert!(
            bad(Filter {
                status: vec!["finished".into()],
                ..Filter::default()
            })
            .contains("unknown status \"finished\"")
        );
        assert!(
            bad(Filter {
                code: Some("13 1000; drop".into()),
                ..Filter::default()
            })
            .contains("not an error code")
        );
        assert!(
            bad(Filter {
                to: Some("+1 555".into()),
                ..Filter::default()
            })
            .contains("not a phone number")
        );
        let cursor = Cursor::parse("1700000000123456.clx:1").unwrap();
        assert_eq!(cursor.to_string(), "1700000000123456.clx:1");
        assert_eq!(
            cursor.bind(),
            vec!["2023-11-14T22:13:20.123456Z".to_string(), "clx:1".into()]
        );
        assert!(
            Cursor::parse("42")
                .unwrap_err()
                .to_string()
                .contains("cursor")
        );
        assert!(Cursor::parse("x.42").is_err());
        assert!(Cursor::parse("1.").is_err());
        let t = parse_time("2026-11-29").unwrap();
        assert!(
            bad(Filter {
                since: Some(t),
                until: Some(t),
                ..Filter::default()
            })
            .contains("before")
        );
        let ok = Filter {
            to: Some("+15551234567".into()),
            status: vec!["failed".into(), "failed".into()],
            ..Filter::default()
        }
        .validate()
        .unwrap();
        assert_eq!(ok.to.as_deref(), Some("15551234567"));
        assert_eq!(ok.status, vec!["failed".to_string()]);
    }

    #[test]
    fn bulk_actions_need_a_filter_or_all() {
        let empty = Filter::default();
        assert!(
            empty
                .for_action("retry", &["failed", "cancelled"])
                .unwrap_err()
                .to_string()
                .contains("would touch every job")
        );
        let all = Filter {
            all: true,
            ..Filter::default()
        };
        assert_eq!(
            all.for_action("retry", &["failed", "cancelled"]).unwrap(),
            vec!["failed", "cancelled"]
        );
        let queued = Filter {
            status: vec!["queued".into()],
            ..Filter::default()
        };
        assert!(
            queued
                .for_action("retry", &["failed", "cancelled"])
                .unwrap_err()
                .to_string()
                .contains("not queued")
        );
        // A limit alone is not a filter.
        let limit = Filter {
            limit: Some(3),
            ..Filter::default()
        };
        assert!(limit.for_action("cancel", &["queued", "running"]).is_err());
    }

    #[test]
    fn times_parse() {
        assert_eq!(
            parse_time("2026-11-29T08:00:00Z").unwrap().to_rfc3339(),
            "2026-11-29T08:00:00+00:00"
        );
        let ago = parse_time("24h").unwrap();
        let diff = Utc::now() - ago;
        assert!(diff.num_minutes() >= 24 * 60 - 1 && diff.num_minutes() <= 24 * 60 + 1);
        assert!(parse_time("yesterday-ish").is_err());
        // Beyond PostgreSQL's range: bad input, named as such, never a database error.
        for far in ["1000000000h", "99999999999999days", "10000-01-01"] {
            assert!(
                matches!(parse_time(far), Err(AdminError::Invalid(_))),
                "{far}"
            );
        }
    }
}
