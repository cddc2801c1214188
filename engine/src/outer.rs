//! The outer step: the outer optimizer (a pure update from `runtime::optim`, identical on every
//! rank), its hyperparameters and state, the learning-rate schedule and the clipping of the
//! meta-gradient (engine::schedule), how many outer iterations are done, and the skips of
//! non-finite steps. Nothing here prints.

use metaloop_runtime::optim::{HParams, HValue, OptState, Optimizer};
use tch::Tensor;

use crate::config::TrainConfig;
use crate::meta_params::MetaParams;
use crate::outer_options;
use crate::schedule::{clip_factor, LrSchedule};
use crate::{Error, Result};

/// The outer optimizer and where the outer loop stands.
pub(crate) struct OuterStep {
    optimizer: Box<dyn Optimizer>,
    hparams: HParams,
    state: OptState,
    schedule: LrSchedule,
    /// `outer.clip_grad_norm` (0 = off).
    clip: f64,
    /// Outer iterations completed (skipped ones count).
    pub(crate) iteration: u64,
    /// Outer steps skipped in a row for non-finite values.
    skips_in_a_row: u32,
    /// `outer.max_nonfinite_skips`.
    max_skips: u32,
    /// Outer steps whose meta-gradient was clipped, since the run began.
    pub(crate) clips: u64,
}

/// What one outer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OuterUpdate {
    /// The learning rate of the step.
    pub lr: f64,
    /// The meta-gradient's norm before clipping, when the step clipped it.
    pub clipped: Option<f64>,
    /// The clipped steps since the run began (`None` when clipping is off).
    pub clips: Option<u64>,
}

impl OuterStep {
    /// The optimizer of `outer.optimizer` (fused kernels when `fused`), its state initialised
    /// on `meta`'s meta-vector, at iteration 0.
    pub(crate) fn new(cfg: &TrainConfig, fused: bool, meta: &MetaParams) -> Result<OuterStep> {
        OuterStep::for_vector(cfg, fused, &meta.vector()?)
    }

    /// As `new`, for a meta-vector shaped like `theta`.
    pub(crate) fn for_vector(cfg: &TrainConfig, fused: bool, theta: &Tensor) -> Result<OuterStep> {
        let optimizer = outer_options::build_outer(&cfg.outer, fused);
        let state = optimizer.init_state(theta)?;
        Ok(OuterStep {
            hparams: HParams::defaults(optimizer.as_ref()),
            optimizer,
            state,
            schedule: LrSchedule::new(&cfg.outer),
            clip: cfg.outer.clip_grad_norm,
            iteration: 0,
            skips_in_a_row: 0,
            max_skips: cfg.outer.max_nonfinite_skips,
            clips: 0,
        })
    }

    /// The learning rate of the next outer step.
    pub(crate) fn lr(&self) -> f64 {
        self.schedule.lr(self.iteration)
    }

    /// The outer step of `meta` on the all-reduced meta-gradient `grad` of L2 norm `norm`, or a
    /// skip when `skipped` (non-finite values somewhere); the error after
    /// `outer.max_nonfinite_skips` skips in a row. `nonfinite` names the tasks at fault.
    pub(crate) fn apply(
        &mut self,
        meta: &mut MetaParams,
        grad: &Tensor,
        norm: f64,
        skipped: bool,
        nonfinite: &[usize],
    ) -> Result<OuterUpdate> {
        let lr = self.lr();
        if skipped {
            self.skips_in_a_row += 1;
            tracing::warn!(iteration = self.iteration, tasks = ?nonfinite, "non-finite meta-gradient: outer step skipped");
            if self.skips_in_a_row >= self.max_skips {
                return Err(Error::NonFinite {
                    iteration: self.iteration,
                    skips: self.skips_in_a_row,
                    tasks: nonfinite.to_vec(),
                });
            }
            return Ok(OuterUpdate {
                lr,
                clipped: None,
                clips: self.clip_count(),
            });
        }
        self.skips_in_a_row = 0;
        let _s = tracing::info_span!("outer_step").entered();
        let (next, update) = self.update(&meta.vector()?, grad, norm)?;
        meta.set_vector(&next)?;
        Ok(update)
    }

    /// One step of the meta-vector `theta` on `grad` (L2 norm `norm`) at this iteration's
    /// learning rate, clipped first when `outer.clip_grad_norm` asks: the new meta-vector.
    /// The caller counts the iteration.
    pub(crate) fn update(
        &mut self,
        theta: &Tensor,
        grad: &Tensor,
        norm: f64,
    ) -> Result<(Tensor, OuterUpdate)> {
        let lr = self.lr();
        self.hparams.set("lr", HValue::Const(lr))?;
        let factor = clip_factor(self.clip, norm);
        if factor.is_some() {
            self.clips += 1;
            tracing::info!(
                iteration = self.iteration,
                norm,
                max = self.clip,
                "meta-gradient clipped"
            );
        }
        let (next, state) = tch::no_grad(|| -> Result<(Tensor, OptState)> {
            let scaled = factor.map(|f| grad.f_mul_scalar(f)).transpose()?;
            let g = scaled.as_ref().unwrap_or(grad);
            Ok(self
                .optimizer
                .update(theta, g, &self.state, &self.hparams)?)
        })?;
        self.state = state;
        let clipped = factor.map(|_| norm);
        let clips = self.clip_count();
        Ok((next, OuterUpdate { lr, clipped, clips }))
    }

    /// The clipped steps so far, when clipping is on.
    fn clip_count(&self) -> Option<u64> {
        (self.clip > 0.0).then_some(self.clips)
    }

    /// The optimizer's step count and named buffers (each like the meta-vector).
    pub(crate) fn state(&self) -> &OptState {
        &self.state
    }

    /// Puts back a state read from a checkpoint, as after `iteration` outer iterations; the
    /// schedule, a function of the iteration, continues from there.
    pub(crate) fn restore(&mut self, iteration: u64, state: OptState, clips: u64) {
        self.state = state;
        self.iteration = iteration;
        self.clips = clips;
    }
}

#[cfg(test)]
#[path = "outer_tests.rs"]
mod tests;
