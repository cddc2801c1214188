//! RMSprop, plain or centered, with momentum and weight decay (torch.optim.RMSprop).
//!
//! It computes one step as a pure function; it keeps nothing between calls.

use super::{
    buffer_or_zeros, check_shapes, coupled_weight_decay, ema_of_squares, sqrt_finite_grad, HParams,
    OptState, Optimizer,
};
use crate::kernels::{self, Slot, StepKernel};
use crate::Result;
use tch::Tensor;

const NAMES: &[&str] = &["lr", "alpha", "eps", "weight_decay", "momentum"];

/// torch.optim.RMSprop, single-tensor algorithm: `g ← g + wd·θ`, `v ← α·v + (1 − α)·g²`;
/// centered: `ḡ ← lerp(ḡ, g, 1 − α)`, `d = √(v − ḡ²) + ε`, else `d = √v + ε`; with momentum
/// `b ← μ·b + g/d`, `θ ← θ − lr·b`, else `θ ← θ − lr·g/d`. Defaults: alpha 0.99, eps 1e-8,
/// weight_decay 0, momentum 0.
///
/// A momentum override tensor always takes the momentum path (torch tests `momentum > 0`; a
/// tensor is never read back), starting from a zero buffer as torch does.
#[derive(Debug, Clone)]
pub struct RMSprop {
    lr: f64,
    alpha: f64,
    eps: f64,
    weight_decay: f64,
    momentum: f64,
    centered: bool,
    fused: bool,
}

impl RMSprop {
    pub fn new(lr: f64) -> RMSprop {
        RMSprop {
            lr,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            fused: false,
        }
    }
    pub fn alpha(mut self, alpha: f64) -> RMSprop {
        self.alpha = alpha;
        self
    }
    pub fn eps(mut self, eps: f64) -> RMSprop {
        self.eps = eps;
        self
    }
    pub fn weight_decay(mut self, weight_decay: f64) -> RMSprop {
        self.weight_decay = weight_decay;
        self
    }
    pub fn momentum(mut self, momentum: f64) -> RMSprop {
        self.momentum = momentum;
        self
    }
    /// Normalize by an estimate of the gradient's variance instead of its second moment.
    pub fn centered(mut self, centered: bool) -> RMSprop {
        self.centered = centered;
        self
    }
    /// Take each step with one fused kernel (runtime::kernels) where it supports θ (f32/f64 on
    /// the CPU or CUDA): one pass over the buffers forward and one backward instead of a dozen
    /// tensor ops each. Measured faster than the tensor-op path on this project's CPU
    /// (benches/README.md, `cargo bench -p metaloop --bench optim_step`), and equal to it to
    /// rounding (tests/fused_optim.rs). Off by default all the same: the fused backward cannot
    /// itself be differentiated (`create_graph` through a step's backward: third-order
    /// derivatives), which the tensor-op path, the reference, can.
    pub fn fused(mut self, fused: bool) -> RMSprop {
        self.fused = fused;
        self
    }
}

impl Optimizer for RMSprop {
    fn name(&self) -> &'static str {
        "RMSprop"
    }
    fn hparam_names(&self) -> &'static [&'static str] {
        NAMES
    }
    fn hparam_default(&self, name: &str) -> Option<f64> {
        match name {
            "lr" => Some(self.lr),
            "alpha" => Some(self.alpha),
            "eps" => Some(self.eps),
            "weight_decay" => Some(self.weight_decay),
            "momentum" => Some(self.momentum),
            _ => None,
        }
    }
    fn init_state(&self, theta: &Tensor) -> Result<OptState> {
        let mut names = vec!["square_avg"];
        if self.momentum > 0.0 {
            names.push("momentum_buffer");
        }
        if self.centered {
            names.push("grad_avg");
        }
        OptState::zeros(theta, &names)
    }
    fn update(
        &self,
        theta: &Tensor,
        grad: &Tensor,
        state: &OptState,
        hp: &HParams,
    ) -> Result<(Tensor, OptState)> {
        check_shapes("RMSprop.update", theta, grad)?;
        let lr = hp.value("lr", self.lr, theta)?;
        let alpha = hp.value("alpha", self.alpha, theta)?;
        let eps = hp.value("eps", self.eps, theta)?;
        let weight_decay = hp.value("weight_decay", self.weight_decay, theta)?;
        let momentum = hp.value("momentum", self.momentum, theta)?;
        let step = state.step() + 1;
        let momentum_path = !momentum.as_const().is_some_and(|m| m <= 0.0);
        if self.fused && kernels::supports(theta) {
            let hparams = [
                Slot::from(&lr),
                Slot::from(&alpha),
                Slot::from(&eps),
                Slot::from(&weight_decay),
                Slot::from(&momentum),
            ];
            let states = [
                state.get("square_avg"),
                state.get("momentum_buffer").filter(|_| momentum_path),
                state.get("grad_avg").filter(|_| self.centered),
            ];
            let flags = [
                f64::from(u8::from(self.centered)),
                f64::from(u8::from(momentum_path)),
            ];
            let n_out = 2 + usize::from(momentum_path) + usize::from(self.centered);
            let (theta, out) = kernels::fused_step(
                StepKernel::RMSprop,
                theta,
                grad,
                &states,
                &hparams,
                &flags,
                n_out,
            )?;
            let mut names = vec!["square_avg"];
            if momentum_path {
                names.push("momentum_buffer");
            }
            if self.centered {
                names.push("grad_avg");
            }
            let tensors = names.iter().map(|n| n.to_string()).zip(out).collect();
            return Ok((theta, OptState::new(step, tensors)));
        }

        let g = coupled_weight_decay(grad, theta, &weight_decay)?;
        let square_avg = ema_of_squares(&buffer_or_zeros(state, "square_avg", theta)?, &g, &alpha)?;
        let mut tensors = vec![("square_avg".to_string(), square_avg.shallow_clone())];
        let mut momentum_buffer = None;
        let avg = if self.centered {
            let grad_avg = alpha
                .rsub(1.0)?
                .lerp(&buffer_or_zeros(state, "grad_avg", theta)?, &g)?;
            let variance = square_avg.f_sub(&grad_avg.f_square()?)?;
            tensors.push(("grad_avg".to_string(), grad_avg));
            sqrt_finite_grad(&variance)?
        } else {
            sqrt_finite_grad(&square_avg)?
        };
        let avg = eps.add_to(&avg)?;
        let direction = if !momentum_path {
            g.f_div(&avg)?
        } else {
            let prev = buffer_or_zeros(state, "momentum_buffer", theta)?;
            let buf = momentum.scale(&prev)?.f_add(&g.f_div(&avg)?)?;
            momentum_buffer = Some(buf.shallow_clone());
            buf
        };
        if let Some(buf) = momentum_buffer {
            tensors.insert(1, ("momentum_buffer".to_string(), buf));
        }
        let theta = theta.f_sub(&lr.scale(&direction)?)?;
        Ok((theta, OptState::new(step, tensors)))
    }
    fn box_clone(&self) -> Box<dyn Optimizer> {
        Box::new(self.clone())
    }
}
