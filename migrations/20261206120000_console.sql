-- The web console's reads (docs/console.md), each served by an index on a table of millions
-- (its pages list "newest first" by ("createdAt", id); these let a filter walk only its own rows,
-- already in that order):
--
-- * failed and cancelled jobs (the overview's counts, the list by status): a partial index of
--   those rows only. Queued and running rows are counted from the queue's own partial indexes.
--   Not an index of every status: one led by status that also held running rows would tempt the
--   planner, on statistics taken while nothing ran, away from the primary key in the runner's
--   completion (tests/integration/queue.rs checks that plan);
-- * the list by error code: only rows that have one;
-- * the list by requestId and by recipient (payload's "to"): the lookups of "what happened to
--   this request / this customer". These two are the console's cost on every insert (two more
--   index entries per job; docs/benchmarks.md, "The web console");
-- * the sends in doubt that no status has settled yet (`unknown`), counted on every refresh.
--
-- No column type is named: the indexes follow whatever type "OutboundJob".id has. `adopt` builds
-- the same indexes concurrently on an app's table (src/db/adopt.rs, INDEXES).
CREATE INDEX IF NOT EXISTS "OutboundJob_console_ended_idx" ON "OutboundJob" (status, "createdAt", id)
    WHERE status IN ('failed', 'cancelled');
CREATE INDEX IF NOT EXISTS "OutboundJob_console_code_idx" ON "OutboundJob" ("lastErrorCode", "createdAt", id)
    WHERE "lastErrorCode" IS NOT NULL;
CREATE INDEX IF NOT EXISTS "OutboundJob_console_requestId_idx" ON "OutboundJob" ("requestId", "createdAt", id)
    WHERE "requestId" IS NOT NULL;
CREATE INDEX IF NOT EXISTS "OutboundJob_console_to_idx" ON "OutboundJob" ((payload->>'to'), "createdAt", id);
CREATE INDEX IF NOT EXISTS "OutboundMessage_unknown_idx" ON "OutboundMessage" ("jobId")
    WHERE status = 'unknown';
