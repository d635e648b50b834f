//! Reading Hugging Face safetensors checkpoints into tch tensors, by name, without loading what we skip.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

/// A memory-mapped checkpoint file: tensors are copied out one at a time, on request, so a
/// skipped table (GPT-2's `wte`) never costs memory.
pub struct Checkpoint {
    path: PathBuf,
    mmap: Mmap,
    /// Hugging Face prefixes a headed model's names (`transformer.`, `bert.`); we store the bare name.
    names: HashMap<String, String>,
}

impl Checkpoint {
    pub fn open(path: &Path, strip_prefixes: &[&str]) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // Safety: the file is opened read-only and models are not rewritten while we run.
        let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
        let st = SafeTensors::deserialize(&mmap).with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
        let mut names = HashMap::new();
        for full in st.names() {
            let bare = strip_prefixes.iter().find_map(|p| full.strip_prefix(p)).unwrap_or(full);
            names.insert(bare.to_string(), full.to_string());
        }
        drop(st);
        Ok(Self { path: path.to_path_buf(), mmap, names })
    }

    /// The tensor stored under `name` (bare, without a model-class prefix), as fp32 on `device`.
    pub fn tensor(&self, name: &str, device: Device) -> Result<Tensor> {
        let full = self.names.get(name).with_context(|| format!("{}: missing tensor `{name}`", self.path.display()))?;
        let st = SafeTensors::deserialize(&self.mmap)?;
        let view = st.tensor(full)?;
        view_to_tensor(&view, device).with_context(|| format!("{}: tensor `{name}`", self.path.display()))
    }
}

/// Converts a safetensors view to a tch tensor; floating types become fp32, integers int64.
pub fn view_to_tensor(view: &safetensors::tensor::TensorView<'_>, device: Device) -> Result<Tensor> {
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    let kind = match view.dtype() {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        other => bail!("unsupported dtype {other:?}"),
    };
    let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
    let t = if matches!(kind, Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double) {
        t.to_kind(Kind::Float)
    } else {
        t.to_kind(Kind::Int64)
    };
    Ok(t.to_device(device))
}

/// Raw bytes of a tensor, in its own dtype, for writing safetensors.
pub fn tensor_bytes(t: &Tensor) -> (Dtype, Vec<usize>, Vec<u8>) {
    let t = t.to_device(Device::Cpu).contiguous();
    let dtype = match t.kind() {
        Kind::Float => Dtype::F32,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        k => panic!("no safetensors dtype for {k:?}"),
    };
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut bytes, numel);
    (dtype, t.size().iter().map(|&d| d as usize).collect(), bytes)
}

/// Writes named tensors plus a metadata map to `path` atomically (temp file + rename), so a
/// reader never sees half a file.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)], metadata: HashMap<String, String>) -> Result<()> {
    let raw: Vec<(String, (Dtype, Vec<usize>, Vec<u8>))> = tensors.iter().map(|(n, t)| (n.clone(), tensor_bytes(t))).collect();
    let views = raw
        .iter()
        .map(|(n, (dtype, shape, bytes))| Ok((n.as_str(), safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)?)))
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(metadata))?;
    crate::fsutil::write_atomic(path, &bytes)
}

/// Reads every tensor and the metadata of a small safetensors file (an adapter, a fixture).
pub fn read_safetensors(path: &Path, device: Device) -> Result<(Vec<(String, Tensor)>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        out.push((name.clone(), view_to_tensor(&view, device).with_context(|| format!("{}: `{name}`", path.display()))?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}
