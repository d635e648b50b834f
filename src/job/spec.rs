//! The validated spec of a fine-tuning run ([`TrainSpec`]) and the one function that makes it
//! ([`TrainSpec::parse`]) from what each edge hands in: the API's request body, the command line's
//! flags (which experiment specs are written as), all first brought to one [`RawSpec`]. Every size
//! a client chooses is checked here against [`Limits`], with checked arithmetic, before anything is
//! allocated for it. Errors name the field as the API does (`hyperparameters.n_steps`); the command
//! line renders the same path as its flag (`--steps`).
use serde::{Deserialize, Serialize};

use crate::model::params::FreezeSwitches;
use crate::tasks::{SpecError, TaskLimits, TaskSpec};
use crate::train::TrainConfig;

/// A run's data files: paths on the command line, uploaded file ids in the service.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DataFiles<F> {
    pub train: Option<F>,
    pub valid: Option<F>,
    pub test: Option<F>,
}

/// `method` of a request: the FPT recipe and its freeze switches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Method {
    #[serde(rename = "type", default = "fpt_type")]
    pub kind: String,
    #[serde(default)]
    pub fpt: FreezeSwitches,
}

fn fpt_type() -> String {
    "fpt".into()
}

impl Default for Method {
    fn default() -> Self {
        Self { kind: fpt_type(), fpt: FreezeSwitches::default() }
    }
}

impl Method {
    pub fn fpt(switches: FreezeSwitches) -> Self {
        Self { kind: fpt_type(), fpt: switches }
    }
}

/// The device kind a job must train on; `Any` lets the first free worker take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    #[default]
    Any,
    Cpu,
    Cuda,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Any => "any",
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [DeviceKind::Any, DeviceKind::Cpu, DeviceKind::Cuda].into_iter().find(|d| d.as_str() == s)
    }

    /// The kind a worker on `device` advertises.
    pub fn of(device: tch::Device) -> Self {
        if device.is_cuda() {
            DeviceKind::Cuda
        } else {
            DeviceKind::Cpu
        }
    }
}

/// Everything that makes a run, as an edge hands it in, before any check.
#[derive(Debug, Clone)]
pub struct RawSpec<F> {
    pub model: String,
    pub task: TaskSpec,
    pub hyperparameters: TrainConfig,
    pub method: Method,
    pub seed: u64,
    pub files: DataFiles<F>,
    pub device: String,
}

/// A run that has passed every check: built only by [`TrainSpec::parse`] (and by the store,
/// decoding a job it stored after that parse).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSpec<F> {
    /// A base model's name (or, on the command line, a checkpoint folder).
    pub model: String,
    pub task: TaskSpec,
    pub hyperparameters: TrainConfig,
    pub switches: FreezeSwitches,
    pub seed: u64,
    pub files: DataFiles<F>,
    pub device: DeviceKind,
}

/// The bounds of what one run may ask for. The defaults fit a 24 GiB machine with room for the
/// service beside the run; the service takes them from its settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_steps: u64,
    pub max_epochs: u64,
    pub max_batch_size: usize,
    /// Checkpoints one run may write (`n_steps / checkpoint_every`).
    pub max_checkpoints: u64,
    /// Progress reports one run may write (`n_steps / min(log_every, eval_every)`).
    pub max_reports: u64,
    /// Bytes a run's model and one forward-backward pass may take, as [`crate::job::run`]
    /// estimates them once the data's length is known and before the model is built.
    pub max_run_bytes: u64,
    pub task: TaskLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_steps: 10_000_000,
            max_epochs: 10_000,
            max_batch_size: 4096,
            max_checkpoints: 10_000,
            max_reports: 1_000_000,
            max_run_bytes: 16 << 30,
            task: TaskLimits::default(),
        }
    }
}

fn bad(field: &str, message: impl Into<String>) -> SpecError {
    SpecError { field: field.to_string(), message: message.into() }
}

impl<F> TrainSpec<F> {
    /// The one parse of a run: every value checked, every size bounded.
    pub fn parse(raw: RawSpec<F>, limits: &Limits) -> Result<Self, SpecError> {
        if raw.model.is_empty() || raw.model.len() > 4096 {
            return Err(bad("model", "must be a base model's name (or, on the command line, a folder) of 1 to 4096 bytes"));
        }
        raw.task.validate(&limits.task)?;
        check_hyperparameters(&raw.hyperparameters, limits)?;
        if let Some(each) = raw.task.task().drawn_values_per_sample() {
            let max = limits.task.max_generated_values;
            if raw.hyperparameters.batch_size.checked_mul(each).is_none_or(|v| v > max) {
                return Err(bad(
                    "hyperparameters.batch_size",
                    format!(
                        "{} samples of {each} values drawn per step exceed the {max} values a generated batch may hold",
                        raw.hyperparameters.batch_size
                    ),
                ));
            }
        }
        if raw.method.kind != "fpt" {
            return Err(bad("method.type", format!("method `{}` is not supported (fpt)", raw.method.kind)));
        }
        let device =
            DeviceKind::parse(&raw.device).ok_or_else(|| bad("device", format!("device `{}` is not one of any, cpu, cuda", raw.device)))?;
        if raw.task.needs_file() && raw.files.train.is_none() {
            return Err(bad("training_file", format!("task `{}` needs a training file", raw.task.name())));
        }
        if !raw.task.needs_file() {
            // A file the task would not read is a mistake the client should hear of, not a run
            // that silently trained on something else.
            let given = [
                ("training_file", raw.files.train.is_some()),
                ("validation_file", raw.files.valid.is_some()),
                ("test_file", raw.files.test.is_some()),
            ];
            if let Some((field, _)) = given.iter().find(|(_, g)| *g) {
                return Err(bad(field, format!("task `{}` generates its own data and reads no file: leave it out", raw.task.name())));
            }
            if raw.hyperparameters.n_epochs.is_some() && raw.task.task().drawn_values_per_sample().is_some() {
                let why = format!("task `{}` draws its data afresh: it has no epochs; give n_steps", raw.task.name());
                return Err(bad("hyperparameters.n_epochs", why));
            }
            if raw.hyperparameters.refit {
                let why =
                    format!("task `{}` draws fresh training data every step: it has no validation samples to refit on", raw.task.name());
                return Err(bad("hyperparameters.refit", why));
            }
        }
        Ok(Self {
            model: raw.model,
            task: raw.task,
            hyperparameters: raw.hyperparameters,
            switches: raw.method.fpt,
            seed: raw.seed,
            files: raw.files,
            device,
        })
    }

    /// The same run with its files named another way (uploaded ids as the paths they are kept at).
    pub fn with_files<G>(self, files: DataFiles<G>) -> TrainSpec<G> {
        TrainSpec {
            model: self.model,
            task: self.task,
            hyperparameters: self.hyperparameters,
            switches: self.switches,
            seed: self.seed,
            files,
            device: self.device,
        }
    }

    pub fn method(&self) -> Method {
        Method::fpt(self.switches)
    }
}

/// Ranges serde cannot check, and the bounds of [`Limits`]; checked again once `n_epochs` has
/// become a number of steps.
pub(crate) fn check_hyperparameters(h: &TrainConfig, limits: &Limits) -> Result<(), SpecError> {
    let field = |f: &str| format!("hyperparameters.{f}");
    let err = |f: &str, m: String| Err(bad(&field(f), m));
    if h.n_steps == 0 || h.n_steps > limits.max_steps {
        return err("n_steps", format!("must be within 1..={}", limits.max_steps));
    }
    if let Some(e) = h.n_epochs {
        if e == 0 || e > limits.max_epochs {
            return err("n_epochs", format!("must be a whole number of epochs within 1..={}", limits.max_epochs));
        }
    }
    for (name, v) in [("batch_size", h.batch_size), ("micro_batch_size", h.micro_batch_size), ("eval_batch_size", h.eval_batch_size)] {
        if v == 0 || v > limits.max_batch_size {
            return err(name, format!("must be within 1..={}", limits.max_batch_size));
        }
    }
    if !(h.learning_rate.is_finite() && h.learning_rate > 0.0 && h.learning_rate < 10.0) {
        return err("learning_rate", "must be a positive number below 10".into());
    }
    if !(0.0..1.0).contains(&h.beta1) {
        return err("beta1", "must be within [0, 1)".into());
    }
    if !(0.0..1.0).contains(&h.beta2) {
        return err("beta2", "must be within [0, 1)".into());
    }
    if !(h.eps.is_finite() && h.eps > 0.0) {
        return err("eps", "must be a positive number".into());
    }
    if !(h.weight_decay.is_finite() && h.weight_decay >= 0.0) {
        return err("weight_decay", "must be >= 0".into());
    }
    // With `n_epochs` the steps are known once the data is: the warm-up is checked then.
    if h.n_epochs.is_none() && h.warmup_steps > h.n_steps {
        return err("warmup_steps", format!("must be at most n_steps ({})", h.n_steps));
    }
    if !(h.grad_clip >= 0.0 && h.grad_clip.is_finite()) {
        return err("grad_clip", "must be >= 0 (0 disables clipping)".into());
    }
    if h.eval_every == 0 {
        return err("eval_every", "must be at least 1".into());
    }
    if h.log_every == 0 {
        return err("log_every", "must be at least 1".into());
    }
    if h.checkpoint_every > 0 && h.n_steps.div_ceil(h.checkpoint_every) > limits.max_checkpoints {
        return err(
            "checkpoint_every",
            format!(
                "{} steps at one checkpoint every {} would write more than {} checkpoints",
                h.n_steps, h.checkpoint_every, limits.max_checkpoints
            ),
        );
    }
    let report_every = h.log_every.min(h.eval_every);
    if h.n_steps.div_ceil(report_every) > limits.max_reports {
        return err(
            if h.log_every <= h.eval_every { "log_every" } else { "eval_every" },
            format!("{} steps at one report every {report_every} would write more than {} reports", h.n_steps, limits.max_reports),
        );
    }
    if !(h.validation_fraction > 0.0 && h.validation_fraction < 1.0) {
        return err("validation_fraction", "must be within (0, 1)".into());
    }
    if h.backbone_dropout.is_some_and(|p| !(0.0..1.0).contains(&p)) {
        return err("backbone_dropout", "must be within [0, 1)".into());
    }
    let max = crate::model::fpt::MAX_ENSEMBLE_MEMBERS;
    if !(1..=max).contains(&h.ensemble) {
        return err("ensemble", format!("must be within 1..={max} (members of the ensemble)"));
    }
    Ok(())
}

/// A job's `suffix`: what the fine-tuned model's id carries.
pub fn check_suffix(s: &str) -> Result<(), SpecError> {
    if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(bad("suffix", "1 to 64 characters of letters, digits, `-` and `_`"));
    }
    Ok(())
}

/// A job's `metadata`, bounded as OpenAI bounds it: at most 16 pairs, keys of at most 64
/// characters, string values of at most 512.
pub fn check_metadata(m: &serde_json::Map<String, serde_json::Value>) -> Result<(), SpecError> {
    if m.len() > 16 {
        return Err(bad("metadata", format!("{} pairs; at most 16", m.len())));
    }
    for (k, v) in m {
        if k.is_empty() || k.chars().count() > 64 {
            return Err(bad("metadata", "keys must be 1 to 64 characters"));
        }
        match v.as_str() {
            Some(s) if s.chars().count() <= 512 => {}
            Some(_) => return Err(bad(&format!("metadata.{k}"), "values must be at most 512 characters")),
            None => return Err(bad(&format!("metadata.{k}"), "values must be strings")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(task: serde_json::Value, hyper: serde_json::Value) -> RawSpec<String> {
        RawSpec {
            model: "tiny".into(),
            task: serde_json::from_value(task).unwrap(),
            hyperparameters: serde_json::from_value(hyper).unwrap(),
            method: Method::default(),
            seed: 0,
            files: DataFiles::default(),
            device: "any".into(),
        }
    }

    fn field_of(r: RawSpec<String>) -> String {
        TrainSpec::parse(r, &Limits::default()).unwrap_err().field
    }

    fn xor() -> serde_json::Value {
        serde_json::json!({"type": "bit_xor"})
    }

    #[test]
    fn a_good_spec_parses_with_its_values() {
        let s = TrainSpec::parse(raw(xor(), serde_json::json!({"n_steps": 7})), &Limits::default()).unwrap();
        assert_eq!((s.hyperparameters.n_steps, s.device, s.seed), (7, DeviceKind::Any, 0));
    }

    #[test]
    fn every_hyperparameter_error_names_its_field() {
        let cases = [
            (serde_json::json!({"n_steps": 0}), "hyperparameters.n_steps"),
            (serde_json::json!({"n_steps": u64::MAX}), "hyperparameters.n_steps"),
            (serde_json::json!({"n_epochs": 0}), "hyperparameters.n_epochs"),
            (serde_json::json!({"batch_size": 0}), "hyperparameters.batch_size"),
            (serde_json::json!({"batch_size": 5000}), "hyperparameters.batch_size"),
            (serde_json::json!({"micro_batch_size": 0}), "hyperparameters.micro_batch_size"),
            (serde_json::json!({"eval_batch_size": 1_000_000}), "hyperparameters.eval_batch_size"),
            (serde_json::json!({"learning_rate": 10.0}), "hyperparameters.learning_rate"),
            (serde_json::json!({"beta1": 1.0}), "hyperparameters.beta1"),
            (serde_json::json!({"beta2": -0.1}), "hyperparameters.beta2"),
            (serde_json::json!({"eps": 0.0}), "hyperparameters.eps"),
            (serde_json::json!({"weight_decay": -1.0}), "hyperparameters.weight_decay"),
            (serde_json::json!({"n_steps": 10, "warmup_steps": 11}), "hyperparameters.warmup_steps"),
            (serde_json::json!({"grad_clip": -1.0}), "hyperparameters.grad_clip"),
            (serde_json::json!({"eval_every": 0}), "hyperparameters.eval_every"),
            (serde_json::json!({"log_every": 0}), "hyperparameters.log_every"),
            (serde_json::json!({"n_steps": 20_000, "checkpoint_every": 1}), "hyperparameters.checkpoint_every"),
            (serde_json::json!({"n_steps": 10_000_000, "log_every": 1, "checkpoint_every": 0}), "hyperparameters.log_every"),
            (serde_json::json!({"validation_fraction": 1.0}), "hyperparameters.validation_fraction"),
            (serde_json::json!({"backbone_dropout": 1.0}), "hyperparameters.backbone_dropout"),
            // Bit XOR is generated: nothing to refit on.
            (serde_json::json!({"refit": true}), "hyperparameters.refit"),
        ];
        for (hyper, field) in cases {
            assert_eq!(field_of(raw(xor(), hyper.clone())), field, "{hyper}");
        }
    }

    #[test]
    fn every_top_level_error_names_its_field() {
        let mut r = raw(xor(), serde_json::json!({}));
        r.model = String::new();
        assert_eq!(field_of(r), "model");
        let mut r = raw(xor(), serde_json::json!({}));
        r.method.kind = "lora".into();
        assert_eq!(field_of(r), "method.type");
        let mut r = raw(xor(), serde_json::json!({}));
        r.device = "tpu".into();
        assert_eq!(field_of(r), "device");
        let mut r = raw(xor(), serde_json::json!({}));
        r.seed = u64::MAX;
        assert!(TrainSpec::parse(r, &Limits::default()).is_ok(), "every u64 is a seed");
        let r = raw(serde_json::json!({"type": "mnist"}), serde_json::json!({}));
        assert_eq!(field_of(r), "training_file");
    }

    #[test]
    fn task_sizes_are_bounded_before_anything_is_allocated() {
        let cases = [
            (serde_json::json!({"type": "bit_xor", "n_bits": 5, "n_valid": 1_000_000_000_000u64}), "task.n_valid"),
            (serde_json::json!({"type": "bit_xor", "n_bits": 1u64 << 63}), "task.n_bits"),
            (serde_json::json!({"type": "bit_memory", "n_bits": 100000, "patch_size": 10}), "task.n_bits"),
            (serde_json::json!({"type": "listops", "generate": true, "n_train": 100_000_000}), "task.n_train"),
            (serde_json::json!({"type": "listops", "max_len": 0}), "task.max_len"),
            (
                serde_json::json!({"type": "image_classification", "height": 8, "width": 8, "channels": 1u64 << 61, "num_classes": 2}),
                "task.channels",
            ),
            (
                serde_json::json!({"type": "image_classification", "height": 1 << 20, "width": 1 << 20, "patch_size": 1, "num_classes": 2}),
                "task.height",
            ),
            (serde_json::json!({"type": "sequence_classification", "input_dim": 4, "num_classes": 1u64 << 40}), "task.num_classes"),
            (serde_json::json!({"type": "sequence_classification", "vocab_size": 1u64 << 40, "num_classes": 2}), "task.vocab_size"),
            (serde_json::json!({"type": "sequence_classification", "input_dim": 1u64 << 40, "num_classes": 2}), "task.input_dim"),
            (serde_json::json!({"type": "sequence_classification", "input_dim": 3, "num_classes": 2, "max_len": 0}), "task.max_len"),
            (serde_json::json!({"type": "remote_homology", "num_classes": 1u64 << 40}), "task.num_classes"),
        ];
        for (task, field) in cases {
            let mut r = raw(task.clone(), serde_json::json!({}));
            r.files.train = Some("f".into());
            assert_eq!(field_of(r), field, "{task}");
        }
    }

    #[test]
    fn a_drawn_batch_of_a_bit_task_is_bounded() {
        let big = serde_json::json!({"type": "bit_memory", "n_bits": 16000, "patch_size": 100, "n_patterns": 64, "n_valid": 200});
        assert_eq!(field_of(raw(big.clone(), serde_json::json!({"batch_size": 4096}))), "hyperparameters.batch_size");
        assert!(TrainSpec::parse(raw(big, serde_json::json!({"batch_size": 16})), &Limits::default()).is_ok());
    }

    #[test]
    fn suffix_and_metadata_are_bounded() {
        assert!(check_suffix("ok-1").is_ok());
        assert!(check_suffix(&"x".repeat(64)).is_ok());
        assert_eq!(check_suffix(&"x".repeat(65)).unwrap_err().field, "suffix");
        let m = |v: serde_json::Value| v.as_object().unwrap().clone();
        assert!(check_metadata(&m(serde_json::json!({"k": "v"}))).is_ok());
        assert_eq!(check_metadata(&m(serde_json::json!({"k": "x".repeat(513)}))).unwrap_err().field, "metadata.k");
        assert_eq!(check_metadata(&m(serde_json::json!({"k": 1}))).unwrap_err().field, "metadata.k");
        let many: serde_json::Map<_, _> = (0..17).map(|i| (format!("k{i}"), serde_json::json!("v"))).collect();
        assert_eq!(check_metadata(&many).unwrap_err().field, "metadata");
        let long_key: serde_json::Map<_, _> = [("k".repeat(65), serde_json::json!("v"))].into_iter().collect();
        assert_eq!(check_metadata(&long_key).unwrap_err().field, "metadata");
    }
}
