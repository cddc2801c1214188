//! Model selection: the validation that beats every earlier one of a run has the writing rank
//! write `model.best.safetensors` (θ0 and the learned inner hyperparameters, as
//! `model.safetensors`) and then `best.json` (the iteration and the validation value), each
//! atomically. A resumed run reads `best.json` first, so only a better validation replaces them.
//!
//! The value is the validation's accuracy after adaptation for classification (higher is
//! better) and its loss after adaptation for regression (lower is better). `metaloop eval --best`
//! loads the file back through engine::model_file. This module never prints.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::meta_params::MetaParams;
use crate::model_file;
use crate::report::EvalReport;
use crate::rundir::{RunDir, BEST};
use crate::{Error, Result};

/// What `best.json` holds: the validation that `model.best.safetensors` comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// The iteration after which θ0 was saved.
    pub iteration: u64,
    /// "accuracy_after" (higher is better) or "loss_after" (lower is better).
    pub metric: String,
    /// The validation's mean of `metric`, and its 95% confidence half-width.
    pub value: f64,
    pub ci95: f64,
    /// Validation tasks.
    pub tasks: usize,
}

/// The metric of classification runs.
pub const ACCURACY_AFTER: &str = "accuracy_after";
/// The metric of regression runs.
pub const LOSS_AFTER: &str = "loss_after";

impl Best {
    /// The candidate a validation `report` of `iteration` makes.
    pub fn of(iteration: u64, report: &EvalReport) -> Best {
        let (metric, v) = match report.accuracy_after {
            Some(a) => (ACCURACY_AFTER, a),
            None => (LOSS_AFTER, report.loss_after),
        };
        Best {
            iteration,
            metric: metric.into(),
            value: v.mean,
            ci95: v.ci95,
            tasks: report.tasks,
        }
    }

    /// True when this candidate is strictly better than `so_far` (any finite value beats none;
    /// a value that is not finite never wins).
    pub fn beats(&self, so_far: Option<&Best>) -> bool {
        if !self.value.is_finite() {
            return false;
        }
        match so_far {
            None => true,
            Some(b) if self.metric == ACCURACY_AFTER => self.value > b.value,
            Some(b) => self.value < b.value,
        }
    }

    /// `best.json` of the run directory `root`: `None` when there is none yet.
    pub fn read(root: &Path) -> Result<Option<Best>> {
        let path = root.join(BEST);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Io { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Checkpoint {
                path,
                reason: format!("not a best-model record: {e}"),
            })
    }

    /// Writes `best.json` into the run directory `root`, atomically.
    pub fn write(&self, root: &Path) -> Result<PathBuf> {
        let path = root.join(BEST);
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::RunDir {
            path: path.clone(),
            reason: format!("cannot serialise the best-model record: {e}"),
        })?;
        write_atomic(&path, &json)?;
        Ok(path)
    }
}

/// Model selection over one run: the best validation so far, and its model file.
pub struct Selection {
    best: Option<Best>,
}

impl Selection {
    /// The selection of the run directory `run` (its `best.json`, on resume); nothing is
    /// selected yet without one, or on a rank that does not write (`None`).
    pub fn resume(run: Option<&Path>) -> Result<Selection> {
        let best = match run {
            Some(root) => Best::read(root)?,
            None => None,
        };
        Ok(Selection { best })
    }

    /// The best validation so far.
    pub fn best(&self) -> Option<&Best> {
        self.best.as_ref()
    }

    /// Keeps `meta` when the validation `report` of `iteration` beats the best so far:
    /// `model.best.safetensors`, then `best.json` (a crash between the two leaves a record no
    /// better than the file).
    pub fn consider(
        &mut self,
        run: &RunDir,
        iteration: u64,
        report: &EvalReport,
        meta: &MetaParams,
    ) -> Result<()> {
        let candidate = Best::of(iteration, report);
        if !candidate.beats(self.best.as_ref()) {
            return Ok(());
        }
        model_file::write(run.best_model_path(), meta)?;
        candidate.write(run.path())?;
        self.best = Some(candidate);
        Ok(())
    }
}
