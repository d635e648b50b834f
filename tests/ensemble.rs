//! Ensembles (`fpt train --ensemble K`): K whole runs from their own seeds on one split, kept as one
//! adapter that answers the members' average; its test values are the ensemble's, and a job, which
//! trains one adapter, refuses one by name.
mod common;

use std::path::Path;
use std::process::Command;

use common::server::Server;
use serde_json::{json, Value};

/// A table of `n` rows: inputs a and b, `label` the sign of a - b, `level` linear in them.
fn table(n: usize, seed: u64) -> String {
    let mut uniform = common::uniform(seed);
    let mut t = "a,b,label,level\n".to_string();
    for _ in 0..n {
        let (a, b) = (uniform() * 2.0 - 1.0, uniform() * 2.0 - 1.0);
        t.push_str(&format!("{a},{b},{},{}\n", (a > b) as u8, 3.0 * a - b));
    }
    t
}

fn fpt(args: &[&str]) -> String {
    let models = common::tiny_models().display().to_string();
    let o = Command::new(common::fpt_bin()).args(args).args(["--models-dir", &models]).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn predictions(adapter: &Path, inputs: &Path) -> Vec<Value> {
    fpt(&["predict", "--adapter", adapter.to_str().unwrap(), "--input", inputs.to_str().unwrap()])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Member `m` of an ensemble file as an adapter of its own: its tensors under their own names, the
/// ensemble's metadata in the single adapter's format.
fn member(ensemble: &Path, m: usize, out: &Path) {
    let (tensors, mut meta) = fpt::model::weights::read_safetensors(ensemble, tch::Device::Cpu).unwrap();
    let prefixes: Vec<String> = (1..8).map(|i| format!("member{i}.")).collect();
    let own: Vec<(String, tch::Tensor)> = tensors
        .into_iter()
        .filter_map(|(name, t)| match prefixes.iter().position(|p| name.starts_with(p.as_str())) {
            Some(i) if i + 1 == m => Some((name[prefixes[i].len()..].to_string(), t)),
            None if m == 0 => Some((name, t)),
            _ => None,
        })
        .collect();
    meta.insert("format".into(), "fpt-adapter/2".into());
    meta.retain(|k, _| !k.starts_with("ensemble_"));
    fpt::model::weights::write_safetensors(out, &own, meta).unwrap();
}

/// Each of an ensemble's `k` members cut out into `dir` (as `member-<m>.safetensors`), predicting
/// `inputs` on its own.
fn predictions_alone(ensemble: &Path, k: usize, dir: &Path, inputs: &Path) -> Vec<Vec<Value>> {
    (0..k)
        .map(|m| {
            let path = dir.join(format!("member-{m}.safetensors"));
            member(ensemble, m, &path);
            predictions(&path, inputs)
        })
        .collect()
}

fn close(a: &Value, b: f64) -> bool {
    (a.as_f64().unwrap() - b).abs() < 1e-4
}

#[test]
fn an_ensemble_trains_its_members_and_answers_their_average() {
    let dir = common::tempdir();
    let d = dir.path();
    let (train, test, inputs) = (d.join("train.csv"), d.join("test.csv"), d.join("inputs.jsonl"));
    std::fs::write(&train, table(64, 1)).unwrap();
    std::fs::write(&test, table(40, 2)).unwrap();
    std::fs::write(&inputs, "[0.5, -0.5, 1.0]\n[-0.3, 0.2, 0.0]\n[0.1, 0.05, 0.25]\n").unwrap();
    let adapter = d.join("ens.safetensors");
    let args = |out: &Path, members: &str| -> Vec<String> {
        ["train", "--task", r#"{"type":"sequence_classification","input_dim":3}"#, "--model", "tiny-gpt2", "--steps", "30"]
            .into_iter()
            .map(String::from)
            .chain(["--eval-every", "10", "--batch-size", "8", "--refit", "--quiet", "--ensemble", members].map(String::from))
            .chain(["--train", train.to_str().unwrap(), "--test", test.to_str().unwrap(), "--out", out.to_str().unwrap()].map(String::from))
            .collect()
    };
    let run = |out: &Path, members: &str| -> Value {
        let a = args(out, members);
        serde_json::from_str(fpt(&a.iter().map(String::as_str).collect::<Vec<_>>()).trim()).unwrap()
    };
    let summary = run(&adapter, "3");
    let members = summary["ensemble"].as_array().unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(members.len(), 3, "{summary}");
    let seeds: Vec<u64> = members.iter().map(|m| m["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds[0], 0, "the first member is the run's own seed");
    assert!(seeds[1] != seeds[2] && !seeds[1..].contains(&1), "members draw seeds apart from the run's: {seeds:?}");
    let (_, meta) = fpt::model::weights::read_safetensors(&adapter, tch::Device::Cpu).unwrap();
    assert_eq!((meta["format"].as_str(), meta["ensemble_members"].as_str()), ("fpt-adapter/3", "3"));

    // Its answers are its members' average probabilities, each member predicting on its own.
    let answers = predictions(&adapter, &inputs);
    let alone = predictions_alone(&adapter, 3, d, &inputs);
    assert!(alone[0] != alone[1], "the members are different adapters");
    for (i, a) in answers.iter().enumerate() {
        for j in 0..2 {
            let mean = alone.iter().map(|p| p[i]["probabilities"][j].as_f64().unwrap()).sum::<f64>() / 3.0;
            assert!(close(&a["probabilities"][j], mean), "sample {i}, class {j}: {a} against the members' {alone:?}");
        }
    }

    // The summary's test values are the ensemble's, as `fpt eval` scores the adapter; each
    // member's own is listed.
    let eval: Value =
        serde_json::from_str(fpt(&["eval", "--adapter", adapter.to_str().unwrap(), "--data", test.to_str().unwrap()]).trim()).unwrap();
    assert!(close(&summary["test_accuracy"], eval["accuracy"].as_f64().unwrap()), "{summary} against {eval}");
    assert!(close(&summary["protocol"]["reported"], eval["accuracy"].as_f64().unwrap()), "{summary}");
    let alone_test: Vec<f64> = members.iter().map(|m| m["reported"].as_f64().unwrap()).collect();
    let eval_alone: Value = serde_json::from_str(
        fpt(&["eval", "--adapter", d.join("member-1.safetensors").to_str().unwrap(), "--data", test.to_str().unwrap()]).trim(),
    )
    .unwrap();
    assert!(close(&eval_alone["accuracy"], alone_test[1]), "member 2's own test accuracy: {eval_alone} against {alone_test:?}");

    // The same command again finds every member trained and makes the same ensemble.
    let again = run(&adapter, "3");
    assert_eq!(again["test_accuracy"], summary["test_accuracy"]);
    assert_eq!(again["ensemble"], summary["ensemble"]);
    assert_eq!(again["train_loss"], summary["train_loss"], "the members' summaries kept when they first finished");
    // One member is the run without an ensemble.
    let single = run(&d.join("one.safetensors"), "1");
    assert!(single.get("ensemble").is_none(), "{single}");
    assert!(close(&single["test_accuracy"], alone_test[0]), "{single} against {alone_test:?}");
}

#[test]
fn a_regression_ensemble_answers_its_members_mean() {
    let dir = common::tempdir();
    let d = dir.path();
    let (train, inputs, adapter) = (d.join("train.csv"), d.join("inputs.jsonl"), d.join("reg.safetensors"));
    std::fs::write(&train, table(48, 3)).unwrap();
    std::fs::write(&inputs, "[0.5, -0.5, 1]\n[-0.3, 0.2, 0]\n").unwrap();
    let task = r#"{"type":"regression","input_dim":3,"target_column":"level"}"#;
    let (t, out) = (train.to_str().unwrap(), adapter.to_str().unwrap());
    fpt(&[
        "train",
        "--task",
        task,
        "--model",
        "tiny-gpt2",
        "--steps",
        "20",
        "--eval-every",
        "10",
        "--quiet",
        "--ensemble",
        "2",
        "--train",
        t,
        "--out",
        out,
    ]);
    let answers = predictions(&adapter, &inputs);
    let alone = predictions_alone(&adapter, 2, d, &inputs);
    for (i, a) in answers.iter().enumerate() {
        let mean = (alone[0][i]["value"].as_f64().unwrap() + alone[1][i]["value"].as_f64().unwrap()) / 2.0;
        assert!(close(&a["value"], mean), "sample {i}: {a} against {alone:?}");
    }
}

/// A job trains an ensemble as the command line does, serves it as one model answering its
/// members' average, and comes to the same result when paused while a later member trains.
#[test]
fn a_job_trains_an_ensemble_serves_it_and_survives_a_pause() {
    let s = Server::start(&[]);
    let file = s.upload_ok("train.csv", table(64, 4).into_bytes());
    let body = json!({"model": "tiny-gpt2", "training_file": file, "task": {"type": "sequence_classification", "input_dim": 3},
        "hyperparameters": {"ensemble": 3, "n_steps": 200, "eval_every": 20, "checkpoint_every": 10, "batch_size": 8}});
    let whole = s.create_job(body.clone());
    let j = s.wait_finished(&whole);
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(j["hyperparameters"]["ensemble"], 3, "{j}");
    let members = j["result"]["ensemble"].as_array().unwrap_or_else(|| panic!("{j}"));
    assert_eq!(members.len(), 3, "{j}");
    let events = s.events(&whole);
    let reported: std::collections::BTreeSet<u64> =
        events.iter().filter(|e| e["type"] == "metrics").filter_map(|e| e["data"]["member"].as_u64()).collect();
    assert_eq!(reported, [1, 2].into(), "the later members report, marked");
    assert!(events.iter().any(|e| e["message"].as_str().unwrap().starts_with("ensemble member 3 of 3 (seed ")), "each member is announced");
    // The job's steps and checkpoints are its first member's.
    assert_eq!(s.metric_steps(&whole).iter().filter(|&&st| st == 200).count(), 3, "each member reports its step 200");
    let ckpts = s.get_json(&format!("/v1/fine_tuning/jobs/{whole}/checkpoints"));
    assert!(ckpts["data"].as_array().unwrap().iter().all(|c| c["step_number"].as_u64().unwrap() <= 200), "{ckpts}");

    // Served as one model: its answers are its members' average, each member predicting alone.
    let model = j["fine_tuned_model"].as_str().unwrap();
    let inputs = json!([[0.5, -0.5, 1.0], [-0.3, 0.2, 0.0]]);
    let served: Value = s.predict(model, inputs.clone()).json().unwrap();
    let dir = common::tempdir();
    let adapter = dir.path().join("job.safetensors");
    std::fs::write(&adapter, s.get(&format!("/v1/models/{model}/adapter")).bytes().unwrap()).unwrap();
    let lines = dir.path().join("inputs.jsonl");
    std::fs::write(&lines, inputs.as_array().unwrap().iter().map(|i| format!("{i}\n")).collect::<String>()).unwrap();
    let alone = predictions_alone(&adapter, 3, dir.path(), &lines);
    for i in 0..2 {
        for c in 0..2 {
            let mean = alone.iter().map(|p| p[i]["probabilities"][c].as_f64().unwrap()).sum::<f64>() / 3.0;
            assert!(close(&served["data"][i]["probabilities"][c], mean), "sample {i}: {served} against {alone:?}");
        }
    }

    // Paused while its third member trains, and resumed, it ends as the uninterrupted job did.
    let paused = s.create_job(body);
    let start = std::time::Instant::now();
    while !s.events(&paused).iter().any(|e| e["data"]["member"] == 2) {
        assert!(start.elapsed() < std::time::Duration::from_secs(120), "no third member");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    s.post_ok(&format!("/v1/fine_tuning/jobs/{paused}/pause"), &json!({}));
    let st = s.wait_for(&paused, std::time::Duration::from_secs(60), |st| st == "paused" || st == "succeeded");
    assert_eq!(st["status"], "paused", "the pause came while the third member trained");
    s.post_ok(&format!("/v1/fine_tuning/jobs/{paused}/resume"), &json!({}));
    let p = s.wait_finished(&paused);
    assert_eq!(p["status"], "succeeded", "{p}");
    let resumed = s
        .events(&paused)
        .iter()
        .filter_map(|e| e["message"].as_str().map(String::from))
        .find(|m| m.starts_with("ensemble member 3: resumed"));
    assert!(resumed.is_some(), "the third member resumed from its own checkpoint in the store");
    for k in ["ensemble", "best_valid_accuracy", "valid_loss", "train_loss", "train_accuracy", "steps", "confusion"] {
        assert_eq!(p["result"][k], j["result"][k], "{k}");
    }
}

/// A worker killed (SIGKILL) while an ensemble's third member trains: the next worker resumes that
/// member from its checkpoint in the store, and the job ends as an uninterrupted one did.
#[test]
fn an_ensemble_job_survives_a_killed_worker() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let lease = ["--lease-secs", "2"];
    let s = Server::start_on(&data, &["--no-workers", "--lease-secs", "2"]);
    let mut worker = common::server::start_worker(&data, &lease);
    let file = s.upload_ok("train.csv", table(64, 5).into_bytes());
    let body = json!({"model": "tiny-gpt2", "training_file": file, "task": {"type": "sequence_classification", "input_dim": 3},
        "hyperparameters": {"ensemble": 3, "n_steps": 300, "eval_every": 20, "checkpoint_every": 10, "batch_size": 8}});
    let whole = s.create_job(body.clone());
    let j = s.wait_finished(&whole);
    assert_eq!(j["status"], "succeeded", "{j}");

    let killed = s.create_job(body);
    let start = std::time::Instant::now();
    while !s.events(&killed).iter().any(|e| e["data"]["member"] == 2 && e["data"]["step"].as_u64() > Some(20)) {
        assert!(start.elapsed() < std::time::Duration::from_secs(120), "no third member");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_ne!(s.job(&killed)["status"], "succeeded", "killed before the end");
    let mut worker = common::server::start_worker(&data, &lease);
    let k = s.wait_finished(&killed);
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_eq!(k["status"], "succeeded", "{k}");
    let messages: Vec<String> = s.events(&killed).iter().filter_map(|e| e["message"].as_str().map(String::from)).collect();
    assert!(messages.iter().any(|m| m.starts_with("ensemble member 3: resumed")), "the third member resumed: {messages:?}");
    for key in ["ensemble", "best_valid_accuracy", "valid_loss", "train_loss", "train_accuracy", "steps", "confusion"] {
        assert_eq!(k["result"][key], j["result"][key], "{key}");
    }
}

/// A random-init ensemble's members share the run's random backbone, which its adapter is loaded
/// on: each member, cut out, scores on its own what the run said it did.
#[test]
fn a_random_init_ensemble_is_scored_on_the_backbone_it_trained_on() {
    let dir = common::tempdir();
    let d = dir.path();
    let (train, test, adapter) = (d.join("train.csv"), d.join("test.csv"), d.join("random.safetensors"));
    std::fs::write(&train, table(64, 6)).unwrap();
    std::fs::write(&test, table(80, 7)).unwrap();
    let (t, e, out) = (train.to_str().unwrap(), test.to_str().unwrap(), adapter.to_str().unwrap());
    let task = r#"{"type":"sequence_classification","input_dim":3}"#;
    let args = ["train", "--task", task, "--model", "tiny-gpt2", "--no-pretrained", "--steps", "30", "--eval-every", "10", "--quiet"];
    let more = ["--ensemble", "3", "--train", t, "--test", e, "--out", out];
    let summary: Value = serde_json::from_str(fpt(&[&args[..], &more[..]].concat()).trim()).unwrap();
    let eval =
        |path: &Path| -> Value { serde_json::from_str(fpt(&["eval", "--adapter", path.to_str().unwrap(), "--data", e]).trim()).unwrap() };
    assert!(close(&summary["test_accuracy"], eval(&adapter)["accuracy"].as_f64().unwrap()), "{summary}");
    for (m, reported) in summary["ensemble"].as_array().unwrap().iter().enumerate() {
        let path = d.join(format!("member-{m}.safetensors"));
        member(&adapter, m, &path);
        let alone = eval(&path);
        assert!(close(&reported["reported"], alone["accuracy"].as_f64().unwrap()), "member {m}: {alone} against {summary}");
    }
}
