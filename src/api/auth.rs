//! Who is calling, and what they may do. `/v1/organization/*` takes the admin key only; every other
//! `/v1/*` route takes a project's key: one made over the API (stored as a SHA-256 and looked up on
//! every request, so that a revocation holds on every node at once), or a configured `--api-key`
//! (the default project). With no keys configured at all the API is open, on loopback only, as the
//! default project. Each project and each key is held to its request rate here.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::store::{ApiKeyRow, ProjectRow, Quotas, Store, Usage, DEFAULT_PROJECT};

/// The caller of a project route, as authenticated.
#[derive(Clone, Debug)]
pub struct Caller {
    pub project: ProjectRow,
    /// The project's quotas, its own or the server's defaults: every one is set (0: no limit).
    pub quotas: Quotas,
    /// The project key used, with its own quotas (None: a configured key, or an open API).
    pub key: Option<ApiKeyRow>,
    /// The client whose share of the bounded resources (rate, live streams) a request takes: the
    /// key's id (`key-<n>` for the n-th `--api-key`), or the peer's address when the API is open.
    pub client: String,
}

impl Caller {
    pub fn project_id(&self) -> &str {
        &self.project.id
    }

    pub fn key_id(&self) -> Option<String> {
        self.key.as_ref().map(|k| k.id.clone())
    }

    /// Refuses one more queued job past the project's quota or the key's.
    pub async fn may_queue_a_job(&self, store: &Store) -> Result<(), ApiError> {
        self.may_add(store, "max_queued_jobs", |q| q.max_queued_jobs, |u| u.queued_jobs, 1).await
    }

    /// Refuses `bytes` more of uploaded files past the project's quota or the key's.
    pub async fn may_store(&self, store: &Store, bytes: i64) -> Result<(), ApiError> {
        self.may_add(store, "max_storage_bytes", |q| q.max_storage_bytes, |u| u.stored_bytes, bytes).await
    }

    /// Refuses `adding` more of what `used` counts when it would pass the `quota` (picked by
    /// `limit`) of the project, then of the key.
    async fn may_add(
        &self,
        store: &Store,
        quota: &'static str,
        limit: fn(&Quotas) -> Option<i64>,
        used: fn(&Usage) -> i64,
        adding: i64,
    ) -> Result<(), ApiError> {
        let over = |quotas: &Quotas, usage: &Usage| limit(quotas).filter(|&l| l > 0 && used(usage).saturating_add(adding) > l);
        if let Some(limit) = over(&self.quotas, &store.usage(self.project_id()).await?) {
            return Err(ApiError::QuotaExceeded { scope: "project", quota, limit });
        }
        if let Some(k) = &self.key {
            if let Some(limit) = over(&k.quotas, &store.key_usage(&k.id).await?) {
                return Err(ApiError::QuotaExceeded { scope: "API key", quota, limit });
            }
        }
        Ok(())
    }
}

/// The SHA-256 a project key's secret is stored and looked up as.
pub fn secret_sha256(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether the request carries the admin key (an admin key must be configured).
pub fn is_admin(state: &AppState, headers: &axum::http::HeaderMap) -> bool {
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    state.settings.admin_key.as_deref().is_some_and(|k| same(k, given))
}

/// Whether the caller's key still works (not revoked, its project not archived): a long-lived
/// request (an event stream) asks again now and then.
pub async fn still_valid(state: &AppState, caller: &Caller) -> bool {
    match &caller.key {
        None => true,
        Some(k) => {
            matches!(state.store.api_key(caller.project_id(), &k.id).await, Ok(Some(_)))
                && matches!(state.store.project(caller.project_id()).await, Ok(Some(p)) if p.archived_at.is_none())
        }
    }
}

fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

pub async fn auth(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !path.starts_with("/v1/") {
        return next.run(req).await;
    }
    let given = req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    let settings = &state.settings;
    let admin = settings.admin_key.as_deref().is_some_and(|k| same(k, given));
    if path.starts_with("/v1/organization/") {
        return match (&settings.admin_key, admin) {
            (_, true) => next.run(req).await,
            (None, false) => {
                ApiError::Forbidden("projects are managed with the admin key: start the server with --admin-key".into()).into_response()
            }
            (Some(_), false) => ApiError::Unauthorized.into_response(),
        };
    }
    if admin {
        return ApiError::Forbidden("the admin key manages projects (/v1/organization/*); use a project's key here".into()).into_response();
    }
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map_or_else(|| "local".to_string(), |c| c.0.ip().to_string());
    let caller = match identify(&state, given, peer).await {
        Ok(Some(c)) => c,
        Ok(None) => return ApiError::Unauthorized.into_response(),
        Err(e) => return e.into_response(),
    };
    if let Err(e) = state.rates.check(&caller) {
        return e.into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// The caller `given` (a bearer secret, possibly empty) authenticates as; None: nobody.
async fn identify(state: &AppState, given: &str, peer: String) -> Result<Option<Caller>, ApiError> {
    let s = &state.settings;
    let open = s.api_keys.is_empty() && s.admin_key.is_none();
    // Every configured key is compared, in constant time each, whichever matches.
    let configured = s.api_keys.iter().enumerate().fold(None, |acc, (i, k)| if same(k, given) { Some(i) } else { acc });
    let (client, project, key) = if open {
        (peer, state.store.project(DEFAULT_PROJECT).await?, None)
    } else if let Some(i) = configured {
        (format!("key-{i}"), state.store.project(DEFAULT_PROJECT).await?, None)
    } else if given.is_empty() {
        return Ok(None);
    } else {
        match state.store.key_by_secret(&secret_sha256(given)).await? {
            Some((key, project)) => (key.id.clone(), Some(project), Some(key)),
            None => return Ok(None),
        }
    };
    let project = project.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the default project is missing from the database")))?;
    let quotas = project.quotas.or(&s.default_quotas);
    Ok(Some(Caller { project, quotas, key, client }))
}

/// Request rates per project and per key, on this node. A limiter is made on first use and again
/// when its rate changes; only authenticated projects and keys get one.
pub struct Rates {
    projects: Mutex<HashMap<String, (u64, Arc<DefaultDirectRateLimiter>)>>,
    keys: Mutex<HashMap<String, (u64, Arc<DefaultDirectRateLimiter>)>>,
    key_rps: f64,
    /// Requests refused for their rate, per project, for /metrics.
    pub refused: Mutex<HashMap<String, u64>>,
}

impl Rates {
    pub fn new(key_rps: f64) -> Self {
        Self { projects: Mutex::default(), keys: Mutex::default(), key_rps, refused: Mutex::default() }
    }

    fn check(&self, caller: &Caller) -> Result<(), ApiError> {
        let project_rps = caller.quotas.requests_per_second.unwrap_or(0.0);
        let key_rps = caller.key.as_ref().and_then(|k| k.quotas.requests_per_second).unwrap_or(self.key_rps);
        // The key's own rate first: a key over it must not spend its project's allowance too.
        let over = admit(&self.keys, &caller.client, key_rps)
            .map(|wait| ("API key", wait))
            .or_else(|| admit(&self.projects, caller.project_id(), project_rps).map(|wait| ("project", wait)));
        match over {
            None => Ok(()),
            Some((who, wait)) => {
                *self.refused.lock().unwrap().entry(caller.project_id().to_string()).or_default() += 1;
                Err(ApiError::RateLimited { who, retry_after: wait.as_secs_f64().ceil().max(1.0) as u64 })
            }
        }
    }
}

/// Takes one request from `id`'s allowance of `rps` (0: unlimited); how long to wait when there is none.
fn admit(limiters: &Mutex<HashMap<String, (u64, Arc<DefaultDirectRateLimiter>)>>, id: &str, rps: f64) -> Option<Duration> {
    if rps <= 0.0 {
        return None;
    }
    let limiter = {
        let mut map = limiters.lock().unwrap();
        let entry = map.entry(id.to_string()).or_insert_with(|| (rps.to_bits(), Arc::new(limiter(rps))));
        if entry.0 != rps.to_bits() {
            *entry = (rps.to_bits(), Arc::new(limiter(rps)));
        }
        entry.1.clone()
    };
    limiter.check().err().map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
}

/// The smallest request rate a project or key may be given (one request in about 17 minutes).
pub const MIN_RPS: f64 = 0.001;

/// `rps` requests per second on average, with bursts of up to a second's worth.
fn limiter(rps: f64) -> DefaultDirectRateLimiter {
    let burst = NonZeroU32::new(rps.ceil().clamp(1.0, u32::MAX as f64) as u32).unwrap();
    let period = Duration::try_from_secs_f64(1.0 / rps.max(MIN_RPS)).unwrap_or(Duration::from_secs(1000)).max(Duration::from_nanos(1));
    RateLimiter::direct(Quota::with_period(period).expect("a positive period").allow_burst(burst))
}
