//! The database connection: the pool, migrations, and where the URL comes from.
//!
//! All SQL that moves jobs lives in [`crate::queue::store`]; this module only connects.

pub mod embedded;
pub mod wait;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::Settings;

/// The migrations in `migrations/`, compiled in.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connection options for `url`, tagged so `pg_stat_activity` shows who we are.
pub fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    let opts = PgConnectOptions::from_str(url)
        .map_err(|e| anyhow::anyhow!("database.url is not usable: {}", redact_sqlx(&e)))?;
    Ok(opts.application_name("outbound-runner"))
}

/// The pool: the connection budget less the LISTEN connection ([`Settings::pool_size`]). Connects lazily: the daemon's start-up loop decides how long to
/// wait for the database, not the pool.
pub fn pool(settings: &Settings, opts: PgConnectOptions) -> PgPool {
    // Room for one claim statement per claim size (see `queue::store::claim`) beside the rest,
    // so no prepared statement is evicted and re-planned in a steady drain.
    let claim_sizes = settings.runner.batch as usize;
    let opts = opts.statement_cache_capacity(100 + claim_sizes);
    PgPoolOptions::new()
        // No ping before every statement (a round trip each, as many as the statements
        // themselves): a connection that died is found by the statement that uses it, and every
        // caller already retries or settles a failed statement.
        .test_before_acquire(false)
        .max_connections(settings.pool_size())
        .min_connections(0)
        .acquire_timeout(settings.database.connect_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(opts)
}

/// The configured URL, or `None` for the embedded server.
pub fn configured_url(settings: &Settings) -> Option<String> {
    settings
        .database
        .url
        .as_ref()
        .map(|s| s.expose_secret().to_string())
}

/// Applies pending migrations. Safe to run from several processes at once (sqlx takes an
/// advisory lock).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("applying database migrations")
}

/// True when every compiled-in migration has been applied.
pub async fn migrations_current(pool: &PgPool) -> anyhow::Result<bool> {
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
pub async fn warn_if_not_vacuumed(pool: &PgPool) {
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
