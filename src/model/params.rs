//! Named parameters, the freeze groups of the FPT recipe, and the builder that fills a model's
//! tensors either from a checkpoint or with transformers' random init.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::layers::Dense;
use super::weights::Checkpoint;

/// The groups the recipe's freeze switches act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Attn,
    Ff,
    Ln,
    Pos,
    Input,
    Output,
    /// Everything else in the backbone (token-type rows, BERT's pooler): always frozen.
    Other,
}

/// The six freeze switches and `pretrained`, with the reference code's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FreezeSwitches {
    pub pretrained: bool,
    pub freeze_attn: bool,
    pub freeze_ff: bool,
    pub freeze_ln: bool,
    pub freeze_pos: bool,
    pub freeze_in: bool,
    pub freeze_out: bool,
    /// No transformer blocks at all: the input layer, the positions (and their layer norm) and the
    /// head alone, the ablation of Tan et al. (2024) that asks whether the backbone earns its keep.
    /// With nothing to mix the tokens, the head reads each read-out token plus their mean.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_backbone: bool,
}

impl Default for FreezeSwitches {
    fn default() -> Self {
        Self {
            pretrained: true,
            freeze_attn: true,
            freeze_ff: true,
            freeze_ln: false,
            freeze_pos: false,
            freeze_in: false,
            freeze_out: false,
            no_backbone: false,
        }
    }
}

impl FreezeSwitches {
    pub fn trains(&self, group: Group) -> bool {
        match group {
            Group::Attn => !self.freeze_attn,
            Group::Ff => !self.freeze_ff,
            Group::Ln => !self.freeze_ln,
            Group::Pos => !self.freeze_pos,
            Group::Input => !self.freeze_in,
            Group::Output => !self.freeze_out,
            Group::Other => false,
        }
    }
}

/// How a tensor is initialised when it is not read from a checkpoint (transformers' `_init_weights`).
#[derive(Debug, Clone, Copy)]
pub enum Init {
    Normal(f64),
    Zeros,
    Ones,
}

/// One parameter: its Hugging Face name, its group, and whether the checkpoint stores it transposed
/// relative to the layout we compute with (GPT-2's Conv1D keeps weights as [in, out]).
pub struct Param {
    pub name: String,
    pub group: Group,
    pub transposed: bool,
    pub tensor: Tensor,
}

impl Param {
    /// The tensor in its checkpoint layout.
    pub fn checkpoint_tensor(&self) -> Tensor {
        if self.transposed {
            self.tensor.tr().contiguous()
        } else {
            self.tensor.shallow_clone()
        }
    }
}

/// Where weights come from.
pub enum Source<'a> {
    Checkpoint(&'a Checkpoint),
    /// transformers' random init; the generator is seeded by the caller.
    Random,
}

/// Builds a model's tensors by name, recording each one in the parameter list.
pub struct Builder<'a> {
    pub source: Source<'a>,
    pub device: Device,
    pub params: Vec<Param>,
    pub switches: FreezeSwitches,
    /// Holds frozen matmul weights (attention, feed-forward) in this dtype, e.g. bf16.
    pub frozen_kind: Option<Kind>,
}

impl<'a> Builder<'a> {
    pub fn new(source: Source<'a>, device: Device, switches: FreezeSwitches) -> Self {
        Self { source, device, params: Vec::new(), switches, frozen_kind: None }
    }

    /// A linear layer from `name.weight` ([out, in] once in our layout) and `name.bias`; a frozen
    /// one is packed for oneDNN where that runs.
    pub fn dense(&mut self, name: &str, d_in: i64, d_out: i64, group: Group, std: f64, transposed: bool) -> Result<Dense> {
        let shape = if transposed { [d_in, d_out] } else { [d_out, d_in] };
        let weight = self.fetch(&format!("{name}.weight"), &shape, group, Init::Normal(std), transposed)?;
        let bias = self.get(&format!("{name}.bias"), &[d_out], group, Init::Zeros)?;
        Ok(if self.switches.trains(group) { Dense::new(weight, bias) } else { Dense::frozen(weight, bias) })
    }

    /// A tensor named `name` of `shape` (the checkpoint's layout), in our layout.
    pub fn get(&mut self, name: &str, shape: &[i64], group: Group, init: Init) -> Result<Tensor> {
        self.fetch(name, shape, group, init, false)
    }

    fn fetch(&mut self, name: &str, shape: &[i64], group: Group, init: Init, transposed: bool) -> Result<Tensor> {
        let t = match &self.source {
            Source::Checkpoint(ck) => {
                let t = ck.tensor(name, self.device)?;
                if t.size() != shape {
                    bail!("tensor `{name}` has shape {:?}, the config implies {:?}", t.size(), shape);
                }
                t
            }
            // Drawn on the CPU generator whatever the device, so a seed gives the same weights everywhere.
            Source::Random => init_tensor(shape, init, Device::Cpu).to_device(self.device),
        };
        let t = if transposed { t.tr().contiguous() } else { t };
        let t = match self.frozen_kind {
            Some(kind) if matches!(group, Group::Attn | Group::Ff) && !self.switches.trains(group) => t.to_kind(kind),
            _ => t,
        };
        self.params.push(Param { name: name.to_string(), group, transposed, tensor: t.shallow_clone() });
        Ok(t)
    }
}

pub fn init_tensor(shape: &[i64], init: Init, device: Device) -> Tensor {
    let opts = (Kind::Float, device);
    match init {
        Init::Normal(std) => Tensor::zeros(shape, opts).normal_(0.0, std),
        Init::Zeros => Tensor::zeros(shape, opts),
        Init::Ones => Tensor::ones(shape, opts),
    }
}
