//! `outbound-runner numbers [list|pause ID [--for DURATION]|resume ID]`: the sending numbers,
//! their state, today's sends and the unique recipients of their template messages over the
//! last 24 hours (what Meta's messaging-limit tier counts); pausing and resuming one for every runner sharing the
//! database (the hold is a row of `"OutboundNumberHold"`, read by each runner at most a second
//! later; docs/numbers.md).
//!
//! Exit codes: 0 done, 1 `resume` of a number that was not paused, 64 a number that is not
//! configured, 69 the database is unreachable.

use std::time::Duration;

use clap::Subcommand;

use crate::config::Settings;
use crate::db::Pool;
use crate::delivery::numbers::{self, StoredHold};
use crate::exit;

#[derive(Debug, clap::Args)]
pub struct NumbersArgs {
    #[command(subcommand)]
    pub command: Option<NumbersCommand>,
}

#[derive(Debug, Subcommand)]
pub enum NumbersCommand {
    /// Each configured number: its state (sending, or paused: why, by whom, until when), its
    /// rate and pair interval, and the messages it sent today (the default).
    List,
    /// Pause a number on every runner: its jobs wait without spending attempts.
    Pause(PauseArgs),
    /// End a number's pause; the jobs it held are due at once.
    Resume(ResumeArgs),
}

#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// The phone number id.
    pub id: String,
    /// For how long (e.g. 30m, 2h); without it, until `numbers resume`.
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub for_: Option<Duration>,
    /// Why (shown by `numbers` and in the jobs' "lastError").
    #[arg(long, default_value = "paused by an operator")]
    pub reason: String,
}

#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// The phone number id.
    pub id: String,
}

/// Who the hold says paused the number.
pub const BY: &str = "cli";

pub async fn run(pool: &Pool, settings: &Settings, args: &NumbersArgs) -> anyhow::Result<u8> {
    let wa = &settings.whatsapp;
    let default_id = wa.default_number_id().to_string();
    let known = |id: &str| wa.number_ids().contains(&id);
    match args.command.as_ref().unwrap_or(&NumbersCommand::List) {
        NumbersCommand::List => {
            let holds = numbers::holds(pool).await?;
            let sent = numbers::sent_today(pool, &default_id).await?;
            let tier = numbers::template_recipients_24h(pool, &default_id).await?;
            let now = chrono::Utc::now();
            print!("{}", render(settings, &holds, &sent, &tier, now));
            Ok(exit::OK)
        }
        NumbersCommand::Pause(p) => {
            if !known(&p.id) {
                eprintln!("{}", not_configured(settings, &p.id));
                return Ok(exit::USAGE);
            }
            numbers::pause(pool, &p.id, p.for_, &p.reason, BY).await?;
            let until = match p.for_ {
                Some(d) => format!("for {}", humantime::format_duration(d)),
                None => format!("until `outbound-runner numbers resume {}`", p.id),
            };
            println!(
                "number {} paused {until}; every runner holds its jobs within a second \
                 (no attempt spent)",
                p.id
            );
            Ok(exit::OK)
        }
        NumbersCommand::Resume(r) => {
            if !known(&r.id) {
                eprintln!("{}", not_configured(settings, &r.id));
                return Ok(exit::USAGE);
            }
            let (was, woken) = numbers::resume(pool, &r.id, &default_id).await?;
            if was {
                println!("number {} resumed; {woken} held jobs are due now", r.id);
                Ok(exit::OK)
            } else {
                println!(
                    "number {} was not paused; {woken} held jobs are due now",
                    r.id
                );
                Ok(exit::CHECK_FAILED)
            }
        }
    }
}

fn not_configured(settings: &Settings, id: &str) -> String {
    format!(
        "outbound-runner: number {id} is not configured (configured: {})",
        settings.whatsapp.number_ids().join(", ")
    )
}

/// The `numbers` table.
pub fn render(
    settings: &Settings,
    holds: &[StoredHold],
    sent: &std::collections::HashMap<String, i64>,
    tier: &std::collections::HashMap<String, i64>,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let wa = &settings.whatsapp;
    let default_id = wa.default_number_id();
    let mut rows = vec![[
        "NUMBER".to_string(),
        "RATE/S".into(),
        "PAIR".into(),
        "SENT TODAY".into(),
        "TEMPLATE RECIPIENTS 24H".into(),
        "STATE".into(),
    ]];
    let mut ids: Vec<String> = wa.number_ids().iter().map(|s| s.to_string()).collect();
    for h in holds {
        if !ids.contains(&h.phone_number_id) {
            ids.push(h.phone_number_id.clone());
        }
    }
    for id in ids {
        let n = wa.number(Some(&id));
        let state = match holds.iter().find(|h| h.phone_number_id == id) {
            None => "sending".to_string(),
            Some(h) => {
                let until = match h.until {
                    Some(u) => format!(
                        "paused for {} more",
                        humantime::format_duration(Duration::from_secs(
                            (u - now).num_seconds().max(0) as u64
                        ))
                    ),
                    None => "paused until resumed".to_string(),
                };
                format!(
                    "{until} (by {}, since {}): {}",
                    h.by,
                    h.at.format("%Y-%m-%d %H:%M:%SZ"),
                    h.reason
                )
            }
        };
        let mut name = id.clone();
        if id == default_id {
            name.push_str(" (default)");
        }
        if n.is_none() {
            name.push_str(" (not configured here)");
        }
        rows.push([
            name,
            n.as_ref()
                .map_or("-".into(), |n| n.rate_per_second.to_string()),
            n.as_ref().map_or("-".into(), |n| {
                humantime::format_duration(n.pair_interval).to_string()
            }),
            sent.get(&id).copied().unwrap_or(0).to_string(),
            tier.get(&id).copied().unwrap_or(0).to_string(),
            state,
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        for c in 0..5 {
            out.push_str(&format!("{:<w$}  ", r[c], w = widths[c]));
        }
        out.push_str(&r[5]);
        out.push('\n');
    }
    out
}
