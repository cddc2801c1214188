//! `[algorithm]`: the meta-learning algorithm, its inner loop, and the options of MAML++ and
//! iMAML (engine::algorithms reads them; config/validate.rs checks them).

use serde::{Deserialize, Serialize};

use super::{d, AlgorithmName, Memory, OptimizerName, OptimizerOptions};

/// The meta-learning algorithm and its inner loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlgorithmConfig {
    /// The algorithm; each lives in `engine::algorithms`. "pretrain" is the baseline: θ trained
    /// jointly on all tasks' data, with no inner loop, and fine-tuned like the others at test
    /// time. "lslr" is MAML with MAML++'s learned per-layer, per-step inner learning rates.
    /// "imaml" is implicit MAML (Rajeswaran et al. 2019): a proximal inner loop that keeps no
    /// graph, and a meta-gradient by conjugate gradient at its solution.
    #[serde(default = "d::maml")]
    pub name: AlgorithmName,
    /// Inner steps during meta-training.
    /// Allowed: 1 to 2^24.
    #[serde(default = "d::usize_::<1>")]
    pub inner_steps: usize,
    /// Inner learning rate (the initial value when learned).
    /// Allowed: a finite number > 0.
    #[serde(default = "d::inner_lr")]
    pub inner_lr: f64,
    /// Inner momentum of sgd and rmsprop (the initial value when learned).
    /// Allowed: [0, 1).
    #[serde(default)]
    pub inner_momentum: f64,
    /// The inner optimizer of every algorithm's support steps, meta-test included (a
    /// differentiable runtime::optim optimizer, as torch.optim's class of that name). Its rate is
    /// `inner_lr`; sgd's and rmsprop's momentum is `inner_momentum`. Not hashed at "sgd".
    /// Allowed: learn_momentum and a non-zero inner_momentum need "sgd" or "rmsprop".
    #[serde(default = "d::sgd", skip_serializing_if = "OptimizerName::is_sgd")]
    pub inner_optimizer: OptimizerName,
    /// The inner optimizer's other options under torch.optim's names, as `[outer]` takes them;
    /// one left out takes torch's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_options: Option<OptimizerOptions>,
    /// Meta-learn the inner lr (one per parameter tensor) as in higher's toy example. Meta-SGD
    /// learns one per element instead.
    /// Allowed: false for "metasgd", "lslr", "reptile", "fomaml" and "pretrain".
    #[serde(default)]
    pub learn_lr: bool,
    /// Meta-learn the inner momentum (one per parameter tensor).
    /// Allowed: false for "reptile", "fomaml" and "pretrain".
    #[serde(default)]
    pub learn_momentum: bool,
    /// MAML++'s multi-step loss: the query loss after every inner step, weighted (with either
    /// memory mode).
    /// Allowed: false for "reptile", "fomaml" and "pretrain".
    #[serde(default)]
    pub multi_step_loss: bool,
    /// How second-order meta-gradients keep the unroll. "full" keeps every step's graph, as
    /// higher. "recompute" keeps only the parameter and optimizer-state trajectory and rebuilds
    /// each step's graph in the backward pass: memory independent of activations × steps, about
    /// 1.5× the compute.
    /// Allowed: "recompute" with "maml", "metasgd" and "anil" only.
    #[serde(default = "d::full")]
    pub memory: Memory,
    /// With "recompute": keep θ and the optimizer state every this many inner steps and
    /// recompute the steps between (0 = ceil(sqrt(inner_steps))).
    /// Allowed: 0 to 2^24.
    #[serde(default)]
    pub checkpoint_interval: usize,
    /// Clip each task's inner gradient to this L2 norm at every inner step, inside the
    /// differentiable step, as torch.nn.utils.clip_grad_norm_ over that task's parameters
    /// (0 = off). metrics.jsonl counts the clips (`inner_clips`, docs/run-directory.md).
    /// Allowed: a finite number >= 0; 0 with "recompute".
    #[serde(default)]
    pub inner_clip_grad_norm: f64,
    /// MAML++'s derivative-order annealing (Antoniou et al. 2019): the first this many outer
    /// iterations use first-order meta-gradients (as "fomaml": learned hyperparameters get
    /// none), the later ones second order (0 = second order throughout).
    /// Allowed: 0 with "fomaml", "reptile", "pretrain" and "imaml".
    #[serde(default)]
    pub first_order_until: u64,
    /// "imaml": the proximal regulariser λ of the inner objective, support loss +
    /// λ/2 ‖φ − θ0‖², also at evaluation.
    /// Allowed: a finite number > 0.
    #[serde(default = "d::imaml_lambda")]
    pub imaml_lambda: f64,
    /// "imaml": conjugate-gradient iterations that solve (I + H/λ) v = ∇φ L_query per task.
    /// Allowed: 1 to 2^24.
    #[serde(default = "d::usize_::<5>")]
    pub cg_steps: usize,
    /// "imaml": Tikhonov damping d of the solved system, ((1 + d) I + H/λ) v = ∇φ L_query. It
    /// keeps the system positive definite where the support loss has negative curvature
    /// (0 = the exact system).
    /// Allowed: a finite number >= 0.
    #[serde(default)]
    pub cg_damping: f64,
}

impl AlgorithmConfig {
    /// The proximal regulariser λ of the inner objective (support loss + λ/2 ‖φ − θ0‖²):
    /// `imaml_lambda` for "imaml", none for the other algorithms.
    pub fn proximal(&self) -> Option<f64> {
        (self.name == AlgorithmName::Imaml).then_some(self.imaml_lambda)
    }

    /// True when outer iteration `iteration` (0-based) uses first-order meta-gradients under
    /// `first_order_until` (MAML++'s derivative-order annealing).
    pub fn first_order_at(&self, iteration: u64) -> bool {
        iteration < self.first_order_until
    }

    /// The recompute mode's checkpoint interval: `algorithm.checkpoint_interval`, or
    /// ceil(sqrt(inner_steps)) when 0 (the interval that balances stored and recomputed steps).
    pub fn checkpoint_interval(&self) -> usize {
        match self.checkpoint_interval {
            0 => (1..).find(|k| k * k >= self.inner_steps).unwrap_or(1),
            k => k,
        }
    }
}
