//! Normalisation of continuous inputs, so that values in their raw units (thousands, offsets)
//! train as well as standardised ones. `dataset`: each value of a token standardised by the
//! training split's mean and deviation of it (kept in the adapter as `input_mean` / `input_std`):
//! per channel unpatched, per step of a patch and channel patched, so a patch as long as the
//! series standardises each step as a table's feature; `instance`: each sample's channels by
//! their own statistics over its steps (as GPT4TS does per window), a patch's steps alike, so that
//! a patch as long as the series is standardised too, not emptied; `none`: as given. Padding
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

/// How a task's continuous inputs are normalised, and how its tokens are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputNormalization {
    pub mode: Normalize,
    /// Steps per token (a patch's size; 1 unpatched): a token of D values holds D / this channels.
    pub steps_per_token: usize,
}

impl InputNormalization {
    pub const NONE: InputNormalization = InputNormalization { mode: Normalize::None, steps_per_token: 1 };
}

/// [N, L, D] as [N, L, D / channels, channels]: a token's steps, each of its channels' values.
fn by_channel(x: &Tensor, channels: i64) -> Tensor {
    let s = x.size();
    x.view([s[0], s[1], s[2] / channels, channels])
}

/// [N, L, 1, 1] 1.0 on real tokens, 0.0 on padding.
fn mask(x: &Tensor, lengths: Option<&Tensor>) -> Tensor {
    let (n, l) = (x.size()[0], x.size()[1]);
    match lengths {
        Some(len) => Tensor::arange(l, (Kind::Int64, x.device()))
            .unsqueeze(0)
            .lt_tensor(&len.to_device(x.device()).unsqueeze(1))
            .to_kind(Kind::Float)
            .view([n, l, 1, 1]),
        None => Tensor::ones([n, l, 1, 1], (Kind::Float, x.device())),
    }
}

/// Mean and deviation over `dims` of the real tokens (a deviation of 0 is taken as 1).
fn moments(x: &Tensor, m: &Tensor, dims: &[i64]) -> (Tensor, Tensor) {
    let m = &m.expand_as(x);
    let count = m.sum_dim_intlist(dims, true, Kind::Float).clamp_min(1.0);
    let mean = (x * m).sum_dim_intlist(dims, true, Kind::Float) / &count;
    let var = ((x - &mean).square() * m).sum_dim_intlist(dims, true, Kind::Float) / &count;
    let std = var.sqrt();
    let std = std.where_self(&std.gt(1e-6), &std.ones_like());
    (mean, std)
}

/// Each sample standardised by its own statistics, per channel over its steps.
fn per_instance(x: &Tensor, lengths: Option<&Tensor>, channels: i64) -> Tensor {
    let (m, steps) = (mask(x, lengths), by_channel(x, channels));
    let (mean, std) = moments(&steps, &m, &[1, 2]);
    ((steps - mean) / std * &m).view_as(x)
}

/// `x` standardised per token value.
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

/// Normalises the splits' continuous inputs as `norm` says; what a prediction needs to do the
/// same goes into `fitted`. Token ids and images are left as they are.
pub(super) fn fit_and_apply(norm: InputNormalization, train: &mut Split, others: [Option<&mut Split>; 2], fitted: &mut Fitted) {
    let Some((x, lengths)) = tokens_of(train) else { return };
    let (dim, steps) = (x.size()[2], norm.steps_per_token as i64);
    // A token holds `steps` steps of the same channels (patching validated that); else one each.
    let channels = if steps > 0 && dim % steps == 0 { dim / steps } else { dim };
    match norm.mode {
        Normalize::None => {}
        Normalize::Instance => {
            *x = per_instance(x, lengths, channels);
            for s in others.into_iter().flatten() {
                if let Some((x, lengths)) = tokens_of(s) {
                    *x = per_instance(x, lengths, channels);
                }
            }
            fitted["input_channels"] = json!(channels);
        }
        Normalize::Dataset => {
            let (mean, std) = moments(x, &mask(x, lengths).squeeze_dim(3), &[0, 1]);
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
    fitted["input_normalization"] = json!(norm.mode);
}

/// A split's continuous inputs normalised as an adapter's training data was (see [`apply`]).
pub(super) fn apply_to_split(fitted: &Fitted, s: &mut Split) {
    if let Some((x, lengths)) = tokens_of(s) {
        let lengths = lengths.map(|l| l.shallow_clone());
        *x = apply(fitted, x.shallow_clone(), lengths.as_ref());
    }
}

/// A prediction batch's continuous inputs [B, L, D], normalised as the training data was
/// (adapters from before normalisation existed say nothing and are left as they were; `instance`
/// ones from before `input_channels` was kept normalised each token value alone, as D channels).
pub fn apply(fitted: &Fitted, x: Tensor, lengths: Option<&Tensor>) -> Tensor {
    let floats = |key: &str| -> Option<Vec<f32>> { fitted[key].as_array()?.iter().map(|v| v.as_f64().map(|f| f as f32)).collect() };
    let dim = x.size()[2];
    match serde_json::from_value::<Normalize>(fitted["input_normalization"].clone()) {
        Ok(Normalize::Instance) => match fitted["input_channels"].as_i64().unwrap_or(dim) {
            channels if channels > 0 && dim % channels == 0 => per_instance(&x, lengths, channels),
            _ => x,
        },
        Ok(Normalize::Dataset) => match (floats("input_mean"), floats("input_std")) {
            (Some(mean), Some(std)) if mean.len() as i64 == dim && std.len() == mean.len() => standardise(&x, &mean, &std),
            _ => x,
        },
        _ => x,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per channel of `x` [N, L, steps x channels] over each sample's real tokens: (mean, std).
    fn channel_moments(x: &Tensor, sample: i64, tokens: i64, channels: i64) -> Vec<(f64, f64)> {
        let steps = x.get(sample).narrow(0, 0, tokens).reshape([-1, channels]);
        (0..channels)
            .map(|c| {
                let v = steps.select(1, c);
                (v.mean(Kind::Double).double_value(&[]), v.std(false).double_value(&[]))
            })
            .collect()
    }

    #[test]
    fn a_patch_as_long_as_the_series_is_standardised_per_instance_not_emptied() {
        // Two samples, one token each of 3 steps x 2 channels, channels in different units.
        let x = Tensor::from_slice(&[1.0f32, 100.0, 2.0, 300.0, 4.0, 200.0, -5.0, 7.0, 5.0, 9.0, 0.0, 8.0]).view([2, 1, 6]);
        let y = per_instance(&x, None, 2);
        for sample in 0..2 {
            for (mean, std) in channel_moments(&y, sample, 1, 2) {
                assert!(mean.abs() < 1e-5 && (std - 1.0).abs() < 1e-4, "sample {sample}: mean {mean}, std {std}");
            }
        }
    }

    #[test]
    fn padding_takes_no_part_and_stays_zero() {
        // Tokens of 2 steps x 1 channel; the second sample's last token is padding.
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 10.0, 30.0, 99.0, 99.0]).view([2, 2, 2]);
        let lengths = Tensor::from_slice(&[2i64, 1]);
        let y = per_instance(&x, Some(&lengths), 1);
        let (mean, std) = channel_moments(&y, 1, 1, 1)[0];
        assert!(mean.abs() < 1e-5 && (std - 1.0).abs() < 1e-4, "mean {mean}, std {std}");
        assert_eq!(Vec::<f32>::try_from(y.get(1).get(1)).unwrap(), vec![0.0, 0.0]);
    }

    #[test]
    fn predictions_apply_the_channels_their_adapter_kept() {
        let x = Tensor::from_slice(&[1.0f32, 100.0, 2.0, 300.0, 4.0, 200.0]).view([1, 1, 6]);
        let fitted = json!({"input_normalization": "instance", "input_channels": 2});
        assert!(apply(&fitted, x.shallow_clone(), None).allclose(&per_instance(&x, None, 2), 1e-6, 1e-6, false));
        // Adapters from before `input_channels` standardised each token value by itself.
        let old = json!({"input_normalization": "instance"});
        assert!(apply(&old, x.shallow_clone(), None).allclose(&per_instance(&x, None, 6), 1e-6, 1e-6, false));
    }
}
