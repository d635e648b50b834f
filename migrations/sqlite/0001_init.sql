-- fpt's state: files, fine-tuning jobs, their events and checkpoints, fine-tuned models,
-- idempotency keys. Big blobs (datasets, adapters) live on disk beside the database.
CREATE TABLE files (
    id          TEXT PRIMARY KEY,
    filename    TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    format      TEXT NOT NULL,
    samples     INTEGER,
    created_at  INTEGER NOT NULL,
    path        TEXT NOT NULL,
    deleted     INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    model            TEXT NOT NULL,
    task             TEXT NOT NULL,
    status           TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    fine_tuned_model TEXT,
    hyperparameters  TEXT NOT NULL,
    method           TEXT NOT NULL,
    training_file    TEXT,
    validation_file  TEXT,
    seed             INTEGER NOT NULL,
    suffix           TEXT,
    trained_steps    INTEGER NOT NULL DEFAULT 0,
    result           TEXT,
    error            TEXT,
    metadata         TEXT,
    -- What a client last asked of a running job: run, pause, cancel.
    desired          TEXT NOT NULL DEFAULT 'run'
);
CREATE INDEX jobs_status ON jobs(status, created_at);

CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    created_at  INTEGER NOT NULL,
    level       TEXT NOT NULL,
    type        TEXT NOT NULL,
    message     TEXT NOT NULL,
    data        TEXT,
    step        INTEGER
);
CREATE INDEX events_job ON events(job_id, seq);

CREATE TABLE checkpoints (
    id          TEXT PRIMARY KEY,
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    step_number INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    metrics     TEXT,
    model_id    TEXT NOT NULL,
    path        TEXT NOT NULL,
    UNIQUE (job_id, step_number)
);

CREATE TABLE models (
    id          TEXT PRIMARY KEY,
    job_id      TEXT NOT NULL,
    base_model  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    path        TEXT NOT NULL,
    -- Set for a checkpoint's model.
    checkpoint_step INTEGER,
    deleted     INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE idempotency (
    key         TEXT NOT NULL,
    route       TEXT NOT NULL,
    status      INTEGER NOT NULL,
    body        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (key, route)
);
