//! Projects, their API keys and what they use: the tenancy of the store (migration 0005).
use anyhow::Result;
use sqlx::FromRow;

use super::{now, Page, Store};
use crate::job::JobStatus;

/// The project of everything stored before projects existed, and of every request when the server
/// has no project keys (its `--api-key` keys, or none on loopback).
pub const DEFAULT_PROJECT: &str = "proj_default";

/// A project's own quotas; None takes the server's default, 0 is no limit.
#[derive(Debug, Clone, Default, PartialEq, FromRow, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    pub max_running_jobs: Option<i64>,
    pub max_queued_jobs: Option<i64>,
    pub max_storage_bytes: Option<i64>,
    pub requests_per_second: Option<f64>,
}

impl Quotas {
    /// Each quota as set here, else as in `defaults`.
    pub fn or(&self, defaults: &Quotas) -> Quotas {
        Quotas {
            max_running_jobs: self.max_running_jobs.or(defaults.max_running_jobs),
            max_queued_jobs: self.max_queued_jobs.or(defaults.max_queued_jobs),
            max_storage_bytes: self.max_storage_bytes.or(defaults.max_storage_bytes),
            requests_per_second: self.requests_per_second.or(defaults.requests_per_second),
        }
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct ProjectRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub archived_at: Option<i64>,
    #[sqlx(flatten)]
    pub quotas: Quotas,
}

#[derive(Debug, Clone, FromRow)]
pub struct ApiKeyRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub redacted_value: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// The key's own quotas within its project's (None: no more than the project's).
    #[sqlx(flatten)]
    pub quotas: Quotas,
}

/// What a project holds now, against its quotas.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Jobs waiting to run: queued or paused.
    pub queued_jobs: i64,
    pub running_jobs: i64,
    pub stored_bytes: i64,
}

const PROJECT_COLUMNS: &str =
    "id, name, created_at, archived_at, max_running_jobs, max_queued_jobs, max_storage_bytes, requests_per_second";
const KEY_COLUMNS: &str =
    "id, project_id, name, redacted_value, created_at, revoked_at, max_running_jobs, max_queued_jobs, max_storage_bytes, requests_per_second";

impl Store {
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn insert_project(&self, p: &ProjectRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO projects (id, name, created_at, max_running_jobs, max_queued_jobs, max_storage_bytes, requests_per_second)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&p.id)
        .bind(&p.name)
        .bind(p.created_at)
        .bind(p.quotas.max_running_jobs)
        .bind(p.quotas.max_queued_jobs)
        .bind(p.quotas.max_storage_bytes)
        .bind(p.quotas.requests_per_second)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn project(&self, id: &str) -> Result<Option<ProjectRow>> {
        Ok(sqlx::query_as(&format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1")).bind(id).fetch_optional(&self.pool).await?)
    }

    /// Projects oldest first, after the one `page.after` names; archived ones only when asked.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn projects(&self, page: &Page<'_>, include_archived: bool) -> Result<Vec<ProjectRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {PROJECT_COLUMNS} FROM projects WHERE ($1 OR archived_at IS NULL)
             AND ($2 IS NULL OR (created_at, id) > (SELECT created_at, id FROM projects WHERE id = $2)) ORDER BY created_at, id LIMIT $3"
        ))
        .bind(include_archived)
        .bind(page.after)
        .bind(page.limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Projects, archived ones included.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn count_projects(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM projects").fetch_one(&self.pool).await?)
    }

    /// Renames a project and sets its quotas.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn update_project(&self, p: &ProjectRow) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE projects SET name = $1, max_running_jobs = $2, max_queued_jobs = $3, max_storage_bytes = $4, requests_per_second = $5
             WHERE id = $6",
        )
        .bind(&p.name)
        .bind(p.quotas.max_running_jobs)
        .bind(p.quotas.max_queued_jobs)
        .bind(p.quotas.max_storage_bytes)
        .bind(p.quotas.requests_per_second)
        .bind(&p.id)
        .execute(&self.pool)
        .await?
        .rows_affected()
            > 0)
    }

    /// Archives a project: its keys stop working at once; what it stored stays.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn archive_project(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE projects SET archived_at = COALESCE(archived_at, $1) WHERE id = $2")
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn insert_api_key(&self, k: &ApiKeyRow, secret_sha256: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, project_id, name, secret_sha256, redacted_value, created_at,
                 max_running_jobs, max_queued_jobs, max_storage_bytes, requests_per_second) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&k.id)
        .bind(&k.project_id)
        .bind(&k.name)
        .bind(secret_sha256)
        .bind(&k.redacted_value)
        .bind(k.created_at)
        .bind(k.quotas.max_running_jobs)
        .bind(k.quotas.max_queued_jobs)
        .bind(k.quotas.max_storage_bytes)
        .bind(k.quotas.requests_per_second)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A project's key that has not been revoked.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn api_key(&self, project: &str, id: &str) -> Result<Option<ApiKeyRow>> {
        Ok(sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE project_id = $1 AND id = $2 AND revoked_at IS NULL"))
            .bind(project)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// A project's keys not revoked, oldest first.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn api_keys(&self, project: &str, page: &Page<'_>) -> Result<Vec<ApiKeyRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE project_id = $1 AND revoked_at IS NULL
             AND ($2 IS NULL OR (created_at, id) > (SELECT created_at, id FROM api_keys WHERE id = $2)) ORDER BY created_at, id LIMIT $3"
        ))
        .bind(project)
        .bind(page.after)
        .bind(page.limit)
        .fetch_all(&self.pool)
        .await?)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn count_api_keys(&self, project: &str) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE project_id = $1 AND revoked_at IS NULL")
            .bind(project)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Revokes a key; false when the project has no such live key.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn revoke_api_key(&self, project: &str, id: &str) -> Result<bool> {
        Ok(sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE project_id = $2 AND id = $3 AND revoked_at IS NULL")
            .bind(now())
            .bind(project)
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected()
            > 0)
    }

    /// The live key (not revoked, its project not archived) whose secret hashes to `secret_sha256`,
    /// with its project. Read on every request, so that a revocation holds on every node at once.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn key_by_secret(&self, secret_sha256: &str) -> Result<Option<(ApiKeyRow, ProjectRow)>> {
        let columns = KEY_COLUMNS.split(", ").map(|c| format!("k.{c}")).collect::<Vec<_>>().join(", ");
        let key: Option<ApiKeyRow> = sqlx::query_as(&format!(
            "SELECT {columns} FROM api_keys k JOIN projects p ON p.id = k.project_id
             WHERE k.secret_sha256 = $1 AND k.revoked_at IS NULL AND p.archived_at IS NULL"
        ))
        .bind(secret_sha256)
        .fetch_optional(&self.pool)
        .await?;
        let Some(key) = key else { return Ok(None) };
        Ok(self.project(&key.project_id).await?.map(|p| (key, p)))
    }

    /// What `project` holds now.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn usage(&self, project: &str) -> Result<Usage> {
        self.usage_of("project_id", project).await
    }

    /// What the project key `key` made and is still held: its jobs queued and running, its files.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn key_usage(&self, key: &str) -> Result<Usage> {
        self.usage_of("api_key_id", key).await
    }

    async fn usage_of(&self, owner_column: &'static str, owner: &str) -> Result<Usage> {
        let jobs = format!("SELECT COUNT(*) FROM jobs WHERE {owner_column} = $1 AND status IN ($2, $3)");
        let count = |a: JobStatus, b: JobStatus| {
            sqlx::query_scalar::<_, i64>(&jobs).bind(owner).bind(a.as_str()).bind(b.as_str()).fetch_one(&self.pool)
        };
        // A paused job is waiting as a queued one is: it counts, so that pausing jobs is no way past the quota.
        let queued_jobs = count(JobStatus::Queued, JobStatus::Paused).await?;
        let running_jobs = count(JobStatus::Running, JobStatus::Running).await?;
        let stored_bytes: Option<i64> =
            sqlx::query_scalar(&format!("SELECT CAST(SUM(bytes) AS BIGINT) FROM files WHERE {owner_column} = $1 AND deleted = 0"))
                .bind(owner)
                .fetch_one(&self.pool)
                .await?;
        Ok(Usage { queued_jobs, running_jobs, stored_bytes: stored_bytes.unwrap_or(0) })
    }

    /// Every project's usage that is not nothing, for /metrics.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn usage_by_project(&self) -> Result<Vec<(String, Usage)>> {
        let jobs: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT project_id, status, COUNT(*) FROM jobs WHERE status IN ($1, $2, $3) GROUP BY project_id, status ORDER BY project_id",
        )
        .bind(JobStatus::Queued.as_str())
        .bind(JobStatus::Running.as_str())
        .bind(JobStatus::Paused.as_str())
        .fetch_all(&self.pool)
        .await?;
        let bytes: Vec<(String, i64)> = sqlx::query_as(
            "SELECT project_id, CAST(SUM(bytes) AS BIGINT) FROM files WHERE deleted = 0 GROUP BY project_id ORDER BY project_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut by: std::collections::BTreeMap<String, Usage> = Default::default();
        for (p, status, n) in jobs {
            let u = by.entry(p).or_default();
            if status == JobStatus::Running.as_str() {
                u.running_jobs = n;
            } else {
                u.queued_jobs += n;
            }
        }
        for (p, b) in bytes {
            by.entry(p).or_default().stored_bytes = b;
        }
        Ok(by.into_iter().collect())
    }
}
