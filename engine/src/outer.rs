//! The outer step: the outer optimizer (a pure update from `runtime::optim`, identical on every
//! rank), its hyperparameters and state, how many outer iterations are done, and the skips of
//! non-finite steps. Nothing here prints.

use metaloop_runtime::optim::{Adam, HParams, OptState, Optimizer, Sgd};
use tch::Tensor;

use crate::config::{OuterOptimizer, TrainConfig};
use crate::meta_params::MetaParams;
use crate::{Error, Result};

/// The outer optimizer and where the outer loop stands.
pub(crate) struct OuterStep {
    optimizer: Box<dyn Optimizer>,
    hparams: HParams,
    state: OptState,
    /// Outer iterations completed (skipped ones count).
    pub(crate) iteration: u64,
    /// Outer steps skipped in a row for non-finite values.
    skips_in_a_row: u32,
    /// `outer.max_nonfinite_skips`.
    max_skips: u32,
}

impl OuterStep {
    /// The optimizer of `outer.optimizer` (fused kernels when `fused`), its state initialised
    /// on `meta`'s meta-vector, at iteration 0.
    pub(crate) fn new(cfg: &TrainConfig, fused: bool, meta: &MetaParams) -> Result<OuterStep> {
        let optimizer: Box<dyn Optimizer> = match cfg.outer.optimizer {
            OuterOptimizer::Sgd => Box::new(Sgd::new(cfg.outer.lr).fused(fused)),
            OuterOptimizer::Adam => Box::new(Adam::new(cfg.outer.lr).fused(fused)),
        };
        let state = optimizer.init_state(&meta.vector()?)?;
        Ok(OuterStep {
            hparams: HParams::defaults(optimizer.as_ref()),
            optimizer,
            state,
            iteration: 0,
            skips_in_a_row: 0,
            max_skips: cfg.outer.max_nonfinite_skips,
        })
    }

    /// The outer step of `meta` on the all-reduced meta-gradient, or a skip when `skipped`
    /// (non-finite values somewhere); the error after `outer.max_nonfinite_skips` skips in a
    /// row. `nonfinite` names the tasks at fault.
    pub(crate) fn apply(
        &mut self,
        meta: &mut MetaParams,
        grad: &Tensor,
        skipped: bool,
        nonfinite: &[usize],
    ) -> Result<()> {
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
            return Ok(());
        }
        self.skips_in_a_row = 0;
        let _s = tracing::info_span!("outer_step").entered();
        let (next, state) = tch::no_grad(|| {
            self.optimizer
                .update(&meta.vector()?, grad, &self.state, &self.hparams)
                .map_err(Error::from)
        })?;
        meta.set_vector(&next)?;
        self.state = state;
        Ok(())
    }

    /// The optimizer's step count and named buffers (each like the meta-vector).
    pub(crate) fn state(&self) -> &OptState {
        &self.state
    }

    /// Puts back a state read from a checkpoint, as after `iteration` outer iterations.
    pub(crate) fn restore(&mut self, iteration: u64, state: OptState) {
        self.state = state;
        self.iteration = iteration;
    }
}
