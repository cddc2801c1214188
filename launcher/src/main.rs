//! `metaloop`: the command researchers run. Parses arguments, shows progress, prints reports.
//! The work itself is the engine's.
//!
//! Exit codes: 0 success; 2 bad input (one line on stderr naming the file or key and what was
//! expected, and nothing written); 1 any other failure.

mod config;
mod plot;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Meta-tests a checkpoint (a ckpt-*.json / .safetensors file, or a run directory: its latest).
    Eval {
        #[arg(long)]
        checkpoint: PathBuf,
        /// Meta-test tasks (default: the run's eval.test_tasks).
        #[arg(long)]
        tasks: Option<usize>,
    },
    /// Writes PNG learning curves of a run into RUN_DIR/plots/.
    Plot { run_dir: PathBuf },
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
    let result = set_threads(threads).and_then(|()| dispatch(cli.command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<BadInput>().is_some() => {
            eprintln!(
                "metaloop: {}",
                e.downcast_ref::<BadInput>()
                    .map(|b| b.0.as_str())
                    .unwrap_or_default()
            );
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("metaloop: {e:#}");
            ExitCode::FAILURE
        }
    }
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

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Train {
            config,
            sets,
            resume,
        } => {
            let cfg = config::load(&config, &sets)?;
            let done = run::train(&cfg, resume)?;
            run::print_finished(&done);
            Ok(())
        }
        Command::Eval { checkpoint, tasks } => {
            let (path, report) = run::eval(&checkpoint, tasks)?;
            println!("checkpoint: {}", path.display());
            println!("meta-test: {}", run::summary(&report));
            Ok(())
        }
        Command::Plot { run_dir } => {
            for p in plot::write(&run_dir)? {
                println!("{}", p.display());
            }
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
    let done = run::train(&cfg, false)?;
    run::print_finished(&done);
    Ok(())
}
