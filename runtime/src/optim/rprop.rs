//! Rprop (torch.optim.Rprop), and what its piecewise-constant pieces give as hypergradients.
//!
//! It computes one step as a pure function; it keeps nothing between calls.

use super::fused::FusedPlan;
use super::{filled_like, Buffer, HValue, OptState, StepInput};
use crate::Result;
use tch::Tensor;

optimizer! {
    /// torch.optim.Rprop, single-tensor algorithm. Per element, with `s = sign(g · prev)`:
    /// `η = eta_plus` if `s > 0`, `eta_minus` if `s < 0`, else 1;
    /// `step_size ← clamp(step_size · η, step_size_min, step_size_max)`; where `s < 0` the gradient
    /// is taken as 0 (no move, and `prev ← 0`); `θ ← θ − sign(g) · step_size`; `prev ← g`.
    /// Step sizes start at `lr`. Defaults: etas (0.5, 1.2), step_sizes (1e-6, 50).
    ///
    /// Hypergradients. `sign` is piecewise constant: its derivative is 0 (libtorch's `sign`
    /// backward), so no gradient flows through the direction of a step or through the choice of
    /// η; in particular `∂θ'/∂g = 0` and `∂θ'/∂θ = I`. Gradient flows through the step sizes only:
    /// - `lr`: through the initial step sizes, times every η applied since, for the elements that
    ///   the clamp has not cut off since (`clamp` passes gradient where `min ≤ x ≤ max`, bounds
    ///   included);
    /// - `eta_minus`/`eta_plus`: through the factor of each element that took that branch;
    /// - `step_size_min`/`step_size_max`: from the elements clamped to that bound at a step
    ///   (strictly outside it before the clamp), carried on by later η factors.
    ///
    /// Like this, the meta-gradient equals the derivative of the step away from the measure-zero
    /// sets where a sign flips or a step size sits exactly on a bound; finite differences agree
    /// there.
    ///
    /// `init_state` fills `step_size` with the builder's `lr` (as torch's state holds); the first
    /// update replaces it by the resolved `lr`, so that an `lr` override gets its hypergradient.
    pub struct Rprop("Rprop") {
        hparams {
            /// The factor η− where the gradient's sign flipped (0 < η− < 1).
            eta_minus: 0.5,
            /// The factor η+ where it kept its sign (η+ > 1).
            eta_plus: 1.2,
            /// The lower bound of the step sizes.
            step_size_min: 1e-6,
            /// The upper bound of the step sizes.
            step_size_max: 50.0,
        }
        options {}
        buffers: [Prev, StepSize],
        kernel: Rprop,
        restart: [StepSize],
    }
}

impl Rprop {
    /// The factors `(eta_minus, eta_plus)` (0 < eta_minus < 1 < eta_plus).
    pub fn etas(self, eta_minus: f64, eta_plus: f64) -> Rprop {
        self.eta_minus(eta_minus).eta_plus(eta_plus)
    }

    /// The bounds `(step_size_min, step_size_max)` of the step sizes.
    pub fn step_sizes(self, min: f64, max: f64) -> Rprop {
        self.step_size_min(min).step_size_max(max)
    }

    fn initial_state(&self, theta: &Tensor) -> Result<OptState> {
        let prev = theta.f_zeros_like()?.f_detach()?;
        let step_size = theta.f_full_like(self.lr)?.f_detach()?;
        let buffers = vec![(Buffer::Prev, prev), (Buffer::StepSize, step_size)];
        Ok(OptState::from_buffers(0, buffers))
    }

    /// The step sizes start at the resolved lr; later steps do not read lr.
    fn fused_plan(&self, v: &mut [HValue; 5], state: &OptState) -> Result<FusedPlan> {
        Ok(FusedPlan::seeded(
            &Self::DESCRIPTOR,
            state,
            Buffer::StepSize,
            v,
            0,
            self.lr,
        ))
    }

    fn tensor_step(&self, x: StepInput<'_, 5>) -> Result<(Tensor, OptState)> {
        let (theta, grad, state) = (x.theta, x.grad, x.state);
        let [lr, eta_minus, eta_plus, step_size_min, step_size_max] = x.v;
        let prev = state.or_zeros(Buffer::Prev, theta)?;
        let step_size_prev = match state.get(Buffer::StepSize) {
            Some(s) if state.step() > 0 => s.shallow_clone(),
            _ => filled_like(theta, lr)?,
        };
        let sign = grad.f_mul(&prev)?.f_sign()?;
        let grew = sign.f_gt(0.0)?;
        let flipped = sign.f_lt(0.0)?;
        let ones = theta.f_ones_like()?.f_detach()?;
        let factor = select(&flipped, eta_minus, &select(&grew, eta_plus, &ones)?)?;
        let scaled = step_size_prev.f_mul(&factor)?;
        let lower = match step_size_min {
            HValue::Const(c) => scaled.f_clamp_min(*c)?,
            HValue::Tensor(t) => scaled.f_clamp_min_tensor(t)?,
        };
        let step_size = match step_size_max {
            HValue::Const(c) => lower.f_clamp_max(*c)?,
            HValue::Tensor(t) => lower.f_clamp_max_tensor(t)?,
        };
        let g = grad.f_masked_fill(&flipped, 0.0)?;
        let theta = theta.f_sub(&g.f_sign()?.f_mul(&step_size)?)?;
        let buffers = vec![(Buffer::Prev, g), (Buffer::StepSize, step_size)];
        Ok((theta, OptState::from_buffers(state.step() + 1, buffers)))
    }
}

/// `where(cond, value, other)`, differentiable in a tensor `value`.
fn select(cond: &Tensor, value: &HValue, other: &Tensor) -> Result<Tensor> {
    Ok(match value {
        HValue::Const(c) => other.f_masked_fill(cond, *c)?,
        HValue::Tensor(t) => t.f_where_self(cond, other)?,
    })
}
