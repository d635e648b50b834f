//! Operations: `/health` (alive), `/ready`, `/metrics` (Prometheus text), `/openapi.json`, `/docs`.
use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde_json::{json, Value};

use super::{AppState, Route};

pub fn routes() -> Vec<Route> {
    vec![
        Route { path: "/health", methods: &["GET"], handler: get(health), long: false },
        Route { path: "/ready", methods: &["GET"], handler: get(ready), long: false },
        Route { path: "/metrics", methods: &["GET"], handler: get(metrics), long: false },
        Route { path: "/openapi.json", methods: &["GET"], handler: get(openapi), long: false },
        Route { path: "/docs", methods: &["GET"], handler: get(docs), long: false },
    ]
}

/// The OpenAPI spec, embedded at build time from `openapi/openapi.yaml`.
pub const OPENAPI_YAML: &str = include_str!("../../openapi/openapi.yaml");

pub fn openapi_json() -> Value {
    serde_yaml::from_str(OPENAPI_YAML).expect("openapi/openapi.yaml is valid YAML")
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(state): State<AppState>) -> Response {
    let ok = state.ready.load(Ordering::SeqCst) && state.inference.is_alive() && state.store.ping().await;
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"status": if ok { "ready" } else { "starting" }}))).into_response()
}

async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let c = &state.counters;
    let s = &state.inference.stats;
    let queued = state.store.count_status(crate::job::JobStatus::Queued).await.unwrap_or(-1);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        // A sum of nothing can be -0.0, which reads as a negative count.
        let value = if value == 0.0 { 0.0 } else { value };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    metric("fpt_http_requests_total", "counter", "HTTP requests received.", get(&c.requests));
    metric("fpt_http_client_errors_total", "counter", "Responses with a 4xx status.", get(&c.client_errors));
    metric("fpt_http_server_errors_total", "counter", "Responses with a 5xx status.", get(&c.server_errors));
    metric("fpt_http_rejected_total", "counter", "Requests shed with 429 by the concurrency limit.", get(&c.rejected));
    metric("fpt_jobs_queued", "gauge", "Fine-tuning jobs waiting for a worker.", queued as f64);
    metric("fpt_jobs_running", "gauge", "Fine-tuning jobs training now.", state.queue.running() as f64);
    metric("fpt_training_samples_per_second", "gauge", "Training throughput over running jobs.", state.queue.training_samples_per_second());
    metric("fpt_predictions_requests_total", "counter", "Prediction requests.", get(&s.requests));
    metric("fpt_predictions_batches_total", "counter", "Forward passes run for predictions.", get(&s.batches));
    metric(
        "fpt_predictions_batch_rows_total",
        "counter",
        "Rows over all prediction batches (divide by batches for the mean batch size).",
        get(&s.batch_rows),
    );
    metric(
        "fpt_predictions_queue_wait_seconds_total",
        "counter",
        "Time prediction requests waited in the queue.",
        get(&s.queue_wait_us) / 1e6,
    );
    metric(
        "fpt_predictions_inference_seconds_total",
        "counter",
        "Time spent running prediction batches, summed per request.",
        get(&s.inference_us) / 1e6,
    );
    metric("fpt_adapter_loads_total", "counter", "Adapters loaded into the cache.", get(&s.adapter_loads));
    metric("fpt_adapter_evictions_total", "counter", "Adapters evicted from the cache.", get(&s.adapter_evictions));
    metric("fpt_predictions_rejected_total", "counter", "Prediction requests refused with 429 (queue full).", get(&s.rejected));
    metric("fpt_predictions_timeouts_total", "counter", "Prediction requests past their deadline (503).", get(&s.timeouts));
    metric("fpt_prediction_failures_total", "counter", "Prediction batches that failed (500), the batcher going on.", get(&s.failures));
    metric("fpt_inference_restarts_total", "counter", "Times the inference loop restarted after a failure.", get(&s.restarts));
    metric("fpt_adapters_loaded", "gauge", "Adapters in the cache now.", state.inference.loaded().len() as f64);
    // Projects' ids and use are the operator's to see: with an admin key, only with it.
    if state.settings.admin_key.is_none() || super::auth::is_admin(&state, &headers) {
        per_project(&state, &mut out).await;
    }
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

/// Each project's use of its quotas, labelled by project id.
async fn per_project(state: &AppState, out: &mut String) {
    let usage = state.store.usage_by_project().await.unwrap_or_default();
    let refused: Vec<(String, u64)> = state.rates.refused.lock().unwrap().iter().map(|(p, n)| (p.clone(), *n)).collect();
    let families: [(&str, &str, &str, Vec<(String, f64)>); 4] = [
        (
            "fpt_project_jobs_queued",
            "gauge",
            "Queued (or paused) jobs of each project.",
            usage.iter().map(|(p, u)| (p.clone(), u.queued_jobs as f64)).collect(),
        ),
        (
            "fpt_project_jobs_running",
            "gauge",
            "Running jobs of each project.",
            usage.iter().map(|(p, u)| (p.clone(), u.running_jobs as f64)).collect(),
        ),
        (
            "fpt_project_stored_bytes",
            "gauge",
            "Bytes of uploaded files each project keeps.",
            usage.iter().map(|(p, u)| (p.clone(), u.stored_bytes as f64)).collect(),
        ),
        (
            "fpt_project_rate_limited_total",
            "counter",
            "Requests refused with 429 for their rate, per project (this node).",
            refused.into_iter().map(|(p, n)| (p, n as f64)).collect(),
        ),
    ];
    for (name, kind, help, values) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (project, v) in values {
            // Project ids are the server's own (`proj_` and hex): nothing to escape.
            let _ = writeln!(out, "{name}{{project=\"{project}\"}} {v}");
        }
    }
}

async fn openapi() -> Json<Value> {
    Json(openapi_json())
}

/// A self-contained view of the spec (no CDN: the service may run offline).
async fn docs() -> Html<String> {
    Html(super::docs::page(&openapi_json()))
}
