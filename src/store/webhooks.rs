//! The webhook outbox (migration 0008): jobs and batches that ended and were not yet announced,
//! the deliveries their events make (one per endpoint), and each delivery's attempts.
use anyhow::Result;
use sqlx::FromRow;

use super::{now, Store};

/// A job or batch that ended and whose event is not written yet.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct Ending {
    pub id: String,
    pub status: String,
}

/// What a job or batch is, for the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Job,
    Batch,
}

impl Subject {
    fn table(self) -> &'static str {
        match self {
            Subject::Job => "jobs",
            Subject::Batch => "batches",
        }
    }

    fn ended(self) -> &'static str {
        match self {
            Subject::Job => "('succeeded', 'failed', 'cancelled')",
            Subject::Batch => "('completed', 'failed', 'cancelled', 'expired')",
        }
    }
}

/// One event for one endpoint.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct Delivery {
    pub id: String,
    pub event_id: String,
    pub url: String,
    pub payload: String,
    pub created_at: i64,
    pub attempts: i64,
}

impl Store {
    /// Jobs (or batches) that ended and are not announced yet, oldest first.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn endings(&self, subject: Subject, limit: i64) -> Result<Vec<Ending>> {
        let sql = format!(
            "SELECT id, status FROM {} WHERE notified = 0 AND status IN {} ORDER BY rowid LIMIT $1",
            subject.table(),
            subject.ended()
        );
        Ok(sqlx::query_as(&sql).bind(limit).fetch_all(&self.pool).await?)
    }

    /// Writes an ending's deliveries and marks it announced, in one transaction; nothing when
    /// another node announced it first.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn announce(&self, subject: Subject, id: &str, deliveries: &[Delivery]) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let sql = format!("UPDATE {} SET notified = 1 WHERE id = $1 AND notified = 0", subject.table());
        let ours = sqlx::query(&sql).bind(id).execute(&mut *tx).await?.rows_affected() > 0;
        if ours {
            for d in deliveries {
                sqlx::query(
                    "INSERT INTO webhook_deliveries (id, event_id, url, payload, created_at, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $5)",
                )
                .bind(&d.id)
                .bind(&d.event_id)
                .bind(&d.url)
                .bind(&d.payload)
                .bind(d.created_at)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(ours)
    }

    /// Takes up to `limit` deliveries that are due, for `lease_seconds` by the database's clock:
    /// no other node sends them meanwhile.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn due_deliveries(&self, limit: i64, lease_seconds: i64) -> Result<Vec<Delivery>> {
        let t = self.db_now();
        let free = format!(
            "delivered_at IS NULL AND given_up_at IS NULL AND next_attempt_at <= {t} AND (lease_until IS NULL OR lease_until < {t})"
        );
        let sql = format!(
            "UPDATE webhook_deliveries SET lease_until = {t} + $1
             WHERE id IN (SELECT id FROM webhook_deliveries WHERE {free} ORDER BY next_attempt_at, rowid LIMIT $2) AND {free}
             RETURNING id, event_id, url, payload, created_at, attempts"
        );
        Ok(sqlx::query_as(&sql).bind(lease_seconds).bind(limit).fetch_all(&self.pool).await?)
    }

    /// A delivery the endpoint took (a 2xx).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn delivered(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE webhook_deliveries SET delivered_at = $1, attempts = attempts + 1, lease_until = NULL WHERE id = $2")
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A delivery that failed: tried again `wait` seconds from now, or given up (None).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn delivery_failed(&self, id: &str, error: &str, wait: Option<i64>) -> Result<()> {
        let t = now();
        sqlx::query(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2, given_up_at = $3, lease_until = NULL
             WHERE id = $4",
        )
        .bind(error)
        .bind(t + wait.unwrap_or(0))
        .bind(wait.is_none().then_some(t))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
