//! Serving predictions: one thread owns the models (tch tensors are not `Sync`); handlers reach it
//! through a bounded queue and a oneshot reply. Each base model is held once; adapters are loaded
//! on first use into an LRU cache bounded by count and bytes. Concurrent requests are batched
//! (up to a size, within a short wait), and requests for *different* adapters of the same backbone
//! share one forward pass: input layers and heads run per adapter, while the frozen backbone runs
//! once with per-row layer-norm and position tensors stacked by row.
mod batch;
mod schedule;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tch::{Device, Kind};
use tokio::sync::oneshot;

use crate::model::ModelRegistry;
use crate::tasks::Prediction;

/// Settings of the batcher and the cache.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub device: Device,
    pub frozen_kind: Option<Kind>,
    pub max_batch_size: usize,
    pub max_wait: Duration,
    pub max_queue: usize,
    pub cache_count: usize,
    pub cache_bytes: usize,
}

/// Counters for /metrics.
#[derive(Default)]
pub struct ServeStats {
    pub requests: AtomicU64,
    pub batches: AtomicU64,
    pub batch_rows: AtomicU64,
    pub queue_wait_us: AtomicU64,
    pub inference_us: AtomicU64,
    pub adapter_loads: AtomicU64,
    pub adapter_evictions: AtomicU64,
    pub rejected: AtomicU64,
    pub timeouts: AtomicU64,
    /// Batches (or groups of one) that failed with a panic, their requests answered with the error.
    pub failures: AtomicU64,
    /// Times the inference loop itself was restarted after a panic outside a batch.
    pub restarts: AtomicU64,
}

#[derive(Debug)]
pub struct PredictOutput {
    pub predictions: Vec<Prediction>,
    pub queue_time: Duration,
    pub inference_time: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// A sample is wrong; the message names it (`inputs[3]: …`).
    #[error("{0}")]
    Invalid(String),
    /// The adapter or its base model cannot be loaded.
    #[error("{0}")]
    Adapter(String),
    #[error("the prediction queue is full")]
    Overloaded,
    #[error("the request waited past its deadline")]
    Timeout,
    /// Running the batch failed (a libtorch error); the batcher goes on with the next one.
    #[error("the prediction failed on the server: {0}")]
    Failed(String),
}

pub(crate) use crate::model::panic_message;

pub(crate) struct PredictJob {
    /// The `x-request-id` of the HTTP request, named in the span of the batch that answers it.
    request_id: String,
    model_id: String,
    adapter: PathBuf,
    samples: Vec<Value>,
    enqueued: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<PredictOutput, PredictError>>,
}

pub(crate) enum Msg {
    Predict(PredictJob),
    Load { model_id: String, adapter: PathBuf, reply: oneshot::Sender<Result<(), PredictError>> },
    Unload { model_id: String, reply: oneshot::Sender<bool> },
}

/// The handle handlers use; cheap to clone.
#[derive(Clone)]
pub struct Inference {
    tx: SyncSender<Msg>,
    pub stats: Arc<ServeStats>,
    loaded: Arc<Mutex<Vec<String>>>,
    /// The inference thread is running (it ends only when every handle is gone).
    alive: Arc<AtomicBool>,
}

impl Inference {
    pub fn start(cfg: ServeConfig, registry: ModelRegistry) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.max_queue.max(1));
        let stats = Arc::new(ServeStats::default());
        let loaded = Arc::new(Mutex::new(Vec::new()));
        let alive = Arc::new(AtomicBool::new(true));
        let (s, l, a) = (stats.clone(), loaded.clone(), alive.clone());
        std::thread::Builder::new()
            .name("fpt-inference".into())
            .spawn(move || {
                let mut w = batch::Worker::new(cfg, registry, s.clone(), l);
                // A batch's failure is caught inside it; anything that escapes restarts the loop
                // on a clean cache rather than leaving every later prediction to a dead thread.
                while let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&mut w, &rx))) {
                    tracing::error!(error = %panic_message(&*panic), "the inference loop failed; restarting it");
                    s.restarts.fetch_add(1, Ordering::Relaxed);
                    w.reset();
                }
                a.store(false, Ordering::SeqCst);
            })
            .expect("spawning the inference thread");
        Self { tx, stats, loaded, alive }
    }

    /// Whether predictions are being served.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Predicts for `samples` with the adapter at `adapter` (known to the caller as `model_id`).
    pub async fn predict(
        &self,
        request_id: &str,
        model_id: &str,
        adapter: PathBuf,
        samples: Vec<Value>,
        timeout: Duration,
    ) -> Result<PredictOutput, PredictError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        let now = Instant::now();
        let job = PredictJob {
            request_id: request_id.to_string(),
            model_id: model_id.to_string(),
            adapter,
            samples,
            enqueued: now,
            deadline: now + timeout,
            reply,
        };
        match self.tx.try_send(Msg::Predict(job)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(PredictError::Overloaded);
            }
            Err(TrySendError::Disconnected(_)) => return Err(PredictError::Adapter("the inference thread has stopped".into())),
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(PredictError::Failed("the inference thread dropped the request".into())),
            Err(_) => {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(PredictError::Timeout)
            }
        }
    }

    pub async fn load(&self, model_id: &str, adapter: PathBuf) -> Result<(), PredictError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Msg::Load { model_id: model_id.into(), adapter, reply }).map_err(|_| PredictError::Overloaded)?;
        rx.await.unwrap_or_else(|_| Err(PredictError::Adapter("the inference thread has stopped".into())))
    }

    pub async fn unload(&self, model_id: &str) -> bool {
        let (reply, rx) = oneshot::channel();
        if self.tx.try_send(Msg::Unload { model_id: model_id.into(), reply }).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Ids of the adapters loaded now.
    pub fn loaded(&self) -> Vec<String> {
        self.loaded.lock().unwrap().clone()
    }
}

/// Collects requests (up to a batch's rows, within the wait) and runs their rows in turns; repeats
/// until the handles are gone and every request is answered.
fn run(w: &mut batch::Worker, rx: &Receiver<Msg>) {
    let _guard = tch::no_grad_guard();
    let mut turns = schedule::Turns::default();
    let stats = w.stats();
    loop {
        if turns.is_empty() {
            let Ok(first) = rx.recv() else { return };
            admit(w, &mut turns, first);
            let until = Instant::now() + w.cfg.max_wait;
            while !turns.is_empty() && turns.rows() < w.cfg.max_batch_size && turns.len() < w.cfg.max_queue {
                match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(m) => admit(w, &mut turns, m),
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        // Whatever arrived during the last batch takes its turn in the next one, without waiting.
        while turns.len() < w.cfg.max_queue {
            match rx.try_recv() {
                Ok(m) => admit(w, &mut turns, m),
                Err(_) => break,
            }
        }
        turns.run_next(w, w.cfg.max_batch_size.max(1), &stats);
    }
}

/// A prediction joins the line; loads and unloads are carried out at once.
fn admit(w: &mut batch::Worker, turns: &mut schedule::Turns, m: Msg) {
    match m {
        Msg::Predict(job) => turns.push(job),
        Msg::Load { model_id, adapter, reply } => {
            let _ = reply.send(w.load(&model_id, &adapter));
        }
        Msg::Unload { model_id, reply } => {
            let _ = reply.send(w.unload(&model_id));
        }
    }
}

/// Keeps the stats' map of adapter id -> loaded flag in step with the cache.
pub(crate) fn publish_loaded(loaded: &Mutex<Vec<String>>, ids: impl Iterator<Item = String>) {
    *loaded.lock().unwrap() = ids.collect();
}
