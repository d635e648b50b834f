//! Runs batches in the background of every API node and worker node: claims one under a lease, answers its lines
//! through the same prediction path as `/v1/predictions` (many at once, so that the shared
//! batcher fills its forward passes across adapters), records each chunk of answers with the
//! progress in one transaction, and writes the output and error files at the end. A node that
//! dies mid-batch loses only its unrecorded chunk: the next claim, on any node, answers the lines
//! not yet recorded, so every line is answered exactly once.
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::batches::{read_input, InputLine, COMPLETION_WINDOW_SECS};
use super::error::ApiError;
use super::predictions::Predictor;
use crate::store::{BatchEnd, BatchLine, BatchRow, Claim, FileRow, Lease};

/// Lines answered between two records of progress (and lease renewals).
const CHUNK: usize = 256;
/// Lines in flight at once: enough to fill the batcher's forward passes.
const IN_FLIGHT: usize = 64;
/// A runner's lease on its batch; renewed with every chunk.
const LEASE_SECONDS: i64 = 30;
/// How often an idle runner looks for a batch when nothing woke it.
const IDLE_POLL: Duration = Duration::from_secs(2);

/// What a node's runner works with.
#[derive(Clone)]
pub struct Runner {
    pub predictor: Predictor,
    /// Cancelled when the node stops: the runner records its chunk in flight and hands its batch back.
    pub stopping: CancellationToken,
    /// Notified when a batch of this node's API is created or cancelled (other nodes' are found
    /// by polling).
    pub wake: Arc<Notify>,
}

/// The runner of this node, until the node stops.
pub async fn run(runner: Runner) {
    let lease = Lease { worker: format!("batch-{}", crate::queue::node_name()), seconds: LEASE_SECONDS };
    release_orphans(&runner).await;
    while !runner.stopping.is_cancelled() {
        match runner.predictor.store.claim_batch(&lease).await {
            Ok(Some(batch)) => {
                let id = batch.id.clone();
                let renewing = tokio::spawn(renew(runner.clone(), id.clone(), lease.worker.clone()));
                let result = run_batch(&runner, &lease, batch).await;
                renewing.abort();
                if let Err(stop) = result {
                    stopped(&runner, &lease, &id, stop).await;
                }
            }
            Ok(None) => {
                tokio::select! {
                    _ = runner.wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = runner.stopping.cancelled() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "claiming a batch");
                tokio::time::sleep(IDLE_POLL).await;
            }
        }
    }
}

/// Why a batch stopped short.
enum Stop {
    /// The batch cannot be run (its input file is gone or unreadable): it fails, saying why.
    Invalid(String),
    /// Anything else (the store or the artifacts out of reach): the batch goes back, its answered
    /// lines kept, for a runner to go on with.
    Transient(anyhow::Error),
}

impl From<anyhow::Error> for Stop {
    fn from(e: anyhow::Error) -> Self {
        Stop::Transient(e)
    }
}

async fn stopped(runner: &Runner, lease: &Lease, id: &str, stop: Stop) {
    match stop {
        Stop::Invalid(message) => {
            tracing::warn!(batch = %id, error = %message, "a batch failed");
            let errors =
                json!({"object": "list", "data": [{"code": "invalid_input", "message": message, "param": "input_file_id", "line": null}]});
            let end = BatchEnd { output_file: None, error_file: None, errors: Some(&errors.to_string()), expired: false };
            if let Err(e) = runner.predictor.store.finish_batch(id, lease, &end).await {
                tracing::error!(batch = %id, error = format!("{e:#}"), "recording that a batch failed");
            }
        }
        Stop::Transient(e) => {
            tracing::warn!(batch = %id, error = format!("{e:#}"), "a batch stopped; it goes on later");
            if let Err(e) = runner.predictor.store.release_batch(id, &lease.worker).await {
                tracing::warn!(batch = %id, error = format!("{e:#}"), "handing a batch back");
            }
            tokio::time::sleep(IDLE_POLL).await;
        }
    }
}

/// Keeps the lease of the batch this runner works on, however long a chunk or the files take.
async fn renew(runner: Runner, id: String, worker: String) {
    let lease = Lease { worker, seconds: LEASE_SECONDS };
    loop {
        tokio::time::sleep(Duration::from_secs(LEASE_SECONDS as u64 / 3)).await;
        match runner.predictor.store.renew_batch(&id, &lease).await {
            Ok(true) => {}
            Ok(false) => return, // another runner has it: this one learns so at its next record
            Err(e) => tracing::warn!(batch = %id, error = format!("{e:#}"), "renewing a batch's lease"),
        }
    }
}

/// Batches whose runner was a process of this host that is gone: claimable at once, instead of
/// after their lease.
async fn release_orphans(runner: &Runner) {
    let held = match runner.predictor.store.held_batches().await {
        Ok(h) => h,
        Err(e) => return tracing::warn!(error = format!("{e:#}"), "listing the batches runners hold"),
    };
    for (id, worker) in held {
        let gone = worker.strip_prefix("batch-").is_some_and(crate::queue::is_gone_from_here);
        if gone && runner.predictor.store.release_batch(&id, &worker).await.unwrap_or(false) {
            tracing::info!(batch = %id, "a batch whose process on this host had died goes on");
        }
    }
}

async fn run_batch(runner: &Runner, lease: &Lease, batch: BatchRow) -> Result<(), Stop> {
    let file = runner.predictor.store.file(&batch.project_id, &batch.input_file_id).await?;
    let file = file.ok_or_else(|| Stop::Invalid(format!("the input file `{}` is gone", batch.input_file_id)))?;
    let bytes = tokio::fs::read(runner.predictor.artifacts.local(&file.path).await?).await.context("reading the input file")?;
    let max_rows = runner.predictor.max_rows;
    let read = tokio::task::spawn_blocking(move || read_input(&bytes, max_rows)).await.context("reading the input file")?;
    let lines = read.map_err(|e| Stop::Invalid(format!("the input file: {e}")))?;
    let done: std::collections::HashSet<i64> = runner.predictor.store.batch_lines_done(&batch.id).await?.into_iter().collect();
    let mut todo: Vec<(i64, InputLine)> =
        lines.into_iter().enumerate().map(|(i, l)| (i as i64, l)).filter(|(i, _)| !done.contains(i)).collect();
    let mut claim = if batch.status == "cancelling" { Claim::Cancelling } else { Claim::Held };
    let expires_at = batch.created_at + COMPLETION_WINDOW_SECS;
    let open = || crate::store::now() < expires_at;
    while claim == Claim::Held && !todo.is_empty() && !runner.stopping.is_cancelled() && open() {
        let answered: Vec<BatchLine> =
            futures::stream::iter(next_chunk(&mut todo).into_iter().map(|(i, l)| answer_line(runner, &batch, i, l)))
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
        claim = runner.predictor.store.record_batch_lines(&batch.id, lease, &answered).await?;
    }
    if claim == Claim::Lost {
        return Ok(());
    }
    // Expired by this runner, or by one that died after it began writing the expired lines.
    let expired = batch.expired_at.is_some() || (claim == Claim::Held && !todo.is_empty() && !open());
    if expired && !todo.is_empty() && claim == Claim::Held {
        // Past the window, the lines not answered are answered as expired, in chunks as any.
        if !runner.predictor.store.batch_expiring(&batch.id, lease).await? {
            return Ok(());
        }
        while claim == Claim::Held && !todo.is_empty() {
            let lines: Vec<BatchLine> = next_chunk(&mut todo).into_iter().map(|(i, l)| expired_line(&batch, i, l)).collect();
            claim = runner.predictor.store.record_batch_lines(&batch.id, lease, &lines).await?;
        }
    }
    if claim == Claim::Lost {
        return Ok(());
    }
    if runner.stopping.is_cancelled() && claim == Claim::Held && !todo.is_empty() {
        // The server stops: another node (or this one, started again) goes on where it was.
        runner.predictor.store.release_batch(&batch.id, &lease.worker).await?;
        return Ok(());
    }
    Ok(finish(runner, lease, &batch, expired).await?)
}

/// The first [`CHUNK`] lines still to do, taken off `todo`.
fn next_chunk(todo: &mut Vec<(i64, InputLine)>) -> Vec<(i64, InputLine)> {
    let rest = todo.split_off(todo.len().min(CHUNK));
    std::mem::replace(todo, rest)
}

fn request_id(batch: &BatchRow, line: i64) -> String {
    format!("batch_req_{}_{line}", batch.id.trim_start_matches("batch-"))
}

/// A line the completion window ran out on, as OpenAI's error lines say it.
fn expired_line(batch: &BatchRow, line: i64, l: InputLine) -> BatchLine {
    let error = json!({"code": "batch_expired", "message": "This request could not be executed before the completion window expired."});
    let out = json!({"id": request_id(batch, line), "custom_id": l.custom_id, "response": null, "error": error});
    BatchLine { line, ok: 0, answer: out.to_string() }
}

/// One line answered as OpenAI's output lines are: `{"id", "custom_id", "response": {"status_code",
/// "request_id", "body"}, "error": null}`.
async fn answer_line(runner: &Runner, batch: &BatchRow, line: i64, l: InputLine) -> BatchLine {
    let request_id = request_id(batch, line);
    let mut tries = 0;
    let result = loop {
        match runner.predictor.answer(&batch.project_id, l.body.clone(), &request_id).await {
            // The batcher's queue is full: this line waits its turn rather than failing.
            Err(ApiError::Overloaded { .. }) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20 * tries)).await;
            }
            // A prediction past its deadline, or an adapter not loadable now: tried a few times more.
            Err(ApiError::Unavailable(_)) if tries < 3 => {
                tries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => break other,
        }
    };
    let (status, body, ok) = match result {
        Ok((body, _)) => (200, body, true),
        Err(e) => {
            let (status, body) = e.status_and_body();
            (status.as_u16(), body, false)
        }
    };
    let out = json!({"id": request_id, "custom_id": l.custom_id, "response": {"status_code": status, "request_id": request_id, "body": body}, "error": null});
    BatchLine { line, ok: ok as i64, answer: out.to_string() }
}

/// Writes the output and error files (each line once, in input order) and ends the batch.
async fn finish(runner: &Runner, lease: &Lease, batch: &BatchRow, expired: bool) -> Result<()> {
    if !runner.predictor.store.finalizing_batch(&batch.id, lease).await? {
        return Ok(());
    }
    let tail = batch.id.trim_start_matches("batch-");
    let output = write_file(runner, batch, &format!("file-{tail}-output"), "output", true).await?;
    let errors = write_file(runner, batch, &format!("file-{tail}-errors"), "errors", false).await?;
    let end = BatchEnd { output_file: output.as_deref(), error_file: errors.as_deref(), errors: None, expired };
    runner.predictor.store.finish_batch(&batch.id, lease, &end).await?;
    Ok(())
}

/// The batch's `ok` (or failed) answers as a file of its project, named by a fixed id so that a
/// runner finishing the batch again writes the same file; None when there are none. Written a
/// page of lines at a time: an output can be far larger than its input (every probability of
/// every row), and no node holds all of it.
async fn write_file(runner: &Runner, batch: &BatchRow, id: &str, kind: &str, ok: bool) -> Result<Option<String>> {
    let store = &runner.predictor.store;
    let lines = store.batch_answer_count(&batch.id, ok).await? as usize;
    if lines == 0 {
        return Ok(None);
    }
    let key = crate::artifacts::file_key(id);
    let mut file = runner.predictor.artifacts.writer(&key).await?;
    let (mut after, mut bytes) = (-1i64, 0usize);
    loop {
        let page = store.batch_answers(&batch.id, ok, after, CHUNK as i64).await?;
        let Some(last) = page.last() else { break };
        after = last.line;
        let mut piece = Vec::new();
        for l in &page {
            piece.extend_from_slice(l.answer.as_bytes());
            piece.push(b'\n');
        }
        bytes += piece.len();
        file.write(&piece).await?;
    }
    file.finish().await?;
    let owner = (batch.project_id.as_str(), batch.api_key_id.as_deref());
    let row = FileRow::written(id.to_string(), format!("{}_{kind}.jsonl", batch.id), "batch_output", "jsonl", lines, bytes, owner);
    debug_assert_eq!(row.path, key);
    runner.predictor.store.insert_file(&row).await?;
    Ok(Some(row.id))
}
