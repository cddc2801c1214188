//! Scaling benchmark: meta-training throughput (tasks/s) of the engine's Trainer on sinusoid
//! regression (MAML, second order, the paper's MLP) against the number of MPI ranks, with the
//! time spent in the one all-reduce per iteration reported separately.
//!
//! - strong scaling: a fixed global meta-batch (`SCALING_BATCH`, default 32 tasks) split over the ranks;
//! - weak scaling: a fixed per-rank batch (`SCALING_BATCH / 2` tasks per rank).
//!
//! `cargo bench --bench scaling` runs itself under `mpirun -n 1` and `mpirun -n 2` (CPU, Mpi
//! communicator) and prints a table; `SCALING_RANKS=1,2,4` and `SCALING_ITERS` change the runs.
//! It measures and prints; it asserts nothing.

use metaloop::engine::config::TrainConfig;
use metaloop::engine::train::Trainer;
use metaloop::runtime::comm::{Communicator, Mpi};
use metaloop::runtime::Result;
use std::cell::Cell;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tch::Tensor;

/// A communicator that adds the wall time of its all-reduces to a shared counter.
struct Timed {
    inner: Mpi,
    all_reduce: Rc<Cell<Duration>>,
}

impl Communicator for Timed {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
        let start = Instant::now();
        let r = self.inner.all_reduce_sum(t);
        self.all_reduce.set(self.all_reduce.get() + start.elapsed());
        r
    }
    fn all_reduce_max(&self, t: &mut Tensor) -> Result<()> {
        self.inner.all_reduce_max(t)
    }
    fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        self.inner.broadcast(t, root)
    }
    fn barrier(&self) -> Result<()> {
        self.inner.barrier()
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const WARMUP: usize = 3;

/// One rank of one run: prints `RESULT <mode> <ranks> <global batch> <tasks/s> <ms/iter> <all-reduce ms/iter>`.
fn rank_main(mode: &str) {
    let mpi = Mpi::init().expect("MPI");
    let ranks = mpi.size();
    // The node's cores shared among its ranks: libtorch's default (all cores per rank) would
    // oversubscribe them.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tch::set_num_threads((cores / mpi.local_size()).max(1) as i32);
    let batch = env_usize("SCALING_BATCH", 32);
    let iters = env_usize("SCALING_ITERS", 30);
    let global = match mode {
        "strong" => batch,
        _ => batch / 2 * ranks,
    };
    let mut cfg = TrainConfig::default();
    cfg.outer.meta_batch = global;
    cfg.outer.iterations = (WARMUP + iters) as u64;
    let all_reduce = Rc::new(Cell::new(Duration::ZERO));
    let comm = Timed {
        inner: mpi,
        all_reduce: all_reduce.clone(),
    };
    let mut trainer = Trainer::new(&cfg, Box::new(comm)).expect("trainer");
    for _ in 0..WARMUP {
        trainer.step().expect("step");
    }
    all_reduce.set(Duration::ZERO);
    let start = Instant::now();
    for _ in 0..iters {
        trainer.step().expect("step");
    }
    let total = start.elapsed().as_secs_f64();
    if trainer.rank() == 0 {
        let per_iter = total / iters as f64;
        println!(
            "RESULT {mode} {ranks} {global} {:.1} {:.2} {:.3}",
            (global * iters) as f64 / total,
            per_iter * 1e3,
            all_reduce.get().as_secs_f64() / iters as f64 * 1e3
        );
    }
}

fn main() {
    if let Ok(mode) = std::env::var("SCALING_MODE") {
        rank_main(&mode);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let ranks: Vec<usize> = std::env::var("SCALING_RANKS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "sinusoid MAML (2nd order, MLP 40-40), {} timed iterations after {WARMUP} warm-up, CPU, Mpi",
        env_usize("SCALING_ITERS", 30)
    );
    println!("| scaling | ranks | global meta-batch | tasks/s | ms/iteration | all-reduce ms/iteration |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for mode in ["strong", "weak"] {
        for &n in &ranks {
            let out = Command::new("mpirun")
                .args(["-n", &n.to_string()])
                .args([
                    "--allow-run-as-root",
                    "--oversubscribe",
                    "--bind-to",
                    "none",
                ])
                .arg(&exe)
                .env("SCALING_MODE", mode)
                .output()
                .expect("cannot start mpirun");
            let stdout = String::from_utf8_lossy(&out.stdout);
            match stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) {
                Some(line) if out.status.success() => {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    println!(
                        "| {} | {} | {} | {} | {} | {} |",
                        f[0], f[1], f[2], f[3], f[4], f[5]
                    );
                }
                _ => eprintln!(
                    "{mode} with {n} ranks failed ({}):\n{stdout}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
        }
    }
}
