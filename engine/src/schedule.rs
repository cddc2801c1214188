//! The outer learning-rate schedule, the clipping of the meta-gradient, and the clipping of
//! each task's inner gradient with its count.
//!
//! The schedule is a pure function of the outer iteration, so a checkpoint's iteration is all
//! of its state: a resumed run continues it exactly. Its values equal torch.optim.lr_scheduler's
//! (2.11.0) when stepped once per outer iteration:
//! - warm-up (`outer.warmup_iterations` = W > 0): `LinearLR(start_factor, end_factor=1,
//!   total_iters=W)`, chained to the schedule below by `SequentialLR(milestones=[W])`;
//! - "constant": the base rate;
//! - "cosine": `CosineAnnealingLR(T_max = outer.iterations − W, eta_min = outer.min_lr)`;
//! - "step": `StepLR(step_size = outer.step_every, gamma = outer.gamma)`;
//! - "linear": `LinearLR(1, outer.min_lr / outer.lr, total_iters = outer.iterations − W)`.
//!
//! torch computes most of these recursively; the closed forms here agree to rounding
//! (tests/fixtures/outer/gen_outer.py). Nothing here prints.

use crate::config::{OuterConfig, Schedule};

/// The learning rate of every outer iteration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LrSchedule {
    kind: Schedule,
    lr: f64,
    min_lr: f64,
    warmup: u64,
    start_factor: f64,
    /// The iterations after the warm-up.
    rest: u64,
    step_every: u64,
    gamma: f64,
}

impl LrSchedule {
    /// The schedule of `outer`.
    pub(crate) fn new(outer: &OuterConfig) -> LrSchedule {
        LrSchedule {
            kind: outer.schedule,
            lr: outer.lr,
            min_lr: outer.min_lr,
            warmup: outer.warmup_iterations,
            start_factor: outer.warmup_start_factor,
            rest: outer
                .iterations
                .saturating_sub(outer.warmup_iterations)
                .max(1),
            step_every: outer.step_every.max(1),
            gamma: outer.gamma,
        }
    }

    /// The learning rate of outer iteration `t` (0 for the first step).
    pub(crate) fn lr(&self, t: u64) -> f64 {
        if t < self.warmup {
            let f = self.start_factor + (1.0 - self.start_factor) * t as f64 / self.warmup as f64;
            return self.lr * f;
        }
        let u = t - self.warmup;
        match self.kind {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let c = (std::f64::consts::PI * u as f64 / self.rest as f64).cos();
                self.min_lr + (self.lr - self.min_lr) * (1.0 + c) / 2.0
            }
            Schedule::Step => {
                let exponent = i32::try_from(u / self.step_every).unwrap_or(i32::MAX);
                self.lr * self.gamma.powi(exponent)
            }
            Schedule::Linear => {
                let end = self.min_lr / self.lr;
                let done = u.min(self.rest) as f64 / self.rest as f64;
                self.lr * (1.0 + (end - 1.0) * done)
            }
        }
    }
}

/// torch.nn.utils.clip_grad_norm_'s factor for a gradient of L2 norm `norm` under `max_norm`:
/// `max_norm / (norm + 1e-6)`, or `None` where that is not below 1 (torch multiplies by 1
/// there, which changes nothing) or clipping is off (`max_norm == 0`).
pub(crate) fn clip_factor(max_norm: f64, norm: f64) -> Option<f64> {
    if max_norm <= 0.0 {
        return None;
    }
    let coef = max_norm / (norm + 1e-6);
    (coef < 1.0).then_some(coef)
}

/// Each row of the flat inner gradient `g` (`[T, P]`, one task per row; or `[P]`) clipped to L2
/// norm `max_norm` as torch.nn.utils.clip_grad_norm_ clips one task's parameters, built from
/// differentiable tensor ops (the factor's dependence on the gradient is part of the graph, as
/// in TorchOpt's clip_grad_norm transform); and each row's norm before clipping where it was
/// clipped, 0 where it was not (detached, `[T, 1]`; `[1]` for `[P]`). Logs the tasks it clipped
/// and their largest norm before (this reads the norms back to the host, once per inner step
/// while clipping is on).
pub(crate) fn clip_rows(
    g: &tch::Tensor,
    max_norm: f64,
    step: usize,
) -> Result<(tch::Tensor, tch::Tensor), tch::TchError> {
    let norms = g.f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?;
    let factor = norms
        .f_add_scalar(1e-6)?
        .f_reciprocal()?
        .f_mul_scalar(max_norm)?
        .f_clamp_max(1.0)?;
    let clipped = norms.f_add_scalar(1e-6)?.f_gt(max_norm)?;
    let count = clipped.f_sum(tch::Kind::Int64)?.f_int64_value(&[])?;
    if count > 0 {
        let largest = norms.f_max()?.f_double_value(&[])?;
        tracing::info!(
            step,
            tasks = count,
            largest,
            max = max_norm,
            "inner gradient clipped"
        );
    }
    let logged = norms.f_detach()?.f_mul(&clipped.f_to_kind(norms.kind())?)?;
    Ok((g.f_mul(&factor)?, logged))
}

/// The inner clips of one chunk of tasks (`algorithm.inner_clip_grad_norm`): per task, the
/// steps that clipped its gradient and the largest norm before such a clip. It stays on the
/// device; the iteration's all-reduce carries it (engine::reduce, engine::exact).
#[derive(Debug, Default)]
pub struct ClipLog(std::sync::Mutex<Option<[tch::Tensor; 2]>>);

impl ClipLog {
    /// Adds one step's clipped norms (`[T, 1]`, 0 where a task was not clipped).
    pub(crate) fn record(&self, norms: &tch::Tensor) -> Result<(), tch::TchError> {
        let norms = norms.f_reshape([-1])?;
        let count = norms.f_gt(0.0)?.f_to_kind(norms.kind())?;
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *log = Some(match log.take() {
            Some([c, m]) => [c.f_add(&count)?, m.f_maximum(&norms)?],
            None => [count, norms],
        });
        Ok(())
    }

    /// `[2, tasks]`: each task's count of clipped steps and its largest norm before a clip
    /// (zeros when nothing clipped), of kind and device `opts`.
    pub(crate) fn rows(
        &self,
        tasks: i64,
        opts: (tch::Kind, tch::Device),
    ) -> Result<tch::Tensor, tch::TchError> {
        let log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match log.as_ref() {
            Some([c, m]) => tch::Tensor::f_stack(&[c, m], 0)?.f_to_kind(opts.0),
            None => tch::Tensor::f_zeros([2, tasks], opts),
        }
    }
}

/// The inner clips of one iteration over all ranks: how many (task, step) pairs clipped, and
/// the largest norm before a clip (`None` when none did).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct InnerClips {
    pub count: u64,
    pub largest: Option<f64>,
}

impl InnerClips {
    /// The clips of the all-reduced slots: per task, `counts` and `largest` norms.
    pub(crate) fn of(counts: &[f64], largest: &[f64]) -> InnerClips {
        let count = counts.iter().sum::<f64>().round() as u64;
        let largest = largest
            .iter()
            .copied()
            .filter(|n| *n > 0.0)
            .reduce(f64::max);
        InnerClips { count, largest }
    }

    /// `self` and `other` together (their counts added, the larger norm kept).
    pub fn add(self, other: InnerClips) -> InnerClips {
        let largest = match (self.largest, other.largest) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        InnerClips {
            count: self.count + other.count,
            largest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_factor_is_torchs() {
        assert_eq!(clip_factor(0.0, 10.0), None);
        assert_eq!(clip_factor(1.0, 0.5), None);
        assert_eq!(clip_factor(1.0, 3.0), Some(1.0 / (3.0 + 1e-6)));
    }

    #[test]
    fn warm_up_reaches_the_base_rate() {
        let mut outer = OuterConfig {
            lr: 0.1,
            iterations: 20,
            warmup_iterations: 4,
            warmup_start_factor: 0.5,
            ..OuterConfig::default()
        };
        outer.schedule = Schedule::Cosine;
        let s = LrSchedule::new(&outer);
        assert_eq!(s.lr(0), 0.05);
        assert_eq!(s.lr(4), 0.1);
        assert!(s.lr(19) < s.lr(5));
    }
}
