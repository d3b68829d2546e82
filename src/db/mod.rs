//! The database connection: the pool, migrations, and where the URL comes from.
//!
//! All SQL that moves jobs lives in [`crate::queue::store`]; this module only connects.

pub mod embedded;

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

/// A pool sized for the workers. Connects lazily: the daemon's start-up loop decides how long to
/// wait for the database, not the pool.
pub fn pool(settings: &Settings, opts: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
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

/// sqlx errors can quote the connection string; never let one reach a log.
pub fn redact_sqlx(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    match (text.find("://"), text.find('@')) {
        (Some(a), Some(b)) if b > a => format!("{}://***{}", &text[..a], &text[b..]),
        _ => text,
    }
}
