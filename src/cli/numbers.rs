//! `outbound-runner numbers [list|pause ID [--for DURATION]|resume ID]`: the sending numbers,
//! their state (with each runner's circuit), today's sends and the unique recipients of their
//! template messages over the last 24 hours against `tier_limit` (what Meta's messaging-limit
//! tier counts); pausing and resuming one for every runner sharing the database (the hold is
//! a row of `"OutboundNumberHold"`, read by each runner at most a second later;
//! docs/numbers.md).
//!
//! Exit codes: 0 done, 1 `resume` of a number that was not paused, 64 a number that is not
//! configured, 69 the database is unreachable.

use std::time::Duration;

use clap::Subcommand;

use crate::config::Settings;
use crate::db::Pool;
use crate::exit;
use crate::whatsapp::numbers::{self, RunnerCircuit, StoredHold, Tiers};

#[derive(Debug, clap::Args)]
pub struct NumbersArgs {
    #[command(subcommand)]
    pub command: Option<NumbersCommand>,
}

#[derive(Debug, Subcommand)]
pub enum NumbersCommand {
    /// Each configured number: its state (sending, or paused: why, by whom, until when; each
    /// runner's open circuit), its rate and pair interval, the messages it sent today and its
    /// unique template recipients in 24 h against its tier limit (the default).
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
            let tiers = numbers::tiers(pool, wa).await?;
            let circuits = numbers::circuits(pool).await?;
            let now = chrono::Utc::now();
            print!(
                "{}",
                render(settings, &holds, &sent, &tiers, &circuits, now)
            );
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

/// The `numbers` table, then one line per business (its shared tier count).
pub fn render(
    settings: &Settings,
    holds: &[StoredHold],
    sent: &std::collections::HashMap<String, i64>,
    tiers: &Tiers,
    circuits: &[RunnerCircuit],
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let wa = &settings.whatsapp;
    let default_id = wa.default_number_id();
    let mut rows = vec![[
        "NUMBER".to_string(),
        "RATE/S".into(),
        "PAIR".into(),
        "SENT TODAY".into(),
        "TIER 24H".into(),
        "STATE".into(),
    ]];
    let mut ids: Vec<String> = wa.number_ids().iter().map(|s| s.to_string()).collect();
    for h in holds {
        if !ids.contains(&h.phone_number_id) {
            ids.push(h.phone_number_id.clone());
        }
    }
    let mut businesses: Vec<(String, u32, Vec<String>)> = Vec::new();
    for id in ids {
        let n = wa.number(Some(&id));
        let mut state = match holds.iter().find(|h| h.phone_number_id == id) {
            None => "sending".to_string(),
            Some(h) => {
                let until = match h.until {
                    Some(u) => format!("paused for {} more", left(u - now)),
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
        let own = tiers.number(&id);
        let mut tier = own.to_string();
        if let Some(n) = n.as_ref().filter(|n| n.tier_limit > 0) {
            let count = tiers.group(&n.tier_group());
            if n.business_id.is_empty() {
                tier = format!("{own}/{}", n.tier_limit);
            }
            if count.recipients >= i64::from(n.tier_limit) {
                let until = count.drops_at.map_or_else(
                    || "the count drops".to_string(),
                    |at| at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
                );
                state.push_str(&format!(
                    "; tier limit reached: template messages to new recipients held until {until}"
                ));
            }
        }
        if let Some(n) = n.as_ref().filter(|n| !n.business_id.is_empty()) {
            match businesses.iter_mut().find(|b| b.0 == n.business_id) {
                Some(b) => b.2.push(id.clone()),
                None => businesses.push((n.business_id.clone(), n.tier_limit, vec![id.clone()])),
            }
        }
        for c in circuits.iter().filter(|c| c.phone_number_id == id) {
            let what = match c.state.as_str() {
                "circuit_open" => "circuit open",
                "rate_paused" => "rate-paused",
                other => other,
            };
            state.push_str(&format!(
                "; {what} on runner {} for {} more: {}",
                c.runner,
                left(c.until - now),
                c.reason
            ));
        }
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
            tier,
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
    for (business, limit, ids) in businesses {
        let count = tiers.group(&format!("business:{business}")).recipients;
        let limit = if limit > 0 {
            format!("/{limit}")
        } else {
            String::new()
        };
        out.push_str(&format!(
            "business {business}: {count}{limit} unique template recipients in 24 h (numbers {})\n",
            ids.join(", ")
        ));
    }
    out
}

/// Time left, in whole seconds.
fn left(d: chrono::TimeDelta) -> String {
    humantime::format_duration(Duration::from_secs(d.num_seconds().max(0) as u64)).to_string()
}
