//! The chaos suite: real `outbound-runner run` processes (3 instances × 4 workers, live mode)
//! against one database and the mock Cloud API, a producer inserting jobs at a steady rate, and
//! one fault per scenario. After each scenario the invariants are checked from the database and
//! the mock's record (see `check.rs`): no job lost, no message accepted twice, honest records.
//!
//! A test target of its own with its own harness (`harness = false`), so that
//! - the scenarios run one after another, alone: they start processes, restart PostgreSQL and
//!   measure recovery times, which a parallel test runner would disturb;
//! - the suite prints its table (one line per scenario) however it is run.
//!
//! ```text
//! cargo test --test chaos                    # every scenario, short form (CI)
//! cargo test --test chaos -- kill            # the scenarios whose name contains "kill"
//! CHAOS_LONG=1 cargo test --test chaos       # long forms
//! cargo test --release --test chaos          # against the release binary
//! CHAOS_REPORT=out.md cargo test --test chaos   # also write the table to a file
//! ```
//!
//! Arguments: name filters (substrings; `--exact` for whole names), `--skip NAME`, `--list`.
//! `--ignored` runs nothing (no scenario is ignored); other flags are accepted and ignored.

#![forbid(unsafe_code)]

#[allow(dead_code)]
#[path = "../integration/support/mod.rs"]
mod support;

mod check;
mod cluster;
mod fleet;
mod producer;
mod scenarios;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use scenarios::{Ctx, Row, SCENARIOS};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let (mut exact, mut list, mut ignored_only) = (false, false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--exact" => exact = true,
            "--list" => list = true,
            "--ignored" => ignored_only = true,
            "--skip" => skips.extend(it.next().cloned()),
            // Flags of libtest that take a value.
            "--test-threads" | "--format" | "--color" | "--logfile" | "-Z" => {
                it.next();
            }
            s if s.starts_with('-') => {}
            s => filters.push(s.to_string()),
        }
    }
    let selected: Vec<_> = SCENARIOS
        .iter()
        .filter(|s| {
            filters.is_empty()
                || filters.iter().any(|f| {
                    if exact {
                        s.name == f
                    } else {
                        s.name.contains(f.as_str())
                    }
                })
        })
        .filter(|s| !skips.iter().any(|k| s.name.contains(k.as_str())))
        .filter(|_| !ignored_only)
        .collect();
    if list {
        for s in &selected {
            println!("{}: test", s.name);
        }
        return ExitCode::SUCCESS;
    }

    let long = std::env::var("CHAOS_LONG").is_ok_and(|v| !v.is_empty() && v != "0");
    println!(
        "\nrunning {} chaos scenario(s), {} form",
        selected.len(),
        if long { "long" } else { "short" }
    );
    if selected.is_empty() {
        println!("\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n");
        return ExitCode::SUCCESS;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let (rows, failures) = rt.block_on(async {
        let ctx = Ctx::new(long);
        let mut rows: Vec<Row> = Vec::new();
        let mut failures: Vec<(String, String)> = Vec::new();
        for s in &selected {
            let t0 = Instant::now();
            println!("\n--- {} ---", s.name);
            let fut = (s.run)(ctx.clone());
            let bound = ctx.scenario_bound();
            // A task of its own: a panic fails this scenario, not the suite; dropping it kills
            // its processes (kill_on_drop).
            let handle = tokio::spawn(async move { tokio::time::timeout(bound, fut).await });
            let outcome = match handle.await {
                Ok(Ok(Ok(row))) => Ok(row),
                Ok(Ok(Err(e))) => Err(format!("{e:#}")),
                Ok(Err(_)) => Err(format!("did not finish within {bound:?}")),
                Err(e) => Err(panic_text(e)),
            };
            match outcome {
                Ok(mut row) => {
                    row.took = t0.elapsed();
                    println!("{}", scenarios::table_header());
                    println!("{}", row.line());
                    if row.skipped {
                        // Not run: reported as ignored, never counted as passed.
                        println!("test {} ... ignored, {}", s.name, row.notes);
                    } else {
                        println!("test {} ... ok ({:.1}s)", s.name, row.took.as_secs_f64());
                    }
                    rows.push(row);
                }
                Err(e) => {
                    println!(
                        "test {} ... FAILED ({:.1}s)",
                        s.name,
                        t0.elapsed().as_secs_f64()
                    );
                    println!("{e}");
                    failures.push((s.name.to_string(), e));
                }
            }
        }
        ctx.shutdown().await;
        (rows, failures)
    });
    rt.shutdown_timeout(Duration::from_secs(5));

    let table = scenarios::table(&rows);
    println!(
        "\nchaos results ({} form):\n\n{table}",
        if long { "long" } else { "short" }
    );
    if let Ok(path) = std::env::var("CHAOS_REPORT") {
        if let Err(e) = std::fs::write(&path, &table) {
            println!("could not write CHAOS_REPORT={path}: {e}");
        }
    }
    if !failures.is_empty() {
        println!("failures:");
        for (name, _) in &failures {
            println!("    {name}");
        }
    }
    let ok = failures.is_empty();
    let skipped = rows.iter().filter(|r| r.skipped).count();
    println!(
        "\ntest result: {}. {} passed; {} failed; {} ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if ok { "ok" } else { "FAILED" },
        rows.len() - skipped,
        failures.len(),
        skipped,
        SCENARIOS.len() - selected.len(),
        started.elapsed().as_secs_f64()
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn panic_text(e: tokio::task::JoinError) -> String {
    if e.is_panic() {
        let p = e.into_panic();
        if let Some(s) = p.downcast_ref::<&str>() {
            format!("panicked: {s}")
        } else if let Some(s) = p.downcast_ref::<String>() {
            format!("panicked: {s}")
        } else {
            "panicked".into()
        }
    } else {
        "cancelled".into()
    }
}
