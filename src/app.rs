//! The daemon: start-up in order, the signal loop, reload, and shutdown.
//!
//! Start-up: database (configured, or the embedded server) → wait until it answers → migrations
//! → LISTEN and the runner → READY=1. SIGTERM/SIGINT drain (a second one exits at once); SIGHUP
//! reloads the configuration, keeping the old one on any error.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::{self, LoadOptions, Settings};
use crate::db::{self, embedded::EmbeddedPostgres};
use crate::delivery::{JobHandler, live::LiveHandler, sandbox::SandboxHandler};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::runner::Runner;
use crate::telemetry::LogHandle;
use crate::{exit, http, systemd};

/// Why the daemon stopped before it could run.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Embedded(#[from] db::embedded::EmbeddedError),
    #[error(transparent)]
    Bind(#[from] http::BindError),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl StartError {
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => exit::CONFIG,
            StartError::Embedded(_) => exit::UNAVAILABLE,
            StartError::Bind(e) => e.exit_code(),
            // A schema we cannot use (an un-adopted table, a missing column): 78.
            StartError::Other(e) => db::exit_code_of(e, exit::SOFTWARE),
        }
    }
}

/// The state directory of the embedded server.
pub fn state_dir(settings: &Settings, opts: &LoadOptions) -> PathBuf {
    settings
        .database
        .embedded_dir
        .clone()
        .unwrap_or_else(|| EmbeddedPostgres::default_state_dir(&opts.env))
}

/// The handler for `delivery.mode`.
pub fn handler_for(settings: &Settings) -> Result<Arc<dyn JobHandler>, StartError> {
    match settings.delivery.mode {
        config::DeliveryMode::Sandbox => Ok(Arc::new(SandboxHandler)),
        config::DeliveryMode::Live => Ok(Arc::new(
            LiveHandler::new(settings).context("building the HTTP client for live delivery")?,
        )),
    }
}

/// Runs the daemon until SIGTERM/SIGINT and a drain. Returns the exit code.
pub async fn run(opts: LoadOptions, settings: Settings, log: LogHandle) -> Result<u8, StartError> {
    if let Some(warning) = config::readable_secrets_warning(&opts, &settings) {
        tracing::warn!("{warning}");
    }
    let stop = CancellationToken::new();
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    spawn_stop_signals(stop.clone())?;

    // The database: configured, or the embedded server.
    let mut embedded = None;
    let url = match db::configured_url(&settings) {
        Some(url) => url,
        None => {
            let dir = state_dir(&settings, &opts);
            tracing::warn!(
                state_dir = %dir.display(),
                "no database configured (DATABASE_URL): starting the embedded PostgreSQL for development"
            );
            systemd::extend_timeout(Duration::from_secs(90));
            let pg = EmbeddedPostgres::start(&dir).await?;
            tracing::info!(
                url = %pg.url(),
                "embedded PostgreSQL is up; other programs can connect with this URL"
            );
            let url = pg.url();
            embedded = Some(pg);
            url
        }
    };
    let result = serve(&opts, settings, log, &url, &stop, &mut hup).await;
    if let Some(mut pg) = embedded {
        // Its fast shutdown is quick, but it may take up to 30 s.
        systemd::extend_timeout(Duration::from_secs(35));
        pg.stop().await;
    }
    result
}

async fn serve(
    opts: &LoadOptions,
    settings: Settings,
    log: LogHandle,
    url: &str,
    stop: &CancellationToken,
    hup: &mut tokio::signal::unix::Signal,
) -> Result<u8, StartError> {
    // Bind first: a taken port stops start-up at once, not after the database wait.
    let listeners = http::bind(&settings).await?;
    let pool = db::open(&settings, url)?;
    let listen_options = db::direct_options(&settings)?;
    if pool.pooled() {
        pooler_notice(&settings, listen_options.is_some());
    }
    if !wait_for_database(&pool, stop).await {
        return Ok(exit::OK);
    }
    db::check_timezone(&pool).await?;
    if settings.database.migrate {
        systemd::extend_timeout(Duration::from_secs(120));
        db::migrate_with(&settings, &pool).await?;
    } else {
        db::check_schema(&pool).await?;
    }
    db::warn_if_not_vacuumed(&pool).await;
    warn_of_foreign_running(&pool, &settings).await;
    let pool = db::wait::fit_budget(pool, &settings).await;

    let handler = handler_for(&settings)?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    health.set_db_ok(true);
    let settings = Arc::new(settings);
    let runner = Runner::builder(pool.clone(), settings.clone(), handler)
        .listen(listen_options)
        .metrics(metrics.clone())
        .health(health.clone())
        .start()
        .await;

    let http_stop = CancellationToken::new();
    let http = http::spawn(listeners, http::HttpState::new(runner.clone()), http_stop);

    let aux = CancellationToken::new();
    if let Some(every) = systemd::watchdog_interval() {
        let max_age = (settings.runner.heartbeat * 5).max(every);
        tokio::spawn(systemd::watchdog(
            health.clone(),
            every,
            max_age,
            aux.clone(),
        ));
    }
    let board = Arc::new(systemd::StatusBoard::new(health.clone(), metrics.clone()));
    tokio::spawn(systemd::status_loop(
        board.clone(),
        runner.finished(),
        aux.clone(),
    ));
    systemd::ready(&board.line());
    tracing::info!("ready");

    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = hup.recv() => reload(opts, &settings, &runner, &log, &board),
        }
    }

    // STOPPING=1 went out with the signal. The drain may outlast TimeoutStopSec only while jobs
    // are in flight: ask for more time then, and only then.
    health.set_draining();
    let drain = settings.runner.drain_timeout;
    // Triggers waiting for a pass get their answer once the drain ends those passes.
    let http = tokio::spawn(http.finish(drain + Duration::from_secs(5)));
    let counter = runner.clone();
    let keepalive = tokio::spawn(systemd::drain_keepalive(
        runner.settings().runner.drain_timeout,
        move || counter.in_flight(),
    ));
    runner.shutdown().await;
    keepalive.abort();
    let _ = http.await;
    aux.cancel();
    pool.close().await;
    tracing::info!("stopped");
    Ok(exit::OK)
}

/// Says at start how many `running` jobs carry no lease of ours: the app's own runner (the
/// guide's `/api/jobs/run-outbound`) may still be working them. They are left alone for
/// `runner.foreign_running_grace` after their last update (docs/prisma.md, "The switch").
async fn warn_of_foreign_running(pool: &db::Pool, settings: &Settings) {
    let grace = settings.runner.foreign_running_grace;
    match crate::queue::store::foreign_running(pool, grace).await {
        Ok(f) if f.recent > 0 => tracing::warn!(
            running = f.total,
            recently_updated = f.recent,
            grace = %humantime::format_duration(grace),
            "jobs are running without a lease of ours, some updated within \
             runner.foreign_running_grace: the app's own runner (its cron calling \
             /api/jobs/run-outbound) is probably still working them. Turn the app's cron off \
             first (docs/prisma.md, \"The switch\"); they are rescued only once not updated \
             for the grace"
        ),
        Ok(f) if f.total > 0 => tracing::info!(
            running = f.total,
            "jobs are running without a lease of ours, none updated within \
             runner.foreign_running_grace: the rescuer takes them back"
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(error = %db::redact_sqlx(&e), "counting foreign running jobs failed")
        }
    }
}

/// Says at start what pooler mode does, and what is missing without a direct URL.
fn pooler_notice(settings: &Settings, direct: bool) {
    if direct {
        tracing::info!(
            "database.url goes through a transaction-mode pooler: statements run unprepared, one \
             transaction each; LISTEN and migrations use database.direct_url"
        );
    } else {
        tracing::warn!(
            poll_every = ?settings.runner.pooler_poll_interval.min(settings.runner.poll_interval),
            "database.url goes through a transaction-mode pooler and database.direct_url is not \
             set: no LISTEN (new jobs are found by polling every runner.pooler_poll_interval) and \
             migrations run through the pooler in one transaction; set database.direct_url \
             (env DIRECT_URL) to a direct connection for instant wake-ups (docs/operations.md, \
             \"Poolers\")"
        );
    }
}

/// SIGHUP: re-read the configuration; apply what can change live, keep the old one on error.
/// `started` is the configuration the process started with: what a restart-only key still is.
fn reload(
    opts: &LoadOptions,
    started: &Settings,
    runner: &Runner,
    log: &LogHandle,
    board: &systemd::StatusBoard,
) {
    systemd::reloading();
    let mut opts = opts.clone();
    opts.env = std::env::vars().collect();
    let outcome = match config::load(&opts) {
        Ok(new) => {
            let restart = needs_restart(started, &new);
            if let Err(e) = log.set_level(&new.log.level) {
                tracing::warn!(error = %e, "log.level not applied");
            }
            runner.apply(Arc::new(new));
            if restart.is_empty() {
                tracing::info!("configuration reloaded");
                board.set_note(None);
                "reloaded".to_string()
            } else {
                tracing::warn!(keys = ?restart, "configuration reloaded; these keys need a restart to take effect");
                let note = format!("restart needed for {}", restart.join(", "));
                board.set_note(Some(note.clone()));
                format!("reloaded; {note}")
            }
        }
        Err(e) => {
            tracing::error!("reload refused, keeping the running configuration: {e}");
            board.set_note(Some(
                "last reload failed: running on the previous configuration".into(),
            ));
            let first = e
                .problems
                .first()
                .map(|p| format!(": {}: {}", p.key, p.reason))
                .unwrap_or_default();
            let more = match e.problems.len() {
                0 | 1 => String::new(),
                n => format!(" (+{} more, see the log)", n - 1),
            };
            format!("reload failed, running on the previous configuration{first}{more}")
        }
    };
    systemd::ready(&outcome);
}

/// Keys whose new value only a restart applies: those the key table marks `Restart` whose value
/// changed (src/config/keys.rs).
pub fn needs_restart(old: &Settings, new: &Settings) -> Vec<&'static str> {
    config::keys::restart_needed(old, new)
}

/// The first SIGTERM/SIGINT starts the drain; a second one exits at once.
fn spawn_stop_signals(stop: CancellationToken) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("stop requested: draining (send the signal again to exit at once)");
        systemd::stopping();
        stop.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!(
            "outbound-runner: second stop signal, exiting now; unfinished claims are rescued when their leases expire"
        );
        std::process::exit(exit::INTERRUPTED as i32);
    });
    Ok(())
}

/// Waits until the database answers, retrying with backoff. Returns false if stopped first.
/// A database that is down at start is not a crash: the unit stays "activating" and retries.
async fn wait_for_database(pool: &db::Pool, stop: &CancellationToken) -> bool {
    let mut delay = Duration::from_millis(250);
    let mut logged = false;
    loop {
        match sqlx::query("SELECT 1").execute(pool).await {
            Ok(_) => {
                if logged {
                    tracing::info!("database reachable");
                }
                return true;
            }
            Err(e) => {
                if !logged || delay >= Duration::from_secs(30) {
                    tracing::warn!(error = %db::redact_sqlx(&e), retry_in = ?delay, "database unreachable; waiting for it");
                    logged = true;
                }
                systemd::status("waiting for the database");
                systemd::extend_timeout(delay + Duration::from_secs(10));
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::keys::tests::{defaults, with_changed};
    use crate::config::keys::{Apply, KEYS};

    /// A SIGHUP that changes one key reports a restart exactly for the keys src/config/keys.rs
    /// marks `Restart` (a `*_file` is reported through the secret it fills).
    #[test]
    fn needs_restart_follows_the_key_table() {
        let started = defaults();
        for key in KEYS {
            let named = needs_restart(&started, &with_changed(key.name));
            let restart = key.apply == Apply::Restart && !key.name.ends_with("_file");
            assert_eq!(named.contains(&key.name), restart, "changing {}", key.name);
            assert!(named.len() <= 1, "changing {} names {named:?}", key.name);
        }
    }
}
