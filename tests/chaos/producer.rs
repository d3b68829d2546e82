//! The app's side: inserts jobs at a steady rate, one `INSERT` per job (one webhook, one row,
//! one NOTIFY), and remembers every id it was given back.
//!
//! Job n sends to its own recipient; every third job has two messages. Each message's text is
//! `chaos <n> part <seq>`, so a message the mock accepted is known by (job id, text) and that is
//! (job id, seq).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Executor;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// The payload of job number `n`.
pub fn payload(n: u64) -> Value {
    let parts = if n % 3 == 0 { 2 } else { 1 };
    let messages: Vec<Value> = (0..parts)
        .map(|seq| json!({"type": "text", "text": {"body": format!("chaos {n} part {seq}")}}))
        .collect();
    json!({"to": format!("1555{:07}", n % 10_000_000), "message": messages})
}

pub struct Producer {
    pool: PgPool,
    ids: Arc<Mutex<Vec<i64>>>,
    errors: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Producer {
    /// A producer on `url` inserting `rate` jobs per second until stopped. Its sessions are
    /// always read-write (the read-only scenario makes the daemons' sessions read-only).
    pub async fn start(url: &str, rate: u32) -> anyhow::Result<Producer> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(2))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET default_transaction_read_only = off")
                        .await?;
                    Ok(())
                })
            })
            .connect_lazy_with(url.parse()?);
        let mut p = Producer {
            pool,
            ids: Arc::default(),
            errors: Arc::default(),
            next: Arc::new(AtomicU64::new(1)),
            stop: CancellationToken::new(),
            task: None,
        };
        if rate > 0 {
            p.run(rate);
        }
        Ok(p)
    }

    fn run(&mut self, rate: u32) {
        let (pool, ids, errors, next, stop) = (
            self.pool.clone(),
            self.ids.clone(),
            self.errors.clone(),
            self.next.clone(),
            self.stop.clone(),
        );
        self.task = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            // A database that was away does not get a burst afterwards: the app's webhooks
            // failed meanwhile.
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                let insert = sqlx::query_scalar::<_, i64>(
                    r#"INSERT INTO "OutboundJob" (payload, "requestId") VALUES ($1, $2) RETURNING id"#,
                )
                .bind(payload(n))
                .bind(format!("chaos-{n}"))
                .fetch_one(&pool);
                match tokio::time::timeout(Duration::from_secs(3), insert).await {
                    Ok(Ok(id)) => ids.lock().unwrap().push(id),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    /// Inserts `n` jobs in one statement (a burst; one NOTIFY), due after `delay` (database
    /// clock). Returns (id, seconds until due as the database saw it).
    pub async fn burst(&self, n: usize, delay: Duration) -> anyhow::Result<Vec<(i64, f64)>> {
        let first = self.next.fetch_add(n as u64, Ordering::Relaxed);
        let payloads: Vec<Value> = (first..first + n as u64).map(payload).collect();
        let request_ids: Vec<String> = (first..first + n as u64)
            .map(|n| format!("chaos-{n}"))
            .collect();
        let rows: Vec<(i64, f64)> = sqlx::query_as(
            r#"INSERT INTO "OutboundJob" (payload, "requestId", "runAt")
               SELECT p, r, now() + make_interval(secs => $3)
               FROM unnest($1::jsonb[], $2::text[]) AS t(p, r)
               RETURNING id, EXTRACT(EPOCH FROM "runAt" - now())::float8"#,
        )
        .bind(payloads)
        .bind(request_ids)
        .bind(delay.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        self.ids.lock().unwrap().extend(rows.iter().map(|r| r.0));
        Ok(rows)
    }

    /// How many jobs were inserted so far.
    pub fn count(&self) -> usize {
        self.ids.lock().unwrap().len()
    }

    /// Inserts that failed (the database was away, or read-only for us).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn ids(&self) -> Vec<i64> {
        self.ids.lock().unwrap().clone()
    }

    /// Stops inserting (the steady part); bursts still work.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
