//! `listops`: LRA's ListOps (nested MAX/MIN/MED/SUM_MOD expressions, ten classes), from its TSV
//! files or generated with its rules.
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::files::{check_seq_classes, named, read_file, seq_split, tokens, Loaded};
use super::samples::{vocab, Form};
use super::spec::{bad, check};
use super::{DataSources, Fitted, GeneratedFile, Generation, SpecError, Task, TaskData, TaskLimits, TaskSpec};
use crate::data::listops::{self, GenParams};
use crate::data::SequenceSet;
use crate::model::fpt::HeadShape;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listops {
    pub max_len: usize,
    /// Generate the data with the LRA rules instead of reading a TSV file.
    pub generate: bool,
    pub n_train: usize,
    pub n_valid: usize,
    pub max_depth: usize,
    pub max_args: usize,
    pub min_length: usize,
}

impl Default for Listops {
    fn default() -> Self {
        Self { max_len: 512, generate: false, n_train: 2000, n_valid: 500, max_depth: 10, max_args: 10, min_length: 0 }
    }
}

impl Listops {
    pub fn gen_params(&self) -> GenParams {
        GenParams { max_depth: self.max_depth, max_args: self.max_args, max_length: self.max_len, min_length: self.min_length }
    }

    /// The generated training and validation splits as LRA's TSV: what `load` trains on, and what
    /// a client downloads (and could train on again with `generate: false`).
    fn generated_tsv(&self, seed: u64, max_positions: usize) -> Result<[(String, usize); 2]> {
        let params = GenParams { max_length: self.max_len.min(max_positions), ..self.gen_params() };
        let tsv = |seed: u64, n: usize| -> Result<(String, usize)> { Ok((listops::to_tsv(&listops::generate(seed, n, &params)?), n)) };
        Ok([tsv(seed, self.n_train)?, tsv(seed ^ 0xfeed, self.n_valid)?])
    }
}

impl Task for Listops {
    fn validate(&self, limits: &TaskLimits) -> Result<(), SpecError> {
        check::length("max_len", self.max_len, 3, limits)?;
        check::within("max_depth", self.max_depth, 1, limits.max_listops_depth)?;
        check::within("max_args", self.max_args, 2, limits.max_listops_args)?;
        if self.min_length > self.max_len {
            return Err(bad("min_length", format!("must be at most max_len ({})", self.max_len)));
        }
        if !self.generate {
            return Ok(());
        }
        check::generated("n_train", self.n_train, self.max_len, limits)?;
        check::generated("n_valid", self.n_valid, self.max_len, limits)
    }

    fn needs_file(&self) -> bool {
        !self.generate
    }

    fn load(&self, spec: &TaskSpec, src: &DataSources<'_>) -> Result<TaskData> {
        let max_len = self.max_len.min(src.max_positions);
        let read = |p: &Path| -> Result<SequenceSet> { listops::read_tsv(&read_file(p)?, max_len).map_err(|e| named(p, e)) };
        let (tr, va) = if self.generate {
            let [(train, _), (valid, _)] = self.generated_tsv(src.seed, src.max_positions)?;
            (listops::read_tsv(train.as_bytes(), max_len)?, Some(listops::read_tsv(valid.as_bytes(), max_len)?))
        } else {
            (read(src.train.expect("checked by TaskData::load"))?, src.valid.map(read).transpose()?)
        };
        let truncated = tr.truncated + va.as_ref().map_or(0, |v| v.truncated);
        let test = src.test.map(|p| read(p).map(|s| seq_split(&s))).transpose()?;
        let loaded = Loaded {
            train: seq_split(&check_seq_classes(tr, 10)?),
            valid: va.map(|v| check_seq_classes(v, 10).map(|v| seq_split(&v))).transpose()?,
            test,
            shape: tokens(listops::vocab_size() as i64, 10),
            truncated,
            label_names: None,
        };
        loaded.finish(spec, src)
    }

    fn sample_form(&self, shape: &HeadShape, _fitted: &Fitted) -> Form {
        Form::Ids { vocab: vocab(shape), text: Some(listops::tokenize) }
    }

    fn generated_files(&self, _spec: &TaskSpec, run: &Generation) -> Result<Vec<GeneratedFile>> {
        if !self.generate {
            return Ok(Vec::new());
        }
        let file = |split, (tsv, samples): (String, usize)| GeneratedFile { split, format: "listops_tsv", extension: "tsv", samples, bytes: tsv.into_bytes() };
        let [train, valid] = self.generated_tsv(run.seed, run.max_positions)?;
        Ok(vec![file("training", train), file("validation", valid)])
    }
}
