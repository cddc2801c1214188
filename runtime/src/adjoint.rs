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

use crate::optim::{HParams, HValue, OptState, Optimizer};
use crate::{Error, Layout, Params, Result};
use std::sync::Arc;
use tch::Tensor;

/// Configures a recompute-and-adjoint meta-gradient: the differentiable optimizer of the inner
/// loop, its hyperparameter overrides, frozen parameters and task batching, as for
/// [`crate::InnerLoop`].
#[derive(Debug)]
pub struct MetaGradient {
    optimizer: Box<dyn Optimizer>,
    overrides: Vec<(String, Tensor)>,
    frozen: Vec<String>,
    tasks: Option<i64>,
    checkpoint_interval: usize,
}

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
            optimizer,
            overrides: Vec::new(),
            frozen: Vec::new(),
            tasks: None,
            checkpoint_interval: 1,
        }
    }

    /// Replaces the optimizer's hyperparameter `name` by `value` (shape `[]`, `[1]`, `[G]` or
    /// `[P]`) at every step; when `value` requires grad its hypergradient is returned.
    pub fn override_hparam(mut self, name: &str, value: &Tensor) -> MetaGradient {
        self.overrides
            .push((name.to_string(), value.shallow_clone()));
        self
    }

    /// Parameters (by name) that the inner steps never update (gradient zeroed, values carried
    /// over); they still receive the meta-gradient.
    pub fn freeze<S: AsRef<str>>(mut self, names: impl IntoIterator<Item = S>) -> MetaGradient {
        self.frozen
            .extend(names.into_iter().map(|s| s.as_ref().to_string()));
        self
    }

    /// Runs `tasks` tasks at once from single-task `[P]` parameters: time 0 is `[T, P]`, each row
    /// a copy, and the meta-gradient w.r.t. the parameters is summed over the tasks.
    pub fn tasks(mut self, tasks: i64) -> MetaGradient {
        self.tasks = Some(tasks);
        self
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
        let hparams = HParams::resolve(
            self.optimizer.as_ref(),
            &self.overrides,
            &layout.group_sizes(),
        )?;
        let frozen_mask = frozen_mask(params, &self.frozen)?;
        let mut theta = params.flat().f_detach()?;
        let expanded = match self.tasks {
            Some(t) => {
                if params.tasks().is_some() || t < 1 {
                    return Err(Error::Shape {
                        op: "MetaGradient::tasks",
                        expected: format!(
                            "single-task parameters [{}] to expand to {t} >= 1 tasks",
                            layout.numel()
                        ),
                        got: params.flat().size(),
                    });
                }
                theta = theta.f_unsqueeze(0)?.f_repeat([t, 1])?;
                true
            }
            None => false,
        };
        let mut state = self.optimizer.init_state(&theta)?.detach()?;
        let interval = self.checkpoint_interval;
        let mut checkpoints = Vec::with_capacity(steps.div_ceil(interval));
        for t in 0..steps {
            let (next, next_state) = self.step_without_graph(
                &layout,
                &hparams,
                frozen_mask.as_ref(),
                &theta,
                &state,
                t,
                &mut support_loss,
            )?;
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

        // Hyperparameter tensors that require grad become leaves of each rebuilt step; their
        // adjoints are carried back to the override tensors at the end.
        let mut step_hparams = hparams.clone();
        let mut hparam_adjoints: Vec<(Tensor, Tensor, Option<Tensor>)> = Vec::new();
        for (name, value) in hparams.iter() {
            if let HValue::Tensor(resolved) = value {
                if resolved.requires_grad() {
                    let leaf = resolved.f_detach()?.f_set_requires_grad(true)?;
                    step_hparams.set(name, HValue::Tensor(leaf.shallow_clone()))?;
                    hparam_adjoints.push((resolved.shallow_clone(), leaf, None));
                }
            }
        }
        // The caller's tensors, for meta-loss terms that read them directly.
        let mut targets = vec![initial.shallow_clone()];
        targets.extend(self.overrides.iter().map(|(_, t)| t.shallow_clone()));
        let mut direct: Vec<Option<Tensor>> = targets.iter().map(|_| None).collect();
        let direct_inputs: Vec<usize> = (0..targets.len())
            .filter(|&i| targets[i].requires_grad())
            .collect();

        let mut total_meta: Option<Tensor> = None;
        let mut add_meta = |m: &Tensor| -> Result<()> {
            let m = m.f_detach()?;
            total_meta = Some(match total_meta.take() {
                Some(t) => t.f_add(&m)?,
                None => m,
            });
            Ok(())
        };

        // t = N: λ_θ = d meta-loss / d θ_N.
        let theta_n = adapted.f_detach()?.f_set_requires_grad(true)?;
        let mut lambda_theta = match meta_loss(
            &Params::from_flat(layout.clone(), theta_n.shallow_clone())?,
            steps,
        )? {
            Some(m) => {
                check_scalar("MetaGradient meta_loss", &m)?;
                add_meta(&m)?;
                if m.requires_grad() {
                    let mut inputs = vec![theta_n.shallow_clone()];
                    inputs.extend(direct_inputs.iter().map(|&i| targets[i].shallow_clone()));
                    let grads = Tensor::f_run_backward(&[&m], &inputs, false, false)?;
                    let mut grads = grads.into_iter();
                    let g = or_zeros(grads.next(), &theta_n)?;
                    accumulate_direct(&mut direct, &direct_inputs, grads)?;
                    g
                } else {
                    theta_n.f_zeros_like()?
                }
            }
            None => theta_n.f_zeros_like()?,
        };
        drop(theta_n);
        drop(adapted);
        let mut lambda_state: Vec<(String, Tensor)> = Vec::new();

        // Segments from the last to the first: recompute the segment's θ_t and state without a
        // graph from its checkpoint, then the adjoint of each of its steps in reverse.
        while let Some((theta_start, state_start)) = checkpoints.pop() {
            let start = checkpoints.len() * interval;
            let end = (start + interval).min(steps);
            let mut segment = Vec::with_capacity(end - start);
            segment.push((theta_start, state_start));
            for t in start..end - 1 {
                let (theta, state) = segment.last().expect("the segment holds its start");
                let next = self.step_without_graph(
                    &layout,
                    &hparams,
                    frozen_mask.as_ref(),
                    theta,
                    state,
                    t,
                    &mut support_loss,
                )?;
                segment.push(next);
            }
            for t in (start..end).rev() {
                let (theta, state) = segment.pop().expect("one entry per step of the segment");
                let theta = theta.f_detach()?.f_set_requires_grad(true)?;
                let state = state.map(|x| Ok(x.f_detach()?.f_set_requires_grad(true)?))?;
                let params = Params::from_flat(layout.clone(), theta.shallow_clone())?;

                // One step's graph, as InnerLoop::step_with builds it while tracking.
                let loss = support_loss(&params, t)?;
                check_scalar("MetaGradient support_loss", &loss)?;
                let mut grad = gradient(&loss, &theta, true)?;
                if let Some(mask) = &frozen_mask {
                    grad = grad.f_mul(&mask.f_to_kind(grad.kind())?)?;
                }
                let (mut next, next_state) =
                    self.optimizer
                        .update(&theta, &grad, &state, &step_hparams)?;
                if let Some(mask) = &frozen_mask {
                    next = next.f_where_self(mask, &theta)?;
                }

                // The vector-Jacobian product with the incoming adjoints, plus a meta-loss term
                // at θ_t if there is one.
                let mut objective = next.f_mul(&lambda_theta)?.f_sum(next.kind())?;
                for (name, x) in next_state.tensors() {
                    let adjoint = lambda_state.iter().find(|(n, _)| n == name);
                    if let (Some((_, l)), true) = (adjoint, x.requires_grad()) {
                        objective = objective.f_add(&x.f_mul(l)?.f_sum(objective.kind())?)?;
                    }
                }
                if let Some(m) = meta_loss(&params, t)? {
                    check_scalar("MetaGradient meta_loss", &m)?;
                    add_meta(&m)?;
                    objective = objective.f_add(&m.f_to_kind(objective.kind())?)?;
                }
                drop(next);
                drop(next_state);

                let state_names: Vec<String> =
                    state.tensors().map(|(n, _)| n.to_string()).collect();
                let mut inputs = vec![theta.shallow_clone()];
                inputs.extend(state.tensors().map(|(_, x)| x.shallow_clone()));
                inputs.extend(
                    hparam_adjoints
                        .iter()
                        .map(|(_, leaf, _)| leaf.shallow_clone()),
                );
                inputs.extend(direct_inputs.iter().map(|&i| targets[i].shallow_clone()));
                let grads = Tensor::f_run_backward(&[&objective], &inputs, false, false)?;
                let mut grads = grads.into_iter();
                lambda_theta = or_zeros(grads.next(), &theta)?;
                lambda_state.clear();
                for name in state_names {
                    if let Some(g) = grads.next().filter(|g| g.defined()) {
                        lambda_state.push((name, g));
                    }
                }
                for (_, _, adjoint) in hparam_adjoints.iter_mut() {
                    if let Some(g) = grads.next().filter(|g| g.defined()) {
                        *adjoint = Some(match adjoint.take() {
                            Some(a) => a.f_add(&g)?,
                            None => g,
                        });
                    }
                }
                accumulate_direct(&mut direct, &direct_inputs, grads)?;
            }
        }

        // θ0: λ_θ at time 0, summed over tasks when time 0 was expanded from [P].
        let mut theta0 = if expanded {
            lambda_theta.f_sum_dim_intlist(&[0i64][..], false, lambda_theta.kind())?
        } else {
            lambda_theta
        };
        if let Some(d) = direct[0].take() {
            theta0 = theta0.f_add(&d)?;
        }

        // Hypergradients: carry the resolved hyperparameters' adjoints back through
        // HParams::resolve (repeat_interleave for [G], reshape for [1]) to the override tensors.
        let mut hyper: Vec<Option<Tensor>> = self.overrides.iter().map(|_| None).collect();
        let mut carried: Option<Tensor> = None;
        for (resolved, _, adjoint) in &hparam_adjoints {
            if let Some(a) = adjoint {
                let term = resolved.f_mul(a)?.f_sum(resolved.kind())?;
                carried = Some(match carried {
                    Some(c) => c.f_add(&term.f_to_kind(c.kind())?)?,
                    None => term,
                });
            }
        }
        let needs_grad: Vec<usize> = (0..self.overrides.len())
            .filter(|&i| self.overrides[i].1.requires_grad())
            .collect();
        if let Some(carried) = carried {
            let inputs: Vec<Tensor> = needs_grad
                .iter()
                .map(|&i| self.overrides[i].1.shallow_clone())
                .collect();
            let grads = Tensor::f_run_backward(&[&carried], &inputs, false, false)?;
            for (&i, g) in needs_grad.iter().zip(grads) {
                if g.defined() {
                    hyper[i] = Some(g);
                }
            }
        }
        let mut hypergradients = Vec::with_capacity(self.overrides.len());
        for (i, (name, value)) in self.overrides.iter().enumerate() {
            let mut g = match hyper[i].take() {
                Some(g) => g,
                None => value.f_zeros_like()?,
            };
            if let Some(d) = direct[i + 1].take() {
                g = g.f_add(&d)?;
            }
            hypergradients.push((name.clone(), g));
        }
        let meta_loss = match total_meta {
            Some(m) => m,
            None => Tensor::f_zeros(&[] as &[i64], (initial.kind(), initial.device()))?,
        };
        Ok(AdjointGradients {
            meta_loss,
            theta0,
            hypergradients,
            targets,
        })
    }

    /// One inner step without a graph: the support loss's first-order gradient at θ_t, the
    /// update under `no_grad`; returns θ_{t+1} and the state, detached.
    #[allow(clippy::too_many_arguments)]
    fn step_without_graph(
        &self,
        layout: &Arc<Layout>,
        hparams: &HParams,
        frozen_mask: Option<&Tensor>,
        theta: &Tensor,
        state: &OptState,
        t: usize,
        support_loss: &mut impl FnMut(&Params, usize) -> Result<Tensor>,
    ) -> Result<(Tensor, OptState)> {
        let leaf = theta.f_detach()?.f_set_requires_grad(true)?;
        let loss = support_loss(&Params::from_flat(layout.clone(), leaf.shallow_clone())?, t)?;
        check_scalar("MetaGradient support_loss", &loss)?;
        let mut grad = gradient(&loss, &leaf, false)?;
        drop(loss);
        tch::no_grad(|| -> Result<(Tensor, OptState)> {
            if let Some(mask) = frozen_mask {
                grad = grad.f_mul(&mask.f_to_kind(grad.kind())?)?;
            }
            let (mut next, state) = self.optimizer.update(theta, &grad, state, hparams)?;
            if let Some(mask) = frozen_mask {
                next = next.f_where_self(mask, theta)?;
            }
            Ok((next.f_detach()?, state.detach()?))
        })
    }
}

/// Errors unless `loss` has one element.
fn check_scalar(op: &'static str, loss: &Tensor) -> Result<()> {
    if loss.numel() != 1 {
        return Err(Error::Shape {
            op,
            expected: "a scalar loss (sum the tasks' losses)".into(),
            got: loss.size(),
        });
    }
    Ok(())
}

/// d loss / d theta (with a graph when `create_graph`); zeros where the loss does not depend on
/// theta.
fn gradient(loss: &Tensor, theta: &Tensor, create_graph: bool) -> Result<Tensor> {
    if !loss.requires_grad() {
        return Ok(theta.f_zeros_like()?);
    }
    let mut grads = Tensor::f_run_backward(&[loss], &[theta], create_graph, create_graph)?;
    or_zeros(grads.pop(), theta)
}

/// The gradient, or zeros shaped like `like` when libtorch returned none (an unused input).
fn or_zeros(g: Option<Tensor>, like: &Tensor) -> Result<Tensor> {
    match g {
        Some(g) if g.defined() => Ok(g),
        _ => Ok(like.f_zeros_like()?.f_detach()?),
    }
}

/// Adds the gradients of the caller's tensors (in `direct_inputs` order) to `direct`.
fn accumulate_direct(
    direct: &mut [Option<Tensor>],
    direct_inputs: &[usize],
    grads: impl Iterator<Item = Tensor>,
) -> Result<()> {
    for (&i, g) in direct_inputs.iter().zip(grads) {
        if g.defined() {
            direct[i] = Some(match direct[i].take() {
                Some(d) => d.f_add(&g)?,
                None => g,
            });
        }
    }
    Ok(())
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
