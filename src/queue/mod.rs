//! The job queue and its worker pool. Jobs wait in the database (`queued`); each worker is a plain
//! thread (training never runs on the async runtime) that claims the oldest job its device can run
//! with a single statement, trains it with the shared engine, and records events, checkpoints and
//! the outcome. Workers may live in the API's process or in `fpt worker` processes on other
//! machines: a claimed job is leased, a heartbeat renews the lease and carries cancel/pause
//! requests to the worker, and a job whose worker died is claimed again when its lease runs out
//! and resumes from the last checkpoint in the shared artifact store.
pub mod events;

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use tch::Device;
use tokio::runtime::Handle;

use crate::artifacts::{file_key, job_key, Artifacts};
use crate::job::results::results_csv;
use crate::job::run::{finish_members, train_members, MemberDirs, MemberHooks};
use crate::job::status::JobError;
use crate::job::{prepare, DataFiles, Desired, DeviceKind, JobStatus, Limits, RunSummary};
use crate::model::{ModelRegistry, Precision};
use crate::store::{new_id, now, CheckpointRow, FileRow, Job, JobEnd, Lease, ModelRow, NewEvent, Store};
use crate::train::{checkpoint, Command, Control, Ending, Outcome, Progress};
use events::EventSink;

/// A job's local working folder on this node (its checkpoints while it trains), derived from ids
/// the server made (never from user input).
fn work_dir(work: &Path, job_id: &str) -> PathBuf {
    work.join("jobs").join(job_id)
}

/// Everything a worker needs, shared by all workers.
pub struct QueueConfig {
    pub store: Store,
    pub events: EventSink,
    pub registry: ModelRegistry,
    pub artifacts: Artifacts,
    /// This node's scratch folder: jobs train here and copy their checkpoints to `artifacts`.
    pub work_dir: PathBuf,
    pub device: Device,
    pub precision: Precision,
    /// Bounds of a run's budget (a job's `n_epochs` becomes steps once its data is loaded).
    pub limits: Limits,
    /// Claims of one job whose worker died under it before it fails with `max_attempts`.
    pub max_attempts: i64,
    /// Checkpoints kept per job (the newest); older ones, their models and files, are deleted.
    pub keep_checkpoints: i64,
    pub workers: usize,
    /// How long a claimed job stays this node's without a heartbeat.
    pub lease_seconds: i64,
    /// Jobs of one project running at once where the project sets no quota (0: no limit).
    pub max_running_per_project: i64,
}

/// A job running in this process.
struct Running {
    control: Control,
    lease: Lease,
    /// The lease ran out and another worker took the job: record nothing more for it.
    lost: Arc<AtomicBool>,
}

struct Inner {
    cfg: QueueConfig,
    rt: Handle,
    /// Unique among every worker sharing the database: host, process, thread.
    node: String,
    controls: Mutex<HashMap<String, Running>>,
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
    /// Starts `cfg.workers` worker threads (none for an API-only node) and their heartbeat.
    pub fn start(cfg: QueueConfig) -> Self {
        let workers = cfg.workers;
        let inner = Arc::new(Inner {
            cfg,
            rt: Handle::current(),
            node: node_name(),
            controls: Mutex::new(HashMap::new()),
            wake: (Mutex::new(false), Condvar::new()),
            stopping: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            samples_per_second: Mutex::new(HashMap::new()),
        });
        let threads = (0..workers)
            .map(|i| {
                let inner = inner.clone();
                std::thread::Builder::new()
                    .name(format!("fpt-worker-{i}"))
                    .spawn(move || worker_loop(&inner, i))
                    .expect("spawning a worker")
            })
            .collect();
        if workers > 0 {
            tokio::spawn(heartbeat(inner.clone()));
        }
        Self { inner, threads: Arc::new(Mutex::new(threads)) }
    }

    /// A job was queued: wake an idle worker.
    pub fn notify(&self) {
        let (lock, cv) = &self.inner.wake;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }

    /// Signals a job running in this process; false when it is not running here.
    pub fn signal(&self, job_id: &str, desired: Desired) -> bool {
        match self.inner.controls.lock().unwrap().get(job_id) {
            Some(r) => {
                apply_desired(&r.control, desired);
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
        for r in self.inner.controls.lock().unwrap().values() {
            r.control.set(Command::Shutdown);
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

/// Running jobs whose worker was a process of this host that is gone (killed, crashed): queued
/// again at once, to resume from their checkpoints, instead of after their lease. A job a live
/// process holds (another `fpt serve` or `fpt worker` here, on the same database) is left alone,
/// as are other hosts' jobs: their leases tell. Call it before this process's workers start.
pub async fn requeue_orphans(store: &Store) -> Result<u64> {
    let mut requeued = 0;
    for (id, worker) in store.running_jobs().await? {
        let Some((node, _)) = worker.rsplit_once("-w") else { continue };
        if is_gone_from_here(node) && store.requeue_orphan(&id, &worker).await? {
            requeued += 1;
        }
    }
    Ok(requeued)
}

/// Whether `node` (a [`node_name`]) was a process of this host that is gone. Called before this
/// process holds anything: work in its own pid's name is a predecessor's that had the same pid (a
/// container's pid 1, restarted).
pub(crate) fn is_gone_from_here(node: &str) -> bool {
    let me = node_name();
    let host = me.rsplit_once('-').map_or(me.as_str(), |(h, _)| h);
    let Some((node_host, pid)) = node.rsplit_once('-') else { return false };
    let Ok(pid) = pid.parse::<u32>() else { return false };
    let alive = pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists();
    node_host == host && !alive
}

/// `host-pid`: names this process's workers in the jobs they hold. The host is its name and, where
/// the machine has one, the start of its machine id, so that two machines of one name sharing a
/// database are told apart.
pub(crate) fn node_name() -> String {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty());
    let mut host = read("/etc/hostname").unwrap_or_else(|| "node".into());
    if let Some(id) = read("/etc/machine-id") {
        host = format!("{host}.{}", &id[..id.len().min(8)]);
    }
    format!("{host}-{}", std::process::id())
}

/// Renews the lease of every job running here, often enough that a lease never lapses while its
/// worker lives, and hands the worker what a client asked of the job meanwhile (from any API node).
async fn heartbeat(inner: Arc<Inner>) {
    let period = Duration::from_millis((inner.cfg.lease_seconds.max(1) as u64 * 1000 / 3).clamp(200, 1000));
    while !inner.stopping.load(Ordering::SeqCst) {
        tokio::time::sleep(period).await;
        let running: Vec<(String, Control, Lease, Arc<AtomicBool>)> = {
            let map = inner.controls.lock().unwrap();
            map.iter().map(|(id, r)| (id.clone(), r.control.clone(), r.lease.clone(), r.lost.clone())).collect()
        };
        for (id, control, lease, lost) in running {
            match inner.cfg.store.renew_lease(&id, &lease).await {
                Ok(Some(desired)) => apply_desired(&control, desired),
                Ok(None) => {
                    tracing::warn!(job = %id, "lease lost: another worker has taken the job over; stopping it here");
                    lost.store(true, Ordering::SeqCst);
                    control.set(Command::Cancel);
                }
                // A database hiccup: the lease has two more periods to go before it lapses.
                Err(e) => tracing::warn!(job = %id, error = format!("{e:#}"), "renewing a lease"),
            }
        }
    }
}

/// What a client asked (`desired`) reaches the training loop. A cancel wins over anything in
/// progress (a pause, a shutdown); a pause does not override a shutdown.
fn apply_desired(control: &Control, desired: Desired) {
    if desired == Desired::Cancel || control.get() == Command::Run {
        control.set(desired.command());
    }
}

fn worker_loop(inner: &Arc<Inner>, index: usize) {
    let _worker = tracing::info_span!("worker", index).entered();
    let lease = Lease { worker: format!("{}-w{index}", inner.node), seconds: inner.cfg.lease_seconds };
    let kind = DeviceKind::of(inner.cfg.device);
    while !inner.stopping.load(Ordering::SeqCst) {
        match inner.rt.block_on(inner.cfg.store.claim_job(&lease, kind, inner.cfg.max_running_per_project)) {
            Ok(Some(job)) => run_job(inner, job, &lease),
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
    worker: &str,
    level: &'static str,
    kind: &'static str,
    message: impl Into<String>,
    data: Option<serde_json::Value>,
    step: Option<i64>,
) -> NewEvent {
    NewEvent { job_id: job_id.to_string(), level, kind, message: message.into(), data, step, worker: Some(worker.to_string()) }
}

fn run_job(inner: &Arc<Inner>, job: Job, lease: &Lease) {
    let span = tracing::info_span!("job", id = %job.id, worker = %lease.worker, request_id = job.request_id.as_deref().unwrap_or(""));
    let _g = span.enter();
    if job.attempts > inner.cfg.max_attempts {
        // Its workers keep dying under it (a crash, an abort, the machine): stop trying.
        let why = format!("the job was started {} times and its worker stopped each time before it ended", job.attempts - 1);
        fail(inner, &job, lease, "max_attempts", &why);
        return;
    }
    let control = Control::default();
    let lost = Arc::new(AtomicBool::new(false));
    let running = Running { control: control.clone(), lease: lease.clone(), lost: lost.clone() };
    inner.controls.lock().unwrap().insert(job.id.clone(), running);
    inner.running.fetch_add(1, Ordering::SeqCst);
    // A cancel or pause that arrived between the claim and the registration above.
    if let Ok(Some(j)) = inner.rt.block_on(inner.cfg.store.job(&job.id)) {
        apply_desired(&control, j.desired);
    }
    if inner.stopping.load(Ordering::SeqCst) {
        control.set(Command::Shutdown);
    }
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| train_job(inner, &job, &lease.worker, &control, &lost)));
    inner.controls.lock().unwrap().remove(&job.id);
    inner.samples_per_second.lock().unwrap().remove(&job.id);
    inner.running.fetch_sub(1, Ordering::SeqCst);
    let scratch = work_dir(&inner.cfg.work_dir, &job.id);
    if lost.load(Ordering::SeqCst) {
        let _ = std::fs::remove_dir_all(&scratch);
        return;
    }
    let outcome = match result {
        Ok(r) => r,
        Err(panic) => Err(anyhow::anyhow!("training crashed: {}", crate::model::panic_message(&*panic))),
    };
    inner.cfg.events.flush_blocking();
    match outcome {
        Ok((o, summary, model)) => {
            // An outcome that cannot be stored (the adapter, the model row) fails the job with
            // that cause rather than leaving it running for the next worker to redo forever.
            if let Err(e) = finish(inner, &job, lease, o, summary, model) {
                fail(inner, &job, lease, "storage_failed", &format!("recording the job's outcome: {e:#}"));
            }
        }
        Err(e) => {
            let code = if e.downcast_ref::<crate::train::Diverged>().is_some() { "diverged" } else { "training_failed" };
            fail(inner, &job, lease, code, &format!("{e:#}"))
        }
    }
    // Paused and interrupted jobs resume from the shared store, here or on another node.
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Ends a job this worker holds as `failed`, with its error and a last event.
fn fail(inner: &Arc<Inner>, job: &Job, lease: &Lease, code: &str, message: &str) {
    tracing::error!(code, error = message, "job failed");
    let shown = inner.cfg.artifacts.redact(message);
    inner.cfg.events.send(event(&job.id, &lease.worker, "error", "message", format!("Job failed: {shown}"), None, None));
    inner.cfg.events.flush_blocking();
    let error = JobError { code: code.into(), message: inner.cfg.artifacts.redact(message), param: None };
    let end = JobEnd { status: JobStatus::Failed, result: None, error: Some(&error), model: None, result_file: None };
    if let Err(e) = inner.rt.block_on(inner.cfg.store.finish_job(&job.id, &lease.worker, &end)) {
        // The database itself is out of reach: the lease runs out and the attempts count it.
        tracing::error!(error = format!("{e:#}"), "recording that the job failed");
    }
}

fn finish(inner: &Arc<Inner>, job: &Job, lease: &Lease, o: Outcome, summary: RunSummary, model_id: String) -> Result<()> {
    let store = &inner.cfg.store;
    let ev = &inner.cfg.events;
    let status = JobStatus::after(o.ending);
    let (message, data) = match o.ending {
        Ending::Finished | Ending::EarlyStopped => {
            let kept = o.adapter.clone().context("training produced no adapter")?;
            let key = job_key(&job.id, "final.adapter.safetensors");
            inner.rt.block_on(inner.cfg.artifacts.put_file(&key, &kept))?;
            inner.rt.block_on(store.insert_model(&ModelRow {
                id: model_id.clone(),
                job_id: job.id.clone(),
                base_model: job.spec.model.clone(),
                created_at: now(),
                path: key,
                checkpoint_step: None,
            }))?;
            (format!("Job succeeded: fine-tuned model {model_id}"), Some(serde_json::to_value(&summary)?))
        }
        Ending::Cancelled => ("Job cancelled".to_string(), Some(json!({"status": "cancelled"}))),
        // A hand-back becomes what the client asked meanwhile (see `Store::release_job`).
        Ending::Paused | Ending::Interrupted | Ending::Suspended => {
            match inner.rt.block_on(store.job(&job.id)).ok().flatten().map(|j| j.desired) {
                Some(Desired::Cancel) => ("Job cancelled".to_string(), Some(json!({"status": "cancelled"}))),
                Some(Desired::Pause) => (format!("Job paused at step {}", o.steps), Some(json!({"status": "paused"}))),
                _ if o.ending == Ending::Paused => (format!("Job paused at step {}", o.steps), Some(json!({"status": "paused"}))),
                _ => (format!("Server stopping: job checkpointed at step {} and queued again", o.steps), Some(json!({"status": "queued"}))),
            }
        }
    };
    ev.send(event(&job.id, &lease.worker, "info", "message", message, data, None));
    ev.flush_blocking();
    if status.is_terminal() {
        let succeeded = status == JobStatus::Succeeded;
        // The results file is a view of the stored history: a job whose file cannot be written
        // still succeeds, with none.
        let results = succeeded
            .then(|| store_results(inner, job))
            .and_then(|r| r.map_err(|e| tracing::warn!(error = format!("{e:#}"), "storing the job's results file")).ok());
        let end = JobEnd {
            status,
            result: succeeded.then_some(&summary),
            error: None,
            model: succeeded.then_some(model_id.as_str()),
            result_file: results.as_deref(),
        };
        inner.rt.block_on(store.finish_job(&job.id, &lease.worker, &end)).map(|_| ())
    } else {
        inner.rt.block_on(store.release_job(&job.id, &lease.worker, status)).map(|_| ())
    }
}

/// Stores a job's results file (see [`crate::job::results`]) as a file of its project; its id.
fn store_results(inner: &Arc<Inner>, job: &Job) -> Result<String> {
    let store = &inner.cfg.store;
    let mut reports = Vec::new();
    let mut after = 0;
    loop {
        let rows = inner.rt.block_on(store.events(&job.id, after, 1000))?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        let metrics = rows.iter().filter(|e| e.kind == "metrics").filter_map(|e| e.data.as_deref());
        reports.extend(metrics.filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok()));
    }
    let (csv, rows) = results_csv(&reports);
    let owner = (job.project_id.as_str(), job.api_key_id.as_deref());
    let row = FileRow::written(new_id("file"), format!("{}-results.csv", job.id), "fine-tune-results", "csv", rows, csv.len(), owner);
    inner.rt.block_on(inner.cfg.artifacts.put(&row.path, csv.into_bytes()))?;
    inner.rt.block_on(store.insert_file(&row))?;
    Ok(row.id)
}

/// The fine-tuned model id of a job: `ft-[suffix-]<job id tail>`.
pub fn model_id(job: &Job) -> String {
    let tail = job.id.trim_start_matches("ftjob-");
    match &job.suffix {
        Some(s) if !s.is_empty() => format!("ft-{s}-{tail}"),
        _ => format!("ft-{tail}"),
    }
}

/// The checkpoint files, newest last, copied to the shared store in this order so that
/// `latest.json` never names a file the store lacks.
fn checkpoint_files(dir: &Path) -> Result<Vec<String>> {
    let latest = checkpoint::latest(dir)?.context("a checkpoint was reported but latest.json is missing")?;
    let mut names = vec![latest.adapter, latest.state];
    if checkpoint::best_path(dir).exists() {
        names.push("best.adapter.safetensors".into());
    }
    names.push("latest.json".into());
    Ok(names)
}

/// Keeps a job's newest `--keep-checkpoints` checkpoints (rows, models and files); a failure to
/// delete an old one costs disk, not the job, and is logged.
fn prune_checkpoints(inner: &Arc<Inner>, job_id: &str) {
    let old = match inner.rt.block_on(inner.cfg.store.prune_checkpoints(job_id, inner.cfg.keep_checkpoints)) {
        Ok(old) => old,
        Err(e) => return tracing::warn!(error = format!("{e:#}"), "pruning old checkpoints"),
    };
    for c in old {
        let adapter = c.path.rsplit('/').next().unwrap_or_default().to_string();
        let keys = [Some(c.path.clone()), checkpoint::state_name_of(&adapter).map(|s| checkpoint_key(job_id, 0, &s))];
        for key in keys.into_iter().flatten() {
            if let Err(e) = inner.rt.block_on(inner.cfg.artifacts.delete(&key)) {
                tracing::warn!(key, error = format!("{e:#}"), "deleting an old checkpoint");
            }
        }
    }
}

/// A key of a job's member `m` (see [`crate::job::run::train_members`]): the job's own for the
/// first, under `members/<m>/` for each other.
fn member_key(job_id: &str, m: usize, name: &str) -> String {
    match m {
        0 => job_key(job_id, name),
        _ => job_key(job_id, &format!("members/{m}/{name}")),
    }
}

fn checkpoint_key(job_id: &str, m: usize, name: &str) -> String {
    member_key(job_id, m, &format!("checkpoints/{name}"))
}

/// A job's member `m`'s folder on this node: the job's own for the first.
fn member_work_dir(work: &Path, job_id: &str, m: usize) -> PathBuf {
    match m {
        0 => work_dir(work, job_id),
        _ => work_dir(work, job_id).join("members").join(m.to_string()),
    }
}

/// Makes `dir` hold the latest checkpoint of the job's member `m` from the shared store
/// (whichever node wrote it), or nothing when the store has none: the store, not this node's
/// scratch, says where a job is.
fn restore_checkpoint(inner: &Arc<Inner>, job_id: &str, m: usize, dir: &Path) -> Result<()> {
    let artifacts = &inner.cfg.artifacts;
    let _ = std::fs::remove_dir_all(dir);
    let latest_key = checkpoint_key(job_id, m, "latest.json");
    let Some(text) = inner.rt.block_on(artifacts.get_if_exists(&latest_key))? else {
        return Ok(());
    };
    let latest: checkpoint::Latest = serde_json::from_slice(&text).with_context(|| format!("artifact {latest_key} is corrupt"))?;
    for name in [&latest.adapter, &latest.state] {
        inner.rt.block_on(artifacts.download(&checkpoint_key(job_id, m, name), &dir.join(name)))?;
    }
    if let Some(best) = inner.rt.block_on(artifacts.get_if_exists(&checkpoint_key(job_id, m, "best.adapter.safetensors")))? {
        crate::fsutil::write_atomic(&checkpoint::best_path(dir), &best)?;
    }
    crate::fsutil::write_atomic(&dir.join("latest.json"), &text)
}

fn search_key(job_id: &str, m: usize) -> String {
    member_key(job_id, m, "search/search.json")
}

/// The folder of the learning-rate search of a job's member `m` on this node, holding the
/// search's record from the shared store when it has one (the trials' own checkpoints stay on
/// the node that trained them: a trial cut off elsewhere is trained again, to the same result).
fn restore_search(inner: &Arc<Inner>, job_id: &str, m: usize) -> Result<PathBuf> {
    let dir = member_work_dir(&inner.cfg.work_dir, job_id, m).join(crate::job::run::SEARCH_DIR);
    if let Some(record) = inner.rt.block_on(inner.cfg.artifacts.get_if_exists(&search_key(job_id, m)))? {
        std::fs::create_dir_all(&dir)?;
        crate::fsutil::write_atomic(&dir.join(crate::train::lr_search::RECORD), &record)?;
    }
    Ok(dir)
}

/// Loads a job's model and data and trains it (each of its ensemble's members in turn); returns
/// the outcome, its summary and the model id.
fn train_job(inner: &Arc<Inner>, job: &Job, worker: &str, control: &Control, lost: &AtomicBool) -> Result<(Outcome, RunSummary, String)> {
    let cfg = &inner.cfg;
    let store = &cfg.store;
    let ckpt_dir = work_dir(&cfg.work_dir, &job.id).join("checkpoints");
    restore_checkpoint(inner, &job.id, 0, &ckpt_dir)?;
    // Whatever was recorded past the checkpoint this run restarts from is redone: drop it.
    let resume_step = checkpoint::latest(&ckpt_dir)?.map_or(0, |l| l.step);
    inner.rt.block_on(store.truncate_metrics_after(&job.id, resume_step as i64))?;
    let message = if resume_step > 0 {
        format!("Job resumed from the checkpoint of step {resume_step} on worker {worker}")
    } else {
        format!("Job started on worker {worker}")
    };
    // The status rides with the message, so that a client watching the stream sees it change.
    cfg.events.send(event(&job.id, worker, "info", "message", message, Some(json!({"status": "running"})), None));

    let file = |id: &Option<String>| id.as_ref().map(|f| inner.rt.block_on(cfg.artifacts.local(&file_key(f)))).transpose();
    let files = DataFiles { train: file(&job.spec.files.train)?, valid: file(&job.spec.files.valid)?, test: None };
    let spec = job.spec.clone().with_files(files);
    let mut run = prepare(&spec, &cfg.registry, &cfg.limits, cfg.device, cfg.precision)?;
    let report = run.model.param_report();
    let data = &run.prepared.task.info;
    let samples = if spec.task.needs_file() { format!("{} samples", data.train_samples) } else { "generated samples".to_string() };
    cfg.events.send(event(
        &job.id,
        worker,
        "info",
        "message",
        format!("Training {} of {} parameters ({:.3}%) on {samples}", report.trained, report.total, 100.0 * report.trained_fraction),
        Some(json!({"parameters": report, "data": data})),
        None,
    ));
    let model_id = model_id(job);
    let metadata = HashMap::from([("job_id".to_string(), job.id.clone()), ("fine_tuned_model".to_string(), model_id.clone())]);
    let primary = run.prepared.task.objective.primary().name;
    // The checkpoint files each member after the first has in the store (it keeps its latest
    // only: it has no rows to prune by).
    let stored: RefCell<HashMap<usize, Vec<String>>> = RefCell::default();
    let mut dirs = |m: usize| -> Result<MemberDirs> {
        let checkpoints = member_work_dir(&cfg.work_dir, &job.id, m).join("checkpoints");
        if m > 0 {
            restore_checkpoint(inner, &job.id, m, &checkpoints)?;
            if checkpoint::latest(&checkpoints)?.is_some() {
                stored.borrow_mut().insert(m, checkpoint_files(&checkpoints)?);
            }
        }
        Ok(MemberDirs { checkpoints, search: restore_search(inner, &job.id, m)? })
    };
    let mut checkpoint_failure: Option<anyhow::Error> = None;
    let mut progress = |m: usize, p: Progress| match p {
        Progress::Metrics(metrics) => {
            inner.samples_per_second.lock().unwrap().insert(job.id.clone(), metrics.samples_per_second);
            // A learning-rate trial's reports, and a later ensemble member's, have no step of the
            // job's (their steps are their own, from 0 again): they are kept whatever checkpoint
            // the job resumes from.
            let step = (metrics.trial.is_none() && m == 0).then_some(metrics.step as i64);
            cfg.events.send(event(
                &job.id,
                worker,
                "info",
                "metrics",
                progress_message(&metrics, primary),
                serde_json::to_value(&metrics).ok(),
                step,
            ));
            if let Some(step) = step {
                cfg.events.steps(&job.id, worker, step);
            }
        }
        Progress::Search(record) => {
            // The record is what resumes the search on any node; a failure to store it costs a
            // resumed search its trials, not the job.
            let stored = serde_json::to_vec(&record)
                .map_err(anyhow::Error::from)
                .and_then(|b| inner.rt.block_on(cfg.artifacts.put(&search_key(&job.id, m), b)));
            if let Err(e) = stored {
                tracing::warn!(error = format!("{e:#}"), "storing the learning-rate search's record");
            }
        }
        Progress::Checkpoint { step, adapter, metrics } => {
            if lost.load(Ordering::SeqCst) {
                return; // the job's new worker owns its checkpoints now
            }
            // Events up to this step become durable before the checkpoint is recorded.
            cfg.events.flush_blocking();
            let saved = match m {
                0 => store_checkpoint(inner, job, &model_id, step, &adapter, metrics.as_ref()),
                _ => store_member_checkpoint(inner, &job.id, m, &adapter, stored.borrow_mut().entry(m).or_default()),
            };
            if let Err(e) = saved {
                // A run whose checkpoints cannot be kept cannot be resumed: stop it and fail it.
                checkpoint_failure.get_or_insert_with(|| e.context(format!("storing the checkpoint of step {step}")));
                control.set(Command::Cancel);
            }
            if m == 0 {
                cfg.events.steps(&job.id, worker, step as i64);
            }
        }
        Progress::Message(s) => cfg.events.send(event(&job.id, worker, "info", "message", s, None, None)),
    };
    let hooks = MemberHooks { dirs: &mut dirs, progress: &mut progress };
    let trained = train_members(&mut run, &spec, cfg.device, cfg.precision, control, metadata, hooks)?;
    if let Some(e) = checkpoint_failure {
        return Err(e);
    }
    let out = work_dir(&cfg.work_dir, &job.id).join("kept.adapter.safetensors");
    let (outcome, summary) = finish_members(&mut run, trained, &out)?;
    Ok((outcome, summary, model_id))
}

/// Stores a checkpoint of a job (its first member's): its files, then its row, which serves it as
/// a model; the oldest beyond `--keep-checkpoints` go.
fn store_checkpoint(
    inner: &Arc<Inner>,
    job: &Job,
    model_id: &str,
    step: u64,
    adapter: &Path,
    metrics: Option<&crate::train::Evaluation>,
) -> Result<()> {
    let name = adapter.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut values = json!({"step": step});
    if let Some(m) = metrics {
        for (k, v) in m.prefixed("valid_") {
            values[k] = json!(v);
        }
    }
    let row = CheckpointRow {
        id: new_id("ftckpt"),
        job_id: job.id.clone(),
        step_number: step as i64,
        created_at: now(),
        metrics: Some(values.to_string()),
        model_id: format!("{model_id}-step-{step}"),
        path: checkpoint_key(&job.id, 0, &name),
    };
    let dir = adapter.parent().unwrap_or(Path::new("."));
    for n in checkpoint_files(dir)? {
        inner.rt.block_on(inner.cfg.artifacts.put_file(&checkpoint_key(&job.id, 0, &n), &dir.join(&n)))?;
    }
    inner.rt.block_on(inner.cfg.store.insert_checkpoint(&row, &job.spec.model))?;
    prune_checkpoints(inner, &job.id);
    Ok(())
}

/// Stores the latest checkpoint of a later ensemble member, which resumes it on any node, and
/// deletes the files of the one before it (`previous`): a member's checkpoints are no model of
/// the job's, and only its latest is needed.
fn store_member_checkpoint(inner: &Arc<Inner>, job_id: &str, m: usize, adapter: &Path, previous: &mut Vec<String>) -> Result<()> {
    let dir = adapter.parent().unwrap_or(Path::new("."));
    let names = checkpoint_files(dir)?;
    for n in &names {
        inner.rt.block_on(inner.cfg.artifacts.put_file(&checkpoint_key(job_id, m, n), &dir.join(n)))?;
    }
    for old in previous.iter().filter(|o| !names.contains(o)) {
        if let Err(e) = inner.rt.block_on(inner.cfg.artifacts.delete(&checkpoint_key(job_id, m, old))) {
            tracing::warn!(error = format!("{e:#}"), "deleting an old checkpoint of an ensemble member");
        }
    }
    *previous = names;
    Ok(())
}

/// `Step 40/100: training loss=0.6931, validation accuracy=0.5000`.
fn progress_message(m: &crate::train::Metrics, primary: &str) -> String {
    let mut msg = format!("Step {}/{}: training loss={:.4}", m.step, m.total_steps, m.get("train_loss").unwrap_or(f64::NAN));
    if let Some(v) = m.get(&format!("valid_{primary}")) {
        msg.push_str(&format!(", validation {primary}={v:.4}"));
    }
    msg
}
