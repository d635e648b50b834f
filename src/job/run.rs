//! Building a run and summing it up, in one place for every caller: `fpt train` and `fpt sweep`,
//! the experiment runner, the service's workers, and the API's up-front check of a job's data.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::Device;

use super::request::AutoField;
use super::spec::{check_hyperparameters, Limits, TrainSpec};
use crate::metrics::{deserialize_map, Direction, MetricMap};
use crate::model::fpt::{paper_param_count, FptModel, InputKind, ModelSpec, ParamReport};
use crate::model::{BaseModel, ModelRegistry, Precision};
use crate::tasks::{DataSources, TaskData};
use crate::train::lr_search::SearchRecord;
use crate::train::{Control, Ending, Metrics, Outcome, Progress, TrainConfig, Trainer};

/// A run's base model and data, loaded, with its step budget resolved.
pub struct Prepared {
    pub base: BaseModel,
    pub task: TaskData,
    /// The spec's hyperparameters with `n_epochs` turned into `n_steps` for the loaded data.
    pub hyperparameters: TrainConfig,
    /// Where the validation split came from, in words (see [`Protocol`]).
    pub validation_source: String,
}

/// How a run's numbers were obtained: the checkpoint kept is chosen on the validation split, never
/// on the test split; the number a run is judged by is the test split's at that checkpoint when
/// the data has one, else the validation split's (whose best it is, so optimistic).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Protocol {
    /// `test` or `validation`: the split of `reported`.
    pub reported_split: String,
    /// The primary metric on that split, at the kept checkpoint (the best validation value when
    /// there is no test split).
    pub reported: Option<f64>,
    pub validation: String,
    pub train_samples: usize,
    pub valid_samples: usize,
    pub test_samples: usize,
}

/// Why a run could not be prepared, and the spec's field it is about (`model`, `training_file`,
/// `validation_file`, `task`, `hyperparameters.n_epochs`): each edge words it its own way.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {error:#}")]
pub struct PrepareError {
    pub field: String,
    pub error: anyhow::Error,
}

fn at(field: &'static str) -> impl FnOnce(anyhow::Error) -> PrepareError {
    move |error| PrepareError { field: field.to_string(), error }
}

/// Resolves the base model and loads the data against its positions.
pub fn prepare_data(spec: &TrainSpec<PathBuf>, registry: &ModelRegistry, limits: &Limits) -> Result<Prepared, PrepareError> {
    // A job stored before today's bounds is held to them before anything is allocated for it.
    spec.task.validate(&limits.task).map_err(|e| PrepareError { field: e.field.clone(), error: e.into() })?;
    let base = registry.resolve(&spec.model).map_err(at("model"))?;
    let max_positions = base.backbone_config().map_err(at("model"))?.max_positions as usize;
    let sources = DataSources {
        train: spec.files.train.as_deref(),
        valid: spec.files.valid.as_deref(),
        test: spec.files.test.as_deref(),
        valid_fraction: spec.hyperparameters.validation_fraction,
        seed: spec.seed,
        max_positions,
        fitted: None,
    };
    let task = TaskData::load(&spec.task, &sources).map_err(|e| {
        let msg = format!("{e:#}");
        let names = |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| msg.contains(&p.display().to_string()));
        let field = if names(&spec.files.valid) {
            "validation_file"
        } else if spec.task.needs_file() {
            "training_file"
        } else {
            "task"
        };
        PrepareError { field: field.to_string(), error: e }
    })?;
    let hyperparameters = budget(&spec.hyperparameters, task.info.train_samples, limits)?;
    let config = base.backbone_config().map_err(at("model"))?;
    let h = &hyperparameters;
    let need = run_bytes(&config, task.info.seq_len as u64, h.batch_size.min(h.micro_batch_size) as u64, h.eval_batch_size as u64);
    if need > limits.max_run_bytes {
        return Err(PrepareError {
            field: "hyperparameters.micro_batch_size".into(),
            error: anyhow::anyhow!(
                "this run would take about {} MiB (passes of {} rows of {} tokens through {} layers of {}), more than the {} MiB a run may; \
                 lower micro_batch_size (and eval_batch_size), or the sequence length",
                need >> 20,
                h.batch_size.min(h.micro_batch_size),
                task.info.seq_len,
                config.layers,
                config.hidden,
                limits.max_run_bytes >> 20
            ),
        });
    }
    let validation_source = if !spec.task.needs_file() {
        "generated, from a seed no training step draws from".to_string()
    } else if spec.files.valid.is_some() {
        "the validation file".to_string()
    } else {
        format!("{:.0}% of the training file, held out (the seed's shuffle)", 100.0 * spec.hyperparameters.validation_fraction)
    };
    Ok(Prepared { base, task, hyperparameters, validation_source })
}

/// A generous estimate of the bytes a run takes: the frozen weights (three copies: the weights,
/// oneDNN's packed forward and backward layouts), and the larger of a training pass of
/// `train_rows` rows of `seq_len` tokens, which keeps every layer's activations for the backward
/// (the residual stream, the feed-forward's inner states, attention's probabilities twice for
/// dropout's mask), and an evaluation pass of `eval_rows`, which keeps about one layer's; in fp32.
fn run_bytes(c: &crate::model::BackboneConfig, seq_len: u64, train_rows: u64, eval_rows: u64) -> u64 {
    let (h, inner, layers, heads) = (c.hidden.max(1) as u64, c.inner.max(1) as u64, c.layers.max(1) as u64, c.heads.max(1) as u64);
    let weights = layers.saturating_mul(4 * h * h + 2 * h * inner).saturating_mul(4 * 3);
    let per_layer = seq_len.saturating_mul(12 * h + 3 * inner).saturating_add(2 * heads * seq_len.saturating_mul(seq_len));
    let train = train_rows.saturating_mul(layers).saturating_mul(per_layer);
    let eval = eval_rows.saturating_mul(2).saturating_mul(per_layer);
    weights.saturating_add(train.max(eval).saturating_mul(4))
}

/// `n_steps` for `n_epochs` passes over `n_train` samples (bit tasks, with no training set, keep
/// `n_steps`), and every bound that depends on the step count checked against it.
pub fn budget(h: &TrainConfig, n_train: usize, limits: &Limits) -> Result<TrainConfig, PrepareError> {
    let mut h = h.clone();
    if let Some(e) = h.n_epochs.filter(|_| n_train > 0) {
        let steps = e.saturating_mul(n_train as u64).div_ceil(h.batch_size as u64).max(1);
        if steps > limits.max_steps {
            return Err(PrepareError {
                field: "hyperparameters.n_epochs".into(),
                error: anyhow::anyhow!(
                    "{e} epochs of {n_train} samples in batches of {} are {steps} steps, more than {}",
                    h.batch_size,
                    limits.max_steps
                ),
            });
        }
        h.n_steps = steps;
        h.n_epochs = None;
        check_hyperparameters(&h, limits).map_err(|e| PrepareError { field: e.field.clone(), error: e.into() })?;
    }
    Ok(h)
}

/// A run ready to train: its data and its model.
pub struct Run {
    pub prepared: Prepared,
    pub model: FptModel,
}

/// Prepares the data and builds the model on `device`, its frozen weights in `precision`.
pub fn prepare(spec: &TrainSpec<PathBuf>, registry: &ModelRegistry, limits: &Limits, device: Device, precision: Precision) -> Result<Run> {
    let prepared = prepare_data(spec, registry, limits)?;
    let model = build_model(spec, &prepared, device, precision, None)?;
    Ok(Run { prepared, model })
}

/// The model of `spec` on its prepared data, drawn from its seed; an ensemble's later member's
/// (`layers_seed`) draws its new layers from its own.
fn build_model(
    spec: &TrainSpec<PathBuf>,
    prepared: &Prepared,
    device: Device,
    precision: Precision,
    layers_seed: Option<u64>,
) -> Result<FptModel> {
    let model_spec = ModelSpec {
        base: &prepared.base,
        shape: prepared.task.shape,
        switches: spec.switches,
        task: serde_json::to_value(&spec.task)?,
        device,
        seed: spec.seed,
        frozen_kind: precision.frozen_kind(device),
    };
    let model = match layers_seed {
        None => FptModel::new(model_spec)?,
        Some(s) => FptModel::member(model_spec, s)?,
    };
    Ok(model.with_backbone_dropout(prepared.hyperparameters.backbone_dropout).with_task_state(prepared.task.fitted.clone()))
}

/// The seed of an ensemble's member `m`: the run's own for the first, then draws apart from it
/// (so that the members of seed 0 and of seed 1 are not the same runs).
pub fn member_seed(seed: u64, m: usize) -> u64 {
    if m == 0 {
        seed
    } else {
        crate::tasks::step_seed(seed ^ MEMBER_SALT, m as u64)
    }
}

const MEMBER_SALT: u64 = 0x00e5_e3b1e;

/// Where member `m` of an ensemble checkpoints: the run's folder for the first, a folder in it
/// for each other.
fn member_dir(ckpt: &Path, m: usize) -> PathBuf {
    if m == 0 {
        ckpt.to_path_buf()
    } else {
        ckpt.join(format!("member-{m}"))
    }
}

impl Run {
    /// The trainer of this run, checkpointing into `checkpoint_dir`.
    pub fn trainer(&self, seed: u64, checkpoint_dir: PathBuf, metadata: HashMap<String, String>) -> Trainer<'_> {
        Trainer {
            model: &self.model,
            task: &self.prepared.task,
            cfg: self.prepared.hyperparameters.clone(),
            seed,
            checkpoint_dir,
            metadata,
            stop_at: None,
        }
    }

    /// The summary of this run's outcome (and of its learning-rate search, when it had one).
    pub fn summary(&self, o: &Outcome, seed: u64, search: Option<SearchRecord>) -> RunSummary {
        let h = &self.prepared.hyperparameters;
        let steps = search.iter().flat_map(|s| &s.trials).filter_map(|t| t.rungs.last()).map(|r| r.step).sum::<u64>();
        // Every trial's steps passed tokens through the model too (the winner's are the run's own).
        let trial_steps = steps.saturating_sub(search.as_ref().and_then(|s| s.winner_steps()).unwrap_or(0));
        let refit_steps = o.refit.as_ref().map_or(0, |r| r.step);
        let tokens = (o.steps + trial_steps + refit_steps)
            .saturating_mul(h.batch_size as u64)
            .saturating_mul(self.prepared.task.info.seq_len as u64);
        let lr = search.as_ref().and_then(|s| s.chosen).unwrap_or(h.learning_rate);
        let info = &self.prepared.task.info;
        let tested = o.test.is_some();
        let protocol = Protocol {
            reported_split: if tested { "test" } else { "validation" }.to_string(),
            reported: if tested { o.test.as_ref().and_then(|t| t.metrics.get(o.primary).copied()) } else { o.best_valid },
            validation: match &o.refit {
                Some(r) => format!(
                    "{}; then refit on the training and validation samples together ({}) to the step chosen on validation ({})",
                    self.prepared.validation_source, r.train_samples, r.step
                ),
                None => self.prepared.validation_source.clone(),
            },
            train_samples: info.train_samples,
            valid_samples: info.valid_samples,
            test_samples: info.test_samples,
        };
        RunSummary {
            trained_tokens: Some(tokens),
            learning_rate_search: search,
            protocol: Some(protocol),
            refit: o.refit.clone(),
            ..RunSummary::new(o, &self.model.param_report(), self.paper_count(), lr, seed)
        }
    }

    /// The paper's count of trained parameters for this backbone and task (continuous inputs only).
    fn paper_count(&self) -> Option<i64> {
        let c = self.prepared.base.backbone_config().ok()?;
        let task = &self.prepared.task;
        match task.shape.input {
            InputKind::Continuous { dim } => Some(paper_param_count(
                c.hidden,
                c.layers,
                dim,
                task.shape.output_dim * task.shape.readout_tokens,
                task.info.seq_len as i64,
            )),
            InputKind::Tokens { .. } => None,
        }
    }
}

fn accuracy() -> String {
    "accuracy".into()
}

/// How a finished run went: what `fpt train` prints and a job's `result` holds. Metric keys are
/// named by split and metric (`valid_accuracy`, `test_loss`), plus `best_valid_<primary metric>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunSummary {
    pub steps: u64,
    #[serde(default)]
    pub early_stopped: bool,
    #[serde(flatten, deserialize_with = "deserialize_map")]
    pub metrics: MetricMap,
    /// The metric that picked the kept adapter, and which way it improves (results stored before
    /// metrics had names were all accuracy).
    #[serde(default = "accuracy")]
    pub primary_metric: String,
    #[serde(default)]
    pub direction: Direction,
    pub best_step: Option<u64>,
    pub samples_per_second: f64,
    pub wall_seconds: f64,
    #[serde(default)]
    pub trainable_parameters: Option<i64>,
    #[serde(default)]
    pub total_parameters: Option<i64>,
    #[serde(default)]
    pub paper_trained_parameters: Option<i64>,
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default)]
    pub seed: Option<u64>,
    /// Token positions the training steps passed through the model (steps x batch x sequence
    /// length): OpenAI's `trained_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_tokens: Option<u64>,
    /// Where `fpt train` wrote the kept adapter (jobs store theirs as a model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<PathBuf>,
    /// The data's trivial predictor (its values: `trivial_valid_<primary metric>` and
    /// `trivial_test_<primary metric>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trivial_predictor: Option<String>,
    /// Set when the run ended no better than its data's trivial predictor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// A classifier's confusion on the validation split at the kept adapter (the checkpoint of
    /// `best_step`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confusion: Option<crate::train::confusion::Confusion>,
    /// Which split each number is from and where the validation split came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// The learning-rate search of a run at `learning_rate: "auto"`: its trials, their validation
    /// values at each rung, and the rate chosen (`lr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate_search: Option<SearchRecord>,
    /// The refit of a run at `refit: true`: the step it trained to, on how many samples. The
    /// adapter and the test values are the refit's; the validation values are the run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refit: Option<crate::train::refit::Refit>,
    /// An ensemble's members (`ensemble` above 1), each trained as a whole run of its own: the
    /// summary's test values are the ensemble's, and so is its confusion but after a refit, its
    /// time and tokens all members', and its other values (steps, validation, parameters per
    /// adapter) the first member's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<Vec<Member>>,
}

/// One member of an ensemble, as its own run went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Member {
    pub seed: u64,
    pub lr: Option<f64>,
    pub best_step: Option<u64>,
    /// Its primary metric on the reported split (see [`Protocol`]), on its own.
    pub reported: Option<f64>,
}

impl Member {
    fn of(s: &RunSummary) -> Self {
        Member { seed: s.seed.unwrap_or(0), lr: s.lr, best_step: s.best_step, reported: s.protocol.as_ref().and_then(|p| p.reported) }
    }
}

impl RunSummary {
    pub fn new(o: &Outcome, params: &ParamReport, paper: Option<i64>, lr: f64, seed: u64) -> Self {
        let mut metrics = o.train.clone();
        if let Some(v) = &o.valid {
            metrics.extend(v.prefixed("valid_"));
        }
        if let Some(t) = &o.test {
            metrics.extend(t.prefixed("test_"));
        }
        if let Some(b) = o.best_valid.filter(|b| b.is_finite()) {
            metrics.insert(format!("best_valid_{}", o.primary), b);
        }
        if let Some(t) = &o.trivial {
            metrics.insert(format!("trivial_valid_{}", o.primary), t.value);
        }
        if let Some(t) = o.trivial_test {
            metrics.insert(format!("trivial_test_{}", o.primary), t);
        }
        Self {
            steps: o.steps,
            early_stopped: o.ending == crate::train::Ending::EarlyStopped,
            metrics,
            primary_metric: o.primary.to_string(),
            direction: o.direction,
            best_step: o.best_step,
            samples_per_second: o.samples_per_second,
            wall_seconds: o.wall_seconds,
            trainable_parameters: Some(params.trained),
            total_parameters: Some(params.total),
            paper_trained_parameters: paper,
            lr: Some(lr),
            seed: Some(seed),
            trained_tokens: None,
            adapter: None,
            warning: o.no_better_than.as_ref().map(|t| crate::train::no_better_message(o.primary, o.best_valid.unwrap_or(f64::NAN), t)),
            confusion: o.confusion.clone(),
            learning_rate_search: None,
            refit: None,
            protocol: None,
            trivial_predictor: o.trivial.as_ref().map(|t| t.name.to_string()),
            ensemble: None,
        }
    }

    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).copied()
    }

    /// The best validation value of the primary metric.
    pub fn best_valid(&self) -> Option<f64> {
        self.metric(&format!("best_valid_{}", self.primary_metric))
    }
}

/// The folder a learning-rate search keeps its record and trials in: inside a command-line run's
/// checkpoint folder, beside a job's on a worker.
pub const SEARCH_DIR: &str = "search";

/// A run trained in this process: its summary and its learning curve (its learning-rate trials'
/// reports among them, marked by `trial`).
pub struct LocalRun {
    pub summary: RunSummary,
    pub curve: Vec<Metrics>,
}

/// Trains `spec` here, checkpointing into `ckpt`, and writes the kept adapter to `out`. A `ckpt`
/// holding a checkpoint of this same run resumes it; one of another run is refused (see
/// [`super::fingerprint`]) unless `force`, which starts afresh. `progress` sees every report as
/// it happens.
pub fn train_to_file(
    spec: &TrainSpec<PathBuf>,
    registry: &ModelRegistry,
    device: Device,
    precision: Precision,
    out: &Path,
    ckpt: &Path,
    force: bool,
    auto: &[AutoField],
    progress: &mut dyn FnMut(&Progress),
) -> Result<LocalRun> {
    // The operator's own machine: the memory estimate is the service's guard, not the command line's.
    let limits = Limits { max_run_bytes: u64::MAX, ..Limits::default() };
    let mut run = prepare(spec, registry, &limits, device, precision)?;
    if !auto.is_empty() {
        // What the flags left to the data, decided now that it is loaded (as a job's are at its creation).
        let n_train = run.prepared.task.info.train_samples;
        run.prepared.hyperparameters = budget(&super::auto::resolve(&spec.hyperparameters, auto, n_train), n_train, &limits)?;
    }
    let kind = precision.frozen_kind(device).map_or("fp32".to_string(), |k| format!("{k:?}").to_lowercase());
    let resolved = TrainSpec { hyperparameters: run.prepared.hyperparameters.clone(), ..spec.clone() };
    let print = super::fingerprint::Fingerprint::of(&resolved, &run.prepared.base, &kind)?;
    super::fingerprint::claim_folder(ckpt, &print, run.prepared.hyperparameters.n_steps, force)?;
    let info = &run.prepared.task.info;
    if info.truncated > 0 {
        eprintln!("note: {} samples were cut to the backbone's {} positions", info.truncated, run.model.max_positions());
    }
    let mut curve = Vec::new();
    let trained = train_members(
        &mut run,
        spec,
        device,
        precision,
        &Control::default(),
        HashMap::new(),
        MemberHooks {
            dirs: &mut |m| {
                let dir = member_dir(ckpt, m);
                Ok(MemberDirs { search: dir.join(SEARCH_DIR), checkpoints: dir })
            },
            progress: &mut |member, p| {
                progress(&p);
                match p {
                    // The curve is the first member's: the others' steps count from 0 again.
                    Progress::Metrics(m) if member == 0 => curve.push(m),
                    _ => {}
                }
            },
        },
    )?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let (_, mut summary) = finish_members(&mut run, trained, out)?;
    summary.adapter = Some(out.to_path_buf());
    Ok(LocalRun { summary, curve })
}

/// One run of an ensemble (or the one run): how it went, its seed and its summary.
pub struct Trained {
    pub outcome: Outcome,
    pub seed: u64,
    pub summary: RunSummary,
}

/// Where one member of a run keeps its checkpoints and its learning-rate search.
pub struct MemberDirs {
    pub checkpoints: PathBuf,
    pub search: PathBuf,
}

/// The caller's side of [`train_members`], each given the member's index.
pub struct MemberHooks<'a> {
    /// The member's folders, made ready (a job's restored from its store).
    pub dirs: &'a mut dyn FnMut(usize) -> Result<MemberDirs>,
    /// Every report of the member's.
    pub progress: &'a mut dyn FnMut(usize, Progress),
}

/// Trains the run's `ensemble` members one after another, each from the folders its hooks give it,
/// resuming from what they hold; stops after a member that did not finish (cancelled, paused,
/// interrupted), which is then the last. Each member after the first announces itself, and its
/// reports carry `member` (its messages say it).
pub fn train_members(
    run: &mut Run,
    spec: &TrainSpec<PathBuf>,
    device: Device,
    precision: Precision,
    control: &Control,
    metadata: HashMap<String, String>,
    hooks: MemberHooks,
) -> Result<Vec<Trained>> {
    let members = run.prepared.hyperparameters.ensemble;
    let mut trained = Vec::with_capacity(members);
    for m in 0..members {
        let seed = member_seed(spec.seed, m);
        if m > 0 {
            (hooks.progress)(m, Progress::Message(format!("ensemble member {} of {members} (seed {seed})", m + 1)));
            run.model = build_model(spec, &run.prepared, device, precision, Some(seed))?;
        }
        let at = (hooks.dirs)(m)?;
        let trainer = run.trainer(seed, at.checkpoints, metadata.clone());
        let (outcome, search) = trainer.train(&at.search, control, &mut |p| match p {
            Progress::Metrics(mut metrics) if m > 0 => {
                metrics.member = Some(m);
                (hooks.progress)(m, Progress::Metrics(metrics))
            }
            Progress::Message(s) if m > 0 => (hooks.progress)(m, Progress::Message(format!("ensemble member {}: {s}", m + 1))),
            p => (hooks.progress)(m, p),
        })?;
        let finished = matches!(outcome.ending, Ending::Finished | Ending::EarlyStopped);
        let summary = run.summary(&outcome, seed, search);
        trained.push(Trained { outcome, seed, summary });
        if !finished {
            break;
        }
    }
    Ok(trained)
}

/// The outcome and summary of a run's members: the one run's own; the last member's when it
/// stopped short (cancelled, paused, interrupted); else the ensemble's, written to `out` and
/// loaded in the run's model (see [`ensemble_summary`]), its outcome's adapter `out`.
pub fn finish_members(run: &mut Run, mut trained: Vec<Trained>, out: &Path) -> Result<(Outcome, RunSummary)> {
    let last = trained.last().context("a run has a member")?;
    let finished = matches!(last.outcome.ending, Ending::Finished | Ending::EarlyStopped);
    if trained.len() == 1 || !finished {
        let t = trained.pop().expect("a member");
        if finished {
            let kept = t.outcome.adapter.as_ref().context("training produced no adapter")?;
            std::fs::copy(kept, out).with_context(|| format!("writing {}", out.display()))?;
        }
        return Ok((t.outcome, t.summary));
    }
    let adapters = trained.iter().map(|t| t.outcome.adapter.clone().context("training produced no adapter")).collect::<Result<Vec<_>>>()?;
    let seeds: Vec<u64> = trained.iter().map(|t| t.seed).collect();
    crate::model::fpt::write_ensemble(out, &adapters, &seeds).with_context(|| format!("writing {}", out.display()))?;
    // The last member's model (the run's backbone) answers as the ensemble: no second backbone.
    run.model.load_ensemble(out)?;
    let summary = ensemble_summary(run, &trained);
    let mut outcome = trained.swap_remove(0).outcome;
    outcome.adapter = Some(out.to_path_buf());
    Ok((outcome, summary))
}

/// An ensemble's summary (its model the run's): its first member's, with the test values of the
/// ensemble itself, and its confusion but after a refit (whose members trained on the validation
/// split: the first member's from before its refit stays, as a single run's does), the time and
/// tokens of all its members, and each member's own in `ensemble`.
fn ensemble_summary(run: &Run, trained: &[Trained]) -> RunSummary {
    let first = &trained[0];
    let mut summary = first.summary.clone();
    let (task, batch) = (&run.prepared.task, run.prepared.hyperparameters.eval_batch_size);
    if let Some(test) = crate::train::evaluate(&run.model, task, crate::tasks::EvalSplit::Test, batch) {
        summary.metrics.retain(|k, _| !k.starts_with("test_"));
        summary.metrics.extend(test.prefixed("test_"));
        if let Some(p) = summary.protocol.as_mut().filter(|p| p.reported_split == "test") {
            p.reported = test.metrics.get(&summary.primary_metric).copied();
        }
    }
    if summary.confusion.is_some() && first.outcome.refit.is_none() {
        summary.confusion = crate::train::confusion::confusion(&run.model, task, crate::tasks::EvalSplit::Valid, batch);
    }
    summary.wall_seconds = trained.iter().map(|t| t.summary.wall_seconds).sum();
    summary.trained_tokens = trained.iter().map(|t| t.summary.trained_tokens).sum();
    summary.ensemble = Some(trained.iter().map(|t| Member::of(&t.summary)).collect());
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_reads_back_and_so_does_one_stored_before_metrics_had_names() {
        let s = RunSummary {
            steps: 10,
            early_stopped: false,
            metrics: MetricMap::from([("valid_accuracy".into(), 0.5), ("best_valid_accuracy".into(), 0.75)]),
            primary_metric: "accuracy".into(),
            direction: Direction::Higher,
            best_step: Some(5),
            samples_per_second: 1.0,
            wall_seconds: 2.0,
            trainable_parameters: Some(3),
            total_parameters: Some(4),
            paper_trained_parameters: None,
            lr: Some(1e-3),
            seed: Some(0),
            trained_tokens: Some(640),
            adapter: None,
            warning: Some("no better".into()),
            confusion: None,
            learning_rate_search: None,
            refit: None,
            protocol: None,
            trivial_predictor: None,
            ensemble: None,
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["valid_accuracy"], 0.5);
        assert_eq!(serde_json::from_value::<RunSummary>(v).unwrap(), s);
        let old = serde_json::json!({"steps": 3, "train_loss": 0.1, "train_accuracy": 1.0, "valid_loss": null,
            "valid_accuracy": 0.9, "best_valid_accuracy": 0.9, "best_step": 3, "test_accuracy": null, "test_loss": null,
            "samples_per_second": 5.0, "wall_seconds": 1.0, "early_stopped": false});
        let old: RunSummary = serde_json::from_value(old).unwrap();
        assert_eq!((old.best_valid(), old.metric("test_accuracy"), old.primary_metric.as_str()), (Some(0.9), None, "accuracy"));
    }

    #[test]
    fn the_run_estimate_grows_with_rows_and_length_and_fits_the_recipe() {
        let gpt2_small = crate::model::BackboneConfig {
            arch: crate::model::Arch::Gpt2,
            hidden: 768,
            layers: 12,
            heads: 12,
            max_positions: 1024,
            inner: 3072,
            activation: "gelu_new".into(),
            ln_eps: 1e-5,
            hidden_dropout: 0.1,
            embed_dropout: 0.1,
            attn_dropout: 0.1,
            initializer_range: 0.02,
        };
        // The paper's CIFAR-10 (64 tokens, batches of 16) fits easily; ListOps at 512 tokens too.
        assert!(run_bytes(&gpt2_small, 64, 16, 64) < 4 << 30);
        assert!(run_bytes(&gpt2_small, 512, 16, 64) < Limits::default().max_run_bytes);
        // Thousands of rows of a thousand tokens do not.
        assert!(run_bytes(&gpt2_small, 1024, 4096, 4096) > Limits::default().max_run_bytes);
        assert!(run_bytes(&gpt2_small, 128, 32, 64) > run_bytes(&gpt2_small, 64, 32, 64));
        assert!(run_bytes(&gpt2_small, 64, 64, 64) > run_bytes(&gpt2_small, 64, 32, 64));
    }

    #[test]
    fn epochs_become_steps_within_the_limits() {
        let h = TrainConfig { n_epochs: Some(2), batch_size: 10, ..TrainConfig::default() };
        assert_eq!(budget(&h, 55, &Limits::default()).unwrap().n_steps, 11);
        assert_eq!(budget(&h, 0, &Limits::default()).unwrap().n_steps, h.n_steps);
        let tight = Limits { max_steps: 10, ..Limits::default() };
        assert_eq!(budget(&h, 55, &tight).unwrap_err().field, "hyperparameters.n_epochs");
        // The steps epochs come to are held to the bounds that depend on them.
        let every_step = TrainConfig { n_epochs: Some(1000), checkpoint_every: 1, ..h.clone() };
        assert_eq!(budget(&every_step, 1000, &Limits::default()).unwrap_err().field, "hyperparameters.checkpoint_every");
        let warm = TrainConfig { warmup_steps: 100, ..h };
        assert_eq!(budget(&warm, 55, &Limits::default()).unwrap_err().field, "hyperparameters.warmup_steps");
    }
}
