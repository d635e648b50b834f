//! Many machines, one queue: an API node with no workers and three `fpt worker` processes share a
//! real PostgreSQL server and an artifact folder. Every job is done exactly once, and the job of a
//! worker killed with SIGKILL finishes on another worker from its last checkpoint.
mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::postgres::Postgres;
use common::server::{sign_dataset, Server, SIGN_TASK};
use serde_json::{json, Value};

const STEPS: i64 = 600;

/// A `fpt worker` process with one training thread and a short lease.
struct Worker {
    child: Child,
}

impl Worker {
    fn start(data_dir: &Path, database_url: &str, artifacts: &Path) -> Worker {
        let artifacts = artifacts.display().to_string();
        Worker {
            child: common::server::start_worker(
                data_dir,
                &["--lease-secs", "3", "--database-url", database_url, "--artifacts", &artifacts],
            ),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn job_body(train: &str) -> Value {
    json!({"model": "tiny-gpt2", "task": serde_json::from_str::<Value>(SIGN_TASK).unwrap(), "training_file": train,
        "hyperparameters": {"n_steps": STEPS, "eval_every": 100, "checkpoint_every": 100, "batch_size": 8, "log_every": 10}})
}

fn messages(api: &Server, id: &str) -> Vec<String> {
    api.events(id).iter().map(|e| e["message"].as_str().unwrap().to_string()).collect()
}

/// The worker named in a start or resume message.
fn worker_of(message: &str) -> &str {
    message.rsplit("on worker ").next().unwrap()
}

#[test]
fn three_workers_share_one_postgres_queue_and_a_killed_workers_job_resumes_elsewhere() {
    let pg = Postgres::start();
    let url = pg.database("fpt_cluster");
    let tmp = common::tempdir();
    let artifacts = tmp.path().join("artifacts");
    let api =
        Server::start_on(&tmp.path().join("api"), &["--no-workers", "--database-url", &url, "--artifacts", artifacts.to_str().unwrap()]);
    let mut workers: Vec<Option<Worker>> =
        (0..3).map(|i| Some(Worker::start(&tmp.path().join(format!("worker-{i}")), &url, &artifacts))).collect();

    let train = api.upload_ok("train.jsonl", sign_dataset(100, 5));
    let ids: Vec<String> = (0..12).map(|_| api.create_job(job_body(&train))).collect();
    // No worker here has a GPU: a job that asks for one waits.
    let mut gpu_job = job_body(&train);
    gpu_job["device"] = json!("cuda");
    let gpu_id = api.create_job(gpu_job);

    // Kill the worker of a job that has checkpointed and is still training.
    let deadline = Instant::now() + Duration::from_secs(300);
    let (victim, killed) = loop {
        assert!(Instant::now() < deadline, "no job reached step 250 while running");
        let running = ids.iter().map(|id| api.job(id)).find(|j| j["status"] == "running" && j["trained_steps"].as_i64().unwrap() >= 250);
        if let Some(j) = running {
            let id = j["id"].as_str().unwrap().to_string();
            let started = messages(&api, &id).into_iter().find(|m| m.starts_with("Job started on worker")).unwrap();
            let name = worker_of(&started).to_string();
            // Worker names are `host-pid-wN`.
            let pid: u32 = name.rsplit('-').nth(1).unwrap().parse().unwrap();
            let w = workers.iter_mut().find(|w| w.as_ref().is_some_and(|w| w.child.id() == pid)).expect("the worker process");
            drop(w.take()); // SIGKILL
            break (id, name);
        }
        std::thread::sleep(Duration::from_millis(10));
    };

    for id in &ids {
        let j = api.wait_for(id, Duration::from_secs(600), |s| matches!(s, "succeeded" | "failed" | "cancelled"));
        assert_eq!(j["status"], "succeeded", "{j}");
        // Exactly once: one start, one success, and every logged step once, in order.
        let msgs = messages(&api, id);
        assert_eq!(msgs.iter().filter(|m| m.starts_with("Job succeeded")).count(), 1, "{id}: {msgs:?}");
        assert_eq!(msgs.iter().filter(|m| m.starts_with("Job started")).count(), 1, "{id}: {msgs:?}");
        assert_eq!(api.metric_steps(id), (1..=STEPS / 10).map(|i| i * 10).collect::<Vec<_>>(), "{id}");
    }

    // The victim resumed on another worker from a checkpoint, not from scratch.
    let msgs = messages(&api, &victim);
    let resumed = msgs.iter().find(|m| m.starts_with("Job resumed from the checkpoint of step")).expect("a resume message");
    let step: i64 = resumed.split_whitespace().nth(7).unwrap().parse().unwrap();
    assert!(step >= 100, "{resumed}");
    assert_ne!(worker_of(resumed), killed, "{resumed}");
    let cks = api.get_json(&format!("/v1/fine_tuning/jobs/{victim}/checkpoints?limit=100"));
    let steps: Vec<i64> = cks["data"].as_array().unwrap().iter().map(|c| c["step_number"].as_i64().unwrap()).collect();
    assert_eq!(steps, (1..=STEPS / 100).rev().map(|i| i * 100).collect::<Vec<_>>());

    // The jobs were spread over the workers.
    let mut ran_on: Vec<String> = ids
        .iter()
        .map(|id| messages(&api, id).iter().find(|m| m.starts_with("Job started on worker")).map(|m| worker_of(m).to_string()).unwrap())
        .collect();
    ran_on.sort();
    ran_on.dedup();
    assert!(ran_on.len() >= 2, "all jobs ran on {ran_on:?}");

    // The API node has no workers, yet serves any fine-tuned model from the shared artifacts.
    let model = api.job(&victim)["fine_tuned_model"].as_str().unwrap().to_string();
    let out = api.predict(&model, json!([[0.5, 0.1, -0.2, 0.3, 0.0, 0.1, 0.2, 0.3]]));
    assert_eq!(out.status().as_u16(), 200);
    let out: Value = out.json().unwrap();
    assert_eq!(out["data"][0]["probabilities"].as_array().unwrap().len(), 2, "{out}");

    assert_eq!(api.job(&gpu_id)["status"], "queued");
    assert_eq!(api.job(&gpu_id)["device"], "cuda");
}
