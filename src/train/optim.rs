//! Adam with torch.optim.Adam's arithmetic, its state exposed so checkpoints can hold it (tch's
//! optimiser keeps its state out of reach), grad-norm clipping, and the learning-rate schedule.
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Steps taken (torch's `state['step']`).
    pub t: u64,
    pub params: Vec<Tensor>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl Adam {
    pub fn new(params: Vec<Tensor>, beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Self {
        let m = params.iter().map(|p| p.zeros_like()).collect();
        let v = params.iter().map(|p| p.zeros_like()).collect();
        Self { beta1, beta2, eps, weight_decay, t: 0, params, m, v }
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before.
    pub fn clip_grad_norm(&self, max_norm: f64) -> f64 {
        let grads: Vec<Tensor> = self.params.iter().map(|p| p.grad()).filter(|g| g.defined()).collect();
        if grads.is_empty() {
            return 0.0;
        }
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm().to_kind(Kind::Float)).collect();
        let total = f64::try_from(Tensor::stack(&norms, 0).norm()).unwrap();
        if max_norm > 0.0 {
            let coef = (max_norm / (total + 1e-6)).min(1.0);
            if coef < 1.0 {
                for g in &grads {
                    let _ = g.shallow_clone().g_mul_scalar_(coef);
                }
            }
        }
        total
    }

    pub fn step(&mut self, lr: f64) {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        let step_size = lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        tch::no_grad(|| {
            for ((p, m), v) in self.params.iter().zip(&mut self.m).zip(&mut self.v) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = if self.weight_decay != 0.0 { &g + p * self.weight_decay } else { g };
                let _ = m.g_mul_scalar_(self.beta1).g_add_(&(&g * (1.0 - self.beta1)));
                let _ = v.g_mul_scalar_(self.beta2).g_add_(&(&g * &g * (1.0 - self.beta2)));
                let denom = (v.sqrt() / bc2_sqrt) + self.eps;
                let _ = p.shallow_clone().g_sub_(&(&*m / denom * step_size));
            }
        });
    }
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
            adam.step(0.1);
        }
        let v: Vec<f32> = Vec::try_from(&x.detach()).unwrap();
        assert!((v[0] - 0.800_412_2).abs() < 1e-6 && (v[1] + 1.800_166_5).abs() < 1e-6, "{v:?}");
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let x = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
        let adam = Adam::new(vec![x.shallow_clone()], 0.9, 0.999, 1e-8, 0.0);
        (&x * &x).sum(Kind::Float).backward(); // grad = [6, 8], norm 10
        let before = adam.clip_grad_norm(1.0);
        assert!((before - 10.0).abs() < 1e-4);
        let g: Vec<f32> = Vec::try_from(&x.grad()).unwrap();
        assert!(((g[0] * g[0] + g[1] * g[1]).sqrt() - 1.0).abs() < 1e-4);
    }
}
