//! `multilabel_classification`: any number of `num_labels` labels for a sequence of vectors
//! (`input_dim`) or of token ids (`vocab_size`). A record's `"label"` is a list of label indices
//! (`[0, 3]`) or a 0/1 vector of `num_labels` values; npz/safetensors hold a [N, num_labels] 0/1
//! `labels` array. Predictions answer the labels whose probability reaches `threshold` (0.5) and
//! every probability.
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::files::{record_split, Loaded};
use super::normalize::{InputNormalization, Normalize};
use super::samples::Form;
use super::sequence::SequenceInput;
use super::spec::{bad, check};
use super::{DataSources, Fitted, Objective, SpecError, Task, TaskData, TaskLimits, TaskSpec};
use crate::data::records::RecordSpec;
use crate::data::series::Missing;
use crate::model::fpt::HeadShape;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultilabelClassification {
    pub input_dim: Option<usize>,
    pub vocab_size: Option<usize>,
    pub num_labels: usize,
    /// The probability from which a label is predicted.
    pub threshold: Option<f64>,
    pub max_len: Option<usize>,
    /// How continuous inputs are normalised: `dataset` (the default), `instance` or `none`.
    pub normalize: Option<Normalize>,
    /// Steps grouped into one token (continuous inputs; GPT4TS's patching).
    pub patch_size: Option<usize>,
    /// Steps between patches (default `patch_size`).
    pub stride: Option<usize>,
    /// Missing input values: `refuse` (the default), `drop` (the record) or `interpolate` (within a `.ts` case's channel).
    pub missing: Option<Missing>,
}

impl MultilabelClassification {
    fn input(&self) -> SequenceInput {
        SequenceInput::new(self.input_dim, self.vocab_size, self.patch_size, self.stride, self.missing)
    }

    fn threshold(&self) -> f64 {
        self.threshold.unwrap_or(0.5)
    }
}

impl Task for MultilabelClassification {
    fn validate(&self, limits: &TaskLimits) -> Result<(), SpecError> {
        self.input().validate(limits)?;
        check::within("num_labels", self.num_labels, 1, limits.max_classes)?;
        if !(self.threshold() > 0.0 && self.threshold() < 1.0) {
            return Err(bad("threshold", "must be between 0 and 1 (exclusive)"));
        }
        check::max_len(self.max_len, limits)
    }

    fn load(&self, spec: &TaskSpec, src: &DataSources<'_>) -> Result<TaskData> {
        let input = self.input();
        let rs = RecordSpec {
            input: input.record_input(),
            missing: input.missing,
            bits: Some(self.num_labels),
            multilabel: Some(self.num_labels),
            ..RecordSpec::default()
        };
        let max_len = src.tokens_kept(self.max_len);
        let train = input.read(src.train.expect("checked by TaskData::load"), &rs)?;
        let shape = input.head(&train, self.num_labels)?;
        let tr = record_split(&train, max_len)?;
        let like = input.like(&train);
        let others = RecordSpec { input: like.record_input(), ..rs.clone() };
        let read = |p: &Path| like.read(p, &others).and_then(|r| record_split(&r, max_len));
        let va = src.valid.map(read).transpose()?;
        let te = src.test.map(read).transpose()?;
        let truncated = tr.1 + va.as_ref().map_or(0, |v| v.1) + te.as_ref().map_or(0, |v| v.1);
        Loaded { train: tr.0, valid: va.map(|v| v.0), test: te.map(|v| v.0), shape, truncated, label_names: None }.finish(spec, src)
    }

    fn input_normalization(&self) -> InputNormalization {
        self.input().normalization(self.normalize)
    }

    fn objective(&self, shape: &HeadShape, _fitted: &Fitted) -> Objective {
        Objective::MultiLabel { k: shape.output_dim as usize, threshold: self.threshold() }
    }

    fn sample_form(&self, shape: &HeadShape, _fitted: &Fitted) -> Form {
        self.input().form(shape)
    }
}
