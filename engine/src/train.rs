//! The Trainer: meta-training one model on one rank, one outer iteration at a time, on this
//! rank's slice of the meta-batch.
//!
//! Every algorithm (engine::algorithms) reduces to a meta-gradient over one flat vector of
//! meta-parameters (θ0, then every learned inner hyperparameter), which is all-reduced once per
//! iteration together with the loss statistics and the non-finite flags (engine::reduce; with
//! `run.reproducible`, exactly, engine::exact), then fed to the outer optimizer (a pure update
//! from `runtime::optim`, identical on every rank).
//!
//! The Trainer is open: [`TrainerBuilder`] takes any `nn::Module`, any [`TaskSource`], any
//! [`Loss`] and any [`Algorithm`]; what is not given comes from the config (engine::setup). The
//! command line is one user of it.
//!
//! Tasks are drawn by the data layer as a pure function of (seed, iteration, task index), and each
//! rank takes a contiguous slice of the global meta-batch; per-task contributions are divided by
//! the global meta-batch size, so the all-reduced sum is the same mean for any number of ranks.
//! The Trainer keeps only what one meta-iteration needs; the meta-test (engine::evaluate),
//! predictions, model selection, the model file and checkpoint state are types of their own.
//! This module never prints; it touches files only through engine::model_file and
//! engine::resume, when asked to.

use crate::algorithms::{self, Algorithm, BnMode};
use crate::chunks::{self, Partial};
use crate::config::TrainConfig;
use crate::data::{MetaBatch, TaskSource};
use crate::evaluate::MetaTest;
use crate::exact;
use crate::feed::TaskFeed;
use crate::loss::{self, Loss};
use crate::meta_params::MetaParams;
use crate::model_file;
use crate::net::Net;
use crate::outer::OuterStep;
use crate::predictions::{PredictionSpec, TaskPredictions};
use crate::protocol::EvalProtocol;
use crate::ranks;
use crate::reduce::{self, Reduced};
use crate::resume::Snapshot;
use crate::rundir::RunDir;
use crate::running::{self, Tracker};
use crate::setup;
use crate::workers::Workers;
use crate::{Error, Result};
use metaloop_runtime::comm::{Communicator, Local};
use metaloop_runtime::nn::Module;
use metaloop_runtime::Params;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Tensor};

pub use crate::report::{EvalReport, MeanCi, StepMetrics};
pub use crate::setup::{build_model, rank_slice, task_source};

/// Meta-trains one model on one rank.
///
/// Each field is something every outer iteration uses, and so stays here: the config, the
/// communicator (the all-reduce), the model and how it computes, the algorithm (the
/// meta-gradient), the meta-parameters it changes, the outer step, the task feed and the
/// workers that share the tasks. The evaluation protocol stays too: it is built and checked with
/// the Trainer, so that a bad `eval.ways` fails before training, and validation runs inside
/// the fit loop.
pub struct Trainer {
    cfg: TrainConfig,
    /// The config as the iterations compute it: `cfg` with the memory plan's task chunk, memory
    /// mode and checkpoint interval (engine::plan). `cfg` alone names the run (its hash).
    pub(crate) compute: TrainConfig,
    /// The memory plan, when one was made.
    pub(crate) plan: Option<crate::plan::MemoryPlan>,
    /// This rank's communicator: the all-reduce of every iteration.
    comm: Box<dyn Communicator>,
    /// The model, its loss, dtype, device and kernels: every inner and outer step computes here.
    pub(crate) net: Net,
    /// Computes the meta-gradient of every iteration.
    pub(crate) algorithm: Box<dyn Algorithm>,
    /// θ0 and the learned inner hyperparameters: what every outer step changes.
    pub(crate) meta: MetaParams,
    /// The outer optimizer, its state and the iteration count.
    outer: OuterStep,
    /// The training tasks and their prefetch thread.
    pub(crate) tasks: TaskFeed,
    /// How this rank's tasks spread over threads (`run.workers`).
    pub(crate) workers: Workers,
    /// The tasks and model of validation and meta-test (`eval.ways`, `eval.shots`).
    protocol: EvalProtocol,
}

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
        self.outer.iteration
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn size(&self) -> usize {
        self.comm.size()
    }

    /// The device this rank computes on.
    pub fn device(&self) -> Device {
        self.net.device
    }

    /// The model θ0 parameterises.
    pub fn model(&self) -> &dyn Module {
        self.net.model.as_ref()
    }

    /// θ0, with PyTorch state_dict names (for `Params::save`).
    pub fn model_params(&self) -> &Params {
        &self.meta.theta
    }

    /// θ0 and the learned inner hyperparameters.
    pub fn meta(&self) -> &MetaParams {
        &self.meta
    }

    /// How this rank's tasks spread over threads.
    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    /// The learned inner hyperparameters, in meta-vector order.
    pub fn learned_hparams(&self) -> &[crate::algorithms::Learned] {
        &self.meta.learned
    }

    /// The model file's tensors (engine::model_file), on the CPU.
    pub fn model_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        model_file::tensors(&self.meta)
    }

    /// Sets θ0 and the learned inner hyperparameters from a model file's tensors
    /// (engine::model_file's rule: every tensor of the model, with its shape, and no other).
    pub fn set_model_tensors(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        model_file::assign(&mut self.meta, tensors, None)
    }

    /// Sets θ0 and the learned inner hyperparameters from the model file `path`
    /// (`model.safetensors`, `model.best.safetensors`).
    pub fn load_model(&mut self, path: &Path) -> Result<()> {
        model_file::load(path, &mut self.meta)
    }

    /// Writes `model.safetensors` into `run` (engine::model_file).
    pub fn write_model(&self, run: &RunDir) -> Result<PathBuf> {
        model_file::write(run.model_path(), &self.meta)
    }

    /// Everything a resume needs, as named tensors (CPU; engine::resume).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Snapshot::take(&self.meta, &self.outer)?.tensors)
    }

    /// Restores `state()`'s tensors, as after `iteration` outer iterations.
    pub fn restore(&mut self, iteration: u64, tensors: &[(String, Tensor)]) -> Result<()> {
        let snapshot = Snapshot {
            iteration,
            tensors: tensors
                .iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect(),
        };
        snapshot.restore(&mut self.meta, &mut self.outer)?;
        self.tasks.reset();
        Ok(())
    }

    /// Writes the checkpoint of the current iteration into `run` (after syncing the metrics
    /// logged so far). Returns the manifest's path.
    pub fn save_checkpoint(&self, run: &RunDir) -> Result<PathBuf> {
        Snapshot::take(&self.meta, &self.outer)?.save(run, &self.cfg)
    }

    /// The meta-test of this trainer's θ0 and learned hyperparameters.
    pub fn meta_test(&self) -> MetaTest<'_> {
        MetaTest {
            cfg: &self.compute,
            comm: self.comm.as_ref(),
            net: &self.net,
            meta: &self.meta,
            protocol: &self.protocol,
            iteration: self.outer.iteration,
        }
    }

    /// Meta-tests (or validates) on `tasks` tasks of `split` ([`MetaTest::run`]). Collective.
    pub fn evaluate(&self, split: crate::data::Split, tasks: usize) -> Result<EvalReport> {
        self.meta_test().run(split, tasks)
    }

    /// The predictions of `spec` ([`PredictionSpec::predict`]; this rank alone).
    pub fn predictions(&self, spec: &PredictionSpec) -> Result<Vec<TaskPredictions>> {
        spec.predict(&self.meta_test())
    }

    /// This rank's contributions: the tasks split over the task-parallel workers
    /// (engine::workers), each worker's in chunks of `run.task_chunk` (engine::chunks). One
    /// [`Partial`] per worker, summed over its chunks; with `run.reproducible`, one per task, in
    /// task order (each task alone, engine::exact).
    fn local_meta_gradient(&self, batch: &MetaBatch, global_tasks: f64) -> Result<Vec<Partial>> {
        let algorithm = self.algorithm.as_ref();
        let exact = self.cfg.run.reproducible;
        let chunk = if exact {
            1
        } else {
            self.compute.run.task_chunk
        };
        let inputs = self
            .workers
            .chunks(batch.len())
            .into_iter()
            .map(|worker| {
                chunks::split(worker, chunk)
                    .into_iter()
                    .map(|r| {
                        let b = batch.slice(r)?;
                        let iteration = self.outer.iteration;
                        let mut shard = self.net.shard(&self.compute, &self.meta, iteration, &b);
                        if !self.meta.running.is_empty() {
                            shard.bn = BnMode::Track(Tracker::new(&self.meta.running));
                        }
                        Ok((shard, b))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let parts = self.workers.run(inputs, |chunks| {
            if exact {
                chunks
                    .into_iter()
                    .map(|c| chunks::run_chunks(algorithm, vec![c], global_tasks))
                    .collect()
            } else {
                Ok(vec![chunks::run_chunks(algorithm, chunks, global_tasks)?])
            }
        })?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// This rank's contributions to the iteration (tasks `range` of `global`; none when empty).
    fn local_parts(
        &mut self,
        range: std::ops::Range<usize>,
        global: usize,
    ) -> Result<Vec<Partial>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let iteration = self.outer.iteration;
        let batch = {
            let _s = tracing::info_span!("sample", iteration).entered();
            let b = self.tasks.next_batch(&self.cfg, iteration, range)?;
            self.net.prepare(b)?
        };
        self.local_meta_gradient(&batch, global as f64)
    }

    /// The iteration's all-reduce: exact (engine::exact) with `run.reproducible`, else one
    /// float sum of the meta-gradient, [Σ loss, Σ accuracy] and the non-finite flags of the
    /// tasks (one slot per global task) together. When BatchNorm running statistics are kept,
    /// a second all-reduce gives their new values (engine::running).
    fn reduce(&mut self, global: usize) -> Result<(Reduced, Option<Tensor>)> {
        let range = rank_slice(global, self.rank(), self.size());
        let mut parts = self.local_parts(range.clone(), global)?;
        let rows: Vec<Tensor> = parts.iter_mut().filter_map(|p| p.running.take()).collect();
        let m = self.meta.len();
        let opts = (self.net.kind, self.net.device);
        let comm = self.comm.as_ref();
        let exact = self.cfg.run.reproducible;
        let reduced = if exact {
            exact::reduce(comm, &parts, range, global, m, opts)?
        } else {
            reduce::float(comm, parts, range, global, m, opts)?
        };
        if self.meta.running.is_empty() {
            return Ok((reduced, None));
        }
        let n = running::numel(&self.meta.running);
        let mean = running::reduce(comm, rows, n, global, exact, opts)?;
        Ok((reduced, Some(mean)))
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
        let (
            Reduced {
                grad,
                totals,
                nonfinite: nonfinite_tasks,
                grad_norm,
                clips: inner,
            },
            running,
        ) = self.reduce(global)?;
        let skipped = !grad_norm.is_finite() || !nonfinite_tasks.is_empty();
        if let Some(mean) = running.filter(|_| !skipped) {
            self.meta.running = running::unflatten(&mean, &self.meta.running)?;
        }
        let update =
            self.outer
                .apply(&mut self.meta, &grad, grad_norm, skipped, &nonfinite_tasks)?;
        self.outer.iteration += 1;
        let every = self.cfg.run.consistency_every;
        if every > 0 && self.size() > 1 && self.iteration().is_multiple_of(every) {
            self.check_rank_consistency()?;
        }
        Ok(StepMetrics {
            iteration: self.iteration(),
            meta_loss: totals[0] / global as f64,
            query_accuracy: self.net.classification().then(|| totals[1] / global as f64),
            grad_norm,
            tasks: global,
            seconds: started.elapsed().as_secs_f64(),
            hparams: self.meta.means()?,
            skipped,
            nonfinite_tasks,
            outer_lr: update.lr,
            clipped: update.clipped,
            clips: update.clips,
            inner_clips: inner.count,
            inner_clip_norm: inner.largest,
        })
    }

    /// True on every rank when `flag` is true on at least one rank (engine::ranks::any).
    pub fn any_rank(&self, flag: bool) -> Result<bool> {
        ranks::any(self.comm.as_ref(), flag)
    }

    /// The lowest rank whose code is not 0, with its code, on every rank (engine::ranks::first_failure).
    pub fn first_failure(&self, code: u8) -> Result<Option<(usize, u8)>> {
        ranks::first_failure(self.comm.as_ref(), code)
    }

    /// Compares the meta-parameters' checksum across ranks (engine::ranks::check_consistency).
    pub fn check_rank_consistency(&self) -> Result<()> {
        ranks::check_consistency(self.comm.as_ref(), &self.meta, self.iteration())
    }
}

// How the builder assembles a Trainer.
#[path = "train_build.rs"]
mod build;

#[cfg(test)]
#[path = "train_batching_tests.rs"]
mod batching_tests;
