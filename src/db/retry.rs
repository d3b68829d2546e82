//! One retry-with-backoff for the loops that retry a database write: a job's state
//! (`runner::worker`), a ledger write after a request left (`delivery::live`), releasing our
//! claims at drain (`runner`). Each caller says how many attempts, what to log after a failure,
//! and what one attempt is (which may itself wait for a connection: [`super::wait::patiently`]).

use std::future::Future;
use std::time::Duration;

/// Delays between attempts: `first`, then doubling, at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    /// Attempts in all; `None`: until one succeeds (the caller bounds the time some other way).
    pub attempts: Option<u32>,
}

/// Runs `write` until it succeeds, at most `backoff.attempts` times. After each failure
/// `failed(n, &error)` is called (n counts from 1; for a log line) and, unless that was the last
/// attempt, the next delay is slept. Returns the first success, or the last error.
pub async fn with_backoff<T, E, F, Fut>(
    backoff: Backoff,
    mut failed: impl FnMut(u32, &E),
    mut write: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = backoff.first;
    let mut n = 0u32;
    loop {
        match write().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                n += 1;
                failed(n, &e);
                if backoff.attempts.is_some_and(|a| n >= a) {
                    return Err(e);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(backoff.max);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_with_doubling_delays_up_to_the_bound() {
        let started = tokio::time::Instant::now();
        let mut calls = 0;
        let mut seen = Vec::new();
        let backoff = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(300),
            attempts: Some(4),
        };
        let r: Result<(), u32> = with_backoff(
            backoff,
            |n, _| seen.push(n),
            || {
                calls += 1;
                std::future::ready(Err(calls))
            },
        )
        .await;
        assert_eq!(r, Err(4));
        assert_eq!(seen, [1, 2, 3, 4]);
        // 100 + 200 + 300 (capped): no sleep after the last attempt.
        assert_eq!(started.elapsed(), Duration::from_millis(600));
    }

    #[tokio::test(start_paused = true)]
    async fn returns_the_first_success() {
        let mut calls = 0;
        let backoff = Backoff {
            first: Duration::from_millis(10),
            max: Duration::from_secs(1),
            attempts: None,
        };
        let r: Result<u32, ()> = with_backoff(
            backoff,
            |_, _| {},
            || {
                calls += 1;
                std::future::ready(if calls < 3 { Err(()) } else { Ok(calls) })
            },
        )
        .await;
        assert_eq!(r, Ok(3));
    }
}
