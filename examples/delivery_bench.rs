//! Sends per second of live delivery against the mock Cloud API, on a fresh database, with 8
//! workers: once with the mock answering instantly, once with 50 ms of latency per answer.
//!
//! ```sh
//! cargo run --release --example delivery_bench            # default job counts
//! cargo run --release --example delivery_bench -- 20000 2000
//! ```
//!
//! Needs a PostgreSQL it can create databases on: `TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), like the tests. Pacing is set out of the way
//! (`rate_per_second` very high, no pair interval, one recipient per job): this measures the
//! pipeline (claim, ledger writes, HTTP, completion), not Meta's limits.

#[path = "../tests/integration/support/mock_meta.rs"]
mod mock_meta;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use outbound_runner::config::{self, DeliveryMode, LoadOptions};
use outbound_runner::delivery::live::LiveHandler;
use outbound_runner::health::Health;
use outbound_runner::metrics::Metrics;
use outbound_runner::runner::Runner;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Executor};

use mock_meta::{Limits, MockMeta};

const WORKERS: u32 = 8;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("job counts are numbers"))
        .collect::<anyhow::Result<_>>()?;
    let instant_jobs = args.first().copied().unwrap_or(20_000);
    let latency_jobs = args.get(1).copied().unwrap_or(2_000);
    let admin_url = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());

    println!(
        "live delivery against the mock Cloud API, {WORKERS} workers, fresh database each run"
    );
    for (label, latency, jobs) in [
        ("mock answers instantly", Duration::ZERO, instant_jobs),
        (
            "mock answers after 50 ms",
            Duration::from_millis(50),
            latency_jobs,
        ),
    ] {
        let (elapsed, sent) = run(&admin_url, latency, jobs).await?;
        println!(
            "{label:>26}: {sent} messages in {:.2} s = {:.0} sends/s",
            elapsed.as_secs_f64(),
            sent as f64 / elapsed.as_secs_f64()
        );
    }
    Ok(())
}

async fn run(admin_url: &str, latency: Duration, jobs: usize) -> anyhow::Result<(Duration, usize)> {
    let admin: PgConnectOptions = admin_url.parse().context("TEST_DATABASE_URL")?;
    let name = format!("or_bench_{:016x}", rand::random::<u64>());
    let mut conn = admin.connect().await.context("connecting to PostgreSQL")?;
    conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
        .await?;
    let result = measure(admin.clone().database(&name), latency, jobs).await;
    conn.execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
        .await?;
    result
}

async fn measure(
    db: PgConnectOptions,
    latency: Duration,
    jobs: usize,
) -> anyhow::Result<(Duration, usize)> {
    let meta = MockMeta::start_with(Limits::default(), latency).await;
    let mut settings = config::load(&LoadOptions {
        config_path: None,
        skip_default_path: true,
        env: HashMap::new(),
    })?;
    settings.delivery.mode = DeliveryMode::Live;
    settings.whatsapp.api_base = meta.api_base();
    settings.whatsapp.phone_number_id = mock_meta::PHONE_NUMBER_ID.into();
    settings.whatsapp.access_token = Some(mock_meta::TOKEN.to_string().into());
    settings.whatsapp.rate_per_second = 1_000_000;
    settings.whatsapp.pair_interval = Duration::ZERO;
    settings.runner.workers = WORKERS;
    settings.http.listen = String::new();

    let pool = PgPoolOptions::new()
        .max_connections(settings.pool_size())
        .connect_with(db)
        .await?;
    outbound_runner::db::migrate(&pool).await?;
    sqlx::query(
        r#"INSERT INTO "OutboundJob" (payload, "requestId")
           SELECT jsonb_build_object('to', '1555' || lpad(g::text, 7, '0'),
                  'message', jsonb_build_object('type', 'text',
                      'text', jsonb_build_object('body', 'bench ' || g))),
                  'bench-' || g
           FROM generate_series(1, $1) g"#,
    )
    .bind(jobs as i32)
    .execute(&pool)
    .await?;
    sqlx::query(r#"VACUUM ANALYZE "OutboundJob""#)
        .execute(&pool)
        .await?;

    let handler = Arc::new(LiveHandler::new(&settings)?);
    let started = Instant::now();
    let runner = Runner::start(
        pool.clone(),
        None,
        Arc::new(settings),
        handler,
        Arc::new(Metrics::new()),
        Arc::new(Health::default()),
    )
    .await;
    let mut finished = runner.finished();
    tokio::time::timeout(
        Duration::from_secs(600),
        finished.wait_for(|n| *n >= jobs as u64),
    )
    .await
    .context("the jobs did not finish within 10 minutes")??;
    let elapsed = started.elapsed();
    runner.shutdown().await;

    let (done, sent): (i64, i64) = sqlx::query_as(
        r#"SELECT (SELECT count(*) FROM "OutboundJob" WHERE status = 'done'),
                  (SELECT count(*) FROM "OutboundMessage" WHERE status = 'sent')"#,
    )
    .fetch_one(&pool)
    .await?;
    anyhow::ensure!(
        done as usize == jobs && sent as usize == jobs && meta.accepted().len() == jobs,
        "expected {jobs} done jobs and sent messages, got {done} done, {sent} sent, {} accepted",
        meta.accepted().len()
    );
    pool.close().await;
    Ok((elapsed, jobs))
}
