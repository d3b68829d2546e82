//! How many jobs may be in flight: sized by the work, not by the connections.
//!
//! A live job spends nearly all its time waiting on HTTP (the orchestrator composes a reply,
//! the Cloud API accepts a message) and holds no database connection meanwhile. To keep the
//! number's send rate busy, Little's law asks for `rate × latency` jobs in flight; the runner
//! keeps `rate × (p95 latency + a mark span) × HEADROOM` of them (a claimed job may wait up to
//! `pacing::MARK_SPAN` for its mark), at least [`MIN_IN_FLIGHT`] and at most
//! `runner.max_in_flight`, re-sized every second from the last minute's latencies. Jobs beyond
//! what the rate needs only wait in the pacer (leases kept; and while the numbers' slots are
//! taken further ahead than a job may wait, the dispatcher claims none: docs/numbers.md,
//! "Fairness"), so erring high is cheap; erring low leaves the rate idle. An explicit
//! `runner.workers` pins the limit. Sandbox delivery makes no HTTP call: its jobs are bound by
//! the database, and [`MIN_IN_FLIGHT`] is plenty.

use crate::config::{DeliveryMode, Settings};
use crate::metrics::Metrics;

/// The least the sized limit goes to (also the limit in sandbox mode).
pub const MIN_IN_FLIGHT: u32 = 32;
/// Room above the p95: bursts, jobs with several messages, the database's share of a job.
pub const HEADROOM: f64 = 1.5;
/// The latency assumed before any call was observed (the first minute, or after an idle one).
pub const SEED_LATENCY: f64 = 1.0;

/// The limit and what it was sized from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizing {
    pub limit: u32,
    /// The send rate used (every number's `rate_per_second` together).
    pub rate: f64,
    /// The latency used, in seconds (observed, or [`SEED_LATENCY`]); 0 in sandbox mode.
    pub latency: f64,
    /// Whether `runner.workers` pins the limit.
    pub pinned: bool,
}

/// The in-flight limit for `settings` at the observed `latency` (seconds; `None` when no call
/// was observed recently).
pub fn size(settings: &Settings, latency: Option<f64>) -> Sizing {
    let rate = f64::from(settings.whatsapp.total_rate());
    let cap = settings.runner.max_in_flight.max(1);
    if settings.runner.workers > 0 {
        return Sizing {
            limit: settings.runner.workers,
            rate,
            latency: latency.unwrap_or(0.0),
            pinned: true,
        };
    }
    let floor = MIN_IN_FLIGHT.min(cap);
    if settings.delivery.mode == DeliveryMode::Sandbox {
        return Sizing {
            limit: floor,
            rate,
            latency: 0.0,
            pinned: false,
        };
    }
    let latency = latency.unwrap_or(SEED_LATENCY);
    // A job also waits up to a mark span between its claim and its mark (the claims of a busy
    // number come a span at a time: `pacing::MARK_SPAN`).
    let held = latency + crate::whatsapp::pacing::MARK_SPAN.as_secs_f64();
    let want = (rate * held * HEADROOM).ceil();
    let limit = if want.is_finite() && want < f64::from(cap) {
        (want as u32).max(floor)
    } else {
        cap
    };
    Sizing {
        limit,
        rate,
        latency,
        pinned: false,
    }
}

/// The recent p95 latency of one job's HTTP: the orchestrator's (when it was called in the last
/// minute) plus a send's.
pub fn observed_latency(metrics: &Metrics) -> Option<f64> {
    match (
        metrics.orchestrator_latency.p95(),
        metrics.send_latency.p95(),
    ) {
        (None, None) => None,
        (o, s) => Some(o.unwrap_or(0.0) + s.unwrap_or(0.0)),
    }
}

/// Whether the limit moves from `current` to `next`: at once when it grows (the rate waits
/// otherwise) or is pinned, and only past a fifth when it shrinks (no churn on noise).
pub fn worth_moving(current: u32, next: Sizing) -> bool {
    next.limit != current
        && (next.pinned || next.limit > current || f64::from(next.limit) < 0.8 * f64::from(current))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: DeliveryMode, rate: u32, workers: u32) -> Settings {
        let mut s = crate::config::load(&crate::config::LoadOptions {
            skip_default_path: true,
            ..Default::default()
        })
        .unwrap();
        s.delivery.mode = mode;
        s.whatsapp.rate_per_second = rate;
        s.runner.workers = workers;
        s
    }

    #[test]
    fn the_limit_follows_rate_times_latency() {
        let live = |rate, lat| size(&settings(DeliveryMode::Live, rate, 0), lat).limit;
        // 1,000 msg/s at 200 ms, plus the quarter second a claimed job may wait for its mark:
        // 450 in flight keep it busy; 675 with headroom.
        assert_eq!(live(1000, Some(0.2)), 675);
        // The latency grows by 200 ms: so does the limit, by 300.
        assert_eq!(live(1000, Some(0.4)), 975);
        // Meta's default 80 msg/s at 200 ms needs 36, 54 with headroom.
        assert_eq!(live(80, Some(0.2)), 54);
        // A fast Cloud API at 20/s: the floor.
        assert_eq!(live(20, Some(0.1)), MIN_IN_FLIGHT);
        // A 5 s orchestrator at 1,000 msg/s: the cap.
        assert_eq!(live(1000, Some(5.0)), 1000);
        // Nothing observed yet: the seed latency.
        assert_eq!(live(80, None), 150);
    }

    #[test]
    fn workers_pin_it_and_the_cap_bounds_it() {
        let s = settings(DeliveryMode::Live, 1000, 16);
        assert_eq!(size(&s, Some(5.0)).limit, 16);
        assert!(size(&s, Some(5.0)).pinned);
        let mut s = settings(DeliveryMode::Live, 1000, 0);
        s.runner.max_in_flight = 50;
        assert_eq!(size(&s, Some(5.0)).limit, 50);
        s.runner.max_in_flight = 10;
        assert_eq!(
            size(&s, Some(0.001)).limit,
            10,
            "the floor never passes the cap"
        );
        assert_eq!(
            size(&settings(DeliveryMode::Sandbox, 1000, 0), None).limit,
            MIN_IN_FLIGHT
        );
    }

    #[test]
    fn it_grows_at_once_and_shrinks_past_a_fifth() {
        let s = |limit, pinned| Sizing {
            limit,
            rate: 0.0,
            latency: 0.0,
            pinned,
        };
        assert!(worth_moving(100, s(101, false)));
        assert!(!worth_moving(100, s(90, false)));
        assert!(worth_moving(100, s(79, false)));
        assert!(worth_moving(100, s(99, true)));
        assert!(!worth_moving(100, s(100, true)));
    }
}
