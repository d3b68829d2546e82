//! Idle cost: the real daemon binary (`outbound-runner run`, built by cargo for this bench) on
//! a fresh database with nothing to do; CPU seconds, thread wake-ups and RSS over the window,
//! and the server's CPU for our database meanwhile. Once on an empty table, once beside 1M
//! finished rows (what a week of retention leaves behind).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};

use crate::common::{Args, Db, Row, ServerCpu, cpu_of, forget_child, int, register_child};
use crate::progress;

const BINARY: &str = env!("CARGO_BIN_EXE_outbound-runner");

struct Idle {
    cpu: f64,
    server_cpu: f64,
    wakeups_per_s: f64,
    rss_mb: f64,
    peak_mb: f64,
    threads: usize,
    interval_passes: f64,
    claims: f64,
    log_lines: usize,
}

/// A line of /proc/<pid>/status, in kB.
fn status_kb(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Context switches of every thread of `pid`: how often the process woke up.
fn switches(pid: u32) -> (f64, usize) {
    let mut total = 0.0;
    let mut threads = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            threads += 1;
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            for l in status.lines() {
                if let Some(v) = l
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    total += v.trim().parse::<f64>().unwrap_or(0.0);
                }
            }
        }
    }
    (total, threads)
}

/// Sums the samples of a metric family in Prometheus text (`name` or `name{…}` lines).
fn metric(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        .filter(|l| label.is_none_or(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(addr: &str) -> String {
    match reqwest::get(format!("http://{addr}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn once(seconds: u64, finished_rows: usize) -> Idle {
    let db = if finished_rows > 0 {
        let db = Db::new().await;
        db.insert_rows(finished_rows, true).await;
        db.vacuum().await;
        db
    } else {
        Db::empty().await
    };
    // An empty configuration file: nothing from the machine's /etc applies.
    let config = std::env::temp_dir().join(format!("{}.toml", db.name));
    std::fs::write(&config, "").unwrap();
    let mut cmd = tokio::process::Command::new(BINARY);
    cmd.arg("--config")
        .arg(&config)
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", db.url())
        .env("OUTBOUND_RUNNER__HTTP__LISTEN", "127.0.0.1:0")
        .env("OUTBOUND_RUNNER__LOG__FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("starting the daemon");
    let pid = child.id().expect("the daemon's pid");
    register_child(pid);

    // Read its logs (JSON lines) for readiness and the HTTP address; count what it logs.
    let (ready_tx, mut ready_rx) = watch::channel(None::<String>);
    let (line_tx, mut line_rx) = mpsc::unbounded_channel::<String>();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = line_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send(l);
            }
        });
    }
    drop(line_tx);
    let (count_tx, count_rx) = watch::channel(0usize);
    let collector = tokio::spawn(async move {
        let mut addr = None;
        let mut all = Vec::new();
        while let Some(l) = line_rx.recv().await {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_default();
            // Fields at the top level or under "fields", depending on the formatter.
            let field = |k: &str| v[k].as_str().or_else(|| v["fields"][k].as_str());
            let msg = field("message").unwrap_or_default();
            if msg.starts_with("HTTP listening") {
                addr = field("addr").map(str::to_string);
            }
            if msg == "ready" {
                let _ = ready_tx.send(Some(addr.clone().unwrap_or_default()));
            }
            all.push(l);
            count_tx.send_modify(|n| *n += 1);
        }
        all
    });

    let ready = tokio::time::timeout(Duration::from_secs(60), ready_rx.wait_for(|a| a.is_some()))
        .await
        .ok()
        .and_then(|r| r.ok().and_then(|a| a.clone()));
    let addr = match ready {
        Some(addr) => addr,
        None => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            forget_child(pid);
            let logs = collector.await.unwrap_or_default();
            panic!("the daemon did not become ready: {}", logs.join("\n"));
        }
    };
    // Let start-up settle: the first pass, the first probe.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let before = scrape(&addr).await;
    let lines0 = *count_rx.borrow();
    let cpu0 = cpu_of(&pid.to_string());
    let (sw0, _) = switches(pid);
    let server = ServerCpu::backends(&db.name);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let cpu1 = cpu_of(&pid.to_string());
    let (sw1, threads) = switches(pid);
    let (server_cpu, _) = server.stop();
    let rss = status_kb(pid, "VmRSS:");
    let peak = status_kb(pid, "VmHWM:");
    let lines1 = *count_rx.borrow();
    let after = scrape(&addr).await;

    // Stop it like systemd does, and make sure it exits cleanly.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    };
    forget_child(pid);
    let logs = collector.await.unwrap_or_default();
    if !status.is_some_and(|s| s.success()) {
        eprintln!(
            "the daemon did not exit cleanly ({status:?}); its log:\n{}",
            logs.join("\n")
        );
    }
    let _ = std::fs::remove_file(&config);
    db.drop().await;

    let diff = |name: &str, label: Option<&str>| {
        metric(&after, name, label) - metric(&before, name, label)
    };
    Idle {
        cpu: cpu1 - cpu0,
        server_cpu,
        wakeups_per_s: (sw1 - sw0) / seconds as f64,
        rss_mb: rss / 1024.0,
        peak_mb: peak / 1024.0,
        threads,
        interval_passes: diff("outbound_runner_wakeups_total", Some("source=\"interval\"")),
        claims: diff("outbound_runner_claim_duration_seconds_count", None),
        log_lines: lines1 - lines0,
    }
}

pub async fn run(a: &Args) -> Vec<Row> {
    let secs = a.idle_seconds.max(1);
    let mut rows = Vec::new();
    // One window each: a median of figures near zero adds nothing but minutes.
    for finished in [0, a.large_rows] {
        let i = once(secs, finished).await;
        progress!(
            "idle daemon, {} finished rows: {:.2} s CPU in {secs} s, RSS {:.1} MB",
            int(finished as f64),
            i.cpu,
            i.rss_mb
        );
        rows.push(Row {
            section: "idle",
            measure: "the daemon binary, nothing to do".into(),
            setup: format!(
                "{secs} s window, {}",
                if finished == 0 {
                    "empty table".to_string()
                } else {
                    format!("{} finished rows in the table", int(finished as f64))
                }
            ),
            result: format!(
                "CPU {:.2} s ({:.2} % of a core), RSS {:.1} MB",
                i.cpu,
                i.cpu / secs as f64 * 100.0,
                i.rss_mb
            ),
            ratio: String::new(),
            detail: format!(
                "peak RSS {:.1} MB, {} threads, {:.1} thread wake-ups/s; {} interval passes, {} claim statements, {} log lines; PostgreSQL {:.2} s CPU",
                i.peak_mb,
                i.threads,
                i.wakeups_per_s,
                i.interval_passes,
                i.claims,
                i.log_lines,
                i.server_cpu
            ),
        });
    }
    rows
}
