//! The README's run command on a machine with no database configured: the daemon starts a
//! private PostgreSQL, a job enqueued from "another terminal" is done, SIGTERM stops both.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_outbound-runner");

/// Reads stderr lines until one contains `needle`, bounded.
async fn wait_for_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    needle: &str,
    within: Duration,
) -> String {
    let found = tokio::time::timeout(within, async {
        let mut seen = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(needle) {
                return Ok(line);
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        Err(seen)
    })
    .await;
    match found {
        Ok(Ok(line)) => line,
        Ok(Err(seen)) => panic!("stderr closed before {needle:?}:\n{seen}"),
        Err(_) => panic!("no {needle:?} within {within:?}"),
    }
}

#[tokio::test]
async fn the_embedded_default_runs_a_job_enqueued_from_another_terminal() {
    if outbound_runner::db::embedded::find_binaries().is_none() {
        panic!("PostgreSQL server binaries are not installed (apt-get install postgresql)");
    }
    let state = std::env::temp_dir().join(format!("or-embedded-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&state).unwrap();
    let env = |cmd: &mut Command| {
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::temp_dir())
            .env("RUST_LOG", "info")
            .env("OUTBOUND_RUNNER__DATABASE__EMBEDDED_DIR", &state)
            .env("OUTBOUND_RUNNER__HTTP__LISTEN", "")
            .env("NO_COLOR", "1");
    };
    let mut daemon = Command::new(BIN);
    env(&mut daemon);
    let mut daemon = daemon
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(daemon.stderr.take().unwrap()).lines();
    wait_for_line(
        &mut lines,
        "embedded PostgreSQL is up",
        Duration::from_secs(90),
    )
    .await;
    wait_for_line(&mut lines, "ready", Duration::from_secs(30)).await;

    let mut enqueue = Command::new(BIN);
    env(&mut enqueue);
    let out = enqueue
        .args([
            "enqueue",
            "--to",
            "15551234567",
            "--text",
            "Hello from the queue",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();

    let done = format!("Job {id} completed successfully");
    wait_for_line(&mut lines, &done, Duration::from_secs(2)).await;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // Drain stderr so the daemon never blocks on a full pipe while stopping.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let status = tokio::time::timeout(Duration::from_secs(40), daemon.wait())
        .await
        .expect("the daemon stops after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        !state.join("pgdata/postmaster.pid").exists(),
        "the embedded PostgreSQL was stopped with the daemon"
    );
    let _ = std::fs::remove_dir_all(&state);
}
