//! Adam with torch.optim.Adam's arithmetic, its state exposed so checkpoints can hold it (tch's
//! optimiser keeps its state out of reach), grad-norm clipping, and the learning-rate schedule.
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Adam over all trained tensors at once: their values are moved into one flat buffer (the model's
/// tensors become views of it), so an update is a dozen kernels whatever the number of tensors.
pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Steps taken (torch's `state['step']`).
    pub t: u64,
    pub params: Vec<Tensor>,
    flat: Tensor,
    m: Tensor,
    v: Tensor,
    numels: Vec<i64>,
}

impl Adam {
    pub fn new(params: Vec<Tensor>, beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Self {
        let numels: Vec<i64> = params.iter().map(|p| p.numel() as i64).collect();
        let flat = if params.is_empty() {
            Tensor::zeros([0], (Kind::Float, tch::Device::Cpu))
        } else {
            Tensor::cat(&params.iter().map(|p| p.detach().reshape([-1])).collect::<Vec<_>>(), 0)
        };
        tch::no_grad(|| {
            let mut offset = 0;
            for (p, &n) in params.iter().zip(&numels) {
                let size = p.size();
                let stride = contiguous_strides(&size);
                let _ = p.shallow_clone().set_source_tensor_storage_offset_(&flat, offset, size.as_slice(), stride.as_slice());
                offset += n;
            }
        });
        let (m, v) = (flat.zeros_like(), flat.zeros_like());
        Self { beta1, beta2, eps, weight_decay, t: 0, params, flat, m, v, numels }
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// The first and second moments of parameter `i`, shaped like it (views: writes go through).
    pub fn moments(&self, i: usize) -> (Tensor, Tensor) {
        let offset: i64 = self.numels[..i].iter().sum();
        let shape = self.params[i].size();
        (self.m.narrow(0, offset, self.numels[i]).view(shape.as_slice()), self.v.narrow(0, offset, self.numels[i]).view(shape.as_slice()))
    }

    /// Clips the global gradient norm to `max_norm` (0: no clipping), then takes an Adam step;
    /// returns the norm before clipping.
    pub fn step(&mut self, lr: f64, max_norm: f64) -> f64 {
        if self.params.is_empty() {
            return 0.0;
        }
        let grads: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| {
                let g = p.grad();
                if g.defined() {
                    g.reshape([-1])
                } else {
                    p.detach().zeros_like().reshape([-1])
                }
            })
            .collect();
        let mut g = Tensor::cat(&grads, 0);
        let norm = f64::try_from(g.norm().to_kind(Kind::Double)).unwrap();
        if max_norm > 0.0 {
            let coef = (max_norm / (norm + 1e-6)).min(1.0);
            if coef < 1.0 {
                g = g * coef;
            }
        }
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        tch::no_grad(|| {
            if self.weight_decay != 0.0 {
                g = &g + &self.flat * self.weight_decay;
            }
            let _ = self.m.g_mul_scalar_(self.beta1).g_add_(&(&g * (1.0 - self.beta1)));
            let _ = self.v.g_mul_scalar_(self.beta2).g_add_(&(&g * &g * (1.0 - self.beta2)));
            let denom = self.v.sqrt() / bc2.sqrt() + self.eps;
            let _ = self.flat.g_sub_(&(&self.m / denom * (lr / bc1)));
        });
        norm
    }
}

fn contiguous_strides(size: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; size.len()];
    for i in (0..size.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * size[i + 1].max(1);
    }
    strides
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The reference's: the same rate throughout.
    #[default]
    Constant,
    /// Half-cosine decay to zero after the warm-up.
    Cosine,
}

/// The learning rate at `step` (0-based) of `total`: linear warm-up, then constant or cosine.
pub fn learning_rate(base: f64, schedule: Schedule, warmup: u64, step: u64, total: u64) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    match schedule {
        Schedule::Constant => base,
        Schedule::Cosine => {
            let span = total.saturating_sub(warmup).max(1) as f64;
            let progress = ((step - warmup) as f64 / span).min(1.0);
            base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_reaches_zero() {
        assert!((learning_rate(1.0, Schedule::Cosine, 10, 0, 110) - 0.1).abs() < 1e-12);
        assert!((learning_rate(1.0, Schedule::Cosine, 10, 10, 110) - 1.0).abs() < 1e-12);
        assert!(learning_rate(1.0, Schedule::Cosine, 10, 110, 110).abs() < 1e-12);
        assert_eq!(learning_rate(0.5, Schedule::Constant, 0, 99, 100), 0.5);
    }

    #[test]
    fn adam_matches_torch_on_a_quadratic() {
        // torch.optim.Adam(lr=0.1) on f(x) = sum(x^2) from x = [1, -2], two steps (printed by torch 2.11).
        let x = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut adam = Adam::new(vec![x.shallow_clone()], 0.9, 0.999, 1e-8, 0.0);
        for _ in 0..2 {
            adam.zero_grad();
            (&x * &x).sum(Kind::Float).backward();
            adam.step(0.1, 0.0);
        }
        let v: Vec<f32> = Vec::try_from(&x.detach()).unwrap();
        assert!((v[0] - 0.800_412_2).abs() < 1e-6 && (v[1] + 1.800_166_5).abs() < 1e-6, "{v:?}");
    }

    #[test]
    fn clipping_bounds_the_global_norm_and_updates_reach_the_model() {
        // Two tensors, as a model has many: the update lands in the tensors the model holds.
        let x = Tensor::from_slice(&[3.0f32]).set_requires_grad(true);
        let y = Tensor::from_slice(&[4.0f32]).set_requires_grad(true);
        let held = (x.shallow_clone(), y.shallow_clone());
        let mut adam = Adam::new(vec![x.shallow_clone(), y.shallow_clone()], 0.9, 0.999, 1e-8, 0.0);
        (&x * &x + &y * &y).sum(Kind::Float).backward(); // grad = [6, 8], norm 10
        let before = adam.step(0.1, 1.0);
        assert!((before - 10.0).abs() < 1e-4);
        // Adam's first step moves each coordinate by lr against the gradient's sign.
        assert!((f64::try_from(&held.0).unwrap() - 2.9).abs() < 1e-5);
        assert!((f64::try_from(&held.1).unwrap() - 3.9).abs() < 1e-5);
    }
}
