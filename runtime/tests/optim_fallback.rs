//! An optimizer without a fused kernel: RAdam, added as one file (runtime/src/optim/radam.rs).
//! Its steps take the tensor-op path with `fused(true)` too, equal torch.optim.RAdam 2.11.0
//! (fixtures from tests/fixtures/radam/gen_radam.py), and a β2 tensor takes the per-element
//! branch with the values of the constant one and finite hypergradients.

use metaloop_runtime::kernels::StepKernel;
use metaloop_runtime::optim::{HParams, HValue, OptState, Optimizer, RAdam, Sgd};
use std::collections::HashMap;
use tch::{Kind, Tensor};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/radam");
const STEPS: i64 = 10;

/// The configurations of gen_radam.py, by the same names.
fn radam_for(config: &str) -> RAdam {
    match config {
        "radam_plain" => RAdam::new(0.01),
        "radam_betas" => RAdam::new(0.02).betas(0.8, 0.99).eps(1e-6),
        "radam_weight_decay" => RAdam::new(0.01).weight_decay(0.1),
        "radam_decoupled" => RAdam::new(0.01)
            .weight_decay(0.1)
            .decoupled_weight_decay(true),
        other => panic!("unknown configuration {other}"),
    }
}

const CONFIGS: [&str; 4] = [
    "radam_plain",
    "radam_betas",
    "radam_weight_decay",
    "radam_decoupled",
];

fn fixture(file: &str) -> HashMap<String, Tensor> {
    let path = format!("{FIXTURES}/{file}");
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (run gen_radam.py)"))
        .into_iter()
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// θ after each of the fixture's steps, `[STEPS, P]`.
fn trajectory(opt: &dyn Optimizer, theta0: &Tensor, grads: &Tensor, hp: &HParams) -> Tensor {
    let mut theta = theta0.shallow_clone();
    let mut state: OptState = opt.init_state(&theta).unwrap();
    let mut rows = Vec::new();
    for t in 0..STEPS {
        let (next, next_state) = opt.update(&theta, &grads.get(t), &state, hp).unwrap();
        rows.push(next.shallow_clone());
        theta = next;
        state = next_state;
    }
    Tensor::stack(&rows, 0)
}

fn check(file: &str, tol: f64) {
    let f = fixture(file);
    let (theta0, grads) = (&f["theta0"], &f["grads"]);
    for config in CONFIGS {
        let expected = &f[config];
        let unfused = radam_for(config);
        let fused = radam_for(config).fused(true);
        let hp = HParams::defaults(&unfused);
        let a = trajectory(&unfused, theta0, grads, &hp);
        let b = trajectory(&fused, theta0, grads, &hp);
        let diff = max_abs_diff(&a, expected);
        assert!(
            diff <= tol,
            "{file} {config}: differs from torch.optim.RAdam by {diff:e} (tolerance {tol:e})"
        );
        // The same path: `fused(true)` falls back to the tensor ops, bit for bit.
        assert_eq!(max_abs_diff(&a, &b), 0.0, "{file} {config}: fused(true)");
    }
}

#[test]
fn radam_equals_torch_optim_radam_in_f64() {
    check("radam_f64.safetensors", 1e-10);
}

#[test]
fn radam_equals_torch_optim_radam_in_f32() {
    check("radam_f32.safetensors", 1e-6);
}

#[test]
fn an_optimizer_without_a_kernel_says_so_and_one_with_a_kernel_names_it() {
    assert_eq!(RAdam::new(0.01).fused(true).fused_kernel(), None);
    assert_eq!(Sgd::new(0.1).fused_kernel(), Some(StepKernel::Sgd));
}

/// A β2 tensor (per-element branch, `where`) gives the constant branch's values, and its
/// hypergradient is finite through the steps where ρt ≤ 5 too.
#[test]
fn a_beta2_tensor_takes_the_per_element_branch_with_the_same_values() {
    let f = fixture("radam_f64.safetensors");
    let (theta0, grads) = (&f["theta0"], &f["grads"]);
    let opt = RAdam::new(0.01);
    let constant = trajectory(&opt, theta0, grads, &HParams::defaults(&opt));
    let beta2 = Tensor::from_slice(&[0.999f64]).set_requires_grad(true);
    let mut hp = HParams::defaults(&opt);
    hp.set("beta2", HValue::Tensor(beta2.shallow_clone()))
        .unwrap();
    let tracked = trajectory(&opt, theta0, grads, &hp);
    let diff = max_abs_diff(&tracked, &constant);
    assert!(diff <= 1e-10, "β2 tensor against constant: {diff:e}");
    let first = tracked.get(0).sum(Kind::Double);
    let g1 = Tensor::run_backward(&[&first], &[&beta2], true, false);
    assert!(
        g1[0].isfinite().all().int64_value(&[]) == 1,
        "d θ1 / d β2 is not finite"
    );
    let last = tracked.get(STEPS - 1).sum(Kind::Double);
    let g = Tensor::run_backward(&[&last], &[&beta2], false, false);
    let g = g[0].double_value(&[0]);
    assert!(g.is_finite() && g != 0.0, "d θ{STEPS} / d β2 = {g}");
}
