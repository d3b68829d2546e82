//! Adoption of the app's own `"OutboundJob"`, made the way Prisma Migrate makes it, for every
//! kind of id (docs/adoption.md): `migrate` refuses and changes nothing, `adopt --dry-run`
//! changes nothing, `adopt` keeps every app column and row as it was, and then jobs inserted
//! the app's way before and after are delivered once, spoken of by the app's own id.

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbound_runner::db::adopt::{self, Ownership};
use outbound_runner::delivery::sandbox::SandboxHandler;
use outbound_runner::queue::{JobId, admin, store};
use sqlx::Row;

use crate::support::app::{App, TOKEN};
use crate::support::prisma::{self, IdKind};
use crate::support::{TestDb, spawn_passive};

const BIN: &str = env!("CARGO_BIN_EXE_outbound-runner");
const ADMIN: &str = "admin-token-for-adoption-tests";

fn cli(db: &TestDb, args: &[&str]) -> Output {
    cli_with(db, args, &[])
}

fn cli_with(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("DATABASE_URL", &db.url)
        // `run` never gets as far as serving here; no port of its own either way.
        .env("OUTBOUND_RUNNER__HTTP__LISTEN", "")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn app_db(kind: IdKind) -> (TestDb, String) {
    let db = TestDb::empty().await;
    let first = prisma::make_app_schema(&db, kind).await;
    (db, first)
}

async fn has_sqlx_table(db: &TestDb) -> bool {
    sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn adopt_now(db: &TestDb) -> adopt::Plan {
    let mut conn = db.pool.pg().acquire().await.unwrap();
    let mut lines = Vec::new();
    let mut say = |l: &str| lines.push(l.to_string());
    adopt::apply(&mut conn, &mut say).await.unwrap()
}

#[tokio::test]
async fn migrate_and_run_refuse_an_app_table_and_change_nothing() {
    let (db, _) = app_db(IdKind::Cuid).await;
    let before = prisma::catalog(&db).await;
    let err = outbound_runner::db::migrate(db.pool.pg())
        .await
        .unwrap_err();
    assert!(
        err.downcast_ref::<outbound_runner::db::SchemaError>()
            .is_some(),
        "{err:#}"
    );
    let out = cli(&db, &["migrate"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(text(&out).contains("adopt --dry-run"), "{}", text(&out));
    let out = cli(&db, &["run"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(text(&out).contains("adopt --dry-run"), "{}", text(&out));
    // With database.migrate = false: what is missing is listed, and `adopt` named.
    let out = cli_with(
        &db,
        &["run"],
        &[("OUTBOUND_RUNNER__DATABASE__MIGRATE", "false")],
    );
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).contains("lacks what the runner needs")
            && text(&out).contains("adopt --dry-run"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("OutboundJob_runnable_idx"),
        "{}",
        text(&out)
    );
    assert_eq!(prisma::catalog(&db).await, before, "nothing changed");
    assert!(!has_sqlx_table(&db).await, "not even our bookkeeping table");
}

#[tokio::test]
async fn a_dry_run_prints_every_statement_and_changes_nothing() {
    let (db, _) = app_db(IdKind::Cuid).await;
    let before = prisma::catalog(&db).await;
    let rows = prisma::app_rows(&db).await;
    let out = cli(&db, &["adopt", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed = text(&out);
    for expected in [
        "ALTER TYPE \"OutboundJobStatus\" ADD VALUE IF NOT EXISTS 'cancelled'",
        "CREATE OR REPLACE FUNCTION outbound_job_id(text) RETURNS text",
        "ADD COLUMN \"runAt\" timestamptz NOT NULL DEFAULT now()",
        "CREATE INDEX CONCURRENTLY \"OutboundJob_runnable_idx\"",
        "CREATE TABLE \"OutboundMessage\"",
        "\"jobId\"          text NOT NULL REFERENCES \"OutboundJob\"",
        "CREATE TRIGGER outbound_job_notify",
        "INSERT INTO _sqlx_migrations",
        "\"tenantId\"",
        "nothing was changed",
    ] {
        assert!(printed.contains(expected), "{expected:?} in:\n{printed}");
    }
    // Without a terminal and without --yes: refused, nothing done.
    let out = cli(&db, &["adopt"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert_eq!(prisma::catalog(&db).await, before, "nothing changed");
    assert_eq!(prisma::app_rows(&db).await, rows);
    assert!(!has_sqlx_table(&db).await);
}

/// Every id kind: adoption keeps the app's columns and rows, a second one is a no-op, and
/// `migrate` then works as on a fresh database.
#[tokio::test]
async fn adoption_keeps_every_app_column_and_row_for_every_id_kind() {
    for kind in IdKind::ALL {
        let (db, _) = app_db(kind).await;
        prisma::app_insert(&db, kind, "15550009002", Some("k2")).await;
        let columns = prisma::app_columns(&db).await;
        let rows = prisma::app_rows(&db).await;
        let out = cli(&db, &["adopt", "--yes"]);
        assert_eq!(out.status.code(), Some(0), "{kind:?}: {}", text(&out));
        assert_eq!(
            prisma::app_columns(&db).await,
            columns,
            "{kind:?}: types kept"
        );
        assert_eq!(prisma::app_rows(&db).await, rows, "{kind:?}: rows kept");
        let mut conn = db.pool.pg().acquire().await.unwrap();
        assert_eq!(
            adopt::ownership(&mut conn).await.unwrap(),
            Ownership::Ours,
            "{kind:?}"
        );
        let again = adopt::plan_on(&mut conn).await.unwrap();
        assert!(again.is_empty(), "{kind:?}: {}", again.render());
        drop(conn);
        let out = cli(&db, &["adopt", "--yes"]);
        assert_eq!(out.status.code(), Some(0), "{kind:?}: {}", text(&out));
        assert!(text(&out).contains("nothing to do"), "{}", text(&out));
        let out = cli(&db, &["migrate"]);
        assert_eq!(out.status.code(), Some(0), "{kind:?}: {}", text(&out));
        // Our own inserts work on the app's table: the id and "updatedAt" are ours to set.
        let new = store::enqueue(
            db.pool.pg(),
            &[store::NewJob {
                payload: serde_json::json!({"to": "15550009003", "message": {"type": "text",
                    "text": {"body": "from enqueue"}}}),
                ..Default::default()
            }],
        )
        .await
        .unwrap();
        assert_eq!(new.len(), 1, "{kind:?}");
        let shown = admin::show(&db.pool, &new[0].0).await.unwrap();
        assert_eq!(shown.id, new[0].0);
        // The planner's model matches the migrations: a fresh database plans nothing either.
    }
    let fresh = TestDb::new().await;
    let plan = adopt::plan(fresh.pool.pg()).await.unwrap();
    assert!(plan.is_empty(), "{}", plan.render());
}

/// Rows inserted the app's way before and after adoption are delivered once, under a
/// non-UTC database TimeZone, with "completedAt" the right UTC instant; the trigger's
/// jobIds, `jobs show` and the admin API speak of the app's own ids.
#[tokio::test]
async fn jobs_inserted_the_apps_way_are_delivered_once_and_named_by_the_apps_ids() {
    for (kind, zone) in [
        (IdKind::Cuid, "Asia/Kolkata"),
        (IdKind::Uuid, "America/Sao_Paulo"),
        (IdKind::Serial, "Asia/Kolkata"),
        (IdKind::BigInt, "America/Sao_Paulo"),
    ] {
        let (db, before) = app_db(kind).await;
        sqlx::raw_sql(&format!(
            r#"ALTER DATABASE "{}" SET TimeZone = '{zone}'"#,
            db.name
        ))
        .execute(&db.pool)
        .await
        .unwrap();
        adopt_now(&db).await;
        let after = prisma::app_insert(&db, kind, "15550009004", None).await;
        let started = chrono::Utc::now();
        let runner = spawn_passive(&db, Arc::new(SandboxHandler), |s| {
            s.http.job_runner_token = Some(TOKEN.to_string().into());
            s.http.admin_token = Some(ADMIN.to_string().into());
        })
        .await;
        let app = App::serve(db, runner).await;
        let (status, body) = app
            .get_json(&format!("/api/jobs/run-outbound?token={TOKEN}&max=10"))
            .await;
        assert_eq!(status, 200, "{body}");
        let mut processed: Vec<String> = body["jobIds"]["processed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        processed.sort();
        let mut expected = vec![before.clone(), after.clone()];
        expected.sort();
        assert_eq!(processed, expected, "{kind:?}: {body}");
        // A second pass finds nothing: each delivered once.
        let (_, body) = app
            .get_json(&format!("/api/jobs/run-outbound?token={TOKEN}&max=10"))
            .await;
        assert_eq!(body["processed"], 0, "{kind:?}: {body}");
        let sent: i64 =
            sqlx::query_scalar(r#"SELECT count(*) FROM "OutboundMessage" WHERE status = 'sent'"#)
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
        assert_eq!(sent, 2, "{kind:?}");
        // "completedAt" is the UTC instant, whatever the column's type and the zone.
        let completed: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
            r#"SELECT "completedAt"::timestamptz FROM "OutboundJob" WHERE id = outbound_job_id($1)"#,
        )
        .bind(&before)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        let lag = completed - started;
        assert!(
            lag > chrono::Duration::seconds(-5) && lag < chrono::Duration::seconds(30),
            "{kind:?} in {zone}: completedAt {completed} vs {started}"
        );
        // `jobs show <id>` and the admin API by the app's id.
        let out = cli(&app.db, &["jobs", "show", &before]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(text(&out).contains(&before), "{}", text(&out));
        let detail = admin::show(&app.db.pool, &JobId::from(before.as_str()))
            .await
            .unwrap();
        assert_eq!(detail.status, "done");
        assert_eq!(detail.messages.len(), 1);
        // The admin API: the job by its own id, and ids as strings in the list.
        let admin_get = |path: String| {
            let req = app.client.get(app.url(&path)).bearer_auth(ADMIN);
            async move {
                let r = req.send().await.unwrap();
                (
                    r.status().as_u16(),
                    r.json::<serde_json::Value>().await.unwrap(),
                )
            }
        };
        let (status, body) = admin_get(format!("/api/admin/jobs/{before}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["job"]["id"], before.as_str(), "{body}");
        assert_eq!(body["job"]["messages"][0]["status"], "sent", "{body}");
        let (status, body) = admin_get("/api/admin/jobs?status=done&limit=1".into()).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["jobs"][0]["id"].is_string(), "{body}");
        let cursor = body["nextCursor"].as_str().unwrap().to_string();
        let (status, body) =
            admin_get(format!("/api/admin/jobs?status=done&cursor={cursor}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["jobs"].as_array().unwrap().len(), 1, "{body}");
        app.stop().await;
    }
}

/// The guide's monitoring SQL runs unchanged on an adopted table (an enum status).
#[tokio::test]
async fn the_guides_sql_runs_unchanged_on_an_adopted_table() {
    let (db, _) = app_db(IdKind::Cuid).await;
    adopt_now(&db).await;
    for q in crate::guide_sql::ALL {
        sqlx::raw_sql(q)
            .fetch_all(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{q}: {e}"));
    }
    let queued: i64 = sqlx::query_scalar(crate::guide_sql::QUEUED)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(queued, 1);
    // And `status` reads it.
    let out = cli(&db, &["status", "--json"]);
    assert!(text(&out).contains("\"queued\""), "{}", text(&out));
}

/// Statements name a job by `outbound_job_id($1)`: the primary key serves them, whatever the
/// id's type.
#[tokio::test]
async fn ids_are_found_by_primary_key_for_every_id_kind() {
    for kind in IdKind::ALL {
        let (db, first) = app_db(kind).await;
        adopt_now(&db).await;
        prisma::bulk_insert(&db, kind, 5000).await;
        let mut conn = db.pool.pg().acquire().await.unwrap();
        let plan: Vec<String> = sqlx::query_scalar(
            r#"EXPLAIN SELECT status FROM "OutboundJob" WHERE id = outbound_job_id($1)"#,
        )
        .bind(&first)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("OutboundJob_pkey"), "{kind:?}: {plan}");
        // Text that is not an id of this type matches nothing (never an error).
        let none: Option<String> = sqlx::query_scalar(
            r#"SELECT id::text FROM "OutboundJob" WHERE id = outbound_job_id($1)"#,
        )
        .bind("not-an-id'; --")
        .fetch_optional(&mut *conn)
        .await
        .unwrap();
        assert_eq!(none, None, "{kind:?}");
        let found: Option<String> = sqlx::query_scalar(
            r#"SELECT id::text FROM "OutboundJob" WHERE id = outbound_job_id($1)"#,
        )
        .bind(&first)
        .fetch_optional(&mut *conn)
        .await
        .unwrap();
        assert_eq!(found.as_deref(), Some(first.as_str()), "{kind:?}");
        // The runner's own id lists go through `outbound_job_ids_cast`: a plain cast the
        // planner inlines (no function call set up again by every statement), which finds the
        // row by the primary key.
        let verbose: Vec<String> = sqlx::query_scalar(
            r#"EXPLAIN VERBOSE SELECT outbound_job_ids_cast(ARRAY[id::text]) FROM "OutboundJob""#,
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let verbose = verbose.join("\n");
        assert!(
            !verbose.contains("outbound_job_ids_cast"),
            "{kind:?}: not inlined: {verbose}"
        );
        assert_eq!(ids_cast_volatility(&db).await, "s", "{kind:?}");
        let found: Option<String> = sqlx::query_scalar(
            r#"SELECT id::text FROM "OutboundJob" WHERE id = ANY(outbound_job_ids_cast($1))"#,
        )
        .bind(vec![first.clone()])
        .fetch_optional(&mut *conn)
        .await
        .unwrap();
        assert_eq!(found.as_deref(), Some(first.as_str()), "{kind:?}");
    }
}

/// A killed run leaves an invalid index: the next adoption sees it and rebuilds it.
#[tokio::test]
async fn an_invalid_index_left_by_a_killed_run_is_rebuilt() {
    let (db, _) = app_db(IdKind::Serial).await;
    sqlx::raw_sql(
        r#"CREATE INDEX "OutboundJob_createdAt_id_idx" ON "OutboundJob" ("createdAt", id);
           UPDATE pg_index SET indisvalid = false
           WHERE indexrelid = '"OutboundJob_createdAt_id_idx"'::regclass"#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let plan = adopt::plan(db.pool.pg()).await.unwrap();
    let rendered = plan.render();
    assert!(
        rendered.contains(r#"DROP INDEX CONCURRENTLY IF EXISTS "OutboundJob_createdAt_id_idx""#),
        "{rendered}"
    );
    adopt_now(&db).await;
    let valid: bool = sqlx::query_scalar(
        r#"SELECT indisvalid FROM pg_index
           WHERE indexrelid = '"OutboundJob_createdAt_id_idx"'::regclass"#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(valid);
}

/// A column we need that the app has with a type we cannot use: refused (78), named, nothing
/// changed.
#[tokio::test]
async fn an_incompatible_column_is_named_and_nothing_changes() {
    let (db, _) = app_db(IdKind::Cuid).await;
    sqlx::raw_sql(
        r#"ALTER TABLE "OutboundJob" ADD COLUMN "attempts2" int, ADD COLUMN "priority" text"#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let before = prisma::catalog(&db).await;
    let out = cli(&db, &["adopt", "--yes"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).contains("column \"priority\" is text"),
        "{}",
        text(&out)
    );
    assert_eq!(prisma::catalog(&db).await, before);
}

/// Later migrations apply on top of an adopted table (our migrations are recorded with sqlx's
/// own checksums).
#[tokio::test]
async fn a_later_migration_applies_on_an_adopted_table() {
    let (db, _) = app_db(IdKind::Cuid).await;
    adopt_now(&db).await;
    let dir = std::env::temp_dir().join(format!("or-later-{:x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    std::fs::write(
        dir.join("20991231000001_later.sql"),
        r#"ALTER TABLE "OutboundJob" ADD COLUMN "laterColumn" text;
           CREATE INDEX "OutboundJob_later_idx" ON "OutboundJob" ("laterColumn");"#,
    )
    .unwrap();
    let migrator = sqlx::migrate::Migrator::new(dir.as_path()).await.unwrap();
    migrator.run(db.pool.pg()).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        applied as usize,
        outbound_runner::db::MIGRATOR.iter().count() + 1
    );
    let has: bool = sqlx::query_scalar(
        r#"SELECT EXISTS (SELECT 1 FROM pg_attribute
           WHERE attrelid = '"OutboundJob"'::regclass AND attname = 'laterColumn')"#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(has);
    let _ = std::fs::remove_dir_all(&dir);
}

/// On a busy table the app's inserts go on during the adoption: none waits more than 500 ms.
#[tokio::test]
async fn the_apps_inserts_never_wait_long_while_adopting() {
    let (db, _) = app_db(IdKind::Cuid).await;
    let rows: i64 = std::env::var("ADOPT_TEST_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    sqlx::query(
        r#"INSERT INTO "OutboundJob" (id, status, payload, "requestId", "createdAt", "updatedAt")
           SELECT 'cbulk' || g, CASE WHEN g % 10 = 0 THEN 'queued' ELSE 'done' END::"OutboundJobStatus",
                  jsonb_build_object('to', '1555' || lpad(g::text, 7, '0'),
                      'message', jsonb_build_object('type', 'text',
                          'text', jsonb_build_object('body', 'bulk ' || g))),
                  'req-' || g, now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'
           FROM generate_series(1, $1) g"#,
    )
    .bind(rows)
    .execute(&db.pool)
    .await
    .unwrap();
    db.vacuum_jobs().await;
    // The app: 50 inserts a second, each timed, until told to stop.
    let stop = tokio_util::sync::CancellationToken::new();
    let inserter = {
        let pool = db.pool.pg().clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut waits = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut n = 0u64;
            while !stop.is_cancelled() {
                tick.tick().await;
                n += 1;
                let t = Instant::now();
                sqlx::query(
                    r#"INSERT INTO "OutboundJob" (id, status, payload, "createdAt", "updatedAt")
                       VALUES ($1, 'queued', '{"to": "15550000000", "message": {"type": "text",
                               "text": {"body": "during"}}}', now() AT TIME ZONE 'UTC',
                               now() AT TIME ZONE 'UTC')"#,
                )
                .bind(format!("cduring{n}"))
                .execute(&pool)
                .await
                .unwrap();
                waits.push(t.elapsed());
            }
            waits
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let mut conn = db.pool.pg().acquire().await.unwrap();
    let mut lines = Vec::new();
    let mut say = |l: &str| lines.push(l.to_string());
    adopt::apply(&mut conn, &mut say).await.unwrap();
    let took = t.elapsed();
    drop(conn);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let waits = tokio::time::timeout(Duration::from_secs(10), inserter)
        .await
        .unwrap()
        .unwrap();
    let worst = waits.iter().max().copied().unwrap_or_default();
    println!(
        "adopted {rows} rows in {took:?}; {} inserts meanwhile, the slowest {worst:?}",
        waits.len()
    );
    assert!(waits.len() > 10, "the app kept inserting");
    assert!(
        worst < Duration::from_millis(500),
        "an insert waited {worst:?} during the adoption"
    );
    let during: i64 =
        sqlx::query_scalar(r#"SELECT count(*) FROM "OutboundJob" WHERE id LIKE 'cduring%'"#)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(during as usize, waits.len());
    let row = sqlx::query(
        r#"SELECT count(*) FILTER (WHERE NOT indisvalid) FROM pg_index
                             WHERE indrelid = '"OutboundJob"'::regclass"#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(row.get::<i64, _>(0), 0, "every index valid");
}

/// Every move of a job works on the app's enum status and text ids: retry, fail, cancel, an
/// operator's retry, the rescue of an expired lease, paging, pruning.
#[tokio::test]
async fn every_state_change_works_on_an_apps_enum_status_and_text_ids() {
    use crate::support::handlers::Scripted;
    use outbound_runner::queue::JobError;
    use outbound_runner::queue::admin::{Actor, Filter};

    let (db, first) = app_db(IdKind::Cuid).await;
    adopt_now(&db).await;
    let second = prisma::app_insert(&db, IdKind::Cuid, "15550009005", None).await;
    let third = prisma::app_insert(&db, IdKind::Cuid, "15550009006", None).await;
    let handler = Scripted::new(vec![
        Err(JobError::retry("transient", "try again")),
        Err(JobError::fail("permanent", "never")),
    ]);
    let runner = spawn_passive(&db, handler, |_| {}).await;
    let report = runner.run_pass(3).await.unwrap();
    assert_eq!(
        (
            report.processed.len(),
            report.failed.len(),
            report.retried.len()
        ),
        (1, 1, 1),
        "{report:?}"
    );
    let retried = report.retried[0].clone();
    let failed = report.failed[0].clone();
    for id in [&first, &second, &third] {
        assert!(
            report
                .processed
                .iter()
                .chain(&report.failed)
                .chain(&report.retried)
                .any(|j| j.as_str() == id.as_str()),
            "{id} in {report:?}"
        );
    }
    let row = db.job(&retried).await;
    assert_eq!(
        (row.status.as_str(), row.last_error_code.as_deref()),
        ("queued", Some("transient"))
    );
    let actor = Actor {
        by: "test",
        dry_run: false,
    };
    // Cancel the queued one (a value the app's enum lacked before the adoption).
    let cancel = admin::cancel(
        &db.pool,
        &Filter {
            ids: vec![retried.clone()],
            ..Filter::default()
        },
        &actor,
    )
    .await
    .unwrap();
    assert_eq!(cancel.ids, vec![retried.clone()]);
    assert_eq!(db.job(&retried).await.status, "cancelled");
    // An operator's retry of the failed one, named by its cuid.
    let retry = admin::retry(
        &db.pool,
        &Filter {
            ids: vec![failed.clone()],
            ..Filter::default()
        },
        &actor,
        false,
        5,
    )
    .await
    .unwrap();
    assert_eq!(retry.ids, vec![failed.clone()]);
    // Another runner claimed it and died: its lease expired; the rescuer takes it back.
    sqlx::query(
        r#"UPDATE "OutboundJob" SET status = 'running', "lockedBy" = 'ghost', attempts = attempts + 1,
                  "leaseUntil" = now() - interval '1 minute'
           WHERE id = outbound_job_id($1)"#,
    )
    .bind(failed.as_str())
    .execute(&db.pool)
    .await
    .unwrap();
    let rescued = store::reclaim(&db.pool, store::Reclaim::Expired, true, 5)
        .await
        .unwrap();
    assert_eq!(rescued.requeued, 1);
    assert_eq!(db.job(&failed).await.status, "queued");
    // Pages of one job each, newest first, every job once.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = admin::list(
            &db.pool,
            &Filter {
                limit: Some(1),
                cursor,
                ..Filter::default()
            },
        )
        .await
        .unwrap();
        seen.extend(page.jobs.iter().map(|j| j.id.to_string()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    seen.sort();
    let mut all = vec![first.clone(), second.clone(), third.clone()];
    all.sort();
    assert_eq!(seen, all);
    // Retention: finished jobs older than it go, whatever the columns' types.
    sqlx::query(
        r#"UPDATE "OutboundJob" SET "completedAt" = "completedAt" - interval '8 days'
           WHERE status = 'done'"#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let pruned = store::prune(&db.pool, Duration::from_secs(7 * 86400), 100)
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    runner.shutdown().await;
}

/// An enum whose statuses are ours in upper case (`QUEUED`): the runner would never see the
/// app's jobs; refused, named.
#[tokio::test]
async fn an_upper_case_status_enum_is_refused() {
    let db = TestDb::empty().await;
    sqlx::raw_sql(
        r#"CREATE TYPE "JobStatus" AS ENUM ('QUEUED', 'RUNNING', 'DONE', 'FAILED');
           CREATE TABLE "OutboundJob" (
               "id" TEXT NOT NULL PRIMARY KEY,
               "status" "JobStatus" NOT NULL DEFAULT 'QUEUED',
               "payload" JSONB NOT NULL,
               "updatedAt" TIMESTAMP(3) NOT NULL
           )"#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let err = adopt::plan(db.pool.pg()).await.unwrap_err();
    assert!(err.to_string().contains("\"QUEUED\""), "{err}");
    assert_eq!(err.exit_code(), 78);
}

/// The schema objects of ours that a database holds: every index, constraint and trigger on our
/// tables, every column of them, and our functions — by name only (types differ on purpose:
/// an adopted table keeps the app's).
async fn our_objects(db: &TestDb) -> std::collections::BTreeSet<String> {
    let rows: Vec<String> = sqlx::query_scalar(
        r#"SELECT 'index ' || tablename || '.' || indexname FROM pg_indexes
            WHERE schemaname = 'public' AND tablename LIKE 'Outbound%'
           UNION ALL
           SELECT 'column ' || c.relname || '.' || a.attname
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
            WHERE c.relname LIKE 'Outbound%' AND c.relkind = 'r' AND a.attnum > 0
              AND NOT a.attisdropped
           UNION ALL
           SELECT 'constraint ' || c.relname || '.' || k.conname
             FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
            WHERE c.relname LIKE 'Outbound%'
           UNION ALL
           SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
           UNION ALL
           SELECT 'function ' || proname FROM pg_proc
            WHERE proname LIKE 'outbound_job%'
           UNION ALL
           SELECT 'migration ' || version FROM _sqlx_migrations WHERE success"#,
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// Adoption makes what the migrations make: the same indexes, columns, constraints, trigger,
/// functions and recorded migrations as a fresh `migrate` (the app's own extra columns and
/// indexes aside). A migration added without its counterpart in the adoption plan (or the
/// reverse) fails here.
#[tokio::test]
async fn adoption_makes_what_the_migrations_make() {
    let fresh = our_objects(&TestDb::new().await).await;
    for kind in IdKind::ALL {
        let (db, _) = app_db(kind).await;
        let before = our_objects_of_app(&db).await;
        adopt_now(&db).await;
        let adopted: std::collections::BTreeSet<String> = our_objects(&db)
            .await
            .difference(&before)
            .cloned()
            .collect();
        let missing: Vec<_> = fresh.difference(&adopted).collect();
        // What the app had already (its columns, its own primary key and indexes) may be
        // there under the same name before adoption: not missing.
        // Two differences are by design: the idempotency key is a unique index there (as
        // Prisma's `@unique` makes it), not a constraint; an enum status needs no CHECK.
        let by_design = [
            "constraint OutboundJob.OutboundJob_idempotencyKey_key",
            "constraint OutboundJob.OutboundJob_status_check",
        ];
        let missing: Vec<_> = missing
            .into_iter()
            .filter(|o| !before.contains(*o) && !by_design.contains(&o.as_str()))
            .collect();
        assert!(missing.is_empty(), "{kind:?}: adoption lacks {missing:?}");
        let extra: Vec<_> = adopted.difference(&fresh).collect();
        assert!(
            extra.is_empty(),
            "{kind:?}: adoption adds {extra:?} that migrations do not"
        );
    }
}

/// [`our_objects`] of a database before adoption (no `_sqlx_migrations` yet).
async fn our_objects_of_app(db: &TestDb) -> std::collections::BTreeSet<String> {
    sqlx::query("CREATE TABLE _sqlx_migrations (version bigint, success bool)")
        .execute(&db.pool)
        .await
        .unwrap();
    let objects = our_objects(db).await;
    sqlx::query("DROP TABLE _sqlx_migrations")
        .execute(&db.pool)
        .await
        .unwrap();
    objects
}

/// On our own table (the migration's `bigint` ids) too, the runner's id lists are a plain cast
/// the planner inlines.
#[tokio::test]
async fn the_runners_id_lists_are_inlined_on_our_own_table() {
    let db = TestDb::new().await;
    let verbose: Vec<String> = sqlx::query_scalar(
        r#"EXPLAIN VERBOSE SELECT outbound_job_ids_cast(ARRAY[id::text]) FROM "OutboundJob""#,
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let verbose = verbose.join("\n");
    assert!(!verbose.contains("outbound_job_ids_cast"), "{verbose}");
    assert!(verbose.contains("bigint[]"), "{verbose}");
    assert_eq!(ids_cast_volatility(&db).await, "s");
}

/// `outbound_job_ids_cast` is STABLE: an IMMUTABLE SQL function of a bound value is called by
/// the planner (its query set up each time) instead of inlined.
async fn ids_cast_volatility(db: &TestDb) -> String {
    sqlx::query_scalar(
        "SELECT provolatile::text FROM pg_proc WHERE oid = 'outbound_job_ids_cast(text[])'::regprocedure",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}
