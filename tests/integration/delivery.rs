//! Live delivery against the mock Cloud API and the mock orchestrator: every error class ends
//! in its documented state, nothing is ever sent twice, pacing stays under Meta's limits.

use std::sync::Arc;
use std::time::Duration;

use outbound_runner::config::{DeliveryMode, OnUnknown, Settings};
use outbound_runner::delivery::live::LiveHandler;
use outbound_runner::queue::store::{self, Reclaim};
use outbound_runner::runner::Runner;
use serde_json::{Value, json};

use crate::support::mock_meta::{self, Limits, MockMeta, Reply};
use crate::support::mock_orchestrator::{self, Answer, MockOrchestrator};
use crate::support::proxy::{Proxy, upstream_of};
use crate::support::{
    TestDb, metrics_of, spawn_passive, spawn_runner, spawn_runner_at, test_settings, wait_count,
};

/// Live delivery to `meta`, no pair spacing (tests that pace set their own).
fn live(s: &mut Settings, meta: &MockMeta) {
    s.delivery.mode = DeliveryMode::Live;
    s.whatsapp.api_base = meta.api_base();
    s.whatsapp.phone_number_id = mock_meta::PHONE_NUMBER_ID.into();
    s.whatsapp.access_token = Some(mock_meta::TOKEN.to_string().into());
    s.whatsapp.timeout = Duration::from_secs(5);
    s.whatsapp.pair_interval = Duration::ZERO;
}

fn handler() -> Arc<LiveHandler> {
    Arc::new(LiveHandler::new(&test_settings()).unwrap())
}

/// A passive live runner on `db` sending to `meta`.
async fn passive(db: &TestDb, meta: &MockMeta, tweak: impl FnOnce(&mut Settings)) -> Runner {
    spawn_passive(db, handler(), |s| {
        live(s, meta);
        tweak(s);
    })
    .await
}

async fn text_job(db: &TestDb, to: &str, body: &str) -> i64 {
    db.insert_payload(
        &json!({"to": to, "message": {"type": "text", "text": {"body": body}}}).to_string(),
    )
    .await
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Msg {
    seq: i32,
    status: String,
    wamid: Option<String>,
    #[sqlx(rename = "lastErrorCode")]
    code: Option<String>,
}

async fn ledger(db: &TestDb, job: impl std::fmt::Display) -> Vec<Msg> {
    sqlx::query_as(
        r#"SELECT seq, status, wamid, "lastErrorCode" FROM "OutboundMessage"
           WHERE "jobId" = outbound_job_id($1) ORDER BY seq"#,
    )
    .bind(job.to_string())
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn statuses(db: &TestDb, job: impl std::fmt::Display) -> Vec<String> {
    ledger(db, job)
        .await
        .into_iter()
        .map(|m| m.status)
        .collect()
}

fn errors(runner: &Runner, class: &str) -> u64 {
    metrics_of(runner)
        .whatsapp_errors
        .with_label_values(&[class])
        .get()
}

fn seen(meta: &MockMeta) -> u64 {
    *meta.seen().borrow()
}

/// Asserts nothing was accepted twice.
fn assert_once_each(meta: &MockMeta) {
    let twice: Vec<_> = meta
        .accepted_per_message()
        .into_iter()
        .filter(|(_, n)| *n != 1)
        .collect();
    assert!(twice.is_empty(), "accepted more than once: {twice:?}");
}

#[tokio::test]
async fn a_job_is_sent_once_with_the_envelope_and_its_wamids_are_recorded() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = passive(&db, &meta, |_| {}).await;
    let id = db
        .insert_payload(
            &json!({"to": "+15551230001", "message": [
                {"type": "text", "text": {"body": "Your order shipped"}},
                {"type": "template", "template": {"name": "order_update", "language": {"code": "en_US"}}}
            ]})
            .to_string(),
        )
        .await;

    let report = runner.run_pass(10).await.unwrap();
    assert_eq!(report.processed, [id]);
    let job = db.job(id).await;
    assert_eq!((job.status.as_str(), job.attempts), ("done", 1));

    let accepted = meta.accepted_for(id);
    assert_eq!(accepted.len(), 2);
    let rows = ledger(&db, id).await;
    assert_eq!(
        rows.iter().map(|m| m.status.as_str()).collect::<Vec<_>>(),
        ["sent", "sent"]
    );
    for (row, a) in rows.iter().zip(&accepted) {
        assert_eq!(row.wamid.as_deref(), Some(a.wamid.as_str()));
        assert_eq!(a.to, "15551230001");
    }
    assert_eq!(accepted[0].message["text"]["body"], "Your order shipped");
    assert_eq!(accepted[1].message["template"]["name"], "order_update");
    for (seq, request) in meta.requests().iter().enumerate() {
        assert_eq!(request["messaging_product"], "whatsapp");
        assert_eq!(request["recipient_type"], "individual");
        assert_eq!(request["to"], "15551230001");
        // Names the message's ledger row, for Meta's status webhooks.
        assert_eq!(
            request["biz_opaque_callback_data"],
            format!("outbound-runner:{id}:{seq}")
        );
    }
    let bearer = format!("Bearer {}", mock_meta::TOKEN);
    assert!(
        meta.authorizations()
            .iter()
            .all(|a| a.as_deref() == Some(bearer.as_str()))
    );
    let metrics = metrics_of(&runner);
    assert_eq!(metrics.messages_sent.get(), 2);
    assert_eq!(metrics.send_duration.get_sample_count(), 2);

    // Nothing left to do: another pass sends nothing.
    assert!(runner.run_pass(10).await.unwrap().processed.is_empty());
    assert_eq!(seen(&meta), 2);
    runner.shutdown().await;
}

#[tokio::test]
async fn transient_errors_are_retried_with_the_code_kept_and_then_sent_once() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = passive(&db, &meta, |s| s.retry.max_attempts = 10).await;
    meta.script([
        Reply::error(500, 131000),
        // The same code under a 400 is still transient: the code decides, not the status.
        Reply::error(400, 131000),
        Reply::Html(502),
        // A code the table does not list, under a 5xx.
        Reply::error(503, 999_999),
        Reply::error(400, 131016),
    ]);
    let id = text_job(&db, "15551230002", "hello").await;
    let expected = [
        ("131000", "HTTP 500"),
        ("131000", "HTTP 400"),
        ("http_502", "non-JSON body"),
        ("999999", "HTTP 503"),
        ("131016", "HTTP 400"),
    ];
    for (attempt, (code, needle)) in expected.iter().enumerate() {
        let report = runner.run_pass(1).await.unwrap();
        assert_eq!(report.retried, [id], "attempt {}", attempt + 1);
        let job = db.job(id).await;
        assert_eq!(job.status, "queued");
        assert_eq!(job.attempts, attempt as i32 + 1);
        assert_eq!(job.last_error_code.as_deref(), Some(*code));
        let reason = job.last_error.unwrap();
        assert!(reason.contains(needle), "{reason}");
        if !code.starts_with("http_") {
            assert!(reason.contains("details: mock details"), "{reason}");
            assert!(reason.contains("fbtrace_id: AmockTRACE42"), "{reason}");
        }
        let rows = ledger(&db, id).await;
        assert_eq!(rows[0].status, "pending", "nothing was accepted");
        assert_eq!(rows[0].code.as_deref(), Some(*code));
        db.make_due().await;
    }
    let report = runner.run_pass(1).await.unwrap();
    assert_eq!(report.processed, [id]);
    assert_eq!(db.job(id).await.attempts, 6);
    assert_eq!(meta.accepted_for(id).len(), 1);
    assert_eq!(errors(&runner, "retry"), 5);
    runner.shutdown().await;
}

#[tokio::test]
async fn a_connect_failure_is_retried_and_no_secret_reaches_the_error() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    // A port nothing listens on: the connection is refused before anything is written.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let runner = passive(&db, &meta, |s| {
        s.whatsapp.api_base = format!("http://{closed}");
    })
    .await;
    let id = text_job(&db, "15551230003", "hello").await;
    assert_eq!(runner.run_pass(1).await.unwrap().retried, [id]);
    let job = db.job(id).await;
    assert_eq!((job.status.as_str(), job.attempts), ("queued", 1));
    assert_eq!(job.last_error_code.as_deref(), Some("connect_failed"));
    let reason = job.last_error.unwrap();
    assert!(reason.contains("nothing was sent"), "{reason}");
    assert!(!reason.contains(&closed.to_string()), "no URL: {reason}");
    assert!(!reason.contains(mock_meta::TOKEN), "no token: {reason}");
    assert_eq!(statuses(&db, id).await, ["pending"]);
    runner.shutdown().await;
}

#[tokio::test]
async fn permanent_errors_fail_the_job_with_metas_code() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = passive(&db, &meta, |_| {}).await;
    meta.script([
        Reply::error(400, 131026),
        // The same code under a 500 is still permanent.
        Reply::error(500, 131026),
        // An unlisted code under a 4xx.
        Reply::error(404, 777),
    ]);
    let mut ids = Vec::new();
    for (n, (code, status)) in [("131026", 400), ("131026", 500), ("777", 404)]
        .into_iter()
        .enumerate()
    {
        let id = text_job(&db, &format!("1555123010{n}"), "hello").await;
        assert_eq!(runner.run_pass(1).await.unwrap().failed, [id]);
        let job = db.job(id).await;
        assert_eq!((job.status.as_str(), job.attempts), ("failed", 1));
        assert_eq!(job.last_error_code.as_deref(), Some(code));
        let reason = job.last_error.unwrap();
        assert!(
            reason.contains(&format!("Cloud API error {code}")),
            "{reason}"
        );
        assert!(reason.contains(&format!("HTTP {status}")), "{reason}");
        assert!(reason.contains("fbtrace_id: AmockTRACE42"), "{reason}");
        let rows = ledger(&db, id).await;
        assert_eq!(rows[0].status, "failed");
        assert_eq!(rows[0].code.as_deref(), Some(code));
        ids.push(id);
    }
    assert_eq!(errors(&runner, "fail"), 3);

    // In a two-message job, the first stays sent and the reason names the second.
    meta.script([Reply::Accept, Reply::error(400, 131047)]);
    let id = db
        .insert_payload(
            &json!({"to": "15551230199", "message": [
                {"type": "text", "text": {"body": "one"}}, {"type": "text", "text": {"body": "two"}}
            ]})
            .to_string(),
        )
        .await;
    assert_eq!(runner.run_pass(1).await.unwrap().failed, [id]);
    assert_eq!(statuses(&db, id).await, ["sent", "failed"]);
    let reason = db.job(id).await.last_error.unwrap();
    assert!(
        reason.starts_with("message 2 of 2: Cloud API error 131047"),
        "{reason}"
    );
    runner.shutdown().await;
}

#[tokio::test]
async fn a_rate_limit_pauses_the_number_without_spending_attempts() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = passive(&db, &meta, |_| {}).await;
    meta.script([Reply::Error {
        status: 429,
        code: 130429,
        details: "throughput reached",
        retry_after: Some(3),
    }]);
    let first = text_job(&db, "15551230201", "a").await;
    assert_eq!(runner.run_pass(1).await.unwrap().retried, [first]);
    let job = db.job(first).await;
    assert_eq!((job.status.as_str(), job.attempts), ("queued", 0));
    assert_eq!(job.last_error_code.as_deref(), Some("130429"));
    assert!(
        (2.0..=3.5).contains(&job.due_in),
        "Retry-After honoured: {}",
        job.due_in
    );
    assert!(job.last_error.unwrap().contains("paused"));
    assert_eq!(statuses(&db, first).await, ["pending"]);

    // Another recipient waits too, without a request reaching Meta.
    let second = text_job(&db, "15551230202", "b").await;
    assert_eq!(runner.run_pass(1).await.unwrap().retried, [second]);
    let job = db.job(second).await;
    assert_eq!((job.status.as_str(), job.attempts), ("queued", 0));
    assert_eq!(job.last_error_code.as_deref(), Some("number_paused"));
    assert!(job.due_in > 2.0, "{}", job.due_in);
    assert_eq!(seen(&meta), 1);
    assert_eq!(errors(&runner, "slow_number"), 1);
    runner.shutdown().await;
}

#[tokio::test]
async fn a_pair_rate_answer_backs_off_only_that_recipient() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = passive(&db, &meta, |_| {}).await;
    meta.script([Reply::error(400, 131056)]);
    let limited = text_job(&db, "15551230301", "a").await;
    assert_eq!(runner.run_pass(1).await.unwrap().retried, [limited]);
    let job = db.job(limited).await;
    assert_eq!((job.status.as_str(), job.attempts), ("queued", 1));
    assert_eq!(job.last_error_code.as_deref(), Some("131056"));
    assert!(job.due_in >= 0.5, "at least 4^0 s: {}", job.due_in);
    assert!(job.last_error.unwrap().contains("backs off 1s"));

    // Another recipient is not slowed down.
    let other = text_job(&db, "15551230302", "b").await;
    assert_eq!(runner.run_pass(1).await.unwrap().processed, [other]);

    // The limited recipient's next send waits out its backoff (under a second: slept).
    db.make_due().await;
    assert_eq!(runner.run_pass(1).await.unwrap().processed, [limited]);
    assert_eq!(db.job(limited).await.attempts, 2);
    assert_eq!(errors(&runner, "slow_recipient"), 1);
    assert_once_each(&meta);
    runner.shutdown().await;
}

#[tokio::test]
async fn a_halt_answer_opens_the_circuit_until_a_reload() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = passive(&db, &meta, |_| {}).await;
    meta.script([Reply::error(401, 190)]);
    let gauge = || metrics_of(&runner).circuit_open.get();

    let tripped = text_job(&db, "15551230401", "a").await;
    assert_eq!(runner.run_pass(1).await.unwrap().retried, [tripped]);
    let job = db.job(tripped).await;
    assert_eq!((job.status.as_str(), job.attempts), ("queued", 0));
    assert_eq!(job.last_error_code.as_deref(), Some("190"));
    assert!(
        job.due_in <= 31.0,
        "comes back to notice a reload: {}",
        job.due_in
    );
    assert_eq!(gauge(), 1);
    assert_eq!(errors(&runner, "halt"), 1);

    // While the circuit is open nothing reaches Meta and no attempt is spent.
    let held = text_job(&db, "15551230402", "b").await;
    assert_eq!(runner.run_pass(1).await.unwrap().retried, [held]);
    let job = db.job(held).await;
    assert_eq!((job.status.as_str(), job.attempts), ("queued", 0));
    assert_eq!(job.last_error_code.as_deref(), Some("circuit_open"));
    assert!(
        job.due_in > 250.0,
        "deferred for the cooldown: {}",
        job.due_in
    );
    let reason = job.last_error.unwrap();
    assert!(reason.contains("Cloud API error 190"), "{reason}");
    assert!(reason.contains("configuration reload"), "{reason}");
    assert_eq!(seen(&meta), 1);

    // A reload (the operator fixed the token) closes the circuit; the next job notices it and
    // makes the jobs the circuit deferred due at once.
    runner.apply(Arc::new((*runner.settings()).clone()));
    let fresh = text_job(&db, "15551230403", "c").await;
    assert_eq!(runner.run_pass(1).await.unwrap().processed, [fresh]);
    assert_eq!(gauge(), 0);
    assert!(db.job(held).await.due_in <= 0.0, "woken by the reload");
    assert_eq!(runner.run_pass(1).await.unwrap().processed, [held]);
    db.make_due().await;
    assert_eq!(runner.run_pass(1).await.unwrap().processed, [tripped]);
    assert_eq!(db.job(tripped).await.attempts, 1);
    assert_eq!(meta.accepted().len(), 3);
    assert_once_each(&meta);
    runner.shutdown().await;
}

/// The answers after which nobody knows whether Meta accepted the message.
async fn assert_ambiguous_is_not_resent(reply: Reply, code: &str) {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = passive(&db, &meta, |s| {
        s.whatsapp.timeout = Duration::from_secs(1);
    })
    .await;
    meta.script([reply]);
    let id = text_job(&db, "15551230501", "hello").await;
    assert_eq!(runner.run_pass(1).await.unwrap().failed, [id]);
    let job = db.job(id).await;
    assert_eq!((job.status.as_str(), job.attempts), ("failed", 1), "{code}");
    assert_eq!(job.last_error_code.as_deref(), Some("delivery_unknown"));
    let rows = ledger(&db, id).await;
    assert_eq!(rows[0].status, "unknown");
    assert_eq!(rows[0].code.as_deref(), Some(code));
    assert!(
        job.last_error.unwrap().contains("may have been accepted"),
        "{code}"
    );

    // Not retried, however often the runner looks.
    db.make_due().await;
    assert!(runner.run_pass(10).await.unwrap().processed.is_empty());
    assert_eq!(
        meta.accepted_for(id).len(),
        1,
        "{code}: accepted exactly once"
    );
    assert_eq!(seen(&meta), 1);
    assert_eq!(errors(&runner, "unknown"), 1);
    runner.shutdown().await;
}

#[tokio::test]
async fn accept_then_drop_is_accepted_once_and_the_message_is_unknown() {
    assert_ambiguous_is_not_resent(Reply::AcceptThenDrop, "connection_lost").await;
}

#[tokio::test]
async fn an_answer_past_the_timeout_is_unknown_and_not_resent() {
    assert_ambiguous_is_not_resent(Reply::SlowAccept(Duration::from_secs(3)), "timeout").await;
}

#[tokio::test]
async fn a_success_without_a_wamid_is_unknown_and_not_resent() {
    assert_ambiguous_is_not_resent(Reply::AcceptGarbage, "no_wamid").await;
}

#[tokio::test]
async fn with_on_unknown_retry_an_ambiguous_send_is_sent_again() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = passive(&db, &meta, |s| s.delivery.on_unknown = OnUnknown::Retry).await;
    meta.script([Reply::AcceptThenDrop]);
    let id = text_job(&db, "15551230601", "hello").await;
    assert_eq!(runner.run_pass(1).await.unwrap().retried, [id]);
    let job = db.job(id).await;
    assert_eq!((job.status.as_str(), job.attempts), ("queued", 1));
    assert_eq!(statuses(&db, id).await, ["pending"]);
    db.make_due().await;
    assert_eq!(runner.run_pass(1).await.unwrap().processed, [id]);
    // At least once, as configured: Meta got it twice.
    assert_eq!(meta.accepted_for(id).len(), 2);
    runner.shutdown().await;
}

#[tokio::test]
async fn a_worker_killed_between_sending_and_the_answer_is_not_resent_by_the_rescuer() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = passive(&db, &meta, |_| {}).await;
    meta.script([Reply::Hold]);
    let id = text_job(&db, "15551230701", "hello").await;
    let pass = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.run_pass(1).await })
    };
    // Meta accepted the message; its answer has not come back.
    wait_count(&mut meta.recorded(), 1, Duration::from_secs(10)).await;
    assert_eq!(statuses(&db, id).await, ["sending"]);

    // The worker dies.
    assert!(runner.abort_job(&id.into()), "the job is in flight");
    let report = pass.await.unwrap().unwrap();
    assert!(report.processed.is_empty() && report.failed.is_empty());
    assert_eq!(db.job(id).await.status, "running");

    // Its lease expires; the rescuer takes the job back.
    db.expire_lease(id).await;
    let rescued = store::reclaim(&db.pool, Reclaim::Expired, true, 5)
        .await
        .unwrap();
    assert_eq!((rescued.failed, rescued.in_doubt), (1, 1));
    meta.release(1);

    let job = db.job(id).await;
    assert_eq!((job.status.as_str(), job.attempts), ("failed", 1));
    assert_eq!(job.last_error_code.as_deref(), Some("delivery_unknown"));
    assert_eq!(statuses(&db, id).await, ["unknown"]);
    db.make_due().await;
    assert!(runner.run_pass(10).await.unwrap().processed.is_empty());
    assert_eq!(seen(&meta), 1, "never sent again");
    assert_eq!(meta.accepted_for(id).len(), 1);
    runner.shutdown().await;
}

/// Found by the chaos suite (postgres_restart, read_only_database): the wamid write used to be
/// given up after about 3 s, failing the job (`ledger_write_failed`) with its message left
/// `sending` although Meta had accepted it.
#[tokio::test]
async fn an_accepted_message_is_recorded_after_a_database_outage_of_several_seconds() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let proxy = Proxy::start(upstream_of(&db.url)).await;
    let runner = spawn_runner_at(&proxy.url_for(&db.url), Some(&db.url), handler(), |s| {
        live(s, &meta)
    })
    .await;
    let mut finished = runner.finished();
    meta.script([Reply::Hold]);
    let id = text_job(&db, "15551230901", "hello").await;
    wait_count(&mut meta.recorded(), 1, Duration::from_secs(10)).await;

    // Meta accepted the message; the database goes away before the answer comes back, for
    // longer than a few seconds (a restart, a failover).
    proxy.cut();
    meta.release(1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.restore();

    wait_count(&mut finished, 1, Duration::from_secs(20)).await;
    let job = db.job(id).await;
    assert_eq!(
        (job.status.as_str(), job.attempts),
        ("done", 1),
        "{:?}",
        job.last_error
    );
    let rows = ledger(&db, id).await;
    let wamid = meta.accepted_for(id)[0].wamid.clone();
    assert_eq!(
        (rows[0].status.as_str(), rows[0].wamid.as_deref()),
        ("sent", Some(wamid.as_str()))
    );
    assert_eq!(seen(&meta), 1);
    runner.shutdown().await;
}

/// Found by the chaos suite (postgres_crash, long form: an `unknown` message the mock never
/// saw): a `sending` mark that landed but whose answer was lost with the connection made the
/// next attempt take the message for a send in doubt and fail the job, although nothing had
/// been sent.
#[tokio::test]
async fn a_sending_mark_whose_answer_was_lost_does_not_make_the_message_unknown() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let proxy = Proxy::start(upstream_of(&db.url)).await;
    let runner = spawn_runner_at(&proxy.url_for(&db.url), Some(&db.url), handler(), |s| {
        live(s, &meta);
        s.retry.base = Duration::from_millis(50);
        s.retry.cap = Duration::from_millis(50);
    })
    .await;
    meta.script([Reply::Hold]);
    let payload = json!({"to": "15551230902", "message": [
        {"type": "text", "text": {"body": "one"}},
        {"type": "text", "text": {"body": "two"}},
    ]});
    let id = db.insert_payload(&payload.to_string()).await;
    // Message 1 is accepted; its answer is held.
    wait_count(&mut meta.recorded(), 1, Duration::from_secs(10)).await;

    // Hold message 2's ledger row, so its `sending` mark waits for us.
    let mut lock = db.pool.pg().begin().await.unwrap();
    sqlx::query(r#"SELECT 1 FROM "OutboundMessage" WHERE "jobId" = $1 AND seq = 1 FOR UPDATE"#)
        .bind(id)
        .execute(&mut *lock)
        .await
        .unwrap();
    meta.release(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind(&db.name)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mark never waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The mark lands; its answer never reaches the runner: the connection is cut.
    proxy.stall();
    lock.commit().await.unwrap();
    while statuses(&db, id).await != ["sent", "sending"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mark never landed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut();
    proxy.restore();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let job = loop {
        let job = db.job(id).await;
        if job.status == "done" || job.status == "failed" {
            break job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(job.status, "done", "{:?}", job.last_error);
    assert_eq!(statuses(&db, id).await, ["sent", "sent"]);
    assert_eq!(meta.accepted_for(id).len(), 2);
    assert_once_each(&meta);
    runner.shutdown().await;
}

#[tokio::test]
async fn a_drain_that_cuts_a_send_short_leaves_the_message_unknown() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = spawn_runner(&db, handler(), |s| {
        live(s, &meta);
        s.runner.drain_timeout = Duration::from_millis(200);
    })
    .await;
    meta.script([Reply::Hold]);
    let id = text_job(&db, "15551230801", "hello").await;
    wait_count(&mut meta.recorded(), 1, Duration::from_secs(10)).await;
    // Stopped mid-send: the drain gives up on the job and releases the claim.
    let report = runner.shutdown().await;
    assert_eq!(report.aborted, 1);
    assert_eq!((report.released.failed, report.released.in_doubt), (1, 1));
    meta.release(1);
    let job = db.job(id).await;
    assert_eq!(job.status, "failed");
    assert_eq!(job.last_error_code.as_deref(), Some("delivery_unknown"));
    assert_eq!(statuses(&db, id).await, ["unknown"]);

    // A new runner does not send it again.
    let runner = passive(&db, &meta, |_| {}).await;
    db.make_due().await;
    assert!(runner.run_pass(10).await.unwrap().processed.is_empty());
    assert_eq!(seen(&meta), 1);
    runner.shutdown().await;
}

#[tokio::test]
async fn a_send_cut_off_by_job_timeout_is_not_resent_on_the_next_attempt() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = passive(&db, &meta, |s| {
        s.runner.job_timeout = Duration::from_secs(2);
    })
    .await;
    meta.script([Reply::Hold]);
    let id = text_job(&db, "15551230901", "hello").await;
    let pass = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.run_pass(1).await })
    };
    // Accepted by Meta, the answer held past runner.job_timeout.
    wait_count(&mut meta.recorded(), 1, Duration::from_secs(10)).await;
    assert_eq!(pass.await.unwrap().unwrap().retried, [id]);
    assert_eq!(
        db.job(id).await.last_error_code.as_deref(),
        Some("job_timeout")
    );
    assert_eq!(statuses(&db, id).await, ["sending"]);

    db.make_due().await;
    assert_eq!(runner.run_pass(1).await.unwrap().failed, [id]);
    let job = db.job(id).await;
    assert_eq!((job.status.as_str(), job.attempts), ("failed", 2));
    assert_eq!(job.last_error_code.as_deref(), Some("delivery_unknown"));
    assert_eq!(statuses(&db, id).await, ["unknown"]);
    assert_eq!(seen(&meta), 1);
    meta.release(1);
    runner.shutdown().await;
}

#[tokio::test]
async fn the_orchestrator_composes_once_across_three_send_retries() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let orch = MockOrchestrator::start(mock_orchestrator::two_texts()).await;
    let runner = passive(&db, &meta, |s| {
        s.orchestrator.url = orch.url();
        s.orchestrator.token = Some(mock_orchestrator::TOKEN.to_string().into());
    })
    .await;
    meta.script([
        // Attempt 1: the first message fails.
        Reply::error(500, 131000),
        // Attempt 2: the first is accepted, the second fails.
        Reply::Accept,
        Reply::Html(502),
        // Attempt 3: the second fails again.
        Reply::error(503, 2),
    ]);
    let input = json!({"text": "where is my order?", "from": "15551231001"});
    let id: i64 = sqlx::query_scalar(
        r#"INSERT INTO "OutboundJob" (payload, "requestId") VALUES ($1, 'req-77') RETURNING id"#,
    )
    .bind(json!({"to": "15551231001", "input": input}))
    .fetch_one(&db.pool)
    .await
    .unwrap();

    for attempt in 1..=3 {
        assert_eq!(
            runner.run_pass(1).await.unwrap().retried,
            [id],
            "attempt {attempt}"
        );
        db.make_due().await;
    }
    assert_eq!(statuses(&db, id).await, ["sent", "pending"]);
    assert_eq!(runner.run_pass(1).await.unwrap().processed, [id]);
    assert_eq!(db.job(id).await.attempts, 4);

    let requests = orch.requests();
    assert_eq!(requests.len(), 1, "composed once");
    let (auth, body) = &requests[0];
    assert_eq!(
        auth.as_deref(),
        Some(format!("Bearer {}", mock_orchestrator::TOKEN).as_str())
    );
    assert_eq!(
        body,
        &json!({"jobId": id.to_string(), "requestId": "req-77", "to": "15551231001", "input": input})
    );
    let composed: Value = sqlx::query_scalar(r#"SELECT composed FROM "OutboundJob" WHERE id = $1"#)
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(composed, mock_orchestrator::two_texts());
    let sent: Vec<Value> = meta
        .accepted_for(id)
        .into_iter()
        .map(|a| a.message)
        .collect();
    assert_eq!(sent, composed["messages"].as_array().unwrap().clone());
    assert_once_each(&meta);
    runner.shutdown().await;
}

#[tokio::test]
async fn orchestrator_failures_end_as_documented() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let orch = MockOrchestrator::start(mock_orchestrator::two_texts()).await;
    let runner = passive(&db, &meta, |s| {
        s.orchestrator.url = orch.url();
        s.orchestrator.timeout = Duration::from_secs(1);
    })
    .await;
    let job =
        |n: u32| json!({"to": format!("155512320{n:02}"), "input": {"text": "hi"}}).to_string();
    let cases: Vec<(Answer, &str, &str, &str)> = vec![
        (
            Answer::Raw(503, "text/plain", "overloaded"),
            "queued",
            "orchestrator_503",
            "HTTP 503",
        ),
        (
            Answer::Slow(Duration::from_secs(3), mock_orchestrator::two_texts()),
            "queued",
            "orchestrator_unavailable",
            "did not answer within orchestrator.timeout",
        ),
        (
            Answer::Raw(400, "application/json", r#"{"error":"unknown intent"}"#),
            "failed",
            "orchestrator_rejected",
            "HTTP 400",
        ),
        (
            Answer::Raw(200, "text/plain", "Sure! Here is your reply."),
            "failed",
            "orchestrator_bad_answer",
            "not JSON",
        ),
        (
            Answer::Json(json!({"reply": "hi"})),
            "failed",
            "orchestrator_bad_answer",
            "no `messages`",
        ),
        (
            Answer::Json(json!({"messages": [{"type": "template", "template": {}}]})),
            "failed",
            "orchestrator_bad_answer",
            "template.name",
        ),
    ];
    for (n, (answer, status, code, needle)) in cases.into_iter().enumerate() {
        orch.script([answer]);
        let id = db.insert_payload(&job(n as u32)).await;
        runner.run_pass(1).await.unwrap();
        let row = db.job(id).await;
        assert_eq!(row.status, status, "case {n}");
        assert_eq!(row.attempts, 1, "case {n}");
        assert_eq!(row.last_error_code.as_deref(), Some(code), "case {n}");
        let reason = row.last_error.unwrap();
        assert!(reason.contains(needle), "case {n}: {reason}");
        assert!(
            ledger(&db, id).await.is_empty(),
            "nothing recorded, nothing sent"
        );
        // A retried job must not be claimed in the next case's pass.
        sqlx::query(r#"UPDATE "OutboundJob" SET status = 'cancelled' WHERE id = $1"#)
            .bind(id)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    assert_eq!(seen(&meta), 0);
    runner.shutdown().await;

    // No orchestrator configured.
    let runner = passive(&db, &meta, |_| {}).await;
    let id = db.insert_payload(&job(99)).await;
    assert_eq!(runner.run_pass(1).await.unwrap().failed, [id]);
    assert_eq!(
        db.job(id).await.last_error_code.as_deref(),
        Some("no_orchestrator")
    );
    runner.shutdown().await;
}

#[tokio::test]
async fn bad_input_fails_its_job_with_a_readable_reason() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = passive(&db, &meta, |_| {}).await;
    let cases = [
        (
            json!({"to": "555-CALL-NOW", "message": {"type": "text", "text": {"body": "hi"}}}),
            "`to` must be an E.164 phone number",
        ),
        (
            json!({"to": "15551233001", "message": {"type": "text", "text": {"body": "  "}}}),
            "a text message needs a non-empty `text.body`",
        ),
        (
            json!({"to": "15551233002", "message": {"type": "template",
                "template": {"language": {"code": "en_US"}}}}),
            "a template message needs `template.name`",
        ),
    ];
    for (payload, needle) in cases {
        let id = db.insert_payload(&payload.to_string()).await;
        assert_eq!(runner.run_pass(1).await.unwrap().failed, [id]);
        let job = db.job(id).await;
        assert_eq!((job.status.as_str(), job.attempts), ("failed", 1));
        assert_eq!(job.last_error_code.as_deref(), Some("bad_payload"));
        let reason = job.last_error.unwrap();
        assert!(reason.contains(needle), "{reason}");
    }
    assert_eq!(seen(&meta), 0);
    runner.shutdown().await;
}

#[tokio::test]
async fn a_recipient_paced_for_longer_than_a_second_is_deferred_without_spending_an_attempt() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = passive(&db, &meta, |s| {
        s.whatsapp.pair_interval = Duration::from_secs(6);
    })
    .await;
    let a = text_job(&db, "15551234001", "first").await;
    let b = text_job(&db, "15551234001", "second").await;
    let report = runner.run_pass(2).await.unwrap();
    assert_eq!(report.processed.len(), 1);
    assert_eq!(report.retried.len(), 1);
    let deferred = db.job(&report.retried[0]).await;
    assert_eq!((deferred.status.as_str(), deferred.attempts), ("queued", 0));
    assert_eq!(deferred.last_error_code.as_deref(), Some("recipient_paced"));
    assert!(
        (5.0..=6.5).contains(&deferred.due_in),
        "{}",
        deferred.due_in
    );
    assert_eq!(meta.accepted().len(), 1);
    assert!(report.processed[0] == a || report.processed[0] == b);
    runner.shutdown().await;
}

#[tokio::test]
async fn pacing_keeps_500_jobs_to_5_recipients_under_metas_limits() {
    const JOBS: i64 = 500;
    // Meta's limits, the pair interval scaled down from 6 s so the test stays fast.
    let pair = Duration::from_millis(40);
    let db = TestDb::new().await;
    let meta = MockMeta::start_with(
        Limits {
            rate_per_second: Some(80),
            pair_interval: Some(pair),
        },
        Duration::ZERO,
    )
    .await;
    let runner = spawn_runner(&db, handler(), |s| {
        live(&mut *s, &meta);
        s.runner.workers = 8;
        s.whatsapp.rate_per_second = 80;
        s.whatsapp.pair_interval = pair;
    })
    .await;
    let mut finished = runner.finished();
    sqlx::query(
        r#"INSERT INTO "OutboundJob" (payload)
           SELECT jsonb_build_object('to', '1555900000' || (g % 5),
                  'message', jsonb_build_object('type', 'text',
                      'text', jsonb_build_object('body', 'paced ' || g)))
           FROM generate_series(1, $1) g"#,
    )
    .bind(JOBS as i32)
    .execute(&db.pool)
    .await
    .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while db.count("done").await < JOBS {
        tokio::time::timeout_at(deadline, finished.changed())
            .await
            .expect("all jobs done within 60s")
            .unwrap();
    }
    assert_eq!(
        meta.refused(130429),
        0,
        "never over the number's throughput"
    );
    assert_eq!(meta.refused(131056), 0, "never over a pair rate");
    assert_eq!(meta.accepted().len(), JOBS as usize);
    assert_once_each(&meta);
    assert_eq!(db.count("failed").await, 0);
    runner.shutdown().await;
}

#[tokio::test]
async fn handler_for_builds_the_live_handler() {
    let meta = MockMeta::start().await;
    let mut s = test_settings();
    live(&mut s, &meta);
    assert!(outbound_runner::app::handler_for(&s).is_ok());
}

#[tokio::test]
async fn an_answer_that_arrives_after_the_job_was_rescued_changes_nothing() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = passive(&db, &meta, |_| {}).await;
    meta.script([Reply::Hold]);
    let id = text_job(&db, "15551235001", "hello").await;
    let pass = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.run_pass(1).await })
    };
    wait_count(&mut meta.recorded(), 1, Duration::from_secs(10)).await;
    // The worker hangs long enough for its lease to expire and the job to be rescued.
    db.expire_lease(id).await;
    let rescued = store::reclaim(&db.pool, Reclaim::Expired, true, 5)
        .await
        .unwrap();
    assert_eq!(rescued.in_doubt, 1);
    // Meta's answer arrives now: the fenced write of the wamid matches nothing.
    meta.release(1);
    let report = pass.await.unwrap().unwrap();
    assert!(
        report.processed.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    let job = db.job(id).await;
    assert_eq!(job.status, "failed");
    assert_eq!(job.last_error_code.as_deref(), Some("delivery_unknown"));
    let rows = ledger(&db, id).await;
    assert_eq!(
        (rows[0].status.as_str(), rows[0].wamid.as_deref()),
        ("unknown", None)
    );
    assert_eq!(seen(&meta), 1);
    runner.shutdown().await;
}

#[tokio::test]
async fn two_live_runners_send_every_message_exactly_once() {
    const JOBS: usize = 300;
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let tweak = |s: &mut Settings| {
        live(s, &meta);
        s.runner.workers = 4;
        s.whatsapp.rate_per_second = 100_000;
    };
    let a = spawn_runner(&db, handler(), tweak).await;
    let b = spawn_runner(&db, handler(), tweak).await;
    let (mut fa, mut fb) = (a.finished(), b.finished());
    db.insert_jobs(JOBS).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while db.count("done").await < JOBS as i64 {
        tokio::time::timeout_at(deadline, async {
            tokio::select! { r = fa.changed() => r, r = fb.changed() => r }
        })
        .await
        .expect("all jobs done within 60s")
        .unwrap();
    }
    let (da, db_) = tokio::join!(a.shutdown(), b.shutdown());
    assert_eq!(da.aborted + db_.aborted, 0);
    assert_eq!(meta.accepted().len(), JOBS);
    assert_once_each(&meta);
    let runners: i64 =
        sqlx::query_scalar(r#"SELECT count(DISTINCT "lockedBy") FROM "OutboundJob""#)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(runners, 2, "both runners took part");
}

#[tokio::test]
async fn a_prepare_can_mark_the_first_message_as_mark_sending_would() {
    use outbound_runner::delivery::ledger::{self, Mark};
    let db = TestDb::new().await;
    for n in 0..5 {
        text_job(&db, "15551240000", &format!("p{n}")).await;
    }
    let me: Arc<str> = "prepare-mark".into();
    let jobs = store::claim(&db.pool, &me, Duration::from_secs(60), 5, 5)
        .await
        .unwrap()
        .jobs;
    assert_eq!(jobs.len(), 5);
    let prepare = |i: usize, mark: bool| ledger::Prepare {
        fence: jobs[i].fence.clone(),
        to: "15551240000".into(),
        from: "1".into(),
        composed: None,
        messages: vec![
            json!({"type": "text", "text": {"body": "first"}}),
            json!({"type": "text", "text": {"body": "second"}}),
        ],
        mark: mark.then(|| Mark {
            fence: jobs[i].fence.clone(),
            seq: 0,
            resend_in_doubt: false,
        }),
    };
    // Job 1's rows exist already (an earlier attempt), pending; job 2's first message went out;
    // job 3's first is in doubt; an operator asked job 4 to stop.
    ledger::prepare(
        &db.pool,
        &[prepare(1, false), prepare(2, false), prepare(3, false)],
    )
    .await
    .unwrap();
    for (i, status, wamid) in [(2, "sent", Some("w2")), (3, "sending", None)] {
        sqlx::query(
            r#"UPDATE "OutboundMessage" SET status = $2, wamid = $3
               WHERE "jobId" = outbound_job_id($1) AND seq = 0"#,
        )
        .bind(&jobs[i].id)
        .bind(status)
        .bind(wamid)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    sqlx::query(
        r#"UPDATE "OutboundJob" SET "cancelRequestedAt" = now() WHERE id = outbound_job_id($1)"#,
    )
    .bind(&jobs[4].id)
    .execute(&db.pool)
    .await
    .unwrap();

    let prepared = ledger::prepare(
        &db.pool,
        &[
            prepare(0, true),
            prepare(1, true),
            prepare(2, true),
            prepare(3, true),
            prepare(4, true),
        ],
    )
    .await
    .unwrap();
    let got: Vec<(bool, Vec<&str>)> = prepared
        .iter()
        .map(|p| {
            let p = p.as_ref().expect("fence holds");
            (
                p.marked,
                p.messages.iter().map(|m| m.status.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (true, vec!["sending", "pending"]),
            (true, vec!["sending", "pending"]),
            (false, vec!["sent", "pending"]),
            (false, vec!["sending", "pending"]),
            (false, vec!["pending", "pending"]),
        ],
        "created marked; marked as it was pending; sent and in doubt never marked; a job asked \
         to stop never marked"
    );
    // What the statement returned is what it left.
    for (i, (_, want)) in got.iter().enumerate() {
        assert_eq!(&statuses(&db, jobs[i].id.clone()).await, want, "job {i}");
    }
}

#[tokio::test]
async fn marks_of_several_jobs_land_in_one_statement_each_fenced_by_its_own_job() {
    use outbound_runner::delivery::ledger::{self, Mark};
    let db = TestDb::new().await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(text_job(&db, "15551230000", &format!("m{n}")).await);
    }
    let me: Arc<str> = "gate-test".into();
    let jobs = store::claim(&db.pool, &me, Duration::from_secs(60), 4, 5)
        .await
        .unwrap()
        .jobs;
    assert_eq!(jobs.len(), 4);
    // Every job's messages in one statement; a stale fence creates nothing.
    let prepare = |fence: &outbound_runner::queue::Fence| ledger::Prepare {
        fence: fence.clone(),
        to: "15551230000".into(),
        from: "1".into(),
        composed: None,
        messages: vec![json!({"type": "text", "text": {"body": "x"}})],
        mark: None,
    };
    let mut requests: Vec<ledger::Prepare> = jobs.iter().map(|j| prepare(&j.fence)).collect();
    let mut stale_fence = jobs[0].fence.clone();
    stale_fence.attempts += 1;
    requests.push(prepare(&stale_fence));
    let prepared = ledger::prepare(&db.pool, &requests).await.unwrap();
    assert_eq!(prepared.len(), 5);
    for rows in &prepared[..4] {
        let rows = rows.as_ref().expect("fence holds");
        assert!(!rows.marked, "no mark asked for");
        assert_eq!(rows.messages.len(), 1);
        assert_eq!(rows.messages[0].status, ledger::Status::Pending);
    }
    assert!(prepared[4].is_none(), "a stale fence creates nothing");
    // Job 2's message went out already; job 3's mark comes from a stale claim.
    sqlx::query(r#"UPDATE "OutboundMessage" SET status = 'sent', wamid = 'w' WHERE "jobId" = outbound_job_id($1)"#)
        .bind(&jobs[2].id)
        .execute(&db.pool)
        .await
        .unwrap();
    let mark = |i: usize| Mark {
        fence: jobs[i].fence.clone(),
        seq: 0,
        resend_in_doubt: false,
    };
    let mut stale = mark(3);
    stale.fence.attempts += 1;
    let landed = ledger::mark_sending(&db.pool, &[mark(0), mark(1), mark(2), stale])
        .await
        .unwrap();
    assert_eq!(landed, [true, true, false, false]);
    let by_job = |i: usize| statuses(&db, jobs[i].id.clone());
    assert_eq!(by_job(0).await, ["sending"]);
    assert_eq!(by_job(1).await, ["sending"]);
    assert_eq!(by_job(2).await, ["sent"]);
    assert_eq!(by_job(3).await, ["pending"]);
    // A message in `sending` is not marked again (in doubt) unless resends are allowed.
    let again = ledger::mark_sending(&db.pool, &[mark(0)]).await.unwrap();
    assert_eq!(again, [false]);
    let mut retry = mark(0);
    retry.resend_in_doubt = true;
    assert_eq!(
        ledger::mark_sending(&db.pool, &[retry]).await.unwrap(),
        [true]
    );

    // Recording wamids: fenced per row too, and only for messages in `sending`.
    let sent = |i: usize, wamid: &str| ledger::Sent {
        fence: jobs[i].fence.clone(),
        seq: 0,
        wamid: wamid.into(),
    };
    let mut stale = sent(1, "wamid.b");
    stale.fence.locked_by = "someone-else".into();
    let landed = ledger::record_sent(&db.pool, &[sent(0, "wamid.a"), stale, sent(3, "wamid.d")])
        .await
        .unwrap();
    assert_eq!(landed, [true, false, false]);
    let first = ledger(&db, jobs[0].id.clone()).await;
    assert_eq!(first[0].status, "sent");
    assert_eq!(first[0].wamid.as_deref(), Some("wamid.a"));
    assert_eq!(by_job(1).await, ["sending"]);
    assert_eq!(by_job(3).await, ["pending"]);
}

/// A two-message job to one recipient whose pair interval (1.5 s) is longer than a worker waits:
/// the second message is deferred, and on the next attempt the first, sent already, takes no
/// send's place in the recipient's spacing (its slot, taken before the prepare, is let go as
/// unused), so the second goes at its turn instead of being deferred again and again.
#[tokio::test]
async fn a_sent_first_message_does_not_hold_the_next_one_back_a_pair_interval() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let job = db
        .insert_payload(
            &json!({"to": "15551990000", "message": [
                {"type": "text", "text": {"body": "one"}},
                {"type": "text", "text": {"body": "two"}}
            ]})
            .to_string(),
        )
        .await;
    let runner = spawn_runner(&db, handler(), |s| {
        live(s, &meta);
        s.whatsapp.pair_interval = Duration::from_millis(1500);
    })
    .await;
    let done = metrics_of(&runner)
        .jobs_finished
        .with_label_values(&["done"]);
    let mut finished = runner.finished();
    tokio::time::timeout(Duration::from_secs(10), async {
        while done.get() < 1 {
            finished.changed().await.unwrap();
        }
    })
    .await
    .expect("the job done within 10 s (a deferral loop would keep it queued)");
    let rows = ledger(&db, job).await;
    assert_eq!(
        rows.iter().map(|m| m.status.as_str()).collect::<Vec<_>>(),
        ["sent", "sent"]
    );
    assert_eq!(meta.accepted().len(), 2, "each message sent once");
    let row = db.job(job).await;
    assert_eq!(row.attempts, 1, "a deferral spends no attempt");
    runner.shutdown().await;
}
