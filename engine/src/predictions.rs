//! Few-shot predictions before and after adaptation: what a researcher looks at to see what the
//! support steps changed on a classification task.
//!
//! For the first meta-test tasks (the same tasks, drawn from the run's seed, that
//! [`MetaTest::run`] meta-tests first): the support images with their labels and, for a few
//! query images per class, the true label and the predicted class with its softmax probability
//! at θ0 and after `eval.inner_steps` inner steps. The support steps are the algorithms' own
//! [`crate::algorithms::adapt`], with the learned inner hyperparameters in force, and the query
//! logits honour `eval.batchnorm`, as in evaluation: the logits are those of the whole query set
//! (transductive BatchNorm depends on it), from which the shown queries are picked. Images come
//! back displayable: channels-last values in `[0, 1]`, with Omniglot's inversion undone (dark
//! strokes on white). Nothing here prints or draws.

use tch::{Device, Kind, Tensor};

use crate::config::TaskKind;
use crate::data::{MetaBatch, Split};
use crate::evaluate::MetaTest;
use crate::host::to_f64s;
use crate::{Error, Result};

/// Which tasks and queries [`PredictionSpec::predict`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PredictionSpec {
    /// Meta-test tasks `0..tasks` (of the test split, as the meta-test draws them).
    pub tasks: usize,
    /// Query images shown per class (at most the task's `task.queries`): the first ones of each
    /// class.
    pub queries_per_class: usize,
}

impl PredictionSpec {
    /// The figure's choice: two tasks, two queries per class.
    pub const fn figure() -> PredictionSpec {
        PredictionSpec {
            tasks: 2,
            queries_per_class: 2,
        }
    }
}

/// An image ready to display: `height × width × channels` values in `[0, 1]`, row-major and
/// channels-last (one channel for grayscale, three for RGB).
#[derive(Debug, Clone, PartialEq)]
pub struct Picture {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub pixels: Vec<f32>,
}

impl Picture {
    /// The colour of pixel (`x`, `y`) as 8-bit RGB (gray repeated for one channel).
    pub fn rgb8(&self, x: usize, y: usize) -> [u8; 3] {
        let at = (y * self.width + x) * self.channels;
        let byte = |c: usize| (self.pixels[at + c.min(self.channels - 1)] * 255.0).round() as u8;
        [byte(0), byte(1), byte(2)]
    }
}

/// A predicted class and the softmax probability the model gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guess {
    pub class: usize,
    pub probability: f64,
}

/// One query image, its true label and the predictions at θ0 and after adaptation.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPrediction {
    pub image: Picture,
    pub label: usize,
    pub before: Guess,
    pub after: Guess,
}

/// One meta-test task: its support set and the shown queries with their predictions.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPredictions {
    /// The meta-test task's index.
    pub task: usize,
    /// The inner steps taken on the support set (`eval.inner_steps`).
    pub inner_steps: usize,
    /// Every support image with its label, in the episode's (class-major) order.
    pub support: Vec<(Picture, usize)>,
    /// `queries_per_class` queries of each class, class-major.
    pub queries: Vec<QueryPrediction>,
}

impl PredictionSpec {
    /// The predictions of this spec for the meta-test `test`'s θ0 and learned inner
    /// hyperparameters (classification only; computed on this rank alone, no collective).
    pub fn predict(&self, test: &MetaTest<'_>) -> Result<Vec<TaskPredictions>> {
        let spec = self;
        if !test.net.classification() {
            return Err(Error::InvalidSetting {
                what: "predictions",
                reason: "the task is not classification (its loss reports no accuracy)".into(),
            });
        }
        if spec.tasks == 0 {
            return Ok(Vec::new());
        }
        let _s = tracing::info_span!("predictions", tasks = spec.tasks).entered();
        // The meta-test's own tasks and model (`eval.ways`, `eval.shots`: engine::protocol).
        let batch =
            test.protocol
                .source
                .meta_batch(test.cfg.run.seed, 0, 0..spec.tasks, Split::Test)?;
        let batch = test.net.prepare(batch)?;
        let (before, after) = query_logits(test, &batch)?;
        let (before, after) = (guesses(&before)?, guesses(&after)?);
        let inverted = test.cfg.task.kind == TaskKind::Omniglot;
        (0..batch.len())
            .map(|t| {
                let episode = batch.task(t)?;
                let support = pictures(&episode.support_x, inverted)?
                    .into_iter()
                    .zip(labels(&episode.support_y)?)
                    .collect();
                let query_labels = labels(&episode.query_y)?;
                let images = pictures(&episode.query_x, inverted)?;
                let queries = shown(&query_labels, spec.queries_per_class)
                    .into_iter()
                    .map(|i| QueryPrediction {
                        image: images[i].clone(),
                        label: query_labels[i],
                        before: before[t][i],
                        after: after[t][i],
                    })
                    .collect();
                Ok(TaskPredictions {
                    task: batch.tasks.start + t,
                    inner_steps: test.cfg.eval_inner_steps(),
                    support,
                    queries,
                })
            })
            .collect()
    }
}

/// The query logits `[T, N, ways]` of `batch` at θ0 and after `eval.inner_steps` support steps,
/// with the meta-test's model (engine::protocol), as [`MetaTest::run`] computes them.
fn query_logits(test: &MetaTest<'_>, batch: &MetaBatch) -> Result<(Tensor, Tensor)> {
    let weights = test
        .protocol
        .weights(&test.meta.theta, &test.meta.learned)?;
    let shard = test.shard(batch, weights.as_ref());
    test.adapted_query_outputs(&shard, batch)
}

/// Per task and query: the arg-max class of `logits` (`[T, N, ways]`, as the accuracy of
/// [`crate::loss::CrossEntropy`] takes it) and its softmax probability.
fn guesses(logits: &Tensor) -> Result<Vec<Vec<Guess>>> {
    let size = logits.size();
    let (t, n) = (size[0] as usize, size[1] as usize);
    let logits = logits.f_detach()?;
    let class = logits.f_argmax(-1, false)?;
    let p = logits
        .f_to_kind(Kind::Double)?
        .f_softmax(-1, Kind::Double)?
        .f_gather(-1, &class.f_unsqueeze(-1)?, false)?;
    let (p, class) = (to_f64s(&p)?, labels(&class)?);
    Ok((0..t)
        .map(|task| {
            (task * n..(task + 1) * n)
                .map(|i| Guess {
                    class: class[i],
                    probability: p[i],
                })
                .collect()
        })
        .collect())
}

/// Integer labels as indices (flattened).
fn labels(y: &Tensor) -> Result<Vec<usize>> {
    let y = y
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Int64)?
        .f_reshape([-1])?;
    Ok(Vec::<i64>::try_from(&y)?
        .into_iter()
        .map(|v| v.max(0) as usize)
        .collect())
}

/// The positions of the first `per_class` examples of each label, in label order.
fn shown(labels: &[usize], per_class: usize) -> Vec<usize> {
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    (0..classes)
        .flat_map(|c| {
            labels
                .iter()
                .enumerate()
                .filter(move |(_, &l)| l == c)
                .map(|(i, _)| i)
                .take(per_class)
        })
        .collect()
}

/// Images `[N, C, H, W]` as displayable pictures (channels-last, clamped to `[0, 1]`, `1 − x`
/// where the dataset inverts).
fn pictures(x: &Tensor, inverted: bool) -> Result<Vec<Picture>> {
    let size = x.size();
    let [n, c, h, w] = size[..] else {
        return Err(Error::InvalidSetting {
            what: "predictions",
            reason: format!("images must be [N, C, H, W], got {size:?}"),
        });
    };
    let mut x = x
        .f_detach()?
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?;
    if inverted {
        x = x.f_neg()?.f_add_scalar(1.0)?;
    }
    let x = x
        .f_clamp(0.0, 1.0)?
        .f_permute([0, 2, 3, 1])?
        .f_contiguous()?;
    let values = Vec::<f32>::try_from(&x.f_reshape([-1])?)?;
    let per = (h * w * c) as usize;
    Ok((0..n as usize)
        .map(|i| Picture {
            height: h as usize,
            width: w as usize,
            channels: c as usize,
            pixels: values[i * per..(i + 1) * per].to_vec(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_are_channels_last_clamped_and_uninverted() {
        // Two images of 3 channels, 2×2: value = 0.05 · the (image, channel, y, x) index.
        let x = Tensor::arange(24, (Kind::Float, Device::Cpu))
            .f_mul_scalar(0.05)
            .unwrap()
            .f_reshape([2, 3, 2, 2])
            .unwrap();
        let plain = pictures(&x, false).unwrap();
        assert_eq!(plain.len(), 2);
        let p = &plain[1];
        assert_eq!((p.height, p.width, p.channels), (2, 2, 3));
        for (y, xx, c) in [(0, 0, 0), (0, 1, 2), (1, 0, 1), (1, 1, 2)] {
            let v = x.double_value(&[1, c as i64, y as i64, xx as i64]).min(1.0);
            assert!((f64::from(p.pixels[(y * 2 + xx) * 3 + c]) - v).abs() < 1e-6);
        }
        assert_eq!(p.pixels[(2 + 1) * 3 + 2], 1.0, "values above 1 are clamped");
        let inverted = pictures(&x, true).unwrap();
        let v = x.double_value(&[0, 1, 1, 0]);
        assert!((f64::from(inverted[0].pixels[2 * 3 + 1]) - (1.0 - v)).abs() < 1e-6);
        assert_eq!(inverted[0].rgb8(0, 0), [255, 204, 153]);
    }

    #[test]
    fn shown_takes_the_first_queries_of_each_class_class_major() {
        assert_eq!(shown(&[0, 0, 0, 1, 1, 1, 2, 2, 2], 2), [0, 1, 3, 4, 6, 7]);
        assert_eq!(shown(&[1, 0, 1, 0], 5), [1, 3, 0, 2]);
    }
}
