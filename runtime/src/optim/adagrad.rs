//! Adagrad (torch.optim.Adagrad).
//!
//! It computes one step as a pure function; it keeps nothing between calls.

use super::{
    check_shapes, coupled_weight_decay, filled_like, sqrt_finite_grad, HParams, HValue, OptState,
    Optimizer,
};
use crate::kernels::{self, Slot, StepKernel};
use crate::Result;
use tch::Tensor;

const NAMES: &[&str] = &[
    "lr",
    "lr_decay",
    "weight_decay",
    "initial_accumulator_value",
    "eps",
];

/// torch.optim.Adagrad, single-tensor algorithm: `g ← g + wd·θ`,
/// `clr = lr / (1 + (t − 1)·lr_decay)`, `s ← s + g²`, `θ ← θ − clr · g / (√s + ε)`.
/// Defaults: lr_decay 0, weight_decay 0, initial_accumulator_value 0, eps 1e-10.
///
/// The accumulator `sum` starts at `initial_accumulator_value`. `init_state` fills it with the
/// builder's value (as torch's state holds); the first update replaces it by the resolved
/// hyperparameter, so that an override of `initial_accumulator_value` gets its hypergradient.
#[derive(Debug, Clone)]
pub struct Adagrad {
    lr: f64,
    lr_decay: f64,
    weight_decay: f64,
    initial_accumulator_value: f64,
    eps: f64,
    fused: bool,
}

impl Adagrad {
    pub fn new(lr: f64) -> Adagrad {
        Adagrad {
            lr,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            fused: false,
        }
    }
    pub fn lr_decay(mut self, lr_decay: f64) -> Adagrad {
        self.lr_decay = lr_decay;
        self
    }
    pub fn weight_decay(mut self, weight_decay: f64) -> Adagrad {
        self.weight_decay = weight_decay;
        self
    }
    pub fn initial_accumulator_value(mut self, value: f64) -> Adagrad {
        self.initial_accumulator_value = value;
        self
    }
    pub fn eps(mut self, eps: f64) -> Adagrad {
        self.eps = eps;
        self
    }
    /// Take each step with one fused kernel (runtime::kernels) where it supports θ (f32/f64 on
    /// the CPU or CUDA): one pass over the buffers forward and one backward instead of a dozen
    /// tensor ops each. Measured faster than the tensor-op path on this project's CPU
    /// (benches/README.md, `cargo bench -p metaloop --bench optim_step`), and equal to it to
    /// rounding (tests/fused_optim.rs). Off by default all the same: the fused backward cannot
    /// itself be differentiated (`create_graph` through a step's backward: third-order
    /// derivatives), which the tensor-op path, the reference, can.
    pub fn fused(mut self, fused: bool) -> Adagrad {
        self.fused = fused;
        self
    }
}

impl Optimizer for Adagrad {
    fn name(&self) -> &'static str {
        "Adagrad"
    }
    fn hparam_names(&self) -> &'static [&'static str] {
        NAMES
    }
    fn hparam_default(&self, name: &str) -> Option<f64> {
        match name {
            "lr" => Some(self.lr),
            "lr_decay" => Some(self.lr_decay),
            "weight_decay" => Some(self.weight_decay),
            "initial_accumulator_value" => Some(self.initial_accumulator_value),
            "eps" => Some(self.eps),
            _ => None,
        }
    }
    fn init_state(&self, theta: &Tensor) -> Result<OptState> {
        let sum = theta
            .f_full_like(self.initial_accumulator_value)?
            .f_detach()?;
        Ok(OptState::new(0, vec![("sum".to_string(), sum)]))
    }
    fn update(
        &self,
        theta: &Tensor,
        grad: &Tensor,
        state: &OptState,
        hp: &HParams,
    ) -> Result<(Tensor, OptState)> {
        check_shapes("Adagrad.update", theta, grad)?;
        let lr = hp.value("lr", self.lr, theta)?;
        let lr_decay = hp.value("lr_decay", self.lr_decay, theta)?;
        let weight_decay = hp.value("weight_decay", self.weight_decay, theta)?;
        let eps = hp.value("eps", self.eps, theta)?;
        let step = state.step() + 1;
        if self.fused && kernels::supports(theta) {
            // The accumulator starts at the resolved initial value (see the type's docs); later
            // steps do not read that hyperparameter.
            let first = state.step() == 0 || state.get("sum").is_none();
            let initial = if first {
                hp.value(
                    "initial_accumulator_value",
                    self.initial_accumulator_value,
                    theta,
                )?
            } else {
                HValue::Const(self.initial_accumulator_value)
            };
            let hparams = [
                Slot::from(&lr),
                Slot::from(&lr_decay),
                Slot::from(&weight_decay),
                Slot::from(&initial),
                Slot::from(&eps),
            ];
            let sum_prev = if first { None } else { state.get("sum") };
            let flags = [step as f64, f64::from(u8::from(first))];
            let (theta, out) = kernels::fused_step(
                StepKernel::Adagrad,
                theta,
                grad,
                &[sum_prev],
                &hparams,
                &flags,
                2,
            )?;
            let tensors = out.into_iter().map(|t| ("sum".to_string(), t)).collect();
            return Ok((theta, OptState::new(step, tensors)));
        }

        let g = coupled_weight_decay(grad, theta, &weight_decay)?;
        let clr = lr.div(&lr_decay.mul_scalar((step - 1) as f64)?.add_scalar(1.0)?)?;
        let sum_prev = match state.get("sum") {
            Some(sum) if state.step() > 0 => sum.shallow_clone(),
            _ => {
                let initial = hp.value(
                    "initial_accumulator_value",
                    self.initial_accumulator_value,
                    theta,
                )?;
                filled_like(theta, &initial)?
            }
        };
        let sum = sum_prev.f_add(&g.f_square()?)?;
        let std = eps.add_to(&sqrt_finite_grad(&sum)?)?;
        let theta = theta.f_sub(&clr.scale(&g.f_div(&std)?)?)?;
        Ok((theta, OptState::new(step, vec![("sum".to_string(), sum)])))
    }
    fn box_clone(&self) -> Box<dyn Optimizer> {
        Box::new(self.clone())
    }
}
