//! File-backed tasks: reading a task's training/validation/test files (through `crate::data`'s
//! parsers) into in-memory splits.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

use super::images::{Augment, ImageTransform};
use super::{Data, DataInfo, DataSources, Features, Objective, Split, TaskData, TaskSpec};
use crate::data::records::{InputSpec, RecordSpec};
use crate::data::{self, cifar::CifarSplit, ImageSet, RecordInputs, RecordLabels, RecordSet, SequenceSet};
use crate::model::fpt::{HeadShape, InputKind};

pub(super) const CIFAR_MEAN: [f64; 3] = [0.4914, 0.4822, 0.4465];
pub(super) const CIFAR_STD: [f64; 3] = [0.2470, 0.2435, 0.2616];

pub(super) fn load(spec: &TaskSpec, src: &DataSources<'_>) -> Result<TaskData> {
    let positions = src.max_positions;
    let (train, valid, test, shape, truncated) = match spec {
        TaskSpec::Mnist { patch_size } => {
            let t = ImageTransform { patch: *patch_size as i64, mean: vec![0.0], std: vec![1.0], augment: None };
            let read = |p: &Path| read_mnist(p).and_then(|s| check_classes(s, 10));
            let (a, b, c) = image_splits(src, read, None)?;
            (
                image_split(a, &t),
                b.map(|s| image_split(s, &t)),
                c.map(|s| image_split(s, &t)),
                classes((patch_size * patch_size) as i64, 10),
                0,
            )
        }
        TaskSpec::Cifar10 { augment } => {
            let aug = augment.then_some(Augment { crop_padding: 4, flip: true, max_rotation_deg: 20.0 });
            let t = ImageTransform { patch: 4, mean: CIFAR_MEAN.to_vec(), std: CIFAR_STD.to_vec(), augment: aug };
            let plain = ImageTransform { augment: None, ..t.clone() };
            let (a, b, c) = image_splits(src, |p| read_cifar(p, CifarSplit::Train), Some(&|p: &Path| read_cifar(p, CifarSplit::Test)))?;
            (image_split(a, &t), b.map(|s| image_split(s, &plain)), c.map(|s| image_split(s, &plain)), classes(48, 10), 0)
        }
        TaskSpec::Cifar10Lra {} => {
            if positions < 1024 {
                bail!("task `cifar10_lra` needs 1024 tokens, the backbone has {positions} positions");
            }
            let t = ImageTransform { patch: 1, mean: vec![0.0], std: vec![1.0], augment: None };
            let grey = |p: &Path| read_cifar(p, CifarSplit::Train).map(greyscale);
            let grey_test = |p: &Path| read_cifar(p, CifarSplit::Test).map(greyscale);
            let (a, b, c) = image_splits(src, grey, Some(&grey_test))?;
            (image_split(a, &t), b.map(|s| image_split(s, &t)), c.map(|s| image_split(s, &t)), classes(1, 10), 0)
        }
        TaskSpec::Listops { max_len, generate, n_train, n_valid, .. } => {
            let max_len = (*max_len).min(positions);
            let vocab = data::listops::vocab_size() as i64;
            let (tr, va) = if *generate {
                let params = spec.listops_gen_params().unwrap();
                let params = data::listops::GenParams { max_length: max_len, ..params };
                let gen = |seed: u64, n: usize| -> Result<SequenceSet> {
                    let samples = data::listops::generate(seed, n, &params)?;
                    Ok(data::listops::read_tsv(data::listops::to_tsv(&samples).as_bytes(), max_len)?)
                };
                (gen(src.seed, *n_train)?, Some(gen(src.seed ^ 0xfeed, *n_valid)?))
            } else {
                let read =
                    |p: &Path| -> Result<SequenceSet> { Ok(data::listops::read_tsv(&read_file(p)?, max_len).map_err(|e| named(p, e))?) };
                (read(src.train.unwrap())?, src.valid.map(read).transpose()?)
            };
            let truncated = tr.truncated + va.as_ref().map_or(0, |v| v.truncated);
            let test = src
                .test
                .map(|p| -> Result<Split> { Ok(seq_split(&data::listops::read_tsv(&read_file(p)?, max_len).map_err(|e| named(p, e))?)) })
                .transpose()?;
            (
                seq_split(&check_seq_classes(tr, 10)?),
                va.map(|v| check_seq_classes(v, 10).map(|v| seq_split(&v))).transpose()?,
                test,
                tokens(vocab, 10),
                truncated,
            )
        }
        TaskSpec::RemoteHomology { max_len, num_classes } => {
            let max_len = (*max_len).min(positions);
            let read = |p: &Path| -> Result<SequenceSet> {
                let bytes = read_file(p)?;
                let set = if bytes.first() == Some(&b'>') {
                    data::fasta::read_fasta(&bytes, max_len)
                } else {
                    data::fasta::read_tape_json(&bytes, max_len)
                };
                check_seq_classes(set.map_err(|e| named(p, e))?, *num_classes)
            };
            let tr = read(src.train.unwrap())?;
            let va = src.valid.map(read).transpose()?;
            let te = src.test.map(read).transpose()?;
            let truncated = tr.truncated + va.as_ref().map_or(0, |v| v.truncated) + te.as_ref().map_or(0, |v| v.truncated);
            (
                seq_split(&tr),
                va.as_ref().map(seq_split),
                te.as_ref().map(seq_split),
                tokens(data::fasta::vocab_size() as i64, *num_classes as i64),
                truncated,
            )
        }
        TaskSpec::SequenceClassification { input_dim, vocab_size, num_classes, max_len } => {
            let input = match (input_dim, vocab_size) {
                (Some(d), _) => InputSpec::Continuous { token_dim: Some(*d) },
                (_, Some(v)) => InputSpec::Tokens { vocab_size: *v },
                _ => unreachable!("validated"),
            };
            let rs = RecordSpec { input, num_classes: Some(*num_classes), bits: None };
            let max_len = max_len.unwrap_or(positions).min(positions);
            let read = |p: &Path| read_records(p, &rs).map(|r| record_split(&r, max_len));
            let tr = read(src.train.unwrap())?;
            let va = src.valid.map(read).transpose()?;
            let te = src.test.map(read).transpose()?;
            let truncated = tr.1 + va.as_ref().map_or(0, |v| v.1) + te.as_ref().map_or(0, |v| v.1);
            let shape = match (input_dim, vocab_size) {
                (Some(d), _) => classes(*d as i64, *num_classes as i64),
                (_, Some(v)) => tokens(*v as i64, *num_classes as i64),
                _ => unreachable!(),
            };
            (tr.0, va.map(|v| v.0), te.map(|v| v.0), shape, truncated)
        }
        TaskSpec::ImageClassification { height, width, channels, patch_size, num_classes } => {
            let tokens_needed = (height / patch_size) * (width / patch_size);
            if tokens_needed > positions {
                bail!("task `image_classification` needs {tokens_needed} tokens, the backbone has {positions} positions");
            }
            let rs = RecordSpec {
                input: InputSpec::Continuous { token_dim: Some(height * width * channels) },
                num_classes: Some(*num_classes),
                bits: None,
            };
            let t = ImageTransform { patch: *patch_size as i64, mean: vec![0.0; *channels], std: vec![1.0; *channels], augment: None };
            let dims = [*height as i64, *width as i64, *channels as i64];
            let read = |p: &Path| read_records(p, &rs).and_then(|r| record_images(&r, dims, &t).with_context(|| p.display().to_string()));
            let tr = read(src.train.unwrap())?;
            let va = src.valid.map(read).transpose()?;
            let te = src.test.map(read).transpose()?;
            (tr, va, te, classes((patch_size * patch_size * channels) as i64, *num_classes as i64), 0)
        }
        TaskSpec::BitMemory { .. } | TaskSpec::BitXor { .. } => unreachable!("synthetic"),
    };
    let (train, valid) = match valid {
        Some(v) => (train, v),
        None => train.split_off(src.valid_fraction, src.seed)?,
    };
    let seq_len = max_tokens(&train).max(max_tokens(&valid));
    if seq_len > positions {
        bail!("task `{}` needs {seq_len} tokens, the backbone has {positions} positions", spec.name());
    }
    let info = DataInfo {
        train_samples: train.len(),
        valid_samples: valid.len(),
        test_samples: test.as_ref().map_or(0, |t| t.len()),
        seq_len,
        truncated,
    };
    Ok(TaskData {
        spec: spec.clone(),
        shape,
        objective: Objective::Classes,
        info,
        seed: src.seed,
        data: Data::Loaded { train, valid, test },
    })
}

fn classes(dim: i64, n: i64) -> HeadShape {
    HeadShape { input: InputKind::Continuous { dim }, output_dim: n, readout_tokens: 1 }
}

fn tokens(vocab: i64, n: i64) -> HeadShape {
    HeadShape { input: InputKind::Tokens { vocab }, output_dim: n, readout_tokens: 1 }
}

fn max_tokens(s: &Split) -> usize {
    match &s.features {
        Features::Tokens { x, .. } => x.size()[1] as usize,
        Features::Images { x, transform } => ((x.size()[1] / transform.patch) * (x.size()[2] / transform.patch)) as usize,
    }
}

fn read_file(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

fn named(p: &Path, e: data::DataError) -> anyhow::Error {
    anyhow::anyhow!("{}: {e}", p.display())
}

/// Train/valid/test image sets. A file that holds both splits (the CIFAR-10 archive) gives its test
/// split as validation when no validation file is named.
type ImageReader<'a> = &'a dyn Fn(&Path) -> Result<ImageSet>;

fn image_splits(
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

fn check_classes(s: ImageSet, n: i64) -> Result<ImageSet> {
    if let Some(i) = s.labels.iter().position(|&l| l < 0 || l >= n) {
        bail!("record {i}: label {} out of range 0..{}", s.labels[i], n - 1);
    }
    Ok(s)
}

fn check_seq_classes(s: SequenceSet, n: usize) -> Result<SequenceSet> {
    if let Some(i) = s.labels.iter().position(|&l| l < 0 || l as usize >= n) {
        bail!("record {i}: label {} out of range 0..{}", s.labels[i], n - 1);
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
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out).context("truncated or corrupt gzip")?;
        out
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

fn read_cifar(p: &Path, split: CifarSplit) -> Result<ImageSet> {
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
fn greyscale(s: ImageSet) -> ImageSet {
    let pixels = s
        .pixels
        .chunks_exact(3)
        .map(|c| (0.299 * c[0] as f64 + 0.587 * c[1] as f64 + 0.114 * c[2] as f64).round().min(255.0) as u8)
        .collect();
    ImageSet { channels: 1, pixels, ..s }
}

fn image_split(s: ImageSet, t: &ImageTransform) -> Split {
    let x = Tensor::from_slice(&s.pixels).view([s.len() as i64, s.height as i64, s.width as i64, s.channels as i64]).to_kind(Kind::Float)
        / 255.0;
    Split { features: Features::Images { x, transform: t.clone() }, targets: Tensor::from_slice(&s.labels) }
}

/// Right-padded [N, Lmax] ids with their lengths.
fn seq_split(s: &SequenceSet) -> Split {
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

fn read_records(p: &Path, spec: &RecordSpec) -> Result<RecordSet> {
    let bytes = read_file(p)?;
    let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let set = match data::detect_format(&name, &bytes).map_err(|e| named(p, e))? {
        data::Format::Jsonl => data::records::read_jsonl(&bytes, spec),
        data::Format::Npz => data::records::read_npz(&bytes, spec),
        data::Format::Safetensors => data::records::read_safetensors(&bytes, spec),
        other => bail!("{}: a {} file cannot hold records for this task (JSONL, npz or safetensors)", p.display(), other.name()),
    };
    set.map_err(|e| named(p, e))
}

/// Records as a padded token split, cut to `max_len` tokens; returns the split and how many were cut.
fn record_split(r: &RecordSet, max_len: usize) -> (Split, usize) {
    let n = r.len();
    let dim = r.values_per_token();
    let lens: Vec<usize> = (0..n).map(|i| r.token_count(i).min(max_len)).collect();
    let truncated = (0..n).filter(|&i| r.token_count(i) > max_len).count();
    let lmax = lens.iter().copied().max().unwrap_or(1).max(1);
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
    (Split { features: Features::Tokens { x, lengths }, targets: record_targets(&r.labels) }, truncated)
}

fn record_targets(l: &RecordLabels) -> Tensor {
    match l {
        RecordLabels::Class(c) => Tensor::from_slice(c),
        RecordLabels::Bits { bits, per_sample } => Tensor::from_slice(bits).to_kind(Kind::Int64).view([-1, *per_sample as i64]),
    }
}

/// Records holding one flat H*W*C image each.
fn record_images(r: &RecordSet, dims: [i64; 3], t: &ImageTransform) -> Result<Split> {
    let RecordInputs::Continuous { values, .. } = &r.inputs else { bail!("image records must hold numbers") };
    if let Some(i) = (0..r.len()).find(|&i| r.token_count(i) != 1) {
        bail!("record {i}: expected one image of {}x{}x{} = {} values", dims[0], dims[1], dims[2], dims.iter().product::<i64>());
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
        Format::Jsonl | Format::Npz | Format::Safetensors => {
            let read = |spec: &RecordSpec| match format {
                Format::Jsonl => data::records::read_jsonl(bytes, spec),
                Format::Npz => data::records::read_npz(bytes, spec),
                _ => data::records::read_safetensors(bytes, spec),
            };
            let nested = RecordSpec { input: InputSpec::Continuous { token_dim: None }, num_classes: None, bits: None };
            let set = match read(&nested) {
                Err(e) if e.message.contains("no token_dim") => read(&RecordSpec { input: InputSpec::Continuous { token_dim: Some(1) }, ..nested }),
                other => other,
            }?;
            let name = match format {
                Format::Jsonl => "jsonl",
                Format::Npz => "npz",
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
