//! Issue 12's rows: the built-in settings at Meta's rates and real latencies, on a small
//! connection budget. Each row drives an in-process runner built as the daemon builds it
//! (`db::pool`, the built-in configuration plus what the row names) while a sampler counts the
//! runner's connections in `pg_stat_activity` (by `application_name`, from another database so
//! that its queries are not in the measured database's CPU), its jobs in flight and this
//! process's RSS every 50 ms.
//!
//! - live delivery to the mock Cloud API answering after 200 ms, `whatsapp.rate_per_second` 80
//!   and 1,000: messages/s against the rate;
//! - 500 `input` jobs against a mock orchestrator answering after 5 s, rate 1,000: time to done;
//! - 2,000 sandbox jobs as a role with `CONNECTION LIMIT 3` (the budget, 8, above it): time to
//!   done, and whether every job took one attempt;
//! - RSS with 1,000 jobs in flight (the 5 s orchestrator again; measured first, while this
//!   process holds nothing else with `--only budget`).
//!
//! A row still running after its cap is stopped and rated by the jobs done by then (it says so).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use outbound_runner::config::{DeliveryMode, Settings};
use outbound_runner::delivery::JobHandler;
use outbound_runner::delivery::live::LiveHandler;
use outbound_runner::delivery::sandbox::SandboxHandler;
use outbound_runner::metrics::Metrics;
use outbound_runner::runner::Runner;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::common::{Args, Db, Row, ServerCpu, int, median};
use crate::mock_meta::{self, Limits, MockMeta};
use crate::mock_orchestrator::{Answer, MockOrchestrator};
use crate::progress;
use crate::window::most_in_one_second;

const APP: &str = "or-bench-budget";

/// The built-in configuration, untouched (no worker count: the defaults' own).
fn defaults() -> Settings {
    let mut s = outbound_runner::config::load(&outbound_runner::config::LoadOptions {
        config_path: None,
        skip_default_path: true,
        env: Default::default(),
    })
    .unwrap();
    s.http.listen = String::new();
    s
}

fn live(s: &mut Settings, meta: &MockMeta, rate: u32) {
    s.delivery.mode = DeliveryMode::Live;
    s.whatsapp.api_base = meta.api_base();
    s.whatsapp.phone_number_id = mock_meta::PHONE_NUMBER_ID.into();
    s.whatsapp.access_token = Some(mock_meta::TOKEN.to_string().into());
    s.whatsapp.rate_per_second = rate;
    // One recipient per job: the pair spacing never applies.
    s.whatsapp.pair_interval = Duration::ZERO;
}

#[derive(Debug, Clone, Copy, Default)]
struct Drive {
    jobs: usize,
    done: i64,
    /// Done jobs that took more than one attempt.
    retried: i64,
    elapsed: f64,
    capped: bool,
    max_connections: i64,
    max_running: i64,
    rss_base_kb: i64,
    rss_peak_kb: i64,
    /// PostgreSQL's CPU from the runner's start to the last `done` (its backends of the
    /// database and the shared processes: [`ServerCpu`]; the observer is not among them).
    server_cpu: f64,
    /// The part of `server_cpu` spent by the database's own backends (the rest is the shared
    /// processes': WAL writer, checkpointer, background writer, which also serve whatever else
    /// the server is doing meanwhile).
    backends_cpu: f64,
    /// Transactions the measured database committed over the row (`pg_stat_database`, read
    /// after the runner's connections closed): the statements that commit, per message.
    commits: i64,
    /// The jobs done while the CPU was measured: all of them, or those after the warm-up.
    measured: i64,
}

fn rss_kb() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Inserts `payloads` (one JSON per job), starts a runner with `s` as `opts`' user, and waits
/// until every job is done or `cap` passes, sampling meanwhile. PostgreSQL's CPU is measured
/// from the runner's start, or with `warm` > 0 from the moment `warm` jobs are done (a runner
/// that has been running: its connections open, its statements prepared and their plans
/// settled).
#[allow(clippy::too_many_arguments)]
async fn drive(
    db: &Db,
    opts: PgConnectOptions,
    s: Settings,
    handler: Arc<dyn JobHandler>,
    jobs: usize,
    input: bool,
    cap: Duration,
    warm: usize,
) -> Drive {
    let payload = if input {
        r#"jsonb_build_object('to', '1555' || lpad(g::text, 7, '0'), 'input', jsonb_build_object('text', 'hi ' || g))"#
    } else {
        r#"jsonb_build_object('to', '1555' || lpad(g::text, 7, '0'), 'message', jsonb_build_object('type', 'text', 'text', jsonb_build_object('body', 'bench ' || g)))"#
    };
    sqlx::query(&format!(
        r#"INSERT INTO "OutboundJob" (payload) SELECT {payload} FROM generate_series(1, $1) g"#
    ))
    .bind(jobs as i32)
    .execute(&db.pool)
    .await
    .unwrap();
    db.vacuum().await;

    // The observer stays off the measured database, whose backends' CPU is the figure: the
    // connections are counted from the server's own database (pg_stat_activity is cluster-wide),
    // the jobs in flight and done read from the runner itself. (Counting them in the table, 20
    // and 50 times a second, had cost PostgreSQL about 100 µs per message in the rate-1,000
    // row: a fifth of the figure.)
    let stop = Arc::new(AtomicBool::new(false));
    let (conns, rss) = (Arc::new(AtomicI64::new(0)), Arc::new(AtomicI64::new(0)));
    let rss_base_kb = rss_kb();
    let sampler = {
        let (stop, conns, rss) = (stop.clone(), conns.clone(), rss.clone());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&crate::common::admin_url())
            .await
            .expect("the server's own database");
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let c: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                )
                .bind(APP)
                .fetch_one(&admin)
                .await
                .unwrap_or(0);
                conns.fetch_max(c, Ordering::SeqCst);
                rss.fetch_max(rss_kb(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            admin.close().await;
        })
    };

    let commits_before = commits(&db.name).await;
    let pool = outbound_runner::db::pool(&s, opts.application_name(APP), false);
    // As the daemon does before it starts the runner (app.rs).
    let pool = outbound_runner::db::wait::fit_budget(pool, &s).await;
    let metrics = Arc::new(Metrics::new());
    let mut cpu = (warm == 0).then(|| (ServerCpu::start(&db.name), ServerCpu::backends(&db.name)));
    let started = Instant::now();
    let runner = Runner::builder(pool.clone(), Arc::new(s), handler)
        .metrics(metrics.clone())
        .start()
        .await;
    let done_jobs = metrics.jobs_finished.with_label_values(&["done"]);
    let mut max_running = 0;
    let mut warm_done = 0;
    let capped = loop {
        max_running = max_running.max(runner.in_flight() as i64);
        if cpu.is_none() && done_jobs.get() as usize >= warm {
            warm_done = done_jobs.get() as i64;
            cpu = Some((ServerCpu::start(&db.name), ServerCpu::backends(&db.name)));
        }
        if done_jobs.get() as usize >= jobs {
            break false;
        }
        if started.elapsed() >= cap {
            break true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed().as_secs_f64();
    let measured = done_jobs.get() as i64 - warm_done;
    let (server_cpu, backends_cpu) = match cpu {
        Some((server, backends)) => (server.stop().0, backends.stop().0),
        None => (0.0, 0.0),
    };
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.await;
    runner.shutdown().await;
    pool.close().await;
    let commits = commits(&db.name).await - commits_before;
    let (done, retried): (i64, i64) = sqlx::query_as(
        r#"SELECT count(*) FILTER (WHERE status = 'done'),
                  count(*) FILTER (WHERE status = 'done' AND attempts <> 1)
           FROM "OutboundJob""#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    Drive {
        jobs,
        done,
        retried,
        elapsed,
        capped,
        max_connections: conns.load(Ordering::SeqCst),
        max_running,
        rss_base_kb,
        rss_peak_kb: rss.load(Ordering::SeqCst),
        server_cpu,
        backends_cpu,
        commits,
        measured,
    }
}

/// The transactions `database` has committed (`pg_stat_database.xact_commit`), read from the
/// server's own database. A backend reports its counts when it ends or goes idle, so read after
/// the runner's connections have closed (a few of the benchmark's own are among them).
async fn commits(database: &str) -> i64 {
    let Ok(admin) = PgPoolOptions::new()
        .max_connections(1)
        .connect(&crate::common::admin_url())
        .await
    else {
        return 0;
    };
    // Counts of backends that just ended reach the shared statistics at once in PostgreSQL 15;
    // a snapshot taken earlier in this transaction would hide them.
    let n: i64 = sqlx::query_scalar(
        "SELECT coalesce(xact_commit, 0)::bigint FROM pg_stat_database WHERE datname = $1",
    )
    .bind(database)
    .fetch_one(&admin)
    .await
    .unwrap_or(0);
    admin.close().await;
    n
}

fn held(d: &Drive, budget: u32) -> String {
    format!(
        "{} connections held at most (budget {budget}); {} jobs in flight at most",
        d.max_connections, d.max_running
    )
}

fn finished(d: &Drive) -> String {
    if d.capped {
        format!(
            "{} of {} done after {:.0} s (stopped)",
            int(d.done as f64),
            int(d.jobs as f64),
            d.elapsed
        )
    } else {
        format!("all {} done in {:.1} s", int(d.jobs as f64), d.elapsed)
    }
}

/// The daemon binary itself (`outbound-runner run`, built by cargo for this bench) with 1,000
/// `input` jobs in flight against the 5 s orchestrator: its peak RSS (`VmHWM`), alone.
async fn daemon_rss(cap: Duration) -> (Drive, f64) {
    const BINARY: &str = env!("CARGO_BIN_EXE_outbound-runner");
    let jobs = 1000usize;
    let db = Db::new().await;
    let meta = MockMeta::start().await;
    let reply = json!({"messages": [{"type": "text", "text": {"body": "on it"}}]});
    let orchestrator = MockOrchestrator::start(reply.clone()).await;
    orchestrator.script((0..jobs).map(|_| Answer::Slow(Duration::from_secs(5), reply.clone())));
    sqlx::query(
        r#"INSERT INTO "OutboundJob" (payload)
           SELECT jsonb_build_object('to', '1555' || lpad(g::text, 7, '0'),
                  'input', jsonb_build_object('text', 'hi ' || g))
           FROM generate_series(1, $1) g"#,
    )
    .bind(jobs as i32)
    .execute(&db.pool)
    .await
    .unwrap();
    let config = std::env::temp_dir().join(format!("{}.toml", db.name));
    std::fs::write(&config, "").unwrap();
    let mut child = tokio::process::Command::new(BINARY)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", db.url())
        .env("OUTBOUND_RUNNER__HTTP__LISTEN", "127.0.0.1:0")
        .env("OUTBOUND_RUNNER__LOG__LEVEL", "warn")
        .env("OUTBOUND_RUNNER__DELIVERY__MODE", "live")
        .env("OUTBOUND_RUNNER__WHATSAPP__API_BASE", meta.api_base())
        .env(
            "OUTBOUND_RUNNER__WHATSAPP__PHONE_NUMBER_ID",
            mock_meta::PHONE_NUMBER_ID,
        )
        .env("OUTBOUND_RUNNER__WHATSAPP__ACCESS_TOKEN", mock_meta::TOKEN)
        .env("OUTBOUND_RUNNER__WHATSAPP__RATE_PER_SECOND", "1000")
        .env("OUTBOUND_RUNNER__WHATSAPP__PAIR_INTERVAL", "0s")
        .env("OUTBOUND_RUNNER__ORCHESTRATOR__URL", orchestrator.url())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the daemon");
    let pid = child.id().expect("the daemon's pid");
    crate::common::register_child(pid);
    let started = Instant::now();
    let mut d = Drive {
        jobs,
        ..Default::default()
    };
    let kb = |key: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            .unwrap_or(0)
    };
    loop {
        let (c, r, done): (i64, i64, i64) = sqlx::query_as(
            r#"SELECT (SELECT count(*) FROM pg_stat_activity
                       WHERE application_name = 'outbound-runner' AND datname = current_database()),
                      count(*) FILTER (WHERE status = 'running'),
                      count(*) FILTER (WHERE status = 'done')
               FROM "OutboundJob""#,
        )
        .fetch_one(&db.pool)
        .await
        .unwrap_or((0, 0, 0));
        d.max_connections = d.max_connections.max(c);
        d.max_running = d.max_running.max(r);
        d.rss_peak_kb = d.rss_peak_kb.max(kb("VmRSS:"));
        d.done = done;
        if done as usize >= jobs || started.elapsed() >= cap {
            d.capped = (done as usize) < jobs;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.elapsed = started.elapsed().as_secs_f64();
    let hwm = kb("VmHWM:") as f64 / 1024.0;
    let _ = child.start_kill();
    let _ = child.wait().await;
    crate::common::forget_child(pid);
    let _ = std::fs::remove_file(&config);
    db.drop().await;
    (d, hwm)
}

/// Issue 27's rows: PostgreSQL CPU per message at Meta's default tier (80/s), at 1,000/s (both
/// with the mock answering after 200 ms) and with instant answers (pacing out of the way), each
/// on the built-in settings, with the transactions committed per message beside it; and the
/// default tier once more on a runner that has been running (measured after a warm-up of
/// `WARM_SECS` seconds: connections open, statements prepared, plans settled, as they are in a
/// daemon that runs for hours). `--runs` rounds, the rows in turn in each; the median of each
/// row's figures.
pub async fn cost(a: &Args) -> Vec<Row> {
    const WARM_SECS: usize = 30;
    let cap = Duration::from_secs(if a.quick { 20 } else { 30 });
    let secs = if a.quick { 4 } else { 10 };
    // (name, rate, answer latency, jobs, jobs of the warm-up)
    let cases: [(&str, u32, u64, usize, usize); 4] = [
        ("rate 80, answers after 200 ms", 80, 200, 80 * secs, 0),
        (
            "rate 1,000, answers after 200 ms",
            1000,
            200,
            1000 * secs,
            0,
        ),
        (
            "instant answers, pacing out of the way",
            1_000_000,
            0,
            if a.quick { 2_000 } else { 10_000 },
            0,
        ),
        (
            "rate 80, answers after 200 ms, after a 30 s warm-up",
            80,
            200,
            80 * (WARM_SECS + secs),
            80 * WARM_SECS,
        ),
    ];
    let mut figures: Vec<Vec<(f64, f64, f64, f64)>> = vec![Vec::new(); cases.len()];
    for round in 1..=a.runs {
        for (i, &(name, rate, latency, jobs, warm)) in cases.iter().enumerate() {
            if warm > 0 && a.quick {
                continue;
            }
            let db = Db::new().await;
            let meta =
                MockMeta::start_with(Limits::default(), Duration::from_millis(latency)).await;
            let mut s = defaults();
            live(&mut s, &meta, rate);
            let handler = Arc::new(LiveHandler::new(&s).unwrap());
            let cap = cap + Duration::from_secs((warm as u64).div_ceil(rate as u64));
            let d = drive(&db, db.opts.clone(), s, handler, jobs, false, cap, warm).await;
            let measured = d.measured.max(1) as f64;
            let (cpu, backends, commits, rate_done) = (
                d.server_cpu / measured * 1e6,
                d.backends_cpu / measured * 1e6,
                d.commits as f64 / d.done.max(1) as f64,
                d.done as f64 / d.elapsed,
            );
            progress!(
                "round {round}/{}: {name}: {cpu:.0} µs PostgreSQL CPU per message ({backends:.0} \
                 in the database's backends; {} messages measured), {commits:.3} commits per \
                 message over the run, {} messages/s; {}",
                a.runs,
                int(measured),
                int(rate_done),
                finished(&d)
            );
            figures[i].push((cpu, commits, rate_done, backends));
            db.drop().await;
        }
    }
    cases
        .iter()
        .zip(figures)
        .filter(|(_, f)| !f.is_empty())
        .map(|(&(name, _, _, jobs, _), f)| {
            let cpu: Vec<f64> = f.iter().map(|x| x.0).collect();
            let commits: Vec<f64> = f.iter().map(|x| x.1).collect();
            let rate: Vec<f64> = f.iter().map(|x| x.2).collect();
            let backends: Vec<f64> = f.iter().map(|x| x.3).collect();
            let (lo, hi) = cpu
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            Row {
                section: "cost",
                measure: "PostgreSQL CPU per message, live delivery, built-in settings".into(),
                setup: format!("{name}; {} jobs", int(jobs as f64)),
                result: format!("{:.0} µs/message ({lo:.0}–{hi:.0})", median(&cpu)),
                ratio: String::new(),
                detail: format!(
                    "{:.0} µs of it in the database's backends, the rest in the shared processes; \
                     {:.3} commits per message; {} messages/s",
                    median(&backends),
                    median(&commits),
                    int(median(&rate))
                ),
            }
        })
        .collect()
}

pub async fn run(a: &Args) -> Vec<Row> {
    let mut rows = Vec::new();
    let cap = Duration::from_secs(if a.quick { 20 } else { 30 });

    let (d, hwm) = daemon_rss(cap).await;
    progress!(
        "the daemon, 1000 input jobs, orchestrator 5 s: {}; peak RSS {hwm:.0} MB; {} connections",
        finished(&d),
        d.max_connections
    );
    rows.push(Row {
        section: "budget",
        measure: "the daemon binary's memory with 1,000 jobs in flight (orchestrator after 5 s)"
            .into(),
        setup: "1,000 input jobs, rate 1000, built-in settings".into(),
        result: format!("peak RSS (VmHWM) {hwm:.0} MB"),
        ratio: String::new(),
        detail: format!(
            "{} connections held at most (budget 8); {} jobs running at most; {}",
            d.max_connections,
            d.max_running,
            finished(&d)
        ),
    });

    // The orchestrator at 5 s: the RSS with 1,000 in flight first (with `--only budget` the
    // process holds nothing else yet), then
    // 500 replies.
    for (jobs, rss_row) in [(1000usize, true), (500, false)] {
        let db = Db::new().await;
        let meta = MockMeta::start().await;
        let orchestrator = MockOrchestrator::start(json!({"messages": [
            {"type": "text", "text": {"body": "on it"}}
        ]}))
        .await;
        orchestrator.script((0..jobs).map(|_| {
            Answer::Slow(
                Duration::from_secs(5),
                json!({"messages": [{"type": "text", "text": {"body": "on it"}}]}),
            )
        }));
        let mut s = defaults();
        live(&mut s, &meta, 1000);
        s.orchestrator.url = orchestrator.url();
        let budget = s.pool_size() + 1;
        let handler = Arc::new(LiveHandler::new(&s).unwrap());
        let d = drive(&db, db.opts.clone(), s, handler, jobs, true, cap, 0).await;
        progress!(
            "{jobs} input jobs, orchestrator 5 s: {}; {} connections; RSS {} → {} MB",
            finished(&d),
            d.max_connections,
            d.rss_base_kb / 1024,
            d.rss_peak_kb / 1024
        );
        rows.push(if rss_row {
            Row {
                section: "budget",
                measure: "memory with 1,000 jobs in flight (orchestrator answering after 5 s)"
                    .into(),
                setup: "1,000 input jobs, rate 1000, built-in settings".into(),
                result: format!("RSS {:.0} MB at the peak", d.rss_peak_kb as f64 / 1024.0),
                ratio: format!(
                    "{:.0} MB before the runner started (the bench, its mocks)",
                    d.rss_base_kb as f64 / 1024.0
                ),
                detail: format!("{}; {}", held(&d, budget), finished(&d)),
            }
        } else {
            Row {
                section: "budget",
                measure: "input jobs, mock orchestrator answering after 5 s, built-in settings"
                    .into(),
                setup: "500 input jobs, whatsapp.rate_per_second = 1000".into(),
                result: finished(&d),
                ratio: String::new(),
                detail: held(&d, budget),
            }
        });
        db.drop().await;
    }

    // Meta at 200 ms, the defaults plus the number's rate.
    for rate in [80u32, 1000] {
        let secs = if a.quick { 4 } else { 10 };
        let jobs = rate as usize * secs;
        let db = Db::new().await;
        let meta = MockMeta::start_with(Limits::default(), Duration::from_millis(200)).await;
        let mut s = defaults();
        live(&mut s, &meta, rate);
        let budget = s.pool_size() + 1;
        let handler = Arc::new(LiveHandler::new(&s).unwrap());
        let d = drive(&db, db.opts.clone(), s, handler, jobs, false, cap, 0).await;
        let per_s = d.done as f64 / d.elapsed;
        // What Meta's counters would see: requests per sliding second, by arrival.
        let most = most_in_one_second(meta.accepted().iter().map(|a| a.arrived).collect());
        progress!(
            "live, 200 ms, rate {rate}: {} messages/s, {} connections, at most {most} in one second",
            int(per_s),
            d.max_connections
        );
        rows.push(Row {
            section: "budget",
            measure: "live delivery, mock Cloud API answering after 200 ms, built-in settings"
                .into(),
            setup: format!(
                "{} jobs, whatsapp.rate_per_second = {rate}",
                int(jobs as f64)
            ),
            result: format!("{} messages/s", int(per_s)),
            ratio: format!("{:.0} % of the rate", per_s / f64::from(rate) * 100.0),
            detail: format!(
                "PostgreSQL {:.2} s CPU = {:.0} µs/message; {}; {}; at most {most} requests in any \
                 one second at the mock (the rate: {rate})",
                d.server_cpu,
                d.server_cpu / (d.done.max(1) as f64) * 1e6,
                held(&d, budget),
                finished(&d)
            ),
        });
        db.drop().await;
    }

    // A role the server lets have 3 connections, the budget above it.
    let jobs = if a.quick { 500 } else { 2000 };
    let db = Db::new().await;
    let role = format!("or_bench_limited_{:08x}", rand::random::<u32>());
    for sql in [
        format!(r#"CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 3"#),
        format!(r#"GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}""#),
        format!(r#"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}""#),
    ] {
        sqlx::query(&sql).execute(&db.pool).await.unwrap();
    }
    let s = defaults();
    let budget = s.pool_size() + 1;
    let d = drive(
        &db,
        db.opts.clone().username(&role),
        s,
        Arc::new(SandboxHandler),
        jobs,
        false,
        Duration::from_secs(60),
        0,
    )
    .await;
    progress!(
        "CONNECTION LIMIT 3: {}; {} retried; {} connections",
        finished(&d),
        d.retried,
        d.max_connections
    );
    rows.push(Row {
        section: "budget",
        measure: "sandbox jobs as a role with CONNECTION LIMIT 3, built-in settings".into(),
        setup: format!("{} jobs, budget {budget}", int(jobs as f64)),
        result: finished(&d),
        ratio: format!(
            "{} of the done jobs took more than one attempt",
            int(d.retried as f64)
        ),
        detail: held(&d, budget),
    });
    db.drop().await;
    if let Ok(admin) = crate::common::admin_url().parse::<PgConnectOptions>() {
        use sqlx::{ConnectOptions, Executor};
        if let Ok(mut conn) = admin.connect().await {
            let _ = conn
                .execute(format!(r#"DROP ROLE IF EXISTS "{role}""#).as_str())
                .await;
        }
    }
    rows
}
