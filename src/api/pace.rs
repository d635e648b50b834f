//! Every request body must keep a minimum pace: within the first [`GRACE`] it may arrive at any
//! speed; after, it must average `--min-upload-kbps`, and it may never stall for [`GRACE`]. Clients
//! trickling bytes into uploads or job creations would otherwise hold every request slot.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::error::ApiError;
use super::AppState;

pub const GRACE: Duration = Duration::from_secs(10);

/// Wraps the request's body; a body that falls below the pace ends with an error for the handler,
/// and the answer is a 408 whatever the handler made of that error.
pub async fn paced(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let min_bytes_per_sec = state.settings.min_upload_bytes_per_sec;
    let too_slow = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let body = Body::from_stream(watch(body, min_bytes_per_sec, too_slow.clone()));
    let response = next.run(Request::from_parts(parts, body)).await;
    if too_slow.load(Ordering::SeqCst) {
        return ApiError::TooSlow { rate: min_bytes_per_sec as u64 / 1024 }.into_response();
    }
    response
}

fn watch(
    body: Body,
    min_bytes_per_sec: f64,
    too_slow: Arc<AtomicBool>,
) -> impl futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send {
    let mut frames = body.into_data_stream();
    async_stream::stream! {
        let started = Instant::now();
        let mut received = 0usize;
        loop {
            let chunk = match tokio::time::timeout(GRACE, frames.next()).await {
                Err(_) => None,
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    yield Err(std::io::Error::other(e));
                    break;
                }
                Ok(Some(Ok(chunk))) => Some(chunk),
            };
            let secs = started.elapsed().as_secs_f64();
            received += chunk.as_ref().map_or(0, |c| c.len());
            match chunk {
                Some(chunk) if secs <= GRACE.as_secs_f64() || received as f64 >= min_bytes_per_sec * secs => yield Ok(chunk),
                _ => {
                    too_slow.store(true, Ordering::SeqCst);
                    yield Err(std::io::Error::other("the request body arrives too slowly"));
                    break;
                }
            }
        }
    }
}
