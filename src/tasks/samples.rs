//! Prediction inputs: samples in the form of a dataset record's `input`, validated and batched
//! exactly as the task batches its evaluation data; and logits turned into answers.
use serde_json::Value;
use tch::Tensor;

use super::images::ImageTransform;
use super::sequence::Patching;
use super::{Fitted, TaskSpec};
use crate::model::fpt::{HeadShape, InputKind};

/// A bad sample, by index.
#[derive(Debug, Clone, thiserror::Error)]
#[error("inputs[{index}]: {message}")]
pub struct SampleError {
    pub index: usize,
    pub message: String,
}

/// The model inputs for `samples`: [B, L, D] float or [B, L] ids, and lengths when they differ.
pub struct SampleBatch {
    pub inputs: Tensor,
    pub lengths: Option<Tensor>,
    /// What the answers need from the inputs, per row: a forecast's context statistics [B, 2 x
    /// channels] (its rows are normalised by them); None for the other tasks.
    pub context: Option<Tensor>,
}

fn err(index: usize, message: impl Into<String>) -> SampleError {
    SampleError { index, message: message.into() }
}

/// How a task's prediction samples look; each task says which form its samples take.
pub enum Form {
    /// Tokens of `dim` values; a flat array is cut into tokens, `[L][D]` taken as is; `fixed` tokens
    /// when set; grouped into patches (of `dim` x the patch's size values) when `patch` is set.
    Vectors { dim: usize, fixed: Option<usize>, patch: Option<Patching> },
    /// Token ids below `vocab`, or a string the task's tokenizer reads (ListOps, amino acids).
    Ids { vocab: i64, text: Option<fn(&str) -> Result<Vec<i64>, String>> },
    /// A flat H*W*C image, transformed as the task's evaluation data.
    Image { h: i64, w: i64, c: i64, scale: f64, transform: ImageTransform },
    /// A series' recent steps (`[T][channels]`, or a flat array for one channel), of which the
    /// last context's worth is windowed as the training data was.
    Context(super::forecasting::Windowing),
}

/// The vocabulary of a head that reads token ids (0 for one that reads vectors).
pub(super) fn vocab(shape: &HeadShape) -> i64 {
    match shape.input {
        InputKind::Tokens { vocab } => vocab,
        InputKind::Continuous { .. } => 0,
    }
}

fn numbers(index: usize, v: &[Value]) -> Result<Vec<f32>, SampleError> {
    v.iter()
        .enumerate()
        .map(|(j, x)| match x.as_f64().map(|f| f as f32) {
            Some(f) if f.is_finite() => Ok(f),
            _ => Err(err(index, format!("value {j} is not a finite number within the float32 range (|x| < 3.4e38)"))),
        })
        .collect()
}

/// Validates `samples` and batches them for `spec`'s model, padding to the longest with lengths.
pub fn batch_from_samples(
    spec: &TaskSpec,
    shape: &HeadShape,
    fitted: &Fitted,
    max_positions: i64,
    samples: &[Value],
) -> Result<SampleBatch, SampleError> {
    if samples.is_empty() {
        return Err(err(0, "no samples: `inputs` must hold at least one"));
    }
    match spec.task().sample_form(shape, fitted) {
        Form::Vectors { dim, fixed, patch } => {
            let mut rows = Vec::new();
            for (i, s) in samples.iter().enumerate() {
                let arr = s.as_array().ok_or_else(|| err(i, "expected an array of numbers or an array of token vectors"))?;
                let flat: Vec<f32> = if arr.first().is_some_and(|v| v.is_array()) {
                    let mut out = Vec::new();
                    for (t, tok) in arr.iter().enumerate() {
                        let tok = tok.as_array().ok_or_else(|| err(i, format!("token {t} is not an array")))?;
                        if tok.len() != dim {
                            return Err(err(i, format!("token {t} has {} values, expected {dim}", tok.len())));
                        }
                        out.extend(numbers(i, tok)?);
                    }
                    out
                } else {
                    numbers(i, arr)?
                };
                if flat.is_empty() || flat.len() % dim != 0 {
                    return Err(err(i, format!("{} values is not a whole number of {dim}-value tokens", flat.len())));
                }
                let tokens = flat.len() / dim;
                if let Some(n) = fixed {
                    if tokens != n {
                        return Err(err(i, format!("expected {} values ({n} tokens of {dim}), got {}", n * dim, flat.len())));
                    }
                }
                // Patches are counted before they are made: a small stride multiplies the values.
                let tokens = patch.map_or(tokens, |p| p.tokens(tokens));
                if tokens as i64 > max_positions {
                    return Err(err(i, format!("{tokens} tokens exceed the backbone's {max_positions} positions")));
                }
                rows.push(match patch {
                    Some(p) => {
                        let mut patched = Vec::with_capacity(tokens * p.size * dim);
                        p.apply(&flat, dim, &mut patched);
                        patched
                    }
                    None => flat,
                });
            }
            let b = pad_vectors(&rows, dim * patch.map_or(1, |p| p.size));
            // The inputs normalised as the training data was.
            Ok(SampleBatch { inputs: super::normalize::apply(fitted, b.inputs, b.lengths.as_ref()), lengths: b.lengths, context: None })
        }
        Form::Ids { vocab, text } => {
            let mut rows = Vec::new();
            for (i, s) in samples.iter().enumerate() {
                let ids: Vec<i64> = match (s, text) {
                    (Value::String(t), Some(tok)) => tok(t).map_err(|m| err(i, m))?,
                    (Value::Array(a), _) => a
                        .iter()
                        .enumerate()
                        .map(|(j, v)| {
                            v.as_i64()
                                .filter(|&x| (0..vocab).contains(&x))
                                .ok_or_else(|| err(i, format!("token {j} is not an id in 0..{}", vocab - 1)))
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(err(i, "expected an array of token ids")),
                };
                if ids.is_empty() {
                    return Err(err(i, "empty sequence"));
                }
                if ids.len() as i64 > max_positions {
                    return Err(err(i, format!("{} tokens exceed the backbone's {max_positions} positions", ids.len())));
                }
                rows.push(ids);
            }
            Ok(pad_ids(&rows))
        }
        Form::Image { h, w, c, scale, transform } => {
            let want = (h * w * c) as usize;
            let mut flat = Vec::with_capacity(samples.len() * want);
            for (i, s) in samples.iter().enumerate() {
                let arr = s.as_array().ok_or_else(|| err(i, format!("expected a flat array of {want} pixel values (H, W, C order)")))?;
                if arr.len() != want {
                    return Err(err(i, format!("expected {want} values ({h}x{w}x{c}), got {}", arr.len())));
                }
                flat.extend(numbers(i, arr)?);
            }
            let x = Tensor::from_slice(&flat).view([samples.len() as i64, h, w, c]) / scale;
            Ok(SampleBatch { inputs: transform.apply(&x, false), lengths: None, context: None })
        }
        Form::Context(w) => context_batch(&w, samples),
    }
}

/// Model rows one forecasting request may make.
const MAX_CONTEXT_ROWS: usize = 16_384;

/// Forecast contexts as model rows, with the statistics that undo their normalisation.
fn context_batch(w: &super::forecasting::Windowing, samples: &[Value]) -> Result<SampleBatch, SampleError> {
    let (c, l) = (w.channels(), w.context());
    let (mut tokens, mut stats) = (Vec::new(), Vec::new());
    for (i, s) in samples.iter().enumerate() {
        // Channels handled independently are a row each: a request of many is bounded by its rows.
        if (i + 1) * w.rows_per_window() > MAX_CONTEXT_ROWS {
            return Err(err(
                i,
                format!("{} samples of {c} channels make more than {MAX_CONTEXT_ROWS} rows: send fewer per request", samples.len()),
            ));
        }
        let steps =
            s.as_array().ok_or_else(|| err(i, format!("expected the series' last {l} (or more) steps, each an array of {c} values")))?;
        if steps.len() < l {
            return Err(err(i, format!("{} steps, the context is {l}", steps.len())));
        }
        let mut values = Vec::with_capacity(l * c);
        for (t, step) in steps[steps.len() - l..].iter().enumerate() {
            let cells = match step {
                Value::Array(a) if a.len() == c => numbers(i, a)?,
                Value::Array(a) => return Err(err(i, format!("step {t} of the context has {} values, expected {c}", a.len()))),
                v if c == 1 => numbers(i, std::slice::from_ref(v))?,
                _ => return Err(err(i, format!("step {t} of the context is not an array of {c} values"))),
            };
            values.extend(cells);
        }
        for (mean, std) in w.rows(&values, &mut tokens) {
            stats.extend(mean);
            stats.extend(std);
        }
    }
    let rows = (samples.len() * w.rows_per_window()) as i64;
    Ok(SampleBatch {
        inputs: Tensor::from_slice(&tokens).view([rows, w.tokens() as i64, w.token_dim() as i64]),
        lengths: None,
        context: Some(Tensor::from_slice(&stats).view([rows, -1])),
    })
}

fn pad_vectors(rows: &[Vec<f32>], dim: usize) -> SampleBatch {
    let lens: Vec<i64> = rows.iter().map(|r| (r.len() / dim) as i64).collect();
    let lmax = *lens.iter().max().unwrap() as usize;
    let mut out = vec![0f32; rows.len() * lmax * dim];
    for (i, r) in rows.iter().enumerate() {
        out[i * lmax * dim..i * lmax * dim + r.len()].copy_from_slice(r);
    }
    let inputs = Tensor::from_slice(&out).view([rows.len() as i64, lmax as i64, dim as i64]);
    let lengths = lens.iter().any(|&l| l != lmax as i64).then(|| Tensor::from_slice(&lens));
    SampleBatch { inputs, lengths, context: None }
}

fn pad_ids(rows: &[Vec<i64>]) -> SampleBatch {
    let lens: Vec<i64> = rows.iter().map(|r| r.len() as i64).collect();
    let lmax = *lens.iter().max().unwrap() as usize;
    let mut out = vec![0i64; rows.len() * lmax];
    for (i, r) in rows.iter().enumerate() {
        out[i * lmax..i * lmax + r.len()].copy_from_slice(r);
    }
    let inputs = Tensor::from_slice(&out).view([rows.len() as i64, lmax as i64]);
    let lengths = lens.iter().any(|&l| l != lmax as i64).then(|| Tensor::from_slice(&lens));
    SampleBatch { inputs, lengths, context: None }
}
