-- The web console's reads (docs/console.md), each served by an index on a table of millions:
--
-- * the overview's counts by status other than `done`, and the jobs list filtered by such a
--   status, newest first: a partial index that leaves the `done` rows (nearly all of them)
--   out, so it stays small, and a finished job leaves it;
-- * the sends in doubt that no status has settled yet (`unknown`), counted on every refresh.
--
-- No column type is named: the indexes follow whatever type "OutboundJob".id has.
CREATE INDEX IF NOT EXISTS "OutboundJob_console_status_idx" ON "OutboundJob" (status, id)
    WHERE status <> 'done';
CREATE INDEX IF NOT EXISTS "OutboundMessage_unknown_idx" ON "OutboundMessage" ("jobId")
    WHERE status = 'unknown';
