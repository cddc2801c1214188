//! MAML (Finn et al. 2017): the meta-gradient of the query loss at the adapted weights, through
//! the inner steps (second order), or only at the adapted weights (`fomaml`, first order).
//!
//! Options from `algorithm.*`: MAML++'s multi-step loss (the query loss after every inner step,
//! weighted), MAML++'s derivative-order annealing (`first_order_until`: first order for the first
//! iterations), learned per-tensor lr / momentum, and `memory = "recompute"`, which computes the
//! same second-order meta-gradient by recompute-and-adjoint (runtime::adjoint) with only the
//! parameter trajectory stored. Meta-SGD, ANIL and LSLR are this algorithm with other learned
//! hyperparameters or a frozen body: their meta-gradient is the trait's default,
//! [`second_order_or_recompute`].

use metaloop_runtime::adjoint::MetaGradient;
use metaloop_runtime::Params;
use tch::Tensor;

use super::{adapt, gradients, query_losses, Algorithm, Contribution, MetaGrad, Shard};
use crate::data::MetaBatch;
use crate::loss::TaskLosses;
use crate::{Error, Result};

/// MAML; `first_order` is FOMAML.
#[derive(Debug, Clone, Copy)]
pub struct Maml {
    pub first_order: bool,
}

impl Algorithm for Maml {
    fn meta_gradient(&self, shard: &Shard, batch: &MetaBatch, global_tasks: f64) -> MetaGrad {
        if self.first_order {
            first_order(shard, batch, global_tasks)
        } else {
            second_order_or_recompute(shard, batch, global_tasks)
        }
    }
}

/// Second-order MAML by full tracking, or by recompute-and-adjoint when `algorithm.memory`
/// says so: the meta-gradient of MAML, Meta-SGD, ANIL and LSLR. Before iteration
/// `algorithm.first_order_until` it is first order instead (MAML++'s derivative-order
/// annealing).
pub fn second_order_or_recompute(shard: &Shard, batch: &MetaBatch, global_tasks: f64) -> MetaGrad {
    if shard.config().first_order_at(shard.progress().0) {
        first_order(shard, batch, global_tasks)
    } else if shard.recompute() {
        recompute(shard, batch, global_tasks)
    } else {
        second_order(shard, batch, global_tasks)
    }
}

/// MAML++'s per-step loss weights at the current iteration: uniform at first, annealed towards
/// the last step over the first tenth of training (Antoniou et al. 2019).
pub fn multi_step_weights(steps: usize, iteration: u64, iterations: u64) -> Vec<f64> {
    let n = steps as f64;
    let anneal = (iterations as f64 / 10.0).max(1.0);
    let decay = (iteration as f64 / anneal).min(1.0);
    let min = 0.03 / n;
    let other = (1.0 / n) * (1.0 - decay) + min * decay;
    let mut w = vec![other; steps];
    w[steps - 1] = 1.0 - other * (n - 1.0);
    w
}

/// MAML++'s weights of the query losses after steps 1..=N when `multi_step_loss` is on (empty
/// when off: the meta-objective is the last query loss alone).
fn step_weights(shard: &Shard) -> Vec<f64> {
    let a = shard.config();
    if !a.multi_step_loss {
        return Vec::new();
    }
    let (iteration, iterations) = shard.progress();
    multi_step_weights(a.inner_steps, iteration, iterations)
}

/// The adapted inner loop's meta-objective (divided by `global_tasks`), its query losses, and
/// the weights `[T, P]` each of its terms was evaluated at (the last one last): the query loss
/// after the last step, with MAML++'s weighted earlier query losses when `multi_step_loss` is
/// on.
fn objective<'a>(
    shard: &Shard<'a>,
    batch: &MetaBatch,
    global_tasks: f64,
    track: bool,
) -> Result<(Vec<Tensor>, Tensor, TaskLosses)> {
    let steps = shard.config().inner_steps;
    let weights = step_weights(shard);
    let mut multi: Option<Tensor> = None;
    let mut points = Vec::new();
    let inner = adapt(shard, batch, steps, track, |s, inner| {
        if weights.is_empty() || s + 1 == steps {
            return Ok(());
        }
        points.push(inner.params().flat().shallow_clone());
        let term = query_losses(shard, inner, batch, s)?
            .total(shard.kind())?
            .f_mul_scalar(weights[s])?;
        multi = Some(match multi.take() {
            Some(m) => m.f_add(&term)?,
            None => term,
        });
        Ok(())
    })?;
    let query = query_losses(shard, &inner, batch, steps - 1)?;
    let _s = tracing::info_span!("meta_gradient").entered();
    let mut objective = query.total(shard.kind())?;
    if let Some(w_last) = weights.last() {
        objective = objective.f_mul_scalar(*w_last)?;
    }
    if let Some(m) = multi {
        objective = objective.f_add(&m)?;
    }
    points.push(inner.params().flat().shallow_clone());
    Ok((points, objective.f_div_scalar(global_tasks)?, query))
}

/// Second-order: the meta-objective differentiated through every inner step to θ0 and to every
/// learned hyperparameter.
pub fn second_order(shard: &Shard, batch: &MetaBatch, global_tasks: f64) -> MetaGrad {
    let (_points, objective, query) = objective(shard, batch, global_tasks, true)?;
    let mut inputs = vec![shard.theta().flat().shallow_clone()];
    inputs.extend(shard.learned().iter().map(|h| h.tensor.shallow_clone()));
    Ok(Contribution {
        grads: gradients(&objective, &inputs)?,
        query,
    })
}

/// First-order: the query gradient at the adapted weights `[T, P]`, summed over tasks (with
/// the multi-step loss: each weighted query loss's gradient at the weights it was evaluated
/// at); learned hyperparameters get no gradient.
pub fn first_order(shard: &Shard, batch: &MetaBatch, global_tasks: f64) -> MetaGrad {
    let (points, objective, query) = objective(shard, batch, global_tasks, false)?;
    let mut g: Option<Tensor> = None;
    for part in Tensor::f_run_backward(&[&objective], &points, false, false)? {
        g = Some(match g {
            Some(sum) => sum.f_add(&part)?,
            None => part,
        });
    }
    let g = g.ok_or_else(|| Error::State("the first-order meta-objective has no term".into()))?;
    let mut grads = vec![g.f_sum_dim_intlist(&[0i64][..], false, shard.kind())?];
    grads.extend(shard.zero_hypergradients()?);
    Ok(Contribution { grads, query })
}

/// The second-order meta-gradient with only the trajectory stored (runtime::adjoint): the same
/// values as full tracking, memory independent of steps × activations. With MAML++'s multi-step
/// loss, the adjoint pass adds each step's weighted query loss at θ_t as it passes t.
pub fn recompute(shard: &Shard, batch: &MetaBatch, global_tasks: f64) -> MetaGrad {
    let a = shard.config();
    let steps = a.inner_steps;
    let _s = tracing::info_span!("inner_loop", steps, memory = "recompute").entered();
    let mut mg = MetaGradient::with_boxed(shard.inner_optimizer())
        .tasks(batch.len() as i64)
        .checkpoint_interval(a.checkpoint_interval())
        .freeze(shard.frozen);
    for h in shard.learned() {
        mg = mg.override_hparam(&h.name, &h.tensor);
    }
    let weights = step_weights(shard);
    // The forward pass keeps running statistics (when tracked); the adjoint pass's
    // recomputations of the same steps must not blend them again.
    let mut first = |theta: &Params, t: usize| -> metaloop_runtime::Result<Tensor> {
        Ok(shard.support_losses(theta, batch, t)?.total(shard.kind())?)
    };
    let trajectory = mg.forward(shard.theta(), steps, &mut first)?;
    let mut support = |theta: &Params, t: usize| -> metaloop_runtime::Result<Tensor> {
        Ok(shard
            .losses(theta, &batch.support_x, &batch.support_y, Some(t))?
            .total(shard.kind())?)
    };
    let mut query: Option<TaskLosses> = None;
    let grads = mg.backward(trajectory, &mut support, |theta, t| {
        // The query loss after step t (1-based), weighted when the multi-step loss is on.
        let weight = match (t, weights.is_empty()) {
            (0, _) => return Ok(None),
            (t, true) if t < steps => return Ok(None),
            (_, true) => None,
            (t, false) => Some(weights[t - 1]),
        };
        let q = shard.losses(theta, &batch.query_x, &batch.query_y, Some(t - 1))?;
        let mut term = q.total(shard.kind())?;
        if let Some(w) = weight {
            term = term.f_mul_scalar(w)?;
        }
        if t == steps {
            query = Some(TaskLosses {
                loss: q.loss.f_detach()?,
                accuracy: q.accuracy.map(|a| a.f_detach()).transpose()?,
            });
        }
        Ok(Some(term.f_div_scalar(global_tasks)?))
    })?;
    let query =
        query.ok_or_else(|| Error::State("the adjoint pass evaluated no meta-loss".into()))?;
    let mut out = vec![grads.theta0];
    out.extend(grads.hypergradients.into_iter().map(|(_, g)| g));
    Ok(Contribution { grads: out, query })
}
