//! The HTTP service end to end: the real server on loopback, real SQLite, real libtorch, tiny backbones.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use common::server::{sign_dataset, Server, SIGN_TASK};
use serde_json::{json, Value};

fn task() -> Value {
    serde_json::from_str(SIGN_TASK).unwrap()
}

fn job_body(train: &str, steps: u64, extra: Value) -> Value {
    let mut b = json!({"model": "tiny-gpt2", "task": task(), "training_file": train,
        "hyperparameters": {"n_steps": steps, "eval_every": 50, "checkpoint_every": 100, "batch_size": 8, "log_every": 10}});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            b[k] = v;
        }
    }
    b
}

#[test]
fn the_whole_life_of_a_job() {
    let s = Server::start(&[]);
    let train = s.upload_ok("train.jsonl", sign_dataset(200, 1));
    let valid = s.upload_ok("valid.jsonl", sign_dataset(50, 2));
    let f = s.get_json(&format!("/v1/files/{train}"));
    assert_eq!((f["object"].as_str(), f["format"].as_str(), f["samples"].as_i64()), (Some("file"), Some("jsonl"), Some(200)));
    let id = s.create_job(json!({"model": "tiny-gpt2", "task": task(), "training_file": train, "validation_file": valid,
        "hyperparameters": {"n_steps": 40, "eval_every": 10, "checkpoint_every": 20, "batch_size": 8, "backbone_dropout": 0.0}, "suffix": "life", "metadata": {"k": "v"}}));

    // Watch it over SSE to [DONE].
    let resp = s.get(&format!("/v1/fine_tuning/jobs/{id}/events?stream=true"));
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut ids = Vec::new();
    let mut metrics = 0;
    let mut done = false;
    for line in BufReader::new(resp).lines() {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("id: ") {
            ids.push(id.to_string());
        }
        if line == "data: [DONE]" {
            done = true;
            break;
        }
        if let Some(d) = line.strip_prefix("data: ") {
            let e: Value = serde_json::from_str(d).unwrap();
            assert_eq!(e["object"], "fine_tuning.job.event");
            if e["type"] == "metrics" {
                metrics += 1;
                assert!(e["data"]["train_loss"].is_number() && e["data"]["samples_per_second"].is_number());
                assert_eq!(e["data"]["total_steps"], 40);
            }
        }
    }
    assert!(done && metrics >= 4, "metrics events: {metrics}");

    let j = s.job(&id);
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(j["trained_steps"], 40);
    assert_eq!(j["metadata"]["k"], "v");
    assert_eq!(j["hyperparameters"]["backbone_dropout"], 0.0);
    assert!(j["result"]["valid_accuracy"].as_f64().unwrap() >= 0.0);
    // The kept checkpoint's confusion on the 50 validation rows: true class by predicted class.
    let c = &j["result"]["confusion"];
    assert_eq!((c["split"].as_str(), c["labels"].as_array().map(Vec::len)), (Some("valid"), Some(2)), "{c}");
    let counts: Vec<Vec<u64>> = serde_json::from_value(c["matrix"].clone()).unwrap();
    assert_eq!(counts.iter().flatten().sum::<u64>(), 50, "{c}");
    let right = (counts[0][0] + counts[1][1]) as f64 / 50.0;
    assert!((right - j["result"]["best_valid_accuracy"].as_f64().unwrap()).abs() < 1e-9, "the matrix is the kept checkpoint's: {c}");
    let model = j["fine_tuned_model"].as_str().unwrap().to_string();
    assert!(model.starts_with("ft-life-"), "{model}");

    // Resuming the stream after an event id starts right after it.
    let mut req = s.client.get(format!("{}/v1/fine_tuning/jobs/{id}/events?stream=true", s.url));
    req = req.header("Last-Event-ID", &ids[2]);
    let first =
        BufReader::new(req.send().unwrap()).lines().map(|l| l.unwrap()).find_map(|l| l.strip_prefix("id: ").map(String::from)).unwrap();
    assert_eq!(first, ids[3]);

    let cks = s.get_json(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"));
    let steps: Vec<i64> = cks["data"].as_array().unwrap().iter().map(|c| c["step_number"].as_i64().unwrap()).collect();
    assert_eq!(steps, vec![40, 20]);
    let ck_model = cks["data"][1]["fine_tuned_model_checkpoint"].as_str().unwrap().to_string();

    let inputs = json!([[0.5, 0.1, -0.2, 0.3, 0.0, 0.1, 0.2, 0.3], [-0.9, 0.2, 0.2, 0.1, 0.4, -0.1, 0.0, 0.0], [[0.1, 0.2, 0.3, 0.4]]]);
    for m in [&model, &ck_model] {
        let r = s.predict(m, inputs.clone());
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("x-queue-time") && r.headers().contains_key("x-inference-time"));
        let p: Value = r.json().unwrap();
        assert_eq!(p["data"].as_array().unwrap().len(), 3);
        for (i, row) in p["data"].as_array().unwrap().iter().enumerate() {
            assert_eq!(row["index"], i);
            let probs: Vec<f64> = row["probabilities"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4);
            assert!(row["label"].as_i64().unwrap() < 2);
        }
    }
    let models = s.get_json("/v1/models");
    let listed: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(listed.contains(&"tiny-gpt2") && listed.contains(&model.as_str()), "{listed:?}");
    let adapter = s.get(&format!("/v1/models/{model}/adapter")).bytes().unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&adapter).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "fpt-adapter/2");
}

#[test]
fn cancel_while_running_stops_within_two_seconds() {
    let s = Server::start(&[]);
    let train = s.upload_ok("train.jsonl", sign_dataset(100, 3));
    let id = s.create_job(job_body(&train, 1_000_000, json!({})));
    s.wait_for(&id, Duration::from_secs(60), |st| st == "running");
    while s.job(&id)["trained_steps"].as_i64().unwrap() < 10 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    s.post_ok(&format!("/v1/fine_tuning/jobs/{id}/cancel"), &json!({}));
    let j = s.wait_for(&id, Duration::from_secs(2), |st| st == "cancelled");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(j["finished_at"].is_number());
    // A finished job cannot be cancelled again.
    assert_eq!(s.post(&format!("/v1/fine_tuning/jobs/{id}/cancel"), &json!({})).status(), 409);
}

#[test]
fn pause_and_resume_give_the_same_final_metrics_as_an_uninterrupted_run() {
    let s = Server::start(&[]);
    let train = s.upload_ok("train.jsonl", sign_dataset(100, 4));
    let body = job_body(&train, 600, json!({"seed": 7}));
    let plain = s.create_job(body.clone());
    let plain = s.wait_finished(&plain);
    let id = s.create_job(body);
    s.wait_for(&id, Duration::from_secs(60), |st| st == "running");
    while s.job(&id)["trained_steps"].as_i64().unwrap() < 120 {
        std::thread::sleep(Duration::from_millis(10));
    }
    s.post_ok(&format!("/v1/fine_tuning/jobs/{id}/pause"), &json!({}));
    let paused = s.wait_for(&id, Duration::from_secs(10), |st| st == "paused");
    assert!(paused["trained_steps"].as_i64().unwrap() < 600);
    assert_eq!(s.post(&format!("/v1/fine_tuning/jobs/{id}/pause"), &json!({})).status(), 409, "a paused job cannot be paused");
    s.post_ok(&format!("/v1/fine_tuning/jobs/{id}/resume"), &json!({}));
    let resumed = s.wait_finished(&id);
    assert_eq!(resumed["status"], "succeeded");
    for k in ["valid_accuracy", "valid_loss", "train_loss", "train_accuracy", "best_valid_accuracy"] {
        assert_eq!(resumed["result"][k], plain["result"][k], "{k}");
    }
    let steps = s.metric_steps(&id);
    assert_eq!(steps, (1..=60).map(|i| i * 10).collect::<Vec<_>>(), "contiguous step history");
}

#[test]
fn a_server_killed_mid_training_resumes_with_a_contiguous_history() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::start_on(&data, &[]);
    let train = s.upload_ok("train.jsonl", sign_dataset(100, 5));
    let id = s.create_job(job_body(&train, 800, json!({})));
    s.wait_for(&id, Duration::from_secs(60), |st| st == "running");
    while s.job(&id)["trained_steps"].as_i64().unwrap() < 250 {
        std::thread::sleep(Duration::from_millis(10));
    }
    s.kill(); // SIGKILL
    let s = Server::start_on(&data, &[]);
    let j = s.wait_finished(&id);
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(s.metric_steps(&id), (1..=80).map(|i| i * 10).collect::<Vec<_>>());
    let resumed = s.events(&id).iter().any(|e| e["message"].as_str().unwrap().contains("resumed from the checkpoint of step"));
    assert!(resumed, "the job resumed from a checkpoint rather than starting over");
    let cks = s.get_json(&format!("/v1/fine_tuning/jobs/{id}/checkpoints?limit=100"));
    let steps: Vec<i64> = cks["data"].as_array().unwrap().iter().map(|c| c["step_number"].as_i64().unwrap()).collect();
    assert_eq!(steps, (1..=8).rev().map(|i| i * 100).collect::<Vec<_>>());
}

#[test]
fn sigterm_checkpoints_the_running_job_and_queues_it_again() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::start_on(&data, &[]);
    let train = s.upload_ok("train.jsonl", sign_dataset(100, 6));
    let id = s.create_job(job_body(&train, 100_000, json!({})));
    while s.job(&id)["trained_steps"].as_i64().unwrap() < 30 {
        std::thread::sleep(Duration::from_millis(10));
    }
    s.terminate();
    let s = Server::start_on(&data, &["--no-workers"]);
    let j = s.job(&id);
    assert_eq!(j["status"], "queued");
    let stopped = s.events(&id).iter().any(|e| e["message"].as_str().unwrap().contains("checkpointed at step"));
    assert!(stopped);
}

fn error_of(r: reqwest::blocking::Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status);
    assert!(r.headers().contains_key("x-request-id"));
    let v: Value = r.json().unwrap();
    assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string() && v["error"]["code"].is_string(), "{v}");
    v["error"].clone()
}

#[test]
fn bad_input_gets_the_documented_status_and_error_object() {
    let s = Server::start(&["--max-body-mb", "1"]);
    let url = |p: &str| format!("{}{p}", s.url);
    // Malformed JSON.
    let r = s.client.post(url("/v1/fine_tuning/jobs")).header("content-type", "application/json").body("{\"model\": ").send().unwrap();
    error_of(r, 400);
    // Unknown field and invalid values, named in `param`.
    let e = error_of(s.post("/v1/fine_tuning/jobs", &json!({"task": {"type": "bit_xor"}, "modle": "x"})), 422);
    assert!(e["message"].as_str().unwrap().contains("modle"));
    let e = error_of(
        s.post(
            "/v1/fine_tuning/jobs",
            &json!({"model": "tiny-gpt2", "task": {"type": "bit_xor"}, "hyperparameters": {"learning_rate": -1}}),
        ),
        422,
    );
    assert_eq!(e["param"], "hyperparameters.learning_rate");
    let e = error_of(
        s.post(
            "/v1/fine_tuning/jobs",
            &json!({"model": "tiny-gpt2", "task": {"type": "bit_xor"}, "hyperparameters": {"backbone_dropout": 1}}),
        ),
        422,
    );
    assert_eq!(e["param"], "hyperparameters.backbone_dropout");
    let e = error_of(s.post("/v1/fine_tuning/jobs", &json!({"model": "tiny-gpt2", "task": {"type": "no_such_task"}})), 422);
    assert_eq!(e["param"], "task.type");
    let e = error_of(s.post("/v1/fine_tuning/jobs", &json!({"model": "no-such-model", "task": {"type": "bit_xor"}})), 422);
    assert_eq!(e["param"], "model");
    let e = error_of(s.post("/v1/fine_tuning/jobs", &json!({"model": "tiny-gpt2", "task": task(), "training_file": "file-nope"})), 422);
    assert_eq!(e["param"], "training_file");
    // Unknown ids.
    error_of(s.get("/v1/fine_tuning/jobs/ftjob-nope"), 404);
    error_of(s.get("/v1/files/file-nope"), 404);
    error_of(s.get("/v1/models/ft-nope"), 404);
    error_of(s.predict("ft-nope", json!([[1.0]])), 404);
    error_of(s.get("/v1/no/such/route"), 404);
    // Wrong state transitions.
    let id = s.create_job(json!({"model": "tiny-gpt2", "task": {"type": "bit_xor"}, "hyperparameters": {"n_steps": 5}}));
    s.wait_finished(&id);
    error_of(s.post(&format!("/v1/fine_tuning/jobs/{id}/resume"), &json!({})), 409);
    error_of(s.post(&format!("/v1/fine_tuning/jobs/{id}/pause"), &json!({})), 409);
    // Oversize body.
    let big = json!({"model": "x", "inputs": vec![vec![0.5f32; 1000]; 300]});
    error_of(s.post("/v1/predictions", &big), 413);
    // A corrupt dataset names the line.
    let e = error_of(s.upload("bad.jsonl", b"{\"input\": [1, 2], \"label\": 0}\n{\"input\": [1, 2], \"label\": }\n".to_vec()), 422);
    assert_eq!(e["param"], "file");
    assert!(e["message"].as_str().unwrap().contains("line 2"), "{e}");
    let e = error_of(s.upload("x.bin", b"\x00\x00\x08\x03\x00\x00\x00\x05".to_vec()), 422);
    assert!(e["message"].as_str().unwrap().contains("IDX") || e["message"].as_str().unwrap().contains("truncated"), "{e}");
    // A dataset that does not fit the task is refused at job creation, naming the file and line.
    let f = s.upload_ok("three.jsonl", b"{\"input\": [1, 2, 3], \"label\": 0}\n{\"input\": [1, 2, 3], \"label\": 1}\n".to_vec());
    let e = error_of(s.post("/v1/fine_tuning/jobs", &json!({"model": "tiny-gpt2", "task": task(), "training_file": f})), 422);
    assert_eq!(e["param"], "training_file");
    assert!(e["message"].as_str().unwrap().contains("line 1"), "{e}");
    // Predictions validate samples like records.
    let m = s.job(&id)["fine_tuned_model"].as_str().unwrap().to_string();
    let e = error_of(s.predict(&m, json!([[1, 0, 1, 0, 1, 0, 1, 0, 1, 0], [1, 0]])), 422);
    assert_eq!(e["param"], "inputs[1]");
    // Still serving.
    assert_eq!(s.get("/health").status(), 200);
}

#[test]
fn api_keys_guard_v1_but_not_health() {
    let s = Server::start(&["--api-key", "sekret"]);
    assert_eq!(s.get("/v1/files").status(), 200);
    error_of(s.client.get(format!("{}/v1/files", s.url)).send().unwrap(), 401);
    error_of(s.client.get(format!("{}/v1/files", s.url)).bearer_auth("wrong").send().unwrap(), 401);
    assert_eq!(s.client.get(format!("{}/health", s.url)).send().unwrap().status(), 200);
}

#[test]
fn a_non_loopback_bind_without_keys_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fpt")).args(["serve", "--bind", "0.0.0.0:0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without API keys"));
}

#[test]
fn the_same_idempotency_key_creates_one_job() {
    let s = Server::start(&["--no-workers"]);
    let body = json!({"model": "tiny-gpt2", "task": {"type": "bit_xor"}});
    let send = || {
        s.client
            .post(format!("{}/v1/fine_tuning/jobs", s.url))
            .header("Idempotency-Key", "abc-1")
            .json(&body)
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()
    };
    let (a, b) = (send(), send());
    assert_eq!(a["id"], b["id"]);
    assert_eq!(s.get_json("/v1/fine_tuning/jobs")["data"].as_array().unwrap().len(), 1);
}

#[test]
fn a_replayed_upload_answers_the_first_file_after_reading_the_whole_body() {
    let s = Server::start(&["--no-workers"]);
    // Big enough that the client is still sending when a replay could be answered.
    let data = sign_dataset(20_000, 7);
    let send = || {
        let form = reqwest::blocking::multipart::Form::new()
            .text("purpose", "fine-tune")
            .part("file", reqwest::blocking::multipart::Part::bytes(data.clone()).file_name("big.jsonl"));
        let r = s.client.post(format!("{}/v1/files", s.url)).header("Idempotency-Key", "upload-1").multipart(form).send().unwrap();
        (r.headers().get("idempotent-replayed").is_some(), r.json::<Value>().unwrap())
    };
    let (first, second, third) = (send(), send(), send());
    assert!(!first.0 && second.0 && third.0);
    assert_eq!(first.1["id"], second.1["id"]);
    assert_eq!(first.1["id"], third.1["id"]);
    assert_eq!(s.get_json("/v1/files")["data"].as_array().unwrap().len(), 1);
}

#[test]
fn too_many_concurrent_requests_get_429_with_retry_after() {
    let s = Server::start(&["--max-concurrency", "1"]);
    // Hold the only slot with an upload whose body never finishes arriving.
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        slow,
        "POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
    )
    .unwrap();
    slow.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let r = s.get("/v1/files");
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    drop(slow);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.get("/v1/files").status(), 200, "recovers once load drops");
    assert_eq!(s.get("/health").status(), 200);
}

#[test]
fn every_route_is_in_the_openapi_spec_and_back() {
    let spec = fpt::api::ops::openapi_json();
    let mut in_spec: Vec<(String, String)> = Vec::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for m in ops.as_object().unwrap().keys().filter(|m| ["get", "post", "delete", "put", "patch"].contains(&m.as_str())) {
            in_spec.push((m.to_uppercase(), path.clone()));
        }
    }
    let mut served: Vec<(String, String)> =
        fpt::api::routes().iter().flat_map(|r| r.methods.iter().map(|m| (m.to_string(), r.path.to_string()))).collect();
    in_spec.sort();
    served.sort();
    assert_eq!(served, in_spec);
    // The served spec is the file's content.
    let s = Server::start(&["--no-workers"]);
    assert_eq!(s.get_json("/openapi.json"), spec);
    // The docs page shows each operation's parameters and bodies, and every schema's fields.
    let docs = s.get("/docs").text().unwrap();
    assert!(docs.contains("/v1/fine_tuning/jobs"));
    assert!(docs.contains("id=\"schema-FineTuningJob\"") && docs.contains("<code>organization_id</code> (required)"), "the job schema");
    assert!(docs.contains("<code>metadata</code>") && docs.contains("<a href=\"#schema-JobCreateRequest\">"), "parameters and bodies");
}

#[test]
fn the_spec_request_examples_parse_as_requests() {
    let spec = fpt::api::ops::openapi_json();
    let body = |path: &str| spec["paths"][path]["post"]["requestBody"]["content"]["application/json"].clone();
    let job = body("/v1/fine_tuning/jobs");
    let example = job
        .get("example")
        .cloned()
        .or_else(|| job["examples"].as_object().and_then(|e| e.values().next()).map(|e| e["value"].clone()))
        .unwrap();
    let parsed: Result<fpt::api::jobs::CreateJob, _> = serde_json::from_value(example.clone());
    assert!(parsed.is_ok(), "{example}: {:?}", parsed.err());
    let pred = body("/v1/predictions");
    let example = pred
        .get("example")
        .cloned()
        .or_else(|| pred["examples"].as_object().and_then(|e| e.values().next()).map(|e| e["value"].clone()))
        .unwrap();
    assert!(serde_json::from_value::<fpt::api::predictions::PredictRequest>(example).is_ok());
}

#[test]
fn metrics_are_prometheus_text() {
    let s = Server::start(&["--no-workers"]);
    s.get("/health");
    let text = s.get("/metrics").text().unwrap();
    for name in [
        "fpt_http_requests_total",
        "fpt_jobs_queued",
        "fpt_jobs_running",
        "fpt_training_samples_per_second",
        "fpt_predictions_batches_total",
        "fpt_adapter_evictions_total",
    ] {
        assert!(text.contains(&format!("# TYPE {name}")), "{name} missing");
    }
    // Every value is a plain number: no negative zero from an empty sum.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("{line}"));
        assert!(!line.ends_with("-0") && (value >= 0.0 || value == -1.0), "{line}");
    }
    assert_eq!(s.get("/ready").status(), 200);
}

/// Each of these aborted the server, burnt a core, or answered 500 before sizes were bounded at the
/// parse (a 40 TB validation split, a 1e8-sample generation, capacity overflows, a worker crash in
/// C++): now each is a 422 naming the field and the bound, and the server stays small and up.
#[test]
fn every_size_a_job_asks_for_is_bounded_at_the_parse() {
    let s = Server::start(&["--max-body-mb", "1"]);
    let xor = |extra: Value| {
        let mut t = json!({"type": "bit_xor"});
        for (k, v) in extra.as_object().unwrap() {
            t[k] = v.clone();
        }
        json!({"model": "tiny-gpt2", "task": t})
    };
    let cases = [
        (xor(json!({"n_bits": 5, "n_valid": 1_000_000_000_000u64})), "task.n_valid", "200000"),
        (xor(json!({"n_bits": 1u64 << 63})), "task.n_bits", "16384"),
        (json!({"model": "tiny-gpt2", "task": {"type": "listops", "generate": true, "n_train": 100_000_000}}), "task.n_train", "200000"),
        (json!({"model": "tiny-gpt2", "task": {"type": "listops", "generate": true, "max_len": 0}}), "task.max_len", "3..="),
        (
            json!({"model": "tiny-gpt2", "task": {"type": "image_classification", "height": 8, "width": 8, "channels": 1u64 << 61, "num_classes": 2}, "training_file": "file-x"}),
            "task.channels",
            "64",
        ),
        (
            json!({"model": "tiny-gpt2", "task": {"type": "sequence_classification", "input_dim": 2, "num_classes": 1u64 << 40}, "training_file": "file-x"}),
            "task.num_classes",
            "65536",
        ),
        (
            json!({"model": "tiny-gpt2", "task": {"type": "bit_xor"}, "hyperparameters": {"n_steps": u64::MAX}}),
            "hyperparameters.n_steps",
            "10000000",
        ),
        (
            json!({"model": "tiny-gpt2", "task": {"type": "bit_xor"}, "hyperparameters": {"n_steps": 20_000, "checkpoint_every": 1}}),
            "hyperparameters.checkpoint_every",
            "10000 checkpoints",
        ),
        (json!({"model": "tiny-gpt2", "task": {"type": "bit_xor"}, "metadata": {"k": "v".repeat(513)}}), "metadata.k", "512"),
    ];
    for (body, param, bound) in cases {
        let e = error_of(s.post("/v1/fine_tuning/jobs", &body), 422);
        assert_eq!(e["param"], param, "{body}: {e}");
        assert!(e["message"].as_str().unwrap().contains(bound), "{param}: the bound `{bound}` is named in {e}");
    }
    // A prediction body over the limit names the limit (it said "limit 0 bytes").
    let big = json!({"model": "x", "inputs": vec![vec![0.5f32; 1000]; 300]});
    let e = error_of(s.post("/v1/predictions", &big), 413);
    assert!(e["message"].as_str().unwrap().contains(&(1usize << 20).to_string()), "{e}");
    assert_eq!(s.get("/health").status(), 200);
    let rss = common::peak_rss_mib(s.child.id());
    assert!(rss < 1024.0, "the server's peak RSS was {rss:.0} MiB: something was allocated before its size was checked");
}

#[test]
fn a_generated_task_trains_on_files_a_client_can_download_and_train_on_again() {
    let s = Server::start(&[]);
    // Bit tasks draw every batch afresh: the file says how, and shows step 0's first samples.
    let id = s.create_job(json!({"model": "tiny-gpt2", "task": {"type": "bit_xor", "n_bits": 3}, "seed": 5,
        "hyperparameters": {"n_steps": 4, "batch_size": 6}}));
    let j = s.job(&id);
    let f = j["training_file"].as_str().expect("a generated task's job names a training file");
    let file = s.get_json(&format!("/v1/files/{f}"));
    assert_eq!(
        (file["purpose"].as_str(), file["format"].as_str(), file["samples"].as_i64()),
        (Some("fine-tune"), Some("generator_json"), Some(24))
    );
    let doc: Value = s.get(&format!("/v1/files/{f}/content")).json().unwrap();
    assert_eq!((doc["seed"].as_u64(), doc["n_steps"].as_u64()), (Some(5), Some(4)));
    for sample in doc["first_samples_of_step_0"].as_array().unwrap() {
        let x: Vec<i64> = sample["input"].as_array().unwrap().iter().map(|t| t[0].as_f64().unwrap() as i64).collect();
        let y: Vec<i64> = sample["target"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(y, (0..3).map(|k| x[k] ^ x[k + 3]).collect::<Vec<_>>(), "{sample}");
    }
    // Generated ListOps is a finite dataset: its two splits, downloaded and uploaded again,
    // train to the very same result as the generated run.
    let listops = json!({"type": "listops", "generate": true, "n_train": 24, "n_valid": 8, "max_len": 40, "max_depth": 3});
    let h = json!({"n_steps": 6, "batch_size": 4, "eval_every": 3, "log_every": 3});
    let generated = s.create_job(json!({"model": "tiny-gpt2", "task": listops, "seed": 9, "hyperparameters": h}));
    let g = s.wait_finished(&generated);
    assert_eq!(g["status"], "succeeded", "{g}");
    let content = |key: &str| s.get(&format!("/v1/files/{}/content", g[key].as_str().unwrap())).bytes().unwrap().to_vec();
    let (train, valid) = (content("training_file"), content("validation_file"));
    assert_eq!(String::from_utf8_lossy(&train).lines().count(), 25, "a header and 24 rows");
    let mut again = listops.clone();
    again["generate"] = json!(false);
    let replay = s.create_job(json!({"model": "tiny-gpt2", "task": again, "seed": 9, "hyperparameters": h,
        "training_file": s.upload_ok("train.tsv", train), "validation_file": s.upload_ok("valid.tsv", valid)}));
    let r = s.wait_finished(&replay);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["result"]["valid_accuracy"], g["result"]["valid_accuracy"]);
    assert_eq!(r["result"]["train_loss"], g["result"]["train_loss"]);
}

#[test]
fn a_diverging_run_fails_as_diverged_and_a_normal_one_does_not() {
    let s = Server::start(&[]);
    let job = |lr: f64| {
        s.create_job(json!({"model": "tiny-gpt2", "task": {"type": "bit_xor", "n_bits": 5},
            "hyperparameters": {"n_steps": 300, "eval_every": 20, "learning_rate": lr}}))
    };
    let (wild, calm) = (job(9.9), job(1e-3));
    let w = s.wait_finished(&wild);
    assert_eq!((w["status"].as_str(), w["error"]["code"].as_str()), (Some("failed"), Some("diverged")), "{w}");
    let message = w["error"]["message"].as_str().unwrap();
    assert!(message.contains("diverged at step") && message.contains("lower learning rate"), "{message}");
    assert!(w["fine_tuned_model"].is_null(), "no model from a diverged run");
    let c = s.wait_finished(&calm);
    assert_eq!(c["status"], "succeeded", "{c}");
}

#[test]
fn bit_xor_on_an_auto_budget_stops_within_twice_the_step_that_first_solved_it() {
    // The real pretrained backbone (`make setup` puts it in ./models), beside the tiny ones.
    let minilm = common::root().join("models/all-MiniLM-L6-v2");
    assert!(minilm.join("model.safetensors").exists(), "{} missing: run `make setup`", minilm.display());
    let link = common::tiny_models().join("all-MiniLM-L6-v2");
    if !link.exists() {
        std::os::unix::fs::symlink(&minilm, &link).unwrap();
    }
    let s = Server::start(&[]);
    let id = s.create_job(json!({"model": "all-MiniLM-L6-v2", "task": {"type": "bit_xor", "n_bits": 5, "n_valid": 200},
        "hyperparameters": {"n_steps": "auto", "eval_every": 20}}));
    let j = s.job(&id);
    assert_eq!(
        (j["hyperparameters"]["n_steps"].as_u64(), j["hyperparameters"]["stop_on_plateau"].as_bool()),
        (Some(2000), Some(true)),
        "{j}"
    );
    assert_eq!(j["inferred"]["hyperparameters"], json!(["n_steps"]));
    let j = s.wait_finished(&id);
    assert_eq!(j["status"], "succeeded", "{j}");
    let solved = s
        .events(&id)
        .iter()
        .filter(|e| e["type"] == "metrics" && e["data"]["valid_accuracy"].as_f64() == Some(1.0))
        .map(|e| e["data"]["step"].as_u64().unwrap())
        .min()
        .expect("XOR solved within the budget");
    let steps = j["trained_steps"].as_u64().unwrap();
    assert!(j["result"]["early_stopped"] == true && steps <= 2 * solved, "stopped at {steps}, first solved at {solved}");
}

/// `learning_rate_multiplier: "auto"` (OpenAI's form): the job answers `"auto"` until its search
/// has chosen, shows each trial in its events, records the choice in its result and hyperparameters,
/// and comes to the same result when paused mid-search and resumed.
#[test]
fn a_searched_learning_rate_shows_its_trials_and_survives_a_pause() {
    let s = Server::start(&[]);
    let task = json!({"type": "bit_xor", "n_bits": 3, "n_valid": 32});
    let body = json!({"model": "tiny-gpt2", "task": task, "seed": 2,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": "auto"}}}});
    let fpt = json!({"model": "tiny-gpt2", "task": task, "seed": 2,
        "hyperparameters": {"learning_rate": "auto", "n_steps": 200, "eval_every": 10, "checkpoint_every": 5}});
    // OpenAI's form is accepted and searched too.
    let openai = s.create_job(body);
    assert_eq!(s.job(&openai)["hyperparameters"]["learning_rate_multiplier"], "auto");
    assert_eq!(s.job(&openai)["inferred"]["hyperparameters"], json!(["learning_rate_multiplier"]));

    let whole = s.create_job(fpt.clone());
    assert_eq!(s.job(&whole)["hyperparameters"]["learning_rate"], "auto");
    let j = s.wait_finished(&whole);
    assert_eq!(j["status"], "succeeded", "{j}");
    let search = &j["result"]["learning_rate_search"];
    let chosen = search["chosen"].as_f64().expect("a chosen rate");
    assert_eq!(j["hyperparameters"]["learning_rate"].as_f64(), Some(chosen), "{j}");
    assert_eq!(j["result"]["lr"].as_f64(), Some(chosen));
    let trials: std::collections::BTreeSet<u64> =
        s.events(&whole).iter().filter(|e| e["type"] == "metrics").filter_map(|e| e["data"]["trial"].as_u64()).collect();
    assert_eq!(trials, (0..5).collect(), "every trial reports");
    assert!(s.events(&whole).iter().any(|e| e["message"].as_str().is_some_and(|m| m.starts_with("learning-rate search, rung 2"))));

    // The same job, paused during the third trial and resumed, ends the same.
    let paused = s.create_job(fpt);
    let start = Instant::now();
    while !s.events(&paused).iter().any(|e| e["data"]["trial"] == 2) {
        assert!(start.elapsed() < Duration::from_secs(120), "no third trial");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.post_ok(&format!("/v1/fine_tuning/jobs/{paused}/pause"), &json!({}));
    s.wait_for(&paused, Duration::from_secs(60), |st| st == "paused" || st == "succeeded");
    s.post_ok(&format!("/v1/fine_tuning/jobs/{paused}/resume"), &json!({}));
    let p = s.wait_finished(&paused);
    assert_eq!(p["status"], "succeeded", "{p}");
    for k in ["learning_rate_search", "best_valid_accuracy", "valid_loss", "lr", "steps"] {
        assert_eq!(p["result"][k], j["result"][k], "{k}");
    }
    let trials: std::collections::BTreeSet<u64> =
        s.events(&paused).iter().filter(|e| e["type"] == "metrics").filter_map(|e| e["data"]["trial"].as_u64()).collect();
    assert_eq!(trials, (0..5).collect(), "the trials before the pause keep their reports");
}
