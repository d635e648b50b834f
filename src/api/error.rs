//! API errors: one enum, mapped to HTTP status and the contract's error object in one place. A 5xx
//! tells the client nothing private; the log gets everything.
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { message: String, param: Option<String> },
    #[error("missing or invalid API key")]
    Unauthorized,
    /// A valid key on a route it may not use (a project key on `/v1/organization/*`, the admin key
    /// elsewhere).
    #[error("{0}")]
    Forbidden(String),
    /// A project's (or its key's) quota is used up: retrying will not help until something is freed.
    #[error("the {scope}'s quota `{quota}` is used up (limit {limit})")]
    QuotaExceeded { scope: &'static str, quota: &'static str, limit: i64 },
    /// A project or key over its request rate.
    #[error("too many requests for this {who}; retry after {retry_after} s")]
    RateLimited { who: &'static str, retry_after: u64 },
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    /// `what` (the request body, or the field it names) is over its limit.
    #[error("{what} too large (limit {limit} {unit})")]
    TooLarge { what: &'static str, limit: usize, unit: &'static str },
    #[error("{message}")]
    Invalid { message: String, param: String },
    /// A body arriving slower than the server accepts.
    #[error("the request body arrives too slowly (the minimum is {rate} KiB/s after the first 10 s)")]
    TooSlow { rate: u64 },
    #[error("the server is busy; retry after {retry_after} s")]
    Overloaded { retry_after: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// The server failed at the work itself (not at anything private): said as it is, with a 500.
    #[error("{0}")]
    Failed(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// What a `TooLarge` names when the whole body is over the limit.
    pub const BODY: &'static str = "request body";

    /// A body over `limit` bytes.
    pub fn body_too_large(limit: usize) -> Self {
        ApiError::TooLarge { what: Self::BODY, limit, unit: "bytes" }
    }

    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid { param: param.into(), message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest { message: message.into(), param: None }
    }

    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        ApiError::NotFound { what, id: id.into() }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str, Option<String>) {
        match self {
            ApiError::BadRequest { param, .. } => (StatusCode::BAD_REQUEST, "invalid_request_error", "bad_request", param.clone()),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "authentication_error", "invalid_api_key", None),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "permission_error", "wrong_key_kind", None),
            ApiError::QuotaExceeded { quota, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "quota_exceeded", Some(quota.to_string()))
            }
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "rate_limit_exceeded", None),
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "invalid_request_error", "not_found", None),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "invalid_request_error", "invalid_state", None),
            ApiError::TooSlow { .. } => (StatusCode::REQUEST_TIMEOUT, "invalid_request_error", "too_slow", None),
            ApiError::TooLarge { what, .. } => {
                let param = (*what != ApiError::BODY).then(|| what.to_string());
                (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", "payload_too_large", param)
            }
            ApiError::Invalid { param, .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error", "invalid_value", Some(param.clone()))
            }
            ApiError::Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "overloaded", None),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "unavailable", None),
            ApiError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "failed", None),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error", None),
        }
    }
}

impl ApiError {
    /// The error's response, telling the client when to try again (and that it may).
    pub fn with_retry_after(self, seconds: u64) -> Response {
        let mut resp = self.into_response();
        resp.headers_mut().insert("retry-after", HeaderValue::from(seconds));
        resp.headers_mut().insert("x-should-retry", HeaderValue::from_static("true"));
        resp
    }
}

/// Most bytes of a non-JSON error body (a framework's rejection) carried into the error object.
const MAX_REJECTION_BYTES: usize = 4096;

/// An error response that is not the error object (a rejection of the framework's own: a bad
/// query string or path, a method the route does not take, a timeout) turned into one, its text
/// as the message: every error a client sees has the one shape.
pub async fn as_error_object(resp: Response) -> Response {
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    let text = match axum::body::to_bytes(body, MAX_REJECTION_BYTES).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    let (kind, code) = match status {
        StatusCode::METHOD_NOT_ALLOWED => ("invalid_request_error", "method_not_allowed"),
        StatusCode::NOT_FOUND => ("invalid_request_error", "not_found"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("invalid_request_error", "unsupported_media_type"),
        StatusCode::UNPROCESSABLE_ENTITY => ("invalid_request_error", "invalid_value"),
        StatusCode::SERVICE_UNAVAILABLE => ("server_error", "unavailable"),
        s if s.is_server_error() => ("server_error", "internal_error"),
        _ => ("invalid_request_error", "bad_request"),
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    let mut out = (status, Json(body)).into_response();
    for (name, value) in parts.headers.iter().filter(|(n, _)| *n == "allow" || *n == "retry-after" || *n == "x-request-id") {
        out.headers_mut().insert(name.clone(), value.clone());
    }
    out
}

impl ApiError {
    /// The status and the error object: a response's, or a batch line's.
    pub fn status_and_body(&self) -> (StatusCode, serde_json::Value) {
        let (status, kind, code, param) = self.parts();
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = format!("{e:#}"), "internal error");
        }
        (status, json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": code}}))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.status_and_body();
        let mut resp = (status, Json(body)).into_response();
        match self {
            ApiError::Overloaded { retry_after } | ApiError::RateLimited { retry_after, .. } => {
                resp.headers_mut().insert("retry-after", HeaderValue::from(retry_after));
            }
            // Clients that retry every 429 and 409 (the OpenAI SDK does) would only burn requests:
            // a used-up quota and a job in the wrong state stay so.
            ApiError::QuotaExceeded { .. } | ApiError::Conflict(_) => {
                resp.headers_mut().insert("x-should-retry", HeaderValue::from_static("false"));
            }
            _ => {}
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body parsed into `T`: malformed JSON is a 400, a wrong value a 422 naming its field.
pub struct ApiJson<T>(pub T);

impl<T> axum::extract::FromRequest<super::AppState> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &super::AppState) -> Result<Self, ApiError> {
        let ct = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if !ct.starts_with("application/json") {
            return Err(ApiError::bad_request("expected a JSON body (content-type: application/json)"));
        }
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::body_too_large(state.settings.max_body_bytes)
            } else {
                ApiError::bad_request(e.body_text())
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON into `T`, telling a syntax error (400) from a wrong value (422 with its path).
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        return Err(ApiError::bad_request(format!("malformed JSON: {e}")));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let param = if path == "." { String::new() } else { path };
        ApiError::invalid(param, e.inner().to_string())
    })
}
