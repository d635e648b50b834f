-- Webhooks: the outbox of events (a job or a batch that ended) for the configured endpoints, one
-- row per event and endpoint, delivered with retries by every API node under short leases. A job
-- or batch is `notified` once its event rows are written, in the same transaction; the jobs
-- stored before webhooks existed count as notified.
ALTER TABLE jobs ADD COLUMN notified INTEGER NOT NULL DEFAULT 1;
ALTER TABLE batches ADD COLUMN notified INTEGER NOT NULL DEFAULT 1;
CREATE INDEX jobs_unnotified ON jobs(notified) WHERE notified = 0;
CREATE INDEX batches_unnotified ON batches(notified) WHERE notified = 0;

CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL,
    url             TEXT NOT NULL,
    payload         TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    delivered_at    INTEGER,
    -- Set once the last attempt failed: the delivery leaves the outbox's index.
    given_up_at     INTEGER,
    last_error      TEXT,
    lease_until     INTEGER
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_attempt_at) WHERE delivered_at IS NULL AND given_up_at IS NULL;
