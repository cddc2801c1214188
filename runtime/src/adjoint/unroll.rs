//! One inner step of an unroll, replayed without a graph (forward pass and segment recomputation).

use std::sync::Arc;

use tch::Tensor;

use crate::inner_core::{check_scalar, gradient, InnerSpec};
use crate::optim::{HParams, OptState};
use crate::{Layout, Params, Result};

/// What one inner step of an unroll needs besides θ_t and the state.
pub(super) struct Unroll<'a> {
    pub(super) spec: &'a InnerSpec,
    pub(super) layout: &'a Arc<Layout>,
    pub(super) hparams: &'a HParams,
    pub(super) frozen_mask: Option<&'a Tensor>,
}

impl Unroll<'_> {
    /// One inner step without a graph: the support loss's first-order gradient at θ_t, the
    /// update under `no_grad`; returns θ_{t+1} and the state, detached.
    pub(super) fn without_graph(
        &self,
        theta: &Tensor,
        state: &OptState,
        t: usize,
        support_loss: &mut impl FnMut(&Params, usize) -> Result<Tensor>,
    ) -> Result<(Tensor, OptState)> {
        let leaf = theta.f_detach()?.f_set_requires_grad(true)?;
        let loss = support_loss(&self.params(&leaf)?, t)?;
        let grad = support_gradient(&loss, &leaf, false)?;
        drop(loss);
        tch::no_grad(|| -> Result<(Tensor, OptState)> {
            let (next, state) =
                self.spec
                    .update(self.frozen_mask, theta, &grad, state, self.hparams)?;
            Ok((next.f_detach()?, state.detach()?))
        })
    }

    /// θ_t and the state for t in `times`, recomputed without a graph from the first.
    pub(super) fn segment(
        &self,
        start: (Tensor, OptState),
        times: std::ops::Range<usize>,
        support_loss: &mut impl FnMut(&Params, usize) -> Result<Tensor>,
    ) -> Result<Vec<(Tensor, OptState)>> {
        let mut segment = Vec::with_capacity(times.len());
        segment.push(start);
        for t in times.start..times.end - 1 {
            let (theta, state) = segment.last().expect("the segment holds its start");
            let next = self.without_graph(theta, state, t, support_loss)?;
            segment.push(next);
        }
        Ok(segment)
    }

    pub(super) fn params(&self, theta: &Tensor) -> Result<Params> {
        Params::from_flat(self.layout.clone(), theta.shallow_clone())
    }
}

/// θ_t and the optimizer state at time t of an unroll (detached).
pub(super) struct Point {
    pub(super) theta: Tensor,
    pub(super) state: OptState,
    pub(super) t: usize,
}

/// The support gradient of a step (with a graph when `create_graph`); zeros where the loss does
/// not depend on θ.
pub(super) fn support_gradient(
    loss: &Tensor,
    theta: &Tensor,
    create_graph: bool,
) -> Result<Tensor> {
    check_scalar("MetaGradient support_loss", loss)?;
    if !loss.requires_grad() {
        return Ok(theta.f_zeros_like()?);
    }
    gradient(loss, theta, create_graph)
}
