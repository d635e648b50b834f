//! The command line: `train`, `eval`, `predict`, `sweep`, `models`, `serve`, `bench`. Flags are
//! parsed into the same validated types the service uses, then handed to the shared engine.
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tch::{Device, Kind};

use crate::model::fpt::{AdapterMeta, FptModel, ModelSpec};
use crate::model::params::FreezeSwitches;
use crate::model::{parse_device, ModelRegistry};
use crate::tasks::samples::{batch_from_samples, predictions};
use crate::tasks::{objective_for, DataSources, EvalSplit, TaskData, TaskSpec};
use crate::train::optim::Schedule;
use crate::train::{evaluate, Control, Progress, TrainConfig, Trainer};

#[derive(Parser)]
#[command(name = "fpt", version, about = "Frozen pretrained transformers as universal computation engines")]
pub struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Train an adapter on a frozen backbone. A repeated option takes its last value, so that
    /// the command lines `fpt experiment --dry-run` prints (spec, group, grid) run as they read.
    #[command(args_override_self = true)]
    Train(TrainArgs),
    /// Evaluate an adapter on a dataset file.
    Eval(EvalArgs),
    /// Predict with an adapter, one JSON line per input record.
    Predict(PredictArgs),
    /// Train at several learning rates and seeds; report the best by validation accuracy.
    Sweep(SweepArgs),
    /// List the base models found.
    Models(CommonArgs),
    /// Run the HTTP service.
    Serve(crate::config::ServeArgs),
    /// Run training workers only, against a shared database and artifact store.
    Worker(crate::config::WorkerArgs),
    /// Benchmark training and inference speed.
    Bench(crate::bench::BenchArgs),
    /// Load-test a running server's predictions across several fine-tuned models.
    Loadtest(crate::loadtest::LoadtestArgs),
    /// Run a grid of training runs from a spec file and write the results table and plots.
    Experiment(crate::experiment::ExperimentArgs),
}

#[derive(Args, Clone, Debug)]
pub struct CommonArgs {
    /// Folder of base models (one checkpoint folder each).
    #[arg(long, env = "FPT_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// auto (CUDA when present), cpu, cuda, cuda:N.
    #[arg(long, env = "FPT_DEVICE", default_value = "auto")]
    pub device: String,
    /// CPU threads for libtorch (0: libtorch's default).
    #[arg(long, env = "FPT_THREADS", default_value_t = 0)]
    pub threads: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Bf16,
    /// bf16 frozen weights where the hardware multiplies bf16 fast, else fp32.
    #[default]
    Auto,
}

impl Precision {
    /// The dtype frozen weights are held in.
    pub fn frozen_kind(self, device: Device) -> Option<Kind> {
        let bf16 = match self {
            Precision::Fp32 => false,
            Precision::Bf16 => true,
            Precision::Auto => fast_bf16(device),
        };
        bf16.then_some(Kind::BFloat16)
    }
}

/// CUDA GPUs and CPUs with AMX or AVX512-BF16 multiply bf16 natively.
pub fn fast_bf16(device: Device) -> bool {
    match device {
        Device::Cuda(_) => true,
        _ => std::fs::read_to_string("/proc/cpuinfo").map(|s| s.contains(" amx_bf16") || s.contains(" avx512_bf16")).unwrap_or(false),
    }
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Base-model name (from the models folder or the hub cache) or a checkpoint folder.
    #[arg(long, default_value = "gpt2")]
    pub model: String,
    /// Task type (`mnist`) or task JSON (`{"type":"bit_xor","n_bits":5}`).
    #[arg(long)]
    pub task: String,
    #[arg(long)]
    pub train: Option<PathBuf>,
    #[arg(long)]
    pub valid: Option<PathBuf>,
    #[arg(long)]
    pub test: Option<PathBuf>,
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// Train for this many passes over the training set instead of --steps.
    #[arg(long)]
    pub epochs: Option<f64>,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Largest forward pass; bigger batches accumulate gradients.
    #[arg(long, default_value_t = 64)]
    pub micro_batch_size: usize,
    #[arg(long, value_enum, default_value_t = Schedule::Constant)]
    pub schedule: Schedule,
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    #[arg(long, default_value_t = 100)]
    pub eval_every: u64,
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    /// Evaluations without improvement before stopping (0: never).
    #[arg(long, default_value_t = 0)]
    pub patience: u64,
    /// Held out from --train when there is no --valid.
    #[arg(long, default_value_t = 0.1)]
    pub validation_fraction: f64,
    /// Dropout inside the backbone (hidden, attention, embeddings) instead of its config's (0.1 in
    /// GPT-2 and MiniLM, the recipe's); the input layer's 0.1 stays.
    #[arg(long)]
    pub backbone_dropout: Option<f64>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = true)]
    pub freeze_attn: bool,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = true)]
    pub freeze_ff: bool,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false)]
    pub freeze_ln: bool,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false)]
    pub freeze_pos: bool,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false)]
    pub freeze_in: bool,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false)]
    pub freeze_out: bool,
    /// The same architecture with transformers' random init instead of the pretrained weights.
    #[arg(long)]
    pub no_pretrained: bool,
    #[arg(long, value_enum, default_value_t = Precision::Auto)]
    pub precision: Precision,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the kept adapter (best by validation accuracy) is written.
    #[arg(long)]
    pub out: PathBuf,
    /// Checkpoint folder (default: `<out>.ckpt`); a run resumes from the checkpoint found there.
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Do not show a progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Comma-separated learning rates.
    #[arg(long, value_delimiter = ',', default_value = "1e-4,3e-4,1e-3")]
    pub lr: Vec<f64>,
    /// Comma-separated seeds.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    /// Folder for the runs' adapters and checkpoints.
    #[arg(long)]
    pub out_dir: PathBuf,
}

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long)]
    pub adapter: PathBuf,
    /// Dataset file (synthetic tasks: omit to use the generated validation set).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args)]
pub struct PredictArgs {
    #[arg(long)]
    pub adapter: PathBuf,
    /// JSONL: one `{"input": ...}` record (or bare input) per line.
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => train(a),
        Command::Eval(a) => eval(a),
        Command::Predict(a) => predict(a),
        Command::Sweep(a) => sweep(a),
        Command::Models(a) => models(a),
        Command::Serve(a) => crate::server::serve_blocking(a),
        Command::Worker(a) => crate::server::work_blocking(a),
        Command::Bench(a) => crate::bench::run(a),
        Command::Loadtest(a) => crate::loadtest::run(a),
        Command::Experiment(a) => crate::experiment::run(a),
    }
}

fn setup(common: &CommonArgs) -> Result<(ModelRegistry, Device)> {
    if common.threads > 0 {
        tch::set_num_threads(common.threads);
    }
    Ok((ModelRegistry::new(&common.models_dir), parse_device(&common.device)?))
}

impl ModelArgs {
    pub fn switches(&self) -> FreezeSwitches {
        FreezeSwitches {
            pretrained: !self.no_pretrained,
            freeze_attn: self.freeze_attn,
            freeze_ff: self.freeze_ff,
            freeze_ln: self.freeze_ln,
            freeze_pos: self.freeze_pos,
            freeze_in: self.freeze_in,
            freeze_out: self.freeze_out,
        }
    }

    pub fn task_spec(&self) -> Result<TaskSpec> {
        let spec = TaskSpec::parse_cli(&self.task).map_err(anyhow::Error::msg)?;
        spec.validate()?;
        Ok(spec)
    }

    pub(crate) fn train_config(&self, lr: f64, n_train: usize) -> Result<TrainConfig> {
        let n_steps = match self.epochs {
            Some(e) if n_train > 0 => ((e * n_train as f64) / self.batch_size as f64).ceil().max(1.0) as u64,
            _ => self.steps,
        };
        let cfg = TrainConfig {
            n_steps,
            batch_size: self.batch_size,
            micro_batch_size: self.micro_batch_size,
            learning_rate: lr,
            schedule: self.schedule,
            warmup_steps: self.warmup_steps,
            grad_clip: self.grad_clip,
            eval_every: self.eval_every,
            checkpoint_every: self.checkpoint_every,
            patience: self.patience,
            validation_fraction: self.validation_fraction,
            backbone_dropout: self.backbone_dropout,
            ..TrainConfig::default()
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// One training run, shared by `train`, `sweep` and `experiment`.
pub struct RunResult {
    pub summary: serde_json::Value,
    pub curve: Vec<crate::train::Metrics>,
}

pub fn train_once(m: &ModelArgs, lr: f64, seed: u64, out: &Path, ckpt: &Path, quiet: bool) -> Result<RunResult> {
    let (registry, device) = setup(&m.common)?;
    let base = registry.resolve(&m.model)?;
    let spec = m.task_spec()?;
    let max_positions = base.backbone_config()?.max_positions as usize;
    let task = TaskData::load(
        &spec,
        &DataSources {
            train: m.train.as_deref(),
            valid: m.valid.as_deref(),
            test: m.test.as_deref(),
            valid_fraction: m.validation_fraction,
            seed,
            max_positions,
        },
    )?;
    let cfg = m.train_config(lr, task.info.train_samples)?;
    let model = FptModel::new(ModelSpec {
        base: &base,
        shape: task.shape,
        switches: m.switches(),
        task: serde_json::to_value(&spec)?,
        device,
        seed,
        frozen_kind: m.precision.frozen_kind(device),
    })?
    .with_backbone_dropout(cfg.backbone_dropout);
    let report = model.param_report();
    if task.info.truncated > 0 {
        eprintln!("note: {} samples were cut to the backbone's {} positions", task.info.truncated, max_positions);
    }
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(cfg.n_steps) };
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}").unwrap());
    let trainer =
        Trainer { model: &model, task: &task, cfg: cfg.clone(), seed, checkpoint_dir: ckpt.to_path_buf(), metadata: HashMap::new() };
    let mut curve = Vec::new();
    let outcome = trainer.run(&Control::default(), &mut |p| match p {
        Progress::Metrics(mm) => {
            curve.push(mm.clone());
            bar.set_position(mm.step);
            let valid = mm.valid_accuracy.map(|v| format!(" valid_acc {v:.4}")).unwrap_or_default();
            bar.set_message(format!(
                "loss {:.4} acc {:.4}{valid} {:.0} samples/s",
                mm.train_loss, mm.train_accuracy, mm.samples_per_second
            ));
        }
        Progress::Message(s) => bar.println(s),
        Progress::Checkpoint { .. } => {}
    })?;
    bar.finish_and_clear();
    let kept = outcome.adapter.as_ref().context("training produced no adapter")?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(kept, out).with_context(|| format!("writing {}", out.display()))?;
    let summary = json!({
        "steps": outcome.steps,
        "train_loss": outcome.train_loss,
        "train_accuracy": outcome.train_accuracy,
        "valid_loss": outcome.valid.map(|v| v.loss),
        "valid_accuracy": outcome.valid.map(|v| v.accuracy),
        "best_valid_accuracy": outcome.best_valid_accuracy,
        "best_step": outcome.best_step,
        "test_accuracy": outcome.test.map(|t| t.accuracy),
        "samples_per_second": outcome.samples_per_second,
        "wall_seconds": outcome.wall_seconds,
        "trainable_parameters": report.trained,
        "total_parameters": report.total,
        "lr": lr,
        "seed": seed,
        "adapter": out,
        "paper_trained_parameters": paper_count(&base, &task),
    });
    Ok(RunResult { summary, curve })
}

/// The paper's count of trained parameters for this backbone and task (continuous inputs only).
fn paper_count(base: &crate::model::BaseModel, task: &TaskData) -> Option<i64> {
    let c = base.backbone_config().ok()?;
    match task.shape.input {
        crate::model::fpt::InputKind::Continuous { dim } => Some(crate::model::fpt::paper_param_count(
            c.hidden,
            c.layers,
            dim,
            task.shape.output_dim * task.shape.readout_tokens,
            task.info.seq_len as i64,
        )),
        _ => None,
    }
}

fn train(a: TrainArgs) -> Result<()> {
    let ckpt = a.checkpoint_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.ckpt", a.out.display())));
    let r = train_once(&a.model, a.lr, a.seed, &a.out, &ckpt, a.quiet)?;
    println!("{}", r.summary);
    Ok(())
}

fn sweep(a: SweepArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out_dir)?;
    let mut rows = Vec::new();
    for &lr in &a.lr {
        for &seed in &a.seeds {
            let name = format!("lr{lr:e}-seed{seed}");
            let r = train_once(
                &a.model,
                lr,
                seed,
                &a.out_dir.join(format!("{name}.safetensors")),
                &a.out_dir.join(format!("{name}.ckpt")),
                true,
            )?;
            eprintln!("{}", r.summary);
            rows.push(r.summary);
        }
    }
    println!("{:>10} {:>6} {:>10} {:>10} {:>10}", "lr", "seed", "best_valid", "train_loss", "samples/s");
    for r in &rows {
        println!(
            "{:>10.1e} {:>6} {:>10.4} {:>10.4} {:>10.1}",
            r["lr"].as_f64().unwrap_or(f64::NAN),
            r["seed"],
            r["best_valid_accuracy"].as_f64().unwrap_or(f64::NAN),
            r["train_loss"].as_f64().unwrap_or(f64::NAN),
            r["samples_per_second"].as_f64().unwrap_or(f64::NAN)
        );
    }
    // Best learning rate by validation accuracy averaged over seeds.
    let mut by_lr: Vec<(f64, f64)> =
        a.lr.iter()
            .map(|&lr| {
                let accs: Vec<f64> =
                    rows.iter().filter(|r| r["lr"].as_f64() == Some(lr)).filter_map(|r| r["best_valid_accuracy"].as_f64()).collect();
                (lr, accs.iter().sum::<f64>() / accs.len().max(1) as f64)
            })
            .collect();
    by_lr.sort_by(|x, y| y.1.total_cmp(&x.1));
    if let Some((lr, acc)) = by_lr.first() {
        println!("{}", json!({"best_lr": lr, "mean_best_valid_accuracy": acc, "runs": rows.len()}));
    }
    Ok(())
}

fn eval(a: EvalArgs) -> Result<()> {
    let (registry, device) = setup(&a.common)?;
    let model = FptModel::load_adapter(&a.adapter, &registry, device, a.precision.frozen_kind(device))?;
    let spec: TaskSpec = serde_json::from_value(model.task.clone()).context("the adapter's task is not one this version knows")?;
    if spec.needs_file() && a.data.is_none() {
        bail!("task `{}` needs --data", spec.name());
    }
    let task = TaskData::load(
        &spec,
        &DataSources {
            train: a.data.as_deref(),
            valid: a.data.as_deref(),
            test: None,
            valid_fraction: 0.1,
            seed: a.seed,
            max_positions: model.max_positions() as usize,
        },
    )?;
    let e = evaluate(&model, &task, EvalSplit::Valid, 64).context("no samples to evaluate")?;
    println!("{}", json!({"accuracy": e.accuracy, "loss": e.loss, "samples": e.samples, "exact_accuracy": e.exact_accuracy}));
    Ok(())
}

fn predict(a: PredictArgs) -> Result<()> {
    let (registry, device) = setup(&a.common)?;
    let model = FptModel::load_adapter(&a.adapter, &registry, device, a.precision.frozen_kind(device))?;
    let meta = AdapterMeta::read(&a.adapter)?;
    let spec: TaskSpec = serde_json::from_value(meta.task.clone()).context("the adapter's task is not one this version knows")?;
    let objective = objective_for(&spec, &model.shape);
    let file = std::fs::File::open(&a.input).with_context(|| format!("opening {}", a.input.display()))?;
    let mut samples = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{} line {}: invalid JSON", a.input.display(), i + 1))?;
        samples.push(match v.get("input") {
            Some(inp) => inp.clone(),
            None => v,
        });
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (c, chunk) in samples.chunks(a.batch_size.max(1)).enumerate() {
        let b = batch_from_samples(&spec, &model.shape, model.max_positions(), chunk)
            .map_err(|e| anyhow::anyhow!("{}: record {}: {}", a.input.display(), c * a.batch_size + e.index, e.message))?;
        let logits =
            tch::no_grad(|| model.forward(&b.inputs.to_device(device), b.lengths.as_ref().map(|l| l.to_device(device)).as_ref(), false));
        for p in predictions(&objective, &logits) {
            writeln!(out, "{}", serde_json::to_string(&p)?)?;
        }
    }
    Ok(())
}

fn models(a: CommonArgs) -> Result<()> {
    let registry = ModelRegistry::new(&a.models_dir);
    for m in registry.list() {
        let c = m.backbone_config()?;
        println!(
            "{}",
            json!({"id": m.name, "arch": m.arch, "hidden": c.hidden, "layers": c.layers, "heads": c.heads, "positions": c.max_positions, "path": m.dir})
        );
    }
    Ok(())
}
