//! `metaloop train`, `eval` and `demo`: the meta-training loop around the engine's `Trainer`,
//! with the run directory, checkpoints, validation, progress bar and final report.
//!
//! Everything that can be checked is checked before the run directory is created (config, run
//! directory name, resume checkpoint, datasets), so bad input leaves nothing behind. Only
//! this module and `main` print.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use metaloop_engine::checkpoint::{self, Checkpoint};
use metaloop_engine::config::{DeviceChoice, TrainConfig};
use metaloop_engine::data::Split;
use metaloop_engine::fit::{FitEnd, Observer};
use metaloop_engine::rundir::{self, RunDir};
use metaloop_engine::selection::Best;
use metaloop_engine::train::{EvalReport, StepMetrics, Trainer};
use metaloop_engine::Error as EngineError;
use metaloop_runtime::comm::{Communicator, Local, Mpi, Nccl};
use serde::Serialize;
use tch::Device;

use crate::config::{self, bad};
use crate::signals::{self, Interrupted, StopSignals};

/// Engine errors that come from the user's input (config, datasets, checkpoints) become
/// [`crate::config::BadInput`] (exit code 2); the rest stay failures (exit code 1).
pub fn setup_error(e: EngineError) -> anyhow::Error {
    if e.is_user_input() {
        bad(e.to_string())
    } else {
        anyhow::Error::new(e)
    }
}

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
}

/// What a finished `train` leaves for the caller to print.
pub struct Finished {
    pub run_dir: PathBuf,
    pub test: EvalReport,
    pub best: Option<Best>,
    pub plots: Vec<PathBuf>,
}

/// The run directory of a config.
pub fn run_root(cfg: &TrainConfig) -> PathBuf {
    Path::new(&cfg.run.out_dir).join(&cfg.run.name)
}

/// Keys whose values differ between two configs (dotted, sorted).
fn differing_keys(a: &TrainConfig, b: &TrainConfig) -> Vec<String> {
    fn walk(a: &serde_json::Value, b: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    let null = serde_json::Value::Null;
                    walk(
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        &key,
                        out,
                    );
                }
            }
            _ if a != b => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(
        &serde_json::to_value(a).unwrap_or_default(),
        &serde_json::to_value(b).unwrap_or_default(),
        "",
        &mut out,
    );
    out
}

/// The checkpoint `--resume` continues from, after checking that the run was made by `cfg`.
fn resume_checkpoint(cfg: &TrainConfig, root: &Path) -> Result<Checkpoint> {
    let dir = root.join(rundir::CHECKPOINTS);
    let stored_path = root.join(rundir::CONFIG);
    if let Ok(text) = std::fs::read_to_string(&stored_path) {
        let stored = config::resolve(&stored_path.display().to_string(), &text, &[])?;
        let diff = differing_keys(&stored, cfg);
        if !diff.is_empty() {
            return Err(bad(format!(
                "--resume: the config differs from {} in {} (resume with the run's own config)",
                stored_path.display(),
                diff.join(", ")
            )));
        }
    }
    let ckpt = match checkpoint::latest(&dir) {
        Ok(Some(c)) => c,
        Ok(None) => return Err(bad(format!("--resume: no checkpoint in {}", dir.display()))),
        Err(e) => return Err(bad(format!("--resume: {e}"))),
    };
    if ckpt.manifest.config_hash != rundir::config_hash(cfg) {
        return Err(bad(format!(
            "--resume: {} was written by another config (hash {}) than this one",
            ckpt.path.display(),
            ckpt.manifest.config_hash
        )));
    }
    Ok(ckpt)
}

/// True when mpirun or srun started this process as one of several ranks.
fn launched_by_mpi() -> bool {
    let var = |name: &str| std::env::var(name).ok();
    var("OMPI_COMM_WORLD_SIZE").is_some()
        || var("PMI_SIZE").is_some()
        || var("PMIX_RANK").is_some()
        || var("SLURM_NTASKS")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n > 1)
}

/// This process's communicator: MPI when started by mpirun or srun, with NCCL on top when the
/// config runs on CUDA (GPU `cuda:<local rank>`); one rank alone otherwise.
pub fn communicator(cfg: &TrainConfig) -> Result<Box<dyn Communicator>> {
    if !launched_by_mpi() {
        return Ok(Box::new(Local));
    }
    let mpi = Mpi::init()?;
    let cuda = tch::Cuda::device_count() as usize;
    let wants_cuda = match cfg.run.device {
        DeviceChoice::Cuda => true,
        DeviceChoice::Auto => cuda > 0,
        DeviceChoice::Cpu => false,
    };
    if wants_cuda && cuda > 0 && mpi.size() > 1 {
        let device = Device::Cuda(metaloop_runtime::comm::local_rank() % cuda);
        return Ok(Box::new(Nccl::init(mpi, device)?));
    }
    Ok(Box::new(mpi))
}

fn warn(message: &str) {
    eprintln!("metaloop: warning: {message}");
}

/// The warning of an outer step skipped for non-finite values.
fn skip_message(m: &StepMetrics, max_skips: u32) -> String {
    format!(
        "iteration {}: non-finite meta-gradient or loss (tasks {:?}): outer step skipped ({max_skips} in a row stop the run: outer.max_nonfinite_skips)",
        m.iteration, m.nonfinite_tasks
    )
}

/// The progress bar: iterations, meta-loss, tasks/s, elapsed and ETA. Hidden when stderr is not
/// a terminal.
fn progress(total: u64, start: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} it  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(start);
    bar.reset_eta();
    bar
}

/// The launcher's view of the fit loop: the progress bar, warnings, validation lines, and the
/// stop signals it polls.
struct Terminal<'a> {
    bar: ProgressBar,
    rank0: bool,
    stop: &'a StopSignals,
    /// `outer.max_nonfinite_skips`, named in the warning of a skipped step.
    max_skips: u32,
}

impl Observer for Terminal<'_> {
    fn stop_requested(&mut self) -> Option<i32> {
        self.stop.received()
    }

    fn step(&mut self, m: &StepMetrics, tasks_per_s: f64) {
        if m.skipped && self.rank0 {
            self.bar.suspend(|| warn(&skip_message(m, self.max_skips)));
        }
        self.bar.set_position(m.iteration);
        let acc = m
            .query_accuracy
            .map(|a| format!("  acc {:.1}%", 100.0 * a))
            .unwrap_or_default();
        self.bar.set_message(format!(
            "meta-loss {:.4}{acc}  {tasks_per_s:.0} tasks/s",
            m.meta_loss
        ));
    }

    fn validated(&mut self, iteration: u64, report: &EvalReport) {
        if self.rank0 {
            self.bar
                .suspend(|| println!("iteration {iteration}: validation {}", summary(report)));
        }
    }

    fn warning(&mut self, message: &str) {
        self.bar.suspend(|| warn(message));
    }
}

/// The trainer of `cfg` (restored from `from` when resuming) and, on rank 0, its run directory
/// (created, or opened to continue).
fn prepare(
    cfg: &TrainConfig,
    root: &Path,
    from: Option<&Checkpoint>,
    comm: Box<dyn Communicator>,
) -> Result<(Trainer, Option<RunDir>)> {
    let rank0 = comm.rank() == 0;
    let mut trainer = {
        let _s = tracing::info_span!("setup").entered();
        Trainer::new(cfg, comm).map_err(setup_error)?
    };
    // Every rank is set up before rank 0 writes anything: a rank that failed has ended the job.
    trainer.any_rank(false)?;
    if let Some(ckpt) = from {
        for w in ckpt.warnings.iter().filter(|_| rank0) {
            warn(w);
        }
        trainer
            .restore(ckpt.manifest.iteration, &ckpt.tensors)
            .map_err(|e| bad(format!("{}: {e}", ckpt.path.display())))?;
    }
    let run = match (from, rank0) {
        (_, false) => None,
        (Some(_), true) => Some(RunDir::open(root).map_err(setup_error)?),
        (None, true) => Some(RunDir::create(root, &config::to_toml(cfg)?).map_err(setup_error)?),
    };
    Ok((trainer, run))
}

/// Meta-trains `cfg` (fresh, or continuing its run directory with `resume`), meta-tests, writes
/// the report and the plot.
pub fn train(cfg: &TrainConfig, resume: bool) -> Result<Option<Finished>> {
    let started = Instant::now();
    let root = run_root(cfg);
    let comm = communicator(cfg)?;
    // Rank 0 alone writes the run directory, logs, checkpoints and shows progress; every rank
    // runs the same steps (the all-reduces are collective).
    let rank0 = comm.rank() == 0;
    // Checks before anything is written.
    let from = if resume {
        // Rank 0 reads and checks the checkpoint and sends it: no shared file system needed.
        Some(checkpoint::agreed(&*comm, || {
            resume_checkpoint(cfg, &root)
        })?)
    } else {
        if rank0 && root.exists() {
            return Err(setup_error(EngineError::RunDirExists {
                path: root.clone(),
            }));
        }
        None
    };
    let (mut trainer, mut run) = prepare(cfg, &root, from.as_ref(), comm)?;
    // SIGTERM/SIGINT from here on: stop between iterations, on every rank alike, with a checkpoint.
    let stop = StopSignals::install()?;
    let bar = if rank0 {
        progress(cfg.outer.iterations, trainer.iteration())
    } else {
        ProgressBar::hidden()
    };
    let mut terminal = Terminal {
        bar,
        rank0,
        stop: &stop,
        max_skips: cfg.outer.max_nonfinite_skips,
    };
    let end = trainer.fit(run.as_mut(), &mut terminal)?;
    terminal.bar.finish_and_clear();
    if let FitEnd::Stopped {
        signal,
        iteration,
        checkpoint,
    } = end
    {
        return Err(stopped(signal, iteration, checkpoint, cfg));
    }
    // The last checkpoint holds everything the rest needs: a signal now ends the process at once.
    stop.exit_at_once();
    let test = {
        let _s = tracing::info_span!("meta_test", tasks = cfg.eval.test_tasks).entered();
        trainer.evaluate(Split::Test, cfg.eval.test_tasks)?
    };
    let Some(run) = run else { return Ok(None) };
    let report = Report {
        config_hash: rundir::config_hash(cfg),
        iterations: trainer.iteration(),
        resumed_from: from.as_ref().map(|c| c.manifest.iteration),
        wall_seconds: started.elapsed().as_secs_f64(),
        test: test.clone(),
        val: logged_validations(&run.metrics_path())?,
        model: trainer.write_model(&run)?.display().to_string(),
        best: Best::read(run.path())?,
    };
    run.write_report(&report)?;
    let mut plots = crate::plot::write(run.path())?;
    plots.extend(crate::plot_adaptation::write_for_run(run.path())?);
    plots.extend(crate::plot_predictions::write_for_trainer(
        &trainer,
        run.path(),
    )?);
    Ok(Some(Finished {
        run_dir: run.path().to_path_buf(),
        test,
        best: report.best,
        plots,
    }))
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

/// "MSE before adaptation 2.871 ± 0.210, after 0.412 ± 0.031 (mean ± 95% CI over 600 tasks,
/// 10 support points, 1 inner step)"; for classification the accuracies, with "5-way 1-shot".
pub fn summary(r: &EvalReport) -> String {
    match (&r.accuracy_before, &r.accuracy_after) {
        (Some(b), Some(a)) => format!(
            "accuracy before adaptation {:.2}% ± {:.2}%, after {:.2}% ± {:.2}% (query loss {:.3} → {:.3}; mean ± 95% CI over {} tasks, {}-way {}-shot, {} inner steps)",
            100.0 * b.mean,
            100.0 * b.ci95,
            100.0 * a.mean,
            100.0 * a.ci95,
            r.loss_before.mean,
            r.loss_after.mean,
            r.tasks,
            r.ways.unwrap_or(0),
            r.shots,
            r.inner_steps
        ),
        _ => format!(
            "MSE before adaptation {:.3} ± {:.3}, after {:.3} ± {:.3} (mean ± 95% CI over {} tasks, {} support points, {} inner step{})",
            r.loss_before.mean,
            r.loss_before.ci95,
            r.loss_after.mean,
            r.loss_after.ci95,
            r.tasks,
            r.shots,
            r.inner_steps,
            if r.inner_steps == 1 { "" } else { "s" }
        ),
    }
}

/// "best model: iteration 40 (validation accuracy after adaptation 61.20% ± 1.90% over 100 tasks)".
pub fn best_line(b: &Best) -> String {
    let value = if b.metric == metaloop_engine::selection::ACCURACY_AFTER {
        format!(
            "accuracy after adaptation {:.2}% ± {:.2}%",
            100.0 * b.value,
            100.0 * b.ci95
        )
    } else {
        format!("loss after adaptation {:.4} ± {:.4}", b.value, b.ci95)
    };
    format!(
        "best model: iteration {} (validation {value} over {} tasks)",
        b.iteration, b.tasks
    )
}

/// Prints what a finished run measured and where its files are.
pub fn print_finished(f: &Finished) {
    println!("meta-test: {}", summary(&f.test));
    if let Some(b) = &f.best {
        println!("{}: {}", rundir::BEST_MODEL, best_line(b));
    }
    println!("run directory: {}", f.run_dir.display());
    for p in &f.plots {
        println!("plot: {}", p.display());
    }
}

/// The run directory and checkpoint that `eval --checkpoint PATH` names: a manifest, a tensors
/// file, a `checkpoints/` directory or a run directory (the latter two: its latest checkpoint).
fn locate(path: &Path) -> Result<(PathBuf, Checkpoint)> {
    if !path.exists() {
        return Err(bad(format!(
            "--checkpoint {}: no such file or directory",
            path.display()
        )));
    }
    let (root, ckpt) = if path.is_dir() {
        let (root, dir) = if path.join(rundir::CHECKPOINTS).is_dir() {
            (path.to_path_buf(), path.join(rundir::CHECKPOINTS))
        } else {
            (
                path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                path.to_path_buf(),
            )
        };
        let ckpt = checkpoint::latest(&dir)
            .map_err(setup_error)?
            .ok_or_else(|| bad(format!("--checkpoint: no checkpoint in {}", dir.display())))?;
        (root, ckpt)
    } else {
        let dir = path.parent().unwrap_or(Path::new("."));
        let root = dir.parent().unwrap_or(Path::new(".")).to_path_buf();
        (root, checkpoint::read(path).map_err(setup_error)?)
    };
    Ok((root, ckpt))
}

/// The config of the run directory `root` (`config.toml`), which `eval` rebuilds the trainer from.
fn run_config(root: &Path, needed_by: &str) -> Result<TrainConfig> {
    let config_path = root.join(rundir::CONFIG);
    let text = std::fs::read_to_string(&config_path).map_err(|e| {
        bad(format!(
            "{}: {} ({needed_by} needs it)",
            config_path.display(),
            config::io_words(&e)
        ))
    })?;
    config::resolve(&config_path.display().to_string(), &text, &[])
}

/// `metaloop eval --checkpoint`: rebuilds the trainer from the run's `config.toml`, restores the
/// checkpoint, meta-tests on `tasks` tasks (default: the config's `eval.test_tasks`). On rank 0:
/// the line naming the checkpoint, and the report.
pub fn eval(path: &Path, tasks: Option<usize>) -> Result<Option<(String, EvalReport)>> {
    let (root, ckpt) = locate(path)?;
    for w in &ckpt.warnings {
        warn(w);
    }
    let cfg = run_config(&root, "the checkpoint's run directory")?;
    if ckpt.manifest.config_hash != rundir::config_hash(&cfg) {
        return Err(bad(format!(
            "{}: written by another config (hash {}) than {}",
            ckpt.path.display(),
            ckpt.manifest.config_hash,
            root.join(rundir::CONFIG).display()
        )));
    }
    let report = meta_test(&cfg, &root, tasks, |trainer| {
        trainer
            .restore(ckpt.manifest.iteration, &ckpt.tensors)
            .map_err(|e| bad(format!("{}: {e}", ckpt.path.display())))
    })?;
    Ok(report.map(|r| (format!("checkpoint: {}", ckpt.path.display()), r)))
}

/// `metaloop eval --best RUN_DIR`: meta-tests the run's `model.best.safetensors` (θ0 and learned
/// inner hyperparameters of its best validation, `best.json`). On rank 0: the line naming the
/// iteration it comes from, and the report.
pub fn eval_best(root: &Path, tasks: Option<usize>) -> Result<Option<(String, EvalReport)>> {
    let model = root.join(rundir::BEST_MODEL);
    let record = root.join(rundir::BEST);
    for file in [&model, &record] {
        if !file.is_file() {
            return Err(bad(format!(
                "--best: {}: no such file (a run writes it at each validation better than the earlier ones; eval.every = 0 never validates)",
                file.display()
            )));
        }
    }
    let best = Best::read(root)
        .map_err(setup_error)?
        .ok_or_else(|| bad(format!("--best: {}: no such file", record.display())))?;
    let cfg = run_config(root, "--best")?;
    let report = meta_test(&cfg, root, tasks, |trainer| {
        trainer.load_model(&model).map_err(setup_error)
    })?;
    let line = format!("{}: {}", model.display(), best_line(&best));
    Ok(report.map(|r| (line, r)))
}

/// The meta-test of `cfg`'s trainer after `load` (a checkpoint or a model file), on `tasks`
/// tasks (default: `eval.test_tasks`), under the run directory's reading lock: the report on
/// rank 0.
fn meta_test(
    cfg: &TrainConfig,
    root: &Path,
    tasks: Option<usize>,
    load: impl FnOnce(&mut Trainer) -> Result<()>,
) -> Result<Option<EvalReport>> {
    let tasks = tasks.unwrap_or(cfg.eval.test_tasks);
    if tasks < 2 {
        return Err(bad(format!(
            "--tasks: must be >= 2 (a confidence interval needs two tasks), got {tasks}"
        )));
    }
    let comm = communicator(cfg)?;
    let rank0 = comm.rank() == 0;
    // Not while a train or resume writes the run directory.
    let _lock = if rank0 {
        rundir::RunLock::acquire_for_reading(root).map_err(setup_error)?
    } else {
        None
    };
    let mut trainer = Trainer::new(cfg, comm).map_err(setup_error)?;
    load(&mut trainer)?;
    let report = {
        let _s = tracing::info_span!("meta_test", tasks).entered();
        trainer.evaluate(Split::Test, tasks)?
    };
    Ok(rank0.then_some(report))
}
