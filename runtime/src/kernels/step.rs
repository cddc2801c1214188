//! Which fused kernel a step runs ([`StepKernel`]: its state and hyperparameter slots) and what a
//! hyperparameter slot holds ([`Slot`]). Below the CPU and CUDA kernels and the dispatch.

use tch::Tensor;

/// The optimizer whose step a fused kernel computes. The inputs of a step are, in order, θ, g,
/// [`StepKernel::state_slots`] state buffers, then [`StepKernel::hparam_count`] hyperparameter
/// slots; the outputs are θ' and the new state buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepKernel {
    /// SGD with momentum, dampening, Nesterov and weight decay. State: momentum_buffer.
    /// Hyperparameters: lr, momentum, dampening, weight_decay.
    Sgd = 0,
    /// Adam and AdamW (amsgrad included). State: exp_avg, exp_avg_sq, max_exp_avg_sq.
    /// Hyperparameters: lr, beta1, beta2, eps, weight_decay.
    Adam = 1,
    /// Adamax. State: exp_avg, exp_inf. Hyperparameters: lr, beta1, beta2, eps, weight_decay.
    Adamax = 2,
    /// Adagrad. State: sum (absent at the first step). Hyperparameters: lr, lr_decay,
    /// weight_decay, initial_accumulator_value, eps.
    Adagrad = 3,
    /// RMSprop, plain or centered, with or without momentum. State: square_avg,
    /// momentum_buffer, grad_avg. Hyperparameters: lr, alpha, eps, weight_decay, momentum.
    RMSprop = 4,
    /// Adadelta. State: square_avg, acc_delta. Hyperparameters: lr, rho, eps, weight_decay.
    Adadelta = 5,
    /// Rprop. State: prev, step_size (absent at the first step). Hyperparameters: lr,
    /// eta_minus, eta_plus, step_size_min, step_size_max.
    Rprop = 6,
}

impl StepKernel {
    /// Every kernel, for tests and benchmarks.
    pub const ALL: [StepKernel; 7] = [
        StepKernel::Sgd,
        StepKernel::Adam,
        StepKernel::Adamax,
        StepKernel::Adagrad,
        StepKernel::RMSprop,
        StepKernel::Adadelta,
        StepKernel::Rprop,
    ];

    /// The name runtime::optim gives the optimizer.
    pub fn name(self) -> &'static str {
        match self {
            StepKernel::Sgd => "SGD",
            StepKernel::Adam => "Adam",
            StepKernel::Adamax => "Adamax",
            StepKernel::Adagrad => "Adagrad",
            StepKernel::RMSprop => "RMSprop",
            StepKernel::Adadelta => "Adadelta",
            StepKernel::Rprop => "Rprop",
        }
    }

    /// The number of state-buffer input slots (a slot may be absent).
    pub const fn state_slots(self) -> usize {
        match self {
            StepKernel::Sgd | StepKernel::Adagrad => 1,
            StepKernel::Adamax | StepKernel::Adadelta | StepKernel::Rprop => 2,
            StepKernel::Adam | StepKernel::RMSprop => 3,
        }
    }

    /// The number of hyperparameter slots.
    pub const fn hparam_count(self) -> usize {
        match self {
            StepKernel::Sgd | StepKernel::Adadelta => 4,
            StepKernel::Adam
            | StepKernel::Adamax
            | StepKernel::Adagrad
            | StepKernel::RMSprop
            | StepKernel::Rprop => 5,
        }
    }

    /// The hyperparameter index of the weight decay, if the optimizer has one.
    pub(super) fn weight_decay(self) -> Option<usize> {
        match self {
            StepKernel::Sgd | StepKernel::RMSprop | StepKernel::Adadelta => Some(3),
            StepKernel::Adam | StepKernel::Adamax => Some(4),
            StepKernel::Adagrad => Some(2),
            StepKernel::Rprop => None,
        }
    }

    /// True when ∂θ = ∂θ' for these hyperparameters: without weight decay θ' = θ − (terms without
    /// θ), so the shim hands the output gradient through instead of having the kernel copy it.
    pub(super) fn theta_grad_passes(self, hparams: &[Slot<'_>]) -> bool {
        match self.weight_decay() {
            None => true,
            Some(h) => matches!(hparams[h], Slot::Const(c) if c == 0.0),
        }
    }

    /// The input slot of the first hyperparameter.
    pub(crate) fn hparam_slot(self) -> usize {
        2 + self.state_slots()
    }

    pub(super) fn from_code(op: i32) -> Option<StepKernel> {
        StepKernel::ALL.into_iter().find(|k| *k as i32 == op)
    }
}

/// A hyperparameter slot of a fused step: a constant (passed as a double) or a tensor of shape
/// `[]`/`[1]` or broadcastable to θ (`[P]`, `[T, 1]`, `[T, P]`), whose gradient is a hypergradient.
#[derive(Debug)]
pub enum Slot<'a> {
    Const(f64),
    Tensor(&'a Tensor),
}
