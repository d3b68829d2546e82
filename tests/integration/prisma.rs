//! Living beside Prisma (docs/prisma.md), with Prisma's own code: Prisma Client 7 inserting and
//! reading jobs as the app does (`tests/prisma/app`), and Prisma 6.19's WebAssembly migration
//! engine (`tests/prisma/migrate`) pulling, diffing and baselining our tables. And the switch
//! from the app's own runner: its `running` rows are left alone for the grace.
//!
//! The Node projects need `npm ci` in each folder (`.ci/run` does it). Without Node or the
//! packages these tests fail under `CI=true` and say SKIPPED otherwise.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outbound_runner::config::{DeliveryMode, Settings};
use outbound_runner::db::{prisma, prisma_migration};
use outbound_runner::delivery::live::LiveHandler;
use outbound_runner::delivery::sandbox::SandboxHandler;
use outbound_runner::queue::store;
use serde_json::{Value, json};

use crate::support::mock_meta::{self, MockMeta};
use crate::support::mock_orchestrator::{Answer, MockOrchestrator};
use crate::support::{TestDb, spawn_runner, test_settings};

/// A Node command's bound.
const NODE_TIMEOUT: Duration = Duration::from_secs(120);

fn project(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/prisma")
        .join(name)
}

/// Whether Node and the project's packages are there. Under `CI=true` their absence fails the
/// test; elsewhere it prints SKIPPED and the test returns.
fn ready(name: &str) -> bool {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let packages = project(name).join("node_modules/prisma").exists();
    if node && packages {
        return true;
    }
    let why = if node {
        format!("run `npm ci` in tests/prisma/{name}")
    } else {
        "install Node.js 20.19+ and npm".to_string()
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the Prisma tests need Node and their packages: {why}");
    }
    eprintln!("SKIPPED: the Prisma tests need Node and their packages: {why}");
    false
}

/// Runs `node ARGS` in `tests/prisma/NAME` with `env`; (exit code, stdout, stderr).
async fn node(name: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new("node");
    cmd.args(args)
        .current_dir(project(name))
        // The CLI refuses to start without an engine it cannot download here: any file will
        // do for what these tests run (docs/prisma.md, "How this is tested").
        .env("PRISMA_SCHEMA_ENGINE_BINARY", "/bin/false")
        .env("PRISMA_QUERY_ENGINE_LIBRARY", "/bin/false")
        .env("CHECKPOINT_DISABLE", "1")
        .env("PRISMA_HIDE_UPDATE_MESSAGE", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(NODE_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("node {args:?} did not finish within {NODE_TIMEOUT:?}"))
        .expect("running node");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Prisma 6.19's CLI (the WebAssembly migration engine, `tests/prisma/migrate`) on `url`, with
/// the schema at `schema` and the migrations in `migrations`. Panics on a failure.
async fn prisma6(url: &str, schema: &Path, migrations: &Path, args: &[&str]) -> String {
    let mut all = vec![
        "--require",
        "./exit-when-done.cjs",
        "node_modules/prisma/build/index.js",
    ];
    all.extend_from_slice(args);
    let (code, out, err) = node(
        "migrate",
        &all,
        &[
            ("DATABASE_URL", url),
            ("PRISMA_SCHEMA", schema.to_str().unwrap()),
            ("PRISMA_MIGRATIONS", migrations.to_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(code, 0, "prisma {args:?}: {out}\n{err}");
    out
}

/// The datasource block the schema files of these tests start with.
const DATASOURCE: &str =
    "datasource db {\n  provider = \"postgresql\"\n  url      = env(\"DATABASE_URL\")\n}\n";

/// A scratch folder of the test's own, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("or-prisma-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(dir.join("migrations")).unwrap();
        Scratch(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `prisma db pull --print` of the database.
async fn pull(url: &str, scratch: &Scratch) -> String {
    let empty = scratch.path("empty.prisma");
    std::fs::write(&empty, DATASOURCE).unwrap();
    let out = prisma6(
        url,
        &empty,
        &scratch.path("migrations"),
        &["db", "pull", "--print", "--schema", empty.to_str().unwrap()],
    )
    .await;
    let start = out.find("datasource db").expect("a pulled schema");
    out[start..].to_string()
}

/// What `prisma schema` prints, as a whole schema file.
async fn printed(db: &TestDb) -> String {
    let catalog = prisma::introspect(db.pool.pg()).await.unwrap();
    format!("{DATASOURCE}\n{}", prisma::render(&catalog))
}

/// Whether every job of `ids` reaches `done` within 30 s (polled: the runner's completion is
/// in another connection's commit).
async fn all_done(db: &TestDb, ids: &[String]) -> bool {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let s = statuses(db).await;
            if ids
                .iter()
                .all(|id| s.get(id).map(String::as_str) == Some("done"))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok()
}

/// Writes `printed` as the schema in `scratch` and proves with Prisma's engine that a pull of
/// the database says the same: their `migrate diff` is an empty migration. Returns the schema's
/// and the migrations folder's paths.
async fn assert_pulled_is_printed(
    db: &TestDb,
    printed: &str,
    scratch: &Scratch,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let migrations = scratch.path("migrations");
    let schema = scratch.path("schema.prisma");
    std::fs::write(&schema, printed).unwrap();
    let pulled = scratch.path("pulled.prisma");
    std::fs::write(&pulled, pull(&db.url, scratch).await).unwrap();
    let diff = prisma6(
        &db.url,
        &schema,
        &migrations,
        &[
            "migrate",
            "diff",
            "--from-schema-datamodel",
            pulled.to_str().unwrap(),
            "--to-schema-datamodel",
            schema.to_str().unwrap(),
            "--script",
        ],
    )
    .await;
    assert!(
        diff.contains("-- This is an empty migration."),
        "the pulled schema and the printed one differ:\n{diff}\nprinted:\n{printed}"
    );
    (schema, migrations)
}

/// `prisma migrate dev` after a baseline proposes nothing ("Already in sync"). Returns its
/// output.
async fn assert_migrate_dev_in_sync(
    db: &TestDb,
    schema: &std::path::Path,
    migrations: &std::path::Path,
) -> String {
    let dev = prisma6(
        &db.url,
        schema,
        migrations,
        &["migrate", "dev", "--name", "drift_check", "--skip-generate"],
    )
    .await;
    assert!(
        dev.contains("Already in sync"),
        "migrate dev after the baseline: {dev}"
    );
    dev
}

/// Proves with Prisma's engine that `printed` describes the database: a pull of the database
/// against it is an empty migration; after a baseline of it marked applied, `migrate dev`
/// proposes nothing.
async fn assert_no_drift(db: &TestDb, printed: &str) {
    let scratch = Scratch::new();
    let (schema, migrations) = assert_pulled_is_printed(db, printed, &scratch).await;

    // The baseline: the printed model as the first migration, marked applied.
    let baseline = prisma6(
        &db.url,
        &schema,
        &migrations,
        &[
            "migrate",
            "diff",
            "--from-empty",
            "--to-schema-datamodel",
            schema.to_str().unwrap(),
            "--script",
        ],
    )
    .await;
    let sql_start = baseline.find("-- Create").unwrap_or(0);
    std::fs::create_dir_all(migrations.join("0_baseline")).unwrap();
    std::fs::write(
        migrations.join("0_baseline/migration.sql"),
        &baseline[sql_start..],
    )
    .unwrap();
    std::fs::write(
        migrations.join("migration_lock.toml"),
        "provider = \"postgresql\"\n",
    )
    .unwrap();
    prisma6(
        &db.url,
        &schema,
        &migrations,
        &["migrate", "resolve", "--applied", "0_baseline"],
    )
    .await;
    let dev = assert_migrate_dev_in_sync(db, &schema, &migrations).await;
    let folders: Vec<_> = std::fs::read_dir(&migrations)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(folders.len(), 1, "migrate dev wrote a migration: {dev}");
}

#[tokio::test]
async fn prisma_sees_no_drift_once_the_printed_models_are_baselined() {
    if !ready("migrate") {
        return;
    }
    let db = TestDb::new().await;
    let printed = printed(&db).await;
    // Every table of ours is a model, our bookkeeping included; the relation's actions are the
    // database's.
    for model in [
        "model OutboundJob {",
        "model OutboundMessage {",
        "model OutboundEarlyStatus {",
        "model OutboundNumberHold {",
        "model OutboundNumberCircuit {",
        "model sqlx_migrations {",
    ] {
        assert!(printed.contains(model), "{model} in\n{printed}");
    }
    assert!(
        printed.contains("onDelete: Cascade, onUpdate: NoAction"),
        "{printed}"
    );
    assert_no_drift(&db, &printed).await;
}

#[tokio::test]
async fn a_migration_written_for_prisma_is_applied_by_prisma_and_the_daemon_accepts_the_schema() {
    if !ready("migrate") {
        return;
    }
    let db = TestDb::empty().await;
    let before = outbound_runner::db::check_schema(&db.pool)
        .await
        .unwrap_err();
    assert!(
        format!("{before:#}").contains("table \"OutboundJob\""),
        "{before:#}"
    );

    let plan = prisma_migration::plan(db.pool.pg()).await.unwrap();
    let scratch = Scratch::new();
    let migrations = scratch.path("migrations");
    for (folder, sql) in plan.folders("20261206000000") {
        std::fs::create_dir_all(migrations.join(&folder)).unwrap();
        std::fs::write(migrations.join(&folder).join("migration.sql"), sql).unwrap();
    }
    std::fs::write(
        migrations.join("migration_lock.toml"),
        "provider = \"postgresql\"\n",
    )
    .unwrap();
    let schema = scratch.path("schema.prisma");
    std::fs::write(&schema, DATASOURCE).unwrap();
    let deployed = prisma6(&db.url, &schema, &migrations, &["migrate", "deploy"]).await;
    assert!(
        deployed.contains("20261206000000_outbound_runner"),
        "{deployed}"
    );

    // Everything the runner needs is there, the bookkeeping agrees, `migrate` has nothing to
    // do, and a second plan writes nothing.
    outbound_runner::db::check_schema(&db.pool).await.unwrap();
    assert!(
        outbound_runner::db::migrations_current(&db.pool)
            .await
            .unwrap()
    );
    outbound_runner::db::migrate(db.pool.pg()).await.unwrap();
    assert!(
        prisma_migration::plan(db.pool.pg())
            .await
            .unwrap()
            .is_empty()
    );

    // The trigger came through whole: an insert wakes the runner, which delivers.
    let runner = spawn_runner(&db, Arc::new(SandboxHandler), |s| {
        s.database.migrate = false;
    })
    .await;
    let ids = db.insert_jobs(3).await;
    let done = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if db.count("done").await == ids.len() as i64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    runner.shutdown().await;
    assert!(done.is_ok(), "the jobs were not delivered");
}

/// Jobs `running` and `done`, whatever the status column's type.
async fn running(db: &TestDb) -> i64 {
    sqlx::query_scalar(r#"SELECT count(*) FROM "OutboundJob" WHERE status::text = 'running'"#)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn done(db: &TestDb) -> i64 {
    sqlx::query_scalar(r#"SELECT count(*) FROM "OutboundJob" WHERE status::text = 'done'"#)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// The guide's own runner (`/api/jobs/run-outbound` in the app), as it works: one row at a time
/// taken `FOR UPDATE SKIP LOCKED` and marked `running` (no lease of ours), the orchestrator,
/// the send, `done`. Stops taking rows when `stop` is set (the app's cron turned off).
async fn app_runner(
    pool: sqlx::PgPool,
    orchestrator: String,
    meta: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> u32 {
    let http = reqwest::Client::new();
    let mut ran = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let mut tx = pool.begin().await.unwrap();
        let row: Option<(String, Value)> = sqlx::query_as(
            r#"SELECT id::text, payload FROM "OutboundJob"
               WHERE status = 'queued' ORDER BY "createdAt" LIMIT 1 FOR UPDATE SKIP LOCKED"#,
        )
        .fetch_optional(&mut *tx)
        .await
        .unwrap();
        let Some((id, payload)) = row else {
            tx.rollback().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        sqlx::query(
            r#"UPDATE "OutboundJob" SET status = 'running', "updatedAt" = now()
               WHERE id::text = $1"#,
        )
        .bind(&id)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let composed: Value = http
            .post(&orchestrator)
            .json(&json!({"input": payload["input"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for message in composed["messages"].as_array().unwrap() {
            let mut body = message.clone();
            body["messaging_product"] = json!("whatsapp");
            body["to"] = payload["to"].clone();
            // Named as ours are, so the mock counts the app's sends per job beside ours.
            body["biz_opaque_callback_data"] = json!(format!("outbound-runner:{id}:0"));
            let status = http
                .post(format!(
                    "{meta}/v21.0/{}/messages",
                    mock_meta::PHONE_NUMBER_ID
                ))
                .bearer_auth(mock_meta::TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status();
            assert!(status.is_success(), "the app's send: {status}");
        }
        sqlx::query(
            r#"UPDATE "OutboundJob" SET status = 'done', "completedAt" = now(), "updatedAt" = now()
               WHERE id::text = $1"#,
        )
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
        ran += 1;
    }
    ran
}

/// The switch: the app's runner still has jobs `running` (composing, then sending) when ours
/// starts. With `grace` as `runner.foreign_running_grace`, returns how often each job's message
/// was accepted by Meta, and how many jobs the app's runner finished.
async fn switch(
    grace: Duration,
    adopted: bool,
) -> (HashMap<String, usize>, u32, store::ForeignRunning) {
    // The app's own table (cuid ids, an enum status, `TIMESTAMP(3)`), adopted; or ours.
    let db = if adopted {
        let db = TestDb::empty().await;
        crate::support::prisma::make_app_schema(&db, crate::support::prisma::IdKind::Cuid).await;
        let mut conn = db.pool.pg().acquire().await.unwrap();
        let mut say = |_: &str| {};
        outbound_runner::db::adopt::apply(&mut conn, &mut say)
            .await
            .unwrap();
        drop(conn);
        // The one job the fixture made is not part of this play.
        sqlx::query(r#"DELETE FROM "OutboundJob""#)
            .execute(&db.pool)
            .await
            .unwrap();
        db
    } else {
        TestDb::new().await
    };
    let meta = MockMeta::start().await;
    let reply = json!({"messages": [{"type": "text", "text": {"body": "Thanks!"}}]});
    // The app's orchestrator is slow: its rows stay `running` for two seconds.
    let app_orchestrator = MockOrchestrator::start(reply.clone()).await;
    app_orchestrator.script(vec![Answer::Slow(Duration::from_secs(2), reply.clone()); 2]);
    let our_orchestrator = MockOrchestrator::start(reply).await;
    let n = 12;
    for i in 0..n {
        // As the app inserts: its own id (a cuid's shape), "updatedAt" in UTC.
        sqlx::query(&format!(
            r#"INSERT INTO "OutboundJob" ({id} payload, "updatedAt")
               VALUES ({value} $1::jsonb, now() AT TIME ZONE 'UTC')"#,
            id = if adopted { "id," } else { "" },
            value = if adopted {
                "'cswitch' || $2::text || 'x0000000000000000',"
            } else {
                ""
            },
        ))
        .bind(json!({"to": format!("1555000{i:04}"), "input": {"text": format!("hi {i}")}}))
        .bind(format!("{i:04}"))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    // The app's cron is still on: two of its runs take a row each.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let apps: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(app_runner(
                db.pool.pg().clone(),
                app_orchestrator.url(),
                meta.api_base(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(10), async {
        while running(&db).await < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the app's runner took two rows");
    // The operator turns the cron off (docs/prisma.md: first), the app's runs in flight go on.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let foreign = store::foreign_running(&db.pool, grace).await.unwrap();

    let runner = spawn_runner(
        &db,
        Arc::new(LiveHandler::new(&test_settings()).unwrap()),
        |s: &mut Settings| {
            s.delivery.mode = DeliveryMode::Live;
            s.whatsapp.api_base = meta.api_base();
            s.whatsapp.phone_number_id = mock_meta::PHONE_NUMBER_ID.into();
            s.whatsapp.access_token = Some(mock_meta::TOKEN.to_string().into());
            s.whatsapp.pair_interval = Duration::ZERO;
            s.orchestrator.url = our_orchestrator.url();
            s.runner.rescue_interval = Duration::from_millis(100);
            s.runner.foreign_running_grace = grace;
        },
    )
    .await;
    let mut app_done = 0;
    for a in apps {
        app_done += tokio::time::timeout(Duration::from_secs(20), a)
            .await
            .expect("the app's runs end")
            .unwrap();
    }
    let finished = tokio::time::timeout(Duration::from_secs(30), async {
        while done(&db).await < n {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if finished.is_err() {
        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
            r#"SELECT id::text, status::text, "lastError" FROM "OutboundJob" ORDER BY 1"#,
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let msgs: Vec<(String, String)> =
            sqlx::query_as(r#"SELECT "jobId"::text, status FROM "OutboundMessage" ORDER BY 1"#)
                .fetch_all(&db.pool)
                .await
                .unwrap();
        let leases: Vec<(String, Option<String>, Option<String>, i32)> = sqlx::query_as(
            r#"SELECT id::text, "lockedBy", "leaseUntil"::text, attempts FROM "OutboundJob" ORDER BY 1"#,
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        panic!(
            "every job done: {rows:?}\n{msgs:?}\n{leases:?}\naccepted {}",
            meta.accepted().len()
        );
    }
    // Anything still under way (a rescued job sent a second time) has had its chance.
    tokio::time::sleep(Duration::from_millis(300)).await;
    runner.shutdown().await;
    let mut per_job: HashMap<String, usize> = HashMap::new();
    for a in meta.accepted() {
        *per_job.entry(a.job).or_insert(0) += 1;
    }
    assert_eq!(per_job.len(), n as usize, "every job sent: {per_job:?}");
    (per_job, app_done, foreign)
}

#[tokio::test]
async fn during_the_switch_the_apps_running_jobs_are_left_to_it_and_each_message_goes_once() {
    // On the app's own table, adopted (its running rows have none of our lease columns set).
    let (sends, app_done, foreign) = switch(Duration::from_secs(15 * 60), true).await;
    assert_eq!(
        foreign,
        store::ForeignRunning {
            total: 2,
            recent: 2
        },
        "seen as the app's, recently updated"
    );
    assert_eq!(app_done, 2, "the app's runner finished what it had taken");
    let twice: Vec<_> = sends.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");

    // Without the grace (the old 60 s rescue, shortened here), the rescuer takes the app's
    // rows back while the app is still composing: those messages go out twice.
    let (sends, _, _) = switch(Duration::from_millis(500), false).await;
    let twice = sends.values().filter(|n| **n > 1).count();
    assert_eq!(
        twice, 2,
        "a short grace sends the app's two jobs twice: {sends:?}"
    );
}

// --- Prisma-made tables, adopted -----------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_outbound-runner");

/// Runs the binary on `url`; (exit code, stdout, stderr).
async fn outbound_runner(url: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("DATABASE_URL", url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("outbound-runner finishes")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The app's clients (`npm run generate` in tests/prisma/app), generated once if missing.
fn clients_generated() {
    static GENERATED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    GENERATED.get_or_init(|| {
        if ["cuid", "uuid", "serial"].iter().all(|k| {
            project("app")
                .join("generated")
                .join(k)
                .join("index.js")
                .exists()
        }) {
            return;
        }
        let out = std::process::Command::new("npm")
            .args(["run", "-s", "generate"])
            .current_dir(project("app"))
            .env("PRISMA_SCHEMA_ENGINE_BINARY", "/bin/false")
            .env("CHECKPOINT_DISABLE", "1")
            .output()
            .expect("running npm run generate");
        assert!(
            out.status.success(),
            "npm run generate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// `node app.mjs ARGS` (Prisma Client 7, the app's model `kind`) on `url`: its JSON answer.
async fn app(url: &str, args: &[&str]) -> Value {
    clients_generated();
    let mut all = vec!["app.mjs"];
    all.extend_from_slice(args);
    let (code, out, err) = node("app", &all, &[("DATABASE_URL", url)]).await;
    assert_eq!(code, 0, "app.mjs {args:?}: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("app.mjs {args:?}: {e}: {out}"))
}

/// A database made the way Prisma makes it for the app's model `kind` (tests/prisma/app/schemas):
/// its first migration written by `prisma migrate diff` and applied by `prisma migrate deploy`
/// (so `_prisma_migrations` records it), with the server's TimeZone set to `time_zone`. The
/// scratch folder holds the app's schema file and migrations.
async fn prisma_made(kind: &str, time_zone: &str) -> (TestDb, Scratch) {
    let db = TestDb::empty().await;
    sqlx::query(&format!(
        r#"ALTER DATABASE "{}" SET "TimeZone" = '{time_zone}'"#,
        db.name
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let scratch = Scratch::new();
    let migrations = scratch.path("migrations");
    let model = std::fs::read_to_string(project("app").join(format!("schemas/{kind}.prisma")))
        .unwrap()
        .replace(
            "provider = \"postgresql\"\n}",
            "provider = \"postgresql\"\n  url      = env(\"DATABASE_URL\")\n}",
        );
    let schema = scratch.path("schema.prisma");
    std::fs::write(&schema, &model).unwrap();
    let init = prisma6(
        &db.url,
        &schema,
        &migrations,
        &[
            "migrate",
            "diff",
            "--from-empty",
            "--to-schema-datamodel",
            schema.to_str().unwrap(),
            "--script",
        ],
    )
    .await;
    let sql = &init[init.find("-- Create").expect("the app's DDL")..];
    std::fs::create_dir_all(migrations.join("0_init")).unwrap();
    std::fs::write(migrations.join("0_init/migration.sql"), sql).unwrap();
    std::fs::write(
        migrations.join("migration_lock.toml"),
        "provider = \"postgresql\"\n",
    )
    .unwrap();
    prisma6(&db.url, &schema, &migrations, &["migrate", "deploy"]).await;
    (db, scratch)
}

/// The status of every job, as text whatever the column's type.
async fn statuses(db: &TestDb) -> HashMap<String, String> {
    sqlx::query_as::<_, (String, String)>(r#"SELECT id::text, status::text FROM "OutboundJob""#)
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// One full adoption of a Prisma-made table of the app's model `kind`, on a server whose
/// TimeZone is not UTC: the app's rows before and after are delivered once, Prisma Client reads
/// the states we write with `completedAt` right in UTC, the printed models leave Prisma no drift
/// after a baseline on the app's own history, and `jobs show` takes the app's id.
async fn adoption(kind: &str, time_zone: &str) {
    let (db, scratch) = prisma_made(kind, time_zone).await;
    let before = app(
        &db.url,
        &[
            "insert",
            "--schema",
            kind,
            "--count",
            "3",
            "--request-id",
            "req-before",
            "--key",
            "before",
        ],
    )
    .await;
    let columns_before: Vec<(String, String)> = sqlx::query_as(
        r#"SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
           WHERE attrelid = '"OutboundJob"'::regclass AND attnum > 0 AND NOT attisdropped
           ORDER BY attnum"#,
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let rows_before: Vec<(String, String)> =
        sqlx::query_as(r#"SELECT id::text, to_jsonb(j)::text FROM "OutboundJob" j ORDER BY 1"#)
            .fetch_all(&db.pool)
            .await
            .unwrap();

    // `migrate` refuses the app's table and changes nothing; `adopt --dry-run` changes nothing.
    let (code, _, err) = outbound_runner(&db.url, &["migrate"]).await;
    assert!(
        code == 78 || code == 69,
        "migrate on the app's table: {code} {err}"
    );
    assert!(err.contains("adopt --dry-run"), "{err}");
    let (code, plan, err) = outbound_runner(&db.url, &["adopt", "--dry-run"]).await;
    assert_eq!(code, 0, "adopt --dry-run: {err}");
    assert!(plan.contains("ALTER TABLE"), "{plan}");
    let bookkeeping: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(bookkeeping, None, "nothing of ours before adopt");

    let (code, out, err) = outbound_runner(&db.url, &["adopt", "--yes"]).await;
    assert_eq!(code, 0, "adopt --yes: {out}\n{err}");
    // Every app column kept its type, every row its values.
    let columns_after: Vec<(String, String)> = sqlx::query_as(
        r#"SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
           WHERE attrelid = '"OutboundJob"'::regclass AND attnum > 0 AND NOT attisdropped
           ORDER BY attnum"#,
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for c in &columns_before {
        assert!(columns_after.contains(c), "{c:?} kept: {columns_after:?}");
    }
    let app_columns: Vec<String> = columns_before
        .iter()
        .map(|(n, _)| format!("'{n}'"))
        .collect();
    let kept: Vec<(String, String)> = sqlx::query_as(&format!(
        r#"SELECT id::text, (SELECT jsonb_object_agg(k, v) FROM jsonb_each(to_jsonb(j)) e(k, v)
                             WHERE k IN ({}))::text
           FROM "OutboundJob" j ORDER BY 1"#,
        app_columns.join(", ")
    ))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(kept.len(), rows_before.len());
    for ((id, after), (id0, before)) in kept.iter().zip(&rows_before) {
        assert_eq!(id, id0);
        let after: Value = serde_json::from_str(after).unwrap();
        let before: Value = serde_json::from_str(before).unwrap();
        for (k, v) in after.as_object().unwrap() {
            assert_eq!(&before[k], v, "job {id}: {k} unchanged by adopt");
        }
    }
    let (code, again, _) = outbound_runner(&db.url, &["adopt", "--yes"]).await;
    assert_eq!(code, 0, "a second adopt: {again}");

    // The app keeps inserting its way after adoption; the runner delivers everything once.
    let after = app(
        &db.url,
        &[
            "insert",
            "--schema",
            kind,
            "--count",
            "2",
            "--many",
            "--request-id",
            "req-after",
            "--key",
            "after",
        ],
    )
    .await;
    let one_more = app(&db.url, &["insert", "--schema", kind, "--count", "1"]).await;
    let mut ids: Vec<String> = Vec::new();
    for answer in [&before, &after, &one_more] {
        ids.extend(
            answer["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string()),
        );
    }
    let runner = spawn_runner(&db, Arc::new(SandboxHandler), |_| {}).await;
    let delivered = all_done(&db, &ids).await;
    runner.shutdown().await;
    assert!(delivered, "delivered: {:?}", statuses(&db).await);
    let messages: Vec<(String, i64)> =
        sqlx::query_as(r#"SELECT "jobId"::text, count(*) FROM "OutboundMessage" GROUP BY 1"#)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(messages.len(), ids.len(), "{messages:?}");
    assert!(
        messages.iter().all(|(_, n)| *n == 1),
        "each once: {messages:?}"
    );

    // The app's own reads see the states we wrote, `completedAt` in UTC.
    let done = app(&db.url, &["find", "--schema", kind, "--status", "done"]).await;
    let done = done.as_array().unwrap();
    assert_eq!(done.len(), ids.len(), "{done:?}");
    let now = chrono::Utc::now();
    for row in done {
        let at: chrono::DateTime<chrono::Utc> =
            row["completedAt"].as_str().unwrap().parse().unwrap();
        let off = (now - at).num_seconds().abs();
        assert!(
            off < 120,
            "completedAt {at} is {off} s from now ({time_zone}): {row}"
        );
    }

    // The guide's monitoring SQL runs unchanged on the adopted table (on a session in UTC, the
    // time zone Prisma writes its `TIMESTAMP(3)` values in).
    let mut conn = db.pool.pg().acquire().await.unwrap();
    sqlx::query("SET TIME ZONE 'UTC'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let done_last_hour: i64 = sqlx::query_scalar(crate::guide_sql::DONE_LAST_HOUR)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(done_last_hour, ids.len() as i64);
    for sql in [
        crate::guide_sql::QUEUED,
        crate::guide_sql::RUNNING,
        crate::guide_sql::FAILED_LAST_DAY,
    ] {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut *conn).await.unwrap();
        assert_eq!(n, 0, "{sql}");
    }
    let by_status = sqlx::query(crate::guide_sql::BY_STATUS)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert_eq!(by_status.len(), 1);
    let per_minute = sqlx::query(crate::guide_sql::PER_MINUTE)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert!(!per_minute.is_empty());
    drop(conn);

    // `prisma schema`, baselined on the app's own history: no drift.
    let (code, models, err) = outbound_runner(&db.url, &["prisma", "schema"]).await;
    assert_eq!(code, 0, "{err}");
    let printed = format!("{DATASOURCE}\n{models}");
    assert_no_drift_after(&db, &printed, &scratch).await;

    // Operators name the job by the app's id.
    let (code, shown, err) = outbound_runner(&db.url, &["jobs", "show", &ids[0]]).await;
    assert_eq!(code, 0, "jobs show {}: {err}", ids[0]);
    assert!(shown.contains(&ids[0]), "{shown}");
}

/// [`assert_no_drift`] for a database with the app's own migration history in `scratch`: the
/// baseline is the difference between that history and the printed models.
async fn assert_no_drift_after(db: &TestDb, printed: &str, scratch: &Scratch) {
    let (schema, migrations) = assert_pulled_is_printed(db, printed, scratch).await;
    let baseline = prisma6(
        &db.url,
        &schema,
        &migrations,
        &[
            "migrate",
            "diff",
            "--from-migrations",
            migrations.to_str().unwrap(),
            "--to-schema-datamodel",
            schema.to_str().unwrap(),
            "--script",
        ],
    )
    .await;
    let sql = &baseline[baseline.find("--").unwrap_or(0)..];
    std::fs::create_dir_all(migrations.join("1_outbound_runner")).unwrap();
    std::fs::write(migrations.join("1_outbound_runner/migration.sql"), sql).unwrap();
    prisma6(
        &db.url,
        &schema,
        &migrations,
        &["migrate", "resolve", "--applied", "1_outbound_runner"],
    )
    .await;
    assert_migrate_dev_in_sync(db, &schema, &migrations).await;
}

#[tokio::test]
async fn a_cuid_table_with_an_enum_status_is_adopted_and_its_jobs_flow() {
    if !ready("migrate") || !ready("app") {
        return;
    }
    adoption("cuid", "Asia/Kolkata").await;
}

#[tokio::test]
async fn a_uuid_table_with_a_text_status_is_adopted_and_its_jobs_flow() {
    if !ready("migrate") || !ready("app") {
        return;
    }
    adoption("uuid", "America/Sao_Paulo").await;
}

#[tokio::test]
async fn a_serial_table_is_adopted_and_its_jobs_flow() {
    if !ready("migrate") || !ready("app") {
        return;
    }
    adoption("serial", "Asia/Kolkata").await;
}

#[tokio::test]
async fn on_the_apps_table_prisma_applies_the_adoption_written_as_migrations() {
    if !ready("migrate") || !ready("app") {
        return;
    }
    let (db, scratch) = prisma_made("cuid", "America/Sao_Paulo").await;
    let before = app(
        &db.url,
        &[
            "insert",
            "--schema",
            "cuid",
            "--count",
            "2",
            "--request-id",
            "req-b",
        ],
    )
    .await;
    let migrations = scratch.path("migrations");
    let (code, out, err) = outbound_runner(
        &db.url,
        &[
            "prisma",
            "migration",
            migrations.to_str().unwrap(),
            "--timestamp",
            "20261206120000",
        ],
    )
    .await;
    assert_eq!(code, 0, "prisma migration: {out}\n{err}");
    // The enum value first, alone; the indexes built CONCURRENTLY, each alone; nothing applied.
    let mut folders: Vec<String> = std::fs::read_dir(&migrations)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    assert_eq!(folders[0], "0_init");
    assert_eq!(folders[1], "20261206120000_outbound_runner");
    let first =
        std::fs::read_to_string(migrations.join(&folders[1]).join("migration.sql")).unwrap();
    assert!(
        first.contains("ADD VALUE IF NOT EXISTS 'cancelled'"),
        "{first}"
    );
    let concurrent = folders
        .iter()
        .filter(|f| {
            std::fs::read_to_string(migrations.join(f).join("migration.sql"))
                .unwrap()
                .contains("CONCURRENTLY")
        })
        .count();
    assert!(concurrent >= 5, "{folders:?}");
    let bookkeeping: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(bookkeeping, None, "writing the files changed nothing");

    // Prisma applies them; the daemon's check with database.migrate = false passes, `migrate`
    // has nothing to do, and the app's jobs flow.
    let schema = scratch.path("schema.prisma");
    let deployed = prisma6(&db.url, &schema, &migrations, &["migrate", "deploy"]).await;
    assert!(
        deployed.contains("20261206120000_outbound_runner"),
        "{deployed}"
    );
    outbound_runner::db::check_schema(&db.pool).await.unwrap();
    let (code, _, err) = outbound_runner(&db.url, &["migrate"]).await;
    assert_eq!(code, 0, "migrate after Prisma applied ours: {err}");
    let runner = spawn_runner(&db, Arc::new(SandboxHandler), |s| {
        s.database.migrate = false;
    })
    .await;
    let ids: Vec<String> = before["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let delivered = all_done(&db, &ids).await;
    runner.shutdown().await;
    assert!(delivered, "delivered: {:?}", statuses(&db).await);

    // The history holds our DDL: with the printed models in schema.prisma, `migrate dev` is in
    // sync without a baseline.
    let (code, models, err) = outbound_runner(&db.url, &["prisma", "schema"]).await;
    assert_eq!(code, 0, "{err}");
    std::fs::write(&schema, format!("{DATASOURCE}\n{models}")).unwrap();
    let dev = prisma6(
        &db.url,
        &schema,
        &migrations,
        &["migrate", "dev", "--name", "drift_check", "--skip-generate"],
    )
    .await;
    assert!(dev.contains("Already in sync"), "migrate dev: {dev}");
}

#[tokio::test]
async fn adopt_names_the_rows_the_apps_runner_is_still_working() {
    if !ready("migrate") || !ready("app") {
        return;
    }
    let (db, _scratch) = prisma_made("cuid", "Asia/Kolkata").await;
    let ids = app(&db.url, &["insert", "--schema", "cuid", "--count", "2"]).await;
    // The app's runner took one (as the guide's runner does: `running`, "updatedAt" now, UTC).
    sqlx::query(
        r#"UPDATE "OutboundJob" SET status = 'running', "updatedAt" = now() AT TIME ZONE 'UTC'
           WHERE id = $1"#,
    )
    .bind(ids["ids"][0].as_str().unwrap())
    .execute(&db.pool)
    .await
    .unwrap();
    let (code, out, err) = outbound_runner(&db.url, &["adopt", "--dry-run"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("1 job(s) are `running` by the app's own runner (1 updated within"),
        "{out}"
    );
    assert!(out.contains("Turn the app's cron off first"), "{out}");
}

#[tokio::test]
async fn a_claim_takes_no_more_than_its_limit_on_a_table_just_adopted() {
    // The app's table as Prisma made it, one row in its statistics, adopted: the planner's
    // nested loop once re-ran the claim's LIMIT for every row and claimed the whole queue.
    let db = TestDb::empty().await;
    crate::support::prisma::make_app_schema(&db, crate::support::prisma::IdKind::Cuid).await;
    let mut conn = db.pool.pg().acquire().await.unwrap();
    let mut say = |_: &str| {};
    outbound_runner::db::adopt::apply(&mut conn, &mut say)
        .await
        .unwrap();
    drop(conn);
    sqlx::query(
        r#"INSERT INTO "OutboundJob" (id, payload, "updatedAt")
           SELECT 'cclaim' || g, '{"to":"15550000001","message":{"type":"text","text":{"body":"x"}}}',
                  now() AT TIME ZONE 'UTC'
           FROM generate_series(1, 10) g"#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let me: Arc<str> = Arc::from("claim-test");
    let claimed = store::claim(&db.pool, &me, Duration::from_secs(60), 4, 5)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4);
    assert_eq!(running(&db).await, 4);
}

#[tokio::test]
async fn run_says_at_start_that_the_apps_runner_still_has_jobs_running() {
    let db = TestDb::new().await;
    // As the guide's runner leaves them: `running`, no lease, updated just now.
    db.insert_jobs(2).await;
    sqlx::query(r#"UPDATE "OutboundJob" SET status = 'running', "updatedAt" = now()"#)
        .execute(&db.pool)
        .await
        .unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("DATABASE_URL", &db.url)
        .env("OUTBOUND_RUNNER__HTTP__LISTEN", "")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
            if line.trim_end().ends_with(": ready") {
                return true;
            }
        }
        false
    })
    .await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    assert_eq!(seen, Ok(true), "the daemon did not start:\n{log}");
    let warning = log
        .lines()
        .find(|l| l.contains("running without a lease of ours"))
        .unwrap_or_else(|| panic!("no warning about the app's running jobs:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("Turn the app's cron off first"),
        "{warning}"
    );
    assert!(warning.contains("running=2"), "{warning}");
    // Within the grace: they are still the app's.
    assert_eq!(running(&db).await, 2);
}
