//! The model and how it computes: its per-task loss, the dtype and device of parameters and
//! batches, and whether optimizer steps use fused kernels. It hands workers their view of a
//! batch ([`Shard`]). Nothing here prints.

use metaloop_runtime::nn::Module;
use tch::{Device, Kind};

use crate::algorithms::{BnMode, Learned, Shard};
use crate::config::TrainConfig;
use crate::data::{task_seed, MetaBatch, Split};
use crate::loss::Loss;
use crate::meta_params::MetaParams;
use crate::Result;

/// Separates the random layers' mask seeds from the task-sampling and augmentation streams of
/// the same task seed.
const MASKS: u64 = 0x6d61_736b_7365_6564;

/// The model, its loss, and where and how it computes.
pub(crate) struct Net {
    pub(crate) model: Box<dyn Module>,
    pub(crate) loss: Box<dyn Loss>,
    pub(crate) kind: Kind,
    pub(crate) device: Device,
    /// Fused optimizer kernels (runtime::kernels) in the inner and outer steps.
    pub(crate) fused: bool,
}

impl Net {
    /// True when the loss reports accuracies (classification).
    pub(crate) fn classification(&self) -> bool {
        self.loss.classification()
    }

    /// A batch moved to this device and dtype (class labels stay integer).
    pub(crate) fn prepare(&self, mut b: MetaBatch) -> Result<MetaBatch> {
        let labels = self.classification();
        for (t, is_label) in [
            (&mut b.support_x, false),
            (&mut b.support_y, labels),
            (&mut b.query_x, false),
            (&mut b.query_y, labels),
        ] {
            let moved = t.f_to_device(self.device)?;
            *t = if is_label {
                moved
            } else {
                moved.f_to_kind(self.kind)?
            };
        }
        Ok(b)
    }

    /// A worker's view of `meta` for the tasks of `batch` after `iteration` outer iterations
    /// (see [`Shard`]).
    pub(crate) fn shard<'a>(
        &'a self,
        cfg: &'a TrainConfig,
        meta: &'a MetaParams,
        iteration: u64,
        batch: &MetaBatch,
    ) -> Shard<'a> {
        Shard {
            algorithm: &cfg.algorithm,
            iterations: cfg.outer.iterations,
            model: self.model.as_ref(),
            loss: self.loss.as_ref(),
            kind: self.kind,
            device: self.device,
            theta: meta.theta.clone(),
            learned: meta.learned.iter().map(Learned::shallow_clone).collect(),
            frozen: &meta.frozen,
            iteration,
            fused: self.fused,
            seeds: batch
                .tasks
                .clone()
                .map(|i| task_seed(cfg.run.seed, Split::Train, batch.iteration, i) ^ MASKS)
                .collect(),
            bn: BnMode::Batch,
            clips: Default::default(),
        }
    }
}
