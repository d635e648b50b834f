//! Webhooks in the Standard Webhooks format that OpenAI's SDK verifies (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, a
//! `whsec_` secret): `fine_tuning.job.succeeded|failed|cancelled` and
//! `batch.completed|failed|cancelled|expired`, to the endpoints of the server's settings.
//!
//! Every API node runs [`run`]: it writes the event of each job or batch that ended into the
//! store's outbox (one delivery per endpoint, in the transaction that marks it announced), and
//! sends the deliveries that are due, retrying failures with a growing backoff. Nothing here runs on
//! a training worker or in a request: a slow endpoint delays only its own deliveries.
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::store::{new_id, now, Delivery, Store, Subject};

/// The endpoints and the signing key.
#[derive(Clone, Debug)]
pub struct Webhooks {
    pub urls: Vec<url::Url>,
    key: Vec<u8>,
}

/// Seconds after each failed attempt before the next; a delivery whose attempts have all failed
/// (the tenth, about 16 h after the event) is given up.
const BACKOFF: [i64; 9] = [1, 5, 30, 120, 600, 1800, 3600, 7200, 43200];
/// How long one attempt may take, and how long a node holds the deliveries it took.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const LEASE_SECONDS: i64 = 60;
/// How often the outbox is looked at.
const POLL: Duration = Duration::from_millis(500);

impl Webhooks {
    /// The settings' endpoints and secret, checked: http(s) URLs, and a `whsec_` secret of at least
    /// 16 bytes once decoded. None when no endpoint is set.
    pub fn from_settings(urls: &[String], secret: Option<&str>) -> Result<Option<Self>> {
        let urls: Vec<url::Url> = urls
            .iter()
            .filter(|u| !u.is_empty())
            .map(|u| {
                let parsed = url::Url::parse(u).with_context(|| format!("--webhook-url `{u}` is not a URL"))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    bail!("--webhook-url `{u}` must be http or https");
                }
                Ok(parsed)
            })
            .collect::<Result<_>>()?;
        if urls.is_empty() {
            return Ok(None);
        }
        let secret = secret.context("--webhook-url needs --webhook-secret (FPT_WEBHOOK_SECRET): whsec_ and base64, as OpenAI's")?;
        let key = secret
            .strip_prefix("whsec_")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .filter(|k| k.len() >= 16)
            .context("--webhook-secret must be `whsec_` and the base64 of at least 16 random bytes")?;
        Ok(Some(Self { urls, key }))
    }

    /// The `webhook-signature` of a message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
        format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The event type of a job or batch that ended as `status`.
fn event_type(subject: Subject, status: &str) -> String {
    match subject {
        Subject::Job => format!("fine_tuning.job.{status}"),
        Subject::Batch => format!("batch.{status}"),
    }
}

/// Announces endings and delivers events until `stopping`.
pub async fn run(store: Store, hooks: Option<Webhooks>, stopping: CancellationToken) {
    // A redirect would turn the POST into a bodiless GET: it is a failed attempt instead.
    let client = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .user_agent("fpt-webhooks")
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client");
    while !stopping.is_cancelled() {
        if let Err(e) = announce(&store, hooks.as_ref()).await {
            tracing::warn!(error = format!("{e:#}"), "writing webhook events");
        }
        if let Some(h) = &hooks {
            if let Err(e) = deliver(&store, h, &client).await {
                tracing::warn!(error = format!("{e:#}"), "delivering webhook events");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stopping.cancelled() => {}
        }
    }
}

/// Writes the events of jobs and batches that ended (none, but marked announced, when no
/// endpoint is set: turning webhooks on later does not replay the past). Every API node of one
/// store must therefore have the same webhook settings.
async fn announce(store: &Store, hooks: Option<&Webhooks>) -> Result<()> {
    for subject in [Subject::Job, Subject::Batch] {
        for ending in store.endings(subject, 100).await? {
            let event_id = new_id("evt");
            let created_at = now();
            let payload = json!({"id": event_id, "object": "event", "created_at": created_at,
                                 "type": event_type(subject, &ending.status), "data": {"id": ending.id}})
            .to_string();
            let deliveries: Vec<Delivery> = hooks
                .map(|h| &h.urls[..])
                .unwrap_or_default()
                .iter()
                .map(|u| Delivery {
                    id: new_id("whd"),
                    event_id: event_id.clone(),
                    url: u.to_string(),
                    payload: payload.clone(),
                    created_at,
                    attempts: 0,
                })
                .collect();
            store.announce(subject, &ending.id, &deliveries).await?;
        }
    }
    Ok(())
}

/// Sends the deliveries that are due, at once; each failure waits its backoff.
async fn deliver(store: &Store, hooks: &Webhooks, client: &reqwest::Client) -> Result<()> {
    let due = store.due_deliveries(32, LEASE_SECONDS).await?;
    let sends = due.into_iter().map(|d| async move {
        let result = send(hooks, client, &d).await;
        let recorded = match result {
            Ok(()) => store.delivered(&d.id).await,
            Err(e) => {
                let wait = BACKOFF.get(d.attempts as usize).copied();
                tracing::info!(url = %d.url, event = %d.event_id, attempt = d.attempts + 1, error = %e, "a webhook delivery failed");
                store.delivery_failed(&d.id, &e, wait).await
            }
        };
        if let Err(e) = recorded {
            tracing::warn!(error = format!("{e:#}"), "recording a webhook delivery");
        }
    });
    futures::future::join_all(sends).await;
    Ok(())
}

/// One attempt: a 2xx is taken; anything else is retried.
async fn send(hooks: &Webhooks, client: &reqwest::Client, d: &Delivery) -> Result<(), String> {
    let timestamp = now();
    let r = client
        .post(&d.url)
        .header("content-type", "application/json")
        .header("webhook-id", &d.event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", hooks.sign(&d.event_id, timestamp, &d.payload))
        .body(d.payload.clone())
        .send()
        .await
        .map_err(|e| format!("{e}"))?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("the endpoint answered {}", r.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_the_standard_webhooks_one() {
        // The Standard Webhooks specification's own example.
        let hooks =
            Webhooks::from_settings(&["http://127.0.0.1:1/".into()], Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap().unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(hooks.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn settings_are_checked() {
        let ok = Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert!(Webhooks::from_settings(&[], None).unwrap().is_none());
        assert!(Webhooks::from_settings(&["ftp://x/".into()], ok).is_err());
        assert!(Webhooks::from_settings(&["not a url".into()], ok).is_err());
        assert!(Webhooks::from_settings(&["http://x/".into()], None).is_err());
        assert!(Webhooks::from_settings(&["http://x/".into()], Some("whsec_c2hvcnQ=")).is_err(), "5 bytes is too short");
        assert!(Webhooks::from_settings(&["http://x/".into()], Some("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).is_err(), "no whsec_");
    }
}
