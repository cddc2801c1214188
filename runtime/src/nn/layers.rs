//! Parameter-free activations, flattening and pooling (ReLU, Tanh, Flatten, LeakyReLU, average
//! and adaptive average pooling) and LayerNorm, single-task or task-batched. Pooling folds the
//! tasks into the batch (one kernel for all tasks); LayerNorm normalises each example on its own
//! and applies each task's affine parameters by broadcasting. Nothing here owns weights: they
//! come from each call's `Params`.

use tch::Tensor;

use super::shared::pool2d;
use super::{Module, ParamDef, Scope};
use crate::params::Init;
use crate::{Error, Result};

/// PyTorch's `nn.LeakyReLU(negative_slope)`: `x` where `x > 0`, else `negative_slope · x`
/// (the gradient at 0 is `negative_slope`, as PyTorch's).
#[derive(Clone, Copy, Debug)]
pub struct LeakyRelu {
    slope: f64,
}

impl LeakyRelu {
    pub fn new(negative_slope: f64) -> LeakyRelu {
        LeakyRelu {
            slope: negative_slope,
        }
    }

    /// The activation of `x`, for modules that apply it inside their own forward.
    pub(super) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_where_self(&x.f_gt(0.0)?, &x.f_mul_scalar(self.slope)?)?)
    }
}

impl Default for LeakyRelu {
    /// PyTorch's default slope, 0.01.
    fn default() -> LeakyRelu {
        LeakyRelu::new(0.01)
    }
}

impl Module for LeakyRelu {
    fn param_defs(&self) -> Vec<ParamDef> {
        Vec::new()
    }
    fn forward_scoped(&self, _scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        self.apply(x)
    }
}

/// PyTorch's `nn.AvgPool2d(kernel_size, stride, padding)` with a square window
/// (`count_include_pad=True`, `ceil_mode=False`, PyTorch's defaults); stride = kernel unless set.
#[derive(Clone, Copy, Debug)]
pub struct AvgPool2d {
    kernel: i64,
    stride: i64,
    padding: i64,
}

impl AvgPool2d {
    pub fn new(kernel: i64) -> AvgPool2d {
        AvgPool2d {
            kernel,
            stride: kernel,
            padding: 0,
        }
    }
}

crate::setters!(AvgPool2d {
    /// The step between windows (default: the kernel size).
    stride: i64,
    /// Zero padding on each side (counted in the average, as PyTorch's default).
    padding: i64,
});

impl Module for AvgPool2d {
    fn param_defs(&self) -> Vec<ParamDef> {
        Vec::new()
    }

    /// `[B, C, H, W] -> [B, C, H', W']`; task-batched: tasks folded into the batch.
    fn forward_scoped(&self, scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        pool2d(scope, "AvgPool2d", x, |x| {
            x.f_avg_pool2d([k, k], [s, s], [p, p], false, true, None)
        })
    }
}

/// PyTorch's `nn.AdaptiveAvgPool2d((height, width))`; `new(1)` is global average pooling.
#[derive(Clone, Copy, Debug)]
pub struct AdaptiveAvgPool2d {
    height: i64,
    width: i64,
}

impl AdaptiveAvgPool2d {
    /// A square `size`×`size` output.
    pub fn new(size: i64) -> AdaptiveAvgPool2d {
        AdaptiveAvgPool2d {
            height: size,
            width: size,
        }
    }

    /// A `height`×`width` output.
    pub fn sized(height: i64, width: i64) -> AdaptiveAvgPool2d {
        AdaptiveAvgPool2d { height, width }
    }
}

impl Module for AdaptiveAvgPool2d {
    fn param_defs(&self) -> Vec<ParamDef> {
        Vec::new()
    }

    /// `[B, C, H, W] -> [B, C, height, width]`; task-batched: tasks folded into the batch.
    fn forward_scoped(&self, scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        let size = [self.height, self.width];
        pool2d(scope, "AdaptiveAvgPool2d", x, |x| {
            x.f_adaptive_avg_pool2d(size)
        })
    }
}

/// PyTorch's `nn.LayerNorm(normalized_shape, eps, elementwise_affine)`: each example is
/// normalised over its last `normalized_shape.len()` dimensions (biased variance); with the affine
/// part (the default), parameters "weight" (init 1) and "bias" (init 0) of `normalized_shape`.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    shape: Vec<i64>,
    eps: f64,
    affine: bool,
}

crate::setters!(LayerNorm {
    /// Added to the variance (default 1e-5).
    eps: f64,
});

impl LayerNorm {
    pub fn new(normalized_shape: &[i64]) -> LayerNorm {
        LayerNorm {
            shape: normalized_shape.to_vec(),
            eps: 1e-5,
            affine: true,
        }
    }

    /// Without the affine parameters.
    pub fn no_affine(mut self) -> LayerNorm {
        self.affine = false;
        self
    }
}

impl Module for LayerNorm {
    fn param_defs(&self) -> Vec<ParamDef> {
        if !self.affine {
            return Vec::new();
        }
        vec![
            ParamDef::new("weight", &self.shape, Init::Constant(1.0)),
            ParamDef::new("bias", &self.shape, Init::Constant(0.0)),
        ]
    }

    /// `[..., *normalized_shape]`; task-batched: `[T, ..., *normalized_shape]`, each task with its
    /// own weight and bias.
    fn forward_scoped(&self, scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        let lead = if scope.tasks().is_some() { 1 } else { 0 };
        let n = self.shape.len();
        if size.len() < n + lead || size[size.len() - n..] != self.shape[..] {
            return Err(Error::Shape {
                op: "LayerNorm",
                expected: format!("[..., {}]", join(&self.shape)),
                got: size,
            });
        }
        let shape = self.shape.as_slice();
        let Some(tasks) = scope.tasks() else {
            let (w, b) = self.affine_params(scope)?;
            return Ok(x.f_layer_norm(shape, w.as_ref(), b.as_ref(), self.eps, true)?);
        };
        if size[0] != tasks {
            return Err(Error::Shape {
                op: "LayerNorm",
                expected: format!("[{tasks} (tasks), ..., {}]", join(&self.shape)),
                got: size,
            });
        }
        let y = x.f_layer_norm(shape, None::<Tensor>, None::<Tensor>, self.eps, true)?;
        let (Some(w), Some(b)) = self.affine_params(scope)? else {
            return Ok(y);
        };
        // [T, *shape] -> [T, 1, ..., 1, *shape], broadcast over the example dimensions.
        let mut bshape = vec![tasks];
        bshape.extend(std::iter::repeat_n(1, size.len() - n - 1));
        bshape.extend_from_slice(shape);
        let w = w.f_reshape(bshape.as_slice())?;
        let b = b.f_reshape(bshape.as_slice())?;
        Ok(y.f_mul(&w)?.f_add(&b)?)
    }
}

impl LayerNorm {
    fn affine_params(&self, scope: &mut Scope<'_>) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !self.affine {
            return Ok((None, None));
        }
        Ok((Some(scope.param("weight")?), Some(scope.param("bias")?)))
    }
}

fn join(shape: &[i64]) -> String {
    shape
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rectified linear unit (no parameters).
#[derive(Clone, Copy, Debug, Default)]
pub struct Relu;

impl Module for Relu {
    fn param_defs(&self) -> Vec<ParamDef> {
        Vec::new()
    }
    fn forward_scoped(&self, _scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_relu()?)
    }
}

/// Hyperbolic tangent (no parameters).
#[derive(Clone, Copy, Debug, Default)]
pub struct Tanh;

impl Module for Tanh {
    fn param_defs(&self) -> Vec<ParamDef> {
        Vec::new()
    }
    fn forward_scoped(&self, _scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_tanh()?)
    }
}

/// Flattens every dimension after the batch one: `[B, ...] -> [B, F]`, `[T, B, ...] -> [T, B, F]`
/// (PyTorch's `nn.Flatten()`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Flatten;

impl Module for Flatten {
    fn param_defs(&self) -> Vec<ParamDef> {
        Vec::new()
    }
    fn forward_scoped(&self, scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        let start = if scope.tasks().is_some() { 2 } else { 1 };
        if (x.dim() as i64) <= start {
            return Err(Error::Shape {
                op: "Flatten",
                expected: if start == 2 {
                    "[tasks, batch, d, ...]"
                } else {
                    "[batch, d, ...]"
                }
                .to_string(),
                got: x.size(),
            });
        }
        Ok(x.f_flatten(start, -1)?)
    }
}
