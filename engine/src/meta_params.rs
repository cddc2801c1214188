//! The meta-parameters: θ0 and the learned inner hyperparameters, and the flat meta-vector that
//! the outer optimizer and the all-reduce see.
//!
//! The meta-vector is θ0 (flat, in the layout's order), then every learned hyperparameter
//! (flattened), in the algorithm's order. This module never prints and never touches files.

use metaloop_runtime::Params;
use tch::{Kind, Tensor};

use crate::algorithms::Learned;
use crate::Result;

/// θ0, the learned inner hyperparameters and the names the inner loop leaves alone.
pub struct MetaParams {
    /// θ0: a requires_grad leaf `[P]`.
    pub(crate) theta: Params,
    /// Learned inner hyperparameters, requires_grad leaves, in meta-vector order.
    pub(crate) learned: Vec<Learned>,
    /// Names the inner loop leaves alone (ANIL: everything but the head).
    pub(crate) frozen: Vec<String>,
    /// BatchNorm running statistics, in name order (engine::running); empty unless
    /// `eval.batchnorm = "running"`. Not part of the meta-vector: no gradient reaches them.
    pub(crate) running: crate::running::Running,
}

impl MetaParams {
    /// θ0, with PyTorch state_dict names.
    pub fn theta(&self) -> &Params {
        &self.theta
    }

    /// The learned inner hyperparameters, in meta-vector order.
    pub fn learned(&self) -> &[Learned] {
        &self.learned
    }

    /// θ0 and the learned hyperparameters, detached, as one flat vector.
    pub(crate) fn vector(&self) -> Result<Tensor> {
        let mut parts = vec![self.theta.flat().f_detach()?];
        for h in &self.learned {
            parts.push(h.tensor.f_detach()?.f_reshape([-1])?);
        }
        Ok(Tensor::f_cat(&parts, 0)?)
    }

    /// The meta-vector's length.
    pub(crate) fn len(&self) -> i64 {
        let learned: i64 = self.learned.iter().map(|h| h.tensor.numel() as i64).sum();
        self.theta.layout().numel() + learned
    }

    /// Writes a flat meta-vector back into θ0 and the learned hyperparameters.
    pub(crate) fn set_vector(&mut self, v: &Tensor) -> Result<()> {
        let p = self.theta.flat().size()[0];
        tch::no_grad(|| -> Result<()> {
            self.theta
                .flat()
                .shallow_clone()
                .f_copy_(&v.f_narrow(0, 0, p)?)?;
            let mut offset = p;
            for h in &self.learned {
                let n = h.tensor.numel() as i64;
                h.tensor.shallow_clone().f_copy_(
                    &v.f_narrow(0, offset, n)?
                        .f_view(h.tensor.size().as_slice())?,
                )?;
                offset += n;
            }
            Ok(())
        })
    }

    /// The BatchNorm running statistics (empty unless `eval.batchnorm = "running"`).
    pub fn running(&self) -> &[(String, Tensor)] {
        &self.running
    }

    /// Sets θ0 tensor by tensor, the learned hyperparameters in order and the running
    /// statistics (in [`MetaParams::running`]'s order), from tensors that already have the
    /// model's shapes, kinds and device.
    pub(crate) fn set(
        &mut self,
        theta: &[(String, Tensor)],
        learned: &[Tensor],
        running: &[Tensor],
    ) -> Result<()> {
        for ((_, r), v) in self.running.iter_mut().zip(running) {
            *r = v.f_detach()?;
        }
        for (name, t) in theta {
            self.theta.set(name, t)?;
        }
        tch::no_grad(|| -> Result<()> {
            for (h, v) in self.learned.iter().zip(learned) {
                h.tensor.shallow_clone().f_copy_(v)?;
            }
            Ok(())
        })
    }

    /// Each learned hyperparameter's mean value, by name.
    pub(crate) fn means(&self) -> Result<Vec<(String, f64)>> {
        self.learned
            .iter()
            .map(|h| {
                let mean = h.tensor.f_mean(Kind::Double)?.f_double_value(&[])?;
                Ok((h.name.clone(), mean))
            })
            .collect()
    }

    /// A checksum of the meta-vector (two weighted sums in f64).
    pub(crate) fn checksum(&self) -> Result<[f64; 2]> {
        let v = self.vector()?.f_to_kind(Kind::Double)?;
        let n = v.size()[0];
        let ramp = Tensor::f_arange(n, (Kind::Double, v.device()))?
            .f_remainder(7.0)?
            .f_add_scalar(1.0)?;
        Ok([
            v.f_sum(Kind::Double)?.f_double_value(&[])?,
            v.f_mul(&ramp)?.f_sum(Kind::Double)?.f_double_value(&[])?,
        ])
    }
}
