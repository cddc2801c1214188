//! Shared by the layer parity tests (runtime/tests/nn_parity.rs, runtime/tests/nn_layers.rs, runtime/tests/resnet12.rs):
//! the tolerance check and, for the fixtures of tests/fixtures/nn14/gen_nn14.py, checks of a
//! model's forward and of its meta-gradient through 2 inner SGD steps against PyTorch's, in f64
//! at 1e-10.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use metaloop_runtime::nn::{load_starting_weights, Module};
use metaloop_runtime::optim::Sgd;
use metaloop_runtime::{InnerLoop, Params};
use tch::{Device, Kind, Reduction, Tensor};

/// The fixtures' tolerance: f64 against PyTorch.
pub const TOL: f64 = 1e-10;
/// The generator's inner learning rate, forward seed and task count.
const LR: f64 = 0.1;
const FORWARD_SEED: u64 = 7;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/nn14")
        .join(name)
}

pub fn io(case: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture(&format!("{case}.io.safetensors")))
        .unwrap()
        .into_iter()
        .collect()
}

/// The case's state_dict loaded into `model`'s parameters (BatchNorm buffers read as running
/// statistics), f64 on the CPU.
pub fn load(model: &dyn Module, case: &str) -> (Params, metaloop_runtime::nn::BnState) {
    let layout = Arc::new(model.layout().unwrap());
    let path = fixture(&format!("{case}.state.safetensors"));
    let w = load_starting_weights(layout, &path, "", &[], 0, Kind::Double, Device::Cpu).unwrap();
    assert!(w.fresh.is_empty());
    (w.params, w.running)
}

/// Asserts |got - want| <= tol * (1 + |want|) elementwise (absolute near 0, relative for large
/// values such as the summed gradients of shared weights).
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.size(), want.size(), "{what}: shapes differ");
    let got = got.to_device(Device::Cpu).to_kind(Kind::Double);
    let want = want.to_kind(Kind::Double);
    let excess = ((&got - &want).abs() - (want.abs() * tol + tol))
        .max()
        .double_value(&[]);
    let max_diff = (&got - &want).abs().max().double_value(&[]);
    assert!(
        excess <= 0.0,
        "{what}: max |got - want| = {max_diff:e} exceeds tolerance {tol:e}"
    );
}

/// The largest |value| among the fixture's tensors named `prefix.<param>`: gradients of weights
/// are sums of many terms, compared relative to the largest (as runtime/tests/nn_parity.rs explains).
fn scale(io: &HashMap<String, Tensor>, params: &Params, prefix: &str) -> f64 {
    params
        .iter()
        .map(|(n, _)| io[&format!("{prefix}.{n}")].abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

/// Forward in train mode (seed 7 for random layers) and the gradients of
/// `sum(output * loss_weight)` with respect to the input and every parameter.
pub fn check_forward(model: &dyn Module, case: &str) {
    let io = io(case);
    let (params, _) = load(model, case);
    let x = io["input"].set_requires_grad(true);
    let out = model
        .forward_seeded(&params, &x, true, None, &[FORWARD_SEED])
        .unwrap();
    assert_close(&format!("{case} output"), &out, &io["output"], TOL);
    (&out * &io["loss_weight"]).sum(Kind::Double).backward();
    assert_close(
        &format!("{case} grad.input"),
        &x.grad(),
        &io["grad.input"],
        TOL,
    );
    let tol = TOL * (1.0 + scale(&io, &params, "grad"));
    for (name, _) in params.iter() {
        let grad = params.grad(name).expect("a gradient for every parameter");
        assert_close(
            &format!("{case} grad.{name}"),
            &grad,
            &io[&format!("grad.{name}")],
            tol,
        );
    }
}

/// Sum over tasks of each task's mean cross-entropy, for `[T, N, ways]` logits.
fn task_cross_entropy(logits: &Tensor, y: &Tensor) -> Tensor {
    let tasks = logits.size()[0] as f64;
    logits.flatten(0, 1).cross_entropy_loss::<Tensor>(
        &y.flatten(0, 1),
        None,
        Reduction::Mean,
        -100,
        0.0,
    ) * tasks
}

/// The meta-gradient through 2 task-batched inner SGD steps (the InnerLoop) against PyTorch's.
pub fn check_meta_gradient(model: &dyn Module, case: &str) {
    let io = io(case);
    let (params, _) = load(model, case);
    let tasks = io["support_x"].size()[0];
    let seeds = |step: u64| {
        (0..tasks as u64)
            .map(|t| 100 * t + step)
            .collect::<Vec<_>>()
    };
    let mut inner = InnerLoop::new(model, &params, Sgd::new(LR))
        .copy_initial_weights(false)
        .tasks(tasks)
        .build()
        .unwrap();
    for step in 0..2 {
        let logits = model
            .forward_seeded(inner.params(), &io["support_x"], true, None, &seeds(step))
            .unwrap();
        inner
            .step(&task_cross_entropy(&logits, &io["support_y"]))
            .unwrap();
    }
    let logits = model
        .forward_seeded(inner.params(), &io["query_x"], true, None, &seeds(2))
        .unwrap();
    let meta_loss = task_cross_entropy(&logits, &io["query_y"]);
    assert_close(
        &format!("{case} meta_loss"),
        &meta_loss.reshape([1]),
        &io["meta_loss"],
        TOL,
    );
    meta_loss.backward();
    let tol = TOL * (1.0 + scale(&io, &params, "meta_grad"));
    for (name, _) in params.iter() {
        let grad = params
            .grad(name)
            .expect("a meta-gradient for every parameter");
        let want = &io[&format!("meta_grad.{name}")];
        assert_close(&format!("{case} meta_grad.{name}"), &grad, want, tol);
    }
}
