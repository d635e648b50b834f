//! Parquet files as pyarrow (and pandas) write them: records whose `input` list column holds each
//! sequence, plain tables read as CSV tables are, and series tables for forecasting (a timestamp
//! column skipped, nulls interpolated); errors name the row and the column.
mod common;

use std::path::Path;

use common::server::Server;
use serde_json::{json, Value};

/// Writes Parquet files with pyarrow into `dir`: `records.parquet` (an `input` list of [x, y]
/// steps and a named class: which coordinate rises), `table.parquet` (columns a, b, c and a
/// `target` = 2a - b in raw units), `series.parquet` (a timestamp and two channels, a few nulls),
/// `gap.parquet` (a table with a null input) and `lists.parquet` (a list column not named input).
fn write_files(dir: &Path) {
    let script = dir.join("write.py");
    std::fs::write(
        &script,
        r#"
import sys, math, datetime
import pyarrow as pa, pyarrow.parquet as pq
out = sys.argv[1]
inputs, labels = [], []
for i in range(160):
    rising = i % 2
    steps = 5 + (i // 2) % 4
    inputs.append([[0.3 * s if rising == 0 else 1.0, 0.3 * s if rising == 1 else 1.0] for s in range(steps)])
    labels.append(["x rises", "y rises"][rising])
pq.write_table(pa.table({"input": inputs, "label": labels}), f"{out}/records.parquet")
a = [math.sin(i) for i in range(300)]
b = [math.cos(3 * i) for i in range(300)]
c = [float(i % 7) for i in range(300)]
pq.write_table(pa.table({"a": a, "b": b, "c": c, "target": [1000 * (2 * x - y) + 5000 for x, y in zip(a, b)]}), f"{out}/table.parquet")
start = datetime.datetime(2020, 1, 1)
when = [start + datetime.timedelta(hours=i) for i in range(400)]
load = [None if i % 37 == 5 else 500 + 50 * math.sin(i * 2 * math.pi / 24) for i in range(400)]
temp = [10 + 3 * math.cos(i * 2 * math.pi / 24) for i in range(400)]
pq.write_table(pa.table({"when": pa.array(when, pa.timestamp("ms")), "load": load, "temp": temp}), f"{out}/series.parquet")
pq.write_table(pa.table({"a": [1.0, None, 3.0], "label": [0, 1, 0]}), f"{out}/gap.parquet")
pq.write_table(pa.table({"steps": [[1.0, 2.0]], "label": [0]}), f"{out}/lists.parquet")
pq.write_table(pa.table({"a": pa.nulls(40_000_000, pa.float64())}), f"{out}/nulls.parquet")
"#,
    )
    .unwrap();
    common::run_python(&[script.to_str().unwrap(), dir.to_str().unwrap()]);
}

fn error_message(r: reqwest::blocking::Response) -> String {
    let v: Value = r.json().unwrap();
    v["error"]["message"].as_str().unwrap_or_default().to_string()
}

#[test]
fn parquet_records_tables_and_series_train_and_predict_over_the_api() {
    let dir = common::tempdir();
    write_files(dir.path());
    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    let s = Server::start(&[]);
    let upload = |name: &str| -> Value { s.upload(name, read(name)).json().unwrap() };
    let records = upload("records.parquet");
    assert_eq!((records["format"].as_str(), records["samples"].as_i64()), (Some("parquet"), Some(160)), "{records}");
    let train = |task: Value, file: &Value| {
        let id = s.create_job(json!({"model": "tiny-gpt2", "task": task, "training_file": file["id"],
                                     "hyperparameters": {"n_steps": 200, "batch_size": 16, "eval_every": 100, "learning_rate": 0.003}}));
        let job = s.wait_finished(&id);
        assert_eq!(job["status"], "succeeded", "{job}");
        job
    };
    // Records: the list column is the sequence (input_dim from its rows), the names are classes.
    let job = train(json!({"type": "sequence_classification"}), &records);
    assert!(job["result"]["best_valid_accuracy"].as_f64().unwrap() > 0.9, "{}", job["result"]);
    let answer: Value = s
        .predict(
            job["fine_tuned_model"].as_str().unwrap(),
            json!([[[1.0, 0.0], [1.0, 0.3], [1.0, 0.6], [1.0, 0.9], [1.0, 1.2], [1.0, 1.5]]]),
        )
        .json()
        .unwrap();
    assert_eq!(answer["data"][0]["label_name"], "y rises", "{answer}");
    // A plain table: the `target` column is the answer, the others the input.
    let table = upload("table.parquet");
    assert_eq!(table["samples"], 300, "{table}");
    let job = train(json!({"type": "regression", "input_dim": 3}), &table);
    assert_eq!(job["result"]["primary_metric"], "rmse");
    let answer: Value = s.predict(job["fine_tuned_model"].as_str().unwrap(), json!([[0.5, -0.5, 2.0]])).json().unwrap();
    assert!(answer["data"][0]["value"].as_f64().is_some_and(|v| (2000.0..9000.0).contains(&v)), "in the target's units: {answer}");
    // A series table: the timestamp column is skipped, the nulls interpolated.
    let series = upload("series.parquet");
    let job = train(
        json!({"type": "forecasting", "context_length": 48, "horizon": 12, "patch_size": 8, "stride": 4, "missing": "interpolate"}),
        &series,
    );
    assert!(job["result"]["test_mase"].is_number(), "{}", job["result"]);
    let context: Vec<[f64; 2]> = (0..48).map(|i| [500.0 + 50.0 * (i as f64 * std::f64::consts::TAU / 24.0).sin(), 10.0]).collect();
    let answer: Value = s.predict(job["fine_tuned_model"].as_str().unwrap(), json!([context])).json().unwrap();
    assert_eq!(answer["data"][0]["forecast"].as_array().map(Vec::len), Some(12), "{answer}");
    // Errors name the row and the column.
    let message = error_message(s.upload("gap.parquet", read("gap.parquet")));
    assert!(message.contains("row 2: column `a` is empty"), "{message}");
    assert!(error_message(s.upload("lists.parquet", read("lists.parquet"))).contains("row 1: column `steps` holds a list"));
    // A few kilobytes of nulls that would be forty million cells are refused from the metadata.
    let nulls = read("nulls.parquet");
    assert!(nulls.len() < 1 << 20, "{} bytes", nulls.len());
    let message = error_message(s.upload("nulls.parquet", nulls));
    assert!(message.contains("40000000 cells (rows x columns), at most"), "{message}");
    let mut cut = read("table.parquet");
    cut.truncate(cut.len() / 2);
    assert_eq!(s.upload("cut.parquet", cut).status(), 422, "a cut file is refused");
}

#[test]
fn parquet_records_train_and_predict_from_the_command_line() {
    let dir = common::tempdir();
    write_files(dir.path());
    let answers = common::cli_train_and_predict(
        dir.path(),
        r#"{"type":"sequence_classification"}"#,
        &dir.path().join("records.parquet"),
        20,
        "{\"input\": [[0.0, 1.0], [0.3, 1.0], [0.6, 1.0]]}\n",
    );
    assert!(answers[0]["label_name"].is_string(), "{answers:?}");
}
