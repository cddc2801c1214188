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
//! - `initial_state(state)`: the optimizer starts from a given state (a `torch.optim` optimizer's
//!   momentum buffers, moments and step count), as higher's differentiable optimizers do.
//!
//! With task-batched parameters `[T, P]` (or `tasks(T)`), the caller's loss is the sum over tasks
//! of each task's loss, so each task's gradient is its own, and every step updates all T tasks in
//! one optimizer update.
//!
//! It must not read tensor values back to the host (no device sync in the step), print, or know
//! about datasets.

use crate::inner_core::{check_scalar, gradient, InnerSpec};
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
    spec: InnerSpec,
    copy_initial_weights: bool,
    track_higher_grads: bool,
    initial_state: Option<OptState>,
}

inner_spec_builders!(InnerLoopBuilder<'_>);

crate::setters!(InnerLoopBuilder<'_> {
    /// higher's meaning: `true` (the default) detaches time 0 from `params`; `false` lets the
    /// meta-gradient reach `params`.
    copy_initial_weights: bool,
    /// `true` (the default): differentiable steps and full history. `false`: first-order steps,
    /// only the latest parameters kept, constant memory.
    track_higher_grads: bool,
});

impl<'m> InnerLoopBuilder<'m> {
    /// Starts the optimizer from `state` instead of its initial state, as higher starts from a
    /// `torch.optim` optimizer's current state (momentum buffers, moments, step count). Buffers
    /// are `[P]` (expanded to every task with `tasks`) or shaped like the parameters. With
    /// `track_higher_grads(true)` a buffer that requires grad stays in the graph.
    pub fn initial_state(mut self, state: OptState) -> Self {
        self.initial_state = Some(state);
        self
    }

    /// The inner loop at time 0 (with `copy_initial_weights(false)`, time 0 expanded to tasks is
    /// differentiable back to `params`).
    pub fn build(self) -> Result<InnerLoop<'m>> {
        let layout = self.params.layout().clone();
        let hparams = self.spec.resolve(&layout)?;
        let mut theta0 = if self.copy_initial_weights {
            // A new leaf holding a copy of the values (detach_copy would keep a graph).
            let values = self.params.flat().f_detach()?;
            let mut copy = values.f_empty_like()?;
            copy.f_copy_(&values)?;
            Params::from_flat(layout.clone(), copy.set_requires_grad(true))?
        } else {
            self.params.clone()
        };
        if let Some(t) = self.spec.tasks {
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
        let frozen_mask = self.spec.frozen_mask(&self.params)?;
        let state = match self.initial_state {
            Some(state) => given_state(state, theta0.flat())?,
            None => self.spec.optimizer.init_state(theta0.flat())?,
        };
        Ok(InnerLoop {
            model: self.model,
            layout,
            spec: self.spec,
            track_higher_grads: self.track_higher_grads,
            hparams,
            frozen_mask,
            history: vec![theta0],
            state,
            time: 0,
        })
    }
}

/// A differentiable inner loop (higher's `innerloop_ctx`): the functional model and the
/// differentiable optimizer in one.
pub struct InnerLoop<'m> {
    model: &'m dyn Module,
    layout: Arc<crate::Layout>,
    spec: InnerSpec,
    track_higher_grads: bool,
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
            spec: InnerSpec::new(optimizer),
            copy_initial_weights: true,
            track_higher_grads: true,
            initial_state: None,
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
            self.spec.overrides.extend(options.overrides);
            self.hparams = self.spec.resolve(&self.layout)?;
        }
        let theta = self.params().flat().shallow_clone();
        let track = self.track_higher_grads;
        let mut grad = support_gradient(loss, &theta, track)?;
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
        let (theta_in, state_in) = if track {
            (theta, self.state.clone())
        } else {
            (theta.f_detach()?, self.state.detach()?)
        };
        let mask = self.frozen_mask.as_ref();
        let update = || {
            self.spec
                .update(mask, &theta_in, &grad, &state_in, &self.hparams)
        };
        // Without tracking there is no graph: hyperparameter tensors that require grad are only
        // read.
        let (next, state) = if track {
            update()?
        } else {
            tch::no_grad(update)?
        };
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

/// A given starting state fitted to `theta`: every buffer `[P]` (expanded to `[T, P]` for task
/// batches) or shaped like `theta`.
fn given_state(state: OptState, theta: &Tensor) -> Result<OptState> {
    let want = theta.size();
    state.map(|buffer| {
        let got = buffer.size();
        if got == want {
            Ok(buffer.shallow_clone())
        } else if want.len() == 2 && got.as_slice() == &want[1..] {
            Ok(buffer.f_expand(want.as_slice(), false)?)
        } else {
            Err(Error::Shape {
                op: "InnerLoop::initial_state",
                expected: format!("optimizer state buffers shaped like the parameters {want:?}"),
                got,
            })
        }
    })
}

/// The support gradient of one step: d loss / d theta, with a graph when `create_graph`.
fn support_gradient(loss: &Tensor, theta: &Tensor, create_graph: bool) -> Result<Tensor> {
    check_scalar("InnerLoop::step loss", loss)?;
    if !theta.requires_grad() {
        return Err(Error::Shape {
            op: "InnerLoop::step",
            expected: "parameters that require grad (Params::init makes such leaves)".into(),
            got: theta.size(),
        });
    }
    gradient(loss, theta, create_graph)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Linear, Module};
    use crate::optim::{Adam, Buffer, Sgd};
    use tch::Kind;

    fn t(v: &[f64]) -> Tensor {
        Tensor::from_slice(v)
    }

    fn close(a: &Tensor, b: &Tensor) {
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(diff < 1e-12, "{a:?} vs {b:?}: {diff:e}");
    }

    /// `Linear(2, 1)` (3 parameters) at θ0 = [1, 2, 3].
    fn setup() -> (Linear, Params) {
        let model = Linear::new(2, 1);
        let layout = Arc::new(model.layout().unwrap());
        let theta = t(&[1.0, 2.0, 3.0]).set_requires_grad(true);
        (model, Params::from_flat(layout, theta).unwrap())
    }

    /// One step on the loss `θ · c`, whose gradient is `c`.
    fn one_step(inner: &mut InnerLoop<'_>, c: &Tensor) -> Tensor {
        let loss = (inner.params().flat() * c).sum(Kind::Double);
        inner.step(&loss).unwrap();
        inner.params().flat().detach()
    }

    #[test]
    fn sgd_starts_from_a_given_momentum_buffer() {
        let (model, params) = setup();
        let (c, buf) = (t(&[0.5, -1.0, 2.0]), t(&[0.1, 0.2, 0.3]));
        let state = OptState::from_buffers(1, vec![(Buffer::MomentumBuffer, buf.copy())]);
        let mut inner = InnerLoop::new(&model, &params, Sgd::new(0.1).momentum(0.9))
            .initial_state(state)
            .build()
            .unwrap();
        let next = one_step(&mut inner, &c);
        close(&next, &(params.flat().detach() - (&buf * 0.9 + &c) * 0.1));
        assert_eq!(inner.optimizer_state().step(), 2);
    }

    #[test]
    fn adam_starts_from_given_moments_and_step() {
        let (model, params) = setup();
        let c = t(&[0.5, -1.0, 2.0]);
        let (m, v) = (t(&[0.01, -0.02, 0.03]), t(&[0.004, 0.005, 0.006]));
        let state = OptState::new(
            2,
            vec![
                ("exp_avg".into(), m.copy()),
                ("exp_avg_sq".into(), v.copy()),
            ],
        );
        let mut inner = InnerLoop::new(&model, &params, Adam::new(0.01))
            .initial_state(state)
            .build()
            .unwrap();
        let next = one_step(&mut inner, &c);
        let m1 = &m * 0.9 + &c * 0.1;
        let v1 = &v * 0.999 + c.square() * 0.001;
        let denom = v1.sqrt() / (1.0 - 0.999f64.powi(3)).sqrt() + 1e-8;
        let want = params.flat().detach() - m1 / denom * (0.01 / (1.0 - 0.9f64.powi(3)));
        close(&next, &want);
    }

    #[test]
    fn a_single_task_state_is_expanded_to_every_task() {
        let (model, params) = setup();
        let (c, buf) = (t(&[0.5, -1.0, 2.0]), t(&[0.1, 0.2, 0.3]));
        let state = OptState::from_buffers(1, vec![(Buffer::MomentumBuffer, buf.copy())]);
        let mut inner = InnerLoop::new(&model, &params, Sgd::new(0.1).momentum(0.9))
            .tasks(2)
            .initial_state(state)
            .build()
            .unwrap();
        let next = one_step(&mut inner, &c);
        let row = params.flat().detach() - (&buf * 0.9 + &c) * 0.1;
        close(&next, &Tensor::stack(&[&row, &row], 0));
    }

    #[test]
    fn a_state_of_another_shape_is_refused() {
        let (model, params) = setup();
        let state = OptState::from_buffers(1, vec![(Buffer::MomentumBuffer, t(&[0.1, 0.2]))]);
        let err = InnerLoop::new(&model, &params, Sgd::new(0.1).momentum(0.9))
            .initial_state(state)
            .build()
            .err()
            .expect("a [2] buffer for 3 parameters");
        assert!(
            err.to_string().contains("InnerLoop::initial_state"),
            "{err}"
        );
    }
}
