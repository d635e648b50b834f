//! The service's state in SQLite (WAL) through sqlx: files, jobs, events, checkpoints, models,
//! idempotency keys. Every query lives here, so another backend (PostgreSQL) has one place to fill.
use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, SqlitePool};

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A new prefixed id (`file-…`, `ftjob-…`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..24])
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
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
}

#[derive(Debug, Clone, FromRow)]
pub struct JobRow {
    pub id: String,
    pub model: String,
    pub task: String,
    pub status: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub fine_tuned_model: Option<String>,
    pub hyperparameters: String,
    pub method: String,
    pub training_file: Option<String>,
    pub validation_file: Option<String>,
    pub seed: i64,
    pub suffix: Option<String>,
    pub trained_steps: i64,
    pub result: Option<String>,
    pub error: Option<String>,
    pub metadata: Option<String>,
    pub desired: String,
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

/// An event before it is stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub job_id: String,
    pub level: &'static str,
    pub kind: &'static str,
    pub message: String,
    pub data: Option<serde_json::Value>,
    pub step: Option<i64>,
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
    pub job_id: String,
    pub base_model: String,
    pub created_at: i64,
    pub path: String,
    pub checkpoint_step: Option<i64>,
}

/// A page of a list: `after` an id, at most `limit`.
pub struct Page<'a> {
    pub after: Option<&'a str>,
    pub limit: i64,
}

impl Store {
    /// Opens (creating) the database and applies the migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(opts).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    // ---- files

    pub async fn insert_file(&self, f: &FileRow) -> Result<()> {
        sqlx::query("INSERT INTO files (id, filename, purpose, bytes, format, samples, created_at, path) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(&f.id)
            .bind(&f.filename)
            .bind(&f.purpose)
            .bind(f.bytes)
            .bind(&f.format)
            .bind(f.samples)
            .bind(f.created_at)
            .bind(&f.path)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn file(&self, id: &str) -> Result<Option<FileRow>> {
        Ok(sqlx::query_as("SELECT id, filename, purpose, bytes, format, samples, created_at, path FROM files WHERE id = ? AND deleted = 0")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn files(&self, page: &Page<'_>) -> Result<Vec<FileRow>> {
        Ok(sqlx::query_as(
            "SELECT id, filename, purpose, bytes, format, samples, created_at, path FROM files WHERE deleted = 0
             AND (?1 IS NULL OR rowid < (SELECT rowid FROM files WHERE id = ?1)) ORDER BY rowid DESC LIMIT ?2",
        )
        .bind(page.after)
        .bind(page.limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn delete_file(&self, id: &str) -> Result<bool> {
        Ok(sqlx::query("UPDATE files SET deleted = 1 WHERE id = ? AND deleted = 0").bind(id).execute(&self.pool).await?.rows_affected() > 0)
    }

    // ---- jobs

    pub async fn insert_job(&self, j: &JobRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO jobs (id, model, task, status, created_at, hyperparameters, method, training_file, validation_file, seed, suffix, metadata)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&j.id).bind(&j.model).bind(&j.task).bind(&j.status).bind(j.created_at).bind(&j.hyperparameters).bind(&j.method)
        .bind(&j.training_file).bind(&j.validation_file).bind(j.seed).bind(&j.suffix).bind(&j.metadata)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn job(&self, id: &str) -> Result<Option<JobRow>> {
        Ok(sqlx::query_as("SELECT * FROM jobs WHERE id = ?").bind(id).fetch_optional(&self.pool).await?)
    }

    pub async fn jobs(&self, page: &Page<'_>) -> Result<Vec<JobRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM jobs WHERE (?1 IS NULL OR rowid < (SELECT rowid FROM jobs WHERE id = ?1)) ORDER BY rowid DESC LIMIT ?2",
        )
        .bind(page.after)
        .bind(page.limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Claims the oldest queued job in one statement; it becomes `running`.
    pub async fn claim_job(&self) -> Result<Option<JobRow>> {
        Ok(sqlx::query_as(
            "UPDATE jobs SET status = 'running', desired = 'run', started_at = COALESCE(started_at, ?1)
             WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, rowid LIMIT 1) RETURNING *",
        )
        .bind(now())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Moves a job from one of `from` to `to`; false when it was in none of them.
    pub async fn transition(&self, id: &str, from: &[&str], to: &str) -> Result<bool> {
        let placeholders = vec!["?"; from.len()].join(", ");
        let finished = matches!(to, "succeeded" | "failed" | "cancelled");
        let sql = format!(
            "UPDATE jobs SET status = ?, finished_at = CASE WHEN ? THEN ? ELSE finished_at END WHERE id = ? AND status IN ({placeholders})"
        );
        let mut q = sqlx::query(&sql).bind(to).bind(finished).bind(now()).bind(id);
        for f in from {
            q = q.bind(*f);
        }
        Ok(q.execute(&self.pool).await?.rows_affected() > 0)
    }

    pub async fn set_desired(&self, id: &str, desired: &str) -> Result<()> {
        sqlx::query("UPDATE jobs SET desired = ? WHERE id = ?").bind(desired).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn set_progress(&self, id: &str, steps: i64) -> Result<()> {
        sqlx::query("UPDATE jobs SET trained_steps = ? WHERE id = ?").bind(steps).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn finish_job(
        &self,
        id: &str,
        status: &str,
        result: Option<&serde_json::Value>,
        error: Option<&serde_json::Value>,
        model: Option<&str>,
    ) -> Result<()> {
        sqlx::query("UPDATE jobs SET status = ?, finished_at = ?, result = COALESCE(?, result), error = ?, fine_tuned_model = COALESCE(?, fine_tuned_model) WHERE id = ?")
            .bind(status)
            .bind(now())
            .bind(result.map(|r| r.to_string()))
            .bind(error.map(|e| e.to_string()))
            .bind(model)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// After a crash: jobs that were running go back to the queue (they resume from their checkpoint).
    pub async fn requeue_running(&self) -> Result<u64> {
        Ok(sqlx::query("UPDATE jobs SET status = 'queued' WHERE status = 'running'").execute(&self.pool).await?.rows_affected())
    }

    pub async fn count_status(&self, status: &str) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = ?").bind(status).fetch_one(&self.pool).await?)
    }

    // ---- events

    pub async fn insert_events(&self, events: &[NewEvent]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for e in events {
            sqlx::query("INSERT INTO events (job_id, created_at, level, type, message, data, step) VALUES (?, ?, ?, ?, ?, ?, ?)")
                .bind(&e.job_id)
                .bind(now())
                .bind(e.level)
                .bind(e.kind)
                .bind(&e.message)
                .bind(e.data.as_ref().map(|d| d.to_string()))
                .bind(e.step)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Events of a job after `after_seq`, oldest first.
    pub async fn events(&self, job_id: &str, after_seq: i64, limit: i64) -> Result<Vec<EventRow>> {
        Ok(sqlx::query_as("SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?")
            .bind(job_id)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Drops metrics past a checkpoint a resumed run will redo, so the history stays contiguous.
    pub async fn truncate_metrics_after(&self, job_id: &str, step: i64) -> Result<()> {
        sqlx::query("DELETE FROM events WHERE job_id = ? AND step > ?").bind(job_id).bind(step).execute(&self.pool).await?;
        sqlx::query("DELETE FROM checkpoints WHERE job_id = ? AND step_number > ?").bind(job_id).bind(step).execute(&self.pool).await?;
        Ok(())
    }

    // ---- checkpoints and models

    pub async fn insert_checkpoint(&self, c: &CheckpointRow, base_model: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT OR REPLACE INTO checkpoints (id, job_id, step_number, created_at, metrics, model_id, path) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(&c.id).bind(&c.job_id).bind(c.step_number).bind(c.created_at).bind(&c.metrics).bind(&c.model_id).bind(&c.path)
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

    pub async fn checkpoints(&self, job_id: &str, page: &Page<'_>) -> Result<Vec<CheckpointRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM checkpoints WHERE job_id = ?1 AND (?2 IS NULL OR step_number < (SELECT step_number FROM checkpoints WHERE id = ?2))
             ORDER BY step_number DESC LIMIT ?3",
        )
        .bind(job_id)
        .bind(page.after)
        .bind(page.limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn insert_model(&self, m: &ModelRow) -> Result<()> {
        upsert_model(&self.pool, m).await
    }

    pub async fn model(&self, id: &str) -> Result<Option<ModelRow>> {
        Ok(sqlx::query_as("SELECT id, job_id, base_model, created_at, path, checkpoint_step FROM models WHERE id = ? AND deleted = 0")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn models(&self) -> Result<Vec<ModelRow>> {
        Ok(sqlx::query_as(
            "SELECT id, job_id, base_model, created_at, path, checkpoint_step FROM models WHERE deleted = 0 ORDER BY rowid DESC",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn delete_model(&self, id: &str) -> Result<bool> {
        Ok(sqlx::query("UPDATE models SET deleted = 1 WHERE id = ? AND deleted = 0").bind(id).execute(&self.pool).await?.rows_affected()
            > 0)
    }

    // ---- idempotency

    pub async fn idempotent_response(&self, key: &str, route: &str) -> Result<Option<(u16, String)>> {
        let row: Option<(i64, String)> = sqlx::query_as("SELECT status, body FROM idempotency WHERE key = ? AND route = ?")
            .bind(key)
            .bind(route)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(s, b)| (s as u16, b)))
    }

    pub async fn save_idempotent_response(&self, key: &str, route: &str, status: u16, body: &str) -> Result<()> {
        sqlx::query("INSERT OR IGNORE INTO idempotency (key, route, status, body, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(key)
            .bind(route)
            .bind(status as i64)
            .bind(body)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// One fine-tuned model (a job's result or a checkpoint), in a transaction or not.
async fn upsert_model<'e, E: sqlx::Executor<'e, Database = sqlx::Sqlite>>(exec: E, m: &ModelRow) -> Result<()> {
    sqlx::query("INSERT OR REPLACE INTO models (id, job_id, base_model, created_at, path, checkpoint_step) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(&m.id)
        .bind(&m.job_id)
        .bind(&m.base_model)
        .bind(m.created_at)
        .bind(&m.path)
        .bind(m.checkpoint_step)
        .execute(exec)
        .await?;
    Ok(())
}
