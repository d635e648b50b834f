//! The UCR/UEA `.ts` time-series format over the API: multichannel cases of varying length become
//! sequences of tokens (one value per channel), class names that look like digits stay names in
//! the header's order, and a `@targetLabel` file trains a regression.
mod common;

use common::server::Server;
use serde_json::{json, Value};

/// Two-channel cases of 6 to 11 steps; the class says which channel rises. Classes are declared
/// as `@classLabel true 2 1` so that the name "2" is class 0.
fn cases(n: usize) -> String {
    let mut t = String::from("# generated\n@problemName rising\n@timeStamps false\n@univariate false\n@dimensions 2\n@equalLength false\n@classLabel true 2 1\n@data\n");
    for i in 0..n {
        let len = 6 + i % 6;
        let rising = i % 2;
        let ch = |c: usize| {
            (0..len).map(|s| format!("{}", if c == rising { s as f64 * 0.3 } else { 1.0 - s as f64 * 0.05 })).collect::<Vec<_>>().join(",")
        };
        t.push_str(&format!("{}:{}:{}\n", ch(0), ch(1), ["2", "1"][rising]));
    }
    t
}

#[test]
fn ts_files_train_classification_and_regression() {
    let s = Server::start(&[]);
    let file = s.upload("rising.ts", cases(80).into_bytes()).json::<Value>().unwrap();
    assert_eq!((file["format"].as_str(), file["samples"].as_i64()), (Some("ts"), Some(80)), "{file}");
    let id = s
        .create_job(json!({"model": "tiny-gpt2", "task": {"type": "sequence_classification", "input_dim": 2}, "training_file": file["id"],
                                 "hyperparameters": {"n_steps": 60, "batch_size": 8, "eval_every": 30, "learning_rate": 0.01}}));
    let job = s.wait_finished(&id);
    assert_eq!(job["status"], "succeeded", "{job}");
    let x: Vec<Vec<f64>> = (0..8).map(|s| vec![s as f64 * 0.3, 1.0 - s as f64 * 0.05]).collect();
    let answer: Value = s.predict(job["fine_tuned_model"].as_str().unwrap(), json!([x])).json().unwrap();
    let p = &answer["data"][0];
    assert_eq!(p["label_name"], ["2", "1"][p["label"].as_u64().unwrap() as usize], "names in the header's order: {p}");
    // A missing value is refused with its line and case, unless the task drops or fills it.
    let mut gappy = cases(40);
    gappy.push_str("1,?,3:1,2,3:2\n");
    let gappy = s.upload_ok("gappy.ts", gappy.into_bytes());
    let task = |missing: Option<&str>| {
        let mut t = json!({"type": "sequence_classification", "input_dim": 2});
        if let Some(m) = missing {
            t["missing"] = json!(m);
        }
        json!({"model": "tiny-gpt2", "task": t, "training_file": gappy, "hyperparameters": {"n_steps": 4, "batch_size": 8, "eval_every": 4}})
    };
    let e: Value = s.post("/v1/fine_tuning/jobs", &task(None)).json().unwrap();
    assert!(e["error"]["message"].as_str().unwrap().contains("line 49: case 40: channel 0, step 1: a missing value"), "{e}");
    for (missing, cases) in [("drop", 40), ("interpolate", 41)] {
        let id = s.create_job(task(Some(missing)));
        let job = s.wait_finished(&id);
        assert_eq!(job["status"], "succeeded", "{missing}: {job}");
        let data = s.events(&id).iter().find_map(|e| e["data"]["data"].as_object().cloned()).expect("the data event");
        let read = data["train_samples"].as_u64().unwrap() + data["valid_samples"].as_u64().unwrap();
        assert_eq!(read, cases, "{missing}: {data:?}");
    }
    // Regression from @targetLabel.
    let mut reg = String::from("@problemName level\n@targetLabel true\n@data\n");
    for i in 0..40 {
        let level = (i % 10) as f64;
        reg.push_str(&format!("{},{},{}:{}\n", level, level + 0.5, level - 0.5, level * 10.0));
    }
    let reg = s.upload_ok("level.ts", reg.into_bytes());
    let id = s.create_job(json!({"model": "tiny-gpt2", "task": {"type": "regression", "input_dim": 1}, "training_file": reg,
                                 "hyperparameters": {"n_steps": 20, "batch_size": 8, "eval_every": 20}}));
    let job = s.wait_finished(&id);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["primary_metric"], "rmse");
}
