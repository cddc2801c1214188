//! BatchNorm with batch statistics whose double backward is a closed form
//! (runtime/csrc/batch_norm.cpp): libtorch's fused forward and backward kernels, then five
//! per-channel sums and two elementwise expressions for the derivative of the backward, where
//! libtorch's generic double backward runs about forty tensor ops. Second-order MAML needs that
//! derivative once per BatchNorm layer and inner step.

use std::os::raw::c_char;

use tch::Tensor;

use crate::{Error, Result};

extern "C" {
    fn metaloop_batch_norm_train(
        x: *const torch_sys::C_tensor,
        weight: *const torch_sys::C_tensor,
        bias: *const torch_sys::C_tensor,
        eps: f64,
        out: *mut *mut torch_sys::C_tensor,
    ) -> *mut c_char;
}

/// `batch_norm(x, weight, bias)` over `[B, C, ...]` with the batch's statistics (training
/// mode, no running statistics), the same values and derivatives as libtorch's, differentiable
/// twice (the second time through the closed form). `weight` and `bias` must be `[C]` for x's
/// C channels.
pub fn batch_norm_train(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    // libtorch's CPU kernel does not check the affine parameters' length (it would read past
    // them), so it is checked here.
    let size = x.size();
    let channels = size.get(1).copied();
    for (what, t) in [("weight", weight), ("bias", bias)] {
        if size.len() < 2 || t.size() != [channels.unwrap_or(0)] {
            return Err(Error::Shape {
                op: "batch_norm",
                expected: format!("x [batch, channels, ...] and {what} [channels]; x is {size:?}"),
                got: t.size(),
            });
        }
    }
    let mut out: *mut torch_sys::C_tensor = std::ptr::null_mut();
    // SAFETY: the three tensors are live for the call; the shim copies what autograd keeps,
    // writes one owned tensor into `out` on success and returns an owned message on failure.
    let message = unsafe {
        metaloop_batch_norm_train(x.as_ptr(), weight.as_ptr(), bias.as_ptr(), eps, &mut out)
    };
    if let Some(text) = super::shim_message(message) {
        return Err(Error::from(tch::TchError::Torch(format!(
            "batch_norm: {text}"
        ))));
    }
    // SAFETY: a fresh heap `at::Tensor` owned by us from now on (tch frees it).
    Ok(unsafe { Tensor::from_ptr(out) })
}
