//! The queue benchmark: one program that prints issue 8's table (never a timed test).
//!
//! ```sh
//! cargo bench --bench queue                       # everything, each figure the median of 3 runs
//! cargo bench --bench queue -- --quick            # a smoke test in about a minute
//! cargo bench --bench queue -- --only throughput,limit --jobs 20000 --workers 8 --runs 5
//! ```
//!
//! Sections (`--only`), all against fresh databases on `TEST_DATABASE_URL` (default
//! postgres@127.0.0.1:5432), each dropped afterwards:
//! - `limit`: pgbench running the simplest SKIP LOCKED claim + complete, 1 and 50 jobs per
//!   transaction, at each worker count as its client count;
//! - `throughput`: pre-inserted sandbox jobs drained by an in-process runner; jobs/s, CPU of
//!   both sides, jobs per claim statement; as a percentage of the limit measured in the same
//!   round;
//! - `pipeline`: live delivery against the mock Cloud API (instant and 50 ms answers);
//! - `budget`: the built-in settings at Meta's rates and real latencies (200 ms Cloud API, 5 s
//!   orchestrator), the connections they hold, a role with `CONNECTION LIMIT 3`, RSS;
//! - `cost`: PostgreSQL CPU and transactions per message at rate 80 and 1,000 (200 ms Cloud
//!   API) and with instant answers, on the built-in settings;
//! - `latency`: wake-up latency of an idle runner, on the database's clock;
//! - `large`: claim latency with 10k vs 1M queued rows, beside 1M finished rows, after a prune;
//! - `pooler`: a sandbox drain (the first `--jobs` size) and idle wake-ups through a
//!   transaction-mode PgBouncer beside direct, with the connections on both sides of it (needs
//!   `pgbouncer` installed);
//! - `idle`: the daemon binary idle: CPU, wake-ups and RSS;
//! - `statuses`: Meta's status webhooks applied (statuses/s, PostgreSQL CPU per status), into
//!   the status writer and through signed POSTs to `/webhooks/whatsapp`;
//! - `console`: the web console's database cost: PostgreSQL CPU with 0 and 10 open tabs, idle
//!   and while 1,000 jobs/s flow, aggregate statements per refresh period, and each page's p95
//!   on `--large-rows` rows with the sequential scans of "OutboundJob" they caused.
//!
//! See `docs/benchmarks.md` for what each row means and the latest table.

#[path = "../../tests/integration/support/mock_meta.rs"]
mod mock_meta;
#[path = "../../tests/integration/support/mock_orchestrator.rs"]
#[allow(dead_code)]
mod mock_orchestrator;
#[path = "../../tests/integration/support/pgbouncer.rs"]
mod pgbouncer;
#[path = "../../tests/integration/support/sql.rs"]
#[allow(dead_code)]
mod sql;
#[path = "../../tests/integration/support/window.rs"]
mod window;

mod budget;
mod common;
mod console;
mod idle;
mod large;
mod latency;
mod pipeline;
mod pooler;
mod statuses;
mod throughput;

use std::time::Instant;

use common::{Args, Row, Section, cleanup, load_average, print_table};

async fn run_all(a: Args) -> Vec<Row> {
    let mut rows = Vec::new();
    if a.wants(Section::Limit) || a.wants(Section::Throughput) {
        eprintln!("limit and throughput…");
        rows.extend(throughput::run(&a).await);
    }
    if a.wants(Section::Pipeline) {
        eprintln!("full pipeline…");
        rows.extend(pipeline::run(&a).await);
    }
    if a.wants(Section::Budget) {
        eprintln!("budget: Meta's rates at real latency, on the built-in settings…");
        rows.extend(budget::run(&a).await);
    }
    if a.wants(Section::Cost) {
        eprintln!("cost: PostgreSQL CPU per message, live, built-in settings…");
        rows.extend(budget::cost(&a).await);
    }
    if a.wants(Section::Latency) {
        eprintln!("wake-up latency…");
        rows.extend(latency::run(&a).await);
    }
    if a.wants(Section::Large) {
        eprintln!("large table…");
        rows.extend(large::run(&a).await);
    }
    if a.wants(Section::Pooler) {
        eprintln!("through PgBouncer beside direct…");
        rows.extend(pooler::run(&a).await);
    }
    if a.wants(Section::Idle) {
        eprintln!("idle cost…");
        rows.extend(idle::run(&a).await);
    }
    if a.wants(Section::Statuses) {
        eprintln!("status webhooks…");
        rows.extend(statuses::run(&a).await);
    }
    if a.wants(Section::Console) {
        eprintln!("web console…");
        rows.extend(console::run(&a).await);
    }
    rows
}

#[tokio::main]
async fn main() {
    let a = match common::parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("{e}\n");
            }
            eprintln!("{}", common::USAGE);
            std::process::exit(if e.is_empty() { 0 } else { 2 });
        }
    };
    let load_before = load_average();
    let started = Instant::now();
    let sections: Vec<&str> = a.sections.iter().map(|s| s.name()).collect();
    eprintln!(
        "sections {}; {} run(s) per figure{}",
        sections.join(","),
        a.runs,
        if a.quick { " (quick)" } else { "" }
    );

    // Sections run on a task of their own, so a panic still reaches the clean-up below; so do
    // SIGINT and SIGTERM.
    let work = tokio::spawn(run_all(a.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let outcome = tokio::select! {
        r = work => r.map_err(|e| if e.is_panic() { "a section panicked".to_string() } else { e.to_string() }),
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
        _ = term.recv() => Err("terminated".into()),
    };
    cleanup().await;
    match outcome {
        Ok(rows) => {
            println!(
                "Median of {} run(s) per figure{}; ratios are medians of per-run ratios. \
                 Load average (1, 5, 15 min) {} before, {} after; {:.0} s in all.\n",
                a.runs,
                if a.quick { " (--quick)" } else { "" },
                load_before,
                load_average(),
                started.elapsed().as_secs_f64()
            );
            print_table(&rows);
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
