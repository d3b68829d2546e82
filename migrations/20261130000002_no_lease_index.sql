-- Running rows without a lease ("leaseUntil" NULL). Every claim sets a lease, so this index is
-- normally empty; a row written by hand as 'running' with no lease would otherwise never be
-- rescued (the lease index only holds rows that have one). It keeps the rescuer's look for such
-- rows off a full table scan.
CREATE INDEX "OutboundJob_running_no_lease_idx" ON "OutboundJob" (id)
    WHERE status = 'running' AND "leaseUntil" IS NULL;
