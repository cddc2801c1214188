//! What every algorithm shares: the [`Algorithm`] trait, a worker's [`Shard`] of the model and
//! tasks, the learned hyperparameters, and [`adapt`], the one support-step loop. The algorithm
//! files build on it; `mod.rs` builds them. This module names no algorithm.

use std::fmt;

use metaloop_runtime::nn::{Module, Scope};
use metaloop_runtime::optim::Optimizer;
use metaloop_runtime::StepOptions;
use metaloop_runtime::{InnerLoop, Layout, Params};
use tch::{Device, Kind, Tensor};

use crate::config::{AlgorithmConfig, EvalBatchNorm, Memory};
use crate::data::MetaBatch;
use crate::loss::{Loss, TaskLosses};
use crate::{Error, Result};

/// A learned inner hyperparameter: a requires-grad leaf that the inner optimizer reads as the
/// hyperparameter `name`.
#[derive(Debug)]
pub struct Learned {
    /// The optimizer's hyperparameter ("lr", "momentum").
    pub name: String,
    pub tensor: Tensor,
    /// True when the tensor holds one row per inner step (`[steps, ...]`): step `s` reads row
    /// `min(s, steps - 1)`. False: the tensor holds for every step.
    pub per_step: bool,
}

impl Learned {
    /// A leaf of `shape` filled with `value`, requiring grad.
    pub fn filled(
        name: &str,
        shape: &[i64],
        value: f64,
        opts: Opts,
        per_step: bool,
    ) -> Result<Learned> {
        Ok(Learned {
            name: name.into(),
            tensor: Tensor::f_full(shape, value, opts)?.set_requires_grad(true),
            per_step,
        })
    }

    /// A second handle on the same leaf (gradients reach the original).
    pub fn shallow_clone(&self) -> Learned {
        Learned {
            name: self.name.clone(),
            tensor: self.tensor.shallow_clone(),
            per_step: self.per_step,
        }
    }
}

/// What a chunk of tasks contributes: the gradients of the meta-objective (θ0 first, then each
/// learned hyperparameter in order; already divided by the global meta-batch size), and the
/// per-task query losses `[T]` and accuracies.
pub struct Contribution {
    pub grads: Vec<Tensor>,
    pub query: TaskLosses,
}

/// A meta-learning algorithm.
pub trait Algorithm: Send + Sync + fmt::Debug {
    /// The learned inner hyperparameters, in meta-vector order. The default: a learning rate
    /// and/or a momentum per parameter tensor when `learn_lr` / `learn_momentum` ask for them.
    fn learned(&self, a: &AlgorithmConfig, layout: &Layout, opts: Opts) -> Result<Vec<Learned>> {
        per_tensor_hparams(a, layout, opts)
    }

    /// Parameters (by name) the inner loop never updates.
    fn frozen(&self, _layout: &Layout) -> Vec<String> {
        Vec::new()
    }

    /// The contribution of `batch`'s tasks to the meta-gradient; `global_tasks` is the size of
    /// the meta-batch over all ranks (every term is divided by it). Most algorithms answer with
    /// second-order MAML through their learned hyperparameters and frozen parameters
    /// (`maml::second_order_or_recompute`: full tracking or recompute-and-adjoint).
    fn meta_gradient(&self, shard: &Shard, batch: &MetaBatch, global_tasks: f64) -> MetaGrad;
}

/// The tensor options of learned hyperparameters: θ0's dtype and device.
pub type Opts = (Kind, Device);

/// What [`Algorithm::meta_gradient`] returns.
pub type MetaGrad = Result<Contribution>;

/// `learn_lr` / `learn_momentum`: one value per parameter tensor, as in the toy example of
/// higher.
pub fn per_tensor_hparams(
    a: &AlgorithmConfig,
    layout: &Layout,
    opts: Opts,
) -> Result<Vec<Learned>> {
    let groups = layout.group_sizes().len() as i64;
    let mut out = Vec::new();
    if a.learn_lr {
        out.push(Learned::filled("lr", &[groups], a.inner_lr, opts, false)?);
    }
    if a.learn_momentum {
        out.push(Learned::filled(
            "momentum",
            &[groups],
            a.inner_momentum,
            opts,
            false,
        )?);
    }
    Ok(out)
}

/// What one task-parallel worker needs to compute the meta-gradient of a chunk of the rank's
/// tasks: the settings, model and loss borrowed, θ0 and the learned hyperparameters as shallow
/// clones (the same leaves, so every worker's gradients reach them).
pub struct Shard<'a> {
    pub(crate) algorithm: &'a AlgorithmConfig,
    pub(crate) iterations: u64,
    pub(crate) model: &'a dyn Module,
    pub(crate) loss: &'a dyn Loss,
    pub(crate) kind: Kind,
    pub(crate) device: Device,
    pub(crate) theta: Params,
    pub(crate) learned: Vec<Learned>,
    pub(crate) frozen: &'a [String],
    pub(crate) iteration: u64,
    pub(crate) fused: bool,
    /// One seed per task of the batch, for random layers (Dropout, DropBlock): the same masks
    /// at every inner step and at the query, so a recomputed step sees the masks it saw.
    pub(crate) seeds: Vec<u64>,
    /// How BatchNorm treats running statistics (`eval.batchnorm = "running"`).
    pub(crate) bn: BnMode,
    /// The inner clips of this shard's tasks (engine::schedule::ClipLog).
    pub(crate) clips: crate::schedule::ClipLog,
}

/// What the forwards of a [`Shard`] do with BatchNorm running statistics.
#[derive(Debug)]
pub enum BnMode {
    /// None are kept: every BatchNorm normalises with the batch's statistics.
    Batch,
    /// Training with `eval.batchnorm = "running"`: batch statistics, and the support forwards
    /// blend them into the tasks' running statistics (engine::running).
    Track(crate::running::Tracker),
    /// Evaluation with `eval.batchnorm = "running"`: every forward normalises with these (in
    /// name order), in eval mode (random layers off).
    Running(crate::running::Running),
}

impl<'a> Shard<'a> {
    /// The algorithm's settings (inner steps, lr, momentum, multi-step loss, memory).
    pub fn config(&self) -> &AlgorithmConfig {
        self.algorithm
    }

    pub fn model(&self) -> &dyn Module {
        self.model
    }

    /// θ0 (a requires-grad leaf `[P]`).
    pub fn theta(&self) -> &Params {
        &self.theta
    }

    /// The learned hyperparameters, in meta-vector order.
    pub fn learned(&self) -> &[Learned] {
        &self.learned
    }

    /// The dtype of parameters and losses.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The outer iteration being computed, and the run's total.
    pub fn progress(&self) -> (u64, u64) {
        (self.iteration, self.iterations)
    }

    /// True for second-order meta-gradients by recompute-and-adjoint.
    pub fn recompute(&self) -> bool {
        self.algorithm.memory == Memory::Recompute
    }

    /// The loss of `params` (`[T, P]`) on inputs `x` against `y`, at inner step `step` (see
    /// [`Shard::forward`]).
    pub fn losses(
        &self,
        params: &Params,
        x: &Tensor,
        y: &Tensor,
        step: Option<usize>,
    ) -> metaloop_runtime::Result<TaskLosses> {
        Ok(self.loss.task_losses(&self.forward(params, x, step)?, y)?)
    }

    /// The model's outputs on the query (`[T, N, out]`) at meta-test, at inner step `step`:
    /// BatchNorm with the query's own statistics (`eval.batchnorm = "transductive"`, as in
    /// training) or with the support set's (`"support_only"`, random layers off).
    pub fn test_query_outputs(
        &self,
        params: &Params,
        batch: &MetaBatch,
        batchnorm: EvalBatchNorm,
        step: Option<usize>,
    ) -> Result<Tensor> {
        Ok(match batchnorm {
            // "running": the shard's forward normalises with the kept statistics.
            EvalBatchNorm::Transductive | EvalBatchNorm::Running => {
                self.forward(params, &batch.query_x, step)?
            }
            EvalBatchNorm::SupportOnly => self.model.forward_query_with_support_stats_at(
                params,
                &batch.support_x,
                &batch.query_x,
                step,
            )?,
        })
    }

    /// The model's output for `params` (`[T, P]`) on `x`, in training mode with the tasks' seeds,
    /// at inner step `step` (0-based): per-step layers (`model.per_step_batchnorm`) read that
    /// step's row, the query after step s reads row s, and `None` reads the last row.
    /// With running statistics to evaluate with ([`BnMode::Running`]) it runs in eval mode with
    /// them instead.
    pub fn forward(
        &self,
        params: &Params,
        x: &Tensor,
        step: Option<usize>,
    ) -> metaloop_runtime::Result<Tensor> {
        if let BnMode::Running(running) = &self.bn {
            let tasks = params.tasks().unwrap_or(1);
            let mut state = crate::running::per_task(running, tasks)?;
            let mut scope = Scope::new(params, false, Some(&mut state)).with_step(step);
            return self.model.forward_scoped(&mut scope, x);
        }
        let mut scope = Scope::new(params, true, None)
            .with_seeds(&self.seeds)
            .with_step(step);
        self.model.forward_scoped(&mut scope, x)
    }

    /// The support losses of `batch` at inner step `step` ([`Shard::losses`]); while training
    /// with running statistics ([`BnMode::Track`]) the forward also blends its batch statistics
    /// into the tasks' running statistics. A recomputation of a step calls [`Shard::losses`].
    pub fn support_losses(
        &self,
        params: &Params,
        batch: &MetaBatch,
        step: usize,
    ) -> metaloop_runtime::Result<TaskLosses> {
        let BnMode::Track(tracker) = &self.bn else {
            return self.losses(params, &batch.support_x, &batch.support_y, Some(step));
        };
        let out = tracker.with_state(params.tasks().unwrap_or(1), |state| {
            let mut scope = Scope::new(params, true, Some(state))
                .with_seeds(&self.seeds)
                .with_step(Some(step));
            self.model.forward_scoped(&mut scope, &batch.support_x)
        })?;
        Ok(self.loss.task_losses(&out, &batch.support_y)?)
    }

    /// The inner optimizer: `algorithm.inner_optimizer` with its lr, momentum and options.
    pub fn inner_optimizer(&self) -> Box<dyn Optimizer> {
        crate::outer_options::build_inner(self.algorithm, self.fused)
    }

    /// An inner loop over `tasks` tasks from θ0 (second-order when `track`), with the learned
    /// hyperparameters that hold for every step already in force.
    pub fn inner_loop(&self, tasks: i64, track: bool) -> Result<InnerLoop<'a>> {
        let mut builder = InnerLoop::with_boxed(self.model, &self.theta, self.inner_optimizer())
            .copy_initial_weights(false)
            .track_higher_grads(track)
            .tasks(tasks)
            .freeze(self.frozen);
        for h in self.learned.iter().filter(|h| !h.per_step) {
            builder = builder.override_hparam(&h.name, &h.tensor);
        }
        Ok(builder.build()?)
    }

    /// The options of inner step `s`: the per-step learned hyperparameters' row for it, and the
    /// clipping of each task's gradient (`algorithm.inner_clip_grad_norm`), counted in `clips`.
    fn step_options(&self, s: usize) -> Result<StepOptions<'_>> {
        let mut options = StepOptions::new();
        for h in self.learned.iter().filter(|h| h.per_step) {
            let rows = h.tensor.size()[0] as usize;
            let row = h.tensor.f_select(0, s.min(rows - 1) as i64)?;
            options = options.override_hparam(&h.name, &row);
        }
        let max = self.algorithm.inner_clip_grad_norm;
        if max > 0.0 {
            options = options.try_grad_callback(move |g| {
                let (clipped, norms) = crate::schedule::clip_rows(g, max, s)?;
                self.clips.record(&norms)?;
                Ok(clipped)
            });
        }
        Ok(options)
    }

    /// Zeros shaped like each learned hyperparameter: their gradient for algorithms that have
    /// none.
    pub fn zero_hypergradients(&self) -> Result<Vec<Tensor>> {
        Ok(self
            .learned
            .iter()
            .map(|h| h.tensor.f_zeros_like())
            .collect::<std::result::Result<_, _>>()?)
    }
}

/// The support steps every algorithm and evaluation share: `steps` inner steps (second-order
/// when `track`) on the support loss of `batch`'s tasks, plus λ/2 ‖φ − θ0‖² when the config
/// names a proximal regulariser (iMAML; θ0 as a constant). `after(s, inner)` runs after step `s`
/// (0-based), e.g. for MAML++'s multi-step loss.
pub fn adapt<'a>(
    shard: &Shard<'a>,
    batch: &MetaBatch,
    steps: usize,
    track: bool,
    mut after: impl FnMut(usize, &InnerLoop<'a>) -> Result<()>,
) -> Result<InnerLoop<'a>> {
    let _s = tracing::info_span!("inner_loop", steps).entered();
    let mut inner = shard.inner_loop(batch.len() as i64, track)?;
    let proximal = match shard.algorithm.proximal() {
        Some(lambda) => Some((lambda, shard.theta.flat().f_detach()?)),
        None => None,
    };
    for s in 0..steps {
        let support = shard.support_losses(inner.params(), batch, s)?;
        let mut objective = support.total(shard.kind)?;
        if let Some((lambda, theta0)) = &proximal {
            let distance = inner.params().flat().f_sub(theta0)?.f_square()?;
            let term = distance.f_sum(shard.kind)?.f_mul_scalar(lambda / 2.0)?;
            objective = objective.f_add(&term)?;
        }
        inner.step_with(&objective, shard.step_options(s)?)?;
        after(s, &inner)?;
    }
    Ok(inner)
}

/// The query losses at the adapted weights of `inner`, after inner step `step` (0-based; see
/// [`Shard::forward`]).
pub fn query_losses(
    shard: &Shard<'_>,
    inner: &InnerLoop<'_>,
    batch: &MetaBatch,
    step: usize,
) -> Result<TaskLosses> {
    Ok(shard.loss.task_losses(
        &shard.forward(inner.params(), &batch.query_x, Some(step))?,
        &batch.query_y,
    )?)
}

/// The gradients of `objective` w.r.t. each of `inputs` (zeros where it does not depend on one).
pub fn gradients(objective: &Tensor, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let g = Tensor::f_run_backward(&[objective], &refs, false, false)?;
    g.into_iter()
        .zip(inputs)
        .map(|(g, x)| {
            if g.defined() {
                Ok(g)
            } else {
                x.f_zeros_like().map_err(Error::from)
            }
        })
        .collect()
}
