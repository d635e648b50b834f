//! The synthetic bit tasks: memory (recall a stored pattern from a half-masked copy) and XOR.
//! Generated on the fly from a seed, so a training step's batch depends on (seed, step) alone.
use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::samples::Form;
use super::spec::{bad, check};
use super::{step_seed, DataSources, Fitted, GeneratedFile, Generation, Objective, SpecError, Task, TaskData, TaskLimits, TaskSpec};
use crate::model::fpt::HeadShape;

/// `bit_memory`: the paper's defaults, 5 patterns of 1000 bits in patches of 50.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BitMemory {
    pub n_bits: usize,
    pub patch_size: usize,
    pub n_patterns: usize,
    pub mask_prob: f64,
    pub n_valid: usize,
}

impl Default for BitMemory {
    fn default() -> Self {
        Self { n_bits: 1000, patch_size: 50, n_patterns: 5, mask_prob: 0.5, n_valid: 1000 }
    }
}

/// `bit_xor`: two strings of 5 bits, one bit per token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BitXor {
    pub n_bits: usize,
    pub n_valid: usize,
}

impl Default for BitXor {
    fn default() -> Self {
        Self { n_bits: 5, n_valid: 1000 }
    }
}

fn check_bits(n_bits: usize, limits: &TaskLimits) -> Result<(), SpecError> {
    check::within("n_bits", n_bits, 1, limits.max_bits)
}

impl Task for BitMemory {
    fn validate(&self, limits: &TaskLimits) -> Result<(), SpecError> {
        check_bits(self.n_bits, limits)?;
        if self.patch_size == 0 || !self.n_bits.is_multiple_of(self.patch_size) {
            return Err(bad("patch_size", format!("n_bits {} must be a positive multiple of patch_size {}", self.n_bits, self.patch_size)));
        }
        check::within("n_patterns", self.n_patterns, 1, limits.max_patterns)?;
        if !(0.0..=1.0).contains(&self.mask_prob) {
            return Err(bad("mask_prob", "must be within 0..1"));
        }
        check::generated("n_valid", self.n_valid, self.drawn_values_per_sample().unwrap_or_default(), limits)
    }

    fn needs_file(&self) -> bool {
        false
    }

    fn drawn_values_per_sample(&self) -> Option<usize> {
        Some((self.n_patterns + 1) * self.n_bits + self.n_bits)
    }

    fn load(&self, spec: &TaskSpec, src: &DataSources<'_>) -> Result<TaskData> {
        let task = BitTask::Memory { n_bits: self.n_bits, patch: self.patch_size, n_patterns: self.n_patterns, mask_prob: self.mask_prob };
        TaskData::synthetic(spec, task, self.n_valid, src)
    }

    fn objective(&self, shape: &HeadShape, _fitted: &Fitted) -> Objective {
        Objective::Bits { per_token: shape.output_dim / 2 }
    }

    fn sample_form(&self, _shape: &HeadShape, _fitted: &Fitted) -> Form {
        Form::Vectors { dim: self.patch_size, fixed: Some((self.n_patterns + 1) * self.n_bits / self.patch_size), patch: None }
    }

    fn generated_files(&self, spec: &TaskSpec, run: &Generation) -> Result<Vec<GeneratedFile>> {
        let task = BitTask::Memory { n_bits: self.n_bits, patch: self.patch_size, n_patterns: self.n_patterns, mask_prob: self.mask_prob };
        Ok(vec![task.generator_file(spec, self.n_valid, run)])
    }
}

impl Task for BitXor {
    fn validate(&self, limits: &TaskLimits) -> Result<(), SpecError> {
        check_bits(self.n_bits, limits)?;
        check::generated("n_valid", self.n_valid, self.drawn_values_per_sample().unwrap_or_default(), limits)
    }

    fn needs_file(&self) -> bool {
        false
    }

    fn drawn_values_per_sample(&self) -> Option<usize> {
        Some(3 * self.n_bits)
    }

    fn load(&self, spec: &TaskSpec, src: &DataSources<'_>) -> Result<TaskData> {
        TaskData::synthetic(spec, BitTask::Xor { n_bits: self.n_bits }, self.n_valid, src)
    }

    fn objective(&self, shape: &HeadShape, _fitted: &Fitted) -> Objective {
        Objective::Bits { per_token: shape.output_dim / 2 }
    }

    fn sample_form(&self, _shape: &HeadShape, _fitted: &Fitted) -> Form {
        Form::Vectors { dim: 1, fixed: Some(2 * self.n_bits), patch: None }
    }

    fn generated_files(&self, spec: &TaskSpec, run: &Generation) -> Result<Vec<GeneratedFile>> {
        Ok(vec![BitTask::Xor { n_bits: self.n_bits }.generator_file(spec, self.n_valid, run)])
    }
}

/// One generated batch: inputs [B, tokens, token_dim] in the recipe's value coding, targets [B, bits] as 0/1.
pub struct BitBatch {
    pub inputs: Vec<f32>,
    pub targets: Vec<i64>,
}

#[derive(Debug, Clone, Copy)]
pub enum BitTask {
    /// `n_patterns` strings of +-1, then one of them again with each bit zeroed with `mask_prob`.
    Memory { n_bits: usize, patch: usize, n_patterns: usize, mask_prob: f64 },
    /// Two strings of 0/1, one bit per token; the target is their XOR.
    Xor { n_bits: usize },
}

impl BitTask {
    pub fn token_dim(&self) -> usize {
        match self {
            BitTask::Memory { patch, .. } => *patch,
            BitTask::Xor { .. } => 1,
        }
    }

    pub fn tokens(&self) -> usize {
        match self {
            BitTask::Memory { n_bits, patch, n_patterns, .. } => (n_patterns + 1) * n_bits / patch,
            BitTask::Xor { n_bits } => 2 * n_bits,
        }
    }

    pub fn target_bits(&self) -> usize {
        match self {
            BitTask::Memory { n_bits, .. } | BitTask::Xor { n_bits } => *n_bits,
        }
    }

    /// Output tokens read out, and bits per read-out token.
    pub fn readout(&self) -> (usize, usize) {
        match self {
            BitTask::Memory { n_bits, patch, .. } => (n_bits / patch, *patch),
            BitTask::Xor { n_bits } => (*n_bits, 1),
        }
    }

    pub fn generate(&self, seed: u64, batch: usize) -> BitBatch {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut inputs = Vec::with_capacity(batch * self.tokens() * self.token_dim());
        let mut targets = Vec::with_capacity(batch * self.target_bits());
        for _ in 0..batch {
            match *self {
                BitTask::Memory { n_bits, n_patterns, mask_prob, .. } => {
                    let patterns: Vec<Vec<f32>> =
                        (0..n_patterns).map(|_| (0..n_bits).map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 }).collect()).collect();
                    let pick = rng.random_range(0..n_patterns);
                    for p in &patterns {
                        inputs.extend_from_slice(p);
                    }
                    for &v in &patterns[pick] {
                        inputs.push(if rng.random_bool(mask_prob) { 0.0 } else { v });
                    }
                    targets.extend(patterns[pick].iter().map(|&v| i64::from(v > 0.0)));
                }
                BitTask::Xor { n_bits } => {
                    let a: Vec<i64> = (0..n_bits).map(|_| rng.random_range(0..2)).collect();
                    let b: Vec<i64> = (0..n_bits).map(|_| rng.random_range(0..2)).collect();
                    inputs.extend(a.iter().chain(&b).map(|&v| v as f32));
                    targets.extend(a.iter().zip(&b).map(|(x, y)| x ^ y));
                }
            }
        }
        BitBatch { inputs, targets }
    }

    /// The training data of a run, described: every step draws its batch afresh (the bit memory
    /// task's stream runs to gigabytes), so the file says how step `s`'s batch and the validation
    /// split are drawn and holds the first samples of step 0 as they are drawn.
    fn generator_file(&self, spec: &TaskSpec, n_valid: usize, run: &Generation) -> GeneratedFile {
        const SHOWN: usize = 16;
        let shown = run.batch_size.min(SHOWN);
        let b = self.generate(step_seed(run.seed, 0), shown);
        let (width, bits) = (self.tokens() * self.token_dim(), self.target_bits());
        let samples: Vec<serde_json::Value> = (0..shown)
            .map(|i| {
                let tokens: Vec<&[f32]> = b.inputs[i * width..(i + 1) * width].chunks(self.token_dim()).collect();
                serde_json::json!({"input": tokens, "target": &b.targets[i * bits..(i + 1) * bits]})
            })
            .collect();
        let doc = serde_json::json!({
            "object": "fpt.generated_dataset",
            "task": spec,
            "seed": run.seed,
            "batch_size": run.batch_size,
            "n_steps": run.n_steps,
            "training": "step s (0, 1, ...) draws batch_size fresh samples with ChaCha8 seeded by step_seed(seed, s), \
                         SplitMix64's finaliser of seed + s * 0x9E3779B97F4A7C15 (src/tasks/mod.rs)",
            "validation": {"samples": n_valid.max(1), "seed": step_seed(run.seed, u64::MAX)},
            "shape": {"tokens": self.tokens(), "token_dim": self.token_dim(), "target_bits": bits},
            "first_samples_of_step_0": samples,
        });
        let samples = (run.batch_size as u64).saturating_mul(run.n_steps) as usize;
        GeneratedFile { split: "training", format: "generator_json", extension: "json", samples, bytes: doc.to_string().into_bytes() }
    }

    /// The batch as tensors: inputs [B, tokens, token_dim], targets [B, bits].
    pub fn tensors(&self, seed: u64, batch: usize) -> (Tensor, Tensor) {
        let b = self.generate(seed, batch);
        let x = Tensor::from_slice(&b.inputs).view([batch as i64, self.tokens() as i64, self.token_dim() as i64]);
        let y = Tensor::from_slice(&b.targets).view([batch as i64, self.target_bits() as i64]).to_kind(Kind::Int64);
        (x, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_targets_are_the_xor_of_the_two_halves() {
        let t = BitTask::Xor { n_bits: 5 };
        let b = t.generate(7, 4);
        for i in 0..4 {
            let x = &b.inputs[i * 10..(i + 1) * 10];
            for j in 0..5 {
                assert_eq!(b.targets[i * 5 + j], (x[j] as i64) ^ (x[j + 5] as i64));
            }
        }
    }

    #[test]
    fn memory_query_is_a_masked_copy_of_the_target_pattern() {
        let t = BitTask::Memory { n_bits: 20, patch: 5, n_patterns: 3, mask_prob: 0.5 };
        assert_eq!(t.tokens(), 16);
        let b = t.generate(1, 2);
        for i in 0..2 {
            let row = &b.inputs[i * 80..(i + 1) * 80];
            let query = &row[60..80];
            let target: Vec<f32> = b.targets[i * 20..(i + 1) * 20].iter().map(|&v| if v == 1 { 1.0 } else { -1.0 }).collect();
            assert!(query.iter().zip(&target).all(|(q, t)| *q == 0.0 || q == t));
            let stored = (0..3).any(|p| row[p * 20..(p + 1) * 20] == target[..]);
            assert!(stored, "the target is one of the stored patterns");
            assert!(query.iter().any(|&q| q == 0.0), "some bits are masked");
        }
    }

    #[test]
    fn generation_is_determined_by_the_seed() {
        let t = BitTask::Xor { n_bits: 8 };
        assert_eq!(t.generate(3, 5).inputs, t.generate(3, 5).inputs);
        assert_ne!(t.generate(3, 5).inputs, t.generate(4, 5).inputs);
    }
}

#[cfg(test)]
mod generated_file {
    use super::*;
    use crate::tasks::{DataSources, TaskData};

    #[test]
    fn the_file_of_a_run_shows_the_batch_its_first_step_trains_on() {
        let spec: TaskSpec = serde_json::from_value(serde_json::json!({"type": "bit_xor", "n_bits": 3, "n_valid": 4})).unwrap();
        let run = Generation { seed: 11, max_positions: 64, batch_size: 5, n_steps: 7 };
        let files = spec.task().generated_files(&spec, &run).unwrap();
        assert_eq!((files.len(), files[0].split, files[0].samples), (1, "training", 35));
        let doc: serde_json::Value = serde_json::from_slice(&files[0].bytes).unwrap();
        assert_eq!((doc["seed"].as_u64(), doc["batch_size"].as_u64(), doc["task"]["type"].as_str()), (Some(11), Some(5), Some("bit_xor")));
        let src = DataSources { train: None, valid: None, test: None, valid_fraction: 0.1, seed: 11, max_positions: 64, fitted: None };
        let data = TaskData::load(&spec, &src).unwrap();
        let batch = data.train_batch(0, 5);
        let inputs: Vec<f32> = batch.inputs.flatten(0, -1).try_into().unwrap();
        let targets: Vec<i64> = batch.targets.flatten(0, -1).try_into().unwrap();
        let shown = doc["first_samples_of_step_0"].as_array().unwrap();
        assert_eq!(shown.len(), 5);
        for (i, s) in shown.iter().enumerate() {
            let x: Vec<f32> = s["input"].as_array().unwrap().iter().flat_map(|t| t.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32)).collect();
            let y: Vec<i64> = s["target"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            assert_eq!(x, inputs[i * 6..(i + 1) * 6], "sample {i}'s input");
            assert_eq!(y, targets[i * 3..(i + 1) * 3], "sample {i}'s target");
        }
    }
}
