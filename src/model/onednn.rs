//! Frozen linear layers through oneDNN on the CPU, with weights packed once into its blocked
//! layout (the C++ half is `onednn.cpp`). ATen sends fp32 linears to MKL and lays bf16 weights out
//! again on every call; the packed oneDNN matmul does neither, and at inference it fuses the
//! activation that follows (GPT-2 small's four matmuls of a block and its GELU, 784 rows, 2 threads:
//! fp32 82 -> 55 ms, bf16 33 -> 29 ms). `FPT_ONEDNN=0` turns it off (ATen's path, as on a GPU).
use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn fpt_onednn_available() -> c_int;
    fn fpt_onednn_free_error(e: *mut c_char);
    fn fpt_onednn_pack(w: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
    fn fpt_onednn_linear(
        x: *const C_tensor,
        packed: *const C_tensor,
        bias: *const C_tensor,
        packed_t: *const C_tensor,
        attr: *const c_char,
        algorithm: *const c_char,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// Whether oneDNN runs matmuls of this dtype here (bf16 needs AVX512 or AMX): probed once per
/// dtype with a 2 x 2 product; never with `FPT_ONEDNN=0` or a libtorch without its ops.
fn runs(kind: Kind) -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    static FLOAT: OnceLock<bool> = OnceLock::new();
    static BF16: OnceLock<bool> = OnceLock::new();
    let enabled = *ENABLED.get_or_init(|| std::env::var("FPT_ONEDNN").map_or(true, |v| v != "0") && unsafe { fpt_onednn_available() } != 0);
    let probe = match kind {
        Kind::Float => &FLOAT,
        Kind::BFloat16 => &BF16,
        _ => return false,
    };
    enabled && *probe.get_or_init(|| probe_product(kind).is_ok())
}

fn probe_product(kind: Kind) -> Result<Tensor, String> {
    let opts = (kind, Device::Cpu);
    let packed = try_pack(&Tensor::eye(2, opts))?;
    try_linear(&Tensor::ones([1, 2], opts), &packed, &Tensor::zeros([2], opts), None, Fused::NONE)
}

/// The tensor the shim returned, or its error.
fn result(err: *mut c_char, out: *mut C_tensor) -> Result<Tensor, String> {
    if err.is_null() {
        return Ok(unsafe { Tensor::from_ptr(out) });
    }
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { fpt_onednn_free_error(err) };
    Err(msg)
}

fn try_pack(w: &Tensor) -> Result<Tensor, String> {
    let mut out = std::ptr::null_mut();
    result(unsafe { fpt_onednn_pack(w.as_ptr(), &mut out) }, out)
}

fn try_linear(x: &Tensor, packed: &Tensor, bias: &Tensor, backward: Option<&Tensor>, act: Fused) -> Result<Tensor, String> {
    let (attr, algorithm) = (CString::new(act.0).unwrap(), CString::new(act.1).unwrap());
    let backward = backward.map_or(std::ptr::null(), |b| b.as_ptr());
    let mut out = std::ptr::null_mut();
    let err =
        unsafe { fpt_onednn_linear(x.as_ptr(), packed.as_ptr(), bias.as_ptr(), backward, attr.as_ptr(), algorithm.as_ptr(), &mut out) };
    result(err, out)
}

/// Past the probe, an error is a bug of ours (a shape or dtype mismatch): it panics, as tch's own
/// ops do.
fn pack(w: &Tensor) -> Tensor {
    try_pack(w).unwrap_or_else(|e| panic!("oneDNN weight packing: {e}"))
}

/// A frozen weight [out, in] packed for `x W^T` and, once a gradient flows back to `x`, for `g W`
/// (packed then: serving never needs it).
pub struct Packed {
    weight: Tensor,
    forward: Tensor,
    backward: OnceLock<Tensor>,
}

/// An activation oneDNN applies inside the matmul (attribute and algorithm of `_linear_pointwise`).
#[derive(Clone, Copy)]
pub struct Fused(&'static str, &'static str);

impl Fused {
    const NONE: Fused = Fused("none", "");

    /// oneDNN's form of a transformers activation name, where it has one.
    pub fn from_name(name: &str) -> Option<Fused> {
        Some(match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Fused("gelu", "tanh"),
            "gelu" => Fused("gelu", "none"),
            "relu" => Fused("relu", ""),
            "silu" | "swish" => Fused("swish", ""),
            _ => return None,
        })
    }
}

impl Packed {
    /// `weight` packed (for any row count: oneDNN's size hint made no difference); None off the
    /// CPU or when oneDNN is off.
    pub fn new(weight: &Tensor) -> Option<Packed> {
        if weight.device() != Device::Cpu || !runs(weight.kind()) {
            return None;
        }
        Some(Packed { weight: weight.shallow_clone(), forward: pack(weight), backward: OnceLock::new() })
    }

    /// `x W^T + b` in the weight's dtype (x must have it), differentiable in `x`.
    pub fn linear(&self, x: &Tensor, bias: &Tensor) -> Tensor {
        if !x.requires_grad() {
            return self.call(x, bias, None, Fused::NONE);
        }
        let backward = self.backward.get_or_init(|| pack(&self.weight.tr().contiguous()));
        self.call(x, bias, Some(backward), Fused::NONE)
    }

    /// `act(x W^T + b)` with the activation fused; for inputs that need no gradient.
    pub fn linear_fused(&self, x: &Tensor, bias: &Tensor, act: Fused) -> Tensor {
        debug_assert!(!x.requires_grad(), "a fused activation has no backward");
        self.call(x, bias, None, act)
    }

    fn call(&self, x: &Tensor, bias: &Tensor, backward: Option<&Tensor>, act: Fused) -> Tensor {
        try_linear(x, &self.forward, bias, backward, act).unwrap_or_else(|e| panic!("oneDNN linear: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[]);
        d / b.abs().max().double_value(&[])
    }

    #[test]
    fn packed_linear_matches_aten_forward_and_backward() {
        assert!(runs(Kind::Float), "the PyTorch wheel's libtorch has oneDNN");
        let _draws = crate::model::seed_torch(0);
        for (kind, tol) in [(Kind::Float, 1e-5), (Kind::BFloat16, 2e-2)] {
            let w = Tensor::randn([48, 32], (Kind::Float, Device::Cpu)).to_kind(kind);
            let b = Tensor::randn([48], (Kind::Float, Device::Cpu)).to_kind(kind);
            // A CPU without native bf16 (no AVX512-BF16/AMX) keeps bf16 layers on ATen: nothing is packed.
            let Some(p) = Packed::new(&w) else {
                assert!(kind == Kind::BFloat16 && !runs(kind), "{kind:?} was not packed");
                continue;
            };
            for rows in [1, 20, 300] {
                let x = Tensor::randn([rows, 32], (Kind::Float, Device::Cpu)).to_kind(kind).set_requires_grad(true);
                let xr = x.detach().set_requires_grad(true);
                let ours = p.linear(&x.view([1, rows, 32]), &b);
                let aten = xr.linear(&w, Some(&b));
                assert!(rel_err(&ours.view([rows, 48]), &aten) < tol, "{kind:?} forward, {rows} rows");
                let g = Tensor::randn([rows, 48], (Kind::Float, Device::Cpu)).to_kind(kind);
                (ours.view([rows, 48]) * &g).sum(None).backward();
                (aten * &g).sum(None).backward();
                assert!(rel_err(&x.grad(), &xr.grad()) < tol, "{kind:?} gradient, {rows} rows");
            }
        }
    }

    #[test]
    fn fused_activations_match_aten() {
        let _draws = crate::model::seed_torch(1);
        let w = Tensor::randn([40, 16], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([40], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([2, 7, 16], (Kind::Float, Device::Cpu));
        let p = Packed::new(&w).unwrap();
        let pre = x.linear(&w, Some(&b));
        for name in ["gelu_new", "gelu", "relu", "silu"] {
            let ours = p.linear_fused(&x, &b, Fused::from_name(name).unwrap());
            let aten = super::super::layers::activation(&pre, name);
            assert!(rel_err(&ours, &aten) < 1e-5, "{name}");
        }
    }
}
