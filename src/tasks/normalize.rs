//! Normalisation of continuous inputs, so that values in their raw units (thousands, offsets)
//! train as well as standardised ones. `dataset`: each input value of a token standardised by the
//! training split's mean and deviation (kept in the adapter as `input_mean` / `input_std`);
//! `instance`: each sample by its own (as GPT4TS does per window); `none`: as given. Padding
//! positions take no part in the statistics.
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Kind, Tensor};

use super::{Features, Fitted, Split};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    #[default]
    Dataset,
    Instance,
    None,
}

/// [N, L, 1] 1.0 on real tokens, 0.0 on padding.
fn mask(x: &Tensor, lengths: Option<&Tensor>) -> Tensor {
    let (n, l) = (x.size()[0], x.size()[1]);
    match lengths {
        Some(len) => Tensor::arange(l, (Kind::Int64, x.device()))
            .unsqueeze(0)
            .lt_tensor(&len.to_device(x.device()).unsqueeze(1))
            .to_kind(Kind::Float)
            .unsqueeze(2),
        None => Tensor::ones([n, l, 1], (Kind::Float, x.device())),
    }
}

/// Mean and deviation over `dims` of the real tokens (a deviation of 0 is taken as 1).
fn moments(x: &Tensor, m: &Tensor, dims: &[i64]) -> (Tensor, Tensor) {
    let count = m.sum_dim_intlist(dims, true, Kind::Float).clamp_min(1.0);
    let mean = (x * m).sum_dim_intlist(dims, true, Kind::Float) / &count;
    let var = ((x - &mean).square() * m).sum_dim_intlist(dims, true, Kind::Float) / &count;
    let std = var.sqrt();
    let std = std.where_self(&std.gt(1e-6), &std.ones_like());
    (mean, std)
}

/// Each sample standardised by its own tokens' statistics, per input value.
fn per_instance(x: &Tensor, lengths: Option<&Tensor>) -> Tensor {
    let m = mask(x, lengths);
    let (mean, std) = moments(x, &m, &[1]);
    (x - mean) / std * &m
}

fn standardise(x: &Tensor, mean: &[f32], std: &[f32]) -> Tensor {
    let dev = x.device();
    (x - Tensor::from_slice(mean).to_device(dev)) / Tensor::from_slice(std).to_device(dev)
}

fn tokens_of(s: &mut Split) -> Option<(&mut Tensor, Option<&Tensor>)> {
    match &mut s.features {
        Features::Tokens { x, lengths } if x.kind() == Kind::Float => Some((x, lengths.as_ref())),
        _ => None,
    }
}

/// Normalises the splits' continuous inputs as `mode` says; what a prediction needs to do the
/// same goes into `fitted`. Token ids and images are left as they are.
pub(super) fn fit_and_apply(mode: Normalize, train: &mut Split, others: [Option<&mut Split>; 2], fitted: &mut Fitted) {
    let Some((x, lengths)) = tokens_of(train) else { return };
    match mode {
        Normalize::None => {}
        Normalize::Instance => {
            *x = per_instance(x, lengths);
            for s in others.into_iter().flatten() {
                if let Some((x, lengths)) = tokens_of(s) {
                    *x = per_instance(x, lengths);
                }
            }
        }
        Normalize::Dataset => {
            let (mean, std) = moments(x, &mask(x, lengths), &[0, 1]);
            let mean: Vec<f32> = Vec::try_from(mean.flatten(0, -1)).unwrap();
            let std: Vec<f32> = Vec::try_from(std.flatten(0, -1)).unwrap();
            *x = standardise(x, &mean, &std);
            for s in others.into_iter().flatten() {
                if let Some((x, _)) = tokens_of(s) {
                    *x = standardise(x, &mean, &std);
                }
            }
            fitted["input_mean"] = json!(mean);
            fitted["input_std"] = json!(std);
        }
    }
    fitted["input_normalization"] = json!(mode);
}

/// A split's continuous inputs normalised as an adapter's training data was (see [`apply`]).
pub(super) fn apply_to_split(fitted: &Fitted, s: &mut Split) {
    if let Some((x, lengths)) = tokens_of(s) {
        let lengths = lengths.map(|l| l.shallow_clone());
        *x = apply(fitted, x.shallow_clone(), lengths.as_ref());
    }
}

/// A prediction batch's continuous inputs [B, L, D], normalised as the training data was
/// (adapters from before normalisation existed say nothing and are left as they were).
pub fn apply(fitted: &Fitted, x: Tensor, lengths: Option<&Tensor>) -> Tensor {
    let floats = |key: &str| -> Option<Vec<f32>> { fitted[key].as_array()?.iter().map(|v| v.as_f64().map(|f| f as f32)).collect() };
    match serde_json::from_value::<Normalize>(fitted["input_normalization"].clone()) {
        Ok(Normalize::Instance) => per_instance(&x, lengths),
        Ok(Normalize::Dataset) => match (floats("input_mean"), floats("input_std")) {
            (Some(mean), Some(std)) if mean.len() as i64 == x.size()[2] && std.len() == mean.len() => standardise(&x, &mean, &std),
            _ => x,
        },
        _ => x,
    }
}
