//! The service's state through sqlx: files, jobs, events, checkpoints, models, idempotency keys.
//! Two backends behind one type: SQLite (embedded, one node) and PostgreSQL (shared by API nodes and
//! workers on many machines). Every query lives here and is written once in the SQL both speak
//! (`$n` parameters, `ON CONFLICT`, `RETURNING`); the one difference, how a worker claims a job, is
//! spelled out in `claim_job`.
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor, FromRow};

mod batches;
mod projects;
mod webhooks;

pub use batches::{BatchEnd, BatchLine, BatchRow, Claim};
pub use projects::{ApiKeyRow, ProjectRow, Quotas, Usage, DEFAULT_PROJECT};
pub use webhooks::{Delivery, Ending, Subject};

use crate::job::status::JobError;
use crate::job::{DataFiles, Desired, DeviceKind, Inferred, JobStatus, Method, RunSummary, TrainSpec};

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A new prefixed id (`file-…`, `ftjob-…`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..24])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// A worker's hold on the job it runs: its id, and until when (unix seconds) the lease lasts.
#[derive(Clone, Debug)]
pub struct Lease {
    pub worker: String,
    pub seconds: i64,
}

#[derive(Debug, Clone, FromRow, Serialize, Deserialize)]
pub struct FileRow {
    pub id: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: i64,
    pub format: String,
    pub samples: Option<i64>,
    pub created_at: i64,
    pub path: String,
    pub project_id: String,
    /// The project key that uploaded it (None: a configured key, or an open API).
    pub api_key_id: Option<String>,
}

/// A fine-tuning job as the store keeps it: every column decoded into its type once, here.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    /// The project it belongs to, and the project key that made it (see migration 0005).
    pub project_id: String,
    pub api_key_id: Option<String>,
    /// The validated run; its files are uploaded files' ids.
    pub spec: TrainSpec<String>,
    pub status: JobStatus,
    /// What a client last asked of the job.
    pub desired: Desired,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub fine_tuned_model: Option<String>,
    pub suffix: Option<String>,
    pub trained_steps: i64,
    pub result: Option<RunSummary>,
    pub error: Option<JobError>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// The worker holding the job's lease, and until when (unix seconds).
    pub worker: Option<String>,
    pub lease_until: Option<i64>,
    /// The `x-request-id` of the request that created the job, carried into its worker's logs.
    pub request_id: Option<String>,
    /// Claims since the job last stopped where its worker chose to (see migration 0004).
    pub attempts: i64,
    /// What the service chose where the request left it open (see migration 0006).
    pub inferred: Inferred,
    /// The results file written when it succeeded (see migration 0006).
    pub result_file: Option<String>,
}

impl Job {
    /// A new job, queued.
    pub fn queued(
        project_id: &str,
        spec: TrainSpec<String>,
        suffix: Option<String>,
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
        request_id: Option<String>,
    ) -> Self {
        Self {
            id: new_id("ftjob"),
            project_id: project_id.to_string(),
            api_key_id: None,
            spec,
            status: JobStatus::Queued,
            desired: Desired::Run,
            created_at: now(),
            started_at: None,
            finished_at: None,
            fine_tuned_model: None,
            suffix,
            trained_steps: 0,
            result: None,
            error: None,
            metadata,
            worker: None,
            lease_until: None,
            request_id,
            attempts: 0,
            inferred: Inferred::default(),
            result_file: None,
        }
    }
}

/// A `jobs` row as stored: JSON and enum values as text.
#[derive(FromRow)]
struct JobRecord {
    id: String,
    model: String,
    task: String,
    status: String,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    fine_tuned_model: Option<String>,
    hyperparameters: String,
    method: String,
    training_file: Option<String>,
    validation_file: Option<String>,
    seed: i64,
    suffix: Option<String>,
    trained_steps: i64,
    result: Option<String>,
    error: Option<String>,
    metadata: Option<String>,
    desired: String,
    worker: Option<String>,
    lease_until: Option<i64>,
    device: String,
    request_id: Option<String>,
    attempts: i64,
    project_id: String,
    api_key_id: Option<String>,
    inferred: Option<String>,
    result_file: Option<String>,
}

/// A JSON column decoded, or an error naming the column.
fn column<T: serde::de::DeserializeOwned>(name: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).with_context(|| format!("column `{name}` does not decode"))
}

impl TryFrom<JobRecord> for Job {
    type Error = anyhow::Error;

    fn try_from(r: JobRecord) -> Result<Self> {
        let id = r.id.clone();
        let decode = || -> Result<Job> {
            let method: Method = column("method", &r.method)?;
            let spec = TrainSpec {
                model: r.model,
                task: column("task", &r.task)?,
                hyperparameters: column("hyperparameters", &r.hyperparameters)?,
                switches: method.fpt,
                // Seeds are stored as their i64 bit pattern (as they always were), so every u64 reads back.
                seed: r.seed as u64,
                files: DataFiles { train: r.training_file, valid: r.validation_file, test: None },
                device: DeviceKind::parse(&r.device).with_context(|| format!("column `device`: unknown device `{}`", r.device))?,
            };
            Ok(Job {
                id: r.id,
                project_id: r.project_id,
                api_key_id: r.api_key_id,
                spec,
                status: JobStatus::parse(&r.status)?,
                desired: Desired::parse(&r.desired)?,
                created_at: r.created_at,
                started_at: r.started_at,
                finished_at: r.finished_at,
                fine_tuned_model: r.fine_tuned_model,
                suffix: r.suffix,
                trained_steps: r.trained_steps,
                result: r.result.as_deref().map(|t| column("result", t)).transpose()?,
                error: r.error.as_deref().map(|t| column("error", t)).transpose()?,
                metadata: r.metadata.as_deref().map(|t| column("metadata", t)).transpose()?,
                worker: r.worker,
                lease_until: r.lease_until,
                request_id: r.request_id,
                attempts: r.attempts,
                inferred: r.inferred.as_deref().map(|t| column("inferred", t)).transpose()?.unwrap_or_default(),
                result_file: r.result_file,
            })
        };
        decode().with_context(|| format!("stored job `{id}` cannot be read"))
    }
}

fn decode_jobs(rows: Vec<JobRecord>) -> Result<Vec<Job>> {
    rows.into_iter().map(Job::try_from).collect()
}

#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub seq: i64,
    pub job_id: String,
    pub created_at: i64,
    pub level: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub message: String,
    pub data: Option<String>,
    pub step: Option<i64>,
}

impl NewEvent {
    /// An event the API writes on a client's behalf (a job cancelled before it ran).
    pub fn from_api(job_id: &str, message: String) -> Self {
        NewEvent { job_id: job_id.to_string(), level: "info", kind: "message", message, data: None, step: None, worker: None }
    }
}

/// An event before it is stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub job_id: String,
    pub level: &'static str,
    pub kind: &'static str,
    pub message: String,
    pub data: Option<serde_json::Value>,
    pub step: Option<i64>,
    /// The worker that reports it (None: the API, on a client's behalf); written only while that
    /// worker still holds the job.
    pub worker: Option<String>,
}

#[derive(Debug, Clone, FromRow)]
pub struct CheckpointRow {
    pub id: String,
    pub job_id: String,
    pub step_number: i64,
    pub created_at: i64,
    pub metrics: Option<String>,
    pub model_id: String,
    pub path: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct ModelRow {
    pub id: String,
    /// Its job's; the store sets it from the job.
    pub job_id: String,
    pub base_model: String,
    pub created_at: i64,
    pub path: String,
    pub checkpoint_step: Option<i64>,
}

impl FileRow {
    /// A file the service writes for a client (a job's results, a batch's output): its bytes go
    /// under [`crate::artifacts::file_key`].
    pub fn written(
        id: String,
        filename: String,
        purpose: &str,
        format: &str,
        lines: usize,
        bytes: usize,
        owner: (&str, Option<&str>),
    ) -> Self {
        FileRow {
            path: crate::artifacts::file_key(&id),
            id,
            filename,
            purpose: purpose.into(),
            bytes: bytes as i64,
            format: format.into(),
            samples: Some(lines as i64),
            created_at: now(),
            project_id: owner.0.to_string(),
            api_key_id: owner.1.map(str::to_string),
        }
    }
}

const FILE_COLUMNS: &str = "id, filename, purpose, bytes, format, samples, created_at, path, project_id, api_key_id";

/// A page of a list: `after` an id, at most `limit`.
pub struct Page<'a> {
    pub after: Option<&'a str>,
    pub limit: i64,
}

impl Store {
    /// Opens (creating) a SQLite database file and applies the migrations.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Self::connect(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// Connects to `sqlite://…` or `postgres://…` and applies that dialect's migrations.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            bail!("--database-url must start with sqlite:// or postgres://, got `{}`", redact(url));
        };
        let mut opts = AnyPoolOptions::new().acquire_timeout(std::time::Duration::from_secs(10));
        if backend == Backend::Sqlite {
            // WAL lets the SSE readers run beside the writers; the busy timeout covers the rest.
            opts = opts.max_connections(8).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON",
                    )
                    .await?;
                    Ok(())
                })
            });
        } else {
            opts = opts.max_connections(16);
        }
        let pool = opts.connect(url).await.with_context(|| format!("connecting to {}", redact(url)))?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await,
        }
        .with_context(|| format!("migrating {}", redact(url)))?;
        Ok(Self { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The database's clock in unix seconds, as SQL: leases are compared on one clock, whichever
    /// node's own runs ahead or behind.
    fn db_now(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "CAST(strftime('%s', 'now') AS INTEGER)",
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM now()) AS BIGINT)",
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    // ---- files

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn insert_file(&self, f: &FileRow) -> Result<()> {
        sqlx::query(
            // A file the service writes under a fixed id (a batch's output) may be written twice by
            // runners taking over from each other: the first row stays.
            "INSERT INTO files (id, filename, purpose, bytes, format, samples, created_at, path, project_id, api_key_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&f.id)
        .bind(&f.filename)
        .bind(&f.purpose)
        .bind(f.bytes)
        .bind(&f.format)
        .bind(f.samples)
        .bind(f.created_at)
        .bind(&f.path)
        .bind(&f.project_id)
        .bind(&f.api_key_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn file(&self, project: &str, id: &str) -> Result<Option<FileRow>> {
        Ok(sqlx::query_as(&format!("SELECT {FILE_COLUMNS} FROM files WHERE id = $1 AND project_id = $2 AND deleted = 0"))
            .bind(id)
            .bind(project)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// A project's files of `purpose` (any, when None), newest first unless `oldest_first`.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn files(&self, project: &str, purpose: Option<&str>, oldest_first: bool, page: &Page<'_>) -> Result<Vec<FileRow>> {
        let (past, order) = if oldest_first { (">", "ASC") } else { ("<", "DESC") };
        Ok(sqlx::query_as(&format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE deleted = 0 AND project_id = $3 AND ($4 IS NULL OR purpose = $4)
             AND ($1 IS NULL OR rowid {past} (SELECT rowid FROM files WHERE id = $1 AND project_id = $3)) ORDER BY rowid {order} LIMIT $2"
        ))
        .bind(page.after)
        .bind(page.limit)
        .bind(project)
        .bind(purpose)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Whether a file row exists for `id` (deleted or not): its bytes in the artifact store are no orphan.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn file_exists(&self, id: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM files WHERE id = $1").bind(id).fetch_one(&self.pool).await?;
        Ok(n > 0)
    }

    /// The jobs not yet ended that read the file: it cannot go while one of them may still load it.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn jobs_using_file(&self, file_id: &str) -> Result<Vec<String>> {
        let done = [JobStatus::Succeeded, JobStatus::Failed, JobStatus::Cancelled];
        Ok(sqlx::query_scalar(
            "SELECT id FROM jobs WHERE (training_file = $1 OR validation_file = $1) AND status NOT IN ($2, $3, $4) ORDER BY created_at LIMIT 10",
        )
        .bind(file_id)
        .bind(done[0].as_str())
        .bind(done[1].as_str())
        .bind(done[2].as_str())
        .fetch_all(&self.pool)
        .await?)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn delete_file(&self, id: &str) -> Result<bool> {
        Ok(sqlx::query("UPDATE files SET deleted = 1 WHERE id = $1 AND deleted = 0").bind(id).execute(&self.pool).await?.rows_affected()
            > 0)
    }

    // ---- jobs

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn insert_job(&self, j: &Job) -> Result<()> {
        let spec = &j.spec;
        sqlx::query(
            "INSERT INTO jobs (id, model, task, status, created_at, hyperparameters, method, training_file, validation_file, seed, suffix, metadata, device, desired, request_id, project_id, api_key_id, inferred, notified)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, 0)",
        )
        .bind(&j.id).bind(&spec.model).bind(serde_json::to_string(&spec.task)?).bind(j.status.as_str()).bind(j.created_at)
        .bind(serde_json::to_string(&spec.hyperparameters)?).bind(serde_json::to_string(&spec.method())?)
        .bind(&spec.files.train).bind(&spec.files.valid).bind(spec.seed as i64).bind(&j.suffix)
        .bind(j.metadata.as_ref().map(|m| serde_json::Value::Object(m.clone()).to_string())).bind(spec.device.as_str()).bind(j.desired.as_str())
        .bind(&j.request_id).bind(&j.project_id).bind(&j.api_key_id)
        .bind((!j.inferred.is_empty()).then(|| serde_json::to_string(&j.inferred)).transpose()?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn job(&self, id: &str) -> Result<Option<Job>> {
        let row: Option<JobRecord> = sqlx::query_as("SELECT * FROM jobs WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.map(Job::try_from).transpose()
    }

    /// A project's jobs, newest first, whose metadata holds every `(key, value)` of `metadata`.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn jobs(&self, project: &str, metadata: &[(String, String)], page: &Page<'_>) -> Result<Vec<Job>> {
        // Each pair is one bound condition: keys and values never become SQL text.
        let held = |i: usize| {
            let (k, v) = (2 * i + 4, 2 * i + 5);
            match self.backend {
                Backend::Sqlite => format!(" AND EXISTS (SELECT 1 FROM json_each(jobs.metadata) WHERE key = ${k} AND value = ${v})"),
                Backend::Postgres => format!(" AND (jobs.metadata::jsonb ->> ${k}::text) = ${v}::text"),
            }
        };
        let filters: String = (0..metadata.len()).map(held).collect();
        let sql = format!(
            "SELECT * FROM jobs WHERE project_id = $3 AND ($1 IS NULL OR rowid < (SELECT rowid FROM jobs WHERE id = $1 AND project_id = $3)){filters}
             ORDER BY rowid DESC LIMIT $2"
        );
        let mut query = sqlx::query_as(&sql).bind(page.after).bind(page.limit).bind(project);
        for (k, v) in metadata {
            query = query.bind(k).bind(v);
        }
        decode_jobs(query.fetch_all(&self.pool).await?)
    }

    /// Claims, in one statement, the oldest job this worker can run: a queued one, or a running one
    /// whose worker stopped renewing its lease (it resumes from its last checkpoint), of a project
    /// below its running-jobs quota (its own, else `max_running_per_project`; 0: none) and made by
    /// a key below its own (if it has one). A reclaimed
    /// job keeps what a client last asked of it (`desired`); a queued one starts afresh as `run`.
    /// SQLite has one writer at a time, so the statement is atomic there; PostgreSQL claims take a
    /// transaction-scoped lock first, so that two claims cannot both see a project below its quota,
    /// and lock the row they take (a cancel landing meanwhile is seen by the status re-checked).
    #[tracing::instrument(level = "debug", skip_all, fields(worker = %lease.worker))]
    pub async fn claim_job(&self, lease: &Lease, device: DeviceKind, max_running_per_project: i64) -> Result<Option<Job>> {
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => "FOR UPDATE OF q SKIP LOCKED",
        };
        let t = self.db_now();
        // Running jobs count against a quota while their lease holds: a dead worker's jobs must not
        // keep their project's queue (and their own reclaim) waiting for ever.
        let running = format!("r.status = $4 AND r.id <> q.id AND r.lease_until >= {t}");
        let sql = format!(
            "UPDATE jobs SET status = $4, worker = $1, lease_until = {t} + $2, started_at = COALESCE(started_at, {t}),
                 desired = CASE WHEN status = $4 OR desired = $8 THEN desired ELSE $6 END, attempts = attempts + 1
             WHERE id = (SELECT q.id FROM jobs q WHERE (q.status = $5 OR (q.status = $4 AND q.lease_until < {t}))
                         AND q.device IN ($7, $3)
                         AND (COALESCE((SELECT p.max_running_jobs FROM projects p WHERE p.id = q.project_id), $9) <= 0
                              OR (SELECT COUNT(*) FROM jobs r WHERE r.project_id = q.project_id AND {running})
                                 < COALESCE((SELECT p.max_running_jobs FROM projects p WHERE p.id = q.project_id), $9))
                         AND (COALESCE((SELECT k.max_running_jobs FROM api_keys k WHERE k.id = q.api_key_id), 0) <= 0
                              OR (SELECT COUNT(*) FROM jobs r WHERE r.api_key_id = q.api_key_id AND {running})
                                 < (SELECT k.max_running_jobs FROM api_keys k WHERE k.id = q.api_key_id))
                         ORDER BY q.created_at, q.rowid LIMIT 1 {lock})
                 AND (status = $5 OR (status = $4 AND lease_until < {t}))
             RETURNING *"
        );
        // A queued job starts as `run`, unless a cancel is pending (it was handed back or
        // requeued with one): the worker then stops it at once.
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            let _: i32 = sqlx::query_scalar("SELECT 1 FROM (SELECT pg_advisory_xact_lock(7165)) claim").fetch_one(&mut *tx).await?;
        }
        let row: Option<JobRecord> = sqlx::query_as(&sql)
            .bind(&lease.worker)
            .bind(lease.seconds)
            .bind(device.as_str())
            .bind(JobStatus::Running.as_str())
            .bind(JobStatus::Queued.as_str())
            .bind(Desired::Run.as_str())
            .bind(DeviceKind::Any.as_str())
            .bind(Desired::Cancel.as_str())
            .bind(max_running_per_project)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        let Some(row) = row else { return Ok(None) };
        let id = row.id.clone();
        match Job::try_from(row) {
            Ok(job) => Ok(Some(job)),
            Err(e) => {
                // Claimed but unreadable: it would be claimed again every lease period. It fails
                // here, with the cause, and the next claim goes on to the next job.
                let error = JobError { code: "unreadable_job".into(), message: format!("{e:#}"), param: None };
                self.finish_job(
                    &id,
                    &lease.worker,
                    &JobEnd { status: JobStatus::Failed, result: None, error: Some(&error), model: None, result_file: None },
                )
                .await?;
                Err(e)
            }
        }
    }

    /// Renews a lease; returns what a client asks of the job now, or None when this worker no
    /// longer holds it (it expired and another worker took the job over).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn renew_lease(&self, job_id: &str, lease: &Lease) -> Result<Option<Desired>> {
        let sql =
            format!("UPDATE jobs SET lease_until = {} + $1 WHERE id = $2 AND worker = $3 AND status = $4 RETURNING desired", self.db_now());
        let desired: Option<String> = sqlx::query_scalar(&sql)
            .bind(lease.seconds)
            .bind(job_id)
            .bind(&lease.worker)
            .bind(JobStatus::Running.as_str())
            .fetch_optional(&self.pool)
            .await?;
        desired.map(|d| Desired::parse(&d)).transpose().with_context(|| format!("stored job `{job_id}` cannot be read"))
    }

    /// A worker hands a running job back (`queued` to run again, or `paused`); a no-op when the
    /// worker lost the job to another one meanwhile. What a client asked meanwhile wins: a pending
    /// cancel ends the job `cancelled`, a pending pause leaves it `paused`. The stop was the
    /// worker's choice, so the job's attempts start again.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn release_job(&self, job_id: &str, worker: &str, status: JobStatus) -> Result<bool> {
        self.let_go(job_id, worker, status, true).await
    }

    /// Puts a running job back in the queue at once, if `worker` still holds it: its worker is
    /// known to be dead, so waiting out the lease would only delay the resume. A pending cancel or
    /// pause is carried out as the release carries it out; the attempt stays counted.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn requeue_orphan(&self, job_id: &str, worker: &str) -> Result<bool> {
        self.let_go(job_id, worker, JobStatus::Queued, false).await
    }

    /// The one place a running job leaves its worker for anything but an ending the worker records.
    async fn let_go(&self, job_id: &str, worker: &str, status: JobStatus, clear_attempts: bool) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE jobs SET status = CASE WHEN desired = $5 THEN $6 WHEN desired = $8 THEN $9 ELSE $1 END,
                 finished_at = CASE WHEN desired = $5 THEN $7 ELSE finished_at END,
                 worker = NULL, lease_until = NULL, attempts = CASE WHEN $10 THEN 0 ELSE attempts END
             WHERE id = $2 AND worker = $3 AND status = $4",
        )
        .bind(status.as_str())
        .bind(job_id)
        .bind(worker)
        .bind(JobStatus::Running.as_str())
        .bind(Desired::Cancel.as_str())
        .bind(JobStatus::Cancelled.as_str())
        .bind(now())
        .bind(Desired::Pause.as_str())
        .bind(JobStatus::Paused.as_str())
        .bind(clear_attempts)
        .execute(&self.pool)
        .await?
        .rows_affected()
            > 0)
    }

    /// Moves a job from one of `from` to `to`; false when it was in none of them.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn transition(&self, id: &str, from: &[JobStatus], to: JobStatus) -> Result<bool> {
        let placeholders = (5..5 + from.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "UPDATE jobs SET status = $1, finished_at = CASE WHEN $2 THEN $3 ELSE finished_at END WHERE id = $4 AND status IN ({placeholders})"
        );
        let mut q = sqlx::query(&sql).bind(to.as_str()).bind(to.is_terminal()).bind(now()).bind(id);
        for f in from {
            q = q.bind(f.as_str());
        }
        Ok(q.execute(&self.pool).await?.rows_affected() > 0)
    }

    /// Records what a client asks of a job. A cancel, once asked, stands: a pause that lands after
    /// it does not undo it.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn set_desired(&self, id: &str, desired: Desired) -> Result<()> {
        sqlx::query("UPDATE jobs SET desired = CASE WHEN desired = $3 THEN desired ELSE $1 END WHERE id = $2")
            .bind(desired.as_str())
            .bind(id)
            .bind(Desired::Cancel.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A job's progress, as `worker` (still holding it) reports it.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn set_progress(&self, id: &str, worker: &str, steps: i64) -> Result<()> {
        sqlx::query("UPDATE jobs SET trained_steps = $1 WHERE id = $2 AND worker = $3")
            .bind(steps)
            .bind(id)
            .bind(worker)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records how a worker's job ended; false (and nothing written) when the worker no longer holds it.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn finish_job(&self, id: &str, worker: &str, end: &JobEnd<'_>) -> Result<bool> {
        let result = end.result.map(serde_json::to_string).transpose()?;
        let error = end.error.map(serde_json::to_string).transpose()?;
        Ok(sqlx::query(
            "UPDATE jobs SET status = $1, finished_at = $2, result = COALESCE($3, result), error = $4,
                 fine_tuned_model = COALESCE($5, fine_tuned_model), result_file = COALESCE($9, result_file), worker = NULL, lease_until = NULL
             WHERE id = $6 AND worker = $7 AND status = $8",
        )
        .bind(end.status.as_str())
        .bind(now())
        .bind(result)
        .bind(error)
        .bind(end.model)
        .bind(id)
        .bind(worker)
        .bind(JobStatus::Running.as_str())
        .bind(end.result_file)
        .execute(&self.pool)
        .await?
        .rows_affected()
            > 0)
    }

    /// The running jobs and the workers holding them.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn running_jobs(&self) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as("SELECT id, worker FROM jobs WHERE status = $1 AND worker IS NOT NULL")
            .bind(JobStatus::Running.as_str())
            .fetch_all(&self.pool)
            .await?)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn count_status(&self, status: JobStatus) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = $1").bind(status.as_str()).fetch_one(&self.pool).await?)
    }

    // ---- events

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn insert_events(&self, events: &[NewEvent]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for e in events {
            // A worker's events count only while it holds the job: one that lost its lease to
            // another worker must not add steps the new one will write again.
            sqlx::query(
                "INSERT INTO events (job_id, created_at, level, type, message, data, step)
                 SELECT $1, $2, $3, $4, $5, $6, $7 WHERE $8 IS NULL OR EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND worker = $8)",
            )
            .bind(&e.job_id)
            .bind(now())
            .bind(e.level)
            .bind(e.kind)
            .bind(&e.message)
            .bind(e.data.as_ref().map(|d| d.to_string()))
            .bind(e.step)
            .bind(&e.worker)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes the events of jobs that ended before `before` (unix seconds); the jobs, their results
    /// and models stay. Returns how many events went.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn prune_events(&self, before: i64) -> Result<u64> {
        let done = [JobStatus::Succeeded, JobStatus::Failed, JobStatus::Cancelled];
        Ok(sqlx::query("DELETE FROM events WHERE job_id IN (SELECT id FROM jobs WHERE status IN ($1, $2, $3) AND finished_at < $4)")
            .bind(done[0].as_str())
            .bind(done[1].as_str())
            .bind(done[2].as_str())
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// Events of a job after `after_seq`, oldest first.
    /// A job's events newest first, from before `before_seq` (the newest, when None): OpenAI's
    /// order for the list endpoint.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn events_newest_first(&self, job_id: &str, before_seq: Option<i64>, limit: i64) -> Result<Vec<EventRow>> {
        Ok(sqlx::query_as("SELECT * FROM events WHERE job_id = $1 AND ($2 IS NULL OR seq < $2) ORDER BY seq DESC LIMIT $3")
            .bind(job_id)
            .bind(before_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// A job's events in order after `after_seq`: the live stream's.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn events(&self, job_id: &str, after_seq: i64, limit: i64) -> Result<Vec<EventRow>> {
        Ok(sqlx::query_as("SELECT * FROM events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
            .bind(job_id)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Drops metrics past a checkpoint a resumed run will redo, so the history stays contiguous.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn truncate_metrics_after(&self, job_id: &str, step: i64) -> Result<()> {
        sqlx::query("DELETE FROM events WHERE job_id = $1 AND step > $2").bind(job_id).bind(step).execute(&self.pool).await?;
        sqlx::query("DELETE FROM checkpoints WHERE job_id = $1 AND step_number > $2").bind(job_id).bind(step).execute(&self.pool).await?;
        Ok(())
    }

    // ---- checkpoints and models

    /// Deletes a job's checkpoints (and their models) beyond its newest `keep`; returns them, for
    /// their files to go too.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn prune_checkpoints(&self, job_id: &str, keep: i64) -> Result<Vec<CheckpointRow>> {
        let old: Vec<CheckpointRow> = sqlx::query_as(
            "SELECT * FROM checkpoints WHERE job_id = $1 AND step_number <
                 (SELECT MIN(step_number) FROM (SELECT step_number FROM checkpoints WHERE job_id = $1 ORDER BY step_number DESC LIMIT $2) newest)",
        )
        .bind(job_id)
        .bind(keep)
            .fetch_all(&self.pool)
            .await?;
        let mut tx = self.pool.begin().await?;
        for c in &old {
            sqlx::query("DELETE FROM checkpoints WHERE id = $1").bind(&c.id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM models WHERE id = $1 AND checkpoint_step IS NOT NULL").bind(&c.model_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(old)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn insert_checkpoint(&self, c: &CheckpointRow, base_model: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO checkpoints (id, job_id, step_number, created_at, metrics, model_id, path) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (job_id, step_number) DO UPDATE SET id = excluded.id, created_at = excluded.created_at, metrics = excluded.metrics,
                 model_id = excluded.model_id, path = excluded.path",
        )
        .bind(&c.id)
        .bind(&c.job_id)
        .bind(c.step_number)
        .bind(c.created_at)
        .bind(&c.metrics)
        .bind(&c.model_id)
        .bind(&c.path)
        .execute(&mut *tx)
        .await?;
        let model = ModelRow {
            id: c.model_id.clone(),
            job_id: c.job_id.clone(),
            base_model: base_model.to_string(),
            created_at: c.created_at,
            path: c.path.clone(),
            checkpoint_step: Some(c.step_number),
        };
        upsert_model(&mut *tx, &model).await?;
        tx.commit().await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn checkpoints(&self, job_id: &str, page: &Page<'_>) -> Result<Vec<CheckpointRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM checkpoints WHERE job_id = $1 AND ($2 IS NULL OR step_number < (SELECT step_number FROM checkpoints WHERE id = $2 AND job_id = $1))
             ORDER BY step_number DESC LIMIT $3",
        )
        .bind(job_id)
        .bind(page.after)
        .bind(page.limit)
        .fetch_all(&self.pool)
        .await?)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn insert_model(&self, m: &ModelRow) -> Result<()> {
        upsert_model(&self.pool, m).await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn model(&self, project: &str, id: &str) -> Result<Option<ModelRow>> {
        Ok(sqlx::query_as(
            "SELECT id, job_id, base_model, created_at, path, checkpoint_step FROM models WHERE id = $1 AND project_id = $2 AND deleted = 0",
        )
            .bind(id)
            .bind(project)
            .fetch_optional(&self.pool)
            .await?)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn models(&self, project: &str, page: &Page<'_>) -> Result<Vec<ModelRow>> {
        Ok(sqlx::query_as(
            "SELECT id, job_id, base_model, created_at, path, checkpoint_step FROM models WHERE deleted = 0 AND project_id = $3
             AND ($1 IS NULL OR rowid < (SELECT rowid FROM models WHERE id = $1 AND project_id = $3)) ORDER BY rowid DESC LIMIT $2",
        )
        .bind(page.after)
        .bind(page.limit)
        .bind(project)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Whether another live model row keeps the artifact at `path` (a checkpoint's adapter is the
    /// file of its checkpoint model and may be the job's kept one too).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn artifact_in_use(&self, path: &str, except_model: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM models WHERE path = $1 AND id <> $2 AND deleted = 0")
            .bind(path)
            .bind(except_model)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn delete_model(&self, id: &str) -> Result<bool> {
        Ok(sqlx::query("UPDATE models SET deleted = 1 WHERE id = $1 AND deleted = 0").bind(id).execute(&self.pool).await?.rows_affected()
            > 0)
    }

    // ---- idempotency

    /// Reserves `key` for this request (`hash` names it) before its handler runs, in one
    /// statement: of any number of concurrent requests with the key, exactly one gets
    /// [`Reservation::Ours`]. A reservation left by a process that died (older than
    /// `stale_after` seconds, never answered) is taken over.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn reserve_idempotency(&self, key: &str, route: &str, hash: &str, stale_after: i64) -> Result<Reservation> {
        let inserted = sqlx::query(
            "INSERT INTO idempotency (key, route, status, body, created_at, request_hash) VALUES ($1, $2, 0, '', $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(key)
        .bind(route)
        .bind(now())
        .bind(hash)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted > 0 {
            return Ok(Reservation::Ours);
        }
        let row: Option<(i64, String, Option<String>, i64)> =
            sqlx::query_as("SELECT status, body, request_hash, created_at FROM idempotency WHERE key = $1 AND route = $2")
                .bind(key)
                .bind(route)
                .fetch_optional(&self.pool)
                .await?;
        let Some((status, body, stored_hash, created_at)) = row else {
            // Released between the two statements: try again.
            return Box::pin(self.reserve_idempotency(key, route, hash, stale_after)).await;
        };
        // Keys stored before requests were hashed match any request, as they did then.
        if stored_hash.as_deref().is_some_and(|h| h != hash) {
            return Ok(Reservation::OtherRequest);
        }
        if status != 0 {
            return Ok(Reservation::Answered { status: status as u16, body });
        }
        if created_at < now() - stale_after {
            let taken =
                sqlx::query("UPDATE idempotency SET created_at = $1 WHERE key = $2 AND route = $3 AND status = 0 AND created_at = $4")
                    .bind(now())
                    .bind(key)
                    .bind(route)
                    .bind(created_at)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            if taken > 0 {
                return Ok(Reservation::Ours);
            }
        }
        Ok(Reservation::Pending)
    }

    /// Stores the answer of a reserved key.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn answer_idempotency(&self, key: &str, route: &str, status: u16, body: &str) -> Result<()> {
        sqlx::query("UPDATE idempotency SET status = $1, body = $2 WHERE key = $3 AND route = $4")
            .bind(status as i64)
            .bind(body)
            .bind(key)
            .bind(route)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Frees a reserved key whose request failed, so that the client may retry with it.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn release_idempotency(&self, key: &str, route: &str) -> Result<()> {
        sqlx::query("DELETE FROM idempotency WHERE key = $1 AND route = $2 AND status = 0")
            .bind(key)
            .bind(route)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// One fine-tuned model (a job's result or a checkpoint), in a transaction or not.
async fn upsert_model<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(exec: E, m: &ModelRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO models (id, job_id, base_model, created_at, path, checkpoint_step, project_id)
         VALUES ($1, $2, $3, $4, $5, $6, COALESCE((SELECT project_id FROM jobs WHERE id = $2), $7))
         ON CONFLICT (id) DO UPDATE SET job_id = excluded.job_id, base_model = excluded.base_model, created_at = excluded.created_at,
             path = excluded.path, checkpoint_step = excluded.checkpoint_step, project_id = excluded.project_id, deleted = 0",
    )
    .bind(&m.id)
    .bind(&m.job_id)
    .bind(&m.base_model)
    .bind(m.created_at)
    .bind(&m.path)
    .bind(m.checkpoint_step)
    .bind(DEFAULT_PROJECT)
    .execute(exec)
    .await?;
    Ok(())
}

/// What reserving an `Idempotency-Key` found.
#[derive(Debug, Clone, PartialEq)]
pub enum Reservation {
    /// The key is this request's: run it and store its answer.
    Ours,
    /// An earlier request with the key was answered so: replay it.
    Answered { status: u16, body: String },
    /// A request with the key is still being answered.
    Pending,
    /// The key was used for a different request.
    OtherRequest,
}

/// How a job ended, as its worker records it.
pub struct JobEnd<'a> {
    pub status: JobStatus,
    pub result: Option<&'a RunSummary>,
    pub error: Option<&'a JobError>,
    pub model: Option<&'a str>,
    /// The id of the job's results file (see [`crate::job::results`]).
    pub result_file: Option<&'a str>,
}

/// A database URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme && url[scheme + 3..at].contains(':') => {
            let user = url[scheme + 3..at].split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}
