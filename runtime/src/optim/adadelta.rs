//! Adadelta (torch.optim.Adadelta).
//!
//! It computes one step as a pure function; it keeps nothing between calls.

use super::{
    buffer_or_zeros, check_shapes, coupled_weight_decay, ema_of_squares, sqrt_finite_grad, HParams,
    OptState, Optimizer,
};
use crate::kernels::{self, Slot, StepKernel};
use crate::Result;
use tch::Tensor;

const NAMES: &[&str] = &["lr", "rho", "eps", "weight_decay"];

/// torch.optim.Adadelta, single-tensor algorithm: `g ← g + wd·θ`, `v ← ρ·v + (1 − ρ)·g²`,
/// `δ = √(a + ε) / √(v + ε) · g`, `a ← ρ·a + (1 − ρ)·δ²`, `θ ← θ − lr·δ`.
/// Defaults: lr 1.0 in torch (given here to `new`), rho 0.9, eps 1e-6, weight_decay 0.
#[derive(Debug, Clone)]
pub struct Adadelta {
    lr: f64,
    rho: f64,
    eps: f64,
    weight_decay: f64,
    fused: bool,
}

impl Adadelta {
    pub fn new(lr: f64) -> Adadelta {
        Adadelta {
            lr,
            rho: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
            fused: false,
        }
    }
    pub fn rho(mut self, rho: f64) -> Adadelta {
        self.rho = rho;
        self
    }
    pub fn eps(mut self, eps: f64) -> Adadelta {
        self.eps = eps;
        self
    }
    pub fn weight_decay(mut self, weight_decay: f64) -> Adadelta {
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
    pub fn fused(mut self, fused: bool) -> Adadelta {
        self.fused = fused;
        self
    }
}

impl Optimizer for Adadelta {
    fn name(&self) -> &'static str {
        "Adadelta"
    }
    fn hparam_names(&self) -> &'static [&'static str] {
        NAMES
    }
    fn hparam_default(&self, name: &str) -> Option<f64> {
        match name {
            "lr" => Some(self.lr),
            "rho" => Some(self.rho),
            "eps" => Some(self.eps),
            "weight_decay" => Some(self.weight_decay),
            _ => None,
        }
    }
    fn init_state(&self, theta: &Tensor) -> Result<OptState> {
        OptState::zeros(theta, &["square_avg", "acc_delta"])
    }
    fn update(
        &self,
        theta: &Tensor,
        grad: &Tensor,
        state: &OptState,
        hp: &HParams,
    ) -> Result<(Tensor, OptState)> {
        check_shapes("Adadelta.update", theta, grad)?;
        let lr = hp.value("lr", self.lr, theta)?;
        let rho = hp.value("rho", self.rho, theta)?;
        let eps = hp.value("eps", self.eps, theta)?;
        let weight_decay = hp.value("weight_decay", self.weight_decay, theta)?;
        let step = state.step() + 1;
        if self.fused && kernels::supports(theta) {
            let hparams = [
                Slot::from(&lr),
                Slot::from(&rho),
                Slot::from(&eps),
                Slot::from(&weight_decay),
            ];
            let (theta, out) = kernels::fused_step(
                StepKernel::Adadelta,
                theta,
                grad,
                &[state.get("square_avg"), state.get("acc_delta")],
                &hparams,
                &[],
                3,
            )?;
            let names = ["square_avg", "acc_delta"];
            let tensors = names.iter().map(|n| n.to_string()).zip(out).collect();
            return Ok((theta, OptState::new(step, tensors)));
        }

        let g = coupled_weight_decay(grad, theta, &weight_decay)?;
        let square_avg = ema_of_squares(&buffer_or_zeros(state, "square_avg", theta)?, &g, &rho)?;
        let acc_prev = buffer_or_zeros(state, "acc_delta", theta)?;
        // Both roots are of quantities ≥ ε > 0; the masked root only matters for an eps override
        // of 0, where it keeps the backward finite.
        let std = sqrt_finite_grad(&eps.add_to(&square_avg)?)?;
        let delta = sqrt_finite_grad(&eps.add_to(&acc_prev)?)?
            .f_div(&std)?
            .f_mul(&g)?;
        let acc_delta = ema_of_squares(&acc_prev, &delta, &rho)?;
        let theta = theta.f_sub(&lr.scale(&delta)?)?;
        Ok((
            theta,
            OptState::new(
                step,
                vec![
                    ("square_avg".to_string(), square_avg),
                    ("acc_delta".to_string(), acc_delta),
                ],
            ),
        ))
    }
    fn box_clone(&self) -> Box<dyn Optimizer> {
        Box::new(self.clone())
    }
}
