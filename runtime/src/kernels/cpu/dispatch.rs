//! The CPU dispatch: one call to the kernel of its optimizer, in its dtype. Above every kernel
//! file; nothing below imports it.

use super::{adadelta, adagrad, adam, adamax, rmsprop, rprop, sgd, Env, Real};
use crate::kernels::ffi::KernelCall;
use crate::kernels::StepKernel;

/// Runs one call on the CPU.
///
/// # Safety
/// `call` must come from the shim: every non-null pointer valid for the elements its layout reads
/// (θ's `numel`, a row's `row_len`, the number of rows, or one), of the dtype it names (partial
/// sums: f64), outputs not aliasing inputs.
pub(crate) unsafe fn run(kernel: StepKernel, call: &KernelCall) -> Result<(), String> {
    match call.dtype {
        0 => unsafe { run_typed::<f32>(kernel, call) },
        1 => unsafe { run_typed::<f64>(kernel, call) },
        d => Err(format!("unknown dtype code {d}")),
    }
}

unsafe fn run_typed<T: Real>(kernel: StepKernel, call: &KernelCall) -> Result<(), String> {
    // SAFETY (all): the contract of `run`.
    unsafe {
        let env = Env::<T>::new(call, kernel)?;
        match kernel {
            StepKernel::Sgd => sgd::sgd(&env),
            StepKernel::Adam => adam::adam(&env),
            StepKernel::Adamax => adamax::adamax(&env),
            StepKernel::Adagrad => adagrad::adagrad(&env),
            StepKernel::RMSprop => rmsprop::rmsprop(&env),
            StepKernel::Adadelta => adadelta::adadelta(&env),
            StepKernel::Rprop => rprop::rprop(&env),
        }
    }
    Ok(())
}
