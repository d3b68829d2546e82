//! The web console's cost for the shared database (docs/console.md, docs/benchmarks.md):
//!
//! - PostgreSQL CPU (every backend of the bench's database) per second with 0 and with 10 open
//!   tabs (Server-Sent Events streams), idle and while 1,000 jobs/s flow through a sandbox
//!   runner; the aggregate statements the tabs caused per refresh period;
//! - each page's p95 on `--large-rows` rows (1,000,000 by default: 7 days of finished jobs, 2 %
//!   failed, a message for each of the newest 100,000), and the sequential scans of
//!   "OutboundJob" the pages caused (from `pg_stat_user_tables`), beside the overview
//!   statement's plan.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outbound_runner::http::{self, HttpState, Listeners};
use outbound_runner::runner::Mode;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::common::{Args, Db, Row, ServerCpu, percentile, sandbox_runner_with, settings};
use crate::progress;

const ADMIN: &str = "bench-admin-token";
const TABS: usize = 10;

async fn fill(db: &Db, rows: usize) {
    sqlx::query(
        r#"INSERT INTO "OutboundJob" (payload, status, attempts, "requestId", "lastErrorCode",
                                      "lastError", "startedAt", "completedAt", "createdAt",
                                      "updatedAt", "runAt")
           SELECT jsonb_build_object('to', '1555' || lpad((g % 100000)::text, 7, '0'),
                  'message', '{"type":"text","text":{"body":"hello"}}'::jsonb),
                  CASE WHEN g % 50 = 0 THEN 'failed' WHEN g % 200 = 1 THEN 'cancelled' ELSE 'done' END,
                  1, 'req-' || g,
                  CASE WHEN g % 50 = 0 THEN '131026' END,
                  CASE WHEN g % 50 = 0 THEN 'Message undeliverable' END,
                  t, t, t, t, t
           FROM generate_series(1, $1) g,
                LATERAL (SELECT now() - (($1 - g) * interval '604 milliseconds') AS t) x"#,
    )
    .bind(rows as i32)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        r#"INSERT INTO "OutboundMessage" ("jobId", seq, status, "to", body, wamid, "sentAt",
                                          "deliveredAt", "readAt", "lastErrorCode")
           SELECT id, 0, CASE WHEN status = 'failed' THEN 'failed'
                              WHEN id % 3 = 0 THEN 'read' ELSE 'delivered' END,
                  payload->>'to', '{"type":"text"}', 'wamid.' || id, "completedAt",
                  "completedAt" + interval '1 second',
                  CASE WHEN id % 3 = 0 THEN "completedAt" + interval '5 seconds' END,
                  CASE WHEN status = 'failed' THEN '131026' END
           FROM "OutboundJob" ORDER BY id DESC LIMIT 100000"#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(r#"VACUUM ANALYZE "OutboundJob""#)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(r#"VACUUM ANALYZE "OutboundMessage""#)
        .execute(&db.pool)
        .await
        .unwrap();
}

/// Sequential scans of "OutboundJob" so far (after the other backends' stats are flushed).
async fn seq_scans(db: &Db) -> i64 {
    // Backends flush their counters at most once a second when idle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query_scalar(
        r#"SELECT coalesce(seq_scan, 0) FROM pg_stat_user_tables WHERE relname = 'OutboundJob'"#,
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap()
}

/// Opens `n` event streams; each is read (and dropped) on a task of its own. Returns the
/// tasks and the latest `statements` figure any of them saw.
fn open_tabs(
    base: &str,
    cookie: &str,
    n: usize,
    stop: &CancellationToken,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<AtomicU64>) {
    let latest = Arc::new(AtomicU64::new(0));
    let tasks = (0..n)
        .map(|_| {
            let url = format!("{base}/console/api/events");
            let cookie = cookie.to_string();
            let latest = latest.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut r = reqwest::Client::new()
                    .get(url)
                    .header("cookie", cookie)
                    .send()
                    .await
                    .unwrap();
                let mut buf = String::new();
                loop {
                    let chunk = tokio::select! {
                        _ = stop.cancelled() => return,
                        c = r.chunk() => c,
                    };
                    let Ok(Some(chunk)) = chunk else { return };
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buf.find("\n\n") {
                        let event: String = buf.drain(..end + 2).collect();
                        if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:"))
                            && let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim())
                            && let Some(s) = v["statements"].as_u64()
                        {
                            latest.fetch_max(s, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    (tasks, latest)
}

/// Inserts `rate` jobs/s in 20 batches a second until `stop`.
fn flow(db: &Db, rate: usize, stop: CancellationToken) -> tokio::task::JoinHandle<u64> {
    let pool = db.pool.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut inserted = 0u64;
        let batch = (rate / 20).max(1) as i32;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return inserted,
                _ = tick.tick() => {}
            }
            sqlx::query(
                r#"INSERT INTO "OutboundJob" (payload)
                   SELECT jsonb_build_object('to', '1666' || lpad(g::text, 7, '0'),
                          'message', '{"type":"text","text":{"body":"hello"}}'::jsonb)
                   FROM generate_series(1, $1) g"#,
            )
            .bind(batch)
            .execute(&pool)
            .await
            .unwrap();
            inserted += batch as u64;
        }
    })
}

/// PostgreSQL CPU (ms per second) over `window`, and the aggregate statements run meanwhile.
/// [`window`] with [`TABS`] tabs open (given 3 s to settle first), counting the statements of
/// their refreshes; the tabs are closed after.
async fn with_tabs(db: &Db, base: &str, cookie: &str, w: Duration, label: &str) -> (f64, u64) {
    let stop_tabs = CancellationToken::new();
    let (tabs, latest) = open_tabs(base, cookie, TABS, &stop_tabs);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = move || latest.load(Ordering::SeqCst);
    progress!("{label}, {TABS} tabs ({w:?})…");
    let measured = window(db, w, &seen).await;
    stop_tabs.cancel();
    for t in tabs {
        let _ = t.await;
    }
    measured
}

async fn window(db: &Db, window: Duration, statements: &(dyn Fn() -> u64 + Sync)) -> (f64, u64) {
    let before = statements();
    let cpu = ServerCpu::backends(&db.name);
    tokio::time::sleep(window).await;
    let (server, _) = cpu.stop();
    (
        server * 1000.0 / window.as_secs_f64(),
        statements() - before,
    )
}

/// p95 in ms of `n` sequential GETs of `path` (each must answer 200).
async fn page_p95(c: &reqwest::Client, base: &str, cookie: &str, path: &str, n: usize) -> f64 {
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let r = c
            .get(format!("{base}{path}"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.bytes().await.unwrap();
        t.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    t.sort_by(f64::total_cmp);
    percentile(&t, 0.95)
}

pub async fn run(a: &Args) -> Vec<Row> {
    let rows = a.large_rows;
    let db = Db::new().await;
    progress!("filling {rows} rows…");
    fill(&db, rows).await;

    let mut s = settings(8);
    s.http.admin_token = Some(SecretString::from(ADMIN));
    s.whatsapp.phone_number_id = "106540352242922".into();
    let pool = db.runner_pool(&s).await;
    let runner = sandbox_runner_with(pool, Some(db.opts.clone()), s, Mode::Daemon).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = HttpState::with_metrics_on_api(runner.clone(), true);
    let server = http::spawn(
        Listeners {
            api: Some(listener),
            metrics: None,
        },
        state,
        CancellationToken::new(),
    );
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{base}/console/api/signin"))
        .header("origin", &base)
        .json(&serde_json::json!({ "token": ADMIN }))
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();

    let w = Duration::from_secs(a.idle_seconds.clamp(5, 30));
    let period = outbound_runner::http::console::live::PERIOD.as_secs_f64();
    let mut out = Vec::new();

    // Idle and flowing, 0 tabs then 10.
    let none = || 0u64;
    progress!("idle, 0 tabs ({w:?})…");
    let (idle0, _) = window(&db, w, &none).await;
    let (idle10, idle_statements) = with_tabs(&db, &base, &cookie, w, "idle").await;

    progress!("1,000 jobs/s, 0 tabs ({w:?})…");
    let stop_flow = CancellationToken::new();
    let f = flow(&db, 1000, stop_flow.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (flow0, _) = window(&db, w, &none).await;
    let (flow10, flow_statements) = with_tabs(&db, &base, &cookie, w, "1,000 jobs/s").await;
    stop_flow.cancel();
    let inserted = f.await.unwrap();
    let done = db.count("done").await;

    let periods = w.as_secs_f64() / period;
    out.push(Row {
        section: "console",
        measure: "PostgreSQL CPU, idle".into(),
        setup: format!("{rows} rows; 0 vs {TABS} open tabs, {} s each", w.as_secs()),
        result: format!("{idle0:.1} vs {idle10:.1} ms/s"),
        ratio: format!("+{:.1} ms/s", idle10 - idle0),
        detail: format!(
            "{idle_statements} aggregate statements in {:.0} refresh periods with {TABS} tabs",
            periods
        ),
    });
    out.push(Row {
        section: "console",
        measure: "PostgreSQL CPU, 1,000 jobs/s flowing".into(),
        setup: format!(
            "{rows} rows + sandbox runner; 0 vs {TABS} tabs, {} s each",
            w.as_secs()
        ),
        result: format!("{flow0:.1} vs {flow10:.1} ms/s"),
        ratio: format!("+{:.1} ms/s", flow10 - flow0),
        detail: format!(
            "{flow_statements} aggregate statements in {periods:.0} refresh periods with {TABS} \
             tabs; {inserted} jobs inserted, {done} done in all"
        ),
    });

    // The pages, one at a time, on the large table.
    progress!("pages on {rows} rows…");
    let failed_id: i64 =
        sqlx::query_scalar(r#"SELECT max(id) FROM "OutboundJob" WHERE status = 'failed'"#)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    // A list cursor (`<createdAt in µs>.<id>`, as the console hands them out) half way down.
    let mid: String = sqlx::query_scalar(
        r#"SELECT (date_part('epoch', "createdAt") * 1000000)::bigint::text || '.' || id
           FROM "OutboundJob" WHERE id = (SELECT max(id) / 2 FROM "OutboundJob")"#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let pages = [
        (
            "jobs, first page".to_string(),
            "/console/api/jobs".to_string(),
        ),
        (
            "jobs, status=failed".into(),
            "/console/api/jobs?status=failed".into(),
        ),
        (
            "jobs, status=failed, half way down".into(),
            format!("/console/api/jobs?status=failed&cursor={mid}"),
        ),
        (
            "jobs, code=131026".into(),
            "/console/api/jobs?code=131026".into(),
        ),
        ("jobs, since=1h".into(), "/console/api/jobs?since=1h".into()),
        (
            "jobs, requestId (newest day)".into(),
            format!("/console/api/jobs?requestId=req-{}", rows - 1000),
        ),
        (
            "jobs, to (a recipient)".into(),
            "/console/api/jobs?to=15550012345".into(),
        ),
        (
            "job detail".into(),
            format!("/console/api/jobs/{failed_id}"),
        ),
        ("numbers".into(), "/console/api/numbers".into()),
    ];
    let scans_before = seq_scans(&db).await;
    let mut p95s = Vec::new();
    for (name, path) in &pages {
        let p = page_p95(&c, &base, &cookie, path, 40).await;
        progress!("{name}: p95 {p:.1} ms");
        p95s.push(format!("{name} {p:.0}"));
    }
    // The overview's statement itself (the page serves the shared snapshot): a refresh (the
    // minutes since the last one) and the hourly full read of the day.
    let mut p = Vec::new();
    for from in [
        Some(chrono::Utc::now() - chrono::Duration::minutes(1)),
        None,
    ] {
        let mut t = Vec::new();
        for _ in 0..20 {
            let started = Instant::now();
            let _: serde_json::Value =
                sqlx::query_scalar(outbound_runner::queue::admin::OVERVIEW_SQL)
                    .bind(from)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            t.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        t.sort_by(f64::total_cmp);
        p.push(percentile(&t, 0.95));
    }
    let (overview_p95, overview_full_p95) = (p[0], p[1]);
    let scans = seq_scans(&db).await - scans_before;
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN {}",
        outbound_runner::queue::admin::OVERVIEW_SQL.replace("$1", "NULL::timestamptz")
    ))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let seq_in_plan = plan
        .iter()
        .any(|l| l.contains(r#"Seq Scan on "OutboundJob""#));
    out.push(Row {
        section: "console",
        measure: "page p95 (ms)".into(),
        setup: format!("{rows} rows, 40 requests each, one at a time"),
        result: p95s.join("; "),
        ratio: format!(
            "overview statement {overview_p95:.0} (a refresh), {overview_full_p95:.0} (the hourly full read)"
        ),
        detail: format!(
            "sequential scans of \"OutboundJob\" meanwhile: {scans}; in the overview's plan: {}",
            if seq_in_plan { "yes" } else { "none" }
        ),
    });

    server.finish(Duration::from_secs(5)).await;
    runner.shutdown().await;
    db.drop().await;
    out
}
