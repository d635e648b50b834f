//! Where a classifier goes wrong: the confusion matrix of a split (up to [`MAX_MATRIX`] classes),
//! or, for more classes, each class's accuracy summed up by the best and the worst.
use serde::{Deserialize, Serialize};
use tch::Kind;

use crate::model::fpt::FptModel;
use crate::tasks::{EvalSplit, Objective, TaskData};

/// Classes up to which the whole matrix is kept (2,500 counts); above, per-class accuracies.
pub const MAX_MATRIX: usize = 50;
/// Classes named as the best and the worst when there are too many for the matrix.
const EXTREMES: usize = 5;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Confusion {
    /// The split it counts (`valid` or `test`).
    pub split: String,
    /// The class names (the training file's, or the indices), in index order.
    pub labels: Vec<String>,
    /// `matrix[true][predicted]`: rows counted; up to [`MAX_MATRIX`] classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<Vec<Vec<u64>>>,
    /// Each class's accuracy (None: the split has no row of it); up to [`MAX_MATRIX`] classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_class_accuracy: Option<Vec<Option<f64>>>,
    /// The classes predicted best and worst, with their accuracy and row count (more classes than
    /// the matrix holds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub best: Vec<ClassAccuracy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worst: Vec<ClassAccuracy>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassAccuracy {
    pub label: String,
    pub accuracy: f64,
    pub rows: u64,
}

/// The confusion of the model's predictions on `split`; None for tasks that are not one class
/// per row, or a split with no rows.
pub fn confusion(model: &FptModel, task: &TaskData, split: EvalSplit, batch: usize) -> Option<Confusion> {
    let Objective::Classes { names } = &task.objective else { return None };
    let k = task.shape.output_dim as usize;
    let mut counts = vec![vec![0u64; k]; k];
    let batches = task.eval_batches(split, batch);
    if batches.is_empty() {
        return None;
    }
    tch::no_grad(|| {
        for b in batches {
            let b = b.to_device(model.device);
            let logits = model.forward(&b.inputs, b.lengths.as_ref(), false);
            let predicted =
                Vec::<i64>::try_from(logits.select(1, 0).argmax(-1, false).to_kind(Kind::Int64).to_device(tch::Device::Cpu)).ok()?;
            let truth = Vec::<i64>::try_from(b.targets.to_kind(Kind::Int64).to_device(tch::Device::Cpu)).ok()?;
            for (t, p) in truth.iter().zip(&predicted) {
                if let (Ok(t), Ok(p)) = (usize::try_from(*t), usize::try_from(*p)) {
                    if t < k && p < k {
                        counts[t][p] += 1;
                    }
                }
            }
        }
        Some(())
    })?;
    let labels: Vec<String> = (0..k).map(|i| names.get(i).cloned().unwrap_or_else(|| i.to_string())).collect();
    Some(summarise(split, labels, counts))
}

fn summarise(split: EvalSplit, labels: Vec<String>, counts: Vec<Vec<u64>>) -> Confusion {
    let rows: Vec<u64> = counts.iter().map(|r| r.iter().sum()).collect();
    let accuracy: Vec<Option<f64>> = (0..counts.len()).map(|i| (rows[i] > 0).then(|| counts[i][i] as f64 / rows[i] as f64)).collect();
    let split = match split {
        EvalSplit::Valid => "valid",
        EvalSplit::Test => "test",
    }
    .to_string();
    if counts.len() <= MAX_MATRIX {
        return Confusion { split, labels, matrix: Some(counts), per_class_accuracy: Some(accuracy), best: Vec::new(), worst: Vec::new() };
    }
    let mut seen: Vec<ClassAccuracy> = accuracy
        .iter()
        .enumerate()
        .filter_map(|(i, a)| a.map(|accuracy| ClassAccuracy { label: labels[i].clone(), accuracy, rows: rows[i] }))
        .collect();
    // Best first; among equals, the class with more rows (its accuracy says more).
    seen.sort_by(|a, b| b.accuracy.total_cmp(&a.accuracy).then(b.rows.cmp(&a.rows)));
    let best = seen.iter().take(EXTREMES).cloned().collect();
    let worst = seen.iter().rev().take(EXTREMES).cloned().collect();
    Confusion { split, labels, matrix: None, per_class_accuracy: None, best, worst }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_matrix_is_kept_whole_and_a_large_one_summed_up() {
        let c = summarise(EvalSplit::Valid, vec!["a".into(), "b".into(), "c".into()], vec![vec![3, 1, 0], vec![0, 2, 0], vec![0, 0, 0]]);
        assert_eq!(c.matrix.as_ref().unwrap()[0], [3, 1, 0]);
        assert_eq!(c.per_class_accuracy.unwrap(), [Some(0.75), Some(1.0), None]);
        let k = MAX_MATRIX + 10;
        let counts: Vec<Vec<u64>> = (0..k).map(|i| (0..k).map(|j| if i == j { i as u64 } else { u64::from(j == 0) }).collect()).collect();
        let big = summarise(EvalSplit::Test, (0..k).map(|i| i.to_string()).collect(), counts);
        assert!(big.matrix.is_none() && big.per_class_accuracy.is_none());
        assert_eq!((big.best.len(), big.worst.len()), (EXTREMES, EXTREMES));
        assert_eq!(big.best[0].label, (k - 1).to_string());
        assert_eq!(big.worst[0].label, "1", "class 1: one row right of two");
        assert_eq!(big.split, "test");
    }
}
