//! Reptile (Nichol et al. 2018): first-order inner steps, and the meta-gradient θ0 − φ averaged
//! over tasks. With outer SGD of lr ε this is Reptile's θ0 ← θ0 + ε (φ − θ0).

use super::{adapt, query_losses, Algorithm, Contribution, MetaGrad, Shard};
use crate::data::MetaBatch;

/// Reptile.
#[derive(Debug, Clone, Copy)]
pub struct Reptile;

impl Algorithm for Reptile {
    fn meta_gradient(&self, shard: &Shard, batch: &MetaBatch, global_tasks: f64) -> MetaGrad {
        let steps = shard.config().inner_steps;
        let inner = adapt(shard, batch, steps, false, |_, _| Ok(()))?;
        let query = tch::no_grad(|| query_losses(shard, &inner, batch, steps - 1))?;
        // Σ_t (θ0 − φ_t) / B.
        let phi = inner.params().flat().f_detach()?;
        let g = shard
            .theta()
            .flat()
            .f_detach()?
            .f_unsqueeze(0)?
            .f_sub(&phi)?
            .f_sum_dim_intlist(&[0i64][..], false, shard.kind())?
            .f_div_scalar(global_tasks)?;
        let mut grads = vec![g];
        grads.extend(shard.zero_hypergradients()?);
        Ok(Contribution { grads, query })
    }
}
