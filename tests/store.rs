//! The job store's contract, run the same on both backends: embedded SQLite and a real
//! PostgreSQL server started for the test (Debian's package; `make setup` installs it).
mod common;

use fpt::store::{new_id, now, Backend, CheckpointRow, FileRow, JobEnd, JobRow, Lease, ModelRow, NewEvent, Page, Store};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_contract_holds_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("fpt.db")).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    contract(&store).await;
    // Migrations are idempotent: opening again keeps the data.
    let again = Store::open(&dir.path().join("fpt.db")).await.unwrap();
    assert!(again.count_status("succeeded").await.unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_contract_holds_on_postgres() {
    let pg = common::postgres::Postgres::start();
    let url = pg.database("fpt_store");
    let store = Store::connect(&url).await.unwrap();
    assert_eq!(store.backend(), Backend::Postgres);
    contract(&store).await;
    let again = Store::connect(&url).await.unwrap();
    assert!(again.count_status("succeeded").await.unwrap() > 0);
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
}

fn job(device: &str) -> JobRow {
    JobRow {
        id: new_id("ftjob"),
        model: "tiny".into(),
        task: json!({"type": "bit_xor"}).to_string(),
        status: "queued".into(),
        created_at: now(),
        started_at: None,
        finished_at: None,
        fine_tuned_model: None,
        hyperparameters: "{}".into(),
        method: "{}".into(),
        training_file: None,
        validation_file: None,
        seed: 0,
        suffix: None,
        trained_steps: 0,
        result: None,
        error: None,
        metadata: None,
        desired: "run".into(),
        worker: None,
        lease_until: None,
        device: device.into(),
    }
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
        };
        store.insert_file(&f).await.unwrap();
        ids.push(f.id);
    }
    // Newest first, paged after an id.
    let page = store.files(&Page { after: None, limit: 2 }).await.unwrap();
    assert_eq!(page.iter().map(|f| &f.id).collect::<Vec<_>>(), vec![&ids[4], &ids[3]]);
    let next = store.files(&Page { after: Some(&ids[3]), limit: 10 }).await.unwrap();
    assert_eq!(next.iter().map(|f| &f.id).collect::<Vec<_>>(), vec![&ids[2], &ids[1], &ids[0]]);
    assert_eq!(store.file(&ids[2]).await.unwrap().unwrap().samples, Some(2));
    assert!(store.delete_file(&ids[2]).await.unwrap());
    assert!(!store.delete_file(&ids[2]).await.unwrap(), "deleted twice");
    assert!(store.file(&ids[2]).await.unwrap().is_none());
}

async fn claims(store: &Store) {
    let (a, b, gpu) = (job("any"), job("cpu"), job("cuda"));
    for j in [&gpu, &a, &b] {
        store.insert_job(j).await.unwrap();
    }
    let w = lease("w-cpu", 60);
    // Oldest first; a CPU worker never gets the CUDA job.
    let first = store.claim_job(&w, "cpu").await.unwrap().unwrap();
    assert_eq!((first.id.as_str(), first.status.as_str(), first.worker.as_deref()), (a.id.as_str(), "running", Some("w-cpu")));
    assert!(first.lease_until.unwrap() >= now() + 59);
    assert_eq!(store.claim_job(&w, "cpu").await.unwrap().unwrap().id, b.id);
    assert!(store.claim_job(&w, "cpu").await.unwrap().is_none());
    assert_eq!(store.claim_job(&lease("w-gpu", 60), "cuda").await.unwrap().unwrap().id, gpu.id);
    // Only the holder records the outcome.
    let result = json!({"steps": 3});
    let end = JobEnd { status: "succeeded", result: Some(&result), error: None, model: Some("ft-x") };
    assert!(!store.finish_job(&a.id, "w-other", &end).await.unwrap());
    assert!(store.finish_job(&a.id, "w-cpu", &end).await.unwrap());
    let done = store.job(&a.id).await.unwrap().unwrap();
    assert_eq!((done.status.as_str(), done.fine_tuned_model.as_deref(), done.worker), ("succeeded", Some("ft-x"), None));
    assert!(done.finished_at.is_some());
    // Handing a job back queues it for anyone; a queued job can be paused and resumed.
    assert!(store.release_job(&b.id, "w-cpu", "queued").await.unwrap());
    assert!(!store.release_job(&b.id, "w-cpu", "queued").await.unwrap(), "released twice");
    assert!(store.transition(&b.id, &["queued"], "paused").await.unwrap());
    assert!(!store.transition(&b.id, &["queued", "running"], "cancelled").await.unwrap());
    assert!(store.transition(&b.id, &["paused"], "cancelled").await.unwrap());
    assert!(store.job(&b.id).await.unwrap().unwrap().finished_at.is_some());
    let end = JobEnd { status: "cancelled", result: None, error: None, model: None };
    assert!(store.finish_job(&gpu.id, "w-gpu", &end).await.unwrap());
}

async fn leases(store: &Store) {
    let j = job("any");
    store.insert_job(&j).await.unwrap();
    let short = lease("w-dies", 1);
    assert_eq!(store.claim_job(&short, "cpu").await.unwrap().unwrap().id, j.id);
    // While the lease holds, nobody else gets the job; renewing it reports what clients ask.
    assert!(store.claim_job(&lease("w-b", 60), "cpu").await.unwrap().is_none());
    assert_eq!(store.renew_lease(&j.id, &short).await.unwrap().as_deref(), Some("run"));
    store.set_desired(&j.id, "pause").await.unwrap();
    assert_eq!(store.renew_lease(&j.id, &short).await.unwrap().as_deref(), Some("pause"));
    // The holder stops renewing: once the lease has run out another worker takes the job over,
    // keeping what the client asked, and the old holder can neither renew nor finish it.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let taken = store.claim_job(&lease("w-b", 60), "cpu").await.unwrap().unwrap();
    assert_eq!((taken.id.as_str(), taken.worker.as_deref(), taken.desired.as_str()), (j.id.as_str(), Some("w-b"), "pause"));
    assert_eq!(store.renew_lease(&j.id, &short).await.unwrap(), None);
    let end = JobEnd { status: "succeeded", result: None, error: None, model: None };
    assert!(!store.finish_job(&j.id, "w-dies", &end).await.unwrap());
    assert!(!store.release_job(&j.id, "w-dies", "queued").await.unwrap());
    assert!(store.release_job(&j.id, "w-b", "paused").await.unwrap());
    // The embedded service's restart path: every running job back to the queue.
    let k = job("any");
    store.insert_job(&k).await.unwrap();
    store.claim_job(&lease("w-c", 60), "cpu").await.unwrap().unwrap();
    assert_eq!(store.requeue_running().await.unwrap(), 1);
    let back = store.job(&k.id).await.unwrap().unwrap();
    assert_eq!((back.status.as_str(), back.worker), ("queued", None));
    let end = JobEnd { status: "succeeded", result: None, error: None, model: None };
    store.claim_job(&lease("w-c", 60), "cpu").await.unwrap().unwrap();
    assert!(store.finish_job(&k.id, "w-c", &end).await.unwrap());
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
            while let Some(j) = store.claim_job(&lease(&format!("w{w}"), 60), "cpu").await.unwrap() {
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
        let end = JobEnd { status: "succeeded", result: None, error: None, model: None };
        assert!(store.finish_job(id, j.worker.as_deref().unwrap(), &end).await.unwrap());
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
    assert_eq!(store.model("ft-x-step-4").await.unwrap().unwrap().path, "jobs/redo");
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
    assert_eq!(store.model("ft-x").await.unwrap().unwrap().path, "jobs/final2");
    assert!(store.models().await.unwrap().iter().any(|m| m.id == "ft-x"));
    assert!(store.delete_model("ft-x").await.unwrap());
    assert!(!store.delete_model("ft-x").await.unwrap());
    assert!(store.model("ft-x").await.unwrap().is_none());
    store.set_progress(&j.id, 4).await.unwrap();
    assert_eq!(store.job(&j.id).await.unwrap().unwrap().trained_steps, 4);
}

async fn idempotency(store: &Store) {
    assert!(store.idempotent_response("k1", "POST /x").await.unwrap().is_none());
    store.save_idempotent_response("k1", "POST /x", 200, "first").await.unwrap();
    store.save_idempotent_response("k1", "POST /x", 500, "second").await.unwrap();
    assert_eq!(store.idempotent_response("k1", "POST /x").await.unwrap(), Some((200, "first".to_string())));
    assert!(store.idempotent_response("k1", "POST /y").await.unwrap().is_none());
    assert!(store.ping().await);
}
