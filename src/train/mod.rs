//! The training engine shared by the command line and the service's workers: one loop with
//! evaluation on whole splits, early stopping, atomic checkpoints, exact resume, progress reports
//! through a callback, and a control flag checked every step (cancel, pause, shutdown).
pub mod checkpoint;
pub mod confusion;
pub mod lr_search;
pub mod optim;
pub mod refit;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Kind;

use crate::metrics::{prefixed, Direction, MetricMap, Tally};
use crate::model::fpt::FptModel;
use crate::tasks::{step_seed, EvalSplit, TaskData};
use checkpoint::LoopState;
use optim::{Adam, Schedule};

/// Hyperparameters, with the reference code's defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub n_steps: u64,
    /// Whole passes over the training set instead of `n_steps` (file tasks): resolved into
    /// `n_steps` once the data is loaded. (`n_steps` is for anything finer.)
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "whole_epochs")]
    pub n_epochs: Option<u64>,
    pub batch_size: usize,
    /// Largest batch run in one forward pass; bigger batches accumulate gradients.
    pub micro_batch_size: usize,
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub schedule: Schedule,
    pub warmup_steps: u64,
    pub grad_clip: f64,
    pub eval_every: u64,
    pub eval_batch_size: usize,
    /// 0: only at the end.
    pub checkpoint_every: u64,
    /// Evaluations without a better validation accuracy before stopping; 0: never stop early.
    pub patience: u64,
    /// Stop once the run has gone as many steps without a better primary validation metric as it
    /// took to reach its best, and at least [`PLATEAU_EVALS`] evaluations (`"auto"` budgets set it):
    /// a task that converges early stops early, one still improving goes on.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stop_on_plateau: bool,
    /// Steps between progress reports.
    pub log_every: u64,
    pub validation_fraction: f64,
    /// `learning_rate: "auto"`: the run searches its learning rate first ([`lr_search`]); the rate
    /// it chooses replaces `learning_rate`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub search_learning_rate: bool,
    /// Once the run has chosen its step on validation, train again from the same initial adapter
    /// on the training and validation samples together, to that step, and keep that adapter
    /// ([`refit`]): for datasets so small that a quarter held out costs accuracy.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub refit: bool,
    /// Overrides the backbone's own dropouts (hidden, attention, embeddings; 0.1 in GPT-2 and MiniLM,
    /// which the recipe keeps). The input layer's 0.1 stays. None: the checkpoint's config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backbone_dropout: Option<f64>,
    /// Train this many adapters, each the whole run (its search and refit included) from its own
    /// seed on the same data split, and keep them as one ensemble adapter that answers their
    /// average (see [`crate::model::fpt::write_ensemble`]): for datasets so small that one run's
    /// seed moves its accuracy by points. 1: one adapter.
    #[serde(skip_serializing_if = "is_one")]
    pub ensemble: usize,
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// `n_epochs`: a whole number, as OpenAI's clients send it; `2.0` too, as jobs stored when epochs
/// could be fractional wrote it.
fn whole_epochs<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    let v = Option::<serde_json::Number>::deserialize(d)?;
    let Some(n) = v else { return Ok(None) };
    let whole = n.as_u64().or_else(|| n.as_f64().filter(|e| e.fract() == 0.0 && *e >= 0.0 && *e < 1e15).map(|e| e as u64));
    whole.map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!("n_epochs must be a whole number of epochs, found {n} (n_steps sets anything finer)"))
    })
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            n_steps: 2000,
            n_epochs: None,
            batch_size: 16,
            micro_batch_size: 64,
            learning_rate: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            grad_clip: 1.0,
            eval_every: 100,
            eval_batch_size: 64,
            checkpoint_every: 500,
            patience: 0,
            stop_on_plateau: false,
            log_every: 10,
            validation_fraction: 0.1,
            search_learning_rate: false,
            refit: false,
            backbone_dropout: None,
            ensemble: 1,
        }
    }
}

/// What a running job is asked to do; checked once per step.
#[derive(Clone, Default)]
pub struct Control(Arc<AtomicU8>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Run = 0,
    Cancel = 1,
    Pause = 2,
    /// The process is stopping: checkpoint and hand the job back.
    Shutdown = 3,
}

impl Control {
    pub fn set(&self, c: Command) {
        self.0.store(c as u8, Ordering::SeqCst);
    }

    pub fn get(&self) -> Command {
        match self.0.load(Ordering::SeqCst) {
            1 => Command::Cancel,
            2 => Command::Pause,
            3 => Command::Shutdown,
            _ => Command::Run,
        }
    }
}

/// A progress report: the `data` of the API's metrics events. `values` holds `train_loss` and
/// `train_<metric>` for the window since the last report, and `valid_loss` and `valid_<metric>`
/// when the report comes with an evaluation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub step: u64,
    pub total_steps: u64,
    #[serde(flatten, deserialize_with = "crate::metrics::deserialize_map")]
    pub values: MetricMap,
    /// The task's primary metric: `valid_<primary_metric>` is what picks the kept checkpoint.
    #[serde(default)]
    pub primary_metric: String,
    pub samples_per_second: f64,
    pub learning_rate: f64,
    pub eta_seconds: f64,
    /// The learning-rate trial this report is of (its index in the search's grid), when the run
    /// is searching its learning rate; none for the run itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<usize>,
    /// The ensemble member this report is of (1 for the second, ...), when the run trains an
    /// ensemble (`ensemble`); none for its first member, whose reports are the run's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<usize>,
}

impl Metrics {
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }
}

pub enum Progress {
    Metrics(Metrics),
    Checkpoint {
        step: u64,
        adapter: PathBuf,
        metrics: Option<Evaluation>,
    },
    Message(String),
    /// The learning-rate search's record, after each trial's rung and once it has chosen.
    Search(lr_search::SearchRecord),
}

/// A whole split, evaluated: its mean loss and its task's metrics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub metrics: MetricMap,
    pub samples: usize,
}

impl Evaluation {
    /// `<prefix>loss` and `<prefix><metric>` for every metric.
    pub fn prefixed(&self, prefix: &str) -> MetricMap {
        let mut m = prefixed(prefix, &self.metrics);
        if self.loss.is_finite() {
            m.insert(format!("{prefix}loss"), self.loss);
        }
        m
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    Finished,
    EarlyStopped,
    Cancelled,
    Paused,
    Interrupted,
    /// Stopped at [`Trainer::stop_at`], short of its budget, to go on later: a learning-rate trial
    /// between rungs (never the end of a job).
    Suspended,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub ending: Ending,
    pub steps: u64,
    /// `train_loss` and `train_<metric>` of the last report window.
    pub train: MetricMap,
    pub valid: Option<Evaluation>,
    /// The primary metric and which way it improves.
    pub primary: &'static str,
    pub direction: Direction,
    /// The best validation value of the primary metric, and its step.
    pub best_valid: Option<f64>,
    pub best_step: Option<u64>,
    pub test: Option<Evaluation>,
    pub samples_per_second: f64,
    pub wall_seconds: f64,
    /// The adapter to keep: the best by the primary validation metric, else the last.
    pub adapter: Option<PathBuf>,
    /// The data's trivial predictor (majority class, training mean, seasonal naive) and its
    /// primary metric on the validation split, and on the test split when there is one: the
    /// baseline every result is read against.
    pub trivial: Option<crate::tasks::Trivial>,
    pub trivial_test: Option<f64>,
    /// The trivial predictor, when the run's best validation value is no better than its.
    pub no_better_than: Option<crate::tasks::Trivial>,
    /// A classifier's confusion on the validation split, at the kept adapter.
    pub confusion: Option<confusion::Confusion>,
    /// The refit that replaced the kept adapter (and the test values), when the run had one.
    pub refit: Option<refit::Refit>,
}

/// What a run that is no better than its trivial predictor says.
pub fn no_better_message(metric: &str, best: f64, t: &crate::tasks::Trivial) -> String {
    format!(
        "the best validation {metric} ({best:.4}) is no better than {}'s ({:.4}): the adapter learned nothing useful; \
         check the inputs (their units, their normalize setting) and the learning rate",
        t.name, t.value
    )
}

/// Evaluates on a whole split (no dropout, no gradient).
pub fn evaluate(model: &FptModel, task: &TaskData, split: EvalSplit, batch: usize) -> Option<Evaluation> {
    let batches = task.eval_batches(split, batch);
    if batches.is_empty() {
        return None;
    }
    let (mut loss, mut tally, mut n) = (0.0, Tally::default(), 0usize);
    tch::no_grad(|| {
        for b in batches {
            let b = b.to_device(model.device);
            let logits = task.objective.answer(model, &b.inputs, b.lengths.as_ref());
            let s = task.objective.score(&logits, &b.targets);
            loss += f64::try_from(s.loss.to_kind(Kind::Double)).unwrap() * b.size() as f64;
            tally.merge(&s.tally);
            n += b.size() as usize;
        }
    });
    Some(Evaluation { loss: loss / n as f64, metrics: task.objective.metrics(&tally), samples: n })
}

/// A run whose loss went to NaN or infinity, or stayed far above where it started (more than
/// [`DIVERGED_FACTOR`] times the first step's loss, plus 1) for [`DIVERGED_EVALS`] evaluations in
/// a row: it ends failed (a job's `error.code` is `diverged`) instead of succeeding with an adapter
/// that learned nothing.
#[derive(Debug, thiserror::Error)]
#[error("the run diverged at step {step}: {reason}")]
pub struct Diverged {
    pub step: u64,
    pub reason: String,
}

pub const DIVERGED_FACTOR: f64 = 2.0;
pub const DIVERGED_EVALS: u64 = 3;
/// Evaluations without a better metric that a plateau takes at least (see `stop_on_plateau`).
pub const PLATEAU_EVALS: u64 = 3;

/// Counts an evaluation whose report window's mean loss is far above the run's start, failing the
/// run at the [`DIVERGED_EVALS`]th in a row.
fn diverging(state: &mut LoopState, step: u64) -> Result<(), Diverged> {
    let mean = state.window.loss / state.window.steps.max(1) as f64;
    let start = state.start_loss.unwrap_or(mean);
    state.evals_diverging = if mean > DIVERGED_FACTOR * start + 1.0 { state.evals_diverging + 1 } else { 0 };
    if state.evals_diverging < DIVERGED_EVALS {
        return Ok(());
    }
    let reason =
        format!("the training loss ({mean:.4}) has stayed far above its start ({start:.4}) for {DIVERGED_EVALS} evaluations; try a lower learning rate");
    Err(Diverged { step, reason })
}

/// The step of the last better value, when the run has gone as long without one as it took to
/// reach it (and at least [`PLATEAU_EVALS`] evaluations). A tie (the same accuracy at a lower loss)
/// may keep the later checkpoint, but it is no progress.
fn on_plateau(state: &LoopState, step: u64, eval_every: u64) -> Option<u64> {
    let best = state.improved_step.unwrap_or(0);
    (step - best >= best.max(PLATEAU_EVALS * eval_every)).then_some(best)
}

/// One run of training: the model, its data, and where its checkpoints go.
pub struct Trainer<'a> {
    pub model: &'a FptModel,
    pub task: &'a TaskData,
    pub cfg: TrainConfig,
    pub seed: u64,
    pub checkpoint_dir: PathBuf,
    /// Extra adapter metadata (job id, ...).
    pub metadata: HashMap<String, String>,
    /// Stop (evaluated and checkpointed) at this step, short of `cfg.n_steps`, whose schedule the
    /// steps still follow: a learning-rate trial's rung.
    pub stop_at: Option<u64>,
}

/// Throughput of the open report window (its sums live in the loop state, which checkpoints hold).
struct Window {
    samples: usize,
    started: Instant,
}

impl Window {
    fn new() -> Self {
        Self { samples: 0, started: Instant::now() }
    }
}

impl Trainer<'_> {
    /// [`Trainer::run`], after searching the learning rate when the config asks for it
    /// (`search_learning_rate`) and followed by the refit when it asks for one (`refit`): the
    /// search's trials and the refit's checkpoints are kept in `search_dir`.
    pub fn train(
        &self,
        search_dir: &std::path::Path,
        control: &Control,
        report: &mut dyn FnMut(Progress),
    ) -> Result<(Outcome, Option<lr_search::SearchRecord>)> {
        // The refit starts from the adapter this run starts from: the seed's, before any step.
        let init = self.cfg.refit.then(|| self.initial_adapter(search_dir)).transpose()?;
        let (outcome, record) = if self.cfg.search_learning_rate {
            let (o, r) = self.run_searching_learning_rate(search_dir, control, report)?;
            (o, Some(r))
        } else {
            (self.run(control, report)?, None)
        };
        let Some(init) = init else { return Ok((outcome, record)) };
        let lr = record.as_ref().and_then(|r| r.chosen).unwrap_or(self.cfg.learning_rate);
        Ok((self.refit(search_dir, &init, outcome, lr, control, report)?, record))
    }

    /// The adapter this run starts from (its seed's, before any step), saved in `dir` the first
    /// time: what every learning-rate trial and the refit start from.
    fn initial_adapter(&self, dir: &std::path::Path) -> Result<PathBuf> {
        let init = dir.join("init.adapter.safetensors");
        if !init.exists() {
            std::fs::create_dir_all(dir)?;
            self.model.save_adapter(&init, &self.metadata)?;
        }
        Ok(init)
    }

    /// Runs (or resumes, when the checkpoint folder has a checkpoint) until the step budget, early
    /// stopping, or a control command.
    pub fn run(&self, control: &Control, report: &mut dyn FnMut(Progress)) -> Result<Outcome> {
        let started = Instant::now();
        let cfg = &self.cfg;
        let objective = &self.task.objective;
        let primary = objective.primary();
        let params = self.model.trained().map(|p| p.tensor.shallow_clone()).collect();
        let mut adam = Adam::new(params, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay);
        let mut state = match checkpoint::restore(&self.checkpoint_dir, self.model, &mut adam)? {
            Some(s) => {
                report(Progress::Message(format!("resumed from the checkpoint of step {}", s.step)));
                s
            }
            None => LoopState::default(),
        };
        let mut window = Window::new();
        let mut last_valid = None;
        let mut trained_samples = 0usize;
        let mut ending = if state.stopped_early { Ending::EarlyStopped } else { Ending::Finished };
        let end = self.stop_at.map_or(cfg.n_steps, |s| s.min(cfg.n_steps));
        while state.step < end && !state.stopped_early {
            match control.get() {
                Command::Cancel => {
                    ending = Ending::Cancelled;
                    break;
                }
                Command::Pause | Command::Shutdown => {
                    ending = if control.get() == Command::Pause { Ending::Paused } else { Ending::Interrupted };
                    let adapter = checkpoint::save(&self.checkpoint_dir, self.model, &adam, &state, &self.metadata)?;
                    report(Progress::Checkpoint { step: state.step, adapter, metrics: None });
                    break;
                }
                Command::Run => {}
            }
            let lr = optim::learning_rate(cfg.learning_rate, cfg.schedule, cfg.warmup_steps, state.step, cfg.n_steps);
            let (loss, tally) = self.step(&mut adam, state.step, lr);
            if !loss.is_finite() {
                return Err(Diverged { step: state.step + 1, reason: format!("the training loss is {loss}") }.into());
            }
            state.start_loss.get_or_insert(loss);
            state.step += 1;
            trained_samples += cfg.batch_size;
            state.window.loss += loss;
            state.window.tally.merge(&tally);
            state.window.steps += 1;
            window.samples += cfg.batch_size;

            let step = state.step;
            let eval_now = step % cfg.eval_every == 0 || step == end;
            let ckpt_now = cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 || step == end;
            let valid = if eval_now { evaluate(self.model, self.task, EvalSplit::Valid, cfg.eval_batch_size) } else { None };
            let (mut stop_early, mut plateau) = (false, None);
            if eval_now {
                diverging(&mut state, step)?;
            }
            if let Some(v) = &valid {
                last_valid = Some(v.clone());
                let value = v.metrics.get(primary.name).copied().unwrap_or(f64::NAN);
                // A tie of the primary metric (a small validation split's accuracy often ties)
                // goes to the lower validation loss.
                let tie_won = state.best_valid == Some(value) && state.best_valid_loss.is_some_and(|l| v.loss < l);
                let improved = state.best_valid.is_none_or(|b| primary.direction.better(value, b));
                if improved {
                    state.improved_step = Some(step);
                }
                if improved || tie_won {
                    state.best_valid = Some(value);
                    state.best_valid_loss = Some(v.loss);
                    state.best_step = Some(step);
                    state.evals_since_best = 0;
                    self.model.save_adapter(&checkpoint::best_path(&self.checkpoint_dir), &self.metadata)?;
                } else {
                    state.evals_since_best += 1;
                    stop_early = cfg.patience > 0 && state.evals_since_best >= cfg.patience;
                }
                if cfg.stop_on_plateau && !stop_early {
                    plateau = on_plateau(&state, step, cfg.eval_every);
                    stop_early = plateau.is_some();
                }
            }
            if step % cfg.log_every == 0 || eval_now || stop_early {
                let secs = window.started.elapsed().as_secs_f64().max(1e-9);
                let sps = window.samples as f64 / secs;
                let w = std::mem::take(&mut state.window);
                state.last_train = prefixed("train_", &objective.metrics(&w.tally));
                state.last_train.insert("train_loss".into(), w.loss / w.steps as f64);
                let mut values = state.last_train.clone();
                if let Some(v) = &valid {
                    values.extend(v.prefixed("valid_"));
                }
                report(Progress::Metrics(Metrics {
                    step,
                    total_steps: cfg.n_steps,
                    values,
                    primary_metric: primary.name.to_string(),
                    samples_per_second: sps,
                    learning_rate: lr,
                    eta_seconds: (cfg.n_steps - step) as f64 * cfg.batch_size as f64 / sps.max(1e-9),
                    trial: None,
                    member: None,
                }));
                window = Window::new();
            }
            state.stopped_early = stop_early;
            if ckpt_now || stop_early {
                let adapter = checkpoint::save(&self.checkpoint_dir, self.model, &adam, &state, &self.metadata)?;
                report(Progress::Checkpoint { step, adapter, metrics: valid });
            }
            if stop_early {
                ending = Ending::EarlyStopped;
                report(Progress::Message(match plateau {
                    Some(best) => format!("early stop at step {step}: no better validation {} since step {best} (a plateau)", primary.name),
                    None => format!("early stop at step {step}: no better validation {} in {} evaluations", primary.name, cfg.patience),
                }));
                break;
            }
        }
        if ending == Ending::Finished && state.step < cfg.n_steps {
            ending = Ending::Suspended;
        }
        if last_valid.is_none() && matches!(ending, Ending::Finished | Ending::EarlyStopped | Ending::Suspended) {
            // Resumed at its end (the same command again): the final state's validation metrics,
            // as the run that got there reported them.
            last_valid = evaluate(self.model, self.task, EvalSplit::Valid, cfg.eval_batch_size);
        }
        let best = checkpoint::best_path(&self.checkpoint_dir);
        let adapter =
            if best.exists() { Some(best) } else { checkpoint::latest(&self.checkpoint_dir)?.map(|l| self.checkpoint_dir.join(l.adapter)) };
        // A trial (run to a rung) is only compared on validation: its test and confusion wait
        // for the run it may become.
        let finished = matches!(ending, Ending::Finished | Ending::EarlyStopped) && self.stop_at.is_none();
        // A run that learned nothing its data's trivial predictor does not know says so.
        let trivial = if finished { self.task.trivial(EvalSplit::Valid) } else { None };
        let no_better_than = trivial.clone().filter(|t| state.best_valid.is_some_and(|b| !primary.direction.better(b, t.value)));
        if let Some(t) = &no_better_than {
            report(Progress::Message(no_better_message(primary.name, state.best_valid.unwrap_or(f64::NAN), t)));
        }
        // The kept adapter (chosen on validation) is what the confusion and the test describe.
        if let Some(a) = adapter.as_deref().filter(|_| finished) {
            let (tensors, _) = crate::model::weights::read_safetensors(a, self.model.device)?;
            self.model.assign(&tensors)?;
        }
        let confusion = finished.then(|| confusion::confusion(self.model, self.task, EvalSplit::Valid, cfg.eval_batch_size)).flatten();
        let test = if finished { evaluate(self.model, self.task, EvalSplit::Test, cfg.eval_batch_size) } else { None };
        let trivial_test = if finished { self.task.trivial(EvalSplit::Test).map(|t| t.value) } else { None };
        let wall = started.elapsed().as_secs_f64();
        Ok(Outcome {
            ending,
            steps: state.step,
            train: state.last_train.clone(),
            valid: last_valid,
            primary: primary.name,
            direction: primary.direction,
            best_valid: state.best_valid,
            best_step: state.best_step,
            test,
            samples_per_second: trained_samples as f64 / wall.max(1e-9),
            wall_seconds: wall,
            adapter,
            trivial,
            trivial_test,
            no_better_than,
            confusion,
            refit: None,
        })
    }

    /// One optimiser step; returns the mean loss of its batch and its metric sums.
    fn step(&self, adam: &mut Adam, step: u64, lr: f64) -> (f64, Tally) {
        let _span = tracing::trace_span!("step", step).entered();
        // Augmentation (and dropout off the CPU) draw from torch's generator, CPU dropout from this
        // thread's stream: seeding both per step makes a run a function of (seed, step), which is
        // what lets a resumed run continue exactly. The batch's draws hold the generator alone;
        // dropout off the CPU draws later, from its device's generator (one job per device).
        let seed = step_seed(self.seed ^ DROPOUT_SALT, step);
        crate::model::dropout::reseed(seed);
        let batch = crate::model::seeded(seed, || self.task.train_batch(step, self.cfg.batch_size)).to_device(self.model.device);
        adam.zero_grad();
        let n = batch.size();
        let (mut loss, mut tally) = (0.0, Tally::default());
        let mut start = 0;
        while start < n {
            let len = (self.cfg.micro_batch_size as i64).min(n - start);
            let inputs = batch.inputs.narrow(0, start, len);
            let lengths = batch.lengths.as_ref().map(|l| l.narrow(0, start, len));
            let targets = batch.targets.narrow(0, start, len);
            let logits = self.model.forward(&inputs, lengths.as_ref(), true);
            let s = self.task.objective.score(&logits, &targets);
            (&s.loss * (len as f64 / n as f64)).backward();
            loss += f64::try_from(s.loss.detach().to_kind(Kind::Double)).unwrap() * len as f64 / n as f64;
            tally.merge(&s.tally);
            start += len;
        }
        adam.step(lr, self.cfg.grad_clip);
        (loss, tally)
    }
}

/// Keeps dropout's stream apart from the batch order drawn from the same seed.
const DROPOUT_SALT: u64 = 0xd209_0u64;
