//! What every section shares: arguments, fresh databases, CPU accounting from /proc, child
//! processes, medians and the table.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbound_runner::config::{LoadOptions, Settings};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Executor};

// ---------------------------------------------------------------------------------------------
// Arguments

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Section {
    Limit,
    Throughput,
    Pipeline,
    Latency,
    Large,
    Pooler,
    Idle,
    Budget,
    Cost,
    Statuses,
    Console,
}

impl Section {
    pub const ALL: [Section; 11] = [
        Section::Limit,
        Section::Throughput,
        Section::Pipeline,
        Section::Budget,
        Section::Cost,
        Section::Latency,
        Section::Large,
        Section::Pooler,
        Section::Idle,
        Section::Statuses,
        Section::Console,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Section::Limit => "limit",
            Section::Throughput => "throughput",
            Section::Pipeline => "pipeline",
            Section::Latency => "latency",
            Section::Large => "large",
            Section::Pooler => "pooler",
            Section::Idle => "idle",
            Section::Budget => "budget",
            Section::Cost => "cost",
            Section::Statuses => "statuses",
            Section::Console => "console",
        }
    }
}

impl FromStr for Section {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Section::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("unknown section {s:?}"))
    }
}

pub const USAGE: &str = "\
cargo bench --bench queue -- [options]

  --only SECTION[,SECTION…]  limit, throughput, pipeline, budget, cost, latency, large, pooler, idle,
                             statuses, console
                             (default: all)
  --quick                    small sizes and 1 run: a smoke test in about a minute
  --runs R                   runs per figure; each figure is the median (default 3, quick 1)
  --jobs N[,N…]              throughput sizes (default 20000,100000; quick 2000)
  --workers W[,W…]           worker counts = pgbench client counts (default 8,32; quick 8)
  --wakeup-jobs N            jobs of the wake-up latency section (default 500; quick 100)
  --large-rows N             the large table's big size (default 1000000; quick 100000)
  --idle-seconds S           the idle daemon's window (default 60; quick 5)
  --drain-cap S              stop a throughput drain after S seconds and rate the jobs done
                             by then (default 120; quick 30)

Needs a PostgreSQL it can create databases on: TEST_DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/postgres), pgbench (PATH or /usr/lib/postgresql/*/bin), and
for `pooler` pgbouncer (apt-get install pgbouncer).";

#[derive(Debug, Clone)]
pub struct Args {
    pub sections: Vec<Section>,
    pub quick: bool,
    pub runs: usize,
    pub sizes: Vec<usize>,
    pub workers: Vec<u32>,
    pub wakeup_jobs: usize,
    pub large_rows: usize,
    pub idle_seconds: u64,
    /// A drain still running after this is stopped and its rate taken from the jobs done.
    pub drain_cap: Duration,
}

impl Args {
    pub fn wants(&self, s: Section) -> bool {
        self.sections.contains(&s)
    }

    /// Claims measured per table and step of the large-table section.
    pub fn large_claims(&self) -> usize {
        if self.quick { 100 } else { 300 }
    }

    /// Jobs of the full-pipeline section with an instant mock.
    pub fn pipeline_jobs(&self) -> usize {
        if self.quick { 2_000 } else { 20_000 }
    }
}

fn list<T: FromStr>(flag: &str, v: Option<String>) -> Result<Vec<T>, String> {
    let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
    let out: Result<Vec<T>, _> = v
        .split(',')
        .map(|x| x.trim().replace('_', "").parse::<T>())
        .collect();
    match out {
        Ok(out) if !out.is_empty() => Ok(out),
        _ => Err(format!("{flag}: cannot read {v:?}")),
    }
}

fn one<T: FromStr>(flag: &str, v: Option<String>) -> Result<T, String> {
    let mut l = list::<T>(flag, v)?;
    if l.len() != 1 {
        return Err(format!("{flag} takes one value"));
    }
    Ok(l.remove(0))
}

pub fn parse_args(argv: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut quick = false;
    let mut sections = None;
    let mut runs = None;
    let mut sizes = None;
    let mut workers = None;
    let mut wakeup_jobs = None;
    let mut large_rows = None;
    let mut idle_seconds = None;
    let mut drain_cap = None;
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => sections = Some(list::<Section>("--only", it.next())?),
            "--runs" => runs = Some(one::<usize>("--runs", it.next())?),
            "--jobs" | "--sizes" => sizes = Some(list::<usize>("--jobs", it.next())?),
            "--workers" => workers = Some(list::<u32>("--workers", it.next())?),
            "--wakeup-jobs" => wakeup_jobs = Some(one::<usize>("--wakeup-jobs", it.next())?),
            "--large-rows" => large_rows = Some(one::<usize>("--large-rows", it.next())?),
            "--idle-seconds" => idle_seconds = Some(one::<u64>("--idle-seconds", it.next())?),
            "--drain-cap" => drain_cap = Some(one::<u64>("--drain-cap", it.next())?),
            // `cargo bench` passes --bench to every bench target.
            "--bench" => {}
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let a = Args {
        sections: sections.unwrap_or_else(|| Section::ALL.to_vec()),
        quick,
        runs: runs.unwrap_or(if quick { 1 } else { 3 }).max(1),
        sizes: sizes.unwrap_or_else(|| {
            if quick {
                vec![2_000]
            } else {
                vec![20_000, 100_000]
            }
        }),
        workers: workers.unwrap_or_else(|| if quick { vec![8] } else { vec![8, 32] }),
        wakeup_jobs: wakeup_jobs.unwrap_or(if quick { 100 } else { 500 }).max(1),
        large_rows: large_rows.unwrap_or(if quick { 100_000 } else { 1_000_000 }),
        idle_seconds: idle_seconds.unwrap_or(if quick { 5 } else { 60 }),
        drain_cap: Duration::from_secs(drain_cap.unwrap_or(if quick { 30 } else { 120 }).max(1)),
    };
    if a.workers.contains(&0) {
        return Err("--workers: at least 1".into());
    }
    if a.large_rows <= SMALL_QUEUE {
        return Err(format!("--large-rows: more than {SMALL_QUEUE}"));
    }
    Ok(a)
}

/// The small queue of the large-table section.
pub const SMALL_QUEUE: usize = 10_000;

// ---------------------------------------------------------------------------------------------
// Clean-up: databases and child processes to remove however the program ends

static DATABASES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Remembers a child process to kill if the program ends early.
pub fn register_child(pid: u32) {
    CHILDREN.lock().unwrap().push(pid);
}

pub fn forget_child(pid: u32) {
    CHILDREN.lock().unwrap().retain(|p| *p != pid);
}

/// Kills the children still running and drops the databases still present. Runs at the end,
/// after a panic, and on SIGINT/SIGTERM.
pub async fn cleanup() {
    let children: Vec<u32> = std::mem::take(&mut *CHILDREN.lock().unwrap());
    for pid in children {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let names: Vec<String> = std::mem::take(&mut *DATABASES.lock().unwrap());
    if names.is_empty() {
        return;
    }
    let Ok(admin) = admin_url().parse::<PgConnectOptions>() else {
        return;
    };
    match admin.connect().await {
        Ok(mut conn) => {
            for name in names {
                if let Err(e) = conn
                    .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
                    .await
                {
                    eprintln!("could not drop database {name}: {e}");
                }
            }
        }
        Err(e) => eprintln!("could not connect to drop {names:?}: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Databases

pub use crate::sql::admin_url;

/// A fresh database, dropped by [`Db::drop`] (or by [`cleanup`] if the program ends early).
pub struct Db {
    pub pool: PgPool,
    pub name: String,
    pub opts: PgConnectOptions,
}

impl Db {
    /// A fresh database with our schema.
    pub async fn new() -> Db {
        let db = Db::empty().await;
        outbound_runner::db::migrate(&db.pool).await.unwrap();
        db
    }

    /// A fresh database without the schema (the daemon migrates it itself).
    pub async fn empty() -> Db {
        let admin: PgConnectOptions = admin_url().parse().expect("TEST_DATABASE_URL");
        let name = format!(
            "or_bench_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let mut conn = admin.connect().await.expect("connecting to PostgreSQL");
        DATABASES.lock().unwrap().push(name.clone());
        conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .unwrap();
        let opts = admin.database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(opts.clone())
            .await
            .unwrap();
        Db { pool, name, opts }
    }

    /// The database's URL, for pgbench and the daemon.
    pub fn url(&self) -> String {
        let mut url = url::Url::parse(&admin_url()).expect("TEST_DATABASE_URL is a URL");
        url.set_path(&format!("/{}", self.name));
        url.to_string()
    }

    pub async fn drop(self) {
        self.pool.close().await;
        let admin: PgConnectOptions = admin_url().parse().unwrap();
        let mut conn = admin.connect().await.unwrap();
        conn.execute(format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name).as_str())
            .await
            .unwrap();
        DATABASES.lock().unwrap().retain(|n| *n != self.name);
    }

    /// Inserts `n` queued sandbox jobs in one statement (one NOTIFY).
    pub async fn insert(&self, n: usize) {
        self.insert_rows(n, false).await;
    }

    /// Inserts `n` rows: queued jobs, or (`finished`) jobs done 8 days ago, past retention.
    pub async fn insert_rows(&self, n: usize, finished: bool) {
        if n == 0 {
            return;
        }
        let sql = if finished {
            r#"INSERT INTO "OutboundJob" (payload, status, attempts, "startedAt", "completedAt",
                                          "createdAt", "updatedAt", "runAt")
               SELECT jsonb_build_object('to', '1555' || lpad(g::text, 7, '0'),
                      'message', '{"type":"text","text":{"body":"hello"}}'::jsonb),
                      'done', 1, t, t, t, t, t
               FROM generate_series(1, $1) g, (SELECT now() - interval '8 days' AS t) t"#
        } else {
            r#"INSERT INTO "OutboundJob" (payload)
               SELECT jsonb_build_object('to', '1555' || lpad(g::text, 7, '0'),
                      'message', '{"type":"text","text":{"body":"hello"}}'::jsonb)
               FROM generate_series(1, $1) g"#
        };
        sqlx::query(sql)
            .bind(n as i32)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    pub async fn vacuum(&self) {
        self.pool
            .execute(r#"VACUUM ANALYZE "OutboundJob""#)
            .await
            .unwrap();
    }

    pub async fn count(&self, status: &str) -> i64 {
        sqlx::query_scalar(r#"SELECT count(*) FROM "OutboundJob" WHERE status = $1"#)
            .bind(status)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// A pool for a runner with `s`, its connections opened before the clock starts (pgbench
    /// does not count its connection time either).
    pub async fn runner_pool(&self, s: &Settings) -> outbound_runner::db::Pool {
        // The daemon's own pool (size, statement cache), opened eagerly.
        let pool = outbound_runner::db::pool(s, self.opts.clone(), false);
        warm(&pool, s).await;
        pool
    }
}

/// Opens every connection of `pool` before the clock starts.
pub async fn warm(pool: &outbound_runner::db::Pool, s: &Settings) {
    let mut held = Vec::new();
    for _ in 0..s.pool_size() {
        held.push(pool.pg().acquire().await.unwrap());
    }
    drop(held);
}

impl Db {
    /// The pool as the runner's code takes it.
    pub fn queue_pool(&self) -> outbound_runner::db::Pool {
        self.pool.clone().into()
    }
}

/// The built-in settings with `workers` workers.
pub fn settings(workers: u32) -> Settings {
    let mut s = outbound_runner::config::load(&LoadOptions {
        config_path: None,
        skip_default_path: true,
        env: Default::default(),
    })
    .unwrap();
    s.runner.workers = workers;
    s
}

// ---------------------------------------------------------------------------------------------
// CPU from /proc

/// CPU seconds (user + system) of a process, from /proc/<pid>/stat.
pub fn cpu_of(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on.
    100.0
}

/// The server's share of the work: every backend connected to one database (they are
/// processes titled `postgres: … <user> <database> …`) plus the shared WAL writer,
/// checkpointer, background writer and autovacuum processes. Sampled every 50 ms on a thread
/// of its own, because backends end with their connections (pgbench's before we can look).
pub struct ServerCpu {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(f64, f64)>,
}

impl ServerCpu {
    pub fn start(database: &str) -> ServerCpu {
        Self::start_with(database, true)
    }

    /// Only the backends of `database`, without the shared processes (for figures near zero,
    /// which other databases' work would swamp).
    pub fn backends(database: &str) -> ServerCpu {
        Self::start_with(database, false)
    }

    fn start_with(database: &str, aux: bool) -> ServerCpu {
        let mut scanner = Scanner {
            needle: format!(" {database} "),
            aux,
            kinds: HashMap::new(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut baseline: HashMap<u32, f64> = HashMap::new();
        let mut last: HashMap<u32, f64> = HashMap::new();
        scanner.scan(&mut |pid, cpu| {
            baseline.insert(pid, cpu);
            last.insert(pid, cpu);
        });
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let own0 = cpu_of("thread-self");
            loop {
                let done = flag.load(Ordering::Relaxed);
                scanner.scan(&mut |pid, cpu| {
                    last.insert(pid, cpu);
                });
                if done {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let server = last
                .iter()
                .map(|(pid, cpu)| cpu - baseline.get(pid).copied().unwrap_or(0.0))
                .sum();
            (server, cpu_of("thread-self") - own0)
        });
        ServerCpu { stop, thread }
    }

    /// CPU seconds of the server since [`ServerCpu::start`], and of this sampler itself (to
    /// take out of our own process's figure).
    pub fn stop(self) -> (f64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or((0.0, 0.0))
    }
}

struct Scanner {
    needle: String,
    aux: bool,
    /// Whether a pid is a process of ours to count, decided once per pid.
    kinds: HashMap<u32, bool>,
}

impl Scanner {
    /// Whether `pid` is ours; `None` while a new backend has not set its title yet.
    fn classify(&self, pid: u32) -> Option<bool> {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        if !comm.starts_with("postgres") {
            return Some(false);
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let title = String::from_utf8_lossy(&cmdline);
        if !title.starts_with("postgres: ") {
            // The postmaster, or a backend just forked: look again next time.
            return None;
        }
        Some(
            title.contains(&self.needle)
                || self.aux
                    && [
                        "walwriter",
                        "checkpointer",
                        "background writer",
                        "autovacuum",
                    ]
                    .iter()
                    .any(|aux| title.contains(aux)),
        )
    }

    fn scan(&mut self, found: &mut dyn FnMut(u32, f64)) {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            let ours = match self.kinds.get(&pid) {
                Some(&ours) => ours,
                None => match self.classify(pid) {
                    Some(ours) => *self.kinds.entry(pid).or_insert(ours),
                    None => false,
                },
            };
            if ours {
                found(pid, cpu_of(&pid.to_string()));
            }
        }
    }
}

/// The 1-minute load average.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().take(3).collect();
            (f.len() == 3).then(|| f.join(" "))
        })
        .unwrap_or_else(|| "?".into())
}

// ---------------------------------------------------------------------------------------------
// Statistics and the table

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The p-quantile of sorted values (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// A whole number with thousands separators.
pub fn int(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < -0.5 { format!("-{out}") } else { out }
}

/// "median (min–max)" of rates, or just the value for one run.
pub fn rate(v: &[f64]) -> String {
    if v.len() < 2 {
        return int(median(v));
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{} ({}–{})", int(median(v)), int(lo), int(hi))
}

pub struct Row {
    pub section: &'static str,
    pub measure: String,
    pub setup: String,
    pub result: String,
    pub ratio: String,
    pub detail: String,
}

pub fn print_table(rows: &[Row]) {
    println!(
        "| section | measure | setup | result (median) | ratio (same run) | cost and detail |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.section, r.measure, r.setup, r.result, r.ratio, r.detail
        );
    }
}

/// Progress goes to stderr; the table alone goes to stdout.
#[macro_export]
macro_rules! progress {
    ($($t:tt)*) => { eprintln!("  · {}", format!($($t)*)) };
}

/// A runner with the sandbox handler and metrics of its own, on `pool` (see [`Db::runner_pool`]).
pub async fn sandbox_runner(
    pool: outbound_runner::db::Pool,
    s: Settings,
    mode: outbound_runner::runner::Mode,
) -> outbound_runner::runner::Runner {
    sandbox_runner_with(pool, None, s, mode).await
}

/// [`sandbox_runner`] reporting to metrics the caller keeps, to read its claims from.
pub async fn sandbox_runner_metered(
    pool: outbound_runner::db::Pool,
    s: Settings,
    mode: outbound_runner::runner::Mode,
) -> (
    outbound_runner::runner::Runner,
    Arc<outbound_runner::metrics::Metrics>,
) {
    runner_metered(
        pool,
        s,
        mode,
        Arc::new(outbound_runner::delivery::sandbox::SandboxHandler),
    )
    .await
}

/// [`sandbox_runner_metered`] with any handler.
pub async fn runner_metered(
    pool: outbound_runner::db::Pool,
    s: Settings,
    mode: outbound_runner::runner::Mode,
    handler: Arc<dyn outbound_runner::delivery::JobHandler>,
) -> (
    outbound_runner::runner::Runner,
    Arc<outbound_runner::metrics::Metrics>,
) {
    let metrics = Arc::new(outbound_runner::metrics::Metrics::new());
    let runner = outbound_runner::runner::Runner::builder(pool, Arc::new(s), handler)
        .metrics(metrics.clone())
        .mode(mode)
        .start()
        .await;
    (runner, metrics)
}

/// [`sandbox_runner`], LISTENing at `listen` (a direct URL's options) when given.
pub async fn sandbox_runner_with(
    pool: outbound_runner::db::Pool,
    listen: Option<PgConnectOptions>,
    s: Settings,
    mode: outbound_runner::runner::Mode,
) -> outbound_runner::runner::Runner {
    outbound_runner::runner::Runner::builder(
        pool,
        Arc::new(s),
        Arc::new(outbound_runner::delivery::sandbox::SandboxHandler),
    )
    .listen(listen)
    .mode(mode)
    .start()
    .await
}
