//! Constant memory without tracking: 10,000 inner steps of `InnerLoop` with
//! `track_higher_grads(false)` keep the resident set size (RSS, from /proc/self/statm) within a
//! fixed bound of its value after a warm-up; the same probe sees a tracked loop grow past that
//! bound within 100 steps, so the bound is one a leak would break.
//!
//! The workload: 25 sinusoid tasks batched as one `[25, P]` parameter tensor (the MAML paper's
//! MLP 1-40-40-1, P = 1761, f32), 10 support points each, Adam (two moment buffers per step).
//! One test function only: other tests' allocations in the same process would move the RSS.

use metaloop_runtime::nn;
use metaloop_runtime::optim::Adam;
use metaloop_runtime::{InnerLoop, Params};
use tch::{Device, Kind, Tensor};

const TASKS: i64 = 25;
const STEPS: usize = 10_000;
const WARM_UP: usize = 500;

/// The bound on RSS growth after the warm-up: 16 MiB. One step makes new parameters
/// (25 × 1761 f32 = 176 KiB) and new Adam moments (2 × 176 KiB), 528 KiB in all; keeping them for
/// even one step in 300 would add 33 × 528 KiB ≈ 17 MiB over 10,000 steps. Allocator noise
/// (glibc arenas, libtorch's small CPU blocks) is far below it: the largest growth measured was
/// 344 KiB, and 100 tracked steps grew the RSS by 106 MiB (`cargo test -p metaloop --test
/// memory_constant -- --nocapture` prints both, 2-core x86-64 build machine).
const BOUND: u64 = 16 << 20;

/// Resident set size of this process in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // The kernel's page size; 4096 on the x86-64 and aarch64 Linux this project targets.
    let page = std::fs::read_to_string("/proc/self/smaps")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("KernelPageSize:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(4096, |kib| kib * 1024);
    pages * page
}

fn mse_per_task_summed(pred: &Tensor, y: &Tensor) -> Tensor {
    // Mean over each task's points, summed over tasks: each task's gradient is its own.
    (pred - y)
        .square()
        .mean_dim(&[1i64, 2][..], false, Kind::Float)
        .sum(Kind::Float)
}

#[test]
fn ten_thousand_untracked_inner_steps_keep_rss_within_a_fixed_bound() {
    tch::set_num_threads(1);
    tch::manual_seed(7);
    let model = nn::mlp(&[1, 40, 40, 1]);
    let params = Params::init(&model, 0, Kind::Float, Device::Cpu).unwrap();
    let theta = params.expand_tasks(TASKS).unwrap();
    let x = Tensor::rand([TASKS, 10, 1], (Kind::Float, Device::Cpu)) * 10.0 - 5.0;
    let amplitude = Tensor::rand([TASKS, 1, 1], (Kind::Float, Device::Cpu)) * 4.9 + 0.1;
    let y = (&x + 1.0).sin() * amplitude;

    let mut inner = InnerLoop::new(&model, &theta, Adam::new(1e-3))
        .track_higher_grads(false)
        .build()
        .unwrap();
    let first_loss = mse_per_task_summed(&inner.forward(&x).unwrap(), &y).double_value(&[]);
    let mut samples = Vec::new();
    for step in 1..=STEPS {
        let loss = mse_per_task_summed(&inner.forward(&x).unwrap(), &y);
        inner.step(&loss).unwrap();
        if step == WARM_UP || step % 1000 == 0 {
            samples.push((step, rss_bytes()));
        }
    }
    assert_eq!(inner.time(), STEPS);
    // The steps did train: the summed loss fell.
    let last_loss = mse_per_task_summed(&inner.forward(&x).unwrap(), &y).double_value(&[]);
    assert!(last_loss < 0.5 * first_loss, "{first_loss} -> {last_loss}");
    let base = samples[0].1;
    let peak = samples.iter().map(|s| s.1).max().unwrap();
    println!(
        "untracked: RSS after {WARM_UP} steps {} KiB, then every 1000 steps (KiB): {:?}; growth {} KiB, bound {} KiB",
        base >> 10,
        samples.iter().skip(1).map(|s| s.1 >> 10).collect::<Vec<_>>(),
        peak.saturating_sub(base) >> 10,
        BOUND >> 10
    );
    assert!(
        peak.saturating_sub(base) < BOUND,
        "RSS grew by {} KiB over {STEPS} untracked steps (bound {} KiB)",
        peak.saturating_sub(base) >> 10,
        BOUND >> 10
    );
    drop(inner);

    // The probe sees retention: a tracked loop keeps every step's parameters, moments and graph.
    let mut tracked = InnerLoop::new(&model, &theta, Adam::new(1e-3))
        .track_higher_grads(true)
        .build()
        .unwrap();
    let before = rss_bytes();
    for _ in 0..100 {
        let loss = mse_per_task_summed(&tracked.forward(&x).unwrap(), &y);
        tracked.step(&loss).unwrap();
    }
    let growth = rss_bytes().saturating_sub(before);
    println!("tracked: 100 steps grew RSS by {} KiB", growth >> 10);
    assert!(
        growth > BOUND,
        "a tracked loop grew RSS by only {} KiB in 100 steps",
        growth >> 10
    );
}
