-- `attempts`: claims of a job since it last ran to a stop its worker chose (finished, paused,
-- handed back at shutdown); a job whose workers keep dying under it fails after a few.
-- `request_hash`: what an Idempotency-Key was first used for (a sha256 of the request), so the
-- same key with another request is refused; `status` 0 marks a key reserved by a request still
-- being answered.
ALTER TABLE jobs ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE idempotency ADD COLUMN request_hash TEXT;
