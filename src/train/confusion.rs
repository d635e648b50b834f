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
    /// The class names (the training file's, or the indices), in index order; up to
    /// [`MAX_MATRIX`] classes (above, the best and the worst name theirs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// How many classes the head has.
    #[serde(default)]
    pub classes: usize,
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
    // Rows of the matrix up to MAX_MATRIX classes; above, one row of (rows, right) per class:
    // a head of 65,536 classes must not ask for a matrix of 4 billion counts.
    let mut counts = Counts::new(k);
    let batches = task.eval_batches(split, batch);
    if batches.is_empty() {
        return None;
    }
    tch::no_grad(|| {
        for b in batches {
            let b = b.to_device(model.device);
            let logits = task.objective.answer(model, &b.inputs, b.lengths.as_ref());
            let predicted =
                Vec::<i64>::try_from(logits.select(1, 0).argmax(-1, false).to_kind(Kind::Int64).to_device(tch::Device::Cpu)).ok()?;
            let truth = Vec::<i64>::try_from(b.targets.to_kind(Kind::Int64).to_device(tch::Device::Cpu)).ok()?;
            for (t, p) in truth.iter().zip(&predicted) {
                if let (Ok(t), Ok(p)) = (usize::try_from(*t), usize::try_from(*p)) {
                    if t < k && p < k {
                        counts.add(t, p);
                    }
                }
            }
        }
        Some(())
    })?;
    let label = |i: usize| names.get(i).cloned().unwrap_or_else(|| i.to_string());
    Some(summarise(split, &label, counts))
}

/// What is counted: the whole matrix for a few classes, each class's rows and hits for many.
enum Counts {
    Matrix(Vec<Vec<u64>>),
    PerClass { rows: Vec<u64>, right: Vec<u64> },
}

impl Counts {
    fn new(k: usize) -> Self {
        if k <= MAX_MATRIX {
            Counts::Matrix(vec![vec![0; k]; k])
        } else {
            Counts::PerClass { rows: vec![0; k], right: vec![0; k] }
        }
    }

    fn add(&mut self, truth: usize, predicted: usize) {
        match self {
            Counts::Matrix(m) => m[truth][predicted] += 1,
            Counts::PerClass { rows, right } => {
                rows[truth] += 1;
                right[truth] += u64::from(truth == predicted);
            }
        }
    }
}

fn summarise(split: EvalSplit, label: &dyn Fn(usize) -> String, counts: Counts) -> Confusion {
    let split = match split {
        EvalSplit::Valid => "valid",
        EvalSplit::Test => "test",
    }
    .to_string();
    let accuracy = |rows: u64, right: u64| (rows > 0).then(|| right as f64 / rows as f64);
    let (rows, right) = match counts {
        Counts::Matrix(m) => {
            let per_class = m.iter().enumerate().map(|(i, r)| accuracy(r.iter().sum(), r[i])).collect();
            let labels = (0..m.len()).map(label).collect();
            let classes = m.len();
            return Confusion {
                split,
                labels,
                classes,
                matrix: Some(m),
                per_class_accuracy: Some(per_class),
                best: Vec::new(),
                worst: Vec::new(),
            };
        }
        Counts::PerClass { rows, right } => (rows, right),
    };
    let mut seen: Vec<(usize, f64)> = (0..rows.len()).filter_map(|i| accuracy(rows[i], right[i]).map(|a| (i, a))).collect();
    // Best first; among equals, the class with more rows (its accuracy says more).
    seen.sort_by(|a, b| b.1.total_cmp(&a.1).then(rows[b.0].cmp(&rows[a.0])));
    let named = |&(i, accuracy): &(usize, f64)| ClassAccuracy { label: label(i), accuracy, rows: rows[i] };
    let best = seen.iter().take(EXTREMES).map(named).collect();
    let worst = seen.iter().rev().take(EXTREMES).map(named).collect();
    Confusion { split, labels: Vec::new(), classes: rows.len(), matrix: None, per_class_accuracy: None, best, worst }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_matrix_is_kept_whole_and_a_large_one_summed_up() {
        let names = |i: usize| ["a", "b", "c"][i].to_string();
        let mut small = Counts::new(3);
        for (t, p, n) in [(0, 0, 3), (0, 1, 1), (1, 1, 2)] {
            (0..n).for_each(|_| small.add(t, p));
        }
        let c = summarise(EvalSplit::Valid, &names, small);
        assert_eq!((c.matrix.as_ref().unwrap()[0].clone(), c.labels.len(), c.classes), (vec![3, 1, 0], 3, 3));
        assert_eq!(c.per_class_accuracy.unwrap(), [Some(0.75), Some(1.0), None]);
        // Class i has i rows right and one predicted as class 0 (class 0: none of its own).
        let k = MAX_MATRIX + 10;
        let mut many = Counts::new(k);
        for i in 1..k {
            (0..i).for_each(|_| many.add(i, i));
            many.add(i, 0);
        }
        let big = summarise(EvalSplit::Test, &|i: usize| i.to_string(), many);
        assert!(big.matrix.is_none() && big.per_class_accuracy.is_none() && big.labels.is_empty() && big.classes == k);
        assert_eq!((big.best.len(), big.worst.len()), (EXTREMES, EXTREMES));
        assert_eq!(big.best[0].label, (k - 1).to_string());
        assert_eq!(big.worst[0].label, "1", "class 1: one row right of two");
        assert_eq!(big.split, "test");
    }
}
