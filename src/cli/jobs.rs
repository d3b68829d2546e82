//! `outbound-runner jobs list|show|retry|cancel|settle`: the operators' actions without
//! hand-written SQL. The statements are [`crate::queue::admin`]'s (the admin API runs the same);
//! this module parses flags, asks for confirmation and prints. docs/operations.md shows each
//! command with its output.
//!
//! Exit codes: 0 done (also when nothing matched), 1 refused (no such job, not in a state the
//! action applies to, the operator answered no), 64 bad input or a bulk action without
//! confirmation (no terminal and no `--yes`), 69 the database is unreachable.

use std::io::{BufRead, IsTerminal, Write};

use clap::Subcommand;
use serde::Serialize;

use crate::exit;
use crate::queue::JobId;
use crate::queue::admin::{self, Actor, AdminError, Cursor, Filter, Settled};

/// Who the history and the log say did it.
pub const BY: &str = "cli";

#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    #[command(subcommand)]
    pub command: JobsCommand,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Jobs matching the filters, newest first, one page at a time.
    List(ListArgs),
    /// One job: its fields, its messages with their statuses and errors, its timeline.
    Show(ShowArgs),
    /// Failed or cancelled jobs back to queued (attempts kept; a fresh allowance of attempts).
    Retry(RetryArgs),
    /// Queued jobs to cancelled; running jobs are asked to stop before their next send.
    Cancel(CancelArgs),
    /// Decide an `unknown` message: it was sent, or it failed.
    Settle(SettleArgs),
}

/// The filters every `jobs` command takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Status: queued, running, done, failed, cancelled (repeat or comma-separate for several).
    #[arg(long, value_delimiter = ',')]
    pub status: Vec<String>,
    /// "lastErrorCode" (e.g. 131000, delivery_unknown).
    #[arg(long)]
    pub code: Option<String>,
    /// Created at or after: RFC 3339, YYYY-MM-DD (UTC), or a duration ago (24h, 7days).
    #[arg(long)]
    pub since: Option<String>,
    /// Created before (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Recipient (payload's "to").
    #[arg(long)]
    pub to: Option<String>,
    /// "requestId".
    #[arg(long)]
    pub request_id: Option<String>,
    /// Sending number (payload's "from").
    #[arg(long)]
    pub from: Option<String>,
    /// Job ids, the app's own (repeat or comma-separate).
    #[arg(long = "id", value_delimiter = ',', value_parser = job_id)]
    pub ids: Vec<JobId>,
    /// list: the page size (default 50, at most 1000). retry/cancel: the most jobs to touch.
    #[arg(long)]
    pub limit: Option<i64>,
}

impl FilterArgs {
    fn filter(&self, cursor: Option<Cursor>, all: bool) -> Result<Filter, AdminError> {
        let time = |s: &Option<String>| s.as_deref().map(admin::parse_time).transpose();
        Filter {
            status: self.status.clone(),
            code: self.code.clone(),
            since: time(&self.since)?,
            until: time(&self.until)?,
            to: self.to.clone(),
            request_id: self.request_id.clone(),
            from: self.from.clone(),
            ids: self.ids.clone(),
            limit: self.limit,
            cursor,
            all,
        }
        .validate()
    }
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// The page after this one (the `next page: --cursor C` line of the previous page).
    #[arg(long, value_parser = cursor)]
    pub cursor: Option<Cursor>,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The job's id (the app's own: a cuid, a UUID, a number).
    #[arg(value_parser = job_id)]
    pub id: JobId,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What a bulk action needs besides its filter.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BulkArgs {
    /// Apply to every job when no filter is given (refused otherwise).
    #[arg(long)]
    pub all: bool,
    /// Do it without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Count and list the jobs it would touch; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RetryArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub bulk: BulkArgs,
    /// Also retry jobs with a message already sent, and SEND THOSE MESSAGES AGAIN (the
    /// recipient gets them twice). Without it such jobs are skipped.
    #[arg(long)]
    pub resend_sent: bool,
}

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub bulk: BulkArgs,
}

#[derive(Debug, clap::Args)]
pub struct SettleArgs {
    /// The job's id.
    #[arg(value_parser = job_id)]
    pub id: JobId,
    /// What the operator learned: `sent` (it reached the recipient) or `failed` (it did not).
    #[arg(long = "as", value_name = "sent|failed")]
    pub settled_as: Settled,
    /// Only this message of the job (its seq); default: every unknown message of the job.
    #[arg(long)]
    pub seq: Option<i32>,
    /// The wamid, when settling as sent and it is known.
    #[arg(long)]
    pub wamid: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `jobs` command on `pool`; returns the exit code.
pub async fn run(pool: &crate::db::Pool, args: &JobsArgs, default_max_attempts: i32) -> u8 {
    match execute(pool, args, default_max_attempts).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("outbound-runner: {e}");
            match e {
                AdminError::Invalid(_) => exit::USAGE,
                AdminError::NotFound(_) | AdminError::Conflict(_) => exit::CHECK_FAILED,
                AdminError::Database(_) => exit::UNAVAILABLE,
            }
        }
    }
}

async fn execute(
    pool: &crate::db::Pool,
    args: &JobsArgs,
    default_max_attempts: i32,
) -> Result<u8, AdminError> {
    match &args.command {
        JobsCommand::List(a) => {
            let page = admin::list(pool, &a.filter.filter(a.cursor.clone(), false)?).await?;
            if a.json {
                print_json(&page);
            } else {
                print!("{}", render_list(&page));
            }
            Ok(exit::OK)
        }
        JobsCommand::Show(a) => {
            let job = admin::show(pool, &a.id).await?;
            if a.json {
                print_json(&job);
            } else {
                print!("{}", render_show(&job));
            }
            Ok(exit::OK)
        }
        JobsCommand::Retry(a) => {
            let filter = a.filter.filter(None, a.bulk.all)?;
            let run = |dry_run| {
                let filter = &filter;
                async move {
                    let actor = Actor { by: BY, dry_run };
                    admin::retry(pool, filter, &actor, a.resend_sent, default_max_attempts).await
                }
            };
            if a.resend_sent {
                eprintln!(
                    "WARNING: --resend-sent: messages already sent will be SENT AGAIN; their \
                     recipients get them twice"
                );
            }
            let preview = run(true).await?;
            let touch = preview.retried;
            if !a.bulk.dry_run && !a.bulk.json {
                println!("{}", describe_retry(&preview));
            }
            if a.bulk.dry_run {
                return Ok(report(&a.bulk, &preview, describe_retry));
            }
            if let Some(code) = confirm(&a.bulk, "retry", touch) {
                return Ok(code);
            }
            let done = run(false).await?;
            Ok(report(&a.bulk, &done, describe_retry))
        }
        JobsCommand::Cancel(a) => {
            let filter = a.filter.filter(None, a.bulk.all)?;
            let run = |dry_run| {
                let filter = &filter;
                async move {
                    let actor = Actor { by: BY, dry_run };
                    admin::cancel(pool, filter, &actor).await
                }
            };
            let preview = run(true).await?;
            if !a.bulk.dry_run && !a.bulk.json {
                println!("{}", describe_cancel(&preview));
            }
            if a.bulk.dry_run {
                return Ok(report(&a.bulk, &preview, describe_cancel));
            }
            if let Some(code) = confirm(&a.bulk, "cancel", preview.cancelled) {
                return Ok(code);
            }
            let done = run(false).await?;
            Ok(report(&a.bulk, &done, describe_cancel))
        }
        JobsCommand::Settle(a) => {
            let done =
                admin::settle(pool, &a.id, a.seq, a.settled_as, a.wamid.as_deref(), BY).await?;
            if a.json {
                print_json(&done);
            } else {
                let seqs: Vec<String> = done.messages.iter().map(|s| s.to_string()).collect();
                println!(
                    "job {}: message(s) {} settled as {}; the job is {}",
                    done.job_id,
                    seqs.join(", "),
                    done.settled_as.as_str(),
                    done.job_status
                );
            }
            Ok(exit::OK)
        }
    }
}

/// Asks before a bulk action touches `n` jobs. `Some(code)`: stop with it.
fn confirm(bulk: &BulkArgs, action: &str, n: i64) -> Option<u8> {
    if n == 0 {
        if !bulk.json {
            println!("nothing to {action}");
        } else {
            print_json(&serde_json::json!({"dryRun": false, "matched": 0, "ids": []}));
        }
        return Some(exit::OK);
    }
    if bulk.yes {
        return None;
    }
    if !std::io::stdin().is_terminal() {
        eprintln!(
            "outbound-runner: refusing to {action} {n} job(s) without confirmation: stdin is not \
             a terminal; add --yes to do it, or --dry-run to look"
        );
        return Some(exit::USAGE);
    }
    eprint!("{action} {n} job(s)? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        None
    } else {
        eprintln!("not done");
        Some(exit::CHECK_FAILED)
    }
}

fn report<T: Serialize>(bulk: &BulkArgs, r: &T, describe: fn(&T) -> String) -> u8 {
    if bulk.json {
        print_json(r);
    } else {
        println!("{}", describe(r));
    }
    exit::OK
}

fn print_json<T: Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("outbound-runner: {e}"),
    }
}

/// A job id given on the command line.
fn job_id(raw: &str) -> Result<JobId, String> {
    JobId::parse("id", raw).map_err(|e| e.to_string())
}

fn cursor(raw: &str) -> Result<Cursor, String> {
    Cursor::parse(raw).map_err(|e| e.to_string())
}

fn ids_line(ids: &[JobId], total: i64) -> String {
    let shown: Vec<String> = ids.iter().take(20).map(|i| i.to_string()).collect();
    let more = total - shown.len() as i64;
    if more > 0 {
        format!("{} … and {more} more", shown.join(" "))
    } else {
        shown.join(" ")
    }
}

fn describe_retry(r: &admin::RetryReport) -> String {
    let verb = if r.dry_run { "would retry" } else { "retried" };
    let mut out = format!(
        "{verb} {} of {} matching job(s) (failed/cancelled → queued)",
        r.retried, r.matched
    );
    if r.retried > 0 {
        out.push_str(&format!(": {}", ids_line(&r.ids, r.retried)));
    }
    if r.skipped_sent > 0 {
        out.push_str(&format!(
            "\nskipped {}: a message was already sent (--resend-sent sends it again)",
            r.skipped_sent
        ));
    }
    if r.skipped_in_doubt > 0 {
        out.push_str(&format!(
            "\nskipped {}: a message is unknown (settle it first: jobs settle ID --as sent|failed)",
            r.skipped_in_doubt
        ));
    }
    if r.resent_messages > 0 {
        out.push_str(&format!(
            "\n{} already-sent message(s) {} SENT AGAIN",
            r.resent_messages,
            if r.dry_run { "would be" } else { "will be" }
        ));
    }
    out
}

fn describe_cancel(r: &admin::CancelReport) -> String {
    let verb = if r.dry_run {
        "would cancel"
    } else {
        "cancelled"
    };
    let mut out = format!(
        "{verb} {} of {} matching job(s) (queued → cancelled)",
        r.cancelled, r.matched
    );
    if r.cancelled > 0 {
        out.push_str(&format!(": {}", ids_line(&r.ids, r.cancelled)));
    }
    if r.running > 0 {
        out.push_str(&format!(
            "\n{} {} running job(s) to stop before their next send (never mid-send): {}",
            if r.dry_run { "would ask" } else { "asked" },
            r.running,
            ids_line(&r.running_ids, r.running)
        ));
    }
    out
}

fn one_line(s: &str, max: usize) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    } else {
        s
    }
}

fn render_list(page: &admin::Page) -> String {
    // Ids are the app's: a number, or a 25-character cuid.
    let w = page
        .jobs
        .iter()
        .map(|j| j.id.as_str().chars().count())
        .max()
        .unwrap_or(0)
        .max(8);
    let mut out = format!(
        "{:>w$}  {:<9}  {:<15}  {:>8}  {:<16}  {:<20}  {}\n",
        "ID", "STATUS", "TO", "ATTEMPTS", "CODE", "CREATED", "ERROR"
    );
    for j in &page.jobs {
        let attempts = match j.max_attempts {
            Some(m) => format!("{}/{m}", j.attempts),
            None => j.attempts.to_string(),
        };
        out.push_str(&format!(
            "{:>w$}  {:<9}  {:<15}  {:>8}  {:<16}  {:<20}  {}\n",
            j.id,
            j.status,
            one_line(j.to.as_deref().unwrap_or("-"), 15),
            attempts,
            one_line(j.last_error_code.as_deref().unwrap_or("-"), 16),
            j.created_at.format("%Y-%m-%d %H:%M:%S"),
            one_line(j.last_error.as_deref().unwrap_or(""), 60)
        ));
    }
    match &page.next_cursor {
        Some(c) => out.push_str(&format!(
            "{} job(s); next page: --cursor {c}\n",
            page.jobs.len()
        )),
        None => out.push_str(&format!("{} job(s)\n", page.jobs.len())),
    }
    out
}

fn render_show(j: &admin::JobDetail) -> String {
    let t = |v: Option<chrono::DateTime<chrono::Utc>>| {
        v.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| "-".into())
    };
    let o = |v: &Option<String>| v.as_deref().unwrap_or("-").to_string();
    let mut out = format!("job {}  {}\n", j.id, j.status);
    let attempts = match j.max_attempts {
        Some(m) => format!("{} of {m}", j.attempts),
        None => format!("{} (limit: retry.max_attempts)", j.attempts),
    };
    for (k, v) in [
        ("requestId", o(&j.request_id)),
        ("idempotencyKey", o(&j.idempotency_key)),
        ("priority", j.priority.to_string()),
        ("attempts", attempts),
        ("runAt", t(Some(j.run_at))),
        ("lockedBy", o(&j.locked_by)),
        ("leaseUntil", t(j.lease_until)),
        ("lastErrorCode", o(&j.last_error_code)),
        ("lastError", one_line(&o(&j.last_error), 200)),
        ("payload", one_line(&j.payload.to_string(), 200)),
        (
            "composed",
            j.composed
                .as_ref()
                .map(|c| one_line(&c.to_string(), 200))
                .unwrap_or_else(|| "-".into()),
        ),
    ] {
        out.push_str(&format!("  {k:<15} {v}\n"));
    }
    out.push_str(&format!("messages ({})\n", j.messages.len()));
    for m in &j.messages {
        out.push_str(&format!(
            "  #{}  {:<8} to {}  wamid {}  code {}  sent {}\n",
            m.seq,
            m.status,
            m.to,
            o(&m.wamid),
            o(&m.last_error_code),
            t(m.sent_at)
        ));
    }
    out.push_str("timeline\n");
    for e in &j.timeline {
        out.push_str(&format!(
            "  {}  {}\n",
            e.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            one_line(&e.event, 200)
        ));
    }
    out
}
