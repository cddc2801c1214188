//! The benchmark workloads in metaloop, on random inputs of the workloads' shapes, the
//! same ones benches/peers/peers.py runs in higher, torch.func and TorchOpt:
//!
//! - `sinusoid`: MLP 1-40-40-1, K=10 support + 10 query, meta-batch 25, 1 SGD step, lr 0.01.
//! - `omniglot`: Conv-4 (64 filters, BatchNorm with batch statistics), 1×28×28, 5-way 1-shot,
//!   15 query per class, meta-batch 8, 5 SGD steps, lr 0.4.
//! - `omniglot20` (the GPU variant): 20-way 1-shot, meta-batch 32, 5 steps.
//!
//! One timed iteration is the Trainer's own step ([`Trainer::step`]): second-order MAML on the
//! whole meta-batch (all tasks batched through the InnerLoop), the meta-gradient, and an Adam
//! outer step, what the peers time too; the tasks are served from memory. This module measures
//! and returns numbers; it prints nothing.

use crate::config::TrainConfig;
use crate::data::{MetaBatch, Split, TaskSource};
use crate::loss::{CrossEntropy, Mse};
use crate::train::Trainer;
use crate::{Error, Result};
use metaloop_runtime::nn;
use serde::Serialize;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// A benchmark workload's shapes and inner loop.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub name: &'static str,
    pub meta_batch: i64,
    pub steps: usize,
    pub lr: f64,
    /// 0 for the sinusoid MLP; else classes per task.
    pub ways: i64,
    pub queries: i64,
}

pub const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "sinusoid",
        meta_batch: 25,
        steps: 1,
        lr: 0.01,
        ways: 0,
        queries: 10,
    },
    Workload {
        name: "omniglot",
        meta_batch: 8,
        steps: 5,
        lr: 0.4,
        ways: 5,
        queries: 15,
    },
    Workload {
        name: "omniglot20",
        meta_batch: 32,
        steps: 5,
        lr: 0.4,
        ways: 20,
        queries: 15,
    },
];

/// What one workload measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub peer: String,
    pub workload: String,
    pub tasks_per_s: f64,
    pub median_s: f64,
    /// Peak resident memory of the process (CPU), MiB; NaN where not measured (CUDA).
    pub peak_mib: f64,
    /// libtorch threads in all (workers × intra-op threads each).
    pub threads: i32,
    /// Task-parallel worker threads (engine::workers).
    pub workers: usize,
    /// Fused optimizer kernels (else libtorch's tensor ops) in the inner and outer steps.
    pub fused: bool,
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
                "unknown workload {name:?} (expected sinusoid, omniglot or omniglot20)"
            ),
        })
}

/// Peak resident set size (VmHWM) of this process in MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// The workload's tasks: one random meta-batch of its shapes (made once, on the CPU), served for
/// every iteration and split, so that the timing is the Trainer's step and not data loading.
struct RandomTasks {
    /// Behind a lock because libtorch tensors are not `Sync`; a call takes views of it.
    batch: Mutex<MetaBatch>,
    input: Vec<i64>,
    outputs: usize,
}

impl RandomTasks {
    fn new(w: &Workload) -> Result<RandomTasks> {
        let t = w.meta_batch;
        let opts = (Kind::Float, Device::Cpu);
        let range = 0..t as usize;
        if w.ways == 0 {
            let points = |n: i64| -> Result<Tensor> {
                Ok(Tensor::f_rand([t, n, 1], opts)?
                    .f_mul_scalar(10.0)?
                    .f_sub_scalar(5.0)?)
            };
            let (xs, xq) = (points(10)?, points(w.queries)?);
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
        let batch = MetaBatch {
            support_x: Tensor::f_rand([t, w.ways, 1, 28, 28], opts)?,
            support_y: labels(1)?,
            query_x: Tensor::f_rand([t, w.ways * w.queries, 1, 28, 28], opts)?,
            query_y: labels(w.queries)?,
            iteration: 0,
            tasks: range,
        };
        Ok(RandomTasks {
            batch: Mutex::new(batch),
            input: vec![1, 28, 28],
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

/// The Trainer's config of workload `w`: second-order MAML, SGD inner steps, Adam outer steps.
fn config(w: &Workload, iterations: u64, workers: usize) -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.algorithm.inner_steps = w.steps;
    cfg.algorithm.inner_lr = w.lr;
    cfg.outer.meta_batch = w.meta_batch as usize;
    cfg.outer.iterations = iterations;
    cfg.run.workers = workers;
    cfg.run.consistency_every = 0;
    cfg
}

/// Runs `iters` timed iterations (after `warmup`) of workload `w` on `device`: each one the
/// Trainer's own outer step ([`Trainer::step`]) on the workload's tasks. `fused` picks the fused
/// optimizer kernels (runtime::kernels) or the tensor-op reference path; `workers` (0:
/// automatic) spreads the meta-batch over task-parallel threads with `threads` libtorch threads
/// in all (engine::workers), as training does.
pub fn run(
    w: &Workload,
    iters: usize,
    warmup: usize,
    device: Device,
    fused: bool,
    workers: usize,
    threads: usize,
) -> Result<BenchResult> {
    tch::manual_seed(0);
    let cfg = config(w, (warmup + iters) as u64, workers);
    let builder = Trainer::builder(&cfg)
        .tasks(RandomTasks::new(w)?)
        .device(device)
        .threads(threads)
        .fused(fused);
    let mut trainer = if w.ways == 0 {
        builder.model(nn::mlp(&[1, 40, 40, 1])).loss(Mse).build()?
    } else {
        builder
            .model(nn::conv4(1, w.ways, 64))
            .loss(CrossEntropy)
            .build()?
    };
    let mut times = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let started = Instant::now();
        trainer.step()?;
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
        if i >= warmup {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    let workers = trainer.workers();
    Ok(BenchResult {
        peer: "metaloop".into(),
        fused,
        workload: w.name.into(),
        tasks_per_s: w.meta_batch as f64 / median,
        median_s: median,
        peak_mib: if device == Device::Cpu {
            peak_rss_mib()
        } else {
            f64::NAN
        },
        threads: (workers.count * workers.intra_threads) as i32,
        workers: workers.count,
        device: match device {
            Device::Cpu => "cpu".into(),
            Device::Cuda(index) => format!("cuda:{index}"),
            other => format!("{other:?}"),
        },
    })
}
