//! Meta-SGD (Li et al. 2017): MAML whose inner learning rate is learned, one per element of θ
//! (the meta-gradient is the trait's default, second-order MAML).
//!
//! The learned rates are the meta-vector's `lr` (`[P]`, starting at `algorithm.inner_lr`); they are
//! saved in checkpoints and beside θ0 in `model.safetensors` as `inner.lr`.

use metaloop_runtime::Layout;

use super::{maml, per_tensor_hparams, Algorithm, Learned, MetaGrad, Opts, Shard};
use crate::config::AlgorithmConfig;
use crate::data::MetaBatch;
use crate::Result;

/// Meta-SGD.
#[derive(Debug, Clone, Copy)]
pub struct MetaSgd;

impl Algorithm for MetaSgd {
    fn learned(&self, a: &AlgorithmConfig, layout: &Layout, opts: Opts) -> Result<Vec<Learned>> {
        let numel = [layout.numel()];
        let mut out = vec![Learned::filled("lr", &numel, a.inner_lr, opts, false)?];
        // `learn_lr` is refused for Meta-SGD by validation; a learned momentum may join.
        out.extend(per_tensor_hparams(a, layout, opts)?);
        Ok(out)
    }
    fn meta_gradient(&self, shard: &Shard, batch: &MetaBatch, global_tasks: f64) -> MetaGrad {
        maml::second_order_or_recompute(shard, batch, global_tasks)
    }
}
