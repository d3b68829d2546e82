-- The web console's reads (docs/console.md), each served by an index on a table of millions:
--
-- * the overview's counts of failed and cancelled jobs, and the jobs list filtered by those
--   statuses, newest first: a partial index holding only them (queued and running rows are
--   counted from the queue's own partial indexes, done ones over 24 h from "completedAt"'s).
--   Only these two statuses: an index led by status that also held running rows would tempt
--   the planner, on statistics taken while nothing ran, away from the primary key in the
--   runner's completion (tests/integration/queue.rs checks that plan);
-- * the sends in doubt that no status has settled yet (`unknown`), counted on every refresh.
--
-- No column type is named: the indexes follow whatever type "OutboundJob".id has.
CREATE INDEX IF NOT EXISTS "OutboundJob_console_ended_idx" ON "OutboundJob" (status, id)
    WHERE status IN ('failed', 'cancelled');
CREATE INDEX IF NOT EXISTS "OutboundMessage_unknown_idx" ON "OutboundMessage" ("jobId")
    WHERE status = 'unknown';
