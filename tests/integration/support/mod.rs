//! Test helpers: a fresh database per test, runners with test settings, scripted handlers.

pub mod app;
pub mod handlers;
pub mod mock_meta;
pub mod mock_orchestrator;
pub mod pgbouncer;
pub mod prisma;
pub mod proxy;
pub mod sql;
pub mod window;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use outbound_runner::config::{self, LoadOptions, Settings};
use outbound_runner::delivery::JobHandler;
use outbound_runner::health::Health;
use outbound_runner::metrics::Metrics;
use outbound_runner::runner::{Mode, Runner, Start};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Executor};

pub use sql::admin_url;

/// A database of its own, migrated, dropped when the test ends.
pub struct TestDb {
    /// A direct pool (`pool.pg()` is sqlx's, for a connection or transaction of the test's own).
    pub pool: outbound_runner::db::Pool,
    pub url: String,
    pub name: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let db = TestDb::empty().await;
        outbound_runner::db::migrate(db.pool.pg())
            .await
            .expect("migrations apply");
        db
    }

    /// A database of its own without the schema.
    pub async fn empty() -> TestDb {
        let admin: PgConnectOptions = admin_url().parse().expect("TEST_DATABASE_URL parses");
        let name = format!("or_test_{:016x}", rand::random::<u64>());
        let mut conn = admin
            .connect()
            .await
            .expect("connecting to the test PostgreSQL (is it running? see README)");
        conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .expect("creating the test database");
        let opts = admin.clone().database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .connect_with(opts)
            .await
            .expect("connecting to the test database");
        let mut url = url::Url::parse(&admin_url()).unwrap();
        url.set_path(&name);
        TestDb {
            pool: pool.into(),
            url: url.to_string(),
            name,
        }
    }

    pub fn connect_options(&self) -> PgConnectOptions {
        self.url.parse().unwrap()
    }

    /// Inserts `n` valid sandbox text jobs in one statement; returns their ids.
    pub async fn insert_jobs(&self, n: usize) -> Vec<i64> {
        sqlx::query_scalar(
            r#"INSERT INTO "OutboundJob" (payload, "requestId")
               SELECT jsonb_build_object('to', '1555000' || lpad(g::text, 4, '0'),
                      'message', jsonb_build_object('type', 'text',
                          'text', jsonb_build_object('body', 'hello ' || g))),
                      'req-' || g
               FROM generate_series(1, $1) g
               RETURNING id"#,
        )
        .bind(n as i32)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    pub async fn insert_payload(&self, payload: &str) -> i64 {
        sqlx::query_scalar(r#"INSERT INTO "OutboundJob" (payload) VALUES ($1::jsonb) RETURNING id"#)
            .bind(payload)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// A job by its id, whatever the id's type (bound as text, converted by the database).
    pub async fn job(&self, id: impl std::fmt::Display) -> JobRow {
        sqlx::query_as(
            r#"SELECT status::text AS status, attempts, "lastError", "lastErrorCode", "lockedBy",
                      EXTRACT(EPOCH FROM "runAt" - now())::float8 AS due_in,
                      "completedAt" IS NOT NULL AS completed
               FROM "OutboundJob" WHERE id = outbound_job_id($1)"#,
        )
        .bind(id.to_string())
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// `VACUUM ANALYZE "OutboundJob"`: statistics of the table as it is now, as autovacuum
    /// would have gathered them.
    pub async fn vacuum_jobs(&self) {
        sqlx::raw_sql(r#"VACUUM ANALYZE "OutboundJob""#)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    pub async fn count(&self, status: &str) -> i64 {
        sqlx::query_scalar(r#"SELECT count(*) FROM "OutboundJob" WHERE status::text = $1"#)
            .bind(status)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Expires running job `id`'s lease (see [`sql::expire_lease`]).
    pub async fn expire_lease(&self, id: impl std::fmt::Display) {
        sql::expire_lease(&self.pool, id).await;
    }

    /// Makes every queued job due now (skips backoff waits without sleeping).
    pub async fn make_due(&self) {
        sqlx::query(r#"UPDATE "OutboundJob" SET "runAt" = now() WHERE status = 'queued'"#)
            .execute(&self.pool)
            .await
            .unwrap();
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct JobRow {
    pub status: String,
    pub attempts: i32,
    #[sqlx(rename = "lastError")]
    pub last_error: Option<String>,
    #[sqlx(rename = "lastErrorCode")]
    pub last_error_code: Option<String>,
    #[sqlx(rename = "lockedBy")]
    pub locked_by: Option<String>,
    pub due_in: f64,
    pub completed: bool,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop on a thread of its own: Drop cannot await, and the test's runtime may be gone.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let admin: PgConnectOptions = admin_url().parse().unwrap();
                if let Ok(mut conn) = admin.connect().await {
                    let _ = conn
                        .execute(
                            format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str(),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

/// The built-in defaults, no file, no environment: what each test starts from.
pub fn test_settings() -> Settings {
    let mut s = config::load(&LoadOptions {
        config_path: None,
        skip_default_path: true,
        env: HashMap::new(),
    })
    .expect("defaults load");
    s.runner.workers = 4;
    s.runner.drain_timeout = Duration::from_secs(10);
    s.http.listen = String::new();
    s
}

/// A runner on `db` with `handler`, after `tweak` adjusted the settings.
pub async fn spawn_runner(
    db: &TestDb,
    handler: Arc<dyn JobHandler>,
    tweak: impl FnOnce(&mut Settings),
) -> Runner {
    start(db.connect_options(), None, handler, tweak, Mode::Daemon).await
}

/// A daemon-mode runner that reaches the database at `url` and, if given, LISTENs at
/// `listen_url` (e.g. through a [`proxy::Proxy`]).
pub async fn spawn_runner_at(
    url: &str,
    listen_url: Option<&str>,
    handler: Arc<dyn JobHandler>,
    tweak: impl FnOnce(&mut Settings),
) -> Runner {
    let listen = listen_url.map(|u| u.parse().unwrap());
    start(url.parse().unwrap(), listen, handler, tweak, Mode::Daemon).await
}

/// A runner as the daemon builds it from `url` (`db::open`: pooler mode when the URL says
/// `pgbouncer=true`), LISTENing at `direct_url` when given.
pub async fn spawn_runner_via(
    url: &str,
    direct_url: Option<&str>,
    handler: Arc<dyn JobHandler>,
    tweak: impl FnOnce(&mut Settings),
    mode: Mode,
) -> Runner {
    let mut settings = test_settings();
    tweak(&mut settings);
    let pool = outbound_runner::db::open(&settings, url).unwrap();
    let listen = direct_url.map(|u| outbound_runner::db::connect_options(u).unwrap());
    start_on(pool, listen, settings, handler, mode).await
}

/// A runner without a dispatcher: jobs run only when the test calls `run_pass`.
pub async fn spawn_passive(
    db: &TestDb,
    handler: Arc<dyn JobHandler>,
    tweak: impl FnOnce(&mut Settings),
) -> Runner {
    start(db.connect_options(), None, handler, tweak, Mode::Passive).await
}

async fn start(
    options: PgConnectOptions,
    listen: Option<PgConnectOptions>,
    handler: Arc<dyn JobHandler>,
    tweak: impl FnOnce(&mut Settings),
    mode: Mode,
) -> Runner {
    let mut settings = test_settings();
    tweak(&mut settings);
    // Planned as the daemon's connections are (`db::pool`).
    let pool = PgPoolOptions::new()
        .max_connections(settings.pool_size())
        .connect_with(outbound_runner::db::pooler::generic_plan_options(options))
        .await
        .unwrap();
    start_on(pool, listen, settings, handler, mode).await
}

/// A runner on `pool` with fresh metrics and health (see [`started`]).
async fn start_on(
    pool: impl Into<outbound_runner::db::Pool>,
    listen: Option<PgConnectOptions>,
    settings: Settings,
    handler: Arc<dyn JobHandler>,
    mode: Mode,
) -> Runner {
    started(
        Runner::builder(pool, Arc::new(settings), handler)
            .listen(listen)
            .mode(mode),
    )
    .await
}

/// The metrics and health the harness gave each runner it started, by `locked_by` (unique per
/// runner): the runner reports to them and hands neither out, so a test reads them here.
static GIVEN: LazyLock<Mutex<HashMap<String, Given>>> = LazyLock::new(Default::default);

type Given = (Arc<Metrics>, Arc<Health>);

/// Starts `start` reporting to fresh metrics and health, kept for [`metrics_of`] and
/// [`health_of`].
pub async fn started(start: Start) -> Runner {
    let (metrics, health) = (Arc::new(Metrics::new()), Arc::new(Health::default()));
    let runner = start
        .metrics(metrics.clone())
        .health(health.clone())
        .start()
        .await;
    GIVEN
        .lock()
        .unwrap()
        .insert(runner.locked_by().to_string(), (metrics, health));
    runner
}

fn given(runner: &Runner) -> Given {
    GIVEN
        .lock()
        .unwrap()
        .get(runner.locked_by())
        .cloned()
        .expect("a runner started through support::started")
}

/// The metrics `runner` reports to (it was started through [`started`]).
pub fn metrics_of(runner: &Runner) -> Arc<Metrics> {
    given(runner).0
}

/// The health `runner` reports to (it was started through [`started`]): its supervised tasks,
/// for the tests that kill them.
pub fn health_of(runner: &Runner) -> Arc<Health> {
    given(runner).1
}

/// Awaits a watch counter reaching `n`, bounded.
pub async fn wait_count(rx: &mut tokio::sync::watch::Receiver<u64>, n: u64, within: Duration) {
    tokio::time::timeout(within, rx.wait_for(|v| *v >= n))
        .await
        .unwrap_or_else(|_| panic!("counter did not reach {n} within {within:?}"))
        .unwrap();
}
