//! The user's guide's SQL ("Check Database for Queued Jobs" and "Monitoring") runs unchanged
//! against our schema and counts what it should.

use sqlx::Row;

use crate::support::TestDb;

// The guide's monitoring SQL, verbatim (its section 5 and "Monitoring" 1–3): the one copy every
// test that runs it uses.
pub const QUEUED: &str = r#"SELECT COUNT(*) FROM "OutboundJob" WHERE status = 'queued';"#;
pub const RUNNING: &str = r#"SELECT COUNT(*) FROM "OutboundJob" WHERE status = 'running';"#;
pub const DONE_LAST_HOUR: &str = r#"SELECT COUNT(*) FROM "OutboundJob" 
WHERE status = 'done' 
AND "completedAt" > NOW() - INTERVAL '1 hour';"#;
pub const FAILED_LAST_DAY: &str = r#"SELECT COUNT(*) FROM "OutboundJob" 
WHERE status = 'failed' 
AND "completedAt" > NOW() - INTERVAL '24 hours';"#;
pub const BY_STATUS: &str = r#"SELECT status, COUNT(*) FROM "OutboundJob" GROUP BY status;"#;
pub const PER_MINUTE: &str = r#"SELECT 
  DATE_TRUNC('minute', "completedAt") as minute,
  COUNT(*) as processed
FROM "OutboundJob"
WHERE status = 'done'
AND "completedAt" > NOW() - INTERVAL '1 hour'
GROUP BY minute
ORDER BY minute DESC;"#;
pub const PER_HOUR_FAILED: &str = r#"SELECT 
  DATE_TRUNC('hour', "completedAt") as hour,
  COUNT(*) as failed
FROM "OutboundJob"
WHERE status = 'failed'
AND "completedAt" > NOW() - INTERVAL '24 hours'
GROUP BY hour
ORDER BY hour DESC;"#;
/// Every query above, for a test that only needs them to run.
pub const ALL: [&str; 7] = [
    QUEUED,
    RUNNING,
    DONE_LAST_HOUR,
    FAILED_LAST_DAY,
    BY_STATUS,
    PER_MINUTE,
    PER_HOUR_FAILED,
];

#[tokio::test]
async fn every_query_of_the_guide_runs_unchanged() {
    let db = TestDb::new().await;
    let ids = db.insert_jobs(10).await;
    let set = |status: &'static str, ago: &'static str, ids: Vec<i64>| {
        let pool = db.pool.clone();
        async move {
            sqlx::query(&format!(
                r#"UPDATE "OutboundJob" SET status = '{status}', "completedAt" = now() - interval '{ago}'
                   WHERE id = ANY($1)"#
            ))
            .bind(ids)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    set("done", "10 minutes", ids[0..3].to_vec()).await;
    set("done", "2 hours", ids[3..4].to_vec()).await;
    set("failed", "3 hours", ids[4..6].to_vec()).await;
    set("failed", "2 days", ids[6..7].to_vec()).await;
    sqlx::query(r#"UPDATE "OutboundJob" SET status = 'running' WHERE id = $1"#)
        .bind(ids[7])
        .execute(&db.pool)
        .await
        .unwrap();
    // Left queued: ids[8], ids[9].

    let count = |sql: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // Section 5, verbatim.
    assert_eq!(count(QUEUED).await, 2);
    assert_eq!(count(RUNNING).await, 1);
    assert_eq!(count(DONE_LAST_HOUR).await, 3);
    assert_eq!(count(FAILED_LAST_DAY).await, 2);

    // Monitoring 1: queue size.
    let rows = sqlx::query(BY_STATUS).fetch_all(&db.pool).await.unwrap();
    let mut by_status: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    by_status.sort();
    assert_eq!(
        by_status,
        [
            ("done".into(), 4),
            ("failed".into(), 3),
            ("queued".into(), 2),
            ("running".into(), 1)
        ]
    );

    // Monitoring 2: processing rate.
    let rows = sqlx::query(PER_MINUTE).fetch_all(&db.pool).await.unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r.get::<i64, _>("processed"))
            .sum::<i64>(),
        3
    );

    // Monitoring 3: error rate.
    let rows = sqlx::query(PER_HOUR_FAILED)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.get::<i64, _>("failed")).sum::<i64>(),
        2
    );
}
