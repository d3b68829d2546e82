//! The limit (pgbench) and throughput (our runner draining pre-inserted jobs, with the sandbox
//! handler and with one that does nothing), measured in interleaved rounds so each of our figures
//! has a limit from the same minute beside it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbound_runner::delivery::sandbox::SandboxHandler;
use outbound_runner::delivery::{BoxFuture, Delivered, JobContext, JobHandler};
use outbound_runner::queue::{Job, JobError};
use outbound_runner::runner::Mode;

use crate::common::{
    Args, Db, Row, Section, ServerCpu, cpu_of, forget_child, int, median, rate, register_child,
    runner_metered, settings,
};
use crate::progress;

/// What the drained jobs do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Work {
    /// The sandbox handler: each message recorded `sent` in the ledger with the completion.
    Sandbox,
    /// Nothing: the job is claimed and marked `done`, as a no-op job of any other queue is
    /// (pgbench's scripts' work, and the figure to set beside another queue's no-op drain).
    Noop,
}

impl Work {
    const ALL: [Work; 2] = [Work::Sandbox, Work::Noop];

    fn name(self) -> &'static str {
        match self {
            Work::Sandbox => "sandbox",
            Work::Noop => "no-op",
        }
    }

    fn handler(self) -> Arc<dyn JobHandler> {
        match self {
            Work::Sandbox => Arc::new(SandboxHandler),
            Work::Noop => Arc::new(Noop),
        }
    }
}

/// A handler that does nothing and succeeds.
struct Noop;

impl JobHandler for Noop {
    fn handle<'a>(
        &'a self,
        _job: &'a Job,
        _ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<Delivered, JobError>> {
        Box::pin(async { Ok(Delivered::default()) })
    }
}

/// Jobs per transaction of the two pgbench scripts.
pub const BATCHES: [u32; 2] = [1, 50];

/// The simplest SKIP LOCKED claim + complete: one statement, one transaction, takes up to
/// `batch` due jobs in claim order and marks them done.
fn script(batch: u32) -> String {
    format!(
        r#"UPDATE "OutboundJob" j SET status = 'done', attempts = j.attempts + 1, "completedAt" = now(), "updatedAt" = now() FROM (SELECT id FROM "OutboundJob" WHERE status = 'queued' AND "runAt" <= now() ORDER BY priority, "runAt", id LIMIT {batch} FOR UPDATE SKIP LOCKED) c WHERE j.id = c.id;
"#
    )
}

/// pgbench: on PATH, else the newest server's.
fn pgbench_path() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("pgbench"))
            .find(|f| f.is_file())
    });
    on_path.or_else(|| {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin/pgbench"))
            .filter(|f| f.is_file())
            .collect();
        found.sort();
        found.pop()
    })
}

#[derive(Debug, Clone, Copy)]
struct Limit {
    jobs_per_s: f64,
    server_cpu: f64,
    jobs: f64,
}

/// One pgbench run on a fresh database: `clients` clients, `batch` jobs per transaction, about
/// `jobs` jobs in all (the same as the drain it is compared with: the claim's index scan walks
/// the entries of the jobs claimed before it, so the cost per job grows with the drain).
async fn pgbench(jobs: usize, clients: u32, batch: u32) -> Limit {
    let exe = pgbench_path().expect("pgbench not found on PATH or in /usr/lib/postgresql/*/bin");
    let per_client = jobs.div_ceil((clients * batch) as usize).max(1);
    let transactions = per_client * clients as usize;
    let db = Db::new().await;
    // One batch per client to spare, so no transaction finds the queue empty.
    db.insert((transactions + clients as usize) * batch as usize)
        .await;
    db.vacuum().await;
    let file = std::env::temp_dir().join(format!("{}.sql", db.name));
    std::fs::write(&file, script(batch)).unwrap();
    let threads = clients.min(
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(2),
    );
    let server = ServerCpu::start(&db.name);
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.args(["-n", "-M", "prepared", "-c"])
        .arg(clients.to_string())
        .arg("-j")
        .arg(threads.to_string())
        .arg("-t")
        .arg(per_client.to_string())
        .arg("-f")
        .arg(&file)
        .arg(db.url())
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("starting pgbench");
    let pid = child.id().unwrap_or(0);
    register_child(pid);
    let out = child.wait_with_output().await.expect("pgbench");
    forget_child(pid);
    let (server_cpu, _) = server.stop();
    let _ = std::fs::remove_file(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "tps = 1234.5 (without initial connection time)"
    let tps: f64 = stdout
        .lines()
        .find(|l| l.starts_with("tps = ") && l.contains("without initial connection time"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench's output: {stdout}"));
    let done = db.count("done").await as f64;
    db.drop().await;
    // Every transaction took a full batch unless the queue ran short; count what was done.
    Limit {
        jobs_per_s: tps * done / transactions as f64,
        server_cpu,
        jobs: done,
    }
}

#[derive(Debug, Clone, Copy)]
struct Drain {
    /// Jobs done: all of them, unless the drain hit the time cap.
    jobs: f64,
    capped: bool,
    jobs_per_s: f64,
    runner_cpu: f64,
    server_cpu: f64,
    jobs_per_claim: f64,
    ms_per_claim: f64,
}

/// Our runner draining `jobs` pre-inserted jobs doing `work` with `workers` workers; stopped
/// after `cap` (its rate is then that of the jobs done so far).
async fn drain(jobs: usize, workers: u32, cap: Duration, work: Work) -> Drain {
    let db = Db::new().await;
    db.insert(jobs).await;
    // Statistics, as autovacuum would have gathered them on a live table.
    db.vacuum().await;
    let s = settings(workers);
    let pool = db.runner_pool(&s).await;
    let server = ServerCpu::start(&db.name);
    let own0 = cpu_of("self");
    let start = Instant::now();
    let (r, m) = runner_metered(pool, s, Mode::Daemon, work.handler()).await;
    let mut finished = r.finished();
    let capped = tokio::time::timeout(cap, finished.wait_for(|n| *n >= jobs as u64))
        .await
        .is_err();
    let elapsed = start.elapsed();
    let done = (*finished.borrow()).min(jobs as u64) as f64;
    let (server_cpu, sampler_cpu) = server.stop();
    let runner_cpu = cpu_of("self") - own0 - sampler_cpu;
    let claims = m.claim_duration.get_sample_count() as f64;
    let d = Drain {
        jobs: done,
        capped,
        jobs_per_s: done / elapsed.as_secs_f64(),
        runner_cpu,
        server_cpu,
        jobs_per_claim: m.jobs_claimed.get() as f64 / claims,
        ms_per_claim: m.claim_duration.get_sample_sum() / claims * 1000.0,
    };
    r.shutdown().await;
    if !capped {
        assert_eq!(db.count("done").await, jobs as i64, "every job done");
    }
    db.drop().await;
    d
}

pub async fn run(a: &Args) -> Vec<Row> {
    let do_limit = a.wants(Section::Limit);
    let do_tp = a.wants(Section::Throughput);
    let mut limits: BTreeMap<(u32, usize, u32), Vec<Limit>> = BTreeMap::new();
    let mut drains: BTreeMap<(u32, usize, Work), Vec<Drain>> = BTreeMap::new();
    for round in 1..=a.runs {
        for &w in &a.workers {
            for &n in &a.sizes {
                if do_limit {
                    for batch in BATCHES {
                        let l = pgbench(n, w, batch).await;
                        progress!(
                            "round {round}/{}: pgbench, {n} jobs, {w} clients, {batch} per transaction: {} jobs/s",
                            a.runs,
                            int(l.jobs_per_s)
                        );
                        limits.entry((w, n, batch)).or_default().push(l);
                    }
                }
                for work in Work::ALL.into_iter().filter(|_| do_tp) {
                    let d = drain(n, w, a.drain_cap, work).await;
                    progress!(
                        "round {round}/{}: drain {n} {} jobs, {w} workers: {} jobs/s, {:.1} jobs/claim{}",
                        a.runs,
                        work.name(),
                        int(d.jobs_per_s),
                        d.jobs_per_claim,
                        if d.capped {
                            format!(
                                " (stopped at the {} s cap after {} jobs)",
                                a.drain_cap.as_secs(),
                                int(d.jobs)
                            )
                        } else {
                            String::new()
                        }
                    );
                    drains.entry((w, n, work)).or_default().push(d);
                }
            }
        }
    }

    let mut rows = Vec::new();
    // Per worker count and size: the two limits, then our drain beside them.
    for &w in &a.workers {
        for &n in &a.sizes {
            for batch in BATCHES {
                if let Some(ls) = limits.get(&(w, n, batch)) {
                    rows.push(limit_row(w, batch, ls));
                }
            }
            for work in Work::ALL {
                if let Some(ds) = drains.get(&(w, n, work)) {
                    let ls: Vec<Option<&Vec<Limit>>> =
                        BATCHES.iter().map(|b| limits.get(&(w, n, *b))).collect();
                    rows.push(drain_row(w, n, work, ds, &ls, a.drain_cap));
                }
            }
        }
    }
    rows
}

fn limit_row(w: u32, batch: u32, ls: &[Limit]) -> Row {
    let rates: Vec<f64> = ls.iter().map(|l| l.jobs_per_s).collect();
    let cpu_us: Vec<f64> = ls.iter().map(|l| l.server_cpu / l.jobs * 1e6).collect();
    Row {
        section: "limit",
        measure: format!(
            "pgbench: SKIP LOCKED claim + complete, {batch} job{} per transaction",
            if batch == 1 { "" } else { "s" }
        ),
        setup: format!(
            "{} jobs, {w} clients",
            int(ls.first().map(|l| l.jobs).unwrap_or(0.0))
        ),
        result: format!("{} jobs/s", rate(&rates)),
        ratio: String::new(),
        detail: format!("PostgreSQL {:.0} µs CPU/job", median(&cpu_us)),
    }
}

/// Our drain, with its ratio to each limit of the same round (`ls`, in [`BATCHES`] order).
fn drain_row(
    w: u32,
    n: usize,
    work: Work,
    ds: &[Drain],
    ls: &[Option<&Vec<Limit>>],
    cap: Duration,
) -> Row {
    let rates: Vec<f64> = ds.iter().map(|d| d.jobs_per_s).collect();
    let mut ratio = Vec::new();
    for (batch, l) in BATCHES.iter().zip(ls) {
        if let Some(l) = l {
            let r: Vec<f64> = ds
                .iter()
                .zip(l.iter())
                .map(|(d, l)| d.jobs_per_s / l.jobs_per_s * 100.0)
                .collect();
            ratio.push(format!("{:.0} % of the {batch}-job limit", median(&r)));
        }
    }
    let pick = |f: fn(&Drain) -> f64| median(&ds.iter().map(f).collect::<Vec<_>>());
    let capped: Vec<String> = ds
        .iter()
        .filter(|d| d.capped)
        .map(|d| format!("{} jobs done, {} jobs/s", int(d.jobs), int(d.jobs_per_s)))
        .collect();
    Row {
        section: "throughput",
        measure: format!("{} jobs drained by the runner", work.name()),
        setup: format!("{} jobs, {w} workers", int(n as f64)),
        result: format!("{} jobs/s", rate(&rates)),
        ratio: ratio.join(", "),
        detail: format!(
            "CPU {:.0} µs runner + {:.0} µs PostgreSQL per job; {:.1} jobs/claim, {:.2} ms/claim{}",
            pick(|d| d.runner_cpu / d.jobs * 1e6),
            pick(|d| d.server_cpu / d.jobs * 1e6),
            pick(|d| d.jobs_per_claim),
            pick(|d| d.ms_per_claim),
            if !capped.is_empty() {
                format!(
                    "; **{} of {} runs stopped at the {} s cap** ({})",
                    capped.len(),
                    ds.len(),
                    cap.as_secs(),
                    capped.join("; ")
                )
            } else {
                String::new()
            }
        ),
    }
}
