//! An optimizer's state: the step count and its buffers shaped like θ (exp_avg, ...), each named
//! by a [`Buffer`], so that a misspelt buffer name cannot compile.
//!
//! It only holds tensors; it never computes an update and never copies tensor data (clones are
//! shallow).

use crate::{Error, Result};
use tch::Tensor;

/// A state buffer of torch.optim, by its name in torch's `optimizer.state` (and in checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Buffer {
    /// SGD, RMSprop.
    MomentumBuffer,
    /// Adam, AdamW, Adamax: the first moment.
    ExpAvg,
    /// Adam, AdamW: the second moment.
    ExpAvgSq,
    /// Adam, AdamW with amsgrad: the running maximum of the second moment.
    MaxExpAvgSq,
    /// Adamax: the exponentially weighted infinity norm.
    ExpInf,
    /// Adagrad: the sum of squared gradients.
    Sum,
    /// RMSprop, Adadelta: the running average of squared gradients.
    SquareAvg,
    /// RMSprop centered: the running average of gradients.
    GradAvg,
    /// Adadelta: the running average of squared updates.
    AccDelta,
    /// Rprop: the previous gradient.
    Prev,
    /// Rprop: the per-element step sizes.
    StepSize,
}

impl Buffer {
    /// Every buffer.
    pub const ALL: [Buffer; 11] = [
        Buffer::MomentumBuffer,
        Buffer::ExpAvg,
        Buffer::ExpAvgSq,
        Buffer::MaxExpAvgSq,
        Buffer::ExpInf,
        Buffer::Sum,
        Buffer::SquareAvg,
        Buffer::GradAvg,
        Buffer::AccDelta,
        Buffer::Prev,
        Buffer::StepSize,
    ];

    /// torch's name of the buffer.
    pub fn name(self) -> &'static str {
        match self {
            Buffer::MomentumBuffer => "momentum_buffer",
            Buffer::ExpAvg => "exp_avg",
            Buffer::ExpAvgSq => "exp_avg_sq",
            Buffer::MaxExpAvgSq => "max_exp_avg_sq",
            Buffer::ExpInf => "exp_inf",
            Buffer::Sum => "sum",
            Buffer::SquareAvg => "square_avg",
            Buffer::GradAvg => "grad_avg",
            Buffer::AccDelta => "acc_delta",
            Buffer::Prev => "prev",
            Buffer::StepSize => "step_size",
        }
    }

    /// The buffer torch calls `name`.
    pub fn from_name(name: &str) -> Option<Buffer> {
        Buffer::ALL.into_iter().find(|b| b.name() == name)
    }
}

impl std::fmt::Display for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The state between two optimizer steps: the number of steps taken and the buffers, each shaped
/// like θ, in the optimizer's order.
#[derive(Debug)]
pub struct OptState {
    step: i64,
    buffers: Vec<(Buffer, Tensor)>,
    /// Names given to [`OptState::new`] that are no buffer; the next update reports them.
    unknown: Vec<String>,
}

impl Clone for OptState {
    /// A shallow copy: the tensors share storage and autograd history with the original.
    fn clone(&self) -> Self {
        OptState {
            step: self.step,
            buffers: self
                .buffers
                .iter()
                .map(|(b, t)| (*b, t.shallow_clone()))
                .collect(),
            unknown: self.unknown.clone(),
        }
    }
}

impl OptState {
    /// A state after `step` steps with buffers named as torch names them (e.g. read back from a
    /// checkpoint, whose names [`OptState::tensors`] gave). A name that is no buffer of torch's
    /// is not dropped silently: the next `update` fails with [`Error::OptState`].
    pub fn new(step: i64, tensors: Vec<(String, Tensor)>) -> OptState {
        let mut buffers = Vec::with_capacity(tensors.len());
        let mut unknown = Vec::new();
        for (name, t) in tensors {
            match Buffer::from_name(&name) {
                Some(b) => buffers.push((b, t)),
                None => unknown.push(name),
            }
        }
        OptState {
            step,
            buffers,
            unknown,
        }
    }

    /// A state after `step` steps with the given buffers.
    pub fn from_buffers(step: i64, buffers: Vec<(Buffer, Tensor)>) -> OptState {
        OptState {
            step,
            buffers,
            unknown: Vec::new(),
        }
    }

    /// The state before the first step: a zero buffer shaped like `theta` (detached) per buffer.
    pub fn zeros(theta: &Tensor, buffers: &[Buffer]) -> Result<OptState> {
        let buffers = buffers
            .iter()
            .map(|b| Ok((*b, theta.f_zeros_like()?.f_detach()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(OptState::from_buffers(0, buffers))
    }

    /// The number of steps taken (torch's `state["step"]`).
    pub fn step(&self) -> i64 {
        self.step
    }

    /// The buffer `b`, if the state has it.
    pub fn get(&self, b: Buffer) -> Option<&Tensor> {
        self.buffers.iter().find(|(n, _)| *n == b).map(|(_, t)| t)
    }

    /// The buffers with torch's names, in a fixed order, for checkpointing and recomputation.
    pub fn tensors(&self) -> impl Iterator<Item = (&'static str, &Tensor)> {
        self.buffers.iter().map(|(b, t)| (b.name(), t))
    }

    /// The buffers in a fixed order.
    pub fn buffers(&self) -> impl Iterator<Item = (Buffer, &Tensor)> {
        self.buffers.iter().map(|(b, t)| (*b, t))
    }

    /// The number of buffers.
    pub fn len(&self) -> usize {
        self.buffers.len()
    }

    /// True when the optimizer keeps no buffers (plain SGD).
    pub fn is_empty(&self) -> bool {
        self.buffers.is_empty()
    }

    /// The same state with every buffer cut from the autograd graph (first-order steps).
    pub fn detach(&self) -> Result<OptState> {
        self.map(|t| Ok(t.f_detach()?))
    }

    /// The same step count with `f` applied to every buffer (moving devices, casting, ...).
    pub fn map(&self, mut f: impl FnMut(&Tensor) -> Result<Tensor>) -> Result<OptState> {
        let mut buffers = Vec::with_capacity(self.buffers.len());
        for (b, t) in &self.buffers {
            buffers.push((*b, f(t)?));
        }
        Ok(OptState {
            step: self.step,
            buffers,
            unknown: self.unknown.clone(),
        })
    }

    /// Buffer `b`, or zeros shaped like `theta` when the state lacks it: torch's buffers start
    /// at zero, and one that the builder's options did not call for may be needed by an
    /// override (e.g. a momentum override tensor).
    pub(crate) fn or_zeros(&self, b: Buffer, theta: &Tensor) -> Result<Tensor> {
        match self.get(b) {
            Some(t) => Ok(t.shallow_clone()),
            None => Ok(theta.f_zeros_like()?.f_detach()?),
        }
    }

    /// Errors unless every buffer is one of `buffers`, those of the optimizer torch calls
    /// `optimizer`, and every name was known.
    pub(crate) fn check(&self, optimizer: &'static str, buffers: &[Buffer]) -> Result<()> {
        let foreign = self.unknown.first().cloned().or_else(|| {
            self.buffers
                .iter()
                .find(|(b, _)| !buffers.contains(b))
                .map(|(b, _)| b.name().to_string())
        });
        match foreign {
            None => Ok(()),
            Some(name) => Err(Error::OptState {
                optimizer,
                name,
                allowed: buffers
                    .iter()
                    .map(|b| b.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}
