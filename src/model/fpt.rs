//! The FPT model: a new input layer, a frozen backbone with trainable layer norms and positions,
//! and an output head on the read-out token(s); saving and loading its adapter.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::layers::Dense;
use super::params::{FreezeSwitches, Group, Param};
use super::weights::{read_safetensors, write_safetensors};
use super::{Arch, Backbone, BaseModel, ModelRegistry, Readout};

/// The adapter format written. `/2` adds `task_state` (what the task fitted on its training split);
/// `/1` adapters read as having fitted nothing.
pub const ADAPTER_FORMAT: &str = "fpt-adapter/2";
/// An ensemble's: `/2` with `ensemble_members` members, the first under the tensors' own names,
/// member `m` under `member{m}.` before them (see [`write_ensemble`]). Readers of `/2` refuse it
/// rather than answer as its first member.
pub const ENSEMBLE_FORMAT: &str = "fpt-adapter/3";
const READABLE_FORMATS: [&str; 3] = ["fpt-adapter/1", ADAPTER_FORMAT, ENSEMBLE_FORMAT];
/// Most members an ensemble may have: each costs a pass of the backbone per prediction.
pub const MAX_ENSEMBLE_MEMBERS: usize = 8;

/// What feeds the input layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InputKind {
    /// Tokens of `dim` real values: `Linear(dim -> hidden)`.
    Continuous { dim: i64 },
    /// Token ids below `vocab`: `Embedding(vocab, hidden)`.
    Tokens { vocab: i64 },
}

/// The task-dependent shapes of the adapter's new layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadShape {
    pub input: InputKind,
    /// Logits per read-out token.
    pub output_dim: i64,
    /// How many last tokens are read out (1 for classification, k for bit tasks).
    pub readout_tokens: i64,
}

enum InputLayer {
    Linear(Dense),
    Embedding(Tensor),
}

/// Everything needed to build a fresh model.
pub struct ModelSpec<'a> {
    pub base: &'a BaseModel,
    pub shape: HeadShape,
    pub switches: FreezeSwitches,
    pub task: serde_json::Value,
    pub device: Device,
    /// Seeds the new layers (and the backbone when not pretrained).
    pub seed: u64,
    /// Frozen matmul weights held in this dtype (bf16), trained tensors stay fp32.
    pub frozen_kind: Option<Kind>,
}

pub struct FptModel {
    pub base_name: String,
    pub base_sha256: String,
    /// The base model's folder, when the command line found it (see [`BaseModel::record_path`]).
    pub base_path: Option<PathBuf>,
    pub arch: Arch,
    pub backbone: Box<dyn Backbone>,
    input: InputLayer,
    output: Dense,
    pub shape: HeadShape,
    pub switches: FreezeSwitches,
    pub task: serde_json::Value,
    /// What the task fitted on its training split (`crate::tasks::Fitted`), carried in the adapter.
    pub task_state: serde_json::Value,
    pub init_seed: u64,
    pub device: Device,
    /// Every parameter, backbone and new layers, with its Hugging Face (or `input.*`/`output.*`) name.
    pub params: Vec<Param>,
    /// An ensemble's members, each its trained tensors by index in `params` (in their layout); the
    /// parameters hold the first. Empty for a single adapter.
    members: Vec<Vec<(usize, Tensor)>>,
}

/// Parameter counts, including the paper's convention (its Table 6 footnote: output weight, input
/// layer, the blocks' layer norms without `ln_f`, and only the used position rows).
#[derive(Debug, Clone, Serialize)]
pub struct ParamReport {
    pub total: i64,
    pub trained: i64,
    pub trained_tensors: usize,
    pub frozen: i64,
    pub trained_fraction: f64,
}

/// The paper's count of trained parameters, from shapes alone.
pub fn paper_param_count(hidden: i64, layers: i64, input_dim: i64, output_dim: i64, seq_len: i64) -> i64 {
    let output = hidden * output_dim;
    let input = input_dim * hidden + hidden;
    let ln = layers * 2 * 2 * hidden;
    let positions = seq_len * hidden;
    output + input + ln + positions
}

/// torch.nn.init.orthogonal_ for a [rows, cols] weight, scaled by `gain`.
fn orthogonal(rows: i64, cols: i64, gain: f64) -> Tensor {
    let flat = Tensor::randn([rows, cols], (Kind::Float, Device::Cpu));
    let a = if rows < cols { flat.tr() } else { flat };
    let (q, r) = Tensor::linalg_qr(&a, "reduced");
    let q = q * r.diagonal(0, 0, 1).sign();
    let q = if rows < cols { q.tr() } else { q };
    q.contiguous() * gain
}

/// nn.Linear's default init: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
fn torch_linear_init(d_in: i64, d_out: i64) -> (Tensor, Tensor) {
    let bound = 1.0 / (d_in as f64).sqrt();
    let w = Tensor::zeros([d_out, d_in], (Kind::Float, Device::Cpu)).uniform_(-bound, bound);
    let b = Tensor::zeros([d_out], (Kind::Float, Device::Cpu)).uniform_(-bound, bound);
    (w, b)
}

impl FptModel {
    pub fn new(spec: ModelSpec<'_>) -> Result<Self> {
        Self::build(spec, None)
    }

    /// The model of an ensemble's later member: its backbone (a random init too) is `spec.seed`'s,
    /// the run's, which the ensemble's adapter records and is loaded on; its new layers are drawn
    /// from `layers_seed`, its own.
    pub fn member(spec: ModelSpec<'_>, layers_seed: u64) -> Result<Self> {
        Self::build(spec, Some(layers_seed))
    }

    fn build(spec: ModelSpec<'_>, layers_seed: Option<u64>) -> Result<Self> {
        // A random-init backbone draws from the seeded generator; a pretrained one is read (and
        // packed) without holding it, and the new layers draw the same values either way.
        let early = (!spec.switches.pretrained).then(|| super::seed_torch(spec.seed));
        let (backbone, mut params) = spec.base.build(&spec.switches, spec.device, spec.frozen_kind)?;
        let draws = match (early, layers_seed) {
            (Some(drawing), None) => drawing,
            (early, layers) => {
                drop(early);
                super::seed_torch(layers.unwrap_or(spec.seed))
            }
        };
        let hidden = backbone.config().hidden;
        let dev = spec.device;
        let input = match spec.shape.input {
            InputKind::Continuous { dim } => {
                let w = orthogonal(hidden, dim, 1.41).to_device(dev);
                let b = Tensor::zeros([hidden], (Kind::Float, dev));
                params.push(new_param("input.weight", Group::Input, &w));
                params.push(new_param("input.bias", Group::Input, &b));
                InputLayer::Linear(Dense::new(w, b))
            }
            InputKind::Tokens { vocab } => {
                let e = Tensor::randn([vocab, hidden], (Kind::Float, Device::Cpu)).to_device(dev);
                params.push(new_param("input.embedding", Group::Input, &e));
                InputLayer::Embedding(e)
            }
        };
        let (w, b) = torch_linear_init(hidden, spec.shape.output_dim);
        let output = Dense::new(w.to_device(dev), b.to_device(dev));
        params.push(new_param("output.weight", Group::Output, &output.weight));
        params.push(new_param("output.bias", Group::Output, &output.bias));
        drop(draws);
        let base_sha256 = if spec.switches.pretrained { spec.base.sha256()? } else { String::new() };
        let model = Self {
            base_name: spec.base.name.clone(),
            base_sha256,
            base_path: spec.base.record_path.then(|| std::fs::canonicalize(&spec.base.dir).unwrap_or_else(|_| spec.base.dir.clone())),
            arch: spec.base.arch,
            backbone,
            input,
            output,
            shape: spec.shape,
            switches: spec.switches,
            task: spec.task,
            task_state: serde_json::Value::Object(Default::default()),
            init_seed: spec.seed,
            device: dev,
            params,
            members: Vec::new(),
        };
        for p in &model.params {
            if model.switches.trains(p.group) {
                let _ = p.tensor.set_requires_grad(true);
            }
        }
        Ok(model)
    }

    /// Sets what the task fitted on its training split, for the adapter to carry.
    pub fn with_task_state(mut self, state: serde_json::Value) -> Self {
        self.task_state = state;
        self
    }

    /// Sets the backbone's dropouts (hidden, attention, embeddings) to `p`, when given.
    pub fn with_backbone_dropout(mut self, p: Option<f64>) -> Self {
        if let Some(p) = p {
            let c = self.backbone.config_mut();
            (c.hidden_dropout, c.attn_dropout, c.embed_dropout) = (p, p, p);
        }
        self
    }

    pub fn hidden(&self) -> i64 {
        self.backbone.config().hidden
    }

    pub fn max_positions(&self) -> i64 {
        self.backbone.config().max_positions
    }

    /// The parameters the optimiser updates.
    pub fn trained(&self) -> impl Iterator<Item = &Param> {
        self.params.iter().filter(|p| self.switches.trains(p.group))
    }

    /// Logits [B, k, output_dim] for `inputs` ([B, L, D] float or [B, L] int64 ids); `lengths`
    /// ([B] int64) when rows are right-padded.
    pub fn forward(&self, inputs: &Tensor, lengths: Option<&Tensor>, train: bool) -> Tensor {
        let mut h = match &self.input {
            InputLayer::Linear(d) => d.forward(inputs),
            InputLayer::Embedding(e) => Tensor::embedding(e, inputs, -1, false, false),
        };
        if train {
            h = super::dropout::dropout(&h, 0.1);
        }
        let (b, l) = (h.size()[0], h.size()[1]);
        let key_mask = lengths.map(|len| {
            let pos = Tensor::arange(l, (Kind::Int64, self.device)).unsqueeze(0);
            pos.lt_tensor(&len.unsqueeze(1)).view([b, 1, 1, l])
        });
        let k = self.shape.readout_tokens;
        let positions = lengths.map(|len| len.unsqueeze(1) - k + Tensor::arange(k, (Kind::Int64, self.device)).unsqueeze(0));
        let readout = positions.as_ref().map_or(Readout::Last(k), Readout::At);
        let read = self.backbone.forward_readout(&h, key_mask.as_ref(), train, readout);
        self.output.forward(&read)
    }

    /// Logits [B, k, out] of each member (no dropout, no gradient): the adapter's own, or an
    /// ensemble's members' in turn in the same parameters, for the task to combine (see
    /// `Objective::answer`).
    pub fn member_logits(&self, inputs: &Tensor, lengths: Option<&Tensor>) -> Vec<Tensor> {
        tch::no_grad(|| {
            if self.members.is_empty() {
                return vec![self.forward(inputs, lengths, false)];
            }
            let logits = self
                .members
                .iter()
                .map(|m| {
                    self.put(m);
                    self.forward(inputs, lengths, false)
                })
                .collect();
            self.put(&self.members[0]);
            logits
        })
    }

    pub fn param_report(&self) -> ParamReport {
        let total: i64 = self.params.iter().map(|p| p.tensor.numel() as i64).sum();
        let trained: i64 = self.trained().map(|p| p.tensor.numel() as i64).sum();
        ParamReport {
            total,
            trained,
            trained_tensors: self.trained().count(),
            frozen: total - trained,
            trained_fraction: trained as f64 / total.max(1) as f64,
        }
    }

    fn metadata(&self, extra: &HashMap<String, String>) -> HashMap<String, String> {
        let (input_kind, input_dim) = match self.shape.input {
            InputKind::Continuous { dim } => ("continuous", dim),
            InputKind::Tokens { vocab } => ("tokens", vocab),
        };
        let mut m = HashMap::from([
            ("format".to_string(), ADAPTER_FORMAT.to_string()),
            ("arch".into(), serde_json::to_value(self.arch).unwrap().as_str().unwrap().to_string()),
            ("base_model".into(), self.base_name.clone()),
            ("base_model_sha256".into(), self.base_sha256.clone()),
            ("task".into(), self.task.to_string()),
            ("task_state".into(), self.task_state.to_string()),
            ("fpt".into(), serde_json::to_string(&self.switches).unwrap()),
            ("input_kind".into(), input_kind.into()),
            ("input_dim".into(), input_dim.to_string()),
            ("output_dim".into(), self.shape.output_dim.to_string()),
            ("readout_tokens".into(), self.shape.readout_tokens.to_string()),
            ("hidden_size".into(), self.hidden().to_string()),
            ("init_seed".into(), self.init_seed.to_string()),
        ]);
        if let Some(p) = &self.base_path {
            m.insert("base_model_path".into(), p.display().to_string());
        }
        m.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        m
    }

    /// The adapter's tensors: every trained backbone tensor under its Hugging Face name (in the
    /// checkpoint's layout) plus the new input and output layers (saved even when frozen: they are
    /// not in the base model).
    pub fn adapter_tensors(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .filter(|p| self.switches.trains(p.group) || matches!(p.group, Group::Input | Group::Output))
            .map(|p| (p.name.clone(), p.checkpoint_tensor().detach().to_kind(Kind::Float)))
            .collect()
    }

    pub fn save_adapter(&self, path: &Path, extra_metadata: &HashMap<String, String>) -> Result<()> {
        write_safetensors(path, &self.adapter_tensors(), self.metadata(extra_metadata))
    }

    /// Rebuilds the model an adapter was trained as: its base model (checked by hash) with the
    /// adapter's tensors in place.
    pub fn load_adapter(path: &Path, registry: &ModelRegistry, device: Device, frozen_kind: Option<Kind>) -> Result<Self> {
        Self::load_adapter_on(path, None, registry, device, frozen_kind)
    }

    /// Loads an adapter on its base model: `base` when given (a name or a folder), else the one
    /// the adapter names, looked up by name and then at the folder it recorded; the first whose
    /// weights are the adapter's (by sha256) is taken.
    pub fn load_adapter_on(
        path: &Path,
        base: Option<&str>,
        registry: &ModelRegistry,
        device: Device,
        frozen_kind: Option<Kind>,
    ) -> Result<Self> {
        let (tensors, meta) = read_safetensors(path, device)?;
        let meta = AdapterMeta::parse(&meta).with_context(|| format!("{} is not an fpt adapter", path.display()))?;
        let base = find_base(&meta, base, registry).with_context(|| format!("adapter {} needs its base model", path.display()))?;
        let mut model = Self::new(ModelSpec {
            base: &base,
            shape: meta.shape,
            switches: meta.switches,
            task: meta.task.clone(),
            device,
            seed: meta.init_seed,
            frozen_kind,
        })?
        .with_task_state(meta.task_state);
        let fits = |e: anyhow::Error| e.context(format!("adapter {} does not fit base model `{}`", path.display(), base.name));
        model.take(tensors, meta.members).map_err(fits)?;
        Ok(model)
    }

    /// Makes this model the ensemble adapter at `path` (written by [`write_ensemble`] from this
    /// model's members): it answers with its members from now on.
    pub fn load_ensemble(&mut self, path: &Path) -> Result<()> {
        let (tensors, meta) = read_safetensors(path, self.device)?;
        let meta = AdapterMeta::parse(&meta).with_context(|| format!("{} is not an fpt adapter", path.display()))?;
        self.take(tensors, meta.members).with_context(|| format!("ensemble {} does not fit its model", path.display()))
    }

    /// Puts an adapter's tensors in place: a single adapter's, or an ensemble's `members`.
    fn take(&mut self, tensors: Vec<(String, Tensor)>, members: usize) -> Result<()> {
        if members == 1 {
            return self.assign(&tensors);
        }
        self.members = split_members(tensors, members)?.iter().map(|m| self.resolve(m)).collect::<Result<_>>()?;
        self.put(&self.members[0]);
        Ok(())
    }

    /// Copies named tensors (checkpoint layout) into the model's parameters.
    pub fn assign(&self, tensors: &[(String, Tensor)]) -> Result<()> {
        let resolved = self.resolve(tensors)?;
        self.put(&resolved);
        Ok(())
    }

    /// Named tensors (checkpoint layout) as values of the parameters they name, checked against
    /// their shapes.
    fn resolve(&self, tensors: &[(String, Tensor)]) -> Result<Vec<(usize, Tensor)>> {
        let by_name: HashMap<&str, usize> = self.params.iter().enumerate().map(|(i, p)| (p.name.as_str(), i)).collect();
        tensors
            .iter()
            .map(|(name, t)| {
                let &i = by_name.get(name.as_str()).with_context(|| format!("tensor `{name}` is not a parameter of this model"))?;
                let p = &self.params[i];
                let want = p.checkpoint_tensor().size();
                if t.size() != want {
                    bail!("tensor `{name}` has shape {:?}, the model's is {:?}", t.size(), want);
                }
                let src = if p.transposed { t.tr() } else { t.shallow_clone() };
                Ok((i, src.to_kind(p.tensor.kind()).to_device(self.device)))
            })
            .collect()
    }

    fn put(&self, values: &[(usize, Tensor)]) {
        tch::no_grad(|| {
            for (i, t) in values {
                self.params[*i].tensor.shallow_clone().copy_(t);
            }
        });
    }
}

/// The prefix of member `m`'s tensors in an ensemble's file (none for the first).
fn member_prefix(m: usize) -> String {
    if m == 0 {
        String::new()
    } else {
        format!("member{m}.")
    }
}

/// An ensemble file's tensors, by member, under their own names.
fn split_members(tensors: Vec<(String, Tensor)>, members: usize) -> Result<Vec<Vec<(String, Tensor)>>> {
    let mut out: Vec<Vec<(String, Tensor)>> = (0..members).map(|_| Vec::new()).collect();
    for (name, t) in tensors {
        let m = (1..members).find(|&m| name.starts_with(&member_prefix(m))).unwrap_or(0);
        out[m].push((name[member_prefix(m).len()..].to_string(), t));
    }
    // Every member sets the same tensors, or one member's values would stay in place for the next.
    let names = |m: &[(String, Tensor)]| m.iter().map(|(n, _)| n.clone()).collect::<std::collections::BTreeSet<_>>();
    let first = names(&out[0]);
    if let Some(m) = (1..members).find(|&m| names(&out[m]) != first || out[m].len() != out[0].len()) {
        bail!("ensemble member {m} does not hold the tensors its first member does");
    }
    Ok(out)
}

/// Writes the adapters `members` (trained on one task, one data split and one backbone, their
/// new layers and batches from the seeds `seeds`) as one ensemble adapter at `path`: the first
/// member's metadata, with the format [`ENSEMBLE_FORMAT`], `ensemble_members` and
/// `ensemble_seeds`.
pub fn write_ensemble(path: &Path, members: &[PathBuf], seeds: &[u64]) -> Result<()> {
    if !(2..=MAX_ENSEMBLE_MEMBERS).contains(&members.len()) || seeds.len() != members.len() {
        bail!("an ensemble has 2 to {MAX_ENSEMBLE_MEMBERS} members and a seed each, not {} and {}", members.len(), seeds.len());
    }
    let (mut tensors, mut metadata) = (Vec::new(), HashMap::new());
    for (m, file) in members.iter().enumerate() {
        let (ts, meta) = read_safetensors(file, Device::Cpu)?;
        let parsed = AdapterMeta::parse(&meta).with_context(|| format!("{} is not an fpt adapter", file.display()))?;
        if parsed.members > 1 {
            bail!("{} is an ensemble already", file.display());
        }
        tensors.extend(ts.into_iter().map(|(n, t)| (format!("{}{n}", member_prefix(m)), t)));
        if m == 0 {
            metadata = meta;
        }
    }
    metadata.insert("format".into(), ENSEMBLE_FORMAT.into());
    metadata.insert("ensemble_members".into(), members.len().to_string());
    metadata.insert("ensemble_seeds".into(), serde_json::to_string(seeds)?);
    write_safetensors(path, &tensors, metadata)
}

fn new_param(name: &str, group: Group, t: &Tensor) -> Param {
    Param { name: name.to_string(), group, transposed: false, tensor: t.shallow_clone() }
}

/// The base model an adapter runs on (see [`FptModel::load_adapter_on`]); the error says where it
/// looked and what each place lacked.
fn find_base(meta: &AdapterMeta, chosen: Option<&str>, registry: &ModelRegistry) -> Result<BaseModel> {
    let recorded = meta.base_path.as_ref().map(|p| p.display().to_string());
    let places: Vec<&str> = match chosen {
        Some(c) => vec![c],
        None => std::iter::once(meta.base_model.as_str()).chain(recorded.as_deref()).collect(),
    };
    let mut missed = Vec::new();
    for place in places {
        let found = registry.resolve(place).and_then(|base| {
            if meta.switches.pretrained && base.sha256()? != meta.base_sha256 {
                bail!("its weights {} have another sha256 (a different or changed backbone)", base.weights_path().display());
            }
            Ok(base)
        });
        match found {
            Ok(base) => return Ok(base),
            Err(e) => missed.push(format!("`{place}`: {e:#}")),
        }
    }
    let weights = if meta.switches.pretrained { format!(" with weights sha256 {}", meta.base_sha256) } else { String::new() };
    bail!("base model `{}`{weights} not found; tried {}. Pass --model with its folder", meta.base_model, missed.join("; and "))
}

/// An adapter file's metadata, parsed.
#[derive(Debug, Clone)]
pub struct AdapterMeta {
    pub base_model: String,
    pub base_sha256: String,
    /// The base model's folder, recorded when the command line found it.
    pub base_path: Option<PathBuf>,
    pub task: serde_json::Value,
    pub task_state: serde_json::Value,
    pub switches: FreezeSwitches,
    pub shape: HeadShape,
    pub init_seed: u64,
    /// 1, or an ensemble's members (see [`ENSEMBLE_FORMAT`]).
    pub members: usize,
}

impl AdapterMeta {
    pub fn parse(m: &HashMap<String, String>) -> Result<Self> {
        let get = |k: &str| m.get(k).cloned().with_context(|| format!("metadata has no `{k}`"));
        let format = get("format")?;
        if !READABLE_FORMATS.contains(&format.as_str()) {
            bail!("metadata format is `{format}`, expected one of {READABLE_FORMATS:?}");
        }
        let num = |k: &str| -> Result<i64> { get(k)?.parse().with_context(|| format!("metadata `{k}` is not an integer")) };
        let input = match get("input_kind")?.as_str() {
            "continuous" => InputKind::Continuous { dim: num("input_dim")? },
            "tokens" => InputKind::Tokens { vocab: num("input_dim")? },
            other => bail!("metadata input_kind `{other}` is unknown"),
        };
        Ok(Self {
            base_model: get("base_model")?,
            base_sha256: get("base_model_sha256")?,
            base_path: m.get("base_model_path").map(PathBuf::from),
            task: serde_json::from_str(&get("task")?).context("metadata `task` is not JSON")?,
            task_state: match m.get("task_state") {
                Some(t) => serde_json::from_str(t).context("metadata `task_state` is not JSON")?,
                None => serde_json::Value::Object(Default::default()),
            },
            switches: serde_json::from_str(&get("fpt")?).context("metadata `fpt` is not valid freeze switches")?,
            shape: HeadShape { input, output_dim: num("output_dim")?, readout_tokens: num("readout_tokens")? },
            init_seed: num("init_seed").unwrap_or(0) as u64,
            members: match format.as_str() {
                ENSEMBLE_FORMAT => match num("ensemble_members")? {
                    n @ 2.. if n as usize <= MAX_ENSEMBLE_MEMBERS => n as usize,
                    n => bail!("metadata ensemble_members is {n}, not within 2..={MAX_ENSEMBLE_MEMBERS}"),
                },
                _ => 1,
            },
        })
    }
}

/// An adapter's own layers read from its file, for serving beside a backbone shared with other
/// adapters: the input and output layers, and the backbone tensors it replaces (`slots`).
pub struct AdapterLayers {
    input: InputLayer,
    output: Dense,
    /// Backbone tensors by Hugging Face name, checkpoint layout.
    pub slots: Vec<(String, Tensor)>,
    pub meta: AdapterMeta,
    pub bytes: usize,
}

impl AdapterLayers {
    pub fn read(path: &Path, device: Device) -> Result<Self> {
        let (tensors, meta) = read_safetensors(path, device)?;
        let meta = AdapterMeta::parse(&meta).with_context(|| format!("{} is not an fpt adapter", path.display()))?;
        let bytes = tensors.iter().map(|(_, t)| t.numel() * 4).sum();
        let mut by_name: HashMap<String, Tensor> = tensors.into_iter().collect();
        let mut take = |n: &str| by_name.remove(n).with_context(|| format!("{}: no `{n}` tensor", path.display()));
        let input = match meta.shape.input {
            InputKind::Continuous { .. } => InputLayer::Linear(Dense::new(take("input.weight")?, take("input.bias")?)),
            InputKind::Tokens { .. } => InputLayer::Embedding(take("input.embedding")?),
        };
        let output = Dense::new(take("output.weight")?, take("output.bias")?);
        let mut slots: Vec<(String, Tensor)> = by_name.into_iter().collect();
        slots.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { input, output, slots, meta, bytes })
    }

    /// Only layer norms and positions trained: the adapter can share a batch with others.
    pub fn batchable(&self) -> bool {
        // A model without blocks is not the shared backbone's: it runs on its own, as an
        // ensemble does (its members answer one after another on its own model).
        self.meta.members == 1
            && !self.meta.switches.trains(Group::Attn)
            && !self.meta.switches.trains(Group::Ff)
            && !self.meta.switches.no_backbone
    }

    /// Input embeddings [n, L, hidden].
    pub fn embed(&self, x: &Tensor) -> Tensor {
        match &self.input {
            InputLayer::Linear(d) => d.forward(x),
            InputLayer::Embedding(e) => Tensor::embedding(e, x, -1, false, false),
        }
    }

    /// Logits [n, k, out] of read-out hidden states [n, k, hidden].
    pub fn project(&self, h: &Tensor) -> Tensor {
        self.output.forward(h)
    }
}
