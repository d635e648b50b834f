//! The command line: its subcommands and their bodies. The flags live in [`crate::flags`], which
//! turns them into the same validated [`crate::job::TrainSpec`] the service's jobs are.
use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::flags::{flag_for, CommonArgs, EvalArgs, LearningRate, ModelArgs, PredictArgs, SweepArgs, TrainArgs};
use crate::job::fingerprint::FolderRefused;
use crate::job::{train_to_file, LocalRun, PrepareError};
use crate::model::fpt::FptModel;
use crate::model::ModelRegistry;
use crate::tasks::samples::batch_from_samples;
use crate::tasks::{DataSources, EvalSplit, TaskData, TaskSpec};
use crate::train::{evaluate, Progress};

#[derive(Parser)]
#[command(name = "fpt", version, about = "Frozen pretrained transformers as universal computation engines")]
pub struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Subcommand)]
pub enum Action {
    /// Train an adapter on a frozen backbone.
    ///
    /// A repeated option takes its last value (so the command lines `fpt experiment --dry-run`
    /// prints run as they read). The same command again resumes from the checkpoint folder; a
    /// larger --steps continues; other settings there are refused (--force starts afresh).
    #[command(args_override_self = true, after_help = TRAIN_EXAMPLE)]
    Train(TrainArgs),
    /// Score an adapter on a dataset file (or a generated task's validation set).
    #[command(after_help = "Example:\n  fpt eval --adapter mnist.safetensors --data mnist-test.tar.gz")]
    Eval(EvalArgs),
    /// Predict with an adapter: one JSON line per input record.
    #[command(after_help = "Example:\n  fpt predict --adapter xor.safetensors --input samples.jsonl | head")]
    Predict(PredictArgs),
    /// Train at several learning rates and seeds; report the best by the primary validation metric.
    #[command(
        after_help = "Example:\n  fpt sweep --model tiny-gpt2 --task bit_xor --steps 500 --lr 1e-4,1e-3 --seeds 0,1 --out-dir sweep/"
    )]
    Sweep(SweepArgs),
    /// List the base models found in the models folder.
    #[command(after_help = "Example:\n  fpt models --models-dir models")]
    Models(CommonArgs),
    /// Run the HTTP service (API, dashboard, training workers, batches).
    #[command(after_help = "Example:\n  fpt serve --bind 127.0.0.1:8080 --data-dir data --models-dir models")]
    Serve(crate::config::ServeArgs),
    /// Run training workers (and batches) only, against a shared database and artifact store.
    #[command(after_help = "Example:\n  fpt worker --database-url postgres://fpt@db/fpt --artifacts /shared/artifacts --workers 2")]
    Worker(crate::config::WorkerArgs),
    /// Benchmark training and inference speed against the PyTorch reference.
    #[command(after_help = "Example:\n  fpt bench --case tiny")]
    Bench(crate::bench::BenchArgs),
    /// Load-test a running server's predictions across several fine-tuned models.
    #[command(after_help = "Example:\n  fpt loadtest --url http://127.0.0.1:8080 --models ft-a,ft-b --sample '[0.5, 0.1]'")]
    Loadtest(crate::loadtest::LoadtestArgs),
    /// Run a grid of training runs from a spec file and write the results table and plots.
    ///
    /// The spec's format is in docs/experiments.md.
    #[command(after_help = "Example:\n  fpt experiment experiments/cpu-suite.toml --dry-run")]
    Experiment(crate::experiment::ExperimentArgs),
}

const TRAIN_EXAMPLE: &str = "Examples:
  fpt train --model tiny-gpt2 --task bit_xor --steps 500 --out xor.safetensors
  fpt train --model all-MiniLM-L6-v2 --task sequence_classification --train data.csv --out a.safetensors
  fpt train --model ./models/gpt2 --task '{\"type\":\"listops\",\"max_len\":512}' --train listops.tsv --lr 3e-4 --out l.safetensors";

pub fn run(cli: Cli) -> Result<()> {
    match cli.action {
        Action::Train(a) => train(a),
        Action::Eval(a) => eval(a),
        Action::Predict(a) => predict(a),
        Action::Sweep(a) => sweep(a),
        Action::Models(a) => models(a),
        Action::Serve(a) => crate::server::serve_blocking(a),
        Action::Worker(a) => crate::server::work_blocking(a),
        Action::Bench(a) => crate::bench::run(a),
        Action::Loadtest(a) => crate::loadtest::run(a),
        Action::Experiment(a) => crate::experiment::run(a),
    }
}

/// One run of `train` or `sweep`, with a progress bar unless `quiet`.
fn train_once(
    m: &ModelArgs,
    lr: LearningRate,
    seed: u64,
    out: &std::path::Path,
    ckpt: &std::path::Path,
    quiet: bool,
    force: bool,
) -> Result<LocalRun> {
    let (registry, device) = m.common.open()?;
    let spec = m.spec(lr.value(), seed)?;
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(spec.hyperparameters.n_steps) };
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}").unwrap());
    let run = train_to_file(&spec, &registry, device, m.precision, out, ckpt, force, &m.auto_fields(lr), &mut |p| match p {
        Progress::Metrics(mm) => {
            bar.set_length(mm.total_steps);
            bar.set_position(mm.step);
            let shown: Vec<String> = mm.values.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            let trial = mm.trial.map_or(String::new(), |t| format!("trial {} (lr {:e}): ", t + 1, mm.learning_rate));
            bar.set_message(format!("{trial}{} {:.0} samples/s", shown.join(" "), mm.samples_per_second));
        }
        Progress::Message(s) => bar.println(s),
        Progress::Checkpoint { .. } | Progress::Search(_) => {}
    });
    bar.finish_and_clear();
    // A field of the run that the data showed wrong (`--epochs` that come to too many steps) is
    // named by its flag, as the parse names the others.
    run.map_err(|e| match e.downcast::<PrepareError>() {
        Ok(p) => anyhow::anyhow!("{}: {:#}", flag_for(&p.field), p.error),
        Err(e) => match e.downcast::<FolderRefused>() {
            Ok(refused) => anyhow::anyhow!(refused.describe(flag_for)),
            Err(e) => e,
        },
    })
}

fn train(a: TrainArgs) -> Result<()> {
    let ckpt = a.checkpoint_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.ckpt", a.out.display())));
    let r = train_once(&a.model, a.lr, a.seed, &a.out, &ckpt, a.quiet, a.force)?;
    println!("{}", serde_json::to_string(&r.summary)?);
    Ok(())
}

fn sweep(a: SweepArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out_dir)?;
    let (mut rows, mut diverged) = (Vec::new(), Vec::new());
    for &lr in &a.lr {
        for &seed in &a.seeds {
            let name = format!("lr{lr:e}-seed{seed}");
            let out = a.out_dir.join(format!("{name}.safetensors"));
            match train_once(&a.model, LearningRate::Fixed(lr), seed, &out, &a.out_dir.join(format!("{name}.ckpt")), true, a.force) {
                Ok(r) => {
                    eprintln!("{}", serde_json::to_string(&r.summary)?);
                    rows.push((lr, seed, r.summary));
                }
                // A learning rate too high for the task is a finding of the sweep, not its end.
                Err(e) if e.downcast_ref::<crate::train::Diverged>().is_some() => {
                    eprintln!("{name}: {e}");
                    diverged.push(json!({"lr": lr, "seed": seed, "error": e.to_string()}));
                }
                Err(e) => return Err(e),
            }
        }
    }
    let Some(primary) = rows.first().map(|r| (r.2.primary_metric.clone(), r.2.direction)) else {
        println!("{}", json!({"best_lr": null, "runs": 0, "diverged": diverged}));
        return Ok(());
    };
    let best_col = format!("best_{}", primary.0);
    println!("{:>10} {:>6} {:>14} {:>10} {:>10}", "lr", "seed", best_col, "train_loss", "samples/s");
    for (lr, seed, s) in &rows {
        println!(
            "{:>10.1e} {:>6} {:>14.4} {:>10.4} {:>10.1}",
            lr,
            seed,
            s.best_valid().unwrap_or(f64::NAN),
            s.metric("train_loss").unwrap_or(f64::NAN),
            s.samples_per_second
        );
    }
    // Best learning rate by the primary validation metric averaged over seeds.
    let mean_at = |lr: f64| {
        let v: Vec<f64> = rows.iter().filter(|r| r.0 == lr).filter_map(|r| r.2.best_valid()).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let best = a.lr.iter().filter_map(|&lr| mean_at(lr).map(|m| (lr, m))).reduce(|x, y| if primary.1.better(y.1, x.1) { y } else { x });
    if let Some((lr, value)) = best {
        println!("{}", json!({"best_lr": lr, format!("mean_best_valid_{}", primary.0): value, "runs": rows.len(), "diverged": diverged}));
    }
    Ok(())
}

fn eval(a: EvalArgs) -> Result<()> {
    let (registry, device) = a.common.open()?;
    let model = FptModel::load_adapter_on(&a.adapter, a.model.as_deref(), &registry, device, a.precision.frozen_kind(device))?;
    let spec = adapter_task(&model)?;
    if spec.needs_file() && a.data.is_none() {
        bail!("task `{}` needs --data", spec.name());
    }
    if !spec.needs_file() && a.data.is_some() {
        bail!("--data: task `{}` generates its validation data and reads no file; leave --data out", spec.name());
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
            fitted: Some(&model.task_state),
        },
    )?;
    let e = evaluate(&model, &task, EvalSplit::Valid, 64).context("no samples to evaluate")?;
    let mut out = serde_json::to_value(&e.metrics)?;
    out["loss"] = json!(e.loss);
    out["samples"] = json!(e.samples);
    if let Some(c) = crate::train::confusion::confusion(&model, &task, EvalSplit::Valid, 64) {
        out["confusion"] = json!(c);
    }
    println!("{out}");
    Ok(())
}

fn predict(a: PredictArgs) -> Result<()> {
    let (registry, device) = a.common.open()?;
    let model = FptModel::load_adapter_on(&a.adapter, a.model.as_deref(), &registry, device, a.precision.frozen_kind(device))?;
    let spec = adapter_task(&model)?;
    let objective = spec.task().objective(&model.shape, &model.task_state);
    let file = std::fs::File::open(&a.input).with_context(|| format!("opening {}", a.input.display()))?;
    // Each sample's line in the file (1-based), which errors name.
    let (mut samples, mut lines) = (Vec::new(), Vec::new());
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
        lines.push(i + 1);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let size = a.batch_size.max(1);
    for (c, chunk) in samples.chunks(size).enumerate() {
        let b = batch_from_samples(&spec, &model.shape, &model.task_state, model.max_positions(), chunk)
            .map_err(|e| anyhow::anyhow!("{} line {}: {}", a.input.display(), lines[c * size + e.index], e.message))?;
        let logits = objective.answer(&model, &b.inputs.to_device(device), b.lengths.as_ref().map(|l| l.to_device(device)).as_ref());
        for p in objective.predictions(&logits, b.context.as_ref()) {
            writeln!(out, "{}", serde_json::to_string(&p)?).map_err(stdout_error)?;
        }
    }
    Ok(())
}

/// Standard output was closed by its reader (`| head`): the command ends quietly, successfully.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct StdoutClosed;

fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("writing to standard output")
    }
}

/// The task an adapter was trained for.
fn adapter_task(model: &FptModel) -> Result<TaskSpec> {
    serde_json::from_value(model.task.clone()).context("the adapter's task is not one this version knows")
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand says what it does and shows an example; every flag says what it is for.
    #[test]
    fn every_subcommand_and_flag_explains_itself() {
        let mut missing = Vec::new();
        let root = super::Cli::command();
        for sub in root.get_subcommands() {
            let name = sub.get_name();
            if sub.get_about().is_none() {
                missing.push(format!("{name}: no about"));
            }
            if !sub.get_after_help().is_some_and(|h| h.to_string().contains("Example")) {
                missing.push(format!("{name}: no example"));
            }
            for arg in sub.get_arguments().filter(|a| !["help", "version"].contains(&a.get_id().as_str())) {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{name} --{}", arg.get_long().unwrap_or(arg.get_id().as_str())));
                }
            }
        }
        assert!(missing.is_empty(), "without help:\n{}", missing.join("\n"));
    }
}
