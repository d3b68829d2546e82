//! Sandbox delivery: nothing leaves the machine. Each message is logged and recorded in
//! `"OutboundMessage"` as `sent` with a fake wamid (`wamid.sandbox.<job>.<seq>`), so the whole
//! pipeline (claims, ledger, metrics, the user's job-runner guide's SQL, see docs/operations.md "Verify") can be exercised without Meta.
//!
//! The records are written by the statement that marks the job `done` (one statement for a
//! whole batch of completions), so a sandbox job costs no round trip of its own: the sandbox
//! measures the queue, not a fake network. The ledger writes that half of the statement
//! ([`super::ledger::SANDBOX_SENT_CTE`]), the store the other (docs/queue.md "Code layout").

use super::payload::{Content, Payload};
use super::{BoxFuture, Delivered, JobContext, JobHandler};
use crate::queue::{Job, JobError};

#[derive(Debug, Default, Clone)]
pub struct SandboxHandler;

impl JobHandler for SandboxHandler {
    fn handle<'a>(
        &'a self,
        job: &'a Job,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<Delivered, JobError>> {
        Box::pin(async move {
            let payload = Payload::parse(&job.payload)?;
            let messages = match (&job.composed, payload.content) {
                (_, Content::Messages(m)) => m,
                (Some(composed), Content::Input(_)) => {
                    super::payload::parse_messages(composed.get("messages").unwrap_or(composed))?
                }
                (None, Content::Input(_)) => {
                    return Err(JobError::fail(
                        "no_orchestrator",
                        "payload has `input` but sandbox delivery does not call the orchestrator; \
                         put the reply in `message`",
                    ));
                }
            };
            tracing::info!(
                job_id = %job.id,
                messages = messages.len(),
                "Sending outbound for job {} (sandbox: nothing leaves the machine)",
                job.id
            );
            ctx.metrics.messages_sent.inc_by(messages.len() as u64);
            Ok(Delivered::records(&payload.to, messages))
        })
    }
}
