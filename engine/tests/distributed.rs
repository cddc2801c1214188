//! Distributed meta-training is deterministic in the number of ranks: the same config on 1, 2 and
//! 3 MPI ranks (uneven splits of the meta-batch included) gives the same meta-parameters after K
//! iterations: 1e-10 in f64, 1e-5 in f32 (the all-reduce sums per-rank partial sums in another
//! order than one rank does; f32 carries about 7 digits and K Adam steps amplify the rounding).
//! With `run.reproducible` the same bits on 1, 2 and 3 ranks and 1 or 2 workers, f32 and f64.

#[path = "../../runtime/tests/mpi_support/mod.rs"]
mod mpi_support;

use metaloop_engine::config::{AlgorithmName, TrainConfig};
use metaloop_engine::data::Split;
use metaloop_engine::train::Trainer;
use metaloop_runtime::comm::Mpi;
use std::path::PathBuf;
use tch::Tensor;

const OUT_VAR: &str = "METALOOP_TEST_OUT";
const DTYPE_VAR: &str = "METALOOP_TEST_DTYPE";
/// Set for `run.reproducible`: the workers per rank.
const WORKERS_VAR: &str = "METALOOP_TEST_REPRODUCIBLE_WORKERS";

fn config(dtype: &str) -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.run.dtype = dtype.parse().unwrap();
    cfg.algorithm.name = AlgorithmName::Maml;
    cfg.algorithm.inner_steps = 2;
    cfg.algorithm.learn_lr = true;
    cfg.algorithm.learn_momentum = true;
    cfg.algorithm.inner_momentum = 0.5;
    // 7 tasks: 7 on one rank, 3 + 4 on two, 2 + 2 + 3 on three.
    cfg.outer.meta_batch = 7;
    cfg.outer.iterations = 5;
    if let Ok(workers) = std::env::var(WORKERS_VAR) {
        // 6 tasks: 6, 3 + 3 and 2 + 2 + 2; 200 Adam steps of a small MLP.
        cfg.run.reproducible = true;
        cfg.run.workers = workers.parse().unwrap();
        cfg.outer.meta_batch = 6;
        cfg.outer.iterations = 200;
        cfg.model.hidden = vec![8, 8];
    }
    cfg
}

/// The body each rank runs: train, then rank 0 writes the meta-parameters and a test report.
fn rank_body() {
    let dtype = std::env::var(DTYPE_VAR).unwrap();
    let out = PathBuf::from(std::env::var(OUT_VAR).unwrap());
    let cfg = config(&dtype);
    let mut trainer = Trainer::new(&cfg, Box::new(Mpi::init().unwrap())).unwrap();
    for _ in 0..cfg.outer.iterations {
        trainer.step().unwrap();
    }
    let report = trainer.evaluate(Split::Test, 10).unwrap();
    if trainer.rank() == 0 {
        let mut tensors = trainer.state().unwrap();
        tensors.push((
            "report.loss_after".into(),
            Tensor::from_slice(&[report.loss_after.mean]),
        ));
        let named: Vec<(&str, Tensor)> = tensors
            .iter()
            .map(|(n, t)| (n.as_str(), t.shallow_clone()))
            .collect();
        Tensor::write_safetensors(&named, &out).unwrap();
    }
}

fn run(ranks: usize, dtype: &str, dir: &std::path::Path) -> Vec<(String, Tensor)> {
    let out = dir.join(format!("{dtype}-{ranks}.safetensors"));
    mpi_support::run_under_mpirun_with_env(
        ranks,
        "same_parameters_on_1_2_and_3_ranks",
        &[(OUT_VAR, out.to_str().unwrap()), (DTYPE_VAR, dtype)],
    );
    read_sorted(&out)
}

fn read_sorted(out: &std::path::Path) -> Vec<(String, Tensor)> {
    let mut tensors = Tensor::read_safetensors(out).unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

#[test]
fn same_parameters_on_1_2_and_3_ranks() {
    if mpi_support::under_mpirun() {
        rank_body();
        return;
    }
    let dir = std::env::temp_dir().join(format!("metaloop-distributed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (dtype, tol) in [("f64", 1e-10), ("f32", 1e-5)] {
        let one = run(1, dtype, &dir);
        for ranks in [2, 3] {
            let many = run(ranks, dtype, &dir);
            assert_eq!(one.len(), many.len());
            for ((n1, t1), (n2, t2)) in one.iter().zip(&many) {
                assert_eq!(n1, n2);
                let d = (t1.to_kind(tch::Kind::Double) - t2.to_kind(tch::Kind::Double))
                    .abs()
                    .max()
                    .double_value(&[]);
                assert!(d <= tol, "{dtype}: `{n1}` differs by {d:e} between 1 and {ranks} ranks (tolerance {tol:e})");
            }
        }
        // The meta-parameters did move (the comparison is not between two untouched inits).
        assert!(one.iter().any(|(n, _)| n == "inner.lr"));
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `run.reproducible` (engine::exact): the same bits on 1, 2 and 3 ranks and on 1 and 2 workers
/// per rank, in f32 and f64, after 200 Adam steps of second-order MAML with learned inner lr
/// and momentum (θ0, the hyperparameters, Adam's moments and the test report's loss).
#[test]
fn bit_identical_on_1_2_and_3_ranks_and_2_workers_when_reproducible() {
    if mpi_support::under_mpirun() {
        rank_body();
        return;
    }
    let dir = std::env::temp_dir().join(format!("metaloop-reproducible-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |dtype: &str, ranks: usize, workers: usize| {
        let out = dir.join(format!("{dtype}-{ranks}-{workers}.safetensors"));
        let w = workers.to_string();
        mpi_support::run_under_mpirun_with_env(
            ranks,
            "bit_identical_on_1_2_and_3_ranks_and_2_workers_when_reproducible",
            &[
                (OUT_VAR, out.to_str().unwrap()),
                (DTYPE_VAR, dtype),
                (WORKERS_VAR, w.as_str()),
            ],
        );
        std::fs::read(&out).unwrap()
    };
    for (dtype, splits) in [
        ("f32", &[(2, 1), (3, 1), (1, 2), (2, 2)][..]),
        ("f64", &[(3, 1), (2, 2)][..]),
    ] {
        let one = run(dtype, 1, 1);
        for &(ranks, workers) in splits {
            assert!(
                run(dtype, ranks, workers) == one,
                "{dtype}: {ranks} ranks of {workers} workers wrote other bytes than 1 rank"
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn ranks_that_diverge_are_stopped_with_the_iteration_named() {
    if !mpi_support::under_mpirun() {
        mpi_support::run_under_mpirun(2, "ranks_that_diverge_are_stopped_with_the_iteration_named");
        return;
    }
    let mut cfg = config("f64");
    cfg.run.consistency_every = 2;
    let mut trainer = Trainer::new(&cfg, Box::new(Mpi::init().unwrap())).unwrap();
    trainer.step().unwrap();
    // Rank 1 resumes from a different state (e.g. a stale checkpoint): its θ0 differs.
    if trainer.rank() == 1 {
        let mut state = trainer.state().unwrap();
        state[0].1 = &state[0].1 + 1e-3;
        trainer.restore(1, &state).unwrap();
    }
    let err = trainer
        .step()
        .err()
        .expect("every rank stops at the check")
        .to_string();
    assert!(
        err.contains("iteration 2") && err.contains("differ across ranks") && err.contains("[1]"),
        "rank {}: {err}",
        trainer.rank()
    );
}
