//! Peak memory of a long inner unroll on the omniglot workload of issue 6: full tracking
//! (`InnerLoop`, every step's graph kept until the meta-backward) against recompute-and-adjoint
//! (`runtime::adjoint::MetaGradient`, only the parameter trajectory kept).
//!
//! Workload: Conv-4 (64 filters, BatchNorm with batch statistics), 1×28×28 inputs, 5-way 1-shot,
//! 15 queries per class, meta-batch 8 (task-batched `[8, P]`), SGD lr 0.4, random inputs, f32,
//! 2 threads. Run each mode in its own process, since peak RSS (VmHWM) only grows:
//!
//! ```text
//! cargo run --release --example unroll_memory -- --mode full --steps 100
//! cargo run --release --example unroll_memory -- --mode adjoint --steps 100 [--interval 10]
//! ```
//!
//! `--interval K` stores θ_t every K steps and recomputes the segments (`checkpoint_interval`).
//! `--task-chunk C` runs the meta-batch C tasks at a time (each chunk one `[C, P]` unroll, the
//! meta-gradients summed; tasks are independent, so the sum is the meta-batch's meta-gradient):
//! with C = 1 the query pass and the rebuilt step hold one task's activations, as in higher's
//! loop over tasks. The default is the whole meta-batch in one call (C = 8).
//!
//! It prints one line: the mode, steps, seconds, VmHWM before the unroll and at the end (MiB),
//! the bytes of the stored trajectory (adjoint), the meta-loss and the meta-gradient's norm (the
//! last two agree between the modes).

use metaloop::runtime::adjoint::MetaGradient;
use metaloop::runtime::nn::{self, Module};
use metaloop::runtime::optim::Sgd;
use metaloop::runtime::{InnerLoop, Params, Result};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const WAYS: i64 = 5;
const SHOTS: i64 = 1;
const QUERIES: i64 = 15;
const META_BATCH: i64 = 8;
const FILTERS: i64 = 64;
const LR: f64 = 0.4;

/// Peak resident set size of this process (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Cross-entropy per task, summed over tasks (logits `[T, B, C]`, labels `[T, B]`).
fn cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    let logp = logits.f_log_softmax(-1, Kind::Float)?;
    let picked = logp.f_gather(2, &y.f_unsqueeze(-1)?, false)?;
    Ok(picked
        .f_mean_dim(&[1i64, 2][..], false, Kind::Float)?
        .f_sum(Kind::Float)?
        .f_neg()?)
}

struct Args {
    mode: String,
    steps: usize,
    interval: usize,
    task_chunk: i64,
}

fn parse_args() -> Args {
    let mut args = Args {
        mode: "adjoint".into(),
        steps: 100,
        interval: 1,
        task_chunk: META_BATCH,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--mode" => args.mode = value,
            "--steps" => args.steps = value.parse().expect("--steps takes a number"),
            "--interval" => args.interval = value.parse().expect("--interval takes a number"),
            "--task-chunk" => {
                args.task_chunk = value.parse().expect("--task-chunk takes a number");
                assert!(args.task_chunk >= 1, "--task-chunk is at least 1");
            }
            other => {
                panic!("unknown flag {other}; use --mode full|adjoint --steps N [--interval K]")
            }
        }
    }
    assert!(
        args.mode == "full" || args.mode == "adjoint",
        "--mode is full or adjoint"
    );
    args
}

fn main() -> Result<()> {
    let args = parse_args();
    tch::set_num_threads(2);
    tch::manual_seed(0);
    let opts = (Kind::Float, Device::Cpu);
    let model = nn::conv4(1, WAYS, FILTERS);
    let params = Params::init(&model, 0, Kind::Float, Device::Cpu)?;
    let support_x = Tensor::randn([META_BATCH, WAYS * SHOTS, 1, 28, 28], opts);
    let support_y = Tensor::arange(WAYS, (Kind::Int64, Device::Cpu))
        .repeat_interleave_self_int(SHOTS, 0, None)
        .unsqueeze(0)
        .repeat([META_BATCH, 1]);
    let query_x = Tensor::randn([META_BATCH, WAYS * QUERIES, 1, 28, 28], opts);
    let query_y = Tensor::arange(WAYS, (Kind::Int64, Device::Cpu))
        .repeat_interleave_self_int(QUERIES, 0, None)
        .unsqueeze(0)
        .repeat([META_BATCH, 1]);
    let before = peak_rss_mib();
    let start = Instant::now();
    let mut meta_loss = Tensor::zeros([], opts);
    let mut grad = params.flat().zeros_like();
    let mut stored = 0;
    // Tasks are independent, so the meta-gradient of the meta-batch is the sum of the chunks'.
    for first in (0..META_BATCH).step_by(args.task_chunk as usize) {
        let chunk = args.task_chunk.min(META_BATCH - first);
        let (sx, sy) = (
            support_x.narrow(0, first, chunk),
            support_y.narrow(0, first, chunk),
        );
        let (qx, qy) = (
            query_x.narrow(0, first, chunk),
            query_y.narrow(0, first, chunk),
        );
        let support_loss = |theta: &Params, _t: usize| -> Result<Tensor> {
            cross_entropy(&model.forward(theta, &sx, true)?, &sy)
        };
        let query_loss = |theta: &Params| -> Result<Tensor> {
            cross_entropy(&model.forward(theta, &qx, true)?, &qy)
        };
        let (m, g) = if args.mode == "full" {
            let mut inner = InnerLoop::new(&model, &params, Sgd::new(LR))
                .copy_initial_weights(false)
                .tasks(chunk)
                .build()?;
            for t in 0..args.steps {
                let loss = support_loss(inner.params(), t)?;
                inner.step(&loss)?;
            }
            let meta = query_loss(inner.params())?;
            let g = Tensor::f_run_backward(&[&meta], &[params.flat()], false, false)?.remove(0);
            (meta.f_detach()?, g)
        } else {
            let config = MetaGradient::new(Sgd::new(LR))
                .tasks(chunk)
                .checkpoint_interval(args.interval);
            let trajectory = config.forward(&params, args.steps, support_loss)?;
            stored = stored.max(trajectory.stored_bytes());
            let out = config.backward(trajectory, support_loss, |theta, t| {
                if t == args.steps {
                    query_loss(theta).map(Some)
                } else {
                    Ok(None)
                }
            })?;
            (out.meta_loss, out.theta0)
        };
        meta_loss += m;
        grad += g;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "mode={} steps={} interval={} task_chunk={} seconds={:.1} vmhwm_before_mib={:.0} \
         vmhwm_mib={:.0} trajectory_mib={:.1} meta_loss={:.6} grad_norm={:.6e}",
        args.mode,
        args.steps,
        if args.mode == "full" {
            0
        } else {
            args.interval
        },
        args.task_chunk,
        seconds,
        before,
        peak_rss_mib(),
        stored as f64 / (1024.0 * 1024.0),
        meta_loss.f_double_value(&[])?,
        grad.f_norm()?.f_double_value(&[])?,
    );
    Ok(())
}
