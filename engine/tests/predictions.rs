//! engine::predictions: the query predictions shown in `plots/predictions.png`. Their accuracy
//! over the shown tasks equals the meta-test's (`Trainer::evaluate` on the same tasks), their
//! classes and probabilities equal those of logits computed here with the runtime's InnerLoop
//! alone, and their images are the episode's pixels, channels-last. `Trainer::set_model_tensors`
//! (how `metaloop plot` reads a model file back) round-trips `model_tensors`.

#[path = "data_support/mod.rs"]
mod data_support;

use data_support::{folder_conv4_config, write_rgb, TempDir};
use metaloop_engine::config::{AlgorithmName, Dtype, EvalBatchNorm, TrainConfig};
use metaloop_engine::data::Split;
use metaloop_engine::predictions::{PredictionSpec, TaskPredictions};
use metaloop_engine::setup;
use metaloop_engine::train::Trainer;
use metaloop_runtime::comm::Local;
use metaloop_runtime::{optim, InnerLoop};
use tch::{Kind, Tensor};

const TASKS: usize = 3;

/// A 5-way 1-shot Conv-4 config on 28×28 RGB PNG folders written into `tmp`.
fn config(tmp: &TempDir) -> TrainConfig {
    for (split, first, classes) in [("train", 0, 10), ("test", 100, 7)] {
        for c in first..first + classes {
            for d in 0..5 {
                let path = tmp.path().join(split).join(format!("class{c:03}/{d}.png"));
                write_rgb(&path, 28, 28, c, d);
            }
        }
    }
    let mut cfg = folder_conv4_config(tmp.path());
    cfg.algorithm.inner_steps = 1;
    cfg.eval.inner_steps = 3;
    cfg.outer.meta_batch = 2;
    cfg
}

/// A trainer on `cfg` after `steps` outer steps.
fn trained(cfg: &TrainConfig, steps: usize) -> Trainer {
    let mut trainer = Trainer::new(cfg, Box::new(Local)).unwrap();
    for _ in 0..steps {
        assert!(trainer.step().unwrap().meta_loss.is_finite());
    }
    trainer
}

/// The mean over tasks of the fraction of queries whose `before` (or `after`) class is right.
fn accuracy(grid: &[TaskPredictions], after: bool) -> f64 {
    let per_task = grid.iter().map(|t| {
        let right = t
            .queries
            .iter()
            .filter(|q| (if after { q.after } else { q.before }).class == q.label)
            .count();
        right as f64 / t.queries.len() as f64
    });
    per_task.sum::<f64>() / grid.len() as f64
}

/// Every query of every task (`queries_per_class` = the task's queries) agrees with the meta-test
/// of the same tasks, before and after adaptation.
fn assert_agrees_with_evaluate(trainer: &Trainer, cfg: &TrainConfig) -> Vec<TaskPredictions> {
    let spec = PredictionSpec {
        tasks: TASKS,
        queries_per_class: cfg.task.queries as usize,
    };
    let grid = trainer.predictions(&spec).unwrap();
    assert_eq!(grid.len(), TASKS);
    let report = trainer.evaluate(Split::Test, TASKS).unwrap();
    let (before, after) = (
        report.accuracy_before.unwrap().mean,
        report.accuracy_after.unwrap().mean,
    );
    eprintln!("accuracy before {before:.4}, after {after:.4}");
    assert!((accuracy(&grid, false) - before).abs() < 1e-6, "{before}");
    assert!((accuracy(&grid, true) - after).abs() < 1e-6, "{after}");
    for (i, t) in grid.iter().enumerate() {
        assert_eq!(t.task, i);
        assert_eq!(t.inner_steps, 3, "eval.inner_steps");
        assert_eq!(t.queries.len(), 15);
        for q in &t.queries {
            for g in [q.before, q.after] {
                assert!(g.class < 5 && g.probability >= 0.2 - 1e-12 && g.probability <= 1.0);
            }
        }
    }
    grid
}

/// The total cross-entropy over tasks of logits `[T, N, W]` against labels `[T, N]`.
fn cross_entropy(logits: &Tensor, y: &Tensor) -> Tensor {
    let w = logits.size()[2];
    logits
        .reshape([-1, w])
        .log_softmax(-1, Kind::Double)
        .gather(1, &y.reshape([-1, 1]), false)
        .neg()
        .reshape(y.size())
        .mean_dim(&[1i64][..], false, Kind::Double)
        .sum(Kind::Double)
}

#[test]
fn maml_predictions_match_the_meta_test_and_logits_computed_with_the_inner_loop() {
    let tmp = TempDir::new("predictions-maml");
    let mut cfg = config(&tmp);
    cfg.run.dtype = Dtype::F64;
    let trainer = trained(&cfg, 8);
    let grid = assert_agrees_with_evaluate(&trainer, &cfg);

    // The same tasks and θ0, adapted with plain SGD by the runtime's InnerLoop (BatchNorm with
    // the query's statistics: eval.batchnorm = "transductive").
    let source = setup::task_source(&cfg).unwrap();
    let batch = source
        .meta_batch(cfg.run.seed, 0, 0..TASKS, Split::Test)
        .unwrap();
    let (sx, qx) = (
        batch.support_x.to_kind(Kind::Double),
        batch.query_x.to_kind(Kind::Double),
    );
    let model = setup::build_model(&cfg, 3).unwrap();
    let theta = trainer.model_params();
    let before = model
        .forward(&theta.expand_tasks(TASKS as i64).unwrap(), &qx, true)
        .unwrap();
    let mut inner = InnerLoop::new(
        model.as_ref(),
        theta,
        optim::Sgd::new(cfg.algorithm.inner_lr),
    )
    .copy_initial_weights(true)
    .track_higher_grads(false)
    .tasks(TASKS as i64)
    .build()
    .unwrap();
    for _ in 0..cfg.eval.inner_steps {
        let loss = cross_entropy(&inner.forward(&sx).unwrap(), &batch.support_y);
        inner.step(&loss).unwrap();
    }
    let after = inner.forward(&qx).unwrap();
    let mut changed = 0;
    for (t, task) in grid.iter().enumerate() {
        for (i, q) in task.queries.iter().enumerate() {
            assert_eq!(
                q.label as i64,
                batch.query_y.int64_value(&[t as i64, i as i64])
            );
            for (g, logits) in [(q.before, &before), (q.after, &after)] {
                let p = logits.get(t as i64).get(i as i64).softmax(-1, Kind::Double);
                let class = p.argmax(-1, false).int64_value(&[]);
                assert_eq!(g.class as i64, class, "task {t} query {i}");
                let expected = p.double_value(&[class]);
                assert!(
                    (g.probability - expected).abs() < 1e-10,
                    "{g:?} vs {expected}"
                );
            }
            changed += usize::from(q.before.class != q.after.class);
        }
    }
    assert!(changed > 0, "adaptation changed no prediction");

    // Images: the episode's pixels in [0, 1], [H, W, C] (the folder dataset is not inverted).
    let (support, query) = (&grid[1].support[3], &grid[1].queries[4]);
    assert_eq!(support.1, 3);
    assert_eq!(
        (support.0.height, support.0.width, support.0.channels),
        (28, 28, 3)
    );
    for (picture, x) in [
        (&support.0, batch.support_x.get(1).get(3)),
        (&query.image, batch.query_x.get(1).get(4)),
    ] {
        for (y, xx, c) in [(0, 0, 0), (5, 17, 1), (27, 3, 2), (13, 27, 0)] {
            let expected = x.double_value(&[c, y, xx]);
            let got = picture.pixels[(y as usize * 28 + xx as usize) * 3 + c as usize];
            assert!((f64::from(got) - expected).abs() < 1e-6, "({y}, {xx}, {c})");
        }
    }
    // The first queries of each class, class-major.
    let spec = PredictionSpec {
        tasks: 1,
        queries_per_class: 2,
    };
    let two = trainer.predictions(&spec).unwrap();
    let labels: Vec<usize> = two[0].queries.iter().map(|q| q.label).collect();
    assert_eq!(labels, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
    assert_eq!(two[0].queries[3], grid[0].queries[4]);
}

#[test]
fn metasgd_predictions_with_support_only_batchnorm_match_the_meta_test() {
    let tmp = TempDir::new("predictions-metasgd");
    let mut cfg = config(&tmp);
    cfg.algorithm.name = AlgorithmName::Metasgd;
    cfg.eval.batchnorm = EvalBatchNorm::SupportOnly;
    let trainer = trained(&cfg, 8);
    assert_agrees_with_evaluate(&trainer, &cfg);
}

/// `set_model_tensors` reads back what `model_tensors` gives (θ0 and Meta-SGD's `inner.lr`), and
/// names the tensor of a model file that is missing, of another shape, or not the model's.
#[test]
fn model_tensors_round_trip_and_a_mismatched_model_file_is_named() {
    let mut cfg = TrainConfig::default();
    cfg.algorithm.name = AlgorithmName::Metasgd;
    cfg.outer.lr = 0.05;
    let source = trained(&cfg, 3);
    let tensors = source.model_tensors().unwrap();
    let mut fresh = Trainer::new(&cfg, Box::new(Local)).unwrap();
    let differs = |a: &[(String, Tensor)], b: &[(String, Tensor)]| {
        a.iter()
            .zip(b)
            .any(|((n, x), (m, y))| n != m || x.size() != y.size() || x != y)
    };
    assert!(differs(&tensors, &fresh.model_tensors().unwrap()));
    fresh.set_model_tensors(&tensors).unwrap();
    assert!(!differs(&tensors, &fresh.model_tensors().unwrap()));

    let mut error =
        |tensors: Vec<(String, Tensor)>| fresh.set_model_tensors(&tensors).unwrap_err().to_string();
    let without = |name: &str| -> Vec<(String, Tensor)> {
        tensors
            .iter()
            .filter(|(n, _)| n != name)
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    };
    assert_eq!(
        error(without("inner.lr")),
        "model file: tensor `inner.lr` is missing"
    );
    let mut reshaped = without("0.bias");
    reshaped.push((
        "0.bias".into(),
        Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)),
    ));
    assert_eq!(
        error(reshaped),
        "model file: tensor `0.bias` has shape [3], the model needs [40]"
    );
    let mut extra = without("");
    extra.push((
        "inner.momentum".into(),
        Tensor::zeros([6], (Kind::Float, tch::Device::Cpu)),
    ));
    assert_eq!(
        error(extra),
        "model file: tensor `inner.momentum` is not one of this model's"
    );
}
