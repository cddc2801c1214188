//! Parity of metaloop's optimizers with torch.optim 2.11.0 (foreach=False), step by step, on an MLP
//! and a small conv net (fixtures from tests/fixtures/optim/gen_optim.py); task batching `[T, P]`
//! equals T separate `[P]` updates; HParams::resolve's shapes and errors.

use metaloop_runtime::optim::{self, HParams, HValue, OptState, Optimizer};
use metaloop_runtime::Error;
use std::collections::HashMap;
use tch::{Kind, Tensor};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/optim");
const STEPS: i64 = 5;

/// The configurations of gen_optim.py, by the same names.
fn optimizer_for(config: &str) -> Box<dyn Optimizer> {
    match config {
        "sgd_plain" => Box::new(optim::Sgd::new(0.1)),
        "sgd_momentum" => Box::new(optim::Sgd::new(0.1).momentum(0.9)),
        "sgd_dampening" => Box::new(optim::Sgd::new(0.1).momentum(0.9).dampening(0.3)),
        "sgd_nesterov" => Box::new(optim::Sgd::new(0.1).momentum(0.9).nesterov(true)),
        "sgd_weight_decay" => Box::new(optim::Sgd::new(0.1).momentum(0.5).weight_decay(0.05)),
        "adam_plain" => Box::new(optim::Adam::new(0.01)),
        "adam_amsgrad" => Box::new(optim::Adam::new(0.01).betas(0.8, 0.99).amsgrad(true)),
        "adam_weight_decay" => Box::new(optim::Adam::new(0.01).weight_decay(0.1).eps(1e-6)),
        "adamw" => Box::new(optim::AdamW::new(0.01)),
        "adamw_amsgrad" => Box::new(optim::AdamW::new(0.01).weight_decay(0.1).amsgrad(true)),
        "adagrad_plain" => Box::new(optim::Adagrad::new(0.1)),
        "adagrad_decay" => Box::new(
            optim::Adagrad::new(0.1)
                .lr_decay(0.05)
                .weight_decay(0.1)
                .initial_accumulator_value(0.2)
                .eps(1e-8),
        ),
        "rmsprop_plain" => Box::new(optim::RMSprop::new(0.01)),
        "rmsprop_centered" => Box::new(optim::RMSprop::new(0.01).centered(true)),
        "rmsprop_momentum" => Box::new(optim::RMSprop::new(0.01).momentum(0.9)),
        "rmsprop_weight_decay" => Box::new(
            optim::RMSprop::new(0.01)
                .alpha(0.9)
                .eps(1e-6)
                .weight_decay(0.1)
                .momentum(0.5)
                .centered(true),
        ),
        "adadelta_plain" => Box::new(optim::Adadelta::new(1.0)),
        "adadelta_weight_decay" => Box::new(
            optim::Adadelta::new(0.5)
                .rho(0.8)
                .eps(1e-5)
                .weight_decay(0.1),
        ),
        "adamax_plain" => Box::new(optim::Adamax::new(0.02)),
        "adamax_weight_decay" => Box::new(
            optim::Adamax::new(0.02)
                .betas(0.8, 0.99)
                .eps(1e-6)
                .weight_decay(0.1),
        ),
        "rprop_plain" => Box::new(optim::Rprop::new(0.01)),
        "rprop_clamped" => Box::new(
            optim::Rprop::new(0.05)
                .etas(0.4, 1.5)
                .step_sizes(1e-3, 0.08),
        ),
        other => panic!("fixture has a configuration this test does not know: {other}"),
    }
}
const CONFIGS: usize = 22;

#[derive(Clone, Copy, Debug)]
enum Model {
    /// Linear(4,8) → tanh → Linear(8,8) → tanh → Linear(8,3).
    Mlp,
    /// Conv2d(1,2,3) → ReLU → Flatten → Linear(32,3), on 6×6 inputs.
    Conv,
}

/// Cuts consecutive parameter views out of a flat θ, in state_dict order.
struct Views<'a> {
    theta: &'a Tensor,
    offset: i64,
}

impl Views<'_> {
    fn next(&mut self, shape: &[i64]) -> Tensor {
        let n: i64 = shape.iter().product();
        let v = self.theta.narrow(0, self.offset, n).view(shape);
        self.offset += n;
        v
    }
}

impl Model {
    fn numel(self) -> i64 {
        match self {
            Model::Mlp => 8 * 4 + 8 + 8 * 8 + 8 + 3 * 8 + 3,
            Model::Conv => 2 * 9 + 2 + 3 * 32 + 3,
        }
    }

    fn forward(self, theta: &Tensor, x: &Tensor) -> Tensor {
        let mut p = Views { theta, offset: 0 };
        let out = match self {
            Model::Mlp => {
                let h = x.linear(&p.next(&[8, 4]), Some(&p.next(&[8]))).tanh();
                let h = h.linear(&p.next(&[8, 8]), Some(&p.next(&[8]))).tanh();
                h.linear(&p.next(&[3, 8]), Some(&p.next(&[3])))
            }
            Model::Conv => {
                let h = x.conv2d(
                    &p.next(&[2, 1, 3, 3]),
                    Some(&p.next(&[2])),
                    [1, 1],
                    [0, 0],
                    [1, 1],
                    1,
                );
                let h = h.relu().flatten(1, -1);
                h.linear(&p.next(&[3, 32]), Some(&p.next(&[3])))
            }
        };
        assert_eq!(p.offset, self.numel());
        out
    }

    /// The gradient of mean((f(x) − y)²) at θ (no graph kept).
    fn grad(self, theta: &Tensor, x: &Tensor, y: &Tensor) -> Tensor {
        let leaf = theta.detach().set_requires_grad(true);
        let loss = (self.forward(&leaf, x) - y).square().mean(leaf.kind());
        Tensor::run_backward(&[&loss], &[&leaf], false, false)
            .pop()
            .unwrap()
    }
}

fn read_fixture(file: &str) -> HashMap<String, Tensor> {
    let path = format!("{FIXTURES}/{file}");
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (regenerate with gen_optim.py)"))
        .into_iter()
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Runs every configuration of one fixture file and compares each of the 5 steps with torch.
fn check_fixture(model: Model, file: &str, tol: f64) {
    let data = read_fixture(file);
    let (x, y, theta0) = (&data["x"], &data["y"], &data["theta0"]);
    assert_eq!(theta0.size(), vec![model.numel()]);
    let mut configs: Vec<&String> = data
        .keys()
        .filter(|k| !["x", "y", "theta0"].contains(&k.as_str()))
        .collect();
    configs.sort();
    assert_eq!(configs.len(), CONFIGS, "{file}: configurations {configs:?}");
    let mut worst = (0.0f64, String::new());
    for config in configs {
        let opt = optimizer_for(config);
        let expected = &data[config];
        assert_eq!(expected.size(), vec![STEPS, model.numel()]);
        let hp = HParams::defaults(opt.as_ref());
        let mut theta = theta0.shallow_clone();
        let mut state = opt.init_state(&theta).unwrap();
        for step in 0..STEPS {
            let grad = model.grad(&theta, x, y);
            let (next, next_state) = opt.update(&theta, &grad, &state, &hp).unwrap();
            assert_eq!(
                next.kind(),
                theta0.kind(),
                "{config}: the update changed the dtype"
            );
            assert_eq!(next_state.step(), step + 1);
            let diff = max_abs_diff(&next, &expected.get(step));
            assert!(
                diff <= tol,
                "{file} {config}: step {} differs from torch.optim by {diff:e} (tolerance {tol:e})",
                step + 1
            );
            if diff > worst.0 {
                worst = (diff, format!("{config} step {}", step + 1));
            }
            theta = next;
            state = next_state;
        }
        // The trajectory really moved: a no-op update would fail above, but make it explicit.
        assert!(
            max_abs_diff(&theta, theta0) > 1e-4,
            "{config}: parameters barely moved"
        );
    }
    println!(
        "{file}: largest difference from torch.optim {:e} ({})",
        worst.0, worst.1
    );
}

#[test]
fn mlp_f64_matches_torch_optim() {
    check_fixture(Model::Mlp, "mlp_f64.safetensors", 1e-10);
}

#[test]
fn mlp_f32_matches_torch_optim() {
    check_fixture(Model::Mlp, "mlp_f32.safetensors", 1e-6);
}

#[test]
fn conv_f64_matches_torch_optim() {
    check_fixture(Model::Conv, "conv_f64.safetensors", 1e-10);
}

#[test]
fn conv_f32_matches_torch_optim() {
    check_fixture(Model::Conv, "conv_f32.safetensors", 1e-6);
}

/// θ `[T, P]` with per-task data gives, row by row, the T separate `[P]` updates, for every
/// configuration, with a `[P]` learning rate and a global `[]` weight decay override.
#[test]
fn task_batched_updates_equal_separate_updates() {
    let data = read_fixture("mlp_f64.safetensors");
    let model = Model::Mlp;
    let (x, y, theta0) = (&data["x"], &data["y"], &data["theta0"]);
    let tasks = 3i64;
    tch::manual_seed(7);
    // Different starting points and targets per task, so that the rows really differ.
    let thetas: Vec<Tensor> = (0..tasks)
        .map(|t| theta0 + 0.05 * t as f64 * theta0.randn_like())
        .collect();
    let targets: Vec<Tensor> = (0..tasks).map(|t| y * (1.0 + 0.5 * t as f64)).collect();
    let lr_scale = Tensor::rand([model.numel()], (Kind::Double, tch::Device::Cpu)) + 0.5;
    let group_sizes = [32i64, 8, 64, 8, 24, 3];

    let mut names: Vec<&String> = data
        .keys()
        .filter(|k| !["x", "y", "theta0"].contains(&k.as_str()))
        .collect();
    names.sort();
    for config in names {
        let opt = optimizer_for(config);
        let lr = opt.hparam_default("lr").unwrap();
        let mut overrides = vec![("lr".to_string(), &lr_scale * lr)];
        if opt.hparam_names().contains(&"weight_decay") {
            overrides.push(("weight_decay".to_string(), Tensor::from(0.02f64)));
        }
        let hp = HParams::resolve(opt.as_ref(), &overrides, &group_sizes).unwrap();

        let mut batched = Tensor::stack(&thetas, 0);
        let mut batched_state = opt.init_state(&batched).unwrap();
        let mut separate: Vec<Tensor> = thetas.iter().map(|t| t.shallow_clone()).collect();
        let mut separate_states: Vec<OptState> = separate
            .iter()
            .map(|t| opt.init_state(t).unwrap())
            .collect();
        for step in 0..3 {
            let grads: Vec<Tensor> = (0..tasks as usize)
                .map(|t| model.grad(&batched.get(t as i64), x, &targets[t]))
                .collect();
            let (next, next_state) = opt
                .update(&batched, &Tensor::stack(&grads, 0), &batched_state, &hp)
                .unwrap();
            assert_eq!(next.size(), vec![tasks, model.numel()]);
            for t in 0..tasks as usize {
                let g = model.grad(&separate[t], x, &targets[t]);
                let (row, row_state) = opt
                    .update(&separate[t], &g, &separate_states[t], &hp)
                    .unwrap();
                let diff = max_abs_diff(&next.get(t as i64), &row);
                assert!(
                    diff <= 1e-12,
                    "{config}: task {t} step {step}: batched differs by {diff:e}"
                );
                for ((name, b), (_, s)) in next_state.tensors().zip(row_state.tensors()) {
                    let diff = max_abs_diff(&b.get(t as i64), s);
                    assert!(
                        diff <= 1e-12,
                        "{config}: task {t} state {name} differs by {diff:e}"
                    );
                }
                separate[t] = row;
                separate_states[t] = row_state;
            }
            batched = next;
            batched_state = next_state;
        }
    }
}

#[test]
fn resolve_expands_group_overrides_and_keeps_defaults() {
    let opt = optim::Adam::new(0.01).betas(0.8, 0.99);
    let group_sizes = [3i64, 2, 1];
    let lr = Tensor::from_slice(&[0.1f64, 0.2, 0.3]).set_requires_grad(true);
    let eps = Tensor::from_slice(&[1e-3f64]);
    let beta2 = Tensor::from_slice(&[0.9f64, 0.91, 0.92, 0.93, 0.94, 0.95]);
    let hp = HParams::resolve(
        &opt,
        &[
            ("lr".to_string(), lr.shallow_clone()),
            ("eps".to_string(), eps),
            ("beta2".to_string(), beta2.shallow_clone()),
        ],
        &group_sizes,
    )
    .unwrap();
    match hp.get("lr").unwrap() {
        HValue::Tensor(t) => {
            assert_eq!(
                Vec::<f64>::try_from(t).unwrap(),
                vec![0.1, 0.1, 0.1, 0.2, 0.2, 0.3]
            );
            // The expansion is differentiable: each group's value collects its elements' gradients.
            let g = Tensor::run_backward(
                &[&(t * Tensor::from_slice(&[1.0f64, 2., 3., 4., 5., 6.])).sum(Kind::Double)],
                &[&lr],
                false,
                false,
            );
            assert_eq!(Vec::<f64>::try_from(&g[0]).unwrap(), vec![6.0, 9.0, 6.0]);
        }
        other => panic!("lr: {other:?}"),
    }
    match hp.get("eps").unwrap() {
        HValue::Tensor(t) => assert_eq!(t.size(), Vec::<i64>::new(), "[1] becomes a global []"),
        other => panic!("eps: {other:?}"),
    }
    match hp.get("beta2").unwrap() {
        HValue::Tensor(t) => assert_eq!(max_abs_diff(t, &beta2), 0.0),
        other => panic!("beta2: {other:?}"),
    }
    assert_eq!(hp.get("beta1").unwrap().as_const(), Some(0.8));
    assert_eq!(hp.get("weight_decay").unwrap().as_const(), Some(0.0));
    assert!(hp.get("momentum").is_none());
}

#[test]
fn resolve_rejects_unknown_names_and_bad_shapes() {
    let opt = optim::Sgd::new(0.1).momentum(0.9);
    let group_sizes = [3i64, 2];
    match HParams::resolve(
        &opt,
        &[("beta1".to_string(), Tensor::from(0.9f64))],
        &group_sizes,
    ) {
        Err(Error::UnknownHparam {
            optimizer,
            name,
            allowed,
        }) => {
            assert_eq!(optimizer, "SGD");
            assert_eq!(name, "beta1");
            assert!(allowed.contains("momentum"), "{allowed}");
        }
        other => panic!("expected UnknownHparam, got {other:?}"),
    }
    for bad in [vec![6i64], vec![4], vec![5, 1], vec![1, 1], vec![2, 5]] {
        match HParams::resolve(
            &opt,
            &[(
                "lr".to_string(),
                Tensor::ones(&bad[..], (Kind::Double, tch::Device::Cpu)),
            )],
            &group_sizes,
        ) {
            Err(Error::HparamShape {
                name,
                got,
                groups,
                numel,
            }) => {
                assert_eq!((name.as_str(), groups, numel), ("lr", 2, 5));
                assert_eq!(got, bad);
            }
            other => panic!("shape {bad:?}: expected HparamShape, got {other:?}"),
        }
    }
    let mut hp = HParams::defaults(&opt);
    assert!(matches!(
        hp.set("rho", HValue::Const(0.9)),
        Err(Error::UnknownHparam { .. })
    ));
    hp.set("momentum", HValue::Const(0.5)).unwrap();
    assert_eq!(hp.get("momentum").unwrap().as_const(), Some(0.5));
}

/// Builder values and torch.optim's defaults, as `hparam_default` reports them.
#[test]
fn defaults_equal_torch_optim_defaults() {
    type Case = (
        Box<dyn Optimizer>,
        &'static str,
        &'static [(&'static str, f64)],
    );
    let cases: Vec<Case> = vec![
        (
            Box::new(optim::Sgd::new(0.1)),
            "SGD",
            &[
                ("lr", 0.1),
                ("momentum", 0.0),
                ("dampening", 0.0),
                ("weight_decay", 0.0),
            ],
        ),
        (
            Box::new(optim::Adam::new(1e-3)),
            "Adam",
            &[
                ("beta1", 0.9),
                ("beta2", 0.999),
                ("eps", 1e-8),
                ("weight_decay", 0.0),
            ],
        ),
        (
            Box::new(optim::AdamW::new(1e-3)),
            "AdamW",
            &[
                ("beta1", 0.9),
                ("beta2", 0.999),
                ("eps", 1e-8),
                ("weight_decay", 1e-2),
            ],
        ),
        (
            Box::new(optim::Adagrad::new(1e-2)),
            "Adagrad",
            &[
                ("lr_decay", 0.0),
                ("weight_decay", 0.0),
                ("initial_accumulator_value", 0.0),
                ("eps", 1e-10),
            ],
        ),
        (
            Box::new(optim::RMSprop::new(1e-2)),
            "RMSprop",
            &[
                ("alpha", 0.99),
                ("eps", 1e-8),
                ("weight_decay", 0.0),
                ("momentum", 0.0),
            ],
        ),
        (
            Box::new(optim::Adadelta::new(1.0)),
            "Adadelta",
            &[("rho", 0.9), ("eps", 1e-6), ("weight_decay", 0.0)],
        ),
        (
            Box::new(optim::Adamax::new(2e-3)),
            "Adamax",
            &[
                ("beta1", 0.9),
                ("beta2", 0.999),
                ("eps", 1e-8),
                ("weight_decay", 0.0),
            ],
        ),
        (
            Box::new(optim::Rprop::new(1e-2)),
            "Rprop",
            &[
                ("eta_minus", 0.5),
                ("eta_plus", 1.2),
                ("step_size_min", 1e-6),
                ("step_size_max", 50.0),
            ],
        ),
    ];
    for (opt, name, values) in cases {
        assert_eq!(opt.name(), name);
        for (h, v) in values {
            assert!(opt.hparam_names().contains(h), "{name}: {h}");
            assert_eq!(opt.hparam_default(h), Some(*v), "{name}: {h}");
        }
        assert_eq!(opt.hparam_default("no_such"), None);
        assert_eq!(opt.box_clone().name(), name);
    }
}
