//! The web console (docs/console.md): its HTTP contract (sign-in, cookie, CSRF, headers,
//! assets, the shared live snapshot) with a plain client, and every screen in headless Chromium
//! driven through WebDriver (chromedriver from Debian's `chromium-driver`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::header;
use secrecy::SecretString;

use crate::support::app::{App, spawn_app};
use crate::support::handlers::Counting;
use crate::support::{TestDb, spawn_runner};

const ADMIN: &str = "admin-token-for-console-tests";
const NUMBER: &str = "106540352242922";

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A daemon-mode runner (LISTENing: the console's live updates follow its wake-ups) with the
/// admin token and one sending number, served on port 0.
async fn console_app() -> App {
    let db = TestDb::new().await;
    let runner = spawn_runner(&db, Arc::new(Counting::default()), |s| {
        s.http.admin_token = Some(SecretString::from(ADMIN));
        s.whatsapp.phone_number_id = NUMBER.into();
    })
    .await;
    App::serve(db, runner).await
}

/// Signs in; returns the `Cookie` header value.
async fn sign_in(app: &App) -> String {
    let r = no_redirects()
        .post(app.url("/console/api/signin"))
        .header(header::ORIGIN, &app.base)
        .json(&serde_json::json!({ "token": ADMIN }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set = r.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    set.split(';').next().unwrap().to_string()
}

#[tokio::test]
async fn console_is_not_served_without_the_admin_token() {
    let app = spawn_app(Arc::new(Counting::default()), |_| {}).await;
    let c = no_redirects();
    for path in [
        "/",
        "/console/",
        "/console/jobs",
        "/console/assets/app.js",
        "/console/api/jobs",
        "/console/api/events",
    ] {
        let r = c.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = c
        .post(app.url("/console/api/signin"))
        .header(header::ORIGIN, &app.base)
        .json(&serde_json::json!({ "token": "" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn console_sign_in_cookie_csrf_headers_and_assets() {
    let app = console_app().await;
    let c = no_redirects();

    // `/` leads to the console; the shell carries the strict headers.
    let r = c.get(app.url("/")).send().await.unwrap();
    assert!(r.status().is_redirection());
    assert_eq!(r.headers()[header::LOCATION], "/console/");
    let r = c.get(app.url("/console/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(r.headers()[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(r.headers()[header::REFERRER_POLICY], "no-referrer");
    let html = r.text().await.unwrap();
    assert!(html.contains("/console/assets/app.js") && !html.contains(ADMIN));

    // Assets: gzipped when accepted, strong ETag, 304 when current.
    let r = c
        .get(app.url("/console/assets/app.js"))
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
    assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
    let etag = r.headers()[header::ETAG].clone();
    assert!(etag.to_str().unwrap().starts_with('"'));
    let r = c
        .get(app.url("/console/assets/app.js"))
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // No session: 401 with no detail.
    let r = c.get(app.url("/console/api/jobs")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");

    // A wrong token: 401. A sign-in from another site: 403.
    let r = c
        .post(app.url("/console/api/signin"))
        .header(header::ORIGIN, &app.base)
        .json(&serde_json::json!({ "token": "wrong" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get(header::SET_COOKIE).is_none());
    let r = c
        .post(app.url("/console/api/signin"))
        .header(header::ORIGIN, "http://evil.example")
        .json(&serde_json::json!({ "token": ADMIN }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The right token: a session cookie that holds nothing of the token.
    let r = c
        .post(app.url("/console/api/signin"))
        .header(header::ORIGIN, &app.base)
        .json(&serde_json::json!({ "token": ADMIN }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set = r.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age="] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: no Secure flag: {set}");
    assert!(!set.contains(ADMIN));
    let cookie = set.split(';').next().unwrap().to_string();
    let r = c
        .get(app.url("/console/api/jobs"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Behind a TLS proxy the cookie is Secure.
    let r = c
        .post(app.url("/console/api/signin"))
        .header(header::ORIGIN, &app.base)
        .header("x-forwarded-proto", "https")
        .json(&serde_json::json!({ "token": ADMIN }))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );

    // A cross-site POST with a valid cookie is refused, and changes nothing.
    let id = app.db.insert_jobs(1).await[0];
    for origin in [Some("http://evil.example"), Some("null"), None] {
        let mut req = c
            .post(app.url("/console/api/jobs/cancel"))
            .header(header::COOKIE, &cookie)
            .json(&serde_json::json!({ "ids": [id.to_string()] }));
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 403, "{origin:?}");
    }
    assert_ne!(app.db.job(id).await.status, "cancelled");

    // Bad input: 400 naming the parameter.
    let r = c
        .get(app.url("/console/api/jobs?id=a%01b"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("id"), "{body}");
    let r = c
        .get(app.url("/console/api/jobs?cursor=9"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("cursor"));

    // Sign-out revokes the session here.
    let r = c
        .post(app.url("/console/api/signout"))
        .header(header::ORIGIN, &app.base)
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let r = c
        .get(app.url("/console/api/jobs"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // A new admin token (SIGHUP) ends every session made with the old one.
    let cookie = sign_in(&app).await;
    let mut settings = (*app.runner.settings()).clone();
    settings.http.admin_token = Some(SecretString::from("a-new-admin-token"));
    app.runner.apply(Arc::new(settings));
    let r = c
        .get(app.url("/console/api/jobs"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Sign-in attempts are limited per client address.
    let mut limited = false;
    for _ in 0..10 {
        let r = c
            .post(app.url("/console/api/signin"))
            .header(header::ORIGIN, &app.base)
            .json(&serde_json::json!({ "token": "guess" }))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = true;
            break;
        }
        assert_eq!(r.status(), 401);
    }
    assert!(limited, "no 429 after 10 attempts");
    app.stop().await;
}

/// One Server-Sent Events stream read with a plain client.
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    async fn open(app: &App, cookie: &str) -> Stream {
        let response = reqwest::Client::new()
            .get(app.url("/console/api/events"))
            .header(header::COOKIE, cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Stream {
            response,
            buffer: String::new(),
        }
    }

    /// The next `overview` event's data, bounded.
    async fn next(&mut self, within: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) {
                    return serde_json::from_str(data.trim()).unwrap();
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("no event in time")
                .unwrap()
                .expect("the stream ended");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test]
async fn ten_open_tabs_cost_one_statement_per_refresh_period() {
    let app = console_app().await;
    let cookie = sign_in(&app).await;
    let mut tabs = Vec::new();
    for _ in 0..10 {
        tabs.push(Stream::open(&app, &cookie).await);
    }
    // Every tab gets the shared snapshot.
    let mut first = Vec::new();
    for t in &mut tabs {
        first.push(t.next(Duration::from_secs(10)).await);
    }
    let start_statements = first
        .iter()
        .map(|v| v["statements"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        start_statements <= 2,
        "{start_statements} statements for the first snapshot"
    );
    // Work flows: jobs inserted and run; each tab sees the counts move.
    let started = Instant::now();
    let mut last = first[0].clone();
    let mut seen = 0;
    while seen < 3 {
        app.db.insert_jobs(5).await;
        let v = tabs[0].next(Duration::from_secs(20)).await;
        assert!(v["db"]["done24h"].as_i64().unwrap() >= last["db"]["done24h"].as_i64().unwrap());
        last = v;
        seen += 1;
    }
    let elapsed = started.elapsed();
    let statements = last["statements"].as_u64().unwrap() - start_statements;
    let periods =
        elapsed.as_secs_f64() / outbound_runner::http::console::live::PERIOD.as_secs_f64();
    assert!(
        statements as f64 <= periods.ceil() + 1.0,
        "{statements} statements in {elapsed:?} ({periods:.1} periods) with 10 tabs"
    );
    assert!(last["db"]["done24h"].as_i64().unwrap() > 0);
    // The other tabs got the same snapshots (one statement served them all).
    for t in &mut tabs[1..] {
        let v = t.next(Duration::from_secs(20)).await;
        assert!(v["statements"].as_u64().unwrap() > start_statements);
    }
    drop(tabs);
    app.stop().await;
}

// --- in a browser ----------------------------------------------------------------------------

/// chromedriver on a free loopback port, stopped on drop.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver_path() -> Option<String> {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| p.to_string())
}

/// Starts chromedriver; `None` (the test is skipped, loudly) when it is not installed outside
/// CI. Under CI it must be there: the test fails.
async fn start_driver() -> Option<Driver> {
    let Some(path) = chromedriver_path() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "chromedriver is not installed: the console's browser tests need Debian's \
                 chromium and chromium-driver (.ci/run installs them)"
            );
        }
        eprintln!(
            "SKIPPED: chromedriver is not installed (apt-get install chromium chromium-driver)"
        );
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    // Ready when /status answers (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let c = reqwest::Client::new();
    loop {
        if let Ok(r) = c.get(format!("{}/status", driver.url)).send().await
            && r.status().is_success()
        {
            return Some(driver);
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver did not start within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"]
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    tokio::time::timeout(
        Duration::from_secs(60),
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&driver.url),
    )
    .await
    .expect("a browser session within 60 s")
    .expect("a browser session")
}

const WAIT: Duration = Duration::from_secs(20);

async fn find(b: &Client, css: &str) -> fantoccini::elements::Element {
    b.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} did not appear: {e}"))
}

/// Waits until the text of `css` satisfies `ok`, bounded; returns it.
async fn wait_text(b: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(e) = b.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
        {
            if ok(&t) {
                return t;
            }
            last = t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{css}: the text never matched (last: {last:?})");
}

async fn shot(b: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = b.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

const XSS_REQUEST_ID: &str = r#""><img src=x onerror="window.__xss=1">"#;
const XSS_ERROR: &str = "<script>window.__xss=2</script> refused";

/// A done job whose first message Meta delivered and whose second it reported failed, and a
/// failed job whose payload, requestId and error hold markup. Returns their ids.
async fn fixtures(db: &TestDb) -> (i64, i64) {
    let fates: i64 = sqlx::query_scalar(
        r#"INSERT INTO "OutboundJob" (payload, status, "requestId", attempts, "startedAt",
                                      "completedAt", composed)
           VALUES ('{"to":"15550001111","message":[{"type":"text","text":{"body":"one"}},
                                                  {"type":"text","text":{"body":"two"}}]}',
                   'done', 'req-fates', 1, now() - interval '2 minutes', now() - interval '1 minute',
                   '{"messages":["one","two"]}')
           RETURNING id"#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        r#"INSERT INTO "OutboundMessage" ("jobId", seq, status, "to", body, wamid, "sentAt",
                                          "deliveredAt", "readAt", "lastErrorCode", "lastError")
           VALUES ($1, 0, 'delivered', '15550001111', '{"type":"text"}', 'wamid.ONE',
                   now() - interval '100 seconds', now() - interval '90 seconds', NULL, NULL, NULL),
                  ($1, 1, 'failed', '15550001111', '{"type":"text"}', 'wamid.TWO',
                   now() - interval '100 seconds', NULL, NULL, '131026', 'Message undeliverable')"#,
    )
    .bind(fates)
    .execute(&db.pool)
    .await
    .unwrap();
    let hostile: i64 = sqlx::query_scalar(
        r#"INSERT INTO "OutboundJob" (payload, status, "requestId", attempts, "maxAttempts",
                                      "lastError", "lastErrorCode", "completedAt")
           VALUES (jsonb_build_object('to', '15550002222', 'message',
                     jsonb_build_object('type', 'text', 'text',
                       jsonb_build_object('body', '<script>window.__xss=3</script>"><img src=x onerror="window.__xss=4">'))),
                   'failed', $1, 1, 1, $2, '131000', now())
           RETURNING id"#,
    )
    .bind(XSS_REQUEST_ID)
    .bind(XSS_ERROR)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    (fates, hostile)
}

async fn no_xss(b: &Client) {
    let v = b
        .execute("return window.__xss === undefined;", vec![])
        .await
        .unwrap();
    assert_eq!(v, serde_json::json!(true), "markup from the table ran");
    assert!(
        b.find_all(Locator::Css("main img"))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn console_screens_in_headless_chromium() {
    let Some(driver) = start_driver().await else {
        return;
    };
    let app = console_app().await;
    let (fates, hostile) = fixtures(&app.db).await;
    let b = browser(&driver).await;

    // Sign in.
    b.goto(&app.url("/console/")).await.unwrap();
    find(&b, "#signin:not([hidden]) #token").await;
    shot(&b, "1-signin").await;
    find(&b, "#token").await.send_keys(ADMIN).await.unwrap();
    find(&b, "#signin-button").await.click().await.unwrap();
    let queued = wait_text(&b, "[data-stat=queued]", |t| t != "…").await;
    assert_eq!(queued, "0");
    wait_text(&b, "#live", |t| t == "live").await;
    assert_eq!(wait_text(&b, "[data-stat=failed]", |t| t != "…").await, "1");
    // The token is nowhere in the page or the URL.
    let source = b.source().await.unwrap();
    assert!(!source.contains(ADMIN));
    assert!(!b.current_url().await.unwrap().as_str().contains(ADMIN));

    // The overview moves when a job is inserted: no reload.
    let later: i64 = sqlx::query_scalar(
        r#"INSERT INTO "OutboundJob" (payload, "runAt")
           VALUES ('{"to":"15550003333","message":{"type":"text","text":{"body":"later"}}}',
                   now() + interval '1 hour')
           RETURNING id"#,
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    wait_text(&b, "[data-stat=queued]", |t| t == "1").await;
    wait_text(&b, "[data-stat=delivered]", |t| t == "1").await;
    assert_eq!(
        wait_text(&b, "[data-stat=msgFailed]", |t| t != "…").await,
        "1"
    );
    shot(&b, "2-overview").await;

    // The job list, filtered by the URL and by the form; the hostile job's text stays text.
    b.goto(&app.url("/console/jobs?status=failed"))
        .await
        .unwrap();
    let row = find(&b, &format!("#jobs-table tr[data-id='{hostile}']")).await;
    assert!(row.text().await.unwrap().contains(XSS_REQUEST_ID));
    assert!(row.text().await.unwrap().contains(XSS_ERROR));
    assert_eq!(
        b.find_all(Locator::Css("#jobs-table tbody tr"))
            .await
            .unwrap()
            .len(),
        1
    );
    no_xss(&b).await;
    let status = find(&b, "#jobs-filter select[name=status]").await;
    status.select_by_value("done").await.unwrap();
    find(&b, "#jobs-filter input[name=requestId]")
        .await
        .send_keys("req-fates")
        .await
        .unwrap();
    find(&b, "#filter-apply").await.click().await.unwrap();
    find(&b, &format!("#jobs-table tr[data-id='{fates}']")).await;
    let url = b.current_url().await.unwrap();
    assert!(url.as_str().contains("status=done") && url.as_str().contains("requestId=req-fates"));
    assert_eq!(
        b.find_all(Locator::Css("#jobs-table tbody tr"))
            .await
            .unwrap()
            .len(),
        1
    );
    shot(&b, "3-jobs").await;

    // A job with a delivered and a failed message: both fates.
    find(&b, &format!("#jobs-table tr[data-id='{fates}'] a.job-link"))
        .await
        .click()
        .await
        .unwrap();
    let delivered = find(&b, "#job-messages tr[data-seq='0']")
        .await
        .text()
        .await
        .unwrap();
    assert!(delivered.contains("delivered"), "{delivered}");
    let failed = find(&b, "#job-messages tr[data-seq='1']")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        failed.contains("failed 131026 Message undeliverable"),
        "{failed}"
    );
    shot(&b, "4-job-fates").await;

    // The hostile job: payload shown as text; retry with the confirm step.
    b.goto(&app.url(&format!("/console/jobs/{hostile}")))
        .await
        .unwrap();
    let payload = find(&b, "#job-payload").await.text().await.unwrap();
    assert!(
        payload.contains("<script>window.__xss=3</script>"),
        "{payload}"
    );
    no_xss(&b).await;
    find(&b, "#job-retry").await.click().await.unwrap();
    let text = wait_text(&b, "#confirm-text", |t| !t.is_empty()).await;
    assert!(text.contains("1 match, 1 would be retried"), "{text}");
    shot(&b, "5-retry-confirm").await;
    assert_eq!(
        app.db.job(hostile).await.status,
        "failed",
        "the dry run changed nothing"
    );
    find(&b, "#confirm-yes").await.click().await.unwrap();
    wait_text(&b, "#flash", |t| t.contains("Retried 1 job")).await;
    let by: Option<String> =
        sqlx::query_scalar(r#"SELECT history->-1->>'by' FROM "OutboundJob" WHERE id = $1"#)
            .bind(hostile)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(by.as_deref(), Some("console"));
    assert_ne!(app.db.job(hostile).await.status, "failed");

    // A cross-site POST: from another site (localhost is not 127.0.0.1), the browser's request
    // carries neither the cookie nor our Origin; nothing changes.
    let cancel_target = app.db.insert_jobs(1).await[0];
    let port = app.base.rsplit(':').next().unwrap().to_string();
    b.goto(&format!("http://localhost:{port}/console/"))
        .await
        .unwrap();
    let answer = b
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(arguments[0], {method: 'POST', credentials: 'include',
                   headers: {'Content-Type': 'text/plain'}, body: JSON.stringify({ids: [arguments[1]]})})
               .then(r => done('status ' + r.status), e => done('blocked: ' + e));",
            vec![
                serde_json::json!(app.url("/console/api/jobs/cancel")),
                serde_json::json!(cancel_target.to_string()),
            ],
        )
        .await
        .unwrap();
    assert!(
        answer.as_str().unwrap().starts_with("blocked"),
        "a cross-site read must not succeed: {answer}"
    );
    assert_ne!(app.db.job(cancel_target).await.status, "cancelled");

    // A bulk action on everything matching the filter, with its dry-run count first.
    b.goto(&app.url("/console/jobs?status=queued&to=15550003333"))
        .await
        .unwrap();
    find(&b, &format!("#jobs-table tr[data-id='{later}']")).await;
    find(&b, "#cancel-matching").await.click().await.unwrap();
    let text = wait_text(&b, "#confirm-text", |t| !t.is_empty()).await;
    assert!(
        text.contains("every job matching the filter: 1 match, 1 would be cancelled"),
        "{text}"
    );
    find(&b, "#confirm-yes").await.click().await.unwrap();
    wait_text(&b, "#flash", |t| t.contains("Cancelled 1 job")).await;
    assert_eq!(app.db.job(later).await.status, "cancelled");
    let by: Option<String> =
        sqlx::query_scalar(r#"SELECT history->-1->>'by' FROM "OutboundJob" WHERE id = $1"#)
            .bind(later)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(by.as_deref(), Some("console"));

    // Numbers: pause for a duration with a reason, then resume.
    b.goto(&app.url("/console/numbers")).await.unwrap();
    let row = format!("#numbers-table tr[data-number='{NUMBER}']");
    wait_text(&b, &format!("{row} .state"), |t| t.contains("sending")).await;
    find(&b, &format!("{row} .pause-for"))
        .await
        .send_keys("10m")
        .await
        .unwrap();
    find(&b, &format!("{row} .pause-reason"))
        .await
        .send_keys("<b>carrier maintenance</b>")
        .await
        .unwrap();
    find(&b, &format!("{row} button.pause"))
        .await
        .click()
        .await
        .unwrap();
    let state = wait_text(&b, &format!("{row} .state"), |t| t.contains("paused")).await;
    assert!(
        state.contains("by console: <b>carrier maintenance</b>"),
        "{state}"
    );
    let hold: (String, bool) = sqlx::query_as(
        r#"SELECT "pausedBy", "pausedUntil" > now() + interval '9 minutes'
           FROM "OutboundNumberHold" WHERE "phoneNumberId" = $1"#,
    )
    .bind(NUMBER)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(hold, ("console".to_string(), true));
    shot(&b, "6-numbers-paused").await;
    find(&b, &format!("{row} button.resume"))
        .await
        .click()
        .await
        .unwrap();
    wait_text(&b, &format!("{row} .state"), |t| t.contains("sending")).await;
    let holds: i64 = sqlx::query_scalar(r#"SELECT count(*) FROM "OutboundNumberHold""#)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(holds, 0);

    // Sign out: back to the sign-in, and the pages ask for it again.
    find(&b, "#signout").await.click().await.unwrap();
    find(&b, "#signin:not([hidden])").await;
    b.goto(&app.url("/console/jobs")).await.unwrap();
    find(&b, "#signin:not([hidden]) #token").await;
    shot(&b, "7-signed-out").await;

    b.close().await.unwrap();
    drop(driver);
    app.stop().await;
}
