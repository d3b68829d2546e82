//! The retry policy: what a failed attempt leads to, and how long a retry waits.
//!
//! [`decide`] maps a handler's [`JobError`] to the job's next state; [`delay`] is the backoff:
//! exponential, capped, with full jitter.
//!
//! After attempt `n` failed, the next attempt waits a uniformly random delay in
//! `[0, min(cap, base * 2^(n-1))]`. Full jitter spreads a burst of failures (Meta down for a
//! minute) over the whole window instead of retrying them in lockstep.

use std::time::Duration;

use rand::Rng;

use crate::config::{OnUnknown, RetrySettings};
use crate::queue::{Action, JobError};

/// The job's next state after a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Back to `queued`, due after `delay`; `refund` gives the attempt back.
    Requeue { delay: Duration, refund: bool },
    /// `failed` for good, with this `"lastErrorCode"` and `"lastError"`.
    Fail { code: String, message: String },
}

/// What a failed attempt leads to. `attempt` is the attempt that just failed (1-based).
pub fn decide(
    err: &JobError,
    attempt: u32,
    max_attempts: u32,
    policy: &RetrySettings,
    on_unknown: OnUnknown,
    rng: &mut impl Rng,
) -> Next {
    let retry = |after: Option<Duration>, rng: &mut dyn rand::RngCore| {
        if attempt >= max_attempts {
            Next::Fail {
                code: err.code.clone(),
                message: format!("gave up after {attempt} attempt(s): {}", err.message),
            }
        } else {
            let backoff = delay(policy, attempt, rng);
            Next::Requeue {
                delay: after.map_or(backoff, |floor| backoff.max(floor)),
                refund: false,
            }
        }
    };
    match &err.action {
        Action::Retry { after } => retry(*after, rng),
        Action::Fail => Next::Fail {
            code: err.code.clone(),
            message: err.message.clone(),
        },
        Action::Defer { delay } => Next::Requeue {
            delay: *delay,
            refund: true,
        },
        Action::Unknown => match on_unknown {
            OnUnknown::Fail => Next::Fail {
                code: "delivery_unknown".into(),
                message: format!(
                    "the outcome of a send is unknown and it is not sent again: {}",
                    err.message
                ),
            },
            OnUnknown::Retry => retry(None, rng),
        },
    }
}

/// The upper bound of the delay after attempt `attempt` (1-based).
pub fn ceiling(policy: &RetrySettings, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    policy
        .base
        .checked_mul(1u32 << exp)
        .unwrap_or(policy.cap)
        .min(policy.cap)
}

/// The delay after attempt `attempt`, drawn from `rng`.
pub fn delay<R: Rng + ?Sized>(policy: &RetrySettings, attempt: u32, rng: &mut R) -> Duration {
    let ceiling = ceiling(policy, attempt);
    Duration::from_secs_f64(rng.random_range(0.0..=ceiling.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn policy() -> RetrySettings {
        RetrySettings {
            max_attempts: 5,
            base: Duration::from_secs(2),
            cap: Duration::from_secs(60),
        }
    }

    #[test]
    fn decisions() {
        let p = policy();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let transient = JobError::retry("http_502", "something went wrong");
        match decide(&transient, 1, 5, &p, OnUnknown::Fail, &mut rng) {
            Next::Requeue { delay, refund } => {
                assert!(delay <= Duration::from_secs(2));
                assert!(!refund);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(&transient, 5, 5, &p, OnUnknown::Fail, &mut rng),
            Next::Fail {
                code: "http_502".into(),
                message: "gave up after 5 attempt(s): something went wrong".into()
            }
        );
        let floor = JobError::new(
            Action::Retry {
                after: Some(Duration::from_secs(300)),
            },
            "http_429",
            "rate",
        );
        assert!(matches!(
            decide(&floor, 1, 5, &p, OnUnknown::Fail, &mut rng),
            Next::Requeue { delay, .. } if delay == Duration::from_secs(300)
        ));
        let defer = JobError::defer(Duration::from_secs(9), "circuit_open", "halted");
        assert_eq!(
            decide(&defer, 5, 5, &p, OnUnknown::Fail, &mut rng),
            Next::Requeue {
                delay: Duration::from_secs(9),
                refund: true
            }
        );
        let unknown = JobError::unknown("timeout", "no answer after the request was written");
        assert!(matches!(
            decide(&unknown, 1, 5, &p, OnUnknown::Fail, &mut rng),
            Next::Fail { ref code, .. } if code == "delivery_unknown"
        ));
        assert!(matches!(
            decide(&unknown, 1, 5, &p, OnUnknown::Retry, &mut rng),
            Next::Requeue { refund: false, .. }
        ));
        assert!(matches!(
            decide(
                &JobError::fail("bad_payload", "x"),
                1,
                5,
                &p,
                OnUnknown::Fail,
                &mut rng
            ),
            Next::Fail { .. }
        ));
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let p = policy();
        let got: Vec<u64> = (1..=8).map(|n| ceiling(&p, n).as_secs()).collect();
        assert_eq!(got, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(ceiling(&p, 1000), Duration::from_secs(60));
    }

    #[test]
    fn delays_stay_within_the_ceiling_and_spread() {
        let p = policy();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 1..=8 {
            let draws: Vec<Duration> = (0..500).map(|_| delay(&p, attempt, &mut rng)).collect();
            let ceiling = ceiling(&p, attempt);
            assert!(draws.iter().all(|d| *d <= ceiling));
            // Full jitter: draws cover the lower and the upper half of the window.
            assert!(draws.iter().any(|d| *d < ceiling / 2));
            assert!(draws.iter().any(|d| *d > ceiling / 2));
        }
    }
}
