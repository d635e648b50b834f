//! What a head's logits mean: the loss they are trained by, the metrics they are judged by (and
//! which one is primary), and the answers a prediction gives. A task picks its objective.
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::metrics::{Direction, MetricMap, Primary, Tally};

#[derive(Debug, Clone)]
pub enum Objective {
    /// One class per row from the first read-out token; cross-entropy; `accuracy`. `names` (the
    /// training file's class names, in index order; empty when its labels were indices) name the answers.
    Classes { names: Vec<String> },
    /// Each read-out token predicts `per_token` bits, two logits each; per-bit cross-entropy;
    /// `accuracy` per bit and `exact_accuracy` per row (every bit right).
    Bits { per_token: i64 },
    /// Real-valued targets from the first read-out token, one output each. The head predicts them
    /// standardised by the training split's `mean` and `std` (MSE on that scale); metrics and
    /// answers are in the targets' own units: `rmse` (primary), `mae`, `r2` (the mean over targets).
    Regression { mean: Vec<f32>, std: Vec<f32> },
    /// Any number of `k` labels per row from the first read-out token, one logit each; binary
    /// cross-entropy; a label is predicted when its probability reaches `threshold`; `micro_f1`
    /// (primary), `macro_f1` and `subset_accuracy` (every label right).
    MultiLabel { k: usize, threshold: f64 },
    /// The next `horizon` steps of `channels_per_row` channels from the first read-out token,
    /// standardised by their window's context (MSE on that scale); a target row packs the
    /// horizon's values, the seasonal-naive forecast and the context's mean and deviation (see
    /// `forecasting::Windowing`). Metrics in the series' units: `mae` (primary), `mse`,
    /// `naive_mae` (the seasonal-naive forecast's) and `mase` (the ratio of the two: below 1 beats
    /// it). A sample is `rows_per_sample` rows (its channels, when they are independent).
    Forecast { horizon: usize, channels_per_row: usize, rows_per_sample: usize },
}

/// The mean loss of a batch (for the gradient) and its metric sums.
pub struct Score {
    pub loss: Tensor,
    pub tally: Tally,
}

fn count(t: Tensor) -> f64 {
    i64::try_from(t.sum(Kind::Int64)).unwrap() as f64
}

fn sum(t: &Tensor) -> f64 {
    f64::try_from(t.sum(Kind::Double)).unwrap()
}

/// Column sums of a [B, k] tensor.
fn column_sums(t: &Tensor) -> Vec<f64> {
    Vec::try_from(t.to_kind(Kind::Double).sum_dim_intlist([0i64].as_slice(), false, Kind::Double).to_device(tch::Device::Cpu)).unwrap()
}

impl Objective {
    /// Classes, named by the `label_names` a task fitted (none: the answers are indices only).
    pub fn classes(fitted: &super::Fitted) -> Objective {
        let names = fitted["label_names"].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect());
        Objective::Classes { names: names.unwrap_or_default() }
    }

    /// The head's standardised outputs [B, k] in the targets' units.
    fn in_units(out: &Tensor, mean: &[f32], std: &[f32]) -> Tensor {
        let dev = out.device();
        out * Tensor::from_slice(std).to_device(dev) + Tensor::from_slice(mean).to_device(dev)
    }
}

impl Objective {
    /// Scores logits [B, k, out] against the batch's targets.
    pub fn score(&self, logits: &Tensor, targets: &Tensor) -> Score {
        let b = logits.size()[0];
        let mut tally = Tally::default();
        let loss = match self {
            Objective::Classes { .. } => {
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
            Objective::MultiLabel { threshold, .. } => {
                let out = logits.select(1, 0).to_kind(Kind::Float);
                let y = targets.to_kind(Kind::Float);
                let predicted = out.sigmoid().ge(*threshold).to_kind(Kind::Float);
                let (tp, fp, fn_) = (&predicted * &y, &predicted * (1.0 - &y), (1.0 - &predicted) * &y);
                for (name, sums) in [("tp_", column_sums(&tp)), ("fp_", column_sums(&fp)), ("fn_", column_sums(&fn_))] {
                    for (j, v) in sums.into_iter().enumerate() {
                        tally.add(&format!("{name}{j}"), v);
                    }
                }
                tally.add("exact", count(predicted.eq_tensor(&y).all_dim(1, false)));
                tally.add("rows", b as f64);
                out.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, tch::Reduction::Mean)
            }
            Objective::Forecast { horizon, channels_per_row, .. } => {
                let (h, c) = (*horizon as i64, *channels_per_row as i64);
                let out = logits.select(1, 0).to_kind(Kind::Float).view([b, h, c]);
                let t = targets.to_kind(Kind::Float);
                let (y, naive) = (t.narrow(1, 0, h * c).view([b, h, c]), t.narrow(1, h * c, h * c).view([b, h, c]));
                let (mean, std) = (t.narrow(1, 2 * h * c, c).view([b, 1, c]), t.narrow(1, 2 * h * c + c, c).view([b, 1, c]));
                let err = out.detach() * &std + &mean - &y;
                tally.add("sae", sum(&err.abs()));
                tally.add("sse", sum(&err.square()));
                tally.add("naive_sae", sum(&(naive - &y).abs()));
                tally.add("values", y.numel() as f64);
                (out - (y - mean) / std).square().mean(Kind::Float)
            }
            Objective::Regression { mean, std } => {
                let out = logits.select(1, 0).to_kind(Kind::Float);
                let y = targets.to_kind(Kind::Float);
                let dev = out.device();
                let z = (&y - Tensor::from_slice(mean).to_device(dev)) / Tensor::from_slice(std).to_device(dev);
                let err = Self::in_units(&out.detach(), mean, std) - &y;
                tally.add("sse", sum(&err.square()));
                tally.add("sae", sum(&err.abs()));
                tally.add("values", y.numel() as f64);
                tally.add("rows", b as f64);
                // Per target, what its R^2 needs: squared errors, and the sums of y and y^2.
                for (name, sums) in [("sse_", column_sums(&err.square())), ("sy_", column_sums(&y)), ("syy_", column_sums(&y.square()))] {
                    for (j, v) in sums.into_iter().enumerate() {
                        tally.add(&format!("{name}{j}"), v);
                    }
                }
                (out - z).square().mean(Kind::Float)
            }
        };
        Score { loss, tally }
    }

    /// The logits [B, 1, out] of the trivial predictor a run must beat, for a batch of `targets`,
    /// and its name: the training split's majority class (`train` its targets), its mean, each
    /// label's majority value, or the seasonal-naive forecast. None where there is none (bits).
    pub fn trivial(&self, train: &Tensor, targets: &Tensor, out: i64) -> Option<(&'static str, Tensor)> {
        let b = targets.size()[0];
        let dev = targets.device();
        let logits = match self {
            Objective::Classes { .. } => {
                let majority = train.bincount::<Tensor>(None, out).argmax(0, false);
                (
                    "the majority class",
                    majority.one_hot(out).to_kind(Kind::Float).to_device(dev).view([1, 1, out]).expand([b, 1, out], false),
                )
            }
            Objective::MultiLabel { .. } => {
                let common = train.to_kind(Kind::Float).mean_dim([0i64].as_slice(), false, Kind::Float).ge(0.5).to_kind(Kind::Float);
                ("each label's majority value", (common * 20.0 - 10.0).to_device(dev).view([1, 1, out]).expand([b, 1, out], false))
            }
            // Outputs are standardised targets: zeros are the training mean.
            Objective::Regression { .. } => ("the training mean", Tensor::zeros([b, 1, out], (Kind::Float, dev))),
            Objective::Forecast { horizon, channels_per_row, .. } => {
                let (h, c) = (*horizon as i64, *channels_per_row as i64);
                let t = targets.to_kind(Kind::Float);
                let naive = t.narrow(1, h * c, h * c).view([b, h, c]);
                let (mean, std) = (t.narrow(1, 2 * h * c, c).view([b, 1, c]), t.narrow(1, 2 * h * c + c, c).view([b, 1, c]));
                ("the seasonal-naive forecast", ((naive - mean) / std).view([b, 1, h * c]))
            }
            Objective::Bits { .. } => return None,
        };
        Some(logits)
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
            Objective::Classes { .. } => put("accuracy", t.ratio("correct", "rows")),
            Objective::Bits { .. } => {
                put("accuracy", t.ratio("correct", "bits"));
                put("exact_accuracy", t.ratio("exact", "rows"));
            }
            Objective::MultiLabel { k, .. } => {
                let sum = |name: &str| (0..*k).map(|j| t.get(&format!("{name}{j}"))).sum::<f64>();
                put("micro_f1", f1(sum("tp_"), sum("fp_"), sum("fn_")));
                let per_label: Vec<f64> =
                    (0..*k).filter_map(|j| f1(t.get(&format!("tp_{j}")), t.get(&format!("fp_{j}")), t.get(&format!("fn_{j}")))).collect();
                put("macro_f1", (!per_label.is_empty()).then(|| per_label.iter().sum::<f64>() / per_label.len() as f64));
                put("subset_accuracy", t.ratio("exact", "rows"));
            }
            Objective::Forecast { .. } => {
                put("mae", t.ratio("sae", "values"));
                put("mse", t.ratio("sse", "values"));
                put("naive_mae", t.ratio("naive_sae", "values"));
                put("mase", t.ratio("sae", "naive_sae"));
            }
            Objective::Regression { mean, .. } => {
                put("rmse", t.ratio("sse", "values").map(f64::sqrt));
                put("mae", t.ratio("sae", "values"));
                put("r2", r_squared(t, mean.len()));
            }
        }
        m
    }

    pub fn primary(&self) -> Primary {
        match self {
            Objective::Regression { .. } => Primary { name: "rmse", direction: Direction::Lower },
            Objective::Forecast { .. } => Primary { name: "mae", direction: Direction::Lower },
            Objective::MultiLabel { .. } => Primary { name: "micro_f1", direction: Direction::Higher },
            _ => Primary { name: "accuracy", direction: Direction::Higher },
        }
    }

    /// Logits [B, k, out] as `model` answers `inputs`: its own, or its ensemble's combined.
    pub fn answer(&self, model: &crate::model::fpt::FptModel, inputs: &Tensor, lengths: Option<&Tensor>) -> Tensor {
        let mut logits = model.member_logits(inputs, lengths);
        match logits.len() {
            1 => logits.pop().expect("one member"),
            _ => self.combine(&Tensor::stack(&logits, 0)),
        }
    }

    /// One set of logits [B, k, out] for the members' `logits` ([M, B, k, out]) of an ensemble:
    /// what scoring and answering it read as the members' average answer. Class probabilities
    /// (per read-out token; a bit's pair alike) and label probabilities are averaged, and given
    /// back as their logarithms and log-odds (the softmax and sigmoid of which they are);
    /// real-valued outputs, on the scale the head predicts, are averaged as they are.
    pub fn combine(&self, logits: &Tensor) -> Tensor {
        let l = logits.to_kind(Kind::Float);
        match self {
            Objective::Classes { .. } => l.softmax(-1, Kind::Float).mean_dim(0, false, Kind::Float).clamp_min(TINY).log(),
            Objective::Bits { .. } => {
                let s = l.size();
                let pairs =
                    l.reshape([s[0], s[1], s[2], -1, 2]).softmax(-1, Kind::Float).mean_dim(0, false, Kind::Float).clamp_min(TINY).log();
                pairs.reshape([s[1], s[2], s[3]])
            }
            // In f64: a probability of 1 - 1e-30 is 1 in f32, whose log-odds are infinite.
            Objective::MultiLabel { .. } => {
                l.to_kind(Kind::Double).sigmoid().mean_dim(0, false, Kind::Double).logit(Some(TINY_F64)).to_kind(Kind::Float)
            }
            Objective::Regression { .. } | Objective::Forecast { .. } => l.mean_dim(0, false, Kind::Float),
        }
    }

    /// Logits [B, k, out] to answers; `context` is what the samples' batch kept for them
    /// ([`super::samples::SampleBatch::context`]).
    pub fn predictions(&self, logits: &Tensor, context: Option<&Tensor>) -> Vec<Prediction> {
        let b = logits.size()[0];
        match self {
            Objective::Forecast { horizon, channels_per_row, rows_per_sample } => {
                let (h, c) = (*horizon as i64, *channels_per_row as i64);
                let stats = context.expect("a forecast's batch keeps its windows' statistics").to_device(logits.device());
                let (mean, std) = (stats.narrow(1, 0, c).view([b, 1, c]), stats.narrow(1, c, c).view([b, 1, c]));
                let y = (logits.select(1, 0).to_kind(Kind::Float).view([b, h, c]) * std + mean).to_device(tch::Device::Cpu);
                let rows: Vec<Vec<Vec<f32>>> = (0..b).map(|i| Vec::<Vec<f32>>::try_from(y.get(i)).unwrap()).collect();
                // A sample's rows are its channels (independent) or one row of them all: [H][channels].
                rows.chunks(*rows_per_sample)
                    .map(|sample| {
                        let forecast =
                            (0..h as usize).map(|step| sample.iter().flat_map(|row| row[step].iter().copied()).collect()).collect();
                        Prediction { forecast: Some(forecast), ..Prediction::default() }
                    })
                    .collect()
            }
            Objective::Classes { names } => {
                let p = logits.select(1, 0).to_kind(Kind::Float).softmax(-1, Kind::Float).to_device(tch::Device::Cpu);
                (0..b)
                    .map(|i| {
                        let probs: Vec<f32> = Vec::try_from(p.get(i)).unwrap();
                        let label = probs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(j, _)| j as i64);
                        let label_name = label.and_then(|l| names.get(l as usize)).cloned();
                        Prediction { label, label_name, probabilities: Some(probs), ..Prediction::default() }
                    })
                    .collect()
            }
            Objective::Bits { .. } => {
                let bits =
                    logits.to_kind(Kind::Float).reshape([b, -1, 2]).argmax(-1, false).to_kind(Kind::Uint8).to_device(tch::Device::Cpu);
                (0..b).map(|i| Prediction { bits: Some(Vec::try_from(bits.get(i)).unwrap()), ..Prediction::default() }).collect()
            }
            Objective::MultiLabel { threshold, .. } => {
                let p = logits.select(1, 0).to_kind(Kind::Float).sigmoid().to_device(tch::Device::Cpu);
                (0..b)
                    .map(|i| {
                        let probs: Vec<f32> = Vec::try_from(p.get(i)).unwrap();
                        let labels = probs.iter().enumerate().filter(|(_, &q)| f64::from(q) >= *threshold).map(|(j, _)| j as i64).collect();
                        Prediction { labels: Some(labels), probabilities: Some(probs), ..Prediction::default() }
                    })
                    .collect()
            }
            Objective::Regression { mean, std } => {
                let y = Self::in_units(&logits.select(1, 0).to_kind(Kind::Float), mean, std).to_device(tch::Device::Cpu);
                (0..b)
                    .map(|i| {
                        let values: Vec<f32> = Vec::try_from(y.get(i)).unwrap();
                        match values[..] {
                            [v] => Prediction { value: Some(v), ..Prediction::default() },
                            _ => Prediction { values: Some(values), ..Prediction::default() },
                        }
                    })
                    .collect()
            }
        }
    }
}

/// The smallest probability an ensemble's average is taken as: its logarithm stays finite.
const TINY: f64 = 1e-30;
/// The same for log-odds, which need 1 - it too, in f64.
const TINY_F64: f64 = 1e-15;

/// F1 from true positives, false positives and false negatives; None when there is nothing to score.
fn f1(tp: f64, fp: f64, fn_: f64) -> Option<f64> {
    let d = 2.0 * tp + fp + fn_;
    (d > 0.0).then(|| 2.0 * tp / d)
}

/// The mean R^2 over `k` targets of everything tallied; None until a target varies.
fn r_squared(t: &Tally, k: usize) -> Option<f64> {
    let n = t.get("rows");
    let per_target: Vec<f64> = (0..k)
        .filter_map(|j| {
            let (sy, syy) = (t.get(&format!("sy_{j}")), t.get(&format!("syy_{j}")));
            let total = syy - sy * sy / n;
            (n > 1.0 && total > 1e-12 * syy.abs().max(1.0)).then(|| 1.0 - t.get(&format!("sse_{j}")) / total)
        })
        .collect();
    (!per_target.is_empty()).then(|| per_target.iter().sum::<f64>() / per_target.len() as f64)
}

/// One answer: a class with probabilities, labels, bits, a regression's value (or values), or a forecast.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Prediction {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<i64>,
    /// The class's name, when the training file named its classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_name: Option<String>,
    /// Multi-label: the labels whose probability reaches the threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits: Option<Vec<u8>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<f32>>,
    /// A forecast: the horizon's steps, each a value per channel, in the series' units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forecast: Option<Vec<Vec<f32>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ensemble_answers_its_members_average() {
        let close = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).unwrap() < 1e-5;
        // Two members, one row of three classes: the answer's probabilities are the members' mean.
        let members = Tensor::from_slice(&[2f32, 0.0, 0.0, 0.0, 0.0, 3.0]).view([2, 1, 1, 3]);
        let classes = Objective::Classes { names: vec![] }.combine(&members);
        let mean = members.softmax(-1, Kind::Float).mean_dim(0, false, Kind::Float);
        assert!(close(&classes.softmax(-1, Kind::Float), &mean), "{classes}");
        // Bits: each bit's pair of logits is averaged as its own two classes.
        let pairs = members.narrow(3, 0, 2).repeat([1, 1, 1, 2]);
        let bits = Objective::Bits { per_token: 2 }.combine(&pairs);
        assert_eq!(bits.size(), [1, 1, 4]);
        let pair_mean = pairs.view([2, 1, 1, 2, 2]).softmax(-1, Kind::Float).mean_dim(0, false, Kind::Float);
        assert!(close(&bits.view([1, 1, 2, 2]).softmax(-1, Kind::Float), &pair_mean), "{bits}");
        // Labels: the probabilities' mean, given back as log-odds; 0 and 1 stay finite, and so
        // does the loss of a label every member is sure of.
        let labels = Tensor::from_slice(&[0f32, 100.0, 2.0, -100.0]).view([2, 1, 1, 2]);
        let multilabel = Objective::MultiLabel { k: 2, threshold: 0.5 };
        let l = multilabel.combine(&labels);
        assert!(close(&l.sigmoid(), &labels.sigmoid().mean_dim(0, false, Kind::Float)), "{l}");
        assert!(bool::try_from(l.isfinite().all()).unwrap());
        let sure = multilabel.combine(&Tensor::from_slice(&[100f32, -100.0, 100.0, -100.0]).view([2, 1, 1, 2]));
        assert!(bool::try_from(sure.isfinite().all()).unwrap(), "{sure}");
        let loss = f64::try_from(multilabel.score(&sure, &Tensor::from_slice(&[0f32, 1.0]).view([1, 2])).loss).unwrap();
        assert!(loss.is_finite() && loss > 10.0, "both labels wrong and sure: {loss}");
        // Real values: their mean.
        let r = Objective::Regression { mean: vec![0.0], std: vec![1.0] }.combine(&labels);
        assert!(close(&r, &Tensor::from_slice(&[1f32, 0.0]).view([1, 1, 2])), "{r}");
    }

    #[test]
    fn regression_metrics_are_in_the_targets_units() {
        // Targets 10, 20, 30, 40 with mean 25 and std 10; the head says (standardised) 10, 20, 30, 50.
        let o = Objective::Regression { mean: vec![25.0], std: vec![10.0] };
        let targets = Tensor::from_slice(&[10f32, 20.0, 30.0, 40.0]).view([4, 1]);
        let out = Tensor::from_slice(&[-1.5f32, -0.5, 0.5, 2.5]).view([4, 1, 1]);
        let s = o.score(&out, &targets);
        let m = o.metrics(&s.tally);
        assert!((m["rmse"] - 5.0).abs() < 1e-9, "{m:?}");
        assert!((m["mae"] - 2.5).abs() < 1e-9, "{m:?}");
        assert!((m["r2"] - (1.0 - 100.0 / 500.0)).abs() < 1e-9, "{m:?}");
        assert!((f64::try_from(&s.loss).unwrap() - 0.25).abs() < 1e-6, "MSE on the standardised scale");
        assert_eq!(o.primary(), Primary { name: "rmse", direction: Direction::Lower });
        let p = o.predictions(&out, None);
        assert_eq!((p[3].value, p[3].values.as_ref()), (Some(50.0), None));
        // Summed over two batches, the tally gives the same metrics as one.
        let (a, b) = (o.score(&out.narrow(0, 0, 2), &targets.narrow(0, 0, 2)), o.score(&out.narrow(0, 2, 2), &targets.narrow(0, 2, 2)));
        let mut t = a.tally.clone();
        t.merge(&b.tally);
        assert_eq!(o.metrics(&t), m);
    }

    #[test]
    fn multilabel_metrics_count_each_label() {
        let o = Objective::MultiLabel { k: 2, threshold: 0.5 };
        // Rows predict (1, 0), (1, 1), (0, 0) against (1, 0), (0, 1), (1, 0).
        let logits = Tensor::from_slice(&[3f32, -3.0, 3.0, 3.0, -3.0, -3.0]).view([3, 1, 2]);
        let targets = Tensor::from_slice(&[1i64, 0, 0, 1, 1, 0]).view([3, 2]);
        let m = o.metrics(&o.score(&logits, &targets).tally);
        // Label 0: tp 1, fp 1, fn 1 (F1 0.5); label 1: tp 1 (F1 1); micro: tp 2, fp 1, fn 1.
        assert!((m["micro_f1"] - 4.0 / 6.0).abs() < 1e-9, "{m:?}");
        assert!((m["macro_f1"] - 0.75).abs() < 1e-9, "{m:?}");
        assert!((m["subset_accuracy"] - 1.0 / 3.0).abs() < 1e-9, "{m:?}");
        assert_eq!(o.predictions(&logits, None)[1].labels, Some(vec![0, 1]));
        assert_eq!(o.primary().name, "micro_f1");
    }
}
