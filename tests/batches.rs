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

#[test]
fn a_batch_killed_mid_run_answers_every_line_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start_on(&data, &[]);
    let train = s.upload_ok("train.jsonl", sign_dataset(64, 1));
    let model = s.train_quick(serde_json::from_str(SIGN_TASK).unwrap(), Some(&train), 1);
    let samples: Vec<Value> = String::from_utf8(sign_dataset(50, 2))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["input"].clone())
        .collect();
    let n = 6000;
    let input: String = (0..n)
        .map(|i| {
            json!({"custom_id": format!("r{i}"), "method": "POST", "url": "/v1/predictions", "body": {"model": model, "inputs": [samples[i % 50]]}})
                .to_string()
                + "\n"
        })
        .collect();
    let file = s.upload_ok_for("batch", "batch.jsonl", input.into_bytes());
    let b = s.post_ok("/v1/batches", &json!({"input_file_id": file, "endpoint": "/v1/predictions", "completion_window": "24h"}));
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["request_counts"]["total"], n);
    // Its input file stays while it runs.
    assert_eq!(s.delete(&format!("/v1/files/{file}")).status(), 409);
    // Killed once some lines, not all, are recorded.
    let start = Instant::now();
    loop {
        let done = batch(&s, &id)["request_counts"]["completed"].as_i64().unwrap();
        assert!(done < n as i64, "the batch finished before it could be killed");
        if done > 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.kill();
    let s = Server::start_on(&data, &[]);
    let start = Instant::now();
    let b = loop {
        let b = batch(&s, &id);
        if b["status"] == "completed" {
            break b;
        }
        assert!(start.elapsed() < Duration::from_secs(180), "{b}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!((b["request_counts"]["completed"].as_i64(), b["request_counts"]["failed"].as_i64()), (Some(n as i64), Some(0)), "{b}");
    assert!(b["error_file_id"].is_null(), "{b}");
    let out = s.get(&format!("/v1/files/{}/content", b["output_file_id"].as_str().unwrap())).text().unwrap();
    let ids: Vec<String> =
        out.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["custom_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), n, "every line once");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), n, "no line twice");
    assert_eq!(ids, (0..n).map(|i| format!("r{i}")).collect::<Vec<_>>(), "in input order");
}
