//! CSV (and TSV) tables with a header row: a label or target column, every other column a number
//! of the input; detected by content on upload, read by the classification and regression tasks,
//! with the line and the column named in every error.
mod common;

use common::server::Server;
use serde_json::{json, Value};

/// A table of `n` rows: columns a, b (inputs), `label` (a's sign) and `price` (linear in a and b, in raw units).
fn table(n: usize, delimiter: char) -> Vec<u8> {
    let d = delimiter;
    let mut t = format!("a{d}label{d}b{d}price\n");
    for i in 0..n {
        let a = ((i * 37) % 101) as f64 / 50.0 - 1.0;
        let b = ((i * 53) % 97) as f64 / 48.0 - 1.0;
        t.push_str(&format!("{a}{d}{}{d}{b}{d}{}\n", (a > 0.0) as u8, 1000.0 * (a - b) + 5000.0));
    }
    t.into_bytes()
}

fn error_message(r: reqwest::blocking::Response) -> String {
    r.json::<Value>().unwrap()["error"]["message"].as_str().unwrap().to_string()
}

#[test]
fn csv_tables_train_classification_and_regression_and_bad_rows_are_named() {
    let s = Server::start(&[]);
    let file = s.upload("table.csv", table(200, ','));
    let meta: Value = file.json().unwrap();
    assert_eq!((meta["format"].as_str(), meta["samples"].as_i64()), (Some("csv"), Some(200)), "{meta}");
    let file = meta["id"].as_str().unwrap().to_string();
    let tsv = s.upload_ok("table.tsv", table(50, '\t'));
    let train = |task: Value, file: &str| {
        let id = s.create_job(json!({"model": "tiny-gpt2", "task": task, "training_file": file,
                                     "hyperparameters": {"n_steps": 30, "batch_size": 8, "eval_every": 30}}));
        let job = s.wait_finished(&id);
        assert_eq!(job["status"], "succeeded", "{job}");
        job
    };
    // Classification: the `label` column; the inputs are the other numeric columns (a, b, price).
    let job = train(json!({"type": "sequence_classification", "input_dim": 3, "num_classes": 2}), &file);
    assert!(job["result"]["valid_accuracy"].is_number(), "{job}");
    // Regression on another column; `label` is then an input like any other.
    let job = train(json!({"type": "regression", "input_dim": 3, "target_column": "price"}), &tsv);
    assert_eq!(job["result"]["primary_metric"], "rmse");
    let answer: Value = s.predict(job["fine_tuned_model"].as_str().unwrap(), json!([[0.5, 1, -0.5]])).json().unwrap();
    assert!(answer["data"][0]["value"].is_number(), "{answer}");
    // A column the task names but the file lacks; a row with a word or a gap, named by line and column.
    let r = s.post(
        "/v1/fine_tuning/jobs",
        &json!({"model": "tiny-gpt2", "training_file": file,
                                                   "task": {"type": "regression", "input_dim": 3, "target_column": "cost"}}),
    );
    assert!(error_message(r).contains("line 1: no column `cost`"));
    let mut bad = table(5, ',');
    bad.extend_from_slice(b"0.5,1,n/a,12\n0.5,1,,12\n");
    let r = s.upload("bad.csv", bad);
    assert_eq!(r.status(), 422);
    assert!(error_message(r).contains("line 7: column `b`: `n/a` is not a number"));
    let r = s.upload("gap.csv", b"a,label\n0.5,1\n,0\n".to_vec());
    assert!(error_message(r).contains("line 3: column `a` is empty (a missing value"));
    let r = s.upload("ragged.csv", b"a,b,label\n0.5,1\n".to_vec());
    assert!(error_message(r).contains("line 2: invalid CSV"));
    assert_eq!(error_message(s.upload("empty.csv", b"\n \n".to_vec())), "empty.csv: file: empty");
    // A table without a `label` column uploads (a task may name its column); a task that names none is told.
    let unlabelled = s.upload_ok("nolabel.csv", b"a,b\n0.5,1\n0.25,0\n".to_vec());
    let r = s.post(
        "/v1/fine_tuning/jobs",
        &json!({"model": "tiny-gpt2", "training_file": unlabelled,
                                                   "task": {"type": "sequence_classification", "input_dim": 1}}),
    );
    assert!(error_message(r).contains("line 1: no column `label`"));
}

/// Class names instead of indices: numbered in sorted order, kept in the adapter, answered by name;
/// `num_classes` comes from the training file; a validation file's unknown name is named.
#[test]
fn class_names_train_and_are_answered_by_name() {
    let s = Server::start(&[]);
    let rows: String =
        (0..60).map(|i| format!("{{\"input\": [{}, 0.5], \"label\": \"{}\"}}\n", i % 3, ["ant", "bee", "cow"][i % 3])).collect();
    let train = s.upload_ok("names.jsonl", rows.into_bytes());
    let id = s
        .create_job(json!({"model": "tiny-gpt2", "task": {"type": "sequence_classification", "input_dim": 2}, "training_file": train,
                                 "hyperparameters": {"n_steps": 60, "batch_size": 8, "eval_every": 30, "learning_rate": 0.01}}));
    let job = s.wait_finished(&id);
    assert_eq!(job["status"], "succeeded", "{job}");
    let answer: Value = s.predict(job["fine_tuned_model"].as_str().unwrap(), json!([[2, 0.5], [0, 0.5]])).json().unwrap();
    for p in answer["data"].as_array().unwrap() {
        let (label, name) = (p["label"].as_i64().unwrap(), p["label_name"].as_str().unwrap());
        assert_eq!(name, ["ant", "bee", "cow"][label as usize], "{p}");
        assert_eq!(p["probabilities"].as_array().unwrap().len(), 3, "three classes from the file");
    }
    let valid = s.upload_ok("valid.csv", b"x,y,label\n1,0.5,bee\n2,0.5,yak\n".to_vec());
    let r = s.post(
        "/v1/fine_tuning/jobs",
        &json!({"model": "tiny-gpt2", "task": {"type": "sequence_classification", "input_dim": 2},
                                                   "training_file": train, "validation_file": valid}),
    );
    assert_eq!(r.status(), 422);
    assert!(error_message(r).contains("line 3: label `yak` is not one of the training file's classes (ant, bee, cow)"));
    // Labels that are not classes, or that would make a huge head, are refused, not crashed on.
    let bits = s.upload_ok("bits.jsonl", b"{\"input\": [1, 2], \"label\": [0, 1]}\n".to_vec());
    let r = s.post(
        "/v1/fine_tuning/jobs",
        &json!({"model": "tiny-gpt2", "task": {"type": "sequence_classification", "input_dim": 2}, "training_file": bits}),
    );
    assert_eq!(r.status(), 422);
    assert!(error_message(r).contains("labels are not classes"));
    let huge = s.upload_ok("huge.jsonl", b"{\"input\": [1, 2], \"label\": 2000000000}\n{\"input\": [1, 2], \"label\": 0}\n".to_vec());
    let r = s.post(
        "/v1/fine_tuning/jobs",
        &json!({"model": "tiny-gpt2", "task": {"type": "sequence_classification", "input_dim": 2}, "training_file": huge}),
    );
    assert_eq!(r.status(), 422);
    assert!(error_message(r).contains("more than 65536"));
    // Indices in the training file, names in the validation file: refused, not numbered apart.
    let indices = s.upload_ok("indices.jsonl", b"{\"input\": [1, 2], \"label\": 1}\n{\"input\": [1, 2], \"label\": 0}\n".to_vec());
    let named = s.upload_ok("named.jsonl", b"{\"input\": [1, 2], \"label\": \"bee\"}\n".to_vec());
    let r = s.post(
        "/v1/fine_tuning/jobs",
        &json!({"model": "tiny-gpt2", "task": {"type": "sequence_classification", "input_dim": 2},
                                                   "training_file": indices, "validation_file": named}),
    );
    assert!(error_message(r).contains("is a name, but the training file's labels are class indices"));
    // A table whose label column has another name uploads, and the task names it.
    let priced = s.upload_ok("priced.csv", b"a,b,kind\n1,2,x\n3,4,y\n5,6,x\n7,8,y\n9,1,x\n".to_vec());
    let id = s
        .create_job(json!({"model": "tiny-gpt2", "task": {"type": "sequence_classification", "input_dim": 2, "label_column": "kind"},
                                 "training_file": priced, "hyperparameters": {"n_steps": 2, "batch_size": 2, "eval_every": 2}}));
    assert_eq!(s.wait_finished(&id)["status"], "succeeded");
    let r = s.upload("two-word-columns.csv", b"a,b,kind\n1,z,x\n".to_vec());
    assert!(error_message(r).contains("line 2: column `kind`: `x` is not a number (only one column, the label, may hold names)"));
}
