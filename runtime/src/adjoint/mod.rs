//! Memory-bounded meta-gradients for long inner unrolls (recompute-and-adjoint).
//!
//! Full tracking ([`crate::InnerLoop`] with `track_higher_grads(true)`) keeps the autograd graph of
//! every inner step alive until the meta-loss's backward pass, so memory grows with the number of
//! steps times the activations of one step. Here the forward pass runs the N inner steps without a
//! graph and stores only the trajectory: θ_t and the optimizer state at every t (detached, memory
//! O(N·P), no activations). The backward pass walks t = N−1 down to 0 and rebuilds one step's graph
//! at a time: θ_t and the state as fresh leaves, the support loss at θ_t, its gradient with
//! `create_graph`, the optimizer update; one vector-Jacobian product with the incoming adjoints
//! (λ_θ, λ_state) gives the adjoints at t and adds this step's share to the hypergradient of every
//! override tensor. At t = 0, λ_θ is the meta-gradient w.r.t. θ0. The result equals full tracking's
//! (the same operations; tests/adjoint.rs finds them equal to the last bit or within 1e-15), at
//! the cost of one more first-order pass (the support loss and its gradient are computed twice).
//!
//! Peak memory is the trajectory plus one step's graph plus the meta-loss's graph. Tasks are
//! independent, so a caller short of memory can also split a meta-batch into chunks of tasks, one
//! `compute` per chunk, and sum the results.
//!
//! With `checkpoint_interval(k)` only every k-th θ_t and state are stored, and each segment of k
//! steps is recomputed (without a graph) just before its adjoint pass: memory O((N/k + k)·P) at
//! one more first-order pass; k ≈ √N minimises it.
//!
//! The semantics are InnerLoop's: frozen parameters have their gradient zeroed and their values
//! carried over; overrides are `[]`, `[1]`, `[G]` or `[P]` tensors; task-batched `[T, P]`
//! parameters, or `[P]` parameters expanded with `tasks(T)`, with the support loss summed over tasks.
//!
//! The support-loss closure is called again in the backward pass with the same θ_t and t, so it
//! must be deterministic: BatchNorm with batch statistics is (same inputs, same statistics);
//! dropout or a fresh random batch per call is not, and would give a wrong meta-gradient.
//!
//! This module must not keep an autograd graph from one inner step to the next, read tensor values
//! back to the host, print, or know about datasets and models (the closures hold the model).

mod pass;
mod results;
mod unroll;

use tch::Tensor;

use crate::inner_core::InnerSpec;
use crate::optim::Optimizer;
use crate::{Error, Params, Result};
use pass::Adjoint;
pub use results::{AdjointGradients, Trajectory};
use unroll::{Point, Unroll};

/// Configures a recompute-and-adjoint meta-gradient: the differentiable optimizer of the inner
/// loop, its hyperparameter overrides, frozen parameters and task batching, as for
/// [`crate::InnerLoop`].
#[derive(Debug)]
pub struct MetaGradient {
    spec: InnerSpec,
    checkpoint_interval: usize,
}

inner_spec_builders!(MetaGradient);

impl MetaGradient {
    /// A meta-gradient through inner steps of the differentiable `optimizer`.
    pub fn new(optimizer: impl Optimizer + 'static) -> MetaGradient {
        MetaGradient::with_boxed(Box::new(optimizer))
    }

    /// [`MetaGradient::new`] for an optimizer chosen at run time.
    pub fn with_boxed(optimizer: Box<dyn Optimizer>) -> MetaGradient {
        MetaGradient {
            spec: InnerSpec::new(optimizer),
            checkpoint_interval: 1,
        }
    }

    /// Stores θ_t and the state only every `k` steps and recomputes each segment before its
    /// adjoint pass (1, the default, stores every step; 0 is read as 1).
    pub fn checkpoint_interval(mut self, k: usize) -> MetaGradient {
        self.checkpoint_interval = k.max(1);
        self
    }

    /// The forward pass and the adjoint pass in one call, for a meta-loss on the adapted weights
    /// θ_N. `support_loss(θ_t, t)` is the inner loss at step t (summed over tasks); it is called
    /// twice per step and must be deterministic (see the module documentation).
    pub fn compute(
        &self,
        params: &Params,
        steps: usize,
        mut support_loss: impl FnMut(&Params, usize) -> Result<Tensor>,
        meta_loss: impl FnOnce(&Params) -> Result<Tensor>,
    ) -> Result<AdjointGradients> {
        let trajectory = self.forward(params, steps, &mut support_loss)?;
        let mut meta_loss = Some(meta_loss);
        self.backward(trajectory, &mut support_loss, |theta, t| {
            if t != steps {
                return Ok(None);
            }
            match meta_loss.take() {
                Some(f) => f(theta).map(Some),
                None => Ok(None),
            }
        })
    }

    /// The forward pass: `steps` inner steps without a graph, from `params` (expanded to
    /// `tasks(T)` rows when set), storing the trajectory.
    pub fn forward(
        &self,
        params: &Params,
        steps: usize,
        mut support_loss: impl FnMut(&Params, usize) -> Result<Tensor>,
    ) -> Result<Trajectory> {
        let layout = params.layout().clone();
        let hparams = self.spec.resolve(&layout)?;
        let frozen_mask = self.spec.frozen_mask(params)?;
        let (mut theta, expanded) = self.time_zero(params)?;
        let mut state = self.spec.optimizer.init_state(&theta)?.detach()?;
        let interval = self.checkpoint_interval;
        let mut checkpoints = Vec::with_capacity(steps.div_ceil(interval));
        let step = Unroll {
            spec: &self.spec,
            layout: &layout,
            hparams: &hparams,
            frozen_mask: frozen_mask.as_ref(),
        };
        for t in 0..steps {
            let (next, next_state) = step.without_graph(&theta, &state, t, &mut support_loss)?;
            if checkpoints.len() * interval == t {
                checkpoints.push((theta, state));
            }
            theta = next;
            state = next_state;
        }
        Ok(Trajectory {
            layout,
            initial: params.flat().shallow_clone(),
            expanded,
            steps,
            interval,
            hparams,
            frozen_mask,
            checkpoints,
            adapted: theta,
        })
    }

    /// θ at time 0, detached: the caller's parameters, or their expansion to `tasks(T)` rows
    /// (then `true`).
    fn time_zero(&self, params: &Params) -> Result<(Tensor, bool)> {
        let theta = params.flat().f_detach()?;
        let Some(t) = self.spec.tasks else {
            return Ok((theta, false));
        };
        if params.tasks().is_some() || t < 1 {
            return Err(Error::Shape {
                op: "MetaGradient::tasks",
                expected: format!(
                    "single-task parameters [{}] to expand to {t} >= 1 tasks",
                    params.layout().numel()
                ),
                got: params.flat().size(),
            });
        }
        Ok((theta.f_unsqueeze(0)?.f_repeat([t, 1])?, true))
    }

    /// The adjoint pass over a trajectory from [`MetaGradient::forward`] of this configuration.
    /// `meta_loss(θ_t, t)` is called for t = N, N−1, ..., 0 and returns the meta-loss term at θ_t
    /// (`None` for none): the final query loss at t = N, and e.g. MAML++'s weighted per-step
    /// query losses at earlier t. Terms that read the caller's parameters or override tensors
    /// directly also get their gradient.
    pub fn backward(
        &self,
        trajectory: Trajectory,
        mut support_loss: impl FnMut(&Params, usize) -> Result<Tensor>,
        mut meta_loss: impl FnMut(&Params, usize) -> Result<Option<Tensor>>,
    ) -> Result<AdjointGradients> {
        let Trajectory {
            layout,
            initial,
            expanded,
            steps,
            interval,
            hparams,
            frozen_mask,
            mut checkpoints,
            adapted,
        } = trajectory;
        let mut adjoint = Adjoint::new(&hparams, &initial, &self.spec.overrides)?;
        // t = N: λ_θ = d meta-loss / d θ_N.
        let mut lambda_theta = adjoint.final_term(&layout, adapted, steps, &mut meta_loss)?;
        let unroll = Unroll {
            spec: &self.spec,
            layout: &layout,
            hparams: &hparams,
            frozen_mask: frozen_mask.as_ref(),
        };
        // Segments from the last to the first: recompute the segment's θ_t and state without a
        // graph from its checkpoint, then the adjoint of each of its steps in reverse.
        while let Some(start_point) = checkpoints.pop() {
            let start = checkpoints.len() * interval;
            let end = (start + interval).min(steps);
            let mut segment = unroll.segment(start_point, start..end, &mut support_loss)?;
            for t in (start..end).rev() {
                let (theta, state) = segment.pop().expect("one entry per step of the segment");
                let at = Point { theta, state, t };
                lambda_theta = adjoint.step_back(
                    &unroll,
                    at,
                    lambda_theta,
                    &mut support_loss,
                    &mut meta_loss,
                )?;
            }
        }
        adjoint.finish(lambda_theta, expanded, &self.spec.overrides, &initial)
    }
}
