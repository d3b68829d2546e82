//! The scenarios. Each one: a fresh database, the mock Cloud API, 3 daemons × 4 workers in live
//! mode, a producer at a steady rate; a warm-up; one fault; the fault ends, the producer stops;
//! the queue must drain within the drain window; then the invariants (`check.rs`).
//!
//! Recovery time is measured from the end of the fault to the moment no job is `queued` or
//! `running`. Short forms run in CI; `CHAOS_LONG=1` selects the long forms (longer faults, more
//! repetitions).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use sqlx::{Connection, Executor, PgPool};
use tokio::sync::OnceCell;

use crate::check::{self, Counts};
use crate::cluster::{self, Db, Private, Server};
use crate::fleet::Fleet;
use crate::producer::Producer;
use crate::support::mock_meta::{self, Limits, MockMeta, Reply, Webhooks};
use crate::support::proxy::{Proxy, upstream_of};

pub type Fut = Pin<Box<dyn Future<Output = anyhow::Result<Row>> + Send>>;

pub struct Scenario {
    pub name: &'static str,
    pub run: fn(Ctx) -> Fut,
}

/// One entry per scenario, named after its function.
macro_rules! scenarios {
    ($($f:ident),* $(,)?) => {
        &[$(Scenario { name: stringify!($f), run: |c| Box::pin($f(c)) }),*]
    };
}

/// In the order they run (the table's order).
pub static SCENARIOS: &[Scenario] = scenarios![
    kill9_once,
    kill9_marked_ahead,
    kill9_repeated,
    paused_past_its_lease,
    postgres_restart,
    postgres_crash,
    terminate_storm,
    pool_exhaustion,
    idle_in_transaction,
    mock_faults,
    lost_notifications,
    future_jobs,
    backoff_survives_restart,
    database_down_at_start,
    read_only_database,
    full_disk,
    postgres_crash_before_done,
    poison_rows,
];

// ---------------------------------------------------------------------------------------------
// The suite's context and its table.

/// What every scenario shares: the form, and the private cluster (started on first use).
#[derive(Clone)]
pub struct Ctx {
    pub long: bool,
    private: Arc<OnceCell<Arc<Private>>>,
}

impl Ctx {
    pub fn new(long: bool) -> Ctx {
        Ctx {
            long,
            private: Arc::default(),
        }
    }

    /// The short or the long value.
    pub fn pick<T>(&self, short: T, long: T) -> T {
        if self.long { long } else { short }
    }

    pub fn scenario_bound(&self) -> Duration {
        self.pick(Duration::from_secs(150), Duration::from_secs(30 * 60))
    }

    /// The private cluster (restarts, crashes, connection and xmin hogs happen there).
    pub async fn private(&self) -> anyhow::Result<Arc<Private>> {
        self.private
            .get_or_try_init(|| async { Private::start().await.map(Arc::new) })
            .await
            .cloned()
    }

    pub async fn shutdown(&self) {
        if let Some(p) = self.private.get() {
            p.shutdown().await;
        }
    }
}

/// One line of the table.
#[derive(Debug, Default, Clone)]
pub struct Row {
    pub name: &'static str,
    pub counts: Counts,
    /// Fault end → queue drained.
    pub recovery: Option<Duration>,
    pub notes: String,
    pub took: Duration,
    /// Could not run here; `notes` says why.
    pub skipped: bool,
}

pub fn table_header() -> String {
    "| scenario | jobs | lost | duplicated | unknown (accepted by the mock) | failed | recovery | notes |\n\
     |---|---:|---:|---:|---:|---:|---:|---|"
        .to_string()
}

impl Row {
    pub fn line(&self) -> String {
        if self.skipped {
            return format!(
                "| {} | - | - | - | - | - | - | skipped: {} |",
                self.name, self.notes
            );
        }
        let c = &self.counts;
        format!(
            "| {} | {} | {} | {} | {} ({}) | {} | {} | {} |",
            self.name,
            c.jobs,
            c.lost,
            c.duplicated,
            c.unknown,
            c.unknown_accepted,
            c.failed,
            self.recovery
                .map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64())),
            self.notes
        )
    }
}

pub fn table(rows: &[Row]) -> String {
    let mut out = table_header();
    out.push('\n');
    for r in rows {
        out.push_str(&r.line());
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// A scenario's set-up and its end.

/// How a scenario's daemons are configured.
pub struct Opts {
    /// Jobs per second the producer inserts.
    pub rate: u32,
    /// `runner.poll_interval`.
    pub poll: &'static str,
    /// The mock's answer latency.
    pub latency: Duration,
    /// The daemons reach the database through a proxy on this port.
    pub db_port: Option<u16>,
    /// The daemons LISTEN through a proxy on this port (`database.listen_url`).
    pub listen_port: Option<u16>,
    /// Extra variables for one slot.
    pub per_slot: Vec<Vec<(String, String)>>,
    /// Wait for every daemon's "ready" (false: the database is meant to be away).
    pub wait_ready: bool,
    /// How many daemons.
    pub instances: usize,
    /// Extra variables for every daemon (they override the defaults).
    pub extra: Vec<(&'static str, &'static str)>,
    /// Status webhooks on: the daemons take them (`whatsapp.app_secret`), and the mock sends
    /// `sent`, `delivered`, `read` for every message it accepts to whichever daemon is up,
    /// retrying until one answers 2xx, like Meta.
    pub webhooks: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            rate: 40,
            poll: "30s",
            latency: Duration::from_millis(100),
            db_port: None,
            listen_port: None,
            per_slot: Vec::new(),
            wait_ready: true,
            instances: INSTANCES,
            extra: Vec::new(),
            webhooks: false,
        }
    }
}

pub const INSTANCES: usize = 3;
pub const WORKERS: u32 = 4;
/// The short faults drain well within this; a job backing off after a fault waits at most
/// `retry.cap` (2 s) per attempt.
const DRAIN_WINDOW: Duration = Duration::from_secs(60);
/// After the drain, for the last status webhooks to be answered (each sent 100 ms after the
/// one before, retried every 250 ms).
const WEBHOOK_WINDOW: Duration = Duration::from_secs(30);

fn via_port(url: &str, port: u16) -> String {
    let mut u = url::Url::parse(url).expect("database url");
    u.set_host(Some("127.0.0.1")).unwrap();
    u.set_port(Some(port)).unwrap();
    u.to_string()
}

/// The app secret of the scenarios with status webhooks.
const WEBHOOK_SECRET: &str = "chaos-app-secret-5d1e";

/// The daemons' environment: live delivery to the mock, short leases and backoffs.
pub fn daemon_env(db: &Db, mock: &MockMeta, opts: &Opts) -> BTreeMap<String, String> {
    let url = match opts.db_port {
        Some(p) => via_port(&db.url, p),
        None => db.url.clone(),
    };
    let mut env: BTreeMap<String, String> = [
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("HOME", std::env::temp_dir().to_string_lossy().into_owned()),
        ("NO_COLOR", "1".into()),
        ("RUST_LOG", "info,sqlx=warn,hyper=warn,reqwest=warn".into()),
        ("DATABASE_URL", url),
        ("OUTBOUND_RUNNER__RUNNER__WORKERS", WORKERS.to_string()),
        ("OUTBOUND_RUNNER__RUNNER__LEASE", "3s".into()),
        ("OUTBOUND_RUNNER__RUNNER__RESCUE_INTERVAL", "1s".into()),
        ("OUTBOUND_RUNNER__RUNNER__POLL_INTERVAL", opts.poll.into()),
        ("OUTBOUND_RUNNER__RUNNER__JOB_TIMEOUT", "15s".into()),
        ("OUTBOUND_RUNNER__RUNNER__DRAIN_TIMEOUT", "2s".into()),
        ("OUTBOUND_RUNNER__RETRY__BASE", "250ms".into()),
        ("OUTBOUND_RUNNER__RETRY__CAP", "2s".into()),
        ("OUTBOUND_RUNNER__DELIVERY__MODE", "live".into()),
        ("OUTBOUND_RUNNER__WHATSAPP__API_BASE", mock.api_base()),
        (
            "OUTBOUND_RUNNER__WHATSAPP__PHONE_NUMBER_ID",
            mock_meta::PHONE_NUMBER_ID.into(),
        ),
        (
            "OUTBOUND_RUNNER__WHATSAPP__ACCESS_TOKEN",
            mock_meta::TOKEN.into(),
        ),
        ("OUTBOUND_RUNNER__WHATSAPP__PAIR_INTERVAL", "0s".into()),
        ("OUTBOUND_RUNNER__WHATSAPP__RATE_PER_SECOND", "1000".into()),
        ("OUTBOUND_RUNNER__WHATSAPP__TIMEOUT", "2s".into()),
        ("OUTBOUND_RUNNER__HTTP__LISTEN", "127.0.0.1:0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if opts.webhooks {
        env.insert("WHATSAPP_APP_SECRET".into(), WEBHOOK_SECRET.into());
    }
    for (k, v) in &opts.extra {
        env.insert(k.to_string(), v.to_string());
    }
    if let Some(p) = opts.listen_port {
        env.insert(
            "OUTBOUND_RUNNER__DATABASE__LISTEN_URL".into(),
            via_port(&db.url, p),
        );
    }
    env
}

/// A running scenario.
pub struct Setup {
    pub name: &'static str,
    pub db: Db,
    pub mock: MockMeta,
    pub fleet: Fleet,
    pub producer: Producer,
    /// The server's `postgres` database, for faults.
    pub admin: PgPool,
    pub http: reqwest::Client,
    /// The scenario kills daemons: a send cut between its `sending` mark and its request is
    /// `unknown` without having reached the mock, legitimately. Without kills that never happens.
    pub kills: bool,
    /// The mock sends status webhooks (see [`Opts::webhooks`]).
    pub webhooks: bool,
}

impl Setup {
    pub async fn new(name: &'static str, server: &Server, opts: Opts) -> anyhow::Result<Setup> {
        let db = server.create_db().await?;
        Self::on(name, server, db, opts).await
    }

    /// On a database created beforehand (a scenario that needs its URL first).
    pub async fn on(
        name: &'static str,
        server: &Server,
        db: Db,
        opts: Opts,
    ) -> anyhow::Result<Setup> {
        let mock = MockMeta::start_with(Limits::default(), opts.latency).await;
        let env = daemon_env(&db, &mock, &opts);
        let per_slot = opts.per_slot.clone();
        let mut fleet = Fleet::spawn(opts.instances, &env, |slot| {
            per_slot.get(slot).cloned().unwrap_or_default()
        })?;
        if opts.wait_ready {
            fleet.all_ready(Duration::from_secs(60)).await?;
        }
        if opts.webhooks {
            // A request that reached the mock is accepted even if its daemon is killed while the
            // mock takes its time: a send in doubt that Meta did accept.
            mock.finish_when_cut(true);
            // Before the first job: every message the mock accepts has its webhooks.
            mock.send_webhooks(Webhooks {
                delay: Duration::from_millis(100),
                receivers: Some(fleet.receivers.clone()),
                retry: Some(Duration::from_millis(250)),
                ..Webhooks::to(String::new(), WEBHOOK_SECRET)
            });
        }
        let producer = Producer::start(&db.url, opts.rate).await?;
        Ok(Setup {
            name,
            admin: cluster::admin_pool(server).await?,
            db,
            mock,
            fleet,
            producer,
            http: reqwest::Client::new(),
            kills: false,
            webhooks: opts.webhooks,
        })
    }

    /// Jobs `done` so far.
    pub async fn done(&self) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar(r#"SELECT count(*) FROM "OutboundJob" WHERE status = 'done'"#)
                .fetch_one(&self.db.pool)
                .await?,
        )
    }

    /// Waits until `n` jobs are done: the fleet is up and delivering.
    pub async fn warm(&self, n: i64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.done().await? < n {
            if Instant::now() > deadline {
                bail!(
                    "warm-up: fewer than {n} jobs done in 30 s\n{}",
                    self.fleet.tails(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Waits until every daemon's `/readyz` answers 200; how long that took.
    pub async fn all_ready_http(&self, within: Duration) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        for d in &self.fleet.daemons {
            loop {
                if d.readyz(&self.http).await == Some(200) {
                    break;
                }
                if t0.elapsed() > within {
                    bail!(
                        "daemon {} not ready (/readyz) within {within:?}\n{}",
                        d.slot,
                        self.fleet.tails(20)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(t0.elapsed())
    }

    /// Waits (up to `within`) until daemon `slot` has a job in flight, so a kill lands mid-run.
    /// Returns whether it did.
    pub async fn busy(&self, slot: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let d = &self.fleet.daemons[slot];
            if d.metric(&self.http, "outbound_runner_workers_busy", "")
                .await
                .unwrap_or(0.0)
                >= 1.0
            {
                return true;
            }
            sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Inserts one job and waits until every daemon counted a NOTIFY wake-up: LISTEN works.
    pub async fn notify_reaches_all(&self, within: Duration) -> anyhow::Result<()> {
        let metric = "outbound_runner_wakeups_total";
        let label = r#"source="notify""#;
        let mut before = Vec::new();
        for d in &self.fleet.daemons {
            before.push(d.metric(&self.http, metric, label).await.unwrap_or(0.0));
        }
        self.producer.burst(1, Duration::ZERO).await?;
        let deadline = Instant::now() + within;
        for (d, b) in self.fleet.daemons.iter().zip(before) {
            loop {
                if d.metric(&self.http, metric, label).await.unwrap_or(0.0) > b {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "daemon {} was not woken by a NOTIFY within {within:?}",
                        d.slot
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Ends the scenario: the producer stops, the queue must drain, the invariants must hold,
    /// every daemon must still be running. `fault_end` starts the recovery clock.
    pub async fn finish(mut self, fault_end: Instant, notes: String) -> anyhow::Result<Row> {
        self.producer.stop().await;
        let drained = check::drained(&self.db.pool, DRAIN_WINDOW).await;
        let mut late = Vec::new();
        if self.webhooks {
            // Every accepted message's webhooks answered 2xx by a daemon, and applied.
            if !self.mock.webhooks_done(WEBHOOK_WINDOW).await {
                late.push(format!(
                    "the mock's status webhooks were not all answered 2xx within {WEBHOOK_WINDOW:?}"
                ));
            } else if !check::no_early_statuses(&self.db.pool, Duration::from_secs(15)).await {
                late.push("statuses still waiting in \"OutboundEarlyStatus\" after 15 s".into());
            }
        }
        let mut counts = check::verify(
            &self.db.pool,
            &self.mock,
            &self.producer.ids(),
            self.webhooks,
        )
        .await?;
        counts.violations.extend(late);
        let dead = self.fleet.dead();
        if !dead.is_empty() {
            counts
                .violations
                .push(format!("daemons exited on their own: slots {dead:?}"));
        }
        if drained.is_none() {
            counts
                .violations
                .push(format!("the queue did not drain within {DRAIN_WINDOW:?}"));
        }
        // After all that, each daemon still stops cleanly: SIGTERM, drain, exit 0.
        let codes = self.fleet.stop(Duration::from_secs(15)).await;
        if codes.iter().any(|c| *c != Some(0)) {
            counts
                .violations
                .push(format!("exit codes after SIGTERM: {codes:?} (expected 0)"));
        }
        if !self.kills && counts.unknown_unseen > 0 {
            counts.violations.push(format!(
                "{} unknown messages never reached the mock although no daemon was killed: a \
                 send that never left was taken for one in doubt",
                counts.unknown_unseen
            ));
        }
        let mut notes = notes;
        if self.webhooks {
            let settled = self.fleet.sum("Meta's statuses decided jobs", "settled");
            notes.push_str(&format!(
                "; webhooks: {} messages accepted, {} read ({} jobs settled from unknown to done \
                 by a webhook, {} cut before their rest left), {} left unknown, {} never reached \
                 the mock; {} webhook attempts retried",
                counts.accepted,
                counts.read,
                settled,
                counts.unsent_rest,
                counts.unknown,
                counts.unknown_unseen,
                self.mock.webhook_retries()
            ));
        } else if counts.unknown_unseen > 0 {
            notes.push_str(&format!(
                "; {} unknown never reached the mock",
                counts.unknown_unseen
            ));
        }
        if counts.failed > 0 {
            notes.push_str(&format!("; failed: {}", counts.failed_summary()));
        }
        if self.producer.errors() > 0 {
            notes.push_str(&format!(
                "; {} inserts refused during the fault",
                self.producer.errors()
            ));
        }
        let row = Row {
            name: self.name,
            recovery: drained.map(|t| t.saturating_duration_since(fault_end)),
            counts: counts.clone(),
            notes: notes.trim_start_matches("; ").to_string(),
            took: Duration::ZERO,
            skipped: false,
        };
        if !counts.violations.is_empty() {
            let report = format!(
                "{}\n{}\nINVARIANTS VIOLATED:\n  {}\n{}",
                table_header(),
                row.line(),
                counts.violations.join("\n  "),
                self.fleet.tails(30)
            );
            self.cleanup().await;
            bail!(report);
        }
        self.cleanup().await;
        Ok(row)
    }

    async fn cleanup(mut self) {
        // CHAOS_LOGS=DIR keeps every daemon's log: DIR/<scenario>.<slot>.log.
        if let Some(dir) = std::env::var_os("CHAOS_LOGS") {
            let dir = std::path::PathBuf::from(dir);
            let _ = std::fs::create_dir_all(&dir);
            for d in &self.fleet.daemons {
                let _ = std::fs::write(
                    dir.join(format!("{}.{}.log", self.name, d.slot)),
                    d.log.all(),
                );
            }
        }
        for d in &mut self.fleet.daemons {
            d.kill9().await;
        }
        self.producer.stop().await;
        self.admin.close().await;
        self.db.drop_db().await;
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

async fn sleep(d: Duration) {
    tokio::time::sleep(d).await;
}

// ---------------------------------------------------------------------------------------------
// 1. kill -9

/// One instance is killed with SIGKILL mid-run, stays down a while, and is started again. Its
/// claims expire and the others rescue them; a send it had in flight becomes `unknown`. Status
/// webhooks on: a send in doubt that reached the mock is settled by its webhooks (never resent);
/// only sends that never reached it stay `unknown`.
async fn kill9_once(ctx: Ctx) -> anyhow::Result<Row> {
    let opts = Opts {
        webhooks: true,
        ..Opts::default()
    };
    kill9_one(ctx, "kill9_once", opts, Duration::from_secs(30), None).await
}

/// The number is paced below what the producer inserts (8 messages/s per daemon against 40
/// jobs/s), so its slots are taken ahead and each send's `sending` mark is written up to a
/// mark span before its request leaves. One daemon is killed with SIGKILL while it holds such
/// marks: a message marked but never sent is in doubt like one cut off mid-request (`unknown`,
/// never sent again, settled by its webhooks if it did reach the mock), and nothing is sent
/// twice or lost.
async fn kill9_marked_ahead(ctx: Ctx) -> anyhow::Result<Row> {
    let opts = Opts {
        webhooks: true,
        extra: vec![
            ("OUTBOUND_RUNNER__WHATSAPP__RATE_PER_SECOND", "8"),
            ("OUTBOUND_RUNNER__RUNNER__WORKERS", "8"),
        ],
        ..Opts::default()
    };
    // Two seconds of backlog first: the slots are taken a second ahead, the marks a span
    // before their sends.
    let backlog = Some(Duration::from_secs(2));
    kill9_one(
        ctx,
        "kill9_marked_ahead",
        opts,
        Duration::from_secs(20),
        backlog,
    )
    .await
}

/// Instance 0 is killed with SIGKILL (after `backlog`, if given, with the count of messages
/// marked `sending` at that moment in the note), stays down 3 s (`down_long` in the long form)
/// and is started again.
async fn kill9_one(
    ctx: Ctx,
    name: &'static str,
    opts: Opts,
    down_long: Duration,
    backlog: Option<Duration>,
) -> anyhow::Result<Row> {
    let mut s = Setup::new(name, &Server::Shared, opts).await?;
    s.kills = true;
    s.warm(40).await?;
    let down = ctx.pick(Duration::from_secs(3), down_long);
    if let Some(backlog) = backlog {
        sleep(backlog).await;
    }
    let busy = s.busy(0, Duration::from_secs(5)).await;
    let marked = match backlog {
        Some(_) => {
            let n: i64 = sqlx::query_scalar(
                r#"SELECT count(*) FROM "OutboundMessage" WHERE status = 'sending'"#,
            )
            .fetch_one(&s.db.pool)
            .await?;
            format!(" with {n} messages marked sending across the fleet")
        }
        None => String::new(),
    };
    s.fleet.kill9(0).await;
    sleep(down).await;
    s.fleet.restart(0).await?;
    let fault_end = Instant::now();
    let retried = attempts_over_one(&s.db.pool).await?;
    s.finish(
        fault_end,
        format!(
            "instance 0 killed{}{marked}, down {}; {retried} jobs ran more than once",
            if busy { " with jobs in flight" } else { "" },
            secs(down)
        ),
    )
    .await
}

/// A random instance is killed every couple of seconds and started again at once. Status
/// webhooks on, as in `kill9_once`; they go to whichever daemons are up (a killed one refuses
/// them, or is cut mid-request) and are retried until one answers 2xx.
async fn kill9_repeated(ctx: Ctx) -> anyhow::Result<Row> {
    let opts = Opts {
        webhooks: true,
        ..Opts::default()
    };
    let mut s = Setup::new("kill9_repeated", &Server::Shared, opts).await?;
    s.kills = true;
    s.warm(40).await?;
    let total = ctx.pick(Duration::from_secs(12), Duration::from_secs(180));
    let every = Duration::from_millis(2000);
    let t0 = Instant::now();
    let (mut kills, mut busy) = (0, 0);
    while t0.elapsed() < total {
        sleep(every).await;
        let slot = rand::random_range(0..INSTANCES);
        if s.busy(slot, Duration::from_secs(1)).await {
            busy += 1;
        }
        s.fleet.restart(slot).await?;
        kills += 1;
    }
    let fault_end = Instant::now();
    let retried = attempts_over_one(&s.db.pool).await?;
    s.finish(
        fault_end,
        format!(
            "{kills} kills ({busy} with jobs in flight) over {}; {retried} jobs ran more than once",
            secs(total)
        ),
    )
    .await
}

/// One daemon is frozen (SIGSTOP: a long GC-like pause, a VM stall) with jobs in flight, past
/// its lease, then thawed (SIGCONT). The others rescue its jobs; whatever it does when it wakes
/// up (a request it was about to send, a ledger write, a completion) must not land twice.
async fn paused_past_its_lease(ctx: Ctx) -> anyhow::Result<Row> {
    use nix::sys::signal::Signal;
    let s = Setup::new("paused_past_its_lease", &Server::Shared, Opts::default()).await?;
    s.warm(40).await?;
    let pause = ctx.pick(Duration::from_secs(6), Duration::from_secs(60));
    let rounds = ctx.pick(1, 3);
    let mut busy = 0;
    for _ in 0..rounds {
        if s.busy(1, Duration::from_secs(5)).await {
            busy += 1;
        }
        s.fleet.daemons[1].signal(Signal::SIGSTOP);
        sleep(pause).await;
        s.fleet.daemons[1].signal(Signal::SIGCONT);
        if rounds > 1 {
            sleep(Duration::from_secs(5)).await;
        }
    }
    let fault_end = Instant::now();
    // Give the thawed daemon a moment to find out (bounded; it may have nothing to find).
    let log = &s.fleet.daemons[1].log;
    log.wait_for(
        0,
        |l| l.contains("taken from this runner"),
        Duration::from_secs(3),
    )
    .await;
    let taken = log.count(0, "taken from this runner");
    s.finish(
        fault_end,
        format!(
            "instance 1 frozen {rounds}× for {} ({busy}× with jobs in flight; lease 3 s); after \
             thawing it found {taken} job(s) taken from it",
            secs(pause)
        ),
    )
    .await
}

async fn attempts_over_one(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar(r#"SELECT count(*) FROM "OutboundJob" WHERE attempts > 1"#)
            .fetch_one(pool)
            .await?,
    )
}

// ---------------------------------------------------------------------------------------------
// 2. PostgreSQL restart and crash (on the private cluster)

async fn postgres_restart(ctx: Ctx) -> anyhow::Result<Row> {
    let private = ctx.private().await?;
    let server = Server::Private(private.clone());
    let s = Setup::new("postgres_restart", &server, Opts::default()).await?;
    s.warm(40).await?;
    let down = ctx.pick(Duration::from_secs(3), Duration::from_secs(30));
    let rounds = ctx.pick(1, 3);
    for _ in 0..rounds {
        private.stop().await;
        sleep(down).await;
        private.start_again().await?;
        if rounds > 1 {
            sleep(Duration::from_secs(10)).await;
        }
    }
    let fault_end = Instant::now();
    let ready = s.all_ready_http(Duration::from_secs(40)).await?;
    s.finish(
        fault_end,
        format!(
            "{rounds}× fast shutdown, down {} each; all /readyz 200 {} after the restart",
            secs(down),
            secs(ready)
        ),
    )
    .await
}

async fn postgres_crash(ctx: Ctx) -> anyhow::Result<Row> {
    let private = ctx.private().await?;
    let server = Server::Private(private.clone());
    let s = Setup::new("postgres_crash", &server, Opts::default()).await?;
    s.warm(40).await?;
    let rounds = ctx.pick(1, 5);
    for _ in 0..rounds {
        private.crash().await;
        private.start_again().await?;
        if rounds > 1 {
            sleep(Duration::from_secs(8)).await;
        }
    }
    let fault_end = Instant::now();
    let ready = s.all_ready_http(Duration::from_secs(40)).await?;
    s.finish(
        fault_end,
        format!(
            "{rounds}× immediate shutdown (SIGQUIT) and crash recovery; all /readyz 200 {} after",
            secs(ready)
        ),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// 3. pg_terminate_backend storm

async fn terminate_storm(ctx: Ctx) -> anyhow::Result<Row> {
    let s = Setup::new("terminate_storm", &Server::Shared, Opts::default()).await?;
    s.warm(40).await?;
    let total = ctx.pick(Duration::from_secs(6), Duration::from_secs(90));
    let t0 = Instant::now();
    let (mut killed, mut listeners) = (0, 0);
    while t0.elapsed() < total {
        let (k, l) = s.db.terminate_runners(&s.admin).await?;
        killed += k;
        listeners += l;
        sleep(Duration::from_millis(250)).await;
    }
    let fault_end = Instant::now();
    ensure!(listeners > 0, "the storm never caught a LISTEN connection");
    let ready = s.all_ready_http(Duration::from_secs(40)).await?;
    s.notify_reaches_all(Duration::from_secs(5)).await?;
    s.finish(
        fault_end,
        format!(
            "{killed} backends terminated over {} ({listeners} LISTEN); LISTEN back and NOTIFY \
             reaching all 3 {} after",
            secs(total),
            secs(ready)
        ),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// 4. Pool exhaustion (private cluster: max_connections = 200)

async fn pool_exhaustion(ctx: Ctx) -> anyhow::Result<Row> {
    let private = ctx.private().await?;
    let server = Server::Private(private.clone());
    let s = Setup::new("pool_exhaustion", &server, Opts::default()).await?;
    s.warm(40).await?;
    let hold = ctx.pick(Duration::from_secs(6), Duration::from_secs(60));
    let mut probe = s.db.connect().await?;
    let mut held: Vec<sqlx::PgConnection> = Vec::new();
    grab_all(&server, &mut held).await;
    // Cut the daemons' connections: they must come back through a full server.
    s.db.terminate_runners(&s.admin).await?;
    grab_all(&server, &mut held).await;
    let t0 = Instant::now();
    let mut most_runner_conns = 0i64;
    while t0.elapsed() < hold {
        sleep(Duration::from_millis(250)).await;
        grab_all(&server, &mut held).await;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'outbound-runner'",
        )
        .bind(&s.db.name)
        .fetch_one(&mut probe)
        .await?;
        most_runner_conns = most_runner_conns.max(n);
    }
    let n_held = held.len();
    for c in held {
        let _ = c.close().await;
    }
    let fault_end = Instant::now();
    drop(probe);
    ensure!(n_held >= 150, "only {n_held} connections could be held");
    s.finish(
        fault_end,
        format!(
            "{n_held} of 200 connections held for {}; the 3 daemons had {most_runner_conns} at most meanwhile",
            secs(hold)
        ),
    )
    .await
}

/// Opens connections to the server until it refuses more.
async fn grab_all(server: &Server, held: &mut Vec<sqlx::PgConnection>) {
    let Ok(opts) = server
        .admin_url()
        .parse::<sqlx::postgres::PgConnectOptions>()
    else {
        return;
    };
    let opts = opts.application_name("chaos-hog");
    while held.len() < 400 {
        match tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::PgConnection::connect_with(&opts),
        )
        .await
        {
            Ok(Ok(c)) => held.push(c),
            _ => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. A long idle-in-transaction session (private cluster)

async fn idle_in_transaction(ctx: Ctx) -> anyhow::Result<Row> {
    let private = ctx.private().await?;
    let server = Server::Private(private.clone());
    let s = Setup::new("idle_in_transaction", &server, Opts::default()).await?;
    s.warm(40).await?;
    let hold = ctx.pick(Duration::from_secs(10), Duration::from_secs(180));
    let burst = ctx.pick(300, 1000);
    // Before: a burst with nothing pinned.
    let rate_before = burst_rate(&s, burst).await?;
    let mut holder = s.db.connect().await?;
    holder
        .execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await?;
    holder
        .execute(r#"SELECT count(*), txid_current() FROM "OutboundJob""#)
        .await?;
    let t0 = Instant::now();
    // Let the steady producer churn the table under the pinned horizon, then measure.
    sleep(hold.saturating_sub(Duration::from_secs(5))).await;
    let rate_during = burst_rate(&s, burst).await?;
    sleep(hold.saturating_sub(t0.elapsed())).await;
    let dead: i64 = sqlx::query_scalar(
        r#"SELECT COALESCE(sum(n_dead_tup), 0)::bigint FROM pg_stat_user_tables
           WHERE relname IN ('OutboundJob', 'OutboundMessage')"#,
    )
    .fetch_one(&s.db.pool)
    .await?;
    holder.execute("ROLLBACK").await?;
    drop(holder);
    let fault_end = Instant::now();
    let rate_after = burst_rate(&s, burst).await?;
    s.finish(
        fault_end,
        format!(
            "xmin pinned {}; burst of {burst} drained at {rate_before:.0} jobs/s before, \
             {rate_during:.0} during, {rate_after:.0} after; {dead} dead tuples at release",
            secs(hold)
        ),
    )
    .await
}

/// Inserts `n` jobs at once and measures how fast they are done.
async fn burst_rate(s: &Setup, n: usize) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let ids: Vec<i64> = s
        .producer
        .burst(n, Duration::ZERO)
        .await?
        .into_iter()
        .map(|r| r.0)
        .collect();
    let end = check::finished(&s.db.pool, &ids, Duration::from_secs(60))
        .await
        .context("a burst did not finish within 60 s")?;
    Ok(n as f64 / (end - t0).as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// 6. The Cloud API misbehaves

async fn mock_faults(ctx: Ctx) -> anyhow::Result<Row> {
    let s = Setup::new("mock_faults", &Server::Shared, Opts::default()).await?;
    s.warm(40).await?;
    let rounds = ctx.pick(1, 5);
    // Slow: answers take 400 ms (below whatsapp.timeout = 2 s).
    s.mock.set_latency(Duration::from_millis(400));
    let before = s.done().await?;
    let slow_for = ctx.pick(Duration::from_secs(4), Duration::from_secs(30));
    sleep(slow_for).await;
    let slow_rate = (s.done().await? - before) as f64 / slow_for.as_secs_f64();
    s.mock.set_latency(Duration::from_millis(100));

    // Bursts of bad answers, interleaved with good ones.
    let mut ambiguous = 0;
    let mut script = Vec::new();
    for _ in 0..rounds {
        for i in 0..6 {
            script.push(Reply::AcceptThenDrop);
            script.push(Reply::Accept);
            script.push(Reply::Error {
                status: 400,
                code: 130429,
                details: "rate limit hit",
                retry_after: Some(1),
            });
            script.push(Reply::Error {
                status: 400,
                code: 131056,
                details: "pair rate limit hit",
                retry_after: None,
            });
            script.push(Reply::Html(502));
            script.push(Reply::Error {
                status: 500,
                code: 131000,
                details: "something went wrong",
                retry_after: None,
            });
            ambiguous += 1;
            if i % 2 == 0 {
                // Accepted, answered after whatsapp.timeout: in doubt.
                script.push(Reply::SlowAccept(Duration::from_secs(3)));
                ambiguous += 1;
            }
            script.push(Reply::Accept);
        }
    }
    let n = script.len() as u64;
    let seen = s.mock.seen();
    let start = *seen.borrow();
    s.mock.script(script);
    let mut rx = seen.clone();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|v| *v >= start + n))
        .await
        .context("the scripted answers were not all used within 30 s")??;
    let fault_end = Instant::now();
    let row = s
        .finish(
            fault_end,
            format!(
                "{rounds} round(s): {} s at 400 ms latency ({slow_rate:.0} jobs/s), then {n} scripted answers: \
                 accept-then-drop, past-timeout, 130429, 131056, HTML 502, 131000; {ambiguous} ambiguous",
                slow_for.as_secs()
            ),
        )
        .await?;
    ensure!(
        row.counts.unknown == ambiguous && row.counts.unknown_accepted == ambiguous,
        "expected exactly the {ambiguous} ambiguous sends to be unknown (all accepted by the mock): {}",
        row.line()
    );
    Ok(row)
}

// ---------------------------------------------------------------------------------------------
// 7. Lost notifications: LISTEN through a proxy that stalls, then cuts

async fn lost_notifications(ctx: Ctx) -> anyhow::Result<Row> {
    let upstream = upstream_of(&crate::support::admin_url());
    let proxy = Proxy::start(upstream).await;
    let poll = Duration::from_secs(2);
    let opts = Opts {
        poll: "2s",
        listen_port: Some(proxy.addr.port()),
        ..Opts::default()
    };
    let s = Setup::new("lost_notifications", &Server::Shared, opts).await?;
    s.warm(40).await?;
    s.all_ready_http(Duration::from_secs(10)).await?;
    let each = ctx.pick(Duration::from_secs(5), Duration::from_secs(45));
    let first = s.producer.count();
    proxy.stall();
    sleep(each).await;
    proxy.cut();
    sleep(Duration::from_millis(500)).await;
    let unready_when_cut = {
        let mut n = 0;
        for d in &s.fleet.daemons {
            if d.readyz(&s.http).await != Some(200) {
                n += 1;
            }
        }
        n
    };
    sleep(each.saturating_sub(Duration::from_millis(500))).await;
    let last = s.producer.count();
    proxy.restore();
    let fault_end = Instant::now();
    let during: Vec<i64> = s.producer.ids()[first..last].to_vec();
    check::finished(&s.db.pool, &during, Duration::from_secs(30)).await;
    let worst: f64 = sqlx::query_scalar(
        r#"SELECT COALESCE(max(EXTRACT(EPOCH FROM "completedAt" - "createdAt")), 0)::float8
           FROM "OutboundJob" WHERE id = ANY($1)"#,
    )
    .bind(&during)
    .fetch_one(&s.db.pool)
    .await?;
    let back = s.all_ready_http(Duration::from_secs(45)).await?;
    s.notify_reaches_all(Duration::from_secs(5)).await?;
    let bound = poll.as_secs_f64() + 2.5;
    ensure!(
        worst <= bound,
        "a job inserted while notifications were lost waited {worst:.1} s (poll_interval {poll:?})"
    );
    ensure!(
        unready_when_cut == INSTANCES,
        "/readyz stayed 200 on {} daemon(s) with LISTEN cut",
        INSTANCES - unready_when_cut
    );
    s.finish(
        fault_end,
        format!(
            "LISTEN stalled {} then cut {} ({} jobs); worst insert→done {worst:.1} s with \
             poll_interval 2 s; /readyz 503 while cut; LISTEN back {} after",
            secs(each),
            secs(each),
            during.len(),
            secs(back)
        ),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// 8. Clock and time

/// Jobs scheduled in the future are not sent before their time, across a restart.
async fn future_jobs(ctx: Ctx) -> anyhow::Result<Row> {
    let mut s = Setup::new("future_jobs", &Server::Shared, Opts::default()).await?;
    s.kills = true;
    s.warm(40).await?;
    let delay = ctx.pick(Duration::from_secs(4), Duration::from_secs(40));
    let t0 = Instant::now();
    let rows = s.producer.burst(30, delay).await?;
    // Every instance is replaced while the jobs wait.
    for slot in 0..INSTANCES {
        s.fleet.restart(slot).await?;
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let due = t0 + Duration::from_secs_f64(rows.iter().map(|r| r.1).fold(f64::MAX, f64::min));
    let end = check::finished(&s.db.pool, &ids, delay + Duration::from_secs(20)).await;
    let mut earliest = f64::MAX;
    for (id, due_in) in &rows {
        // `t0` precedes the database's now(): t0 + due_in is no later than the true due time.
        let due_at = t0 + Duration::from_secs_f64(*due_in);
        for a in s.mock.accepted_for(*id) {
            let after = a.at.saturating_duration_since(due_at).as_secs_f64()
                - due_at.saturating_duration_since(a.at).as_secs_f64();
            earliest = earliest.min(after);
            ensure!(
                after >= 0.0,
                "job {id} was sent {:.3} s before its runAt",
                -after
            );
        }
    }
    let early: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM "OutboundJob" WHERE id = ANY($1) AND "startedAt" < "runAt""#,
    )
    .bind(&ids)
    .fetch_one(&s.db.pool)
    .await?;
    ensure!(early == 0, "{early} jobs were claimed before their runAt");
    let mut row = s
        .finish(
            due,
            format!(
                "30 jobs due in {}, all 3 instances restarted meanwhile; none before runAt, the first {:.0} ms after",
                secs(delay),
                earliest * 1000.0
            ),
        )
        .await?;
    row.recovery = end.map(|e| e.saturating_duration_since(due));
    Ok(row)
}

/// A retry's backoff lives in the database: killing and restarting every instance does not
/// bring it forward.
async fn backoff_survives_restart(ctx: Ctx) -> anyhow::Result<Row> {
    let mut s = Setup::new("backoff_survives_restart", &Server::Shared, Opts::default()).await?;
    s.kills = true;
    s.warm(40).await?;
    let retry_after = ctx.pick(5u64, 30);
    let n = 8;
    let before = s.mock.refused(131000);
    s.mock.script((0..n).map(|_| Reply::Error {
        status: 503,
        code: 131000,
        details: "temporarily unavailable",
        retry_after: Some(retry_after),
    }));
    // (job, when it was read, its due time as an instant no later than the true one)
    let deadline = Instant::now() + Duration::from_secs(15);
    let backing_off: Vec<(i64, Instant, Instant)> = loop {
        // Taken before the database's now(): t + due_in is no later than the true due time.
        let t = Instant::now();
        let rows: Vec<(i64, f64)> = sqlx::query_as(
            r#"SELECT id, EXTRACT(EPOCH FROM "runAt" - now())::float8 FROM "OutboundJob"
               WHERE status = 'queued' AND "lastErrorCode" = '131000'"#,
        )
        .fetch_all(&s.db.pool)
        .await?;
        if s.mock.refused(131000) >= before + n && rows.len() as u64 >= n {
            break rows
                .into_iter()
                .map(|(id, due_in)| (id, t, t + Duration::from_secs_f64(due_in.max(0.0))))
                .collect();
        }
        ensure!(
            Instant::now() < deadline,
            "the scripted 503s did not requeue {n} jobs"
        );
        sleep(Duration::from_millis(50)).await;
    };
    for slot in 0..INSTANCES {
        s.fleet.kill9(slot).await;
    }
    for slot in 0..INSTANCES {
        s.fleet.restart(slot).await?;
    }
    let fault_end = Instant::now();
    let ids: Vec<i64> = backing_off.iter().map(|r| r.0).collect();
    check::finished(&s.db.pool, &ids, Duration::from_secs(retry_after + 20)).await;
    let mut earliest = f64::MAX;
    for (id, read_at, due_at) in &backing_off {
        // Sends after the job was seen backing off (a two-part job may have sent part 0 before).
        let sends: Vec<Instant> = s
            .mock
            .accepted_for(*id)
            .into_iter()
            .map(|a| a.at)
            .filter(|at| at > read_at)
            .collect();
        ensure!(
            !sends.is_empty(),
            "job {id} was never sent after its backoff"
        );
        for at in sends {
            ensure!(
                at >= *due_at,
                "job {id} was sent {:.3} s before its backoff ended",
                (*due_at - at).as_secs_f64()
            );
            earliest = earliest.min((at - *due_at).as_secs_f64());
        }
    }
    s.finish(
        fault_end,
        format!(
            "{n} jobs refused with 503 + Retry-After {retry_after} s; all 3 instances killed and \
             restarted; none resent before its runAt (the first {:.0} ms after)",
            earliest * 1000.0
        ),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// 9. The database is down when the daemons start

async fn database_down_at_start(ctx: Ctx) -> anyhow::Result<Row> {
    let server = Server::Shared;
    let db = server.create_db().await?;
    let proxy = Proxy::start(upstream_of(&db.url)).await;
    proxy.cut();
    // systemd's notify socket, one per daemon: READY=1 must not come before the database.
    let mut sockets = Vec::new();
    let mut per_slot = Vec::new();
    for slot in 0..INSTANCES {
        let path = std::env::temp_dir().join(format!(
            "or-chaos-notify-{:08x}-{slot}",
            rand::random::<u32>()
        ));
        let sock = tokio::net::UnixDatagram::bind(&path)?;
        let got = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
        let sink = got.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf).await {
                sink.lock().unwrap().push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        });
        per_slot.push(vec![(
            "NOTIFY_SOCKET".to_string(),
            path.to_string_lossy().into_owned(),
        )]);
        sockets.push((path, got));
    }
    let opts = Opts {
        db_port: Some(proxy.addr.port()),
        per_slot,
        wait_ready: false,
        ..Opts::default()
    };
    let mut s = Setup::on("database_down_at_start", &server, db, opts).await?;
    let down = ctx.pick(Duration::from_secs(8), Duration::from_secs(90));
    sleep(down).await;
    let attempts = proxy.connections();
    let dead = s.fleet.dead();
    ensure!(
        dead.is_empty(),
        "daemons exited while the database was down: {dead:?}\n{}",
        s.fleet.tails(20)
    );
    for (slot, (_, got)) in sockets.iter().enumerate() {
        let got = got.lock().unwrap();
        ensure!(
            !got.iter().any(|(_, m)| m.lines().any(|l| l == "READY=1")),
            "daemon {slot} said READY=1 with the database down"
        );
        ensure!(
            got.iter()
                .any(|(_, m)| m.contains("STATUS=waiting for the database")),
            "daemon {slot} never said STATUS=waiting for the database: {got:?}"
        );
    }
    ensure!(
        s.fleet.count("database unreachable; waiting for it") >= INSTANCES,
        "the daemons did not log why they wait\n{}",
        s.fleet.tails(10)
    );
    // Backoff, not a hot loop: 250 ms doubling to 30 s is ~6 tries per daemon in 8 s.
    let per_daemon = attempts as f64 / INSTANCES as f64;
    ensure!(
        per_daemon <= 4.0 * (1.0 + down.as_secs_f64().log2()),
        "{attempts} connection attempts in {down:?}: no backoff"
    );
    let queued = s.producer.count();
    proxy.restore();
    let fault_end = Instant::now();
    let mut ready_after = Duration::ZERO;
    for (slot, (_, got)) in sockets.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            if let Some((at, _)) = got
                .lock()
                .unwrap()
                .iter()
                .find(|(_, m)| m.lines().any(|l| l == "READY=1"))
            {
                ready_after = ready_after.max(at.saturating_duration_since(fault_end));
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "daemon {slot} never said READY=1 after the database came back\n{}",
                s.fleet.tails(20)
            );
            sleep(Duration::from_millis(50)).await;
        }
    }
    s.fleet.all_ready(Duration::from_secs(10)).await?;
    for (path, _) in &sockets {
        let _ = std::fs::remove_file(path);
    }
    s.finish(
        fault_end,
        format!(
            "database unreachable for {} at start: {attempts} connection attempts from 3 daemons \
             (backoff), none exited, no READY=1, STATUS said so; {queued} jobs queued meanwhile; \
             READY=1 {} after it came back",
            secs(down),
            secs(ready_after)
        ),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// 10. A read-only database

async fn read_only_database(ctx: Ctx) -> anyhow::Result<Row> {
    let s = Setup::new("read_only_database", &Server::Shared, Opts::default()).await?;
    s.warm(40).await?;
    let hold = ctx.pick(Duration::from_secs(6), Duration::from_secs(60));
    let name = &s.db.name;
    s.admin
        .execute(
            format!(r#"ALTER DATABASE "{name}" SET default_transaction_read_only = on"#).as_str(),
        )
        .await?;
    let log_from: Vec<usize> = s.fleet.daemons.iter().map(|d| d.log.len()).collect();
    s.db.terminate_runners(&s.admin).await?;
    // From here on every runner session is read-only. A job the producer committed before this
    // point may have been claimed already (its count can lag its commit): the boundary is the
    // highest id committed now, read from the database, not the producer's count.
    let boundary: i64 = sqlx::query_scalar(r#"SELECT COALESCE(max(id), 0) FROM "OutboundJob""#)
        .fetch_one(&s.db.pool)
        .await?;
    let snapshot: Vec<(i64, i32, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        r#"SELECT id, attempts, "updatedAt" FROM "OutboundJob" WHERE status = 'queued' ORDER BY id"#,
    )
    .fetch_all(&s.db.pool)
    .await?;
    sleep(hold).await;
    let readyz = s.fleet.daemons[0].readyz(&s.http).await;
    let now: Vec<(i64, String, i32, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        r#"SELECT id, status, attempts, "updatedAt" FROM "OutboundJob" WHERE id = ANY($1) ORDER BY id"#,
    )
    .bind(snapshot.iter().map(|r| r.0).collect::<Vec<_>>())
    .fetch_all(&s.db.pool)
    .await?;
    for ((id, attempts, updated), (_, st, a2, u2)) in snapshot.iter().zip(&now) {
        ensure!(
            st == "queued" && a2 == attempts && u2 == updated,
            "job {id} was touched while the database was read-only: {st}, attempts {attempts}→{a2}"
        );
    }
    let new_ids: Vec<i64> = s
        .producer
        .ids()
        .into_iter()
        .filter(|id| *id > boundary)
        .collect();
    let touched: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM "OutboundJob" WHERE id = ANY($1)
           AND (status <> 'queued' OR attempts <> 0 OR "lockedBy" IS NOT NULL)"#,
    )
    .bind(&new_ids)
    .fetch_one(&s.db.pool)
    .await?;
    ensure!(
        touched == 0,
        "{touched} jobs inserted meanwhile were touched"
    );
    let clear = s
        .fleet
        .daemons
        .iter()
        .zip(&log_from)
        .map(|(d, from)| d.log.count(*from, "read-only transaction"))
        .sum::<usize>();
    ensure!(
        clear > 0,
        "no daemon said the database is read-only\n{}",
        s.fleet.tails(20)
    );
    s.admin
        .execute(format!(r#"ALTER DATABASE "{name}" RESET default_transaction_read_only"#).as_str())
        .await?;
    s.db.terminate_runners(&s.admin).await?;
    let fault_end = Instant::now();
    s.finish(
        fault_end,
        format!(
            "read-only for {}: {} queued jobs and {} new ones untouched; {clear} log lines name \
             the read-only transaction; /readyz said {}",
            secs(hold),
            snapshot.len(),
            new_ids.len(),
            readyz.map_or("nothing".into(), |c| c.to_string())
        ),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// 11. A full disk (private cluster, the database in a tablespace on a small tmpfs)

async fn full_disk(ctx: Ctx) -> anyhow::Result<Row> {
    let disk = match cluster::Tmpfs::mount(48) {
        Ok(d) => d,
        Err(why) => {
            return Ok(Row {
                name: "full_disk",
                notes: why,
                skipped: true,
                ..Row::default()
            });
        }
    };
    let private = ctx.private().await?;
    let server = Server::Private(private.clone());
    let admin = cluster::admin_pool(&server).await?;
    let ts = format!("chaos_disk_{:08x}", rand::random::<u32>());
    admin
        .execute(
            format!(
                r#"CREATE TABLESPACE "{ts}" LOCATION '{}'"#,
                disk.dir.display()
            )
            .as_str(),
        )
        .await?;
    let result = full_disk_on(&ctx, &server, &ts).await;
    let _ = admin
        .execute(format!(r#"DROP TABLESPACE IF EXISTS "{ts}""#).as_str())
        .await;
    admin.close().await;
    drop(disk);
    result
}

async fn full_disk_on(ctx: &Ctx, server: &Server, ts: &str) -> anyhow::Result<Row> {
    let db = server.create_db_in(Some(ts)).await?;
    let s = Setup::on("full_disk", server, db, Opts::default()).await?;
    s.warm(40).await?;
    let hold = ctx.pick(Duration::from_secs(6), Duration::from_secs(60));
    // Jobs that come due while the disk is full.
    let waiting = ctx.pick(150, 1000);
    s.producer.burst(waiting, Duration::from_secs(3)).await?;
    // Fill the disk: big statements first, then smaller ones, until not one row fits.
    let t_fill = Instant::now();
    let mut filler = s.db.connect().await?;
    filler.execute("CREATE TABLE ballast (b text)").await?;
    let mut full_error = String::new();
    for rows in [2000, 200, 20, 1] {
        loop {
            let r = filler
                .execute(
                    format!("INSERT INTO ballast SELECT repeat('x', 1500) FROM generate_series(1, {rows})")
                        .as_str(),
                )
                .await;
            if let Err(e) = r {
                full_error = e.to_string();
                break;
            }
        }
    }
    ensure!(
        full_error.contains("No space left on device") || full_error.contains("could not extend"),
        "filling the disk ended with: {full_error}"
    );
    let filled_in = t_fill.elapsed();
    let log_from: Vec<usize> = s.fleet.daemons.iter().map(|d| d.log.len()).collect();
    sleep(hold).await;
    let said = s
        .fleet
        .daemons
        .iter()
        .zip(&log_from)
        .map(|(d, from)| d.log.count(*from, "No space left on device"))
        .sum::<usize>();
    let open: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM "OutboundJob" WHERE status IN ('queued', 'running')"#,
    )
    .fetch_one(&s.db.pool)
    .await?;
    filler.execute("DROP TABLE ballast").await?;
    drop(filler);
    let fault_end = Instant::now();
    s.finish(
        fault_end,
        format!(
            "tablespace disk full (filled in {}) for {} with {waiting} jobs coming due: {open} \
             still open at the end, {said} daemon log lines say \"No space left on device\"",
            secs(filled_in),
            secs(hold)
        ),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// 12. PostgreSQL crashes between a message's `sent` and its job's `done`

/// The wamid of a job's last message is written by the statement that marks the job `done`
/// (one synchronous commit for both, docs/delivery.md "Durability"). Between Meta's answer and
/// that commit the message is `sending`. Made deterministic: a test transaction holds the job's
/// row (`FOR NO KEY UPDATE`: the ledger's `FOR KEY SHARE` fences pass, the completion waits),
/// the answer is released, and once the completion is seen waiting on the lock:
///
/// - PostgreSQL is crashed (immediate stop) and started again: the runner, alive, retries the
///   completion, which writes the wamid and `done` together (nothing was on disk half-way);
/// - then, with a second job, the daemon is killed (SIGKILL) instead, and its waiting statement
///   ended with it: the message stays `sending`, the rescuer makes it `unknown` and fails the
///   job `delivery_unknown`, and it is never sent again.
async fn postgres_crash_before_done(ctx: Ctx) -> anyhow::Result<Row> {
    let private = ctx.private().await?;
    let server = Server::Private(private.clone());
    let opts = Opts {
        rate: 0,
        latency: Duration::ZERO,
        instances: 1,
        // Long enough that nothing is rescued before the completion is retried (a restart on a
        // loaded machine takes seconds).
        extra: vec![("OUTBOUND_RUNNER__RUNNER__LEASE", "10s")],
        ..Opts::default()
    };
    let mut s = Setup::new("postgres_crash_before_done", &server, opts).await?;
    s.kills = true;
    // Job 1 (one message): PostgreSQL crashes while its completion waits.
    let (id, holder) = held_at_completion(&s).await?;
    private.crash().await;
    drop(holder);
    private.start_again().await?;
    let fault_end = Instant::now();
    check::finished(&s.db.pool, &[id], Duration::from_secs(30))
        .await
        .context("the job did not finish after the restart")?;
    let (job, msg, wamid): (String, String, Option<String>) = sqlx::query_as(
        r#"SELECT j.status, m.status, m.wamid FROM "OutboundJob" j
           JOIN "OutboundMessage" m ON m."jobId" = j.id WHERE j.id = $1"#,
    )
    .bind(id)
    .fetch_one(&s.db.pool)
    .await?;
    ensure!(
        job == "done" && msg == "sent" && wamid.is_some(),
        "after the crash the job is {job}, its message {msg} (wamid {wamid:?}): the completion \
         was not retried with its wamid\n{}",
        s.fleet.tails(30)
    );
    // Job 2 (one message): the daemon dies while its completion waits.
    let (id2, mut holder) = held_at_completion(&s).await?;
    s.fleet.kill9(0).await;
    // A statement the server already has outlives its client (it would commit once the lock is
    // free): end it too, so this is a runner that died before its completion reached the server.
    let waiting = r#"SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = 'outbound-runner'
          AND wait_event_type = 'Lock'"#;
    s.db.pool
        .execute(
            r#"SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE datname = current_database() AND application_name = 'outbound-runner'
                 AND wait_event_type = 'Lock'"#,
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>(waiting)
        .fetch_one(&s.db.pool)
        .await?
        > 0
    {
        ensure!(
            Instant::now() < deadline,
            "the dead daemon's completion did not end"
        );
        sleep(Duration::from_millis(5)).await;
    }
    holder.execute("COMMIT").await?;
    drop(holder);
    s.fleet.restart(0).await?;
    check::finished(&s.db.pool, &[id2], Duration::from_secs(30))
        .await
        .context("the killed daemon's job was not rescued")?;
    let (job2, code2, msg2): (String, Option<String>, String) = sqlx::query_as(
        r#"SELECT j.status, j."lastErrorCode", m.status FROM "OutboundJob" j
           JOIN "OutboundMessage" m ON m."jobId" = j.id WHERE j.id = $1"#,
    )
    .bind(id2)
    .fetch_one(&s.db.pool)
    .await?;
    let accepted = s.mock.accepted_for(id2).len();
    ensure!(
        job2 == "failed" && code2.as_deref() == Some("delivery_unknown") && msg2 == "unknown",
        "after the kill the job is {job2} ({code2:?}), its message {msg2}: expected failed, \
         delivery_unknown, unknown"
    );
    ensure!(
        accepted == 1,
        "the mock accepted the message {accepted} times"
    );
    s.finish(
        fault_end,
        "PostgreSQL crashed while a completion carrying its job's last wamid waited: retried after \
         the restart, wamid and done written together; the daemon killed at the same point: the \
         message unknown, the job failed delivery_unknown, sent once"
            .to_string(),
    )
    .await
}

/// Inserts a one-message job, lets the mock accept it while a test transaction holds the job's
/// row, and returns once the daemon's completion waits on that row lock (the message `sending`,
/// accepted by the mock), with the holder's connection: the fault comes next, then the holder
/// lets go.
async fn held_at_completion(s: &Setup) -> anyhow::Result<(i64, sqlx::PgConnection)> {
    let id = loop {
        s.mock.script([Reply::Hold]);
        let mut recorded = s.mock.recorded();
        let seen = *recorded.borrow();
        let (id, _) = s.producer.burst(1, Duration::ZERO).await?[0];
        tokio::time::timeout(Duration::from_secs(10), recorded.wait_for(|v| *v > seen))
            .await
            .context("the job was not sent")??;
        let parts: i64 = sqlx::query_scalar(
            r#"SELECT jsonb_array_length(payload->'message')::bigint FROM "OutboundJob" WHERE id = $1"#,
        )
        .bind(id)
        .fetch_one(&s.db.pool)
        .await?;
        if parts == 1 {
            break id;
        }
        // A two-message job (every third): let it finish, take the next.
        s.mock.release(1);
        check::finished(&s.db.pool, &[id], Duration::from_secs(30)).await;
    };
    let mut holder = s.db.connect().await?;
    holder.execute("BEGIN").await?;
    sqlx::query(r#"SELECT 1 FROM "OutboundJob" WHERE id = $1 FOR NO KEY UPDATE"#)
        .bind(id)
        .execute(&mut holder)
        .await?;
    s.mock.release(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let accepted = !s.mock.accepted_for(id).is_empty();
        let waiting: i64 = sqlx::query_scalar(
            r#"SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND application_name = 'outbound-runner'
                 AND wait_event_type = 'Lock' AND query LIKE '%done AS%'"#,
        )
        .fetch_one(&s.db.pool)
        .await?;
        if accepted && waiting > 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the completion never waited on the held row\n{}",
            s.fleet.tails(30)
        );
        sleep(Duration::from_millis(5)).await;
    }
    let msg: String =
        sqlx::query_scalar(r#"SELECT status FROM "OutboundMessage" WHERE "jobId" = $1"#)
            .bind(id)
            .fetch_one(&s.db.pool)
            .await?;
    ensure!(
        msg == "sending",
        "an accepted last message is {msg} before its completion (expected sending)"
    );
    Ok((id, holder))
}

// ---------------------------------------------------------------------------------------------
// Hostile rows (docs/reliability.md, "Rows the runner cannot use")

/// A text job for the odd rows that must still be delivered (the invariants read its text).
fn poison_payload(n: u32) -> String {
    format!(
        r#"{{"to":"1555900{n:04}","message":{{"type":"text","text":{{"body":"poison {n} part 0"}}}}}}"#
    )
}

/// 1,000 good jobs with a row of every hostile kind mixed in, 3 daemons: every good job and
/// every odd-but-runnable row `done`, every poison row `failed` with a readable reason, no task
/// dead and `/readyz` green throughout.
async fn poison_rows(ctx: Ctx) -> anyhow::Result<Row> {
    let s = Setup::new("poison_rows", &Server::Shared, Opts::default()).await?;
    s.warm(40).await?;
    let pool = s.db.pool.clone();
    // Health, sampled every 250 ms on every daemon while the rows go through.
    let stop = tokio_util::sync::CancellationToken::new();
    let red = Arc::new(Mutex::new(Vec::<String>::new()));
    let watcher = {
        let (stop, red, http) = (stop.clone(), red.clone(), s.http.clone());
        let bases: Vec<Option<String>> = s.fleet.daemons.iter().map(|d| d.http.clone()).collect();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                for (slot, base) in bases.iter().enumerate() {
                    let Some(base) = base else { continue };
                    for path in ["/healthz", "/readyz"] {
                        let status = http
                            .get(format!("{base}{path}"))
                            .timeout(Duration::from_secs(3))
                            .send()
                            .await
                            .map(|r| r.status().as_u16());
                        if !matches!(status, Ok(200)) {
                            red.lock()
                                .unwrap()
                                .push(format!("daemon {slot} {path}: {status:?}"));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let t0 = Instant::now();
    let mut good: Vec<i64> = s
        .producer
        .burst(500, Duration::ZERO)
        .await?
        .iter()
        .map(|r| r.0)
        .collect();

    let one = |sql: String| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(&sql).fetch_one(&pool).await }
    };
    let body = r#""message":{"type":"text","text":{"body":"poison x part 0"}}"#;
    let mut bad: Vec<(i64, &str, &str)> = Vec::new();
    bad.push((
        one(format!(r#"INSERT INTO "OutboundJob" (payload) VALUES ('{{"to":"15559000001",{body},"n":1e400}}') RETURNING id"#)).await?,
        "bad_payload",
        "64-bit float",
    ));
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    bad.push((
        one(format!(r#"INSERT INTO "OutboundJob" (payload) VALUES ('{{"to":"15559000002",{body},"d":{deep}}}') RETURNING id"#)).await?,
        "bad_payload",
        "128 levels",
    ));
    bad.push((
        one(format!(r#"INSERT INTO "OutboundJob" (payload, composed) VALUES ('{}', '{{"n":1e400}}') RETURNING id"#, poison_payload(3))).await?,
        "bad_payload",
        "composed",
    ));
    // An app trigger that refuses to let this one row be claimed.
    sqlx::raw_sql(
        r#"CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               IF NEW.payload ? 'refuse' AND NEW.status = 'running' THEN
                   RAISE EXCEPTION 'the app refuses this row';
               END IF;
               RETURN NEW;
           END $$;
           CREATE TRIGGER refuse_poison BEFORE UPDATE ON "OutboundJob"
               FOR EACH ROW EXECUTE FUNCTION refuse_poison();"#,
    )
    .execute(&pool)
    .await?;
    bad.push((
        one(format!(r#"INSERT INTO "OutboundJob" (payload) VALUES ('{{"to":"15559000004",{body},"refuse":1}}') RETURNING id"#)).await?,
        "unclaimable",
        "the app refuses this row",
    ));
    // Odd but runnable: these must be delivered.
    let mut odd = vec![
        one(format!(r#"INSERT INTO "OutboundJob" (payload, "runAt") VALUES ('{}', '-infinity') RETURNING id"#, poison_payload(5))).await?,
        one(format!(r#"INSERT INTO "OutboundJob" (payload, "createdAt") VALUES ('{}', 'infinity') RETURNING id"#, poison_payload(6))).await?,
        // Running with no lease, not updated for longer than runner.foreign_running_grace
        // (15 min by default: a younger one may be the app's own runner at work).
        one(format!(
            r#"INSERT INTO "OutboundJob" (payload, status, "updatedAt")
               VALUES ('{}', 'running', now() - interval '1 hour') RETURNING id"#,
            poison_payload(7)
        ))
        .await?,
    ];
    sqlx::raw_sql(r#"ALTER TABLE "OutboundJob" DROP CONSTRAINT "OutboundJob_attempts_bound""#)
        .execute(&pool)
        .await?;
    odd.push(
        one(format!(r#"INSERT INTO "OutboundJob" (payload, attempts) VALUES ('{}', 2147483647) RETURNING id"#, poison_payload(8)))
            .await?,
    );
    sqlx::raw_sql(
        r#"ALTER TABLE "OutboundJob" ADD CONSTRAINT "OutboundJob_attempts_bound"
           CHECK (attempts < 2147483647) NOT VALID"#,
    )
    .execute(&pool)
    .await?;
    good.extend(
        s.producer
            .burst(500, Duration::ZERO)
            .await?
            .iter()
            .map(|r| r.0),
    );
    // Recovery: from the last row inserted to the drain.
    let inserted = Instant::now();

    let mut all: Vec<i64> = good.clone();
    all.extend(odd.iter().copied());
    all.extend(bad.iter().map(|b| b.0));
    let bound = ctx.pick(Duration::from_secs(60), Duration::from_secs(300));
    let end = check::finished(&pool, &all, bound).await;
    stop.cancel();
    let _ = watcher.await;
    ensure!(
        end.is_some(),
        "the jobs did not all finish within {bound:?}\n{}",
        s.fleet.tails(30)
    );

    let not_done: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM "OutboundJob" WHERE id = ANY($1) AND status <> 'done'"#,
    )
    .bind([good.as_slice(), odd.as_slice()].concat())
    .fetch_one(&pool)
    .await?;
    ensure!(
        not_done == 0,
        "{not_done} good or odd-but-runnable jobs are not done"
    );
    for (id, code, fragment) in &bad {
        let (status, got, error): (String, Option<String>, Option<String>) = sqlx::query_as(
            r#"SELECT status, "lastErrorCode", "lastError" FROM "OutboundJob" WHERE id = $1"#,
        )
        .bind(id)
        .fetch_one(&pool)
        .await?;
        let error = error.unwrap_or_default();
        ensure!(
            status == "failed" && got.as_deref() == Some(*code) && error.contains(fragment),
            "poison job {id}: {status} {got:?} {error:?} (expected failed {code}, \"{fragment}\")"
        );
    }
    let red = red.lock().unwrap().clone();
    ensure!(
        red.is_empty(),
        "health went red: {:?}",
        &red[..red.len().min(10)]
    );
    for d in &s.fleet.daemons {
        let log = d.log.all();
        ensure!(
            !log.contains("panicked") && !log.contains("restarting it"),
            "daemon {} had a task die:\n{}",
            d.slot,
            s.fleet.tails(30)
        );
    }
    let took = t0.elapsed();
    // The poison rows were checked above; the suite's invariants ("a failed job attempted a
    // send first") are for the rest.
    let ids: Vec<i64> = bad.iter().map(|b| b.0).collect();
    sqlx::query(r#"DELETE FROM "OutboundJob" WHERE id = ANY($1)"#)
        .bind(&ids)
        .execute(&pool)
        .await?;
    s.finish(
        inserted,
        format!(
            "1000 good jobs + {} poison rows (failed: bad_payload ×3, unclaimable ×1) + {} odd \
             rows (done) through 3 daemons in {}; health green throughout, no task died",
            bad.len(),
            odd.len(),
            secs(took)
        ),
    )
    .await
}
