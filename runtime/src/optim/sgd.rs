//! SGD with momentum, dampening, Nesterov momentum and weight decay (torch.optim.SGD).
//!
//! It computes one step as a pure function; it keeps nothing between calls.

use super::{buffer_or_zeros, check_shapes, coupled_weight_decay, HParams, OptState, Optimizer};
use crate::kernels::{self, Slot, StepKernel};
use crate::Result;
use tch::Tensor;

const NAMES: &[&str] = &["lr", "momentum", "dampening", "weight_decay"];

/// torch.optim.SGD, single-tensor algorithm:
/// `g ← g + wd·θ`; with momentum, `buf ← g` at the first step, `buf ← μ·buf + (1 − τ)·g` after
/// (τ = dampening), `g ← g + μ·buf` (Nesterov) or `g ← buf`; `θ ← θ − lr·g`.
///
/// Unlike torch, the first-step buffer is `g` itself, not a detached copy, so that the meta-gradient
/// flows through it. A momentum override tensor always takes the momentum path (a tensor is never
/// read back to test it for 0); a constant momentum of 0 takes torch's plain path.
#[derive(Debug, Clone)]
pub struct Sgd {
    lr: f64,
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
    nesterov: bool,
    fused: bool,
}

impl Sgd {
    /// SGD with learning rate `lr`; momentum, dampening and weight decay 0 (torch's defaults).
    pub fn new(lr: f64) -> Sgd {
        Sgd {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            fused: false,
        }
    }
    pub fn momentum(mut self, momentum: f64) -> Sgd {
        self.momentum = momentum;
        self
    }
    pub fn dampening(mut self, dampening: f64) -> Sgd {
        self.dampening = dampening;
        self
    }
    /// Nesterov momentum (torch requires momentum > 0 and dampening 0 for it).
    pub fn nesterov(mut self, nesterov: bool) -> Sgd {
        self.nesterov = nesterov;
        self
    }
    pub fn weight_decay(mut self, weight_decay: f64) -> Sgd {
        self.weight_decay = weight_decay;
        self
    }
    /// Take each step with one fused kernel (runtime::kernels) where it supports θ (f32/f64 on
    /// the CPU or CUDA): one pass over the buffers forward and one backward instead of several
    /// tensor ops each. On this project's CPU it measured faster than the tensor-op path for the
    /// step alone, and about even with it, or slower, forward + backward (SGD's tensor ops are few
    /// and cheap; benches/README.md, `cargo bench -p metaloop --bench optim_step`); it equals the
    /// tensor-op path to rounding (tests/fused_optim.rs). Off by default: the fused backward
    /// cannot itself be differentiated (`create_graph` through a step's backward: third-order
    /// derivatives), which the tensor-op path, the reference, can.
    pub fn fused(mut self, fused: bool) -> Sgd {
        self.fused = fused;
        self
    }
}

impl Optimizer for Sgd {
    fn name(&self) -> &'static str {
        "SGD"
    }

    fn hparam_names(&self) -> &'static [&'static str] {
        NAMES
    }

    fn hparam_default(&self, name: &str) -> Option<f64> {
        match name {
            "lr" => Some(self.lr),
            "momentum" => Some(self.momentum),
            "dampening" => Some(self.dampening),
            "weight_decay" => Some(self.weight_decay),
            _ => None,
        }
    }

    fn init_state(&self, theta: &Tensor) -> Result<OptState> {
        let mut tensors = Vec::new();
        if self.momentum != 0.0 {
            tensors.push((
                "momentum_buffer".to_string(),
                theta.f_zeros_like()?.f_detach()?,
            ));
        }
        Ok(OptState::new(0, tensors))
    }

    fn update(
        &self,
        theta: &Tensor,
        grad: &Tensor,
        state: &OptState,
        hp: &HParams,
    ) -> Result<(Tensor, OptState)> {
        check_shapes("SGD.update", theta, grad)?;
        let lr = hp.value("lr", self.lr, theta)?;
        let momentum = hp.value("momentum", self.momentum, theta)?;
        let dampening = hp.value("dampening", self.dampening, theta)?;
        let weight_decay = hp.value("weight_decay", self.weight_decay, theta)?;
        if self.fused && kernels::supports(theta) {
            let momentum_path = !momentum.is_zero_const();
            let prev = if momentum_path && state.step() > 0 {
                state.get("momentum_buffer")
            } else {
                None
            };
            let flags = [
                state.step() as f64,
                f64::from(u8::from(self.nesterov)),
                f64::from(u8::from(momentum_path)),
            ];
            let hparams = [
                Slot::from(&lr),
                Slot::from(&momentum),
                Slot::from(&dampening),
                Slot::from(&weight_decay),
            ];
            let n_out = if momentum_path { 2 } else { 1 };
            let (theta, out) = kernels::fused_step(
                StepKernel::Sgd,
                theta,
                grad,
                &[prev],
                &hparams,
                &flags,
                n_out,
            )?;
            let tensors = out
                .into_iter()
                .map(|b| ("momentum_buffer".to_string(), b))
                .collect();
            return Ok((theta, OptState::new(state.step() + 1, tensors)));
        }

        let mut g = coupled_weight_decay(grad, theta, &weight_decay)?;
        let mut tensors = Vec::new();
        if !momentum.is_zero_const() {
            let buf = if state.step() == 0 {
                g.shallow_clone()
            } else {
                let prev = buffer_or_zeros(state, "momentum_buffer", theta)?;
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
            tensors.push(("momentum_buffer".to_string(), buf));
        }
        let theta = theta.f_sub(&lr.scale(&g)?)?;
        Ok((theta, OptState::new(state.step() + 1, tensors)))
    }

    fn box_clone(&self) -> Box<dyn Optimizer> {
        Box::new(self.clone())
    }
}
