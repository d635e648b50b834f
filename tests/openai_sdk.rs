//! fpt as a drop-in for the official `openai` Python package: tests/openai_sdk.py drives a job's
//! whole life through it, with strict response validation and no retries, against the real server
//! on loopback (with an API key, as a deployment has).
mod common;

use common::server::Server;

#[test]
fn the_openai_sdk_runs_a_whole_job_with_strict_validation() {
    let key = "sk-test-openai-sdk";
    // The script's webhook endpoint listens on a port free now.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let hook = format!("http://127.0.0.1:{port}/hook");
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let s = Server::start(&["--api-key", key, "--webhook-url", &hook, "--webhook-secret", secret]);
    let out = common::run_python(&["tests/openai_sdk.py", &s.url, key, &port.to_string(), secret]);
    let summary: serde_json::Value = serde_json::from_str(out.lines().last().expect("the script's summary")).unwrap();
    assert!(summary["events"].as_u64().unwrap() > 3, "{summary}");
    assert!(summary["checkpoints"].as_u64().unwrap() >= 1, "{summary}");
    assert!(summary["webhooks"].as_u64().unwrap() >= 6, "five endings, one of them delivered twice: {summary}");
}

/// A request without a task gets the one its training file tells, recorded on the job; a file
/// that cannot tell is a 422 saying what to name.
#[test]
fn a_job_without_a_task_infers_it_from_its_training_file() {
    use serde_json::{json, Value};
    let s = Server::start(&[]);
    let lines = |f: &dyn Fn(usize) -> Value| (0..24).map(|i| f(i).to_string() + "\n").collect::<String>().into_bytes();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("classes.jsonl", lines(&|i| json!({"input": [i as f64, 1.0], "label": i % 3})), "sequence_classification"),
        ("targets.jsonl", lines(&|i| json!({"input": [i as f64, 1.0], "target": i as f64 / 2.0})), "regression"),
        ("labels.jsonl", lines(&|i| json!({"input": [i as f64, 1.0], "label": [i % 2, 1, 0]})), "multilabel_classification"),
        (
            "table.csv",
            (0..24).fold("a,b,label\n".to_string(), |t, i| t + &format!("{i},{},{}\n", i * 2, i % 2)).into_bytes(),
            "sequence_classification",
        ),
    ];
    for (name, bytes, task) in cases {
        let file = s.upload_ok(name, bytes);
        let job = s.post_ok(
            "/v1/fine_tuning/jobs",
            &json!({"model": "tiny-gpt2", "training_file": file, "hyperparameters": {"n_steps": 2, "batch_size": 4}}),
        );
        assert_eq!(job["task"]["type"], task, "{name}: {job}");
        assert_eq!(job["inferred"]["task"], true, "{name}");
        if task == "multilabel_classification" {
            assert_eq!(job["task"]["num_labels"], 3);
        }
        assert_eq!(s.wait_finished(job["id"].as_str().unwrap())["status"], "succeeded", "{name}");
    }
    // A job that names its task says nothing was inferred.
    let named =
        s.post_ok("/v1/fine_tuning/jobs", &json!({"model": "tiny-gpt2", "task": {"type": "bit_xor"}, "hyperparameters": {"n_steps": 1}}));
    assert_eq!(named["inferred"], json!({"task": false, "hyperparameters": []}));
    // What cannot be told is refused, naming the task.
    let series = s.upload_ok("series.jsonl", lines(&|i| json!({"series": [i as f64, 1.0, 2.0, 3.0, 4.0, 5.0]})));
    for body in [json!({"model": "tiny-gpt2", "training_file": series}), json!({"model": "tiny-gpt2"})] {
        let r = s.post("/v1/fine_tuning/jobs", &body);
        assert_eq!(r.status(), 422);
        let e: Value = r.json().unwrap();
        assert_eq!(e["error"]["param"], "task", "{e}");
    }
}
