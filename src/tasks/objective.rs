//! What a head's logits mean: the loss they are trained by, the metrics they are judged by (and
//! which one is primary), and the answers a prediction gives. A task picks its objective.
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::metrics::{Direction, MetricMap, Primary, Tally};

#[derive(Debug, Clone, Copy)]
pub enum Objective {
    /// One class per row from the first read-out token; cross-entropy; `accuracy`.
    Classes,
    /// Each read-out token predicts `per_token` bits, two logits each; per-bit cross-entropy;
    /// `accuracy` per bit and `exact_accuracy` per row (every bit right).
    Bits { per_token: i64 },
}

/// The mean loss of a batch (for the gradient) and its metric sums.
pub struct Score {
    pub loss: Tensor,
    pub tally: Tally,
}

fn count(t: Tensor) -> f64 {
    i64::try_from(t.sum(Kind::Int64)).unwrap() as f64
}

impl Objective {
    /// Scores logits [B, k, out] against the batch's targets.
    pub fn score(&self, logits: &Tensor, targets: &Tensor) -> Score {
        let b = logits.size()[0];
        let mut tally = Tally::default();
        let loss = match self {
            Objective::Classes => {
                let l = logits.select(1, 0).to_kind(Kind::Float);
                tally.add("correct", count(l.argmax(-1, false).eq_tensor(targets)));
                tally.add("rows", b as f64);
                l.cross_entropy_for_logits(targets)
            }
            Objective::Bits { .. } => {
                let l = logits.to_kind(Kind::Float).reshape([b, -1, 2]);
                let right = l.argmax(-1, false).eq_tensor(targets);
                tally.add("correct", count(right.shallow_clone()));
                tally.add("bits", targets.numel() as f64);
                tally.add("exact", count(right.all_dim(1, false)));
                tally.add("rows", b as f64);
                l.reshape([-1, 2]).cross_entropy_for_logits(&targets.reshape([-1]))
            }
        };
        Score { loss, tally }
    }

    /// The metrics of everything tallied.
    pub fn metrics(&self, t: &Tally) -> MetricMap {
        let mut m = MetricMap::new();
        let mut put = |name: &str, v: Option<f64>| {
            if let Some(v) = v {
                m.insert(name.to_string(), v);
            }
        };
        match self {
            Objective::Classes => put("accuracy", t.ratio("correct", "rows")),
            Objective::Bits { .. } => {
                put("accuracy", t.ratio("correct", "bits"));
                put("exact_accuracy", t.ratio("exact", "rows"));
            }
        }
        m
    }

    pub fn primary(&self) -> Primary {
        Primary { name: "accuracy", direction: Direction::Higher }
    }

    /// Logits [B, k, out] to answers.
    pub fn predictions(&self, logits: &Tensor) -> Vec<Prediction> {
        let b = logits.size()[0];
        match self {
            Objective::Classes => {
                let p = logits.select(1, 0).to_kind(Kind::Float).softmax(-1, Kind::Float).to_device(tch::Device::Cpu);
                (0..b)
                    .map(|i| {
                        let probs: Vec<f32> = Vec::try_from(p.get(i)).unwrap();
                        let label = probs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(j, _)| j as i64);
                        Prediction { label, probabilities: Some(probs), bits: None }
                    })
                    .collect()
            }
            Objective::Bits { .. } => {
                let bits =
                    logits.to_kind(Kind::Float).reshape([b, -1, 2]).argmax(-1, false).to_kind(Kind::Uint8).to_device(tch::Device::Cpu);
                (0..b).map(|i| Prediction { label: None, probabilities: None, bits: Some(Vec::try_from(bits.get(i)).unwrap()) }).collect()
            }
        }
    }
}

/// One answer: a class with probabilities, or bits.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Prediction {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits: Option<Vec<u8>>,
}
