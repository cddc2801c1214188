//! Model selection: the validation that beats every earlier one of a run has the writing rank
//! write `model.best.safetensors` (θ0 and the learned inner hyperparameters, as
//! `model.safetensors`) and then `best.json` (the iteration and the validation value), each
//! atomically. A resumed run reads `best.json` first, so only a better validation replaces them.
//!
//! The value is the validation's accuracy after adaptation for classification (higher is
//! better) and its loss after adaptation for regression (lower is better). `metaloop eval --best`
//! loads the file back with [`Trainer::load_model`]. This module never prints.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::atomic::write_atomic;
use crate::rundir::BEST;
use crate::train::{EvalReport, Trainer};
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

impl Trainer {
    /// Sets θ0 and the learned inner hyperparameters from a model file that
    /// [`Trainer::write_model`] wrote (`model.safetensors`, `model.best.safetensors`): every
    /// tensor of θ0 under its name and each learned hyperparameter as `inner.<name>`, with the
    /// shapes of this trainer's model.
    pub fn load_model(&mut self, path: &Path) -> Result<()> {
        let fail = |reason: String| Error::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let tensors = Tensor::read_safetensors(path).map_err(|e| fail(e.to_string()))?;
        let find = |name: &str, shape: Vec<i64>| -> Result<&Tensor> {
            let t = tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| fail(format!("tensor `{name}` is missing")))?;
            if t.size() != shape {
                return Err(fail(format!(
                    "tensor `{name}` has shape {:?}, the model needs {shape:?}",
                    t.size()
                )));
            }
            Ok(t)
        };
        let (kind, device) = (self.kind, self.device);
        let mut theta = Vec::new();
        for (name, view) in self.theta.iter() {
            let t = find(name, view.size())?;
            theta.push((name.to_string(), t.f_to_kind(kind)?.f_to_device(device)?));
        }
        let mut learned = Vec::new();
        for h in &self.learned {
            let t = find(&format!("inner.{}", h.name), h.tensor.size())?;
            learned.push(t.f_to_kind(kind)?.f_to_device(device)?);
        }
        for (name, t) in &theta {
            self.theta.set(name, t)?;
        }
        tch::no_grad(|| -> Result<()> {
            for (h, t) in self.learned.iter().zip(&learned) {
                h.tensor.shallow_clone().f_copy_(t)?;
            }
            Ok(())
        })
    }
}
