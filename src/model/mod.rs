//! Backbones (GPT-2, BERT) behind one trait, the base-model registry, and the FPT model around them.
pub mod bert;
pub mod dropout;
pub mod fpt;
pub mod gpt2;
pub mod hub;
pub mod layers;
pub mod onednn;
pub mod params;
pub mod precision;
pub mod weights;

pub use precision::Precision;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use params::{Builder, FreezeSwitches, Param, Source};
use weights::Checkpoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Gpt2,
    Bert,
}

/// What the rest of the crate needs to know about a backbone, whatever its family.
#[derive(Debug, Clone)]
pub struct BackboneConfig {
    pub arch: Arch,
    pub hidden: i64,
    pub layers: i64,
    pub heads: i64,
    pub max_positions: i64,
    pub inner: i64,
    pub activation: String,
    pub ln_eps: f64,
    pub hidden_dropout: f64,
    pub embed_dropout: f64,
    pub attn_dropout: f64,
    pub initializer_range: f64,
}

/// A transformer fed with input embeddings [B, L, hidden]; returns the last hidden states.
pub trait Backbone: Send {
    fn config(&self) -> &BackboneConfig;
    fn config_mut(&mut self) -> &mut BackboneConfig;
    /// `key_mask`: [B, 1, 1, L] bool, true for real tokens (None: no padding).
    fn forward(&self, embeds: &Tensor, key_mask: Option<&Tensor>, train: bool) -> Tensor;
    /// The last hidden states of the read-out tokens only: [B, k, hidden]. Backbones may skip the
    /// last layer's work for every other token (its keys and values still see all of them).
    fn forward_readout(&self, embeds: &Tensor, key_mask: Option<&Tensor>, train: bool, readout: Readout<'_>) -> Tensor {
        readout.rows(&self.forward(embeds, key_mask, train))
    }
    /// The layer-norm and position tensors by Hugging Face name: the slots an adapter fills. Serving
    /// swaps in per-row stacks ([B, 1, d], [B, P, d]) to run many adapters in one batch.
    fn adapter_slots_mut(&mut self) -> Vec<(String, &mut Tensor)>;
}

/// The tokens a read-out needs.
#[derive(Clone, Copy)]
pub enum Readout<'a> {
    /// The last k tokens of every row (rows of one length): slices, with no gather and, for k = 1, no mask.
    Last(i64),
    /// Per-row positions [B, k] int64 (right-padded rows of different lengths).
    At(&'a Tensor),
}

impl Readout<'_> {
    /// The read-out rows [B, k, d] of `hs` [B, L, d].
    pub fn rows(&self, hs: &Tensor) -> Tensor {
        match *self {
            Readout::Last(k) => hs.narrow(1, hs.size()[1] - k, k),
            Readout::At(positions) => gather_rows(hs, positions),
        }
    }

    /// The read-out rows of a model with no blocks (`no_backbone`), where nothing mixes the
    /// tokens: each row plus the mean of its sequence's tokens (`key_mask` [B, 1, 1, L] marks the
    /// real ones), so that the head sees the whole input, as the head of Tan et al.'s ablation does.
    pub fn pooled_rows(&self, hs: &Tensor, key_mask: Option<&Tensor>) -> Tensor {
        let (b, l) = (hs.size()[0], hs.size()[1]);
        let mean = match key_mask {
            Some(m) => {
                let w = m.view([b, l, 1]).to_kind(hs.kind());
                (hs * &w).sum_dim_intlist([1i64].as_slice(), true, hs.kind())
                    / w.sum_dim_intlist([1i64].as_slice(), true, hs.kind()).clamp_min(1.0)
            }
            None => hs.mean_dim([1i64].as_slice(), true, hs.kind()),
        };
        self.rows(hs) + mean
    }

    /// Causal attention of the read-out queries over `l` keys (position p sees keys 0..=p), as a
    /// [B or 1, 1, k, l] bool mask; None when no key is in any query's future (the last token alone).
    pub fn causal_mask(&self, l: i64, device: Device) -> Option<Tensor> {
        let positions = match *self {
            Readout::Last(1) => return None,
            Readout::Last(k) => Tensor::arange_start(l - k, l, (Kind::Int64, device)).unsqueeze(0),
            Readout::At(p) => p.shallow_clone(),
        };
        let keys = Tensor::arange(l, (Kind::Int64, device)).view([1, 1, l]);
        Some(keys.le_tensor(&positions.unsqueeze(-1)).unsqueeze(1))
    }
}

/// Rows `positions` ([B, k]) of `hs` ([B, L, H]): [B, k, H].
fn gather_rows(hs: &Tensor, positions: &Tensor) -> Tensor {
    let (b, k) = (positions.size()[0], positions.size()[1]);
    let h = *hs.size().last().unwrap();
    hs.gather(1, &positions.unsqueeze(-1).expand([b, k, h], false), false)
}

/// A base model on disk: a Hugging Face checkpoint folder (`config.json` + `model.safetensors`).
#[derive(Debug, Clone)]
pub struct BaseModel {
    pub name: String,
    pub dir: PathBuf,
    pub arch: Arch,
    /// Found by the command line (a folder it was given, the models folder or the hub cache): an
    /// adapter records the folder, so that eval and predict find it again wherever they run. The
    /// service names base models only, and its adapters keep its folders to themselves.
    pub record_path: bool,
    config: serde_json::Value,
}

impl BaseModel {
    pub fn open(name: &str, dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
        let config: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", cfg_path.display()))?;
        let arch = match config.get("model_type").and_then(|v| v.as_str()) {
            Some("gpt2") => Arch::Gpt2,
            Some("bert") => Arch::Bert,
            Some(other) => bail!("{}: model_type `{other}` is not supported (gpt2 or bert)", cfg_path.display()),
            None => bail!("{}: no model_type", cfg_path.display()),
        };
        if !dir.join("model.safetensors").exists() {
            bail!("{}: no model.safetensors beside config.json", dir.display());
        }
        Ok(Self { name: name.to_string(), dir: dir.to_path_buf(), arch, record_path: false, config })
    }

    pub fn weights_path(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }

    /// sha256 of the weights file, computed once per process and path.
    pub fn sha256(&self) -> Result<String> {
        static CACHE: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);
        let path = std::fs::canonicalize(self.weights_path())?;
        if let Some(h) = CACHE.lock().unwrap().get_or_insert_with(HashMap::new).get(&path) {
            return Ok(h.clone());
        }
        let h = crate::fsutil::sha256_file(&path)?;
        CACHE.lock().unwrap().get_or_insert_with(HashMap::new).insert(path, h.clone());
        Ok(h)
    }

    pub fn backbone_config(&self) -> Result<BackboneConfig> {
        match self.arch {
            Arch::Gpt2 => serde_json::from_value::<gpt2::Gpt2Config>(self.config.clone())?.backbone_config(),
            Arch::Bert => serde_json::from_value::<bert::BertConfig>(self.config.clone())?.backbone_config(),
        }
    }

    /// Builds the backbone, pretrained or with transformers' random init (seeded by the caller).
    pub fn build(&self, switches: &FreezeSwitches, device: Device, frozen_kind: Option<Kind>) -> Result<(Box<dyn Backbone>, Vec<Param>)> {
        let mut cfg = self.backbone_config()?;
        if switches.no_backbone {
            cfg.layers = 0; // the embeddings (positions, their layer norm) and no block
        }
        let ck;
        let source = if switches.pretrained {
            ck = Checkpoint::open(&self.weights_path(), &["transformer.", "bert."])?;
            Source::Checkpoint(&ck)
        } else {
            Source::Random
        };
        let mut b = Builder::new(source, device, *switches);
        b.frozen_kind = frozen_kind;
        let backbone: Box<dyn Backbone> = match self.arch {
            Arch::Gpt2 => Box::new(gpt2::Gpt2::build(cfg, &mut b)?),
            Arch::Bert => {
                let bc: bert::BertConfig = serde_json::from_value(self.config.clone())?;
                Box::new(bert::Bert::build(cfg, bc.type_vocab_size, &mut b)?)
            }
        };
        Ok((backbone, b.params))
    }
}

/// The base models this process can use: subfolders of the models folder, then the Hugging Face
/// hub cache (and a download when online) for the GPT-2 family.
#[derive(Debug, Clone)]
pub struct ModelRegistry {
    pub models_dir: PathBuf,
    lookup: Lookup,
}

/// Where a base model may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// The command line, on the operator's own machine: names, checkpoint-folder paths, the hub.
    Anywhere,
    /// A service's clients: names of the models folder only; hub names (cache, then download)
    /// only when the operator allows downloads.
    Names { hub: bool },
}

impl ModelRegistry {
    /// The command line's registry: a name, a checkpoint folder, or a hub name.
    pub fn new(models_dir: impl Into<PathBuf>) -> Self {
        Self { models_dir: models_dir.into(), lookup: Lookup::Anywhere }
    }

    /// A service's registry: clients name base models of the models folder and nothing else (no
    /// path reaches another folder, and a missing name reads like any other), plus the GPT-2
    /// family from the hub when `hub` (off by default: a download inside a request).
    pub fn for_clients(models_dir: impl Into<PathBuf>, hub: bool) -> Self {
        Self { models_dir: models_dir.into(), lookup: Lookup::Names { hub } }
    }

    /// Every checkpoint folder directly under the models folder.
    pub fn list(&self) -> Vec<BaseModel> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.models_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Ok(m) = BaseModel::open(&name, &e.path()) {
                    out.push(m);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// A base model by name (a models-folder entry or a hub name) or by checkpoint-folder path.
    pub fn resolve(&self, name_or_path: &str) -> Result<BaseModel> {
        if let Lookup::Names { hub } = self.lookup {
            return self.resolve_name(name_or_path, hub);
        }
        Ok(BaseModel { record_path: true, ..self.resolve_anywhere(name_or_path)? })
    }

    fn resolve_anywhere(&self, name_or_path: &str) -> Result<BaseModel> {
        if !is_plain_name(name_or_path) {
            let p = Path::new(name_or_path);
            if p.is_dir() {
                let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| name_or_path.to_string());
                return BaseModel::open(&name, p);
            }
        }
        if is_plain_name(name_or_path) {
            let local = self.models_dir.join(name_or_path);
            if local.join("config.json").exists() {
                return BaseModel::open(name_or_path, &local);
            }
        }
        if let Some(dir) = hub::find_or_download(name_or_path)? {
            return BaseModel::open(name_or_path, &dir);
        }
        bail!(
            "base model `{name_or_path}` not found: put its config.json and model.safetensors in {}/{name_or_path}/ \
             (or pass a checkpoint folder path){}",
            self.models_dir.display(),
            if hub::is_hub_model(name_or_path) { ", or have it in the Hugging Face hub cache" } else { "" }
        )
    }
}

impl ModelRegistry {
    fn resolve_name(&self, name: &str, hub: bool) -> Result<BaseModel> {
        let not_found = || {
            anyhow::anyhow!(
                "base model `{}` is not one of this server's base models (GET /v1/models lists them){}",
                name.chars().take(80).collect::<String>(),
                if hub::is_hub_model(name) { "; hub downloads are off (--allow-downloads)" } else { "" }
            )
        };
        if !is_plain_name(name) || name.len() > 128 {
            return Err(not_found());
        }
        let local = self.models_dir.join(name);
        if local.join("config.json").exists() {
            return BaseModel::open(name, &local);
        }
        if hub && hub::is_hub_model(name) {
            if let Some(dir) = hub::find_or_download(name)? {
                return BaseModel::open(name, &dir);
            }
        }
        Err(not_found())
    }
}

/// A name with no path separators or dots-only components: safe to join under the models folder.
pub fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// `cuda` when present, CPU otherwise; `cpu`, `cuda`, `cuda:N` to force.
pub fn parse_device(s: &str) -> Result<Device> {
    Ok(match s {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" => {
            if !tch::Cuda::is_available() {
                bail!("--device cuda: no CUDA device is available");
            }
            Device::Cuda(0)
        }
        s if s.starts_with("cuda:") => Device::Cuda(s[5..].parse().with_context(|| format!("bad device `{s}`"))?),
        s => bail!("unknown device `{s}` (auto, cpu, cuda, cuda:N)"),
    })
}

/// The text of a caught panic as a client may read it: a libtorch error's message without the
/// C++ frames (and the server's paths in them) that follow it, at most 400 characters.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied()).unwrap_or("a panic");
    let text = text.strip_prefix("called `Result::unwrap()` on an `Err` value: ").unwrap_or(text);
    let text = text.strip_prefix("Torch(\"").unwrap_or(text);
    let text = text.split("\nException raised from").next().unwrap_or(text).split("\\nException raised from").next().unwrap_or(text);
    text.chars().take(400).collect()
}

/// Seeds torch's process-wide generator and keeps it to this thread until the guard drops: draws
/// made meanwhile cannot interleave with those of another thread that seeds it this way
/// (concurrent jobs, parallel tests). Hold it only around draws: it serialises them.
pub fn seed_torch(seed: u64) -> MutexGuard<'static, ()> {
    static GENERATOR: Mutex<()> = Mutex::new(());
    let guard = GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed as i64);
    guard
}

/// `draw()` with torch's generator seeded and held (see [`seed_torch`]). Tests draw their random
/// inputs this way too: an unheld draw on one thread could land inside another's seeded run.
pub fn seeded<T>(seed: u64, draw: impl FnOnce() -> T) -> T {
    let _draws = seed_torch(seed);
    draw()
}

/// Writes a checkpoint folder (`config.json` + `model.safetensors`, Hugging Face names and layouts)
/// with transformers' random init: tiny backbones for tests, real shapes for benchmarks.
pub fn write_random_checkpoint(dir: &Path, config: &serde_json::Value, seed: u64) -> Result<BaseModel> {
    std::fs::create_dir_all(dir)?;
    crate::fsutil::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(config)?.as_bytes())?;
    // A placeholder lets BaseModel::open read the config before the weights exist.
    let weights = dir.join("model.safetensors");
    if !weights.exists() {
        std::fs::write(&weights, b"")?;
    }
    let base = BaseModel::open(&dir.file_name().unwrap_or_default().to_string_lossy(), dir)?;
    let switches = FreezeSwitches { pretrained: false, ..FreezeSwitches::default() };
    let (_, params) = seeded(seed, || base.build(&switches, Device::Cpu, None))?;
    let tensors: Vec<(String, Tensor)> = params.iter().map(|p| (p.name.clone(), p.checkpoint_tensor())).collect();
    weights::write_safetensors(&weights, &tensors, HashMap::from([("format".to_string(), "pt".to_string())]))?;
    Ok(base)
}

/// A GPT-2 config.json with the given shape (transformers' other defaults).
pub fn gpt2_config(layers: i64, hidden: i64, heads: i64, positions: i64) -> serde_json::Value {
    serde_json::json!({"model_type": "gpt2", "n_layer": layers, "n_embd": hidden, "n_head": heads, "n_positions": positions, "vocab_size": 50257})
}

/// A BERT config.json with the given shape.
pub fn bert_config(layers: i64, hidden: i64, heads: i64, inner: i64, positions: i64) -> serde_json::Value {
    serde_json::json!({"model_type": "bert", "num_hidden_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
        "intermediate_size": inner, "max_position_embeddings": positions, "vocab_size": 30522, "type_vocab_size": 2, "hidden_act": "gelu"})
}
