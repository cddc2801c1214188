//! What `InnerLoop` and `adjoint::MetaGradient` share: the specification of an inner loop (the
//! differentiable optimizer, hyperparameter overrides, frozen parameters, task batching), its
//! builder methods, and the one inner step both take (the gradient of the support loss, masked
//! for frozen parameters; the optimizer update; frozen values carried over).
//!
//! It keeps no tensors between steps beyond the overrides it was given, and never prints.

use crate::optim::{HParams, OptState, Optimizer};
use crate::{Error, Layout, Params, Result};
use tch::Tensor;

/// The inner loop's specification, as the builders set it.
#[derive(Debug)]
pub(crate) struct InnerSpec {
    pub optimizer: Box<dyn Optimizer>,
    /// `(name, tensor)` per override, in the order given (a later one wins).
    pub overrides: Vec<(String, Tensor)>,
    pub frozen: Vec<String>,
    pub tasks: Option<i64>,
}

impl InnerSpec {
    pub fn new(optimizer: Box<dyn Optimizer>) -> InnerSpec {
        InnerSpec {
            optimizer,
            overrides: Vec::new(),
            frozen: Vec::new(),
            tasks: None,
        }
    }

    /// The hyperparameters in force: the optimizer's defaults with the overrides applied.
    pub fn resolve(&self, layout: &Layout) -> Result<HParams> {
        HParams::resolve(
            self.optimizer.as_ref(),
            &self.overrides,
            &layout.group_sizes(),
        )
    }

    /// A boolean `[P]` mask, true where the element belongs to a parameter that may be updated;
    /// `None` when nothing is frozen.
    pub fn frozen_mask(&self, params: &Params) -> Result<Option<Tensor>> {
        if self.frozen.is_empty() {
            return Ok(None);
        }
        let layout = params.layout();
        let mut trainable = vec![true; layout.numel() as usize];
        for name in &self.frozen {
            let spec = layout.get(name).ok_or_else(|| Error::UnknownParam {
                name: name.clone(),
                known: layout.names().collect::<Vec<_>>().join(", "),
            })?;
            for v in &mut trainable[spec.offset as usize..(spec.offset + spec.numel) as usize] {
                *v = false;
            }
        }
        Ok(Some(
            Tensor::f_from_slice(&trainable)?.f_to_device(params.device())?,
        ))
    }

    /// The optimizer update of one inner step from the support gradient: the gradient of frozen
    /// parameters zeroed before the update, their values carried over after it.
    pub fn update(
        &self,
        frozen_mask: Option<&Tensor>,
        theta: &Tensor,
        grad: &Tensor,
        state: &OptState,
        hparams: &HParams,
    ) -> Result<(Tensor, OptState)> {
        let grad = match frozen_mask {
            Some(mask) => grad.f_mul(&mask.f_to_kind(grad.kind())?)?,
            None => grad.shallow_clone(),
        };
        let (next, state) = self.optimizer.update(theta, &grad, state, hparams)?;
        let next = match frozen_mask {
            Some(mask) => next.f_where_self(mask, theta)?,
            None => next,
        };
        Ok((next, state))
    }
}

/// The builder methods that configure an [`InnerSpec`] held in field `spec`, written once for
/// `InnerLoopBuilder` and `MetaGradient`.
macro_rules! inner_spec_builders {
    ($t:ty) => {
        impl $t {
            /// Replaces the optimizer's hyperparameter `name` by `value` (shape `[]`, `[1]`, `[G]`
            /// or `[P]`) at every step; when `value` requires grad, its gradient is the
            /// hypergradient.
            pub fn override_hparam(mut self, name: &str, value: &tch::Tensor) -> Self {
                self.spec
                    .overrides
                    .push((name.to_string(), value.shallow_clone()));
                self
            }

            /// Parameters (by name) that the inner steps never update, e.g. everything but the
            /// head for ANIL: their gradient is zeroed before the update and their values are
            /// carried over; they still receive the meta-gradient.
            pub fn freeze<S: AsRef<str>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
                self.spec
                    .frozen
                    .extend(names.into_iter().map(|s| s.as_ref().to_string()));
                self
            }

            /// Runs `tasks` tasks at once from single-task `[P]` parameters: time 0 becomes
            /// `[T, P]`, each row a copy of them, and the meta-gradient w.r.t. them is the sum
            /// over the tasks.
            pub fn tasks(mut self, tasks: i64) -> Self {
                self.spec.tasks = Some(tasks);
                self
            }
        }
    };
}

/// Errors unless `loss` has one element.
pub(crate) fn check_scalar(op: &'static str, loss: &Tensor) -> Result<()> {
    if loss.numel() != 1 {
        return Err(Error::Shape {
            op,
            expected: "a scalar loss (sum the tasks' losses)".into(),
            got: loss.size(),
        });
    }
    Ok(())
}

/// d loss / d theta, with a graph when `create_graph`; zeros where the loss does not depend on
/// theta (libtorch returns an undefined gradient for an unused input).
pub(crate) fn gradient(loss: &Tensor, theta: &Tensor, create_graph: bool) -> Result<Tensor> {
    let mut grads = Tensor::f_run_backward(&[loss], &[theta], create_graph, create_graph)?;
    or_zeros(grads.pop(), theta)
}

/// The gradient, or zeros shaped like `like` when libtorch returned none (an unused input).
pub(crate) fn or_zeros(g: Option<Tensor>, like: &Tensor) -> Result<Tensor> {
    match g {
        Some(g) if g.defined() => Ok(g),
        _ => Ok(like.f_zeros_like()?.f_detach()?),
    }
}
