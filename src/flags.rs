//! The command line's flags (clap structs) and how they become a run's [`TrainSpec`]: through the
//! same [`RawSpec`] and parse as the API's requests, with errors named by flag (`--steps`) instead
//! of by the API's field path (`hyperparameters.n_steps`).
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tch::Device;

use crate::job::{DataFiles, Limits, Method, RawSpec, TrainSpec};
use crate::model::params::FreezeSwitches;
use crate::model::{parse_device, ModelRegistry, Precision};
use crate::tasks::{SpecError, TaskSpec};
use crate::train::optim::Schedule;
use crate::train::TrainConfig;

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

impl CommonArgs {
    /// Sets libtorch's threads; the base models found and the device to run on.
    pub fn open(&self) -> Result<(ModelRegistry, Device)> {
        if self.threads > 0 {
            tch::set_num_threads(self.threads);
        }
        Ok((ModelRegistry::new(&self.models_dir), parse_device(&self.device)?))
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
    pub epochs: Option<u64>,
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

    /// The run these flags ask for at learning rate `lr` and seed `seed`, parsed as the API's are.
    pub fn spec(&self, lr: f64, seed: u64) -> Result<TrainSpec<PathBuf>> {
        let task = TaskSpec::parse_cli(&self.task).map_err(anyhow::Error::msg)?;
        let hyperparameters = TrainConfig {
            n_steps: self.steps,
            n_epochs: self.epochs,
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
        let raw = RawSpec {
            model: self.model.clone(),
            task,
            hyperparameters,
            method: Method::fpt(self.switches()),
            seed,
            files: DataFiles { train: self.train.clone(), valid: self.valid.clone(), test: self.test.clone() },
            device: "any".into(),
        };
        TrainSpec::parse(raw, &Limits::default()).map_err(flag_error)
    }
}

/// A spec error in the command line's words: the flag that sets the field.
pub fn flag_error(e: SpecError) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", flag_for(&e.field), e.message)
}

/// The flag that sets an API field path.
pub fn flag_for(field: &str) -> String {
    let named = match field {
        "model" => "--model",
        "seed" => "--seed",
        "training_file" => "--train",
        "validation_file" => "--valid",
        "test_file" => "--test",
        "hyperparameters.n_steps" => "--steps",
        "hyperparameters.n_epochs" => "--epochs",
        "hyperparameters.learning_rate" => "--lr",
        _ => "",
    };
    if !named.is_empty() {
        return named.to_string();
    }
    if let Some(h) = field.strip_prefix("hyperparameters.") {
        return format!("--{}", h.replace('_', "-"));
    }
    if let Some(t) = field.strip_prefix("task.") {
        return format!("--task field `{t}`");
    }
    field.to_string()
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the kept adapter (best by the task's primary validation metric) is written.
    #[arg(long)]
    pub out: PathBuf,
    /// Checkpoint folder (default: `<out>.ckpt`). The same command again resumes from its
    /// checkpoint, a larger --steps continues it; a run with other settings is refused there.
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Start afresh: delete what the checkpoint folder holds, whatever run it was.
    #[arg(long)]
    pub force: bool,
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
    /// Start every run afresh, deleting the checkpoints the folder holds.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct EvalArgs {
    /// The adapter file `fpt train --out` wrote.
    #[arg(long)]
    pub adapter: PathBuf,
    /// The base model to run it on, a name or a folder (default: the one the adapter records,
    /// found by name in --models-dir, else at the folder it was trained from).
    #[arg(long)]
    pub model: Option<String>,
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
    /// The adapter file `fpt train --out` wrote.
    #[arg(long)]
    pub adapter: PathBuf,
    /// The base model to run it on, a name or a folder (default: the one the adapter records,
    /// found by name in --models-dir, else at the folder it was trained from).
    #[arg(long)]
    pub model: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        m: ModelArgs,
    }

    fn spec_of(args: &[&str]) -> Result<TrainSpec<PathBuf>> {
        let mut argv = vec!["fpt", "--task", "bit_xor"];
        argv.extend_from_slice(args);
        Wrap::try_parse_from(argv).unwrap().m.spec(1e-3, 0)
    }

    #[test]
    fn flags_become_the_spec_they_name() {
        let s = spec_of(&["--steps", "7", "--batch-size", "4", "--freeze-ln"]).unwrap();
        assert_eq!((s.hyperparameters.n_steps, s.hyperparameters.batch_size, s.switches.freeze_ln), (7, 4, true));
    }

    #[test]
    fn errors_name_the_flag() {
        let err = |args: &[&str]| spec_of(args).unwrap_err().to_string();
        assert!(err(&["--steps", "0"]).starts_with("--steps: "), "{}", err(&["--steps", "0"]));
        assert!(err(&["--batch-size", "0"]).starts_with("--batch-size: "));
        assert!(err(&["--epochs=0"]).starts_with("--epochs: "));
        assert!(err(&["--validation-fraction", "2"]).starts_with("--validation-fraction: "));
        let task = Wrap::try_parse_from(["fpt", "--task", r#"{"type":"bit_xor","n_bits":0}"#]).unwrap().m.spec(1e-3, 0);
        assert!(task.unwrap_err().to_string().starts_with("--task field `n_bits`: "));
        let lr = Wrap::try_parse_from(["fpt", "--task", "bit_xor"]).unwrap().m.spec(20.0, 0);
        assert!(lr.unwrap_err().to_string().starts_with("--lr: "));
        let file = Wrap::try_parse_from(["fpt", "--task", "mnist"]).unwrap().m.spec(1e-3, 0);
        assert!(file.unwrap_err().to_string().starts_with("--train: "));
    }
}
