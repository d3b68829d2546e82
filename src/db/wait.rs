//! A wait for a connection is never a job's fault.
//!
//! The pool is small and fixed (`database.max_connections`), the server's connections are
//! shared, and many jobs are in flight at once: a statement may find no connection free in time
//! (the pool's `acquire_timeout`), or the server may refuse a new one ("too many connections", a
//! role's `CONNECTION LIMIT`, a server starting up, a refused TCP connection). None of these
//! reached the server with the statement, so retrying it is always safe, and none of them says
//! anything about the job: [`patiently`] waits them out (bounded by the caller, normally the
//! job's lease, which the lease keeper extends) and counts them, so the dispatcher can claim
//! less while the database is saturated (docs/operations.md, "Connections").

use std::future::Future;
use std::time::Duration;

use prometheus::IntCounter;

use crate::config::Settings;

/// SQLSTATEs of a connection refused by the server before any statement ran: too many
/// connections (server or role limit), the server starting up or shutting down.
const REFUSED: [&str; 3] = ["53300", "57P03", "53000"];

/// Whether `e` is a wait for a connection (the statement never reached the server).
pub fn is_wait(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| REFUSED.contains(&c.as_ref())),
        sqlx::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
        ),
        _ => false,
    }
}

/// Runs `statement`, retrying it while it fails only for want of a connection, for at most
/// `bound` in all. Any other error, or a wait past `bound`, is returned. Each wait counts in
/// `waits`.
pub async fn patiently<T, F, Fut>(
    bound: Duration,
    waits: &IntCounter,
    mut statement: F,
) -> sqlx::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = sqlx::Result<T>>,
{
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(50);
    let mut logged = false;
    loop {
        match statement().await {
            Err(e) if is_wait(&e) && started.elapsed() + delay < bound => {
                waits.inc();
                if !logged {
                    tracing::debug!(
                        error = %super::redact_sqlx(&e),
                        "waiting for a database connection (not the job's fault; it keeps its attempt)"
                    );
                    logged = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// Fits the pool to what the server leaves at start-up: when the role's `CONNECTION LIMIT`, or
/// the server's free connections, are below the budget (`database.max_connections`, the LISTEN
/// connection included), says so and returns a pool of what is left (at least 2 in all), so the
/// pool never tries to grow into connections the server refuses (each refused attempt holds a
/// pool slot until the pool's wait runs out). Otherwise, or when the check itself fails, returns
/// `pool` as it is.
pub async fn fit_budget(pool: super::Pool, settings: &Settings) -> super::Pool {
    // Behind a transaction-mode pooler the budget counts the pooler's clients, not the server's
    // connections: what pg_stat_activity shows says nothing about it.
    if pool.pooled() {
        return pool;
    }
    let budget = i64::from(settings.max_connections());
    let room: Result<(Option<i64>, i64), _> = sqlx::query_as(
        r#"SELECT (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user AND rolconnlimit >= 0)::int8
                    - (SELECT count(*) FROM pg_stat_activity WHERE usename = current_user),
                  current_setting('max_connections')::int8
                    - current_setting('superuser_reserved_connections')::int8
                    - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"#,
    )
    .fetch_one(&pool)
    .await;
    let Ok((role_room, server_room)) = room else {
        return pool;
    };
    // Our own open connections are part of what is left to us.
    let ours = i64::from(pool.size());
    let role_room = role_room.map(|r| r + ours);
    let server_room = server_room + ours;
    let room = role_room.map_or(server_room, |r| r.min(server_room));
    if room >= budget {
        return pool;
    }
    let fitted = room.max(2) as u32;
    if role_room.is_some_and(|r| r < budget) {
        tracing::warn!(
            budget,
            room = role_room.unwrap_or_default(),
            fitted,
            "the database role's CONNECTION LIMIT leaves fewer connections than \
             database.max_connections: using {fitted} (lower database.max_connections to match; \
             docs/operations.md, \"Connections\")"
        );
    } else {
        tracing::warn!(
            budget,
            room = server_room,
            fitted,
            "the database server has fewer free connections than database.max_connections: \
             using {fitted} (docs/operations.md, \"Connections\")"
        );
    }
    let mut fitted_settings = settings.clone();
    fitted_settings.database.max_connections = fitted;
    let options = (*pool.connect_options()).clone();
    pool.close().await;
    super::pool(&fitted_settings, options, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_told_from_failures() {
        assert!(is_wait(&sqlx::Error::PoolTimedOut));
        assert!(is_wait(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))));
        assert!(!is_wait(&sqlx::Error::RowNotFound));
        assert!(!is_wait(&sqlx::Error::PoolClosed));
    }

    #[tokio::test(start_paused = true)]
    async fn waits_are_retried_within_the_bound_and_failures_are_not() {
        let waits = IntCounter::new("w", "w").unwrap();
        let mut calls = 0;
        let r = patiently(Duration::from_secs(10), &waits, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 4 {
                    Err(sqlx::Error::PoolTimedOut)
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 4);
        assert_eq!(waits.get(), 3);

        let mut calls = 0;
        let r: sqlx::Result<()> = patiently(Duration::from_secs(10), &waits, || {
            calls += 1;
            async { Err(sqlx::Error::RowNotFound) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1, "a real failure is not retried here");

        let started = tokio::time::Instant::now();
        let r: sqlx::Result<()> = patiently(Duration::from_secs(3), &waits, || async {
            Err(sqlx::Error::PoolTimedOut)
        })
        .await;
        assert!(matches!(r, Err(sqlx::Error::PoolTimedOut)));
        assert!(started.elapsed() <= Duration::from_secs(3), "bounded");
    }
}
