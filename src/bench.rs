//! `fpt bench`: training and inference speed of our engine against the PyTorch + transformers
//! reference (`bench/reference.py`), the same shapes in one run on the same machine, with peak
//! memory and model FLOP utilisation against the matmul peak measured in the same run.
//!
//! Each case runs in its own process (ours: `fpt bench --case`, the reference: Python), so peak
//! resident memory is per case. Weights are random with the real shapes: speed does not depend on them.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::model::fpt::{FptModel, HeadShape, InputKind, ModelSpec};
use crate::model::onednn::Packed;
use crate::model::params::FreezeSwitches;
use crate::model::{bert_config, gpt2_config, BaseModel};

#[derive(Args)]
pub struct BenchArgs {
    /// Cases to run (default: all): tiny, gpt2-mnist, gpt2-cifar10, minilm, gpt2-lra.
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
    /// Run one case of ours and print its JSON (used by the orchestrator).
    #[arg(long)]
    pub case: Option<String>,
    /// fp32 or bf16 (frozen weights and their matmuls in bf16) for `--case`.
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// libtorch's CPU threads for the measured runs.
    #[arg(long, default_value_t = 2)]
    pub threads: i32,
    /// Batch size override (GPU tables use 16 and 64).
    #[arg(long)]
    pub batch: Option<i64>,
    /// Timed steps and batches (default: each case's own).
    #[arg(long)]
    pub steps: Option<usize>,
    /// auto (CUDA when present), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Precisions to compare (the orchestrator).
    #[arg(long, value_delimiter = ',', default_value = "fp32,bf16")]
    pub precisions: Vec<String>,
    /// Rounds per case, ours and the reference alternating; each side keeps its best round
    /// (the least disturbed by whatever else shares the machine).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Skip the Python reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Python with torch + transformers for the reference.
    #[arg(long, env = "FPT_PYTHON", default_value = ".venv/bin/python")]
    pub python: PathBuf,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench/out")]
    pub out_dir: PathBuf,
}

/// One benchmark shape.
#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    arch: &'static str,
    layers: i64,
    hidden: i64,
    heads: i64,
    inner: i64,
    positions: i64,
    tokens: i64,
    dim: i64,
    classes: i64,
    batch: i64,
    train_steps: usize,
    infer_batches: usize,
}

fn cases() -> Vec<Case> {
    let gpt2 = |name, tokens, dim, batch, steps| Case {
        name,
        arch: "gpt2",
        layers: 12,
        hidden: 768,
        heads: 12,
        inner: 3072,
        positions: 1024,
        tokens,
        dim,
        classes: 10,
        batch,
        train_steps: steps,
        infer_batches: steps,
    };
    vec![
        Case {
            name: "tiny",
            arch: "gpt2",
            layers: 2,
            hidden: 64,
            heads: 2,
            inner: 256,
            positions: 64,
            tokens: 49,
            dim: 16,
            classes: 10,
            batch: 16,
            // Milliseconds a step: enough steps that a second of interference does not decide it.
            train_steps: 200,
            infer_batches: 200,
        },
        gpt2("gpt2-mnist", 49, 16, 16, 8),
        gpt2("gpt2-cifar10", 64, 48, 16, 8),
        Case {
            name: "minilm",
            arch: "bert",
            layers: 6,
            hidden: 384,
            heads: 12,
            inner: 1536,
            positions: 512,
            tokens: 49,
            dim: 16,
            classes: 10,
            batch: 16,
            train_steps: 20,
            infer_batches: 20,
        },
        gpt2("gpt2-lra", 1024, 1, 4, 2),
    ]
}

pub fn run(a: BenchArgs) -> Result<()> {
    if let Some(name) = &a.case {
        let case = cases().into_iter().find(|c| c.name == name).with_context(|| format!("unknown case `{name}`"))?;
        let case = Case {
            batch: a.batch.unwrap_or(case.batch),
            train_steps: a.steps.unwrap_or(case.train_steps),
            infer_batches: a.steps.unwrap_or(case.infer_batches),
            ..case
        };
        let r = run_ours(&case, &a)?;
        println!("{r}");
        return Ok(());
    }
    std::fs::create_dir_all(&a.out_dir)?;
    let device = crate::model::parse_device(&a.device)?;
    // bf16's peak only when a case runs in bf16: a CPU without native bf16 multiplies it in
    // emulation, minutes for the 2048-cube products, and no MFU would use the number.
    let wants_bf16 = a.precisions.iter().any(|p| p == "bf16");
    let measure_peak = || {
        let fp32 = matmul_peak(Kind::Float, device, a.threads);
        let bf16 = wants_bf16.then(|| matmul_peak(Kind::BFloat16, device, a.threads));
        let (bf16_aten, bf16_onednn) = (bf16.map(|b| b.0), bf16.map(|b| b.1));
        json!({"fp32": fp32.0.max(fp32.1), "bf16": bf16.map(|b| b.0.max(b.1)), "aten": {"fp32": fp32.0, "bf16": bf16_aten}, "onednn": {"fp32": fp32.1, "bf16": bf16_onednn}})
    };
    // The peak is measured before every case and at the end, and the best kept, as the rounds are:
    // a peak taken while something else held the cores would inflate every MFU.
    let rounds = a.rounds.max(1);
    let mut peaks = vec![measure_peak()];
    eprintln!("matmul peak (GFLOP/s, {} threads): {}", a.threads, peaks[0]);
    let mut runs = Vec::new();
    for case in cases().into_iter().filter(|c| a.cases.is_empty() || a.cases.iter().any(|n| n == c.name)) {
        // GPU steps take milliseconds: run ten times as many for stable timings.
        let scale = if device.is_cuda() { 10 } else { 1 };
        let case = Case {
            batch: a.batch.unwrap_or(case.batch),
            train_steps: a.steps.unwrap_or(case.train_steps) * scale,
            infer_batches: a.steps.unwrap_or(case.infer_batches) * scale,
            ..case
        };
        if !runs.is_empty() {
            peaks.push(measure_peak());
        }
        for precision in a.precisions.iter().map(String::as_str) {
            let (mut ours, mut reference) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                ours.push(spawn_ours(&case, precision, &a)?);
                if !a.no_reference {
                    reference.push(run_reference(&case, precision, &a).unwrap_or_else(|e| json!({"error": format!("{e:#}")})));
                }
            }
            let (ours, reference) = (best_round(&ours), best_round(&reference));
            let sps = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            eprintln!(
                "{} {precision}: train {:.1} vs {:.1}, infer {:.1} vs {:.1} samples/s (ours vs reference, best of {})",
                case.name,
                sps(&ours, "train_samples_per_s"),
                sps(&reference, "train_samples_per_s"),
                sps(&ours, "infer_samples_per_s"),
                sps(&reference, "infer_samples_per_s"),
                rounds
            );
            runs.push((case.clone(), precision.to_string(), ours, reference));
        }
    }
    peaks.push(measure_peak());
    let best = |k: &str| peaks.iter().filter_map(|p| p[k].as_f64()).fold(0.0, f64::max);
    let peak = json!({"fp32": best("fp32"), "bf16": best("bf16"), "measured": peaks});
    let rows: Vec<Value> =
        runs.iter().map(|(case, precision, ours, reference)| summarise(case, precision, ours, reference, &peak)).collect();
    print_table(&rows, &peak);
    let out = a.out_dir.join("bench.json");
    std::fs::write(
        &out,
        serde_json::to_string_pretty(
            &json!({"peak_gflops": peak, "rows": rows, "threads": a.threads, "device": a.device, "rounds": rounds}),
        )?,
    )?;
    eprintln!("results in {}", out.display());
    Ok(())
}

/// Matrix-multiply throughput (GFLOP/s) of `kind` on this machine, best of a few runs.
/// GFLOP/s of ATen's matmul and, on the CPU, of oneDNN's with a packed weight (what our frozen
/// layers use; for fp32 it beats ATen's MKL on this machine). The peak is the faster of the two.
fn matmul_peak(kind: Kind, device: Device, threads: i32) -> (f64, f64) {
    tch::set_num_threads(threads);
    let n = if device.is_cuda() { 8192 } else { 2048 };
    let a = Tensor::randn([n, n], (kind, device));
    let b = Tensor::randn([n, n], (kind, device));
    let aten = gflops(n, || a.matmul(&b));
    let onednn = Packed::new(&b).map_or(0.0, |p| {
        let zero = Tensor::zeros([n], (kind, device));
        gflops(n, || p.linear(&a, &zero))
    });
    (aten, onednn)
}

/// The best of eight n x n x n products.
fn gflops(n: i64, product: impl Fn() -> Tensor) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..8 {
        let t = Instant::now();
        let _ = f64::try_from(product().sum(Kind::Float)).unwrap();
        best = best.max(2.0 * (n as f64).powi(3) / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn spawn_ours(case: &Case, precision: &str, a: &BenchArgs) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args([
            "bench",
            "--case",
            case.name,
            "--precision",
            precision,
            "--threads",
            &a.threads.to_string(),
            "--batch",
            &case.batch.to_string(),
            "--device",
            &a.device,
            "--steps",
            &case.train_steps.to_string(),
        ])
        .output()?;
    if !out.status.success() {
        bail!("case {} ({precision}) failed: {}", case.name, String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(out.stdout.split(|&b| b == b'\n').find(|l| l.starts_with(b"{")).unwrap_or(b"{}"))?)
}

fn run_reference(case: &Case, precision: &str, a: &BenchArgs) -> Result<Value> {
    let args: Vec<String> = vec![
        "bench/reference.py".into(),
        "--arch".into(),
        case.arch.into(),
        "--layers".into(),
        case.layers.to_string(),
        "--hidden".into(),
        case.hidden.to_string(),
        "--heads".into(),
        case.heads.to_string(),
        "--positions".into(),
        case.positions.to_string(),
        "--inner".into(),
        case.inner.to_string(),
        "--tokens".into(),
        case.tokens.to_string(),
        "--dim".into(),
        case.dim.to_string(),
        "--classes".into(),
        case.classes.to_string(),
        "--batch".into(),
        case.batch.to_string(),
        "--precision".into(),
        precision.into(),
        "--train-steps".into(),
        case.train_steps.to_string(),
        "--infer-batches".into(),
        case.infer_batches.to_string(),
        "--warmup".into(),
        (if case.train_steps >= 40 { "5" } else { "1" }).into(),
        "--threads".into(),
        a.threads.to_string(),
        "--device".into(),
        if crate::model::parse_device(&a.device).map(|d| d.is_cuda()).unwrap_or(false) { "cuda".into() } else { "cpu".into() },
    ];
    let out = Command::new(&a.python)
        .args(&args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .with_context(|| format!("running {}", a.python.display()))?;
    if !out.status.success() {
        bail!("reference failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = out.stdout.split(|&b| b == b'\n').find(|l| l.starts_with(b"{")).context("no JSON from the reference")?.to_vec();
    Ok(serde_json::from_slice(&line)?)
}

/// One side's rounds merged: the best training and the best inference speed, the highest peak
/// memory (the conservative figure), and every round's raw figures; an error if no round ran.
fn best_round(rounds: &[Value]) -> Value {
    let ok: Vec<&Value> = rounds.iter().filter(|r| r.get("error").is_none()).collect();
    if ok.is_empty() {
        return rounds.first().cloned().unwrap_or(Value::Null);
    }
    let max = |k: &str| ok.iter().filter_map(|r| r[k].as_f64()).fold(f64::NAN, f64::max);
    json!({
        "train_samples_per_s": max("train_samples_per_s"),
        "infer_samples_per_s": max("infer_samples_per_s"),
        "peak_rss_mb": max("peak_rss_mb"),
        "rounds": ok,
    })
}

/// Matmul FLOPs of one forward pass (weights and attention), for MFU.
fn forward_flops(c: &Case) -> f64 {
    let t = (c.batch * c.tokens) as f64;
    let per_layer = 2.0 * t * (4.0 * (c.hidden * c.hidden) as f64 + 2.0 * (c.hidden * c.inner) as f64);
    let attn = 2.0 * 2.0 * (c.batch as f64) * (c.tokens * c.tokens * c.hidden) as f64;
    c.layers as f64 * (per_layer + attn) + 2.0 * t * (c.dim * c.hidden) as f64
}

fn summarise(c: &Case, precision: &str, ours: &Value, reference: &Value, peak: &Value) -> Value {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let fwd = forward_flops(c);
    // Frozen weights get no weight gradients: training is a forward and a backward to the
    // activations, about twice the forward's FLOPs.
    let train_flops = 2.0 * fwd;
    let p = peak[precision].as_f64().unwrap_or(f64::NAN) * 1e9;
    let ours_train = f(ours, "train_samples_per_s");
    let ours_infer = f(ours, "infer_samples_per_s");
    json!({
        "case": c.name, "precision": precision, "batch": c.batch, "tokens": c.tokens,
        "ours_train_sps": ours_train, "ref_train_sps": f(reference, "train_samples_per_s"),
        "train_ratio": ours_train / f(reference, "train_samples_per_s"),
        "ours_infer_sps": ours_infer, "ref_infer_sps": f(reference, "infer_samples_per_s"),
        "infer_ratio": ours_infer / f(reference, "infer_samples_per_s"),
        "ours_peak_rss_mb": f(ours, "peak_rss_mb"), "ref_peak_rss_mb": f(reference, "peak_rss_mb"),
        "ours_rounds": ours["rounds"], "ref_rounds": reference["rounds"],
        "train_mfu": (ours_train / c.batch as f64) * train_flops / p,
        "infer_mfu": (ours_infer / c.batch as f64) * fwd / p,
    })
}

fn print_table(rows: &[Value], peak: &Value) {
    println!("matmul peak GFLOP/s: fp32 {:.1}, bf16 {:.1}", peak["fp32"].as_f64().unwrap_or(0.0), peak["bf16"].as_f64().unwrap_or(0.0));
    println!(
        "{:<13} {:<5} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6} {:>8} {:>8} {:>6} {:>6}",
        "case", "prec", "train/s", "ref", "x", "infer/s", "ref", "x", "rss MB", "ref MB", "MFU-t", "MFU-i"
    );
    for r in rows {
        let g = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<13} {:<5} {:>9.1} {:>9.1} {:>6.2} {:>9.1} {:>9.1} {:>6.2} {:>8.0} {:>8.0} {:>5.1}% {:>5.1}%",
            r["case"].as_str().unwrap_or(""),
            r["precision"].as_str().unwrap_or(""),
            g("ours_train_sps"),
            g("ref_train_sps"),
            g("train_ratio"),
            g("ours_infer_sps"),
            g("ref_infer_sps"),
            g("infer_ratio"),
            g("ours_peak_rss_mb"),
            g("ref_peak_rss_mb"),
            100.0 * g("train_mfu"),
            100.0 * g("infer_mfu")
        );
    }
}

/// Peak resident memory of this process (VmHWM), MiB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A random-init backbone of the case's shape: only its config is written.
fn base_for(c: &Case, dir: &Path) -> Result<BaseModel> {
    let cfg = if c.arch == "bert" {
        bert_config(c.layers, c.hidden, c.heads, c.inner, c.positions)
    } else {
        gpt2_config(c.layers, c.hidden, c.heads, c.positions)
    };
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), cfg.to_string())?;
    std::fs::write(dir.join("model.safetensors"), b"")?;
    BaseModel::open(c.name, dir)
}

fn run_ours(c: &Case, a: &BenchArgs) -> Result<Value> {
    tch::set_num_threads(a.threads);
    let device = crate::model::parse_device(&a.device)?;
    let tmp = std::env::temp_dir().join(format!("fpt-bench-{}-{}", c.name, std::process::id()));
    let base = base_for(c, &tmp)?;
    let frozen_kind = (a.precision == "bf16").then_some(Kind::BFloat16);
    let switches = FreezeSwitches { pretrained: false, ..FreezeSwitches::default() };
    let shape = HeadShape { input: InputKind::Continuous { dim: c.dim }, output_dim: c.classes, readout_tokens: 1 };
    let model = FptModel::new(ModelSpec { base: &base, shape, switches, task: json!({}), device, seed: 0, frozen_kind })?;
    let _ = std::fs::remove_dir_all(&tmp);
    let x = Tensor::randn([c.batch, c.tokens, c.dim], (Kind::Float, device));
    let y = Tensor::randint(c.classes, [c.batch], (Kind::Int64, device));
    let params = model.trained().map(|p| p.tensor.shallow_clone()).collect();
    let mut adam = crate::train::optim::Adam::new(params, 0.9, 0.999, 1e-8, 0.0);
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64)
        }
    };
    let mut step = || {
        adam.zero_grad();
        let logits = model.forward(&x, None, true);
        logits.select(1, 0).cross_entropy_for_logits(&y).backward();
        adam.step(1e-3, 1.0);
    };
    let warmup = if c.train_steps >= 40 { 5 } else { 1 };
    for _ in 0..warmup {
        step();
    }
    sync();
    let t = Instant::now();
    for _ in 0..c.train_steps {
        step();
    }
    sync();
    let train_s = t.elapsed().as_secs_f64();
    let infer = || tch::no_grad(|| model.forward(&x, None, false));
    for _ in 0..warmup {
        let _ = infer();
    }
    sync();
    let t = Instant::now();
    for _ in 0..c.infer_batches {
        let _ = infer();
    }
    sync();
    let infer_s = t.elapsed().as_secs_f64();
    Ok(json!({
        "case": c.name, "precision": a.precision, "batch": c.batch,
        "train_samples_per_s": (c.train_steps as i64 * c.batch) as f64 / train_s,
        "infer_samples_per_s": (c.infer_batches as i64 * c.batch) as f64 / infer_s,
        "train_step_ms": 1e3 * train_s / c.train_steps as f64,
        "peak_rss_mb": peak_rss_mb(),
        "trainable_params": model.param_report().trained,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_round_keeps_each_sides_best_speed_and_highest_memory() {
        let rounds = [
            json!({"train_samples_per_s": 10.0, "infer_samples_per_s": 40.0, "peak_rss_mb": 100.0}),
            json!({"error": "killed"}),
            json!({"train_samples_per_s": 12.0, "infer_samples_per_s": 35.0, "peak_rss_mb": 90.0}),
        ];
        let b = best_round(&rounds);
        assert_eq!((b["train_samples_per_s"].as_f64(), b["infer_samples_per_s"].as_f64()), (Some(12.0), Some(40.0)));
        assert_eq!(b["peak_rss_mb"].as_f64(), Some(100.0));
        assert_eq!(b["rounds"].as_array().map(Vec::len), Some(2), "the failed round is left out");
        let failed = best_round(&[json!({"error": "no python"})]);
        assert_eq!(failed["error"], "no python", "with no good round the error stays");
    }
}
