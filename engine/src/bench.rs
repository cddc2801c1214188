//! The benchmark workloads (issue 6) in metaloop, on random inputs of the workloads' shapes, the
//! same ones benches/peers/peers.py runs in higher, torch.func and TorchOpt:
//!
//! - `sinusoid`: MLP 1-40-40-1, K=10 support + 10 query, meta-batch 25, 1 SGD step, lr 0.01.
//! - `omniglot`: Conv-4 (64 filters, BatchNorm with batch statistics), 1×28×28, 5-way 1-shot,
//!   15 query per class, meta-batch 8, 5 SGD steps, lr 0.4.
//! - `omniglot20` (the GPU variant): 20-way 1-shot, meta-batch 32, 5 steps.
//!
//! One timed iteration is second-order MAML on the whole meta-batch (all tasks batched through
//! the InnerLoop), the meta-gradient, and an Adam outer step: what the peers time too. This module
//! measures and returns numbers; it prints nothing.

use crate::workers::Workers;
use crate::{Error, Result};
use metaloop_runtime::nn::{self, Module};
use metaloop_runtime::optim::{Adam, HParams, Optimizer, Sgd};
use metaloop_runtime::{InnerLoop, Params};
use serde::Serialize;
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

struct Batch {
    xs: Tensor,
    ys: Tensor,
    xq: Tensor,
    yq: Tensor,
}

impl Batch {
    /// Tasks `r` (views).
    fn tasks(&self, r: &std::ops::Range<usize>) -> Result<Batch> {
        let cut = |t: &Tensor| t.f_narrow(0, r.start as i64, r.len() as i64);
        Ok(Batch {
            xs: cut(&self.xs)?,
            ys: cut(&self.ys)?,
            xq: cut(&self.xq)?,
            yq: cut(&self.yq)?,
        })
    }
}

fn make_batch(w: &Workload, device: Device) -> Result<Batch> {
    let t = w.meta_batch;
    let opts = (Kind::Float, device);
    if w.ways == 0 {
        let xs = Tensor::f_rand([t, 10, 1], opts)?
            .f_mul_scalar(10.0)?
            .f_sub_scalar(5.0)?;
        let xq = Tensor::f_rand([t, w.queries, 1], opts)?
            .f_mul_scalar(10.0)?
            .f_sub_scalar(5.0)?;
        return Ok(Batch {
            ys: xs.f_sin()?,
            yq: xq.f_sin()?,
            xs,
            xq,
        });
    }
    let labels = |per: i64| -> Result<Tensor> {
        Ok(Tensor::f_arange(w.ways, (Kind::Int64, device))?
            .f_repeat_interleave_self_int(per, 0, None)?
            .f_unsqueeze(0)?
            .f_expand([t, w.ways * per], false)?
            .f_contiguous()?)
    };
    Ok(Batch {
        xs: Tensor::f_rand([t, w.ways, 1, 28, 28], opts)?,
        ys: labels(1)?,
        xq: Tensor::f_rand([t, w.ways * w.queries, 1, 28, 28], opts)?,
        yq: labels(w.queries)?,
    })
}

fn task_loss(pred: &Tensor, y: &Tensor, ways: i64) -> Result<Tensor> {
    if ways == 0 {
        return Ok(pred
            .f_sub(y)?
            .f_square()?
            .f_mean_dim(&[1i64, 2][..], false, Kind::Float)?
            .f_sum(Kind::Float)?);
    }
    let s = pred.size();
    let logp = pred
        .f_reshape([s[0] * s[1], s[2]])?
        .f_log_softmax(-1, Kind::Float)?;
    // Sum over tasks of each task's mean cross-entropy.
    Ok(logp
        .f_gather(1, &y.f_reshape([-1, 1])?, false)?
        .f_neg()?
        .f_sum(Kind::Float)?
        .f_div_scalar(s[1] as f64)?)
}

/// Runs `iters` timed iterations (after `warmup`) of workload `w` on `device`; `fused` picks the
/// fused optimizer kernels (runtime::kernels) or the tensor-op reference path for the inner steps;
/// `workers` (0: automatic) spreads the meta-batch over task-parallel threads with `threads`
/// libtorch threads in all (engine::workers), as training does.
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
    let model: Box<dyn Module> = if w.ways == 0 {
        Box::new(nn::mlp(&[1, 40, 40, 1]))
    } else {
        Box::new(nn::conv4(1, w.ways, 64))
    };
    let theta = Params::init(model.as_ref(), 0, Kind::Float, device)?;
    let workers = Workers::plan(
        workers,
        threads,
        w.meta_batch as usize,
        theta.layout().numel(),
        device,
    );
    let outer = Adam::new(1e-3).fused(fused);
    let outer_hp = HParams::defaults(&outer);
    let mut outer_state = outer.init_state(theta.flat())?;
    let batch = make_batch(w, device)?;
    let mut times = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let started = Instant::now();
        let chunks = workers.chunks(w.meta_batch as usize);
        let inputs = chunks
            .iter()
            .map(|r| Ok((r.len() as i64, theta.clone(), batch.tasks(r)?)))
            .collect::<Result<Vec<_>>>()?;
        let grads = workers.run(inputs, |(tasks, theta, b)| -> Result<Tensor> {
            let mut inner = InnerLoop::new(model.as_ref(), &theta, Sgd::new(w.lr).fused(fused))
                .copy_initial_weights(false)
                .tasks(tasks)
                .build()?;
            for _ in 0..w.steps {
                let loss = task_loss(&inner.forward(&b.xs)?, &b.ys, w.ways)?;
                inner.step(&loss)?;
            }
            let meta = task_loss(&inner.forward(&b.xq)?, &b.yq, w.ways)?
                .f_div_scalar(w.meta_batch as f64)?;
            Ok(Tensor::f_run_backward(&[&meta], &[theta.flat()], false, false)?.remove(0))
        })?;
        let mut g = grads[0].shallow_clone();
        for other in &grads[1..] {
            g = g.f_add(other)?;
        }
        let (next, state) =
            tch::no_grad(|| outer.update(theta.flat(), &g, &outer_state, &outer_hp))?;
        tch::no_grad(|| theta.flat().shallow_clone().f_copy_(&next))?;
        outer_state = state;
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
        if i >= warmup {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
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
