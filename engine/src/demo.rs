//! A first small meta-training, run by `cargo xtask demo` until the full training loop
//! (configs, run directories, checkpoints) replaces it: second-order MAML on the MAML paper's
//! sinusoid regression, MLP 1-40-40-1, all tasks of a meta-batch in one batched pass.
//!
//! It writes nothing and prints nothing; the launcher shows progress and the report.

use tch::{Device, Kind, Tensor};

/// The demo's settings (the MAML paper's sinusoid values).
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub seed: i64,
    pub iterations: u64,
    pub meta_batch: i64,
    pub shots: i64,
    pub inner_lr: f64,
    pub meta_lr: f64,
    pub test_tasks: i64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        // Finn et al. 2017, sec. 5.1: K=10, one gradient step of size 0.01, meta-batch 25, Adam.
        DemoConfig {
            seed: 0,
            iterations: 6000,
            meta_batch: 25,
            shots: 10,
            inner_lr: 0.01,
            meta_lr: 1e-3,
            test_tasks: 600,
        }
    }
}

/// Mean and 95% confidence half-width over the meta-test tasks.
#[derive(Debug, Clone, Copy)]
pub struct MeanCi {
    pub mean: f64,
    pub ci95: f64,
}

/// What the demo measured on held-out tasks.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub pre_adaptation_mse: MeanCi,
    pub post_adaptation_mse: MeanCi,
    pub final_meta_loss: f64,
}

const HIDDEN: i64 = 40;
// Flat layout: w1 [40,1], b1 [40], w2 [40,40], b2 [40], w3 [1,40], b3 [1].
const SHAPES: [&[i64]; 6] = [
    &[HIDDEN, 1],
    &[HIDDEN],
    &[HIDDEN, HIDDEN],
    &[HIDDEN],
    &[1, HIDDEN],
    &[1],
];
// The fan-in of the layer each tensor belongs to.
const FAN_IN: [i64; 6] = [1, 1, HIDDEN, HIDDEN, HIDDEN, HIDDEN];

fn numel(shape: &[i64]) -> i64 {
    shape.iter().product()
}

/// PyTorch's default Linear init: U(±1/sqrt(fan_in)) for weights and biases alike.
fn init_params() -> Result<Tensor, tch::TchError> {
    let mut parts = Vec::new();
    for (shape, fan_in) in SHAPES.iter().zip(FAN_IN) {
        let bound = 1.0 / (fan_in as f64).sqrt();
        parts.push(
            Tensor::f_rand([numel(shape)], (Kind::Float, Device::Cpu))? * (2.0 * bound) - bound,
        );
    }
    Ok(Tensor::f_cat(&parts, 0)?.set_requires_grad(true))
}

/// The MLP on task-batched params [T, P] and inputs [T, N, 1].
fn forward(theta: &Tensor, x: &Tensor) -> Result<Tensor, tch::TchError> {
    let t = theta.size()[0];
    let mut offset = 0;
    let mut views = Vec::new();
    for shape in SHAPES {
        let n = numel(shape);
        let mut s = vec![t];
        s.extend_from_slice(shape);
        views.push(theta.f_narrow(1, offset, n)?.f_view(s.as_slice())?);
        offset += n;
    }
    let linear = |h: &Tensor, w: &Tensor, b: &Tensor| -> Result<Tensor, tch::TchError> {
        h.f_matmul(&w.f_transpose(1, 2)?)?.f_add(&b.f_unsqueeze(1)?)
    };
    let h = linear(x, &views[0], &views[1])?.f_relu()?;
    let h = linear(&h, &views[2], &views[3])?.f_relu()?;
    linear(&h, &views[4], &views[5])
}

/// Sum over tasks of each task's mean squared error, so each task's gradient is its own.
fn task_mse(pred: &Tensor, y: &Tensor) -> Result<Tensor, tch::TchError> {
    pred.f_sub(y)?
        .f_square()?
        .f_mean_dim(&[1i64, 2][..], false, Kind::Float)
}

/// T sinusoid tasks: (support x, support y, query x, query y), each [T, K, 1].
fn sample_tasks(t: i64, k: i64) -> Result<[Tensor; 4], tch::TchError> {
    let opts = (Kind::Float, Device::Cpu);
    let amplitude = Tensor::f_rand([t, 1, 1], opts)? * 4.9 + 0.1;
    let phase = Tensor::f_rand([t, 1, 1], opts)? * std::f64::consts::PI;
    let xs = Tensor::f_rand([t, k, 1], opts)? * 10.0 - 5.0;
    let xq = Tensor::f_rand([t, k, 1], opts)? * 10.0 - 5.0;
    let ys = (&xs - &phase).f_sin()? * &amplitude;
    let yq = (&xq - &phase).f_sin()? * &amplitude;
    Ok([xs, ys, xq, yq])
}

/// One inner SGD step on the support set; `create_graph` keeps it differentiable (second order).
fn adapt(
    theta: &Tensor,
    xs: &Tensor,
    ys: &Tensor,
    lr: f64,
    create_graph: bool,
) -> Result<Tensor, tch::TchError> {
    let loss = task_mse(&forward(theta, xs)?, ys)?.f_sum(Kind::Float)?;
    let g = Tensor::f_run_backward(&[&loss], &[theta], true, create_graph)?.remove(0);
    theta.f_sub(&(g * lr))
}

fn mean_ci(v: &Tensor) -> Result<MeanCi, tch::TchError> {
    let n = v.size()[0] as f64;
    let mean = v.f_mean(Kind::Double)?.f_double_value(&[])?;
    let std = v.f_std(true)?.f_double_value(&[])?;
    Ok(MeanCi {
        mean,
        ci95: 1.96 * std / n.sqrt(),
    })
}

/// Meta-trains, then meta-tests on `test_tasks` new tasks. `progress(iteration, meta_loss)` is
/// called after each outer step.
pub fn run(
    cfg: &DemoConfig,
    mut progress: impl FnMut(u64, f64),
) -> Result<DemoReport, tch::TchError> {
    tch::manual_seed(cfg.seed);
    let mut theta0 = init_params()?;
    let p = theta0.size()[0];
    // Adam on the flat meta-parameters (PyTorch's defaults: betas 0.9, 0.999, eps 1e-8).
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let mut m = Tensor::f_zeros([p], (Kind::Float, Device::Cpu))?;
    let mut v = Tensor::f_zeros([p], (Kind::Float, Device::Cpu))?;
    let mut last = f64::NAN;
    for it in 1..=cfg.iterations {
        let [xs, ys, xq, yq] = sample_tasks(cfg.meta_batch, cfg.shots)?;
        let theta = theta0
            .f_unsqueeze(0)?
            .f_expand([cfg.meta_batch, p], false)?;
        let adapted = adapt(&theta, &xs, &ys, cfg.inner_lr, true)?;
        let meta_loss = task_mse(&forward(&adapted, &xq)?, &yq)?.f_mean(Kind::Float)?;
        let g = Tensor::f_run_backward(&[&meta_loss], &[&theta0], false, false)?.remove(0);
        tch::no_grad(|| -> Result<(), tch::TchError> {
            m = (&m * b1).f_add(&(&g * (1.0 - b1)))?;
            v = (&v * b2).f_add(&(g.f_square()? * (1.0 - b2)))?;
            let step = cfg.meta_lr / (1.0 - b1.powi(it as i32));
            let denom = (&v / (1.0 - b2.powi(it as i32))).f_sqrt()? + eps;
            let _ = theta0.f_sub_(&(&m / denom * step))?;
            Ok(())
        })?;
        last = meta_loss.f_double_value(&[])?;
        progress(it, last);
    }
    // Meta-test on new tasks: the query MSE at θ0 and after one inner step on the support set.
    let [xs, ys, xq, yq] = sample_tasks(cfg.test_tasks, cfg.shots)?;
    let theta = theta0
        .f_detach()?
        .f_unsqueeze(0)?
        .f_expand([cfg.test_tasks, p], false)?
        .f_contiguous()?
        .set_requires_grad(true);
    let pre = tch::no_grad(|| task_mse(&forward(&theta, &xq)?, &yq))?;
    let adapted = adapt(&theta, &xs, &ys, cfg.inner_lr, false)?;
    let post = tch::no_grad(|| task_mse(&forward(&adapted, &xq)?, &yq))?;
    Ok(DemoReport {
        pre_adaptation_mse: mean_ci(&pre)?,
        post_adaptation_mse: mean_ci(&post)?,
        final_meta_loss: last,
    })
}
