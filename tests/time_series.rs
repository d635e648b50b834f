//! Time-series classification: the token size taken from the data when `input_dim` is left out
//! (the real JapaneseVowels cases, 12 channels, 7 to 29 steps, named speakers), and patching that
//! lets a series far longer than the backbone's positions take part whole.
mod common;

use common::server::Server;
use serde_json::{json, Value};

/// A slice of the real JapaneseVowels training file: its header and every `every`-th case.
fn vowels(every: usize) -> String {
    let text = std::fs::read_to_string(common::root().join("datasets/timeseries/JapaneseVowels_TRAIN.ts"))
        .expect("make setup extracts the UCR/UEA files");
    let (head, cases) = text.split_once("@data\n").unwrap();
    let picked: Vec<&str> = cases.lines().step_by(every).collect();
    format!("{head}@data\n{}\n", picked.join("\n"))
}

#[test]
fn input_dim_is_taken_from_the_data() {
    let s = Server::start(&[]);
    let file = s.upload_ok("vowels.ts", vowels(2).into_bytes());
    let id = s.create_job(json!({"model": "tiny-gpt2", "task": {"type": "sequence_classification"}, "training_file": file,
                                 "hyperparameters": {"n_steps": 60, "batch_size": 16, "eval_every": 30}}));
    let job = s.wait_finished(&id);
    assert_eq!(job["status"], "succeeded", "{job}");
    let model = job["fine_tuned_model"].as_str().unwrap();
    // A case of 7 steps of 12 channels is answered with a speaker's name; 11 channels are refused.
    let case: Vec<Vec<f64>> = (0..7).map(|t| (0..12).map(|c| ((t * c) as f64 * 0.1).sin()).collect()).collect();
    let answer: Value = s.predict(model, json!([case])).json().unwrap();
    let name = answer["data"][0]["label_name"].as_str().unwrap_or_else(|| panic!("{answer}"));
    assert!(("1"..="9").contains(&name), "{answer}");
    assert_eq!(answer["data"][0]["probabilities"].as_array().map(Vec::len), Some(9), "{answer}");
    // A validation file must have the training file's channels.
    let two: String =
        (0..20).map(|i| format!("{}\n", json!({"input": [[0.1, 0.2], [0.3, 0.4]], "label": (1 + i % 2).to_string()}))).collect();
    let two = s.upload_ok("two.jsonl", two.into_bytes());
    let e: Value = s
        .post(
            "/v1/fine_tuning/jobs",
            &json!({"model": "tiny-gpt2", "task": {"type": "sequence_classification"}, "training_file": file, "validation_file": two}),
        )
        .json()
        .unwrap();
    assert!(e["error"]["message"].as_str().unwrap().contains("tokens have 2 values, expected 12"), "{e}");
    let short: Vec<Vec<f64>> = case.iter().map(|t| t[..11].to_vec()).collect();
    let r = s.predict(model, json!([short]));
    assert_eq!(r.status(), 422);
    assert!(r.text().unwrap().contains("inputs[0]: token 0 has 11 values, expected 12"));
}

/// Series of 600 steps whose class is whether their last quarter is raised by 1.
fn raised(n: usize) -> String {
    let mut text = String::new();
    for i in 0..n {
        let series: Vec<f64> = (0..600).map(|t| step(t, i, i % 2 == 1)).collect();
        text.push_str(&format!("{}\n", json!({"input": series, "label": i % 2})));
    }
    text
}

/// Step `t` of series `i`: a small pattern, plus 1 from step 450 on when `raised`.
fn step(t: usize, i: usize, raised: bool) -> f64 {
    0.1 * ((t * 7 + i * 13) % 5) as f64 + if raised && t >= 450 { 1.0 } else { 0.0 }
}

#[test]
fn patches_fit_a_series_longer_than_the_backbones_positions() {
    let s = Server::start(&[]);
    let file = s.upload_ok("raised.jsonl", raised(160).into_bytes());
    let train = |task: Value| {
        let id = s.create_job(json!({"model": "tiny-bert", "task": task, "training_file": file,
                                     "hyperparameters": {"n_steps": 150, "batch_size": 16, "eval_every": 50, "learning_rate": 0.003}}));
        let job = s.wait_finished(&id);
        assert_eq!(job["status"], "succeeded", "{job}");
        let data = s.events(&id).iter().find_map(|e| e["data"]["data"].as_object().cloned()).expect("the data event");
        (job, data)
    };
    // Unpatched, the tiny BERT's 256 positions cut every series before its last quarter.
    let (_, data) = train(json!({"type": "sequence_classification", "num_classes": 2}));
    assert_eq!(data["truncated"], 160, "{data:?}");
    // Patches of 8 steps (every 8) make 75 tokens: nothing is cut, and the raised quarter is seen.
    let (job, data) = train(json!({"type": "sequence_classification", "num_classes": 2, "patch_size": 8}));
    assert_eq!((data["truncated"].as_u64(), data["seq_len"].as_u64()), (Some(0), Some(75)), "{data:?}");
    assert!(job["result"]["best_valid_accuracy"].as_f64().unwrap() > 0.9, "{}", job["result"]);
    // A prediction sends the series as it is; the adapter patches it as in training.
    let model = job["fine_tuned_model"].as_str().unwrap();
    let series = |raised| (0..600).map(|t| step(t, 7, raised)).collect::<Vec<f64>>();
    let answer: Value = s.predict(model, json!([series(true), series(false)])).json().unwrap();
    assert_eq!((&answer["data"][0]["label"], &answer["data"][1]["label"]), (&json!(1), &json!(0)), "{answer}");
    // A stride needs a patch; token ids are not patched.
    for (task, field) in [
        (json!({"type": "sequence_classification", "stride": 4}), "task.stride"),
        (json!({"type": "sequence_classification", "vocab_size": 8, "patch_size": 4}), "task.patch_size"),
        (json!({"type": "sequence_classification", "patch_size": 4, "stride": 5}), "task.stride"),
    ] {
        let e: Value = s.post("/v1/fine_tuning/jobs", &json!({"model": "tiny-bert", "task": task, "training_file": file})).json().unwrap();
        assert_eq!(e["error"]["param"], field, "{e}");
    }
}

/// `refit` through the API (the worker's path): a job on JapaneseVowels cases of 7 to 29 steps
/// trains again on its training and validation cases together (rows of different lengths
/// padded as one split), and its model is the refit's.
#[test]
fn a_job_refits_on_its_training_and_validation_cases() {
    let s = Server::start(&[]);
    let file = s.upload_ok("vowels.ts", vowels(3).into_bytes());
    let id = s.create_job(json!({"model": "tiny-gpt2", "task": {"type": "sequence_classification"}, "training_file": file,
                                 "hyperparameters": {"n_steps": 40, "batch_size": 16, "eval_every": 20, "validation_fraction": 0.2, "refit": true}}));
    let job = s.wait_finished(&id);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["hyperparameters"]["refit"], true, "{job}");
    let (result, protocol) = (&job["result"], &job["result"]["protocol"]);
    let n = protocol["train_samples"].as_u64().unwrap() + protocol["valid_samples"].as_u64().unwrap();
    assert_eq!(result["refit"]["train_samples"].as_u64(), Some(n), "{result}");
    assert_eq!(result["refit"]["step"], result["best_step"], "{result}");
    let case: Vec<Vec<f64>> = (0..9).map(|t| (0..12).map(|c| ((t + c) as f64 * 0.2).cos()).collect()).collect();
    let answer: Value = s.predict(job["fine_tuned_model"].as_str().unwrap(), json!([case])).json().unwrap();
    assert!(answer["data"][0]["label_name"].is_string(), "{answer}");
}
