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

use crate::inner_core::{check_scalar, gradient, or_zeros, InnerSpec};
use crate::optim::{Buffer, HParams, HValue, OptState, Optimizer};
use crate::{Error, Layout, Params, Result};
use std::sync::Arc;
use tch::Tensor;

/// Configures a recompute-and-adjoint meta-gradient: the differentiable optimizer of the inner
/// loop, its hyperparameter overrides, frozen parameters and task batching, as for
/// [`crate::InnerLoop`].
#[derive(Debug)]
pub struct MetaGradient {
    spec: InnerSpec,
    checkpoint_interval: usize,
}

inner_spec_builders!(MetaGradient);

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
    targets: Vec<Tensor>,
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
    layout: Arc<Layout>,
    /// The caller's parameters (shallow), which receive the meta-gradient.
    initial: Tensor,
    /// True when `initial` is `[P]` and time 0 is its expansion to `[T, P]`.
    expanded: bool,
    steps: usize,
    interval: usize,
    hparams: HParams,
    frozen_mask: Option<Tensor>,
    /// (θ_t, state_t) at t = 0, k, 2k, ... < steps.
    checkpoints: Vec<(Tensor, OptState)>,
    /// θ_N.
    adapted: Tensor,
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

/// What one inner step of an unroll needs besides θ_t and the state.
struct Unroll<'a> {
    spec: &'a InnerSpec,
    layout: &'a Arc<Layout>,
    hparams: &'a HParams,
    frozen_mask: Option<&'a Tensor>,
}

impl Unroll<'_> {
    /// One inner step without a graph: the support loss's first-order gradient at θ_t, the
    /// update under `no_grad`; returns θ_{t+1} and the state, detached.
    fn without_graph(
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
    fn segment(
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

    fn params(&self, theta: &Tensor) -> Result<Params> {
        Params::from_flat(self.layout.clone(), theta.shallow_clone())
    }
}

/// θ_t and the optimizer state at time t of an unroll (detached).
struct Point {
    theta: Tensor,
    state: OptState,
    t: usize,
}

/// The running sums of the adjoint pass.
struct Adjoint {
    /// The hyperparameters of each rebuilt step: tensors that require grad become leaves.
    step_hparams: HParams,
    /// Per such tensor: the resolved tensor, its leaf, and the sum of its adjoints so far.
    hparam_adjoints: Vec<(Tensor, Tensor, Option<Tensor>)>,
    /// The caller's parameters and override tensors, for meta-loss terms that read them.
    targets: Vec<Tensor>,
    /// The indices of `targets` that require grad.
    direct_inputs: Vec<usize>,
    /// The gradients of meta-loss terms w.r.t. `targets`, read directly.
    direct: Vec<Option<Tensor>>,
    /// The sum of the meta-loss terms.
    total_meta: Option<Tensor>,
    /// λ_state: the adjoint of each state buffer at the current time.
    lambda_state: Vec<(Buffer, Tensor)>,
}

impl Adjoint {
    fn new(hparams: &HParams, initial: &Tensor, overrides: &[(String, Tensor)]) -> Result<Adjoint> {
        let mut step_hparams = hparams.clone();
        let mut hparam_adjoints = Vec::new();
        for (name, value) in hparams.iter() {
            if let HValue::Tensor(resolved) = value {
                if resolved.requires_grad() {
                    let leaf = resolved.f_detach()?.f_set_requires_grad(true)?;
                    step_hparams.set(name, HValue::Tensor(leaf.shallow_clone()))?;
                    hparam_adjoints.push((resolved.shallow_clone(), leaf, None));
                }
            }
        }
        let mut targets = vec![initial.shallow_clone()];
        targets.extend(overrides.iter().map(|(_, t)| t.shallow_clone()));
        let direct_inputs = (0..targets.len())
            .filter(|&i| targets[i].requires_grad())
            .collect();
        Ok(Adjoint {
            step_hparams,
            hparam_adjoints,
            direct: targets.iter().map(|_| None).collect(),
            targets,
            direct_inputs,
            total_meta: None,
            lambda_state: Vec::new(),
        })
    }

    /// Adds a meta-loss term to the reported total.
    fn add_meta(&mut self, m: &Tensor) -> Result<()> {
        check_scalar("MetaGradient meta_loss", m)?;
        let m = m.f_detach()?;
        self.total_meta = Some(match self.total_meta.take() {
            Some(t) => t.f_add(&m)?,
            None => m,
        });
        Ok(())
    }

    /// The caller's tensors that require grad, as backward inputs.
    fn direct_targets(&self) -> impl Iterator<Item = Tensor> + '_ {
        self.direct_inputs
            .iter()
            .map(|&i| self.targets[i].shallow_clone())
    }

    /// λ_θ at t = N from the meta-loss term at θ_N.
    fn final_term(
        &mut self,
        layout: &Arc<Layout>,
        adapted: Tensor,
        steps: usize,
        meta_loss: &mut impl FnMut(&Params, usize) -> Result<Option<Tensor>>,
    ) -> Result<Tensor> {
        let theta_n = adapted.f_detach()?.f_set_requires_grad(true)?;
        drop(adapted);
        let params = Params::from_flat(layout.clone(), theta_n.shallow_clone())?;
        let Some(m) = meta_loss(&params, steps)? else {
            return Ok(theta_n.f_zeros_like()?);
        };
        self.add_meta(&m)?;
        if !m.requires_grad() {
            return Ok(theta_n.f_zeros_like()?);
        }
        let mut inputs = vec![theta_n.shallow_clone()];
        inputs.extend(self.direct_targets());
        let mut grads = Tensor::f_run_backward(&[&m], &inputs, false, false)?.into_iter();
        let g = or_zeros(grads.next(), &theta_n)?;
        self.accumulate_direct(grads)?;
        Ok(g)
    }

    /// The adjoint of step t: rebuilds the step's graph at θ_t, takes the vector-Jacobian
    /// product with (λ_θ, λ_state) plus the meta-loss term at θ_t, and returns λ_θ at t.
    fn step_back(
        &mut self,
        unroll: &Unroll<'_>,
        at: Point,
        lambda_theta: Tensor,
        support_loss: &mut impl FnMut(&Params, usize) -> Result<Tensor>,
        meta_loss: &mut impl FnMut(&Params, usize) -> Result<Option<Tensor>>,
    ) -> Result<Tensor> {
        let theta = at.theta.f_detach()?.f_set_requires_grad(true)?;
        let state = at
            .state
            .map(|x| Ok(x.f_detach()?.f_set_requires_grad(true)?))?;
        let params = unroll.params(&theta)?;

        // One step's graph, as InnerLoop::step_with builds it while tracking.
        let loss = support_loss(&params, at.t)?;
        let grad = support_gradient(&loss, &theta, true)?;
        let (next, next_state) = unroll.spec.update(
            unroll.frozen_mask,
            &theta,
            &grad,
            &state,
            &self.step_hparams,
        )?;
        let mut objective = next.f_mul(&lambda_theta)?.f_sum(next.kind())?;
        for (buffer, x) in next_state.buffers() {
            let adjoint = self.lambda_state.iter().find(|(b, _)| *b == buffer);
            if let (Some((_, l)), true) = (adjoint, x.requires_grad()) {
                objective = objective.f_add(&x.f_mul(l)?.f_sum(objective.kind())?)?;
            }
        }
        if let Some(m) = meta_loss(&params, at.t)? {
            self.add_meta(&m)?;
            objective = objective.f_add(&m.f_to_kind(objective.kind())?)?;
        }
        drop((next, next_state, lambda_theta));
        self.vjp(&objective, &theta, &state)
    }

    /// The gradients of `objective` w.r.t. θ_t (returned: λ_θ at t), the state (λ_state), the
    /// hyperparameter leaves and the caller's tensors (both summed).
    fn vjp(&mut self, objective: &Tensor, theta: &Tensor, state: &OptState) -> Result<Tensor> {
        let mut inputs = vec![theta.shallow_clone()];
        inputs.extend(state.buffers().map(|(_, x)| x.shallow_clone()));
        inputs.extend(
            self.hparam_adjoints
                .iter()
                .map(|(_, l, _)| l.shallow_clone()),
        );
        inputs.extend(self.direct_targets());
        let grads = Tensor::f_run_backward(&[objective], &inputs, false, false)?;
        let mut grads = grads.into_iter();
        let lambda_theta = or_zeros(grads.next(), theta)?;
        self.lambda_state.clear();
        for (buffer, _) in state.buffers() {
            if let Some(g) = grads.next().filter(|g| g.defined()) {
                self.lambda_state.push((buffer, g));
            }
        }
        for (_, _, adjoint) in self.hparam_adjoints.iter_mut() {
            if let Some(g) = grads.next().filter(|g| g.defined()) {
                *adjoint = Some(match adjoint.take() {
                    Some(a) => a.f_add(&g)?,
                    None => g,
                });
            }
        }
        self.accumulate_direct(grads)?;
        Ok(lambda_theta)
    }

    /// Adds the gradients of the caller's tensors (in `direct_inputs` order) to `direct`.
    fn accumulate_direct(&mut self, grads: impl Iterator<Item = Tensor>) -> Result<()> {
        for (&i, g) in self.direct_inputs.iter().zip(grads) {
            if g.defined() {
                self.direct[i] = Some(match self.direct[i].take() {
                    Some(d) => d.f_add(&g)?,
                    None => g,
                });
            }
        }
        Ok(())
    }

    /// The result: θ0's meta-gradient (λ_θ at time 0, summed over tasks when time 0 was expanded
    /// from `[P]`), the hypergradients and the meta-loss.
    fn finish(
        mut self,
        lambda_theta: Tensor,
        expanded: bool,
        overrides: &[(String, Tensor)],
        initial: &Tensor,
    ) -> Result<AdjointGradients> {
        let mut theta0 = if expanded {
            lambda_theta.f_sum_dim_intlist(&[0i64][..], false, lambda_theta.kind())?
        } else {
            lambda_theta
        };
        if let Some(d) = self.direct[0].take() {
            theta0 = theta0.f_add(&d)?;
        }
        let mut hyper = self.carry_to_overrides(overrides)?;
        let mut hypergradients = Vec::with_capacity(overrides.len());
        for (i, (name, value)) in overrides.iter().enumerate() {
            let mut g = match hyper[i].take() {
                Some(g) => g,
                None => value.f_zeros_like()?,
            };
            if let Some(d) = self.direct[i + 1].take() {
                g = g.f_add(&d)?;
            }
            hypergradients.push((name.clone(), g));
        }
        let meta_loss = match self.total_meta {
            Some(m) => m,
            None => Tensor::f_zeros(&[] as &[i64], (initial.kind(), initial.device()))?,
        };
        Ok(AdjointGradients {
            meta_loss,
            theta0,
            hypergradients,
            targets: self.targets,
        })
    }

    /// Carries the resolved hyperparameters' adjoints back through HParams::resolve
    /// (repeat_interleave for `[G]`, reshape for `[1]`) to the override tensors.
    fn carry_to_overrides(&self, overrides: &[(String, Tensor)]) -> Result<Vec<Option<Tensor>>> {
        let mut hyper: Vec<Option<Tensor>> = overrides.iter().map(|_| None).collect();
        let mut carried: Option<Tensor> = None;
        for (resolved, _, adjoint) in &self.hparam_adjoints {
            if let Some(a) = adjoint {
                let term = resolved.f_mul(a)?.f_sum(resolved.kind())?;
                carried = Some(match carried {
                    Some(c) => c.f_add(&term.f_to_kind(c.kind())?)?,
                    None => term,
                });
            }
        }
        let Some(carried) = carried else {
            return Ok(hyper);
        };
        let needs_grad: Vec<usize> = (0..overrides.len())
            .filter(|&i| overrides[i].1.requires_grad())
            .collect();
        let inputs: Vec<Tensor> = needs_grad
            .iter()
            .map(|&i| overrides[i].1.shallow_clone())
            .collect();
        let grads = Tensor::f_run_backward(&[&carried], &inputs, false, false)?;
        for (&i, g) in needs_grad.iter().zip(grads) {
            if g.defined() {
                hyper[i] = Some(g);
            }
        }
        Ok(hyper)
    }
}

/// The support gradient of a step (with a graph when `create_graph`); zeros where the loss does
/// not depend on θ.
fn support_gradient(loss: &Tensor, theta: &Tensor, create_graph: bool) -> Result<Tensor> {
    check_scalar("MetaGradient support_loss", loss)?;
    if !loss.requires_grad() {
        return Ok(theta.f_zeros_like()?);
    }
    gradient(loss, theta, create_graph)
}
