//! The task a job asks for (`task` in the API, `--task` on the command line), with the paper's defaults.
use serde::{Deserialize, Serialize};

use crate::data::listops::GenParams;

/// One of the paper's tasks or a generic user task. Unknown fields are refused, so typos surface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskSpec {
    BitMemory {
        #[serde(default = "d_1000")]
        n_bits: usize,
        #[serde(default = "d_50")]
        patch_size: usize,
        #[serde(default = "d_5")]
        n_patterns: usize,
        #[serde(default = "d_half")]
        mask_prob: f64,
        #[serde(default = "d_1000")]
        n_valid: usize,
    },
    BitXor {
        #[serde(default = "d_5")]
        n_bits: usize,
        #[serde(default = "d_1000")]
        n_valid: usize,
    },
    Listops {
        #[serde(default = "d_512")]
        max_len: usize,
        /// Generate the data with the LRA rules instead of reading a TSV file.
        #[serde(default)]
        generate: bool,
        #[serde(default = "d_2000")]
        n_train: usize,
        #[serde(default = "d_500")]
        n_valid: usize,
        #[serde(default = "d_10")]
        max_depth: usize,
        #[serde(default = "d_10")]
        max_args: usize,
        #[serde(default)]
        min_length: usize,
    },
    Mnist {
        /// The paper's 4x4 (49 tokens of 16); 7 gives 16 tokens of 49, a third of the compute.
        #[serde(default = "d_4")]
        patch_size: usize,
    },
    Cifar10 {
        #[serde(default = "d_true")]
        augment: bool,
    },
    Cifar10Lra {},
    RemoteHomology {
        #[serde(default = "d_1024")]
        max_len: usize,
        #[serde(default = "d_1195")]
        num_classes: usize,
    },
    SequenceClassification {
        input_dim: Option<usize>,
        vocab_size: Option<usize>,
        num_classes: usize,
        max_len: Option<usize>,
    },
    ImageClassification {
        height: usize,
        width: usize,
        #[serde(default = "d_1")]
        channels: usize,
        #[serde(default = "d_4")]
        patch_size: usize,
        num_classes: usize,
    },
}

fn d_1() -> usize {
    1
}
fn d_4() -> usize {
    4
}
fn d_5() -> usize {
    5
}
fn d_10() -> usize {
    10
}
fn d_50() -> usize {
    50
}
fn d_500() -> usize {
    500
}
fn d_512() -> usize {
    512
}
fn d_1000() -> usize {
    1000
}
fn d_1024() -> usize {
    1024
}
fn d_1195() -> usize {
    1195
}
fn d_2000() -> usize {
    2000
}
fn d_half() -> f64 {
    0.5
}
fn d_true() -> bool {
    true
}

/// A field of the task that is wrong, named as the API names it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> SpecError {
    SpecError { field: format!("task.{field}"), message: message.into() }
}

impl TaskSpec {
    pub fn name(&self) -> &'static str {
        match self {
            TaskSpec::BitMemory { .. } => "bit_memory",
            TaskSpec::BitXor { .. } => "bit_xor",
            TaskSpec::Listops { .. } => "listops",
            TaskSpec::Mnist { .. } => "mnist",
            TaskSpec::Cifar10 { .. } => "cifar10",
            TaskSpec::Cifar10Lra {} => "cifar10_lra",
            TaskSpec::RemoteHomology { .. } => "remote_homology",
            TaskSpec::SequenceClassification { .. } => "sequence_classification",
            TaskSpec::ImageClassification { .. } => "image_classification",
        }
    }

    /// Parses `--task`: a bare type name (`mnist`) or a JSON object.
    pub fn parse_cli(s: &str) -> Result<Self, String> {
        let v: serde_json::Value = if s.trim_start().starts_with('{') {
            serde_json::from_str(s).map_err(|e| format!("--task is not valid JSON: {e}"))?
        } else {
            serde_json::json!({ "type": s })
        };
        serde_json::from_value(v).map_err(|e| format!("--task: {e}"))
    }

    /// Synthetic tasks need no file.
    pub fn needs_file(&self) -> bool {
        match self {
            TaskSpec::BitMemory { .. } | TaskSpec::BitXor { .. } => false,
            TaskSpec::Listops { generate, .. } => !generate,
            _ => true,
        }
    }

    /// Checks values that serde cannot: ranges and consistency.
    pub fn validate(&self) -> Result<(), SpecError> {
        match self {
            TaskSpec::BitMemory { n_bits, patch_size, n_patterns, mask_prob, .. } => {
                if *n_bits == 0 || *patch_size == 0 || n_bits % patch_size != 0 {
                    return Err(bad("patch_size", format!("n_bits {n_bits} must be a positive multiple of patch_size {patch_size}")));
                }
                if *n_patterns == 0 {
                    return Err(bad("n_patterns", "must be at least 1"));
                }
                if !(0.0..=1.0).contains(mask_prob) {
                    return Err(bad("mask_prob", "must be within 0..1"));
                }
            }
            TaskSpec::BitXor { n_bits, .. } if *n_bits == 0 => return Err(bad("n_bits", "must be at least 1")),
            TaskSpec::Mnist { patch_size } if *patch_size == 0 || 28 % patch_size != 0 => {
                return Err(bad("patch_size", format!("{patch_size} does not divide the 28-pixel side (1, 2, 4, 7, 14 or 28)")))
            }
            TaskSpec::Listops { max_len, max_depth, max_args, .. } => {
                if *max_len < 3 {
                    return Err(bad("max_len", "must be at least 3"));
                }
                if *max_depth == 0 || *max_args < 2 {
                    return Err(bad("max_args", "max_depth must be >= 1 and max_args >= 2"));
                }
            }
            TaskSpec::SequenceClassification { input_dim, vocab_size, num_classes, .. } => {
                match (input_dim, vocab_size) {
                    (Some(0), _) => return Err(bad("input_dim", "must be at least 1")),
                    (_, Some(0)) => return Err(bad("vocab_size", "must be at least 1")),
                    (Some(_), Some(_)) => return Err(bad("input_dim", "give input_dim (continuous) or vocab_size (token ids), not both")),
                    (None, None) => return Err(bad("input_dim", "give input_dim (continuous) or vocab_size (token ids)")),
                    _ => {}
                }
                if *num_classes < 2 {
                    return Err(bad("num_classes", "must be at least 2"));
                }
            }
            TaskSpec::ImageClassification { height, width, channels, patch_size, num_classes } => {
                if *patch_size == 0 || height % patch_size != 0 || width % patch_size != 0 || *height == 0 || *width == 0 {
                    return Err(bad(
                        "patch_size",
                        format!("height {height} and width {width} must be positive multiples of patch_size {patch_size}"),
                    ));
                }
                if *channels == 0 {
                    return Err(bad("channels", "must be at least 1"));
                }
                if *num_classes < 2 {
                    return Err(bad("num_classes", "must be at least 2"));
                }
            }
            TaskSpec::RemoteHomology { num_classes, max_len } => {
                if *num_classes < 2 {
                    return Err(bad("num_classes", "must be at least 2"));
                }
                if *max_len == 0 {
                    return Err(bad("max_len", "must be at least 1"));
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub fn listops_gen_params(&self) -> Option<GenParams> {
        match self {
            TaskSpec::Listops { max_len, max_depth, max_args, min_length, .. } => {
                Some(GenParams { max_depth: *max_depth, max_args: *max_args, max_length: *max_len, min_length: *min_length })
            }
            _ => None,
        }
    }
}
