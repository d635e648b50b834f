//! Batches survive their node: a server killed mid-batch (SIGKILL) and started again answers every
//! line of the input file exactly once, in order, in its output file; the OpenAI SDK's view of
//! batches is in tests/openai_sdk.py.
mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::server::{sign_dataset, Server, SIGN_TASK};
use serde_json::{json, Value};

fn batch(s: &Server, id: &str) -> Value {
    s.get_json(&format!("/v1/batches/{id}"))
}

/// A fine-tuned model of `s`'s and a batch input file of `n` lines for it (custom ids `r0`, `r1`, …).
fn model_and_input(s: &Server, n: usize) -> (String, String) {
    let train = s.upload_ok("train.jsonl", sign_dataset(64, 1));
    let model = s.train_quick(serde_json::from_str(SIGN_TASK).unwrap(), Some(&train), 1);
    let samples: Vec<Value> = String::from_utf8(sign_dataset(50, 2))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["input"].clone())
        .collect();
    let input: String = (0..n)
        .map(|i| {
            json!({"custom_id": format!("r{i}"), "method": "POST", "url": "/v1/predictions", "body": {"model": model, "inputs": [samples[i % 50]]}})
                .to_string()
                + "\n"
        })
        .collect();
    (model, s.upload_ok_for("batch", "batch.jsonl", input.into_bytes()))
}

fn create(s: &Server, file: &str) -> String {
    let b = s.post_ok("/v1/batches", &json!({"input_file_id": file, "endpoint": "/v1/predictions", "completion_window": "24h"}));
    b["id"].as_str().unwrap().to_string()
}

/// Kills `s` once some of the batch's lines, not all, are recorded.
fn kill_mid_batch(s: &mut Server, id: &str) {
    let start = Instant::now();
    loop {
        let b = batch(s, id);
        let done = b["request_counts"]["completed"].as_i64().unwrap();
        assert!(done < b["request_counts"]["total"].as_i64().unwrap(), "the batch finished before it could be killed");
        if done > 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.kill();
}

fn wait_ended(s: &Server, id: &str, status: &str) -> Value {
    let start = Instant::now();
    loop {
        let b = batch(s, id);
        if b["status"] == status {
            return b;
        }
        assert!(start.elapsed() < Duration::from_secs(180), "{b}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn lines_of(s: &Server, file: &Value) -> Vec<Value> {
    let text = s.get(&format!("/v1/files/{}/content", file.as_str().unwrap())).text().unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A server on its own data folder, running a batch of `n` lines: (its folder, the data folder,
/// the server, the input file, the batch).
fn running_batch(n: usize) -> (tempfile::TempDir, std::path::PathBuf, Server, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start_on(&data, &[]);
    let (_, file) = model_and_input(&s, n);
    let id = create(&s, &file);
    (dir, data, s, file, id)
}

#[test]
fn a_batch_killed_mid_run_answers_every_line_exactly_once() {
    let n = 6000;
    let (_dir, data, mut s, file, id) = running_batch(n);
    assert_eq!(batch(&s, &id)["request_counts"]["total"], n);
    // Its input file stays while it runs.
    assert_eq!(s.delete(&format!("/v1/files/{file}")).status(), 409);
    kill_mid_batch(&mut s, &id);
    let s = Server::start_on(&data, &[]);
    let b = wait_ended(&s, &id, "completed");
    assert_eq!((b["request_counts"]["completed"].as_i64(), b["request_counts"]["failed"].as_i64()), (Some(n as i64), Some(0)), "{b}");
    assert!(b["error_file_id"].is_null(), "{b}");
    let out = s.get(&format!("/v1/files/{}/content", b["output_file_id"].as_str().unwrap())).text().unwrap();
    let ids: Vec<String> =
        out.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["custom_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), n, "every line once");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), n, "no line twice");
    assert_eq!(ids, (0..n).map(|i| format!("r{i}")).collect::<Vec<_>>(), "in input order");
}

#[test]
fn a_batch_past_its_completion_window_expires_with_each_line_in_one_of_its_files() {
    let n = 6000;
    let (_dir, data, mut s, _, id) = running_batch(n);
    kill_mid_batch(&mut s, &id);
    // A day goes by while no node runs it.
    let db = format!("sqlite://{}", data.join("fpt.db").display());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
        sqlx::query("UPDATE batches SET created_at = created_at - 86401 WHERE id = $1").bind(&id).execute(&pool).await.unwrap();
        pool.close().await;
    });
    let s = Server::start_on(&data, &[]);
    let b = wait_ended(&s, &id, "expired");
    assert!(b["expired_at"].as_i64().is_some() && b["completed_at"].is_null(), "{b}");
    let (done, failed) = (b["request_counts"]["completed"].as_i64().unwrap(), b["request_counts"]["failed"].as_i64().unwrap());
    assert!(done > 0 && failed > 0 && done + failed == n as i64, "{b}");
    let (answered, expired) = (lines_of(&s, &b["output_file_id"]), lines_of(&s, &b["error_file_id"]));
    assert_eq!((answered.len() as i64, expired.len() as i64), (done, failed));
    assert!(answered.iter().all(|l| l["response"]["status_code"] == 200), "answered lines keep their answers");
    assert!(expired.iter().all(|l| l["error"]["code"] == "batch_expired" && l["response"].is_null()), "{:?}", &expired[..1]);
    let mut ids: Vec<usize> = answered.iter().chain(&expired).map(|l| l["custom_id"].as_str().unwrap()[1..].parse().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, (0..n).collect::<Vec<_>>(), "every line in one file, once");
}

#[test]
fn a_worker_node_answers_batches_an_api_node_leaves_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // One machine's shared state (SQLite and the artifacts in one folder): the API node trains
    // nothing and runs no batch; the worker node does both.
    let s = Server::start_on(&data, &["--no-workers", "--no-batches"]);
    let worker = Killed(common::server::start_worker(&data, &[]));
    let n = 300;
    let (model, file) = model_and_input(&s, n);
    drop(worker);
    let id = create(&s, &file);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(batch(&s, &id)["status"], "validating", "the API node leaves it");
    let _worker = Killed(common::server::start_worker(&data, &[]));
    let b = wait_ended(&s, &id, "completed");
    assert_eq!(b["request_counts"]["completed"], n, "{b}");
    let out = lines_of(&s, &b["output_file_id"]);
    assert_eq!(out.len(), n);
    assert!(out.iter().all(|l| l["response"]["body"]["model"] == model.as_str()), "{:?}", &out[..1]);
}

/// A child process killed when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
