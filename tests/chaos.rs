//! Chaos, bounded: a server (with a worker) and a separate `fpt worker` share one SQLite database
//! and artifact folder on loopback. Fifty small jobs and a stream of predictions run while the
//! server and the worker are killed with SIGKILL at random (seeded) for a bounded time. Afterwards
//! every job has ended, exactly once, with a contiguous history; no prediction was answered wrong;
//! and every process that ended did so by our SIGKILL, never by an abort. About two minutes here;
//! `FPT_CHAOS_SECS=600 cargo test --test chaos` is the longer soak.
mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::server::Server;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const JOBS: usize = 50;
const STEPS: i64 = 400;
const SERVER_ARGS: [&str; 4] = ["--lease-secs", "2", "--max-attempts", "50"];

fn start_worker(data_dir: &Path) -> Child {
    common::server::start_worker(data_dir, &SERVER_ARGS)
}

/// SIGKILLs a process that must still be running (an abort would have ended it already).
fn kill(child: &mut Child, what: &str) {
    assert!(child.try_wait().unwrap().is_none(), "the {what} ended before it was killed: {:?}", child.try_wait());
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "the {what} ended by {status:?}, not by our SIGKILL");
}

fn job_body(seed: u64) -> Value {
    json!({"model": "tiny-gpt2", "task": {"type": "bit_xor", "n_bits": 3}, "seed": seed,
        "hyperparameters": {"n_steps": STEPS, "eval_every": 40, "checkpoint_every": 80, "log_every": 40, "batch_size": 4}})
}

fn all_jobs(s: &Server) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = after.as_ref().map_or("limit=100".to_string(), |a| format!("limit=100&after={a}"));
        let page = s.get_json(&format!("/v1/fine_tuning/jobs?{q}"));
        out.extend(page["data"].as_array().unwrap().iter().cloned());
        if page["has_more"] != true {
            return out;
        }
        after = page["last_id"].as_str().map(str::to_string);
    }
}

#[test]
fn jobs_and_predictions_survive_random_sigkills_of_server_and_worker() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut server = Server::start_on(&data, &SERVER_ARGS);
    let url = Arc::new(Mutex::new(server.url.clone()));
    // The model predictions are checked against, trained before the chaos.
    let model_job = server.create_job(job_body(1000));
    let model = server.wait_finished(&model_job)["fine_tuned_model"].as_str().unwrap().to_string();
    let x = json!([[1, 0, 1, 1, 0, 0], [0, 1, 1, 0, 1, 0]]);
    let want = server.predict(&model, x.clone()).json::<Value>().unwrap()["data"].clone();
    let ids: Vec<String> = (0..JOBS).map(|i| server.create_job(job_body(i as u64))).collect();
    let mut worker = start_worker(&data);

    // Predictions all along: any answer given must be the right one.
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, wrong) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
    let predictor = {
        let (stop, url, answered, wrong, model, x, want) =
            (stop.clone(), url.clone(), answered.clone(), wrong.clone(), model.clone(), x.clone(), want.clone());
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
            while !stop.load(Ordering::SeqCst) {
                let base = url.lock().unwrap().clone();
                let r = client.post(format!("{base}/v1/predictions")).json(&json!({"model": model, "inputs": x})).send();
                if let Ok(r) = r {
                    if r.status() == 200 {
                        let got = r.json::<Value>().map(|v| v["data"].clone()).unwrap_or(Value::Null);
                        answered.fetch_add(1, Ordering::SeqCst);
                        if got != want {
                            wrong.lock().unwrap().push(got);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let chaos_secs: u64 = std::env::var("FPT_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(35);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let started = Instant::now();
    let (mut server_kills, mut worker_kills) = (0, 0);
    while started.elapsed() < Duration::from_secs(chaos_secs) {
        std::thread::sleep(Duration::from_millis(rng.random_range(1500..4500)));
        if rng.random_bool(0.5) {
            kill(&mut server.child, "server");
            server_kills += 1;
            server = Server::start_on(&data, &SERVER_ARGS);
            *url.lock().unwrap() = server.url.clone();
        } else {
            kill(&mut worker, "worker");
            worker_kills += 1;
            worker = start_worker(&data);
        }
    }
    assert!(server_kills > 0 && worker_kills > 0, "both were killed: {server_kills} / {worker_kills}");
    let unfinished = all_jobs(&server).iter().filter(|j| j["status"] != "succeeded").count();
    eprintln!("chaos: {unfinished} of {} jobs not yet done when it stopped", JOBS + 1);

    // Calm: everything ends.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let jobs = all_jobs(&server);
        let open: Vec<&Value> =
            jobs.iter().filter(|j| !["succeeded", "failed", "cancelled"].contains(&j["status"].as_str().unwrap())).collect();
        if open.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{} jobs still open, e.g. {}", open.len(), open[0]);
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::SeqCst);
    predictor.join().unwrap();
    kill(&mut worker, "worker");

    let jobs = all_jobs(&server);
    assert_eq!(jobs.len(), JOBS + 1, "each job exactly once");
    let full: Vec<i64> = (1..=STEPS / 40).map(|i| i * 40).collect();
    for id in &ids {
        let j = server.job(id);
        let steps = server.metric_steps(id);
        match j["status"].as_str().unwrap() {
            "succeeded" => assert_eq!(steps, full, "{id}: a contiguous history, each step once"),
            other => panic!("{id} ended {other}: {j}"),
        }
    }
    assert!(wrong.lock().unwrap().is_empty(), "wrong predictions: {:?}", wrong.lock().unwrap());
    assert!(answered.load(Ordering::SeqCst) > 10, "predictions were answered through the chaos");
    eprintln!("chaos: {server_kills} server and {worker_kills} worker kills, {} predictions answered", answered.load(Ordering::SeqCst));
}
