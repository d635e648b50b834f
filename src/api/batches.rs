//! `/v1/batches`: bulk predictions in OpenAI's shapes. An input file (purpose `batch`, checked
//! line by line at upload) holds `{"custom_id", "method": "POST", "url": "/v1/predictions",
//! "body": {"model", "inputs"}}` lines; [`super::batch_runner`] answers them in the background and
//! writes an output file and an error file of OpenAI's format.
use std::collections::HashSet;

use axum::extract::{Extension, Path, RawQuery, State};
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiJson, ApiResult};
use super::predictions::PredictRequest;
use super::{list_of, Accepts, AppState, Caller, ListQuery, Route};
use crate::data::{numbered_lines, utf8_text, DataError};
use crate::job::check_metadata;
use crate::store::{new_id, now, BatchRow, Page};

/// The one endpoint a batch's lines may name.
pub const ENDPOINT: &str = "/v1/predictions";
/// OpenAI's one completion window.
pub const WINDOW: &str = "24h";
/// Most lines an input file holds (OpenAI's bound).
pub const MAX_LINES: usize = 50_000;
/// Longest `custom_id`.
const MAX_CUSTOM_ID: usize = 256;

pub fn routes() -> Vec<Route> {
    vec![
        Route { path: "/v1/batches", methods: &["GET", "POST"], handler: get(list).post(create), long: false },
        Route { path: "/v1/batches/{batch_id}", methods: &["GET"], handler: get(retrieve), long: false },
        Route { path: "/v1/batches/{batch_id}/cancel", methods: &["POST"], handler: post(cancel), long: false },
    ]
}

/// One line of an input file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputLine {
    pub custom_id: String,
    pub method: String,
    pub url: String,
    pub body: PredictRequest,
}

/// The lines of an input file, each checked; the error names the line (1-based) and the problem.
pub fn read_input(bytes: &[u8], max_rows: usize) -> Result<Vec<InputLine>, DataError> {
    let mut lines = Vec::new();
    each_input_line(bytes, max_rows, &mut |l| lines.push(l))?;
    Ok(lines)
}

/// How many lines an input file holds, each checked as [`read_input`] does, one held at a time
/// (the upload's check).
pub fn count_input(bytes: &[u8], max_rows: usize) -> Result<usize, DataError> {
    each_input_line(bytes, max_rows, &mut |_| {})
}

/// Hands each checked line of an input file to `take`; how many there were.
fn each_input_line(bytes: &[u8], max_rows: usize, take: &mut dyn FnMut(InputLine)) -> Result<usize, DataError> {
    let text = utf8_text(bytes)?;
    let mut count = 0;
    let mut ids = HashSet::new();
    for (n, line) in numbered_lines(text).filter(|(_, l)| !l.trim().is_empty()) {
        let at = |message: String| DataError::at_line(n, message);
        if count == MAX_LINES {
            return Err(at(format!("more than {MAX_LINES} lines; split the batch")));
        }
        let l: InputLine = serde_json::from_str(line).map_err(|e| at(format!("not a batch request line: {e}")))?;
        if l.method != "POST" {
            return Err(at(format!("method `{}`: only POST is taken", l.method)));
        }
        if l.url != ENDPOINT {
            return Err(at(format!("url `{}`: only {ENDPOINT} is taken", l.url)));
        }
        if l.custom_id.is_empty() || l.custom_id.chars().count() > MAX_CUSTOM_ID {
            return Err(at(format!("custom_id must be 1 to {MAX_CUSTOM_ID} characters")));
        }
        if !ids.insert(l.custom_id.clone()) {
            return Err(at(format!("custom_id `{}` is given twice", l.custom_id)));
        }
        if l.body.inputs.is_empty() || l.body.inputs.len() > max_rows {
            return Err(at(format!("body.inputs must hold 1 to {max_rows} samples")));
        }
        take(l);
        count += 1;
    }
    if count == 0 {
        return Err(DataError::file("the input file holds no request lines"));
    }
    Ok(count)
}

/// The one completion window OpenAI offers, `24h`: a batch not answered by then ends `expired`.
pub const COMPLETION_WINDOW_SECS: i64 = 86_400;

/// A batch in OpenAI's shape.
pub fn batch_object(b: &BatchRow) -> Value {
    let parse = |t: &Option<String>| t.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok());
    json!({
        "id": b.id, "object": "batch", "endpoint": b.endpoint, "input_file_id": b.input_file_id,
        "completion_window": b.completion_window, "status": b.status,
        "output_file_id": b.output_file_id, "error_file_id": b.error_file_id, "errors": parse(&b.errors),
        "created_at": b.created_at, "in_progress_at": b.in_progress_at, "expires_at": b.created_at + COMPLETION_WINDOW_SECS,
        "finalizing_at": b.finalizing_at, "completed_at": b.completed_at, "failed_at": b.failed_at,
        "expired_at": b.expired_at, "cancelling_at": b.cancelling_at, "cancelled_at": b.cancelled_at,
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "metadata": parse(&b.metadata),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    metadata: Option<serde_json::Map<String, Value>>,
}

async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CreateBatch>,
) -> ApiResult<Json<Value>> {
    if req.endpoint != ENDPOINT {
        return Err(ApiError::invalid("endpoint", format!("endpoint `{}` is not served here ({ENDPOINT})", req.endpoint)));
    }
    if req.completion_window != WINDOW {
        return Err(ApiError::invalid("completion_window", format!("completion_window must be {WINDOW}")));
    }
    if let Some(m) = &req.metadata {
        check_metadata(m)?;
    }
    let file = state
        .store
        .file(caller.project_id(), &req.input_file_id)
        .await?
        .ok_or_else(|| ApiError::invalid("input_file_id", format!("file `{}` not found", req.input_file_id)))?;
    if file.purpose != "batch" {
        return Err(ApiError::invalid("input_file_id", format!("file `{}` has purpose `{}`, not batch", file.id, file.purpose)));
    }
    let b = BatchRow {
        id: new_id("batch"),
        project_id: caller.project_id().to_string(),
        api_key_id: caller.key_id(),
        input_file_id: file.id,
        endpoint: req.endpoint,
        completion_window: req.completion_window,
        status: "validating".into(),
        created_at: now(),
        in_progress_at: None,
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        cancelling_at: None,
        cancelled_at: None,
        expired_at: None,
        total: file.samples.unwrap_or(0),
        completed: 0,
        failed: 0,
        output_file_id: None,
        error_file_id: None,
        errors: None,
        metadata: req.metadata.map(|m| Value::Object(m).to_string()),
    };
    state.store.insert_batch(&b).await?;
    state.batches.notify_one();
    Ok(Json(batch_object(&b)))
}

async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let q = ListQuery::parse(q.as_deref(), &Accepts::PAGED)?;
    let rows = state.store.batches(caller.project_id(), &Page { after: q.after.as_deref(), limit: q.limit + 1 }).await?;
    Ok(list_of(&rows, q.limit, batch_object))
}

async fn retrieve(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let b = state.store.batch(caller.project_id(), &id).await?.ok_or_else(|| ApiError::not_found("batch", &id))?;
    Ok(Json(batch_object(&b)))
}

/// Asks a batch to stop: it answers `cancelling` until its runner has written the files of what
/// was answered, then `cancelled`.
async fn cancel(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let b = state.store.cancel_batch(caller.project_id(), &id).await?.ok_or_else(|| ApiError::not_found("batch", &id))?;
    if !matches!(b.status.as_str(), "cancelling" | "cancelled") {
        return Err(ApiError::Conflict(format!("batch `{id}` is {} and cannot be cancelled", b.status)));
    }
    state.batches.notify_one();
    Ok(Json(batch_object(&b)))
}
