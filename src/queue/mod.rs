//! The job queue and its worker pool. Jobs wait in the database (`queued`); each worker is a plain
//! thread (training never runs on the async runtime) that claims the oldest one with a single
//! statement, trains it with the shared engine, and records events, checkpoints and the outcome.
//! Cancel and pause reach a running job through its `Control`, checked every step.
pub mod events;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::Device;
use tokio::runtime::Handle;

use crate::cli::Precision;
use crate::model::fpt::{FptModel, ModelSpec};
use crate::model::params::FreezeSwitches;
use crate::model::ModelRegistry;
use crate::store::{new_id, now, CheckpointRow, JobRow, ModelRow, NewEvent, Store};
use crate::tasks::{DataSources, TaskData, TaskSpec};
use crate::train::{checkpoint, Command, Control, Ending, Outcome, Progress, TrainConfig, Trainer};
use events::EventSink;

/// `method` of a job: the FPT recipe and its freeze switches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Method {
    #[serde(rename = "type", default = "fpt_type")]
    pub kind: String,
    #[serde(default)]
    pub fpt: FreezeSwitches,
}

fn fpt_type() -> String {
    "fpt".into()
}

impl Default for Method {
    fn default() -> Self {
        Self { kind: fpt_type(), fpt: FreezeSwitches::default() }
    }
}

/// Where a job's files live, derived from ids the server made (never from user input).
pub fn job_dir(data_dir: &Path, job_id: &str) -> PathBuf {
    data_dir.join("jobs").join(job_id)
}

pub fn file_path(data_dir: &Path, file_id: &str) -> PathBuf {
    data_dir.join("files").join(file_id)
}

/// Everything a worker needs, shared by all workers.
pub struct QueueConfig {
    pub store: Store,
    pub events: EventSink,
    pub registry: ModelRegistry,
    pub data_dir: PathBuf,
    pub device: Device,
    pub precision: Precision,
    pub workers: usize,
}

struct Inner {
    cfg: QueueConfig,
    rt: Handle,
    controls: Mutex<HashMap<String, Control>>,
    wake: (Mutex<bool>, Condvar),
    stopping: AtomicBool,
    running: AtomicUsize,
    /// Training throughput of the latest report, summed over running jobs, for /metrics.
    samples_per_second: Mutex<HashMap<String, f64>>,
}

#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
    threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

impl Queue {
    /// Starts `cfg.workers` worker threads (none for an API-only node).
    pub fn start(cfg: QueueConfig) -> Self {
        let workers = cfg.workers;
        let inner = Arc::new(Inner {
            cfg,
            rt: Handle::current(),
            controls: Mutex::new(HashMap::new()),
            wake: (Mutex::new(false), Condvar::new()),
            stopping: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            samples_per_second: Mutex::new(HashMap::new()),
        });
        let threads = (0..workers)
            .map(|i| {
                let inner = inner.clone();
                std::thread::Builder::new().name(format!("fpt-worker-{i}")).spawn(move || worker_loop(&inner)).expect("spawning a worker")
            })
            .collect();
        Self { inner, threads: Arc::new(Mutex::new(threads)) }
    }

    /// A job was queued: wake an idle worker.
    pub fn notify(&self) {
        let (lock, cv) = &self.inner.wake;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }

    /// Signals a job running in this process; false when it is not running here.
    pub fn signal(&self, job_id: &str, c: Command) -> bool {
        match self.inner.controls.lock().unwrap().get(job_id) {
            Some(ctl) => {
                ctl.set(c);
                true
            }
            None => false,
        }
    }

    pub fn running(&self) -> usize {
        self.inner.running.load(Ordering::SeqCst)
    }

    pub fn training_samples_per_second(&self) -> f64 {
        self.inner.samples_per_second.lock().unwrap().values().sum()
    }

    /// Graceful stop: running jobs checkpoint and go back to the queue; workers exit.
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        for c in self.inner.controls.lock().unwrap().values() {
            c.set(Command::Shutdown);
        }
        self.notify();
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock().unwrap());
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        self.inner.cfg.events.flush().await;
    }
}

fn worker_loop(inner: &Arc<Inner>) {
    while !inner.stopping.load(Ordering::SeqCst) {
        match inner.rt.block_on(inner.cfg.store.claim_job()) {
            Ok(Some(job)) => run_job(inner, job),
            Ok(None) => {
                let (lock, cv) = &inner.wake;
                let mut woken = lock.lock().unwrap();
                if !*woken {
                    woken = cv.wait_timeout(woken, Duration::from_millis(500)).unwrap().0;
                }
                *woken = false;
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "claiming a job");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn event(
    job_id: &str,
    level: &'static str,
    kind: &'static str,
    message: impl Into<String>,
    data: Option<serde_json::Value>,
    step: Option<i64>,
) -> NewEvent {
    NewEvent { job_id: job_id.to_string(), level, kind, message: message.into(), data, step }
}

fn run_job(inner: &Arc<Inner>, job: JobRow) {
    let span = tracing::info_span!("job", id = %job.id);
    let _g = span.enter();
    let control = Control::default();
    inner.controls.lock().unwrap().insert(job.id.clone(), control.clone());
    inner.running.fetch_add(1, Ordering::SeqCst);
    // A cancel or pause that arrived between the claim and the registration above.
    if let Ok(Some(j)) = inner.rt.block_on(inner.cfg.store.job(&job.id)) {
        match j.desired.as_str() {
            "cancel" => control.set(Command::Cancel),
            "pause" => control.set(Command::Pause),
            _ => {}
        }
    }
    if inner.stopping.load(Ordering::SeqCst) {
        control.set(Command::Shutdown);
    }
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| train_job(inner, &job, &control)));
    inner.controls.lock().unwrap().remove(&job.id);
    inner.samples_per_second.lock().unwrap().remove(&job.id);
    inner.running.fetch_sub(1, Ordering::SeqCst);
    let store = &inner.cfg.store;
    let outcome = match result {
        Ok(r) => r,
        Err(panic) => {
            let msg =
                panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Err(anyhow::anyhow!("training crashed: {msg}"))
        }
    };
    inner.cfg.events.flush_blocking();
    let done = match outcome {
        Ok((o, model)) => finish(inner, &job, o, model),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "job failed");
            inner.cfg.events.send(event(&job.id, "error", "message", format!("Job failed: {e:#}"), None, None));
            inner.cfg.events.flush_blocking();
            inner.rt.block_on(store.finish_job(
                &job.id,
                "failed",
                None,
                Some(&json!({"code": "training_failed", "message": format!("{e:#}"), "param": null})),
                None,
            ))
        }
    };
    if let Err(e) = done {
        tracing::error!(error = format!("{e:#}"), "recording the job's outcome");
    }
}

fn finish(inner: &Arc<Inner>, job: &JobRow, o: Outcome, model_id: String) -> Result<()> {
    let store = &inner.cfg.store;
    let ev = &inner.cfg.events;
    match o.ending {
        Ending::Finished | Ending::EarlyStopped => {
            let kept = o.adapter.clone().context("training produced no adapter")?;
            let dir = job_dir(&inner.cfg.data_dir, &job.id);
            let final_path = dir.join("final.adapter.safetensors");
            crate::fsutil::write_atomic(&final_path, &std::fs::read(&kept)?)?;
            inner.rt.block_on(store.insert_model(&ModelRow {
                id: model_id.clone(),
                job_id: job.id.clone(),
                base_model: job.model.clone(),
                created_at: now(),
                path: final_path.to_string_lossy().into(),
                checkpoint_step: None,
            }))?;
            let result = json!({
                "steps": o.steps, "train_loss": o.train_loss, "train_accuracy": o.train_accuracy,
                "valid_loss": o.valid.map(|v| v.loss), "valid_accuracy": o.valid.map(|v| v.accuracy),
                "best_valid_accuracy": o.best_valid_accuracy, "best_step": o.best_step,
                "test_accuracy": o.test.map(|t| t.accuracy), "test_loss": o.test.map(|t| t.loss),
                "samples_per_second": o.samples_per_second, "wall_seconds": o.wall_seconds,
                "early_stopped": o.ending == Ending::EarlyStopped,
            });
            ev.send(event(&job.id, "info", "message", format!("Job succeeded: fine-tuned model {model_id}"), Some(result.clone()), None));
            ev.flush_blocking();
            inner.rt.block_on(store.finish_job(&job.id, "succeeded", Some(&result), None, Some(&model_id)))
        }
        Ending::Cancelled => {
            ev.send(event(&job.id, "info", "message", "Job cancelled", None, None));
            ev.flush_blocking();
            inner.rt.block_on(store.finish_job(&job.id, "cancelled", None, None, None))
        }
        Ending::Paused => {
            ev.send(event(&job.id, "info", "message", format!("Job paused at step {}", o.steps), None, None));
            ev.flush_blocking();
            inner.rt.block_on(store.transition(&job.id, &["running"], "paused")).map(|_| ())
        }
        Ending::Interrupted => {
            ev.send(event(
                &job.id,
                "info",
                "message",
                format!("Server stopping: job checkpointed at step {} and queued again", o.steps),
                None,
                None,
            ));
            ev.flush_blocking();
            inner.rt.block_on(store.transition(&job.id, &["running"], "queued")).map(|_| ())
        }
    }
}

/// The fine-tuned model id of a job: `ft-[suffix-]<job id tail>`.
pub fn model_id(job: &JobRow) -> String {
    let tail = job.id.trim_start_matches("ftjob-");
    match &job.suffix {
        Some(s) if !s.is_empty() => format!("ft-{s}-{tail}"),
        _ => format!("ft-{tail}"),
    }
}

/// Loads a job's model and data and trains it; returns the outcome and the model id.
fn train_job(inner: &Arc<Inner>, job: &JobRow, control: &Control) -> Result<(Outcome, String)> {
    let cfg = &inner.cfg;
    let store = &cfg.store;
    let spec: TaskSpec = serde_json::from_str(&job.task).context("stored task")?;
    let hyper: TrainConfig = serde_json::from_str(&job.hyperparameters).context("stored hyperparameters")?;
    let method: Method = serde_json::from_str(&job.method).context("stored method")?;
    let dir = job_dir(&cfg.data_dir, &job.id);
    let ckpt_dir = dir.join("checkpoints");
    // Whatever was recorded past the checkpoint this run restarts from is redone: drop it.
    let resume_step = checkpoint::latest(&ckpt_dir)?.map_or(0, |l| l.step);
    inner.rt.block_on(store.truncate_metrics_after(&job.id, resume_step as i64))?;
    let message =
        if resume_step > 0 { format!("Job resumed from the checkpoint of step {resume_step}") } else { "Job started".to_string() };
    cfg.events.send(event(&job.id, "info", "message", message, None, None));

    let base = cfg.registry.resolve(&job.model)?;
    let file = |id: &Option<String>| id.as_ref().map(|f| file_path(&cfg.data_dir, f));
    let (train, valid) = (file(&job.training_file), file(&job.validation_file));
    let task = TaskData::load(
        &spec,
        &DataSources {
            train: train.as_deref(),
            valid: valid.as_deref(),
            test: None,
            valid_fraction: hyper.validation_fraction,
            seed: job.seed as u64,
            max_positions: base.backbone_config()?.max_positions as usize,
        },
    )?;
    let model = FptModel::new(ModelSpec {
        base: &base,
        shape: task.shape,
        switches: method.fpt,
        task: serde_json::to_value(&spec)?,
        device: cfg.device,
        seed: job.seed as u64,
        frozen_kind: cfg.precision.frozen_kind(cfg.device),
    })?;
    let report = model.param_report();
    cfg.events.send(event(
        &job.id,
        "info",
        "message",
        format!(
            "Training {} of {} parameters ({:.3}%) on {} samples",
            report.trained,
            report.total,
            100.0 * report.trained_fraction,
            task.info.train_samples
        ),
        Some(json!({"parameters": report, "data": task.info})),
        None,
    ));
    let model_id = model_id(job);
    let trainer = Trainer {
        model: &model,
        task: &task,
        cfg: hyper.clone(),
        seed: job.seed as u64,
        checkpoint_dir: ckpt_dir,
        metadata: HashMap::from([("job_id".to_string(), job.id.clone()), ("fine_tuned_model".to_string(), model_id.clone())]),
    };
    let outcome = trainer.run(control, &mut |p| match p {
        Progress::Metrics(m) => {
            inner.samples_per_second.lock().unwrap().insert(job.id.clone(), m.samples_per_second);
            let mut msg = format!("Step {}/{}: training loss={:.4}", m.step, m.total_steps, m.train_loss);
            if let Some(v) = m.valid_accuracy {
                msg.push_str(&format!(", validation accuracy={v:.4}"));
            }
            cfg.events.send(event(&job.id, "info", "metrics", msg, serde_json::to_value(&m).ok(), Some(m.step as i64)));
            cfg.events.steps(&job.id, m.step as i64);
        }
        Progress::Checkpoint { step, adapter, metrics } => {
            // Events up to this step become durable before the checkpoint is recorded.
            cfg.events.flush_blocking();
            let row = CheckpointRow {
                id: new_id("ftckpt"),
                job_id: job.id.clone(),
                step_number: step as i64,
                created_at: now(),
                metrics: metrics.map(|m| json!({"step": step, "valid_loss": m.loss, "valid_accuracy": m.accuracy}).to_string()),
                model_id: format!("{model_id}-step-{step}"),
                path: adapter.to_string_lossy().into(),
            };
            if let Err(e) = inner.rt.block_on(store.insert_checkpoint(&row, &job.model)) {
                tracing::error!(error = format!("{e:#}"), "recording a checkpoint");
            }
            cfg.events.steps(&job.id, step as i64);
        }
        Progress::Message(s) => cfg.events.send(event(&job.id, "info", "message", s, None, None)),
    })?;
    Ok((outcome, model_id))
}
