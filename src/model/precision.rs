//! The dtype a run holds its frozen weights in: fp32, bf16, or bf16 where the hardware multiplies
//! it fast.
use tch::{Device, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Bf16,
    /// bf16 frozen weights where the hardware multiplies bf16 fast, else fp32.
    #[default]
    Auto,
}

impl Precision {
    /// The dtype frozen weights are held in.
    pub fn frozen_kind(self, device: Device) -> Option<Kind> {
        let bf16 = match self {
            Precision::Fp32 => false,
            Precision::Bf16 => true,
            Precision::Auto => fast_bf16(device),
        };
        bf16.then_some(Kind::BFloat16)
    }
}

/// CUDA GPUs and CPUs with AMX or AVX512-BF16 multiply bf16 natively.
pub fn fast_bf16(device: Device) -> bool {
    match device {
        Device::Cuda(_) => true,
        _ => std::fs::read_to_string("/proc/cpuinfo").map(|s| s.contains(" amx_bf16") || s.contains(" avx512_bf16")).unwrap_or(false),
    }
}
