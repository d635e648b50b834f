//! Helpers shared by the integration tests: the project's Python (transformers, the oracle),
//! golden fixtures made once per test binary, tiny base models.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's Python; `make setup` creates it. A missing venv fails the test loudly.
pub fn python() -> PathBuf {
    let p = std::env::var("FPT_PYTHON").map(PathBuf::from).unwrap_or_else(|_| root().join(".venv/bin/python"));
    assert!(p.exists(), "{} not found: run `make setup` first", p.display());
    p
}

pub fn run_python(args: &[&str]) -> String {
    let out = Command::new(python()).args(args).env("HF_HUB_OFFLINE", "1").current_dir(root()).output().expect("running python");
    assert!(
        out.status.success(),
        "python {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Golden fixtures (tiny GPT-2/BERT checkpoints and transformers' outputs), made once.
pub fn golden_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fpt-golden-{}", std::process::id()));
        run_python(&["tests/golden/make_golden.py", dir.to_str().unwrap(), "--minilm"]);
        dir
    })
}

#[derive(serde::Deserialize, Debug)]
pub struct GoldenEntry {
    pub name: String,
    pub arch: String,
    pub dir: String,
}

pub fn golden_index() -> Vec<GoldenEntry> {
    let text = std::fs::read_to_string(golden_dir().join("index.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A folder of base models for tests: tiny GPT-2/BERT from the fixtures plus the real MiniLM.
/// Made once per test binary: tests running in parallel must not see it half-built.
pub fn models_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let g = golden_dir();
        let dir = g.join("models");
        // A folder left by an earlier process with the same id would hold the same links.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for e in golden_index() {
            let src = if Path::new(&e.dir).is_absolute() { PathBuf::from(&e.dir) } else { g.join(&e.dir) };
            std::os::unix::fs::symlink(src, dir.join(&e.name)).unwrap();
        }
        dir
    })
    .clone()
}

/// Peak resident memory of a process (VmHWM), in MiB: a generous ceiling on it is a safety check
/// against a bomb or a leak, never a speed target.
pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap();
    kb / 1024.0
}

/// The `fpt` binary the servers and workers of the tests run: this build's, or the one
/// `FPT_UNDER_TEST` names (to run the regression tests against an older build, to see them fail).
pub fn fpt_bin() -> PathBuf {
    std::env::var_os("FPT_UNDER_TEST").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_fpt")), PathBuf::from)
}

/// Trains `task` from the command line on the tiny GPT-2 (`steps` steps on `train`), evaluates the
/// adapter on `train`, then predicts for each JSONL line of `inputs`; returns the predictions, one
/// per line.
pub fn cli_train_and_predict(dir: &Path, task: &str, train: &Path, steps: u32, inputs: &str) -> Vec<serde_json::Value> {
    let models = tiny_models().display().to_string();
    let run = |args: &[&str]| {
        let o = Command::new(fpt_bin()).args(args).args(["--models-dir", &models]).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let (adapter, input_file) = (dir.join("cli.safetensors"), dir.join("cli-inputs.jsonl"));
    let (adapter, train) = (adapter.to_str().unwrap(), train.to_str().unwrap());
    run(&["train", "--task", task, "--model", "tiny-gpt2", "--train", train, "--steps", &steps.to_string(), "--out", adapter]);
    // Evaluation reads the file as the adapter's training split was read (its classes, its statistics).
    let eval: serde_json::Value = serde_json::from_str(run(&["eval", "--adapter", adapter, "--data", train]).trim()).unwrap();
    assert!(eval["loss"].as_f64().is_some_and(f64::is_finite) && eval["samples"].as_u64().is_some_and(|n| n > 0), "eval: {eval}");
    assert!(eval.as_object().unwrap().len() > 2, "eval names the task's metrics: {eval}");
    std::fs::write(&input_file, inputs).unwrap();
    let out = run(&["predict", "--adapter", adapter, "--input", input_file.to_str().unwrap()]);
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
}

/// Seeded draws in [0, 1) (a 64-bit LCG), so generated test data is the same on every run.
pub fn uniform(seed: u64) -> impl FnMut() -> f64 {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A tiny random GPT-2 (2 layers, hidden 32) with enough positions for every task, made once.
pub fn tiny_models() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fpt-tiny-{}", std::process::id()));
        fpt::model::write_random_checkpoint(&dir.join("tiny-gpt2"), &fpt::model::gpt2_config(2, 32, 2, 1024), 1).unwrap();
        fpt::model::write_random_checkpoint(&dir.join("tiny-bert"), &fpt::model::bert_config(2, 32, 4, 64, 256), 2).unwrap();
        dir
    })
}

pub fn registry() -> fpt::model::ModelRegistry {
    fpt::model::ModelRegistry::new(tiny_models())
}
pub mod postgres;
pub mod server;
pub mod webdriver;
