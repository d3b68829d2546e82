//! The group commit: the one primitive behind every batched writer — the completer
//! (`src/runner/worker.rs`), the ledger's writers (`delivery::ledger::Writers`: prepare, the
//! `sending` marks, the wamids) and the status writer (`delivery::statuses::Writer`).
//!
//! A writer is a task that takes requests from a channel, writes a whole batch in one statement
//! (one round trip, one commit, one fsync at most), and answers each request once its statement
//! has run. [`Intake`] decides what goes into a batch:
//!
//! - it waits for one request, then takes every other one already waiting (the requests that
//!   came in while the previous statement ran);
//! - **gathering**: when the previous batch was bigger than what is waiting now, writes are
//!   frequent and more are about to come (the jobs the previous batch answered are running
//!   towards their next write). It lets the runtime's other tasks run (a few yields, no timer)
//!   and then waits at most `linger` for more, stopping as soon as the batch is as big as the
//!   previous one. A lone write (an idle runner) never waits: its previous batch was one. An
//!   intake that [`Intake::remembers`] more batches measures against the biggest of them
//!   instead: against the previous one alone, one straggler cut the next batch short too (the
//!   prepares of a mark span's 20 jobs went out as 19 + 1, then 1 + 18, and so on).
//!
//! [`Gate`] is a writer for the common case: one request, one answer, in order.
//! docs/benchmarks.md ("Issue 14") has what the batching bought.

use std::future::Future;
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Pool;

/// How long a gathering batch waits for more requests at most: the runtime's timer ticks in
/// milliseconds, so this is the shortest wait on the clock there is.
pub const LINGER: Duration = Duration::from_millis(1);

/// How many yields a gathering intake gives the other tasks before it waits on the clock.
const YIELDS: usize = 4;

/// What goes into a batch (see the module docs).
#[derive(Debug)]
pub struct Intake {
    max: usize,
    linger: Duration,
    /// The sizes of the last batches (one, unless [`Intake::remembers`] more): a gathering batch
    /// waits for the biggest at most.
    recent: Vec<usize>,
    /// Where the next batch's size goes in `recent`.
    next_slot: usize,
}

impl Intake {
    /// Batches of at most `max` requests, gathered for at most `linger` (zero: never wait).
    pub fn new(max: usize, linger: Duration) -> Self {
        Self {
            max: max.max(1),
            linger,
            recent: vec![1],
            next_slot: 0,
        }
    }

    /// Gathers against the biggest of the last `batches` batches, not the previous one alone.
    pub fn remembers(mut self, batches: usize) -> Self {
        self.recent = vec![1; batches.max(1)];
        self
    }

    /// Records the size of a batch just taken.
    fn took(&mut self, size: usize) {
        self.recent[self.next_slot] = size;
        self.next_slot = (self.next_slot + 1) % self.recent.len();
    }

    /// Waits for one request (unless `batch` holds some already), then takes every other one
    /// already waiting, gathering as the module docs say, up to `max`, into `batch`. False once
    /// `stop` is cancelled or every sender is gone. Cancel-safe: what it took is in `batch`.
    pub async fn next<T>(
        &mut self,
        rx: &mut mpsc::Receiver<T>,
        stop: &CancellationToken,
        batch: &mut Vec<T>,
    ) -> bool {
        // A batch already started (a caller's `select!` dropped an earlier call while it was
        // gathering) is finished, not left behind.
        if batch.is_empty() {
            let first = tokio::select! {
                r = rx.recv() => match r { Some(r) => r, None => return false },
                _ = stop.cancelled() => return false,
            };
            batch.push(first);
        }
        self.drain(rx, batch);
        let want = self.recent.iter().copied().max().unwrap_or(1).min(self.max);
        if batch.len() < want {
            for _ in 0..YIELDS {
                tokio::task::yield_now().await;
                self.drain(rx, batch);
                if batch.len() >= want {
                    break;
                }
            }
        }
        if batch.len() < want && !self.linger.is_zero() {
            let deadline = tokio::time::Instant::now() + self.linger;
            while batch.len() < want {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(r)) => {
                        batch.push(r);
                        self.drain(rx, batch);
                    }
                    _ => break,
                }
            }
        }
        self.took(batch.len());
        true
    }

    /// Gathers into `batch` until `deadline` or until it holds `enough` (or [`Intake::new`]'s
    /// `max`): grouping by time, for writes that come a few at a time but may wait a little
    /// (see the completer's `COMPLETION_SPAN`). False once `stop` is cancelled (what it took is
    /// in `batch`).
    pub async fn gather_until<T>(
        &mut self,
        rx: &mut mpsc::Receiver<T>,
        stop: &CancellationToken,
        batch: &mut Vec<T>,
        deadline: tokio::time::Instant,
        enough: usize,
    ) -> bool {
        let enough = enough.clamp(1, self.max);
        while batch.len() < enough {
            tokio::select! {
                r = tokio::time::timeout_at(deadline, rx.recv()) => match r {
                    Ok(Some(r)) => {
                        batch.push(r);
                        self.drain(rx, batch);
                    }
                    _ => break,
                },
                _ = stop.cancelled() => return false,
            }
        }
        self.took(batch.len());
        true
    }

    fn drain<T>(&self, rx: &mut mpsc::Receiver<T>, batch: &mut Vec<T>) {
        while batch.len() < self.max {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
    }
}

type Waiting<R, T> = (R, oneshot::Sender<Result<T, WriteError>>);

/// Why a batched write failed (redacted): the statement's error, or the runner stopping.
#[derive(Debug, Clone)]
pub struct WriteError {
    pub message: String,
    /// The batch waited for a connection past its patience (see [`super::wait::is_wait`]): the
    /// statement never reached the server.
    pub wait: bool,
}

impl WriteError {
    fn stopping() -> Self {
        WriteError {
            message: "the runner is stopping".to_string(),
            wait: false,
        }
    }
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// How long a batch waiting for a connection is retried (see [`super::wait`]), each wait
/// counted in `waits`.
#[derive(Clone)]
pub struct Patience {
    pub waits: IntCounter,
    pub patience: Duration,
}

/// A batched write with one answer per request: `write` gets a batch of requests and returns
/// one result per request, in order.
pub struct Gate<R, T> {
    tx: mpsc::Sender<Waiting<R, T>>,
}

impl<R, T> Clone for Gate<R, T> {
    fn clone(&self) -> Self {
        Gate {
            tx: self.tx.clone(),
        }
    }
}

impl<R: Clone + Send + Sync + 'static, T: Send + 'static> Gate<R, T> {
    /// Starts the writer's task; it ends when `stop` is cancelled or every [`Gate`] is gone.
    pub fn start<F, Fut>(
        pool: Pool,
        stop: CancellationToken,
        patient: Patience,
        intake: Intake,
        write: F,
    ) -> (Self, JoinHandle<()>)
    where
        F: Fn(Pool, Vec<R>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = sqlx::Result<Vec<T>>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(4096);
        (
            Gate { tx },
            tokio::spawn(batches(pool, rx, stop, patient, intake, write)),
        )
    }

    /// Writes `request` with whatever other requests are waiting. An error is the statement's
    /// (redacted): the write may have landed all the same.
    pub async fn write(&self, request: R) -> Result<T, WriteError> {
        let (ack, answer) = oneshot::channel();
        self.tx
            .send((request, ack))
            .await
            .map_err(|_| WriteError::stopping())?;
        answer.await.unwrap_or_else(|_| Err(WriteError::stopping()))
    }
}

async fn batches<R: Clone, T, F, Fut>(
    pool: Pool,
    mut rx: mpsc::Receiver<Waiting<R, T>>,
    stop: CancellationToken,
    patient: Patience,
    mut intake: Intake,
    write: F,
) where
    F: Fn(Pool, Vec<R>) -> Fut,
    Fut: Future<Output = sqlx::Result<Vec<T>>>,
{
    let mut batch: Vec<Waiting<R, T>> = Vec::new();
    while intake.next(&mut rx, &stop, &mut batch).await {
        // A request whose sender stopped waiting (its attempt timed out or was aborted) is left
        // out: for a `sending` mark, one left behind would read as a send in doubt.
        batch.retain(|(_, ack)| !ack.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (requests, acks): (Vec<R>, Vec<_>) = batch.drain(..).unzip();
        let statement = || write(pool.clone(), requests.clone());
        match super::wait::patiently(patient.patience, &patient.waits, statement).await {
            Ok(results) => {
                for (ack, result) in acks.into_iter().zip(results) {
                    let _ = ack.send(Ok(result));
                }
            }
            Err(e) => {
                // Every request of the batch hears it and retries or settles on its own (an
                // error fails the whole batch: one statement, one transaction).
                let why = WriteError {
                    message: super::redact_sqlx(&e),
                    wait: super::wait::is_wait(&e),
                };
                for ack in acks {
                    let _ = ack.send(Err(why.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lone_request_never_waits_and_a_busy_intake_takes_what_is_waiting() {
        let (tx, mut rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let mut intake = Intake::new(3, Duration::from_secs(3600));
        let mut batch = Vec::new();
        tx.send(1).await.unwrap();
        // The previous batch was one (none yet): no gathering, so no hour-long wait.
        assert!(intake.next(&mut rx, &stop, &mut batch).await);
        assert_eq!(batch, vec![1]);
        batch.clear();
        // No linger: only what is waiting.
        let mut intake = Intake::new(3, Duration::ZERO);
        for i in 2..=6 {
            tx.send(i).await.unwrap();
        }
        assert!(intake.next(&mut rx, &stop, &mut batch).await);
        assert_eq!(batch, vec![2, 3, 4], "at most `max`");
        batch.clear();
        assert!(intake.next(&mut rx, &stop, &mut batch).await);
        assert_eq!(batch, vec![5, 6]);
        batch.clear();
        stop.cancel();
        assert!(!intake.next(&mut rx, &stop, &mut batch).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gathering_intake_waits_at_most_its_linger() {
        let (tx, mut rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let mut intake = Intake::new(8, Duration::from_millis(2));
        let mut batch = Vec::new();
        burst(&mut intake, &tx, &mut rx, 4).await;
        // The previous batch was 4: one request waits for up to 2 ms for three more.
        tx.send(10).await.unwrap();
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            late.send(11).await.unwrap();
        });
        let started = tokio::time::Instant::now();
        assert!(intake.next(&mut rx, &stop, &mut batch).await);
        assert_eq!(batch, vec![10, 11]);
        assert_eq!(started.elapsed(), Duration::from_millis(2));
        batch.clear();
        // A lone request now: it waits its linger (the previous batch was 2), the next none.
        let linger = Duration::from_millis(2);
        let z = Duration::ZERO;
        assert_eq!(
            lone_waits(&mut intake, &tx, &mut rx, 3).await,
            [linger, z, z]
        );

        // Remembering four batches (4, then 2), lone requests wait while either is among them.
        let mut intake = Intake::new(8, linger).remembers(4);
        for size in [4, 2] {
            burst(&mut intake, &tx, &mut rx, size).await;
        }
        assert_eq!(
            lone_waits(&mut intake, &tx, &mut rx, 6).await,
            [linger, linger, linger, linger, z, z]
        );
    }

    /// Sends `n` requests at once and takes them as one batch.
    async fn burst(
        intake: &mut Intake,
        tx: &mpsc::Sender<usize>,
        rx: &mut mpsc::Receiver<usize>,
        n: usize,
    ) {
        for i in 0..n {
            tx.send(i).await.unwrap();
        }
        let mut batch = Vec::new();
        assert!(intake.next(rx, &CancellationToken::new(), &mut batch).await);
        assert_eq!(batch.len(), n);
    }

    /// Sends `n` requests one at a time, each taken alone: how long each batch waited.
    async fn lone_waits(
        intake: &mut Intake,
        tx: &mpsc::Sender<usize>,
        rx: &mut mpsc::Receiver<usize>,
        n: usize,
    ) -> Vec<Duration> {
        let (stop, mut batch, mut waited) = (CancellationToken::new(), Vec::new(), Vec::new());
        for i in 0..n {
            tx.send(i).await.unwrap();
            let started = tokio::time::Instant::now();
            assert!(intake.next(rx, &stop, &mut batch).await);
            assert_eq!(batch, vec![i]);
            batch.clear();
            waited.push(started.elapsed());
        }
        waited
    }

    /// One straggler does not cut the next batch short of an intake that remembers more than
    /// one batch: after a batch of 19 and a lone late request, the next batch still gathers up
    /// to 19 within its linger.
    #[tokio::test(start_paused = true)]
    async fn a_straggler_does_not_cut_the_next_batch_short() {
        let (tx, mut rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let mut intake = Intake::new(64, Duration::from_millis(5)).remembers(4);
        let mut batch = Vec::new();
        burst(&mut intake, &tx, &mut rx, 19).await;
        tx.send(100).await.unwrap();
        assert!(intake.next(&mut rx, &stop, &mut batch).await);
        assert_eq!(batch, vec![100], "the straggler, after its linger");
        batch.clear();
        // The next span's requests: the first at once, eighteen 2 ms later.
        tx.send(200).await.unwrap();
        let later = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            for i in 201..219 {
                later.send(i).await.unwrap();
            }
        });
        assert!(intake.next(&mut rx, &stop, &mut batch).await);
        assert_eq!(batch.len(), 19, "one batch: {batch:?}");
    }
}
