//! Several sending numbers against the mock Cloud API: each under its own rate, in parallel;
//! a 131048 holds only its number; `numbers pause|resume` act through the database; an unknown
//! `from` fails only its job; pair spacing is per number; a reload adds a number; a tier limit
//! holds template messages to new recipients only; each runner's circuit shows in `numbers`.

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbound_runner::config::{DeliveryMode, NumberSettings, Settings};
use outbound_runner::delivery::live::LiveHandler;
use serde_json::json;

use crate::support::mock_meta::{self, MockMeta, Reply};
use crate::support::window::{most_in, most_in_one_second};
use crate::support::{TestDb, metrics_of, spawn_passive, spawn_runner, test_settings, wait_count};

const BIN: &str = env!("CARGO_BIN_EXE_outbound-runner");
/// The second number the mock serves, and its token.
const OTHER: &str = "208811223344556";
const OTHER_TOKEN: &str = "mock-other-token-77c1";

fn number(id: &str, token: &str, rate: Option<u32>) -> NumberSettings {
    NumberSettings {
        phone_number_id: id.into(),
        access_token: Some(token.to_string().into()),
        access_token_file: None,
        rate_per_second: rate,
        pair_interval: None,
        ..Default::default()
    }
}

/// Live delivery to `meta` from its default number and [`OTHER`].
fn two_numbers(s: &mut Settings, meta: &MockMeta) {
    s.delivery.mode = DeliveryMode::Live;
    s.whatsapp.api_base = meta.api_base();
    s.whatsapp.phone_number_id = mock_meta::PHONE_NUMBER_ID.into();
    s.whatsapp.access_token = Some(mock_meta::TOKEN.to_string().into());
    s.whatsapp.timeout = Duration::from_secs(5);
    s.whatsapp.pair_interval = Duration::ZERO;
    s.whatsapp.numbers = vec![number(OTHER, OTHER_TOKEN, None)];
    meta.add_number(OTHER, OTHER_TOKEN);
}

fn handler() -> Arc<LiveHandler> {
    Arc::new(LiveHandler::new(&test_settings()).unwrap())
}

async fn job(db: &TestDb, from: Option<&str>, to: &str) -> i64 {
    let mut payload = json!({"to": to, "message": {"type": "text", "text": {"body": "hi"}}});
    if let Some(from) = from {
        payload["from"] = from.into();
    }
    db.insert_payload(&payload.to_string()).await
}

/// The binary with `DATABASE_URL` and a configuration naming both numbers.
fn cli(db: &TestDb, args: &[&str]) -> Output {
    cli_with(db, "", "", args)
}

/// [`cli`] with more keys for the default number's and the other number's tables.
fn cli_with(db: &TestDb, default_keys: &str, other_keys: &str, args: &[&str]) -> Output {
    let dir = std::env::temp_dir().join(format!("or-numbers-{}", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[whatsapp]\nphone_number_id = \"{}\"\nrate_per_second = 80\n{default_keys}\n\
             [[whatsapp.numbers]]\nphone_number_id = \"{OTHER}\"\nrate_per_second = 20\n\
             {other_keys}\n",
            mock_meta::PHONE_NUMBER_ID
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Two numbers with different rates, each with a backlog of three seconds: no second of
/// either holds more than its rate at the mock, and the two proceed side by side.
#[tokio::test]
async fn two_numbers_each_stay_under_their_own_rate_in_parallel() {
    let db = TestDb::new().await;
    let meta = MockMeta::start_with(Default::default(), Duration::from_millis(20)).await;
    let (fast, slow) = ((100u32, 300usize), (30u32, 90usize));
    let runner = spawn_runner(&db, handler(), |s| {
        two_numbers(s, &meta);
        s.whatsapp.rate_per_second = fast.0;
        s.whatsapp.numbers = vec![number(OTHER, OTHER_TOKEN, Some(slow.0))];
        s.runner.workers = 128;
    })
    .await;
    let mut recorded = meta.recorded();
    let start = Instant::now();
    for i in 0..fast.1.max(slow.1) {
        if i < fast.1 {
            job(&db, None, &format!("1555100{i:04}")).await;
        }
        if i < slow.1 {
            job(&db, Some(OTHER), &format!("1555200{i:04}")).await;
        }
    }
    wait_count(
        &mut recorded,
        (fast.1 + slow.1) as u64,
        Duration::from_secs(40),
    )
    .await;
    for (phone, (rate, jobs)) in [(mock_meta::PHONE_NUMBER_ID, fast), (OTHER, slow)] {
        let at: Vec<Instant> = meta
            .accepted_from(phone)
            .iter()
            .map(|a| a.arrived)
            .collect();
        assert_eq!(at.len(), jobs, "{phone}");
        let most = most_in_one_second(at.clone());
        let first = *at.iter().min().unwrap() - start;
        let last = *at.iter().max().unwrap() - start;
        println!(
            "number {phone}: rate_per_second = {rate}, most sends in one second = {most}, \
             {jobs} sends from {first:.2?} to {last:.2?}"
        );
        // The pacer holds any 1.02 s of *releases* to the rate (exact, with paused time, in
        // the pacer's unit tests). What the mock sees is each release plus a trip to it that
        // varies with the machine's load, so the check here allows up to 220 ms of that jitter:
        // no 0.8 s window of arrivals may hold more than the rate. A burst above the rate (a
        // token bucket's refill on top of a full bucket) still fails it.
        let in_window = most_in(Duration::from_millis(800), at.clone());
        assert!(
            in_window <= rate as usize,
            "{phone}: {in_window} arrivals in 0.8 s ({most} in one second) at rate {rate}"
        );
        // Side by side: the slow number started while the fast one's backlog was running.
        assert!(
            first < Duration::from_secs(2),
            "{phone} started at {first:?}"
        );
    }
    assert_eq!(meta.refused(130429), 0);
    // The mock records a request before it answers: the runner counts the send once the answer
    // is in, so wait for every job to be done (a deferred attempt also counts as finished)
    // before reading its counters.
    let done = metrics_of(&runner)
        .jobs_finished
        .with_label_values(&["done"]);
    let mut finished = runner.finished();
    tokio::time::timeout(Duration::from_secs(10), async {
        while done.get() < (fast.1 + slow.1) as u64 {
            finished.changed().await.unwrap();
        }
    })
    .await
    .expect("every job done within 10 s");
    assert_eq!(
        metrics_of(&runner)
            .number_sent
            .with_label_values(&[OTHER])
            .get(),
        slow.1 as u64
    );
    runner.shutdown().await;
}

/// A 131048 on one number holds it (in the database, until resumed by hand) while the other
/// keeps sending; the held jobs keep their attempts; `numbers resume` releases them.
#[tokio::test]
async fn a_spam_hold_pauses_only_its_number_until_resumed() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = spawn_passive(&db, handler(), |s| two_numbers(s, &meta)).await;
    meta.script_for(OTHER, [Reply::error(400, 131048)]);

    let tripped = job(&db, Some(OTHER), "15551300001").await;
    assert_eq!(runner.run_pass(1).await.unwrap().retried, [tripped]);
    let j = db.job(tripped).await;
    assert_eq!((j.status.as_str(), j.attempts), ("queued", 0));
    assert_eq!(j.last_error_code.as_deref(), Some("131048"));
    assert!(j.last_error.unwrap().contains("numbers resume"));

    // The default number keeps sending.
    let other = job(&db, None, "15551300002").await;
    assert_eq!(runner.run_pass(1).await.unwrap().processed, [other]);
    // A second job for the held number waits without reaching Meta or spending an attempt.
    let held = job(&db, Some(OTHER), "15551300003").await;
    assert_eq!(runner.run_pass(1).await.unwrap().retried, [held]);
    let j = db.job(held).await;
    assert_eq!((j.status.as_str(), j.attempts), ("queued", 0));
    assert_eq!(j.last_error_code.as_deref(), Some("number_on_hold"));
    assert!(j.due_in > 20.0, "{}", j.due_in);
    assert_eq!(meta.accepted_from(OTHER).len(), 0);
    assert_eq!(
        metrics_of(&runner)
            .number_on_hold
            .with_label_values(&[OTHER])
            .get(),
        1
    );

    let listed = cli(&db, &["numbers"]);
    assert_eq!(listed.status.code(), Some(0), "{listed:?}");
    let table = stdout(&listed);
    println!("{table}");
    assert!(table.contains("paused until resumed"), "{table}");
    assert!(table.contains("131048"), "{table}");

    let resumed = cli(&db, &["numbers", "resume", OTHER]);
    assert_eq!(resumed.status.code(), Some(0), "{resumed:?}");
    assert!(
        stdout(&resumed).contains("2 held jobs are due now"),
        "{resumed:?}"
    );
    assert!(db.job(held).await.due_in <= 0.0);
    let mut done = runner.run_pass(2).await.unwrap().processed;
    done.sort();
    assert_eq!(done, [tripped, held]);
    assert_eq!(db.job(held).await.attempts, 1);
    assert_eq!(meta.accepted_from(OTHER).len(), 2);
    runner.shutdown().await;
}

/// `numbers pause` (every runner, through the database) stops a number's sends; its jobs keep
/// their attempts; `numbers resume` sends them.
#[tokio::test]
async fn pause_and_resume_by_command() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = spawn_passive(&db, handler(), |s| two_numbers(s, &meta)).await;
    let out = cli(
        &db,
        &[
            "numbers",
            "pause",
            OTHER,
            "--for",
            "2h",
            "--reason",
            "campaign review",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let unknown = cli(&db, &["numbers", "pause", "999"]);
    assert_eq!(unknown.status.code(), Some(64), "{unknown:?}");

    let paused = job(&db, Some(OTHER), "15551400001").await;
    // A template (business-initiated): counted for the messaging-limit tier.
    let free = db
        .insert_payload(
            &json!({"to": "15551400002", "message": {"type": "template",
                "template": {"name": "hello_world", "language": {"code": "en_US"}}}})
            .to_string(),
        )
        .await;
    let report = runner.run_pass(2).await.unwrap();
    assert_eq!(report.processed, vec![free]);
    assert_eq!(report.retried, vec![paused]);
    let j = db.job(paused).await;
    assert_eq!((j.status.as_str(), j.attempts), ("queued", 0));
    assert_eq!(j.last_error_code.as_deref(), Some("number_on_hold"));
    let why = j.last_error.unwrap();
    assert!(
        why.contains("campaign review") && why.contains("by cli"),
        "{why}"
    );
    let table = stdout(&cli(&db, &["numbers"]));
    assert!(table.contains("paused for 1h 59m"), "{table}");
    assert!(table.contains("campaign review"), "{table}");

    let out = cli(&db, &["numbers", "resume", OTHER]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(runner.run_pass(1).await.unwrap().processed, [paused]);
    assert_eq!(db.job(paused).await.attempts, 1);
    let table = stdout(&cli(&db, &["numbers"]));
    println!("{table}");
    assert!(!table.contains("paused"), "{table}");
    let row = |id: &str| -> Vec<String> {
        let line = table.lines().find(|l| l.starts_with(id)).unwrap();
        line.split_whitespace().map(str::to_string).collect()
    };
    // NUMBER (default) RATE/S PAIR SENT-TODAY TEMPLATE-RECIPIENTS-24H STATE
    assert_eq!(row(mock_meta::PHONE_NUMBER_ID)[4..], ["1", "1", "sending"]);
    assert_eq!(row(OTHER)[3..], ["1", "0", "sending"]);
    let again = cli(&db, &["numbers", "resume", OTHER]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    runner.shutdown().await;
}

/// A `from` that is not configured fails only its job, readably; a reload that adds the number
/// makes the next such job send.
#[tokio::test]
async fn an_unknown_from_fails_only_its_job_and_a_reload_adds_the_number() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = spawn_passive(&db, handler(), |s| {
        two_numbers(s, &meta);
        s.whatsapp.numbers.clear();
    })
    .await;
    let stray = job(&db, Some(OTHER), "15551500001").await;
    let fine = job(&db, None, "15551500002").await;
    let report = runner.run_pass(2).await.unwrap();
    assert_eq!(report.processed, vec![fine]);
    assert_eq!(report.failed, vec![stray]);
    let j = db.job(stray).await;
    assert_eq!(j.last_error_code.as_deref(), Some("unknown_number"));
    let why = j.last_error.unwrap();
    assert!(
        why.contains(OTHER) && why.contains("not configured"),
        "{why}"
    );

    let mut s: Settings = (*runner.settings()).clone();
    s.whatsapp.numbers = vec![number(OTHER, OTHER_TOKEN, None)];
    runner.apply(Arc::new(s));
    let now_known = job(&db, Some(OTHER), "15551500003").await;
    assert_eq!(runner.run_pass(1).await.unwrap().processed, [now_known]);
    let sent = meta.accepted_from(OTHER);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        meta.authorizations().last().unwrap().as_deref(),
        Some(format!("Bearer {OTHER_TOKEN}").as_str()),
        "the number's own token"
    );
    runner.shutdown().await;
}

/// Pair spacing is per (number, recipient): one recipient written to from two numbers is not
/// held back by the other number's send.
#[tokio::test]
async fn pair_spacing_is_per_number() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = spawn_passive(&db, handler(), |s| {
        two_numbers(s, &meta);
        s.whatsapp.pair_interval = Duration::from_secs(6);
    })
    .await;
    let a = job(&db, None, "15551600001").await;
    let b = job(&db, Some(OTHER), "15551600001").await;
    let c = job(&db, None, "15551600001").await;
    let report = runner.run_pass(3).await.unwrap();
    // The other number's job is not held back; of the two from one number, one waits.
    assert!(report.processed.contains(&b.into()), "{report:?}");
    assert_eq!(report.processed.len(), 2, "{report:?}");
    assert_eq!(report.retried.len(), 1, "{report:?}");
    let waiting = report.retried[0].clone();
    assert!(waiting == a || waiting == c, "{report:?}");
    let j = db.job(&waiting).await;
    assert_eq!(j.last_error_code.as_deref(), Some("recipient_paced"));
    assert_eq!(j.attempts, 0);
    runner.shutdown().await;
}

/// `check-config` lists every number, its token masked.
#[test]
fn check_config_lists_the_numbers_with_secrets_masked() {
    let dir = std::env::temp_dir().join(format!("or-numbers-cc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[delivery]\nmode = \"live\"\n[whatsapp]\nphone_number_id = \"111\"\n\
         access_token = \"tok-default-secret\"\n\
         [[whatsapp.numbers]]\nphone_number_id = \"222\"\naccess_token = \"tok-222-secret\"\n\
         rate_per_second = 20\n",
    )
    .unwrap();
    let run = |config: &std::path::Path| {
        Command::new(BIN)
            .arg("--config")
            .arg(config)
            .arg("check-config")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .unwrap()
    };
    let out = run(&config);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("whatsapp.numbers[0].phone_number_id = \"222\""),
        "{text}"
    );
    assert!(
        text.contains("whatsapp.numbers[0].access_token = ***"),
        "{text}"
    );
    assert!(
        text.contains("whatsapp.numbers[0].rate_per_second = 20"),
        "{text}"
    );
    assert!(!text.contains("tok-"), "{text}");

    // The same id twice: refused, naming the key.
    std::fs::write(
        &config,
        "[whatsapp]\nphone_number_id = \"111\"\n[[whatsapp.numbers]]\nphone_number_id = \"111\"\n",
    )
    .unwrap();
    let out = run(&config);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("whatsapp.numbers[0].phone_number_id") && err.contains("configured twice"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn template(db: &TestDb, from: Option<&str>, to: &str) -> i64 {
    let mut payload = json!({"to": to, "message": {"type": "template",
        "template": {"name": "hello_world", "language": {"code": "en_US"}}}});
    if let Some(from) = from {
        payload["from"] = from.into();
    }
    db.insert_payload(&payload.to_string()).await
}

/// Two numbers of one business with `tier_limit = 2`: once two recipients got a template from
/// either, a template to a third waits (no attempt spent, `tier_limit`), while a template to a
/// recipient counted already and a free-form reply still go; `numbers` shows the counts and the
/// held state.
#[tokio::test]
async fn a_tier_limit_holds_templates_to_new_recipients_only() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let tiered = |s: &mut Settings| {
        two_numbers(s, &meta);
        s.whatsapp.tier_limit = 2;
        s.whatsapp.business_id = "acme".into();
    };
    let runner = spawn_passive(&db, handler(), tiered).await;
    let a = template(&db, None, "15551700001").await;
    let b = template(&db, Some(OTHER), "15551700002").await;
    let mut done = runner.run_pass(2).await.unwrap().processed;
    done.sort();
    assert_eq!(done, [a, b]);

    // Within the second of the runner's copy: what it let through counts as new.
    let new = template(&db, Some(OTHER), "15551700003").await;
    assert_eq!(runner.run_pass(1).await.unwrap().retried, [new]);
    let j = db.job(new).await;
    assert_eq!((j.status.as_str(), j.attempts), ("queued", 0));
    assert_eq!(j.last_error_code.as_deref(), Some("tier_limit"));
    let why = j.last_error.unwrap();
    assert!(
        why.starts_with("tier_limit: 2 unique recipients in 24 h reached by business acme"),
        "{why}"
    );

    // A runner reading the counts afresh: held until the first recipient leaves the window.
    let fresh = spawn_passive(&db, handler(), tiered).await;
    let also_new = template(&db, None, "15551700004").await;
    let counted = template(&db, None, "15551700002").await;
    let reply = job(&db, None, "15551700005").await;
    let report = fresh.run_pass(3).await.unwrap();
    let mut processed = report.processed.clone();
    processed.sort();
    assert_eq!(processed, [counted, reply], "{report:?}");
    assert_eq!(report.retried, [also_new], "{report:?}");
    let j = db.job(also_new).await;
    assert_eq!(
        (j.attempts, j.last_error_code.as_deref()),
        (0, Some("tier_limit"))
    );
    let why = j.last_error.unwrap();
    assert!(why.contains("held until 20"), "{why}");
    assert!((290.0..=300.0).contains(&j.due_in), "{}", j.due_in);
    assert_eq!(
        metrics_of(&fresh)
            .number_deferred
            .with_label_values(&[mock_meta::PHONE_NUMBER_ID, "tier_limit"])
            .get(),
        1
    );
    assert_eq!(meta.accepted().len(), 4);

    let keys = "tier_limit = 2\nbusiness_id = \"acme\"";
    let listed = cli_with(&db, keys, keys, &["numbers"]);
    assert_eq!(listed.status.code(), Some(0), "{listed:?}");
    let table = stdout(&listed);
    println!("{table}");
    assert!(
        table.contains("business acme: 2/2 unique template recipients in 24 h"),
        "{table}"
    );
    assert_eq!(
        table
            .matches("tier limit reached: template messages to new recipients held until")
            .count(),
        2,
        "{table}"
    );
    // Without a limit the count is shown all the same, and nothing is held.
    let table = stdout(&cli(&db, &["numbers"]));
    let row = |id: &str| -> Vec<String> {
        let line = table.lines().find(|l| l.starts_with(id)).unwrap();
        line.split_whitespace().map(str::to_string).collect()
    };
    // NUMBER (default) RATE/S PAIR SENT-TODAY TIER-24H STATE
    assert_eq!(row(mock_meta::PHONE_NUMBER_ID)[4..], ["3", "2", "sending"]);
    assert_eq!(row(OTHER)[3..], ["1", "1", "sending"]);
    runner.shutdown().await;
    fresh.shutdown().await;
}

/// A halt-class answer opens the number's circuit in the runner that got it; the runner
/// writes it to "OutboundNumberCircuit" and `numbers` shows it, naming the runner.
#[tokio::test]
async fn numbers_shows_each_runners_circuit() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let runner = spawn_passive(&db, handler(), |s| two_numbers(s, &meta)).await;
    meta.script_for(OTHER, [Reply::error(401, 190)]);
    let halted = job(&db, Some(OTHER), "15551800001").await;
    assert_eq!(runner.run_pass(1).await.unwrap().retried, [halted]);
    assert_eq!(db.job(halted).await.last_error_code.as_deref(), Some("190"));
    let table = stdout(&cli(&db, &["numbers"]));
    println!("{table}");
    let line = table.lines().find(|l| l.starts_with(OTHER)).unwrap();
    assert!(line.contains("; circuit open on runner "), "{table}");
    assert!(line.contains("more: "), "{table}");
    let default = table
        .lines()
        .find(|l| l.starts_with(mock_meta::PHONE_NUMBER_ID))
        .unwrap();
    assert!(!default.contains("circuit"), "{table}");
    runner.shutdown().await;
}

/// A backlog at 40/s: the number's slots are taken ahead, so the runner claims a mark span's
/// worth of jobs at a time (about 9 at 40/s) instead of one claim per freed slot, and the sends
/// still leave evenly spaced at the rate (the marks are grouped, the requests are not).
#[tokio::test]
async fn a_busy_number_is_claimed_a_span_at_a_time_and_still_sends_evenly() {
    let db = TestDb::new().await;
    let meta = MockMeta::start().await;
    let jobs = 80usize;
    for i in 0..jobs {
        job(&db, None, &format!("1555300{i:04}")).await;
    }
    let runner = spawn_runner(&db, handler(), |s| {
        two_numbers(s, &meta);
        s.whatsapp.numbers.clear();
        s.whatsapp.rate_per_second = 40;
        s.runner.workers = 0;
    })
    .await;
    let mut finished = runner.finished();
    wait_count(&mut finished, jobs as u64, Duration::from_secs(20)).await;
    let metrics = metrics_of(&runner);
    let claims = metrics.claim_duration.get_sample_count();
    assert_eq!(
        metrics.jobs_claimed.get(),
        jobs as u64,
        "each job claimed once"
    );
    // One claim of the first second's slots, then a span (≈ 9 slots) at a time: about 6 in
    // all. One claim per freed slot, as before, would be about 40.
    assert!(
        claims <= 16,
        "{claims} claim statements for {jobs} jobs at 40/s"
    );
    let at: Vec<Instant> = meta.accepted().iter().map(|a| a.arrived).collect();
    assert_eq!(at.len(), jobs, "every message sent once");
    let most = most_in_one_second(at.clone());
    assert!(most <= 40, "{most} sends in one second at rate 40");
    // A tenth of a second holds about 4 sends at 40/s: a span's marks written together must not
    // bunch its requests.
    let tenth = most_in(Duration::from_millis(100), at);
    assert!(tenth <= 7, "{tenth} sends in 100 ms at rate 40");
    runner.shutdown().await;
}
