//! RMSprop, plain or centered, with momentum and weight decay (torch.optim.RMSprop).
//!
//! It computes one step as a pure function; it keeps nothing between calls.

use super::fused::FusedPlan;
use super::{
    coupled_weight_decay, ema_of_squares, sqrt_finite_grad, Buffer, HValue, OptState, StepInput,
};
use crate::Result;
use tch::Tensor;

optimizer! {
    /// torch.optim.RMSprop, single-tensor algorithm: `g ← g + wd·θ`, `v ← α·v + (1 − α)·g²`;
    /// centered: `ḡ ← lerp(ḡ, g, 1 − α)`, `d = √(v − ḡ²) + ε`, else `d = √v + ε`; with momentum
    /// `b ← μ·b + g/d`, `θ ← θ − lr·b`, else `θ ← θ − lr·g/d`. Defaults: alpha 0.99, eps 1e-8,
    /// weight_decay 0, momentum 0.
    ///
    /// A momentum override tensor always takes the momentum path (torch tests `momentum > 0`; a
    /// tensor is never read back), starting from a zero buffer as torch does.
    pub struct RMSprop("RMSprop") {
        hparams {
            /// The smoothing constant α of the running averages.
            alpha: 0.99,
            /// The term added to the denominator.
            eps: 1e-8,
            /// Weight decay, added to the gradient.
            weight_decay: 0.0,
            /// The momentum factor μ.
            momentum: 0.0,
        }
        options {
            /// Normalize by an estimate of the gradient's variance instead of its second moment.
            centered: false,
        }
        buffers: [SquareAvg, MomentumBuffer, GradAvg],
        kernel: RMSprop,
        restart: [],
    }
}

/// True when the step takes the momentum path: any momentum but a constant ≤ 0.
fn momentum_path(momentum: &HValue) -> bool {
    !momentum.as_const().is_some_and(|m| m <= 0.0)
}

impl RMSprop {
    fn initial_state(&self, theta: &Tensor) -> Result<OptState> {
        let mut buffers = vec![Buffer::SquareAvg];
        if self.momentum > 0.0 {
            buffers.push(Buffer::MomentumBuffer);
        }
        if self.centered {
            buffers.push(Buffer::GradAvg);
        }
        OptState::zeros(theta, &buffers)
    }

    fn fused_plan(&self, v: &mut [HValue; 5], state: &OptState) -> Result<FusedPlan> {
        let momentum = momentum_path(&v[4]);
        let mut plan = FusedPlan::new(&Self::DESCRIPTOR, state);
        plan.params.centered = self.centered;
        plan.params.momentum = momentum;
        plan.keeps = vec![true, momentum, self.centered];
        Ok(plan)
    }

    fn tensor_step(&self, x: StepInput<'_, 5>) -> Result<(Tensor, OptState)> {
        let (theta, grad, state) = (x.theta, x.grad, x.state);
        let [lr, alpha, eps, weight_decay, momentum] = x.v;
        let g = coupled_weight_decay(grad, theta, weight_decay)?;
        let square_avg = ema_of_squares(&state.or_zeros(Buffer::SquareAvg, theta)?, &g, alpha)?;
        let mut buffers = vec![(Buffer::SquareAvg, square_avg.shallow_clone())];
        let mut grad_avg = None;
        let avg = if self.centered {
            let avg = alpha
                .rsub(1.0)?
                .lerp(&state.or_zeros(Buffer::GradAvg, theta)?, &g)?;
            let variance = square_avg.f_sub(&avg.f_square()?)?;
            grad_avg = Some(avg);
            sqrt_finite_grad(&variance)?
        } else {
            sqrt_finite_grad(&square_avg)?
        };
        let avg = eps.add_to(&avg)?;
        let direction = if !momentum_path(momentum) {
            g.f_div(&avg)?
        } else {
            let prev = state.or_zeros(Buffer::MomentumBuffer, theta)?;
            let buf = momentum.scale(&prev)?.f_add(&g.f_div(&avg)?)?;
            buffers.push((Buffer::MomentumBuffer, buf.shallow_clone()));
            buf
        };
        if let Some(avg) = grad_avg {
            buffers.push((Buffer::GradAvg, avg));
        }
        let theta = theta.f_sub(&lr.scale(&direction)?)?;
        Ok((theta, OptState::from_buffers(state.step() + 1, buffers)))
    }
}
