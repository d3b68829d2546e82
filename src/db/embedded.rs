//! The embedded default: a private PostgreSQL for a first run and for development.
//!
//! When no database URL is configured, `run` starts the machine's own PostgreSQL server binaries
//! (`initdb`, `postgres`) on a data directory under the state directory, listening on a Unix
//! socket only, and stops it on exit. A server left running by a runner that was killed is
//! adopted, not started twice. PostgreSQL refuses to run as root: as root, the server runs as the
//! distribution's `postgres` account, which is given the data directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User};
use std::os::unix::fs::chown;

/// Why the embedded server could not start. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no database is configured and PostgreSQL's server binaries (initdb, postgres) were not found \
         on PATH or in /usr/lib/postgresql/*/bin. Either install PostgreSQL's server package \
         (Debian: apt-get install postgresql) or set DATABASE_URL to an existing database"
    )]
    BinariesMissing,
    #[error(
        "PostgreSQL refuses to run as root and this machine has no `postgres` account to run it as. \
         Run outbound-runner as an unprivileged user, create a `postgres` system user, or set DATABASE_URL"
    )]
    NoUnprivilegedUser,
    #[error("embedded PostgreSQL: {0}")]
    Failed(String),
}

/// A running embedded server.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    socket_dir: PathBuf,
    /// Set when this process started the server (or adopted one it must stop).
    pid: Option<i32>,
    child: Option<tokio::process::Child>,
}

impl EmbeddedPostgres {
    /// The default state directory: systemd's `$STATE_DIRECTORY`, `/var/lib/outbound-runner` for
    /// root (the `postgres` account must be able to reach it; root's home is private), else the
    /// XDG state directory.
    pub fn default_state_dir(env: &std::collections::HashMap<String, String>) -> PathBuf {
        if let Some(dir) = env.get("STATE_DIRECTORY") {
            // systemd may pass several, separated by ':'.
            return PathBuf::from(dir.split(':').next().unwrap_or(dir));
        }
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/outbound-runner");
        }
        if let Some(dir) = env.get("XDG_STATE_HOME") {
            return Path::new(dir).join("outbound-runner");
        }
        let home = env.get("HOME").cloned().unwrap_or_else(|| ".".into());
        Path::new(&home).join(".local/state/outbound-runner")
    }

    /// The URL of a server already running in `state_dir`, if there is one (for `enqueue` and
    /// `status` in a second terminal).
    pub fn running_url(state_dir: &Path) -> Option<String> {
        let data_dir = state_dir.join("pgdata");
        read_pid(&data_dir).filter(|pid| alive(*pid))?;
        Some(socket_url(&state_dir.join("run")))
    }

    /// Initialises the data directory if needed, starts (or adopts) the server and waits until it
    /// accepts connections.
    pub async fn start(state_dir: &Path) -> Result<Self, EmbeddedError> {
        let bins = find_binaries().ok_or(EmbeddedError::BinariesMissing)?;
        let run_as = if nix::unistd::geteuid().is_root() {
            Some(
                User::from_name("postgres")
                    .ok()
                    .flatten()
                    .ok_or(EmbeddedError::NoUnprivilegedUser)?,
            )
        } else {
            None
        };
        let data_dir = state_dir.join("pgdata");
        let socket_dir = state_dir.join("run");
        for dir in [state_dir, &socket_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|e| EmbeddedError::Failed(format!("creating {}: {e}", dir.display())))?;
        }
        if let Some(user) = &run_as {
            // The server's account must own its socket directory and be able to create pgdata.
            for dir in [state_dir, &socket_dir] {
                chown(dir, Some(user.uid.as_raw()), Some(user.gid.as_raw())).map_err(|e| {
                    EmbeddedError::Failed(format!("giving {} to postgres: {e}", dir.display()))
                })?;
            }
        }

        if !data_dir.join("PG_VERSION").exists() {
            tracing::info!(data_dir = %data_dir.display(), "initialising the embedded PostgreSQL");
            let mut cmd = tokio::process::Command::new(bins.join("initdb"));
            cmd.arg("-D")
                .arg(&data_dir)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            as_user(&mut cmd, run_as.as_ref());
            not_for_systemd(&mut cmd);
            let out = cmd
                .output()
                .await
                .map_err(|e| EmbeddedError::Failed(format!("running initdb: {e}")))?;
            if !out.status.success() {
                return Err(EmbeddedError::Failed(format!(
                    "initdb failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }

        let url = socket_url(&socket_dir);
        if let Some(pid) = read_pid(&data_dir).filter(|pid| alive(*pid)) {
            tracing::warn!(
                pid,
                "adopting an embedded PostgreSQL left running by an earlier runner"
            );
            wait_ready(&url, Duration::from_secs(30)).await?;
            return Ok(Self {
                data_dir,
                socket_dir,
                pid: Some(pid),
                child: None,
            });
        }

        let log_path = state_dir.join("postgres.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| EmbeddedError::Failed(format!("opening {}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| EmbeddedError::Failed(e.to_string()))?;
        let mut cmd = tokio::process::Command::new(bins.join("postgres"));
        cmd.arg("-D")
            .arg(&data_dir)
            .arg("-k")
            .arg(&socket_dir)
            .args(["-c", "listen_addresses=", "-c", "max_connections=200"])
            // JIT needs writable and executable memory, which the packaged unit denies
            // (MemoryDenyWriteExecute=yes); our queries are far too cheap to want it anyway.
            .args(["-c", "jit=off"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        as_user(&mut cmd, run_as.as_ref());
        not_for_systemd(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| EmbeddedError::Failed(format!("starting postgres: {e}")))?;
        let pid = child.id().map(|p| p as i32);
        let mut this = Self {
            data_dir,
            socket_dir,
            pid,
            child: Some(child),
        };
        if let Err(e) = wait_ready(&url, Duration::from_secs(60)).await {
            this.stop().await;
            return Err(EmbeddedError::Failed(format!(
                "{e}; see {}",
                log_path.display()
            )));
        }
        Ok(this)
    }

    /// The URL other programs can use (it holds no password: trust auth on a private socket).
    pub fn url(&self) -> String {
        socket_url(&self.socket_dir)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Fast shutdown: open transactions are rolled back, the server exits cleanly.
    pub async fn stop(&mut self) {
        let Some(pid) = self.pid.take() else { return };
        let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        match self.child.take() {
            Some(mut child) => {
                if tokio::time::timeout(Duration::from_secs(30), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
            None => {
                while alive(pid) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tracing::info!("embedded PostgreSQL stopped");
    }
}

fn socket_url(socket_dir: &Path) -> String {
    let mut url = url::Url::parse("postgres://postgres@localhost/postgres").expect("static URL");
    url.query_pairs_mut()
        .append_pair("host", &socket_dir.to_string_lossy());
    url.to_string()
}

fn as_user(cmd: &mut tokio::process::Command, user: Option<&User>) {
    if let Some(user) = user {
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        cmd.env("HOME", &user.dir);
    }
}

/// The server is our child, not the service: a PostgreSQL built with systemd support would
/// otherwise send its own READY=1 to our notification socket.
fn not_for_systemd(cmd: &mut tokio::process::Command) {
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        cmd.env_remove(var);
    }
}

fn read_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks existence without touching the process.
    matches!(
        kill(Pid::from_raw(pid), None),
        Ok(()) | Err(nix::errno::Errno::EPERM)
    )
}

/// The folder holding `initdb` and `postgres`: PATH first, then the newest distribution folder.
pub fn find_binaries() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_both(&dir) {
                return Some(dir);
            }
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .chain(
            std::fs::read_dir("/usr")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name();
                    let v = name.to_str()?.strip_prefix("pgsql-")?;
                    Some((v.split('.').next()?.parse().ok()?, e.path().join("bin")))
                }),
        )
        .filter(|(_, dir)| has_both(dir))
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, dir)| dir)
}

async fn wait_ready(url: &str, within: Duration) -> Result<(), EmbeddedError> {
    use sqlx::Connection;
    let deadline = Instant::now() + within;
    loop {
        match sqlx::PgConnection::connect(url).await {
            Ok(conn) => {
                let _ = conn.close().await;
                return Ok(());
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(EmbeddedError::Failed(format!(
                    "the server did not accept connections within {}s: {e}",
                    within.as_secs()
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
