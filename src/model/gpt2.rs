//! GPT-2 (reference: transformers `GPT2Model`), fed with input embeddings: the token table `wte`
//! is neither read nor kept. Every size the config describes, distilgpt2 to gpt2-xl.
use anyhow::{bail, Result};
use serde::Deserialize;
use tch::Tensor;

use super::dropout::{add_dropped, dropout};
use super::layers::{attention, known_activation, merge_heads, split_heads, Dense, LayerNorm};
use super::params::{Builder, Group, Init};
use super::{Arch, Backbone, BackboneConfig, Readout};

/// The fields of GPT-2's `config.json` we use, with Hugging Face's names and defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct Gpt2Config {
    #[serde(default = "d_768")]
    pub n_embd: i64,
    #[serde(default = "d_12")]
    pub n_layer: i64,
    #[serde(default = "d_12")]
    pub n_head: i64,
    #[serde(default = "d_1024", alias = "n_ctx")]
    pub n_positions: i64,
    pub n_inner: Option<i64>,
    #[serde(default = "d_gelu_new")]
    pub activation_function: String,
    #[serde(default = "d_1e5")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "d_01")]
    pub resid_pdrop: f64,
    #[serde(default = "d_01")]
    pub embd_pdrop: f64,
    #[serde(default = "d_01")]
    pub attn_pdrop: f64,
    #[serde(default = "d_002")]
    pub initializer_range: f64,
}

fn d_768() -> i64 {
    768
}
fn d_12() -> i64 {
    12
}
fn d_1024() -> i64 {
    1024
}
fn d_gelu_new() -> String {
    "gelu_new".into()
}
fn d_1e5() -> f64 {
    1e-5
}
fn d_01() -> f64 {
    0.1
}
fn d_002() -> f64 {
    0.02
}

impl Gpt2Config {
    pub fn backbone_config(&self) -> Result<BackboneConfig> {
        if self.n_embd % self.n_head != 0 {
            bail!("config: n_embd {} is not a multiple of n_head {}", self.n_embd, self.n_head);
        }
        if !known_activation(&self.activation_function) {
            bail!("config: unsupported activation_function `{}`", self.activation_function);
        }
        Ok(BackboneConfig {
            arch: Arch::Gpt2,
            hidden: self.n_embd,
            layers: self.n_layer,
            heads: self.n_head,
            max_positions: self.n_positions,
            inner: self.n_inner.unwrap_or(4 * self.n_embd),
            activation: self.activation_function.clone(),
            ln_eps: self.layer_norm_epsilon,
            hidden_dropout: self.resid_pdrop,
            embed_dropout: self.embd_pdrop,
            attn_dropout: self.attn_pdrop,
            initializer_range: self.initializer_range,
        })
    }
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Dense,
    attn_proj: Dense,
    ln_2: LayerNorm,
    c_fc: Dense,
    mlp_proj: Dense,
}

pub struct Gpt2 {
    cfg: BackboneConfig,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
}

fn layer_norm(b: &mut Builder, name: &str, d: i64, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: b.get(&format!("{name}.weight"), &[d], Group::Ln, Init::Ones)?,
        bias: b.get(&format!("{name}.bias"), &[d], Group::Ln, Init::Zeros)?,
        eps,
    })
}

/// GPT-2's Conv1D: stored as [in, out].
fn conv1d(b: &mut Builder, name: &str, d_in: i64, d_out: i64, group: Group, std: f64) -> Result<Dense> {
    b.dense(name, d_in, d_out, group, std, true)
}

impl Gpt2 {
    pub fn build(cfg: BackboneConfig, b: &mut Builder) -> Result<Self> {
        let (d, std) = (cfg.hidden, cfg.initializer_range);
        // transformers scales residual projections by 1/sqrt(2 * n_layer) at init.
        let proj_std = std / ((2 * cfg.layers) as f64).sqrt();
        let wpe = b.get("wpe.weight", &[cfg.max_positions, d], Group::Pos, Init::Normal(std))?;
        let mut blocks = Vec::new();
        for i in 0..cfg.layers {
            let p = format!("h.{i}");
            blocks.push(Block {
                ln_1: layer_norm(b, &format!("{p}.ln_1"), d, cfg.ln_eps)?,
                c_attn: conv1d(b, &format!("{p}.attn.c_attn"), d, 3 * d, Group::Attn, std)?,
                attn_proj: conv1d(b, &format!("{p}.attn.c_proj"), d, d, Group::Attn, proj_std)?,
                ln_2: layer_norm(b, &format!("{p}.ln_2"), d, cfg.ln_eps)?,
                c_fc: conv1d(b, &format!("{p}.mlp.c_fc"), d, cfg.inner, Group::Ff, std)?,
                mlp_proj: conv1d(b, &format!("{p}.mlp.c_proj"), cfg.inner, d, Group::Ff, proj_std)?,
            });
        }
        let ln_f = layer_norm(b, "ln_f", d, cfg.ln_eps)?;
        Ok(Self { cfg, wpe, blocks, ln_f })
    }

    /// One block; with `only` the queries, and everything after attention, are computed for the
    /// read-out tokens alone (keys and values still come from every token).
    fn block(&self, blk: &Block, x: &Tensor, train: bool, only: Option<Readout<'_>>) -> Tensor {
        let h = blk.ln_1.forward(x);
        let qkv = blk.c_attn.forward(&h).split(self.cfg.hidden, -1);
        let (k, v) = (split_heads(&qkv[1], self.cfg.heads), split_heads(&qkv[2], self.cfg.heads));
        let attn_p = if train { self.cfg.attn_dropout } else { 0.0 };
        let (x, a) = match only {
            None => (x.shallow_clone(), attention(&split_heads(&qkv[0], self.cfg.heads), &k, &v, None, true, attn_p)),
            Some(readout) => {
                let mask = readout.causal_mask(x.size()[1], x.device());
                let q = split_heads(&readout.rows(&qkv[0]), self.cfg.heads);
                (readout.rows(x), attention(&q, &k, &v, mask.as_ref(), false, attn_p))
            }
        };
        let p = self.cfg.hidden_dropout;
        let x = add_dropped(&x, &blk.attn_proj.forward(&merge_heads(&a)), p, train);
        let m = blk.mlp_proj.forward_own(&blk.c_fc.forward_activated(&blk.ln_2.forward(&x), &self.cfg.activation));
        add_dropped(&x, &m, p, train)
    }

    fn embed(&self, embeds: &Tensor, train: bool) -> Tensor {
        let l = embeds.size()[1];
        let pos = if self.wpe.dim() == 2 { self.wpe.narrow(0, 0, l) } else { self.wpe.narrow(1, 0, l) };
        let x = embeds + pos;
        if train {
            dropout(&x, self.cfg.embed_dropout)
        } else {
            x
        }
    }
}

impl Backbone for Gpt2 {
    fn config(&self) -> &BackboneConfig {
        &self.cfg
    }

    fn config_mut(&mut self) -> &mut BackboneConfig {
        &mut self.cfg
    }

    /// Causal attention only, as the reference: with right padding, real tokens never see padding,
    /// so `key_mask` is not needed and ignored.
    fn forward(&self, embeds: &Tensor, _key_mask: Option<&Tensor>, train: bool) -> Tensor {
        let mut x = self.embed(embeds, train);
        for blk in &self.blocks {
            x = self.block(blk, &x, train, None);
        }
        self.ln_f.forward(&x)
    }

    fn forward_readout(&self, embeds: &Tensor, key_mask: Option<&Tensor>, train: bool, readout: Readout<'_>) -> Tensor {
        let mut x = self.embed(embeds, train);
        let n = self.blocks.len();
        if n == 0 {
            return readout.pooled_rows(&self.ln_f.forward(&x), key_mask);
        }
        for blk in &self.blocks[..n - 1] {
            x = self.block(blk, &x, train, None);
        }
        self.ln_f.forward(&self.block(&self.blocks[n - 1], &x, train, Some(readout)))
    }

    fn adapter_slots_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut out = vec![("wpe.weight".to_string(), &mut self.wpe)];
        for (i, b) in self.blocks.iter_mut().enumerate() {
            for (n, ln) in [("ln_1", &mut b.ln_1), ("ln_2", &mut b.ln_2)] {
                out.push((format!("h.{i}.{n}.weight"), &mut ln.weight));
                out.push((format!("h.{i}.{n}.bias"), &mut ln.bias));
            }
        }
        out.push(("ln_f.weight".into(), &mut self.ln_f.weight));
        out.push(("ln_f.bias".into(), &mut self.ln_f.bias));
        out
    }
}
