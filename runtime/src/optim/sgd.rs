//! SGD with momentum, dampening, Nesterov momentum and weight decay (torch.optim.SGD).
//!
//! It computes one step as a pure function; it keeps nothing between calls.

use super::fused::FusedPlan;
use super::{coupled_weight_decay, Buffer, HValue, OptState, StepInput};
use crate::Result;
use tch::Tensor;

optimizer! {
    /// torch.optim.SGD, single-tensor algorithm:
    /// `g ← g + wd·θ`; with momentum, `buf ← g` at the first step, `buf ← μ·buf + (1 − τ)·g`
    /// after (τ = dampening), `g ← g + μ·buf` (Nesterov) or `g ← buf`; `θ ← θ − lr·g`.
    /// Defaults: momentum, dampening and weight decay 0.
    ///
    /// Unlike torch, the first-step buffer is `g` itself, not a detached copy, so that the
    /// meta-gradient flows through it. A momentum override tensor always takes the momentum path
    /// (a tensor is never read back to test it for 0); a constant momentum of 0 takes torch's
    /// plain path.
    pub struct Sgd("SGD") {
        hparams {
            /// The momentum factor μ.
            momentum: 0.0,
            /// The dampening τ of the momentum.
            dampening: 0.0,
            /// Coupled weight decay (L2 penalty).
            weight_decay: 0.0,
        }
        options {
            /// Nesterov momentum (torch requires momentum > 0 and dampening 0 for it).
            nesterov: false,
        }
        buffers: [MomentumBuffer],
        kernel: Sgd,
        restart: [MomentumBuffer],
    }
}

impl Sgd {
    fn initial_state(&self, theta: &Tensor) -> Result<OptState> {
        let buffers: &[Buffer] = if self.momentum != 0.0 {
            &[Buffer::MomentumBuffer]
        } else {
            &[]
        };
        OptState::zeros(theta, buffers)
    }

    fn fused_plan(&self, v: &mut [HValue; 4], state: &OptState) -> Result<FusedPlan> {
        let momentum_path = !v[1].is_zero_const();
        let mut plan = FusedPlan::new(&Self::DESCRIPTOR, state);
        plan.params.nesterov = self.nesterov;
        plan.params.momentum = momentum_path;
        plan.keeps = vec![momentum_path];
        Ok(plan)
    }

    fn tensor_step(&self, x: StepInput<'_, 4>) -> Result<(Tensor, OptState)> {
        let (theta, grad, state) = (x.theta, x.grad, x.state);
        let [lr, momentum, dampening, weight_decay] = x.v;
        let mut g = coupled_weight_decay(grad, theta, weight_decay)?;
        let mut buffers = Vec::new();
        if !momentum.is_zero_const() {
            let buf = if state.step() == 0 {
                g.shallow_clone()
            } else {
                let prev = state.or_zeros(Buffer::MomentumBuffer, theta)?;
                let fresh = if dampening.is_zero_const() {
                    g.shallow_clone()
                } else {
                    dampening.rsub(1.0)?.scale(&g)?
                };
                momentum.scale(&prev)?.f_add(&fresh)?
            };
            g = if self.nesterov {
                g.f_add(&momentum.scale(&buf)?)?
            } else {
                buf.shallow_clone()
            };
            buffers.push((Buffer::MomentumBuffer, buf));
        }
        let theta = theta.f_sub(&lr.scale(&g)?)?;
        Ok((theta, OptState::from_buffers(state.step() + 1, buffers)))
    }
}
