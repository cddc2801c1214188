//! Adam, AdamW (decoupled weight decay) and Adamax (torch.optim.Adam, AdamW, Adamax).
//!
//! Each computes one step as a pure function; they keep nothing between calls.

use super::fused::FusedPlan;
use super::{
    coupled_weight_decay, ema_of_squares, sqrt_finite_grad, Buffer, HValue, OptState, StepInput,
};
use crate::Result;
use tch::Tensor;

optimizer! {
    /// torch.optim.Adam (weight decay added to the gradient). Defaults: betas (0.9, 0.999), eps
    /// 1e-8, weight_decay 0.
    pub struct Adam("Adam") {
        hparams {
            /// The decay rate β1 of the first moment.
            beta1: 0.9,
            /// The decay rate β2 of the second moment.
            beta2: 0.999,
            /// The term added to the denominator.
            eps: 1e-8,
            /// Weight decay, added to the gradient.
            weight_decay: 0.0,
        }
        options {
            /// Normalize by the running maximum of the second moment (AMSGrad).
            amsgrad: false,
        }
        buffers: [ExpAvg, ExpAvgSq, MaxExpAvgSq],
        kernel: Adam,
        restart: [],
    }
}

optimizer! {
    /// torch.optim.AdamW (decoupled weight decay `θ ← θ·(1 − lr·wd)` before the Adam step).
    /// Defaults: betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2.
    pub struct AdamW("AdamW") {
        hparams {
            /// The decay rate β1 of the first moment.
            beta1: 0.9,
            /// The decay rate β2 of the second moment.
            beta2: 0.999,
            /// The term added to the denominator.
            eps: 1e-8,
            /// Decoupled weight decay.
            weight_decay: 1e-2,
        }
        options {
            /// Normalize by the running maximum of the second moment (AMSGrad).
            amsgrad: false,
        }
        buffers: [ExpAvg, ExpAvgSq, MaxExpAvgSq],
        kernel: Adam,
        restart: [],
    }
}

optimizer! {
    /// torch.optim.Adamax: `g ← g + wd·θ`, `m ← lerp(m, g, 1 − β1)`,
    /// `u ← max(β2·u, |g| + ε)`, `θ ← θ − lr/(1 − β1ᵗ) · m / u`. Defaults: betas (0.9, 0.999),
    /// eps 1e-8, weight_decay 0. At a tie of the maximum, autograd splits the gradient in halves.
    pub struct Adamax("Adamax") {
        hparams {
            /// The decay rate β1 of the first moment.
            beta1: 0.9,
            /// The decay rate β2 of the infinity norm.
            beta2: 0.999,
            /// The term added to |g|.
            eps: 1e-8,
            /// Weight decay, added to the gradient.
            weight_decay: 0.0,
        }
        options {}
        buffers: [ExpAvg, ExpInf],
        kernel: Adamax,
        restart: [],
    }
}

/// `betas(β1, β2)`, torch's tuple, for each optimizer that has the pair.
macro_rules! betas {
    ($($t:ident),*) => {$(
        impl $t {
            /// The decay rates `(β1, β2)`.
            pub fn betas(self, beta1: f64, beta2: f64) -> $t {
                self.beta1(beta1).beta2(beta2)
            }
        }
    )*};
}
betas!(Adam, AdamW, Adamax);

/// Adam's and AdamW's buffers: the moments, and the maximum with AMSGrad.
fn adam_state(theta: &Tensor, amsgrad: bool) -> Result<OptState> {
    let buffers: &[Buffer] = if amsgrad {
        &[Buffer::ExpAvg, Buffer::ExpAvgSq, Buffer::MaxExpAvgSq]
    } else {
        &[Buffer::ExpAvg, Buffer::ExpAvgSq]
    };
    OptState::zeros(theta, buffers)
}

/// Adam's and AdamW's fused step.
fn adam_plan(state: &OptState, decoupled: bool, amsgrad: bool) -> FusedPlan {
    let mut plan = FusedPlan::new(&Adam::DESCRIPTOR, state);
    plan.params.decoupled = decoupled;
    plan.params.amsgrad = amsgrad;
    plan.keeps = vec![true, true, amsgrad];
    plan
}

/// torch's `_single_tensor_adam` (non-differentiable branch, the one `foreach=False` runs):
/// weight decay (coupled: `g ← g + wd·θ`; decoupled: `θ ← θ·(1 − lr·wd)`), then
/// `m ← lerp(m, g, 1 − β1)`, `v ← β2·v + (1 − β2)·g²`, `v̂ ← max(v̂, v)` (amsgrad),
/// `θ ← θ − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)`.
fn adam_step(
    (decoupled, amsgrad): (bool, bool),
    x: StepInput<'_, 5>,
) -> Result<(Tensor, OptState)> {
    let (theta, grad, state) = (x.theta, x.grad, x.state);
    let [lr, beta1, beta2, eps, weight_decay] = x.v;
    let step = state.step() + 1;
    let mut decayed = theta.shallow_clone();
    let mut g = grad.shallow_clone();
    if !weight_decay.is_zero_const() {
        if decoupled {
            decayed = lr.mul(weight_decay)?.rsub(1.0)?.scale(theta)?;
        } else {
            g = coupled_weight_decay(grad, theta, weight_decay)?;
        }
    }
    let exp_avg = beta1
        .rsub(1.0)?
        .lerp(&state.or_zeros(Buffer::ExpAvg, theta)?, &g)?;
    let exp_avg_sq = ema_of_squares(&state.or_zeros(Buffer::ExpAvgSq, theta)?, &g, beta2)?;

    let bias_correction1 = beta1.powf(step as f64)?.rsub(1.0)?;
    let bias_correction2 = beta2.powf(step as f64)?.rsub(1.0)?;
    let step_size = lr.div(&bias_correction1)?;
    let bias_correction2_sqrt = bias_correction2.powf(0.5)?;

    let mut buffers = vec![
        (Buffer::ExpAvg, exp_avg.shallow_clone()),
        (Buffer::ExpAvgSq, exp_avg_sq.shallow_clone()),
    ];
    let second_moment = if amsgrad {
        let max_prev = state.or_zeros(Buffer::MaxExpAvgSq, theta)?;
        let max = max_prev.f_maximum(&exp_avg_sq)?;
        buffers.push((Buffer::MaxExpAvgSq, max.shallow_clone()));
        max
    } else {
        exp_avg_sq
    };
    let denom = eps.add_to(&bias_correction2_sqrt.divide(&sqrt_finite_grad(&second_moment)?)?)?;
    let theta = decayed.f_sub(&step_size.scale(&exp_avg.f_div(&denom)?)?)?;
    Ok((theta, OptState::from_buffers(step, buffers)))
}

/// The arithmetic of Adam (`false`) and AdamW (`true`): one body, the weight decay differs.
macro_rules! adam_family {
    ($($t:ident: $decoupled:expr),*) => {$(
        impl $t {
            fn initial_state(&self, theta: &Tensor) -> Result<OptState> {
                adam_state(theta, self.amsgrad)
            }

            fn fused_plan(&self, _: &mut [HValue; 5], state: &OptState) -> Result<FusedPlan> {
                Ok(adam_plan(state, $decoupled, self.amsgrad))
            }

            fn tensor_step(&self, x: StepInput<'_, 5>) -> Result<(Tensor, OptState)> {
                adam_step(($decoupled, self.amsgrad), x)
            }
        }
    )*};
}
adam_family!(Adam: false, AdamW: true);

impl Adamax {
    fn initial_state(&self, theta: &Tensor) -> Result<OptState> {
        OptState::zeros(theta, &[Buffer::ExpAvg, Buffer::ExpInf])
    }

    fn fused_plan(&self, _: &mut [HValue; 5], state: &OptState) -> Result<FusedPlan> {
        Ok(FusedPlan::new(&Self::DESCRIPTOR, state))
    }

    fn tensor_step(&self, x: StepInput<'_, 5>) -> Result<(Tensor, OptState)> {
        let (theta, grad, state) = (x.theta, x.grad, x.state);
        let [lr, beta1, beta2, eps, weight_decay] = x.v;
        let step = state.step() + 1;
        let g = coupled_weight_decay(grad, theta, weight_decay)?;
        let exp_avg = beta1
            .rsub(1.0)?
            .lerp(&state.or_zeros(Buffer::ExpAvg, theta)?, &g)?;
        let exp_inf = beta2
            .scale(&state.or_zeros(Buffer::ExpInf, theta)?)?
            .f_maximum(&eps.add_to(&g.f_abs()?)?)?;
        let bias_correction = beta1.powf(step as f64)?.rsub(1.0)?;
        let clr = lr.div(&bias_correction)?;
        let theta = theta.f_sub(&clr.scale(&exp_avg.f_div(&exp_inf)?)?)?;
        let buffers = vec![(Buffer::ExpAvg, exp_avg), (Buffer::ExpInf, exp_inf)];
        Ok((theta, OptState::from_buffers(step, buffers)))
    }
}
