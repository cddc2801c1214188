//! MAML's convolutional block as one module: 3×3 convolution (padding 1) -> BatchNorm2d -> ReLU
//! -> MaxPool2d(2), with the parameter and statistics names of the PyTorch block
//! `nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))`
//! ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var").
//!
//! Why one module instead of four layers: task-batched on the CPU it runs the whole block per
//! task on views of the input and concatenates only the pooled output (4× smaller than the
//! convolution's), instead of one concatenation of full-size maps per layer. And it pools before
//! the ReLU: max-pooling commutes with the monotone ReLU exactly (same values; same gradients, since
//! both route each window's gradient to its first maximal element and zero it where that
//! maximum is ≤ 0), so the ReLU and its backward touch a quarter of the elements. The maps are
//! channels-last, where libtorch's CPU batch-norm and max-pool kernels vectorize over channels.

use tch::Tensor;

use super::batchnorm::Norm;
use super::shared::{batch_moments, channels_last, check_maps, join_tasks, split_tasks, ConvTasks};
use super::{BatchNorm2d, Conv2d, MaxPool2d, Module, ParamDef, Scope};
use crate::Result;

#[derive(Clone, Debug)]
pub struct ConvBlock {
    conv: Conv2d,
    bn: BatchNorm2d,
    in_channels: i64,
    tasks: ConvTasks,
}

impl ConvBlock {
    /// `in_channels` -> `out_channels`, 3×3 convolution with padding 1 and a bias.
    pub fn new(in_channels: i64, out_channels: i64) -> ConvBlock {
        ConvBlock {
            conv: Conv2d::new(in_channels, out_channels, 3).padding(1),
            bn: BatchNorm2d::new(out_channels),
            in_channels,
            tasks: ConvTasks::Auto,
        }
    }

    /// How task-batched inputs run (default [`ConvTasks::Auto`]: the per-task block on the CPU;
    /// on CUDA the layers one after the other, each with the tasks folded into its channels).
    pub fn task_batching(mut self, how: ConvTasks) -> ConvBlock {
        self.conv = self.conv.task_batching(how);
        self.bn = self.bn.task_batching(how);
        self.tasks = how;
        self
    }

    /// MAML++'s per-step BatchNorm ([`BatchNorm2d::per_step`]) with `steps` rows.
    pub fn per_step_batchnorm(mut self, steps: i64) -> ConvBlock {
        self.bn = self.bn.per_step(steps);
        self
    }

    /// One task's convolution on `[B, C, H, W]` input.
    fn conv(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.conv.conv(x, weight, bias, 1)
    }

    /// The rest of one task's block after its convolution: channels-last, BatchNorm with `norm`,
    /// pooling, ReLU.
    fn after_conv(&self, y: &Tensor, norm: &Norm) -> Result<Tensor> {
        let y = channels_last(y, &[0, 2, 3, 1], &[0, 3, 1, 2])?;
        Ok(self
            .bn
            .norm(&y, norm)?
            .f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?
            .f_relu()?)
    }
}

impl Module for ConvBlock {
    fn param_defs(&self) -> Vec<ParamDef> {
        let prefixed = |i: usize, defs: Vec<ParamDef>| {
            defs.into_iter().map(move |def| ParamDef {
                name: format!("{i}.{}", def.name),
                ..def
            })
        };
        prefixed(0, self.conv.param_defs())
            .chain(prefixed(1, self.bn.param_defs()))
            .collect()
    }

    fn forward_scoped(&self, scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        let per_task = check_maps(scope, "Conv2d", x, self.in_channels)?;
        let by_task = self.tasks.per_task(x) && scope.support().is_none();
        let Some(tasks) = scope.tasks().filter(|_| by_task) else {
            // Single task, the folded kernels or support-only statistics: the layers in turn (pooling before the ReLU,
            // see the module docs).
            let y = scope.child("0", |s| self.conv.forward_scoped(s, x))?;
            let y = scope.child("1", |s| self.bn.forward_scoped(s, &y))?;
            let y = scope.child("3", |s| MaxPool2d::new(2).forward_scoped(s, &y))?;
            return Ok(y.f_relu()?);
        };
        let batch = per_task[0];
        let (weight, bias) = scope.child("0", |s| -> Result<_> {
            Ok((s.param("weight")?, s.param("bias")?))
        })?;
        let (xs, ws, bs) = split_tasks(x, &weight, Some(&bias), tasks, batch)?;
        // The batch statistics for the running ones need every task's convolution output, so
        // a state in training mode runs the convolutions first; otherwise each task's block
        // runs start to end (its full-size maps die before the next task's are made).
        let needs_moments = scope.train() && scope.state().is_some();
        let conv_outs = if needs_moments {
            (0..xs.len())
                .map(|t| self.conv(&xs[t], &ws[t], bs[t].as_ref()))
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let inputs = scope.child("1", |s| {
            self.bn.prepare(s, x, || {
                let moments = conv_outs
                    .iter()
                    .map(|y| batch_moments(y, &[0, 2, 3]))
                    .collect::<Result<Vec<_>>>()?;
                let (means, vars): (Vec<_>, Vec<_>) = moments.into_iter().unzip();
                Ok((Tensor::f_stack(&means, 0)?, Tensor::f_stack(&vars, 0)?))
            })
        })?;
        let norms = inputs.per_task(Some(tasks))?;
        let mut outs = Vec::with_capacity(tasks as usize);
        for (t, norm) in norms.iter().enumerate() {
            let y = if needs_moments {
                conv_outs[t].shallow_clone()
            } else {
                self.conv(&xs[t], &ws[t], bs[t].as_ref())?
            };
            outs.push(self.after_conv(&y, norm)?);
        }
        join_tasks(&outs, tasks, batch)
    }
}
