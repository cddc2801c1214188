//! Smoke test of the autograd stack: the meta-gradient through one differentiable SGD step, taken
//! with libtorch's double backward, equals its closed form.

use tch::{Kind, Tensor};

#[test]
fn second_order_gradient_through_one_sgd_step_matches_closed_form() {
    // Inner loss L(w) = sum(w^4) / 4, so dL/dw = w^3 and d2L/dw2 = 3 w^2 (not constant: a
    // first-order gradient would differ). One SGD step: w1 = w0 - lr * w0^3.
    // Meta-loss M = sum((w1 - t)^2).
    //   dM/dw0 = 2 (w1 - t) (1 - 3 lr w0^2)
    //   dM/dlr = -2 sum((w1 - t) w0^3)
    let w0_vals = [0.5f64, -1.25, 2.0];
    let t_vals = [1.0f64, 0.0, -0.5];
    let lr_val = 0.1f64;

    let w0 = Tensor::from_slice(&w0_vals).set_requires_grad(true);
    let lr = Tensor::from_slice(&[lr_val]).set_requires_grad(true);
    let target = Tensor::from_slice(&t_vals);

    let inner_loss = (w0.pow_tensor_scalar(4) / 4.0).sum(Kind::Double);
    let g = Tensor::run_backward(&[&inner_loss], &[&w0], true, true)
        .pop()
        .unwrap();
    let w1 = &w0 - &lr * g;
    let meta_loss = (&w1 - &target).square().sum(Kind::Double);
    let grads = Tensor::run_backward(&[&meta_loss], &[&w0, &lr], false, false);

    let got_w0 = Vec::<f64>::try_from(&grads[0]).unwrap();
    let got_lr = grads[1].double_value(&[0]);

    let mut want_lr = 0.0;
    for i in 0..3 {
        let w = w0_vals[i];
        let w1 = w - lr_val * w.powi(3);
        let want = 2.0 * (w1 - t_vals[i]) * (1.0 - 3.0 * lr_val * w * w);
        assert!(
            (got_w0[i] - want).abs() < 1e-12,
            "dM/dw0[{i}]: {} vs {want}",
            got_w0[i]
        );
        want_lr += -2.0 * (w1 - t_vals[i]) * w.powi(3);
    }
    assert!(
        (got_lr - want_lr).abs() < 1e-12,
        "dM/dlr: {got_lr} vs {want_lr}"
    );
}
