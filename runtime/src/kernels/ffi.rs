//! The C ABI between runtime::kernels and the C++ shim (runtime/csrc/fused_step.cpp): the layout
//! of one kernel call, the constants of one step, and the shim's entry points.
//!
//! It declares; it never calls anything itself. `KernelCall` mirrors `MetaloopKernelCall`
//! (fused_step.cpp) and `StepParams` mirrors `MetaloopStepParams` (runtime/csrc/step_params.h,
//! which the CUDA source includes too) field for field; a change on one side needs the same
//! change on the other. The sizes are checked at compile time on both sides.

use std::os::raw::{c_char, c_void};
use torch_sys::C_tensor;

pub(crate) const MAX_IN: usize = 16;
pub(crate) const MAX_OUT: usize = 8;
/// The most hyperparameter slots a step has.
pub(crate) const MAX_HPARAMS: usize = 8;
/// A bit of the op code given to `metaloop_fused_step`: the gradient of θ is the gradient of θ'
/// (no weight decay), so the backward passes it on and the kernel does not write it.
pub(crate) const THETA_GRAD_PASSES: i32 = 1 << 8;

/// One kernel launch, forward (`pass` 0) or backward (`pass` 1).
#[repr(C)]
pub(crate) struct KernelCall {
    pub op: i32,
    pub pass: i32,
    /// 0: f32, 1: f64.
    pub dtype: i32,
    /// -1: CPU, else the CUDA device index.
    pub device: i32,
    /// The CUDA stream to launch on (null: the legacy default stream).
    pub stream: *mut c_void,
    pub numel: i64,
    /// The length of θ's rows (its last dimension; a task row of `[T, P]`).
    pub row_len: i64,
    /// CPU: the element range this call covers, chunk `chunk` of `kGrain` elements (the shim
    /// splits the buffers over libtorch's intra-op threads). CUDA: 0, numel and chunk 0.
    pub begin: i64,
    pub end: i64,
    pub chunk: i64,
    pub n_in: i32,
    pub n_out: i32,
    /// θ, g, the state buffers, the hyperparameter slots; null for an absent buffer or a
    /// constant hyperparameter (its value is then `params.hparams[h]`).
    pub input: [*const c_void; MAX_IN],
    /// The layout of each input: 0 one value for every element, 1 one per element (laid out like
    /// θ), 2 one per element of a row (`[P]` broadcast over the rows: element `i % row_len`), 3
    /// one per row (`[T, 1]`: element `i / row_len`).
    pub in_mode: [i64; MAX_IN],
    /// Backward only: the gradient of each forward output.
    pub grad_out: [*const c_void; MAX_OUT],
    /// Forward: θ' and the new state. Backward: the gradient of each input, one value per
    /// element, or (where `out_reduced`) f64 partial sums (null: not needed).
    pub out: [*mut c_void; MAX_IN],
    /// Backward, CPU: 1 where `out` holds partial sums of the gradient of a one-value (layout 0)
    /// or one-per-row (layout 3) input: `[chunks, 1]` or `[chunks, rows]`, f64, zeroed; the kernel
    /// adds each chunk's sums into its own row.
    pub out_reduced: [i64; MAX_IN],
    pub params: StepParams,
}

/// The constants of one fused step: the value of each constant hyperparameter and the options
/// that select the kernel's arithmetic. One struct serves every optimizer; each reads the fields
/// its step has (runtime::optim's descriptors say which) and leaves the others at their default.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepParams {
    /// The constant of each hyperparameter slot, in the kernel's order (NaN where the slot holds
    /// a tensor; filled by [`super::fused_step`] from the slots).
    pub hparams: [f64; MAX_HPARAMS],
    /// The step count t after this step (1 at the first step).
    pub step: i64,
    /// The first step: the state buffers start from their initial values (SGD's momentum buffer
    /// from g, Adagrad's sum from `initial_accumulator_value`, Rprop's step sizes from lr).
    pub first: bool,
    /// SGD: Nesterov momentum.
    pub nesterov: bool,
    /// SGD, RMSprop: the momentum path (a momentum buffer is read and written).
    pub momentum: bool,
    /// Adam: decoupled weight decay (AdamW).
    pub decoupled: bool,
    /// Adam: AMSGrad's running maximum of the second moment.
    pub amsgrad: bool,
    /// RMSprop: centered (normalised by the variance estimate).
    pub centered: bool,
}

impl Default for StepParams {
    /// The first step with every option off.
    fn default() -> StepParams {
        StepParams {
            hparams: [f64::NAN; MAX_HPARAMS],
            step: 1,
            first: true,
            nesterov: false,
            momentum: false,
            decoupled: false,
            amsgrad: false,
            centered: false,
        }
    }
}

// The layout `MetaloopStepParams` has in C (step_params.h asserts the same size).
const _: () = assert!(std::mem::size_of::<StepParams>() == 80);
const _: () = assert!(std::mem::align_of::<StepParams>() == 8);

/// The kernel entry point the shim calls: 0 on success, otherwise a message written into `err`.
pub(crate) type KernelFn = unsafe extern "C" fn(*const KernelCall, *mut c_char, usize) -> i32;

extern "C" {
    pub(crate) fn metaloop_fused_step(
        op: i32,
        inputs: *const *const C_tensor,
        n_in: i32,
        params: *const StepParams,
        n_out: i32,
        kernel: KernelFn,
        outputs: *mut *mut C_tensor,
    ) -> *mut c_char;
    pub(crate) fn metaloop_free_message(msg: *mut c_char);
    pub(crate) fn metaloop_shim_current_stream() -> i32;
    pub(crate) fn metaloop_preload_library(path: *const c_char) -> i32;
}
