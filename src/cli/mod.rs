//! The command line: `run` (the daemon, default), `migrate`, `adopt`, `enqueue`, `status`,
//! `jobs`, `numbers`, `prisma`, `verify`, `check-config`.

pub mod adopt;
pub mod in_flight;
pub mod jobs;
pub mod numbers;
pub mod prisma;
pub mod status;
pub mod verify;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{self, LoadOptions, Settings};
use crate::db::{self, embedded::EmbeddedPostgres};
use crate::delivery::payload::Payload;
use crate::exit;
use crate::queue::JobId;
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
    /// Apply pending database migrations and exit. Refuses an "OutboundJob" that our
    /// migrations did not make (exit 78): `adopt` first.
    Migrate,
    /// Make the app's own "OutboundJob" (made by Prisma Migrate) ours: add what we need, never
    /// touch its columns' types or its rows (--dry-run prints every statement).
    Adopt(adopt::AdoptArgs),
    /// Insert jobs: one from flags, or JSON lines from stdin.
    Enqueue(EnqueueArgs),
    /// The queue at a glance: the user's job-runner guide's monitoring queries (docs/operations.md "Monitor"), with checks (exit 1 if one fails).
    Status(status::StatusArgs),
    /// Find, inspect, retry, cancel and settle jobs (list|show|retry|cancel|settle).
    Jobs(jobs::JobsArgs),
    /// The sending numbers: state, rate, today's sends; pause and resume one on every runner.
    Numbers(numbers::NumbersArgs),
    /// Live beside Prisma Migrate: print our tables as schema.prisma blocks (`prisma schema`), or
    /// write our DDL as a Prisma migration (`prisma migration DIR`). See docs/prisma.md.
    Prisma(prisma::PrismaArgs),
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
        Command::Status(mut args) => {
            args.no_lease_grace = settings.runner.foreign_running_grace;
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
        Command::Prisma(args) => {
            with_database(&opts, &settings, |pool| async move {
                prisma::run(&pool, &args).await
            })
            .await
        }
        Command::Adopt(args) => {
            let for_adopt = settings.clone();
            with_database(&opts, &settings, |pool| async move {
                adopt::run(&for_adopt, &pool, &args).await
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

fn report_skipped(jobs: &[NewJob], inserted: &[(JobId, Option<String>)]) {
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
    let mut inserted: Vec<(JobId, Option<String>)> = Vec::new();
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
        db::check_timezone(&pool).await?;
        // The operator's statements: each planned for its values (`Pool::custom_plans`).
        f(pool.custom_plans()).await
    }
    .await;
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("outbound-runner: {}", db::redact_sqlx(&format!("{e:#}")));
            db::exit_code_of(&e, exit::UNAVAILABLE)
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
    // Every key with its effective value, secrets masked: derived from src/config/keys.rs.
    for (key, value) in config::keys::effective(settings) {
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
    if let Some(warning) = config::readable_secrets_warning(opts, settings) {
        eprintln!("outbound-runner: warning: {warning}");
    }
    println!("configuration OK");
    exit::OK
}
