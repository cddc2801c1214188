//! Adadelta (torch.optim.Adadelta).
//!
//! It computes one step as a pure function; it keeps nothing between calls.

use super::fused::FusedPlan;
use super::{
    coupled_weight_decay, ema_of_squares, sqrt_finite_grad, Buffer, HValue, OptState, StepInput,
};
use crate::Result;
use tch::Tensor;

optimizer! {
    /// torch.optim.Adadelta, single-tensor algorithm: `g ← g + wd·θ`, `v ← ρ·v + (1 − ρ)·g²`,
    /// `δ = √(a + ε) / √(v + ε) · g`, `a ← ρ·a + (1 − ρ)·δ²`, `θ ← θ − lr·δ`.
    /// Defaults: lr 1.0 in torch (given here to `new`), rho 0.9, eps 1e-6, weight_decay 0.
    pub struct Adadelta("Adadelta") {
        hparams {
            /// The decay rate ρ of the running averages.
            rho: 0.9,
            /// The term added inside both square roots.
            eps: 1e-6,
            /// Weight decay, added to the gradient.
            weight_decay: 0.0,
        }
        options {}
        buffers: [SquareAvg, AccDelta],
        kernel: Adadelta,
        restart: [],
    }
}

impl Adadelta {
    fn initial_state(&self, theta: &Tensor) -> Result<OptState> {
        OptState::zeros(theta, &[Buffer::SquareAvg, Buffer::AccDelta])
    }

    fn fused_plan(&self, _: &mut [HValue; 4], state: &OptState) -> Result<FusedPlan> {
        Ok(FusedPlan::new(&Self::DESCRIPTOR, state))
    }

    fn tensor_step(&self, x: StepInput<'_, 4>) -> Result<(Tensor, OptState)> {
        let (theta, grad, state) = (x.theta, x.grad, x.state);
        let [lr, rho, eps, weight_decay] = x.v;
        let g = coupled_weight_decay(grad, theta, weight_decay)?;
        let square_avg = ema_of_squares(&state.or_zeros(Buffer::SquareAvg, theta)?, &g, rho)?;
        let acc_prev = state.or_zeros(Buffer::AccDelta, theta)?;
        // Both roots are of quantities ≥ ε > 0; the masked root only matters for an eps override
        // of 0, where it keeps the backward finite.
        let std = sqrt_finite_grad(&eps.add_to(&square_avg)?)?;
        let delta = sqrt_finite_grad(&eps.add_to(&acc_prev)?)?
            .f_div(&std)?
            .f_mul(&g)?;
        let acc_delta = ema_of_squares(&acc_prev, &delta, rho)?;
        let theta = theta.f_sub(&lr.scale(&delta)?)?;
        let buffers = vec![
            (Buffer::SquareAvg, square_avg),
            (Buffer::AccDelta, acc_delta),
        ];
        Ok((theta, OptState::from_buffers(state.step() + 1, buffers)))
    }
}
