//! `metaloop`: the command researchers run. Parses arguments, shows progress, prints reports.
//! The work itself is the engine's.
//!
//! This file holds the command-line definition and the dispatch; each command has its module
//! in the launcher's library (lib.rs).
//! Exit codes: see `errors`.
//!
//! Fail-stop under mpirun or srun: a rank that fails prints its error and calls `MPI_Abort` with
//! its exit code, which ends every rank of the job; mpirun then exits with that code (Open MPI
//! 4.1, after its own "MPI_ABORT was invoked" notice). No rank waits in `MPI_Finalize` for a
//! failed one. A collective that outlasts `run.collective_timeout_s` ends the job the same way.
//! During set-up the ranks first agree on which of them failed: only the lowest failing rank
//! prints, and every rank ends alike with its code, without `MPI_Abort`; so a bad dataset that
//! every rank finds is printed once (`train::agreed_setup`).

use metaloop_launcher::{
    bench, compare, config, data_cmd, errors, eval, launch, plot_cmd, report, start, train,
};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use metaloop_engine::config::TrainConfig;
use metaloop_engine::plan::Fixed;
use metaloop_runtime::comm;

use metaloop_launcher::communicator::{set_collective_timeout, DEFAULT_COLLECTIVE_TIMEOUT_S};
use metaloop_launcher::errors::{bad, Ending};

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
        /// Continues the run directory from its latest checkpoint. `--resume auto` starts fresh
        /// when there is none yet (for job scripts that are requeued).
        #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "latest")]
        resume: Option<start::Resume>,
    },
    /// Shows the resolved config: `config show --config c.toml [--set KEY=VALUE]...`.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
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
        /// Restarts a failed `train` job at most this many times, each with `--resume auto`
        /// (0: never). Not after bad input (exit code 2), nor after SIGTERM or SIGINT to
        /// `launch` itself.
        #[arg(long, default_value_t = 0, value_name = "N")]
        max_restarts: u32,
        /// The metaloop command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Times a benchmark workload (second-order MAML on random inputs of its shapes):
    /// sinusoid, omniglot or omniglot20. `cargo xtask bench --peers` compares with the peers.
    Bench(bench::Flags),
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

#[derive(Subcommand)]
enum ConfigCommand {
    /// Prints the resolved config (file, --set overrides and defaults) as TOML. Checks it as
    /// `train` does; writes nothing.
    Show {
        /// The TOML config (see configs/).
        #[arg(long)]
        config: PathBuf,
        /// Overrides a config value, as in `train`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
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
        init_tracing();
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
    let code = match result.as_ref().map_err(errors::report) {
        Ok(()) => 0,
        // Every rank agreed on the stop and waits for the checkpoint: they end alike.
        Err(Ending::Stopped(code)) => code,
        Err(Ending::Failed(code)) => {
            comm::abort_job(i32::from(code));
            code
        }
    };
    comm::finalize();
    ExitCode::from(code)
}

/// Phase spans (sample, inner_loop, meta_gradient, outer_step, validate, checkpoint, meta_test)
/// on stderr, with their times when they close.
fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(std::io::stderr)
        .init();
}

fn set_threads(threads: Option<usize>) -> Result<()> {
    match threads {
        Some(0) => Err(bad("--threads: must be >= 1, got 0")),
        Some(n) => {
            tch::set_num_threads(n as i32);
            Ok(())
        }
        None => Ok(()),
    }
}

/// `launch`'s own check of the command it starts: its arguments, the config and the run
/// directory. Bad input is then one line from here, before mpirun starts, instead of one per rank
/// followed by mpirun's notices. Returns the config of a `train` command.
fn preflight(command: &[String]) -> Result<Option<TrainConfig>> {
    let args = std::iter::once("metaloop".to_string()).chain(command.iter().cloned());
    let cli = Cli::try_parse_from(args).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Train {
            config,
            sets,
            resume,
        } => {
            let cfg = config::load(&config, &sets)?;
            start::check_start(&cfg, resume)?;
            Ok(Some(cfg))
        }
        Command::Eval { tasks, .. } => eval::check_tasks(tasks).map(|()| None),
        _ => Ok(None),
    }
}

fn dispatch(command: Command, threads_given: bool) -> Result<()> {
    match command {
        Command::Train {
            config,
            sets,
            resume,
        } => {
            let (cfg, given) = config::load_given(&config, &sets)?;
            set_collective_timeout(cfg.run.collective_timeout_s);
            if !threads_given && cfg.run.threads > 0 {
                tch::set_num_threads(cfg.run.threads as i32);
            }
            let fixed = Fixed::from_keys(given.iter().map(String::as_str));
            if let Some(done) = train::train(&cfg, &fixed, resume)? {
                report::print_finished(&done);
            }
            Ok(())
        }
        Command::Eval {
            checkpoint,
            best,
            tasks,
        } => eval::run(checkpoint, best, tasks),
        Command::Launch {
            ranks,
            hostfile,
            max_restarts,
            command,
        } => {
            let train = preflight(&command)?;
            launch::launch(launch::Job {
                ranks,
                hostfile,
                command: &command,
                max_restarts,
                train: train.as_ref(),
            })
        }
        Command::Config {
            command: ConfigCommand::Show { config, sets },
        } => {
            print!("{}", config::show(&config::load(&config, &sets)?)?);
            Ok(())
        }
        Command::Bench(flags) => bench::run(&flags),
        Command::Plot { run_dir } => plot_cmd::run(&run_dir),
        Command::Data { command } => data_cmd::run(command),
        Command::Compare { runs, out } => {
            let c = compare::compare(&runs, &out)?;
            print!("{}", c.table);
            println!("learning curves: {}", c.plot.display());
            Ok(())
        }
        Command::Demo { iterations, seed } => train::demo(iterations, seed),
    }
}
