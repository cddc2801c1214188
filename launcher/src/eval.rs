//! `metaloop eval`: meta-tests a checkpoint (`--checkpoint`) or a run's best model (`--best`)
//! with the trainer rebuilt from the run's `config.toml`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use metaloop_engine::checkpoint::{self, Checkpoint};
use metaloop_engine::config::TrainConfig;
use metaloop_engine::data::Split;
use metaloop_engine::rundir;
use metaloop_engine::selection::Best;
use metaloop_engine::train::{EvalReport, Trainer};

use crate::communicator::communicator;
use crate::config;
use crate::errors::{bad, io_words, setup_error};
use crate::progress::warn;
use crate::report::{best_line, summary};

/// The most meta-test tasks `--tasks` may ask for: the bound of `eval.test_tasks` (2^24).
const MAX_EVAL_TASKS: usize = 1 << 24;

/// `metaloop eval`: `--best RUN_DIR` or `--checkpoint PATH`. Rank 0 prints the line naming what
/// was meta-tested and the report.
pub fn run(checkpoint: Option<PathBuf>, best: Option<PathBuf>, tasks: Option<usize>) -> Result<()> {
    check_tasks(tasks)?;
    let result = match (checkpoint, best) {
        (_, Some(run_dir)) => eval_best(&run_dir, tasks)?,
        (Some(checkpoint), None) => eval(&checkpoint, tasks)?,
        (None, None) => return Err(bad("eval: give --checkpoint or --best")),
    };
    if let Some((source, report)) = result {
        println!("{source}");
        println!("meta-test: {}", summary(&report));
    }
    Ok(())
}

/// `--tasks` within 2 to 2^24.
pub fn check_tasks(tasks: Option<usize>) -> Result<()> {
    match tasks.filter(|n| !(2..=MAX_EVAL_TASKS).contains(n)) {
        Some(n) => Err(bad(format!(
            "eval --tasks: must be 2 to {MAX_EVAL_TASKS}, got {n}"
        ))),
        None => Ok(()),
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
    if !path.is_dir() {
        let dir = path.parent().unwrap_or(Path::new("."));
        let root = dir.parent().unwrap_or(Path::new(".")).to_path_buf();
        return Ok((root, checkpoint::read(path).map_err(setup_error)?));
    }
    let (root, dir) = if path.join(rundir::CHECKPOINTS).is_dir() {
        (path.to_path_buf(), path.join(rundir::CHECKPOINTS))
    } else {
        let parent = path.parent().unwrap_or(Path::new("."));
        (parent.to_path_buf(), path.to_path_buf())
    };
    let ckpt = checkpoint::latest(&dir)
        .map_err(setup_error)?
        .ok_or_else(|| bad(format!("--checkpoint: no checkpoint in {}", dir.display())))?;
    Ok((root, ckpt))
}

/// The config of the run directory `root` (`config.toml`), which `eval` rebuilds the trainer from.
fn run_config(root: &Path, needed_by: &str) -> Result<TrainConfig> {
    let config_path = root.join(rundir::CONFIG);
    let text = std::fs::read_to_string(&config_path).map_err(|e| {
        bad(format!(
            "{}: {} ({needed_by} needs it)",
            config_path.display(),
            io_words(&e)
        ))
    })?;
    config::resolve(&config_path.display().to_string(), &text, &[])
}

/// `metaloop eval --checkpoint`: rebuilds the trainer from the run's `config.toml`, restores the
/// checkpoint, meta-tests on `tasks` tasks (default: the config's `eval.test_tasks`). On rank 0:
/// the line naming the checkpoint, and the report.
fn eval(path: &Path, tasks: Option<usize>) -> Result<Option<(String, EvalReport)>> {
    let (root, ckpt) = locate(path)?;
    for w in &ckpt.warnings {
        warn(w);
    }
    let cfg = run_config(&root, "the checkpoint's run directory")?;
    if !rundir::hash_matches(&cfg, &ckpt.manifest.config_hash) {
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
fn eval_best(root: &Path, tasks: Option<usize>) -> Result<Option<(String, EvalReport)>> {
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
