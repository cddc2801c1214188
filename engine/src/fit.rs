//! The fit loop: [`Trainer::fit`] runs the outer iterations left, with the validation cadence
//! (`eval.every`), the metrics log (`log.every`), the checkpoint cadence (`log.checkpoint_every`,
//! and the last iteration), the truncation of `metrics.jsonl` after a resumed checkpoint, the
//! peak memory of each metrics line (engine::memory), and the stop that every rank agrees on, and
//! model selection: a validation better than every earlier one of the run (engine::selection)
//! writes `model.best.safetensors` and `best.json`.
//!
//! The caller wires the communicator, restores a checkpoint to resume, and shows progress through
//! an [`Observer`]; it passes the run directory on the rank that writes (rank 0) and `None` on the
//! others, which compute the same steps (the all-reduces are collective). A stop request (e.g. a
//! signal that reached some ranks) is polled before every iteration and once after the last and
//! all-reduced, so every rank stops after the same iteration; the writing rank then checkpoints
//! that iteration and every rank waits for it. This module never prints.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::checkpoint;
use crate::data::Split;
use crate::memory;
use crate::report::{EvalReport, StepMetrics};
use crate::rundir::RunDir;
use crate::schedule::InnerClips;
use crate::selection::Selection;
use crate::tensorboard::{tags, TensorBoard};
use crate::train::Trainer;
use crate::{Error, Result};

/// What the fit loop tells its caller as it goes. Every method has a default that does nothing.
pub trait Observer {
    /// Polled before every iteration and after the last: `Some(signal)` when this rank was asked
    /// to stop. The fit loop agrees on it with the other ranks.
    fn stop_requested(&mut self) -> Option<i32> {
        None
    }

    /// After every outer step, with the throughput since the loop started.
    fn step(&mut self, _metrics: &StepMetrics, _tasks_per_s: f64) {}

    /// After a validation.
    fn validated(&mut self, _iteration: u64, _report: &EvalReport) {}

    /// Something the user should know that does not stop the run.
    fn warning(&mut self, _message: &str) {}
}

/// An observer that ignores everything.
impl Observer for () {}

/// How the fit loop ended.
#[derive(Debug, Clone, PartialEq)]
pub enum FitEnd {
    /// Every iteration of `outer.iterations` is done and checkpointed.
    Finished,
    /// A stop that every rank agreed on, after `iteration`; `signal` is this rank's own request
    /// (`None` when only other ranks were asked); `checkpoint` the manifest of `iteration` on the
    /// writing rank.
    Stopped {
        signal: Option<i32>,
        iteration: u64,
        checkpoint: Option<PathBuf>,
    },
}

/// One line of `metrics.jsonl`.
#[derive(Serialize)]
struct MetricsLine<'a> {
    iteration: u64,
    meta_loss: f64,
    query_accuracy: Option<f64>,
    tasks_per_s: f64,
    grad_norm: f64,
    /// The outer learning rate of the step (`outer.schedule`).
    outer_lr: f64,
    /// The clipped outer steps so far (when `outer.clip_grad_norm` is on).
    #[serde(skip_serializing_if = "Option::is_none")]
    outer_clips: Option<u64>,
    /// The meta-gradient's norm before clipping, when this step clipped it.
    #[serde(skip_serializing_if = "Option::is_none")]
    outer_clip_norm: Option<f64>,
    /// The (task, step) pairs whose inner gradient `algorithm.inner_clip_grad_norm` clipped
    /// since the previous line, over all ranks.
    inner_clips: u64,
    /// The largest inner-gradient norm before such a clip since the previous line.
    #[serde(skip_serializing_if = "Option::is_none")]
    inner_clip_norm: Option<f64>,
    /// Seconds of this iteration's step.
    step_seconds: f64,
    /// Learned inner hyperparameters (mean value), by name.
    hparams: BTreeMap<String, f64>,
    /// The outer step was skipped for non-finite values (meta_loss may then be null).
    skipped: bool,
    /// The most memory held since the previous line (engine::memory), MiB: the process's
    /// resident set on the CPU, the caching allocator's memory in tensors on CUDA; null where
    /// not measured.
    peak_mib: Option<f64>,
    /// The memory plan (engine::plan), on the first line this invocation writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_plan: Option<&'a crate::plan::MemoryPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    val: Option<&'a EvalReport>,
}

/// The loop's running state.
struct Progress {
    started: Instant,
    tasks_done: usize,
    validate: bool,
    /// The iteration whose checkpoint is on disk, if any.
    saved: Option<u64>,
    /// The run's TensorBoard event file (`log.tensorboard`, on the writing rank).
    board: Option<TensorBoard>,
    /// Model selection (on the writing rank; read back from `best.json` on resume).
    selection: Selection,
    /// Whether this invocation's memory plan is in a metrics line yet.
    plan_logged: bool,
    /// The inner clips since the previous metrics line.
    inner_clips: InnerClips,
}

impl Trainer {
    /// Runs the outer iterations left (see the module documentation). `run` is the run
    /// directory on the rank that writes, `None` elsewhere; a trainer restored from a checkpoint
    /// continues from it, and the metrics logged after it are dropped.
    pub fn fit(
        &mut self,
        mut run: Option<&mut RunDir>,
        observer: &mut dyn Observer,
    ) -> Result<FitEnd> {
        let resumed = self.iteration();
        if let Some(run) = run.as_deref_mut() {
            run.truncate_metrics_after(resumed)?;
        }
        let mut p = Progress {
            started: Instant::now(),
            tasks_done: 0,
            validate: self.config().eval.every > 0,
            saved: (resumed > 0).then_some(resumed),
            board: match run.as_deref() {
                Some(run) if self.config().log.tensorboard => {
                    Some(TensorBoard::create(run.path())?)
                }
                _ => None,
            },
            selection: Selection::resume(run.as_deref().map(RunDir::path))?,
            plan_logged: false,
            inner_clips: InnerClips::default(),
        };
        // The first line's peak starts here, after setup.
        memory::take_peak_mib(self.device());
        let total = self.config().outer.iterations;
        while self.iteration() < total {
            if let Some(end) = self.agreed_stop(run.as_deref(), observer, p.saved)? {
                return Ok(end);
            }
            let m = self.step()?;
            p.tasks_done += m.tasks;
            let tasks_per_s = p.tasks_done as f64 / p.started.elapsed().as_secs_f64().max(1e-9);
            let val = self.validate_now(&mut p, observer)?;
            if let Some(run) = run.as_deref_mut() {
                self.record(run, &m, tasks_per_s, val.as_ref(), &mut p)?;
            }
            if let Some(v) = &val {
                observer.validated(m.iteration, v);
            }
            observer.step(&m, tasks_per_s);
        }
        if let Some(end) = self.agreed_stop(run.as_deref(), observer, p.saved)? {
            return Ok(end);
        }
        Ok(FitEnd::Finished)
    }

    /// The validation of this iteration, when `eval.every` asks for one; a dataset without a
    /// validation split turns validation off with a warning.
    fn validate_now(
        &self,
        p: &mut Progress,
        observer: &mut dyn Observer,
    ) -> Result<Option<EvalReport>> {
        let it = self.iteration();
        if !p.validate || !it.is_multiple_of(self.config().eval.every) {
            return Ok(None);
        }
        let _s = tracing::info_span!("validate", iteration = it).entered();
        match self.evaluate(Split::Val, self.config().eval.val_tasks) {
            Ok(r) => Ok(Some(r)),
            Err(e @ Error::NoSplit { .. }) => {
                if self.rank() == 0 {
                    observer.warning(&format!("{e}: validation is skipped"));
                }
                p.validate = false;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The writing rank's share of an iteration: the metrics line and the checkpoint when due.
    fn record(
        &self,
        run: &mut RunDir,
        m: &StepMetrics,
        tasks_per_s: f64,
        val: Option<&EvalReport>,
        p: &mut Progress,
    ) -> Result<()> {
        let (it, cfg) = (m.iteration, self.config());
        let last = it == cfg.outer.iterations;
        p.inner_clips = p.inner_clips.add(InnerClips {
            count: m.inner_clips,
            largest: m.inner_clip_norm,
        });
        // A clipped step is always logged.
        if it.is_multiple_of(cfg.log.every) || last || val.is_some() || m.clipped.is_some() {
            let inner = std::mem::take(&mut p.inner_clips);
            run.log(&MetricsLine {
                iteration: it,
                meta_loss: m.meta_loss,
                query_accuracy: m.query_accuracy,
                tasks_per_s,
                grad_norm: m.grad_norm,
                outer_lr: m.outer_lr,
                outer_clips: m.clips,
                outer_clip_norm: m.clipped,
                inner_clips: inner.count,
                inner_clip_norm: inner.largest,
                step_seconds: m.seconds,
                hparams: m.hparams.iter().cloned().collect(),
                skipped: m.skipped,
                peak_mib: memory::take_peak_mib(self.device()),
                memory_plan: self.memory_plan().filter(|_| !p.plan_logged),
                val,
            })?;
            p.plan_logged = true;
            if let Some(board) = p.board.as_mut() {
                log_scalars(board, m, tasks_per_s, inner.count, val)?;
            }
        }
        if let Some(v) = val {
            p.selection.consider(run, it, v, self.meta())?;
        }
        let every = cfg.log.checkpoint_every;
        if (every > 0 && it.is_multiple_of(every)) || last {
            self.save_checkpoint(run)?;
            p.saved = Some(it);
        }
        Ok(())
    }

    /// A stop that some rank asked for, agreed on by all (collective): the writing rank
    /// checkpoints the last completed iteration (unless it is already on disk), and no rank
    /// returns before it is (mpirun ends the whole job when the first rank exits).
    fn agreed_stop(
        &self,
        run: Option<&RunDir>,
        observer: &mut dyn Observer,
        saved: Option<u64>,
    ) -> Result<Option<FitEnd>> {
        // Polled before every iteration: the collective watchdog names it in its report.
        metaloop_runtime::comm::set_iteration(self.iteration());
        let mine = observer.stop_requested();
        if !self.any_rank(mine.is_some())? {
            return Ok(None);
        }
        let it = self.iteration();
        let checkpoint = match run {
            Some(run) if saved == Some(it) => {
                Some(run.checkpoints_dir().join(checkpoint::manifest_name(it)))
            }
            Some(run) => Some(self.save_checkpoint(run)?),
            None => None,
        };
        self.any_rank(false)?;
        Ok(Some(FitEnd::Stopped {
            signal: mine,
            iteration: it,
            checkpoint,
        }))
    }
}

/// The TensorBoard scalars of one metrics line: the step's meta-loss, query accuracy, tasks/s,
/// gradient norm, learned hyperparameters and the inner clips since the previous line, and the validation before and after adaptation.
fn log_scalars(
    board: &mut TensorBoard,
    m: &StepMetrics,
    tasks_per_s: f64,
    inner_clips: u64,
    val: Option<&EvalReport>,
) -> Result<()> {
    let hparams: Vec<(String, f64)> = m
        .hparams
        .iter()
        .map(|(name, v)| (format!("{}{name}", tags::HPARAM_PREFIX), *v))
        .collect();
    let mut values: Vec<(&str, f64)> = vec![
        (tags::META_LOSS, m.meta_loss),
        (tags::TASKS_PER_S, tasks_per_s),
        (tags::GRAD_NORM, m.grad_norm),
        (tags::OUTER_LR, m.outer_lr),
        (tags::INNER_CLIPS, inner_clips as f64),
    ];
    values.extend(m.clips.map(|c| (tags::OUTER_CLIPS, c as f64)));
    values.extend(m.query_accuracy.map(|a| (tags::QUERY_ACCURACY, a)));
    values.extend(hparams.iter().map(|(tag, v)| (tag.as_str(), *v)));
    if let Some(v) = val {
        values.push((tags::VAL_LOSS_BEFORE, v.loss_before.mean));
        values.push((tags::VAL_LOSS_AFTER, v.loss_after.mean));
        values.extend(
            v.accuracy_before
                .map(|a| (tags::VAL_ACCURACY_BEFORE, a.mean)),
        );
        values.extend(v.accuracy_after.map(|a| (tags::VAL_ACCURACY_AFTER, a.mean)));
    }
    board.scalars(m.iteration, &values)
}
