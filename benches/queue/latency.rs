//! Wake-up latency: an idle runner, jobs inserted one at a time 20 ms apart; insert → claim
//! ("startedAt" - "createdAt") and insert → done ("completedAt" - "createdAt"), both on the
//! database's clock.

use std::time::Duration;

use outbound_runner::runner::Mode;

use crate::common::{Args, Db, Row, median, percentile, sandbox_runner, settings};
use crate::progress;

const PS: [f64; 3] = [0.5, 0.95, 0.99];

async fn once(jobs: usize, workers: u32) -> ([f64; 3], [f64; 3]) {
    let db = Db::new().await;
    let s = settings(workers);
    let pool = db.runner_pool(&s).await;
    let r = sandbox_runner(pool, s, Mode::Daemon).await;
    // Idle: the first pass (start-up) has run and found nothing.
    let mut passes = r.passes();
    passes.wait_for(|n| *n >= 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..jobs {
        tick.tick().await;
        db.insert(1).await;
    }
    let mut finished = r.finished();
    tokio::time::timeout(
        Duration::from_secs(60),
        finished.wait_for(|n| *n >= jobs as u64),
    )
    .await
    .expect("the jobs did not finish within a minute")
    .unwrap();
    r.shutdown().await;
    let rows: Vec<(f64, f64)> = sqlx::query_as(
        r#"SELECT EXTRACT(EPOCH FROM "startedAt" - "createdAt")::float8 * 1000,
                  EXTRACT(EPOCH FROM "completedAt" - "createdAt")::float8 * 1000
           FROM "OutboundJob" WHERE status = 'done'"#,
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), jobs, "every job done");
    db.drop().await;
    let mut claim: Vec<f64> = rows.iter().map(|r| r.0).collect();
    let mut done: Vec<f64> = rows.iter().map(|r| r.1).collect();
    claim.sort_by(|a, b| a.total_cmp(b));
    done.sort_by(|a, b| a.total_cmp(b));
    (
        PS.map(|p| percentile(&claim, p)),
        PS.map(|p| percentile(&done, p)),
    )
}

pub async fn run(a: &Args) -> Vec<Row> {
    let workers = a.workers[0];
    let n = a.wakeup_jobs;
    let mut claim = Vec::new();
    let mut done = Vec::new();
    for round in 1..=a.runs {
        let (c, d) = once(n, workers).await;
        progress!(
            "round {round}/{}: wake-up, insert → claim p50 {:.2} ms, p99 {:.2} ms",
            a.runs,
            c[0],
            c[2]
        );
        claim.push(c);
        done.push(d);
    }
    let fmt = |v: &Vec<[f64; 3]>| {
        let m = |i: usize| median(&v.iter().map(|x| x[i]).collect::<Vec<_>>());
        format!("p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms", m(0), m(1), m(2))
    };
    let setup = format!("{n} jobs 20 ms apart, {workers} workers, idle runner");
    vec![
        Row {
            section: "wake-up",
            measure: "insert → claim (handler start)".into(),
            setup: setup.clone(),
            result: fmt(&claim),
            ratio: String::new(),
            detail: "database clock: \"startedAt\" − \"createdAt\"".into(),
        },
        Row {
            section: "wake-up",
            measure: "insert → done (completion committed)".into(),
            setup,
            result: fmt(&done),
            ratio: String::new(),
            detail: "database clock: \"completedAt\" − \"createdAt\"".into(),
        },
    ]
}
