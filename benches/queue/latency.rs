//! Wake-up latency: an idle runner, jobs inserted one at a time 20 ms apart; insert → claim
//! ("startedAt" - "createdAt") and insert → done ("completedAt" - "createdAt"), both on the
//! database's clock; and commit → claim: from the moment the app's insert returned (its commit
//! acknowledged) to "startedAt", the part of the wake-up that is the runner's (the same host's
//! clock on both sides; negative when the claim began before the acknowledgement arrived); and
//! insert → acknowledged ("createdAt" to the moment the app's insert returned): the app's own
//! insert and commit, which starts the clock of every wake-up and which no runner can shorten
//! (PostgreSQL tells listeners of a row only after its commit is flushed).

use std::time::Duration;

use outbound_runner::runner::Mode;

use crate::common::{Args, Db, Row, median, percentile, sandbox_runner, settings};
use crate::progress;

const PS: [f64; 3] = [0.5, 0.95, 0.99];

/// Percentiles ([`PS`]) of insert → claim, insert → done, commit → claim and insert →
/// acknowledged, in ms.
type Run = [[f64; 3]; 4];

async fn once(jobs: usize, workers: u32) -> Run {
    let db = Db::new().await;
    let s = settings(workers);
    let pool = db.runner_pool(&s).await;
    let r = sandbox_runner(pool, s, Mode::Daemon).await;
    // Idle: the first pass (start-up) has run and found nothing.
    let mut passes = r.passes();
    passes.wait_for(|n| *n >= 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    // Each job's id and when its insert returned (seconds since the epoch, this host's clock).
    let mut acked: Vec<(String, f64)> = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        tick.tick().await;
        let id: String = sqlx::query_scalar(
            r#"INSERT INTO "OutboundJob" (payload)
               VALUES (jsonb_build_object('to', '15550000001',
                       'message', '{"type":"text","text":{"body":"hello"}}'::jsonb))
               RETURNING id::text"#,
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        acked.push((id, at));
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
    let (ids, at): (Vec<String>, Vec<f64>) = acked.into_iter().unzip();
    let rows: Vec<(f64, f64, f64, f64)> = sqlx::query_as(
        r#"SELECT EXTRACT(EPOCH FROM j."startedAt" - j."createdAt")::float8 * 1000,
                  EXTRACT(EPOCH FROM j."completedAt" - j."createdAt")::float8 * 1000,
                  (EXTRACT(EPOCH FROM j."startedAt")::float8 - a.at) * 1000,
                  (a.at - EXTRACT(EPOCH FROM j."createdAt")::float8) * 1000
           FROM "OutboundJob" j JOIN unnest($1::text[], $2::float8[]) a(id, at) ON j.id::text = a.id
           WHERE j.status = 'done'"#,
    )
    .bind(&ids)
    .bind(&at)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), jobs, "every job done");
    db.drop().await;
    let sorted = |f: fn(&(f64, f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        PS.map(|p| percentile(&v, p))
    };
    [
        sorted(|r| r.0),
        sorted(|r| r.1),
        sorted(|r| r.2),
        sorted(|r| r.3),
    ]
}

pub async fn run(a: &Args) -> Vec<Row> {
    let workers = a.workers[0];
    let n = a.wakeup_jobs;
    let mut claim = Vec::new();
    let mut done = Vec::new();
    let mut commit = Vec::new();
    let mut app = Vec::new();
    for round in 1..=a.runs {
        let [c, d, k, i] = once(n, workers).await;
        progress!(
            "round {round}/{}: wake-up, insert → claim p50 {:.2} ms, p99 {:.2} ms; commit → claim p50 {:.2} ms, p99 {:.2} ms; the app's insert → acknowledged p50 {:.2} ms, p99 {:.2} ms",
            a.runs,
            c[0],
            c[2],
            k[0],
            k[2],
            i[0],
            i[2]
        );
        claim.push(c);
        done.push(d);
        commit.push(k);
        app.push(i);
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
            measure: "commit → claim (the runner's part)".into(),
            setup: setup.clone(),
            result: fmt(&commit),
            ratio: String::new(),
            detail: "\"startedAt\" − when the app's insert returned (this host's clock)".into(),
        },
        Row {
            section: "wake-up",
            measure: "insert → acknowledged (the app's own insert and commit)".into(),
            setup: setup.clone(),
            result: fmt(&app),
            ratio: String::new(),
            detail: "when the app's insert returned − \"createdAt\": in every wake-up, before \
                     any runner can see the row"
                .into(),
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
