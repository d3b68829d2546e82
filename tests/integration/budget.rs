//! In-flight work on a fixed connection budget: the budget holds whatever the concurrency, a
//! wait for a connection costs no attempt, the in-flight limit follows latency and reloads.

use std::sync::Arc;
use std::time::Duration;

use outbound_runner::config::{DeliveryMode, Settings};
use outbound_runner::delivery::JobHandler;
use outbound_runner::delivery::live::LiveHandler;
use outbound_runner::delivery::sandbox::SandboxHandler;
use outbound_runner::runner::{Runner, sizing};
use sqlx::postgres::PgConnectOptions;

use crate::support::mock_meta::{self, Limits, MockMeta};
use crate::support::{TestDb, metrics_of, spawn_passive, started, test_settings};

fn live(s: &mut Settings, meta: &MockMeta) {
    s.delivery.mode = DeliveryMode::Live;
    s.whatsapp.api_base = meta.api_base();
    s.whatsapp.phone_number_id = mock_meta::PHONE_NUMBER_ID.into();
    s.whatsapp.access_token = Some(mock_meta::TOKEN.to_string().into());
    s.whatsapp.timeout = Duration::from_secs(10);
    s.whatsapp.pair_interval = Duration::ZERO;
}

/// A daemon runner as the app builds it (`db::pool`: the budget less LISTEN), its connections
/// tagged `app` in `pg_stat_activity`.
async fn daemon(
    options: PgConnectOptions,
    app: &str,
    settings: Settings,
    handler: Arc<dyn JobHandler>,
) -> Runner {
    let pool = outbound_runner::db::pool(&settings, options.application_name(app), false);
    started(Runner::builder(pool, Arc::new(settings), handler)).await
}

async fn connections(admin: &outbound_runner::db::Pool, app: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(app)
        .fetch_one(admin)
        .await
        .unwrap()
}

/// Waits until every job is `done`, sampling the runner's connections and in-flight jobs
/// meanwhile; returns the most of each seen.
async fn drain_watching(
    db: &TestDb,
    runner: &Runner,
    app: &str,
    jobs: i64,
    within: Duration,
) -> (i64, usize) {
    let mut finished = runner.finished();
    let (mut conns, mut in_flight) = (0, 0);
    let mut sample = tokio::time::interval(Duration::from_millis(25));
    let deadline = tokio::time::Instant::now() + within;
    loop {
        conns = conns.max(connections(&db.pool, app).await);
        in_flight = in_flight.max(runner.in_flight());
        if db.count("done").await >= jobs {
            return (conns, in_flight);
        }
        tokio::select! {
            _ = sample.tick() => {}
            _ = finished.changed() => {}
            _ = tokio::time::sleep_until(deadline) => panic!(
                "{} of {jobs} jobs done within {within:?}", db.count("done").await
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_budget_holds_under_a_burst() {
    let db = TestDb::new().await;
    let meta = MockMeta::start_with(Limits::default(), Duration::from_millis(100)).await;
    let app = format!("budget-{:08x}", rand::random::<u32>());
    let mut s = test_settings();
    live(&mut s, &meta);
    s.runner.workers = 0; // sized by the work
    s.whatsapp.rate_per_second = 1000;
    s.database.max_connections = 0; // the default budget
    let budget = i64::from(s.max_connections());
    assert!(budget <= 10);
    let runner = daemon(
        db.connect_options(),
        &app,
        s,
        Arc::new(LiveHandler::new(&test_settings()).unwrap()),
    )
    .await;
    assert!(runner.in_flight_limit() > budget as u32);

    db.insert_jobs(600).await;
    let (conns, in_flight) = drain_watching(&db, &runner, &app, 600, Duration::from_secs(60)).await;
    assert!(conns <= budget, "{conns} connections held, budget {budget}");
    assert!(
        in_flight > 4 * budget as usize,
        "only {in_flight} jobs were in flight at once"
    );
    let spent: i64 =
        sqlx::query_scalar(r#"SELECT count(*) FROM "OutboundJob" WHERE attempts <> 1"#)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(spent, 0, "every job done on its first attempt");
    assert_eq!(meta.accepted().len(), 600);
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_for_a_connection_keeps_its_attempt() {
    let db = TestDb::new().await;
    // A role the server lets have 3 connections, under a budget of 8: most of the pool's
    // connections are refused ("too many connections for role") whenever it tries to grow.
    let role = format!("or_limited_{:08x}", rand::random::<u32>());
    for sql in [
        format!(r#"CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 3"#),
        format!(r#"GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}""#),
        format!(r#"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}""#),
    ] {
        sqlx::query(&sql).execute(&db.pool).await.unwrap();
    }
    let app = format!("limited-{:08x}", rand::random::<u32>());
    let mut s = test_settings();
    s.runner.workers = 0;
    s.database.max_connections = 8;
    s.database.connect_timeout = Duration::from_secs(1);
    let runner = daemon(
        db.connect_options().username(&role),
        &app,
        s,
        Arc::new(SandboxHandler),
    )
    .await;

    db.insert_jobs(1000).await;
    let (conns, _) = drain_watching(&db, &runner, &app, 1000, Duration::from_secs(60)).await;
    assert!(conns <= 3);
    let spent: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM "OutboundJob" WHERE attempts <> 1 OR status <> 'done'"#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(spent, 0, "no job spent an attempt waiting for a connection");
    let waits = metrics_of(&runner).db_waits.get();
    assert!(waits > 0, "the pool did wait for connections");

    runner.shutdown().await;
    // The role goes once nothing of it is left.
    sqlx::query(&format!(r#"DROP OWNED BY "{role}""#))
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(&format!(r#"DROP ROLE "{role}""#))
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_pool_is_fitted_to_a_role_connection_limit_at_start() {
    let db = TestDb::new().await;
    let role = format!("or_fit_{:08x}", rand::random::<u32>());
    sqlx::query(&format!(r#"CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 3"#))
        .execute(&db.pool)
        .await
        .unwrap();
    let s = test_settings();
    assert_eq!(s.max_connections(), 8);
    let pool = outbound_runner::db::pool(&s, db.connect_options().username(&role), false);
    let fitted = outbound_runner::db::wait::fit_budget(pool, &s).await;
    // 3 in all: the pool's 2 and the LISTEN connection.
    assert_eq!(fitted.pg().options().get_max_connections(), 2);
    fitted.close().await;
    // Room enough: the pool is left as it is.
    let pool = outbound_runner::db::pool(&s, db.connect_options(), false);
    let same = outbound_runner::db::wait::fit_budget(pool, &s).await;
    assert!(same.pg().options().get_max_connections() <= s.pool_size());
    same.close().await;
    sqlx::query(&format!(r#"DROP ROLE "{role}""#))
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_in_flight_limit_follows_latency() {
    let db = TestDb::new().await;
    let meta = MockMeta::start_with(Limits::default(), Duration::from_millis(40)).await;
    let runner = spawn_passive(
        &db,
        Arc::new(LiveHandler::new(&test_settings()).unwrap()),
        |s| {
            live(s, &meta);
            s.runner.workers = 0;
            s.runner.max_in_flight = 10_000;
            s.whatsapp.rate_per_second = 1000;
        },
    )
    .await;
    // Nothing observed yet: the seed latency (1 s, plus the quarter second a claimed job may
    // wait for its mark, at 1,000/s with headroom 1.5).
    let seed = runner.resize_now();
    assert_eq!(seed.latency, sizing::SEED_LATENCY);
    assert_eq!(runner.in_flight_limit(), 1875);

    db.insert_jobs(40).await;
    assert_eq!(runner.run_pass(40).await.unwrap().processed.len(), 40);
    let fast = runner.resize_now();
    assert!(fast.latency >= 0.04, "{fast:?}");
    assert_eq!(runner.in_flight_limit(), fast.limit);
    assert!(fast.limit >= 60, "{fast:?}");

    // Meta slows down tenfold: the limit follows (the p95 of the window is now the slow sends).
    meta.set_latency(Duration::from_millis(400));
    db.insert_jobs(60).await;
    assert_eq!(runner.run_pass(60).await.unwrap().processed.len(), 60);
    let slow = runner.resize_now();
    assert!(slow.latency >= 0.4, "{slow:?}");
    // (Only the order of the two is asserted: a loaded machine adds its own latency to both.)
    assert!(
        slow.latency > fast.latency && slow.limit >= 600 && slow.limit > fast.limit,
        "{slow:?} after {fast:?}"
    );
    assert_eq!(runner.in_flight_limit(), slow.limit);
    let rendered = runner.render_metrics();
    assert!(
        rendered.contains(&format!("outbound_runner_in_flight_limit {}", slow.limit)),
        "{rendered}"
    );
}

#[tokio::test]
async fn reload_changes_the_cap() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let mut s = test_settings();
    live(&mut s, &meta);
    s.runner.workers = 0;
    s.whatsapp.rate_per_second = 1000;
    let runner = spawn_passive(
        &db,
        Arc::new(LiveHandler::new(&test_settings()).unwrap()),
        |t| *t = s.clone(),
    )
    .await;
    assert_eq!(runner.in_flight_limit(), 1000, "the default cap");

    let mut capped = s.clone();
    capped.runner.max_in_flight = 50;
    runner.apply(Arc::new(capped.clone()));
    assert_eq!(runner.in_flight_limit(), 50);
    assert_eq!(metrics_of(&runner).in_flight_limit.get(), 50);

    // A pass runs no more than the cap at once.
    db.insert_jobs(120).await;
    let mut claimed = runner.passes();
    let report = runner.run_pass(120).await.unwrap();
    assert_eq!(report.processed.len(), 120);
    assert!(
        *claimed.borrow_and_update() >= 3,
        "120 jobs in rounds of at most 50"
    );

    let mut pinned = capped;
    pinned.runner.workers = 7;
    runner.apply(Arc::new(pinned));
    assert_eq!(runner.in_flight_limit(), 7);
    // Unpinned again: sized by what the passes observed.
    let observed = sizing::observed_latency(&metrics_of(&runner));
    assert!(observed.is_some());
    runner.apply(Arc::new(s.clone()));
    assert_eq!(runner.in_flight_limit(), sizing::size(&s, observed).limit);
    assert!(runner.in_flight_limit() >= sizing::MIN_IN_FLIGHT);
}
