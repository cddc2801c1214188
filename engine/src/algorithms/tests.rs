//! The algorithms' meta-gradients against independent computations: iMAML's against the closed
//! form of a quadratic support loss and against finite differences of its meta-objective, its
//! peak memory against the number of inner steps, and MAML++'s derivative-order annealing
//! against first- and second-order MAML.

use metaloop_runtime::nn::{self, Module};
use metaloop_runtime::Params;
use tch::{Device, Kind, Tensor};

use super::{Algorithm, Shard};
use crate::config::{AlgorithmConfig, AlgorithmName};
use crate::data::{MetaBatch, Sinusoid, Split, TaskSource};
use crate::loss::{CrossEntropy, Loss, Mse};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

pub(super) fn shard<'a>(
    cfg: &'a AlgorithmConfig,
    model: &'a dyn Module,
    loss: &'a dyn Loss,
    theta: &Params,
    iteration: u64,
    tasks: usize,
) -> Shard<'a> {
    Shard {
        algorithm: cfg,
        iterations: 1000,
        model,
        loss,
        kind: theta.kind(),
        device: Device::Cpu,
        theta: theta.clone(),
        learned: Vec::new(),
        frozen: &[],
        iteration,
        fused: false,
        seeds: vec![0; tasks],
        bn: super::BnMode::Batch,
        clips: Default::default(),
    }
}

fn imaml(lambda: f64, steps: usize, lr: f64, cg_steps: usize) -> AlgorithmConfig {
    AlgorithmConfig {
        name: AlgorithmName::Imaml,
        imaml_lambda: lambda,
        inner_steps: steps,
        inner_lr: lr,
        cg_steps,
        ..AlgorithmConfig::default()
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    a.f_sub(b).unwrap().abs().max().double_value(&[])
}

/// `[x, 1]`: the design matrix of a linear model's weight and bias, `[T, N, 4]`.
fn design(x: &Tensor) -> Tensor {
    let ones = x.ones_like().narrow(2, 0, 1);
    Tensor::cat(&[x, &ones], 2)
}

/// A linear model (Linear(3, 1)) with the mean squared error: each task's support loss
/// (1/N) ‖A φ − y‖² is quadratic with Hessian H = 2AᵀA/N. The proximal solution is
/// φ* = (H + λI)⁻¹ (2Aᵀy/N + λθ0) and the implicit meta-gradient (I + H/λ)⁻¹ ∇L_query(φ*),
/// both by linear solves here; iMAML must reach them by its inner loop and conjugate gradient.
#[test]
fn imaml_matches_the_closed_form_on_a_quadratic_support_loss() {
    tch::manual_seed(7);
    let (t, n, m, lambda) = (3i64, 6i64, 5i64, 0.8);
    let model = nn::mlp(&[3, 1]);
    let theta = Params::init(&model, 3, Kind::Double, Device::Cpu).unwrap();
    let batch = MetaBatch {
        support_x: Tensor::randn([t, n, 3], F64),
        support_y: Tensor::randn([t, n, 1], F64),
        query_x: Tensor::randn([t, m, 3], F64),
        query_y: Tensor::randn([t, m, 1], F64),
        iteration: 0,
        tasks: 0..t as usize,
    };
    // Independent: the normal equations, in the layout's order (weight [1, 3], then bias).
    let (a, b) = (design(&batch.support_x), design(&batch.query_x));
    let h = a.transpose(1, 2).matmul(&a).multiply_scalar(2.0 / n as f64);
    let eye = Tensor::eye(4, F64).unsqueeze(0);
    let theta0 = theta.flat().detach().unsqueeze(0).unsqueeze(2);
    let rhs = a
        .transpose(1, 2)
        .matmul(&batch.support_y)
        .multiply_scalar(2.0 / n as f64)
        + theta0.multiply_scalar(lambda);
    let phi = Tensor::linalg_solve(&(&h + eye.multiply_scalar(lambda)), &rhs, true);
    let grad_query = b
        .transpose(1, 2)
        .matmul(&(b.matmul(&phi) - &batch.query_y))
        .multiply_scalar(2.0 / m as f64);
    let v = Tensor::linalg_solve(&(&eye + h.divide_scalar(lambda)), &grad_query, true);
    let want = v
        .sum_dim_intlist(&[0i64][..], false, Kind::Double)
        .squeeze_dim(1)
        / 4.0;

    // Gradient descent at 1/(largest eigenvalue of H + λI) contracts by at least
    // 1 − λ/(μ_max + λ) a step: 2000 steps reach φ* to rounding.
    let mu_max = h.linalg_eigvalsh("L").max().double_value(&[]);
    let cfg = imaml(lambda, 2000, 1.0 / (mu_max + lambda), 8);
    let got = super::imaml::Imaml
        .meta_gradient(&shard(&cfg, &model, &Mse, &theta, 0, 3), &batch, 4.0)
        .unwrap();
    let err = max_abs_diff(&got.grads[0], &want);
    // 1e-8 in f64, as the issue asks (measured: 3e-16).
    assert!(
        err < 1e-8,
        "iMAML {:?} vs closed form {want:?}: {err:e}",
        got.grads[0]
    );
    assert!(
        want.abs().max().double_value(&[]) > 1e-2,
        "a vanishing meta-gradient"
    );
}

/// MAML's sinusoid MLP 1-40-40-1 with tanh instead of ReLU: a twice-differentiable support
/// loss, which the implicit function theorem needs.
fn tanh_mlp() -> nn::Sequential {
    nn::Sequential::new()
        .push(nn::Linear::new(1, 40))
        .push(nn::Tanh)
        .push(nn::Linear::new(40, 40))
        .push(nn::Tanh)
        .push(nn::Linear::new(40, 1))
}

/// Two sinusoid tasks of 10 support and 10 query points, f64.
fn sinusoid_batch() -> MetaBatch {
    Sinusoid::new(10, 10)
        .unwrap()
        .with_kind(Kind::Double)
        .meta_batch(5, 0, 0..2, Split::Train)
        .unwrap()
}

/// The sinusoid MLP's meta-objective θ0 ↦ Σ_t L_query(φ*_t(θ0)) / T at an inner solution
/// solved to rounding, against central finite differences along random directions.
///
/// The MLP is MAML's 1-40-40-1 with tanh (`tanh_mlp`): with ReLU the inner problem has no
/// smooth solution to differentiate. Measured on these tasks: heavy-ball SGD on the ReLU MLP
/// stalls with the proximal objective's gradient norm at 0.4–1.0 after 4000 steps (the minimiser
/// sits on a kink, where H is undefined), while on the tanh MLP it falls to 3e-13 in 1500 steps
/// (lr 0.005, momentum 0.9, λ = 2; the Hessian's largest eigenvalue is 115).
#[test]
fn imaml_matches_finite_differences_of_the_meta_objective_on_the_sinusoid_mlp() {
    tch::manual_seed(11);
    let model = tanh_mlp();
    let theta = Params::init(&model, 1, Kind::Double, Device::Cpu).unwrap();
    let batch = sinusoid_batch();
    let mut cfg = imaml(2.0, 3000, 0.005, 200);
    cfg.inner_momentum = 0.9;
    let algo = super::imaml::Imaml;
    let grad = algo
        .meta_gradient(&shard(&cfg, &model, &Mse, &theta, 0, 2), &batch, 2.0)
        .unwrap()
        .grads
        .remove(0);
    let objective = |values: &Tensor| -> f64 {
        let at = Params::from_flat(theta.layout().clone(), values.set_requires_grad(true)).unwrap();
        let s = shard(&cfg, &model, &Mse, &at, 0, 2);
        let inner = super::adapt(&s, &batch, cfg.inner_steps, false, |_, _| Ok(())).unwrap();
        let q =
            tch::no_grad(|| super::query_losses(&s, &inner, &batch, cfg.inner_steps - 1)).unwrap();
        q.loss.sum(Kind::Double).double_value(&[]) / 2.0
    };
    let eps = 1e-5;
    for k in 0..3 {
        let d = Tensor::randn([theta.layout().numel()], F64);
        let d = &d / d.norm();
        let base = theta.flat().detach();
        let fd = (objective(&(&base + d.multiply_scalar(eps)))
            - objective(&(&base - d.multiply_scalar(eps))))
            / (2.0 * eps);
        let analytic = grad.dot(&d).double_value(&[]);
        let rel = (fd - analytic).abs() / analytic.abs().max(1e-3);
        // Measured: relative differences of 2e-10 to 8e-10. Rounding in the differences alone
        // is 1e-16 · |F| / eps ≈ 7e-11 absolute against derivatives of about 0.05, i.e. ~1e-9
        // relative (truncation, O(eps²), is smaller): hence 1e-8, far below the error of a wrong
        // λ or a missing Hessian term (> 1e-2).
        assert!(
            rel < 1e-8,
            "direction {k}: {fd} vs {analytic} (relative {rel:e})"
        );
    }
}

/// MAML++'s derivative-order annealing: with `first_order_until = 3`, iterations 0..3 give
/// FOMAML's meta-gradient and iteration 3 on MAML's, with and without the multi-step loss.
#[test]
fn first_order_until_gives_fomaml_before_the_switch_and_maml_after() {
    tch::manual_seed(13);
    let model = nn::mlp(&[1, 40, 40, 1]);
    let theta = Params::init(&model, 2, Kind::Double, Device::Cpu).unwrap();
    let batch = sinusoid_batch();
    for multi in [false, true] {
        let base = AlgorithmConfig {
            inner_steps: 3,
            multi_step_loss: multi,
            ..AlgorithmConfig::default()
        };
        let annealed = AlgorithmConfig {
            first_order_until: 3,
            ..base.clone()
        };
        let grad = |cfg: &AlgorithmConfig, first_order: bool, iteration: u64| -> Tensor {
            let s = shard(cfg, &model, &Mse, &theta, iteration, 2);
            super::maml::Maml { first_order }
                .meta_gradient(&s, &batch, 2.0)
                .unwrap()
                .grads
                .remove(0)
        };
        let (fo, so) = (grad(&base, true, 2), grad(&base, false, 3));
        assert!(
            max_abs_diff(&fo, &so) > 1e-4,
            "first and second order agree"
        );
        assert_eq!(
            max_abs_diff(&grad(&annealed, false, 0), &grad(&base, true, 0)),
            0.0
        );
        assert_eq!(max_abs_diff(&grad(&annealed, false, 2), &fo), 0.0);
        assert_eq!(max_abs_diff(&grad(&annealed, false, 3), &so), 0.0);
    }
}

/// Peak resident memory of one meta-gradient of a Conv-4 (5-way 1-shot, 15 queries per class,
/// 2 tasks, f32) in a child process: `METALOOP_PEAK_ALGO` ("imaml" or "maml") with
/// `METALOOP_PEAK_STEPS` inner steps. Run by the test below; ignored on its own.
#[test]
#[ignore = "a child process of imaml_peak_memory_does_not_grow_with_inner_steps"]
fn peak_child() {
    let (Ok(algo), Ok(steps)) = (
        std::env::var("METALOOP_PEAK_ALGO"),
        std::env::var("METALOOP_PEAK_STEPS"),
    ) else {
        return;
    };
    tch::set_num_threads(1);
    let opts = (Kind::Float, Device::Cpu);
    let model = nn::conv4(1, 5, 64);
    let theta = Params::init(&model, 4, Kind::Float, Device::Cpu).unwrap();
    let labels = |per: i64| {
        Tensor::arange(5, (Kind::Int64, Device::Cpu))
            .repeat_interleave_self_int(per, 0, None)
            .unsqueeze(0)
            .repeat([2, 1])
    };
    let batch = MetaBatch {
        support_x: Tensor::rand([2, 5, 1, 28, 28], opts),
        support_y: labels(1),
        query_x: Tensor::rand([2, 75, 1, 28, 28], opts),
        query_y: labels(15),
        iteration: 0,
        tasks: 0..2,
    };
    let mut cfg = imaml(1.0, steps.parse().unwrap(), 0.1, 5);
    cfg.name = algo.parse().unwrap();
    let s = shard(&cfg, &model, &CrossEntropy, &theta, 0, 2);
    crate::memory::take_peak_mib(Device::Cpu).unwrap();
    let g = super::build(cfg.name)
        .meta_gradient(&s, &batch, 2.0)
        .unwrap();
    assert!(bool::try_from(g.grads[0].isfinite().all()).unwrap());
    let peak = crate::memory::take_peak_mib(Device::Cpu).unwrap();
    let out = std::env::var("METALOOP_PEAK_OUT").unwrap();
    std::fs::write(out, peak.to_string()).unwrap();
}

/// The peak of one child process (see `peak_child`), MiB; it writes it to a file (the engine
/// prints nothing).
fn child_peak(algo: &str, steps: usize) -> f64 {
    let file = std::env::temp_dir().join(format!(
        "metaloop-peak-{}-{algo}-{steps}",
        std::process::id()
    ));
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "algorithms::tests::peak_child", "--ignored"])
        .args(["--test-threads", "1"])
        .env("METALOOP_PEAK_ALGO", algo)
        .env("METALOOP_PEAK_STEPS", steps.to_string())
        .env("METALOOP_PEAK_OUT", &file)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&file).unwrap_or_else(|_| {
        let (o, e) = (&out.stdout, &out.stderr);
        let (o, e) = (String::from_utf8_lossy(o), String::from_utf8_lossy(e));
        panic!("no peak from the child:\n{o}\n{e}")
    });
    let _ = std::fs::remove_file(&file);
    text.parse().unwrap()
}

/// iMAML keeps no graph across inner steps: 10 and 100 steps on a Conv-4 peak within 10% of
/// each other. Second-order MAML's peak, measured the same way, grows (10 vs 40 steps), so the
/// measurement can see growth.
#[test]
fn imaml_peak_memory_does_not_grow_with_inner_steps() {
    let (short, long) = (child_peak("imaml", 10), child_peak("imaml", 100));
    assert!(
        long <= 1.1 * short,
        "iMAML's peak grew with inner steps: {short:.0} MiB at 10, {long:.0} MiB at 100"
    );
    let (short, long) = (child_peak("maml", 10), child_peak("maml", 40));
    assert!(
        long > 1.1 * short,
        "second-order MAML's peak did not grow: {short:.0} MiB at 10 steps, {long:.0} MiB at 40"
    );
}
