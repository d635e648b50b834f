//! What file-backed tasks share: reading training/validation/test files (through `crate::data`'s
//! parsers) into in-memory splits, and the common finish of a loaded task.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

use super::images::ImageTransform;
use super::{Data, DataInfo, DataSources, Features, Split, TaskData, TaskSpec};
use crate::data::records::RecordSpec;
use crate::data::{self, cifar::CifarSplit, ImageSet, RecordInputs, RecordLabels, RecordSet, SequenceSet};
use crate::model::fpt::{HeadShape, InputKind};

pub(super) const CIFAR_MEAN: [f64; 3] = [0.4914, 0.4822, 0.4465];
pub(super) const CIFAR_STD: [f64; 3] = [0.2470, 0.2435, 0.2616];

/// A file task's splits as read, before the common finish: the validation split held out when
/// there is no validation file, the lengths checked against the backbone, the counts reported.
pub(super) struct Loaded {
    pub train: Split,
    pub valid: Option<Split>,
    pub test: Option<Split>,
    pub shape: HeadShape,
    /// Samples cut to fit the backbone's positions.
    pub truncated: usize,
    /// The training file's class names, when its labels were names.
    pub label_names: Option<Vec<String>>,
}

impl Loaded {
    /// Image splits as read (train, validation, test), the training split with its own transform
    /// (augmentation) and the others with the evaluation one.
    pub fn images(
        (train, valid, test): (ImageSet, Option<ImageSet>, Option<ImageSet>),
        train_transform: &ImageTransform,
        eval_transform: &ImageTransform,
        shape: HeadShape,
    ) -> Self {
        Self {
            train: image_split(train, train_transform),
            valid: valid.map(|s| image_split(s, eval_transform)),
            test: test.map(|s| image_split(s, eval_transform)),
            shape,
            truncated: 0,
            label_names: None,
        }
    }

    pub fn finish(self, spec: &TaskSpec, src: &DataSources<'_>) -> Result<TaskData> {
        let positions = src.max_positions;
        let (mut train, mut valid) = match self.valid {
            Some(v) => (self.train, v),
            None => self.train.split_off(src.valid_fraction, src.seed)?,
        };
        let mut test = self.test;
        let seq_len = max_tokens(&train).max(max_tokens(&valid));
        if seq_len > positions {
            bail!("task `{}` needs {seq_len} tokens, the backbone has {positions} positions", spec.name());
        }
        let info = DataInfo {
            train_samples: train.len(),
            valid_samples: valid.len(),
            test_samples: test.as_ref().map_or(0, |t| t.len()),
            seq_len,
            truncated: self.truncated,
            notes: Vec::new(),
        };
        let fitted = match src.fitted {
            // Evaluating an adapter: its data is normalised as its training split was.
            Some(fitted) => {
                for s in [Some(&mut train), Some(&mut valid), test.as_mut()].into_iter().flatten() {
                    super::normalize::apply_to_split(fitted, s);
                }
                fitted.clone()
            }
            None => {
                let mut fitted = spec.task().fit(&train.targets);
                if let Some(names) = self.label_names {
                    fitted["label_names"] = serde_json::json!(names);
                }
                super::normalize::fit_and_apply(
                    spec.task().input_normalization(),
                    &mut train,
                    [Some(&mut valid), test.as_mut()],
                    &mut fitted,
                );
                fitted
            }
        };
        let objective = spec.task().objective(&self.shape, &fitted);
        let data = Data::Loaded { train, valid, test };
        Ok(TaskData { spec: spec.clone(), shape: self.shape, fitted, objective, info, seed: src.seed, data })
    }
}

pub(super) fn classes(dim: i64, n: i64) -> HeadShape {
    HeadShape { input: InputKind::Continuous { dim }, output_dim: n, readout_tokens: 1 }
}

pub(super) fn tokens(vocab: i64, n: i64) -> HeadShape {
    HeadShape { input: InputKind::Tokens { vocab }, output_dim: n, readout_tokens: 1 }
}

fn max_tokens(s: &Split) -> usize {
    match &s.features {
        Features::Tokens { x, .. } => x.size()[1] as usize,
        Features::Images { x, transform } => ((x.size()[1] / transform.patch) * (x.size()[2] / transform.patch)) as usize,
    }
}

pub(super) fn read_file(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

pub(super) fn named(p: &Path, e: data::DataError) -> anyhow::Error {
    anyhow::anyhow!("{}: {e}", p.display())
}

/// Train/valid/test image sets. A file that holds both splits (the CIFAR-10 archive) gives its test
/// split as validation when no validation file is named.
type ImageReader<'a> = &'a dyn Fn(&Path) -> Result<ImageSet>;

pub(super) fn image_splits(
    src: &DataSources<'_>,
    read: impl Fn(&Path) -> Result<ImageSet>,
    read_test: Option<ImageReader<'_>>,
) -> Result<(ImageSet, Option<ImageSet>, Option<ImageSet>)> {
    let train_path = src.train.unwrap();
    let train = read(train_path)?;
    let valid = match (src.valid, read_test) {
        (Some(v), Some(rt)) if is_archive(v) => Some(rt(v)?),
        (Some(v), _) => Some(read(v)?),
        (None, Some(rt)) if is_archive(train_path) => Some(rt(train_path)?),
        (None, _) => None,
    };
    let test = src
        .test
        .map(|p| match read_test {
            Some(rt) if is_archive(p) => rt(p),
            _ => read(p),
        })
        .transpose()?;
    Ok((train, valid, test))
}

fn is_archive(p: &Path) -> bool {
    p.is_dir() || std::fs::read(p).map(|b| b.starts_with(&[0x1f, 0x8b]) || is_tar(&b)).unwrap_or(false)
}

fn is_tar(b: &[u8]) -> bool {
    b.len() > 262 && &b[257..262] == b"ustar"
}

pub(super) fn check_classes(s: ImageSet, n: i64) -> Result<ImageSet> {
    if let Some(i) = s.labels.iter().position(|&l| l < 0 || l >= n) {
        bail!("record {}: label {} out of range 0..{}", i + 1, s.labels[i], n - 1);
    }
    Ok(s)
}

pub(super) fn check_seq_classes(s: SequenceSet, n: usize) -> Result<SequenceSet> {
    if let Some(i) = s.labels.iter().position(|&l| l < 0 || l as usize >= n) {
        bail!("record {}: label {} out of range 0..{}", i + 1, s.labels[i], n - 1);
    }
    Ok(s)
}

/// MNIST as IDX: the images file with its labels beside it (`*-images-idx3-ubyte[.gz]` ->
/// `*-labels-idx1-ubyte[.gz]`), or a tar(.gz) holding both.
pub fn read_mnist(p: &Path) -> Result<ImageSet> {
    let bytes = read_file(p)?;
    if let Some(pair) = tar_members(&bytes)? {
        let img = pair
            .iter()
            .find(|(n, _)| n.contains("images"))
            .with_context(|| format!("{}: no *images-idx3* file in the archive", p.display()))?;
        let lab = pair
            .iter()
            .find(|(n, _)| n.contains("labels"))
            .with_context(|| format!("{}: no *labels-idx1* file in the archive", p.display()))?;
        return Ok(data::idx::load_idx_pair(&img.1, &lab.1).map_err(|e| named(p, e))?);
    }
    let labels = labels_beside(p).with_context(|| {
        format!("{}: no labels file beside it (expected a name with `labels-idx1` in place of `images-idx3`)", p.display())
    })?;
    Ok(data::idx::load_idx_pair(&bytes, &read_file(&labels)?).map_err(|e| named(p, e))?)
}

/// The IDX labels file beside an images file (`images-idx3` -> `labels-idx1` in its name).
pub fn labels_beside(p: &Path) -> Option<PathBuf> {
    let name = p.file_name()?.to_string_lossy();
    let candidate = p.with_file_name(name.replace("images-idx3", "labels-idx1").replace("images", "labels"));
    (candidate != p && candidate.exists()).then_some(candidate)
}

/// The files of a tar or tar.gz archive, or None when the bytes are not one.
fn tar_members(bytes: &[u8]) -> Result<Option<Vec<(String, Vec<u8>)>>> {
    let raw = if bytes.starts_with(&[0x1f, 0x8b]) {
        data::read_inflated(flate2::read::GzDecoder::new(bytes), 0, "tar.gz data")?
    } else {
        bytes.to_vec()
    };
    if !is_tar(&raw) {
        return Ok(None);
    }
    let mut out = Vec::new();
    for entry in tar::Archive::new(&raw[..]).entries()? {
        let mut e = entry?;
        if e.header().entry_type().is_file() {
            let name = e.path()?.to_string_lossy().to_string();
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut buf)?;
            out.push((name, buf));
        }
    }
    Ok(Some(out))
}

pub(super) fn read_cifar(p: &Path, split: CifarSplit) -> Result<ImageSet> {
    let set = if p.is_dir() {
        data::cifar::read_cifar10_dir(p, split)
    } else {
        let bytes = read_file(p)?;
        if bytes.starts_with(&[0x1f, 0x8b]) {
            data::cifar::read_cifar10_targz(&bytes, split)
        } else {
            data::cifar::read_cifar10_bin(&bytes)
        }
    };
    set.map_err(|e| named(p, e))
}

/// ITU-R 601 luma, as torchvision's Grayscale.
pub(super) fn greyscale(s: ImageSet) -> ImageSet {
    let pixels = s
        .pixels
        .chunks_exact(3)
        .map(|c| (0.299 * c[0] as f64 + 0.587 * c[1] as f64 + 0.114 * c[2] as f64).round().min(255.0) as u8)
        .collect();
    ImageSet { channels: 1, pixels, ..s }
}

pub(super) fn image_split(s: ImageSet, t: &ImageTransform) -> Split {
    let x = Tensor::from_slice(&s.pixels).view([s.len() as i64, s.height as i64, s.width as i64, s.channels as i64]).to_kind(Kind::Float)
        / 255.0;
    Split { features: Features::Images { x, transform: t.clone() }, targets: Tensor::from_slice(&s.labels) }
}

/// Right-padded [N, Lmax] ids with their lengths.
pub(super) fn seq_split(s: &SequenceSet) -> Split {
    let n = s.len();
    let lmax = s.max_sequence_len().max(1);
    let mut ids = vec![0i64; n * lmax];
    let mut lengths = Vec::with_capacity(n);
    for i in 0..n {
        let seq = s.sequence(i);
        ids[i * lmax..i * lmax + seq.len()].copy_from_slice(seq);
        lengths.push(seq.len() as i64);
    }
    let x = Tensor::from_slice(&ids).view([n as i64, lmax as i64]);
    Split { features: Features::Tokens { x, lengths: Some(Tensor::from_slice(&lengths)) }, targets: Tensor::from_slice(&s.labels) }
}

/// A file's bytes and the format detected in them (by content, then name).
pub(super) fn read_detected(p: &Path) -> Result<(Vec<u8>, data::Format)> {
    let bytes = read_file(p)?;
    let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let format = data::detect_format(&name, &bytes).map_err(|e| named(p, e))?;
    Ok((bytes, format))
}

pub(super) fn read_records(p: &Path, spec: &RecordSpec) -> Result<RecordSet> {
    let (bytes, format) = read_detected(p)?;
    let set = match format {
        data::Format::Jsonl => data::records::read_jsonl(&bytes, spec),
        data::Format::Npz => data::records::read_npz(&bytes, spec),
        data::Format::Safetensors => data::records::read_safetensors(&bytes, spec),
        data::Format::Csv => data::records::read_csv(&bytes, spec),
        data::Format::Ts => data::ts::read_ts(&bytes, spec),
        data::Format::Parquet => data::parquet::read_parquet(&bytes, spec),
        other => {
            bail!(
                "{}: a {} file cannot hold records for this task (JSONL, CSV, .ts, Parquet, npz or safetensors)",
                p.display(),
                other.name()
            )
        }
    };
    set.map_err(|e| named(p, e))
}

/// Records as a padded token split, cut to `max_len` tokens; returns the split and how many were cut.
pub(super) fn record_split(r: &RecordSet, max_len: usize) -> Result<(Split, usize)> {
    let n = r.len();
    let dim = r.values_per_token();
    let lens: Vec<usize> = (0..n).map(|i| r.token_count(i).min(max_len)).collect();
    let truncated = (0..n).filter(|&i| r.token_count(i) > max_len).count();
    let lmax = lens.iter().copied().max().unwrap_or(1).max(1);
    // Every record is padded to the longest: one long record among many short ones multiplies the values.
    let padded_values = n.saturating_mul(lmax).saturating_mul(dim);
    if padded_values > MAX_SPLIT_VALUES {
        bail!(
            "{n} records padded to the longest ({lmax} tokens of {dim} values) make {padded_values} values, at most {MAX_SPLIT_VALUES}: \
             set max_len, or split the long records"
        );
    }
    let padded = lens.iter().any(|&l| l != lmax);
    let lengths = padded.then(|| Tensor::from_slice(&lens.iter().map(|&l| l as i64).collect::<Vec<_>>()));
    let x = match &r.inputs {
        RecordInputs::Continuous { values, .. } => {
            let mut out = vec![0f32; n * lmax * dim];
            for i in 0..n {
                let start = r.offsets[i] * dim;
                out[i * lmax * dim..(i * lmax + lens[i]) * dim].copy_from_slice(&values[start..start + lens[i] * dim]);
            }
            Tensor::from_slice(&out).view([n as i64, lmax as i64, dim as i64])
        }
        RecordInputs::Tokens { ids } => {
            let mut out = vec![0i64; n * lmax];
            for i in 0..n {
                let start = r.offsets[i];
                out[i * lmax..i * lmax + lens[i]].copy_from_slice(&ids[start..start + lens[i]]);
            }
            Tensor::from_slice(&out).view([n as i64, lmax as i64])
        }
    };
    Ok((Split { features: Features::Tokens { x, lengths }, targets: record_targets(&r.labels) }, truncated))
}

/// Values a split of padded records may hold (4 bytes each).
const MAX_SPLIT_VALUES: usize = 1 << 28;

fn record_targets(l: &RecordLabels) -> Tensor {
    match l {
        RecordLabels::Class(c) => Tensor::from_slice(c),
        RecordLabels::Bits { bits, per_sample } => Tensor::from_slice(bits).to_kind(Kind::Int64).view([-1, *per_sample as i64]),
        RecordLabels::Targets { values, per_sample } => Tensor::from_slice(values).view([-1, *per_sample as i64]),
    }
}

/// Records holding one flat H*W*C image each.
pub(super) fn record_images(r: &RecordSet, dims: [i64; 3], t: &ImageTransform) -> Result<Split> {
    let RecordInputs::Continuous { values, .. } = &r.inputs else { bail!("image records must hold numbers") };
    if let Some(i) = (0..r.len()).find(|&i| r.token_count(i) != 1) {
        bail!("record {}: expected one image of {}x{}x{} = {} values", i + 1, dims[0], dims[1], dims[2], dims.iter().product::<i64>());
    }
    let x = Tensor::from_slice(values).view([r.len() as i64, dims[0], dims[1], dims[2]]);
    Ok(Split { features: Features::Images { x, transform: t.clone() }, targets: record_targets(&r.labels) })
}

/// What an uploaded file holds: its format and sample count, after full validation.
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub format: &'static str,
    pub samples: usize,
}

/// Detects an upload's format and validates all of it; the error names the line or record.
pub fn inspect_file(filename: &str, bytes: &[u8]) -> std::result::Result<FileInfo, data::DataError> {
    use data::Format;
    let info = |format, samples| Ok(FileInfo { format, samples });
    // A plain tar can only be the MNIST pair (CIFAR-10 comes as .tar.gz, which detection knows).
    let format = if is_tar(bytes) { Format::Cifar10TarGz } else { data::detect_format(filename, bytes)? };
    match format {
        // A table's label column may be named by the task later: checked as far as can be now.
        Format::Csv => info("csv", data::records::inspect_csv(bytes)?),
        // Missing values are the task's to refuse, drop or fill: checked here as if filled.
        Format::Ts => {
            let spec = RecordSpec { missing: data::series::Missing::Interpolate, ..RecordSpec::default() };
            info("ts", data::ts::read_ts(bytes, &spec)?.len())
        }
        // Series records (forecasting): gaps are the task's to refuse or fill.
        Format::Jsonl if data::series::holds_series(bytes) => {
            info("jsonl", data::series::read_jsonl_series(bytes, data::series::Missing::Interpolate)?.series.len())
        }
        Format::Parquet if !data::parquet::holds_records(bytes) => info("parquet", data::parquet::inspect_parquet_table(bytes)?),
        Format::Jsonl | Format::Npz | Format::Safetensors | Format::Parquet => {
            let read = |spec: &RecordSpec| match format {
                Format::Jsonl => data::records::read_jsonl(bytes, spec),
                Format::Npz => data::records::read_npz(bytes, spec),
                Format::Parquet => data::parquet::read_parquet(bytes, spec),
                _ => data::records::read_safetensors(bytes, spec),
            };
            let nested = RecordSpec::default();
            let set = match read(&nested) {
                // Label arrays of different lengths may be multi-label index lists: checked as such
                // here; the task, which knows num_labels, reads them.
                Err(e) if e.message.contains("bits") || e.message.contains("bit label") => {
                    read(&RecordSpec { multilabel: Some(0), ..nested.clone() }).map_err(|_| e)
                }
                other => other,
            }?;
            let name = match format {
                Format::Jsonl => "jsonl",
                Format::Npz => "npz",
                Format::Parquet => "parquet",
                _ => "safetensors",
            };
            info(name, set.len())
        }
        Format::IdxImages | Format::IdxLabels => Err(data::DataError::file(
            "an IDX file alone holds images or labels, not both: upload a .tar or .tar.gz holding the *-images-idx3-ubyte and *-labels-idx1-ubyte pair",
        )),
        Format::Cifar10Bin => info("cifar10_bin", data::cifar::read_cifar10_bin(bytes)?.len()),
        Format::Cifar10TarGz => {
            let members = tar_members(bytes).map_err(|e| data::DataError::file(format!("{e:#}")))?.unwrap_or_default();
            if members.iter().any(|(n, _)| n.contains("images-idx3")) {
                let img = members.iter().find(|(n, _)| n.contains("images-idx3")).unwrap();
                let lab = members.iter().find(|(n, _)| n.contains("labels-idx1")).ok_or_else(|| data::DataError::file("the archive has no *-labels-idx1-ubyte file"))?;
                return info("mnist_idx", data::idx::load_idx_pair(&img.1, &lab.1)?.len());
            }
            if !bytes.starts_with(&[0x1f, 0x8b]) {
                return Err(data::DataError::file("a tar archive must hold an MNIST *-images-idx3-ubyte / *-labels-idx1-ubyte pair (CIFAR-10: upload the .tar.gz)"));
            }
            info("cifar10_tar_gz", data::cifar::read_cifar10_targz(bytes, CifarSplit::Train)?.len())
        }
        Format::ListopsTsv => info("listops_tsv", data::listops::read_tsv(bytes, usize::MAX)?.len()),
        Format::Fasta => info("fasta", data::fasta::read_fasta(bytes, usize::MAX)?.len()),
        Format::TapeJson => info("tape_json", data::fasta::read_tape_json(bytes, usize::MAX)?.len()),
    }
}
