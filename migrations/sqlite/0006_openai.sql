-- OpenAI's job fields. `inferred`: what the service chose where the request left the choice open
-- (a request without a task, or with "auto" hyperparameters), JSON, NULL when nothing was.
-- `result_file`: the id of the results file (a CSV of the metrics reports) written when the job
-- succeeded.
ALTER TABLE jobs ADD COLUMN inferred TEXT;
ALTER TABLE jobs ADD COLUMN result_file TEXT;
