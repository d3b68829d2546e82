//! Queue benchmarks: a program that prints figures (never a timed test).
//!
//!     cargo bench --bench queue -- [--jobs 10000] [--workers 8] [--runs 3] [--only throughput|latency]
//!
//! Against a fresh database on `TEST_DATABASE_URL` (default postgres@127.0.0.1:5432):
//! - throughput: N pre-inserted sandbox jobs drained by an in-process runner with W workers;
//!   jobs/s, and CPU seconds of this process and of all PostgreSQL processes (from /proc);
//! - wake-up latency: an idle runner, 500 jobs inserted one at a time 20 ms apart;
//!   insert → claim ("startedAt" - "createdAt") and insert → done ("completedAt" - "createdAt"),
//!   both on the database's clock.
//!
//! Each figure is the median of `--runs` runs (a shared 2-core machine is noisy).

use std::sync::Arc;
use std::time::{Duration, Instant};

use outbound_runner::config::{LoadOptions, Settings};
use outbound_runner::delivery::sandbox::SandboxHandler;
use outbound_runner::health::Health;
use outbound_runner::metrics::Metrics;
use outbound_runner::runner::Runner;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Executor};

struct Args {
    jobs: usize,
    workers: u32,
    runs: usize,
    only: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        jobs: 10_000,
        workers: 8,
        runs: 3,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--jobs" => a.jobs = it.next().unwrap().parse().unwrap(),
            "--workers" => a.workers = it.next().unwrap().parse().unwrap(),
            "--runs" => a.runs = it.next().unwrap().parse().unwrap(),
            "--only" => a.only = it.next(),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database for one run, dropped afterwards.
struct Db {
    pool: PgPool,
    name: String,
    opts: PgConnectOptions,
}

impl Db {
    async fn new() -> Db {
        let admin: PgConnectOptions = admin_url().parse().unwrap();
        let name = format!("or_bench_{:08x}", rand::random::<u32>());
        let mut conn = admin.connect().await.unwrap();
        conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .unwrap();
        let opts = admin.database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(opts.clone())
            .await
            .unwrap();
        outbound_runner::db::migrate(&pool).await.unwrap();
        Db { pool, name, opts }
    }

    async fn drop(self) {
        self.pool.close().await;
        let admin: PgConnectOptions = admin_url().parse().unwrap();
        let mut conn = admin.connect().await.unwrap();
        conn.execute(format!(r#"DROP DATABASE "{}" WITH (FORCE)"#, self.name).as_str())
            .await
            .unwrap();
    }

    async fn insert(&self, n: usize) {
        sqlx::query(
            r#"INSERT INTO "OutboundJob" (payload)
               SELECT jsonb_build_object('to', '1555' || lpad(g::text, 7, '0'),
                      'message', '{"type":"text","text":{"body":"hello"}}'::jsonb)
               FROM generate_series(1, $1) g"#,
        )
        .bind(n as i32)
        .execute(&self.pool)
        .await
        .unwrap();
    }
}

fn settings(workers: u32) -> Settings {
    let mut s = outbound_runner::config::load(&LoadOptions {
        config_path: None,
        skip_default_path: true,
        env: Default::default(),
    })
    .unwrap();
    s.runner.workers = workers;
    s
}

async fn runner(db: &Db, workers: u32) -> Runner {
    let s = settings(workers);
    let pool = PgPoolOptions::new()
        .max_connections(s.pool_size())
        .connect_with(db.opts.clone())
        .await
        .unwrap();
    Runner::start(
        pool,
        None,
        Arc::new(s),
        Arc::new(SandboxHandler),
        Arc::new(Metrics::new()),
        Arc::new(Health::default()),
    )
    .await
}

/// CPU seconds (user + system) of a process, from /proc/<pid>/stat.
fn cpu_of(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
    ticks / 100.0
}

/// CPU seconds of every PostgreSQL process on the machine (the server side of the work).
fn postgres_cpu() -> f64 {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().into_string().ok()?;
            pid.parse::<u32>().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            comm.starts_with("postgres").then(|| cpu_of(&pid))
        })
        .sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn throughput(a: &Args) {
    let mut rates = Vec::new();
    let mut own = Vec::new();
    let mut server = Vec::new();
    let mut claim_stats = Vec::new();
    for _ in 0..a.runs {
        let db = Db::new().await;
        db.insert(a.jobs).await;
        let cpu0 = (cpu_of("self"), postgres_cpu());
        let start = Instant::now();
        let r = runner(&db, a.workers).await;
        let mut finished = r.finished();
        finished.wait_for(|n| *n >= a.jobs as u64).await.unwrap();
        let elapsed = start.elapsed();
        let cpu1 = (cpu_of("self"), postgres_cpu());
        let m = &r.shared().metrics;
        let claims = m.claim_duration.get_sample_count() as f64;
        claim_stats.push((
            m.jobs_claimed.get() as f64 / claims,
            m.claim_duration.get_sample_sum() / claims * 1000.0,
        ));
        r.shutdown().await;
        let done: i64 =
            sqlx::query_scalar(r#"SELECT count(*) FROM "OutboundJob" WHERE status = 'done'"#)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(done, a.jobs as i64, "every job done");
        rates.push(a.jobs as f64 / elapsed.as_secs_f64());
        own.push(cpu1.0 - cpu0.0);
        server.push(cpu1.1 - cpu0.1);
        db.drop().await;
    }
    println!(
        "| throughput, sandbox | {} jobs, {} workers | {:.0} jobs/s | runner CPU {:.2} s, PostgreSQL CPU {:.2} s | median of {} |",
        a.jobs,
        a.workers,
        median(rates),
        median(own),
        median(server),
        a.runs
    );
    println!(
        "| claims during the drain | {} jobs, {} workers | {:.1} jobs per claim statement, {:.2} ms per statement | | median of {} |",
        a.jobs,
        a.workers,
        median(claim_stats.iter().map(|c| c.0).collect()),
        median(claim_stats.iter().map(|c| c.1).collect()),
        a.runs
    );
}

async fn latency(a: &Args) {
    const N: usize = 500;
    let mut claim_p = Vec::new();
    let mut done_p = Vec::new();
    for _ in 0..a.runs {
        let db = Db::new().await;
        let r = runner(&db, a.workers).await;
        let mut passes = r.passes();
        passes.wait_for(|n| *n >= 1).await.unwrap();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..N {
            tick.tick().await;
            db.insert(1).await;
        }
        let mut finished = r.finished();
        finished.wait_for(|n| *n >= N as u64).await.unwrap();
        r.shutdown().await;
        let rows: Vec<(f64, f64)> = sqlx::query_as(
            r#"SELECT EXTRACT(EPOCH FROM "startedAt" - "createdAt")::float8 * 1000,
                      EXTRACT(EPOCH FROM "completedAt" - "createdAt")::float8 * 1000
               FROM "OutboundJob" WHERE status = 'done'"#,
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let mut claim: Vec<f64> = rows.iter().map(|r| r.0).collect();
        let mut done: Vec<f64> = rows.iter().map(|r| r.1).collect();
        claim.sort_by(|a, b| a.partial_cmp(b).unwrap());
        done.sort_by(|a, b| a.partial_cmp(b).unwrap());
        claim_p.push([0.5, 0.95, 0.99].map(|p| percentile(&claim, p)));
        done_p.push([0.5, 0.95, 0.99].map(|p| percentile(&done, p)));
        db.drop().await;
    }
    let med = |v: &Vec<[f64; 3]>, i: usize| median(v.iter().map(|x| x[i]).collect());
    println!(
        "| wake-up latency, insert → claim | {N} jobs, 20 ms apart | p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms | | median of {} |",
        med(&claim_p, 0),
        med(&claim_p, 1),
        med(&claim_p, 2),
        a.runs
    );
    println!(
        "| wake-up latency, insert → done | {N} jobs, 20 ms apart | p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms | | median of {} |",
        med(&done_p, 0),
        med(&done_p, 1),
        med(&done_p, 2),
        a.runs
    );
}

#[tokio::main]
async fn main() {
    let a = args();
    println!("| measure | setup | result | cost | runs |");
    println!("|---|---|---|---|---|");
    if a.only.as_deref().is_none_or(|o| o == "throughput") {
        throughput(&a).await;
    }
    if a.only.as_deref().is_none_or(|o| o == "latency") {
        latency(&a).await;
    }
}
