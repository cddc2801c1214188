//! 2-D convolution and max pooling, single-task or task-batched. Task-batched convolution picks a
//! kernel per device (see [`ConvTasks`]). It must not own weights: they come from each call's
//! `Params`.

use tch::Tensor;

use super::shared::{check_maps, join_tasks, maybe_channels_last, pool2d, split_tasks, ConvTasks};
use super::{Module, ParamDef, Scope};
use crate::params::Init;
use crate::Result;

/// PyTorch's `nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)` with a square
/// kernel: parameters "weight" `[out, in, k, k]` and "bias" `[out]`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    in_channels: i64,
    out_channels: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
    bias: bool,
    tasks: ConvTasks,
}

crate::setters!(Conv2d {
    /// The step between windows (default 1).
    stride: i64,
    /// Zero padding on each side (default 0).
    padding: i64,
});

impl Conv2d {
    pub fn new(in_channels: i64, out_channels: i64, kernel: i64) -> Conv2d {
        Conv2d {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            padding: 0,
            bias: true,
            tasks: ConvTasks::Auto,
        }
    }

    /// Without the bias (parameter "weight" only).
    pub fn no_bias(mut self) -> Conv2d {
        self.bias = false;
        self
    }

    /// Chooses how task-batched calls run (default [`ConvTasks::Auto`]).
    pub fn task_batching(mut self, how: ConvTasks) -> Conv2d {
        self.tasks = how;
        self
    }

    pub(super) fn conv(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        groups: i64,
    ) -> Result<Tensor> {
        let (s, p) = (self.stride, self.padding);
        // In bf16 precision the convolution runs in bf16 (runtime::precision).
        crate::precision::with_compute_kind(x, weight, bias, |x, w, b| {
            Ok(x.f_conv2d(w, b, [s, s], [p, p], [1, 1], groups)?)
        })
    }
}

impl Conv2d {
    /// Task-batched convolution as batched matrix products ([`ConvTasks::Gemm`]): each task's
    /// `[B, C, H, W]` input unfolded to `[B, C·k·k, L]` columns (im2col), multiplied by its own
    /// `[O, C·k·k]` weights in one batched product over the tasks, plus the bias. im2col and its
    /// adjoint col2im are linear, so every order of derivative goes through.
    fn gemm(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        tasks: i64,
        per_task: &[i64],
    ) -> Result<Tensor> {
        let (batch, c, h, w) = (per_task[0], per_task[1], per_task[2], per_task[3]);
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let o = self.out_channels;
        crate::precision::with_compute_kind(x, weight, bias, |x, weight, bias| {
            let cols = x
                .f_reshape([tasks * batch, c, h, w])?
                .f_im2col([k, k], [1, 1], [p, p], [s, s])?
                .f_reshape([tasks, batch, c * k * k, ho * wo])?;
            let wm = weight.f_reshape([tasks, 1, o, c * k * k])?;
            let mut y = wm.f_matmul(&cols)?;
            if let Some(b) = bias {
                y = y.f_add(&b.f_reshape([tasks, 1, o, 1])?)?;
            }
            Ok(y.f_reshape([tasks, batch, o, ho, wo])?)
        })
    }
}

impl Module for Conv2d {
    fn param_defs(&self) -> Vec<ParamDef> {
        let fan_in = self.in_channels * self.kernel * self.kernel;
        let bound = if fan_in > 0 {
            1.0 / (fan_in as f64).sqrt()
        } else {
            0.0
        };
        let k = self.kernel;
        let mut defs = vec![ParamDef::new(
            "weight",
            &[self.out_channels, self.in_channels, k, k],
            Init::Uniform { bound },
        )];
        if self.bias {
            defs.push(ParamDef::new(
                "bias",
                &[self.out_channels],
                Init::Uniform { bound },
            ));
        }
        defs
    }

    /// `[B, C, H, W] -> [B, O, H', W']`; task-batched: `[T, B, C, H, W] -> [T, B, O, H', W']`.
    fn forward_scoped(&self, scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        let per_task = check_maps(scope, "Conv2d", x, self.in_channels)?;
        let weight = scope.param("weight")?;
        let bias = if self.bias {
            Some(scope.param("bias")?)
        } else {
            None
        };
        let Some(tasks) = scope.tasks() else {
            return self.conv(x, &weight, bias.as_ref(), 1);
        };
        if self.tasks.per_task(x) {
            // One convolution per task on views of x (split and unbind: their backward is one
            // concatenation, where a `select` per task would zero-fill a whole [T, ...] gradient
            // each), written back with one concatenation. Channels-last (NHWC) throughout:
            // oneDNN's convolutions run on it directly, and libtorch's CPU max-pool and
            // batch-norm kernels vectorize over channels in it (libtorch's NCHW max-pool is much
            // slower on the omniglot workload's maps, benches/README.md); the layers after this one keep
            // the layout their input has.
            let batch = per_task[0];
            let (xs, ws, bs) = split_tasks(x, &weight, bias.as_ref(), tasks, batch)?;
            let mut outs = Vec::with_capacity(tasks as usize);
            for ((xt, wt), bt) in xs.iter().zip(&ws).zip(&bs) {
                outs.push(self.conv(xt, wt, bt.as_ref(), 1)?);
            }
            return join_tasks(&outs, tasks, batch);
        }
        if self.tasks.gemm() {
            return self.gemm(x, &weight, bias.as_ref(), tasks, &per_task);
        }
        // Tasks folded into channels: [T, B, C, H, W] -> [B, T·C, H, W], weights [T·O, C, k, k].
        let (batch, c, h, w) = (per_task[0], per_task[1], per_task[2], per_task[3]);
        let k = self.kernel;
        let xg = maybe_channels_last(x.f_transpose(0, 1)?.f_reshape([batch, tasks * c, h, w])?)?;
        let wg = maybe_channels_last(weight.f_reshape([tasks * self.out_channels, c, k, k])?)?;
        let bg = match &bias {
            Some(b) => Some(b.f_reshape([tasks * self.out_channels])?),
            None => None,
        };
        let y = self.conv(&xg, &wg, bg.as_ref(), tasks)?;
        let (ho, wo) = (y.size()[2], y.size()[3]);
        Ok(y.f_reshape([batch, tasks, self.out_channels, ho, wo])?
            .f_transpose(0, 1)?)
    }
}

/// PyTorch's `nn.MaxPool2d(kernel_size)` (stride = kernel size unless set, no padding).
#[derive(Clone, Debug)]
pub struct MaxPool2d {
    kernel: i64,
    stride: i64,
}

impl MaxPool2d {
    pub fn new(kernel: i64) -> MaxPool2d {
        MaxPool2d {
            kernel,
            stride: kernel,
        }
    }
}

crate::setters!(MaxPool2d {
    /// The step between windows (default: the kernel size).
    stride: i64,
});

impl Module for MaxPool2d {
    fn param_defs(&self) -> Vec<ParamDef> {
        Vec::new()
    }

    /// `[B, C, H, W] -> [B, C, H', W']`; task-batched: tasks folded into the batch.
    fn forward_scoped(&self, scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        let (k, s) = (self.kernel, self.stride);
        pool2d(scope, "MaxPool2d", x, |x| {
            x.f_max_pool2d([k, k], [s, s], [0, 0], [1, 1], false)
        })
    }
}
