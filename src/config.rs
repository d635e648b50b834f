//! Settings of the HTTP service: flags, each with an environment variable, and an optional TOML
//! file whose keys (the flags' names with underscores) fill in what the command line left at its default.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;

use axum::http::HeaderValue;
use tower_http::cors::AllowOrigin;

use crate::artifacts::Artifacts;
use crate::flags::CommonArgs;
use crate::job::Limits;
use crate::model::Precision;
use crate::store::Store;
use crate::tasks::TaskLimits;

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// The address to listen on (port 0: any free port, printed at start).
    #[arg(long, env = "FPT_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// SQLite database, uploaded files, checkpoints and adapters.
    #[arg(long, env = "FPT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Training workers (default: one per GPU, one on CPU).
    #[arg(long, env = "FPT_WORKERS")]
    pub workers: Option<usize>,
    /// Run the API only, no training workers.
    #[arg(long)]
    pub no_workers: bool,
    /// Leave batches to other nodes (worker nodes answer them too).
    #[arg(long, env = "FPT_NO_BATCHES")]
    pub no_batches: bool,
    /// API keys accepted as `Authorization: Bearer <key>` (repeat, or comma-separate in FPT_API_KEYS).
    #[arg(long = "api-key", env = "FPT_API_KEYS", value_delimiter = ',')]
    pub api_keys: Vec<String>,
    /// The key that manages projects and their API keys (`/v1/organization/*`); with it, project
    /// keys made over the API are accepted too. Nothing else is done with it.
    #[arg(long, env = "FPT_ADMIN_KEY")]
    pub admin_key: Option<String>,
    /// Queued jobs a project may have at once (0: no limit); more are refused with 429.
    #[arg(long, env = "FPT_PROJECT_MAX_QUEUED_JOBS", default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub project_max_queued_jobs: i64,
    /// Megabytes of uploaded files a project may keep (0: no limit); more are refused with 429.
    #[arg(long, env = "FPT_PROJECT_MAX_STORAGE_MB", default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub project_max_storage_mb: i64,
    /// Requests per second a project may make, on each API node (0: no limit); more get 429.
    #[arg(long, env = "FPT_PROJECT_RPS", default_value_t = 0.0)]
    pub project_rps: f64,
    /// Requests per second one API key may make, on each API node (0: no limit); more get 429.
    #[arg(long, env = "FPT_KEY_RPS", default_value_t = 0.0)]
    pub key_rps: f64,
    /// Endpoints that receive an event when a job or batch ends, signed as Standard Webhooks (as
    /// OpenAI's; repeat, or comma-separate in FPT_WEBHOOK_URLS).
    #[arg(long = "webhook-url", env = "FPT_WEBHOOK_URLS", value_delimiter = ',')]
    pub webhook_urls: Vec<String>,
    /// The webhooks' signing secret: `whsec_` and the base64 of at least 16 random bytes.
    #[arg(long, env = "FPT_WEBHOOK_SECRET")]
    pub webhook_secret: Option<String>,
    /// Allow a non-loopback bind without API keys.
    #[arg(long)]
    pub insecure: bool,
    /// Largest uploaded file, in MiB (413 past it).
    #[arg(long, env = "FPT_MAX_UPLOAD_MB", default_value_t = 512)]
    pub max_upload_mb: usize,
    /// Largest JSON request body, in MiB (413 past it).
    #[arg(long, env = "FPT_MAX_BODY_MB", default_value_t = 32)]
    pub max_body_mb: usize,
    /// Seconds a request may take (408 past it); live event streams are not held to it.
    #[arg(long, env = "FPT_REQUEST_TIMEOUT_SECS", default_value_t = 120)]
    pub request_timeout_secs: u64,
    /// Requests served at once; more get 429.
    #[arg(long, env = "FPT_MAX_CONCURRENCY", default_value_t = 256)]
    pub max_concurrency: usize,
    /// Origins allowed by CORS (none: CORS off).
    #[arg(long = "cors-origin", env = "FPT_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// The frozen weights' precision: auto (bf16 on a GPU that has it, else fp32), fp32, bf16.
    #[arg(long, value_enum, env = "FPT_PRECISION", default_value_t = Precision::Auto)]
    pub precision: Precision,
    /// KiB/s an upload must average after its first 10 s (and no part may stall longer); slower
    /// uploads get 408, so trickling clients cannot hold every request slot.
    #[arg(long, env = "FPT_MIN_UPLOAD_KBPS", default_value_t = 16)]
    pub min_upload_kbps: u64,
    /// Live event streams (`?stream=true`) at once; more get 429 with `retry-after`.
    #[arg(long, env = "FPT_MAX_STREAMS", default_value_t = 64)]
    pub max_streams: usize,
    /// Live event streams one client (an API key, or an address when the API is open) may hold.
    #[arg(long, env = "FPT_MAX_STREAMS_PER_CLIENT", default_value_t = 8)]
    pub max_streams_per_client: usize,
    /// Seconds SIGTERM waits for running jobs to checkpoint and go back to the queue before the
    /// process exits anyway (a job not checkpointed resumes from its last checkpoint).
    #[arg(long, env = "FPT_SHUTDOWN_GRACE_SECS", default_value_t = 60)]
    pub shutdown_grace_secs: u64,
    /// A TOML file of settings.
    #[arg(long, env = "FPT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Let jobs name GPT-2-family base models from the Hugging Face hub (its cache, else a
    /// download, size-capped and checked against the hub's sha256). Off: only the models folder.
    #[arg(long, env = "FPT_ALLOW_DOWNLOADS")]
    pub allow_downloads: bool,
    #[command(flatten)]
    pub inference: InferenceArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub shared: SharedState,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The shared batcher that answers predictions: over HTTP on an API node, and as batches' lines on
/// API and worker nodes.
#[derive(Args, Clone, Debug)]
pub struct InferenceArgs {
    /// Largest batch of prediction rows run in one forward pass.
    #[arg(long, env = "FPT_MAX_BATCH_SIZE", default_value_t = 64)]
    pub max_batch_size: usize,
    /// How long the batcher waits for more requests to join a batch.
    #[arg(long, env = "FPT_MAX_BATCH_WAIT_MS", default_value_t = 3)]
    pub max_batch_wait_ms: u64,
    /// Prediction requests waiting at once; more get 429.
    #[arg(long, env = "FPT_MAX_QUEUE", default_value_t = 512)]
    pub max_queue: usize,
    /// Samples one prediction request may hold; more is a 413 naming the limit.
    #[arg(long, env = "FPT_MAX_PREDICTION_ROWS", default_value_t = 4096)]
    pub max_prediction_rows: usize,
    /// A prediction request that waited longer gets 503.
    #[arg(long, env = "FPT_PREDICTION_TIMEOUT_MS", default_value_t = 30_000)]
    pub prediction_timeout_ms: u64,
    /// Adapters kept loaded (count).
    #[arg(long, env = "FPT_ADAPTER_CACHE", default_value_t = 64)]
    pub adapter_cache: usize,
    /// Adapters kept loaded (total MiB).
    #[arg(long, env = "FPT_ADAPTER_CACHE_MB", default_value_t = 2048)]
    pub adapter_cache_mb: usize,
}

impl InferenceArgs {
    pub fn serve_config(&self, device: tch::Device, precision: Precision) -> crate::serve::ServeConfig {
        crate::serve::ServeConfig {
            device,
            frozen_kind: precision.frozen_kind(device),
            max_batch_size: self.max_batch_size.max(1),
            max_wait: Duration::from_millis(self.max_batch_wait_ms),
            max_queue: self.max_queue,
            cache_count: self.adapter_cache,
            cache_bytes: self.adapter_cache_mb << 20,
        }
    }

    pub fn max_rows(&self) -> usize {
        self.max_prediction_rows.max(1)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.prediction_timeout_ms)
    }
}

/// The bounds of what one job may ask for (the rest of `crate::job::Limits` keeps its defaults).
#[derive(Args, Clone, Debug)]
pub struct LimitArgs {
    /// Largest `n_steps` of a job.
    #[arg(long, env = "FPT_MAX_STEPS", default_value_t = Limits::default().max_steps)]
    pub max_steps: u64,
    /// Most checkpoints one job may write (`n_steps / checkpoint_every`).
    #[arg(long, env = "FPT_MAX_CHECKPOINTS", default_value_t = Limits::default().max_checkpoints)]
    pub max_checkpoints: u64,
    /// Most samples of a generated split (bit tasks, generated ListOps).
    #[arg(long, env = "FPT_MAX_GENERATED_SAMPLES", default_value_t = TaskLimits::default().max_generated_samples)]
    pub max_generated_samples: usize,
    /// Most classes of a classification head.
    #[arg(long, env = "FPT_MAX_CLASSES", default_value_t = TaskLimits::default().max_classes)]
    pub max_classes: usize,
    /// MiB a run's model and largest pass may take (estimated when its data is loaded, before
    /// the model is built); a job over it is refused naming micro_batch_size.
    #[arg(long, env = "FPT_MAX_RUN_MB", default_value_t = Limits::default().max_run_bytes >> 20)]
    pub max_run_mb: u64,
    /// MiB one data file may decompress to (gzip, tar, npz), so a small upload cannot become gigabytes.
    #[arg(long, env = "FPT_MAX_INFLATED_MB", default_value_t = 1024)]
    pub max_inflated_mb: u64,
}

impl LimitArgs {
    /// Puts the bounds that the data parsers read process-wide into effect.
    pub fn apply(&self) {
        crate::data::set_max_inflated_bytes(self.max_inflated_mb << 20);
    }

    pub fn limits(&self) -> Limits {
        let task = TaskLimits { max_generated_samples: self.max_generated_samples, max_classes: self.max_classes, ..TaskLimits::default() };
        Limits {
            max_steps: self.max_steps,
            max_checkpoints: self.max_checkpoints,
            max_run_bytes: self.max_run_mb << 20,
            task,
            ..Limits::default()
        }
    }
}

/// `--cors-origin` values as CORS takes them: `*` alone allows any origin (there are no
/// credentials to protect: keys travel in a header the page sets), or a list of origins.
fn cors_origins(origins: &[String]) -> Result<Option<AllowOrigin>> {
    if origins.is_empty() {
        return Ok(None);
    }
    if origins.iter().any(|o| o == "*") {
        if origins.len() > 1 {
            bail!(
                "--cors-origin `*` allows every origin: give it alone, not with {:?}",
                origins.iter().filter(|o| *o != "*").collect::<Vec<_>>()
            );
        }
        return Ok(Some(AllowOrigin::any()));
    }
    let parsed = origins
        .iter()
        .map(|o| {
            let ok = (o.starts_with("http://") || o.starts_with("https://")) && !o.ends_with('/');
            let value = HeaderValue::from_str(o).ok().filter(|_| ok);
            value.with_context(|| format!("--cors-origin `{o}` is not an origin such as https://example.com (scheme and host, no path)"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(AllowOrigin::list(parsed)))
}

/// What the HTTP handlers need of the settings: plain values, made once from the flags.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Bearer keys accepted on `/v1/*` for the default project (none, and no admin key: the API
    /// is open, on loopback only).
    pub api_keys: Vec<String>,
    /// The key of `/v1/organization/*`.
    pub admin_key: Option<String>,
    /// Each project's quotas where it sets none.
    pub default_quotas: crate::store::Quotas,
    /// Requests per second of one key (0: no limit).
    pub key_rps: f64,
    pub max_upload_bytes: usize,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// Requests served at once; more get 429.
    pub max_concurrency: usize,
    /// The origins CORS allows (`*`: any); None: CORS off.
    pub cors: Option<AllowOrigin>,
    pub prediction_timeout: Duration,
    /// Samples one prediction request may hold.
    pub max_prediction_rows: usize,
    /// Live event streams (SSE) at once; more get 429.
    pub max_streams: usize,
    /// Live event streams one client may hold; more get 429.
    pub max_streams_per_client: usize,
    /// The average rate an upload must keep after its first seconds.
    pub min_upload_bytes_per_sec: f64,
    pub limits: Limits,
}

/// Where the state every node shares lives: the job store and the artifacts. The defaults make one
/// self-contained node: SQLite and a folder, both inside `--data-dir`.
#[derive(Args, Clone, Debug)]
pub struct SharedState {
    /// `postgres://user:password@host/db` for many nodes (default: SQLite at `<data-dir>/fpt.db`).
    #[arg(long, env = "FPT_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Uploaded files, checkpoints and adapters: a folder or an object-store URL such as
    /// `s3://bucket/prefix` (default: `<data-dir>`).
    #[arg(long, env = "FPT_ARTIFACTS")]
    pub artifacts: Option<String>,
    /// Seconds a running job stays its worker's without a heartbeat before another worker takes it over.
    #[arg(long, env = "FPT_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(i64).range(1..))]
    pub lease_secs: i64,
    /// Days the events of an ended job are kept (0: for ever); pruned at start and every hour.
    #[arg(long, env = "FPT_EVENT_RETENTION_DAYS", default_value_t = 0)]
    pub event_retention_days: u64,
    /// Checkpoints kept per job, the newest (older ones, their fine-tuned models and files go).
    #[arg(long, env = "FPT_KEEP_CHECKPOINTS", default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..))]
    pub keep_checkpoints: i64,
    /// Claims a job may take without its worker ever stopping it on purpose (each claim after a
    /// worker died under it counts); the next claim fails it with `max_attempts`.
    #[arg(long, env = "FPT_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_attempts: i64,
    /// Jobs of one project running at once (0: no limit); the next waits in the queue. A project
    /// may set its own (`max_running_jobs`).
    #[arg(long, env = "FPT_PROJECT_MAX_RUNNING_JOBS", default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub project_max_running_jobs: i64,
}

impl SharedState {
    /// Connects to the job store (running its migrations) and opens the artifact store;
    /// `data_dir` holds the defaults and this node's cache.
    pub async fn open(&self, data_dir: &Path) -> Result<(Store, Artifacts)> {
        let store = match &self.database_url {
            Some(url) => Store::connect(url).await?,
            None => Store::open(&data_dir.join("fpt.db")).await?,
        };
        let location = self.artifacts.clone().unwrap_or_else(|| data_dir.display().to_string());
        let artifacts = Artifacts::open(&location, &data_dir.join("cache"))?;
        Ok((store, artifacts))
    }
}

/// `fpt worker`: training workers with no HTTP server, for the machines beside the API nodes.
#[derive(Args, Clone, Debug)]
pub struct WorkerArgs {
    /// This node's scratch folder (jobs' working copies, the artifact cache); with the defaults of
    /// `--database-url` and `--artifacts`, also the shared state of a one-machine setup.
    #[arg(long, env = "FPT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Training workers in this process (default: one per GPU, one on CPU).
    #[arg(long, env = "FPT_WORKERS")]
    pub workers: Option<usize>,
    /// The frozen weights' precision: auto (bf16 on a GPU that has it, else fp32), fp32, bf16.
    #[arg(long, value_enum, env = "FPT_PRECISION", default_value_t = Precision::Auto)]
    pub precision: Precision,
    /// As `fpt serve --allow-downloads`: jobs may name hub models.
    #[arg(long, env = "FPT_ALLOW_DOWNLOADS")]
    pub allow_downloads: bool,
    /// Seconds SIGTERM waits for running jobs to checkpoint and go back to the queue.
    #[arg(long, env = "FPT_SHUTDOWN_GRACE_SECS", default_value_t = 60)]
    pub shutdown_grace_secs: u64,
    /// Train only: leave batches to other nodes (by default a worker node answers batches' lines
    /// too, with its own copy of the backbone).
    #[arg(long, env = "FPT_NO_BATCHES")]
    pub no_batches: bool,
    #[command(flatten)]
    pub inference: InferenceArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub shared: SharedState,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    bind: Option<String>,
    data_dir: Option<PathBuf>,
    models_dir: Option<PathBuf>,
    workers: Option<usize>,
    api_keys: Option<Vec<String>>,
    max_upload_mb: Option<usize>,
    max_concurrency: Option<usize>,
    cors_origins: Option<Vec<String>>,
    device: Option<String>,
    max_batch_size: Option<usize>,
    max_batch_wait_ms: Option<u64>,
    adapter_cache: Option<usize>,
}

impl ServeArgs {
    /// The handlers' settings.
    pub fn api_settings(&self) -> ApiSettings {
        ApiSettings {
            api_keys: self.api_keys.clone(),
            admin_key: self.admin_key.clone(),
            default_quotas: crate::store::Quotas {
                max_running_jobs: Some(self.shared.project_max_running_jobs),
                max_queued_jobs: Some(self.project_max_queued_jobs),
                max_storage_bytes: Some(self.project_max_storage_mb.saturating_mul(1 << 20)),
                requests_per_second: Some(self.project_rps),
            },
            key_rps: self.key_rps,
            max_upload_bytes: self.max_upload_mb << 20,
            max_body_bytes: self.max_body_mb << 20,
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            max_concurrency: self.max_concurrency.max(1),
            cors: cors_origins(&self.cors_origins).expect("checked by resolve"),
            prediction_timeout: self.inference.timeout(),
            max_prediction_rows: self.inference.max_rows(),
            max_streams: self.max_streams.max(1),
            max_streams_per_client: self.max_streams_per_client.max(1),
            min_upload_bytes_per_sec: (self.min_upload_kbps * 1024) as f64,
            limits: self.limits.limits(),
        }
    }

    /// The webhook endpoints and their signing key (None: no endpoint set).
    pub fn webhooks(&self) -> Result<Option<crate::webhooks::Webhooks>> {
        crate::webhooks::Webhooks::from_settings(&self.webhook_urls, self.webhook_secret.as_deref())
    }

    /// Applies the TOML file (if any) and checks the settings make a safe server.
    pub fn resolve(mut self) -> Result<Self> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let f: FileSettings = toml::from_str(&text).with_context(|| format!("{} is not a valid settings file", path.display()))?;
            let d = |a: &str, b: &str| a == b;
            if let Some(v) = f.bind.filter(|_| d(&self.bind, "127.0.0.1:8080")) {
                self.bind = v
            }
            if let Some(v) = f.data_dir.filter(|_| self.data_dir == PathBuf::from("data")) {
                self.data_dir = v
            }
            if let Some(v) = f.models_dir.filter(|_| self.common.models_dir == PathBuf::from("models")) {
                self.common.models_dir = v
            }
            if self.workers.is_none() {
                self.workers = f.workers
            }
            if let Some(v) = f.api_keys.filter(|_| self.api_keys.is_empty()) {
                self.api_keys = v
            }
            if let Some(v) = f.max_upload_mb.filter(|_| self.max_upload_mb == 512) {
                self.max_upload_mb = v
            }
            if let Some(v) = f.max_concurrency.filter(|_| self.max_concurrency == 256) {
                self.max_concurrency = v
            }
            if let Some(v) = f.cors_origins.filter(|_| self.cors_origins.is_empty()) {
                self.cors_origins = v
            }
            if let Some(v) = f.device.filter(|_| d(&self.common.device, "auto")) {
                self.common.device = v
            }
            if let Some(v) = f.max_batch_size.filter(|_| self.inference.max_batch_size == 64) {
                self.inference.max_batch_size = v
            }
            if let Some(v) = f.max_batch_wait_ms.filter(|_| self.inference.max_batch_wait_ms == 3) {
                self.inference.max_batch_wait_ms = v
            }
            if let Some(v) = f.adapter_cache.filter(|_| self.inference.adapter_cache == 64) {
                self.inference.adapter_cache = v
            }
        }
        self.api_keys.retain(|k| !k.is_empty());
        self.admin_key = self.admin_key.take().filter(|k| !k.is_empty());
        if let Some(k) = &self.admin_key {
            if k.len() < 16 {
                bail!("--admin-key is too short: use at least 16 characters (a random secret)");
            }
            if self.api_keys.contains(k) {
                bail!("--admin-key must differ from every --api-key");
            }
        }
        for (flag, v) in [("--project-rps", self.project_rps), ("--key-rps", self.key_rps)] {
            if !v.is_finite() || v < 0.0 || (v > 0.0 && v < 0.001) {
                bail!("{flag} must be 0 (no limit) or a number of requests per second from 0.001");
            }
        }
        cors_origins(&self.cors_origins)?;
        self.webhooks()?;
        let addr: std::net::SocketAddr = self.bind.parse().with_context(|| format!("--bind `{}` is not an address:port", self.bind))?;
        if self.api_keys.is_empty() && self.admin_key.is_none() {
            if !addr.ip().is_loopback() && !self.insecure {
                bail!("refusing to listen on {addr} without API keys: set --api-key (or FPT_API_KEYS) or --admin-key, or pass --insecure");
            }
            tracing::warn!("no API keys configured: anyone who can reach {addr} can use the API");
        }
        Ok(self)
    }
}
