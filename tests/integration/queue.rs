//! The queue core against a real PostgreSQL: transitions, concurrency, wake-ups, fencing,
//! rescue, drain, bad input.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbound_runner::delivery::sandbox::SandboxHandler;
use outbound_runner::queue::store::{self, Reclaim};
use outbound_runner::queue::{Action, JobError, retry};

use crate::support::handlers::{Counting, Gate, Scripted};
use crate::support::proxy::{Proxy, upstream_of};
use crate::support::{
    TestDb, metrics_of, spawn_passive, spawn_runner, spawn_runner_at, wait_count,
};

#[tokio::test]
async fn claim_complete_retry_and_fail_follow_the_state_machine() {
    let db = TestDb::new().await;
    let transient = || JobError::retry("131000", "Something went wrong");
    let handler = Scripted::new(vec![Err(transient()), Err(transient()), Err(transient())]);
    let runner = spawn_passive(&db, handler, |_| {}).await;
    let id = db
        .insert_payload(r#"{"to":"15551230000","message":{"type":"text","text":{"body":"hi"}}}"#)
        .await;
    sqlx::query(r#"UPDATE "OutboundJob" SET "maxAttempts" = 3 WHERE id = $1"#)
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    let policy = runner.settings().retry.clone();

    for attempt in 1..=2u32 {
        let report = runner.run_pass(10).await.unwrap();
        assert_eq!(report.retried, [id], "attempt {attempt}");
        let job = db.job(id).await;
        assert_eq!(job.status, "queued", "attempt {attempt}");
        assert_eq!(job.attempts, attempt as i32);
        assert_eq!(job.last_error_code.as_deref(), Some("131000"));
        assert_eq!(job.last_error.as_deref(), Some("Something went wrong"));
        assert!(job.locked_by.is_none());
        // Backoff: due within the full-jitter window of this attempt, and not run early.
        let ceiling = retry::ceiling(&policy, attempt).as_secs_f64();
        assert!(
            job.due_in <= ceiling + 0.5,
            "attempt {attempt}: due in {}s, ceiling {ceiling}s",
            job.due_in
        );
        if job.due_in > 0.2 {
            assert!(runner.run_pass(10).await.unwrap().retried.is_empty());
        }
        db.make_due().await;
    }

    // The third failure is the last attempt: failed for good, with the reason.
    let report = runner.run_pass(10).await.unwrap();
    assert_eq!(report.failed, [id]);
    let job = db.job(id).await;
    assert_eq!(job.status, "failed");
    assert_eq!(job.attempts, 3);
    assert!(job.completed);
    assert_eq!(
        job.last_error.as_deref(),
        Some("gave up after 3 attempt(s): Something went wrong")
    );

    // A job that succeeds is done, with completedAt, and its message is in the ledger.
    let ok = db.insert_jobs(1).await[0];
    let report = runner.run_pass(10).await.unwrap();
    assert_eq!(report.processed, [ok]);
    let job = db.job(ok).await;
    assert_eq!(job.status, "done");
    assert!(job.completed);
    let wamid: String =
        sqlx::query_scalar(r#"SELECT wamid FROM "OutboundMessage" WHERE "jobId" = $1"#)
            .bind(ok)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(wamid, format!("wamid.sandbox.{ok}.0"));
    let metrics = metrics_of(&runner);
    assert_eq!(metrics.messages_sent.get(), 1);
    assert_eq!(metrics.jobs_finished.with_label_values(&["retry"]).get(), 2);
    assert_eq!(
        metrics.jobs_finished.with_label_values(&["failed"]).get(),
        1
    );
    assert_eq!(metrics.jobs_finished.with_label_values(&["done"]).get(), 1);
    runner.shutdown().await;
}

#[tokio::test]
async fn deferred_jobs_keep_their_attempts() {
    let db = TestDb::new().await;
    let handler = Scripted::new(vec![Err(JobError::defer(
        Duration::from_secs(60),
        "circuit_open",
        "sending is halted for the number",
    ))]);
    let runner = spawn_passive(&db, handler, |_| {}).await;
    let id = db.insert_jobs(1).await[0];
    let report = runner.run_pass(1).await.unwrap();
    assert_eq!(report.retried, [id]);
    let job = db.job(id).await;
    assert_eq!(job.status, "queued");
    assert_eq!(job.attempts, 0, "a deferral does not spend an attempt");
    assert!(
        job.due_in > 50.0,
        "deferred by its delay: due in {}",
        job.due_in
    );
    runner.shutdown().await;
}

#[tokio::test]
async fn two_runners_do_every_job_exactly_once() {
    const JOBS: usize = 2000;
    let db = TestDb::new().await;
    let counting = Arc::new(Counting::default());
    let a = spawn_runner(&db, counting.clone(), |s| s.runner.workers = 4).await;
    let b = spawn_runner(&db, counting.clone(), |s| s.runner.workers = 4).await;
    let ids = db.insert_jobs(JOBS).await;

    // Both dispatchers work (woken by the insert's NOTIFY) while both runners also run passes
    // until the queue has no due job; the drain then waits for every job in flight.
    let drive = |r: outbound_runner::runner::Runner| async move {
        loop {
            let report = r.run_pass(50).await.unwrap();
            if report.processed.is_empty() && report.failed.is_empty() && report.retried.is_empty()
            {
                break;
            }
        }
        r
    };
    let (a, b) = tokio::join!(drive(a.clone()), drive(b.clone()));
    let (da, db_) = tokio::join!(a.shutdown(), b.shutdown());
    assert_eq!(da.aborted + db_.aborted, 0);

    assert_eq!(db.count("done").await, JOBS as i64);
    let runs = counting.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), JOBS, "every job ran");
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "jobs run more than once: {twice:?}");
    for id in &ids {
        assert!(runs.contains_key(&(*id).into()));
    }
    let (messages, distinct): (i64, i64) = sqlx::query_as(
        r#"SELECT count(*), count(DISTINCT "jobId") FROM "OutboundMessage" WHERE status = 'sent'"#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((messages, distinct), (JOBS as i64, JOBS as i64));
    // Both runners took part.
    let runners: i64 =
        sqlx::query_scalar(r#"SELECT count(DISTINCT "lockedBy") FROM "OutboundJob""#)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(runners, 2);
}

#[tokio::test]
async fn notify_wakes_the_dispatcher_long_before_the_interval() {
    let db = TestDb::new().await;
    let counting = Arc::new(Counting::default());
    let runner = spawn_runner(&db, counting.clone(), |s| {
        s.runner.poll_interval = Duration::from_secs(30);
    })
    .await;
    // Let the start-up pass happen first, so only a notification can find the job.
    let mut passes = runner.passes();
    wait_count(&mut passes, 1, Duration::from_secs(5)).await;
    assert!(runner.listening());

    let mut finished = runner.finished();
    let start = Instant::now();
    let id = db.insert_jobs(1).await[0];
    wait_count(&mut finished, 1, Duration::from_secs(1)).await;
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert_eq!(db.job(id).await.status, "done");
    runner.shutdown().await;
}

#[tokio::test]
async fn a_scheduled_job_waits_for_its_time_and_then_runs_without_polling() {
    let db = TestDb::new().await;
    let runner = spawn_runner(&db, Arc::new(SandboxHandler), |s| {
        s.runner.poll_interval = Duration::from_secs(3600);
    })
    .await;
    let mut passes = runner.passes();
    wait_count(&mut passes, 1, Duration::from_secs(5)).await;
    let id: i64 = sqlx::query_scalar(
        r#"INSERT INTO "OutboundJob" (payload, "runAt") VALUES
           ('{"to":"15551230000","message":{"type":"text","text":{"body":"later"}}}',
            now() + interval '1500 milliseconds') RETURNING id"#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // Not early: a pass now finds nothing due.
    let report = runner.run_pass(10).await.unwrap();
    assert!(report.processed.is_empty());
    assert_eq!(db.job(id).await.status, "queued");
    // On time: the dispatcher wakes at the due time (the interval is an hour away).
    let mut finished = runner.finished();
    wait_count(&mut finished, 1, Duration::from_secs(5)).await;
    assert_eq!(db.job(id).await.status, "done");
    runner.shutdown().await;
}

#[tokio::test]
async fn a_fenced_write_after_a_rescue_changes_nothing() {
    let db = TestDb::new().await;
    let gate = Gate::new();
    let runner = spawn_passive(&db, gate.clone(), |_| {}).await;
    let id = db.insert_jobs(1).await[0];
    let pass = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.run_pass(1).await })
    };
    gate.wait_entered(1).await;
    assert_eq!(db.job(id).await.status, "running");

    // The lease expires (as if this runner hung) and the rescuer takes the job back.
    db.expire_lease(id).await;
    let rescued = store::reclaim(&db.pool, Reclaim::Expired, true, 5)
        .await
        .unwrap();
    assert_eq!(rescued.requeued, 1);
    let job = db.job(id).await;
    assert_eq!((job.status.as_str(), job.attempts), ("queued", 1));

    // The old worker now finishes: its fenced writes match nothing.
    gate.open.add_permits(1);
    let report = pass.await.unwrap().unwrap();
    assert!(report.processed.is_empty(), "{report:?}");
    let job = db.job(id).await;
    assert_eq!((job.status.as_str(), job.attempts), ("queued", 1));
    let messages: i64 =
        sqlx::query_scalar(r#"SELECT count(*) FROM "OutboundMessage" WHERE "jobId" = $1"#)
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(messages, 0, "the stale worker recorded nothing");
    runner.shutdown().await;
}

#[tokio::test]
async fn the_rescuer_fails_jobs_with_a_message_mid_send_instead_of_resending() {
    let db = TestDb::new().await;
    let ids = db.insert_jobs(3).await;
    // Three jobs claimed by a runner that died: one mid-send, one before sending, one out of attempts.
    sqlx::query(
        r#"UPDATE "OutboundJob" SET status = 'running', attempts = 1, "lockedBy" = 'dead:1:x',
                  "leaseUntil" = now() - interval '1 minute' WHERE id = ANY($1)"#,
    )
    .bind(&ids)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(r#"UPDATE "OutboundJob" SET attempts = 5 WHERE id = $1"#)
        .bind(ids[2])
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        r#"INSERT INTO "OutboundMessage" ("jobId", seq, status, "to", body)
           VALUES ($1, 0, 'sending', '15550000001', '{}')"#,
    )
    .bind(ids[0])
    .execute(&db.pool)
    .await
    .unwrap();

    let r = store::reclaim(&db.pool, Reclaim::Expired, true, 5)
        .await
        .unwrap();
    assert_eq!((r.requeued, r.failed, r.in_doubt), (1, 2, 1));

    let mid_send = db.job(ids[0]).await;
    assert_eq!(mid_send.status, "failed");
    assert_eq!(
        mid_send.last_error_code.as_deref(),
        Some("delivery_unknown")
    );
    let msg: String =
        sqlx::query_scalar(r#"SELECT status FROM "OutboundMessage" WHERE "jobId" = $1"#)
            .bind(ids[0])
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(msg, "unknown");
    let before_send = db.job(ids[1]).await;
    assert_eq!(
        (before_send.status.as_str(), before_send.attempts),
        ("queued", 1)
    );
    let exhausted = db.job(ids[2]).await;
    assert_eq!(exhausted.status, "failed");
    assert_eq!(exhausted.last_error_code.as_deref(), Some("lease_expired"));

    // A rescue that finds nothing changes nothing.
    let again = store::reclaim(&db.pool, Reclaim::Expired, true, 5)
        .await
        .unwrap();
    assert_eq!(again, store::Rescued::default());
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_jobs_and_leaves_none_running() {
    let db = TestDb::new().await;
    let gate = Gate::new();
    let runner = spawn_runner(&db, gate.clone(), |s| {
        s.runner.workers = 4;
        s.runner.drain_timeout = Duration::from_secs(10);
    })
    .await;
    db.insert_jobs(20).await;
    gate.wait_entered(4).await;
    // Stop while four jobs are in flight; they finish during the drain, no new claims start.
    runner.stop_claiming();
    let stopping = tokio::spawn(runner.clone().shutdown());
    gate.open.add_permits(1000);
    let report = stopping.await.unwrap();
    assert_eq!(report.aborted, 0);
    assert_eq!(db.count("running").await, 0);
    assert_eq!(db.count("done").await, 4);
    assert_eq!(db.count("queued").await, 16);
}

#[tokio::test]
async fn a_drain_that_times_out_releases_claims_without_spending_attempts() {
    let db = TestDb::new().await;
    let gate = Gate::new();
    let runner = spawn_runner(&db, gate.clone(), |s| {
        s.runner.workers = 2;
        s.runner.drain_timeout = Duration::from_millis(200);
    })
    .await;
    let ids = db.insert_jobs(2).await;
    gate.wait_entered(2).await;
    // The gate never opens: both jobs are still running when the drain ends.
    let report = runner.shutdown().await;
    assert_eq!(report.aborted, 2);
    assert_eq!(report.released.requeued, 2);
    assert_eq!(db.count("running").await, 0);
    for id in ids {
        let job = db.job(id).await;
        assert_eq!((job.status.as_str(), job.attempts), ("queued", 0));
        assert!(job.locked_by.is_none());
    }
}

#[tokio::test]
async fn bad_payloads_fail_their_own_job_with_a_readable_reason() {
    let db = TestDb::new().await;
    let runner = spawn_passive(&db, Arc::new(SandboxHandler), |_| {}).await;
    let no_to = db
        .insert_payload(r#"{"message":{"type":"text","text":{"body":"hi"}}}"#)
        .await;
    // A raw SQL insert of text that is not a JSON object (jsonb itself refuses non-JSON text).
    let not_object = db.insert_payload(r#""to=15551234567&text=hello""#).await;
    let unknown_type = db
        .insert_payload(r#"{"to":"15551234567","message":{"type":"hologram","hologram":{}}}"#)
        .await;
    let good = db.insert_jobs(1).await[0];

    let report = runner.run_pass(10).await.unwrap();
    assert_eq!(report.processed, [good]);
    assert_eq!(report.failed.len(), 3);

    for (id, needle) in [
        (no_to, "payload has no `to`"),
        (not_object, "payload must be a JSON object"),
        (unknown_type, "unknown message type \"hologram\""),
    ] {
        let job = db.job(id).await;
        assert_eq!(job.status, "failed", "job {id}");
        assert_eq!(job.attempts, 1, "a bad payload is not retried");
        assert_eq!(job.last_error_code.as_deref(), Some("bad_payload"));
        let reason = job.last_error.unwrap();
        assert!(reason.contains(needle), "{reason}");
    }
    assert_eq!(db.job(good).await.status, "done", "the runner goes on");
    runner.shutdown().await;
}

#[tokio::test]
async fn a_job_that_outlives_job_timeout_is_retried() {
    let db = TestDb::new().await;
    let gate = Gate::new();
    let runner = spawn_passive(&db, gate, |s| {
        s.runner.job_timeout = Duration::from_millis(100);
    })
    .await;
    let id = db.insert_jobs(1).await[0];
    let report = runner.run_pass(1).await.unwrap();
    assert_eq!(report.retried, [id]);
    let job = db.job(id).await;
    assert_eq!(job.status, "queued");
    assert_eq!(job.last_error_code.as_deref(), Some("job_timeout"));
    runner.shutdown().await;
}

#[tokio::test]
async fn the_pruner_deletes_only_finished_jobs_past_retention() {
    let db = TestDb::new().await;
    let ids = db.insert_jobs(4).await;
    sqlx::query(
        r#"UPDATE "OutboundJob" SET status = 'done', "completedAt" = now() - interval '8 days'
           WHERE id = ANY($1)"#,
    )
    .bind(&ids[..2])
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        r#"UPDATE "OutboundJob" SET status = 'failed', "completedAt" = now() - interval '1 day'
           WHERE id = $1"#,
    )
    .bind(ids[2])
    .execute(&db.pool)
    .await
    .unwrap();
    let deleted = store::prune(&db.pool, Duration::from_secs(7 * 86400), 1000)
        .await
        .unwrap();
    assert_eq!(deleted, 2);
    let left: Vec<i64> = sqlx::query_scalar(r#"SELECT id FROM "OutboundJob" ORDER BY id"#)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, ids[2..]);
}

#[tokio::test]
async fn an_unknown_send_fails_the_job_per_on_unknown() {
    let db = TestDb::new().await;
    let handler = Scripted::new(vec![Err(JobError::new(
        Action::Unknown,
        "timeout",
        "no answer after the request was written",
    ))]);
    let runner = spawn_passive(&db, handler, |_| {}).await;
    let id = db.insert_jobs(1).await[0];
    let report = runner.run_pass(1).await.unwrap();
    assert_eq!(report.failed, [id]);
    let job = db.job(id).await;
    assert_eq!(job.status, "failed");
    assert_eq!(job.last_error_code.as_deref(), Some("delivery_unknown"));
    runner.shutdown().await;
}

#[tokio::test]
async fn one_insert_statement_sends_one_notification() {
    use sqlx::postgres::PgListener;
    let db = TestDb::new().await;
    let mut listener = PgListener::connect(&db.url).await.unwrap();
    listener
        .listen(outbound_runner::queue::CHANNEL)
        .await
        .unwrap();
    db.insert_jobs(100).await;
    db.insert_jobs(1).await;
    // An insert that inserts nothing runnable sends nothing.
    sqlx::query(r#"INSERT INTO "OutboundJob" (payload, status) VALUES ('{}', 'done')"#)
        .execute(&db.pool)
        .await
        .unwrap();
    let mut n = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await {
        n += 1;
    }
    assert_eq!(n, 2);
}

#[tokio::test]
async fn the_listener_reconnects_and_listens_again_after_the_connection_is_cut() {
    let db = TestDb::new().await;
    let proxy = Proxy::start(upstream_of(&db.url)).await;
    let runner = spawn_runner_at(
        &proxy.url_for(&db.url),
        None,
        Arc::new(SandboxHandler),
        |s| {
            // Only a notification can deliver a job quickly: the backstop is an hour away.
            s.runner.poll_interval = Duration::from_secs(3600);
        },
    )
    .await;
    let mut passes = runner.passes();
    wait_count(&mut passes, 1, Duration::from_secs(5)).await;
    assert!(runner.listening());

    // The database goes away and comes back: every connection, LISTEN's included, is gone.
    proxy.cut();
    proxy.restore();
    // Reconnecting wakes the dispatcher for a pass (notifications may have been missed).
    wait_count(&mut passes, 2, Duration::from_secs(10)).await;
    assert!(runner.listening());

    let mut finished = runner.finished();
    let id = db.insert_jobs(1).await[0];
    wait_count(&mut finished, 1, Duration::from_secs(2)).await;
    assert_eq!(db.job(id).await.status, "done");
    runner.shutdown().await;
}

#[tokio::test]
async fn lost_notifications_are_covered_by_the_interval() {
    let db = TestDb::new().await;
    let proxy = Proxy::start(upstream_of(&db.url)).await;
    // The pool goes straight to the database; only LISTEN goes through the proxy.
    let runner = spawn_runner_at(
        &db.url,
        Some(&proxy.url_for(&db.url)),
        Arc::new(SandboxHandler),
        |s| {
            s.runner.poll_interval = Duration::from_secs(2);
        },
    )
    .await;
    let mut passes = runner.passes();
    wait_count(&mut passes, 1, Duration::from_secs(5)).await;
    assert!(runner.listening());

    // LISTEN goes silent without an error: notifications stop arriving.
    proxy.stall();
    let mut finished = runner.finished();
    let started = Instant::now();
    let id = db.insert_jobs(1).await[0];
    wait_count(&mut finished, 1, Duration::from_secs(6)).await;
    assert_eq!(db.job(id).await.status, "done");
    assert!(
        started.elapsed() <= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let metrics = runner.render_metrics();
    assert!(
        metrics.contains("outbound_runner_wakeups_total{source=\"notify\"} 0"),
        "the job was not delivered by a notification"
    );
    proxy.restore();
    runner.shutdown().await;
}

#[tokio::test]
async fn only_leases_of_jobs_in_flight_are_extended() {
    let db = TestDb::new().await;
    let ids = db.insert_jobs(3).await;
    sqlx::query(
        r#"UPDATE "OutboundJob" SET status = 'running', attempts = 1, "lockedBy" = 'me:1:a',
                  "leaseUntil" = now() + interval '1 second' WHERE id = ANY($1)"#,
    )
    .bind(&ids)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(r#"UPDATE "OutboundJob" SET "lockedBy" = 'other:2:b' WHERE id = $1"#)
        .bind(ids[2])
        .execute(&db.pool)
        .await
        .unwrap();
    // In flight: ids[0] (ours) and ids[2] (someone else's, so untouched). ids[1] is a stranded
    // claim of ours that no task works on: it must be left to expire.
    let n = store::extend_leases(
        &db.pool,
        "me:1:a",
        &[ids[0].into(), ids[2].into()],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    let leases: Vec<f64> = sqlx::query_scalar(
        r#"SELECT EXTRACT(EPOCH FROM "leaseUntil" - now())::float8 FROM "OutboundJob" ORDER BY id"#,
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(leases[0] > 50.0, "{leases:?}");
    assert!(leases[1] < 2.0 && leases[2] < 2.0, "{leases:?}");
}

/// One connection, so `pg_prepared_statements` (per session) sees every execution.
async fn one_connection(db: &TestDb) -> outbound_runner::db::Pool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(db.connect_options())
        .await
        .unwrap()
        .into()
}

/// The daemon's pool (`db::pool`) on `options`, with one connection (a budget of two, less
/// LISTEN), so every statement meets it.
fn daemon_pool_of_one(options: sqlx::postgres::PgConnectOptions) -> outbound_runner::db::Pool {
    let mut settings = crate::support::test_settings();
    settings.database.max_connections = 2;
    let pool = outbound_runner::db::pool(&settings, options, false);
    assert_eq!(pool.pg().options().get_max_connections(), 1);
    pool
}

/// `times` claims of four jobs each by `planner-test`, each finding its four.
async fn claim_fours(pool: &outbound_runner::db::Pool, times: usize) {
    let me: Arc<str> = "planner-test".into();
    for _ in 0..times {
        let jobs = store::claim(pool, &me, Duration::from_secs(60), 4, 5)
            .await
            .unwrap();
        assert_eq!(jobs.len(), 4);
    }
}

/// How many times the claim on `pool`'s one connection ran on a generic plan and on a plan made
/// for its values.
async fn claim_plans(pool: &outbound_runner::db::Pool) -> (i64, i64) {
    // This statement is prepared too, and its text says what it looks for.
    sqlx::query_as(
        r#"SELECT generic_plans, custom_plans FROM pg_prepared_statements
           WHERE statement LIKE '%FOR UPDATE SKIP LOCKED%'
             AND statement NOT LIKE '%pg_prepared_statements%'"#,
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_claim_settles_on_a_cached_plan_instead_of_planning_every_time() {
    let db = TestDb::new().await;
    db.insert_jobs(200).await;
    sqlx::query(r#"ANALYZE "OutboundJob""#)
        .execute(&db.pool)
        .await
        .unwrap();
    let pool = one_connection(&db).await;
    claim_fours(&pool, 10).await;
    // PostgreSQL tries five custom plans, then keeps the generic one if it is no worse. With a
    // `LIMIT $n` it never was (estimated at a tenth of the table): every claim was planned anew.
    let (generic, custom) = claim_plans(&pool).await;
    assert_eq!(generic + custom, 10);
    assert!(
        generic >= 5,
        "the claim was planned {custom} times in 10 executions"
    );
}

/// The daemon's connections (`db::pool`) plan each statement once for any values and keep that
/// plan: the claim is never planned for its values. The operator's statements
/// (`Pool::custom_plans`: the console, the admin API, the CLI) are, in a transaction of their
/// own, and leave the connection as it was. A URL's own `options` decide instead of us.
#[tokio::test]
async fn the_daemon_keeps_generic_plans_and_plans_the_operators_statements_for_their_values() {
    let db = TestDb::new().await;
    db.insert_jobs(200).await;
    let pool = daemon_pool_of_one(db.connect_options());
    let mode = |p: outbound_runner::db::Pool| async move {
        sqlx::query_scalar::<_, String>("SELECT current_setting('plan_cache_mode')")
            .fetch_one(&p)
            .await
            .unwrap()
    };
    assert_eq!(mode(pool.clone()).await, "force_generic_plan");
    assert_eq!(mode(pool.custom_plans()).await, "force_custom_plan");
    assert_eq!(mode(pool.clone()).await, "force_generic_plan");

    claim_fours(&pool, 3).await;
    assert_eq!(claim_plans(&pool).await, (3, 0));

    // The operator's list, planned for its filter, on the same connection.
    let page = outbound_runner::queue::admin::QueueAdmin::new(pool.clone())
        .list(&outbound_runner::queue::admin::Filter {
            status: vec!["running".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.jobs.len(), 12);
    assert_eq!(mode(pool.clone()).await, "force_generic_plan");
    pool.close().await;

    let pool = daemon_pool_of_one(db.connect_options().options([("plan_cache_mode", "auto")]));
    assert_eq!(mode(pool.clone()).await, "auto");
    pool.close().await;
}

/// The daemon's statements take the connection used last (`db::warm`): after a burst opened
/// four connections, statements one at a time run on one backend (sqlx's own order went round
/// all four, each backend cold and planning each statement anew). A caller that needs a
/// connection of its own (`Pool::pg`, a transaction) is never kept waiting by the connection kept
/// idle for the next statement: with the other three held, it gets that one.
#[tokio::test]
async fn statements_one_at_a_time_reuse_the_connection_used_last() {
    let db = TestDb::new().await;
    let mut settings = crate::support::test_settings();
    settings.database.max_connections = 5;
    settings.database.connect_timeout = Duration::from_secs(3);
    let pool = outbound_runner::db::pool(&settings, db.connect_options(), false);
    let pid = |pool: outbound_runner::db::Pool, sql: &'static str| async move {
        sqlx::query_scalar::<_, i32>(sql)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let burst = futures_util::future::join_all(
        (0..4).map(|_| pid(pool.clone(), "SELECT pg_backend_pid() FROM pg_sleep(0.2)")),
    )
    .await;
    assert_eq!(burst.iter().collect::<HashSet<_>>().len(), 4, "{burst:?}");
    assert_eq!(pool.size(), 4);

    // The burst's connections went back to sqlx's pool (it was full); the first statement that
    // finds sqlx's pool with one idle keeps its connection, and from then on the same one serves.
    let mut last = 0;
    for _ in 0..8 {
        let now = pid(pool.clone(), "SELECT pg_backend_pid()").await;
        if now == last {
            break;
        }
        last = now;
    }
    let mut one_at_a_time = HashSet::from([last]);
    for _ in 0..8 {
        one_at_a_time.insert(pid(pool.clone(), "SELECT pg_backend_pid()").await);
    }
    assert_eq!(one_at_a_time.len(), 1, "{one_at_a_time:?}");

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            pool.pg()
                .begin()
                .await
                .expect("an idle connection of sqlx's pool"),
        );
    }
    let started = Instant::now();
    let fourth = pool.pg().begin().await;
    assert!(
        fourth.is_ok(),
        "the kept connection was not given back: {fourth:?} after {:?}",
        started.elapsed()
    );
    drop((held, fourth));
    pool.close().await;
}

/// The pruner's delete is planned for its cutoff, even on the daemon's connections (which keep
/// generic plans): with nothing old enough among thousands of finished rows it reads the
/// completion index, where a plan for any cutoff read the whole table twice (two sequential
/// scans, 155 ms on 500,000 rows).
#[tokio::test]
async fn the_pruner_reads_the_completion_index_on_the_daemons_connections() {
    let db = TestDb::new().await;
    db.insert_jobs(5000).await;
    sqlx::query(
        r#"UPDATE "OutboundJob" SET status = 'done', "completedAt" = now() - interval '1 hour'"#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    db.vacuum_jobs().await;
    let pool = daemon_pool_of_one(db.connect_options());
    // The counts of the pool's one connection, published before it next says it is ready.
    let seq_scans = || async {
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query_scalar::<_, i64>(
            "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'OutboundJob'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    let before = seq_scans().await;
    for _ in 0..3 {
        let pruned = store::prune(&pool, Duration::from_secs(86_400), 100_000)
            .await
            .unwrap();
        assert_eq!(pruned, 0);
    }
    assert_eq!(seq_scans().await, before, "the prune scanned the table");
    // Old enough: pruned, all of them.
    let pruned = store::prune(&pool, Duration::from_secs(60), 100_000)
        .await
        .unwrap();
    assert_eq!(pruned, 5000);
    pool.close().await;
}

/// The plan tests' set-up: statistics taken of the table as it is, then 64 jobs claimed by
/// `planner-test`.
async fn analyze_and_claim_64(db: &TestDb) -> store::Claimed {
    db.vacuum_jobs().await;
    let me: Arc<str> = "planner-test".into();
    let claimed = store::claim(&db.pool, &me, Duration::from_secs(60), 64, 5)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 64);
    claimed
}

#[tokio::test]
async fn the_completion_finds_jobs_by_primary_key_whatever_the_statistics_say() {
    let db = TestDb::new().await;
    // Statistics taken while nothing ran (they say: no running rows), then jobs claimed.
    let ids = db.insert_jobs(3000).await;
    sqlx::query(r#"UPDATE "OutboundJob" SET status = 'done', "completedAt" = now() WHERE id > $1"#)
        .bind(ids[99])
        .execute(&db.pool)
        .await
        .unwrap();
    analyze_and_claim_64(&db).await;

    // The plan the plan cache would keep after five executions (a generic plan).
    let mut conn = db.pool.pg().acquire().await.unwrap();
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(&format!(
        "PREPARE complete_check(text, text[], int[], text[], int[], text[], jsonb[], \
         text[], int[], text[]) AS {}",
        outbound_runner::runner::complete_sql(true, true)
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN EXECUTE complete_check('planner-test', '{1,2}', '{1,1}', '{}', '{}', '{}', '{}', \
         '{}', '{}', '{}')",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("OutboundJob_pkey"), "{plan}");
    // The lease index holds every running job: scanning it once per completed job made each
    // completion O(running × batch).
    assert!(!plan.contains("OutboundJob_lease_idx"), "{plan}");
}

#[tokio::test]
async fn claims_stop_while_completions_lag() {
    let db = TestDb::new().await;
    db.insert_jobs(200).await;
    // Sandbox completions insert into "OutboundMessage": a SHARE lock on it holds every
    // completion statement (the claims, which never touch it, go on).
    let mut blocker = db.pool.pg().begin().await.unwrap();
    sqlx::query(r#"LOCK TABLE "OutboundMessage" IN SHARE MODE"#)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let workers = 4;
    let runner = spawn_runner(&db, Arc::new(SandboxHandler), |s| {
        s.runner.workers = workers;
    })
    .await;
    let mut passes = runner.passes();
    wait_count(&mut passes, 1, Duration::from_secs(5)).await;
    // The completion statements held by the lock: the completer starts a second while the
    // first waits (its batch taken meanwhile), and no third.
    let blocked = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND wait_event_type = 'Lock' \
             AND query LIKE 'WITH%done AS (%'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    let statements = outbound_runner::runner::COMPLETION_STATEMENTS as i64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while blocked().await < statements {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the completer did not start {statements} statements while the first waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A window, because what is checked is that nothing more happens: without the bound the
    // dispatcher claimed all 200 jobs in a few milliseconds, each one waiting for the lock with
    // its lease running.
    runner.wake("test");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(blocked().await, statements, "completion statements at once");
    let running = db.count("running").await;
    assert!(
        // The workers' jobs, and the completions the dispatcher lets wait.
        (1..=(1 + outbound_runner::runner::COMPLETIONS_AHEAD as i64) * i64::from(workers))
            .contains(&running),
        "{running} jobs running with {workers} workers while completions were held"
    );
    assert_eq!(db.count("queued").await, 200 - running);

    blocker.rollback().await.unwrap();
    let mut finished = runner.finished();
    wait_count(&mut finished, 200, Duration::from_secs(20)).await;
    assert_eq!(db.count("done").await, 200);
    runner.shutdown().await;
}

/// The lines of a plan that read a batch's own rows again for every row of another input (a
/// `Function Scan` of the bound arrays or a `CTE Scan` looped more than once, or a join filter
/// that threw away more rows than the batch has): what made the fences quadratic in the batch
/// (docs/benchmarks.md, "Issue 27, second round").
fn quadratic_lines(plan: &str, batch: usize) -> Vec<String> {
    let loops = |l: &str| -> usize {
        l.split("loops=")
            .nth(1)
            .and_then(|r| r.trim_end_matches(')').parse().ok())
            .unwrap_or(1)
    };
    let removed = |l: &str| -> usize {
        l.split("Rows Removed by Join Filter: ")
            .nth(1)
            .and_then(|r| r.trim().parse().ok())
            .unwrap_or(0)
    };
    plan.lines()
        .filter(|l| {
            ((l.contains("Function Scan") || l.contains("CTE Scan")) && loops(l) > 1)
                || removed(l) > batch
        })
        .map(str::to_string)
        .collect()
}

/// Runs `explain` (an `EXPLAIN ANALYZE` of the prepared statement `name`), then deallocates it;
/// the plan as text.
async fn explain_once(conn: &mut sqlx::PgConnection, explain: &str, name: &str) -> String {
    let plan: Vec<String> = sqlx::query_scalar(explain)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    sqlx::query(&format!("DEALLOCATE {name}"))
        .execute(&mut *conn)
        .await
        .unwrap();
    plan.join("\n")
}

/// The statement did its work (its top node wrote a row for each of the `batch`) and read its
/// batch once ([`quadratic_lines`]).
fn assert_reads_batch_once(plan: &str, batch: usize, what: &str) {
    assert!(
        plan.lines()
            .next()
            .unwrap_or("")
            .contains(&format!("rows={batch} ")),
        "{what}: not every row was written:\n{plan}"
    );
    let bad = quadratic_lines(plan, batch);
    assert!(
        bad.is_empty(),
        "{what}: reads its batch once per row: {bad:?}\n{plan}"
    );
}

/// The plan finds the rows of `"OutboundMessage"` it writes or returns by their keys: it reads
/// no part of the table beyond its batch (no sequential scan, no index scan that filters out
/// more rows than the batch, no scan of the wamid index).
fn assert_finds_messages_by_key(plan: &str, batch: usize, what: &str) {
    let removed = |l: &str| -> usize {
        l.split("Rows Removed by Filter: ")
            .nth(1)
            .and_then(|r| r.trim().parse().ok())
            .unwrap_or(0)
    };
    let bad: Vec<&str> = plan
        .lines()
        .filter(|l| {
            l.contains(r#"Seq Scan on "OutboundMessage""#)
                || l.contains("OutboundMessage_wamid_key")
                || removed(l) > batch
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: reads messages beyond its batch: {bad:?}\n{plan}"
    );
}

/// The batched statements read their batch once, whatever the plan: the fence conditions make
/// every plan expect one running row, and a join of the jobs with the batch became a nested
/// loop that read the whole batch once per job. And they find the messages they touch by key:
/// a generic plan made on statistics taken while `"OutboundMessage"` was empty read the whole
/// table, and the wamid index's entries of every message once without a wamid, on every
/// prepare. Checked with 64 jobs beside 2,000 sent messages, on custom and generic plans, for
/// the prepare (of new rows, then of existing ones), the completion, the marks and the wamids
/// (each run in a transaction rolled back).
#[tokio::test]
async fn the_batched_statements_read_their_batch_once_whatever_the_plan() {
    let db = TestDb::new().await;
    db.insert_jobs(3000).await;
    // 2,000 earlier jobs' messages, sent (each with the dead version it had before its wamid),
    // on statistics that say the table is empty.
    for sql in [
        r#"ANALYZE "OutboundMessage""#,
        r#"UPDATE "OutboundJob" SET status = 'done', "completedAt" = now()
           WHERE id IN (SELECT id FROM "OutboundJob" ORDER BY id DESC LIMIT 2000)"#,
        r#"INSERT INTO "OutboundMessage" ("jobId", seq, status, "to", body)
           SELECT id, 0, 'sending', '15550000000', '{}' FROM "OutboundJob" WHERE status = 'done'"#,
        r#"UPDATE "OutboundMessage" SET status = 'sent', wamid = 'wamid.old.' || id"#,
    ] {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }
    let claimed = analyze_and_claim_64(&db).await;
    let n = claimed.jobs.len();
    // An array literal of SQL.
    let array = |items: Vec<String>| format!("'{{{}}}'", items.join(","));
    let ids = array(claimed.jobs.iter().map(|j| j.id.to_string()).collect());
    let attempts = array(
        claimed
            .jobs
            .iter()
            .map(|j| j.attempts.to_string())
            .collect(),
    );
    let fill = |v: &str| format!("array_fill({v}, ARRAY[{n}])");
    let wamids = array((0..n).map(|i| format!("wamid.check.{i}")).collect());
    for mode in ["force_custom_plan", "force_generic_plan"] {
        let mut conn = db.pool.pg().acquire().await.unwrap();
        sqlx::query(&format!("SET plan_cache_mode = {mode}"))
            .execute(&mut *conn)
            .await
            .unwrap();
        // The completion, with or without live sends' wamids (`accepted`: their job ids, seqs
        // and wamids, as SQL).
        let completion = |what: &'static str, live: bool, accepted: String| {
            (
                what,
                format!(
                    "PREPARE batch_check(text, text[], int[], text[], int[], text[], jsonb[], \
                     text[], int[], text[]) AS {}",
                    outbound_runner::runner::complete_sql(false, live)
                ),
                format!(
                    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) EXECUTE batch_check(\
                     'planner-test', {ids}, {attempts}, '{{}}', '{{}}', '{{}}', '{{}}', {accepted})"
                ),
            )
        };
        let statements = [
            (
                "the prepare",
                format!(
                    "PREPARE batch_check(text[], text[], int[], jsonb[], text[], text[], int[], \
                     jsonb[], text[], int[], bool[], bool) AS {}",
                    outbound_runner::delivery::ledger::prepare_sql(false)
                ),
                format!(
                    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) EXECUTE batch_check({ids}, {}, \
                     {attempts}, {}, {}, {ids}, {}, {}, {}, {}, {}, false)",
                    fill("'planner-test'::text"),
                    fill("NULL::jsonb"),
                    fill("'15550000000'::text"),
                    fill("0"),
                    fill(r#"'{"type": "text", "text": {"body": "hi"}}'::jsonb"#),
                    fill("'phone'::text"),
                    fill("0"),
                    fill("false"),
                ),
            ),
            completion("the completion", false, "'{}', '{}', '{}'".to_string()),
            completion(
                "the completion of live sends",
                true,
                format!("{ids}, {}, {wamids}", fill("0")),
            ),
        ];
        for (what, prepare, explain) in &statements {
            sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
            if *what == "the completion of live sends" {
                // Each job's message marked `sending` by the prepare, its wamid come back.
                for sql in [&statements[0].1, &statements[0].2] {
                    let sql = sql
                        .replacen("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) ", "", 1)
                        .replacen("batch_check", "make_rows", 1);
                    sqlx::query(&sql).execute(&mut *conn).await.unwrap();
                }
            }
            sqlx::query(prepare).execute(&mut *conn).await.unwrap();
            if *what == "the prepare" {
                // The rows exist already (an earlier attempt made them): the prepare marks
                // them instead of inserting.
                sqlx::query(&explain.replacen("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) ", "", 1))
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                sqlx::query(
                    r#"UPDATE "OutboundMessage" SET status = 'pending' WHERE wamid IS NULL"#,
                )
                .execute(&mut *conn)
                .await
                .unwrap();
            }
            let plan = explain_once(&mut conn, explain, "batch_check").await;
            sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
            assert_reads_batch_once(&plan, n, &format!("{what}, {mode}"));
            assert_finds_messages_by_key(&plan, n, &format!("{what}, {mode}"));
        }

        // A later message's mark and its wamid (a job of several messages): the rows made by
        // a prepare without marks, marked, then recorded sent.
        let create = statements[0]
            .2
            .replacen("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) ", "", 1);
        let fence = format!(
            "{ids}, {}, {attempts}, {}",
            fill("'planner-test'::text"),
            fill("0")
        );
        sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
        sqlx::query(&statements[0].1)
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query(&create.replacen(
            &format!("{}, {}, false)", fill("0"), fill("false")),
            &format!("{}, {}, false)", fill("NULL::int"), fill("false")),
            1,
        ))
        .execute(&mut *conn)
        .await
        .unwrap();
        for (what, sql, arg_type, arg) in [
            (
                "the marks",
                outbound_runner::delivery::ledger::mark_sending_sql(),
                "bool",
                fill("false"),
            ),
            (
                "the wamids",
                outbound_runner::delivery::ledger::record_sent_sql(),
                "text",
                wamids.clone(),
            ),
        ] {
            sqlx::query(&format!(
                "PREPARE message_check(text[], text[], int[], int[], {arg_type}[]) AS {sql}"
            ))
            .execute(&mut *conn)
            .await
            .unwrap();
            let plan = explain_once(
                &mut conn,
                &format!(
                    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) EXECUTE message_check({fence}, {arg})"
                ),
                "message_check",
            )
            .await;
            assert_reads_batch_once(&plan, n, &format!("{what}, {mode}"));
            assert_finds_messages_by_key(&plan, n, &format!("{what}, {mode}"));
        }
        sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
        sqlx::query("DEALLOCATE batch_check")
            .execute(&mut *conn)
            .await
            .unwrap();
    }
}
