//! The database connection: the pool, migrations, and where the URL comes from; the adoption
//! of the app's own `"OutboundJob"` ([`adopt`]) and the schema as Prisma sees it ([`prisma`],
//! [`prisma_migration`]).
//!
//! All SQL that moves jobs lives in `crate::queue`; this module connects and shapes the schema. Every
//! statement goes through a [`Pool`], which is pooler-safe when `database.url` goes through a
//! transaction-mode pooler ([`pooler`], docs/operations.md "Poolers").

pub mod adopt;
pub mod batch;
pub mod embedded;
pub mod pooler;
pub mod prisma;
pub mod prisma_migration;
pub mod retry;
pub mod wait;
pub mod warm;

pub use pooler::Pool;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::{PoolerMode, Settings};

/// The migrations in `migrations/`, compiled in.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connection options for `url` (Prisma's parameters removed: [`pooler::clean_url`]), tagged so
/// `pg_stat_activity` shows who we are.
pub fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    let clean = pooler::clean_url(url)
        .map_err(|reason| anyhow::anyhow!("database URL is not usable: {reason}"))?;
    let opts = PgConnectOptions::from_str(&clean.url)
        .map_err(|e| anyhow::anyhow!("database URL is not usable: {}", redact_sqlx(&e)))?;
    Ok(opts.application_name("outbound-runner"))
}

/// Whether `url` (database.url) goes through a transaction-mode pooler: `database.pooler`, or
/// with `auto`, Prisma's `pgbouncer=true` in the URL.
pub fn pooler_mode(settings: &Settings, url: &str) -> bool {
    match settings.database.pooler {
        PoolerMode::Transaction => true,
        PoolerMode::None => false,
        PoolerMode::Auto => pooler::clean_url(url).is_ok_and(|c| c.pgbouncer),
    }
}

/// The pool for `url` (database.url), in pooler mode when [`pooler_mode`] says so. Says once in
/// the log which URL parameters it ignored (their names, never their values).
pub fn open(settings: &Settings, url: &str) -> anyhow::Result<Pool> {
    if let Ok(clean) = pooler::clean_url(url) {
        if !clean.removed.is_empty() {
            tracing::info!(
                parameters = ?clean.removed,
                "database.url: ignoring parameters meant for Prisma"
            );
        }
    }
    let pooled = pooler_mode(settings, url);
    Ok(pool(settings, connect_options(url)?, pooled))
}

/// `database.direct_url` (or its old name `listen_url`) as connection options, if set.
pub fn direct_options(settings: &Settings) -> anyhow::Result<Option<PgConnectOptions>> {
    settings
        .direct_url()
        .map(|u| connect_options(u.expose_secret()))
        .transpose()
        .map_err(|e| anyhow::anyhow!("database.direct_url: {e:#}"))
}

/// The pool: the connection budget less the LISTEN connection ([`Settings::pool_size`]).
/// Connects lazily: the daemon's start-up loop decides how long to
/// wait for the database, not the pool. `pooled`: through a transaction-mode pooler.
pub fn pool(settings: &Settings, opts: PgConnectOptions, pooled: bool) -> Pool {
    let opts = if pooled {
        pooler::pooler_options(opts)
    } else {
        // Room for one claim statement per claim size (see `queue::store::claim`) beside the
        // rest, so no prepared statement is evicted and re-planned in a steady drain.
        let claim_sizes = settings.runner.batch as usize;
        pooler::generic_plan_options(opts.statement_cache_capacity(100 + claim_sizes))
    };
    let inner = PgPoolOptions::new()
        // No ping before every statement (a round trip each, as many as the statements
        // themselves): a connection that died is found by the statement that uses it, and every
        // caller already retries or settles a failed statement.
        .test_before_acquire(false)
        .max_connections(settings.pool_size())
        .min_connections(0)
        .acquire_timeout(settings.database.connect_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(opts);
    Pool::new(inner, pooled)
}

/// The configured URL, or `None` for the embedded server.
pub fn configured_url(settings: &Settings) -> Option<String> {
    settings
        .database
        .url
        .as_ref()
        .map(|s| s.expose_secret().to_string())
}

/// Why the database cannot be used as it is (exit 78: running again will not help).
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// `"OutboundJob"` exists and our migrations did not make it: `adopt` first.
    #[error("{}", adopt::NOT_ADOPTED)]
    NotAdopted,
    /// `database.migrate = false` and the schema lacks what the runner needs.
    #[error(
        "database.migrate is off and the database lacks what the runner needs (nothing was \
         changed):\n  {}\nrun `outbound-runner migrate` (or, for the app's own \"OutboundJob\", \
         `outbound-runner adopt --dry-run`), or apply the same DDL with your own migrations \
         (`outbound-runner prisma migration DIR` writes it for Prisma, docs/prisma.md)",
        .0.join("\n  ")
    )]
    Missing(Vec<String>),
    /// The session's time zone is not UTC: `timestamp` columns (Prisma's) would be misread.
    #[error(
        "the database session's TimeZone is {0:?}, not UTC (the connection asks for UTC; a \
         pooler or the server overrides it): timestamps without time zone, as Prisma makes them, \
         would be read and written wrongly"
    )]
    TimeZone(String),
}

/// The exit code of an error that may be a [`SchemaError`] or an adoption's: 78 for those,
/// `otherwise` for the rest.
pub fn exit_code_of(e: &anyhow::Error, otherwise: u8) -> u8 {
    if e.downcast_ref::<SchemaError>().is_some() {
        crate::exit::CONFIG
    } else if let Some(a) = e.downcast_ref::<adopt::AdoptError>() {
        a.exit_code()
    } else {
        otherwise
    }
}

/// Refuses (changing nothing) when `"OutboundJob"` exists and our migrations did not make it.
/// Runs before sqlx's migrator, which would create `_sqlx_migrations` first.
async fn refuse_foreign(conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    if adopt::ownership(conn).await? == adopt::Ownership::Foreign {
        return Err(SchemaError::NotAdopted.into());
    }
    Ok(())
}

/// Checks that our sessions run in UTC: every comparison with `now()` and every value written
/// into a `timestamp` column (Prisma's `DateTime`, UTC without a zone) depends on it. sqlx asks
/// for `TimeZone=UTC` when it connects; a server or pooler that overrides it is refused.
pub async fn check_timezone(pool: &Pool) -> anyhow::Result<()> {
    let tz: String = sqlx::query_scalar("SELECT current_setting('TimeZone')")
        .fetch_one(pool)
        .await
        .context("reading the session's TimeZone")?;
    if tz != "UTC" && tz != "Etc/UTC" {
        return Err(SchemaError::TimeZone(tz).into());
    }
    Ok(())
}

/// Applies pending migrations. Safe to run from several processes at once (sqlx takes an
/// advisory lock). Refuses an `"OutboundJob"` our migrations did not make ([`SchemaError`]).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    {
        let mut conn = pool
            .acquire()
            .await
            .context("applying database migrations")?;
        refuse_foreign(&mut conn).await?;
    }
    MIGRATOR
        .run(pool)
        .await
        .context("applying database migrations")?;
    let mut conn = pool.acquire().await.context("building indexes")?;
    // On a task of its own: the build owns its connection and borrows nothing of the caller's.
    tokio::spawn(async move { adopt::build_indexes(&mut conn, &mut adopt::LogProgress).await })
        .await
        .context("building the indexes of \"OutboundJob\" (concurrently)")?
        .context("building the indexes of \"OutboundJob\" (concurrently)")?;
    Ok(())
}

/// With `database.migrate = false`: checks that the schema the runner needs is there (every
/// migration recorded, or, when another tool applied the DDL, nothing missing by the adoption
/// planner's measure).
pub async fn check_schema(pool: &Pool) -> anyhow::Result<()> {
    if migrations_current(pool).await? {
        return Ok(());
    }
    match adopt::plan(pool.pg()).await {
        Ok(plan) => {
            let missing: Vec<String> = plan.schema_steps().map(|s| s.what.clone()).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(SchemaError::Missing(missing).into())
            }
        }
        Err(adopt::AdoptError::NoTable) => {
            Err(SchemaError::Missing(vec!["table \"OutboundJob\"".into()]).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Applies pending migrations for the runner's pool. Direct: [`migrate`]. Behind a
/// transaction-mode pooler the advisory lock needs a session: over `database.direct_url` when it
/// is set; without it, through the pooler inside one transaction (the pooler then keeps one
/// server connection for the whole run, so the lock and every statement stay on it; nothing is
/// left behind on that server).
pub async fn migrate_with(settings: &Settings, pool: &Pool) -> anyhow::Result<()> {
    if !pool.pooled() {
        return migrate(pool.pg()).await;
    }
    if let Some(direct) = direct_options(settings)? {
        let direct = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(settings.database.connect_timeout)
            .connect_lazy_with(direct);
        let result = migrate(&direct).await.context("over database.direct_url");
        direct.close().await;
        return result;
    }
    let mut conn = pool
        .pg()
        .acquire()
        .await
        .context("applying database migrations")?;
    let run = async {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        refuse_foreign(&mut tx).await?;
        MIGRATOR.run(&mut *tx).await?;
        adopt::build_indexes_in_transaction(&mut tx).await?;
        // The migrator's statements were prepared by name on this server connection.
        sqlx::raw_sql("DEALLOCATE ALL").execute(&mut *tx).await?;
        tx.commit().await?;
        anyhow::Ok(())
    };
    let result = run.await;
    // Its statement cache names statements that are gone: never reuse this connection.
    let _ = sqlx::Connection::close(conn.detach()).await;
    result.context("applying database migrations through the pooler, in one transaction")
}

/// True when every compiled-in migration has been applied.
pub async fn migrations_current(pool: &Pool) -> anyhow::Result<bool> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    Ok(MIGRATOR.iter().all(|m| applied.contains(&m.version)))
}

/// Every claim and completion leaves a dead row version behind; only VACUUM reclaims them. A
/// server (or a table) with autovacuum off lets them pile up until claims slow down: say so at
/// start-up, once. (Nothing is said when the check itself fails: it is advice, not a gate.)
pub async fn warn_if_not_vacuumed(pool: &Pool) {
    let off: Result<bool, _> = sqlx::query_scalar(
        r#"SELECT NOT current_setting('autovacuum')::bool
               OR COALESCE((SELECT 'autovacuum_enabled=false' = ANY(reloptions)
                            FROM pg_class WHERE oid = '"OutboundJob"'::regclass), false)"#,
    )
    .fetch_one(pool)
    .await;
    if let Ok(true) = off {
        tracing::warn!(
            "autovacuum is off for \"OutboundJob\": nothing removes the dead rows every claim and \
             completion leaves, and claims slow down as they pile up; turn autovacuum on or \
             VACUUM the table on a schedule (docs/operations.md, \"Vacuum\")"
        );
    }
}

/// sqlx errors can quote the connection string; never let one reach a log.
pub fn redact_sqlx(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    match (text.find("://"), text.find('@')) {
        (Some(a), Some(b)) if b > a => format!("{}://***{}", &text[..a], &text[b..]),
        _ => text,
    }
}
