-- The rescuer's index, keyed on what only a running row has: a lease. Rows leave it when their
-- lease is cleared (every move out of 'running' sets "leaseUntil" to NULL).
--
-- The first version was partial on status = 'running'. Then every statement that names a running
-- job by id (the batched completion, the fenced writes) could also be answered from it, and after
-- an ANALYZE that saw no running rows the planner did just that: it estimated the index at one
-- row and scanned all of this runner's running jobs once per job of the batch. Nothing but the
-- rescuer's "leaseUntil" < now() implies "leaseUntil" IS NOT NULL, so those statements now use
-- the primary key whatever the statistics say.
DROP INDEX "OutboundJob_lease_idx";
CREATE INDEX "OutboundJob_lease_idx" ON "OutboundJob" ("leaseUntil")
    WHERE "leaseUntil" IS NOT NULL;
