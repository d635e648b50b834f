//! Inverted dropout with masks drawn in Rust on the CPU.
//!
//! ATen's CPU Bernoulli sampler is serial and costs about 8 ns an element (a hundred times an
//! elementwise multiply): a third of a small model's training step, a tenth of GPT-2 small's.
//! Here the keep masks come from xoshiro256++ streams, one per thread, which the trainer reseeds
//! every step: a run's masks are a function of (seed, step) whatever other threads draw (torch's
//! generator is one for the whole process, shared by concurrent jobs and tests). The distribution
//! is dropout's (keep with 1 - p, scale kept values by 1 / (1 - p)); the stream is not torch's.
//! Other devices keep torch's dropout.
use std::cell::RefCell;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use tch::{Device, Kind, Tensor};

/// `x` with each element zeroed with probability `p` and the rest scaled by 1 / (1 - p);
/// gradients flow through the same mask. `p` in [0, 1).
pub fn dropout(x: &Tensor, p: f64) -> Tensor {
    if p <= 0.0 {
        return x.shallow_clone();
    }
    if x.device() != Device::Cpu {
        return x.dropout(p, true);
    }
    x * keep_mask(&x.size(), p)
}

/// `x + dropout(h, p)`, on the CPU in one pass (`addcmul` with the keep mask) instead of a
/// multiply and an add: the residual connections of every block. No dropout when `train` is false.
pub fn add_dropped(x: &Tensor, h: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x + h;
    }
    if x.device() != Device::Cpu {
        return x + h.dropout(p, true);
    }
    x.addcmul(h, &keep_mask(&h.size(), p))
}

thread_local! {
    static STREAM: RefCell<SmallRng> = RefCell::new(SmallRng::seed_from_u64(0));
}

/// Restarts this thread's dropout stream at `seed`.
pub fn reseed(seed: u64) {
    STREAM.with(|s| *s.borrow_mut() = SmallRng::seed_from_u64(seed));
}

/// A float tensor of `size` holding 0 (dropped) or 1 / (1 - p) (kept), from this thread's stream.
fn keep_mask(size: &[i64], p: f64) -> Tensor {
    seeded_keep_mask(size, p, STREAM.with(|s| s.borrow_mut().next_u64()))
}

fn seeded_keep_mask(size: &[i64], p: f64, seed: u64) -> Tensor {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mask = Tensor::empty(size, (Kind::Float, Device::Cpu));
    let n = mask.numel();
    // Keep when a uniform 32-bit draw falls below (1 - p) * 2^32: exact to 2^-32.
    let threshold = ((1.0 - p) * 4_294_967_296.0).round() as u64;
    let scale = (1.0 / (1.0 - p)) as f32;
    let pick = |r: u64| if r < threshold { scale } else { 0.0 };
    // SAFETY: `mask` was just allocated, contiguous, with `n` f32 elements, and nothing else refers to it yet.
    let out = unsafe { std::slice::from_raw_parts_mut(mask.data_ptr() as *mut f32, n) };
    let mut pairs = out.chunks_exact_mut(2);
    for pair in &mut pairs {
        let r = rng.next_u64();
        pair[0] = pick(r & 0xffff_ffff);
        pair[1] = pick(r >> 32);
    }
    if let [last] = pairs.into_remainder() {
        *last = pick(rng.next_u64() & 0xffff_ffff);
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_one_minus_p_scaled_and_a_seed_fixes_the_mask() {
        let m = seeded_keep_mask(&[1001, 999], 0.1, 7);
        let kept = m.gt(0.0).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        // 10^6 Bernoulli(0.9) draws: the standard error of the mean is 3e-4.
        assert!((kept - 0.9).abs() < 2e-3, "kept fraction {kept}");
        let max = m.max().double_value(&[]);
        assert!((max - 1.0 / 0.9).abs() < 1e-6, "kept scale {max}");
        assert_eq!(m.lt(0.0).sum(Kind::Int64).int64_value(&[]), 0);
        assert!(seeded_keep_mask(&[1001, 999], 0.1, 7).equal(&m), "same seed, same mask");
        assert!(!seeded_keep_mask(&[1001, 999], 0.1, 8).equal(&m), "another seed, another mask");
    }

    #[test]
    fn reseeding_the_thread_repeats_its_masks_whatever_other_threads_draw() {
        reseed(11);
        let a = keep_mask(&[64, 64], 0.5);
        let _elsewhere = std::thread::spawn(|| keep_mask(&[64, 64], 0.5)).join().unwrap();
        reseed(11);
        assert!(keep_mask(&[64, 64], 0.5).equal(&a), "same seed, same mask");
        assert!(!keep_mask(&[64, 64], 0.5).equal(&a), "the next draw differs");
    }

    #[test]
    fn gradients_flow_through_the_same_mask() {
        let x = Tensor::ones([64, 33], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = dropout(&x, 0.25);
        y.sum(Kind::Float).backward();
        assert!(x.grad().equal(&y.detach()), "d(sum)/dx is the mask, which is y for x = 1");
        let zeros = y.eq(0.0).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        assert!(zeros > 0.15 && zeros < 0.35, "dropped fraction {zeros}");
    }

    #[test]
    fn residual_dropout_in_one_pass_is_the_add_of_the_dropped_branch() {
        let _draws = crate::model::seed_torch(2);
        let x = Tensor::randn([8, 40], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let h = Tensor::randn([8, 40], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        reseed(3);
        let fused = add_dropped(&x, &h, 0.2, true);
        reseed(3);
        let apart = &x + dropout(&h, 0.2);
        assert!(fused.allclose(&apart, 1e-6, 1e-7, false), "same mask, same sum");
        fused.sum(Kind::Float).backward();
        assert!(x.grad().equal(&Tensor::ones([8, 40], (Kind::Float, Device::Cpu))), "the residual passes its gradient through");
        let dropped = h.grad().eq(0.0).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        assert!(dropped > 0.05 && dropped < 0.4, "the branch's gradient is masked: {dropped} dropped");
        assert!(add_dropped(&x, &h, 0.2, false).equal(&(&x + &h)), "no dropout outside training");
    }

    #[test]
    fn zero_p_is_identity() {
        let _draws = crate::model::seed_torch(4);
        let x = Tensor::randn([5, 7], (Kind::Float, Device::Cpu));
        assert!(dropout(&x, 0.0).equal(&x));
    }
}
