//! Fully connected layer, `y = x Wᵀ + b`, single-task or task-batched (batched matmul).
//! It must not own weights: they come from the `Params` of each call.

use tch::Tensor;

use super::{Module, ParamDef, Scope};
use crate::params::Init;
use crate::{Error, Result};

/// PyTorch's `nn.Linear(in_features, out_features, bias)`: parameters "weight"
/// `[out_features, in_features]` and "bias" `[out_features]`.
#[derive(Clone, Debug)]
pub struct Linear {
    in_features: i64,
    out_features: i64,
    bias: bool,
}

impl Linear {
    pub fn new(in_features: i64, out_features: i64) -> Linear {
        Linear {
            in_features,
            out_features,
            bias: true,
        }
    }

    /// Without the bias (parameter "weight" only).
    pub fn no_bias(mut self) -> Linear {
        self.bias = false;
        self
    }
}

impl Module for Linear {
    fn param_defs(&self) -> Vec<ParamDef> {
        // kaiming_uniform_(a = sqrt(5)) and the bias's uniform both have bound 1 / sqrt(fan_in).
        let bound = if self.in_features > 0 {
            1.0 / (self.in_features as f64).sqrt()
        } else {
            0.0
        };
        let mut defs = vec![ParamDef::new(
            "weight",
            &[self.out_features, self.in_features],
            Init::Uniform { bound },
        )];
        if self.bias {
            defs.push(ParamDef::new(
                "bias",
                &[self.out_features],
                Init::Uniform { bound },
            ));
        }
        defs
    }

    /// `[..., in] -> [..., out]`; task-batched: `[T, ..., in] -> [T, ..., out]`.
    fn forward_scoped(&self, scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        let min_dims = if scope.tasks().is_some() { 2 } else { 1 };
        if size.len() < min_dims || size.last() != Some(&self.in_features) {
            return Err(Error::Shape {
                op: "Linear",
                expected: format!("[..., {}]", self.in_features),
                got: size,
            });
        }
        let weight = scope.param("weight")?;
        let bias = if self.bias {
            Some(scope.param("bias")?)
        } else {
            None
        };
        // In bf16 precision the product runs in bf16 (runtime::precision).
        let tasks = scope.tasks();
        crate::precision::with_compute_kind(x, &weight, bias.as_ref(), |x, w, b| {
            self.product(x, w, b, tasks)
        })
    }
}

impl Linear {
    /// `x Wᵀ + b`, one batched matmul over the tasks when task-batched.
    fn product(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        tasks: Option<i64>,
    ) -> Result<Tensor> {
        let size = x.size();
        let Some(tasks) = tasks else {
            return Ok(x.f_linear(weight, bias)?);
        };
        if size[0] != tasks {
            return Err(Error::Shape {
                op: "Linear",
                expected: format!("[{tasks} (tasks), ..., {}]", self.in_features),
                got: size,
            });
        }
        // One batched matmul for all tasks: [T, N, in] x [T, in, out] (+ [T, 1, out]).
        let x3 = x.f_reshape([tasks, -1, self.in_features])?;
        let weight_t = weight.f_transpose(1, 2)?;
        let y = match bias {
            // One input feature (the sinusoid regressor's first layer): an outer product, as
            // one broadcast multiply-add instead of T matrix products of inner size 1.
            Some(b) if self.in_features == 1 => b.f_unsqueeze(1)?.f_addcmul(&x3, &weight_t)?,
            Some(b) => b.f_unsqueeze(1)?.f_baddbmm(&x3, &weight_t, 1.0, 1.0)?,
            None => x3.f_bmm(&weight_t)?,
        };
        let mut out_shape = size;
        if let Some(last) = out_shape.last_mut() {
            *last = self.out_features;
        }
        Ok(y.f_reshape(out_shape.as_slice())?)
    }
}
