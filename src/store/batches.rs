//! Batches and their answered lines (migration 0007): created by the API, claimed under a lease by
//! one node's batch runner, advanced a chunk of lines at a time in one transaction each.
use anyhow::Result;
use sqlx::FromRow;

use super::{now, Lease, Page, Store};

/// A batch as stored.
#[derive(Debug, Clone, FromRow)]
pub struct BatchRow {
    pub id: String,
    pub project_id: String,
    pub api_key_id: Option<String>,
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    pub status: String,
    pub created_at: i64,
    pub in_progress_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    /// JSON: OpenAI's `errors` list, when the batch failed as a whole.
    pub errors: Option<String>,
    pub metadata: Option<String>,
}

const COLUMNS: &str = "id, project_id, api_key_id, input_file_id, endpoint, completion_window, status, created_at, in_progress_at, \
                       finalizing_at, completed_at, failed_at, cancelling_at, cancelled_at, expired_at, total, completed, failed, output_file_id, \
                       error_file_id, errors, metadata";

/// One answered line: its number in the input file, whether it succeeded, and its output line.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct BatchLine {
    pub line: i64,
    pub ok: i64,
    pub answer: String,
}

/// How a runner's claim on a batch stands after it recorded a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Go on.
    Held,
    /// A client asked to cancel: finish as cancelled.
    Cancelling,
    /// Another runner took the batch over (this one's lease ran out): stop.
    Lost,
}

impl Store {
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn insert_batch(&self, b: &BatchRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO batches (id, project_id, api_key_id, input_file_id, endpoint, completion_window, status, created_at, total, metadata, notified)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0)",
        )
        .bind(&b.id)
        .bind(&b.project_id)
        .bind(&b.api_key_id)
        .bind(&b.input_file_id)
        .bind(&b.endpoint)
        .bind(&b.completion_window)
        .bind(&b.status)
        .bind(b.created_at)
        .bind(b.total)
        .bind(&b.metadata)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn batch(&self, project: &str, id: &str) -> Result<Option<BatchRow>> {
        Ok(sqlx::query_as(&format!("SELECT {COLUMNS} FROM batches WHERE id = $1 AND project_id = $2"))
            .bind(id)
            .bind(project)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// A project's batches, newest first.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn batches(&self, project: &str, page: &Page<'_>) -> Result<Vec<BatchRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM batches WHERE project_id = $3
             AND ($1 IS NULL OR rowid < (SELECT rowid FROM batches WHERE id = $1 AND project_id = $3)) ORDER BY rowid DESC LIMIT $2"
        ))
        .bind(page.after)
        .bind(page.limit)
        .bind(project)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Claims the oldest batch that is waiting, being cancelled, or whose runner's lease ran out;
    /// a waiting one starts `in_progress`.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn claim_batch(&self, lease: &Lease) -> Result<Option<BatchRow>> {
        let t = self.db_now();
        let lock = match self.backend {
            super::Backend::Sqlite => "",
            super::Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "UPDATE batches SET worker = $1, lease_until = {t} + $2,
                 status = CASE WHEN status = 'validating' THEN 'in_progress' ELSE status END,
                 in_progress_at = COALESCE(in_progress_at, {t})
             WHERE id = (SELECT id FROM batches WHERE status IN ('validating', 'in_progress', 'cancelling', 'finalizing')
                         AND (worker IS NULL OR lease_until < {t}) ORDER BY rowid LIMIT 1 {lock})
             RETURNING {COLUMNS}"
        );
        Ok(sqlx::query_as(&sql).bind(&lease.worker).bind(lease.seconds).fetch_optional(&self.pool).await?)
    }

    /// The batches not yet ended that a runner holds, and its name.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn held_batches(&self) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as("SELECT id, worker FROM batches WHERE worker IS NOT NULL").fetch_all(&self.pool).await?)
    }

    /// Lets another runner claim a batch at once (its runner's process is gone).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn release_batch(&self, id: &str, worker: &str) -> Result<bool> {
        Ok(sqlx::query("UPDATE batches SET worker = NULL, lease_until = NULL WHERE id = $1 AND worker = $2")
            .bind(id)
            .bind(worker)
            .execute(&self.pool)
            .await?
            .rows_affected()
            > 0)
    }

    /// Renews a runner's lease on its batch; false when another runner holds it now.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn renew_batch(&self, id: &str, lease: &Lease) -> Result<bool> {
        let sql = format!("UPDATE batches SET lease_until = {} + $1 WHERE id = $2 AND worker = $3", self.db_now());
        Ok(sqlx::query(&sql).bind(lease.seconds).bind(id).bind(&lease.worker).execute(&self.pool).await?.rows_affected() > 0)
    }

    /// The batches not yet ended that read the file: it cannot go while one of them may still read it.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn batches_using_file(&self, file_id: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM batches WHERE input_file_id = $1 AND status IN ('validating', 'in_progress', 'finalizing', 'cancelling') LIMIT 10",
        )
        .bind(file_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The line numbers of a batch already answered.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn batch_lines_done(&self, batch_id: &str) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar("SELECT line FROM batch_lines WHERE batch_id = $1").bind(batch_id).fetch_all(&self.pool).await?)
    }

    /// Records a chunk of answered lines with the batch's counts and renews the lease, in one
    /// transaction, if this runner still holds the batch. A line recorded before (by a runner
    /// whose lease ran out meanwhile) keeps its first answer and is not counted twice.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn record_batch_lines(&self, batch_id: &str, lease: &Lease, lines: &[BatchLine]) -> Result<Claim> {
        let t = self.db_now();
        let mut tx = self.pool.begin().await?;
        let status: Option<String> =
            sqlx::query_scalar(&format!("UPDATE batches SET lease_until = {t} + $1 WHERE id = $2 AND worker = $3 RETURNING status"))
                .bind(lease.seconds)
                .bind(batch_id)
                .bind(&lease.worker)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(status) = status else { return Ok(Claim::Lost) };
        let (mut completed, mut failed) = (0i64, 0i64);
        for l in lines {
            let added = sqlx::query("INSERT INTO batch_lines (batch_id, line, ok, answer) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                .bind(batch_id)
                .bind(l.line)
                .bind(l.ok)
                .bind(&l.answer)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if added > 0 {
                if l.ok != 0 {
                    completed += 1;
                } else {
                    failed += 1;
                }
            }
        }
        sqlx::query("UPDATE batches SET completed = completed + $1, failed = failed + $2 WHERE id = $3")
            .bind(completed)
            .bind(failed)
            .bind(batch_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(if status == "cancelling" { Claim::Cancelling } else { Claim::Held })
    }

    /// A page of a batch's answered lines in input order, `ok` ones or failed ones: at most
    /// `limit`, after line `after`.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn batch_answers(&self, batch_id: &str, ok: bool, after: i64, limit: i64) -> Result<Vec<BatchLine>> {
        Ok(sqlx::query_as("SELECT line, ok, answer FROM batch_lines WHERE batch_id = $1 AND ok = $2 AND line > $3 ORDER BY line LIMIT $4")
            .bind(batch_id)
            .bind(ok as i64)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// How many of a batch's answered lines are `ok` (or failed).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn batch_answer_count(&self, batch_id: &str, ok: bool) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM batch_lines WHERE batch_id = $1 AND ok = $2")
            .bind(batch_id)
            .bind(ok as i64)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Records that a batch's completion window ran out, before its unanswered lines are written
    /// as expired: a runner that finishes it later (after this one died) ends it `expired` too.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn batch_expiring(&self, batch_id: &str, lease: &Lease) -> Result<bool> {
        self.update_held("UPDATE batches SET expired_at = COALESCE(expired_at, $1) WHERE id = $2 AND worker = $3", batch_id, lease).await
    }

    /// Runs `sql` (binding now, the batch and the runner as $1, $2, $3) on a batch this runner
    /// holds; false when it holds it no more.
    async fn update_held(&self, sql: &str, batch_id: &str, lease: &Lease) -> Result<bool> {
        Ok(sqlx::query(sql).bind(now()).bind(batch_id).bind(&lease.worker).execute(&self.pool).await?.rows_affected() > 0)
    }

    /// Marks a batch `finalizing` (its output being written), if this runner holds it.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn finalizing_batch(&self, batch_id: &str, lease: &Lease) -> Result<bool> {
        let sql = "UPDATE batches SET status = CASE WHEN status = 'cancelling' THEN status ELSE 'finalizing' END,
                       finalizing_at = COALESCE(finalizing_at, $1) WHERE id = $2 AND worker = $3";
        self.update_held(sql, batch_id, lease).await
    }

    /// Ends a batch this runner holds: `completed` or `expired` (or `cancelled`, when a cancel was
    /// asked), with its files, or `failed` with `errors`; its lines go.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn finish_batch(&self, batch_id: &str, lease: &Lease, end: &BatchEnd<'_>) -> Result<bool> {
        let t = now();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE batches SET
                 status = CASE WHEN $1 = 'failed' THEN 'failed' WHEN status = 'cancelling' THEN 'cancelled' ELSE $1 END,
                 completed_at = CASE WHEN $1 = 'completed' AND status <> 'cancelling' THEN $2 ELSE completed_at END,
                 expired_at = CASE WHEN $1 = 'expired' AND status <> 'cancelling' THEN COALESCE(expired_at, $2) ELSE NULL END,
                 cancelled_at = CASE WHEN status = 'cancelling' AND $1 <> 'failed' THEN $2 ELSE cancelled_at END,
                 failed_at = CASE WHEN $1 = 'failed' THEN $2 ELSE failed_at END,
                 output_file_id = $3, error_file_id = $4, errors = $5, worker = NULL, lease_until = NULL
             WHERE id = $6 AND worker = $7",
        )
        .bind(match (end.errors, end.expired) {
            (Some(_), _) => "failed",
            (None, true) => "expired",
            (None, false) => "completed",
        })
        .bind(t)
        .bind(end.output_file)
        .bind(end.error_file)
        .bind(end.errors)
        .bind(batch_id)
        .bind(&lease.worker)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if done {
            sqlx::query("DELETE FROM batch_lines WHERE batch_id = $1").bind(batch_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Asks to cancel a batch not yet ended; returns it as it is now (None: no such batch). One no
    /// runner has taken yet is cancelled at once: nothing of it was answered.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn cancel_batch(&self, project: &str, id: &str) -> Result<Option<BatchRow>> {
        sqlx::query(
            "UPDATE batches SET cancelling_at = $1,
                 status = CASE WHEN status = 'validating' AND worker IS NULL THEN 'cancelled' ELSE 'cancelling' END,
                 cancelled_at = CASE WHEN status = 'validating' AND worker IS NULL THEN $1 ELSE cancelled_at END
             WHERE id = $2 AND project_id = $3 AND status IN ('validating', 'in_progress', 'finalizing')",
        )
        .bind(now())
        .bind(id)
        .bind(project)
        .execute(&self.pool)
        .await?;
        self.batch(project, id).await
    }
}

/// How a batch ends.
pub struct BatchEnd<'a> {
    pub output_file: Option<&'a str>,
    pub error_file: Option<&'a str>,
    /// JSON of OpenAI's `errors` object: the batch failed as a whole.
    pub errors: Option<&'a str>,
    /// Its completion window ran out before every line was answered.
    pub expired: bool,
}
