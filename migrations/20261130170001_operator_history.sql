-- What operators did to a job (`outbound-runner jobs retry|cancel|settle`, the admin API): one
-- JSON object per action, oldest first, each with what the job was before it (status, attempts,
-- "maxAttempts", "lastError", "lastErrorCode", "completedAt"). A retry clears "lastError"; the
-- error stays readable here. The runner never writes this column.
-- (A column with a constant default is added without rewriting the table.)
ALTER TABLE "OutboundJob" ADD COLUMN history jsonb NOT NULL DEFAULT '[]';

-- An operator asked this running job to stop (`jobs cancel`). Its runner sends nothing more (the
-- ledger refuses to mark another message 'sending'; a send already under way finishes), and
-- the attempt, unless it ends 'done', ends 'cancelled' instead of being retried or failed.
-- Cleared by a retry. Never part of the fence: the claim, lease and attempts stay the runner's.
ALTER TABLE "OutboundJob" ADD COLUMN "cancelRequestedAt" timestamptz;
