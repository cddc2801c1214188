//! The memory planner (`run.memory_budget_gib`): before the first iteration it measures what one
//! task costs and picks the fastest way to run the meta-batch that fits the budget.
//!
//! What it measures: one task's whole meta-gradient (inner loop, query loss, backward pass) on
//! the rank's first task of the coming iteration, with the memory mode being considered, as the
//! peak memory above what the process held before (engine::memory: the resident set on the CPU,
//! the caching allocator's bytes in tensors on CUDA). A whole meta-gradient rather than one inner
//! step and one query pass, because the backward pass of second-order MAML holds more than
//! either (the double backward through every step), and one task costs 1/meta-batch of an
//! iteration. Before it, the host's free heap memory is returned to the system, so that the
//! measurement is not hidden by memory freed earlier.
//!
//! The estimate of a plan is linear in the tasks in memory at once:
//!
//! ```text
//! held before + the meta-batch's inputs (twice on the CPU: the prefetched batch too)
//!   + workers × tasks per chunk × one task's measured cost
//! ```
//!
//! and a plan fits when its estimate is at most the budget less a margin ([`margin`]: 10% of
//! the budget, at least 256 MiB). The margin covers what the measurement does not see (the
//! outer step, the prefetch thread, allocators rounding and fragmenting) and the meta-test.
//!
//! The plans, fastest first: full tracking before recompute (at interval 1: every θ kept, each
//! step's graph rebuilt once; recompute costs 1.35–1.5× the time), then all of the automatic
//! workers before one worker (for the large models that need a plan, the time is in the
//! convolutions, which one worker's intra-op threads share almost as well), and the largest
//! chunk that fits. Settings the config names (`run.task_chunk`, `run.workers`,
//! `algorithm.memory`, `algorithm.checkpoint_interval`) are kept and only checked. A plan changes
//! only the order in which the same terms are added (docs/large-models.md).
//!
//! This module holds what the planner decides; engine::planner measures and chooses
//! (`Trainer::plan_memory`). Nothing here prints.

use serde::Serialize;

use crate::config::{Memory, TrainConfig};

/// The share of the budget a plan leaves free (at least [`MIN_MARGIN`] bytes).
pub const MARGIN: f64 = 0.10;

/// The smallest margin, bytes (256 MiB).
pub const MIN_MARGIN: f64 = (256u64 << 20) as f64;

/// The bytes a plan leaves free of a budget of `bytes`.
pub fn margin(bytes: f64) -> f64 {
    (MARGIN * bytes).max(MIN_MARGIN)
}

/// The planner's settings that the config names, and so keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fixed {
    pub task_chunk: bool,
    pub workers: bool,
    pub memory: bool,
    pub checkpoint_interval: bool,
}

impl Fixed {
    /// The settings among `keys` (dotted keys the config file or `--set` names).
    pub fn from_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Fixed {
        let mut f = Fixed::default();
        for k in keys {
            match k {
                "run.task_chunk" => f.task_chunk = true,
                "run.workers" => f.workers = true,
                "algorithm.memory" => f.memory = true,
                "algorithm.checkpoint_interval" => f.checkpoint_interval = true,
                _ => {}
            }
        }
        f
    }

    /// The settings of `cfg` that differ from their defaults (for callers without the keys).
    pub fn from_values(cfg: &TrainConfig) -> Fixed {
        Fixed {
            task_chunk: cfg.run.task_chunk != 0,
            workers: cfg.run.workers != 0,
            memory: cfg.algorithm.memory != Memory::Full,
            checkpoint_interval: cfg.algorithm.checkpoint_interval != 0,
        }
    }
}

/// What the planner chose, and the numbers it chose from (GiB).
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPlan {
    pub budget_gib: f64,
    /// Where the budget came from (engine::budget).
    pub budget_source: String,
    /// The part of the budget left free (10%, at least 256 MiB).
    pub margin_gib: f64,
    /// The memory held before the first iteration.
    pub held_gib: f64,
    /// The meta-batch's inputs (on the CPU twice: the prefetched batch too).
    pub inputs_gib: f64,
    /// One task's measured meta-gradient with full tracking (when measured).
    pub task_full_gib: Option<f64>,
    /// One task's measured meta-gradient with recompute (when measured).
    pub task_recompute_gib: Option<f64>,
    /// The plan: "full" or "recompute", the checkpoint interval (0 = ⌈√steps⌉), tasks per
    /// chunk (0 = all of a worker's tasks) and workers.
    pub memory: Memory,
    pub checkpoint_interval: usize,
    pub task_chunk: usize,
    pub workers: usize,
    /// The plan's estimated peak.
    pub estimate_gib: f64,
}

impl std::fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let chunk = match self.task_chunk {
            0 => "all tasks at once".to_string(),
            c => format!("task chunk {c}"),
        };
        let memory = match self.memory {
            Memory::Full => "full tracking".to_string(),
            Memory::Recompute => format!("recompute (interval {})", self.checkpoint_interval),
        };
        let measured: Vec<String> = [
            ("full", self.task_full_gib),
            ("recompute", self.task_recompute_gib),
        ]
        .iter()
        .filter_map(|(m, g)| g.map(|g| format!("{g:.2} GiB {m}")))
        .collect();
        write!(
            f,
            "memory plan: {memory}, {chunk}, {} worker(s); estimated peak {:.2} GiB of a {:.2} GiB budget ({}, margin {:.2} GiB); one task measured {}",
            self.workers,
            self.estimate_gib,
            self.budget_gib,
            self.budget_source,
            self.margin_gib,
            measured.join(", ")
        )
    }
}

/// True for libtorch's refusals to allocate: the host's ("can't allocate memory", or C++'s
/// bad_alloc, e.g. under `ulimit -v`) and CUDA's ("out of memory").
pub fn out_of_memory(message: &str) -> bool {
    ["can't allocate memory", "out of memory", "bad_alloc"]
        .iter()
        .any(|m| message.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_named_are_fixed_and_the_margin_is_a_tenth_but_at_least_256_mib() {
        let f = Fixed::from_keys(["run.task_chunk", "algorithm.memory", "run.seed"]);
        assert!(f.task_chunk && f.memory && !f.workers && !f.checkpoint_interval);
        let mut cfg = TrainConfig::default();
        assert_eq!(Fixed::from_values(&cfg), Fixed::default());
        cfg.run.workers = 2;
        assert!(Fixed::from_values(&cfg).workers);
        let gib = (1u64 << 30) as f64;
        assert_eq!(margin(16.0 * gib), 1.6 * gib);
        assert_eq!(margin(gib), MIN_MARGIN);
        assert!(out_of_memory(
            "DefaultCPUAllocator: can't allocate memory: you tried"
        ));
        assert!(out_of_memory("std::bad_alloc") && !out_of_memory("shape mismatch"));
    }
}
