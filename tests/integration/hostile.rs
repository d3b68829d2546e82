//! Hostile inputs: whatever the app can write into `"OutboundJob"`, whatever a client can send.
//! One case per item of docs/reliability.md's "Rows the runner cannot use" and docs/http.md's
//! limits. Every case asserts what becomes of the bad input *and* that the rest keeps working.

use std::sync::Arc;
use std::time::Duration;

use outbound_runner::delivery::sandbox::SandboxHandler;

use crate::support::app::{TOKEN, spawn_app};
use crate::support::handlers::Counting;
use crate::support::{TestDb, health_of, metrics_of, spawn_passive, spawn_runner, wait_count};

const RUN: &str = "/api/jobs/run-outbound";
const GOOD: &str = r#"{"to":"15551112223","message":{"type":"text","text":{"body":"hi"}}}"#;

/// The poison rows, each with what it must become: (id, expected lastError fragment).
struct Poison {
    /// Rows that must end `failed` / `bad_payload`, with a fragment of their `lastError`.
    bad: Vec<(i64, &'static str)>,
    /// Odd rows that are still runnable and must end `done`.
    odd: Vec<i64>,
}

async fn insert(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

/// Inserts one row of each kind the app can write and the runner must survive.
async fn poison(db: &TestDb) -> Poison {
    let big = db
        .insert_payload(
            r#"{"to":"15551112223","message":{"type":"text","text":{"body":"x"}},"n":1e400}"#,
        )
        .await;
    let deep = db
        .insert_payload(&format!(
            r#"{{"to":"15551112223","message":{{"type":"text","text":{{"body":"x"}}}},"d":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        ))
        .await;
    let composed = insert(
        db,
        &format!(
            r#"INSERT INTO "OutboundJob" (payload, composed) VALUES ('{GOOD}', '{{"n": 1e400}}')
               RETURNING id"#
        ),
    )
    .await;
    let minus_infinity = insert(
        db,
        &format!(
            r#"INSERT INTO "OutboundJob" (payload, "runAt") VALUES ('{GOOD}', '-infinity')
               RETURNING id"#
        ),
    )
    .await;
    let created_infinity = insert(
        db,
        &format!(
            r#"INSERT INTO "OutboundJob" (payload, "createdAt") VALUES ('{GOOD}', 'infinity')
               RETURNING id"#
        ),
    )
    .await;
    // A row written before the schema bounded attempts (the constraint is NOT VALID: old rows
    // may still hold the maximum).
    sqlx::query(r#"ALTER TABLE "OutboundJob" DROP CONSTRAINT "OutboundJob_attempts_bound""#)
        .execute(&db.pool)
        .await
        .unwrap();
    let max_attempts = insert(
        db,
        &format!(
            r#"INSERT INTO "OutboundJob" (payload, attempts) VALUES ('{GOOD}', 2147483647)
               RETURNING id"#
        ),
    )
    .await;
    sqlx::query(
        r#"ALTER TABLE "OutboundJob" ADD CONSTRAINT "OutboundJob_attempts_bound"
           CHECK (attempts < 2147483647) NOT VALID"#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    Poison {
        bad: vec![
            (big, "too large for a 64-bit float"),
            (deep, "nested deeper than"),
            (composed, "composed"),
        ],
        odd: vec![minus_infinity, created_infinity, max_attempts],
    }
}

/// (status, attempts, "lastErrorCode", "lastError") of a job (`TestDb::job` computes with
/// "runAt", which is infinite here).
async fn row(db: &TestDb, id: i64) -> (String, i32, Option<String>, Option<String>) {
    sqlx::query_as(
        r#"SELECT status, attempts, "lastErrorCode", "lastError" FROM "OutboundJob" WHERE id = $1"#,
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn assert_settled(db: &TestDb, p: &Poison) {
    for &(id, fragment) in &p.bad {
        let (status, _, code, error) = row(db, id).await;
        assert_eq!(status, "failed", "job {id}: {error:?}");
        assert_eq!(code.as_deref(), Some("bad_payload"));
        let error = error.unwrap_or_default();
        assert!(error.contains(fragment), "job {id}: {error}");
    }
    for &id in &p.odd {
        let (status, _, _, error) = row(db, id).await;
        assert_eq!(status, "done", "job {id}: {error:?}");
    }
}

#[tokio::test]
async fn a_poison_row_fails_alone_and_the_rest_of_its_batch_runs() {
    let db = TestDb::new().await;
    let good = db.insert_jobs(5).await;
    let p = poison(&db).await;
    let runner = spawn_passive(&db, Arc::new(SandboxHandler), |s| s.runner.batch = 32).await;
    let report = runner.run_pass(100).await.unwrap();
    let mut failed = report.failed.clone();
    failed.sort();
    let mut want: Vec<i64> = p.bad.iter().map(|b| b.0).collect();
    want.sort();
    assert_eq!(failed, want, "{report:?}");
    assert_eq!(
        report.processed.len(),
        good.len() + p.odd.len(),
        "{report:?}"
    );
    assert_settled(&db, &p).await;
    assert_eq!(db.count("done").await, (good.len() + p.odd.len()) as i64);
    // The bounded claim: the row at the integer's maximum ran (and did not stop the claims).
    assert_eq!(row(&db, p.odd[2]).await.1, 2147483646);
    runner.shutdown().await;
}

#[tokio::test]
async fn the_schema_refuses_attempts_at_the_integers_maximum() {
    let db = TestDb::new().await;
    let err = sqlx::query(&format!(
        r#"INSERT INTO "OutboundJob" (payload, attempts) VALUES ('{GOOD}', 2147483647)"#
    ))
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("OutboundJob_attempts_bound"),
        "{err}"
    );
}

#[tokio::test]
async fn the_dispatcher_survives_poison_rows_and_keeps_claiming() {
    let db = TestDb::new().await;
    let p = poison(&db).await;
    // Never due: the next-due lookup must not choke on it either.
    insert(
        &db,
        &format!(
            r#"INSERT INTO "OutboundJob" (payload, "runAt") VALUES ('{GOOD}', 'infinity')
               RETURNING id"#
        ),
    )
    .await;
    let handler = Arc::new(Counting::default());
    let runner = spawn_runner(&db, handler, |_| {}).await;
    let mut finished = runner.finished();
    let all = (p.bad.len() + p.odd.len()) as u64;
    wait_count(&mut finished, all, Duration::from_secs(20)).await;
    assert_settled(&db, &p).await;
    // Still claiming: a job queued now runs.
    let later = db.insert_jobs(1).await[0];
    wait_count(&mut finished, all + 1, Duration::from_secs(20)).await;
    assert_eq!(row(&db, later).await.0, "done");
    assert_eq!(
        db.count("queued").await,
        1,
        "only the never-due row is left"
    );
    runner.shutdown().await;
}

#[tokio::test]
async fn a_trigger_that_claims_poison_rows_answers_200_and_lists_them_failed() {
    let app = spawn_app(Arc::new(SandboxHandler), |_| {}).await;
    app.db.insert_jobs(2).await;
    let p = poison(&app.db).await;
    let (status, body) = app.get_json(&format!("{RUN}?token={TOKEN}&max=50")).await;
    assert_eq!(status, 200, "{body}");
    let failed: Vec<i64> = body["jobIds"]["failed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str()?.parse().ok())
        .collect();
    for (id, _) in &p.bad {
        assert!(failed.contains(id), "{body}");
    }
    assert_eq!(body["processed"], 2 + p.odd.len(), "{body}");
    assert_settled(&app.db, &p).await;
    app.stop().await;
}

fn status_args() -> outbound_runner::cli::status::StatusArgs {
    outbound_runner::cli::status::StatusArgs {
        json: true,
        max_queued_age: Duration::from_secs(120),
        max_failure_ratio: 0.05,
        no_lease_grace: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn status_reads_infinite_timestamps_without_failing() {
    let db = TestDb::new().await;
    for sql in [
        r#"INSERT INTO "OutboundJob" (payload, "runAt") VALUES ('{}', '-infinity') RETURNING id"#,
        r#"INSERT INTO "OutboundJob" (payload, status, "completedAt", "updatedAt", "lastError")
           VALUES ('{}', 'done', 'infinity', 'infinity', 'x') RETURNING id"#,
    ] {
        insert(&db, sql).await;
    }
    let status = outbound_runner::cli::status::collect(&db.pool, &status_args())
        .await
        .unwrap();
    assert_eq!(status.last_errors.len(), 1);
    assert_eq!(status.oldest_queued_age_seconds, None);
}

/// Awaits `health.restarts()` reaching `n`, bounded.
async fn restarts_reach(health: &outbound_runner::health::Health, n: u64) {
    let mut rx = health.watch_restarts();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| *v >= n))
        .await
        .unwrap_or_else(|_| panic!("restarts did not reach {n}"))
        .unwrap();
}

/// Awaits a death, bounded; returns the reason.
async fn death(health: &outbound_runner::health::Health) -> String {
    let mut rx = health.watch_dead();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(Option::is_some))
        .await
        .expect("no death noticed")
        .unwrap()
        .clone()
        .unwrap()
}

#[tokio::test]
async fn a_killed_loop_is_restarted_and_the_runner_keeps_working() {
    let db = TestDb::new().await;
    let runner = spawn_runner(&db, Arc::new(SandboxHandler), |_| {}).await;
    let health = health_of(&runner);
    let names = [
        "dispatcher",
        "listener",
        "rescuer",
        "pruner",
        "prober",
        "lease keeper",
    ];
    for name in names {
        assert!(
            health.tasks.names().contains(&name),
            "{name} is not supervised: {:?}",
            health.tasks.names()
        );
    }
    let mut finished = runner.finished();
    for (n, name) in names.into_iter().enumerate() {
        assert!(health.tasks.kill(name), "{name} was not running");
        restarts_reach(&health, n as u64 + 1).await;
        assert_eq!(health.dead(), None, "{name}");
        // The restarted dispatcher (and listener) still run jobs as they arrive.
        db.insert_jobs(1).await;
        wait_count(&mut finished, n as u64 + 1, Duration::from_secs(20)).await;
    }
    assert!(health.alive(Duration::from_secs(3600)));
    runner.shutdown().await;
}

#[tokio::test]
async fn a_task_that_cannot_be_restarted_turns_health_red() {
    for name in [
        "completer",
        "ledger writer (sending)",
        "ledger writer (sent)",
        "HTTP server",
    ] {
        let db = TestDb::new().await;
        let runner = spawn_runner(&db, Arc::new(SandboxHandler), |_| {}).await;
        let app = crate::support::app::App::serve(db, runner).await;
        let health = health_of(&app.runner);
        let (status, _) = app.get_json("/healthz").await;
        assert_eq!(status, 200);
        assert!(health.tasks.kill(name), "{name} was not running");
        let why = death(&health).await;
        assert!(why.contains(name), "{why}");
        assert!(!health.alive(Duration::from_secs(3600)), "{name}");
        assert!(
            outbound_runner::systemd::status_line(&health, &metrics_of(&app.runner))
                .contains("UNHEALTHY"),
            "{name}"
        );
        if name != "HTTP server" {
            let (status, body) = app.get_json("/healthz").await;
            assert_eq!(status, 503, "{name}: {body}");
            assert!(body["reason"].as_str().unwrap().contains(name), "{body}");
            let (status, _) = app.get_json("/readyz").await;
            assert_eq!(status, 503, "{name}");
        }
        app.stop().await;
    }
}

/// A writer into a shared buffer, for a subscriber under test.
#[derive(Clone, Default)]
struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_request_id_cannot_forge_or_flood_a_text_log_line() {
    use tracing_subscriber::layer::SubscriberExt;
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .fmt_fields(outbound_runner::telemetry::SafeFields)
            .with_ansi(false)
            .with_writer(move || writer.clone()),
    );
    let forged = "req-1\n2026-01-01T00:00:00Z ERROR forged: payments disabled\u{1b}[2J";
    let huge = "r".repeat(1_000_000);
    tracing::subscriber::with_default(subscriber, || {
        for request_id in [forged, huge.as_str()] {
            // What the worker logs for every job: a span field and the id in the message.
            let span = tracing::info_span!("job", job_id = 1, request_id);
            let _enter = span.enter();
            tracing::info!("Processing job {} (requestId: {})", 1, request_id);
        }
    });
    let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains(r"req-1\n2026-01-01"), "{}", lines[0]);
    assert!(!out.contains('\u{1b}'), "{out}");
    // Cut, and saying so: the span field at 512 characters, the message at 4096.
    assert!(lines[1].len() < 6_000, "{} bytes", lines[1].len());
    assert!(
        lines[1].contains("[1000000 bytes in all]"),
        "{}",
        &lines[1][..200]
    );
}

/// A trigger of the app's that refuses to let rows whose payload has `key` become `running` (or,
/// with `always`, be updated at all), or every row when `key` is empty.
async fn refuse(db: &TestDb, key: &str, always: bool) {
    let condition = match (key, always) {
        ("", _) => "NEW.status = 'running'".to_string(),
        (k, false) => format!("NEW.payload ? '{k}' AND NEW.status = 'running'"),
        (k, true) => format!("NEW.payload ? '{k}'"),
    };
    sqlx::raw_sql(&format!(
        r#"CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               IF {condition} THEN RAISE EXCEPTION 'refused by the app''s trigger'; END IF;
               RETURN NEW;
           END $$;
           CREATE TRIGGER refuse BEFORE UPDATE ON "OutboundJob"
               FOR EACH ROW EXECUTE FUNCTION refuse();"#
    ))
    .execute(&db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_row_that_fails_every_claim_is_named_failed_and_the_queue_moves_on() {
    let db = TestDb::new().await;
    let blocking = db
        .insert_payload(
            r#"{"to":"15551112223","boom":1,"message":{"type":"text","text":{"body":"x"}}}"#,
        )
        .await;
    let good = db.insert_jobs(3).await;
    refuse(&db, "boom", false).await;
    // `status` names it before any runner touched it (a dry run, rolled back).
    let status = outbound_runner::cli::status::collect(&db.pool, &status_args())
        .await
        .unwrap();
    let check = status.checks.iter().find(|c| c.name == "claims").unwrap();
    assert!(
        !check.ok && check.detail.contains(&format!("job {blocking}")),
        "{}",
        check.detail
    );
    assert!(
        check.detail.contains("refused by the app"),
        "{}",
        check.detail
    );
    assert_eq!(
        row(&db, blocking).await.0,
        "queued",
        "status changed nothing"
    );

    let runner = spawn_passive(&db, Arc::new(SandboxHandler), |_| {}).await;
    let report = runner.run_pass(10).await.unwrap();
    assert_eq!(report.processed.len(), good.len(), "{report:?}");
    let (status, _, code, error) = row(&db, blocking).await;
    assert_eq!(
        (status.as_str(), code.as_deref()),
        ("failed", Some("unclaimable"))
    );
    assert!(error.unwrap().contains("refused by the app"));
    runner.shutdown().await;
}

#[tokio::test]
async fn a_row_the_database_will_not_let_us_touch_is_skipped_by_the_claims() {
    let db = TestDb::new().await;
    let stuck = db
        .insert_payload(
            r#"{"to":"15551112223","stuck":1,"message":{"type":"text","text":{"body":"x"}}}"#,
        )
        .await;
    db.insert_jobs(3).await;
    refuse(&db, "stuck", true).await;
    let runner = spawn_passive(&db, Arc::new(SandboxHandler), |_| {}).await;
    let report = runner.run_pass(10).await.unwrap();
    assert_eq!(report.processed.len(), 3, "{report:?}");
    assert_eq!(row(&db, stuck).await.0, "queued");
    // Later passes skip it without failing.
    db.insert_jobs(1).await;
    assert_eq!(runner.run_pass(10).await.unwrap().processed.len(), 1);
    runner.shutdown().await;
}

#[tokio::test]
async fn a_trigger_refused_by_the_data_does_not_claim_the_database_is_unavailable() {
    let app = spawn_app(Arc::new(SandboxHandler), |_| {}).await;
    app.db.insert_jobs(2).await;
    refuse(&app.db, "", false).await;
    let (status, body) = app.get_json(&format!("{RUN}?token={TOKEN}")).await;
    assert_eq!(status, 500, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("refused the claim") && !error.contains("unavailable"),
        "{body}"
    );
    // Nothing was failed: the database refuses every claim, no single row is to blame.
    assert_eq!(app.db.count("queued").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_running_row_without_a_lease_is_rescued_after_the_grace_and_status_flags_it() {
    let db = TestDb::new().await;
    let orphan = insert(
        &db,
        &format!(
            r#"INSERT INTO "OutboundJob" (payload, status, "updatedAt")
               VALUES ('{GOOD}', 'running', now() - interval '10 minutes') RETURNING id"#
        ),
    )
    .await;
    let fresh = insert(
        &db,
        &format!(
            r#"INSERT INTO "OutboundJob" (payload, status) VALUES ('{GOOD}', 'running')
               RETURNING id"#
        ),
    )
    .await;
    let status = outbound_runner::cli::status::collect(&db.pool, &status_args())
        .await
        .unwrap();
    assert_eq!(status.running_without_lease, 1);
    assert!(
        !status
            .checks
            .iter()
            .find(|c| c.name == "no-lease")
            .unwrap()
            .ok
    );
    // With the default runner.foreign_running_grace (15 minutes), the row the app's own runner
    // may still be working (updated 10 minutes ago) is not flagged: the rescuer waits as long.
    let patient = outbound_runner::cli::status::StatusArgs {
        no_lease_grace: Duration::from_secs(15 * 60),
        ..status_args()
    };
    let status = outbound_runner::cli::status::collect(&db.pool, &patient)
        .await
        .unwrap();
    assert_eq!(status.running_without_lease, 0);
    let rescued = outbound_runner::queue::store::reclaim(
        &db.pool,
        outbound_runner::queue::store::Reclaim::Expired,
        true,
        5,
    )
    .await
    .unwrap();
    assert_eq!(rescued.requeued, 1);
    assert_eq!(row(&db, orphan).await.0, "queued");
    assert_eq!(row(&db, fresh).await.0, "running", "within the grace");
}

/// Opens `n` connections to `addr` that never send a byte (or, with `half`, half a request).
async fn idle_sockets(addr: &str, n: usize, half: bool) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if half {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
        }
        held.push(s);
    }
    held
}

/// Five `/healthz` answers, each on a fresh connection: (the median, the slowest). The median
/// is held to 100 ms; the slowest only to a second, so that one scheduling hiccup of a loaded
/// test machine is not read as starvation (a starved endpoint does not answer within 5 s).
async fn health_times(base: &str) -> (Duration, Duration) {
    let mut times = Vec::new();
    for _ in 0..5 {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let response = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        times.push(started.elapsed());
    }
    times.sort();
    (times[2], times[4])
}

#[tokio::test]
async fn health_answers_within_100ms_while_1000_idle_sockets_are_held() {
    let app = spawn_app(Arc::new(SandboxHandler), |_| {}).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut held = idle_sockets(&addr, 900, false).await;
    held.extend(idle_sockets(&addr, 100, true).await);
    let (median, slowest) = health_times(&app.base).await;
    assert!(median < Duration::from_millis(100), "{median:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    drop(held);
    app.stop().await;
}

#[tokio::test]
async fn at_the_connection_cap_idle_connections_make_room_for_new_ones() {
    let db = TestDb::new().await;
    let runner = spawn_passive(&db, Arc::new(SandboxHandler), |_| {}).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let router = outbound_runner::http::routes::api(
        outbound_runner::http::HttpState::with_metrics_on_api(runner.clone(), true),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(outbound_runner::http::server::serve_with_cap(
        listener,
        router,
        stop.clone().cancelled_owned(),
        20,
    ));
    // Twice the cap in idle and half-sent connections: the server cuts the oldest ones.
    let held = idle_sockets(&addr, 20, false).await;
    let half = idle_sockets(&addr, 20, true).await;
    let (median, slowest) = health_times(&format!("http://{addr}")).await;
    assert!(median < Duration::from_millis(100), "{median:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    drop((held, half));
    stop.cancel();
    server.await.unwrap().unwrap();
    runner.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_sends_half_its_headers_is_closed_after_the_header_timeout() {
    use tokio::io::AsyncReadExt;
    let app = spawn_app(Arc::new(SandboxHandler), |_| {}).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let timeout = outbound_runner::http::server::HEADER_READ_TIMEOUT;
    for half in [true, false] {
        let mut socket = idle_sockets(&addr, 1, half).await.pop().unwrap();
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        // The server closes it (EOF, or a reset): read until then, bounded.
        let _ = tokio::time::timeout(
            timeout + Duration::from_secs(5),
            socket.read_to_end(&mut buf),
        )
        .await
        .expect("the connection was not closed");
        let took = started.elapsed();
        assert!(
            took >= timeout - Duration::from_millis(500),
            "half={half}: {took:?}"
        );
    }
    app.stop().await;
}

/// Opens `n` connections to `addr` that each send a request head announcing a 10-byte body
/// (`head` up to the blank line) and then nothing; with the instant each head was sent.
async fn withheld_bodies(
    addr: &str,
    n: usize,
    head: &str,
) -> Vec<(tokio::net::TcpStream, std::time::Instant)> {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("{head}Content-Length: 10\r\n\r\n").as_bytes())
            .await
            .unwrap();
        held.push((s, std::time::Instant::now()));
    }
    held
}

/// What the server sent before it closed the connection (bounded by `within`).
async fn answer_then_close(s: &mut tokio::net::TcpStream, within: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut buf))
        .await
        .expect("the server did not close the connection")
        .ok();
    String::from_utf8_lossy(&buf).into_owned()
}

const WEBHOOK_HEAD: &str = "POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\n\
                            Content-Type: application/json\r\nX-Hub-Signature-256: sha256=00\r\n";

/// Issue 25, case 1: a client that sends `Content-Length: 10` and then nothing no longer holds
/// a connection: `/healthz` answers while 100 of them are open, and each is answered 408 and
/// closed once `http.request_timeout` has passed since its head. The admin API checks the token
/// before it waits for a body.
#[tokio::test]
async fn withheld_bodies_are_cut_at_the_request_timeout_and_never_lock_out_health() {
    let timeout = Duration::from_secs(1);
    let app = spawn_app(Arc::new(SandboxHandler), |s| {
        s.http.request_timeout = timeout;
        s.whatsapp.app_secret = Some("app-secret".to_string().into());
        s.http.admin_token = Some("admin-token".to_string().into());
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut held = withheld_bodies(&addr, 90, WEBHOOK_HEAD).await;
    held.extend(
        withheld_bodies(
            &addr,
            10,
            "POST /api/admin/jobs/retry HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer admin-token\r\n",
        )
        .await,
    );
    let (median, slowest) = health_times(&app.base).await;
    assert!(median < Duration::from_millis(100), "{median:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    for (socket, sent) in &mut held {
        let answer = answer_then_close(socket, timeout + Duration::from_secs(5)).await;
        let took = sent.elapsed();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(answer.contains("http.request_timeout"), "{answer:?}");
        assert!(
            took >= timeout - Duration::from_millis(100),
            "closed before the deadline: {took:?}"
        );
    }
    let timeouts = metrics_of(&app.runner)
        .webhook_requests
        .with_label_values(&["timeout"])
        .get();
    assert_eq!(timeouts, 90);

    // Without the admin token: refused at once, no body awaited.
    let mut refused = withheld_bodies(
        &addr,
        1,
        "POST /api/admin/jobs/cancel HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n",
    )
    .await;
    let (socket, sent) = &mut refused[0];
    let answer = answer_then_close(socket, timeout + Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer:?}");
    assert!(sent.elapsed() < timeout, "{:?}", sent.elapsed());
    app.stop().await;
}

/// At the connection cap, connections still waiting for their body are cut to make room like
/// idle ones: 100 of them against a cap of 32 (the issue's `ulimit -n 64`) do not lock out
/// `/healthz`.
#[tokio::test]
async fn at_the_connection_cap_withheld_bodies_make_room_for_new_connections() {
    let db = TestDb::new().await;
    let runner = spawn_passive(&db, Arc::new(SandboxHandler), |s| {
        s.whatsapp.app_secret = Some("app-secret".to_string().into());
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let router = outbound_runner::http::routes::api(
        outbound_runner::http::HttpState::with_metrics_on_api(runner.clone(), true),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(outbound_runner::http::server::serve_with(
        listener,
        router,
        stop.clone().cancelled_owned(),
        32,
        Duration::from_secs(30),
    ));
    let held = withheld_bodies(&addr, 100, WEBHOOK_HEAD).await;
    let (median, slowest) = health_times(&format!("http://{addr}")).await;
    assert!(median < Duration::from_millis(100), "{median:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    drop(held);
    stop.cancel();
    server.await.unwrap().unwrap();
    runner.shutdown().await;
}

#[tokio::test]
async fn several_authorization_headers_are_refused_and_head_never_runs_a_pass() {
    let app = spawn_app(Arc::new(SandboxHandler), |_| {}).await;
    let job = app.db.insert_jobs(1).await[0];
    let url = app.url(RUN);
    // One right token among others: refused, not each tried.
    let response = app
        .client
        .get(&url)
        .header("Authorization", "Bearer wrong")
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    let (status, body) = crate::support::app::json(response).await;
    assert_eq!((status, body["ok"].as_bool()), (401, Some(false)), "{body}");
    let (status, _) = app
        .get_json(&format!("{RUN}?token=wrong&token={TOKEN}"))
        .await;
    assert_eq!(status, 401);
    // Issue 25: one credential per request across header and query too (two guesses otherwise).
    for (bearer, query) in [("wrong", TOKEN), (TOKEN, "wrong")] {
        let response = app
            .client
            .get(format!("{url}?token={query}"))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "bearer {bearer}, query {query}");
    }
    assert_eq!(row(&app.db, job).await.0, "queued");

    let passes = *app.runner.passes().borrow();
    let response = app
        .client
        .head(format!("{url}?token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(*app.runner.passes().borrow(), passes, "HEAD ran a pass");
    assert_eq!(row(&app.db, job).await.0, "queued");

    // Refusals below the handlers answer in the same JSON shape.
    let response = app
        .client
        .post(format!("{url}?token={TOKEN}"))
        .body(vec![b'x'; 200 * 1024])
        .send()
        .await
        .unwrap();
    let (status, body) = crate::support::app::json(response).await;
    assert_eq!(status, 413);
    assert_eq!(body["ok"], false, "{body}");
    let response = app.client.put(&url).send().await.unwrap();
    let (status, body) = crate::support::app::json(response).await;
    assert_eq!((status, body["ok"].as_bool()), (405, Some(false)), "{body}");
    app.stop().await;
}

fn load_with(file: Option<&str>, env: &[(&str, &str)]) -> Result<(), String> {
    let path = file.map(|text| {
        let path =
            std::env::temp_dir().join(format!("or-hostile-{:016x}.toml", rand::random::<u64>()));
        std::fs::write(&path, text).unwrap();
        path
    });
    let result = outbound_runner::config::load(&outbound_runner::config::LoadOptions {
        config_path: path.clone(),
        skip_default_path: true,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    });
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
    result.map(|_| ()).map_err(|e| e.to_string())
}

#[test]
fn whitespace_only_secrets_are_refused_with_their_key_named() {
    let err = load_with(None, &[("JOB_RUNNER_TOKEN", "   ")]).unwrap_err();
    assert!(
        err.contains("http.job_runner_token: is only whitespace"),
        "{err}"
    );
    let file = std::env::temp_dir().join(format!("or-secret-{:016x}", rand::random::<u64>()));
    std::fs::write(&file, " \t\n").unwrap();
    let err = load_with(None, &[("CRON_SECRET_FILE", file.to_str().unwrap())]).unwrap_err();
    std::fs::remove_file(&file).unwrap();
    assert!(
        err.contains("http.cron_secret_file") && err.contains("only whitespace"),
        "{err}"
    );
}

/// Issue 25, case 5: a verify token of spaces would verify a subscription sent `%20`.
#[test]
fn a_whitespace_only_verify_token_is_refused_like_every_other_secret() {
    let err = load_with(None, &[("WHATSAPP_VERIFY_TOKEN", " ")]).unwrap_err();
    assert!(
        err.contains("whatsapp.verify_token: is only whitespace"),
        "{err}"
    );
    assert!(load_with(None, &[("WHATSAPP_VERIFY_TOKEN", "verify-me")]).is_ok());
}

/// Issue 25, case 6: a secret file is a regular file of at most 64 KiB, never a device (which
/// never ends) or a FIFO (which never answers), and an error never echoes what it holds.
#[test]
fn secret_files_are_regular_small_files_and_never_echoed() {
    let dir = std::env::temp_dir().join(format!("or-secret-files-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let started = std::time::Instant::now();
    let err = load_with(None, &[("ADMIN_TOKEN_FILE", "/dev/zero")]).unwrap_err();
    assert!(
        err.contains("http.admin_token_file") && err.contains("not a regular file"),
        "{err}"
    );
    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let err = load_with(None, &[("CRON_SECRET_FILE", fifo.to_str().unwrap())]).unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let big = dir.join("big");
    std::fs::write(&big, vec![b'a'; 64 * 1024 + 1]).unwrap();
    let err = load_with(None, &[("JOB_RUNNER_TOKEN_FILE", big.to_str().unwrap())]).unwrap_err();
    assert!(err.contains("larger than 64 KiB"), "{err}");
    let fits = dir.join("fits");
    std::fs::write(&fits, vec![b'a'; 64 * 1024]).unwrap();
    assert!(load_with(None, &[("JOB_RUNNER_TOKEN_FILE", fits.to_str().unwrap())]).is_ok());

    // A file that is not a database URL (say /etc/shadow): its first characters are not shown.
    let shadow = dir.join("shadow");
    std::fs::write(&shadow, "root:$6$saltsalt$hashhash:19000:0:99999:7:::\n").unwrap();
    let err = load_with(None, &[("DATABASE_URL_FILE", shadow.to_str().unwrap())]).unwrap_err();
    assert!(err.contains("database.url"), "{err}");
    for leaked in ["root", "saltsalt", "hashhash"] {
        assert!(!err.contains(leaked), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 25, case 6: a configuration file that holds secrets and that every user may read is
/// warned about (start-up and `check-config`), naming the keys, never the values.
#[test]
fn a_config_file_readable_by_every_user_and_holding_secrets_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let path =
        std::env::temp_dir().join(format!("or-readable-{:016x}.toml", rand::random::<u64>()));
    std::fs::write(&path, "[http]\nadmin_token = \"admin-secret-value\"\n").unwrap();
    let opts = outbound_runner::config::LoadOptions {
        config_path: Some(path.clone()),
        skip_default_path: true,
        env: Default::default(),
    };
    let settings = outbound_runner::config::load(&opts).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let warning =
        outbound_runner::config::readable_secrets_warning(&opts, &settings).expect("a warning");
    assert!(
        warning.contains("http.admin_token") && warning.contains("644"),
        "{warning}"
    );
    assert!(!warning.contains("admin-secret-value"), "{warning}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_outbound-runner"))
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("readable by every user"), "{stderr}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        outbound_runner::config::readable_secrets_warning(&opts, &settings),
        None
    );
    // No secret in the file: nothing to warn about.
    std::fs::write(&path, "[http]\nmax_per_request = 10\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let settings = outbound_runner::config::load(&opts).unwrap();
    assert_eq!(
        outbound_runner::config::readable_secrets_warning(&opts, &settings),
        None
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_toml_syntax_error_never_prints_the_offending_value() {
    let err = load_with(
        Some("[database]\nurl = postgres://app:hunter2@db.example/app\n"),
        &[],
    )
    .unwrap_err();
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

fn text_line(n: usize) -> String {
    format!(r#"{{"to":"1555{n:07}","message":{{"type":"text","text":{{"body":"m{n}"}}}}}}"#)
}

#[tokio::test]
async fn enqueue_streams_in_chunks_and_names_the_line_the_database_refuses() {
    let db = TestDb::new().await;
    // 2,500 lines (three statements); line 2,100 has a "maxAttempts" the schema refuses.
    let mut input = String::new();
    for n in 1..=2500 {
        if n == 2100 {
            input.push_str(&format!(
                r#"{{"payload":{},"maxAttempts":0}}"#,
                text_line(n)
            ));
        } else {
            input.push_str(&text_line(n));
        }
        input.push('\n');
    }
    let code = outbound_runner::cli::enqueue_stream(&db.pool, input.as_bytes())
        .await
        .unwrap();
    assert_eq!(code, outbound_runner::exit::DATAERR);
    assert_eq!(db.count("queued").await, 0, "all or nothing");

    // Without the bad line, all 2,500 go in.
    let good: String = (1..=2500).map(|n| text_line(n) + "\n").collect();
    let code = outbound_runner::cli::enqueue_stream(&db.pool, good.as_bytes())
        .await
        .unwrap();
    assert_eq!(code, outbound_runner::exit::OK);
    assert_eq!(db.count("queued").await, 2500);
}

#[test]
fn enqueue_exits_65_naming_the_line_when_the_database_refuses_a_row() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::new());
    let input = format!(
        "{}\n{}\n{{\"payload\":{},\"maxAttempts\":0}}\n",
        text_line(1),
        text_line(2),
        text_line(3)
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_outbound-runner"))
        .arg("enqueue")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(
        stderr.contains("line 3") && stderr.contains("maxAttempts"),
        "{stderr}"
    );
    assert_eq!(rt.block_on(db.count("queued")), 0);
    drop(db);
}
