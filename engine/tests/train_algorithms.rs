//! Every algorithm of the engine meta-trains: its meta-loss falls, adaptation helps at meta-test
//! time, learned hyperparameters move, and state/restore resumes exactly.

use metaloop_engine::config::{Dtype, OptimizerName, TrainConfig};
use metaloop_engine::data::Split;
use metaloop_engine::train::Trainer;
use metaloop_runtime::comm::Local;

fn config(name: &str) -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.algorithm.name = name.parse().unwrap();
    cfg.outer.iterations = 600;
    cfg.eval.test_tasks = 200;
    cfg
}

/// Trains; returns (mean meta-loss over the first 50 iterations, over the last 50, the trainer).
fn train(cfg: &TrainConfig) -> (f64, f64, Trainer) {
    let mut trainer = Trainer::new(cfg, Box::new(Local)).unwrap();
    let mut losses = Vec::new();
    for _ in 0..cfg.outer.iterations {
        let m = trainer.step().unwrap();
        assert!(
            m.meta_loss.is_finite() && m.grad_norm.is_finite(),
            "{}: non-finite metrics {m:?}",
            cfg.algorithm.name
        );
        losses.push(m.meta_loss);
    }
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    (
        mean(&losses[..50]),
        mean(&losses[losses.len() - 50..]),
        trainer,
    )
}

fn check_learns(cfg: &TrainConfig) -> Trainer {
    let (first, last, trainer) = train(cfg);
    let report = trainer.evaluate(Split::Test, cfg.eval.test_tasks).unwrap();
    eprintln!(
        "{} (steps {}, learn_lr {}, learn_momentum {}, multi-step {}): meta-loss {first:.3} -> {last:.3}; test MSE {:.3} -> {:.3}",
        cfg.algorithm.name,
        cfg.algorithm.inner_steps,
        cfg.algorithm.learn_lr,
        cfg.algorithm.learn_momentum,
        cfg.algorithm.multi_step_loss,
        report.loss_before.mean,
        report.loss_after.mean
    );
    assert!(
        last < 0.8 * first,
        "{}: meta-loss did not fall: {first} -> {last}",
        cfg.algorithm.name
    );
    assert!(
        report.loss_after.mean < report.loss_before.mean,
        "{}: adaptation does not help at meta-test time",
        cfg.algorithm.name
    );
    trainer
}

#[test]
fn first_order_maml_learns() {
    check_learns(&config("fomaml"));
}

#[test]
fn meta_sgd_learns_one_lr_per_element() {
    let trainer = check_learns(&config("metasgd"));
    let learned = &trainer.learned_hparams()[0];
    let (name, lr) = (&learned.name, &learned.tensor);
    assert_eq!(name, "lr");
    assert_eq!(lr.size(), vec![trainer.model_params().layout().numel()]);
    // The per-element learning rates moved away from their common start, each its own way.
    assert!(
        lr.std(true).double_value(&[]) > 1e-4,
        "Meta-SGD's learning rates did not move apart"
    );
}

#[test]
fn anil_adapts_only_the_head() {
    let mut cfg = config("anil");
    cfg.algorithm.inner_steps = 2;
    cfg.algorithm.inner_lr = 0.05;
    check_learns(&cfg);
}

#[test]
fn reptile_learns() {
    let mut cfg = config("reptile");
    cfg.algorithm.inner_steps = 5;
    cfg.outer.optimizer = OptimizerName::Sgd;
    cfg.outer.lr = 1.0; // ε = 1 with Adam-free SGD: θ ← θ + mean(φ − θ)
    cfg.outer.iterations = 800;
    check_learns(&cfg);
}

#[test]
fn learned_lr_and_momentum_move_and_multi_step_loss_trains() {
    let mut cfg = config("maml");
    cfg.algorithm.inner_steps = 3;
    cfg.algorithm.learn_lr = true;
    cfg.algorithm.learn_momentum = true;
    cfg.algorithm.inner_momentum = 0.5;
    cfg.algorithm.multi_step_loss = true;
    let trainer = check_learns(&cfg);
    let groups = trainer.model_params().layout().len() as i64;
    for h in trainer.learned_hparams() {
        let (name, t) = (&h.name, &h.tensor);
        assert_eq!(
            t.size(),
            vec![groups],
            "{name}: one value per parameter tensor"
        );
        let start = if name == "lr" { 0.01 } else { 0.5 };
        let moved = (t - start).abs().max().double_value(&[]);
        assert!(moved > 1e-4, "learned {name} did not move from {start}");
    }
}

#[test]
fn state_and_restore_resume_exactly() {
    let mut cfg = config("maml");
    cfg.run.dtype = Dtype::F64;
    cfg.algorithm.learn_lr = true;
    cfg.outer.iterations = 10;
    // Straight through: 10 iterations.
    let mut straight = Trainer::new(&cfg, Box::new(Local)).unwrap();
    for _ in 0..10 {
        straight.step().unwrap();
    }
    // 4 iterations, save, a fresh trainer restores and does the other 6.
    let mut first = Trainer::new(&cfg, Box::new(Local)).unwrap();
    for _ in 0..4 {
        first.step().unwrap();
    }
    let saved = first.state().unwrap();
    let mut resumed = Trainer::new(&cfg, Box::new(Local)).unwrap();
    resumed.restore(4, &saved).unwrap();
    for _ in 0..6 {
        resumed.step().unwrap();
    }
    assert_eq!(resumed.iteration(), 10);
    for ((n1, a), (n2, b)) in straight
        .state()
        .unwrap()
        .iter()
        .zip(resumed.state().unwrap().iter())
    {
        assert_eq!(n1, n2);
        assert!(a.equal(b), "`{n1}` differs after resuming");
    }
    // A state from another model is refused with the tensor's name.
    let mut other = cfg.clone();
    other.model.hidden = vec![20, 20];
    let mut wrong = Trainer::new(&other, Box::new(Local)).unwrap();
    let err = wrong
        .restore(4, &saved)
        .err()
        .expect("a shape mismatch")
        .to_string();
    assert!(err.contains("tensor `0.weight` has shape"), "{err}");
}

#[test]
fn non_finite_meta_gradients_skip_the_outer_step_and_stop_after_k_in_a_row() {
    // The float sum, and the exact one of run.reproducible (no fixed-point scale exists then).
    for reproducible in [false, true] {
        let mut cfg = config("maml");
        cfg.run.reproducible = reproducible;
        // An inner lr this large overflows the adapted weights: every task's query loss is not finite.
        cfg.algorithm.inner_lr = 1e30;
        cfg.outer.meta_batch = 4;
        cfg.outer.max_nonfinite_skips = 3;
        let mut trainer = Trainer::new(&cfg, Box::new(Local)).unwrap();
        let before = trainer.state().unwrap();
        for i in 1..=2 {
            let m = trainer.step().unwrap();
            assert!(m.skipped, "step {i} was not skipped: {m:?}");
            assert_eq!(m.nonfinite_tasks, vec![0, 1, 2, 3]);
            assert_eq!(m.iteration, i);
        }
        // Skipped steps leave every meta-parameter and the outer state untouched.
        for ((n, a), (_, b)) in before.iter().zip(trainer.state().unwrap().iter()) {
            assert!(a.equal(b), "`{n}` changed during skipped steps");
        }
        let err = trainer
            .step()
            .err()
            .expect("the third skip in a row stops the run")
            .to_string();
        assert!(
            err.contains("iteration 2")
                && err.contains("3 outer steps in a row")
                && err.contains("max_nonfinite_skips"),
            "{err}"
        );
    }
}

#[test]
fn recompute_and_adjoint_meta_gradients_train_exactly_like_full_tracking() {
    for (name, multi_step_loss, interval) in [
        ("maml", false, 0),
        ("metasgd", false, 0),
        ("anil", false, 0),
        ("maml", true, 0),
        ("maml", true, 1),
        ("metasgd", true, 3),
    ] {
        let mut cfg = config(name);
        cfg.run.dtype = Dtype::F64;
        cfg.algorithm.multi_step_loss = multi_step_loss;
        cfg.algorithm.checkpoint_interval = interval;
        // Few iterations: MAML++'s step weights are annealed over the first tenth of them, so
        // the three steps compared use three different weightings.
        cfg.outer.iterations = 20;
        cfg.algorithm.inner_steps = 3;
        cfg.algorithm.inner_momentum = 0.5;
        cfg.algorithm.learn_momentum = true;
        let run = |memory: &str| {
            let mut c = cfg.clone();
            c.algorithm.memory = memory.parse().unwrap();
            let mut t = Trainer::new(&c, Box::new(Local)).unwrap();
            let losses: Vec<f64> = (0..3).map(|_| t.step().unwrap().meta_loss).collect();
            (losses, t.state().unwrap())
        };
        let (full_losses, full) = run("full");
        let (re_losses, re) = run("recompute");
        for (a, b) in full_losses.iter().zip(&re_losses) {
            assert!(
                (a - b).abs() <= 1e-10 * (1.0 + a.abs()),
                "{name}: meta-loss {a} vs {b}"
            );
        }
        for ((n, a), (_, b)) in full.iter().zip(re.iter()) {
            let d = (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
                .abs()
                .max()
                .double_value(&[]);
            assert!(
                d <= 1e-10,
                "{name}: `{n}` differs by {d:e} between full tracking and recompute"
            );
        }
    }
}

/// Task-parallel workers (`run.workers`) split the rank's tasks into chunks on their own threads
/// and sum the chunks' meta-gradients: the same training as one worker (f64, summation order
/// only), for every algorithm and both memory modes.
#[test]
fn task_parallel_workers_train_exactly_like_one_worker() {
    for (name, memory) in [
        ("maml", "full"),
        ("maml", "recompute"),
        ("fomaml", "full"),
        ("metasgd", "full"),
        ("anil", "full"),
        ("reptile", "full"),
        ("pretrain", "full"),
        ("lslr", "full"),
        ("imaml", "full"),
    ] {
        let mut cfg = config(name);
        cfg.run.dtype = Dtype::F64;
        cfg.algorithm.inner_steps = 2;
        cfg.algorithm.memory = memory.parse().unwrap();
        cfg.algorithm.multi_step_loss = matches!(name, "maml" | "lslr");
        cfg.algorithm.learn_lr = name == "maml";
        cfg.outer.iterations = 3;
        let run = |workers: usize, reproducible: bool| {
            let mut c = cfg.clone();
            c.run.workers = workers;
            c.run.reproducible = reproducible;
            let mut t = Trainer::new(&c, Box::new(Local)).unwrap();
            let losses: Vec<f64> = (0..3).map(|_| t.step().unwrap().meta_loss).collect();
            (losses, t.state().unwrap())
        };
        let (one_losses, one) = run(1, false);
        // Three workers, and the exact sums of run.reproducible (engine::exact) on 1 and 3.
        let exact_one = run(1, true);
        let exact_bits = state_bits(&exact_one.1);
        for (other, (losses, state)) in [
            ("3 workers", run(3, false)),
            ("reproducible", exact_one),
            ("reproducible, 3 workers", run(3, true)),
        ] {
            for (a, b) in one_losses.iter().zip(&losses) {
                assert!(
                    (a - b).abs() <= 1e-10 * (1.0 + a.abs()),
                    "{name} ({memory}): meta-loss {a} with 1 worker, {b} with {other}"
                );
            }
            let (n, d) = state_difference(&one, &state);
            assert!(
                d <= 1e-10,
                "{name} ({memory}): `{n}` differs by {d:e} between 1 worker and {other}"
            );
            if other == "reproducible, 3 workers" {
                assert_eq!(
                    exact_bits,
                    state_bits(&state),
                    "{name} ({memory}): reproducible on 1 and 3 workers"
                );
            }
        }
    }
}

/// Every tensor of a trainer's state as bytes, by name.
fn state_bits(state: &[(String, tch::Tensor)]) -> Vec<(String, Vec<u8>)> {
    state
        .iter()
        .map(|(n, t)| {
            let t = t.to_kind(tch::Kind::Double).contiguous().view([-1]);
            let v = Vec::<f64>::try_from(&t).unwrap();
            (n.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect()
}

/// `run.reproducible` in f32: 200 Adam steps of second-order MAML with a learned inner lr give
/// the same bits on 1, 2 and 3 workers and any task chunk (engine::exact; docs/faults.md).
#[test]
fn reproducible_f32_training_is_bit_identical_on_any_workers_and_chunks() {
    let mut cfg = config("maml");
    cfg.algorithm.learn_lr = true;
    cfg.outer.meta_batch = 6;
    cfg.outer.iterations = 200;
    cfg.model.hidden = vec![8, 8];
    cfg.run.reproducible = true;
    let run = |workers: usize, chunk: usize| {
        let mut c = cfg.clone();
        c.run.workers = workers;
        c.run.task_chunk = chunk;
        // Chunk 1 without reproducible: the float path, one task at a time, summed in order.
        c.run.reproducible = chunk != 1;
        let mut t = Trainer::new(&c, Box::new(Local)).unwrap();
        for _ in 0..c.outer.iterations {
            t.step().unwrap();
        }
        state_bits(&t.state().unwrap())
    };
    let one = run(1, 0);
    for (workers, chunk) in [(2, 0), (3, 0), (2, 4)] {
        assert!(
            run(workers, chunk) == one,
            "{workers} workers, task chunk {chunk}: other bits than 1 worker"
        );
    }
    // The contrast: the float sums of 1 and 3 workers differ.
    assert!(
        run(1, 1) != run(3, 1),
        "float sums should depend on the split"
    );
}

/// The largest absolute difference between two trainers' states (θ0, learned hyperparameters,
/// the outer optimizer's moments, which hold the meta-gradients).
fn state_difference(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) -> (String, f64) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((n, x), (m, y))| {
            assert_eq!(n, m);
            let d = (x.to_kind(tch::Kind::Double) - y.to_kind(tch::Kind::Double))
                .abs()
                .max()
                .double_value(&[]);
            (n.clone(), d)
        })
        .fold(
            (String::new(), 0.0),
            |best, (n, d)| {
                if d > best.1 {
                    (n, d)
                } else {
                    best
                }
            },
        )
}

/// Task chunks (`run.task_chunk`): each worker runs its tasks a few at a time and sums the
/// chunks' meta-gradients, the same training as one pass over the meta-batch (f64, summation
/// order only), for every algorithm, with full tracking and with recompute, with the multi-step
/// loss and learned hyperparameters, with one worker and with several.
#[test]
fn task_chunks_train_exactly_like_the_whole_meta_batch() {
    for (name, memory) in [
        ("maml", "full"),
        ("maml", "recompute"),
        ("fomaml", "full"),
        ("metasgd", "full"),
        ("metasgd", "recompute"),
        ("anil", "recompute"),
        ("reptile", "full"),
        ("pretrain", "full"),
        ("lslr", "full"),
        ("imaml", "full"),
    ] {
        let mut cfg = config(name);
        cfg.run.dtype = Dtype::F64;
        cfg.algorithm.inner_steps = 3;
        cfg.algorithm.memory = memory.parse().unwrap();
        cfg.algorithm.checkpoint_interval = 2;
        cfg.algorithm.multi_step_loss = matches!(name, "maml" | "lslr" | "metasgd");
        cfg.algorithm.learn_lr = name == "maml";
        cfg.outer.iterations = 2;
        let run = |workers: usize, chunk: usize| {
            let mut c = cfg.clone();
            c.run.workers = workers;
            c.run.task_chunk = chunk;
            let mut t = Trainer::new(&c, Box::new(Local)).unwrap();
            let metrics: Vec<(f64, f64)> = (0..2)
                .map(|_| {
                    let m = t.step().unwrap();
                    (m.meta_loss, m.grad_norm)
                })
                .collect();
            (metrics, t.state().unwrap())
        };
        let (whole_metrics, whole) = run(1, 0);
        for (workers, chunk) in [(1, 1), (1, 4), (2, 3), (1, 25)] {
            let (metrics, chunked) = run(workers, chunk);
            for ((l0, g0), (l1, g1)) in whole_metrics.iter().zip(&metrics) {
                for (what, a, b) in [("meta-loss", l0, l1), ("meta-gradient norm", g0, g1)] {
                    assert!(
                        (a - b).abs() <= 1e-10 * (1.0 + a.abs()),
                        "{name} ({memory}): {what} {a} whole, {b} in chunks of {chunk} on {workers} workers"
                    );
                }
            }
            let (n, d) = state_difference(&whole, &chunked);
            assert!(
                d <= 1e-10,
                "{name} ({memory}): `{n}` differs by {d:e} between the whole meta-batch and chunks of {chunk} on {workers} workers"
            );
        }
    }
}

#[test]
fn inner_clipping_reaches_the_inner_steps_and_a_bound_never_reached_changes_nothing() {
    let mut cfg = config("maml");
    cfg.run.dtype = Dtype::F64;
    cfg.algorithm.inner_steps = 2;
    let losses = |clip: f64| -> Vec<f64> {
        let mut c = cfg.clone();
        c.algorithm.inner_clip_grad_norm = clip;
        let mut trainer = Trainer::new(&c, Box::new(Local)).unwrap();
        (0..3).map(|_| trainer.step().unwrap().meta_loss).collect()
    };
    let off = losses(0.0);
    // A factor of exactly 1 leaves every value as it was.
    assert_eq!(losses(1e12), off);
    // A tight bound holds the inner steps back: the first meta-loss (same θ0) differs.
    let tight = losses(1e-3);
    assert_ne!(tight[0], off[0]);
}

/// MAML++'s derivative-order annealing in the Trainer: with `first_order_until = 2` the first two
/// iterations train exactly as FOMAML, and the third exactly as second-order MAML from FOMAML's
/// state (f64), which differs from FOMAML's third iteration.
#[test]
fn first_order_until_trains_as_fomaml_then_switches_to_maml() {
    let mut cfg = config("maml");
    cfg.run.dtype = Dtype::F64;
    cfg.algorithm.inner_steps = 2;
    cfg.outer.iterations = 3;
    let mut annealed_cfg = cfg.clone();
    annealed_cfg.algorithm.first_order_until = 2;
    let mut fomaml_cfg = cfg.clone();
    fomaml_cfg.algorithm.name = "fomaml".parse().unwrap();
    let new = |c: &TrainConfig| Trainer::new(c, Box::new(Local)).unwrap();
    let (mut annealed, mut fomaml) = (new(&annealed_cfg), new(&fomaml_cfg));
    for _ in 0..2 {
        annealed.step().unwrap();
        fomaml.step().unwrap();
    }
    let (_, d) = state_difference(&annealed.state().unwrap(), &fomaml.state().unwrap());
    assert_eq!(d, 0.0, "the first-order iterations differ from FOMAML's");
    let mut maml = new(&cfg);
    maml.restore(2, &fomaml.state().unwrap()).unwrap();
    annealed.step().unwrap();
    maml.step().unwrap();
    fomaml.step().unwrap();
    let (name, d) = state_difference(&annealed.state().unwrap(), &maml.state().unwrap());
    assert_eq!(
        d, 0.0,
        "after the switch `{name}` differs from MAML's by {d}"
    );
    let (_, d) = state_difference(&annealed.state().unwrap(), &fomaml.state().unwrap());
    assert!(d > 1e-8, "the third iteration is still first order");
}
