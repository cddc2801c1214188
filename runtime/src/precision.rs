//! The arithmetic of convolutions and matrix products, process-wide (`run.precision`).
//!
//! - [`Precision::Default`]: libtorch's own defaults, untouched. On CUDA that is TF32 for cuDNN
//!   convolutions (`torch.backends.cudnn.allow_tf32 = True`) and full f32 for cuBLAS matrix
//!   products (`torch.backends.cuda.matmul.allow_tf32 = False`); on the CPU full f32. None of the
//!   three named modes equals it, so it stays the default until a GPU measurement picks one.
//! - [`Precision::Fp32`]: strict f32: TF32 off for cuDNN and cuBLAS (oneDNN's TF32, for Intel GPUs
//!   only, stays off as libtorch leaves it).
//! - [`Precision::Tf32`]: TF32 on for cuDNN convolutions and cuBLAS matrix products (CUDA only:
//!   libtorch's CPU kernels have no TF32 path the runtime can rely on, so [`Precision::check`]
//!   refuses it on the CPU).
//! - [`Precision::Bf16`]: convolutions and linear layers of runtime::nn cast their f32 inputs,
//!   weights and bias to bf16, compute in bf16 and cast the result back to f32. Everything else
//!   stays f32: parameters, optimizer state, BatchNorm (statistics included), losses, and every
//!   gradient, the meta-gradient included (the casts are differentiable; each gradient is cast
//!   back to f32 where it leaves a bf16 op). TF32 is off for the f32 ops that remain. libtorch
//!   runs bf16 convolutions and batched matrix products on the CPU as well, so the mode is
//!   honoured there (slowly) and tested against f64 there; f64 tensors are never cast.
//!
//! libtorch's switches are process-wide, and so is the mode: [`set`] once, before building
//! models, from the binary or the engine's set-up. The C side is runtime/csrc/device_settings.cpp;
//! its foreign calls live in runtime::kernels. This module never prints.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::kernels::device_ffi;
use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

/// How convolutions and matrix products compute (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// libtorch's defaults (TF32 convolutions, f32 matrix products on CUDA).
    #[default]
    Default,
    /// Strict f32: no TF32 anywhere.
    Fp32,
    /// TF32 convolutions and matrix products (CUDA only).
    Tf32,
    /// bf16 convolutions and matrix products, everything else f32.
    Bf16,
}

static CURRENT: AtomicU8 = AtomicU8::new(0);

impl Precision {
    fn code(self) -> u8 {
        match self {
            Precision::Default => 0,
            Precision::Fp32 => 1,
            Precision::Tf32 => 2,
            Precision::Bf16 => 3,
        }
    }

    fn from_code(code: u8) -> Precision {
        match code {
            1 => Precision::Fp32,
            2 => Precision::Tf32,
            3 => Precision::Bf16,
            _ => Precision::Default,
        }
    }

    /// `Err(reason)` when `device` cannot honour this mode: TF32 on the CPU.
    pub fn check(self, device: Device) -> std::result::Result<(), String> {
        match (self, device) {
            (Precision::Tf32, Device::Cpu) => Err(
                "\"tf32\" needs a CUDA device (the CPU has no TF32 path); use \"fp32\", \"bf16\" or \"default\" on the CPU"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

/// The TF32 switches of libtorch as they are now: (cuDNN, cuBLAS, oneDNN).
pub fn tf32_switches() -> Result<(bool, bool, bool)> {
    device_ffi::set_tf32(None, None, None).map_err(Error::Device)
}

/// Makes `p` the process's mode: sets libtorch's TF32 switches and the casts of runtime::nn.
/// [`Precision::Default`] restores libtorch's defaults (TF32 for cuDNN only).
pub fn set(p: Precision) -> Result<()> {
    let (cudnn, cublas) = match p {
        Precision::Default => (true, false),
        Precision::Fp32 | Precision::Bf16 => (false, false),
        Precision::Tf32 => (true, true),
    };
    device_ffi::set_tf32(Some(cudnn), Some(cublas), None).map_err(Error::Device)?;
    CURRENT.store(p.code(), Ordering::Relaxed);
    Ok(())
}

/// The process's mode (the last [`set`]; [`Precision::Default`] before any).
pub fn current() -> Precision {
    Precision::from_code(CURRENT.load(Ordering::Relaxed))
}

/// The kind that a convolution or matrix product on `x` computes in under the current mode:
/// `Some(BFloat16)` for f32 inputs in [`Precision::Bf16`], else `None` (compute as given).
pub(crate) fn compute_kind(x: &Tensor) -> Option<Kind> {
    (current() == Precision::Bf16 && x.kind() == Kind::Float).then_some(Kind::BFloat16)
}

/// `t` cast to `kind` (a no-op when it already has it).
pub(crate) fn cast(t: &Tensor, kind: Kind) -> Result<Tensor> {
    Ok(t.f_to_kind(kind)?)
}

/// Runs `op` on `x`, `w` and `b` in the current mode's compute kind and returns its result in
/// `x`'s kind: with bf16 the three are cast to bf16 and the result back to f32.
pub(crate) fn with_compute_kind(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    op: impl FnOnce(&Tensor, &Tensor, Option<&Tensor>) -> Result<Tensor>,
) -> Result<Tensor> {
    let Some(kind) = compute_kind(x) else {
        return op(x, w, b);
    };
    let (xc, wc) = (cast(x, kind)?, cast(w, kind)?);
    let bc = b.map(|b| cast(b, kind)).transpose()?;
    cast(&op(&xc, &wc, bc.as_ref())?, x.kind())
}
