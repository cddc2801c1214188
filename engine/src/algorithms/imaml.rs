//! iMAML (Rajeswaran, Finn, Kakade & Levine 2019, "Meta-Learning with Implicit Gradients",
//! NeurIPS): the meta-gradient at the solution of a proximal inner problem, by implicit
//! differentiation instead of through the unroll.
//!
//! The inner loop ([`adapt`] with the config's proximal regulariser) minimises the support loss
//! plus λ/2 ‖φ − θ0‖² (`algorithm.imaml_lambda`) for `inner_steps` steps of the inner optimizer,
//! without tracking: no graph is kept from one step to the next, so memory does not grow with
//! the steps. At the solution φ*, dφ*/dθ0 = (I + H/λ)⁻¹ with H the Hessian of the support loss
//! at φ*. A task's meta-gradient is v = (I + H/λ)⁻¹ ∇φ L_query(φ*), found by `cg_steps`
//! iterations of conjugate gradient ([`conjugate_gradient`]) on Hessian-vector products: a double
//! backward through one support gradient at φ* ([`implicit_solve`]). Tasks are batched: φ is
//! `[T, P]` and CG runs per task, with per-task dot products. With `cg_damping` d it solves
//! ((1 + d) I + H/λ) v = ∇φ L_query instead.
//!
//! The result is the implicit meta-gradient to the extent that the inner loop reached φ* and CG
//! converged. TorchOpt's `torchopt.diff.implicit` and Betty's `hypergradient/cg.py` compute the
//! same. Evaluation adapts with the same proximal objective.

use metaloop_runtime::Params;
use tch::Tensor;

use super::{adapt, Algorithm, Contribution, MetaGrad, Shard};
use crate::data::MetaBatch;
use crate::loss::TaskLosses;
use crate::Result;

/// Implicit MAML.
#[derive(Debug, Clone, Copy)]
pub struct Imaml;

impl Algorithm for Imaml {
    fn meta_gradient(&self, shard: &Shard, batch: &MetaBatch, global_tasks: f64) -> MetaGrad {
        let a = shard.config();
        let inner = adapt(shard, batch, a.inner_steps, false, |_, _| Ok(()))?;
        let solution = inner.params();
        let phi = Params::from_flat(
            solution.layout().clone(),
            solution.flat().f_detach()?.set_requires_grad(true),
        )?;
        drop(inner);
        let _s = tracing::info_span!("meta_gradient", cg_steps = a.cg_steps).entered();
        let kind = shard.kind();
        let query = shard.losses(&phi, &batch.query_x, &batch.query_y, None)?;
        let flat = phi.flat().shallow_clone();
        let b = Tensor::f_run_backward(&[query.total(kind)?], &[&flat], false, false)?.remove(0);
        let support = shard
            .losses(&phi, &batch.support_x, &batch.support_y, None)?
            .total(kind)?;
        let v = implicit_solve(
            &support,
            &flat,
            &b,
            a.imaml_lambda,
            a.cg_steps,
            a.cg_damping,
        )?;
        let g = v
            .f_sum_dim_intlist(&[0i64][..], false, kind)?
            .f_div_scalar(global_tasks)?;
        let mut grads = vec![g];
        grads.extend(shard.zero_hypergradients()?);
        let query = TaskLosses {
            loss: query.loss.f_detach()?,
            accuracy: query.accuracy.map(|a| a.f_detach()).transpose()?,
        };
        Ok(Contribution { grads, query })
    }
}

/// Solves ((1 + damping) I + H/λ) v = b by [`conjugate_gradient`], H the Hessian of `support`
/// w.r.t. `phi` (`[T, P]`, or `[P]`). Each row of `phi` is a task whose loss depends on that row
/// only, so H is block-diagonal and the rows are solved independently. The support gradient is
/// taken once with its graph; each CG iteration differentiates it again (a Hessian-vector
/// product).
pub fn implicit_solve(
    support: &Tensor,
    phi: &Tensor,
    b: &Tensor,
    lambda: f64,
    steps: usize,
    damping: f64,
) -> Result<Tensor> {
    let gs = Tensor::f_run_backward(&[support], &[phi], true, true)?.remove(0);
    let apply = |v: &Tensor| -> Result<Tensor> {
        let identity = v.f_mul_scalar(1.0 + damping)?;
        if !gs.requires_grad() {
            // A support gradient that does not depend on φ: H = 0.
            return Ok(identity);
        }
        let dot = gs.f_mul(v)?.f_sum(gs.kind())?;
        let hv = Tensor::f_run_backward(&[dot], &[phi], true, false)?.remove(0);
        Ok(identity.f_add(&hv.f_div_scalar(lambda)?)?)
    };
    conjugate_gradient(apply, &b.f_detach()?, steps)
}

/// `steps` iterations of conjugate gradient (Hestenes & Stiefel 1952) from x = 0 on each row of
/// `b` (`[T, P]`, or `[P]` as one row), for a symmetric positive-definite `apply` that maps
/// rows to rows independently. Dot products are per row; a row whose residual is exactly zero
/// stops moving. Nothing is read back to the host.
pub fn conjugate_gradient(
    mut apply: impl FnMut(&Tensor) -> Result<Tensor>,
    b: &Tensor,
    steps: usize,
) -> Result<Tensor> {
    let dot = |u: &Tensor, w: &Tensor| -> Result<Tensor> {
        Ok(u.f_mul(w)?
            .f_sum_dim_intlist(&[-1i64][..], true, u.kind())?)
    };
    let mut x = b.f_zeros_like()?;
    let mut r = b.shallow_clone();
    let mut p = b.shallow_clone();
    let mut rr = dot(&r, &r)?;
    for _ in 0..steps {
        let ap = apply(&p)?;
        let alpha = ratio(&rr, &dot(&p, &ap)?)?;
        x = x.f_add(&p.f_mul(&alpha)?)?;
        r = r.f_sub(&ap.f_mul(&alpha)?)?;
        let next = dot(&r, &r)?;
        let beta = ratio(&next, &rr)?;
        p = r.f_add(&p.f_mul(&beta)?)?;
        rr = next;
    }
    Ok(x)
}

/// `num / den` where `den` is not zero, else 0 (a row that has converged exactly).
fn ratio(num: &Tensor, den: &Tensor) -> Result<Tensor> {
    let nonzero = den.f_ne(0)?;
    let safe = den.f_where_scalarother(&nonzero, 1.0)?;
    Ok(num.f_div(&safe)?.f_mul(&nonzero.f_to_kind(num.kind())?)?)
}
