//! Training tasks: the task source, its prefetch thread, and `task.augment` on support images.
//!
//! Tasks are a pure function of (seed, iteration, task index), so the prefetcher restarts at
//! any iteration (after a resume) and yields the same batches. Nothing here prints.

use std::ops::Range;
use std::sync::Arc;

use crate::config::{Augment, TrainConfig};
use crate::data::{augment, task_seed, MetaBatch, PrefetchConfig, Prefetcher, Split, TaskSource};
use crate::Result;

/// Where training tasks come from.
pub(crate) struct TaskFeed {
    pub(crate) source: Arc<dyn TaskSource>,
    prefetcher: Option<Prefetcher>,
}

impl TaskFeed {
    pub(crate) fn new(source: Arc<dyn TaskSource>) -> TaskFeed {
        TaskFeed {
            source,
            prefetcher: None,
        }
    }

    /// The tasks `range` of `iteration`'s meta-batch (on the CPU, augmented).
    pub(crate) fn next_batch(
        &mut self,
        cfg: &TrainConfig,
        iteration: u64,
        range: Range<usize>,
    ) -> Result<MetaBatch> {
        if self
            .prefetcher
            .as_ref()
            .is_none_or(|p| p.next_iteration() != iteration)
        {
            self.prefetcher = Some(
                PrefetchConfig::new(cfg.run.seed, Split::Train, range)
                    .start(iteration)
                    .spawn(self.source.clone())?,
            );
        }
        let batch = self.prefetcher.as_mut().expect("just made").next_batch()?;
        augmented(cfg, batch)
    }

    /// Stops the prefetch thread (the next batch starts a new one where it is asked for).
    pub(crate) fn reset(&mut self) {
        self.prefetcher = None;
    }
}

/// `task.augment` on the support images of a training batch: each task's images from its own
/// seed (`data::task_seed` of the run seed, the iteration and the global task index), so that 1
/// and N ranks augment a task alike.
fn augmented(cfg: &TrainConfig, mut b: MetaBatch) -> Result<MetaBatch> {
    match cfg.task.augment {
        Augment::None => {}
        Augment::Standard => {
            let seeds: Vec<u64> = b
                .tasks
                .clone()
                .map(|i| task_seed(cfg.run.seed, Split::Train, b.iteration, i))
                .collect();
            b.support_x = augment::Standard::for_side(cfg.task.image_size)
                .apply_tasks(&b.support_x, &seeds)?;
        }
    }
    Ok(b)
}
