//! Adagrad (torch.optim.Adagrad).
//!
//! It computes one step as a pure function; it keeps nothing between calls.

use super::fused::FusedPlan;
use super::{
    coupled_weight_decay, filled_like, sqrt_finite_grad, Buffer, HValue, OptState, StepInput,
};
use crate::Result;
use tch::Tensor;

optimizer! {
    /// torch.optim.Adagrad, single-tensor algorithm: `g ← g + wd·θ`,
    /// `clr = lr / (1 + (t − 1)·lr_decay)`, `s ← s + g²`, `θ ← θ − clr · g / (√s + ε)`.
    /// Defaults: lr_decay 0, weight_decay 0, initial_accumulator_value 0, eps 1e-10.
    ///
    /// The accumulator `sum` starts at `initial_accumulator_value`. `init_state` fills it with the
    /// builder's value (as torch's state holds); the first update replaces it by the resolved
    /// hyperparameter, so that an override of `initial_accumulator_value` gets its hypergradient.
    pub struct Adagrad("Adagrad") {
        hparams {
            /// The decay of the learning rate with the step count.
            lr_decay: 0.0,
            /// Weight decay, added to the gradient.
            weight_decay: 0.0,
            /// The accumulator's value before the first step.
            initial_accumulator_value: 0.0,
            /// The term added to the denominator.
            eps: 1e-10,
        }
        options {}
        buffers: [Sum],
        kernel: Adagrad,
        restart: [Sum],
    }
}

impl Adagrad {
    fn initial_state(&self, theta: &Tensor) -> Result<OptState> {
        let sum = theta
            .f_full_like(self.initial_accumulator_value)?
            .f_detach()?;
        Ok(OptState::from_buffers(0, vec![(Buffer::Sum, sum)]))
    }

    /// The accumulator starts at the resolved initial value (see the type's docs); later steps
    /// do not read that hyperparameter.
    fn fused_plan(&self, v: &mut [HValue; 5], state: &OptState) -> Result<FusedPlan> {
        let initial = self.initial_accumulator_value;
        Ok(FusedPlan::seeded(
            &Self::DESCRIPTOR,
            state,
            Buffer::Sum,
            v,
            3,
            initial,
        ))
    }

    fn tensor_step(&self, x: StepInput<'_, 5>) -> Result<(Tensor, OptState)> {
        let (theta, grad, state) = (x.theta, x.grad, x.state);
        let [lr, lr_decay, weight_decay, initial, eps] = x.v;
        let step = state.step() + 1;
        let g = coupled_weight_decay(grad, theta, weight_decay)?;
        let clr = lr.div(&lr_decay.mul_scalar((step - 1) as f64)?.add_scalar(1.0)?)?;
        let sum_prev = match state.get(Buffer::Sum) {
            Some(sum) if state.step() > 0 => sum.shallow_clone(),
            _ => filled_like(theta, initial)?,
        };
        let sum = sum_prev.f_add(&g.f_square()?)?;
        let std = eps.add_to(&sqrt_finite_grad(&sum)?)?;
        let theta = theta.f_sub(&clr.scale(&g.f_div(&std)?)?)?;
        Ok((
            theta,
            OptState::from_buffers(step, vec![(Buffer::Sum, sum)]),
        ))
    }
}
