//! `metaloop train` and `demo`: the meta-training loop around the engine's `Trainer`, with the
//! run directory, the resume checks, checkpoints, validation and the final report.
//!
//! Everything that can be checked is checked before the run directory is created (config, run
//! directory name, resume checkpoint, datasets), so bad input leaves nothing behind.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use metaloop_engine::config::TrainConfig;
use metaloop_engine::data::Split;
use metaloop_engine::fit::FitEnd;
use metaloop_engine::plan::{Fixed, MemoryPlan};
use metaloop_engine::ranks;
use metaloop_engine::rundir::{self, RunDir};
use metaloop_engine::selection::Best;
use metaloop_engine::train::{EvalReport, Trainer};
use metaloop_engine::Error as EngineError;
use metaloop_runtime::comm::Communicator;
use serde::Serialize;

use crate::communicator::communicator;
use crate::config;
use crate::errors::{agreed, bad, failure_code, quiet, setup_error, Interrupted};
use crate::progress::{warn, Terminal};
use crate::provenance::Provenance;
use crate::report::{print_finished, Finished};
use crate::signals::{self, StopSignals, StopSource};
use crate::start::{forget_best, record_config, run_root, starting_point, Resume, Start};

/// The demo's config, embedded so that `metaloop demo` runs from anywhere.
const DEMO_CONFIG: &str = include_str!("../../configs/sinusoid.toml");

/// `report.json`.
#[derive(Serialize)]
struct Report {
    config_hash: String,
    iterations: u64,
    /// The iteration this invocation resumed from (absent for a fresh run).
    resumed_from: Option<u64>,
    /// Wall time of this invocation (training, validation, meta-test).
    wall_seconds: f64,
    test: EvalReport,
    /// Validation reports logged during training: `{iteration, report}`.
    val: Vec<serde_json::Value>,
    model: String,
    /// The best validation, whose θ0 is `model.best.safetensors` (absent without validation).
    best: Option<Best>,
    /// The most memory this invocation held, MiB (engine::memory: resident set on the CPU;
    /// null where not measured).
    peak_mib: Option<f64>,
    /// The memory plan this invocation followed (engine::plan; absent when planning is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_plan: Option<MemoryPlan>,
    /// What produced this invocation (as in `run.json`).
    #[serde(flatten)]
    provenance: Provenance,
}

/// The trainer of `cfg` (restored from the checkpoint of `start`, if any) and, on rank 0, its
/// run directory (created, or opened to continue).
fn prepare(
    cfg: &TrainConfig,
    fixed: &Fixed,
    root: &Path,
    start: &Start,
    comm: Box<dyn Communicator>,
) -> Result<(Trainer, Option<RunDir>)> {
    let from = start.checkpoint();
    let rank0 = comm.rank() == 0;
    let mut trainer = {
        let _s = tracing::info_span!("setup").entered();
        agreed_setup(
            Trainer::builder(cfg)
                .communicator(comm)
                .build_keeping_comm(),
        )?
    };
    // The memory plan is made, and a budget too small refused, before anything is written.
    // Every rank agrees on a refusal, as on a failed set-up.
    let planned = {
        let _s = tracing::info_span!("plan_memory").entered();
        trainer.plan_memory(fixed).map_err(setup_error)
    };
    let code = planned.as_ref().err().map_or(0, failure_code);
    let plan = match (trainer.first_failure(code)?, planned) {
        (Some((rank, c)), _) if rank != trainer.rank() => return Err(quiet(c)),
        (_, Err(e)) => return Err(agreed(&e)),
        (_, Ok(p)) => p,
    };
    if let Some(ckpt) = from {
        for w in ckpt.warnings.iter().filter(|_| rank0) {
            warn(w);
        }
        trainer
            .restore(ckpt.manifest.iteration, &ckpt.tensors)
            .map_err(|e| bad(format!("{}: {e}", ckpt.path.display())))?;
    }
    if !rank0 {
        return Ok((trainer, None));
    }
    let run = match start {
        Start::Fresh => RunDir::create(root, &config::to_toml(cfg)?).map_err(setup_error)?,
        Start::From(_) => RunDir::open(root).map_err(setup_error)?,
        Start::Again => {
            let run = RunDir::open(root).map_err(setup_error)?;
            forget_best(root)?;
            run
        }
    };
    if !matches!(start, Start::Fresh) {
        record_config(root, cfg)?;
    }
    // Printed once everything is checked: bad input stays one line.
    if let Some(plan) = plan {
        eprintln!("metaloop: {plan}");
    }
    Ok((trainer, Some(run)))
}

/// This rank's trainer once every rank is set up, before rank 0 writes anything (collective).
/// When some ranks failed, the lowest of them alone prints its error (once, however many ranks
/// found the same bad dataset); every rank ends with its exit code, alike, without MPI_Abort.
fn agreed_setup(
    built: std::result::Result<Trainer, (EngineError, Box<dyn Communicator>)>,
) -> Result<Trainer> {
    let (error, comm) = match built {
        Ok(trainer) => {
            return match trainer.first_failure(0)? {
                None => Ok(trainer),
                Some((_, code)) => Err(quiet(code)),
            }
        }
        Err((e, comm)) => (setup_error(e), comm),
    };
    match ranks::first_failure(comm.as_ref(), failure_code(&error))? {
        Some((rank, code)) if rank != comm.rank() => Err(quiet(code)),
        _ => Err(agreed(&error)),
    }
}

/// Meta-trains `cfg` (fresh, or continuing its run directory with `resume`), meta-tests, writes
/// the report and the plots. `Some` on rank 0.
pub fn train(cfg: &TrainConfig, fixed: &Fixed, resume: Option<Resume>) -> Result<Option<Finished>> {
    let started = Instant::now();
    let root = run_root(cfg);
    let comm = communicator(cfg)?;
    // Rank 0 alone writes the run directory, logs, checkpoints and shows progress; every rank
    // runs the same steps (the all-reduces are collective).
    let rank0 = comm.rank() == 0;
    let begin = starting_point(cfg, &root, resume, &*comm)?;
    let provenance = Provenance::gather(cfg, &*comm)?;
    let (mut trainer, run) = prepare(cfg, fixed, &root, &begin, comm)?;
    // SIGTERM/SIGINT from here on: stop between iterations, on every rank alike, with a checkpoint.
    let stop = StopSignals::install()?;
    let resumed_from = begin.checkpoint().map(|c| c.manifest.iteration);
    let session = Session {
        started,
        provenance,
        resumed_from,
        progress: rank0,
    };
    session.run(&mut trainer, run, &stop)
}

/// Meta-trains `trainer` (one rank, built by the caller, perhaps already stepped) to
/// `outer.iterations` into the new run directory `root`, meta-tests it, and writes the report
/// and the plots: `metaloop train` after its set-up, for the Python package. `stop` is polled
/// between iterations; `progress` shows the bar (or lines).
pub fn train_in(
    trainer: &mut Trainer,
    root: &Path,
    stop: &dyn StopSource,
    progress: bool,
) -> Result<Finished> {
    let started = Instant::now();
    let cfg = trainer.config().clone();
    let provenance = Provenance::gather(&cfg, &metaloop_runtime::comm::Local)?;
    let run = RunDir::create(root, &config::to_toml(&cfg)?)?;
    let session = Session {
        started,
        provenance,
        resumed_from: None,
        progress,
    };
    let done = session.run(trainer, Some(run), stop)?;
    Ok(done.expect("the run directory was given"))
}

/// What the rest of a training invocation carries from its set-up.
struct Session {
    started: Instant,
    provenance: Provenance,
    /// The iteration this invocation resumed from (absent for a fresh run).
    resumed_from: Option<u64>,
    /// Show progress (rank 0).
    progress: bool,
}

impl Session {
    /// Fits `trainer` to the end, meta-tests, and on the writing rank (`run` given) writes the
    /// report and the plots. A stop from `stop` ends it after the checkpoint, with [`Interrupted`].
    fn run(
        mut self,
        trainer: &mut Trainer,
        mut run: Option<RunDir>,
        stop: &dyn StopSource,
    ) -> Result<Option<Finished>> {
        let cfg = trainer.config().clone();
        if let Some(run) = &run {
            self.provenance.write(run.path())?;
        }
        let (total, start) = (cfg.outer.iterations, trainer.iteration());
        let max_skips = cfg.outer.max_nonfinite_skips;
        let cadence = (total, start, cfg.log.every);
        let mut terminal = Terminal::new(self.progress, cadence, max_skips, stop);
        let end = trainer.fit(run.as_mut(), &mut terminal)?;
        terminal.finish();
        if let FitEnd::Stopped {
            signal,
            iteration,
            checkpoint,
        } = end
        {
            return Err(stopped(signal, iteration, checkpoint, &cfg));
        }
        // The last checkpoint holds everything the rest needs: a signal now ends the process at once.
        stop.exit_at_once();
        // The host allocator's cache keeps training's blocks; the meta-test's shapes differ.
        metaloop_runtime::host_memory::release_free_host_memory();
        let test = {
            let _s = tracing::info_span!("meta_test", tasks = cfg.eval.test_tasks).entered();
            trainer.evaluate(Split::Test, cfg.eval.test_tasks)?
        };
        metaloop_runtime::host_memory::release_free_host_memory();
        let Some(run) = run else { return Ok(None) };
        self.provenance.end();
        self.provenance.write(run.path())?;
        let report = Report {
            config_hash: rundir::config_hash(&cfg),
            iterations: trainer.iteration(),
            resumed_from: self.resumed_from,
            wall_seconds: self.started.elapsed().as_secs_f64(),
            test,
            val: logged_validations(&run.metrics_path())?,
            model: trainer.write_model(&run)?.display().to_string(),
            best: Best::read(run.path())?,
            peak_mib: metaloop_engine::memory::run_peak_mib(trainer.device()),
            memory_plan: trainer.memory_plan().cloned(),
            provenance: self.provenance,
        };
        finish(trainer, &run, report).map(Some)
    }
}

/// Writes `report.json` and the plots of a finished run.
fn finish(trainer: &Trainer, run: &RunDir, report: Report) -> Result<Finished> {
    run.write_report(&report)?;
    let mut plots = crate::plot::write(run.path())?;
    plots.extend(crate::plot_adaptation::write_for_run(run.path())?);
    plots.extend(crate::plot_predictions::write_for_trainer(
        trainer,
        run.path(),
    )?);
    Ok(Finished {
        run_dir: run.path().to_path_buf(),
        test: report.test,
        best: report.best,
        plots,
    })
}

/// The error that ends a command stopped by a signal that every rank agreed on (the fit loop
/// wrote the checkpoint of `iteration` first): its exit code is 128 + the signal's number.
fn stopped(
    signal: Option<i32>,
    iteration: u64,
    checkpoint: Option<PathBuf>,
    cfg: &TrainConfig,
) -> anyhow::Error {
    // A rank that received no signal itself stops as mpirun and Slurm would have it: SIGTERM.
    let signal = signal.unwrap_or(signal_hook::consts::SIGTERM);
    anyhow::Error::new(Interrupted {
        signal,
        message: format!(
            "stopped by {} after iteration {iteration} of {}; checkpoint {}; continue with --resume",
            signals::name(signal),
            cfg.outer.iterations,
            checkpoint.as_deref().unwrap_or(Path::new("")).display()
        ),
        print: checkpoint.is_some(),
    })
}

/// The validation reports in `metrics.jsonl`, as `{iteration, report}`.
fn logged_validations(metrics: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(metrics).with_context(|| metrics.display().to_string())?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let val = v.get("val")?.clone();
            Some(serde_json::json!({ "iteration": v.get("iteration")?.clone(), "report": val }))
        })
        .collect())
}

/// `metaloop demo`: trains the embedded sinusoid config into the first free
/// `runs/sinusoid-demo[-N]`.
pub fn demo(iterations: Option<u64>, seed: Option<u64>) -> Result<()> {
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
    while run_root(&cfg).exists() {
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
    let fixed = Fixed::from_values(&cfg);
    if let Some(done) = train(&cfg, &fixed, None)? {
        print_finished(&done);
    }
    Ok(())
}
