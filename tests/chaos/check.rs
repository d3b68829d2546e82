//! The invariants, from the database and the mock's record, after the queue drained:
//!
//! - **no loss**: every job the producer was given an id for is still in the table, and every
//!   job in the table is `done` or `failed` (none `queued` or `running`);
//! - **no duplicate**: the mock accepted no message twice, keyed by (job id, seq);
//! - **honest records**:
//!   - every `sent` message (so every message of a `done` job) has a wamid the mock issued for
//!     exactly that job and message;
//!   - every message the mock accepted is `sent` with that wamid, or `unknown` (in doubt): never
//!     `pending`, `failed` or left `sending`;
//!   - every `unknown` message is one the mock may or may not have accepted (both are allowed;
//!     the count, and how many the mock did accept, are reported);
//!   - a `failed` job attempted a send first (a message `unknown`, or refused by Meta): the
//!     runner never gives up on a job before a send was attempted ("at least once per job until
//!     a send is attempted", docs/delivery.md), unless Meta refused the job for good.
//! - **every message's fate**, in the scenarios with status webhooks on (after the mock's
//!   webhooks were all answered 2xx and no status waits early): every message the mock accepted
//!   is `read` with its wamid (settled, also when its send was in doubt), and its job is `done`
//!   unless the job was cut before a later message of it left (that message never reached the
//!   mock: the job stays failed `delivery_unknown`, counted as `unsent_rest`); a message left
//!   `unknown` is one whose request never reached the mock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::support::mock_meta::MockMeta;

#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Jobs in the table.
    pub jobs: usize,
    pub done: usize,
    pub failed: usize,
    /// Inserted jobs missing from the table, or not final.
    pub lost: usize,
    /// Messages the mock accepted more than once.
    pub duplicated: usize,
    /// Messages left `unknown`.
    pub unknown: usize,
    /// Of those, how many the mock had accepted.
    pub unknown_accepted: usize,
    /// Of those, how many never reached the mock at all (no request seen).
    pub unknown_unseen: usize,
    /// Failed jobs per `"lastErrorCode"`.
    pub failed_codes: BTreeMap<String, usize>,
    /// Messages the mock accepted.
    pub accepted: usize,
    /// Of those, how many are `read` (their webhooks applied).
    pub read: usize,
    /// Jobs failed `delivery_unknown` whose messages that left are all settled, with a later
    /// message that never left (the attempt was cut before it).
    pub unsent_rest: usize,
    pub violations: Vec<String>,
}

impl Counts {
    pub fn failed_summary(&self) -> String {
        self.failed_codes
            .iter()
            .map(|(c, n)| format!("{c}×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Waits until no job is `queued` or `running`; the instant it saw that, or `None` after
/// `within`.
pub async fn drained(pool: &PgPool, within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    loop {
        let open: Result<i64, _> = sqlx::query_scalar(
            r#"SELECT count(*) FROM "OutboundJob" WHERE status IN ('queued', 'running')"#,
        )
        .fetch_one(pool)
        .await;
        if matches!(open, Ok(0)) {
            return Some(Instant::now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every job in `ids` is final; the instant, or `None` after `within`.
pub async fn finished(pool: &PgPool, ids: &[i64], within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    loop {
        let open: Result<i64, _> = sqlx::query_scalar(
            r#"SELECT count(*) FROM "OutboundJob" WHERE id = ANY($1) AND status IN ('queued', 'running')"#,
        )
        .bind(ids)
        .fetch_one(pool)
        .await;
        if matches!(open, Ok(0)) {
            return Some(Instant::now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The text that names a message: `chaos <n> part <seq>`.
fn text_of(body: &serde_json::Value) -> String {
    body["text"]["body"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until no status waits in `"OutboundEarlyStatus"` (each is applied within a second of
/// its message being able to take it); whether that happened within `within`.
pub async fn no_early_statuses(pool: &PgPool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let n: Result<i64, _> = sqlx::query_scalar(r#"SELECT count(*) FROM "OutboundEarlyStatus""#)
            .fetch_one(pool)
            .await;
        if matches!(n, Ok(0)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `webhooks`: the mock sent status webhooks for every message it accepted, and every one was
/// answered 2xx (see the module docs).
pub async fn verify(
    pool: &PgPool,
    mock: &MockMeta,
    produced: &[i64],
    webhooks: bool,
) -> anyhow::Result<Counts> {
    let mut c = Counts::default();
    let jobs: Vec<(i64, String, Option<String>)> =
        sqlx::query_as(r#"SELECT id, status, "lastErrorCode" FROM "OutboundJob" ORDER BY id"#)
            .fetch_all(pool)
            .await?;
    let messages: Vec<(i64, i32, String, Option<String>, serde_json::Value)> = sqlx::query_as(
        r#"SELECT "jobId", seq, status, wamid, body FROM "OutboundMessage" ORDER BY "jobId", seq"#,
    )
    .fetch_all(pool)
    .await?;
    let accepted = mock.accepted();
    let requested: HashSet<(String, String)> = mock
        .requests()
        .iter()
        .map(|r| {
            (
                crate::support::mock_meta::job_of(
                    r["biz_opaque_callback_data"].as_str().unwrap_or_default(),
                ),
                text_of(r),
            )
        })
        .collect();

    // No loss.
    c.jobs = jobs.len();
    let status: HashMap<i64, (&str, Option<&str>)> = jobs
        .iter()
        .map(|(id, s, code)| (*id, (s.as_str(), code.as_deref())))
        .collect();
    let missing: Vec<i64> = produced
        .iter()
        .copied()
        .filter(|id| !status.contains_key(id))
        .collect();
    let stuck: Vec<(i64, &str)> = jobs
        .iter()
        .filter(|(_, s, _)| s != "done" && s != "failed")
        .map(|(id, s, _)| (*id, s.as_str()))
        .collect();
    c.lost = missing.len() + stuck.len();
    if !missing.is_empty() {
        c.violations
            .push(format!("inserted jobs missing from the table: {missing:?}"));
    }
    if !stuck.is_empty() {
        c.violations.push(format!(
            "jobs not final after the drain window: {:?}",
            &stuck[..stuck.len().min(20)]
        ));
    }
    c.done = jobs.iter().filter(|j| j.1 == "done").count();
    c.failed = jobs.iter().filter(|j| j.1 == "failed").count();

    // No duplicate.
    let mut per_message: HashMap<(String, String), Vec<&str>> = HashMap::new();
    for a in &accepted {
        per_message
            .entry((a.job.clone(), text_of(&a.message)))
            .or_default()
            .push(a.wamid.as_str());
    }
    let dups: Vec<_> = per_message.iter().filter(|(_, w)| w.len() > 1).collect();
    c.duplicated = dups.len();
    if !dups.is_empty() {
        c.violations.push(format!(
            "messages accepted more than once (job, text → wamids): {:?}",
            &dups[..dups.len().min(10)]
        ));
    }

    // Honest records.
    let issued: HashMap<&str, (String, String)> = accepted
        .iter()
        .map(|a| (a.wamid.as_str(), (a.job.clone(), text_of(&a.message))))
        .collect();
    let mut rows: HashMap<(String, String), (&str, Option<&str>)> = HashMap::new();
    let mut jobs_in_doubt_or_refused: HashSet<i64> = HashSet::new();
    for (job, seq, st, wamid, body) in &messages {
        let key = (job.to_string(), text_of(body));
        if !key.1.ends_with(&format!(" part {seq}")) {
            c.violations
                .push(format!("job {job} message {seq} has text {:?}", key.1));
        }
        match st.as_str() {
            "sent" | "delivered" | "read" => match wamid.as_deref().and_then(|w| issued.get(w)) {
                Some(owner) if *owner == key => {}
                Some(owner) => c.violations.push(format!(
                    "job {job} message {seq} is sent with a wamid the mock issued for {owner:?}"
                )),
                None => c.violations.push(format!(
                    "job {job} message {seq} is sent with wamid {wamid:?}, which the mock never issued"
                )),
            },
            "unknown" => {
                c.unknown += 1;
                if per_message.contains_key(&key) {
                    c.unknown_accepted += 1;
                }
                if !requested.contains(&key) {
                    c.unknown_unseen += 1;
                } else if webhooks {
                    c.violations.push(format!(
                        "job {job} message {seq} reached the mock but is left unknown although \
                         its status webhooks were answered"
                    ));
                }
                jobs_in_doubt_or_refused.insert(*job);
            }
            "failed" => {
                jobs_in_doubt_or_refused.insert(*job);
            }
            _ => {}
        }
        if status.get(job).is_some_and(|(s, _)| *s == "done")
            && !matches!(st.as_str(), "sent" | "delivered" | "read")
        {
            c.violations
                .push(format!("job {job} is done but its message {seq} is {st}"));
        }
        rows.insert(key, (st.as_str(), wamid.as_deref()));
    }
    // Jobs failed `delivery_unknown` with a message that never reached the mock (`pending`, or
    // `unknown`: cut between its mark and its request), while every message of it that did is
    // settled: the attempt was cut before their rest left.
    let never_left = |job: i64, st: &str, body: &serde_json::Value| {
        matches!(st, "pending" | "unknown")
            && !requested.contains(&(job.to_string(), text_of(body)))
    };
    let mut unsent_rest: HashSet<i64> = messages
        .iter()
        .filter(|m| never_left(m.0, &m.2, &m.4))
        .map(|m| m.0)
        .collect();
    unsent_rest.retain(|job| {
        status.get(job) == Some(&("failed", Some("delivery_unknown")))
            && messages.iter().filter(|m| m.0 == *job).all(|m| {
                never_left(m.0, &m.2, &m.4) || matches!(m.2.as_str(), "sent" | "delivered" | "read")
            })
    });
    c.accepted = per_message.len();
    let mut partial: HashSet<i64> = HashSet::new();
    for ((job, text), wamids) in &per_message {
        let row = rows.get(&(job.clone(), text.clone()));
        if webhooks {
            // Every message Meta accepted ends settled: `read` (the mock's last status), with
            // the wamid it was accepted under, its job `done` (or cut before its rest left).
            match row {
                Some(("read", Some(w))) if wamids.contains(w) => {
                    c.read += 1;
                    let id: i64 = job.parse().unwrap_or_default();
                    let job_status = status.get(&id).map(|s| s.0);
                    if job_status == Some("done") {
                    } else if unsent_rest.contains(&id) {
                        partial.insert(id);
                        jobs_in_doubt_or_refused.insert(id);
                    } else {
                        c.violations.push(format!(
                            "the mock accepted job {job} {text:?} and its webhooks were answered, \
                             but the job is {job_status:?}"
                        ));
                    }
                }
                Some((st, w)) => c.violations.push(format!(
                    "the mock accepted job {job} {text:?} ({wamids:?}) and its webhooks were \
                     answered, but the ledger says {st} {w:?} (expected read)"
                )),
                None => c.violations.push(format!(
                    "the mock accepted job {job} {text:?} ({wamids:?}), which the ledger does not have"
                )),
            }
            continue;
        }
        match row {
            Some(("sent", Some(w))) if wamids.contains(w) => {}
            Some(("unknown", _)) => {}
            Some((st, w)) => c.violations.push(format!(
                "the mock accepted job {job} {text:?} ({wamids:?}) but the ledger says {st} {w:?}"
            )),
            None => c.violations.push(format!(
                "the mock accepted job {job} {text:?} ({wamids:?}), which the ledger does not have"
            )),
        }
    }
    c.unsent_rest = partial.len();
    for (id, st, code) in &jobs {
        if st != "failed" {
            continue;
        }
        let code = code.clone().unwrap_or_else(|| "-".into());
        *c.failed_codes.entry(code.clone()).or_default() += 1;
        if !jobs_in_doubt_or_refused.contains(id) {
            c.violations.push(format!(
                "job {id} failed ({code}) without a send in doubt or refused: given up before a send was attempted"
            ));
        }
    }
    c.violations.truncate(40);
    Ok(c)
}
