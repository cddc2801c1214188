//! `metaloop`: the command researchers run. Parses arguments, shows progress, prints reports.
//! The work itself is the engine's.
//!
//! Exit codes: 0 success; 2 bad input (one line on stderr naming the file or key and what was
//! expected, and nothing written); 143 / 130 a training stopped by SIGTERM / SIGINT after writing
//! the checkpoint of its last completed iteration (see `signals`); 1 any other failure; 101 a
//! panic (a bug).
//!
//! Fail-stop under mpirun or srun: a rank that fails prints its error and calls `MPI_Abort` with
//! its exit code, which ends every rank of the job; mpirun then exits with that code (Open MPI
//! 4.1, after its own "MPI_ABORT was invoked" notice). No rank waits in `MPI_Finalize` for a
//! failed one. A collective that outlasts `run.collective_timeout_s` ends the job the same way.

mod compare;
mod config;
mod data_cmd;
mod plot;
mod plot_adaptation;
mod plot_predictions;
mod run;
mod signals;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use metaloop_runtime::comm;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::BadInput;

/// The demo's config, embedded so that `metaloop demo` runs from anywhere.
const DEMO_CONFIG: &str = include_str!("../../configs/sinusoid.toml");

#[derive(Parser)]
#[command(
    name = "metaloop",
    version,
    about = "Distributed, differentiable inner-loop meta-learning"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// libtorch's CPU threads per process (default: libtorch's choice; `demo`: 1). Small models
    /// (the sinusoid MLP) run fastest on 1: their ops are too small to pay for a thread team,
    /// and on a busy machine waiting threads spin.
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Meta-trains a config into <run.out_dir>/<run.name>/.
    Train {
        /// The TOML config (see configs/).
        #[arg(long)]
        config: PathBuf,
        /// Overrides a config value: dotted key = TOML value (outer.iterations=50, run.name="x").
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Continues the run directory from its latest checkpoint.
        #[arg(long)]
        resume: bool,
    },
    /// Meta-tests a checkpoint (a ckpt-*.json / .safetensors file, or a run directory: its
    /// latest), or with --best a run directory's model.best.safetensors (its best validation).
    Eval {
        #[arg(long, required_unless_present = "best", conflicts_with = "best")]
        checkpoint: Option<PathBuf>,
        /// A run directory: meta-tests its model.best.safetensors.
        #[arg(long, value_name = "RUN_DIR")]
        best: Option<PathBuf>,
        /// Meta-test tasks (default: the run's eval.test_tasks).
        #[arg(long)]
        tasks: Option<usize>,
    },
    /// Writes PNG learning curves of a run into RUN_DIR/plots/ (and, for a finished sinusoid
    /// run, adaptation.png: predictions before and after 1 and 10 inner steps; for a finished
    /// classification run, predictions.png: query images with their predicted classes before and
    /// after adaptation, from the run's meta-test split).
    Plot { run_dir: PathBuf },
    /// Downloads and checks datasets: `data fetch omniglot`, `data check omniglot data/omniglot`.
    Data {
        #[command(subcommand)]
        command: data_cmd::DataCommand,
    },
    /// Compares runs: the config keys that differ, meta-test results with 95% CIs, and an
    /// overlay plot of their learning curves.
    Compare {
        /// Run directories (at least two).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Where to write the overlay plot.
        #[arg(long, default_value = "compare.png")]
        out: PathBuf,
    },
    /// Starts N ranks of a metaloop command under mpirun, with the flags this machine needs
    /// (root, more ranks than cores, no core binding): `metaloop launch -n 2 -- train --config c.toml`.
    Launch {
        /// Ranks to start.
        #[arg(short = 'n', long = "ranks")]
        ranks: usize,
        /// A hostfile for several hosts (Open MPI's format; see cluster/hostfile.example).
        #[arg(long)]
        hostfile: Option<PathBuf>,
        /// The metaloop command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Times a benchmark workload (second-order MAML on random inputs of its shapes):
    /// sinusoid, omniglot or omniglot20. `cargo xtask bench --peers` compares with the peers.
    Bench {
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
        /// `algorithm.memory`.
        #[arg(long, default_value = "full")]
        memory: String,
        /// Untimed warm-up iterations before the timed ones.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Override the workload's meta-batch (e.g. to measure memory per task).
        #[arg(long)]
        meta_batch: Option<i64>,
        /// Override the workload's inner steps (e.g. to measure memory per step).
        #[arg(long)]
        steps: Option<usize>,
    },
    /// A first meta-training on CPU: second-order MAML on sinusoid regression (configs/sinusoid.toml,
    /// the MAML paper's values) into runs/sinusoid-demo*/.
    Demo {
        /// Outer iterations (meta-batches of 25 tasks); default: the embedded config's.
        #[arg(long)]
        iterations: Option<u64>,
        /// Seed of initialisation and task sampling; default: the embedded config's.
        #[arg(long)]
        seed: Option<u64>,
    },
}

fn main() -> ExitCode {
    // Keep libtorch's freed CPU memory for the next iteration instead of unmapping it (every
    // iteration allocates the same activations again, and re-faulting their pages costs time;
    // benches/README.md has the figures) and serve tensors from a caching allocator
    // (runtime::host_memory). METALOOP_HOST_MEMORY=system keeps libtorch's and glibc's
    // defaults.
    if std::env::var_os("METALOOP_HOST_MEMORY").is_none_or(|v| v != "system") {
        metaloop_runtime::host_memory::retain_freed_host_memory();
        metaloop_runtime::host_memory::cache_host_allocations();
    }
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        // Phase spans (sample, inner_loop, meta_gradient, outer_step, validate, checkpoint,
        // meta_test) with their times when they close.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_writer(std::io::stderr)
            .init();
    }
    let threads = match (&cli.command, cli.threads) {
        (_, Some(n)) => Some(n),
        (Command::Demo { .. }, None) => Some(1),
        _ => None,
    };
    // Fail-stop: an error or a panic on this rank ends the job (see the crate's notes).
    comm::hold_mpi_open();
    set_collective_timeout(DEFAULT_COLLECTIVE_TIMEOUT_S);
    let run = std::panic::AssertUnwindSafe(|| {
        set_threads(threads).and_then(|()| dispatch(cli.command, threads.is_some()))
    });
    // The panic hook has printed the panic already.
    let Ok(result) = std::panic::catch_unwind(run) else {
        comm::abort_job(101);
        return ExitCode::from(101);
    };
    let code = match result {
        Ok(()) => 0,
        Err(e) if e.downcast_ref::<signals::Interrupted>().is_some() => {
            let Some(stop) = e.downcast_ref::<signals::Interrupted>() else {
                return ExitCode::FAILURE;
            };
            if stop.print {
                eprintln!("metaloop: {stop}");
            }
            // Every rank agreed on the stop and waits for the checkpoint: they end alike.
            comm::finalize();
            return ExitCode::from(stop.exit_code());
        }
        Err(e) => {
            let code = match e.downcast_ref::<BadInput>() {
                Some(bad) => {
                    eprintln!("metaloop: {}", bad.0);
                    2
                }
                None => {
                    eprintln!("metaloop: {e:#}");
                    1
                }
            };
            comm::abort_job(i32::from(code));
            code
        }
    };
    comm::finalize();
    ExitCode::from(code)
}

/// `run.collective_timeout_s`'s default, until a config says otherwise.
const DEFAULT_COLLECTIVE_TIMEOUT_S: u64 = 600;

/// Ends the job when a collective outlasts `seconds` (0: never), printing which one.
fn set_collective_timeout(seconds: u64) {
    fn report(message: &str) {
        eprintln!("metaloop: rank {}: {message}", rank_of_this_process());
    }
    let timeout = (seconds > 0).then(|| Duration::from_secs(seconds));
    comm::set_collective_timeout(timeout, report);
}

/// This process's MPI rank, from the environment mpirun or srun gives it (for messages).
fn rank_of_this_process() -> String {
    [
        "OMPI_COMM_WORLD_RANK",
        "PMIX_RANK",
        "PMI_RANK",
        "SLURM_PROCID",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok())
    .unwrap_or_else(|| "0".into())
}

fn set_threads(threads: Option<usize>) -> Result<()> {
    match threads {
        Some(0) => Err(config::bad("--threads: must be >= 1, got 0")),
        Some(n) => {
            tch::set_num_threads(n as i32);
            Ok(())
        }
        None => Ok(()),
    }
}

fn dispatch(command: Command, threads_given: bool) -> Result<()> {
    match command {
        Command::Train {
            config,
            sets,
            resume,
        } => {
            let cfg = config::load(&config, &sets)?;
            set_collective_timeout(cfg.run.collective_timeout_s);
            if !threads_given && cfg.run.threads > 0 {
                tch::set_num_threads(cfg.run.threads as i32);
            }
            if let Some(done) = run::train(&cfg, resume)? {
                run::print_finished(&done);
            }
            Ok(())
        }
        Command::Eval {
            checkpoint,
            best,
            tasks,
        } => {
            let result = match (checkpoint, best) {
                (_, Some(run_dir)) => run::eval_best(&run_dir, tasks)?,
                (Some(checkpoint), None) => run::eval(&checkpoint, tasks)?,
                (None, None) => return Err(config::bad("eval: give --checkpoint or --best")),
            };
            if let Some((source, report)) = result {
                println!("{source}");
                println!("meta-test: {}", run::summary(&report));
            }
            Ok(())
        }
        Command::Launch {
            ranks,
            hostfile,
            command,
        } => launch(ranks, hostfile, &command),
        Command::Bench {
            workload,
            iters,
            device,
            json,
            fused,
            workers,
            memory,
            warmup,
            meta_batch,
            steps,
        } => {
            let (w, memory) = bench_workload(&workload, meta_batch, steps, &memory)?;
            bench(&w, iters, warmup, &device, json, fused, workers, memory)
        }
        Command::Plot { run_dir } => plot_run(&run_dir),
        Command::Data { command } => data_cmd::run(command),
        Command::Compare { runs, out } => {
            let c = compare::compare(&runs, &out)?;
            print!("{}", c.table);
            println!("learning curves: {}", c.plot.display());
            Ok(())
        }
        Command::Demo { iterations, seed } => demo(iterations, seed),
    }
}

/// `metaloop demo`: trains the embedded sinusoid config into the first free
/// `runs/sinusoid-demo[-N]`.
fn demo(iterations: Option<u64>, seed: Option<u64>) -> Result<()> {
    let mut sets = Vec::new();
    if let Some(n) = iterations {
        sets.push(format!("outer.iterations={n}"));
    }
    if let Some(s) = seed {
        sets.push(format!("run.seed={s}"));
    }
    let mut cfg = config::resolve("configs/sinusoid.toml (embedded)", DEMO_CONFIG, &sets)?;
    let base = format!("{}-demo", cfg.run.name);
    cfg.run.name = base.clone();
    let mut n = 2;
    while run::run_root(&cfg).exists() {
        cfg.run.name = format!("{base}-{n}");
        n += 1;
    }
    println!(
        "MAML (second order) on sinusoid regression: MLP 1-{}-1, K={} shots, {} inner step of lr {}, meta-batch {}, {} iterations, {}",
        cfg.model.hidden.iter().map(|h| h.to_string()).collect::<Vec<_>>().join("-"),
        cfg.task.shots,
        cfg.algorithm.inner_steps,
        cfg.algorithm.inner_lr,
        cfg.outer.meta_batch,
        cfg.outer.iterations,
        cfg.run.device
    );
    if let Some(done) = run::train(&cfg, false)? {
        run::print_finished(&done);
    }
    Ok(())
}

/// `metaloop launch`: replaces this process with mpirun starting `ranks` copies of this binary.
fn launch(ranks: usize, hostfile: Option<PathBuf>, command: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    if ranks == 0 {
        return Err(config::bad("--ranks: must be >= 1, got 0"));
    }
    if command.first().is_some_and(|c| c == "launch") {
        return Err(config::bad(
            "launch: the command after `--` cannot be `launch` itself",
        ));
    }
    if let Some(h) = &hostfile {
        if !h.is_file() {
            return Err(config::bad(format!(
                "--hostfile {}: no such file",
                h.display()
            )));
        }
    }
    let exe = std::env::current_exe()?;
    let mut mpirun = std::process::Command::new("mpirun");
    mpirun.arg("-n").arg(ranks.to_string());
    // Rank threads, data loaders and libtorch's pools need every core, not one bound core.
    mpirun.args(["--bind-to", "none"]);
    // When a rank dies, or mpirun itself gets SIGTERM/SIGINT, mpirun sends the other ranks
    // SIGCONT, waits this many seconds, sends SIGTERM, waits again, then SIGKILL. Open MPI's 1 s
    // leaves a rank stopping on SIGTERM too little time for its last iteration and checkpoint;
    // 5 s gives it 5 s, and a dead rank still ends the job in about 10 s.
    if std::env::var_os("OMPI_MCA_odls_base_sigkill_timeout").is_none() {
        mpirun.args(["--mca", "odls_base_sigkill_timeout", "5"]);
    }
    if is_root() {
        mpirun.arg("--allow-run-as-root");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if hostfile.is_none() && ranks > cores {
        mpirun.arg("--oversubscribe");
    }
    if let Some(h) = hostfile {
        mpirun.arg("--hostfile").arg(h);
    }
    mpirun.arg(exe).args(command);
    let err = mpirun.exec();
    Err(anyhow::anyhow!(
        "cannot start mpirun ({err}): install Open MPI (cargo xtask setup)"
    ))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// `metaloop plot RUN`: the learning curves and, for a finished run, the adaptation figure
/// (sinusoid) or the predictions grid (image classification). Prints each path.
fn plot_run(run_dir: &std::path::Path) -> Result<()> {
    let finished = run_dir.join(metaloop_engine::rundir::MODEL).is_file();
    // Loads a classification run's dataset before anything is drawn: a missing one
    // leaves the plots as they were.
    let predictions = if finished {
        plot_predictions::for_run(run_dir)?
    } else {
        None
    };
    for p in plot::write(run_dir)? {
        println!("{}", p.display());
    }
    if finished {
        if let Some(p) = plot_adaptation::write_for_run(run_dir)? {
            println!("{}", p.display());
        }
    }
    if let Some(grid) = predictions {
        println!("{}", plot_predictions::write_in(run_dir, &grid)?.display());
    }
    Ok(())
}

/// `metaloop bench`'s workload with the `--meta-batch` and `--steps` overrides, and its
/// `--memory` mode.
fn bench_workload(
    name: &str,
    meta_batch: Option<i64>,
    steps: Option<usize>,
    memory: &str,
) -> Result<(
    metaloop_engine::bench::Workload,
    metaloop_engine::config::Memory,
)> {
    let mut w = metaloop_engine::bench::workload(name)
        .map_err(|e| config::bad(format!("--workload: {e}")))?;
    if let Some(m) = meta_batch {
        if m < 1 {
            return Err(config::bad(format!("--meta-batch: must be >= 1, got {m}")));
        }
        w.meta_batch = m;
    }
    if let Some(n) = steps {
        if n < 1 {
            return Err(config::bad("--steps: must be >= 1, got 0"));
        }
        w.steps = n;
    }
    let memory = memory
        .parse()
        .map_err(|e| config::bad(format!("--memory: {e}")))?;
    Ok((w, memory))
}

/// `metaloop bench`: one workload, printed as text or one JSON line.
#[allow(clippy::too_many_arguments)] // one per command-line flag
fn bench(
    w: &metaloop_engine::bench::Workload,
    iters: usize,
    warmup: usize,
    device: &str,
    json: bool,
    fused: bool,
    workers: usize,
    memory: metaloop_engine::config::Memory,
) -> Result<()> {
    use metaloop_engine::bench;
    let device = match device {
        "cpu" => tch::Device::Cpu,
        "cuda" if tch::Cuda::is_available() => tch::Device::Cuda(0),
        "cuda" => {
            return Err(config::bad(
                "--device cuda: libtorch sees no CUDA device here",
            ))
        }
        other => {
            return Err(config::bad(format!(
                "--device: must be \"cpu\" or \"cuda\", got {other:?}"
            )))
        }
    };
    if iters == 0 {
        return Err(config::bad("--iters: must be >= 1, got 0"));
    }
    let options = bench::Options {
        iters,
        warmup,
        device,
        fused,
        workers,
        threads: tch::get_num_threads().max(1) as usize,
        memory,
    };
    let r = match bench::run(w, &options) {
        Ok(r) => r,
        Err(e) if out_of_memory(&e.to_string()) => return bench_oom(w, &options, json),
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{}: {:.2} tasks/s (median {:.2} ms per meta-batch of {}, {} steps, {} memory), peak RSS {:.0} MiB, {} threads ({} workers), {}",
            r.workload,
            r.tasks_per_s,
            1e3 * r.median_s,
            r.meta_batch,
            r.steps,
            r.memory,
            r.peak_mib,
            r.threads,
            r.workers,
            r.device
        );
    }
    Ok(())
}

/// True for libtorch's refusals to allocate: the host's ("can't allocate memory", e.g. under
/// `ulimit -v`) and CUDA's ("out of memory").
fn out_of_memory(message: &str) -> bool {
    message.contains("can't allocate memory") || message.contains("out of memory")
}

/// A workload that ran out of memory is a result, as peers.py reports it: one line (or JSON with
/// `"oom": true`) with the peak memory reached.
fn bench_oom(
    w: &metaloop_engine::bench::Workload,
    o: &metaloop_engine::bench::Options,
    json: bool,
) -> Result<()> {
    let peak = metaloop_engine::bench::peak_rss_mib();
    if json {
        let line = serde_json::json!({
            "peer": "metaloop", "workload": w.name, "oom": true, "peak_mib": peak,
            "meta_batch": w.meta_batch, "steps": w.steps, "memory": o.memory,
        });
        println!("{line}");
    } else {
        println!(
            "{}: out of memory (meta-batch {}, {} steps, {} memory), peak RSS {peak:.0} MiB",
            w.name, w.meta_batch, w.steps, o.memory
        );
    }
    Ok(())
}
