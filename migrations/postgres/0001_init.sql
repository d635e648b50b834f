-- fpt's state, PostgreSQL dialect of migrations/sqlite/0001_init.sql (same tables, same columns).
-- `rowid` is SQLite's implicit insertion order, made explicit here so that both dialects share
-- every query that pages by it.
CREATE TABLE files (
    rowid       BIGSERIAL UNIQUE,
    id          TEXT PRIMARY KEY,
    filename    TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    format      TEXT NOT NULL,
    samples     BIGINT,
    created_at  BIGINT NOT NULL,
    path        TEXT NOT NULL,
    deleted     BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE jobs (
    rowid            BIGSERIAL UNIQUE,
    id               TEXT PRIMARY KEY,
    model            TEXT NOT NULL,
    task             TEXT NOT NULL,
    status           TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    fine_tuned_model TEXT,
    hyperparameters  TEXT NOT NULL,
    method           TEXT NOT NULL,
    training_file    TEXT,
    validation_file  TEXT,
    seed             BIGINT NOT NULL,
    suffix           TEXT,
    trained_steps    BIGINT NOT NULL DEFAULT 0,
    result           TEXT,
    error            TEXT,
    metadata         TEXT,
    desired          TEXT NOT NULL DEFAULT 'run'
);
CREATE INDEX jobs_status ON jobs(status, created_at);

CREATE TABLE events (
    seq         BIGSERIAL PRIMARY KEY,
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    created_at  BIGINT NOT NULL,
    level       TEXT NOT NULL,
    type        TEXT NOT NULL,
    message     TEXT NOT NULL,
    data        TEXT,
    step        BIGINT
);
CREATE INDEX events_job ON events(job_id, seq);

CREATE TABLE checkpoints (
    id          TEXT PRIMARY KEY,
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    step_number BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    metrics     TEXT,
    model_id    TEXT NOT NULL,
    path        TEXT NOT NULL,
    UNIQUE (job_id, step_number)
);

CREATE TABLE models (
    rowid       BIGSERIAL UNIQUE,
    id          TEXT PRIMARY KEY,
    job_id      TEXT NOT NULL,
    base_model  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    path        TEXT NOT NULL,
    checkpoint_step BIGINT,
    deleted     BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE idempotency (
    key         TEXT NOT NULL,
    route       TEXT NOT NULL,
    status      BIGINT NOT NULL,
    body        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (key, route)
);
