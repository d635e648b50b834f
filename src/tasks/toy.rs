//! `toy_sum_sign` (tests only): is the sum of `length` random values positive? It shows what a new
//! task takes: this file and one registration line in `tasks/mod.rs`; the engine, the job spec, the
//! summary and predictions then work for it unchanged.
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::files::{classes, Loaded};
use super::samples::Form;
use super::spec::check;
use super::{DataSources, Features, Fitted, SpecError, Split, Task, TaskData, TaskLimits, TaskSpec};
use crate::model::fpt::HeadShape;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToySumSign {
    pub length: usize,
    pub n_train: usize,
}

impl Default for ToySumSign {
    fn default() -> Self {
        Self { length: 4, n_train: 256 }
    }
}

impl ToySumSign {
    fn split(&self, n: usize, seed: u64) -> Split {
        let x = crate::model::seeded(seed, || Tensor::randn([n as i64, self.length as i64, 1], (Kind::Float, tch::Device::Cpu)));
        let targets = x.sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float).gt(0.0).to_kind(Kind::Int64);
        Split { features: Features::Tokens { x, lengths: None }, targets }
    }
}

impl Task for ToySumSign {
    fn validate(&self, limits: &TaskLimits) -> Result<(), SpecError> {
        check::length("length", self.length, 1, limits)?;
        check::generated("n_train", self.n_train, self.length, limits)
    }

    fn needs_file(&self) -> bool {
        false
    }

    fn load(&self, spec: &TaskSpec, src: &DataSources<'_>) -> Result<TaskData> {
        let loaded = Loaded { train: self.split(self.n_train, src.seed), valid: None, test: None, shape: classes(1, 2), truncated: 0, label_names: None };
        loaded.finish(spec, src)
    }

    fn sample_form(&self, _shape: &HeadShape, _fitted: &Fitted) -> Form {
        Form::Vectors { dim: 1, fixed: Some(self.length), patch: None }
    }
}

#[cfg(test)]
mod tests {
    use crate::job::{prepare, DataFiles, Limits, Method, RawSpec, TrainSpec};
    use crate::model::{gpt2_config, write_random_checkpoint, ModelRegistry, Precision};
    use crate::tasks::samples::batch_from_samples;
    use crate::tasks::TaskSpec;
    use crate::train::{Control, TrainConfig};

    #[test]
    fn a_new_task_trains_summarises_and_predicts_through_the_shared_code() {
        let dir = tempfile::tempdir().unwrap();
        write_random_checkpoint(&dir.path().join("tiny"), &gpt2_config(1, 16, 2, 64), 3).unwrap();
        let task: TaskSpec = serde_json::from_value(serde_json::json!({"type": "toy_sum_sign", "length": 3})).unwrap();
        assert_eq!(task.name(), "toy_sum_sign");
        let raw: RawSpec<std::path::PathBuf> = RawSpec {
            model: "tiny".into(),
            task,
            hyperparameters: TrainConfig { n_steps: 20, eval_every: 10, checkpoint_every: 0, batch_size: 8, ..TrainConfig::default() },
            method: Method::default(),
            seed: 1,
            files: DataFiles::default(),
            device: "cpu".into(),
        };
        let spec = TrainSpec::parse(raw, &Limits::default()).unwrap();
        let bad = serde_json::from_value::<TaskSpec>(serde_json::json!({"type": "toy_sum_sign", "length": 0})).unwrap();
        assert_eq!(bad.validate(&Limits::default().task).unwrap_err().field, "task.length");

        let registry = ModelRegistry::new(dir.path());
        let run = prepare(&spec, &registry, &Limits::default(), tch::Device::Cpu, Precision::Fp32).unwrap();
        let outcome = run.trainer(1, dir.path().join("ckpt"), Default::default()).run(&Control::default(), &mut |_| {}).unwrap();
        let summary = run.summary(&outcome, 1, None);
        for key in ["train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "best_valid_accuracy"] {
            let v = summary.metric(key).unwrap_or_else(|| panic!("{key} missing from {summary:?}"));
            assert!(v.is_finite(), "{key} = {v}");
        }
        assert_eq!((summary.primary_metric.as_str(), summary.steps), ("accuracy", 20));

        let task = &run.prepared.task;
        let samples = [serde_json::json!([1.0, 2.0, 3.0]), serde_json::json!([-1.0, -2.0, -3.0])];
        let b = batch_from_samples(&task.spec, &task.shape, &task.fitted, run.model.max_positions(), &samples).unwrap();
        let logits = tch::no_grad(|| run.model.forward(&b.inputs, None, false));
        let answers = task.objective.predictions(&logits, b.context.as_ref());
        assert_eq!(answers.len(), 2);
        assert!(answers.iter().all(|a| a.label.is_some() && a.probabilities.as_ref().is_some_and(|p| p.len() == 2)));
        let wrong = batch_from_samples(&task.spec, &task.shape, &task.fitted, run.model.max_positions(), &[serde_json::json!([1.0])]);
        assert!(wrong.err().unwrap().message.contains("expected 3 values"));
    }
}
