//! Meta-gradients through 3 differentiable optimizer steps, for every optimizer: autograd (double
//! backward) against central finite differences, w.r.t. θ0 and every overridden hyperparameter
//! (override shapes `[]`, `[G]` and `[P]`); and hypergradients that stay finite where a gradient is
//! exactly zero (the sqrt-at-0 NaN of higher #125 and TorchOpt #26).

use metaloop_runtime::optim::{self, HParams, Optimizer};
use tch::{Device, Kind, Tensor};

const OPTS: (Kind, Device) = (Kind::Double, Device::Cpu);
const INNER_STEPS: usize = 3;
/// θ = [w: 3×2, b: 2], two named parameters.
const GROUP_SIZES: [i64; 2] = [6, 2];
const P: i64 = 8;

/// A small smooth regression problem: f(x) = tanh(x·w + b), loss = mean((f(x) − y)²).
struct Problem {
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
}

/// libtorch's random generator is global and the tests of this file run on parallel threads:
/// each seeds and draws its data while holding this lock, so their draws never interleave (they
/// did, and Adam with amsgrad then sometimes met a kink of its max between the finite-difference
/// points).
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Problem {
    fn new() -> Problem {
        tch::manual_seed(3);
        Problem {
            support_x: Tensor::randn([5, 3], OPTS),
            support_y: Tensor::randn([5, 2], OPTS) * 0.5,
            query_x: Tensor::randn([7, 3], OPTS),
            query_y: Tensor::randn([7, 2], OPTS) * 0.5,
        }
    }

    fn loss(theta: &Tensor, x: &Tensor, y: &Tensor) -> Tensor {
        let w = theta.narrow(0, 0, 6).view([3, 2]);
        let b = theta.narrow(0, 6, 2);
        (x.matmul(&w) + b)
            .tanh()
            .f_sub(y)
            .unwrap()
            .square()
            .mean(Kind::Double)
    }

    /// Query loss after INNER_STEPS differentiable steps from θ0 (which must require grad).
    fn meta_loss(
        &self,
        opt: &dyn Optimizer,
        theta0: &Tensor,
        overrides: &[(String, Tensor)],
    ) -> Tensor {
        let hp = HParams::resolve(opt, overrides, &GROUP_SIZES).unwrap();
        let mut theta = theta0.shallow_clone();
        let mut state = opt.init_state(theta0).unwrap();
        for _ in 0..INNER_STEPS {
            let inner = Self::loss(&theta, &self.support_x, &self.support_y);
            let grad = Tensor::run_backward(&[&inner], &[&theta], true, true)
                .pop()
                .unwrap();
            let (next, next_state) = opt.update(&theta, &grad, &state, &hp).unwrap();
            theta = next;
            state = next_state;
        }
        Self::loss(&theta, &self.query_x, &self.query_y)
    }
}

/// Central differences of `f` w.r.t. every element of `x`, with step `h(x_i)`.
fn central_differences(
    x: &Tensor,
    h: impl Fn(f64) -> f64,
    mut f: impl FnMut(&Tensor) -> f64,
) -> Vec<f64> {
    let base = Vec::<f64>::try_from(&x.detach().reshape([-1])).unwrap();
    (0..base.len())
        .map(|i| {
            let h = h(base[i]);
            let mut plus = base.clone();
            plus[i] += h;
            let mut minus = base.clone();
            minus[i] -= h;
            let at = |v: &[f64]| {
                Tensor::from_slice(v)
                    .view(x.size().as_slice())
                    .set_requires_grad(true)
            };
            (f(&at(&plus)) - f(&at(&minus))) / (2.0 * h)
        })
        .collect()
}

fn tensor(values: &[f64]) -> Tensor {
    Tensor::from_slice(values)
}

/// A labelled optimizer with its hyperparameter overrides.
type Case = (
    &'static str,
    Box<dyn Optimizer>,
    Vec<(&'static str, Tensor)>,
);

/// The overrides under test: values, and which shape each uses.
fn cases() -> Vec<Case> {
    let per_element = |base: f64, spread: f64| {
        tensor(
            &(0..P)
                .map(|i| base + spread * (i as f64 / P as f64))
                .collect::<Vec<_>>(),
        )
    };
    vec![
        (
            "SGD momentum dampening weight_decay",
            Box::new(optim::Sgd::new(0.1).momentum(0.5)),
            vec![
                ("lr", per_element(0.2, 0.1)),
                ("momentum", tensor(&[0.8]).reshape([])),
                ("dampening", tensor(&[0.1, 0.2])),
                ("weight_decay", tensor(&[0.05])),
            ],
        ),
        (
            "SGD nesterov",
            Box::new(optim::Sgd::new(0.1).momentum(0.9).nesterov(true)),
            vec![
                ("lr", tensor(&[0.3]).reshape([])),
                ("momentum", tensor(&[0.7, 0.9])),
            ],
        ),
        (
            "Adam",
            Box::new(optim::Adam::new(0.05)),
            vec![
                ("lr", tensor(&[0.05, 0.08])),
                ("beta1", tensor(&[0.8]).reshape([])),
                ("beta2", per_element(0.9, 0.05)),
                ("eps", tensor(&[1e-3])),
                ("weight_decay", tensor(&[0.1])),
            ],
        ),
        (
            "Adam amsgrad",
            Box::new(optim::Adam::new(0.05).amsgrad(true)),
            vec![
                ("lr", tensor(&[0.1])),
                ("beta1", tensor(&[0.7, 0.9])),
                ("beta2", tensor(&[0.95])),
                ("eps", tensor(&[1e-2])),
            ],
        ),
        (
            "AdamW",
            Box::new(optim::AdamW::new(0.05)),
            vec![
                ("lr", per_element(0.05, 0.05)),
                ("beta1", tensor(&[0.85])),
                ("beta2", tensor(&[0.99])),
                ("eps", tensor(&[1e-3, 2e-3])),
                ("weight_decay", tensor(&[0.2]).reshape([])),
            ],
        ),
        (
            "Adagrad",
            Box::new(optim::Adagrad::new(0.1)),
            vec![
                ("lr", tensor(&[0.2])),
                ("lr_decay", tensor(&[0.1])),
                ("weight_decay", tensor(&[0.05, 0.1])),
                ("initial_accumulator_value", per_element(0.1, 0.2)),
                ("eps", tensor(&[1e-3]).reshape([])),
            ],
        ),
        (
            "RMSprop centered momentum",
            Box::new(optim::RMSprop::new(0.01).centered(true).momentum(0.5)),
            vec![
                ("lr", tensor(&[0.01, 0.02])),
                ("alpha", tensor(&[0.9])),
                ("eps", per_element(1e-2, 1e-2)),
                ("weight_decay", tensor(&[0.1])),
                ("momentum", tensor(&[0.6]).reshape([])),
            ],
        ),
        (
            "RMSprop",
            Box::new(optim::RMSprop::new(0.01)),
            vec![
                ("lr", tensor(&[0.02])),
                ("alpha", tensor(&[0.9, 0.95])),
                ("eps", tensor(&[1e-3])),
            ],
        ),
        (
            "Adadelta",
            Box::new(optim::Adadelta::new(1.0)),
            vec![
                ("lr", tensor(&[2.0]).reshape([])),
                ("rho", tensor(&[0.8, 0.9])),
                ("eps", tensor(&[1e-3])),
                ("weight_decay", per_element(0.05, 0.1)),
            ],
        ),
        (
            "Adamax",
            Box::new(optim::Adamax::new(0.05)),
            vec![
                ("lr", tensor(&[0.1])),
                ("beta1", tensor(&[0.8, 0.85])),
                ("beta2", tensor(&[0.9])),
                ("eps", per_element(1e-3, 1e-3)),
                ("weight_decay", tensor(&[0.1]).reshape([])),
            ],
        ),
        (
            // For the larger lr, lr·eta_plus exceeds step_size_max; for the smaller, lr·eta_minus
            // falls below step_size_min: both bounds are active, so their hypergradients are not
            // trivially zero. No step size sits exactly on a bound, where the clamp's one-sided
            // derivative differs from central differences.
            "Rprop",
            Box::new(optim::Rprop::new(0.05)),
            vec![
                ("lr", per_element(0.1, 0.4)),
                ("eta_minus", tensor(&[0.5])),
                ("eta_plus", tensor(&[1.5, 1.4])),
                ("step_size_min", tensor(&[0.17])),
                ("step_size_max", tensor(&[0.5]).reshape([])),
            ],
        ),
    ]
}

#[test]
fn meta_gradients_match_finite_differences_for_every_optimizer() {
    let (problem, theta0) = {
        let _draws = RNG.lock().unwrap_or_else(|e| e.into_inner());
        let problem = Problem::new();
        (
            problem,
            (Tensor::randn([P], OPTS) * 0.5).set_requires_grad(true),
        )
    };
    // Central differences in f64, with h = 1e-5 for θ0 and, for a hyperparameter x, a step scaled
    // to its size, h = 1e-5·min(1, 10·x) (eps = 1e-3 gets 1e-7), so that h/x ≤ 1e-4. Truncation error ~ h²·|f'''| ≈ 1e-10 and rounding
    // error ~ ε·|M|/h ≈ 1e-11, so the two agree to ~1e-9; 1e-7 (relative, with an absolute floor
    // of 1e-7 for near-zero components) leaves room for the larger third derivatives of the
    // adaptive methods (√v in a denominator) without hiding a wrong term, which would be ≥ 1e-3.
    let theta_step = |_: f64| 1e-5;
    let hparam_step = |x: f64| 1e-5 * (10.0 * x.abs()).min(1.0);
    let tol = |fd: f64| 1e-7 * (1.0 + fd.abs());
    let mut covered: Vec<(&'static str, &'static str)> = Vec::new();
    let mut all_names: Vec<(&'static str, &'static [&'static str])> = Vec::new();
    for (label, opt, overrides) in cases() {
        let names: Vec<&str> = overrides.iter().map(|(n, _)| *n).collect();
        covered.extend(names.iter().map(|n| (opt.name(), *n)));
        all_names.push((opt.name(), opt.hparam_names()));
        let leaves: Vec<Tensor> = overrides
            .iter()
            .map(|(_, t)| t.detach().set_requires_grad(true))
            .collect();
        let named = |leaves: &[Tensor]| -> Vec<(String, Tensor)> {
            names
                .iter()
                .zip(leaves)
                .map(|(n, t)| (n.to_string(), t.shallow_clone()))
                .collect()
        };

        let meta = problem.meta_loss(opt.as_ref(), &theta0, &named(&leaves));
        let mut inputs = vec![&theta0];
        inputs.extend(leaves.iter());
        let grads = Tensor::run_backward(&[&meta], &inputs, false, false);

        let mut checked = vec![(
            "theta0",
            central_differences(&theta0, theta_step, |t| {
                problem
                    .meta_loss(opt.as_ref(), t, &named(&leaves))
                    .double_value(&[])
            }),
            &grads[0],
        )];
        for (k, name) in names.iter().enumerate() {
            let fd = central_differences(&leaves[k], hparam_step, |t| {
                let mut perturbed: Vec<Tensor> = leaves.iter().map(|l| l.shallow_clone()).collect();
                perturbed[k] = t.shallow_clone();
                problem
                    .meta_loss(opt.as_ref(), &theta0, &named(&perturbed))
                    .double_value(&[])
            });
            checked.push((name, fd, &grads[k + 1]));
        }
        for (name, fd, autograd) in checked {
            let autograd = Vec::<f64>::try_from(&autograd.reshape([-1])).unwrap();
            assert_eq!(autograd.len(), fd.len());
            let norm: f64 = autograd.iter().map(|v| v * v).sum::<f64>().sqrt();
            for (i, (a, f)) in autograd.iter().zip(&fd).enumerate() {
                assert!(
                    (a - f).abs() <= tol(*f),
                    "{label}: d meta_loss / d {name}[{i}]: autograd {a:e} vs finite differences {f:e}"
                );
            }
            println!("{label}: {name} ok (|grad| = {norm:.3e})");
            // A meta-gradient that vanished everywhere would agree with flat finite differences
            // only if the dependence were really absent; every hyperparameter here is active.
            assert!(
                norm > 1e-9,
                "{label}: the meta-gradient w.r.t. {name} is zero"
            );
        }
    }
    // Every hyperparameter of every optimizer is overridden in some case above.
    for (optimizer, names) in all_names {
        for name in names {
            assert!(
                covered.contains(&(optimizer, *name)),
                "{optimizer}: hyperparameter {name} is not under test"
            );
        }
    }
    for optimizer in [
        "SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta", "Adamax", "Rprop",
    ] {
        assert!(
            covered.iter().any(|(o, _)| *o == optimizer),
            "{optimizer} is not under test"
        );
    }
}

/// Every optimizer, with elements whose gradient is exactly 0 at every step: the support inputs'
/// fourth feature is 0, so the weights reading it get a gradient of exactly `0 · δ`. Through
/// `√v` at `v = 0` that used to give `0 · ∞ = NaN` in the double backward, and the NaN spread
/// to every meta-gradient (higher #125, TorchOpt #26). Checks: the tracked trajectory equals the
/// untracked one (torch's values; the parity tests cover the untracked path), the meta-gradients
/// w.r.t. θ0 and an lr override are finite, and for those elements, which never move and never
/// touch the support loss, the meta-gradient is the query loss's own partial derivative.
#[test]
fn hypergradients_stay_finite_where_the_gradient_is_zero() {
    // θ = [w: 4×2, b: 2].
    let p = 10i64;
    let sizes = [8i64, 2];
    let zero_grad_elements = [6i64, 7]; // w[3, 0], w[3, 1]
    let loss = |theta: &Tensor, x: &Tensor, y: &Tensor| {
        let w = theta.narrow(0, 0, 8).view([4, 2]);
        let b = theta.narrow(0, 8, 2);
        (x.matmul(&w) + b)
            .tanh()
            .f_sub(y)
            .unwrap()
            .square()
            .mean(Kind::Double)
    };
    let draws = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(5);
    let support_x = Tensor::cat(
        &[Tensor::randn([5, 3], OPTS), Tensor::zeros([5, 1], OPTS)],
        1,
    );
    let support_y = Tensor::randn([5, 2], OPTS) * 0.5;
    let query_x = Tensor::randn([7, 4], OPTS);
    let query_y = Tensor::randn([7, 2], OPTS) * 0.5;
    let theta0 = (Tensor::randn([p], OPTS) * 0.5).set_requires_grad(true);
    drop(draws);

    let optimizers: Vec<Box<dyn Optimizer>> = vec![
        Box::new(optim::Sgd::new(0.1).momentum(0.9)),
        Box::new(optim::Adam::new(0.05)),
        Box::new(optim::Adam::new(0.05).amsgrad(true)),
        Box::new(optim::AdamW::new(0.05).weight_decay(0.0)),
        Box::new(optim::Adamax::new(0.05)),
        Box::new(optim::Adagrad::new(0.1)),
        Box::new(optim::RMSprop::new(0.01)),
        Box::new(optim::RMSprop::new(0.01).centered(true).momentum(0.5)),
        Box::new(optim::Adadelta::new(1.0)),
        Box::new(optim::Rprop::new(0.05)),
    ];
    for opt in optimizers {
        let name = opt.name();
        let lr = Tensor::from(opt.hparam_default("lr").unwrap()).set_requires_grad(true);
        let hp = HParams::resolve(
            opt.as_ref(),
            &[("lr".to_string(), lr.shallow_clone())],
            &sizes,
        )
        .unwrap();
        let untracked_hp = HParams::defaults(opt.as_ref());
        let mut theta = theta0.shallow_clone();
        let mut state = opt.init_state(&theta0).unwrap();
        let mut plain = theta0.detach();
        let mut plain_state = opt.init_state(&plain).unwrap();
        for step in 0..INNER_STEPS {
            let inner = loss(&theta, &support_x, &support_y);
            let grad = Tensor::run_backward(&[&inner], &[&theta], true, true)
                .pop()
                .unwrap();
            for i in zero_grad_elements {
                assert_eq!(grad.double_value(&[i]), 0.0);
            }
            let (next, next_state) = opt.update(&theta, &grad, &state, &hp).unwrap();

            let plain_leaf = plain.set_requires_grad(true);
            let inner = loss(&plain_leaf, &support_x, &support_y);
            let plain_grad = Tensor::run_backward(&[&inner], &[&plain_leaf], false, false)
                .pop()
                .unwrap();
            let (plain_next, plain_next_state) = opt
                .update(
                    &plain_leaf.detach(),
                    &plain_grad,
                    &plain_state,
                    &untracked_hp,
                )
                .unwrap();
            let diff = (&next - &plain_next).abs().max().double_value(&[]);
            assert!(
                diff <= 1e-14,
                "{name}: step {step}: tracked values differ from untracked by {diff:e}"
            );

            theta = next;
            state = next_state;
            plain = plain_next;
            plain_state = plain_next_state;
        }
        let meta = loss(&theta, &query_x, &query_y);
        let grads = Tensor::run_backward(&[&meta], &[&theta0, &lr], false, false);
        for (what, g) in [("theta0", &grads[0]), ("lr", &grads[1])] {
            let finite = bool::try_from(g.isfinite().all()).unwrap();
            assert!(
                finite,
                "{name}: meta-gradient w.r.t. {what} is not finite: {g}"
            );
        }
        let last = theta.detach().set_requires_grad(true);
        let direct =
            Tensor::run_backward(&[&loss(&last, &query_x, &query_y)], &[&last], false, false)
                .pop()
                .unwrap();
        for i in zero_grad_elements {
            let (got, want) = (grads[0].double_value(&[i]), direct.double_value(&[i]));
            assert!(
                want != 0.0 && (got - want).abs() <= 1e-12,
                "{name}: element {i}: {got:e} vs {want:e}"
            );
        }
    }
}
