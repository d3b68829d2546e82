//! A real PgBouncer of our own, in transaction mode with an otherwise stock configuration (no
//! `ignore_startup_parameters`), on a free port in front of the test PostgreSQL. Shared by the
//! integration tests and the benchmark (`--only pooler`).
//!
//! PgBouncer must be installed (`apt-get install pgbouncer`; `.ci/run` does it). A missing one
//! fails the test with that message: these tests are never skipped.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PgBouncer; stopped (and its files removed) when dropped.
pub struct PgBouncer {
    child: Child,
    dir: PathBuf,
    pub port: u16,
    /// The user PgBouncer lets in (the upstream URL's user).
    user: String,
}

/// `pgbouncer` on PATH, else where Debian puts it.
fn binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("pgbouncer"))
            .find(|f| f.is_file())
    });
    on_path.or_else(|| {
        [
            "/usr/sbin/pgbouncer",
            "/usr/bin/pgbouncer",
            "/usr/local/bin/pgbouncer",
        ]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgBouncer {
    /// Starts PgBouncer in front of the server of `upstream` (a postgres:// URL whose user and
    /// password it uses for its server connections), lending at most `pool_size` server
    /// connections per database.
    pub fn start(upstream: &str, pool_size: u32) -> PgBouncer {
        let exe = binary().unwrap_or_else(|| {
            panic!(
                "pgbouncer is not installed: these tests run the queue through a real PgBouncer \
                 (apt-get install pgbouncer; .ci/run installs it)"
            )
        });
        let up = url::Url::parse(upstream).expect("the upstream URL parses");
        let host = up.host_str().unwrap_or("127.0.0.1").to_string();
        let upstream_port = up.port().unwrap_or(5432);
        let user = if up.username().is_empty() {
            "postgres".to_string()
        } else {
            up.username().to_string()
        };
        let password = up
            .password()
            .map(|p| format!(" password={p}"))
            .unwrap_or_default();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("or-pgbouncer-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ini = dir.join("pgbouncer.ini");
        let users = dir.join("users.txt");
        // Stock settings but for where it listens, whom it trusts, how many server connections
        // it lends, and the admin console (SHOW POOLS) for the benchmark's counts.
        std::fs::write(
            &ini,
            format!(
                "[databases]\n\
                 * = host={host} port={upstream_port} user={user}{password}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {users}\n\
                 admin_users = {user}\n\
                 pool_mode = transaction\n\
                 default_pool_size = {pool_size}\n\
                 max_client_conn = 1000\n",
                users = users.display()
            ),
        )
        .unwrap();
        std::fs::write(&users, format!("\"{user}\" \"\"\n")).unwrap();
        let log = std::fs::File::create(dir.join("pgbouncer.log")).unwrap();
        let mut cmd = Command::new(&exe);
        // PgBouncer refuses to run as root; as root, it can switch to the server's own user.
        if nix::unistd::geteuid().is_root() {
            // Readable by that user: the directory and files are created 0755/0644 here.
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
        let mut bouncer = PgBouncer {
            child,
            dir,
            port,
            user,
        };
        // Up when it accepts connections; bounded.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = bouncer.child.try_wait() {
                panic!("pgbouncer exited at start ({status}): {}", bouncer.log());
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen within 10s: {}",
                bouncer.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        bouncer
    }

    /// A URL for `database` through PgBouncer, with `query` appended (e.g. `pgbouncer=true`).
    pub fn url(&self, database: &str, query: &str) -> String {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!(
            "postgres://{}@127.0.0.1:{}/{database}{q}",
            self.user, self.port
        )
    }

    /// The admin console (`SHOW POOLS`, `SHOW CLIENTS`): the benchmark's connection counts.
    #[allow(dead_code)]
    pub fn admin_url(&self) -> String {
        self.url("pgbouncer", "")
    }

    /// What PgBouncer logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
