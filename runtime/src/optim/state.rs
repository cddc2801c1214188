//! An optimizer's state: the step count and named buffers shaped like θ (exp_avg, ...).
//!
//! It only holds tensors; it never computes an update and never copies tensor data (clones are
//! shallow).

use crate::Result;
use tch::Tensor;

/// The state between two optimizer steps: the number of steps taken and torch.optim's named
/// buffers (`momentum_buffer`, `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`, `sum`, `square_avg`,
/// `grad_avg`, `acc_delta`, `exp_inf`, `prev`, `step_size`), each shaped like θ.
#[derive(Debug)]
pub struct OptState {
    step: i64,
    tensors: Vec<(String, Tensor)>,
}

impl Clone for OptState {
    /// A shallow copy: the tensors share storage and autograd history with the original.
    fn clone(&self) -> Self {
        OptState {
            step: self.step,
            tensors: self
                .tensors
                .iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect(),
        }
    }
}

impl OptState {
    /// A state after `step` steps with the given buffers (e.g. read back from a checkpoint).
    pub fn new(step: i64, tensors: Vec<(String, Tensor)>) -> OptState {
        OptState { step, tensors }
    }

    /// The state before the first step: a zero buffer shaped like `theta` (detached) per name.
    pub fn zeros(theta: &Tensor, names: &[&str]) -> Result<OptState> {
        let tensors = names
            .iter()
            .map(|n| Ok((n.to_string(), theta.f_zeros_like()?.f_detach()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(OptState::new(0, tensors))
    }

    /// The number of steps taken (torch's `state["step"]`).
    pub fn step(&self) -> i64 {
        self.step
    }

    /// The buffer called `name`, if the state has one.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The buffers in a fixed order, for checkpointing and recomputation.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// The number of buffers.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when the optimizer keeps no buffers (plain SGD).
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The same state with every buffer cut from the autograd graph (first-order steps).
    pub fn detach(&self) -> Result<OptState> {
        self.map(|t| Ok(t.f_detach()?))
    }

    /// The same step count with `f` applied to every buffer (moving devices, casting, ...).
    pub fn map(&self, mut f: impl FnMut(&Tensor) -> Result<Tensor>) -> Result<OptState> {
        let mut tensors = Vec::with_capacity(self.tensors.len());
        for (n, t) in &self.tensors {
            tensors.push((n.clone(), f(t)?));
        }
        Ok(OptState {
            step: self.step,
            tensors,
        })
    }
}
