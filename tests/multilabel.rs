//! Multi-label classification: records carry a list of label indices or a 0/1 vector; the head is
//! trained with binary cross-entropy, judged by micro-F1 (primary), macro-F1 and subset accuracy,
//! and answers the labels over its threshold with every probability; over the API and the CLI.
mod common;

use common::server::Server;
use serde_json::{json, Value};

/// Records of 4 inputs in [-1, 1]; label j (of 3) is on when input j is positive. Even records
/// list their labels as indices, odd ones as a 0/1 vector.
fn records(n: usize, seed: u64) -> Vec<u8> {
    let mut uniform = common::uniform(seed);
    let mut next = || uniform() * 2.0 - 1.0;
    let mut text = String::new();
    for i in 0..n {
        let x: Vec<f64> = (0..4).map(|_| next()).collect();
        let on: Vec<usize> = (0..3).filter(|&j| x[j] > 0.0).collect();
        let label = if i % 2 == 0 { json!(on) } else { json!((0..3).map(|j| on.contains(&j) as u8).collect::<Vec<_>>()) };
        text.push_str(&format!("{}\n", json!({"input": x, "label": label})));
    }
    text.into_bytes()
}

#[test]
fn multilabel_trains_scores_and_answers_labels() {
    let s = Server::start(&[]);
    let train = s.upload_ok("train.jsonl", records(400, 1));
    let valid = s.upload_ok("valid.jsonl", records(100, 2));
    let id = s.create_job(json!({"model": "tiny-gpt2", "task": {"type": "multilabel_classification", "input_dim": 4, "num_labels": 3},
                                 "training_file": train, "validation_file": valid,
                                 "hyperparameters": {"n_steps": 400, "batch_size": 16, "eval_every": 100, "learning_rate": 0.01}}));
    let job = s.wait_finished(&id);
    assert_eq!(job["status"], "succeeded", "{job}");
    let r = &job["result"];
    assert_eq!(r["primary_metric"], "micro_f1", "{r}");
    assert!(r["best_valid_micro_f1"].as_f64().unwrap() > 0.8, "{r}");
    assert!(r["valid_macro_f1"].is_number() && r["valid_subset_accuracy"].is_number(), "{r}");
    let answer: Value = s.predict(job["fine_tuned_model"].as_str().unwrap(), json!([[0.9, -0.9, 0.9, 0.0]])).json().unwrap();
    let p = &answer["data"][0];
    assert_eq!(p["probabilities"].as_array().unwrap().len(), 3, "{p}");
    assert_eq!(p["labels"], json!([0, 2]), "labels 0 and 2 are on: {p}");
    // A label out of range, or listed twice, is named with its line.
    let bad = s.upload_ok("bad.jsonl", b"{\"input\": [1, 2, 3, 4], \"label\": [0, 5]}\n".to_vec());
    let e: Value = s
        .post("/v1/fine_tuning/jobs", &json!({"model": "tiny-gpt2", "task": {"type": "multilabel_classification", "input_dim": 4, "num_labels": 3}, "training_file": bad}))
        .json()
        .unwrap();
    assert!(e["error"]["message"].as_str().unwrap().contains("line 1: label 1 is 5, out of range 0..3 (num_labels)"), "{e}");
}

#[test]
fn multilabel_trains_and_predicts_from_the_command_line() {
    let dir = common::tempdir();
    let path = dir.path().join("train.jsonl");
    std::fs::write(&path, records(64, 3)).unwrap();
    let task = r#"{"type":"multilabel_classification","input_dim":4,"num_labels":3}"#;
    let answers = common::cli_train_and_predict(dir.path(), task, &path, 10, "{\"input\": [0.1, 0.2, 0.3, 0.4]}\n");
    assert!(answers[0]["labels"].is_array() && answers[0]["probabilities"].as_array().unwrap().len() == 3, "{answers:?}");
}
