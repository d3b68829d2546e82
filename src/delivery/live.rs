//! Live delivery: the pipeline that sends a job's messages through the WhatsApp Cloud API.
//!
//! One attempt:
//!
//! 1. **Check** the payload (`bad_payload` fails the job) and the circuit (open: the job is
//!    deferred without spending an attempt).
//! 2. **Compose**: the payload's `message`; else the `composed` answer an earlier attempt saved;
//!    else ask the orchestrator. Then, in one fenced statement, save the answer and create the
//!    `pending` message rows, before anything is sent.
//! 3. **Send** each message in `seq` order. `sent`: skipped. `unknown`: never sent again (an
//!    operator decides). `sending` (an earlier attempt was cut off mid-send): in doubt, per
//!    `delivery.on_unknown`. Otherwise: pace → mark `sending` (committed) → POST → on 200 store
//!    the wamid and `sent` in one statement (the last message's with the job's completion); on
//!    an error settle the message and say what the job does next (see
//!    [`crate::whatsapp::codes::Class`]).
//! 4. `Ok` when every message is accepted: the worker marks the job done, and records the
//!    last wamid (returned in [`super::Delivered`]), in one statement.
//!
//! Delivery is at most once per message: a message is sent only from `pending` (or `failed`,
//! refused by Meta for good, when an operator requeues its job), and the request leaves only
//! after `sending` is committed, so whatever happens to this process afterwards leaves a trace
//! the rescuer turns into `unknown` instead of a second send.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ledger::{self, Message, Status};
use super::orchestrator;
use super::payload::{Content, Payload};
use super::{Accepted, BoxFuture, Delivered, JobContext, JobHandler};
use crate::config::{OnUnknown, Settings, WhatsappSettings};
use crate::db::redact_sqlx;
use crate::queue::{Action, Job, JobError};
use crate::whatsapp::client::{CloudApi, SendError};
use crate::whatsapp::codes::{self, Class};
use crate::whatsapp::numbers::{self, HOLDS_MAX_AGE, HoldCache, TierCache, TierVerdict};
use crate::whatsapp::pacing::{self, Pacer, Permit};

/// The handler of `delivery.mode = "live"`. One per process: it holds the HTTP client (its
/// connection pool) and the pacing state.
pub struct LiveHandler {
    http: Mutex<Http>,
    pacer: Pacer,
    /// The numbers on hold, read from the database at most a second ago.
    holds: HoldCache,
    /// The tier counts (unique template recipients in 24 h), read at most a second ago.
    tiers: TierCache,
    /// The circuits and pauses this runner last wrote to `"OutboundNumberCircuit"`.
    published: Mutex<Vec<(String, &'static str)>>,
}

/// The HTTP client, rebuilt when a reload changes the timeouts it was built for.
struct Http {
    timeouts: (Duration, Duration),
    client: reqwest::Client,
}

impl LiveHandler {
    pub fn new(settings: &Settings) -> Result<Self, reqwest::Error> {
        let timeouts = timeouts(settings);
        Ok(Self {
            http: Mutex::new(Http {
                timeouts,
                client: build_client(timeouts)?,
            }),
            pacer: Pacer::new(),
            holds: HoldCache::default(),
            tiers: TierCache::default(),
            published: Mutex::new(Vec::new()),
        })
    }

    fn client(&self, settings: &Settings) -> reqwest::Client {
        let want = timeouts(settings);
        let mut http = self.http.lock().unwrap_or_else(|p| p.into_inner());
        if http.timeouts != want {
            match build_client(want) {
                Ok(client) => {
                    *http = Http {
                        timeouts: want,
                        client,
                    }
                }
                Err(e) => tracing::warn!(
                    error = %crate::whatsapp::client::describe(e),
                    "rebuilding the HTTP client for new timeouts failed; keeping the old one"
                ),
            }
        }
        http.client.clone()
    }

    async fn attempt(&self, job: &Job, ctx: &JobContext) -> Result<Delivered, JobError> {
        let settings = &ctx.settings;
        let payload = Payload::parse(&job.payload)?;
        let wa = sending_number(settings, &payload)?;
        self.admit(ctx, &wa).await?;
        let http = self.client(settings);

        // Compose, and record the messages before any send.
        let (messages, answer) = match (&payload.content, &job.composed) {
            (Content::Messages(m), _) => (m.clone(), None),
            (Content::Input(_), Some(saved)) => {
                let m = orchestrator::messages_of(saved).map_err(|why| {
                    JobError::fail(
                        "bad_composed",
                        format!("the saved orchestrator answer (composed) cannot be sent: {why}"),
                    )
                })?;
                (m, None)
            }
            (Content::Input(input), None) => {
                let started = Instant::now();
                let composed =
                    orchestrator::compose(&http, &settings.orchestrator, job, &payload.to, input)
                        .await;
                // The in-flight sizing's input (runner::sizing), answered or not.
                ctx.metrics.orchestrator_latency.record(started.elapsed());
                let c = composed?;
                (c.messages, Some(c.answer))
            }
        };
        // The first message's throughput slot is taken now and its `sending` mark written with
        // the rows, at the start of the slot's mark span (`pacing::MARK_SPAN`): one statement
        // for the rows and the marks of every job of the span. A template goes the long way
        // (its tier check comes before its slot).
        let first = match messages.first() {
            Some(body) if !is_template(body) => Some(self.until_mark(ctx, &wa, &payload.to).await?),
            _ => None,
        };
        // Batched with the other jobs' (`ledger::Writers`). A wait for a connection is not the
        // job's: the writer waits (up to a lease, which the lease keeper extends) rather than
        // spend an attempt, and past that the job is deferred.
        let prepare = ledger::Prepare {
            fence: job.fence.clone(),
            to: payload.to.clone(),
            from: wa.phone_number_id.clone(),
            composed: answer,
            messages,
            mark: first.as_ref().map(|_| ledger::Mark {
                fence: job.fence.clone(),
                seq: 0,
                resend_in_doubt: settings.delivery.on_unknown == OnUnknown::Retry,
            }),
        };
        let prepared = match ctx.ledger.prepare.write(prepare).await {
            Ok(Some(prepared)) => prepared,
            Ok(None) => return Err(lost()),
            Err(e) => {
                // Nothing was sent. If the statement landed all the same (its answer was lost
                // with the connection), the mark is taken back, as after a failed mark.
                if first.is_some() && !self.unmark(job, ctx, 0).await {
                    return Err(lost());
                }
                return Err(database_failed("recording the messages", &e, e.wait));
            }
        };
        let rows = prepared.messages;
        // The first message is `sending` by this attempt's hand: its request leaves at its
        // slot. Otherwise (sent already, in doubt, or a later attempt's own mark failed) the
        // slot is let go and the message takes the long way.
        let mut cleared = match first {
            Some((permit, paced)) if prepared.marked => Some(Cleared {
                permit,
                paced,
                marked: Marked::new(ctx, job, 0),
            }),
            Some((permit, _)) => {
                // Nothing is sent on it: the recipient's spacing stays as it was (a permit
                // dropped counts as a send, and would hold the job's next message back a pair
                // interval).
                permit.unused();
                None
            }
            None => None,
        };

        let pending = rows.iter().filter(|m| !m.status.accepted()).count();
        if pending > 0 {
            tracing::info!(
                job_id = %job.id,
                messages = rows.len(),
                pending,
                "Sending outbound for job {}",
                job.id
            );
        }
        // Only the last message's send hands anything to the completion.
        let mut delivered = Delivered::default();
        for message in &rows {
            let cleared = if message.seq == 0 {
                cleared.take()
            } else {
                None
            };
            delivered = self
                .deliver(job, ctx, &wa, message, rows.len(), cleared)
                .await?;
        }
        Ok(delivered)
    }

    /// Notices a reload or an ended cooldown; defers the job while the circuit is open.
    async fn admit(&self, ctx: &JobContext, wa: &WhatsappSettings) -> Result<(), JobError> {
        self.holds
            .refresh(&ctx.pool, &self.pacer, HOLDS_MAX_AGE)
            .await;
        let mut admitted = self.pacer.admit(&ctx.settings, wa);
        if admitted.as_ref().is_err_and(|d| d.code == "number_on_hold") {
            // A resume may be younger than our copy: confirm before deferring.
            self.holds.confirm(&ctx.pool, &self.pacer).await;
            admitted = self.pacer.admit(&ctx.settings, wa);
        }
        ctx.metrics
            .circuit_open
            .set(i64::from(self.pacer.circuit_open()));
        for id in ctx.settings.whatsapp.number_ids() {
            ctx.metrics
                .number_circuit_open
                .with_label_values(&[id])
                .set(i64::from(self.pacer.circuit_open_for(id)));
            ctx.metrics
                .number_on_hold
                .with_label_values(&[id])
                .set(i64::from(self.pacer.hold(id).is_some()));
        }
        let number = wa.phone_number_id.as_str();
        let admission = admitted.map_err(|d| deferred(ctx, number, d))?;
        if admission.closed_after_cooldown {
            tracing::info!("whatsapp.halt_cooldown has passed: sending resumes for the number");
        }
        if admission.closed_by_reload {
            tracing::info!("the configuration was reloaded: sending resumes for the number");
            match crate::queue::store::wake_circuit_deferred(&ctx.pool).await {
                Ok(n) if n > 0 => {
                    tracing::info!(jobs = n, "jobs deferred by the circuit are due again")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    error = %redact_sqlx(&e),
                    "making the jobs the circuit deferred due failed; they run after their delay"
                ),
            }
        }
        Ok(())
    }

    /// One message of the job: skipped if sent, refused if in doubt, else paced and sent.
    async fn deliver(
        &self,
        job: &Job,
        ctx: &JobContext,
        wa: &WhatsappSettings,
        message: &Message,
        total: usize,
        cleared: Option<Cleared>,
    ) -> Result<Delivered, JobError> {
        // The tier ticket is held until this send has ended (dropped on every way out).
        let (tier_ticket, permit, marked) = match cleared {
            // Marked with the rows (`attempt`): only the slot is left to wait for.
            Some(cleared) => {
                let (permit, marked) = self.await_slot(job, ctx, wa, message.seq, cleared).await?;
                (None, permit, marked)
            }
            None => {
                if let Some(decided) = self.decided(job, ctx, message).await {
                    return decided;
                }
                self.clear_to_send(job, ctx, wa, message).await?
            }
        };

        // The number's sliding window, as close to the request as it gets.
        self.pacer.release(wa).await;
        let seq = message.seq;
        let started = Instant::now();
        let callback = crate::whatsapp::statuses::callback_id(&job.id, seq);
        // From here the request may have left: an attempt cut off now leaves the message in
        // doubt, never sent twice.
        marked.disarm();
        let api = CloudApi::new(self.client(&ctx.settings));
        let result = api.send(wa, &message.to, &callback, &message.body).await;
        ctx.metrics
            .send_duration
            .observe(started.elapsed().as_secs_f64());
        ctx.metrics.send_latency.record(started.elapsed());

        match result {
            Ok(wamid) => {
                // The rows are the job's messages 0..total in order: every one before the last
                // is accepted by the time the last is sent.
                let last = usize::try_from(seq).is_ok_and(|s| s + 1 == total);
                permit.done(true);
                self.pacer.accepted(wa);
                ctx.metrics.messages_sent.inc();
                ctx.metrics
                    .number_sent
                    .with_label_values(&[wa.phone_number_id.as_str()])
                    .inc();
                let accepted = Accepted { seq, wamid };
                self.accepted(job, ctx, accepted, last, tier_ticket).await
            }
            Err(err) => {
                let number = wa.phone_number_id.as_str();
                ctx.metrics
                    .whatsapp_errors
                    .with_label_values(&[err.class.label()])
                    .inc();
                ctx.metrics
                    .number_errors
                    .with_label_values(&[number, err.class.label()])
                    .inc();
                let mut refused = self.refused(job, ctx, wa, seq, permit, err).await;
                if total > 1 && refused.code != "lost" {
                    refused.message =
                        format!("message {} of {total}: {}", seq + 1, refused.message);
                }
                Err(refused)
            }
        }
    }

    /// What an earlier attempt left decides this message, if it does: accepted (skipped),
    /// reported failed or in doubt (never sent again).
    async fn decided(
        &self,
        job: &Job,
        ctx: &JobContext,
        message: &Message,
    ) -> Option<Result<Delivered, JobError>> {
        let seq = message.seq;
        Some(match message.status {
            Status::Sent | Status::Delivered | Status::Read => Ok(Delivered::default()),
            Status::Failed if message.wamid.is_some() => {
                // Meta accepted it, then reported it failed (a status webhook): never resent.
                let code = message
                    .error_code
                    .clone()
                    .unwrap_or_else(|| "meta_failed".to_string());
                Err(JobError::fail(
                    code,
                    format!(
                        "message {} was accepted by Meta and later reported failed{}; it is not \
                         sent again",
                        seq + 1,
                        message
                            .error
                            .as_deref()
                            .map(|t| format!(": {t}"))
                            .unwrap_or_default()
                    ),
                ))
            }
            Status::Unknown => Err(JobError::fail(
                "delivery_unknown",
                format!(
                    "message {} is unknown: an earlier attempt may have delivered it, so it is \
                     not sent again (an operator can set its status to 'pending' to resend \
                     it, or 'sent')",
                    seq + 1
                ),
            )),
            Status::Sending if ctx.settings.delivery.on_unknown == OnUnknown::Fail => {
                // An earlier attempt was cut off mid-send (e.g. runner.job_timeout).
                let why = format!(
                    "message {} was being sent when an earlier attempt ended; Meta may or may not \
                     have accepted it, so it is not sent again",
                    seq + 1
                );
                match ledger::settle(
                    &ctx.pool,
                    &job.fence,
                    seq,
                    Status::Unknown,
                    "delivery_unknown",
                )
                .await
                {
                    Ok(true) => Err(JobError::unknown("delivery_unknown", why)),
                    Ok(false) => Err(lost()),
                    Err(e) => Err(database("marking the message unknown", &e)),
                }
            }
            Status::Sending | Status::Pending | Status::Failed => return None,
        })
    }

    /// Everything before the request: the tier limit (a template message), the pacing permit,
    /// `sending` committed (at the start of the slot's mark span), and the slot. Returns the
    /// tier ticket (held until the send has ended), the permit, and the mark's guard (disarmed
    /// when the request leaves).
    async fn clear_to_send(
        &self,
        job: &Job,
        ctx: &JobContext,
        wa: &WhatsappSettings,
        message: &Message,
    ) -> Result<(Option<numbers::TierTicket>, Permit, Marked), JobError> {
        let number = wa.phone_number_id.as_str();
        let seq = message.seq;
        let tier_ticket = if is_template(&message.body) {
            self.tier_check(ctx, wa, &message.to)
                .await
                .inspect_err(|_| {
                    ctx.metrics
                        .number_deferred
                        .with_label_values(&[number, "tier_limit"])
                        .inc();
                })?
        } else {
            None
        };
        let (permit, paced) = self.until_mark(ctx, wa, &message.to).await?;
        let mark = ledger::Mark {
            fence: job.fence.clone(),
            seq,
            resend_in_doubt: ctx.settings.delivery.on_unknown == OnUnknown::Retry,
        };
        match ctx.ledger.sending.write(mark).await {
            Ok(true) => {}
            Ok(false) => return Err(lost()),
            Err(e) => {
                // Nothing was sent: the request leaves only after this write. If the write
                // landed all the same (its answer was lost with the connection), the message is
                // put back to `pending`, or the next attempt would take it for a send in doubt
                // and fail the job without sending.
                if !self.unmark(job, ctx, seq).await {
                    return Err(lost());
                }
                return Err(database("marking the message sending", &e));
            }
        }
        let cleared = Cleared {
            permit,
            paced,
            marked: Marked::new(ctx, job, seq),
        };
        let (permit, marked) = self.await_slot(job, ctx, wa, seq, cleared).await?;
        Ok((tier_ticket, permit, marked))
    }

    /// Takes the number's next throughput slot for a send to `to` (or defers the job) and waits
    /// until the start of the slot's mark span: the marks of every send whose slot is in the
    /// same span are written together there (`pacing::MARK_SPAN`), one statement for them all.
    /// Returns the permit and when the wait for it began.
    async fn until_mark(
        &self,
        ctx: &JobContext,
        wa: &WhatsappSettings,
        to: &str,
    ) -> Result<(Permit, Instant), JobError> {
        let paced = Instant::now();
        let permit = self
            .pacer
            .reserve_slot(wa, to)
            .await
            .map_err(|d| deferred(ctx, wa.phone_number_id.as_str(), d))?;
        tokio::time::sleep_until(permit.mark_at()).await;
        Ok((permit, paced))
    }

    /// After the mark: waits for the permit's slot. A pause or a circuit that began after the
    /// mark defers the job, the message put back to `pending` (nothing was sent).
    async fn await_slot(
        &self,
        job: &Job,
        ctx: &JobContext,
        wa: &WhatsappSettings,
        seq: i32,
        Cleared {
            permit,
            paced,
            marked,
        }: Cleared,
    ) -> Result<(Permit, Marked), JobError> {
        let number = wa.phone_number_id.as_str();
        if let Err(d) = self.pacer.ready(&permit).await {
            // Nothing was sent: the recipient's spacing stays as it was.
            permit.unused();
            marked.disarm();
            if !self.unmark(job, ctx, seq).await {
                return Err(lost());
            }
            return Err(deferred(ctx, number, d));
        }
        ctx.metrics
            .number_paced_wait
            .with_label_values(&[number])
            .observe(paced.elapsed().as_secs_f64());
        Ok((permit, marked))
    }

    /// Puts a message marked `sending` back to `pending`: its request did not leave. False if
    /// the job was taken from us meanwhile.
    async fn unmark(&self, job: &Job, ctx: &JobContext, seq: i32) -> bool {
        persist(job, seq, "putting back a message that was not sent", || {
            ledger::unmark_sending(&ctx.pool, &job.fence, seq)
        })
        .await
    }

    /// Meta accepted message `seq`: the last one's wamid goes with the job's completion, any
    /// other's is stored now.
    async fn accepted(
        &self,
        job: &Job,
        ctx: &JobContext,
        Accepted { seq, wamid }: Accepted,
        last: bool,
        tier_ticket: Option<numbers::TierTicket>,
    ) -> Result<Delivered, JobError> {
        if last {
            // Every other message of the job is accepted: the wamid goes with the job's
            // completion, one statement for both (docs/delivery.md, "Durability").
            tracing::debug!(job_id = %job.id, seq, wamid, "message accepted");
            // So is its place in the tier count: this runner counts the recipient until a read
            // of the counts that began after the completion wrote the send.
            return Ok(Delivered {
                records: None,
                accepted: Some(Accepted { seq, wamid }),
                keep: tier_ticket.map(|ticket| Box::new(ticket) as Box<dyn std::any::Any + Send>),
            });
        }
        let stored = self.record_sent(job, ctx, seq, &wamid).await;
        drop(tier_ticket);
        stored.map(|()| Delivered::default())
    }

    /// Stores the wamid. Meta accepted the message, so this write is retried for as long as the
    /// attempt runs (a database restart, a failover, a read-only spell): giving up would fail
    /// the job with its message left `sending`, although it was delivered. If the database does
    /// not come back, `runner.job_timeout` (or a drain) ends the attempt; the message stays
    /// `sending` and the next attempt or the rescuer makes it `unknown`: never a second send.
    async fn record_sent(
        &self,
        job: &Job,
        ctx: &JobContext,
        seq: i32,
        wamid: &str,
    ) -> Result<(), JobError> {
        let what = format!("recording wamid {wamid} of an accepted message");
        let written = persist(job, seq, &what, || {
            ctx.ledger.sent.write(ledger::Sent {
                fence: job.fence.clone(),
                seq,
                wamid: wamid.to_string(),
            })
        })
        .await;
        if written {
            tracing::debug!(job_id = %job.id, seq, wamid, "message accepted");
            Ok(())
        } else {
            tracing::warn!(
                job_id = %job.id,
                seq,
                wamid,
                "Meta accepted the message but the job was taken from this runner meanwhile; the \
                 ledger keeps the message in doubt (not resent)"
            );
            Err(lost())
        }
    }

    /// A send that did not end in a wamid: settle the message and say what the job does next.
    async fn refused(
        &self,
        job: &Job,
        ctx: &JobContext,
        wa: &WhatsappSettings,
        seq: i32,
        permit: Permit,
        err: SendError,
    ) -> JobError {
        let settings = &ctx.settings;
        let SendError {
            class,
            code,
            mut message,
            retry_after,
        } = err;
        let (status, next) = match class {
            Class::Retry => {
                permit.done(false);
                (Status::Pending, Action::Retry { after: retry_after })
            }
            Class::SlowNumber => {
                permit.done(false);
                let delay = self.pacer.pause_number(wa, retry_after, &code);
                message.push_str(&format!(
                    "; the phone number is paused, this job runs again in {} (no attempt spent)",
                    humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
                ));
                tracing::warn!(job_id = %job.id, code = %code, "rate limited by Meta: pausing the phone number");
                self.publish(ctx, &job.fence.locked_by, false).await;
                (Status::Pending, Action::Defer { delay })
            }
            Class::SlowRecipient => {
                let backoff = permit.pair_limited();
                let after = retry_after.map_or(backoff, |r| r.max(backoff));
                message.push_str(&format!(
                    "; this recipient backs off {}",
                    humantime::format_duration(after)
                ));
                (Status::Pending, Action::Retry { after: Some(after) })
            }
            Class::PauseNumber => {
                // A quality signal, not a transient: held (every runner) until resumed by hand.
                permit.done(false);
                self.hold_number(ctx, wa, &code, &message).await;
                message.push_str(&format!(
                    "; phone number {} is paused until `outbound-runner numbers resume {}` \
                     (no attempt spent)",
                    wa.phone_number_id, wa.phone_number_id
                ));
                (
                    Status::Pending,
                    Action::Defer {
                        delay: pacing::HOLD_RECHECK,
                    },
                )
            }
            Class::Halt => {
                permit.done(false);
                let (delay, opened) = self.pacer.open_circuit(settings, wa, &message);
                ctx.metrics.circuit_open.set(1);
                ctx.metrics
                    .number_circuit_open
                    .with_label_values(&[wa.phone_number_id.as_str()])
                    .set(1);
                if opened {
                    tracing::error!(
                        code = %code,
                        phone_number_id = %wa.phone_number_id,
                        cooldown = %humantime::format_duration(settings.whatsapp.halt_cooldown),
                        "sending HALTED for the phone number: {message}; jobs stay queued without \
                         spending attempts until whatsapp.halt_cooldown passes or the \
                         configuration is reloaded"
                    );
                }
                self.publish(ctx, &job.fence.locked_by, false).await;
                (Status::Pending, Action::Defer { delay })
            }
            Class::Fail => {
                permit.done(false);
                (Status::Failed, Action::Fail)
            }
            Class::Unknown => {
                permit.done(false);
                let status = match settings.delivery.on_unknown {
                    OnUnknown::Fail => Status::Unknown,
                    OnUnknown::Retry => Status::Pending,
                };
                tracing::error!(
                    job_id = %job.id,
                    seq,
                    code = %code,
                    "the outcome of a send is unknown: {message}"
                );
                (status, Action::Unknown)
            }
        };
        // Like the wamid, the outcome must land before the job moves on: a job failed with its
        // message still `sending` would claim a send was in flight.
        let settled = persist(job, seq, "recording the outcome of a send", || {
            ledger::settle(&ctx.pool, &job.fence, seq, status, &code)
        })
        .await;
        if !settled {
            return lost();
        }
        JobError::new(next, code, message)
    }
}

impl LiveHandler {
    /// A template message (business-initiated) to `to`: held while the number's (or its
    /// business's) tier limit is reached and `to` is not counted yet (docs/numbers.md).
    async fn tier_check(
        &self,
        ctx: &JobContext,
        wa: &WhatsappSettings,
        to: &str,
    ) -> Result<Option<numbers::TierTicket>, JobError> {
        let verdict = match self.tiers.check(&ctx.pool, &ctx.settings, wa, to).await {
            Ok(v) => v,
            Err(e) => {
                let wait = crate::db::wait::is_wait(&e);
                return Err(database_failed("checking the tier limit", &e, wait));
            }
        };
        let count = match verdict {
            TierVerdict::Send(ticket) => return Ok(ticket),
            TierVerdict::Held(count) => count,
        };
        let now = chrono::Utc::now();
        let wait = count
            .drops_at
            .and_then(|at| (at - now).to_std().ok())
            .unwrap_or(numbers::TIER_RECHECK);
        let delay = wait.clamp(Duration::from_secs(1), numbers::TIER_RECHECK);
        let whose = if wa.business_id.is_empty() {
            format!("on number {}", wa.phone_number_id)
        } else {
            format!(
                "by business {} (number {})",
                wa.business_id, wa.phone_number_id
            )
        };
        let until = count.drops_at.map_or_else(
            || "the count drops".to_string(),
            |at| at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
        );
        Err(JobError::defer(
            delay,
            "tier_limit",
            format!(
                "tier_limit: {} unique recipients in 24 h reached {whose}; held until {until} \
                 (a template message to a new recipient; no attempt spent, looks again in {})",
                wa.tier_limit,
                humantime::format_duration(Duration::from_secs(delay.as_secs()))
            ),
        ))
    }

    /// Writes this runner's circuits and pauses to `"OutboundNumberCircuit"` for the `numbers`
    /// command: when they changed, or (`refresh`) to keep open ones fresh.
    async fn publish(&self, ctx: &JobContext, runner: &str, refresh: bool) {
        let stopped = self.pacer.stopped();
        let now: Vec<(String, &'static str)> = stopped.iter().map(|s| (s.0.clone(), s.1)).collect();
        {
            let last = self.published.lock().unwrap_or_else(|p| p.into_inner());
            if *last == now && (!refresh || now.is_empty()) {
                return;
            }
        }
        match numbers::publish_circuits(&ctx.pool, runner, &stopped).await {
            Ok(()) => *self.published.lock().unwrap_or_else(|p| p.into_inner()) = now,
            Err(e) => tracing::debug!(
                error = %redact_sqlx(&e),
                "writing this runner's circuits for `numbers` failed; trying again shortly"
            ),
        }
    }

    /// The upkeep: publish the circuits, refresh the tier counts and their gauges.
    async fn upkeep(&self, ctx: &JobContext, runner: &str) {
        self.publish(ctx, runner, true).await;
        let wa = &ctx.settings.whatsapp;
        let Ok(tiers) = self.tiers.get(&ctx.pool, wa, HOLDS_MAX_AGE).await else {
            return;
        };
        let m = &ctx.metrics;
        let mut businesses = Vec::new();
        for id in wa.number_ids() {
            let Some(n) = wa.number(Some(id)) else {
                continue;
            };
            let group = n.tier_group();
            m.number_tier_recipients
                .with_label_values(&[id])
                .set(tiers.number(id));
            m.number_tier_counted
                .with_label_values(&[id])
                .set(tiers.group(&group).recipients);
            m.number_tier_limit
                .with_label_values(&[id])
                .set(i64::from(n.tier_limit));
            if !n.business_id.is_empty() && !businesses.contains(&n.business_id) {
                m.business_tier_recipients
                    .with_label_values(&[n.business_id.as_str()])
                    .set(tiers.group(&group).recipients);
                businesses.push(n.business_id);
            }
            m.number_circuit_open
                .with_label_values(&[id])
                .set(i64::from(self.pacer.circuit_open_for(id)));
        }
    }
}

impl LiveHandler {
    /// A [`Class::PauseNumber`] answer: hold the number (every runner) until resumed by hand.
    async fn hold_number(
        &self,
        ctx: &JobContext,
        wa: &WhatsappSettings,
        code: &str,
        message: &str,
    ) {
        let number = wa.phone_number_id.as_str();
        let name = codes::SPAM_HOLD_NAME;
        let reason = format!("Meta answered {code} ({name}): {message}");
        let reason: String = reason.chars().take(500).collect();
        let by = format!("runner ({code})");
        self.pacer.hold_now(
            number,
            pacing::Hold {
                until: None,
                reason: reason.clone(),
                by: by.clone(),
            },
        );
        if let Err(e) = numbers::pause(&ctx.pool, number, None, &reason, &by).await {
            tracing::warn!(
                error = %redact_sqlx(&e),
                phone_number_id = %number,
                "recording the hold of the number failed; this runner holds it all the same"
            );
        }
        tracing::error!(
            phone_number_id = %number,
            "phone number PAUSED after a {code} ({name}) answer; its jobs wait without spending \
             attempts until `outbound-runner numbers resume {number}`"
        );
    }
}

/// The number a job sends from: its `from`, or the default number.
fn sending_number(settings: &Settings, payload: &Payload) -> Result<WhatsappSettings, JobError> {
    let wa = &settings.whatsapp;
    wa.number(payload.from.as_deref()).ok_or_else(|| match &payload.from {
        Some(from) => JobError::fail(
            "unknown_number",
            format!(
                "`from` names phone number id {from}, which is not configured here (configured: \
                 {}); add it as a [[whatsapp.numbers]] table or fix the job's `from`",
                wa.number_ids().join(", ")
            ),
        ),
        None => JobError::fail(
            "unknown_number",
            "the job has no `from` and no default number is configured (whatsapp.phone_number_id)",
        ),
    })
}

impl JobHandler for LiveHandler {
    fn handle<'a>(
        &'a self,
        job: &'a Job,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<Delivered, JobError>> {
        Box::pin(self.attempt(job, ctx))
    }

    fn maintain<'a>(&'a self, ctx: &'a JobContext, runner: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.upkeep(ctx, runner))
    }

    fn room(&self, settings: &Settings) -> pacing::Room {
        self.pacer
            .room(&settings.whatsapp, settings.runner.batch as usize)
    }

    fn claimed(&self, jobs: usize) {
        self.pacer.reserve(jobs);
    }
}

fn timeouts(s: &Settings) -> (Duration, Duration) {
    (s.whatsapp.timeout, s.orchestrator.timeout)
}

/// One client for Meta and the orchestrator (rustls, no redirects). The connect timeout is well
/// under the request timeouts, so a slow connect is reported as a connect failure (nothing
/// sent, safe to retry), not as a timeout after the request was written (in doubt).
fn build_client(
    (whatsapp, orchestrator): (Duration, Duration),
) -> reqwest::Result<reqwest::Client> {
    let connect =
        (whatsapp.min(orchestrator) / 3).clamp(Duration::from_millis(50), Duration::from_secs(10));
    reqwest::Client::builder()
        .user_agent(concat!("outbound-runner/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect)
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
}

/// A fenced ledger write after a request left: retried (100 ms doubling to 2 s) until the
/// database answers, for as long as the attempt runs. Returns whether the fence held.
async fn persist<F, Fut, E>(job: &Job, seq: i32, what: &str, write: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, E>>,
    E: std::fmt::Display,
{
    let mut failures = 0u32;
    let backoff = crate::db::retry::Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_secs(2),
        attempts: None,
    };
    let written = crate::db::retry::with_backoff(
        backoff,
        |n, e: &E| {
            failures = n;
            if n == 1 || n % 10 == 0 {
                tracing::warn!(
                    job_id = %job.id,
                    seq,
                    failures = n,
                    error = %redact_sqlx(e),
                    "{what} failed; retrying until the database answers (runner.job_timeout bounds the attempt)"
                );
            }
        },
        write,
    )
    .await;
    let Ok(held) = written else {
        unreachable!("retried without a limit")
    };
    if failures > 0 {
        tracing::info!(
            job_id = %job.id,
            seq,
            failures,
            "{what}: written after the database came back"
        );
    }
    held
}

/// A job the pacer deferred (its number paused, held, halted or paced), counted for `number`.
/// A message marked `sending` (`marked`), its throughput slot (`permit`) and when the wait for it
/// began (`paced`): all its request waits for is the slot.
struct Cleared {
    permit: Permit,
    paced: Instant,
    marked: Marked,
}

/// A message marked `sending` whose request has not left yet. An attempt cut off in between (its
/// future dropped: `runner.job_timeout`, an abort) puts the message back to `pending` from a task
/// of its own, so the next attempt sends it rather than take it for a send in doubt. The write is
/// fenced: if the job was already requeued (the put-back raced the attempt's own requeue), the
/// message stays `sending` and the next attempt treats it as in doubt (never a second send).
struct Marked(Option<(crate::db::Pool, crate::queue::Fence, i32)>);

impl Marked {
    fn new(ctx: &JobContext, job: &Job, seq: i32) -> Self {
        Marked(Some((ctx.pool.clone(), job.fence.clone(), seq)))
    }

    /// The request leaves (or the caller puts the message back itself).
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Marked {
    fn drop(&mut self) {
        let Some((pool, fence, seq)) = self.0.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = ledger::unmark_sending(&pool, &fence, seq).await {
                tracing::warn!(
                    job_id = %fence.id,
                    seq,
                    error = %redact_sqlx(&e),
                    "putting back a message whose attempt ended before its request left failed; \
                     the next attempt treats it as in doubt"
                );
            }
        });
    }
}

/// A template message: its tier check comes before its throughput slot.
fn is_template(body: &serde_json::Value) -> bool {
    body.get("type").and_then(|t| t.as_str()) == Some("template")
}

fn deferred(ctx: &JobContext, number: &str, d: pacing::Deferral) -> JobError {
    ctx.metrics
        .number_deferred
        .with_label_values(&[number, d.code])
        .inc();
    d.into_job_error()
}

fn lost() -> JobError {
    JobError::retry(
        "lost",
        "the job was taken from this runner, or an operator asked it to stop (jobs cancel)",
    )
}

/// A failed statement of the job's own: a wait for a connection (`wait`) defers the job (not
/// its fault, no attempt spent), anything else is retried.
fn database_failed(what: &str, e: &dyn std::fmt::Display, wait: bool) -> JobError {
    if wait {
        JobError::defer(
            Duration::from_secs(1),
            "database_busy",
            format!("{what}: no database connection: {}", redact_sqlx(e)),
        )
    } else {
        database(what, e)
    }
}

fn database(what: &str, e: &dyn std::fmt::Display) -> JobError {
    JobError::retry("database", format!("{what}: {}", redact_sqlx(e)))
}
