//! The HTTP endpoints, black-box over real HTTP on port 0 with a real database: the user's job-runner guide's (docs/http.md)
//! requests and answers, the auth rules, `max`, concurrency, timeouts, `/metrics`, `/readyz`,
//! and the daemon binary serving them.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use outbound_runner::delivery::sandbox::SandboxHandler;
use outbound_runner::http::{self, HttpState, Listeners};
use outbound_runner::runner::Runner;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::app::{App, CRON, TOKEN, client, json as json_of, spawn_app};
use crate::support::handlers::{Counting, Gate};
use crate::support::proxy::{Proxy, upstream_of};
use crate::support::{TestDb, spawn_runner_at, wait_count};

const RUN: &str = "/api/jobs/run-outbound";
const CRON_PATH: &str = "/api/cron/run-outbound-jobs";

fn sandbox() -> Arc<SandboxHandler> {
    Arc::new(SandboxHandler)
}

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        // Ids are strings in JSON (the app's own ids; here our bigint's decimal text).
        .map(|i| i.as_str().unwrap().parse().unwrap())
        .collect()
}

/// The number of successful claim statements so far.
fn passes(runner: &Runner) -> u64 {
    *runner.passes().borrow()
}

#[tokio::test]
async fn the_guides_requests_get_the_guides_answers() {
    let app = spawn_app(sandbox(), |_| {}).await;

    // Section 2: curl "https://YOUR_DOMAIN/api/jobs/run-outbound?token=YOUR_JOB_RUNNER_TOKEN&max=10"
    let (status, body) = app.get_json(&format!("{RUN}?token={TOKEN}&max=10")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"ok": true, "processed": 0, "failed": 0, "jobIds": {"processed": [], "failed": []}})
    );

    // Section 3: curl -X GET ".../api/cron/run-outbound-jobs" -H "Authorization: Bearer YOUR_CRON_SECRET"
    for request in [
        app.client.get(app.url(CRON_PATH)),
        app.client.post(app.url(CRON_PATH)),
    ] {
        let (status, body) = json_of(request.bearer_auth(CRON).send().await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({"ok": true, "message": "Job runner triggered",
                   "jobRunnerResult": {"ok": true, "processed": 0, "failed": 0}})
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_job_runner_takes_its_token_as_query_or_bearer_and_reports_job_ids() {
    let app = spawn_app(sandbox(), |_| {}).await;
    let jobs = app.db.insert_jobs(5).await;
    let bad = app
        .db
        .insert_payload(r#"{"message":{"type":"text"}}"#)
        .await;

    // The guide's form: ?token=, GET.
    let (status, body) = app.get_json(&format!("{RUN}?token={TOKEN}&max=2")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), set(&["ok", "processed", "failed", "jobIds"]));
    assert_eq!(keys(&body["jobIds"]), set(&["processed", "failed"]));
    assert_eq!(body["ok"], true);
    assert_eq!(body["processed"], 2);
    assert_eq!(ids(&body["jobIds"]["processed"]), jobs[..2]);

    // Authorization: Bearer, POST.
    let (status, body) = json_of(
        app.client
            .post(app.url(&format!("{RUN}?max=3")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body["jobIds"]["processed"]), jobs[2..5]);

    // No max: the default (10) takes the rest, including the job that fails.
    let (status, body) = json_of(
        app.client
            .get(app.url(RUN))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"ok": true, "processed": 0, "failed": 1, "jobIds": {"processed": [], "failed": [bad.to_string()]}})
    );
    assert_eq!(app.db.count("done").await, 5);
    assert_eq!(app.db.job(bad).await.status, "failed");
    app.stop().await;
}

#[tokio::test]
async fn the_cron_endpoint_runs_a_pass_with_its_bearer_secret() {
    let app = spawn_app(sandbox(), |_| {}).await;
    app.db.insert_jobs(3).await;
    let (status, body) = json_of(
        app.client
            .get(app.url(CRON_PATH))
            .bearer_auth(CRON)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), set(&["ok", "message", "jobRunnerResult"]));
    assert_eq!(
        keys(&body["jobRunnerResult"]),
        set(&["ok", "processed", "failed"])
    );
    assert_eq!(body["message"], "Job runner triggered");
    assert_eq!(body["jobRunnerResult"]["processed"], 3);
    assert_eq!(app.db.count("done").await, 3);
    app.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_credentials_get_the_same_401_and_run_nothing() {
    let app = spawn_app(sandbox(), |_| {}).await;
    app.db.insert_jobs(3).await;
    let before = passes(&app.runner);
    let c = &app.client;
    let run = |q: &str| app.url(&format!("{RUN}{q}"));
    let cron = app.url(CRON_PATH);
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("job runner: no token", c.get(run(""))),
        (
            "job runner: wrong query token",
            c.get(run("?token=nope&max=1")),
        ),
        ("job runner: empty query token", c.get(run("?token=&max=1"))),
        (
            "job runner: token with a suffix",
            c.get(run(&format!("?token={TOKEN}x"))),
        ),
        (
            "job runner: wrong bearer",
            c.get(run("")).bearer_auth("nope"),
        ),
        (
            "job runner: the cron secret",
            c.get(run("")).bearer_auth(CRON),
        ),
        (
            "job runner: x-vercel-cron alone",
            c.get(run("")).header("x-vercel-cron", "1"),
        ),
        (
            "job runner: token as basic auth",
            c.get(run("")).basic_auth(TOKEN, Some("")),
        ),
        ("cron: no secret", c.get(cron.clone())),
        (
            "cron: x-vercel-cron alone",
            c.get(cron.clone()).header("x-vercel-cron", "1"),
        ),
        (
            "cron: vercel user agent alone",
            c.get(cron.clone()).header("user-agent", "vercel-cron/1.0"),
        ),
        (
            "cron: wrong bearer",
            c.post(cron.clone()).bearer_auth("nope"),
        ),
        (
            "cron: the job runner token",
            c.get(cron.clone()).bearer_auth(TOKEN),
        ),
        (
            "cron: the secret as a query parameter",
            c.get(format!("{cron}?token={CRON}")),
        ),
        (
            "cron: secret without the Bearer scheme",
            c.get(cron.clone()).header("authorization", CRON),
        ),
    ];
    for (case, request) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "{case}"
        );
        let (status, body) = json_of(response).await;
        assert_eq!(status, 401, "{case}: {body}");
        assert_eq!(
            body,
            json!({"ok": false, "error": "unauthorized"}),
            "{case}"
        );
    }
    assert_eq!(passes(&app.runner), before, "a refused request claimed");
    assert_eq!(app.db.count("queued").await, 3);
    app.stop().await;
}

#[tokio::test]
async fn an_unset_secret_disables_its_endpoint() {
    // No JOB_RUNNER_TOKEN: the job runner is disabled whatever is presented; the cron endpoint,
    // whose secret is set, still works.
    let app = spawn_app(sandbox(), |s| s.http.job_runner_token = None).await;
    app.db.insert_jobs(1).await;
    let c = &app.client;
    for request in [
        c.get(app.url(RUN)),
        c.get(app.url(&format!("{RUN}?token="))),
        c.get(app.url(&format!("{RUN}?token={TOKEN}"))),
        c.get(app.url(RUN)).header("authorization", "Bearer "),
        c.post(app.url(RUN)).bearer_auth(TOKEN),
        c.get(app.url(RUN)).header("x-vercel-cron", "1"),
    ] {
        let (status, body) = json_of(request.send().await.unwrap()).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body, json!({"ok": false, "error": "disabled"}));
    }
    assert_eq!(app.db.count("queued").await, 1);
    let (status, _) = json_of(
        c.get(app.url(CRON_PATH))
            .bearer_auth(CRON)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    app.stop().await;

    // No CRON_SECRET: the cron endpoint is disabled, even for the x-vercel-cron header.
    let app = spawn_app(sandbox(), |s| s.http.cron_secret = None).await;
    for request in [
        app.client.get(app.url(CRON_PATH)),
        app.client.get(app.url(CRON_PATH)).bearer_auth(""),
        app.client
            .get(app.url(CRON_PATH))
            .header("x-vercel-cron", "1"),
        app.client.get(app.url(CRON_PATH)).bearer_auth(CRON),
    ] {
        let (status, body) = json_of(request.send().await.unwrap()).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body, json!({"ok": false, "error": "disabled"}));
    }
    app.stop().await;
}

#[tokio::test]
async fn max_must_be_a_positive_integer() {
    let app = spawn_app(sandbox(), |_| {}).await;
    app.db.insert_jobs(2).await;
    let before = passes(&app.runner);
    for max in ["0", "abc", "-1", "1.5", "", "+2", "1e3", "2&max=3"] {
        let (status, body) = app
            .get_json(&format!("{RUN}?token={TOKEN}&max={max}"))
            .await;
        assert_eq!(status, 400, "max={max}: {body}");
        assert_eq!(keys(&body), set(&["ok", "error"]), "max={max}");
        assert_eq!(body["ok"], false);
        let reason = body["error"].as_str().unwrap();
        assert!(reason.contains("max"), "max={max}: {reason}");
    }
    // The cron endpoint takes the same `max`, with the same rules.
    let (status, _) = json_of(
        app.client
            .get(app.url(&format!("{CRON_PATH}?max=abc")))
            .bearer_auth(CRON)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    // Refused before any claim.
    assert_eq!(passes(&app.runner), before);
    assert_eq!(app.db.count("queued").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn max_is_capped_by_max_per_request() {
    let app = spawn_app(sandbox(), |s| s.http.max_per_request = 5).await;
    let jobs = app.db.insert_jobs(8).await;
    let (status, body) = app
        .get_json(&format!("{RUN}?token={TOKEN}&max=100000"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["processed"], 5);
    assert_eq!(ids(&body["jobIds"]["processed"]), jobs[..5]);
    assert_eq!(app.db.count("queued").await, 3);
    // Larger than any integer type: still a positive integer, still capped.
    let (status, body) = app
        .get_json(&format!("{RUN}?token={TOKEN}&max=99999999999999999999999"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["processed"], 3);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_triggers_run_every_job_exactly_once() {
    const JOBS: usize = 200;
    let counting = Arc::new(Counting::default());
    // Small batches: each pass takes many claims, so the passes interleave.
    let app = spawn_app(counting.clone(), |s| s.runner.batch = 8).await;
    let jobs = app.db.insert_jobs(JOBS).await;
    let trigger = |bearer: &'static str, path: &'static str| {
        app.client
            .post(app.url(&format!("{path}?max={JOBS}")))
            .bearer_auth(bearer)
            .send()
    };
    let (a, b, c) = tokio::join!(
        trigger(TOKEN, RUN),
        trigger(TOKEN, RUN),
        trigger(CRON, CRON_PATH)
    );
    let (sa, a) = json_of(a.unwrap()).await;
    let (sb, b) = json_of(b.unwrap()).await;
    let (sc, c) = json_of(c.unwrap()).await;
    assert_eq!((sa, sb, sc), (200, 200, 200), "{a} {b} {c}");

    let a_ids = ids(&a["jobIds"]["processed"]);
    let b_ids = ids(&b["jobIds"]["processed"]);
    let cron_count = c["jobRunnerResult"]["processed"].as_u64().unwrap() as usize;
    let a_set: HashSet<i64> = a_ids.iter().copied().collect();
    assert!(
        b_ids.iter().all(|id| !a_set.contains(id)),
        "two passes reported one job"
    );
    assert_eq!(a_ids.len() + b_ids.len() + cron_count, JOBS, "{a} {b} {c}");

    let runs = counting.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), JOBS);
    for id in &jobs {
        assert_eq!(runs.get(&(*id).into()), Some(&1), "job {id}");
    }
    assert_eq!(app.db.count("done").await, JOBS as i64);
    let sends: i64 = sqlx::query_scalar(r#"SELECT count(*) FROM "OutboundMessage""#)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(sends, JOBS as i64);
    app.stop().await;
}

#[tokio::test]
async fn a_pass_past_pass_timeout_answers_504_and_its_job_still_finishes() {
    let gate = Gate::new();
    let app = spawn_app(gate.clone(), |s| {
        s.runner.batch = 1;
        s.http.pass_timeout = Duration::from_millis(300);
    })
    .await;
    let jobs = app.db.insert_jobs(2).await;
    let mut finished = app.runner.finished();
    let mut running = app.state.passes_running();

    let (status, body) = app.get_json(&format!("{RUN}?token={TOKEN}&max=2")).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(keys(&body), set(&["ok", "error"]));
    assert_eq!(body["ok"], false);

    // The first job was claimed and is still running: let it finish.
    gate.wait_entered(1).await;
    assert_eq!(app.db.job(jobs[0]).await.status, "running");
    gate.open.add_permits(1);
    wait_count(&mut finished, 1, Duration::from_secs(10)).await;
    // The pass ends after that job without claiming another (it would block in the gate).
    tokio::time::timeout(Duration::from_secs(10), running.wait_for(|n| *n == 0))
        .await
        .expect("the timed-out pass did not end")
        .unwrap();
    assert_eq!(app.db.job(jobs[0]).await.status, "done");
    assert_eq!(app.db.job(jobs[1]).await.status, "queued");
    app.stop().await;
}

#[tokio::test]
async fn passes_beyond_max_concurrent_passes_get_429() {
    let gate = Gate::new();
    let app = spawn_app(gate.clone(), |s| s.http.max_concurrent_passes = 1).await;
    let job = app.db.insert_jobs(1).await[0];

    let first = tokio::spawn(
        app.client
            .get(app.url(&format!("{RUN}?token={TOKEN}&max=1")))
            .send(),
    );
    gate.wait_entered(1).await;
    let response = app
        .client
        .post(app.url(CRON_PATH))
        .bearer_auth(CRON)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let (status, body) = json_of(response).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(keys(&body), set(&["ok", "error"]));

    gate.open.add_permits(1);
    let (status, body) = json_of(first.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body["jobIds"]["processed"]), [job]);
    app.stop().await;
}

#[tokio::test]
async fn request_bodies_are_bounded() {
    let app = spawn_app(sandbox(), |_| {}).await;
    let url = app.url(&format!("{RUN}?token={TOKEN}"));
    let small = app.client.post(&url).body("{}").send().await.unwrap();
    assert_eq!(small.status().as_u16(), 200);
    let big = app
        .client
        .post(&url)
        .body(vec![b'x'; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status().as_u16(), 413);
    app.stop().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused() {
    let app = spawn_app(sandbox(), |_| {}).await;
    let (status, body) = app.get_json("/api/jobs/nope").await;
    assert_eq!(
        (status, body),
        (404, json!({"ok": false, "error": "not found"}))
    );
    let put = app
        .client
        .put(app.url(&format!("{RUN}?token={TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 405);
    app.stop().await;
}

/// Every metric of docs/metrics.md, without the `outbound_runner_` prefix.
const DOCUMENTED_METRICS: &[&str] = &[
    "jobs_claimed_total",
    "jobs_finished_total",
    "messages_sent_total",
    "whatsapp_errors_total",
    "wakeups_total",
    "rescued_jobs_total",
    "job_duration_seconds",
    "job_queue_wait_seconds",
    "claim_duration_seconds",
    "send_duration_seconds",
    "jobs",
    "oldest_queued_job_age_seconds",
    "workers_busy",
    "workers",
    "circuit_open",
    "last_loop_timestamp_seconds",
    "build_info",
    "whatsapp_statuses_total",
    "whatsapp_statuses_expired_total",
    "webhook_requests_total",
    "message_delivered_seconds",
];

fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

fn sample<'a>(
    scrape: &'a prometheus_parse::Scrape,
    name: &str,
    label: Option<(&str, &str)>,
) -> &'a prometheus_parse::Value {
    &scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
        .value
}

fn number(v: &prometheus_parse::Value) -> f64 {
    match v {
        prometheus_parse::Value::Counter(n)
        | prometheus_parse::Value::Gauge(n)
        | prometheus_parse::Value::Untyped(n) => *n,
        other => panic!("not a number: {other:?}"),
    }
}

#[tokio::test]
async fn metrics_expose_every_design_metric_after_jobs_ran() {
    let app = spawn_app(sandbox(), |_| {}).await;
    app.db.insert_jobs(3).await;
    app.db
        .insert_payload(r#"{"message":{"type":"text"}}"#)
        .await;
    // A full pass (max reached) wakes the dispatcher for what may be left; a short one does not.
    let (status, body) = app.get_json(&format!("{RUN}?token={TOKEN}&max=1")).await;
    assert_eq!(
        (status, body["processed"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    let (status, body) = app.get_json(&format!("{RUN}?token={TOKEN}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["processed"].as_u64(), body["failed"].as_u64()),
        (Some(2), Some(1))
    );

    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    let scrape = scrape(&text);

    let names: HashSet<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for name in DOCUMENTED_METRICS {
        let full = format!("outbound_runner_{name}");
        assert!(
            names.contains(full.as_str()),
            "{full} missing from /metrics:\n{text}"
        );
        assert!(scrape.docs.contains_key(&full), "{full} has no HELP");
    }
    let done = sample(
        &scrape,
        "outbound_runner_jobs_finished_total",
        Some(("outcome", "done")),
    );
    assert_eq!(number(done), 3.0);
    let failed = sample(
        &scrape,
        "outbound_runner_jobs_finished_total",
        Some(("outcome", "failed")),
    );
    assert_eq!(number(failed), 1.0);
    assert_eq!(
        number(sample(&scrape, "outbound_runner_jobs_claimed_total", None)),
        4.0
    );
    assert_eq!(
        number(sample(
            &scrape,
            "outbound_runner_wakeups_total",
            Some(("source", "trigger"))
        )),
        1.0
    );
    assert_eq!(
        number(sample(
            &scrape,
            "outbound_runner_build_info",
            Some(("version", env!("CARGO_PKG_VERSION")))
        )),
        1.0
    );
    match sample(
        &scrape,
        "outbound_runner_job_duration_seconds",
        Some(("outcome", "done")),
    ) {
        prometheus_parse::Value::Histogram(buckets) => {
            assert_eq!(buckets.last().unwrap().count, 3.0, "{buckets:?}")
        }
        other => panic!("job_duration_seconds is not a histogram: {other:?}"),
    }
    // Labels come from closed sets: no job id, phone number or error text in any label.
    for s in &scrape.samples {
        for (k, v) in s.labels.iter() {
            assert!(
                [
                    "outcome", "class", "source", "status", "result", "version", "le"
                ]
                .contains(&k.as_str()),
                "unexpected label {k}={v} on {}",
                s.metric
            );
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn metrics_can_have_a_listener_of_their_own() {
    let db = TestDb::new().await;
    let runner = crate::support::spawn_passive(&db, sandbox(), |_| {}).await;
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (api_url, metrics_url) = (
        format!("http://{}", api.local_addr().unwrap()),
        format!("http://{}", metrics.local_addr().unwrap()),
    );
    let server = http::spawn(
        Listeners {
            api: Some(api),
            metrics: Some(metrics),
        },
        HttpState::with_metrics_on_api(runner.clone(), false),
        CancellationToken::new(),
    );
    let c = client();
    let status = |url: String| {
        let c = c.clone();
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(format!("{metrics_url}/metrics")).await, 200);
    assert_eq!(status(format!("{api_url}/metrics")).await, 404);
    assert_eq!(status(format!("{metrics_url}{RUN}")).await, 404);
    assert_eq!(status(format!("{api_url}/healthz")).await, 200);
    server.finish(Duration::from_secs(5)).await;
    runner.shutdown().await;
}

#[tokio::test]
async fn readyz_turns_503_when_the_database_is_unreachable() {
    let db = TestDb::new().await;
    let proxy = Proxy::start(upstream_of(&db.url)).await;
    let via = proxy.url_for(&db.url);
    let runner = spawn_runner_at(&via, Some(&via), sandbox(), |_| {}).await;
    let app = App::serve(db, runner).await;

    assert_eq!(app.get_json("/healthz").await, (200, json!({"ok": true})));
    assert_eq!(app.get_json("/readyz").await, (200, json!({"ok": true})));

    proxy.cut();
    assert_eq!(
        app.get_json("/readyz").await,
        (503, json!({"ok": false, "reason": "database unreachable"}))
    );
    // Alive all the same: a restart would not bring the database back.
    assert_eq!(app.get_json("/healthz").await, (200, json!({"ok": true})));
    proxy.restore();
    app.stop().await;
}

#[tokio::test]
async fn readyz_needs_listen() {
    // A passive runner has no LISTEN connection: the database answers, readiness does not.
    let app = spawn_app(sandbox(), |_| {}).await;
    assert_eq!(
        app.get_json("/readyz").await,
        (
            503,
            json!({"ok": false, "reason": "LISTEN connection down"})
        )
    );
    app.stop().await;
}

mod daemon {
    //! The binary as an operator runs it: the user's job-runner guide's curl commands (docs/operations.md "Verify") against `outbound-runner
    //! run`, its logs, and a port that is taken.

    use std::process::Stdio;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use serde_json::json;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::{Child, Command};
    use tokio::sync::mpsc;

    use super::{CRON_PATH, RUN};
    use crate::support::TestDb;
    use crate::support::app::{client, json as json_of};

    const BIN: &str = env!("CARGO_BIN_EXE_outbound-runner");
    const TOKEN: &str = "daemon-token-4b1d";
    const SECRET: &str = "daemon-cron-9f3e";

    fn command(db: &TestDb, listen: &str) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::temp_dir())
            .env("DATABASE_URL", &db.url)
            .env("JOB_RUNNER_TOKEN", TOKEN)
            .env("CRON_SECRET", SECRET)
            .env("OUTBOUND_RUNNER__HTTP__LISTEN", listen)
            .env(
                "RUST_LOG",
                "debug,sqlx=warn,hyper=info,h2=info,reqwest=info",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Collects stderr; sends each line on as well.
    fn collect(child: &mut Child) -> (Arc<Mutex<String>>, mpsc::UnboundedReceiver<String>) {
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
                let _ = tx.send(line);
            }
        });
        (log, rx)
    }

    /// Waits for the line that says where HTTP listens; returns the address.
    async fn listening_addr(
        rx: &mut mpsc::UnboundedReceiver<String>,
        log: &Mutex<String>,
    ) -> String {
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = rx.recv().await {
                if line.contains("HTTP listening") {
                    let at = line.find("addr=").expect("addr field") + "addr=".len();
                    return Some(line[at..].split_whitespace().next().unwrap().to_string());
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(addr)) => addr,
            _ => panic!(
                "the daemon never said where it listens:\n{}",
                log.lock().unwrap()
            ),
        }
    }

    #[tokio::test]
    async fn the_daemon_answers_the_guides_curls_and_logs_no_secret() {
        let db = TestDb::new().await;
        let mut child = command(&db, "127.0.0.1:0").spawn().unwrap();
        let (log, mut rx) = collect(&mut child);
        let base = format!("http://{}", listening_addr(&mut rx, &log).await);
        let c = client();

        // The server starts after the runner (LISTEN included): ready at once.
        let (status, body) = json_of(c.get(format!("{base}/readyz")).send().await.unwrap()).await;
        assert_eq!(status, 200, "{body}\n{}", log.lock().unwrap());

        let (status, body) = json_of(
            c.get(format!("{base}{RUN}?token={TOKEN}&max=10"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({"ok": true, "processed": 0, "failed": 0, "jobIds": {"processed": [], "failed": []}})
        );
        let (status, body) = json_of(
            c.get(format!("{base}{CRON_PATH}"))
                .bearer_auth(SECRET)
                .header("x-vercel-cron", "1")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({"ok": true, "message": "Job runner triggered",
                   "jobRunnerResult": {"ok": true, "processed": 0, "failed": 0}})
        );
        let (status, _) = json_of(
            c.get(format!("{base}{RUN}?token=wrong-{TOKEN}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 401);
        let metrics = c.get(format!("{base}/metrics")).send().await.unwrap();
        assert!(
            metrics
                .text()
                .await
                .unwrap()
                .contains("outbound_runner_build_info")
        );

        // SIGTERM: drain and exit 0.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the daemon did not stop within 30s")
            .unwrap();
        // Let the reader take the last lines (it ends when the pipe closes).
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while rx.recv().await.is_some() {}
        })
        .await;
        let log = log.lock().unwrap().clone();
        assert_eq!(status.code(), Some(0), "{log}");

        assert!(log.contains("Vercel-style cron request"), "{log}");
        assert!(log.contains("trigger refused: unauthorized"), "{log}");
        assert!(
            log.contains(r#"path="/api/jobs/run-outbound""#)
                || log.contains("path=/api/jobs/run-outbound"),
            "{log}"
        );
        for secret in [TOKEN, SECRET, "token="] {
            assert!(!log.contains(secret), "{secret:?} is in the log:\n{log}");
        }
        // stderr is a pipe, not a terminal: no colour codes.
        assert!(
            !log.contains('\u{1b}'),
            "ANSI escapes in a piped log:\n{log}"
        );
    }

    #[tokio::test]
    async fn a_taken_port_stops_start_up_naming_http_listen() {
        let db = TestDb::new().await;
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let out = tokio::time::timeout(Duration::from_secs(60), command(&db, &addr).output())
            .await
            .expect("the daemon did not exit")
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(69), "{err}");
        assert!(err.contains(&format!("http.listen = {addr}")), "{err}");
        assert!(err.contains("in use"), "{err}");
        drop(taken);
    }
}
