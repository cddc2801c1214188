//! The Trainer: meta-training one model on one rank, one outer iteration at a time, on this
//! rank's slice of the meta-batch.
//!
//! Every algorithm (engine::algorithms) reduces to a meta-gradient over one flat vector of
//! meta-parameters (θ0, then every learned inner hyperparameter), which is all-reduced once per
//! iteration together with the loss statistics and the non-finite flags, then fed to the outer
//! optimizer (a pure update from `runtime::optim`, identical on every rank).
//!
//! The Trainer is open: [`TrainerBuilder`] takes any `nn::Module`, any [`TaskSource`], any
//! [`Loss`] and any [`Algorithm`]; what is not given comes from the config (engine::setup). The
//! command line is one user of it.
//!
//! Tasks are drawn by the data layer as a pure function of (seed, iteration, task index), and each
//! rank takes a contiguous slice of the global meta-batch; per-task contributions are divided by
//! the global meta-batch size, so the all-reduced sum is the same mean for any number of ranks.
//! This module never prints and never touches files (engine::fit does, for the run directory).

use crate::algorithms::{self, Algorithm, Learned, Shard};
use crate::config::{Augment, OuterOptimizer, TrainConfig};
use crate::data::{augment, task_seed, MetaBatch, PrefetchConfig, Prefetcher, Split, TaskSource};
use crate::loss::{self, Loss};
use crate::protocol::EvalProtocol;
use crate::setup;
use crate::workers::Workers;
use crate::{Error, Result};
use metaloop_runtime::comm::{Communicator, Local};
use metaloop_runtime::nn::Module;
use metaloop_runtime::optim::{Adam, HParams, OptState, Optimizer, Sgd};
use metaloop_runtime::Params;
use serde::Serialize;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

pub use crate::setup::{build_model, rank_slice, task_source};

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
    /// Classes per task (classification; absent for regression).
    pub ways: Option<usize>,
    /// Support examples per class (classification) or support points (regression).
    pub shots: usize,
    /// "mse" (regression) or "accuracy" (classification).
    pub metric: String,
    pub loss_before: MeanCi,
    pub loss_after: MeanCi,
    pub accuracy_before: Option<MeanCi>,
    pub accuracy_after: Option<MeanCi>,
}

/// Meta-trains one model on one rank.
pub struct Trainer {
    pub(crate) cfg: TrainConfig,
    pub(crate) comm: Box<dyn Communicator>,
    pub(crate) model: Box<dyn Module>,
    pub(crate) source: Arc<dyn TaskSource>,
    pub(crate) loss: Box<dyn Loss>,
    pub(crate) algorithm: Box<dyn Algorithm>,
    pub(crate) kind: Kind,
    pub(crate) device: Device,
    /// θ0: a requires_grad leaf `[P]`.
    pub(crate) theta: Params,
    /// Learned inner hyperparameters, requires_grad leaves, in meta-vector order.
    pub(crate) learned: Vec<Learned>,
    /// Names the inner loop leaves alone (ANIL: everything but the head).
    pub(crate) frozen: Vec<String>,
    outer: Box<dyn Optimizer>,
    outer_hparams: HParams,
    outer_state: OptState,
    pub(crate) iteration: u64,
    prefetcher: Option<Prefetcher>,
    /// Outer steps skipped in a row for non-finite values.
    skips_in_a_row: u32,
    /// How this rank's tasks spread over threads (`run.workers`).
    workers: Workers,
    /// Fused optimizer kernels (runtime::kernels) in the inner and outer steps.
    fused: bool,
    /// The tasks and model of validation and meta-test (`eval.ways`, `eval.shots`).
    pub(crate) protocol: EvalProtocol,
}

/// Separates the random layers' mask seeds from the task-sampling and augmentation streams of
/// the same task seed.
const MASKS: u64 = 0x6d61_736b_7365_6564;

/// Builds a [`Trainer`] from a config, with any part replaced: the model, the task source, the
/// loss, the algorithm and the communicator (one rank alone by default).
pub struct TrainerBuilder {
    cfg: TrainConfig,
    communicator: Option<Box<dyn Communicator>>,
    model: Option<Box<dyn Module>>,
    tasks: Option<Arc<dyn TaskSource>>,
    loss: Option<Box<dyn Loss>>,
    algorithm: Option<Box<dyn Algorithm>>,
    device: Option<Device>,
    threads: Option<usize>,
    fused: bool,
}

/// A builder method that sets the optional part `$name` to `$wrap(value)`.
macro_rules! part {
    ($(#[$doc:meta])* $name:ident: $ty:ty => $wrap:path) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.$name = Some($wrap(value));
            self
        }
    };
}

impl TrainerBuilder {
    part!(
        /// The communicator of this rank (default: `Local`, one rank).
        communicator: Box<dyn Communicator> => std::convert::identity
    );
    part!(
        /// The model (default: `model.backbone`); θ0 is initialised from its parameter
        /// definitions with `run.seed`.
        model: impl Module + 'static => Box::new
    );
    part!(
        /// Where tasks come from (default: `task.kind`).
        tasks: impl TaskSource + 'static => Arc::new
    );
    part!(
        /// The per-task loss (default: MSE for sinusoids, cross-entropy for images).
        loss: impl Loss + 'static => Box::new
    );
    part!(
        /// The algorithm (default: `algorithm.name`).
        algorithm: impl Algorithm + 'static => Box::new
    );
    part!(
        /// The device (default: `run.device`, cuda:<local rank> for "cuda").
        device: Device => std::convert::identity
    );
    part!(
        /// The CPU threads the task-parallel workers share (default: libtorch's thread count).
        threads: usize => std::convert::identity
    );

    /// Fused optimizer kernels (runtime::kernels) for the inner and outer steps instead of
    /// libtorch's tensor ops (default: off, as the optimizers' own default).
    pub fn fused(mut self, fused: bool) -> Self {
        self.fused = fused;
        self
    }

    /// Validates the config, builds what was not given, initialises the meta-parameters.
    pub fn build(self) -> Result<Trainer> {
        let cfg = self.cfg;
        cfg.validate().map_err(Error::Config)?;
        let device = match self.device {
            Some(d) => d,
            None => setup::device(cfg.run.device)?,
        };
        let kind = setup::kind(cfg.run.dtype);
        let source = match self.tasks {
            Some(s) => s,
            None => setup::task_source(&cfg)?,
        };
        let own_model = self.model.is_none();
        let protocol = EvalProtocol::new(&cfg, &source, own_model)?;
        let model = match self.model {
            Some(m) => m,
            None => {
                let channels = source.input_shape().first().copied().unwrap_or(1);
                setup::build_model(&cfg, channels)?
            }
        };
        let comm = self.communicator.unwrap_or_else(|| Box::new(Local));
        let loss = self.loss.unwrap_or_else(|| loss::for_task(cfg.task.kind));
        let algorithm = self
            .algorithm
            .unwrap_or_else(|| algorithms::build(cfg.algorithm.name));
        let theta = setup::initial_params(&cfg, model.as_ref(), kind, device)?;
        let learned = algorithm.learned(&cfg.algorithm, theta.layout(), (kind, device))?;
        let frozen = algorithm.frozen(theta.layout());
        let outer: Box<dyn Optimizer> = match cfg.outer.optimizer {
            OuterOptimizer::Sgd => Box::new(Sgd::new(cfg.outer.lr).fused(self.fused)),
            OuterOptimizer::Adam => Box::new(Adam::new(cfg.outer.lr).fused(self.fused)),
        };
        let threads = self
            .threads
            .unwrap_or_else(|| tch::get_num_threads().max(1) as usize);
        let workers = Workers::plan(
            cfg.run.workers,
            threads,
            rank_slice(cfg.outer.meta_batch, comm.rank(), comm.size()).len(),
            theta.layout().numel(),
            device,
        );
        let mut trainer = Trainer {
            cfg,
            comm,
            model,
            source,
            loss,
            algorithm,
            kind,
            device,
            theta,
            learned,
            frozen,
            outer_hparams: HParams::defaults(outer.as_ref()),
            outer_state: OptState::new(0, Vec::new()),
            outer,
            iteration: 0,
            prefetcher: None,
            skips_in_a_row: 0,
            workers,
            fused: self.fused,
            protocol,
        };
        trainer.outer_state = trainer.outer.init_state(&trainer.meta_vector()?)?;
        Ok(trainer)
    }
}

impl Trainer {
    /// Builds the model, the meta-parameters and the task source of `cfg` (validated here too).
    pub fn new(cfg: &TrainConfig, comm: Box<dyn Communicator>) -> Result<Trainer> {
        Trainer::builder(cfg).communicator(comm).build()
    }

    /// A builder on `cfg`, for replacing the model, task source, loss or algorithm.
    pub fn builder(cfg: &TrainConfig) -> TrainerBuilder {
        TrainerBuilder {
            cfg: cfg.clone(),
            communicator: None,
            model: None,
            tasks: None,
            loss: None,
            algorithm: None,
            device: None,
            threads: None,
            fused: false,
        }
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

    /// How this rank's tasks spread over threads.
    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    /// The learned inner hyperparameters, in meta-vector order.
    pub fn learned_hparams(&self) -> &[Learned] {
        &self.learned
    }

    /// The model file's tensors: θ0 under PyTorch's state_dict names, then each learned inner
    /// hyperparameter as `inner.<name>` (e.g. Meta-SGD's and LSLR's `inner.lr`), on the CPU.
    pub fn model_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (name, t) in self.theta.iter() {
            out.push((name.to_string(), cpu(&t)?));
        }
        for h in &self.learned {
            out.push((format!("inner.{}", h.name), cpu(&h.tensor)?));
        }
        Ok(out)
    }

    /// Sets θ0 and the learned inner hyperparameters from a model file's tensors (what
    /// [`Trainer::model_tensors`] returns and `model.safetensors` holds): every tensor of θ0 and
    /// every `inner.<name>` the algorithm learns, each with the model's shape, and nothing else.
    pub fn set_model_tensors(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let wrong = |reason: String| Error::InvalidSetting {
            what: "model file",
            reason,
        };
        let fit = |name: &str, like: &Tensor| -> Result<Tensor> {
            let (_, t) = tensors
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| wrong(format!("tensor `{name}` is missing")))?;
            if t.size() != like.size() {
                return Err(wrong(format!(
                    "tensor `{name}` has shape {:?}, the model needs {:?}",
                    t.size(),
                    like.size()
                )));
            }
            Ok(t.f_to_device(like.device())?.f_to_kind(like.kind())?)
        };
        let mut names: Vec<String> = self.theta.iter().map(|(n, _)| n.to_string()).collect();
        names.extend(self.learned.iter().map(|h| format!("inner.{}", h.name)));
        if let Some((extra, _)) = tensors.iter().find(|(n, _)| !names.contains(n)) {
            return Err(wrong(format!(
                "tensor `{extra}` is not one of this model's"
            )));
        }
        let theta: Vec<(String, Tensor)> = self
            .theta
            .iter()
            .map(|(name, view)| Ok((name.to_string(), fit(name, &view)?)))
            .collect::<Result<_>>()?;
        let learned: Vec<Tensor> = self
            .learned
            .iter()
            .map(|h| fit(&format!("inner.{}", h.name), &h.tensor))
            .collect::<Result<_>>()?;
        for (name, t) in &theta {
            self.theta.set(name, t)?;
        }
        tch::no_grad(|| -> Result<()> {
            for (h, v) in self.learned.iter().zip(&learned) {
                h.tensor.shallow_clone().f_copy_(v)?;
            }
            Ok(())
        })
    }

    /// θ0 and the learned hyperparameters, detached, as one flat vector.
    fn meta_vector(&self) -> Result<Tensor> {
        let mut parts = vec![self.theta.flat().f_detach()?];
        for h in &self.learned {
            parts.push(h.tensor.f_detach()?.f_reshape([-1])?);
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
            for h in &self.learned {
                let n = h.tensor.numel() as i64;
                h.tensor.shallow_clone().f_copy_(
                    &v.f_narrow(0, offset, n)?
                        .f_view(h.tensor.size().as_slice())?,
                )?;
                offset += n;
            }
            Ok(())
        })
    }

    /// True when the loss reports accuracies (classification).
    pub(crate) fn classification(&self) -> bool {
        self.loss.classification()
    }

    /// A batch moved to this rank's device and dtype (class labels stay integer).
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

    /// A worker's view of this trainer for the tasks of `batch` (see [`Shard`]).
    pub(crate) fn shard(&self, batch: &MetaBatch) -> Shard<'_> {
        Shard {
            algorithm: &self.cfg.algorithm,
            iterations: self.cfg.outer.iterations,
            model: self.model.as_ref(),
            loss: self.loss.as_ref(),
            kind: self.kind,
            device: self.device,
            theta: self.theta.clone(),
            learned: self.learned.iter().map(Learned::shallow_clone).collect(),
            frozen: &self.frozen,
            iteration: self.iteration,
            fused: self.fused,
            seeds: batch
                .tasks
                .clone()
                .map(|i| task_seed(self.cfg.run.seed, Split::Train, batch.iteration, i) ^ MASKS)
                .collect(),
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
        let algorithm = self.algorithm.as_ref();
        let inputs = self
            .workers
            .chunks(batch.len())
            .iter()
            .map(|r| {
                let b = batch.slice(r.clone())?;
                Ok((self.shard(&b), b))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut parts = self
            .workers
            .run(inputs, |(shard, b)| {
                chunk_meta_gradient(algorithm, &shard, &b, global_tasks)
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
        let batch = self.augment(batch)?;
        self.prepare(batch)
    }

    /// `task.augment` on the support images of a training batch: each task's images from its
    /// own seed (`data::task_seed` of the run seed, the iteration and the global task index), so
    /// that 1 and N ranks augment a task alike.
    fn augment(&self, mut b: MetaBatch) -> Result<MetaBatch> {
        match self.cfg.task.augment {
            Augment::None => {}
            Augment::Standard => {
                let seeds: Vec<u64> = b
                    .tasks
                    .clone()
                    .map(|i| task_seed(self.cfg.run.seed, Split::Train, b.iteration, i))
                    .collect();
                b.support_x = augment::Standard::for_side(self.cfg.task.image_size)
                    .apply_tasks(&b.support_x, &seeds)?;
            }
        }
        Ok(b)
    }

    /// This rank's part of an iteration's all-reduce buffer: its meta-gradient, [Σ loss, Σ
    /// accuracy] and the non-finite flags of its tasks (one slot per global task).
    fn local_buffer(&mut self, global: usize) -> Result<Tensor> {
        let range = rank_slice(global, self.rank(), self.size());
        let m = self.meta_vector()?.size()[0];
        let opts = (self.kind, self.device);
        let mut flags = Tensor::f_zeros([global as i64], opts)?;
        if range.is_empty() {
            let zeros = Tensor::f_zeros([m + 2], opts)?;
            return Ok(Tensor::f_cat(&[zeros, flags], 0)?);
        }
        let batch = {
            let _s = tracing::info_span!("sample", iteration = self.iteration).entered();
            self.next_train_batch(range.clone())?
        };
        let (grad, [loss, acc], per_task) = self.local_meta_gradient(&batch, global as f64)?;
        let bad = per_task
            .f_isfinite()?
            .f_logical_not()?
            .f_to_kind(self.kind)?;
        let index = Tensor::f_arange_start(
            range.start as i64,
            range.end as i64,
            (Kind::Int64, self.device),
        )?;
        flags = flags.f_index_copy(0, &index, &bad)?;
        Ok(Tensor::f_cat(&[grad, loss, acc, flags], 0)?)
    }

    /// The outer step on the all-reduced meta-gradient, or a skip when `skipped` (non-finite
    /// values somewhere); the error after `outer.max_nonfinite_skips` skips in a row.
    fn outer_step(&mut self, grad: &Tensor, skipped: bool, nonfinite: &[usize]) -> Result<()> {
        if skipped {
            self.skips_in_a_row += 1;
            tracing::warn!(iteration = self.iteration, tasks = ?nonfinite, "non-finite meta-gradient: outer step skipped");
            if self.skips_in_a_row >= self.cfg.outer.max_nonfinite_skips {
                return Err(Error::NonFinite {
                    iteration: self.iteration,
                    skips: self.skips_in_a_row,
                    tasks: nonfinite.to_vec(),
                });
            }
            return Ok(());
        }
        self.skips_in_a_row = 0;
        let _s = tracing::info_span!("outer_step").entered();
        let (next, state) = tch::no_grad(|| {
            self.outer
                .update(
                    &self.meta_vector()?,
                    grad,
                    &self.outer_state,
                    &self.outer_hparams,
                )
                .map_err(Error::from)
        })?;
        self.set_meta_vector(&next)?;
        self.outer_state = state;
        Ok(())
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
        let m = self.meta_vector()?.size()[0];
        // One all-reduce: the meta-gradient, the loss statistics and the non-finite flags together.
        let mut buffer = self.local_buffer(global)?;
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
        self.outer_step(&grad, skipped, &nonfinite_tasks)?;
        self.iteration += 1;
        let every = self.cfg.run.consistency_every;
        if every > 0 && self.size() > 1 && self.iteration.is_multiple_of(every) {
            self.check_rank_consistency()?;
        }
        let hparams = self
            .learned
            .iter()
            .map(|h| {
                let mean = h.tensor.f_mean(Kind::Double)?.f_double_value(&[])?;
                Ok((h.name.clone(), mean))
            })
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

    /// Everything a resume needs, as named tensors (CPU): `theta`, `hparam.<name>`,
    /// `outer.step`, `outer.<buffer>`.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("theta".to_string(), cpu(self.theta.flat())?)];
        for h in &self.learned {
            out.push((format!("hparam.{}", h.name), cpu(&h.tensor)?));
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
            .map(|h| fit(&format!("hparam.{}", h.name), &h.tensor))
            .collect::<Result<_>>()?;
        let step_t = find("outer.step")?;
        let step = step_t.f_int64_value(&[0])?;
        let mut buffers = Vec::new();
        for (n, t) in self.outer_state.tensors() {
            buffers.push((n.to_string(), fit(&format!("outer.{n}"), t)?));
        }
        tch::no_grad(|| -> Result<()> {
            self.theta.flat().shallow_clone().f_copy_(&theta)?;
            for (h, v) in self.learned.iter().zip(&learned) {
                h.tensor.shallow_clone().f_copy_(v)?;
            }
            Ok(())
        })?;
        self.outer_state = OptState::new(step, buffers);
        self.iteration = iteration;
        self.prefetcher = None;
        Ok(())
    }
}

/// One chunk's meta-gradient (flat), [Σ query loss, Σ query accuracy] and per-task losses.
fn chunk_meta_gradient(
    algorithm: &dyn Algorithm,
    shard: &Shard<'_>,
    batch: &MetaBatch,
    global_tasks: f64,
) -> Result<(Tensor, [Tensor; 2], Tensor)> {
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
    Ok((Tensor::f_cat(&flat, 0)?, [q_sum, acc_sum], per_task))
}

/// A detached, contiguous CPU copy: a snapshot (on the CPU, moving and detaching alone would
/// alias the live tensor, which later steps change).
fn cpu(t: &Tensor) -> Result<Tensor> {
    let t = t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?;
    let mut copy = t.f_empty_like()?;
    copy.f_copy_(&t)?;
    Ok(copy)
}

/// The values of `t` as f64s (flattened).
pub(crate) fn to_f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(
        &t.f_detach()?
            .f_to_kind(Kind::Double)?
            .f_to_device(Device::Cpu)?
            .f_reshape([-1])?,
    )?)
}
