//! Fused optimizer kernels: one kernel per optimizer step over the flat `[P]` or `[T, P]`
//! buffers, forward and backward, registered with libtorch's autograd so that differentiable
//! inner steps inside the graph use them. Every optimizer of runtime::optim has one (SGD,
//! Adam/AdamW, Adamax, Adagrad, RMSprop, Adadelta, Rprop), with every option of its tensor-op
//! path.
//!
//! How the pieces fit:
//! - `runtime/csrc/fused_step.cpp` (compiled by runtime's build.rs against libtorch's headers) is a
//!   `torch::autograd::Function`. Its forward lays out the inputs (θ, g, the state buffers, the
//!   tensor hyperparameters; contiguous, in θ's dtype; a hyperparameter stays one value, one per
//!   task row (`[T, 1]`) or one per element of a row (`[P]` for θ `[T, P]`) instead of being
//!   expanded to θ's shape), allocates θ' and the new state, and calls back into
//!   [`kernel_entry`] here; it saves the inputs. Its backward calls the same entry with the output
//!   gradients and receives the gradient of every input that needs one (θ, g, each state buffer,
//!   each tensor hyperparameter: the hypergradient). On the CPU the kernel sums the hypergradient
//!   of a one-value or per-row hyperparameter itself (f64 partial sums per chunk and row, which
//!   the shim adds); other hyperparameters get a per-element buffer that the shim reduces to their
//!   shape (`at::sum_to`). Without weight decay ∂θ = ∂θ', which the shim passes on as it is. The
//!   backward recomputes the forward's intermediate values from the saved inputs inside the same
//!   kernel, so nothing else is saved.
//! - The arithmetic lives in Rust: `cpu` (one loop per option set, over blocks of contiguous
//!   operands, which LLVM vectorizes with baseline x86-64 SIMD; the shim splits the buffers into
//!   chunks of 32,768 elements over libtorch's intra-op threads with at::parallel_for, so a
//!   smaller buffer runs on one thread) and `cuda` (CUDA C compiled with NVRTC at run time,
//!   cached per device, launched on the stream the shim passes: libtorch's current stream when
//!   the shim was built with the CUDA headers, the legacy default stream otherwise, see
//!   [`launches_on_current_stream`]).
//! - The backward is differentiable once: enough for second-order MAML (the meta-gradient flows
//!   through the step's backward into the gradient's own graph). Differentiating the backward
//!   again (`create_graph` through a step) is refused with an error; build the optimizer with
//!   `.fused(false)` for that.
//! - Why: one fused pass reads and writes each buffer once where the tensor ops make a dozen
//!   passes and allocate a buffer per op. How it compares with the tensor ops per optimizer is
//!   measured in benches/README.md (`cargo bench -p metaloop --bench optim_step`).
//! - The step's constants cross from Rust to C++ and CUDA as one `#[repr(C)]` struct,
//!   [`StepParams`] (runtime/csrc/step_params.h on the C side): the constant hyperparameters by
//!   slot and the options by name.
//!
//! runtime::optim decides when to call [`fused_step`] (its tensor-op path stays the reference and
//! the fallback). This module is the only one with unsafe code or raw pointers; it knows nothing
//! of models, parameter names or hyperparameter names, and never prints.

mod batch_norm;
mod cpu;
mod cuda;
pub(crate) mod device_ffi;
mod ffi;
pub(crate) mod host_ffi;
mod step;

pub use batch_norm::batch_norm_train;
pub use ffi::StepParams;
pub use step::{Slot, StepKernel};

use crate::{Error, Result};
use std::ffi::CStr;
use std::os::raw::c_char;
use tch::{Device, Kind, Tensor};

/// True when a fused kernel can run a step on `theta`: f32 or f64, on the CPU, or on a CUDA
/// device when this build has the CUDA kernels and NVRTC and the driver load.
pub fn supports(theta: &Tensor) -> bool {
    if !matches!(theta.kind(), Kind::Float | Kind::Double) {
        return false;
    }
    match theta.device() {
        Device::Cpu => true,
        Device::Cuda(_) => cuda::available(),
        _ => false,
    }
}

/// True when the shim was compiled with libtorch's CUDA headers and launches CUDA kernels on
/// libtorch's current stream; false when it launches them on the legacy default stream (which is
/// libtorch's stream unless the caller set another one).
pub fn launches_on_current_stream() -> bool {
    // SAFETY: a plain C function with no arguments.
    unsafe { ffi::metaloop_shim_current_stream() == 1 }
}

/// The CUDA C source of the kernels (compiled with NVRTC at run time).
pub fn cuda_source() -> &'static str {
    cuda::SOURCE
}

/// Compiles the CUDA source with NVRTC (no GPU needed, only libnvrtc) and returns the PTX's
/// length; an error when NVRTC cannot be loaded or the source does not compile.
pub fn compile_cuda_source() -> Result<usize> {
    cuda::compile_check().map_err(|message| Error::Kernel {
        optimizer: "all",
        message,
    })
}

/// One fused optimizer step through the autograd function. `states` has
/// [`StepKernel::state_slots`] entries (None: absent, read as zeros where the step needs it),
/// `hparams` [`StepKernel::hparam_count`]; `params` holds the step count and the options (its
/// `hparams` field is filled here from the slots). Returns θ' and the `n_out - 1` new state
/// buffers, each shaped like θ, tracked by autograd when any input is.
pub fn fused_step(
    kernel: StepKernel,
    theta: &Tensor,
    grad: &Tensor,
    states: &[Option<&Tensor>],
    hparams: &[Slot<'_>],
    mut params: StepParams,
    n_out: usize,
) -> Result<(Tensor, Vec<Tensor>)> {
    let fail = |message: String| Error::Kernel {
        optimizer: kernel.name(),
        message,
    };
    if states.len() != kernel.state_slots() || hparams.len() != kernel.hparam_count() {
        return Err(fail(format!(
            "{} state buffers and {} hyperparameters given, {} and {} expected",
            states.len(),
            hparams.len(),
            kernel.state_slots(),
            kernel.hparam_count()
        )));
    }
    if hparams.len() > ffi::MAX_HPARAMS || n_out == 0 || n_out > ffi::MAX_OUT {
        return Err(fail(format!(
            "{} hyperparameters, {n_out} outputs",
            hparams.len()
        )));
    }
    let inputs = input_pointers(theta, grad, states, hparams, &mut params);
    let op = kernel as i32
        | if kernel.theta_grad_passes(hparams) {
            ffi::THETA_GRAD_PASSES
        } else {
            0
        };
    let mut outputs: Vec<*mut torch_sys::C_tensor> = vec![std::ptr::null_mut(); n_out];
    // SAFETY: every input pointer is null or a live tensor borrowed for this call; the shim copies
    // the tensors it keeps (autograd holds its own references), writes `n_out` owned tensor
    // pointers into `outputs` on success and returns an owned message on failure.
    let message = unsafe {
        ffi::metaloop_fused_step(
            op,
            inputs.as_ptr(),
            inputs.len() as i32,
            &params,
            n_out as i32,
            kernel_entry,
            outputs.as_mut_ptr(),
        )
    };
    if let Some(text) = shim_message(message) {
        return Err(fail(text));
    }
    // SAFETY: each pointer is a fresh heap `at::Tensor` owned by us from now on (tch frees it).
    let mut outputs = outputs.into_iter().map(|p| unsafe { Tensor::from_ptr(p) });
    let theta = outputs
        .next()
        .ok_or_else(|| fail("the shim returned no θ'".to_string()))?;
    Ok((theta, outputs.collect()))
}

/// The shim's input slots (θ, g, the state buffers, the hyperparameters; null for an absent
/// buffer or a constant), with each constant hyperparameter written into `params`.
fn input_pointers(
    theta: &Tensor,
    grad: &Tensor,
    states: &[Option<&Tensor>],
    hparams: &[Slot<'_>],
    params: &mut StepParams,
) -> Vec<*const torch_sys::C_tensor> {
    let mut inputs: Vec<*const torch_sys::C_tensor> = vec![theta.as_ptr(), grad.as_ptr()];
    inputs.extend(
        states
            .iter()
            .map(|s| s.map_or(std::ptr::null(), |t| t.as_ptr())),
    );
    params.hparams = [f64::NAN; ffi::MAX_HPARAMS];
    for (h, slot) in hparams.iter().enumerate() {
        match slot {
            Slot::Const(c) => {
                inputs.push(std::ptr::null());
                params.hparams[h] = *c;
            }
            Slot::Tensor(t) => inputs.push(t.as_ptr()),
        }
    }
    inputs
}

/// The text of an error message a shim returned (null: none), which this frees. Every shim
/// function that fails returns its message this way (runtime/csrc/message.h).
pub(crate) fn shim_message(message: *mut c_char) -> Option<String> {
    if message.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated string a shim allocated with malloc, not yet freed; freed once,
    // here, by the shim's own free.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    unsafe { ffi::metaloop_free_message(message) };
    Some(text)
}

/// The kernel function the shim calls, forward and backward, CPU and CUDA. Panics are caught
/// (they must not unwind into C++) and reported as errors.
unsafe extern "C" fn kernel_entry(
    call: *const ffi::KernelCall,
    err: *mut c_char,
    len: usize,
) -> i32 {
    let result = std::panic::catch_unwind(|| {
        // SAFETY: the shim passes a valid call for the duration of this function.
        let call = unsafe { &*call };
        let kernel =
            StepKernel::from_code(call.op).ok_or_else(|| format!("unknown op {}", call.op))?;
        if call.device < 0 {
            // SAFETY: pointers laid out by the shim (see cpu::run).
            unsafe { cpu::run(kernel, call) }
        } else {
            // SAFETY: device pointers laid out by the shim (see cuda::run).
            unsafe { cuda::run(kernel, call) }
        }
    });
    let message = match result {
        Ok(Ok(())) => return 0,
        Ok(Err(m)) => m,
        Err(_) => "the kernel panicked".to_string(),
    };
    if !err.is_null() && len > 0 {
        let bytes = message.as_bytes();
        let n = bytes.len().min(len - 1);
        // SAFETY: `err` has room for `len` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), err.cast::<u8>(), n);
            *err.add(n) = 0;
        }
    }
    1
}
