//! `[outer]`: the outer optimizer, its options under torch.optim's names, the learning-rate
//! schedule and the clipping of the meta-gradient (engine::outer_options checks the options,
//! engine::schedule computes the rates).

use serde::{Deserialize, Serialize};

use super::{d, OptimizerName, Schedule};

/// The outer (meta) optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OuterConfig {
    /// The outer (meta) optimizer.
    #[serde(default = "d::adam")]
    pub optimizer: OptimizerName,
    /// Meta learning rate (Reptile: the outer step size ε on θ − φ).
    /// Allowed: a finite number > 0.
    #[serde(default = "d::outer_lr")]
    pub lr: f64,
    /// Tasks per meta-batch, over all ranks.
    /// Allowed: 1 to 2^24.
    #[serde(default = "d::usize_::<25>")]
    pub meta_batch: usize,
    /// Outer iterations.
    /// Allowed: at least 1.
    #[serde(default = "d::u64_::<1000>")]
    pub iterations: u64,
    /// Outer steps skipped in a row (a NaN or Inf in the meta-gradient or an inner loop) before
    /// the run stops.
    /// Allowed: at least 1.
    #[serde(default = "d::u32_::<5>")]
    pub max_nonfinite_skips: u32,
    /// The learning-rate schedule after the warm-up (engine::schedule), as
    /// torch.optim.lr_scheduler's CosineAnnealingLR (T_max = iterations − warm-up), StepLR and
    /// LinearLR (from lr to min_lr over the iterations after the warm-up).
    #[serde(default = "d::constant")]
    pub schedule: Schedule,
    /// Iterations of linear warm-up from `warmup_start_factor × lr` to `lr` (0 = none), as
    /// LinearLR chained by SequentialLR.
    /// Allowed: below outer.iterations.
    #[serde(default)]
    pub warmup_iterations: u64,
    /// The warm-up's first factor (torch's LinearLR default, 1/3).
    /// Allowed: (0, 1].
    #[serde(default = "d::third")]
    pub warmup_start_factor: f64,
    /// The rate "cosine" and "linear" end at.
    /// Allowed: a finite number >= 0; at most outer.lr with "linear".
    #[serde(default)]
    pub min_lr: f64,
    /// "step": multiply the rate by `gamma` every this many iterations.
    /// Allowed: at least 1.
    #[serde(default = "d::u64_::<1000>")]
    pub step_every: u64,
    /// "step": the factor.
    /// Allowed: a finite number > 0.
    #[serde(default = "d::gamma")]
    pub gamma: f64,
    /// Clip the all-reduced meta-gradient (θ0 and learned hyperparameters together) to this L2
    /// norm, as torch.nn.utils.clip_grad_norm_ (0 = off).
    /// Allowed: a finite number >= 0.
    #[serde(default)]
    pub clip_grad_norm: f64,
    /// The outer optimizer's options, under torch.optim's names; one left out (unset) takes
    /// torch's default for the chosen optimizer. sgd, rmsprop: the momentum factor.
    /// Allowed: an option of outer.optimizer (engine::outer_options), >= 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    /// sgd: the dampening of the momentum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dampening: Option<f64>,
    /// sgd: Nesterov momentum (needs momentum > 0 and dampening 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nesterov: Option<bool>,
    /// Weight decay (every optimizer but rprop; decoupled for adamw, whose default is 1e-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// adam, adamw, adamax, radam: the decay rates of the moments, each in [0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub betas: Option<[f64; 2]>,
    /// The term added to the denominator (every optimizer but sgd and rprop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    /// adam, adamw: AMSGrad.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amsgrad: Option<bool>,
    /// adagrad: the decay of the rate with the step count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_decay: Option<f64>,
    /// adagrad: the accumulator's first value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_accumulator_value: Option<f64>,
    /// adadelta: the decay rate of the running averages, in [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rho: Option<f64>,
    /// rmsprop: the smoothing constant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// rmsprop: normalise by the gradient's estimated variance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub centered: Option<bool>,
    /// rprop: the factors [η−, η+], 0 < η− < 1 < η+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etas: Option<[f64; 2]>,
    /// rprop: the bounds of the step sizes [min, max].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_sizes: Option<[f64; 2]>,
    /// radam: AdamW's decoupled weight decay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoupled_weight_decay: Option<bool>,
}

/// `algorithm.inner_options`: the inner optimizer's options under torch.optim's names, as the
/// options of `[outer]` (engine::outer_options checks and builds both). The learning rate is
/// `algorithm.inner_lr` and the momentum `algorithm.inner_momentum`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerOptions {
    /// Set `algorithm.inner_momentum` instead.
    /// Allowed: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    /// sgd: the dampening of the momentum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dampening: Option<f64>,
    /// sgd: Nesterov momentum (needs algorithm.inner_momentum > 0 and dampening 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nesterov: Option<bool>,
    /// Weight decay (every optimizer but rprop; decoupled for adamw, whose default is 1e-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// adam, adamw, adamax, radam: the decay rates of the moments, each in [0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub betas: Option<[f64; 2]>,
    /// The term added to the denominator (every optimizer but sgd and rprop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    /// adam, adamw: AMSGrad.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amsgrad: Option<bool>,
    /// adagrad: the decay of the rate with the step count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_decay: Option<f64>,
    /// adagrad: the accumulator's first value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_accumulator_value: Option<f64>,
    /// adadelta: the decay rate of the running averages, in [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rho: Option<f64>,
    /// rmsprop: the smoothing constant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// rmsprop: normalise by the gradient's estimated variance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub centered: Option<bool>,
    /// rprop: the factors [η−, η+], 0 < η− < 1 < η+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etas: Option<[f64; 2]>,
    /// rprop: the bounds of the step sizes [min, max].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_sizes: Option<[f64; 2]>,
    /// radam: AdamW's decoupled weight decay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoupled_weight_decay: Option<bool>,
}

impl OuterConfig {
    /// The outer optimizer's options, as one [`OptimizerOptions`].
    pub fn options(&self) -> OptimizerOptions {
        OptimizerOptions {
            momentum: self.momentum,
            dampening: self.dampening,
            nesterov: self.nesterov,
            weight_decay: self.weight_decay,
            betas: self.betas,
            eps: self.eps,
            amsgrad: self.amsgrad,
            lr_decay: self.lr_decay,
            initial_accumulator_value: self.initial_accumulator_value,
            rho: self.rho,
            alpha: self.alpha,
            centered: self.centered,
            etas: self.etas,
            step_sizes: self.step_sizes,
            decoupled_weight_decay: self.decoupled_weight_decay,
        }
    }
}
