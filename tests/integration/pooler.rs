//! The queue through a real PgBouncer in transaction mode, stock configuration (no
//! `ignore_startup_parameters`), as users with a Supabase/Neon/PgBouncer `DATABASE_URL` run it:
//! connect, migrate, enqueue, claims across two runners, completion, retry, rescue, drain, the
//! HTTP trigger, `status` and `migrate`. PgBouncer must be installed: a missing one fails.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbound_runner::config::DeliveryMode;
use outbound_runner::db::{self, pooler};
use outbound_runner::delivery::live::LiveHandler;
use outbound_runner::delivery::sandbox::SandboxHandler;
use outbound_runner::queue::JobError;
use outbound_runner::queue::store::{self, NewJob, Reclaim};
use outbound_runner::runner::Mode;

use crate::support::app::{App, TOKEN};
use crate::support::handlers::{Gate, Scripted};
use crate::support::mock_meta::{self, MockMeta};
use crate::support::pgbouncer::PgBouncer;
use crate::support::{TestDb, admin_url, spawn_runner_via, test_settings};

/// PgBouncer in front of the test server, lending `pool_size` server connections.
fn bouncer(pool_size: u32) -> PgBouncer {
    PgBouncer::start(&admin_url(), pool_size)
}

#[tokio::test]
async fn without_pooler_mode_a_stock_pgbouncer_refuses_us_and_the_error_is_recognised() {
    let db = TestDb::new().await;
    let pgb = bouncer(4);
    let settings = test_settings();
    let pool = db::open(&settings, &pgb.url(&db.name, "")).unwrap();
    assert!(!pool.pooled());
    let e = sqlx::query("SELECT 1").execute(&pool).await.unwrap_err();
    assert_eq!(
        pooler::pooler_sign(&e),
        Some(pooler::PoolerSign::StartupParameter),
        "{e}"
    );
}

#[tokio::test]
async fn migrations_run_through_the_pooler_without_a_direct_url() {
    let db = TestDb::empty().await;
    let pgb = bouncer(2);
    let settings = test_settings();
    let pool = db::open(
        &settings,
        &pgb.url(&db.name, "pgbouncer=true&connection_limit=1"),
    )
    .unwrap();
    assert!(pool.pooled());
    // Twice, and from two callers at once: one applies, the others find nothing to do.
    db::migrate_with(&settings, &pool).await.unwrap();
    let (a, b) = tokio::join!(
        db::migrate_with(&settings, &pool),
        db::migrate_with(&settings, &pool)
    );
    a.unwrap();
    b.unwrap();
    assert!(db::migrations_current(&pool).await.unwrap());
    // Nothing prepared by name was left behind on the server connections.
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_prepared_statements")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    pool.close().await;
}

/// The issue's bar: 3,000 jobs through PgBouncer with a `?pgbouncer=true` URL plus a direct URL,
/// two runners, all done within 30 s, each in one attempt, no prepared-statement error; then one
/// job inserted into the idle queue is done within 2 s.
#[tokio::test]
async fn two_runners_drain_3000_jobs_through_pgbouncer_and_wake_on_listen() {
    const JOBS: usize = 3000;
    let db = TestDb::new().await;
    // Fewer server connections than the two runners' pools: the pooler really multiplexes.
    let pgb = bouncer(6);
    let url = pgb.url(&db.name, "pgbouncer=true");
    let direct = db.url.clone();
    let a = spawn_runner_via(
        &url,
        Some(&direct),
        Arc::new(SandboxHandler),
        |_| {},
        Mode::Daemon,
    )
    .await;
    let b = spawn_runner_via(
        &url,
        Some(&direct),
        Arc::new(SandboxHandler),
        |_| {},
        Mode::Daemon,
    )
    .await;
    // The pool the runners opened from the URL, as the CLI and the app would: pooler mode.
    let pooled = outbound_runner::db::open(&test_settings(), &url).unwrap();
    assert!(pooled.pooled());

    // Enqueued through the pooler, as the CLI and the app would.
    let jobs: Vec<NewJob> = (0..JOBS)
        .map(|i| NewJob {
            payload: serde_json::json!({"to": format!("1555{i:07}"),
                "message": {"type": "text", "text": {"body": "through the pooler"}}}),
            idempotency_key: Some(format!("pgb-{i}")),
            ..Default::default()
        })
        .collect();
    let started = Instant::now();
    let inserted = store::enqueue(&pooled, &jobs).await.unwrap();
    assert_eq!(inserted.len(), JOBS);

    let (mut fa, mut fb) = (a.finished(), b.finished());
    let all = async {
        loop {
            if *fa.borrow() + *fb.borrow() >= JOBS as u64 {
                break;
            }
            tokio::select! {
                _ = fa.changed() => {}
                _ = fb.changed() => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "not all {JOBS} jobs finished within 30s: {} done",
                *fa.borrow() + *fb.borrow()
            )
        });
    let took = started.elapsed();
    let (by_a, by_b) = (*fa.borrow(), *fb.borrow());
    eprintln!("{JOBS} jobs through PgBouncer in {took:?} (runner a {by_a}, runner b {by_b})");
    assert!(
        by_a > 0 && by_b > 0,
        "both runners claimed: {by_a} + {by_b}"
    );
    let (done, one_attempt): (i64, i64) = sqlx::query_as(
        r#"SELECT count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE attempts = 1)
           FROM "OutboundJob""#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((done, one_attempt), (JOBS as i64, JOBS as i64));
    assert!(!pooler::prepared_statement_errors_seen());

    // Idle now: one job inserted straight into the table wakes a runner through LISTEN on the
    // direct URL.
    let before = *fa.borrow() + *fb.borrow();
    let inserted_at = Instant::now();
    let id = db.insert_jobs(1).await[0];
    let one = async {
        while *fa.borrow() + *fb.borrow() <= before {
            tokio::select! {
                _ = fa.changed() => {}
                _ = fb.changed() => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), one)
        .await
        .expect("a job inserted into the idle queue was not done within 2s");
    eprintln!("idle queue: insert → done in {:?}", inserted_at.elapsed());
    assert_eq!(db.job(id).await.status, "done");
    let (da, dbr) = tokio::join!(a.shutdown(), b.shutdown());
    assert_eq!(da.aborted + dbr.aborted, 0);
    drop(pgb);
}

/// Live delivery's ledger writes (mark sending, record sent) go through the pooler too.
#[tokio::test]
async fn live_delivery_through_pgbouncer_sends_each_message_once() {
    const JOBS: usize = 200;
    let db = TestDb::new().await;
    let pgb = bouncer(4);
    let meta = MockMeta::start().await;
    let url = pgb.url(&db.name, "pgbouncer=true");
    let live = |s: &mut outbound_runner::config::Settings| {
        s.delivery.mode = DeliveryMode::Live;
        s.whatsapp.api_base = meta.api_base();
        s.whatsapp.phone_number_id = mock_meta::PHONE_NUMBER_ID.into();
        s.whatsapp.access_token = Some(mock_meta::TOKEN.to_string().into());
        s.whatsapp.pair_interval = Duration::ZERO;
        s.whatsapp.rate_per_second = 10_000;
    };
    let mut settings = test_settings();
    live(&mut settings);
    let handler = Arc::new(LiveHandler::new(&settings).unwrap());
    let r = spawn_runner_via(&url, Some(&db.url), handler, live, Mode::Daemon).await;
    db.insert_jobs(JOBS).await;
    let mut finished = r.finished();
    tokio::time::timeout(
        Duration::from_secs(30),
        finished.wait_for(|n| *n >= JOBS as u64),
    )
    .await
    .expect("not every live job finished within 30s")
    .unwrap();
    r.shutdown().await;
    assert_eq!(db.count("done").await, JOBS as i64);
    let sent: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM "OutboundMessage" WHERE status = 'sent' AND wamid IS NOT NULL"#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(sent, JOBS as i64);
    let per_message = meta.accepted_per_message();
    assert_eq!(per_message.len(), JOBS);
    assert!(per_message.values().all(|n| *n == 1), "{per_message:?}");
    assert!(!pooler::prepared_statement_errors_seen());
}

#[tokio::test]
async fn without_a_direct_url_new_jobs_are_found_by_polling() {
    let db = TestDb::new().await;
    let pgb = bouncer(2);
    let url = pgb.url(&db.name, "pgbouncer=true");
    let r = spawn_runner_via(
        &url,
        None,
        Arc::new(SandboxHandler),
        |s| s.runner.pooler_poll_interval = Duration::from_millis(300),
        Mode::Daemon,
    )
    .await;
    // No LISTEN to wait for: readiness does not wait for one.
    assert!(r.listening());
    assert!(!r.listens());
    assert_eq!(r.poll_interval(), Duration::from_millis(300));
    let mut passes = r.passes();
    passes.wait_for(|n| *n >= 1).await.unwrap();
    let mut finished = r.finished();
    let id = db.insert_jobs(1).await[0];
    // Found by the next poll: within the interval and a claim, not the 30 s backstop.
    tokio::time::timeout(Duration::from_secs(2), finished.wait_for(|n| *n >= 1))
        .await
        .expect("the job was not found by polling within 2s")
        .unwrap();
    assert_eq!(db.job(id).await.status, "done");
    r.shutdown().await;
}

fn transient() -> JobError {
    JobError::retry("131000", "Something went wrong")
}

#[tokio::test]
async fn retry_rescue_and_drain_through_pgbouncer() {
    let db = TestDb::new().await;
    let pgb = bouncer(3);
    let url = pgb.url(&db.name, "pgbouncer=true");

    // Retry: a transient failure backs off, the next attempt completes.
    let r = spawn_runner_via(
        &url,
        None,
        Scripted::new(vec![Err(transient())]),
        |_| {},
        Mode::Passive,
    )
    .await;
    let id = db.insert_jobs(1).await[0];
    assert_eq!(r.run_pass(10).await.unwrap().retried, [id]);
    let job = db.job(id).await;
    assert_eq!((job.status.as_str(), job.attempts), ("queued", 1));
    assert_eq!(job.last_error_code.as_deref(), Some("131000"));
    db.make_due().await;
    assert_eq!(r.run_pass(10).await.unwrap().processed, [id]);
    let job = db.job(id).await;
    assert_eq!((job.status.as_str(), job.attempts), ("done", 2));
    r.shutdown().await;

    // Rescue: a job whose lease expired is requeued by the rescuer's statement, through the
    // pooler; the stale worker's fenced writes then change nothing.
    let gate = Gate::new();
    let r = spawn_runner_via(&url, None, gate.clone(), |_| {}, Mode::Passive).await;
    let id = db.insert_jobs(1).await[0];
    let pass = {
        let r = r.clone();
        tokio::spawn(async move { r.run_pass(1).await })
    };
    gate.wait_entered(1).await;
    db.expire_lease(id).await;
    let pooled = outbound_runner::db::open(&test_settings(), &url).unwrap();
    let rescued = store::reclaim(&pooled, Reclaim::Expired, true, 5)
        .await
        .unwrap();
    assert_eq!(rescued.requeued, 1);
    gate.open.add_permits(1);
    assert!(pass.await.unwrap().unwrap().processed.is_empty());
    let job = db.job(id).await;
    assert_eq!((job.status.as_str(), job.attempts), ("queued", 1));
    r.shutdown().await;

    // Drain: a job still running when the drain times out is released without spending its
    // attempt.
    let gate = Gate::new();
    let r = spawn_runner_via(
        &url,
        Some(&db.url),
        gate.clone(),
        |s| {
            s.runner.workers = 2;
            s.runner.drain_timeout = Duration::from_millis(200);
        },
        Mode::Daemon,
    )
    .await;
    gate.wait_entered(1).await;
    let report = r.shutdown().await;
    assert_eq!(report.aborted, 1);
    assert_eq!(report.released.requeued, 1);
    let job = db.job(id).await;
    assert_eq!((job.status.as_str(), job.attempts), ("queued", 1));
    assert_eq!(db.count("running").await, 0);
    assert!(!pooler::prepared_statement_errors_seen());
}

#[tokio::test]
async fn the_http_trigger_runs_a_pass_through_pgbouncer() {
    let db = TestDb::new().await;
    let pgb = bouncer(2);
    let url = pgb.url(&db.name, "pgbouncer=true");
    let runner = spawn_runner_via(
        &url,
        None,
        Arc::new(SandboxHandler),
        |s| s.http.job_runner_token = Some(secrecy::SecretString::from(TOKEN)),
        Mode::Passive,
    )
    .await;
    let ids = db.insert_jobs(5).await;
    let app = App::serve(db, runner).await;
    let (status, body) = app
        .get_json(&format!("/api/jobs/run-outbound?token={TOKEN}&max=10"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["processed"], 5, "{body}");
    // Ids are strings in JSON.
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    assert_eq!(body["jobIds"]["processed"], serde_json::json!(ids));
    assert_eq!(app.db.count("done").await, 5);
    app.stop().await;
}

#[test]
fn the_cli_migrates_and_reports_status_through_pgbouncer() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::empty());
    let pgb = bouncer(2);
    let url = pgb.url(&db.name, "pgbouncer=true");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_outbound-runner"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &url)
            .output()
            .unwrap()
    };
    let out = run(&["migrate"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("migrations applied"), "{text}");
    rt.block_on(db.insert_jobs(3));
    let out = run(&["status", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["ok"], true, "{status}");
    assert!(stdout.contains("byStatus"), "{stdout}");
    drop(pgb);
    drop(rt);
}

/// The daemon binary's stderr, line by line, from a thread of its own.
struct Daemon {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Daemon {
    fn start(env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outbound-runner"));
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("OUTBOUND_RUNNER__HTTP__LISTEN", "")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one contains `needle`; bounded.
    fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {within:?}; the log:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn stop(mut self) -> Vec<String> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.try_iter());
        assert!(status.success(), "{status}: {}", self.seen.join("\n"));
        self.seen
    }
}

#[test]
fn the_daemon_binary_explains_a_pooler_then_runs_through_it_with_pgbouncer_true() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::empty());
    let pgb = bouncer(2);

    // Pointed at PgBouncer as if it were PostgreSQL: refused, and the log says what to set,
    // once however often the connection is retried.
    let mut d = Daemon::start(&[("DATABASE_URL", &pgb.url(&db.name, ""))]);
    d.wait_for("add ?pgbouncer=true", Duration::from_secs(10));
    d.wait_for("database unreachable", Duration::from_secs(10));
    // The daemon keeps retrying (quietly, with backoff): PgBouncer counts the refusals.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pgb.log().matches("unsupported startup parameter").count() < 3 {
        assert!(Instant::now() < deadline, "{}", pgb.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = d.stop();
    let advice = log
        .iter()
        .filter(|l| l.contains("add ?pgbouncer=true"))
        .count();
    assert_eq!(advice, 1, "{}", log.join("\n"));
    assert!(log.iter().any(|l| l.contains("database.direct_url")));

    // With ?pgbouncer=true and no direct URL: it migrates through the pooler, warns what it
    // cannot do without a direct URL, and finds a new job by polling.
    let mut d = Daemon::start(&[
        ("DATABASE_URL", &pgb.url(&db.name, "pgbouncer=true")),
        ("OUTBOUND_RUNNER__RUNNER__POOLER_POLL_INTERVAL", "200ms"),
    ]);
    d.wait_for("database.direct_url is not set", Duration::from_secs(10));
    d.wait_for("ready", Duration::from_secs(30));
    let id = rt.block_on(db.insert_jobs(1))[0];
    d.wait_for(
        &format!("Job {id} completed successfully"),
        Duration::from_secs(5),
    );
    let log = d.stop();
    assert!(
        !log.iter().any(|l| l.contains("prepared statement")),
        "{}",
        log.join("\n")
    );
    assert_eq!(rt.block_on(db.job(id)).status, "done");
    drop(pgb);
}
