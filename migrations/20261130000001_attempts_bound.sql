-- A bound on attempts below the integer's maximum. A row written with attempts = 2147483647
-- made every claim statement fail ("integer out of range" at attempts + 1) for every runner on
-- the database; the claim now adds to LEAST(attempts, 2147483645), and the schema refuses the
-- maximum itself. NOT VALID: existing rows are not checked (no table scan, no failed migration
-- on a table that already holds such a row); new and updated rows are.
ALTER TABLE "OutboundJob"
    ADD CONSTRAINT "OutboundJob_attempts_bound" CHECK (attempts < 2147483647) NOT VALID;
