//! Starting the service (settings, database, workers, inference thread, router) or a worker-only
//! node; graceful shutdown on SIGTERM/Ctrl-C (stop accepting, checkpoint running jobs, queue them
//! again, exit).
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::batch_runner::{self, Runner};
use crate::api::predictions::Predictor;
use crate::api::{router, AppState};
use crate::config::{ServeArgs, WorkerArgs};
use crate::model::{parse_device, ModelRegistry};
use crate::queue::events::EventSink;
use crate::queue::{Queue, QueueConfig};
use crate::serve::Inference;

pub fn serve_blocking(args: ServeArgs) -> Result<()> {
    let args = args.resolve()?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(args))
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    let listener = TcpListener::bind(&args.bind).await.with_context(|| format!("binding {}", args.bind))?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    // Tests and tools read the bound address (port 0 picks one) from this line.
    println!("fpt listening on http://{}", listener.local_addr()?);
    run(args, listener).await
}

pub async fn run(args: ServeArgs, listener: TcpListener) -> Result<()> {
    args.limits.apply();
    if args.common.threads > 0 {
        tch::set_num_threads(args.common.threads);
    }
    let device = parse_device(&args.common.device)?;
    let (store, artifacts) = args.shared.open(&args.data_dir).await?;
    let workers = if args.no_workers { 0 } else { args.workers.unwrap_or_else(default_workers) };
    // An hour: no put of this service takes that long; anything younger may be another node's.
    let removed = artifacts.remove_partial_uploads(Duration::from_secs(3600), async |id: &str| Ok(store.file_exists(id).await?)).await?;
    if removed > 0 {
        tracing::info!(files = removed, "removed what interrupted uploads left behind");
    }
    if args.shared.event_retention_days > 0 {
        tokio::spawn(prune_events_hourly(store.clone(), args.shared.event_retention_days));
    }
    // What a dead process of this host was running resumes at once; a live one's jobs stay its own.
    if workers > 0 {
        let requeued = crate::queue::requeue_orphans(&store).await?;
        if requeued > 0 {
            tracing::info!(jobs = requeued, "jobs whose process on this host had died are queued again");
        }
    }
    let registry = ModelRegistry::for_clients(&args.common.models_dir, args.allow_downloads);
    let events = EventSink::start(store.clone());
    let queue = Queue::start(QueueConfig {
        store: store.clone(),
        events: events.clone(),
        registry: registry.clone(),
        artifacts: artifacts.clone(),
        work_dir: args.data_dir.join("work"),
        device,
        precision: args.precision,
        limits: args.limits.limits(),
        max_attempts: args.shared.max_attempts,
        keep_checkpoints: args.shared.keep_checkpoints,
        workers,
        lease_seconds: args.shared.lease_secs,
        max_running_per_project: args.shared.project_max_running_jobs,
    });
    let inference = Inference::start(args.inference.serve_config(device, args.precision), registry.clone());
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    let state = AppState::new(store, Arc::new(args.api_settings()), registry, queue.clone(), events, inference, artifacts);
    state.ready.store(true, Ordering::SeqCst);
    let batches = (!args.no_batches).then(|| tokio::spawn(batch_runner::run(state.batch_runner())));
    let hooks = args.webhooks().expect("checked by resolve");
    tokio::spawn(crate::webhooks::run(state.store.clone(), hooks, state.stopping.clone()));
    let app = router(state.clone());
    let stopping = state.stopping.clone();
    let stop = async move {
        shutdown_signal().await;
        // Live streams end now: otherwise the graceful stop waits for every watching client.
        stopping.cancel();
    };
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).with_graceful_shutdown(stop).await?;
    tracing::info!("shutting down: checkpointing running jobs");
    state.ready.store(false, Ordering::SeqCst);
    // The batch runner records its chunk in flight and stops; another node, or this one restarted,
    // goes on with the rest once its lease runs out.
    let (_, jobs) = tokio::join!(stop_batches(batches, grace), tokio::time::timeout(grace, queue.shutdown()));
    if jobs.is_err() {
        tracing::warn!(
            seconds = grace.as_secs(),
            "running jobs did not stop within the grace period; exiting (they resume from their last checkpoints)"
        );
    }
    Ok(())
}

/// Deletes the events of jobs that ended more than `days` ago, now and every hour after.
async fn prune_events_hourly(store: crate::store::Store, days: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let before = crate::store::now() - (days as i64).saturating_mul(86_400);
        match store.prune_events(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, days, "pruned the events of jobs that ended long ago"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "pruning old events"),
        }
    }
}

fn default_workers() -> usize {
    (tch::Cuda::device_count() as usize).max(1)
}

pub fn work_blocking(args: WorkerArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(work(args))
}

/// A worker-only node: claims jobs, and batches unless `--no-batches`, from the shared database
/// until SIGTERM, then checkpoints what it runs and hands it back.
pub async fn work(args: WorkerArgs) -> Result<()> {
    args.limits.apply();
    if args.common.threads > 0 {
        tch::set_num_threads(args.common.threads);
    }
    let device = parse_device(&args.common.device)?;
    let (store, artifacts) = args.shared.open(&args.data_dir).await?;
    let workers = args.workers.unwrap_or_else(default_workers).max(1);
    let requeued = crate::queue::requeue_orphans(&store).await?;
    if requeued > 0 {
        tracing::info!(jobs = requeued, "jobs whose process on this host had died are queued again");
    }
    let events = EventSink::start(store.clone());
    let registry = ModelRegistry::for_clients(&args.common.models_dir, args.allow_downloads);
    let stopping = CancellationToken::new();
    let batches = (!args.no_batches).then(|| {
        let predictor = Predictor {
            store: store.clone(),
            artifacts: artifacts.clone(),
            inference: Inference::start(args.inference.serve_config(device, args.precision), registry.clone()),
            max_rows: args.inference.max_rows(),
            timeout: args.inference.timeout(),
        };
        tokio::spawn(batch_runner::run(Runner { predictor, stopping: stopping.clone(), wake: Arc::default() }))
    });
    let queue = Queue::start(QueueConfig {
        store,
        events,
        registry,
        artifacts,
        work_dir: args.data_dir.join("work"),
        device,
        precision: args.precision,
        limits: args.limits.limits(),
        max_attempts: args.shared.max_attempts,
        keep_checkpoints: args.shared.keep_checkpoints,
        workers,
        lease_seconds: args.shared.lease_secs,
        max_running_per_project: args.shared.project_max_running_jobs,
    });
    let kind = crate::job::DeviceKind::of(device).as_str();
    tracing::info!(workers, device = kind, "worker node started");
    // Tests and tools wait for this line.
    println!("fpt worker ready: {workers} workers on {kind}");
    shutdown_signal().await;
    tracing::info!("shutting down: checkpointing running jobs");
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    stopping.cancel();
    // Both at once: the jobs checkpoint while the batch runner records its chunk, within one grace.
    let (_, jobs) = tokio::join!(stop_batches(batches, grace), tokio::time::timeout(grace, queue.shutdown()));
    if jobs.is_err() {
        tracing::warn!(
            seconds = grace.as_secs(),
            "running jobs did not stop within the grace period; exiting (they resume from their last checkpoints)"
        );
    }
    Ok(())
}

/// Waits for a stopping batch runner to record its chunk in flight and hand its batch back.
async fn stop_batches(runner: Option<tokio::task::JoinHandle<()>>, grace: Duration) {
    if let Some(runner) = runner {
        if tokio::time::timeout(grace, runner).await.is_err() {
            tracing::warn!("the batch runner did not stop within the grace period");
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
