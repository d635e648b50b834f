-- The request that created a job, so that its worker's logs name it too.
ALTER TABLE jobs ADD COLUMN request_id TEXT;
