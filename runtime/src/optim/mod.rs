//! Differentiable optimizers: pure updates `(θ, g, state, hparams) → (θ', state')` on flat tensors.
//!
//! One code path serves the differentiable inner steps (every update is built from autograd-tracked
//! tensor ops, so `θ'` is differentiable w.r.t. `θ`, `g`, the state and every hyperparameter tensor),
//! first-order steps (the caller detaches) and the outer optimizer. `θ` and `g` are `[P]` (one task)
//! or `[T, P]` (T tasks; every op broadcasts so that each task row is independent).
//!
//! The algorithms equal torch.optim 2.11.0's single-tensor (`foreach=False`) ones, first-step
//! special cases, bias corrections and the order of weight decay included. Where torch takes a
//! square root of a quantity that is exactly zero (an element whose gradient is always zero), the
//! value is torch's but the derivative is masked to zero, so hypergradients stay finite (the NaN of
//! higher #125 and TorchOpt #26).
//!
//! Each optimizer is declared once with `optimizer!` (declare.rs: its options with torch's
//! defaults, setters, hyperparameter names, state buffers and, optionally, its fused kernel) and
//! writes only its arithmetic; `fused` is the one place that hands a step to runtime::kernels. Its
//! state names each buffer with a [`Buffer`].
//!
//! # Adding an optimizer
//!
//! The files it touches, and nothing else:
//! 1. `runtime/src/optim/<name>.rs`: the `optimizer!` declaration (hyperparameters with torch's
//!    defaults, options, `buffers`) and two methods, `initial_state` and `tensor_step`.
//!    [`RAdam`] (radam.rs) is such a file.
//! 2. `runtime/src/optim/mod.rs` (this file): `mod <name>;` and `pub use <name>::<Type>;`.
//!
//! Only when the optimizer keeps a buffer that torch names differently from every [`Buffer`]:
//! 3. `runtime/src/optim/state.rs`: the variant, its torch name in `Buffer::name`, and
//!    `Buffer::ALL`.
//!
//! A fused kernel is optional: without one, `fused(true)` falls back to the tensor-op path
//! ([`Optimizer::fused_kernel`] is `None`). Adding one later touches `kernel:`, `restart:` and a
//! `fused_plan` method in the optimizer's file, plus runtime::kernels: a `StepKernel` variant
//! (kernels/step.rs), `kernels/cpu/<name>.rs` with its `mod` line in kernels/cpu/mod.rs and its
//! arm in kernels/cpu/dispatch.rs, and the CUDA kernel in kernels/cuda.cu with its name in
//! kernels/cuda.rs.
//!
//! The engine builds any of these as the inner optimizer (`algorithm.inner_optimizer`) and as the
//! outer one (`outer.optimizer`), so a new optimizer is for library users until
//! engine/src/config/choice.rs and engine/src/outer_options.rs name it.
//!
//! This module must not mutate its inputs, keep tensors between calls, read a tensor's value back to
//! the host (no GPU sync), know about models or parameter names, or print.

#[macro_use]
mod declare;
mod adadelta;
mod adagrad;
mod adam;
pub(crate) mod fused;
mod hparams;
mod radam;
mod rmsprop;
mod rprop;
mod sgd;
mod state;

pub use adadelta::Adadelta;
pub use adagrad::Adagrad;
pub use adam::{Adam, AdamW, Adamax};
pub use hparams::{HParams, HValue};
pub use radam::RAdam;
pub use rmsprop::RMSprop;
pub use rprop::Rprop;
pub use sgd::Sgd;
pub use state::{Buffer, OptState};

use crate::{Error, Result};
use tch::Tensor;

/// A differentiable optimizer: a pure function of (θ, g, state, hyperparameters).
pub trait Optimizer: std::fmt::Debug + Send + Sync {
    /// torch.optim's class name: "SGD", "Adam", ...
    fn name(&self) -> &'static str;
    /// The hyperparameter names, torch.optim's with tuples split (`betas` → `beta1`, `beta2`).
    fn hparam_names(&self) -> &'static [&'static str];
    /// The value the builder set for `name`; `None` for a name this optimizer does not have.
    fn hparam_default(&self, name: &str) -> Option<f64>;
    /// The state before the first step (zeros, or torch's initial values), shaped like `theta`,
    /// detached from any graph.
    fn init_state(&self, theta: &Tensor) -> Result<OptState>;
    /// One step. `hp` holds one value per name of `hparam_names` (a missing one takes the builder's
    /// value). Returns the new parameters and the new state; neither input is modified.
    fn update(
        &self,
        theta: &Tensor,
        grad: &Tensor,
        state: &OptState,
        hp: &HParams,
    ) -> Result<(Tensor, OptState)>;
    /// The fused kernel that `fused(true)` steps run, or `None` when the optimizer has none
    /// and every step takes the tensor-op path.
    fn fused_kernel(&self) -> Option<crate::kernels::StepKernel> {
        None
    }
    /// A boxed copy (options and builder values).
    fn box_clone(&self) -> Box<dyn Optimizer>;
}

impl Clone for Box<dyn Optimizer> {
    fn clone(&self) -> Self {
        self.box_clone()
    }
}

/// What an optimizer's tensor-op step reads: θ, g, the state before the step, and the value of
/// each hyperparameter in the optimizer's name order.
pub(crate) struct StepInput<'a, const N: usize> {
    pub theta: &'a Tensor,
    pub grad: &'a Tensor,
    pub state: &'a OptState,
    pub v: &'a [HValue; N],
}

/// Checks that `grad` has the shape of `theta`, the one precondition every update shares.
pub(crate) fn check_shapes(op: &'static str, theta: &Tensor, grad: &Tensor) -> Result<()> {
    let want = theta.size();
    let got = grad.size();
    if want != got {
        return Err(Error::Shape {
            op,
            expected: format!("gradient of the parameters' shape {want:?}"),
            got,
        });
    }
    Ok(())
}

/// `sqrt(x)` whose value is torch's (0 at 0) but whose derivative is 0 where `x == 0` instead of
/// `inf` (which, times a zero upstream gradient, gives NaN). Negative inputs stay NaN as in torch.
/// When `x` is not tracked by autograd it is a plain `sqrt`.
pub(crate) fn sqrt_finite_grad(x: &Tensor) -> Result<Tensor> {
    if !x.requires_grad() {
        return Ok(x.f_sqrt()?);
    }
    let zero = x.f_eq(0.0)?;
    let safe = x.f_masked_fill(&zero, 1.0)?;
    Ok(safe.f_sqrt()?.f_masked_fill(&zero, 0.0)?)
}

/// torch's coupled weight decay `g + weight_decay * θ`, skipped for a constant 0.
pub(crate) fn coupled_weight_decay(
    grad: &Tensor,
    theta: &Tensor,
    weight_decay: &HValue,
) -> Result<Tensor> {
    if weight_decay.is_zero_const() {
        return Ok(grad.shallow_clone());
    }
    Ok(grad.f_add(&weight_decay.scale(theta)?)?)
}

/// The running average of squares `prev * beta + g² * (1 - beta)` (torch's
/// `mul_(beta).addcmul_(g, g, value=1 - beta)`).
pub(crate) fn ema_of_squares(prev: &Tensor, grad: &Tensor, beta: &HValue) -> Result<Tensor> {
    let decayed = beta.scale(prev)?;
    let fresh = beta.rsub(1.0)?.scale(&grad.f_square()?)?;
    Ok(decayed.f_add(&fresh)?)
}

/// A tensor shaped like `theta` filled with `value` (a hyperparameter that seeds a buffer at the
/// first step: Adagrad's initial accumulator, Rprop's initial step size), tracked when it is one.
pub(crate) fn filled_like(theta: &Tensor, value: &HValue) -> Result<Tensor> {
    Ok(match value {
        HValue::Const(c) => theta.f_full_like(*c)?.f_detach()?,
        HValue::Tensor(t) => theta.f_zeros_like()?.f_detach()?.f_add(t)?,
    })
}
