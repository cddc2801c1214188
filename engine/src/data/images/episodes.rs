//! N-way K-shot episodes drawn from an [`ImageDataset`]: the [`TaskSource`] of image datasets.
//! Every draw comes from the task's own stream, so a task is the same on any rank.

use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;
use tch::Tensor;

use super::spec::StoredClass;
use super::store::{ClassRef, ImageDataset};
use crate::data::{MetaBatch, Split, TaskRng, TaskSource};
use crate::{Error, Result};

/// N-way K-shot classification episodes over an [`ImageDataset`]: each task picks `ways` distinct
/// classes of the split (label = order of drawing), then `shots + queries` distinct images of each
/// class: the first `shots` go to the support set, the rest to the query set. Draw order from the
/// task's stream: the classes, then each class's images in label order.
#[derive(Debug, Clone)]
pub struct FewShot {
    dataset: Arc<ImageDataset>,
    ways: usize,
    shots: usize,
    queries: usize,
}

impl FewShot {
    /// `ways` classes per task, `shots` support and `queries` query images per class (all > 0).
    pub fn new(
        dataset: Arc<ImageDataset>,
        ways: usize,
        shots: usize,
        queries: usize,
    ) -> Result<FewShot> {
        if ways == 0 || shots == 0 || queries == 0 {
            return Err(Error::InvalidSetting {
                what: "few-shot episodes",
                reason: format!(
                    "ways ({ways}), shots ({shots}) and queries ({queries}) must all be > 0"
                ),
            });
        }
        Ok(FewShot {
            dataset,
            ways,
            shots,
            queries,
        })
    }

    /// Checks the whole dataset against the episodes at once, before any is drawn: every split
    /// it has holds at least `ways` classes, each with at least `shots + queries` images. (An
    /// episode checks only what it draws, possibly after a run has started.)
    pub fn check_whole(&self) -> Result<()> {
        self.check_splits(&Split::ALL)
    }

    /// [`FewShot::check_whole`] for the splits `splits` (those the dataset has).
    pub fn check_splits(&self, splits: &[Split]) -> Result<()> {
        for &split in splits {
            let Ok(classes) = self.dataset.classes(split) else {
                continue;
            };
            self.split_classes(split)?;
            for &class in classes {
                self.episode_class(class)?;
            }
        }
        Ok(())
    }

    /// The dataset episodes are drawn from.
    pub fn dataset(&self) -> &Arc<ImageDataset> {
        &self.dataset
    }

    /// The classes task `task` draws, in label order (label `i` is element `i`).
    pub fn task_classes(
        &self,
        seed: u64,
        iteration: u64,
        task: usize,
        split: Split,
    ) -> Result<Vec<ClassRef>> {
        let classes = self.split_classes(split)?;
        let mut rng = TaskRng::for_task(seed, split, iteration, task);
        Ok(rng
            .choose_distinct(classes.len(), self.ways)
            .into_iter()
            .map(|i| classes[i])
            .collect())
    }

    fn split_classes(&self, split: Split) -> Result<&[ClassRef]> {
        let classes = self.dataset.classes(split)?;
        if classes.len() < self.ways {
            return Err(Error::TooFewClasses {
                dataset: self.dataset.name,
                split,
                classes: classes.len(),
                ways: self.ways,
            });
        }
        Ok(classes)
    }

    /// The stored class of `class`, if it has the `shots + queries` images an episode takes.
    fn episode_class(&self, class: ClassRef) -> Result<&StoredClass> {
        let stored = self.dataset.stored(class)?;
        let needed = self.shots + self.queries;
        if stored.count < needed {
            return Err(Error::TooFewImages {
                dataset: self.dataset.name,
                class: self.dataset.class_name(class),
                images: stored.count,
                needed,
            });
        }
        Ok(stored)
    }

    /// Fills one task's support and query pixels.
    fn fill(
        &self,
        classes: &[ClassRef],
        mut rng: TaskRng,
        support: &mut [f32],
        query: &mut [f32],
    ) -> Result<()> {
        let bytes = self.dataset.store.spec.image_bytes();
        let per_class = self.shots + self.queries;
        let chosen = rng.choose_distinct(classes.len(), self.ways);
        for (label, &ci) in chosen.iter().enumerate() {
            let class = classes[ci];
            let stored = self.episode_class(class)?;
            for (j, pick) in rng
                .choose_distinct(stored.count, per_class)
                .into_iter()
                .enumerate()
            {
                let dst = if j < self.shots {
                    let at = (label * self.shots + j) * bytes;
                    &mut support[at..at + bytes]
                } else {
                    let at = (label * self.queries + j - self.shots) * bytes;
                    &mut query[at..at + bytes]
                };
                self.dataset
                    .write_image(stored.first + pick, class.rotation, dst);
            }
        }
        Ok(())
    }
}

impl TaskSource for FewShot {
    fn meta_batch(
        &self,
        seed: u64,
        iteration: u64,
        tasks: Range<usize>,
        split: Split,
    ) -> Result<MetaBatch> {
        let classes = self.split_classes(split)?;
        let bytes = self.dataset.store.spec.image_bytes();
        let t = tasks.len();
        let n_support = self.ways * self.shots;
        let n_query = self.ways * self.queries;
        let mut support = vec![0f32; t * n_support * bytes];
        let mut query = vec![0f32; t * n_query * bytes];
        if t > 0 && bytes > 0 {
            support
                .par_chunks_mut(n_support * bytes)
                .zip(query.par_chunks_mut(n_query * bytes))
                .enumerate()
                .try_for_each(|(i, (s, q))| {
                    let rng = TaskRng::for_task(seed, split, iteration, tasks.start + i);
                    self.fill(classes, rng, s, q)
                })?;
        }
        let labels = |per_class: usize| -> Vec<i64> {
            let one: Vec<i64> = (0..self.ways as i64)
                .flat_map(|l| std::iter::repeat_n(l, per_class))
                .collect();
            one.repeat(t)
        };
        let [c, h, w] = self.dataset.image_shape();
        let (t, ns, nq) = (t as i64, n_support as i64, n_query as i64);
        Ok(MetaBatch {
            support_x: Tensor::f_from_slice(&support)?.f_view([t, ns, c, h, w])?,
            support_y: Tensor::f_from_slice(&labels(self.shots))?.f_view([t, ns])?,
            query_x: Tensor::f_from_slice(&query)?.f_view([t, nq, c, h, w])?,
            query_y: Tensor::f_from_slice(&labels(self.queries))?.f_view([t, nq])?,
            iteration,
            tasks,
        })
    }

    fn input_shape(&self) -> Vec<i64> {
        self.dataset.image_shape().to_vec()
    }

    fn num_outputs(&self) -> usize {
        self.ways
    }

    /// The same dataset and queries, `ways` classes and `shots` support images per class; the
    /// val and test splits are checked for them.
    fn reshaped(&self, ways: usize, shots: usize) -> Result<Arc<dyn TaskSource>> {
        let episodes = FewShot::new(self.dataset.clone(), ways, shots, self.queries)?;
        episodes.check_splits(&[Split::Val, Split::Test])?;
        Ok(Arc::new(episodes))
    }
}
