//! The inner optimizer (`algorithm.inner_optimizer`, `algorithm.inner_options`) against
//! torch.optim: second-order MAML through inner Adam and RMSprop steps with a learned lr or
//! momentum per parameter tensor, in f64, by full tracking and by recompute-and-adjoint; and
//! first-order MAML and iMAML's proximal inner loop with the same optimizers
//! (tests/fixtures/inner/gen_inner.py writes the fixtures and the configurations).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use metaloop_runtime::nn::{self, Module};
use metaloop_runtime::Params;
use tch::{Device, Kind, Tensor};

use super::imaml::Imaml;
use super::maml::Maml;
use super::{Algorithm, Contribution};
use crate::config::{AlgorithmConfig, AlgorithmName, Memory, OptimizerName, TrainConfig};
use crate::data::MetaBatch;
use crate::loss::Mse;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/inner");
/// f64 parity, the project's tolerance.
const TOL: f64 = 1e-10;

fn fixtures() -> (HashMap<String, Tensor>, BTreeMap<String, AlgorithmConfig>) {
    let tensors = Tensor::read_safetensors(format!("{FIXTURES}/inner_f64.safetensors"))
        .expect("inner_f64.safetensors");
    let json = std::fs::read_to_string(format!("{FIXTURES}/configs.json")).expect("configs.json");
    let configs = serde_json::from_str(&json).expect("configs.json parses as AlgorithmConfig");
    (tensors.into_iter().collect(), configs)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// gen_inner.py's model: Linear(3, 4), Tanh, Linear(4, 2).
fn model() -> nn::Sequential {
    nn::Sequential::new()
        .push(nn::Linear::new(3, 4))
        .push(nn::Tanh)
        .push(nn::Linear::new(4, 2))
}

/// Second-order MAML's contribution on the fixture's tasks with the inner loop of `cfg`.
fn meta_gradient(cfg: &AlgorithmConfig, fx: &HashMap<String, Tensor>) -> Contribution {
    contribution(&Maml { first_order: false }, cfg, fx)
}

/// `algorithm`'s contribution on the fixture's tasks with the inner loop of `cfg`.
fn contribution(
    algorithm: &dyn Algorithm,
    cfg: &AlgorithmConfig,
    fx: &HashMap<String, Tensor>,
) -> Contribution {
    let m = model();
    let layout = Arc::new(m.layout().unwrap());
    let theta0 = fx["theta0"].copy().set_requires_grad(true);
    let theta = Params::from_flat(layout.clone(), theta0).unwrap();
    let tasks = fx["xs"].size()[0] as usize;
    let mut shard = super::tests::shard(cfg, &m, &Mse, &theta, 0, tasks);
    shard.learned = algorithm
        .learned(cfg, &layout, (Kind::Double, Device::Cpu))
        .unwrap();
    let batch = MetaBatch {
        support_x: fx["xs"].shallow_clone(),
        support_y: fx["ys"].shallow_clone(),
        query_x: fx["xq"].shallow_clone(),
        query_y: fx["yq"].shallow_clone(),
        iteration: 0,
        tasks: 0..tasks,
    };
    algorithm
        .meta_gradient(&shard, &batch, tasks as f64)
        .unwrap()
}

#[test]
fn maml_through_an_inner_adam_and_rmsprop_equals_torch_optim() {
    let (fx, configs) = fixtures();
    assert_eq!(configs.len(), 2);
    for (name, cfg) in configs {
        let train = TrainConfig {
            algorithm: cfg.clone(),
            ..TrainConfig::default()
        };
        train.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_ne!(cfg.inner_optimizer, OptimizerName::Sgd, "{name}");
        let full = meta_gradient(&cfg, &fx);
        let recompute = meta_gradient(
            &AlgorithmConfig {
                memory: Memory::Recompute,
                ..cfg.clone()
            },
            &fx,
        );
        let want = |k: &str| fx[&format!("{name}.{k}")].shallow_clone();
        for (mode, c) in [("full", &full), ("recompute", &recompute)] {
            let loss = c.query.loss.mean(Kind::Double).reshape([1]);
            assert!(max_diff(&loss, &want("meta_loss")) <= TOL, "{name} {mode}");
            let d = max_diff(&c.grads[0], &want("meta_grad"));
            assert!(d <= TOL, "{name} {mode}: max |∇θ0 − torch| = {d:e}");
            let d = max_diff(&c.grads[1], &want("hypergrad"));
            assert!(
                d <= TOL,
                "{name} {mode}: max |hypergradient − torch| = {d:e}"
            );
        }
        for (a, b) in full.grads.iter().zip(&recompute.grads) {
            let d = max_diff(a, b);
            assert!(d <= TOL, "{name}: max |full − recompute| = {d:e}");
        }
    }
}

/// First-order MAML and iMAML step with the same inner optimizer (hyperparameters not learned):
/// first-order MAML's meta-gradient and the query loss after iMAML's proximal inner loop equal
/// torch's.
#[test]
fn first_order_maml_and_imaml_adapt_with_the_inner_optimizer() {
    let (fx, configs) = fixtures();
    for (name, cfg) in configs {
        let fixed = AlgorithmConfig {
            learn_lr: false,
            learn_momentum: false,
            ..cfg
        };
        let fo = AlgorithmConfig {
            name: AlgorithmName::Fomaml,
            ..fixed.clone()
        };
        let imaml = AlgorithmConfig {
            name: AlgorithmName::Imaml,
            ..fixed
        };
        for c in [&fo, &imaml] {
            let train = TrainConfig {
                algorithm: c.clone(),
                ..TrainConfig::default()
            };
            train.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let got = contribution(&Maml { first_order: true }, &fo, &fx);
        let d = max_diff(&got.grads[0], &fx[&format!("{name}.first_order")]);
        assert!(d <= TOL, "{name}: max |first-order − torch| = {d:e}");
        let got = contribution(&Imaml, &imaml, &fx);
        let loss = got.query.loss.mean(Kind::Double).reshape([1]);
        let d = max_diff(&loss, &fx[&format!("{name}.imaml_query")]);
        assert!(
            d <= TOL,
            "{name}: iMAML's query loss differs from torch's by {d:e}"
        );
    }
}

#[test]
fn plain_sgd_gives_another_meta_gradient() {
    // The fixtures' Adam case with the default inner optimizer: far from torch's Adam value, so
    // the parity above cannot come from SGD steps.
    let (fx, configs) = fixtures();
    let cfg = AlgorithmConfig {
        inner_optimizer: OptimizerName::Sgd,
        inner_options: None,
        ..configs["adam_learn_lr"].clone()
    };
    let sgd = meta_gradient(&cfg, &fx);
    assert!(max_diff(&sgd.grads[0], &fx["adam_learn_lr.meta_grad"]) > 1e-3);
}

/// The key and message of `cfg`'s validation error.
fn error(edit: impl FnOnce(&mut AlgorithmConfig)) -> (String, String) {
    let mut cfg = TrainConfig::default();
    edit(&mut cfg.algorithm);
    let e = cfg.validate().unwrap_err();
    (e.key, e.message)
}

#[test]
fn bad_inner_options_name_their_key() {
    let (key, message) = error(|a| {
        a.inner_optimizer = OptimizerName::Adam;
        a.inner_momentum = 0.9;
    });
    assert_eq!(key, "algorithm.inner_momentum");
    assert!(message.contains("\"adam\" has no momentum"), "{message}");
    let (key, _) = error(|a| {
        a.inner_optimizer = OptimizerName::Adagrad;
        a.learn_momentum = true;
    });
    assert_eq!(key, "algorithm.learn_momentum");
    let (key, message) = error(|a| {
        a.inner_options = Some(crate::config::OptimizerOptions {
            betas: Some([0.9, 0.99]),
            ..Default::default()
        });
    });
    assert_eq!(key, "algorithm.inner_options.betas");
    assert!(
        message.contains("not an option of algorithm.inner_optimizer = \"sgd\""),
        "{message}"
    );
    let (key, _) = error(|a| {
        a.inner_options = Some(crate::config::OptimizerOptions {
            momentum: Some(0.9),
            ..Default::default()
        });
    });
    assert_eq!(key, "algorithm.inner_options.momentum");
    let (key, message) = error(|a| {
        a.inner_options = Some(crate::config::OptimizerOptions {
            nesterov: Some(true),
            ..Default::default()
        });
    });
    assert_eq!(key, "algorithm.inner_options.nesterov");
    assert!(
        message.contains("algorithm.inner_momentum > 0"),
        "{message}"
    );
    // Rmsprop has a momentum: learned, and set.
    let mut cfg = TrainConfig::default();
    cfg.algorithm.inner_optimizer = OptimizerName::Rmsprop;
    cfg.algorithm.inner_momentum = 0.5;
    cfg.algorithm.learn_momentum = true;
    cfg.validate().unwrap();
}
