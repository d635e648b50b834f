//! Forecasting end to end: a CSV of channels with a date column (skipped, and said so) and gaps
//! (interpolated when asked, refused otherwise, by line and column), windows cut chronologically,
//! metrics in the series' units beside the seasonal-naive forecast, and forecasts in those units
//! over the API and the command line; the real CO2 series as a small slice.
mod common;

use common::server::Server;
use serde_json::{json, Value};

/// Two channels of `n` daily steps: a period-12 wave around 5,000 (raw units) and a slower one
/// around -20; every 50th value of the first channel left empty when `gaps`.
fn series(n: usize, gaps: bool) -> (String, Vec<[f64; 2]>) {
    let mut csv = String::from("date,load,temperature\n");
    let mut values = Vec::new();
    for t in 0..n {
        let a = 5000.0 + 300.0 * (t as f64 * std::f64::consts::TAU / 12.0).sin();
        let b = -20.0 + 5.0 * (t as f64 * std::f64::consts::TAU / 30.0).cos();
        let (y, d) = (2000 + t / 365, t % 365);
        let day = format!("{y}-{:02}-{:02}", 1 + d / 31 % 12, 1 + d % 28);
        let cell = if gaps && t % 50 == 7 { String::new() } else { format!("{a:.3}") };
        csv.push_str(&format!("{day},{cell},{b:.3}\n"));
        values.push([a, b]);
    }
    (csv, values)
}

fn task(extra: Value) -> Value {
    let mut t = json!({"type": "forecasting", "context_length": 24, "horizon": 6, "patch_size": 4, "stride": 2, "season": 12});
    t.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    t
}

#[test]
fn forecasting_trains_on_a_table_and_forecasts_in_its_units() {
    let s = Server::start(&[]);
    let (csv, values) = series(600, true);
    let file = s.upload_ok("load.csv", csv.into_bytes());
    // Gaps are refused unless the task says what to do with them.
    let e: Value =
        s.post("/v1/fine_tuning/jobs", &json!({"model": "tiny-gpt2", "training_file": file, "task": task(json!({}))})).json().unwrap();
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("line 9: column `load` is empty") && message.contains("\"interpolate\""), "{e}");
    let id = s.create_job(json!({
        "model": "tiny-gpt2", "training_file": file, "task": task(json!({"missing": "interpolate", "season": 1})),
        "hyperparameters": {"n_steps": 300, "batch_size": 16, "eval_every": 100, "learning_rate": 0.003}
    }));
    let job = s.wait_finished(&id);
    assert_eq!(job["status"], "succeeded", "{job}");
    let result = &job["result"];
    assert_eq!(result["primary_metric"], "mae", "{result}");
    // The test part (the last 20%) is scored in the series' units, beside the naive forecast.
    let (mae, naive) = (result["test_mae"].as_f64().unwrap(), result["test_naive_mae"].as_f64().unwrap());
    assert!(mae < 0.5 * naive, "test mae {mae} against the last value's {naive}: {result}");
    assert!((result["test_mase"].as_f64().unwrap() - mae / naive).abs() < 1e-6, "{result}");
    let events = s.events(&id);
    let data = events.iter().find_map(|e| e["data"]["data"].as_object()).expect("the data event");
    let notes = data["notes"].to_string();
    assert!(notes.contains("column `date`") && notes.contains("12 missing values"), "{notes}");
    // A forecast from the last 24 steps (more may be sent: the last context's worth is read).
    let model = job["fine_tuned_model"].as_str().unwrap();
    let history: Vec<Value> = values[..500].iter().map(|v| json!(v)).collect();
    let answer: Value = s.predict(model, json!([history, history[..300]])).json().unwrap();
    let forecast = answer["data"][0]["forecast"].as_array().unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(forecast.len(), 6);
    let (mut err, mut naive_err) = (0.0, 0.0);
    for (h, step) in forecast.iter().enumerate() {
        let step: Vec<f64> = step.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(step.len(), 2, "a value per channel");
        err += (step[0] - values[500 + h][0]).abs();
        naive_err += (values[499][0] - values[500 + h][0]).abs();
    }
    assert!(err < naive_err, "forecast error {err} against the last value's {naive_err}: {forecast:?}");
    // A short context is refused by sample.
    let r = s.predict(model, json!([history[..10]]));
    assert_eq!(r.status(), 422);
    assert!(r.text().unwrap().contains("inputs[0]: 10 steps, the context is 24"));
}

#[test]
fn forecasting_reads_json_series_from_the_command_line() {
    let dir = common::tempdir();
    let path = dir.path().join("series.jsonl");
    // Two channels, forecast together (a token holds both).
    let wave = |phase: f64| -> Vec<[f64; 2]> { (0..200).map(|t| [10.0 * ((t as f64 + phase) / 4.0).sin(), t as f64]).collect() };
    let text: String = [0.0, 1.5, 3.0].iter().map(|&p| format!("{}\n", json!({"series": wave(p)}))).collect();
    std::fs::write(&path, text).unwrap();
    let context = &wave(0.0)[..24];
    let answers = common::cli_train_and_predict(
        dir.path(),
        r#"{"type":"forecasting","context_length":24,"horizon":4,"channel_independence":false}"#,
        &path,
        20,
        &format!("{}\n", json!({"input": context})),
    );
    let forecast = answers[0]["forecast"].as_array().unwrap_or_else(|| panic!("{answers:?}"));
    assert_eq!((forecast.len(), forecast[0].as_array().unwrap().len()), (4, 2), "{forecast:?}");
}

/// The real weekly CO2 series (59 empty weeks), its first 600 weeks: interpolated, it trains, and
/// its forecast for the next year is in parts per million.
#[test]
fn the_co2_series_trains_with_its_gaps_interpolated() {
    let csv = std::fs::read_to_string(common::root().join("datasets/timeseries/co2.csv")).expect("make setup extracts the CO2 series");
    let dir = common::tempdir();
    let path = dir.path().join("co2.csv");
    let slice: Vec<&str> = csv.lines().take(601).collect();
    std::fs::write(&path, slice.join("\n")).unwrap();
    let weeks = [316.1f64, 317.3, 317.6, 317.5, 316.4, 316.9, 317.2, 317.5].repeat(13);
    let answers = common::cli_train_and_predict(
        dir.path(),
        r#"{"type":"forecasting","context_length":104,"horizon":52,"patch_size":16,"stride":8,"season":52,"missing":"interpolate"}"#,
        &path,
        30,
        &format!("{}\n", json!({ "input": weeks })),
    );
    let forecast = answers[0]["forecast"].as_array().unwrap_or_else(|| panic!("{answers:?}"));
    assert_eq!(forecast.len(), 52);
    let first = forecast[0][0].as_f64().unwrap();
    assert!((300.0..340.0).contains(&first), "a forecast in ppm: {first}");
}

/// A forecasting adapter and a classification adapter of one backbone share a forward pass, each
/// answered as alone.
#[test]
fn forecasting_and_classification_adapters_share_a_batch() {
    let s = Server::start(&["--max-batch-wait-ms", "300"]);
    let quick = |task: Value, file: &str| {
        let id = s.create_job(json!({"model": "tiny-gpt2", "task": task, "training_file": file, "hyperparameters": {"n_steps": 4, "batch_size": 4, "eval_every": 4}}));
        let job = s.wait_finished(&id);
        assert_eq!(job["status"], "succeeded", "{job}");
        job["fine_tuned_model"].as_str().unwrap().to_string()
    };
    let (csv, values) = series(200, false);
    let forecaster = quick(task(json!({})), &s.upload_ok("load.csv", csv.into_bytes()));
    let signs = s.upload_ok("signs.jsonl", common::server::sign_dataset(32, 1));
    let classifier = quick(serde_json::from_str(common::server::SIGN_TASK).unwrap(), &signs);
    let context: Vec<Value> = values[..24].iter().map(|v| json!(v)).collect();
    let asks = [(&forecaster, json!([context])), (&classifier, json!([[0.5, -0.5, 0.25, 0.0]]))];
    let alone: Vec<Value> = asks.iter().map(|(m, x)| s.predict(m, x.clone()).json::<Value>().unwrap()["data"].clone()).collect();
    let batches = s.metric("fpt_predictions_batches_total");
    let together: Vec<Value> = std::thread::scope(|sc| {
        let hs: Vec<_> = asks.iter().map(|(m, x)| sc.spawn(|| s.predict(m, x.clone()).json::<Value>().unwrap()["data"].clone())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(s.metric("fpt_predictions_batches_total"), batches + 1.0, "one forward pass for both");
    assert_eq!(together[1][0]["label"], alone[1][0]["label"]);
    let flat = |v: &Value| -> Vec<f64> {
        v[0]["forecast"].as_array().unwrap().iter().flat_map(|s| s.as_array().unwrap().iter().map(|x| x.as_f64().unwrap())).collect()
    };
    for (a, b) in flat(&together[0]).iter().zip(flat(&alone[0])) {
        assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{a} vs {b}");
    }
}
