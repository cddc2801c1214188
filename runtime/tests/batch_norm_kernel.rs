//! runtime::kernels::batch_norm_train (closed-form double backward) against libtorch's own
//! batch_norm in f64: output, first derivatives and second derivatives (through every output
//! of the backward: dx, dweight, dbias, and with respect to x, weight and the upstream dy), in
//! NCHW and channels-last layouts, to 1e-10.

use metaloop_runtime::kernels::batch_norm_train;
use tch::{Device, Kind, Tensor};

/// |got - want| <= tol * (1 + |want|) elementwise.
fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.size(), want.size(), "{what}: shapes differ");
    let diff = (got - want).abs();
    let excess = (&diff - (want.abs() * tol + tol)).max().double_value(&[]);
    assert!(
        excess <= 0.0,
        "{what}: max |got - want| = {:e}",
        diff.max().double_value(&[])
    );
}

/// Values, gradients and second-order gradients of one BatchNorm implementation.
fn derivatives(
    bn: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    up: &Tensor,
    mix: (bool, bool, bool),
) -> Vec<Tensor> {
    let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
    let (x, w, b, up) = (leaf(x), leaf(w), leaf(b), leaf(up));
    let y = bn(&x, &w, &b);
    // A loss whose gradient in y (the upstream dy) itself depends on `up` and on y.
    let loss = (&y * &up).sum(Kind::Double) + (&y * &y * &y).sum(Kind::Double) * 0.1;
    let g = Tensor::run_backward(&[&loss], &[&x, &w, &b], true, true);
    // A function of the gradients, weighted so that each of dx, dw, db matters (or not).
    let mut second = Tensor::zeros([], (Kind::Double, Device::Cpu));
    if mix.0 {
        second = second + (&g[0] * &g[0] * x.cos()).sum(Kind::Double);
    }
    if mix.1 {
        second = second + (&g[1] * &g[1] * 3.0).sum(Kind::Double);
    }
    if mix.2 {
        second = second + (&g[2] * w.sin()).sum(Kind::Double);
    }
    let gg = Tensor::run_backward(&[&second], &[&x, &w, &b, &up], false, true);
    let mut out = vec![y.detach()];
    out.extend(g.iter().map(|t| t.detach()));
    out.extend(gg);
    out
}

#[test]
fn closed_form_double_backward_matches_libtorch() {
    tch::manual_seed(3);
    let names = ["y", "dx", "dw", "db", "d2/dx", "d2/dw", "d2/db", "d2/dup"];
    for channels_last in [false, true] {
        for mix in [
            (true, true, true),
            (true, false, false),
            (false, true, false),
            (false, false, true),
        ] {
            let x = Tensor::randn([5, 4, 6, 7], (Kind::Double, Device::Cpu)) * 2.0 + 0.5;
            let x = if channels_last {
                x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
            } else {
                x
            };
            let w = Tensor::randn([4], (Kind::Double, Device::Cpu)) + 1.0;
            let b = Tensor::randn([4], (Kind::Double, Device::Cpu));
            let up = Tensor::randn([5, 4, 6, 7], (Kind::Double, Device::Cpu));
            let ours = derivatives(
                &|x, w, b| batch_norm_train(x, w, b, 1e-5).unwrap(),
                &x,
                &w,
                &b,
                &up,
                mix,
            );
            let libtorch = derivatives(
                &|x, w, b| {
                    x.batch_norm(
                        Some(w),
                        Some(b),
                        None::<&Tensor>,
                        None::<&Tensor>,
                        true,
                        0.1,
                        1e-5,
                        false,
                    )
                },
                &x,
                &w,
                &b,
                &up,
                mix,
            );
            for ((name, a), b) in names.iter().zip(&ours).zip(&libtorch) {
                let what = format!("{name} (channels_last {channels_last}, {mix:?})");
                match (a.defined(), b.defined()) {
                    (true, true) => assert_close(&what, a, b, 1e-10),
                    // One side may leave a zero gradient undefined.
                    (true, false) => assert_close(&what, a, &a.zeros_like(), 1e-10),
                    (false, true) => assert_close(&what, &b.zeros_like(), b, 1e-10),
                    (false, false) => {}
                }
            }
        }
    }
}

/// Affine parameters of the wrong length (3 for 4 channels) are an error naming the op, not an
/// out-of-bounds read (libtorch's CPU kernel does not check them).
#[test]
fn bad_shapes_are_an_error_not_a_crash() {
    let x = Tensor::randn([2, 4, 3, 3], (Kind::Double, Device::Cpu));
    let w = Tensor::ones([3], (Kind::Double, Device::Cpu));
    let b = Tensor::zeros([3], (Kind::Double, Device::Cpu));
    let err = batch_norm_train(&x, &w, &b, 1e-5).unwrap_err().to_string();
    assert!(err.contains("batch_norm"), "{err}");
}
