//! `/v1/models`: base models (backbones) and fine-tuned adapters, their adapter files, and
//! loading/unloading them in the prediction cache.
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::{AppState, Route};
use crate::store::ModelRow;

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

async fn list(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let loaded = state.inference.loaded();
    let registry = state.registry.clone();
    let bases = tokio::task::spawn_blocking(move || registry.list()).await.map_err(|e| ApiError::Internal(e.into()))?;
    let mut data: Vec<Value> = bases.iter().map(base_object).collect();
    data.extend(state.store.models().await?.iter().map(|m| fine_tuned_object(m, loaded.contains(&m.id))));
    let first = data.first().map(|v| v["id"].clone());
    let last = data.last().map(|v| v["id"].clone());
    Ok(Json(json!({"object": "list", "data": data, "has_more": false, "first_id": first, "last_id": last})))
}

pub async fn find_fine_tuned(state: &AppState, id: &str) -> ApiResult<ModelRow> {
    state.store.model(id).await?.ok_or_else(|| ApiError::not_found("model", id))
}

async fn retrieve(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    if let Some(m) = state.store.model(&id).await? {
        return Ok(Json(fine_tuned_object(&m, state.inference.loaded().contains(&m.id))));
    }
    let base = state.registry.list().into_iter().find(|b| b.name == id).ok_or_else(|| ApiError::not_found("model", &id))?;
    Ok(Json(base_object(&base)))
}

async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    if state.store.model(&id).await?.is_none() {
        if state.registry.list().iter().any(|b| b.name == id) {
            return Err(ApiError::Conflict(format!("`{id}` is a base model; only fine-tuned models can be deleted")));
        }
        return Err(ApiError::not_found("model", &id));
    }
    state.inference.unload(&id).await;
    state.store.delete_model(&id).await?;
    Ok(Json(json!({"id": id, "object": "model", "deleted": true})))
}

async fn adapter(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let m = find_fine_tuned(&state, &id).await?;
    let bytes = tokio::fs::read(state.artifacts.local(&m.path).await?).await.map_err(|e| ApiError::Internal(e.into()))?;
    let disposition = format!("attachment; filename=\"{}.safetensors\"", m.id);
    Ok(([("content-type", "application/octet-stream".to_string()), ("content-disposition", disposition)], bytes).into_response())
}

async fn load(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let m = find_fine_tuned(&state, &id).await?;
    state.inference.load(&m.id, state.artifacts.local(&m.path).await?).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(fine_tuned_object(&m, state.inference.loaded().contains(&m.id))))
}

async fn unload(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let m = find_fine_tuned(&state, &id).await?;
    state.inference.unload(&m.id).await;
    Ok(Json(fine_tuned_object(&m, false)))
}
