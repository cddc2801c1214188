//! The memory planner's measurement and choice (engine::plan has what it decides and why):
//! [`Trainer::plan_memory`]. Nothing here prints.

use tch::{Device, Tensor};

use crate::algorithms::{Algorithm, Shard};
use crate::budget::{self, Budget, GIB};
use crate::chunks;
use crate::config::{AlgorithmName, ConfigError, Memory, TrainConfig};
use crate::data::{MetaBatch, Split};
use crate::memory;
use crate::plan::{margin, out_of_memory, Fixed, MemoryPlan, MARGIN, MIN_MARGIN};
use crate::setup::rank_slice;
use crate::train::Trainer;
use crate::workers::Workers;
use crate::{Error, Result};

/// A way to run the meta-batch.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    memory: Memory,
    interval: usize,
    workers: usize,
}

/// The fixed part of every estimate and the rank's tasks.
struct Ground {
    budget: Budget,
    usable: f64,
    held: f64,
    /// Bytes of one task's inputs, times the copies held at once.
    task_inputs: f64,
    tasks: usize,
}

impl Ground {
    fn inputs(&self, tasks: usize) -> f64 {
        self.task_inputs * tasks as f64
    }

    /// The estimate with `at_once` tasks' meta-gradients in memory at once, each costing `task`.
    fn estimate(&self, at_once: usize, task: f64) -> f64 {
        self.held + self.inputs(self.tasks) + at_once as f64 * task
    }
}

/// Below this many bytes a task's measurement is repeated (64 MiB; see `Trainer::probe`).
const SMALL_TASK: f64 = (64u64 << 20) as f64;

impl Trainer {
    /// The memory plan the iterations follow (engine::plan), when one was made.
    pub fn memory_plan(&self) -> Option<&MemoryPlan> {
        self.plan.as_ref()
    }

    /// Plans this rank's memory (see the module documentation) and runs the plan from the first
    /// iteration on. `None` when planning is off (`run.memory_budget_gib = 0`, a budget "auto"
    /// cannot find, or a rank without tasks). A budget that even one task with recompute at
    /// interval 1 does not fit is an error naming `run.memory_budget_gib`.
    pub fn plan_memory(&mut self, fixed: &Fixed) -> Result<Option<MemoryPlan>> {
        let device = self.device();
        let Some(budget) = budget::resolve(self.config().run.memory_budget_gib, device) else {
            return Ok(None);
        };
        let range = rank_slice(self.config().outer.meta_batch, self.rank(), self.size());
        if range.is_empty() {
            return Ok(None);
        }
        let probe_batch = self.probe_batch(range.start)?;
        settle(device);
        let copies = if device == Device::Cpu { 2.0 } else { 1.0 };
        let ground = Ground {
            usable: budget.bytes as f64 - margin(budget.bytes as f64),
            held: memory::current_bytes(device).unwrap_or(0) as f64,
            task_inputs: copies * batch_bytes(&probe_batch)?,
            tasks: range.len(),
            budget,
        };
        if ground.estimate(1, 0.0) > ground.usable {
            return Err(self.too_small(&ground, 0.0, false));
        }
        // Per memory mode: one task's cost, or None where the measurement ran out of memory.
        let mut measured: [Option<Option<f64>>; 2] = [None, None];
        for c in self.candidates(fixed) {
            let slot = usize::from(c.memory == Memory::Recompute);
            let task = match measured[slot] {
                Some(t) => t,
                None => *measured[slot].insert(self.probe(c, &probe_batch)?),
            };
            let Some(task) = task else { continue };
            if let Some(chunk) = self.largest_chunk(&ground, c, task, fixed) {
                let plan = self.plan(&ground, c, chunk, task, measured.map(Option::flatten));
                self.adopt(&plan);
                return Ok(Some(plan));
            }
        }
        let smallest = self.smallest(fixed);
        let task = self.probe(smallest, &probe_batch)?;
        match task {
            Some(t) if ground.estimate(1, t) <= ground.usable => {
                Err(self.fixed_too_large(&ground, fixed))
            }
            // Out of memory while measuring: one task needs more than the room left.
            None => Err(self.too_small(&ground, ground.usable - ground.estimate(1, 0.0), true)),
            Some(t) => Err(self.too_small(&ground, t, false)),
        }
    }

    /// The rank's first task of the coming iteration, on the device.
    fn probe_batch(&self, first: usize) -> Result<MetaBatch> {
        let cfg = self.config();
        let b = self.tasks.source.meta_batch(
            cfg.run.seed,
            self.iteration(),
            first..first + 1,
            Split::Train,
        )?;
        self.net.prepare(b)
    }

    /// One task's meta-gradient with candidate `c`'s memory mode, bytes above what was held;
    /// `None` when it ran out of memory. A task measured below [`SMALL_TASK`] is measured once
    /// more: the first backward pass of a process also pays one-time costs (the autograd
    /// engine's threads, libtorch's caches) that would otherwise count once per task.
    fn probe(&self, c: Candidate, batch: &MetaBatch) -> Result<Option<f64>> {
        match self.probe_once(c, batch)? {
            Some(b) if b < SMALL_TASK => self.probe_once(c, batch),
            other => Ok(other),
        }
    }

    fn probe_once(&self, c: Candidate, batch: &MetaBatch) -> Result<Option<f64>> {
        let mut cfg = self.compute.clone();
        cfg.algorithm.memory = c.memory;
        cfg.algorithm.checkpoint_interval = c.interval;
        settle(self.device());
        let algorithm: &dyn Algorithm = self.algorithm.as_ref();
        let (result, added) = memory::measure(self.device(), || {
            let shard: Shard<'_> = self.net.shard(&cfg, &self.meta, self.iteration(), batch);
            chunks::run_chunks(algorithm, vec![(shard, batch.slice(0..1)?)], 1.0).map(drop)
        });
        settle(self.device());
        match result {
            Ok(()) => Ok(Some(added.unwrap_or(0) as f64)),
            Err(e) if out_of_memory(&e.to_string()) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The candidates, fastest first, that the fixed settings allow.
    fn candidates(&self, fixed: &Fixed) -> Vec<Candidate> {
        let a = &self.config().algorithm;
        let mut memories = vec![];
        if !fixed.memory || a.memory == Memory::Full {
            memories.push((Memory::Full, a.checkpoint_interval));
        }
        if recompute_allowed(self.config()) && (!fixed.memory || a.memory == Memory::Recompute) {
            let chosen = fixed.checkpoint_interval || fixed.memory;
            memories.push((
                Memory::Recompute,
                if chosen { a.checkpoint_interval } else { 1 },
            ));
        }
        let now = self.workers.count;
        let mut workers = vec![now];
        if now > 1 && !fixed.workers {
            workers.push(1);
        }
        memories
            .into_iter()
            .flat_map(|(memory, interval)| {
                workers.iter().map(move |&w| Candidate {
                    memory,
                    interval,
                    workers: w,
                })
            })
            .collect()
    }

    /// The smallest setting: one worker, recompute at interval 1 where the algorithm has it.
    fn smallest(&self, fixed: &Fixed) -> Candidate {
        let recompute = recompute_allowed(self.config());
        let a = &self.config().algorithm;
        Candidate {
            memory: if recompute {
                Memory::Recompute
            } else {
                a.memory
            },
            interval: if recompute && !fixed.checkpoint_interval {
                1
            } else {
                a.checkpoint_interval
            },
            workers: 1,
        }
    }

    /// The largest chunk (0: all of a worker's tasks) of candidate `c` that fits; the
    /// configured one only, when fixed.
    fn largest_chunk(&self, g: &Ground, c: Candidate, task: f64, fixed: &Fixed) -> Option<usize> {
        let per_worker = g.tasks.div_ceil(c.workers.min(g.tasks));
        let workers = c.workers.min(g.tasks);
        let fits = |chunk: usize| {
            let at_once = workers
                * if chunk == 0 {
                    per_worker
                } else {
                    chunk.min(per_worker)
                };
            g.estimate(at_once, task) <= g.usable
        };
        if fixed.task_chunk {
            let chunk = self.config().run.task_chunk;
            return fits(chunk).then_some(chunk);
        }
        let best = (1..=per_worker).rev().find(|&n| fits(n))?;
        Some(if best >= per_worker { 0 } else { best })
    }

    fn plan(
        &self,
        g: &Ground,
        c: Candidate,
        chunk: usize,
        task: f64,
        measured: [Option<f64>; 2],
    ) -> MemoryPlan {
        let workers = c.workers.min(g.tasks);
        let per_worker = g.tasks.div_ceil(workers);
        let at_once = workers
            * if chunk == 0 {
                per_worker
            } else {
                chunk.min(per_worker)
            };
        MemoryPlan {
            budget_gib: g.budget.bytes as f64 / GIB,
            budget_source: g.budget.source.to_string(),
            margin_gib: margin(g.budget.bytes as f64) / GIB,
            held_gib: g.held / GIB,
            inputs_gib: g.inputs(g.tasks) / GIB,
            task_full_gib: measured[0].map(|b| b / GIB),
            task_recompute_gib: measured[1].map(|b| b / GIB),
            memory: c.memory,
            checkpoint_interval: c.interval,
            task_chunk: chunk,
            workers: c.workers,
            estimate_gib: g.estimate(at_once, task) / GIB,
        }
    }

    /// Runs `plan` from now on: the compute config and the workers (the user's config, its hash
    /// and the checkpoints stay as they are).
    fn adopt(&mut self, plan: &MemoryPlan) {
        self.compute.run.task_chunk = plan.task_chunk;
        self.compute.algorithm.memory = plan.memory;
        self.compute.algorithm.checkpoint_interval = plan.checkpoint_interval;
        if plan.workers != self.workers.count {
            let threads = self.workers.count * self.workers.intra_threads;
            let tasks = rank_slice(self.config().outer.meta_batch, self.rank(), self.size()).len();
            let params = self.meta.theta.layout().numel();
            self.workers = Workers::plan(plan.workers, threads, tasks, params, self.device());
        }
        self.plan = Some(plan.clone());
    }

    /// The error for a budget that even the smallest setting (one task costing `task`) exceeds.
    /// `at_least`: the task ran out of memory while measured, so `task` is only a lower bound.
    fn too_small(&self, g: &Ground, task: f64, at_least: bool) -> Error {
        let need = smallest_budget(g.estimate(1, task)) / GIB;
        let room = g.usable - g.held - task;
        let per_rank = if room > 0.0 && !at_least {
            (room / g.task_inputs.max(1.0)) as usize
        } else {
            0
        };
        let meta_batch = match per_rank.min(1 << 24) * self.size() {
            0 => "none: one task does not fit".to_string(),
            n => n.to_string(),
        };
        let (one_task, would) = match (task > 0.0, at_least) {
            (false, _) => (
                "not measured".to_string(),
                format!("at least {need:.2} GiB"),
            ),
            (true, false) => (gib(task), format!("at least {need:.2} GiB")),
            (true, true) => (
                format!("more than {} (out of memory while measured)", gib(task)),
                format!("more than {need:.2} GiB"),
            ),
        };
        Error::Config(ConfigError {
            key: "run.memory_budget_gib".into(),
            message: format!(
                "a budget of {:.2} GiB ({}) does not fit the meta-batch even one task at a time with recompute at interval 1 ({} held, {} inputs, one task {one_task}): a budget of {would} would, or outer.meta_batch <= {meta_batch}",
                g.budget.bytes as f64 / GIB,
                g.budget.source,
                gib(g.held),
                gib(g.inputs(g.tasks)),
            ),
        })
    }

    /// The error for fixed settings that do not fit where the planner's own would.
    fn fixed_too_large(&self, g: &Ground, fixed: &Fixed) -> Error {
        let cfg = self.config();
        let mut named = vec![];
        if fixed.task_chunk {
            named.push(format!("run.task_chunk = {}", cfg.run.task_chunk));
        }
        if fixed.memory {
            named.push(format!("algorithm.memory = \"{}\"", cfg.algorithm.memory));
        }
        if fixed.workers {
            named.push(format!("run.workers = {}", cfg.run.workers));
        }
        if fixed.checkpoint_interval {
            named.push(format!(
                "algorithm.checkpoint_interval = {}",
                cfg.algorithm.checkpoint_interval
            ));
        }
        Error::Config(ConfigError {
            key: "run.memory_budget_gib".into(),
            message: format!(
                "{} does not fit the budget of {:.2} GiB ({}); leave it out and the planner picks a setting that does, or raise the budget",
                named.join(" with "),
                g.budget.bytes as f64 / GIB,
                g.budget.source
            ),
        })
    }
}

/// The smallest budget whose usable part (less [`margin`]) holds `estimate` bytes.
fn smallest_budget(estimate: f64) -> f64 {
    (estimate / (1.0 - MARGIN)).max(estimate + MIN_MARGIN)
}

/// Whether the config's algorithm has the recompute-and-adjoint path (config validation's rule).
fn recompute_allowed(cfg: &TrainConfig) -> bool {
    use AlgorithmName::*;
    matches!(cfg.algorithm.name, Maml | Metasgd | Anil) && cfg.algorithm.inner_clip_grad_norm == 0.0
}

/// Returns freed memory to the system (host) so that the next measurement starts from what is
/// in use.
fn settle(device: Device) {
    if device == Device::Cpu {
        metaloop_runtime::host_memory::release_free_host_memory();
    }
}

/// The bytes of a batch's four tensors.
fn batch_bytes(b: &MetaBatch) -> Result<f64> {
    let bytes = |t: &Tensor| -> f64 { (t.numel() * t.kind().elt_size_in_bytes()) as f64 };
    Ok([&b.support_x, &b.support_y, &b.query_x, &b.query_y]
        .into_iter()
        .map(bytes)
        .sum())
}

fn gib(bytes: f64) -> String {
    format!("{:.2} GiB", bytes / GIB)
}
