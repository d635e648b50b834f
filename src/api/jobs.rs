//! `/v1/fine_tuning/jobs`: create (validated up front, queued), list, retrieve, cancel, pause,
//! resume, events (JSON or live Server-Sent Events) and checkpoints.
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{parse_json, ApiError, ApiResult};
use super::{idempotency_key, idempotent, list_of, AppState, ListQuery, Route};
use crate::queue::Method;
use crate::store::{new_id, now, EventRow, JobRow, Page};
use crate::tasks::{DataSources, TaskData, TaskSpec};
use crate::train::{Command, TrainConfig};

pub fn routes() -> Vec<Route> {
    vec![
        Route { path: "/v1/fine_tuning/jobs", methods: &["GET", "POST"], handler: get(list).post(create), long: true },
        Route { path: "/v1/fine_tuning/jobs/{job_id}", methods: &["GET"], handler: get(retrieve), long: false },
        Route { path: "/v1/fine_tuning/jobs/{job_id}/cancel", methods: &["POST"], handler: post(cancel), long: false },
        Route { path: "/v1/fine_tuning/jobs/{job_id}/pause", methods: &["POST"], handler: post(pause), long: false },
        Route { path: "/v1/fine_tuning/jobs/{job_id}/resume", methods: &["POST"], handler: post(resume), long: false },
        Route { path: "/v1/fine_tuning/jobs/{job_id}/events", methods: &["GET"], handler: get(events), long: true },
        Route { path: "/v1/fine_tuning/jobs/{job_id}/checkpoints", methods: &["GET"], handler: get(checkpoints), long: false },
    ]
}

/// The request body of `POST /v1/fine_tuning/jobs`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    #[serde(default = "default_model")]
    pub model: String,
    pub task: TaskSpec,
    pub training_file: Option<String>,
    pub validation_file: Option<String>,
    #[serde(default)]
    pub hyperparameters: TrainConfig,
    #[serde(default)]
    pub method: Method,
    #[serde(default)]
    pub seed: u64,
    pub suffix: Option<String>,
    pub metadata: Option<serde_json::Map<String, Value>>,
    /// The device kind the job must train on: any (default), cpu or cuda.
    #[serde(default = "any_device")]
    pub device: String,
}

fn any_device() -> String {
    "any".into()
}

fn default_model() -> String {
    "gpt2".into()
}

pub fn job_object(j: &JobRow) -> Value {
    let parse = |s: &Option<String>| s.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok());
    json!({
        "id": j.id, "object": "fine_tuning.job", "model": j.model,
        "task": serde_json::from_str::<Value>(&j.task).unwrap_or(Value::Null),
        "status": j.status, "created_at": j.created_at, "started_at": j.started_at, "finished_at": j.finished_at,
        "fine_tuned_model": j.fine_tuned_model,
        "hyperparameters": serde_json::from_str::<Value>(&j.hyperparameters).unwrap_or(Value::Null),
        "method": serde_json::from_str::<Value>(&j.method).unwrap_or(Value::Null),
        "training_file": j.training_file, "validation_file": j.validation_file,
        "seed": j.seed, "suffix": j.suffix, "trained_steps": j.trained_steps,
        "result": parse(&j.result).unwrap_or(json!({})), "error": parse(&j.error),
        "metadata": parse(&j.metadata), "device": j.device,
    })
}

async fn create(State(state): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let key = idempotency_key(&headers);
    let s = state.clone();
    idempotent(&state, key, "POST /v1/fine_tuning/jobs", || async move {
        if !headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|c| c.starts_with("application/json")) {
            return Err(ApiError::bad_request("expected a JSON body (content-type: application/json)"));
        }
        let req: CreateJob = parse_json(&body)?;
        create_job(&s, req).await.map(|v| (StatusCode::OK, v))
    })
    .await
}

/// Validates a job request completely (model, task, hyperparameters, files against the task)
/// before anything is queued.
async fn create_job(state: &AppState, req: CreateJob) -> ApiResult<Value> {
    req.task.validate().map_err(|e| ApiError::invalid(e.field, e.message))?;
    req.hyperparameters.validate().map_err(|e| ApiError::invalid(e.field, e.message))?;
    if req.method.kind != "fpt" {
        return Err(ApiError::invalid("method.type", format!("method `{}` is not supported (fpt)", req.method.kind)));
    }
    if let Some(s) = &req.suffix {
        if s.is_empty() || s.len() > 40 || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ApiError::invalid("suffix", "1 to 40 characters of letters, digits, `-` and `_`"));
        }
    }
    if !matches!(req.device.as_str(), "any" | "cpu" | "cuda") {
        return Err(ApiError::invalid("device", format!("device `{}` is not one of any, cpu, cuda", req.device)));
    }
    if req.task.needs_file() && req.training_file.is_none() {
        return Err(ApiError::invalid("training_file", format!("task `{}` needs a training file", req.task.name())));
    }
    let mut paths = Vec::new();
    for (param, id) in [("training_file", &req.training_file), ("validation_file", &req.validation_file)] {
        paths.push(match id {
            Some(id) => {
                let f = state.store.file(id).await?.ok_or_else(|| ApiError::invalid(param, format!("file `{id}` not found")))?;
                Some(state.artifacts.local(&f.path).await?)
            }
            None => None,
        });
    }
    let registry = state.registry.clone();
    let (model, task, hyper, seed) = (req.model.clone(), req.task.clone(), req.hyperparameters.clone(), req.seed);
    // Load the data once against the task and the backbone's positions: a mismatch is the
    // client's error, named now rather than as a failed job later.
    let files_dir = paths.iter().flatten().filter_map(|p| p.parent()).map(|d| format!("{}/", d.display())).next().unwrap_or_default();
    tokio::task::spawn_blocking(move || -> ApiResult<()> {
        let base = registry.resolve(&model).map_err(|e| ApiError::invalid("model", format!("{e:#}")))?;
        let positions = base.backbone_config().map_err(|e| ApiError::invalid("model", format!("{e:#}")))?.max_positions as usize;
        let src = DataSources {
            train: paths[0].as_deref(),
            valid: paths[1].as_deref(),
            test: None,
            valid_fraction: hyper.validation_fraction,
            seed,
            max_positions: positions,
        };
        TaskData::load(&task, &src).map_err(|e| {
            let msg = format!("{e:#}");
            let in_valid = paths[1].as_ref().is_some_and(|p| msg.contains(&p.display().to_string()));
            let param = if in_valid {
                "validation_file"
            } else if task.needs_file() {
                "training_file"
            } else {
                "task"
            };
            // Clients know files by id: the folder they live in stays out of the message.
            ApiError::invalid(param, msg.replace(&files_dir, ""))
        })?;
        Ok(())
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    let job = JobRow {
        id: new_id("ftjob"),
        model: req.model,
        task: serde_json::to_string(&req.task).unwrap(),
        status: "queued".into(),
        created_at: now(),
        started_at: None,
        finished_at: None,
        fine_tuned_model: None,
        hyperparameters: serde_json::to_string(&req.hyperparameters).unwrap(),
        method: serde_json::to_string(&req.method).unwrap(),
        training_file: req.training_file,
        validation_file: req.validation_file,
        seed: req.seed as i64,
        suffix: req.suffix,
        trained_steps: 0,
        result: None,
        error: None,
        metadata: req.metadata.map(|m| Value::Object(m).to_string()),
        desired: "run".into(),
        worker: None,
        lease_until: None,
        device: req.device,
    };
    state.store.insert_job(&job).await?;
    state.queue.notify();
    Ok(job_object(&job))
}

async fn list(State(state): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    let limit = q.limit()?;
    let rows = state.store.jobs(&Page { after: q.after.as_deref(), limit: limit + 1 }).await?;
    Ok(list_of(&rows, limit, job_object))
}

async fn find(state: &AppState, id: &str) -> ApiResult<JobRow> {
    state.store.job(id).await?.ok_or_else(|| ApiError::not_found("fine-tuning job", id))
}

async fn retrieve(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(job_object(&find(&state, &id).await?)))
}

fn terminal(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "cancelled")
}

async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = find(&state, &id).await?;
    if terminal(&job.status) {
        return Err(ApiError::Conflict(format!("job `{id}` is already {}", job.status)));
    }
    if !state.store.transition(&id, &["queued", "paused", "validating_files"], "cancelled").await? {
        // Running: the worker stops within a step and records `cancelled`.
        state.store.set_desired(&id, "cancel").await?;
        state.queue.signal(&id, Command::Cancel);
    }
    Ok(Json(job_object(&find(&state, &id).await?)))
}

async fn pause(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = find(&state, &id).await?;
    match job.status.as_str() {
        "queued" => {
            state.store.transition(&id, &["queued"], "paused").await?;
        }
        "running" => {
            state.store.set_desired(&id, "pause").await?;
            state.queue.signal(&id, Command::Pause);
        }
        s => return Err(ApiError::Conflict(format!("job `{id}` is {s}; only a queued or running job can be paused"))),
    }
    Ok(Json(job_object(&find(&state, &id).await?)))
}

async fn resume(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = find(&state, &id).await?;
    if job.status != "paused" {
        return Err(ApiError::Conflict(format!("job `{id}` is {}; only a paused job can be resumed", job.status)));
    }
    state.store.set_desired(&id, "run").await?;
    state.store.transition(&id, &["paused"], "queued").await?;
    state.queue.notify();
    Ok(Json(job_object(&find(&state, &id).await?)))
}

fn event_object(e: &EventRow) -> Value {
    json!({
        "id": format!("ftevent-{}", e.seq), "object": "fine_tuning.job.event", "created_at": e.created_at,
        "level": e.level, "type": e.kind, "message": e.message,
        "data": e.data.as_deref().and_then(|d| serde_json::from_str::<Value>(d).ok()),
    })
}

fn event_seq(id: &str, param: &str) -> ApiResult<i64> {
    id.strip_prefix("ftevent-").and_then(|s| s.parse().ok()).ok_or_else(|| ApiError::invalid(param, format!("`{id}` is not an event id")))
}

async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    find(&state, &id).await?;
    let mut after = match &q.after {
        Some(a) => event_seq(a, "after")?,
        None => 0,
    };
    if !q.stream.unwrap_or(false) {
        let limit = q.limit()?;
        let rows = state.store.events(&id, after, limit + 1).await?;
        return Ok(list_of(&rows, limit, event_object).into_response());
    }
    if let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        after = event_seq(last, "Last-Event-ID")?;
    }
    let store = state.store.clone();
    let stream = async_stream::stream! {
        loop {
            // Read the status before the events: a finished job's last events are then in this read.
            let finished = match store.job(&id).await {
                Ok(Some(j)) => terminal(&j.status),
                _ => true,
            };
            let rows = store.events(&id, after, 500).await.unwrap_or_default();
            for e in &rows {
                after = e.seq;
                yield Ok::<_, Infallible>(Event::default().id(format!("ftevent-{}", e.seq)).data(event_object(e).to_string()));
            }
            if rows.is_empty() {
                if finished {
                    yield Ok(Event::default().data("[DONE]"));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))).into_response())
}

async fn checkpoints(State(state): State<AppState>, Path(id): Path<String>, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    find(&state, &id).await?;
    let limit = q.limit()?;
    let rows = state.store.checkpoints(&id, &Page { after: q.after.as_deref(), limit: limit + 1 }).await?;
    Ok(list_of(&rows, limit, |c| {
        json!({
            "id": c.id, "object": "fine_tuning.job.checkpoint", "created_at": c.created_at, "step_number": c.step_number,
            "metrics": c.metrics.as_deref().and_then(|m| serde_json::from_str::<Value>(m).ok()).unwrap_or(json!({})),
            "fine_tuned_model_checkpoint": c.model_id, "fine_tuning_job_id": c.job_id,
        })
    }))
}
