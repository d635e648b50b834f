-- A batch not answered within its 24 h completion window ends `expired` (OpenAI's status): the
-- lines answered by then are in its output file, the rest in its error file as `batch_expired`.
ALTER TABLE batches ADD COLUMN expired_at BIGINT;
