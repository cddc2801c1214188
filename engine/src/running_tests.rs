//! `eval.batchnorm = "running"` in the trainer: the kept statistics are the mean over the
//! meta-batch of every task's blend, computed here again with the runtime's layers alone (whose
//! blending is checked against PyTorch in runtime/tests/per_step_batchnorm.rs); they do not
//! depend on task chunks or workers; checkpoints carry them; meta-test normalises with them.

use metaloop_runtime::nn::{conv4_steps, BnState, Module, Scope};
use metaloop_runtime::optim::Sgd;
use metaloop_runtime::{InnerLoop, Params};
use tch::{Kind, Tensor};

use crate::bench::{workload, RandomTasks};
use crate::config::{Backbone, Dtype, EvalBatchNorm, TaskKind, TrainConfig};
use crate::data::Split;
use crate::loss::{CrossEntropy, Loss};
use crate::train::Trainer;

const STEPS: usize = 2;
const TASKS: usize = 3;

/// A 5-way 1-shot Conv-4 (8 filters, 28×28) with per-step BatchNorm, f64, on random tasks.
fn trainer(batchnorm: EvalBatchNorm, edit: impl FnOnce(&mut TrainConfig)) -> Trainer {
    let mut w = workload("omniglot").unwrap();
    w.meta_batch = TASKS as i64;
    let mut cfg = TrainConfig::default();
    cfg.task.kind = TaskKind::Omniglot;
    cfg.task.root = "unused".into();
    cfg.task.ways = 5;
    cfg.model.backbone = Backbone::Conv4;
    cfg.model.per_step_batchnorm = true;
    cfg.run.dtype = Dtype::F64;
    cfg.run.workers = 1;
    cfg.run.consistency_every = 0;
    cfg.algorithm.inner_steps = STEPS;
    cfg.algorithm.inner_lr = 0.4;
    cfg.outer.meta_batch = TASKS;
    cfg.eval.batchnorm = batchnorm;
    edit(&mut cfg);
    // The random tasks come from libtorch's global generator: the same tasks for every trainer.
    static SEEDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let tasks = {
        let _one_at_a_time = SEEDING.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(7);
        RandomTasks::new(&w).unwrap()
    };
    Trainer::builder(&cfg)
        .tasks(tasks)
        .model(conv4_steps(1, 5, 8, 28, Some(STEPS as i64)))
        .loss(CrossEntropy)
        .threads(1)
        .build()
        .unwrap()
}

fn max_gap(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((n, x), (m, y))| {
            assert_eq!(n, m);
            (x - y).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

#[test]
fn kept_statistics_are_the_mean_of_every_tasks_blend() {
    let mut t = trainer(EvalBatchNorm::Running, |_| {});
    // 4 BatchNorms, a mean and a variance each, one row per step.
    assert_eq!(t.meta.running.len(), 8);
    assert_eq!(t.meta.running[0].1.size(), [STEPS as i64, 8]);
    let flat = t.meta.theta.flat().detach().copy();
    let theta = Params::from_flat(t.meta.theta.layout().clone(), flat).unwrap();
    let cfg = t.config().clone();
    let batch = t.tasks.next_batch(&cfg, 0, 0..TASKS).unwrap();
    let batch = t.net.prepare(batch).unwrap();
    t.step().unwrap();
    // Again with the runtime alone: every task from the defaults, one blend per support step.
    let model = conv4_steps(1, 5, 8, 28, Some(STEPS as i64));
    let mut inner = InnerLoop::new(&model, &theta, Sgd::new(0.4))
        .copy_initial_weights(false)
        .track_higher_grads(false)
        .tasks(TASKS as i64)
        .build()
        .unwrap();
    let mut state = BnState::new();
    for step in 0..STEPS {
        let mut scope = Scope::new(inner.params(), true, Some(&mut state)).with_step(Some(step));
        let out = model.forward_scoped(&mut scope, &batch.support_x).unwrap();
        let loss = CrossEntropy.task_losses(&out, &batch.support_y).unwrap();
        inner.step(&loss.total(Kind::Double).unwrap()).unwrap();
    }
    let want: Vec<(String, Tensor)> = state
        .iter()
        .map(|(n, v)| (n.to_string(), v.mean_dim(0, false, Kind::Double)))
        .collect();
    let gap = max_gap(&t.meta.running, &want);
    assert!(gap <= 1e-10, "kept statistics differ by {gap:e}");
    // Each step's row holds its own statistics.
    let mean = &t.meta.running[0].1;
    assert!((mean.get(0) - mean.get(1)).abs().max().double_value(&[]) > 1e-6);
}

#[test]
fn chunks_and_workers_keep_the_same_statistics_and_checkpoints_carry_them() {
    let run = |edit: fn(&mut TrainConfig)| {
        let mut t = trainer(EvalBatchNorm::Running, edit);
        for _ in 0..2 {
            t.step().unwrap();
        }
        t
    };
    let whole = run(|_| {});
    for edit in [
        (|c: &mut TrainConfig| c.run.task_chunk = 1) as fn(&mut TrainConfig),
        |c: &mut TrainConfig| c.run.workers = 2,
    ] {
        let gap = max_gap(&whole.meta.running, &run(edit).meta.running);
        assert!(gap <= 1e-10, "the kept statistics differ by {gap:e}");
    }
    // A resume from the state after one iteration gives the uninterrupted run's statistics.
    let mut first = trainer(EvalBatchNorm::Running, |_| {});
    first.step().unwrap();
    let state = first.state().unwrap();
    assert!(state.iter().any(|(n, _)| n == "0.1.running_var"));
    let mut resumed = trainer(EvalBatchNorm::Running, |_| {});
    resumed.restore(1, &state).unwrap();
    resumed.step().unwrap();
    assert_eq!(max_gap(&whole.meta.running, &resumed.meta.running), 0.0);
    assert_eq!(
        max_gap(&whole.state().unwrap(), &resumed.state().unwrap()),
        0.0
    );
    // The model file has them under PyTorch's buffer names.
    let names: Vec<String> = whole
        .model_tensors()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.contains(&"3.1.running_mean".to_string()));
}

#[test]
fn meta_test_normalises_with_the_kept_statistics() {
    let mut kept = trainer(EvalBatchNorm::Running, |_| {});
    let mut batch_stats = trainer(EvalBatchNorm::Transductive, |_| {});
    assert!(batch_stats.meta.running.is_empty());
    for _ in 0..3 {
        kept.step().unwrap();
        batch_stats.step().unwrap();
    }
    // Keeping statistics changes no meta-gradient.
    assert_eq!(
        max_gap(
            &kept.model_tensors().unwrap()[..10],
            &batch_stats.model_tensors().unwrap()[..10]
        ),
        0.0
    );
    let a = kept.evaluate(Split::Test, TASKS).unwrap();
    let b = batch_stats.evaluate(Split::Test, TASKS).unwrap();
    assert!(a.loss_after.mean.is_finite());
    assert!(
        (a.loss_after.mean - b.loss_after.mean).abs() > 1e-6,
        "meta-test with kept statistics equals the transductive one"
    );
}
