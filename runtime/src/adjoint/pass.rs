//! The adjoint pass: the running sums (λ_θ, λ_state, hypergradients, meta-loss) carried from
//! t = N down to 0, one rebuilt step at a time.

use std::sync::Arc;

use tch::Tensor;

use super::results::AdjointGradients;
use super::unroll::{support_gradient, Point, Unroll};
use crate::inner_core::{check_scalar, or_zeros};
use crate::optim::{Buffer, HParams, HValue, OptState};
use crate::{Layout, Params, Result};

/// The running sums of the adjoint pass.
pub(super) struct Adjoint {
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
    pub(super) fn new(
        hparams: &HParams,
        initial: &Tensor,
        overrides: &[(String, Tensor)],
    ) -> Result<Adjoint> {
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
    pub(super) fn add_meta(&mut self, m: &Tensor) -> Result<()> {
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
    pub(super) fn final_term(
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
    pub(super) fn step_back(
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
    pub(super) fn finish(
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
