//! Regression end to end: real-valued targets in their raw units train, are reported as rmse / mae
//! / r2 in those units, and are answered as `value` (one target) or `values` (several), over the
//! API and the command line.
mod common;

use common::server::Server;
use serde_json::{json, Value};

/// Records of 4 inputs in [-1, 1] whose targets are linear in them, in raw units (x1000 + 5000);
/// `k` targets each (the second, when asked, a different mix).
fn records(n: usize, seed: u64, k: usize) -> (Vec<u8>, Vec<(Vec<f64>, Vec<f64>)>) {
    let mut uniform = common::uniform(seed);
    let mut next = || uniform() * 2.0 - 1.0;
    let mut text = String::new();
    let mut rows = Vec::new();
    for _ in 0..n {
        let x: Vec<f64> = (0..4).map(|_| next()).collect();
        let y: Vec<f64> = [(1.0, 2.0), (-1.5, 0.5)][..k].iter().map(|(a, b)| 1000.0 * (a * x[0] + b * x[1]) + 5000.0).collect();
        let target = if k == 1 { json!(y[0]) } else { json!(y) };
        text.push_str(&format!("{}\n", json!({"input": x, "target": target})));
        rows.push((x, y));
    }
    (text.into_bytes(), rows)
}

fn spread(rows: &[(Vec<f64>, Vec<f64>)]) -> f64 {
    let ys: Vec<f64> = rows.iter().map(|r| r.1[0]).collect();
    let mean = ys.iter().sum::<f64>() / ys.len() as f64;
    (ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / ys.len() as f64).sqrt()
}

#[test]
fn regression_trains_in_raw_units_and_answers_values_over_the_api() {
    let s = Server::start(&[]);
    let (train, _) = records(512, 1, 1);
    let (valid, valid_rows) = records(128, 2, 1);
    let (train, valid) = (s.upload_ok("train.jsonl", train), s.upload_ok("valid.jsonl", valid));
    let id = s.create_job(json!({
        "model": "tiny-gpt2", "task": {"type": "regression", "input_dim": 4}, "training_file": train, "validation_file": valid,
        "hyperparameters": {"n_steps": 400, "batch_size": 16, "eval_every": 100, "learning_rate": 0.003}
    }));
    let job = s.wait_finished(&id);
    assert_eq!(job["status"], "succeeded", "{job}");
    let result = &job["result"];
    assert_eq!(result["primary_metric"], "rmse", "{result}");
    let rmse = result["best_valid_rmse"].as_f64().unwrap();
    let baseline = spread(&valid_rows);
    assert!(rmse < 0.5 * baseline, "rmse {rmse} against the mean predictor's {baseline}: {result}");
    let r2 = result["valid_r2"].as_f64().or_else(|| result["final_valid_r2"].as_f64());
    assert!(r2.is_some_and(|r2| r2 > 0.7), "r2 in the summary: {result}");
    let events = s.events(&id);
    assert!(events.iter().any(|e| e["type"] == "metrics" && e["data"]["valid_rmse"].is_number()), "metrics events carry rmse");
    // Predictions are in the targets' units.
    let model = job["fine_tuned_model"].as_str().unwrap();
    let inputs: Vec<Value> = valid_rows[..8].iter().map(|r| json!(r.0)).collect();
    let answer = s.predict(model, json!(inputs)).json::<Value>().unwrap();
    let mut err = 0.0;
    for (p, r) in answer["data"].as_array().unwrap().iter().zip(&valid_rows) {
        let v = p["value"].as_f64().unwrap_or_else(|| panic!("a value: {p}"));
        err += (v - r.1[0]).abs() / 8.0;
    }
    assert!(err < baseline, "mean error {err} of predictions in raw units (spread {baseline})");
}

#[test]
fn several_targets_train_and_answer_values_and_a_label_file_is_refused() {
    let s = Server::start(&[]);
    let (train, _) = records(256, 3, 2);
    let train = s.upload_ok("train.jsonl", train);
    let model = {
        let id = s.create_job(json!({"model": "tiny-gpt2", "task": {"type": "regression", "input_dim": 4}, "training_file": train,
                                     "hyperparameters": {"n_steps": 40, "batch_size": 16, "eval_every": 20}}));
        let job = s.wait_finished(&id);
        assert_eq!(job["status"], "succeeded", "{job}");
        job["fine_tuned_model"].as_str().unwrap().to_string()
    };
    let answer = s.predict(&model, json!([[0.1, 0.2, 0.3, 0.4]])).json::<Value>().unwrap();
    assert_eq!(answer["data"][0]["values"].as_array().map(Vec::len), Some(2), "{answer}");
    // num_targets given and not met: the record is named.
    let e: Value = s
        .post(
            "/v1/fine_tuning/jobs",
            &json!({"model": "tiny-gpt2", "task": {"type": "regression", "input_dim": 4, "num_targets": 3}, "training_file": train}),
        )
        .json()
        .unwrap();
    assert!(e["error"]["message"].as_str().unwrap().contains("line 1: target has 2 values, expected 3 (num_targets)"), "{e}");
    // A classification file for a regression: said plainly.
    let labels = s.upload_ok("labels.jsonl", b"{\"input\": [1, 2, 3, 4], \"label\": 1}\n".to_vec());
    let e: Value = s
        .post(
            "/v1/fine_tuning/jobs",
            &json!({"model": "tiny-gpt2", "task": {"type": "regression", "input_dim": 4}, "training_file": labels}),
        )
        .json()
        .unwrap();
    assert!(e["error"]["message"].as_str().unwrap().contains("regression targets (\"target\")"), "{e}");
}

#[test]
fn regression_trains_and_predicts_from_the_command_line() {
    let dir = common::tempdir();
    let path = dir.path().join("train.jsonl");
    std::fs::write(&path, records(128, 4, 1).0).unwrap();
    let answers = common::cli_train_and_predict(
        dir.path(),
        r#"{"type":"regression","input_dim":4}"#,
        &path,
        20,
        "{\"input\": [0.1, 0.2, 0.3, 0.4]}\n",
    );
    assert!(answers[0]["value"].is_number(), "{answers:?}");
    // Evaluation uses the adapter's statistics, not the evaluated file's: on one record (twice),
    // its rmse is that record's prediction error, in the targets' units.
    let (x, y) = ([0.1, 0.2, 0.3, 0.4], 5321.0);
    let one = dir.path().join("one.jsonl");
    std::fs::write(&one, format!("{0}\n{0}\n", json!({"input": x, "target": y}))).unwrap();
    let adapter = dir.path().join("cli.safetensors");
    let o = std::process::Command::new(common::fpt_bin())
        .args(["eval", "--adapter", adapter.to_str().unwrap(), "--data", one.to_str().unwrap(), "--models-dir"])
        .arg(common::tiny_models())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let eval: Value = serde_json::from_slice(&o.stdout).unwrap();
    let error = (answers[0]["value"].as_f64().unwrap() - y).abs();
    assert!((eval["rmse"].as_f64().unwrap() - error).abs() <= 1e-3 * y, "eval {eval} against the prediction's error {error}");
}

/// A regression adapter and a classification adapter of one backbone share a forward pass, each
/// answered as alone.
#[test]
fn regression_and_classification_adapters_share_a_batch() {
    let s = Server::start(&["--max-batch-wait-ms", "300"]);
    let (train, _) = records(64, 5, 1);
    let train = s.upload_ok("train.jsonl", train);
    let quick = |task: Value, file: &str| {
        let id = s.create_job(json!({"model": "tiny-gpt2", "task": task, "training_file": file, "hyperparameters": {"n_steps": 4, "batch_size": 4, "eval_every": 4}}));
        let job = s.wait_finished(&id);
        assert_eq!(job["status"], "succeeded", "{job}");
        job["fine_tuned_model"].as_str().unwrap().to_string()
    };
    let reg = quick(json!({"type": "regression", "input_dim": 4}), &train);
    let signs = s.upload_ok("signs.jsonl", common::server::sign_dataset(32, 1));
    let cls = quick(serde_json::from_str(common::server::SIGN_TASK).unwrap(), &signs);
    let x = json!([[0.5, -0.5, 0.25, 0.0], [0.1, 0.2, 0.3, 0.4]]);
    let alone: Vec<Value> = [&reg, &cls].iter().map(|m| s.predict(m, x.clone()).json::<Value>().unwrap()["data"].clone()).collect();
    let batches = s.metric("fpt_predictions_batches_total");
    let together: Vec<Value> = std::thread::scope(|sc| {
        let hs: Vec<_> =
            [&reg, &cls].iter().map(|m| sc.spawn(|| s.predict(m, x.clone()).json::<Value>().unwrap()["data"].clone())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(s.metric("fpt_predictions_batches_total"), batches + 1.0, "one forward pass for both");
    for (t, a) in together.iter().zip(&alone) {
        for (p, q) in t.as_array().unwrap().iter().zip(a.as_array().unwrap()) {
            for key in ["value", "label"] {
                assert_eq!(p.get(key).is_some(), q.get(key).is_some());
            }
            if let (Some(u), Some(v)) = (p["value"].as_f64(), q["value"].as_f64()) {
                assert!((u - v).abs() <= 1e-3 * v.abs().max(1.0), "{u} vs {v}");
            } else {
                assert_eq!(p["label"], q["label"]);
            }
        }
    }
}
