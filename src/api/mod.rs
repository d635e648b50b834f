//! The HTTP API (its contract: openapi/openapi.yaml): one module per
//! resource, each listing its routes; the router and its middleware are assembled here.
mod auth;
pub mod batch_runner;
pub mod batches;
mod docs;
pub mod error;
pub mod files;
pub mod jobs;
pub mod models;
pub mod ops;
mod organization;
mod pace;
pub mod predictions;
pub mod query;
mod stream_slots;
pub mod ui;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Router;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::cors::CorsLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::artifacts::Artifacts;
use crate::config::ApiSettings;
use crate::model::ModelRegistry;
use crate::queue::events::EventSink;
use crate::queue::Queue;
use crate::serve::Inference;
use crate::store::{Reservation, Store};
pub use auth::Caller;
use error::ApiError;
pub use query::{Accepts, ListQuery, Order};

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub settings: Arc<ApiSettings>,
    pub registry: ModelRegistry,
    pub queue: Queue,
    pub events: EventSink,
    pub inference: Inference,
    pub artifacts: Artifacts,
    pub counters: Arc<Counters>,
    pub ready: Arc<AtomicBool>,
    /// Cancelled when the server stops: live streams end, so that the graceful stop is not held
    /// open by a dashboard watching a job.
    pub stopping: CancellationToken,
    /// Live event streams, bounded in all and per client.
    pub streams: stream_slots::StreamSlots,
    /// Request rates of projects and keys, on this node.
    pub rates: Arc<auth::Rates>,
    /// Wakes this node's batch runner when a batch is created or cancelled.
    pub batches: Arc<tokio::sync::Notify>,
    /// Answers predictions, over HTTP and as batches' lines.
    pub predictor: predictions::Predictor,
    limiter: Arc<Semaphore>,
}

/// Request counters for /metrics.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub client_errors: AtomicU64,
    pub server_errors: AtomicU64,
    pub rejected: AtomicU64,
}

impl AppState {
    pub fn new(
        store: Store,
        settings: Arc<ApiSettings>,
        registry: ModelRegistry,
        queue: Queue,
        events: EventSink,
        inference: Inference,
        artifacts: Artifacts,
    ) -> Self {
        let limiter = Arc::new(Semaphore::new(settings.max_concurrency));
        let rates = Arc::new(auth::Rates::new(settings.key_rps));
        let streams = stream_slots::StreamSlots::new(settings.max_streams, settings.max_streams_per_client);
        let predictor = predictions::Predictor {
            store: store.clone(),
            artifacts: artifacts.clone(),
            inference: inference.clone(),
            max_rows: settings.max_prediction_rows,
            timeout: settings.prediction_timeout,
        };
        Self {
            store,
            settings,
            registry,
            queue,
            events,
            inference,
            artifacts,
            counters: Arc::default(),
            ready: Arc::default(),
            stopping: CancellationToken::new(),
            streams,
            rates,
            batches: Arc::default(),
            predictor,
            limiter,
        }
    }

    /// This node's batch runner: it stops with the server and is woken by this node's batch routes.
    pub fn batch_runner(&self) -> batch_runner::Runner {
        batch_runner::Runner { predictor: self.predictor.clone(), stopping: self.stopping.clone(), wake: self.batches.clone() }
    }
}

/// One path and what it answers to. The router is built from this list, and a test checks it
/// against the OpenAPI spec both ways.
pub struct Route {
    pub path: &'static str,
    pub methods: &'static [&'static str],
    pub handler: MethodRouter<AppState>,
    /// Streams or uploads: exempt from the request timeout.
    pub long: bool,
}

pub fn routes() -> Vec<Route> {
    let mut r = Vec::new();
    r.extend(files::routes());
    r.extend(batches::routes());
    r.extend(jobs::routes());
    r.extend(models::routes());
    r.extend(predictions::routes());
    r.extend(ops::routes());
    r.extend(organization::routes());
    r.extend(ui::routes());
    r
}

pub fn router(state: AppState) -> Router {
    let s = &state.settings;
    let timeout = s.request_timeout;
    let mut app = Router::new();
    for route in routes() {
        let h = if route.long {
            route.handler
        } else {
            route.handler.layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, timeout))
        };
        app = app.route(route.path, h);
    }
    let request_id = HeaderName::from_static("x-request-id");
    let mut app = app
        .fallback(|| async { ApiError::not_found("route", "").into_response() })
        .layer(middleware::from_fn_with_state(state.clone(), pace::paced))
        .layer(DefaultBodyLimit::max(s.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), auth::auth))
        .layer(middleware::from_fn_with_state(state.clone(), limit_and_count))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid));
    if let Some(origins) = &s.cors {
        app = app.layer(
            CorsLayer::new().allow_origin(origins.clone()).allow_methods([Method::GET, Method::POST, Method::DELETE]).allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
            ]),
        );
    }
    app.with_state(state)
}

/// Bearer keys on `/v1/*`, compared in constant time; the rest stays open.
/// At most `max_concurrency` requests at once (more get 429 with `retry-after`), and counts.
async fn limit_and_count(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let c = &state.counters;
    c.requests.fetch_add(1, Ordering::Relaxed);
    // Health checks are never shed.
    let exempt = matches!(req.uri().path(), "/health" | "/ready" | "/metrics");
    let permit = if exempt {
        None
    } else {
        match state.limiter.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                c.rejected.fetch_add(1, Ordering::Relaxed);
                return ApiError::Overloaded { retry_after: 1 }.into_response();
            }
        }
    };
    let resp = next.run(req).await;
    drop(permit);
    let status = resp.status();
    if status.is_client_error() {
        c.client_errors.fetch_add(1, Ordering::Relaxed);
    } else if status.is_server_error() {
        c.server_errors.fetch_add(1, Ordering::Relaxed);
    }
    let json = resp.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status == StatusCode::PAYLOAD_TOO_LARGE && !json {
        return ApiError::body_too_large(state.settings.max_body_bytes).into_response();
    }
    if (status.is_client_error() || status.is_server_error()) && !json {
        return error::as_error_object(resp).await;
    }
    resp
}

/// `{"object":"list","data":[…],"has_more":…,"first_id":…,"last_id":…}`; `rows` holds limit+1 to tell has_more.
pub fn list_response<T: serde::Serialize>(mut rows: Vec<T>, limit: i64, id: impl Fn(&T) -> String) -> serde_json::Value {
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let first = rows.first().map(&id);
    let last = rows.last().map(&id);
    serde_json::json!({"object": "list", "data": rows, "has_more": has_more, "first_id": first, "last_id": last})
}

/// A list response of `rows` (fetched as limit+1) turned into objects that carry an `id`.
pub fn list_of<T>(rows: &[T], limit: i64, object: impl Fn(&T) -> serde_json::Value) -> axum::Json<serde_json::Value> {
    let objs: Vec<serde_json::Value> = rows.iter().map(object).collect();
    axum::Json(list_response(objs, limit, |v| v["id"].as_str().unwrap_or("").to_string()))
}

/// The request's `x-request-id` (the client's, or the one the server set), when it is a sensible
/// length: it is stored with queued work and written into logs.
pub fn request_id(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get("x-request-id").and_then(|v| v.to_str().ok()).filter(|id| !id.is_empty() && id.len() <= 128)
}

/// The `Idempotency-Key` of a request, if any, as stored: within the caller's project, so that
/// one project's key never replays another's answer.
pub fn idempotency_key(headers: &axum::http::HeaderMap, caller: &Caller) -> Option<String> {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).filter(|k| !k.is_empty() && k.len() <= 255)?;
    Some(format!("{}/{key}", caller.project_id()))
}

/// How long a request waits for a concurrent one with the same `Idempotency-Key` to be answered
/// before it gets a 409 to retry; and after how long an unanswered reservation (its process died)
/// is taken over.
const IDEMPOTENCY_WAIT: Duration = Duration::from_secs(10);
const IDEMPOTENCY_STALE_SECS: i64 = 600;

/// The sha256 an `Idempotency-Key` is bound to: of the route and every part of the request.
pub fn request_hash(route: &str, parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// Runs `f` once per `Idempotency-Key`: the key is reserved (atomically) before `f` runs; a
/// request with a key already answered gets that answer again (`idempotent-replayed: true`), one
/// with a key still being answered waits for it (a 409 with `retry-after` if it takes too long),
/// and one whose key was used for a different request (`hash`) gets a 422. A request that fails
/// frees its key for a retry.
pub async fn idempotent<F, Fut>(state: &AppState, key: Option<String>, route: &str, hash: &str, f: F) -> Response
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(StatusCode, serde_json::Value), ApiError>> + Send + 'static,
{
    let Some(k) = key else {
        return match f().await {
            Ok((status, body)) => (status, axum::Json(body)).into_response(),
            Err(e) => e.into_response(),
        };
    };
    let waited = tokio::time::Instant::now();
    loop {
        let reservation = match state.store.reserve_idempotency(&k, route, hash, IDEMPOTENCY_STALE_SECS).await {
            Ok(r) => r,
            Err(e) => return ApiError::Internal(e).into_response(),
        };
        match reservation {
            Reservation::Ours => break,
            Reservation::Answered { status, body } => return replay(status, body),
            Reservation::OtherRequest => {
                return ApiError::invalid("Idempotency-Key", "this key was used for a different request; use a new key for a new request")
                    .into_response()
            }
            Reservation::Pending if waited.elapsed() < IDEMPOTENCY_WAIT => tokio::time::sleep(Duration::from_millis(100)).await,
            Reservation::Pending => {
                return ApiError::Conflict("a request with this Idempotency-Key is still being answered; retry shortly".into())
                    .with_retry_after(1)
                    .into_response()
            }
        }
    }
    // The request runs, and its answer is stored (or its key freed), on a task of its own: a
    // client that goes away mid-request neither leaves the key reserved nor half a job behind.
    let (store, route) = (state.store.clone(), route.to_string());
    let (key_again, route_again) = (k.clone(), route.clone());
    let work = f();
    let answered = tokio::spawn(async move {
        let answer = work.await;
        let kept = match &answer {
            Ok((status, body)) => store.answer_idempotency(&k, &route, status.as_u16(), &body.to_string()).await,
            Err(_) => store.release_idempotency(&k, &route).await,
        };
        if let Err(e) = kept {
            tracing::error!(error = format!("{e:#}"), "recording an idempotent answer");
        }
        answer
    });
    match answered.await {
        Ok(Ok((status, body))) => (status, axum::Json(body)).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => {
            // The handler panicked: its key is free again for a retry.
            if let Err(e) = state.store.release_idempotency(&key_again, &route_again).await {
                tracing::error!(error = format!("{e:#}"), "freeing an idempotency key");
            }
            ApiError::Internal(anyhow::anyhow!("the request's handler failed: {e}")).into_response()
        }
    }
}

fn replay(status: u16, body: String) -> Response {
    let mut resp = (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body).into_response();
    resp.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}
