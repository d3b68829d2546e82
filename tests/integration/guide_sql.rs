//! The user's guide's SQL ("Check Database for Queued Jobs" and "Monitoring") runs unchanged
//! against our schema and counts what it should.

use sqlx::Row;

use crate::support::TestDb;

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
    assert_eq!(
        count(r#"SELECT COUNT(*) FROM "OutboundJob" WHERE status = 'queued';"#).await,
        2
    );
    assert_eq!(
        count(r#"SELECT COUNT(*) FROM "OutboundJob" WHERE status = 'running';"#).await,
        1
    );
    assert_eq!(
        count(
            r#"SELECT COUNT(*) FROM "OutboundJob" 
WHERE status = 'done' 
AND "completedAt" > NOW() - INTERVAL '1 hour';"#
        )
        .await,
        3
    );
    assert_eq!(
        count(
            r#"SELECT COUNT(*) FROM "OutboundJob" 
WHERE status = 'failed' 
AND "completedAt" > NOW() - INTERVAL '24 hours';"#
        )
        .await,
        2
    );

    // Monitoring 1: queue size.
    let rows = sqlx::query(r#"SELECT status, COUNT(*) FROM "OutboundJob" GROUP BY status;"#)
        .fetch_all(&db.pool)
        .await
        .unwrap();
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
    let rows = sqlx::query(
        r#"SELECT 
  DATE_TRUNC('minute', "completedAt") as minute,
  COUNT(*) as processed
FROM "OutboundJob"
WHERE status = 'done'
AND "completedAt" > NOW() - INTERVAL '1 hour'
GROUP BY minute
ORDER BY minute DESC;"#,
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r.get::<i64, _>("processed"))
            .sum::<i64>(),
        3
    );

    // Monitoring 3: error rate.
    let rows = sqlx::query(
        r#"SELECT 
  DATE_TRUNC('hour', "completedAt") as hour,
  COUNT(*) as failed
FROM "OutboundJob"
WHERE status = 'failed'
AND "completedAt" > NOW() - INTERVAL '24 hours'
GROUP BY hour
ORDER BY hour DESC;"#,
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.get::<i64, _>("failed")).sum::<i64>(),
        2
    );
}
