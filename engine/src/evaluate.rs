//! Meta-testing and validation: the query loss (and accuracy) of held-out tasks before and after
//! adapting on their support sets, with 95% confidence intervals over tasks. Tasks have the
//! evaluation protocol's ways and shots, and the model its head (engine::protocol).
//!
//! The support steps are the algorithms' own [`crate::algorithms::adapt`] (first order: nothing
//! is differentiated), with the learned inner hyperparameters in force. Each rank evaluates its
//! slice of the tasks; one all-reduce gathers the per-task table. Nothing here prints.

use metaloop_runtime::comm::Communicator;
use tch::{Device, Kind, Tensor};

use crate::algorithms::{adapt, BnMode, Learned, Shard};
use crate::config::TrainConfig;
use crate::data::{MetaBatch, Split};
use crate::host::to_f64s;
use crate::loss::TaskLosses;
use crate::meta_params::MetaParams;
use crate::net::Net;
use crate::protocol::{EvalProtocol, EvalWeights};
use crate::report::{EvalReport, MeanCi};
use crate::setup::rank_slice;
use crate::Result;

/// What a meta-test borrows from the Trainer: the config, the communicator, the model, the
/// meta-parameters and the evaluation protocol.
pub struct MetaTest<'a> {
    pub(crate) cfg: &'a TrainConfig,
    pub(crate) comm: &'a dyn Communicator,
    pub(crate) net: &'a Net,
    pub(crate) meta: &'a MetaParams,
    pub(crate) protocol: &'a EvalProtocol,
    /// Outer iterations completed (random layers' masks depend on it).
    pub(crate) iteration: u64,
}

impl MetaTest<'_> {
    /// Meta-tests (or validates) on `tasks` tasks of `split`: query loss (and accuracy) before and
    /// after `eval.inner_steps` inner steps on each task's support set. Collective.
    pub fn run(&self, split: Split, tasks: usize) -> Result<EvalReport> {
        let _s = tracing::info_span!("evaluate", split = split.name(), tasks).entered();
        let mine = rank_slice(tasks, self.comm.rank(), self.comm.size());
        // Per task: loss before, loss after, accuracy before, accuracy after.
        let mut table = Tensor::f_zeros([tasks as i64, 4], (Kind::Double, Device::Cpu))?;
        // As many tasks at once as training runs (its memory plan's chunk), at most 32.
        let chunk = match self.cfg.run.task_chunk {
            0 => self.cfg.outer.meta_batch,
            c => c.min(self.cfg.outer.meta_batch),
        }
        .clamp(1, 32);
        let weights = self
            .protocol
            .weights(&self.meta.theta, &self.meta.learned)?;
        let mut start = mine.start;
        while start < mine.end {
            let end = (start + chunk).min(mine.end);
            let batch = self.net.prepare(self.protocol.source.meta_batch(
                self.cfg.run.seed,
                0,
                start..end,
                split,
            )?)?;
            let shard = self.shard(&batch, weights.as_ref());
            let rows = self.evaluate_batch(&shard, &batch)?;
            tch::no_grad(|| {
                table
                    .f_narrow(0, start as i64, batch.len() as i64)?
                    .f_copy_(&rows)
            })?;
            start = end;
        }
        self.comm.all_reduce_sum(&mut table)?;
        self.report(split, tasks, &table)
    }

    /// Rows `[T, 4]` (f64, CPU) of loss before, loss after, accuracy before, accuracy after.
    fn evaluate_batch(&self, shard: &Shard<'_>, batch: &MetaBatch) -> Result<Tensor> {
        let t = batch.len() as i64;
        let (before, after) = self.adapted_query_outputs(shard, batch)?;
        let score = |outputs: &Tensor| -> Result<TaskLosses> {
            Ok(shard.loss.task_losses(outputs, &batch.query_y)?)
        };
        let (before, after) = (score(&before)?, score(&after)?);
        let zeros = Tensor::f_zeros([t], (self.net.kind, self.net.device))?;
        let cols = [
            before.loss,
            after.loss,
            before.accuracy.unwrap_or_else(|| zeros.shallow_clone()),
            after.accuracy.unwrap_or(zeros),
        ];
        let cols: Vec<Tensor> = cols
            .iter()
            .map(|c| {
                c.f_detach()?
                    .f_to_kind(Kind::Double)?
                    .f_to_device(Device::Cpu)
            })
            .collect::<std::result::Result<_, _>>()?;
        Ok(Tensor::f_stack(&cols, 1)?)
    }

    /// The query outputs `[T, N, out]` of `batch` at the shard's θ0 and after `eval.inner_steps`
    /// support steps ([`adapt`], nothing differentiated), BatchNorm as `eval.batchnorm` says:
    /// what the meta-test scores and the predictions (engine::predictions) show.
    pub(crate) fn adapted_query_outputs(
        &self,
        shard: &Shard<'_>,
        batch: &MetaBatch,
    ) -> Result<(Tensor, Tensor)> {
        let theta = shard.theta().expand_tasks(batch.len() as i64)?;
        let bn = self.cfg.eval.batchnorm;
        // Per-step layers: θ0 is read at step 0's row, the adapted weights after the last step.
        let before = tch::no_grad(|| shard.test_query_outputs(&theta, batch, bn, Some(0)))?;
        let steps = self.cfg.eval_inner_steps();
        let inner = adapt(shard, batch, steps, false, |_, _| Ok(()))?;
        let last = Some(steps.saturating_sub(1));
        let after = tch::no_grad(|| shard.test_query_outputs(inner.params(), batch, bn, last))?;
        Ok((before, after))
    }

    /// The report of an all-reduced table of `tasks` rows.
    fn report(&self, split: Split, tasks: usize, table: &Tensor) -> Result<EvalReport> {
        let cls = self.net.classification();
        let column = |i: i64| -> Result<Vec<f64>> { to_f64s(&table.f_select(1, i)?) };
        let (l0, l1) = (MeanCi::of(&column(0)?), MeanCi::of(&column(1)?));
        let (a0, a1) = if cls {
            (Some(MeanCi::of(&column(2)?)), Some(MeanCi::of(&column(3)?)))
        } else {
            (None, None)
        };
        Ok(EvalReport {
            split: split.name().into(),
            tasks,
            inner_steps: self.cfg.eval_inner_steps(),
            ways: self.protocol.ways,
            shots: self.protocol.shots,
            metric: self.net.loss.metric().into(),
            loss_before: l0,
            loss_after: l1,
            accuracy_before: a0,
            accuracy_after: a1,
        })
    }

    /// A worker's view for evaluating `batch`: the trainer's own, or the evaluation model's with
    /// `weights`.
    pub(crate) fn shard<'b>(
        &'b self,
        batch: &MetaBatch,
        weights: Option<&EvalWeights<'b>>,
    ) -> Shard<'b> {
        let mut shard = self.net.shard(self.cfg, self.meta, self.iteration, batch);
        if !self.meta.running.is_empty() {
            // `eval.batchnorm = "running"`: PyTorch's eval mode with the kept statistics.
            shard.bn = BnMode::Running(crate::running::shallow(&self.meta.running));
        }
        match weights {
            Some(w) => Shard {
                model: w.model,
                theta: w.theta.clone(),
                learned: w.learned.iter().map(Learned::shallow_clone).collect(),
                ..shard
            },
            None => shard,
        }
    }
}
