//! `outbound-runner status`: the user's job-runner guide's monitoring queries (docs/operations.md "Monitor") answered on one screen, with the
//! guide's "Expected Behavior" turned into checks that set the exit code.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db::Pool;
use crate::queue::STATUSES;

/// Thresholds for the checks.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// A due queued job older than this means the runner is not keeping up (or not running).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
    pub max_queued_age: Duration,
    /// Failed / (done + failed) over the last hour above this is unhealthy.
    #[arg(long, default_value_t = 0.05)]
    pub max_failure_ratio: f64,
    /// How long a `running` row without a lease of ours may go without an update before it is
    /// reported: `runner.foreign_running_grace` (the rescuer waits as long), set from the
    /// configuration, not the command line.
    #[arg(skip = crate::queue::store::NO_LEASE_GRACE)]
    pub no_lease_grace: Duration,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub ok: bool,
    pub by_status: Vec<StatusCount>,
    pub oldest_queued_age_seconds: Option<f64>,
    pub expired_leases: i64,
    pub done_last_hour: i64,
    pub failed_last_hour: i64,
    pub done_per_minute: Vec<Bucket>,
    pub failed_per_hour: Vec<Bucket>,
    pub last_errors: Vec<LastError>,
    /// What Meta's status webhooks said in the last hour (docs/delivery.md).
    pub messages_last_hour: MessageFates,
    /// Sends in doubt that no status has settled yet.
    pub unknown_unsettled: i64,
    /// Statuses kept until their message can take them.
    pub early_statuses: i64,
    /// A due job whose claim the database refuses (it blocks every claim batch it is in).
    pub unclaimable: Option<UnclaimableJob>,
    /// Jobs `running` with no lease (`"leaseUntil"` NULL), for longer than the rescue grace.
    pub running_without_lease: i64,
    pub checks: Vec<Check>,
    /// This host's daemon's in-flight sizing, when its `/metrics` answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<super::in_flight::InFlight>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct MessageFates {
    pub delivered: i64,
    pub read: i64,
    pub failed: i64,
}

#[derive(Debug, Serialize)]
pub struct UnclaimableJob {
    pub id: crate::queue::JobId,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct StatusCount {
    pub status: String,
    pub count: i64,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Bucket {
    pub at: DateTime<Utc>,
    pub count: i64,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    pub id: crate::queue::JobId,
    pub status: String,
    pub code: Option<String>,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Runs the queries. Each is the guide's own (or its obvious sibling), so the numbers match what
/// an operator pasting the guide's SQL would see.
pub async fn collect(pool: &Pool, args: &StatusArgs) -> sqlx::Result<Status> {
    // The counts by status and the oldest due job's age: the store's own queries (the gauges').
    let stats = crate::queue::store::queue_stats(pool, true).await?;
    let by_status = STATUSES
        .iter()
        .map(|s| StatusCount {
            status: s.to_string(),
            count: stats
                .by_status
                .iter()
                .find(|(st, _)| st == s)
                .map_or(0, |(_, c)| *c),
        })
        .collect();
    let oldest: Option<f64> = stats.oldest_queued_age.map(|d| d.as_secs_f64());
    let expired_leases: i64 = sqlx::query_scalar(
        r#"SELECT COUNT(*) FROM "OutboundJob" WHERE status = 'running' AND "leaseUntil" < now()"#,
    )
    .fetch_one(pool)
    .await?;
    let (done_last_hour, failed_last_hour): (i64, i64) = sqlx::query_as(
        r#"SELECT COUNT(*) FILTER (WHERE status = 'done'), COUNT(*) FILTER (WHERE status = 'failed')
           FROM "OutboundJob" WHERE "completedAt" > NOW() - INTERVAL '1 hour'"#,
    )
    .fetch_one(pool)
    .await?;
    let done_per_minute: Vec<Bucket> = sqlx::query_as(
        r#"SELECT DATE_TRUNC('minute', "completedAt"::timestamptz) AS at, COUNT(*) AS count
           FROM "OutboundJob"
           WHERE status = 'done' AND "completedAt" > NOW() - INTERVAL '1 hour'
             AND isfinite("completedAt")
           GROUP BY at ORDER BY at DESC"#,
    )
    .fetch_all(pool)
    .await?;
    let failed_per_hour: Vec<Bucket> = sqlx::query_as(
        r#"SELECT DATE_TRUNC('hour', "completedAt"::timestamptz) AS at, COUNT(*) AS count
           FROM "OutboundJob"
           WHERE status = 'failed' AND "completedAt" > NOW() - INTERVAL '24 hours'
             AND isfinite("completedAt")
           GROUP BY at ORDER BY at DESC"#,
    )
    .fetch_all(pool)
    .await?;
    let last_errors: Vec<LastError> = sqlx::query_as(
        // "updatedAt" clamped: the app may write an infinite one, beyond what a time can hold.
        r#"SELECT id, status::text AS status, "lastErrorCode" AS code, "lastError" AS error,
                  GREATEST(LEAST("updatedAt", '9999-12-31'::timestamptz),
                           '0001-01-01'::timestamptz) AS at
           FROM "OutboundJob" WHERE "lastError" IS NOT NULL
           ORDER BY "updatedAt" DESC LIMIT 5"#,
    )
    .fetch_all(pool)
    .await?;

    // One pass over the messages (no index serves "in the last hour"; `status` runs rarely).
    let messages_last_hour: MessageFates = sqlx::query_as(
        r#"SELECT COUNT(*) FILTER (WHERE "deliveredAt" > NOW() - INTERVAL '1 hour') AS delivered,
                  COUNT(*) FILTER (WHERE "readAt" > NOW() - INTERVAL '1 hour') AS read,
                  COUNT(*) FILTER (WHERE status = 'failed'
                                     AND "updatedAt" > NOW() - INTERVAL '1 hour') AS failed
           FROM "OutboundMessage""#,
    )
    .fetch_one(pool)
    .await?;
    let (unknown_unsettled, early_statuses): (i64, i64) = sqlx::query_as(
        r#"SELECT (SELECT COUNT(*) FROM "OutboundMessage" WHERE status = 'unknown'),
                  (SELECT COUNT(*) FROM "OutboundEarlyStatus")"#,
    )
    .fetch_one(pool)
    .await?;
    // A dry run of the claim on the first due rows, rolled back: names a row no runner can
    // claim (docs/reliability.md, "Rows the runner cannot use").
    let unclaimable = crate::queue::store::find_unclaimable(pool, 100, &[])
        .await?
        .map(|(id, error)| UnclaimableJob { id, error });
    let running_without_lease: i64 = sqlx::query_scalar(
        r#"SELECT COUNT(*) FROM "OutboundJob"
           WHERE status = 'running' AND "leaseUntil" IS NULL
             AND "updatedAt" < now() - make_interval(secs => $1)"#,
    )
    .bind(args.no_lease_grace.as_secs_f64())
    .fetch_one(pool)
    .await?;

    let mut checks = Vec::new();
    let max_age = args.max_queued_age.as_secs_f64();
    checks.push(match oldest {
        Some(age) if age > max_age => Check {
            name: "queue",
            ok: false,
            detail: format!(
                "the oldest due job has waited {} (limit {}): is a runner running? (guide: Jobs Not Processing)",
                human(age),
                human(max_age)
            ),
        },
        Some(age) => Check {
            name: "queue",
            ok: true,
            detail: format!("oldest due job waited {}", human(age)),
        },
        None => Check {
            name: "queue",
            ok: true,
            detail: "no due job waiting".into(),
        },
    });
    checks.push(Check {
        name: "leases",
        ok: expired_leases == 0,
        detail: if expired_leases == 0 {
            "no running job with an expired lease".into()
        } else {
            format!(
                "{expired_leases} running job(s) with an expired lease: their runner died; a live runner rescues them"
            )
        },
    });
    checks.push(match &unclaimable {
        None => Check {
            name: "claims",
            ok: true,
            detail: "the due jobs can be claimed".into(),
        },
        Some(u) => Check {
            name: "claims",
            ok: false,
            detail: format!(
                "job {} cannot be claimed ({}): it blocks every claim that includes it; fix or \
                 delete the row",
                u.id, u.error
            ),
        },
    });
    checks.push(Check {
        name: "no-lease",
        ok: running_without_lease == 0,
        detail: if running_without_lease == 0 {
            "no running job without a lease".into()
        } else {
            format!(
                "{running_without_lease} running job(s) without a lease (\"leaseUntil\" NULL): \
                 written by hand, by an old runner or by the app's own runner; a live runner \
                 rescues them after runner.foreign_running_grace"
            )
        },
    });
    let finished = done_last_hour + failed_last_hour;
    let ratio = if finished == 0 {
        0.0
    } else {
        failed_last_hour as f64 / finished as f64
    };
    checks.push(Check {
        name: "failures",
        ok: ratio <= args.max_failure_ratio,
        detail: format!(
            "{failed_last_hour} failed of {finished} finished in the last hour ({:.1}%, limit {:.1}%)",
            ratio * 100.0,
            args.max_failure_ratio * 100.0
        ),
    });
    Ok(Status {
        ok: checks.iter().all(|c| c.ok),
        by_status,
        oldest_queued_age_seconds: oldest,
        expired_leases,
        done_last_hour,
        failed_last_hour,
        done_per_minute,
        failed_per_hour,
        last_errors,
        messages_last_hour,
        unknown_unsettled,
        early_statuses,
        unclaimable,
        running_without_lease,
        checks,
        in_flight: None,
    })
}

fn human(secs: f64) -> String {
    humantime::format_duration(Duration::from_secs(secs.clamp(0.0, 1e12) as u64)).to_string()
}

/// The one-screen table.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    out.push_str("Jobs by status\n");
    for c in &s.by_status {
        out.push_str(&format!("  {:<10} {:>8}\n", c.status, c.count));
    }
    out.push_str(&format!(
        "\nLast hour: {} done, {} failed\n",
        s.done_last_hour, s.failed_last_hour
    ));
    let m = &s.messages_last_hour;
    out.push_str(&format!(
        "Messages, last hour (Meta's status webhooks): {} delivered, {} read, {} failed\n",
        m.delivered, m.read, m.failed
    ));
    out.push_str(&format!(
        "Sends in doubt (unknown) not settled by a status: {}; early statuses waiting: {}\n",
        s.unknown_unsettled, s.early_statuses
    ));
    out.push_str("\nDone per minute (last hour, newest first)\n");
    if s.done_per_minute.is_empty() {
        out.push_str("  none\n");
    }
    for b in s.done_per_minute.iter().take(15) {
        out.push_str(&format!("  {}  {:>6}\n", b.at.format("%H:%M"), b.count));
    }
    out.push_str("\nFailed per hour (last 24 hours, newest first)\n");
    if s.failed_per_hour.is_empty() {
        out.push_str("  none\n");
    }
    for b in &s.failed_per_hour {
        out.push_str(&format!(
            "  {}  {:>6}\n",
            b.at.format("%m-%d %H:00"),
            b.count
        ));
    }
    out.push_str("\nLast errors\n");
    if s.last_errors.is_empty() {
        out.push_str("  none\n");
    }
    for e in &s.last_errors {
        let mut text = e.error.clone().unwrap_or_default().replace('\n', " ");
        if text.chars().count() > 100 {
            text = text.chars().take(99).collect::<String>() + "…";
        }
        out.push_str(&format!(
            "  job {:<8} {:<7} {:<18} {}  {}\n",
            e.id,
            e.status,
            e.code.as_deref().unwrap_or("-"),
            e.at.format("%m-%d %H:%M:%S"),
            text
        ));
    }
    if let Some(i) = &s.in_flight {
        out.push_str(&super::in_flight::render(i));
    }
    out.push_str("\nChecks\n");
    for c in &s.checks {
        out.push_str(&format!(
            "  {} {:<9} {}\n",
            if c.ok { "✓" } else { "✗" },
            c.name,
            c.detail
        ));
    }
    out
}
