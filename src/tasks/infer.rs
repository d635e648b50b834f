//! The task of a job whose request names none (OpenAI's requests have no field for it), inferred
//! from its training file: the format says it for the paper's datasets, the records' labels for
//! the rest (class indices or names: classification; numbers under `target`: regression; 0/1
//! vectors: multi-label). What cannot be told from the file (a series' horizon, token ids from
//! numbers) is refused, naming what to give.
use std::path::Path;

use serde_json::json;

use super::files::{read_detected, read_records};
use super::{SpecError, TaskSpec};
use crate::data::records::RecordSpec;
use crate::data::{self, Format, RecordLabels};

const FORECASTING: &str = r#"{"type": "forecasting", "context_length": L, "horizon": H}"#;

fn refuse(message: impl Into<String>) -> SpecError {
    SpecError { field: "task".into(), message: message.into() }
}

/// The task for the training file at `path`, or why none can be told.
pub fn infer_task(path: &Path) -> Result<TaskSpec, SpecError> {
    let (bytes, format) = read_detected(path).map_err(|e| refuse(format!("{e:#}")))?;
    let task = match format {
        Format::IdxImages | Format::IdxLabels => json!({"type": "mnist"}),
        Format::Cifar10Bin => json!({"type": "cifar10"}),
        // A plain tar holds the MNIST pair; a .tar.gz may hold either dataset.
        Format::Cifar10TarGz if !bytes.starts_with(&[0x1f, 0x8b]) => json!({"type": "mnist"}),
        Format::Cifar10TarGz => json!({"type": "cifar10"}),
        Format::ListopsTsv => json!({"type": "listops"}),
        Format::Fasta | Format::TapeJson => json!({"type": "remote_homology"}),
        Format::Jsonl if data::series::holds_series(&bytes) => {
            return Err(refuse(format!("the training file holds series: a forecast needs its lengths, so name the task: {FORECASTING}")))
        }
        Format::Jsonl | Format::Csv | Format::Ts | Format::Parquet | Format::Npz | Format::Safetensors => from_labels(path, format)?,
    };
    Ok(serde_json::from_value(task).expect("every inferred task is a valid spec"))
}

/// A records file's task, told by its labels.
fn from_labels(path: &Path, format: Format) -> Result<serde_json::Value, SpecError> {
    let records = read_records(path, &RecordSpec::default()).map_err(|e| {
        let message = format!("{e:#}");
        // A table with neither a `label` nor a `target` column is a forecasting table.
        if matches!(format, Format::Csv | Format::Parquet) && message.contains("no column `label`") {
            refuse(format!("the training file is a table without a label or target column; name the task (a forecast of its columns: {FORECASTING})"))
        } else if message.contains("bit") {
            refuse(format!(
                "the training file's labels look like lists of label indices: name the task, {{\"type\": \"multilabel_classification\", \"num_labels\": N}} ({message})"
            ))
        } else {
            refuse(format!("no task can be inferred from the training file: {message}"))
        }
    })?;
    Ok(match records.labels {
        RecordLabels::Class(_) => json!({"type": "sequence_classification"}),
        RecordLabels::Targets { .. } => json!({"type": "regression"}),
        RecordLabels::Bits { per_sample, .. } => json!({"type": "multilabel_classification", "num_labels": per_sample}),
    })
}
