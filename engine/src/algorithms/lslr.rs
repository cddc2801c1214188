//! LSLR, MAML++'s "learning per-layer per-step learning rates" (Antoniou, Edwards & Storkey 2019,
//! "How to train your MAML"): second-order MAML whose inner SGD step `s` uses a learned learning
//! rate for each parameter tensor, its own for every step (the meta-gradient is the trait's
//! default, second-order MAML, which applies each step's row).
//!
//! Selected by `algorithm.name = "lslr"`. The learned rates are the meta-vector's `lr`, a
//! `[inner_steps, G]` tensor (G parameter tensors) starting at `algorithm.inner_lr`; step `s`
//! reads row `min(s, inner_steps − 1)`, so an evaluation with more inner steps than training
//! keeps the last step's rates. They combine with `multi_step_loss` and `learn_momentum` (MAML++
//! uses both) but not with `memory = "recompute"`, whose adjoint pass takes one set of
//! hyperparameters for every step. Checkpoints and `model.safetensors` hold them as `inner.lr`
//! (engine::model_file).

use metaloop_runtime::Layout;

use super::{maml, per_tensor_hparams, Algorithm, Learned, MetaGrad, Opts, Shard};
use crate::config::AlgorithmConfig;
use crate::data::MetaBatch;
use crate::Result;

/// MAML with per-layer, per-step learned inner learning rates.
#[derive(Debug, Clone, Copy)]
pub struct Lslr;

impl Algorithm for Lslr {
    fn learned(&self, a: &AlgorithmConfig, layout: &Layout, opts: Opts) -> Result<Vec<Learned>> {
        let shape = [a.inner_steps as i64, layout.group_sizes().len() as i64];
        let mut out = vec![Learned::filled("lr", &shape, a.inner_lr, opts, true)?];
        // `learn_lr` is refused for LSLR by validation; a learned momentum may join.
        out.extend(per_tensor_hparams(a, layout, opts)?);
        Ok(out)
    }
    fn meta_gradient(&self, shard: &Shard, batch: &MetaBatch, global_tasks: f64) -> MetaGrad {
        maml::second_order_or_recompute(shard, batch, global_tasks)
    }
}
