//! Adam, AdamW (decoupled weight decay) and Adamax (torch.optim.Adam, AdamW, Adamax).
//!
//! Each computes one step as a pure function; they keep nothing between calls.

use super::{
    buffer_or_zeros, check_shapes, coupled_weight_decay, ema_of_squares, sqrt_finite_grad, HParams,
    HValue, OptState, Optimizer,
};
use crate::kernels::{self, Slot, StepKernel};
use crate::Result;
use tch::Tensor;

const NAMES: &[&str] = &["lr", "beta1", "beta2", "eps", "weight_decay"];

/// The settings that Adam and AdamW share.
#[derive(Debug, Clone)]
struct AdamConfig {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    amsgrad: bool,
    fused: bool,
}

impl AdamConfig {
    fn default_of(&self, name: &str) -> Option<f64> {
        match name {
            "lr" => Some(self.lr),
            "beta1" => Some(self.beta1),
            "beta2" => Some(self.beta2),
            "eps" => Some(self.eps),
            "weight_decay" => Some(self.weight_decay),
            _ => None,
        }
    }

    fn init_state(&self, theta: &Tensor) -> Result<OptState> {
        let names: &[&str] = if self.amsgrad {
            &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
        } else {
            &["exp_avg", "exp_avg_sq"]
        };
        OptState::zeros(theta, names)
    }

    /// torch's `_single_tensor_adam` (non-differentiable branch, the one `foreach=False` runs):
    /// weight decay (coupled: `g ← g + wd·θ`; decoupled: `θ ← θ·(1 − lr·wd)`), then
    /// `m ← lerp(m, g, 1 − β1)`, `v ← β2·v + (1 − β2)·g²`, `v̂ ← max(v̂, v)` (amsgrad),
    /// `θ ← θ − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)`.
    fn update(
        &self,
        op: &'static str,
        decoupled: bool,
        theta: &Tensor,
        grad: &Tensor,
        state: &OptState,
        hp: &HParams,
    ) -> Result<(Tensor, OptState)> {
        check_shapes(op, theta, grad)?;
        let lr = hp.value("lr", self.lr, theta)?;
        let beta1 = hp.value("beta1", self.beta1, theta)?;
        let beta2 = hp.value("beta2", self.beta2, theta)?;
        let eps = hp.value("eps", self.eps, theta)?;
        let weight_decay = hp.value("weight_decay", self.weight_decay, theta)?;
        let step = state.step() + 1;
        if self.fused && kernels::supports(theta) {
            let exp_avg = buffer_or_zeros(state, "exp_avg", theta)?;
            let exp_avg_sq = buffer_or_zeros(state, "exp_avg_sq", theta)?;
            let max_exp_avg_sq = if self.amsgrad {
                Some(buffer_or_zeros(state, "max_exp_avg_sq", theta)?)
            } else {
                None
            };
            let flags = [
                step as f64,
                f64::from(u8::from(decoupled)),
                f64::from(u8::from(self.amsgrad)),
            ];
            let hparams = [
                Slot::from(&lr),
                Slot::from(&beta1),
                Slot::from(&beta2),
                Slot::from(&eps),
                Slot::from(&weight_decay),
            ];
            let (theta, out) = kernels::fused_step(
                StepKernel::Adam,
                theta,
                grad,
                &[Some(&exp_avg), Some(&exp_avg_sq), max_exp_avg_sq.as_ref()],
                &hparams,
                &flags,
                if self.amsgrad { 4 } else { 3 },
            )?;
            let names = ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"];
            let tensors = names.iter().map(|n| n.to_string()).zip(out).collect();
            return Ok((theta, OptState::new(step, tensors)));
        }

        let mut decayed = theta.shallow_clone();
        let mut g = grad.shallow_clone();
        if !weight_decay.is_zero_const() {
            if decoupled {
                decayed = lr.mul(&weight_decay)?.rsub(1.0)?.scale(theta)?;
            } else {
                g = coupled_weight_decay(grad, theta, &weight_decay)?;
            }
        }
        let exp_avg = beta1
            .rsub(1.0)?
            .lerp(&buffer_or_zeros(state, "exp_avg", theta)?, &g)?;
        let exp_avg_sq = ema_of_squares(&buffer_or_zeros(state, "exp_avg_sq", theta)?, &g, &beta2)?;

        let bias_correction1 = beta1.powf(step as f64)?.rsub(1.0)?;
        let bias_correction2 = beta2.powf(step as f64)?.rsub(1.0)?;
        let step_size = lr.div(&bias_correction1)?;
        let bias_correction2_sqrt = bias_correction2.powf(0.5)?;

        let mut tensors = Vec::with_capacity(3);
        let second_moment = if self.amsgrad {
            let max_prev = buffer_or_zeros(state, "max_exp_avg_sq", theta)?;
            let max = max_prev.f_maximum(&exp_avg_sq)?;
            tensors.push(("max_exp_avg_sq".to_string(), max.shallow_clone()));
            max
        } else {
            exp_avg_sq.shallow_clone()
        };
        let denom =
            eps.add_to(&bias_correction2_sqrt.divide(&sqrt_finite_grad(&second_moment)?)?)?;
        let theta = decayed.f_sub(&step_size.scale(&exp_avg.f_div(&denom)?)?)?;

        tensors.insert(0, ("exp_avg_sq".to_string(), exp_avg_sq));
        tensors.insert(0, ("exp_avg".to_string(), exp_avg));
        Ok((theta, OptState::new(step, tensors)))
    }
}

/// Builder methods shared by Adam and AdamW.
macro_rules! adam_builders {
    ($t:ident) => {
        impl $t {
            pub fn betas(mut self, beta1: f64, beta2: f64) -> $t {
                self.config.beta1 = beta1;
                self.config.beta2 = beta2;
                self
            }
            pub fn eps(mut self, eps: f64) -> $t {
                self.config.eps = eps;
                self
            }
            pub fn weight_decay(mut self, weight_decay: f64) -> $t {
                self.config.weight_decay = weight_decay;
                self
            }
            /// Normalize by the running maximum of the second moment (AMSGrad).
            pub fn amsgrad(mut self, amsgrad: bool) -> $t {
                self.config.amsgrad = amsgrad;
                self
            }
            /// Take each step with one fused kernel (runtime::kernels) where it supports θ
            /// (f32/f64 on the CPU or CUDA): one pass over the buffers forward and one backward
            /// instead of a dozen tensor ops each. Measured faster than the tensor-op path on
            /// this project's CPU (benches/README.md, `cargo bench -p metaloop --bench
            /// optim_step`), and equal to it to rounding (tests/fused_optim.rs). Off by default
            /// all the same: the fused backward cannot itself be differentiated (`create_graph`
            /// through a step's backward: third-order derivatives), which the tensor-op path,
            /// the reference, can.
            pub fn fused(mut self, fused: bool) -> $t {
                self.config.fused = fused;
                self
            }
        }
    };
}

/// torch.optim.Adam (weight decay added to the gradient). Defaults: betas (0.9, 0.999), eps 1e-8,
/// weight_decay 0.
#[derive(Debug, Clone)]
pub struct Adam {
    config: AdamConfig,
}

impl Adam {
    pub fn new(lr: f64) -> Adam {
        Adam {
            config: AdamConfig {
                lr,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
                amsgrad: false,
                fused: false,
            },
        }
    }
}
adam_builders!(Adam);

impl Optimizer for Adam {
    fn name(&self) -> &'static str {
        "Adam"
    }
    fn hparam_names(&self) -> &'static [&'static str] {
        NAMES
    }
    fn hparam_default(&self, name: &str) -> Option<f64> {
        self.config.default_of(name)
    }
    fn init_state(&self, theta: &Tensor) -> Result<OptState> {
        self.config.init_state(theta)
    }
    fn update(
        &self,
        theta: &Tensor,
        grad: &Tensor,
        state: &OptState,
        hp: &HParams,
    ) -> Result<(Tensor, OptState)> {
        self.config
            .update("Adam.update", false, theta, grad, state, hp)
    }
    fn box_clone(&self) -> Box<dyn Optimizer> {
        Box::new(self.clone())
    }
}

/// torch.optim.AdamW (decoupled weight decay `θ ← θ·(1 − lr·wd)` before the Adam step). Defaults:
/// betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2.
#[derive(Debug, Clone)]
pub struct AdamW {
    config: AdamConfig,
}

impl AdamW {
    pub fn new(lr: f64) -> AdamW {
        AdamW {
            config: AdamConfig {
                lr,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 1e-2,
                amsgrad: false,
                fused: false,
            },
        }
    }
}
adam_builders!(AdamW);

impl Optimizer for AdamW {
    fn name(&self) -> &'static str {
        "AdamW"
    }
    fn hparam_names(&self) -> &'static [&'static str] {
        NAMES
    }
    fn hparam_default(&self, name: &str) -> Option<f64> {
        self.config.default_of(name)
    }
    fn init_state(&self, theta: &Tensor) -> Result<OptState> {
        self.config.init_state(theta)
    }
    fn update(
        &self,
        theta: &Tensor,
        grad: &Tensor,
        state: &OptState,
        hp: &HParams,
    ) -> Result<(Tensor, OptState)> {
        self.config
            .update("AdamW.update", true, theta, grad, state, hp)
    }
    fn box_clone(&self) -> Box<dyn Optimizer> {
        Box::new(self.clone())
    }
}

/// torch.optim.Adamax: `g ← g + wd·θ`, `m ← lerp(m, g, 1 − β1)`,
/// `u ← max(β2·u, |g| + ε)`, `θ ← θ − lr/(1 − β1ᵗ) · m / u`. Defaults: betas (0.9, 0.999),
/// eps 1e-8, weight_decay 0. At a tie of the maximum, autograd splits the gradient in halves.
#[derive(Debug, Clone)]
pub struct Adamax {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    fused: bool,
}

impl Adamax {
    pub fn new(lr: f64) -> Adamax {
        Adamax {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            fused: false,
        }
    }
    pub fn betas(mut self, beta1: f64, beta2: f64) -> Adamax {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }
    pub fn eps(mut self, eps: f64) -> Adamax {
        self.eps = eps;
        self
    }
    pub fn weight_decay(mut self, weight_decay: f64) -> Adamax {
        self.weight_decay = weight_decay;
        self
    }
    /// Take each step with one fused kernel (runtime::kernels) where it supports θ (f32/f64 on
    /// the CPU or CUDA): one pass over the buffers forward and one backward instead of a dozen
    /// tensor ops each. Measured faster than the tensor-op path on this project's CPU
    /// (benches/README.md, `cargo bench -p metaloop --bench optim_step`), and equal to it to
    /// rounding (tests/fused_optim.rs). Off by default all the same: the fused backward cannot
    /// itself be differentiated (`create_graph` through a step's backward: third-order
    /// derivatives), which the tensor-op path, the reference, can.
    pub fn fused(mut self, fused: bool) -> Adamax {
        self.fused = fused;
        self
    }
}

impl Optimizer for Adamax {
    fn name(&self) -> &'static str {
        "Adamax"
    }
    fn hparam_names(&self) -> &'static [&'static str] {
        NAMES
    }
    fn hparam_default(&self, name: &str) -> Option<f64> {
        match name {
            "lr" => Some(self.lr),
            "beta1" => Some(self.beta1),
            "beta2" => Some(self.beta2),
            "eps" => Some(self.eps),
            "weight_decay" => Some(self.weight_decay),
            _ => None,
        }
    }
    fn init_state(&self, theta: &Tensor) -> Result<OptState> {
        OptState::zeros(theta, &["exp_avg", "exp_inf"])
    }
    fn update(
        &self,
        theta: &Tensor,
        grad: &Tensor,
        state: &OptState,
        hp: &HParams,
    ) -> Result<(Tensor, OptState)> {
        check_shapes("Adamax.update", theta, grad)?;
        let lr = hp.value("lr", self.lr, theta)?;
        let beta1 = hp.value("beta1", self.beta1, theta)?;
        let beta2 = hp.value("beta2", self.beta2, theta)?;
        let eps = hp.value("eps", self.eps, theta)?;
        let weight_decay = hp.value("weight_decay", self.weight_decay, theta)?;
        let step = state.step() + 1;
        if self.fused && kernels::supports(theta) {
            let hparams = [
                Slot::from(&lr),
                Slot::from(&beta1),
                Slot::from(&beta2),
                Slot::from(&eps),
                Slot::from(&weight_decay),
            ];
            let (theta, out) = kernels::fused_step(
                StepKernel::Adamax,
                theta,
                grad,
                &[state.get("exp_avg"), state.get("exp_inf")],
                &hparams,
                &[step as f64],
                3,
            )?;
            let names = ["exp_avg", "exp_inf"];
            let tensors = names.iter().map(|n| n.to_string()).zip(out).collect();
            return Ok((theta, OptState::new(step, tensors)));
        }

        let g = coupled_weight_decay(grad, theta, &weight_decay)?;
        let exp_avg = beta1
            .rsub(1.0)?
            .lerp(&buffer_or_zeros(state, "exp_avg", theta)?, &g)?;
        let exp_inf = beta2
            .scale(&buffer_or_zeros(state, "exp_inf", theta)?)?
            .f_maximum(&eps.add_to(&g.f_abs()?)?)?;
        let bias_correction: HValue = beta1.powf(step as f64)?.rsub(1.0)?;
        let clr = lr.div(&bias_correction)?;
        let theta = theta.f_sub(&clr.scale(&exp_avg.f_div(&exp_inf)?)?)?;
        Ok((
            theta,
            OptState::new(
                step,
                vec![
                    ("exp_avg".to_string(), exp_avg),
                    ("exp_inf".to_string(), exp_inf),
                ],
            ),
        ))
    }
    fn box_clone(&self) -> Box<dyn Optimizer> {
        Box::new(self.clone())
    }
}
