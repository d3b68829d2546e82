//! Claim latency as the table grows. One claim statement of a batch is the runner's own claim
//! through a passive runner: `run_pass(workers)` is exactly one claim, and its latency is the
//! increase of the claim metric.
//!
//! Three databases side by side, each with a passive runner, claimed in turn (small, big,
//! finished, small, big, …) so that the machine's load drifts alike for all three and the
//! ratios compare claims of the same second:
//!
//! - *small*: 10k queued jobs, the baseline;
//! - *big*: 1M queued jobs;
//! - *finished*: 10k queued beside 1M finished rows; in the next step those rows are pruned
//!   (the pruner's DELETE) and not vacuumed yet; in the last step, vacuumed.
//!
//! Every queue is topped back up to its size before each step (the claims consume jobs), and
//! `VACUUM ANALYZE` runs on every table between steps, except on *finished* right after its
//! prune.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outbound_runner::metrics::Metrics;
use outbound_runner::queue::store;
use outbound_runner::runner::{Mode, Runner};

use crate::common::{
    Args, Db, Row, SMALL_QUEUE, int, median, percentile, sandbox_runner_metered, settings,
};
use crate::progress;

/// A database and the passive runner that claims from it.
struct Table {
    db: Db,
    runner: Runner,
    /// What `runner` reports to.
    metrics: Arc<Metrics>,
    queued: usize,
}

impl Table {
    async fn new(queued: usize, finished: usize, batch: u32) -> Table {
        let db = Db::new().await;
        db.insert_rows(finished, true).await;
        let mut s = settings(batch);
        // The measurement prunes by itself; the runner's own pruner stays out of the way.
        s.runner.retention = Duration::ZERO;
        let pool = db.runner_pool(&s).await;
        let (runner, metrics) = sandbox_runner_metered(pool, s, Mode::Passive).await;
        Table {
            db,
            runner,
            metrics,
            queued,
        }
    }

    /// Brings the queue back to its size; optionally VACUUM ANALYZE.
    async fn top_up(&self, vacuum: bool) {
        let have = self.db.count("queued").await as usize;
        self.db.insert(self.queued.saturating_sub(have)).await;
        if vacuum {
            self.db.vacuum().await;
        }
    }

    /// One claim of `batch` jobs (and running them); its latency in ms.
    async fn claim(&self, batch: u32) -> f64 {
        let m = &self.metrics;
        let (n0, s0) = (
            m.claim_duration.get_sample_count(),
            m.claim_duration.get_sample_sum(),
        );
        let report = self.runner.run_pass(batch).await.unwrap();
        assert_eq!(report.processed.len(), batch as usize, "a full batch");
        assert_eq!(m.claim_duration.get_sample_count(), n0 + 1, "one claim");
        (m.claim_duration.get_sample_sum() - s0) * 1000.0
    }

    async fn close(self) {
        self.runner.shutdown().await;
        self.db.drop().await;
    }
}

/// Per step: the sorted claim latencies of small, big and finished.
type Step = [Vec<f64>; 3];

async fn measure(tables: &[&Table; 3], k: usize, batch: u32) -> Step {
    let mut out: Step = Default::default();
    for _ in 0..k {
        for (i, t) in tables.iter().enumerate() {
            out[i].push(t.claim(batch).await);
        }
    }
    for v in &mut out {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    out
}

/// One run: three steps on three fresh databases; and how long the prune took.
async fn once(a: &Args, batch: u32) -> (Vec<Step>, f64) {
    let k = a.large_claims();
    let small = Table::new(SMALL_QUEUE, 0, batch).await;
    let big = Table::new(a.large_rows, 0, batch).await;
    let finished = Table::new(SMALL_QUEUE, a.large_rows, batch).await;
    let all = [&small, &big, &finished];
    let mut steps = Vec::new();

    for t in all {
        t.top_up(true).await;
    }
    steps.push(measure(&all, k, batch).await);

    // Prune the finished rows with the pruner's own statement, in large batches.
    let t = Instant::now();
    while store::prune(
        &finished.db.queue_pool(),
        Duration::from_secs(7 * 86_400),
        100_000,
    )
    .await
    .unwrap()
        > 0
    {}
    let prune = t.elapsed().as_secs_f64();
    small.top_up(true).await;
    big.top_up(true).await;
    finished.top_up(false).await;
    steps.push(measure(&all, k, batch).await);

    for t in all {
        t.top_up(true).await;
    }
    steps.push(measure(&all, k, batch).await);

    for t in [small, big, finished] {
        t.close().await;
    }
    (steps, prune)
}

pub async fn run(a: &Args) -> Vec<Row> {
    let batch = a.workers[0];
    let small = int(SMALL_QUEUE as f64);
    let bigs = int(a.large_rows as f64);
    // Rows: (setup, step, table index); the baseline is small in the same step.
    let layout: [(String, usize, usize); 5] = [
        (format!("{small} queued"), 0, 0),
        (format!("{bigs} queued"), 0, 1),
        (format!("{small} queued + {bigs} finished"), 0, 2),
        (
            format!("{small} queued, {bigs} finished just pruned (no VACUUM yet)"),
            1,
            2,
        ),
        (
            format!("{small} queued, {bigs} finished pruned and vacuumed"),
            2,
            2,
        ),
    ];
    let mut p50: Vec<Vec<f64>> = vec![Vec::new(); layout.len()];
    let mut p95: Vec<Vec<f64>> = vec![Vec::new(); layout.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); layout.len()];
    // The 1M/10k ratio of every step: the big queue is measured beside the small one each time.
    let mut big_ratios = Vec::new();
    let mut prunes = Vec::new();
    for round in 1..=a.runs {
        let t = Instant::now();
        let (steps, prune) = once(a, batch).await;
        prunes.push(prune);
        for (row, (_, step, table)) in layout.iter().enumerate() {
            let lat = &steps[*step][*table];
            let base = percentile(&steps[*step][0], 0.5);
            p50[row].push(percentile(lat, 0.5));
            p95[row].push(percentile(lat, 0.95));
            ratios[row].push(percentile(lat, 0.5) / base);
        }
        for (i, s) in steps.iter().enumerate() {
            progress!(
                "step {i}: p50 small {:.2} ms, big {:.2} ms, finished {:.2} ms",
                percentile(&s[0], 0.5),
                percentile(&s[1], 0.5),
                percentile(&s[2], 0.5)
            );
            big_ratios.push(percentile(&s[1], 0.5) / percentile(&s[0], 0.5));
        }
        progress!(
            "round {round}/{}: large table in {:.0} s: claim p50 {:.2} ms with {small} queued, {:.2} ms with {bigs} queued",
            a.runs,
            t.elapsed().as_secs_f64(),
            p50[0].last().unwrap(),
            p50[1].last().unwrap(),
        );
    }
    let k = a.large_claims();
    layout
        .iter()
        .enumerate()
        .map(|(row, (setup, _, _))| Row {
            section: "large table",
            measure: format!("claim latency ({batch} jobs per claim statement)"),
            setup: setup.clone(),
            result: format!(
                "p50 {:.2} ms, p95 {:.2} ms",
                median(&p50[row]),
                median(&p95[row])
            ),
            ratio: match row {
                0 => "1.00× (baseline)".into(),
                1 => format!(
                    "{:.2}× the {small}-queued p50 (median of {} interleaved steps)",
                    median(&big_ratios),
                    big_ratios.len()
                ),
                _ => format!("{:.2}× the {small}-queued p50", median(&ratios[row])),
            },
            detail: match row {
                0 => format!("{k} claims per table and step; the three databases claimed in turn"),
                3 => format!(
                    "the prune took {:.1} s (the pruner's DELETE, 100k rows per statement)",
                    median(&prunes)
                ),
                _ => String::new(),
            },
        })
        .collect()
}
