//! `learning_rate: "auto"`: successive halving over a log grid of learning rates inside one run.
//!
//! Every trial starts from the same initial adapter and sees the same batches (the run's seed), so
//! trials differ only in their learning rate. All [`GRID`]'s trials train to the first rung
//! ([`RUNGS`]: a tenth of the run's budget), the best [`RUNGS`] keeps by the task's primary
//! validation metric (ties: the lower validation loss) go on to the next (a quarter), and the
//! winner goes on from its own checkpoint to the whole budget: the run is the winning trial
//! continued, no work thrown away. Trials follow the run's schedule (cosine, warm-up) as the run
//! would, so a trial's steps are the run's first steps at its rate. A trial that diverges is
//! dropped. The whole search costs about 1.55 runs (5 x 0.1 + 2 x 0.15 + 0.75 of the budget).
//!
//! It is resumable: the record ([`SearchRecord`], `search.json` in the search folder) is written
//! after every trial's rung, and a trial's checkpoints live in the search folder; a trial cut off
//! goes on from its last checkpoint (or again from the start where its folder was lost, to the same
//! result: a run is a function of its seed and steps).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{checkpoint, Control, Diverged, Ending, Outcome, Progress, TrainConfig, Trainer};
use crate::metrics::Direction;

/// The learning rates tried: 1e-4 to 1e-2 in half decades (the recipe's 1e-3 among them).
pub const GRID: [f64; 5] = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2];

/// The rungs: the fraction of the run's budget each trial trains to, and how many trials go on.
pub const RUNGS: [(f64, usize); 2] = [(0.1, 2), (0.25, 1)];

/// One learning rate's trial: its validation results at each rung it reached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Trial {
    pub learning_rate: f64,
    pub rungs: Vec<RungResult>,
    /// Why the trial was dropped, when it diverged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RungResult {
    pub step: u64,
    /// The best validation value of the primary metric up to this step (JSON's null for none).
    #[serde(deserialize_with = "nan_for_null")]
    pub value: f64,
    /// The validation loss at this step, which breaks ties.
    #[serde(deserialize_with = "nan_for_null")]
    pub loss: f64,
}

/// JSON has no NaN: serde_json writes it as null, which reads back as NaN.
fn nan_for_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The search as it stands: what a job's result and its events carry, and what resumes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SearchRecord {
    /// The metric trials are compared by (`valid_<metric>`) and which way it improves.
    pub metric: String,
    pub direction: Direction,
    /// The steps of the rungs.
    pub rung_steps: Vec<u64>,
    pub trials: Vec<Trial>,
    /// The winner's learning rate, once chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<f64>,
}

/// The record's file in the search folder.
pub const RECORD: &str = "search.json";

impl SearchRecord {
    fn new(metric: &str, direction: Direction, n_steps: u64) -> Self {
        Self {
            metric: metric.to_string(),
            direction,
            rung_steps: rung_steps(n_steps),
            trials: GRID.iter().map(|&learning_rate| Trial { learning_rate, rungs: Vec::new(), diverged: None }).collect(),
            chosen: None,
        }
    }

    /// The record in `dir`, when it holds one.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(RECORD);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| format!("{} is corrupt", path.display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::fsutil::write_atomic(&dir.join(RECORD), &serde_json::to_vec_pretty(self)?)
    }

    /// The steps the chosen trial trained before the run went on from it.
    pub fn winner_steps(&self) -> Option<u64> {
        let chosen = self.chosen?;
        self.trials.iter().find(|t| t.learning_rate == chosen)?.rungs.last().map(|r| r.step)
    }

    /// The trials of `alive` still in the search after rung `rung`: the best `keep` by value
    /// (then by loss, then the lower learning rate), diverged ones and ones without a value out.
    fn promote(&self, alive: &[usize], rung: usize, keep: usize) -> Vec<usize> {
        let mut ranked: Vec<(usize, &RungResult)> = alive
            .iter()
            .filter(|&&t| self.trials[t].diverged.is_none())
            .filter_map(|&t| self.trials[t].rungs.get(rung).filter(|r| r.value.is_finite()).map(|r| (t, r)))
            .collect();
        ranked.sort_by(|(ta, a), (tb, b)| {
            let by_value = match self.direction {
                Direction::Higher => b.value.total_cmp(&a.value),
                Direction::Lower => a.value.total_cmp(&b.value),
            };
            by_value.then(a.loss.total_cmp(&b.loss)).then(ta.cmp(tb))
        });
        ranked.into_iter().take(keep).map(|(t, _)| t).collect()
    }
}

/// The rungs' steps for a budget of `n_steps`: each at least a step and after the one before.
pub fn rung_steps(n_steps: u64) -> Vec<u64> {
    let mut steps: Vec<u64> = Vec::new();
    for (fraction, _) in RUNGS {
        let after = steps.last().map_or(1, |&l| l + 1);
        steps.push(((n_steps as f64 * fraction).ceil() as u64).max(after).min(n_steps));
    }
    steps
}

/// What a trial's rung came to.
enum TrialEnd {
    Reached(RungResult),
    Diverged(String),
    /// Cancelled, paused or interrupted: the run stops here.
    Stopped(Box<Outcome>),
}

impl Trainer<'_> {
    /// Searches the learning rate (keeping its trials in `dir`), then runs the winner to the end;
    /// returns the run's outcome and the search's record. A search already decided (its record
    /// says so and the run has a checkpoint) goes straight on with the run.
    pub fn run_searching_learning_rate(
        &self,
        dir: &Path,
        control: &Control,
        report: &mut dyn FnMut(Progress),
    ) -> Result<(Outcome, SearchRecord)> {
        let started = std::time::Instant::now();
        let primary = self.task.objective.primary();
        let fresh = SearchRecord::new(primary.name, primary.direction, self.cfg.n_steps);
        // A decided search stands (a larger budget continues its run); an undecided one for
        // another budget starts again.
        let mut record = match SearchRecord::load(dir)? {
            Some(r) if r.chosen.is_some() || (r.rung_steps == fresh.rung_steps && r.metric == fresh.metric) => r,
            Some(_) => {
                for t in 0..GRID.len() {
                    let _ = std::fs::remove_dir_all(trial_dir(dir, t));
                }
                fresh
            }
            None => fresh,
        };
        let init = self.initial_adapter(dir)?;
        if record.chosen.is_none() {
            let mut alive: Vec<usize> = (0..record.trials.len()).collect();
            for (rung, &(_, keep)) in RUNGS.iter().enumerate() {
                for &t in &alive {
                    let trial = &record.trials[t];
                    if trial.diverged.is_some() || trial.rungs.len() > rung {
                        continue;
                    }
                    match self.trial(dir, &init, t, trial.learning_rate, record.rung_steps[rung], control, report)? {
                        TrialEnd::Reached(r) => record.trials[t].rungs.push(r),
                        TrialEnd::Diverged(why) => record.trials[t].diverged = Some(why),
                        TrialEnd::Stopped(o) => return Ok((*o, record)),
                    }
                    record.save(dir)?;
                    report(Progress::Search(record.clone()));
                }
                alive = record.promote(&alive, rung, keep);
                if alive.is_empty() {
                    let reason = format!("every learning rate of the search ({}) diverged", grid_text());
                    return Err(Diverged { step: record.rung_steps[rung], reason }.into());
                }
                report(Progress::Message(rung_message(&record, rung, &alive)));
            }
            record.chosen = Some(record.trials[alive[0]].learning_rate);
            record.save(dir)?;
            report(Progress::Search(record.clone()));
        }
        let chosen = record.chosen.expect("chosen above");
        let winner = record.trials.iter().position(|t| t.learning_rate == chosen).context("the search's record names no trial it chose")?;
        if checkpoint::latest(&self.checkpoint_dir)?.is_none() {
            if let Some(stopped) = self.continue_from_trial(dir, &init, winner, &record, control, report)? {
                return Ok((stopped, record));
            }
        }
        let run = Trainer { cfg: TrainConfig { learning_rate: chosen, ..self.cfg.clone() }, ..self.clone_refs() };
        let mut outcome = run.run(control, report)?;
        // The search's time is the run's: what `"auto"` costs is the whole of it.
        outcome.wall_seconds = started.elapsed().as_secs_f64();
        Ok((outcome, record))
    }

    /// Puts the winning trial's latest checkpoint in the run's folder (training the trial again to
    /// its last rung when its folder was lost), and reports it as the run's checkpoint; the outcome
    /// of that training when it was stopped (cancelled, paused, interrupted) before.
    fn continue_from_trial(
        &self,
        dir: &Path,
        init: &Path,
        winner: usize,
        record: &SearchRecord,
        control: &Control,
        report: &mut dyn FnMut(Progress),
    ) -> Result<Option<Outcome>> {
        let trial = &record.trials[winner];
        let from = trial_dir(dir, winner);
        let reached = trial.rungs.last().map_or(0, |r| r.step);
        if checkpoint::latest(&from)?.is_none_or(|l| l.step < reached) {
            if let TrialEnd::Stopped(o) = self.trial(dir, init, winner, trial.learning_rate, reached, control, report)? {
                return Ok(Some(*o));
            }
        }
        let latest = checkpoint::latest(&from)?.context("the winning trial left no checkpoint")?;
        std::fs::create_dir_all(&self.checkpoint_dir)?;
        let best = checkpoint::best_path(&from);
        let best_name = best.file_name().map(|n| n.to_string_lossy().into_owned()).filter(|_| best.exists());
        for name in [Some(latest.adapter.clone()), Some(latest.state.clone()), best_name].into_iter().flatten() {
            crate::fsutil::write_atomic(&self.checkpoint_dir.join(&name), &std::fs::read(from.join(&name))?)?;
        }
        crate::fsutil::write_atomic(&self.checkpoint_dir.join("latest.json"), &std::fs::read(from.join("latest.json"))?)?;
        report(Progress::Checkpoint { step: latest.step, adapter: self.checkpoint_dir.join(&latest.adapter), metrics: None });
        Ok(None)
    }

    /// Trains trial `t` at `learning_rate` to step `stop` in its folder, from its checkpoint or
    /// from the initial adapter; its reports carry the trial, its checkpoints stay in its folder.
    #[allow(clippy::too_many_arguments)]
    fn trial(
        &self,
        dir: &Path,
        init: &Path,
        t: usize,
        learning_rate: f64,
        stop: u64,
        control: &Control,
        report: &mut dyn FnMut(Progress),
    ) -> Result<TrialEnd> {
        let folder = trial_dir(dir, t);
        if checkpoint::latest(&folder)?.is_none() {
            let (tensors, _) = crate::model::weights::read_safetensors(init, self.model.device)?;
            self.model.assign(&tensors)?;
        }
        let trainer = Trainer {
            cfg: TrainConfig { learning_rate, ..self.cfg.clone() },
            checkpoint_dir: folder,
            stop_at: Some(stop),
            ..self.clone_refs()
        };
        let name = format!("trial {} (learning rate {learning_rate:e})", t + 1);
        let outcome = trainer.run(control, &mut |p| match p {
            Progress::Metrics(mut m) => {
                m.trial = Some(t);
                report(Progress::Metrics(m));
            }
            Progress::Message(s) => report(Progress::Message(format!("{name}: {s}"))),
            Progress::Checkpoint { .. } | Progress::Search(_) => {}
        });
        match outcome {
            Ok(o) if matches!(o.ending, Ending::Cancelled | Ending::Paused | Ending::Interrupted) => Ok(TrialEnd::Stopped(Box::new(o))),
            Ok(o) => {
                let value = o.best_valid.unwrap_or(f64::NAN);
                let loss = o.valid.as_ref().map_or(f64::NAN, |v| v.loss);
                report(Progress::Message(format!("{name}: best validation {} {value:.4} by step {}", o.primary, o.steps)));
                Ok(TrialEnd::Reached(RungResult { step: o.steps, value, loss }))
            }
            Err(e) => match e.downcast::<Diverged>() {
                Ok(d) => {
                    report(Progress::Message(format!("{name} dropped: {d}")));
                    Ok(TrialEnd::Diverged(d.to_string()))
                }
                Err(e) => Err(e),
            },
        }
    }

    /// A trainer of the same model, data and seed, to be given its own settings.
    fn clone_refs(&self) -> Self {
        Trainer {
            model: self.model,
            task: self.task,
            cfg: self.cfg.clone(),
            seed: self.seed,
            checkpoint_dir: self.checkpoint_dir.clone(),
            metadata: self.metadata.clone(),
            stop_at: None,
        }
    }
}

fn trial_dir(dir: &Path, t: usize) -> PathBuf {
    dir.join(format!("trial-{t}"))
}

fn grid_text() -> String {
    GRID.iter().map(|l| format!("{l:e}")).collect::<Vec<_>>().join(", ")
}

/// `learning-rate search, rung 1 (step 20): 3e-3 0.9100, 1e-3 0.8800, ...; going on: 3e-3, 1e-3`.
fn rung_message(record: &SearchRecord, rung: usize, alive: &[usize]) -> String {
    let results: Vec<String> = record
        .trials
        .iter()
        .filter_map(|t| match (&t.diverged, t.rungs.get(rung)) {
            (Some(_), _) => Some(format!("{:e} diverged", t.learning_rate)),
            (None, Some(r)) => Some(format!("{:e} {:.4}", t.learning_rate, r.value)),
            (None, None) => None,
        })
        .collect();
    let kept: Vec<String> = alive.iter().map(|&t| format!("{:e}", record.trials[t].learning_rate)).collect();
    let what = if rung + 1 == RUNGS.len() { "chosen" } else { "going on" };
    format!(
        "learning-rate search, rung {} (step {}), validation {}: {}; {what}: {}",
        rung + 1,
        record.rung_steps[rung],
        record.metric,
        results.join(", "),
        kept.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(value: f64, loss: f64) -> RungResult {
        RungResult { step: 10, value, loss }
    }

    #[test]
    fn rungs_are_a_tenth_and_a_quarter_of_the_budget_and_always_advance() {
        assert_eq!(rung_steps(2000), vec![200, 500]);
        assert_eq!(rung_steps(3), vec![1, 2]);
        assert_eq!(rung_steps(1), vec![1, 1]);
    }

    #[test]
    fn promotion_keeps_the_best_then_the_lower_loss_and_drops_the_diverged() {
        let mut r = SearchRecord::new("accuracy", Direction::Higher, 100);
        let values = [(0.5, 1.0), (0.9, 0.4), (0.9, 0.3), (0.7, 0.2), (f64::NAN, 0.1)];
        for (t, (v, l)) in values.into_iter().enumerate() {
            r.trials[t].rungs.push(result(v, l));
        }
        assert_eq!(r.promote(&[0, 1, 2, 3, 4], 0, 2), vec![2, 1]);
        r.trials[2].diverged = Some("nan".into());
        assert_eq!(r.promote(&[0, 1, 2, 3, 4], 0, 2), vec![1, 3]);
        let mut lower = SearchRecord::new("rmse", Direction::Lower, 100);
        for (t, v) in [3.0, 1.0, 2.0, 5.0, 4.0].into_iter().enumerate() {
            lower.trials[t].rungs.push(result(v, 0.0));
        }
        assert_eq!(lower.promote(&[0, 1, 2, 3, 4], 0, 1), vec![1]);
    }
}
