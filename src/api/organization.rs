//! `/v1/organization/projects`: projects and their API keys, managed with the admin key, in
//! OpenAI's shapes (plus each project's quotas); and `/v1/me`, a caller's own project.
use axum::extract::{Extension, Path, Query, State};
use axum::routing::{get, post};
use axum::Json;
use rand::RngCore;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::secret_sha256;
use super::error::{ApiError, ApiJson, ApiResult};
use super::{list_of, AppState, Caller, Route};
use crate::store::{now, ApiKeyRow, Page, ProjectRow, Quotas, DEFAULT_PROJECT};

/// Bounds of what an admin may create: names, projects, keys per project.
const MAX_NAME: usize = 256;
const MAX_PROJECTS: i64 = 10_000;
const MAX_KEYS_PER_PROJECT: i64 = 100;

/// The prefix of a project key's secret (OpenAI's, so that tools that recognise keys recognise these).
const KEY_PREFIX: &str = "sk-proj-";

pub fn routes() -> Vec<Route> {
    const PROJECTS: &str = "/v1/organization/projects";
    vec![
        Route { path: PROJECTS, methods: &["GET", "POST"], handler: get(list_projects).post(create_project), long: false },
        Route {
            path: "/v1/organization/projects/{project_id}",
            methods: &["GET", "POST"],
            handler: get(retrieve_project).post(modify_project),
            long: false,
        },
        Route { path: "/v1/organization/projects/{project_id}/archive", methods: &["POST"], handler: post(archive_project), long: false },
        Route {
            path: "/v1/organization/projects/{project_id}/api_keys",
            methods: &["GET", "POST"],
            handler: get(list_keys).post(create_key),
            long: false,
        },
        Route {
            path: "/v1/organization/projects/{project_id}/api_keys/{key_id}",
            methods: &["GET", "DELETE"],
            handler: get(retrieve_key).delete(revoke_key),
            long: false,
        },
        Route { path: "/v1/me", methods: &["GET"], handler: get(me), long: false },
    ]
}

fn project_object(p: &ProjectRow) -> Value {
    json!({"id": p.id, "object": "organization.project", "name": p.name, "created_at": p.created_at, "archived_at": p.archived_at,
           "status": if p.archived_at.is_some() { "archived" } else { "active" }, "quotas": p.quotas})
}

fn key_object(k: &ApiKeyRow) -> Value {
    json!({"id": k.id, "object": "organization.project.api_key", "name": k.name, "redacted_value": k.redacted_value,
           "created_at": k.created_at, "last_used_at": null, "project_id": k.project_id, "quotas": k.quotas,
           "owner": {"type": "service_account", "service_account": {"id": k.id, "name": k.name, "created_at": k.created_at}}})
}

/// `?after=&limit=&include_archived=` of the project list.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ProjectQuery {
    after: Option<String>,
    limit: Option<i64>,
    include_archived: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateProject {
    name: String,
    #[serde(default)]
    quotas: Quotas,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModifyProject {
    name: Option<String>,
    quotas: Option<Quotas>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    /// The key's own quotas within its project's.
    #[serde(default)]
    quotas: Quotas,
}

fn check_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::invalid("name", format!("a name is 1 to {MAX_NAME} characters, none of them control characters")));
    }
    Ok(name.to_string())
}

fn check_quotas(q: &Quotas) -> ApiResult<()> {
    for (name, v) in
        [("max_running_jobs", q.max_running_jobs), ("max_queued_jobs", q.max_queued_jobs), ("max_storage_bytes", q.max_storage_bytes)]
    {
        if v.is_some_and(|v| v < 0) {
            return Err(ApiError::invalid(format!("quotas.{name}"), "must be 0 (no limit) or more"));
        }
    }
    if q.requests_per_second.is_some_and(|r| !r.is_finite() || r < 0.0 || (r > 0.0 && r < super::auth::MIN_RPS)) {
        return Err(ApiError::invalid(
            "quotas.requests_per_second",
            format!("must be 0 (no limit) or a number of requests per second from {}", super::auth::MIN_RPS),
        ));
    }
    Ok(())
}

async fn list_projects(State(state): State<AppState>, Query(q): Query<ProjectQuery>) -> ApiResult<Json<Value>> {
    let limit = super::ListQuery::limit_only(q.limit)?;
    let rows = state.store.projects(&Page { after: q.after.as_deref(), limit: limit + 1 }, q.include_archived.unwrap_or(false)).await?;
    Ok(list_of(&rows, limit, project_object))
}

async fn create_project(State(state): State<AppState>, ApiJson(req): ApiJson<CreateProject>) -> ApiResult<Json<Value>> {
    let name = check_name(&req.name)?;
    check_quotas(&req.quotas)?;
    if state.store.count_projects().await? >= MAX_PROJECTS {
        return Err(ApiError::Conflict(format!("the organization holds its limit of {MAX_PROJECTS} projects")));
    }
    let p = ProjectRow { id: new_id("proj"), name, created_at: now(), archived_at: None, quotas: req.quotas };
    state.store.insert_project(&p).await?;
    Ok(Json(project_object(&p)))
}

async fn find_project(state: &AppState, id: &str) -> ApiResult<ProjectRow> {
    state.store.project(id).await?.ok_or_else(|| ApiError::not_found("project", id))
}

async fn retrieve_project(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(project_object(&find_project(&state, &id).await?)))
}

async fn modify_project(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ModifyProject>,
) -> ApiResult<Json<Value>> {
    let mut p = find_project(&state, &id).await?;
    if let Some(name) = &req.name {
        p.name = check_name(name)?;
    }
    if let Some(q) = req.quotas {
        check_quotas(&q)?;
        p.quotas = q;
    }
    state.store.update_project(&p).await?;
    Ok(Json(project_object(&p)))
}

async fn archive_project(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    find_project(&state, &id).await?;
    if id == DEFAULT_PROJECT {
        return Err(ApiError::Conflict("the default project cannot be archived: the --api-key keys and an open API use it".into()));
    }
    state.store.archive_project(&id).await?;
    Ok(Json(project_object(&find_project(&state, &id).await?)))
}

/// `?after=&limit=` of the key list.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KeyQuery {
    after: Option<String>,
    limit: Option<i64>,
}

async fn list_keys(State(state): State<AppState>, Path(project): Path<String>, Query(q): Query<KeyQuery>) -> ApiResult<Json<Value>> {
    find_project(&state, &project).await?;
    let limit = super::ListQuery::limit_only(q.limit)?;
    let rows = state.store.api_keys(&project, &Page { after: q.after.as_deref(), limit: limit + 1 }).await?;
    Ok(list_of(&rows, limit, key_object))
}

/// A new key: its secret is in this answer only; the store keeps its SHA-256.
async fn create_key(
    State(state): State<AppState>,
    Path(project): Path<String>,
    ApiJson(req): ApiJson<CreateKey>,
) -> ApiResult<Json<Value>> {
    let p = find_project(&state, &project).await?;
    let name = check_name(&req.name)?;
    check_quotas(&req.quotas)?;
    if p.archived_at.is_some() {
        return Err(ApiError::Conflict(format!("project `{project}` is archived")));
    }
    if state.store.count_api_keys(&project).await? >= MAX_KEYS_PER_PROJECT {
        return Err(ApiError::Conflict(format!("project `{project}` holds its limit of {MAX_KEYS_PER_PROJECT} keys; revoke one first")));
    }
    let mut random = [0u8; 32];
    rand::rng().fill_bytes(&mut random);
    let body = hex::encode(random);
    let secret = format!("{KEY_PREFIX}{body}");
    let k = ApiKeyRow {
        id: new_id("key"),
        project_id: project,
        name,
        redacted_value: format!("{KEY_PREFIX}{}...{}", &body[..3], &body[body.len() - 4..]),
        created_at: now(),
        revoked_at: None,
        quotas: req.quotas,
    };
    state.store.insert_api_key(&k, &secret_sha256(&secret)).await?;
    let mut v = key_object(&k);
    v["value"] = json!(secret);
    Ok(Json(v))
}

async fn find_key(state: &AppState, project: &str, id: &str) -> ApiResult<ApiKeyRow> {
    find_project(state, project).await?;
    state.store.api_key(project, id).await?.ok_or_else(|| ApiError::not_found("API key", id))
}

async fn retrieve_key(State(state): State<AppState>, Path((project, id)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    Ok(Json(key_object(&find_key(&state, &project, &id).await?)))
}

/// Revokes a key: every node refuses it from the next request on.
async fn revoke_key(State(state): State<AppState>, Path((project, id)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    find_key(&state, &project, &id).await?;
    state.store.revoke_api_key(&project, &id).await?;
    Ok(Json(json!({"object": "organization.project.api_key.deleted", "id": id, "deleted": true})))
}

/// The caller's project, its quotas in force and what it uses of them.
async fn me(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Value>> {
    let u = state.store.usage(caller.project_id()).await?;
    Ok(Json(json!({
        "object": "caller", "project": project_object(&caller.project), "quotas_in_force": caller.quotas,
        "usage": {"queued_jobs": u.queued_jobs, "running_jobs": u.running_jobs, "stored_bytes": u.stored_bytes},
    })))
}

/// `proj_…` and `key_…`, as OpenAI spells these ids.
fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", &uuid::Uuid::new_v4().simple().to_string()[..24])
}
