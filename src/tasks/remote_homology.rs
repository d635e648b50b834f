//! `remote_homology`: TAPE's fold classification of protein sequences (1,195 folds), from FASTA
//! (`>id label` headers) or TAPE's JSON.
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::files::{check_seq_classes, named, read_file, seq_split, tokens, Loaded};
use super::samples::{vocab, Form};
use super::spec::check;
use super::{DataSources, Fitted, SpecError, Task, TaskData, TaskLimits, TaskSpec};
use crate::data::{fasta, SequenceSet};
use crate::model::fpt::HeadShape;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteHomology {
    pub max_len: usize,
    pub num_classes: usize,
}

impl Default for RemoteHomology {
    fn default() -> Self {
        Self { max_len: 1024, num_classes: 1195 }
    }
}

impl Task for RemoteHomology {
    fn validate(&self, limits: &TaskLimits) -> Result<(), SpecError> {
        check::classes(self.num_classes, limits)?;
        check::length("max_len", self.max_len, 1, limits)
    }

    fn load(&self, spec: &TaskSpec, src: &DataSources<'_>) -> Result<TaskData> {
        let max_len = self.max_len.min(src.max_positions);
        let read = |p: &Path| -> Result<SequenceSet> {
            let bytes = read_file(p)?;
            let set =
                if bytes.first() == Some(&b'>') { fasta::read_fasta(&bytes, max_len) } else { fasta::read_tape_json(&bytes, max_len) };
            check_seq_classes(set.map_err(|e| named(p, e))?, self.num_classes)
        };
        let tr = read(src.train.expect("checked by TaskData::load"))?;
        let va = src.valid.map(read).transpose()?;
        let te = src.test.map(read).transpose()?;
        let truncated = tr.truncated + va.as_ref().map_or(0, |v| v.truncated) + te.as_ref().map_or(0, |v| v.truncated);
        let loaded = Loaded {
            train: seq_split(&tr),
            valid: va.as_ref().map(seq_split),
            test: te.as_ref().map(seq_split),
            shape: tokens(fasta::vocab_size() as i64, self.num_classes as i64),
            truncated,
            label_names: None,
        };
        loaded.finish(spec, src)
    }

    fn sample_form(&self, shape: &HeadShape, _fitted: &Fitted) -> Form {
        Form::Ids { vocab: vocab(shape), text: Some(fasta::encode_protein) }
    }
}
