//! Prometheus metrics, prefix `outbound_runner_`. Every label comes from a closed set: never a
//! job id, a phone number, a URL or an error text (see docs/metrics.md).

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::queue::STATUSES;

pub struct Metrics {
    pub registry: Registry,
    pub jobs_claimed: IntCounter,
    /// outcome: done | retry | failed (deferred and lost attempts are not finishes).
    pub jobs_finished: IntCounterVec,
    pub messages_sent: IntCounter,
    /// class: retry | slow_number | slow_recipient | halt | fail | unknown.
    pub whatsapp_errors: IntCounterVec,
    /// source: notify | interval | trigger | due.
    pub wakeups: IntCounterVec,
    pub rescued_jobs: IntCounter,
    pub job_duration: HistogramVec,
    pub job_queue_wait: Histogram,
    pub claim_duration: Histogram,
    pub send_duration: Histogram,
    pub jobs: IntGaugeVec,
    pub oldest_queued_age: Gauge,
    pub workers_busy: IntGauge,
    pub workers: IntGauge,
    pub circuit_open: IntGauge,
    /// status: sent | delivered | read | failed; result: see [`STATUS_RESULTS`].
    pub whatsapp_statuses: IntCounterVec,
    pub whatsapp_statuses_expired: IntCounter,
    /// outcome: see [`WEBHOOK_OUTCOMES`].
    pub webhook_requests: IntCounterVec,
    pub delivered_latency: Histogram,
    pub last_loop_timestamp: Gauge,
    pub build_info: IntGaugeVec,
    /// The in-flight limit now, and the inputs it was sized from (see `runner::sizing`).
    pub in_flight_limit: IntGauge,
    pub in_flight_latency: Gauge,
    pub in_flight_rate: Gauge,
    /// Statements that waited for a connection (see [`crate::db::wait`]).
    pub db_waits: IntCounter,
    /// Recent latencies of the orchestrator and of Cloud API sends, for the in-flight sizing.
    pub orchestrator_latency: LatencyWindow,
    pub send_latency: LatencyWindow,
    /// Per sending number (`number`: a configured phone number id, a closed set; docs/numbers.md).
    pub number_sent: IntCounterVec,
    /// number, class (as `whatsapp_errors`).
    pub number_errors: IntCounterVec,
    pub number_circuit_open: IntGaugeVec,
    pub number_on_hold: IntGaugeVec,
    /// number, reason (the deferral's code: number_paced, recipient_paced, number_paused,
    /// number_on_hold, circuit_open, tier_limit).
    pub number_deferred: IntCounterVec,
    pub number_paced_wait: HistogramVec,
    /// Unique recipients of template messages in the rolling 24 h: the number's own, the count
    /// its `tier_limit` applies to (its business's when it names one), and the limit (0: none).
    pub number_tier_recipients: IntGaugeVec,
    pub number_tier_counted: IntGaugeVec,
    pub number_tier_limit: IntGaugeVec,
    /// business (`whatsapp.numbers[].business_id`).
    pub business_tier_recipients: IntGaugeVec,
}

/// The most recent latencies of one kind of call (at most [`LatencyWindow::SAMPLES`], none older
/// than [`LatencyWindow::MAX_AGE`]): enough for a p95 that follows a change within seconds.
#[derive(Default)]
pub struct LatencyWindow {
    samples: std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, f64)>>,
}

impl LatencyWindow {
    pub const SAMPLES: usize = 512;
    pub const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

    pub fn record(&self, took: std::time::Duration) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() == Self::SAMPLES {
            s.pop_front();
        }
        s.push_back((std::time::Instant::now(), took.as_secs_f64()));
    }

    /// The 95th percentile of the recent samples, in seconds; `None` without any.
    pub fn p95(&self) -> Option<f64> {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        while s
            .front()
            .is_some_and(|(at, _)| at.elapsed() > Self::MAX_AGE)
        {
            s.pop_front();
        }
        if s.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = s.iter().map(|(_, d)| *d).collect();
        drop(s);
        v.sort_by(f64::total_cmp);
        let i = ((v.len() as f64 * 0.95).ceil() as usize).clamp(1, v.len()) - 1;
        Some(v[i])
    }
}

pub const OUTCOMES: [&str; 3] = ["done", "retry", "failed"];
pub const WAKE_SOURCES: [&str; 4] = ["notify", "interval", "trigger", "due"];
pub const ERROR_CLASSES: [&str; 6] = [
    "retry",
    "slow_number",
    "slow_recipient",
    "halt",
    "fail",
    "unknown",
];

pub const STATUS_KINDS: [&str; 4] = ["sent", "delivered", "read", "failed"];
pub const STATUS_RESULTS: [&str; 8] = [
    "applied",
    "settled",
    "duplicate",
    "early",
    "conflict",
    "unmatched",
    "other_number",
    "rejected",
];
pub const WEBHOOK_OUTCOMES: [&str; 9] = [
    "ok",
    "bad_signature",
    "malformed",
    "too_large",
    "forwarded",
    "forward_failed",
    "unavailable",
    "timeout",
    "rejected",
];

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
const DELIVERY_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
];
const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("outbound_runner".into()), None)
            .expect("a valid metric prefix");
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("a valid metric definition");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        let m = Self {
            jobs_claimed: reg!(IntCounter::new(
                "jobs_claimed_total",
                "Jobs claimed by this runner."
            )),
            jobs_finished: reg!(IntCounterVec::new(
                Opts::new("jobs_finished_total", "Job attempts finished, by outcome."),
                &["outcome"]
            )),
            messages_sent: reg!(IntCounter::new(
                "messages_sent_total",
                "Messages accepted by the Cloud API (or recorded in sandbox mode)."
            )),
            whatsapp_errors: reg!(IntCounterVec::new(
                Opts::new("whatsapp_errors_total", "Cloud API errors, by class."),
                &["class"]
            )),
            wakeups: reg!(IntCounterVec::new(
                Opts::new("wakeups_total", "Dispatcher wake-ups, by source."),
                &["source"]
            )),
            rescued_jobs: reg!(IntCounter::new(
                "rescued_jobs_total",
                "Jobs taken back from a runner whose lease expired."
            )),
            job_duration: reg!(HistogramVec::new(
                HistogramOpts::new("job_duration_seconds", "Time to run one job attempt.")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["outcome"]
            )),
            job_queue_wait: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "job_queue_wait_seconds",
                    "Time from a job becoming due to its claim."
                )
                .buckets(WAIT_BUCKETS.to_vec())
            )),
            claim_duration: reg!(Histogram::with_opts(
                HistogramOpts::new("claim_duration_seconds", "Time of one claim statement.")
                    .buckets(LATENCY_BUCKETS.to_vec())
            )),
            send_duration: reg!(Histogram::with_opts(
                HistogramOpts::new("send_duration_seconds", "Time of one Cloud API send.")
                    .buckets(LATENCY_BUCKETS.to_vec())
            )),
            jobs: reg!(IntGaugeVec::new(
                Opts::new(
                    "jobs",
                    "Jobs in the table, by status (refreshed on a timer)."
                ),
                &["status"]
            )),
            oldest_queued_age: reg!(Gauge::new(
                "oldest_queued_job_age_seconds",
                "Age of the oldest due queued job (0 when none)."
            )),
            workers_busy: reg!(IntGauge::new(
                "workers_busy",
                "Jobs running now in this process."
            )),
            workers: reg!(IntGauge::new(
                "workers",
                "Jobs this process may have in flight now (the same as in_flight_limit)."
            )),
            in_flight_limit: reg!(IntGauge::new(
                "in_flight_limit",
                "Jobs this process may have in flight now: runner.workers, or sized by the work."
            )),
            in_flight_latency: reg!(Gauge::new(
                "in_flight_latency_p95_seconds",
                "The sizing's latency input: recent p95 of the orchestrator plus a Cloud API send."
            )),
            in_flight_rate: reg!(Gauge::new(
                "in_flight_rate_per_second",
                "The sizing's rate input: whatsapp.rate_per_second."
            )),
            db_waits: reg!(IntCounter::new(
                "db_connection_waits_total",
                "Statements that waited for a database connection (retried; no attempt spent)."
            )),
            orchestrator_latency: LatencyWindow::default(),
            send_latency: LatencyWindow::default(),
            number_sent: reg!(IntCounterVec::new(
                Opts::new(
                    "number_messages_sent_total",
                    "Messages accepted by the Cloud API, by sending number."
                ),
                &["number"]
            )),
            number_errors: reg!(IntCounterVec::new(
                Opts::new(
                    "number_whatsapp_errors_total",
                    "Cloud API errors, by sending number and class."
                ),
                &["number", "class"]
            )),
            number_circuit_open: reg!(IntGaugeVec::new(
                Opts::new(
                    "number_circuit_open",
                    "1 while sending is halted for the number (halt-class answer)."
                ),
                &["number"]
            )),
            number_on_hold: reg!(IntGaugeVec::new(
                Opts::new(
                    "number_on_hold",
                    "1 while the number is paused (numbers pause, or a spam rate limit answer)."
                ),
                &["number"]
            )),
            number_deferred: reg!(IntCounterVec::new(
                Opts::new(
                    "number_deferred_total",
                    "Jobs deferred (no attempt spent) by the number's limits, by reason."
                ),
                &["number", "reason"]
            )),
            number_paced_wait: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "number_paced_wait_seconds",
                    "Time a send waited in the pacer (throughput, pair spacing), by number."
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0]),
                &["number"]
            )),
            number_tier_recipients: reg!(IntGaugeVec::new(
                Opts::new(
                    "number_tier_recipients",
                    "Unique recipients of the number's template messages in the last 24 h."
                ),
                &["number"]
            )),
            number_tier_counted: reg!(IntGaugeVec::new(
                Opts::new(
                    "number_tier_counted",
                    "The 24 h unique-recipient count the number's tier_limit applies to \
                     (its business's, if it names one)."
                ),
                &["number"]
            )),
            number_tier_limit: reg!(IntGaugeVec::new(
                Opts::new(
                    "number_tier_limit",
                    "The number's whatsapp tier_limit (0: none)."
                ),
                &["number"]
            )),
            business_tier_recipients: reg!(IntGaugeVec::new(
                Opts::new(
                    "business_tier_recipients",
                    "Unique recipients of the business's template messages in the last 24 h."
                ),
                &["business"]
            )),
            circuit_open: reg!(IntGauge::new(
                "circuit_open",
                "1 while sending is halted for the phone number."
            )),
            whatsapp_statuses: reg!(IntCounterVec::new(
                Opts::new(
                    "whatsapp_statuses_total",
                    "Statuses from Meta's webhooks, by status and what became of them."
                ),
                &["status", "result"]
            )),
            whatsapp_statuses_expired: reg!(IntCounter::new(
                "whatsapp_statuses_expired_total",
                "Early statuses dropped after their retention without matching a message."
            )),
            webhook_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "webhook_requests_total",
                    "POST /webhooks/whatsapp requests, by outcome."
                ),
                &["outcome"]
            )),
            delivered_latency: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "message_delivered_seconds",
                    "Time from Meta accepting a message to its delivered status."
                )
                .buckets(DELIVERY_BUCKETS.to_vec())
            )),
            last_loop_timestamp: reg!(Gauge::new(
                "last_loop_timestamp_seconds",
                "Unix time of the dispatcher's last heartbeat."
            )),
            build_info: reg!(IntGaugeVec::new(
                Opts::new(
                    "build_info",
                    "Always 1; the version label says which build runs."
                ),
                &["version"]
            )),
            registry,
        };
        // Every closed-set label exists from the start, so rates and alerts see 0, not absence.
        for o in OUTCOMES {
            m.jobs_finished.with_label_values(&[o]);
            m.job_duration.with_label_values(&[o]);
        }
        for s in WAKE_SOURCES {
            m.wakeups.with_label_values(&[s]);
        }
        for c in ERROR_CLASSES {
            m.whatsapp_errors.with_label_values(&[c]);
        }
        for k in STATUS_KINDS {
            for r in STATUS_RESULTS {
                m.whatsapp_statuses.with_label_values(&[k, r]);
            }
        }
        for o in WEBHOOK_OUTCOMES {
            m.webhook_requests.with_label_values(&[o]);
        }
        for s in STATUSES {
            m.jobs.with_label_values(&[s]);
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    /// A number that moves whenever the process saw work: wake-ups (NOTIFY, triggers, due
    /// backoffs), claims, finishes, sends, connection waits and Meta's statuses. Read from
    /// memory only (the console refreshes its overview when it moved).
    pub fn activity(&self) -> u64 {
        let mut n = self.jobs_claimed.get() + self.messages_sent.get() + self.db_waits.get();
        for source in ["notify", "trigger", "due"] {
            n += self.wakeups.with_label_values(&[source]).get();
        }
        for outcome in OUTCOMES {
            n += self.jobs_finished.with_label_values(&[outcome]).get();
        }
        for kind in STATUS_KINDS {
            for result in STATUS_RESULTS {
                n += self
                    .whatsapp_statuses
                    .with_label_values(&[kind, result])
                    .get();
            }
        }
        n
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding metrics to memory");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
