//! `fpt experiment`: a small grid on a tiny backbone writes its table, CSV, report and plots, and a
//! second run finds the finished runs and does not redo them; the same grid runs as jobs of a real
//! `fpt serve`; the specs in experiments/ all expand into runs whose arguments parse.
mod common;

use std::path::Path;
use std::process::Command;

use common::server::Server;

#[test]
fn a_grid_writes_its_results_and_resumes() {
    let dir = common::tempdir();
    let out = dir.path().join("out");
    let report = dir.path().join("report.md");
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        format!(
            r#"name = "tiny"
out_dir = "{out}"
report = "{report}"
preamble = "The paper's numbers would go here."
args = ["--model", "tiny-gpt2", "--models-dir", "{models}", "--precision", "fp32", "--batch-size", "8"]

[[group]]
name = "xor"
task = '{{"type":"bit_xor","n_bits":3,"n_valid":32}}'
args = ["--steps", "20", "--eval-every", "10"]
seeds = [0, 1]

[[group]]
name = "xor_unfreezing"
task = '{{"type":"bit_xor","n_bits":3,"n_valid":32}}'
args = ["--steps", "10", "--eval-every", "10"]
inits = ["pretrained"]
freeze = ["output_only", "+ln"]
"#,
            out = out.display(),
            report = report.display(),
            models = common::tiny_models().display()
        ),
    )
    .unwrap();
    let run = || Command::new(env!("CARGO_BIN_EXE_fpt")).args(["experiment", spec.to_str().unwrap()]).output().unwrap();
    let first = run();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let results: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results.len(), 6, "2 inits x 2 seeds + 2 freeze presets");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7);
    let md = std::fs::read_to_string(&report).unwrap();
    // Every run records the commit that ran it, and the report names it.
    let head = Command::new("git").args(["rev-parse", "--short", "HEAD"]).output().unwrap();
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    assert!(!head.is_empty() && results.iter().all(|r| r["commit"] == head.as_str()), "{head}");
    assert!(md.contains(&format!("at commit `{head}` on")), "{md}");
    assert!(
        md.contains("The paper's numbers would go here.")
            && md.contains("| xor | tiny-gpt2 | default | random |")
            && md.contains("| xor_unfreezing | tiny-gpt2 | output_only | pretrained |"),
        "{md}"
    );
    for plot in ["curve-xor.svg", "curve-xor_unfreezing.svg", "accuracy_vs_parameters.svg"] {
        assert!(std::fs::read_to_string(out.join(plot)).unwrap().contains("<svg"), "{plot}");
    }
    // The output-only preset trains fewer parameters than the default.
    let trained =
        |freeze: &str| results.iter().find(|r| r["freeze"] == freeze).unwrap()["summary"]["trainable_parameters"].as_i64().unwrap();
    assert!(trained("output_only") < trained("+ln") && trained("+ln") < trained("default"));
    // The chain takes no default from the xor group: its runs train for other steps.
    assert!(md.contains("lr 1e-3, best validation accuracy: output_only ") && md.contains("-> +input - -> default -\n"), "{md}");
    let second = run();
    assert!(second.status.success());
    assert_eq!(String::from_utf8_lossy(&second.stderr).matches("done before").count(), 6);

    // A group whose arguments changed runs again; the others stay done.
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        text.replace(r#"args = ["--steps", "10", "--eval-every", "10"]"#, r#"args = ["--steps", "20", "--eval-every", "10"]"#),
    )
    .unwrap();
    let third = run();
    assert!(third.status.success(), "{}", String::from_utf8_lossy(&third.stderr));
    assert_eq!(String::from_utf8_lossy(&third.stderr).matches("done before").count(), 4);
    let results: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let steps =
        |group: &str| results.iter().filter(|r| r["group"] == group).map(|r| r["summary"]["steps"].as_i64().unwrap()).collect::<Vec<_>>();
    assert_eq!(steps("xor_unfreezing"), [20, 20]);
    assert_eq!(steps("xor"), [20, 20, 20, 20]);
    // Now its runs differ from the xor group's only in their freeze flags: the chain ends on them.
    let xor_default: Vec<f64> = results
        .iter()
        .filter(|r| r["group"] == "xor" && r["init"] == "pretrained")
        .map(|r| r["summary"]["best_valid_accuracy"].as_f64().unwrap())
        .collect();
    let md = std::fs::read_to_string(&report).unwrap();
    let mean = 100.0 * xor_default.iter().sum::<f64>() / xor_default.len() as f64;
    let spread = 100.0 * (xor_default.iter().cloned().fold(f64::MIN, f64::max) - xor_default.iter().cloned().fold(f64::MAX, f64::min));
    assert!(md.contains(&format!("-> +input - -> default {mean:.1}% (2 seeds, spread {spread:.1} pts)\n")), "{md}");

    // Runs recorded without their arguments (results from before they were kept) run again.
    let stripped: Vec<serde_json::Value> = results
        .into_iter()
        .map(|mut r| {
            if r["group"] == "xor_unfreezing" {
                r.as_object_mut().unwrap().remove("args");
            }
            r
        })
        .collect();
    std::fs::write(out.join("results.json"), serde_json::to_string(&stripped).unwrap()).unwrap();
    let fourth = run();
    assert!(fourth.status.success(), "{}", String::from_utf8_lossy(&fourth.stderr));
    assert_eq!(String::from_utf8_lossy(&fourth.stderr).matches("done before").count(), 4);
}

/// A tiny MNIST-format pair: `n` 28x28 images whose label is the brightest quarter of the image.
fn write_idx_pair(dir: &Path, prefix: &str, n: usize, seed: u64) {
    let mut rng = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (rng >> 33) as u32
    };
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let label = (next() % 4) as u8;
        for r in 0..28 {
            for c in 0..28 {
                let quarter = (r / 14) * 2 + c / 14;
                images.push(if quarter == label as usize { 200 + (next() % 56) as u8 } else { (next() % 60) as u8 });
            }
        }
        labels.push(label);
    }
    let header =
        |magic: u32, dims: &[u32]| -> Vec<u8> { std::iter::once(magic).chain(dims.iter().copied()).flat_map(u32::to_be_bytes).collect() };
    let mut img = header(0x803, &[n as u32, 28, 28]);
    img.extend(images);
    let mut lab = header(0x801, &[n as u32]);
    lab.extend(labels);
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), img).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), lab).unwrap();
}

#[test]
fn a_grid_runs_as_jobs_of_the_service_and_reattaches_to_them() {
    let server = Server::start(&[]);
    let dir = common::tempdir();
    write_idx_pair(dir.path(), "train", 96, 1);
    write_idx_pair(dir.path(), "valid", 32, 2);
    let out = dir.path().join("out");
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        format!(
            r#"name = "via-service"
out_dir = "{out}"
args = ["--model", "tiny-gpt2", "--batch-size", "8", "--steps", "50"]

[[group]]
name = "digits"
task = '{{"type":"mnist","patch_size":7}}'
args = ["--train", "{train}", "--valid", "{valid}", "--steps", "6", "--eval-every", "3"]
seeds = [0, 1]
"#,
            out = out.display(),
            train = dir.path().join("train-images-idx3-ubyte").display(),
            valid = dir.path().join("valid-images-idx3-ubyte").display(),
        ),
    )
    .unwrap();
    let run =
        || Command::new(env!("CARGO_BIN_EXE_fpt")).args(["experiment", spec.to_str().unwrap(), "--server", &server.url]).output().unwrap();
    let first = run();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let results: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results.len(), 4, "2 inits x 2 seeds");
    let jobs = server.get_json("/v1/fine_tuning/jobs?limit=100");
    let jobs = jobs["data"].as_array().unwrap();
    assert_eq!(jobs.len(), 4, "one job per run");
    for r in &results {
        let job = server.job(r["summary"]["job"].as_str().unwrap());
        assert_eq!(job["status"], "succeeded");
        assert_eq!(job["metadata"]["experiment"], "via-service");
        // The group's --steps wins over the spec's.
        assert_eq!(job["hyperparameters"]["n_steps"], 6);
        assert_eq!(job["method"]["fpt"]["pretrained"], r["init"] == "pretrained");
        assert_eq!(job["seed"], r["seed"]);
        assert_eq!(r["summary"]["best_valid_accuracy"], job["result"]["best_valid_accuracy"]);
        assert!(r["summary"]["trainable_parameters"].as_i64().unwrap() > 0, "{r}");
        let steps: Vec<u64> = r["curve"].as_array().unwrap().iter().map(|c| c[0].as_u64().unwrap()).collect();
        assert_eq!(steps.last(), Some(&6), "the curve comes from the job's metrics events: {steps:?}");
        assert!(r["curve"].as_array().unwrap().iter().any(|c| c[2].is_number()), "validation points in the curve");
    }
    // The two data files were uploaded once each (the images travel in a tar with their labels);
    // the jobs' results files are the service's own.
    let files = server.get_json("/v1/files?purpose=fine-tune");
    let files = files["data"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().all(|f| f["format"] == "mnist_idx"), "{files:?}");

    // A restart that lost its results file finds the same jobs and files instead of adding new ones.
    std::fs::remove_file(out.join("results.json")).unwrap();
    let second = run();
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(server.get_json("/v1/fine_tuning/jobs?limit=100")["data"].as_array().unwrap().len(), 4);
    assert_eq!(server.get_json("/v1/files?purpose=fine-tune")["data"].as_array().unwrap().len(), 2);
    let again: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let ids = |v: &[serde_json::Value]| v.iter().map(|r| r["summary"]["job"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&results));

    // A changed spec is new work: its runs go to the service again, as new jobs.
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, text.replace(r#""--steps", "6""#, r#""--steps", "4""#)).unwrap();
    let third = run();
    assert!(third.status.success(), "{}", String::from_utf8_lossy(&third.stderr));
    assert_eq!(server.get_json("/v1/fine_tuning/jobs?limit=100")["data"].as_array().unwrap().len(), 8);
    let changed: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert!(changed.iter().all(|r| r["summary"]["steps"] == 4), "{changed:?}");
}

#[test]
fn the_specs_in_the_repo_expand_into_runs_whose_arguments_parse() {
    for spec in ["experiments/cpu-suite.toml", "experiments/paper-gpu.toml"] {
        let out =
            Command::new(env!("CARGO_BIN_EXE_fpt")).args(["experiment", spec, "--dry-run"]).current_dir(common::root()).output().unwrap();
        assert!(out.status.success(), "{spec}: {}", String::from_utf8_lossy(&out.stderr));
        let lines = String::from_utf8(out.stdout).unwrap();
        assert!(lines.lines().count() >= 10 && lines.lines().all(|l| l.starts_with("fpt train --task ")), "{spec}: {lines}");
    }
    let gpu = Command::new(env!("CARGO_BIN_EXE_fpt"))
        .args(["experiment", "experiments/paper-gpu.toml", "--dry-run"])
        .current_dir(common::root())
        .output()
        .unwrap();
    let gpu = String::from_utf8(gpu.stdout).unwrap();
    for backbone in ["--model gpt2 ", "--model gpt2-medium ", "--model gpt2-large "] {
        assert!(gpu.contains(backbone), "the full-size spec runs {backbone}");
    }
}

#[test]
fn shared_data_files_are_left_out_of_groups_that_generate_their_data_and_said_so() {
    let dir = common::tempdir();
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        r#"name = "mixed"
out_dir = "out"
args = ["--train", "signs.jsonl", "--steps", "3"]
[[group]]
name = "bits"
task = "bit_xor"
inits = ["pretrained"]
[[group]]
name = "signs"
task = "sequence_classification"
inits = ["pretrained"]
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fpt")).args(["experiment", spec.to_str().unwrap(), "--dry-run"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "# group `bits`: its task generates its data; the shared `--train signs.jsonl` is left out", "{text}");
    assert!(lines[1].starts_with("fpt train --task bit_xor --steps 3 "), "{text}");
    assert!(lines[2].starts_with("fpt train --task sequence_classification --train signs.jsonl --steps 3 "), "{text}");
    assert_eq!(lines.len(), 3, "{text}");
    // --only prints the runs of the groups it names, and refuses a group the spec lacks.
    let only = |group: &str| {
        Command::new(env!("CARGO_BIN_EXE_fpt")).args(["experiment", spec.to_str().unwrap(), "--dry-run", "--only", group]).output().unwrap()
    };
    let signs = String::from_utf8(only("signs").stdout).unwrap();
    assert_eq!(signs.lines().collect::<Vec<_>>(), &lines[2..], "{signs}");
    let unknown = only("nope");
    assert!(!unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("--only: the spec has no group `nope`"));
}

/// The baselines every table carries (random init, no backbone, the trivial predictor), a searched
/// learning rate against the fixed one with its wall-time ratio, and a diverged cell recorded as
/// such while the grid goes on.
#[test]
fn a_grid_carries_its_baselines_a_searched_rate_and_its_diverged_runs() {
    let dir = common::tempdir();
    let (out, report, spec) = (dir.path().join("out"), dir.path().join("report.md"), dir.path().join("spec.toml"));
    write_idx_pair(dir.path(), "train", 96, 1);
    write_idx_pair(dir.path(), "test", 48, 2);
    std::fs::write(
        &spec,
        format!(
            r#"name = "baselines"
out_dir = "{out}"
report = "{report}"
args = ["--model", "tiny-gpt2", "--models-dir", "{models}", "--precision", "fp32", "--batch-size", "8"]

[[group]]
name = "digits"
task = '{{"type":"mnist","patch_size":14}}'
args = ["--train", "{train}", "--test", "{test}", "--steps", "40", "--eval-every", "10"]
inits = ["pretrained", "random", "no_backbone"]
lrs = [1e-3, "auto"]
seeds = [0, 1]

[[group]]
name = "wild"
task = '{{"type":"bit_xor","n_bits":5}}'
args = ["--steps", "300", "--eval-every", "20"]
inits = ["pretrained"]
lrs = [9.9, 1e-3]
"#,
            out = out.display(),
            report = report.display(),
            models = common::tiny_models().display(),
            train = dir.path().join("train-images-idx3-ubyte").display(),
            test = dir.path().join("test-images-idx3-ubyte").display(),
        ),
    )
    .unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_fpt")).args(["experiment", spec.to_str().unwrap()]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let results: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results.len(), 14, "3 inits x 2 rates x 2 seeds, and 2 runs of the wild group");
    let wild = results.iter().find(|r| r["group"] == "wild" && r["lr"] == 9.9).unwrap();
    assert!(wild["summary"]["diverged"].as_str().is_some_and(|w| w.contains("diverged at step")), "{wild}");
    let auto: Vec<&serde_json::Value> = results.iter().filter(|r| r["lr"] == "auto").collect();
    assert_eq!(auto.len(), 6);
    assert!(auto.iter().all(|r| r["summary"]["learning_rate_search"]["chosen"].is_number()), "{auto:?}");
    let md = std::fs::read_to_string(&report).unwrap();
    for line in [
        "| digits | tiny-gpt2 | default | no_backbone | auto | 2 |",
        "| digits | - | - | trivial: the majority class | - | - | accuracy |",
        "- digits, lr 1e-3: pretrained test accuracy",
        "random init (",
        "no backbone (",
        "the majority class (",
        "- digits, learning rate `auto` (chose ",
        "x the wall time, ",
        "x the training samples.",
        "pretrained seed 0 diverged (the run diverged at step",
    ] {
        assert!(md.contains(line), "no `{line}` in\n{md}");
    }
    // Every run says which split its number is from; the checkpoint is chosen on validation carved
    // from the training file, and the test split is reported.
    let protocol = &results.iter().find(|r| r["group"] == "digits").unwrap()["summary"]["protocol"];
    assert_eq!(protocol["reported_split"], "test", "{protocol}");
    assert!(protocol["validation"].as_str().unwrap().contains("of the training file"), "{protocol}");
    assert_eq!(protocol["test_samples"], 48);
    // A report made elsewhere (--out-dir) goes there, its plots linked from there, and the spec's
    // report is left as it was.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::copy(out.join("results.json"), elsewhere.join("results.json")).unwrap();
    let again = Command::new(env!("CARGO_BIN_EXE_fpt"))
        .args(["experiment", spec.to_str().unwrap(), "--report-only", "--out-dir", elsewhere.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(std::fs::read_to_string(&report).unwrap(), md, "the spec's report is untouched");
    let there = std::fs::read_to_string(elsewhere.join("report.md")).unwrap();
    assert!(there.contains("![digits](curve-digits.svg)") && elsewhere.join("curve-digits.svg").exists(), "{there}");
}
