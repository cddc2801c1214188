//! What a recompute-and-adjoint pass gives back: the stored [`Trajectory`] of the forward pass
//! and the [`AdjointGradients`] of the backward pass.

use std::sync::Arc;

use tch::Tensor;

use crate::optim::{HParams, OptState};
use crate::{Error, Layout, Params, Result};

/// What [`MetaGradient::compute`] and [`MetaGradient::backward`] give back.
#[derive(Debug)]
pub struct AdjointGradients {
    /// The meta-loss (the sum of every term the meta-loss closure returned), detached.
    pub meta_loss: Tensor,
    /// d meta-loss / d `params.flat()` of the caller's parameters, shaped like them (`[P]` for
    /// single-task parameters expanded with `tasks(T)`: summed over the tasks).
    pub theta0: Tensor,
    /// One `(name, hypergradient)` per override, in the order given, shaped like the override
    /// tensor; zeros for an override that does not require grad.
    pub hypergradients: Vec<(String, Tensor)>,
    /// The caller's tensors that receive `theta0` and the hypergradients in [`Self::accumulate`].
    pub(super) targets: Vec<Tensor>,
}

impl AdjointGradients {
    /// Adds the meta-gradient into `.grad` of the caller's parameters and of every override that
    /// requires grad (through their own graphs when they are not leaves), as
    /// `meta_loss.backward()` does after full tracking with `copy_initial_weights(false)`.
    /// Not calling it gives `copy_initial_weights(true)`'s behaviour: nothing reaches them.
    pub fn accumulate(&self) -> Result<()> {
        let grads = std::iter::once(&self.theta0).chain(self.hypergradients.iter().map(|(_, g)| g));
        let mut total: Option<Tensor> = None;
        for (x, g) in self.targets.iter().zip(grads) {
            if !x.requires_grad() {
                continue;
            }
            let term = x.f_mul(&g.f_to_kind(x.kind())?)?.f_sum(x.kind())?;
            total = Some(match total {
                Some(t) => t.f_add(&term.f_to_kind(t.kind())?)?,
                None => term,
            });
        }
        if let Some(total) = total {
            total.f_backward()?;
        }
        Ok(())
    }
}

/// The stored trajectory of an unroll: θ_t and the optimizer state at the checkpointed times
/// (every t with the default interval 1), and the adapted θ_N; all detached.
#[derive(Debug)]
pub struct Trajectory {
    pub(super) layout: Arc<Layout>,
    /// The caller's parameters (shallow), which receive the meta-gradient.
    pub(super) initial: Tensor,
    /// True when `initial` is `[P]` and time 0 is its expansion to `[T, P]`.
    pub(super) expanded: bool,
    pub(super) steps: usize,
    pub(super) interval: usize,
    pub(super) hparams: HParams,
    pub(super) frozen_mask: Option<Tensor>,
    /// (θ_t, state_t) at t = 0, k, 2k, ... < steps.
    pub(super) checkpoints: Vec<(Tensor, OptState)>,
    /// θ_N.
    pub(super) adapted: Tensor,
}

impl Trajectory {
    /// The number of inner steps N.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The adapted parameters θ_N (detached, do not require grad).
    pub fn adapted(&self) -> Result<Params> {
        Params::from_flat(self.layout.clone(), self.adapted.shallow_clone())
    }

    /// θ_t (detached) at a stored time: N, or a multiple of the checkpoint interval below N.
    pub fn params_at(&self, t: usize) -> Result<Params> {
        if t > self.steps {
            return Err(Error::TimeOutOfRange {
                requested: t,
                latest: self.steps,
            });
        }
        if t == self.steps {
            return self.adapted();
        }
        // Checkpoints sit at multiples of the interval (`%` rather than `is_multiple_of`, which
        // needs Rust 1.87 and the workspace declares 1.85).
        let (index, offset) = (t / self.interval, t % self.interval);
        if offset > 0 {
            return Err(Error::HistoryNotTracked {
                requested: t,
                latest: self.steps,
            });
        }
        let theta = &self.checkpoints[index].0;
        Params::from_flat(self.layout.clone(), theta.shallow_clone())
    }

    /// Every stored tensor: the checkpointed θ_t and optimizer buffers, and θ_N. None of them
    /// requires grad (the forward pass keeps no graph).
    pub fn stored_tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.checkpoints
            .iter()
            .flat_map(|(theta, state)| {
                std::iter::once(theta).chain(state.tensors().map(|(_, t)| t))
            })
            .chain(std::iter::once(&self.adapted))
    }

    /// Bytes held by [`Self::stored_tensors`].
    pub fn stored_bytes(&self) -> usize {
        self.stored_tensors()
            .map(|t| t.numel() * t.kind().elt_size_in_bytes())
            .sum()
    }
}
