//! `regression`: real-valued targets (one, or `num_targets`) for a sequence of vectors
//! (`input_dim`, taken from the file when left out) or of token ids (`vocab_size`), from JSONL, CSV or `.ts` records with a `"target"` (a number or
//! an array of numbers), or npz/safetensors with a float `labels` array. The targets are
//! standardised on the training split (the adapter keeps the statistics) and reported and
//! answered in their own units.
use std::path::Path;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Kind, Tensor};

use super::files::{record_split, Loaded};
use super::normalize::{InputNormalization, Normalize};
use super::samples::Form;
use super::sequence::SequenceInput;
use super::spec::check;
use super::{DataSources, Fitted, Objective, SpecError, Task, TaskData, TaskLimits, TaskSpec};
use crate::data::records::RecordSpec;
use crate::data::series::Missing;
use crate::data::RecordLabels;
use crate::model::fpt::HeadShape;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Regression {
    pub input_dim: Option<usize>,
    pub vocab_size: Option<usize>,
    /// Targets per record; taken from the training file when left out.
    pub num_targets: Option<usize>,
    pub max_len: Option<usize>,
    /// In a CSV file, the column holding the target (default `target`).
    pub target_column: Option<String>,
    /// How continuous inputs are normalised: `dataset` (the default), `instance` or `none`.
    pub normalize: Option<Normalize>,
    /// Steps grouped into one token (continuous inputs; GPT4TS's patching).
    pub patch_size: Option<usize>,
    /// Steps between patches (default `patch_size`).
    pub stride: Option<usize>,
    /// Missing input values: `refuse` (the default), `drop` (the record) or `interpolate` (within a `.ts` case's channel).
    pub missing: Option<Missing>,
}

impl Regression {
    fn input(&self) -> SequenceInput {
        SequenceInput::new(self.input_dim, self.vocab_size, self.patch_size, self.stride, self.missing)
    }
}

impl Task for Regression {
    fn validate(&self, limits: &TaskLimits) -> Result<(), SpecError> {
        self.input().validate(limits)?;
        check::column("target_column", self.target_column.as_deref())?;
        if let Some(k) = self.num_targets {
            check::within("num_targets", k, 1, limits.max_classes)?;
        }
        check::max_len(self.max_len, limits)
    }

    fn load(&self, spec: &TaskSpec, src: &DataSources<'_>) -> Result<TaskData> {
        let input = self.input();
        let max_len = src.tokens_kept(self.max_len);
        let read = |input: &SequenceInput, p: &Path, k: Option<usize>| {
            let rs = RecordSpec {
                input: input.record_input(),
                targets: Some(k),
                label_column: self.target_column.clone(),
                missing: input.missing,
                ..RecordSpec::default()
            };
            input.read(p, &rs)
        };
        let train = read(&input, src.train.expect("checked by TaskData::load"), self.num_targets)?;
        let k = targets_per_record(&train.labels);
        if k > 10_000 {
            bail!("{k} targets per record: at most 10,000");
        }
        let shape = input.head(&train, k)?;
        let tr = record_split(&train, max_len)?;
        let like = input.like(&train);
        let other = |p: &Path| read(&like, p, Some(k)).and_then(|r| record_split(&r, max_len));
        let (va, te) = (src.valid.map(other).transpose()?, src.test.map(other).transpose()?);
        let truncated = tr.1 + va.as_ref().map_or(0, |v| v.1) + te.as_ref().map_or(0, |v| v.1);
        Loaded { train: tr.0, valid: va.map(|v| v.0), test: te.map(|v| v.0), shape, truncated, label_names: None }.finish(spec, src)
    }

    /// The training targets' mean and standard deviation per target (1 where a target is constant).
    fn fit(&self, train_targets: &Tensor) -> Fitted {
        let y = train_targets.to_kind(Kind::Double).view([train_targets.size()[0], -1]);
        let mean: Vec<f64> = Vec::try_from(y.mean_dim([0i64].as_slice(), false, Kind::Double)).unwrap();
        let std: Vec<f64> = Vec::try_from(y.std_dim([0i64].as_slice(), false, false)).unwrap();
        let std: Vec<f64> = std.into_iter().map(|s| if s.is_finite() && s > 1e-12 { s } else { 1.0 }).collect();
        json!({"target_mean": mean, "target_std": std})
    }

    fn objective(&self, shape: &HeadShape, fitted: &Fitted) -> Objective {
        let k = shape.output_dim as usize;
        let read = |key: &str, default: f32| -> Vec<f32> {
            fitted[key]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(default as f64) as f32).collect())
                .filter(|v: &Vec<f32>| v.len() == k)
                .unwrap_or_else(|| vec![default; k])
        };
        Objective::Regression { mean: read("target_mean", 0.0), std: read("target_std", 1.0) }
    }

    fn input_normalization(&self) -> InputNormalization {
        self.input().normalization(self.normalize)
    }

    fn sample_form(&self, shape: &HeadShape, _fitted: &Fitted) -> Form {
        self.input().form(shape)
    }
}

fn targets_per_record(labels: &RecordLabels) -> usize {
    match labels {
        RecordLabels::Targets { per_sample, .. } => *per_sample,
        _ => unreachable!("read with targets"),
    }
}
