//! The meta-training loop: one outer iteration at a time, on this rank's slice of the meta-batch.
//!
//! Every algorithm reduces to a meta-gradient over one flat vector of meta-parameters (the initial
//! weights θ0, then every learned inner hyperparameter), which is all-reduced once per iteration
//! together with the loss statistics, then fed to the outer optimizer (a pure update from
//! `runtime::optim`, identical on every rank):
//!
//! - `maml`: second-order MAML through the task-batched `InnerLoop` (SGD, optional momentum).
//! - `fomaml`: first-order MAML: the query gradient at the adapted weights.
//! - `metasgd`: MAML with one learned learning rate per element (Li et al. 2017).
//! - `anil`: only the head adapts in the inner loop (Raghu et al. 2020).
//! - `reptile`: the meta-gradient is θ0 − φ (Nichol et al. 2018); with outer SGD of lr ε this is
//!   Reptile's θ0 ← θ0 + ε (φ − θ0).
//! - `pretrain`: the baseline: θ0 trained jointly on all tasks' data, no inner loop.
//! - `learn_lr` / `learn_momentum`: the inner lr / momentum (one per parameter tensor) are
//!   meta-learned tensors, as in the seed's toy example; `multi_step_loss`: MAML++'s weighted
//!   query losses after every inner step.
//!
//! Tasks are drawn by the data layer as a pure function of (seed, iteration, task index), and each
//! rank takes a contiguous slice of the global meta-batch; per-task contributions are divided by
//! the global meta-batch size, so the all-reduced sum is the same mean for any number of ranks.
//! This module never prints and never touches files.

use crate::config::TrainConfig;
use crate::data::{
    self, FewShot, ImageSpec, MetaBatch, PrefetchConfig, Prefetcher, Sinusoid, Split, TaskSource,
};
use crate::workers::Workers;
use crate::{Error, Result};
use metaloop_runtime::adjoint::MetaGradient;
use metaloop_runtime::comm::Communicator;
use metaloop_runtime::nn::{self, Module};
use metaloop_runtime::optim::{Adam, HParams, OptState, Optimizer, Sgd};
use metaloop_runtime::{InnerLoop, Params};
use serde::Serialize;
use std::cell::RefCell;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Mean and 95% confidence half-width (1.96 standard errors) over tasks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanCi {
    pub mean: f64,
    pub ci95: f64,
}

impl MeanCi {
    /// Over the values of `v` (at least one).
    pub fn of(v: &[f64]) -> MeanCi {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = if v.len() > 1 {
            v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        MeanCi {
            mean,
            ci95: 1.96 * (var / n).sqrt(),
        }
    }
}

/// What one outer iteration measured (over all ranks).
#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    pub iteration: u64,
    /// The mean over tasks of the query loss after adaptation.
    pub meta_loss: f64,
    /// The mean query accuracy after adaptation (classification).
    pub query_accuracy: Option<f64>,
    /// The L2 norm of the all-reduced meta-gradient.
    pub grad_norm: f64,
    /// Tasks in the global meta-batch.
    pub tasks: usize,
    /// Wall time of the iteration on this rank.
    pub seconds: f64,
    /// Learned inner hyperparameters: their mean value.
    pub hparams: Vec<(String, f64)>,
    /// True when a NaN or Inf in the meta-gradient or an inner loop made every rank skip this
    /// outer step (the meta-parameters did not change).
    pub skipped: bool,
    /// The global indices of the tasks whose loss was not finite (when skipped).
    pub nonfinite_tasks: Vec<usize>,
}

/// Meta-test or validation: before and after adaptation, over `tasks` tasks.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub split: String,
    pub tasks: usize,
    pub inner_steps: usize,
    /// "mse" (regression) or "accuracy" (classification).
    pub metric: String,
    pub loss_before: MeanCi,
    pub loss_after: MeanCi,
    pub accuracy_before: Option<MeanCi>,
    pub accuracy_after: Option<MeanCi>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Algorithm {
    Maml { first_order: bool },
    Anil,
    Reptile,
    Pretrain,
}

/// Meta-trains one model on one rank.
pub struct Trainer {
    cfg: TrainConfig,
    comm: Box<dyn Communicator>,
    model: Box<dyn Module>,
    source: Arc<dyn TaskSource>,
    kind: Kind,
    device: Device,
    algorithm: Algorithm,
    /// θ0: a requires_grad leaf `[P]`.
    theta: Params,
    /// Learned inner hyperparameters, requires_grad leaves, in meta-vector order.
    learned: Vec<(String, Tensor)>,
    /// Names the inner loop leaves alone (ANIL: everything but the head).
    frozen: Vec<String>,
    outer: Box<dyn Optimizer>,
    outer_hparams: HParams,
    outer_state: OptState,
    iteration: u64,
    prefetcher: Option<Prefetcher>,
    /// Outer steps skipped in a row for non-finite values.
    skips_in_a_row: u32,
    /// How this rank's tasks spread over threads (`run.workers`).
    workers: Workers,
}

/// What one task-parallel worker needs to compute the meta-gradient of a chunk of the rank's
/// tasks: the configuration and model borrowed, θ0 and the learned hyperparameters as shallow
/// clones (the same leaves, so every worker's gradients reach them).
struct Shard<'a> {
    cfg: &'a TrainConfig,
    model: &'a dyn Module,
    kind: Kind,
    device: Device,
    algorithm: Algorithm,
    theta: Params,
    learned: Vec<(String, Tensor)>,
    frozen: &'a [String],
    iteration: u64,
}

impl Shard<'_> {
    fn classification(&self) -> bool {
        self.cfg.is_classification()
    }

    fn inner_loop<'a>(&'a self, tasks: i64, track: bool) -> Result<InnerLoop<'a>> {
        let a = &self.cfg.algorithm;
        let sgd = Sgd::new(a.inner_lr).momentum(a.inner_momentum);
        let mut builder = InnerLoop::new(self.model, &self.theta, sgd)
            .copy_initial_weights(false)
            .track_higher_grads(track)
            .tasks(tasks)
            .freeze(self.frozen);
        for (name, t) in &self.learned {
            builder = builder.override_hparam(name, t);
        }
        Ok(builder.build()?)
    }

    /// MAML++'s per-step loss weights at the current iteration: uniform at first, annealed
    /// towards the last step over the first tenth of training (Antoniou et al. 2019).
    fn multi_step_weights(&self, steps: usize) -> Vec<f64> {
        let n = steps as f64;
        let anneal = (self.cfg.outer.iterations as f64 / 10.0).max(1.0);
        let decay = (self.iteration as f64 / anneal).min(1.0);
        let min = 0.03 / n;
        let other = (1.0 / n) * (1.0 - decay) + min * decay;
        let mut w = vec![other; steps];
        w[steps - 1] = 1.0 - other * (n - 1.0);
        w
    }

    /// This rank's meta-gradient (summed over its tasks, divided by the global meta-batch size)
    /// [Σ query loss, Σ query accuracy] over its tasks, and each task's query loss `[T]`.
    fn local_meta_gradient(
        &self,
        batch: &MetaBatch,
        global_tasks: f64,
    ) -> Result<(Tensor, [Tensor; 2], Tensor)> {
        let t = batch.len() as i64;
        let cls = self.classification();
        let steps = self.cfg.algorithm.inner_steps;
        let mut inputs = vec![self.theta.flat().shallow_clone()];
        inputs.extend(self.learned.iter().map(|(_, h)| h.shallow_clone()));
        let zeros_like = |x: &Tensor| x.f_zeros_like();
        let (grads, q_loss, q_acc): (Vec<Tensor>, Tensor, Option<Tensor>) = match self.algorithm {
            Algorithm::Maml { .. } | Algorithm::Anil if self.recompute() => {
                let (g, q, acc) = self.recompute_meta_gradient(batch, global_tasks)?;
                (g, q, acc)
            }
            // ANIL is second-order MAML whose inner loop leaves the body frozen (`self.frozen`).
            Algorithm::Maml { .. } | Algorithm::Anil => {
                let first_order = self.algorithm == (Algorithm::Maml { first_order: true });
                let mut inner = {
                    let _s = tracing::info_span!("inner_loop", steps).entered();
                    let mut inner = self.inner_loop(t, !first_order)?;
                    let weights = if self.cfg.algorithm.multi_step_loss {
                        self.multi_step_weights(steps)
                    } else {
                        Vec::new()
                    };
                    let mut multi: Option<Tensor> = None;
                    for s in 0..steps {
                        let (l, _) =
                            task_losses(&inner.forward(&batch.support_x)?, &batch.support_y, cls)?;
                        inner.step(&l.f_sum(self.kind)?)?;
                        if !weights.is_empty() && s + 1 < steps {
                            let (q, _) =
                                task_losses(&inner.forward(&batch.query_x)?, &batch.query_y, cls)?;
                            let term = q.f_sum(self.kind)?.f_mul_scalar(weights[s])?;
                            multi = Some(match multi {
                                Some(m) => m.f_add(&term)?,
                                None => term,
                            });
                        }
                    }
                    (inner, multi, weights)
                };
                let (q, acc) = task_losses(&inner.0.forward(&batch.query_x)?, &batch.query_y, cls)?;
                let _s = tracing::info_span!("meta_gradient").entered();
                let mut objective = q.f_sum(self.kind)?;
                if let Some(w_last) = inner.2.last() {
                    objective = objective.f_mul_scalar(*w_last)?;
                }
                if let Some(m) = inner.1.take() {
                    objective = objective.f_add(&m)?;
                }
                let objective = objective.f_div_scalar(global_tasks)?;
                let grads = if first_order {
                    // The query gradient at the adapted weights [T, P], summed over tasks.
                    let adapted = inner.0.params().flat().shallow_clone();
                    let g =
                        Tensor::f_run_backward(&[&objective], &[&adapted], false, false)?.remove(0);
                    let mut out = vec![g.f_sum_dim_intlist(&[0i64][..], false, self.kind)?];
                    for h in &inputs[1..] {
                        out.push(zeros_like(h)?);
                    }
                    out
                } else {
                    let refs: Vec<&Tensor> = inputs.iter().collect();
                    let g = Tensor::f_run_backward(&[&objective], &refs, false, false)?;
                    g.into_iter()
                        .zip(&inputs)
                        .map(|(g, x)| {
                            if g.defined() {
                                Ok(g)
                            } else {
                                zeros_like(x).map_err(Error::from)
                            }
                        })
                        .collect::<Result<Vec<_>>>()?
                };
                (grads, q, acc)
            }
            Algorithm::Reptile => {
                let _s = tracing::info_span!("inner_loop", steps).entered();
                let mut inner = self.inner_loop(t, false)?;
                for _ in 0..steps {
                    let (l, _) =
                        task_losses(&inner.forward(&batch.support_x)?, &batch.support_y, cls)?;
                    inner.step(&l.f_sum(self.kind)?)?;
                }
                let (q, acc) = tch::no_grad(|| -> Result<_> {
                    Ok(task_losses(
                        &inner.forward(&batch.query_x)?,
                        &batch.query_y,
                        cls,
                    )?)
                })?;
                // Σ_t (θ0 − φ_t) / B.
                let phi = inner.params().flat().f_detach()?;
                let g = self
                    .theta
                    .flat()
                    .f_detach()?
                    .f_unsqueeze(0)?
                    .f_sub(&phi)?
                    .f_sum_dim_intlist(&[0i64][..], false, self.kind)?
                    .f_div_scalar(global_tasks)?;
                let mut out = vec![g];
                for h in &inputs[1..] {
                    out.push(zeros_like(h)?);
                }
                (out, q, acc)
            }
            Algorithm::Pretrain => {
                let theta = self.theta.expand_tasks(t)?;
                let (ls, _) = task_losses(
                    &self.model.forward(&theta, &batch.support_x, true)?,
                    &batch.support_y,
                    cls,
                )?;
                let (q, acc) = task_losses(
                    &self.model.forward(&theta, &batch.query_x, true)?,
                    &batch.query_y,
                    cls,
                )?;
                let objective = ls
                    .f_add(&q)?
                    .f_sum(self.kind)?
                    .f_div_scalar(2.0 * global_tasks)?;
                let g = Tensor::f_run_backward(&[&objective], &[self.theta.flat()], false, false)?
                    .remove(0);
                (vec![g], q, acc)
            }
        };
        let flat: Vec<Tensor> = grads
            .iter()
            .map(|g| g.f_detach()?.f_reshape([-1]))
            .collect::<std::result::Result<_, _>>()?;
        let q_sum = q_loss.f_detach()?.f_sum(self.kind)?.f_reshape([1])?;
        let acc_sum = match q_acc {
            Some(a) => a.f_detach()?.f_sum(self.kind)?.f_reshape([1])?,
            None => Tensor::f_zeros([1], (self.kind, self.device))?,
        };
        let per_task = q_loss.f_detach()?.f_to_kind(self.kind)?;
        Ok((Tensor::f_cat(&flat, 0)?, [q_sum, acc_sum], per_task))
    }

    /// Second-order meta-gradients by recompute-and-adjoint (`algorithm.memory = "recompute"`).
    fn recompute(&self) -> bool {
        self.cfg.algorithm.memory == "recompute"
    }

    /// The meta-gradient of MAML / Meta-SGD / ANIL with only the trajectory stored
    /// (runtime::adjoint): the same values as full tracking, memory independent of steps ×
    /// activations. Returns the gradients (θ0, then each learned hyperparameter), the per-task
    /// query losses and accuracies.
    fn recompute_meta_gradient(
        &self,
        batch: &MetaBatch,
        global_tasks: f64,
    ) -> Result<(Vec<Tensor>, Tensor, Option<Tensor>)> {
        let _s = tracing::info_span!(
            "inner_loop",
            steps = self.cfg.algorithm.inner_steps,
            memory = "recompute"
        )
        .entered();
        let a = &self.cfg.algorithm;
        let cls = self.classification();
        let mut mg = MetaGradient::new(Sgd::new(a.inner_lr).momentum(a.inner_momentum))
            .tasks(batch.len() as i64)
            .freeze(self.frozen);
        for (name, t) in &self.learned {
            mg = mg.override_hparam(name, t);
        }
        let query: RefCell<Option<(Tensor, Option<Tensor>)>> = RefCell::new(None);
        let grads = mg.compute(
            &self.theta,
            a.inner_steps,
            |theta, _| {
                let (l, _) = task_losses(
                    &self.model.forward(theta, &batch.support_x, true)?,
                    &batch.support_y,
                    cls,
                )?;
                Ok(l.f_sum(self.kind)?)
            },
            |theta| {
                let (q, acc) = task_losses(
                    &self.model.forward(theta, &batch.query_x, true)?,
                    &batch.query_y,
                    cls,
                )?;
                let objective = q.f_sum(self.kind)?.f_div_scalar(global_tasks)?;
                *query.borrow_mut() = Some((q.f_detach()?, acc.map(|a| a.f_detach()).transpose()?));
                Ok(objective)
            },
        )?;
        let (q, acc) = query
            .into_inner()
            .ok_or_else(|| Error::State("the adjoint pass evaluated no meta-loss".into()))?;
        let mut out = vec![grads.theta0];
        out.extend(grads.hypergradients.into_iter().map(|(_, g)| g));
        Ok((out, q, acc))
    }
}

fn choose_device(name: &str) -> Result<Device> {
    let cuda = tch::Cuda::device_count() as usize;
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" | "auto" if cuda > 0 => {
            Ok(Device::Cuda(metaloop_runtime::comm::local_rank() % cuda))
        }
        "auto" => Ok(Device::Cpu),
        "cuda" => Err(Error::Device(
            "\"cuda\" asked for, but libtorch sees no CUDA device here; use \"cpu\" or \"auto\""
                .into(),
        )),
        other => Err(Error::Device(format!(
            "must be \"cpu\", \"cuda\" or \"auto\", got {other:?}"
        ))),
    }
}

fn cache_dir(cfg: &TrainConfig) -> Option<PathBuf> {
    data::cache::default_dir(&cfg.task.cache_dir)
}

/// The task distribution the config names (loads and caches image datasets).
pub fn task_source(cfg: &TrainConfig) -> Result<Arc<dyn TaskSource>> {
    let t = &cfg.task;
    let size = t.image_size as u32;
    let dataset = match t.kind.as_str() {
        "sinusoid" => {
            return Ok(Arc::new(Sinusoid::new(
                t.shots as usize,
                t.queries as usize,
            )?))
        }
        "omniglot" => {
            let mut c = data::omniglot::OmniglotConfig::new(&t.root);
            c.cache_dir = cache_dir(cfg);
            c.size = size;
            data::omniglot::load(&c)?
        }
        "miniimagenet" => {
            let mut c = data::miniimagenet::MiniImageNetConfig::new(&t.root);
            c.cache_dir = cache_dir(cfg);
            c.size = size;
            data::miniimagenet::load(&c)?
        }
        _ => {
            let mut c = data::folder::FolderConfig::new(&t.root, ImageSpec::rgb(size));
            c.val = t.val_root.as_ref().map(PathBuf::from);
            c.test = t.test_root.as_ref().map(PathBuf::from);
            c.cache_dir = cache_dir(cfg);
            data::folder::load(&c)?
        }
    };
    let episodes = FewShot::new(
        Arc::new(dataset),
        t.ways as usize,
        t.shots as usize,
        t.queries as usize,
    )?;
    episodes.check_whole()?;
    Ok(Arc::new(episodes))
}

/// The backbone the config names.
pub fn build_model(cfg: &TrainConfig, input_channels: i64) -> Box<dyn Module> {
    if cfg.model.backbone == "mlp" {
        let mut sizes = vec![1];
        sizes.extend(&cfg.model.hidden);
        sizes.push(1);
        Box::new(nn::mlp(&sizes))
    } else {
        Box::new(nn::conv4_sized(
            input_channels,
            cfg.task.ways,
            cfg.model.filters,
            cfg.task.image_size,
        ))
    }
}

/// The contiguous slice of `0..total` that rank `rank` of `size` takes (sizes differ by at most 1).
pub fn rank_slice(total: usize, rank: usize, size: usize) -> Range<usize> {
    (total * rank / size)..(total * (rank + 1) / size)
}

/// Per-task losses `[T]` (and accuracies for classification) of predictions `[T, N, out]`.
fn task_losses(
    pred: &Tensor,
    y: &Tensor,
    classification: bool,
) -> std::result::Result<(Tensor, Option<Tensor>), tch::TchError> {
    if !classification {
        let l = pred
            .f_sub(y)?
            .f_square()?
            .f_mean_dim(&[1i64, 2][..], false, pred.kind())?;
        return Ok((l, None));
    }
    let size = pred.size();
    let (t, n, w) = (size[0], size[1], size[2]);
    let logp = pred.f_reshape([t * n, w])?.f_log_softmax(-1, pred.kind())?;
    let nll = logp
        .f_gather(1, &y.f_reshape([t * n, 1])?, false)?
        .f_neg()?
        .f_reshape([t, n])?;
    let acc = pred
        .f_argmax(-1, false)?
        .f_eq_tensor(y)?
        .f_to_kind(pred.kind())?
        .f_mean_dim(&[1i64][..], false, pred.kind())?;
    Ok((nll.f_mean_dim(&[1i64][..], false, pred.kind())?, Some(acc)))
}

fn to_f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(
        &t.f_detach()?
            .f_to_kind(Kind::Double)?
            .f_to_device(Device::Cpu)?
            .f_reshape([-1])?,
    )?)
}

impl Trainer {
    /// Builds the model, the meta-parameters and the task source of `cfg` (validated here too).
    pub fn new(cfg: &TrainConfig, comm: Box<dyn Communicator>) -> Result<Trainer> {
        cfg.validate().map_err(Error::Config)?;
        let device = choose_device(&cfg.run.device)?;
        let kind = if cfg.run.dtype == "f64" {
            Kind::Double
        } else {
            Kind::Float
        };
        let source = task_source(cfg)?;
        let channels = source.input_shape().first().copied().unwrap_or(1);
        let model = build_model(cfg, channels);
        let theta = Params::init(model.as_ref(), cfg.run.seed, kind, device)?;
        let layout = theta.layout().clone();
        let groups = layout.group_sizes().len() as i64;
        let a = &cfg.algorithm;
        let algorithm = match a.name.as_str() {
            "fomaml" => Algorithm::Maml { first_order: true },
            "anil" => Algorithm::Anil,
            "reptile" => Algorithm::Reptile,
            "pretrain" => Algorithm::Pretrain,
            _ => Algorithm::Maml { first_order: false },
        };
        let opts = (kind, device);
        let mut learned = Vec::new();
        if a.name == "metasgd" {
            learned.push((
                "lr".to_string(),
                Tensor::f_full([layout.numel()], a.inner_lr, opts)?.set_requires_grad(true),
            ));
        } else if a.learn_lr {
            learned.push((
                "lr".to_string(),
                Tensor::f_full([groups], a.inner_lr, opts)?.set_requires_grad(true),
            ));
        }
        if a.learn_momentum {
            learned.push((
                "momentum".to_string(),
                Tensor::f_full([groups], a.inner_momentum, opts)?.set_requires_grad(true),
            ));
        }
        let frozen = if algorithm == Algorithm::Anil {
            // The head is the last module: every name that shares the last parameter's prefix.
            let names: Vec<&str> = layout.names().collect();
            let last = names.last().copied().unwrap_or("");
            let head = last.rsplit_once('.').map_or("", |(p, _)| p);
            names
                .iter()
                .filter(|n| n.rsplit_once('.').map_or("", |(p, _)| p) != head)
                .map(|n| n.to_string())
                .collect()
        } else {
            Vec::new()
        };
        let outer: Box<dyn Optimizer> = if cfg.outer.optimizer == "sgd" {
            Box::new(Sgd::new(cfg.outer.lr))
        } else {
            Box::new(Adam::new(cfg.outer.lr))
        };
        let outer_hparams = HParams::defaults(outer.as_ref());
        let workers = Workers::plan(
            cfg.run.workers,
            tch::get_num_threads().max(1) as usize,
            rank_slice(cfg.outer.meta_batch, comm.rank(), comm.size()).len(),
            theta.layout().numel(),
            device,
        );
        let mut trainer = Trainer {
            cfg: cfg.clone(),
            comm,
            model,
            source,
            kind,
            device,
            algorithm,
            theta,
            learned,
            frozen,
            outer_state: OptState::new(0, Vec::new()),
            outer,
            outer_hparams,
            iteration: 0,
            prefetcher: None,
            skips_in_a_row: 0,
            workers,
        };
        trainer.outer_state = trainer.outer.init_state(&trainer.meta_vector()?)?;
        Ok(trainer)
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Outer iterations completed.
    pub fn iteration(&self) -> u64 {
        self.iteration
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn size(&self) -> usize {
        self.comm.size()
    }

    /// The device this rank computes on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// θ0, with PyTorch state_dict names (for `Params::save`).
    pub fn model_params(&self) -> &Params {
        &self.theta
    }

    /// The learned inner hyperparameters (name, tensor).
    pub fn learned_hparams(&self) -> &[(String, Tensor)] {
        &self.learned
    }

    /// θ0 and the learned hyperparameters, detached, as one flat vector.
    fn meta_vector(&self) -> Result<Tensor> {
        let mut parts = vec![self.theta.flat().f_detach()?];
        for (_, t) in &self.learned {
            parts.push(t.f_detach()?.f_reshape([-1])?);
        }
        Ok(Tensor::f_cat(&parts, 0)?)
    }

    /// Writes a flat meta-vector back into θ0 and the learned hyperparameters.
    fn set_meta_vector(&mut self, v: &Tensor) -> Result<()> {
        let p = self.theta.flat().size()[0];
        tch::no_grad(|| -> Result<()> {
            self.theta
                .flat()
                .shallow_clone()
                .f_copy_(&v.f_narrow(0, 0, p)?)?;
            let mut offset = p;
            for (_, t) in &self.learned {
                let n = t.numel() as i64;
                t.shallow_clone()
                    .f_copy_(&v.f_narrow(0, offset, n)?.f_view(t.size().as_slice())?)?;
                offset += n;
            }
            Ok(())
        })
    }

    fn classification(&self) -> bool {
        self.cfg.is_classification()
    }

    /// A batch moved to this rank's device and dtype (labels stay integer).
    fn prepare(&self, b: MetaBatch) -> Result<MetaBatch> {
        let x = |t: &Tensor| -> Result<Tensor> {
            Ok(t.f_to_device(self.device)?.f_to_kind(self.kind)?)
        };
        let y = |t: &Tensor| -> Result<Tensor> {
            let t = t.f_to_device(self.device)?;
            Ok(if self.classification() {
                t
            } else {
                t.f_to_kind(self.kind)?
            })
        };
        Ok(MetaBatch {
            support_x: x(&b.support_x)?,
            support_y: y(&b.support_y)?,
            query_x: x(&b.query_x)?,
            query_y: y(&b.query_y)?,
            iteration: b.iteration,
            tasks: b.tasks,
        })
    }

    /// A worker's view of this trainer (see [`Shard`]).
    fn shard(&self) -> Shard<'_> {
        Shard {
            cfg: &self.cfg,
            model: self.model.as_ref(),
            kind: self.kind,
            device: self.device,
            algorithm: self.algorithm,
            theta: self.theta.clone(),
            learned: self
                .learned
                .iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect(),
            frozen: &self.frozen,
            iteration: self.iteration,
        }
    }

    /// This rank's meta-gradient (summed over its tasks, divided by the global meta-batch size)
    /// [Σ query loss, Σ query accuracy] over its tasks, and each task's query loss `[T]`: the
    /// tasks split over the task-parallel workers (engine::workers), their results summed.
    fn local_meta_gradient(
        &self,
        batch: &MetaBatch,
        global_tasks: f64,
    ) -> Result<(Tensor, [Tensor; 2], Tensor)> {
        let inputs = self
            .workers
            .chunks(batch.len())
            .iter()
            .map(|r| Ok((self.shard(), batch.slice(r.clone())?)))
            .collect::<Result<Vec<_>>>()?;
        let mut parts = self
            .workers
            .run(inputs, |(shard, b)| {
                shard.local_meta_gradient(&b, global_tasks)
            })?
            .into_iter();
        let (mut grad, [mut loss, mut acc], first) = parts
            .next()
            .ok_or_else(|| Error::State("a meta-batch without tasks".into()))?;
        let mut per_task = vec![first];
        for (g, [l, a], q) in parts {
            grad = grad.f_add(&g)?;
            loss = loss.f_add(&l)?;
            acc = acc.f_add(&a)?;
            per_task.push(q);
        }
        Ok((grad, [loss, acc], Tensor::f_cat(&per_task, 0)?))
    }

    fn next_train_batch(&mut self, range: Range<usize>) -> Result<MetaBatch> {
        if self
            .prefetcher
            .as_ref()
            .is_none_or(|p| p.next_iteration() != self.iteration)
        {
            self.prefetcher = Some(
                PrefetchConfig::new(self.cfg.run.seed, Split::Train, range)
                    .start(self.iteration)
                    .spawn(self.source.clone())?,
            );
        }
        let batch = self.prefetcher.as_mut().expect("just made").next_batch()?;
        self.prepare(batch)
    }

    /// One outer iteration: sample, adapt, meta-gradient, all-reduce, outer step.
    ///
    /// A NaN or Inf in the all-reduced meta-gradient or in any task's inner loop makes every rank
    /// skip the outer step alike (they all see the same reduced buffer); after
    /// `outer.max_nonfinite_skips` skips in a row it is an error. Every `run.consistency_every`
    /// iterations the ranks compare a checksum of their meta-parameters.
    pub fn step(&mut self) -> Result<StepMetrics> {
        let started = Instant::now();
        let global = self.cfg.outer.meta_batch;
        let range = rank_slice(global, self.rank(), self.size());
        let m = self.meta_vector()?.size()[0];
        let opts = (self.kind, self.device);
        // Flags of the tasks whose query loss is not finite, one slot per global task.
        let mut flags = Tensor::f_zeros([global as i64], opts)?;
        let (grad, stats) = if range.is_empty() {
            (
                Tensor::f_zeros([m], opts)?,
                [Tensor::f_zeros([1], opts)?, Tensor::f_zeros([1], opts)?],
            )
        } else {
            let batch = {
                let _s = tracing::info_span!("sample", iteration = self.iteration).entered();
                self.next_train_batch(range.clone())?
            };
            let (grad, stats, per_task) = self.local_meta_gradient(&batch, global as f64)?;
            let bad = per_task
                .f_isfinite()?
                .f_logical_not()?
                .f_to_kind(self.kind)?;
            flags = flags.f_index_copy(
                0,
                &Tensor::f_arange_start(
                    range.start as i64,
                    range.end as i64,
                    (Kind::Int64, self.device),
                )?,
                &bad,
            )?;
            (grad, stats)
        };
        // One all-reduce: the meta-gradient, the loss statistics and the non-finite flags together.
        let mut buffer = Tensor::f_cat(
            &[
                grad,
                stats[0].shallow_clone(),
                stats[1].shallow_clone(),
                flags,
            ],
            0,
        )?;
        self.comm.all_reduce_sum(&mut buffer)?;
        let grad = buffer.f_narrow(0, 0, m)?;
        let totals = to_f64s(&buffer.f_narrow(0, m, 2)?)?;
        let nonfinite_tasks: Vec<usize> = to_f64s(&buffer.f_narrow(0, m + 2, global as i64)?)?
            .iter()
            .enumerate()
            .filter(|(_, f)| **f != 0.0)
            .map(|(i, _)| i)
            .collect();
        let grad_norm = grad.f_norm()?.f_double_value(&[])?;
        let skipped = !grad_norm.is_finite() || !nonfinite_tasks.is_empty();
        if skipped {
            self.skips_in_a_row += 1;
            tracing::warn!(iteration = self.iteration, tasks = ?nonfinite_tasks, "non-finite meta-gradient: outer step skipped");
            if self.skips_in_a_row >= self.cfg.outer.max_nonfinite_skips {
                return Err(Error::NonFinite {
                    iteration: self.iteration,
                    skips: self.skips_in_a_row,
                    tasks: nonfinite_tasks,
                });
            }
        } else {
            self.skips_in_a_row = 0;
            let _s = tracing::info_span!("outer_step").entered();
            let (next, state) = tch::no_grad(|| {
                self.outer
                    .update(
                        &self.meta_vector()?,
                        &grad,
                        &self.outer_state,
                        &self.outer_hparams,
                    )
                    .map_err(Error::from)
            })?;
            self.set_meta_vector(&next)?;
            self.outer_state = state;
        }
        self.iteration += 1;
        let every = self.cfg.run.consistency_every;
        if every > 0 && self.size() > 1 && self.iteration.is_multiple_of(every) {
            self.check_rank_consistency()?;
        }
        let hparams = self
            .learned
            .iter()
            .map(|(n, t)| Ok((n.clone(), t.f_mean(Kind::Double)?.f_double_value(&[])?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(StepMetrics {
            iteration: self.iteration,
            meta_loss: totals[0] / global as f64,
            query_accuracy: self.classification().then(|| totals[1] / global as f64),
            grad_norm,
            tasks: global,
            seconds: started.elapsed().as_secs_f64(),
            hparams,
            skipped,
            nonfinite_tasks,
        })
    }

    /// True on every rank when `flag` is true on at least one rank: one all-reduce of one number,
    /// so it is also a barrier. The launcher's stop requests (a SIGTERM that reached some ranks)
    /// become one decision taken after the same iteration everywhere.
    pub fn any_rank(&self, flag: bool) -> Result<bool> {
        if self.size() == 1 {
            return Ok(flag);
        }
        let mut votes = Tensor::f_from_slice(&[f64::from(u8::from(flag))])?;
        self.comm.all_reduce_sum(&mut votes)?;
        Ok(votes.f_double_value(&[0])? != 0.0)
    }

    /// A checksum of the meta-parameters (two weighted sums in f64).
    fn checksum(&self) -> Result<[f64; 2]> {
        let v = self.meta_vector()?.f_to_kind(Kind::Double)?;
        let n = v.size()[0];
        let ramp = Tensor::f_arange(n, (Kind::Double, v.device()))?
            .f_remainder(7.0)?
            .f_add_scalar(1.0)?;
        Ok([
            v.f_sum(Kind::Double)?.f_double_value(&[])?,
            v.f_mul(&ramp)?.f_sum(Kind::Double)?.f_double_value(&[])?,
        ])
    }

    /// Compares this rank's checksum with rank 0's; every rank learns which ranks differ and all
    /// return the same error.
    pub fn check_rank_consistency(&self) -> Result<()> {
        let mine = self.checksum()?;
        let mut reference = Tensor::f_from_slice(&mine)?;
        self.comm.broadcast(&mut reference, 0)?;
        let expected = to_f64s(&reference)?;
        // Equal arithmetic on equal inputs gives equal bits; the tolerance only absorbs a
        // different summation order of the checksum itself on other hardware.
        let differs = metaloop_runtime::comm::checksums_differ(&mine, &expected, 1e-12);
        let mut who = Tensor::f_zeros([self.size() as i64], (Kind::Double, Device::Cpu))?;
        if differs {
            let _ = who.f_narrow(0, self.rank() as i64, 1)?.f_fill_(1.0)?;
        }
        self.comm.all_reduce_sum(&mut who)?;
        let ranks: Vec<usize> = to_f64s(&who)?
            .iter()
            .enumerate()
            .filter(|(_, f)| **f != 0.0)
            .map(|(i, _)| i)
            .collect();
        if ranks.is_empty() {
            Ok(())
        } else {
            Err(Error::RankMismatch {
                iteration: self.iteration,
                expected: expected[0],
                ranks,
            })
        }
    }

    /// Meta-tests (or validates) on `tasks` tasks of `split`: query loss (and accuracy) before and
    /// after `eval.inner_steps` inner steps on each task's support set.
    pub fn evaluate(&self, split: Split, tasks: usize) -> Result<EvalReport> {
        let _s = tracing::info_span!("evaluate", split = split.name(), tasks).entered();
        let cls = self.classification();
        let steps = self.cfg.eval_inner_steps();
        let mine = rank_slice(tasks, self.rank(), self.size());
        // Per task: loss before, loss after, accuracy before, accuracy after.
        let mut table = Tensor::f_zeros([tasks as i64, 4], (Kind::Double, Device::Cpu))?;
        let chunk = self.cfg.outer.meta_batch.clamp(1, 32);
        let mut start = mine.start;
        while start < mine.end {
            let end = (start + chunk).min(mine.end);
            let batch =
                self.prepare(
                    self.source
                        .meta_batch(self.cfg.run.seed, 0, start..end, split)?,
                )?;
            let t = batch.len() as i64;
            let theta = self.theta.expand_tasks(t)?;
            let (l0, a0) = tch::no_grad(|| -> Result<_> {
                Ok(task_losses(
                    &self.model.forward(&theta, &batch.query_x, true)?,
                    &batch.query_y,
                    cls,
                )?)
            })?;
            let shard = self.shard();
            let mut inner = shard.inner_loop(t, false)?;
            for _ in 0..steps {
                let (l, _) = task_losses(&inner.forward(&batch.support_x)?, &batch.support_y, cls)?;
                inner.step(&l.f_sum(self.kind)?)?;
            }
            let (l1, a1) = tch::no_grad(|| -> Result<_> {
                Ok(task_losses(
                    &inner.forward(&batch.query_x)?,
                    &batch.query_y,
                    cls,
                )?)
            })?;
            let zeros = Tensor::f_zeros([t], (self.kind, self.device))?;
            let cols = [
                l0,
                l1,
                a0.unwrap_or_else(|| zeros.shallow_clone()),
                a1.unwrap_or(zeros),
            ];
            let cols: Vec<Tensor> = cols
                .iter()
                .map(|c| {
                    c.f_detach()?
                        .f_to_kind(Kind::Double)?
                        .f_to_device(Device::Cpu)
                })
                .collect::<std::result::Result<_, _>>()?;
            tch::no_grad(|| {
                table
                    .f_narrow(0, start as i64, t)?
                    .f_copy_(&Tensor::f_stack(&cols, 1)?)
            })?;
            start = end;
        }
        self.comm.all_reduce_sum(&mut table)?;
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
            inner_steps: steps,
            metric: if cls { "accuracy".into() } else { "mse".into() },
            loss_before: l0,
            loss_after: l1,
            accuracy_before: a0,
            accuracy_after: a1,
        })
    }

    /// Everything a resume needs, as named tensors (CPU): `theta`, `hparam.<name>`,
    /// `outer.step`, `outer.<buffer>`.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let cpu = |t: &Tensor| -> Result<Tensor> {
            Ok(t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?)
        };
        let mut out = vec![("theta".to_string(), cpu(self.theta.flat())?)];
        for (n, t) in &self.learned {
            out.push((format!("hparam.{n}"), cpu(t)?));
        }
        out.push((
            "outer.step".to_string(),
            Tensor::f_from_slice(&[self.outer_state.step()])?,
        ));
        for (n, t) in self.outer_state.tensors() {
            out.push((format!("outer.{n}"), cpu(t)?));
        }
        Ok(out)
    }

    /// Restores `state()`'s tensors, as after `iteration` outer iterations.
    pub fn restore(&mut self, iteration: u64, tensors: &[(String, Tensor)]) -> Result<()> {
        let find = |name: &str| {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| Error::State(format!("tensor `{name}` is missing")))
        };
        let fit = |name: &str, like: &Tensor| -> Result<Tensor> {
            let t = find(name)?;
            if t.size() != like.size() {
                return Err(Error::State(format!(
                    "tensor `{name}` has shape {:?}, the model needs {:?}",
                    t.size(),
                    like.size()
                )));
            }
            Ok(t.f_to_device(like.device())?.f_to_kind(like.kind())?)
        };
        let theta = fit("theta", self.theta.flat())?;
        let learned: Vec<Tensor> = self
            .learned
            .iter()
            .map(|(n, t)| fit(&format!("hparam.{n}"), t))
            .collect::<Result<_>>()?;
        let step_t = find("outer.step")?;
        let step = step_t.f_int64_value(&[0])?;
        let mut buffers = Vec::new();
        for (n, t) in self.outer_state.tensors() {
            buffers.push((n.to_string(), fit(&format!("outer.{n}"), t)?));
        }
        tch::no_grad(|| -> Result<()> {
            self.theta.flat().shallow_clone().f_copy_(&theta)?;
            for ((_, t), v) in self.learned.iter().zip(&learned) {
                t.shallow_clone().f_copy_(v)?;
            }
            Ok(())
        })?;
        self.outer_state = OptState::new(step, buffers);
        self.iteration = iteration;
        self.prefetcher = None;
        Ok(())
    }
}
