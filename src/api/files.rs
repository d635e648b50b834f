//! `/v1/files`: datasets, detected and validated on upload; bad files are refused naming the record.

use axum::body::Bytes;
use axum::extract::multipart::Field;
use axum::extract::{DefaultBodyLimit, Extension, Multipart, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::{idempotency_key, idempotent, list_of, request_hash, Accepts, AppState, Caller, ListQuery, Order, Route};
use crate::artifacts::file_key;
use crate::store::{new_id, now, FileRow, Page};

pub fn routes() -> Vec<Route> {
    vec![
        Route {
            path: "/v1/files",
            methods: &["GET", "POST"],
            handler: get(list).post(upload).layer(DefaultBodyLimit::disable()),
            long: true,
        },
        Route { path: "/v1/files/{file_id}", methods: &["GET", "DELETE"], handler: get(retrieve).delete(delete), long: false },
        Route { path: "/v1/files/{file_id}/content", methods: &["GET"], handler: get(content), long: true },
    ]
}

pub fn file_object(f: &FileRow) -> Value {
    json!({"id": f.id, "object": "file", "bytes": f.bytes, "created_at": f.created_at, "filename": f.filename,
           "purpose": f.purpose, "format": f.format, "samples": f.samples, "status": "processed",
           "expires_at": null, "status_details": null})
}

async fn upload(State(state): State<AppState>, Extension(caller): Extension<Caller>, headers: HeaderMap, multipart: Multipart) -> Response {
    // The whole body is read (bounded) before anything is decided: its hash binds the key, and
    // answering while the client is still sending would cut the connection under it.
    let upload = match read_upload(&state, multipart).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let hash = request_hash(ROUTE, &[upload.purpose.as_bytes(), upload.filename.as_bytes(), &upload.bytes]);
    let s = state.clone();
    idempotent(&state, idempotency_key(&headers, &caller), ROUTE, &hash, || async move {
        store_upload(&s, &caller, upload).await.map(|v| (StatusCode::OK, v))
    })
    .await
}

const ROUTE: &str = "POST /v1/files";

/// A multipart upload, read and bounded.
struct Upload {
    bytes: Vec<u8>,
    purpose: String,
    filename: String,
}

/// Bytes of multipart fields other than `file` and `purpose` taken (and dropped) before a 413.
const MAX_OTHER_FIELDS: usize = 64 << 10;

/// The next chunk of `field`; the body's pace is watched by [`super::pace`].
async fn next_chunk(field: &mut Field<'_>) -> ApiResult<Option<Bytes>> {
    field.chunk().await.map_err(|e| ApiError::bad_request(format!("reading the upload: {e}")))
}

async fn read_upload(state: &AppState, mut multipart: Multipart) -> ApiResult<Upload> {
    let limit = state.settings.max_upload_bytes;
    let (mut file, mut purpose, mut filename, mut other) = (None, None, String::from("upload"), 0usize);
    loop {
        let next = multipart.next_field().await;
        let Some(mut field) = next.map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))? else { break };
        match field.name().unwrap_or("") {
            "file" => {
                filename = field.file_name().unwrap_or("upload").chars().filter(|c| !c.is_control()).take(255).collect();
                let mut buf = Vec::new();
                while let Some(chunk) = next_chunk(&mut field).await? {
                    if buf.len() + chunk.len() > limit {
                        return Err(ApiError::TooLarge { what: "file", limit, unit: "bytes" });
                    }
                    buf.extend_from_slice(&chunk);
                }
                file = Some(buf);
            }
            "purpose" => purpose = Some(small_text(&mut field, "purpose").await?),
            _ => {
                while let Some(chunk) = next_chunk(&mut field).await? {
                    other += chunk.len();
                    if other > MAX_OTHER_FIELDS {
                        return Err(ApiError::TooLarge { what: "multipart fields", limit: MAX_OTHER_FIELDS, unit: "bytes" });
                    }
                }
            }
        }
    }
    let bytes = file.ok_or_else(|| ApiError::invalid("file", "the multipart body has no `file` field"))?;
    Ok(Upload { bytes, purpose: purpose.unwrap_or_else(|| "fine-tune".into()), filename })
}

async fn store_upload(state: &AppState, caller: &Caller, upload: Upload) -> ApiResult<Value> {
    let Upload { bytes, purpose, filename } = upload;
    if purpose != "fine-tune" && purpose != "batch" {
        return Err(ApiError::invalid("purpose", format!("purpose `{purpose}` is not supported (fine-tune, batch)")));
    }
    caller.may_store(&state.store, bytes.len() as i64).await?;
    let name = filename.clone();
    let max_rows = state.settings.max_prediction_rows;
    let is_batch = purpose == "batch";
    let (bytes, info) = tokio::task::spawn_blocking(move || {
        let info = if is_batch {
            super::batches::count_input(&bytes, max_rows).map(|samples| crate::tasks::files::FileInfo { format: "batch_jsonl", samples })
        } else {
            crate::tasks::files::inspect_file(&name, &bytes)
        };
        (bytes, info)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?;
    let info = info.map_err(|e| ApiError::invalid("file", format!("{filename}: {e}")))?;
    let id = new_id("file");
    let key = file_key(&id);
    let len = bytes.len();
    state.artifacts.put(&key, bytes).await?;
    let row = FileRow {
        id,
        filename,
        purpose,
        bytes: len as i64,
        format: info.format.into(),
        samples: Some(info.samples as i64),
        created_at: now(),
        path: key,
        project_id: caller.project_id().to_string(),
        api_key_id: caller.key_id(),
    };
    state.store.insert_file(&row).await?;
    Ok(file_object(&row))
}

/// Most bytes of a multipart text field.
const MAX_TEXT_FIELD: usize = 64;

/// How much of an oversized text field is still read (and dropped) before the 413 goes out: a
/// client still sending when the answer comes would see its connection cut instead of the answer.
const DRAIN_LIMIT: usize = 1 << 20;

/// A short multipart text field, refused past [`MAX_TEXT_FIELD`] bytes; never more than
/// [`DRAIN_LIMIT`] of it is read.
async fn small_text(field: &mut Field<'_>, name: &'static str) -> ApiResult<String> {
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = next_chunk(field).await? {
        seen += chunk.len();
        if seen > DRAIN_LIMIT {
            break;
        }
        if buf.len() + chunk.len() <= MAX_TEXT_FIELD {
            buf.extend_from_slice(&chunk);
        }
    }
    if seen > MAX_TEXT_FIELD {
        return Err(ApiError::TooLarge { what: name, limit: MAX_TEXT_FIELD, unit: "bytes" });
    }
    String::from_utf8(buf).map_err(|_| ApiError::invalid(name, "not UTF-8 text"))
}

async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let q = ListQuery::parse(q.as_deref(), &Accepts::FILES)?;
    let page = Page { after: q.after.as_deref(), limit: q.limit + 1 };
    let rows = state.store.files(caller.project_id(), q.purpose.as_deref(), q.order == Order::Asc, &page).await?;
    Ok(list_of(&rows, q.limit, file_object))
}

/// The caller's file `id`; another project's is as missing as one that never was.
async fn find(state: &AppState, caller: &Caller, id: &str) -> ApiResult<FileRow> {
    state.store.file(caller.project_id(), id).await?.ok_or_else(|| ApiError::not_found("file", id))
}

async fn retrieve(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(file_object(&find(&state, &caller, &id).await?)))
}

async fn delete(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let f = find(&state, &caller, &id).await?;
    let users = state.store.jobs_using_file(&id).await?;
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!("file `{id}` is in use by job(s) not yet ended: {}", users.join(", "))));
    }
    let batches = state.store.batches_using_file(&id).await?;
    if !batches.is_empty() {
        return Err(ApiError::Conflict(format!("file `{id}` is the input of batch(es) not yet ended: {}", batches.join(", "))));
    }
    state.store.delete_file(&id).await?;
    // Jobs that used the file keep their own record of it; the bytes go.
    if let Err(e) = state.artifacts.delete(&f.path).await {
        tracing::warn!(file = %id, error = format!("{e:#}"), "deleting a file's bytes");
    }
    Ok(Json(json!({"id": id, "object": "file", "deleted": true})))
}

async fn content(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Response> {
    let f = find(&state, &caller, &id).await?;
    let path = state.artifacts.local(&f.path).await?;
    let file = tokio::fs::File::open(&path).await.map_err(|e| ApiError::Internal(e.into()))?;
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok(([("content-type", "application/octet-stream")], body).into_response())
}
