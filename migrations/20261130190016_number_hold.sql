-- Sending numbers on hold (`outbound-runner numbers pause`, or a 131048 answer from Meta): every
-- runner reads this table (at most a second old) and defers the number's jobs without spending
-- attempts. A row is a hold; `numbers resume` deletes it. "pausedUntil" NULL: until resumed.
CREATE TABLE "OutboundNumberHold" (
    "phoneNumberId" text        PRIMARY KEY,
    "pausedUntil"   timestamptz,
    reason          text        NOT NULL,
    "pausedBy"      text        NOT NULL,
    "pausedAt"      timestamptz NOT NULL DEFAULT now()
);
