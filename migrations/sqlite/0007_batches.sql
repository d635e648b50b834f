-- Batches: bulk predictions from an input file of request lines (OpenAI's /v1/batches). A batch is
-- run by one API node at a time under a lease, like a job; each answered line is recorded with the
-- progress in one transaction, so a batch resumed after its node died answers every line exactly
-- once, and its output and error files are written from these rows at the end.
CREATE TABLE batches (
    id                TEXT PRIMARY KEY,
    project_id        TEXT NOT NULL,
    api_key_id        TEXT,
    input_file_id     TEXT NOT NULL,
    endpoint          TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status            TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    in_progress_at    INTEGER,
    finalizing_at     INTEGER,
    completed_at      INTEGER,
    failed_at         INTEGER,
    cancelling_at     INTEGER,
    cancelled_at      INTEGER,
    total             INTEGER NOT NULL,
    completed         INTEGER NOT NULL DEFAULT 0,
    failed            INTEGER NOT NULL DEFAULT 0,
    output_file_id    TEXT,
    error_file_id     TEXT,
    errors            TEXT,
    metadata          TEXT,
    worker            TEXT,
    lease_until       INTEGER
);
CREATE INDEX batches_status ON batches(status);

CREATE TABLE batch_lines (
    batch_id  TEXT NOT NULL,
    line      INTEGER NOT NULL,
    ok        INTEGER NOT NULL,
    answer    TEXT NOT NULL,
    PRIMARY KEY (batch_id, line)
);
