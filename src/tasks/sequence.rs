//! What the sequence tasks (classification, regression, multi-label) share: their input
//! (continuous tokens of `input_dim` values, that size taken from the training file when it is
//! left out, or token ids below `vocab_size`), GPT4TS's optional patching (`patch_size` steps,
//! every `stride`, grouped into one token, so that series longer than the backbone's positions
//! fit), their head and the form of their prediction samples.
use std::path::Path;

use anyhow::{bail, Result};

use super::files::read_records;
use super::normalize::{InputNormalization, Normalize};
use super::samples::Form;
use super::spec::{bad, check};
use super::{SpecError, TaskLimits};
use crate::data::records::{InputSpec, RecordSpec};
use crate::data::series::Missing;
use crate::data::{RecordInputs, RecordSet};
use crate::model::fpt::{HeadShape, InputKind};

/// A sequence task's input fields, as its spec gives them.
#[derive(Debug, Clone, Copy)]
pub(super) struct SequenceInput {
    pub input_dim: Option<usize>,
    pub vocab_size: Option<usize>,
    pub patch_size: Option<usize>,
    pub stride: Option<usize>,
    pub missing: Missing,
}

/// Steps grouped into one token: `size` of them, a patch every `stride`; the last patch is filled
/// by repeating the sequence's last step (as GPT4TS pads), so every step takes part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patching {
    pub size: usize,
    pub stride: usize,
}

/// The largest patch: a token of at most this many steps.
const MAX_PATCH: usize = 4096;
/// Values a file's patched records may hold (4 bytes each).
const MAX_PATCHED_VALUES: usize = 1 << 28;

impl Patching {
    /// Patches of a sequence of `steps` steps.
    pub fn tokens(&self, steps: usize) -> usize {
        if steps <= self.size {
            1
        } else {
            (steps - self.size).div_ceil(self.stride) + 1
        }
    }

    /// Appends the patches of one sequence (`values`: steps of `dim` values each).
    pub fn apply(&self, values: &[f32], dim: usize, out: &mut Vec<f32>) {
        let steps = values.len() / dim;
        for p in 0..self.tokens(steps) {
            for t in p * self.stride..p * self.stride + self.size {
                let t = t.min(steps - 1);
                out.extend_from_slice(&values[t * dim..(t + 1) * dim]);
            }
        }
    }
}

impl SequenceInput {
    /// A task's input fields, as its spec gives them.
    pub fn new(
        input_dim: Option<usize>,
        vocab_size: Option<usize>,
        patch_size: Option<usize>,
        stride: Option<usize>,
        missing: Option<Missing>,
    ) -> Self {
        SequenceInput { input_dim, vocab_size, patch_size, stride, missing: missing.unwrap_or_default() }
    }

    pub fn validate(&self, limits: &TaskLimits) -> Result<(), SpecError> {
        check::sequence_input(self.input_dim, self.vocab_size, limits)?;
        if let Some(size) = self.patch_size {
            if self.vocab_size.is_some() {
                return Err(bad("patch_size", "patches group continuous values; token ids (vocab_size) are not patched"));
            }
            check::within("patch_size", size, 1, MAX_PATCH)?;
            check::within("stride", self.stride.unwrap_or(size), 1, size)?;
        } else if self.stride.is_some() {
            return Err(bad("stride", "a stride needs a patch_size"));
        }
        Ok(())
    }

    /// How the inputs are normalised (`mode`, or the default): per channel, a patch's steps alike.
    pub fn normalization(&self, mode: Option<Normalize>) -> InputNormalization {
        InputNormalization { mode: mode.unwrap_or_default(), steps_per_token: self.patching().map_or(1, |p| p.size) }
    }

    fn patching(&self) -> Option<Patching> {
        self.patch_size.map(|size| Patching { size, stride: self.stride.unwrap_or(size) })
    }

    /// The input the validation and test files must have: the training file's token size (as
    /// read, before patching) when the task gives none.
    pub fn like(&self, train: &RecordSet) -> SequenceInput {
        match self.vocab_size {
            Some(_) => *self,
            None => SequenceInput { input_dim: Some(train.values_per_token() / self.patching().map_or(1, |p| p.size)), ..*self },
        }
    }

    /// How the records' inputs are read.
    pub fn record_input(&self) -> InputSpec {
        match self.vocab_size {
            Some(v) => InputSpec::Tokens { vocab_size: v },
            None => InputSpec::Continuous { token_dim: self.input_dim },
        }
    }

    /// A file's records as `spec` says, patched when the task patches.
    pub fn read(&self, p: &Path, spec: &RecordSpec) -> Result<RecordSet> {
        let r = read_records(p, spec)?;
        let Some(patch) = self.patching() else { return Ok(r) };
        // Overlapping patches repeat values (size / stride times): counted before they are made.
        let values: usize = (0..r.len()).map(|i| patch.tokens(r.token_count(i)).saturating_mul(patch.size * r.values_per_token())).sum();
        if values > MAX_PATCHED_VALUES {
            bail!(
                "{}: patches of {} every {} make {values} values, at most {MAX_PATCHED_VALUES}: set a larger stride",
                p.display(),
                patch.size,
                patch.stride
            );
        }
        Ok(patched(r, patch))
    }

    /// The head: `outputs` from one read-out token, over tokens the size of the training records'.
    pub fn head(&self, train: &RecordSet, outputs: usize) -> Result<HeadShape> {
        let input = match self.vocab_size {
            Some(v) => InputKind::Tokens { vocab: v as i64 },
            None => {
                let dim = train.values_per_token();
                let most = TaskLimits::default().max_input_dim;
                if dim > most {
                    bail!("the training file's tokens hold {dim} values (with patching: patch_size x the values per step), at most {most}");
                }
                InputKind::Continuous { dim: dim as i64 }
            }
        };
        Ok(HeadShape { input, output_dim: outputs as i64, readout_tokens: 1 })
    }

    /// A prediction sample: a record's input, as it was before patching.
    pub fn form(&self, shape: &HeadShape) -> Form {
        match shape.input {
            InputKind::Continuous { dim } => {
                let patch = self.patching();
                let step_dim = dim as usize / patch.map_or(1, |p| p.size);
                Form::Vectors { dim: step_dim, fixed: None, patch }
            }
            InputKind::Tokens { vocab } => Form::Ids { vocab, text: None },
        }
    }
}

/// Records with their steps grouped into patches (continuous inputs; validated).
fn patched(r: RecordSet, patch: Patching) -> RecordSet {
    let RecordInputs::Continuous { values, token_dim } = &r.inputs else { unreachable!("validated: only continuous inputs are patched") };
    let mut out = Vec::new();
    let mut offsets = vec![0];
    for i in 0..r.len() {
        patch.apply(&values[r.offsets[i] * token_dim..r.offsets[i + 1] * token_dim], *token_dim, &mut out);
        offsets.push(offsets[i] + patch.tokens(r.token_count(i)));
    }
    RecordSet { inputs: RecordInputs::Continuous { values: out, token_dim: token_dim * patch.size }, offsets, ..r }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_cover_every_step_and_repeat_the_last() {
        let p = Patching { size: 4, stride: 2 };
        assert_eq!([1, 4, 5, 6, 7].map(|s| p.tokens(s)), [1, 1, 2, 2, 3]);
        let mut out = Vec::new();
        // Seven steps of two values: patches start at 0, 2, 4; the last repeats step 6.
        let values: Vec<f32> = (0..14).map(|v| v as f32).collect();
        p.apply(&values, 2, &mut out);
        let steps: Vec<f32> = out.chunks(2).map(|s| s[0] / 2.0).collect();
        assert_eq!(steps, [0., 1., 2., 3., 2., 3., 4., 5., 4., 5., 6., 6.]);
    }
}
