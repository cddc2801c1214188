//! What training and evaluation report: one outer step's metrics, and a meta-test's means with
//! their 95% confidence intervals.

use serde::Serialize;

/// Mean and 95% confidence half-width (1.96 standard errors) over tasks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanCi {
    pub mean: f64,
    pub ci95: f64,
}

impl MeanCi {
    /// Over the values of `v` (at least one).
    pub fn of(v: &[f64]) -> MeanCi {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = if v.len() > 1 {
            v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        MeanCi {
            mean,
            ci95: 1.96 * (var / n).sqrt(),
        }
    }
}

/// What one outer iteration measured (over all ranks).
#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    pub iteration: u64,
    /// The mean over tasks of the query loss after adaptation.
    pub meta_loss: f64,
    /// The mean query accuracy after adaptation (classification).
    pub query_accuracy: Option<f64>,
    /// The L2 norm of the all-reduced meta-gradient.
    pub grad_norm: f64,
    /// Tasks in the global meta-batch.
    pub tasks: usize,
    /// Wall time of the iteration on this rank.
    pub seconds: f64,
    /// Learned inner hyperparameters: their mean value.
    pub hparams: Vec<(String, f64)>,
    /// True when a NaN or Inf in the meta-gradient or an inner loop made every rank skip this
    /// outer step (the meta-parameters did not change).
    pub skipped: bool,
    /// The global indices of the tasks whose loss was not finite (when skipped).
    pub nonfinite_tasks: Vec<usize>,
    /// The outer learning rate of this step (`outer.schedule`).
    pub outer_lr: f64,
    /// The meta-gradient's norm before clipping, when `outer.clip_grad_norm` clipped it.
    pub clipped: Option<f64>,
    /// The clipped outer steps since the run began (`None` when clipping is off).
    pub clips: Option<u64>,
    /// The (task, step) pairs of this iteration whose inner gradient
    /// `algorithm.inner_clip_grad_norm` clipped, over all ranks.
    pub inner_clips: u64,
    /// The largest inner-gradient norm before such a clip (`None` when none clipped).
    pub inner_clip_norm: Option<f64>,
}

/// Meta-test or validation: before and after adaptation, over `tasks` tasks.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub split: String,
    pub tasks: usize,
    pub inner_steps: usize,
    /// Classes per task (classification; absent for regression).
    pub ways: Option<usize>,
    /// Support examples per class (classification) or support points (regression).
    pub shots: usize,
    /// "mse" (regression) or "accuracy" (classification).
    pub metric: String,
    pub loss_before: MeanCi,
    pub loss_after: MeanCi,
    pub accuracy_before: Option<MeanCi>,
    pub accuracy_after: Option<MeanCi>,
}
