//! The log format the binary writes: journald's form only when stderr really is the journal.

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_outbound-runner");

/// Runs `outbound-runner run` until it fails on a taken port (it logs that at error level),
/// with stderr going to a file and `JOURNAL_STREAM` set by `journal_stream(file)`; returns the log.
fn run_with_stderr_file(journal_stream: impl Fn(&std::fs::File) -> String) -> String {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let path = std::env::temp_dir().join(format!("or-log-{:08x}.log", rand::random::<u32>()));
    let file = std::fs::File::create(&path).unwrap();
    let stream = journal_stream(&file);
    let status = Command::new(BIN)
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/unused")
        .env(
            "OUTBOUND_RUNNER__HTTP__LISTEN",
            taken.local_addr().unwrap().to_string(),
        )
        .env("JOURNAL_STREAM", stream)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(69));
    let log = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    log
}

#[test]
fn journal_lines_carry_a_priority_and_no_timestamp() {
    let log = run_with_stderr_file(|f| {
        let m = f.metadata().unwrap();
        format!("{}:{}", m.dev(), m.ino())
    });
    let line = log
        .lines()
        .find(|l| l.contains("cannot listen on http.listen"))
        .unwrap_or_else(|| panic!("no error line in:\n{log}"));
    assert!(line.starts_with("<3>"), "{line}");
    assert!(!line.contains('\u{1b}'), "{line}");
    // No timestamp: the level follows the priority directly.
    assert!(
        line.starts_with("<3>ERROR") || line.starts_with("<3> ERROR"),
        "{line}"
    );
}

#[test]
fn an_inherited_journal_stream_that_is_not_stderr_is_ignored() {
    let log = run_with_stderr_file(|_| "1:1".to_string());
    let line = log
        .lines()
        .find(|l| l.contains("cannot listen on http.listen"))
        .unwrap_or_else(|| panic!("no error line in:\n{log}"));
    assert!(!line.starts_with('<'), "{line}");
    // A timestamp first (RFC 3339), and no colours: the file is not a terminal.
    assert!(
        line.as_bytes()[..4].iter().all(u8::is_ascii_digit),
        "{line}"
    );
    assert!(!line.contains('\u{1b}'), "{line}");
}
