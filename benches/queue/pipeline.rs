//! The full pipeline: live delivery (claim, ledger writes, HTTP to the mock Cloud API,
//! completion) with Meta's pacing out of the way, against a mock answering instantly and one
//! answering after 50 ms. This is the one place the delivery benchmark lives.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbound_runner::config::{self, DeliveryMode, LoadOptions};
use outbound_runner::delivery::live::LiveHandler;
use outbound_runner::runner::Runner;

use crate::common::{Args, Db, Row, ServerCpu, cpu_of, int, median, rate};
use crate::mock_meta::{self, Limits, MockMeta};
use crate::progress;

const LATENCIES: [Duration; 2] = [Duration::ZERO, Duration::from_millis(50)];

#[derive(Debug, Clone, Copy)]
struct Sent {
    per_s: f64,
    own_cpu: f64,
    server_cpu: f64,
}

/// `jobs` one-message jobs sent live by `workers` workers; the mock answers after `latency`.
async fn measure(jobs: usize, workers: u32, latency: Duration) -> Sent {
    let db = Db::new().await;
    let meta = MockMeta::start_with(Limits::default(), latency).await;
    let mut settings = config::load(&LoadOptions {
        config_path: None,
        skip_default_path: true,
        env: HashMap::new(),
    })
    .unwrap();
    settings.delivery.mode = DeliveryMode::Live;
    settings.whatsapp.api_base = meta.api_base();
    settings.whatsapp.phone_number_id = mock_meta::PHONE_NUMBER_ID.into();
    settings.whatsapp.access_token = Some(mock_meta::TOKEN.to_string().into());
    // Pacing out of the way: this measures the pipeline, not Meta's limits.
    settings.whatsapp.rate_per_second = 1_000_000;
    settings.whatsapp.pair_interval = Duration::ZERO;
    settings.runner.workers = workers;
    settings.http.listen = String::new();

    sqlx::query(
        r#"INSERT INTO "OutboundJob" (payload, "requestId")
           SELECT jsonb_build_object('to', '1555' || lpad(g::text, 7, '0'),
                  'message', jsonb_build_object('type', 'text',
                      'text', jsonb_build_object('body', 'bench ' || g))),
                  'bench-' || g
           FROM generate_series(1, $1) g"#,
    )
    .bind(jobs as i32)
    .execute(&db.pool)
    .await
    .unwrap();
    db.vacuum().await;

    let handler = Arc::new(LiveHandler::new(&settings).unwrap());
    let pool = db.runner_pool(&settings).await;
    let server = ServerCpu::start(&db.name);
    let own0 = cpu_of("self");
    let started = Instant::now();
    let runner = Runner::builder(pool, Arc::new(settings), handler)
        .start()
        .await;
    let mut finished = runner.finished();
    tokio::time::timeout(
        Duration::from_secs(600),
        finished.wait_for(|n| *n >= jobs as u64),
    )
    .await
    .expect("the jobs did not finish within 10 minutes")
    .unwrap();
    let elapsed = started.elapsed();
    let (server_cpu, sampler_cpu) = server.stop();
    let own_cpu = cpu_of("self") - own0 - sampler_cpu;
    runner.shutdown().await;

    let (done, sent): (i64, i64) = sqlx::query_as(
        r#"SELECT (SELECT count(*) FROM "OutboundJob" WHERE status = 'done'),
                  (SELECT count(*) FROM "OutboundMessage" WHERE status = 'sent')"#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let accepted = meta.accepted().len();
    assert!(
        done as usize == jobs && sent as usize == jobs && accepted == jobs,
        "expected {jobs} done jobs and sent messages, got {done} done, {sent} sent, {accepted} accepted"
    );
    db.drop().await;
    Sent {
        per_s: jobs as f64 / elapsed.as_secs_f64(),
        own_cpu,
        server_cpu,
    }
}

pub async fn run(a: &Args) -> Vec<Row> {
    let mut results: BTreeMap<(Duration, u32), (usize, Vec<Sent>)> = BTreeMap::new();
    for round in 1..=a.runs {
        for &w in &a.workers {
            for latency in LATENCIES {
                // With latency, about 40 answers per worker: a couple of seconds.
                let jobs = if latency.is_zero() {
                    a.pipeline_jobs()
                } else {
                    w as usize * if a.quick { 10 } else { 40 }
                };
                let s = measure(jobs, w, latency).await;
                progress!(
                    "round {round}/{}: live delivery, {w} workers, mock latency {latency:?}: {} messages/s",
                    a.runs,
                    int(s.per_s)
                );
                let e = results.entry((latency, w)).or_insert((jobs, Vec::new()));
                e.1.push(s);
            }
        }
    }
    results
        .into_iter()
        .map(|((latency, w), (jobs, ss))| {
            let rates: Vec<f64> = ss.iter().map(|s| s.per_s).collect();
            let n = jobs as f64;
            let own = median(&ss.iter().map(|s| s.own_cpu).collect::<Vec<_>>());
            let server = median(&ss.iter().map(|s| s.server_cpu).collect::<Vec<_>>());
            let ratio = if latency.is_zero() {
                String::new()
            } else {
                // Each worker sends one message at a time: workers / latency is the ceiling.
                let bound = w as f64 / latency.as_secs_f64();
                format!(
                    "{:.0} % of the {} messages/s that {w} workers × {} ms allow",
                    median(&rates) / bound * 100.0,
                    int(bound),
                    latency.as_millis()
                )
            };
            Row {
                section: "pipeline",
                measure: format!(
                    "live delivery to the mock Cloud API, {}",
                    if latency.is_zero() {
                        "instant answers".to_string()
                    } else {
                        format!("{} ms answers", latency.as_millis())
                    }
                ),
                setup: format!("{} jobs, {w} workers", int(n)),
                result: format!("{} messages/s", rate(&rates)),
                ratio,
                detail: format!(
                    "CPU {own:.2} s runner and mock + {server:.2} s PostgreSQL = {:.0} + {:.0} µs/message",
                    own / n * 1e6,
                    server / n * 1e6
                ),
            }
        })
        .collect()
}
