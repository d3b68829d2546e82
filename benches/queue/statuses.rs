//! Meta's status webhooks applied: statuses per second and PostgreSQL CPU per status, three per
//! message (`sent`, `delivered`, `read`, interleaved across messages as Meta sends them), one
//! status per webhook, many webhooks at once. Two ways in:
//!
//! - `writer`: straight into the status writer (the group commit), the database's share alone;
//! - `http`: signed POSTs to `/webhooks/whatsapp` of a runner's HTTP server (signature check,
//!   JSON, the writer), what Meta's traffic costs end to end.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use outbound_runner::config::{self, LoadOptions};
use outbound_runner::delivery::statuses;
use outbound_runner::http::{self, HttpState, Listeners};
use outbound_runner::runner::{Mode, Runner};
use outbound_runner::whatsapp::statuses::{Kind, StatusUpdate, callback_id};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::{Args, Db, Row, ServerCpu, cpu_of, int, median, rate};
use crate::mock_meta::{self, status_json, webhook_body};
use crate::progress;

const SECRET: &str = "bench-app-secret";
/// Webhooks in flight at once (Meta sends many concurrently).
const CONCURRENCY: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Way {
    Writer,
    Http,
}

#[derive(Debug, Clone, Copy)]
struct Applied {
    per_s: f64,
    own_cpu: f64,
    server_cpu: f64,
}

/// `messages` done jobs, each with a `sent` message and its wamid.
async fn prepare(db: &Db, messages: usize) {
    sqlx::query(
        r#"WITH j AS (
               INSERT INTO "OutboundJob" (payload, status, attempts, "completedAt")
               SELECT jsonb_build_object('to', '1555' || lpad(g::text, 7, '0'),
                      'message', '{"type":"text","text":{"body":"hello"}}'::jsonb),
                      'done', 1, now()
               FROM generate_series(1, $1) g
               RETURNING id
           )
           INSERT INTO "OutboundMessage" ("jobId", seq, status, "to", body, wamid, "sentAt")
           SELECT id, 0, 'sent', '15550000000', '{"type":"text","text":{"body":"hello"}}',
                  'wamid.BENCH' || id, now()
           FROM j"#,
    )
    .bind(messages as i32)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(r#"VACUUM ANALYZE "OutboundMessage""#)
        .execute(&db.pool)
        .await
        .unwrap();
    db.vacuum().await;
}

/// The statuses in the order they arrive: each message's `sent`, then its `delivered` about
/// 500 messages later, its `read` 1,000 later.
async fn statuses_of(db: &Db) -> Vec<StatusUpdate> {
    let ids: Vec<i64> = sqlx::query_scalar(r#"SELECT id FROM "OutboundJob" ORDER BY id"#)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let now = chrono::Utc::now();
    let mut keyed: Vec<(usize, StatusUpdate)> = Vec::with_capacity(ids.len() * 3);
    for (i, id) in ids.iter().enumerate() {
        for (offset, kind) in [(0, Kind::Sent), (500, Kind::Delivered), (1000, Kind::Read)] {
            keyed.push((
                i + offset,
                StatusUpdate {
                    wamid: format!("wamid.BENCH{id}"),
                    kind,
                    callback: Some(((*id).into(), 0)),
                    at: now,
                    error_code: None,
                    error_title: None,
                },
            ));
        }
    }
    keyed.sort_by_key(|(k, _)| *k);
    keyed.into_iter().map(|(_, u)| u).collect()
}

fn body_of(u: &StatusUpdate) -> Vec<u8> {
    let (job, seq) = u.callback.clone().unwrap();
    serde_json::to_vec(&webhook_body(vec![status_json(
        &u.wamid,
        u.kind.as_str(),
        &callback_id(&job, seq),
        u.at.timestamp(),
        None,
    )]))
    .unwrap()
}

async fn measure(messages: usize, way: Way) -> Applied {
    let db = Db::new().await;
    prepare(&db, messages).await;
    let updates = statuses_of(&db).await;
    let total = updates.len();
    let mut settings = config::load(&LoadOptions {
        config_path: None,
        skip_default_path: true,
        env: HashMap::new(),
    })
    .unwrap();
    settings.runner.workers = 4;
    settings.whatsapp.phone_number_id = mock_meta::PHONE_NUMBER_ID.into();
    settings.whatsapp.app_secret = Some(SecretString::from(SECRET));
    settings.http.listen = String::new();
    // The webhooks' connections, and the writer's.
    settings.database.max_connections = 8;
    let pool = db.runner_pool(&settings).await;
    let runner = Runner::builder(
        pool,
        Arc::new(settings),
        Arc::new(outbound_runner::delivery::sandbox::SandboxHandler),
    )
    .mode(Mode::Passive)
    .start()
    .await;

    // The webhooks, signed before the clock starts (Meta signs them, not us).
    let bodies: Vec<(Vec<u8>, String)> = if way == Way::Http {
        updates
            .iter()
            .map(|u| {
                let b = body_of(u);
                let s = http::webhooks::sign(SECRET.as_bytes(), &b);
                (b, s)
            })
            .collect()
    } else {
        Vec::new()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/webhooks/whatsapp",
        listener.local_addr().unwrap()
    );
    let server = http::spawn(
        Listeners {
            api: Some(listener),
            metrics: None,
        },
        HttpState::with_metrics_on_api(runner.clone(), false),
        CancellationToken::new(),
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();

    let updates = Arc::new(updates);
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let server_cpu = ServerCpu::start(&db.name);
    let own0 = cpu_of("self");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (updates, bodies, next) = (updates.clone(), bodies.clone(), next.clone());
        let runner = runner.clone();
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= updates.len() {
                    return;
                }
                match way {
                    Way::Writer => {
                        runner
                            .apply_statuses(vec![updates[i].clone()])
                            .await
                            .unwrap();
                    }
                    Way::Http => {
                        let (body, sig) = &bodies[i];
                        let r = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .header("x-hub-signature-256", sig)
                            .body(body.clone())
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status().as_u16(), 200);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let (server_cpu, sampler_cpu) = server_cpu.stop();
    let own_cpu = cpu_of("self") - own0 - sampler_cpu;
    server.finish(Duration::from_secs(5)).await;
    runner.shutdown().await;

    let read: i64 =
        sqlx::query_scalar(r#"SELECT count(*) FROM "OutboundMessage" WHERE status = 'read'"#)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(read as usize, messages, "every message ends read");
    let _ = statuses::EARLY_RETENTION;
    db.drop().await;
    Applied {
        per_s: total as f64 / elapsed.as_secs_f64(),
        own_cpu,
        server_cpu,
    }
}

pub async fn run(a: &Args) -> Vec<Row> {
    let messages = if a.quick { 2_000 } else { 20_000 };
    let mut results: BTreeMap<Way, Vec<Applied>> = BTreeMap::new();
    for round in 1..=a.runs {
        for way in [Way::Writer, Way::Http] {
            let s = measure(messages, way).await;
            progress!(
                "round {round}/{}: statuses via {way:?}: {} statuses/s",
                a.runs,
                int(s.per_s)
            );
            results.entry(way).or_default().push(s);
        }
    }
    let n = (messages * 3) as f64;
    results
        .into_iter()
        .map(|(way, ss)| {
            let rates: Vec<f64> = ss.iter().map(|s| s.per_s).collect();
            let own = median(&ss.iter().map(|s| s.own_cpu).collect::<Vec<_>>());
            let server = median(&ss.iter().map(|s| s.server_cpu).collect::<Vec<_>>());
            Row {
                section: "statuses",
                measure: match way {
                    Way::Writer => "status webhooks applied, straight into the status writer",
                    Way::Http => "status webhooks applied, signed POSTs to /webhooks/whatsapp",
                }
                .to_string(),
                setup: format!(
                    "{} messages × sent, delivered, read; one status per webhook, {CONCURRENCY} at once",
                    int(messages as f64)
                ),
                result: format!("{} statuses/s", rate(&rates)),
                ratio: format!(
                    "{:.0} % of the 3,000 statuses/s goal",
                    median(&rates) / 3000.0 * 100.0
                ),
                detail: format!(
                    "CPU {own:.2} s runner{} + {server:.2} s PostgreSQL = {:.0} + {:.0} µs/status",
                    if way == Way::Http { " and client" } else { "" },
                    own / n * 1e6,
                    server / n * 1e6
                ),
            }
        })
        .collect()
}
