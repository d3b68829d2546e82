//! `outbound-runner adopt [--dry-run] [--yes]`: makes the app's own `"OutboundJob"` (made by
//! Prisma Migrate, whatever its id type) ours, without touching its data or its columns' types.
//! The planner and the safe application are in [`crate::db::adopt`]; this is the command:
//! print the plan, ask, apply, report. docs/adoption.md has the operator's view.

use std::io::{BufRead, IsTerminal, Write};

use crate::config::Settings;
use crate::db::adopt::{self, AdoptError, Ownership};
use crate::db::{self, Pool};
use crate::exit;

#[derive(Debug, clap::Args)]
pub struct AdoptArgs {
    /// Print every statement, numbered, with what it does and why; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply without asking (required without a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// Runs `adopt`; returns the exit code.
pub async fn run(settings: &Settings, pool: &Pool, args: &AdoptArgs) -> anyhow::Result<u8> {
    // A session of its own: the migrations' lock and CREATE INDEX CONCURRENTLY need one.
    let mut conn = if pool.pooled() {
        let Some(direct) = db::direct_options(settings)? else {
            return Err(AdoptError::NeedsSession.into());
        };
        sqlx::Connection::connect_with(&direct).await?
    } else {
        pool.pg().acquire().await?.detach()
    };
    let ownership = adopt::ownership(&mut conn).await?;
    let plan = match adopt::plan_on(&mut conn).await {
        Err(AdoptError::NoTable) => {
            println!(
                "there is no \"OutboundJob\" to adopt: `outbound-runner migrate` creates ours"
            );
            return Ok(exit::OK);
        }
        other => other?,
    };
    if ownership == Ownership::Ours {
        if plan.is_empty() {
            println!("nothing to do: \"OutboundJob\" is ours already and current");
        } else {
            println!(
                "nothing to adopt: our migrations made \"OutboundJob\"; `outbound-runner \
                 migrate` applies the {} pending change(s)",
                plan.steps.len()
            );
        }
        return Ok(exit::OK);
    }
    print!("{}", plan.render());
    foreign_running_note(settings, pool).await;
    if args.dry_run {
        println!(
            "-- dry run: {} statement(s), nothing was changed; `outbound-runner adopt` applies them",
            plan.steps.len()
        );
        return Ok(exit::OK);
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "outbound-runner: refusing to adopt \"OutboundJob\" without confirmation: stdin \
                 is not a terminal; add --yes to do it, or --dry-run to look"
            );
            return Ok(exit::USAGE);
        }
        eprint!(
            "apply these {} statement(s) to the app's \"OutboundJob\"? [y/N] ",
            plan.steps.len()
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            eprintln!("not done");
            return Ok(exit::CHECK_FAILED);
        }
    }
    let mut say = |line: &str| println!("{line}");
    let applied = adopt::apply_watched(&mut conn, Some(pool.pg()), &mut say).await?;
    let _ = sqlx::Connection::close(conn).await;
    println!(
        "adopted: {} statement(s) applied; `outbound-runner migrate` and `run` now work as on a \
         fresh database",
        applied.steps.len()
    );
    Ok(exit::OK)
}

/// The app's own runner may still be working rows (`running`, no lease of ours): say how many
/// and what to do (docs/prisma.md, "The switch from the app's runner").
async fn foreign_running_note(settings: &Settings, pool: &Pool) {
    let grace = settings.runner.foreign_running_grace;
    let Ok(f) = crate::queue::store::foreign_running_before_adoption(pool, grace).await else {
        return;
    };
    if f.total == 0 {
        return;
    }
    println!(
        "-- note: {} job(s) are `running` by the app's own runner ({} updated within \
         runner.foreign_running_grace = {}): its cron (calling /api/jobs/run-outbound) is still \
         on, or it stopped mid-run. Turn the app's cron off first and let its runs finish \
         (docs/prisma.md, \"The switch\"); outbound-runner leaves such rows alone until they \
         have not changed for the grace.",
        f.total,
        f.recent,
        humantime::format_duration(grace)
    );
}
