//! LSLR (MAML++'s per-layer, per-step learned inner learning rates): its hypergradients equal
//! central finite differences of the meta-loss in f64, and it meta-trains.

use metaloop_engine::config::{AlgorithmName, Dtype, OptimizerName, TrainConfig};
use metaloop_engine::data::Split;
use metaloop_engine::train::Trainer;
use metaloop_runtime::comm::Local;
use tch::{Kind, Tensor};

fn config() -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.algorithm.name = AlgorithmName::Lslr;
    cfg.algorithm.inner_steps = 3;
    cfg.algorithm.inner_lr = 0.05;
    cfg
}

fn tensor<'a>(state: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &state.iter().find(|(n, _)| n == name).unwrap().1
}

/// The meta-loss of iteration 0's tasks with the learned rates set to `lr`.
fn meta_loss(trainer: &mut Trainer, start: &[(String, Tensor)], lr: &Tensor) -> f64 {
    let state: Vec<(String, Tensor)> = start
        .iter()
        .map(|(n, t)| {
            let t = if n == "inner.lr" { lr.copy() } else { t.copy() };
            (n.clone(), t)
        })
        .collect();
    trainer.restore(0, &state).unwrap();
    trainer.step().unwrap().meta_loss
}

#[test]
fn lslr_hypergradients_match_finite_differences() {
    let mut cfg = config();
    cfg.run.dtype = Dtype::F64;
    cfg.run.consistency_every = 0;
    cfg.outer.meta_batch = 4;
    // Outer SGD with lr 1: one step moves every meta-parameter by exactly minus its gradient.
    cfg.outer.optimizer = OptimizerName::Sgd;
    cfg.outer.lr = 1.0;
    let mut trainer = Trainer::new(&cfg, Box::new(Local)).unwrap();
    let groups = trainer.model_params().layout().len() as i64;
    let start = trainer.state().unwrap();
    let lr0 = tensor(&start, "inner.lr").copy();
    assert_eq!(lr0.size(), vec![3, groups], "one rate per step and tensor");
    // Distinct rates per step and tensor, so that a mixed-up row or column shows.
    let lr0 = lr0
        + Tensor::arange(3 * groups, (Kind::Double, tch::Device::Cpu)).reshape([3, groups]) * 1e-3;
    meta_loss(&mut trainer, &start, &lr0);
    let after = trainer.state().unwrap();
    let hypergradient = &lr0 - tensor(&after, "inner.lr");
    // Central differences with h = 1e-6. Truncation error ~ h²·|f'''|/6: the meta-loss is
    // strongly curved in the rates (at h = 1e-5 it measured 1e-6 on a gradient of 9), so about
    // 1e-8 at h = 1e-6; rounding error ~ 1e-16·|L|/h ≈ 3e-10. 1e-7 (relative, with an absolute
    // floor) is above both and far below a wrong term, which would be ≥ 1e-3 (the tolerance of
    // runtime/tests/optim_finite_difference.rs).
    let h = 1e-6;
    let mut largest = 0.0f64;
    for i in 0..3 * groups {
        let bump = |sign: f64| {
            let lr = lr0.copy();
            let _ = lr.view([-1]).get(i).g_add_scalar_(sign * h);
            lr
        };
        let fd = (meta_loss(&mut trainer, &start, &bump(1.0))
            - meta_loss(&mut trainer, &start, &bump(-1.0)))
            / (2.0 * h);
        let ad = hypergradient.view([-1]).double_value(&[i]);
        assert!(
            (ad - fd).abs() <= 1e-7 * (1.0 + fd.abs()),
            "lr[{}, {}]: autograd {ad:e}, finite differences {fd:e}",
            i / groups,
            i % groups
        );
        largest = largest.max(fd.abs());
    }
    assert!(largest > 1e-6, "every hypergradient is ~0: {largest:e}");
}

#[test]
fn lslr_learns_rates_of_its_own_for_each_step() {
    let mut cfg = config();
    cfg.outer.iterations = 400;
    cfg.eval.test_tasks = 200;
    let mut trainer = Trainer::new(&cfg, Box::new(Local)).unwrap();
    let losses: Vec<f64> = (0..cfg.outer.iterations)
        .map(|_| trainer.step().unwrap().meta_loss)
        .collect();
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&losses[..50]), mean(&losses[losses.len() - 50..]));
    assert!(
        last < 0.8 * first,
        "meta-loss did not fall: {first} -> {last}"
    );
    let report = trainer.evaluate(Split::Test, cfg.eval.test_tasks).unwrap();
    assert!(
        report.loss_after.mean < report.loss_before.mean,
        "adaptation with the learned rates does not help: {report:?}"
    );
    let lr = &trainer.learned_hparams()[0].tensor;
    // The steps' rates moved apart from their common start.
    let spread = (lr.select(0, 0) - lr.select(0, 2))
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        spread > 1e-4,
        "the per-step rates did not move apart: {lr:?}"
    );
}
