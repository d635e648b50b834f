//! Leaf layers shared by the backbones: dense, layer norm, multi-head attention.
use tch::{Device, Kind, Tensor};

use super::onednn::{Fused, Packed};

/// `y = x W^T + b`, W kept as [out, in] whatever the checkpoint's layout.
pub struct Dense {
    pub weight: Tensor,
    pub bias: Tensor,
    /// The weight packed for oneDNN: frozen layers on the CPU (see [`super::onednn`]).
    packed: Option<Packed>,
}

impl Dense {
    pub fn new(weight: Tensor, bias: Tensor) -> Self {
        Self { weight, bias, packed: None }
    }

    /// A layer whose weight gets no gradient: its matmuls go through oneDNN where it runs.
    pub fn frozen(weight: Tensor, bias: Tensor) -> Self {
        let packed = Packed::new(&weight);
        Self { weight, bias, packed }
    }

    /// In the caller's dtype (frozen weights may be held in bf16: computed in theirs, cast back).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.forward_own(x);
        if y.kind() != x.kind() {
            y.to_kind(x.kind())
        } else {
            y
        }
    }

    /// In the weight's dtype: a frozen feed-forward sublayer chains in bf16 without casting back
    /// to fp32 between its ops, as under autocast; the residual add promotes the result to fp32.
    /// (Attention stays fp32: its bf16 kernel triples the error against fp32 on the real MiniLM.)
    pub fn forward_own(&self, x: &Tensor) -> Tensor {
        let x = self.cast(x);
        match &self.packed {
            Some(p) => p.linear(&x, &self.bias),
            None => x.linear(&self.weight, Some(&self.bias)),
        }
    }

    /// `activation(x W^T + b)` in the weight's dtype; oneDNN applies the activation inside the
    /// matmul when no gradient flows back through it (inference).
    pub fn forward_activated(&self, x: &Tensor, act: &str) -> Tensor {
        match (&self.packed, Fused::from_name(act)) {
            (Some(p), Some(fused)) if !x.requires_grad() => p.linear_fused(&self.cast(x), &self.bias, fused),
            _ => activation(&self.forward_own(x), act),
        }
    }

    fn cast(&self, x: &Tensor) -> Tensor {
        let k = self.weight.kind();
        if x.kind() != k {
            x.to_kind(k)
        } else {
            x.shallow_clone()
        }
    }
}

/// Layer norm whose affine parameters are either shared ([d]) or per batch row ([B, 1, d]), the
/// latter for serving many adapters in one batch.
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let d = *x.size().last().unwrap();
        if self.weight.dim() == 1 {
            x.layer_norm([d], Some(&self.weight), Some(&self.bias), self.eps, true)
        } else {
            x.layer_norm::<&Tensor>([d], None, None, self.eps, true) * &self.weight + &self.bias
        }
    }
}

/// Splits [B, L, H*Dh] into [B, H, L, Dh].
pub fn split_heads(x: &Tensor, heads: i64) -> Tensor {
    let (b, l, d) = x.size3().unwrap();
    x.view([b, l, heads, d / heads]).transpose(1, 2)
}

/// Merges [B, H, L, Dh] back into [B, L, H*Dh].
pub fn merge_heads(x: &Tensor) -> Tensor {
    let (b, h, l, dh) = x.size4().unwrap();
    x.transpose(1, 2).contiguous().view([b, l, h * dh])
}

/// Fused attention (`scaled_dot_product_attention`); `key_mask` is [B, 1, 1, L] bool, true = attend.
/// With dropout on the CPU, the attention is written out (as ATen's own math fallback does there)
/// so that its dropout draws its mask in Rust, see [`super::dropout`].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, key_mask: Option<&Tensor>, causal: bool, dropout: f64) -> Tensor {
    if dropout > 0.0 && q.device() == Device::Cpu {
        let probs = attention_probs(q, k, key_mask, causal);
        return super::dropout::dropout(&probs, dropout).matmul(v);
    }
    Tensor::scaled_dot_product_attention(q, k, v, key_mask, dropout, causal, None, false)
}

/// softmax(q k^T / sqrt(d) + masks) as [B, H, Lq, Lk]; causal: query i sees keys 0..=i (as SDPA).
fn attention_probs(q: &Tensor, k: &Tensor, key_mask: Option<&Tensor>, causal: bool) -> Tensor {
    let d = *q.size().last().unwrap();
    let mut scores = q.matmul(&k.transpose(-2, -1)) / (d as f64).sqrt();
    let (lq, lk) = (q.size()[2], k.size()[2]);
    if causal {
        let future = Tensor::ones([lq, lk], (Kind::Bool, q.device())).triu(1);
        scores = scores.masked_fill(&future, f64::NEG_INFINITY);
    }
    if let Some(m) = key_mask {
        scores = scores.masked_fill(&m.logical_not(), f64::NEG_INFINITY);
    }
    scores.softmax(-1, scores.kind())
}

/// The activations transformers names in configs.
pub fn activation(x: &Tensor, name: &str) -> Tensor {
    match name {
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => x.gelu("tanh"),
        "relu" => x.relu(),
        "silu" | "swish" => x.silu(),
        _ => x.gelu("none"),
    }
}

/// Whether `name` is an activation we implement (checked when a config is read): those oneDNN
/// can also fuse, so the two paths accept the same names.
pub fn known_activation(name: &str) -> bool {
    Fused::from_name(name).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_out_attention_matches_the_fused_kernel() {
        let _draws = crate::model::seed_torch(0);
        let opts = (Kind::Float, Device::Cpu);
        let (q, k, v) = (Tensor::randn([2, 3, 5, 8], opts), Tensor::randn([2, 3, 5, 8], opts), Tensor::randn([2, 3, 5, 8], opts));
        let lengths = Tensor::from_slice(&[5i64, 3]);
        let key_mask = Tensor::arange(5, (Kind::Int64, Device::Cpu)).unsqueeze(0).lt_tensor(&lengths.unsqueeze(1)).view([2, 1, 1, 5]);
        for (mask, causal) in [(None, true), (Some(&key_mask), false)] {
            let ours = attention_probs(&q, &k, mask, causal).matmul(&v);
            let fused = attention(&q, &k, &v, mask, causal, 0.0);
            let err = (ours - fused).abs().max().double_value(&[]);
            assert!(err < 1e-5, "causal {causal}: max error {err}");
        }
    }
}
