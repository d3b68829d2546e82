//! Through a transaction-mode PgBouncer beside direct (docs/operations.md, "Poolers"): a sandbox
//! drain of pre-inserted jobs, and the wake-up of an idle runner (LISTEN over the direct URL, and
//! the poll that stands in for it without one), with the connections on both sides of the
//! pooler: our pool and PgBouncer's clients on one side, PostgreSQL's backends on the other.
//!
//! The PgBouncer is the tests' own (a stock configuration in `pool_mode = transaction`, its
//! default 20 server connections per database), started for each run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use outbound_runner::runner::Mode;
use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::common::{
    Args, Db, Row, admin_url, cpu_of, int, median, percentile, rate, sandbox_runner_with, settings,
    warm,
};
use crate::pgbouncer::PgBouncer;
use crate::progress;

/// PgBouncer's stock `default_pool_size`.
const SERVER_POOL: u32 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    Pooler,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Pooler => "PgBouncer (transaction mode)",
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Connections {
    /// Our pool's connections (to PostgreSQL, or to PgBouncer).
    ours: u32,
    /// PgBouncer's client connections for the database (`SHOW POOLS` cl_active + cl_waiting +
    /// cl_idle via `SHOW CLIENTS`), 0 direct.
    pooler_clients: u32,
    /// PostgreSQL backends connected to the database (pg_stat_activity).
    server: u32,
}

/// Samples the connection counts every 100 ms until stopped; keeps the maxima.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Connections>,
}

impl Sampler {
    /// Starts before the runner's pool opens: the backends already there (the benchmark's own)
    /// are not counted.
    async fn start(
        database: String,
        pool: outbound_runner::db::Pool,
        admin: Option<String>,
    ) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // On the admin database: its own backend is not one of the counted.
        let one = || {
            PgPoolOptions::new()
                .max_connections(1)
                .test_before_acquire(false)
        };
        let server = one().connect(&admin_url()).await.unwrap();
        let count = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1";
        let baseline: i64 = sqlx::query_scalar(count)
            .bind(&database)
            .fetch_one(&server)
            .await
            .unwrap();
        let console = match admin {
            Some(url) => {
                let opts: PgConnectOptions = url.parse().unwrap();
                Some(
                    one()
                        .connect_with(opts.extra_float_digits(None))
                        .await
                        .unwrap(),
                )
            }
            None => None,
        };
        let task = tokio::spawn(async move {
            let mut max = Connections::default();
            loop {
                let done = flag.load(Ordering::Relaxed);
                let backends: i64 = sqlx::query_scalar(count)
                    .bind(&database)
                    .fetch_one(&server)
                    .await
                    .unwrap_or(0);
                max.server = max.server.max((backends - baseline).max(0) as u32);
                max.ours = max.ours.max(pool.size());
                if let Some(console) = &console {
                    // The admin console speaks the simple protocol only; text values.
                    let rows = sqlx::raw_sql("SHOW CLIENTS")
                        .fetch_all(console)
                        .await
                        .unwrap_or_default();
                    let clients = rows
                        .iter()
                        .filter(|r| {
                            r.try_get_unchecked::<String, _>("database")
                                .is_ok_and(|d| d == database)
                        })
                        .count();
                    max.pooler_clients = max.pooler_clients.max(clients as u32);
                }
                if done {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            max
        });
        Sampler { stop, task }
    }

    async fn stop(self) -> Connections {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// The runner's pool and LISTEN options, direct or through `pgb` with `?pgbouncer=true` (plus
/// the direct URL for LISTEN when `direct_listen`), as the daemon builds them.
fn pool_for(
    db: &Db,
    pgb: Option<&PgBouncer>,
    s: &outbound_runner::config::Settings,
    direct_listen: bool,
) -> (outbound_runner::db::Pool, Option<PgConnectOptions>) {
    match pgb {
        None => (outbound_runner::db::pool(s, db.opts.clone(), false), None),
        Some(pgb) => {
            let pool = outbound_runner::db::open(s, &pgb.url(&db.name, "pgbouncer=true")).unwrap();
            assert!(pool.pooled());
            let listen = direct_listen.then(|| db.opts.clone());
            (pool, listen)
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Drain {
    jobs_per_s: f64,
    runner_cpu: f64,
    conns: Connections,
}

async fn drain(via: Via, jobs: usize, workers: u32, cap: Duration) -> Drain {
    let db = Db::new().await;
    db.insert(jobs).await;
    db.vacuum().await;
    let pgb = (via == Via::Pooler).then(|| PgBouncer::start(&admin_url(), SERVER_POOL));
    let s = settings(workers);
    let (pool, listen) = pool_for(&db, pgb.as_ref(), &s, true);
    let sampler = Sampler::start(
        db.name.clone(),
        pool.clone(),
        pgb.as_ref().map(|p| p.admin_url()),
    )
    .await;
    warm(&pool, &s).await;
    let own0 = cpu_of("self");
    let start = Instant::now();
    let r = sandbox_runner_with(pool, listen, s, Mode::Daemon).await;
    let mut finished = r.finished();
    tokio::time::timeout(cap, finished.wait_for(|n| *n >= jobs as u64))
        .await
        .unwrap_or_else(|_| panic!("{}: {jobs} jobs not drained within {cap:?}", via.name()))
        .unwrap();
    let elapsed = start.elapsed();
    let runner_cpu = cpu_of("self") - own0;
    let conns = sampler.stop().await;
    r.shutdown().await;
    let (done, once): (i64, i64) = sqlx::query_as(
        r#"SELECT count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE attempts = 1)
           FROM "OutboundJob""#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (done, once),
        (jobs as i64, jobs as i64),
        "every job done, in one attempt"
    );
    assert!(!outbound_runner::db::pooler::prepared_statement_errors_seen());
    drop(pgb);
    db.drop().await;
    Drain {
        jobs_per_s: jobs as f64 / elapsed.as_secs_f64(),
        runner_cpu,
        conns,
    }
}

/// Insert → done (database clock) of `jobs` jobs inserted one at a time 20 ms apart into an idle
/// runner's queue: p50, p99 in ms.
async fn wakeup(via: Via, direct_listen: bool, jobs: usize) -> [f64; 2] {
    let db = Db::new().await;
    let pgb = (via == Via::Pooler).then(|| PgBouncer::start(&admin_url(), SERVER_POOL));
    let s = settings(8);
    let (pool, listen) = pool_for(&db, pgb.as_ref(), &s, direct_listen);
    warm(&pool, &s).await;
    let r = sandbox_runner_with(pool, listen, s, Mode::Daemon).await;
    r.passes().wait_for(|n| *n >= 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The app's own inserts: a connection of their own, direct.
    let app = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(db.opts.clone())
        .await
        .unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..jobs {
        tick.tick().await;
        sqlx::query(
            r#"INSERT INTO "OutboundJob" (payload) VALUES
               ('{"to":"15550000001","message":{"type":"text","text":{"body":"hi"}}}')"#,
        )
        .execute(&app)
        .await
        .unwrap();
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
    app.close().await;
    let mut ms: Vec<f64> = sqlx::query_scalar(
        r#"SELECT EXTRACT(EPOCH FROM "completedAt" - "createdAt")::float8 * 1000
           FROM "OutboundJob" WHERE status = 'done'"#,
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(ms.len(), jobs, "every job done");
    drop(pgb);
    db.drop().await;
    ms.sort_by(|a, b| a.total_cmp(b));
    [percentile(&ms, 0.5), percentile(&ms, 0.99)]
}

pub async fn run(a: &Args) -> Vec<Row> {
    let jobs = a.sizes[0];
    let workers = a.workers[0];
    let wake_jobs = a.wakeup_jobs.min(100);
    let mut drains: Vec<(Via, Vec<Drain>)> = vec![(Via::Direct, vec![]), (Via::Pooler, vec![])];
    let mut ratios = Vec::new();
    let mut wakes: Vec<(&str, Via, bool, Vec<[f64; 2]>)> = vec![
        ("direct, LISTEN", Via::Direct, true, vec![]),
        ("PgBouncer + direct_url (LISTEN)", Via::Pooler, true, vec![]),
        (
            "PgBouncer, no direct_url (1 s poll)",
            Via::Pooler,
            false,
            vec![],
        ),
    ];
    for round in 1..=a.runs {
        let mut rates = [0.0; 2];
        for (i, (via, runs)) in drains.iter_mut().enumerate() {
            let d = drain(*via, jobs, workers, a.drain_cap).await;
            progress!(
                "round {round}/{}: {}: {jobs} jobs, {workers} workers: {} jobs/s; connections: ours {}, PgBouncer clients {}, server {}",
                a.runs,
                via.name(),
                int(d.jobs_per_s),
                d.conns.ours,
                d.conns.pooler_clients,
                d.conns.server
            );
            rates[i] = d.jobs_per_s;
            runs.push(d);
        }
        ratios.push(rates[1] / rates[0]);
        for (name, via, listen, runs) in wakes.iter_mut() {
            let w = wakeup(*via, *listen, wake_jobs).await;
            progress!(
                "round {round}/{}: wake-up {name}: p50 {:.1} ms, p99 {:.1} ms",
                a.runs,
                w[0],
                w[1]
            );
            runs.push(w);
        }
    }
    let mut rows = Vec::new();
    for (via, runs) in &drains {
        let rates: Vec<f64> = runs.iter().map(|d| d.jobs_per_s).collect();
        let cpu = median(&runs.iter().map(|d| d.runner_cpu).collect::<Vec<_>>());
        let max = |f: fn(&Connections) -> u32| runs.iter().map(|d| f(&d.conns)).max().unwrap_or(0);
        let conns = match via {
            Via::Direct => format!(
                "connections: our pool {}, PostgreSQL backends {} (LISTEN's included)",
                max(|c| c.ours),
                max(|c| c.server)
            ),
            Via::Pooler => format!(
                "connections: our pool {} = PgBouncer clients {}; PostgreSQL backends {} (LISTEN's direct one included; PgBouncer's pool {SERVER_POOL})",
                max(|c| c.ours),
                max(|c| c.pooler_clients),
                max(|c| c.server)
            ),
        };
        rows.push(Row {
            section: "pooler",
            measure: format!("sandbox drain, {}", via.name()),
            setup: format!("{} jobs, {workers} workers", int(jobs as f64)),
            result: format!("{} jobs/s", rate(&rates)),
            ratio: match via {
                Via::Direct => "1.00".into(),
                Via::Pooler => format!("{:.2} of direct", median(&ratios)),
            },
            detail: format!(
                "every job done in 1 attempt; runner CPU {:.1} s ({:.0} µs/job); {conns}",
                cpu,
                cpu / jobs as f64 * 1e6
            ),
        });
    }
    for (name, _, _, runs) in &wakes {
        let m = |i: usize| median(&runs.iter().map(|w| w[i]).collect::<Vec<_>>());
        rows.push(Row {
            section: "pooler",
            measure: format!("wake-up, {name}"),
            setup: format!("{wake_jobs} jobs 20 ms apart, 8 workers, idle runner"),
            result: format!("insert → done p50 {:.1} ms, p99 {:.1} ms", m(0), m(1)),
            ratio: String::new(),
            detail: "database clock (\"completedAt\" - \"createdAt\")".into(),
        });
    }
    rows
}
