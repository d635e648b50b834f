-- Jobs are leased: the worker that runs a job renews `lease_until` (unix seconds) while it trains;
-- a job whose lease ran out is claimed again and resumes from its last checkpoint elsewhere.
-- `device`: what the job asks for (any, cpu, cuda); workers claim only what they can run.
ALTER TABLE jobs ADD COLUMN worker TEXT;
ALTER TABLE jobs ADD COLUMN lease_until INTEGER;
ALTER TABLE jobs ADD COLUMN device TEXT NOT NULL DEFAULT 'any';
