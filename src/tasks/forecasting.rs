//! `forecasting`: the next `horizon` steps of a series from its last `context_length`, as GPT4TS
//! (Zhou et al. 2023) does it: each window normalised by its own context (undone at the output),
//! channels handled independently by default (each channel of a window is its own row), and
//! optionally `patch_size` steps (every `stride`) grouped into one token.
//!
//! Windows are cut chronologically: the validation and test parts are the ends of each series
//! (their contexts may reach back into the earlier part; their targets never do), the training
//! windows lie wholly before them. A window's row of targets packs what its metrics need in the
//! series' own units: the horizon's values, the seasonal-naive forecast, and the context's mean and
//! deviation (see [`Windowing::targets`]).
use std::path::Path;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::Tensor;

use super::files::{named, read_detected, Loaded};
use super::samples::Form;
use super::spec::{bad, check};
use super::{DataSources, Features, Fitted, Objective, SpecError, Split, Task, TaskData, TaskLimits, TaskSpec};
use crate::data::series::{self, Missing, SeriesSet};
use crate::data::Format;
use crate::model::fpt::{HeadShape, InputKind};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forecasting {
    /// Steps the model sees.
    pub context_length: usize,
    /// Steps it forecasts.
    pub horizon: usize,
    /// Steps grouped into one token (default 1: a token per step).
    pub patch_size: Option<usize>,
    /// Steps between patches (default `patch_size`).
    pub stride: Option<usize>,
    /// The season of the seasonal-naive forecast `mase` compares with (default 1: the last value).
    pub season: Option<usize>,
    /// Each channel its own row (default true); false: a token holds every channel.
    pub channel_independence: Option<bool>,
    /// Missing values: `refuse` (the default), `drop` or `interpolate`.
    pub missing: Option<Missing>,
    /// The end of each series kept for the test when no test file is given (default 0.2; 0: no test).
    pub test_fraction: Option<f64>,
    /// Steps between consecutive windows (default 1).
    pub window_stride: Option<usize>,
}

/// Values a task's windows may hold in all, splits together (4 bytes each).
const MAX_WINDOW_VALUES: usize = 1 << 27;
const MAX_HORIZON: usize = 100_000;

impl Task for Forecasting {
    fn validate(&self, limits: &TaskLimits) -> Result<(), SpecError> {
        check::length("context_length", self.context_length, 1, limits)?;
        check::within("horizon", self.horizon, 1, MAX_HORIZON)?;
        let patch = self.patch_size.unwrap_or(1);
        check::within("patch_size", patch, 1, self.context_length)?;
        check::within("stride", self.stride.unwrap_or(patch), 1, patch)?;
        check::within("season", self.season.unwrap_or(1), 1, self.context_length)?;
        check::within("window_stride", self.window_stride.unwrap_or(1), 1, 1 << 20)?;
        match self.test_fraction {
            Some(f) if !(0.0..0.9).contains(&f) => Err(bad("test_fraction", "must be within [0, 0.9)")),
            _ => Ok(()),
        }
    }

    fn load(&self, spec: &TaskSpec, src: &DataSources<'_>) -> Result<TaskData> {
        let missing = self.missing.unwrap_or_default();
        let train = read_series(src.train.expect("checked by TaskData::load"), missing)?;
        let c = train.channels.len();
        let read_other = |p: &Path| -> Result<SeriesSet> {
            let s = read_series(p, missing)?;
            if s.channels.len() != c {
                bail!("{}: {} channels, the training file has {c}", p.display(), s.channels.len());
            }
            Ok(s)
        };
        let valid = src.valid.map(read_other).transpose()?;
        let test = src.test.map(read_other).transpose()?;
        if let Some(known) = src.fitted.map(channels).filter(|&k| k != c) {
            bail!("the series have {c} channels, the adapter was trained on {known}");
        }
        let w = self.windowing(c);
        let most = TaskLimits::default();
        if w.token_dim() > most.max_input_dim || w.horizon * w.channels_per_row() > most.max_classes {
            bail!(
                "{c} channels make tokens of {} values and {} outputs, at most {} and {}: forecast fewer channels together \
                 (channel_independence) or a shorter horizon",
                w.token_dim(),
                w.horizon * w.channels_per_row(),
                most.max_input_dim,
                most.max_classes
            );
        }
        if w.tokens() > src.max_positions {
            bail!(
                "a context of {} steps makes {} tokens, the backbone has {} positions: set patch_size (and stride)",
                self.context_length,
                w.tokens(),
                src.max_positions
            );
        }
        let parts = Parts {
            valid: if valid.is_some() { 0.0 } else { src.valid_fraction },
            test: if test.is_some() { 0.0 } else { self.test_fraction.unwrap_or(0.2) },
        };
        // Each series' parts (the steps their windows' targets start in), per split.
        let mut plan: Vec<(&[f32], std::ops::Range<usize>, usize)> = Vec::new();
        if src.fitted.is_some() {
            // An adapter's evaluation: every window of the file is evaluated (it trains on none);
            // a validation file, when one is named, holds the windows evaluated.
            let splits: &[usize] = if valid.is_some() { &[0] } else { &[0, 1] };
            for s in &train.series {
                plan.extend(splits.iter().map(|&k| (s.as_slice(), w.context..s.len() / c, k)));
            }
        }
        for (i, s) in train.series.iter().enumerate().filter(|_| src.fitted.is_none()) {
            let cut = parts.cut(train.steps(i), &w).map_err(|m| anyhow::anyhow!("{}: series {i}: {m}", src.train.unwrap().display()))?;
            plan.extend(cut.into_iter().enumerate().map(|(k, part)| (s.as_slice(), part, k)));
        }
        for (set, k) in [(&valid, 1), (&test, 2)] {
            plan.extend(set.iter().flat_map(|set| set.series.iter()).map(|s| (s.as_slice(), w.context..s.len() / c, k)));
        }
        // Windows overlap, so they hold many times the series' values: counted before they are cut.
        let values: usize = plan.iter().map(|(_, part, _)| w.windows(part).saturating_mul(w.values_per_window())).sum();
        if values > MAX_WINDOW_VALUES {
            bail!("the windows would hold {values} values, at most {MAX_WINDOW_VALUES}: set window_stride (or a shorter context)");
        }
        let mut windows = [Windows::default(), Windows::default(), Windows::default()];
        for (s, part, k) in plan {
            w.cut(s, part, &mut windows[k]);
        }
        let [tr, va, te] = windows;
        if tr.rows == 0 {
            bail!("no training windows: the series are too short for a context of {} and a horizon of {}", self.context_length, self.horizon);
        }
        if va.rows == 0 {
            bail!("no validation windows: the validation part must hold at least a horizon ({} steps)", self.horizon);
        }
        for note in train.notes.iter() {
            tracing::info!(%note, "forecasting data");
        }
        let shape = HeadShape {
            input: InputKind::Continuous { dim: w.token_dim() as i64 },
            output_dim: (w.horizon * w.channels_per_row()) as i64,
            readout_tokens: 1,
        };
        let test = (te.rows > 0).then(|| te.split(&w));
        let mut data = Loaded { train: tr.split(&w), valid: Some(va.split(&w)), test, shape, truncated: 0, label_names: None }.finish(spec, src)?;
        // The channels are known once read: what depends on them is made again.
        data.fitted["channels"] = json!(train.channels);
        data.objective = self.objective(&data.shape, &data.fitted);
        data.info.notes = train.notes;
        Ok(data)
    }

    fn objective(&self, _shape: &HeadShape, fitted: &Fitted) -> Objective {
        let w = self.windowing(channels(fitted));
        Objective::Forecast { horizon: w.horizon, channels_per_row: w.channels_per_row(), rows_per_sample: w.rows_per_window() }
    }

    fn sample_form(&self, _shape: &HeadShape, fitted: &Fitted) -> Form {
        Form::Context(self.windowing(channels(fitted)))
    }
}

fn channels(fitted: &Fitted) -> usize {
    fitted["channels"].as_array().map_or(1, Vec::len).max(1)
}

fn read_series(p: &Path, missing: Missing) -> Result<SeriesSet> {
    let (bytes, format) = read_detected(p)?;
    let set = match format {
        Format::Csv => series::read_csv_series(&bytes, missing),
        Format::Jsonl => series::read_jsonl_series(&bytes, missing),
        Format::Parquet => crate::data::parquet::read_parquet_series(&bytes, missing),
        other => bail!("{}: a {other} file cannot hold series (a CSV or Parquet table with a column per channel, or JSONL {{\"series\": …}})", p.display()),
    };
    set.map_err(|e| named(p, e))
}

impl Forecasting {
    fn windowing(&self, channels: usize) -> Windowing {
        let patch = self.patch_size.unwrap_or(1);
        Windowing {
            context: self.context_length,
            horizon: self.horizon,
            patch,
            stride: self.stride.unwrap_or(patch),
            season: self.season.unwrap_or(1),
            independent: self.channel_independence.unwrap_or(true),
            channels,
            step: self.window_stride.unwrap_or(1),
        }
    }
}

/// The fractions of each series' end held out for validation and test.
struct Parts {
    valid: f64,
    test: f64,
}

impl Parts {
    /// The target start steps of a series' training, validation and test windows.
    fn cut(&self, t: usize, w: &Windowing) -> Result<[std::ops::Range<usize>; 3], String> {
        let part = |f: f64| if f > 0.0 { ((t as f64 * f).round() as usize).max(w.horizon) } else { 0 };
        let (n_valid, n_test) = (part(self.valid), part(self.test));
        let train_end = t.checked_sub(n_valid + n_test).filter(|&e| e >= w.context + w.horizon).ok_or_else(|| {
            format!(
                "{t} steps are too few: a training window needs {} (context {} + horizon {}), and the validation and test parts take {n_valid} and {n_test}",
                w.context + w.horizon,
                w.context,
                w.horizon
            )
        })?;
        let valid_end = train_end + n_valid;
        Ok([w.context..train_end, train_end..valid_end, valid_end..t])
    }
}

/// How a series becomes model rows: windows of `context` steps followed by `horizon` targets.
#[derive(Debug, Clone, Copy)]
pub struct Windowing {
    context: usize,
    horizon: usize,
    patch: usize,
    stride: usize,
    season: usize,
    independent: bool,
    channels: usize,
    /// Steps between consecutive windows.
    step: usize,
}

/// Rows of windows as flat values, before they become tensors.
#[derive(Default)]
struct Windows {
    rows: usize,
    tokens: Vec<f32>,
    targets: Vec<f32>,
}

impl Windows {
    fn split(self, w: &Windowing) -> Split {
        let x = Tensor::from_slice(&self.tokens).view([self.rows as i64, w.tokens() as i64, w.token_dim() as i64]);
        let targets = Tensor::from_slice(&self.targets).view([self.rows as i64, w.target_width() as i64]);
        Split { features: Features::Tokens { x, lengths: None }, targets }
    }
}

impl Windowing {
    /// Model rows per window: one per channel when channels are independent.
    pub fn rows_per_window(&self) -> usize {
        if self.independent {
            self.channels
        } else {
            1
        }
    }

    /// Channels in one row.
    pub fn channels_per_row(&self) -> usize {
        if self.independent {
            1
        } else {
            self.channels
        }
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    pub fn context(&self) -> usize {
        self.context
    }

    /// Patches of the context, aligned to its end so that the latest steps always take part.
    pub fn tokens(&self) -> usize {
        (self.context - self.patch) / self.stride + 1
    }

    pub fn token_dim(&self) -> usize {
        self.patch * self.channels_per_row()
    }

    /// Per row: the horizon's values and the seasonal-naive forecast ([H][channels] each), then
    /// the context's mean and deviation per channel.
    fn target_width(&self) -> usize {
        2 * self.horizon * self.channels_per_row() + 2 * self.channels_per_row()
    }

    /// The first step of the last window whose target lies wholly within `part`, if any.
    fn last_start(&self, part: &std::ops::Range<usize>) -> Option<usize> {
        part.end.checked_sub(self.horizon).filter(|&l| l >= part.start)
    }

    /// The windows [`Self::cut`] cuts from `part`.
    fn windows(&self, part: &std::ops::Range<usize>) -> usize {
        self.last_start(part).map_or(0, |last| (last - part.start) / self.step + 1)
    }

    /// The values a window's rows hold, tokens and targets.
    fn values_per_window(&self) -> usize {
        self.rows_per_window() * (self.tokens() * self.token_dim() + self.target_width())
    }

    /// The windows of series `s` (time-major) whose targets lie wholly within the steps of `part`
    /// (which starts a context or more into the series).
    fn cut(&self, s: &[f32], part: std::ops::Range<usize>, out: &mut Windows) {
        let c = self.channels;
        let Some(last) = self.last_start(&part) else { return };
        for start in (part.start..=last).step_by(self.step) {
            let context = &s[(start - self.context) * c..start * c];
            let future = &s[start * c..(start + self.horizon) * c];
            let stats = self.rows(context, &mut out.tokens);
            for (r, (mean, std)) in stats.iter().enumerate() {
                let chans = self.row_channels(r);
                let pick = |values: &[f32], steps: usize, out: &mut Vec<f32>| {
                    for step in 0..steps {
                        out.extend(chans.clone().map(|ch| values[step * c + ch]));
                    }
                };
                pick(future, self.horizon, &mut out.targets);
                let naive: Vec<f32> = (0..self.horizon).flat_map(|h| self.naive_step(context, h)).collect();
                pick(&naive, self.horizon, &mut out.targets);
                out.targets.extend(mean);
                out.targets.extend(std);
            }
            out.rows += self.rows_per_window();
        }
    }

    /// The channels of row `r` of a window.
    fn row_channels(&self, r: usize) -> std::ops::Range<usize> {
        if self.independent {
            r..r + 1
        } else {
            0..self.channels
        }
    }

    /// The seasonal-naive forecast of step `h` past the context, every channel.
    fn naive_step(&self, context: &[f32], h: usize) -> Vec<f32> {
        let c = self.channels;
        let step = self.context - self.season + h % self.season;
        context[step * c..(step + 1) * c].to_vec()
    }

    /// Appends the model rows of one context (`[context][channels]`, time-major): its patches,
    /// each channel standardised by the context's own mean and deviation. Returns those
    /// statistics, per row (a value per channel of the row).
    pub fn rows(&self, context: &[f32], tokens: &mut Vec<f32>) -> Vec<(Vec<f32>, Vec<f32>)> {
        let c = self.channels;
        let n = self.context as f64;
        let stat = |ch: usize| {
            let mean = (0..self.context).map(|i| context[i * c + ch] as f64).sum::<f64>() / n;
            let var = (0..self.context).map(|i| (context[i * c + ch] as f64 - mean).powi(2)).sum::<f64>() / n;
            (mean as f32, (var + 1e-5).sqrt() as f32)
        };
        let stats: Vec<(f32, f32)> = (0..c).map(stat).collect();
        let offset = (self.context - self.patch) % self.stride;
        let mut per_row = Vec::with_capacity(self.rows_per_window());
        for r in 0..self.rows_per_window() {
            let chans = self.row_channels(r);
            for p in 0..self.tokens() {
                for step in offset + p * self.stride..offset + p * self.stride + self.patch {
                    tokens.extend(chans.clone().map(|ch| (context[step * c + ch] - stats[ch].0) / stats[ch].1));
                }
            }
            per_row.push((chans.clone().map(|ch| stats[ch].0).collect(), chans.map(|ch| stats[ch].1).collect()));
        }
        per_row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windowing(patch: usize, stride: usize, independent: bool, channels: usize) -> Windowing {
        Windowing { context: 5, horizon: 2, patch, stride, season: 2, independent, channels, step: 1 }
    }

    #[test]
    fn windows_take_their_targets_after_their_context_and_patches_end_with_it() {
        // Two channels: c0 = 0, 1, 2, ...; c1 = 10 x c0.
        let s: Vec<f32> = (0..9).flat_map(|i| [i as f32, 10.0 * i as f32]).collect();
        let w = windowing(2, 2, true, 2);
        assert_eq!((w.tokens(), w.token_dim()), (2, 2), "patches [1, 2] and [3, 4] of steps 0..5");
        let mut out = Windows::default();
        assert_eq!(w.windows(&(5..8)), 2);
        w.cut(&s, 5..8, &mut out);
        assert_eq!(out.tokens.len() + out.targets.len(), 2 * w.values_per_window(), "counted as cut");
        assert_eq!(out.rows, 2 * 2, "windows with targets starting at 5 and 6 (7 would run past the part), a row per channel");
        let width = w.target_width();
        // Row 0: channel 0 of the first window: targets 5, 6; seasonal naive (season 2) 3, 4; mean 2.
        assert_eq!(&out.targets[..6], &[5.0, 6.0, 3.0, 4.0, 2.0, (2.0f32 + 1e-5).sqrt()]);
        // Row 1: channel 1, in its own units.
        assert_eq!(&out.targets[width..width + 5], &[50.0, 60.0, 30.0, 40.0, 20.0]);
        // Tokens are the standardised context, the same for both channels (one is the other x10).
        let z = |v: f32| (v - 2.0) / (2.0f32 + 1e-5).sqrt();
        assert_eq!(&out.tokens[..4], &[z(1.0), z(2.0), z(3.0), z(4.0)]);
        assert!(out.tokens[4..8].iter().zip(&out.tokens[..4]).all(|(a, b)| (a - b).abs() < 1e-5));
        // Mixed channels: one row per window, a token holds both channels.
        let w = windowing(1, 1, false, 2);
        assert_eq!((w.rows_per_window(), w.tokens(), w.token_dim(), w.target_width()), (1, 5, 2, 2 * 2 * 2 + 4));
    }

    #[test]
    fn validation_and_test_parts_are_the_ends_of_a_series() {
        let w = windowing(1, 1, true, 1);
        let parts = Parts { valid: 0.1, test: 0.2 };
        let [train, valid, test] = parts.cut(100, &w).unwrap();
        assert_eq!((train, valid, test), (5..70, 70..80, 80..100));
        // The windows of the training part end before the validation part starts.
        let s: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let mut out = Windows::default();
        w.cut(&s, 5..70, &mut out);
        let last_target = out.targets.chunks(w.target_width()).map(|r| r[1]).fold(0.0f32, f32::max);
        assert_eq!(last_target, 69.0);
        let err = parts.cut(10, &w).unwrap_err();
        assert!(err.starts_with("10 steps are too few: a training window needs 7"), "{err}");
    }
}
