//! The binary, black-box: configuration errors, `enqueue`, `migrate`.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::support::TestDb;

const BIN: &str = env!("CARGO_BIN_EXE_outbound-runner");

/// Runs the binary with a clean environment plus `env`.
fn run(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn config_errors_exit_78_and_name_the_key() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("OUTBOUND_RUNNER__RUNNER__WOKERS", "4")],
            "runner.wokers: unknown key",
        ),
        (
            &[("DATABASE_URL", "mysql://user:hunter2@db/app")],
            "database.url: scheme must be postgres",
        ),
        (&[("DATABASE_URL", "not a url")], "database.url: not a URL"),
        (
            &[("OUTBOUND_RUNNER__RUNNER__WORKERS", "-1")],
            "runner.workers",
        ),
        (
            &[("OUTBOUND_RUNNER__RUNNER__WORKERS", "5000")],
            "runner.workers: must be between 0 (sized by the work) and 4096",
        ),
        (
            &[("OUTBOUND_RUNNER__RUNNER__POLL_INTERVAL", "soon")],
            "runner.poll_interval",
        ),
        (
            &[("OUTBOUND_RUNNER__DELIVERY__MODE", "loud")],
            "delivery.mode",
        ),
    ];
    for (env, needle) in cases {
        let out = run(&["run"], env, None);
        assert_eq!(out.status.code(), Some(78), "{env:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(needle),
            "{env:?}: expected {needle:?} in {err}"
        );
        assert!(!err.contains("hunter2"), "a secret leaked: {err}");
    }
}

#[test]
fn a_config_file_with_an_unknown_key_is_refused() {
    let dir = std::env::temp_dir().join(format!("or-cli-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(
        &file,
        "[runner]\nworkers = 4\n\n[http]\nlisten_addr = \"0.0.0.0:80\"\n",
    )
    .unwrap();
    let out = run(
        &["--config", file.to_str().unwrap(), "check-config"],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("http.listen_addr: unknown key"),
        "{}",
        stderr(&out)
    );

    let missing = dir.join("nope.toml");
    let out = run(
        &["--config", missing.to_str().unwrap(), "check-config"],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("no such file"), "{}", stderr(&out));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn check_config_masks_secrets() {
    let out = run(
        &["check-config"],
        &[
            ("JOB_RUNNER_TOKEN", "tok-abcdef-123"),
            ("DATABASE_URL", "postgres://u:pw-xyz@db/app"),
            ("OUTBOUND_RUNNER__RUNNER__WORKERS", "3"),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("tok-abcdef-123") && !text.contains("pw-xyz"),
        "{text}"
    );
    assert!(
        text.contains("http.job_runner_token = ***    # env"),
        "{text}"
    );
    assert!(text.contains("runner.workers = 3    # env"), "{text}");
    assert!(text.contains("runner.batch = 64    # default"), "{text}");
}

#[tokio::test]
async fn enqueue_inserts_from_flags_and_json_lines_once_per_key() {
    let db = TestDb::new().await;
    let env = [("DATABASE_URL", db.url.as_str())];
    let out = run(
        &[
            "enqueue",
            "--to",
            "15551234567",
            "--text",
            "hi",
            "--idempotency-key",
            "wamid.IN1",
        ],
        &env,
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let first: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();

    let again = run(
        &[
            "enqueue",
            "--to",
            "15551234567",
            "--text",
            "hi",
            "--idempotency-key",
            "wamid.IN1",
        ],
        &env,
        None,
    );
    assert_eq!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stdout).trim().is_empty());
    assert!(
        stderr(&again).contains("already queued"),
        "{}",
        stderr(&again)
    );

    let lines = concat!(
        r#"{"to":"15550000001","message":{"type":"text","text":{"body":"a"}}}"#,
        "\n",
        r#"{"payload":{"to":"15550000002","message":{"type":"text","text":{"body":"b"}}},"idempotencyKey":"k2","requestId":"r2"}"#,
        "\n",
    );
    let bulk = run(&["enqueue"], &env, Some(lines));
    assert_eq!(bulk.status.code(), Some(0), "{}", stderr(&bulk));
    let ids: Vec<i64> = String::from_utf8_lossy(&bulk.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|id| *id > first));
    assert_eq!(db.count("queued").await, 3);

    // A bad line rejects the whole batch, naming the line.
    let bad = run(
        &["enqueue"],
        &env,
        Some(
            "{\"to\":\"15550000003\",\"message\":{\"type\":\"text\",\"text\":{\"body\":\"ok\"}}}\n{\"to\":\"x\"}\n",
        ),
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("line 2"), "{}", stderr(&bad));
    assert_eq!(db.count("queued").await, 3);
}

#[test]
fn enqueue_without_a_database_says_what_to_do() {
    let state = std::env::temp_dir().join(format!("or-nodb-{}", rand::random::<u32>()));
    let out = run(
        &["enqueue", "--to", "15551234567", "--text", "hi"],
        &[(
            "OUTBOUND_RUNNER__DATABASE__EMBEDDED_DIR",
            state.to_str().unwrap(),
        )],
        None,
    );
    assert_eq!(out.status.code(), Some(69));
    assert!(
        stderr(&out).contains("set DATABASE_URL"),
        "{}",
        stderr(&out)
    );
}

fn v_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn status_prints_the_guide_numbers_and_fails_on_unhealthy_queues() {
    let db = TestDb::new().await;
    let ids = db.insert_jobs(8).await;
    sqlx::query(r#"UPDATE "OutboundJob" SET status = 'done', "completedAt" = now() - interval '5 minutes' WHERE id = ANY($1)"#)
        .bind(&ids[0..3])
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        r#"UPDATE "OutboundJob" SET status = 'failed', "completedAt" = now() - interval '5 minutes',
                  "lastErrorCode" = '131026', "lastError" = 'Message undeliverable' WHERE id = $1"#,
    )
    .bind(ids[3])
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        r#"UPDATE "OutboundJob" SET status = 'running', "lockedBy" = 'dead:1:x',
                  "leaseUntil" = now() - interval '1 minute' WHERE id = $1"#,
    )
    .bind(ids[4])
    .execute(&db.pool)
    .await
    .unwrap();
    // Three queued jobs, due for ten minutes: nobody is running them.
    sqlx::query(r#"UPDATE "OutboundJob" SET "runAt" = now() - interval '10 minutes' WHERE status = 'queued'"#)
        .execute(&db.pool)
        .await
        .unwrap();
    // Messages as Meta's status webhooks left them.
    sqlx::query(
        r#"INSERT INTO "OutboundMessage" ("jobId", seq, status, "to", body, wamid, "deliveredAt", "readAt")
           VALUES ($1, 0, 'read', '1', '{}', 'w1', now(), now()),
                  ($2, 0, 'delivered', '1', '{}', 'w2', now() - interval '2 hours', NULL),
                  ($3, 0, 'failed', '1', '{}', 'w3', NULL, NULL),
                  ($4, 0, 'unknown', '1', '{}', NULL, NULL, NULL)"#,
    )
    .bind(ids[0])
    .bind(ids[1])
    .bind(ids[3])
    .bind(ids[2])
    .execute(&db.pool)
    .await
    .unwrap();
    let env = [("DATABASE_URL", db.url.as_str())];

    let out = run(&["status", "--json"], &env, None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        v_of(&out)["messagesLastHour"],
        serde_json::json!({"delivered": 1, "read": 1, "failed": 1})
    );
    assert_eq!(v_of(&out)["unknownUnsettled"], 1);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let count = |s: &str| {
        v["byStatus"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["status"] == s)
            .unwrap()["count"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(
        (
            count("queued"),
            count("running"),
            count("done"),
            count("failed")
        ),
        (3, 1, 3, 1)
    );
    assert_eq!(v["doneLastHour"], 3);
    assert_eq!(v["failedLastHour"], 1);
    assert_eq!(v["expiredLeases"], 1);
    assert!(v["oldestQueuedAgeSeconds"].as_f64().unwrap() >= 599.0);
    assert_eq!(v["lastErrors"][0]["code"], "131026");
    let failing: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    // 1 failed of 4 finished = 25% > 5%.
    assert_eq!(failing, ["queue", "leases", "failures"]);
    assert!(stderr(&out).contains("unhealthy: queue"));

    // The table form, with thresholds the queue meets once the stale lease is gone.
    sqlx::query(r#"UPDATE "OutboundJob" SET status = 'queued', "leaseUntil" = NULL WHERE id = $1"#)
        .bind(ids[4])
        .execute(&db.pool)
        .await
        .unwrap();
    let out = run(
        &[
            "status",
            "--max-queued-age",
            "1h",
            "--max-failure-ratio",
            "0.5",
        ],
        &env,
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("queued"), "{table}");
    assert!(
        table.contains("✓ failures  1 failed of 4 finished"),
        "{table}"
    );
    assert!(table.contains("Message undeliverable"), "{table}");
}

/// Every configuration key is documented in the README's table (docs match the code).
#[test]
fn the_readme_documents_every_config_key() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let defaults: toml_like::Table = toml_like::parse(outbound_runner::config::DEFAULTS_TOML);
    let missing: Vec<String> = defaults
        .into_iter()
        .filter(|key| !readme.contains(&format!("| `{key}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from the README's configuration table: {missing:?}"
    );
}

/// Just enough TOML to list `section.key` names of config/default.toml.
mod toml_like {
    pub type Table = Vec<String>;
    pub fn parse(text: &str) -> Table {
        let mut section = String::new();
        let mut keys = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
            } else if !line.starts_with('#') && line.contains(" = ") {
                keys.push(format!("{section}.{}", line.split(" = ").next().unwrap()));
            }
        }
        keys
    }
}

async fn verify(base: &str, token: &str, secret: &str) -> Output {
    let (base, token, secret) = (base.to_string(), token.to_string(), secret.to_string());
    tokio::task::spawn_blocking(move || {
        run(
            &["verify", &base],
            &[("JOB_RUNNER_TOKEN", &token), ("CRON_SECRET", &secret)],
            None,
        )
    })
    .await
    .unwrap()
}

async fn serve_daemon() -> crate::support::app::App {
    use crate::support::app::{App, CRON, TOKEN};
    let db = TestDb::new().await;
    let runner = crate::support::spawn_runner(
        &db,
        std::sync::Arc::new(outbound_runner::delivery::sandbox::SandboxHandler),
        |s| {
            s.http.job_runner_token = Some(secrecy::SecretString::from(TOKEN));
            s.http.cron_secret = Some(secrecy::SecretString::from(CRON));
        },
    )
    .await;
    App::serve(db, runner).await
}

#[tokio::test]
async fn verify_passes_against_a_healthy_runner() {
    use crate::support::app::{CRON, TOKEN};
    let app = serve_daemon().await;
    let out = verify(&app.base, TOKEN, CRON).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("all 7 checks passed"), "{text}");
    assert!(
        !text.contains(TOKEN) && !text.contains(CRON),
        "a secret was printed: {text}"
    );
}

#[tokio::test]
async fn verify_with_a_wrong_token_reports_exactly_the_failing_check() {
    use crate::support::app::CRON;
    let app = serve_daemon().await;
    let out = verify(&app.base, "not-the-token", CRON).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let failed: Vec<&str> = text.lines().filter(|l| l.starts_with('✗')).collect();
    assert_eq!(failed.len(), 1, "{text}");
    assert!(
        failed[0].starts_with("✗ run-outbound ") && failed[0].contains("401"),
        "{text}"
    );
    assert!(
        text.contains("hint: 401: the token does not match JOB_RUNNER_TOKEN"),
        "{text}"
    );
    assert!(text.contains("1 of 7 checks failed"), "{text}");

    // Nothing listening: every check fails, each with a hint, and the exit code says so.
    let out = verify("http://127.0.0.1:9", "x", "y").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("7 of 7 checks failed"));
}
