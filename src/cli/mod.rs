//! The command line: `run` (the daemon, default), `migrate`, `enqueue`, `status`, `jobs`,
//! `numbers`, `verify`, `check-config`.

pub mod in_flight;
pub mod jobs;
pub mod numbers;
pub mod status;
pub mod verify;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{self, LoadOptions, Settings};
use crate::db::{self, embedded::EmbeddedPostgres};
use crate::delivery::payload::Payload;
use crate::exit;
use crate::queue::store::{self, NewJob};

#[derive(Debug, Parser)]
#[command(
    name = "outbound-runner",
    version,
    about = "Delivers outbound WhatsApp messages from a PostgreSQL job queue, once."
)]
pub struct Cli {
    /// Configuration file (default: /etc/outbound-runner/config.toml if it exists).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Run,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Insert jobs: one from flags, or JSON lines from stdin.
    Enqueue(EnqueueArgs),
    /// The queue at a glance: the user's job-runner guide's monitoring queries (docs/operations.md "Monitor"), with checks (exit 1 if one fails).
    Status(status::StatusArgs),
    /// Find, inspect, retry, cancel and settle jobs (list|show|retry|cancel|settle).
    Jobs(jobs::JobsArgs),
    /// The sending numbers: state, rate, today's sends; pause and resume one on every runner.
    Numbers(numbers::NumbersArgs),
    /// Check a running runner over HTTP: both trigger endpoints, auth, readiness, metrics.
    Verify(verify::VerifyArgs),
    /// Load and validate the configuration; print the effective values, secrets masked.
    CheckConfig,
}

#[derive(Debug, clap::Args)]
pub struct EnqueueArgs {
    /// Recipient phone number (E.164 digits). Without it, JSON lines are read from stdin: each a
    /// payload ({"to", "message"|"input"}) or a job ({"payload", "idempotencyKey", "runAt", ...}).
    #[arg(long, requires = "text")]
    pub to: Option<String>,
    /// Text message body.
    #[arg(long)]
    pub text: Option<String>,
    /// A key that makes a repeated enqueue insert nothing.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// The app's correlation id.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Run no earlier than this time (RFC 3339).
    #[arg(long)]
    pub run_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Runs a command and returns the process exit code.
pub async fn main(cli: Cli) -> u8 {
    // `verify` talks to a runner elsewhere; it needs no local configuration.
    if let Some(Command::Verify(args)) = &cli.command {
        return verify::report(&verify::run_checks(args).await);
    }
    let opts = LoadOptions::from_process(cli.config.clone());
    let settings = match config::load(&opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("outbound-runner: {e}");
            return exit::CONFIG;
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let log = crate::telemetry::init(&settings.log);
            match crate::app::run(opts, settings, log).await {
                Ok(code) => code,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("outbound-runner: {e}");
                    e.exit_code()
                }
            }
        }
        Command::CheckConfig => check_config(&opts, &settings),
        Command::Verify(_) => unreachable!("handled before the configuration is loaded"),
        Command::Status(args) => {
            let daemon = settings.clone();
            with_database(&opts, &settings, |pool| async move {
                let mut status = status::collect(&pool, &args)
                    .await
                    .context("querying the queue")?;
                status.in_flight = in_flight::scrape(&daemon).await;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    print!("{}", status::render(&status));
                }
                for c in status.checks.iter().filter(|c| !c.ok) {
                    eprintln!("unhealthy: {}: {}", c.name, c.detail);
                }
                Ok(if status.ok {
                    exit::OK
                } else {
                    exit::CHECK_FAILED
                })
            })
            .await
        }
        Command::Jobs(args) => {
            let default_max_attempts = settings.retry.max_attempts as i32;
            with_database(&opts, &settings, |pool| async move {
                Ok(jobs::run(&pool, &args, default_max_attempts).await)
            })
            .await
        }
        Command::Numbers(args) => {
            let for_numbers = settings.clone();
            with_database(&opts, &settings, |pool| async move {
                numbers::run(&pool, &for_numbers, &args).await
            })
            .await
        }
        Command::Migrate => {
            let for_migrate = settings.clone();
            with_database(&opts, &settings, |pool| async move {
                db::migrate_with(&for_migrate, &pool).await?;
                println!("migrations applied");
                Ok(exit::OK)
            })
            .await
        }
        Command::Enqueue(args) => {
            if args.to.is_none() {
                // JSON lines on stdin, streamed (see `enqueue_stream`).
                return with_database(&opts, &settings, |pool| async move {
                    enqueue_stream(&pool, tokio::io::BufReader::new(tokio::io::stdin())).await
                })
                .await;
            }
            let jobs = match jobs_from(&args) {
                Ok(j) => j,
                Err(e) => {
                    eprintln!("outbound-runner: {e:#}");
                    return exit::CHECK_FAILED;
                }
            };
            with_database(&opts, &settings, |pool| async move {
                let inserted = match store::enqueue(&pool, &jobs).await {
                    Ok(i) => i,
                    Err(e) if store::is_data_error(&e) => {
                        eprintln!(
                            "outbound-runner: the database refused the job: {}",
                            db::redact_sqlx(&e)
                        );
                        return Ok(exit::DATAERR);
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context("inserting jobs")),
                };
                for (id, _) in &inserted {
                    println!("{id}");
                }
                report_skipped(&jobs, &inserted);
                Ok(exit::OK)
            })
            .await
        }
    }
}

fn report_skipped(jobs: &[NewJob], inserted: &[(i64, Option<String>)]) {
    let skipped = jobs
        .iter()
        .filter_map(|j| j.idempotency_key.as_deref())
        .filter(|k| !inserted.iter().any(|(_, ik)| ik.as_deref() == Some(*k)));
    for key in skipped {
        eprintln!("already queued (idempotency key {key:?}): nothing inserted");
    }
}

/// Lines inserted per statement by `enqueue` from stdin.
const ENQUEUE_CHUNK: usize = 1000;
/// The longest stdin line `enqueue` reads.
const ENQUEUE_MAX_LINE: usize = 1024 * 1024;

/// `enqueue` from JSON lines: read and inserted [`ENQUEUE_CHUNK`] lines at a time (memory stays
/// bounded whatever the input's size), in one transaction, so a bad line still inserts nothing.
/// A line that is not a job: exit 1, naming the line. A row the database refuses (a constraint,
/// a value out of range): exit 65 (EX_DATAERR), naming the line. The ids are printed after the
/// commit.
pub async fn enqueue_stream(
    pool: &crate::db::Pool,
    mut input: impl tokio::io::AsyncBufRead + Unpin,
) -> anyhow::Result<u8> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut tx = pool
        .pg()
        .begin()
        .await
        .context("starting the transaction")?;
    let mut inserted: Vec<(i64, Option<String>)> = Vec::new();
    let mut skipped_total = Vec::new();
    let mut chunk: Vec<NewJob> = Vec::with_capacity(ENQUEUE_CHUNK);
    let mut lines: Vec<usize> = Vec::with_capacity(ENQUEUE_CHUNK);
    let mut buf = Vec::new();
    let mut n = 0usize;
    loop {
        buf.clear();
        let read = (&mut input)
            .take(ENQUEUE_MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
            .context("reading stdin")?;
        let end = read == 0;
        if !end {
            n += 1;
            if buf.len() > ENQUEUE_MAX_LINE {
                eprintln!("outbound-runner: line {n}: longer than {ENQUEUE_MAX_LINE} bytes");
                return Ok(exit::CHECK_FAILED);
            }
            let line = String::from_utf8_lossy(&buf);
            if !line.trim().is_empty() {
                match parse_job_line(&line) {
                    Ok(job) => {
                        chunk.push(job);
                        lines.push(n);
                    }
                    Err(e) => {
                        eprintln!("outbound-runner: line {n}: {e:#}");
                        return Ok(exit::CHECK_FAILED);
                    }
                }
            }
        }
        if chunk.len() >= ENQUEUE_CHUNK || (end && !chunk.is_empty()) {
            match store::enqueue(&mut *tx, &chunk).await {
                Ok(ids) => {
                    let keys: Vec<Option<String>> =
                        chunk.iter().map(|j| j.idempotency_key.clone()).collect();
                    for key in keys.into_iter().flatten() {
                        if !ids.iter().any(|(_, k)| k.as_deref() == Some(key.as_str())) {
                            skipped_total.push(key);
                        }
                    }
                    inserted.extend(ids);
                }
                Err(e) if store::is_data_error(&e) => {
                    tx.rollback().await.ok();
                    let (line, why) = refused_line(pool, &chunk, &lines)
                        .await
                        .unwrap_or((None, db::redact_sqlx(&e)));
                    match line {
                        Some(line) => eprintln!(
                            "outbound-runner: line {line}: the database refused the job: {why}; nothing was inserted"
                        ),
                        None => eprintln!(
                            "outbound-runner: the database refused lines {}-{}: {why}; nothing was inserted",
                            lines.first().copied().unwrap_or(0),
                            lines.last().copied().unwrap_or(0)
                        ),
                    }
                    return Ok(exit::DATAERR);
                }
                Err(e) => return Err(anyhow::Error::new(e).context("inserting jobs")),
            }
            chunk.clear();
            lines.clear();
        }
        if end {
            break;
        }
    }
    if inserted.is_empty() && skipped_total.is_empty() {
        eprintln!("outbound-runner: no jobs: give --to and --text, or JSON lines on stdin");
        return Ok(exit::CHECK_FAILED);
    }
    tx.commit().await.context("committing the jobs")?;
    for (id, _) in &inserted {
        println!("{id}");
    }
    for key in &skipped_total {
        eprintln!("already queued (idempotency key {key:?}): nothing inserted");
    }
    Ok(exit::OK)
}

/// Which line of a refused chunk the database refuses: each job inserted alone in a
/// transaction rolled back at the end.
async fn refused_line(
    pool: &crate::db::Pool,
    chunk: &[NewJob],
    lines: &[usize],
) -> Option<(Option<usize>, String)> {
    let mut tx = pool.pg().begin().await.ok()?;
    let mut found = None;
    for (job, line) in chunk.iter().zip(lines) {
        sqlx::query("SAVEPOINT one")
            .persistent(false)
            .execute(&mut *tx)
            .await
            .ok()?;
        let result = store::enqueue(&mut *tx, std::slice::from_ref(job)).await;
        sqlx::query("ROLLBACK TO SAVEPOINT one")
            .persistent(false)
            .execute(&mut *tx)
            .await
            .ok()?;
        if let Err(e) = result {
            found = Some((Some(*line), db::redact_sqlx(&e)));
            break;
        }
    }
    tx.rollback().await.ok();
    found
}

/// One JSON line of `enqueue`: a payload, or a job with its payload.
fn parse_job_line(line: &str) -> anyhow::Result<NewJob> {
    let value: serde_json::Value = serde_json::from_str(line).context("not JSON")?;
    let job: NewJob = if value.get("payload").is_some() {
        serde_json::from_value(value)?
    } else {
        NewJob {
            payload: value,
            ..NewJob::default()
        }
    };
    Payload::parse(&job.payload).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    Ok(job)
}

/// Connects to the configured database, or to the embedded server a running daemon started.
async fn with_database<F, Fut>(opts: &LoadOptions, settings: &Settings, f: F) -> u8
where
    F: FnOnce(db::Pool) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u8>>,
{
    let url = match db::configured_url(settings) {
        Some(url) => url,
        None => {
            let dir = crate::app::state_dir(settings, opts);
            match EmbeddedPostgres::running_url(&dir) {
                Some(url) => url,
                None => {
                    eprintln!(
                        "outbound-runner: no database configured (set DATABASE_URL) and no embedded \
                         PostgreSQL is running in {} (start `outbound-runner run` first)",
                        dir.display()
                    );
                    return exit::UNAVAILABLE;
                }
            }
        }
    };
    let result = async {
        let pool = db::open(settings, &url)?;
        sqlx::query("SELECT 1")
            .execute(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the database: {}", db::redact_sqlx(&e)))?;
        f(pool).await
    }
    .await;
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("outbound-runner: {}", db::redact_sqlx(&format!("{e:#}")));
            exit::UNAVAILABLE
        }
    }
}

fn jobs_from(args: &EnqueueArgs) -> anyhow::Result<Vec<NewJob>> {
    if let (Some(to), Some(text)) = (&args.to, &args.text) {
        let payload = serde_json::json!({
            "to": to,
            "message": {"type": "text", "text": {"body": text}},
        });
        Payload::parse(&payload).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        return Ok(vec![NewJob {
            payload,
            request_id: args.request_id.clone(),
            idempotency_key: args.idempotency_key.clone(),
            run_at: args.run_at,
            ..NewJob::default()
        }]);
    }
    anyhow::bail!("no jobs: give --to and --text, or JSON lines on stdin")
}

fn check_config(opts: &LoadOptions, settings: &Settings) -> u8 {
    let origins = match config::origins(opts) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("outbound-runner: {e}");
            return exit::CONFIG;
        }
    };
    if let Some(file) = opts.config_file() {
        println!("# file: {}", file.display());
    }
    for (key, value) in effective(settings) {
        let origin = origins
            .get(key.as_str())
            .or_else(|| {
                // `whatsapp.numbers[i].…` come from wherever the tables were written.
                key.starts_with("whatsapp.numbers[")
                    .then(|| origins.get("whatsapp.numbers"))
                    .flatten()
            })
            .copied()
            .unwrap_or("default");
        let origin = match (origin, key.rsplit_once('.')) {
            // A secret filled from its *_file or a credential.
            ("default", Some((section, name)))
                if value == "***"
                    && origins
                        .get(&format!("{section}.{name}_file"))
                        .is_some_and(|o| *o != "default") =>
            {
                "file"
            }
            ("default", _) if value == "***" => "credential",
            (o, _) => o,
        };
        println!("{key} = {value}    # {origin}");
    }
    println!("configuration OK");
    exit::OK
}

fn pooler_name(mode: crate::config::PoolerMode) -> &'static str {
    match mode {
        crate::config::PoolerMode::Auto => "auto",
        crate::config::PoolerMode::None => "none",
        crate::config::PoolerMode::Transaction => "transaction",
    }
}

/// Every key with its effective value, secrets masked.
fn effective(s: &Settings) -> Vec<(String, String)> {
    let secret = |v: &Option<secrecy::SecretString>| match v {
        Some(_) => "***".to_string(),
        None => "\"\"".to_string(),
    };
    let d = |v: std::time::Duration| format!("\"{}\"", humantime::format_duration(v));
    let q = |v: &str| format!("{v:?}");
    let p = |v: &Option<PathBuf>| {
        q(&v.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default())
    };
    let mut out = vec![
        ("database.url".into(), secret(&s.database.url)),
        ("database.url_file".into(), p(&s.database.url_file)),
        ("database.pooler".into(), q(pooler_name(s.database.pooler))),
        ("database.direct_url".into(), secret(&s.database.direct_url)),
        (
            "database.direct_url_file".into(),
            p(&s.database.direct_url_file),
        ),
        ("database.listen_url".into(), secret(&s.database.listen_url)),
        (
            "database.listen_url_file".into(),
            p(&s.database.listen_url_file),
        ),
        (
            "database.max_connections".into(),
            s.database.max_connections.to_string(),
        ),
        (
            "database.connect_timeout".into(),
            d(s.database.connect_timeout),
        ),
        ("database.migrate".into(), s.database.migrate.to_string()),
        ("database.embedded_dir".into(), p(&s.database.embedded_dir)),
        ("runner.workers".into(), s.runner.workers.to_string()),
        (
            "runner.max_in_flight".into(),
            s.runner.max_in_flight.to_string(),
        ),
        ("runner.batch".into(), s.runner.batch.to_string()),
        ("runner.poll_interval".into(), d(s.runner.poll_interval)),
        (
            "runner.pooler_poll_interval".into(),
            d(s.runner.pooler_poll_interval),
        ),
        ("runner.lease".into(), d(s.runner.lease)),
        ("runner.rescue_interval".into(), d(s.runner.rescue_interval)),
        ("runner.job_timeout".into(), d(s.runner.job_timeout)),
        ("runner.drain_timeout".into(), d(s.runner.drain_timeout)),
        ("runner.heartbeat".into(), d(s.runner.heartbeat)),
        ("runner.retention".into(), d(s.runner.retention)),
        ("runner.prune_interval".into(), d(s.runner.prune_interval)),
        (
            "retry.max_attempts".into(),
            s.retry.max_attempts.to_string(),
        ),
        ("retry.base".into(), d(s.retry.base)),
        ("retry.cap".into(), d(s.retry.cap)),
        (
            "delivery.mode".into(),
            q(&format!("{:?}", s.delivery.mode).to_lowercase()),
        ),
        (
            "delivery.on_unknown".into(),
            q(&format!("{:?}", s.delivery.on_unknown).to_lowercase()),
        ),
        (
            "orchestrator.url".into(),
            q(&config::redact_url_or_empty(&s.orchestrator.url)),
        ),
        ("orchestrator.token".into(), secret(&s.orchestrator.token)),
        (
            "orchestrator.token_file".into(),
            p(&s.orchestrator.token_file),
        ),
        ("orchestrator.timeout".into(), d(s.orchestrator.timeout)),
        ("whatsapp.api_base".into(), q(&s.whatsapp.api_base)),
        ("whatsapp.api_version".into(), q(&s.whatsapp.api_version)),
        (
            "whatsapp.phone_number_id".into(),
            q(&s.whatsapp.phone_number_id),
        ),
        (
            "whatsapp.access_token".into(),
            secret(&s.whatsapp.access_token),
        ),
        (
            "whatsapp.access_token_file".into(),
            p(&s.whatsapp.access_token_file),
        ),
        ("whatsapp.timeout".into(), d(s.whatsapp.timeout)),
        (
            "whatsapp.rate_per_second".into(),
            s.whatsapp.rate_per_second.to_string(),
        ),
        ("whatsapp.pair_interval".into(), d(s.whatsapp.pair_interval)),
        ("whatsapp.halt_cooldown".into(), d(s.whatsapp.halt_cooldown)),
        ("whatsapp.app_secret".into(), secret(&s.whatsapp.app_secret)),
        (
            "whatsapp.app_secret_file".into(),
            p(&s.whatsapp.app_secret_file),
        ),
        (
            "whatsapp.verify_token".into(),
            secret(&s.whatsapp.verify_token),
        ),
        (
            "whatsapp.webhook_forward_url".into(),
            q(&config::redact_url_or_empty(
                &s.whatsapp.webhook_forward_url,
            )),
        ),
        (
            "whatsapp.tier_limit".into(),
            s.whatsapp.tier_limit.to_string(),
        ),
        ("whatsapp.business_id".into(), q(&s.whatsapp.business_id)),
        ("http.listen".into(), q(&s.http.listen)),
        (
            "http.job_runner_token".into(),
            secret(&s.http.job_runner_token),
        ),
        (
            "http.job_runner_token_file".into(),
            p(&s.http.job_runner_token_file),
        ),
        ("http.cron_secret".into(), secret(&s.http.cron_secret)),
        ("http.cron_secret_file".into(), p(&s.http.cron_secret_file)),
        ("http.admin_token".into(), secret(&s.http.admin_token)),
        ("http.admin_token_file".into(), p(&s.http.admin_token_file)),
        (
            "http.max_per_request".into(),
            s.http.max_per_request.to_string(),
        ),
        ("http.pass_timeout".into(), d(s.http.pass_timeout)),
        (
            "http.max_concurrent_passes".into(),
            s.http.max_concurrent_passes.to_string(),
        ),
        ("metrics.listen".into(), q(&s.metrics.listen)),
        ("log.level".into(), q(&s.log.level)),
        (
            "log.format".into(),
            q(&format!("{:?}", s.log.format).to_lowercase()),
        ),
    ];
    // `[[whatsapp.numbers]]`: one line per number, secrets masked (docs/numbers.md), in the key
    // table's place (after `whatsapp.business_id`); `[]` when there are none.
    let mut numbers: Vec<(String, String)> = Vec::new();
    for (i, n) in s.whatsapp.numbers.iter().enumerate() {
        let k = |key: &str| format!("whatsapp.numbers[{i}].{key}");
        numbers.push((k("phone_number_id"), q(&n.phone_number_id)));
        numbers.push((k("access_token"), secret(&n.access_token)));
        if n.access_token_file.is_some() {
            numbers.push((k("access_token_file"), p(&n.access_token_file)));
        }
        if let Some(rate) = n.rate_per_second {
            numbers.push((k("rate_per_second"), rate.to_string()));
        }
        if let Some(pair) = n.pair_interval {
            numbers.push((k("pair_interval"), d(pair)));
        }
        if let Some(limit) = n.tier_limit {
            numbers.push((k("tier_limit"), limit.to_string()));
        }
        if let Some(b) = &n.business_id {
            numbers.push((k("business_id"), q(b)));
        }
    }
    if numbers.is_empty() {
        numbers.push(("whatsapp.numbers".into(), "[]".into()));
    }
    let at = out
        .iter()
        .position(|(k, _)| k == "whatsapp.business_id")
        .map_or(out.len(), |i| i + 1);
    out.splice(at..at, numbers);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::keys::KEYS;

    fn load(env: &[(&str, &str)]) -> Settings {
        config::load(&LoadOptions {
            config_path: None,
            skip_default_path: true,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .unwrap()
    }

    /// `check-config` lists exactly the keys of src/config/keys.rs, in its order, and masks
    /// exactly its secrets.
    #[test]
    fn check_config_lists_the_key_table() {
        let listed = effective(&load(&[]));
        let names: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
        let table: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
        assert_eq!(
            names, table,
            "check-config's effective() (src/cli/mod.rs) vs src/config/keys.rs: a key was added \
             or removed: it needs one row in src/config/keys.rs and one line in effective()"
        );
        // Every secret set (structured names), but `database.listen_url`: the old name of
        // `database.direct_url`, not to be given with it.
        let env: Vec<(String, &str)> = KEYS
            .iter()
            .filter(|k| k.secret && k.name != "database.listen_url")
            .map(|k| {
                let name = format!(
                    "OUTBOUND_RUNNER__{}",
                    k.name.replace('.', "__").to_uppercase()
                );
                let value = if k.name.ends_with("url") {
                    "postgres://u:p@h/db"
                } else {
                    "s3cret-value"
                };
                (name, value)
            })
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let mut masked = 0;
        for ((name, value), key) in effective(&load(&env)).iter().zip(KEYS) {
            if value == "***" {
                masked += 1;
                assert!(
                    key.secret,
                    "{name} is masked but src/config/keys.rs says not secret"
                );
            } else {
                assert!(
                    !key.secret || value == "\"\"",
                    "{name} is a secret shown as {value}"
                );
            }
        }
        assert!(masked >= env.len(), "only {masked} secrets masked");
    }
}
