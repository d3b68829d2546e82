//! Where a scenario's database lives: the shared test server (`TEST_DATABASE_URL`, default
//! postgres on 127.0.0.1:5432), or a private cluster this suite starts in a temporary directory
//! for the faults that must not touch a shared server (restarts, crashes, holding most of its
//! connections, pinning its xmin horizon).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use outbound_runner::db::embedded::EmbeddedPostgres;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor};
use tokio::sync::Mutex;

use crate::support;

/// A PostgreSQL server the suite may use.
#[derive(Clone)]
pub enum Server {
    Shared,
    Private(Arc<Private>),
}

impl Server {
    /// A URL to the server's `postgres` database, as a superuser.
    pub fn admin_url(&self) -> String {
        match self {
            Server::Shared => support::admin_url(),
            Server::Private(p) => p.url.clone(),
        }
    }

    /// A fresh, migrated database of its own.
    pub async fn create_db(&self) -> anyhow::Result<Db> {
        self.create_db_in(None).await
    }

    /// A fresh, migrated database whose files live in `tablespace` (or the default one).
    pub async fn create_db_in(&self, tablespace: Option<&str>) -> anyhow::Result<Db> {
        let name = format!("or_chaos_{:012x}", rand::random::<u64>() >> 16);
        let admin: PgConnectOptions = self.admin_url().parse()?;
        let mut conn = admin
            .connect()
            .await
            .context("connecting to PostgreSQL (see README: Tests)")?;
        let ts = tablespace.map_or(String::new(), |t| format!(r#" TABLESPACE "{t}""#));
        conn.execute(format!(r#"CREATE DATABASE "{name}"{ts}"#).as_str())
            .await?;
        conn.close().await?;
        let mut url = url::Url::parse(&self.admin_url())?;
        url.set_path(&name);
        let url = url.to_string();
        let pool = PgPoolOptions::new()
            .max_connections(6)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(url.parse()?);
        outbound_runner::db::migrate(&pool).await?;
        Ok(Db {
            name,
            url,
            pool,
            server: self.clone(),
        })
    }
}

/// A scenario's database: `url` for the daemons, `pool` for the test's own queries.
pub struct Db {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    server: Server,
}

impl Db {
    /// Closes the pool; the database itself is dropped when this value is.
    pub async fn drop_db(self) {
        self.pool.close().await;
    }

    /// A connection of its own to this database (outside the pool).
    pub async fn connect(&self) -> anyhow::Result<sqlx::PgConnection> {
        let opts: PgConnectOptions = self.url.parse()?;
        Ok(opts.application_name("chaos").connect().await?)
    }

    /// Terminates every backend of the daemons on this database (the LISTEN connections
    /// included). Returns (terminated, of which LISTEN connections).
    pub async fn terminate_runners(&self, admin: &PgPool) -> anyhow::Result<(i64, i64)> {
        let row: (i64, i64) = sqlx::query_as(
            r#"SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)),
                      count(*) FILTER (WHERE query ILIKE 'listen%')
               FROM pg_stat_activity
               WHERE datname = $1 AND application_name = 'outbound-runner'"#,
        )
        .bind(&self.name)
        .fetch_one(admin)
        .await?;
        Ok(row)
    }
}

impl Drop for Db {
    /// Drops the database (its connections too), also when a scenario failed half-way. On a
    /// thread of its own: Drop cannot await.
    fn drop(&mut self) {
        let (name, admin) = (self.name.clone(), self.server.admin_url());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok(opts) = admin.parse::<PgConnectOptions>() else {
                    return;
                };
                let connect = tokio::time::timeout(Duration::from_secs(5), opts.connect());
                if let Ok(Ok(mut conn)) = connect.await {
                    let _ = conn
                        .execute(
                            format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str(),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

/// An admin pool (the server's `postgres` database).
pub async fn admin_pool(server: &Server) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(
            server
                .admin_url()
                .parse::<PgConnectOptions>()?
                .application_name("chaos"),
        )
        .await?)
}

/// A private PostgreSQL cluster in a temporary directory (Unix socket only, 200 connections),
/// started with the daemon's own embedded-server code. It can be stopped, crashed and started
/// again on the same data.
pub struct Private {
    pub state_dir: PathBuf,
    pub url: String,
    pg: Mutex<Option<EmbeddedPostgres>>,
}

impl Private {
    pub async fn start() -> anyhow::Result<Private> {
        let state_dir =
            std::env::temp_dir().join(format!("or-chaos-pg-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&state_dir)?;
        let pg = EmbeddedPostgres::start(&state_dir).await.context(
            "starting a private PostgreSQL (are PostgreSQL's server binaries installed?)",
        )?;
        Ok(Private {
            url: pg.url(),
            state_dir,
            pg: Mutex::new(Some(pg)),
        })
    }

    /// Fast shutdown (SIGINT): sessions are ended, the server exits cleanly.
    pub async fn stop(&self) {
        if let Some(mut pg) = self.pg.lock().await.take() {
            pg.stop().await;
        }
    }

    /// Immediate shutdown (SIGQUIT to the postmaster): like a crash, the next start runs crash
    /// recovery from the WAL.
    pub async fn crash(&self) {
        let mut guard = self.pg.lock().await;
        if let Some(mut pg) = guard.take() {
            let pidfile = pg.data_dir().join("postmaster.pid");
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGQUIT,
                );
            }
            // Reaps the postmaster (the SIGINT it sends finds nobody).
            pg.stop().await;
        }
    }

    /// Starts the server again on the same data directory.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        let mut guard = self.pg.lock().await;
        if guard.is_none() {
            *guard = Some(EmbeddedPostgres::start(&self.state_dir).await?);
        }
        Ok(())
    }

    /// Stops the server and removes its directory.
    pub async fn shutdown(&self) {
        self.stop().await;
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// A small tmpfs mounted on a temporary directory and given to the `postgres` account: a disk
/// that fills up. Unmounted (lazily) when dropped.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts `mib` MiB, or says why it cannot (not root, no mount permission).
    pub fn mount(mib: u32) -> Result<Tmpfs, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("mounting a small tmpfs needs root".into());
        }
        let dir = std::env::temp_dir().join(format!("or-chaos-disk-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("running mount: {e}"))?;
        if !status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err("mount -t tmpfs was refused (no CAP_SYS_ADMIN in this sandbox)".into());
        }
        let m = Tmpfs { dir };
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .ok_or("no postgres account")?;
        std::os::unix::fs::chown(&m.dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .map_err(|e| e.to_string())?;
        Ok(m)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}
