//! The benchmark workloads in metaloop, on random inputs of the workloads' shapes, the
//! same ones benches/peers/peers.py runs in higher, torch.func and TorchOpt:
//!
//! - `sinusoid`: MLP 1-40-40-1, K=10 support + 10 query, meta-batch 25, 1 SGD step, lr 0.01.
//! - `omniglot`: Conv-4 (64 filters, BatchNorm with batch statistics), 1×28×28, 5-way 1-shot,
//!   15 query per class, meta-batch 8, 5 SGD steps, lr 0.4.
//! - `omniglot20` (the GPU variant): 20-way 1-shot, meta-batch 32, 5 steps.
//! - `miniimagenet-conv4`: Conv-4 (32 filters), 3×84×84, 5-way 1-shot, 15 query per class,
//!   meta-batch 4, 5 SGD steps, lr 0.01 (MAML's miniImageNet setting).
//! - `miniimagenet-resnet12`: ResNet-12 (64-160-320-640, [`nn::ResNet12`], no DropBlock),
//!   3×84×84, 5-way 5-shot, 15 query per class, meta-batch 4, 5 SGD steps, lr 0.01;
//!   `miniimagenet-resnet12-long`: the same with 20 steps (the long unroll of the memory goal).
//!
//! One timed iteration is the Trainer's own step ([`Trainer::step`]): second-order MAML on the
//! whole meta-batch (all tasks batched through the InnerLoop), the meta-gradient (full tracking,
//! or recompute-and-adjoint with [`Options::memory`]), and an Adam outer step, what the peers
//! time too; the tasks are served from memory. This module measures and returns numbers; it
//! prints nothing.

use crate::config::{AlgorithmName, ConvTasks, Memory, MemoryBudget, Precision, TrainConfig};
use crate::data::{MetaBatch, Split, TaskSource};
use crate::loss::{CrossEntropy, Mse};
use crate::plan::{Fixed, MemoryPlan};
use crate::train::Trainer;
use crate::{Error, Result};
use metaloop_runtime::nn;
use serde::Serialize;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The model a workload meta-trains.
#[derive(Debug, Clone, Copy)]
pub enum Model {
    /// The sinusoid MLP 1-40-40-1.
    Mlp,
    /// MAML's Conv-4 with this many filters per layer.
    Conv4 { filters: i64 },
    /// ResNet-12 with these block widths.
    ResNet12 { widths: [i64; 4] },
}

/// A benchmark workload's shapes and inner loop.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub name: &'static str,
    pub model: Model,
    pub meta_batch: i64,
    pub steps: usize,
    pub lr: f64,
    /// 0 for the sinusoid MLP; else classes per task.
    pub ways: i64,
    /// Support examples per class (per task for the sinusoid).
    pub shots: i64,
    /// Query examples per class (per task for the sinusoid).
    pub queries: i64,
    /// Image channels and side (unused by the MLP).
    pub channels: i64,
    pub side: i64,
}

/// The image workloads' common shape: 5-way, 15 queries per class, Omniglot's 1×28×28.
const IMAGES: Workload = Workload {
    name: "",
    model: Model::Conv4 { filters: 64 },
    meta_batch: 8,
    steps: 5,
    lr: 0.4,
    ways: 5,
    shots: 1,
    queries: 15,
    channels: 1,
    side: 28,
};

/// miniImageNet's shape: 3×84×84, lr 0.01, meta-batch 4.
const MINI: Workload = Workload {
    meta_batch: 4,
    lr: 0.01,
    channels: 3,
    side: 84,
    ..IMAGES
};

const RESNET12: Model = Model::ResNet12 {
    widths: nn::ResNet12::WIDTHS,
};

pub const WORKLOADS: [Workload; 6] = [
    Workload {
        name: "sinusoid",
        model: Model::Mlp,
        meta_batch: 25,
        steps: 1,
        lr: 0.01,
        ways: 0,
        shots: 10,
        queries: 10,
        channels: 1,
        side: 1,
    },
    Workload {
        name: "omniglot",
        ..IMAGES
    },
    Workload {
        name: "omniglot20",
        meta_batch: 32,
        ways: 20,
        ..IMAGES
    },
    Workload {
        name: "miniimagenet-conv4",
        model: Model::Conv4 { filters: 32 },
        ..MINI
    },
    Workload {
        name: "miniimagenet-resnet12",
        model: RESNET12,
        shots: 5,
        ..MINI
    },
    Workload {
        name: "miniimagenet-resnet12-long",
        model: RESNET12,
        shots: 5,
        steps: 20,
        ..MINI
    },
];

/// How [`run`] measures a workload.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Timed iterations (their median is reported), after `warmup` untimed ones.
    pub iters: usize,
    pub warmup: usize,
    pub device: Device,
    /// The fused optimizer kernels (runtime::kernels) instead of the tensor-op reference path.
    pub fused: bool,
    /// Task-parallel worker threads (0: automatic), with `threads` libtorch threads in all
    /// (engine::workers), as training does.
    pub workers: usize,
    pub threads: usize,
    /// Full tracking of the unroll, or recompute-and-adjoint (`algorithm.memory`).
    pub memory: Memory,
    /// The meta-gradient's algorithm (`algorithm.name`; "maml" in the peers' comparison).
    pub algorithm: AlgorithmName,
    /// Tasks each worker runs at once (`run.task_chunk`; 0: all of its tasks).
    pub task_chunk: usize,
    /// Convolutions' and matrix products' arithmetic (`run.precision`).
    pub precision: Precision,
    /// How task-batched convolutions run their tasks (`run.conv_tasks`).
    pub conv_tasks: ConvTasks,
    /// Folded convolutions in channels-last memory order (`run.channels_last`).
    pub channels_last: bool,
    /// Bit-identical results on any split of the tasks (`run.reproducible`, engine::exact).
    pub reproducible: bool,
    /// The memory budget the planner fits the workload into (`run.memory_budget_gib`).
    pub memory_budget: MemoryBudget,
    /// Which of `memory`, `task_chunk` and `workers` were asked for (the planner keeps them).
    pub fixed: Fixed,
}

/// What one workload measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub peer: String,
    pub workload: String,
    /// The workload's meta-batch and inner steps as run (they can be overridden).
    pub meta_batch: i64,
    pub steps: usize,
    /// "full" or "recompute".
    pub memory: Memory,
    /// The algorithm timed ("maml" unless `--algorithm` says otherwise).
    pub algorithm: AlgorithmName,
    /// Tasks each worker ran at once (0: all of its tasks).
    pub task_chunk: usize,
    /// The memory plan it ran (engine::plan; absent when planning was off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<MemoryPlan>,
    pub tasks_per_s: f64,
    pub median_s: f64,
    /// The peak memory, MiB: on the CPU the process's resident peak (VmHWM), on CUDA the
    /// caching allocator's peak in tensors (as peers.py's `torch.cuda.max_memory_allocated`);
    /// NaN where neither is known.
    pub peak_mib: f64,
    /// CUDA: the caching allocator's peak in tensors over the whole run, MiB
    /// (runtime::device_memory); `None` on the CPU.
    pub peak_device_mib: Option<f64>,
    /// "default", "fp32", "tf32" or "bf16".
    pub precision: Precision,
    /// "auto", "grouped", "per_task" or "gemm".
    pub conv_tasks: ConvTasks,
    pub channels_last: bool,
    /// libtorch threads in all (workers × intra-op threads each).
    pub threads: i32,
    /// Task-parallel worker threads (engine::workers).
    pub workers: usize,
    /// Fused optimizer kernels (else libtorch's tensor ops) in the inner and outer steps.
    pub fused: bool,
    /// `run.reproducible`: each task alone, summed exactly (engine::exact).
    pub reproducible: bool,
    pub device: String,
}

/// Looks a workload up by name.
pub fn workload(name: &str) -> Result<Workload> {
    WORKLOADS
        .iter()
        .copied()
        .find(|w| w.name == name)
        .ok_or_else(|| Error::InvalidSetting {
            what: "bench workload",
            reason: format!(
                "unknown workload {name:?} (expected one of {})",
                WORKLOADS.map(|w| w.name).join(", ")
            ),
        })
}

/// Peak resident set size (VmHWM) of this process in MiB (engine::memory).
pub fn peak_rss_mib() -> f64 {
    crate::memory::high_water_kib().map_or(f64::NAN, |kib| kib as f64 / 1024.0)
}

/// The workload's tasks: one random meta-batch of its shapes (made once, on the CPU), served for
/// every iteration and split, so that the timing is the Trainer's step and not data loading.
pub(crate) struct RandomTasks {
    /// Behind a lock because libtorch tensors are not `Sync`; a call takes views of it.
    batch: Mutex<MetaBatch>,
    input: Vec<i64>,
    outputs: usize,
}

impl RandomTasks {
    pub(crate) fn new(w: &Workload) -> Result<RandomTasks> {
        let t = w.meta_batch;
        let opts = (Kind::Float, Device::Cpu);
        let range = 0..t as usize;
        if w.ways == 0 {
            let points = |n: i64| -> Result<Tensor> {
                Ok(Tensor::f_rand([t, n, 1], opts)?
                    .f_mul_scalar(10.0)?
                    .f_sub_scalar(5.0)?)
            };
            let (xs, xq) = (points(w.shots)?, points(w.queries)?);
            let batch = MetaBatch {
                support_y: xs.f_sin()?,
                query_y: xq.f_sin()?,
                support_x: xs,
                query_x: xq,
                iteration: 0,
                tasks: range,
            };
            return Ok(RandomTasks {
                batch: Mutex::new(batch),
                input: vec![1],
                outputs: 1,
            });
        }
        let labels = |per: i64| -> Result<Tensor> {
            Ok(Tensor::f_arange(w.ways, (Kind::Int64, Device::Cpu))?
                .f_repeat_interleave_self_int(per, 0, None)?
                .f_unsqueeze(0)?
                .f_expand([t, w.ways * per], false)?
                .f_contiguous()?)
        };
        let images = |per: i64| Tensor::f_rand([t, w.ways * per, w.channels, w.side, w.side], opts);
        let batch = MetaBatch {
            support_x: images(w.shots)?,
            support_y: labels(w.shots)?,
            query_x: images(w.queries)?,
            query_y: labels(w.queries)?,
            iteration: 0,
            tasks: range,
        };
        Ok(RandomTasks {
            batch: Mutex::new(batch),
            input: vec![w.channels, w.side, w.side],
            outputs: w.ways as usize,
        })
    }
}

impl TaskSource for RandomTasks {
    fn meta_batch(
        &self,
        _seed: u64,
        iteration: u64,
        tasks: Range<usize>,
        _split: Split,
    ) -> Result<MetaBatch> {
        let all = self.batch.lock().map_err(|_| Error::InvalidSetting {
            what: "bench tasks",
            reason: "a thread panicked while holding them".into(),
        })?;
        let mut b = all.slice(tasks)?;
        b.iteration = iteration;
        Ok(b)
    }

    fn input_shape(&self) -> Vec<i64> {
        self.input.clone()
    }

    fn num_outputs(&self) -> usize {
        self.outputs
    }
}

/// The Trainer's config of workload `w`: second-order MAML (or `o.algorithm` with its default
/// settings), SGD inner steps, Adam outer steps.
fn config(w: &Workload, iterations: u64, o: &Options) -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.algorithm.name = o.algorithm;
    cfg.algorithm.inner_steps = w.steps;
    cfg.algorithm.inner_lr = w.lr;
    cfg.algorithm.memory = o.memory;
    cfg.run.precision = o.precision;
    cfg.run.conv_tasks = o.conv_tasks;
    cfg.run.channels_last = o.channels_last;
    cfg.outer.meta_batch = w.meta_batch as usize;
    cfg.outer.iterations = iterations;
    cfg.run.workers = o.workers;
    cfg.run.task_chunk = o.task_chunk;
    cfg.run.reproducible = o.reproducible;
    cfg.run.memory_budget_gib = o.memory_budget;
    cfg.run.consistency_every = 0;
    cfg
}

/// The Trainer of workload `w` on its random tasks.
pub(crate) fn trainer(w: &Workload, o: &Options) -> Result<Trainer> {
    let cfg = config(w, (o.warmup + o.iters) as u64, o);
    let builder = Trainer::builder(&cfg)
        .tasks(RandomTasks::new(w)?)
        .device(o.device)
        .threads(o.threads)
        .fused(o.fused);
    match w.model {
        Model::Mlp => builder.model(nn::mlp(&[1, 40, 40, 1])).loss(Mse).build(),
        Model::Conv4 { filters } => builder
            .model(nn::conv4_sized(w.channels, w.ways, filters, w.side))
            .loss(CrossEntropy)
            .build(),
        Model::ResNet12 { widths } => builder
            .model(nn::ResNet12::new(widths, w.ways, w.channels))
            .loss(CrossEntropy)
            .build(),
    }
}

/// Runs `o.iters` timed iterations (after `o.warmup`) of workload `w`: each one the Trainer's
/// own outer step ([`Trainer::step`]) on the workload's tasks.
pub fn run(w: &Workload, o: &Options) -> Result<BenchResult> {
    run_with(w, o, |_| {})
}

/// [`run`], calling `on_plan` with the memory plan as soon as it is made (before the timed
/// iterations, which can take long).
pub fn run_with(
    w: &Workload,
    o: &Options,
    on_plan: impl FnOnce(&MemoryPlan),
) -> Result<BenchResult> {
    if o.iters == 0 {
        return Err(Error::InvalidSetting {
            what: "bench iterations",
            reason: "must be >= 1, got 0".into(),
        });
    }
    tch::manual_seed(0);
    metaloop_runtime::device_memory::reset_peak(o.device);
    let mut trainer = trainer(w, o)?;
    let plan = trainer.plan_memory(&o.fixed)?;
    if let Some(p) = &plan {
        on_plan(p);
    }
    let mut times = Vec::with_capacity(o.iters);
    for i in 0..o.warmup + o.iters {
        let started = Instant::now();
        trainer.step()?;
        if let Device::Cuda(index) = o.device {
            tch::Cuda::synchronize(index as i64);
        }
        if i >= o.warmup {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    let workers = trainer.workers();
    let peak_device_mib = metaloop_runtime::device_memory::peak_mib(o.device);
    Ok(BenchResult {
        peer: "metaloop".into(),
        fused: o.fused,
        reproducible: o.reproducible,
        workload: w.name.into(),
        meta_batch: w.meta_batch,
        steps: w.steps,
        memory: plan.as_ref().map_or(o.memory, |p| p.memory),
        algorithm: o.algorithm,
        task_chunk: plan.as_ref().map_or(o.task_chunk, |p| p.task_chunk),
        plan,
        tasks_per_s: w.meta_batch as f64 / median,
        median_s: median,
        peak_mib: match (o.device, peak_device_mib) {
            (Device::Cpu, _) => peak_rss_mib(),
            (_, Some(mib)) => mib,
            (_, None) => f64::NAN,
        },
        peak_device_mib,
        precision: o.precision,
        conv_tasks: o.conv_tasks,
        channels_last: o.channels_last,
        threads: (workers.count * workers.intra_threads) as i32,
        workers: workers.count,
        device: match o.device {
            Device::Cpu => "cpu".into(),
            Device::Cuda(index) => format!("cuda:{index}"),
            other => format!("{other:?}"),
        },
    })
}
