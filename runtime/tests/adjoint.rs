//! Recompute-and-adjoint meta-gradients (runtime::adjoint) against full tracking with InnerLoop:
//! the same meta-loss, meta-gradient w.r.t. θ0 and hypergradients (SGD with momentum, Adam; an MLP
//! and Conv-4 with BatchNorm batch statistics; task-batched), checkpointed segments, MAML++-style
//! per-step meta-losses, frozen parameters, accumulation into `.grad`, a forward pass that keeps
//! no graph, and the errors.
//!
//! Tolerances: the largest element-wise difference divided by the largest magnitude of the
//! reference tensor, 1e-10 in f64 and 1e-6 in f32 (both paths do the same operations but sum the
//! per-step contributions in another order).

use metaloop_runtime::adjoint::{AdjointGradients, MetaGradient};
use metaloop_runtime::nn::{self, Module};
use metaloop_runtime::optim::{Adam, Optimizer, Sgd};
use metaloop_runtime::{Error, InnerLoop, Params};
use tch::{Device, Kind, Tensor};

type Loss = fn(&Tensor, &Tensor) -> Tensor;

/// A model, its initial parameters and task-batched data: one support batch per step (cycled)
/// and a query batch, all `[T, B, ...]`.
struct Workload {
    model: Box<dyn Module>,
    params: Params,
    tasks: i64,
    support: Vec<(Tensor, Tensor)>,
    query: (Tensor, Tensor),
    loss: Loss,
}

/// Mean squared error per task, summed over tasks (`[T, B, out]`).
fn mse(pred: &Tensor, y: &Tensor) -> Tensor {
    let per_task = (pred - y)
        .square()
        .mean_dim(&[1i64, 2][..], false, pred.kind());
    per_task.sum(pred.kind())
}

/// Cross-entropy per task, summed over tasks (logits `[T, B, C]`, labels `[T, B]`).
fn cross_entropy(logits: &Tensor, y: &Tensor) -> Tensor {
    let logp = logits.log_softmax(-1, logits.kind());
    let picked = logp.gather(2, &y.unsqueeze(-1), false).squeeze_dim(-1);
    -picked
        .mean_dim(&[1i64][..], false, logits.kind())
        .sum(logits.kind())
}

fn tanh_mlp() -> nn::Sequential {
    nn::Sequential::new()
        .push(nn::Linear::new(4, 16))
        .push(nn::Tanh)
        .push(nn::Linear::new(16, 16))
        .push(nn::Tanh)
        .push(nn::Linear::new(16, 3))
}

fn mlp_workload(kind: Kind) -> Workload {
    tch::manual_seed(11);
    let model = tanh_mlp();
    let params = Params::init(&model, 3, kind, Device::Cpu).unwrap();
    let t = 3;
    let opts = (kind, Device::Cpu);
    let support = (0..3)
        .map(|_| {
            (
                Tensor::randn([t, 6, 4], opts),
                Tensor::randn([t, 6, 3], opts),
            )
        })
        .collect();
    let query = (
        Tensor::randn([t, 8, 4], opts),
        Tensor::randn([t, 8, 3], opts),
    );
    Workload {
        model: Box::new(model),
        params,
        tasks: t,
        support,
        query,
        loss: mse,
    }
}

/// Conv-4 (4 filters, BatchNorm with batch statistics) on 1×16×16 images, 3-way, two tasks.
fn conv4_workload(kind: Kind) -> Workload {
    tch::manual_seed(5);
    let model = nn::conv4_sized(1, 3, 4, 16);
    let params = Params::init(&model, 9, kind, Device::Cpu).unwrap();
    let t = 2;
    let opts = (kind, Device::Cpu);
    let labels = |b: i64| Tensor::randint(3, [t, b], (Kind::Int64, Device::Cpu));
    let support = (0..2)
        .map(|_| (Tensor::randn([t, 3, 1, 16, 16], opts), labels(3)))
        .collect();
    let query = (Tensor::randn([t, 6, 1, 16, 16], opts), labels(6));
    Workload {
        model: Box::new(model),
        params,
        tasks: t,
        support,
        query,
        loss: cross_entropy,
    }
}

impl Workload {
    fn support_loss(&self, theta: &Params, t: usize) -> metaloop_runtime::Result<Tensor> {
        let (x, y) = &self.support[t % self.support.len()];
        Ok((self.loss)(&self.model.forward(theta, x, true)?, y))
    }

    fn query_loss(&self, theta: &Params) -> metaloop_runtime::Result<Tensor> {
        Ok((self.loss)(
            &self.model.forward(theta, &self.query.0, true)?,
            &self.query.1,
        ))
    }
}

/// A fresh leaf holding `values`.
fn leaf(values: &[f64], kind: Kind) -> Tensor {
    Tensor::from_slice(values)
        .to_kind(kind)
        .set_requires_grad(true)
}

/// Full tracking with InnerLoop (copy_initial_weights(false)): the meta-loss and its gradient
/// w.r.t. the parameters and each override.
fn full_tracking(
    w: &Workload,
    optimizer: Box<dyn Optimizer>,
    overrides: &[(&str, Tensor)],
    frozen: &[&str],
    steps: usize,
) -> (Tensor, Tensor, Vec<Tensor>) {
    let mut builder = InnerLoop::with_boxed(w.model.as_ref(), &w.params, optimizer)
        .copy_initial_weights(false)
        .tasks(w.tasks)
        .freeze(frozen);
    for (name, value) in overrides {
        builder = builder.override_hparam(name, value);
    }
    let mut inner = builder.build().unwrap();
    for t in 0..steps {
        let loss = w.support_loss(inner.params(), t).unwrap();
        inner.step(&loss).unwrap();
    }
    let meta = w.query_loss(inner.params()).unwrap();
    let mut inputs = vec![w.params.flat().shallow_clone()];
    inputs.extend(overrides.iter().map(|(_, v)| v.shallow_clone()));
    let mut grads = Tensor::run_backward(&[&meta], &inputs, false, false);
    let theta0 = grads.remove(0);
    (meta.detach(), theta0, grads)
}

fn adjoint_config(
    w: &Workload,
    optimizer: Box<dyn Optimizer>,
    overrides: &[(&str, Tensor)],
    frozen: &[&str],
) -> MetaGradient {
    let mut config = MetaGradient::with_boxed(optimizer)
        .tasks(w.tasks)
        .freeze(frozen);
    for (name, value) in overrides {
        config = config.override_hparam(name, value);
    }
    config
}

fn adjoint(config: &MetaGradient, w: &Workload, steps: usize) -> AdjointGradients {
    config
        .compute(
            &w.params,
            steps,
            |theta, t| w.support_loss(theta, t),
            |theta| w.query_loss(theta),
        )
        .unwrap()
}

/// max |got − want| ≤ tol · (1 + max |want|): relative for large values, absolute near 0 (a
/// hypergradient such as beta1's is a sum over every parameter of terms that cancel to a value
/// far smaller than the terms, whose f32 rounding differs between the two summation orders by an
/// ulp of the terms, not of the result: seen 2.4e-7 on a value of 0.18).
fn assert_rel(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let scale = want.abs().max().double_value(&[]);
    assert!(scale > 0.0, "{what}: the reference is all zeros");
    let diff = (got - want).abs().max().double_value(&[]);
    assert!(
        diff <= tol * (1.0 + scale),
        "{what}: max |got - want| = {diff:e} > {tol:e} × (1 + {scale:e})"
    );
}

fn tolerance(kind: Kind) -> f64 {
    if kind == Kind::Double {
        1e-10
    } else {
        1e-6
    }
}

/// Compares the adjoint meta-gradient with full tracking's for one configuration.
fn check_against_full_tracking(
    w: &Workload,
    make_optimizer: impl Fn() -> Box<dyn Optimizer>,
    overrides: &[(&str, Tensor)],
    frozen: &[&str],
    steps: usize,
) {
    let tol = tolerance(w.params.kind());
    let (meta, theta0, hyper) = full_tracking(w, make_optimizer(), overrides, frozen, steps);
    let config = adjoint_config(w, make_optimizer(), overrides, frozen);
    let got = adjoint(&config, w, steps);
    assert_rel("meta-loss", &got.meta_loss, &meta, tol);
    assert_rel("meta-gradient θ0", &got.theta0, &theta0, tol);
    assert_eq!(got.hypergradients.len(), overrides.len());
    for ((name, g), ((want_name, _), want)) in
        got.hypergradients.iter().zip(overrides.iter().zip(&hyper))
    {
        assert_eq!(name, want_name);
        assert_rel(&format!("hypergradient {name}"), g, want, tol);
    }
}

fn sgd_momentum() -> Box<dyn Optimizer> {
    Box::new(Sgd::new(0.1).momentum(0.5))
}

fn adam() -> Box<dyn Optimizer> {
    Box::new(Adam::new(0.01))
}

/// lr global `[]`, momentum one per parameter `[G]`.
fn sgd_overrides(w: &Workload) -> Vec<(&'static str, Tensor)> {
    let kind = w.params.kind();
    let groups = w.params.layout().len();
    let momentum: Vec<f64> = (0..groups).map(|i| 0.3 + 0.05 * i as f64).collect();
    vec![
        (
            "lr",
            Tensor::from(0.08).to_kind(kind).set_requires_grad(true),
        ),
        ("momentum", leaf(&momentum, kind)),
    ]
}

/// lr one per element `[P]` (Meta-SGD), beta1 global `[1]`.
fn adam_overrides(w: &Workload) -> Vec<(&'static str, Tensor)> {
    let kind = w.params.kind();
    let p = w.params.layout().numel();
    let lr = (Tensor::rand([p], (Kind::Double, Device::Cpu)) * 0.01 + 0.005).to_kind(kind);
    vec![
        ("lr", lr.set_requires_grad(true)),
        ("beta1", leaf(&[0.85], kind)),
    ]
}

#[test]
fn mlp_sgd_momentum_matches_full_tracking_f64() {
    let w = mlp_workload(Kind::Double);
    check_against_full_tracking(&w, sgd_momentum, &sgd_overrides(&w), &[], 6);
}

#[test]
fn mlp_sgd_momentum_matches_full_tracking_f32() {
    let w = mlp_workload(Kind::Float);
    check_against_full_tracking(&w, sgd_momentum, &sgd_overrides(&w), &[], 6);
}

#[test]
fn mlp_adam_matches_full_tracking_f64() {
    let w = mlp_workload(Kind::Double);
    check_against_full_tracking(&w, adam, &adam_overrides(&w), &[], 5);
}

#[test]
fn mlp_adam_matches_full_tracking_f32() {
    let w = mlp_workload(Kind::Float);
    check_against_full_tracking(&w, adam, &adam_overrides(&w), &[], 5);
}

#[test]
fn conv4_batchnorm_sgd_momentum_matches_full_tracking_f64() {
    let w = conv4_workload(Kind::Double);
    check_against_full_tracking(&w, sgd_momentum, &sgd_overrides(&w), &[], 4);
}

#[test]
fn conv4_batchnorm_sgd_momentum_matches_full_tracking_f32() {
    let w = conv4_workload(Kind::Float);
    check_against_full_tracking(&w, sgd_momentum, &sgd_overrides(&w), &[], 4);
}

#[test]
fn conv4_batchnorm_adam_matches_full_tracking_f64() {
    let w = conv4_workload(Kind::Double);
    check_against_full_tracking(&w, adam, &adam_overrides(&w), &[], 3);
}

#[test]
fn conv4_batchnorm_adam_matches_full_tracking_f32() {
    let w = conv4_workload(Kind::Float);
    check_against_full_tracking(&w, adam, &adam_overrides(&w), &[], 3);
}

#[test]
fn frozen_parameters_match_full_tracking() {
    // ANIL-like: everything but the head frozen; the body still gets its meta-gradient.
    let w = mlp_workload(Kind::Double);
    let frozen = ["0.weight", "0.bias", "2.weight", "2.bias"];
    check_against_full_tracking(&w, sgd_momentum, &sgd_overrides(&w), &frozen, 5);
    let got = adjoint(&adjoint_config(&w, sgd_momentum(), &[], &frozen), &w, 5);
    assert!(got.theta0.abs().sum(Kind::Double).double_value(&[]) > 0.0);
}

#[test]
fn checkpointed_segments_give_the_same_meta_gradient() {
    let w = mlp_workload(Kind::Double);
    let overrides = sgd_overrides(&w);
    let every_step = adjoint(&adjoint_config(&w, sgd_momentum(), &overrides, &[]), &w, 7);
    for k in [2, 3, 7, 10] {
        let config = adjoint_config(&w, sgd_momentum(), &overrides, &[]).checkpoint_interval(k);
        let got = adjoint(&config, &w, 7);
        assert_rel(
            &format!("θ0, interval {k}"),
            &got.theta0,
            &every_step.theta0,
            1e-12,
        );
        for ((name, g), (_, want)) in got.hypergradients.iter().zip(&every_step.hypergradients) {
            assert_rel(&format!("{name}, interval {k}"), g, want, 1e-12);
        }
        let trajectory = config
            .forward(&w.params, 7, |theta, t| w.support_loss(theta, t))
            .unwrap();
        // θ_0, θ_k, ... below 7, then θ_7; one momentum buffer with each stored θ_t below 7.
        let stored = 7usize.div_ceil(k);
        assert_eq!(trajectory.stored_tensors().count(), 2 * stored + 1);
        assert!(trajectory.params_at(0).is_ok());
        assert!(trajectory.params_at(7).is_ok());
        if k > 1 && k < 7 {
            assert!(matches!(
                trajectory.params_at(1),
                Err(Error::HistoryNotTracked { requested: 1, .. })
            ));
        }
    }
}

#[test]
fn forward_keeps_no_graph_and_stores_the_trajectory() {
    let w = conv4_workload(Kind::Float);
    let overrides = sgd_overrides(&w);
    let config = adjoint_config(&w, sgd_momentum(), &overrides, &[]);
    let steps = 4;
    let trajectory = config
        .forward(&w.params, steps, |theta, t| w.support_loss(theta, t))
        .unwrap();
    assert_eq!(trajectory.steps(), steps);
    // θ_0..θ_3 and their momentum buffers, and θ_4.
    assert_eq!(trajectory.stored_tensors().count(), 2 * steps + 1);
    for t in trajectory.stored_tensors() {
        assert!(!t.requires_grad(), "a stored tensor requires grad");
        assert!(t.is_leaf(), "a stored tensor has a grad_fn");
    }
    let p = w.params.layout().numel() as usize;
    let expected_bytes = (2 * steps + 1) * w.tasks as usize * p * 4;
    assert_eq!(trajectory.stored_bytes(), expected_bytes);
    // The stored trajectory is full tracking's.
    let mut inner = InnerLoop::new(w.model.as_ref(), &w.params, Sgd::new(0.1).momentum(0.5))
        .override_hparam("lr", &overrides[0].1)
        .override_hparam("momentum", &overrides[1].1)
        .tasks(w.tasks)
        .build()
        .unwrap();
    for t in 0..steps {
        let loss = w.support_loss(inner.params(), t).unwrap();
        inner.step(&loss).unwrap();
        assert_rel(
            &format!("θ_{}", t + 1),
            trajectory.params_at(t + 1).unwrap().flat(),
            &inner.params().flat().detach(),
            1e-6,
        );
    }
    assert!(matches!(
        trajectory.params_at(steps + 1),
        Err(Error::TimeOutOfRange { .. })
    ));
}

#[test]
fn per_step_meta_losses_match_full_tracking() {
    // MAML++'s multi-step loss: weighted query losses at θ_1..θ_N.
    let w = mlp_workload(Kind::Double);
    let overrides = sgd_overrides(&w);
    let steps = 5;
    let weight = |t: usize| 0.1 * t as f64;
    let mut builder = InnerLoop::new(w.model.as_ref(), &w.params, Sgd::new(0.1).momentum(0.5))
        .copy_initial_weights(false)
        .tasks(w.tasks);
    for (name, value) in &overrides {
        builder = builder.override_hparam(name, value);
    }
    let mut inner = builder.build().unwrap();
    let mut meta = Tensor::zeros([], (Kind::Double, Device::Cpu));
    for t in 0..steps {
        let loss = w.support_loss(inner.params(), t).unwrap();
        inner.step(&loss).unwrap();
        meta += w.query_loss(inner.params()).unwrap() * weight(t + 1);
    }
    let inputs = [
        w.params.flat().shallow_clone(),
        overrides[0].1.shallow_clone(),
        overrides[1].1.shallow_clone(),
    ];
    let want = Tensor::run_backward(&[&meta], &inputs, false, false);

    let config = adjoint_config(&w, sgd_momentum(), &overrides, &[]);
    let trajectory = config
        .forward(&w.params, steps, |theta, t| w.support_loss(theta, t))
        .unwrap();
    let got = config
        .backward(
            trajectory,
            |theta, t| w.support_loss(theta, t),
            |theta, t| {
                if t == 0 {
                    return Ok(None);
                }
                Ok(Some(w.query_loss(theta)? * weight(t)))
            },
        )
        .unwrap();
    assert_rel("meta-loss", &got.meta_loss, &meta.detach(), 1e-10);
    assert_rel("θ0", &got.theta0, &want[0], 1e-10);
    assert_rel("lr", &got.hypergradients[0].1, &want[1], 1e-10);
    assert_rel("momentum", &got.hypergradients[1].1, &want[2], 1e-10);
}

#[test]
fn accumulate_adds_into_grad_like_backward() {
    let w = mlp_workload(Kind::Double);
    let overrides = sgd_overrides(&w);
    let (_, theta0, hyper) = full_tracking(&w, sgd_momentum(), &overrides, &[], 4);
    let got = adjoint(&adjoint_config(&w, sgd_momentum(), &overrides, &[]), &w, 4);
    got.accumulate().unwrap();
    assert_rel("params .grad", &w.params.flat().grad(), &theta0, 1e-10);
    assert_rel("lr .grad", &overrides[0].1.grad(), &hyper[0], 1e-10);
    assert_rel("momentum .grad", &overrides[1].1.grad(), &hyper[1], 1e-10);
}

#[test]
fn task_batched_params_and_single_task_params() {
    let w = mlp_workload(Kind::Double);
    // [T, P] parameters given directly (no `tasks`): the gradient is per task.
    let batched = Params::from_flat(
        w.params.layout().clone(),
        w.params
            .flat()
            .detach()
            .unsqueeze(0)
            .repeat([w.tasks, 1])
            .set_requires_grad(true),
    )
    .unwrap();
    let config = MetaGradient::new(Sgd::new(0.1).momentum(0.5));
    let got = config
        .compute(
            &batched,
            4,
            |theta, t| w.support_loss(theta, t),
            |theta| w.query_loss(theta),
        )
        .unwrap();
    assert_eq!(got.theta0.size(), batched.flat().size());
    let expanded = adjoint(&adjoint_config(&w, sgd_momentum(), &[], &[]), &w, 4);
    assert_rel(
        "Σ over tasks",
        &got.theta0.sum_dim_intlist(&[0i64][..], false, Kind::Double),
        &expanded.theta0,
        1e-12,
    );
    // Single-task [P] parameters with [B, ...] inputs.
    let x = w.support[0].0.get(0);
    let y = w.support[0].1.get(0);
    let single_loss = |theta: &Params| -> metaloop_runtime::Result<Tensor> {
        let pred = w.model.forward(theta, &x, true)?;
        Ok((pred - &y).square().mean(Kind::Double))
    };
    let mut inner = InnerLoop::new(w.model.as_ref(), &w.params, Sgd::new(0.1))
        .copy_initial_weights(false)
        .build()
        .unwrap();
    for _ in 0..3 {
        let loss = single_loss(inner.params()).unwrap();
        inner.step(&loss).unwrap();
    }
    let meta = single_loss(inner.params()).unwrap();
    let want = Tensor::run_backward(&[&meta], &[w.params.flat()], false, false);
    let got = MetaGradient::new(Sgd::new(0.1))
        .compute(&w.params, 3, |theta, _| single_loss(theta), single_loss)
        .unwrap();
    assert_rel("single task θ0", &got.theta0, &want[0], 1e-10);
}

#[test]
fn errors_name_the_problem() {
    let w = mlp_workload(Kind::Double);
    let non_scalar =
        MetaGradient::new(Sgd::new(0.1))
            .tasks(w.tasks)
            .forward(&w.params, 2, |theta, _| {
                w.model.forward(theta, &w.support[0].0, true)
            });
    assert!(matches!(non_scalar, Err(Error::Shape { .. })));
    let unknown = MetaGradient::new(Sgd::new(0.1))
        .freeze(["9.weight"])
        .forward(&w.params, 1, |theta, t| w.support_loss(theta, t));
    assert!(matches!(unknown, Err(Error::UnknownParam { .. })));
    let bad_hparam = MetaGradient::new(Sgd::new(0.1))
        .override_hparam("beta1", &Tensor::from(0.5))
        .forward(&w.params, 1, |theta, t| w.support_loss(theta, t));
    assert!(matches!(bad_hparam, Err(Error::UnknownHparam { .. })));
    let batched = w.params.expand_tasks(2).unwrap();
    let twice = MetaGradient::new(Sgd::new(0.1))
        .tasks(2)
        .forward(&batched, 1, |theta, t| w.support_loss(theta, t));
    assert!(matches!(twice, Err(Error::Shape { .. })));
}
