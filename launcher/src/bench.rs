//! `metaloop bench`: times one benchmark workload and prints one line of text or JSON.

use anyhow::Result;
use metaloop_engine::bench::{self, Options, Workload};
use metaloop_engine::config::{AlgorithmName, ConvTasks, Memory, MemoryBudget, Precision};
use metaloop_engine::plan::{self, Fixed};
use tch::Device;

use crate::errors::bad;

// `metaloop bench`'s flags (its help text is the `Bench` command's).
#[derive(clap::Args)]
pub struct Flags {
    #[arg(long, default_value = "sinusoid")]
    workload: String,
    /// Timed iterations (after 3 warm-up ones); the median is reported.
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// "cpu" or "cuda".
    #[arg(long, default_value = "cpu")]
    device: String,
    /// One JSON line instead of text.
    #[arg(long)]
    json: bool,
    /// The fused optimizer kernels instead of the tensor-op path (the library's default).
    #[arg(long)]
    fused: bool,
    /// Task-parallel worker threads (0: automatic, as `run.workers`: one per `--threads`
    /// thread for CPU models of at least 10,000 parameters, else one).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// "full" (every step's graph) or "recompute" (recompute-and-adjoint), as
    /// `algorithm.memory` (default: the memory planner's choice, "full" when it fits).
    #[arg(long)]
    memory: Option<String>,
    /// The algorithm timed, as `algorithm.name` with its default settings (e.g. "imaml": 5
    /// conjugate-gradient iterations, λ = 2).
    #[arg(long, default_value = "maml")]
    algorithm: String,
    /// Tasks each worker runs at once, one chunk after another (0: all of its tasks), as
    /// `run.task_chunk` (default: the memory planner's choice, 0 when it fits).
    #[arg(long)]
    task_chunk: Option<usize>,
    /// The memory budget the planner fits the workload into, as `run.memory_budget_gib`:
    /// "auto" (the free memory), a number of GiB, or 0 (no planning).
    #[arg(long, default_value = "auto")]
    memory_budget_gib: String,
    /// Untimed warm-up iterations before the timed ones.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Override the workload's meta-batch (e.g. to measure memory per task).
    #[arg(long)]
    meta_batch: Option<i64>,
    /// Override the workload's inner steps (e.g. to measure memory per step).
    #[arg(long)]
    steps: Option<usize>,
    /// "default", "fp32", "tf32" (CUDA only) or "bf16", as `run.precision`.
    #[arg(long, default_value = "default")]
    precision: String,
    /// How task-batched convolutions run their tasks: "auto", "grouped", "per_task" or "gemm",
    /// as `run.conv_tasks`.
    #[arg(long, default_value = "auto")]
    conv_tasks: String,
    /// Folded convolutions in channels-last memory order, as `run.channels_last`.
    #[arg(long)]
    channels_last: bool,
    /// Each task alone, summed exactly: bit-identical on any split, as `run.reproducible`.
    #[arg(long)]
    reproducible: bool,
}

/// `metaloop bench`: checks the flags, runs the workload, prints its line.
pub fn run(f: &Flags) -> Result<()> {
    let w = workload(f)?;
    let options = options(f)?;
    // The plan as soon as it is made: the timed iterations of a large workload take long.
    let r = match bench::run_with(&w, &options, |plan| eprintln!("metaloop: {plan}")) {
        Ok(r) => r,
        Err(e) if plan::out_of_memory(&e.to_string()) => {
            return print_oom(&w, &options, f.json, None)
        }
        // The planner found no setting that fits: the workload does not fit this budget.
        Err(e) if e.to_string().starts_with("run.memory_budget_gib") => {
            return print_oom(&w, &options, f.json, Some(e.to_string()))
        }
        Err(e) if e.is_user_input() => return Err(bad(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    if f.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{}: {:.2} tasks/s (median {:.2} ms per meta-batch of {}, {} steps, {} {} memory, task chunk {}, {} precision, {} convolutions{}{}), {} {:.0} MiB, {} threads ({} workers), {}",
            r.workload,
            r.tasks_per_s,
            1e3 * r.median_s,
            r.meta_batch,
            r.steps,
            r.algorithm,
            r.memory,
            r.task_chunk,
            r.precision,
            r.conv_tasks,
            if r.channels_last { " channels-last" } else { "" },
            if r.reproducible { ", reproducible" } else { "" },
            if r.peak_device_mib.is_some() {
                "peak device memory"
            } else {
                "peak RSS"
            },
            r.peak_mib,
            r.threads,
            r.workers,
            r.device
        );
    }
    Ok(())
}

/// The workload `--workload` names, with the `--meta-batch` and `--steps` overrides.
fn workload(f: &Flags) -> Result<Workload> {
    let mut w = bench::workload(&f.workload).map_err(|e| bad(format!("--workload: {e}")))?;
    if let Some(m) = f.meta_batch {
        if m < 1 {
            return Err(bad(format!("--meta-batch: must be >= 1, got {m}")));
        }
        w.meta_batch = m;
    }
    if let Some(n) = f.steps {
        if n < 1 {
            return Err(bad("--steps: must be >= 1, got 0"));
        }
        w.steps = n;
    }
    Ok(w)
}

/// The run's options: `--memory`, `--precision`, `--device`, `--iters` checked.
fn options(f: &Flags) -> Result<Options> {
    let memory: Memory = f
        .memory
        .as_deref()
        .unwrap_or("full")
        .parse()
        .map_err(|e| bad(format!("--memory: {e}")))?;
    let algorithm: AlgorithmName = f
        .algorithm
        .parse()
        .map_err(|e| bad(format!("--algorithm: {e}")))?;
    let memory_budget: MemoryBudget = f
        .memory_budget_gib
        .parse()
        .map_err(|e| bad(format!("--memory-budget-gib: {e}")))?;
    if let MemoryBudget::Gib(g) = memory_budget {
        if !(0.0..=MemoryBudget::MAX_GIB).contains(&g) {
            return Err(bad(format!(
                "--memory-budget-gib: must be \"auto\" or a number of GiB from 0 to 1048576, got {g}"
            )));
        }
    }
    let precision: Precision = f
        .precision
        .parse()
        .map_err(|e| bad(format!("--precision: {e}")))?;
    let conv_tasks: ConvTasks = f
        .conv_tasks
        .parse()
        .map_err(|e| bad(format!("--conv-tasks: {e}")))?;
    let device = match f.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" if tch::Cuda::is_available() => Device::Cuda(0),
        "cuda" => return Err(bad("--device cuda: libtorch sees no CUDA device here")),
        other => {
            return Err(bad(format!(
                "--device: must be \"cpu\" or \"cuda\", got {other:?}"
            )))
        }
    };
    if f.iters == 0 {
        return Err(bad("--iters: must be >= 1, got 0"));
    }
    Ok(Options {
        iters: f.iters,
        warmup: f.warmup,
        device,
        fused: f.fused,
        workers: f.workers,
        threads: tch::get_num_threads().max(1) as usize,
        memory,
        algorithm,
        task_chunk: f.task_chunk.unwrap_or(0),
        precision,
        conv_tasks,
        channels_last: f.channels_last,
        reproducible: f.reproducible,
        memory_budget,
        fixed: Fixed {
            task_chunk: f.task_chunk.is_some(),
            workers: f.workers != 0,
            memory: f.memory.is_some(),
            checkpoint_interval: false,
        },
    })
}

/// A workload that ran out of memory is a result, as peers.py reports it: one line (or JSON with
/// `"oom": true`) with the peak memory reached.
/// `plan` is the planner's refusal, when it found no setting that fits the budget.
fn print_oom(w: &Workload, o: &Options, json: bool, plan: Option<String>) -> Result<()> {
    let peak = bench::peak_rss_mib();
    if json {
        let line = serde_json::json!({
            "peer": "metaloop", "workload": w.name, "oom": true, "peak_mib": peak,
            "meta_batch": w.meta_batch, "steps": w.steps, "memory": o.memory,
            "task_chunk": o.task_chunk, "plan": plan,
        });
        println!("{line}");
    } else {
        println!(
            "{}: out of memory (meta-batch {}, {} steps, {} memory), peak RSS {peak:.0} MiB{}",
            w.name,
            w.meta_batch,
            w.steps,
            o.memory,
            plan.map(|p| format!("; {p}")).unwrap_or_default()
        );
    }
    Ok(())
}
