//! The task a job asks for (`task` in the API, `--task` on the command line): its parse, its
//! errors (named by field), and the bounds every task's sizes are checked against. The task types
//! themselves are registered in the parent module.
use super::TaskSpec;

/// The largest sizes a task may ask for. Each bounds an allocation made from the spec before any
/// data is seen (a generated split, a head, an embedding, an image), so the defaults fit a 24 GiB
/// machine with room to spare.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskLimits {
    pub max_classes: usize,
    pub max_input_dim: usize,
    pub max_vocab: usize,
    /// Tokens a task may ask a sequence to be cut to (a backbone's positions cut it further).
    pub max_len: usize,
    pub max_bits: usize,
    pub max_patterns: usize,
    /// Samples of a generated split (bit tasks, generated ListOps).
    pub max_generated_samples: usize,
    /// Values of a generated split (samples x values each).
    pub max_generated_values: usize,
    pub max_listops_depth: usize,
    pub max_listops_args: usize,
    pub max_image_side: usize,
    pub max_channels: usize,
    pub max_image_values: usize,
}

impl Default for TaskLimits {
    fn default() -> Self {
        Self {
            max_classes: 65_536,
            max_input_dim: 65_536,
            max_vocab: 131_072,
            max_len: 1 << 20,
            max_bits: 16_384,
            max_patterns: 64,
            max_generated_samples: 200_000,
            max_generated_values: 1 << 28,
            max_listops_depth: 32,
            max_listops_args: 32,
            max_image_side: 16_384,
            max_channels: 64,
            max_image_values: 1 << 24,
        }
    }
}

/// A field that is wrong, named by its path as the API names it (`task.n_bits`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

/// An error in the task's field `field`.
pub(crate) fn bad(field: &str, message: impl Into<String>) -> SpecError {
    SpecError { field: format!("task.{field}"), message: message.into() }
}

impl TaskSpec {
    /// Parses `--task`: a bare type name (`mnist`) or a JSON object.
    pub fn parse_cli(s: &str) -> Result<Self, String> {
        let v: serde_json::Value = if s.trim_start().starts_with('{') {
            serde_json::from_str(s).map_err(|e| format!("--task is not valid JSON: {e}"))?
        } else {
            serde_json::json!({ "type": s })
        };
        serde_json::from_value(v).map_err(|e| format!("--task: {e}"))
    }

    /// Generated tasks need no file.
    pub fn needs_file(&self) -> bool {
        self.task().needs_file()
    }

    /// Checks values that serde cannot: ranges, consistency, and every size against `limits`
    /// (with checked arithmetic), so that no spec makes the process allocate unchecked amounts.
    pub fn validate(&self, limits: &TaskLimits) -> Result<(), SpecError> {
        self.task().validate(limits)
    }
}

/// Checks shared by the tasks' `validate`.
pub(crate) mod check {
    use super::{bad, SpecError, TaskLimits};

    pub fn classes(n: usize, limits: &TaskLimits) -> Result<(), SpecError> {
        if n < 2 || n > limits.max_classes {
            return Err(bad("num_classes", format!("must be within 2..={}", limits.max_classes)));
        }
        Ok(())
    }

    pub fn length(field: &str, n: usize, min: usize, limits: &TaskLimits) -> Result<(), SpecError> {
        if n < min || n > limits.max_len {
            return Err(bad(field, format!("must be within {min}..={}", limits.max_len)));
        }
        Ok(())
    }

    /// A generated split of `n` samples of `values_each` values.
    pub fn generated(field: &str, n: usize, values_each: usize, limits: &TaskLimits) -> Result<(), SpecError> {
        let values = n.checked_mul(values_each);
        if n == 0 || n > limits.max_generated_samples || values.is_none_or(|v| v > limits.max_generated_values) {
            return Err(bad(
                field,
                format!(
                    "must be within 1..={} samples of at most {} values in all",
                    limits.max_generated_samples, limits.max_generated_values
                ),
            ));
        }
        Ok(())
    }

    /// A sequence task's input: `input_dim` (continuous tokens), `vocab_size` (token ids), or
    /// neither (continuous tokens, their size taken from the training file).
    pub fn sequence_input(input_dim: Option<usize>, vocab_size: Option<usize>, limits: &TaskLimits) -> Result<(), SpecError> {
        match (input_dim, vocab_size) {
            (Some(d), None) => within("input_dim", d, 1, limits.max_input_dim),
            (None, Some(v)) => within("vocab_size", v, 1, limits.max_vocab),
            (Some(_), Some(_)) => Err(bad("input_dim", "give input_dim (continuous) or vocab_size (token ids), not both")),
            (None, None) => Ok(()),
        }
    }

    /// A sequence task's optional `max_len`: at least 1, within the length bound.
    pub fn max_len(max_len: Option<usize>, limits: &TaskLimits) -> Result<(), SpecError> {
        max_len.map_or(Ok(()), |l| length("max_len", l, 1, limits))
    }

    /// A CSV column name: 1 to 256 characters.
    pub fn column(field: &str, name: Option<&str>) -> Result<(), SpecError> {
        match name {
            Some(n) if n.is_empty() || n.chars().count() > 256 => Err(bad(field, "a column name is 1 to 256 characters")),
            _ => Ok(()),
        }
    }

    pub fn within(field: &str, n: usize, min: usize, max: usize) -> Result<(), SpecError> {
        if n < min || n > max {
            return Err(bad(field, format!("must be within {min}..={max}")));
        }
        Ok(())
    }
}
