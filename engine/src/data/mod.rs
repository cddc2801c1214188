//! Tasks and datasets: what a meta-batch is, and where its tasks come from.
//!
//! Every task is a pure function of `(seed, split, iteration, task index)` (see [`rng`]): never of
//! the rank, the number of ranks, or how a range of tasks is cut into calls. Tasks `0..8` in one
//! call equal tasks `0..4` and `4..8` in two. Sources produce CPU tensors; moving them to a device
//! is the caller's (or the [`Prefetcher`]'s) job.
//!
//! This module must not depend on runtime internals (only on `tch` tensors) nor print anything.
//!
//! Sources:
//! - [`Sinusoid`]: the MAML paper's sinusoid regression.
//! - [`FewShot`] over an [`ImageDataset`] loaded by [`omniglot::load`],
//!   [`miniimagenet::load`] or [`folder::load`]; decoding runs on rayon and is cached on disk
//!   ([`cache`]). Also [`tieredimagenet::load`], [`cifar::load_cifar_fs`] and
//!   [`cifar::load_fc100`], which read Python pickles with [`pickle`].
//! - [`augment`]: `task.augment = "standard"` (crop, flip, colour jitter per task seed).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use tch::{Device, Tensor};

use crate::{Error, Result};

pub mod augment;
pub mod cache;
pub mod cifar;
pub mod folder;
pub mod images;
pub mod miniimagenet;
pub mod omniglot;
pub mod pickle;
pub mod prefetch;
pub mod rng;
pub mod sinusoid;
pub mod tieredimagenet;

pub use images::{CacheStatus, ClassRef, FewShot, ImageDataset, ImageSpec, LoadReport, Resize};
pub use prefetch::{PrefetchConfig, Prefetcher};
pub use rng::{task_seed, TaskRng};
pub use sinusoid::{Sinusoid, SinusoidTask};

/// Which part of a dataset tasks are drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// Meta-training.
    Train,
    /// Meta-validation (model selection).
    Val,
    /// Meta-testing.
    Test,
}

impl Split {
    /// All splits, in the order train, val, test.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// 0, 1, 2 for train, val, test: the split's place in arrays and in task seeds.
    pub fn index(self) -> usize {
        match self {
            Split::Train => 0,
            Split::Val => 1,
            Split::Test => 2,
        }
    }

    /// "train", "val" or "test".
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One task: a support set to adapt on and a query set to evaluate the adapted model on.
///
/// Classification (N-way K-shot, Q queries per class): `support_x` is `[N*K, C, H, W]` f32,
/// `support_y` `[N*K]` i64 labels in `0..N`, `query_x` `[N*Q, C, H, W]`, `query_y` `[N*Q]`.
/// Examples are class-major: the first K support examples have label 0, the next K label 1, ...
/// Regression (sinusoid): `support_x`, `support_y` are `[K, 1]`, `query_x`, `query_y` `[Q, 1]`.
#[derive(Debug)]
pub struct Episode {
    pub support_x: Tensor,
    pub support_y: Tensor,
    pub query_x: Tensor,
    pub query_y: Tensor,
}

impl Episode {
    /// A copy on `device` (a no-op copy-free move when already there).
    pub fn to_device(&self, device: Device) -> Result<Episode> {
        Ok(Episode {
            support_x: self.support_x.f_to_device(device)?,
            support_y: self.support_y.f_to_device(device)?,
            query_x: self.query_x.f_to_device(device)?,
            query_y: self.query_y.f_to_device(device)?,
        })
    }
}

/// T tasks stacked along a new leading task dimension: `support_x` `[T, N, ...]`, `support_y`
/// `[T, N]` (classification) or `[T, K, 1]` (regression), and the same for the query set. Task `t`
/// of the batch is the global task index `tasks.start + t` of meta-iteration `iteration`.
#[derive(Debug)]
pub struct MetaBatch {
    pub support_x: Tensor,
    pub support_y: Tensor,
    pub query_x: Tensor,
    pub query_y: Tensor,
    /// The meta-iteration the tasks were drawn for.
    pub iteration: u64,
    /// The global task indices in the batch.
    pub tasks: Range<usize>,
}

impl MetaBatch {
    /// The tasks at positions `r` of this batch (views).
    pub fn slice(&self, r: Range<usize>) -> Result<MetaBatch> {
        let cut = |t: &Tensor| t.f_narrow(0, r.start as i64, r.len() as i64);
        self.map(cut, self.tasks.start + r.start..self.tasks.start + r.end)
    }

    /// The batch of the same iteration with each of the four tensors mapped by `f`, as the tasks
    /// `tasks`.
    fn map(
        &self,
        f: impl Fn(&Tensor) -> std::result::Result<Tensor, tch::TchError>,
        tasks: Range<usize>,
    ) -> Result<MetaBatch> {
        Ok(MetaBatch {
            support_x: f(&self.support_x)?,
            support_y: f(&self.support_y)?,
            query_x: f(&self.query_x)?,
            query_y: f(&self.query_y)?,
            iteration: self.iteration,
            tasks,
        })
    }

    /// Stacks episodes (all of the same shapes) into a meta-batch.
    pub fn stack(episodes: &[Episode], iteration: u64, tasks: Range<usize>) -> Result<MetaBatch> {
        if episodes.len() != tasks.len() {
            return Err(crate::Error::InvalidSetting {
                what: "MetaBatch::stack",
                reason: format!(
                    "{} episodes for the {} tasks {tasks:?}",
                    episodes.len(),
                    tasks.len()
                ),
            });
        }
        let stack = |f: fn(&Episode) -> &Tensor| -> Result<Tensor> {
            let parts: Vec<&Tensor> = episodes.iter().map(f).collect();
            Ok(Tensor::f_stack(&parts, 0)?)
        };
        Ok(MetaBatch {
            support_x: stack(|e| &e.support_x)?,
            support_y: stack(|e| &e.support_y)?,
            query_x: stack(|e| &e.query_x)?,
            query_y: stack(|e| &e.query_y)?,
            iteration,
            tasks,
        })
    }

    /// The number of tasks T.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// True when the batch holds no task.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Task `t` of the batch (0-based within the batch), as views.
    pub fn task(&self, t: usize) -> Result<Episode> {
        let t = t as i64;
        Ok(Episode {
            support_x: self.support_x.f_select(0, t)?,
            support_y: self.support_y.f_select(0, t)?,
            query_x: self.query_x.f_select(0, t)?,
            query_y: self.query_y.f_select(0, t)?,
        })
    }

    /// A copy on `device`.
    pub fn to_device(&self, device: Device) -> Result<MetaBatch> {
        self.map(|t| t.f_to_device(device), self.tasks.clone())
    }
}

/// Where tasks come from. Implementations must make task `t` of `(seed, split, iteration)` a pure
/// function of those four values, so that any cut of a range of tasks into calls, on any number
/// of ranks, yields the same tasks.
pub trait TaskSource: Send + Sync {
    /// Tasks `tasks` of meta-iteration `iteration`, stacked along a leading task dimension.
    fn meta_batch(
        &self,
        seed: u64,
        iteration: u64,
        tasks: Range<usize>,
        split: Split,
    ) -> Result<MetaBatch>;

    /// One task, without the task dimension.
    fn task(&self, seed: u64, iteration: u64, task: usize, split: Split) -> Result<Episode> {
        self.meta_batch(seed, iteration, task..task + 1, split)?
            .task(0)
    }

    /// The shape of one input example: `[1]` for sinusoid points, `[C, H, W]` for images.
    fn input_shape(&self) -> Vec<i64>;

    /// The model's output width: 1 for regression, `ways` for classification.
    fn num_outputs(&self) -> usize;

    /// The same distribution with tasks of `ways` classes (1 for regression) and `shots` support
    /// examples per class (support points for regression), for validation and meta-test with
    /// another protocol than training's (`eval.ways`, `eval.shots`); the val and test splits
    /// are checked for them. The default: an error, for sources whose tasks have one shape.
    fn reshaped(&self, ways: usize, shots: usize) -> Result<Arc<dyn TaskSource>> {
        Err(Error::InvalidSetting {
            what: "eval.ways / eval.shots",
            reason: format!(
                "this task source draws tasks of one shape only, not {ways}-way {shots}-shot ones"
            ),
        })
    }
}
