//! Task chunks (`run.task_chunk`): each task-parallel worker runs its tasks in chunks of that
//! many, one after another, and adds up the chunks' meta-gradients. Only one chunk's unroll is
//! in memory at a time on each worker, so memory grows with the chunk, not with the meta-batch.
//!
//! A chunk is a slice of the rank's batch that keeps the tasks' global indices, so sampling,
//! augmentation and the masks of random layers (all functions of the seed, the iteration and the
//! task index) are the same for any chunk size. The sum differs from one pass over all tasks only
//! in the order of the additions. Nothing here prints.

use std::ops::Range;

use tch::Tensor;

use crate::algorithms::{Algorithm, BnMode, Shard};
use crate::data::MetaBatch;
use crate::{Error, Result};

/// What a run of tasks contributes: the meta-gradient (flat, already divided by the global
/// meta-batch size), [Σ query loss, Σ query accuracy], and each task's query loss, in task order.
pub(crate) struct Partial {
    pub(crate) grad: Tensor,
    pub(crate) sums: [Tensor; 2],
    pub(crate) per_task: Vec<Tensor>,
    /// Each task's BatchNorm running statistics after its inner loop, `[T, n]` in task order,
    /// when they are kept (engine::running).
    pub(crate) running: Option<Tensor>,
    /// Each task's inner clips (`[2, T]` per chunk: count, largest norm;
    /// engine::schedule::ClipLog), in task order.
    pub(crate) clips: Vec<Tensor>,
}

impl Partial {
    /// The sum of `parts` (in order; at least one).
    pub(crate) fn sum(parts: impl IntoIterator<Item = Partial>) -> Result<Partial> {
        let mut parts = parts.into_iter();
        let mut total = parts
            .next()
            .ok_or_else(|| Error::State("a meta-batch without tasks".into()))?;
        for p in parts {
            total.grad = total.grad.f_add(&p.grad)?;
            for (t, s) in total.sums.iter_mut().zip(&p.sums) {
                *t = t.f_add(s)?;
            }
            total.per_task.extend(p.per_task);
            total.running = match (total.running.take(), p.running) {
                (Some(a), Some(b)) => Some(Tensor::f_cat(&[a, b], 0)?),
                (a, b) => a.or(b),
            };
            total.clips.extend(p.clips);
        }
        Ok(total)
    }

    /// Each task's query loss `[T]`.
    pub(crate) fn per_task(&self) -> Result<Tensor> {
        Ok(Tensor::f_cat(&self.per_task, 0)?)
    }

    /// Each task's inner clips `[2, T]`: the count of clipped steps, the largest norm.
    pub(crate) fn clips(&self) -> Result<Tensor> {
        Ok(Tensor::f_cat(&self.clips, 1)?)
    }
}

/// The contiguous ranges of at most `chunk` tasks (the last one shorter) that cover `range`;
/// `chunk` 0 is the whole range.
pub(crate) fn split(range: Range<usize>, chunk: usize) -> Vec<Range<usize>> {
    if chunk == 0 || range.is_empty() {
        return vec![range];
    }
    range
        .clone()
        .step_by(chunk)
        .map(|start| start..(start + chunk).min(range.end))
        .collect()
}

/// One worker's share: its chunks' meta-gradients, one chunk after another (each chunk's graph
/// freed before the next starts), added up.
pub(crate) fn run_chunks(
    algorithm: &dyn Algorithm,
    chunks: Vec<(Shard<'_>, MetaBatch)>,
    global_tasks: f64,
) -> Result<Partial> {
    let mut total: Option<Partial> = None;
    for (shard, batch) in chunks {
        let part = chunk_meta_gradient(algorithm, &shard, &batch, global_tasks)?;
        total = Some(match total {
            Some(t) => Partial::sum([t, part])?,
            None => part,
        });
    }
    total.ok_or_else(|| Error::State("a task worker without tasks".into()))
}

/// One chunk's meta-gradient (flat), [Σ query loss, Σ query accuracy] and per-task losses.
fn chunk_meta_gradient(
    algorithm: &dyn Algorithm,
    shard: &Shard<'_>,
    batch: &MetaBatch,
    global_tasks: f64,
) -> Result<Partial> {
    let kind = shard.kind();
    let c = algorithm.meta_gradient(shard, batch, global_tasks)?;
    let flat: Vec<Tensor> = c
        .grads
        .iter()
        .map(|g| g.f_detach()?.f_reshape([-1]))
        .collect::<std::result::Result<_, _>>()?;
    let q_sum = c.query.loss.f_detach()?.f_sum(kind)?.f_reshape([1])?;
    let acc_sum = match &c.query.accuracy {
        Some(a) => a.f_detach()?.f_sum(kind)?.f_reshape([1])?,
        None => Tensor::f_zeros([1], (kind, shard.device))?,
    };
    let per_task = c.query.loss.f_detach()?.f_to_kind(kind)?;
    let running = match &shard.bn {
        BnMode::Track(tracker) => tracker.rows()?,
        _ => None,
    };
    let clips = shard.clips.rows(batch.len() as i64, (kind, shard.device))?;
    Ok(Partial {
        grad: Tensor::f_cat(&flat, 0)?,
        sums: [q_sum, acc_sum],
        per_task: vec![per_task],
        running,
        clips: vec![clips],
    })
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_into_chunks() {
        assert_eq!(split(3..10, 0), vec![3..10]);
        assert_eq!(split(3..10, 3), vec![3..6, 6..9, 9..10]);
        assert_eq!(split(0..4, 4), vec![0..4]);
        assert_eq!(split(0..4, 9), vec![0..4]);
        assert_eq!(split(2..6, 1), vec![2..3, 3..4, 4..5, 5..6]);
        assert_eq!(split(5..5, 2), vec![5..5]);
    }
}
