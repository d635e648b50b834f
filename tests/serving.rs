//! Serving: one backbone shared by many adapters, batched together; the adapter cache; backpressure.
mod common;

use std::time::Duration;

use common::server::{sign_dataset, Server, SIGN_TASK};
use serde_json::{json, Value};

fn sign_inputs() -> Value {
    json!([
        [0.5, 0.1, -0.2, 0.3, 0.0, 0.1, 0.2, 0.3],
        [[-0.9, 0.2, 0.2, 0.1]],
        [0.3, 0.3, 0.3, 0.3, 0.1, 0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9]
    ])
}

fn xor_inputs() -> Value {
    json!([[1, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0]])
}

#[test]
fn a_mixed_batch_gives_the_same_outputs_as_each_adapter_alone() {
    // The three requests hold 8 rows: the batcher closes a batch at 8 rows, or after 3 s, so the
    // concurrent round shares one batch however slowly the requests arrive on a loaded machine.
    let s = Server::start(&["--max-batch-wait-ms", "3000", "--max-batch-size", "8"]);
    let f = s.upload_ok("train.jsonl", sign_dataset(64, 1));
    let a = s.train_quick(serde_json::from_str(SIGN_TASK).unwrap(), Some(&f), 1);
    let b = s.train_quick(serde_json::from_str(SIGN_TASK).unwrap(), Some(&f), 2);
    let c = s.train_quick(json!({"type": "bit_xor", "n_bits": 3}), None, 3);
    let requests = vec![(a.clone(), sign_inputs()), (b.clone(), sign_inputs()), (c.clone(), xor_inputs())];
    let alone: Vec<Value> = requests.iter().map(|(m, x)| s.predict(m, x.clone()).json::<Value>().unwrap()).collect();
    let before = s.metric("fpt_predictions_batches_total");
    let together: Vec<Value> = std::thread::scope(|sc| {
        let hs: Vec<_> = requests.iter().map(|(m, x)| sc.spawn(|| s.predict(m, x.clone()).json::<Value>().unwrap())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(s.metric("fpt_predictions_batches_total") - before, 1.0, "the three requests ran in one forward pass");
    for (x, y) in alone.iter().zip(&together) {
        for (r1, r2) in x["data"].as_array().unwrap().iter().zip(y["data"].as_array().unwrap()) {
            assert_eq!(r1["label"], r2["label"]);
            assert_eq!(r1["bits"], r2["bits"]);
            if let (Some(p1), Some(p2)) = (r1["probabilities"].as_array(), r2["probabilities"].as_array()) {
                for (u, v) in p1.iter().zip(p2) {
                    assert!((u.as_f64().unwrap() - v.as_f64().unwrap()).abs() < 1e-5, "{u} vs {v}");
                }
            }
        }
    }
    // The two sign adapters really differ (the batch mixed different layer norms).
    assert_ne!(alone[0]["data"][0]["probabilities"], alone[1]["data"][0]["probabilities"]);
}

#[test]
fn the_adapter_cache_evicts_and_reloads_correctly() {
    let s = Server::start(&["--adapter-cache", "2"]);
    let f = s.upload_ok("train.jsonl", sign_dataset(64, 2));
    let models: Vec<String> = (0..5).map(|i| s.train_quick(serde_json::from_str(SIGN_TASK).unwrap(), Some(&f), 10 + i)).collect();
    let first: Vec<Value> = models.iter().map(|m| s.predict(m, sign_inputs()).json::<Value>().unwrap()["data"].clone()).collect();
    let second: Vec<Value> = models.iter().map(|m| s.predict(m, sign_inputs()).json::<Value>().unwrap()["data"].clone()).collect();
    assert_eq!(first, second, "reloaded adapters answer as before");
    assert!(s.metric("fpt_adapter_evictions_total") >= 8.0);
    assert_eq!(s.metric("fpt_adapter_loads_total"), 10.0);
    let listed = s.get_json("/v1/models");
    let loaded: Vec<&str> =
        listed["data"].as_array().unwrap().iter().filter(|m| m["loaded"] == true).map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(loaded.len(), 2, "{loaded:?}");
    // Explicit unload and load.
    let m = &models[4];
    assert_eq!(s.post_ok(&format!("/v1/models/{m}/unload"), &json!({}))["loaded"], false);
    assert_eq!(s.post_ok(&format!("/v1/models/{m}/load"), &json!({}))["loaded"], true);
}

#[test]
fn overload_answers_429_and_the_server_recovers() {
    let s = Server::start(&["--max-queue", "1", "--max-batch-size", "1", "--max-batch-wait-ms", "0"]);
    let f = s.upload_ok("train.jsonl", sign_dataset(64, 3));
    let m = s.train_quick(serde_json::from_str(SIGN_TASK).unwrap(), Some(&f), 1);
    let big: Vec<Value> = (0..3000).map(|i| json!(vec![i as f64 / 3000.0; 64])).collect();
    let statuses: Vec<u16> = std::thread::scope(|sc| {
        let slow = sc.spawn(|| s.predict(&m, json!(big)).status().as_u16());
        std::thread::sleep(Duration::from_millis(30));
        let quick: Vec<_> = (0..12)
            .map(|_| {
                sc.spawn(|| {
                    let r = s.predict(&m, sign_inputs());
                    if r.status() == 429 {
                        assert_eq!(r.headers()["retry-after"], "1");
                    }
                    r.status().as_u16()
                })
            })
            .collect();
        let mut out: Vec<u16> = quick.into_iter().map(|h| h.join().unwrap()).collect();
        out.push(slow.join().unwrap());
        out
    });
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.iter().all(|&c| c == 200 || c == 429), "{statuses:?}");
    assert_eq!(s.predict(&m, sign_inputs()).status(), 200, "recovers as soon as load drops");
}

#[test]
fn a_request_past_its_deadline_gets_503() {
    let s = Server::start(&["--prediction-timeout-ms", "1"]);
    let f = s.upload_ok("train.jsonl", sign_dataset(64, 4));
    let m = s.train_quick(serde_json::from_str(SIGN_TASK).unwrap(), Some(&f), 1);
    let big: Vec<Value> = (0..2000).map(|_| json!(vec![0.1; 64])).collect();
    assert_eq!(s.predict(&m, json!(big)).status(), 503);
    assert_eq!(s.get("/health").status(), 200);
}
