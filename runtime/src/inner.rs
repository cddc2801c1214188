//! `InnerLoop`: higher's `innerloop_ctx`, on flat parameters, task-batched.
//!
//! An inner loop starts from `Params` (time 0) and takes differentiable optimizer steps on a loss
//! that the caller computes with [`InnerLoop::forward`]. Each step makes a new flat parameter tensor
//! (the old ones are kept while `track_higher_grads` is on, so that `params_at(t)` and a meta-loss
//! on the adapted weights can be differentiated back to time 0 and to every overridden
//! hyperparameter). The semantics are higher 0.2.1's:
//!
//! - `copy_initial_weights(true)` (higher's default): time 0 is a detached copy of the given
//!   parameters, a new leaf; the meta-gradient does not reach them. `false`: time 0 *is* the given
//!   parameters, so a meta-loss's backward pass accumulates into their gradient (MAML).
//! - `track_higher_grads(false)`: first-order; every step's gradient is taken without a graph and
//!   the new parameters are detached leaves; only the latest time is kept, so memory stays constant
//!   over any number of steps.
//! - `override_hparam(name, tensor)`: the optimizer's hyperparameter becomes the tensor (shape
//!   `[]`, `[1]`, `[G]` or `[P]`), which receives its hypergradient. An override passed to one step
//!   stays in force for later steps, as in higher.
//!
//! With task-batched parameters `[T, P]` (or `tasks(T)`), the caller's loss is the sum over tasks
//! of each task's loss, so each task's gradient is its own, and every step updates all T tasks in
//! one optimizer update.
//!
//! It must not read tensor values back to the host (no device sync in the step), print, or know
//! about datasets.

use crate::nn::{BnState, Module};
use crate::optim::{HParams, OptState, Optimizer};
use crate::{Error, Params, Result};
use std::sync::Arc;
use tch::Tensor;

/// A transformation applied to the flat gradient before the optimizer sees it.
pub type GradCallback<'a> = Box<dyn Fn(&Tensor) -> Result<Tensor> + 'a>;

/// Options of one step: a gradient callback and overrides that take effect from this step on.
#[derive(Default)]
pub struct StepOptions<'a> {
    grad_callback: Option<GradCallback<'a>>,
    overrides: Vec<(String, Tensor)>,
}

impl<'a> StepOptions<'a> {
    pub fn new() -> Self {
        StepOptions::default()
    }

    /// Transforms the flat gradient (`[P]` or `[T, P]`) before the update, e.g. clipping.
    /// It must return a tensor of the same shape.
    pub fn grad_callback(mut self, f: impl Fn(&Tensor) -> Tensor + 'a) -> Self {
        self.grad_callback = Some(Box::new(move |g| Ok(f(g))));
        self
    }

    /// Like [`StepOptions::grad_callback`], for a fallible transformation.
    pub fn try_grad_callback(mut self, f: impl Fn(&Tensor) -> Result<Tensor> + 'a) -> Self {
        self.grad_callback = Some(Box::new(f));
        self
    }

    /// Overrides a hyperparameter from this step on (higher's `step(loss, override=...)`).
    pub fn override_hparam(mut self, name: &str, value: &Tensor) -> Self {
        self.overrides
            .push((name.to_string(), value.shallow_clone()));
        self
    }
}

/// Builds an [`InnerLoop`]; see the module documentation for each option's meaning.
pub struct InnerLoopBuilder<'m> {
    model: &'m dyn Module,
    params: Params,
    optimizer: Box<dyn Optimizer>,
    copy_initial_weights: bool,
    track_higher_grads: bool,
    overrides: Vec<(String, Tensor)>,
    frozen: Vec<String>,
    tasks: Option<i64>,
}

impl<'m> InnerLoopBuilder<'m> {
    /// higher's meaning: `true` (the default) detaches time 0 from `params`; `false` lets the
    /// meta-gradient reach `params`.
    pub fn copy_initial_weights(mut self, copy: bool) -> Self {
        self.copy_initial_weights = copy;
        self
    }

    /// `true` (the default): differentiable steps and full history. `false`: first-order steps,
    /// only the latest parameters kept, constant memory.
    pub fn track_higher_grads(mut self, track: bool) -> Self {
        self.track_higher_grads = track;
        self
    }

    /// Replaces the optimizer's hyperparameter `name` by `value` (shape `[]`, `[1]`, `[G]` or
    /// `[P]`); when `value` requires grad, its gradient is the hypergradient.
    pub fn override_hparam(mut self, name: &str, value: &Tensor) -> Self {
        self.overrides
            .push((name.to_string(), value.shallow_clone()));
        self
    }

    /// Parameters (by name) that the inner loop never updates, e.g. everything but the head for
    /// ANIL. Their gradient is zeroed before the update and their values are carried over.
    pub fn freeze<S: AsRef<str>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.frozen
            .extend(names.into_iter().map(|s| s.as_ref().to_string()));
        self
    }

    /// Runs `tasks` tasks at once from single-task parameters: time 0 becomes `[T, P]`, each row
    /// a copy of `params` (differentiable back to `params` when `copy_initial_weights(false)`).
    pub fn tasks(mut self, tasks: i64) -> Self {
        self.tasks = Some(tasks);
        self
    }

    pub fn build(self) -> Result<InnerLoop<'m>> {
        let layout = self.params.layout().clone();
        let hparams = HParams::resolve(
            self.optimizer.as_ref(),
            &self.overrides,
            &layout.group_sizes(),
        )?;
        let mut theta0 = if self.copy_initial_weights {
            // A new leaf holding a copy of the values (detach_copy would keep a graph).
            let values = self.params.flat().f_detach()?;
            let mut copy = values.f_empty_like()?;
            copy.f_copy_(&values)?;
            Params::from_flat(layout.clone(), copy.set_requires_grad(true))?
        } else {
            self.params.clone()
        };
        if let Some(t) = self.tasks {
            if theta0.tasks().is_some() {
                return Err(Error::Shape {
                    op: "InnerLoop::tasks",
                    expected: format!(
                        "single-task parameters [{}] to expand to {t} tasks",
                        layout.numel()
                    ),
                    got: theta0.flat().size(),
                });
            }
            theta0 = theta0.expand_tasks(t)?;
        }
        if !self.track_higher_grads && !theta0.flat().requires_grad() {
            theta0 = Params::from_flat(
                layout.clone(),
                theta0.flat().f_detach()?.set_requires_grad(true),
            )?;
        }
        let frozen_mask = frozen_mask(&self.params, &self.frozen)?;
        let state = self.optimizer.init_state(theta0.flat())?;
        Ok(InnerLoop {
            model: self.model,
            layout,
            optimizer: self.optimizer,
            track_higher_grads: self.track_higher_grads,
            overrides: self.overrides,
            hparams,
            frozen_mask,
            history: vec![theta0],
            state,
            time: 0,
        })
    }
}

/// A boolean `[P]` mask, true where the element belongs to a parameter that may be updated.
fn frozen_mask(params: &Params, frozen: &[String]) -> Result<Option<Tensor>> {
    if frozen.is_empty() {
        return Ok(None);
    }
    let layout = params.layout();
    let mut trainable = vec![true; layout.numel() as usize];
    for name in frozen {
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

/// A differentiable inner loop (higher's `innerloop_ctx`): the functional model and the
/// differentiable optimizer in one.
pub struct InnerLoop<'m> {
    model: &'m dyn Module,
    layout: Arc<crate::Layout>,
    optimizer: Box<dyn Optimizer>,
    track_higher_grads: bool,
    overrides: Vec<(String, Tensor)>,
    hparams: HParams,
    frozen_mask: Option<Tensor>,
    /// Times 0..=time while tracking; only the latest otherwise.
    history: Vec<Params>,
    state: OptState,
    time: usize,
}

impl<'m> InnerLoop<'m> {
    /// Starts building an inner loop of `model` from `params` with the differentiable `optimizer`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(
        model: &'m dyn Module,
        params: &Params,
        optimizer: impl Optimizer + 'static,
    ) -> InnerLoopBuilder<'m> {
        InnerLoop::with_boxed(model, params, Box::new(optimizer))
    }

    /// [`InnerLoop::new`] for an optimizer chosen at run time.
    pub fn with_boxed(
        model: &'m dyn Module,
        params: &Params,
        optimizer: Box<dyn Optimizer>,
    ) -> InnerLoopBuilder<'m> {
        InnerLoopBuilder {
            model,
            params: params.clone(),
            optimizer,
            copy_initial_weights: true,
            track_higher_grads: true,
            overrides: Vec::new(),
            frozen: Vec::new(),
            tasks: None,
        }
    }

    /// The model at the latest weights, batch statistics in BatchNorm (train mode).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.model.forward(self.params(), x, true)
    }

    /// The model at the latest weights with BatchNorm running statistics kept in `state`.
    pub fn forward_with_state(
        &self,
        x: &Tensor,
        train: bool,
        state: &mut BnState,
    ) -> Result<Tensor> {
        self.model
            .forward_with_state(self.params(), x, train, state)
    }

    /// One differentiable step on `loss` (the sum of the tasks' losses for batched tasks).
    pub fn step(&mut self, loss: &Tensor) -> Result<()> {
        self.step_with(loss, StepOptions::new())
    }

    /// One step with a gradient callback and/or overrides that hold from this step on.
    pub fn step_with(&mut self, loss: &Tensor, options: StepOptions<'_>) -> Result<()> {
        if !options.overrides.is_empty() {
            self.overrides.extend(options.overrides);
            self.hparams = HParams::resolve(
                self.optimizer.as_ref(),
                &self.overrides,
                &self.layout.group_sizes(),
            )?;
        }
        let theta = self.params().flat().shallow_clone();
        let track = self.track_higher_grads;
        let mut grad = gradient(loss, &theta, track)?;
        if let Some(callback) = &options.grad_callback {
            let g = callback(&grad)?;
            if g.size() != grad.size() {
                return Err(Error::Shape {
                    op: "InnerLoop::step grad_callback",
                    expected: format!("{:?}", grad.size()),
                    got: g.size(),
                });
            }
            grad = g;
        }
        if let Some(mask) = &self.frozen_mask {
            grad = grad.f_mul(&mask.f_to_kind(grad.kind())?)?;
        }
        let (theta_in, state_in) = if track {
            (theta, self.state.clone())
        } else {
            (theta.f_detach()?, self.state.detach()?)
        };
        let (mut next, state) = if track {
            self.optimizer
                .update(&theta_in, &grad, &state_in, &self.hparams)?
        } else {
            // No graph: hyperparameter tensors that require grad are only read.
            tch::no_grad(|| {
                self.optimizer
                    .update(&theta_in, &grad, &state_in, &self.hparams)
            })?
        };
        if let Some(mask) = &self.frozen_mask {
            next = next.f_where_self(mask, &theta_in)?;
        }
        let next = if track {
            next
        } else {
            next.f_detach()?.set_requires_grad(true)
        };
        let next = Params::from_flat(self.layout.clone(), next)?;
        if track {
            self.history.push(next);
        } else {
            self.history[0] = next;
        }
        self.state = state;
        self.time += 1;
        Ok(())
    }

    /// The latest parameters.
    pub fn params(&self) -> &Params {
        self.history
            .last()
            .expect("an inner loop always holds time 0")
    }

    /// The parameters at time `t` (`0..=time()`), while tracking higher-order gradients; without
    /// tracking only `time()` itself.
    pub fn params_at(&self, t: usize) -> Result<&Params> {
        if t > self.time {
            return Err(Error::TimeOutOfRange {
                requested: t,
                latest: self.time,
            });
        }
        if self.track_higher_grads {
            Ok(&self.history[t])
        } else if t == self.time {
            Ok(self.params())
        } else {
            Err(Error::HistoryNotTracked {
                requested: t,
                latest: self.time,
            })
        }
    }

    /// Steps taken so far.
    pub fn time(&self) -> usize {
        self.time
    }

    /// The optimizer state after the latest step (momentum buffers, moments, step count).
    pub fn optimizer_state(&self) -> &OptState {
        &self.state
    }

    /// The hyperparameters in force (defaults with the overrides applied).
    pub fn hparams(&self) -> &HParams {
        &self.hparams
    }
}

/// d loss / d theta, with a graph when `create_graph`; zeros where the loss does not depend on
/// theta (libtorch returns an undefined gradient for an unused input).
fn gradient(loss: &Tensor, theta: &Tensor, create_graph: bool) -> Result<Tensor> {
    if loss.numel() != 1 {
        return Err(Error::Shape {
            op: "InnerLoop::step loss",
            expected: "a scalar loss (sum the tasks' losses)".into(),
            got: loss.size(),
        });
    }
    if !theta.requires_grad() {
        return Err(Error::Shape {
            op: "InnerLoop::step",
            expected: "parameters that require grad (Params::init makes such leaves)".into(),
            got: theta.size(),
        });
    }
    let mut grads = Tensor::f_run_backward(&[loss], &[theta], create_graph, create_graph)?;
    let g = grads.pop().expect("one gradient per input");
    if g.defined() {
        Ok(g)
    } else {
        Ok(theta.f_zeros_like()?.f_to_kind(theta.kind())?)
    }
}
