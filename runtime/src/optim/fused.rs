//! The one place where an optimizer step goes to a fused kernel (runtime::kernels), driven by the
//! optimizer's [`Descriptor`]: which kernel, which state buffers in which slots, which of them
//! start afresh at the first step.
//!
//! An optimizer only says what its step keeps ([`FusedPlan`]); the slots, the outputs and the new
//! state are laid out here, the same way for every optimizer. It never computes an update itself.

use super::{Buffer, HValue, OptState};
use crate::kernels::{self, Slot, StepKernel, StepParams};
use crate::Result;
use tch::Tensor;

/// What the fused path of one optimizer needs to know about it.
#[derive(Debug)]
pub(crate) struct Descriptor {
    pub kernel: StepKernel,
    /// The state buffers, in the kernel's input-slot and output order.
    pub buffers: &'static [Buffer],
    /// The buffers that start afresh at the first step (from g or from a hyperparameter), so
    /// that the kernel does not read them then.
    pub restart: &'static [Buffer],
}

/// What one fused step keeps: its constants and, per buffer of the descriptor, whether the step
/// reads and writes it (a buffer of an option that is off is neither read nor written).
#[derive(Debug)]
pub(crate) struct FusedPlan {
    pub params: StepParams,
    pub keeps: Vec<bool>,
}

impl FusedPlan {
    /// The step after `state` with every option off, keeping every buffer; the first step when
    /// `state` is before any.
    pub fn new(desc: &Descriptor, state: &OptState) -> FusedPlan {
        FusedPlan {
            params: StepParams {
                step: state.step() + 1,
                first: state.step() == 0,
                ..StepParams::default()
            },
            keeps: vec![true; desc.buffers.len()],
        }
    }

    /// The plan of an optimizer whose buffer `seeded` starts from hyperparameter `h` at the first
    /// step (flagged in the params: no step yet, or no such buffer); later steps do not read that
    /// hyperparameter, so it is passed as the constant `resolved`.
    pub fn seeded<const N: usize>(
        desc: &Descriptor,
        state: &OptState,
        seeded: Buffer,
        values: &mut [HValue; N],
        h: usize,
        resolved: f64,
    ) -> FusedPlan {
        let first = state.step() == 0 || state.get(seeded).is_none();
        if !first {
            values[h] = HValue::Const(resolved);
        }
        let mut plan = FusedPlan::new(desc, state);
        plan.params.first = first;
        plan
    }
}

impl Descriptor {
    /// One step through the fused kernel: θ' and the new state (the kept buffers, in order).
    pub fn run(
        &self,
        theta: &Tensor,
        grad: &Tensor,
        state: &OptState,
        values: &[HValue],
        plan: FusedPlan,
    ) -> Result<(Tensor, OptState)> {
        let restarts = |b: &Buffer| plan.params.first && self.restart.contains(b);
        let inputs: Vec<Option<&Tensor>> = self
            .buffers
            .iter()
            .zip(&plan.keeps)
            .map(|(b, keep)| match *keep && !restarts(b) {
                true => state.get(*b),
                false => None,
            })
            .collect();
        let kept: Vec<Buffer> = self
            .buffers
            .iter()
            .zip(&plan.keeps)
            .filter(|(_, keep)| **keep)
            .map(|(b, _)| *b)
            .collect();
        let slots: Vec<Slot<'_>> = values.iter().map(Slot::from).collect();
        let (theta, out) = kernels::fused_step(
            self.kernel,
            theta,
            grad,
            &inputs,
            &slots,
            plan.params,
            1 + kept.len(),
        )?;
        let buffers = kept.into_iter().zip(out).collect();
        Ok((theta, OptState::from_buffers(plan.params.step, buffers)))
    }
}

/// A hyperparameter value as a kernel slot.
impl<'a> From<&'a HValue> for Slot<'a> {
    fn from(v: &'a HValue) -> Slot<'a> {
        match v {
            HValue::Const(c) => Slot::Const(*c),
            HValue::Tensor(t) => Slot::Tensor(t),
        }
    }
}
