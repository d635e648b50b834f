//! `POST /v1/predictions`: inputs validated like dataset records, answered by the batcher.
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiJson, ApiResult};
use super::{AppState, Caller, Route};
use crate::artifacts::Artifacts;
use crate::serve::{Inference, PredictError, PredictOutput};
use crate::store::Store;

pub fn routes() -> Vec<Route> {
    vec![Route { path: "/v1/predictions", methods: &["POST"], handler: post(predict), long: false }]
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    pub model: String,
    pub inputs: Vec<Value>,
}

#[tracing::instrument(skip_all, fields(model = %req.model, rows = req.inputs.len()))]
async fn predict(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PredictRequest>,
) -> ApiResult<Response> {
    let request_id = super::request_id(&headers).unwrap_or_default();
    let (body, out) = state.predictor.answer(caller.project_id(), req, request_id).await?;
    let mut resp = Json(body).into_response();
    let h = resp.headers_mut();
    h.insert("x-queue-time", HeaderValue::from_str(&format!("{:.3}", out.queue_time.as_secs_f64() * 1e3)).unwrap());
    h.insert("x-inference-time", HeaderValue::from_str(&format!("{:.3}", out.inference_time.as_secs_f64() * 1e3)).unwrap());
    Ok(resp)
}

/// What answers prediction requests, over HTTP on an API node or as a batch's lines on any node:
/// the store's models, their adapters, the shared batcher, and the bounds of one request.
#[derive(Clone)]
pub struct Predictor {
    pub store: Store,
    pub artifacts: Artifacts,
    pub inference: Inference,
    /// Samples one request may hold.
    pub max_rows: usize,
    /// How long a request may wait for its forward pass.
    pub timeout: Duration,
}

impl Predictor {
    /// The answer to a prediction request of `project`'s.
    pub async fn answer(&self, project: &str, req: PredictRequest, request_id: &str) -> ApiResult<(Value, PredictOutput)> {
        if req.inputs.is_empty() {
            return Err(ApiError::invalid("inputs", "at least one sample is needed"));
        }
        if req.inputs.len() > self.max_rows {
            return Err(ApiError::TooLarge { what: "inputs", limit: self.max_rows, unit: "samples" });
        }
        let m = self.store.model(project, &req.model).await?.ok_or_else(|| ApiError::not_found("model", &req.model))?;
        let adapter = self.artifacts.local(&m.path).await?;
        let out = self.inference.predict(request_id, &m.id, adapter, req.inputs, self.timeout).await.map_err(|e| match e {
            PredictError::Invalid(msg) => {
                let param = msg.split(':').next().unwrap_or("inputs").to_string();
                ApiError::invalid(param, msg)
            }
            PredictError::Overloaded => ApiError::Overloaded { retry_after: 1 },
            PredictError::Timeout => ApiError::Unavailable("the prediction waited past its deadline".into()),
            PredictError::Adapter(msg) => ApiError::Unavailable(format!("model `{}` cannot be loaded: {msg}", m.id)),
            failed @ PredictError::Failed(_) => ApiError::Failed(failed.to_string()),
        })?;
        let data: Vec<Value> = out
            .predictions
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut v = serde_json::to_value(p).unwrap();
                v["index"] = json!(i);
                v
            })
            .collect();
        Ok((json!({"object": "list", "model": m.id, "data": data}), out))
    }
}
