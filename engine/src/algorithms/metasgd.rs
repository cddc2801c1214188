//! Meta-SGD (Li et al. 2017): MAML whose inner learning rate is learned, one per element of θ
//! (the meta-gradient is the trait's default, second-order MAML).
//!
//! The learned rates are the meta-vector's `lr` (`[P]`, starting at `algorithm.inner_lr`); they are
//! saved in checkpoints and beside θ0 in `model.safetensors` as `inner.lr`.

use metaloop_runtime::Layout;

use super::{per_tensor_hparams, Algorithm, Learned, Opts};
use crate::config::AlgorithmConfig;
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
}
