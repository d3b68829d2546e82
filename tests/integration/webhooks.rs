//! Meta's status webhooks: `/webhooks/whatsapp` (signature, verification, forwarding, every bad
//! input) and what the statuses do to messages and jobs (forward only, failed later, unknown
//! sends settled, early statuses), end to end with the mock Cloud API sending signed webhooks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use outbound_runner::config::{DeliveryMode, Settings};
use outbound_runner::delivery::live::LiveHandler;
use outbound_runner::delivery::statuses::{self, EARLY_RETENTION, Outcome};
use outbound_runner::http::webhooks::sign;
use outbound_runner::whatsapp::statuses::{Kind, StatusUpdate, callback_id};
use secrecy::SecretString;
use serde_json::json;
use tokio::net::TcpListener;

use crate::support::TestDb;
use crate::support::app::{App, spawn_app};
use crate::support::mock_meta::{
    self, MockMeta, Reply, Webhooks, post_signed, status_json, webhook_body, webhook_body_for,
};
use crate::support::{metrics_of, test_settings, wait_count};

const SECRET: &str = "app-secret-for-tests";
const VERIFY: &str = "verify-token-for-tests";

fn live(s: &mut Settings, meta: &MockMeta) {
    s.delivery.mode = DeliveryMode::Live;
    s.whatsapp.api_base = meta.api_base();
    s.whatsapp.phone_number_id = mock_meta::PHONE_NUMBER_ID.into();
    s.whatsapp.access_token = Some(mock_meta::TOKEN.to_string().into());
    s.whatsapp.timeout = Duration::from_secs(5);
    s.whatsapp.pair_interval = Duration::ZERO;
    s.whatsapp.app_secret = Some(SecretString::from(SECRET));
    s.whatsapp.verify_token = Some(SecretString::from(VERIFY));
}

async fn live_app(meta: &MockMeta, tweak: impl FnOnce(&mut Settings)) -> App {
    let handler = Arc::new(LiveHandler::new(&test_settings()).unwrap());
    spawn_app(handler, |s| {
        live(s, meta);
        tweak(s);
    })
    .await
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Msg {
    status: String,
    wamid: Option<String>,
    #[sqlx(rename = "lastErrorCode")]
    code: Option<String>,
    #[sqlx(rename = "lastError")]
    error: Option<String>,
    #[sqlx(rename = "deliveredAt")]
    delivered_at: Option<DateTime<Utc>>,
    #[sqlx(rename = "readAt")]
    read_at: Option<DateTime<Utc>>,
}

async fn message(db: &TestDb, job: i64) -> Msg {
    sqlx::query_as(
        r#"SELECT status, wamid, "lastErrorCode", "lastError", "deliveredAt", "readAt"
           FROM "OutboundMessage" WHERE "jobId" = $1 AND seq = 0"#,
    )
    .bind(job)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// A job in `job_status` with one message in `msg_status` (wamid given or not).
async fn job_with_message(
    db: &TestDb,
    job_status: &str,
    code: Option<&str>,
    msg_status: &str,
    wamid: Option<&str>,
) -> i64 {
    let id: i64 = sqlx::query_scalar(
        r#"INSERT INTO "OutboundJob" (payload, status, "lastErrorCode", "completedAt", attempts)
           VALUES ('{"to":"15551234567","message":{"type":"text","text":{"body":"hi"}}}', $1, $2,
                   CASE WHEN $1 IN ('done', 'failed') THEN now() - interval '5 minutes' END, 1)
           RETURNING id"#,
    )
    .bind(job_status)
    .bind(code)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        r#"INSERT INTO "OutboundMessage" ("jobId", seq, status, "to", body, wamid, "sentAt")
           VALUES ($1, 0, $2, '15551234567', '{"type":"text","text":{"body":"hi"}}', $3,
                   CASE WHEN $3 IS NOT NULL THEN now() - interval '5 minutes' END)"#,
    )
    .bind(id)
    .bind(msg_status)
    .bind(wamid)
    .execute(&db.pool)
    .await
    .unwrap();
    id
}

async fn job_state(db: &TestDb, id: i64) -> (String, Option<String>, Option<String>) {
    sqlx::query_as(
        r#"SELECT status, "lastErrorCode", "lastError" FROM "OutboundJob" WHERE id = $1"#,
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

fn update(wamid: &str, kind: Kind, job: Option<i64>, at: i64) -> StatusUpdate {
    StatusUpdate {
        wamid: wamid.into(),
        kind,
        callback: job.map(|j| (j.into(), 0)),
        at: DateTime::from_timestamp(at, 0).unwrap(),
        error_code: None,
        error_title: None,
    }
}

async fn early_count(db: &TestDb) -> i64 {
    sqlx::query_scalar(r#"SELECT count(*) FROM "OutboundEarlyStatus""#)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

// --- The rules, on the database alone ----------------------------------------------------------

#[tokio::test]
async fn statuses_move_a_message_forward_only() {
    let db = TestDb::new().await;
    let job = job_with_message(&db, "done", None, "sent", Some("wamid.F1")).await;
    let t = Utc::now().timestamp();

    // `read` before `delivered` (out of order), then the late ones and duplicates.
    let out = statuses::apply(
        &db.pool,
        &[update("wamid.F1", Kind::Read, Some(job), t + 2)],
    )
    .await
    .unwrap();
    assert_eq!(out.outcomes, [Outcome::Applied]);
    let m = message(&db, job).await;
    assert_eq!(m.status, "read");
    assert_eq!(m.read_at.unwrap().timestamp(), t + 2);
    assert_eq!(m.delivered_at, None);

    let out = statuses::apply(
        &db.pool,
        &[
            update("wamid.F1", Kind::Delivered, Some(job), t + 1),
            update("wamid.F1", Kind::Sent, None, t),
            update("wamid.F1", Kind::Read, Some(job), t + 2),
            update("wamid.F1", Kind::Delivered, Some(job), t + 1),
        ],
    )
    .await
    .unwrap();
    // The late `delivered` only fills in its timestamp.
    assert_eq!(
        out.outcomes,
        [
            Outcome::Applied,
            Outcome::Duplicate,
            Outcome::Duplicate,
            Outcome::Duplicate
        ]
    );
    assert_eq!(out.delivered_after.len(), 1);
    let m = message(&db, job).await;
    assert_eq!(m.status, "read");
    assert_eq!(m.delivered_at.unwrap().timestamp(), t + 1);
    assert_eq!(job_state(&db, job).await.0, "done");

    // A `failed` after `read` does not undo a delivery.
    let mut failed = update("wamid.F1", Kind::Failed, Some(job), t + 3);
    failed.error_code = Some("131026".into());
    let out = statuses::apply(&db.pool, &[failed]).await.unwrap();
    assert_eq!(out.outcomes, [Outcome::Duplicate]);
    assert_eq!(message(&db, job).await.status, "read");
    assert_eq!(job_state(&db, job).await.0, "done");
}

#[tokio::test]
async fn a_failed_status_records_metas_error_and_fails_the_done_job() {
    let db = TestDb::new().await;
    let job = job_with_message(&db, "done", None, "sent", Some("wamid.X1")).await;
    let completed: DateTime<Utc> =
        sqlx::query_scalar(r#"SELECT "completedAt" FROM "OutboundJob" WHERE id = $1"#)
            .bind(job)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let mut failed = update("wamid.X1", Kind::Failed, Some(job), Utc::now().timestamp());
    failed.error_code = Some("131026".into());
    failed.error_title = Some("Message undeliverable".into());
    let out = statuses::apply(&db.pool, &[failed]).await.unwrap();
    assert_eq!(out.outcomes, [Outcome::Applied]);
    assert_eq!(out.jobs_failed, 1);

    let m = message(&db, job).await;
    assert_eq!(
        (m.status.as_str(), m.code.as_deref(), m.error.as_deref()),
        ("failed", Some("131026"), Some("Message undeliverable"))
    );
    let (status, code, error) = job_state(&db, job).await;
    assert_eq!(
        (status.as_str(), code.as_deref()),
        ("failed", Some("131026"))
    );
    assert!(
        error.unwrap().contains("Message undeliverable"),
        "a readable lastError"
    );
    let after: DateTime<Utc> =
        sqlx::query_scalar(r#"SELECT "completedAt" FROM "OutboundJob" WHERE id = $1"#)
            .bind(job)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(after, completed, "completedAt is kept");

    // The guide's error-rate query counts it now.
    let failed_last_hour: i64 = sqlx::query_scalar(
        r#"SELECT COUNT(*) FROM "OutboundJob" WHERE status = 'failed' AND "completedAt" > NOW() - INTERVAL '1 hour'"#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(failed_last_hour, 1);

    // Failed is final: a late `delivered` changes nothing.
    let out = statuses::apply(
        &db.pool,
        &[update("wamid.X1", Kind::Delivered, Some(job), 1)],
    )
    .await
    .unwrap();
    assert_eq!(out.outcomes, [Outcome::Duplicate]);
    assert_eq!(message(&db, job).await.status, "failed");
}

#[tokio::test]
async fn an_unknown_send_is_settled_by_its_status_and_its_job_becomes_done() {
    let db = TestDb::new().await;
    let job = job_with_message(&db, "failed", Some("delivery_unknown"), "unknown", None).await;
    let out = statuses::apply(
        &db.pool,
        &[
            update(
                "wamid.U1",
                Kind::Delivered,
                Some(job),
                Utc::now().timestamp(),
            ),
            // In the same batch, without the callback: matched by the wamid just learnt.
            update("wamid.U1", Kind::Delivered, None, Utc::now().timestamp()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(out.outcomes, [Outcome::Settled, Outcome::Duplicate]);
    assert_eq!(out.jobs_settled, 1);
    let m = message(&db, job).await;
    assert_eq!(
        (m.status.as_str(), m.wamid.as_deref(), m.code.as_deref()),
        ("delivered", Some("wamid.U1"), None)
    );
    assert_eq!(job_state(&db, job).await, ("done".into(), None, None));
}

#[tokio::test]
async fn a_status_whose_callback_and_wamid_disagree_writes_nothing() {
    let db = TestDb::new().await;
    let a = job_with_message(&db, "done", None, "sent", Some("wamid.A")).await;
    let b = job_with_message(&db, "failed", Some("delivery_unknown"), "unknown", None).await;
    let before = (message(&db, a).await, message(&db, b).await);
    let out = statuses::apply(
        &db.pool,
        &[
            // A's wamid, B's callback: it would settle B with A's message.
            update("wamid.A", Kind::Read, Some(b), 1),
            // A's callback with another wamid.
            update("wamid.OTHER", Kind::Failed, Some(a), 1),
            // Neither ours nor known: not kept.
            update("wamid.APP", Kind::Delivered, None, 1),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        out.outcomes,
        [Outcome::Conflict, Outcome::Conflict, Outcome::Unmatched]
    );
    assert_eq!((message(&db, a).await, message(&db, b).await), before);
    assert_eq!(job_state(&db, b).await.0, "failed");
    assert_eq!(early_count(&db).await, 0);
}

#[tokio::test]
async fn an_early_status_waits_for_its_wamid_and_unmatched_ones_expire() {
    let db = TestDb::new().await;
    // The status raced the send's answer: the message is still `sending`.
    let job = job_with_message(&db, "running", None, "sending", None).await;
    let t = Utc::now().timestamp();
    let out = statuses::apply(
        &db.pool,
        &[
            update("wamid.E1", Kind::Delivered, Some(job), t),
            update("wamid.E1", Kind::Delivered, Some(job), t),
        ],
    )
    .await
    .unwrap();
    assert_eq!(out.outcomes, [Outcome::Early, Outcome::Early]);
    assert_eq!(message(&db, job).await.status, "sending");
    assert_eq!(early_count(&db).await, 1, "a duplicate is kept once");

    // Nothing to apply while the message is being sent.
    let swept = statuses::sweep(&db.pool, EARLY_RETENTION).await.unwrap();
    assert_eq!((swept.applied.outcomes.len(), swept.waiting), (0, 1));

    // The wamid is written (what ledger::record_sent does).
    sqlx::query(
        r#"UPDATE "OutboundMessage" SET status = 'sent', wamid = 'wamid.E1', "sentAt" = now()
           WHERE "jobId" = $1"#,
    )
    .bind(job)
    .execute(&db.pool)
    .await
    .unwrap();
    let swept = statuses::sweep(&db.pool, EARLY_RETENTION).await.unwrap();
    assert_eq!(swept.applied.outcomes, [Outcome::Applied]);
    assert_eq!(swept.waiting, 0);
    let m = message(&db, job).await;
    assert_eq!(m.status, "delivered");
    assert_eq!(m.delivered_at.unwrap().timestamp(), t);

    // A callback naming no row (a pruned job, a replay): kept, then dropped after the retention.
    let out = statuses::apply(
        &db.pool,
        &[update("wamid.GONE", Kind::Read, Some(999_999), t)],
    )
    .await
    .unwrap();
    assert_eq!(out.outcomes, [Outcome::Early]);
    let swept = statuses::sweep(&db.pool, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!((swept.expired, swept.waiting), (0, 1));
    let swept = statuses::sweep(&db.pool, Duration::ZERO).await.unwrap();
    assert_eq!((swept.expired, swept.waiting), (1, 0));
}

#[tokio::test]
async fn a_status_that_would_decide_a_running_job_waits_for_its_runner() {
    let db = TestDb::new().await;
    // The runner marked the send unknown and is about to fail the job; and another job whose
    // completion is on its way when Meta reports its message failed.
    let doubt = job_with_message(&db, "running", None, "unknown", None).await;
    let completing = job_with_message(&db, "running", None, "sent", Some("wamid.R2")).await;
    let mut failed = update("wamid.R2", Kind::Failed, Some(completing), 1);
    failed.error_code = Some("131049".into());
    let out = statuses::apply(
        &db.pool,
        &[update("wamid.R1", Kind::Read, Some(doubt), 1), failed],
    )
    .await
    .unwrap();
    assert_eq!(out.outcomes, [Outcome::Early, Outcome::Early]);
    assert_eq!(message(&db, doubt).await.status, "unknown");
    assert_eq!(message(&db, completing).await.status, "sent");
    let swept = statuses::sweep(&db.pool, EARLY_RETENTION).await.unwrap();
    assert_eq!((swept.applied.outcomes.len(), swept.waiting), (0, 2));

    // The runners finish: one fails its job `delivery_unknown`, the other completes.
    sqlx::query(
        r#"UPDATE "OutboundJob" SET status = 'failed', "lastErrorCode" = 'delivery_unknown',
                  "completedAt" = now() WHERE id = $1"#,
    )
    .bind(doubt)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(r#"UPDATE "OutboundJob" SET status = 'done', "completedAt" = now() WHERE id = $1"#)
        .bind(completing)
        .execute(&db.pool)
        .await
        .unwrap();
    let swept = statuses::sweep(&db.pool, EARLY_RETENTION).await.unwrap();
    assert_eq!(swept.waiting, 0);
    assert_eq!(job_state(&db, doubt).await, ("done".into(), None, None));
    assert_eq!(message(&db, doubt).await.status, "read");
    let (status, code, _) = job_state(&db, completing).await;
    assert_eq!(
        (status.as_str(), code.as_deref()),
        ("failed", Some("131049"))
    );
}

// --- End to end: the mock Cloud API sends the webhooks -------------------------------------------

#[tokio::test]
async fn every_messages_fate_arrives_by_webhook_and_unknown_sends_settle_without_a_resend() {
    let meta = MockMeta::start().await;
    let app = live_app(&meta, |_| {}).await;
    meta.send_webhooks(Webhooks {
        delay: Duration::from_millis(5),
        duplicates: true,
        reorder: true,
        hold: true,
        ..Webhooks::to(app.url("/webhooks/whatsapp"), SECRET)
    });
    // One job at a time, so each gets its scripted answer.
    let replies = [
        Reply::Accept,
        Reply::AcceptThenFail(131026),
        Reply::AcceptThenDrop,
        Reply::Accept,
    ];
    let mut jobs = Vec::new();
    for (i, reply) in replies.into_iter().enumerate() {
        meta.script([reply]);
        let id = app
            .db
            .insert_payload(
                &json!({"to": format!("1555123000{i}"), "message": {"type": "text", "text": {"body": format!("m{i}")}}})
                    .to_string(),
            )
            .await;
        app.runner.run_pass(1).await.unwrap();
        jobs.push(id);
    }
    assert_eq!(job_state(&app.db, jobs[0]).await.0, "done");
    assert_eq!(
        job_state(&app.db, jobs[1]).await.0,
        "done",
        "accepted: done until Meta says otherwise"
    );
    let doubt = job_state(&app.db, jobs[2]).await;
    assert_eq!(
        (doubt.0.as_str(), doubt.1.as_deref()),
        ("failed", Some("delivery_unknown"))
    );
    assert_eq!(message(&app.db, jobs[2]).await.status, "unknown");

    // Now Meta's webhooks: read, delivered, sent (newest first), each twice.
    meta.release_webhooks();
    let mut sent = meta.webhooks_sent();
    wait_count(&mut sent, 3 * 3 * 2 + 2 * 2, Duration::from_secs(20)).await;
    assert!(
        meta.webhook_answers().iter().all(|a| *a == 200),
        "{:?}",
        meta.webhook_answers()
    );

    for id in [jobs[0], jobs[3]] {
        let m = message(&app.db, id).await;
        assert_eq!(m.status, "read");
        assert!(m.delivered_at.is_some() && m.read_at.is_some(), "{m:?}");
        assert_eq!(job_state(&app.db, id).await.0, "done");
    }
    let failed = message(&app.db, jobs[1]).await;
    assert_eq!(
        (failed.status.as_str(), failed.code.as_deref()),
        ("failed", Some("131026"))
    );
    let (status, code, error) = job_state(&app.db, jobs[1]).await;
    assert_eq!(
        (status.as_str(), code.as_deref()),
        ("failed", Some("131026"))
    );
    assert!(error.unwrap().contains("Message undeliverable"));
    // The send in doubt: Meta had accepted it. Settled, with the wamid Meta gave it.
    let settled = message(&app.db, jobs[2]).await;
    let accepted = meta.accepted_for(jobs[2]);
    assert_eq!(settled.status, "read");
    assert_eq!(settled.wamid.as_deref(), Some(accepted[0].wamid.as_str()));
    assert_eq!(
        job_state(&app.db, jobs[2]).await,
        ("done".into(), None, None)
    );

    // Nothing was sent again, then or later.
    assert_eq!(meta.accepted().len(), 4);
    let report = app.runner.run_pass(10).await.unwrap();
    assert!(report.processed.is_empty() && report.failed.is_empty());
    assert_eq!(*meta.seen().borrow(), 4);

    let metrics = metrics_of(&app.runner);
    assert_eq!(metrics.delivered_latency.get_sample_count(), 3);
    let count = |k: &str, r: &str| metrics.whatsapp_statuses.with_label_values(&[k, r]).get();
    assert_eq!(count("failed", "applied"), 1);
    assert_eq!(count("read", "settled"), 1);
    assert_eq!(count("read", "duplicate"), 3);
    app.stop().await;
}

#[tokio::test]
async fn statuses_that_race_the_sends_answer_are_kept_and_applied_once_the_wamid_is_written() {
    let meta = MockMeta::start().await;
    let app = live_app(&meta, |_| {}).await;
    // The mock sends each message's statuses as it accepts it, before it answers: they reach
    // the runner while the message is still `sending`.
    meta.send_webhooks(Webhooks::to(app.url("/webhooks/whatsapp"), SECRET));
    meta.script([Reply::SlowAccept(Duration::from_millis(300))]);
    let id = app
        .db
        .insert_payload(
            &json!({"to": "15551230009", "message": {"type": "text", "text": {"body": "race"}}})
                .to_string(),
        )
        .await;
    let run = tokio::spawn({
        let runner = app.runner.clone();
        async move { runner.run_pass(1).await.unwrap() }
    });
    let mut sent = meta.webhooks_sent();
    wait_count(&mut sent, 3, Duration::from_secs(10)).await;
    // Answered 200 (kept), while the send's answer is still on its way.
    assert_eq!(meta.webhook_answers(), [200, 200, 200]);
    assert_eq!(message(&app.db, id).await.status, "sending");
    assert_eq!(early_count(&app.db).await, 3);

    assert_eq!(run.await.unwrap().processed, [id]);
    // The wamid is written: the next sweep applies them (the runner's own sweeper may be first;
    // each step either applies them or finds them applied).
    for _ in 0..100 {
        let swept = statuses::sweep(&app.db.pool, EARLY_RETENTION)
            .await
            .unwrap();
        if swept.waiting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(early_count(&app.db).await, 0);
    let m = message(&app.db, id).await;
    assert_eq!(m.status, "read");
    assert!(m.delivered_at.is_some());
    assert_eq!(job_state(&app.db, id).await.0, "done");
    assert_eq!(meta.accepted().len(), 1);
    app.stop().await;
}

// --- Bad input ----------------------------------------------------------------------------------

async fn post(app: &App, body: &[u8], signature: Option<String>) -> u16 {
    let mut request = app
        .client
        .post(app.url("/webhooks/whatsapp"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(s) = signature {
        request = request.header("X-Hub-Signature-256", s);
    }
    request.send().await.unwrap().status().as_u16()
}

fn webhook_requests(app: &App, outcome: &str) -> u64 {
    metrics_of(&app.runner)
        .webhook_requests
        .with_label_values(&[outcome])
        .get()
}

#[tokio::test]
async fn bad_webhooks_are_refused_or_ignored_and_write_nothing() {
    let meta = MockMeta::start().await;
    let app = live_app(&meta, |_| {}).await;
    let db = &app.db;
    let job = job_with_message(db, "done", None, "sent", Some("wamid.B1")).await;
    let other = job_with_message(db, "failed", Some("delivery_unknown"), "unknown", None).await;
    let cb = callback_id(&job.into(), 0);
    let t = Utc::now().timestamp();
    let delivered = serde_json::to_vec(&webhook_body(vec![status_json(
        "wamid.B1",
        "delivered",
        &cb,
        t,
        None,
    )]))
    .unwrap();
    let before = (message(db, job).await, message(db, other).await);
    let unchanged = || async { (message(db, job).await, message(db, other).await) };

    // No signature, a wrong secret, a signature over another body, a malformed header.
    assert_eq!(post(&app, &delivered, None).await, 401);
    assert_eq!(
        post(&app, &delivered, Some(sign(b"wrong", &delivered))).await,
        401
    );
    assert_eq!(
        post(&app, &delivered, Some(sign(SECRET.as_bytes(), b"{}"))).await,
        401
    );
    let bare = sign(SECRET.as_bytes(), &delivered)[7..].to_string();
    assert_eq!(post(&app, &delivered, Some(bare)).await, 401);
    assert_eq!(webhook_requests(&app, "bad_signature"), 4);
    assert_eq!(unchanged().await, before);

    // Over 1 MB, signed: 413 before anything is read.
    let big = vec![b' '; 1024 * 1024 + 1];
    assert_eq!(
        post(&app, &big, Some(sign(SECRET.as_bytes(), &big))).await,
        413
    );
    // Not JSON: 400.
    let text = b"definitely not json";
    assert_eq!(
        post(&app, text, Some(sign(SECRET.as_bytes(), text))).await,
        400
    );
    assert_eq!(webhook_requests(&app, "malformed"), 1);

    // Valid JSON of other shapes and fields: 200, ignored. One is larger than the other
    // endpoints' 64 KiB limit: the webhook has its own.
    let padding = "x".repeat(200 * 1024);
    for body in [
        json!({"object": "page", "entry": []}),
        json!([1, 2, 3]),
        json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
            {"field": "messages", "value": {"metadata": {"phone_number_id": mock_meta::PHONE_NUMBER_ID},
             "messages": [{"from": "15551234567", "id": "wamid.IN", "type": "text", "text": {"body": padding}}]}},
            {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}}
        ]}]}),
        // A status of a kind we do not track, and one without an id.
        webhook_body(vec![
            json!({"id": "wamid.B1", "status": "deleted", "timestamp": "1"}),
            json!({"status": "read", "timestamp": "1"}),
        ]),
    ] {
        let bytes = serde_json::to_vec(&body).unwrap();
        assert_eq!(
            post(&app, &bytes, Some(sign(SECRET.as_bytes(), &bytes))).await,
            200
        );
    }
    assert_eq!(unchanged().await, before);

    // Statuses for another phone number: ignored, counted.
    let foreign = serde_json::to_vec(&webhook_body_for(
        "999999999",
        vec![status_json("wamid.B1", "read", &cb, t, None)],
    ))
    .unwrap();
    assert_eq!(
        post(&app, &foreign, Some(sign(SECRET.as_bytes(), &foreign))).await,
        200
    );
    assert_eq!(
        metrics_of(&app.runner)
            .whatsapp_statuses
            .with_label_values(&["read", "other_number"])
            .get(),
        1
    );
    // A status for a row of another job: our wamid, the other job's callback.
    let crossed = serde_json::to_vec(&webhook_body(vec![status_json(
        "wamid.B1",
        "read",
        &callback_id(&other.into(), 0),
        t,
        None,
    )]))
    .unwrap();
    assert_eq!(
        post(&app, &crossed, Some(sign(SECRET.as_bytes(), &crossed))).await,
        200
    );
    assert_eq!(unchanged().await, before);
    assert_eq!(job_state(db, other).await.0, "failed");

    // A valid one lands; replaying it and an older one later moves nothing back.
    let read = serde_json::to_vec(&webhook_body(vec![status_json(
        "wamid.B1",
        "read",
        &cb,
        t + 5,
        None,
    )]))
    .unwrap();
    assert_eq!(
        post(&app, &read, Some(sign(SECRET.as_bytes(), &read))).await,
        200
    );
    assert_eq!(
        post(&app, &delivered, Some(sign(SECRET.as_bytes(), &delivered))).await,
        200
    );
    let after = message(db, job).await;
    assert_eq!(after.status, "read");
    for replay in [&read, &delivered, &read] {
        assert_eq!(
            post(&app, replay, Some(sign(SECRET.as_bytes(), replay))).await,
            200
        );
    }
    assert_eq!(message(db, job).await, after);
    assert_eq!(message(db, other).await, before.1);

    // Every request counted once, by outcome.
    let outcomes = ["ok", "bad_signature", "malformed", "too_large", "forwarded"]
        .map(|o| webhook_requests(&app, o));
    assert_eq!(outcomes, [11, 4, 1, 1, 0]);

    // Still serving.
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test]
async fn meta_verification_and_an_endpoint_without_an_app_secret() {
    let meta = MockMeta::start().await;
    let app = live_app(&meta, |_| {}).await;
    let get = |q: String| {
        let (client, url) = (
            app.client.clone(),
            app.url(&format!("/webhooks/whatsapp?{q}")),
        );
        async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(
        get(format!(
            "hub.mode=subscribe&hub.verify_token={VERIFY}&hub.challenge=1158201444"
        ))
        .await,
        (200, "1158201444".to_string())
    );
    assert_eq!(
        get("hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1".into())
            .await
            .0,
        403
    );
    assert_eq!(
        get(format!(
            "hub.mode=unsubscribe&hub.verify_token={VERIFY}&hub.challenge=1"
        ))
        .await
        .0,
        403
    );
    assert_eq!(
        get(format!("hub.mode=subscribe&hub.verify_token={VERIFY}"))
            .await
            .0,
        403
    );
    app.stop().await;

    let app = live_app(&meta, |s| s.whatsapp.app_secret = None).await;
    let r = app
        .client
        .get(app.url(&format!(
            "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={VERIFY}&hub.challenge=1"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let body = b"{}";
    assert_eq!(
        post(&app, body, Some(sign(SECRET.as_bytes(), body))).await,
        404
    );
    app.stop().await;
}

/// Bodies and signature headers the app received.
type Received = Arc<Mutex<Vec<(Vec<u8>, Option<String>)>>>;

/// The app behind `whatsapp.webhook_forward_url`: records what it gets, answers `status`.
struct AppWebhook {
    url: String,
    got: Received,
    status: Arc<Mutex<u16>>,
}

async fn app_webhook() -> AppWebhook {
    let got: Received = Arc::default();
    let status = Arc::new(Mutex::new(200u16));
    let (g, s) = (got.clone(), status.clone());
    let router = axum::Router::new().route(
        "/whatsapp",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let (g, s) = (g.clone(), s.clone());
            async move {
                let sig = headers
                    .get("x-hub-signature-256")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                g.lock().unwrap().push((body.to_vec(), sig));
                axum::http::StatusCode::from_u16(*s.lock().unwrap()).unwrap()
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/whatsapp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    AppWebhook { url, got, status }
}

#[tokio::test]
async fn forwarding_passes_every_webhook_on_unchanged_and_answers_meta_as_the_app_did() {
    let meta = MockMeta::start().await;
    let hook = app_webhook().await;
    let forward = hook.url.clone();
    let app = live_app(&meta, |s| s.whatsapp.webhook_forward_url = forward).await;
    let job = job_with_message(&app.db, "done", None, "sent", Some("wamid.W1")).await;
    let cb = callback_id(&job.into(), 0);
    let body = serde_json::to_vec(&webhook_body(vec![status_json(
        "wamid.W1",
        "delivered",
        &cb,
        Utc::now().timestamp(),
        None,
    )]))
    .unwrap();
    let url = app.url("/webhooks/whatsapp");
    assert_eq!(post_signed(&url, SECRET, &body).await, 200);
    assert_eq!(message(&app.db, job).await.status, "delivered");
    {
        let got = hook.got.lock().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, body, "the same bytes");
        assert_eq!(
            got[0].1,
            Some(sign(SECRET.as_bytes(), &body)),
            "the same signature"
        );
    }
    assert_eq!(webhook_requests(&app, "forwarded"), 1);

    // The app fails: Meta hears 502 and retries; our statuses are recorded all the same.
    *hook.status.lock().unwrap() = 500;
    let read = serde_json::to_vec(&webhook_body(vec![status_json(
        "wamid.W1",
        "read",
        &cb,
        Utc::now().timestamp(),
        None,
    )]))
    .unwrap();
    assert_eq!(post_signed(&url, SECRET, &read).await, 502);
    assert_eq!(message(&app.db, job).await.status, "read");
    assert_eq!(webhook_requests(&app, "forward_failed"), 1);
    // A webhook that is not signed is not passed on.
    assert_eq!(post(&app, &read, None).await, 401);
    assert_eq!(hook.got.lock().unwrap().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_webhook_mixing_foreign_and_malformed_entries_still_applies_its_valid_statuses() {
    let meta = MockMeta::start().await;
    let app = live_app(&meta, |_| {}).await;
    let db = &app.db;
    let job = job_with_message(db, "done", None, "sent", Some("wamid.X1")).await;
    let doomed = job_with_message(db, "done", None, "sent", Some("wamid.X2")).await;
    let (cb, cb2) = (callback_id(&job.into(), 0), callback_id(&doomed.into(), 0));
    let t = Utc::now().timestamp();
    // Meta's titles are short; a huge one is cut, not refused.
    let huge_title = "t".repeat(100 * 1024);
    let mut failed = status_json("wamid.X2", "failed", &cb2, t, Some((131026, "x")));
    failed["errors"][0]["title"] = json!(huge_title);
    let body = json!({"object": "whatsapp_business_account", "entry": [
        // Another number's change names our row: not ours, ignored.
        {"id": "1", "changes": [{"field": "messages", "value": {
            "metadata": {"phone_number_id": "999999999"},
            "statuses": [status_json("wamid.X1", "read", &cb, t + 9, None)]}}]},
        // Entries of other shapes.
        {"id": "2"},
        {"id": "3", "changes": "not a list"},
        {"id": "4", "changes": [
            {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}},
            {"field": "messages"},
            {"field": "messages", "value": {"metadata": {"phone_number_id": mock_meta::PHONE_NUMBER_ID},
             "statuses": [
                {"status": "read", "timestamp": "1"},
                {"id": 42, "status": "read"},
                {"id": "wamid.X1", "status": "deleted"},
                {"id": "wamid.X1", "status": ["read"]},
                "not an object",
                // The valid ones among them.
                status_json("wamid.X1", "delivered", &cb, t, None),
                failed,
             ]}}
        ]},
    ]});
    let bytes = serde_json::to_vec(&body).unwrap();
    assert_eq!(
        post(&app, &bytes, Some(sign(SECRET.as_bytes(), &bytes))).await,
        200
    );
    let m = message(db, job).await;
    assert_eq!(m.status, "delivered", "the foreign read is not applied");
    assert_eq!(m.delivered_at.unwrap().timestamp(), t);
    assert_eq!(job_state(db, job).await.0, "done");
    let f = message(db, doomed).await;
    assert_eq!(
        (f.status.as_str(), f.code.as_deref()),
        ("failed", Some("131026"))
    );
    assert!(f.error.as_ref().unwrap().len() <= 500, "the title is cut");
    let (status, code, error) = job_state(db, doomed).await;
    assert_eq!(
        (status.as_str(), code.as_deref()),
        ("failed", Some("131026"))
    );
    assert!(error.unwrap().len() < 2000);
    assert_eq!(webhook_requests(&app, "ok"), 1);
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test]
async fn the_forward_timeout_is_the_configured_one() {
    // An app that takes 2 s to answer.
    let router = axum::Router::new().route(
        "/whatsapp",
        axum::routing::post(|| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            axum::http::StatusCode::OK
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forward = format!("http://{}/whatsapp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let meta = MockMeta::start().await;
    let app = live_app(&meta, |s| {
        s.whatsapp.webhook_forward_url = forward;
        s.whatsapp.webhook_forward_timeout = Duration::from_millis(200);
    })
    .await;
    let job = job_with_message(&app.db, "done", None, "sent", Some("wamid.T1")).await;
    let body = serde_json::to_vec(&webhook_body(vec![status_json(
        "wamid.T1",
        "delivered",
        &callback_id(&job.into(), 0),
        Utc::now().timestamp(),
        None,
    )]))
    .unwrap();
    let url = app.url("/webhooks/whatsapp");
    let t0 = std::time::Instant::now();
    assert_eq!(post_signed(&url, SECRET, &body).await, 502);
    assert!(
        t0.elapsed() < Duration::from_millis(1900),
        "answered after {:?}: the app's 2 s, not the 200 ms configured",
        t0.elapsed()
    );
    assert_eq!(webhook_requests(&app, "forward_failed"), 1);
    assert_eq!(message(&app.db, job).await.status, "delivered");

    // A reload gives the app longer: now it answers in time.
    let mut longer = (*app.runner.settings()).clone();
    longer.whatsapp.webhook_forward_timeout = Duration::from_secs(10);
    app.runner.apply(Arc::new(longer));
    assert_eq!(post_signed(&url, SECRET, &body).await, 200);
    assert_eq!(webhook_requests(&app, "forwarded"), 1);
    app.stop().await;
}

#[tokio::test]
async fn early_statuses_are_kept_for_the_configured_retention() {
    let db = TestDb::new().await;
    // Two statuses that never matched: one received 11 minutes ago, one 9 minutes ago.
    sqlx::query(
        r#"INSERT INTO "OutboundEarlyStatus" ("jobId", seq, wamid, status, "at", "receivedAt")
           VALUES (999998, 0, 'wamid.OLD', 'read', now(), now() - interval '11 minutes'),
                  (999999, 0, 'wamid.NEW', 'read', now(), now() - interval '9 minutes')"#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let meta = MockMeta::start().await;
    let handler = Arc::new(LiveHandler::new(&test_settings()).unwrap());
    let runner = crate::support::spawn_passive(&db, handler, |s| {
        live(s, &meta);
        s.whatsapp.status_retention = Duration::from_secs(10 * 60);
    })
    .await;
    // The status writer sweeps at once when it starts: the older one goes.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metrics_of(&runner).whatsapp_statuses_expired.get() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing expired within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left: Vec<String> = sqlx::query_scalar(r#"SELECT wamid FROM "OutboundEarlyStatus""#)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, ["wamid.NEW"]);
    assert_eq!(metrics_of(&runner).whatsapp_statuses_expired.get(), 1);
    runner.shutdown().await;
}

// --- Statuses the database cannot store (issue 25) ----------------------------------------------

fn statuses_counted(app: &App, kind: &str, result: &str) -> u64 {
    metrics_of(&app.runner)
        .whatsapp_statuses
        .with_label_values(&[kind, result])
        .get()
}

/// Issue 25, cases 2 and 7: a signed status with a NUL (in its title or its wamid) or an absurd
/// timestamp, sent beside 60 good webhooks, costs only itself: every webhook answers 200 (Meta
/// stops retrying), every good status is applied, the bad ones are counted `rejected` and
/// nothing of them is stored (no `deliveredAt` in 1200 BC).
#[tokio::test]
async fn a_status_the_database_cannot_store_costs_only_itself() {
    let meta = MockMeta::start().await;
    let app = live_app(&meta, |_| {}).await;
    let db = &app.db;
    let t = Utc::now().timestamp();
    let mut good = Vec::new();
    for i in 0..60 {
        let wamid = format!("wamid.G{i}");
        let job = job_with_message(db, "done", None, "sent", Some(&wamid)).await;
        good.push((job, wamid));
    }
    let victim = job_with_message(db, "done", None, "sent", Some("wamid.V")).await;
    let cb = callback_id(&victim.into(), 0);
    let bad = [
        status_json("wamid.V", "failed", &cb, t, Some((131026, "x\u{0}y"))),
        status_json("wamid.\u{0}V", "delivered", &cb, t, None),
        status_json("wamid.V", "delivered", &cb, -99_999_999_999, None),
        status_json("wamid.V", "read", &cb, t + 7 * 24 * 3600, None),
    ];
    let url = app.url("/webhooks/whatsapp");
    let mut posts = tokio::task::JoinSet::new();
    for (job, wamid) in &good {
        let body = webhook_body(vec![status_json(
            wamid,
            "delivered",
            &callback_id(&(*job).into(), 0),
            t,
            None,
        )]);
        let url = url.clone();
        posts.spawn(
            async move { post_signed(&url, SECRET, &serde_json::to_vec(&body).unwrap()).await },
        );
    }
    for status in &bad {
        let body = serde_json::to_vec(&webhook_body(vec![status.clone()])).unwrap();
        let url = url.clone();
        posts.spawn(async move { post_signed(&url, SECRET, &body).await });
    }
    while let Some(answer) = posts.join_next().await {
        assert_eq!(answer.unwrap(), 200);
    }
    for (job, _) in &good {
        assert_eq!(message(db, *job).await.status, "delivered", "job {job}");
    }
    let m = message(db, victim).await;
    assert_eq!(
        (m.status.as_str(), m.delivered_at, m.read_at),
        ("sent", None, None)
    );
    assert_eq!(job_state(db, victim).await.0, "done");
    assert_eq!(webhook_requests(&app, "rejected"), 4);
    assert_eq!(webhook_requests(&app, "ok"), 60);
    assert_eq!(statuses_counted(&app, "delivered", "rejected"), 2);
    assert_eq!(statuses_counted(&app, "failed", "rejected"), 1);
    assert_eq!(statuses_counted(&app, "read", "rejected"), 1);

    // One webhook with a good and a bad status: the good one is applied.
    let job = job_with_message(db, "done", None, "sent", Some("wamid.M")).await;
    let body = webhook_body(vec![
        status_json(
            "wamid.M",
            "delivered",
            &callback_id(&job.into(), 0),
            t,
            None,
        ),
        bad[0].clone(),
    ]);
    assert_eq!(
        post_signed(&url, SECRET, &serde_json::to_vec(&body).unwrap()).await,
        200
    );
    assert_eq!(message(db, job).await.status, "delivered");
    app.stop().await;
}

/// The writer itself: a batch the database refuses for its data (a NUL it was handed) is
/// applied again one status at a time, so the others in it are written.
#[tokio::test]
async fn a_batch_the_database_refuses_is_applied_one_status_at_a_time() {
    let meta = MockMeta::start().await;
    let app = live_app(&meta, |_| {}).await;
    let db = &app.db;
    let t = Utc::now().timestamp();
    let job = job_with_message(db, "done", None, "sent", Some("wamid.W1")).await;
    let outcomes = app
        .runner
        .apply_statuses(vec![
            update("wamid.\u{0}", Kind::Delivered, None, t),
            update("wamid.W1", Kind::Delivered, Some(job), t),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes, [Outcome::Rejected, Outcome::Applied]);
    assert_eq!(message(db, job).await.status, "delivered");
    assert_eq!(statuses_counted(&app, "delivered", "rejected"), 1);
    app.stop().await;
}
