//! Real daemon processes: `outbound-runner run` with its configuration in the environment, its
//! stderr collected, killed with SIGKILL when the test drops it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::support::mock_meta::Receivers;

/// The daemon binary: `CHAOS_BIN`, else the one cargo built with this test (debug under
/// `cargo test`, release under `cargo test --release`).
pub fn binary() -> PathBuf {
    std::env::var_os("CHAOS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_outbound-runner")))
}

/// Every line a slot's processes wrote to stderr, all generations.
#[derive(Default)]
pub struct LogBook {
    lines: Mutex<Vec<String>>,
    count: watch::Sender<usize>,
}

impl LogBook {
    fn push(&self, line: String) {
        let n = {
            let mut lines = self.lines.lock().unwrap();
            lines.push(line);
            lines.len()
        };
        self.count.send_replace(n);
    }

    pub fn len(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// The first line at or after `from` that satisfies `pred`, awaited up to `within`.
    pub async fn wait_for(
        &self,
        from: usize,
        pred: impl Fn(&str) -> bool,
        within: Duration,
    ) -> Option<String> {
        let mut rx = self.count.subscribe();
        let mut next = from;
        let found = tokio::time::timeout(within, async {
            loop {
                {
                    let lines = self.lines.lock().unwrap();
                    if let Some(l) = lines.iter().skip(next).find(|l| pred(l)) {
                        return Some(l.clone());
                    }
                    next = lines.len().max(next);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        found.ok().flatten()
    }

    /// Lines at or after `from` containing `needle`.
    pub fn count(&self, from: usize, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .skip(from)
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn all(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap();
        let start = lines.len().saturating_sub(n);
        lines[start..].join("\n")
    }
}

/// One daemon slot: the process of its current generation and every line it logged.
pub struct Daemon {
    pub slot: usize,
    pub generation: u32,
    child: Option<Child>,
    pub log: Arc<LogBook>,
    /// Where this generation's log starts.
    pub from: usize,
    /// `http://127.0.0.1:PORT` of this generation, once it is ready.
    pub http: Option<String>,
    env: BTreeMap<String, String>,
}

impl Daemon {
    fn spawn(
        slot: usize,
        env: BTreeMap<String, String>,
        log: Arc<LogBook>,
        generation: u32,
    ) -> anyhow::Result<Daemon> {
        let mut cmd = Command::new(binary());
        cmd.arg("run")
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting outbound-runner")?;
        let from = log.len();
        let stderr = child.stderr.take().expect("piped stderr");
        let book = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                book.push(format!("[{slot}.{generation}] {line}"));
            }
        });
        Ok(Daemon {
            slot,
            generation,
            child: Some(child),
            log,
            from,
            http: None,
            env,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Waits for this generation's "ready" line; learns its HTTP address.
    pub async fn ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let line = self
            .log
            .wait_for(
                self.from,
                |l| l.contains("outbound_runner::app: ready"),
                within,
            )
            .await;
        if line.is_none() {
            bail!(
                "daemon {} did not become ready within {within:?}:\n{}",
                self.slot,
                self.log.tail(30)
            );
        }
        let http = self
            .log
            .wait_for(
                self.from,
                |l| l.contains("HTTP listening"),
                Duration::from_secs(1),
            )
            .await
            .and_then(|l| {
                let at = l.find("addr=")? + "addr=".len();
                Some(format!("http://{}", l[at..].split_whitespace().next()?))
            });
        self.http = http;
        Ok(())
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL, and reap.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
        }
    }

    /// Sends `signal` to the process (e.g. SIGSTOP / SIGCONT: a pause).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }

    /// Sends SIGTERM (the drain begins).
    pub fn sigterm(&self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }

    /// Waits up to `within` for the process to exit; SIGKILL after that. The exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        match tokio::time::timeout(within, c.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = c.kill().await;
                None
            }
        }
    }

    /// A new process in this slot (a new `lockedBy`), same configuration.
    pub fn respawn(&mut self) -> anyhow::Result<()> {
        let next = Daemon::spawn(
            self.slot,
            self.env.clone(),
            self.log.clone(),
            self.generation + 1,
        )?;
        *self = next;
        Ok(())
    }

    /// The `/readyz` status code, or `None` when nothing answers within 3 s.
    pub async fn readyz(&self, client: &reqwest::Client) -> Option<u16> {
        let base = self.http.as_ref()?;
        let r = client
            .get(format!("{base}/readyz"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()?;
        Some(r.status().as_u16())
    }

    /// One sample of the Prometheus exposition, e.g. `outbound_runner_wakeups_total` with
    /// `source="notify"`; 0 when absent.
    pub async fn metric(&self, client: &reqwest::Client, name: &str, label: &str) -> Option<f64> {
        let base = self.http.as_ref()?;
        let text = client
            .get(format!("{base}/metrics"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with(name) && l.contains(label))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }
}

/// Several daemons against one database.
pub struct Fleet {
    pub daemons: Vec<Daemon>,
    /// The `/webhooks/whatsapp` URLs of the daemons that are up (ready, not killed): where the
    /// mock Cloud API sends its status webhooks.
    pub receivers: Receivers,
}

impl Fleet {
    /// Starts `n` daemons; `per_slot` adds variables for one slot. Does not wait for them.
    pub fn spawn(
        n: usize,
        env: &BTreeMap<String, String>,
        per_slot: impl Fn(usize) -> Vec<(String, String)>,
    ) -> anyhow::Result<Fleet> {
        let mut daemons = Vec::new();
        for slot in 0..n {
            let mut env = env.clone();
            env.extend(per_slot(slot));
            daemons.push(Daemon::spawn(slot, env, Arc::new(LogBook::default()), 0)?);
        }
        Ok(Fleet {
            daemons,
            receivers: Receivers::default(),
        })
    }

    pub async fn all_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        for d in &mut self.daemons {
            d.ready(within).await?;
        }
        self.publish();
        Ok(())
    }

    /// Tells the webhooks' sender which daemons are up now.
    fn publish(&mut self) {
        let urls = self
            .daemons
            .iter_mut()
            .filter_map(|d| {
                let up = d.alive();
                d.http
                    .as_ref()
                    .filter(|_| up)
                    .map(|h| format!("{h}/webhooks/whatsapp"))
            })
            .collect();
        self.receivers.set(urls);
    }

    /// SIGKILL one daemon.
    pub async fn kill9(&mut self, slot: usize) {
        self.daemons[slot].kill9().await;
        self.publish();
    }

    /// Starts slot `slot` again and waits until it is ready.
    pub async fn restart(&mut self, slot: usize) -> anyhow::Result<()> {
        let d = &mut self.daemons[slot];
        d.kill9().await;
        self.publish();
        let d = &mut self.daemons[slot];
        d.respawn()?;
        d.ready(Duration::from_secs(60)).await?;
        self.publish();
        Ok(())
    }

    /// Slots whose process has exited.
    pub fn dead(&mut self) -> Vec<usize> {
        self.daemons
            .iter_mut()
            .filter_map(|d| (!d.alive()).then_some(d.slot))
            .collect()
    }

    /// Lines containing `needle` logged by any generation of any slot.
    pub fn count(&self, needle: &str) -> usize {
        self.daemons.iter().map(|d| d.log.count(0, needle)).sum()
    }

    /// The sum of `key=N` over the lines containing `needle`, every generation of every slot.
    pub fn sum(&self, needle: &str, key: &str) -> u64 {
        let key = format!("{key}=");
        self.daemons
            .iter()
            .flat_map(|d| {
                d.log
                    .all()
                    .lines()
                    .filter(|l| l.contains(needle))
                    .filter_map(|l| {
                        let at = l.find(&key)? + key.len();
                        l[at..].split_whitespace().next()?.parse::<u64>().ok()
                    })
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    /// The last lines of every slot, for a failure report.
    pub fn tails(&self, n: usize) -> String {
        self.daemons
            .iter()
            .map(|d| {
                format!(
                    "--- daemon {} log (last {n} lines) ---\n{}",
                    d.slot,
                    d.log.tail(n)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERM to all (they drain), then SIGKILL for any still running after `within`.
    /// Returns the exit codes.
    pub async fn stop(&mut self, within: Duration) -> Vec<Option<i32>> {
        for d in &self.daemons {
            d.sigterm();
        }
        let mut codes = Vec::new();
        for d in &mut self.daemons {
            codes.push(d.wait_exit(within).await);
        }
        codes
    }
}
