//! `refit`: once a run has chosen its step on validation, the same training again, from the same
//! initial adapter and at the same learning rate (the searched one at `"auto"`), on the training
//! and validation samples together, to that step; the adapter kept, and the test values, are the
//! refit's. This is cross-validation's refit: the validation split decides how long to train, and
//! then trains too. For datasets of tens of samples (the UCR sets: 36 or 50 training cases), where
//! holding a quarter out costs more than a checkpoint chosen on 9 cases gains.
//!
//! The refit's checkpoints live in its own folder; a refit cut off goes on from its last
//! checkpoint, or again from the start where the folder was lost (a worker's scratch), to the same
//! adapter: a run is a function of its seed and steps.
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{checkpoint, evaluate, Control, Ending, Outcome, Progress, TrainConfig, Trainer};
use crate::tasks::EvalSplit;

/// What the refit did: a run's summary carries it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Refit {
    /// The step the run chose on validation, which the refit trained to.
    pub step: u64,
    /// The samples it trained on: the training split's and the validation split's.
    pub train_samples: usize,
    pub wall_seconds: f64,
}

impl Trainer<'_> {
    /// Refits the run of `outcome` (see the module's doc) from the adapter `init` at `learning_rate`;
    /// returns the outcome with the refit's adapter, test values and record. A run that did not
    /// finish, or never evaluated, is returned as it is; a refit stopped (paused, cancelled,
    /// interrupted) returns its own ending, so that the run is handed back and resumed.
    pub(super) fn refit(
        &self,
        search_dir: &Path,
        init: &Path,
        outcome: Outcome,
        learning_rate: f64,
        control: &Control,
        report: &mut dyn FnMut(Progress),
    ) -> Result<Outcome> {
        let Some(step) = outcome.best_step.filter(|_| matches!(outcome.ending, Ending::Finished | Ending::EarlyStopped)) else {
            return Ok(outcome);
        };
        let data = self.task.with_validation_in_training().context("a generated task has no validation samples to refit on")?;
        // A folder of its own for each (step, budget, rate): a run continued to a larger budget
        // may choose another step, and its schedule is another.
        let dir = search_dir.join(format!("refit-to-{step}-of-{}-at-{learning_rate:e}", self.cfg.n_steps));
        if checkpoint::latest(&dir)?.is_none() {
            let (tensors, _) = crate::model::weights::read_safetensors(init, self.model.device)?;
            self.model.assign(&tensors)?;
        }
        let n = data.info.train_samples;
        report(Progress::Message(format!(
            "refit: training again from the initial adapter on the {n} training and validation samples, to step {step} (the step chosen on validation)"
        )));
        // One evaluation, at the end: the refit's validation samples are its training samples, so
        // nothing is chosen on them; the schedule is the run's (`n_steps`), cut at `step`.
        let cfg = TrainConfig {
            learning_rate,
            eval_every: step,
            patience: 0,
            stop_on_plateau: false,
            search_learning_rate: false,
            refit: false,
            ..self.cfg.clone()
        };
        let trainer = Trainer {
            model: self.model,
            task: &data,
            cfg,
            seed: self.seed,
            checkpoint_dir: dir.clone(),
            metadata: self.metadata.clone(),
            stop_at: Some(step),
        };
        let refitted = trainer.run(control, &mut |p| {
            if let Progress::Message(s) = p {
                report(Progress::Message(format!("refit: {s}")));
            }
        })?;
        if matches!(refitted.ending, Ending::Cancelled | Ending::Paused | Ending::Interrupted) {
            return Ok(Outcome { ending: refitted.ending, ..outcome });
        }
        // The model holds the refit's last state (trained to `step`, or restored from the checkpoint
        // of `step` when resumed at its end), which that checkpoint's adapter file holds too.
        let latest = checkpoint::latest(&dir)?.context("the refit left no checkpoint")?;
        let adapter = dir.join(&latest.adapter);
        let test = evaluate(self.model, &data, EvalSplit::Test, self.cfg.eval_batch_size);
        if let Some(t) = test.as_ref().and_then(|t| t.metrics.get(outcome.primary)) {
            report(Progress::Message(format!("refit: test {} {t:.4} at step {step}", outcome.primary)));
        }
        let refit = Refit { step, train_samples: n, wall_seconds: refitted.wall_seconds };
        Ok(Outcome {
            test,
            adapter: Some(adapter),
            wall_seconds: outcome.wall_seconds + refitted.wall_seconds,
            refit: Some(refit),
            ..outcome
        })
    }
}
