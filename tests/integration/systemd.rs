//! The daemon as systemd sees it: the real binary, a Unix datagram socket as `NOTIFY_SOCKET`,
//! signals. Every wait reads datagrams (or log lines) with a deadline; nothing sleeps.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::support::TestDb;
use crate::support::mock_orchestrator::{
    Answer, MockOrchestrator, TOKEN as ORCHESTRATOR_TOKEN, two_texts,
};
use crate::support::proxy::{Proxy, upstream_of};

const BIN: &str = env!("CARGO_BIN_EXE_outbound-runner");

/// Whether a datagram carries `field` (`READY=1`) or, for `NAME=`, any value of it.
fn has(datagram: &str, field: &str) -> bool {
    datagram.lines().any(|l| {
        if field.ends_with('=') {
            l.starts_with(field)
        } else {
            l == field
        }
    })
}

fn status_of(datagram: &str) -> Option<&str> {
    datagram.lines().find_map(|l| l.strip_prefix("STATUS="))
}

/// A running `outbound-runner run`, its notification socket and its log.
struct Daemon {
    child: Child,
    notify: UnixDatagram,
    dir: PathBuf,
    config: PathBuf,
    /// Every datagram so far, for failure messages.
    seen: Vec<String>,
    log: Arc<Mutex<Vec<String>>>,
    log_rx: mpsc::UnboundedReceiver<String>,
}

impl Daemon {
    /// Starts the daemon on `database_url` with `config` as its configuration file. The HTTP
    /// server is off. `watchdog` sets WATCHDOG_USEC.
    fn start(
        database_url: &str,
        config: &str,
        watchdog: Option<Duration>,
        env: &[(&str, &str)],
    ) -> Daemon {
        let dir = std::env::temp_dir().join(format!("or-sd-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("notify.sock");
        let notify = UnixDatagram::bind(&socket).unwrap();
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).unwrap();

        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&config_path)
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &dir)
            .env("NO_COLOR", "1")
            .env("DATABASE_URL", database_url)
            .env("NOTIFY_SOCKET", &socket)
            .env("OUTBOUND_RUNNER__HTTP__LISTEN", "")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(w) = watchdog {
            cmd.env("WATCHDOG_USEC", w.as_micros().to_string());
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawning outbound-runner");

        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, log_rx) = mpsc::unbounded_channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let all = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                all.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Daemon {
            child,
            notify,
            dir,
            config: config_path,
            seen: Vec::new(),
            log,
            log_rx,
        }
    }

    fn signal(&self, sig: Signal) {
        let pid = Pid::from_raw(self.child.id().expect("the daemon is running") as i32);
        kill(pid, sig).unwrap();
    }

    fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn diagnostics(&self) -> String {
        let log = self.log.lock().unwrap();
        let tail = log.len().saturating_sub(40);
        format!(
            "\n--- datagrams ---\n{}\n--- stderr (tail) ---\n{}",
            self.seen.join("\n~~\n"),
            log[tail..].join("\n")
        )
    }

    /// The next datagram, or `None` after `within`.
    async fn recv(&mut self, within: Duration) -> Option<String> {
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(within, self.notify.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let d = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(d.clone());
                Some(d)
            }
            Ok(Err(e)) => panic!("reading the notification socket: {e}"),
            Err(_) => None,
        }
    }

    /// Reads datagrams until one satisfies `pred`; returns it and the ones before it.
    async fn expect(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> (String, Vec<String>) {
        let deadline = Instant::now() + within;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Some(d) if pred(&d) => return (d, before),
                Some(d) => before.push(d),
                None => panic!(
                    "no datagram with {what} within {within:?}{}",
                    self.diagnostics()
                ),
            }
        }
    }

    /// Asserts that no datagram satisfying `pred` arrives for `window`.
    async fn expect_none(&mut self, what: &str, window: Duration, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.recv(left).await {
                Some(d) if pred(&d) => panic!(
                    "{what} arrived within {window:?}: {d:?}{}",
                    self.diagnostics()
                ),
                Some(_) => {}
                None => return,
            }
        }
    }

    /// Reads stderr until a line satisfies `pred`.
    async fn expect_log(&mut self, what: &str, within: Duration, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.log_rx.recv()).await {
                Ok(Some(line)) if pred(&line) => return,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!(
                    "no log line with {what} within {within:?}{}",
                    self.diagnostics()
                ),
            }
        }
    }

    /// Forgets the log lines read so far (they stay in the diagnostics).
    fn skip_log(&mut self) {
        while self.log_rx.try_recv().is_ok() {}
    }

    /// Waits for the process to exit; returns its exit code and the datagrams it sent last.
    async fn exit(&mut self, within: Duration) -> (Option<i32>, Vec<String>) {
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(s) => s.unwrap(),
            Err(_) => panic!(
                "the daemon did not exit within {within:?}{}",
                self.diagnostics()
            ),
        };
        // Whatever it sent before exiting is already queued on the socket.
        let mut rest = Vec::new();
        while let Some(d) = self.recv(Duration::from_millis(200)).await {
            rest.push(d);
        }
        (status.code(), rest)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An empty database: the daemon must migrate it before READY=1.
async fn unmigrated() -> TestDb {
    let db = TestDb::new().await;
    sqlx::raw_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        .execute(&db.pool)
        .await
        .unwrap();
    db
}

async fn table_exists(db: &TestDb, name: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(name)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn ready_after_migrations_and_listen_then_the_watchdog_follows_the_database() {
    let db = unmigrated().await;
    assert!(!table_exists(&db, "\"OutboundJob\"").await);
    let proxy = Proxy::start(upstream_of(&db.url)).await;
    // WATCHDOG_USEC=1s: a ping every 0.5 s. A 200 ms heartbeat probes the database every 1 s.
    let mut d = Daemon::start(
        &proxy.url_for(&db.url),
        "",
        Some(SECOND),
        &[("OUTBOUND_RUNNER__RUNNER__HEARTBEAT", "200ms")],
    );

    let (ready, before) = d
        .expect("READY=1", 60 * SECOND, |m| has(m, "READY=1"))
        .await;
    assert!(
        before.iter().any(|m| has(m, "EXTEND_TIMEOUT_USEC=")),
        "migrating asks for more start-up time: {before:?}"
    );
    assert!(
        !before.iter().any(|m| has(m, "WATCHDOG=1")),
        "no watchdog ping before READY=1: {before:?}"
    );
    let status = status_of(&ready).expect("READY=1 carries a STATUS line");
    assert!(
        status.contains("queued=") && status.contains("last pass"),
        "{status}"
    );
    assert!(status.chars().count() <= 190, "{status}");
    // READY=1 came after the migrations and LISTEN.
    assert!(table_exists(&db, "\"OutboundJob\"").await);
    assert!(table_exists(&db, "_sqlx_migrations").await);
    let listening: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'outbound-runner'
           AND query ILIKE 'LISTEN %'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(listening, 1, "a LISTEN connection is up at READY=1");

    // The workers run: a job is done, and STATUS says so soon after.
    db.insert_jobs(1).await;
    d.expect("STATUS with done=1", 15 * SECOND, |m| {
        status_of(m).is_some_and(|s| s.contains("done=1"))
    })
    .await;

    // Pings arrive periodically while all is well.
    for _ in 0..3 {
        d.expect("WATCHDOG=1", 5 * SECOND, |m| has(m, "WATCHDOG=1"))
            .await;
    }

    // The database goes away: STATUS says so, and the pings stop for good.
    proxy.cut();
    d.expect("STATUS database unreachable", 20 * SECOND, |m| {
        status_of(m).is_some_and(|s| s.starts_with("database unreachable"))
    })
    .await;
    d.expect_none("WATCHDOG=1 while the database is away", 3 * SECOND, |m| {
        has(m, "WATCHDOG=1")
    })
    .await;
    assert!(
        d.running(),
        "the daemon waits for the database; it does not exit"
    );

    // It returns: so do the pings.
    proxy.restore();
    d.expect("WATCHDOG=1 after the database returned", 30 * SECOND, |m| {
        has(m, "WATCHDOG=1")
    })
    .await;

    // SIGTERM: STOPPING=1 and a clean exit. Nothing was in flight, so the drain cannot outlast
    // TimeoutStopSec and asks for no extra time.
    d.signal(Signal::SIGTERM);
    d.expect("STOPPING=1", 10 * SECOND, |m| has(m, "STOPPING=1"))
        .await;
    let (code, rest) = d.exit(30 * SECOND).await;
    assert_eq!(code, Some(0), "{}", d.diagnostics());
    assert!(
        !rest.iter().any(|m| has(m, "EXTEND_TIMEOUT_USEC=")),
        "an idle drain asks for no extension: {rest:?}"
    );
    assert_eq!(db.count("running").await, 0);
    assert_eq!(db.count("done").await, 1);
}

#[tokio::test]
async fn sighup_reloads_the_log_level_and_a_broken_config_keeps_the_running_one() {
    let db = TestDb::new().await;
    let config = |level: &str, heartbeat: &str, extra: &str| {
        format!("[runner]\nheartbeat = \"{heartbeat}\"\n{extra}\n[log]\nlevel = \"{level}\"\n")
    };
    let mut d = Daemon::start(&db.url, &config("info", "200ms", ""), None, &[]);
    d.expect("READY=1", 60 * SECOND, |m| has(m, "READY=1"))
        .await;
    assert!(
        !d.log.lock().unwrap().iter().any(|l| l.contains("DEBUG")),
        "{}",
        d.diagnostics()
    );

    // A good reload: RELOADING=1 and MONOTONIC_USEC in one datagram, then READY=1 with the
    // outcome; the new log level is in force.
    d.write_config(&config("debug", "200ms", ""));
    d.skip_log();
    d.signal(Signal::SIGHUP);
    let (reloading, _) = d
        .expect("RELOADING=1", 10 * SECOND, |m| has(m, "RELOADING=1"))
        .await;
    assert!(has(&reloading, "MONOTONIC_USEC="), "{reloading:?}");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap()
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(usec > 0);
    let (ready, between) = d
        .expect("READY=1 after the reload", 10 * SECOND, |m| {
            has(m, "READY=1")
        })
        .await;
    assert!(
        !between.iter().any(|m| has(m, "RELOADING=1")),
        "{between:?}"
    );
    assert_eq!(status_of(&ready), Some("reloaded"), "{ready:?}");
    d.expect_log("a DEBUG line", 15 * SECOND, |l| l.contains("DEBUG"))
        .await;

    // A broken reload (workers = 5000, and level back to info): refused, the daemon runs on, and
    // still on the old configuration (debug lines keep coming).
    d.write_config(&config("info", "200ms", "workers = 5000"));
    d.signal(Signal::SIGHUP);
    d.expect("RELOADING=1", 10 * SECOND, |m| has(m, "RELOADING=1"))
        .await;
    let (ready, _) = d
        .expect("READY=1 after the broken reload", 10 * SECOND, |m| {
            has(m, "READY=1")
        })
        .await;
    let status = status_of(&ready).unwrap_or_default();
    assert!(
        status.starts_with("reload failed, running on the previous configuration")
            && status.contains("runner.workers"),
        "{status}"
    );
    assert!(d.running());
    d.skip_log();
    d.expect_log("a DEBUG line after the refused reload", 15 * SECOND, |l| {
        l.contains("DEBUG")
    })
    .await;
    d.expect(
        "a STATUS line that remembers the failed reload",
        15 * SECOND,
        |m| status_of(m).is_some_and(|s| s.contains("last reload failed")),
    )
    .await;

    // A key that only a restart applies is reported as such.
    d.write_config(&config("debug", "300ms", ""));
    d.signal(Signal::SIGHUP);
    let (ready, _) = d
        .expect("READY=1 after the third reload", 10 * SECOND, |m| {
            has(m, "READY=1")
        })
        .await;
    assert_eq!(
        status_of(&ready),
        Some("reloaded; restart needed for runner.heartbeat"),
        "{ready:?}"
    );

    d.signal(Signal::SIGTERM);
    d.expect("STOPPING=1", 10 * SECOND, |m| has(m, "STOPPING=1"))
        .await;
    let (code, _) = d.exit(30 * SECOND).await;
    assert_eq!(code, Some(0), "{}", d.diagnostics());
}

/// A job that stays in flight: it asks the orchestrator for its reply, and the orchestrator never
/// answers (within the test). Nothing is being sent, so a release may requeue it. Returns the
/// job's id, the orchestrator (keep it alive) and the environment that points a live daemon at it.
async fn stuck_job(db: &TestDb) -> (i64, MockOrchestrator, Vec<(&'static str, String)>) {
    let orchestrator = MockOrchestrator::start(two_texts()).await;
    orchestrator.script([Answer::Slow(Duration::from_secs(3600), two_texts())]);
    let id = db
        .insert_payload(r#"{"to":"15551230000","input":{"text":"hi"}}"#)
        .await;
    let env = vec![
        ("OUTBOUND_RUNNER__DELIVERY__MODE", "live".to_string()),
        (
            "OUTBOUND_RUNNER__WHATSAPP__PHONE_NUMBER_ID",
            "1234567890".to_string(),
        ),
        (
            "OUTBOUND_RUNNER__WHATSAPP__ACCESS_TOKEN",
            "never-used".to_string(),
        ),
        // Never reached: the job never gets past composing.
        (
            "OUTBOUND_RUNNER__WHATSAPP__API_BASE",
            "http://127.0.0.1:9".to_string(),
        ),
        ("OUTBOUND_RUNNER__ORCHESTRATOR__URL", orchestrator.url()),
        (
            "OUTBOUND_RUNNER__ORCHESTRATOR__TOKEN",
            ORCHESTRATOR_TOKEN.to_string(),
        ),
        ("OUTBOUND_RUNNER__ORCHESTRATOR__TIMEOUT", "1h".to_string()),
        ("OUTBOUND_RUNNER__RUNNER__JOB_TIMEOUT", "1h".to_string()),
    ];
    (id, orchestrator, env)
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn sigterm_drains_a_job_in_flight_asks_for_time_and_exits_0() {
    let db = TestDb::new().await;
    let (id, _orchestrator, env) = stuck_job(&db).await;
    let mut d = Daemon::start(
        &db.url,
        "[runner]\ndrain_timeout = \"2s\"\nheartbeat = \"200ms\"\n",
        Some(SECOND),
        &env_refs(&env),
    );
    d.expect("READY=1", 60 * SECOND, |m| has(m, "READY=1"))
        .await;
    d.expect("STATUS with the job in flight", 15 * SECOND, |m| {
        status_of(m).is_some_and(|s| s.starts_with("working") && s.contains("busy=1/"))
    })
    .await;
    assert_eq!(db.job(id).await.status, "running");

    d.signal(Signal::SIGTERM);
    d.expect("STOPPING=1", 10 * SECOND, |m| has(m, "STOPPING=1"))
        .await;
    // A job in flight can hold the drain up to drain_timeout: time is asked for.
    let (extend, _) = d
        .expect("EXTEND_TIMEOUT_USEC while draining", 10 * SECOND, |m| {
            has(m, "EXTEND_TIMEOUT_USEC=")
        })
        .await;
    let usec: u64 = extend
        .lines()
        .find_map(|l| l.strip_prefix("EXTEND_TIMEOUT_USEC="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        usec > 2_000_000 && usec <= 17_000_000,
        "the rest of the 2 s drain plus the release margin: {usec}"
    );
    let (code, _) = d.exit(30 * SECOND).await;
    assert_eq!(code, Some(0), "{}", d.diagnostics());
    // The dispatcher stops ticking when the drain begins; that is no health problem to report
    // (systemd does not watch a stopping service).
    assert!(
        !d.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("withholding")),
        "{}",
        d.diagnostics()
    );

    // The unfinished job was released, its attempt refunded; nothing is left running.
    let job = db.job(id).await;
    assert_eq!(job.status, "queued");
    assert_eq!(job.attempts, 0);
    assert!(job.locked_by.is_none());
    assert_eq!(db.count("running").await, 0);
}

#[tokio::test]
async fn a_second_sigterm_exits_at_once_with_130() {
    let db = TestDb::new().await;
    let (_id, _orchestrator, env) = stuck_job(&db).await;
    let mut d = Daemon::start(
        &db.url,
        "[runner]\ndrain_timeout = \"60s\"\nheartbeat = \"200ms\"\n",
        None,
        &env_refs(&env),
    );
    d.expect("READY=1", 60 * SECOND, |m| has(m, "READY=1"))
        .await;
    d.expect("STATUS with the job in flight", 15 * SECOND, |m| {
        status_of(m).is_some_and(|s| s.contains("busy=1/"))
    })
    .await;
    d.signal(Signal::SIGTERM);
    d.expect("STOPPING=1", 10 * SECOND, |m| has(m, "STOPPING=1"))
        .await;
    d.signal(Signal::SIGTERM);
    let (code, _) = d.exit(10 * SECOND).await;
    assert_eq!(code, Some(130), "{}", d.diagnostics());
}

// --- The unit and the packaged configuration agree with the daemon -----------------------------

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `Key=value` lines of a unit file, in order.
fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn directive(unit: &str, key: &str) -> Vec<String> {
    directives(unit)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn the_unit_fits_the_daemon() {
    let unit = repo_file("systemd/outbound-runner.service");
    let one = |key: &str| {
        let v = directive(&unit, key);
        assert_eq!(v.len(), 1, "{key}= once: {v:?}");
        v[0].clone()
    };
    assert_eq!(one("Type"), "notify-reload");
    assert_eq!(one("ExecStart"), "/usr/bin/outbound-runner run");
    assert_eq!(
        one("ExecStartPre"),
        "-/usr/bin/outbound-runner check-config"
    );
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(
        one("RestartPreventExitStatus"),
        outbound_runner::exit::CONFIG.to_string()
    );
    assert_eq!(one("KillMode"), "mixed");

    // The stop timeout covers the default drain plus the release margin the daemon asks for,
    // and the watchdog period leaves the dispatcher's heartbeat room to be late.
    let builtin = outbound_runner::config::load(&outbound_runner::config::LoadOptions {
        skip_default_path: true,
        ..Default::default()
    })
    .unwrap();
    let drain = builtin.runner.drain_timeout;
    let stop = humantime::parse_duration(&one("TimeoutStopSec")).unwrap();
    assert!(
        stop >= drain + Duration::from_secs(15),
        "TimeoutStopSec={stop:?} for a {drain:?} drain"
    );
    let watchdog = humantime::parse_duration(&one("WatchdogSec")).unwrap();
    assert!(watchdog >= builtin.runner.heartbeat * 10, "{watchdog:?}");

    // Every credential the unit loads is one the configuration reads, under that name.
    let ids: Vec<String> = directive(&unit, "LoadCredential")
        .iter()
        .map(|v| {
            v.split_once(':')
                .map_or(v.as_str(), |(id, _)| id)
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 9, "{ids:?}");
    let dir = std::env::temp_dir().join(format!("or-cred-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    for id in &ids {
        let value = if id.contains("url") {
            "postgres://u:secret@db.example.internal/app"
        } else {
            "a-secret"
        };
        std::fs::write(dir.join(id), format!("{value}\n")).unwrap();
    }
    let s = outbound_runner::config::load(&outbound_runner::config::LoadOptions {
        skip_default_path: true,
        env: [(
            "CREDENTIALS_DIRECTORY".to_string(),
            dir.to_string_lossy().into_owned(),
        )]
        .into(),
        ..Default::default()
    })
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(s.database.url.is_some());
    assert!(s.database.direct_url.is_some());
    assert!(s.database.listen_url.is_some());
    assert!(s.http.job_runner_token.is_some());
    assert!(s.http.cron_secret.is_some());
    assert!(s.http.admin_token.is_some());
    assert!(s.orchestrator.token.is_some());
    assert!(s.whatsapp.access_token.is_some());
    assert!(s.whatsapp.app_secret.is_some());

    // The drop-in for systemd < 253 gives the same reload through a signal.
    let compat = repo_file("systemd/systemd-before-253.conf");
    assert_eq!(directive(&compat, "Type"), ["notify"]);
    assert_eq!(
        directive(&compat, "ExecReload"),
        ["/bin/kill -HUP $MAINPID"]
    );
}

#[test]
fn the_packaged_config_lists_every_key_commented_and_sets_only_live_delivery() {
    let packaged = repo_file("packaging/config.toml");
    let defaults = repo_file("config/default.toml");

    // Every key of the built-in defaults appears, commented out, in its section.
    let keys = |text: &str, commented: bool| -> Vec<String> {
        let mut section = String::new();
        let mut out = Vec::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
                continue;
            }
            let line = if commented {
                match line.strip_prefix('#') {
                    Some(l) if !l.starts_with(' ') && !l.starts_with('#') => l,
                    _ => continue,
                }
            } else {
                line
            };
            if let Some((key, _)) = line.split_once(" = ") {
                if !key.starts_with('#') && !key.contains(' ') {
                    out.push(format!("{section}.{key}"));
                }
            }
        }
        out
    };
    let all = keys(&defaults, false);
    assert!(all.len() > 40, "{all:?}");
    let mut listed = keys(&packaged, true);
    listed.extend(keys(&packaged, false));
    for key in &all {
        assert!(
            listed.contains(key),
            "{key} is not in packaging/config.toml"
        );
    }
    // The one active setting.
    assert_eq!(keys(&packaged, false), ["delivery.mode"]);
    assert!(packaged.contains("\nmode = \"live\"\n"));

    // It loads, and with the number and the token it is a valid live configuration.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/config.toml");
    let load = |env: &[(&str, &str)]| {
        outbound_runner::config::load(&outbound_runner::config::LoadOptions {
            config_path: Some(path.clone()),
            skip_default_path: true,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    };
    let missing = load(&[]).unwrap_err();
    let named: Vec<&str> = missing.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        named,
        ["whatsapp.phone_number_id", "whatsapp.access_token"],
        "{missing}"
    );
    let s = load(&[
        ("OUTBOUND_RUNNER__WHATSAPP__PHONE_NUMBER_ID", "123456"),
        ("OUTBOUND_RUNNER__WHATSAPP__ACCESS_TOKEN", "token"),
    ])
    .unwrap();
    assert_eq!(s.delivery.mode, outbound_runner::config::DeliveryMode::Live);
}

#[tokio::test]
async fn ready_only_after_the_http_port_answers() {
    let db = TestDb::new().await;
    // A port free a moment ago; the daemon binds it before it says READY=1.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut d = Daemon::start(
        &db.url,
        "",
        None,
        &[("OUTBOUND_RUNNER__HTTP__LISTEN", listen.as_str())],
    );
    d.expect("READY=1", 60 * SECOND, |m| has(m, "READY=1"))
        .await;
    // The instant READY=1 is seen, the HTTP server already answers.
    let health = reqwest::get(format!("http://{listen}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(format!("http://{listen}/readyz"))
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        200,
        "{}",
        ready.text().await.unwrap_or_default()
    );
    d.signal(Signal::SIGTERM);
    let (code, _) = d.exit(30 * SECOND).await;
    assert_eq!(code, Some(0));
}
