//! The outer step against torch.optim 2.11.0, torch.optim.lr_scheduler and
//! torch.nn.utils.clip_grad_norm_: 100 steps on a fixed sequence of gradients, in f64
//! (tests/fixtures/outer/gen_outer.py writes the fixtures and the configurations).

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::OuterStep;
use crate::config::{OuterConfig, TrainConfig};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/outer");
/// f64 parity, the project's tolerance.
const TOL: f64 = 1e-10;

fn fixtures() -> (HashMap<String, Tensor>, Vec<(String, OuterConfig)>) {
    let tensors = Tensor::read_safetensors(format!("{FIXTURES}/outer_f64.safetensors"))
        .expect("outer_f64.safetensors");
    let json = std::fs::read_to_string(format!("{FIXTURES}/configs.json")).expect("configs.json");
    let configs: std::collections::BTreeMap<String, OuterConfig> =
        serde_json::from_str(&json).expect("configs.json parses as OuterConfig");
    (tensors.into_iter().collect(), configs.into_iter().collect())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Runs one configuration's 100 steps; returns how many steps clipped.
fn check(name: &str, outer: OuterConfig, fx: &HashMap<String, Tensor>, fused: bool) -> u64 {
    let cfg = TrainConfig {
        outer,
        ..TrainConfig::default()
    };
    cfg.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    let grads = &fx["grads"];
    let (thetas, lrs, norms) = (
        &fx[&format!("{name}.theta")],
        &fx[&format!("{name}.lr")],
        &fx[&format!("{name}.norm")],
    );
    let mut theta = fx["theta0"].shallow_clone();
    assert_eq!(theta.kind(), Kind::Double);
    let mut step = OuterStep::for_vector(&cfg, fused, &theta).unwrap();
    for t in 0..cfg.outer.iterations as i64 {
        let g = grads.get(t);
        let norm = g.norm().double_value(&[]);
        let want_norm = norms.double_value(&[t]);
        assert!(
            (norm - want_norm).abs() <= TOL,
            "{name} step {t}: norm {norm} vs {want_norm}"
        );
        let (next, update) = step.update(&theta, &g, norm).unwrap();
        step.iteration += 1;
        let want_lr = lrs.double_value(&[t]);
        assert!(
            (update.lr - want_lr).abs() <= TOL * want_lr.abs().max(1e-3),
            "{name} step {t}: lr {} vs torch {want_lr}",
            update.lr
        );
        let clip = cfg.outer.clip_grad_norm;
        let torch_clips = clip > 0.0 && clip / (want_norm + 1e-6) < 1.0;
        assert_eq!(
            update.clipped.is_some(),
            torch_clips,
            "{name} step {t}: clipped"
        );
        let d = max_diff(&next, &thetas.get(t));
        assert!(
            d <= TOL,
            "{name} (fused {fused}) step {}: max |θ − torch| = {d:e}",
            t + 1
        );
        theta = next;
    }
    step.clips
}

#[test]
fn outer_steps_equal_torch_optim_with_schedules_and_clipping() {
    let (fx, configs) = fixtures();
    assert_eq!(configs.len(), 10);
    for (name, outer) in configs {
        let clip = outer.clip_grad_norm;
        let clips = check(&name, outer.clone(), &fx, false);
        if clip > 0.0 {
            // The fixture's gradients are large and small: some steps clip, some do not.
            assert!(
                clips > 0 && clips < 100,
                "{name}: {clips} of 100 steps clipped"
            );
        }
        check(&name, outer, &fx, true);
    }
}

#[test]
fn every_runtime_optimizer_is_an_outer_optimizer() {
    let (_, configs) = fixtures();
    let used: std::collections::HashSet<_> = configs.iter().map(|(_, c)| c.optimizer).collect();
    assert_eq!(used.len(), crate::config::OptimizerName::ALL.len());
}

#[test]
fn an_option_of_another_optimizer_is_named() {
    let outer = OuterConfig {
        momentum: Some(0.9),
        ..OuterConfig::default()
    };
    let cfg = TrainConfig {
        outer,
        ..TrainConfig::default()
    };
    let e = cfg.validate().unwrap_err();
    assert_eq!(e.key, "outer.momentum");
    assert!(e.message.contains("adam"), "{e}");
}

#[test]
fn each_task_gradient_is_clipped_as_torch_clips_that_task_alone() {
    let (fx, _) = fixtures();
    let grads = fx["inner.grads"].set_requires_grad(true);
    // gen_outer.py's INNER_CLIP.
    let (clipped, logged) = crate::schedule::clip_rows(&grads, 1.0, 0).unwrap();
    let d = max_diff(&clipped.detach(), &fx["inner.clipped"]);
    assert!(d <= TOL, "max |clipped − torch| = {d:e}");
    // The log: each clipped row's norm before clipping, 0 for the rows left alone.
    let before = fx["inner.grads"].norm_scalaropt_dim(2, [-1i64].as_slice(), true);
    let want = before.where_self(&before.gt(1.0 - 1e-6), &before.zeros_like());
    assert!(max_diff(&logged, &want) <= TOL);
    // Some rows clip and some do not, and the factor stays in the graph.
    let norms = clipped
        .detach()
        .norm_scalaropt_dim(2, [-1i64].as_slice(), false);
    let below = norms.lt(1.0 - 1e-6).sum(Kind::Int64).int64_value(&[]);
    assert!(below > 0 && below < 8, "{below} of 8 rows below the bound");
    assert!(clipped.requires_grad());
    // One task's row as [P] clips alike.
    let (row, _) = crate::schedule::clip_rows(&fx["inner.grads"].get(1), 1.0, 0).unwrap();
    assert!(max_diff(&row, &fx["inner.clipped"].get(1)) <= TOL);
}

/// `(pred − y)²` averaged, as torch's MSE.
fn mse(pred: &Tensor, y: &Tensor) -> Tensor {
    (pred - y).square().mean(pred.kind())
}

#[test]
fn a_clipped_inner_loop_gives_torchs_second_order_meta_gradient() {
    use metaloop_runtime::nn::{self, Module};
    use metaloop_runtime::{optim::Sgd, InnerLoop, Params, StepOptions};
    let (fx, _) = fixtures();
    let get = |k: &str| fx[&format!("maml.{k}")].shallow_clone();
    let m = nn::Sequential::new()
        .push(nn::Linear::new(3, 4))
        .push(nn::Tanh)
        .push(nn::Linear::new(4, 2));
    let layout = std::sync::Arc::new(m.layout().unwrap());
    let theta0 = get("theta0").copy().set_requires_grad(true);
    let params = Params::from_flat(layout, theta0).unwrap();
    // gen_outer.py's INNER_LR, INNER_CLIP and INNER_STEPS.
    let mut inner = InnerLoop::new(&m, &params, Sgd::new(0.5))
        .copy_initial_weights(false)
        .build()
        .unwrap();
    let norms = get("norms");
    let mut clipped = 0;
    for s in 0..3 {
        let loss = mse(&inner.forward(&get("xs")).unwrap(), &get("ys"));
        clipped += i32::from(norms.double_value(&[s as i64]) + 1e-6 > 1.0);
        let clip = StepOptions::new()
            .try_grad_callback(move |g| Ok(crate::schedule::clip_rows(g, 1.0, s)?.0));
        inner.step_with(&loss, clip).unwrap();
    }
    assert!(clipped > 0 && clipped < 3, "{clipped} of 3 steps clipped");
    let meta_loss = mse(&inner.forward(&get("xq")).unwrap(), &get("yq"));
    assert!(max_diff(&meta_loss.reshape([1]), &get("meta_loss")) <= TOL);
    let grad = Tensor::run_backward(&[&meta_loss], &[params.flat()], false, false).remove(0);
    let d = max_diff(&grad, &get("meta_grad"));
    assert!(d <= TOL, "max |meta-gradient − torch| = {d:e}");
}
