//! The higher toy example (examples/higher_toy.rs) prints the same parameter history, meta-losses
//! and gradients (weight, lr, momentum) as higher on the same data
//! (tests/fixtures/higher/toy.safetensors, from gen_higher.py).

#[path = "../examples/higher_toy.rs"]
#[allow(dead_code)]
mod toy;

use std::collections::HashMap;
use tch::Tensor;

fn fixture() -> HashMap<String, Tensor> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/higher/toy.safetensors"
    );
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn value(fx: &HashMap<String, Tensor>, key: &str) -> Vec<f64> {
    let t = fx.get(key).unwrap_or_else(|| panic!("fixture key {key}"));
    Vec::<f64>::try_from(&t.to_kind(tch::Kind::Double).reshape([-1])).unwrap()
}

fn close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: {got} vs higher's {want} (|diff| {:e} > {tol:e})",
        (got - want).abs()
    );
}

#[test]
fn toy_example_prints_what_higher_prints() {
    let fx = fixture();
    let toy = toy::toy();
    for (i, run) in toy.runs.iter().enumerate() {
        let r = i + 1;
        let history = value(&fx, &format!("run{r}.history"));
        assert_eq!(run.history.len(), history.len());
        for (j, (g, w)) in run.history.iter().zip(&history).enumerate() {
            close(&format!("run {r} w at time {j}"), *g, *w, 1e-12);
        }
        close(
            &format!("run {r} meta-loss"),
            run.meta_loss,
            value(&fx, &format!("run{r}.meta_loss"))[0],
            1e-12,
        );
        // The lr and momentum tensors are float32, as in the original example: their gradients are rounded to
        // f32 (relative precision 6e-8), hence a relative tolerance of 1e-6.
        let lr_grad = value(&fx, &format!("run{r}.lr_grad"))[0];
        close(
            &format!("run {r} lr gradient"),
            run.lr_grad,
            lr_grad,
            1e-6 * lr_grad.abs().max(1.0),
        );
        let mom_grad = value(&fx, &format!("run{r}.momentum_grad"))[0];
        close(
            &format!("run {r} momentum gradient"),
            run.momentum_grad,
            mom_grad,
            1e-6 * mom_grad.abs().max(1.0),
        );
    }
    assert!(
        toy.weight_grad_after_run1.is_none(),
        "copy_initial_weights(true) must leave w without a gradient"
    );
    close(
        "w gradient after run 2",
        toy.weight_grad_after_run2,
        value(&fx, "run2.weight_grad")[0],
        1e-12,
    );
    close(
        "w after the outer step",
        toy.weight_after_meta_step,
        value(&fx, "w_after_meta_step")[0],
        1e-15,
    );
    // The finite difference divides a difference of meta-losses of order 1e-9 by a step of
    // order 1e-7: it keeps about 7 significant digits, so compare it at 1e-6 relative.
    let fd = value(&fx, "fd_approximation")[0];
    close(
        "finite-difference approximation",
        toy.fd_approximation,
        fd,
        1e-6 * fd.abs(),
    );
    close(
        "finite difference vs meta-gradient",
        toy.fd_approximation,
        toy.weight_grad_after_run2,
        1e-4 * fd.abs(),
    );
}
