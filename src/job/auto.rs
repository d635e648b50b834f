//! What `"auto"` hyperparameters become: rules from the training set's size and the recipe's
//! defaults (written out in the README too), resolved when the job is created and recorded on it
//! ([`Inferred`]); an `"auto"` learning rate is searched inside the run ([`crate::train::lr_search`]).
use serde::{Deserialize, Serialize};

use super::request::AutoField;
use crate::train::TrainConfig;

/// Most epochs `n_epochs: "auto"` comes to.
pub const MAX_AUTO_EPOCHS: u64 = 100;

/// What the service chose for a job where its request left the choice open: the task (inferred
/// from the training file) and the `"auto"` hyperparameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inferred {
    /// The task was inferred from the training file (the request named none).
    #[serde(default)]
    pub task: bool,
    #[serde(default)]
    pub hyperparameters: Vec<AutoField>,
}

impl Inferred {
    pub fn is_empty(&self) -> bool {
        !self.task && self.hyperparameters.is_empty()
    }
}

/// `h` with its `auto` fields resolved for a training set of `n_train` samples (0: a task that
/// generates its data):
/// - `batch_size`: the recipe's 16, or the whole training set when it is smaller;
/// - `learning_rate_multiplier` or `learning_rate`: searched (`search_learning_rate`);
/// - `n_steps` or `n_epochs`: a budget, ended early on a plateau (`stop_on_plateau`, see
///   [`crate::train::TrainConfig`]): enough whole epochs for the recipe's 2000 steps, at least 1
///   and at most [`MAX_AUTO_EPOCHS`]; for a generated task, the recipe's 2000 steps.
pub fn resolve(h: &TrainConfig, auto: &[AutoField], n_train: usize) -> TrainConfig {
    let recipe = TrainConfig::default();
    let mut h = h.clone();
    if auto.contains(&AutoField::BatchSize) {
        h.batch_size = recipe.batch_size.min(n_train.max(1));
    }
    h.search_learning_rate |= auto.iter().any(|f| f.searches_learning_rate());
    if auto.contains(&AutoField::NEpochs) || auto.contains(&AutoField::NSteps) {
        h.stop_on_plateau = true;
        if n_train > 0 {
            let steps_per_epoch = n_train.div_ceil(h.batch_size.max(1)) as u64;
            h.n_epochs = Some(recipe.n_steps.div_ceil(steps_per_epoch).clamp(1, MAX_AUTO_EPOCHS));
        } else {
            h.n_epochs = None;
            h.n_steps = recipe.n_steps;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_its_written_rules() {
        let all = [AutoField::NEpochs, AutoField::BatchSize, AutoField::LearningRateMultiplier];
        let d = TrainConfig::default();
        // MNIST's 60,000: one epoch is already more than the recipe's steps.
        let big = resolve(&d, &all, 60_000);
        assert_eq!((big.batch_size, big.n_epochs, big.learning_rate), (16, Some(1), d.learning_rate));
        // Either name of an "auto" learning rate asks for the search; a given one does not.
        assert!(big.search_learning_rate && resolve(&d, &[AutoField::LearningRate], 100).search_learning_rate);
        assert!(!resolve(&d, &[AutoField::NSteps], 100).search_learning_rate);
        // 1,600 samples: 100 steps an epoch, 20 epochs make the 2000 steps.
        assert_eq!(resolve(&d, &all, 1_600).n_epochs, Some(20));
        // 100 samples: capped at 100 epochs; 5 samples: a batch of 5.
        assert_eq!(resolve(&d, &all, 100).n_epochs, Some(100));
        assert_eq!(resolve(&d, &all, 5).batch_size, 5);
        // A generated task trains for the recipe's steps; either budget ends on a plateau.
        let generated = resolve(&TrainConfig { n_steps: 7, ..d.clone() }, &[AutoField::NSteps], 0);
        assert_eq!((generated.n_epochs, generated.n_steps, generated.stop_on_plateau), (None, 2000, true));
        assert!(big.stop_on_plateau && !resolve(&d, &[AutoField::BatchSize], 100).stop_on_plateau);
        let given = TrainConfig { batch_size: 64, ..d.clone() };
        assert_eq!(resolve(&given, &[AutoField::NEpochs], 6_400).batch_size, 64);
    }
}
