-- Tier tracking and each runner's circuits per sending number (docs/numbers.md).

-- The number a message was sent from (the job's `from`, else the default number), written when
-- the message row is created. NULL on rows older than this column: read as the default number.
ALTER TABLE "OutboundMessage" ADD COLUMN "phoneNumberId" text;
-- The last 24 hours already hold messages sent from other numbers: name them (bounded to the
-- rows Meta's rolling window still counts).
UPDATE "OutboundMessage" m SET "phoneNumberId" = j.payload->>'from'
FROM "OutboundJob" j
WHERE j.id = m."jobId" AND m."sentAt" > now() - interval '24 hours'
  AND j.payload->>'from' IS NOT NULL;

-- Meta's messaging limit counts unique recipients of business-initiated (template) messages
-- over a rolling 24 h. The count per number reads only this index (a row leaves the range 24 h
-- after it was sent)...
CREATE INDEX "OutboundMessage_template_sentAt_idx" ON "OutboundMessage" ("sentAt")
    INCLUDE ("phoneNumberId", "to")
    WHERE "sentAt" IS NOT NULL AND body->>'type' = 'template';
-- ...and "was this recipient already counted?" (asked only once a limit is reached) this one.
CREATE INDEX "OutboundMessage_template_to_idx" ON "OutboundMessage" ("to", "sentAt")
    INCLUDE ("phoneNumberId")
    WHERE "sentAt" IS NOT NULL AND body->>'type' = 'template';

-- A number's circuit (halt-class answer) and rate-limit pause (130429, ...) live in each runner's
-- memory; each runner keeps its view here so `outbound-runner numbers` can show it. A runner
-- writes its rows when they change and every few seconds while any is open, and deletes them
-- when they close; a row not refreshed for a minute (its runner is gone) is deleted by the next
-- runner that writes, and ignored by the command before that.
CREATE TABLE "OutboundNumberCircuit" (
    -- host:pid:random, the runner's "lockedBy".
    runner          text        NOT NULL,
    "phoneNumberId" text        NOT NULL,
    state           text        NOT NULL
                    CONSTRAINT "OutboundNumberCircuit_state_check"
                    CHECK (state IN ('circuit_open', 'rate_paused')),
    "until"         timestamptz NOT NULL,
    reason          text        NOT NULL,
    "updatedAt"     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (runner, "phoneNumberId")
);
