//! Rprop (torch.optim.Rprop), and what its piecewise-constant pieces give as hypergradients.
//!
//! It computes one step as a pure function; it keeps nothing between calls.

use super::{buffer_or_zeros, check_shapes, filled_like, HParams, HValue, OptState, Optimizer};
use crate::kernels::{self, Slot, StepKernel};
use crate::Result;
use tch::Tensor;

const NAMES: &[&str] = &[
    "lr",
    "eta_minus",
    "eta_plus",
    "step_size_min",
    "step_size_max",
];

/// torch.optim.Rprop, single-tensor algorithm. Per element, with `s = sign(g · prev)`:
/// `η = eta_plus` if `s > 0`, `eta_minus` if `s < 0`, else 1;
/// `step_size ← clamp(step_size · η, step_size_min, step_size_max)`; where `s < 0` the gradient is
/// taken as 0 (no move, and `prev ← 0`); `θ ← θ − sign(g) · step_size`; `prev ← g`.
/// Step sizes start at `lr`. Defaults: etas (0.5, 1.2), step_sizes (1e-6, 50).
///
/// Hypergradients. `sign` is piecewise constant: its derivative is 0 (libtorch's `sign` backward),
/// so no gradient flows through the direction of a step or through the choice of η; in particular
/// `∂θ'/∂g = 0` and `∂θ'/∂θ = I`. Gradient flows through the step sizes only:
/// - `lr`: through the initial step sizes, times every η applied since, for the elements that the
///   clamp has not cut off since (`clamp` passes gradient where `min ≤ x ≤ max`, bounds included);
/// - `eta_minus`/`eta_plus`: through the factor of each element that took that branch;
/// - `step_size_min`/`step_size_max`: from the elements clamped to that bound at a step (strictly
///   outside it before the clamp), carried on by later η factors.
///
/// Like this, the meta-gradient equals the derivative of the step away from the measure-zero sets
/// where a sign flips or a step size sits exactly on a bound; finite differences agree there.
///
/// `init_state` fills `step_size` with the builder's `lr` (as torch's state holds); the first update
/// replaces it by the resolved `lr`, so that an `lr` override gets its hypergradient.
#[derive(Debug, Clone)]
pub struct Rprop {
    lr: f64,
    eta_minus: f64,
    eta_plus: f64,
    step_size_min: f64,
    step_size_max: f64,
    fused: bool,
}

impl Rprop {
    pub fn new(lr: f64) -> Rprop {
        Rprop {
            lr,
            eta_minus: 0.5,
            eta_plus: 1.2,
            step_size_min: 1e-6,
            step_size_max: 50.0,
            fused: false,
        }
    }
    /// The factors `(eta_minus, eta_plus)` (0 < eta_minus < 1 < eta_plus).
    pub fn etas(mut self, eta_minus: f64, eta_plus: f64) -> Rprop {
        self.eta_minus = eta_minus;
        self.eta_plus = eta_plus;
        self
    }
    /// The bounds `(step_size_min, step_size_max)` of the step sizes.
    pub fn step_sizes(mut self, min: f64, max: f64) -> Rprop {
        self.step_size_min = min;
        self.step_size_max = max;
        self
    }
    /// Take each step with one fused kernel (runtime::kernels) where it supports θ (f32/f64 on
    /// the CPU or CUDA): one pass over the buffers forward and one backward instead of a dozen
    /// tensor ops each. Measured faster than the tensor-op path on this project's CPU
    /// (benches/README.md, `cargo bench -p metaloop --bench optim_step`), and equal to it to
    /// rounding (tests/fused_optim.rs). Off by default all the same: the fused backward cannot
    /// itself be differentiated (`create_graph` through a step's backward: third-order
    /// derivatives), which the tensor-op path, the reference, can.
    pub fn fused(mut self, fused: bool) -> Rprop {
        self.fused = fused;
        self
    }
}

/// `where(cond, value, other)`, differentiable in a tensor `value`.
fn select(cond: &Tensor, value: &HValue, other: &Tensor) -> Result<Tensor> {
    Ok(match value {
        HValue::Const(c) => other.f_masked_fill(cond, *c)?,
        HValue::Tensor(t) => t.f_where_self(cond, other)?,
    })
}

impl Optimizer for Rprop {
    fn name(&self) -> &'static str {
        "Rprop"
    }
    fn hparam_names(&self) -> &'static [&'static str] {
        NAMES
    }
    fn hparam_default(&self, name: &str) -> Option<f64> {
        match name {
            "lr" => Some(self.lr),
            "eta_minus" => Some(self.eta_minus),
            "eta_plus" => Some(self.eta_plus),
            "step_size_min" => Some(self.step_size_min),
            "step_size_max" => Some(self.step_size_max),
            _ => None,
        }
    }
    fn init_state(&self, theta: &Tensor) -> Result<OptState> {
        Ok(OptState::new(
            0,
            vec![
                ("prev".to_string(), theta.f_zeros_like()?.f_detach()?),
                (
                    "step_size".to_string(),
                    theta.f_full_like(self.lr)?.f_detach()?,
                ),
            ],
        ))
    }
    fn update(
        &self,
        theta: &Tensor,
        grad: &Tensor,
        state: &OptState,
        hp: &HParams,
    ) -> Result<(Tensor, OptState)> {
        check_shapes("Rprop.update", theta, grad)?;
        let eta_minus = hp.value("eta_minus", self.eta_minus, theta)?;
        let eta_plus = hp.value("eta_plus", self.eta_plus, theta)?;
        let step_size_min = hp.value("step_size_min", self.step_size_min, theta)?;
        let step_size_max = hp.value("step_size_max", self.step_size_max, theta)?;
        let step = state.step() + 1;
        if self.fused && kernels::supports(theta) {
            // The step sizes start at the resolved lr; later steps do not read lr.
            let first = state.step() == 0 || state.get("step_size").is_none();
            let lr = if first {
                hp.value("lr", self.lr, theta)?
            } else {
                HValue::Const(self.lr)
            };
            let hparams = [
                Slot::from(&lr),
                Slot::from(&eta_minus),
                Slot::from(&eta_plus),
                Slot::from(&step_size_min),
                Slot::from(&step_size_max),
            ];
            let step_size_prev = if first { None } else { state.get("step_size") };
            let (theta, out) = kernels::fused_step(
                StepKernel::Rprop,
                theta,
                grad,
                &[state.get("prev"), step_size_prev],
                &hparams,
                &[f64::from(u8::from(first))],
                3,
            )?;
            let names = ["prev", "step_size"];
            let tensors = names.iter().map(|n| n.to_string()).zip(out).collect();
            return Ok((theta, OptState::new(step, tensors)));
        }

        let prev = buffer_or_zeros(state, "prev", theta)?;
        let step_size_prev = match state.get("step_size") {
            Some(s) if state.step() > 0 => s.shallow_clone(),
            _ => filled_like(theta, &hp.value("lr", self.lr, theta)?)?,
        };
        let sign = grad.f_mul(&prev)?.f_sign()?;
        let grew = sign.f_gt(0.0)?;
        let flipped = sign.f_lt(0.0)?;
        let ones = theta.f_ones_like()?.f_detach()?;
        let factor = select(&flipped, &eta_minus, &select(&grew, &eta_plus, &ones)?)?;
        let scaled = step_size_prev.f_mul(&factor)?;
        let lower = match &step_size_min {
            HValue::Const(c) => scaled.f_clamp_min(*c)?,
            HValue::Tensor(t) => scaled.f_clamp_min_tensor(t)?,
        };
        let step_size = match &step_size_max {
            HValue::Const(c) => lower.f_clamp_max(*c)?,
            HValue::Tensor(t) => lower.f_clamp_max_tensor(t)?,
        };
        let g = grad.f_masked_fill(&flipped, 0.0)?;
        let theta = theta.f_sub(&g.f_sign()?.f_mul(&step_size)?)?;
        Ok((
            theta,
            OptState::new(
                step,
                vec![
                    ("prev".to_string(), g),
                    ("step_size".to_string(), step_size),
                ],
            ),
        ))
    }
    fn box_clone(&self) -> Box<dyn Optimizer> {
        Box::new(self.clone())
    }
}
