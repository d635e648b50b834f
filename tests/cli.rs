//! The `fpt` command line in the forms the project's checks call: train, eval, predict, sweep,
//! resume after a kill, and base models that cannot be found offline.
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs `fpt` with the tiny test models (and fp32, so results do not depend on the CPU).
fn fpt(args: &[&str]) -> std::process::Output {
    let models = common::tiny_models();
    Command::new(env!("CARGO_BIN_EXE_fpt"))
        .args(args)
        .args(["--models-dir", models.to_str().unwrap(), "--precision", "fp32"])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

fn last_json(out: &std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{}", text, String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(text.lines().rev().find(|l| l.starts_with('{')).unwrap()).unwrap()
}

#[test]
fn train_eval_predict_and_sweep() {
    let dir = common::tempdir();
    let adapter = dir.path().join("xor.safetensors");
    let task = r#"{"type":"bit_xor","n_bits":3,"n_valid":64}"#;
    let s = last_json(&fpt(&[
        "train",
        "--model",
        "tiny-gpt2",
        "--task",
        task,
        "--steps",
        "30",
        "--eval-every",
        "10",
        "--out",
        adapter.to_str().unwrap(),
        "--quiet",
    ]));
    for k in ["steps", "train_loss", "valid_accuracy", "samples_per_second", "wall_seconds", "trainable_parameters"] {
        assert!(!s[k].is_null(), "summary lacks {k}: {s}");
    }
    assert_eq!(s["steps"], 30);
    let e = last_json(&fpt(&["eval", "--adapter", adapter.to_str().unwrap()]));
    assert_eq!(e["samples"], 64);
    assert!(e["accuracy"].as_f64().unwrap() >= 0.0 && e["loss"].is_number());
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"input\": [1, 0, 1, 0, 0, 1]}\n[0, 0, 0, 1, 1, 1]\n").unwrap();
    let out = fpt(&["predict", "--adapter", adapter.to_str().unwrap(), "--input", input.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["bits"].as_array().unwrap().len(), 3);
    // A bad record is named.
    std::fs::write(&input, "[1, 0]\n").unwrap();
    let out = fpt(&["predict", "--adapter", adapter.to_str().unwrap(), "--input", input.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in.jsonl line 1: "), "{}", String::from_utf8_lossy(&out.stderr));

    let sweep = fpt(&[
        "sweep",
        "--model",
        "tiny-gpt2",
        "--task",
        task,
        "--steps",
        "10",
        "--eval-every",
        "5",
        "--lr",
        "1e-3,3e-3",
        "--seeds",
        "0,1",
        "--out-dir",
        dir.path().join("sweep").to_str().unwrap(),
    ]);
    let best = last_json(&sweep);
    assert_eq!(best["runs"], 4);
    assert!([1e-3, 3e-3].contains(&best["best_lr"].as_f64().unwrap()));
}

#[test]
fn a_killed_run_resumes_to_the_same_metrics() {
    let dir = common::tempdir();
    let task = r#"{"type":"bit_xor","n_bits":3,"n_valid":64}"#;
    let args = |out: &str| {
        vec![
            "train".to_string(),
            "--model".into(),
            "tiny-gpt2".into(),
            "--task".into(),
            task.into(),
            "--steps".into(),
            "400".into(),
            "--eval-every".into(),
            "100".into(),
            "--checkpoint-every".into(),
            "50".into(),
            "--seed".into(),
            "3".into(),
            "--out".into(),
            out.into(),
            "--quiet".into(),
            "--models-dir".into(),
            common::tiny_models().display().to_string(),
            "--precision".into(),
            "fp32".into(),
            // Bit for bit needs one thread: the README says why.
            "--threads".into(),
            "1".into(),
        ]
    };
    let plain = dir.path().join("plain.safetensors");
    let full = last_json(&Command::new(env!("CARGO_BIN_EXE_fpt")).args(args(plain.to_str().unwrap())).output().unwrap());
    // Kill a second run once it has checkpointed, then run the same command again.
    let killed = dir.path().join("killed.safetensors");
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_fpt")).args(args(killed.to_str().unwrap())).stdout(std::process::Stdio::null()).spawn().unwrap();
    let latest = dir.path().join("killed.safetensors.ckpt/latest.json");
    let start = Instant::now();
    while !latest.exists() {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let step: Value = serde_json::from_str(&std::fs::read_to_string(&latest).unwrap()).unwrap();
    let resumed = last_json(&Command::new(env!("CARGO_BIN_EXE_fpt")).args(args(killed.to_str().unwrap())).output().unwrap());
    assert!(step["step"].as_u64().unwrap() < 400);
    for k in ["valid_accuracy", "valid_loss", "train_loss", "best_valid_accuracy", "steps"] {
        assert_eq!(resumed[k], full[k], "{k}");
    }
}

#[test]
fn a_hub_model_that_cannot_be_had_fails_at_once_with_directions() {
    let empty = common::tempdir();
    for offline in ["1", "0"] {
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_fpt"))
            .args(["train", "--model", "gpt2", "--task", "bit_xor", "--out", "/dev/null", "--models-dir", empty.path().to_str().unwrap()])
            .env("HF_HUB_OFFLINE", offline)
            .env("HF_HUB_CACHE", empty.path())
            // A closed local port stands in for a hub that cannot be reached.
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("config.json and model.safetensors") && err.contains("gpt2"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(15), "no hang");
    }
}

#[test]
fn bench_compares_ours_with_the_reference_in_one_table() {
    let out_dir = common::tempdir();
    let out = Command::new(env!("CARGO_BIN_EXE_fpt"))
        .args(["bench", "--cases", "tiny", "--precisions", "fp32", "--rounds", "2", "--steps", "10", "--out-dir"])
        .arg(out_dir.path())
        .arg("--python")
        .arg(common::python())
        .current_dir(common::root())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(table.lines().any(|l| l.starts_with("tiny") && l.contains("fp32")), "no tiny row in:\n{table}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(out_dir.path().join("bench.json")).unwrap()).unwrap();
    let row = &json["rows"][0];
    assert_eq!(json["rows"].as_array().unwrap().len(), 1);
    for side in ["ours_rounds", "ref_rounds"] {
        assert_eq!(row[side].as_array().map(Vec::len), Some(2), "{side}: two rounds each");
    }
    let best = row["ours_rounds"].as_array().unwrap().iter().map(|r| r["train_samples_per_s"].as_f64().unwrap()).fold(0.0, f64::max);
    assert_eq!(row["ours_train_sps"].as_f64(), Some(best), "the table keeps our best round");
    let ratio = row["train_ratio"].as_f64().unwrap();
    let want = best / row["ref_train_sps"].as_f64().unwrap();
    assert!(ratio.is_finite() && ratio > 0.0 && (ratio - want).abs() < 1e-9, "ratio {ratio}, want {want}");
    assert_eq!(json["peak_gflops"]["measured"].as_array().map(Vec::len), Some(2), "the peak before the case and at the end");
    assert!(row["ref_peak_rss_mb"].as_f64().unwrap() > 0.0 && row["ours_peak_rss_mb"].as_f64().unwrap() > 0.0);
}

/// The command line parses a run with the API's checks and bounds, and names the flag.
#[test]
fn a_bad_or_oversized_flag_is_named_before_anything_runs() {
    let dir = common::tempdir();
    let out = dir.path().join("x.safetensors");
    let cases: [(&[&str], &str); 4] = [
        (&["--steps", "0"], "--steps: "),
        (&["--steps", "18446744073709551615"], "--steps: must be within 1..=10000000"),
        (&["--task", r#"{"type":"bit_xor","n_valid":1000000000000}"#], "--task field `n_valid`: "),
        (&["--task", "mnist"], "--train: task `mnist` needs a training file"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["train", "--model", "tiny-gpt2", "--task", "bit_xor", "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let t = Instant::now();
        let o = fpt(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{extra:?}: {err}");
        assert!(t.elapsed() < Duration::from_secs(20), "{extra:?} ran before failing");
        assert!(!out.exists());
    }
}

const XOR: &str = r#"{"type":"bit_xor","n_bits":3,"n_valid":16}"#;

fn train_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--model", "tiny-gpt2", "--task", XOR, "--steps", "20", "--eval-every", "10", "--out", out, "--quiet"];
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_rerun_resumes_its_own_run_and_refuses_another_saying_what_differs() {
    let dir = common::tempdir();
    let out = dir.path().join("xor.safetensors");
    let out = out.to_str().unwrap();
    let first = last_json(&fpt(&train_args(out, &[])));
    let again = last_json(&fpt(&train_args(out, &[])));
    assert_eq!((again["steps"].clone(), again["valid_accuracy"].clone()), (first["steps"].clone(), first["valid_accuracy"].clone()));
    // Another learning rate is another run: refused, saying what differs and how to start afresh.
    let refused = fpt(&train_args(out, &["--lr", "0.01"]));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("--lr: 0.001 before, 0.01 now") && err.contains("--force"), "{err}");
    // A larger budget continues the same run.
    let longer = last_json(&fpt(&train_args(out, &["--steps", "30"])));
    assert_eq!(longer["steps"], 30, "{longer}");
    let fewer = fpt(&train_args(out, &["--steps", "10"]));
    assert!(
        !fewer.status.success() && String::from_utf8_lossy(&fewer.stderr).contains("step 30"),
        "{}",
        String::from_utf8_lossy(&fewer.stderr)
    );
    let forced = last_json(&fpt(&train_args(out, &["--lr", "0.01", "--force"])));
    assert_eq!((forced["lr"].as_f64(), forced["steps"].as_u64()), (Some(0.01), Some(20)), "{forced}");
}

#[test]
fn an_adapter_trained_on_a_folder_finds_it_again_and_says_what_is_missing() {
    let dir = common::tempdir();
    let base = dir.path().join("bases/my-base");
    std::fs::create_dir_all(&base).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(common::tiny_models().join("tiny-gpt2").join(f), base.join(f)).unwrap();
    }
    let adapter = dir.path().join("a.safetensors");
    let mut args = train_args(adapter.to_str().unwrap(), &[]);
    args[2] = base.to_str().unwrap();
    last_json(&fpt(&args));
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "[1, 0, 1, 0, 0, 1]\n").unwrap();
    let predict = |extra: &[&str]| {
        let mut a = vec!["predict", "--adapter", adapter.to_str().unwrap(), "--input", input.to_str().unwrap()];
        a.extend_from_slice(extra);
        fpt(&a)
    };
    let out = predict(&[]);
    assert!(out.status.success(), "no --model needed: {}", String::from_utf8_lossy(&out.stderr));
    // Moved away: the error names the name and the folder it looked for, and what to pass.
    let moved = dir.path().join("elsewhere");
    std::fs::rename(dir.path().join("bases"), &moved).unwrap();
    let out = predict(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("`my-base`") && err.contains(base.to_str().unwrap()) && err.contains("--model"), "{err}");
    let out = predict(&["--model", moved.join("my-base").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_argument_the_task_would_ignore_is_refused() {
    let dir = common::tempdir();
    let out = dir.path().join("xor.safetensors");
    let refused = fpt(&train_args(out.to_str().unwrap(), &["--train", "/no/such/file.jsonl"]));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("--train: task `bit_xor` generates its own data"), "{err}");
    let refused = fpt(&train_args(out.to_str().unwrap(), &["--epochs", "3"]));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("--epochs: task `bit_xor` draws its data afresh"), "{err}");
    last_json(&fpt(&train_args(out.to_str().unwrap(), &[])));
    let eval = fpt(&["eval", "--adapter", out.to_str().unwrap(), "--data", "/no/such/file.jsonl"]);
    let err = String::from_utf8_lossy(&eval.stderr);
    assert!(!eval.status.success() && err.contains("--data: task `bit_xor` generates"), "{err}");
}

#[test]
fn predict_into_a_reader_that_stops_early_exits_quietly_and_logs_carry_no_colour_when_redirected() {
    let dir = common::tempdir();
    let adapter = dir.path().join("xor.safetensors");
    last_json(&fpt(&train_args(adapter.to_str().unwrap(), &[])));
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "[1, 0, 1, 0, 0, 1]\n".repeat(20_000)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fpt"))
        .args(["predict", "--adapter", adapter.to_str().unwrap(), "--input", input.to_str().unwrap()])
        .args(["--models-dir", common::tiny_models().to_str().unwrap(), "--batch-size", "16"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -n 1`: one line read, then the pipe closed.
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut first).unwrap();
    assert!(first.starts_with('{'), "{first}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("Broken pipe") && !err.contains("panicked"), "{:?}: {err}", out.status);
    // The log of a redirected server is plain text.
    let mut serve = Command::new(env!("CARGO_BIN_EXE_fpt"))
        .args(["serve", "--bind", "127.0.0.1:0", "--no-workers", "--data-dir", dir.path().join("data").to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut warning = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(serve.stderr.take().unwrap()), &mut warning).unwrap();
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(warning.contains("no API keys") && !warning.contains('\u{1b}'), "{warning:?}");
}

#[test]
fn eval_of_a_classifier_shows_its_confusion_matrix() {
    let dir = common::tempdir();
    let data = dir.path().join("signs.jsonl");
    std::fs::write(&data, common::server::sign_dataset(60, 4)).unwrap();
    let adapter = dir.path().join("signs.safetensors");
    let (a, d) = (adapter.to_str().unwrap(), data.to_str().unwrap());
    last_json(&fpt(&[
        "train",
        "--model",
        "tiny-gpt2",
        "--task",
        common::server::SIGN_TASK,
        "--train",
        d,
        "--steps",
        "10",
        "--out",
        a,
        "--quiet",
    ]));
    let e = last_json(&fpt(&["eval", "--adapter", a, "--data", d]));
    let counts: Vec<Vec<u64>> = serde_json::from_value(e["confusion"]["matrix"].clone()).unwrap();
    assert_eq!((counts.len(), counts.iter().flatten().sum::<u64>()), (2, e["samples"].as_u64().unwrap()), "{e}");
    let right = (counts[0][0] + counts[1][1]) as f64 / e["samples"].as_f64().unwrap();
    assert!((right - e["accuracy"].as_f64().unwrap()).abs() < 1e-9, "{e}");
}

/// `--lr auto`: the search's five trials, its choice recorded in the summary, and the same result
/// whether or not the run was killed mid-search and run again (it resumes from its record and its
/// trials' checkpoints, and is a function of its seed).
#[test]
fn a_searched_learning_rate_is_recorded_and_survives_a_kill() {
    let dir = common::tempdir();
    let args = |out: &str| -> Vec<String> {
        let mut a: Vec<String> =
            train_args(out, &["--lr", "auto", "--checkpoint-every", "5", "--seed", "4"]).into_iter().map(String::from).collect();
        let steps = a.iter().position(|x| x == "--steps").unwrap();
        a[steps + 1] = "200".into();
        // Bit for bit needs one thread: the README says why.
        a.extend(["--models-dir".into(), common::tiny_models().display().to_string(), "--precision".into(), "fp32".into()]);
        a.extend(["--threads".into(), "1".into()]);
        a
    };
    let plain = dir.path().join("plain.safetensors");
    let full = last_json(&Command::new(env!("CARGO_BIN_EXE_fpt")).args(args(plain.to_str().unwrap())).output().unwrap());
    let search = &full["learning_rate_search"];
    let trials = search["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 5, "{search}");
    assert_eq!(search["rung_steps"], serde_json::json!([20, 50]));
    // All five reached the first rung, two the second; the choice is one of those two and is the run's rate.
    assert!(trials.iter().all(|t| !t["rungs"].as_array().unwrap().is_empty() || t["diverged"].is_string()), "{search}");
    let second: Vec<f64> =
        trials.iter().filter(|t| t["rungs"].as_array().unwrap().len() == 2).map(|t| t["learning_rate"].as_f64().unwrap()).collect();
    assert_eq!(second.len(), 2, "{search}");
    let chosen = search["chosen"].as_f64().unwrap();
    assert!(second.contains(&chosen) && full["lr"].as_f64() == Some(chosen), "{full}");
    assert_eq!(full["steps"], 200, "{full}");

    let killed = dir.path().join("killed.safetensors");
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_fpt")).args(args(killed.to_str().unwrap())).stdout(std::process::Stdio::null()).spawn().unwrap();
    let record = dir.path().join("killed.safetensors.ckpt/search/search.json");
    let start = Instant::now();
    while !record.exists() {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = last_json(&Command::new(env!("CARGO_BIN_EXE_fpt")).args(args(killed.to_str().unwrap())).output().unwrap());
    for k in ["learning_rate_search", "valid_accuracy", "valid_loss", "train_loss", "best_valid_accuracy", "steps", "lr"] {
        assert_eq!(resumed[k], full[k], "{k}");
    }
    // --force starts afresh, the search's folder with it.
    let forced =
        fpt(&[args(killed.to_str().unwrap()).iter().map(String::as_str).collect::<Vec<_>>().as_slice(), &["--force"]].concat()[..]);
    assert_eq!(last_json(&forced)["learning_rate_search"], full["learning_rate_search"]);
}

/// `--no-backbone`: the input layer, positions and head alone (no block's parameters), trained,
/// evaluated and predicted with like any adapter.
#[test]
fn a_run_without_a_backbone_trains_and_predicts() {
    let dir = common::tempdir();
    let out = dir.path().join("none.safetensors");
    let with = last_json(&fpt(&train_args(dir.path().join("with.safetensors").to_str().unwrap(), &[])));
    let without = last_json(&fpt(&train_args(out.to_str().unwrap(), &["--no-backbone"])));
    assert!(without["total_parameters"].as_i64().unwrap() < with["total_parameters"].as_i64().unwrap(), "{without} {with}");
    assert!(without["valid_accuracy"].is_number(), "{without}");
    let e = last_json(&fpt(&["eval", "--adapter", out.to_str().unwrap()]));
    assert_eq!(e["accuracy"], without["best_valid_accuracy"], "the kept adapter, rebuilt without blocks: {e}");
}

/// `--refit`: once the step is chosen on validation, the run trains again on the training and
/// validation samples together to that step, keeps that adapter and reports its test values (an
/// eval of the written adapter gives the summary's test accuracy); the same command again
/// resumes at its end to the same summary.
#[test]
fn a_refit_trains_on_the_validation_samples_too_and_keeps_that_adapter() {
    let dir = common::tempdir();
    let (train, test) = (dir.path().join("train.jsonl"), dir.path().join("test.jsonl"));
    std::fs::write(&train, common::server::sign_dataset(60, 4)).unwrap();
    std::fs::write(&test, common::server::sign_dataset(40, 9)).unwrap();
    let (t, q) = (train.to_str().unwrap(), test.to_str().unwrap());
    let run = |out: &str, extra: &[&str]| {
        let mut args = vec!["train", "--model", "tiny-gpt2", "--task", common::server::SIGN_TASK, "--train", t, "--test", q];
        args.extend(["--steps", "40", "--eval-every", "10", "--validation-fraction", "0.25", "--threads", "1", "--out", out, "--quiet"]);
        args.extend_from_slice(extra);
        last_json(&fpt(&args))
    };
    let plain_out = dir.path().join("plain.safetensors");
    let plain = run(plain_out.to_str().unwrap(), &[]);
    let refit_out = dir.path().join("refit.safetensors");
    let r = run(refit_out.to_str().unwrap(), &["--refit"]);
    let p = &r["protocol"];
    assert_eq!((p["train_samples"].as_u64(), p["valid_samples"].as_u64()), (Some(45), Some(15)), "{r}");
    assert_eq!(r["refit"]["train_samples"], 60, "{r}");
    assert_eq!(r["refit"]["step"], r["best_step"], "{r}");
    assert!(p["validation"].as_str().unwrap().contains("then refit on the training and validation samples together (60)"), "{r}");
    // The run itself is the plain run: the same validation values, the same chosen step.
    for k in ["best_valid_accuracy", "best_step", "valid_loss"] {
        assert_eq!(r[k], plain[k], "{k}");
    }
    assert_ne!(std::fs::read(&refit_out).unwrap(), std::fs::read(&plain_out).unwrap(), "the refit keeps its own adapter");
    let e = last_json(&fpt(&["eval", "--adapter", refit_out.to_str().unwrap(), "--data", q]));
    assert_eq!((e["accuracy"].as_f64(), p["reported"].as_f64()), (r["test_accuracy"].as_f64(), r["test_accuracy"].as_f64()), "{e}\n{r}");
    let again = run(refit_out.to_str().unwrap(), &["--refit"]);
    for k in ["test_accuracy", "test_loss", "protocol"] {
        assert_eq!(again[k], r[k], "{k}");
    }
    assert_eq!((&again["refit"]["step"], &again["refit"]["train_samples"]), (&r["refit"]["step"], &r["refit"]["train_samples"]));
}
