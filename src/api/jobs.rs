//! `/v1/fine_tuning/jobs`: create (validated up front, queued), list, retrieve, cancel, pause,
//! resume, events (JSON or live Server-Sent Events) and checkpoints.
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{parse_json, ApiError, ApiResult};
use super::{idempotency_key, idempotent, list_of, request_hash, Accepts, AppState, Caller, ListQuery, Route};

const ROUTE: &str = "POST /v1/fine_tuning/jobs";

/// The one organization of a self-hosted service, as job objects name it.
pub const ORGANIZATION: &str = "org-fpt";
use crate::job::request::base_learning_rate;
use crate::job::{
    auto, budget, check_metadata, check_suffix, prepare_data, DataFiles, Effect, Inferred, JobStatus, RawSpec, Request, Requested,
    TrainSpec,
};
use crate::store::{EventRow, FileRow, Job, NewEvent, Page};
use crate::tasks::infer::infer_task;
use crate::tasks::{Generation, SpecError, TaskSpec};

pub fn routes() -> Vec<Route> {
    vec![
        // Creation reads a bounded body and checks the data up front: the request timeout covers
        // both, so a client trickling its body cannot hold a slot past it.
        Route { path: "/v1/fine_tuning/jobs", methods: &["GET", "POST"], handler: get(list).post(create), long: false },
        Route { path: "/v1/fine_tuning/jobs/{job_id}", methods: &["GET"], handler: get(retrieve), long: false },
        Route { path: "/v1/fine_tuning/jobs/{job_id}/cancel", methods: &["POST"], handler: post(cancel), long: false },
        Route { path: "/v1/fine_tuning/jobs/{job_id}/pause", methods: &["POST"], handler: post(pause), long: false },
        Route { path: "/v1/fine_tuning/jobs/{job_id}/resume", methods: &["POST"], handler: post(resume), long: false },
        Route { path: "/v1/fine_tuning/jobs/{job_id}/events", methods: &["GET"], handler: get(events), long: true },
        Route { path: "/v1/fine_tuning/jobs/{job_id}/checkpoints", methods: &["GET"], handler: get(checkpoints), long: false },
    ]
}

/// The request body of `POST /v1/fine_tuning/jobs`: fpt's fields and OpenAI's. `hyperparameters`
/// and `method` are read in either's form by [`Requested::parse`]; `task` may be left out for
/// the training file to tell.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    #[serde(default = "default_model")]
    pub model: String,
    pub task: Option<TaskSpec>,
    pub training_file: Option<String>,
    pub validation_file: Option<String>,
    pub hyperparameters: Option<Value>,
    pub method: Option<Value>,
    pub seed: Option<u64>,
    pub suffix: Option<String>,
    pub metadata: Option<serde_json::Map<String, Value>>,
    /// OpenAI's third-party integrations (Weights and Biases): none is run here.
    pub integrations: Option<Vec<Value>>,
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

impl CreateJob {
    /// The request's run, for the one parse.
    fn raw(&self, task: TaskSpec, requested: &Requested) -> RawSpec<String> {
        RawSpec {
            model: self.model.clone(),
            task,
            hyperparameters: requested.hyperparameters.clone(),
            method: requested.method.clone(),
            seed: self.seed.unwrap_or(0),
            files: DataFiles { train: self.training_file.clone(), valid: self.validation_file.clone(), test: None },
            device: self.device.clone(),
        }
    }
}

/// Where an uploaded file of the caller's, named by a request, is kept on this node.
async fn local_file(state: &AppState, caller: &Caller, param: &str, id: &Option<String>) -> ApiResult<Option<std::path::PathBuf>> {
    let Some(id) = id else { return Ok(None) };
    let f = state.store.file(caller.project_id(), id).await?.ok_or_else(|| ApiError::invalid(param, format!("file `{id}` not found")))?;
    Ok(Some(state.artifacts.local(&f.path).await?))
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        ApiError::invalid(e.field, e.message)
    }
}

/// A job in OpenAI's terms (every field its SDK requires, `method` as `supervised`), with fpt's
/// own beside them: the task, all of its hyperparameters and freeze switches, its result.
pub fn job_object(j: &Job) -> Value {
    let spec = &j.spec;
    let h = &spec.hyperparameters;
    // A searched learning rate is "auto" until the search has chosen it (the job's result says).
    let searched = h.search_learning_rate.then(|| j.result.as_ref().and_then(|r| r.lr));
    let multiplier = match searched {
        None => json!(h.learning_rate / base_learning_rate()),
        Some(None) => json!("auto"),
        Some(Some(lr)) => json!(lr / base_learning_rate()),
    };
    let mut hyperparameters = serde_json::to_value(h).unwrap_or_else(|_| json!({}));
    hyperparameters["learning_rate_multiplier"] = multiplier.clone();
    if let Some(chosen) = searched {
        hyperparameters["learning_rate"] = chosen.map_or(json!("auto"), |lr| json!(lr));
    }
    let openai = json!({"n_epochs": h.n_epochs, "batch_size": h.batch_size, "learning_rate_multiplier": multiplier});
    json!({
        "id": j.id, "object": "fine_tuning.job", "model": spec.model,
        "organization_id": ORGANIZATION, "project_id": j.project_id,
        "task": spec.task,
        "status": j.status, "created_at": j.created_at, "started_at": j.started_at, "finished_at": j.finished_at,
        "estimated_finish": estimated_finish(j),
        "fine_tuned_model": j.fine_tuned_model,
        "hyperparameters": hyperparameters,
        "method": {"type": "supervised", "supervised": {"hyperparameters": openai}, "fpt": spec.switches},
        "training_file": spec.files.train, "validation_file": spec.files.valid,
        "result_files": j.result_file.iter().collect::<Vec<_>>(), "trained_tokens": j.result.as_ref().and_then(|r| r.trained_tokens), "integrations": [],
        "seed": spec.seed, "suffix": j.suffix, "user_provided_suffix": j.suffix, "trained_steps": j.trained_steps,
        "result": j.result.as_ref().map_or(json!({}), |r| json!(r)), "error": j.error,
        "metadata": j.metadata, "device": spec.device.as_str(), "request_id": j.request_id, "inferred": j.inferred,
    })
}

/// When a running job of a known step count will end at its pace so far. An ensemble's steps are
/// its first member's (see [`crate::job::run::train_members`]), which say nothing of the others':
/// it has none.
fn estimated_finish(j: &Job) -> Option<i64> {
    let h = &j.spec.hyperparameters;
    let (started, done) = (j.started_at?, j.trained_steps);
    if j.status != JobStatus::Running || h.n_epochs.is_some() || done <= 0 || h.ensemble > 1 {
        return None;
    }
    let now = crate::store::now();
    let left = (h.n_steps as i64).saturating_sub(done).max(0);
    Some(now + (now - started).max(0).saturating_mul(left) / done)
}

#[tracing::instrument(skip_all, fields(job))]
async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let key = idempotency_key(&headers, &caller);
    let s = state.clone();
    let hash = request_hash(ROUTE, &[&body]);
    idempotent(&state, key, ROUTE, &hash, || async move {
        if !headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|c| c.starts_with("application/json")) {
            return Err(ApiError::bad_request("expected a JSON body (content-type: application/json)"));
        }
        let req: CreateJob = parse_json(&body)?;
        let request_id = super::request_id(&headers).map(str::to_string);
        create_job(&s, &caller, req, request_id).await.map(|v| (StatusCode::OK, v))
    })
    .await
}

/// Parses a job request completely (model, task, hyperparameters, files against the task)
/// before anything is queued; what the request left open (its task, `"auto"` values) is decided
/// here, on the loaded data, and recorded on the job.
async fn create_job(state: &AppState, caller: &Caller, mut req: CreateJob, request_id: Option<String>) -> ApiResult<Value> {
    let requested = Requested::parse(req.hyperparameters.take(), req.method.take())?;
    if let Some(s) = &req.suffix {
        check_suffix(s)?;
    }
    if let Some(m) = &req.metadata {
        check_metadata(m)?;
    }
    if req.integrations.as_ref().is_some_and(|i| !i.is_empty()) {
        return Err(ApiError::invalid("integrations", "no integrations are run by this service; leave integrations out"));
    }
    let inferred = Inferred { task: req.task.is_none(), hyperparameters: requested.auto.clone() };
    let task = match &req.task {
        Some(t) => t.clone(),
        None => infer(state, caller, &req.training_file).await?,
    };
    let mut spec = TrainSpec::parse(req.raw(task, &requested), &state.settings.limits)?;
    let train = local_file(state, caller, "training_file", &spec.files.train).await?;
    let valid = local_file(state, caller, "validation_file", &spec.files.valid).await?;
    let shown = without_folders(&[&train, &valid]);
    let local = spec.clone().with_files(DataFiles { train, valid, test: None });
    let (registry, limits) = (state.registry.clone(), state.settings.limits.clone());
    // Load the data once against the task and the backbone's positions: a mismatch is the
    // client's error, named now rather than as a failed job later.
    let (n_train, max_positions) = blocking(move || {
        let p = prepare_data(&local, &registry, &limits).map_err(|e| ApiError::invalid(e.field, shown(format!("{:#}", e.error))))?;
        let positions = p.base.backbone_config().map_err(|e| ApiError::invalid("model", format!("{e:#}")))?.max_positions as usize;
        Ok::<_, ApiError>((p.task.info.train_samples, positions))
    })
    .await??;
    if !inferred.hyperparameters.is_empty() {
        spec.hyperparameters = auto::resolve(&spec.hyperparameters, &inferred.hyperparameters, n_train);
        budget(&spec.hyperparameters, n_train, &state.settings.limits).map_err(|e| ApiError::invalid(e.field, format!("{:#}", e.error)))?;
    }
    caller.may_queue_a_job(&state.store).await?;
    let mut job =
        Job { api_key_id: caller.key_id(), inferred, ..Job::queued(caller.project_id(), spec, req.suffix, req.metadata, request_id) };
    tracing::Span::current().record("job", job.id.as_str());
    // The parse refused any file for a task that generates its data: the job gets its own.
    if !job.spec.task.needs_file() {
        store_generated_data(state, caller, &mut job, max_positions).await?;
    }
    state.store.insert_job(&job).await?;
    state.queue.notify();
    Ok(job_object(&job))
}

/// A job on a generated task gets the data it trains on as files of its project, named as its
/// `training_file` (and `validation_file`): downloadable, and what makes the run reproducible.
async fn store_generated_data(state: &AppState, caller: &Caller, job: &mut Job, max_positions: usize) -> ApiResult<()> {
    let h = &job.spec.hyperparameters;
    let run = Generation { seed: job.spec.seed, max_positions, batch_size: h.batch_size, n_steps: h.n_steps };
    let task = job.spec.task.clone();
    let files = blocking(move || task.task().generated_files(&task, &run)).await?.map_err(ApiError::Internal)?;
    // They are the project's files like its uploads, and count against its storage as they do.
    caller.may_store(&state.store, files.iter().map(|f| f.bytes.len() as i64).sum()).await?;
    let tail = job.id.trim_start_matches("ftjob-");
    for f in files {
        let id = format!("file-{tail}-{}", f.split);
        let name = format!("{}-{}.{}", job.id, f.split, f.extension);
        let row =
            FileRow::written(id, name, "fine-tune", f.format, f.samples, f.bytes.len(), (caller.project_id(), caller.key_id().as_deref()));
        state.artifacts.put(&row.path, f.bytes).await?;
        state.store.insert_file(&row).await?;
        match f.split {
            "training" => job.spec.files.train = Some(row.id),
            _ => job.spec.files.valid = Some(row.id),
        }
    }
    Ok(())
}

/// The task of a request that names none, from its training file.
async fn infer(state: &AppState, caller: &Caller, training_file: &Option<String>) -> ApiResult<TaskSpec> {
    let path = local_file(state, caller, "training_file", training_file)
        .await?
        .ok_or_else(|| ApiError::invalid("task", "name a task, or a training_file to infer it from"))?;
    let shown = without_folders(&[&Some(path.clone())]);
    blocking(move || infer_task(&path).map_err(|e| ApiError::invalid(e.field, shown(e.message)))).await?
}

/// A message about the files at `paths` as clients know them, by id: the folders they are kept
/// in stay out.
fn without_folders(paths: &[&Option<std::path::PathBuf>]) -> impl Fn(String) -> String + Send + 'static {
    let dirs: Vec<String> = paths.iter().copied().flatten().filter_map(|p| p.parent()).map(|d| format!("{}/", d.display())).collect();
    move |msg: String| dirs.iter().fold(msg, |m, d| m.replace(d.as_str(), ""))
}

/// Runs `f` on the blocking pool (reading and checking data).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(e.into()))
}

async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let q = ListQuery::parse(q.as_deref(), &Accepts::JOBS)?;
    let rows = state.store.jobs(caller.project_id(), &q.metadata, &Page { after: q.after.as_deref(), limit: q.limit + 1 }).await?;
    Ok(list_of(&rows, q.limit, job_object))
}

/// The caller's job `id`; another project's is as missing as one that never was.
async fn find(state: &AppState, caller: &Caller, id: &str) -> ApiResult<Job> {
    let job = state.store.job(id).await?.filter(|j| j.project_id == caller.project_id());
    job.ok_or_else(|| ApiError::not_found("fine-tuning job", id))
}

async fn retrieve(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(job_object(&find(&state, &caller, &id).await?)))
}

/// Carries out a client's request on a job, as its status allows (`JobStatus::on`). A move the
/// store refuses means the job changed meanwhile: read it again and decide anew.
#[tracing::instrument(skip(state))]
async fn change(state: &AppState, caller: &Caller, id: &str, request: Request) -> ApiResult<Json<Value>> {
    for _ in 0..8 {
        let job = find(state, caller, id).await?;
        match job.status.on(request).map_err(|why| ApiError::Conflict(format!("job `{id}` {why}")))? {
            Effect::Move { to, desired } => {
                if let Some(d) = desired {
                    state.store.set_desired(id, d).await?;
                }
                if !state.store.transition(id, &[job.status], to).await? {
                    continue;
                }
                if to == JobStatus::Queued {
                    state.queue.notify();
                }
                let message = match to {
                    JobStatus::Cancelled => "Job cancelled".to_string(),
                    JobStatus::Paused => "Job paused while queued".to_string(),
                    _ => format!("Job resumed: {to} again"),
                };
                state.events.send(NewEvent::from_api(id, message));
                state.events.flush().await;
            }
            Effect::Ask(desired) => {
                // The worker stops within a step and records the outcome.
                state.store.set_desired(id, desired).await?;
                state.queue.signal(id, desired);
                // The worker stops within a step: the answer waits (a while) for it, so that a
                // cancel answers `cancelled` as OpenAI's does. The worker may also have let the
                // job go (paused it, handed it back) just before: then the request is decided
                // again on what the job is now. A job that has ended (as asked, or finished
                // first), or paused as asked, is answered as it is.
                let now = settled(state, caller, id).await?;
                let paused_as_asked = request == Request::Pause && now == JobStatus::Paused;
                if now != JobStatus::Running && !now.is_terminal() && !paused_as_asked {
                    continue;
                }
            }
        }
        return Ok(Json(job_object(&find(state, caller, id).await?)));
    }
    Err(ApiError::Conflict(format!("job `{id}` keeps changing; try again")))
}

/// How long a cancel or pause of a running job waits for its worker to stop it.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The job's status once it is no longer running, or after [`STOP_WAIT`].
async fn settled(state: &AppState, caller: &Caller, id: &str) -> ApiResult<JobStatus> {
    let waited = tokio::time::Instant::now();
    loop {
        let now = find(state, caller, id).await?.status;
        if now != JobStatus::Running || waited.elapsed() >= STOP_WAIT {
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cancel(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    change(&state, &caller, &id, Request::Cancel).await
}

async fn pause(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    change(&state, &caller, &id, Request::Pause).await
}

async fn resume(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    change(&state, &caller, &id, Request::Resume).await
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
    RawQuery(q): RawQuery,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let q = ListQuery::parse(q.as_deref(), &Accepts::EVENTS)?;
    find(&state, &caller, &id).await?;
    let after = q.after.as_deref().map(|a| event_seq(a, "after")).transpose()?;
    if !q.stream {
        // Newest first, as OpenAI lists them: `after` pages on to older events.
        let rows = state.store.events_newest_first(&id, after, q.limit + 1).await?;
        return Ok(list_of(&rows, q.limit, event_object).into_response());
    }
    // The stream runs oldest first, resuming after `Last-Event-ID` (or `after`).
    let mut after = after.unwrap_or(0);
    if let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        after = event_seq(last, "Last-Event-ID")?;
    }
    // Each live stream holds a slot: a client opening streams without end gets a 429 once it holds
    // its share, a crowd once they are all taken.
    let permit = state.streams.take(&caller.client).ok_or(ApiError::Overloaded { retry_after: 5 })?;
    let store = state.store.clone();
    let stopping = state.stopping.clone();
    let (state, caller) = (state.clone(), caller.clone());
    let stream = async_stream::stream! {
        let _permit = permit;
        let mut polls = 0u64;
        loop {
            // A key revoked (or its project archived) while it watches ends its stream within seconds.
            polls += 1;
            if polls % 25 == 0 && !super::auth::still_valid(&state, &caller).await {
                break;
            }
            // Read the status before the events: a finished job's last events are then in this read.
            let finished = match store.job(&id).await {
                Ok(Some(j)) => j.status.is_terminal(),
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
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    // The server is stopping: end the stream (a client reconnects with Last-Event-ID).
                    _ = stopping.cancelled() => break,
                }
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))).into_response())
}

async fn checkpoints(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = ListQuery::parse(q.as_deref(), &Accepts::CHECKPOINTS)?;
    find(&state, &caller, &id).await?;
    let rows = state.store.checkpoints(&id, &Page { after: q.after.as_deref(), limit: q.limit + 1 }).await?;
    Ok(list_of(&rows, q.limit, |c| {
        json!({
            "id": c.id, "object": "fine_tuning.job.checkpoint", "created_at": c.created_at, "step_number": c.step_number,
            "metrics": c.metrics.as_deref().and_then(|m| serde_json::from_str::<Value>(m).ok()).unwrap_or(json!({})),
            "fine_tuned_model_checkpoint": c.model_id, "fine_tuning_job_id": c.job_id,
        })
    }))
}
