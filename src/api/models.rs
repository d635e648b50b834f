//! `/v1/models`: base models (backbones) and fine-tuned adapters, their adapter files, and
//! loading/unloading them in the prediction cache.
use axum::extract::{Extension, Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::{list_response, Accepts, AppState, Caller, ListQuery, Route};
use crate::store::{ModelRow, Page};

pub fn routes() -> Vec<Route> {
    vec![
        Route { path: "/v1/models", methods: &["GET"], handler: get(list), long: false },
        Route { path: "/v1/models/{model_id}", methods: &["GET", "DELETE"], handler: get(retrieve).delete(delete), long: false },
        Route { path: "/v1/models/{model_id}/adapter", methods: &["GET"], handler: get(adapter), long: true },
        Route { path: "/v1/models/{model_id}/load", methods: &["POST"], handler: post(load), long: false },
        Route { path: "/v1/models/{model_id}/unload", methods: &["POST"], handler: post(unload), long: false },
    ]
}

fn fine_tuned_object(m: &ModelRow, loaded: bool) -> Value {
    json!({"id": m.id, "object": "model", "created": m.created_at, "owned_by": "user", "kind": "fine-tuned",
           "base_model": m.base_model, "job_id": m.job_id, "checkpoint_step": m.checkpoint_step, "loaded": loaded})
}

fn base_object(b: &crate::model::BaseModel) -> Value {
    let cfg = b.backbone_config().ok();
    json!({"id": b.name, "object": "model", "created": 0, "owned_by": "system", "kind": "base", "arch": b.arch,
           "hidden_size": cfg.as_ref().map(|c| c.hidden), "layers": cfg.as_ref().map(|c| c.layers),
           "max_positions": cfg.as_ref().map(|c| c.max_positions), "loaded": false})
}

/// Base models first (by name), then fine-tuned ones (newest first), paged by `after` and `limit`.
async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let q = ListQuery::parse(q.as_deref(), &Accepts::PAGED)?;
    let limit = q.limit;
    let loaded = state.inference.loaded();
    let registry = state.registry.clone();
    let bases = tokio::task::spawn_blocking(move || registry.list()).await.map_err(|e| ApiError::Internal(e.into()))?;
    let after_base = q.after.as_deref().and_then(|a| bases.iter().position(|b| b.name == a));
    let mut data: Vec<Value> = match (&q.after, after_base) {
        (None, _) => bases.iter().map(base_object).collect(),
        (Some(_), Some(i)) => bases[i + 1..].iter().map(base_object).collect(),
        (Some(_), None) => Vec::new(),
    };
    let after_model = if after_base.is_some() { None } else { q.after.as_deref() };
    if let Some(a) = after_model {
        state.store.model(caller.project_id(), a).await?.ok_or_else(|| ApiError::invalid("after", format!("`{a}` is not a model id")))?;
    }
    let wanted = (limit + 1 - data.len() as i64).max(0);
    if wanted > 0 {
        let rows = state.store.models(caller.project_id(), &Page { after: after_model, limit: wanted }).await?;
        data.extend(rows.iter().map(|m| fine_tuned_object(m, loaded.contains(&m.id))));
    }
    Ok(Json(list_response(data, limit, |v| v["id"].as_str().unwrap_or("").to_string())))
}

/// The caller's fine-tuned model `id`; another project's is as missing as one that never was.
pub async fn find_fine_tuned(state: &AppState, caller: &Caller, id: &str) -> ApiResult<ModelRow> {
    state.store.model(caller.project_id(), id).await?.ok_or_else(|| ApiError::not_found("model", id))
}

async fn retrieve(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    if let Some(m) = state.store.model(caller.project_id(), &id).await? {
        return Ok(Json(fine_tuned_object(&m, state.inference.loaded().contains(&m.id))));
    }
    let base = state.registry.list().into_iter().find(|b| b.name == id).ok_or_else(|| ApiError::not_found("model", &id))?;
    Ok(Json(base_object(&base)))
}

async fn delete(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    if state.store.model(caller.project_id(), &id).await?.is_none() {
        if state.registry.list().iter().any(|b| b.name == id) {
            return Err(ApiError::Conflict(format!("`{id}` is a base model; only fine-tuned models can be deleted")));
        }
        return Err(ApiError::not_found("model", &id));
    }
    let m = find_fine_tuned(&state, &caller, &id).await?;
    state.inference.unload(&id).await;
    state.store.delete_model(&id).await?;
    // The adapter's bytes go too, unless another model is the same file or the file is a
    // checkpoint its job may still resume from.
    let job_running = match state.store.job(&m.job_id).await? {
        Some(j) => !j.status.is_terminal(),
        None => false,
    };
    let resumable = job_running && m.checkpoint_step.is_some();
    if !resumable && !state.store.artifact_in_use(&m.path, &m.id).await? {
        if let Err(e) = state.artifacts.delete(&m.path).await {
            tracing::warn!(model = %id, error = format!("{e:#}"), "deleting a model's adapter");
        }
    }
    Ok(Json(json!({"id": id, "object": "model", "deleted": true})))
}

async fn adapter(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Response> {
    let m = find_fine_tuned(&state, &caller, &id).await?;
    let bytes = tokio::fs::read(state.artifacts.local(&m.path).await?).await.map_err(|e| ApiError::Internal(e.into()))?;
    let disposition = format!("attachment; filename=\"{}.safetensors\"", m.id);
    Ok(([("content-type", "application/octet-stream".to_string()), ("content-disposition", disposition)], bytes).into_response())
}

async fn load(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let m = find_fine_tuned(&state, &caller, &id).await?;
    state.inference.load(&m.id, state.artifacts.local(&m.path).await?).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(fine_tuned_object(&m, state.inference.loaded().contains(&m.id))))
}

async fn unload(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let m = find_fine_tuned(&state, &caller, &id).await?;
    state.inference.unload(&m.id).await;
    Ok(Json(fine_tuned_object(&m, false)))
}
