-- Tenancy: every file, job (and with it its events and checkpoints) and model belongs to a
-- project; what was stored before moves to the default project, which a server without project
-- keys keeps using. Idempotency keys are scoped by the API (the project is part of the stored key).
CREATE TABLE projects (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    archived_at         BIGINT,
    -- Quotas; NULL takes the server's default (its flags), 0 is no limit.
    max_running_jobs    BIGINT,
    max_queued_jobs     BIGINT,
    max_storage_bytes   BIGINT,
    requests_per_second DOUBLE PRECISION
);
INSERT INTO projects (id, name, created_at) VALUES ('proj_default', 'Default project', 0);

-- A project's API keys: only a SHA-256 of the secret is kept (the secret is shown once); a key
-- is refused as soon as `revoked_at` is set, on every node, because every request looks it up.
-- A key may have quotas of its own within its project's (NULL: none but the project's; the
-- request rate falls back to the server's `--key-rps`).
CREATE TABLE api_keys (
    id                  TEXT PRIMARY KEY,
    project_id          TEXT NOT NULL REFERENCES projects(id),
    name                TEXT NOT NULL,
    secret_sha256       TEXT NOT NULL UNIQUE,
    redacted_value      TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    revoked_at          BIGINT,
    max_running_jobs    BIGINT,
    max_queued_jobs     BIGINT,
    max_storage_bytes   BIGINT,
    requests_per_second DOUBLE PRECISION
);
CREATE INDEX api_keys_project ON api_keys(project_id, created_at);

ALTER TABLE files ADD COLUMN project_id TEXT NOT NULL DEFAULT 'proj_default';
ALTER TABLE jobs ADD COLUMN project_id TEXT NOT NULL DEFAULT 'proj_default';
ALTER TABLE models ADD COLUMN project_id TEXT NOT NULL DEFAULT 'proj_default';
-- The project key that made a job or a file (NULL: a configured --api-key, or an open API), for
-- the key's own quotas.
ALTER TABLE jobs ADD COLUMN api_key_id TEXT;
ALTER TABLE files ADD COLUMN api_key_id TEXT;
CREATE INDEX files_project ON files(project_id, deleted);
CREATE INDEX jobs_project ON jobs(project_id, status);
CREATE INDEX models_project ON models(project_id, deleted);
CREATE INDEX jobs_api_key ON jobs(api_key_id, status);
