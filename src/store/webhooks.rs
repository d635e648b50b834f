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

    /// Takes up to `limit` deliveries that are due, for `lease_seconds`: no other node sends them
    /// meanwhile. Ones tried `max_attempts` times are given up.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn due_deliveries(&self, limit: i64, lease_seconds: i64, max_attempts: i64) -> Result<Vec<Delivery>> {
        let t = now();
        let free = "delivered_at IS NULL AND attempts < $4 AND next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until < $1)";
        let sql = format!(
            "UPDATE webhook_deliveries SET lease_until = $1 + $2
             WHERE id IN (SELECT id FROM webhook_deliveries WHERE {free} ORDER BY next_attempt_at, rowid LIMIT $3) AND {free}
             RETURNING id, event_id, url, payload, created_at, attempts"
        );
        Ok(sqlx::query_as(&sql).bind(t).bind(lease_seconds).bind(limit).bind(max_attempts).fetch_all(&self.pool).await?)
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

    /// A delivery that failed: tried again at `next_attempt_at`.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn delivery_failed(&self, id: &str, error: &str, next_attempt_at: i64) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2, lease_until = NULL WHERE id = $3",
        )
        .bind(error)
        .bind(next_attempt_at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
