//! The job store's contract, run the same on both backends: embedded SQLite and a real
//! PostgreSQL server started for the test (Debian's package; `make setup` installs it).
mod common;

use fpt::job::status::JobError;
use fpt::job::{DataFiles, Desired, DeviceKind, JobStatus, Limits, Method, RawSpec, RunSummary, TrainSpec};
use fpt::store::{
    new_id, now, ApiKeyRow, Backend, CheckpointRow, FileRow, Job, JobEnd, Lease, ModelRow, NewEvent, Page, ProjectRow, Quotas, Reservation,
    Store, DEFAULT_PROJECT,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_contract_holds_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("fpt.db")).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    contract(&store).await;
    // Migrations are idempotent: opening again keeps the data.
    let again = Store::open(&dir.path().join("fpt.db")).await.unwrap();
    assert!(again.count_status(JobStatus::Succeeded).await.unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_contract_holds_on_postgres() {
    let pg = common::postgres::Postgres::start();
    let url = pg.database("fpt_store");
    let store = Store::connect(&url).await.unwrap();
    assert_eq!(store.backend(), Backend::Postgres);
    contract(&store).await;
    let again = Store::connect(&url).await.unwrap();
    assert!(again.count_status(JobStatus::Succeeded).await.unwrap() > 0);
}

/// A row that does not decode into its types is an error that names the job and the column,
/// never a silent null.
#[tokio::test]
async fn a_corrupt_job_row_is_an_error_naming_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fpt.db");
    let store = Store::open(&path).await.unwrap();
    let (good, bad) = (job("any"), job("any"));
    store.insert_job(&good).await.unwrap();
    store.insert_job(&bad).await.unwrap();
    let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    for (column, value) in [("task", r#"{"type":"no_such_task"}"#), ("status", "runnning"), ("result", "[1]")] {
        sqlx::query(&format!("UPDATE jobs SET {column} = $1 WHERE id = $2")).bind(value).bind(&bad.id).execute(&raw).await.unwrap();
        let err = format!("{:#}", store.job(&bad.id).await.unwrap_err());
        assert!(err.contains(&bad.id) && err.contains(column), "{column}: {err}");
        let err = format!("{:#}", store.jobs(DEFAULT_PROJECT, &[], &Page { after: None, limit: 10 }).await.unwrap_err());
        assert!(err.contains(&bad.id), "{err}");
        sqlx::query(&format!("UPDATE jobs SET {column} = (SELECT {column} FROM jobs WHERE id = $1) WHERE id = $2"))
            .bind(&good.id)
            .bind(&bad.id)
            .execute(&raw)
            .await
            .unwrap();
    }
    assert_eq!(store.job(&bad.id).await.unwrap().unwrap().spec, good.spec);
    // Claimed, an unreadable job fails with the cause instead of being claimed again every lease.
    sqlx::query("UPDATE jobs SET hyperparameters = 'nonsense' WHERE id = $1").bind(&bad.id).execute(&raw).await.unwrap();
    let w = lease("w", 60);
    assert_eq!(store.claim_job(&w, DeviceKind::Cpu, 0).await.unwrap().unwrap().id, good.id);
    let err = format!("{:#}", store.claim_job(&w, DeviceKind::Cpu, 0).await.unwrap_err());
    assert!(err.contains(&bad.id) && err.contains("hyperparameters"), "{err}");
    let row: (String, String) = sqlx::query_as("SELECT status, error FROM jobs WHERE id = $1").bind(&bad.id).fetch_one(&raw).await.unwrap();
    assert_eq!(row.0, "failed");
    assert!(row.1.contains("unreadable_job") && row.1.contains("hyperparameters"), "{}", row.1);
    assert!(store.claim_job(&w, DeviceKind::Cpu, 0).await.unwrap().is_none());
}

/// A database made before projects existed keeps its data: files, jobs and models move to the
/// default project, which the API (without project keys) goes on using.
#[tokio::test]
async fn data_from_before_projects_moves_to_the_default_project() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old-migrations");
    std::fs::create_dir(&old).unwrap();
    for f in std::fs::read_dir(common::root().join("migrations/sqlite")).unwrap() {
        let f = f.unwrap().path();
        if f.file_name().unwrap().to_str().unwrap() < "0005" {
            std::fs::copy(&f, old.join(f.file_name().unwrap())).unwrap();
        }
    }
    let path = dir.path().join("fpt.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::migrate::Migrator::new(old.as_path()).await.unwrap().run(&raw).await.unwrap();
    let j = job("any");
    sqlx::query(
        "INSERT INTO jobs (id, model, task, status, created_at, hyperparameters, method, seed) VALUES ($1, 'tiny', $2, 'succeeded', 1, $3, $4, 0)",
    )
    .bind(&j.id)
    .bind(serde_json::to_string(&j.spec.task).unwrap())
    .bind(serde_json::to_string(&j.spec.hyperparameters).unwrap())
    .bind(serde_json::to_string(&j.spec.method()).unwrap())
    .execute(&raw)
    .await
    .unwrap();
    sqlx::query("INSERT INTO files (id, filename, purpose, bytes, format, created_at, path) VALUES ('file-old', 'a.jsonl', 'fine-tune', 3, 'jsonl', 1, 'files/file-old')")
        .execute(&raw)
        .await
        .unwrap();
    sqlx::query("INSERT INTO models (id, job_id, base_model, created_at, path) VALUES ('ft-old', $1, 'tiny', 1, 'jobs/x')")
        .bind(&j.id)
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;
    let store = Store::open(&path).await.unwrap();
    assert_eq!(store.job(&j.id).await.unwrap().unwrap().project_id, DEFAULT_PROJECT);
    assert!(store.file(DEFAULT_PROJECT, "file-old").await.unwrap().is_some());
    assert!(store.model(DEFAULT_PROJECT, "ft-old").await.unwrap().is_some());
    assert_eq!(store.project(DEFAULT_PROJECT).await.unwrap().unwrap().name, "Default project");
}

#[tokio::test]
async fn a_bad_database_url_is_named() {
    let err = Store::connect("mysql://x@y/z").await.err().unwrap().to_string();
    assert!(err.contains("--database-url"), "{err}");
    let err = format!("{:#}", Store::connect("postgres://fpt:secret@127.0.0.1:1/none").await.err().unwrap());
    assert!(err.contains("connecting to postgres://fpt:***@127.0.0.1:1/none"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}

async fn contract(store: &Store) {
    files(store).await;
    claims(store).await;
    leases(store).await;
    concurrent_claims_are_exclusive(store).await;
    events_and_checkpoints(store).await;
    idempotency(store).await;
    projects(store).await;
}

/// Projects scope what they hold, cap the jobs they run at once, and their keys are found by
/// their secret's hash until revoked (or the project archived).
async fn projects(store: &Store) {
    let p = ProjectRow {
        id: new_id("proj"),
        name: "team a".into(),
        created_at: now(),
        archived_at: None,
        quotas: Quotas { max_running_jobs: Some(2), requests_per_second: Some(2.5), ..Quotas::default() },
    };
    store.insert_project(&p).await.unwrap();
    assert_eq!(store.project(&p.id).await.unwrap().unwrap().quotas, p.quotas);
    assert!(store.projects(&Page { after: None, limit: 1000 }, false).await.unwrap().iter().any(|q| q.id == p.id));
    // Three jobs of a project allowed two at once: the third waits while others' jobs go on.
    let ours: Vec<Job> = (0..3).map(|_| Job { project_id: p.id.clone(), ..job("any") }).collect();
    for j in &ours {
        store.insert_job(j).await.unwrap();
    }
    let theirs = job("any");
    store.insert_job(&theirs).await.unwrap();
    let mut claimed = Vec::new();
    while let Some(j) = store.claim_job(&lease("w-q", 60), DeviceKind::Cpu, 0).await.unwrap() {
        claimed.push(j.id);
    }
    assert_eq!(claimed, vec![ours[0].id.clone(), ours[1].id.clone(), theirs.id.clone()]);
    assert!(store.jobs(&p.id, &[], &Page { after: None, limit: 10 }).await.unwrap().iter().all(|j| j.project_id == p.id));
    // Jobs by their metadata: every pair must be held; keys and values are data, never SQL.
    let tagged = |pairs: &[(&str, &str)]| {
        let m: serde_json::Map<String, serde_json::Value> = pairs.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect();
        Job { project_id: p.id.clone(), metadata: Some(m), ..job("cuda") }
    };
    let a = tagged(&[("team", "a"), ("it's", "x\"'")]);
    let b = tagged(&[("team", "b")]);
    store.insert_job(&a).await.unwrap();
    store.insert_job(&b).await.unwrap();
    let by = |pairs: &[(&str, &str)]| {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let store = store.clone();
        let project = p.id.clone();
        async move {
            store.jobs(&project, &pairs, &Page { after: None, limit: 10 }).await.unwrap().into_iter().map(|j| j.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(by(&[("team", "a")]).await, vec![a.id.clone()]);
    assert_eq!(by(&[("team", "b")]).await, vec![b.id.clone()]);
    assert_eq!(by(&[("team", "a"), ("it's", "x\"'")]).await, vec![a.id.clone()]);
    assert!(by(&[("team", "a"), ("it's", "y")]).await.is_empty());
    assert!(by(&[("team", "c")]).await.is_empty());
    for j in [&a, &b] {
        store.transition(&j.id, &[JobStatus::Queued], JobStatus::Cancelled).await.unwrap();
    }
    assert_eq!(store.usage(&p.id).await.unwrap().running_jobs, 2);
    assert_eq!(store.usage(&p.id).await.unwrap().queued_jobs, 1);
    // One ends: the third runs.
    store.finish_job(&ours[0].id, "w-q", &end(JobStatus::Succeeded)).await.unwrap();
    assert_eq!(store.claim_job(&lease("w-q", 60), DeviceKind::Cpu, 0).await.unwrap().unwrap().id, ours[2].id);
    // A server-wide default applies to projects without their own quota.
    let a = job("any");
    let b = job("any");
    store.insert_job(&a).await.unwrap();
    store.insert_job(&b).await.unwrap();
    let running_default = store.usage(DEFAULT_PROJECT).await.unwrap().running_jobs;
    assert!(store.claim_job(&lease("w-q", 60), DeviceKind::Cpu, running_default).await.unwrap().is_none());
    assert_eq!(store.claim_job(&lease("w-q", 60), DeviceKind::Cpu, running_default + 1).await.unwrap().unwrap().id, a.id);
    assert_eq!(store.claim_job(&lease("w-q", 60), DeviceKind::Cpu, 0).await.unwrap().unwrap().id, b.id);
    for j in [&a, &b] {
        store.finish_job(&j.id, "w-q", &end(JobStatus::Succeeded)).await.unwrap();
    }
    // A model belongs to its job's project.
    let m = ModelRow {
        id: "ft-a".into(),
        job_id: ours[0].id.clone(),
        base_model: "tiny".into(),
        created_at: now(),
        path: "jobs/a".into(),
        checkpoint_step: None,
    };
    store.insert_model(&m).await.unwrap();
    assert!(store.model(&p.id, "ft-a").await.unwrap().is_some());
    assert!(store.model(DEFAULT_PROJECT, "ft-a").await.unwrap().is_none());
    assert!(store.models(DEFAULT_PROJECT, &Page { after: None, limit: 1000 }).await.unwrap().iter().all(|m| m.id != "ft-a"));
    // Keys: found by hash while live; revoked or archived, not at all.
    let key = ApiKeyRow {
        id: new_id("key"),
        project_id: p.id.clone(),
        name: "ci".into(),
        redacted_value: "sk-…".into(),
        created_at: now(),
        revoked_at: None,
        quotas: Quotas { max_running_jobs: Some(1), ..Quotas::default() },
    };
    store.insert_api_key(&key, "hash-1").await.unwrap();
    let (found, project) = store.key_by_secret("hash-1").await.unwrap().unwrap();
    assert_eq!((found.id.as_str(), project.id.as_str()), (key.id.as_str(), p.id.as_str()));
    assert_eq!(found.quotas, key.quotas);
    // A key allowed one running job: its second waits, though the project would allow more.
    let (k1, k2) = (Job { api_key_id: Some(key.id.clone()), ..job("any") }, Job { api_key_id: Some(key.id.clone()), ..job("any") });
    store.insert_job(&k1).await.unwrap();
    store.insert_job(&k2).await.unwrap();
    assert_eq!(store.claim_job(&lease("w-k", 60), DeviceKind::Cpu, 0).await.unwrap().unwrap().id, k1.id);
    assert!(store.claim_job(&lease("w-k", 60), DeviceKind::Cpu, 0).await.unwrap().is_none());
    assert_eq!(store.key_usage(&key.id).await.unwrap().queued_jobs, 1);
    store.finish_job(&k1.id, "w-k", &end(JobStatus::Succeeded)).await.unwrap();
    assert_eq!(store.claim_job(&lease("w-k", 60), DeviceKind::Cpu, 0).await.unwrap().unwrap().id, k2.id);
    store.finish_job(&k2.id, "w-k", &end(JobStatus::Succeeded)).await.unwrap();
    assert!(store.key_by_secret("hash-2").await.unwrap().is_none());
    assert_eq!(store.api_keys(&p.id, &Page { after: None, limit: 10 }).await.unwrap().len(), 1);
    assert!(store.revoke_api_key(&p.id, &key.id).await.unwrap());
    assert!(store.key_by_secret("hash-1").await.unwrap().is_none());
    let again = ApiKeyRow { id: new_id("key"), ..key.clone() };
    store.insert_api_key(&again, "hash-3").await.unwrap();
    store.archive_project(&p.id).await.unwrap();
    assert!(store.key_by_secret("hash-3").await.unwrap().is_none(), "an archived project's keys stop working");
    assert!(!store.projects(&Page { after: None, limit: 1000 }, false).await.unwrap().iter().any(|q| q.id == p.id));
    assert!(store.usage_by_project().await.unwrap().iter().any(|(id, u)| id == &p.id && u.running_jobs == 2));
}

fn job(device: &str) -> Job {
    let raw = RawSpec {
        model: "tiny".into(),
        task: serde_json::from_value(json!({"type": "bit_xor"})).unwrap(),
        hyperparameters: Default::default(),
        method: Method::default(),
        seed: 0,
        files: DataFiles::<String>::default(),
        device: device.into(),
    };
    Job::queued(DEFAULT_PROJECT, TrainSpec::parse(raw, &Limits::default()).unwrap(), None, None, None)
}

fn summary(steps: u64) -> RunSummary {
    serde_json::from_value(
        json!({"steps": steps, "best_step": null, "samples_per_second": 1.0, "wall_seconds": 1.0, "valid_accuracy": 0.5}),
    )
    .unwrap()
}

fn end(status: JobStatus) -> JobEnd<'static> {
    JobEnd { status, result: None, error: None, model: None, result_file: None }
}

fn lease(worker: &str, seconds: i64) -> Lease {
    Lease { worker: worker.into(), seconds }
}

async fn files(store: &Store) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let f = FileRow {
            id: new_id("file"),
            filename: format!("f{i}.jsonl"),
            purpose: "fine-tune".into(),
            bytes: 10 + i,
            format: "jsonl".into(),
            samples: Some(i),
            created_at: now(),
            path: format!("files/x{i}"),
            project_id: DEFAULT_PROJECT.into(),
            api_key_id: None,
        };
        store.insert_file(&f).await.unwrap();
        ids.push(f.id);
    }
    // Newest first, paged after an id.
    let page = store.files(DEFAULT_PROJECT, None, false, &Page { after: None, limit: 2 }).await.unwrap();
    assert_eq!(page.iter().map(|f| &f.id).collect::<Vec<_>>(), vec![&ids[4], &ids[3]]);
    let next = store.files(DEFAULT_PROJECT, None, false, &Page { after: Some(&ids[3]), limit: 10 }).await.unwrap();
    assert_eq!(next.iter().map(|f| &f.id).collect::<Vec<_>>(), vec![&ids[2], &ids[1], &ids[0]]);
    // Oldest first after an id, and by purpose.
    let asc = store.files(DEFAULT_PROJECT, None, true, &Page { after: Some(&ids[2]), limit: 10 }).await.unwrap();
    assert_eq!(asc.iter().map(|f| &f.id).collect::<Vec<_>>(), vec![&ids[3], &ids[4]]);
    assert_eq!(store.files(DEFAULT_PROJECT, Some("fine-tune"), false, &Page { after: None, limit: 10 }).await.unwrap().len(), 5);
    assert!(store.files(DEFAULT_PROJECT, Some("batch"), false, &Page { after: None, limit: 10 }).await.unwrap().is_empty());
    assert_eq!(store.file(DEFAULT_PROJECT, &ids[2]).await.unwrap().unwrap().samples, Some(2));
    assert!(store.delete_file(&ids[2]).await.unwrap());
    assert!(!store.delete_file(&ids[2]).await.unwrap(), "deleted twice");
    assert!(store.file(DEFAULT_PROJECT, &ids[2]).await.unwrap().is_none());
}

async fn claims(store: &Store) {
    let (a, b, gpu) = (job("any"), job("cpu"), job("cuda"));
    for j in [&gpu, &a, &b] {
        store.insert_job(j).await.unwrap();
    }
    let w = lease("w-cpu", 60);
    // Oldest first; a CPU worker never gets the CUDA job.
    let first = store.claim_job(&w, DeviceKind::Cpu, 0).await.unwrap().unwrap();
    assert_eq!((first.id.as_str(), first.status, first.worker.as_deref()), (a.id.as_str(), JobStatus::Running, Some("w-cpu")));
    assert_eq!(first.spec, a.spec, "the spec reads back as stored");
    assert!(first.lease_until.unwrap() >= now() + 59);
    assert_eq!(store.claim_job(&w, DeviceKind::Cpu, 0).await.unwrap().unwrap().id, b.id);
    assert!(store.claim_job(&w, DeviceKind::Cpu, 0).await.unwrap().is_none());
    assert_eq!(store.claim_job(&lease("w-gpu", 60), DeviceKind::Cuda, 0).await.unwrap().unwrap().id, gpu.id);
    // Only the holder records the outcome.
    let result = summary(3);
    let done_end =
        JobEnd { status: JobStatus::Succeeded, result: Some(&result), error: None, model: Some("ft-x"), result_file: Some("file-results") };
    assert!(!store.finish_job(&a.id, "w-other", &done_end).await.unwrap());
    assert!(store.finish_job(&a.id, "w-cpu", &done_end).await.unwrap());
    let done = store.job(&a.id).await.unwrap().unwrap();
    assert_eq!((done.status, done.fine_tuned_model.as_deref(), done.worker), (JobStatus::Succeeded, Some("ft-x"), None));
    assert_eq!(done.result.as_ref(), Some(&result));
    assert_eq!(done.result_file.as_deref(), Some("file-results"));
    assert!(done.finished_at.is_some());
    // Handing a job back queues it for anyone; a queued job can be paused and resumed.
    assert!(store.release_job(&b.id, "w-cpu", JobStatus::Queued).await.unwrap());
    assert!(!store.release_job(&b.id, "w-cpu", JobStatus::Queued).await.unwrap(), "released twice");
    assert!(store.transition(&b.id, &[JobStatus::Queued], JobStatus::Paused).await.unwrap());
    assert!(!store.transition(&b.id, &[JobStatus::Queued, JobStatus::Running], JobStatus::Cancelled).await.unwrap());
    assert!(store.transition(&b.id, &[JobStatus::Paused], JobStatus::Cancelled).await.unwrap());
    assert!(store.job(&b.id).await.unwrap().unwrap().finished_at.is_some());
    let error = JobError { code: "training_failed".into(), message: "boom".into(), param: None };
    let failed = JobEnd { status: JobStatus::Failed, result: None, error: Some(&error), model: None, result_file: None };
    assert!(store.finish_job(&gpu.id, "w-gpu", &failed).await.unwrap());
    assert_eq!(store.job(&gpu.id).await.unwrap().unwrap().error, Some(error));
}

async fn leases(store: &Store) {
    let j = job("any");
    store.insert_job(&j).await.unwrap();
    let short = lease("w-dies", 1);
    assert_eq!(store.claim_job(&short, DeviceKind::Cpu, 0).await.unwrap().unwrap().id, j.id);
    // While the lease holds, nobody else gets the job; renewing it reports what clients ask.
    assert!(store.claim_job(&lease("w-b", 60), DeviceKind::Cpu, 0).await.unwrap().is_none());
    assert_eq!(store.renew_lease(&j.id, &short).await.unwrap(), Some(Desired::Run));
    store.set_desired(&j.id, Desired::Pause).await.unwrap();
    assert_eq!(store.renew_lease(&j.id, &short).await.unwrap(), Some(Desired::Pause));
    // The holder stops renewing: once the lease has run out another worker takes the job over,
    // keeping what the client asked, and the old holder can neither renew nor finish it.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let taken = store.claim_job(&lease("w-b", 60), DeviceKind::Cpu, 0).await.unwrap().unwrap();
    assert_eq!((taken.id.as_str(), taken.worker.as_deref(), taken.desired), (j.id.as_str(), Some("w-b"), Desired::Pause));
    assert_eq!(store.renew_lease(&j.id, &short).await.unwrap(), None);
    assert!(!store.finish_job(&j.id, "w-dies", &end(JobStatus::Succeeded)).await.unwrap());
    assert!(!store.release_job(&j.id, "w-dies", JobStatus::Queued).await.unwrap());
    // Only the holder's progress counts; a claim counts an attempt and a worker's own stop clears it.
    assert_eq!(taken.attempts, 2, "claimed twice: its first worker died");
    store.set_progress(&j.id, "w-dies", 7).await.unwrap();
    store.set_progress(&j.id, "w-b", 4).await.unwrap();
    assert_eq!(store.job(&j.id).await.unwrap().unwrap().trained_steps, 4);
    assert!(store.release_job(&j.id, "w-b", JobStatus::Paused).await.unwrap());
    assert_eq!(store.job(&j.id).await.unwrap().unwrap().attempts, 0);
    // A cancel asked while the worker was pausing wins.
    assert!(store.transition(&j.id, &[JobStatus::Paused], JobStatus::Queued).await.unwrap());
    let again = store.claim_job(&lease("w-b", 60), DeviceKind::Cpu, 0).await.unwrap().unwrap();
    assert_eq!(again.id, j.id);
    store.set_desired(&j.id, Desired::Cancel).await.unwrap();
    assert!(store.release_job(&j.id, "w-b", JobStatus::Paused).await.unwrap());
    let cancelled = store.job(&j.id).await.unwrap().unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert!(cancelled.finished_at.is_some());
    // A pause or cancel pending when a job is handed back or requeued is carried out then.
    for (desired, ends) in [(Desired::Pause, JobStatus::Paused), (Desired::Cancel, JobStatus::Cancelled)] {
        let p = job("any");
        store.insert_job(&p).await.unwrap();
        store.claim_job(&lease("w-p", 60), DeviceKind::Cpu, 0).await.unwrap().unwrap();
        store.set_desired(&p.id, desired).await.unwrap();
        assert!(store.requeue_orphan(&p.id, "w-p").await.unwrap());
        assert_eq!(store.job(&p.id).await.unwrap().unwrap().status, ends);
    }
    // A dead worker's job goes back to the queue at once, but only from the worker that holds it.
    let k = job("any");
    store.insert_job(&k).await.unwrap();
    store.claim_job(&lease("w-c", 60), DeviceKind::Cpu, 0).await.unwrap().unwrap();
    assert!(store.running_jobs().await.unwrap().contains(&(k.id.clone(), "w-c".to_string())));
    assert!(!store.requeue_orphan(&k.id, "w-other").await.unwrap());
    assert!(store.requeue_orphan(&k.id, "w-c").await.unwrap());
    let back = store.job(&k.id).await.unwrap().unwrap();
    assert_eq!((back.status, back.worker), (JobStatus::Queued, None));
    store.claim_job(&lease("w-c", 60), DeviceKind::Cpu, 0).await.unwrap().unwrap();
    assert!(store.finish_job(&k.id, "w-c", &end(JobStatus::Succeeded)).await.unwrap());
}

/// Eight workers claim twenty jobs at once: each job goes to exactly one of them.
async fn concurrent_claims_are_exclusive(store: &Store) {
    let mut ids = Vec::new();
    for _ in 0..20 {
        let j = job("any");
        store.insert_job(&j).await.unwrap();
        ids.push(j.id);
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(j) = store.claim_job(&lease(&format!("w{w}"), 60), DeviceKind::Cpu, 0).await.unwrap() {
                got.push(j.id);
            }
            got
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.unwrap());
    }
    claimed.sort();
    ids.sort();
    assert_eq!(claimed, ids);
    for id in &ids {
        let j = store.job(id).await.unwrap().unwrap();
        assert!(store.finish_job(id, j.worker.as_deref().unwrap(), &end(JobStatus::Succeeded)).await.unwrap());
    }
}

async fn events_and_checkpoints(store: &Store) {
    let j = job("any");
    store.insert_job(&j).await.unwrap();
    let ev = |step: i64| NewEvent {
        job_id: j.id.clone(),
        level: "info",
        kind: "metrics",
        message: format!("step {step}"),
        data: Some(json!({"step": step})),
        step: Some(step),
        worker: None,
    };
    store.insert_events(&(1..=6).map(ev).collect::<Vec<_>>()).await.unwrap();
    let all = store.events(&j.id, 0, 100).await.unwrap();
    assert_eq!(all.iter().map(|e| e.step.unwrap()).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let after = store.events(&j.id, all[2].seq, 2).await.unwrap();
    assert_eq!(after.iter().map(|e| e.step.unwrap()).collect::<Vec<_>>(), vec![4, 5]);
    for step in [2, 4, 6] {
        let c = CheckpointRow {
            id: new_id("ftckpt"),
            job_id: j.id.clone(),
            step_number: step,
            created_at: now(),
            metrics: None,
            model_id: format!("ft-x-step-{step}"),
            path: format!("jobs/{}/checkpoints/{step}", j.id),
        };
        store.insert_checkpoint(&c, "tiny").await.unwrap();
    }
    // A resumed run redoes what followed its checkpoint: events and checkpoints past it go.
    store.truncate_metrics_after(&j.id, 4).await.unwrap();
    let kept = store.events(&j.id, 0, 100).await.unwrap();
    assert_eq!(kept.iter().map(|e| e.step.unwrap()).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    let cks = store.checkpoints(&j.id, &Page { after: None, limit: 10 }).await.unwrap();
    assert_eq!(cks.iter().map(|c| c.step_number).collect::<Vec<_>>(), vec![4, 2]);
    // The same step checkpointed again (a redo) replaces the row rather than failing.
    let redo = CheckpointRow {
        id: new_id("ftckpt"),
        job_id: j.id.clone(),
        step_number: 4,
        created_at: now(),
        metrics: Some("{}".into()),
        model_id: "ft-x-step-4".into(),
        path: "jobs/redo".into(),
    };
    store.insert_checkpoint(&redo, "tiny").await.unwrap();
    let cks = store.checkpoints(&j.id, &Page { after: None, limit: 10 }).await.unwrap();
    assert_eq!((cks.len(), cks[0].id.as_str()), (2, redo.id.as_str()));
    let after_first = store.checkpoints(&j.id, &Page { after: Some(&redo.id), limit: 10 }).await.unwrap();
    assert_eq!(after_first.iter().map(|c| c.step_number).collect::<Vec<_>>(), vec![2]);
    // Checkpoints are models; a model row can be replaced and deleted.
    assert_eq!(store.model(DEFAULT_PROJECT, "ft-x-step-4").await.unwrap().unwrap().path, "jobs/redo");
    let m = ModelRow {
        id: "ft-x".into(),
        job_id: j.id.clone(),
        base_model: "tiny".into(),
        created_at: now(),
        path: "jobs/final".into(),
        checkpoint_step: None,
    };
    store.insert_model(&m).await.unwrap();
    store.insert_model(&ModelRow { path: "jobs/final2".into(), ..m.clone() }).await.unwrap();
    assert_eq!(store.model(DEFAULT_PROJECT, "ft-x").await.unwrap().unwrap().path, "jobs/final2");
    assert!(store.models(DEFAULT_PROJECT, &Page { after: None, limit: 100 }).await.unwrap().iter().any(|m| m.id == "ft-x"));
    assert!(store.delete_model("ft-x").await.unwrap());
    assert!(!store.delete_model("ft-x").await.unwrap());
    assert!(store.model(DEFAULT_PROJECT, "ft-x").await.unwrap().is_none());
    // Events of a job that ended before the retention bound go; a running job's stay.
    assert_eq!(store.prune_events(now() + 10).await.unwrap(), 0, "this job has not ended");
    // Nobody holds this job: a worker's progress and events for it are dropped.
    store.set_progress(&j.id, "w-gone", 4).await.unwrap();
    assert_eq!(store.job(&j.id).await.unwrap().unwrap().trained_steps, 0);
    let late = NewEvent { worker: Some("w-gone".into()), ..ev(99) };
    store.insert_events(&[late]).await.unwrap();
    assert!(store.events(&j.id, 0, 100).await.unwrap().iter().all(|e| e.step != Some(99)));
    // Once it has ended, its events go when the retention bound passes them.
    assert!(store.transition(&j.id, &[JobStatus::Queued], JobStatus::Cancelled).await.unwrap());
    assert_eq!(store.prune_events(now() - 3600).await.unwrap(), 0, "ended within the bound");
    assert_eq!(store.prune_events(now() + 10).await.unwrap(), 4);
    assert!(store.events(&j.id, 0, 100).await.unwrap().is_empty());
}

async fn idempotency(store: &Store) {
    // The first request reserves the key; until it is answered, others with it wait.
    assert_eq!(store.reserve_idempotency("k1", "POST /x", "h1", 600).await.unwrap(), Reservation::Ours);
    assert_eq!(store.reserve_idempotency("k1", "POST /x", "h1", 600).await.unwrap(), Reservation::Pending);
    assert_eq!(store.reserve_idempotency("k1", "POST /x", "h2", 600).await.unwrap(), Reservation::OtherRequest);
    store.answer_idempotency("k1", "POST /x", 200, "first").await.unwrap();
    assert_eq!(
        store.reserve_idempotency("k1", "POST /x", "h1", 600).await.unwrap(),
        Reservation::Answered { status: 200, body: "first".into() }
    );
    // Keys are per route; a failed request frees its key; a reservation older than the staleness
    // bound (its process died) is taken over.
    assert_eq!(store.reserve_idempotency("k1", "POST /y", "h9", 600).await.unwrap(), Reservation::Ours);
    store.release_idempotency("k1", "POST /y").await.unwrap();
    assert_eq!(store.reserve_idempotency("k1", "POST /y", "h8", 600).await.unwrap(), Reservation::Ours);
    assert_eq!(store.reserve_idempotency("k1", "POST /y", "h8", -1).await.unwrap(), Reservation::Ours, "stale: taken over");
    assert!(store.ping().await);
}
