//! Tasks: how a dataset (or a generator) becomes token batches for the FPT model, and the loss and
//! metrics it is judged by. Every task yields the same [`Batch`] so the engine has one loop.
//!
//! One task is one file: a struct with the task's fields (its `task` JSON) that implements
//! [`Task`], registered by one line of [`task_types!`] below. The rest of the crate reaches a task
//! only through [`TaskSpec::task`].
pub mod files;
pub mod images;
pub mod infer;
pub mod normalize;
pub mod objective;
pub mod samples;
pub mod sequence;
pub mod spec;

/// Registers the task types. Each line names a task's file (declared as a module here) and, for
/// each task it holds, the struct that implements [`Task`] and the type's name as requests spell
/// it. Adding a task is one file and one line here; the lines after `; tests:` exist in test builds only.
macro_rules! task_types {
    (
        $($file:ident { $($variant:ident = $name:literal),+ })*
        ; tests: $($test_file:ident { $($test_variant:ident = $test_name:literal),+ })*
    ) => {
        $(pub mod $file;)*
        $(#[cfg(test)] mod $test_file;)*

        /// Every type's name, as requests spell it (the test builds' own left out).
        pub const TASK_TYPES: &[&str] = &[$($($name,)+)*];

        /// One of the paper's tasks or a generic user task. Unknown fields are refused, so typos surface.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type")]
        pub enum TaskSpec {
            $($(#[serde(rename = $name)] $variant($file::$variant),)+)*
            $($(#[cfg(test)] #[serde(rename = $test_name)] $test_variant($test_file::$test_variant),)+)*
        }

        impl TaskSpec {
            /// The type's name, as requests spell it.
            pub fn name(&self) -> &'static str {
                match self {
                    $($(TaskSpec::$variant(_) => $name,)+)*
                    $($(#[cfg(test)] TaskSpec::$test_variant(_) => $test_name,)+)*
                }
            }

            /// What the task does, whichever it is.
            pub fn task(&self) -> &dyn Task {
                match self {
                    $($(TaskSpec::$variant(t) => t,)+)*
                    $($(#[cfg(test)] TaskSpec::$test_variant(t) => t,)+)*
                }
            }
        }
    };
}

task_types! {
    bits { BitMemory = "bit_memory", BitXor = "bit_xor" }
    listops { Listops = "listops" }
    mnist { Mnist = "mnist" }
    cifar10 { Cifar10 = "cifar10", Cifar10Lra = "cifar10_lra" }
    remote_homology { RemoteHomology = "remote_homology" }
    sequence_classification { SequenceClassification = "sequence_classification" }
    regression { Regression = "regression" }
    multilabel_classification { MultilabelClassification = "multilabel_classification" }
    forecasting { Forecasting = "forecasting" }
    image_classification { ImageClassification = "image_classification" }
    ; tests:
    toy { ToySumSign = "toy_sum_sign" }
}

use std::path::Path;

use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::model::fpt::{HeadShape, InputKind};
use bits::BitTask;
use images::ImageTransform;
pub use objective::{Objective, Prediction, Score};
use samples::Form;
pub use spec::{SpecError, TaskLimits};

/// What a task fitted on its training split, as JSON the task alone reads (`{}` for the tasks that
/// fit nothing). Adapters store it under the metadata key `task_state`.
pub type Fitted = serde_json::Value;

/// What fits nothing.
pub fn nothing_fitted() -> Fitted {
    serde_json::Value::Object(Default::default())
}

/// What differs between tasks. Everything else (the engine, the service, predictions) is shared.
pub trait Task {
    /// Checks the values serde cannot (ranges, consistency) and every size against `limits`.
    fn validate(&self, limits: &TaskLimits) -> Result<(), SpecError>;
    /// Whether the task reads a training file; generated tasks make their own data.
    fn needs_file(&self) -> bool {
        true
    }
    /// For a task that draws every training batch afresh: the values one sample holds, so that
    /// the parse bounds a batch of them (`batch_size` x this) as it bounds a generated split.
    fn drawn_values_per_sample(&self) -> Option<usize> {
        None
    }
    /// Reads (or generates) the splits and the head's shape; `spec` is the registered spec of `self`.
    /// What the task fits on its training split (normalisation statistics, a label map) goes in
    /// [`TaskData::fitted`]; the adapter carries it, and it comes back to the two methods below.
    fn load(&self, spec: &TaskSpec, src: &DataSources<'_>) -> Result<TaskData>;
    /// How the task's continuous inputs are normalised (see [`normalize`]); as given, for most.
    fn input_normalization(&self) -> normalize::InputNormalization {
        normalize::InputNormalization::NONE
    }
    /// What the task fits on its training split's targets ([`TaskData::fitted`]); nothing, for most.
    fn fit(&self, _train_targets: &Tensor) -> Fitted {
        nothing_fitted()
    }
    /// How the head's logits are scored and answered.
    fn objective(&self, _shape: &HeadShape, fitted: &Fitted) -> Objective {
        Objective::classes(fitted)
    }
    /// How a prediction's input sample looks.
    fn sample_form(&self, shape: &HeadShape, fitted: &Fitted) -> Form;
    /// A generated task's data as files a client can download (the training data first, then the
    /// validation data if the task keeps it apart); none for a task that reads files.
    fn generated_files(&self, _spec: &TaskSpec, _run: &Generation) -> Result<Vec<GeneratedFile>> {
        Ok(Vec::new())
    }
}

/// What a generated task's data depends on beyond its spec.
#[derive(Debug, Clone, Copy)]
pub struct Generation {
    pub seed: u64,
    /// The backbone's positions, which bound a generated sequence's length.
    pub max_positions: usize,
    pub batch_size: usize,
    pub n_steps: u64,
}

/// A generated split written out: what the run trains (or validates) on, or, for data drawn
/// afresh every step, how it is drawn.
#[derive(Debug, Clone)]
pub struct GeneratedFile {
    /// `training` or `validation`.
    pub split: &'static str,
    /// The file's format as uploads name it, and its file name's extension.
    pub format: &'static str,
    pub extension: &'static str,
    pub samples: usize,
    pub bytes: Vec<u8>,
}

/// Model inputs and targets for one step. `lengths` is set when rows are right-padded.
pub struct Batch {
    pub inputs: Tensor,
    pub lengths: Option<Tensor>,
    /// [B] class indices, [B, bits] 0/1 for bit tasks, or [B, k] real regression targets.
    pub targets: Tensor,
}

impl Batch {
    pub fn size(&self) -> i64 {
        self.targets.size()[0]
    }

    pub fn to_device(&self, device: Device) -> Batch {
        Batch {
            inputs: self.inputs.to_device(device),
            lengths: self.lengths.as_ref().map(|l| l.to_device(device)),
            targets: self.targets.to_device(device),
        }
    }
}

/// Inputs of a split, ready to be indexed into batches.
enum Features {
    /// [N, L, D] float or [N, L] int64, with [N] lengths when padded.
    Tokens { x: Tensor, lengths: Option<Tensor> },
    /// [N, H, W, C] in 0..1, patched (and augmented) per batch.
    Images { x: Tensor, transform: ImageTransform },
}

/// One split of a dataset held in memory.
struct Split {
    features: Features,
    targets: Tensor,
}

impl Split {
    fn len(&self) -> usize {
        self.targets.size()[0] as usize
    }

    fn batch(&self, idx: &[i64], train: bool) -> Batch {
        let index = Tensor::from_slice(idx);
        let targets = self.targets.index_select(0, &index);
        match &self.features {
            Features::Tokens { x, lengths } => {
                let inputs = x.index_select(0, &index);
                match lengths {
                    None => Batch { inputs, lengths: None, targets },
                    Some(len) => {
                        // Trim the padding no row of this batch needs.
                        let len = len.index_select(0, &index);
                        let max = i64::try_from(len.max()).unwrap();
                        Batch { inputs: inputs.narrow(1, 0, max), lengths: Some(len), targets }
                    }
                }
            }
            Features::Images { x, transform } => {
                Batch { inputs: transform.apply(&x.index_select(0, &index), train), lengths: None, targets }
            }
        }
    }

    /// A random sub-split (`take` of a seeded permutation) and the rest.
    fn split_off(self, fraction: f64, seed: u64) -> Result<(Split, Split)> {
        let n = self.len();
        let n_valid = ((n as f64) * fraction).round() as usize;
        if n_valid == 0 || n_valid >= n {
            bail!("validation_fraction {fraction} of {n} samples leaves an empty split");
        }
        let mut order: Vec<i64> = (0..n as i64).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ SPLIT_SALT));
        let (v, t) = order.split_at(n_valid);
        Ok((self.subset(t), self.subset(v)))
    }

    /// This split's samples followed by `other`'s (rows of different lengths right-padded, with
    /// their lengths, as a loaded split of varying lengths holds them).
    fn concat(&self, other: &Split) -> Split {
        let features = match (&self.features, &other.features) {
            (Features::Tokens { x: a, lengths: la }, Features::Tokens { x: b, lengths: lb }) => {
                let (na, nb) = (a.size()[1], b.size()[1]);
                let lengths = if la.is_none() && lb.is_none() && na == nb {
                    None
                } else {
                    let full = |x: &Tensor, n: i64| Tensor::full([x.size()[0]], n, (Kind::Int64, x.device()));
                    let la = la.as_ref().map_or_else(|| full(a, na), |l| l.shallow_clone());
                    let lb = lb.as_ref().map_or_else(|| full(b, nb), |l| l.shallow_clone());
                    Some(Tensor::cat(&[la, lb], 0))
                };
                let longest = na.max(nb);
                let pad = |x: &Tensor| {
                    let mut size = x.size();
                    size[1] = longest - size[1];
                    Tensor::cat(&[x.shallow_clone(), Tensor::zeros(&size, (x.kind(), x.device()))], 1)
                };
                Features::Tokens { x: Tensor::cat(&[pad(a), pad(b)], 0), lengths }
            }
            (Features::Images { x: a, transform }, Features::Images { x: b, .. }) => {
                Features::Images { x: Tensor::cat(&[a, b], 0), transform: transform.clone() }
            }
            _ => unreachable!("the splits of one task hold the same kind of features"),
        };
        Split { features, targets: Tensor::cat(&[&self.targets, &other.targets], 0) }
    }

    /// The same split, its tensors shared.
    fn shallow(&self) -> Split {
        let features = match &self.features {
            Features::Tokens { x, lengths } => {
                Features::Tokens { x: x.shallow_clone(), lengths: lengths.as_ref().map(Tensor::shallow_clone) }
            }
            Features::Images { x, transform } => Features::Images { x: x.shallow_clone(), transform: transform.clone() },
        };
        Split { features, targets: self.targets.shallow_clone() }
    }

    fn subset(&self, idx: &[i64]) -> Split {
        let index = Tensor::from_slice(idx);
        let features = match &self.features {
            Features::Tokens { x, lengths } => {
                Features::Tokens { x: x.index_select(0, &index), lengths: lengths.as_ref().map(|l| l.index_select(0, &index)) }
            }
            Features::Images { x, transform } => Features::Images { x: x.index_select(0, &index), transform: transform.clone() },
        };
        Split { features, targets: self.targets.index_select(0, &index) }
    }
}

/// Keeps the split's shuffle independent of the batch order drawn from the same seed.
const SPLIT_SALT: u64 = 0x5eed_5011;

/// What was loaded, for reports and the job's result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DataInfo {
    pub train_samples: usize,
    pub valid_samples: usize,
    pub test_samples: usize,
    /// Tokens per sample (the longest, when lengths vary).
    pub seq_len: usize,
    /// Samples cut to fit the backbone's positions (counted, never dropped silently).
    pub truncated: usize,
    /// What reading the data decided that the user should hear (a time column skipped, gaps filled).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The trivial predictor of a task's data, and its primary metric on the validation split.
#[derive(Debug, Clone, PartialEq)]
pub struct Trivial {
    pub name: &'static str,
    pub value: f64,
}

/// Where the data comes from and how to split it.
pub struct DataSources<'a> {
    pub train: Option<&'a Path>,
    pub valid: Option<&'a Path>,
    pub test: Option<&'a Path>,
    /// Held out from the training file when there is no validation file.
    pub valid_fraction: f64,
    pub seed: u64,
    pub max_positions: usize,
    /// What an adapter fitted on its training split, when its data is evaluated: the files are
    /// read and normalised as that split was (its class names, its statistics), not fitted afresh.
    pub fitted: Option<&'a Fitted>,
}

impl DataSources<'_> {
    /// Tokens a record keeps: a task's `max_len` where it sets one, never more than the backbone's positions.
    pub fn tokens_kept(&self, max_len: Option<usize>) -> usize {
        max_len.unwrap_or(self.max_positions).min(self.max_positions)
    }
}

enum Data {
    Synthetic { task: BitTask, valid: Split },
    Loaded { train: Split, valid: Split, test: Option<Split> },
}

/// A task with its data in memory: batches by step, whole splits for evaluation.
pub struct TaskData {
    pub spec: TaskSpec,
    pub shape: HeadShape,
    /// What the task fitted on the training split (see [`Task::load`]).
    pub fitted: Fitted,
    pub objective: Objective,
    pub info: DataInfo,
    seed: u64,
    data: Data,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalSplit {
    Valid,
    Test,
}

/// Seed of the generator for the batch of `step` (and, salted, everything else random at that step).
pub fn step_seed(seed: u64, step: u64) -> u64 {
    let mut z = seed.wrapping_add(step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl TaskData {
    /// Loads a task's data. The spec has been validated where it was parsed (or comes from a
    /// stored job or adapter that was).
    pub fn load(spec: &TaskSpec, src: &DataSources<'_>) -> Result<Self> {
        if spec.needs_file() && src.train.is_none() {
            bail!("task `{}` needs a training file", spec.name());
        }
        spec.task().load(spec, src)
    }

    /// A generated task: validation rows from a seed no training step uses, training batches drawn per step.
    pub(super) fn synthetic(spec: &TaskSpec, task: BitTask, n_valid: usize, src: &DataSources<'_>) -> Result<Self> {
        if task.tokens() > src.max_positions {
            bail!("task `{}` needs {} tokens, the backbone has {} positions", spec.name(), task.tokens(), src.max_positions);
        }
        // Validation rows come from a seed no training step uses.
        let (x, y) = task.tensors(step_seed(src.seed, u64::MAX), n_valid.max(1));
        let valid = Split { features: Features::Tokens { x, lengths: None }, targets: y };
        let (k, per_token) = task.readout();
        let shape = HeadShape {
            input: InputKind::Continuous { dim: task.token_dim() as i64 },
            output_dim: 2 * per_token as i64,
            readout_tokens: k as i64,
        };
        let fitted = nothing_fitted();
        Ok(Self {
            spec: spec.clone(),
            objective: spec.task().objective(&shape, &fitted),
            fitted,
            shape,
            info: DataInfo {
                train_samples: 0,
                valid_samples: n_valid.max(1),
                test_samples: 0,
                seq_len: task.tokens(),
                ..DataInfo::default()
            },
            seed: src.seed,
            data: Data::Synthetic { task, valid },
        })
    }

    /// The same task with its validation samples added to its training samples (the refit's
    /// data); its validation and test splits stay. The inputs stay normalised by the statistics
    /// fitted on the training split alone, which the adapter carries. None for a generated task,
    /// whose training batches are drawn afresh every step.
    pub fn with_validation_in_training(&self) -> Option<TaskData> {
        let Data::Loaded { train, valid, test } = &self.data else { return None };
        Some(TaskData {
            spec: self.spec.clone(),
            shape: self.shape,
            fitted: self.fitted.clone(),
            objective: self.objective.clone(),
            info: DataInfo { train_samples: train.len() + valid.len(), ..self.info.clone() },
            seed: self.seed,
            data: Data::Loaded { train: train.concat(valid), valid: valid.shallow(), test: test.as_ref().map(Split::shallow) },
        })
    }

    /// The training batch of `step`: a function of (seed, step) alone, so a resumed run sees the
    /// same batches. File data is walked in seeded per-epoch permutations.
    pub fn train_batch(&self, step: u64, batch: usize) -> Batch {
        match &self.data {
            Data::Synthetic { task, .. } => {
                let (inputs, targets) = task.tensors(step_seed(self.seed, step), batch);
                Batch { inputs, lengths: None, targets }
            }
            Data::Loaded { train, .. } => train.batch(&epoch_indices(self.seed, step, batch, train.len()), true),
        }
    }

    /// The whole split in order, in batches of `batch`.
    pub fn eval_batches(&self, split: EvalSplit, batch: usize) -> Vec<Batch> {
        let s = match (&self.data, split) {
            (Data::Synthetic { valid, .. }, EvalSplit::Valid) => valid,
            (Data::Loaded { valid, .. }, EvalSplit::Valid) => valid,
            (Data::Loaded { test: Some(t), .. }, EvalSplit::Test) => t,
            _ => return Vec::new(),
        };
        let n = s.len() as i64;
        (0..n).step_by(batch).map(|i| s.batch(&(i..(i + batch as i64).min(n)).collect::<Vec<_>>(), false)).collect()
    }

    /// The trivial predictor a run must beat (see [`Objective::trivial`]), and its primary metric
    /// on `split`; None for generated tasks, objectives without one, and a split the data lacks.
    pub fn trivial(&self, split: EvalSplit) -> Option<Trivial> {
        let Data::Loaded { train, .. } = &self.data else { return None };
        let mut tally = crate::metrics::Tally::default();
        let mut name = None;
        for b in self.eval_batches(split, 1024) {
            let (n, logits) = self.objective.trivial(&train.targets, &b.targets, self.shape.output_dim)?;
            tally.merge(&self.objective.score(&logits, &b.targets).tally);
            name = Some(n);
        }
        let value = self.objective.metrics(&tally).get(self.objective.primary().name).copied()?;
        Some(Trivial { name: name?, value })
    }
}

/// Indices of the samples in training batch `step`: consecutive slices of a per-epoch permutation.
fn epoch_indices(seed: u64, step: u64, batch: usize, n: usize) -> Vec<i64> {
    let start = step as usize * batch;
    let mut out = Vec::with_capacity(batch);
    let mut cached: Option<(usize, Vec<i64>)> = None;
    for pos in start..start + batch {
        let (epoch, i) = (pos / n, pos % n);
        if cached.as_ref().map(|c| c.0) != Some(epoch) {
            let mut order: Vec<i64> = (0..n as i64).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(step_seed(seed ^ 0xe0c4, epoch as u64)));
            cached = Some((epoch, order));
        }
        out.push(cached.as_ref().unwrap().1[i]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(rows: &[&[f32]], lengths: Option<&[i64]>) -> Split {
        let longest = rows.iter().map(|r| r.len()).max().unwrap();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied().chain(std::iter::repeat(0.0)).take(longest)).collect();
        let x = Tensor::from_slice(&flat).view([rows.len() as i64, longest as i64, 1]);
        let targets = Tensor::from_slice(&(0..rows.len() as i64).collect::<Vec<_>>());
        Split { features: Features::Tokens { x, lengths: lengths.map(Tensor::from_slice) }, targets }
    }

    #[test]
    fn splits_of_different_lengths_join_right_padded_with_their_lengths() {
        let a = tokens(&[&[1.0, 2.0], &[3.0, 4.0]], None);
        let b = tokens(&[&[5.0, 6.0, 7.0]], None);
        let joined = a.concat(&b);
        let Features::Tokens { x, lengths } = &joined.features else { unreachable!() };
        assert_eq!(x.size(), [3, 3, 1]);
        assert_eq!(Vec::<f32>::try_from(x.flatten(0, -1)).unwrap(), [1.0, 2.0, 0.0, 3.0, 4.0, 0.0, 5.0, 6.0, 7.0]);
        assert_eq!(Vec::<i64>::try_from(lengths.as_ref().unwrap()).unwrap(), [2, 2, 3]);
        assert_eq!(Vec::<i64>::try_from(&joined.targets).unwrap(), [0, 1, 0]);
        // Rows of one length stay without lengths; padded rows keep theirs.
        let same = a.concat(&tokens(&[&[8.0, 9.0]], None));
        assert!(matches!(same.features, Features::Tokens { lengths: None, .. }));
        let padded = tokens(&[&[1.0], &[2.0, 3.0]], Some(&[1, 2])).concat(&a);
        let Features::Tokens { lengths, .. } = &padded.features else { unreachable!() };
        assert_eq!(Vec::<i64>::try_from(lengths.as_ref().unwrap()).unwrap(), [1, 2, 2, 2]);
    }
}
