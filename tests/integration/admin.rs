//! Operator actions (`queue::admin`, `outbound-runner jobs`, `/api/admin/jobs…`) against a real
//! PostgreSQL: each action, the races with runners, bad input, paging, and the API's auth.

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use outbound_runner::queue::admin::{self, Actor, AdminError, Filter, Settled};
use outbound_runner::queue::{JobError, JobId};
use secrecy::SecretString;

use crate::support::app::{App, json, spawn_app};
use crate::support::handlers::{Counting, Gate, Scripted};
use crate::support::{TestDb, spawn_passive};

const ADMIN: &str = "admin-token-for-tests";

fn by(dry_run: bool) -> Actor<'static> {
    Actor {
        by: "test",
        dry_run,
    }
}

fn code(c: &str) -> Filter {
    Filter {
        code: Some(c.into()),
        ..Filter::default()
    }
}

/// `n` jobs that ran once and failed on their last attempt with a transient 131000 (the way a
/// Meta outage leaves them). Returns their ids.
async fn failed_batch(db: &TestDb, n: usize) -> Vec<i64> {
    let ids = db.insert_jobs(n).await;
    sqlx::query(r#"UPDATE "OutboundJob" SET "maxAttempts" = 1 WHERE id = ANY($1)"#)
        .bind(&ids)
        .execute(&db.pool)
        .await
        .unwrap();
    let script = (0..n)
        .map(|_| Err(JobError::retry("131000", "Something went wrong")))
        .collect();
    let runner = spawn_passive(db, Scripted::new(script), |_| {}).await;
    let report = runner.run_pass(n as u32).await.unwrap();
    assert_eq!(report.failed.len(), n);
    runner.shutdown().await;
    ids
}

async fn history(db: &TestDb, id: i64) -> serde_json::Value {
    sqlx::query_scalar(r#"SELECT history FROM "OutboundJob" WHERE id = $1"#)
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn max_attempts(db: &TestDb, id: i64) -> Option<i32> {
    sqlx::query_scalar(r#"SELECT "maxAttempts" FROM "OutboundJob" WHERE id = $1"#)
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Messages recorded per job (sandbox sends are recorded with the completion).
async fn sent_messages(db: &TestDb, id: i64) -> i64 {
    sqlx::query_scalar(
        r#"SELECT count(*) FROM "OutboundMessage" WHERE "jobId" = $1 AND status = 'sent'"#,
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn retry_requeues_a_failed_batch_wakes_the_runners_and_the_jobs_complete() {
    use sqlx::postgres::PgListener;
    let db = TestDb::new().await;
    let ids = failed_batch(&db, 5).await;
    let other = db.insert_jobs(1).await[0];
    for id in &ids {
        assert_eq!(db.job(*id).await.last_error_code.as_deref(), Some("131000"));
    }

    // The dry run counts and changes nothing.
    let dry = admin::retry(&db.pool, &code("131000"), &by(true), false, 5)
        .await
        .unwrap();
    assert_eq!((dry.matched, dry.retried, dry.dry_run), (5, 5, true));
    assert_eq!(dry.ids, ids);
    assert_eq!(db.count("failed").await, 5);

    let mut listener = PgListener::connect(&db.url).await.unwrap();
    listener
        .listen(outbound_runner::queue::CHANNEL)
        .await
        .unwrap();
    let report = admin::retry(&db.pool, &code("131000"), &by(false), false, 5)
        .await
        .unwrap();
    assert_eq!((report.matched, report.retried), (5, 5));
    assert_eq!((report.skipped_sent, report.skipped_in_doubt), (0, 0));
    // One notification for the statement, at its commit.
    tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a retry wakes the runners")
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.recv())
            .await
            .is_err(),
        "one NOTIFY per statement"
    );
    for id in &ids {
        let job = db.job(*id).await;
        assert_eq!(job.status, "queued");
        // Attempts are kept (the fence); the allowance is fresh: attempts + the original limit.
        assert_eq!(job.attempts, 1);
        assert_eq!(max_attempts(&db, *id).await, Some(2));
        assert_eq!(job.last_error_code, None);
        assert!(!job.completed && job.locked_by.is_none());
        let h = history(&db, *id).await;
        assert_eq!(h[0]["action"], "retry");
        assert_eq!(h[0]["by"], "test");
        assert_eq!(h[0]["status"], "failed");
        assert_eq!(h[0]["lastErrorCode"], "131000");
        assert_eq!(h[0]["maxAttempts"], 1);
    }
    assert_eq!(db.job(other).await.status, "queued");
    assert_eq!(history(&db, other).await, serde_json::json!([]));

    let counting = Arc::new(Counting::default());
    let runner = spawn_passive(&db, counting.clone(), |_| {}).await;
    let pass = runner.run_pass(10).await.unwrap();
    assert_eq!(pass.processed.len(), 6);
    for id in &ids {
        assert_eq!(db.job(*id).await.status, "done");
        assert_eq!(sent_messages(&db, *id).await, 1);
    }
    // A second retry finds nothing to do: done jobs are not failed ones.
    let again = admin::retry(&db.pool, &code("131000"), &by(false), false, 5)
        .await
        .unwrap();
    assert_eq!((again.matched, again.retried), (0, 0));
    // A job failing again after its retry keeps its history and fails on its new allowance.
    let show = admin::show(&db.pool, &ids[0].into()).await.unwrap();
    assert!(
        show.timeline
            .iter()
            .any(|e| e.event.starts_with("retry by test")),
        "{:?}",
        show.timeline
    );
    assert!(show.timeline.iter().any(|e| e.event.starts_with("done")));
    runner.shutdown().await;
}

/// A failed job with one message in `status` (and a wamid when sent).
async fn failed_with_message(db: &TestDb, status: &str, code: &str) -> i64 {
    let id = db.insert_jobs(1).await[0];
    sqlx::query(
        r#"UPDATE "OutboundJob" SET status = 'failed', attempts = 1, "completedAt" = now(),
               "lastErrorCode" = $2, "lastError" = 'x', "lockedBy" = 'gone:1:1'
           WHERE id = $1"#,
    )
    .bind(id)
    .bind(code)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        r#"INSERT INTO "OutboundMessage" ("jobId", seq, status, "to", body, wamid, "sentAt")
           VALUES ($1, 0, $2, '15550000001', '{"type":"text","text":{"body":"hi"}}',
                   CASE WHEN $2 = 'sent' THEN 'wamid.test.' || $1 END,
                   CASE WHEN $2 = 'sent' THEN now() END)"#,
    )
    .bind(id)
    .bind(status)
    .execute(&db.pool)
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn retry_never_resends_a_sent_message_unless_asked_and_never_one_in_doubt() {
    let db = TestDb::new().await;
    let sent = failed_with_message(&db, "sent", "131000").await;
    let unknown = failed_with_message(&db, "unknown", "131000").await;
    let failed = failed_with_message(&db, "failed", "131000").await;

    let report = admin::retry(&db.pool, &code("131000"), &by(false), false, 5)
        .await
        .unwrap();
    assert_eq!(report.matched, 3);
    assert_eq!(report.retried, 1);
    assert_eq!(report.ids, vec![failed]);
    assert_eq!((report.skipped_sent, report.skipped_in_doubt), (1, 1));
    assert_eq!(db.job(sent).await.status, "failed");
    assert_eq!(db.job(unknown).await.status, "failed");

    // --resend-sent: the sent message's ledger row goes, its wamid kept in the history.
    let report = admin::retry(&db.pool, &code("131000"), &by(false), true, 5)
        .await
        .unwrap();
    assert_eq!(report.retried, 1);
    assert_eq!(report.ids, vec![sent]);
    assert_eq!(report.resent_messages, 1);
    assert_eq!(
        report.skipped_in_doubt, 1,
        "an unknown message is never resent"
    );
    let rows: i64 =
        sqlx::query_scalar(r#"SELECT count(*) FROM "OutboundMessage" WHERE "jobId" = $1"#)
            .bind(sent)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows, 0);
    let h = history(&db, sent).await;
    assert_eq!(
        h[0]["resentWamids"][0]["wamid"],
        format!("wamid.test.{sent}")
    );

    // The retried job's stale owner ("gone:1:1", attempt 1) can never write again: the next
    // claim is attempt 2, and a write fenced on attempt 1 matches nothing.
    let stale = outbound_runner::queue::Fence {
        id: failed.into(),
        locked_by: "gone:1:1".into(),
        attempts: 1,
    };
    assert!(
        !outbound_runner::queue::store::fail(&db.pool, &stale, "x", "y")
            .await
            .unwrap()
    );
    assert_eq!(db.job(failed).await.status, "queued");

    // The resent one runs to the end, recording its message anew (the sandbox records sends
    // with the completion); the unknown one waits for an operator.
    let runner = spawn_passive(&db, Arc::new(Counting::default()), |_| {}).await;
    let processed = runner.run_pass(10).await.unwrap().processed;
    assert!(processed.contains(&sent.into()), "{processed:?}");
    assert_eq!(sent_messages(&db, sent).await, 1);
    assert_eq!(db.job(unknown).await.status, "failed");
    runner.shutdown().await;
}

#[tokio::test]
async fn retry_counts_a_message_a_status_webhook_moved_on_as_sent() {
    // Meta's status webhooks move a sent message to delivered or read, or fail it later with
    // its wamid kept: each was accepted by Meta once, so a plain retry must not send it again.
    let db = TestDb::new().await;
    let mut ids = Vec::new();
    for status in ["delivered", "read", "failed"] {
        let id = failed_with_message(&db, status, "131026").await;
        sqlx::query(
            r#"UPDATE "OutboundMessage" SET wamid = 'wamid.meta.' || "jobId", "sentAt" = now()
               WHERE "jobId" = $1"#,
        )
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
        ids.push(id);
    }
    let report = admin::retry(&db.pool, &code("131026"), &by(false), false, 5)
        .await
        .unwrap();
    assert_eq!(report.matched, 3);
    assert_eq!(report.retried, 0, "{report:?}");
    assert_eq!(report.skipped_sent, 3);
    for id in &ids {
        assert_eq!(db.job(*id).await.status, "failed");
    }
    // Asked to resend, the three go back to the queue with their ledger rows cleared.
    let report = admin::retry(&db.pool, &code("131026"), &by(false), true, 5)
        .await
        .unwrap();
    assert_eq!((report.retried, report.resent_messages), (3, 3));
}

#[tokio::test]
async fn cancel_takes_queued_jobs_and_asks_running_ones_to_stop_without_touching_their_claim() {
    let db = TestDb::new().await;
    let gate = Gate::new();
    let runner = spawn_passive(&db, gate.clone(), |_| {}).await;
    let ids = db.insert_jobs(3).await;
    let pass = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.run_pass(1).await.unwrap() })
    };
    gate.wait_entered(1).await;
    let running = ids[0];
    let before = db.job(running).await;
    assert_eq!(before.status, "running");

    let all_three = Filter {
        ids: ids.iter().map(|&i| i.into()).collect(),
        ..Filter::default()
    };
    let dry = admin::cancel(&db.pool, &all_three, &by(true))
        .await
        .unwrap();
    assert_eq!((dry.matched, dry.cancelled, dry.running), (3, 2, 1));
    assert_eq!(db.count("queued").await, 2);
    assert!(!cancel_requested(&db, running).await);

    let report = admin::cancel(&db.pool, &all_three, &by(false))
        .await
        .unwrap();
    assert_eq!((report.cancelled, report.running), (2, 1));
    assert_eq!(report.ids, ids[1..].to_vec());
    assert_eq!(report.running_ids, vec![running]);
    // The running job is asked to stop; its claim and fence are untouched.
    let after = db.job(running).await;
    assert_eq!(after.status, "running");
    assert_eq!(after.locked_by, before.locked_by);
    assert_eq!(after.attempts, before.attempts);
    assert!(cancel_requested(&db, running).await);
    assert_eq!(history(&db, running).await[0]["action"], "cancel requested");
    for id in &ids[1..] {
        let job = db.job(*id).await;
        assert_eq!(job.status, "cancelled");
        assert!(
            job.completed,
            "the pruner finds cancelled jobs by completedAt"
        );
        assert_eq!(job.last_error_code.as_deref(), Some("cancelled"));
        assert_eq!(history(&db, *id).await[0]["status"], "queued");
    }
    // The sandbox records its message with the completion: the job was delivered, it is done.
    gate.open.add_permits(1);
    let report = pass.await.unwrap();
    assert_eq!(report.processed, vec![running]);
    assert_eq!(db.job(running).await.status, "done");
    // Nothing left to claim: cancelled jobs never run.
    gate.open.add_permits(10);
    assert!(runner.run_pass(10).await.unwrap().processed.is_empty());

    // A cancelled job can be retried, and then runs.
    let r = admin::retry(
        &db.pool,
        &Filter {
            status: vec!["cancelled".into()],
            ..Filter::default()
        },
        &by(false),
        false,
        5,
    )
    .await
    .unwrap();
    assert_eq!(r.retried, 2);
    assert_eq!(runner.run_pass(10).await.unwrap().processed.len(), 2);
    runner.shutdown().await;
}

async fn cancel_requested(db: &TestDb, id: i64) -> bool {
    sqlx::query_scalar(r#"SELECT "cancelRequestedAt" IS NOT NULL FROM "OutboundJob" WHERE id = $1"#)
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Live delivery: a job of two messages is cancelled while its first is in flight. The first
/// send is not cut (Meta has it, its wamid is recorded); the second is never sent; the job ends
/// `cancelled`, not retried.
#[tokio::test]
async fn a_running_job_asked_to_stop_finishes_its_send_and_sends_nothing_more() {
    use crate::support::mock_meta::{self, MockMeta, Reply};
    use outbound_runner::config::DeliveryMode;
    use outbound_runner::delivery::live::LiveHandler;

    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let handler = Arc::new(LiveHandler::new(&crate::support::test_settings()).unwrap());
    let runner = spawn_passive(&db, handler, |s| {
        s.delivery.mode = DeliveryMode::Live;
        s.whatsapp.api_base = meta.api_base();
        s.whatsapp.phone_number_id = mock_meta::PHONE_NUMBER_ID.into();
        s.whatsapp.access_token = Some(mock_meta::TOKEN.to_string().into());
        s.whatsapp.timeout = Duration::from_secs(5);
        s.whatsapp.pair_interval = Duration::ZERO;
    })
    .await;
    meta.script([Reply::Hold]);
    let id = db
        .insert_payload(
            r#"{"to":"15551239001","message":[{"type":"text","text":{"body":"one"}},
                                             {"type":"text","text":{"body":"two"}}]}"#,
        )
        .await;
    let pass = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.run_pass(1).await.unwrap() })
    };
    // The first message is with Meta; its answer is held.
    crate::support::wait_count(&mut meta.recorded(), 1, Duration::from_secs(10)).await;
    let report = admin::cancel(
        &db.pool,
        &Filter {
            ids: vec![id.into()],
            ..Filter::default()
        },
        &by(false),
    )
    .await
    .unwrap();
    assert_eq!((report.cancelled, report.running), (0, 1));
    meta.release(1);
    let pass = tokio::time::timeout(Duration::from_secs(20), pass)
        .await
        .expect("the attempt ends")
        .unwrap();
    assert!(pass.processed.is_empty() && pass.failed.is_empty());

    let job = db.job(id).await;
    assert_eq!(job.status, "cancelled");
    assert_eq!(job.last_error_code.as_deref(), Some("cancelled"));
    assert!(
        job.last_error
            .as_deref()
            .unwrap()
            .starts_with("stopped at an operator's request"),
        "{:?}",
        job.last_error
    );
    assert!(job.completed);
    assert_eq!(
        meta.accepted_for(id).len(),
        1,
        "the second message was never sent"
    );
    let statuses: Vec<(i32, String, Option<String>)> = sqlx::query_as(
        r#"SELECT seq, status, wamid FROM "OutboundMessage" WHERE "jobId" = $1 ORDER BY seq"#,
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(statuses.len(), 2);
    assert_eq!(statuses[0].1, "sent", "the send in flight was not cut");
    assert!(statuses[0].2.is_some());
    assert_eq!(statuses[1].1, "pending");
    // Nothing runs it again.
    db.make_due().await;
    assert!(runner.run_pass(10).await.unwrap().processed.is_empty());
    assert_eq!(meta.accepted_for(id).len(), 1);
    runner.shutdown().await;
}

#[tokio::test]
async fn a_retry_racing_runners_runs_each_job_exactly_once() {
    let db = TestDb::new().await;
    let ids = failed_batch(&db, 200).await;
    let counting = Arc::new(Counting::default());
    let runner = spawn_passive(&db, counting.clone(), |s| s.runner.workers = 8).await;
    // Two retries of the same jobs race each other and passes that claim what they requeue.
    let retry = |db_pool: outbound_runner::db::Pool| async move {
        let mut total = 0;
        for chunk in 0..4 {
            let f = Filter {
                code: Some("131000".into()),
                limit: Some(60 + chunk),
                ..Filter::default()
            };
            total += admin::retry(&db_pool, &f, &by(false), false, 5)
                .await
                .unwrap()
                .retried;
        }
        total
    };
    let passes = {
        let runner = runner.clone();
        let db_pool = db.pool.clone();
        tokio::spawn(async move {
            let mut done = 0;
            for _ in 0..400 {
                done += runner.run_pass(50).await.unwrap().processed.len();
                let failed: i64 = sqlx::query_scalar(
                    r#"SELECT count(*) FROM "OutboundJob" WHERE status <> 'done'"#,
                )
                .fetch_one(&db_pool)
                .await
                .unwrap();
                if failed == 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            done
        })
    };
    let (a, b) = tokio::join!(retry(db.pool.clone()), retry(db.pool.clone()));
    assert_eq!(
        a + b,
        200,
        "every failed job is retried once, by one of the two"
    );
    let done = tokio::time::timeout(Duration::from_secs(60), passes)
        .await
        .expect("the passes finish")
        .unwrap();
    assert_eq!(done, 200);
    assert_eq!(db.count("done").await, 200);
    let runs = counting.runs.lock().unwrap().clone();
    for id in &ids {
        assert_eq!(
            runs.get(&(*id).into()),
            Some(&1),
            "job {id} ran once after its retry"
        );
        assert_eq!(sent_messages(&db, *id).await, 1);
    }
    runner.shutdown().await;
}

#[tokio::test]
async fn a_cancel_racing_claims_leaves_each_job_cancelled_or_run_never_both() {
    let db = TestDb::new().await;
    let ids = db.insert_jobs(300).await;
    let counting = Arc::new(Counting::default());
    let runner = spawn_passive(&db, counting.clone(), |s| s.runner.workers = 8).await;
    let pass = {
        let runner = runner.clone();
        tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..20 {
                n += runner.run_pass(30).await.unwrap().processed.len();
            }
            n
        })
    };
    let mut cancelled = 0;
    for chunk in ids.chunks(50) {
        let f = Filter {
            ids: chunk.iter().map(|&i| i.into()).collect(),
            ..Filter::default()
        };
        cancelled += admin::cancel(&db.pool, &f, &by(false))
            .await
            .unwrap()
            .cancelled;
    }
    let processed = pass.await.unwrap() as i64;
    // Whatever was left queued after the cancels (none) or running.
    runner.run_pass(300).await.unwrap();
    assert_eq!(db.count("cancelled").await, cancelled);
    assert_eq!(db.count("done").await + cancelled, 300);
    assert!(processed <= 300 - cancelled);
    let runs = counting.runs.lock().unwrap().clone();
    let cancelled_ids: Vec<i64> =
        sqlx::query_scalar(r#"SELECT id FROM "OutboundJob" WHERE status = 'cancelled'"#)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    for id in cancelled_ids {
        assert_eq!(runs.get(&id.into()), None, "cancelled job {id} never ran");
        assert_eq!(sent_messages(&db, id).await, 0);
    }
    runner.shutdown().await;
}

#[tokio::test]
async fn settle_decides_unknown_messages_and_moves_the_job_accordingly() {
    let db = TestDb::new().await;
    let a = failed_with_message(&db, "unknown", "delivery_unknown").await;
    let b = failed_with_message(&db, "unknown", "delivery_unknown").await;

    let r = admin::settle(
        &db.pool,
        &a.into(),
        None,
        Settled::Sent,
        Some("wamid.op.1"),
        "test",
    )
    .await
    .unwrap();
    assert_eq!(
        (r.messages.clone(), r.job_status.as_str()),
        (vec![0], "done")
    );
    let job = db.job(a).await;
    assert_eq!((job.status.as_str(), job.last_error_code), ("done", None));
    assert_eq!(sent_messages(&db, a).await, 1);
    assert_eq!(
        history(&db, a).await[0]["lastErrorCode"],
        "delivery_unknown"
    );
    // Nothing left to settle.
    assert!(matches!(
        admin::settle(&db.pool, &a.into(), None, Settled::Sent, None, "test").await,
        Err(AdminError::Conflict(_))
    ));

    // A wamid recorded elsewhere is refused.
    assert!(matches!(
        admin::settle(
            &db.pool,
            &b.into(),
            None,
            Settled::Sent,
            Some("wamid.op.1"),
            "test"
        )
        .await,
        Err(AdminError::Conflict(_))
    ));
    let r = admin::settle(&db.pool, &b.into(), Some(0), Settled::Failed, None, "test")
        .await
        .unwrap();
    assert_eq!(r.job_status, "failed");
    assert_eq!(
        db.job(b).await.last_error_code.as_deref(),
        Some("settled_failed")
    );
    // Settled as failed, the job can be retried, and the message is sent.
    let retried = admin::retry(&db.pool, &code("settled_failed"), &by(false), false, 5)
        .await
        .unwrap();
    assert_eq!(retried.ids, vec![b]);

    // Not a job to settle: missing, or not finished.
    assert!(matches!(
        admin::settle(&db.pool, &999_999.into(), None, Settled::Sent, None, "test").await,
        Err(AdminError::NotFound(_))
    ));
    assert!(matches!(
        admin::settle(&db.pool, &b.into(), None, Settled::Sent, None, "test").await,
        Err(AdminError::Conflict(m)) if m.contains("queued")
    ));
}

fn invalid<T: std::fmt::Debug>(r: Result<T, AdminError>) -> String {
    match r {
        Err(AdminError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_input_is_refused_with_a_reason() {
    let db = TestDb::new().await;
    let ids = failed_batch(&db, 2).await;
    let m = invalid(
        Filter {
            status: vec!["finished".into()],
            ..Filter::default()
        }
        .validate(),
    );
    assert!(m.contains("unknown status"), "{m}");
    let m = invalid(admin::retry(&db.pool, &Filter::default(), &by(false), false, 5).await);
    assert!(m.contains("would touch every job"), "{m}");
    let m = invalid(admin::cancel(&db.pool, &Filter::default(), &by(false)).await);
    assert!(m.contains("would touch every job"), "{m}");
    let m = invalid(
        admin::retry(
            &db.pool,
            &Filter {
                status: vec!["done".into()],
                ..Filter::default()
            },
            &by(false),
            false,
            5,
        )
        .await,
    );
    assert!(m.contains("not done"), "{m}");
    assert_eq!(db.count("failed").await, 2);
    // `all` makes the empty filter explicit.
    let all = Filter {
        all: true,
        ..Filter::default()
    };
    assert_eq!(
        admin::retry(&db.pool, &all, &by(true), false, 5)
            .await
            .unwrap()
            .retried,
        2
    );
    // Ids that do not exist match nothing; show says so.
    let missing = Filter {
        ids: vec![(ids[1] + 1000).into()],
        ..Filter::default()
    };
    let r = admin::retry(&db.pool, &missing, &by(false), false, 5)
        .await
        .unwrap();
    assert_eq!((r.matched, r.retried), (0, 0));
    assert!(matches!(
        admin::show(&db.pool, &(ids[1] + 1000).into()).await,
        Err(AdminError::NotFound(_))
    ));
    let m = invalid(
        admin::list(
            &db.pool,
            &Filter {
                limit: Some(admin::MAX_PAGE + 1),
                ..Filter::default()
            },
        )
        .await,
    );
    assert!(m.contains("page"), "{m}");
}

#[tokio::test]
async fn large_result_sets_are_paged() {
    let db = TestDb::new().await;
    db.insert_jobs(2500).await;
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = admin::list(
            &db.pool,
            &Filter {
                status: vec!["queued".into()],
                limit: Some(1000),
                cursor,
                ..Filter::default()
            },
        )
        .await
        .unwrap();
        pages += 1;
        assert!(page.jobs.len() <= 1000);
        seen.extend(page.jobs.iter().map(|j| j.id.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let seen: Vec<i64> = seen.iter().map(|id| id.as_str().parse().unwrap()).collect();
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(sorted, seen, "newest first, no job twice");
    assert_eq!(seen.len(), 2500);
    // Filters narrow: one recipient.
    let page = admin::list(
        &db.pool,
        &Filter {
            to: Some("+15550000007".into()),
            ..Filter::default()
        }
        .validate()
        .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(page.jobs.len(), 1);
    assert_eq!(page.jobs[0].to.as_deref(), Some("15550000007"));
}

// --- the admin API ---

async fn admin_app() -> App {
    spawn_app(Arc::new(Counting::default()), |s| {
        s.http.admin_token = Some(SecretString::from(ADMIN))
    })
    .await
}

#[tokio::test]
async fn the_admin_api_needs_its_bearer_token_and_never_one_in_the_url() {
    let app = admin_app().await;
    let url = app.url("/api/admin/jobs");
    let (status, body) = json(app.client.get(&url).send().await.unwrap()).await;
    assert_eq!((status, body["ok"].clone()), (401, false.into()));
    let (status, _) = json(
        app.client
            .get(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    // Another endpoint's token is not the admin token.
    let (status, _) = json(
        app.client
            .get(&url)
            .bearer_auth(crate::support::app::TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    // In the query string: refused, even with the right header.
    for q in ["token", "access_token"] {
        let (status, body) = json(
            app.client
                .get(app.url(&format!("/api/admin/jobs?{q}={ADMIN}")))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{q}");
        assert!(body["error"].as_str().unwrap().contains("header only"));
    }
    let (status, body) = json(
        app.client
            .get(&url)
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true);
    app.stop().await;

    // Unset: the admin API does not exist.
    let app = spawn_app(Arc::new(Counting::default()), |_| {}).await;
    for (method, path) in [
        ("GET", "/api/admin/jobs"),
        ("GET", "/api/admin/jobs/1"),
        ("POST", "/api/admin/jobs/retry"),
        ("POST", "/api/admin/jobs/cancel"),
    ] {
        let request = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(ADMIN)
            .body("{}");
        let (status, _) = json(request.send().await.unwrap()).await;
        assert_eq!(status, 404, "{method} {path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_admin_api_lists_shows_retries_and_cancels() {
    let app = admin_app().await;
    let db = &app.db;
    let failed = failed_batch(db, 3).await;
    let queued = db.insert_jobs(2).await;
    let get = |path: String| {
        let app = &app;
        async move {
            json(
                app.client
                    .get(app.url(&path))
                    .bearer_auth(ADMIN)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let post = |path: &'static str, body: serde_json::Value| {
        let app = &app;
        async move {
            json(
                app.client
                    .post(app.url(path))
                    .bearer_auth(ADMIN)
                    .json(&body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };

    let (status, body) = get("/api/admin/jobs?status=failed&code=131000&limit=2".into()).await;
    assert_eq!(status, 200, "{body}");
    let listed: Vec<i64> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(listed, vec![failed[2], failed[1]]);
    // The cursor is opaque: (createdAt, id) of the page's last job.
    let cursor = body["nextCursor"].as_str().unwrap().to_string();
    assert!(cursor.ends_with(&format!(".{}", failed[1])), "{cursor}");
    let (_, body) = get(format!("/api/admin/jobs?status=failed&cursor={cursor}")).await;
    assert_eq!(body["jobs"][0]["id"], failed[0].to_string());
    assert_eq!(body["nextCursor"], serde_json::Value::Null);

    let (status, body) = get(format!("/api/admin/jobs/{}", failed[0])).await;
    assert_eq!(status, 200);
    assert_eq!(body["job"]["status"], "failed");
    assert_eq!(body["job"]["lastErrorCode"], "131000");
    assert!(body["job"]["timeline"].as_array().unwrap().len() >= 2);
    let (status, body) = get("/api/admin/jobs/99999999".into()).await;
    assert_eq!((status, body["ok"].clone()), (404, false.into()));
    // Ids are the app's, any text: one that cannot be an id of this table matches nothing.
    let (status, _) = get("/api/admin/jobs/abc".into()).await;
    assert_eq!(status, 404);
    let (status, body) = get("/api/admin/jobs/a%01b".into()).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = get("/api/admin/jobs?cursor=17".into()).await;
    assert_eq!(status, 400);

    // Bad input.
    let (status, body) = get("/api/admin/jobs?status=finished".into()).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("unknown status"));
    let (status, _) = get("/api/admin/jobs?colour=red".into()).await;
    assert_eq!(status, 400);
    let (status, body) = post("/api/admin/jobs/retry", serde_json::json!({})).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("every job"));
    let (status, _) = post("/api/admin/jobs/retry", serde_json::json!({"stauts": "x"})).await;
    assert_eq!(status, 400);

    // Retry: dry, then for real; the jobs then run.
    let (status, body) = post(
        "/api/admin/jobs/retry",
        serde_json::json!({"code": "131000", "dryRun": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["dryRun"].clone(), body["retried"].clone()),
        (true.into(), 3.into())
    );
    assert_eq!(db.count("failed").await, 3);
    let (_, body) = post(
        "/api/admin/jobs/retry",
        serde_json::json!({"code": "131000"}),
    )
    .await;
    assert_eq!(body["retried"], 3);
    let h = history(db, failed[0]).await;
    assert_eq!(h[0]["by"], "admin-api");

    // Cancel the two that were queued from the start.
    let (_, body) = post(
        "/api/admin/jobs/cancel",
        serde_json::json!({"ids": queued, "status": "queued"}),
    )
    .await;
    assert_eq!(body["cancelled"], 2, "{body}");
    let (status, _) = post(
        "/api/admin/jobs/cancel",
        serde_json::json!({"ids": queued, "resendSent": true}),
    )
    .await;
    assert_eq!(status, 400);

    let pass = app.runner.run_pass(10).await.unwrap();
    let mut processed = pass.processed.clone();
    processed.sort_unstable();
    assert_eq!(processed, failed);
    assert_eq!(db.count("cancelled").await, 2);

    // Settle over the API.
    let unknown = failed_with_message(db, "unknown", "delivery_unknown").await;
    let (status, body) = json(
        app.client
            .post(app.url(&format!("/api/admin/jobs/{unknown}/settle")))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"as": "sent"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["jobStatus"], "done");
    app.stop().await;
}

// --- the command line ---

const BIN: &str = env!("CARGO_BIN_EXE_outbound-runner");

fn cli(args: &[&str], db: &TestDb) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("DATABASE_URL", &db.url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_jobs_commands_list_retry_with_confirmation_and_refuse_bad_input() {
    let db = TestDb::new().await;
    let ids = failed_batch(&db, 3).await;
    let list = cli(
        &["jobs", "list", "--status", "failed", "--code", "131000"],
        &db,
    );
    let (out, err) = text(&list);
    assert_eq!(list.status.code(), Some(0), "{err}");
    for id in &ids {
        assert!(out.contains(&format!("{id}  failed")), "{out}");
    }
    assert!(out.contains("3 job(s)"), "{out}");

    let json_list = cli(&["jobs", "list", "--status", "failed", "--json"], &db);
    let v: serde_json::Value = serde_json::from_slice(&json_list.stdout).unwrap();
    assert_eq!(v["jobs"].as_array().unwrap().len(), 3);

    // No terminal, no --yes: refused, nothing changed.
    let o = cli(&["jobs", "retry", "--code", "131000"], &db);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(64), "{out}{err}");
    assert!(out.contains("would retry 3 of 3"), "{out}");
    assert!(err.contains("add --yes"), "{err}");
    assert_eq!(db.count("failed").await, 3);

    let o = cli(&["jobs", "retry", "--code", "131000", "--dry-run"], &db);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o).0.contains("would retry 3"));
    assert_eq!(db.count("failed").await, 3);

    let o = cli(&["jobs", "retry", "--code", "131000", "--yes"], &db);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.contains("retried 3 of 3"), "{out}");
    assert_eq!(db.count("queued").await, 3);

    let show = cli(&["jobs", "show", &ids[0].to_string()], &db);
    let (out, _) = text(&show);
    assert!(out.contains("retry by cli (was failed, 131000)"), "{out}");

    // Bad input: exit 64 with the reason.
    for (args, want) in [
        (
            vec!["jobs", "list", "--status", "finished"],
            "unknown status",
        ),
        (vec!["jobs", "retry", "--yes"], "would touch every job"),
        (vec!["jobs", "cancel", "--yes"], "would touch every job"),
        (
            vec!["jobs", "list", "--since", "last tuesday"],
            "not a time",
        ),
    ] {
        let o = cli(&args, &db);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let o = cli(&["jobs", "show", "99999999"], &db);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("no job 99999999"));
    // Cancel the retried ones.
    let o = cli(&["jobs", "cancel", "--status", "queued", "--yes"], &db);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.contains("cancelled 3 of 3"), "{out}");
}

#[tokio::test]
async fn an_attempt_asked_to_stop_ends_cancelled_whether_it_would_be_retried_or_failed() {
    use outbound_runner::queue::store;
    let db = TestDb::new().await;
    let runner = spawn_passive(&db, Arc::new(Counting::default()), |_| {}).await;
    let ids = db.insert_jobs(2).await;
    let me: Arc<str> = runner.locked_by().into();
    let jobs = store::claim(&db.pool, &me, Duration::from_secs(60), 2, 5)
        .await
        .unwrap()
        .jobs;
    assert_eq!(jobs.len(), 2);
    let f = Filter {
        ids: ids.iter().map(|&i| i.into()).collect(),
        ..Filter::default()
    };
    assert_eq!(
        admin::cancel(&db.pool, &f, &by(false))
            .await
            .unwrap()
            .running,
        2
    );
    // Asking twice changes nothing more.
    admin::cancel(&db.pool, &f, &by(false)).await.unwrap();
    assert_eq!(history(&db, ids[0]).await.as_array().unwrap().len(), 1);
    assert!(
        store::requeue(
            &db.pool,
            &jobs[0].fence,
            Duration::ZERO,
            false,
            "131000",
            "x"
        )
        .await
        .unwrap()
    );
    assert!(
        store::fail(&db.pool, &jobs[1].fence, "131026", "y")
            .await
            .unwrap()
    );
    for job in &jobs {
        let row = db.job(&job.id).await;
        assert_eq!(row.status, "cancelled", "job {}", job.id);
        assert_eq!(row.last_error_code.as_deref(), Some("cancelled"));
        assert!(row.completed);
    }
    // Retrying clears the request: the job runs normally again.
    let r = admin::retry(&db.pool, &f, &by(false), false, 5)
        .await
        .unwrap();
    assert_eq!(r.retried, 2);
    assert!(!cancel_requested(&db, ids[0]).await);
    assert_eq!(runner.run_pass(10).await.unwrap().processed.len(), 2);
    runner.shutdown().await;
}

/// Issue 25, case 3: `running`/`runningIds` are the jobs this cancel's stop request changed,
/// never the rows it matched at the start. Two cancels of the same 50 running jobs at once
/// report each job exactly once, and every job reported was asked to stop (its
/// `cancelRequestedAt` and one history entry); a third reports none.
#[tokio::test]
async fn a_cancel_reports_as_stopping_only_the_jobs_it_asked_to_stop() {
    use outbound_runner::queue::store;
    let db = TestDb::new().await;
    let runner = spawn_passive(&db, Arc::new(Counting::default()), |_| {}).await;
    let ids = db.insert_jobs(50).await;
    let me: Arc<str> = runner.locked_by().into();
    let claimed = store::claim(&db.pool, &me, Duration::from_secs(60), 50, 5)
        .await
        .unwrap()
        .jobs;
    assert_eq!(claimed.len(), 50);
    let f = Filter {
        ids: ids.iter().map(|&id| JobId::from(id)).collect(),
        ..Filter::default()
    };
    let actor = by(false);
    let (a, b) = tokio::join!(
        admin::cancel(&db.pool, &f, &actor),
        admin::cancel(&db.pool, &f, &actor)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.running + b.running, 50, "{a:?} {b:?}");
    let mut reported: Vec<i64> = a
        .running_ids
        .iter()
        .chain(&b.running_ids)
        .map(|id| id.as_str().parse().unwrap())
        .collect();
    reported.sort_unstable();
    assert_eq!(reported, ids);
    for id in &ids {
        assert!(cancel_requested(&db, *id).await);
        assert_eq!(history(&db, *id).await.as_array().unwrap().len(), 1);
    }
    let again = admin::cancel(&db.pool, &f, &by(false)).await.unwrap();
    assert_eq!((again.matched, again.running), (50, 0));
    assert!(again.running_ids.is_empty());
    runner.shutdown().await;
}

/// Issue 25, case 4: input the database would refuse (a NUL, a time out of its range) is
/// answered 400 naming the parameter, never `503 database unavailable`; the CLI exits 64.
#[tokio::test]
async fn bad_input_is_400_naming_the_parameter_never_database_unavailable() {
    let app = admin_app().await;
    let job = app.db.insert_jobs(1).await[0];
    for (query, named) in [
        ("requestId=a%00b", "requestId"),
        ("since=1000000000h", "since"),
        ("until=1000000000h", "until"),
        ("since=99999999999999days", "since"),
    ] {
        let (status, body) = json(
            app.client
                .get(app.url(&format!("/api/admin/jobs?{query}")))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(named),
            "{query}: {body}"
        );
    }
    for (path, body, named) in [
        (
            "/api/admin/jobs/retry".to_string(),
            serde_json::json!({"requestId": "a\u{0}b"}),
            "requestId",
        ),
        (
            "/api/admin/jobs/cancel".to_string(),
            serde_json::json!({"since": "1000000000h"}),
            "since",
        ),
        (
            format!("/api/admin/jobs/{job}/settle"),
            serde_json::json!({"as": "sent", "wamid": "wamid.\u{0}"}),
            "wamid",
        ),
    ] {
        let (status, answer) = json(
            app.client
                .post(app.url(&path))
                .bearer_auth(ADMIN)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(named),
            "{answer}"
        );
    }
    // The net under the validation: a data exception is bad input, not an outage.
    let refused: sqlx::Error = sqlx::query("SELECT $1::text")
        .bind("a\u{0}b")
        .execute(&app.db.pool)
        .await
        .unwrap_err();
    assert!(matches!(AdminError::from(refused), AdminError::Invalid(_)));
    let o = cli(&["jobs", "list", "--since", "1000000000h"], &app.db);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o).1);
    app.stop().await;
}
