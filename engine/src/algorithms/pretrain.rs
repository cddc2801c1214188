//! The pretrain baseline: θ0 trained jointly on all tasks' support and query data, with no inner
//! loop; at test time it is fine-tuned like the others.

use super::{Algorithm, Contribution, MetaGrad, Shard};
use crate::data::MetaBatch;
use tch::Tensor;

/// Joint training.
#[derive(Debug, Clone, Copy)]
pub struct Pretrain;

impl Algorithm for Pretrain {
    fn meta_gradient(&self, shard: &Shard, batch: &MetaBatch, global_tasks: f64) -> MetaGrad {
        let theta = shard.theta().expand_tasks(batch.len() as i64)?;
        let support = shard.losses(&theta, &batch.support_x, &batch.support_y, None)?;
        let query = shard.losses(&theta, &batch.query_x, &batch.query_y, None)?;
        let objective = support
            .loss
            .f_add(&query.loss)?
            .f_sum(shard.kind())?
            .f_div_scalar(2.0 * global_tasks)?;
        let g =
            Tensor::f_run_backward(&[&objective], &[shard.theta().flat()], false, false)?.remove(0);
        Ok(Contribution {
            grads: vec![g],
            query,
        })
    }
}
