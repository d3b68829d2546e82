//! Pacing: staying under Meta's limits instead of bouncing off them.
//!
//! Per phone number (`whatsapp.phone_number_id` and each `[[whatsapp.numbers]]`, each with its own
//! state, so one number's limits, pauses and circuit never touch another's; docs/numbers.md):
//! - **throughput**: sends are spaced evenly at `rate_per_second` (default 80/s): one slot every
//!   `1 / rate`, or, from 100/s, one slot every [`GROUP_SPAN`] for the `rate × 20 ms` sends of
//!   that span ([`group`]; 20 every 20.4 ms at 1,000/s), so the sends of one slot write
//!   their `sending` marks and their completions in one batched statement each instead of one
//!   statement per message (docs/benchmarks.md, "Issue 14"). A sliding-window log of the sends
//!   actually released guarantees that no one-second window ever holds more than the rate,
//!   even when timers wake late and bunch slots together (a bucket with a second's burst would
//!   let more through, which Meta answers with 130429). A job's slot is at most
//!   [`THROUGHPUT_HORIZON`] ahead (with one number configured, [`MAX_SLEEP`]), else it is
//!   deferred (due at its slot): a busy number keeps only a quarter second of its rate waiting
//!   here, and its backlog moves behind other numbers' due jobs, so it never starves them;
//! - **hold**: an operator's pause (`outbound-runner numbers pause`, or a 131048 answer), kept
//!   in the database so every runner sees it: jobs are deferred without spending an attempt;
//! - **pause**: after a rate-limit answer (4, 80007, 130429, 131057) the whole number pauses for
//!   `Retry-After`, or 1 s doubling per consecutive rate-limit answer up to 60 s;
//! - **circuit**: after a halt-class answer (bad token, restricted account, ...) nothing is sent
//!   for `whatsapp.halt_cooldown`, or until the configuration is reloaded.
//!
//! Per recipient: one send at a time, and the next one starts at least `whatsapp.pair_interval`
//! (default 6 s) after the previous one *ended* (measuring from the end keeps the spacing Meta
//! sees even when two requests travel at different speeds). A pair-rate answer (131056) backs
//! that recipient off 4^x s (1, 4, 16, ... up to 4^5 s), x counting its consecutive 131056s.
//!
//! A worker never waits long: a wait that ends within [`MAX_SLEEP`] is slept; a longer one
//! becomes a [`Deferral`]: the job goes back to the queue without spending an attempt, due when
//! its turn comes. Deferred jobs are promised slots spaced at the rate that applies (the
//! number's throughput, the pair interval), so a thousand jobs deferred by one pause come back
//! one after another, not all at once.
//!
//! All of this but the holds is **per process**: two runners sending for the same number each
//! pace at the full rate. Run one runner per number, or divide `rate_per_second` between them.
//! Holds are read from the database (`super::numbers`), so a pause reaches every runner.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::config::{Settings, WhatsappSettings};
use crate::queue::JobError;

/// The longest a worker sleeps for pacing; a longer wait defers the job.
pub const MAX_SLEEP: Duration = Duration::from_secs(1);
/// While the circuit is open, the job that opened it comes back this often (or after the
/// cooldown, if shorter) to notice a configuration reload.
pub const PROBE_EVERY: Duration = Duration::from_secs(30);
/// The longest number-wide pause without a `Retry-After`.
pub const MAX_PAUSE: Duration = Duration::from_secs(60);
/// The largest exponent of the 131056 backoff (4^5 s ≈ 17 min).
pub const MAX_PAIR_EXPONENT: u32 = 5;
/// The furthest ahead a job's throughput slot may be for it to wait in the process while
/// several numbers are configured; a later slot defers the job (to that slot, without spending
/// an attempt), so a busy number's backlog moves behind the other numbers' due jobs. With one
/// number there is no other to make room for: its jobs wait up to [`MAX_SLEEP`] (see
/// [`Pacer::horizon`]).
pub const THROUGHPUT_HORIZON: Duration = Duration::from_millis(250);
/// While a number is on hold (paused by an operator), its jobs come back this often (or when
/// the hold ends, if sooner; `numbers resume` makes them due at once).
pub const HOLD_RECHECK: Duration = Duration::from_secs(30);
/// The sliding window is this much longer than a second: a send's trip to Meta varies (a
/// connection opened, a busy core), and that variation must not bunch arrivals past the rate.
/// Costs 2% of the configured throughput.
pub const WINDOW_MARGIN: Duration = Duration::from_millis(20);
/// From 100/s a number's throughput slots come this far apart, each for the sends of the span
/// (see [`group`]): Meta's limit is per second, and 20 ms groups let the sends of a slot share
/// their database statements (at 1,000/s, 20 ms groups cost PostgreSQL 0.72× what 10 ms groups
/// did: docs/benchmarks.md, "Issue 14, second round"). A send waits at most one span more.
pub const GROUP_SPAN: Duration = Duration::from_millis(20);
/// The sends whose slots fall in one span of this length write their `sending` marks together,
/// at the span's start ([`Permit::mark_at`]): at 80/s, 20 marks in one statement instead of 20
/// statements 12.5 ms apart. A mark is on disk at most this long before its request leaves: a
/// crash in between leaves the message in doubt (`unknown`, never sent twice), as a crash during
/// the request does (docs/delivery.md, "Durability").
pub const MARK_SPAN: Duration = Duration::from_millis(250);
/// Idle recipients are forgotten once this many are known.
const RECIPIENTS_SWEEP_AT: usize = 10_000;

/// A job that should wait longer than [`MAX_SLEEP`]: requeue it, due after `delay`, without
/// spending an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Deferral {
    pub delay: Duration,
    pub code: &'static str,
    pub message: String,
}

impl Deferral {
    pub fn into_job_error(self) -> JobError {
        JobError::defer(self.delay, self.code, self.message)
    }
}

/// What [`Pacer::admit`] noticed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The configuration changed while the circuit was open: it is closed now, and jobs deferred
    /// by it may run at once.
    pub closed_by_reload: bool,
    /// The cooldown ended: the circuit is closed now.
    pub closed_after_cooldown: bool,
}

/// The pacing state of this process.
#[derive(Default)]
pub struct Pacer {
    numbers: Mutex<HashMap<String, Number>>,
    recipients: Mutex<Recipients>,
    /// The numbers on hold, as last read from the database (by phone number id).
    holds: Mutex<HashMap<String, Hold>>,
    /// Whether one number is configured (as last seen by [`Pacer::admit`]): see
    /// [`Pacer::horizon`].
    sole_number: std::sync::atomic::AtomicBool,
    /// Room promised to claimed jobs on their way to their slot, as expiry times ([`Pacer::reserve`]).
    reserved: Mutex<VecDeque<Instant>>,
}

/// What [`Pacer::room`] says the dispatcher may claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// No pacing applies (no number is configured).
    Any,
    /// At most this many jobs.
    Jobs(usize),
    /// At most `jobs`, for numbers whose slots are taken ahead: their jobs wait for a slot
    /// anyway, so the dispatcher waits (up to a [`MARK_SPAN`]) to claim `span` of them at once
    /// (with one number, the slots up to the end of a mark span).
    Busy { jobs: usize, span: usize },
    /// None before then.
    At(Instant),
}

/// A number paused by an operator (or by a 131048 answer) until `until`, or until resumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Time left when read (`None`: until resumed by hand).
    pub until: Option<Instant>,
    pub reason: String,
    pub by: String,
}

#[derive(Default)]
struct Number {
    /// The next free throughput slot.
    next_slot: Option<Instant>,
    /// How many sends `next_slot` has given out already (of [`group`]).
    slot_taken: u32,
    /// The last slot promised to a deferred job.
    promised: Option<Instant>,
    pause_until: Option<Instant>,
    pause_reason: String,
    /// Consecutive rate-limit answers (reset by an accepted send).
    slow_strikes: u32,
    circuit: Option<Circuit>,
    /// The settings this number last ran under: a different `Arc` is a reload.
    seen: Weak<Settings>,
    /// When the sends of the last second were released (the sliding window).
    released: VecDeque<Instant>,
}

#[derive(Debug, Clone)]
struct Circuit {
    until: Instant,
    reason: String,
}

#[derive(Default)]
struct Recipients {
    map: HashMap<(String, String), Arc<Recipient>>,
    sweep_at: usize,
}

#[derive(Default)]
struct Recipient {
    /// One send at a time.
    turn: Arc<tokio::sync::Mutex<()>>,
    timing: Mutex<Timing>,
}

#[derive(Default)]
struct Timing {
    /// No send starts before this.
    next_at: Option<Instant>,
    promised: Option<Instant>,
    /// Consecutive 131056 answers.
    strikes: u32,
}

/// The right to send one message to one recipient now. Tell it how the send ended; dropped
/// without an outcome (the attempt was abandoned) it counts as a send.
pub struct Permit {
    turn: Option<OwnedMutexGuard<()>>,
    recipient: Arc<Recipient>,
    pair_interval: Duration,
    /// The throughput slot: when the request may leave.
    at: Instant,
    number: String,
    spacing: Duration,
    /// The latest the send may wait for a pause to end (see [`Pacer::ready`]).
    deadline: Instant,
}

impl Permit {
    /// When the request may leave.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// When the message's `sending` mark is written: the start of the [`MARK_SPAN`] its slot is
    /// in (now, if that has begun). Every send of a span writes its mark at the same instant, so
    /// the marks of a span are one statement however far apart the sends are.
    pub fn mark_at(&self) -> Instant {
        mark_span_start(self.at).max(Instant::now())
    }

    /// The send ended: accepted, or refused for a reason other than the pair rate.
    pub fn done(mut self, accepted: bool) {
        let pair = self.pair_interval;
        self.finish(|t| {
            t.next_at = Some(Instant::now() + pair);
            if accepted {
                t.strikes = 0;
            }
        });
    }

    /// Nothing was sent on this permit (its message turned out sent already, or a pause began
    /// before its slot): the recipient's turn is given back and its spacing left as it was.
    /// (Dropped without an outcome, a permit counts as a send.)
    pub fn unused(mut self) {
        self.finish(|_| {});
    }

    /// Meta answered 131056 (pair rate limit): this recipient backs off 4^x s. Returns the
    /// backoff.
    pub fn pair_limited(mut self) -> Duration {
        let pair = self.pair_interval;
        let mut backoff = Duration::ZERO;
        self.finish(|t| {
            backoff = Duration::from_secs(4u64.pow(t.strikes.min(MAX_PAIR_EXPONENT)));
            t.strikes = t.strikes.saturating_add(1);
            t.next_at = Some(Instant::now() + backoff.max(pair));
        });
        backoff
    }

    fn finish(&mut self, f: impl FnOnce(&mut Timing)) {
        if let Some(turn) = self.turn.take() {
            f(&mut lock(&self.recipient.timing));
            drop(turn);
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("pair_interval", &self.pair_interval)
            .finish_non_exhaustive()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let pair = self.pair_interval;
        self.finish(|t| t.next_at = Some(Instant::now() + pair));
    }
}

impl Pacer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Before a job's first send: notices a reload and an ended cooldown, and defers the job
    /// while the circuit is open.
    pub fn admit(
        &self,
        settings: &Arc<Settings>,
        wa: &WhatsappSettings,
    ) -> Result<Admission, Deferral> {
        let now = Instant::now();
        let spacing = spacing(wa);
        self.sole_number.store(
            settings.whatsapp.number_ids().len() <= 1,
            std::sync::atomic::Ordering::Relaxed,
        );
        let hold = self.hold(&wa.phone_number_id);
        let mut numbers = lock(&self.numbers);
        let n = numbers.entry(wa.phone_number_id.clone()).or_default();
        let mut out = Admission::default();
        let current = Arc::downgrade(settings);
        if !Weak::ptr_eq(&n.seen, &current) {
            if n.circuit.take().is_some() {
                out.closed_by_reload = true;
                n.promised = None;
            }
            n.seen = current;
        }
        if n.circuit.as_ref().is_some_and(|c| c.until <= now) {
            n.circuit = None;
            out.closed_after_cooldown = true;
        }
        if let Some(c) = &n.circuit {
            let until = c.until;
            let delay = promise(&mut n.promised, until, spacing, now);
            return Err(circuit_deferral(delay, &c.reason, until - now));
        }
        if let Some(h) = hold {
            return Err(hold_deferral(
                &mut n.promised,
                &wa.phone_number_id,
                &h,
                spacing,
                now,
            ));
        }
        Ok(out)
    }

    /// Replaces the holds (as just read from the database).
    pub fn set_holds(&self, holds: HashMap<String, Hold>) {
        let lifted: Vec<String> = {
            let mut current = lock(&self.holds);
            let lifted = current
                .keys()
                .filter(|k| !holds.contains_key(*k))
                .cloned()
                .collect();
            *current = holds;
            lifted
        };
        // The slots promised to jobs deferred by a lifted hold are void: they run at once.
        let mut numbers = lock(&self.numbers);
        for id in lifted {
            if let Some(n) = numbers.get_mut(&id) {
                n.promised = None;
            }
        }
    }

    /// Puts one number on hold in this process at once (the database row is written by the
    /// caller; the next read confirms it).
    pub fn hold_now(&self, number: &str, hold: Hold) {
        lock(&self.holds).insert(number.to_string(), hold);
    }

    /// The number's hold, if one is in force.
    pub fn hold(&self, number: &str) -> Option<Hold> {
        let now = Instant::now();
        lock(&self.holds)
            .get(number)
            .filter(|h| h.until.is_none_or(|u| u > now))
            .cloned()
    }

    /// Waits for the right to send to `to` now (at most [`MAX_SLEEP`]), or says how long to
    /// defer the job: [`Pacer::reserve_slot`], then [`Pacer::ready`].
    pub async fn acquire(&self, wa: &WhatsappSettings, to: &str) -> Result<Permit, Deferral> {
        let permit = self.reserve_slot(wa, to).await?;
        self.ready(&permit).await?;
        Ok(permit)
    }

    /// Takes the recipient's turn and the number's next throughput slot (waiting at most until
    /// the recipient's pair interval has passed, within [`MAX_SLEEP`]), or says how long to
    /// defer the job. The permit says when the slot is ([`Permit::at`]) and when its `sending`
    /// mark is written ([`Permit::mark_at`]); [`Pacer::ready`] waits for the slot.
    pub async fn reserve_slot(&self, wa: &WhatsappSettings, to: &str) -> Result<Permit, Deferral> {
        // The room this job was claimed on is its own now (see `room`).
        lock(&self.reserved).pop_front();
        let number = wa.phone_number_id.as_str();
        let spacing = spacing(wa);
        let pair = wa.pair_interval;
        let deadline = Instant::now() + MAX_SLEEP;

        self.wait_for_number(number, spacing, deadline).await?;

        // The recipient: one send at a time, `pair` after the previous one ended.
        let recipient = self.recipient(number, to);
        let turn =
            match tokio::time::timeout_at(deadline, recipient.turn.clone().lock_owned()).await {
                Ok(turn) => turn,
                Err(_) => {
                    // Another send to this recipient is still in flight.
                    let now = Instant::now();
                    let mut t = lock(&recipient.timing);
                    let earliest = t.next_at.unwrap_or(now).max(now + pair);
                    let delay = promise(&mut t.promised, earliest, pair.max(spacing), now);
                    return Err(recipient_deferral(delay, pair));
                }
            };
        let next_at = lock(&recipient.timing).next_at;
        if let Some(at) = next_at {
            if at > deadline {
                let now = Instant::now();
                let delay = promise(
                    &mut lock(&recipient.timing).promised,
                    at,
                    pair.max(spacing),
                    now,
                );
                return Err(recipient_deferral(delay, pair));
            }
            sleep_until(at).await;
        }

        // The number's throughput: one slot every 1/rate s.
        let slot = {
            let now = Instant::now();
            let mut numbers = lock(&self.numbers);
            let n = numbers.entry(number.to_string()).or_default();
            // Join the slot's group while its span has not passed (sending now if the slot is
            // behind us: a timer woke late); a slot a whole span behind is gone: a new group
            // starts now, whole. The next group is a span after this one's slot, not after a
            // late wake-up: the timer's rounding (up to a millisecond per wake) is not lost from
            // the rate; the sliding window in `release` still holds every second to it.
            let group = group(wa);
            let span = spacing * group;
            let (grid, taken) = match n.next_slot {
                Some(s) if s + span > now => (s, n.slot_taken),
                _ => (now, 0),
            };
            let slot = grid.max(now);
            if slot > (now + self.horizon()).min(deadline) {
                let delay = promise(&mut n.promised, slot, spacing, now);
                return Err(Deferral {
                    delay,
                    code: "number_paced",
                    message: format!(
                        "throughput: the phone number sends at most {}/s \
                         (whatsapp.rate_per_second); next slot in {}",
                        wa.rate_per_second,
                        human(delay)
                    ),
                });
            }
            if taken + 1 >= group {
                n.next_slot = Some(grid + span);
                n.slot_taken = 0;
            } else {
                n.next_slot = Some(grid);
                n.slot_taken = taken + 1;
            }
            slot
        };
        Ok(Permit {
            turn: Some(turn),
            recipient,
            pair_interval: pair,
            at: slot,
            number: number.to_string(),
            spacing,
            deadline,
        })
    }

    /// Waits for the permit's slot; a circuit or a pause that started meanwhile is waited out
    /// if it ends in time, else it defers the job.
    pub async fn ready(&self, permit: &Permit) -> Result<(), Deferral> {
        sleep_until(permit.at).await;
        self.wait_for_number(&permit.number, permit.spacing, permit.deadline)
            .await
    }

    /// An open circuit defers; a pause is slept if it ends before `deadline`, else deferred.
    async fn wait_for_number(
        &self,
        number: &str,
        spacing: Duration,
        deadline: Instant,
    ) -> Result<(), Deferral> {
        loop {
            let hold = self.hold(number);
            let until = {
                let now = Instant::now();
                let mut numbers = lock(&self.numbers);
                let n = numbers.entry(number.to_string()).or_default();
                if let Some(h) = hold {
                    return Err(hold_deferral(&mut n.promised, number, &h, spacing, now));
                }
                if let Some(c) = n.circuit.as_ref().filter(|c| c.until > now) {
                    let (until, reason) = (c.until, c.reason.clone());
                    let delay = promise(&mut n.promised, until, spacing, now);
                    return Err(circuit_deferral(delay, &reason, until - now));
                }
                match n.pause_until {
                    Some(until) if until > deadline => {
                        let delay = promise(&mut n.promised, until, spacing, now);
                        return Err(Deferral {
                            delay,
                            code: "number_paused",
                            message: format!(
                                "the phone number is paused after a rate-limit answer ({}); \
                                 next send in {}",
                                n.pause_reason,
                                human(delay)
                            ),
                        });
                    }
                    Some(until) if until > now => until,
                    _ => return Ok(()),
                }
            };
            sleep_until(until).await;
        }
    }

    /// How far ahead a job's throughput slot may be for it to wait here rather than be
    /// deferred: [`THROUGHPUT_HORIZON`] while several numbers are configured (fairness), else
    /// [`MAX_SLEEP`]: with one number a job deferred only comes back behind the same backlog,
    /// at the cost of a requeue and a claim (at 80/s, with a quarter second, nearly every job of
    /// a backlog was deferred once: docs/benchmarks.md, "Issue 14, second round").
    pub fn horizon(&self) -> Duration {
        if self.sole_number.load(std::sync::atomic::Ordering::Relaxed) {
            MAX_SLEEP
        } else {
            THROUGHPUT_HORIZON
        }
    }

    /// How many jobs the dispatcher may claim now without pacing deferring them (docs/numbers.md,
    /// "Fairness"): the throughput slots of every configured number within [`Pacer::horizon`],
    /// less the jobs claimed for them that have not asked for their slot yet ([`Pacer::reserve`]).
    /// A job claimed beyond that would only be deferred and claimed again (a requeue and a claim
    /// for nothing, and each deferral frees a worker slot that the next claim fills again).
    ///
    /// While every number is busy (its next slot ahead of now), room comes a mark span at a time
    /// ([`MARK_SPAN`], at most `batch` jobs): at 80/s one claim of 20 every quarter second rather
    /// than a claim of one every 12.5 ms. With one number the claim ends where a mark span ends,
    /// so each claim's marks share one statement. The jobs would wait for their slots anyway, so
    /// this costs them nothing; a number with a free slot now is claimed for at once.
    pub fn room(&self, wa: &WhatsappSettings, batch: usize) -> Room {
        let now = Instant::now();
        let horizon = self.horizon();
        let reserved = {
            let mut r = lock(&self.reserved);
            while r.front().is_some_and(|&until| until <= now) {
                r.pop_front();
            }
            r.len()
        };
        let map = lock(&self.numbers);
        let (mut room, mut earliest, mut shortest) = (0usize, None::<Instant>, None::<Duration>);
        let mut idle = false;
        // With one number: the slots left in the mark span of its first slot not yet promised.
        let mut to_span_end = None::<usize>;
        let sole = wa.number_ids().len() == 1;
        for id in wa.number_ids() {
            let Some(number) = wa.number(Some(id)) else {
                continue;
            };
            let spacing = spacing(&number);
            shortest = Some(shortest.map_or(spacing, |s| s.min(spacing)));
            let from = map
                .get(id)
                .and_then(|n| n.next_slot)
                .map_or(now, |slot| slot.max(now));
            idle |= from <= now;
            if from > now + horizon {
                let reach = from - horizon;
                earliest = Some(earliest.map_or(reach, |e| e.min(reach)));
                continue;
            }
            let slots = (now + horizon - from).as_secs_f64() / spacing.as_secs_f64();
            room = room.saturating_add(slots as usize + 1);
            if sole {
                let first = from + spacing * u32::try_from(reserved).unwrap_or(u32::MAX);
                let end = mark_span_start(first) + MARK_SPAN;
                to_span_end = Some(
                    (end.saturating_duration_since(first).as_secs_f64() / spacing.as_secs_f64())
                        .ceil() as usize,
                );
            }
        }
        let Some(shortest) = shortest else {
            return Room::Any;
        };
        let free = room.saturating_sub(reserved);
        let whole = (MARK_SPAN.as_secs_f64() / shortest.as_secs_f64()) as usize;
        let span = whole.clamp(1, batch.max(1));
        // The claim takes the slots up to the end of a mark span: its jobs write their marks in
        // one statement, and the next claim starts at a span's start (a whole span's worth from
        // wherever the last claim ended straddles two spans: two prepares instead of one). Less
        // than half a span left is claimed together with the next span.
        let aligned = match to_span_end {
            // (A span holds `whole` slots, or one more by its phase.)
            Some(left) if (1..=whole + 1).contains(&left) && left * 2 < whole => left + whole,
            Some(left) if (1..=whole + 1).contains(&left) => left,
            _ => whole,
        }
        .clamp(1, batch.max(1));
        if free > 0 && idle {
            Room::Jobs(free)
        } else if free >= span {
            Room::Busy {
                jobs: free,
                span: aligned.min(free),
            }
        } else if room > 0 {
            // Every slot in reach is promised to a job on its way, or less than a span's worth
            // is free: look again when a span's worth is.
            let missing = if idle {
                1
            } else {
                u32::try_from(span - free.min(span))
                    .unwrap_or(u32::MAX)
                    .max(1)
            };
            Room::At(now + shortest * missing)
        } else {
            // Every number's slots are beyond reach (`earliest` is set for each of them).
            Room::At(earliest.unwrap_or(now + shortest))
        }
    }

    /// `jobs` were claimed on [`Pacer::room`]'s word: each holds a slot's room until it asks for
    /// its slot ([`Pacer::acquire`]), or for [`MAX_SLEEP`] (a job that never gets there: composing
    /// with the orchestrator, or ended before its send).
    pub fn reserve(&self, jobs: usize) {
        let until = Instant::now() + MAX_SLEEP;
        lock(&self.reserved).extend(std::iter::repeat_n(until, jobs));
    }

    /// An accepted send: the number's rate-limit strikes are forgiven.
    pub fn accepted(&self, wa: &WhatsappSettings) {
        if let Some(n) = lock(&self.numbers).get_mut(&wa.phone_number_id) {
            n.slow_strikes = 0;
        }
    }

    /// A rate-limit answer: pause the whole number for `retry_after`, or 1 s doubling per
    /// consecutive strike up to [`MAX_PAUSE`]. Returns how long the job that got the answer
    /// should wait.
    pub fn pause_number(
        &self,
        wa: &WhatsappSettings,
        retry_after: Option<Duration>,
        reason: &str,
    ) -> Duration {
        let now = Instant::now();
        let spacing = spacing(wa);
        let mut numbers = lock(&self.numbers);
        let n = numbers.entry(wa.phone_number_id.clone()).or_default();
        n.slow_strikes = n.slow_strikes.saturating_add(1);
        let pause = retry_after.unwrap_or_else(|| {
            Duration::from_secs(1u64 << (n.slow_strikes - 1).min(6)).min(MAX_PAUSE)
        });
        let until = now + pause;
        if n.pause_until.is_none_or(|u| u < until) {
            n.pause_until = Some(until);
            n.pause_reason = reason.to_string();
        }
        let until = n.pause_until.unwrap_or(until);
        promise(&mut n.promised, until, spacing, now)
    }

    /// A halt-class answer: no sends for the number until `whatsapp.halt_cooldown` has passed or
    /// the configuration is reloaded. Returns how long the job that got the answer should wait
    /// ([`PROBE_EVERY`] at most, so it notices a reload) and whether this opened the circuit
    /// (false: it was open already).
    pub fn open_circuit(
        &self,
        settings: &Arc<Settings>,
        wa: &WhatsappSettings,
        reason: &str,
    ) -> (Duration, bool) {
        let now = Instant::now();
        let cooldown = wa.halt_cooldown;
        let mut numbers = lock(&self.numbers);
        let n = numbers.entry(wa.phone_number_id.clone()).or_default();
        // A halt answer under settings this number has not seen yet is for those settings.
        n.seen = Arc::downgrade(settings);
        let opened = match &mut n.circuit {
            Some(c) if c.until > now => {
                c.until = c.until.max(now + cooldown);
                false
            }
            _ => {
                n.circuit = Some(Circuit {
                    until: now + cooldown,
                    reason: reason.to_string(),
                });
                n.promised = None;
                true
            }
        };
        (cooldown.min(PROBE_EVERY), opened)
    }

    /// Whether sending is halted for any number.
    pub fn circuit_open(&self) -> bool {
        let now = Instant::now();
        lock(&self.numbers)
            .values()
            .any(|n| n.circuit.as_ref().is_some_and(|c| c.until > now))
    }

    /// The numbers this process does not send for now, by its own state: (id, `circuit_open` or
    /// `rate_paused`, time left, reason). An open circuit hides a pause of the same number.
    pub fn stopped(&self) -> Vec<(String, &'static str, Duration, String)> {
        let now = Instant::now();
        let mut out: Vec<_> = lock(&self.numbers)
            .iter()
            .filter_map(|(id, n)| {
                if let Some(c) = n.circuit.as_ref().filter(|c| c.until > now) {
                    return Some((id.clone(), "circuit_open", c.until - now, c.reason.clone()));
                }
                n.pause_until.filter(|&u| u > now).map(|u| {
                    (
                        id.clone(),
                        "rate_paused",
                        u - now,
                        format!("rate-limit answer {}", n.pause_reason),
                    )
                })
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Whether sending is halted for this number (its circuit is open).
    pub fn circuit_open_for(&self, number: &str) -> bool {
        let now = Instant::now();
        lock(&self.numbers)
            .get(number)
            .is_some_and(|n| n.circuit.as_ref().is_some_and(|c| c.until > now))
    }

    /// The sliding window, just before the request leaves (after [`Pacer::acquire`] and the
    /// `sending` mark, whose database write would otherwise add its jitter): waits until fewer
    /// than `rate` sends left in the last second, then records this one. Recorded under the
    /// lock with the time each actually leaves, so late wake-ups delay sends but never bunch
    /// them.
    pub async fn release(&self, wa: &WhatsappSettings) {
        let number = wa.phone_number_id.as_str();
        let window = Duration::from_secs(1) + WINDOW_MARGIN;
        let rate = wa.rate_per_second.max(1) as usize;
        loop {
            let wait = {
                let now = Instant::now();
                let mut numbers = lock(&self.numbers);
                let n = numbers.entry(number.to_string()).or_default();
                while n.released.front().is_some_and(|&t| t + window <= now) {
                    n.released.pop_front();
                }
                if n.released.len() < rate {
                    n.released.push_back(now);
                    return;
                }
                n.released[n.released.len() - rate] + window
            };
            sleep_until(wait).await;
        }
    }

    fn recipient(&self, number: &str, to: &str) -> Arc<Recipient> {
        let mut r = lock(&self.recipients);
        if r.map.len() >= r.sweep_at.max(RECIPIENTS_SWEEP_AT) {
            let now = Instant::now();
            r.map.retain(|_, rec| {
                let t = lock(&rec.timing);
                Arc::strong_count(rec) > 1
                    || t.strikes > 0
                    || t.next_at.is_some_and(|at| at > now)
                    || t.promised.is_some_and(|at| at > now)
            });
            r.sweep_at = r.map.len() * 2;
        }
        r.map
            .entry((number.to_string(), to.to_string()))
            .or_default()
            .clone()
    }
}

/// The start of the [`MARK_SPAN`] that holds `at`, on a grid shared by the whole process.
fn mark_span_start(at: Instant) -> Instant {
    static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    let epoch = *EPOCH;
    if at <= epoch {
        return at;
    }
    let since = (at - epoch).as_nanos();
    let span = MARK_SPAN.as_nanos();
    epoch + Duration::from_nanos(u64::try_from(since - since % span).unwrap_or(u64::MAX))
}

/// The time between two sends at the number's rate (a throughput slot is [`group`] of them).
fn spacing(wa: &WhatsappSettings) -> Duration {
    (Duration::from_secs(1) + WINDOW_MARGIN) / wa.rate_per_second.max(1)
}

/// How many sends one throughput slot gives out: the rate's sends in [`GROUP_SPAN`], at least
/// one (so below 100/s every send has a slot of its own, evenly spaced).
fn group(wa: &WhatsappSettings) -> u32 {
    let per_span = u128::from(wa.rate_per_second) * GROUP_SPAN.as_millis() / 1000;
    u32::try_from(per_span).unwrap_or(u32::MAX).max(1)
}

/// A job for a number on hold: back when the hold ends, or after [`HOLD_RECHECK`].
fn hold_deferral(
    promised: &mut Option<Instant>,
    number: &str,
    h: &Hold,
    spacing: Duration,
    now: Instant,
) -> Deferral {
    let back = h
        .until
        .map_or(now + HOLD_RECHECK, |u| u.min(now + HOLD_RECHECK));
    let delay = promise(promised, back, spacing, now);
    let until = match h.until {
        Some(u) => format!("for {} more", human(u.saturating_duration_since(now))),
        None => "until resumed".to_string(),
    };
    Deferral {
        delay,
        code: "number_on_hold",
        message: format!(
            "phone number {number} is paused {until} ({}, by {}); `outbound-runner numbers \
             resume {number}` releases its jobs (no attempt spent)",
            h.reason, h.by
        ),
    }
}

/// The next promised slot not before `earliest` and `spacing` after the last one; returns the
/// delay until it.
fn promise(
    promised: &mut Option<Instant>,
    earliest: Instant,
    spacing: Duration,
    now: Instant,
) -> Duration {
    let slot = match *promised {
        Some(last) if last + spacing > earliest => last + spacing,
        _ => earliest,
    };
    *promised = Some(slot);
    slot.saturating_duration_since(now)
}

fn circuit_deferral(delay: Duration, reason: &str, remaining: Duration) -> Deferral {
    Deferral {
        delay,
        code: "circuit_open",
        message: format!(
            "sending is halted for this phone number ({reason}); it resumes in {} \
             (whatsapp.halt_cooldown) or on a configuration reload",
            human(remaining)
        ),
    }
}

fn recipient_deferral(delay: Duration, pair: Duration) -> Deferral {
    Deferral {
        delay,
        code: "recipient_paced",
        message: format!(
            "pair rate: one message per {} to the same recipient (whatsapp.pair_interval); \
             next send in {}",
            human(pair),
            human(delay)
        ),
    }
}

/// Sleeps until `at` if it is still ahead (tokio rounds every timer up to the next millisecond,
/// so even a deadline that has passed would cost up to 1 ms).
async fn sleep_until(at: Instant) {
    if at > Instant::now() {
        tokio::time::sleep_until(at).await;
    }
}

/// A duration for people: whole milliseconds.
fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LoadOptions, load};

    fn settings(tweak: impl FnOnce(&mut Settings)) -> Arc<Settings> {
        let mut s = load(&LoadOptions {
            skip_default_path: true,
            ..Default::default()
        })
        .unwrap();
        s.whatsapp.phone_number_id = "1000".into();
        tweak(&mut s);
        Arc::new(s)
    }

    /// `rate` sends a second, no pair interval.
    fn per_second(rate: u32) -> Arc<Settings> {
        settings(|s| {
            s.whatsapp.rate_per_second = rate;
            s.whatsapp.pair_interval = Duration::ZERO;
        })
    }

    /// Sets `number`'s next slot, as a late wake-up or a backlog would leave it.
    fn next_slot(pacer: &Pacer, number: &str, slot: Option<Instant>) {
        lock(&pacer.numbers)
            .entry(number.into())
            .or_default()
            .next_slot = slot;
    }

    /// The code a send to `to` is deferred with (it must be).
    async fn refused(pacer: &Pacer, wa: &WhatsappSettings, to: &str) -> &'static str {
        pacer.acquire(wa, to).await.unwrap_err().code
    }

    /// One send to `to`, accepted.
    async fn sent(pacer: &Pacer, wa: &WhatsappSettings, to: &str) {
        pacer.acquire(wa, to).await.unwrap().done(true);
    }

    /// When each of `n` sends to a new recipient got its permit, from the first call.
    async fn permit_times(pacer: &Pacer, s: &Settings, n: usize) -> Vec<Duration> {
        let start = Instant::now();
        let mut at = Vec::new();
        for i in 0..n {
            let p = pacer
                .acquire(&s.whatsapp, &format!("1555000{i:04}"))
                .await
                .unwrap();
            at.push(Instant::now() - start);
            p.done(true);
        }
        at
    }

    #[tokio::test(start_paused = true)]
    async fn throughput_spaces_sends_evenly() {
        let s = per_second(10);
        let pacer = Pacer::new();
        let at: Vec<u128> = permit_times(&pacer, &s, 5)
            .await
            .iter()
            .map(Duration::as_millis)
            .collect();
        // One slot every (1 s + WINDOW_MARGIN) / rate.
        assert_eq!(at, [0, 102, 204, 306, 408]);
    }

    #[tokio::test(start_paused = true)]
    async fn from_a_hundred_a_second_slots_come_in_groups_of_twenty_milliseconds() {
        let s = per_second(1000);
        assert_eq!(group(&s.whatsapp), 20);
        let pacer = Pacer::new();
        let at: Vec<u128> = permit_times(&pacer, &s, 45)
            .await
            .iter()
            .map(Duration::as_micros)
            .collect();
        // Twenty sends per slot, a slot every 20 × (1 s + WINDOW_MARGIN) / 1000 = 20.4 ms (the
        // timer wakes on the next whole millisecond; the slots stay on their 20.4 ms grid).
        let mut want = vec![0u128; 20];
        want.extend([21_000; 20]);
        want.extend([41_000; 5]);
        assert_eq!(at, want);
        // After a pause the next group starts when asked, whole.
        tokio::time::advance(Duration::from_secs(1)).await;
        let before = Instant::now();
        for i in 0..10 {
            sent(&pacer, &s.whatsapp, &format!("1556000{i:04}")).await;
        }
        assert_eq!(Instant::now(), before, "one group, no wait");
        // Time passes between the sends of a group (it does, outside a test): still twenty per
        // slot, and the slots stay on their grid (20.4, 40.8 ms; each woken on the next whole
        // millisecond), so late wake-ups do not slow the rate.
        tokio::time::advance(Duration::from_secs(1)).await;
        let start = Instant::now();
        let mut at = Vec::new();
        for i in 0..55 {
            sent(&pacer, &s.whatsapp, &format!("1557000{i:04}")).await;
            at.push((Instant::now() - start).as_micros());
            tokio::time::advance(Duration::from_micros(100)).await;
        }
        let want: Vec<u128> = (0..55u128)
            .map(|k| [0, 21_000, 41_000][(k / 20) as usize] + (k % 20) * 100)
            .collect();
        assert_eq!(at, want);
        let at_80 = settings(|s| s.whatsapp.rate_per_second = 80);
        assert_eq!(
            group(&at_80.whatsapp),
            1,
            "at 80/s every send has its own slot"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_room_to_claim_is_the_slots_in_reach_less_the_jobs_on_their_way() {
        let s = per_second(10);
        let pacer = Pacer::new();
        // Slots every 102 ms within the 250 ms horizon: now, 102 and 204 ms.
        assert_eq!(pacer.room(&s.whatsapp, 64), Room::Jobs(3));
        pacer.reserve(2);
        assert_eq!(pacer.room(&s.whatsapp, 64), Room::Jobs(1));
        pacer.reserve(1);
        let now = Instant::now();
        assert_eq!(
            pacer.room(&s.whatsapp, 64),
            Room::At(now + Duration::from_millis(102)),
            "all promised: a slot later"
        );
        // A job asks for its slot: its room is its own now.
        sent(&pacer, &s.whatsapp, "15550000001").await;
        // Slots up to 306 ms ahead are taken: none in reach until 56 ms from now.
        let start = Instant::now();
        next_slot(&pacer, "1000", Some(start + Duration::from_millis(306)));
        assert_eq!(
            pacer.room(&s.whatsapp, 64),
            Room::At(start + Duration::from_millis(56))
        );
        // Another number has room of its own.
        let two = settings(|s| {
            s.whatsapp.rate_per_second = 10;
            s.whatsapp.numbers = vec![crate::config::NumberSettings {
                phone_number_id: "2000".into(),
                ..Default::default()
            }];
        });
        assert!(matches!(pacer.room(&two.whatsapp, 64), Room::Jobs(_)));
        // Reservations lapse after a second (a job that never asked for its slot).
        tokio::time::advance(MAX_SLEEP).await;
        assert_eq!(pacer.room(&s.whatsapp, 64), Room::Jobs(3));
        assert!(lock(&pacer.reserved).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unused_permit_leaves_the_recipients_spacing_as_it_was() {
        let s = settings(|s| s.whatsapp.pair_interval = Duration::from_secs(6));
        let pacer = Pacer::new();
        let to = "15559000001";
        let start = Instant::now();
        pacer.reserve_slot(&s.whatsapp, to).await.unwrap().unused();
        // Its turn is free again and nothing was sent: the next send to it need not wait.
        let again = pacer
            .reserve_slot(&s.whatsapp, to)
            .await
            .expect("not deferred");
        assert!(again.at() < start + Duration::from_secs(1));
        drop(again);
        // Dropped without an outcome, a permit counts as a send: the pair interval applies.
        let err = pacer.reserve_slot(&s.whatsapp, to).await.unwrap_err();
        assert_eq!(err.code, "recipient_paced");
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_number_is_claimed_for_a_mark_span_at_a_time() {
        let one = settings(|s| s.whatsapp.pair_interval = Duration::ZERO);
        let pacer = Pacer::new();
        pacer.admit(&one, &one.whatsapp).unwrap();
        let spacing = spacing(&one.whatsapp);
        assert_eq!(spacing, Duration::from_micros(12_750), "80/s");
        // Slots are taken up to 900 ms ahead: 8 in reach, fewer than a span's 19.
        let start = Instant::now();
        next_slot(&pacer, "1000", Some(start + Duration::from_millis(900)));
        assert_eq!(
            pacer.room(&one.whatsapp, 64),
            Room::At(start + spacing * 11),
            "the dispatcher comes back when a span's worth is in reach"
        );
        assert_eq!(
            pacer.room(&one.whatsapp, 8),
            Room::Busy { jobs: 8, span: 8 },
            "a claim never bigger than the batch: that many will do"
        );
        tokio::time::advance(spacing * 11).await;
        assert!(
            matches!(pacer.room(&one.whatsapp, 64), Room::Busy { jobs: 19, span } if (1..=19).contains(&span)),
            "a span's worth in reach: claimed up to the end of a mark span"
        );
        // An idle number is claimed for at once, however little is free.
        tokio::time::advance(Duration::from_secs(1)).await;
        pacer.reserve(78);
        assert_eq!(pacer.room(&one.whatsapp, 64), Room::Jobs(1));
    }

    /// Claims as the dispatcher makes them while the number is busy: each claim's jobs take
    /// their slots in one mark span (after the first, which may end one), so each claim's marks
    /// share one statement.
    #[tokio::test(start_paused = true)]
    async fn each_claim_of_a_busy_number_falls_in_one_mark_span() {
        let one = settings(|s| s.whatsapp.pair_interval = Duration::ZERO);
        let pacer = Pacer::new();
        pacer.admit(&one, &one.whatsapp).unwrap();
        next_slot(
            &pacer,
            "1000",
            Some(Instant::now() + Duration::from_millis(37)),
        );
        let mut to = 0;
        let mut spans = Vec::new();
        for claim in 0..8 {
            // The dispatcher comes back when told to.
            let span = loop {
                match pacer.room(&one.whatsapp, 64) {
                    Room::Busy { span, .. } => break span,
                    Room::At(at) => tokio::time::advance(at - Instant::now()).await,
                    other => panic!("claim {claim}: the number is busy: {other:?}"),
                }
            };
            assert!(
                span <= 38,
                "claim {claim}: {span} jobs, at most two spans' worth"
            );
            pacer.reserve(span);
            let mut marks = Vec::new();
            for _ in 0..span {
                to += 1;
                let permit = pacer
                    .reserve_slot(&one.whatsapp, &format!("1559{to:07}"))
                    .await
                    .expect("within the horizon");
                marks.push(mark_span_start(permit.at()));
                permit.done(true);
            }
            marks.dedup();
            spans.push(marks);
            // Their sends take their time.
            tokio::time::advance(spacing(&one.whatsapp) * span as u32).await;
        }
        for (claim, marks) in spans.iter().enumerate().skip(1) {
            assert_eq!(
                marks.len(),
                1,
                "claim {claim} straddles mark spans: {marks:?}"
            );
        }
        assert!(spans.windows(2).all(|w| w[0].last() < w[1].first()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_sends_of_a_span_write_their_marks_at_one_instant() {
        let one = settings(|s| s.whatsapp.pair_interval = Duration::ZERO);
        let pacer = Pacer::new();
        pacer.admit(&one, &one.whatsapp).unwrap();
        let mut permits = Vec::new();
        for i in 0..40 {
            let permit = pacer
                .reserve_slot(&one.whatsapp, &format!("1558000{i:04}"))
                .await
                .expect("within the second");
            let (at, mark) = (permit.at(), permit.mark_at());
            assert!(
                mark <= at && at - mark < MARK_SPAN,
                "{i}: marked within a span before its slot"
            );
            permits.push((at, mark));
        }
        // 40 slots 12.75 ms apart span 497 ms: two spans, or three on a span's edge.
        let mut marks: Vec<Instant> = permits.iter().map(|p| p.1).collect();
        marks.dedup();
        assert!(
            marks.len() <= 3,
            "{} mark instants for 40 sends",
            marks.len()
        );
        for w in permits.windows(2) {
            assert_eq!(
                w[1].0 - w[0].0,
                spacing(&one.whatsapp),
                "the sends stay evenly spaced"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_one_number_a_job_waits_up_to_a_second_for_its_slot() {
        let one = settings(|s| s.whatsapp.pair_interval = Duration::ZERO);
        let pacer = Pacer::new();
        pacer.admit(&one, &one.whatsapp).unwrap();
        assert_eq!(pacer.horizon(), MAX_SLEEP);
        let start = Instant::now();
        next_slot(&pacer, "1000", Some(start + Duration::from_millis(600)));
        assert!(
            matches!(pacer.room(&one.whatsapp, 64), Room::Busy { .. }),
            "within the second"
        );
        pacer
            .acquire(&one.whatsapp, "15550000001")
            .await
            .expect("waits, not deferred")
            .done(true);
        assert_eq!(Instant::now() - start, Duration::from_millis(600));
        // Two numbers: the quarter second again (fairness).
        let two = settings(|s| {
            s.whatsapp.pair_interval = Duration::ZERO;
            s.whatsapp.numbers = vec![crate::config::NumberSettings {
                phone_number_id: "2000".into(),
                ..Default::default()
            }];
        });
        pacer.admit(&two, &two.whatsapp).unwrap();
        assert_eq!(pacer.horizon(), THROUGHPUT_HORIZON);
        let now = Instant::now();
        next_slot(&pacer, "1000", Some(now + Duration::from_millis(600)));
        let d = pacer
            .acquire(&two.whatsapp, "15550000002")
            .await
            .unwrap_err();
        assert_eq!(d.code, "number_paced");
    }

    /// The most sends in any one-second window `[t, t + 1s)`.
    fn most_in_one_second(at: &[Instant]) -> usize {
        let mut at = at.to_vec();
        at.sort();
        let mut most = 0;
        let mut start = 0;
        for end in 0..at.len() {
            while at[end] - at[start] >= Duration::from_secs(1) {
                start += 1;
            }
            most = most.max(end - start + 1);
        }
        most
    }

    /// Two numbers with different rates, each with a backlog far past one second, sent by many
    /// concurrent workers (deferred jobs come back after their delay): no one-second window of
    /// either number holds more than its rate, and the slow number is not held up by the fast.
    #[tokio::test(start_paused = true)]
    async fn two_numbers_each_under_its_own_rate_in_parallel() {
        let s = settings(|s| {
            s.whatsapp.rate_per_second = 50;
            s.whatsapp.pair_interval = Duration::ZERO;
            s.whatsapp.numbers = vec![crate::config::NumberSettings {
                phone_number_id: "2000".into(),
                access_token: None,
                access_token_file: None,
                rate_per_second: Some(7),
                pair_interval: None,
                ..Default::default()
            }];
        });
        let fast = s.whatsapp.number(Some("1000")).unwrap();
        let slow = s.whatsapp.number(Some("2000")).unwrap();
        let pacer = Arc::new(Pacer::new());
        let sent: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (wa, jobs) in [(&fast, 400), (&slow, 42)] {
            for i in 0..jobs {
                let (pacer, sent, wa) = (pacer.clone(), sent.clone(), wa.clone());
                tasks.push(tokio::spawn(async move {
                    let to = format!("1555{i:07}");
                    loop {
                        match pacer.acquire(&wa, &to).await {
                            Ok(p) => {
                                pacer.release(&wa).await;
                                lock(&sent)
                                    .entry(wa.phone_number_id.clone())
                                    .or_default()
                                    .push(Instant::now());
                                // The request takes a while; the send slot is already spent.
                                tokio::time::sleep(Duration::from_millis(120)).await;
                                p.done(true);
                                return;
                            }
                            Err(d) => tokio::time::sleep(d.delay).await,
                        }
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let sent = lock(&sent);
        for (wa, jobs) in [(&fast, 400), (&slow, 42)] {
            let at = &sent[&wa.phone_number_id];
            assert_eq!(at.len(), jobs);
            let most = most_in_one_second(at);
            let took = *at.iter().max().unwrap() - start;
            println!(
                "number {}: rate_per_second = {}, most sends in one second = {most}, \
                 {jobs} sends took {took:?}",
                wa.phone_number_id, wa.rate_per_second
            );
            assert!(most <= wa.rate_per_second as usize, "{most} in one second");
            assert!(
                most >= wa.rate_per_second as usize - 1,
                "{most}: the rate is used"
            );
            // In parallel: each number's backlog takes what its own rate needs, not the sum.
            let need = Duration::from_secs_f64(jobs as f64 / f64::from(wa.rate_per_second));
            assert!(
                took <= need + Duration::from_millis(500),
                "{took:?} for {need:?}"
            );
        }
        // The slow number's first send did not wait for the fast one's backlog.
        let first_slow = *sent["2000"].iter().min().unwrap() - start;
        assert!(first_slow < Duration::from_millis(10), "{first_slow:?}");
    }

    /// Late wake-ups (here: the slot schedule forgotten between sends) cannot bunch sends past
    /// the rate: the sliding window of released sends holds the eleventh for the first to age.
    #[tokio::test(start_paused = true)]
    async fn the_sliding_window_never_lets_more_than_the_rate_through() {
        let s = per_second(10);
        let pacer = Pacer::new();
        let start = Instant::now();
        let mut at = Vec::new();
        for i in 0..25 {
            next_slot(&pacer, "1000", None);
            let p = pacer
                .acquire(&s.whatsapp, &format!("1555000{i:04}"))
                .await
                .unwrap();
            pacer.release(&s.whatsapp).await;
            at.push(Instant::now());
            p.done(true);
        }
        assert_eq!(most_in_one_second(&at), 10);
        let window = Duration::from_secs(1) + WINDOW_MARGIN;
        assert_eq!(at[10] - start, window);
        assert_eq!(at[20] - start, window * 2);
    }

    /// A hold (operator pause) defers the number's jobs, not another number's, and ends when
    /// lifted.
    #[tokio::test(start_paused = true)]
    async fn a_hold_defers_only_its_number() {
        let s = settings(|s| {
            s.whatsapp.pair_interval = Duration::ZERO;
            s.whatsapp.numbers = vec![crate::config::NumberSettings {
                phone_number_id: "2000".into(),
                access_token: None,
                access_token_file: None,
                rate_per_second: None,
                pair_interval: None,
                ..Default::default()
            }];
        });
        let other = s.whatsapp.number(Some("2000")).unwrap();
        let pacer = Pacer::new();
        pacer.hold_now(
            "1000",
            Hold {
                until: None,
                reason: "by hand".into(),
                by: "ops".into(),
            },
        );
        let d = pacer.admit(&s, &s.whatsapp).unwrap_err();
        assert_eq!(d.code, "number_on_hold");
        assert_eq!(d.delay, HOLD_RECHECK);
        assert!(d.message.contains("numbers resume 1000"), "{}", d.message);
        assert_eq!(
            refused(&pacer, &s.whatsapp, "15550000001").await,
            "number_on_hold"
        );
        pacer.admit(&s, &other).unwrap();
        sent(&pacer, &other, "15550000001").await;
        pacer.set_holds(HashMap::new());
        pacer.admit(&s, &s.whatsapp).unwrap();
        // A hold with an end brings the job back when it ends.
        pacer.hold_now(
            "1000",
            Hold {
                until: Some(Instant::now() + Duration::from_secs(5)),
                reason: "by hand".into(),
                by: "ops".into(),
            },
        );
        let d = pacer.admit(&s, &s.whatsapp).unwrap_err();
        assert_eq!(d.delay, Duration::from_secs(5));
        tokio::time::sleep(Duration::from_secs(5)).await;
        pacer.admit(&s, &s.whatsapp).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_backlog_past_one_second_is_deferred_and_spread() {
        let s = settings(|s| {
            s.whatsapp.rate_per_second = 2;
            s.whatsapp.pair_interval = Duration::ZERO;
        });
        let pacer = Pacer::new();
        // Slots at 0 s, 0.5 s and 1 s are within reach; reserve them without sleeping.
        {
            let mut numbers = lock(&pacer.numbers);
            numbers.entry("1000".into()).or_default().next_slot =
                Some(Instant::now() + Duration::from_millis(1500));
        }
        let a = pacer.acquire(&s.whatsapp, "15550000001").await.unwrap_err();
        let b = pacer.acquire(&s.whatsapp, "15550000002").await.unwrap_err();
        assert_eq!(a.code, "number_paced");
        assert_eq!(a.delay, Duration::from_millis(1500));
        assert_eq!(
            b.delay,
            Duration::from_millis(2010),
            "promised the next slot"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_pair_interval_is_slept_when_short_and_deferred_when_long() {
        let short = settings(|s| s.whatsapp.pair_interval = Duration::from_millis(300));
        let pacer = Pacer::new();
        sent(&pacer, &short.whatsapp, "15551112222").await;
        let start = Instant::now();
        sent(&pacer, &short.whatsapp, "15551112222").await;
        assert_eq!((Instant::now() - start).as_millis(), 300);
        // Another recipient does not wait.
        let start = Instant::now();
        sent(&pacer, &short.whatsapp, "15553334444").await;
        assert!(Instant::now() - start < Duration::from_millis(20));

        let long = settings(|s| s.whatsapp.pair_interval = Duration::from_secs(6));
        let pacer = Pacer::new();
        sent(&pacer, &long.whatsapp, "15551112222").await;
        let first = pacer
            .acquire(&long.whatsapp, "15551112222")
            .await
            .unwrap_err();
        let second = pacer
            .acquire(&long.whatsapp, "15551112222")
            .await
            .unwrap_err();
        assert_eq!(first.code, "recipient_paced");
        assert_eq!(first.delay, Duration::from_secs(6));
        assert_eq!(
            second.delay,
            Duration::from_secs(12),
            "spread by the pair interval"
        );
        assert!(first.message.contains("6s"), "{}", first.message);
    }

    #[tokio::test(start_paused = true)]
    async fn one_send_at_a_time_per_recipient() {
        let s = settings(|s| s.whatsapp.pair_interval = Duration::ZERO);
        let pacer = Arc::new(Pacer::new());
        let held = pacer.acquire(&s.whatsapp, "15551112222").await.unwrap();
        // Held past the one-second budget: the second job is deferred.
        let err = pacer.acquire(&s.whatsapp, "15551112222").await.unwrap_err();
        assert_eq!(err.code, "recipient_paced");
        // Released within the budget: the second job gets its turn.
        let waiter = {
            let (pacer, s) = (pacer.clone(), s.clone());
            tokio::spawn(async move { pacer.acquire(&s.whatsapp, "15551112222").await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        held.done(true);
        waiter.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn pair_rate_answers_back_off_four_to_the_x() {
        let s = settings(|s| s.whatsapp.pair_interval = Duration::ZERO);
        let pacer = Pacer::new();
        let mut backoffs = Vec::new();
        for _ in 0..7 {
            let p = loop {
                match pacer.acquire(&s.whatsapp, "15551112222").await {
                    Ok(p) => break p,
                    Err(d) => tokio::time::sleep(d.delay).await,
                }
            };
            backoffs.push(p.pair_limited().as_secs());
        }
        assert_eq!(backoffs, [1, 4, 16, 64, 256, 1024, 1024]);
        // An accepted send resets the exponent.
        tokio::time::sleep(Duration::from_secs(1024)).await;
        sent(&pacer, &s.whatsapp, "15551112222").await;
        let p = pacer.acquire(&s.whatsapp, "15551112222").await.unwrap();
        assert_eq!(p.pair_limited(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_pauses_the_whole_number() {
        let s = settings(|s| s.whatsapp.pair_interval = Duration::ZERO);
        let pacer = Pacer::new();
        // Short pause: slept.
        assert_eq!(
            pacer.pause_number(&s.whatsapp, Some(Duration::from_millis(400)), "http_429"),
            Duration::from_millis(400)
        );
        let start = Instant::now();
        sent(&pacer, &s.whatsapp, "15550000001").await;
        assert!(Instant::now() - start >= Duration::from_millis(400));
        // Escalating pauses without Retry-After: 2 s (the second strike), then 4 s: deferred.
        assert_eq!(
            pacer.pause_number(&s.whatsapp, None, "http_429"),
            Duration::from_secs(2)
        );
        let d = pacer.acquire(&s.whatsapp, "15550000002").await.unwrap_err();
        assert_eq!(d.code, "number_paused");
        assert!(d.message.contains("http_429"), "{}", d.message);
        assert_eq!(
            pacer.pause_number(&s.whatsapp, None, "http_429"),
            Duration::from_secs(4)
        );
        // An accepted send forgives the strikes.
        tokio::time::sleep(Duration::from_secs(5)).await;
        sent(&pacer, &s.whatsapp, "15550000003").await;
        pacer.accepted(&s.whatsapp);
        assert_eq!(
            pacer.pause_number(&s.whatsapp, None, "http_429"),
            Duration::from_secs(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_circuit_closes_after_the_cooldown_or_on_reload() {
        let s = settings(|s| s.whatsapp.halt_cooldown = Duration::from_secs(300));
        let pacer = Pacer::new();
        assert_eq!(pacer.admit(&s, &s.whatsapp), Ok(Admission::default()));
        let (probe, opened) = pacer.open_circuit(&s, &s.whatsapp, "Cloud API error 190");
        assert!(opened);
        assert_eq!(probe, PROBE_EVERY);
        assert!(
            !pacer.open_circuit(&s, &s.whatsapp, "again").1,
            "already open"
        );
        assert!(pacer.circuit_open());
        let d = pacer.admit(&s, &s.whatsapp).unwrap_err();
        assert_eq!(d.code, "circuit_open");
        assert_eq!(d.delay, Duration::from_secs(300));
        assert!(d.message.contains("Cloud API error 190"), "{}", d.message);
        assert_eq!(
            refused(&pacer, &s.whatsapp, "15550000001").await,
            "circuit_open"
        );

        tokio::time::sleep(Duration::from_secs(300)).await;
        assert!(!pacer.circuit_open());
        assert_eq!(
            pacer.admit(&s, &s.whatsapp),
            Ok(Admission {
                closed_after_cooldown: true,
                ..Default::default()
            })
        );

        pacer.open_circuit(&s, &s.whatsapp, "Cloud API error 190");
        let reloaded = Arc::new((*s).clone());
        assert_eq!(
            pacer.admit(&reloaded, &reloaded.whatsapp),
            Ok(Admission {
                closed_by_reload: true,
                ..Default::default()
            })
        );
        assert!(!pacer.circuit_open());
        pacer
            .acquire(&reloaded.whatsapp, "15550000001")
            .await
            .unwrap();
    }
}
