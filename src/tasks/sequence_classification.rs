//! `sequence_classification`: a class for a sequence of vectors (`input_dim`, taken from the file
//! when left out; time series, optionally patched) or of token ids (`vocab_size`), from JSONL,
//! CSV, `.ts`, npz or safetensors records; sequences of different lengths are padded and masked.
use std::path::Path;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::files::{record_split, Loaded};
use super::normalize::{InputNormalization, Normalize};
use super::samples::Form;
use super::sequence::SequenceInput;
use super::spec::check;
use super::{DataSources, Fitted, SpecError, Task, TaskData, TaskLimits, TaskSpec};
use crate::data::records::RecordSpec;
use crate::data::series::Missing;
use crate::data::RecordLabels;
use crate::model::fpt::HeadShape;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceClassification {
    pub input_dim: Option<usize>,
    pub vocab_size: Option<usize>,
    /// Classes; taken from the training file when left out (its class names, or its largest index + 1).
    pub num_classes: Option<usize>,
    pub max_len: Option<usize>,
    /// In a CSV file, the column holding the class (default `label`).
    pub label_column: Option<String>,
    /// How continuous inputs are normalised: `dataset` (the default), `instance` or `none`.
    pub normalize: Option<Normalize>,
    /// Steps grouped into one token (continuous inputs; GPT4TS's patching).
    pub patch_size: Option<usize>,
    /// Steps between patches (default `patch_size`).
    pub stride: Option<usize>,
    /// Missing input values: `refuse` (the default), `drop` (the record) or `interpolate` (within a `.ts` case's channel).
    pub missing: Option<Missing>,
}

impl SequenceClassification {
    fn input(&self) -> SequenceInput {
        SequenceInput::new(self.input_dim, self.vocab_size, self.patch_size, self.stride, self.missing)
    }
}

impl Task for SequenceClassification {
    fn validate(&self, limits: &TaskLimits) -> Result<(), SpecError> {
        self.input().validate(limits)?;
        if let Some(n) = self.num_classes {
            check::classes(n, limits)?;
        }
        check::column("label_column", self.label_column.as_deref())?;
        check::max_len(self.max_len, limits)
    }

    fn load(&self, spec: &TaskSpec, src: &DataSources<'_>) -> Result<TaskData> {
        let input = self.input();
        let max_len = src.tokens_kept(self.max_len);
        let spec_for = |num_classes: Option<usize>, label_names: Option<Vec<String>>| RecordSpec {
            input: input.record_input(),
            missing: input.missing,
            num_classes,
            label_column: self.label_column.clone(),
            label_names,
            ..RecordSpec::default()
        };
        // The training file fixes the classes (their names too, when its labels are names); the
        // validation and test files are read against them.
        // An adapter's evaluation reads its data with the adapter's class names.
        let known = src.fitted.and_then(|f| f["label_names"].as_array()).map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect());
        let train = input.read(src.train.expect("checked by TaskData::load"), &spec_for(self.num_classes, known))?;
        let names = train.label_names.clone();
        let k = match (self.num_classes, &names, &train.labels) {
            (Some(n), _, _) => n,
            (None, Some(names), _) => names.len().max(2),
            (None, None, RecordLabels::Class(c)) => (c.iter().copied().max().unwrap_or(0).max(0) as usize).saturating_add(1).max(2),
            (None, None, _) => bail!("the training file's labels are not classes (bits or regression targets): use another task, or set num_classes"),
        };
        let most = TaskLimits::default().max_classes;
        if k > most {
            bail!("the training file's labels make {k} classes, more than {most}; set num_classes, or renumber the labels from 0");
        }
        // Indices in the training file: names in the others are refused, not numbered on their own.
        let like = input.like(&train);
        let others = RecordSpec { input: like.record_input(), ..spec_for(Some(k), Some(names.clone().unwrap_or_default())) };
        let read = |p: &Path| like.read(p, &others).and_then(|r| record_split(&r, max_len));
        let tr = record_split(&train, max_len)?;
        let va = src.valid.map(read).transpose()?;
        let te = src.test.map(read).transpose()?;
        let shape = input.head(&train, k)?;
        let truncated = tr.1 + va.as_ref().map_or(0, |v| v.1) + te.as_ref().map_or(0, |v| v.1);
        Loaded { train: tr.0, valid: va.map(|v| v.0), test: te.map(|v| v.0), shape, truncated, label_names: names }.finish(spec, src)
    }

    fn input_normalization(&self) -> InputNormalization {
        self.input().normalization(self.normalize)
    }

    fn sample_form(&self, shape: &HeadShape, _fitted: &Fitted) -> Form {
        self.input().form(shape)
    }
}
