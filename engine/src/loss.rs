//! Task losses: what "the loss of a task" means, in one place for training, evaluation and the
//! benchmark.
//!
//! A [`Loss`] turns task-batched predictions `[T, N, out]` and targets into one loss per task
//! (`[T]`, the mean over the task's examples) and, for classification, one accuracy per task.
//! The inner loop minimises the sum over tasks (each task's gradient stays its own). Callers pick
//! a loss for the config's task kind with [`for_task`], or bring their own to the Trainer's
//! builder. Nothing here reads data or prints.

use std::fmt;

use tch::{Kind, TchError, Tensor};

use crate::config::TaskKind;

/// Losses are tensor arithmetic: libtorch's error is their only failure, which both the engine's
/// and the runtime's errors convert from (the recompute path calls them inside runtime closures).
pub type Result<T> = std::result::Result<T, TchError>;

/// Per-task losses `[T]` and, for classification, per-task accuracies `[T]`.
#[derive(Debug)]
pub struct TaskLosses {
    pub loss: Tensor,
    pub accuracy: Option<Tensor>,
}

impl TaskLosses {
    /// The sum over tasks, in `kind`: the objective of a task-batched inner step.
    pub fn total(&self, kind: Kind) -> Result<Tensor> {
        Ok(self.loss.f_sum(kind)?)
    }
}

/// A per-task loss of task-batched predictions.
pub trait Loss: Send + Sync + fmt::Debug {
    /// The losses (and accuracies) of predictions `[T, N, out]` against targets `y`.
    fn task_losses(&self, pred: &Tensor, y: &Tensor) -> Result<TaskLosses>;

    /// True when targets are class indices (they stay integer on the device) and an accuracy is
    /// reported; false when targets are values in the model's dtype.
    fn classification(&self) -> bool;

    /// The name reports use for the metric ("accuracy" for classifiers).
    fn metric(&self) -> &'static str {
        if self.classification() {
            "accuracy"
        } else {
            "mse"
        }
    }
}

/// Mean squared error over each task's points and outputs (regression, e.g. sinusoids).
#[derive(Debug, Clone, Copy, Default)]
pub struct Mse;

impl Loss for Mse {
    fn task_losses(&self, pred: &Tensor, y: &Tensor) -> Result<TaskLosses> {
        let loss = pred
            .f_sub(y)?
            .f_square()?
            .f_mean_dim(&[1i64, 2][..], false, pred.kind())?;
        Ok(TaskLosses {
            loss,
            accuracy: None,
        })
    }

    fn classification(&self) -> bool {
        false
    }
}

/// Mean cross-entropy of each task's logits against integer labels `[T, N]` (classification),
/// with the accuracy of the arg-max prediction.
#[derive(Debug, Clone, Copy, Default)]
pub struct CrossEntropy;

impl Loss for CrossEntropy {
    fn task_losses(&self, pred: &Tensor, y: &Tensor) -> Result<TaskLosses> {
        let size = pred.size();
        let (t, n, w) = (size[0], size[1], size[2]);
        let logp = pred.f_reshape([t * n, w])?.f_log_softmax(-1, pred.kind())?;
        let nll = logp
            .f_gather(1, &y.f_reshape([t * n, 1])?, false)?
            .f_neg()?
            .f_reshape([t, n])?;
        let acc = pred
            .f_argmax(-1, false)?
            .f_eq_tensor(y)?
            .f_to_kind(pred.kind())?
            .f_mean_dim(&[1i64][..], false, pred.kind())?;
        Ok(TaskLosses {
            loss: nll.f_mean_dim(&[1i64][..], false, pred.kind())?,
            accuracy: Some(acc),
        })
    }

    fn classification(&self) -> bool {
        true
    }
}

/// The loss of a config's task kind: MSE for sinusoid regression, cross-entropy for the image
/// datasets.
pub fn for_task(kind: TaskKind) -> Box<dyn Loss> {
    match kind {
        TaskKind::Sinusoid => Box::new(Mse),
        TaskKind::Omniglot
        | TaskKind::Miniimagenet
        | TaskKind::Tieredimagenet
        | TaskKind::Cifarfs
        | TaskKind::Fc100
        | TaskKind::Folder => Box::new(CrossEntropy),
    }
}
