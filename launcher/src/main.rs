//! `metaloop`: the command researchers run. Parses arguments, shows progress, prints reports.
//! The work itself is the engine's.

use anyhow::Result;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use metaloop_engine::demo::{self, DemoConfig};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "metaloop",
    version,
    about = "Distributed, differentiable inner-loop meta-learning"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A first meta-training on CPU: second-order MAML on sinusoid regression (MAML paper values).
    Demo {
        /// Outer iterations (meta-batches of 25 tasks).
        #[arg(long, default_value_t = DemoConfig::default().iterations)]
        iterations: u64,
        /// Seed of initialisation and task sampling.
        #[arg(long, default_value_t = 0)]
        seed: i64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metaloop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo { iterations, seed } => run_demo(DemoConfig {
            iterations,
            seed,
            ..DemoConfig::default()
        }),
    }
}

fn run_demo(cfg: DemoConfig) -> Result<()> {
    println!(
        "MAML (second order) on sinusoid regression: MLP 1-40-40-1, K={} shots, 1 inner step of lr {}, meta-batch {}, {} iterations, CPU",
        cfg.shots, cfg.inner_lr, cfg.meta_batch, cfg.iterations
    );
    let bar = ProgressBar::new(cfg.iterations);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} iterations  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .expect("a valid progress template"),
    );
    let tasks_per_iteration = cfg.meta_batch as f64;
    let started = std::time::Instant::now();
    let report = demo::run(&cfg, |it, loss| {
        bar.set_position(it);
        if it % 20 == 0 {
            let tasks_per_s = it as f64 * tasks_per_iteration / started.elapsed().as_secs_f64();
            bar.set_message(format!("meta-loss {loss:.4}  {tasks_per_s:.0} tasks/s"));
        }
    })?;
    bar.finish();
    println!(
        "final meta-loss (query MSE after adaptation, last meta-batch): {:.4}",
        report.final_meta_loss
    );
    println!(
        "meta-test over {} new tasks: MSE before adaptation {:.3} ± {:.3}, after 1 step {:.3} ± {:.3} (mean ± 95% CI)",
        cfg.test_tasks,
        report.pre_adaptation_mse.mean,
        report.pre_adaptation_mse.ci95,
        report.post_adaptation_mse.mean,
        report.post_adaptation_mse.ci95
    );
    Ok(())
}
